/*
 * helpers.c - shared test helpers (see helpers.h).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

#define TH_WORD_STRIDE 512

int th_probe(struct exch_features *f)
{
	int fds[2];
	pid_t pid;
	ssize_t n;

	th_clean_env();
	if (pipe(fds) < 0)
		return -errno;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		const struct exch_features *got = exch_features();

		n = write(fds[1], got, sizeof(*got));
		_exit(n == (ssize_t)sizeof(*got) ? 0 : 1);
	}
	close(fds[1]);
	n = read(fds[0], f, sizeof(*f));
	close(fds[0]);
	waitpid(pid, NULL, 0);
	return n == (ssize_t)sizeof(*f) ? 0 : -EIO;
}

void th_skip(const char *what, const char *why)
{
	printf("skipping %s: %s\n", what, why);
	fflush(stdout);
}

long th_smaps_huge_bytes(const void *p)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[256];
	bool inside = false;
	long kb = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;

		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			inside = (uintptr_t)p >= lo && (uintptr_t)p < hi;
			continue;
		}
		if (inside && sscanf(line, "AnonHugePages: %ld kB", &kb) == 1)
			break;
	}
	fclose(f);
	return kb < 0 ? -1 : kb * 1024;
}

long th_huge_bytes(const void *p, size_t len)
{
	int fd = prim_pagemap_open();
	long n;

	if (fd < 0)
		return fd;
	n = prim_huge_bytes(fd, p, len);
	close(fd);
	return n;
}

long th_private_bytes(const void *p, size_t len)
{
	struct page_region vec[64];
	const char *pos = p, *end = (const char *)p + len;
	int fd = prim_pagemap_open();
	long n, total = 0;

	if (fd < 0)
		return fd;
	do {
		n = prim_pagemap_scan(fd, pos, end, PAGE_IS_PRESENT | PAGE_IS_PFNZERO, 0,
				      PAGE_IS_PFNZERO, PAGE_IS_PRESENT, vec, 64);
		for (long i = 0; i < n; i++)
			total += (long)(vec[i].end - vec[i].start);
		if (n == 64)
			pos = (const char *)(uintptr_t)vec[63].end;
	} while (n == 64 && pos < end);
	close(fd);
	return n < 0 ? n : total;
}

uint64_t th_stat(const char *name)
{
	uint64_t v = 0;

	/* A resolved fault wakes its thread before the service counts it:
	 * wait for the service to finish what it has read. */
	fault_quiesce();
	ck_assert_int_eq(exch_stats_get(name, &v), 0);
	return v;
}

static uint64_t th_word(uint64_t seed, size_t i)
{
	uint64_t x = seed * 0x9E3779B97F4A7C15ull + i;

	x ^= x >> 31;
	x *= 0xBF58476D1CE4E5B9ull;
	return x ^ (x >> 29);
}

char *th_written(exch_arena_t **a, size_t len, uint64_t seed)
{
	char *p;

	ck_assert_int_eq(exch_arena_create(len, EXCH_ARENA_NOHUGE, a), 0);
	p = exch_alloc(*a, len);
	ck_assert_ptr_nonnull(p);
	th_fill(p, len, seed);
	return p;
}

char *th_small_pages(exch_arena_t **a, size_t len, uint64_t seed)
{
	char *p = th_written(a, len, seed);

	ck_assert_int_eq(th_huge_bytes(p, len), 0);
	ck_assert_int_eq(exch_pool_wait(TH_POOL_WAIT_MS), 0);
	return p;
}

void th_make_huge(exch_arena_t *a, void *p, size_t len)
{
	struct exch_coalesce_report rep;

	if (th_huge_bytes(p, len) != (long)len) {
		ck_assert_int_eq(exch_pool_wait(TH_POOL_WAIT_MS), 0);
		ck_assert_int_eq(exch_coalesce(a, p, len, EXCH_BLOCK, &rep), 0);
	}
	ck_assert_int_eq(th_huge_bytes(p, len), (long)len);
}

void th_fill(void *p, size_t len, uint64_t seed)
{
	for (size_t off = 0; off + sizeof(uint64_t) <= len; off += TH_WORD_STRIDE)
		*(uint64_t *)((char *)p + off) = th_word(seed, off);
}

long th_verify(const void *p, size_t len, uint64_t seed)
{
	for (size_t off = 0; off + sizeof(uint64_t) <= len; off += TH_WORD_STRIDE)
		if (*(const uint64_t *)((const char *)p + off) != th_word(seed, off))
			return (long)off;
	return -1;
}

void th_clean_env(void)
{
	extern char **environ;
	char name[128];

	for (char **e = environ; *e;) {
		const char *eq = strchr(*e, '=');
		size_t n = eq ? (size_t)(eq - *e) : strlen(*e);

		if (strncmp(*e, "EXCH_", 5) || n >= sizeof(name)) {
			e++;
			continue;
		}
		memcpy(name, *e, n);
		name[n] = '\0';
		unsetenv(name); /* shifts environ: look at the same slot again */
	}
}

int th_run(Suite *s)
{
	SRunner *sr;
	int failed;

	th_clean_env();
	sr = srunner_create(s);
	srunner_set_fork_status(sr, CK_FORK);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

int th_main(struct exch_features *f, Suite *(*build)(void))
{
	if (th_probe(f) < 0) {
		printf("feature probe failed\n");
		return EXIT_FAILURE;
	}
	feat_print(stdout, f);
	return th_run(build());
}

uint64_t th_json_u64(const char *json, const char *name)
{
	char key[64];
	const char *p;

	snprintf(key, sizeof(key), "\"%s\":", name);
	p = strstr(json, key);
	return p ? strtoull(p + strlen(key), NULL, 10) : UINT64_MAX;
}

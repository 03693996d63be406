/*
 * check_preload.c - libexch-preload.so in real programs: our own scenarios
 * (preload_prog), sort(1) on a generated file, and a Python script, each
 * run under LD_PRELOAD and checked against its own results or against the
 * same program run plainly.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

extern char **environ;

static struct exch_features feat;

/* Runs @argv (with LD_PRELOAD when @preload), stdout to @out if set; the
 * exit status, or -1 if it did not exit. */
static int run(char *const argv[], bool preload, const char *out)
{
	posix_spawn_file_actions_t fa;
	char *env[64];
	char pre[512];
	size_t n = 0;
	pid_t pid;
	int st;

	snprintf(pre, sizeof(pre), "LD_PRELOAD=%s", EXCH_PRELOAD_SO);
	for (char **e = environ; *e && n < 60; e++)
		if (strncmp(*e, "LD_PRELOAD=", 11))
			env[n++] = *e;
	if (preload)
		env[n++] = pre;
	env[n] = NULL;
	posix_spawn_file_actions_init(&fa);
	if (out)
		posix_spawn_file_actions_addopen(&fa, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_eq(posix_spawnp(&pid, argv[0], &fa, NULL, argv, env), 0);
	posix_spawn_file_actions_destroy(&fa);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void prog(const char *scenario)
{
	char *argv[] = { (char *)EXCH_PRELOAD_PROG, (char *)scenario, NULL };

	ck_assert_int_eq(run(argv, true, NULL), 0);
}

/* preload_prog's scenarios; see there. Those that evict heap pages need
 * the tier, so userfaultfd. */
static const struct {
	const char *name;
	bool evicts;
} scenarios[] = {
	{ "heap", false }, { "threads", false }, { "fork", false }, { "fork-evicted", true },
	{ "fork-limit", true }, { "spawn", false }, { "signal", true }, { "kernel-io", true },
	{ "dlopen", false }, { "mmap", false }, { "map-fixed", true }, { "unmap", false },
	{ "uring", true }, { "mlock", true }, { "jemalloc-api", false },
	{ "seccomp", false }, /* userfaultfd denied: jemalloc on plain arenas, no crash */
};
#define SCENARIOS ((int)(sizeof(scenarios) / sizeof(scenarios[0])))

/* Why a test that evicts cannot run here, or NULL. */
static const char *no_tier(void)
{
	return feat.on & EXCH_ON_ARENA_UFFD ? NULL :
	       "userfaultfd is not available here (for a user other than root, "
	       "vm.unprivileged_userfaultfd=0 denies it), so the preload cannot evict";
}

START_TEST(test_preload_scenario)
{
	char what[64];

	if (scenarios[_i].evicts && no_tier()) {
		snprintf(what, sizeof(what), "preload scenario %s", scenarios[_i].name);
		th_skip(what, no_tier());
		return;
	}
	prog(scenarios[_i].name);
}
END_TEST

/* sort(1) of a generated file gives the same bytes with the preload. */
START_TEST(test_preload_sort)
{
	char in[] = "/tmp/exch-sort-in-XXXXXX", plain[64], pre[64];
	FILE *f;
	int fd = mkstemp(in);
	char *a, *b;
	size_t la, lb;

	ck_assert_int_ge(fd, 0);
	f = fdopen(fd, "w");
	for (unsigned i = 0, x = 1; i < 400000; i++, x = x * 1103515245u + 12345u)
		fprintf(f, "%u line %u\n", x % 1000003u, i);
	fclose(f);
	snprintf(plain, sizeof(plain), "%s.plain", in);
	snprintf(pre, sizeof(pre), "%s.pre", in);
	char *argv[] = { "sort", in, NULL };
	ck_assert_int_eq(run(argv, false, plain), 0);
	ck_assert_int_eq(run(argv, true, pre), 0);
	f = fopen(plain, "r");
	a = malloc(1 << 24);
	la = fread(a, 1, 1 << 24, f);
	fclose(f);
	f = fopen(pre, "r");
	b = malloc(1 << 24);
	lb = fread(b, 1, 1 << 24, f);
	fclose(f);
	ck_assert_uint_gt(la, 1000000);
	ck_assert_uint_eq(la, lb);
	ck_assert(!memcmp(a, b, la));
	unlink(in);
	unlink(plain);
	unlink(pre);
	free(a);
	free(b);
}
END_TEST

/* AnonHugePages of @pid's mappings of 1 GB or more (the heap arena; the
 * frame pools are far smaller), in bytes. */
static uint64_t arena_huge_bytes(pid_t pid)
{
	char path[64], line[256];
	unsigned long a, b, kb;
	uint64_t sum = 0;
	bool big = false;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/smaps", (int)pid);
	f = fopen(path, "r");
	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &a, &b) == 2)
			big = b - a >= (1ul << 30);
		else if (big && sscanf(line, "AnonHugePages: %lu kB", &kb) == 1)
			sum += (uint64_t)kb << 10;
	}
	fclose(f);
	return sum;
}

/* exchstat reads a preloaded program while it runs: its heap is in the
 * arena, hugepage-backed, and nothing escaped. */
START_TEST(test_preload_exchstat)
{
	char *argv[] = { (char *)EXCH_PRELOAD_PROG, "hold", NULL };
	posix_spawn_file_actions_t fa;
	char pre[512], cmd[512], json[1 << 16], line[16], seg[64];
	char *env[64];
	int in[2], out[2], st;
	size_t n = 0;
	FILE *f;
	pid_t pid;

	snprintf(pre, sizeof(pre), "LD_PRELOAD=%s", EXCH_PRELOAD_SO);
	for (char **e = environ; *e && n < 60; e++)
		env[n++] = *e;
	env[n++] = pre;
	env[n] = NULL;
	ck_assert_int_eq(pipe(in), 0);
	ck_assert_int_eq(pipe(out), 0);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, in[0], 0);
	posix_spawn_file_actions_adddup2(&fa, out[1], 1);
	ck_assert_int_eq(posix_spawn(&pid, argv[0], &fa, NULL, argv, env), 0);
	posix_spawn_file_actions_destroy(&fa);
	close(in[0]);
	close(out[1]);
	f = fdopen(out[0], "r");
	ck_assert_ptr_nonnull(fgets(line, sizeof(line), f));
	ck_assert_str_eq(line, "ready\n");

	snprintf(cmd, sizeof(cmd), "%s -j %d", EXCH_EXCHSTAT, (int)pid);
	FILE *p = popen(cmd, "r");
	ck_assert_ptr_nonnull(p);
	n = fread(json, 1, sizeof(json) - 1, p);
	json[n] = '\0';
	ck_assert_int_eq(pclose(p), 0);
	ck_assert_msg(strstr(json, "\"comm\":\"preload_prog\""), "%.300s", json);
	ck_assert_ptr_nonnull(strstr(json, "\"fresh\":true"));
	ck_assert_uint_ge(th_json_u64(json, "resident_bytes"), 64 * MB);
	ck_assert_uint_ge(th_json_u64(json, "arenas_live"), 1);
	ck_assert_uint_gt(th_json_u64(json, "allocs"), 0);
	/* Only what jemalloc made before the hooks were set. */
	ck_assert_uint_lt(th_json_u64(json, "escaped_bytes"), 16 * MB);
	/* Coverage depends on how fast the pool refills (pool.c); what the
	 * segment says must be what the kernel says of the arena's mapping.
	 * Without userfaultfd the kernel's THP faults and khugepaged fill the
	 * arena, and may change it between the two reads. */
	if (feat.on & EXCH_ON_ARENA_UFFD) {
		uint64_t seg = th_json_u64(json, "huge_bytes"), kernel = arena_huge_bytes(pid);

		ck_assert_msg(seg <= kernel + 2 * MB && kernel <= seg + 2 * MB,
			      "huge_bytes %llu, AnonHugePages %llu", (unsigned long long)seg,
			      (unsigned long long)kernel);
	}
	if (feat.on & EXCH_ON_HUGE_FIRST)
		ck_assert_uint_ge(th_json_u64(json, "faults_huge") + th_json_u64(json, "faults_filled"),
				  32); /* 64 MB of first writes, a region at a time */

	ck_assert_int_eq(write(in[1], "done\n", 5), 5);
	close(in[1]);
	fclose(f);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	snprintf(seg, sizeof(seg), "/dev/shm/libexch.%d", (int)pid);
	ck_assert_msg(access(seg, F_OK) < 0, "%s left behind", seg);
}
END_TEST

/* A Python script builds and checks a few hundred MB of objects; with
 * @limit, the tier is forced to evict (EXCH_LIMIT) while the coalescer
 * runs, and the stats file must show both at work. */
/* NUMA nodes of this machine (the frame pools are per node). */
static unsigned numa_nodes(void)
{
	glob_t g;
	unsigned n = 1;

	if (glob("/sys/devices/system/node/node[0-9]*", 0, NULL, &g) == 0) {
		n = (unsigned)g.gl_pathc;
		globfree(&g);
	}
	return n ? n : 1;
}

static void python_run(const char *limit)
{
	char *argv[] = { "python3", "-c",
		"import hashlib\n"
		"d = {i: (str(i) * 20, [i] * 8) for i in range(700000)}\n"
		"h = hashlib.sha256()\n"
		"for i in range(700000):\n"
		"    s, l = d[i]\n"
		"    assert s == str(i) * 20 and l == [i] * 8\n"
		"    h.update(s.encode())\n"
		"print(h.hexdigest())\n",
		NULL };
	char plain[] = "/tmp/exch-py-plain-XXXXXX", pre[] = "/tmp/exch-py-pre-XXXXXX";
	char x[128] = "", y[128] = "";
	FILE *f;

	close(mkstemp(plain));
	close(mkstemp(pre));
	ck_assert_int_eq(run(argv, false, plain), 0);
	if (limit) {
		setenv("EXCH_LIMIT", limit, 1);
		setenv("EXCH_COALESCE", "1", 1);
		setenv("EXCH_STATS_FILE", "/tmp/exch-py-stats.json", 1);
	}
	ck_assert_int_eq(run(argv, true, pre), 0);
	f = fopen(plain, "r");
	ck_assert_ptr_nonnull(fgets(x, sizeof(x), f));
	fclose(f);
	f = fopen(pre, "r");
	ck_assert_ptr_nonnull(fgets(y, sizeof(y), f));
	fclose(f);
	ck_assert_uint_eq(strlen(x), 65);
	ck_assert_str_eq(x, y);
	unlink(plain);
	unlink(pre);
	if (limit) {
		char json[1 << 16];
		size_t n;

		f = fopen("/tmp/exch-py-stats.json", "r");
		ck_assert_ptr_nonnull(f);
		n = fread(json, 1, sizeof(json) - 1, f);
		json[n] = 0;
		fclose(f);
		unlink("/tmp/exch-py-stats.json");
		ck_assert_ptr_nonnull(strstr(json, "\"mmap_interposed\":"));
		ck_assert_ptr_null(strstr(json, "\"mmap_interposed\":0,"));
		ck_assert_ptr_null(strstr(json, "\"evicted_pages\":0,"));
		ck_assert_ptr_null(strstr(json, "\"restored_pages\":0,"));
		ck_assert_ptr_nonnull(strstr(json, "\"tier_restore_errors\":0,"));
		/* Under a limit of 96 MB the pools keep a 32nd of it: one frame
		 * (a node). */
		ck_assert_uint_le(th_json_u64(json, "pool_frames_ready"), numa_nodes());
		ck_assert_uint_le(th_json_u64(json, "captured_frames"), numa_nodes());
	}
}

START_TEST(test_preload_python) { python_run(NULL); }
END_TEST

START_TEST(test_preload_python_tier)
{
	if (no_tier()) {
		th_skip("the Python test under a limit", no_tier());
		return;
	}
	python_run("96M");
}
END_TEST

static Suite *preload_suite(void)
{
	Suite *s = suite_create("preload");
	TCase *tc = tcase_create("preload");

	tcase_set_timeout(tc, 120);
#ifdef __SANITIZE_ADDRESS__
	/* An instrumented library needs the sanitizer runtime loaded first,
	 * which sort, python3 and the scenario program do not have. */
	th_skip("the preload tests", "this build's preload is instrumented with AddressSanitizer, "
		"and the programs it would be preloaded into are not");
	suite_add_tcase(s, tc);
	return s;
#endif
	tcase_add_loop_test(tc, test_preload_scenario, 0, SCENARIOS);
	tcase_add_test(tc, test_preload_sort);
	tcase_add_test(tc, test_preload_exchstat);
	if (access("/usr/bin/python3", X_OK) == 0) {
		tcase_add_test(tc, test_preload_python);
		tcase_add_test(tc, test_preload_python_tier);
	} else
		th_skip("the Python test", "/usr/bin/python3 is not installed");
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return th_main(&feat, preload_suite);
}

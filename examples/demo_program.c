/*
 * demo_program.c - part 4 of the demo: a real program, unmodified, run
 * with and without libexch-preload.so.
 *
 * The program is CPython running examples/cache.py: it builds a dict of
 * text records (about 1 KB each, a few hundred MB in all), then serves two
 * rounds of random lookups from the first tenth of the keys, checksumming
 * what it serves. It knows nothing of libexch. It runs three times, each a
 * process of its own:
 *
 *   glibc    python3 as it is: glibc's malloc, the kernel's THP settings;
 *   preload  LD_PRELOAD=libexch-preload.so: jemalloc inside, the heap and
 *            CPython's own arenas in libexch arenas, hugepage-first;
 *   tier     the same with a resident limit (EXCH_LIMIT) a quarter of the
 *            heap, a small compressed pool (EXCH_TIER_MAX) so the rest goes
 *            to the swap file, and the background coalescer on.
 *
 * The program reports its own times, its resident memory at the end and at
 * its peak, and the hugepage share of its anonymous memory (smaps_rollup);
 * the preloaded runs also write the library's counters (EXCH_STATS_FILE),
 * from which the report takes what the tier and the coalescer did. The
 * three checksums must agree, or the part fails.
 *
 * The first lookup round is the program settling in (under the limit,
 * the tier is still evicting the cold records); the second is its steady
 * state, the one compared.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "demo_program.h"

extern char **environ;

#define PROGRAM_PYTHON "/usr/bin/python3"
#define PROGRAM_RECORDS_PER_GB 200000.0 /* ~250 MB of heap per --gb */
#define PROGRAM_LOOKUPS 1000000
#define PROGRAM_RECORD_BYTES 1300     /* a record in its size class, with its share of the dict */
#define PROGRAM_STATS "/tmp/exch-demo-program.json"

enum { RUN_GLIBC, RUN_PRELOAD, RUN_TIER, RUNS };

struct program_run {
	const char *name;
	double build_s, lookup1_s, lookup2_s;
	double wall_s;     /* the whole process, start-up and exit included */
	unsigned long crc;
	long rss_kb, hwm_kb, anon_kb, huge_kb;
	/* from the library's counters (preloaded runs) */
	long long evicted, restored, swapped, coalesced, coverage;
	bool ok;
};

static long long json_number(const char *json, const char *name)
{
	char key[64];
	const char *p;

	snprintf(key, sizeof(key), "\"%s\":", name);
	p = strstr(json, key);
	return p ? strtoll(p + strlen(key), NULL, 10) : -1;
}

static void read_stats(struct program_run *r)
{
	char json[1 << 16];
	FILE *f = fopen(PROGRAM_STATS, "r");
	size_t n;

	if (!f)
		return;
	n = fread(json, 1, sizeof(json) - 1, f);
	json[n] = '\0';
	fclose(f);
	unlink(PROGRAM_STATS);
	r->evicted = json_number(json, "evicted_pages");
	r->restored = json_number(json, "restored_pages");
	r->swapped = json_number(json, "swap_pages_written");
	r->coalesced = json_number(json, "coalesced_regions");
	r->coverage = json_number(json, "hugepage_coverage_pct");
}

/* Runs cache.py with @extra added to the environment; fills @r. */
static int program_run(struct program_run *r, char *const extra[], long records)
{
	char recs[32], looks[32], line[512];
	char *argv[] = { PROGRAM_PYTHON, EXCH_EXAMPLES_DIR "/cache.py", recs, looks, NULL };
	char *env[256];
	posix_spawn_file_actions_t fa;
	struct timespec t0, t1;
	size_t n = 0;
	int out[2], st;
	pid_t pid;
	FILE *f;

	snprintf(recs, sizeof(recs), "%ld", records);
	snprintf(looks, sizeof(looks), "%d", PROGRAM_LOOKUPS);
	for (char **e = environ; *e && n < 200; e++)
		if (strncmp(*e, "EXCH_", 5) && strncmp(*e, "LD_PRELOAD=", 11))
			env[n++] = *e;
	for (size_t i = 0; extra[i] && n < 250; i++)
		env[n++] = extra[i];
	env[n] = NULL;
	if (pipe(out) < 0)
		return -errno;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, out[1], 1);
	posix_spawn_file_actions_addclose(&fa, out[0]);
	st = posix_spawn(&pid, argv[0], &fa, NULL, argv, env);
	posix_spawn_file_actions_destroy(&fa);
	close(out[1]);
	if (st) {
		close(out[0]);
		return -st;
	}
	f = fdopen(out[0], "r");
	if (f && fgets(line, sizeof(line), f))
		r->ok = sscanf(line, "build_s=%lf lookup1_s=%lf lookup2_s=%lf crc=%lx rss_kb=%ld "
				     "hwm_kb=%ld anon_kb=%ld huge_kb=%ld", &r->build_s, &r->lookup1_s,
			       &r->lookup2_s, &r->crc, &r->rss_kb, &r->hwm_kb, &r->anon_kb,
			       &r->huge_kb) == 8;
	if (f)
		fclose(f);
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st))
		r->ok = false;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	r->wall_s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	r->evicted = r->restored = r->swapped = r->coalesced = r->coverage = -1;
	read_stats(r);
	return 0;
}

static void cell_ll(long long v)
{
	if (v < 0)
		printf("%16s", "-");
	else
		printf("%16lld", v);
}

static void report(const struct program_run *r, const char *limit, const char *tier_max)
{
	const struct program_run *g = &r[RUN_GLIBC];

	printf("\n%-34s", "");
	for (int i = 0; i < RUNS; i++)
		printf("%16s", r[i].name);
	printf("\n%-34s", "build (s)");
	for (int i = 0; i < RUNS; i++)
		printf("%16.2f", r[i].build_s);
	printf("\n%-34s", "lookups, first round (s)");
	for (int i = 0; i < RUNS; i++)
		printf("%16.2f", r[i].lookup1_s);
	printf("\n%-34s", "lookups, second round (s)");
	for (int i = 0; i < RUNS; i++)
		printf("%16.2f", r[i].lookup2_s);
	printf("\n%-34s", "  against glibc");
	for (int i = 0; i < RUNS; i++)
		printf("%15.2fx", r[i].lookup2_s / g->lookup2_s);
	printf("\n%-34s", "whole run, wall (s)");
	for (int i = 0; i < RUNS; i++)
		printf("%16.2f", r[i].wall_s);
	printf("\n%-34s", "peak resident (MB)");
	for (int i = 0; i < RUNS; i++)
		printf("%16.0f", (double)r[i].hwm_kb / 1024);
	printf("\n%-34s", "resident at the end (MB)");
	for (int i = 0; i < RUNS; i++)
		printf("%16.0f", (double)r[i].rss_kb / 1024);
	printf("\n%-34s", "  against glibc");
	for (int i = 0; i < RUNS; i++)
		printf("%15.2fx", (double)r[i].rss_kb / (double)g->rss_kb);
	printf("\n%-34s", "hugepages, share of anon memory");
	for (int i = 0; i < RUNS; i++)
		printf("%15.0f%%", r[i].anon_kb ? 100.0 * (double)r[i].huge_kb / (double)r[i].anon_kb : 0);
	printf("\n%-34s", "hugepages, share of the arenas");
	for (int i = 0; i < RUNS; i++)
		cell_ll(r[i].coverage);
	printf("\n%-34s", "pages evicted by the tier");
	for (int i = 0; i < RUNS; i++)
		cell_ll(r[i].evicted);
	printf("\n%-34s", "  of them written to swap");
	for (int i = 0; i < RUNS; i++)
		cell_ll(r[i].swapped);
	printf("\n%-34s", "pages restored on touch");
	for (int i = 0; i < RUNS; i++)
		cell_ll(r[i].restored);
	printf("\n%-34s", "regions coalesced");
	for (int i = 0; i < RUNS; i++)
		cell_ll(r[i].coalesced);
	printf("\n%-34s", "checksum of what was served");
	for (int i = 0; i < RUNS; i++)
		printf("%16lx", r[i].crc);
	printf("\n\n\"%s\" is EXCH_LIMIT=%s EXCH_TIER_MAX=%s EXCH_COALESCE=1: the cold nine "
	       "tenths of the records leave memory\n(most of them for the swap file), and "
	       "the hot tenth stays. The whole run includes CPython\nfreeing the dict when "
	       "the program ends, which touches every record: the evicted ones come\nback "
	       "for it (most of the restores), and the counters are read after that.\n",
	       r[RUN_TIER].name, limit, tier_max);
}

int demo_program(double gb)
{
	long records = (long)(gb * PROGRAM_RECORDS_PER_GB);
	double heap_mb = (double)records * PROGRAM_RECORD_BYTES / (1 << 20);
	char limit[32], tier_max[32], e_limit[48], e_tier[48];
	struct program_run r[RUNS] = { { .name = "glibc malloc" }, { .name = "preload" },
				       { .name = "preload + tier" } };
	char *plain[] = { NULL };
	char *pre[] = { "LD_PRELOAD=" EXCH_PRELOAD_SO, "EXCH_STATS_FILE=" PROGRAM_STATS, NULL };
	char *tier[] = { pre[0], pre[1], e_limit, e_tier, "EXCH_COALESCE=1", NULL };

	printf("\nPart 4: a real program, with and without the preload\n\n");
	if (access(PROGRAM_PYTHON, X_OK) < 0) {
		printf("%s is not installed: part 4 skipped (scripts/setup.sh installs it)\n",
		       PROGRAM_PYTHON);
		return 0;
	}
	if (records < 10000)
		records = 10000;
	snprintf(limit, sizeof(limit), "%.0fM", heap_mb / 4 < 64 ? 64 : heap_mb / 4);
	snprintf(tier_max, sizeof(tier_max), "%.0fM", heap_mb / 16 < 16 ? 16 : heap_mb / 16);
	snprintf(e_limit, sizeof(e_limit), "EXCH_LIMIT=%s", limit);
	snprintf(e_tier, sizeof(e_tier), "EXCH_TIER_MAX=%s", tier_max);
	printf("%s examples/cache.py %ld %d: a dict of %ld text records (~1 KB each, ~%.0f MB "
	       "of heap),\nthen two rounds of %d random lookups from the first tenth of the "
	       "keys. CPython knows\nnothing of libexch; each column is its own process.\n",
	       PROGRAM_PYTHON, records, PROGRAM_LOOKUPS, records, heap_mb, PROGRAM_LOOKUPS);
	fflush(stdout);
	if (program_run(&r[RUN_GLIBC], plain, records) < 0 ||
	    program_run(&r[RUN_PRELOAD], pre, records) < 0 ||
	    program_run(&r[RUN_TIER], tier, records) < 0) {
		printf("part 4: %s could not be started\n", PROGRAM_PYTHON);
		return -ENOEXEC;
	}
	for (int i = 0; i < RUNS; i++)
		if (!r[i].ok) {
			printf("part 4: the %s run failed\n", r[i].name);
			return -EIO;
		}
	report(r, limit, tier_max);
	if (r[RUN_PRELOAD].crc != r[RUN_GLIBC].crc || r[RUN_TIER].crc != r[RUN_GLIBC].crc) {
		printf("part 4: the checksums differ: a record came back wrong\n");
		return -EIO;
	}
	printf("The checksums agree: every record served was the one stored.\n");
	return 0;
}

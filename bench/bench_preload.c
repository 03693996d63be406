/*
 * bench_preload.c - unmodified programs with glibc's malloc, with plain
 * jemalloc and with libexch-preload.so, side by side in one run.
 *
 * The programs are the workloads of alloc_work.c (small objects in one
 * thread, in four threads with cross-thread frees, large buffers). Each is
 * run REPS times per allocator, alternating, as a separate process: the
 * median wall time and the median peak RSS (wait4's ru_maxrss) are
 * reported, and the ratios of the preload over jemalloc (the goal: time
 * within 5%) and over glibc. Under the preload the program prints the
 * hugepage share of its heap at its largest (hugepage_coverage_pct, read
 * through dlsym; the goal is 90% or more; the median of the runs), and the
 * pool's time to populate a 2 MB frame then (pool_populate_us): first
 * touches faster than frames come get 4K pages, and on a virtual machine
 * that time depends on whether the host backs the memory yet. A run whose
 * program reports wrong data or fails makes the bench fail.
 *
 * The tier. The cache workload keeps a heap of which only a tenth is read
 * (alloc_work.c); it runs a fourth time under the preload with a resident
 * limit (EXCH_LIMIT of one and a half times the hot set, plus a 16 MB
 * compressed pool and two frames, which it covers too; the coalescer on). For it the program's own figures are
 * compared: the steady-state lookup time and the resident memory then.
 * The goals: resident memory down from plain jemalloc's by at least the
 * cold share (90%), with less than 10% slowdown against the preload
 * without a limit.
 *
 * Before the runs, bu_warm_up populates and releases as much memory as
 * they use, so that no run pays a virtual machine host's first faults.
 * A guest with free page reporting (virtio_balloon) gives free blocks of
 * 2^page_reporting_order pages back to its host, which backs them again
 * only when they are touched: a hugepage taken from such a block costs the
 * host's faults, 4K pages come from smaller blocks. The header says the
 * order. --host-backed sets it above the buddy allocator's largest order
 * for the run, so nothing is given back and the warm-up holds (root; put
 * back at exit, and on a fatal signal): the same programs on memory the
 * host keeps backed.
 *
 * Usage: bench_preload [--scale N] [--reps N] [--host-backed] [--json]
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_util.h"

#define REPS 3
#define MAX_REPS 15

extern char **environ;

enum alloc { GLIBC, JEMALLOC, PRELOAD, TIER, ALLOCS };
static const char *const alloc_so[ALLOCS] = { NULL, EXCH_JEMALLOC_SO, EXCH_PRELOAD_SO,
					      EXCH_PRELOAD_SO };
static const char *const works[] = { "small", "threads", "large", "cache" };
#define WORKS (sizeof(works) / sizeof(works[0]))
#define CACHE_WORK 3             /* works[]: the one also run under a limit */
#define CACHE_HOT_MB 41.0        /* its hot set at scale 1 (alloc_work.c) */
#define CACHE_COLD_SHARE 0.90
#define CACHE_TIER_MB 16.0       /* EXCH_TIER_MAX of the limit run */
#define CACHE_FRAMES_MB 4.0      /* the frame pool's and the capture's frame */
/* EXCH_LIMIT covers the compressed pool and the frames too: the arenas get
 * one and a half times the hot set. */
#define CACHE_LIMIT_MB(scale) (CACHE_HOT_MB * 1.5 * (scale) + CACHE_TIER_MB + CACHE_FRAMES_MB)
#define WARM_MB 1536             /* at scale 1 */

struct cell {
	double s[MAX_REPS], rss_mb[MAX_REPS];
	double steady_s[MAX_REPS], end_mb[MAX_REPS]; /* cache: the program's own */
	double coverage[MAX_REPS], populate_ms[MAX_REPS]; /* under the preload */
	bool failed;
};

struct opts {
	unsigned scale, reps;
	bool json;
};

/* One run of @work under @a; fills rep @i of @c. */
static void run_once(const struct opts *o, const char *work, enum alloc a, struct cell *c, int i)
{
	char scale[16], pre[512], *argv[] = { (char *)EXCH_ALLOC_WORK, (char *)work, scale, NULL };
	char limit[48], tier_max[] = "EXCH_TIER_MAX=16M", coalesce[] = "EXCH_COALESCE=1";
	char *env[256], out[] = "/tmp/exch-bench-preload-XXXXXX", line[128];
	posix_spawn_file_actions_t fa;
	struct rusage ru;
	size_t n = 0;
	uint64_t t0;
	pid_t pid;
	int st, fd = mkstemp(out);
	FILE *f;

	snprintf(scale, sizeof(scale), "%u", o->scale);
	for (char **e = environ; *e && n < 250; e++)
		if (strncmp(*e, "LD_PRELOAD=", 11))
			env[n++] = *e;
	if (alloc_so[a]) {
		snprintf(pre, sizeof(pre), "LD_PRELOAD=%s", alloc_so[a]);
		env[n++] = pre;
	}
	if (a == TIER) {
		snprintf(limit, sizeof(limit), "EXCH_LIMIT=%.0fM", CACHE_LIMIT_MB(o->scale));
		env[n++] = limit;
		env[n++] = tier_max;
		env[n++] = coalesce;
	}
	env[n] = NULL;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, fd, 1);
	t0 = bu_now_ns();
	if (posix_spawn(&pid, argv[0], &fa, NULL, argv, env) != 0 ||
	    wait4(pid, &st, 0, &ru) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		c->failed = true;
	c->s[i] = (double)(bu_now_ns() - t0) / BU_NS_PER_S;
	c->rss_mb[i] = (double)ru.ru_maxrss / 1024.0;
	posix_spawn_file_actions_destroy(&fa);
	close(fd);
	f = fopen(out, "r");
	while (f && fgets(line, sizeof(line), f)) {
		long kb;

		sscanf(line, "coverage %lf", &c->coverage[i]);
		if (sscanf(line, "populate_us %lf", &c->populate_ms[i]) == 1)
			c->populate_ms[i] /= 1000.0;
		sscanf(line, "steady_s %lf", &c->steady_s[i]);
		if (sscanf(line, "rss_kb %ld", &kb) == 1)
			c->end_mb[i] = (double)kb / 1024.0;
	}
	if (f)
		fclose(f);
	unlink(out);
}

#define REPORTING_ORDER "/sys/module/page_reporting/parameters/page_reporting_order"
#define REPORTING_NEVER "11" /* above MAX_PAGE_ORDER (10): no block is reported */

static char reporting_was[16]; /* the order to put back, or "" */

/* The guest's free page reporting order, or "" if it has none. */
static void reporting_read(char *buf, size_t len)
{
	FILE *f = fopen(REPORTING_ORDER, "r");

	buf[0] = 0;
	if (f && fgets(buf, (int)len, f))
		buf[strcspn(buf, "\n")] = 0;
	if (f)
		fclose(f);
}

static bool reporting_write(const char *v)
{
	FILE *f = fopen(REPORTING_ORDER, "w");
	bool ok = f && fputs(v, f) >= 0;

	return f ? fclose(f) == 0 && ok : false;
}

static void reporting_restore(void)
{
	if (*reporting_was)
		reporting_write(reporting_was);
}

static void reporting_restore_signal(int sig)
{
	reporting_restore();
	signal(sig, SIG_DFL);
	raise(sig);
}

/* --host-backed: no free page reporting for the run. 0, or -1 if the
 * order cannot be set. */
static int reporting_off(void)
{
	static const int fatal[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGABRT, SIGSEGV, SIGBUS };
	char now[16];

	reporting_read(now, sizeof(now));
	if (!*now)
		return 0; /* no reporting here: the host keeps what it backed */
	if (!reporting_write(REPORTING_NEVER)) {
		fprintf(stderr, "bench_preload: --host-backed: cannot write %s (%s)\n",
			REPORTING_ORDER, strerror(errno));
		return -1;
	}
	snprintf(reporting_was, sizeof(reporting_was), "%s", now);
	atexit(reporting_restore);
	for (size_t i = 0; i < sizeof(fatal) / sizeof(fatal[0]); i++)
		signal(fatal[i], reporting_restore_signal);
	return 0;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static double median(double *v, unsigned n)
{
	qsort(v, n, sizeof(*v), cmp);
	return v[n / 2];
}

int main(int argc, char **argv)
{
	struct opts o = { .scale = 1, .reps = REPS };
	struct cell c[WORKS][ALLOCS] = { 0 };
	bool failed = false, host_backed = false;
	char order[16];

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			o.json = true;
		else if (!strcmp(argv[i], "--scale") && i + 1 < argc)
			o.scale = (unsigned)strtoul(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
			o.reps = (unsigned)strtoul(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--host-backed"))
			host_backed = true;
		else {
			fprintf(stderr, "usage: bench_preload [--scale N] [--reps N (1-15)] "
				"[--host-backed] [--json]\n");
			return 2;
		}
	}
	if (!o.scale || !o.reps || o.reps > MAX_REPS)
		return 2;
	if (host_backed && reporting_off() < 0)
		return 1;
	reporting_read(order, sizeof(order));
	if (bu_warm_up((size_t)WARM_MB * o.scale << 20) < 0)
		fprintf(stderr, "bench_preload: warm-up failed; runs may pay the host's first faults\n");
	for (size_t w = 0; w < WORKS; w++)
		for (unsigned r = 0; r < o.reps; r++)
			for (int a = 0; a < ALLOCS; a++)
				if (a != TIER || w == CACHE_WORK)
					run_once(&o, works[w], (enum alloc)a, &c[w][a], (int)r);
	if (!o.json)
		printf("bench_preload: alloc_work, median of %u runs each (time s, peak RSS MB; "
		       "%u MiB warmed up first)\n  free page reporting to the host: %s%s%s\n"
		       "  %-8s %18s %18s %18s   %-22s %s\n", o.reps, WARM_MB * o.scale,
		       !*order ? "none" : *reporting_was ? "off for the run (page_reporting_order " : "blocks of 2^",
		       *reporting_was ? reporting_was : order,
		       !*order ? "" : *reporting_was ? ", put back after)" : " pages (page_reporting_order)",
		       "workload", "glibc", "jemalloc", "libexch-preload",
		       "libexch/jemalloc", "hugepages, frame populate");
	else
		printf("{");
	for (size_t w = 0; w < WORKS; w++) {
		double s[ALLOCS], m[ALLOCS], cov = median(c[w][PRELOAD].coverage, o.reps);
		double pop = median(c[w][PRELOAD].populate_ms, o.reps);

		for (int a = 0; a < ALLOCS; a++) {
			s[a] = median(c[w][a].s, o.reps);
			m[a] = median(c[w][a].rss_mb, o.reps);
			failed |= c[w][a].failed;
		}
		if (o.json)
			printf("%s\"%s\": {\"glibc_s\": %.3f, \"jemalloc_s\": %.3f, \"libexch_s\": %.3f, "
			       "\"time_ratio_vs_jemalloc\": %.3f, \"time_ratio_vs_glibc\": %.3f, "
			       "\"glibc_rss_mb\": %.1f, \"jemalloc_rss_mb\": %.1f, \"libexch_rss_mb\": %.1f, "
			       "\"rss_ratio_vs_jemalloc\": %.3f, \"hugepage_coverage_pct\": %.0f, "
			       "\"frame_populate_ms\": %.2f}",
			       w ? ", " : "", works[w], s[GLIBC], s[JEMALLOC], s[PRELOAD],
			       bu_ratio(s[PRELOAD], s[JEMALLOC]), bu_ratio(s[PRELOAD], s[GLIBC]), m[GLIBC],
			       m[JEMALLOC], m[PRELOAD], bu_ratio(m[PRELOAD], m[JEMALLOC]), cov, pop);
		else
			printf("  %-8s %8.3f %7.0f MB %8.3f %7.0f MB %8.3f %7.0f MB   time %.3fx rss %.2fx   %3.0f%%  %5.2f ms\n",
			       works[w], s[GLIBC], m[GLIBC], s[JEMALLOC], m[JEMALLOC], s[PRELOAD],
			       m[PRELOAD], bu_ratio(s[PRELOAD], s[JEMALLOC]),
			       bu_ratio(m[PRELOAD], m[JEMALLOC]), cov, pop);
	}
	{
		struct cell *k = c[CACHE_WORK];
		double je_s = median(k[JEMALLOC].steady_s, o.reps), pre_s = median(k[PRELOAD].steady_s, o.reps);
		double tier_s = median(k[TIER].steady_s, o.reps), je_mb = median(k[JEMALLOC].end_mb, o.reps);
		double pre_mb = median(k[PRELOAD].end_mb, o.reps), tier_mb = median(k[TIER].end_mb, o.reps);
		double down = je_mb > 0 ? 1 - tier_mb / je_mb : 0, tier_cov = median(k[TIER].coverage, o.reps);

		if (o.json)
			printf(", \"tier\": {\"limit_mb\": %.0f, \"jemalloc_steady_s\": %.3f, "
			       "\"libexch_steady_s\": %.3f, \"tier_steady_s\": %.3f, "
			       "\"tier_slowdown_vs_libexch\": %.3f, \"jemalloc_resident_mb\": %.1f, "
			       "\"libexch_resident_mb\": %.1f, \"tier_resident_mb\": %.1f, "
			       "\"resident_down\": %.3f, \"cold_share\": %.2f, "
			       "\"tier_hugepage_coverage_pct\": %.0f}",
			       CACHE_LIMIT_MB(o.scale), je_s, pre_s, tier_s, bu_ratio(tier_s, pre_s),
			       je_mb, pre_mb, tier_mb, down, CACHE_COLD_SHARE, tier_cov);
		else
			printf("\n  cache with a resident limit (EXCH_LIMIT=%.0fM EXCH_TIER_MAX=16M "
			       "EXCH_COALESCE=1): steady-state lookups, resident memory then\n"
			       "    jemalloc %.3f s %4.0f MB   preload %.3f s %4.0f MB   preload + limit "
			       "%.3f s %4.0f MB (hugepages %.0f%%)\n"
			       "    slowdown %.3fx the preload's (goal < 1.10); resident %.0f%% below "
			       "jemalloc's (goal: the cold share, %.0f%%)\n",
			       CACHE_LIMIT_MB(o.scale), je_s, je_mb, pre_s, pre_mb, tier_s, tier_mb,
			       tier_cov, bu_ratio(tier_s, pre_s), 100 * down,
			       100 * CACHE_COLD_SHARE);
	}
	if (o.json)
		printf(", \"page_reporting_order\": \"%s\", \"host_backed\": %s, \"failed\": %s}\n",
		       *reporting_was ? reporting_was : order, *reporting_was ? "true" : "false",
		       failed ? "true" : "false");
	else if (failed)
		printf("  a program failed or found its data wrong\n");
	return failed;
}

/*
 * bench_fault.c - the first-touch cost of 2 MB, three ways, in one run.
 *
 * What "first touch of 2 MB" costs is the time from an untouched 2 MB region
 * to a region whose every 4K page the program may use. For each region the
 * bench times one loop of 512 writes, one 8-byte store per 4K page, with
 * CLOCK_MONOTONIC. Where the first write faults in a whole hugepage the other
 * 511 are cheap, but they are inside the timed loop for every method, so the
 * three numbers compare like with like:
 *
 *   (a) libexch  an arena whose empty regions are served hugepage-first: the
 *                fault service moves a pre-zeroed THP frame from the pool
 *                into place with UFFDIO_MOVE.
 *   (b) THP      anonymous mmap with MADV_HUGEPAGE: the kernel allocates and
 *                zeroes a THP inside the fault (THP mode "madvise" here).
 *   (c) 4K       anonymous mmap with MADV_NOHUGEPAGE: 512 small faults.
 *
 * The pool hides the zeroing only while first touches come slower than the
 * background refill. The measured touches of (a) therefore go in batches no
 * larger than the pool, with exch_pool_wait() between batches (waits are not
 * timed, and the wall time with waits is reported as well). What happens
 * without pacing is measured separately: one burst of BURST_FACTOR x the pool
 * touched with no wait; the share of its regions that fell back to 4K pages
 * (the fallback_pool_empty counter) is reported as burst_fallback_pct.
 *
 * Before the first phase the bench populates and releases as much memory as
 * the run will use (warm_up). On a virtual machine the host backs guest
 * memory lazily: the first populate of never-used guest memory was measured
 * at ~4 ms per 2 MB against ~0.23 ms once the host has backed it. Without
 * the warm-up, whichever phase happens to get fresh guest memory would pay
 * for the host's faults, and the comparison would depend on phase order.
 *
 * Every page gets a value of its own; after touching, every page is read
 * back (the value, and zeros in the rest of the page, which proves the frame
 * was zeroed). A mismatch makes the exit status 1.
 *
 * Usage: bench_fault [--gb N] [--quick] [--json]
 *   --gb N    touch N GiB per method (default 2; fractions allowed)
 *   --quick   512 MiB per method
 *   --json    one JSON object as the last line of stdout
 * The pool holds BENCH_POOL_FRAMES frames unless EXCH_POOL_FRAMES is set.
 * Memory is released between phases, so the run needs about N GiB at once.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include <exch.h>

#include "bench_util.h"

#define GIB ((size_t)1 << 30)
#define MIB ((size_t)1 << 20)
#define KIB 1024
#define DEFAULT_GB 2.0
#define QUICK_GB 0.5
#define BENCH_POOL_FRAMES "64"
#define BURST_FACTOR 4
#define POOL_WAIT_MS 30000
#define PAGES_PER_2M (EXCH_REGION_SIZE / EXCH_PAGE_SIZE)
#define NS_PER_US 1000.0
#define NS_PER_S 1000000000.0
#define NS_PER_SEC 1000000000ull
#define PCT 100.0
#define SMAPS_LINE 512

/* Distinct nonzero value per page: an odd multiplier is a bijection. */
#define PAGE_MULT 0x9E3779B97F4A7C15ull
/* Per-method salt, so a page that kept another phase's value is caught. */
#define SALT_LIBEXCH 0x1ull
#define SALT_BURST 0x2ull
#define SALT_THP 0x3ull
#define SALT_SMALL 0x4ull
#define SALT_SHIFT 60

struct opts {
	double gb;
	bool json;
	size_t warm_bytes; /* populated and released before the phases */
};

struct phase {
	struct bu_dist d;
	double wall_s;      /* touching, plus pool waits for libexch */
	size_t huge_bytes;  /* PMD-mapped bytes of the touched range */
	size_t bad_pages;   /* pages that did not read back */
	bool huge_known;
};

struct libexch_run {
	struct phase main;
	struct bu_dist burst;
	size_t pool_frames;   /* 0 when hugepage-first is off */
	size_t regions;
	size_t burst_regions;
	size_t resident;
	uint64_t main_fallbacks;
	uint64_t burst_fallbacks;
	double wait_s;
	int pool_rc;
};

/* ---- timing and statistics ---- */

/* ---- touching and checking ---- */

static uint64_t page_value(uint64_t salt, size_t page)
{
	return (salt << SALT_SHIFT) ^ ((uint64_t)(page + 1) * PAGE_MULT);
}

/* Writes every 4K page of the region once; returns the time in us. */
static double touch_region(char *base, size_t region, uint64_t salt)
{
	char *p = base + region * EXCH_REGION_SIZE;
	size_t first = region * PAGES_PER_2M;
	uint64_t t0 = bu_now_ns();

	for (size_t i = 0; i < PAGES_PER_2M; i++)
		*(uint64_t *)(p + i * EXCH_PAGE_SIZE) = page_value(salt, first + i);
	return (double)(bu_now_ns() - t0) / NS_PER_US;
}

/* Pages of @nregions that do not hold their value followed by zeros. */
static size_t verify(const char *base, size_t nregions, uint64_t salt)
{
	size_t bad = 0;

	for (size_t pg = 0; pg < nregions * PAGES_PER_2M; pg++) {
		const char *p = base + pg * EXCH_PAGE_SIZE;

		if (*(const uint64_t *)p != page_value(salt, pg) ||
		    !exch_is_zero(p + sizeof(uint64_t), EXCH_PAGE_SIZE - sizeof(uint64_t)))
			bad++;
	}
	return bad;
}

/* ---- plain mappings ---- */

/* Sum of AnonHugePages (kB) of the VMAs that overlap [p, p+len). */
static long smaps_huge_bytes(const void *p, size_t len)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	uintptr_t lo = (uintptr_t)p, hi = lo + len, s = 0, e = 0;
	char line[SMAPS_LINE];
	long kb, total = 0;

	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		uintptr_t ns, ne;

		if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR " ", &ns, &ne) == 2) {
			s = ns;
			e = ne;
		} else if (s < hi && e > lo && sscanf(line, "AnonHugePages: %ld kB", &kb) == 1) {
			total += kb;
		}
	}
	fclose(f);
	return total * (long)KIB;
}

/* Method (b) or (c): touch, time, check, unmap. */
static int run_plain(size_t regions, int advice, uint64_t salt, struct phase *out)
{
	double *us = calloc(regions, sizeof(*us));
	void *raw;
	size_t raw_len;
	char *p = us ? bu_map_aligned(regions * EXCH_REGION_SIZE, advice, &raw, &raw_len) : NULL;
	uint64_t t0;
	long huge;

	if (!p) {
		free(us);
		return -ENOMEM;
	}
	t0 = bu_now_ns();
	for (size_t r = 0; r < regions; r++)
		us[r] = touch_region(p, r, salt);
	out->wall_s = (double)(bu_now_ns() - t0) / NS_PER_S;
	out->d = bu_dist_of(us, regions);
	huge = smaps_huge_bytes(p, regions * EXCH_REGION_SIZE);
	out->huge_known = huge >= 0;
	out->huge_bytes = huge >= 0 ? (size_t)huge : 0;
	out->bad_pages = verify(p, regions, salt);
	munmap(raw, raw_len);
	free(us);
	return 0;
}

/* ---- libexch ---- */

static uint64_t stat_value(const char *name)
{
	uint64_t v = 0;

	exch_stats_get(name, &v);
	return v;
}

/* Waits for a full pool; its time is added to @wait_s. */
static int pool_wait_timed(double *wait_s)
{
	uint64_t t0 = bu_now_ns();
	int rc = exch_pool_wait(POOL_WAIT_MS);

	*wait_s += (double)(bu_now_ns() - t0) / NS_PER_S;
	return rc;
}

/* The measured touches: batches of @batch regions, a full pool before each. */
static void libexch_paced(char *base, struct libexch_run *run, double *us)
{
	size_t batch = run->pool_frames ? run->pool_frames : run->regions;
	uint64_t fb0 = stat_value("fallback_pool_empty");
	uint64_t t0 = bu_now_ns();

	for (size_t r = 0; r < run->regions; r++) {
		if (r % batch == 0 && run->pool_frames)
			pool_wait_timed(&run->wait_s);
		us[r] = touch_region(base, r, SALT_LIBEXCH);
	}
	run->main.wall_s = (double)(bu_now_ns() - t0) / NS_PER_S;
	run->main_fallbacks = stat_value("fallback_pool_empty") - fb0;
}

/* BURST_FACTOR x the pool with no wait: how many regions fall back to 4K. */
static void libexch_burst(char *base, struct libexch_run *run, double *us)
{
	uint64_t fb0;
	double ignored = 0;

	pool_wait_timed(&ignored);
	fb0 = stat_value("fallback_pool_empty");
	for (size_t r = 0; r < run->burst_regions; r++)
		us[r] = touch_region(base, r, SALT_BURST);
	run->burst_fallbacks = stat_value("fallback_pool_empty") - fb0;
	run->burst = bu_dist_of(us, run->burst_regions);
}

static void libexch_coverage(exch_arena_t *arena, struct libexch_run *run)
{
	size_t resident = 0, huge = 0;

	run->main.huge_known = exch_arena_coverage(arena, &resident, &huge) == 0;
	run->main.huge_bytes = huge;
	run->resident = resident;
}

/* Touches, checks and frees the allocations of @arena: the measured
 * regions, then the burst. */
static int libexch_touch(exch_arena_t *arena, struct libexch_run *run, double *us)
{
	char *main_p = exch_alloc(arena, run->regions * EXCH_REGION_SIZE);
	char *burst_p = run->burst_regions ?
		exch_alloc(arena, run->burst_regions * EXCH_REGION_SIZE) : NULL;
	int rc = 0;

	if (!main_p || (run->burst_regions && !burst_p)) {
		fprintf(stderr, "bench_fault: exch_alloc: %s\n", strerror(errno));
		rc = -ENOMEM;
	} else {
		libexch_paced(main_p, run, us);
		run->main.d = bu_dist_of(us, run->regions);
		libexch_coverage(arena, run);
		run->main.bad_pages = verify(main_p, run->regions, SALT_LIBEXCH);
	}
	if (rc == 0 && burst_p) {
		libexch_burst(burst_p, run, us);
		run->main.bad_pages += verify(burst_p, run->burst_regions, SALT_BURST);
	}
	if (main_p)
		exch_free(arena, main_p);
	if (burst_p)
		exch_free(arena, burst_p);
	return rc;
}

/* Method (a). */
static int run_libexch(size_t regions, struct libexch_run *run)
{
	exch_arena_t *arena;
	uint64_t frames = 0;
	double *us;
	int rc;

	run->regions = regions;
	run->pool_rc = exch_pool_wait(POOL_WAIT_MS);
	if (run->pool_rc == 0 && exch_stats_get("pool_frames_ready", &frames) == 0)
		run->pool_frames = frames;
	/* Without hugepage-first there is no pool to run empty: no burst. */
	run->burst_regions = BURST_FACTOR * run->pool_frames;
	us = calloc(regions > run->burst_regions ? regions : run->burst_regions, sizeof(*us));
	if (!us)
		return -ENOMEM;
	rc = exch_arena_create((regions + run->burst_regions) * EXCH_REGION_SIZE, 0, &arena);
	if (rc < 0) {
		fprintf(stderr, "bench_fault: exch_arena_create: %s\n", strerror(-rc));
		free(us);
		return rc;
	}
	rc = libexch_touch(arena, run, us);
	exch_arena_destroy(arena);
	free(us);
	return rc;
}

/* ---- output ---- */

static double pct(size_t part, size_t whole)
{
	return whole ? PCT * (double)part / (double)whole : 0.0;
}

static void print_row(const char *name, const struct bu_dist *d, double base_p50)
{
	printf("  %-34s %9.1f %9.1f %9.2fx\n", name, d->p50_us, d->p99_us,
	       base_p50 > 0 ? d->p50_us / base_p50 : 0.0);
}

static void print_huge(const char *name, const struct phase *ph, size_t bytes)
{
	if (ph->huge_known)
		printf("  %-34s %5.1f%% PMD-mapped\n", name, pct(ph->huge_bytes, bytes));
	else
		printf("  %-34s unknown\n", name);
}

static void print_pacing(const struct libexch_run *a)
{
	if (a->pool_rc == -EOPNOTSUPP) {
		printf("hugepage-first is off (see the feature line): (a) is 4K faults "
		       "through userfaultfd.\n");
		return;
	}
	if (a->pool_rc < 0)
		printf("warning: the pool did not fill within %d ms (%s).\n",
		       POOL_WAIT_MS, strerror(-a->pool_rc));
	printf("The pool hides zeroing only while first touches come slower than its "
	       "refill:\n(a) touched %zu regions in batches of %zu (the pool size) with "
	       "exch_pool_wait() between batches.\n", a->regions, a->pool_frames);
	printf("  pool waits, not timed above:       %.3f s; wall time (a) incl. waits "
	       "%.3f s\n", a->wait_s, a->main.wall_s);
	printf("  fallbacks to 4K (pool empty) in the measured touches: %" PRIu64 "\n",
	       a->main_fallbacks);
}

static void print_table(const struct opts *o, const struct libexch_run *a,
			const struct phase *thp, const struct phase *small)
{
	size_t bytes = a->regions * EXCH_REGION_SIZE;
	double base = a->main.d.p50_us;

	printf("\nfirst touch of 2 MB = 512 writes, one per 4K page; %zu regions "
	       "(%.2f GiB) per method\n", a->regions, o->gb);
	printf("warm-up: %zu MiB populated and released first, so every method gets "
	       "memory the host has already backed\n", o->warm_bytes / MIB);
	printf("  %-34s %9s %9s %10s\n", "method", "p50 us", "p99 us", "p50/(a)");
	print_row("(a) libexch hugepage-first", &a->main.d, base);
	print_row("(b) kernel THP fault (MADV_HUGEPAGE)", &thp->d, base);
	print_row("(c) 512 x 4K faults (NOHUGEPAGE)", &small->d, base);
	printf("wall time of the touches: (b) %.3f s, (c) %.3f s\n", thp->wall_s, small->wall_s);
	printf("hugepage coverage of the touched memory:\n");
	print_huge("(a) arena (exch_arena_coverage)", &a->main, bytes);
	if (a->main.huge_known)
		printf("  %-34s %zu MiB resident of %zu MiB touched\n", "", a->resident / MIB,
		       bytes / MIB);
	print_huge("(b) THP mapping (smaps)", thp, bytes);
	print_huge("(c) 4K mapping (smaps)", small, bytes);
	print_pacing(a);
	if (a->burst_regions)
		printf("burst without waiting: %zu regions (%d x pool), %" PRIu64 " fell back "
		       "to 4K = burst_fallback_pct %.1f%%; p50 %.1f us, p99 %.1f us per 2 MB\n",
		       a->burst_regions, BURST_FACTOR, a->burst_fallbacks,
		       pct(a->burst_fallbacks, a->burst_regions), a->burst.p50_us,
		       a->burst.p99_us);
	printf("correctness: %zu / %zu / %zu pages did not read back ((a)+burst / (b) / (c))\n",
	       a->main.bad_pages, thp->bad_pages, small->bad_pages);
}

static void print_json(const struct opts *o, const struct libexch_run *a,
		       const struct phase *thp, const struct phase *small)
{
	double base = a->main.d.p50_us;
	size_t bytes = a->regions * EXCH_REGION_SIZE;

	printf("{\"gb\":%g,\"libexch_2m_us_p50\":%.2f,\"kernel_thp_2m_us_p50\":%.2f,"
	       "\"small_2m_us_p50\":%.2f,\"libexch_2m_us_p99\":%.2f,"
	       "\"kernel_thp_2m_us_p99\":%.2f,\"small_2m_us_p99\":%.2f,"
	       "\"ratio_thp_over_libexch\":%.2f,\"ratio_small_over_libexch\":%.2f,",
	       o->gb, base, thp->d.p50_us, small->d.p50_us, a->main.d.p99_us,
	       thp->d.p99_us, small->d.p99_us,
	       base > 0 ? thp->d.p50_us / base : 0.0, base > 0 ? small->d.p50_us / base : 0.0);
	if (a->main.huge_known)
		printf("\"coverage_pct\":%.1f,", pct(a->main.huge_bytes, bytes));
	else
		printf("\"coverage_pct\":null,");
	if (a->burst_regions)
		printf("\"burst_fallback_pct\":%.1f,", pct(a->burst_fallbacks, a->burst_regions));
	else
		printf("\"burst_fallback_pct\":null,");
	printf("\"pool_frames\":%zu,\"correct\":%s}\n", a->pool_frames,
	       a->main.bad_pages + thp->bad_pages + small->bad_pages ? "false" : "true");
}

/* ---- main ---- */

/* What phase (a) uses at most: its regions, the burst and the pool refills. */
static size_t warm_bytes(size_t regions)
{
	uint64_t frames = 0;

	exch_pool_wait(POOL_WAIT_MS);
	exch_stats_get("pool_frames_ready", &frames);
	return (regions + (BURST_FACTOR + 1) * (size_t)frames) * EXCH_REGION_SIZE;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
	o->gb = DEFAULT_GB;
	o->json = false;
	for (int i = 1; i < argc; i++) {
		char *end;

		if (!strcmp(argv[i], "--json")) {
			o->json = true;
		} else if (!strcmp(argv[i], "--quick")) {
			o->gb = QUICK_GB;
		} else if (!strcmp(argv[i], "--gb") && i + 1 < argc) {
			o->gb = strtod(argv[++i], &end);
			if (*end || !(o->gb > 0))
				return -EINVAL;
		} else {
			return -EINVAL;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct libexch_run a = { 0 };
	struct phase thp = { 0 }, small = { 0 };
	struct opts o;
	size_t regions;

	if (parse_args(argc, argv, &o) < 0) {
		fprintf(stderr, "usage: %s [--gb N] [--quick] [--json]\n", argv[0]);
		return 2;
	}
	regions = (size_t)(o.gb * (double)GIB / (double)EXCH_REGION_SIZE + 0.5);
	if (!regions)
		regions = 1;
	o.gb = (double)(regions * EXCH_REGION_SIZE) / (double)GIB;
	setenv("EXCH_POOL_FRAMES", BENCH_POOL_FRAMES, 0);
	exch_features_print(stdout);
	o.warm_bytes = warm_bytes(regions);
	if (bu_warm_up(o.warm_bytes) < 0)
		fprintf(stderr, "bench_fault: warm-up failed; timings may include "
			"the host's first faults\n");
	if (run_libexch(regions, &a) < 0)
		return 1;
	/* The refill of the burst's frames must not compete with (b) and (c). */
	exch_pool_wait(POOL_WAIT_MS);
	if (run_plain(regions, MADV_HUGEPAGE, SALT_THP, &thp) < 0 ||
	    run_plain(regions, MADV_NOHUGEPAGE, SALT_SMALL, &small) < 0) {
		fprintf(stderr, "bench_fault: cannot map %zu MiB\n", regions * EXCH_REGION_SIZE / MIB);
		return 1;
	}
	print_table(&o, &a, &thp, &small);
	if (o.json)
		print_json(&o, &a, &thp, &small);
	return a.main.bad_pages + thp.bad_pages + small.bad_pages ? 1 : 0;
}

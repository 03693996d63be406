/*
 * bench_coalesce.c - turning 4K-mapped 2 MB regions into hugepages, two ways,
 * and what each does to the rest of the process meanwhile.
 *
 * Both methods start from the same state: N regions, each mapped with 512
 * small pages, every byte written with a pattern of its page. Each region is
 * then made one hugepage, one region per call, and every call is timed with
 * CLOCK_MONOTONIC; the per-region numbers are those calls, and GB/s is the
 * bytes made huge over the sum of the calls' times.
 *
 *   (1) libexch        an arena created EXCH_ARENA_NOHUGE, so first touches
 *                      get 4K pages; exch_coalesce(EXCH_NOWAIT) on one region
 *                      at a time: move out with UFFDIO_MOVE, copy into a
 *                      pool frame, move the frame in.
 *   (2) MADV_COLLAPSE  an anonymous mapping filled under MADV_NOHUGEPAGE;
 *                      per region, MADV_HUGEPAGE (not timed: it only makes
 *                      the region eligible) and then MADV_COLLAPSE (timed).
 *                      Making regions eligible one at a time, just before
 *                      their collapse, keeps khugepaged from collapsing any
 *                      of them first.
 *   (3) captured       as (1), but before each chunk the program allocates,
 *                      writes and frees as many hugepages of its own in
 *                      another arena (not timed). The library captures them
 *                      (pool.c), and each coalesce copies into such a frame,
 *                      zeroing only the holes, instead of a pool frame.
 *
 * Each coalesced region takes a frame from libexch's pool, so (1) runs in
 * chunks no larger than the pool with exch_pool_wait() between chunks; waits
 * are not timed and are reported on their own line. The pool's refill
 * thread still runs inside a chunk once the pool falls low: that cost
 * is inside (1)'s numbers, as it would be in a real program.
 *
 * What the rest of the process sees: while the timed calls of each method
 * run, a second thread maps 64 KiB, touches one byte and unmaps it, in a
 * loop. Its operations are counted only inside the timed calls (the counter
 * is read before and after each), so ops/s = operations in the calls over
 * the time in the calls. MADV_COLLAPSE holds the mmap lock for writing while
 * it copies, so every mmap and munmap of the other thread waits; libexch's
 * UFFDIO_MOVE and MADV_DONTNEED take the mmap lock at most for reading. The same loop alone, with the main
 * thread asleep, gives the baseline.
 *
 * The same two methods run once more with no second thread (ratio_quiet):
 * the mmap thread's munmaps send TLB-shootdown IPIs to the CPU doing the
 * copy, which MADV_COLLAPSE's write-held mmap lock keeps away from it, and
 * on this VM they double the time of a 2 MB copy. The quiet runs show each
 * method's own speed; `ratio` shows it with the program running.
 *
 * The background alternative is khugepaged. It scans at most pages_to_scan
 * pages every scan_sleep_millisecs (sysfs), so that quotient bounds its
 * collapse rate; the bench reads both values and prints the bound.
 *
 * Before the first phase the bench populates and releases as much memory as
 * the run will use (warm_up): the host backs guest memory lazily, and the
 * first populate of never-used guest memory costs ~17x more, which would go
 * to whichever phase got it first.
 *
 * Correctness: each method's PMD-mapped share is shown before coalescing
 * (0% means every region really was 4K pages); after, every word of every
 * page is read back
 * against its pattern. A page that does not read back, or a libexch call
 * that fails, makes the exit status 1. Coverage after is reported, not
 * enforced: it is a goal, not a correctness property.
 *
 * Usage: bench_coalesce [--gb N] [--quick] [--json]
 *   --gb N    coalesce N GiB per method (default 1 = 512 regions)
 *   --quick   256 MiB per method
 *   --json    one JSON object as the last line of stdout
 * The pool holds BENCH_POOL_FRAMES frames unless EXCH_POOL_FRAMES is set.
 * Memory is released between phases; the run needs about 2N GiB at once.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include <exch.h>

#include "bench_util.h"

#include "compat.h" /* MADV_COLLAPSE, absent from Debian 12's glibc */

#define GIB ((size_t)1 << 30)
#define MIB ((size_t)1 << 20)
#define KIB 1024
#define DEFAULT_GB 1.0
#define QUICK_GB 0.25
#define BENCH_POOL_FRAMES "64"
#define POOL_WAIT_MS 30000
#define PAGES_PER_2M (EXCH_REGION_SIZE / EXCH_PAGE_SIZE)
#define WORDS_PER_PAGE (EXCH_PAGE_SIZE / sizeof(uint64_t))
#define CHURN_BYTES (64 * KIB)
#define IDLE_NS 500000000ull /* baseline of the mmap loop alone */
#define NS_PER_US 1000.0
#define NS_PER_S 1000000000.0
#define NS_PER_SEC 1000000000ull
#define BYTES_PER_GB 1e9
#define BYTES_PER_MB 1e6
#define MS_PER_S 1000.0
#define PCT 100.0
#define SMAPS_LINE 512
#define SYSFS_LINE 64
#define KHUGEPAGED_DIR "/sys/kernel/mm/transparent_hugepage/khugepaged/"

/* Distinct nonzero value per page: an odd multiplier is a bijection. */
#define PAGE_MULT 0x9E3779B97F4A7C15ull
/* Per-method salt, so a page that kept another phase's value is caught. */
#define SALT_LIBEXCH 0x5ull
#define SALT_COLLAPSE 0x6ull
#define SALT_CAPTURED 0x7ull
#define SALT_SHIFT 60

struct opts {
	double gb;
	bool json;
	size_t warm_bytes; /* populated and released before the phases */
};

/* Operations of the mmap thread and time, summed over the timed calls. */
struct window {
	uint64_t ops;
	uint64_t ns;
};

/* One method's run. */
struct phase {
	struct bu_dist d;
	struct window w;
	size_t done;          /* regions made huge, by the calls' own account */
	size_t failed;        /* calls that returned an error */
	size_t huge_before;   /* PMD-mapped bytes before coalescing */
	size_t huge_after;
	size_t bad_pages;     /* pages that did not read back */
	double fill_s;        /* writing the pattern (4K faults), not timed */
	bool huge_known;
	int first_err;        /* -errno of the first failed call */
};

struct libexch_extra {
	struct exch_coalesce_report rep; /* summed over every call */
	size_t pool_frames;
	size_t chunks;
	size_t resident;
	uint64_t stat_coalesced;         /* coalesced_regions counter delta */
	double wait_s;
	int pool_rc;
};

/* The second thread: mmap / touch / munmap, counted. */
struct churn {
	bool running;
	pthread_t thread;
	atomic_bool stop;
	atomic_uint_fast64_t ops;
	int err; /* errno of a failed mmap; read after join */
};

/* ---- timing and statistics ---- */

static double pct(size_t part, size_t whole)
{
	return whole ? PCT * (double)part / (double)whole : 0.0;
}

/* ---- the pattern ---- */

static uint64_t page_value(uint64_t salt, size_t page)
{
	return (salt << SALT_SHIFT) ^ ((uint64_t)(page + 1) * PAGE_MULT);
}

/* Writes every word of @nregions regions: word w of page pg holds
 * page_value(pg) + w, so a page moved, dropped or half-copied is caught. */
static double fill(char *base, size_t nregions, uint64_t salt)
{
	uint64_t t0 = bu_now_ns();

	for (size_t pg = 0; pg < nregions * PAGES_PER_2M; pg++) {
		uint64_t *p = (uint64_t *)(base + pg * EXCH_PAGE_SIZE);
		uint64_t v = page_value(salt, pg);

		for (size_t w = 0; w < WORDS_PER_PAGE; w++)
			p[w] = v + w;
	}
	return (double)(bu_now_ns() - t0) / NS_PER_S;
}

/* Pages of @nregions that do not hold their pattern. */
static size_t verify(const char *base, size_t nregions, uint64_t salt)
{
	size_t bad = 0;

	for (size_t pg = 0; pg < nregions * PAGES_PER_2M; pg++) {
		const uint64_t *p = (const uint64_t *)(base + pg * EXCH_PAGE_SIZE);
		uint64_t v = page_value(salt, pg), diff = 0;

		for (size_t w = 0; w < WORDS_PER_PAGE; w++)
			diff |= p[w] ^ (v + w);
		bad += diff != 0;
	}
	return bad;
}

/* ---- the mmap thread ---- */

static void *churn_main(void *arg)
{
	struct churn *c = arg;

	while (!atomic_load_explicit(&c->stop, memory_order_relaxed)) {
		char *p = mmap(NULL, CHURN_BYTES, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (p == MAP_FAILED) {
			c->err = errno;
			break;
		}
		*(volatile char *)p = 1;
		munmap(p, CHURN_BYTES);
		atomic_fetch_add_explicit(&c->ops, 1, memory_order_relaxed);
	}
	return NULL;
}

/* The quiet runs: no second thread at all. */
static bool churn_off;

/* Starts the loop and returns once it has done an operation. */
static int churn_start(struct churn *c)
{
	const struct timespec tick = { 0, 100000 };
	int rc;

	atomic_init(&c->stop, false);
	atomic_init(&c->ops, 0);
	c->err = 0;
	c->running = !churn_off;
	if (churn_off)
		return 0;
	rc = pthread_create(&c->thread, NULL, churn_main, c);
	c->running = rc == 0;
	if (rc)
		return -rc;
	while (atomic_load(&c->ops) == 0 && !c->err)
		nanosleep(&tick, NULL);
	return 0;
}

/* Stops the loop; -errno if an mmap of it failed. */
static int churn_stop(struct churn *c)
{
	if (!c->running)
		return 0;
	atomic_store(&c->stop, true);
	pthread_join(c->thread, NULL);
	return c->err ? -c->err : 0;
}

static uint64_t churn_ops(struct churn *c)
{
	return atomic_load_explicit(&c->ops, memory_order_relaxed);
}

/* Ops/s of the loop alone, the main thread asleep. */
static double churn_idle_rate(void)
{
	const struct timespec nap = { 0, (long)IDLE_NS };
	struct churn c;
	uint64_t t0, n0;

	if (churn_start(&c) < 0)
		return 0;
	n0 = churn_ops(&c);
	t0 = bu_now_ns();
	nanosleep(&nap, NULL);
	n0 = churn_ops(&c) - n0;
	t0 = bu_now_ns() - t0;
	churn_stop(&c);
	return bu_per_s(n0, t0);
}

/* ---- one timed call ---- */

/* Coalesces the region at @p one way; 0 when it is now one hugepage,
 * 1 when it is not (no error), or -errno. */
typedef int (*coalesce_fn)(void *ctx, char *p);

/* Calls @fn on one region; adds its time and the mmap thread's operations
 * during it to @w; returns the time in us through @us. */
static int timed_call(coalesce_fn fn, void *ctx, char *p, struct churn *c,
		      struct window *w, double *us)
{
	uint64_t n0 = churn_ops(c), t0 = bu_now_ns(), t1;
	int rc = fn(ctx, p);

	t1 = bu_now_ns();
	w->ops += churn_ops(c) - n0;
	w->ns += t1 - t0;
	*us = (double)(t1 - t0) / NS_PER_US;
	return rc;
}

static void count_call(struct phase *ph, int rc)
{
	if (rc == 0)
		ph->done++;
	else if (rc < 0 && !ph->failed++)
		ph->first_err = rc;
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

/* ---- method (2): MADV_COLLAPSE ---- */

static int collapse_one(void *ctx, char *p)
{
	(void)ctx;
	return madvise(p, EXCH_REGION_SIZE, MADV_COLLAPSE) < 0 ? -errno : 0;
}

static void collapse_regions(char *base, size_t regions, struct phase *ph, double *us)
{
	struct churn c;

	if (churn_start(&c) < 0)
		fprintf(stderr, "bench_coalesce: cannot start the mmap thread\n");
	for (size_t r = 0; r < regions; r++) {
		char *p = base + r * EXCH_REGION_SIZE;
		int rc = madvise(p, EXCH_REGION_SIZE, MADV_HUGEPAGE) < 0 ? -errno : 0;

		if (rc == 0)
			rc = timed_call(collapse_one, NULL, p, &c, &ph->w, &us[r]);
		count_call(ph, rc);
	}
	if (churn_stop(&c) < 0)
		fprintf(stderr, "bench_coalesce: the mmap thread stopped early\n");
}

static int run_collapse(size_t regions, struct phase *ph)
{
	size_t bytes = regions * EXCH_REGION_SIZE;
	double *us = calloc(regions, sizeof(*us));
	void *raw;
	size_t raw_len;
	char *p = us ? bu_map_aligned(bytes, MADV_NOHUGEPAGE, &raw, &raw_len) : NULL;
	long before, after;

	if (!p) {
		free(us);
		return -ENOMEM;
	}
	ph->fill_s = fill(p, regions, SALT_COLLAPSE);
	before = smaps_huge_bytes(p, bytes);
	collapse_regions(p, regions, ph, us);
	after = smaps_huge_bytes(p, bytes);
	ph->huge_known = before >= 0 && after >= 0;
	ph->huge_before = before > 0 ? (size_t)before : 0;
	ph->huge_after = after > 0 ? (size_t)after : 0;
	ph->d = bu_dist_of(us, regions);
	ph->bad_pages = verify(p, regions, SALT_COLLAPSE);
	munmap(raw, raw_len);
	free(us);
	return 0;
}

/* ---- method (1): libexch ---- */

struct exch_ctx {
	exch_arena_t *arena;
	exch_arena_t *donor; /* (3): hugepages freed before each chunk */
	struct exch_coalesce_report sum;
};

static int exch_one(void *ctx, char *p)
{
	struct exch_ctx *x = ctx;
	struct exch_coalesce_report rep;
	int rc = exch_coalesce(x->arena, p, EXCH_REGION_SIZE, EXCH_NOWAIT, &rep);

	if (rc < 0)
		return rc;
	x->sum.examined += rep.examined;
	x->sum.coalesced += rep.coalesced;
	x->sum.already_huge += rep.already_huge;
	x->sum.unshared += rep.unshared;
	x->sum.skipped_busy += rep.skipped_busy;
	x->sum.skipped_sparse += rep.skipped_sparse;
	x->sum.skipped_no_frame += rep.skipped_no_frame;
	x->sum.errors += rep.errors;
	x->sum.bytes_copied += rep.bytes_copied;
	x->sum.captured_used += rep.captured_used;
	x->sum.ns += rep.ns;
	return rep.coalesced == 1 ? 0 : 1;
}

static uint64_t stat_value(const char *name)
{
	uint64_t v = 0;

	exch_stats_get(name, &v);
	return v;
}

static void pool_wait_timed(double *wait_s)
{
	uint64_t t0 = bu_now_ns();

	exch_pool_wait(POOL_WAIT_MS);
	*wait_s += (double)(bu_now_ns() - t0) / NS_PER_S;
}

/*
 * (3): the application frees @n hugepages of its own (allocated, written,
 * exch_free'd), which the library captures; not timed. The pool is full
 * again afterwards, so (3) differs from (1) only in the frames it uses.
 */
static void donate(struct exch_ctx *x, size_t n, struct libexch_extra *ex)
{
	char *p = exch_alloc(x->donor, n * EXCH_REGION_SIZE);

	if (!p) {
		fprintf(stderr, "bench_coalesce: exch_alloc (donor): %s\n", strerror(errno));
		return;
	}
	memset(p, 1, n * EXCH_REGION_SIZE);
	exch_free(x->donor, p);
	pool_wait_timed(&ex->wait_s);
}

/* Chunks of at most the pool's frames, a full pool before each chunk. */
static void exch_regions(struct exch_ctx *x, char *base, size_t regions,
			 struct phase *ph, struct libexch_extra *ex, double *us)
{
	size_t chunk = ex->pool_frames ? ex->pool_frames : regions;
	uint64_t stat0 = stat_value("coalesced_regions");
	struct churn c;

	if (churn_start(&c) < 0)
		fprintf(stderr, "bench_coalesce: cannot start the mmap thread\n");
	for (size_t r = 0; r < regions; r++) {
		if (r % chunk == 0) {
			pool_wait_timed(&ex->wait_s);
			if (x->donor)
				donate(x, regions - r < chunk ? regions - r : chunk, ex);
			ex->chunks++;
		}
		count_call(ph, timed_call(exch_one, x, base + r * EXCH_REGION_SIZE, &c,
					  &ph->w, &us[r]));
	}
	if (churn_stop(&c) < 0)
		fprintf(stderr, "bench_coalesce: the mmap thread stopped early\n");
	ex->stat_coalesced = stat_value("coalesced_regions") - stat0;
	ex->rep = x->sum;
}

static bool exch_huge_bytes(exch_arena_t *arena, size_t *huge, size_t *resident)
{
	return exch_arena_coverage(arena, resident, huge) == 0;
}

/* Fills, coalesces and checks an allocation of @regions in @arena. */
static int exch_measure(exch_arena_t *arena, exch_arena_t *donor, size_t regions,
			struct phase *ph, struct libexch_extra *ex, uint64_t salt)
{
	struct exch_ctx x = { .arena = arena, .donor = donor };
	double *us = calloc(regions, sizeof(*us));
	char *p = us ? exch_alloc(arena, regions * EXCH_REGION_SIZE) : NULL;
	size_t resident;
	bool known;

	if (!p) {
		fprintf(stderr, "bench_coalesce: exch_alloc: %s\n", strerror(errno));
		free(us);
		return -ENOMEM;
	}
	ph->fill_s = fill(p, regions, salt);
	known = exch_huge_bytes(arena, &ph->huge_before, &resident);
	exch_regions(&x, p, regions, ph, ex, us);
	ph->huge_known = known && exch_huge_bytes(arena, &ph->huge_after, &ex->resident);
	ph->d = bu_dist_of(us, regions);
	ph->bad_pages = verify(p, regions, salt);
	exch_free(arena, p);
	free(us);
	return 0;
}

/* (1), or (3) with @captured: the donor arena gets hugepages at first touch. */
static int run_libexch(size_t regions, struct phase *ph, struct libexch_extra *ex,
		       bool captured)
{
	exch_arena_t *arena, *donor = NULL;
	int rc;

	ex->pool_rc = exch_pool_wait(POOL_WAIT_MS);
	if (ex->pool_rc == 0)
		ex->pool_frames = stat_value("pool_frames_ready");
	rc = exch_arena_create(regions * EXCH_REGION_SIZE, EXCH_ARENA_NOHUGE, &arena);
	if (rc == 0 && captured) {
		rc = exch_arena_create(ex->pool_frames * EXCH_REGION_SIZE, 0, &donor);
		if (rc < 0)
			exch_arena_destroy(arena);
	}
	if (rc < 0) {
		fprintf(stderr, "bench_coalesce: exch_arena_create: %s\n", strerror(-rc));
		return rc;
	}
	rc = exch_measure(arena, donor, regions, ph, ex, captured ? SALT_CAPTURED : SALT_LIBEXCH);
	exch_arena_destroy(arena);
	if (donor)
		exch_arena_destroy(donor);
	return rc;
}

/* ---- khugepaged ---- */

static long sysfs_long(const char *name)
{
	char path[SMAPS_LINE], line[SYSFS_LINE];
	FILE *f;
	long v = -1;

	snprintf(path, sizeof(path), "%s%s", KHUGEPAGED_DIR, name);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (!fgets(line, sizeof(line), f) || sscanf(line, "%ld", &v) != 1)
		v = -1;
	fclose(f);
	return v;
}

struct khugepaged {
	long pages;    /* pages_to_scan */
	long sleep_ms; /* scan_sleep_millisecs */
	double mbps;   /* bound on its collapse rate; <0 if unknown */
};

static struct khugepaged khugepaged_rate(void)
{
	struct khugepaged k = { sysfs_long("pages_to_scan"),
				sysfs_long("scan_sleep_millisecs"), -1 };

	if (k.pages > 0 && k.sleep_ms > 0)
		k.mbps = (double)k.pages * (double)EXCH_PAGE_SIZE / BYTES_PER_MB /
			 ((double)k.sleep_ms / MS_PER_S);
	return k;
}

/* ---- output ---- */

struct results {
	struct phase exch, col, cap;
	struct phase exch_quiet, col_quiet; /* the same with no mmap thread */
	struct libexch_extra qx;
	struct libexch_extra ex, cx;
	struct khugepaged k;
	double idle_ops;
	size_t regions;
};

static double gbps(const struct phase *ph)
{
	return ph->w.ns ? (double)(ph->done * EXCH_REGION_SIZE) / BYTES_PER_GB /
			  ((double)ph->w.ns / NS_PER_S) : 0.0;
}

static double ratio(double a, double b)
{
	return b > 0 ? a / b : 0.0;
}

static bool correct(const struct results *r)
{
	return !r->exch.bad_pages && !r->col.bad_pages && !r->cap.bad_pages &&
	       !r->exch_quiet.bad_pages && !r->col_quiet.bad_pages && !r->exch.failed &&
	       !r->cap.failed && !r->exch_quiet.failed;
}

static void print_row(const char *name, const struct phase *ph, size_t bytes)
{
	printf("  %-30s %7.2f %9.1f %9.1f %10.0f ", name, gbps(ph), ph->d.p50_us,
	       ph->d.p99_us, bu_per_s(ph->w.ops, ph->w.ns));
	if (ph->huge_known)
		printf("%5.1f%% -> %5.1f%%\n", pct(ph->huge_before, bytes),
		       pct(ph->huge_after, bytes));
	else
		printf("unknown\n");
}

static void print_libexch(const struct results *r)
{
	const struct libexch_extra *ex = &r->ex;

	if (ex->pool_rc < 0)
		printf("warning: exch_pool_wait: %s\n", strerror(-ex->pool_rc));
	printf("(1) ran in %zu chunks of <= %zu regions (the pool); exch_pool_wait() "
	       "between chunks, not timed: %.3f s\n", ex->chunks, ex->pool_frames, ex->wait_s);
	printf("    reports: examined %" PRIu64 ", coalesced %" PRIu64 ", already huge %"
	       PRIu64 ", busy %" PRIu64 ", sparse %" PRIu64 ", no frame %" PRIu64
	       ", errors %" PRIu64 "; copied %.1f MiB; coalesced_regions counter +%" PRIu64
	       "\n", ex->rep.examined, ex->rep.coalesced, ex->rep.already_huge,
	       ex->rep.skipped_busy, ex->rep.skipped_sparse, ex->rep.skipped_no_frame,
	       ex->rep.errors, (double)ex->rep.bytes_copied / MIB, ex->stat_coalesced);
	if (r->exch.failed)
		printf("    %zu exch_coalesce calls failed, first: %s\n", r->exch.failed,
		       strerror(-r->exch.first_err));
	if (r->col.failed)
		printf("(2) %zu MADV_COLLAPSE calls failed, first: %s\n", r->col.failed,
		       strerror(-r->col.first_err));
}

static void print_table(const struct opts *o, const struct results *r)
{
	size_t bytes = r->regions * EXCH_REGION_SIZE;
	double ops_e = bu_per_s(r->exch.w.ops, r->exch.w.ns);
	double ops_c = bu_per_s(r->col.w.ops, r->col.w.ns);

	printf("\ncoalescing 4K-mapped 2 MB regions into hugepages: %zu regions (%.2f GiB) "
	       "per method, one call per region\n", r->regions, o->gb);
	printf("warm-up: %zu MiB populated and released first\n", o->warm_bytes / MIB);
	printf("  %-30s %7s %9s %9s %10s %s\n", "method", "GB/s", "p50 us", "p99 us",
	       "mmap ops/s", "PMD-mapped before -> after");
	print_row("(1) libexch exch_coalesce", &r->exch, bytes);
	print_row("(2) MADV_COLLAPSE", &r->col, bytes);
	print_row("(3) exch_coalesce, captured", &r->cap, bytes);
	print_row("(1) with no mmap thread", &r->exch_quiet, bytes);
	print_row("(2) with no mmap thread", &r->col_quiet, bytes);
	printf("  %-30s %6.2fx %9s %9s %9.1fx\n", "(1) over (2)",
	       ratio(gbps(&r->exch), gbps(&r->col)), "", "", ratio(ops_e, ops_c));
	printf("  %-30s %6.2fx\n", "(3) over (2)", ratio(gbps(&r->cap), gbps(&r->col)));
	printf("  %-30s %6.2fx\n", "(1) over (2), no mmap thread",
	       ratio(gbps(&r->exch_quiet), gbps(&r->col_quiet)));
	printf("mmap ops/s: the other thread's mmap(64 KiB)/touch/munmap inside the timed "
	       "calls; alone: %.0f ops/s\n", r->idle_ops);
	if (r->k.mbps >= 0)
		printf("khugepaged: at most %ld pages per %ld ms = %.2f MB/s (%.0f s for these "
		       "%zu regions)\n", r->k.pages, r->k.sleep_ms, r->k.mbps,
		       (double)bytes / BYTES_PER_MB / r->k.mbps, r->regions);
	else
		printf("khugepaged: rate unknown (cannot read %s)\n", KHUGEPAGED_DIR);
	printf("filling (4K faults, not timed): (1) %.2f s, (2) %.2f s\n", r->exch.fill_s,
	       r->col.fill_s);
	print_libexch(r);
	printf("(3) the same, but before each chunk the program frees as many hugepages of "
	       "its own (not timed), which the library captures: %" PRIu64 " of %" PRIu64
	       " regions coalesced into captured frames\n", r->cx.rep.captured_used,
	       r->cx.rep.coalesced);
	printf("correctness: %zu / %zu / %zu pages did not read back ((1) / (2) / (3))\n",
	       r->exch.bad_pages, r->col.bad_pages, r->cap.bad_pages);
}

static void print_json_num(const char *key, double v, bool valid)
{
	if (valid)
		printf("\"%s\":%.2f,", key, v);
	else
		printf("\"%s\":null,", key);
}

static void print_json(const struct opts *o, const struct results *r)
{
	size_t bytes = r->regions * EXCH_REGION_SIZE;
	double ops_e = bu_per_s(r->exch.w.ops, r->exch.w.ns);
	double ops_c = bu_per_s(r->col.w.ops, r->col.w.ns);

	printf("{\"gb\":%g,\"regions\":%zu,\"exch_gbps\":%.3f,\"collapse_gbps\":%.3f,",
	       o->gb, r->regions, gbps(&r->exch), gbps(&r->col));
	print_json_num("ratio", ratio(gbps(&r->exch), gbps(&r->col)), gbps(&r->col) > 0);
	print_json_num("ratio_captured", ratio(gbps(&r->cap), gbps(&r->col)), gbps(&r->col) > 0);
	print_json_num("ratio_quiet", ratio(gbps(&r->exch_quiet), gbps(&r->col_quiet)),
		       gbps(&r->col_quiet) > 0);
	printf("\"captured_gbps\":%.3f,\"captured_used\":%" PRIu64 ",\"captured_us_per_region_p50\":"
	       "%.1f,", gbps(&r->cap), r->cx.rep.captured_used, r->cap.d.p50_us);
	printf("\"exch_us_per_region_p50\":%.1f,\"collapse_us_per_region_p50\":%.1f,"
	       "\"exch_us_per_region_p99\":%.1f,\"collapse_us_per_region_p99\":%.1f,",
	       r->exch.d.p50_us, r->col.d.p50_us, r->exch.d.p99_us, r->col.d.p99_us);
	print_json_num("coverage_before_pct", pct(r->exch.huge_before, bytes), r->exch.huge_known);
	print_json_num("coverage_after_pct", pct(r->exch.huge_after, bytes), r->exch.huge_known);
	print_json_num("collapse_coverage_after_pct", pct(r->col.huge_after, bytes),
		       r->col.huge_known);
	printf("\"mmap_ops_idle\":%.0f,\"mmap_ops_during_exch\":%.0f,"
	       "\"mmap_ops_during_collapse\":%.0f,", r->idle_ops, ops_e, ops_c);
	print_json_num("mmap_ops_ratio", ratio(ops_e, ops_c), ops_c > 0);
	print_json_num("khugepaged_mbps", r->k.mbps, r->k.mbps >= 0);
	printf("\"exch_pool_wait_s\":%.3f,\"pool_frames\":%zu,\"exch_failed\":%zu,"
	       "\"collapse_failed\":%zu,\"correct\":%s}\n", r->ex.wait_s, r->ex.pool_frames,
	       r->exch.failed, r->col.failed, correct(r) ? "true" : "false");
}

/* ---- main ---- */

/*
 * (1) and (2) again with no second thread: the mmap thread's munmaps send
 * TLB-shootdown IPIs to the CPU that copies (MADV_COLLAPSE blocks them with
 * the mmap lock), which doubles the copy's time on this VM; these runs
 * show the methods' own speed.
 */
static int run_quiet(struct results *r)
{
	int rc;

	churn_off = true;
	exch_pool_wait(POOL_WAIT_MS);
	rc = run_libexch(r->regions, &r->exch_quiet, &r->qx, false);
	exch_pool_wait(POOL_WAIT_MS);
	if (rc == 0)
		rc = run_collapse(r->regions, &r->col_quiet);
	churn_off = false;
	return rc;
}

/* At most: the 4K pages of one method plus as many new hugepages, the
 * pool's frames and (3)'s captured ones. */
static size_t warm_bytes(size_t regions)
{
	exch_pool_wait(POOL_WAIT_MS);
	return (2 * regions + 2 * (size_t)stat_value("pool_frames_ready")) * EXCH_REGION_SIZE;
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
	struct results r = { 0 };
	struct opts o;

	if (parse_args(argc, argv, &o) < 0) {
		fprintf(stderr, "usage: %s [--gb N] [--quick] [--json]\n", argv[0]);
		return 2;
	}
	r.regions = (size_t)(o.gb * (double)GIB / (double)EXCH_REGION_SIZE + 0.5);
	if (!r.regions)
		r.regions = 1;
	o.gb = (double)(r.regions * EXCH_REGION_SIZE) / (double)GIB;
	setenv("EXCH_POOL_FRAMES", BENCH_POOL_FRAMES, 0);
	setenv("EXCH_CAPTURE_FRAMES", BENCH_POOL_FRAMES, 0);
	exch_features_print(stdout);
	o.warm_bytes = warm_bytes(r.regions);
	if (bu_warm_up(o.warm_bytes) < 0)
		fprintf(stderr, "bench_coalesce: warm-up failed; timings may include "
			"the host's first faults\n");
	r.idle_ops = churn_idle_rate();
	r.k = khugepaged_rate();
	if (run_libexch(r.regions, &r.exch, &r.ex, false) < 0 ||
	    run_libexch(r.regions, &r.cap, &r.cx, true) < 0)
		return 1;
	/* The pool's refill must not compete with (2). */
	exch_pool_wait(POOL_WAIT_MS);
	if (run_collapse(r.regions, &r.col) < 0 || run_quiet(&r) < 0) {
		fprintf(stderr, "bench_coalesce: cannot map %zu MiB\n",
			r.regions * EXCH_REGION_SIZE / MIB);
		return 1;
	}
	print_table(&o, &r);
	if (o.json)
		print_json(&o, &r);
	return correct(&r) ? 0 : 1;
}

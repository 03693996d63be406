/*
 * bench_tlb.c - what the hugepages made by exch_coalesce() are worth to a
 * program that touches a large table at random, against 4K pages and
 * against hugepages from the first touch.
 *
 * The workload is random updates in the GUPS style (HPCC RandomAccess): one
 * table of 64-bit words, and a stream of updates t[idx] ^= value, where idx
 * and value come from one xorshift64* generator with a fixed seed. idx is
 * the high half of value * words, so every word can be hit. Nothing in the
 * loop waits for an earlier update, so the CPU overlaps many misses, as
 * GUPS intends; what differs between the three tables is the cost of the
 * address translation: with 4K pages a table of N GiB needs N * 2 MiB of
 * page-table entries and almost every update misses the TLB; with 2 MB
 * pages the PMD entries fit in cache and the TLB reaches 512x further.
 *
 * The same table size, seed and number of updates serve all three
 * measurements, in one process:
 *
 *   4k          an arena created EXCH_ARENA_NOHUGE, so first touches get 4K
 *               pages; coverage_4k_pct (PMD-mapped share, from the page
 *               tables) shows that they really are 4K.
 *   coalesced   the same table, same addresses and contents, after
 *               exch_coalesce(EXCH_BLOCK) over it, in chunks no larger than
 *               the frame pool with exch_pool_wait() before each chunk.
 *               coalesce_seconds is the wall time of the exch_coalesce()
 *               calls only; the pool waits are reported on their own.
 *   thp         a new arena (flags 0): each region's first touch is served
 *               with a pool frame, a hugepage from the start. The table is
 *               filled in chunks of the pool's size with exch_pool_wait()
 *               before each, so no first touch finds the pool empty (which
 *               would give that region 4K pages). This is libexch's own
 *               hugepage path, the state coalescing is meant to reach, and
 *               coverage_thp_pct shows it is reached whole (100% in our
 *               runs), so the kernel's THP (an aligned MADV_HUGEPAGE
 *               mapping) is not needed as a stand-in.
 *
 * Each measurement is two passes of the same stream. XOR twice is the
 * identity, so after the second pass every word must hold the value the
 * fill gave it (a function of its index and a per-table salt); the words
 * that do not are counted as mismatches, which makes the exit status 1.
 * This also checks that coalescing kept every byte: the coalesced passes
 * start from the table exch_coalesce() rebuilt. Both passes are timed with
 * CLOCK_MONOTONIC and do the same work; ns_per_update is the faster pass
 * over the number of updates, because on a shared machine noise only ever
 * adds time. Before each measurement the pool is refilled, so the pool's
 * refill thread does not compete with the loop. The table escapes to the
 * library and is read back by the check, and the clock is read through an
 * opaque call, so the stores can be neither dropped nor moved out of the
 * timed interval; no volatile is needed in the loop.
 *
 * Before the first phase the bench populates and releases as much memory as
 * one phase uses (warm_up): the host backs guest memory lazily, and the
 * first use of never-used guest memory costs ~4 ms per 2 MB, which would go
 * to whichever phase got it first. Memory is released between the phases,
 * so the run needs about the table's size at once (plus the pool). The
 * phases run seconds apart on a shared host, so the ratios move by a few
 * percent from run to run; compare runs, not one number.
 *
 * Numbers:
 *   ns_per_update_4k / _coalesced / _thp   faster pass, ns per update
 *   ratio_coalesced_over_thp   the goal is <= 1.03
 *   ratio_4k_over_thp          what hugepages are worth here at all
 *   coalesce_seconds           sum of the exch_coalesce() calls
 *   coverage_*_pct             PMD-mapped bytes over the table's bytes
 *   mismatches                 words that did not read back, all tables
 * Coverage is reported, not enforced: it is a goal, not a correctness
 * property.
 *
 * Usage: bench_tlb [--gb N] [--updates N] [--quick] [--json]
 *   --gb N       table of N GiB (default 4; fractions allowed)
 *   --updates N  updates per pass (default 2^26)
 *   --quick      512 MiB and 2^24 updates, a smoke run
 *   --json       one JSON object as the last line of stdout
 * The pool holds BENCH_POOL_FRAMES frames unless EXCH_POOL_FRAMES is set.
 * Exit status: 0 all checks passed, 1 a mismatch or a failed exch_* call,
 * 2 bad usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include <exch.h>

#define GIB ((size_t)1 << 30)
#define MIB ((size_t)1 << 20)
#define DEFAULT_GB 4.0
#define QUICK_GB 0.5
#define DEFAULT_UPDATES ((uint64_t)1 << 26)
#define QUICK_UPDATES ((uint64_t)1 << 24)
#define PASSES 2 /* must be even: XORed in twice, the stream cancels out */
#define BENCH_POOL_FRAMES "64"
#define POOL_WAIT_MS 30000
#define WORDS_PER_REGION (EXCH_REGION_SIZE / sizeof(uint64_t))
#define NS_PER_S 1000000000.0
#define NS_PER_SEC 1000000000ull
#define BYTES_PER_GB 1e9
#define PCT 100.0
#define RATIO_GOAL 1.03

/* xorshift64* (Vigna): shifts and multiplier of the generator. */
#define RNG_SEED 0x2545F4914F6CDD1Dull
#define RNG_SHIFT_A 12
#define RNG_SHIFT_B 25
#define RNG_SHIFT_C 27
#define RNG_MULT 0x2545F4914F6CDD1Dull
#define U64_BITS 64

__extension__ typedef unsigned __int128 u128; /* a GCC extension */

/* Distinct value per word: an odd multiplier is a bijection. */
#define WORD_MULT 0x9E3779B97F4A7C15ull
/* Per-table salt, so a word that kept another table's value is caught. */
#define SALT_SMALL 0x7ull
#define SALT_HUGE 0x8ull
#define SALT_SHIFT 60

struct opts {
	double gb;
	uint64_t updates;
	bool json;
	size_t warm_bytes; /* populated and released before the phases */
};

/* One measurement: PASSES timed passes of the stream, then the check. */
struct gups {
	double pass_ns[PASSES];
	double ns_per_update; /* the faster pass */
	size_t mismatches;    /* words that did not read back */
};

/* PMD-mapped and resident bytes of an arena, from the page tables. */
struct coverage {
	size_t huge;
	size_t resident;
	bool known;
};

/* exch_coalesce() over the whole table. */
struct coalescing {
	struct exch_coalesce_report sum; /* summed over every call */
	double call_s;                   /* wall time of the calls */
	double wait_s;                   /* exch_pool_wait() between chunks */
	size_t chunks;
	uint64_t stat_coalesced;         /* coalesced_regions counter delta */
};

struct results {
	struct gups small, coalesced, huge;
	struct coverage cov_small, cov_coalesced, cov_huge;
	struct coalescing co;
	double fill_small_s, fill_huge_s; /* not timed into any number */
	size_t regions;
	size_t pool_frames;
	size_t failed; /* exch_* calls that returned an error */
};

/* ---- small helpers ---- */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

static double seconds_since(uint64_t t0)
{
	return (double)(now_ns() - t0) / NS_PER_S;
}

static double pct(size_t part, size_t whole)
{
	return whole ? PCT * (double)part / (double)whole : 0.0;
}

static double ratio(double a, double b)
{
	return b > 0 ? a / b : 0.0;
}

static uint64_t stat_value(const char *name)
{
	uint64_t v = 0;

	exch_stats_get(name, &v);
	return v;
}

/* Counts and reports a failed exch_* call; returns @rc. */
static int failed_call(struct results *r, const char *what, int rc)
{
	fprintf(stderr, "bench_tlb: %s: %s\n", what, strerror(-rc));
	r->failed++;
	return rc;
}

/* Waits for a full pool; the seconds it took are added to @wait_s. */
static void pool_wait_timed(double *wait_s)
{
	uint64_t t0 = now_ns();

	exch_pool_wait(POOL_WAIT_MS);
	*wait_s += seconds_since(t0);
}

/* ---- the table ---- */

static uint64_t word_value(uint64_t salt, size_t i)
{
	return (salt << SALT_SHIFT) ^ ((uint64_t)(i + 1) * WORD_MULT);
}

static void fill_range(uint64_t *t, size_t from, size_t to, uint64_t salt)
{
	for (size_t i = from; i < to; i++)
		t[i] = word_value(salt, i);
}

/* Words of @t that do not hold their fill value. */
static size_t verify(const uint64_t *t, size_t words, uint64_t salt)
{
	size_t bad = 0;

	for (size_t i = 0; i < words; i++)
		bad += t[i] != word_value(salt, i);
	return bad;
}

/* ---- the updates ---- */

static inline uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x >> RNG_SHIFT_A;
	x ^= x << RNG_SHIFT_B;
	x ^= x >> RNG_SHIFT_C;
	*s = x;
	return x * RNG_MULT;
}

/* An index below @words from the high bits of @r (which are the best). */
static inline size_t index_of(uint64_t r, size_t words)
{
	return (size_t)(((u128)r * words) >> U64_BITS);
}

/* One pass of the stream over @t; returns its time in ns. */
static double gups_pass(uint64_t *t, size_t words, uint64_t updates)
{
	uint64_t s = RNG_SEED, t0 = now_ns();

	for (uint64_t n = 0; n < updates; n++) {
		uint64_t r = rng_next(&s);

		t[index_of(r, words)] ^= r;
	}
	return (double)(now_ns() - t0);
}

static struct gups measure(uint64_t *t, size_t words, uint64_t updates, uint64_t salt)
{
	struct gups g = { .ns_per_update = 0 };
	double best = 0;

	exch_pool_wait(POOL_WAIT_MS);
	for (int p = 0; p < PASSES; p++) {
		g.pass_ns[p] = gups_pass(t, words, updates) / (double)updates;
		if (p == 0 || g.pass_ns[p] < best)
			best = g.pass_ns[p];
	}
	g.ns_per_update = best;
	g.mismatches = verify(t, words, salt);
	return g;
}

static struct coverage coverage_of(exch_arena_t *arena)
{
	struct coverage c = { 0, 0, false };

	c.known = exch_arena_coverage(arena, &c.resident, &c.huge) == 0;
	return c;
}

/* ---- arenas ---- */

/* An arena of @bytes with one allocation over all of it, or -errno. */
static int table_create(struct results *r, size_t bytes, unsigned flags,
			exch_arena_t **arena, uint64_t **t)
{
	int rc = exch_arena_create(bytes, flags, arena);

	if (rc < 0)
		return failed_call(r, "exch_arena_create", rc);
	*t = exch_alloc(*arena, bytes);
	if (!*t) {
		rc = failed_call(r, "exch_alloc", -errno);
		exch_arena_destroy(*arena);
	}
	return rc;
}

static void table_destroy(struct results *r, exch_arena_t *arena, uint64_t *t)
{
	int rc = exch_free(arena, t);

	if (rc < 0)
		failed_call(r, "exch_free", rc);
	rc = exch_arena_destroy(arena);
	if (rc < 0)
		failed_call(r, "exch_arena_destroy", rc);
}

/* ---- coalescing ---- */

static void report_add(struct exch_coalesce_report *sum, const struct exch_coalesce_report *rep)
{
	sum->examined += rep->examined;
	sum->coalesced += rep->coalesced;
	sum->already_huge += rep->already_huge;
	sum->unshared += rep->unshared;
	sum->skipped_busy += rep->skipped_busy;
	sum->retries += rep->retries;
	sum->skipped_sparse += rep->skipped_sparse;
	sum->skipped_no_frame += rep->skipped_no_frame;
	sum->errors += rep->errors;
	sum->bytes_copied += rep->bytes_copied;
	sum->ns += rep->ns;
}

/* exch_coalesce(EXCH_BLOCK) over @bytes at @p, a pool's worth per call. */
static void coalesce_table(struct results *r, exch_arena_t *arena, char *p, size_t bytes)
{
	struct coalescing *co = &r->co;
	size_t chunk = r->pool_frames ? r->pool_frames * EXCH_REGION_SIZE : bytes;
	uint64_t stat0 = stat_value("coalesced_regions");

	for (size_t off = 0; off < bytes; off += chunk) {
		size_t len = bytes - off < chunk ? bytes - off : chunk;
		struct exch_coalesce_report rep;
		uint64_t t0;
		int rc;

		pool_wait_timed(&co->wait_s);
		t0 = now_ns();
		rc = exch_coalesce(arena, p + off, len, EXCH_BLOCK, &rep);
		co->call_s += seconds_since(t0);
		co->chunks++;
		if (rc < 0)
			failed_call(r, "exch_coalesce", rc);
		else
			report_add(&co->sum, &rep);
	}
	co->stat_coalesced = stat_value("coalesced_regions") - stat0;
}

/* ---- the two phases ---- */

/* 4K pages, measured; then coalesced, measured again. */
static int run_small(struct results *r, uint64_t updates)
{
	size_t bytes = r->regions * EXCH_REGION_SIZE, words = bytes / sizeof(uint64_t);
	exch_arena_t *arena;
	uint64_t *t, t0;
	int rc = table_create(r, bytes, EXCH_ARENA_NOHUGE, &arena, &t);

	if (rc < 0)
		return rc;
	t0 = now_ns();
	fill_range(t, 0, words, SALT_SMALL);
	r->fill_small_s = seconds_since(t0);
	r->cov_small = coverage_of(arena);
	r->small = measure(t, words, updates, SALT_SMALL);
	coalesce_table(r, arena, (char *)t, bytes);
	r->cov_coalesced = coverage_of(arena);
	r->coalesced = measure(t, words, updates, SALT_SMALL);
	table_destroy(r, arena, t);
	return 0;
}

/* Fills a pool's worth of regions at a time, each after a full pool, so
 * that every region's first touch gets a frame. */
static double fill_paced(uint64_t *t, size_t regions, size_t pool_frames)
{
	size_t chunk = pool_frames ? pool_frames : regions;
	uint64_t t0 = now_ns();

	for (size_t reg = 0; reg < regions; reg += chunk) {
		size_t end = reg + chunk < regions ? reg + chunk : regions;

		exch_pool_wait(POOL_WAIT_MS);
		fill_range(t, reg * WORDS_PER_REGION, end * WORDS_PER_REGION, SALT_HUGE);
	}
	return seconds_since(t0);
}

/* Hugepages from the first touch, measured. */
static int run_huge(struct results *r, uint64_t updates)
{
	size_t bytes = r->regions * EXCH_REGION_SIZE, words = bytes / sizeof(uint64_t);
	exch_arena_t *arena;
	uint64_t *t;
	int rc = table_create(r, bytes, 0, &arena, &t);

	if (rc < 0)
		return rc;
	r->fill_huge_s = fill_paced(t, r->regions, r->pool_frames);
	r->cov_huge = coverage_of(arena);
	r->huge = measure(t, words, updates, SALT_HUGE);
	table_destroy(r, arena, t);
	return 0;
}

/* ---- output ---- */

static size_t mismatches(const struct results *r)
{
	return r->small.mismatches + r->coalesced.mismatches + r->huge.mismatches;
}

static bool correct(const struct results *r)
{
	return !mismatches(r) && !r->failed;
}

static void print_cov(const struct coverage *c, size_t bytes)
{
	if (c->known)
		printf("%6.1f%%", pct(c->huge, bytes));
	else
		printf("%7s", "unknown");
}

static void print_row(const char *name, const struct gups *g, const struct coverage *c,
		      size_t bytes)
{
	printf("  %-28s %9.3f %9.3f %9.3f ", name, g->ns_per_update, g->pass_ns[0],
	       g->pass_ns[1]);
	print_cov(c, bytes);
	printf(" %10zu\n", g->mismatches);
}

static void print_coalescing(const struct results *r, size_t bytes)
{
	const struct coalescing *co = &r->co;
	const struct exch_coalesce_report *s = &co->sum;

	printf("coalescing: %zu exch_coalesce(EXCH_BLOCK) calls of <= %zu regions (the pool): "
	       "%.3f s, %.2f GB/s; exch_pool_wait() before each, not counted: %.3f s\n",
	       co->chunks, r->pool_frames, co->call_s,
	       co->call_s > 0 ? (double)bytes / BYTES_PER_GB / co->call_s : 0.0, co->wait_s);
	printf("  reports: examined %" PRIu64 ", coalesced %" PRIu64 ", already huge %" PRIu64
	       ", unshared %" PRIu64 ", busy %" PRIu64 ", sparse %" PRIu64 ", no frame %"
	       PRIu64 ", errors %" PRIu64 ", retries %" PRIu64 "; copied %.1f MiB; "
	       "coalesced_regions counter +%" PRIu64 "\n", s->examined, s->coalesced,
	       s->already_huge, s->unshared, s->skipped_busy, s->skipped_sparse,
	       s->skipped_no_frame, s->errors, s->retries, (double)s->bytes_copied / MIB,
	       co->stat_coalesced);
}

static void print_table(const struct opts *o, const struct results *r)
{
	size_t bytes = r->regions * EXCH_REGION_SIZE;

	printf("\nrandom updates (GUPS) over a %.2f GiB table (%zu words): %" PRIu64
	       " updates per pass, %d passes, same seed for every table\n", o->gb,
	       bytes / sizeof(uint64_t), o->updates, PASSES);
	printf("warm-up: %zu MiB populated and released first\n", o->warm_bytes / MIB);
	printf("  %-28s %9s %9s %9s %7s %10s\n", "table", "ns/update", "pass 1", "pass 2",
	       "PMD", "mismatches");
	print_row("4K pages (NOHUGE arena)", &r->small, &r->cov_small, bytes);
	print_row("after exch_coalesce", &r->coalesced, &r->cov_coalesced, bytes);
	print_row("hugepages from first touch", &r->huge, &r->cov_huge, bytes);
	printf("  coalesced over hugepages: %.4f (goal <= %.2f); 4K over hugepages: %.4f\n",
	       ratio(r->coalesced.ns_per_update, r->huge.ns_per_update), RATIO_GOAL,
	       ratio(r->small.ns_per_update, r->huge.ns_per_update));
	print_coalescing(r, bytes);
	printf("filling (not timed): 4K pages %.2f s, hugepages %.2f s (paced by the pool)\n",
	       r->fill_small_s, r->fill_huge_s);
	printf("correctness: %zu words did not read back; %zu exch_* calls failed\n",
	       mismatches(r), r->failed);
}

static void print_json_cov(const char *key, const struct coverage *c, size_t bytes)
{
	if (c->known)
		printf("\"%s\":%.3f,", key, pct(c->huge, bytes));
	else
		printf("\"%s\":null,", key);
}

static void print_json(const struct opts *o, const struct results *r)
{
	size_t bytes = r->regions * EXCH_REGION_SIZE;
	const struct exch_coalesce_report *s = &r->co.sum;

	printf("{\"gb\":%g,\"updates\":%" PRIu64 ",\"ns_per_update_4k\":%.3f,"
	       "\"ns_per_update_coalesced\":%.3f,\"ns_per_update_thp\":%.3f,"
	       "\"ratio_coalesced_over_thp\":%.4f,\"ratio_4k_over_thp\":%.4f,"
	       "\"coalesce_seconds\":%.4f,\"coalesce_pool_wait_seconds\":%.4f,", o->gb,
	       o->updates, r->small.ns_per_update, r->coalesced.ns_per_update,
	       r->huge.ns_per_update, ratio(r->coalesced.ns_per_update, r->huge.ns_per_update),
	       ratio(r->small.ns_per_update, r->huge.ns_per_update), r->co.call_s, r->co.wait_s);
	print_json_cov("coverage_4k_pct", &r->cov_small, bytes);
	print_json_cov("coverage_coalesced_pct", &r->cov_coalesced, bytes);
	print_json_cov("coverage_thp_pct", &r->cov_huge, bytes);
	printf("\"examined\":%" PRIu64 ",\"coalesced\":%" PRIu64 ",\"already_huge\":%" PRIu64
	       ",\"unshared\":%" PRIu64 ",\"skipped_busy\":%" PRIu64 ",\"skipped_sparse\":%"
	       PRIu64 ",\"skipped_no_frame\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"retries\":%"
	       PRIu64 ",", s->examined, s->coalesced, s->already_huge, s->unshared,
	       s->skipped_busy, s->skipped_sparse, s->skipped_no_frame, s->errors, s->retries);
	printf("\"pool_frames\":%zu,\"mismatches\":%zu,\"exch_failed\":%zu,\"correct\":%s}\n",
	       r->pool_frames, mismatches(r), r->failed, correct(r) ? "true" : "false");
}

/* ---- main ---- */

/* Populates and releases @len bytes, so the phases get host-backed memory;
 * hugepages only make the populate quick. */
static int warm_up(size_t len)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int rc;

	if (p == MAP_FAILED)
		return -errno;
	madvise(p, len, MADV_HUGEPAGE);
	rc = madvise(p, len, MADV_POPULATE_WRITE) < 0 ? -errno : 0;
	munmap(p, len);
	return rc;
}

/* The full pool's size in frames, 0 without hugepage-first. */
static size_t pool_frames(void)
{
	int rc = exch_pool_wait(POOL_WAIT_MS);

	if (rc < 0) {
		fprintf(stderr, "bench_tlb: exch_pool_wait: %s\n", strerror(-rc));
		return 0;
	}
	return (size_t)stat_value("pool_frames_ready");
}

static const struct option long_opts[] = {
	{ "gb", required_argument, NULL, 'g' },
	{ "updates", required_argument, NULL, 'u' },
	{ "quick", no_argument, NULL, 'q' },
	{ "json", no_argument, NULL, 'j' },
	{ NULL, 0, NULL, 0 },
};

static int parse_args(int argc, char **argv, struct opts *o)
{
	int c;

	*o = (struct opts){ .gb = DEFAULT_GB, .updates = DEFAULT_UPDATES };
	while ((c = getopt_long(argc, argv, "", long_opts, NULL)) != -1) {
		char *end = NULL;

		if (c == 'g')
			o->gb = strtod(optarg, &end);
		else if (c == 'u')
			o->updates = strtoull(optarg, &end, 0);
		else if (c == 'q')
			*o = (struct opts){ .gb = QUICK_GB, .updates = QUICK_UPDATES, .json = o->json };
		else if (c == 'j')
			o->json = true;
		else
			return -EINVAL;
		if (end && *end)
			return -EINVAL;
	}
	return o->gb > 0 && o->updates && optind == argc ? 0 : -EINVAL;
}

/* Whole regions nearest to --gb (at least one); --gb becomes what is used. */
static size_t table_regions(struct opts *o)
{
	size_t regions = (size_t)(o->gb * (double)GIB / (double)EXCH_REGION_SIZE + 0.5);

	if (!regions)
		regions = 1;
	o->gb = (double)(regions * EXCH_REGION_SIZE) / (double)GIB;
	return regions;
}

int main(int argc, char **argv)
{
	struct results r = { .regions = 0 };
	struct opts o;

	if (parse_args(argc, argv, &o) < 0) {
		fprintf(stderr, "usage: %s [--gb N] [--updates N] [--quick] [--json]\n", argv[0]);
		return 2;
	}
	r.regions = table_regions(&o);
	setenv("EXCH_POOL_FRAMES", BENCH_POOL_FRAMES, 0);
	exch_features_print(stdout);
	r.pool_frames = pool_frames();
	/* One phase: the table, the pool, and a chunk of frames in flight. */
	o.warm_bytes = (r.regions + 2 * r.pool_frames) * EXCH_REGION_SIZE;
	if (warm_up(o.warm_bytes) < 0)
		fprintf(stderr, "bench_tlb: warm-up failed; timings may include the "
			"host's first faults\n");
	if (run_small(&r, o.updates) < 0 || run_huge(&r, o.updates) < 0)
		return 1;
	print_table(&o, &r);
	if (o.json)
		print_json(&o, &r);
	return correct(&r) ? 0 : 1;
}

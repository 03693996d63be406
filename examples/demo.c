/*
 * demo.c - a big in-memory table on a libexch arena and on plain malloc,
 * then a scattered heap that the background coalescer makes huge.
 *
 * Part 1. The workload is what a program holding a large table does: it
 * allocates a few hundred arrays of different sizes (DEMO_MIN_ARRAY to
 * DEMO_MAX_ARRAY, roughly log-uniform, a few GiB in total), fills them,
 * rewrites them once (an update pass over memory that is already mapped),
 * then follows a chain of dependent random reads across the whole table.
 * It runs twice, with the same arrays and the same reads: once in an arena
 * (exch_alloc), once with malloc. The reads are checked against a checksum
 * computed without memory, so a wrong byte anywhere on the path fails the
 * run.
 *
 * What the report compares:
 *   - hugepage coverage: PMD-mapped share of the arena (exch_arena_coverage)
 *     against the AnonHugePages share of the malloc'd arrays (smaps);
 *   - first-touch cost per 2 MB: fill time minus update time, i.e. what it
 *     cost to make the memory usable on top of writing it;
 *   - the random-read phase: with 2 MB pages one TLB entry covers 512 times
 *     as much of the table, so the chain misses the TLB less often.
 *
 * The arena's first touches are served from libexch's frame pool: hugepages
 * that a background thread has already zeroed. The pool hides that zeroing
 * only while first touches come slower than the refill, so the fill goes one
 * 2 MB region at a time and waits for a full pool (exch_pool_wait) before it
 * starts and after every pool-sized chunk of regions, as a program that knows
 * its allocation pattern would. The waits are reported apart from the fill.
 *
 * Before both runs the demo populates and releases as much memory as they
 * use (warm_up). On a virtual machine the host backs guest memory lazily,
 * and the first use of guest memory costs the host's faults on top of the
 * kernel's (~4 ms instead of ~0.23 ms per 2 MB here); whichever run got that
 * memory first would pay for it, and the comparison would depend on order.
 *
 * Part 2. Hugepage-first only helps memory touched while the pool has
 * frames. A heap whose pages were touched when none was at hand (a pool
 * drained by a burst, memory populated before the library could place a
 * hugepage) stays on 4K pages and pays for it on every TLB miss. Part 2
 * builds such a heap: the same kind of table, HEAP_SHARE of the size, in an
 * arena made with EXCH_ARENA_NOHUGE, so every first touch gets a 4K page.
 * It times the same dependent chain on it, starts the background coalescer
 * (exch_coalescer_start) and, while the program keeps reading, prints the
 * PMD-mapped share (exch_arena_coverage) and the scan_coalesced counter
 * every SAMPLE_S, with the time per read meanwhile: the audience sees the
 * memory change under a running program, and the reads get faster as it
 * does. It stops watching at full coverage, when nothing has changed for
 * STALL_S (regions the table only partly uses are too sparse to coalesce;
 * an explicit exch_coalesce then shows there is nothing left to move), or
 * at WATCH_DEADLINE_S. Then it stops the coalescer and times the chain
 * again. The chains read during coalescing are each checked against their
 * sum computed without memory, as is the chain after it, so a byte that a
 * move got wrong fails the run. Coalescing takes frames from the pool,
 * which the coalescer leaves at least half full for first touches; below
 * that it waits for the pool's refill (and trades a hot 4K region with a
 * cold hugepage of the same arena only when no frame is coming at all).
 * The report says from the library's counters where the frames came from
 * and whether the pool's refill or the MB/s budget set the pace.
 *
 * Part 3 (demo_tier.c): the compressed tier on a heap bigger than its
 * working set, TIER_SHARE of the size.
 *
 * Part 4 (demo_program.c): a real program, CPython serving lookups from a
 * record cache, run as it is, under libexch-preload.so, and under the
 * preload with a resident limit, side by side.
 *
 * Usage: demo [--gb N]   (default 2 GiB, part 2 half that; fractions allowed)
 * The exit status is 1 if a checksum or a library call fails.
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

#include "demo_program.h"
#include "demo_tier.h"

#define GIB ((size_t)1 << 30)
#define MIB ((size_t)1 << 20)
#define KIB ((size_t)1 << 10)
#define DEMO_DEFAULT_GB 2.0
#define DEMO_MIN_ARRAY (16 * KIB)
#define DEMO_OCTAVES 11 /* sizes up to DEMO_MIN_ARRAY << 11 = 32 MiB */
#define DEMO_MAX_ARRAY (DEMO_MIN_ARRAY << DEMO_OCTAVES)
#define DEMO_READS 10000000ull
#define DEMO_SEED 0x5EEDCAFEull
#define POOL_WAIT_MS 30000
#define NS_PER_S 1e9
#define NS_PER_US 1e3
#define MS_PER_S 1000u
#define MB 1e6 /* the coalescer's budget counts MB of 10^6 bytes */
#define PCT 100.0
#define SAME_BAND 0.05 /* within 5%: "about the same" */
#define SMAPS_LINE 512
#define PCT_TEXT 16

/* Element i of array a holds seed(a) + i * ELEM_STEP, where seed(a) is a
 * hash of a: cheap to write and to recompute, and unrelated across arrays. */
#define ELEM_STEP 0x9E3779B97F4A7C15ull
#define ARRAY_MULT 0xD6E8FEB86659FD93ull
/* splitmix64's finaliser. */
#define MIX_MUL1 0xBF58476D1CE4E5B9ull
#define MIX_MUL2 0x94D049BB133111EBull
#define MIX_SHIFT1 30
#define MIX_SHIFT2 27
#define MIX_SHIFT3 31
/* A uniform double in [0, 1) from the top 53 bits of a 64-bit hash. */
#define DOUBLE_BITS 53
#define CHAIN_MULT 31 /* checksum of the reads: sum = sum * 31 + value */

/* Part 2. Half the first table keeps the part to about ten seconds here:
 * it fills with 4K first touches and runs the chain twice more, besides the
 * reads while it watches. */
#define HEAP_SHARE 0.5
/* Part 3: the tier's heap, as a share of --gb. */
#define TIER_SHARE 0.5
#define ALIGN_REGION(x) ((size_t)(x) / EXCH_REGION_SIZE * EXCH_REGION_SIZE)
/* A GiB coalesced in a few seconds. A pass moves at most one interval's
 * worth (100 MB) and the next starts an interval after it ends, so the rate
 * reached stays below the budget. */
#define COALESCE_MBPS 2000u
#define COALESCE_INTERVAL_MS 50u
#define SAMPLE_S 0.25          /* coverage over time: one line per quarter second */
#define FULL_PCT 99.9          /* "all hugepages", allowing for rounding */
#define STALL_S 1.0            /* no change in 20 passes: the rest is not coalesced */
#define WATCH_DEADLINE_S 30.0
#define BUSY_READS 50000u      /* one checked chain: ~20 ms, well inside a sample */

struct table {
	size_t n;          /* arrays */
	size_t *elems;     /* elements of each array */
	uint64_t *first;   /* global index of each array's first element */
	uint64_t total;    /* elements in the table */
	uint64_t **arr;    /* the arrays, in the memory under test */
};

struct run {
	const char *name;
	double fill_s;     /* first touch + write, pool waits excluded */
	double wait_s;     /* exch_pool_wait during the fill */
	double update_s;   /* the same writes on mapped memory */
	double read_s;
	uint64_t checksum;
	size_t resident, huge; /* for the coverage */
	bool huge_known;
};

/* Paces the arena fill: a full pool before every @chunk newly entered
 * regions. */
struct pacer {
	size_t chunk;      /* regions per chunk; 0: no pacing */
	size_t entered;    /* regions entered since the last wait */
	uintptr_t last;    /* region the fill was last in */
	double *wait_s;
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / NS_PER_S;
}

static uint64_t mix64(uint64_t x)
{
	x += ELEM_STEP;
	x = (x ^ (x >> MIX_SHIFT1)) * MIX_MUL1;
	x = (x ^ (x >> MIX_SHIFT2)) * MIX_MUL2;
	return x ^ (x >> MIX_SHIFT3);
}

/* A uniform double in [0, 1) from the top bits of @h. */
static double unit_double(uint64_t h)
{
	return (double)(h >> (64 - DOUBLE_BITS)) / (double)(1ull << DOUBLE_BITS);
}

static uint64_t elem_value(size_t a, size_t i)
{
	return mix64((uint64_t)a * ARRAY_MULT) + (uint64_t)i * ELEM_STEP;
}

/* ---- the table's shape, shared by both runs ---- */

/* Size in [DEMO_MIN_ARRAY, DEMO_MAX_ARRAY), a multiple of 8: a random
 * octave, then a uniform point inside it (log-uniform, near enough). */
static size_t array_bytes(uint64_t *rng)
{
	uint64_t h = mix64((*rng)++);
	size_t octave = DEMO_MIN_ARRAY << (h % DEMO_OCTAVES);
	size_t b = octave + (size_t)((double)octave * unit_double(mix64((*rng)++)));

	return b / sizeof(uint64_t) * sizeof(uint64_t);
}

static int table_plan(struct table *t, size_t bytes)
{
	size_t cap = bytes / DEMO_MIN_ARRAY + 1, sum = 0;
	uint64_t rng = DEMO_SEED;

	t->elems = calloc(cap, sizeof(*t->elems));
	t->first = calloc(cap, sizeof(*t->first));
	t->arr = calloc(cap, sizeof(*t->arr));
	if (!t->elems || !t->first || !t->arr)
		return -ENOMEM;
	for (t->n = 0; sum < bytes && t->n < cap; t->n++) {
		size_t b = array_bytes(&rng);

		if (b > bytes - sum)
			b = (bytes - sum + sizeof(uint64_t) - 1) / sizeof(uint64_t) * sizeof(uint64_t);
		t->elems[t->n] = b / sizeof(uint64_t);
		t->first[t->n] = t->total;
		t->total += t->elems[t->n];
		sum += b;
	}
	return 0;
}

/* Virtual size of the arena: whole regions for every array, so alignment
 * and first-fit leftovers can never make an allocation fail. Only what is
 * touched is backed. */
static size_t table_arena_bytes(const struct table *t)
{
	size_t sum = EXCH_REGION_SIZE;

	for (size_t a = 0; a < t->n; a++)
		sum += (t->elems[a] * sizeof(uint64_t) + EXCH_REGION_SIZE - 1) /
		       EXCH_REGION_SIZE * EXCH_REGION_SIZE;
	return sum;
}

static double table_gib(const struct table *t)
{
	return (double)(t->total * sizeof(uint64_t)) / (double)GIB;
}

static void table_release(struct table *t)
{
	free(t->elems);
	free(t->first);
	free(t->arr);
}

/* ---- the workload ---- */

/* Called with each region the fill writes in, in fill order. A region
 * entered again (a small array filling the rest of a region) counts again:
 * that only makes the waits a little more frequent. */
static void pace(struct pacer *p, uintptr_t region)
{
	double t0;

	if (!p->chunk || region == p->last)
		return;
	p->last = region;
	if (++p->entered <= p->chunk)
		return;
	t0 = now_s();
	exch_pool_wait(POOL_WAIT_MS);
	*p->wait_s += now_s() - t0;
	p->entered = 1;
}

static void fill_elems(uint64_t *v, size_t n, uint64_t x)
{
	for (size_t i = 0; i < n; i++, x += ELEM_STEP)
		v[i] = x;
}

/* Writes every element, one 2 MB region at a time, pacing at each region. */
static void table_fill(struct table *t, struct pacer *p)
{
	for (size_t a = 0; a < t->n; a++) {
		for (size_t done = 0; done < t->elems[a];) {
			uintptr_t addr = (uintptr_t)(t->arr[a] + done);
			size_t room = (EXCH_REGION_SIZE - addr % EXCH_REGION_SIZE) / sizeof(uint64_t);
			size_t n = t->elems[a] - done < room ? t->elems[a] - done : room;

			pace(p, addr / EXCH_REGION_SIZE);
			fill_elems(t->arr[a] + done, n, elem_value(a, done));
			done += n;
		}
	}
}

/* Array holding global element @g (binary search over t->first). */
static size_t table_find(const struct table *t, uint64_t g)
{
	size_t lo = 0, hi = t->n;

	while (hi - lo > 1) {
		size_t mid = (lo + hi) / 2;

		if (t->first[mid] <= g)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

/* A dependent chain of @reads reads that starts where @seed says: each read
 * decides where the next one goes. With @mem false the values are
 * recomputed instead of read: the expected sum. */
static uint64_t table_chain(const struct table *t, bool mem, uint64_t seed, uint64_t reads)
{
	uint64_t g = mix64(seed) % t->total, sum = 0;

	for (uint64_t k = 0; k < reads; k++) {
		size_t a = table_find(t, g), i = (size_t)(g - t->first[a]);
		uint64_t v = mem ? t->arr[a][i] : elem_value(a, i);

		sum = sum * CHAIN_MULT + v;
		g = mix64(v ^ k) % t->total;
	}
	return sum;
}

/* The measured chain of both parts. */
static uint64_t table_chase(const struct table *t, bool mem)
{
	return table_chain(t, mem, DEMO_SEED, DEMO_READS);
}

/* The measured chain on memory; its sum goes to *@sum. Returns seconds. */
static double timed_chase(const struct table *t, uint64_t *sum)
{
	double t0 = now_s();

	*sum = table_chase(t, true);
	return now_s() - t0;
}

/* Fill, update and chase, each timed. The pool waits inside the fill are
 * taken out of its time (r->wait_s). */
static void run_workload(struct table *t, struct run *r, struct pacer *p)
{
	struct pacer none = { .wait_s = &r->wait_s };
	double t0 = now_s();

	table_fill(t, p);
	r->fill_s = now_s() - t0 - r->wait_s;
	t0 = now_s();
	table_fill(t, &none);
	r->update_s = now_s() - t0;
	r->read_s = timed_chase(t, &r->checksum);
}

/* ---- the arena run ---- */

/* Waits for a full pool; its size in frames is the fill's chunk in regions
 * (0 when hugepage-first is off). */
static size_t pool_chunk(void)
{
	uint64_t frames = 0;

	if (exch_pool_wait(POOL_WAIT_MS) < 0 || exch_stats_get("pool_frames_ready", &frames) < 0)
		return 0;
	return (size_t)frames;
}

/* Frees the arrays up to the first one that was never allocated, then the
 * arena. Returns 0 or the destroy's error. */
static int table_arena_close(struct table *t, exch_arena_t *arena)
{
	int rc;

	for (size_t a = 0; a < t->n && t->arr[a]; a++) {
		exch_free(arena, t->arr[a]);
		t->arr[a] = NULL;
	}
	rc = exch_arena_destroy(arena);
	if (rc < 0)
		fprintf(stderr, "demo: exch_arena_destroy: %s\n", strerror(-rc));
	return rc;
}

/* An arena made with @flags holding every array of @t; nothing is left
 * behind on failure. */
static int table_arena_open(struct table *t, unsigned flags, exch_arena_t **arena)
{
	int rc = exch_arena_create(table_arena_bytes(t), flags, arena);

	if (rc < 0) {
		fprintf(stderr, "demo: exch_arena_create: %s\n", strerror(-rc));
		return rc;
	}
	for (size_t a = 0; a < t->n; a++) {
		t->arr[a] = exch_alloc(*arena, t->elems[a] * sizeof(uint64_t));
		if (!t->arr[a]) {
			fprintf(stderr, "demo: exch_alloc: %s\n", strerror(errno));
			table_arena_close(t, *arena);
			return -ENOMEM;
		}
	}
	return 0;
}

static int run_arena(struct table *t, struct run *r, size_t *pool_frames)
{
	struct pacer p = { .wait_s = &r->wait_s };
	exch_arena_t *arena;
	int rc = table_arena_open(t, 0, &arena);

	if (rc < 0)
		return rc;
	p.chunk = pool_chunk();
	*pool_frames = p.chunk;
	run_workload(t, r, &p);
	r->huge_known = exch_arena_coverage(arena, &r->resident, &r->huge) == 0;
	return table_arena_close(t, arena);
}

/* ---- the malloc run ---- */

static bool table_overlaps(const struct table *t, uintptr_t s, uintptr_t e)
{
	for (size_t a = 0; a < t->n; a++) {
		uintptr_t lo = (uintptr_t)t->arr[a];

		if (lo < e && lo + t->elems[a] * sizeof(uint64_t) > s)
			return true;
	}
	return false;
}

/* Rss and AnonHugePages of the mappings that hold the table's arrays. */
static bool smaps_share(const struct table *t, size_t *rss, size_t *huge)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[SMAPS_LINE];
	bool in = false;
	size_t kb;

	*rss = *huge = 0;
	if (!f)
		return false;
	while (fgets(line, sizeof(line), f)) {
		uintptr_t s, e;

		if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR " ", &s, &e) == 2)
			in = table_overlaps(t, s, e);
		else if (in && sscanf(line, "Rss: %zu kB", &kb) == 1)
			*rss += kb * KIB;
		else if (in && sscanf(line, "AnonHugePages: %zu kB", &kb) == 1)
			*huge += kb * KIB;
	}
	fclose(f);
	return true;
}

static int run_malloc(struct table *t, struct run *r)
{
	struct pacer none = { .wait_s = &r->wait_s };
	size_t got;

	for (got = 0; got < t->n; got++) {
		t->arr[got] = malloc(t->elems[got] * sizeof(uint64_t));
		if (!t->arr[got])
			break;
	}
	if (got == t->n) {
		run_workload(t, r, &none);
		r->huge_known = smaps_share(t, &r->resident, &r->huge);
	}
	for (size_t a = 0; a < got; a++)
		free(t->arr[a]);
	return got == t->n ? 0 : -ENOMEM;
}

/* ---- the report ---- */

/* Hugepage share of the resident memory; -1 when it could not be read. */
static double share_pct(const struct run *r)
{
	if (!r->huge_known)
		return -1.0;
	return r->resident ? PCT * (double)r->huge / (double)r->resident : 0.0;
}

/* "99.8%", or "unknown". */
static const char *pct_text(const struct run *r, char *buf, size_t size)
{
	if (share_pct(r) < 0)
		snprintf(buf, size, "unknown");
	else
		snprintf(buf, size, "%.1f%%", share_pct(r));
	return buf;
}

static double per_2m_us(double s, const struct table *t)
{
	double regions = (double)(t->total * sizeof(uint64_t)) / (double)EXCH_REGION_SIZE;

	return s * NS_PER_S / NS_PER_US / regions;
}

static void report_row_us(const char *what, double x, double m)
{
	printf("  %-40s %11.1f us %11.1f us\n", what, x, m);
}

static void report_table(const struct table *t, const struct run *x,
			 const struct run *m, uint64_t expect)
{
	char px[PCT_TEXT], pm[PCT_TEXT];

	printf("  %-40s %14s %14s\n", "", x->name, m->name);
	printf("  %-40s %14s %14s\n", "hugepage coverage", pct_text(x, px, sizeof(px)),
	       pct_text(m, pm, sizeof(pm)));
	report_row_us("fill: first touch + write, per 2 MB", per_2m_us(x->fill_s, t),
		      per_2m_us(m->fill_s, t));
	report_row_us("update: write only, per 2 MB", per_2m_us(x->update_s, t),
		      per_2m_us(m->update_s, t));
	report_row_us("first-touch cost per 2 MB (fill-update)",
		      per_2m_us(x->fill_s - x->update_s, t), per_2m_us(m->fill_s - m->update_s, t));
	printf("  %-40s %12.3f s %12.3f s\n", "random reads (dependent chain)", x->read_s, m->read_s);
	printf("  %-40s %12.1f ns %11.1f ns\n", "  per read", x->read_s * NS_PER_S / DEMO_READS,
	       m->read_s * NS_PER_S / DEMO_READS);
	printf("  %-40s %14s %14s\n", "checksum of the reads",
	       x->checksum == expect ? "ok" : "WRONG", m->checksum == expect ? "ok" : "WRONG");
}

static void report_first_touch(const struct table *t, const struct run *x,
			       const struct run *m)
{
	char px[PCT_TEXT], pm[PCT_TEXT];

	printf("\nMaking the table usable cost %.0f us per 2 MB in the arena against %.0f us "
	       "with malloc. ", per_2m_us(x->fill_s - x->update_s, t),
	       per_2m_us(m->fill_s - m->update_s, t));
	if (share_pct(x) >= PCT / 2)
		printf("The arena's first touches got hugepages (%s) that the pool had zeroed "
		       "in the background; ", pct_text(x, px, sizeof(px)));
	else
		printf("The arena got few hugepages (%s, see the feature line); ",
		       pct_text(x, px, sizeof(px)));
	printf("malloc's memory (%s hugepages) got %s.\n", pct_text(m, pm, sizeof(pm)),
	       share_pct(m) < PCT / 2 ? "4K pages, each faulted and zeroed on first touch"
				      : "the kernel's THP faults, which zero 2 MB inside the fault");
}

static void report_reads(const struct run *x, const struct run *m)
{
	double speed = m->read_s / x->read_s;

	if (speed > 1 + SAME_BAND && share_pct(x) > share_pct(m))
		printf("The random reads ran %.0f%% faster on the arena: a 2 MB TLB entry covers "
		       "%zu times as much of the table as a 4K one, so fewer reads wait for a "
		       "page walk.\n", (speed - 1) * PCT, EXCH_REGION_SIZE / EXCH_PAGE_SIZE);
	else if (speed > 1 + SAME_BAND)
		printf("The random reads ran %.0f%% faster on the arena.\n", (speed - 1) * PCT);
	else if (speed < 1 - SAME_BAND)
		printf("The random reads were %.0f%% slower on the arena; rerun to see whether "
		       "this is noise.\n", (1 / speed - 1) * PCT);
	else
		printf("The random reads took about the same time (within %.0f%%): the TLB made "
		       "no measurable difference here.\n", SAME_BAND * PCT);
}

static void report(const struct table *t, const struct run *x, const struct run *m,
		   uint64_t expect, size_t pool_frames)
{
	static const char *const thp[] = { "unknown", "always", "madvise", "never" };
	const struct exch_features *f = exch_features();

	printf("\ntable: %zu arrays of %zu KiB .. %zu MiB, %.2f GiB; fill, update, then %llu "
	       "dependent random reads\n", t->n, DEMO_MIN_ARRAY / KIB, DEMO_MAX_ARRAY / MIB,
	       table_gib(t), DEMO_READS);
	if (pool_frames)
		printf("libexch's pool prepares zeroed 2 MB hugepages in the background; the arena "
		       "fill waited for a full pool (%zu frames) before every %zu regions it "
		       "entered: %.3f s of waiting, not counted in its fill time.\n",
		       pool_frames, pool_frames, x->wait_s);
	else
		printf("hugepage-first is off (see the feature line): the arena gets 4K pages.\n");
	printf("both runs use memory populated and released by a warm-up first, so "
	       "neither pays the host's first faults on a virtual machine\n");
	printf("coverage: arena by exch_arena_coverage, malloc by AnonHugePages in "
	       "/proc/self/smaps; THP mode \"%s\"\n\n", thp[f->thp_mode]);
	report_table(t, x, m, expect);
	report_first_touch(t, x, m);
	report_reads(x, m);
}

/* ---- part 2: the background coalescer on a scattered heap ---- */

/* Counters that tell what the coalescer did, by their exch_stats_get names. */
enum {
	SC_COALESCED, SC_TRADED, SC_CAPTURED, SC_PASSES, SC_BUDGET_STOPS, SC_FRAME_STOPS,
	SC_ARMED, SC_PARKED, SC_N
};

static const char *const sc_names[SC_N] = {
	[SC_COALESCED] = "scan_coalesced",       /* traded ones included */
	[SC_TRADED] = "scan_traded",             /* no frame: swapped with a cold hugepage */
	[SC_CAPTURED] = "capture_coalesced",     /* into a frame freed earlier */
	[SC_PASSES] = "scan_passes",
	[SC_BUDGET_STOPS] = "scan_budget_stops", /* spent an interval's MB */
	[SC_FRAME_STOPS] = "scan_frame_stops",   /* frames scarce and no trading */
	[SC_ARMED] = "heat_armed",               /* frames scarce: heat tracking armed */
	[SC_PARKED] = "faults_parked",           /* a read waited for a moving region */
};

struct scan_counts {
	uint64_t v[SC_N];
};

/* The scattered heap before, while and after the coalescer works on it. */
struct heap {
	struct table t;
	exch_arena_t *arena;
	uint64_t expect;         /* the measured chain's sum, without memory */
	double fill_s;           /* 4K first touches + writes */
	double pct_before;       /* PMD-mapped share after the fill */
	double small_s, huge_s;  /* the measured chain before and after */
	uint64_t small_sum, huge_sum;
	double done_s;           /* coalescer start to the last change seen */
	double pct;              /* PMD-mapped share at the last sample */
	uint64_t chains, bad;    /* checked chains run meanwhile, wrong ones */
	struct scan_counts base; /* the counters when the coalescer started */
	bool own_coalescer;      /* started here, so stopped here */
	struct exch_coalesce_report left; /* an explicit pass over what is left */
	int left_rc;
};

static uint64_t stat_now(const char *name)
{
	uint64_t v = 0;

	exch_stats_get(name, &v);
	return v;
}

static void scan_counts_read(struct scan_counts *c)
{
	for (int i = 0; i < SC_N; i++)
		c->v[i] = stat_now(sc_names[i]);
}

/* What the coalescer did since @base. */
static void scan_counts_since(const struct scan_counts *base, struct scan_counts *d)
{
	scan_counts_read(d);
	for (int i = 0; i < SC_N; i++)
		d->v[i] -= base->v[i];
}

/* PMD-mapped share of the heap in %; -1 when it cannot be read. */
static double heap_pct(const struct heap *h)
{
	size_t resident, huge;

	if (exch_arena_coverage(h->arena, &resident, &huge) < 0)
		return -1.0;
	return resident ? PCT * (double)huge / (double)resident : 0.0;
}

static double chase_ns(double s)
{
	return s * NS_PER_S / DEMO_READS;
}

/* The program at work until @until: chains of BUSY_READS reads, each from
 * a new start and checked against its sum computed without memory, so a
 * byte that a move got wrong would show. Returns ns per read. */
static double heap_busy(struct heap *h, double until)
{
	double read_s = 0;
	uint64_t chains = 0;

	do {
		uint64_t seed = DEMO_SEED + ++h->chains, sum;
		double t0 = now_s();

		sum = table_chain(&h->t, true, seed, BUSY_READS);
		read_s += now_s() - t0;
		chains++;
		h->bad += sum != table_chain(&h->t, false, seed, BUSY_READS);
	} while (now_s() < until);
	return read_s * NS_PER_S / (double)(chains * BUSY_READS);
}

/* One line of coverage over time; @ns < 0: no reads measured yet. */
static void heap_row(double t, double pct, uint64_t coalesced, double ns)
{
	printf("  %7.2f s %10.1f%% %15" PRIu64, t, pct, coalesced);
	if (ns >= 0)
		printf(" %17.1f ns", ns);
	printf("\n");
	fflush(stdout);
}

/* Samples coverage every SAMPLE_S while the program keeps reading, until
 * the heap is all hugepages, nothing has changed for STALL_S (what is left
 * is not coalesced), or WATCH_DEADLINE_S. */
static void heap_watch(struct heap *h)
{
	double t0 = now_s(), t = 0, pct = heap_pct(h);
	uint64_t coalesced = 0;

	printf("  %9s %11s %15s %20s\n", "time", "PMD-mapped", "scan_coalesced",
	       "per read meanwhile");
	heap_row(t, pct, coalesced, -1.0);
	for (unsigned k = 1; pct < FULL_PCT && t - h->done_s < STALL_S && t < WATCH_DEADLINE_S;
	     k++) {
		double ns = heap_busy(h, t0 + k * SAMPLE_S), p = heap_pct(h);
		uint64_t c = stat_now("scan_coalesced") - h->base.v[SC_COALESCED];

		t = now_s() - t0;
		if (p != pct || c != coalesced)
			h->done_s = t;
		pct = p;
		coalesced = c;
		heap_row(t, pct, coalesced, ns);
	}
	h->pct = pct;
}

/* Once the coalescer has stopped short of full coverage: an explicit
 * exch_coalesce over the heap says whether anything it left could move. */
static void heap_leftover(struct heap *h)
{
	void *base;
	size_t size;

	h->left_rc = exch_arena_range(h->arena, &base, &size);
	if (h->left_rc == 0)
		h->left_rc = exch_coalesce(h->arena, base, size, EXCH_NOWAIT, &h->left);
}

/* Plans, places and fills the heap in a NOHUGE arena, then measures the
 * chain on its 4K pages. */
static int heap_build(struct heap *h, size_t bytes)
{
	struct pacer none = { .wait_s = &h->fill_s };
	double t0;
	int rc = table_plan(&h->t, bytes);

	if (rc < 0 || (rc = table_arena_open(&h->t, EXCH_ARENA_NOHUGE, &h->arena)) < 0)
		return rc;
	t0 = now_s();
	table_fill(&h->t, &none);
	h->fill_s = now_s() - t0;
	h->pct_before = heap_pct(h);
	h->small_s = timed_chase(&h->t, &h->small_sum);
	h->expect = table_chase(&h->t, false);
	return 0;
}

static const char *sum_text(uint64_t sum, uint64_t expect)
{
	return sum == expect ? "ok" : "WRONG";
}

static void heap_report_before(const struct heap *h)
{
	printf("heap: %zu arrays, %.2f GiB, in an arena made with EXCH_ARENA_NOHUGE: every first "
	       "touch got a 4K page, as a heap's pages do when they are touched with no "
	       "hugepage at hand (filled in %.3f s; PMD-mapped %.1f%%)\n", h->t.n,
	       table_gib(&h->t), h->fill_s, h->pct_before);
	printf("  %-40s %11.1f ns   checksum %s\n", "random reads on 4K pages, per read",
	       chase_ns(h->small_s), sum_text(h->small_sum, h->expect));
}

/* Starts the coalescer; -EALREADY (EXCH_COALESCE=1) keeps the one running. */
static int heap_coalescer_start(struct heap *h)
{
	int rc = exch_coalescer_start(COALESCE_MBPS, COALESCE_INTERVAL_MS);

	if (rc < 0 && rc != -EALREADY)
		return rc;
	h->own_coalescer = rc == 0;
	scan_counts_read(&h->base);
	if (rc == -EALREADY)
		printf("\nthe background coalescer was running already (EXCH_COALESCE=1), "
		       "at its own rate\n");
	else
		printf("\nbackground coalescer started: at most %u MB/s, a pass every %u ms\n",
		       COALESCE_MBPS, COALESCE_INTERVAL_MS);
	printf("meanwhile the program keeps running chains of %u dependent random reads, "
	       "each checked against its sum\n", BUSY_READS);
	fflush(stdout);
	return 0;
}

/* MB/s of @regions coalesced in @s seconds; 0 when nothing changed. */
static double coalesce_mbps(uint64_t regions, double s)
{
	return s > 0 ? (double)(regions * EXCH_REGION_SIZE) / MB / s : 0.0;
}

/* How far the coalescer got and how fast. */
static void heap_report_reach(const struct heap *h, const uint64_t *v)
{
	printf("\nThe heap reached %.1f%% hugepages by the sample at %.2f s: %" PRIu64
	       " regions coalesced, %.0f MB/s over that time. Reads waited for a region in "
	       "transit %" PRIu64 " times.\n", h->pct, h->done_s, v[SC_COALESCED],
	       coalesce_mbps(v[SC_COALESCED], h->done_s), v[SC_PARKED]);
}

/* Where the frames came from, and what set the coalescer's pace. */
static void heap_report_frames(const uint64_t *v)
{
	printf("Frames: %" PRIu64 " from the pool, %" PRIu64 " captured when the first part freed "
	       "its arena, and %" PRIu64 " regions traded: the coalescer leaves the pool at least "
	       "half full for first touches and waits for its refill; only when no frame is "
	       "coming does it swap a hot 4K region with a cold hugepage of the same arena (heat "
	       "tracking armed %" PRIu64 " times). Of %" PRIu64 " passes, %" PRIu64 " stopped at "
	       "the budget (one pass moves at most %u MB, and the next starts %u ms after it "
	       "ends) and %" PRIu64 " for want of a frame: ",
	       v[SC_COALESCED] - v[SC_TRADED] - v[SC_CAPTURED], v[SC_CAPTURED], v[SC_TRADED],
	       v[SC_ARMED], v[SC_PASSES], v[SC_BUDGET_STOPS],
	       COALESCE_MBPS * COALESCE_INTERVAL_MS / MS_PER_S, COALESCE_INTERVAL_MS,
	       v[SC_FRAME_STOPS]);
	if (v[SC_TRADED] || v[SC_FRAME_STOPS] > v[SC_BUDGET_STOPS])
		printf("the pool's refill set the pace.\n");
	else if (v[SC_BUDGET_STOPS])
		printf("the budget set the pace, and the pool's refill kept up.\n");
	else
		printf("neither held it back; the copies themselves set the pace.\n");
}

/* Why the coverage stopped short, from the explicit pass over the heap. */
static void heap_report_leftover(const struct heap *h)
{
	const struct exch_coalesce_report *l = &h->left;

	if (h->pct >= FULL_PCT)
		return;
	if (h->left_rc < 0) {
		printf("exch_coalesce over the rest of the heap failed: %s\n", strerror(-h->left_rc));
		return;
	}
	printf("An explicit exch_coalesce over the heap then coalesced %" PRIu64 " more regions "
	       "(%" PRIu64 " skipped busy, %" PRIu64 " for want of a frame, %" PRIu64 " put back "
	       "after a kernel error)", l->coalesced, l->skipped_busy, l->skipped_no_frame,
	       l->errors);
	if (l->errors)
		printf(": the library failed to move what is left; EXCH_STATS=1 shows its "
		       "counters.\n");
	else if (l->coalesced || l->skipped_busy || l->skipped_no_frame)
		printf(".\n");
	else
		printf(": what is left is regions the table only partly uses (ends of arrays). "
		       "The coalescer leaves a region with more unused pages than "
		       "EXCH_MAX_PTES_NONE alone: making it one hugepage would make them "
		       "resident.\n");
}

static void heap_report_busy(const struct heap *h)
{
	printf("%" PRIu64 " checked chains (%" PRIu64 " reads) ran while the coalescer "
	       "worked: %s.\n", h->chains, h->chains * BUSY_READS,
	       h->bad ? "some gave a WRONG sum" : "every sum was right");
}

static void heap_report_after(const struct heap *h, const struct table *t1,
			      const struct run *x)
{
	double speed = h->small_s / h->huge_s;

	printf("\n  %-40s %11.1f ns   checksum %s\n", "random reads on hugepages, per read",
	       chase_ns(h->huge_s), sum_text(h->huge_sum, h->expect));
	printf("  %-40s %11.2fx\n", "speedup over the scattered heap", speed);
	printf("  %-40s %11.1f ns   (%.2f GiB, hugepages from the first touch)\n",
	       "the first part's arena, per read", chase_ns(x->read_s), table_gib(t1));
	if (speed > 1 + SAME_BAND)
		printf("\nThe coalescer made the random reads %.0f%% faster without stopping the "
		       "program: the same table, now on 2 MB pages, misses the TLB less often.\n",
		       (speed - 1) * PCT);
	else
		printf("\nThe random reads ran no faster after coalescing (%.2fx): the TLB made "
		       "no measurable difference here.\n", speed);
}

/* The coalescer at work: coverage over time, then the chain again. */
static void heap_coalesce(struct heap *h, const struct table *t1, const struct run *x)
{
	struct scan_counts d;

	heap_watch(h);
	if (h->own_coalescer)
		exch_coalescer_stop();
	scan_counts_since(&h->base, &d);
	heap_report_reach(h, d.v);
	heap_report_frames(d.v);
	if (h->pct < FULL_PCT)
		heap_leftover(h);
	heap_report_leftover(h);
	heap_report_busy(h);
	h->huge_s = timed_chase(&h->t, &h->huge_sum);
	heap_report_after(h, t1, x);
}

/* Frees the heap; keeps @rc unless it is 0, and counts a missing coalescer
 * as no error. */
static int heap_close(struct heap *h, int rc)
{
	int closed = table_arena_close(&h->t, h->arena);

	if (rc == -EOPNOTSUPP)
		rc = 0;
	return rc ? rc : closed;
}

/* A read gave a wrong value: before, while or after coalescing (the chain
 * after only if it ran). */
static bool heap_wrong(const struct heap *h)
{
	return h->small_sum != h->expect || h->bad || (h->huge_s > 0 && h->huge_sum != h->expect);
}

/* Part 2 on a heap of @bytes. Returns 0, 1 when a sum was wrong, or a
 * negative errno. A kernel without what coalescing needs skips the part. */
static int run_heap(size_t bytes, const struct table *t1, const struct run *x)
{
	struct heap h = { 0 };
	int rc;

	printf("\nPart 2: the background coalescer on a scattered heap\n\n");
	fflush(stdout);
	rc = heap_build(&h, bytes);
	if (rc == 0) {
		heap_report_before(&h);
		rc = heap_coalescer_start(&h);
		if (rc == 0)
			heap_coalesce(&h, t1, x);
		else if (rc == -EOPNOTSUPP)
			printf("coalescing is not available here (see the feature line): part 2 "
			       "ends\n");
		else
			fprintf(stderr, "demo: exch_coalescer_start: %s\n", strerror(-rc));
		rc = heap_close(&h, rc);
	}
	table_release(&h.t);
	return rc < 0 ? rc : heap_wrong(&h);
}

/* ---- main ---- */

/* Bytes of the frame pool, which the arena run refills as it goes. */
static size_t warm_pool_bytes(void)
{
	uint64_t frames = 0;

	exch_pool_wait(POOL_WAIT_MS);
	exch_stats_get("pool_frames_ready", &frames);
	return (size_t)frames * EXCH_REGION_SIZE;
}

/* Populates and releases @len bytes, so both runs get host-backed memory. */
static int warm_up(size_t len)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	int rc = 0;

	if (p == MAP_FAILED)
		return -errno;
	madvise(p, len, MADV_HUGEPAGE);
	if (madvise(p, len, MADV_POPULATE_WRITE) < 0)
		rc = -errno;
	munmap(p, len);
	return rc;
}

static int parse_gb(int argc, char **argv, double *gb)
{
	char *end;

	*gb = DEMO_DEFAULT_GB;
	if (argc == 1)
		return 0;
	if (argc != 3 || strcmp(argv[1], "--gb"))
		return -EINVAL;
	*gb = strtod(argv[2], &end);
	return *end || !(*gb > 0) ? -EINVAL : 0;
}

int main(int argc, char **argv)
{
	struct run x = { .name = "libexch arena" }, m = { .name = "plain malloc" };
	struct table t = { 0 };
	size_t pool_frames = 0;
	uint64_t expect;
	double gb;
	int heap, tier, program;

	if (parse_gb(argc, argv, &gb) < 0) {
		fprintf(stderr, "usage: %s [--gb N]\n", argv[0]);
		return 2;
	}
	exch_features_print(stdout);
	if (table_plan(&t, (size_t)(gb * (double)GIB)) < 0) {
		fprintf(stderr, "demo: out of memory\n");
		return 1;
	}
	if (warm_up(t.total * sizeof(uint64_t) + warm_pool_bytes()) < 0)
		fprintf(stderr, "demo: warm-up failed; the first run may pay the host's faults\n");
	if (run_arena(&t, &x, &pool_frames) < 0 || run_malloc(&t, &m) < 0) {
		fprintf(stderr, "demo: a run could not get its memory\n");
		return 1;
	}
	expect = table_chase(&t, false);
	report(&t, &x, &m, expect, pool_frames);
	heap = run_heap((size_t)(gb * HEAP_SHARE * (double)GIB), &t, &x);
	table_release(&t);
	tier = demo_tier(ALIGN_REGION(gb * TIER_SHARE * (double)GIB));
	program = demo_program(gb);
	return x.checksum == expect && m.checksum == expect && heap == 0 && tier == 0 &&
	       program == 0 ? 0 : 1;
}

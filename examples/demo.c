/*
 * demo.c - a big in-memory table on a libexch arena and on plain malloc.
 *
 * The workload is what a program holding a large table does: it allocates
 * a few hundred arrays of different sizes (DEMO_MIN_ARRAY to DEMO_MAX_ARRAY,
 * roughly log-uniform, a few GiB in total), fills them, rewrites them once
 * (an update pass over memory that is already mapped), then follows a chain of
 * dependent random reads across the whole table. It runs twice, with the
 * same arrays and the same reads: once in an arena (exch_alloc), once with
 * malloc. The reads are checked against a checksum computed without memory,
 * so a wrong byte anywhere on the path fails the run.
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
 * Usage: demo [--gb N]   (default 2 GiB; fractions allowed)
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

/* The dependent chain: each read decides where the next one goes. With
 * @mem false the values are recomputed instead of read: the expected sum. */
static uint64_t table_chase(const struct table *t, bool mem)
{
	uint64_t g = mix64(DEMO_SEED) % t->total, sum = 0;

	for (uint64_t k = 0; k < DEMO_READS; k++) {
		size_t a = table_find(t, g), i = (size_t)(g - t->first[a]);
		uint64_t v = mem ? t->arr[a][i] : elem_value(a, i);

		sum = sum * CHAIN_MULT + v;
		g = mix64(v ^ k) % t->total;
	}
	return sum;
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
	t0 = now_s();
	r->checksum = table_chase(t, true);
	r->read_s = now_s() - t0;
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

static size_t arena_alloc_all(struct table *t, exch_arena_t *arena)
{
	size_t a;

	for (a = 0; a < t->n; a++) {
		t->arr[a] = exch_alloc(arena, t->elems[a] * sizeof(uint64_t));
		if (!t->arr[a]) {
			fprintf(stderr, "demo: exch_alloc: %s\n", strerror(errno));
			break;
		}
	}
	return a;
}

static int run_arena(struct table *t, struct run *r, size_t *pool_frames)
{
	struct pacer p = { .wait_s = &r->wait_s };
	exch_arena_t *arena;
	size_t got;
	int rc = exch_arena_create(table_arena_bytes(t), 0, &arena);

	if (rc < 0) {
		fprintf(stderr, "demo: exch_arena_create: %s\n", strerror(-rc));
		return rc;
	}
	got = arena_alloc_all(t, arena);
	if (got == t->n) {
		p.chunk = pool_chunk();
		*pool_frames = p.chunk;
		run_workload(t, r, &p);
		r->huge_known = exch_arena_coverage(arena, &r->resident, &r->huge) == 0;
	}
	for (size_t a = 0; a < got; a++)
		exch_free(arena, t->arr[a]);
	rc = exch_arena_destroy(arena);
	if (rc < 0)
		fprintf(stderr, "demo: exch_arena_destroy: %s\n", strerror(-rc));
	return got == t->n ? rc : -ENOMEM;
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
	       (double)(t->total * sizeof(uint64_t)) / (double)GIB, DEMO_READS);
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
	free(t.elems);
	free(t.first);
	free(t.arr);
	return x.checksum == expect && m.checksum == expect ? 0 : 1;
}

/*
 * bench_tier.c - the compressed tier against the kernel's compressed swap.
 *
 * The data is the page mix of mix.h, one sixth each: zeros, a repeated
 * word, random bytes (incompressible), text, pointers (list nodes) and
 * numbers (sparse counters). Both sides get the same pages and the same
 * access pattern: every page is evicted at once, then a sample of pages is
 * touched one by one in a random order, each touch timed (a one-byte read:
 * the fault, the decompression and the mapping), and finally every page is
 * checked.
 *
 *   libexch  exch_reclaim() of the whole heap, timed (evict_pages_per_s),
 *            into the zbud pool (pages that do not compress go raw to the
 *            swap file); then again with EXCH_RECLAIM_SWAP, everything on
 *            the swap file, read back with io_uring.
 *   kernel   (--kernel, run by kernel-swap.sh, which sets up a swap file
 *            with zswap (lz4), or zram where zswap has no lz4, and a memory
 *            cgroup, and puts the machine back after) the same pages in
 *            plain memory, evicted with MADV_PAGEOUT and faulted back.
 *
 * Sampled pages are 16 apart (and cover every kind), so readahead, which
 * both sides do, never brings in a sampled page early: every timed touch
 * is a real restore.
 *
 * Output: a table, or with --json one object with restore_pool_p50_us,
 * restore_pool_p99_us, restore_swap_p50_us, restore_swap_p99_us,
 * restore_p50_us and restore_p99_us (every kind, as zswap is measured),
 * zswap_p50_us, zswap_p99_us, ratio_p50 and ratio_p99 (libexch over zswap,
 * lower is better), zbud_density (bytes of the pages in the pool over
 * the pool's bytes),
 * compression_ratio (the mix's bytes over the bytes the tier keeps),
 * evict_pages_per_s and mismatches (pages that came back wrong, both
 * sides: must be 0).
 */
#include "config.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bench_util.h"
#include "exch.h"
#include "mix.h"

#define MB (1024ul * 1024ul)
#define SAMPLE_STRIDE 16 /* more than the readahead window */
#define DEFAULT_MB 256
#define DEFAULT_SAMPLES 4000
#define SEED 77
#define PAGEMAP_SWAPPED (1ull << 62)

struct opts {
	bool json, kernel, no_kernel;
	size_t mb, samples;
};

struct results {
	struct bu_dist pool, swap, all, same;
	double evict_pages_per_s, evict_swap_pages_per_s;
	double zbud_density, compression_ratio;
	size_t mismatches;
	bool kernel_ok;
	char kernel_json[1024]; /* the --kernel run's object, or why it was skipped */
	double zswap_p50, zswap_p99;
};

static uint64_t stat_of(const char *name)
{
	uint64_t v = 0;

	exch_stats_get(name, &v);
	return v;
}

/* The sampled page indexes, in a random order. */
static size_t *sample_order(size_t pages, size_t *n)
{
	size_t cap = pages / SAMPLE_STRIDE, *v = malloc(cap * sizeof(*v));
	uint64_t s = SEED;

	if (!v)
		return NULL;
	for (size_t k = 0; k < cap; k++)
		v[k] = k * SAMPLE_STRIDE + k % MIX__COUNT; /* every kind in turn */
	for (size_t k = cap; k > 1; k--) {
		size_t j = mix_rand(&s) % k, t = v[k - 1];

		v[k - 1] = v[j];
		v[j] = t;
	}
	*n = cap;
	return v;
}

/* Touches the pages of @order (at most @max), timing each; the latencies
 * of kinds [lo, hi] go to @us. Returns how many. */
static size_t touch_timed(const char *p, const size_t *order, size_t n, size_t max,
			  enum mix_kind lo, enum mix_kind hi, double *us)
{
	size_t got = 0;

	for (size_t k = 0; k < n && got < max; k++) {
		size_t i = order[k];
		uint64_t t0;

		if (mix_kind_of(i) < lo || mix_kind_of(i) > hi)
			continue;
		t0 = bu_now_ns();
		(void)*(const volatile char *)(p + i * MIX_PAGE);
		us[got++] = (double)(bu_now_ns() - t0) / BU_NS_PER_US;
	}
	return got;
}

/* ---- libexch ---- */

static int tier_evict(exch_arena_t *a, size_t len, unsigned flags, double *per_s)
{
	uint64_t e0 = stat_of("evicted_pages"), t0 = bu_now_ns();
	long got = exch_reclaim(a, len, flags);

	*per_s = bu_per_s(stat_of("evicted_pages") - e0, bu_now_ns() - t0);
	if (got < 0) {
		fprintf(stderr, "bench_tier: exch_reclaim: %s\n", strerror((int)-got));
		return (int)got;
	}
	return 0;
}

/*
 * The pool's figures, right after the eviction: zbud_density is the bytes
 * of the pages the pool stands for over the bytes it uses (zbud's bound is
 * 2); compression_ratio is the bytes of every evicted page over what the
 * tier keeps for them (pool, raw pages on swap, a word per same-filled one).
 */
static void tier_density(struct results *r, size_t evicted)
{
	double pool = (double)stat_of("tier_pool_bytes");
	double in_pool = (double)stat_of("tier_pool_pages") * MIX_PAGE;
	double raw = (double)stat_of("tier_raw_pages") * MIX_PAGE;
	double same = (double)stat_of("tier_same_pages") * sizeof(uint64_t);

	r->zbud_density = bu_ratio(in_pool, pool);
	r->compression_ratio = bu_ratio((double)evicted * MIX_PAGE, pool + raw + same);
}

static int run_tier(const struct opts *o, struct results *r)
{
	size_t len = o->mb * MB, pages = len / MIX_PAGE, n, max = o->samples;
	size_t *order = sample_order(pages, &n);
	double *us = malloc(n * sizeof(double));
	exch_arena_t *a;
	char *p;
	int rc;

	if (!order || !us || exch_arena_create(2 * len, 0, &a) < 0 || !(p = exch_alloc(a, len)))
		return -ENOMEM;
	exch_pool_wait(20000);
	mix_fill(p, pages, SEED);
	rc = tier_evict(a, len, 0, &r->evict_pages_per_s);
	if (rc < 0)
		return rc;
	tier_density(r, stat_of("evicted_pages"));
	r->pool = bu_dist_of(us, touch_timed(p, order, n, max, MIX_TEXT, MIX_NUMBERS, us));
	r->same = bu_dist_of(us, touch_timed(p, order, n, max, MIX_ZERO, MIX_WORD, us));
	r->mismatches += mix_mismatches(p, pages, SEED);
	/* Every kind, pool and raw pages on swap as they come: like zswap. */
	rc = tier_evict(a, len, 0, &r->evict_pages_per_s);
	if (rc < 0)
		return rc;
	r->all = bu_dist_of(us, touch_timed(p, order, n, max, MIX_ZERO, MIX_NUMBERS, us));
	r->mismatches += mix_mismatches(p, pages, SEED);
	/* Everything on the swap file. */
	rc = tier_evict(a, len, EXCH_RECLAIM_SWAP, &r->evict_swap_pages_per_s);
	if (rc < 0)
		return rc;
	r->swap = bu_dist_of(us, touch_timed(p, order, n, max, MIX_RANDOM, MIX_NUMBERS, us));
	r->mismatches += mix_mismatches(p, pages, SEED);
	r->mismatches += stat_of("swap_mismatches") + stat_of("tier_restore_errors");
	exch_free(a, p);
	exch_arena_destroy(a);
	free(order);
	free(us);
	return 0;
}

/* ---- the kernel (--kernel) ---- */

/* Fraction of [p, p+len) swapped out, from /proc/self/pagemap. */
static double swapped_fraction(const char *p, size_t pages)
{
	FILE *f = fopen("/proc/self/pagemap", "r");
	size_t swapped = 0;

	if (!f)
		return 0;
	for (size_t i = 0; i < pages; i++) {
		uint64_t e = 0;

		if (fseeko(f, (off_t)((uintptr_t)p / MIX_PAGE + i) * 8, SEEK_SET) == 0 &&
		    fread(&e, sizeof(e), 1, f) == 1 && (e & PAGEMAP_SWAPPED))
			swapped++;
	}
	fclose(f);
	return (double)swapped / (double)pages;
}

static int run_kernel(const struct opts *o)
{
	size_t len = o->mb * MB, pages = len / MIX_PAGE, n;
	size_t *order = sample_order(pages, &n);
	double *us = malloc(n * sizeof(double)), swapped, per_s;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct bu_dist all;
	uint64_t t0;
	size_t bad;

	if (!order || !us || p == MAP_FAILED)
		return -ENOMEM;
	madvise(p, len, MADV_NOHUGEPAGE);
	mix_fill(p, pages, SEED);
	t0 = bu_now_ns();
	if (madvise(p, len, MADV_PAGEOUT) < 0) {
		printf("{\"zswap_skipped\": \"MADV_PAGEOUT: %s\"}\n", strerror(errno));
		return 0;
	}
	per_s = bu_per_s(pages, bu_now_ns() - t0);
	swapped = swapped_fraction(p, pages);
	all = bu_dist_of(us, touch_timed(p, order, n, o->samples, MIX_ZERO, MIX_NUMBERS, us));
	bad = mix_mismatches(p, pages, SEED);
	printf("{\"zswap_p50_us\": %.2f, \"zswap_p99_us\": %.2f, \"zswap_samples\": %zu, "
	       "\"zswap_evict_pages_per_s\": %.0f, \"zswap_swapped_pct\": %.1f, "
	       "\"zswap_mismatches\": %zu}\n",
	       all.p50_us, all.p99_us, all.n, per_s, swapped * 100, bad);
	munmap(p, len);
	free(order);
	free(us);
	return 0;
}

/* Runs this program with --kernel under kernel-swap.sh and keeps its line. */
static void run_kernel_half(const struct opts *o, const char *self, struct results *r)
{
	char cmd[2048], line[1024] = "";
	FILE *f;

	snprintf(cmd, sizeof(cmd), "%s/kernel-swap.sh %s --kernel --mb %zu --samples %zu",
		 EXCH_BENCH_DIR, self, o->mb, o->samples);
	f = popen(cmd, "r");
	if (!f || !fgets(line, sizeof(line), f))
		snprintf(line, sizeof(line), "{\"zswap_skipped\": \"kernel-swap.sh gave nothing\"}");
	if (f)
		pclose(f);
	line[strcspn(line, "\n")] = 0;
	snprintf(r->kernel_json, sizeof(r->kernel_json), "%s", line);
	r->kernel_ok = sscanf(line, "{\"zswap_p50_us\": %lf, \"zswap_p99_us\": %lf", &r->zswap_p50,
			      &r->zswap_p99) == 2;
	if (r->kernel_ok) {
		const char *m = strstr(line, "\"zswap_mismatches\": ");

		if (m)
			r->mismatches += strtoul(m + strlen("\"zswap_mismatches\": "), NULL, 10);
	}
}

/* ---- output ---- */

static void print_json(const struct opts *o, const struct results *r)
{
	printf("{\"mb\": %zu, \"mix\": \"1/6 each: zeros, repeated word, random, text, "
	       "pointers, sparse numbers\", ", o->mb);
	printf(" \"restore_pool_p50_us\": %.2f, \"restore_pool_p99_us\": %.2f, ",
	       r->pool.p50_us, r->pool.p99_us);
	printf(" \"restore_swap_p50_us\": %.2f, \"restore_swap_p99_us\": %.2f, ",
	       r->swap.p50_us, r->swap.p99_us);
	printf(" \"restore_same_p50_us\": %.2f, \"restore_p50_us\": %.2f, \"restore_p99_us\": %.2f, ",
	       r->same.p50_us, r->all.p50_us, r->all.p99_us);
	if (r->kernel_ok)
		printf(" \"zswap_p50_us\": %.2f, \"zswap_p99_us\": %.2f, \"ratio_p50\": %.3f, "
		       "\"ratio_p99\": %.3f, ", r->zswap_p50, r->zswap_p99,
		       bu_ratio(r->all.p50_us, r->zswap_p50), bu_ratio(r->all.p99_us, r->zswap_p99));
	else
		printf(" \"zswap_p50_us\": null, \"zswap_p99_us\": null, ");
	printf(" \"kernel\": %s, ", r->kernel_json[0] ? r->kernel_json : "null");
	printf(" \"zbud_density\": %.3f, \"compression_ratio\": %.3f, ", r->zbud_density,
	       r->compression_ratio);
	printf(" \"evict_pages_per_s\": %.0f, \"evict_swap_pages_per_s\": %.0f, "
	       "\"mismatches\": %zu}\n", r->evict_pages_per_s, r->evict_swap_pages_per_s,
	       r->mismatches);
}

static void print_table(const struct opts *o, const struct results *r)
{
	printf("bench_tier: %zu MB of the page mix (zeros, word, random, text, pointers, "
	       "numbers)\n", o->mb);
	printf("  evict (exch_reclaim)      %10.0f pages/s (to swap: %.0f)\n",
	       r->evict_pages_per_s, r->evict_swap_pages_per_s);
	printf("  zbud density              %10.2f  (compression of the mix %.2f)\n",
	       r->zbud_density, r->compression_ratio);
	printf("  restore, from the pool    p50 %7.2f us  p99 %7.2f us\n", r->pool.p50_us,
	       r->pool.p99_us);
	printf("  restore, from swap        p50 %7.2f us  p99 %7.2f us\n", r->swap.p50_us,
	       r->swap.p99_us);
	printf("  restore, same-filled      p50 %7.2f us\n", r->same.p50_us);
	printf("  restore, every kind       p50 %7.2f us  p99 %7.2f us\n", r->all.p50_us,
	       r->all.p99_us);
	if (r->kernel_ok)
		printf("  kernel (zswap), every kind p50 %7.2f us  p99 %7.2f us  -> ratio p50 %.2f, "
		       "p99 %.2f\n", r->zswap_p50, r->zswap_p99, bu_ratio(r->all.p50_us, r->zswap_p50),
		       bu_ratio(r->all.p99_us, r->zswap_p99));
	else
		printf("  kernel: %s\n", r->kernel_json);
	printf("  mismatches                %10zu\n", r->mismatches);
}

static int parse_args(int argc, char **argv, struct opts *o)
{
	*o = (struct opts){ .mb = DEFAULT_MB, .samples = DEFAULT_SAMPLES };
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			o->json = true;
		else if (!strcmp(argv[i], "--kernel"))
			o->kernel = true;
		else if (!strcmp(argv[i], "--no-kernel"))
			o->no_kernel = true;
		else if (!strcmp(argv[i], "--mb") && i + 1 < argc)
			o->mb = strtoul(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--samples") && i + 1 < argc)
			o->samples = strtoul(argv[++i], NULL, 10);
		else
			return -EINVAL;
	}
	return o->mb >= 4 && o->samples ? 0 : -EINVAL;
}

int main(int argc, char **argv)
{
	struct results r = { 0 };
	struct opts o;
	int rc;

	if (parse_args(argc, argv, &o) < 0) {
		fprintf(stderr, "usage: bench_tier [--json] [--mb N (>= 4)] [--samples N] "
				"[--no-kernel]\n");
		return 2;
	}
	if (o.kernel)
		return run_kernel(&o) < 0;
	rc = run_tier(&o, &r);
	if (rc < 0) {
		fprintf(stderr, "bench_tier: %s\n", strerror(-rc));
		return 1;
	}
	if (o.no_kernel)
		snprintf(r.kernel_json, sizeof(r.kernel_json), "{\"zswap_skipped\": \"--no-kernel\"}");
	else
		run_kernel_half(&o, argv[0], &r);
	if (o.json)
		print_json(&o, &r);
	else
		print_table(&o, &r);
	return r.mismatches != 0;
}

/*
 * demo_tier.c - part 3 of the demo: a heap bigger than its working set.
 *
 * Programs keep much more memory than they use at any moment: caches,
 * old sessions, tables read once at start. Part 3 builds such a heap in an
 * arena: pages of the realistic mix of bench/mix.h (zeros, repeated words,
 * random bytes, text, pointers, numbers), of which one region in
 * HOT_EVERY is the working set, read over and over. It times a pass over
 * the working set, then asks the library to take the whole heap out of
 * memory (exch_reclaim), and runs the same passes again: the first one
 * brings the working set back page by page from the tier as it touches
 * it, the next ones run at full speed on a heap that is mostly compressed
 * or on the swap file. It reports resident memory before, after the
 * eviction and after the working set came back, what the tier holds and
 * how densely, the restore latency the first pass saw, and the pass times
 * as ratios. Finally it reads every page of the heap back (restoring the
 * cold ones) and checks each against the mix: a wrong byte fails the demo.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <exch.h>

#include "demo_tier.h"
#include "mix.h"

#define HOT_EVERY 10        /* one region in ten is the working set */
#define PASSES 3            /* working-set passes after the eviction */
#define SEED 0x7e11ull
#define MIB ((double)(1 << 20))
#define NS_PER_S 1e9
#define NS_PER_US 1e3

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / NS_PER_S;
}

static uint64_t stat_of(const char *name)
{
	uint64_t v = 0;

	exch_stats_get(name, &v);
	return v;
}

static double resident_mib(exch_arena_t *a)
{
	size_t resident = 0, huge = 0;

	exch_arena_coverage(a, &resident, &huge);
	return (double)resident / MIB;
}

/* Reads one word of every 64 bytes of the working set; its time in s. */
static double hot_pass(const char *p, size_t bytes, uint64_t *sum)
{
	double t0 = now_s();
	uint64_t s = 0;

	for (size_t r = 0; r < bytes / EXCH_REGION_SIZE; r += HOT_EVERY) {
		const uint64_t *w = (const uint64_t *)(p + r * EXCH_REGION_SIZE);

		for (size_t i = 0; i < EXCH_REGION_SIZE / sizeof(*w); i += 8)
			s += w[i];
	}
	*sum = s;
	return now_s() - t0;
}

static void report_tier(double evicted_mib, double seconds)
{
	double pool = (double)stat_of("tier_pool_bytes") / MIB;
	double in_pool = (double)stat_of("tier_pool_pages") * MIX_PAGE / MIB;
	double on_swap = (double)stat_of("swap_slots_used") * MIX_PAGE / MIB;
	double same = (double)stat_of("tier_same_pages") * MIX_PAGE / MIB;

	printf("  exch_reclaim: %.0f MiB evicted in %.2f s (%.0f pages/s)\n", evicted_mib, seconds,
	       evicted_mib * MIB / MIX_PAGE / seconds);
	printf("  the tier holds: %.0f MiB of pages in a %.0f MiB zbud pool (density %.2f), "
	       "%.0f MiB\n    that did not compress on the swap file, %.0f MiB of same-filled "
	       "pages as one word each\n", in_pool, pool, pool > 0 ? in_pool / pool : 0, on_swap,
	       same);
}

int demo_tier(size_t bytes)
{
	exch_arena_t *a;
	double before, evicted_s, t_hot, t_first, t_after = 0, t0;
	uint64_t sum0, sum, restored0;
	size_t pages = bytes / MIX_PAGE, wrong;
	long got;
	char *p;

	printf("\nPart 3: the compressed tier on a heap bigger than its working set\n\n");
	if (exch_arena_create(bytes + EXCH_REGION_SIZE, 0, &a) < 0 || !(p = exch_alloc(a, bytes))) {
		fprintf(stderr, "demo: no arena for part 3\n");
		return -ENOMEM;
	}
	exch_pool_wait(30000);
	mix_fill(p, pages, SEED);
	printf("a %.0f MiB heap of mixed pages (1/6 each: zeros, repeated words, random bytes, "
	       "text,\npointers, numbers); one region in %d is the working set, read over and "
	       "over\n\n", (double)bytes / MIB, HOT_EVERY);
	before = resident_mib(a);
	t_hot = hot_pass(p, bytes, &sum0);
	t_hot = hot_pass(p, bytes, &sum0); /* the second, cached like the ones after */
	t0 = now_s();
	got = exch_reclaim(a, bytes, 0);
	evicted_s = now_s() - t0;
	if (got < 0) {
		printf("the tier is not available here (%s): part 3 ends\n", strerror((int)-got));
		exch_free(a, p);
		exch_arena_destroy(a);
		return got == -EOPNOTSUPP ? 0 : (int)got;
	}
	printf("  resident before: %.0f MiB\n", before);
	report_tier((double)got / MIB, evicted_s);
	printf("  resident after the eviction: %.1f MiB\n", resident_mib(a));
	restored0 = stat_of("restored_pages");
	t_first = hot_pass(p, bytes, &sum);
	for (int i = 0; i < PASSES; i++) {
		uint64_t s;
		double t = hot_pass(p, bytes, &s);

		t_after = i == 0 || t < t_after ? t : t_after;
		sum = s == sum ? sum : ~sum0;
	}
	printf("  working-set pass: %.1f ms before; %.1f ms on the first pass after (%llu pages "
	       "restored,\n    %.1f us each), %.1f ms on the next ones = %.2fx the time before\n",
	       t_hot * 1e3, t_first * 1e3,
	       (unsigned long long)(stat_of("restored_pages") - restored0),
	       (t_first - t_after) * NS_PER_S / NS_PER_US /
		       (double)(stat_of("restored_pages") - restored0 + 1),
	       t_after * 1e3, t_after / t_hot);
	printf("  resident with the working set back: %.0f MiB = %.2f of before\n", resident_mib(a),
	       resident_mib(a) / before);
	wrong = mix_mismatches(p, pages, SEED);
	printf("  every page read back and checked: %zu wrong%s\n", wrong,
	       sum == sum0 ? "" : ", and the working set's sums differ");
	exch_free(a, p);
	exch_arena_destroy(a);
	return wrong == 0 && sum == sum0 ? 0 : -EIO;
}

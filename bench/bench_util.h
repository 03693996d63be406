/*
 * bench_util.h - what the benches share: a clock, latency distributions.
 */
#ifndef EXCH_BENCH_UTIL_H
#define EXCH_BENCH_UTIL_H

#include <stddef.h>
#include <stdint.h>

#define BU_NS_PER_S 1e9
#define BU_NS_PER_US 1e3

/* p50 and p99 of a set of latencies, in microseconds. */
struct bu_dist {
	double p50_us;
	double p99_us;
	size_t n;
};

uint64_t bu_now_ns(void); /* CLOCK_MONOTONIC */
/* Sorts @us (n values) and takes nearest-rank percentiles. */
struct bu_dist bu_dist_of(double *us, size_t n);
double bu_per_s(uint64_t n, uint64_t ns);
double bu_ratio(double a, double b); /* a / b, 0 when b is 0 */
/* A 2 MB-aligned anonymous mapping of @len with madvise @advice, or NULL;
 * *@raw and *@raw_len are what to munmap. */
char *bu_map_aligned(size_t len, int advice, void **raw, size_t *raw_len);
/*
 * Populates @len bytes as hugepages and releases them: on a virtual machine
 * the host backs guest memory lazily, and the first populate of never-used
 * guest memory was measured at ~3.6-4 ms per 2 MB against ~0.25 ms after.
 * Without it, whichever side of a comparison first gets fresh guest memory
 * pays the host's faults. 0 or -errno.
 */
int bu_warm_up(size_t len);

#endif

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

#endif

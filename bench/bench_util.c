/*
 * bench_util.c - the helpers of bench_util.h.
 */
#include "bench_util.h"

#include <stdlib.h>
#include <time.h>

#define BU_P50 0.50
#define BU_P99 0.99

uint64_t bu_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int bu_cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted @v. */
static double bu_percentile(const double *v, size_t n, double q)
{
	size_t rank = (size_t)(q * (double)n);

	if ((double)rank < q * (double)n)
		rank++;
	if (rank < 1)
		rank = 1;
	return v[(rank < n ? rank : n) - 1];
}

struct bu_dist bu_dist_of(double *us, size_t n)
{
	struct bu_dist d = { 0, 0, n };

	if (!n)
		return d;
	qsort(us, n, sizeof(*us), bu_cmp);
	d.p50_us = bu_percentile(us, n, BU_P50);
	d.p99_us = bu_percentile(us, n, BU_P99);
	return d;
}

double bu_per_s(uint64_t n, uint64_t ns)
{
	return ns ? (double)n * BU_NS_PER_S / (double)ns : 0.0;
}

double bu_ratio(double a, double b)
{
	return b != 0.0 ? a / b : 0.0;
}

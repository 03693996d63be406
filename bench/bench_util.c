/*
 * bench_util.c - the helpers of bench_util.h.
 */
#include "bench_util.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
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

#define BU_REGION (2ul << 20)

char *bu_map_aligned(size_t len, int advice, void **raw, size_t *raw_len)
{
	size_t n = len + BU_REGION;
	char *p = mmap(NULL, n, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	char *a;

	if (p == MAP_FAILED)
		return NULL;
	a = (char *)(((uintptr_t)p + BU_REGION - 1) & ~(uintptr_t)(BU_REGION - 1));
	if (madvise(a, len, advice) < 0) {
		munmap(p, n);
		return NULL;
	}
	*raw = p;
	*raw_len = n;
	return a;
}

static int bu_populate(size_t len)
{
	void *raw;
	size_t raw_len;
	char *p = bu_map_aligned(len, MADV_HUGEPAGE, &raw, &raw_len);
	int rc = 0;

	if (!p)
		return -ENOMEM;
	if (madvise(p, len, MADV_POPULATE_WRITE) < 0)
		rc = -errno;
	munmap(raw, raw_len);
	return rc;
}

/* In a child of its own: the caller's peak RSS (which its exec'd children
 * report as their own ru_maxrss after a vfork) must not include it. */
int bu_warm_up(size_t len)
{
	pid_t pid = fork();
	int st;

	if (pid < 0)
		return -errno;
	if (pid == 0)
		_exit(bu_populate(len) < 0 ? 1 : 0);
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st))
		return -ENOMEM;
	return 0;
}

/*
 * bench_xcopy.c - bandwidth of the exchange-engine variants against libc.
 *
 * For every variant this CPU runs, and for libc as the baseline, at four
 * sizes (4K, 64K, 2M, 64M), the median over repeated timed runs of:
 *   copy_t, copy_nt    against memcpy
 *   exchange           against three memcpy through a 2 MB buffer
 *                      (tmp = a, a = b, b = tmp, one 2 MB piece at a time)
 *   zero_t, zero_nt    against memset
 * each with two kinds of destination:
 *   hot   the same buffer every time, so it stays cached as far as it fits;
 *   cold  the next slice of a pool of BX_POOL_SIZE bytes, pre-faulted and
 *         much larger than the last-level cache, so a destination has left
 *         the cache before it is written again.
 * The source of copies is one buffer re-used every time. Exchange has two
 * destinations, both hot or both cold.
 *
 * A rate is bytes of one range per second (len / time), for exchange too,
 * so the rates of a column compare the time of the same operation.
 *
 * Summary ratios, at 2 MB (one region), best variant against libc:
 *   ratio_exchange       exchange vs three memcpy, cold ranges (the case
 *                        of a region being swapped); ratio_exchange_hot is
 *                        the same with cached ranges.
 *   ratio_copy_cold      the better of copy_nt and copy_t vs memcpy, into
 *                        a cold destination.
 *
 * Usage: bench_xcopy [--quick] [--json]. --quick times fewer and shorter
 * runs; --json adds one JSON object with every rate as the last line.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "internal.h"

#define BX_KIB ((size_t)1 << 10)
#define BX_MIB ((size_t)1 << 20)
#define BX_POOL_SIZE ((size_t)1 << 30)    /* cold destinations */
#define BX_MAX_LEN (64 * BX_MIB)          /* largest size measured */
#define BX_SWAP_BUF (2 * BX_MIB)          /* three-memcpy temporary */
#define BX_RATIO_LEN (2 * BX_MIB)         /* size of the summary ratios */
#define BX_REP_BYTES (128 * BX_MIB)       /* bytes moved per timed run */
#define BX_REP_BYTES_QUICK (16 * BX_MIB)
#define BX_REPS 7                         /* timed runs; the median counts */
#define BX_REPS_QUICK 3
#define BX_FILL_BYTE 0x5A
#define BX_NS_PER_S 1e9
#define BX_BYTES_PER_GB 1e9

static const size_t bx_sizes[] = { 4 * BX_KIB, 64 * BX_KIB, 2 * BX_MIB,
				   64 * BX_MIB };
static const char *const bx_size_names[] = { "4K", "64K", "2M", "64M" };
#define BX_NSIZES (sizeof(bx_sizes) / sizeof(bx_sizes[0]))

enum bx_mode { BX_HOT, BX_COLD, BX_NMODES };
static const char *const bx_mode_names[] = { "hot", "cold" };

/* Indexed by enum exch_simd, for names of variants this CPU cannot run. */
static const struct xcopy_ops *const bx_all[] = {
	&xcopy_scalar_ops,
	&xcopy_sse2_ops,
	&xcopy_avx2_ops,
	&xcopy_avx512_ops,
};
#define BX_LEVELS (sizeof(bx_all) / sizeof(bx_all[0]))

/* One measured operation: exactly one of copy, exchange, zero is set. */
struct bx_kernel {
	const char *impl; /* variant name, or "libc" */
	const char *op;
	void (*copy)(void *dst, const void *src, size_t len);
	void (*exchange)(void *a, void *b, size_t len);
	void (*zero)(void *dst, size_t len);
	double gbps[BX_NSIZES][BX_NMODES];
};

#define BX_OPS_PER_VARIANT 5
#define BX_LIBC_OPS 3
#define BX_MAX_KERNELS (BX_LEVELS * BX_OPS_PER_VARIANT + BX_LIBC_OPS)

static struct bx_kernel bx_kernels[BX_MAX_KERNELS];
static unsigned bx_nkernels;

static unsigned char *bx_pool, *bx_src, *bx_hot_a, *bx_hot_b, *bx_swap;
static size_t bx_pool_cursor;

/* ---- libc baselines ---- */

static void bx_memcpy(void *dst, const void *src, size_t len)
{
	memcpy(dst, src, len);
}

static void bx_memset(void *dst, size_t len)
{
	memset(dst, 0, len);
}

static void bx_three_memcpy(void *a, void *b, size_t len)
{
	unsigned char *x = a, *y = b;

	for (size_t off = 0; off < len; off += BX_SWAP_BUF) {
		size_t n = len - off < BX_SWAP_BUF ? len - off : BX_SWAP_BUF;

		memcpy(bx_swap, x + off, n);
		memcpy(x + off, y + off, n);
		memcpy(y + off, bx_swap, n);
	}
}

/* ---- set-up ---- */

static void *bx_map(size_t size)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("bench_xcopy: mmap");
		exit(EXIT_FAILURE);
	}
	/* Hugepages as libexch regions get them; no error if THP is off. */
	madvise(p, size, MADV_HUGEPAGE);
	memset(p, BX_FILL_BYTE, size);
	return p;
}

static void bx_add(const char *impl, const char *op,
		   void (*copy)(void *, const void *, size_t),
		   void (*exchange)(void *, void *, size_t),
		   void (*zero)(void *, size_t))
{
	struct bx_kernel *k = &bx_kernels[bx_nkernels++];

	k->impl = impl;
	k->op = op;
	k->copy = copy;
	k->exchange = exchange;
	k->zero = zero;
}

static void bx_add_kernels(void)
{
	for (unsigned level = 0; level < BX_LEVELS; level++) {
		const struct xcopy_ops *ops = xcopy_variant((enum exch_simd)level);

		if (ops == NULL) {
			printf("skipping %s: not supported by this CPU\n",
			       bx_all[level]->name);
			continue;
		}
		bx_add(ops->name, "copy_t", ops->copy_t, NULL, NULL);
		bx_add(ops->name, "copy_nt", ops->copy_nt, NULL, NULL);
		bx_add(ops->name, "exchange", NULL, ops->exchange, NULL);
		bx_add(ops->name, "zero_t", NULL, NULL, ops->zero_t);
		bx_add(ops->name, "zero_nt", NULL, NULL, ops->zero_nt);
	}
	bx_add("libc", "memcpy", bx_memcpy, NULL, NULL);
	bx_add("libc", "3memcpy", NULL, bx_three_memcpy, NULL);
	bx_add("libc", "memset", NULL, NULL, bx_memset);
}

/* ---- measuring ---- */

static double bx_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / BX_NS_PER_S;
}

/* The next @len bytes of the pool, wrapping around. */
static unsigned char *bx_pool_next(size_t len)
{
	unsigned char *p;

	if (bx_pool_cursor + len > BX_POOL_SIZE)
		bx_pool_cursor = 0;
	p = bx_pool + bx_pool_cursor;
	bx_pool_cursor += len;
	return p;
}

/* Run @k @count times on @len bytes; seconds taken. */
static double bx_run(const struct bx_kernel *k, size_t len, enum bx_mode mode,
		     size_t count)
{
	double start = bx_now();

	for (size_t i = 0; i < count; i++) {
		unsigned char *a = mode == BX_COLD ? bx_pool_next(len) : bx_hot_a;

		if (k->copy)
			k->copy(a, bx_src, len);
		else if (k->zero)
			k->zero(a, len);
		else
			k->exchange(a, mode == BX_COLD ? bx_pool_next(len)
						       : bx_hot_b, len);
	}
	/* The stores are the result; keep the compiler from dropping them. */
	__asm__ volatile("" ::: "memory");
	return bx_now() - start;
}

static int bx_cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* Median rate in GB/s over @reps runs, after one untimed warm-up run. */
static double bx_measure(const struct bx_kernel *k, size_t len,
			 enum bx_mode mode, size_t rep_bytes, unsigned reps)
{
	size_t count = rep_bytes / len ? rep_bytes / len : 1;
	double rate[BX_REPS];

	bx_run(k, len, mode, count);
	for (unsigned r = 0; r < reps; r++)
		rate[r] = (double)(len * count) / bx_run(k, len, mode, count) /
			  BX_BYTES_PER_GB;
	qsort(rate, reps, sizeof(rate[0]), bx_cmp_double);
	return rate[reps / 2];
}

/* ---- reporting ---- */

static const struct bx_kernel *bx_find(const char *impl, const char *op)
{
	for (unsigned i = 0; i < bx_nkernels; i++)
		if (strcmp(bx_kernels[i].impl, impl) == 0 &&
		    strcmp(bx_kernels[i].op, op) == 0)
			return &bx_kernels[i];
	return NULL;
}

static size_t bx_size_index(size_t len)
{
	size_t i = 0;

	while (bx_sizes[i] != len)
		i++;
	return i;
}

/* Best rate of @op over the variants at @len and @mode; its kernel. */
static const struct bx_kernel *bx_best(const char *op, size_t len,
				       enum bx_mode mode)
{
	const struct bx_kernel *best = NULL;
	size_t s = bx_size_index(len);

	for (unsigned i = 0; i < bx_nkernels; i++) {
		const struct bx_kernel *k = &bx_kernels[i];

		if (strcmp(k->impl, "libc") == 0 || strcmp(k->op, op) != 0)
			continue;
		if (best == NULL || k->gbps[s][mode] > best->gbps[s][mode])
			best = k;
	}
	return best;
}

struct bx_summary {
	const struct bx_kernel *exchange_cold, *exchange_hot, *copy_cold;
	double ratio_exchange, ratio_exchange_hot, ratio_copy_cold;
};

static void bx_summarise(struct bx_summary *sum)
{
	size_t s = bx_size_index(BX_RATIO_LEN);
	const struct bx_kernel *swap3 = bx_find("libc", "3memcpy");
	const struct bx_kernel *mcpy = bx_find("libc", "memcpy");
	const struct bx_kernel *nt = bx_best("copy_nt", BX_RATIO_LEN, BX_COLD);
	const struct bx_kernel *t = bx_best("copy_t", BX_RATIO_LEN, BX_COLD);

	sum->exchange_cold = bx_best("exchange", BX_RATIO_LEN, BX_COLD);
	sum->exchange_hot = bx_best("exchange", BX_RATIO_LEN, BX_HOT);
	sum->copy_cold = nt->gbps[s][BX_COLD] >= t->gbps[s][BX_COLD] ? nt : t;
	sum->ratio_exchange = sum->exchange_cold->gbps[s][BX_COLD] /
			      swap3->gbps[s][BX_COLD];
	sum->ratio_exchange_hot = sum->exchange_hot->gbps[s][BX_HOT] /
				  swap3->gbps[s][BX_HOT];
	sum->ratio_copy_cold = sum->copy_cold->gbps[s][BX_COLD] /
			       mcpy->gbps[s][BX_COLD];
}

static void bx_print_table(const struct bx_summary *sum)
{
	printf("\n%-8s %-9s %-5s", "impl", "op", "dest");
	for (size_t s = 0; s < BX_NSIZES; s++)
		printf(" %8s", bx_size_names[s]);
	printf("   (GB/s of one range)\n");
	for (unsigned i = 0; i < bx_nkernels; i++)
		for (int m = 0; m < BX_NMODES; m++) {
			printf("%-8s %-9s %-5s", bx_kernels[i].impl,
			       bx_kernels[i].op, bx_mode_names[m]);
			for (size_t s = 0; s < BX_NSIZES; s++)
				printf(" %8.2f", bx_kernels[i].gbps[s][m]);
			printf("\n");
		}
	printf("\nat 2M: exchange (%s) vs three memcpy: %.2fx cold, %.2fx hot"
	       " (goal >= 2.0 cold)\n",
	       sum->exchange_cold->impl, sum->ratio_exchange,
	       sum->ratio_exchange_hot);
	printf("at 2M: %s %s vs memcpy into a cold destination: %.2fx"
	       " (goal >= 1.3)\n",
	       sum->copy_cold->impl, sum->copy_cold->op, sum->ratio_copy_cold);
}

static void bx_print_json(const struct bx_summary *sum, int quick)
{
	printf("{\"bench\":\"xcopy\",\"quick\":%s,\"unit\":\"GB/s\","
	       "\"ratio_exchange\":%.3f,\"ratio_exchange_hot\":%.3f,"
	       "\"ratio_copy_cold\":%.3f,\"best_exchange\":\"%s\","
	       "\"best_copy_cold\":\"%s %s\",\"sizes\":[",
	       quick ? "true" : "false", sum->ratio_exchange,
	       sum->ratio_exchange_hot, sum->ratio_copy_cold,
	       sum->exchange_cold->impl, sum->copy_cold->impl,
	       sum->copy_cold->op);
	for (size_t s = 0; s < BX_NSIZES; s++)
		printf("%s\"%s\"", s ? "," : "", bx_size_names[s]);
	printf("],\"gbps\":{");
	for (unsigned i = 0; i < bx_nkernels; i++) {
		const struct bx_kernel *k = &bx_kernels[i];
		bool new_impl = i == 0 ||
				strcmp(k->impl, bx_kernels[i - 1].impl) != 0;

		if (new_impl)
			printf("%s\"%s\":{", i ? "}," : "", k->impl);
		else
			printf(",");
		printf("\"%s\":{", k->op);
		for (int m = 0; m < BX_NMODES; m++) {
			printf("%s\"%s\":[", m ? "," : "", bx_mode_names[m]);
			for (size_t s = 0; s < BX_NSIZES; s++)
				printf("%s%.2f", s ? "," : "", k->gbps[s][m]);
			printf("]");
		}
		printf("}");
	}
	printf("}}}\n");
}

int main(int argc, char **argv)
{
	int quick = 0, json = 0;
	size_t rep_bytes;
	unsigned reps;
	struct bx_summary sum;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--quick") == 0) {
			quick = 1;
		} else if (strcmp(argv[i], "--json") == 0) {
			json = 1;
		} else {
			fprintf(stderr, "usage: %s [--quick] [--json]\n", argv[0]);
			return EXIT_FAILURE;
		}
	}
	rep_bytes = quick ? BX_REP_BYTES_QUICK : BX_REP_BYTES;
	reps = quick ? BX_REPS_QUICK : BX_REPS;
	printf("bench_xcopy: CPU level %s, in use %s, AUTO non-temporal from"
	       " %zu KiB; %s runs of %zu MiB, median of %u, cold pool %zu MiB\n",
	       xcopy_variant(xcopy_cpu_level())->name, xcopy_ops()->name,
	       xcopy_nt_threshold() / BX_KIB, quick ? "quick" : "full",
	       rep_bytes / BX_MIB, reps, BX_POOL_SIZE / BX_MIB);
	bx_add_kernels();
	bx_pool = bx_map(BX_POOL_SIZE);
	bx_src = bx_map(BX_MAX_LEN);
	bx_hot_a = bx_map(BX_MAX_LEN);
	bx_hot_b = bx_map(BX_MAX_LEN);
	bx_swap = bx_map(BX_SWAP_BUF);
	for (unsigned i = 0; i < bx_nkernels; i++)
		for (size_t s = 0; s < BX_NSIZES; s++)
			for (int m = 0; m < BX_NMODES; m++)
				bx_kernels[i].gbps[s][m] =
					bx_measure(&bx_kernels[i], bx_sizes[s],
						   (enum bx_mode)m, rep_bytes,
						   reps);
	bx_summarise(&sum);
	bx_print_table(&sum);
	if (json)
		bx_print_json(&sum, quick);
	return EXIT_SUCCESS;
}

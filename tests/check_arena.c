/*
 * check_arena.c - arenas, the page allocator, hugepage-first first touches.
 *
 * Lifecycle and every misuse case (each must return its documented -errno
 * and change nothing); allocation rules (alignment, zeroed and recycled
 * memory, a full arena); first touches really PMD-mapped, by PAGEMAP_SCAN
 * and by smaps; and many threads first-touching the same regions at once,
 * with every byte they wrote read back.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "helpers.h"

#define POOL_WAIT_MS 20000
#define TOUCH_THREADS 8

static struct exch_features feat;

/* ---- lifecycle and misuse ---- */

START_TEST(test_create_destroy)
{
	exch_arena_t *a;
	void *base;
	size_t size;

	ck_assert_int_eq(exch_arena_create(5 * MB, 0, &a), 0);
	ck_assert_int_eq(exch_arena_range(a, &base, &size), 0);
	ck_assert_uint_eq(size, 6 * MB); /* rounded up to regions */
	ck_assert_uint_eq((uintptr_t)base % REGION_SIZE, 0);
	ck_assert_uint_eq(th_stat("arenas_live"), 1);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
	ck_assert_uint_eq(th_stat("arenas_live"), 0);
}
END_TEST

START_TEST(test_create_misuse)
{
	exch_arena_t *a = (exch_arena_t *)0x1;

	ck_assert_int_eq(exch_arena_create(0, 0, &a), -EINVAL);
	ck_assert_int_eq(exch_arena_create(MB, 0, NULL), -EINVAL);
	ck_assert_int_eq(exch_arena_create(MB, 0x80, &a), -EINVAL);
	ck_assert_ptr_eq(a, (exch_arena_t *)0x1); /* untouched on error */
	ck_assert_uint_eq(th_stat("arenas_live"), 0);
	ck_assert_uint_eq(th_stat("misuse"), 3);
}
END_TEST

START_TEST(test_destroy_misuse)
{
	exch_arena_t *a;
	char not_an_arena[64];
	void *p;

	ck_assert_int_eq(exch_arena_destroy(NULL), -EINVAL);
	ck_assert_int_eq(exch_arena_destroy((exch_arena_t *)not_an_arena), -EINVAL);
	ck_assert_int_eq(exch_arena_create(4 * MB, 0, &a), 0);
	p = exch_alloc(a, 8192);
	ck_assert_ptr_nonnull(p);
	memset(p, 0x5a, 8192);
	ck_assert_int_eq(exch_arena_destroy(a), -EBUSY);
	/* still alive and intact */
	ck_assert_uint_eq(((unsigned char *)p)[8191], 0x5a);
	ck_assert_int_eq(exch_alloc_size(a, p), 8192);
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
	ck_assert_int_eq(exch_arena_destroy(a), -EINVAL); /* twice */
}
END_TEST

START_TEST(test_alloc_misuse)
{
	exch_arena_t *a;
	char *p;

	ck_assert_int_eq(exch_arena_create(4 * MB, 0, &a), 0);
	errno = 0;
	ck_assert_ptr_null(exch_alloc(a, 0));
	ck_assert_int_eq(errno, EINVAL);
	ck_assert_ptr_null(exch_alloc(NULL, 4096));
	ck_assert_int_eq(errno, EINVAL);
	ck_assert_ptr_null(exch_alloc(a, 5 * MB));
	ck_assert_int_eq(errno, ENOMEM);

	p = exch_alloc(a, 3 * 4096);
	ck_assert_ptr_nonnull(p);
	p[0] = 1;
	ck_assert_int_eq(exch_free(a, p + 4096), -EINVAL);   /* interior */
	ck_assert_int_eq(exch_free(a, p + 1), -EINVAL);      /* unaligned */
	ck_assert_int_eq(exch_free(a, &a), -EINVAL);         /* foreign */
	ck_assert_int_eq(exch_free(NULL, p), -EINVAL);
	ck_assert_int_eq(exch_alloc_size(a, p), 3 * 4096);  /* unchanged */
	ck_assert_int_eq(p[0], 1);
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_int_eq(exch_free(a, p), -EINVAL);          /* double free */
	ck_assert_int_eq(exch_alloc_size(a, p), -EINVAL);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
}
END_TEST

/* ---- allocator ---- */

START_TEST(test_alloc_alignment_and_zero)
{
	exch_arena_t *a;
	char *small, *big, *big2;

	ck_assert_int_eq(exch_arena_create(16 * MB, 0, &a), 0);
	small = exch_alloc(a, 100);
	big = exch_alloc(a, 2 * MB);
	big2 = exch_alloc(a, 3 * MB);
	ck_assert_ptr_nonnull(small);
	ck_assert_ptr_nonnull(big);
	ck_assert_ptr_nonnull(big2);
	ck_assert_uint_eq((uintptr_t)small % 4096, 0);
	ck_assert_uint_eq((uintptr_t)big % REGION_SIZE, 0);
	ck_assert_uint_eq((uintptr_t)big2 % REGION_SIZE, 0);
	ck_assert_int_eq(exch_alloc_size(a, small), 4096);
	ck_assert(exch_is_zero(small, 4096));
	ck_assert(exch_is_zero(big, 2 * MB));
	ck_assert(exch_is_zero(big2, 3 * MB));
	/* no overlap */
	ck_assert(big2 >= big + 2 * MB || big2 + 3 * MB <= big);
	ck_assert(small + 4096 <= big || small >= big + 2 * MB);
	ck_assert_int_eq(exch_free(a, small), 0);
	ck_assert_int_eq(exch_free(a, big), 0);
	ck_assert_int_eq(exch_free(a, big2), 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
}
END_TEST

/* Freed memory reads as zeros when it is handed out again. */
START_TEST(test_recycled_memory_is_zero)
{
	exch_arena_t *a;
	char *keep, *p, *q;

	ck_assert_int_eq(exch_arena_create(8 * MB, 0, &a), 0);
	keep = exch_alloc(a, 4096);  /* keeps region 0 in use */
	p = exch_alloc(a, 64 * 4096);
	ck_assert_ptr_nonnull(keep);
	ck_assert_ptr_nonnull(p);
	memset(keep, 1, 4096);
	memset(p, 0xff, 64 * 4096);
	ck_assert_int_eq(exch_free(a, p), 0);
	q = exch_alloc(a, 64 * 4096);
	ck_assert_ptr_eq(q, p); /* first fit reuses the hole */
	ck_assert(exch_is_zero(q, 64 * 4096));
	ck_assert_int_eq(keep[4095], 1);
	ck_assert_int_eq(exch_free(a, q), 0);

	/* a whole region freed and reused */
	p = exch_alloc(a, 4 * MB);
	ck_assert_ptr_nonnull(p);
	memset(p, 0xee, 4 * MB);
	ck_assert_int_eq(exch_free(a, p), 0);
	q = exch_alloc(a, 4 * MB);
	ck_assert_ptr_eq(q, p);
	ck_assert(exch_is_zero(q, 4 * MB));
	ck_assert_uint_ge(th_stat("regions_released"), 2);
	ck_assert_int_eq(exch_free(a, q), 0);
	ck_assert_int_eq(exch_free(a, keep), 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
}
END_TEST

START_TEST(test_arena_full)
{
	exch_arena_t *a;
	void *p[512];
	int n = 0;

	ck_assert_int_eq(exch_arena_create(2 * MB, 0, &a), 0);
	while (n < 512 && (p[n] = exch_alloc(a, 4096)))
		n++;
	ck_assert_int_eq(n, 512);
	errno = 0;
	ck_assert_ptr_null(exch_alloc(a, 4096));
	ck_assert_int_eq(errno, ENOMEM);
	ck_assert_uint_eq(th_stat("alloc_enomem"), 1);
	ck_assert_int_eq(exch_free(a, p[100]), 0);
	ck_assert_ptr_eq(exch_alloc(a, 4096), p[100]);
	for (int i = 0; i < n; i++)
		ck_assert_int_eq(exch_free(a, p[i]), 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
}
END_TEST

/* ---- hugepage-first ---- */

START_TEST(test_huge_first_pmd_mapped)
{
	const size_t len = 64 * MB;
	exch_arena_t *a;
	size_t resident, huge;
	char *p;

	ck_assert_int_eq(exch_arena_create(len, 0, &a), 0);
	ck_assert_int_eq(exch_pool_wait(POOL_WAIT_MS), 0);
	p = exch_alloc(a, len);
	ck_assert_ptr_nonnull(p);
	/* 32 regions, pool holds 32 frames: every first touch gets one */
	for (size_t off = 0; off < len; off += REGION_SIZE)
		p[off + 12345] = (char)(off >> 21);
	th_fill(p, len, 7);
	ck_assert_int_eq(th_verify(p, len, 7), -1);
	/*
	 * Every region got a frame. Rarely (seen under other processes'
	 * memory load) the kernel keeps the page table the fault allocated
	 * and splits the frame in the move; the service must then say so.
	 */
	uint64_t huge_regions = th_stat("faults_huge");
	ck_assert_uint_eq(huge_regions + th_stat("fallback_move_split"), len / REGION_SIZE);
	ck_assert_uint_eq(th_stat("fallback_pool_empty"), 0);
	ck_assert_int_eq(th_huge_bytes(p, len), (long)(huge_regions * REGION_SIZE));
	ck_assert_int_ge(th_smaps_huge_bytes(p), (long)(huge_regions * REGION_SIZE));
	ck_assert_int_eq(exch_arena_coverage(a, &resident, &huge), 0);
	ck_assert_uint_eq(resident, len);
	ck_assert_uint_eq(huge, huge_regions * REGION_SIZE);
	ck_assert_uint_eq(th_stat("resident_bytes"), len);
	ck_assert_uint_eq(th_stat("huge_bytes"), huge_regions * REGION_SIZE);
	ck_assert_uint_eq(th_stat("hugepage_coverage_pct"), huge_regions * REGION_SIZE * 100 / len);
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_int_eq(exch_arena_coverage(a, &resident, &huge), 0);
	ck_assert_uint_eq(resident, 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
}
END_TEST

/* A partial free inside a hugepage zeroes in place and keeps it huge. */
START_TEST(test_partial_free_keeps_huge)
{
	exch_arena_t *a;
	char *p, *q;

	ck_assert_int_eq(exch_arena_create(4 * MB, 0, &a), 0);
	ck_assert_int_eq(exch_pool_wait(POOL_WAIT_MS), 0);
	p = exch_alloc(a, 64 * 4096);
	q = exch_alloc(a, 64 * 4096);
	memset(p, 0xab, 64 * 4096);
	memset(q, 0xcd, 64 * 4096);
	ck_assert_uint_eq(th_stat("faults_huge") + th_stat("fallback_move_split"), 1);
	if (th_stat("faults_huge") == 1) {
		ck_assert_int_eq(th_huge_bytes(p, REGION_SIZE), (long)REGION_SIZE);
		ck_assert_int_eq(exch_free(a, q), 0);
		ck_assert_int_eq(th_huge_bytes(p, REGION_SIZE), (long)REGION_SIZE);
	} else {
		th_skip("hugepage kept on partial free", "the frame was split in the move");
		ck_assert_int_eq(exch_free(a, q), 0);
	}
	q = exch_alloc(a, 64 * 4096);
	ck_assert(exch_is_zero(q, 64 * 4096));
	ck_assert_uint_eq(((unsigned char *)p)[64 * 4096 - 1], 0xab);
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_int_eq(exch_free(a, q), 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
}
END_TEST

struct toucher {
	char *base;
	size_t len;
	int id;
};

/* Thread @id writes every TOUCH_THREADS-th page, so all threads first-touch
 * the same regions at the same time. */
static void *toucher_main(void *arg)
{
	struct toucher *t = arg;

	for (size_t off = (size_t)t->id * 4096; off < t->len; off += TOUCH_THREADS * 4096)
		th_fill(t->base + off, 4096, off);
	return NULL;
}

static void threads_first_touch(void)
{
	const size_t len = 256 * MB;
	pthread_t th[TOUCH_THREADS];
	struct toucher t[TOUCH_THREADS];
	exch_arena_t *a;
	char *p;

	ck_assert_int_eq(exch_arena_create(len, 0, &a), 0);
	exch_pool_wait(POOL_WAIT_MS);
	p = exch_alloc(a, len);
	ck_assert_ptr_nonnull(p);
	for (int i = 0; i < TOUCH_THREADS; i++) {
		t[i] = (struct toucher){ p, len, i };
		ck_assert_int_eq(pthread_create(&th[i], NULL, toucher_main, &t[i]), 0);
	}
	for (int i = 0; i < TOUCH_THREADS; i++)
		pthread_join(th[i], NULL);
	for (size_t off = 0; off < len; off += 4096)
		ck_assert_int_eq(th_verify(p + off, 4096, off), -1);
	/* each region's first fault took exactly one of the counted paths */
	ck_assert_uint_eq(th_stat("faults_huge") + th_stat("fallback_move_split") +
			  th_stat("fallback_move_failed") + th_stat("fallback_pool_empty") +
			  th_stat("fallback_frame_not_huge") + th_stat("fallback_huge_off"),
			  len / REGION_SIZE);
	ck_assert_uint_eq(th_stat("fault_errors"), 0);
	ck_assert_uint_eq(th_stat("empty_not_empty"), 0);
	ck_assert_int_eq(th_huge_bytes(p, len), (long)(th_stat("faults_huge") * REGION_SIZE));
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
}

START_TEST(test_threads_first_touch)
{
	threads_first_touch();
}
END_TEST

START_TEST(test_threads_first_touch_4_services)
{
	setenv("EXCH_FAULT_THREADS", "4", 1);
	threads_first_touch();
}
END_TEST

/* ---- locked memory ---- */

/* Does mlock() lock here? AddressSanitizer turns it into a no-op. A locked
 * page refuses MADV_DONTNEED with EINVAL. */
static bool mlock_works(void)
{
	char *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	bool locked;

	ck_assert_ptr_ne(p, MAP_FAILED);
	p[0] = 1;
	locked = mlock(p, 4096) == 0 && madvise(p, 4096, MADV_DONTNEED) < 0 && errno == EINVAL;
	munmap(p, 4096);
	if (!locked)
		th_skip("locked-memory test", "mlock() does not lock in this build (sanitizer)");
	return locked;
}

/* mlocked pages cannot be DONTNEED'd: a free must zero them in place. */
START_TEST(test_mlocked_free_reads_zero)
{
	exch_arena_t *a;
	char *keep, *p, *q;

	if (!mlock_works())
		return;
	ck_assert_int_eq(exch_arena_create(8 * MB, 0, &a), 0);
	keep = exch_alloc(a, 4096);
	p = exch_alloc(a, 64 * 4096);
	ck_assert_int_eq(mlock(p, 64 * 4096), 0);
	memset(p, 0x77, 64 * 4096);
	ck_assert_int_eq(exch_free(a, p), 0);
	q = exch_alloc(a, 64 * 4096);
	ck_assert_ptr_eq(q, p);
	ck_assert(exch_is_zero(q, 64 * 4096));
	ck_assert_int_eq(exch_free(a, q), 0);

	p = exch_alloc(a, 2 * MB); /* a whole region */
	ck_assert_int_eq(mlock(p, 2 * MB), 0);
	memset(p, 0x66, 2 * MB);
	ck_assert_int_eq(exch_free(a, p), 0);
	q = exch_alloc(a, 2 * MB);
	ck_assert_ptr_eq(q, p);
	ck_assert(exch_is_zero(q, 2 * MB));
	munlock(q, 2 * MB);
	munlock(keep, 4096);
	ck_assert_int_eq(exch_free(a, q), 0);
	ck_assert_int_eq(exch_free(a, keep), 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
}
END_TEST

/* Lock-on-fault memory: freeing zeroes what holds data and must not make
 * the untouched rest resident (and locked). */
START_TEST(test_mlock_onfault_free_stays_small)
{
	const size_t len = 64 * MB;
	exch_arena_t *a;
	char *p, *q;

	if (!mlock_works())
		return;
	ck_assert_int_eq(exch_arena_create(len, EXCH_ARENA_NOHUGE, &a), 0);
	p = exch_alloc(a, len);
	ck_assert_int_eq(mlock2(p, len, MLOCK_ONFAULT), 0);
	memset(p + 5 * MB, 0x55, 4096);
	ck_assert_int_eq(th_private_bytes(p, len), 4096);
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_int_le(th_private_bytes(p, len), 4096); /* zeroed, not more */
	q = exch_alloc(a, len);
	ck_assert_ptr_eq(q, p);
	ck_assert(exch_is_zero(q + 5 * MB, 4096));
	munlock(q, len);
	ck_assert_int_eq(exch_free(a, q), 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
}
END_TEST

/* Under mlockall(MCL_FUTURE) arenas arrive populated: no hugepage-first,
 * one warning, and memory still correct. */
START_TEST(test_mlockall_future)
{
	exch_arena_t *a;
	char *p, *q;

	uint64_t degraded;

	if (!mlock_works())
		return;
	ck_assert_int_eq(exch_init(), 0);
	degraded = th_stat("degraded");
	ck_assert_int_eq(mlockall(MCL_CURRENT | MCL_FUTURE), 0);
	ck_assert_int_eq(exch_arena_create(8 * MB, 0, &a), 0);
	ck_assert_uint_eq(th_stat("degraded"), degraded + 1);
	for (size_t i = 0; i < 4; i++) /* populated: no region may be EMPTY */
		ck_assert_uint_eq(((struct exch_arena *)a)->regions[i].state, REGION_SMALL);
	p = exch_alloc(a, 4 * MB);
	th_fill(p, 4 * MB, 51);
	ck_assert_int_eq(th_verify(p, 4 * MB, 51), -1);
	ck_assert_uint_eq(th_stat("faults_huge"), 0);
	ck_assert_int_eq(exch_free(a, p), 0);
	q = exch_alloc(a, 4 * MB);
	ck_assert(exch_is_zero(q, 4 * MB));
	ck_assert_int_eq(exch_free(a, q), 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
	munlockall();
}
END_TEST

/* Streams of small allocations keep regions of their own, so threads
 * allocating from different streams first-touch different regions. */
START_TEST(test_alloc_streams)
{
	const size_t blk = 64 * 1024, per_region = 2 * MB / blk;
	size_t c1 = SIZE_MAX, c2 = SIZE_MAX;
	exch_arena_t *a;
	char *first1, *first2, *p, *q;

	ck_assert_int_eq(exch_arena_create(6 * MB, EXCH_ARENA_NOHUGE, &a), 0);
	first1 = arena_alloc_stream(a, blk, &c1);
	first2 = arena_alloc_stream(a, blk, &c2);
	ck_assert_ptr_nonnull(first1);
	ck_assert_ptr_nonnull(first2);
	ck_assert_uint_ne((uintptr_t)first1 / (2 * MB), (uintptr_t)first2 / (2 * MB));
	/* Interleaved, each stream stays contiguous in its region. */
	for (size_t i = 1; i < per_region; i++) {
		p = arena_alloc_stream(a, blk, &c1);
		q = arena_alloc_stream(a, blk, &c2);
		ck_assert_ptr_eq(p, first1 + i * blk);
		ck_assert_ptr_eq(q, first2 + i * blk);
	}
	/* A region full, the stream takes a hole where data already is
	 * (stream 2's region, written), before an empty region. */
	memset(first2 + blk, 1, blk);
	ck_assert_int_eq(exch_free(a, first2 + blk), 0);
	p = arena_alloc_stream(a, blk, &c1);
	ck_assert_ptr_eq(p, first2 + blk);
	ck_assert(exch_is_zero(p, blk));
	/* No hole in a region with data: the last empty region. */
	p = arena_alloc_stream(a, blk, &c1);
	ck_assert_ptr_nonnull(p);
	ck_assert_uint_eq((uintptr_t)p % (2 * MB), 0);
	/* Nothing empty either: first fit, in a region never touched. */
	ck_assert_int_eq(exch_free(a, first1 + blk), 0);
	q = arena_alloc_stream(a, blk, &c2);
	ck_assert_ptr_eq(q, first1 + blk);
	ck_assert(exch_is_zero(q, blk));
	/* Large requests are exch_alloc's: 2 MB-aligned. */
	ck_assert_int_eq(exch_free(a, first1), 0);
	ck_assert_ptr_null(arena_alloc_stream(a, 4 * MB, &c1));
}
END_TEST

/* The preload's extent split and merge: the allocation bitmap follows,
 * the pages and their contents stay. */
START_TEST(test_split_merge)
{
	exch_arena_t *a;
	char *p, *q;

	ck_assert_int_eq(exch_arena_create(8 * MB, EXCH_ARENA_NOHUGE, &a), 0);
	p = exch_alloc(a, 8 * 4096);
	q = exch_alloc(a, 4096); /* a neighbour that must not be touched */
	ck_assert_ptr_nonnull(p);
	ck_assert_ptr_nonnull(q);
	th_fill(p, 8 * 4096, 5);
	th_fill(q, 4096, 6);
	ck_assert_int_eq(arena_split(a, p, 0), -EINVAL);
	ck_assert_int_eq(arena_split(a, p, 8 * 4096), -EINVAL);
	ck_assert_int_eq(arena_split(a, p, 100), -EINVAL);
	ck_assert_int_eq(arena_split(a, p + 4096, 4096), -EINVAL); /* not a start */
	ck_assert_int_eq(arena_split(a, p, 3 * 4096), 0);
	ck_assert_int_eq(exch_alloc_size(a, p), 3 * 4096);
	ck_assert_int_eq(exch_alloc_size(a, p + 3 * 4096), 5 * 4096);
	ck_assert_int_eq(th_verify(p, 8 * 4096, 5), -1);
	ck_assert_int_eq(arena_merge(a, p + 3 * 4096, p), -EINVAL); /* wrong order */
	ck_assert_int_eq(arena_merge(a, p, p + 3 * 4096), 0);
	ck_assert_int_eq(exch_alloc_size(a, p), 8 * 4096);
	ck_assert_int_eq(exch_alloc_size(a, p + 3 * 4096), -EINVAL);
	if (q == p + 8 * 4096) { /* adjacent: merged, and split again */
		ck_assert_int_eq(arena_merge(a, p, q), 0);
		ck_assert_int_eq(exch_alloc_size(a, p), 9 * 4096);
		ck_assert_int_eq(arena_split(a, p, 8 * 4096), 0);
	} else {
		ck_assert_int_eq(arena_merge(a, p, q), -EINVAL);
	}
	ck_assert_int_eq(exch_alloc_size(a, q), 4096);
	ck_assert_int_eq(arena_split(a, p, 3 * 4096), 0);
	ck_assert_int_eq(exch_free(a, p + 3 * 4096), 0); /* the second half alone */
	ck_assert_int_eq(th_verify(p, 3 * 4096, 5), -1);
	for (size_t i = 3 * 4096; i < 8 * 4096; i += 512)
		ck_assert_int_eq(p[i], 0); /* freed: zeros again */
	ck_assert_int_eq(th_verify(q, 4096, 6), -1);
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_int_eq(exch_free(a, q), 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
}
END_TEST

/* The preload's munmap: an allocation loses the part of it in the range
 * (split at the range's edges), the rest keeps its data, a range over
 * several allocations and holes frees each piece, and the freed pages
 * read zeros when allocated again. */
START_TEST(test_unmap_pieces)
{
	static char ref[8 * 4096];
	exch_arena_t *a;
	char *p, *q, *r;

	ck_assert_int_eq(exch_arena_create(8 * MB, EXCH_ARENA_NOHUGE, &a), 0);
	p = exch_alloc(a, 8 * 4096);
	q = exch_alloc(a, 4096);
	ck_assert_ptr_nonnull(p);
	ck_assert_ptr_nonnull(q);
	th_fill(p, 8 * 4096, 5);
	th_fill(q, 4096, 6);
	memcpy(ref, p, sizeof(ref));
	ck_assert_int_eq(arena_unmap(a, p + 1, 4096), -EINVAL);      /* not page-aligned */
	ck_assert_int_eq(arena_unmap(a, p, 0), -EINVAL);
	ck_assert_int_eq(arena_unmap(a, p, 9 * MB), -EINVAL);        /* past the arena */
	ck_assert_int_eq(arena_unmap(a, p, 2 * 4096), 1);            /* the head */
	ck_assert_int_eq(exch_alloc_size(a, p), -EINVAL);
	ck_assert_int_eq(exch_alloc_size(a, p + 2 * 4096), 6 * 4096);
	ck_assert_int_eq(arena_unmap(a, p + 6 * 4096, 4096 + 1), 1); /* the tail, rounded up */
	ck_assert_int_eq(exch_alloc_size(a, p + 2 * 4096), 4 * 4096);
	ck_assert(!memcmp(p + 2 * 4096, ref + 2 * 4096, 4 * 4096));
	ck_assert_int_eq(arena_unmap(a, p + 3 * 4096, 4096), 1);     /* a hole in the middle */
	ck_assert_int_eq(exch_alloc_size(a, p + 2 * 4096), 4096);
	ck_assert_int_eq(exch_alloc_size(a, p + 4 * 4096), 2 * 4096);
	ck_assert(!memcmp(p + 2 * 4096, ref + 2 * 4096, 4096));
	ck_assert(!memcmp(p + 4 * 4096, ref + 4 * 4096, 2 * 4096));
	ck_assert_int_eq(arena_unmap(a, p, 8 * 4096), 2);            /* both pieces, holes around */
	ck_assert_int_eq(th_verify(q, 4096, 6), -1);                 /* the neighbour stays */
	ck_assert_int_eq(arena_unmap(a, p, 8 * 4096), 0);            /* nothing left there */
	r = exch_alloc(a, 8 * 4096);
	ck_assert_ptr_eq(r, p); /* the pages are free again, and read zeros */
	for (size_t i = 0; i < 8 * 4096; i += 512)
		ck_assert_int_eq(r[i], 0);
	ck_assert_int_eq(exch_free(a, r), 0);
	ck_assert_int_eq(exch_free(a, q), 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
}
END_TEST

static Suite *arena_suite(void)
{
	Suite *s = suite_create("arena");
	TCase *tc = tcase_create("lifecycle");

	tcase_add_test(tc, test_create_destroy);
	tcase_add_test(tc, test_create_misuse);
	tcase_add_test(tc, test_destroy_misuse);
	tcase_add_test(tc, test_alloc_misuse);
	tcase_add_test(tc, test_alloc_alignment_and_zero);
	tcase_add_test(tc, test_recycled_memory_is_zero);
	tcase_add_test(tc, test_arena_full);
	tcase_add_test(tc, test_split_merge);
	tcase_add_test(tc, test_unmap_pieces);
	tcase_add_test(tc, test_alloc_streams);
	suite_add_tcase(s, tc);

	tc = tcase_create("huge_first");
	tcase_set_timeout(tc, 120);
	if (feat.on & EXCH_ON_HUGE_FIRST) {
		tcase_add_test(tc, test_huge_first_pmd_mapped);
		tcase_add_test(tc, test_partial_free_keeps_huge);
	} else {
		th_skip("huge_first tests", "hugepage-first is off (see exch_features_print)");
	}
	tcase_add_test(tc, test_threads_first_touch);
	tcase_add_test(tc, test_threads_first_touch_4_services);
	suite_add_tcase(s, tc);

	tc = tcase_create("locked");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_mlocked_free_reads_zero);
	tcase_add_test(tc, test_mlock_onfault_free_stays_small);
	tcase_add_test(tc, test_mlockall_future);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return th_main(&feat, arena_suite);
}

/*
 * check_capture.c - freed hugepages kept and used again.
 *
 * A whole region freed while it is one hugepage goes into the pool as a
 * captured frame, still holding the freed data. The tests check that the
 * data never shows through: a coalesce into a captured frame zeroes the
 * holes, a first touch served with one reads zeros, and a region freed and
 * allocated again reads zeros.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

#define POOL_WAIT_MS 20000
#define PAGE 4096ul
#define OLD_BYTE 0xa5
#define HOLES 40         /* unwritten pages of a coalesced region */
#define DRAIN_MAX 1024
#define DRAIN_POLL_US 1000

static struct exch_features feat;

/* An arena of twice @len whose first @len bytes are hugepages full of
 * OLD_BYTE. */
static char *huge_filled(exch_arena_t **a, size_t len)
{
	char *p;

	ck_assert_int_eq(exch_pool_wait(POOL_WAIT_MS), 0);
	ck_assert_int_eq(exch_arena_create(2 * len, 0, a), 0);
	p = exch_alloc(*a, len);
	ck_assert_ptr_nonnull(p);
	memset(p, OLD_BYTE, len);
	th_make_huge(*a, p, len);
	return p;
}

/* Takes every zeroed frame out of the pool, including those the refill
 * thread is still preparing (until all EXCH_POOL_FRAMES slots are held
 * here); returns how many. */
static int drain(void **frames)
{
	int n = 0, slots = (int)opt_get(OPT_POOL_FRAMES);

	while (n < DRAIN_MAX && n < slots) {
		if (th_stat("pool_frames_ready") && pool_take(0, &frames[n]) == 0)
			n++;
		else
			usleep(DRAIN_POLL_US);
	}
	return n;
}

START_TEST(test_capture_on_free)
{
	exch_arena_t *a;
	char *p = huge_filled(&a, 4 * MB);

	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_uint_eq(th_stat("captures"), 2);
	ck_assert_uint_eq(th_stat("captured_frames"), 2);
	ck_assert_int_eq(th_private_bytes(p, 4 * MB), 0); /* moved out */
	/* Allocated again, the memory reads as zeros, as hugepages. */
	p = exch_alloc(a, 4 * MB);
	ck_assert_ptr_nonnull(p);
	ck_assert(exch_is_zero(p, 4 * MB));
	ck_assert_int_eq(th_huge_bytes(p, 4 * MB), (long)(4 * MB));
}
END_TEST

/* A partly written region coalesced into a captured frame: the holes read
 * zeros, not the freed data the frame held. */
START_TEST(test_capture_used_by_coalesce)
{
	struct exch_coalesce_report rep;
	exch_arena_t *a, *small;
	char *old = huge_filled(&a, 2 * MB), *p, *expect = malloc(2 * MB);

	ck_assert_int_eq(exch_free(a, old), 0);
	ck_assert_uint_eq(th_stat("captured_frames"), 1);
	ck_assert_int_eq(exch_arena_create(2 * MB, EXCH_ARENA_NOHUGE, &small), 0);
	p = exch_alloc(small, 2 * MB);
	th_fill(p, 2 * MB, 91);
	/* Holes: pages given back (zero on read, not present). */
	ck_assert_int_eq(madvise(p + 100 * PAGE, HOLES * PAGE, MADV_DONTNEED), 0);
	ck_assert_int_eq(th_private_bytes(p, 2 * MB), (long)(2 * MB - HOLES * PAGE));
	memcpy(expect, p, 2 * MB);

	ck_assert_int_eq(exch_coalesce(small, p, 2 * MB, EXCH_NOWAIT, &rep), 0);
	ck_assert_uint_eq(rep.coalesced, 1);
	ck_assert_uint_eq(rep.captured_used, 1);
	ck_assert_uint_eq(rep.bytes_copied, 2 * MB - HOLES * PAGE);
	ck_assert_uint_eq(th_stat("capture_coalesced"), 1);
	ck_assert_uint_eq(th_stat("captured_frames"), 0);
	ck_assert_int_eq(th_huge_bytes(p, 2 * MB), (long)(2 * MB));
	ck_assert(exch_is_zero(p + 100 * PAGE, HOLES * PAGE));
	ck_assert_mem_eq(p, expect, 2 * MB);
	free(expect);
}
END_TEST

/* With no zeroed frame left, a first touch gets a captured frame, zeroed. */
START_TEST(test_capture_serves_first_touch)
{
	void **frames = calloc(DRAIN_MAX, sizeof(*frames));
	exch_arena_t *a;
	char *old = huge_filled(&a, 2 * MB), *p;
	int n;

	p = exch_alloc(a, 2 * MB); /* a second, untouched region */
	ck_assert_ptr_nonnull(p);
	ck_assert_int_eq(exch_free(a, old), 0);
	ck_assert_uint_eq(th_stat("captured_frames"), 1);
	n = drain(frames);
	p[12345] = 1;
	ck_assert_uint_eq(th_stat("capture_zeroed"), 1);
	ck_assert_int_eq(th_huge_bytes(p, 2 * MB), (long)(2 * MB));
	ck_assert(exch_is_zero(p, 12345));
	ck_assert(exch_is_zero(p + 12346, 2 * MB - 12346));
	for (int i = 0; i < n; i++)
		pool_put_back(frames[i]);
	free(frames);
}
END_TEST

/* A full capture area: the rest goes back to the kernel. */
START_TEST(test_capture_cap)
{
	exch_arena_t *a;
	char *p;

	setenv("EXCH_CAPTURE_FRAMES", "1", 1);
	p = huge_filled(&a, 6 * MB);
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_uint_eq(th_stat("captures"), 1);
	ck_assert_uint_eq(th_stat("captured_frames"), 1);
	ck_assert_uint_eq(th_stat("regions_released"), 3);
	ck_assert_int_eq(th_private_bytes(p, 6 * MB), 0);
}
END_TEST

START_TEST(test_capture_off)
{
	exch_arena_t *a;
	char *p;

	setenv("EXCH_CAPTURE_FRAMES", "0", 1);
	p = huge_filled(&a, 2 * MB);
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_uint_eq(th_stat("captures"), 0);
	ck_assert_int_eq(th_private_bytes(p, 2 * MB), 0);
}
END_TEST

/* Part of a hugepage freed: it is zeroed in place, not captured. */
START_TEST(test_capture_needs_whole_region)
{
	exch_arena_t *a;
	char *p, *q;

	ck_assert_int_eq(exch_pool_wait(POOL_WAIT_MS), 0);
	ck_assert_int_eq(exch_arena_create(2 * MB, 0, &a), 0);
	p = exch_alloc(a, MB);
	q = exch_alloc(a, MB);
	memset(p, OLD_BYTE, MB);
	memset(q, OLD_BYTE, MB);
	th_make_huge(a, p, 2 * MB);
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_uint_eq(th_stat("captures"), 0);
	ck_assert(exch_is_zero(p, MB));
	ck_assert_int_eq(th_huge_bytes(p, 2 * MB), (long)(2 * MB));
	ck_assert_int_eq(exch_free(a, q), 0); /* now the region is whole */
	ck_assert_uint_eq(th_stat("captures"), 1);
}
END_TEST

/* A fork child has no capture area: its frees give memory back. The
 * parent's hugepage, shared with the child once, cannot be moved (it is no
 * longer exclusive): the parent gives it back too. */
START_TEST(test_capture_in_fork_child)
{
	exch_arena_t *a;
	char *p = huge_filled(&a, 2 * MB);
	int status;
	pid_t pid = fork();

	if (pid == 0) {
		if (exch_free(a, p) != 0 || th_private_bytes(p, 2 * MB) != 0)
			_exit(1);
		p = exch_alloc(a, 2 * MB);
		_exit(p && exch_is_zero(p, 2 * MB) ? 0 : 2);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	for (size_t i = 0; i < 2 * MB; i++)
		if ((unsigned char)p[i] != OLD_BYTE)
			ck_abort_msg("parent's byte %zu changed", i);
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_uint_eq(th_stat("captures"), 0);
	ck_assert_uint_eq(th_stat("regions_released"), 1);
	ck_assert_int_eq(th_private_bytes(p, 2 * MB), 0);
	ck_assert_uint_eq(th_stat("captured_frames"), 0);
}
END_TEST

/* Polls the counter @name until it is @want, up to @ms; its last value. */
static uint64_t stat_becomes(const char *name, uint64_t want, unsigned ms)
{
	uint64_t v = th_stat(name);

	for (unsigned t = 0; v != want && t < ms; t += 10) {
		usleep(10000);
		v = th_stat(name);
	}
	return v;
}

/* Idle for EXCH_POOL_DECAY_MS, the pool gives back the frames it grew by
 * and the captured ones; the next first touches still get hugepages. */
START_TEST(test_capture_decay)
{
	const size_t len = 16 * MB;
	uint64_t grown, captured;
	exch_arena_t *a;
	char *p;

	setenv("EXCH_POOL_START", "2", 1);
	setenv("EXCH_POOL_FRAMES", "8", 1);
	setenv("EXCH_POOL_DECAY_MS", "1000", 1);
	ck_assert_int_eq(exch_pool_wait(POOL_WAIT_MS), 0);
	ck_assert_int_eq(exch_arena_create(2 * len, 0, &a), 0);
	p = exch_alloc(a, len);
	ck_assert_ptr_nonnull(p);
	memset(p, OLD_BYTE, len); /* first touches drain the pool: it grows */
	ck_assert_int_eq(exch_pool_wait(POOL_WAIT_MS), 0);
	grown = pool_resident_bytes() / REGION_SIZE;
	ck_assert_uint_gt(grown, 2);
	ck_assert_uint_ge(th_stat("pool_grows"), 1);
	ck_assert_int_eq(exch_free(a, p), 0);
	captured = th_stat("captured_frames");
	ck_assert_uint_gt(captured, 0);
	/* Idle: what it grew by and what it captured go back. */
	ck_assert_uint_eq(stat_becomes("captured_frames", 0, 10000), 0);
	ck_assert_uint_eq(stat_becomes("pool_frames_ready", 2, 10000), 2);
	ck_assert_uint_eq(th_stat("pool_decayed"), grown - 2 + captured);
	ck_assert_uint_eq(pool_resident_bytes(), 2 * REGION_SIZE);
	/* Again, first touches read zeros and get hugepages. */
	p = exch_alloc(a, 4 * MB);
	ck_assert_ptr_nonnull(p);
	ck_assert(exch_is_zero(p, 4 * MB));
	memset(p, 1, 2 * MB);
	ck_assert_int_eq(th_huge_bytes(p, 2 * MB), (long)(2 * MB));
}
END_TEST

/* A pool that never grew still gives its captured frames back. */
START_TEST(test_capture_decay_without_growth)
{
	exch_arena_t *a;
	char *p;

	setenv("EXCH_POOL_DECAY_MS", "300", 1);
	p = huge_filled(&a, 4 * MB);
	ck_assert_uint_eq(th_stat("pool_grows"), 0);
	/* Full, nothing to decay: the refill thread waits for a signal. */
	ck_assert_int_eq(exch_pool_wait(POOL_WAIT_MS), 0);
	usleep(100000);
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_uint_eq(th_stat("captured_frames"), 2);
	ck_assert_uint_eq(stat_becomes("captured_frames", 0, 10000), 0);
	ck_assert_uint_eq(th_stat("pool_decayed"), 2);
	ck_assert_int_eq(th_private_bytes(p, 4 * MB), 0);
}
END_TEST

static Suite *capture_suite(void)
{
	Suite *s = suite_create("capture");
	TCase *tc = tcase_create("capture");

	tcase_set_timeout(tc, 60);
	if (!(feat.on & EXCH_ON_HUGE_FIRST) || !(feat.have & EXCH_HAVE_PAGEMAP_SCAN)) {
		th_skip("capture tests", "needs UFFDIO_MOVE, THP and PAGEMAP_SCAN");
		return s;
	}
	tcase_add_test(tc, test_capture_on_free);
	tcase_add_test(tc, test_capture_used_by_coalesce);
	tcase_add_test(tc, test_capture_serves_first_touch);
	tcase_add_test(tc, test_capture_cap);
	tcase_add_test(tc, test_capture_off);
	tcase_add_test(tc, test_capture_needs_whole_region);
	tcase_add_test(tc, test_capture_in_fork_child);
	tcase_add_test(tc, test_capture_decay);
	tcase_add_test(tc, test_capture_decay_without_growth);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return th_main(&feat, capture_suite);
}

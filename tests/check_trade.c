/*
 * check_trade.c - coalescing when no frame can be had: trading frames.
 *
 * The pool is made to act empty (pool_inject_empty: no frame, none
 * captured, as when the kernel has no THP to give). A region whose first
 * touch then finds no frame is 4K pages; a region touched before is a
 * hugepage. With heat tracking armed, the hot 4K region trades contents
 * with a cold hugepage region: the tests check both regions' bytes, which
 * one is PMD-mapped after, and that a region written meanwhile is not
 * taken as cold. exch_exchange_pages() does the same swap of backings on
 * the application's request.
 */
#include "config.h"

#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

#define PAGE 4096ul
#define HOLES 20
#define DEADLINE_S 60
#define POLL_US 10000
#define FAST_MBPS 4000
#define FAST_MS 20
#define EXCHANGES 20

static struct exch_features feat;

/* Region 0 of a new arena: a hugepage holding seed @cold; region 1: 4K
 * pages holding seed @hot (its first touch found the pool empty). The pool
 * stays empty. */
static char *cold_and_hot(exch_arena_t **a, uint64_t cold, uint64_t hot)
{
	char *p;

	ck_assert_int_eq(exch_pool_wait(TH_POOL_WAIT_MS), 0);
	ck_assert_int_eq(exch_arena_create(4 * MB, 0, a), 0);
	p = exch_alloc(*a, 4 * MB);
	ck_assert_ptr_nonnull(p);
	th_fill(p, 2 * MB, cold);
	th_make_huge(*a, p, 2 * MB);
	pool_inject_empty(true);
	th_fill(p + 2 * MB, 2 * MB, hot);
	ck_assert_int_eq(th_huge_bytes(p + 2 * MB, 2 * MB), 0);
	return p;
}

static void arm(void)
{
	coalesce_lock();
	scan_arm_heat();
	coalesce_unlock();
}

START_TEST(test_trade_hot_for_cold)
{
	struct exch_coalesce_report rep;
	exch_arena_t *a;
	char *p = cold_and_hot(&a, 111, 112);

	arm();
	th_fill(p + 2 * MB, 2 * MB, 113); /* written since: hot */
	ck_assert_uint_ge(th_stat("faults_wp"), 1);
	ck_assert_int_eq(exch_coalesce(a, p + 2 * MB, 2 * MB, EXCH_NOWAIT, &rep), 0);
	ck_assert_uint_eq(rep.coalesced, 1);
	ck_assert_uint_eq(rep.traded, 1);
	ck_assert_uint_eq(th_stat("trades"), 1);
	ck_assert_int_eq(th_huge_bytes(p + 2 * MB, 2 * MB), (long)(2 * MB));
	ck_assert_int_eq(th_huge_bytes(p, 2 * MB), 0); /* the cold one is 4K now */
	ck_assert_int_eq(th_verify(p, 2 * MB, 111), -1);
	ck_assert_int_eq(th_verify(p + 2 * MB, 2 * MB, 113), -1);
	/* Both still writable and coherent after. */
	th_fill(p, 4 * MB, 114);
	ck_assert_int_eq(th_verify(p, 4 * MB, 114), -1);
	pool_inject_empty(false);
}
END_TEST

/* Holes of the hot region read zeros after; the cold data is all kept. */
START_TEST(test_trade_with_holes)
{
	struct exch_coalesce_report rep;
	exch_arena_t *a;
	char *p = cold_and_hot(&a, 115, 116), *hot = p + 2 * MB;
	char *expect = malloc(2 * MB);

	ck_assert_int_eq(madvise(hot + 300 * PAGE, HOLES * PAGE, MADV_DONTNEED), 0);
	arm();
	hot[0] ^= 1;
	hot[0] ^= 1; /* a write: hot */
	memcpy(expect, hot, 2 * MB);
	ck_assert_int_eq(exch_coalesce(a, hot, 2 * MB, EXCH_NOWAIT, &rep), 0);
	ck_assert_uint_eq(rep.traded, 1);
	ck_assert_int_eq(th_huge_bytes(hot, 2 * MB), (long)(2 * MB));
	ck_assert(exch_is_zero(hot + 300 * PAGE, HOLES * PAGE));
	ck_assert_mem_eq(hot, expect, 2 * MB);
	ck_assert_int_eq(th_verify(p, 2 * MB, 115), -1);
	free(expect);
	pool_inject_empty(false);
}
END_TEST

/* A hugepage region written since arming is hot: no partner, no trade. */
START_TEST(test_trade_needs_cold_partner)
{
	struct exch_coalesce_report rep;
	exch_arena_t *a;
	char *p = cold_and_hot(&a, 117, 118), was = p[PAGE];

	arm();
	p[PAGE] = 7; /* the hugepage region is written: hot */
	ck_assert_int_eq(th_huge_bytes(p, 2 * MB), (long)(2 * MB)); /* unprotect kept it whole */
	ck_assert_int_eq(exch_coalesce(a, p + 2 * MB, 2 * MB, EXCH_NOWAIT, &rep), 0);
	ck_assert_uint_eq(rep.coalesced, 0);
	ck_assert_uint_eq(rep.skipped_no_frame, 1);
	ck_assert_int_eq(th_huge_bytes(p, 2 * MB), (long)(2 * MB));
	ck_assert_int_eq(th_verify(p + 2 * MB, 2 * MB, 118), -1);
	p[PAGE] = was;
	ck_assert_int_eq(th_verify(p, 2 * MB, 117), -1);
	pool_inject_empty(false);
}
END_TEST

static int decline(void *addr, size_t len, enum exch_pin_event ev, void *arg)
{
	(void)addr;
	(void)len;
	if (ev == EXCH_PIN_MOVE_BEGIN)
		(*(int *)arg)++;
	return -1;
}

/* A cold partner whose pin's owner declines is not traded away. */
START_TEST(test_trade_asks_partner_pins)
{
	struct exch_coalesce_report rep;
	exch_arena_t *a;
	char *p = cold_and_hot(&a, 123, 124);
	int asked = 0;

	ck_assert_int_eq(exch_pin(p + 100, 10, decline, &asked), 0);
	arm();
	p[2 * MB] ^= 0; /* a write: hot */
	ck_assert_int_eq(exch_coalesce(a, p + 2 * MB, 2 * MB, EXCH_NOWAIT, &rep), 0);
	ck_assert_int_eq(asked, 1);
	ck_assert_uint_eq(rep.traded, 0);
	ck_assert_uint_eq(rep.skipped_no_frame, 1);
	ck_assert_int_eq(th_huge_bytes(p, 2 * MB), (long)(2 * MB));
	ck_assert_int_eq(th_verify(p, 2 * MB, 123), -1);
	ck_assert_int_eq(th_verify(p + 2 * MB, 2 * MB, 124), -1);
	pool_inject_empty(false);
}
END_TEST

/* An arena whose registration is gone is plain memory: nothing may move
 * it, because nothing would keep its threads off a region in transit. */
START_TEST(test_plain_arena_is_not_moved)
{
	exch_arena_t *a;
	char *p = th_small_pages(&a, 4 * MB, 125), *q;
	struct exch_arena *ar = a;

	ck_assert_int_eq(prim_uffd_unregister(lib.uffd, ar->base, ar->size), 0);
	ar->registered = false;
	q = p + 2 * MB;
	ck_assert_int_eq(exch_coalesce(a, p, 4 * MB, EXCH_NOWAIT, NULL), -EOPNOTSUPP);
	ck_assert_int_eq(exch_exchange_pages(p, q, 2 * MB), -EOPNOTSUPP);
	ck_assert_int_eq(exch_coalescer_start(FAST_MBPS, FAST_MS), 0);
	while (th_stat("scan_passes") < 5)
		usleep(POLL_US);
	ck_assert_int_eq(exch_coalescer_stop(), 0);
	ck_assert_int_eq(th_huge_bytes(p, 4 * MB), 0);
	ck_assert_uint_eq(th_stat("scratch_leftover_pages"), 0);
	ck_assert_int_eq(th_verify(p, 4 * MB, 125), -1);
}
END_TEST

/* Without arming, heat is unknown: nothing is taken as cold. */
START_TEST(test_trade_needs_tracking)
{
	struct exch_coalesce_report rep;
	exch_arena_t *a;
	char *p = cold_and_hot(&a, 119, 120);

	ck_assert_int_eq(exch_coalesce(a, p + 2 * MB, 2 * MB, EXCH_NOWAIT, &rep), 0);
	ck_assert_uint_eq(rep.skipped_no_frame, 1);
	ck_assert_uint_eq(rep.traded, 0);
	ck_assert_int_eq(th_verify(p, 2 * MB, 119), -1);
	ck_assert_int_eq(th_verify(p + 2 * MB, 2 * MB, 120), -1);
	pool_inject_empty(false);
}
END_TEST

struct toucher {
	char *p;
	size_t len;
	_Atomic int stop;
	_Atomic long rounds;
};

/* Increments one byte per page of the hot region until told to stop. */
static void *toucher_main(void *arg)
{
	struct toucher *t = arg;

	while (!atomic_load(&t->stop)) {
		for (size_t off = 0; off < t->len; off += PAGE)
			t->p[off]++;
		atomic_fetch_add(&t->rounds, 1);
	}
	return NULL;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The background coalescer arms tracking itself when frames are scarce
 * and trades while a thread keeps writing the hot region. */
START_TEST(test_trade_in_background)
{
	exch_arena_t *a;
	char *p = cold_and_hot(&a, 121, 122), *hot = p + 2 * MB;
	struct toucher t = { .p = hot, .len = 2 * MB };
	double end = now_s() + DEADLINE_S;
	pthread_t th;
	long rounds;

	memset(hot, 0, 2 * MB);
	ck_assert_int_eq(pthread_create(&th, NULL, toucher_main, &t), 0);
	ck_assert_int_eq(exch_coalescer_start(FAST_MBPS, FAST_MS), 0);
	while (th_huge_bytes(hot, 2 * MB) != (long)(2 * MB) && now_s() < end)
		usleep(POLL_US);
	atomic_store(&t.stop, 1);
	pthread_join(th, NULL);
	ck_assert_int_eq(exch_coalescer_stop(), 0);
	ck_assert_int_eq(th_huge_bytes(hot, 2 * MB), (long)(2 * MB));
	ck_assert_uint_ge(th_stat("heat_armed"), 1);
	ck_assert_uint_ge(th_stat("scan_traded"), 1);
	rounds = atomic_load(&t.rounds);
	for (size_t off = 0; off < 2 * MB; off += PAGE)
		ck_assert_int_eq((unsigned char)hot[off], (unsigned char)rounds);
	ck_assert_int_eq(th_verify(p, 2 * MB, 121), -1);
	pool_inject_empty(false);
}
END_TEST

/* ---- exch_exchange_pages ---- */

START_TEST(test_exchange_pages_keeps_data)
{
	exch_arena_t *a;
	char *p = cold_and_hot(&a, 131, 132);

	pool_inject_empty(false);
	ck_assert_int_eq(exch_exchange_pages(p + 2 * MB, p, 2 * MB), 0);
	ck_assert_int_eq(th_huge_bytes(p + 2 * MB, 2 * MB), (long)(2 * MB));
	ck_assert_int_eq(th_huge_bytes(p, 2 * MB), 0);
	ck_assert_int_eq(th_verify(p, 2 * MB, 131), -1);
	ck_assert_int_eq(th_verify(p + 2 * MB, 2 * MB, 132), -1);
	ck_assert_uint_eq(th_stat("pages_exchanged"), 512);
	/* and back */
	ck_assert_int_eq(exch_exchange_pages(p, p + 2 * MB, 2 * MB), 0);
	ck_assert_int_eq(th_huge_bytes(p, 2 * MB), (long)(2 * MB));
	ck_assert_int_eq(th_verify(p, 2 * MB, 131), -1);
	ck_assert_int_eq(th_verify(p + 2 * MB, 2 * MB, 132), -1);
}
END_TEST

/* Two arenas, two regions each: a 4K range takes a hugepage range's frames. */
START_TEST(test_exchange_pages_across_arenas)
{
	exch_arena_t *small, *huge;
	char *s = th_small_pages(&small, 4 * MB, 133), *h;

	ck_assert_int_eq(exch_arena_create(4 * MB, 0, &huge), 0);
	h = exch_alloc(huge, 4 * MB);
	th_fill(h, 4 * MB, 134);
	th_make_huge(huge, h, 4 * MB);
	ck_assert_int_eq(exch_exchange_pages(s, h, 4 * MB), 0);
	ck_assert_int_eq(th_huge_bytes(s, 4 * MB), (long)(4 * MB));
	ck_assert_int_eq(th_huge_bytes(h, 4 * MB), 0);
	ck_assert_int_eq(th_verify(s, 4 * MB, 133), -1);
	ck_assert_int_eq(th_verify(h, 4 * MB, 134), -1);
}
END_TEST

START_TEST(test_exchange_pages_misuse)
{
	exch_arena_t *a;
	char *p = th_written(&a, 8 * MB, 135), other[64];

	ck_assert_int_eq(exch_exchange_pages(p, p + 2 * MB, 0), -EINVAL);
	ck_assert_int_eq(exch_exchange_pages(p + 4096, p + 4 * MB, 2 * MB), -EINVAL);
	ck_assert_int_eq(exch_exchange_pages(p, p + 4 * MB, MB), -EINVAL);
	ck_assert_int_eq(exch_exchange_pages(p, p + 2 * MB, 4 * MB), -EINVAL); /* overlap */
	ck_assert_int_eq(exch_exchange_pages(p, other, 2 * MB), -EINVAL);
	ck_assert_int_eq(exch_exchange_pages(p, p + 6 * MB, 4 * MB), -EINVAL); /* past the end */
	ck_assert_int_eq(exch_exchange_pages(p, p, 4 * MB), 0);
	ck_assert_int_eq(th_verify(p, 8 * MB, 135), -1);
}
END_TEST

/* The second pair is pinned: the first, already swapped, is swapped back. */
START_TEST(test_exchange_pages_busy_changes_nothing)
{
	struct io_uring ring;
	struct iovec iov;
	exch_arena_t *small, *huge;
	char *s = th_small_pages(&small, 4 * MB, 136), *h;

	ck_assert_int_eq(exch_arena_create(4 * MB, 0, &huge), 0);
	h = exch_alloc(huge, 4 * MB);
	th_fill(h, 4 * MB, 137);
	th_make_huge(huge, h, 4 * MB);
	ck_assert_int_eq(io_uring_queue_init(4, &ring, 0), 0);
	iov = (struct iovec){ s + 2 * MB + 5 * PAGE, PAGE };
	ck_assert_int_eq(io_uring_register_buffers(&ring, &iov, 1), 0);
	ck_assert_int_eq(exch_exchange_pages(s, h, 4 * MB), -EBUSY);
	ck_assert_int_eq(th_huge_bytes(s, 4 * MB), 0);
	ck_assert_int_eq(th_huge_bytes(h, 4 * MB), (long)(4 * MB));
	ck_assert_int_eq(th_verify(s, 4 * MB, 136), -1);
	ck_assert_int_eq(th_verify(h, 4 * MB, 137), -1);
	io_uring_unregister_buffers(&ring);
	io_uring_queue_exit(&ring);
}
END_TEST

struct counter {
	uint64_t *words[2];
	size_t pages;
	_Atomic int stop;
	_Atomic long rounds;
};

/* One word per page of both ranges, incremented each round. */
static void *counter_main(void *arg)
{
	struct counter *c = arg;

	while (!atomic_load(&c->stop)) {
		for (int r = 0; r < 2; r++)
			for (size_t i = 0; i < c->pages; i++)
				c->words[r][i * (PAGE / 8)]++;
		atomic_fetch_add(&c->rounds, 1);
	}
	return NULL;
}

/* Backings swapped back and forth while a thread writes both ranges. */
START_TEST(test_exchange_pages_under_writer)
{
	exch_arena_t *small, *huge;
	char *s = th_small_pages(&small, 2 * MB, 138), *h;
	struct counter c;
	pthread_t th;
	long rounds;

	ck_assert_int_eq(exch_arena_create(2 * MB, 0, &huge), 0);
	h = exch_alloc(huge, 2 * MB);
	memset(s, 0, 2 * MB);
	memset(h, 0, 2 * MB);
	th_make_huge(huge, h, 2 * MB);
	c = (struct counter){ .words = { (uint64_t *)s, (uint64_t *)h }, .pages = 2 * MB / PAGE };
	ck_assert_int_eq(pthread_create(&th, NULL, counter_main, &c), 0);
	for (int i = 0; i < EXCHANGES; i++)
		ck_assert_int_eq(exch_exchange_pages(s, h, 2 * MB), 0);
	atomic_store(&c.stop, 1);
	pthread_join(th, NULL);
	rounds = atomic_load(&c.rounds);
	for (int r = 0; r < 2; r++)
		for (size_t i = 0; i < c.pages; i++)
			ck_assert_uint_eq(c.words[r][i * (PAGE / 8)], (uint64_t)rounds);
	/* Which range is huge now is not asserted: a write that faults while a
	 * region is moved leaves a page table there, and the frame moved in
	 * is split (the data stays right; that is what this test is about). */
}
END_TEST

struct reader {
	const char *p;
	size_t len;
	uint64_t seed;
	_Atomic int stop;
	_Atomic long checks;
	_Atomic long bad;
};

/* Checks the whole range against its pattern, again and again. */
static void *reader_main(void *arg)
{
	struct reader *r = arg;

	while (!atomic_load(&r->stop)) {
		if (th_verify(r->p, r->len, r->seed) != -1)
			atomic_fetch_add(&r->bad, 1);
		atomic_fetch_add(&r->checks, 1);
	}
	return NULL;
}

/* Readers never see a wrong byte while the backings move under them. */
START_TEST(test_exchange_pages_under_readers)
{
	exch_arena_t *small, *huge;
	char *s = th_small_pages(&small, 4 * MB, 139), *h;
	struct reader r[2] = { { .len = 4 * MB, .seed = 139 }, { .len = 4 * MB, .seed = 140 } };
	pthread_t th[2];

	ck_assert_int_eq(exch_arena_create(4 * MB, 0, &huge), 0);
	h = exch_alloc(huge, 4 * MB);
	th_fill(h, 4 * MB, 140);
	th_make_huge(huge, h, 4 * MB);
	r[0].p = s;
	r[1].p = h;
	for (int i = 0; i < 2; i++)
		ck_assert_int_eq(pthread_create(&th[i], NULL, reader_main, &r[i]), 0);
	for (int i = 0; i < EXCHANGES || atomic_load(&r[0].checks) < 2 ||
			atomic_load(&r[1].checks) < 2; i++)
		ck_assert_int_eq(exch_exchange_pages(s, h, 4 * MB), 0);
	for (int i = 0; i < 2; i++) {
		atomic_store(&r[i].stop, 1);
		pthread_join(th[i], NULL);
		ck_assert_int_eq(atomic_load(&r[i].bad), 0);
	}
	ck_assert_int_eq(th_verify(s, 4 * MB, 139), -1);
	ck_assert_int_eq(th_verify(h, 4 * MB, 140), -1);
}
END_TEST

static Suite *trade_suite(void)
{
	Suite *s = suite_create("trade");
	TCase *tc = tcase_create("trade");

	tcase_set_timeout(tc, 120);
	if (!(feat.on & EXCH_ON_HUGE_FIRST) || !(feat.have & EXCH_HAVE_PAGEMAP_SCAN) ||
	    !(feat.have & EXCH_HAVE_UFFD_WP)) {
		th_skip("trade tests", "needs UFFDIO_MOVE, THP, PAGEMAP_SCAN and uffd write-protect");
		return s;
	}
	tcase_add_test(tc, test_trade_hot_for_cold);
	tcase_add_test(tc, test_trade_with_holes);
	tcase_add_test(tc, test_trade_needs_cold_partner);
	tcase_add_test(tc, test_trade_needs_tracking);
	tcase_add_test(tc, test_trade_asks_partner_pins);
	tcase_add_test(tc, test_plain_arena_is_not_moved);
	tcase_add_test(tc, test_trade_in_background);
	tcase_add_test(tc, test_exchange_pages_keeps_data);
	tcase_add_test(tc, test_exchange_pages_across_arenas);
	tcase_add_test(tc, test_exchange_pages_misuse);
	tcase_add_test(tc, test_exchange_pages_busy_changes_nothing);
	tcase_add_test(tc, test_exchange_pages_under_writer);
	tcase_add_test(tc, test_exchange_pages_under_readers);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return th_main(&feat, trade_suite);
}

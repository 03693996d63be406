/*
 * check_pin.c - pins: the owner of a range is asked before it moves.
 *
 * Regions are 4K-mapped for real (an EXCH_ARENA_NOHUGE arena) and
 * coalesced; a pin's callback declines or allows, and the one that allows
 * is a real io_uring owner: it unregisters its fixed buffer, lets the move
 * happen and registers the buffer again, and a fixed read into the moved
 * buffer must land there.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"

#define PAGE 4096ul
#define READ_LEN (4 * PAGE)
#define FILE_BYTE 0x5a

static struct exch_features feat;

/* What a callback saw. */
struct owner {
	int answer;          /* BEGIN's return value */
	int begins, ends;
	void *addr;
	size_t len;
	struct io_uring *ring; /* re-registers its buffer, if set */
	struct iovec iov;
	int unpin_rc;        /* exch_unpin from inside BEGIN, if asked */
	int reentry_rc[4];   /* coalesce, exchange, destroy, stop from BEGIN */
	exch_arena_t *arena; /* for those */
	bool try_unpin;
};

static int owner_cb(void *addr, size_t len, enum exch_pin_event ev, void *arg)
{
	struct owner *o = arg;

	o->addr = addr;
	o->len = len;
	if (ev == EXCH_PIN_MOVE_END) {
		o->ends++;
		if (o->ring)
			io_uring_register_buffers(o->ring, &o->iov, 1);
		return 0;
	}
	o->begins++;
	if (o->try_unpin) {
		o->unpin_rc = exch_unpin(addr, len);
		o->reentry_rc[0] = exch_coalesce(o->arena, addr, len, EXCH_NOWAIT, NULL);
		o->reentry_rc[1] = exch_exchange_pages(addr, (char *)addr + 2 * MB, 2 * MB);
		o->reentry_rc[2] = exch_arena_destroy(o->arena);
		o->reentry_rc[3] = exch_coalescer_stop();
	}
	if (o->ring && o->answer == 0)
		io_uring_unregister_buffers(o->ring);
	return o->answer;
}

START_TEST(test_pin_declined)
{
	struct exch_coalesce_report rep;
	struct owner o = { .answer = -1 };
	exch_arena_t *a;
	char *p = th_small_pages(&a, 4 * MB, 81);

	ck_assert_int_eq(exch_pin(p + PAGE, 2 * PAGE, owner_cb, &o), 0);
	ck_assert_uint_eq(th_stat("pins_live"), 1);
	ck_assert_int_eq(exch_coalesce(a, p, 4 * MB, EXCH_NOWAIT, &rep), 0);
	ck_assert_uint_eq(rep.skipped_declined, 1);
	ck_assert_uint_eq(rep.coalesced, 1); /* the other region */
	ck_assert_int_eq(o.begins, 1);
	ck_assert_int_eq(o.ends, 0);
	ck_assert_ptr_eq(o.addr, p + PAGE);
	ck_assert_uint_eq(o.len, 2 * PAGE);
	ck_assert_int_eq(th_huge_bytes(p, 2 * MB), 0);
	ck_assert_int_eq(th_huge_bytes(p + 2 * MB, 2 * MB), (long)(2 * MB));
	ck_assert_int_eq(th_verify(p, 4 * MB, 81), -1);
	ck_assert_uint_eq(th_stat("coalesce_declined"), 1);
	/* Unpinned, the region moves. */
	ck_assert_int_eq(exch_unpin(p + PAGE, 2 * PAGE), 0);
	ck_assert_uint_eq(th_stat("pins_live"), 0);
	ck_assert_int_eq(exch_coalesce(a, p, 4 * MB, EXCH_NOWAIT, &rep), 0);
	ck_assert_uint_eq(rep.coalesced, 1);
	ck_assert_int_eq(o.begins, 1);
	ck_assert_int_eq(th_verify(p, 4 * MB, 81), -1);
}
END_TEST

/* No callback: the pin is never moved, even with EXCH_BLOCK. */
START_TEST(test_pin_without_callback)
{
	struct exch_coalesce_report rep;
	exch_arena_t *a;
	char *p = th_small_pages(&a, 2 * MB, 82);

	ck_assert_int_eq(exch_pin(p + MB, PAGE, NULL, NULL), 0);
	ck_assert_int_eq(exch_coalesce(a, p, 2 * MB, EXCH_BLOCK, &rep), 0);
	ck_assert_uint_eq(rep.skipped_declined, 1);
	ck_assert_uint_eq(rep.coalesced, 0);
	ck_assert_uint_eq(rep.retries, 0); /* the owner's no is final */
	ck_assert_int_eq(th_huge_bytes(p, 2 * MB), 0);
	ck_assert_int_eq(th_verify(p, 2 * MB, 82), -1);
}
END_TEST

/* An io_uring owner releases its fixed buffer for the move. */
START_TEST(test_pin_allows_io_uring_owner)
{
	struct exch_coalesce_report rep;
	struct io_uring_sqe *sqe;
	struct io_uring_cqe *cqe;
	struct io_uring ring;
	exch_arena_t *a;
	char path[] = "/tmp/exch-pin-XXXXXX", *expect;
	char *p = th_small_pages(&a, 2 * MB, 83), *buf = p + 64 * PAGE;
	struct owner o = { .answer = 0, .ring = &ring, .iov = { buf, READ_LEN } };
	int fd = mkstemp(path);

	ck_assert_int_ge(fd, 0);
	unlink(path);
	expect = malloc(READ_LEN);
	memset(expect, FILE_BYTE, READ_LEN);
	ck_assert_int_eq(pwrite(fd, expect, READ_LEN, 0), (ssize_t)READ_LEN);
	ck_assert_int_eq(io_uring_queue_init(4, &ring, 0), 0);
	ck_assert_int_eq(io_uring_register_buffers(&ring, &o.iov, 1), 0);
	ck_assert_int_eq(exch_pin(buf, READ_LEN, owner_cb, &o), 0);

	ck_assert_int_eq(exch_coalesce(a, p, 2 * MB, EXCH_NOWAIT, &rep), 0);
	ck_assert_uint_eq(rep.coalesced, 1);
	ck_assert_uint_eq(rep.skipped_busy, 0);
	ck_assert_int_eq(o.begins, 1);
	ck_assert_int_eq(o.ends, 1);
	ck_assert_int_eq(th_huge_bytes(p, 2 * MB), (long)(2 * MB));
	ck_assert_int_eq(th_verify(p, 2 * MB, 83), -1);

	/* The buffer registered again after the move: a fixed read lands in
	 * the arena's new page. */
	sqe = io_uring_get_sqe(&ring);
	io_uring_prep_read_fixed(sqe, fd, buf, READ_LEN, 0, 0);
	ck_assert_int_eq(io_uring_submit(&ring), 1);
	ck_assert_int_eq(io_uring_wait_cqe(&ring, &cqe), 0);
	ck_assert_int_eq(cqe->res, (int)READ_LEN);
	io_uring_cqe_seen(&ring, cqe);
	ck_assert_mem_eq(buf, expect, READ_LEN);
	ck_assert_int_eq(exch_unpin(buf, READ_LEN), 0);
	io_uring_queue_exit(&ring);
	close(fd);
	free(expect);
}
END_TEST

START_TEST(test_pin_misuse)
{
	struct owner o = { .answer = 0 };
	exch_arena_t *a;
	char *p = th_written(&a, 2 * MB, 84), other;

	ck_assert_int_eq(exch_pin(&other, 1, owner_cb, &o), -EINVAL);
	ck_assert_int_eq(exch_pin(p, 0, owner_cb, &o), -EINVAL);
	ck_assert_int_eq(exch_pin(p + MB, 2 * MB, owner_cb, &o), -EINVAL); /* past the end */
	ck_assert_int_eq(exch_pin(p, PAGE, owner_cb, &o), 0);
	ck_assert_int_eq(exch_pin(p, PAGE, owner_cb, &o), -EEXIST);
	ck_assert_int_eq(exch_pin(p, 2 * PAGE, owner_cb, &o), 0); /* overlaps: fine */
	ck_assert_int_eq(exch_unpin(p, 3 * PAGE), -ENOENT);
	ck_assert_int_eq(exch_unpin(&other, 1), -ENOENT);
	ck_assert_int_eq(exch_unpin(p, PAGE), 0);
	ck_assert_int_eq(exch_unpin(p, PAGE), -ENOENT);
	ck_assert_int_eq(exch_unpin(p, 2 * PAGE), 0);
	ck_assert_uint_eq(th_stat("pins_live"), 0);
	ck_assert_int_eq(th_verify(p, 2 * MB, 84), -1);
}
END_TEST

/* Calls that wait for the move in progress would wait for themselves from
 * a callback: refused with -EDEADLK. */
START_TEST(test_unpin_in_callback)
{
	struct exch_coalesce_report rep;
	struct owner o = { .answer = 0, .try_unpin = true };
	exch_arena_t *a;
	char *p = th_small_pages(&a, 4 * MB, 85); /* the pin is at its start */

	o.arena = a;
	ck_assert_int_eq(exch_pin(p, PAGE, owner_cb, &o), 0);
	ck_assert_int_eq(exch_coalesce(a, p, 2 * MB, EXCH_NOWAIT, &rep), 0);
	ck_assert_int_eq(o.unpin_rc, -EDEADLK);
	ck_assert_int_eq(o.reentry_rc[0], -EDEADLK);
	ck_assert_int_eq(o.reentry_rc[1], -EDEADLK);
	ck_assert_int_eq(o.reentry_rc[2], -EDEADLK);
	ck_assert_int_eq(o.reentry_rc[3], -EDEADLK);
	ck_assert_uint_eq(rep.coalesced, 1);
	ck_assert_int_eq(exch_unpin(p, PAGE), 0);
	ck_assert_int_eq(th_verify(p, 4 * MB, 85), -1);
}
END_TEST

/* More pins over one region than are asked: it does not move; pins that
 * allowed before the limit was found are not left waiting for an END. */
START_TEST(test_pin_too_many)
{
	struct exch_coalesce_report rep;
	struct owner o[PIN_MAX_ASKED + 1];
	exch_arena_t *a;
	char *p = th_small_pages(&a, 2 * MB, 86);

	memset(o, 0, sizeof(o));
	for (int i = 0; i <= PIN_MAX_ASKED; i++)
		ck_assert_int_eq(exch_pin(p + (size_t)i * PAGE, PAGE, owner_cb, &o[i]), 0);
	ck_assert_int_eq(exch_coalesce(a, p, 2 * MB, EXCH_NOWAIT, &rep), 0);
	ck_assert_uint_eq(rep.skipped_declined, 1);
	for (int i = 0; i <= PIN_MAX_ASKED; i++)
		ck_assert_int_eq(o[i].begins, o[i].ends);
	ck_assert_int_eq(th_huge_bytes(p, 2 * MB), 0);
	ck_assert_int_eq(th_verify(p, 2 * MB, 86), -1);
}
END_TEST

/* A destroyed arena takes its pins with it. */
START_TEST(test_pin_arena_destroy)
{
	exch_arena_t *a;
	char *p = th_written(&a, 2 * MB, 87);

	ck_assert_int_eq(exch_pin(p, PAGE, NULL, NULL), 0);
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
	ck_assert_uint_eq(th_stat("pins_live"), 0);
}
END_TEST

static Suite *pin_suite(void)
{
	Suite *s = suite_create("pin");
	TCase *tc = tcase_create("pin");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_pin_misuse);
	tcase_add_test(tc, test_pin_arena_destroy);
	if (!(feat.on & EXCH_ON_HUGE_FIRST) || !(feat.have & EXCH_HAVE_PAGEMAP_SCAN)) {
		th_skip("pin tests that coalesce", "needs UFFDIO_MOVE, THP and PAGEMAP_SCAN");
	} else {
		tcase_add_test(tc, test_pin_declined);
		tcase_add_test(tc, test_pin_without_callback);
		tcase_add_test(tc, test_pin_allows_io_uring_owner);
		tcase_add_test(tc, test_unpin_in_callback);
		tcase_add_test(tc, test_pin_too_many);
	}
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return th_main(&feat, pin_suite);
}

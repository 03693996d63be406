/*
 * check_coalesce.c - 4K-mapped regions into hugepages, under load.
 *
 * Regions are made of 4K pages for real (an EXCH_ARENA_NOHUGE arena), then
 * coalesced while threads keep writing them: every increment must survive.
 * The refusals are produced by their real causes: a page pinned by an
 * io_uring registered buffer, pages shared with a live fork child, an empty
 * frame pool, a sparse region.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

#define WRITERS 4
#define WRITER_ROUNDS 400

#define UNPIN_DELAY_US 50000
#define FORKS_WHILE_COALESCING 10

static struct exch_features feat;

struct odirect_reader {
	int fd;
	char *buf;
	const char *expect;
	size_t len;
	_Atomic int *stop;
	_Atomic long reads;
	_Atomic int bad;
};

/* Reads the file into the buffer with O_DIRECT until told to stop. */
static void *odirect_main(void *arg)
{
	struct odirect_reader *r = arg;

	while (!atomic_load(r->stop)) {
		ssize_t n = pread(r->fd, r->buf, r->len, 0);

		if (n != (ssize_t)r->len || memcmp(r->buf, r->expect, r->len))
			atomic_store(&r->bad, 1);
		atomic_fetch_add(&r->reads, 1);
	}
	return NULL;
}

START_TEST(test_coalesce_keeps_contents)
{
	struct exch_coalesce_report rep;
	exch_arena_t *a;
	char *p = th_small_pages(&a, 8 * MB, 71);

	ck_assert_uint_eq(th_stat("hugepage_coverage_pct"), 0);
	ck_assert_uint_eq(th_stat("resident_bytes"), 8 * MB);
	ck_assert_int_eq(exch_coalesce(a, p, 8 * MB, EXCH_NOWAIT, &rep), 0);
	ck_assert_uint_eq(th_stat("hugepage_coverage_pct"), 100);
	ck_assert_uint_eq(rep.examined, 4);
	ck_assert_uint_eq(rep.coalesced, 4);
	ck_assert_uint_eq(rep.errors, 0);
	ck_assert_uint_eq(rep.bytes_copied, 8 * MB);
	ck_assert_int_eq(th_huge_bytes(p, 8 * MB), (long)(8 * MB));
	ck_assert_int_eq(th_verify(p, 8 * MB, 71), -1);
	ck_assert_uint_eq(th_stat("coalesced_regions"), 4);
	/* a second call finds nothing to do */
	ck_assert_int_eq(exch_coalesce(a, p, 8 * MB, EXCH_NOWAIT, &rep), 0);
	ck_assert_uint_eq(rep.already_huge, 4);
	ck_assert_uint_eq(rep.coalesced, 0);
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
}
END_TEST

START_TEST(test_coalesce_misuse)
{
	exch_arena_t *a;
	char *p = th_small_pages(&a, 4 * MB, 72);
	char other;

	ck_assert_int_eq(exch_coalesce(NULL, p, MB, 0, NULL), -EINVAL);
	ck_assert_int_eq(exch_coalesce(a, &other, 1, 0, NULL), -EINVAL);
	ck_assert_int_eq(exch_coalesce(a, p, 5 * MB, 0, NULL), -EINVAL);
	ck_assert_int_eq(exch_coalesce(a, p, 0, 0, NULL), -EINVAL);
	ck_assert_int_eq(exch_coalesce(a, p, MB, 0x100, NULL), -EINVAL);
	ck_assert_int_eq(exch_coalesce(a, p, MB, EXCH_NOWAIT | EXCH_BLOCK, NULL), -EINVAL);
	ck_assert_int_eq(th_huge_bytes(p, 4 * MB), 0); /* nothing changed */
	ck_assert_int_eq(th_verify(p, 4 * MB, 72), -1);
}
END_TEST

/* Only a few pages written: coalescing would make the rest resident. */
START_TEST(test_coalesce_skips_sparse)
{
	struct exch_coalesce_report rep;
	exch_arena_t *a;
	char *p;

	ck_assert_int_eq(exch_arena_create(2 * MB, EXCH_ARENA_NOHUGE, &a), 0);
	p = exch_alloc(a, 2 * MB);
	for (int i = 0; i < 10; i++)
		p[i * 4096 * 7] = (char)i;
	ck_assert_int_eq(exch_pool_wait(TH_POOL_WAIT_MS), 0);
	ck_assert_int_eq(exch_coalesce(a, p, 2 * MB, EXCH_NOWAIT, &rep), 0);
	ck_assert_uint_eq(rep.skipped_sparse, 1);
	ck_assert_uint_eq(rep.coalesced, 0);
	ck_assert_int_eq(th_private_bytes(p, 2 * MB), 10 * 4096);
}
END_TEST

START_TEST(test_coalesce_pinned_is_skipped)
{
	struct exch_coalesce_report rep;
	struct io_uring ring;
	struct iovec iov;
	exch_arena_t *a;
	char *p = th_small_pages(&a, 2 * MB, 73);

	ck_assert_int_eq(io_uring_queue_init(4, &ring, 0), 0);
	iov = (struct iovec){ p + 64 * 4096, 4096 };
	ck_assert_int_eq(io_uring_register_buffers(&ring, &iov, 1), 0);
	ck_assert_int_eq(exch_coalesce(a, p, 2 * MB, EXCH_NOWAIT, &rep), 0);
	ck_assert_uint_eq(rep.skipped_busy, 1);
	ck_assert_uint_eq(rep.coalesced, 0);
	ck_assert_int_eq(th_verify(p, 2 * MB, 73), -1);  /* all put back */
	ck_assert_int_eq(th_huge_bytes(p, 2 * MB), 0);
	io_uring_unregister_buffers(&ring);
	io_uring_queue_exit(&ring);
	ck_assert_int_eq(exch_coalesce(a, p, 2 * MB, EXCH_NOWAIT, &rep), 0);
	ck_assert_uint_eq(rep.coalesced, 1);
	ck_assert_int_eq(th_verify(p, 2 * MB, 73), -1);
}
END_TEST

struct unpinner {
	struct io_uring *ring;
	unsigned delay_us;
};

static void *unpin_later(void *arg)
{
	struct unpinner *u = arg;

	usleep(u->delay_us);
	io_uring_unregister_buffers(u->ring);
	return NULL;
}

/* EXCH_BLOCK waits out a pin that its owner drops a little later. */
START_TEST(test_coalesce_block_waits_for_pin)
{
	struct exch_coalesce_report rep;
	struct unpinner u;
	struct io_uring ring;
	struct iovec iov;
	exch_arena_t *a;
	pthread_t th;
	char *p = th_small_pages(&a, 2 * MB, 77);

	ck_assert_int_eq(io_uring_queue_init(4, &ring, 0), 0);
	iov = (struct iovec){ p + 9 * 4096, 4096 };
	ck_assert_int_eq(io_uring_register_buffers(&ring, &iov, 1), 0);
	u = (struct unpinner){ &ring, UNPIN_DELAY_US };
	ck_assert_int_eq(pthread_create(&th, NULL, unpin_later, &u), 0);
	setenv("EXCH_COALESCE_BLOCK_MS", "20000", 1);
	opt_reload();
	ck_assert_int_eq(exch_coalesce(a, p, 2 * MB, EXCH_BLOCK, &rep), 0);
	pthread_join(th, NULL);
	ck_assert_uint_eq(rep.coalesced, 1);
	ck_assert_uint_eq(rep.skipped_busy, 0);
	ck_assert_uint_ge(rep.retries, 1);
	ck_assert_int_eq(th_verify(p, 2 * MB, 77), -1);
	ck_assert_int_eq(th_huge_bytes(p, 2 * MB), (long)(2 * MB));
	io_uring_queue_exit(&ring);
}
END_TEST

/* O_DIRECT reads into the buffer while it is coalesced: the kernel's
 * access to a page in transit waits like a thread's, so every read is
 * whole and right (no EFAULT). */
START_TEST(test_coalesce_during_odirect)
{
	const size_t len = 4 * MB;
	char path[] = "exch-odirect-XXXXXX";
	struct exch_coalesce_report rep;
	_Atomic int stop = 0;
	struct odirect_reader rd;
	exch_arena_t *a;
	pthread_t th;
	char *src, *p;
	int fd;

	fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	src = aligned_alloc(4096, len);
	th_fill(src, len, 78);
	ck_assert_int_eq(pwrite(fd, src, len, 0), (ssize_t)len);
	close(fd);
	fd = open(path, O_RDONLY | O_DIRECT);
	unlink(path);
	if (fd < 0) {
		th_skip("test_coalesce_during_odirect", "O_DIRECT is not supported here");
		return;
	}
	p = th_small_pages(&a, len, 79);
	rd = (struct odirect_reader){ fd, p, src, len, &stop, 0, 0 };
	ck_assert_int_eq(pthread_create(&th, NULL, odirect_main, &rd), 0);
	while (atomic_load(&rd.reads) < 2)
		usleep(100);
	ck_assert_int_eq(exch_coalesce(a, p, len, EXCH_BLOCK, &rep), 0);
	long reads_during = atomic_load(&rd.reads);
	atomic_store(&stop, 1);
	pthread_join(th, NULL);
	close(fd);
	printf("O_DIRECT: %ld reads by the end of coalescing; %lu regions coalesced, "
	       "%lu skipped busy after %lu retries\n", reads_during,
	       (unsigned long)rep.coalesced, (unsigned long)rep.skipped_busy,
	       (unsigned long)rep.retries);
	ck_assert_int_eq(atomic_load(&rd.bad), 0);
	ck_assert_uint_eq(rep.errors, 0);
	ck_assert_uint_eq(rep.coalesced + rep.skipped_busy, len / REGION_SIZE);
	ck_assert_int_eq(memcmp(p, src, len), 0);
	free(src);
}
END_TEST

struct splitter {
	exch_arena_t *arena;
	char *base;
	size_t len;
	_Atomic int stop;
	_Atomic long rounds;
};

/* Splits every region (dropping its page 0, which holds only zeros) and
 * coalesces it again, over and over. */
static void *split_and_coalesce(void *arg)
{
	struct splitter *sp = arg;

	while (!atomic_load(&sp->stop)) {
		for (size_t off = 0; off < sp->len; off += REGION_SIZE)
			madvise(sp->base + off, 4096, MADV_DONTNEED);
		exch_coalesce(sp->arena, sp->base, sp->len, EXCH_NOWAIT, NULL);
		atomic_fetch_add(&sp->rounds, 1);
	}
	return NULL;
}

/* Page 0 of each region is zero, the rest holds the pattern of @seed. */
static int check_layout(const char *p, size_t len, uint64_t seed)
{
	for (size_t off = 0; off < len; off += REGION_SIZE) {
		if (!exch_is_zero(p + off, 4096))
			return 1;
		for (size_t pg = 1; pg < PAGES_PER_REGION; pg++)
			if (th_verify(p + off + pg * 4096, 4096, seed + off + pg) != -1)
				return 2;
	}
	return 0;
}

/* fork() while a thread coalesces: every child sees exactly the data. */
START_TEST(test_fork_while_coalescing)
{
	const size_t len = 16 * MB;
	struct splitter sp;
	exch_arena_t *a;
	pthread_t th;
	char *p;

	ck_assert_int_eq(exch_arena_create(len, EXCH_ARENA_NOHUGE, &a), 0);
	p = exch_alloc(a, len);
	for (size_t off = 0; off < len; off += REGION_SIZE)
		for (size_t pg = 1; pg < PAGES_PER_REGION; pg++)
			th_fill(p + off + pg * 4096, 4096, 80 + off + pg);
	ck_assert_int_eq(exch_pool_wait(TH_POOL_WAIT_MS), 0);
	sp = (struct splitter){ a, p, len, 0, 0 };
	ck_assert_int_eq(pthread_create(&th, NULL, split_and_coalesce, &sp), 0);
	for (int i = 0; i < FORKS_WHILE_COALESCING; i++) {
		int status;
		pid_t pid;

		while (atomic_load(&sp.rounds) < i + 1)
			usleep(100);
		pid = fork();
		if (pid == 0)
			_exit(check_layout(p, len, 80));
		ck_assert_int_eq(waitpid(pid, &status, 0), pid);
		ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
			      "fork %d: child status %#x", i, status);
	}
	atomic_store(&sp.stop, 1);
	pthread_join(th, NULL);
	ck_assert_int_eq(check_layout(p, len, 80), 0);
	ck_assert_uint_gt(th_stat("coalesced_regions"), 0);
}
END_TEST

/* Pages still shared with a live fork child are made exclusive first. */
START_TEST(test_coalesce_after_fork)
{
	struct exch_coalesce_report rep;
	exch_arena_t *a;
	char *p = th_small_pages(&a, 2 * MB, 74);
	int go[2], status;
	pid_t pid;

	ck_assert_int_eq(pipe(go), 0);
	pid = fork();
	if (pid == 0) {
		char c;

		close(go[1]);
		if (read(go[0], &c, 1) != 1)
			_exit(1);
		_exit(th_verify(p, 2 * MB, 74) == -1 ? 0 : 2);
	}
	close(go[0]);
	ck_assert_int_eq(exch_coalesce(a, p, 2 * MB, EXCH_NOWAIT, &rep), 0);
	ck_assert_uint_eq(rep.coalesced, 1);
	ck_assert_uint_eq(rep.unshared, 1);
	th_fill(p, 2 * MB, 75); /* the parent changes its copy */
	ck_assert_int_eq(write(go[1], "x", 1), 1);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	ck_assert_int_eq(th_verify(p, 2 * MB, 75), -1);
	ck_assert_int_eq(th_huge_bytes(p, 2 * MB), (long)(2 * MB));
}
END_TEST

/* The child is gone, but its pages stay marked shared until written: the
 * region is still made exclusive first, and coalesced. */
START_TEST(test_coalesce_after_child_exit)
{
	struct exch_coalesce_report rep;
	exch_arena_t *a;
	char *p = th_small_pages(&a, 2 * MB, 70);
	int status;
	pid_t pid = fork();

	if (pid == 0)
		_exit(th_verify(p, 2 * MB, 70) == -1 ? 0 : 1);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	ck_assert_int_eq(exch_coalesce(a, p, 2 * MB, EXCH_NOWAIT, &rep), 0);
	ck_assert_uint_eq(rep.coalesced, 1);
	ck_assert_int_eq(th_huge_bytes(p, 2 * MB), (long)(2 * MB));
	ck_assert_int_eq(th_verify(p, 2 * MB, 70), -1);
}
END_TEST

START_TEST(test_coalesce_no_frame_puts_back)
{
	struct exch_coalesce_report rep;
	void *frames[64];
	exch_arena_t *a;
	char *p = th_small_pages(&a, 2 * MB, 76);
	int n = 0;

	while (n < 64 && pool_take(0, &frames[n]) == 0)
		n++;
	ck_assert_int_eq(exch_coalesce(a, p, 2 * MB, EXCH_NOWAIT, &rep), 0);
	ck_assert_uint_eq(rep.skipped_no_frame, 1);
	ck_assert_int_eq(th_verify(p, 2 * MB, 76), -1);
	ck_assert_int_eq(th_huge_bytes(p, 2 * MB), 0);
	for (int i = 0; i < n; i++)
		pool_put_back(frames[i]);
	ck_assert_int_eq(exch_coalesce(a, p, 2 * MB, EXCH_NOWAIT, &rep), 0);
	ck_assert_uint_eq(rep.coalesced, 1);
	ck_assert_int_eq(th_verify(p, 2 * MB, 76), -1);
}
END_TEST

struct writer {
	uint64_t *base;
	size_t pages;
	int id;
	_Atomic int *started;
	_Atomic int *done;
};

/* Each writer owns one word per page and increments it every round. */
static void *writer_main(void *arg)
{
	struct writer *w = arg;
	const size_t words_per_page = 4096 / sizeof(uint64_t);

	for (int round = 0; round < WRITER_ROUNDS; round++) {
		for (size_t i = 0; i < w->pages; i++)
			w->base[i * words_per_page + (size_t)w->id]++;
		if (round == 0)
			atomic_fetch_add(w->started, 1);
	}
	atomic_fetch_add(w->done, 1);
	return NULL;
}

START_TEST(test_coalesce_under_writers)
{
	const size_t len = 64 * MB, pages = len / 4096;
	const size_t words_per_page = 4096 / sizeof(uint64_t);
	struct exch_coalesce_report rep;
	struct writer w[WRITERS];
	pthread_t th[WRITERS];
	_Atomic int started = 0, done = 0;
	exch_arena_t *a;
	uint64_t *p;

	ck_assert_int_eq(exch_arena_create(len, EXCH_ARENA_NOHUGE, &a), 0);
	p = exch_alloc(a, len);
	memset(p, 0, len); /* 4K pages, all written */
	ck_assert_int_eq(exch_pool_wait(TH_POOL_WAIT_MS), 0);
	for (int i = 0; i < WRITERS; i++) {
		w[i] = (struct writer){ p, pages, i, &started, &done };
		ck_assert_int_eq(pthread_create(&th[i], NULL, writer_main, &w[i]), 0);
	}
	while (atomic_load(&started) < WRITERS)
		usleep(100);
	ck_assert_int_eq(exch_coalesce(a, p, len, EXCH_NOWAIT, &rep), 0);
	int still_running = atomic_load(&done) < WRITERS;
	for (int i = 0; i < WRITERS; i++)
		pthread_join(th[i], NULL);
	printf("coalesced %lu regions in %.1f ms while %d writers ran; %lu faults parked\n",
	       (unsigned long)rep.coalesced, rep.ns / 1e6, still_running ? WRITERS : 0,
	       (unsigned long)th_stat("faults_parked"));
	/* the writers really ran through the coalescing */
	ck_assert(still_running);
	for (size_t i = 0; i < pages; i++)
		for (int t = 0; t < WRITERS; t++)
			ck_assert_uint_eq(p[i * words_per_page + (size_t)t], WRITER_ROUNDS);
	ck_assert_uint_eq(rep.errors, 0);
	ck_assert_uint_eq(rep.coalesced + rep.skipped_no_frame + rep.skipped_busy, len / REGION_SIZE);
	ck_assert_int_eq(th_huge_bytes(p, len), (long)(rep.coalesced * REGION_SIZE));
	ck_assert_uint_gt(rep.coalesced, 0);
}
END_TEST

/* Physically, a coalesced region is one run of 512 page frames. */
START_TEST(test_coalesce_contiguity)
{
	struct exch_coalesce_report rep;
	struct exch_contiguity before, after;
	exch_arena_t *a;
	char *p = th_small_pages(&a, 4 * MB, 78);
	int rc = exch_arena_contiguity(a, &before);

	if (geteuid() != 0) {
		ck_assert_int_eq(rc, -EPERM); /* PFNs are hidden */
		return;
	}
	ck_assert_int_eq(rc, 0);
	ck_assert_uint_eq(before.resident_bytes, 4 * MB);
	ck_assert_uint_ge(before.ranges, 1);
	ck_assert_int_eq(exch_coalesce(a, p, 4 * MB, EXCH_NOWAIT, &rep), 0);
	ck_assert_uint_eq(rep.coalesced, 2);
	ck_assert_int_eq(exch_arena_contiguity(a, &after), 0);
	ck_assert_uint_eq(after.resident_bytes, 4 * MB);
	ck_assert_uint_le(after.ranges, 2);
	ck_assert_uint_ge(after.largest_bytes, 2 * MB);
	ck_assert_uint_le(after.ranges, before.ranges);
	ck_assert_uint_eq(th_stat("phys_ranges"), after.ranges);
	ck_assert_int_eq(exch_arena_contiguity(NULL, &after), -EINVAL);
	ck_assert_int_eq(exch_arena_contiguity(a, NULL), -EINVAL);
}
END_TEST

static Suite *coalesce_suite(void)
{
	Suite *s = suite_create("coalesce");
	TCase *tc = tcase_create("coalesce");

	tcase_set_timeout(tc, 120);
	if (!(feat.on & EXCH_ON_HUGE_FIRST) || !(feat.have & EXCH_HAVE_PAGEMAP_SCAN)) {
		th_skip("coalescing tests", "needs UFFDIO_MOVE, THP and PAGEMAP_SCAN");
		return s;
	}
	tcase_add_test(tc, test_coalesce_keeps_contents);
	tcase_add_test(tc, test_coalesce_misuse);
	tcase_add_test(tc, test_coalesce_skips_sparse);
	tcase_add_test(tc, test_coalesce_pinned_is_skipped);
	tcase_add_test(tc, test_coalesce_after_fork);
	tcase_add_test(tc, test_coalesce_after_child_exit);
	tcase_add_test(tc, test_coalesce_no_frame_puts_back);
	tcase_add_test(tc, test_coalesce_under_writers);
	tcase_add_test(tc, test_coalesce_block_waits_for_pin);
	tcase_add_test(tc, test_coalesce_during_odirect);
	tcase_add_test(tc, test_fork_while_coalescing);
	tcase_add_test(tc, test_coalesce_contiguity);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return th_main(&feat, coalesce_suite);
}

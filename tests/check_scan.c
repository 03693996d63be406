/*
 * check_scan.c - the background coalescer.
 *
 * 4K-mapped regions (an EXCH_ARENA_NOHUGE arena, written) are left to the
 * background thread, which must make them hugepages with their contents
 * kept while threads write them, stay within its budget, leave the frame
 * pool to first touches, and survive arenas being destroyed and the
 * process forking under it. Waits poll real state with a generous
 * deadline; no assertion depends on how fast the machine is, only the
 * budget's upper bound, which slowness cannot break.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

#define DEADLINE_S 60
#define POLL_US 10000
#define FAST_MBPS 4000
#define FAST_MS 20
#define SLOW_MBPS 10
#define SLOW_MS 100
#define SCAN_TEST_MIN_MS 10
#define MIB_PER_MB (1e6 / (1024.0 * 1024.0))
#define WRITERS 3
#define FORKS 5
#define CHURN_ARENAS 40

static struct exch_features feat;

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Waits until [p, p+len) is all hugepages; false at the deadline. */
static bool wait_huge(const char *p, size_t len)
{
	double end = now_s() + DEADLINE_S;

	while (th_huge_bytes(p, len) != (long)len) {
		if (now_s() > end)
			return false;
		usleep(POLL_US);
	}
	return true;
}

START_TEST(test_scan_coalesces)
{
	exch_arena_t *a;
	char *p = th_small_pages(&a, 32 * MB, 101);

	ck_assert_int_eq(exch_coalescer_start(FAST_MBPS, FAST_MS), 0);
	ck_assert(wait_huge(p, 32 * MB));
	ck_assert_int_eq(exch_coalescer_stop(), 0);
	ck_assert_int_eq(th_verify(p, 32 * MB, 101), -1);
	ck_assert_uint_eq(th_stat("scan_coalesced"), 16);
	ck_assert_uint_ge(th_stat("scan_passes"), 1);
	ck_assert_int_eq(exch_coalescer_stop(), -ESRCH);
}
END_TEST

START_TEST(test_scan_misuse)
{
	ck_assert_int_eq(exch_coalescer_start(2000000, 0), -EINVAL);
	ck_assert_int_eq(exch_coalescer_start(0, 5), -EINVAL);
	ck_assert_int_eq(exch_coalescer_start(0, 4000000), -EINVAL);
	ck_assert_int_eq(exch_coalescer_stop(), -ESRCH);
	ck_assert_int_eq(exch_coalescer_start(0, 0), 0);
	ck_assert_int_eq(exch_coalescer_start(0, 0), -EALREADY);
	ck_assert_int_eq(exch_coalescer_stop(), 0);
}
END_TEST

/* Over any time t it moves at most mbps * t plus one region (its burst
 * here, as one interval's worth is less than a region). */
START_TEST(test_scan_budget)
{
	exch_arena_t *a;
	char *p = th_small_pages(&a, 64 * MB, 102);
	double t0, t;
	uint64_t done;

	t0 = now_s();
	ck_assert_int_eq(exch_coalescer_start(SLOW_MBPS, SLOW_MS), 0);
	do {
		usleep(POLL_US);
		done = th_stat("scan_coalesced");
		t = now_s() - t0;
		ck_assert_double_le((double)done * 2.0, SLOW_MBPS * MIB_PER_MB * t + 2.0 + 1e-9);
	} while (t < 1.5 || !done);
	ck_assert_int_eq(exch_coalescer_stop(), 0);
	ck_assert_uint_ge(th_stat("scan_budget_stops"), 1);
	ck_assert_int_eq(th_verify(p, 64 * MB, 102), -1);
}
END_TEST

/* First touches come first: with the pool below half, no frame is taken
 * (and, with nothing hot to trade for, nothing coalesced). */
START_TEST(test_scan_leaves_frames)
{
	void *frames[1024];
	exch_arena_t *a;
	char *p = th_small_pages(&a, 8 * MB, 103);
	int n = 0;

	while (n < 1024 && th_stat("pool_frames_ready") && pool_take(0, &frames[n]) == 0)
		n++;
	ck_assert_int_eq(exch_coalescer_start(FAST_MBPS, FAST_MS), 0);
	while (th_stat("scan_passes") < 3 || th_stat("heat_armed") + th_stat("scan_frame_stops") < 1)
		usleep(POLL_US);
	ck_assert_uint_eq(th_stat("scan_coalesced"), 0);
	for (int i = 0; i < n; i++)
		pool_put_back(frames[i]);
	ck_assert(wait_huge(p, 8 * MB));
	ck_assert_int_eq(exch_coalescer_stop(), 0);
	ck_assert_int_eq(th_verify(p, 8 * MB, 103), -1);
}
END_TEST

struct writer {
	uint64_t *base;
	size_t pages;
	int id;
	int rounds;
};

/* Each writer owns one word per page and increments it every round. */
static void *writer_main(void *arg)
{
	struct writer *w = arg;
	const size_t words_per_page = 4096 / sizeof(uint64_t);

	for (int round = 0; round < w->rounds; round++)
		for (size_t i = 0; i < w->pages; i++)
			w->base[i * words_per_page + (size_t)w->id]++;
	return NULL;
}

/* Writers keep incrementing while the thread coalesces: nothing is lost. */
START_TEST(test_scan_under_writers)
{
	const size_t len = 32 * MB, pages = len / 4096, words_per_page = 4096 / 8;
	struct writer w[WRITERS];
	pthread_t th[WRITERS];
	exch_arena_t *a;
	uint64_t *p;
	int rounds = 0;

	ck_assert_int_eq(exch_arena_create(len, EXCH_ARENA_NOHUGE, &a), 0);
	p = exch_alloc(a, len);
	memset(p, 0, len);
	ck_assert_int_eq(exch_pool_wait(TH_POOL_WAIT_MS), 0);
	ck_assert_int_eq(exch_coalescer_start(FAST_MBPS, FAST_MS), 0);
	/* Rounds until the thread has made every region huge, then stop. */
	while (th_huge_bytes(p, len) != (long)len && rounds < 2000) {
		for (int i = 0; i < WRITERS; i++) {
			w[i] = (struct writer){ p, pages, i, 1 };
			ck_assert_int_eq(pthread_create(&th[i], NULL, writer_main, &w[i]), 0);
		}
		for (int i = 0; i < WRITERS; i++)
			pthread_join(th[i], NULL);
		rounds++;
	}
	ck_assert_int_eq(exch_coalescer_stop(), 0);
	ck_assert_int_eq(th_huge_bytes(p, len), (long)len);
	for (size_t i = 0; i < pages; i++)
		for (int id = 0; id < WRITERS; id++)
			if (p[i * words_per_page + (size_t)id] != (uint64_t)rounds)
				ck_abort_msg("page %zu word %d: %llu, want %d", i, id,
					     (unsigned long long)p[i * words_per_page + (size_t)id],
					     rounds);
}
END_TEST

/* Arenas come and go while the thread scans them. */
START_TEST(test_scan_arena_churn)
{
	exch_arena_t *keep;
	char *p = th_small_pages(&keep, 16 * MB, 104);

	ck_assert_int_eq(exch_coalescer_start(FAST_MBPS, SCAN_TEST_MIN_MS), 0);
	for (int i = 0; i < CHURN_ARENAS; i++) {
		exch_arena_t *a;
		char *q = th_written(&a, 4 * MB, 200 + (uint64_t)i);

		usleep(POLL_US);
		ck_assert_int_eq(th_verify(q, 4 * MB, 200 + (uint64_t)i), -1);
		ck_assert_int_eq(exch_free(a, q), 0);
		ck_assert_int_eq(exch_arena_destroy(a), 0);
	}
	ck_assert(wait_huge(p, 16 * MB));
	ck_assert_int_eq(exch_coalescer_stop(), 0);
	ck_assert_int_eq(th_verify(p, 16 * MB, 104), -1);
}
END_TEST

/* Children forked while the thread moves regions read all of their copy. */
START_TEST(test_scan_fork)
{
	exch_arena_t *a;
	char *p = th_small_pages(&a, 64 * MB, 105);

	ck_assert_int_eq(exch_coalescer_start(SLOW_MBPS * 10, SCAN_TEST_MIN_MS), 0);
	for (int i = 0; i < FORKS; i++) {
		int status;
		pid_t pid = fork();

		if (pid == 0)
			_exit(th_verify(p, 64 * MB, 105) == -1 ? 0 : 1);
		ck_assert_int_eq(waitpid(pid, &status, 0), pid);
		ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
		usleep(POLL_US * 5);
	}
	ck_assert_int_eq(exch_coalescer_stop(), 0);
	ck_assert_int_eq(th_verify(p, 64 * MB, 105), -1);
}
END_TEST

/* EXCH_COALESCE=1 starts it with the library. */
START_TEST(test_scan_from_environment)
{
	exch_arena_t *a;
	char *p;

	setenv("EXCH_COALESCE", "1", 1);
	setenv("EXCH_COALESCE_INTERVAL_MS", "20", 1);
	p = th_written(&a, 8 * MB, 106); /* it may start at once */
	ck_assert_int_eq(exch_coalescer_start(0, 0), -EALREADY);
	ck_assert(wait_huge(p, 8 * MB));
	ck_assert_int_eq(th_verify(p, 8 * MB, 106), -1);
	ck_assert_int_eq(exch_coalescer_stop(), 0);
}
END_TEST

/* SigBlk of thread @tid, from /proc; false if it cannot be read. */
static bool thread_sigblk(const char *tid, unsigned long long *blk)
{
	char path[320], line[256];
	bool found = false;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/task/%s/status", tid);
	f = fopen(path, "r");
	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f))
		found = sscanf(line, "SigBlk: %llx", blk) == 1;
	fclose(f);
	return found;
}

/* Every library thread (fault service, pool refill, coalescer) blocks
 * signals, so a signal sent to the process runs on the program's threads. */
START_TEST(test_library_threads_block_signals)
{
	const unsigned long long want = 1ull << (SIGUSR1 - 1) | 1ull << (SIGINT - 1) |
					1ull << (SIGTERM - 1) | 1ull << (SIGCHLD - 1);
	char self[32];
	struct dirent *d;
	int others = 0;
	DIR *dir;

	ck_assert_int_eq(exch_pool_wait(TH_POOL_WAIT_MS), 0);
	ck_assert_int_eq(exch_coalescer_start(0, 0), 0);
	snprintf(self, sizeof(self), "%d", getpid());
	dir = opendir("/proc/self/task");
	ck_assert_ptr_nonnull(dir);
	while ((d = readdir(dir))) {
		unsigned long long blk;

		if (d->d_name[0] == '.' || !strcmp(d->d_name, self))
			continue;
		ck_assert(thread_sigblk(d->d_name, &blk));
		ck_assert_msg((blk & want) == want, "thread %s SigBlk %llx", d->d_name, blk);
		others++;
	}
	closedir(dir);
	ck_assert_int_ge(others, 3);
	ck_assert_int_eq(exch_coalescer_stop(), 0);
}
END_TEST

static Suite *scan_suite(void)
{
	Suite *s = suite_create("scan");
	TCase *tc = tcase_create("scan");

	tcase_set_timeout(tc, 120);
	if (!(feat.on & EXCH_ON_HUGE_FIRST) || !(feat.have & EXCH_HAVE_PAGEMAP_SCAN)) {
		th_skip("background coalescer tests", "needs UFFDIO_MOVE, THP and PAGEMAP_SCAN");
		return s;
	}
	tcase_add_test(tc, test_scan_coalesces);
	tcase_add_test(tc, test_scan_misuse);
	tcase_add_test(tc, test_scan_budget);
	tcase_add_test(tc, test_scan_leaves_frames);
	tcase_add_test(tc, test_scan_under_writers);
	tcase_add_test(tc, test_scan_arena_churn);
	tcase_add_test(tc, test_scan_fork);
	tcase_add_test(tc, test_scan_from_environment);
	tcase_add_test(tc, test_library_threads_block_signals);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return th_main(&feat, scan_suite);
}

/*
 * check_fork.c - fork after populating, fork while threads touch memory.
 *
 * A fork child inherits the arenas' memory but not the userfaultfd
 * registration, the service threads or the frame pool. It must read what
 * the parent wrote, and its first exch_* call must start the library anew:
 * hugepage-first works in the child, and pages the child touched before
 * that call are kept (the region states are rescanned, not trusted).
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

#define POOL_WAIT_MS 20000
#define FORKS 5

static struct exch_features feat;

static int wait_child(pid_t pid)
{
	int status;

	if (waitpid(pid, &status, 0) != pid)
		return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Child: exit code names the first check that failed. */
static int child_after_populate(exch_arena_t *a, char *big, char *small)
{
	char *fresh;

	if (th_verify(big, 16 * MB, 21) != -1 || th_verify(small, 5 * 4096, 22) != -1)
		return 10;
	if (exch_pool_wait(POOL_WAIT_MS) != 0)
		return 11;
	fresh = exch_alloc(a, 4 * MB);
	if (!fresh)
		return 12;
	th_fill(fresh, 4 * MB, 23);
	if (th_verify(fresh, 4 * MB, 23) != -1)
		return 13;
	/* both regions got a frame; see test_huge_first_pmd_mapped on splits */
	if (th_stat("faults_huge") + th_stat("fallback_move_split") != 2 ||
	    th_huge_bytes(fresh, 4 * MB) != (long)(th_stat("faults_huge") * REGION_SIZE))
		return 14;
	if (th_stat("forks") != 1)
		return 15;
	if (exch_free(a, big) != 0 || exch_free(a, fresh) != 0)
		return 16;
	return th_verify(small, 5 * 4096, 22) == -1 ? 0 : 17;
}

START_TEST(test_fork_after_populate)
{
	exch_arena_t *a;
	char *big, *small, *after;
	pid_t pid;

	ck_assert_int_eq(exch_arena_create(64 * MB, 0, &a), 0);
	exch_pool_wait(POOL_WAIT_MS);
	big = exch_alloc(a, 16 * MB);
	small = exch_alloc(a, 5 * 4096);
	th_fill(big, 16 * MB, 21);
	th_fill(small, 5 * 4096, 22);
	pid = fork();
	if (pid == 0)
		_exit(child_after_populate(a, big, small));
	ck_assert_int_eq(wait_child(pid), 0);
	/* the parent's service still runs, its data is intact */
	ck_assert_int_eq(th_verify(big, 16 * MB, 21), -1);
	after = exch_alloc(a, 2 * MB);
	th_fill(after, 2 * MB, 24);
	ck_assert_int_eq(th_verify(after, 2 * MB, 24), -1);
	ck_assert_uint_eq(th_stat("forks"), 0);
}
END_TEST

/* The child touches an empty region before any exch_* call: the kernel
 * backs it, and the restarted library must see that (the rescan) and not
 * give the region a hugepage over it. The pool is full at the second
 * touch, so a wrong EMPTY state would take the hugepage path. */
START_TEST(test_fork_touch_before_restart)
{
	exch_arena_t *a;
	char *p;
	pid_t pid;

	ck_assert_int_eq(exch_arena_create(16 * MB, 0, &a), 0);
	p = exch_alloc(a, 8 * MB);
	p[0] = 1; /* region 0 populated in the parent; regions 1-3 empty */
	pid = fork();
	if (pid == 0) {
		th_fill(p + 2 * MB, 4096, 31);       /* region 1, unregistered */
		void *q = exch_alloc(a, 4096);        /* library restarts */
		if (!q || exch_pool_wait(POOL_WAIT_MS) != 0)
			_exit(1);
		th_fill(p + 2 * MB + 8192, 4096, 32); /* region 1 again, served */
		if (th_verify(p + 2 * MB, 4096, 31) != -1)
			_exit(2);
		if (th_verify(p + 2 * MB + 8192, 4096, 32) != -1)
			_exit(3);
		if (th_stat("faults_huge") != 0 || th_stat("empty_not_empty") != 0 ||
		    th_stat("fallback_region_partial") != 1)
			_exit(4);
		th_fill(p + 4 * MB, 4096, 33);        /* region 2: still empty */
		if (th_stat("faults_huge") + th_stat("fallback_move_split") != 1)
			_exit(5);
		_exit(p[0] == 1 ? 0 : 6);
	}
	ck_assert_int_eq(wait_child(pid), 0);
}
END_TEST

/* Memory the child writes before the library restarts takes no fault, so
 * nothing raised the arena's span over it: the rescan must, or the tier
 * would never see that region. The child writes far into the arena,
 * where the parent never faulted, and reclaims: that region must go to
 * the tier and come back intact. */
START_TEST(test_fork_span_after_unregistered_touch)
{
	const size_t len = 512 * MB;
	exch_arena_t *a;
	char *p, *far;
	pid_t pid;

	ck_assert_int_eq(exch_arena_create(len, 0, &a), 0);
	p = exch_alloc(a, len);
	ck_assert_ptr_nonnull(p);
	p[0] = 1; /* region 0 faulted in the parent: the span is 1 */
	far = p + len - 2 * MB;
	pid = fork();
	if (pid == 0) {
		th_fill(far, 2 * MB, 41); /* unregistered: the kernel backs it */
		if (exch_reclaim(a, 4 * MB, 0) < (long)(2 * MB)) /* restarts, rescans */
			_exit(1);
		if (th_private_bytes(far, 2 * MB) != 0)
			_exit(2);
		_exit(th_verify(far, 2 * MB, 41) == -1 && p[0] == 1 ? 0 : 3);
	}
	ck_assert_int_eq(wait_child(pid), 0);
}
END_TEST

struct churn {
	exch_arena_t *a;
	_Atomic int stop;
	_Atomic long rounds;
	_Atomic int bad;
};

static void *churn_main(void *arg)
{
	struct churn *c = arg;

	for (uint64_t seed = 100; !atomic_load(&c->stop); seed++) {
		char *p = exch_alloc(c->a, 2 * MB);

		if (!p)
			continue;
		th_fill(p, 2 * MB, seed);
		if (th_verify(p, 2 * MB, seed) != -1)
			atomic_store(&c->bad, 1);
		exch_free(c->a, p);
		atomic_fetch_add(&c->rounds, 1);
	}
	return NULL;
}

START_TEST(test_fork_while_touching)
{
	struct churn c = { 0 };
	pthread_t th[2];
	char *stable;

	ck_assert_int_eq(exch_arena_create(128 * MB, 0, &c.a), 0);
	stable = exch_alloc(c.a, 8 * MB);
	th_fill(stable, 8 * MB, 41);
	for (int i = 0; i < 2; i++)
		ck_assert_int_eq(pthread_create(&th[i], NULL, churn_main, &c), 0);
	for (int i = 0; i < FORKS; i++) {
		while (atomic_load(&c.rounds) < (i + 1) * 4)
			usleep(1000);
		pid_t pid = fork();
		if (pid == 0) {
			char *q;

			if (th_verify(stable, 8 * MB, 41) != -1)
				_exit(1);
			q = exch_alloc(c.a, 4 * MB);
			if (!q)
				_exit(2);
			th_fill(q, 4 * MB, 42);
			_exit(th_verify(q, 4 * MB, 42) == -1 ? 0 : 3);
		}
		ck_assert_int_eq(wait_child(pid), 0);
	}
	atomic_store(&c.stop, 1);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	ck_assert_int_eq(atomic_load(&c.bad), 0);
	ck_assert_int_eq(th_verify(stable, 8 * MB, 41), -1);
}
END_TEST

/* fork with several arenas, each with a pin: the prepare handler takes
 * every arena's locks in the documented order (debug builds assert it). */
START_TEST(test_fork_with_arenas_and_pins)
{
	exch_arena_t *a[3];
	char *p[3];
	int status;
	pid_t pid;

	for (int i = 0; i < 3; i++) {
		ck_assert_int_eq(exch_arena_create(2 * MB, 0, &a[i]), 0);
		p[i] = exch_alloc(a[i], 2 * MB);
		th_fill(p[i], 2 * MB, 60 + (uint64_t)i);
		ck_assert_int_eq(exch_pin(p[i], 4096, NULL, NULL), 0);
	}
	pid = fork();
	if (pid == 0) {
		for (int i = 0; i < 3; i++)
			if (th_verify(p[i], 2 * MB, 60 + (uint64_t)i) != -1)
				_exit(1);
		_exit(exch_unpin(p[0], 4096) == 0 ? 0 : 2);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	ck_assert_int_eq(exch_unpin(p[0], 4096), 0);
}
END_TEST

static Suite *fork_suite(void)
{
	Suite *s = suite_create("fork");
	TCase *tc = tcase_create("fork");

	tcase_set_timeout(tc, 120);
	if (feat.on & EXCH_ON_HUGE_FIRST)
		tcase_add_test(tc, test_fork_after_populate);
	else
		th_skip("test_fork_after_populate", "hugepage-first is off");
	if (feat.on & EXCH_ON_ARENA_UFFD) {
		tcase_add_test(tc, test_fork_touch_before_restart);
		tcase_add_test(tc, test_fork_span_after_unregistered_touch);
	} else {
		th_skip("test_fork_touch_before_restart and test_fork_span_after_unregistered_touch",
			"arenas do not use userfaultfd");
	}
	tcase_add_test(tc, test_fork_while_touching);
	tcase_add_test(tc, test_fork_with_arenas_and_pins);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return th_main(&feat, fork_suite);
}

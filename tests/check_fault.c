/*
 * check_fault.c - the fault service: parking, and every fallback for real.
 *
 * Parking is tested with a test-only transit: the region's pages are really
 * moved out with UFFDIO_MOVE into a scratch arena, a reader thread touches
 * the region and must stay asleep until the pages are moved back and the
 * transit ends. The fallbacks are produced with the real causes, not flags:
 * an empty pool (its frames held by the test), a frame the kernel split (a
 * 4K DONTNEED inside it), a frame pinned by an io_uring registered buffer
 * (UFFDIO_MOVE fails with EBUSY), EXCH_THP=never and EXCH_ARENA_NOHUGE.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

#define POOL_WAIT_MS 20000
#define PARK_WAIT_MS 20000
#define SLEEP_STEP_US 1000
#define CHILD_TIMEOUT_S 30
#define WRITE_STATS_ARG "--use-library-and-write-stats"

static struct exch_features feat;

/* Waits for the counter @name to reach @want; false after @ms. */
static bool wait_stat(const char *name, uint64_t want, unsigned ms)
{
	for (unsigned waited = 0; waited < ms * 1000; waited += SLEEP_STEP_US) {
		if (th_stat(name) >= want)
			return true;
		usleep(SLEEP_STEP_US);
	}
	return th_stat(name) >= want;
}

/* ---- parking ---- */

struct reader {
	volatile uint64_t *word;
	uint64_t seen;
	_Atomic int done;
};

static void *reader_main(void *arg)
{
	struct reader *r = arg;

	r->seen = *r->word;
	atomic_store(&r->done, 1);
	return NULL;
}

START_TEST(test_transit_parks_and_wakes)
{
	exch_arena_t *a, *scratch_arena;
	struct reader rd = { 0 };
	void *scratch;
	pthread_t th;
	char *p;

	ck_assert_int_eq(exch_arena_create(4 * MB, 0, &a), 0);
	ck_assert_int_eq(exch_arena_create(4 * MB, 0, &scratch_arena), 0);
	ck_assert_int_eq(exch_arena_range(scratch_arena, &scratch, NULL), 0);
	p = exch_alloc(a, REGION_SIZE);
	ck_assert_ptr_nonnull(p);
	th_fill(p, REGION_SIZE, 42);

	struct exch_arena *ar = a;
	struct region *r = arena_region(ar, (uintptr_t)p);
	enum region_state old = fault_transit_begin(r);
	ck_assert_int_eq(prim_uffd_move(lib.uffd, scratch, p, REGION_SIZE,
					UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES, NULL), 0);

	rd.word = (volatile uint64_t *)(p + 4096 * 7);
	ck_assert_int_eq(pthread_create(&th, NULL, reader_main, &rd), 0);
	ck_assert(wait_stat("faults_parked", 1, PARK_WAIT_MS));
	/* Parked: the reader cannot have read anything. */
	ck_assert_int_eq(atomic_load(&rd.done), 0);
	ck_assert_uint_eq(th_stat("transit_wakes"), 0);

	ck_assert_int_eq(prim_uffd_move(lib.uffd, p, scratch, REGION_SIZE,
					UFFDIO_MOVE_MODE_DONTWAKE, NULL), 0);
	fault_transit_end(ar, r, old);
	pthread_join(th, NULL);
	ck_assert_int_eq(atomic_load(&rd.done), 1);
	ck_assert_int_eq(th_verify(p, REGION_SIZE, 42), -1);
	ck_assert_uint_eq(rd.seen, *(uint64_t *)(p + 4096 * 7));
	ck_assert_uint_eq(th_stat("transit_wakes"), 1);
	ck_assert_uint_eq(th_stat("transits"), 1);
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
	ck_assert_int_eq(exch_arena_destroy(scratch_arena), 0);
}
END_TEST

/* A fault read after the transit ended is served, not parked. */
START_TEST(test_transit_without_faults)
{
	exch_arena_t *a;
	char *p;

	ck_assert_int_eq(exch_arena_create(2 * MB, 0, &a), 0);
	p = exch_alloc(a, REGION_SIZE);
	struct exch_arena *ar = a;
	struct region *r = arena_region(ar, (uintptr_t)p);
	enum region_state old = fault_transit_begin(r);
	fault_transit_end(ar, r, old);
	p[0] = 1;
	ck_assert_int_eq(p[0], 1);
	ck_assert_uint_eq(th_stat("faults_parked"), 0);
	ck_assert_uint_eq(th_stat("transit_wakes"), 0);
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
}
END_TEST

/* ---- fallbacks ---- */

/* Takes every ready frame out of the pool; returns how many. */
static int drain_pool(void **frames, int max)
{
	int n = 0;

	while (n < max && pool_take(0, &frames[n]) == 0)
		n++;
	return n;
}

START_TEST(test_fallback_pool_empty)
{
	void *frames[4];
	exch_arena_t *a;
	char *p;
	int n;

	setenv("EXCH_POOL_FRAMES", "2", 1);
	ck_assert_int_eq(exch_arena_create(8 * MB, 0, &a), 0);
	ck_assert_int_eq(exch_pool_wait(POOL_WAIT_MS), 0);
	n = drain_pool(frames, 4);
	ck_assert_int_eq(n, 2);
	p = exch_alloc(a, 6 * MB);
	th_fill(p, REGION_SIZE, 1); /* region 0: no frame to be had */
	ck_assert_uint_eq(th_stat("fallback_pool_empty"), 1);
	ck_assert_uint_eq(th_stat("faults_huge"), 0);
	ck_assert_int_eq(th_huge_bytes(p, REGION_SIZE), 0);
	/* a write: zeroed 4K pages went into the whole region in one go */
	ck_assert_uint_eq(th_stat("faults_filled"), 1);
	ck_assert_uint_eq(th_stat("faults_zeropage"), 0);
	ck_assert_uint_eq(th_stat("faults"), 1);
	ck_assert_int_eq(th_private_bytes(p, REGION_SIZE), (long)REGION_SIZE);
	/* a read: the zero page, nothing resident */
	ck_assert_int_eq(((volatile char *)p)[2 * REGION_SIZE + 4096], 0);
	ck_assert_uint_eq(th_stat("fallback_pool_empty"), 2);
	ck_assert_uint_eq(th_stat("faults_zeropage"), 1);
	ck_assert_int_eq(th_private_bytes(p + 2 * REGION_SIZE, REGION_SIZE), 0);
	for (int i = 0; i < n; i++)
		pool_put_back(frames[i]);
	th_fill(p + REGION_SIZE, REGION_SIZE, 2); /* region 1: a frame again */
	ck_assert_uint_eq(th_stat("faults_huge"), 1);
	ck_assert_int_eq(th_huge_bytes(p + REGION_SIZE, REGION_SIZE), (long)REGION_SIZE);
	ck_assert_int_eq(th_verify(p, REGION_SIZE, 1), -1);
	ck_assert_int_eq(th_verify(p + REGION_SIZE, REGION_SIZE, 2), -1);
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
}
END_TEST

/* A one-region arena and the pool's only frame, taken out of the pool. */
static void *take_only_frame(exch_arena_t **a)
{
	void *frames[2];

	setenv("EXCH_POOL_FRAMES", "1", 1);
	ck_assert_int_eq(exch_arena_create(2 * MB, 0, a), 0);
	ck_assert_int_eq(exch_pool_wait(POOL_WAIT_MS), 0);
	ck_assert_int_eq(drain_pool(frames, 2), 1);
	return frames[0];
}

START_TEST(test_fallback_frame_split)
{
	void *frames[1];
	exch_arena_t *a;
	char *p;

	frames[0] = take_only_frame(&a);
	/* Dropping one 4K page splits the THP's PMD into page tables. */
	ck_assert_int_eq(prim_madvise((char *)frames[0] + 4096, 4096, MADV_DONTNEED), 0);
	ck_assert_int_eq(th_huge_bytes(frames[0], REGION_SIZE), 0);
	pool_put_back(frames[0]);
	p = exch_alloc(a, REGION_SIZE);
	th_fill(p, REGION_SIZE, 3);
	ck_assert_uint_eq(th_stat("fallback_frame_not_huge"), 1);
	ck_assert_uint_eq(th_stat("faults_huge"), 0);
	ck_assert_int_eq(th_verify(p, REGION_SIZE, 3), -1);
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
}
END_TEST

START_TEST(test_fallback_move_pinned)
{
	struct io_uring ring;
	struct iovec iov;
	void *frames[1];
	exch_arena_t *a;
	char *p;

	frames[0] = take_only_frame(&a);
	/* A registered buffer pins the frame's pages: the move must refuse. */
	ck_assert_int_eq(io_uring_queue_init(4, &ring, 0), 0);
	iov = (struct iovec){ frames[0], REGION_SIZE };
	ck_assert_int_eq(io_uring_register_buffers(&ring, &iov, 1), 0);
	pool_put_back(frames[0]);
	p = exch_alloc(a, REGION_SIZE);
	th_fill(p, REGION_SIZE, 4);
	ck_assert_uint_eq(th_stat("fallback_move_failed"), 1);
	ck_assert_uint_eq(th_stat("move_errno"), EBUSY);
	ck_assert_uint_eq(th_stat("faults_huge"), 0);
	ck_assert_int_eq(th_verify(p, REGION_SIZE, 4), -1);
	ck_assert_int_eq(th_huge_bytes(p, REGION_SIZE), 0);
	/* The frame was not lost: it went back to the pool. */
	ck_assert_uint_eq(pool_ready(), 1);
	io_uring_unregister_buffers(&ring);
	io_uring_queue_exit(&ring);
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
}
END_TEST

static void touch_expect_small(unsigned flags)
{
	exch_arena_t *a;
	char *p;

	ck_assert_int_eq(exch_arena_create(4 * MB, flags, &a), 0);
	p = exch_alloc(a, 4 * MB);
	th_fill(p, 4 * MB, 5);
	ck_assert_int_eq(th_verify(p, 4 * MB, 5), -1);
	ck_assert_uint_eq(th_stat("faults_huge"), 0);
	ck_assert_uint_eq(th_stat("fallback_huge_off"), 2); /* once per region */
	ck_assert_uint_eq(th_stat("faults_zeropage"), 2); /* one per region */
	ck_assert_uint_eq(th_stat("faults"), 2);
	ck_assert_int_eq(th_huge_bytes(p, 4 * MB), 0);
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
}

START_TEST(test_thp_never)
{
	setenv("EXCH_THP", "never", 1);
	ck_assert_int_eq(exch_init(), 0);
	ck_assert_uint_eq(exch_features()->on & EXCH_ON_HUGE_FIRST, 0);
	ck_assert_uint_ne(exch_features()->on & EXCH_ON_ARENA_UFFD, 0);
	touch_expect_small(0);
}
END_TEST

START_TEST(test_arena_nohuge)
{
	touch_expect_small(EXCH_ARENA_NOHUGE);
}
END_TEST

/* ---- the last line of defence ---- */

/*
 * A region wrongly recorded EMPTY while it holds data (a state bug) must
 * not be DONTNEED'd by hugepage-first: the fault path checks the page
 * tables first. The state is corrupted on purpose here.
 */
START_TEST(test_wrong_empty_state_loses_nothing)
{
	static char before[16 * 4096];
	exch_arena_t *a;
	char *p;

	ck_assert_int_eq(exch_arena_create(2 * MB, EXCH_ARENA_NOHUGE, &a), 0);
	p = exch_alloc(a, 16 * 4096);
	th_fill(p, 16 * 4096, 61);
	memcpy(before, p, sizeof(before));
	ck_assert_int_eq(prim_madvise(p + 3 * 4096, 4096, MADV_DONTNEED), 0); /* a hole */
	struct exch_arena *ar = a;
	fault_quiesce(); /* the service sets the state after it wakes us */
	ar->flags = 0;                                  /* allow hugepage-first */
	arena_region(ar, (uintptr_t)p)->state = REGION_EMPTY;
	ck_assert_int_eq(exch_pool_wait(POOL_WAIT_MS), 0);
	p[3 * 4096] = 1;                                /* fault in the hole */
	ck_assert_uint_eq(th_stat("empty_not_empty"), 1);
	ck_assert_uint_eq(th_stat("faults_huge"), 0);
	ck_assert_int_eq(memcmp(p, before, 3 * 4096), 0);
	ck_assert_int_eq(memcmp(p + 4 * 4096, before + 4 * 4096, 12 * 4096), 0);
	ck_assert_int_eq(p[3 * 4096], 1);
	ck_assert(exch_is_zero(p + 3 * 4096 + 1, 4095));
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
}
END_TEST

/* ---- write-protect faults ---- */

START_TEST(test_wp_fault_unprotected)
{
	struct uffdio_writeprotect wp;
	exch_arena_t *a;
	char *p;

	ck_assert_int_eq(exch_arena_create(2 * MB, EXCH_ARENA_NOHUGE, &a), 0);
	p = exch_alloc(a, 4096);
	p[0] = 1;
	wp = (struct uffdio_writeprotect){
		.range = { (uintptr_t)p, 4096 }, .mode = UFFDIO_WRITEPROTECT_MODE_WP,
	};
	ck_assert_int_eq(ioctl(lib.uffd, UFFDIO_WRITEPROTECT, &wp), 0);
	p[1] = 2; /* faults, is unprotected, retries */
	ck_assert_int_eq(p[0], 1);
	ck_assert_int_eq(p[1], 2);
	ck_assert_uint_eq(th_stat("faults_wp"), 1);
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
}
END_TEST

/* ---- stats output ---- */

START_TEST(test_stats_print)
{
	char buf[16384];
	FILE *f = tmpfile();
	size_t n;

	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(exch_stats_print(NULL, 0), -EINVAL);
	ck_assert_int_eq(exch_stats_print(f, 0), 0);
	ck_assert_int_eq(exch_stats_print(f, 1), 0);
	rewind(f);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	ck_assert_ptr_nonnull(strstr(buf, "fallback_pool_empty"));
	ck_assert_ptr_nonnull(strstr(buf, "the frame pool was empty"));
	ck_assert_ptr_nonnull(strstr(buf, "{\"version\":1,"));
	ck_assert_ptr_nonnull(strstr(buf, "\"faults_huge\":"));
	uint64_t v;
	ck_assert_int_eq(exch_stats_get("no_such_counter", &v), -ENOENT);
}
END_TEST

/* What a process using the library writes to EXCH_STATS_FILE at exit. */
static int use_library_and_exit(const char *stats_file)
{
	exch_arena_t *a;
	char *p;

	setenv("EXCH_STATS_FILE", stats_file, 1);
	if (exch_arena_create(2 * MB, EXCH_ARENA_NOHUGE, &a) < 0)
		return 2;
	p = exch_alloc(a, 8192);
	p[0] = p[4096] = 1;
	exit(0); /* atexit handlers write the file */
}

static void read_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY);
	ssize_t n;

	ck_assert_msg(fd >= 0, "%s was not written", path);
	n = read(fd, buf, size - 1);
	close(fd);
	unlink(path);
	ck_assert_int_gt(n, 0);
	buf[n] = '\0';
}

static void check_stats_json(const char *buf)
{
	ck_assert_ptr_nonnull(strstr(buf, "\"faults_zeropage\":1,"));
	ck_assert_ptr_nonnull(strstr(buf, "\"allocs\":1,"));
}

/* A fork child of the process the library was loaded into writes
 * path.<pid>; the path itself is not touched. */
START_TEST(test_stats_file_fork_child)
{
	char path[] = "/tmp/exch-stats-XXXXXX", child_path[64], buf[16384];
	int fd = mkstemp(path);
	pid_t pid;

	ck_assert_int_ge(fd, 0);
	close(fd);
	unlink(path);
	pid = fork();
	if (pid == 0)
		_exit(use_library_and_exit(path));
	ck_assert_int_eq(waitpid(pid, &fd, 0), pid);
	ck_assert(WIFEXITED(fd) && WEXITSTATUS(fd) == 0);
	ck_assert_int_ne(access(path, F_OK), 0);
	snprintf(child_path, sizeof(child_path), "%s.%d", path, (int)pid);
	read_file(child_path, buf, sizeof(buf));
	check_stats_json(buf);
}
END_TEST

/* A program started fresh writes the path it was given. */
START_TEST(test_stats_file_at_exit)
{
	char path[] = "/tmp/exch-stats-XXXXXX", buf[16384];
	int fd = mkstemp(path), status;
	pid_t pid;

	ck_assert_int_ge(fd, 0);
	close(fd);
	pid = fork();
	if (pid == 0) {
		execl("/proc/self/exe", "check_fault", WRITE_STATS_ARG, path, (char *)NULL);
		_exit(127);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	read_file(path, buf, sizeof(buf));
	check_stats_json(buf);
}
END_TEST

/* "%p" in the path is the process ID, "%%" a "%": a program started
 * fresh, and a fork child (which then adds no ".<pid>" of its own), each
 * write the path with their own pid in it. */
START_TEST(test_stats_file_pid_pattern)
{
	char base[] = "/tmp/exch-stats-XXXXXX", pattern[64], path[96], buf[16384];
	int fd = mkstemp(base), status;
	pid_t pid;

	ck_assert_int_ge(fd, 0);
	close(fd);
	unlink(base);
	snprintf(pattern, sizeof(pattern), "%s-%%p-%%%%.json", base);
	pid = fork();
	if (pid == 0) {
		execl("/proc/self/exe", "check_fault", WRITE_STATS_ARG, pattern, (char *)NULL);
		_exit(127);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	snprintf(path, sizeof(path), "%s-%d-%%.json", base, (int)pid);
	read_file(path, buf, sizeof(buf));
	check_stats_json(buf);

	pid = fork();
	if (pid == 0)
		_exit(use_library_and_exit(pattern));
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	snprintf(path, sizeof(path), "%s-%d-%%.json", base, (int)pid);
	read_file(path, buf, sizeof(buf));
	check_stats_json(buf);
}
END_TEST

/* Runs a child with one EXCH_* variable set; returns what it wrote on stderr. */
static void child_stderr(const char *name, const char *value, char *buf, size_t size)
{
	int fds[2], status;
	pid_t pid;
	ssize_t n, got = 0;

	ck_assert_int_eq(pipe(fds), 0);
	pid = fork();
	if (pid == 0) {
		exch_arena_t *a;
		char *p;

		alarm(CHILD_TIMEOUT_S); /* a hang (a start-up deadlock) fails the test */
		dup2(fds[1], STDERR_FILENO);
		setenv(name, value, 1);
		if (exch_arena_create(2 * MB, EXCH_ARENA_NOHUGE, &a) < 0)
			_exit(2);
		p = exch_alloc(a, 4096);
		p[0] = 1;
		exit(0);
	}
	close(fds[1]);
	while ((n = read(fds[0], buf + got, size - 1 - (size_t)got)) > 0)
		got += n;
	buf[got] = '\0';
	close(fds[0]);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		      "child with %s=%s: status %#x", name, value, status);
}

START_TEST(test_verbose_line)
{
	char buf[8192];

	child_stderr("EXCH_VERBOSE", "1", buf, sizeof(buf));
	ck_assert_ptr_nonnull(strstr(buf, "libexch: arenas: served through userfaultfd"));
	ck_assert_ptr_nonnull(strstr(buf, "libexch: hugepage-first: on"));
	ck_assert_ptr_nonnull(strstr(buf, "libexch: tier: compressed pool up to 1G"));
	ck_assert_ptr_nonnull(strstr(buf, "libexch: background coalescer: off"));
	ck_assert_ptr_nonnull(strstr(buf, "libexch: live counters: /dev/shm/libexch."));
	ck_assert_ptr_null(strstr(buf, "libexch stats")); /* only when asked */
}
END_TEST

START_TEST(test_stats_at_exit)
{
	char buf[16384];

	child_stderr("EXCH_STATS", "1", buf, sizeof(buf));
	ck_assert_ptr_nonnull(strstr(buf, "libexch stats"));
	ck_assert_ptr_nonnull(strstr(buf, "faults_zeropage"));
	ck_assert_ptr_null(strstr(buf, "libexch: arenas:")); /* not verbose */
}
END_TEST

static Suite *fault_suite(void)
{
	Suite *s = suite_create("fault");
	TCase *tc = tcase_create("service");

	tcase_set_timeout(tc, 120);
	if (!(feat.on & EXCH_ON_ARENA_UFFD)) {
		th_skip("fault service tests", "arenas do not use userfaultfd here");
		return s;
	}
	tcase_add_test(tc, test_transit_parks_and_wakes);
	tcase_add_test(tc, test_transit_without_faults);
	if (feat.on & EXCH_ON_FRAME_VERIFY)
		tcase_add_test(tc, test_wrong_empty_state_loses_nothing);
	else
		th_skip("test_wrong_empty_state_loses_nothing", "needs hugepage-first and PAGEMAP_SCAN");
	tcase_add_test(tc, test_thp_never);
	tcase_add_test(tc, test_arena_nohuge);
	if (feat.have & EXCH_HAVE_UFFD_WP)
		tcase_add_test(tc, test_wp_fault_unprotected);
	else
		th_skip("test_wp_fault_unprotected", "no userfaultfd write-protect");
	tcase_add_test(tc, test_stats_print);
	tcase_add_test(tc, test_stats_file_at_exit);
	tcase_add_test(tc, test_stats_file_fork_child);
	tcase_add_test(tc, test_stats_file_pid_pattern);
	if (feat.on & EXCH_ON_HUGE_FIRST)
		tcase_add_test(tc, test_verbose_line);
	else
		th_skip("test_verbose_line", "hugepage-first is off");
	tcase_add_test(tc, test_stats_at_exit);
	suite_add_tcase(s, tc);

	tc = tcase_create("fallbacks");
	tcase_set_timeout(tc, 120);
	if (feat.on & EXCH_ON_FRAME_VERIFY) {
		tcase_add_test(tc, test_fallback_pool_empty);
		tcase_add_test(tc, test_fallback_frame_split);
		tcase_add_test(tc, test_fallback_move_pinned);
	} else {
		th_skip("fallback tests", "hugepage-first or PAGEMAP_SCAN is off");
	}
	suite_add_tcase(s, tc);
	return s;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], WRITE_STATS_ARG))
		return use_library_and_exit(argv[2]);
	return th_main(&feat, fault_suite);
}

/*
 * check_publish.c - live counters (publish.c) read by the real exchstat.
 *
 * Each test starts the library in its own process, so that process
 * publishes /dev/shm/libexch.<pid>; exchstat runs as a child and must see
 * what the test did (arenas, resident bytes, coverage, allocations), fresh
 * each time it asks. Fork children publish their own segment, a killed or
 * exec'd process's segment is removed by exchstat's list, EXCH_PUBLISH=0
 * publishes nothing, and another user cannot open a segment.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"
#include "publish.h"

static struct exch_features feat;

static void seg_path(pid_t pid, char *buf, size_t size)
{
	snprintf(buf, size, "%s/%s%d", PUB_DIR, PUB_PREFIX, (int)pid);
}

static bool seg_exists(pid_t pid)
{
	char path[128];

	seg_path(pid, path, sizeof(path));
	return access(path, F_OK) == 0;
}

/* Runs exchstat with @args; its stdout into @out; its exit status. */
static int exchstat(const char *args, char *out, size_t size)
{
	char cmd[512];
	size_t n = 0;
	FILE *p;
	int st;

	snprintf(cmd, sizeof(cmd), "%s %s", EXCH_EXCHSTAT, args);
	p = popen(cmd, "r");
	ck_assert_ptr_nonnull(p);
	while (n + 1 < size) {
		size_t got = fread(out + n, 1, size - 1 - n, p);

		if (!got)
			break;
		n += got;
	}
	out[n] = '\0';
	st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The value of "name": in exchstat -j output; asserts it is there. */
static uint64_t json_val(const char *json, const char *name)
{
	uint64_t v = th_json_u64(json, name);

	ck_assert_msg(v != UINT64_MAX, "%s missing from: %.200s", name, json);
	return v;
}

static void json_of(pid_t pid, char *out, size_t size)
{
	char args[32];

	snprintf(args, sizeof(args), "-j %d", (int)pid);
	ck_assert_int_eq(exchstat(args, out, size), 0);
	ck_assert_msg(strstr(out, "\"fresh\":true"), "no fresh copy: %.200s", out);
}

START_TEST(test_publish_segment)
{
	char path[128];
	struct stat st;

	ck_assert_int_eq(exch_init(), 0);
	seg_path(getpid(), path, sizeof(path));
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_int_eq(st.st_mode & 07777, 0600);
	ck_assert_int_eq(st.st_uid, geteuid());
	ck_assert_uint_ge(st.st_size, sizeof(struct pub_header));
}
END_TEST

/* Two reads, with memory touched between them: both show what is there. */
START_TEST(test_exchstat_live)
{
	static char out[65536];
	exch_arena_t *a;
	char *p, *q;
	uint64_t res1, res2;

	ck_assert_int_eq(exch_arena_create(64 * MB, 0, &a), 0);
	p = exch_alloc(a, 8 * MB);
	ck_assert_ptr_nonnull(p);
	th_fill(p, 8 * MB, 1);
	json_of(getpid(), out, sizeof(out));
	ck_assert_uint_eq(json_val(out, "arenas_live"), 1);
	ck_assert_uint_eq(json_val(out, "allocs"), 1);
	res1 = json_val(out, "resident_bytes");
	ck_assert_uint_eq(res1, 8 * MB);
	if (feat.on & EXCH_ON_HUGE_FIRST)
		ck_assert_uint_eq(json_val(out, "hugepage_coverage_pct"), 100);

	q = exch_alloc(a, 16 * MB);
	ck_assert_ptr_nonnull(q);
	th_fill(q, 16 * MB, 2);
	json_of(getpid(), out, sizeof(out));
	ck_assert_uint_eq(json_val(out, "allocs"), 2);
	res2 = json_val(out, "resident_bytes");
	ck_assert_uint_eq(res2, 24 * MB);
	ck_assert_int_eq(th_verify(p, 8 * MB, 1), -1);
	ck_assert_int_eq(th_verify(q, 16 * MB, 2), -1);
	exch_arena_destroy(a);
}
END_TEST

/* The vmstat-like rows, and -a's reasons. */
START_TEST(test_exchstat_rows)
{
	static char out[65536];
	exch_arena_t *a;
	char args[64], *line;
	int rows = 0;
	char *p;

	ck_assert_int_eq(exch_arena_create(64 * MB, 0, &a), 0);
	p = exch_alloc(a, 4 * MB);
	ck_assert_ptr_nonnull(p);
	memset(p, 7, 4 * MB);
	snprintf(args, sizeof(args), "-i 0.1 -c 3 %d", (int)getpid());
	ck_assert_int_eq(exchstat(args, out, sizeof(out)), 0);
	ck_assert_msg(strstr(out, "huge%") && strstr(out, "flt/s"), "no header: %s", out);
	for (line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
		double rss, res;
		unsigned arenas;

		if (sscanf(line, "%lf %u %lf", &rss, &arenas, &res) != 3)
			continue;
		ck_assert_uint_eq(arenas, 1);
		ck_assert(res >= 3.99 && res <= 4.01);
		ck_assert(!strstr(line, "no answer"));
		rows++;
	}
	ck_assert_int_eq(rows, 3);

	snprintf(args, sizeof(args), "-a %d", (int)getpid());
	ck_assert_int_eq(exchstat(args, out, sizeof(out)), 0);
	ck_assert_ptr_nonnull(strstr(out, "hugepage_coverage_pct"));
	ck_assert_ptr_nonnull(strstr(out, "huge_bytes over resident_bytes"));
	exch_arena_destroy(a);
}
END_TEST

/* A fork child that uses the library publishes its own segment, and
 * removes it at exit; the parent's stays and still answers. */
START_TEST(test_publish_fork)
{
	static char out[65536];
	int go[2], ready[2];
	exch_arena_t *a;
	char c = 0, *p;
	pid_t pid;
	int st;

	ck_assert_int_eq(exch_arena_create(16 * MB, 0, &a), 0);
	p = exch_alloc(a, 2 * MB);
	memset(p, 1, 2 * MB);
	ck_assert_int_eq(pipe(go), 0);
	ck_assert_int_eq(pipe(ready), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		char *q = exch_alloc(a, 4 * MB); /* starts the library here */

		memset(q, 2, 4 * MB);
		if (write(ready[1], "r", 1) != 1 || read(go[0], &c, 1) != 1)
			_exit(2);
		exit(0);
	}
	ck_assert_int_eq(read(ready[0], &c, 1), 1);
	ck_assert(seg_exists(pid));
	json_of(pid, out, sizeof(out));
	ck_assert_uint_eq(json_val(out, "pid"), (uint64_t)pid);
	ck_assert_uint_eq(json_val(out, "resident_bytes"), 6 * MB);
	json_of(getpid(), out, sizeof(out));
	ck_assert_uint_eq(json_val(out, "pid"), (uint64_t)getpid());
	ck_assert_uint_eq(json_val(out, "resident_bytes"), 2 * MB);
	ck_assert_int_eq(write(go[1], "g", 1), 1);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	ck_assert(!seg_exists(pid));
	ck_assert(seg_exists(getpid()));
	exch_arena_destroy(a);
}
END_TEST

/* A child started the library and then died (@how: "kill") or exec'd a
 * program without it ("exec"); exchstat's list removes its segment. */
static void stale(const char *how)
{
	static char out[65536];
	int ready[2];
	char c, needle[128];
	pid_t pid;
	int st;

	ck_assert_int_eq(pipe(ready), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		close(ready[0]);
		if (exch_init() < 0 || write(ready[1], "r", 1) != 1)
			_exit(2);
		if (!strcmp(how, "kill"))
			raise(SIGKILL);
		execl("/bin/sleep", "sleep", "30", (char *)NULL);
		_exit(3);
	}
	close(ready[1]);
	ck_assert_int_eq(read(ready[0], &c, 1), 1);
	if (!strcmp(how, "kill"))
		ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	else
		usleep(200 * 1000); /* the exec has closed the locked fd */
	/* A killed process's file may also be swept by any process of this
	 * user that starts publishing meanwhile (test_stale_swept); an exec'd
	 * one's only by exchstat. */
	ck_assert(!strcmp(how, "kill") || seg_exists(pid));
	ck_assert_int_eq(exchstat("", out, sizeof(out)), 0);
	snprintf(needle, sizeof(needle), "removed %s/%s%d", PUB_DIR, PUB_PREFIX, (int)pid);
	ck_assert_msg(!strcmp(how, "kill") || strstr(out, needle), "not removed: %s", out);
	snprintf(needle, sizeof(needle), "%7d ", (int)pid);
	ck_assert_msg(!strstr(out, needle), "a gone process listed: %s", out);
	ck_assert(!seg_exists(pid));
	if (strcmp(how, "kill")) {
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
	}
}

START_TEST(test_stale_killed) { stale("kill"); }
END_TEST

/* A child that ends with _exit leaves its segment; the next process to
 * start publishing removes it. */
START_TEST(test_stale_swept)
{
	pid_t first, second;
	int st;

	first = fork();
	ck_assert_int_ge(first, 0);
	if (first == 0)
		_exit(exch_init() == 0 ? 0 : 2);
	ck_assert_int_eq(waitpid(first, &st, 0), first);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	ck_assert(seg_exists(first));
	second = fork();
	ck_assert_int_ge(second, 0);
	if (second == 0) {
		if (exch_init() < 0)
			_exit(2);
		for (int i = 0; i < 200 && seg_exists(first); i++)
			usleep(10 * 1000);
		_exit(seg_exists(first) ? 1 : 0);
	}
	ck_assert_int_eq(waitpid(second, &st, 0), second);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "segment of a gone process kept");
	ck_assert(!seg_exists(first));
}
END_TEST

START_TEST(test_stale_exec) { stale("exec"); }
END_TEST

/* A live process is listed, and not removed. */
START_TEST(test_list_live)
{
	static char out[65536];
	char needle[32];

	ck_assert_int_eq(exch_init(), 0);
	ck_assert_int_eq(exchstat("", out, sizeof(out)), 0);
	snprintf(needle, sizeof(needle), "%7d check_publish", (int)getpid());
	ck_assert_msg(strstr(out, needle), "not listed: %s", out);
	ck_assert(seg_exists(getpid()));
}
END_TEST

START_TEST(test_publish_off)
{
	static char out[4096];
	char args[32];

	setenv("EXCH_PUBLISH", "0", 1);
	opt_reload();
	ck_assert_int_eq(exch_init(), 0);
	ck_assert(!seg_exists(getpid()));
	snprintf(args, sizeof(args), "%d 2>&1", (int)getpid());
	ck_assert_int_eq(exchstat(args, out, sizeof(out)), 1);
	ck_assert_msg(strstr(out, "publishes no libexch counters"), "%s", out);
}
END_TEST

/* Root's segment, opened by nobody: refused by the mode. */
START_TEST(test_other_user)
{
	static char out[4096];
	char path[128], cmd[512];
	FILE *p;
	size_t n;
	pid_t pid;
	int st;

	ck_assert_int_eq(exch_init(), 0);
	seg_path(getpid(), path, sizeof(path));
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		if (setgid(65534) < 0 || setuid(65534) < 0)
			_exit(2);
		int fd = open(path, O_RDONLY);

		_exit(fd < 0 && errno == EACCES ? 0 : 1);
	}
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	snprintf(cmd, sizeof(cmd), "setpriv --reuid=65534 --regid=65534 --clear-groups %s %d 2>&1",
		 EXCH_EXCHSTAT, (int)getpid());
	p = popen(cmd, "r");
	ck_assert_ptr_nonnull(p);
	n = fread(out, 1, sizeof(out) - 1, p);
	out[n] = '\0';
	st = pclose(p);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "exchstat as nobody: %s", out);
	ck_assert_msg(strstr(out, "Permission denied"), "%s", out);
}
END_TEST

static Suite *publish_suite(void)
{
	Suite *s = suite_create("publish");
	TCase *tc = tcase_create("publish");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_publish_segment);
	tcase_add_test(tc, test_exchstat_live);
	tcase_add_test(tc, test_exchstat_rows);
	tcase_add_test(tc, test_publish_fork);
	tcase_add_test(tc, test_stale_killed);
	tcase_add_test(tc, test_stale_exec);
	tcase_add_test(tc, test_stale_swept);
	tcase_add_test(tc, test_list_live);
	tcase_add_test(tc, test_publish_off);
	if (geteuid() == 0 && access("/usr/bin/setpriv", X_OK) == 0)
		tcase_add_test(tc, test_other_user);
	else
		th_skip("the other-user test", "it needs root and setpriv to become another user");
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return th_main(&feat, publish_suite);
}

/*
 * check_nouffd.c - the library where userfaultfd is denied, for real.
 *
 * Each test installs a seccomp filter that makes userfaultfd(2) and the
 * USERFAULTFD_IOC_NEW ioctl of /dev/userfaultfd fail with EPERM, as a
 * container runtime's profile would, and only then starts the library. The
 * library must say what it lost, and arenas must still work as plain memory
 * backed by the kernel's THP faults. EXCH_UFFD=0 must give the same without
 * a filter.
 */
#include "config.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

static void deny_userfaultfd(void)
{
	struct sock_filter filter[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_userfaultfd, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_ioctl, 0, 3),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1])),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, USERFAULTFD_IOC_NEW, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { sizeof(filter) / sizeof(filter[0]), filter };

	ck_assert_int_eq(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
	ck_assert_int_eq(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog), 0);
	ck_assert_int_eq(syscall(__NR_userfaultfd, 0), -1);
	ck_assert_int_eq(errno, EPERM);
}

/* Arenas as plain memory: contents, zeroed reuse, kernel THP, misuse. */
static void plain_arena_works(void)
{
	const size_t len = 64 * MB;
	exch_arena_t *a;
	char *p, *q;

	ck_assert_int_eq(exch_arena_create(len, 0, &a), 0);
	p = exch_alloc(a, len / 2);
	q = exch_alloc(a, 3 * 4096);
	ck_assert_ptr_nonnull(p);
	ck_assert_ptr_nonnull(q);
	th_fill(p, len / 2, 9);
	th_fill(q, 3 * 4096, 10);
	ck_assert_int_eq(th_verify(p, len / 2, 9), -1);
	ck_assert_int_eq(th_verify(q, 3 * 4096, 10), -1);
	/* MADV_HUGEPAGE: the kernel's THP fault backs the arena */
	ck_assert_int_gt(th_huge_bytes(p, len / 2), 0);
	ck_assert_int_eq(exch_free(a, q), 0);
	ck_assert_int_eq(exch_free(a, q), -EINVAL);
	q = exch_alloc(a, 3 * 4096);
	ck_assert(exch_is_zero(q, 3 * 4096));
	ck_assert_int_eq(exch_arena_destroy(a), -EBUSY);
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_int_eq(exch_free(a, q), 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
	ck_assert_uint_eq(th_stat("faults"), 0);
}

START_TEST(test_seccomp_denied)
{
	const struct exch_features *f;

	deny_userfaultfd();
	f = exch_features();
	ck_assert_int_eq(f->uffd_mode, EXCH_UFFD_NONE);
	ck_assert_uint_eq(f->on, 0);
	ck_assert_uint_ge(th_stat("degraded"), 1);
	ck_assert_int_eq(exch_pool_wait(10), -EOPNOTSUPP);
	plain_arena_works();
}
END_TEST

START_TEST(test_seccomp_fork)
{
	exch_arena_t *a;
	int status;
	char *p;

	deny_userfaultfd();
	ck_assert_int_eq(exch_arena_create(8 * MB, 0, &a), 0);
	p = exch_alloc(a, 4 * MB);
	th_fill(p, 4 * MB, 11);
	pid_t pid = fork();
	if (pid == 0) {
		char *q = exch_alloc(a, 2 * MB);

		th_fill(q, 2 * MB, 12);
		_exit(th_verify(p, 4 * MB, 11) == -1 && th_verify(q, 2 * MB, 12) == -1 ? 0 : 1);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status));
	ck_assert_int_eq(WEXITSTATUS(status), 0);
	ck_assert_int_eq(th_verify(p, 4 * MB, 11), -1);
}
END_TEST

START_TEST(test_uffd_option_off)
{
	setenv("EXCH_UFFD", "0", 1);
	ck_assert_uint_eq(exch_features()->on, 0);
	ck_assert_int_ne(exch_features()->uffd_mode, EXCH_UFFD_NONE);
	ck_assert_uint_eq(th_stat("degraded"), 0); /* asked for, not degraded */
	plain_arena_works();
}
END_TEST

int main(void)
{
	Suite *s = suite_create("nouffd");
	TCase *tc = tcase_create("plain");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_seccomp_denied);
	tcase_add_test(tc, test_seccomp_fork);
	tcase_add_test(tc, test_uffd_option_off);
	suite_add_tcase(s, tc);
	return th_run(s);
}

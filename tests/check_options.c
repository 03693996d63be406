/*
 * check_options.c - the EXCH_* options table.
 *
 * Size parsing with suffixes, every kind of option, and bad values: each
 * must warn with the variable, the value and the default kept, count in
 * options_invalid, and leave the default in force.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"

START_TEST(test_parse_size)
{
	long long v;

	ck_assert_int_eq(opt_parse_size("0", &v), 0);
	ck_assert_int_eq(v, 0);
	ck_assert_int_eq(opt_parse_size("123", &v), 0);
	ck_assert_int_eq(v, 123);
	ck_assert_int_eq(opt_parse_size("4k", &v), 0);
	ck_assert_int_eq(v, 4096);
	ck_assert_int_eq(opt_parse_size("2M", &v), 0);
	ck_assert_int_eq(v, 2 << 20);
	ck_assert_int_eq(opt_parse_size("1GiB", &v), 0);
	ck_assert_int_eq(v, 1LL << 30);
	ck_assert_int_eq(opt_parse_size("3t", &v), 0);
	ck_assert_int_eq(v, 3LL << 40);
	ck_assert_int_eq(opt_parse_size("16MB", &v), 0);
	ck_assert_int_eq(v, 16LL << 20);
	v = 77;
	ck_assert_int_eq(opt_parse_size("", &v), -EINVAL);
	ck_assert_int_eq(opt_parse_size("-1", &v), -EINVAL);
	ck_assert_int_eq(opt_parse_size(" 1", &v), -EINVAL);
	ck_assert_int_eq(opt_parse_size("12x", &v), -EINVAL);
	ck_assert_int_eq(opt_parse_size("2MM", &v), -EINVAL);
	ck_assert_int_eq(opt_parse_size("k", &v), -EINVAL);
	ck_assert_int_eq(opt_parse_size("99999999999999999999", &v), -ERANGE);
	ck_assert_int_eq(opt_parse_size("16777216T", &v), -ERANGE);
	ck_assert_int_eq(v, 77); /* untouched on error */
}
END_TEST

START_TEST(test_defaults)
{
	ck_assert_int_eq(opt_get(OPT_VERBOSE), 0);
	ck_assert_int_eq(opt_get(OPT_UFFD), 1);
	ck_assert_int_eq(opt_get(OPT_THP), 0);
	ck_assert_int_eq(opt_get(OPT_POOL_FRAMES), 32);
	ck_assert_int_eq(opt_get(OPT_FAULT_THREADS), 1);
	ck_assert_int_eq(opt_get(OPT_SIMD), -1);
	ck_assert_str_eq(opt_str(OPT_SIMD), "");
	ck_assert_str_eq(opt_str(OPT_STATS_FILE), "");
	ck_assert_uint_eq(th_stat("options_invalid"), 0);
}
END_TEST

START_TEST(test_good_values)
{
	setenv("EXCH_VERBOSE", "yes", 1);
	setenv("EXCH_THP", "NEVER", 1);
	setenv("EXCH_POOL_FRAMES", "64", 1);
	setenv("EXCH_NT_THRESHOLD", "2M", 1);
	setenv("EXCH_SIMD", "avx2", 1);
	setenv("EXCH_STATS_FILE", "/tmp/x.json", 1);
	opt_reload();
	ck_assert_int_eq(opt_get(OPT_VERBOSE), 1);
	ck_assert_int_eq(opt_get(OPT_THP), 1);
	ck_assert_str_eq(opt_str(OPT_THP), "never");
	ck_assert_int_eq(opt_get(OPT_POOL_FRAMES), 64);
	ck_assert_int_eq(opt_get(OPT_NT_THRESHOLD), 2 << 20);
	ck_assert_int_eq(opt_get(OPT_SIMD), EXCH_SIMD_AVX2);
	ck_assert_str_eq(opt_str(OPT_STATS_FILE), "/tmp/x.json");
	ck_assert_uint_eq(th_stat("options_invalid"), 0);
}
END_TEST

/* Runs opt_reload() with stderr captured into @buf. */
static void reload_capturing(char *buf, size_t size)
{
	FILE *f = tmpfile();
	int saved = dup(STDERR_FILENO);
	size_t n;

	ck_assert_ptr_nonnull(f);
	dup2(fileno(f), STDERR_FILENO);
	opt_reload();
	dup2(saved, STDERR_FILENO);
	close(saved);
	rewind(f);
	n = fread(buf, 1, size - 1, f);
	buf[n] = '\0';
	fclose(f);
}

START_TEST(test_bad_values_keep_defaults)
{
	char err[4096], longpath[400];

	memset(longpath, 'a', sizeof(longpath) - 1);
	longpath[sizeof(longpath) - 1] = '\0';
	setenv("EXCH_POOL_FRAMES", "abc", 1);
	setenv("EXCH_FAULT_THREADS", "0", 1);      /* below its minimum */
	setenv("EXCH_THP", "sometimes", 1);
	setenv("EXCH_SIMD", "mmx", 1);
	setenv("EXCH_VERBOSE", "2", 1);
	setenv("EXCH_NT_THRESHOLD", "-5", 1);
	setenv("EXCH_STATS_FILE", longpath, 1);
	reload_capturing(err, sizeof(err));
	ck_assert_int_eq(opt_get(OPT_POOL_FRAMES), 32);
	ck_assert_int_eq(opt_get(OPT_FAULT_THREADS), 1);
	ck_assert_int_eq(opt_get(OPT_THP), 0);
	ck_assert_int_eq(opt_get(OPT_SIMD), -1);
	ck_assert_int_eq(opt_get(OPT_VERBOSE), 0);
	ck_assert_int_eq(opt_get(OPT_NT_THRESHOLD), 0);
	ck_assert_str_eq(opt_str(OPT_STATS_FILE), "");
	ck_assert_uint_eq(th_stat("options_invalid"), 7);
	ck_assert_ptr_nonnull(strstr(err, "libexch: EXCH_POOL_FRAMES=\"abc\" is not valid"));
	ck_assert_ptr_nonnull(strstr(err, "keeping the default 32"));
	ck_assert_ptr_nonnull(strstr(err, "EXCH_THP=\"sometimes\""));
	ck_assert_ptr_nonnull(strstr(err, "keeping the default always"));
	ck_assert_ptr_nonnull(strstr(err, "EXCH_SIMD=\"mmx\""));
	ck_assert_ptr_nonnull(strstr(err, "keeping the default auto"));
}
END_TEST

/* Names that only share a prefix are not ours. */
START_TEST(test_prefix_match_is_exact)
{
	setenv("EXCH_POOL_FRAMES_X", "7", 1);
	setenv("EXCH_POOL", "9", 1);
	opt_reload();
	ck_assert_int_eq(opt_get(OPT_POOL_FRAMES), 32);
	ck_assert_uint_eq(th_stat("options_invalid"), 0);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("options");
	TCase *tc = tcase_create("options");

	tcase_add_test(tc, test_parse_size);
	tcase_add_test(tc, test_defaults);
	tcase_add_test(tc, test_good_values);
	tcase_add_test(tc, test_bad_values_keep_defaults);
	tcase_add_test(tc, test_prefix_match_is_exact);
	suite_add_tcase(s, tc);
	return th_run(s);
}

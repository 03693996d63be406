/*
 * check_exports.c - the installed library exports exch_* and nothing else.
 *
 * Opens the built libexch.so and looks symbols up: the public API must be
 * there, and internal functions of every file must not be.
 */
#include "config.h"

#include <check.h>
#include <dlfcn.h>
#include <stdlib.h>

#include "exch.h"

static const char *const public_syms[] = {
	"exch_init", "exch_features", "exch_arena_create", "exch_arena_destroy",
	"exch_alloc", "exch_free", "exch_copy", "exch_exchange", "exch_zero",
	"exch_is_zero", "exch_crc32c", "exch_stats_print", "exch_stats_get",
	"exch_pool_wait", "exch_arena_coverage", "exch_arena_range",
	"exch_alloc_size", "exch_features_print", "exch_simd_name",
};

static const char *const internal_syms[] = {
	"prim_map", "opt_get", "stat_values", "topo_get", "arena_lookup",
	"fault_start", "pool_take", "feat_probe", "lib_ensure", "xcopy_ops",
	"log_warn", "lib",
};

START_TEST(test_exports)
{
	void *h = dlopen(EXCH_SO, RTLD_NOW | RTLD_LOCAL);

	ck_assert_msg(h != NULL, "dlopen %s: %s", EXCH_SO, dlerror());
	for (size_t i = 0; i < sizeof(public_syms) / sizeof(public_syms[0]); i++)
		ck_assert_msg(dlsym(h, public_syms[i]) != NULL, "%s missing", public_syms[i]);
	for (size_t i = 0; i < sizeof(internal_syms) / sizeof(internal_syms[0]); i++)
		ck_assert_msg(dlsym(h, internal_syms[i]) == NULL, "%s exported", internal_syms[i]);
	dlclose(h);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("exports");
	TCase *tc = tcase_create("symbols");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, test_exports);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

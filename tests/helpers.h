/*
 * helpers.h - what the libexch test programs share.
 *
 * Check runs every test in a forked child of the runner. The runner itself
 * never initialises libexch: it probes the features in a throw-away child
 * (th_probe), so each test starts the library fresh, with the environment
 * the test sets first. A tcase whose feature is missing is not added, and
 * th_skip() prints why; on this project's machines nothing should skip.
 */
#ifndef EXCH_TEST_HELPERS_H
#define EXCH_TEST_HELPERS_H

#include <check.h>
#include <stdbool.h>
#include <stdint.h>

#include "internal.h"

#define MB (1024ul * 1024ul)
#define TH_SKIP_EXIT 77

/* The library's features, probed in a child process. 0 or -errno. */
int th_probe(struct exch_features *f);
/* Prints "skipping <what>: <why>". */
void th_skip(const char *what, const char *why);
/* AnonHugePages (bytes) of the mapping that contains @p, or -1. */
long th_smaps_huge_bytes(const void *p);
/* PMD-mapped bytes of [p, p+len) by PAGEMAP_SCAN, or -errno. */
long th_huge_bytes(const void *p, size_t len);
/* A counter, once the fault service has finished what it has read. */
uint64_t th_stat(const char *name);
/* Bytes of [p, p+len) backed by private pages (present, not the zero page). */
long th_private_bytes(const void *p, size_t len);
/* A per-page pattern: one 64-bit word per 512 bytes, from @seed. */
void th_fill(void *p, size_t len, uint64_t seed);
/* Offset of the first byte that differs from th_fill's pattern, or -1. */
long th_verify(const void *p, size_t len, uint64_t seed);
/* How long a test waits for a full frame pool. */
#define TH_POOL_WAIT_MS 20000
/* A NOHUGE arena of @len whose bytes are written with th_fill: 4K pages. */
char *th_written(exch_arena_t **a, size_t len, uint64_t seed);
/* The same, asserted 4K-mapped, once the frame pool is full. */
char *th_small_pages(exch_arena_t **a, size_t len, uint64_t seed);
/*
 * Makes [p, p+len) of @a hugepages if it is not already: a first touch may
 * leave a region 4K pages when the kernel keeps the page table the fault
 * made (fallback_move_split), and a test that needs a hugepage coalesces
 * it then. Asserts the result.
 */
void th_make_huge(exch_arena_t *a, void *p, size_t len);
/* The number after "name": in a JSON text, or UINT64_MAX if absent. */
uint64_t th_json_u64(const char *json, const char *name);
/* Removes every EXCH_* variable, so tests start from the defaults. */
void th_clean_env(void);
/* Runs the suite in fork mode; the process exit status. */
int th_run(Suite *s);
/* Probes into *@f, prints the feature line, builds the suite (which may
 * leave out what *@f lacks) and runs it; the process exit status. */
int th_main(struct exch_features *f, Suite *(*build)(void));

#endif

/*
 * check_tier.c - the compressed tier, for real: pages evicted from arenas
 * with UFFDIO_MOVE, stored as a word, in the zbud pool or in a swap file
 * written with io_uring, and restored by the fault service on touch.
 *
 * Every test checks the contents of every page it evicted after they come
 * back, on a realistic mix of pages (bench/mix.h): zeros, a repeated word,
 * random bytes (incompressible), text, pointers and numbers.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"
#include "mix.h"

#define PAGE MIX_PAGE
#define THREADS 4
#define STRESS_MS 2000

static struct exch_features feat;

static char *mix_arena(exch_arena_t **a, size_t len, unsigned flags, uint64_t seed)
{
	char *p;

	ck_assert_int_eq(exch_arena_create(len * 2, flags, a), 0);
	p = exch_alloc(*a, len);
	ck_assert_ptr_nonnull(p);
	mix_fill(p, len / PAGE, seed);
	return p;
}

/* ---- SIGBUS, for pages that must not come back ---- */

static sigjmp_buf bus_jump;

static void bus_handler(int sig)
{
	(void)sig;
	siglongjmp(bus_jump, 1);
}

/* Does reading the byte at @p raise SIGBUS? */
static bool read_raises_sigbus(const volatile char *p)
{
	struct sigaction sa = { .sa_handler = bus_handler }, old;
	bool bus = false;

	sigaction(SIGBUS, &sa, &old);
	if (sigsetjmp(bus_jump, 1) == 0)
		(void)*p;
	else
		bus = true;
	sigaction(SIGBUS, &old, NULL);
	return bus;
}

/* ---- round trips ---- */

static void round_trip(unsigned flags, unsigned reclaim_flags, size_t len)
{
	exch_arena_t *a;
	char *p = mix_arena(&a, len, flags, 11);
	uint64_t evicted0 = th_stat("evicted_pages"), restored0 = th_stat("restored_pages");
	long before = th_private_bytes(p, len), got;

	got = exch_reclaim(a, len, reclaim_flags);
	ck_assert_int_gt(got, 0);
	/* Every page but the zero ones held data; every one is gone now. */
	ck_assert_int_eq(th_private_bytes(p, len), 0);
	ck_assert_int_ge(th_stat("evicted_pages") - evicted0, (uint64_t)before / PAGE);
	ck_assert_int_eq(th_stat("tier_pages"), (uint64_t)got / PAGE);
	ck_assert_int_eq(mix_verify(p, len / PAGE, 11), -1);
	ck_assert_int_eq(th_stat("restored_pages") - restored0, (uint64_t)got / PAGE);
	ck_assert_int_eq(th_stat("tier_pages"), 0);
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
}

START_TEST(test_tier_round_trip_huge)
{
	th_clean_env();
	round_trip(0, 0, 16 * MB);
	/* Text, pointers and numbers compressed; random pages went raw to swap. */
	ck_assert_int_gt(th_stat("tier_lz4_pages"), 0);
	ck_assert_int_gt(th_stat("tier_same_pages"), 0);
	ck_assert_int_gt(th_stat("tier_raw_pages"), 0);
	ck_assert_int_gt(th_stat("tier_swap_restores"), 0);
}
END_TEST

START_TEST(test_tier_round_trip_small_pages)
{
	th_clean_env();
	round_trip(EXCH_ARENA_NOHUGE, 0, 8 * MB);
}
END_TEST

START_TEST(test_tier_round_trip_swap)
{
	uint64_t written0;

	th_clean_env();
	written0 = th_stat("swap_pages_written");
	round_trip(0, EXCH_RECLAIM_SWAP, 8 * MB);
	/* Everything but the same-filled pages went to the file. */
	ck_assert_int_eq(th_stat("swap_pages_written") - written0,
			 th_stat("tier_lz4_pages") + th_stat("tier_raw_pages"));
	ck_assert_int_eq(th_stat("tier_lz4_pages") + th_stat("tier_raw_pages"),
			 mix_count(2048, MIX_RANDOM, MIX_NUMBERS));
	ck_assert_int_eq(th_stat("swap_mismatches"), 0);
}
END_TEST

/* The pool at its cap: its least recently used pages go to swap. */
START_TEST(test_tier_pool_cap_spills_to_swap)
{
	exch_arena_t *a;
	char *p;

	th_clean_env();
	setenv("EXCH_TIER_MAX", "1M", 1);
	opt_reload();
	p = mix_arena(&a, 32 * MB, 0, 5);
	ck_assert_int_gt(exch_reclaim(a, 32 * MB, 0), 0);
	ck_assert_int_le(th_stat("tier_pool_bytes"), 1 * MB);
	ck_assert_int_gt(th_stat("tier_pool_reclaims"), 0);
	ck_assert_int_gt(th_stat("swap_pages_written"), th_stat("tier_raw_pages"));
	ck_assert_int_eq(mix_verify(p, 32 * MB / PAGE, 5), -1);
	ck_assert_int_eq(th_stat("tier_pages"), 0);
}
END_TEST

/* No swap: pages that do not compress stay where they are. */
START_TEST(test_tier_no_swap_keeps_pages)
{
	exch_arena_t *a;
	char *p;

	th_clean_env();
	setenv("EXCH_SWAP_MAX", "0", 1);
	opt_reload();
	p = mix_arena(&a, 6 * MB, 0, 9);
	ck_assert_int_gt(exch_reclaim(a, 6 * MB, 0), 0);
	ck_assert_int_eq(th_stat("swap_pages_written"), 0);
	ck_assert_int_eq(th_stat("tier_evict_kept"), mix_count(6 * MB / PAGE, MIX_RANDOM, MIX_RANDOM));
	ck_assert_int_ge(th_private_bytes(p, 6 * MB), (long)(6 * MB / MIX__COUNT));
	ck_assert_int_eq(mix_verify(p, 6 * MB / PAGE, 9), -1);
}
END_TEST

/* A swap directory that cannot be used: one warning, the same as no swap. */
START_TEST(test_tier_bad_swap_dir)
{
	exch_arena_t *a;
	char *p;

	th_clean_env();
	setenv("EXCH_SWAP_DIR", "/nonexistent/exch", 1);
	opt_reload();
	p = mix_arena(&a, 2 * MB, 0, 10);
	ck_assert_int_gt(exch_reclaim(a, 2 * MB, 0), 0);
	ck_assert_int_eq(th_stat("degraded"), 1);
	ck_assert_int_eq(th_stat("tier_evict_kept"), mix_count(2 * MB / PAGE, MIX_RANDOM, MIX_RANDOM));
	ck_assert_int_eq(mix_verify(p, 2 * MB / PAGE, 10), -1);
}
END_TEST

START_TEST(test_tier_advise_cold_hot)
{
	exch_arena_t *a;
	char *p;
	uint64_t restored0;

	th_clean_env();
	p = mix_arena(&a, 4 * MB, 0, 3);
	/* One page in the middle of a hugepage, then a range across regions. */
	ck_assert_int_eq(exch_advise(p + 7 * PAGE, PAGE, EXCH_COLD), 0);
	ck_assert_int_eq(th_private_bytes(p + 7 * PAGE, PAGE), 0);
	/* Its neighbours stay (zero-filled ones may become the zero page when
	 * the kernel splits the hugepage). */
	ck_assert_int_eq(th_private_bytes(p + PAGE, 5 * PAGE), 5 * PAGE);
	ck_assert_int_eq(exch_advise(p + MB, 2 * MB, EXCH_COLD), 0);
	ck_assert_int_le(th_private_bytes(p + MB, 2 * MB), (long)(2 * MB / MIX__COUNT));
	restored0 = th_stat("restored_pages");
	ck_assert_int_eq(exch_advise(p, 4 * MB, EXCH_HOT), 0);
	/* Back without a single fault: resident again, every word right. */
	ck_assert_int_eq(th_stat("tier_pages"), 0);
	ck_assert_int_gt(th_stat("restored_pages") - restored0, 0);
	ck_assert_int_eq(mix_verify(p, 4 * MB / PAGE, 3), -1);
}
END_TEST

/* ---- freed memory never comes back with old contents ---- */

START_TEST(test_tier_dontneed_reads_zeros)
{
	exch_arena_t *a;
	char *p;

	th_clean_env();
	p = mix_arena(&a, 4 * MB, 0, 4);
	ck_assert_int_gt(exch_reclaim(a, 4 * MB, 0), 0);
	ck_assert_int_eq(exch_advise(p, 2 * MB + 5 * PAGE, EXCH_DONTNEED), 0);
	ck_assert_int_gt(th_stat("tier_discarded"), 0);
	for (size_t i = 0; i < 2 * MB + 5 * PAGE; i += 512)
		ck_assert_int_eq(p[i], 0);
	ck_assert_int_eq(mix_check(p, 2 * MB / PAGE + 5, 2 * MB / PAGE - 5, 4), -1);
}
END_TEST

START_TEST(test_tier_free_then_alloc_reads_zeros)
{
	exch_arena_t *a;
	char *p, *q;

	th_clean_env();
	ck_assert_int_eq(exch_arena_create(8 * MB, 0, &a), 0);
	p = exch_alloc(a, 64 * PAGE);
	mix_fill(p, 64, 6);
	ck_assert_int_gt(exch_reclaim(a, 64 * PAGE, 0), 0);
	ck_assert_int_eq(exch_free(a, p), 0);
	q = exch_alloc(a, 64 * PAGE);
	ck_assert_ptr_eq(q, p);
	ck_assert_int_eq(exch_is_zero(q, 64 * PAGE), 1);
	ck_assert_int_eq(th_stat("tier_pages"), 0);
}
END_TEST

/* ---- pages that must stay ---- */

START_TEST(test_tier_mlocked_not_evicted)
{
	static const unsigned flags[] = { 0, EXCH_ARENA_NOHUGE };

	th_clean_env();
	for (unsigned f = 0; f < 2; f++) {
		uint64_t busy0 = th_stat("tier_evict_busy");
		exch_arena_t *a;
		char *p = mix_arena(&a, 4 * MB, flags[f], 8);
		long locked;

		/* The syscall itself: sanitizers make mlock() a no-op. */
		ck_assert_int_eq(syscall(SYS_mlock, p, 2 * MB), 0);
		locked = th_private_bytes(p, 2 * MB);
		ck_assert_int_gt(locked, 0);
		ck_assert_int_gt(exch_reclaim(a, 4 * MB, 0), 0);
		/* The unlocked half went, the locked half is all there. */
		ck_assert_int_eq(th_private_bytes(p, 2 * MB), locked);
		ck_assert_int_eq(th_private_bytes(p + 2 * MB, 2 * MB), 0);
		ck_assert_int_ge(th_stat("tier_evict_busy") - busy0, (uint64_t)locked / PAGE);
		ck_assert_int_eq(mix_verify(p, 4 * MB / PAGE, 8), -1);
		ck_assert_int_eq(syscall(SYS_munlock, p, 2 * MB), 0);
	}
}
END_TEST

/* ---- EXCH_LIMIT ---- */

START_TEST(test_tier_limit_enforced)
{
	const size_t len = 32 * MB;
	exch_arena_t *a;
	char *p;
	long resident = -1;

	th_clean_env();
	setenv("EXCH_LIMIT", "8M", 1);
	opt_reload();
	p = mix_arena(&a, len, 0, 51);
	for (int i = 0; i < 200; i++) { /* the thread looks every 100 ms */
		resident = th_private_bytes(p, len);
		if (resident <= (long)(8 * MB))
			break;
		usleep(50000);
	}
	ck_assert_int_le(resident, 8 * MB);
	ck_assert_int_gt(th_stat("tier_limit_passes"), 0);
	ck_assert_int_eq(mix_verify(p, len / PAGE, 51), -1);
}
END_TEST

/* The limit covers the compressed pool too: by default it may use a
 * quarter of the limit, and the rest of what is evicted goes to swap. */
START_TEST(test_tier_limit_covers_pool)
{
	const size_t len = 48 * MB, limit = 16 * MB;
	exch_arena_t *a;
	char *p;
	size_t held = SIZE_MAX;

	th_clean_env();
	setenv("EXCH_LIMIT", "16M", 1);
	opt_reload();
	p = mix_arena(&a, len, 0, 71);
	for (int i = 0; i < 200; i++) { /* the thread looks every 100 ms */
		held = (size_t)th_private_bytes(p, len) + th_stat("tier_pool_bytes");
		if (held <= limit)
			break;
		usleep(50000);
	}
	ck_assert_uint_le(held, limit);
	ck_assert_uint_le(th_stat("tier_pool_bytes"), limit / 4);
	ck_assert_uint_gt(th_stat("tier_pool_reclaims"), 0); /* at its cap, to swap */
	ck_assert_int_eq(mix_verify(p, len / PAGE, 71), -1);
}
END_TEST

/* A compressed pool of more than three quarters of the limit would leave
 * the arenas nothing: it warns and takes the default, a quarter. */
START_TEST(test_tier_limit_tier_max_too_big)
{
	th_clean_env();
	setenv("EXCH_LIMIT", "16M", 1);
	setenv("EXCH_TIER_MAX", "1G", 1);
	opt_reload();
	ck_assert_ptr_nonnull(exch_features());
	ck_assert_int_eq(opt_get(OPT_TIER_MAX), 4 * MB);
	ck_assert_uint_ge(th_stat("options_invalid"), 1);
}
END_TEST

/* Only regions that ever faulted are walked (struct exch_arena.span): a
 * region far into a large reservation, touched last, is evicted too. */
START_TEST(test_tier_reclaim_far_region)
{
	const size_t len = 1024 * MB;
	exch_arena_t *a;
	char *p, *far;

	th_clean_env();
	ck_assert_int_eq(exch_arena_create(len, 0, &a), 0);
	p = exch_alloc(a, len - 2 * MB);
	ck_assert_ptr_nonnull(p);
	far = p + len - 4 * MB;
	mix_fill(far, 2 * MB / PAGE, 61);
	ck_assert_int_gt(th_private_bytes(far, 2 * MB), 0);
	ck_assert_int_ge(exch_reclaim(a, 2 * MB, 0), (long)MB);
	ck_assert_int_eq(th_private_bytes(far, 2 * MB), 0);
	ck_assert_int_eq(mix_verify(far, 2 * MB / PAGE, 61), -1);
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
}
END_TEST

/* ---- the preload's purges ---- */

/* Part of a hugepage purged is zeroed (forced) or left (lazy) in place:
 * the region stays one PMD; a whole region purged goes back. */
START_TEST(test_tier_purge_keeps_huge)
{
	exch_arena_t *a;
	char *p;

	th_clean_env();
	opt_reload();
	ck_assert_int_eq(exch_arena_create(8 * MB, 0, &a), 0);
	p = exch_alloc(a, 4 * MB);
	ck_assert_ptr_nonnull(p);
	th_fill(p, 4 * MB, 61);
	th_make_huge(a, p, 4 * MB);
	char *copy = malloc(REGION_SIZE);

	memcpy(copy, p, REGION_SIZE);
	ck_assert_int_eq(tier_purge(p + 8192, 3 * 4096, false), 0);
	ck_assert_int_eq(th_huge_bytes(p, REGION_SIZE), (long)REGION_SIZE);
	for (size_t i = 8192; i < 8192 + 3 * 4096; i++)
		ck_assert_int_eq(p[i], 0);
	ck_assert(!memcmp(p, copy, 8192));
	ck_assert(!memcmp(p + 5 * 4096, copy + 5 * 4096, REGION_SIZE - 5 * 4096));
	free(copy);
	ck_assert_int_eq(tier_purge(p + 65536, 65536, true), 0);
	ck_assert_int_eq(th_huge_bytes(p, REGION_SIZE), (long)REGION_SIZE);
	ck_assert_uint_eq(th_stat("purges_kept_huge"), 2);
	/* the whole second region: given back */
	ck_assert_int_eq(tier_purge(p + REGION_SIZE, REGION_SIZE, false), 0);
	ck_assert_int_eq(th_private_bytes(p + REGION_SIZE, REGION_SIZE), 0);
	ck_assert_uint_eq(th_stat("purges_kept_huge"), 2);
	for (size_t i = 0; i < REGION_SIZE; i += 512)
		ck_assert_int_eq(p[REGION_SIZE + i], 0);
	ck_assert_int_eq(exch_free(a, p), 0);
	ck_assert_int_eq(exch_arena_destroy(a), 0);
}
END_TEST

/* ---- with the coalescer ---- */

START_TEST(test_tier_coalescer_skips_evicted)
{
	struct exch_coalesce_report rep = { 0 };
	exch_arena_t *a;
	char *p;

	th_clean_env();
	/* Zero pages of the mix may be zero-page mappings after the split. */
	setenv("EXCH_MAX_PTES_NONE", "511", 1);
	opt_reload();
	p = mix_arena(&a, 4 * MB, 0, 52);
	ck_assert_int_eq(exch_advise(p + 100 * PAGE, 10 * PAGE, EXCH_COLD), 0);
	ck_assert_int_eq(exch_coalesce(a, p, 4 * MB, EXCH_NOWAIT, &rep), 0);
	ck_assert_int_eq(rep.skipped_tiered, 1);
	ck_assert_int_eq(exch_exchange_pages(p, p + 2 * MB, 2 * MB), -EBUSY);
	ck_assert_int_eq(mix_verify(p, 4 * MB / PAGE, 52), -1);
	/* Once every page is back, the region coalesces again. */
	memset(&rep, 0, sizeof(rep));
	ck_assert_int_eq(exch_coalesce(a, p, 2 * MB, EXCH_BLOCK, &rep), 0);
	ck_assert_msg(rep.coalesced == 1, "coalesced %lu: huge %lu sparse %lu busy %lu "
		      "no_frame %lu tiered %lu errors %lu", (unsigned long)rep.coalesced,
		      (unsigned long)rep.already_huge, (unsigned long)rep.skipped_sparse,
		      (unsigned long)rep.skipped_busy, (unsigned long)rep.skipped_no_frame,
		      (unsigned long)rep.skipped_tiered, (unsigned long)rep.errors);
	ck_assert_int_eq(th_huge_bytes(p, 2 * MB), 2 * MB);
	ck_assert_int_eq(mix_verify(p, 4 * MB / PAGE, 52), -1);
}
END_TEST

/* ---- errors ---- */

START_TEST(test_tier_write_error_keeps_data)
{
	exch_arena_t *a;
	struct swap_file *f;
	char *p;

	th_clean_env();
	p = mix_arena(&a, 4 * MB, 0, 12);
	f = tier_swap_file();
	ck_assert_ptr_nonnull(f);
	swap_inject(f, -ENOSPC, 0);
	exch_reclaim(a, 4 * MB, EXCH_RECLAIM_SWAP);
	ck_assert_int_gt(th_stat("swap_write_errors"), 0);
	ck_assert_int_gt(th_stat("tier_unused"), 0);
	ck_assert_int_eq(th_stat("swap_slots_used"), 0);
	ck_assert_int_eq(mix_verify(p, 4 * MB / PAGE, 12), -1);
	/* Once the file works again, the same pages go and come back. */
	swap_inject(f, 0, 0);
	ck_assert_int_gt(exch_reclaim(a, 4 * MB, EXCH_RECLAIM_SWAP), 0);
	ck_assert_int_eq(mix_verify(p, 4 * MB / PAGE, 12), -1);
}
END_TEST

/* Flips one byte of every written slot of the file: each page there fails. */
static unsigned damage_file(int fd)
{
	unsigned char page[PAGE];
	unsigned damaged = 0;

	for (off_t off = 0; pread(fd, page, PAGE, off) == PAGE; off += PAGE) {
		if (exch_is_zero(page, PAGE))
			continue;
		page[100] ^= 0x40;
		ck_assert_int_eq(pwrite(fd, page, PAGE, off), PAGE);
		damaged++;
	}
	return damaged;
}

START_TEST(test_tier_flipped_byte_sigbus)
{
	exch_arena_t *a;
	struct swap_file *f;
	char *p;

	th_clean_env();
	p = mix_arena(&a, 2 * MB, 0, 13);
	/* One random page (raw, to swap) and its neighbours (the pool). */
	ck_assert_int_eq(exch_advise(p + 2 * PAGE, 4 * PAGE, EXCH_COLD), 0);
	f = tier_swap_file();
	ck_assert_int_eq(swap_slots_used(f), 1);
	ck_assert_int_eq(damage_file(swap_fd(f)), 1);
	ck_assert(read_raises_sigbus(p + 2 * PAGE + 8));
	ck_assert(read_raises_sigbus(p + 2 * PAGE)); /* and every later touch */
	ck_assert_int_eq(th_stat("swap_mismatches"), 1);
	ck_assert_int_eq(th_stat("tier_restore_errors"), 1);
	/* Nothing else is lost. */
	ck_assert_int_eq(mix_verify(p, 2, 13), -1);
	ck_assert_int_eq(mix_check(p, 3, 2 * MB / PAGE - 3, 13), -1);
	/* Freeing the page clears it: it reads as zeros after. */
	ck_assert_int_eq(exch_advise(p + 2 * PAGE, PAGE, EXCH_DONTNEED), 0);
	ck_assert_int_eq(p[2 * PAGE + 8], 0);
}
END_TEST

START_TEST(test_tier_read_error_sigbus)
{
	exch_arena_t *a;
	struct swap_file *f;
	char *p;

	th_clean_env();
	p = mix_arena(&a, 2 * MB, 0, 14);
	ck_assert_int_eq(exch_advise(p + 2 * PAGE, PAGE, EXCH_COLD), 0);
	f = tier_swap_file();
	swap_inject(f, 0, -EIO);
	ck_assert(read_raises_sigbus(p + 2 * PAGE));
	ck_assert_int_eq(th_stat("swap_read_errors"), 1);
	swap_inject(f, 0, 0);
	ck_assert_int_eq(mix_check(p, 3, 2 * MB / PAGE - 3, 14), -1);
}
END_TEST

START_TEST(test_tier_misuse)
{
	exch_arena_t *a;
	char *p, local[PAGE];

	th_clean_env();
	p = mix_arena(&a, 2 * MB, 0, 1);
	ck_assert_int_eq(exch_reclaim(NULL, MB, 0), -EINVAL);
	ck_assert_int_eq(exch_reclaim((exch_arena_t *)local, MB, 0), -EINVAL);
	ck_assert_int_eq(exch_reclaim(a, 0, 0), -EINVAL);
	ck_assert_int_eq(exch_reclaim(a, MB, 1u << 7), -EINVAL);
	ck_assert_int_eq(exch_advise(p + 1, PAGE, EXCH_COLD), -EINVAL);
	ck_assert_int_eq(exch_advise(p, 0, EXCH_COLD), -EINVAL);
	ck_assert_int_eq(exch_advise(p, PAGE, 99), -EINVAL);
	ck_assert_int_eq(exch_advise(local, PAGE, EXCH_COLD), -EINVAL);
	ck_assert_int_eq(exch_advise(p, 8 * MB, EXCH_COLD), -EINVAL);
	ck_assert_int_eq(mix_verify(p, 2 * MB / PAGE, 1), -1);
	ck_assert_int_eq(th_stat("evicted_pages"), 0);
}
END_TEST

/* ---- compaction and unuse ---- */

START_TEST(test_tier_compaction_keeps_every_byte)
{
	exch_arena_t *a;
	char *p;
	size_t pages = 8 * MB / PAGE;
	long before, after;

	th_clean_env();
	p = mix_arena(&a, 8 * MB, 0, 21);
	ck_assert_int_gt(exch_reclaim(a, 8 * MB, 0), 0);
	/* Bring back every other compressed page: half-empty zbud pages. */
	for (size_t i = 0; i < pages; i += 2 * MIX__COUNT)
		(void)*(volatile char *)(p + (i + MIX_TEXT) * PAGE);
	before = (long)th_stat("tier_pool_bytes");
	after = exch_tier_shrink(SIZE_MAX);
	ck_assert_int_gt(th_stat("tier_compacted_pages"), 0);
	ck_assert_int_lt(after, before);
	ck_assert_int_eq(mix_verify(p, pages, 21), -1);
}
END_TEST

START_TEST(test_tier_shrink_unuses)
{
	exch_arena_t *a;
	char *p;

	th_clean_env();
	p = mix_arena(&a, 4 * MB, 0, 22);
	ck_assert_int_gt(exch_reclaim(a, 4 * MB, 0), 0);
	ck_assert_int_gt(th_stat("tier_pool_bytes"), 0);
	ck_assert_int_eq(exch_tier_shrink(0), 0);
	/* The pool's pages are resident again without a fault. */
	ck_assert_int_eq(th_stat("tier_unused"), th_stat("tier_lz4_pages"));
	ck_assert_int_ge(th_stat("tier_unused"), 4 * MB / PAGE / MIX__COUNT * 3);
	ck_assert_int_ge(th_private_bytes(p, 4 * MB), (long)(th_stat("tier_unused") * PAGE));
	ck_assert_int_eq(mix_verify(p, 4 * MB / PAGE, 22), -1);
}
END_TEST

/* ---- eviction while threads use the pages ---- */

struct stress {
	char *p;
	size_t pages;
	_Atomic bool stop;
	_Atomic long errors;
};

struct worker {
	struct stress *s;
	unsigned id;
	uint64_t *count; /* per owned page: increments made */
};

/*
 * Thread @id owns the pages i with i % THREADS == id: it checks the page's
 * contents and bumps a counter in the page's last word (which every page
 * kind leaves free below), so a lost update or a stale page shows.
 */
static void *stress_worker(void *arg)
{
	struct worker *w = arg;
	struct stress *s = w->s;
	unsigned char want[PAGE];
	uint64_t rnd = w->id + 1;

	while (!atomic_load(&s->stop)) {
		size_t i = (mix_rand(&rnd) % (s->pages / THREADS)) * THREADS + w->id;
		uint64_t *ctr = (uint64_t *)(s->p + i * PAGE + PAGE - 8);

		mix_page(want, i, 31);
		if (memcmp(s->p + i * PAGE, want, PAGE - 8) ||
		    *ctr != *(uint64_t *)(want + PAGE - 8) + w->count[i / THREADS])
			atomic_fetch_add(&s->errors, 1);
		(*ctr)++;
		w->count[i / THREADS]++;
	}
	return NULL;
}

START_TEST(test_tier_evict_under_threads)
{
	struct stress s = { .pages = 16 * MB / PAGE };
	struct worker w[THREADS];
	pthread_t th[THREADS];
	exch_arena_t *a;
	struct timespec t0, now;

	th_clean_env();
	setenv("EXCH_TIER_MAX", "1M", 1); /* the pool spills to swap too */
	opt_reload();
	s.p = mix_arena(&a, 16 * MB, 0, 31);
	for (unsigned t = 0; t < THREADS; t++) {
		w[t] = (struct worker){ .s = &s, .id = t,
					.count = calloc(s.pages / THREADS, sizeof(uint64_t)) };
		ck_assert_int_eq(pthread_create(&th[t], NULL, stress_worker, &w[t]), 0);
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	now = t0;
	for (unsigned round = 0; (now.tv_sec - t0.tv_sec) * 1000 +
				 (now.tv_nsec - t0.tv_nsec) / 1000000 < STRESS_MS; round++) {
		exch_reclaim(a, 16 * MB, round % 3 == 2 ? EXCH_RECLAIM_SWAP : 0);
		exch_advise(s.p + (round % 8) * 2 * MB, 2 * MB, EXCH_COLD);
		if (round % 5 == 4)
			exch_tier_shrink(SIZE_MAX);
		usleep(20000);
		clock_gettime(CLOCK_MONOTONIC, &now);
	}
	atomic_store(&s.stop, true);
	for (unsigned t = 0; t < THREADS; t++)
		pthread_join(th[t], NULL);
	long errors = atomic_load(&s.errors);

	ck_assert_msg(errors == 0, "%ld reads saw a stale page or a lost update", errors);
	/* Every counter holds exactly its thread's increments. */
	for (size_t i = 0; i < s.pages; i++) {
		unsigned char want[PAGE];

		mix_page(want, i, 31);
		ck_assert_int_eq(*(uint64_t *)(s.p + i * PAGE + PAGE - 8),
				 *(uint64_t *)(want + PAGE - 8) + w[i % THREADS].count[i / THREADS]);
	}
	ck_assert_int_gt(th_stat("evicted_pages"), s.pages);
	ck_assert_int_gt(th_stat("restored_pages"), 0);
	ck_assert_int_eq(th_stat("swap_mismatches"), 0);
	ck_assert_int_eq(th_stat("tier_restore_errors"), 0);
	if (getenv("TIER_STRESS_STATS"))
		exch_stats_print(stderr, 0);
	for (unsigned t = 0; t < THREADS; t++)
		free(w[t].count);
}
END_TEST

/* ---- freeing while the tier moves the same pages ---- */

#define RACE_S 3

struct race {
	char *p;
	size_t len;
	_Atomic bool stop;
	_Atomic int go; /* free_during_evict: one eviction per iteration */
};

static bool race_over(time_t t0)
{
	return time(NULL) - t0 >= RACE_S;
}

static void *race_cold_hot(void *arg)
{
	struct race *r = arg;

	while (!atomic_load(&r->stop)) {
		exch_advise(r->p, r->len, EXCH_COLD);
		exch_advise(r->p, r->len, EXCH_HOT);
	}
	return NULL;
}

/* A write after EXCH_DONTNEED must stay, whatever eviction was doing. */
START_TEST(test_tier_dontneed_write_during_evict)
{
	struct race r = { .len = 2 * MB };
	volatile uint64_t *w;
	exch_arena_t *a;
	pthread_t th;
	long lost = 0;
	time_t t0 = time(NULL);

	th_clean_env();
	r.p = mix_arena(&a, 2 * MB, EXCH_ARENA_NOHUGE, 61);
	w = (volatile uint64_t *)(r.p + 500 * PAGE + 8);
	ck_assert_int_eq(pthread_create(&th, NULL, race_cold_hot, &r), 0);
	for (uint64_t v = 1; !race_over(t0); v++) {
		ck_assert_int_eq(exch_advise((void *)(r.p + 500 * PAGE), PAGE, EXCH_DONTNEED), 0);
		*w = v;
		usleep(50);
		lost += *w != v;
	}
	atomic_store(&r.stop, true);
	pthread_join(th, NULL);
	ck_assert_msg(lost == 0, "%ld writes after EXCH_DONTNEED were lost", lost);
}
END_TEST

static void *race_evict_on_go(void *arg)
{
	struct race *r = arg;

	while (!atomic_load(&r->stop))
		if (atomic_exchange(&r->go, 0))
			exch_advise(r->p, r->len, EXCH_COLD);
	return NULL;
}

/* Half of a hugepage freed while the tier evicts it: the next allocation
 * there reads zeros, never the freed bytes. */
START_TEST(test_tier_partial_free_during_evict)
{
	struct race r = { .len = 2 * MB };
	exch_arena_t *a;
	pthread_t th;
	long stale = 0;
	time_t t0 = time(NULL);
	uint64_t rnd = 1;

	th_clean_env();
	ck_assert_int_eq(exch_arena_create(4 * MB, 0, &a), 0);
	ck_assert_int_eq(pthread_create(&th, NULL, race_evict_on_go, &r), 0);
	while (!race_over(t0)) {
		char *x, *y;

		exch_pool_wait(100);
		x = exch_alloc(a, MB);
		y = exch_alloc(a, MB);
		r.p = x;
		memset(x, 0x11, MB);
		memset(y, 0x77, MB);
		atomic_store(&r.go, 1);
		for (volatile unsigned k = 0, n = (unsigned)(mix_rand(&rnd) >> 52); k < n; k++)
			;
		ck_assert_int_eq(exch_free(a, y), 0);
		ck_assert_ptr_eq(exch_alloc(a, MB), y);
		stale += !exch_is_zero(y, MB);
		while (atomic_load(&r.go))
			;
		exch_free(a, x);
		exch_free(a, y);
	}
	atomic_store(&r.stop, true);
	pthread_join(th, NULL);
	ck_assert_msg(stale == 0, "%ld new allocations read freed data", stale);
}
END_TEST

static void *race_dontneed(void *arg)
{
	struct race *r = arg;

	atomic_store(&r->go, 1);
	while (!atomic_load(&r->stop))
		exch_advise(r->p, PAGE, EXCH_DONTNEED);
	return NULL;
}

/* fork() while another thread frees arena memory: the child must not
 * inherit a region lock, or its fault service hangs on the first fault. */
START_TEST(test_tier_fork_during_dontneed)
{
	struct race r = { 0 };
	exch_arena_t *a;
	pthread_t th;
	int hung = 0, failed = 0;

	th_clean_env();
	r.p = mix_arena(&a, 4 * MB, 0, 62);
	/* Pages evicted: the child restarts the library in the fork. */
	ck_assert_int_eq(exch_advise(r.p + 2 * MB, 2 * MB, EXCH_COLD), 0);
	ck_assert_int_eq(pthread_create(&th, NULL, race_dontneed, &r), 0);
	/* Fork only once the thread runs: a sanitizer runtime still setting
	 * it up holds its allocator's lock, and the child would inherit it. */
	while (!atomic_load(&r.go))
		usleep(1000);
	for (int i = 0; i < 40; i++) {
		pid_t pid = fork();
		int st;

		ck_assert_int_ge(pid, 0);
		if (pid == 0) {
			alarm(10);
			(void)*(volatile char *)r.p; /* region 0: freed, a hole */
			_exit(mix_check(r.p, 2 * MB / PAGE, 2 * MB / PAGE, 62) < 0 ? 0 : 1);
		}
		ck_assert_int_eq(waitpid(pid, &st, 0), pid);
		hung += WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM;
		failed += !WIFEXITED(st) || WEXITSTATUS(st);
	}
	atomic_store(&r.stop, true);
	pthread_join(th, NULL);
	ck_assert_msg(hung == 0 && failed == 0, "%d children hung, %d failed", hung, failed);
}
END_TEST

/* ---- fork ---- */

START_TEST(test_tier_fork_child_reads_evicted)
{
	const size_t len = 16 * MB, pages = len / PAGE;
	exch_arena_t *a;
	char *p;
	pid_t pid;
	int status;

	th_clean_env();
	setenv("EXCH_TIER_MAX", "1M", 1); /* most pages on swap, some in the pool */
	opt_reload();
	p = mix_arena(&a, len, 0, 41);
	ck_assert_int_gt(exch_reclaim(a, len, 0), 0);
	ck_assert_int_gt(th_stat("swap_slots_used"), 0);
	ck_assert_int_gt(th_stat("tier_pool_bytes"), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		/* Slowly, while the parent evicts and restores the same pages. */
		long bad = -1;

		for (int pass = 0; pass < 2 && bad < 0; pass++) {
			bad = mix_verify(p, pages, 41);
			usleep(100000);
		}
		_exit(bad < 0 ? 0 : 1);
	}
	for (int round = 0; round < 6; round++) {
		ck_assert_int_eq(mix_verify(p, pages, 41), -1);
		exch_reclaim(a, len, round % 2 ? EXCH_RECLAIM_SWAP : 0);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status));
	ck_assert_int_eq(WEXITSTATUS(status), 0);
	ck_assert_int_eq(mix_verify(p, pages, 41), -1);
}
END_TEST

/* A child that writes its copies while the parent's stay evicted. */
START_TEST(test_tier_fork_child_writes)
{
	exch_arena_t *a;
	char *p;
	pid_t pid;
	int status;

	th_clean_env();
	p = mix_arena(&a, 4 * MB, 0, 42);
	ck_assert_int_gt(exch_reclaim(a, 4 * MB, 0), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		mix_fill(p, 4 * MB / PAGE, 43);
		exch_reclaim(a, 4 * MB, 0);
		_exit(mix_verify(p, 4 * MB / PAGE, 43) < 0 ? 0 : 1);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status));
	ck_assert_int_eq(WEXITSTATUS(status), 0);
	ck_assert_int_eq(mix_verify(p, 4 * MB / PAGE, 42), -1);
}
END_TEST

static Suite *tier_suite(void)
{
	Suite *s = suite_create("tier");
	TCase *tc = tcase_create("tier");

	if (!(feat.on & EXCH_ON_ARENA_UFFD) || !(feat.have & EXCH_HAVE_UFFD_MOVE) ||
	    !(feat.have & EXCH_HAVE_PAGEMAP_SCAN)) {
		th_skip("the tier", "no full-mode userfaultfd with UFFDIO_MOVE and PAGEMAP_SCAN");
		return s;
	}
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_tier_round_trip_huge);
	tcase_add_test(tc, test_tier_round_trip_small_pages);
	tcase_add_test(tc, test_tier_round_trip_swap);
	tcase_add_test(tc, test_tier_pool_cap_spills_to_swap);
	tcase_add_test(tc, test_tier_no_swap_keeps_pages);
	tcase_add_test(tc, test_tier_bad_swap_dir);
	tcase_add_test(tc, test_tier_advise_cold_hot);
	tcase_add_test(tc, test_tier_dontneed_reads_zeros);
	tcase_add_test(tc, test_tier_free_then_alloc_reads_zeros);
	tcase_add_test(tc, test_tier_mlocked_not_evicted);
	tcase_add_test(tc, test_tier_reclaim_far_region);
	tcase_add_test(tc, test_tier_limit_covers_pool);
	tcase_add_test(tc, test_tier_limit_tier_max_too_big);
	tcase_add_test(tc, test_tier_limit_enforced);
	tcase_add_test(tc, test_tier_purge_keeps_huge);
	tcase_add_test(tc, test_tier_coalescer_skips_evicted);
	tcase_add_test(tc, test_tier_write_error_keeps_data);
	tcase_add_test(tc, test_tier_flipped_byte_sigbus);
	tcase_add_test(tc, test_tier_read_error_sigbus);
	tcase_add_test(tc, test_tier_misuse);
	tcase_add_test(tc, test_tier_compaction_keeps_every_byte);
	tcase_add_test(tc, test_tier_shrink_unuses);
	tcase_add_test(tc, test_tier_evict_under_threads);
	tcase_add_test(tc, test_tier_dontneed_write_during_evict);
	tcase_add_test(tc, test_tier_partial_free_during_evict);
	tcase_add_test(tc, test_tier_fork_during_dontneed);
	tcase_add_test(tc, test_tier_fork_child_reads_evicted);
	tcase_add_test(tc, test_tier_fork_child_writes);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return th_main(&feat, tier_suite);
}

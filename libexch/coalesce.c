/*
 * coalesce.c - turn a region of scattered 4K pages into one hugepage, while
 * the application keeps running.
 *
 * The one invariant (DESIGN.md): a page is never copied or dropped while the
 * application can reach it. So a region is first taken out of reach, whole:
 *
 *   1. transit   the region's state becomes TRANSIT (fault.c): from now on
 *                a thread that touches a missing page of it is parked.
 *   2. move out  one 2 MB UFFDIO_MOVE (ALLOW_SRC_HOLES, DONTWAKE) into a
 *                private scratch region registered with the same uffd. The
 *                move is atomic per page: a writer either wrote before (its
 *                write moves with the page) or faults after (and is parked).
 *                EBUSY means a page is pinned (O_DIRECT, io_uring buffers)
 *                or still shared with a fork child; everything is moved
 *                back, shared pages are made exclusive with
 *                MADV_POPULATE_WRITE (which changes no data) and the move is
 *                tried once more, or the region is skipped.
 *   3. check     the scratch must hold only present pages: a page swapped
 *                out meanwhile moves as a swap entry, which no copy would
 *                see, so then everything goes back and the region is skipped.
 *   4. copy      the present pages (not zero-page mappings) into a frame
 *                with the exchange engine: a captured frame (one the
 *                application freed, pool.c) if there is one, its holes
 *                zeroed; else a pool frame, whose holes are zeros already.
 *                Non-temporal stores: either frame is cold.
 *   5. move in   MADV_DONTNEED the region (it frees the page table, so the
 *                frame stays PMD-mapped), UFFDIO_MOVE the frame in, check it
 *                is PMD-mapped, drop the old pages in the scratch. A thread
 *                that faults on the region meanwhile allocates a page table
 *                before it parks, and the kernel then splits the frame in
 *                the move: the data is right, the region stays 4K, and it
 *                counts as busy.
 *   6. end       the transit ends and parked threads are woken.
 *
 * Every failure puts the old pages back where they were before the transit
 * ends. Moves back cover the whole 2 MB with ALLOW_SRC_HOLES, because a
 * failed UFFDIO_MOVE can move pages it does not report (fault.c).
 *
 * Before step 1, the owners of pins over the region (pin.c) are asked; if
 * one declines, the region is skipped and nothing is touched.
 *
 * A region with more than EXCH_MAX_PTES_NONE holes is skipped: coalescing it
 * would turn that many never-used pages into resident memory. A busy region
 * (a pinned page, a racing fault) or one that found no frame is skipped with
 * EXCH_NOWAIT, and retried with doubling pauses until EXCH_COALESCE_BLOCK_MS
 * with EXCH_BLOCK; the coalescer's lock is dropped between passes.
 *
 * coalesce.lock serialises coalescing (one scratch region) and is the
 * outermost lock: the fork handler takes it first, so a child never sees a
 * region in transit with its pages in a scratch region it does not have
 * (the scratch is MADV_DONTFORK). exch_free of a region in transit waits
 * for the transit to end (arena.c).
 */
#include "config.h"

#include <errno.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define COALESCE_MOVE_OUT (UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES | UFFDIO_MOVE_MODE_DONTWAKE)
#define COALESCE_VEC 64
#define COALESCE_SCRATCH (2 * REGION_SIZE)
#define NS_PER_S 1000000000ull
#define COALESCE_BACKOFF_MIN_NS 1000000ull /* doubles each EXCH_BLOCK retry */
#define COALESCE_RESTORE_MS 10000ull       /* putting pages back is retried this long */
#define COALESCE_RESTORE_PAUSE_US 1000u
#define COALESCE_RESTORE_PAUSE_MAX_US 100000u

static struct {
	pthread_mutex_t lock; /* protects scratch, partner_hint and owner; held
				 across one region */
	size_t partner_hint;  /* where the next search for a cold region starts */
	char *scratch;        /* 2 regions, registered, MADV_DONTFORK: the
				 region moved out, and a traded frame */
	_Atomic(pthread_t) owner; /* the thread holding lock (pin callbacks) */
	_Atomic bool owned;
} coalesce = { .lock = PTHREAD_MUTEX_INITIALIZER };

void coalesce_lock(void)
{
	lock_take(&coalesce.lock, LOCK_COALESCE);
	atomic_store(&coalesce.owner, pthread_self());
	atomic_store(&coalesce.owned, true);
}

void coalesce_unlock(void)
{
	atomic_store(&coalesce.owned, false);
	lock_drop(&coalesce.lock, LOCK_COALESCE);
}

bool coalesce_is_mine(void)
{
	return atomic_load(&coalesce.owned) &&
	       pthread_equal(atomic_load(&coalesce.owner), pthread_self());
}

void coalesce_sync(void)
{
	coalesce_lock();
	coalesce_unlock();
}

static uint64_t coalesce_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

/* The scratch region, mapped and registered on first use. Under lock. */
static int coalesce_scratch(void)
{
	void *p;
	int rc;

	if (coalesce.scratch)
		return 0;
	rc = prim_map_scratch(lib.uffd, COALESCE_SCRATCH, &p);
	if (rc < 0)
		return rc;
	coalesce.scratch = p;
	return 0;
}

/*
 * Puts [src, src+len) back at @dst: one move, or page by page, moving or,
 * as a last resort, installing a copy with UFFDIO_COPY. A page that is
 * already at @dst (EEXIST) holds the same data (the frame's copy).
 */
static int coalesce_put_back(char *dst, char *src, size_t len)
{
	if (prim_uffd_move(lib.uffd, dst, src, len, UFFDIO_MOVE_MODE_DONTWAKE, NULL) == 0)
		return 0;
	for (size_t off = 0; off < len; off += PAGE_SIZE_4K) {
		int rc = prim_uffd_move(lib.uffd, dst + off, src + off, PAGE_SIZE_4K,
					UFFDIO_MOVE_MODE_DONTWAKE, NULL);

		if (rc < 0 && rc != -EEXIST && rc != -ENOENT)
			rc = prim_uffd_copy(lib.uffd, dst + off, src + off, PAGE_SIZE_4K);
		if (rc < 0 && rc != -EEXIST && rc != -ENOENT)
			return rc;
	}
	return 0;
}

/*
 * Moves whatever the 2 MB at @src holds to @dst, range by range, from
 * offset @from on: a move over a hole of the source still fails with EEXIST
 * where the destination has a page, ALLOW_SRC_HOLES or not. 0 once that
 * part of @src is empty, else -EIO.
 */
static int coalesce_restore(char *dst, char *src, size_t from)
{
	struct page_region vec[COALESCE_VEC];
	long n;

	do {
		n = prim_pagemap_scan(lib.pagemap_fd, src + from, src + REGION_SIZE, 0,
				      PAGE_IS_PRESENT | PAGE_IS_SWAPPED, 0,
				      PAGE_IS_PRESENT | PAGE_IS_SWAPPED, vec, COALESCE_VEC);
		for (long i = 0; i < n; i++) {
			size_t off = (size_t)(vec[i].start - (uintptr_t)src);
			size_t len = (size_t)(vec[i].end - vec[i].start);

			if (coalesce_put_back(dst + off, src + off, len) < 0)
				return -EIO;
			if (n == COALESCE_VEC && i == n - 1)
				from = off + len;
		}
	} while (n == COALESCE_VEC);
	return n < 0 ? -EIO : 0;
}

/*
 * coalesce_restore until it succeeds: the pages in @src are the only copy
 * of the application's data, and its region must not leave transit (its
 * threads would fault in zero pages) until they are back. Both the move
 * and the UFFDIO_COPY fallback failing is a transient shortage (ENOMEM), so
 * it is retried with growing pauses for up to COALESCE_RESTORE_MS; only then
 * is the loss reported and the region given up. 0 or -EIO.
 */
static int coalesce_restore_hard(char *dst, char *src, size_t from)
{
	unsigned pause_us = COALESCE_RESTORE_PAUSE_US;
	uint64_t deadline = coalesce_now_ns() + COALESCE_RESTORE_MS * 1000000ull;

	while (coalesce_restore(dst, src, from) < 0) {
		stat_inc(STAT_fault_errors);
		if (coalesce_now_ns() > deadline) {
			log_warn("coalesce: %ld bytes could not be put back at %p; they are lost",
				 prim_data_bytes(lib.pagemap_fd, src, REGION_SIZE), (void *)dst);
			return -EIO;
		}
		usleep(pause_us);
		pause_us = pause_us < COALESCE_RESTORE_PAUSE_MAX_US ? pause_us * 2 : pause_us;
	}
	return 0;
}

/* Everything in the (first) scratch region back to @dst. */
static int coalesce_move_back(char *dst)
{
	return coalesce_restore_hard(dst, coalesce.scratch, 0);
}

/* Makes shared present pages of @dst exclusive; data is unchanged. */
static void coalesce_unshare(char *dst)
{
	struct page_region vec[COALESCE_VEC];
	char *pos = dst, *end = dst + REGION_SIZE;
	long n;

	do {
		n = prim_pagemap_scan(lib.pagemap_fd, pos, end, PAGE_IS_PRESENT, 0, 0,
				      PAGE_IS_PRESENT, vec, COALESCE_VEC);
		for (long i = 0; i < n; i++)
			prim_madvise((void *)(uintptr_t)vec[i].start,
				     (size_t)(vec[i].end - vec[i].start), MADV_POPULATE_WRITE);
		if (n == COALESCE_VEC)
			pos = (char *)(uintptr_t)vec[COALESCE_VEC - 1].end;
	} while (n == COALESCE_VEC);
}

/*
 * Step 2: region @dst into scratch slot @slot; 0, or a skip reason's -errno
 * with everything put back. Any failed move may have moved part of the
 * region (EAGAIN: a page changed under it; EBUSY: a pinned or shared
 * page), so every failure puts back first. EAGAIN is tried once more;
 * EBUSY once more after shared pages were made exclusive.
 */
static int coalesce_move_out_to(char *dst, char *slot, struct exch_coalesce_report *rep)
{
	int first = prim_uffd_move(lib.uffd, slot, dst, REGION_SIZE, COALESCE_MOVE_OUT, NULL), rc;

	if (first == 0)
		return 0;
	if (coalesce_restore_hard(dst, slot, 0) < 0)
		return -EIO;
	if (first != -EBUSY && first != -EAGAIN)
		return first;
	if (first == -EBUSY)
		coalesce_unshare(dst);
	rc = prim_uffd_move(lib.uffd, slot, dst, REGION_SIZE, COALESCE_MOVE_OUT, NULL);
	if (rc == 0) {
		rep->unshared += first == -EBUSY;
		return 0;
	}
	return coalesce_restore_hard(dst, slot, 0) < 0 ? -EIO : rc;
}

static int coalesce_move_out(char *dst, struct exch_coalesce_report *rep)
{
	return coalesce_move_out_to(dst, coalesce.scratch, rep);
}

/*
 * Step 4: the private pages of the scratch into @frame; bytes or -errno.
 * Swapped-out pages and pages being migrated (swap-type entries) are
 * copied too: reading them through the scratch brings them back.
 * Non-temporal stores: a pool frame was zeroed long ago and is cold, and a
 * captured (@dirty) one is mostly out of cache too by the time it is used
 * (temporal stores into it measured ~25% slower per region, the cost of
 * reading each line before writing it). A dirty frame's holes are zeroed.
 */
static long coalesce_copy(void *frame, bool dirty)
{
	struct page_region vec[COALESCE_VEC];
	const char *s = coalesce.scratch, *pos = s, *end = s + REGION_SIZE;
	size_t done = 0; /* offset up to which the frame is right */
	long copied = 0;

	while (pos < end) {
		long n = prim_pagemap_scan(lib.pagemap_fd, pos, end, PAGE_IS_PFNZERO,
					   PAGE_IS_PRESENT | PAGE_IS_SWAPPED, PAGE_IS_PFNZERO,
					   PAGE_IS_PRESENT | PAGE_IS_SWAPPED, vec, COALESCE_VEC);

		if (n < 0)
			return n;
		for (long i = 0; i < n; i++) {
			size_t off = (size_t)(vec[i].start - (uintptr_t)s);
			size_t len = (size_t)(vec[i].end - vec[i].start);

			if (dirty && off > done)
				exch_zero((char *)frame + done, off - done, EXCH_HINT_COLD);
			exch_copy((char *)frame + off, s + off, len, EXCH_HINT_COLD);
			copied += (long)len;
			done = off + len;
		}
		if (n < COALESCE_VEC)
			break;
		pos = (const char *)(uintptr_t)vec[COALESCE_VEC - 1].end;
	}
	if (dirty && done < REGION_SIZE)
		exch_zero((char *)frame + done, REGION_SIZE - done, EXCH_HINT_COLD);
	return copied;
}

/* The state of region @p after its pages were put back or swapped. */
static enum region_state coalesce_state_of(char *p)
{
	return prim_huge_bytes(lib.pagemap_fd, p, REGION_SIZE) == (long)REGION_SIZE ?
	       REGION_HUGE : REGION_SMALL;
}

/* Step 5: the frame into the region; the region's new state. */
static enum region_state coalesce_move_in(char *dst, void *frame)
{
	size_t moved = 0;
	int rc;

	prim_madvise(dst, REGION_SIZE, MADV_DONTNEED);
	rc = prim_uffd_move(lib.uffd, dst, frame, REGION_SIZE, UFFDIO_MOVE_MODE_DONTWAKE, &moved);
	if (rc < 0 && !moved) {
		pool_emptied(frame); /* it holds a copy now, not zeros */
		return coalesce_move_back(dst) == 0 && coalesce_state_of(dst) == REGION_HUGE ?
		       REGION_HUGE : REGION_SMALL;
	}
	if (rc < 0) {
		/* Frame and scratch hold the same data: finish from the frame's
		 * rest, else from the scratch's rest. */
		if (prim_uffd_move(lib.uffd, dst + moved, (char *)frame + moved,
				   REGION_SIZE - moved, UFFDIO_MOVE_MODE_DONTWAKE, NULL) < 0)
			coalesce_restore_hard(dst, coalesce.scratch, moved);
	}
	pool_emptied(frame);
	prim_madvise(coalesce.scratch, REGION_SIZE, MADV_DONTNEED);
	if (rc == 0 && prim_huge_bytes(lib.pagemap_fd, dst, REGION_SIZE) == (long)REGION_SIZE)
		return REGION_HUGE;
	return REGION_SMALL;
}

/* ---- trading frames ---- */

/* A HUGE region of @a not written since heat tracking was armed, or NULL.
 * States are read without their locks: a hint, checked again in transit. */
static struct region *coalesce_cold_partner(struct exch_arena *a, struct region *self)
{
	size_t span = arena_span(a);

	if (!(lib.feat.have & EXCH_HAVE_UFFD_WP) || !span)
		return NULL;
	for (size_t k = 0; k < span; k++) {
		size_t i = (coalesce.partner_hint + k) % span;
		struct region *c = &a->regions[i];

		if (c != self && c->state == REGION_HUGE &&
		    atomic_load_explicit(&c->heat, memory_order_relaxed) == HEAT_COLD) {
			coalesce.partner_hint = i + 1;
			return c;
		}
	}
	return NULL;
}

/* Maps the zero page into every hole of scratch slot @s, so the exchange
 * can write there (the kernel gives each a page on write); 0 or -errno. */
static int coalesce_fill_holes(char *s)
{
	struct page_region vec[COALESCE_VEC];
	long n;

	do {
		n = prim_pagemap_scan(lib.pagemap_fd, s, s + REGION_SIZE,
				      PAGE_IS_PRESENT | PAGE_IS_SWAPPED, 0,
				      PAGE_IS_PRESENT | PAGE_IS_SWAPPED, PAGE_IS_PRESENT, vec,
				      COALESCE_VEC);
		for (long i = 0; i < n; i++) {
			int rc = prim_uffd_zeropage(lib.uffd, (void *)(uintptr_t)vec[i].start,
						    (size_t)(vec[i].end - vec[i].start));

			if (rc < 0)
				return rc;
		}
	} while (n == COALESCE_VEC);
	return n < 0 ? (int)n : 0;
}

/*
 * The pages of region @x are in scratch slot 0 and those of @y in slot 1,
 * both regions empty and in transit. Swaps the backings: one exch_exchange
 * pass trades the slots' contents, then slot 1's pages (a frame, if @y was
 * a hugepage) go to @x and slot 0's to @y, so each address gets its own
 * data back on the other's pages. Returns @y's new state.
 */
static enum region_state coalesce_swap_backing(char *x, char *y)
{
	char *s0 = coalesce.scratch, *s1 = coalesce.scratch + REGION_SIZE;
	size_t moved = 0;
	int rc;

	exch_exchange(s0, s1, REGION_SIZE);
	prim_madvise(x, REGION_SIZE, MADV_DONTNEED); /* a PTE table left behind */
	prim_madvise(y, REGION_SIZE, MADV_DONTNEED);
	rc = prim_uffd_move(lib.uffd, x, s1, REGION_SIZE, UFFDIO_MOVE_MODE_DONTWAKE, &moved);
	if (rc < 0)
		coalesce_restore_hard(x, s1, moved);
	rc = prim_uffd_move(lib.uffd, y, s0, REGION_SIZE, UFFDIO_MOVE_MODE_DONTWAKE, &moved);
	if (rc < 0)
		coalesce_restore_hard(y, s0, moved);
	/* Drop the slots' empty page tables: a hugepage moved into a slot
	 * that still has one would be split. */
	prim_madvise(coalesce.scratch, COALESCE_SCRATCH, MADV_DONTNEED);
	return coalesce_state_of(y);
}

/* Takes cold region @c out into the trade slot; false (all put back) if it
 * is not a whole, cold hugepage any more. */
static bool coalesce_trade_out(struct exch_arena *a, struct region *c, enum region_state *c_old)
{
	char *cold = arena_region_base(a, c), *slot = coalesce.scratch + REGION_SIZE;

	*c_old = fault_transit_begin(c);
	if (*c_old == REGION_HUGE && atomic_load(&c->heat) == HEAT_COLD &&
	    prim_uffd_move(lib.uffd, slot, cold, REGION_SIZE, UFFDIO_MOVE_MODE_DONTWAKE, NULL) == 0 &&
	    prim_huge_bytes(lib.pagemap_fd, slot, REGION_SIZE) == (long)REGION_SIZE)
		return true;
	if (*c_old != REGION_TRANSIT && coalesce_restore_hard(cold, slot, 0) < 0)
		*c_old = REGION_SMALL;
	prim_madvise(slot, REGION_SIZE, MADV_DONTNEED); /* its page table, if any */
	fault_transit_end(a, c, *c_old);
	return false;
}

/*
 * No frame to be had: trade with @c, a cold hugepage region of the same
 * arena whose pins allowed it. @dst's pages are in the scratch (holes get
 * the zero page), @c's frame is moved into the trade slot, one
 * exch_exchange() pass swaps the contents, and the frame goes to @dst while
 * the small pages go to @c. Hot memory ends up huge and cold memory small,
 * and no hugepage is allocated. Returns @dst's new state, or REGION_TRANSIT
 * if @c would not do after all (the scratch is as it was).
 */
static enum region_state coalesce_trade(struct exch_arena *a, struct region *r, char *dst,
					struct region *c)
{
	char *slot = coalesce.scratch + REGION_SIZE, *cold = arena_region_base(a, c);
	enum region_state c_old;

	if (!coalesce_trade_out(a, c, &c_old))
		return REGION_TRANSIT;
	if (coalesce_fill_holes(coalesce.scratch) < 0) {
		fault_transit_end(a, c, coalesce_restore_hard(cold, slot, 0) == 0 ? c_old : REGION_SMALL);
		return REGION_TRANSIT;
	}
	fault_transit_end(a, c, coalesce_swap_backing(dst, cold));
	stat_inc(STAT_trades);
	atomic_store(&r->heat, HEAT_HOT);
	return coalesce_state_of(dst);
}

/* Counts a trade's outcome; the region's new state. */
static enum region_state coalesce_count_trade(enum region_state now, enum region_state old,
					      char *dst, struct exch_coalesce_report *rep)
{
	if (now == REGION_TRANSIT) {
		rep->skipped_no_frame++;
		return coalesce_move_back(dst) == 0 ? old : REGION_SMALL;
	}
	if (now == REGION_HUGE) {
		rep->coalesced++;
		rep->traded++;
		stat_inc(STAT_coalesced_regions);
	} else {
		rep->skipped_busy++;
	}
	return now;
}

/* Counts a copy's outcome (coalesce_move_in's state @now). */
static void coalesce_count_copy(enum region_state now, struct region *r, bool dirty, long copied,
				struct exch_coalesce_report *rep)
{
	rep->bytes_copied += (uint64_t)copied;
	if (now != REGION_HUGE) {
		/* A thread faulting on the region put a page table in it after
		 * the DONTNEED and the kernel split the frame: the data is all
		 * there, as 4K pages. The region was busy; EXCH_BLOCK retries. */
		rep->skipped_busy++;
		return;
	}
	atomic_store(&r->heat, HEAT_HOT); /* chosen to be huge, not a partner */
	rep->coalesced++;
	rep->captured_used += dirty;
	stat_inc(STAT_coalesced_regions);
	if (dirty)
		stat_inc(STAT_capture_coalesced);
}

/*
 * Steps 1-6 for region @r, with @frame (@dirty if captured), or by trading
 * with @c when @frame is NULL. Counts the outcome in @rep. Under lock.
 */
static void coalesce_transfer(struct exch_arena *a, struct region *r, void *frame, bool dirty,
			      struct region *c, struct exch_coalesce_report *rep)
{
	char *dst = arena_region_base(a, r);
	enum region_state old = fault_transit_begin(r), now;
	long copied;
	int rc = old == REGION_TRANSIT ? -EBUSY : coalesce_move_out(dst, rep);

	if (rc < 0) {
		if (rc == -EBUSY || rc == -EAGAIN)
			rep->skipped_busy++; /* pinned, shared, moving, or changing */
		else
			rep->errors++;
		if (frame)
			pool_put_back(frame);
		fault_transit_end(a, r, rc == -EIO ? REGION_SMALL : old);
		return;
	}
	if (!frame) {
		fault_transit_end(a, r, coalesce_count_trade(coalesce_trade(a, r, dst, c), old, dst, rep));
		return;
	}
	copied = coalesce_copy(frame, dirty);
	if (copied < 0) {
		pool_emptied(frame);
		rep->errors++;
		fault_transit_end(a, r, coalesce_move_back(dst) == 0 ? old : REGION_SMALL);
		return;
	}
	now = coalesce_move_in(dst, frame);
	coalesce_count_copy(now, r, dirty, copied, rep);
	fault_transit_end(a, r, now);
}

/*
 * Region @r of @a: a frame first, or else (@trade_only, or no frame is
 * coming: pool_starved) a cold partner whose pins allow it, all before
 * anything moves, because pin callbacks must run while no region is in
 * transit (a callback that touched it would wait for itself).
 */
static void coalesce_move(struct exch_arena *a, struct region *r,
			  struct exch_coalesce_report *rep, bool trade_only)
{
	struct pin_ask ask = { .n = 0 };
	struct region *c = NULL;
	void *frame = NULL;
	bool dirty = false;

	if (trade_only || pool_take_any(0, &frame, &dirty) < 0) {
		frame = NULL;
		if (trade_only || pool_starved())
			c = coalesce_cold_partner(a, r);
		if (!c || pin_ask(a, (uintptr_t)arena_region_base(a, c), REGION_SIZE, &ask) < 0) {
			rep->skipped_no_frame++;
			return;
		}
	}
	coalesce_transfer(a, r, frame, dirty, c, rep);
	pin_done(&ask);
}

/*
 * After every operation the scratch must be empty: a page left there would
 * make every later move out fail. Every path puts pages back before its
 * transit ends (coalesce_restore_hard), so a page still here is one whose
 * place was already taken while the region was in transit, by the copy
 * that went there (EEXIST), or one given up as lost after a long retry. It
 * is counted and dropped; none should ever be.
 */
static void coalesce_scratch_check(void)
{
	long left = prim_data_bytes(lib.pagemap_fd, coalesce.scratch, COALESCE_SCRATCH);

	if (left <= 0)
		return;
	stat_add(STAT_scratch_leftover_pages, (uint64_t)left / PAGE_SIZE_4K);
	prim_madvise(coalesce.scratch, COALESCE_SCRATCH, MADV_DONTNEED);
}

/* Coalesces region @r of @a if the owners of pins over it allow. */
static void coalesce_region(struct exch_arena *a, struct region *r,
			    struct exch_coalesce_report *rep, bool trade_only)
{
	struct pin_ask ask;

	if (pin_ask(a, (uintptr_t)arena_region_base(a, r), REGION_SIZE, &ask) < 0) {
		rep->skipped_declined++;
		stat_inc(STAT_coalesce_declined);
		return;
	}
	coalesce_move(a, r, rep, trade_only);
	coalesce_scratch_check();
	pin_done(&ask);
}

/* Should region @r of @a be coalesced? Counts why not in @rep. */
static bool coalesce_wanted(struct exch_arena *a, struct region *r,
			    struct exch_coalesce_report *rep)
{
	char *p = arena_region_base(a, r);
	long data, huge = prim_huge_bytes(lib.pagemap_fd, p, REGION_SIZE);

	if (huge == (long)REGION_SIZE) {
		rep->already_huge++;
		return false;
	}
	/* Evicted pages come back one by one on touch; a region holding some
	 * stays 4K. Only an eviction adds entries, and it holds this lock. */
	if (tier_region_holds(r)) {
		rep->skipped_tiered++;
		return false;
	}
	data = prim_private_bytes(lib.pagemap_fd, p, REGION_SIZE);
	if (huge < 0 || data <= 0) { /* nothing to do for an empty region */
		rep->errors += data < 0 || huge < 0;
		return false;
	}
	if ((long)REGION_SIZE - data > (long)opt_get(OPT_MAX_PTES_NONE) * (long)PAGE_SIZE_4K) {
		rep->skipped_sparse++;
		return false;
	}
	return true;
}

size_t coalesce_one(struct exch_arena *a, struct region *r, struct exch_coalesce_report *rep,
		    bool trade_only)
{
	uint64_t moved = rep->coalesced + rep->skipped_busy + rep->skipped_no_frame + rep->errors;

	rep->examined++;
	if (!a->registered || coalesce_scratch() < 0 || !coalesce_wanted(a, r, rep))
		return 0;
	coalesce_region(a, r, rep, trade_only);
	return rep->coalesced + rep->skipped_busy + rep->skipped_no_frame + rep->errors > moved ?
	       REGION_SIZE : 0;
}

bool coalesce_supported(void)
{
	return (lib.feat.on & EXCH_ON_ARENA_UFFD) && (lib.feat.have & EXCH_HAVE_UFFD_MOVE) &&
	       lib.pagemap_fd >= 0 && (lib.feat.on & EXCH_ON_HUGE_FIRST);
}

/* One pass over [start, end): what it did goes into @pass. */
static int coalesce_pass(struct exch_arena *a, uintptr_t start, uintptr_t end,
			 struct exch_coalesce_report *pass)
{
	int rc;

	coalesce_lock();
	rc = coalesce_scratch();
	for (uintptr_t p = start; rc == 0 && p < end; p += REGION_SIZE) {
		struct region *r = arena_region(a, p);

		pass->examined++;
		if (coalesce_wanted(a, r, pass))
			coalesce_region(a, r, pass, false);
	}
	coalesce_unlock();
	return rc;
}

/* Adds a retry pass to @rep: its work adds up, its skips replace. */
static void coalesce_merge(struct exch_coalesce_report *rep,
			   const struct exch_coalesce_report *pass)
{
	rep->coalesced += pass->coalesced;
	rep->captured_used += pass->captured_used;
	rep->traded += pass->traded;
	rep->unshared += pass->unshared;
	rep->errors += pass->errors;
	rep->bytes_copied += pass->bytes_copied;
	rep->skipped_busy = pass->skipped_busy;
	rep->skipped_no_frame = pass->skipped_no_frame;
	rep->skipped_declined = pass->skipped_declined;
	rep->retries++;
}

/* EXCH_BLOCK: pause before pass @retry, at most until @deadline. */
static void coalesce_backoff(unsigned retry, uint64_t deadline, bool no_frame)
{
	uint64_t now = coalesce_now_ns(), left = deadline > now ? deadline - now : 0;
	uint64_t pause = (uint64_t)COALESCE_BACKOFF_MIN_NS << (retry < 10 ? retry : 10);

	if (pause > left)
		pause = left;
	if (no_frame) {
		pool_wait_full((unsigned)(pause / 1000000) + 1);
		return;
	}
	usleep((useconds_t)(pause / 1000));
}

/* ---- exch_exchange_pages ---- */

/*
 * Swaps the backings of regions @x and @y (in arenas @ax and @ay), each
 * keeping its data. Under lock. 0, -EBUSY (a page is pinned, a pin's owner
 * declined, another operation holds a region: nothing changed) or -EIO.
 */
static int coalesce_swap_regions(struct exch_arena *ax, char *x, struct exch_arena *ay, char *y)
{
	struct region *rx = arena_region(ax, (uintptr_t)x), *ry = arena_region(ay, (uintptr_t)y);
	struct exch_coalesce_report rep = { 0 };
	enum region_state ox, oy;
	struct pin_ask px, py;
	int rc = -EBUSY;

	/* Evicted pages are holes here: exchanging would lose them. Only an
	 * eviction adds entries, and it holds this lock. */
	if (tier_region_holds(rx) || tier_region_holds(ry))
		return -EBUSY;
	if (pin_ask(ax, (uintptr_t)x, REGION_SIZE, &px) < 0)
		return -EBUSY;
	if (pin_ask(ay, (uintptr_t)y, REGION_SIZE, &py) < 0) {
		pin_done(&px);
		return -EBUSY;
	}
	ox = fault_transit_begin(rx);
	oy = fault_transit_begin(ry);
	if (ox != REGION_TRANSIT && oy != REGION_TRANSIT &&
	    coalesce_move_out_to(x, coalesce.scratch, &rep) == 0) {
		rc = coalesce_move_out_to(y, coalesce.scratch + REGION_SIZE, &rep);
		if (rc == 0 && (coalesce_fill_holes(coalesce.scratch) < 0 ||
				coalesce_fill_holes(coalesce.scratch + REGION_SIZE) < 0))
			rc = -EIO;
		if (rc == 0) {
			oy = coalesce_swap_backing(x, y);
			ox = coalesce_state_of(x);
		} else if (coalesce_restore_hard(y, coalesce.scratch + REGION_SIZE, 0) < 0 ||
			   coalesce_move_back(x) < 0) {
			ox = oy = REGION_SMALL;
		}
	}
	coalesce_scratch_check();
	prim_madvise(coalesce.scratch, COALESCE_SCRATCH, MADV_DONTNEED); /* page tables */
	fault_transit_end(ay, ry, oy);
	fault_transit_end(ax, rx, ox);
	pin_done(&py);
	pin_done(&px);
	return rc == 0 || rc == -EIO ? rc : -EBUSY;
}

/* Is [p, p+len) region-aligned and inside one arena? Then that arena. */
static struct exch_arena *coalesce_arena_of(void *p, size_t len)
{
	struct exch_arena *a = arena_lookup((uintptr_t)p);

	if (!a || (uintptr_t)p % REGION_SIZE || !arena_contains(a, (uintptr_t)p, len))
		return NULL;
	return a;
}

int exch_exchange_pages(void *a, void *b, size_t len)
{
	struct exch_arena *aa = coalesce_arena_of(a, len), *ab = coalesce_arena_of(b, len);
	char *x = a, *y = b;
	size_t done;
	int rc = 0;

	if (!aa || !ab || !len || len % REGION_SIZE ||
	    (x != y && x < y + len && y < x + len)) {
		stat_inc(STAT_misuse);
		return -EINVAL;
	}
	if (x == y)
		return 0;
	lib_ensure();
	if (!coalesce_supported() || !aa->registered || !ab->registered)
		return -EOPNOTSUPP;
	if (coalesce_is_mine())
		return -EDEADLK;
	coalesce_lock();
	rc = coalesce_scratch();
	for (done = 0; rc == 0 && done < len; done += REGION_SIZE)
		rc = coalesce_swap_regions(aa, x + done, ab, y + done);
	/* A failed call changes nothing: swapping again undoes a swap. The
	 * region at done - REGION_SIZE failed and was put back. */
	for (size_t k = rc < 0 ? done - REGION_SIZE : 0; k > 0;) {
		k -= REGION_SIZE;
		coalesce_swap_regions(aa, x + k, ab, y + k);
	}
	coalesce_unlock();
	if (rc == 0)
		stat_add(STAT_pages_exchanged, len / PAGE_SIZE_4K);
	return rc;
}

int exch_coalesce(exch_arena_t *a, void *addr, size_t len, unsigned flags,
		  struct exch_coalesce_report *report)
{
	struct exch_coalesce_report rep = { 0 };
	uintptr_t start = ALIGN_DOWN((uintptr_t)addr, REGION_SIZE);
	uintptr_t end = ALIGN_UP((uintptr_t)addr + len, REGION_SIZE);
	uint64_t t0 = coalesce_now_ns(), deadline;
	int rc;

	if (!len || !arena_contains(a, (uintptr_t)addr, len) ||
	    (flags & ~(EXCH_NOWAIT | EXCH_BLOCK)) || flags == (EXCH_NOWAIT | EXCH_BLOCK)) {
		stat_inc(STAT_misuse);
		return -EINVAL;
	}
	lib_ensure();
	if (!coalesce_supported() || !a->registered) /* plain memory: nothing parks */
		return -EOPNOTSUPP;
	if (coalesce_is_mine())
		return -EDEADLK;
	deadline = t0 + (uint64_t)opt_get(OPT_COALESCE_BLOCK_MS) * 1000000ull;
	rc = coalesce_pass(a, start, end, &rep);
	for (unsigned retry = 0; rc == 0 && (flags & EXCH_BLOCK) &&
	     rep.skipped_busy + rep.skipped_no_frame && coalesce_now_ns() < deadline; retry++) {
		struct exch_coalesce_report pass = { 0 };

		coalesce_backoff(retry, deadline, rep.skipped_no_frame != 0);
		rc = coalesce_pass(a, start, end, &pass);
		coalesce_merge(&rep, &pass);
	}
	rep.ns = coalesce_now_ns() - t0;
	if (report)
		*report = rep;
	return rc;
}

void coalesce_fork_prepare(void)
{
	coalesce_lock();
}

void coalesce_fork_parent(void)
{
	coalesce_unlock();
}

void coalesce_fork_child(void)
{
	coalesce.scratch = NULL; /* MADV_DONTFORK: not mapped here */
	atomic_store(&coalesce.owned, false);
	pthread_mutex_init(&coalesce.lock, NULL);
}

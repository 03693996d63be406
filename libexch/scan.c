/*
 * scan.c - the background coalescer.
 *
 * Regions end up 4K-mapped for many reasons: a first touch that found the
 * pool empty, a fault that raced a frame's move and split it, memory that
 * was populated before the library could place a hugepage, a NOHUGE arena.
 * The kernel's answer is khugepaged, which scans at a fixed rate (about
 * 1.7 MB/s with its defaults) and copies while holding the mmap lock for
 * writing. This thread is the library's answer: every interval it walks
 * the arenas with PAGEMAP_SCAN for pages that are present, private and
 * not PMD-mapped, and coalesces the regions they are in exactly as
 * exch_coalesce(EXCH_NOWAIT) does (coalesce.c), so every rule holds: pins
 * are asked, sparse regions are left alone, busy ones are skipped.
 *
 * Budget. A token bucket in bytes: it fills at EXCH_COALESCE_MBPS and holds
 * at most one interval's worth (at least one region), and every region
 * taken out of the application's reach costs REGION_SIZE, whatever the
 * outcome. So over any time t the thread moves at most mbps * t plus one
 * interval's worth. A pass that runs out of tokens stops and remembers
 * where it was (arena slot and address), so a large arena is covered
 * round-robin rather than its first gigabytes again and again.
 *
 * Frames. First touches have priority: while taking a frame would leave
 * the pool less than half full and no captured frame is waiting
 * (pool_can_spare), frames are scarce and the thread takes none: it waits
 * for the pool's refill. If no frame is coming either (the refill finds no
 * THP, pool_starved), it trades instead (coalesce.c): a hot 4K region and
 * a cold hugepage region of the same arena swap contents, so the hot one
 * becomes huge without a new frame. Trading while a refill is on its way
 * would only move coverage around. Heat needs tracking, which costs a write-protect fault per region
 * per arming, so it runs only while frames are scarce: at most every
 * SCAN_HEAT_EPOCH_NS the thread arms it (scan_arm_heat): every region
 * holding data becomes COLD and write-protected, and its first write makes
 * it HOT (fault.c). Only HOT 4K regions are traded for. Without
 * write-protect support a scarce pass just stops.
 *
 * Locking: scan.lock protects the fields of `scan` and is held alone; the
 * thread takes coalesce.lock (outermost) for each region and for each look
 * at an arena, never scan.lock inside it. An arena seen under coalesce.lock
 * stays live until it is dropped (exch_arena_destroy syncs with it).
 * A fork child has no coalescer (the thread is not copied) until it starts
 * one.
 */
#include "config.h"

#include <errno.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define SCAN_VEC 32
#define SCAN_MB 1000000ull
#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ull
#define SCAN_MAX_MBPS 1000000u
#define SCAN_MIN_INTERVAL_MS 10u
#define SCAN_MAX_INTERVAL_MS 3600000u
#define SCAN_HEAT_EPOCH_NS (1000 * NS_PER_MS)

static struct {
	pthread_mutex_t lock; /* protects the fields below */
	pthread_cond_t wake;  /* signalled to stop */
	pthread_t thread;
	bool running;
	bool stop;
	uint64_t bytes_per_s;
	uint64_t interval_ns;
	/* Thread-private (only the thread reads and writes them): */
	uint64_t tokens;      /* bytes it may move now */
	uint64_t armed_ns;    /* when heat tracking was last armed */
	unsigned cursor_slot; /* where the last pass stopped */
	uintptr_t cursor_addr;
} scan = { .lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER };

static uint64_t scan_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

/* The bucket's size: one interval's worth, at least one region. */
static uint64_t scan_burst(void)
{
	/* At most 1e12 B/s times 3.6e6 ms: no overflow in milliseconds. */
	uint64_t b = scan.bytes_per_s / 1000 * (scan.interval_ns / NS_PER_MS);

	return b < REGION_SIZE ? REGION_SIZE : b;
}

static void scan_refill(uint64_t elapsed_ns)
{
	uint64_t add = scan.bytes_per_s * (elapsed_ns / NS_PER_MS) / 1000;

	scan.tokens = scan.tokens + add > scan_burst() ? scan_burst() : scan.tokens + add;
}

/*
 * Up to @max region addresses of the arena in @slot, from @from on, with a
 * present private 4K page; *@end is where the search stopped. Returns the
 * count, or -ENOENT if the arena is gone. Under coalesce_lock.
 */
static long scan_find(unsigned slot, uintptr_t from, uintptr_t *out, size_t max, uintptr_t *end)
{
	struct page_region vec[SCAN_VEC];
	struct exch_arena *a = arena_at(slot);
	uintptr_t lo, hi;
	size_t n = 0;
	long got;

	if (!a || !a->registered) /* plain memory cannot be moved safely */
		return -ENOENT;
	lo = from > (uintptr_t)a->base ? from : (uintptr_t)a->base;
	hi = (uintptr_t)a->base + a->size;
	*end = hi;
	if (lo >= hi)
		return 0;
	got = prim_pagemap_scan(lib.pagemap_fd, (void *)lo, (void *)hi,
				PAGE_IS_PRESENT | PAGE_IS_HUGE | PAGE_IS_PFNZERO, 0,
				PAGE_IS_HUGE | PAGE_IS_PFNZERO, PAGE_IS_PRESENT, vec, SCAN_VEC);
	for (long i = 0; i < got && n < max; i++) {
		uintptr_t r = ALIGN_DOWN(vec[i].start, REGION_SIZE);

		for (; r < vec[i].end && n < max; r += REGION_SIZE)
			if (!n || out[n - 1] != r)
				out[n++] = r;
	}
	if (n == max || got == SCAN_VEC)
		*end = n ? out[n - 1] + REGION_SIZE : (uintptr_t)vec[SCAN_VEC - 1].end;
	return got < 0 ? got : (long)n;
}

/* One UFFDIO_WRITEPROTECT per arena: the kernel skips what is not mapped.
 * A region filled after it (a first touch) is HOT from its fault. */
void scan_arm_heat(void)
{
	for (unsigned i = 0; i < arena_slots(); i++) {
		struct exch_arena *a = arena_at(i);

		if (!a || !a->registered)
			continue;
		for (size_t j = 0; j < arena_span(a); j++)
			atomic_store_explicit(&a->regions[j].heat, HEAT_COLD, memory_order_relaxed);
		prim_uffd_protect(lib.uffd, a->base, a->size);
	}
	stat_inc(STAT_heat_armed);
}

/* Frames scarce: trade if no frame is coming (arming heat tracking if
 * due); false to wait for the pool's refill instead. */
static bool scan_scarce(uint64_t now)
{
	if (!(lib.feat.have & EXCH_HAVE_UFFD_WP) || !pool_starved()) {
		stat_inc(STAT_scan_frame_stops);
		return false;
	}
	if (!scan.armed_ns || now - scan.armed_ns >= SCAN_HEAT_EPOCH_NS) {
		coalesce_lock();
		scan_arm_heat();
		coalesce_unlock();
		scan.armed_ns = now;
	}
	return true;
}

/* Coalesces the region at @addr of the arena in @slot; false to stop the
 * pass. Frames are judged region by region: while they are scarce, only a
 * HOT region, and only by trading. */
static bool scan_region(unsigned slot, uintptr_t addr, struct exch_coalesce_report *rep,
			uint64_t now)
{
	struct exch_arena *a;
	size_t cost = 0;
	bool scarce;

	if (scan.tokens < REGION_SIZE) {
		stat_inc(STAT_scan_budget_stops);
		return false;
	}
	scarce = !pool_can_spare();
	if (scarce && !scan_scarce(now))
		return false;
	coalesce_lock();
	a = arena_at(slot);
	if (a && arena_contains(a, addr, REGION_SIZE)) {
		struct region *r = arena_region(a, addr);

		if (!scarce || atomic_load(&r->heat) == HEAT_HOT)
			cost = coalesce_one(a, r, rep, scarce);
	}
	coalesce_unlock();
	scan.tokens -= cost;
	return true;
}

/* Regions of the arena in @slot from @from on; false when the pass stops. */
static bool scan_arena(unsigned slot, uintptr_t from, struct exch_coalesce_report *rep,
		       uint64_t now)
{
	uintptr_t found[SCAN_VEC], end;

	for (;;) {
		long n;

		coalesce_lock();
		n = scan_find(slot, from, found, SCAN_VEC, &end);
		coalesce_unlock();
		if (n <= 0)
			return true;
		for (long i = 0; i < n; i++) {
			if (!scan_region(slot, found[i], rep, now)) {
				scan.cursor_slot = slot;
				scan.cursor_addr = found[i];
				return false;
			}
		}
		from = end;
	}
}

/* One pass over every arena, from where the last one stopped. */
static void scan_pass(uint64_t now)
{
	struct exch_coalesce_report rep = { 0 };
	unsigned slots = arena_slots(), first = scan.cursor_slot;
	uintptr_t from = scan.cursor_addr;

	stat_inc(STAT_scan_passes);
	scan.cursor_slot = 0;
	scan.cursor_addr = 0;
	for (unsigned i = 0; i < slots; i++) {
		unsigned slot = (first + i) % slots;

		if (!scan_arena(slot, i == 0 ? from : 0, &rep, now))
			break;
	}
	stat_add(STAT_scan_coalesced, rep.coalesced);
	stat_add(STAT_scan_traded, rep.traded);
}

/* Sleeps until the next interval or a stop; false when told to stop. */
static bool scan_sleep(void)
{
	struct timespec ts;
	uint64_t ns;
	bool go;

	clock_gettime(CLOCK_REALTIME, &ts);
	lock_take(&scan.lock, LOCK_SCAN);
	ns = scan.interval_ns + (uint64_t)ts.tv_nsec;
	ts.tv_sec += (time_t)(ns / NS_PER_S);
	ts.tv_nsec = (long)(ns % NS_PER_S);
	while (!scan.stop && pthread_cond_timedwait(&scan.wake, &scan.lock, &ts) == 0)
		;
	go = !scan.stop;
	lock_drop(&scan.lock, LOCK_SCAN);
	return go;
}

static void *scan_main(void *arg)
{
	uint64_t last = scan_now_ns();

	(void)arg;
	scan.tokens = 0;
	scan.armed_ns = 0;
	while (scan_sleep()) {
		uint64_t now = scan_now_ns();

		scan_refill(now - last);
		last = now;
		scan_pass(now);
	}
	return NULL;
}

int exch_coalescer_start(unsigned mbps, unsigned interval_ms)
{
	int rc = 0;

	if (mbps > SCAN_MAX_MBPS || interval_ms > SCAN_MAX_INTERVAL_MS ||
	    (interval_ms && interval_ms < SCAN_MIN_INTERVAL_MS)) {
		stat_inc(STAT_misuse);
		return -EINVAL;
	}
	lib_ensure();
	if (!coalesce_supported())
		return -EOPNOTSUPP;
	lock_take(&scan.lock, LOCK_SCAN);
	if (scan.running) {
		rc = -EALREADY;
	} else {
		scan.bytes_per_s = (mbps ? mbps : (uint64_t)opt_get(OPT_COALESCE_MBPS)) * SCAN_MB;
		scan.interval_ns = (interval_ms ? interval_ms :
				    (uint64_t)opt_get(OPT_COALESCE_INTERVAL_MS)) * NS_PER_MS;
		scan.stop = false;
		rc = prim_thread_create(&scan.thread, scan_main, NULL);
		scan.running = rc == 0;
	}
	lock_drop(&scan.lock, LOCK_SCAN);
	if (rc == 0)
		log_info("background coalescer: %llu MB/s, every %llu ms",
			 (unsigned long long)(scan.bytes_per_s / SCAN_MB),
			 (unsigned long long)(scan.interval_ns / NS_PER_MS));
	return rc;
}

int exch_coalescer_stop(void)
{
	pthread_t th;

	if (coalesce_is_mine())
		return -EDEADLK; /* a pin callback: it may run on that thread */
	lock_take(&scan.lock, LOCK_SCAN);
	if (!scan.running || scan.stop) {
		lock_drop(&scan.lock, LOCK_SCAN);
		return -ESRCH;
	}
	scan.stop = true;
	th = scan.thread;
	pthread_cond_broadcast(&scan.wake);
	lock_drop(&scan.lock, LOCK_SCAN);
	pthread_join(th, NULL);
	lock_take(&scan.lock, LOCK_SCAN);
	scan.running = false;
	lock_drop(&scan.lock, LOCK_SCAN);
	return 0;
}

void scan_start_configured(void)
{
	int rc;

	if (!opt_get(OPT_COALESCE))
		return;
	rc = exch_coalescer_start(0, 0);
	if (rc < 0 && rc != -EALREADY) {
		log_warn("EXCH_COALESCE=1: background coalescer not started (%s)", prim_errstr(-rc));
		stat_inc(STAT_degraded);
	}
}

void scan_fork_child(void)
{
	scan.running = false;
	scan.stop = false;
	pthread_mutex_init(&scan.lock, NULL);
	pthread_cond_init(&scan.wake, NULL);
}

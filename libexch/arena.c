/*
 * arena.c - arenas, their region descriptors, and a page allocator.
 *
 * An arena is a 2 MB-aligned range of virtual memory reserved with
 * MAP_NORESERVE (no commit charge until touched) and MADV_NOHUGEPAGE, and
 * registered MISSING|WP with the process-wide userfaultfd. NOHUGEPAGE is on
 * purpose: on a THP-eligible VMA the kernel allocates and zeroes a hugepage
 * before it raises the uffd fault (~100 us wasted); the fault service
 * decides placement itself and moves PMD-mapped frames in, which the kernel
 * keeps PMD-mapped regardless of the VMA's THP advice. Without userfaultfd
 * an arena is the same range with MADV_HUGEPAGE: plain memory with the
 * kernel's THP faults.
 *
 * Each 2 MB region has a descriptor (struct region, internal.h): its state,
 * the faults parked on it, and the pages allocated in it. Descriptors and
 * the allocator's bitmaps live in library-private mappings
 * (prim_meta_alloc), never in an arena and never from malloc: the fault
 * service reads them, and it must never fault on or lock against memory the
 * application can hold.
 *
 * The allocator is page-granular and first-fit over two bitmaps: `used` (a
 * page is allocated) and `start` (a page begins an allocation), so a free
 * can be checked exactly: a pointer that does not begin a live allocation
 * (double free, foreign or interior pointer) is refused with -EINVAL and
 * nothing changes. Allocations of 2 MB or more start on a region boundary.
 * Freed memory reads as zeros again: a region that becomes wholly free is
 * MADV_DONTNEED'd and EMPTY (its next touch gets a fresh hugepage), or, if
 * it is one hugepage, moved into the frame pool as a captured frame; pages
 * freed inside a region still in use are zeroed in place when the region is
 * a hugepage (DONTNEED would split it) and DONTNEED'd when it is small.
 *
 * Streams (arena_alloc_stream): small allocations of one stream (the
 * preload's: a jemalloc arena) fill a region of its own, so threads
 * allocating from different streams do not first-touch the same region.
 *
 * The span: regions above the highest one that ever held data are untouched
 * descriptors, and walks over regions stop at it (struct exch_arena.span).
 *
 * The registry maps addresses to arenas for the fault service without a
 * lock: slots are atomic pointers, written under registry.lock. An arena is
 * unregistered from the uffd and taken out of its slot before the fault
 * service is quiesced and its metadata freed.
 *
 * Locking: registry.lock -> arena.alloc_lock -> region.lock (internal.h).
 */
#include "config.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define ARENA_MAGIC 0x65786368u /* "exch" */
#define ARENA_TRANSIT_WAIT_US 50
#define BITS 64

static struct {
	pthread_mutex_t lock; /* protects slot writes and `high` */
	_Atomic(struct exch_arena *) slots[EXCH_MAX_ARENAS];
	_Atomic unsigned high; /* slots at and above are empty */
} registry = { .lock = PTHREAD_MUTEX_INITIALIZER };

/* ---- registry ---- */

struct exch_arena *arena_lookup(uintptr_t addr)
{
	unsigned high = atomic_load_explicit(&registry.high, memory_order_acquire);

	for (unsigned i = 0; i < high; i++) {
		struct exch_arena *a = atomic_load_explicit(&registry.slots[i],
							    memory_order_acquire);

		if (a && addr - (uintptr_t)a->base < a->size)
			return a;
	}
	return NULL;
}

/* True if @a is a live arena; never dereferences a foreign pointer. */
bool arena_live(const struct exch_arena *a)
{
	unsigned high = atomic_load_explicit(&registry.high, memory_order_acquire);

	if (!a)
		return false;
	for (unsigned i = 0; i < high; i++)
		if (atomic_load_explicit(&registry.slots[i], memory_order_acquire) == a)
			return a->magic == ARENA_MAGIC;
	return false;
}

struct exch_arena *arena_at(unsigned slot)
{
	struct exch_arena *a = atomic_load_explicit(&registry.slots[slot], memory_order_acquire);

	return a && a->magic == ARENA_MAGIC ? a : NULL;
}

unsigned arena_slots(void)
{
	return atomic_load_explicit(&registry.high, memory_order_acquire);
}

bool arena_contains(const struct exch_arena *a, uintptr_t addr, size_t len)
{
	return arena_live(a) && addr >= (uintptr_t)a->base && len <= a->size &&
	       addr - (uintptr_t)a->base <= a->size - len;
}

static int arena_insert(struct exch_arena *a)
{
	int rc = -EMFILE;

	lock_take(&registry.lock, LOCK_REGISTRY);
	for (unsigned i = 0; i < EXCH_MAX_ARENAS; i++) {
		if (atomic_load(&registry.slots[i]))
			continue;
		a->slot = i;
		atomic_store_explicit(&registry.slots[i], a, memory_order_release);
		if (i >= atomic_load(&registry.high))
			atomic_store_explicit(&registry.high, i + 1, memory_order_release);
		rc = 0;
		break;
	}
	lock_drop(&registry.lock, LOCK_REGISTRY);
	return rc;
}

static void arena_remove(struct exch_arena *a)
{
	struct exch_arena *expected = a;

	lock_take(&registry.lock, LOCK_REGISTRY);
	atomic_compare_exchange_strong(&registry.slots[a->slot], &expected, NULL);
	lock_drop(&registry.lock, LOCK_REGISTRY);
}

/* Takes @a's alloc_lock if @a is live and stays so; false otherwise. An
 * arena must not be used while it is being destroyed, as memory must not be
 * used while it is freed; this narrows what such misuse can do. */
static bool arena_lock_live(struct exch_arena *a)
{
	if (!arena_live(a))
		return false;
	lock_take(&a->alloc_lock, LOCK_ALLOC);
	if (a->magic == ARENA_MAGIC)
		return true;
	lock_drop(&a->alloc_lock, LOCK_ALLOC);
	return false;
}

/* ---- bitmaps ---- */

static inline bool bit_test(const uint64_t *map, size_t i)
{
	return map[i / BITS] >> (i % BITS) & 1;
}

static inline void bit_set(uint64_t *map, size_t i)
{
	map[i / BITS] |= (uint64_t)1 << (i % BITS);
}

static inline void bit_clear(uint64_t *map, size_t i)
{
	map[i / BITS] &= ~((uint64_t)1 << (i % BITS));
}

/* First page >= @from that is free, or @n. */
static size_t bit_next_free(const uint64_t *used, size_t from, size_t n)
{
	while (from < n) {
		uint64_t w = ~used[from / BITS] >> (from % BITS);

		if (w)
			return from + (size_t)__builtin_ctzll(w) < n ? from + (size_t)__builtin_ctzll(w) : n;
		from = ALIGN_DOWN(from, BITS) + BITS;
	}
	return n;
}

/* First page >= @from that is in use, or @n. */
static size_t bit_next_used(const uint64_t *used, size_t from, size_t n)
{
	while (from < n) {
		uint64_t w = used[from / BITS] >> (from % BITS);

		if (w)
			return from + (size_t)__builtin_ctzll(w) < n ? from + (size_t)__builtin_ctzll(w) : n;
		from = ALIGN_DOWN(from, BITS) + BITS;
	}
	return n;
}

/* Last set bit at or before @i; there must be one. */
static size_t bit_prev_set(const uint64_t *map, size_t i)
{
	uint64_t w = map[i / BITS] & (~(uint64_t)0 >> (BITS - 1 - i % BITS));

	while (!w)
		w = map[(i = ALIGN_DOWN(i, BITS) - 1) / BITS];
	return ALIGN_DOWN(i, BITS) + BITS - 1 - (size_t)__builtin_clzll(w);
}

/* Length of the free run at @from, at most @want. */
static size_t bit_free_run(const uint64_t *used, size_t from, size_t want, size_t n)
{
	size_t i = from;

	while (i < n && i - from < want && !bit_test(used, i))
		i++;
	return i - from;
}

/* ---- creation and destruction ---- */

static size_t arena_map_bytes(size_t npages)
{
	return ALIGN_UP(npages, BITS) / 8;
}

static void arena_free_meta(struct exch_arena *a)
{
	size_t npages = a->size / PAGE_SIZE_4K;

	prim_meta_free(a->regions, a->nregions * sizeof(struct region));
	prim_meta_free(a->used, arena_map_bytes(npages));
	prim_meta_free(a->start, arena_map_bytes(npages));
	prim_meta_free(a, sizeof(*a));
}

/*
 * Region descriptors come from zeroed mappings. Where an all-zero mutex is
 * the initial one (glibc, musl) they need no pass over them, so a huge
 * arena's descriptors cost only the pages its used regions touch.
 */
static bool arena_zero_is_unlocked(void)
{
	static const pthread_mutex_t initial = PTHREAD_MUTEX_INITIALIZER;
	static const pthread_mutex_t zero;

	return !memcmp(&initial, &zero, sizeof(zero));
}

static struct exch_arena *arena_alloc_meta(size_t size, unsigned flags)
{
	struct exch_arena *a = prim_meta_alloc(sizeof(*a));
	size_t npages = size / PAGE_SIZE_4K;

	if (!a)
		return NULL;
	a->size = size;
	a->flags = flags;
	a->nregions = size / REGION_SIZE;
	a->regions = prim_meta_alloc(a->nregions * sizeof(struct region));
	a->used = prim_meta_alloc(arena_map_bytes(npages));
	a->start = prim_meta_alloc(arena_map_bytes(npages));
	if (!a->regions || !a->used || !a->start) {
		arena_free_meta(a);
		return NULL;
	}
	pthread_mutex_init(&a->alloc_lock, NULL);
	pthread_mutex_init(&a->pins.lock, NULL);
	if (!arena_zero_is_unlocked())
		for (size_t i = 0; i < a->nregions; i++)
			pthread_mutex_init(&a->regions[i].lock, NULL);
	return a;
}

/* Registers @a with @uffd, or makes it plain THP memory. */
static void arena_attach(struct exch_arena *a, int uffd)
{
	uint64_t modes = UFFDIO_REGISTER_MODE_MISSING;
	int rc;

	if (lib.feat.have & EXCH_HAVE_UFFD_WP)
		modes |= UFFDIO_REGISTER_MODE_WP;
	if (uffd >= 0) {
		prim_madvise(a->base, a->size, MADV_NOHUGEPAGE);
		rc = prim_uffd_register(uffd, a->base, a->size, modes);
		if (rc == 0) {
			a->registered = true;
			return;
		}
		log_warn("arena of %zu MB: userfaultfd registration failed (%s): "
			 "plain THP memory", a->size >> 20, prim_errstr(-rc));
		stat_inc(STAT_degraded);
	}
	prim_madvise(a->base, a->size, MADV_HUGEPAGE);
}

/* Every region of @a that ever held data to @state. */
static void arena_set_states(struct exch_arena *a, enum region_state state)
{
	for (size_t j = 0; j < arena_span(a); j++)
		a->regions[j].state = (uint8_t)state;
}

void arena_extend_span(struct exch_arena *a, uintptr_t addr)
{
	size_t want = (addr - (uintptr_t)a->base) / REGION_SIZE + 1;
	size_t cur = atomic_load_explicit(&a->span, memory_order_relaxed);

	while (cur < want && !atomic_compare_exchange_weak_explicit(&a->span, &cur, want,
								     memory_order_release,
								     memory_order_relaxed))
		;
}

/*
 * Under mlockall(MCL_FUTURE) the kernel populates and locks a mapping when
 * it is made, so the arena arrives full of 4K pages: no region is EMPTY.
 */
static void arena_check_populated(struct exch_arena *a)
{
	static _Atomic bool warned;

	if (!a->registered || lib.pagemap_fd < 0 ||
	    prim_present_bytes(lib.pagemap_fd, a->base, PAGE_SIZE_4K) <= 0)
		return;
	atomic_store(&a->span, a->nregions);
	arena_set_states(a, REGION_SMALL);
	if (!atomic_exchange(&warned, true)) {
		log_warn("arena memory was populated when mapped (mlockall(MCL_FUTURE)?): "
			 "it stays 4K pages, hugepage-first off for it");
		stat_inc(STAT_degraded);
	}
}

int exch_arena_create(size_t size, unsigned flags, exch_arena_t **out)
{
	struct exch_arena *a;
	void *base;
	int rc;

	if (!size || !out || (flags & ~EXCH_ARENA_NOHUGE) || size > EXCH_ARENA_MAX_SIZE) {
		stat_inc(STAT_misuse);
		return -EINVAL;
	}
	rc = lib_ensure();
	if (rc < 0)
		return rc;
	size = ALIGN_UP(size, REGION_SIZE);
	a = arena_alloc_meta(size, flags);
	if (!a)
		return -ENOMEM;
	rc = prim_map(size, REGION_SIZE, true, &base);
	if (rc < 0) {
		arena_free_meta(a);
		return rc;
	}
	a->base = base;
	a->magic = ARENA_MAGIC;
	lock_take(&registry.lock, LOCK_REGISTRY);
	arena_attach(a, lib.uffd);
	lock_drop(&registry.lock, LOCK_REGISTRY);
	arena_check_populated(a);
	rc = arena_insert(a);
	if (rc < 0) {
		if (a->registered)
			prim_uffd_unregister(lib.uffd, a->base, a->size);
		prim_unmap(a->base, a->size);
		arena_free_meta(a);
		return rc;
	}
	stat_add(STAT_arenas_live, 1);
	stat_add(STAT_arena_bytes, size);
	*out = a;
	return 0;
}

int exch_arena_destroy(exch_arena_t *a)
{
	if (coalesce_is_mine())
		return -EDEADLK; /* a pin callback: the move waits for it */
	if (!arena_lock_live(a)) {
		stat_inc(STAT_misuse);
		return -EINVAL;
	}
	if (a->live) {
		lock_drop(&a->alloc_lock, LOCK_ALLOC);
		stat_inc(STAT_misuse);
		return -EBUSY;
	}
	a->magic = 0;
	lock_drop(&a->alloc_lock, LOCK_ALLOC);
	arena_remove(a);
	tier_sync();     /* an eviction may be walking it */
	coalesce_sync(); /* the background coalescer may hold it */
	lock_take(&registry.lock, LOCK_REGISTRY);
	if (a->registered)
		prim_uffd_unregister(lib.uffd, a->base, a->size);
	lock_drop(&registry.lock, LOCK_REGISTRY);
	fault_quiesce();
	tier_arena_free(a);
	pin_arena_free(a);
	prim_unmap(a->base, a->size);
	stat_sub(STAT_arenas_live, 1);
	stat_sub(STAT_arena_bytes, a->size);
	arena_free_meta(a);
	return 0;
}

int exch_arena_range(const exch_arena_t *a, void **base, size_t *size)
{
	if (!arena_live(a))
		return -EINVAL;
	if (base)
		*base = a->base;
	if (size)
		*size = a->size;
	return 0;
}

/* ---- allocation ---- */

/* First-fit search for @npages; 2 MB-aligned when @aligned. Under alloc_lock. */
static size_t arena_find(struct exch_arena *a, size_t npages, bool aligned)
{
	size_t n = a->size / PAGE_SIZE_4K;
	size_t i = aligned ? 0 : bit_next_free(a->used, a->hint, n);

	while (i + npages <= n) {
		size_t run = bit_free_run(a->used, i, npages, n);

		if (run == npages)
			return i;
		if (aligned)
			i += PAGES_PER_REGION;
		else
			i = bit_next_free(a->used, i + run + 1, n);
	}
	return SIZE_MAX;
}

static void arena_mark(struct exch_arena *a, size_t first, size_t npages, bool used)
{
	for (size_t i = first; i < first + npages; i++) {
		struct region *r = &a->regions[i / PAGES_PER_REGION];

		if (used) {
			bit_set(a->used, i);
			r->used_pages++;
		} else {
			bit_clear(a->used, i);
			r->used_pages--;
		}
	}
}

/* Starts an allocation: alloc_lock taken, or false (EINVAL, counted). */
static bool arena_alloc_begin(struct exch_arena *a)
{
	lib_ensure();
	if (arena_lock_live(a))
		return true;
	stat_inc(STAT_misuse);
	errno = EINVAL;
	return false;
}

/* Takes [first, first+npages) found free (SIZE_MAX: none, ENOMEM) and
 * drops alloc_lock; the memory, or NULL. */
static void *arena_take(struct exch_arena *a, size_t first, size_t npages)
{
	if (first == SIZE_MAX) {
		lock_drop(&a->alloc_lock, LOCK_ALLOC);
		stat_inc(STAT_alloc_enomem);
		errno = ENOMEM;
		return NULL;
	}
	arena_mark(a, first, npages, true);
	bit_set(a->start, first);
	a->live++;
	lock_drop(&a->alloc_lock, LOCK_ALLOC);
	stat_inc(STAT_allocs);
	return a->base + first * PAGE_SIZE_4K;
}

void *exch_alloc(exch_arena_t *a, size_t size)
{
	size_t npages, first;

	if (!arena_live(a) || !size) {
		stat_inc(STAT_misuse);
		errno = EINVAL;
		return NULL;
	}
	if (size > a->size) {
		stat_inc(STAT_alloc_enomem);
		errno = ENOMEM;
		return NULL;
	}
	npages = ALIGN_UP(size, PAGE_SIZE_4K) / PAGE_SIZE_4K;
	if (!arena_alloc_begin(a))
		return NULL;
	first = arena_find(a, npages, size >= REGION_SIZE);
	if (size < REGION_SIZE && first == a->hint)
		a->hint = first + npages;
	return arena_take(a, first, npages);
}

/*
 * First fit for @npages within one region that already holds data (its
 * first touch is over: no frame's move into it can be split by a fault),
 * from the arena's hint; SIZE_MAX if none. Regions not holding data, and
 * runs that would cross into the next region, are skipped a region at a
 * time. States are read as hints. Under alloc_lock.
 */
static size_t arena_find_touched(struct exch_arena *a, size_t npages)
{
	size_t n = arena_span(a) * PAGES_PER_REGION;
	size_t i = bit_next_free(a->used, a->hint, n);

	while (i + npages <= n) {
		struct region *r = &a->regions[i / PAGES_PER_REGION];
		size_t next = ALIGN_UP(i + 1, PAGES_PER_REGION), run;

		if ((r->state != REGION_HUGE && r->state != REGION_SMALL) ||
		    i % PAGES_PER_REGION + npages > PAGES_PER_REGION) {
			i = bit_next_free(a->used, next, n);
			continue;
		}
		run = bit_free_run(a->used, i, npages, n);
		if (run == npages)
			return i;
		i = bit_next_free(a->used, i + run + 1, n);
	}
	return SIZE_MAX;
}

/*
 * exch_alloc for one of several streams of small allocations (the preload:
 * one per jemalloc arena, and so mostly per thread). Each stream fills
 * regions of its own: threads that allocate from different streams then
 * first-touch different regions, and a frame's move into a region is not
 * split by another thread's fault there (fault.c). *@cursor is the
 * stream's, under alloc_lock: the page after its last allocation, or
 * SIZE_MAX. A stream whose region is full takes a hole in a region that
 * already holds data (often the free tail of another stream's region:
 * touched already, so the two share it without a first-touch race), else
 * an empty region, else exch_alloc's first fit.
 */
void *arena_alloc_stream(struct exch_arena *a, size_t size, size_t *cursor)
{
	size_t npages, first = SIZE_MAX, n;

	if (size >= REGION_SIZE || !size)
		return exch_alloc(a, size);
	npages = ALIGN_UP(size, PAGE_SIZE_4K) / PAGE_SIZE_4K;
	if (!arena_alloc_begin(a))
		return NULL;
	n = a->size / PAGE_SIZE_4K;
	/* On a region boundary the stream's region is full. */
	if (*cursor < n && *cursor % PAGES_PER_REGION &&
	    *cursor % PAGES_PER_REGION + npages <= PAGES_PER_REGION &&
	    bit_free_run(a->used, *cursor, npages, n) == npages)
		first = *cursor;
	if (first == SIZE_MAX)
		first = arena_find_touched(a, npages); /* a hole where data already is */
	if (first == SIZE_MAX)
		first = arena_find(a, PAGES_PER_REGION, true); /* an empty region */
	if (first == SIZE_MAX)
		first = arena_find(a, npages, false);
	if (first != SIZE_MAX)
		*cursor = first + npages;
	if (first == a->hint)
		a->hint = first + npages;
	return arena_take(a, first, npages);
}

/* Pages of the allocation that starts at page @first. Under alloc_lock. */
static size_t arena_alloc_pages(struct exch_arena *a, size_t first)
{
	size_t n = a->size / PAGE_SIZE_4K, i = first + 1;

	while (i < n && bit_test(a->used, i) && !bit_test(a->start, i))
		i++;
	return i - first;
}

/* Page index of @ptr if it begins a live allocation, else SIZE_MAX. */
static size_t arena_alloc_start(struct exch_arena *a, const void *ptr)
{
	uintptr_t off = (uintptr_t)ptr - (uintptr_t)a->base;

	if (off >= a->size || off % PAGE_SIZE_4K || !bit_test(a->start, off / PAGE_SIZE_4K))
		return SIZE_MAX;
	return off / PAGE_SIZE_4K;
}

/*
 * Zeroes the pages of [p, p+len) that hold data: present and not the shared
 * zero page, or swapped out. Holes and zero-page mappings already read as
 * zeros, and writing them would make them resident (and, under mlock, locked).
 */
void arena_zero_data(char *p, size_t len)
{
	enum { VEC = 64 };
	struct page_region vec[VEC];
	char *pos = p, *end = p + len;

	while (pos < end) {
		long n = lib.pagemap_fd < 0 ? -EOPNOTSUPP :
			prim_pagemap_scan(lib.pagemap_fd, pos, end, PAGE_IS_PFNZERO,
					  PAGE_IS_PRESENT | PAGE_IS_SWAPPED, PAGE_IS_PFNZERO,
					  PAGE_IS_PRESENT, vec, VEC);

		if (n < 0) {
			xcopy_ops()->zero_t(pos, (size_t)(end - pos));
			return;
		}
		for (long i = 0; i < n; i++)
			xcopy_ops()->zero_t((void *)(uintptr_t)vec[i].start,
					    (size_t)(vec[i].end - vec[i].start));
		if (n < VEC)
			break;
		pos = (char *)(uintptr_t)vec[VEC - 1].end;
	}
}

/*
 * Takes @r's lock once no page of it is away: not in transit (coalescing)
 * and not being moved out by the tier.
 */
static void arena_lock_settled(struct region *r)
{
	lock_take(&r->lock, LOCK_REGION);
	while (r->state == REGION_TRANSIT || r->moving) {
		lock_drop(&r->lock, LOCK_REGION);
		usleep(ARENA_TRANSIT_WAIT_US);
		lock_take(&r->lock, LOCK_REGION);
	}
}

/*
 * Makes freed pages [first, first+npages) of region @r read as zeros again.
 * MADV_DONTNEED gives memory back, but it splits a hugepage when it drops
 * part of one, and it fails on mlocked memory: there the pages are zeroed
 * in place instead. The state changes only once the pages are really gone.
 * Zeroing touches arena memory, so it is never done under the region lock.
 */
static void arena_release(struct exch_arena *a, struct region *r, size_t first, size_t npages)
{
	char *p = a->base + first * PAGE_SIZE_4K;
	size_t len = npages * PAGE_SIZE_4K;
	bool whole = !r->used_pages, zero = false;

	arena_lock_settled(r);
	if (whole) {
		p = arena_region_base(a, r);
		len = REGION_SIZE;
	}
	/* Evicted pages of freed memory must never come back. */
	tier_discard(a, r, (size_t)(p - a->base) / PAGE_SIZE_4K, len / PAGE_SIZE_4K);
	if (!whole && a->registered && r->state == REGION_HUGE)
		zero = true;
	else if (whole && a->registered && r->state == REGION_HUGE && pool_capture(p))
		r->state = REGION_EMPTY;
	else if (prim_madvise(p, len, MADV_DONTNEED) < 0)
		zero = true;
	else if (whole && !r->tiered)
		r->state = REGION_EMPTY;
	lock_drop(&r->lock, LOCK_REGION);
	if (whole && !zero)
		stat_inc(STAT_regions_released);
	if (!zero)
		return;
	arena_zero_data(p, len);
	/* The tier may have taken pages out while they were zeroed, before
	 * the zeroing reached them: it must not keep their old contents. */
	arena_lock_settled(r);
	tier_discard(a, r, (size_t)(p - a->base) / PAGE_SIZE_4K, len / PAGE_SIZE_4K);
	lock_drop(&r->lock, LOCK_REGION);
}

/* Frees the allocation of @npages at page @first. alloc_lock held. */
static void arena_free_locked(struct exch_arena *a, size_t first, size_t npages)
{
	bit_clear(a->start, first);
	arena_mark(a, first, npages, false);
	a->live--;
	if (first < a->hint)
		a->hint = first;
	/* Release region by region, so each region's pages are judged alone. */
	for (size_t i = first; i < first + npages;) {
		size_t end = ALIGN_DOWN(i, PAGES_PER_REGION) + PAGES_PER_REGION;

		if (end > first + npages)
			end = first + npages;
		arena_release(a, &a->regions[i / PAGES_PER_REGION], i, end - i);
		i = end;
	}
	stat_inc(STAT_frees);
}

int exch_free(exch_arena_t *a, void *ptr)
{
	size_t first;

	lib_ensure();
	if (!arena_lock_live(a)) {
		stat_inc(STAT_misuse);
		return -EINVAL;
	}
	first = arena_alloc_start(a, ptr);
	if (first == SIZE_MAX) {
		lock_drop(&a->alloc_lock, LOCK_ALLOC);
		stat_inc(STAT_misuse);
		return -EINVAL;
	}
	arena_free_locked(a, first, arena_alloc_pages(a, first));
	lock_drop(&a->alloc_lock, LOCK_ALLOC);
	return 0;
}

/*
 * munmap of arena memory, for the preload: every allocation overlapping
 * [p, p+len) loses the pages in the range, as a mapping would. One wholly
 * inside is freed; one that sticks out is split at the range's edges and
 * its inside part freed, so a runtime that trims a mapping (unmaps its
 * head and tail) or unmaps a shrunk one piece by piece frees it all in
 * the end. Pages of the range no allocation holds are left alone, as the
 * kernel leaves a hole. The number of pieces freed, or -EINVAL (@p not
 * page-aligned, or the range not inside the arena).
 */
long arena_unmap(struct exch_arena *a, void *p, size_t len)
{
	uintptr_t off = (uintptr_t)p - (uintptr_t)a->base;
	size_t i, end;
	long freed = 0;

	if (!len || off % PAGE_SIZE_4K || off >= a->size || len > a->size - off)
		return -EINVAL;
	if (!arena_lock_live(a))
		return -EINVAL;
	i = off / PAGE_SIZE_4K;
	end = i + ALIGN_UP(len, PAGE_SIZE_4K) / PAGE_SIZE_4K;
	while ((i = bit_next_used(a->used, i, end)) < end) {
		size_t first = bit_prev_set(a->start, i), n = arena_alloc_pages(a, first);

		if (first < i) { /* the allocation begins before the range */
			n -= i - first;
			first = i;
			bit_set(a->start, first);
			a->live++;
		}
		if (first + n > end) { /* ... or ends after it */
			bit_set(a->start, end);
			a->live++;
			n = end - first;
		}
		arena_free_locked(a, first, n);
		freed++;
		i = first + n;
	}
	lock_drop(&a->alloc_lock, LOCK_ALLOC);
	return freed;
}

/*
 * The preload's extent hooks: jemalloc splits an extent it got from
 * exch_alloc to serve a smaller request, and merges neighbours it freed
 * into one, so its extents and the arena's allocations must follow. A
 * split makes the allocation at @p end after @len_a bytes and a new one
 * start there; a merge makes the allocation at @pb part of the one at @pa,
 * which must end where it starts. Only the allocation bitmap changes: the
 * pages stay where they are. 0, or -EINVAL (nothing changed).
 */
int arena_split(struct exch_arena *a, void *p, size_t len_a)
{
	size_t first, k = len_a / PAGE_SIZE_4K;
	int rc = -EINVAL;

	if (!arena_lock_live(a))
		return -EINVAL;
	first = arena_alloc_start(a, p);
	if (first != SIZE_MAX && len_a % PAGE_SIZE_4K == 0 && k &&
	    k < arena_alloc_pages(a, first)) {
		bit_set(a->start, first + k);
		a->live++;
		rc = 0;
	}
	lock_drop(&a->alloc_lock, LOCK_ALLOC);
	return rc;
}

int arena_merge(struct exch_arena *a, void *pa, void *pb)
{
	size_t fa, fb;
	int rc = -EINVAL;

	if (!arena_lock_live(a))
		return -EINVAL;
	fa = arena_alloc_start(a, pa);
	fb = arena_alloc_start(a, pb);
	if (fa != SIZE_MAX && fb != SIZE_MAX && fa + arena_alloc_pages(a, fa) == fb) {
		bit_clear(a->start, fb);
		a->live--;
		rc = 0;
	}
	lock_drop(&a->alloc_lock, LOCK_ALLOC);
	return rc;
}

bool arena_allocated(struct exch_arena *a, const void *p, size_t len)
{
	uintptr_t off = (uintptr_t)p - (uintptr_t)a->base;
	size_t first, end;
	bool all;

	if (!len || off % PAGE_SIZE_4K || off >= a->size || len > a->size - off)
		return false;
	if (!arena_lock_live(a))
		return false;
	first = off / PAGE_SIZE_4K;
	end = first + ALIGN_UP(len, PAGE_SIZE_4K) / PAGE_SIZE_4K;
	all = bit_next_free(a->used, first, end) == end;
	lock_drop(&a->alloc_lock, LOCK_ALLOC);
	return all;
}

long exch_alloc_size(exch_arena_t *a, const void *ptr)
{
	size_t first;
	long size = -EINVAL;

	if (!arena_lock_live(a))
		return -EINVAL;
	first = arena_alloc_start(a, ptr);
	if (first != SIZE_MAX)
		size = (long)(arena_alloc_pages(a, first) * PAGE_SIZE_4K);
	lock_drop(&a->alloc_lock, LOCK_ALLOC);
	return size;
}

int exch_arena_coverage(exch_arena_t *a, size_t *resident, size_t *huge)
{
	long present, pmd;

	if (!arena_live(a) || !resident || !huge)
		return -EINVAL;
	lib_ensure();
	if (lib.pagemap_fd < 0)
		return -EOPNOTSUPP;
	present = prim_private_bytes(lib.pagemap_fd, a->base, a->size);
	pmd = prim_huge_bytes(lib.pagemap_fd, a->base, a->size);
	if (present < 0 || pmd < 0)
		return (int)(present < 0 ? present : pmd);
	*resident = (size_t)present;
	*huge = (size_t)pmd;
	return 0;
}

/* ---- physical contiguity ---- */

#define ARENA_PFN_BATCH 512 /* PFNs read at once: one region's worth */

/* Adds the present range [start, end) to @c; @last is the PFN and address
 * of the page before it. 0 or -errno. */
static int arena_pfn_walk(uintptr_t start, uintptr_t end, struct exch_contiguity *c,
			  uint64_t *run, uint64_t *last_pfn, uintptr_t *last_addr, uint64_t *pfn)
{
	for (uintptr_t p = start; p < end;) {
		size_t n = (end - p) / PAGE_SIZE_4K;
		int rc;

		n = n < ARENA_PFN_BATCH ? n : ARENA_PFN_BATCH;
		rc = prim_pagemap_pfns(lib.pagemap_fd, (void *)p, n, pfn);
		if (rc < 0)
			return rc;
		for (size_t i = 0; i < n; i++, p += PAGE_SIZE_4K) {
			if (!pfn[i])
				continue; /* moved since the scan (PFNs are visible) */
			if (p != *last_addr + PAGE_SIZE_4K || pfn[i] != *last_pfn + 1) {
				c->ranges++;
				*run = 0;
			}
			*run += PAGE_SIZE_4K;
			if (*run > c->largest_bytes)
				c->largest_bytes = *run;
			*last_pfn = pfn[i];
			*last_addr = p;
			c->resident_bytes += PAGE_SIZE_4K;
		}
	}
	return 0;
}

/* Contiguity of [base, base+size), private present pages only. */
static int arena_contiguity_of(char *base, size_t size, struct exch_contiguity *c)
{
	enum { VEC = 64 };
	struct page_region vec[VEC];
	uint64_t *pfn = prim_meta_alloc(ARENA_PFN_BATCH * sizeof(uint64_t));
	uint64_t run = 0, last_pfn = 0;
	uintptr_t last_addr = 0;
	char *pos = base, *end = base + size;
	int rc = pfn ? 0 : -ENOMEM;

	while (rc == 0 && pos < end) {
		long n = prim_pagemap_scan(lib.pagemap_fd, pos, end, PAGE_IS_PRESENT | PAGE_IS_PFNZERO,
					   0, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, vec, VEC);

		rc = n < 0 ? (int)n : 0;
		for (long i = 0; rc == 0 && i < n; i++)
			rc = arena_pfn_walk(vec[i].start, vec[i].end, c, &run, &last_pfn,
					    &last_addr, pfn);
		if (n < VEC)
			break;
		pos = (char *)(uintptr_t)vec[VEC - 1].end;
	}
	prim_meta_free(pfn, ARENA_PFN_BATCH * sizeof(uint64_t));
	return rc;
}

/* Does the kernel show us PFNs? Asked of a page that is surely present. */
static bool arena_pfns_visible(void)
{
	volatile uint64_t here = 1;
	uint64_t pfn = 0;

	return prim_pagemap_pfns(lib.pagemap_fd, (const void *)&here, 1, &pfn) == 0 && pfn;
}

int exch_arena_contiguity(exch_arena_t *a, struct exch_contiguity *out)
{
	struct exch_contiguity c = { 0 };
	int rc;

	if (!arena_live(a) || !out)
		return -EINVAL;
	lib_ensure();
	if (lib.pagemap_fd < 0)
		return -EOPNOTSUPP;
	if (!arena_pfns_visible())
		return -EPERM;
	rc = arena_contiguity_of(a->base, a->size, &c);
	if (rc == 0)
		*out = c;
	return rc;
}

/* The physical gauges over every arena, when PFNs can be read. */
static void arena_measure_contiguity(void)
{
	struct exch_contiguity sum = { 0 };

	if (!arena_pfns_visible())
		return;
	for (unsigned i = 0; i < atomic_load(&registry.high); i++) {
		struct exch_arena *a = atomic_load(&registry.slots[i]);
		struct exch_contiguity c = { 0 };

		if (!a)
			continue;
		if (arena_contiguity_of(a->base, a->size, &c) < 0)
			return;
		sum.ranges += c.ranges;
		if (c.largest_bytes > sum.largest_bytes)
			sum.largest_bytes = c.largest_bytes;
	}
	stat_set(STAT_phys_ranges, sum.ranges);
	stat_set(STAT_phys_largest_bytes, sum.largest_bytes);
}

void arena_measure_coverage(void)
{
	long resident = 0, huge = 0;

	if (lib.pagemap_fd < 0)
		return;
	lock_take(&registry.lock, LOCK_REGISTRY);
	for (unsigned i = 0; i < atomic_load(&registry.high); i++) {
		struct exch_arena *a = atomic_load(&registry.slots[i]);
		long r, h;

		if (!a)
			continue;
		r = prim_private_bytes(lib.pagemap_fd, a->base, a->size);
		h = prim_huge_bytes(lib.pagemap_fd, a->base, a->size);
		resident += r > 0 ? r : 0;
		huge += h > 0 ? h : 0;
	}
	arena_measure_contiguity();
	lock_drop(&registry.lock, LOCK_REGISTRY);
	stat_set(STAT_resident_bytes, (uint64_t)resident);
	stat_set(STAT_huge_bytes, (uint64_t)huge);
	stat_set(STAT_hugepage_coverage_pct,
		 resident ? (uint64_t)(huge * 100 / resident) : 0);
}

/* ---- start-up in a fork child ---- */

int arena_register_all(int uffd)
{
	int rc = 0;

	lock_take(&registry.lock, LOCK_REGISTRY);
	for (unsigned i = 0; i < atomic_load(&registry.high); i++) {
		struct exch_arena *a = atomic_load(&registry.slots[i]);

		if (a && a->registered) {
			a->registered = false;
			arena_attach(a, uffd);
			if (!a->registered)
				rc = -EIO;
		}
	}
	lock_drop(&registry.lock, LOCK_REGISTRY);
	return rc;
}

/*
 * Sets to @state the regions with a page that has every category in @mask
 * and one of @anyof (@whole: the regions such pages cover entirely).
 * Returns 0, or -errno if the page tables could not be read.
 */
static int arena_mark_scan(struct exch_arena *a, int fd, uint64_t mask, uint64_t anyof,
			   enum region_state state, bool whole)
{
	enum { VEC = 64 };
	struct page_region vec[VEC];
	char *pos = a->base, *end = a->base + a->size;

	while (pos < end) {
		long n = prim_pagemap_scan(fd, pos, end, mask, anyof, 0, mask | anyof, vec, VEC);

		if (n < 0)
			return (int)n;
		for (long i = 0; i < n; i++) {
			uintptr_t s = vec[i].start, e = vec[i].end;
			uintptr_t rs = whole ? ALIGN_UP(s, REGION_SIZE) : ALIGN_DOWN(s, REGION_SIZE);

			for (; rs < e && (!whole || rs + REGION_SIZE <= e); rs += REGION_SIZE) {
				arena_extend_span(a, rs);
				arena_region(a, rs)->state = (uint8_t)state;
			}
		}
		if (n < VEC)
			break;
		pos = (char *)(uintptr_t)vec[VEC - 1].end;
	}
	return 0;
}

/*
 * Region states from the page tables. A region holds data if a page is
 * present or swapped out; only a region with neither is EMPTY, because an
 * EMPTY region may be DONTNEED'd. If the tables cannot be read, no region
 * is EMPTY. The span grows to every region found holding data: a fork
 * child touches memory before it registers the arena again, without
 * faults.
 */
static void arena_rescan(struct exch_arena *a, int fd)
{
	bool read = false;

	if (fd >= 0) {
		arena_set_states(a, REGION_EMPTY);
		read = arena_mark_scan(a, fd, 0, PAGE_IS_PRESENT | PAGE_IS_SWAPPED, REGION_SMALL,
				       false) == 0 &&
		       arena_mark_scan(a, fd, PAGE_IS_PRESENT | PAGE_IS_HUGE, 0, REGION_HUGE,
				       true) == 0;
	}
	if (!read) { /* a fork child may have written anywhere: every region */
		atomic_store(&a->span, a->nregions);
		arena_set_states(a, REGION_SMALL);
	}
	/* Evicted pages are missing but hold data: never EMPTY, never HUGE. */
	for (size_t i = 0; i < arena_span(a); i++)
		if (a->regions[i].tiered)
			a->regions[i].state = REGION_SMALL;
}

void arena_rescan_states(int pagemap_fd)
{
	lock_take(&registry.lock, LOCK_REGISTRY);
	for (unsigned i = 0; i < atomic_load(&registry.high); i++) {
		struct exch_arena *a = atomic_load(&registry.slots[i]);

		if (a && a->registered)
			arena_rescan(a, pagemap_fd);
	}
	lock_drop(&registry.lock, LOCK_REGISTRY);
}

void arena_fork_prepare(void)
{
	lock_take(&registry.lock, LOCK_REGISTRY);
	for (unsigned i = 0; i < atomic_load(&registry.high); i++) {
		struct exch_arena *a = atomic_load(&registry.slots[i]);

		if (a)
			lock_take(&a->alloc_lock, LOCK_ALLOC);
	}
	/* Every alloc_lock first: the lock order forbids ALLOC after PIN. */
	for (unsigned i = 0; i < atomic_load(&registry.high); i++) {
		struct exch_arena *a = atomic_load(&registry.slots[i]);

		if (a)
			lock_take(&a->pins.lock, LOCK_PIN);
	}
}

void arena_fork_parent(void)
{
	for (unsigned i = 0; i < atomic_load(&registry.high); i++) {
		struct exch_arena *a = atomic_load(&registry.slots[i]);

		if (a)
			lock_drop(&a->pins.lock, LOCK_PIN);
	}
	for (unsigned i = 0; i < atomic_load(&registry.high); i++) {
		struct exch_arena *a = atomic_load(&registry.slots[i]);

		if (a)
			lock_drop(&a->alloc_lock, LOCK_ALLOC);
	}
	lock_drop(&registry.lock, LOCK_REGISTRY);
}

void arena_fork_child(void)
{
	for (unsigned i = 0; i < atomic_load(&registry.high); i++) {
		struct exch_arena *a = atomic_load(&registry.slots[i]);

		/* Region locks are free here: their holders run under the
		 * fault gate, the tier's lock or an alloc_lock, which the
		 * prepare handlers held. Region states, transits included,
		 * are rebuilt by the rescan at restart. */
		if (a) {
			pthread_mutex_init(&a->alloc_lock, NULL);
			pin_fork_child(a);
		}
	}
	pthread_mutex_init(&registry.lock, NULL);
}

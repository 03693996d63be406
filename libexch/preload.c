/*
 * preload.c - libexch-preload.so: an unmodified program's heap in arenas.
 *
 * LD_PRELOAD=libexch-preload.so makes jemalloc the program's malloc, with
 * every extent jemalloc asks the system for placed in one libexch arena,
 * so the heap gets hugepage-first faults, coalescing and the tier without
 * the program knowing. We do not write a general-purpose malloc: jemalloc
 * (Debian's libjemalloc_pic.a) is linked inside this library with its
 * public names renamed to jex_* at build time and everything but the
 * malloc API and exch_* hidden. The malloc API below is thin wrappers, so
 * the library can start itself before the first allocation is served and
 * install its extent hooks then, whatever ran first (a constructor of
 * another library, the dynamic loader itself).
 *
 * Extent hooks (jemalloc's extent_hooks_t, on every arena):
 *   alloc     exch_alloc() from the heap arena: 4K-aligned, or 2 MB-aligned
 *             for 2 MB and larger, or when a larger alignment (up to 2 MB)
 *             is asked for; a larger one still is cut out of a bigger
 *             allocation. Memory reads as zeros, so *zero is true, and is
 *             always committed. When the arena is full, the original hooks
 *             serve it (counted in escaped_bytes).
 *   dalloc    exch_free() (a whole region freed this way is captured for
 *             the coalescer); extents made before the hooks were installed,
 *             or that escaped, go back to the original hooks.
 *   purge     lazy: as exch_advise(EXCH_FREE); forced: EXCH_DONTNEED. Both
 *             keep the userfaultfd registration and drop evicted pages.
 *             Part of a hugepage is not given back (that would split it
 *             into 4K pages for good): a lazy purge leaves it, a forced one
 *             zeroes it in place (tier_purge, purges_kept_huge); the
 *             memory goes back when its whole region is purged or freed.
 *   commit    nothing to do (always committed); decommit is declined, so
 *             jemalloc purges instead.
 *   split, merge  the arena's allocation bitmap follows (arena_split,
 *             arena_merge), so jemalloc carves and coalesces its extents
 *             as in memory of its own; never across arena and escaped
 *             extents. Declined, jemalloc kept extents as they came and
 *             the large-buffer workload's peak RSS was 2.3x its own.
 * jemalloc runs with oversize_threshold:0 (huge allocations use the same
 * arenas) and retain:false (freed extents come back to the hooks), which
 * MALLOC_CONF cannot override. Its own mmap calls are the system call (the
 * build renames them), not the interposed one below: what its original
 * hooks map stays outside the arena.
 *
 * mmap, munmap, mremap and madvise are interposed too: a runtime that maps
 * its heap itself gets the same arena for anonymous private read-write
 * mappings of at least EXCH_MMAP_MIN, and munmap/madvise on arena memory
 * keep the tier's view true (freed memory never comes back with old
 * contents). The library's own mappings use the system calls directly.
 *
 * A hook never calls malloc: libexch's metadata comes from mmap, and the
 * library is started (hwloc's topology read, threads created) before the
 * hooks are installed.
 *
 * Locking: preload.lock serialises start-up; the hooks themselves take only
 * the arena's locks inside exch_alloc/exch_free.
 */
#include "config.h"

#include <errno.h>
#include <jemalloc/jemalloc.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

/* jemalloc's API, renamed at build time (Makefile.am: jex.a). */
void *jex_malloc(size_t size);
void jex_free(void *ptr);
void *jex_calloc(size_t n, size_t size);
void *jex_realloc(void *ptr, size_t size);
int jex_posix_memalign(void **out, size_t align, size_t size);
void *jex_aligned_alloc(size_t align, size_t size);
void *jex_memalign(size_t align, size_t size);
void *jex_valloc(size_t size);
size_t jex_malloc_usable_size(void *ptr);
int jex_mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen);
void *jex_mallocx(size_t size, int flags);
void *jex_rallocx(void *ptr, size_t size, int flags);
size_t jex_xallocx(void *ptr, size_t size, size_t extra, int flags);
size_t jex_sallocx(const void *ptr, int flags);
void jex_dallocx(void *ptr, int flags);
void jex_sdallocx(void *ptr, size_t size, int flags);
size_t jex_nallocx(size_t size, int flags);
int jex_mallctlnametomib(const char *name, size_t *mibp, size_t *miblenp);
int jex_mallctlbymib(const size_t *mib, size_t miblen, void *oldp, size_t *oldlenp, void *newp,
		     size_t newlen);
void jex_malloc_stats_print(void (*write_cb)(void *, const char *), void *cbopaque,
			    const char *opts);

/* jemalloc's options that keep every extent in the arena. jemalloc reads
 * this symbol (renamed with the rest) after MALLOC_CONF, so a program's
 * MALLOC_CONF may tune the rest of jemalloc but cannot let extents escape. */
const char *jex_malloc_conf_2_conf_harder = "oversize_threshold:0,retain:false";

#define PRELOAD_NAME_MAX 64
#define PRELOAD_ALL_ARENAS "4096" /* MALLCTL_ARENAS_ALL: every arena's stats merged */
#define PRELOAD_POOL_START 4 /* 8 MB of zeroed hugepages ready per node at first */
#define PRELOAD_STREAMS 64   /* jemalloc arenas with regions of their own */

static struct {
	pthread_mutex_t lock;        /* start-up */
	_Atomic int state;           /* 0 not started, 1 starting, 2 ready, 3 off */
	exch_arena_t *heap;
	char *base;
	size_t size;
	extent_hooks_t *orig;        /* arena 0's hooks before ours */
	unsigned narenas;
	/* Per jemalloc arena (modulo), its small extents' place in the heap
	 * (arena_alloc_stream); under the heap's alloc_lock. */
	size_t cursor[PRELOAD_STREAMS];
} preload = { .lock = PTHREAD_MUTEX_INITIALIZER };

enum { PRELOAD_NONE, PRELOAD_STARTING, PRELOAD_READY, PRELOAD_OFF };

static bool preload_owns(const void *p, size_t size)
{
	return preload.base && (uintptr_t)p >= (uintptr_t)preload.base &&
	       (uintptr_t)p + size <= (uintptr_t)preload.base + preload.size;
}

/* ---- the extent hooks ---- */

/* An alignment above 2 MB (posix_memalign of 8 MB, say): an allocation
 * with room to align in, its head and tail freed again. */
static void *preload_alloc_aligned(size_t size, size_t align)
{
	size_t span = size + align - REGION_SIZE;
	char *p = exch_alloc(preload.heap, span), *q;

	if (!p)
		return NULL;
	q = (char *)ALIGN_UP((uintptr_t)p, align);
	if (q > p)
		arena_unmap(preload.heap, p, (size_t)(q - p));
	if (q + size < p + span)
		arena_unmap(preload.heap, q + size, (size_t)(p + span - (q + size)));
	return q;
}

/* Set while this thread creates jemalloc's arenas (preload_install). */
static __thread bool preload_creating __attribute__((tls_model("initial-exec")));

static void *preload_extent_alloc(extent_hooks_t *h, void *new_addr, size_t size,
				  size_t align, bool *zero, bool *commit, unsigned ind)
{
	size_t want = size;
	void *p;

	(void)h;
	if (new_addr) /* jemalloc asks to grow in place: not possible here */
		return NULL;
	if (preload_creating) /* a new arena's metadata block: see preload_install */
		return preload.orig->alloc(preload.orig, NULL, size, align, zero, commit, ind);
	if (align > PAGE_SIZE_4K && align <= REGION_SIZE && size < REGION_SIZE)
		want = REGION_SIZE; /* exch_alloc aligns 2 MB and larger to 2 MB */
	p = align <= REGION_SIZE ? arena_alloc_stream(preload.heap, want,
						       &preload.cursor[ind % PRELOAD_STREAMS]) :
				   preload_alloc_aligned(size, align);
	if (!p) {
		p = preload.orig->alloc(preload.orig, NULL, size, align, zero, commit, ind);
		if (p)
			stat_add(STAT_escaped_bytes, size);
		return p;
	}
	*zero = true;   /* never-touched arena memory reads as zeros */
	*commit = true;
	return p;
}

static bool preload_extent_dalloc(extent_hooks_t *h, void *addr, size_t size, bool committed,
				  unsigned ind)
{
	(void)h;
	if (!preload_owns(addr, size))
		return preload.orig->dalloc(preload.orig, addr, size, committed, ind);
	return exch_free(preload.heap, addr) < 0; /* false: done */
}

static void preload_extent_destroy(extent_hooks_t *h, void *addr, size_t size, bool committed,
				   unsigned ind)
{
	(void)h;
	if (!preload_owns(addr, size)) {
		preload.orig->destroy(preload.orig, addr, size, committed, ind);
		return;
	}
	exch_free(preload.heap, addr);
}

static bool preload_extent_commit(extent_hooks_t *h, void *addr, size_t size, size_t offset,
				  size_t length, unsigned ind)
{
	(void)h;
	if (!preload_owns(addr, size))
		return preload.orig->commit ?
		       preload.orig->commit(preload.orig, addr, size, offset, length, ind) : true;
	return false; /* arena memory is always committed */
}

static bool preload_extent_decommit(extent_hooks_t *h, void *addr, size_t size, size_t offset,
				    size_t length, unsigned ind)
{
	(void)h;
	if (!preload_owns(addr, size))
		return preload.orig->decommit ?
		       preload.orig->decommit(preload.orig, addr, size, offset, length, ind) :
		       true;
	return true; /* declined: jemalloc purges instead */
}

static bool preload_purge(void *addr, size_t size, size_t offset, size_t length, bool lazy)
{
	char *p = (char *)addr + offset;

	(void)size;
	return tier_purge(p, length, lazy) < 0;
}

static bool preload_extent_purge_lazy(extent_hooks_t *h, void *addr, size_t size, size_t offset,
				      size_t length, unsigned ind)
{
	(void)h;
	if (!preload_owns(addr, size))
		return preload.orig->purge_lazy ?
		       preload.orig->purge_lazy(preload.orig, addr, size, offset, length, ind) :
		       true;
	return preload_purge(addr, size, offset, length, true);
}

static bool preload_extent_purge_forced(extent_hooks_t *h, void *addr, size_t size,
					size_t offset, size_t length, unsigned ind)
{
	(void)h;
	if (!preload_owns(addr, size))
		return preload.orig->purge_forced ?
		       preload.orig->purge_forced(preload.orig, addr, size, offset, length, ind) :
		       true;
	return preload_purge(addr, size, offset, length, false);
}

static bool preload_extent_split(extent_hooks_t *h, void *addr, size_t size, size_t size_a,
				 size_t size_b, bool committed, unsigned ind)
{
	(void)h;
	if (!preload_owns(addr, size))
		return preload.orig->split ?
		       preload.orig->split(preload.orig, addr, size, size_a, size_b, committed,
					   ind) :
		       true;
	return arena_split(preload.heap, addr, size_a) < 0;
}

static bool preload_extent_merge(extent_hooks_t *h, void *addr_a, size_t size_a, void *addr_b,
				 size_t size_b, bool committed, unsigned ind)
{
	(void)h;
	if (!preload_owns(addr_a, size_a) && !preload_owns(addr_b, size_b))
		return preload.orig->merge ?
		       preload.orig->merge(preload.orig, addr_a, size_a, addr_b, size_b, committed,
					   ind) :
		       true;
	if (!preload_owns(addr_a, size_a) || !preload_owns(addr_b, size_b))
		return true; /* never across the two kinds */
	return arena_merge(preload.heap, addr_a, addr_b) < 0;
}

static extent_hooks_t preload_hooks = {
	.alloc = preload_extent_alloc,
	.dalloc = preload_extent_dalloc,
	.destroy = preload_extent_destroy,
	.commit = preload_extent_commit,
	.decommit = preload_extent_decommit,
	.purge_lazy = preload_extent_purge_lazy,
	.purge_forced = preload_extent_purge_forced,
	.split = preload_extent_split,
	.merge = preload_extent_merge,
};

/* ---- start-up ---- */

/*
 * The extents jemalloc made with its own hooks before ours were installed
 * (what the loader, hwloc and the program allocated until then, and the
 * slabs that keep serving their size classes): they stay outside the
 * arena, so they count as escaped. Read from jemalloc's page counts.
 */
static void preload_count_early(void)
{
	static const char *const kinds[] = { "stats.arenas." PRELOAD_ALL_ARENAS ".pactive",
					     "stats.arenas." PRELOAD_ALL_ARENAS ".pdirty",
					     "stats.arenas." PRELOAD_ALL_ARENAS ".pmuzzy" };
	uint64_t epoch = 1;
	size_t len = sizeof(epoch), pages = 0, n, page = PAGE_SIZE_4K;

	jex_mallctl("epoch", &epoch, &len, &epoch, len);
	len = sizeof(page);
	jex_mallctl("arenas.page", &page, &len, NULL, 0);
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		len = sizeof(n);
		if (jex_mallctl(kinds[i], &n, &len, NULL, 0) == 0)
			pages += n;
	}
	stat_add(STAT_escaped_bytes, pages * page);
}

/* Installs the hooks on every arena jemalloc may use; false if arena 0's
 * could not be replaced (then the heap stays jemalloc's own). */
static bool preload_install(void)
{
	extent_hooks_t *old = NULL, *mine = &preload_hooks;
	size_t len = sizeof(old), ulen = sizeof(preload.narenas);
	char name[PRELOAD_NAME_MAX];

	if (jex_mallctl("opt.narenas", &preload.narenas, &ulen, NULL, 0) != 0)
		preload.narenas = 1;
	preload_count_early();
	if (jex_mallctl("arena.0.extent_hooks", &old, &len, &mine, sizeof(mine)) != 0 || !old)
		return false;
	preload.orig = old;
	/*
	 * Creates each arena with our hooks if it does not exist yet. Its
	 * metadata block (2 MB, of which a few pages are used until the arena
	 * holds much) comes from jemalloc's own hooks: in the heap arena each
	 * would take a whole hugepage at its first touch, 14 MB resident for a
	 * process that allocates nothing. Blocks an arena adds as its metadata
	 * grows come from the heap arena.
	 */
	preload_creating = true;
	for (unsigned i = 1; i < preload.narenas; i++) {
		snprintf(name, sizeof(name), "arena.%u.extent_hooks", i);
		jex_mallctl(name, NULL, NULL, &mine, sizeof(mine));
	}
	preload_creating = false;
	return true;
}

/*
 * Starts libexch, reserves the heap arena and installs the hooks. Runs
 * once, from the first allocation or the constructor, whichever is first;
 * an allocation made meanwhile by the same thread (hwloc reads the
 * topology with malloc) is served by jemalloc's own hooks.
 */
static void preload_start(void)
{
	long long heap;
	int rc;

	if (atomic_load_explicit(&preload.state, memory_order_acquire) >= PRELOAD_STARTING)
		return;
	pthread_mutex_lock(&preload.lock);
	if (atomic_load(&preload.state) != PRELOAD_NONE) {
		pthread_mutex_unlock(&preload.lock);
		return;
	}
	atomic_store(&preload.state, PRELOAD_STARTING);
	/* Every process of a session may carry the preload, most of them
	 * small: the frame pool starts short, fills from the first touch on
	 * and grows with first touches, unless EXCH_POOL_START says otherwise. */
	opt_prefer(OPT_POOL_START, PRELOAD_POOL_START);
	pool_defer_refill();
	for (unsigned i = 0; i < PRELOAD_STREAMS; i++)
		preload.cursor[i] = SIZE_MAX;
	lib_ensure();
	heap = opt_get(OPT_HEAP_MAX);
	rc = exch_arena_create((size_t)heap, 0, &preload.heap);
	if (rc == 0) {
		void *base;
		size_t size;

		exch_arena_range(preload.heap, &base, &size);
		preload.size = size;
		preload.base = base;
	}
	if (rc < 0 || !preload_install()) {
		log_warn("preload: the heap stays jemalloc's own (%s)",
			 rc < 0 ? prim_errstr(-rc) : "its extent hooks could not be set");
		stat_inc(STAT_degraded);
		atomic_store(&preload.state, PRELOAD_OFF);
	} else {
		log_info("preload: jemalloc's heap in a %llu MB arena at %p; anonymous private "
			 "mmap calls of %lld bytes or more placed in arenas",
			 (unsigned long long)(preload.size >> 20), (void *)preload.base,
			 opt_get(OPT_MMAP_MIN));
		atomic_store_explicit(&preload.state, PRELOAD_READY, memory_order_release);
	}
	pthread_mutex_unlock(&preload.lock);
}

__attribute__((constructor)) static void preload_init(void)
{
	preload_start();
}

static inline void preload_ensure(void)
{
	if (__builtin_expect(atomic_load_explicit(&preload.state, memory_order_relaxed) == 0, 0))
		preload_start();
}

/* ---- large anonymous mappings ---- */

/* Language runtimes map their heaps themselves (CPython's arenas, the JVM,
 * Go): large anonymous private read-write mappings without a fixed address
 * go to the arena too. Anything else passes through untouched. */
static bool preload_mmap_wanted(const void *addr, size_t len, int prot, int flags, int fd)
{
	const int plain = MAP_PRIVATE | MAP_ANONYMOUS;

	return !addr && fd == -1 && prot == (PROT_READ | PROT_WRITE) &&
	       (flags & ~MAP_NORESERVE) == plain && len >= (size_t)opt_get(OPT_MMAP_MIN) &&
	       atomic_load_explicit(&preload.state, memory_order_acquire) == PRELOAD_READY;
}

static bool preload_overlaps(const void *p, size_t size)
{
	return preload.base && (uintptr_t)p < (uintptr_t)preload.base + preload.size &&
	       (uintptr_t)p + size > (uintptr_t)preload.base;
}

/* A fixed mapping or move onto arena memory that cannot be done there:
 * EINVAL, counted, said once. */
static void *preload_refuse_fixed(const char *what, void *addr)
{
	static _Atomic bool warned;

	stat_inc(STAT_mmap_fixed_refused);
	if (!atomic_exchange(&warned, true))
		log_warn("preload: %s onto heap memory at %p refused (EINVAL): the library "
			 "manages it", what, addr);
	errno = EINVAL;
	return MAP_FAILED;
}

/*
 * A MAP_FIXED mapping over arena memory. The kernel would replace the
 * arena's pages under the library, which would go on managing (moving,
 * evicting, zeroing on free, handing out again) whatever is mapped there.
 * What runtimes do with it is reset or decommit their own memory: an
 * anonymous private mapping over it. That is done in the arena instead:
 * the range is dropped (it reads zeros, evicted pages included) and given
 * the protection asked for. Anything else (a file, shared memory, a range
 * that is not all arena) is refused with EINVAL, said once: the arena
 * stays intact, and the program sees an error rather than corruption.
 */
static void *preload_map_fixed(void *addr, size_t len, int prot, int flags, int fd)
{
	const int anon = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
	int rc;

	len = ALIGN_UP(len, PAGE_SIZE_4K);
	if (fd != -1 || (flags & ~MAP_NORESERVE) != anon || (uintptr_t)addr % PAGE_SIZE_4K ||
	    !preload_owns(addr, len) || (prot & ~(PROT_READ | PROT_WRITE)))
		return preload_refuse_fixed("mmap(MAP_FIXED) of a file, shared memory or another "
					    "kind", addr);
	/* Pages the program unmapped are the arena's again, to hand out. */
	if (!arena_allocated(preload.heap, addr, len))
		return preload_refuse_fixed("mmap(MAP_FIXED) over unmapped memory", addr);
	rc = exch_advise(addr, len, EXCH_DONTNEED);
	if (rc == 0 && prot != (PROT_READ | PROT_WRITE))
		rc = prim_sys_mprotect(addr, len, prot) < 0 ? -errno : 0;
	if (rc < 0) {
		errno = -rc;
		return MAP_FAILED;
	}
	stat_inc(STAT_mmap_fixed_emulated);
	return addr;
}

__attribute__((visibility("default"))) void *mmap(void *addr, size_t len, int prot, int flags,
						  int fd, off_t off)
{
	/* MAP_FIXED_NOREPLACE fails over any mapping: the kernel says so. */
	if ((flags & MAP_FIXED) && len && preload_overlaps(addr, len))
		return preload_map_fixed(addr, len, prot, flags, fd);
	if (preload_mmap_wanted(addr, len, prot, flags, fd)) {
		void *p = exch_alloc(preload.heap, len);

		if (p) {
			stat_inc(STAT_mmap_interposed);
			return p;
		}
	}
	return prim_sys_mmap(addr, len, prot, flags, fd, off);
}

__attribute__((visibility("default"), alias("mmap"))) void *mmap64(void *addr, size_t len,
								   int prot, int flags, int fd,
								   off_t off);

/* munmap of arena memory: the allocations in the range lose it, as
 * mappings would (arena_unmap), so a mapping trimmed or shrunk and then
 * unmapped piece by piece is all freed in the end. */
static int preload_unmap(void *addr, size_t len)
{
	long size = exch_alloc_size(preload.heap, addr), rc;

	if (size <= 0 || ALIGN_UP(len, PAGE_SIZE_4K) < (size_t)size)
		stat_inc(STAT_mmap_partial_unmaps);
	rc = arena_unmap(preload.heap, addr, len);
	if (rc < 0) {
		errno = (int)-rc;
		return -1;
	}
	return 0;
}

/* A range reaching past the arena: the kernel unmaps the parts outside,
 * the arena the part inside (the kernel would punch a hole in it). */
__attribute__((visibility("default"))) int munmap(void *addr, size_t len)
{
	char *p = addr, *lo, *hi;

	if (!len || !preload_overlaps(addr, len))
		return prim_sys_munmap(addr, len);
	if ((uintptr_t)p % PAGE_SIZE_4K) {
		errno = EINVAL;
		return -1;
	}
	lo = p > preload.base ? p : preload.base;
	hi = p + len < preload.base + preload.size ? p + len : preload.base + preload.size;
	if ((p < lo && prim_sys_munmap(p, (size_t)(lo - p)) < 0) ||
	    (p + len > hi && prim_sys_munmap(hi, (size_t)(p + len - hi)) < 0))
		return -1;
	return preload_unmap(lo, (size_t)(hi - lo));
}

/* mremap of arena memory: shrinking frees the tail in place, growing
 * (MREMAP_MAYMOVE) takes a new allocation and copies. */
static void *preload_remap(void *old, size_t old_len, size_t new_len, int flags)
{
	void *p;

	old_len = ALIGN_UP(old_len, PAGE_SIZE_4K);
	new_len = ALIGN_UP(new_len, PAGE_SIZE_4K);
	if (flags & ~MREMAP_MAYMOVE || !new_len) {
		errno = EINVAL;
		return MAP_FAILED;
	}
	if (new_len <= old_len) {
		if (new_len < old_len)
			arena_unmap(preload.heap, (char *)old + new_len, old_len - new_len);
		return old;
	}
	if (!(flags & MREMAP_MAYMOVE) || !(p = exch_alloc(preload.heap, new_len))) {
		errno = ENOMEM;
		return MAP_FAILED;
	}
	memcpy(p, old, old_len);
	preload_unmap(old, old_len);
	return p;
}

__attribute__((visibility("default"))) void *mremap(void *old, size_t old_len, size_t new_len,
						    int flags, ...)
{
	void *new_addr = NULL;
	va_list ap;

	if (old_len && preload_owns(old, old_len))
		return preload_remap(old, old_len, new_len, flags);
	if (flags & MREMAP_FIXED) {
		va_start(ap, flags);
		new_addr = va_arg(ap, void *);
		va_end(ap);
		/* Moving other memory over the arena's: as a MAP_FIXED of it. */
		if (new_len && preload_overlaps(new_addr, new_len))
			return preload_refuse_fixed("mremap(MREMAP_FIXED)", new_addr);
	}
	return prim_sys_mremap(old, old_len, new_len, flags, new_addr);
}

/* madvise on arena memory: freeing advice drops evicted pages too; hugepage
 * advice is the library's business; the rest passes through. */
__attribute__((visibility("default"))) int madvise(void *addr, size_t len, int advice)
{
	int rc;

	if (!len || !preload_owns(addr, len))
		return prim_sys_madvise(addr, len, advice);
	switch (advice) {
	case MADV_DONTNEED:
	case MADV_FREE:
		rc = exch_advise(addr, ALIGN_UP(len, PAGE_SIZE_4K),
				 advice == MADV_DONTNEED ? EXCH_DONTNEED : EXCH_FREE);
		break;
	case MADV_HUGEPAGE:
	case MADV_NOHUGEPAGE:
		rc = 0;
		break;
	default:
		return prim_sys_madvise(addr, len, advice);
	}
	if (rc < 0) {
		errno = -rc;
		return -1;
	}
	return 0;
}

/* ---- allocations while the library restarts in a fork child ---- */

/*
 * The library creates its threads while it starts (holding its lock, which
 * jemalloc's extent hooks would take again) and, in a fork child of a
 * process whose tier holds pages, inside the fork handler (init.c). There
 * jemalloc cannot serve what pthread_create allocates: its own child
 * handler may not have run yet (its locks are still held), and its memory
 * may be evicted pages that the fault service being started is the only
 * one to bring back. So while a library thread is being created
 * (prim_in_thread_create) or the library restarts in a fork handler
 * (lib.fork_restart), allocations come from this static area, a bump
 * allocator never reused; they are recognised by address when they are
 * freed (a no-op) or resized (moved to jemalloc).
 */
#define PRELOAD_BOOT_BYTES ((size_t)256 << 10)
#define PRELOAD_BOOT_HDR 16 /* the size, keeping 16-byte alignment */

static char preload_boot[PRELOAD_BOOT_BYTES] __attribute__((aligned(4096)));
static _Atomic size_t preload_boot_used;

static inline bool preload_booting(void)
{
	return __builtin_expect(prim_in_thread_create ||
				atomic_load_explicit(&lib.fork_restart, memory_order_relaxed), 0);
}

static inline bool preload_is_boot(const void *p)
{
	return (const char *)p >= preload_boot && (const char *)p < preload_boot + PRELOAD_BOOT_BYTES;
}

/* Zeroed (the area is .bss and never reused); NULL when it is used up. */
static void *preload_boot_alloc(size_t size, size_t align)
{
	size_t at, used;

	if (align < PRELOAD_BOOT_HDR)
		align = PRELOAD_BOOT_HDR;
	if (size > PRELOAD_BOOT_BYTES || align > PAGE_SIZE_4K)
		return NULL;
	used = atomic_load(&preload_boot_used);
	do {
		at = ALIGN_UP(used + PRELOAD_BOOT_HDR, align);
		if (at + size > PRELOAD_BOOT_BYTES)
			return NULL;
	} while (!atomic_compare_exchange_weak(&preload_boot_used, &used, at + size));
	*(size_t *)(preload_boot + at - PRELOAD_BOOT_HDR) = size;
	return preload_boot + at;
}

static size_t preload_boot_size(const void *p)
{
	return *(const size_t *)((const char *)p - PRELOAD_BOOT_HDR);
}

/* A boot allocation resized: into the boot area while booting, else to jemalloc. */
static void *preload_boot_realloc(void *p, size_t size)
{
	size_t old = preload_boot_size(p);
	void *q = preload_booting() ? preload_boot_alloc(size, 0) : jex_malloc(size);

	if (q)
		memcpy(q, p, old < size ? old : size);
	return q;
}

/* ---- the malloc API ---- */

__attribute__((visibility("default"))) void *malloc(size_t size)
{
	if (preload_booting())
		return preload_boot_alloc(size, 0);
	preload_ensure();
	return jex_malloc(size);
}

__attribute__((visibility("default"))) void free(void *ptr)
{
	if (preload_is_boot(ptr))
		return;
	jex_free(ptr);
}

__attribute__((visibility("default"))) void *calloc(size_t n, size_t size)
{
	if (preload_booting())
		return size && n > SIZE_MAX / size ? NULL : preload_boot_alloc(n * size, 0);
	preload_ensure();
	return jex_calloc(n, size);
}

__attribute__((visibility("default"))) void *realloc(void *ptr, size_t size)
{
	if (preload_is_boot(ptr))
		return preload_boot_realloc(ptr, size);
	if (preload_booting() && !ptr)
		return preload_boot_alloc(size, 0);
	preload_ensure();
	return jex_realloc(ptr, size);
}

__attribute__((visibility("default"))) int posix_memalign(void **out, size_t align, size_t size)
{
	if (preload_booting())
		return (*out = preload_boot_alloc(size, align)) ? 0 : ENOMEM;
	preload_ensure();
	return jex_posix_memalign(out, align, size);
}

__attribute__((visibility("default"))) void *aligned_alloc(size_t align, size_t size)
{
	if (preload_booting())
		return preload_boot_alloc(size, align);
	preload_ensure();
	return jex_aligned_alloc(align, size);
}

__attribute__((visibility("default"))) void *memalign(size_t align, size_t size)
{
	if (preload_booting())
		return preload_boot_alloc(size, align);
	preload_ensure();
	return jex_memalign(align, size);
}

__attribute__((visibility("default"))) void *valloc(size_t size)
{
	if (preload_booting())
		return preload_boot_alloc(size, PAGE_SIZE_4K);
	preload_ensure();
	return jex_valloc(size);
}

void *pvalloc(size_t size); /* glibc has it; jemalloc does not */

__attribute__((visibility("default"))) void *pvalloc(size_t size)
{
	if (preload_booting())
		return preload_boot_alloc(ALIGN_UP(size ? size : 1, PAGE_SIZE_4K), PAGE_SIZE_4K);
	preload_ensure();
	return jex_valloc(ALIGN_UP(size ? size : 1, PAGE_SIZE_4K));
}

__attribute__((visibility("default"))) size_t malloc_usable_size(void *ptr)
{
	if (preload_is_boot(ptr))
		return preload_boot_size(ptr);
	return jex_malloc_usable_size(ptr);
}

/*
 * jemalloc's own API. A program linked against libjemalloc (Redis, for
 * one) would otherwise get these from that library while its malloc and
 * free come from here: two heaps, and a pointer of one freed by the other
 * (sdallocx on a malloc'd pointer) would corrupt both. From the preload
 * they all act on the one heap, the arena's.
 */
#define PRELOAD_API __attribute__((visibility("default")))

PRELOAD_API void *mallocx(size_t size, int flags)
{
	if (preload_booting()) /* zeroed; MALLOCX_LG_ALIGN is the low 6 bits */
		return preload_boot_alloc(size, (size_t)1 << (flags & 0x3f));
	preload_ensure();
	return jex_mallocx(size, flags);
}

PRELOAD_API void *rallocx(void *ptr, size_t size, int flags)
{
	if (preload_is_boot(ptr))
		return preload_boot_realloc(ptr, size);
	preload_ensure();
	return jex_rallocx(ptr, size, flags);
}

PRELOAD_API size_t xallocx(void *ptr, size_t size, size_t extra, int flags)
{
	if (preload_is_boot(ptr))
		return preload_boot_size(ptr); /* cannot grow in place */
	return jex_xallocx(ptr, size, extra, flags);
}

PRELOAD_API size_t sallocx(const void *ptr, int flags)
{
	if (preload_is_boot(ptr))
		return preload_boot_size(ptr);
	return jex_sallocx(ptr, flags);
}

PRELOAD_API void dallocx(void *ptr, int flags)
{
	if (!preload_is_boot(ptr))
		jex_dallocx(ptr, flags);
}

PRELOAD_API void sdallocx(void *ptr, size_t size, int flags)
{
	if (!preload_is_boot(ptr))
		jex_sdallocx(ptr, size, flags);
}

PRELOAD_API size_t nallocx(size_t size, int flags)
{
	preload_ensure();
	return jex_nallocx(size, flags);
}

PRELOAD_API int mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen)
{
	preload_ensure();
	return jex_mallctl(name, oldp, oldlenp, newp, newlen);
}

PRELOAD_API int mallctlnametomib(const char *name, size_t *mibp, size_t *miblenp)
{
	preload_ensure();
	return jex_mallctlnametomib(name, mibp, miblenp);
}

PRELOAD_API int mallctlbymib(const size_t *mib, size_t miblen, void *oldp, size_t *oldlenp,
			     void *newp, size_t newlen)
{
	preload_ensure();
	return jex_mallctlbymib(mib, miblen, oldp, oldlenp, newp, newlen);
}

PRELOAD_API void malloc_stats_print(void (*write_cb)(void *, const char *), void *cbopaque,
				    const char *opts)
{
	preload_ensure();
	jex_malloc_stats_print(write_cb, cbopaque, opts);
}

/*
 * exch.h - public interface of libexch.
 *
 * libexch manages large memory arenas with userfaultfd: the first touch of an
 * empty 2 MB region is served with a pre-zeroed hugepage from a frame pool
 * instead of the kernel's THP fault or 512 small faults, and memory is moved
 * with SIMD exchange copies.
 *
 * Words used the same way everywhere:
 *   arena   a 2 MB-aligned virtual range reserved by exch_arena_create().
 *   region  one 2 MB-aligned, 2 MB piece of an arena; the unit of hugepage
 *           placement.
 *   page    4 KiB, the unit of exch_alloc().
 *   frame   a pre-zeroed 2 MB transparent hugepage waiting in the frame pool.
 *   transit the state of a region whose pages the library has taken out of
 *           the application's reach; threads that touch it wait ("park").
 *
 * Errors: functions that return int return 0 (or a documented non-negative
 * value) on success and a negative errno on failure; a failed call changes
 * nothing. exch_alloc() returns NULL and sets errno.
 *
 * Every function may be called before exch_init(): the library initialises
 * itself on first use. If the kernel lacks a feature, the library degrades
 * (see exch_features()) and keeps working as plain memory.
 */
#ifndef EXCH_H
#define EXCH_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EXCH_VERSION_MAJOR 0
#define EXCH_VERSION_MINOR 1
#define EXCH_VERSION_PATCH 0

#define EXCH_REGION_SIZE ((size_t)2 << 20)
#define EXCH_PAGE_SIZE ((size_t)4096)

/* ---- initialisation and features ------------------------------------- */

/*
 * Probe the kernel and CPU, read the EXCH_* environment and start the fault
 * service. Idempotent and thread-safe. Returns 0; a missing kernel feature is
 * not an error (the library degrades), so the only failure is -ENOMEM when
 * the library cannot map its own metadata.
 */
int exch_init(void);

/* How the process-wide userfaultfd could be opened. */
enum exch_uffd_mode {
	EXCH_UFFD_NONE = 0,      /* no userfaultfd: arenas are plain THP memory */
	EXCH_UFFD_USER_ONLY = 1, /* UFFD_USER_MODE_ONLY: not safe for arenas */
	EXCH_UFFD_FULL = 2,      /* kernel- and user-mode faults are handled */
};

enum exch_uffd_source {
	EXCH_UFFD_SRC_NONE = 0,
	EXCH_UFFD_SRC_SYSCALL = 1, /* userfaultfd(2) */
	EXCH_UFFD_SRC_DEVICE = 2,  /* /dev/userfaultfd, USERFAULTFD_IOC_NEW */
};

enum exch_thp_mode {
	EXCH_THP_UNKNOWN = 0,
	EXCH_THP_ALWAYS = 1,
	EXCH_THP_MADVISE = 2,
	EXCH_THP_NEVER = 3,
};

/* SIMD levels of the exchange engine, lowest to highest. */
enum exch_simd {
	EXCH_SIMD_SCALAR = 0,
	EXCH_SIMD_SSE2 = 1,
	EXCH_SIMD_AVX2 = 2,
	EXCH_SIMD_AVX512 = 3,
};

/* Bits of exch_features.have: what the kernel and CPU offer. */
#define EXCH_HAVE_UFFD_MOVE (1u << 0)       /* UFFDIO_MOVE */
#define EXCH_HAVE_UFFD_WP (1u << 1)         /* write-protect on anonymous memory */
#define EXCH_HAVE_UFFD_WP_ASYNC (1u << 2)   /* UFFD_FEATURE_WP_ASYNC */
#define EXCH_HAVE_UFFD_POISON (1u << 3)     /* UFFDIO_POISON */
#define EXCH_HAVE_PAGEMAP_SCAN (1u << 4)    /* PAGEMAP_SCAN ioctl */
#define EXCH_HAVE_MADV_COLLAPSE (1u << 5)   /* MADV_COLLAPSE */
#define EXCH_HAVE_POPULATE_WRITE (1u << 6)  /* MADV_POPULATE_WRITE */
#define EXCH_HAVE_IO_URING (1u << 7)        /* io_uring_setup works */

/* Bits of exch_features.on: what the library actually does with them. */
#define EXCH_ON_ARENA_UFFD (1u << 0)     /* arenas are registered with the uffd */
#define EXCH_ON_HUGE_FIRST (1u << 1)     /* first touch gets a pool frame */
#define EXCH_ON_FRAME_VERIFY (1u << 2)   /* frames are checked huge before use */

struct exch_features {
	enum exch_uffd_mode uffd_mode;
	enum exch_uffd_source uffd_source;
	uint64_t uffd_kernel_features; /* UFFD_FEATURE_* bits the kernel offers */
	unsigned have;                 /* EXCH_HAVE_* */
	unsigned on;                   /* EXCH_ON_* */
	enum exch_thp_mode thp_mode;   /* /sys/kernel/mm/transparent_hugepage */
	enum exch_simd simd_cpu;       /* best level the CPU and OS support */
	enum exch_simd simd_used;      /* level the exchange engine uses */
	unsigned numa_nodes;
	unsigned cpus;
	size_t llc_bytes;              /* last-level cache, 0 if unknown */
	size_t nt_threshold;           /* copies this large go non-temporal */
};

/* The probe results; never NULL. Initialises the library if needed. */
const struct exch_features *exch_features(void);

/* "scalar", "sse2", "avx2" or "avx512"; "?" for an unknown value. */
const char *exch_simd_name(enum exch_simd level);

/* One-line summary of the features, as EXCH_VERBOSE=1 prints it. */
void exch_features_print(FILE *out);

/* ---- arenas ------------------------------------------------------------ */

typedef struct exch_arena exch_arena_t;

/* exch_arena_create() flags */
#define EXCH_ARENA_NOHUGE (1u << 0) /* never place hugepages at first touch */

#define EXCH_ARENA_MAX_SIZE ((size_t)1 << 46) /* 64 TiB */

/*
 * Reserve an arena of at least @size bytes (rounded up to 2 MB) and register
 * it with the fault service. The memory reads as zeros until written.
 * Returns 0 and sets *@out, or:
 *   -EINVAL  size is 0 or above EXCH_ARENA_MAX_SIZE, @out is NULL, or
 *            @flags has an unknown bit
 *   -ENOMEM  the address space or the library's metadata is exhausted
 *   -EMFILE  too many arenas (EXCH_MAX_ARENAS)
 */
int exch_arena_create(size_t size, unsigned flags, exch_arena_t **out);

/*
 * Unregister and unmap an arena. Returns 0, or:
 *   -EINVAL  @arena is NULL or not a live arena
 *   -EBUSY   the arena still has allocations; nothing is changed
 *   -EDEADLK called from a pin callback (exch_pin)
 * As with free(), no other call may use the arena while it is destroyed.
 */
int exch_arena_destroy(exch_arena_t *arena);

/* Base address and size of an arena; 0 on success, -EINVAL on a bad arena. */
int exch_arena_range(const exch_arena_t *arena, void **base, size_t *size);

/*
 * Allocate @size bytes (rounded up to 4 KiB) in @arena. Allocations of 2 MB
 * or more are 2 MB aligned. Memory reads as zeros. Returns NULL and sets
 * errno: EINVAL for a bad arena or size 0, ENOMEM when the arena is full.
 */
void *exch_alloc(exch_arena_t *arena, size_t size);

/*
 * Free an allocation; its pages go back to the kernel (whole regions become
 * empty again, ready for a hugepage at next touch), or are zeroed in place
 * where giving them back would split a hugepage or is refused (mlock). Returns 0, or -EINVAL if
 * @ptr is not the start of a live allocation of @arena (double free, foreign
 * pointer); nothing is changed then.
 */
int exch_free(exch_arena_t *arena, void *ptr);

/* Size of the live allocation that starts at @ptr, or -EINVAL. */
long exch_alloc_size(exch_arena_t *arena, const void *ptr);

/*
 * Resident and PMD-mapped (hugepage) bytes of @arena, read from the page
 * tables with PAGEMAP_SCAN. Resident counts pages that hold data of their
 * own (present or swapped out), not mappings of the shared zero page. Returns 0, -EINVAL for a bad arena, or
 * -EOPNOTSUPP when the kernel has no PAGEMAP_SCAN.
 */
int exch_arena_coverage(exch_arena_t *arena, size_t *resident, size_t *huge);

/* Physical layout of an arena's resident memory. */
struct exch_contiguity {
	uint64_t ranges;        /* physically contiguous ranges covering it */
	uint64_t largest_bytes; /* the largest of them */
	uint64_t resident_bytes;
};

/*
 * How physically contiguous @arena's resident memory is, from the PFNs in
 * /proc/self/pagemap: a range is a run of virtually consecutive pages on
 * consecutive page frames, so a hugepage is one range of 2 MB or more.
 * Returns 0, or -EINVAL for a bad arena or NULL @out, -EPERM when the
 * kernel hides PFNs (it shows them only to CAP_SYS_ADMIN, as root has),
 * -EOPNOTSUPP without PAGEMAP_SCAN, -ENOMEM.
 */
int exch_arena_contiguity(exch_arena_t *arena, struct exch_contiguity *out);

/*
 * Wait until the frame pool holds its full EXCH_POOL_FRAMES frames, for a
 * program that wants its first touches served from a warm pool. Returns 0,
 * -ETIMEDOUT after @timeout_ms, or -EOPNOTSUPP when hugepage-first is off.
 */
int exch_pool_wait(unsigned timeout_ms);

/* ---- coalescing ---------------------------------------------------------- */

/* exch_coalesce() flags */
#define EXCH_NOWAIT (1u << 0) /* skip a region that cannot be moved now */
#define EXCH_BLOCK (1u << 1)  /* retry such regions until EXCH_COALESCE_BLOCK_MS */

/* What one exch_coalesce() call did, region by region. */
struct exch_coalesce_report {
	uint64_t examined;         /* regions looked at (empty ones too) */
	uint64_t coalesced;        /* regions now one hugepage */
	uint64_t already_huge;     /* regions that were one already */
	uint64_t unshared;         /* coalesced after their pages were made
				      exclusive (shared with a fork child) */
	uint64_t skipped_busy;     /* a page is pinned (O_DIRECT, io_uring), or
				      a fault raced the move in */
	uint64_t retries;          /* EXCH_BLOCK: passes after the first */
	uint64_t skipped_sparse;   /* more holes than EXCH_MAX_PTES_NONE (but
				      some data) */
	uint64_t skipped_no_frame; /* the frame pool was empty */
	uint64_t errors;           /* put back as it was after a kernel error */
	uint64_t bytes_copied;
	uint64_t ns;               /* time the call took */
	uint64_t skipped_declined; /* a pin's owner declined (exch_pin) */
	uint64_t captured_used;    /* coalesced into a frame the application
				      had freed (capture), not a fresh one */
	uint64_t traded;           /* coalesced with no frame free: traded
				      places with a cold hugepage region of
				      the arena, which became 4K pages */
	uint64_t skipped_tiered;   /* holds pages the tier evicted: they come
				      back one by one when touched */
};

/*
 * Coalesce the regions of @arena that [@addr, @addr+@len) touches: each
 * region mapped with 4K pages becomes one hugepage with the same contents,
 * while other threads keep using it (threads that touch a region being
 * moved wait for it). A region that cannot be moved now (a pinned page, no
 * free frame) is skipped with EXCH_NOWAIT (the default), or retried with
 * growing pauses until EXCH_COALESCE_BLOCK_MS have passed with EXCH_BLOCK.
 * What happened is counted in *@report (may be NULL); a skipped region is
 * counted as its last attempt ended. Returns 0, or:
 *   -EINVAL      a bad arena, a range outside it, len 0, unknown flags or
 *                both EXCH_NOWAIT and EXCH_BLOCK
 *   -EOPNOTSUPP  the kernel lacks what coalescing needs (see exch_features),
 *                or @arena is plain memory (its userfaultfd registration
 *                failed): nothing could keep its threads off a moving region
 *   -EDEADLK     called from a pin callback
 */
int exch_coalesce(exch_arena_t *arena, void *addr, size_t len, unsigned flags,
		  struct exch_coalesce_report *report);

/*
 * The background coalescer: a thread that, every @interval_ms, finds
 * 4K-mapped regions in every arena (PAGEMAP_SCAN) and coalesces them as
 * exch_coalesce(EXCH_NOWAIT) would, at most @mbps MB of regions per second
 * (a burst never exceeds one interval's worth). It leaves the frame pool at
 * least half full for first touches, and prefers captured frames. 0 for
 * either value takes EXCH_COALESCE_MBPS / EXCH_COALESCE_INTERVAL_MS.
 * EXCH_COALESCE=1 starts it when the library starts. Returns 0, or:
 *   -EALREADY    it is running (its settings are unchanged)
 *   -EINVAL      a value above 1000000 (MB/s) or 3600000 (ms), or below 10 ms
 *   -EOPNOTSUPP  the kernel lacks what coalescing needs
 * A fork child does not inherit it; with EXCH_COALESCE=1 it starts its own.
 */
int exch_coalescer_start(unsigned mbps, unsigned interval_ms);

/* Stop the background coalescer and wait for it. 0, -ESRCH if it is not
 * running, or -EDEADLK from a pin callback. */
int exch_coalescer_stop(void);

/*
 * Trade the backing of two ranges while each address keeps its data: the
 * physical pages of [@a, @a+@len) and [@b, @b+@len) exchange contents in
 * one exch_exchange() pass and then swap places, so if @b was a hugepage
 * and @a 4K pages, afterwards @a is the hugepage and @b the 4K pages, and
 * both read as before. Nothing is allocated but a page for each hole. Both
 * ranges must be 2 MB aligned and inside arenas, @len a multiple of 2 MB.
 * Threads touching the regions meanwhile wait, as for exch_coalesce().
 * Returns 0, or (a failed call changes nothing):
 *   -EINVAL      misaligned, outside an arena, len 0, or overlapping
 *   -EBUSY       a page is pinned (O_DIRECT, io_uring), a pin's owner
 *                declined, another operation holds a region, or a range
 *                holds evicted pages (exch_advise(EXCH_HOT) restores them)
 *   -EOPNOTSUPP  the kernel lacks what moving pages needs, or an arena is
 *                plain memory (see exch_coalesce)
 *   -EDEADLK     called from a pin callback
 *   -EIO         the kernel refused to put pages back (counted)
 */
int exch_exchange_pages(void *a, void *b, size_t len);

/* ---- the compressed tier ------------------------------------------------ */

/*
 * Cold pages leave the application's memory for the tier: a page that is
 * one repeated word is kept as that word, others are compressed with LZ4
 * into a zbud pool in the library's private memory (at most
 * EXCH_TIER_MAX), and pages that do not compress, or the pool's least
 * recently used ones once it is full, go to an unlinked swap file in
 * EXCH_SWAP_DIR (at most EXCH_SWAP_MAX) written with io_uring. A touched
 * evicted page comes back at once with its contents, whatever thread
 * touches it, in this process or in a fork child. A page whose swap copy
 * does not check out (CRC-32C, identity) is never given back wrong: the
 * touch raises SIGBUS, and tier_restore_errors counts it. Pages that are
 * pinned (O_DIRECT, io_uring buffers), mlocked, shared with a fork child
 * or covered by a pin whose owner declines are not evicted.
 */

/* exch_reclaim() flags */
#define EXCH_RECLAIM_SWAP (1u << 0) /* straight to the swap file, compressed */

/*
 * Evict at least @bytes of @arena's resident memory, coldest regions first
 * (regions not written since heat tracking was armed, or never tracked,
 * before those written). Returns the bytes evicted (less when there is not
 * that much, or nowhere to store it), or:
 *   -EINVAL      a bad arena, @bytes 0, unknown flags
 *   -EOPNOTSUPP  the kernel lacks what eviction needs (userfaultfd in full
 *                mode with UFFDIO_MOVE, PAGEMAP_SCAN), or @arena is plain
 *                memory
 *   -EDEADLK     called from a pin callback
 *   -ENOMEM      the tier's own memory could not be mapped
 */
long exch_reclaim(exch_arena_t *arena, size_t bytes, unsigned flags);

/* exch_advise() advice */
enum exch_advice {
	EXCH_COLD = 1,     /* evict the range's pages now */
	EXCH_HOT = 2,      /* bring the range's evicted pages back now */
	EXCH_DONTNEED = 3, /* madvise(MADV_DONTNEED): the range reads as zeros,
			      evicted pages included */
	EXCH_FREE = 4,     /* madvise(MADV_FREE); evicted pages are dropped */
};

/*
 * Advice on [@addr, @addr+@len), page-aligned and inside one arena. A
 * program that frees arena memory with madvise() itself must use
 * EXCH_DONTNEED or EXCH_FREE instead, or evicted pages of that memory come
 * back with their old contents when touched. Returns 0, or:
 *   -EINVAL      misaligned, len 0, outside an arena, unknown advice
 *   -EOPNOTSUPP, -EDEADLK, -ENOMEM  as exch_reclaim() (COLD and HOT)
 *   or the -errno of madvise() (DONTNEED, FREE: mlocked memory is -EINVAL)
 */
int exch_advise(void *addr, size_t len, int advice);

/*
 * Shrink the tier's pool to at most @target bytes: compaction first (the
 * objects of half-used zbud pages move together, freeing pages), then the
 * least recently used pages go back into the application (unuse). Returns
 * the pool's bytes afterwards, or -EOPNOTSUPP / -EDEADLK / -ENOMEM.
 */
long exch_tier_shrink(size_t target);

/* ---- pins ---------------------------------------------------------------- */

/* Events of an exch_pin() callback. */
enum exch_pin_event {
	EXCH_PIN_MOVE_BEGIN = 0, /* about to move: return 0 to allow, else decline */
	EXCH_PIN_MOVE_END = 1,   /* the move allowed by BEGIN is over (moved or
				    put back); the return value is ignored */
};

/*
 * Called for a pinned range [@addr, @addr+@len) that overlaps a region the
 * library wants to move. BEGIN comes before the region is touched: an owner
 * that holds the range in a device or a kernel interface (an io_uring
 * registered buffer, RDMA) may release it and return 0, or return nonzero to
 * keep it where it is. Every BEGIN that returned 0 is followed by one END,
 * after which the range holds the same contents at the same address (on
 * new pages) and may be registered again. Callbacks run in the thread that
 * coalesces, one at a time, while no region is in transit, so a callback
 * may touch any memory. It must not wait for a thread that calls into the
 * library's moving parts: exch_unpin(), exch_coalesce(),
 * exch_exchange_pages(), exch_arena_destroy() and exch_coalescer_stop()
 * wait for the move in progress, and called from a callback they return
 * -EDEADLK.
 */
typedef int (*exch_pin_fn)(void *addr, size_t len, enum exch_pin_event event, void *arg);

/*
 * Pin [@addr, @addr+@len) inside one arena: before the library moves a
 * region that overlaps it, it asks @fn (NULL: always decline). Pins may
 * overlap. Returns 0, or:
 *   -EINVAL  len 0, or the range is not inside one arena
 *   -EEXIST  the same range is pinned already
 *   -ENOMEM  the library's metadata is exhausted
 */
int exch_pin(void *addr, size_t len, exch_pin_fn fn, void *arg);

/*
 * Remove the pin of exactly [@addr, @addr+@len). When it returns, its
 * callback is not running and will not be called again. Returns 0, or:
 *   -ENOENT   no such pin
 *   -EDEADLK  called from a pin callback (the move in progress waits for it)
 */
int exch_unpin(void *addr, size_t len);

/* ---- exchange engine ---------------------------------------------------- */

/* Cache hint for exch_copy() and exch_zero(). */
enum exch_hint {
	EXCH_HINT_AUTO = 0, /* non-temporal above the LLC-derived threshold */
	EXCH_HINT_COLD = 1, /* destination is not in cache: non-temporal stores */
	EXCH_HINT_HOT = 2,  /* destination will be used soon: temporal stores */
};

/* Copy @len bytes. Returns 0, or -EINVAL if the ranges overlap or @hint is unknown. */
int exch_copy(void *dst, const void *src, size_t len, enum exch_hint hint);

/*
 * Swap the contents of two ranges in one pass with no buffer. @a == @b is a
 * no-op. Returns 0, or -EINVAL if the ranges partly overlap.
 */
int exch_exchange(void *a, void *b, size_t len);

/* Zero @len bytes. Returns 0, or -EINVAL for an unknown @hint. */
int exch_zero(void *dst, size_t len, enum exch_hint hint);

/* 1 if all @len bytes are zero, else 0. */
int exch_is_zero(const void *p, size_t len);

/* CRC-32C (Castagnoli) of @len bytes, continuing from @crc (start with 0). */
uint32_t exch_crc32c(uint32_t crc, const void *p, size_t len);

/* ---- statistics --------------------------------------------------------- */

/* Print every counter with its reason: text, or one JSON object if @json. */
int exch_stats_print(FILE *out, int json);

/* Value of the counter named @name. Returns 0, or -ENOENT for an unknown name. */
int exch_stats_get(const char *name, uint64_t *value);

#ifdef __cplusplus
}
#endif
#endif /* EXCH_H */

/*
 * internal.h - what the files of libexch share, grouped by defining file.
 *
 * The glossary is in include/exch.h (arena, region, page, frame, transit).
 * Every cross-file name carries the prefix of the file that defines it:
 * prim_ (prim.c), log_ (log.c), opt_ (options.c), stat_ (stats.c), topo_
 * (topo.c), xcopy_ (xcopy*.c), arena_ (arena.c), fault_ (fault.c), pool_
 * (pool.c), coalesce_ (coalesce.c), scan_ (scan.c), pin_ (pin.c), zbud_ and
 * zpool_ (zbud.c), codec_ (codec.c), swap_ (swap.c), tier_ (tier.c), feat_
 * (features.c), lib_ (init.c).
 *
 * Lock order, outermost first; each lock is documented where its data is:
 *   tier.lock -> coalesce.lock -> scan.lock -> lib.lock -> arena registry lock
 *            -> arena.alloc_lock -> arena.pins.lock -> fault gate -> region.lock
 *            -> pool.lock -> tier gate -> zbud pool lock -> swap file lock
 * (enum lock_level below; debug builds assert it, lock.c).
 * Nothing touches arena memory while holding a region lock or the pool lock:
 * the fault service may need those locks to resolve the very fault.
 */
#ifndef EXCH_INTERNAL_H
#define EXCH_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "exch.h"
#include "compat.h"

#define REGION_SIZE EXCH_REGION_SIZE
#define PAGE_SIZE_4K EXCH_PAGE_SIZE
#define PAGES_PER_REGION (REGION_SIZE / PAGE_SIZE_4K)
#define EXCH_MAX_ARENAS 256

#define ALIGN_UP(x, a) (((x) + (a) - 1) & ~((uintptr_t)(a) - 1))
#define ALIGN_DOWN(x, a) ((x) & ~((uintptr_t)(a) - 1))

#ifdef EXCH_DEBUG
#include <assert.h>
#define EXCH_ASSERT(c) assert(c)
#else
#define EXCH_ASSERT(c) ((void)0)
#endif

/* ---- lock.c: the lock order ---- */

enum lock_level {
	LOCK_TIER,
	LOCK_COALESCE,
	LOCK_SCAN,
	LOCK_LIB,
	LOCK_REGISTRY,
	LOCK_ALLOC,
	LOCK_PIN,
	LOCK_GATE,
	LOCK_REGION,
	LOCK_POOL,
	LOCK_TGATE,
	LOCK_ZPOOL,
	LOCK_SWAP,
	LOCK__COUNT
};

#ifdef EXCH_DEBUG
void lock_order_take(enum lock_level level);
void lock_order_drop(enum lock_level level);
void lock_order_reset(void); /* fork child: the prepare handler's locks */
#else
static inline void lock_order_take(enum lock_level level) { (void)level; }
static inline void lock_order_drop(enum lock_level level) { (void)level; }
static inline void lock_order_reset(void) {}
#endif

static inline void lock_take(pthread_mutex_t *m, enum lock_level level)
{
	lock_order_take(level);
	pthread_mutex_lock(m);
}

static inline void lock_drop(pthread_mutex_t *m, enum lock_level level)
{
	pthread_mutex_unlock(m);
	lock_order_drop(level);
}

/* ---- prim.c: the one place that talks to the kernel (0 or -errno) ---- */

/* The system calls themselves (raw: -1 with errno, MAP_FAILED); never
 * the interposed ones of the preload. */
void *prim_sys_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
int prim_sys_munmap(void *p, size_t len);
int prim_sys_madvise(void *p, size_t len, int advice);
int prim_sys_mprotect(void *p, size_t len, int prot);
void *prim_sys_mremap(void *old, size_t old_len, size_t new_len, int flags, void *new_addr);
int prim_map(size_t size, size_t align, bool noreserve, void **out);
int prim_unmap(void *p, size_t len);
int prim_madvise(void *p, size_t len, int advice);
/* A private area for pages moved out of arenas: region-aligned, 4K pages,
 * not inherited by fork, registered MISSING with @uffd (the destination of
 * UFFDIO_MOVE must be). 0 or -errno. */
int prim_map_scratch(int uffd, size_t len, void **out);
void *prim_meta_alloc(size_t size); /* zeroed private memory, never malloc */
void prim_meta_free(void *p, size_t size);

int prim_uffd_open(bool user_mode_only, bool try_device,
		   enum exch_uffd_source *src);
int prim_uffd_api(int fd, uint64_t want, uint64_t *features);
int prim_uffd_register(int fd, void *p, size_t len, uint64_t modes);
int prim_uffd_unregister(int fd, void *p, size_t len);
int prim_uffd_move(int fd, void *dst, void *src, size_t len, uint64_t mode,
		   size_t *moved);
int prim_uffd_zeropage(int fd, void *dst, size_t len);
int prim_uffd_copy(int fd, void *dst, const void *src, size_t len);
int prim_uffd_wake(int fd, void *p, size_t len);
int prim_uffd_unprotect(int fd, void *p, size_t len);
int prim_uffd_protect(int fd, void *p, size_t len);
int prim_uffd_poison(int fd, void *p, size_t len); /* touches raise SIGBUS */

int prim_pagemap_open(void);
/* Regions of [start,end) whose categories, xor @inverted, have all of
 * @mask and (if set) one of @anyof; count or -errno. */
long prim_pagemap_scan(int fd, const void *start, const void *end,
		       uint64_t mask, uint64_t anyof, uint64_t inverted, uint64_t ret,
		       struct page_region *vec, size_t vec_len);
/* Bytes of [p, p+len) that are PMD-mapped, or -errno. */
long prim_huge_bytes(int pagemap_fd, const void *p, size_t len);
/* Bytes of [p, p+len) that are present, or -errno. */
long prim_present_bytes(int pagemap_fd, const void *p, size_t len);
/* Bytes of [p, p+len) that hold data: present or swapped out; or -errno. */
long prim_data_bytes(int pagemap_fd, const void *p, size_t len);
/* The same without zero-page mappings (they hold no data of their own). */
long prim_private_bytes(int pagemap_fd, const void *p, size_t len);

/* PFNs of @n pages from @p (0: not present, or hidden without
 * CAP_SYS_ADMIN); 0 or -errno. */
int prim_pagemap_pfns(int fd, const void *p, size_t n, uint64_t *pfn);
/* pthread_create with every signal blocked in the new thread, returning
 * once it runs; 0 or -errno. */
int prim_thread_create(pthread_t *thread, void *(*fn)(void *), void *arg);
/* True in a thread while it creates a library thread: the preload serves
 * its allocations (glibc's thread data) from a static area. */
extern __thread bool prim_in_thread_create __attribute__((tls_model("initial-exec")));
/* The same on a stack mapped here (*@stack), not one of glibc's cache. */
#define PRIM_THREAD_STACK ((size_t)1 << 20)
int prim_thread_create_own_stack(pthread_t *thread, void *(*fn)(void *), void *arg,
				 void **stack);
void prim_thread_stack_free(void *stack); /* after the thread is joined, or gone */
/* @fn(name) for each entry of @path, without malloc; 0 or -errno. */
int prim_dir_each(const char *path, void (*fn)(const char *name, void *arg), void *arg);
/* Reads a small text file into buf (NUL-terminated); length or -errno. */
long prim_read_text(const char *path, char *buf, size_t size);
int prim_write_all(int fd, const char *buf, size_t len);
enum exch_thp_mode prim_thp_mode(void);
int prim_io_uring_probe(void);
int prim_eventfd(void);
int prim_eventfd_signal(int fd);
/* Messages read into @msgs (at most @n), or -errno (-EAGAIN: none). */
long prim_uffd_read(int fd, struct uffd_msg *msgs, size_t n);
/* Waits until one of two fds is readable; 0 or -errno. */
int prim_poll_in(const int fds[2], bool ready[2]);
int prim_create(const char *path); /* for writing, 0644, truncated */
const char *prim_errstr(int err); /* strerror, without the locale (and its lock) */
/* A 0600 shared-memory file mapped shared (not into fork children), with a
 * shared flock held while the returned fd is open; fd or -errno. */
int prim_shm_create(const char *path, size_t size, void **map);
int prim_futex_wait(_Atomic uint32_t *addr, uint32_t val); /* shared futex */
int prim_futex_wake(_Atomic uint32_t *addr);               /* wakes all */

/* ---- log.c: warnings and verbose lines, without malloc ---- */

void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- options.c: the EXCH_* options table ---- */

enum opt_id {
	OPT_VERBOSE,
	OPT_STATS,
	OPT_STATS_FILE,
	OPT_PUBLISH,
	OPT_UFFD,
	OPT_THP,
	OPT_POOL_FRAMES,
	OPT_POOL_START,
	OPT_FAULT_PER_CPU,
	OPT_FAULT_THREADS,
	OPT_SIMD,
	OPT_NT_THRESHOLD,
	OPT_MAX_PTES_NONE,
	OPT_COALESCE_BLOCK_MS,
	OPT_CAPTURE_FRAMES,
	OPT_POOL_DECAY_MS,
	OPT_COALESCE,
	OPT_COALESCE_MBPS,
	OPT_COALESCE_INTERVAL_MS,
	OPT_TIER_MAX,
	OPT_SWAP_DIR,
	OPT_SWAP_MAX,
	OPT_LIMIT,
	OPT_HEAP_MAX,
	OPT_MMAP_MIN,
	OPT__COUNT
};

void opt_init(void);           /* once; reads environ */
long long opt_get(enum opt_id id);
/* A different default for this process (the preload): kept only if the
 * environment does not set @id. Before the library starts. */
void opt_prefer(enum opt_id id, long long v);
void opt_override(enum opt_id id, long long v); /* a setting that cannot stand */
const char *opt_str(enum opt_id id); /* string options; "" when unset */
const char *opt_name(enum opt_id id);
/* "123", "4k", "2M", "1G" (binary units); 0 or -EINVAL / -ERANGE. */
int opt_parse_size(const char *s, long long *out);
void opt_reload(void);         /* tests: read environ again */
/* The table as documentation: rows of README's settings table, or the
 * entries of libexch(7); the same text in both. */
enum opt_doc_format { OPT_DOC_MARKDOWN, OPT_DOC_MAN };
void opt_print_doc(FILE *out, enum opt_doc_format format);

/* ---- stats.c: counters with a reason each ---- */

/* X(name, kind, reason); kind is COUNT (only grows) or GAUGE. */
#define EXCH_STATS_LIST(X)                                                     \
	X(faults, COUNT, "userfaultfd faults read by the fault service")      \
	X(faults_huge, COUNT,                                                  \
	  "first touches of an empty region served with a pool frame")         \
	X(faults_zeropage, COUNT,                                              \
	  "faults served with the zero page (a whole empty region, or a hole)")\
	X(faults_filled, COUNT,                                                \
	  "first writes to an empty region that got no frame: 512 zeroed 4K pages at once") \
	X(faults_already, COUNT,                                               \
	  "faults on a page mapped meanwhile: the thread was only woken")      \
	X(faults_wp, COUNT, "write-protect faults (unprotected and woken)")   \
	X(faults_parked, COUNT,                                                \
	  "faults parked on a region in transit, or a page being evicted")     \
	X(faults_stray, COUNT,                                                 \
	  "faults outside every arena, served with a zero page")               \
	X(empty_not_empty, COUNT,                                              \
	  "EMPTY regions found holding data: made SMALL, nothing discarded")  \
	X(fault_errors, COUNT,                                                 \
	  "faults the service could not resolve (thread woken to retry)")     \
	X(transits, COUNT, "regions taken into transit")                       \
	X(transit_wakes, COUNT,                                                \
	  "transits that ended with parked threads (UFFDIO_WAKE)")             \
	X(fallback_pool_empty, COUNT,                                          \
	  "4K page instead of a hugepage: the frame pool was empty")           \
	X(fallback_frame_not_huge, COUNT,                                      \
	  "4K page instead of a hugepage: the pool frame had been split")      \
	X(fallback_move_failed, COUNT,                                         \
	  "4K page instead of a hugepage: UFFDIO_MOVE failed (move_errno)")    \
	X(fallback_move_split, COUNT,                                          \
	  "4K pages: a fault raced the move and the kernel split the frame")   \
	X(fallback_huge_off, COUNT,                                            \
	  "4K page: hugepage-first is off (EXCH_THP=never, NOHUGE, no THP)")   \
	X(fallback_region_partial, COUNT,                                      \
	  "4K page: the region already held small pages")                      \
	X(move_errno, GAUGE, "errno of the last failed UFFDIO_MOVE")           \
	X(pool_frames_ready, GAUGE, "pre-zeroed hugepage frames in the pool") \
	X(pool_refills, COUNT, "frames populated by the refill thread")        \
	X(pool_populate_us, GAUGE,                                             \
	  "time to populate one frame, moving average: how fast the pool refills") \
	X(pool_grows, COUNT,                                                   \
	  "times first touches found the pool empty and it doubled (up to EXCH_POOL_FRAMES)") \
	X(pool_take_waits, COUNT,                                              \
	  "first touches that found the pool empty and waited for its next frame") \
	X(pool_take_timeouts, COUNT,                                           \
	  "of those waits, the ones that ended without a frame (4K fallback)") \
	X(pool_decayed, COUNT,                                                 \
	  "frames given back after EXCH_POOL_DECAY_MS without a first touch or a capture") \
	X(pool_refill_not_huge, COUNT,                                         \
	  "populated frames the kernel backed with small pages (retried)")     \
	X(captures, COUNT,                                                     \
	  "freed hugepages kept in the pool instead of given back (capture)")  \
	X(captured_frames, GAUGE, "captured frames waiting to be used")       \
	X(capture_coalesced, COUNT,                                            \
	  "regions coalesced into a captured frame (holes zeroed, no alloc)")  \
	X(capture_zeroed, COUNT,                                               \
	  "captured frames zeroed for a first touch (no zeroed frame left)")   \
	X(pool_refill_errors, COUNT,                                           \
	  "slots that could not be emptied or populated (mlock, no memory)")           \
	X(arenas_live, GAUGE, "arenas that exist")                             \
	X(arena_bytes, GAUGE, "bytes reserved by live arenas")                 \
	X(allocs, COUNT, "exch_alloc calls that succeeded")                    \
	X(alloc_enomem, COUNT, "exch_alloc calls refused: arena full")         \
	X(frees, COUNT,                                                        \
	  "allocations freed (exch_free, and munmap under the preload)")       \
	X(regions_released, COUNT,                                             \
	  "whole regions given back to the kernel by exch_free")               \
	X(misuse, COUNT, "API calls refused with -EINVAL or -EBUSY")           \
	X(options_invalid, COUNT,                                              \
	  "EXCH_* environment values rejected (default kept)")                 \
	X(degraded, COUNT,                                                     \
	  "features turned off because the kernel lacks what they need")      \
	X(forks, COUNT, "fork() children that re-initialised the library")   \
	X(coalesced_regions, COUNT, "4K-mapped regions made one hugepage")   \
	X(scan_passes, COUNT, "passes of the background coalescer")          \
	X(scan_coalesced, COUNT,                                               \
	  "regions the background coalescer made one hugepage")               \
	X(scan_budget_stops, COUNT,                                            \
	  "passes that stopped at the EXCH_COALESCE_MBPS budget")              \
	X(scan_frame_stops, COUNT,                                             \
	  "passes that stopped to leave the pool's frames to first touches")  \
	X(scan_traded, COUNT,                                                  \
	  "regions the background coalescer made huge by trading (no frame)") \
	X(heat_armed, COUNT,                                                   \
	  "times heat tracking was armed (frames scarce): regions protected") \
	X(trades, COUNT,                                                       \
	  "no frame: a hot 4K region traded contents with a cold hugepage")    \
	X(scratch_leftover_pages, COUNT,                                       \
	  "pages found in the scratch after a move (their way back was taken)") \
	X(swap_pages_written, COUNT, "pages written to the tier's swap file")  \
	X(swap_pages_read, COUNT, "pages read back from the swap file")        \
	X(swap_slots_used, GAUGE, "swap file slots holding a page")           \
	X(swap_full, COUNT, "swap writes refused: the file is full (EXCH_SWAP_MAX)") \
	X(swap_write_errors, COUNT,                                            \
	  "swap batches that failed (ENOSPC, EIO): the pages stay in memory")  \
	X(swap_read_errors, COUNT, "swap reads the kernel failed")            \
	X(swap_mismatches, COUNT,                                              \
	  "swap reads whose CRC-32C or identity did not match: refused")       \
	X(evicted_pages, COUNT, "pages the tier took out of arenas and stored")\
	X(restored_pages, COUNT, "evicted pages brought back (fault, EXCH_HOT)")\
	X(tier_pages, GAUGE, "pages held by the tier now (any form)")        \
	X(tier_same_pages, COUNT, "evicted pages stored as one repeated word") \
	X(tier_lz4_pages, COUNT, "evicted pages stored LZ4-compressed in the pool") \
	X(tier_raw_pages, COUNT,                                               \
	  "evicted pages that did not compress or fit: to swap directly")      \
	X(tier_cache_hits, COUNT,                                              \
	  "faults served from the migration cache (a page in flight)")         \
	X(tier_swap_restores, COUNT, "evicted pages read back from swap")      \
	X(tier_readahead_pages, COUNT,                                         \
	  "of those, neighbours read with a faulting page (readahead)")        \
	X(tier_restore_errors, COUNT,                                          \
	  "evicted pages that could not be read back intact: SIGBUS on touch") \
	X(tier_evict_busy, COUNT,                                              \
	  "pages not evicted: pinned, shared with a fork child, mlocked, declined") \
	X(tier_evict_kept, COUNT,                                              \
	  "pages put back: the pool was full and no swap could take them")     \
	X(tier_unused, COUNT,                                                  \
	  "pages brought back from the pool or a failed swap write (unuse)")   \
	X(tier_pool_reclaims, COUNT, "zbud pages written to swap at the cap")  \
	X(tier_swap_full, COUNT, "swap batches refused: EXCH_SWAP_MAX reached") \
	X(tier_discarded, COUNT,                                               \
	  "evicted pages dropped because their memory was freed")              \
	X(tier_compacted_pages, COUNT, "zbud pages freed by compaction")       \
	X(tier_limit_passes, COUNT,                                            \
	  "EXCH_LIMIT passes that found arenas above the limit and evicted")   \
	X(tier_pool_bytes, GAUGE, "memory the pool uses (zbud pages)")         \
	X(mmap_interposed, COUNT,                                              \
	  "preload: large anonymous private mmap calls placed in the mmap arena") \
	X(mmap_partial_unmaps, COUNT,                                          \
	  "preload: munmap of part of an arena allocation (that part freed)") \
	X(purges_kept_huge, COUNT,                                             \
	  "preload: purges of part of a hugepage left or zeroed in place (no split)") \
	X(mmap_fixed_emulated, COUNT,                                          \
	  "preload: anonymous MAP_FIXED mappings over arena memory, done as a drop") \
	X(mmap_fixed_refused, COUNT,                                           \
	  "preload: other MAP_FIXED mappings, or MREMAP_FIXED moves, onto arena memory: refused") \
	X(escaped_bytes, COUNT,                                                \
	  "preload: heap extents outside the arena (made before the hooks, or arena full)") \
	X(tier_stored_bytes, GAUGE, "compressed bytes the pool holds")         \
	X(tier_pool_pages, GAUGE, "evicted pages the pool holds (compressed)") \
	X(pages_exchanged, COUNT,                                              \
	  "4K pages whose backing exch_exchange_pages traded")                \
	X(coalesce_declined, COUNT,                                            \
	  "regions not moved because a pin's owner declined (exch_pin)")       \
	X(pins_live, GAUGE, "ranges pinned with exch_pin")                    \
	X(resident_bytes, GAUGE,                                               \
	  "arena bytes holding data, from the page tables when stats are read")\
	X(huge_bytes, GAUGE, "of those, bytes mapped by hugepages (PMD)")      \
	X(hugepage_coverage_pct, GAUGE, "huge_bytes over resident_bytes, in %")\
	X(phys_ranges, GAUGE,                                                  \
	  "physically contiguous ranges covering the arenas (root only)")     \
	X(phys_largest_bytes, GAUGE, "the largest of them, in bytes")

enum stat_id {
#define STAT_ENUM(name, kind, reason) STAT_##name,
	EXCH_STATS_LIST(STAT_ENUM)
#undef STAT_ENUM
	STAT__COUNT
};

extern _Atomic uint64_t stat_values[STAT__COUNT];

static inline void stat_inc(enum stat_id id)
{
	atomic_fetch_add_explicit(&stat_values[id], 1, memory_order_relaxed);
}
static inline void stat_add(enum stat_id id, uint64_t n)
{
	atomic_fetch_add_explicit(&stat_values[id], n, memory_order_relaxed);
}
static inline void stat_sub(enum stat_id id, uint64_t n)
{
	atomic_fetch_sub_explicit(&stat_values[id], n, memory_order_relaxed);
}
static inline void stat_set(enum stat_id id, uint64_t v)
{
	atomic_store_explicit(&stat_values[id], v, memory_order_relaxed);
}
static inline uint64_t stat_get(enum stat_id id)
{
	return atomic_load_explicit(&stat_values[id], memory_order_relaxed);
}
/* EXCH_STATS / EXCH_STATS_FILE; @child is the pid of a fork child, or 0. */
void stat_at_exit(pid_t child);
void stat_reset_counts(void); /* fork child: COUNTs start again, GAUGEs stay */

/* ---- publish.c: live counters for exchstat (layout in publish.h) ---- */

void pub_start(void);      /* once the library is ready; EXCH_PUBLISH */
void pub_stop(void);       /* at exit: the segment's file goes */
void pub_fork_child(void); /* forget the parent's segment */

/* ---- topo.c: cores, caches, NUMA nodes (hwloc, libnuma) ---- */

struct topo {
	unsigned cpus;
	unsigned numa_nodes;
	size_t llc_bytes;        /* 0 if unknown */
	unsigned llc_cpus;       /* cpus sharing the LLC */
};
const struct topo *topo_get(void); /* once; never NULL */
int topo_node_of_cpu(int cpu);

/* ---- xcopy*.c: the exchange engine ---- */

/*
 * One variant of the kernels. Lengths are any size (not only multiples of
 * the vector width) and pointers any alignment. copy/zero come as temporal
 * (_t) and non-temporal (_nt, ends with a store fence) forms.
 */
struct xcopy_ops {
	const char *name;
	enum exch_simd level;
	void (*copy_t)(void *dst, const void *src, size_t len);
	void (*copy_nt)(void *dst, const void *src, size_t len);
	void (*exchange)(void *a, void *b, size_t len);
	void (*zero_t)(void *dst, size_t len);
	void (*zero_nt)(void *dst, size_t len);
	bool (*is_zero)(const void *p, size_t len);
	uint32_t (*crc32c)(uint32_t crc, const void *p, size_t len);
};

extern const struct xcopy_ops xcopy_scalar_ops;
extern const struct xcopy_ops xcopy_sse2_ops;
extern const struct xcopy_ops xcopy_avx2_ops;
extern const struct xcopy_ops xcopy_avx512_ops;

enum exch_simd xcopy_cpu_level(void);     /* CPUID + XGETBV */
/* The variant for @level, or NULL if the CPU or OS cannot run it. */
const struct xcopy_ops *xcopy_variant(enum exch_simd level);
const struct xcopy_ops *xcopy_ops(void);  /* chosen once (EXCH_SIMD) */
size_t xcopy_nt_threshold(void);          /* EXCH_HINT_AUTO cut-over */
uint32_t xcopy_crc32c_sw(uint32_t crc, const void *p, size_t len); /* slice-by-8 */
/* xcopy_crc.c: SSE4.2 CRC32, three streams; only where CPUID has SSE4.2. */
uint32_t xcopy_crc32c_hw(uint32_t crc, const void *p, size_t len);

/* ---- arena.c: arenas, region descriptors, the page allocator ---- */

enum region_state {
	REGION_EMPTY = 0, /* nothing mapped: next touch may get a frame */
	REGION_HUGE,      /* one PMD-mapped frame */
	REGION_SMALL,     /* 4K pages, possibly with holes */
	REGION_TRANSIT,   /* taken out of the application's reach */
};

/*
 * Heat: has the region been written lately? Known only while tracking is
 * armed (frames are scarce, scan.c): arming sets COLD and write-protects
 * the region; the first write takes a WP fault, and the fault service
 * unprotects the whole region and sets HOT. A hint, read without a lock.
 */
enum region_heat {
	HEAT_UNKNOWN = 0, /* not tracked */
	HEAT_COLD,        /* write-protected, not written since */
	HEAT_HOT,         /* written since it was armed, or faulted */
};

struct region {
	pthread_mutex_t lock; /* protects state, saved_state and parked */
	uint8_t state;        /* enum region_state */
	uint8_t saved_state;  /* state to return to when a transit ends */
	_Atomic uint8_t heat; /* enum region_heat */
	/* STAT_faults when a fault last touched the region: the tier evicts
	 * the least recently faulted regions first. A hint, without a lock. */
	_Atomic uint64_t touched;
	uint32_t parked;      /* faults parked during the current transit, or
				 on pages the tier is moving out */
	uint32_t used_pages;  /* allocated pages; under arena.alloc_lock */
	uint32_t tiered;      /* pages with a tier entry; under lock */
	struct tier_table *tier; /* their entries (tier.c); under lock */
	bool moving;          /* the tier is moving pages out (PENDING entries):
				 discards wait; under lock */
};

/* One exch_pin() range. */
struct pin {
	uintptr_t start, end;
	exch_pin_fn fn;
	void *arg;
};

/* An arena's pins, sorted by start. */
struct pin_set {
	pthread_mutex_t lock; /* protects v, n and cap */
	struct pin *v;        /* prim_meta_alloc'd, cap entries */
	size_t n, cap;
};

struct exch_arena {
	uint32_t magic;
	unsigned slot;        /* index in the registry */
	unsigned flags;       /* EXCH_ARENA_* */
	char *base;
	size_t size;
	size_t nregions;
	bool registered;      /* with the process-wide uffd; under lib.lock */
	struct region *regions;
	/* Regions [span, nregions) have never held data: EMPTY, their struct
	 * region still the zeroed memory it was mapped as. The first fault in
	 * a region raises it (arena_extend_span); walks over regions stop at
	 * it, so a large reservation costs neither their time nor the memory
	 * of their structs. Read without a lock: a walk that misses a region
	 * faulted meanwhile sees it the next time. */
	_Atomic size_t span;
	pthread_mutex_t alloc_lock; /* protects used, start, live, hint, used_pages */
	uint64_t *used;       /* one bit per page: allocated */
	uint64_t *start;      /* one bit per page: first page of an allocation */
	size_t live;          /* live allocations */
	size_t hint;          /* page index where the next small search starts */
	struct pin_set pins;
};

struct exch_arena *arena_lookup(uintptr_t addr); /* lock-free, for faults */
bool arena_live(const struct exch_arena *a); /* never dereferences a foreign pointer */
/* Is [addr, addr+len) inside the live arena @a? */
bool arena_contains(const struct exch_arena *a, uintptr_t addr, size_t len);
static inline struct region *arena_region(struct exch_arena *a, uintptr_t addr)
{
	return &a->regions[(addr - (uintptr_t)a->base) / REGION_SIZE];
}
static inline size_t arena_span(const struct exch_arena *a)
{
	return atomic_load_explicit(&a->span, memory_order_acquire);
}
void arena_extend_span(struct exch_arena *a, uintptr_t addr);
static inline char *arena_region_base(struct exch_arena *a, struct region *r)
{
	return a->base + (size_t)(r - a->regions) * REGION_SIZE;
}
/* The arena in registry slot @slot if it is live, else NULL; the caller
 * holds coalesce.lock, which keeps it live until dropped (destroy syncs). */
struct exch_arena *arena_at(unsigned slot);
unsigned arena_slots(void); /* slots at and above are empty */
/* Sets the resident/huge gauges from the page tables of every arena, and
 * the physical ones where PFNs can be read (root). */
void arena_measure_coverage(void);
/* The preload's extent split and merge: the allocation bitmap follows
 * jemalloc's extents; 0 or -EINVAL. */
int arena_split(struct exch_arena *a, void *p, size_t len_a);
/* exch_alloc for a stream of small allocations that keeps regions of its
 * own; *cursor starts at SIZE_MAX (arena.c). */
void *arena_alloc_stream(struct exch_arena *a, size_t size, size_t *cursor);
int arena_merge(struct exch_arena *a, void *pa, void *pb);
/* The preload's munmap: the allocations overlapping [p, p+len) lose the
 * range (split at its edges, the inside freed); pieces freed, or -EINVAL. */
long arena_unmap(struct exch_arena *a, void *p, size_t len);
/* Every page of [p, p+len) belongs to an allocation. */
bool arena_allocated(struct exch_arena *a, const void *p, size_t len);
/* Zeroes the pages of [p, p+len) that hold data (not zero-page mappings). */
void arena_zero_data(char *p, size_t len);
/* Register every arena with @uffd; used at start and in a fork child. */
int arena_register_all(int uffd);
void arena_rescan_states(int pagemap_fd); /* fork child: states from PAGEMAP_SCAN */
void arena_fork_prepare(void);
void arena_fork_parent(void);
void arena_fork_child(void);

/* ---- fault.c: the fault service and parking ---- */

enum fault_per_cpu { FAULT_PER_CPU_AUTO, FAULT_PER_CPU_ALWAYS, FAULT_PER_CPU_NEVER };
int fault_start(int uffd, unsigned threads);
/* From now on a fault thread bound to each CPU (EXCH_FAULT_PER_CPU=auto:
 * the tier has evicted pages). Under lib.lock. */
void fault_per_cpu(void);
void fault_stop(void);
void fault_forget(void);  /* fork child: the threads are gone */
void fault_quiesce(void); /* every fault read before now has been handled */
/* Park faults on @r until fault_transit_end(); caller owns the transit. */
enum region_state fault_transit_begin(struct region *r);
/* Ends the transit with @r in @state and wakes the threads parked on it. */
void fault_transit_end(struct exch_arena *a, struct region *r,
		       enum region_state state);
void fault_fork_prepare(void);
void fault_fork_parent(void);
/* A region lock taken outside the fault service and outside every lock
 * the fork handlers take: under the fault gate, so fork never copies it
 * held (fault.c). */
void fault_region_lock(struct region *r);
void fault_region_unlock(struct region *r);

/* ---- pool.c: pre-zeroed hugepage frames ---- */

/* @frames per node at most, @start of them at first (0: all); the pool
 * grows when first touches find it empty. @capture: freed hugepages kept
 * per node (0: none). */
int pool_start(unsigned frames, unsigned start, unsigned capture, bool verify, int pagemap_fd);
/* No refill until the first frame is asked for (the preload); before
 * pool_start. */
void pool_defer_refill(void);
void pool_stop(void);
void pool_forget(void); /* fork child: staging is MADV_DONTFORK, gone */
/* A verified frame of @node's pool: 0, -ENOENT (empty) or -EAGAIN (the
 * frame had been split; it goes back for refill). */
int pool_take(int node, void **frame);
/* pool_take, but an empty pool being refilled is waited for, up to
 * @wait_us (first touches: a frame beats the 4K fallback). */
int pool_take_wait(int node, void **frame, unsigned wait_us);
/* For a copy: a captured frame (*@dirty: it holds old data, zero what the
 * copy does not cover) or else a zeroed one; as pool_take. */
int pool_take_any(int node, void **frame, bool *dirty);
/* Keeps the freed, PMD-mapped region @region as a captured frame: true if
 * it was moved away (the region is empty then), false if it is untouched
 * or partly moved (DONTNEED it). Caller holds the region's lock. */
bool pool_capture(void *region);
void pool_emptied(void *frame);  /* the frame's memory was moved away */
void pool_put_back(void *frame); /* unused, still populated */
unsigned pool_ready(void);
size_t pool_resident_bytes(void); /* frames ready, being filled or captured */
/* May a background job take a frame (a captured one, or the pool at least
 * half full)? First touches have priority over coalescing. */
bool pool_can_spare(void);
/* Tests: the pool acts empty (no frame, none captured, as when no THP can
 * be had) while @on. */
void pool_inject_empty(bool on);
/* No frame now and none coming: the refill is failing (no THP to be had)
 * or the pool is injected empty. Then trading is the only way. */
bool pool_starved(void);
bool pool_wait_full(unsigned timeout_ms); /* benches and tests */
void pool_fork_prepare(void);
void pool_fork_parent(void);

/* ---- coalesce.c: 4K-mapped regions into hugepages ---- */

void coalesce_lock(void);    /* the coalescer's lock, for scan.c */
void coalesce_unlock(void);
/* Region @r of @a if it is worth it (as EXCH_NOWAIT); under coalesce_lock.
 * Returns the bytes moved (REGION_SIZE if it was taken out, else 0). */
size_t coalesce_one(struct exch_arena *a, struct region *r, struct exch_coalesce_report *rep,
		    bool trade_only);
/* Can coalescing run here (uffd, UFFDIO_MOVE, PAGEMAP_SCAN, a pool)? */
bool coalesce_supported(void);
void coalesce_sync(void);    /* waits until no region is being coalesced */
bool coalesce_is_mine(void); /* is this thread coalescing (a pin callback)? */

void coalesce_fork_prepare(void);
void coalesce_fork_parent(void);
void coalesce_fork_child(void);

/* ---- scan.c: the background coalescer ---- */

void scan_start_configured(void); /* EXCH_COALESCE=1, at start-up */
/* Every region holding data becomes COLD and write-protected; its next
 * write makes it HOT (fault.c). Under coalesce_lock. */
void scan_arm_heat(void);
void scan_fork_child(void);

/* ---- pin.c: ranges whose owner is asked before they move ---- */

#define PIN_MAX_ASKED 8 /* pins one region may overlap and still move */

/* The pins of @a that overlap [start, start+len), asked in turn. */
struct pin_ask {
	struct pin v[PIN_MAX_ASKED];
	unsigned n;
};
/* BEGIN for each pin over the range; 0 if all allowed (END is then owed
 * through pin_done), -EPERM if one declined (the others got their END). */
int pin_ask(struct exch_arena *a, uintptr_t start, size_t len, struct pin_ask *ask);
void pin_done(struct pin_ask *ask);
void pin_arena_free(struct exch_arena *a); /* arena destroyed */
void pin_fork_child(struct exch_arena *a);

/* ---- zbud.c: the tier's pool of compressed objects ---- */

/* Reclaim: evict (write to swap, or bring back) the object at @handle and
 * free it; 0, or -errno to keep it. Runs without the pool's lock. */
typedef int (*zpool_evict_fn)(uint64_t handle, void *arg);
/* Compaction: the object at @from now lives at @to; 0 to accept, else it
 * stays. Runs under the pool's lock: it must not call the pool. */
typedef int (*zpool_moved_fn)(uint64_t from, uint64_t to, void *arg);

struct zpool_usage {
	size_t pages;        /* 4K pages in use */
	size_t stored_bytes; /* sizes the objects were allocated with */
	size_t objects;      /* objects in the pool */
};

/* A pool of objects of up to max_object bytes in private memory. */
struct zpool_ops {
	const char *name;
	size_t max_object;
	void *(*create)(size_t max_bytes); /* NULL: no memory */
	void (*destroy)(void *pool);
	/* 0, -ENOSPC (too big for the pool) or -ENOMEM (at the cap). */
	int (*alloc)(void *pool, size_t size, uint64_t *handle);
	void (*free)(void *pool, uint64_t handle, size_t size);
	/* The object's bytes, held until unmap (compaction and reclaim wait). */
	void *(*map)(void *pool, uint64_t handle);
	void (*unmap)(void *pool, uint64_t handle);
	/* One page from the LRU tail: 0 freed, -EAGAIN kept, -ENOENT none. */
	int (*reclaim)(void *pool, zpool_evict_fn evict, void *arg);
	long (*compact)(void *pool, zpool_moved_fn moved, void *arg); /* pages freed */
	void (*usage)(void *pool, struct zpool_usage *u);
	void (*fork_child)(void *pool);
};

extern const struct zpool_ops zbud_zpool_ops;

/* ---- codec.c: one page, encoded for the tier ---- */

enum codec_kind {
	CODEC_SAME = 1, /* one 64-bit word repeated: info.word, no bytes */
	CODEC_LZ4 = 2,  /* LZ4, at most the caller's limit */
	CODEC_RAW = 3,  /* the page itself: LZ4 did not fit the limit */
};

struct codec_info {
	enum codec_kind kind;
	uint64_t word; /* CODEC_SAME */
};

/* Encodes the 4K @page into @out (room for PAGE_SIZE_4K bytes), LZ4 only
 * if it fits @limit bytes; returns the length written (0 for SAME). */
size_t codec_pack(const void *page, void *out, size_t limit, struct codec_info *info);
/* Decodes into the 4K @page: 0, -EIO (a stream that is not one page), or
 * -EINVAL (an unknown kind). */
int codec_unpack(const struct codec_info *info, const void *in, size_t len, void *page);

/* ---- swap.c: the tier's swap file, written and read with io_uring ---- */

#define SWAP_BATCH 32 /* pages written in one batch, at most */

struct swap_file;
/* An unlinked file of @max_bytes of slots in @dir; 0 or -errno (the open's,
 * io_uring's, -ENOMEM). */
int swap_open(const char *dir, size_t max_bytes, struct swap_file **out);
void swap_close(struct swap_file *s);
/* Writes @n pages (@lens[i] bytes of each, at most 4K) as one batch into
 * slots it returns in @slot, tagged with @ids. 0, or -errno with no slot
 * taken (-ENOSPC: the file is full; the write's own error). */
int swap_write(struct swap_file *s, const void *const *pages, const size_t *lens,
	       const uint64_t *ids, unsigned n, uint32_t *slot);
/* Reads @slot into @page and its length into *@len: 0, -EIO (checksum or
 * identity mismatch, counted), -EINVAL (not a used slot), or the read's
 * -errno. */
int swap_read(struct swap_file *s, uint32_t slot, uint64_t id, void *page, size_t *len);
/* @n reads (at most SWAP_BATCH) submitted together; each result in @rc[i]
 * as swap_read's. Returns 0, or -EINVAL for a bad @n. */
int swap_read_many(struct swap_file *s, unsigned n, const uint32_t *slot, const uint64_t *id,
		   void *const *page, size_t *len, int *rc);
void swap_free(struct swap_file *s, uint32_t slot);
size_t swap_slots_used(struct swap_file *s);
/* No new slots from now on: reads and frees only (fork: the other side
 * may still read every slot in use). */
void swap_retire(struct swap_file *s);
/* Fork child: the ring is the parent's; a new one for this process. */
int swap_fork_child(struct swap_file *s);
int swap_fd(const struct swap_file *s);               /* tests: to damage it */
void swap_inject(struct swap_file *s, int write_errno, int read_errno); /* tests */

/* ---- tier.c: the compressed tier ---- */

#define TIER_SWAP_DIR_DEFAULT "/var/tmp"
#define TIER_TRANSIT_WAIT_US 200

enum { TIER_FAULT_NONE, TIER_FAULT_DONE, TIER_FAULT_PARKED };
bool tier_supported(void); /* full uffd, UFFDIO_MOVE, PAGEMAP_SCAN */
/* A missing-page fault at @addr of @r (region lock held; @tid the faulting
 * thread or 0): TIER_FAULT_NONE if the tier has no entry for it. */
int tier_fault(struct exch_arena *a, struct region *r, uintptr_t addr, pid_t tid);
/* Drops the entries of pages [first, first+npages) (arena page numbers)
 * of @r: their memory was freed. Region lock held; it is dropped and taken
 * again while the tier is moving pages of @r out (it cannot tell a page
 * written after the free from a freed one once it has moved it). */
void tier_discard(struct exch_arena *a, struct region *r, size_t first, size_t npages);
void tier_arena_free(struct exch_arena *a); /* every entry of a dying arena */
/* Does @r hold evicted pages? Read under its lock: a restore in progress
 * holds it until its entry is gone, after its thread has woken. */
bool tier_region_holds(struct region *r);
void tier_sync(void);         /* waits for the eviction in progress */
void tier_measure(void);      /* pool gauges, when stats are read */
/* The preload's purges: as exch_advise(EXCH_FREE or EXCH_DONTNEED), but
 * part of a hugepage is left (lazy) or zeroed in place, never split. */
int tier_purge(void *addr, size_t len, bool lazy);
bool tier_holds_pages(void);  /* fork child: must the library restart now? */
struct swap_file *tier_swap_file(void); /* tests: the file written to now */
void tier_limit_start(void);  /* EXCH_LIMIT's thread, if set */
void tier_fork_prepare(void);
void tier_fork_parent(void);
void tier_fork_child(void);

/* ---- features.c: the feature probe ---- */

/* Fills @f and, on success, returns the uffd opened with the features the
 * library uses (or -1 when arenas must not use userfaultfd). */
int feat_probe(struct exch_features *f);
/* A fresh uffd with the features of @f (fork child); fd or -errno. */
int feat_reopen(const struct exch_features *f);
void feat_print(FILE *out, const struct exch_features *f);
void feat_explain(const struct exch_features *f); /* EXCH_VERBOSE at start */

/* ---- init.c: library state, start-up, fork ---- */

struct lib_state {
	pthread_mutex_t lock;   /* protects init, reinit and the fields below */
	int uffd;               /* -1 when arenas are plain memory */
	int pagemap_fd;         /* -1 without PAGEMAP_SCAN */
	uint64_t uffd_features; /* enabled on uffd */
	struct exch_features feat;
	_Atomic int ready;      /* 1 once initialised in this process */
	pid_t pid;              /* the process the library was loaded into */
	/* Restarting inside a fork child's handler: the program's allocator
	 * may not be used (its own child handler may not have run, and its
	 * memory may be evicted pages nothing serves yet); the preload serves
	 * allocations from a static area meanwhile. */
	_Atomic bool fork_restart;
};
extern struct lib_state lib;

int lib_ensure(void); /* init or re-init after fork; 0 or -errno */
bool lib_huge_first(const struct exch_arena *a);

#endif /* EXCH_INTERNAL_H */

/*
 * init.c - start-up, fork and exit of the library.
 *
 * The library starts itself on first use (every exch_* entry point calls
 * lib_ensure()), or on exch_init(). Start-up reads the options, probes the
 * kernel (features.c), opens the process-wide userfaultfd, starts the frame
 * pool and the fault service, and installs the fork and exit handlers. A
 * part that fails to start is turned off with one line; the library then
 * works as plain memory. Only a failure to map its own metadata is an error.
 *
 * Fork. A userfaultfd belongs to the mm that created it: the child inherits
 * the parent's fd, and an ioctl on it would act on the parent's memory, so
 * the child closes it at once. The child also has no service threads, and the
 * frame pool's staging area (MADV_DONTFORK) is not mapped in it. Its arenas
 * lose their registration in the kernel (we do not ask for EVENT_FORK), so
 * they behave as plain memory: what the parent wrote reads back, untouched
 * pages read as zeros. The first exch_* call in the child starts the library
 * anew: a new uffd, the arenas registered with it, region states recomputed
 * from PAGEMAP_SCAN (the child may have touched pages meanwhile), a new pool
 * and service. The fork handlers quiesce the fault service and take the
 * library's locks, so the child never inherits a lock held by a thread that
 * does not exist in it. A parent whose tier holds pages restarts the
 * library in the child at once, in the fork handler: an evicted page is a
 * hole that would read as zeros if the child touched it unregistered.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define LIB_LIMIT_POOL_DIV 32 /* EXCH_LIMIT: each frame pool's default share, 1/32 */
#define LIB_LIMIT_TIER_DIV 4  /* EXCH_LIMIT: the compressed pool's default share */

struct lib_state lib = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.uffd = -1,
	.pagemap_fd = -1,
};

static bool lib_handlers_installed;

/* The process the library was loaded into: EXCH_STATS_FILE is its file; a
 * fork child, whenever it first uses the library, writes path.<pid>. */
__attribute__((constructor)) static void lib_loaded(void)
{
	lib.pid = getpid();
}

bool lib_huge_first(const struct exch_arena *a)
{
	return (lib.feat.on & EXCH_ON_HUGE_FIRST) && !(a->flags & EXCH_ARENA_NOHUGE);
}

/*
 * Service and pool on lib.uffd; turns off what fails. Caller holds lib.lock.
 * The fault service comes first: in a fork child restarting the library,
 * starting any other thread may read heap memory (glibc's cached thread
 * data) that is evicted and that only the service can bring back. Until
 * the pool runs, first touches get 4K pages.
 */
static void lib_start_services(void)
{
	int rc = fault_start(lib.uffd, (unsigned)opt_get(OPT_FAULT_THREADS));
	long long limit_frames = opt_get(OPT_LIMIT) / LIB_LIMIT_POOL_DIV / (long long)REGION_SIZE /
				 (long long)topo_get()->numa_nodes;

	if (rc < 0) {
		log_warn("fault service failed to start (%s): arenas are plain memory",
			 prim_errstr(-rc));
		stat_inc(STAT_degraded);
		close(lib.uffd);
		lib.uffd = -1;
		lib.feat.on = 0;
		return;
	}
	/* EXCH_LIMIT covers the frames kept ready, the freed hugepages kept
	 * for reuse and the compressed pool as well as the arenas (tier.c):
	 * by default each frame pool holds at most a LIB_LIMIT_POOL_DIV-th of
	 * the limit (all NUMA nodes together), the compressed pool a
	 * LIB_LIMIT_TIER_DIV-th. A compressed pool set to more than three
	 * quarters of the limit would leave the arenas nothing to work in. */
	if (opt_get(OPT_LIMIT)) {
		long long tier_max = opt_get(OPT_LIMIT) / LIB_LIMIT_TIER_DIV;

		limit_frames = limit_frames < 1 ? 1 : limit_frames;
		if (limit_frames < opt_get(OPT_POOL_FRAMES))
			opt_prefer(OPT_POOL_FRAMES, limit_frames);
		if (limit_frames < opt_get(OPT_CAPTURE_FRAMES))
			opt_prefer(OPT_CAPTURE_FRAMES, limit_frames);
		tier_max = tier_max < 1LL << 20 ? 1LL << 20 : tier_max; /* its minimum */
		if (tier_max < opt_get(OPT_TIER_MAX))
			opt_prefer(OPT_TIER_MAX, tier_max);
		/* Still above, and not the default: the environment says so. */
		if (opt_get(OPT_TIER_MAX) > opt_get(OPT_LIMIT) / 4 * 3 &&
		    opt_get(OPT_TIER_MAX) != tier_max) {
			log_warn("EXCH_TIER_MAX=%lld is more than three quarters of EXCH_LIMIT=%lld, "
				 "which covers it: using a quarter of the limit",
				 opt_get(OPT_TIER_MAX), opt_get(OPT_LIMIT));
			stat_inc(STAT_options_invalid);
			opt_override(OPT_TIER_MAX, tier_max);
		}
	}
	if (lib.feat.on & EXCH_ON_HUGE_FIRST) {
		rc = pool_start((unsigned)opt_get(OPT_POOL_FRAMES), (unsigned)opt_get(OPT_POOL_START),
				(unsigned)opt_get(OPT_CAPTURE_FRAMES),
				lib.feat.on & EXCH_ON_FRAME_VERIFY, lib.pagemap_fd);
		if (rc < 0) {
			log_warn("frame pool failed to start (%s): hugepage-first off",
				 prim_errstr(-rc));
			stat_inc(STAT_degraded);
			lib.feat.on &= ~(EXCH_ON_HUGE_FIRST | EXCH_ON_FRAME_VERIFY);
		}
	}
}

static void lib_open_pagemap(void)
{
	if (lib.feat.have & EXCH_HAVE_PAGEMAP_SCAN) {
		int fd = prim_pagemap_open();

		lib.pagemap_fd = fd < 0 ? -1 : fd;
	}
}

static void lib_fork_prepare(void)
{
	tier_fork_prepare();
	coalesce_fork_prepare();
	lock_take(&lib.lock, LOCK_LIB);
	arena_fork_prepare();
	fault_fork_prepare();
	pool_fork_prepare();
}

static void lib_fork_parent(void)
{
	pool_fork_parent();
	fault_fork_parent();
	arena_fork_parent();
	lock_drop(&lib.lock, LOCK_LIB);
	coalesce_fork_parent();
	tier_fork_parent();
}

static void lib_fork_child(void)
{
	bool evicted = tier_holds_pages();

	stat_reset_counts();
	pub_fork_child();
	tier_fork_child();
	coalesce_fork_child();
	scan_fork_child();
	pool_forget();
	fault_forget();
	arena_fork_child();
	if (lib.uffd >= 0)
		close(lib.uffd);
	if (lib.pagemap_fd >= 0)
		close(lib.pagemap_fd);
	lib.uffd = -1;
	lib.pagemap_fd = -1;
	pthread_mutex_init(&lib.lock, NULL);
	lock_order_reset();
	atomic_store(&lib.ready, 0);
	/* Evicted pages are missing: before the child touches one, its own
	 * userfaultfd must be registered to restore it. */
	if (evicted) {
		atomic_store(&lib.fork_restart, true);
		lib_ensure();
		atomic_store(&lib.fork_restart, false);
	}
}

static void lib_at_exit(void)
{
	pid_t self = getpid();

	/* A process that has not used the library has nothing to report. */
	if (!atomic_load(&lib.ready))
		return;
	/* A fault resolved last is counted after its thread woke: settle. */
	fault_quiesce();
	stat_at_exit(self == lib.pid ? 0 : self);
	pub_stop();
}

/* First start in this process. Caller holds lib.lock. */
static int lib_start(void)
{
	/* First of all, before anything here can start the program's
	 * allocator (hwloc allocates): handlers registered earlier prepare
	 * later. So the preload's jemalloc, whose fork handler locks mutexes
	 * that live in arena pages the tier may have evicted, prepares while
	 * the fault service can still bring them back; and in the child, ours
	 * runs first, before anything touches an evicted page unregistered. */
	if (!lib_handlers_installed) {
		pthread_atfork(lib_fork_prepare, lib_fork_parent, lib_fork_child);
		atexit(lib_at_exit);
		lib_handlers_installed = true;
	}
	lib.uffd = feat_probe(&lib.feat);
	lib_open_pagemap();
	if (lib.uffd >= 0)
		lib_start_services();
	feat_explain(&lib.feat);
	return 0;
}

/* Start again in a fork child, keeping the parent's probe results. */
static int lib_restart(void)
{
	stat_inc(STAT_forks);
	lib_open_pagemap();
	if (!(lib.feat.on & EXCH_ON_ARENA_UFFD))
		return 0;
	lib.uffd = feat_reopen(&lib.feat);
	if (lib.uffd < 0) {
		log_warn("fork child: userfaultfd could not be reopened (%s): "
			 "arenas are plain memory", prim_errstr(-lib.uffd));
		stat_inc(STAT_degraded);
		lib.uffd = -1;
		lib.feat.on = 0;
		return 0;
	}
	int rc = arena_register_all(lib.uffd);
	if (rc < 0) {
		log_warn("fork child: arenas could not be registered (%s): "
			 "they stay plain memory", prim_errstr(-rc));
		stat_inc(STAT_degraded);
	}
	arena_rescan_states(lib.pagemap_fd);
	lib_start_services();
	return 0;
}

int lib_ensure(void)
{
	static bool started;
	bool now_ready = false;
	int rc;

	if (atomic_load_explicit(&lib.ready, memory_order_acquire))
		return 0;
	lock_take(&lib.lock, LOCK_LIB);
	rc = 0;
	if (!atomic_load(&lib.ready)) {
		rc = started ? lib_restart() : lib_start();
		started = true;
		if (rc == 0)
			atomic_store_explicit(&lib.ready, 1, memory_order_release);
		now_ready = rc == 0;
	}
	lock_drop(&lib.lock, LOCK_LIB);
	if (now_ready) {
		scan_start_configured(); /* it calls back into lib_ensure */
		tier_limit_start();
		pub_start();
	}
	return rc;
}

int exch_init(void)
{
	return lib_ensure();
}

const struct exch_features *exch_features(void)
{
	lib_ensure();
	return &lib.feat;
}

/*
 * fault.c - the fault service: resolves userfaultfd faults on arenas.
 *
 * Every arena is registered MISSING|WP with one process-wide userfaultfd, so
 * the first touch of any page, by the application or by the kernel on its
 * behalf (read(2) into a fresh buffer), stops the touching thread and queues
 * a message here. Service threads read the messages and resolve each by the
 * state of the region (arena.c) it falls in:
 *
 *   EMPTY    hugepage-first: take a pre-zeroed frame from the pool,
 *            MADV_DONTNEED the region (so its PMD is empty and the move
 *            stays PMD-mapped), UFFDIO_MOVE the frame in. The move wakes
 *            every thread waiting in the region. No frame, or hugepage-first
 *            off: the zero page into the whole region at once, with the
 *            reason counted; writes then take ordinary kernel faults.
 *   SMALL    UFFDIO_ZEROPAGE of the 4K page (a hole the application
 *            punched). The region has small pages; a hugepage would
 *            overwrite them.
 *   HUGE     the frame is there, so the fault raced with the move that
 *            installed it: EEXIST from UFFDIO_ZEROPAGE, and the thread is
 *            only woken. If the page is really missing (the application
 *            dropped part of the hugepage), it gets a 4K page and the region
 *            becomes SMALL.
 *   (tier)   a page the tier evicted, or is moving out, is restored or
 *            parked by tier_fault() (tier.c) whatever the state but TRANSIT.
 *   TRANSIT  the library has taken the region out of the application's
 *            reach. The fault is parked: not resolved, its thread stays
 *            asleep in the kernel, and the region counts it. When the owner
 *            of the transit ends it (fault_transit_end) the region's range
 *            is woken with UFFDIO_WAKE and the threads retry. A fault read
 *            after the transit ended is resolved as above, so no wake-up is
 *            lost: the state and the parked count change under region.lock.
 *
 * A write-protect fault comes from heat tracking (scan.c): the region was
 * armed, and this is its first write since. The whole region is
 * unprotected and marked HOT. Any other fault on a region marks it HOT too.
 *
 * Threads. Each service thread polls the uffd and an eventfd for stop, reads
 * a batch of messages (the fd is non-blocking, so several threads can share
 * it), and handles them. Handling never allocates and never touches arena
 * memory: only ioctls and region and pool locks.
 *
 * gate: a reader-writer lock that service threads hold (read) from reading a
 * batch to finishing it. Taking it for writing waits until every message read
 * so far has been handled: exch_arena_destroy uses that before freeing an
 * arena's metadata, and fork to quiesce the service.
 */
#include "config.h"

#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define FAULT_MAX_THREADS 64
#define FAULT_BATCH 16
#define FAULT_RETRY_US 1000
/* How long a first touch waits for the refill thread's next frame: a few
 * frames' zeroing time (pool.c, pool_take_wait). */
#define FAULT_FRAME_WAIT_US 1000
#define FAULT_PER_CPU_MAX 8 /* CPUs served by a thread each, at most */

static struct {
	int uffd;
	int stop_fd;
	unsigned nthreads;    /* grows only, under lib.lock */
	bool per_cpu;         /* fault_per_cpu() has run */
	pthread_t threads[FAULT_MAX_THREADS];
	void *stacks[FAULT_MAX_THREADS]; /* their own (prim_thread_create_own_stack) */
	pthread_rwlock_t gate; /* see the design comment */
	const char *zeros;    /* a region of zeros to copy from; never written */
} fault = { .uffd = -1, .stop_fd = -1 };

static void fault_gate_init(void)
{
	pthread_rwlockattr_t attr;

	pthread_rwlockattr_init(&attr);
	pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&fault.gate, &attr);
	pthread_rwlockattr_destroy(&attr);
}

/*
 * The zero page for an empty region that gets no hugepage: all 512 PTEs at
 * once, so the region's later writes are ordinary kernel copy-on-write
 * faults instead of one userfaultfd round trip each. For a region read
 * first, or one the program wants on 4K pages, that costs nothing until a
 * write. 0 or -errno.
 */
static int fault_zero_region(struct exch_arena *a, struct region *r)
{
	int rc = prim_uffd_zeropage(fault.uffd, arena_region_base(a, r), REGION_SIZE);

	if (rc == 0) {
		r->state = REGION_SMALL;
		stat_inc(STAT_faults_zeropage);
	}
	return rc;
}

/*
 * A first write to an empty region of a hugepage-first arena that gets no
 * frame: 512 zeroed 4K pages at once (UFFDIO_COPY from fault.zeros). The
 * zero page would make each later write a copy-on-write fault that
 * replaces a present PTE, and so flushes the TLB of every other CPU
 * running the process: ~0.3-0.5 s for 24 such regions in a Python build
 * measured here, against ~0.2 ms a region this way. The region is resident
 * at once, as the hugepage it should have been would be. 0 or -errno.
 */
static int fault_fill_region(struct exch_arena *a, struct region *r)
{
	int rc = fault.zeros ? prim_uffd_copy(fault.uffd, arena_region_base(a, r), fault.zeros,
					      REGION_SIZE) : -ENOMEM;

	if (rc == 0) {
		r->state = REGION_SMALL;
		stat_inc(STAT_faults_filled);
	}
	return rc;
}

/* A 4K zero page at @addr; EEXIST means somebody mapped it: just wake. */
static void fault_small(struct region *r, char *addr)
{
	int rc = prim_uffd_zeropage(fault.uffd, addr, PAGE_SIZE_4K);

	if (rc == 0) {
		if (r)
			r->state = REGION_SMALL;
		stat_inc(STAT_faults_zeropage);
		return;
	}
	if (rc == -EEXIST)
		stat_inc(STAT_faults_already);
	else
		stat_inc(STAT_fault_errors);
	prim_uffd_wake(fault.uffd, addr, PAGE_SIZE_4K);
}

/* Is nothing of @dst mapped and all of @frame still there, as before? */
static bool fault_move_undone(char *dst, void *frame)
{
	if (lib.pagemap_fd < 0)
		return false;
	return prim_present_bytes(lib.pagemap_fd, dst, REGION_SIZE) == 0 &&
	       prim_present_bytes(lib.pagemap_fd, frame, REGION_SIZE) == (long)REGION_SIZE;
}

/*
 * A failed UFFDIO_MOVE can have moved pages it does not report: seen here,
 * a fault racing the move made the kernel split the frame, one page (by
 * then the zero page) landed in the region, and the ioctl said EEXIST with
 * 0 bytes moved. So the count is not trusted: unless the page tables show
 * the region empty and the frame whole, the region is SMALL (it may never
 * again be treated as empty, which would DONTNEED it) and the slot goes
 * back for refill. Threads are woken to fault again on what is missing.
 */
static enum region_state fault_move_failed(char *dst, void *frame, size_t moved, int rc)
{
	stat_inc(STAT_fallback_move_failed);
	stat_set(STAT_move_errno, (uint64_t)-rc);
	if (!moved && fault_move_undone(dst, frame)) {
		pool_put_back(frame);
		return REGION_EMPTY;
	}
	pool_emptied(frame);
	prim_uffd_wake(fault.uffd, dst, REGION_SIZE);
	return REGION_SMALL;
}

/*
 * The DONTNEED of hugepage-first is the one call in the fault path that can
 * destroy data, so the EMPTY state that licenses it is checked against the
 * page tables (a page present or swapped out) instead of trusted. A region
 * that cannot be checked counts as holding data.
 */
static bool fault_region_unused(struct exch_arena *a, struct region *r)
{
	long n;

	if (lib.pagemap_fd < 0)
		return true; /* no PAGEMAP_SCAN: states are kept conservative */
	n = prim_data_bytes(lib.pagemap_fd, arena_region_base(a, r), REGION_SIZE);
	if (n == 0)
		return true;
	stat_inc(n > 0 ? STAT_empty_not_empty : STAT_fault_errors);
	return false;
}

/*
 * Hugepage-first for an empty region. Returns the region's new state: HUGE;
 * SMALL when pages are mapped there now but not as one frame (every waiting
 * thread was woken: the move's pages are present, and after a failed move
 * the threads are woken to fault again); or EMPTY when nothing was mapped
 * (the caller maps the zero page). Reasons are counted.
 *
 * The MADV_DONTNEED frees the page table that the faulting threads' own
 * faults allocated in the region. A thread that faults between it and the
 * move allocates a new one (and the kernel's freeing of empty page tables
 * is opportunistic: seen to keep one under other processes' memory load);
 * the kernel then splits the frame to move it into page tables. The data
 * is right but the region is small, so the result is checked, one
 * PAGEMAP_SCAN, rather than assumed.
 */
static enum region_state fault_huge(struct exch_arena *a, struct region *r)
{
	char *dst = arena_region_base(a, r);
	size_t moved = 0;
	void *frame;
	int rc;

	if (!lib_huge_first(a)) {
		stat_inc(STAT_fallback_huge_off);
		return REGION_EMPTY;
	}
	rc = pool_take_wait(topo_node_of_cpu(sched_getcpu()), &frame, FAULT_FRAME_WAIT_US);
	if (rc < 0) {
		stat_inc(rc == -ENOENT ? STAT_fallback_pool_empty : STAT_fallback_frame_not_huge);
		return REGION_EMPTY;
	}
	prim_madvise(dst, REGION_SIZE, MADV_DONTNEED);
	rc = prim_uffd_move(fault.uffd, dst, frame, REGION_SIZE, 0, &moved);
	if (rc < 0)
		return fault_move_failed(dst, frame, moved, rc);
	pool_emptied(frame);
	if ((lib.feat.on & EXCH_ON_FRAME_VERIFY) &&
	    prim_huge_bytes(lib.pagemap_fd, dst, REGION_SIZE) != (long)REGION_SIZE) {
		stat_inc(STAT_fallback_move_split);
		return REGION_SMALL;
	}
	stat_inc(STAT_faults_huge);
	return REGION_HUGE;
}

/*
 * A write to a region armed for heat tracking: the whole region is
 * unprotected at once (unprotecting 4K of a hugepage would split it, and
 * one fault per region per arming is all heat needs), and it is HOT.
 */
static void fault_written(struct exch_arena *a, uintptr_t addr)
{
	stat_inc(STAT_faults_wp);
	if (!a) {
		prim_uffd_unprotect(fault.uffd, (void *)addr, PAGE_SIZE_4K);
		return;
	}
	atomic_store_explicit(&arena_region(a, addr)->heat, HEAT_HOT, memory_order_relaxed);
	atomic_store_explicit(&arena_region(a, addr)->touched, stat_get(STAT_faults),
			      memory_order_relaxed);
	prim_uffd_unprotect(fault.uffd, (void *)ALIGN_DOWN(addr, REGION_SIZE), REGION_SIZE);
}

static void fault_pagefault(const struct uffd_msg *msg)
{
	uintptr_t addr = ALIGN_DOWN((uintptr_t)msg->arg.pagefault.address, PAGE_SIZE_4K);
	struct exch_arena *a;
	struct region *r;

	stat_inc(STAT_faults);
	a = arena_lookup(addr);
	if (a)
		arena_extend_span(a, addr);
	if (msg->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) {
		fault_written(a, addr);
		return;
	}
	if (!a) {
		stat_inc(STAT_faults_stray);
		fault_small(NULL, (char *)addr);
		return;
	}
	r = arena_region(a, addr);
	lock_take(&r->lock, LOCK_REGION);
	/* A fault makes a region hot, but not one the library is moving: its
	 * parked faults are the move's doing as much as the program's. */
	if (r->state != REGION_TRANSIT) {
		atomic_store_explicit(&r->heat, HEAT_HOT, memory_order_relaxed);
		atomic_store_explicit(&r->touched, stat_get(STAT_faults), memory_order_relaxed);
	}
	/* An evicted page, or one the tier is moving out (tier.c). */
	if (r->state != REGION_TRANSIT && r->tiered &&
	    tier_fault(a, r, addr, (pid_t)msg->arg.pagefault.feat.ptid) != TIER_FAULT_NONE) {
		lock_drop(&r->lock, LOCK_REGION);
		return;
	}
	switch (r->state) {
	case REGION_TRANSIT:
		r->parked++;
		stat_inc(STAT_faults_parked);
		break;
	case REGION_EMPTY:
		if (lib_huge_first(a) && !fault_region_unused(a, r)) {
			r->state = REGION_SMALL;
			fault_small(r, (char *)addr);
			break;
		}
		r->state = (uint8_t)fault_huge(a, r);
		if (r->state == REGION_EMPTY &&
		    ((msg->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE) && lib_huge_first(a)
			     ? fault_fill_region(a, r) : fault_zero_region(a, r)) < 0) {
			/* Something is mapped after all: never EMPTY again. */
			fault_small(r, (char *)addr);
			r->state = REGION_SMALL;
		}
		break;
	case REGION_SMALL:
		stat_inc(STAT_fallback_region_partial);
		fault_small(r, (char *)addr);
		break;
	default:
		fault_small(r, (char *)addr);
		break;
	}
	lock_drop(&r->lock, LOCK_REGION);
}

/*
 * Transits change region state under the gate, like the service threads, so
 * that fork (which takes the gate for writing) never copies a region lock
 * held by a thread the child will not have.
 */
static void fault_gate_enter(void)
{
	lock_order_take(LOCK_GATE);
	pthread_rwlock_rdlock(&fault.gate);
}

static void fault_gate_leave(void)
{
	pthread_rwlock_unlock(&fault.gate);
	lock_order_drop(LOCK_GATE);
}

/* Reads and handles one batch under the gate. */
static void fault_batch(void)
{
	struct uffd_msg msgs[FAULT_BATCH];
	long n;

	fault_gate_enter();
	n = prim_uffd_read(fault.uffd, msgs, FAULT_BATCH);
	for (long i = 0; i < n; i++)
		if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
			fault_pagefault(&msgs[i]);
	fault_gate_leave();
}

static void *fault_main(void *arg)
{
	const int fds[2] = { fault.uffd, fault.stop_fd };
	bool ready[2], warned = false;

	(void)arg;
	for (;;) {
		int rc = prim_poll_in(fds, ready);

		if (rc < 0) {
			/* Only a stop ends the service: every fault waits for it. */
			if (rc != -EINTR) {
				stat_inc(STAT_fault_errors);
				if (!warned)
					log_warn("fault service: poll failed (%s), retrying",
						 prim_errstr(-rc));
				warned = true;
				usleep(FAULT_RETRY_US);
			}
			continue;
		}
		if (ready[1])
			break;
		if (ready[0])
			fault_batch();
	}
	return NULL;
}

/*
 * Per-CPU service: a fault is best served on the CPU that took it. The
 * faulting thread sleeps there, so a service thread bound to that CPU runs
 * at once, with no wake-up of another, idle CPU in between: measured here
 * (2-vCPU KVM guest) a restore of an evicted page takes 3.6 us when both
 * threads share a CPU and 57-67 us when the service runs on the other one.
 * But every service thread polls the one uffd, so a fault wakes them all
 * (the one on the faulting CPU wins the read, the others find nothing),
 * and a woken CPU runs this mm: the TLB flushes of a hugepage-first fault
 * (DONTNEED, then a 2 MB move) must then interrupt it, and that fault's
 * p50 goes from 24 us to 57 us. So EXCH_FAULT_PER_CPU=auto serves with
 * EXCH_FAULT_THREADS unbound threads until the tier first evicts pages,
 * whose 4K restores gain most, and per CPU from then on. The herd is why
 * it is limited to FAULT_PER_CPU_MAX CPUs. Returns the CPUs to serve on,
 * or 0.
 */
static unsigned fault_cpus(cpu_set_t *set)
{
	unsigned n;

	if (sched_getaffinity(0, sizeof(*set), set) < 0)
		return 0;
	n = (unsigned)CPU_COUNT(set);
	return n <= FAULT_PER_CPU_MAX ? n : 0;
}

/* Binds thread @i to the @i-th CPU of @set. */
static void fault_bind(pthread_t th, const cpu_set_t *set, unsigned i)
{
	cpu_set_t one;

	CPU_ZERO(&one);
	for (int cpu = 0, seen = 0; cpu < CPU_SETSIZE; cpu++)
		if (CPU_ISSET(cpu, set) && seen++ == (int)i) {
			CPU_SET(cpu, &one);
			break;
		}
	pthread_setaffinity_np(th, sizeof(one), &one);
}

/* Starts threads up to @n; 0 or -errno. */
static int fault_add_threads(unsigned n)
{
	for (; fault.nthreads < n && fault.nthreads < FAULT_MAX_THREADS; fault.nthreads++) {
		/* Own stacks: a fork child restarting the library must have a
		 * thread serving faults before glibc touches any heap memory. */
		int rc = prim_thread_create_own_stack(&fault.threads[fault.nthreads], fault_main,
						      NULL, &fault.stacks[fault.nthreads]);

		if (rc < 0)
			return rc;
	}
	return 0;
}

void fault_per_cpu(void)
{
	cpu_set_t set;
	unsigned n;

	if (fault.per_cpu || fault.stop_fd < 0)
		return;
	n = fault_cpus(&set);
	fault.per_cpu = true; /* tried once, whatever comes of it */
	if (!n || fault_add_threads(n) < 0)
		return;
	for (unsigned i = 0; i < n; i++)
		fault_bind(fault.threads[i], &set, i);
}

int fault_start(int uffd, unsigned threads)
{
	int rc;

	fault.uffd = uffd;
	fault.per_cpu = false;
	fault.stop_fd = prim_eventfd();
	if (fault.stop_fd < 0)
		return fault.stop_fd;
	fault_gate_init();
	if (!fault.zeros) {
		void *z = prim_sys_mmap(NULL, REGION_SIZE, PROT_READ,
					MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

		fault.zeros = z == MAP_FAILED ? NULL : z; /* NULL: the zero page, always */
	}
	fault.nthreads = 0;
	rc = fault_add_threads(threads);
	if (rc < 0) {
		fault_stop();
		return rc;
	}
	if (opt_get(OPT_FAULT_PER_CPU) == FAULT_PER_CPU_ALWAYS)
		fault_per_cpu();
	return 0;
}

void fault_stop(void)
{
	int rc;

	if (fault.stop_fd < 0)
		return;
	rc = prim_eventfd_signal(fault.stop_fd);
	if (rc < 0)
		log_warn("fault service: cannot signal stop (%s)", prim_errstr(-rc));
	for (unsigned i = 0; i < fault.nthreads; i++) {
		pthread_join(fault.threads[i], NULL);
		prim_thread_stack_free(fault.stacks[i]);
		fault.stacks[i] = NULL;
	}
	fault.nthreads = 0;
	close(fault.stop_fd);
	fault.stop_fd = -1;
}

void fault_forget(void)
{
	/* The eventfd is shared with the parent: writing it would stop the
	 * parent's threads. The child's threads do not exist. */
	if (fault.stop_fd >= 0)
		close(fault.stop_fd);
	fault.stop_fd = -1;
	for (unsigned i = 0; i < fault.nthreads; i++) { /* the parent's threads' */
		prim_thread_stack_free(fault.stacks[i]);
		fault.stacks[i] = NULL;
	}
	fault.nthreads = 0;
	fault.uffd = -1;
	fault_gate_init();
}

void fault_quiesce(void)
{
	if (!fault.nthreads)
		return;
	lock_order_take(LOCK_GATE);
	pthread_rwlock_wrlock(&fault.gate);
	pthread_rwlock_unlock(&fault.gate);
	lock_order_drop(LOCK_GATE);
}

void fault_region_lock(struct region *r)
{
	fault_gate_enter();
	lock_take(&r->lock, LOCK_REGION);
}

void fault_region_unlock(struct region *r)
{
	lock_drop(&r->lock, LOCK_REGION);
	fault_gate_leave();
}

enum region_state fault_transit_begin(struct region *r)
{
	enum region_state old;

	fault_gate_enter();
	lock_take(&r->lock, LOCK_REGION);
	old = (enum region_state)r->state;
	r->saved_state = r->state;
	r->state = REGION_TRANSIT;
	r->parked = 0;
	lock_drop(&r->lock, LOCK_REGION);
	fault_gate_leave();
	stat_inc(STAT_transits);
	return old;
}

void fault_transit_end(struct exch_arena *a, struct region *r,
		       enum region_state state)
{
	uint32_t parked;

	fault_gate_enter();
	lock_take(&r->lock, LOCK_REGION);
	r->state = (uint8_t)state;
	parked = r->parked;
	r->parked = 0;
	lock_drop(&r->lock, LOCK_REGION);
	fault_gate_leave();
	if (parked) {
		prim_uffd_wake(fault.uffd, arena_region_base(a, r), REGION_SIZE);
		stat_inc(STAT_transit_wakes);
	}
}

void fault_fork_prepare(void)
{
	if (!fault.nthreads)
		return;
	lock_order_take(LOCK_GATE);
	pthread_rwlock_wrlock(&fault.gate);
}

void fault_fork_parent(void)
{
	if (!fault.nthreads)
		return;
	pthread_rwlock_unlock(&fault.gate);
	lock_order_drop(LOCK_GATE);
}

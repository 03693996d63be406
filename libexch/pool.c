/*
 * pool.c - pre-zeroed hugepage frames, prepared off the critical path.
 *
 * The kernel's THP fault allocates and zeroes 2 MB while the faulting thread
 * waits (~245 us measured here). The pool does that work ahead of time: a
 * background thread populates 2 MB slots of a private staging area with
 * MADV_POPULATE_WRITE, so each slot holds a zeroed THP, and the fault service
 * moves a ready frame into the faulting region with one UFFDIO_MOVE (~11 us).
 *
 * The staging area is MADV_HUGEPAGE, so the kernel backs slots with THPs, and
 * MADV_DONTFORK, so a fork child does not inherit (and COW-share) the frames.
 * A slot is MADV_DONTNEED'd before it is populated again: a partly failed
 * move can leave small pages behind, and populating over them would not give
 * a THP. A populated slot is checked huge with PAGEMAP_SCAN before it is
 * offered, and again when it is taken, because the kernel may split an
 * unused zero-filled THP under memory pressure; a split frame is counted and
 * goes back for refill, never into an application region.
 *
 * When to refill. Populating a frame and serving a fault both change page
 * tables, and a page-table change in a process running on two CPUs costs a
 * TLB-shootdown IPI to the other one, which a virtual machine makes
 * expensive: measured here, DONTNEED + MOVE take ~30 us while the refill
 * thread runs on the other CPU and ~5 us when it sleeps. So the refill
 * thread stays out of the way of a run of first touches: it starts when the
 * pool falls below a quarter of its frames (POOL_LOW_DIV) or when no frame
 * has been taken for POOL_IDLE_NS, and then fills the pool up. Under the
 * preload it starts only when the first frame is asked for
 * (pool_defer_refill): most processes of a session never need one.
 *
 * There is one pool per NUMA node (one here on a single-node machine), its
 * staging area bound to the node; the fault service takes frames from the
 * node it runs on. When the kernel cannot give a THP (fragmentation, THP
 * disabled meanwhile), the refill thread backs off instead of spinning.
 *
 * Decay. A pool that grew for a burst of first touches, and the frames it
 * captured, are memory the process holds for nothing once it settles: after
 * EXCH_POOL_DECAY_MS without a frame taken or captured, the refill thread
 * gives back the frames above the pool's start (their slots are parked,
 * and pool_grow takes parked slots first) and the captured ones, as
 * jemalloc's decay gives back dirty pages. The next burst grows it again.
 *
 * Capture. A whole hugepage the application frees (exch_free of a whole
 * region that is one PMD-mapped frame) need not go back to the kernel: it
 * is moved with one UFFDIO_MOVE into a slot of the node's capture area and
 * kept, up to EXCH_CAPTURE_FRAMES per node. Such a frame still holds the
 * freed data. The coalescer prefers it (pool_take_any): it overwrites
 * every present page anyway and zeroes only the holes, so the frame costs
 * no allocation and no zeroing. A first touch takes it only when no
 * pre-zeroed frame is left, and zeroes it first. The capture area is
 * registered with the userfaultfd (a UFFDIO_MOVE needs a registered
 * destination) and MADV_DONTFORK; nothing ever faults in it, because only
 * slots holding a frame are touched.
 *
 * Locking: pool.lock protects every slot stack, the counts and `stop`; it is
 * the innermost lock of the library, held only for stack operations, never
 * across a system call.
 */
#include "config.h"

#include <errno.h>
#include <numa.h>
#include <sched.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define POOL_BACKOFF_MIN_MS 1
#define POOL_BACKOFF_MAX_MS 1000
#define POOL_MAX_NODES 64
#define POOL_LOW_DIV 4
#define POOL_IDLE_NS 2000000ull
#define POOL_DECAY_BATCH 64 /* frames given back per lock drop */
#define NS_PER_S 1000000000ull

/* A stack of slot indices. */
struct pool_stack {
	unsigned *v;
	unsigned n;
};

struct pool_node {
	char *staging;    /* nslots * REGION_SIZE, REGION_SIZE aligned */
	unsigned nslots;
	unsigned active;  /* slots in use (ready, empty or being filled); the
			     rest wait until first touches outrun the pool */
	unsigned start;   /* active at start: decay stops there */
	unsigned hwm;     /* slots [0, hwm) have been in service */
	bool was_full;    /* every active slot was ready since the last growth */
	struct pool_stack ready;  /* slots holding a zeroed frame */
	struct pool_stack empty;  /* slots waiting for refill */
	struct pool_stack parked; /* slots below hwm taken out of service */
	char *capture;    /* ncapture * REGION_SIZE, registered, or NULL */
	unsigned ncapture;
	struct pool_stack held;   /* capture slots holding a freed frame */
	struct pool_stack vacant; /* capture slots free */
};

static struct {
	pthread_mutex_t lock;   /* protects everything below */
	pthread_cond_t refill;  /* signalled when a slot becomes empty */
	pthread_cond_t changed; /* broadcast when a frame becomes ready */
	bool running;
	bool stop;
	bool verify;
	bool filling;           /* refill runs until every slot is ready */
	bool inject_empty;      /* tests: every take fails */
	bool refill_failing;    /* the last populate gave no hugepage */
	bool dormant;           /* no refill until the first take (pool_defer_refill) */
	uint64_t populate_ns;   /* a frame's populate time, moving average */
	uint64_t last_take_ns;  /* CLOCK_MONOTONIC of the last pool_take */
	uint64_t last_use_ns;   /* ... of the last frame taken or captured */
	uint64_t decay_ns;      /* EXCH_POOL_DECAY_MS; 0: no decay */
	int pagemap_fd;
	struct pool_node nodes[POOL_MAX_NODES];
	unsigned nnodes;
	pthread_t thread;
} pool = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.refill = PTHREAD_COND_INITIALIZER,
	.changed = PTHREAD_COND_INITIALIZER,
};

static bool pool_pop(struct pool_stack *st, char *area, void **frame);

static char *pool_slot(struct pool_node *n, unsigned i)
{
	return n->staging + (size_t)i * REGION_SIZE;
}

/* Is @frame in [area, area + slots * REGION_SIZE)? Then *@slot is its slot. */
static bool pool_in(const char *area, unsigned slots, const void *frame, unsigned *slot)
{
	size_t off = (size_t)((const char *)frame - area);

	if (!area || (const char *)frame < area || off >= (size_t)slots * REGION_SIZE)
		return false;
	*slot = (unsigned)(off / REGION_SIZE);
	return true;
}

/* The node of @frame; *@captured tells which area it is in. */
static struct pool_node *pool_node_of(void *frame, unsigned *slot, bool *captured)
{
	for (unsigned i = 0; i < pool.nnodes; i++) {
		struct pool_node *n = &pool.nodes[i];

		*captured = pool_in(n->capture, n->ncapture, frame, slot);
		if (*captured || pool_in(n->staging, n->nslots, frame, slot))
			return n;
	}
	return NULL;
}

/* Populates one slot with a zeroed THP; true if it is PMD-mapped. */
static bool pool_populate(char *p)
{
	int rc = prim_madvise(p, REGION_SIZE, MADV_DONTNEED);

	if (rc < 0) { /* mlocked staging (mlockall): no THP can be placed */
		stat_inc(STAT_pool_refill_errors);
		return false;
	}
	if (lib.feat.have & EXCH_HAVE_POPULATE_WRITE) {
		rc = prim_madvise(p, REGION_SIZE, MADV_POPULATE_WRITE);
	} else {
		for (size_t off = 0; off < REGION_SIZE; off += PAGE_SIZE_4K)
			((volatile char *)p)[off] = 0;
		rc = 0;
	}
	if (rc < 0) {
		stat_inc(STAT_pool_refill_errors);
		return false;
	}
	if (pool.verify && prim_huge_bytes(pool.pagemap_fd, p, REGION_SIZE) != (long)REGION_SIZE) {
		stat_inc(STAT_pool_refill_not_huge);
		return false;
	}
	return true;
}

static uint64_t pool_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

static bool pool_low(const struct pool_node *n)
{
	return n->ready.n * POOL_LOW_DIV < n->active;
}

/*
 * The node to refill now, or NULL; then *@wait_ns says how long until the
 * pool counts as idle (0: nothing to refill, wait for a signal). Under lock.
 */
static struct pool_node *pool_next_refill(uint64_t *wait_ns)
{
	struct pool_node *found = NULL;
	uint64_t idle_at = pool.last_take_ns + POOL_IDLE_NS, now;

	*wait_ns = 0;
	if (pool.dormant)
		return NULL;
	for (unsigned i = 0; i < pool.nnodes; i++) {
		if (!pool.nodes[i].empty.n)
			continue;
		if (pool.filling || pool_low(&pool.nodes[i]))
			return &pool.nodes[i];
		found = &pool.nodes[i];
	}
	if (!found)
		return NULL;
	now = pool_now_ns();
	if (now >= idle_at) {
		pool.filling = true;
		return found;
	}
	*wait_ns = idle_at - now;
	return NULL;
}

static void pool_wait_ns(uint64_t ns)
{
	struct timespec ts;

	if (!ns) {
		pthread_cond_wait(&pool.refill, &pool.lock);
		return;
	}
	clock_gettime(CLOCK_REALTIME, &ts);
	ns += (uint64_t)ts.tv_nsec;
	ts.tv_sec += (time_t)(ns / NS_PER_S);
	ts.tv_nsec = (long)(ns % NS_PER_S);
	pthread_cond_timedwait(&pool.refill, &pool.lock, &ts);
}

static void pool_sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/*
 * Decay (see the top): 0 if there is nothing to give back, else how long
 * until the pool has been idle for pool.decay_ns, or, once it has, gives
 * back the frames above each node's start and the captured ones, and
 * returns 0. Under lock; drops it around the DONTNEEDs.
 */
static uint64_t pool_decay(void)
{
	uint64_t now, seen = pool.last_use_ns, due = seen + pool.decay_ns;
	bool any = false;

	for (unsigned i = 0; i < pool.nnodes; i++)
		any |= pool.nodes[i].active > pool.nodes[i].start || pool.nodes[i].held.n;
	if (!any || !pool.decay_ns)
		return 0;
	now = pool_now_ns();
	if (now < due)
		return due - now;
	for (unsigned i = 0; i < pool.nnodes && pool.last_use_ns == seen; i++) {
		struct pool_node *n = &pool.nodes[i];
		void *frames[POOL_DECAY_BATCH];
		unsigned nframes;

		while (n->active > n->start && n->empty.n) { /* nothing in them */
			n->parked.v[n->parked.n++] = n->empty.v[--n->empty.n];
			n->active--;
		}
		/* Batches of ready frames, then of captured ones; each slot is
		 * parked or vacant before the lock drops, so no other thread
		 * counts it, and the memory goes after. A frame taken or
		 * captured meanwhile stops the decay. */
		do {
			nframes = 0;
			while (n->active > n->start && n->ready.n && nframes < POOL_DECAY_BATCH) {
				unsigned slot = n->ready.v[--n->ready.n];

				n->parked.v[n->parked.n++] = slot;
				n->active--;
				frames[nframes++] = pool_slot(n, slot);
				stat_sub(STAT_pool_frames_ready, 1);
			}
			while (!nframes && n->held.n && nframes < POOL_DECAY_BATCH) {
				unsigned slot = n->held.v[--n->held.n];

				n->vacant.v[n->vacant.n++] = slot;
				frames[nframes++] = n->capture + (size_t)slot * REGION_SIZE;
				stat_sub(STAT_captured_frames, 1);
			}
			stat_add(STAT_pool_decayed, nframes);
			lock_drop(&pool.lock, LOCK_POOL);
			for (unsigned k = 0; k < nframes; k++)
				prim_madvise(frames[k], REGION_SIZE, MADV_DONTNEED);
			lock_take(&pool.lock, LOCK_POOL);
		} while (nframes && pool.last_use_ns == seen && !pool.stop);
	}
	return 0;
}

static void *pool_refill_main(void *arg)
{
	unsigned backoff = 0;

	(void)arg;
	lock_take(&pool.lock, LOCK_POOL);
	while (!pool.stop) {
		uint64_t wait_ns;
		struct pool_node *n = pool_next_refill(&wait_ns);

		if (!n) {
			uint64_t decay_ns = pool_decay();

			pool.filling = false;
			if (pool.stop)
				break;
			pool_wait_ns(!wait_ns || (decay_ns && decay_ns < wait_ns) ? decay_ns : wait_ns);
			continue;
		}
		unsigned slot = n->empty.v[--n->empty.n];
		lock_drop(&pool.lock, LOCK_POOL);
		uint64_t start = pool_now_ns();
		bool ok = pool_populate(pool_slot(n, slot));
		uint64_t took = pool_now_ns() - start;
		if (!ok) {
			backoff = backoff ? backoff * 2 : POOL_BACKOFF_MIN_MS;
			if (backoff > POOL_BACKOFF_MAX_MS)
				backoff = POOL_BACKOFF_MAX_MS;
			pool_sleep_ms(backoff);
		}
		lock_take(&pool.lock, LOCK_POOL);
		pool.refill_failing = !ok;
		pool.populate_ns = pool.populate_ns ? pool.populate_ns - pool.populate_ns / 4 + took / 4
						    : took;
		stat_set(STAT_pool_populate_us, pool.populate_ns / 1000);
		if (ok) {
			backoff = 0;
			n->ready.v[n->ready.n++] = slot;
			n->was_full |= n->ready.n == n->active;
			stat_inc(STAT_pool_refills);
			stat_add(STAT_pool_frames_ready, 1);
			pthread_cond_broadcast(&pool.changed);
		} else {
			n->empty.v[n->empty.n++] = slot;
		}
	}
	lock_drop(&pool.lock, LOCK_POOL);
	return NULL;
}

/* Two stacks of @slots entries; the second starts holding every slot. */
static int pool_stacks(struct pool_stack *none, struct pool_stack *all, unsigned slots)
{
	none->v = prim_meta_alloc(slots * sizeof(unsigned));
	all->v = prim_meta_alloc(slots * sizeof(unsigned));
	if (!none->v || !all->v)
		return -ENOMEM;
	for (unsigned i = 0; i < slots; i++)
		all->v[i] = slots - 1 - i;
	all->n = slots;
	none->n = 0;
	return 0;
}

/* The capture area; without it (no uffd, a failed mapping) nothing is
 * captured and freed hugepages go back to the kernel. */
static void pool_capture_init(struct pool_node *n, unsigned frames)
{
	size_t len = (size_t)frames * REGION_SIZE;
	void *p;
	int rc;

	if (!frames || lib.uffd < 0 || prim_map(len, REGION_SIZE, true, &p) < 0)
		return;
	prim_madvise(p, len, MADV_DONTFORK);
	rc = prim_uffd_register(lib.uffd, p, len, UFFDIO_REGISTER_MODE_MISSING);
	if (rc < 0 || pool_stacks(&n->held, &n->vacant, frames) < 0) {
		log_warn("capture of freed hugepages off: %s", prim_errstr(rc < 0 ? -rc : ENOMEM));
		stat_inc(STAT_degraded);
		prim_unmap(p, len);
		return;
	}
	n->capture = p;
	n->ncapture = frames;
}

static int pool_node_init(struct pool_node *n, int node, unsigned frames, unsigned start,
			  unsigned capture)
{
	void *p;
	int rc = prim_map((size_t)frames * REGION_SIZE, REGION_SIZE, true, &p);

	if (rc < 0)
		return rc;
	n->staging = p;
	n->nslots = frames;
	n->active = n->start = n->hwm = start;
	prim_madvise(p, (size_t)frames * REGION_SIZE, MADV_HUGEPAGE);
	prim_madvise(p, (size_t)frames * REGION_SIZE, MADV_DONTFORK);
	if (pool.nnodes > 1)
		numa_tonode_memory(p, (size_t)frames * REGION_SIZE, node);
	rc = pool_stacks(&n->ready, &n->empty, frames);
	n->parked.v = rc == 0 ? prim_meta_alloc(frames * sizeof(unsigned)) : NULL;
	if (rc == 0 && !n->parked.v)
		rc = -ENOMEM;
	if (rc == 0) {
		/* Slots [start, frames) wait outside the stacks (pool_grow). */
		memmove(n->empty.v, n->empty.v + (frames - start), start * sizeof(unsigned));
		n->empty.n = start;
		pool_capture_init(n, capture);
	}
	return rc;
}

/*
 * First touches found @n empty after it had been full (so the slots, not
 * the refill at start-up, were too few): twice the slots from now on, up
 * to all of them. A process starts with a few frames (the preload's small ones stay
 * small) and gets as many as its first touches ask for. Under lock.
 */
static void pool_grow(struct pool_node *n)
{
	unsigned add = n->active < n->nslots - n->active ? n->active : n->nslots - n->active;

	if (!add)
		return;
	for (unsigned i = 0; i < add; i++)
		n->empty.v[n->empty.n++] = n->parked.n ? n->parked.v[--n->parked.n] : n->hwm++;
	n->active += add;
	n->was_full = false;
	stat_inc(STAT_pool_grows);
	pthread_cond_signal(&pool.refill);
}

/* Frees @n's stacks (the areas are unmapped by the caller, or gone). */
static void pool_node_forget(struct pool_node *n)
{
	prim_meta_free(n->ready.v, n->nslots * sizeof(unsigned));
	prim_meta_free(n->empty.v, n->nslots * sizeof(unsigned));
	prim_meta_free(n->parked.v, n->nslots * sizeof(unsigned));
	prim_meta_free(n->held.v, n->ncapture * sizeof(unsigned));
	prim_meta_free(n->vacant.v, n->ncapture * sizeof(unsigned));
	memset(n, 0, sizeof(*n));
}

static void pool_node_free(struct pool_node *n)
{
	if (n->staging)
		prim_unmap(n->staging, (size_t)n->nslots * REGION_SIZE);
	if (n->capture)
		prim_unmap(n->capture, (size_t)n->ncapture * REGION_SIZE);
	pool_node_forget(n);
}

int pool_start(unsigned frames, unsigned start, unsigned capture, bool verify, int pagemap_fd)
{
	unsigned nodes = topo_get()->numa_nodes;
	int rc = 0;

	pool.nnodes = nodes < POOL_MAX_NODES ? nodes : POOL_MAX_NODES;
	pool.verify = verify && pagemap_fd >= 0;
	pool.decay_ns = (uint64_t)opt_get(OPT_POOL_DECAY_MS) * 1000000ull;
	pool.last_use_ns = pool_now_ns();
	pool.pagemap_fd = pagemap_fd;
	pool.stop = false;
	for (unsigned i = 0; i < pool.nnodes && rc == 0; i++)
		rc = pool_node_init(&pool.nodes[i], (int)i, frames,
				    start && start < frames ? start : frames, capture);
	if (rc == 0)
		rc = prim_thread_create(&pool.thread, pool_refill_main, NULL);
	if (rc < 0) {
		for (unsigned i = 0; i < pool.nnodes; i++)
			pool_node_free(&pool.nodes[i]);
		pool.nnodes = 0;
		return rc;
	}
	pool.running = true;
	return 0;
}

void pool_stop(void)
{
	if (!pool.running)
		return;
	lock_take(&pool.lock, LOCK_POOL);
	pool.stop = true;
	pthread_cond_broadcast(&pool.refill);
	lock_drop(&pool.lock, LOCK_POOL);
	pthread_join(pool.thread, NULL);
	for (unsigned i = 0; i < pool.nnodes; i++)
		pool_node_free(&pool.nodes[i]);
	pool.nnodes = 0;
	pool.running = false;
	stat_set(STAT_pool_frames_ready, 0);
	stat_set(STAT_captured_frames, 0);
}

void pool_forget(void)
{
	/* The staging areas are MADV_DONTFORK: not mapped in the child. */
	for (unsigned i = 0; i < pool.nnodes; i++)
		pool_node_forget(&pool.nodes[i]);
	pool.nnodes = 0;
	pool.running = false;
	pthread_mutex_init(&pool.lock, NULL);
	pthread_cond_init(&pool.refill, NULL);
	pthread_cond_init(&pool.changed, NULL);
	stat_set(STAT_pool_frames_ready, 0);
	stat_set(STAT_captured_frames, 0);
}

/* @node's pool, or node 0's for a node without one. Under lock. */
static struct pool_node *pool_node(int node)
{
	return &pool.nodes[(unsigned)node < pool.nnodes ? (unsigned)node : 0];
}

/* Pops a slot of @st into *@frame (of @area); false if @st is empty. Under lock. */
static bool pool_pop(struct pool_stack *st, char *area, void **frame)
{
	if (!st->n)
		return false;
	*frame = area + (size_t)st->v[--st->n] * REGION_SIZE;
	return true;
}

/* A captured frame of @node, not yet checked; false if none. */
static bool pool_take_held(int node, void **frame)
{
	struct pool_node *n;
	bool ok;

	lock_take(&pool.lock, LOCK_POOL);
	n = pool.nnodes && !pool.inject_empty ? pool_node(node) : NULL;
	ok = n && pool_pop(&n->held, n->capture, frame);
	if (ok) {
		pool.last_use_ns = pool_now_ns();
		stat_sub(STAT_captured_frames, 1);
	}
	lock_drop(&pool.lock, LOCK_POOL);
	return ok;
}

/* Is @frame still one PMD-mapped hugepage? If not it is given up. */
static bool pool_checked(void *frame)
{
	if (!pool.verify || prim_huge_bytes(pool.pagemap_fd, frame, REGION_SIZE) == (long)REGION_SIZE)
		return true;
	pool_emptied(frame);
	return false;
}

/* A captured frame, zeroed: for a first touch when no zeroed frame is left. */
static int pool_take_zeroed_capture(int node, void **frame)
{
	if (!pool_take_held(node, frame))
		return -ENOENT;
	if (!pool_checked(*frame))
		return -EAGAIN;
	xcopy_ops()->zero_nt(*frame, REGION_SIZE);
	stat_inc(STAT_capture_zeroed);
	return 0;
}

bool pool_starved(void)
{
	unsigned ready = 0, held = 0;
	bool starved;

	lock_take(&pool.lock, LOCK_POOL);
	for (unsigned i = 0; i < pool.nnodes; i++) {
		ready += pool.nodes[i].ready.n;
		held += pool.nodes[i].held.n;
	}
	starved = pool.inject_empty || (pool.refill_failing && !ready && !held);
	lock_drop(&pool.lock, LOCK_POOL);
	return starved;
}

void pool_inject_empty(bool on)
{
	lock_take(&pool.lock, LOCK_POOL);
	pool.inject_empty = on;
	lock_drop(&pool.lock, LOCK_POOL);
}

/*
 * A process that may never allocate (most of a shell session's, under the
 * preload) should not pay for frames at start: 8 MB resident and, on a
 * virtual machine whose host has not backed the memory, several ms of
 * populating each. With the refill deferred, the pool fills from the first
 * take on; that first touch waits for the first frame (pool_take_wait).
 * Called before the pool starts.
 */
void pool_defer_refill(void)
{
	pool.dormant = true;
}

/* Ends a deferral. Under lock. */
static void pool_wake(void)
{
	if (pool.dormant) {
		pool.dormant = false;
		pthread_cond_signal(&pool.refill);
	}
}

int pool_take(int node, void **frame)
{
	struct pool_node *n;
	bool ok;

	lock_take(&pool.lock, LOCK_POOL);
	pool_wake();
	n = pool.nnodes && !pool.inject_empty ? pool_node(node) : NULL;
	ok = n && pool_pop(&n->ready, n->staging, frame);
	if (ok) {
		pool.last_take_ns = pool.last_use_ns = pool_now_ns();
		stat_sub(STAT_pool_frames_ready, 1);
	} else if (n && n->was_full) {
		pool_grow(n); /* it was full, and first touches drained it */
	}
	lock_drop(&pool.lock, LOCK_POOL);
	if (!ok)
		return pool_take_zeroed_capture(node, frame);
	return pool_checked(*frame) ? 0 : -EAGAIN;
}

/*
 * A first touch that finds the pool empty while the refill thread is
 * filling it waits for the next frame, up to @wait_us, if frames have been
 * coming that fast (pool.populate_ns): a hugepage now beats a region of 4K
 * pages that the coalescer must repair later. How fast they come depends
 * on the machine: ~0.25 ms a frame on memory the kernel has used before,
 * 3-6 ms on a virtual machine's memory that its host has not backed yet
 * (measured here), when waiting would only slow the program down.
 */
int pool_take_wait(int node, void **frame, unsigned wait_us)
{
	struct timespec deadline;
	int rc = pool_take(node, frame);
	bool waited = false;

	if (rc != -ENOENT || !wait_us)
		return rc;
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_nsec += (long)wait_us * 1000L;
	while (deadline.tv_nsec >= 1000000000L) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000L;
	}
	for (;;) {
		bool timed_out = false;

		lock_take(&pool.lock, LOCK_POOL);
		struct pool_node *n = pool.nnodes ? pool_node(node) : NULL;
		/* Slots neither ready nor empty are being populated (or moved). */
		bool refilling = n && pool.running && !pool.inject_empty && !pool.refill_failing &&
				 (n->empty.n > 0 || n->ready.n + n->empty.n < n->active) &&
				 pool.populate_ns <= (uint64_t)wait_us * 1000;

		if (refilling && !n->ready.n)
			timed_out = pthread_cond_timedwait(&pool.changed, &pool.lock, &deadline) ==
				    ETIMEDOUT;
		lock_drop(&pool.lock, LOCK_POOL);
		if (!refilling)
			break;
		waited = true;
		rc = pool_take(node, frame);
		if (rc != -ENOENT || timed_out)
			break;
	}
	if (waited)
		stat_inc(rc == 0 ? STAT_pool_take_waits : STAT_pool_take_timeouts);
	return rc;
}

int pool_take_any(int node, void **frame, bool *dirty)
{
	*dirty = pool_take_held(node, frame);
	if (!*dirty)
		return pool_take(node, frame);
	return pool_checked(*frame) ? 0 : -EAGAIN;
}

bool pool_capture(void *region)
{
	struct pool_node *n;
	void *slot;
	bool ok;

	lock_take(&pool.lock, LOCK_POOL);
	n = pool.nnodes ? pool_node(0) : NULL;
	ok = n && pool_pop(&n->vacant, n->capture, &slot);
	if (ok)
		pool.last_use_ns = pool_now_ns();
	lock_drop(&pool.lock, LOCK_POOL);
	if (!ok)
		return false;
	ok = prim_huge_bytes(pool.pagemap_fd, region, REGION_SIZE) == (long)REGION_SIZE &&
	     prim_uffd_move(lib.uffd, slot, region, REGION_SIZE, UFFDIO_MOVE_MODE_DONTWAKE, NULL) == 0;
	if (!ok) {
		/* A failed move may have moved part; the data is freed memory. */
		prim_madvise(slot, REGION_SIZE, MADV_DONTNEED);
		pool_emptied(slot);
		return false;
	}
	stat_inc(STAT_captures);
	pool_put_back(slot);
	return true;
}

void pool_emptied(void *frame)
{
	unsigned slot;
	bool captured;

	/* A vacant capture slot must be empty: it is the next capture's
	 * destination. Cheap if the frame did move away. */
	if (pool_node_of(frame, &slot, &captured) && captured)
		prim_madvise(frame, REGION_SIZE, MADV_DONTNEED);
	lock_take(&pool.lock, LOCK_POOL);
	struct pool_node *n = pool_node_of(frame, &slot, &captured);
	if (n && captured) {
		n->vacant.v[n->vacant.n++] = slot;
	} else if (n) {
		/* Above the low mark the refill thread waits for the pool to be
		 * idle; its timed wait sees this slot then. */
		n->empty.v[n->empty.n++] = slot;
		if (pool_low(n) || n->empty.n == 1)
			pthread_cond_signal(&pool.refill);
	}
	lock_drop(&pool.lock, LOCK_POOL);
}

void pool_put_back(void *frame)
{
	unsigned slot;
	bool captured;

	lock_take(&pool.lock, LOCK_POOL);
	struct pool_node *n = pool_node_of(frame, &slot, &captured);
	if (n && captured) {
		n->held.v[n->held.n++] = slot;
		stat_add(STAT_captured_frames, 1);
		if (n->held.n == 1) /* the refill thread may wait untimed: time its decay */
			pthread_cond_signal(&pool.refill);
	} else if (n) {
		n->ready.v[n->ready.n++] = slot;
		stat_add(STAT_pool_frames_ready, 1);
		pthread_cond_broadcast(&pool.changed);
	}
	lock_drop(&pool.lock, LOCK_POOL);
}

size_t pool_resident_bytes(void)
{
	size_t frames = 0;

	lock_take(&pool.lock, LOCK_POOL);
	for (unsigned i = 0; i < pool.nnodes; i++) {
		const struct pool_node *n = &pool.nodes[i];

		frames += n->active - n->empty.n + n->held.n; /* ready, filling, captured */
	}
	lock_drop(&pool.lock, LOCK_POOL);
	return frames * REGION_SIZE;
}

unsigned pool_ready(void)
{
	unsigned total = 0;

	lock_take(&pool.lock, LOCK_POOL);
	for (unsigned i = 0; i < pool.nnodes; i++)
		total += pool.nodes[i].ready.n;
	lock_drop(&pool.lock, LOCK_POOL);
	return total;
}

bool pool_can_spare(void)
{
	unsigned ready = 0, slots = 0, held = 0;

	lock_take(&pool.lock, LOCK_POOL);
	for (unsigned i = 0; i < pool.nnodes; i++) {
		ready += pool.nodes[i].ready.n;
		slots += pool.nodes[i].active;
		held += pool.nodes[i].held.n;
	}
	bool spare = !pool.inject_empty && (held || (slots && ready * 2 >= slots));
	lock_drop(&pool.lock, LOCK_POOL);
	return spare;
}

bool pool_wait_full(unsigned timeout_ms)
{
	struct timespec deadline;
	bool full = false;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += timeout_ms / 1000;
	deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (deadline.tv_nsec >= 1000000000L) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000L;
	}
	lock_take(&pool.lock, LOCK_POOL);
	pool_wake();
	for (bool timed_out = false;; ) {
		unsigned ready = 0, slots = 0;

		for (unsigned i = 0; i < pool.nnodes; i++) {
			ready += pool.nodes[i].ready.n;
			slots += pool.nodes[i].active;
		}
		full = pool.running && ready == slots;
		if (full || !pool.running || timed_out)
			break;
		timed_out = pthread_cond_timedwait(&pool.changed, &pool.lock, &deadline) == ETIMEDOUT;
	}
	lock_drop(&pool.lock, LOCK_POOL);
	return full;
}

int exch_pool_wait(unsigned timeout_ms)
{
	lib_ensure();
	if (!(lib.feat.on & EXCH_ON_HUGE_FIRST))
		return -EOPNOTSUPP;
	return pool_wait_full(timeout_ms) ? 0 : -ETIMEDOUT;
}

void pool_fork_prepare(void)
{
	lock_take(&pool.lock, LOCK_POOL);
}

void pool_fork_parent(void)
{
	lock_drop(&pool.lock, LOCK_POOL);
}

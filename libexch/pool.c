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
 * has been taken for POOL_IDLE_NS, and then fills the pool up.
 *
 * There is one pool per NUMA node (one here on a single-node machine), its
 * staging area bound to the node; the fault service takes frames from the
 * node it runs on. When the kernel cannot give a THP (fragmentation, THP
 * disabled meanwhile), the refill thread backs off instead of spinning.
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
#define NS_PER_S 1000000000ull

struct pool_node {
	char *staging;    /* nslots * REGION_SIZE, REGION_SIZE aligned */
	unsigned nslots;
	unsigned *ready;  /* stack of slot indices holding a frame */
	unsigned nready;
	unsigned *empty;  /* stack of slot indices waiting for refill */
	unsigned nempty;
};

static struct {
	pthread_mutex_t lock;   /* protects everything below */
	pthread_cond_t refill;  /* signalled when a slot becomes empty */
	pthread_cond_t changed; /* broadcast when a frame becomes ready */
	bool running;
	bool stop;
	bool verify;
	bool filling;           /* refill runs until every slot is ready */
	uint64_t last_take_ns;  /* CLOCK_MONOTONIC of the last pool_take */
	int pagemap_fd;
	struct pool_node nodes[POOL_MAX_NODES];
	unsigned nnodes;
	pthread_t thread;
} pool = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.refill = PTHREAD_COND_INITIALIZER,
	.changed = PTHREAD_COND_INITIALIZER,
};

static char *pool_slot(struct pool_node *n, unsigned i)
{
	return n->staging + (size_t)i * REGION_SIZE;
}

static struct pool_node *pool_node_of(void *frame, unsigned *slot)
{
	for (unsigned i = 0; i < pool.nnodes; i++) {
		struct pool_node *n = &pool.nodes[i];
		size_t off = (size_t)((char *)frame - n->staging);

		if ((char *)frame >= n->staging && off < (size_t)n->nslots * REGION_SIZE) {
			*slot = (unsigned)(off / REGION_SIZE);
			return n;
		}
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
	return n->nready * POOL_LOW_DIV < n->nslots;
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
	for (unsigned i = 0; i < pool.nnodes; i++) {
		if (!pool.nodes[i].nempty)
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

static void *pool_refill_main(void *arg)
{
	unsigned backoff = 0;

	(void)arg;
	lock_take(&pool.lock, LOCK_POOL);
	while (!pool.stop) {
		uint64_t wait_ns;
		struct pool_node *n = pool_next_refill(&wait_ns);

		if (!n) {
			pool.filling = false;
			pool_wait_ns(wait_ns);
			continue;
		}
		unsigned slot = n->empty[--n->nempty];
		lock_drop(&pool.lock, LOCK_POOL);
		bool ok = pool_populate(pool_slot(n, slot));
		if (!ok) {
			backoff = backoff ? backoff * 2 : POOL_BACKOFF_MIN_MS;
			if (backoff > POOL_BACKOFF_MAX_MS)
				backoff = POOL_BACKOFF_MAX_MS;
			pool_sleep_ms(backoff);
		}
		lock_take(&pool.lock, LOCK_POOL);
		if (ok) {
			backoff = 0;
			n->ready[n->nready++] = slot;
			stat_inc(STAT_pool_refills);
			stat_add(STAT_pool_frames_ready, 1);
			pthread_cond_broadcast(&pool.changed);
		} else {
			n->empty[n->nempty++] = slot;
		}
	}
	lock_drop(&pool.lock, LOCK_POOL);
	return NULL;
}

static int pool_node_init(struct pool_node *n, int node, unsigned frames)
{
	void *p;
	int rc = prim_map((size_t)frames * REGION_SIZE, REGION_SIZE, true, &p);

	if (rc < 0)
		return rc;
	n->staging = p;
	n->nslots = frames;
	prim_madvise(p, (size_t)frames * REGION_SIZE, MADV_HUGEPAGE);
	prim_madvise(p, (size_t)frames * REGION_SIZE, MADV_DONTFORK);
	if (pool.nnodes > 1)
		numa_tonode_memory(p, (size_t)frames * REGION_SIZE, node);
	n->ready = prim_meta_alloc(frames * sizeof(unsigned));
	n->empty = prim_meta_alloc(frames * sizeof(unsigned));
	if (!n->ready || !n->empty)
		return -ENOMEM;
	for (unsigned i = 0; i < frames; i++)
		n->empty[i] = frames - 1 - i;
	n->nempty = frames;
	n->nready = 0;
	return 0;
}

static void pool_node_free(struct pool_node *n)
{
	if (n->staging)
		prim_unmap(n->staging, (size_t)n->nslots * REGION_SIZE);
	prim_meta_free(n->ready, n->nslots * sizeof(unsigned));
	prim_meta_free(n->empty, n->nslots * sizeof(unsigned));
	memset(n, 0, sizeof(*n));
}

int pool_start(unsigned frames, bool verify, int pagemap_fd)
{
	unsigned nodes = topo_get()->numa_nodes;
	int rc = 0;

	pool.nnodes = nodes < POOL_MAX_NODES ? nodes : POOL_MAX_NODES;
	pool.verify = verify && pagemap_fd >= 0;
	pool.pagemap_fd = pagemap_fd;
	pool.stop = false;
	for (unsigned i = 0; i < pool.nnodes && rc == 0; i++)
		rc = pool_node_init(&pool.nodes[i], (int)i, frames);
	if (rc == 0)
		rc = -pthread_create(&pool.thread, NULL, pool_refill_main, NULL);
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
}

void pool_forget(void)
{
	/* The staging areas are MADV_DONTFORK: not mapped in the child. */
	for (unsigned i = 0; i < pool.nnodes; i++) {
		struct pool_node *n = &pool.nodes[i];

		prim_meta_free(n->ready, n->nslots * sizeof(unsigned));
		prim_meta_free(n->empty, n->nslots * sizeof(unsigned));
		memset(n, 0, sizeof(*n));
	}
	pool.nnodes = 0;
	pool.running = false;
	pthread_mutex_init(&pool.lock, NULL);
	pthread_cond_init(&pool.refill, NULL);
	pthread_cond_init(&pool.changed, NULL);
	stat_set(STAT_pool_frames_ready, 0);
}

int pool_take(int node, void **frame)
{
	struct pool_node *n;
	unsigned slot;

	lock_take(&pool.lock, LOCK_POOL);
	if (!pool.nnodes || (unsigned)node >= pool.nnodes)
		node = 0;
	n = &pool.nodes[node];
	if (!pool.nnodes || !n->nready) {
		lock_drop(&pool.lock, LOCK_POOL);
		return -ENOENT;
	}
	slot = n->ready[--n->nready];
	pool.last_take_ns = pool_now_ns();
	stat_sub(STAT_pool_frames_ready, 1);
	lock_drop(&pool.lock, LOCK_POOL);
	*frame = pool_slot(n, slot);
	if (pool.verify &&
	    prim_huge_bytes(pool.pagemap_fd, *frame, REGION_SIZE) != (long)REGION_SIZE) {
		pool_emptied(*frame);
		return -EAGAIN;
	}
	return 0;
}

void pool_emptied(void *frame)
{
	unsigned slot;

	lock_take(&pool.lock, LOCK_POOL);
	struct pool_node *n = pool_node_of(frame, &slot);
	if (n) {
		/* Above the low mark the refill thread waits for the pool to be
		 * idle; its timed wait sees this slot then. */
		n->empty[n->nempty++] = slot;
		if (pool_low(n) || n->nempty == 1)
			pthread_cond_signal(&pool.refill);
	}
	lock_drop(&pool.lock, LOCK_POOL);
}

void pool_put_back(void *frame)
{
	unsigned slot;

	lock_take(&pool.lock, LOCK_POOL);
	struct pool_node *n = pool_node_of(frame, &slot);
	if (n) {
		n->ready[n->nready++] = slot;
		stat_add(STAT_pool_frames_ready, 1);
		pthread_cond_broadcast(&pool.changed);
	}
	lock_drop(&pool.lock, LOCK_POOL);
}

unsigned pool_ready(void)
{
	unsigned total = 0;

	lock_take(&pool.lock, LOCK_POOL);
	for (unsigned i = 0; i < pool.nnodes; i++)
		total += pool.nodes[i].nready;
	lock_drop(&pool.lock, LOCK_POOL);
	return total;
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
	for (bool timed_out = false;; ) {
		unsigned ready = 0, slots = 0;

		for (unsigned i = 0; i < pool.nnodes; i++) {
			ready += pool.nodes[i].nready;
			slots += pool.nodes[i].nslots;
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

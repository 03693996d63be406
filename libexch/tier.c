/*
 * tier.c - the compressed tier: cold pages leave the application's memory
 * compressed and come back when touched.
 *
 * Every evicted page has an entry in its region's table (struct tier_table,
 * allocated when the region's first page is evicted, freed when its last
 * one comes back). An entry is one of:
 *
 *   PENDING  the evictor is moving the page out (step 2 below). A fault on
 *            it is parked and woken when the move is confirmed.
 *   CACHE    the page is in the tier's scratch region, the migration cache:
 *            a fault is served at once with a copy of it.
 *   SAME     the page was one 64-bit word repeated: the word is the entry.
 *   ZBUD     an LZ4 object in the zbud pool (zbud.c): the handle.
 *   STAGED   compressed or raw bytes in the swap staging batch, waiting
 *            for (or in) an io_uring write: served from there.
 *   SWAP     a slot of a swap file (swap.c): read back with io_uring,
 *            with the SWAP pages that follow it in the region (readahead).
 *   BAD      the page's swap slot did not check out: every touch is
 *            refused with SIGBUS (UFFDIO_POISON), never given wrong data.
 *
 * Eviction keeps the one invariant (DESIGN.md). For the pages of one
 * region, with the tier's lock and the coalescer's lock held:
 *   1. mlocked pages are left alone (MADV_COLD, which refuses VM_LOCKED
 *      mappings, tells), and the owners of pins over the pages are asked
 *      (pin.c);
 *   2. the entries of the present pages become PENDING, then the pages are
 *      moved out with UFFDIO_MOVE into the same offsets of the scratch
 *      region (a whole hugepage moves as one PMD). A pinned page (EBUSY),
 *      a page still shared with a fork child, or an mlocked one is not
 *      moved; what really moved is read back from the page tables;
 *   3. under the region lock, PENDING becomes CACHE for the pages that
 *      moved and is dropped for the rest (they never left), and threads
 *      parked meanwhile are woken;
 *   4. each CACHE page is encoded (codec.c) without the region lock, and
 *      its entry is set only if it is still CACHE: a fault served the
 *      page meanwhile, the application has it again, and the encoding is
 *      thrown away. Same-filled pages become SAME; LZ4 objects go to the
 *      pool; pages that do not compress go to the swap file raw; with
 *      nowhere to go a page is put back where it was.
 *   5. the scratch region is emptied (MADV_DONTNEED).
 *
 * The pool has a cap (EXCH_TIER_MAX). At the cap its least recently used
 * zbud page is reclaimed: its objects move to the staging batch (entries
 * STAGED), and a full batch is written with io_uring to the swap file. A
 * batch that fails to write (ENOSPC, EIO) is brought back into the
 * application ("unuse"): nothing is lost, the error is counted.
 *
 * Restore, on a fault (fault.c) or exch_advise(EXCH_HOT): the entry is
 * decoded into a bounce page and installed with UFFDIO_COPY, which wakes
 * the threads waiting on it; a zero word becomes the zero page.
 *
 * Discard: exch_free and exch_advise(EXCH_DONTNEED/EXCH_FREE) drop the
 * entries of freed memory first, so freed memory never comes back with old
 * contents; an entry in flight is dropped and its evictor notices.
 *
 * Compaction (zbud's) moves objects to other handles. Whoever reads an
 * entry's handle and uses it holds tier.gate for reading; compaction holds
 * it for writing, so it never moves an object somebody is using, and it
 * finds the entry to update through the page address that heads each
 * object in the pool.
 *
 * Fork: the fork handlers take the tier's lock, so nothing is in flight in
 * the scratch (MADV_DONTFORK) or the staging batch. Both processes keep
 * reading the swap files they have, but neither writes them again: each
 * opens a new one for its next write, so no slot the other may still read
 * is ever reused. The child gets a ring of its own for its reads, and the
 * library restarts in it at once (init.c) so its userfaultfd is registered
 * before anything touches an evicted page.
 *
 * Locks, outermost first: tier.lock (LOCK_TIER: the scratch, the staging
 * batch, the swap files array; one evictor at a time) -> coalesce.lock ->
 * region.lock (the region's table and tiered count) -> tier.gate
 * (LOCK_TGATE: handles stay put) -> zbud pool lock -> swap file lock.
 */
#include "config.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define TIER_HDR sizeof(uint64_t) /* each pool object starts with its page's address */
#define TIER_STAGE SWAP_BATCH     /* objects in one swap write */
#define TIER_SWAP_FILES 16        /* the current one and those retired by forks */
#define TIER_VEC 64
#define TIER_SWAP_RETRIES 3
#define TIER_READAHEAD 8          /* pages read with a faulting swap page, at most */
#define TIER_PUT_BACK_TRIES 1000 /* with the pause: a second */
#define TIER_ZALLOC_TRIES 16       /* pool pages reclaimed for one object, at most */
#define TIER_PUT_BACK_PAUSE_US 1000

enum tier_kind {
	TE_NONE = 0,
	TE_PENDING,
	TE_CACHE,
	TE_SAME,
	TE_ZBUD,
	TE_STAGED,
	TE_SWAP,
	TE_BAD,
};

/* One evicted page. Under its region's lock; v of ZBUD also under tier.gate. */
struct tier_entry {
	uint64_t v;     /* SAME: the word; ZBUD: handle; STAGED: index; SWAP: slot */
	uint16_t len;   /* bytes stored: ZBUD without the header, STAGED, SWAP */
	uint8_t kind;   /* enum tier_kind */
	uint8_t codec;  /* enum codec_kind of the bytes stored */
	uint8_t file;   /* SWAP: index in tier.files */
};

struct tier_table {
	struct tier_entry e[PAGES_PER_REGION];
};

/* An object waiting for the swap file. */
struct tier_staged {
	uintptr_t addr;
	uint16_t len;
	uint8_t codec;
};

static struct {
	pthread_mutex_t lock;  /* LOCK_TIER: protects the fields below but gate */
	pthread_rwlock_t gate; /* LOCK_TGATE: see the design comment */
	const struct zpool_ops *zops;
	void *zpool;
	char *scratch;         /* one region, registered, MADV_DONTFORK */
	char *stage;           /* TIER_STAGE pages of staged bytes */
	struct tier_staged staged[TIER_STAGE];
	unsigned nstaged;
	struct swap_file *files[TIER_SWAP_FILES];
	int cur;               /* the file written to, or -1 */
	bool swap_off;         /* EXCH_SWAP_MAX=0, or the file could not be opened */
	_Atomic bool warned_bad;
	struct tier_victim *victims; /* candidates of one eviction, mapped */
	size_t victims_cap;
} tier = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.gate = PTHREAD_RWLOCK_INITIALIZER,
	.cur = -1,
};

#define TIER_LIMIT_INTERVAL_MS 100
#define TIER_LIMIT_SLACK 16 /* evict 1/16 below the limit, so passes are rare */
#define TIER_LIMIT_ARENA_DIV 4 /* the arenas keep at least a quarter of the limit */

static struct {
	pthread_mutex_t lock; /* protects the fields below; under tier.lock never */
	pthread_cond_t wake;
	pthread_t thread;
	bool running, stop;
} tier_limit = { .lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER };

/* A region that an eviction may take, and how long since it faulted. */
struct tier_victim {
	uint64_t touched;
	struct exch_arena *a;
	struct region *r;
};

/* What one eviction did. */
struct tier_evict {
	size_t pages;   /* stored in the tier */
	size_t busy;    /* not moved: pinned, shared, mlocked, declined */
	size_t kept;    /* moved out but put back: nowhere to store them */
	bool full;      /* the pool is at its cap and nothing can go to swap */
};

static void tier_gate_read(void)
{
	lock_order_take(LOCK_TGATE);
	pthread_rwlock_rdlock(&tier.gate);
}

static void tier_gate_write(void)
{
	lock_order_take(LOCK_TGATE);
	pthread_rwlock_wrlock(&tier.gate);
}

static void tier_gate_leave(void)
{
	pthread_rwlock_unlock(&tier.gate);
	lock_order_drop(LOCK_TGATE);
}

bool tier_supported(void)
{
	return (lib.feat.on & EXCH_ON_ARENA_UFFD) && (lib.feat.have & EXCH_HAVE_UFFD_MOVE) &&
	       lib.pagemap_fd >= 0;
}

/* ---- the entry table ---- */

static struct tier_entry *tier_entry_of(struct region *r, unsigned idx)
{
	return r->tier ? &r->tier->e[idx] : NULL;
}

static unsigned tier_index(struct exch_arena *a, uintptr_t addr)
{
	return (unsigned)((addr - (uintptr_t)a->base) % REGION_SIZE / PAGE_SIZE_4K);
}

/* The entry of @addr if it is of @kind with value @v. Under region lock. */
static struct tier_entry *tier_entry_is(struct region *r, unsigned idx, enum tier_kind kind,
					uint64_t v)
{
	struct tier_entry *e = tier_entry_of(r, idx);

	return e && e->kind == kind && e->v == v ? e : NULL;
}

/* Forgets @e (its backing is the caller's business). Under region lock. */
static void tier_entry_clear(struct region *r, struct tier_entry *e)
{
	*e = (struct tier_entry){ 0 };
	if (--r->tiered == 0) {
		prim_meta_free(r->tier, sizeof(*r->tier));
		r->tier = NULL;
	}
	stat_sub(STAT_tier_pages, 1);
}

/* Frees what @e holds in the pool or the swap file. Under gate. */
static void tier_backing_free(const struct tier_entry *e)
{
	switch (e->kind) {
	case TE_ZBUD:
		tier.zops->free(tier.zpool, e->v, e->len + TIER_HDR);
		break;
	case TE_SWAP:
		swap_free(tier.files[e->file], (uint32_t)e->v);
		break;
	default:
		break; /* in flight: its evictor sees the entry gone */
	}
}

/* Frees what @e holds and forgets it. Under region lock and gate. */
static void tier_entry_drop(struct region *r, struct tier_entry *e)
{
	tier_backing_free(e);
	tier_entry_clear(r, e);
}

/* ---- restore ---- */

static void tier_fill(void *page, uint64_t word)
{
	uint64_t *w = page;

	for (size_t i = 0; i < PAGE_SIZE_4K / sizeof(*w); i++)
		w[i] = word;
}

/* A swap read of a faulting page and the SWAP neighbours after it. */
struct tier_ahead {
	unsigned n;
	struct tier_entry *e[TIER_READAHEAD];
	uint32_t slot[TIER_READAHEAD];
	uint64_t id[TIER_READAHEAD];
	size_t len[TIER_READAHEAD];
	int rc[TIER_READAHEAD];
	char buf[TIER_READAHEAD][PAGE_SIZE_4K] __attribute__((aligned(64)));
};

/*
 * Reads the swap entry @e of the page at @addr, and with it the run of
 * SWAP entries of the same file that follows it in the region (readahead:
 * pages evicted together are often touched together), in one submission.
 * Under region lock and gate. Decodes the first into @page: 0 or -errno.
 */
static int tier_read_swap(struct region *r, struct tier_entry *e, uintptr_t addr, void *page,
			  struct tier_ahead *ra)
{
	void *dst[TIER_READAHEAD];
	unsigned idx = (unsigned)(e - r->tier->e);
	struct codec_info info = { .kind = (enum codec_kind)e->codec };
	int rc = -EIO;

	for (int t = 0; t < TIER_SWAP_RETRIES; t++) {
		ra->n = 0;
		for (unsigned j = idx; j < PAGES_PER_REGION && ra->n < TIER_READAHEAD; j++) {
			struct tier_entry *x = &r->tier->e[j];

			if (j > idx && (x->kind != TE_SWAP || x->file != e->file))
				break;
			ra->e[ra->n] = x;
			ra->slot[ra->n] = (uint32_t)x->v;
			ra->id[ra->n] = addr + (size_t)(j - idx) * PAGE_SIZE_4K;
			dst[ra->n] = ra->buf[ra->n];
			ra->n++;
		}
		swap_read_many(tier.files[e->file], ra->n, ra->slot, ra->id, dst, ra->len, ra->rc);
		rc = ra->rc[0];
		if (rc != -EAGAIN && rc != -EINTR)
			break;
	}
	if (rc == 0)
		rc = codec_unpack(&info, ra->buf[0], ra->len[0], page);
	return rc;
}

/* Installs the neighbours read with a faulting page. Under region lock and gate. */
static void tier_read_ahead(struct region *r, struct tier_ahead *ra, uintptr_t addr)
{
	char page[PAGE_SIZE_4K] __attribute__((aligned(64)));

	for (unsigned i = 1; i < ra->n; i++) {
		struct tier_entry *e = ra->e[i];
		struct codec_info info = { .kind = (enum codec_kind)e->codec };
		int rc;

		/* A neighbour that failed is left: its own fault reports it. */
		if (ra->rc[i] < 0 || codec_unpack(&info, ra->buf[i], ra->len[i], page) < 0)
			continue;
		rc = prim_uffd_copy(lib.uffd, (void *)(addr + i * PAGE_SIZE_4K), page, PAGE_SIZE_4K);
		if (rc == 0 || rc == -EEXIST) {
			tier_entry_drop(r, e);
			stat_inc(STAT_restored_pages);
			stat_inc(STAT_tier_readahead_pages);
		}
		if (!r->tier)
			return;
	}
}

/*
 * The page can never be given back: its thread, and every later touch,
 * gets SIGBUS. UFFDIO_POISON does it in the kernel; without it the
 * faulting thread (@tid, 0 when unknown) is sent the signal.
 */
static void tier_poison(uintptr_t addr, pid_t tid)
{
	stat_inc(STAT_tier_restore_errors);
	if (!atomic_exchange(&tier.warned_bad, true))
		log_warn("tier: the page at %p could not be read back intact from the swap "
			 "file; touching it raises SIGBUS", (void *)addr);
	if (prim_uffd_poison(lib.uffd, (void *)addr, PAGE_SIZE_4K) == 0 || tid <= 0)
		return;
	syscall(SYS_tgkill, getpid(), tid, SIGBUS);
}

/*
 * Installs the page of @e at @addr with its contents. Under region lock
 * and gate. Returns 0 (installed or poisoned), or -errno with @e kept.
 */
static int tier_install(struct region *r, struct tier_entry *e, uintptr_t addr, pid_t tid)
{
	char page[PAGE_SIZE_4K] __attribute__((aligned(64)));
	struct codec_info info = { .kind = (enum codec_kind)e->codec };
	int rc = 0;

	switch (e->kind) {
	case TE_CACHE:
		rc = prim_uffd_copy(lib.uffd, (void *)addr,
				    tier.scratch + (addr % REGION_SIZE), PAGE_SIZE_4K);
		stat_inc(STAT_tier_cache_hits);
		break;
	case TE_SAME:
		if (e->v == 0) {
			rc = prim_uffd_zeropage(lib.uffd, (void *)addr, PAGE_SIZE_4K);
			break;
		}
		tier_fill(page, e->v);
		rc = prim_uffd_copy(lib.uffd, (void *)addr, page, PAGE_SIZE_4K);
		break;
	case TE_ZBUD: {
		const char *obj = tier.zops->map(tier.zpool, e->v);

		rc = *(const uint64_t *)obj == addr ? codec_unpack(&info, obj + TIER_HDR, e->len, page) :
						      -EIO;
		tier.zops->unmap(tier.zpool, e->v);
		if (rc < 0)
			goto bad;
		rc = prim_uffd_copy(lib.uffd, (void *)addr, page, PAGE_SIZE_4K);
		break;
	}
	case TE_STAGED:
		rc = codec_unpack(&info, tier.stage + e->v * PAGE_SIZE_4K, e->len, page);
		stat_inc(STAT_tier_cache_hits);
		if (rc < 0)
			goto bad;
		rc = prim_uffd_copy(lib.uffd, (void *)addr, page, PAGE_SIZE_4K);
		break;
	case TE_SWAP: {
		struct tier_ahead ra;

		rc = tier_read_swap(r, e, addr, page, &ra);
		/* -EIO: the slot failed its check, or the device its read;
		 * -EINVAL: no such slot. Anything else may pass: retried. */
		if (rc == -EIO || rc == -EINVAL)
			goto bad;
		if (rc < 0)
			break;
		rc = prim_uffd_copy(lib.uffd, (void *)addr, page, PAGE_SIZE_4K);
		if (rc < 0 && rc != -EEXIST)
			break;
		stat_inc(STAT_tier_swap_restores);
		tier_entry_drop(r, e); /* first: the faulting thread is awake */
		stat_inc(STAT_restored_pages);
		tier_read_ahead(r, &ra, addr);
		return 0;
	}
	case TE_BAD:
		tier_poison(addr, tid);
		return 0;
	default:
		return -EINVAL;
	}
	if (rc == -EEXIST) /* mapped meanwhile (the application's own mapping wins) */
		rc = 0;
	if (rc == 0) {
		/* A page in the migration cache was never evicted: not counted. */
		if (e->kind != TE_CACHE)
			stat_inc(STAT_restored_pages);
		tier_entry_drop(r, e);
	}
	return rc;
bad:
	/* Its bytes are gone or wrong: it stays BAD until it is freed. */
	tier_backing_free(e);
	*e = (struct tier_entry){ .kind = TE_BAD };
	tier_poison(addr, tid);
	return 0;
}

int tier_fault(struct exch_arena *a, struct region *r, uintptr_t addr, pid_t tid)
{
	struct tier_entry *e = tier_entry_of(r, tier_index(a, addr));
	int rc;

	if (!e || e->kind == TE_NONE)
		return TIER_FAULT_NONE;
	if (e->kind == TE_PENDING) {
		r->parked++;
		stat_inc(STAT_faults_parked);
		return TIER_FAULT_PARKED;
	}
	tier_gate_read();
	rc = tier_install(r, e, addr, tid);
	tier_gate_leave();
	if (rc < 0) {
		stat_inc(STAT_fault_errors);
		prim_uffd_wake(lib.uffd, (void *)addr, PAGE_SIZE_4K);
	}
	return TIER_FAULT_DONE;
}

/* ---- the pool and the swap files ---- */

static int tier_pool(void)
{
	if (tier.zpool)
		return 0;
	tier.zops = &zbud_zpool_ops;
	tier.zpool = tier.zops->create((size_t)opt_get(OPT_TIER_MAX));
	return tier.zpool ? 0 : -ENOMEM;
}

static int tier_scratch(void)
{
	void *p;
	int rc;

	if (tier.scratch)
		return 0;
	if (!tier.stage) {
		tier.stage = prim_meta_alloc(TIER_STAGE * PAGE_SIZE_4K);
		if (!tier.stage)
			return -ENOMEM;
	}
	rc = prim_map_scratch(lib.uffd, REGION_SIZE, &p);
	if (rc < 0)
		return rc;
	tier.scratch = p;
	return 0;
}

/* Closes retired files nobody reads any more. Under tier.lock. */
static void tier_files_reap(void)
{
	tier_gate_write();
	for (int i = 0; i < TIER_SWAP_FILES; i++)
		if (tier.files[i] && i != tier.cur && swap_slots_used(tier.files[i]) == 0) {
			swap_close(tier.files[i]);
			tier.files[i] = NULL;
		}
	tier_gate_leave();
}

/* The file to write to, opened on first use; NULL when swap is off. */
static struct swap_file *tier_file(void)
{
	const char *dir = opt_str(OPT_SWAP_DIR);
	int slot = -1, rc;

	if (tier.cur >= 0)
		return tier.files[tier.cur];
	if (tier.swap_off || opt_get(OPT_SWAP_MAX) < (long long)PAGE_SIZE_4K) {
		tier.swap_off = true;
		return NULL;
	}
	tier_files_reap();
	for (int i = 0; i < TIER_SWAP_FILES && slot < 0; i++)
		if (!tier.files[i])
			slot = i;
	if (slot < 0)
		return NULL; /* every file still read by someone: try later */
	rc = swap_open(*dir ? dir : TIER_SWAP_DIR_DEFAULT, (size_t)opt_get(OPT_SWAP_MAX),
		       &tier.files[slot]);
	if (rc < 0) {
		log_warn("tier: no swap file in %s (%s): pages that do not compress stay in "
			 "memory", *dir ? dir : TIER_SWAP_DIR_DEFAULT, prim_errstr(-rc));
		stat_inc(STAT_degraded);
		tier.swap_off = true;
		return NULL;
	}
	tier.cur = slot;
	return tier.files[slot];
}

/*
 * Puts the staged page of @e back into the application (the swap write
 * failed: "unuse"). Under region lock and gate.
 */
static void tier_unstage(struct region *r, struct tier_entry *e, uintptr_t addr)
{
	int rc = -EAGAIN;

	for (unsigned t = 0; t < TIER_PUT_BACK_TRIES && rc < 0; t++) {
		if (t)
			usleep(TIER_PUT_BACK_PAUSE_US);
		rc = tier_install(r, e, addr, 0);
	}
	if (rc == 0) {
		stat_inc(STAT_tier_unused);
		return;
	}
	/* The kernel would not copy it in, for a second: lost, loudly. */
	*e = (struct tier_entry){ .kind = TE_BAD };
	tier_poison(addr, 0);
}

/* Writes the staging batch to the swap file and settles every entry.
 * Under tier.lock; no region lock. */
static void tier_flush(void)
{
	const void *pages[TIER_STAGE];
	size_t lens[TIER_STAGE];
	uint64_t ids[TIER_STAGE];
	uint32_t slots[TIER_STAGE];
	struct swap_file *f = tier_file();
	unsigned n = tier.nstaged;
	int rc = f ? 0 : -ENOSPC;

	if (!n)
		return;
	for (unsigned i = 0; i < n; i++) {
		pages[i] = tier.stage + (size_t)i * PAGE_SIZE_4K;
		lens[i] = tier.staged[i].len;
		ids[i] = tier.staged[i].addr;
	}
	if (f)
		rc = swap_write(f, pages, lens, ids, n, slots);
	if (rc == -ENOSPC && f)
		stat_inc(STAT_tier_swap_full);
	for (unsigned i = 0; i < n; i++) {
		uintptr_t addr = tier.staged[i].addr;
		struct exch_arena *a = arena_lookup(addr);
		struct region *r = a ? arena_region(a, addr) : NULL;
		struct tier_entry *e;

		if (!r) {
			if (rc == 0)
				swap_free(f, slots[i]);
			continue;
		}
		lock_take(&r->lock, LOCK_REGION);
		tier_gate_read();
		e = tier_entry_is(r, tier_index(a, addr), TE_STAGED, i);
		if (e && rc == 0) {
			e->kind = TE_SWAP;
			e->v = slots[i];
			e->file = (uint8_t)tier.cur;
		} else if (e) {
			tier_unstage(r, e, addr);
		} else if (rc == 0) {
			swap_free(f, slots[i]);
		}
		tier_gate_leave();
		lock_drop(&r->lock, LOCK_REGION);
	}
	tier.nstaged = 0;
}

/* Copies @len bytes for the page at @addr into the batch; the caller makes
 * its entry STAGED with the index returned. Under tier.lock. */
static unsigned tier_stage_add(uintptr_t addr, const void *bytes, size_t len,
			       enum codec_kind codec)
{
	unsigned i = tier.nstaged++;

	memcpy(tier.stage + (size_t)i * PAGE_SIZE_4K, bytes, len);
	tier.staged[i] = (struct tier_staged){ .addr = addr, .len = (uint16_t)len,
					       .codec = (uint8_t)codec };
	return i;
}

/*
 * The region of the object at @handle, locked with the gate read-held, and
 * its entry if that still names the object; NULL (nothing locked) if the
 * object's page is in no arena. Undo with tier_object_done().
 */
static struct region *tier_object_entry(uint64_t handle, uintptr_t *addr,
					struct tier_entry **e)
{
	struct exch_arena *a;
	struct region *r;

	*addr = *(const uint64_t *)(uintptr_t)handle;
	a = arena_lookup(*addr);
	if (!a)
		return NULL;
	r = arena_region(a, *addr);
	lock_take(&r->lock, LOCK_REGION);
	tier_gate_read();
	*e = tier_entry_is(r, tier_index(a, *addr), TE_ZBUD, handle);
	return r;
}

static void tier_object_done(struct region *r)
{
	tier_gate_leave();
	lock_drop(&r->lock, LOCK_REGION);
}

/*
 * zbud reclaim callback: the object at @handle goes to the staging batch.
 * The caller flushed the batch if it was full.
 */
static int tier_reclaim_one(uint64_t handle, void *arg)
{
	struct tier_entry *e = NULL;
	struct region *r;
	uintptr_t addr;
	int rc = -ENOENT;

	(void)arg;
	if (tier.nstaged == TIER_STAGE || !(r = tier_object_entry(handle, &addr, &e)))
		return -EAGAIN;
	if (e) {
		unsigned i = tier_stage_add(addr, (const char *)(uintptr_t)handle + TIER_HDR, e->len,
					    (enum codec_kind)e->codec);

		tier.zops->free(tier.zpool, handle, e->len + TIER_HDR);
		e->kind = TE_STAGED;
		e->v = i;
		rc = 0;
	}
	tier_object_done(r);
	return rc;
}

/* Makes room in the pool: its LRU zbud page goes to swap. Under tier.lock;
 * 0, or -ENOSPC when nothing can go. */
static int tier_swap_out(void)
{
	int rc;

	if (!tier_file())
		return -ENOSPC;
	if (tier.nstaged + 2 > TIER_STAGE)
		tier_flush();
	rc = tier.zops->reclaim(tier.zpool, tier_reclaim_one, NULL);
	if (rc == 0)
		stat_inc(STAT_tier_pool_reclaims);
	return rc == -ENOENT ? -ENOSPC : 0;
}

/* ---- evict ---- */

static bool tier_bit(const uint64_t *map, unsigned i)
{
	return map[i / 64] >> (i % 64) & 1;
}

static void tier_set(uint64_t *map, unsigned i)
{
	map[i / 64] |= 1ull << (i % 64);
}

/* Sets in @map the pages of [p, p+n pages) that hold data of their own
 * (present or swapped, not the zero page); the count, or -errno. */
static long tier_data_pages(char *p, unsigned n, uint64_t *map)
{
	struct page_region vec[TIER_VEC];
	char *pos = p, *end = p + (size_t)n * PAGE_SIZE_4K;
	long count = 0;

	while (pos < end) {
		long k = prim_pagemap_scan(lib.pagemap_fd, pos, end, PAGE_IS_PFNZERO,
					   PAGE_IS_PRESENT | PAGE_IS_SWAPPED, PAGE_IS_PFNZERO,
					   PAGE_IS_PRESENT, vec, TIER_VEC);

		if (k < 0)
			return k;
		for (long i = 0; i < k; i++)
			for (uintptr_t q = vec[i].start; q < vec[i].end; q += PAGE_SIZE_4K) {
				tier_set(map, (unsigned)((q - (uintptr_t)p) / PAGE_SIZE_4K));
				count++;
			}
		if (k < TIER_VEC)
			break;
		pos = (char *)(uintptr_t)vec[TIER_VEC - 1].end;
	}
	return count;
}

/* Marks the pages of @want PENDING; false if the region cannot be evicted
 * now (in transit, or no memory for its table). */
static bool tier_mark_pending(struct region *r, const uint64_t *want)
{
	struct tier_table *t = r->tier ? NULL : prim_meta_alloc(sizeof(*t));
	bool ok = false;

	lock_take(&r->lock, LOCK_REGION);
	if (r->state != REGION_TRANSIT && r->state != REGION_EMPTY && (r->tier || t)) {
		if (!r->tier) {
			r->tier = t;
			t = NULL;
		}
		for (unsigned i = 0; i < PAGES_PER_REGION; i++)
			if (tier_bit(want, i) && r->tier->e[i].kind == TE_NONE) {
				r->tier->e[i].kind = TE_PENDING;
				r->tiered++;
				stat_add(STAT_tier_pages, 1);
			}
		r->state = REGION_SMALL; /* holes now; a hugepage is split by the move */
		r->moving = true;
		ok = true;
	}
	lock_drop(&r->lock, LOCK_REGION);
	if (t)
		prim_meta_free(t, sizeof(*t));
	return ok;
}

/* Moves the runs of @want out to the scratch; a page that will not move
 * (pinned, shared, mlocked) is stepped over. */
static void tier_move_out(char *base, const uint64_t *want)
{
	for (unsigned i = 0; i < PAGES_PER_REGION;) {
		unsigned j = i;
		size_t moved = 0;

		if (!tier_bit(want, i)) {
			i++;
			continue;
		}
		while (j < PAGES_PER_REGION && tier_bit(want, j))
			j++;
		prim_uffd_move(lib.uffd, tier.scratch + (size_t)i * PAGE_SIZE_4K,
			       base + (size_t)i * PAGE_SIZE_4K, (size_t)(j - i) * PAGE_SIZE_4K,
			       UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES | UFFDIO_MOVE_MODE_DONTWAKE, &moved);
		i += (unsigned)(moved / PAGE_SIZE_4K);
		if (i < j)
			i++; /* the page the move stopped at stays */
	}
}

/*
 * Puts the scratch page @src back at @dst: a move, else a copy, retried
 * for a while (only memory pressure makes them fail). 0 or -errno.
 */
static int tier_move_back(char *dst, char *src)
{
	int rc = -EAGAIN;

	for (unsigned t = 0; t < TIER_PUT_BACK_TRIES && rc < 0 && rc != -EEXIST; t++) {
		size_t moved = 0;

		if (t)
			usleep(TIER_PUT_BACK_PAUSE_US);
		rc = prim_uffd_move(lib.uffd, dst, src, PAGE_SIZE_4K, 0, &moved);
		if (rc < 0 && moved)
			rc = 0;
		if (rc < 0 && rc != -EEXIST)
			rc = prim_uffd_copy(lib.uffd, dst, src, PAGE_SIZE_4K);
	}
	return rc == -EEXIST ? 0 : rc;
}

/*
 * The scratch could not be read: which pages moved is unknown, so every
 * page that can be moves back, and no entry stays. Under region lock.
 */
static void tier_undo_move(struct region *r, char *base, const uint64_t *want)
{
	for (unsigned i = 0; i < PAGES_PER_REGION; i++) {
		struct tier_entry *e = tier_entry_is(r, i, TE_PENDING, 0);
		size_t moved = 0;

		if (!tier_bit(want, i))
			continue;
		prim_uffd_move(lib.uffd, base + (size_t)i * PAGE_SIZE_4K,
			       tier.scratch + (size_t)i * PAGE_SIZE_4K, PAGE_SIZE_4K,
			       UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES, &moved);
		if (e)
			tier_entry_clear(r, e);
	}
}

/* Step 3: PENDING becomes CACHE where the page is in the scratch. */
static void tier_confirm(struct exch_arena *a, struct region *r, const uint64_t *want,
			 const uint64_t *got, struct tier_evict *ev)
{
	size_t busy = ev->busy;
	uint32_t parked;

	lock_take(&r->lock, LOCK_REGION);
	for (unsigned i = 0; i < PAGES_PER_REGION; i++) {
		struct tier_entry *e;

		if (!tier_bit(want, i) || !(e = tier_entry_is(r, i, TE_PENDING, 0)))
			continue;
		if (tier_bit(got, i)) {
			e->kind = TE_CACHE;
		} else {
			tier_entry_clear(r, e);
			ev->busy++;
		}
	}
	parked = r->parked;
	r->parked = 0;
	r->moving = false;
	lock_drop(&r->lock, LOCK_REGION);
	stat_add(STAT_tier_evict_busy, ev->busy - busy);
	if (parked)
		prim_uffd_wake(lib.uffd, arena_region_base(a, r), REGION_SIZE);
}

/* A CACHE page that has nowhere to go goes back. Under region lock. */
static void tier_put_back(struct region *r, struct tier_entry *e, unsigned i, char *base,
			  struct tier_evict *ev)
{
	char *dst = base + (size_t)i * PAGE_SIZE_4K, *src = tier.scratch + (size_t)i * PAGE_SIZE_4K;

	if (tier_move_back(dst, src) < 0) {
		/* The kernel would neither move nor copy the page into a hole
		 * it owns (out of memory for long): the page is lost, loudly. */
		e->kind = TE_BAD;
		tier_poison((uintptr_t)dst, 0);
		return;
	}
	tier_entry_clear(r, e);
	ev->kept++;
	stat_inc(STAT_tier_evict_kept);
}

/* Allocates a pool object for @len bytes, making room by swapping out the
 * pool's LRU page when it is at its cap. 0 or -errno. */
static int tier_zalloc(size_t len, uint64_t *handle)
{
	int rc;

	for (unsigned t = 0;; t++) {
		rc = tier.zops->alloc(tier.zpool, len, handle);
		/* Reclaim can keep pages (their arena is going away): bounded. */
		if (rc != -ENOMEM || t == TIER_ZALLOC_TRIES || tier_swap_out() < 0)
			return rc;
	}
}

/* Where the encoded page @i goes. Under tier.lock, no region lock. */
static void tier_store(struct exch_arena *a, struct region *r, unsigned i, char *buf,
		       size_t len, const struct codec_info *info, bool to_swap,
		       struct tier_evict *ev)
{
	char *base = arena_region_base(a, r);
	uintptr_t addr = (uintptr_t)base + (size_t)i * PAGE_SIZE_4K;
	uint64_t h = 0;
	bool zbud = info->kind == CODEC_LZ4 && !to_swap, staged = false;
	struct tier_entry *e;
	int rc = 0;

	if (zbud) {
		rc = tier_zalloc(len + TIER_HDR, &h);
		if (rc == 0) {
			char *obj = tier.zops->map(tier.zpool, h);

			memcpy(obj, &addr, TIER_HDR);
			memcpy(obj + TIER_HDR, buf, len);
			tier.zops->unmap(tier.zpool, h);
		} else {
			ev->full = !tier_file(); /* nowhere for the next ones either */
			zbud = false;
		}
	}
	if (info->kind != CODEC_SAME && !zbud) {
		if (tier.nstaged == TIER_STAGE)
			tier_flush();
		staged = tier_file() != NULL;
	}
	lock_take(&r->lock, LOCK_REGION);
	tier_gate_read();
	e = tier_entry_is(r, i, TE_CACHE, 0);
	if (!e) {
		if (zbud)
			tier.zops->free(tier.zpool, h, len + TIER_HDR);
	} else if (info->kind == CODEC_SAME || zbud || staged) {
		e->kind = info->kind == CODEC_SAME ? TE_SAME : zbud ? TE_ZBUD : TE_STAGED;
		e->v = info->kind == CODEC_SAME ? info->word :
		       zbud ? h : tier_stage_add(addr, buf, len, info->kind);
		e->len = (uint16_t)len;
		e->codec = (uint8_t)info->kind;
		ev->pages++;
		stat_inc(STAT_evicted_pages);
		stat_inc(info->kind == CODEC_SAME ? STAT_tier_same_pages :
			 zbud ? STAT_tier_lz4_pages : STAT_tier_raw_pages);
	} else {
		tier_put_back(r, e, i, base, ev);
	}
	tier_gate_leave();
	lock_drop(&r->lock, LOCK_REGION);
}

/* Step 4 for every page that reached the scratch. */
static void tier_encode(struct exch_arena *a, struct region *r, const uint64_t *got,
			bool to_swap, struct tier_evict *ev)
{
	char buf[PAGE_SIZE_4K] __attribute__((aligned(64)));
	size_t limit = tier.zops->max_object - TIER_HDR;

	for (unsigned i = 0; i < PAGES_PER_REGION; i++) {
		struct codec_info info;
		size_t len;
		bool cached;

		if (!tier_bit(got, i))
			continue;
		lock_take(&r->lock, LOCK_REGION);
		cached = tier_entry_is(r, i, TE_CACHE, 0) != NULL;
		lock_drop(&r->lock, LOCK_REGION);
		if (!cached)
			continue; /* served meanwhile, or freed */
		len = codec_pack(tier.scratch + (size_t)i * PAGE_SIZE_4K, buf, limit, &info);
		tier_store(a, r, i, buf, len, &info, to_swap, ev);
	}
}

/*
 * Evicts the pages of region @r of @a that [@first, @first+@n) covers.
 * Under tier.lock; takes the coalescer's lock.
 */
static void tier_evict_region(struct exch_arena *a, struct region *r, unsigned first,
			      unsigned n, bool to_swap, struct tier_evict *ev)
{
	uint64_t want[PAGES_PER_REGION / 64] = { 0 }, got[PAGES_PER_REGION / 64] = { 0 };
	char *base = arena_region_base(a, r);
	struct pin_ask ask;
	long k;

	coalesce_lock();
	k = tier_data_pages(base + (size_t)first * PAGE_SIZE_4K, n, want);
	if (k <= 0)
		goto out;
	/* tier_data_pages numbered the pages from @first */
	if (first) {
		uint64_t shifted[PAGES_PER_REGION / 64] = { 0 };

		for (unsigned i = 0; i < n; i++)
			if (tier_bit(want, i))
				tier_set(shifted, first + i);
		memcpy(want, shifted, sizeof(want));
	}
	/* mlocked memory stays: MADV_COLD refuses VM_LOCKED mappings (seen
	 * here: EINVAL, or ENOENT for a 2 MB range), and otherwise only ages
	 * pages that are about to leave anyway. */
	if (prim_madvise(base + (size_t)first * PAGE_SIZE_4K, (size_t)n * PAGE_SIZE_4K,
			 MADV_COLD) < 0) {
		ev->busy += (size_t)k;
		stat_add(STAT_tier_evict_busy, (uint64_t)k);
		goto out;
	}
	if (pin_ask(a, (uintptr_t)base + (size_t)first * PAGE_SIZE_4K,
		    (size_t)n * PAGE_SIZE_4K, &ask) < 0) {
		ev->busy += (size_t)k;
		stat_add(STAT_tier_evict_busy, (uint64_t)k);
		stat_inc(STAT_coalesce_declined);
		goto out;
	}
	if (tier_mark_pending(r, want)) {
		tier_move_out(base, want);
		if (tier_data_pages(tier.scratch, PAGES_PER_REGION, got) < 0) {
			lock_take(&r->lock, LOCK_REGION);
			tier_undo_move(r, base, want);
			lock_drop(&r->lock, LOCK_REGION);
			memset(got, 0, sizeof(got));
			stat_inc(STAT_fault_errors);
		}
		tier_confirm(a, r, want, got, ev);
		tier_encode(a, r, got, to_swap, ev);
		if (tier.nstaged)
			tier_flush(); /* the scratch is emptied next */
		prim_madvise(tier.scratch, REGION_SIZE, MADV_DONTNEED);
	}
	pin_done(&ask);
out:
	coalesce_unlock();
}

/* Is @r empty? Read under its lock: a first touch in progress holds it
 * until the region's new state is set, after its thread has woken. */
static bool tier_region_empty(struct region *r)
{
	bool empty;

	lock_take(&r->lock, LOCK_REGION);
	empty = r->state == REGION_EMPTY;
	lock_drop(&r->lock, LOCK_REGION);
	return empty;
}

bool tier_region_holds(struct region *r)
{
	bool holds;

	lock_take(&r->lock, LOCK_REGION);
	holds = r->tiered != 0;
	lock_drop(&r->lock, LOCK_REGION);
	return holds;
}

/* Common checks of the tier's entry points: 0 with tier.lock taken, or
 * -errno. */
static int tier_ready(void)
{
	int rc;

	lib_ensure();
	if (coalesce_is_mine())
		return -EDEADLK;
	if (!tier_supported())
		return -EOPNOTSUPP;
	lock_take(&tier.lock, LOCK_TIER);
	rc = tier_pool();
	if (rc == 0)
		rc = tier_scratch();
	if (rc < 0) {
		lock_drop(&tier.lock, LOCK_TIER);
		return rc;
	}
	if (opt_get(OPT_FAULT_PER_CPU) == FAULT_PER_CPU_AUTO) {
		lock_take(&lib.lock, LOCK_LIB);
		fault_per_cpu(); /* restores are 4K and latency-bound (fault.c) */
		lock_drop(&lib.lock, LOCK_LIB);
	}
	return 0;
}

/* Evicts [addr, addr+len) of @a; pages evicted, or -errno. Under tier.lock. */
static long tier_evict_range(struct exch_arena *a, uintptr_t addr, size_t len, bool to_swap,
			     struct tier_evict *ev)
{
	uintptr_t end = addr + len;

	for (uintptr_t p = addr; p < end;) {
		uintptr_t rend = ALIGN_DOWN(p, REGION_SIZE) + REGION_SIZE;

		if (rend > end)
			rend = end;
		tier_evict_region(a, arena_region(a, p), tier_index(a, p),
				  (unsigned)((rend - p) / PAGE_SIZE_4K), to_swap, ev);
		p = rend;
	}
	return (long)ev->pages;
}

/*
 * Which regions go first. The kernel ages pages by their accessed bits;
 * user space cannot read those (pagemap does not show them), but it sees
 * every fault on an arena. So the tier evicts the regions that faulted
 * least recently (region.touched): a region first touched long ago and
 * not since is taken before one whose pages the program keeps bringing
 * back. A region of the working set that was evicted anyway refaults at
 * once and goes to the back of the line; regions that stay resident do not
 * fault, so their place is only as good as their last fault, which is the
 * price of having no accessed bit.
 *
 * The candidates are every non-empty region of @only (or of every
 * registered arena), kept in a min-heap by @touched in tier.victims. Under
 * tier.lock; no allocation (malloc could be the preload's own, whose
 * extent hooks come back here).
 */
static void tier_victim_sift(struct tier_victim *v, size_t n, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, m = i;

		if (l < n && v[l].touched < v[m].touched)
			m = l;
		if (l + 1 < n && v[l + 1].touched < v[m].touched)
			m = l + 1;
		if (m == i)
			return;
		struct tier_victim t = v[i];

		v[i] = v[m];
		v[m] = t;
		i = m;
	}
}

/* Room for @n candidates in tier.victims; false if it cannot be mapped. */
static bool tier_victims_room(size_t n)
{
	size_t len = ALIGN_UP(n * sizeof(struct tier_victim), PAGE_SIZE_4K);
	void *p;

	if (n <= tier.victims_cap)
		return true;
	p = prim_sys_mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return false;
	if (tier.victims)
		prim_sys_munmap(tier.victims, tier.victims_cap * sizeof(struct tier_victim));
	tier.victims = p;
	tier.victims_cap = len / sizeof(struct tier_victim);
	return true;
}

/* Fills tier.victims with the candidates; their number, or -ENOMEM. */
static long tier_victims_collect(struct exch_arena *only)
{
	size_t total = 0, n = 0;

	for (unsigned s = 0; s < arena_slots(); s++) {
		struct exch_arena *a = only ? (s ? NULL : only) : arena_at(s);

		if (a && a->registered)
			total += arena_span(a);
	}
	if (!tier_victims_room(total))
		return -ENOMEM;
	for (unsigned s = 0; s < arena_slots(); s++) {
		struct exch_arena *a = only ? (s ? NULL : only) : arena_at(s);

		size_t span = a ? arena_span(a) : 0;

		for (size_t i = 0; a && a->registered && i < span && n < total; i++) {
			struct region *r = &a->regions[i];

			if (tier_region_empty(r))
				continue;
			tier.victims[n++] = (struct tier_victim){
				.touched = atomic_load_explicit(&r->touched, memory_order_relaxed),
				.a = a, .r = r };
		}
	}
	return (long)n;
}

/* Evicts least recently faulted regions of @only (NULL: of every arena)
 * until @want bytes are stored. Caller holds tier.lock. */
static void tier_evict_coldest(struct exch_arena *only, size_t want, bool to_swap,
			       struct tier_evict *ev)
{
	static bool warned;
	long got = tier_victims_collect(only);
	struct tier_victim *v = tier.victims;
	size_t n = got > 0 ? (size_t)got : 0;

	if (got < 0 && !warned) {
		warned = true;
		log_warn("tier: no memory to order regions by age: nothing evicted");
		stat_inc(STAT_degraded);
	}
	for (size_t i = n / 2; i-- > 0;)
		tier_victim_sift(v, n, i);
	while (n && ev->pages * PAGE_SIZE_4K < want && !ev->full) {
		struct tier_victim x = v[0];

		if (only && !arena_live(only))
			break; /* being destroyed: it waits for tier.lock */
		v[0] = v[--n];
		tier_victim_sift(v, n, 0);
		tier_evict_region(x.a, x.r, 0, PAGES_PER_REGION, to_swap, ev);
	}
}

long exch_reclaim(exch_arena_t *a, size_t bytes, unsigned flags)
{
	struct tier_evict ev = { 0 };
	int rc;

	if (!bytes || (flags & ~EXCH_RECLAIM_SWAP) || !arena_live(a)) {
		stat_inc(STAT_misuse);
		return -EINVAL;
	}
	if (!a->registered) /* plain memory: nothing would restore a page */
		return -EOPNOTSUPP;
	rc = tier_ready();
	if (rc < 0)
		return rc;
	tier_evict_coldest(a, bytes, flags & EXCH_RECLAIM_SWAP, &ev);
	lock_drop(&tier.lock, LOCK_TIER);
	return (long)(ev.pages * PAGE_SIZE_4K);
}

/* Restores the evicted pages of [addr, addr+len) of @a. */
static int tier_restore_range(struct exch_arena *a, uintptr_t addr, size_t len)
{
	int first_err = 0;

	for (uintptr_t p = addr; p < addr + len; p += PAGE_SIZE_4K) {
		struct region *r = arena_region(a, p);
		struct tier_entry *e;

		lock_take(&r->lock, LOCK_REGION);
		e = tier_entry_of(r, tier_index(a, p));
		if (e && e->kind != TE_NONE && e->kind != TE_PENDING && e->kind != TE_BAD) {
			int rc;

			tier_gate_read();
			rc = tier_install(r, e, p, 0);
			tier_gate_leave();
			if (rc < 0 && !first_err)
				first_err = rc;
		}
		lock_drop(&r->lock, LOCK_REGION);
	}
	return first_err;
}

void tier_discard(struct exch_arena *a, struct region *r, size_t first, size_t npages)
{
	while (r->moving) {
		lock_drop(&r->lock, LOCK_REGION);
		usleep(TIER_TRANSIT_WAIT_US);
		lock_take(&r->lock, LOCK_REGION);
	}
	if (!r->tiered)
		return;
	tier_gate_read();
	for (size_t i = 0; i < npages && r->tier; i++) {
		struct tier_entry *e = &r->tier->e[(first + i) % PAGES_PER_REGION];

		if (e->kind != TE_NONE) {
			tier_entry_drop(r, e);
			stat_inc(STAT_tier_discarded);
		}
	}
	tier_gate_leave();
	(void)a;
}

/* DONTNEED/FREE of [addr, addr+len) of @a: entries first, then the pages. */
/* Locks @r once none of its pages is away (in transit, being evicted). */
static void tier_region_lock_settled(struct region *r)
{
	fault_region_lock(r);
	while (r->state == REGION_TRANSIT || r->moving) {
		fault_region_unlock(r);
		usleep(TIER_TRANSIT_WAIT_US);
		fault_region_lock(r);
	}
}

/*
 * Part of a hugepage purged for the preload's jemalloc (@keep_huge): an
 * madvise would split the hugepage to free 4K pages of it, and the region
 * would be 4K pages from then on. Instead a lazy purge (MADV_FREE: the
 * contents may stay) leaves the pages as they are, and a forced one zeroes
 * them in place; the memory goes back when the whole region is purged or
 * freed. Returns true if it dealt with [p, end). Region lock held; it is
 * dropped and taken again around the zeroing.
 */
static bool tier_purge_in_place(struct exch_arena *a, struct region *r, uintptr_t p,
				uintptr_t end, int advice)
{
	if (r->state != REGION_HUGE || end - p == REGION_SIZE)
		return false;
	stat_inc(STAT_purges_kept_huge);
	if (advice == MADV_FREE)
		return true;
	fault_region_unlock(r);
	arena_zero_data((char *)p, end - p);
	/* The tier may have taken pages out while they were zeroed. */
	tier_region_lock_settled(r);
	tier_discard(a, r, (p - (uintptr_t)a->base) / PAGE_SIZE_4K, (end - p) / PAGE_SIZE_4K);
	return true;
}

static int tier_drop_range(struct exch_arena *a, uintptr_t addr, size_t len, int advice,
			   bool keep_huge)
{
	int first_err = 0;

	for (uintptr_t p = addr; p < addr + len;) {
		uintptr_t rend = ALIGN_DOWN(p, REGION_SIZE) + REGION_SIZE;
		struct region *r = arena_region(a, p);
		int rc;

		if (rend > addr + len)
			rend = addr + len;
		tier_region_lock_settled(r);
		tier_discard(a, r, (p - (uintptr_t)a->base) / PAGE_SIZE_4K, (rend - p) / PAGE_SIZE_4K);
		if (keep_huge && a->registered && tier_purge_in_place(a, r, p, rend, advice)) {
			fault_region_unlock(r);
			p = rend;
			continue;
		}
		rc = prim_madvise((void *)p, rend - p, advice);
		if (rc == 0 && advice == MADV_DONTNEED && rend - p == REGION_SIZE && !r->tiered)
			r->state = REGION_EMPTY;
		else if (rc == 0 && r->state == REGION_HUGE && rend - p < REGION_SIZE)
			r->state = REGION_SMALL; /* the kernel split it */
		fault_region_unlock(r);
		if (rc < 0 && !first_err)
			first_err = rc;
		p = rend;
	}
	return first_err;
}

int tier_purge(void *addr, size_t len, bool lazy)
{
	uintptr_t p = (uintptr_t)addr;
	struct exch_arena *a = arena_lookup(p);

	if (!len || p % PAGE_SIZE_4K || len % PAGE_SIZE_4K || !a || !arena_contains(a, p, len))
		return -EINVAL;
	lib_ensure();
	return tier_drop_range(a, p, len, lazy ? MADV_FREE : MADV_DONTNEED, true);
}

int exch_advise(void *addr, size_t len, int advice)
{
	uintptr_t p = (uintptr_t)addr;
	struct exch_arena *a = arena_lookup(p);
	struct tier_evict ev = { 0 };
	int rc;

	if (!len || p % PAGE_SIZE_4K || len % PAGE_SIZE_4K || !a || !arena_contains(a, p, len) ||
	    advice < EXCH_COLD || advice > EXCH_FREE) {
		stat_inc(STAT_misuse);
		return -EINVAL;
	}
	if (advice == EXCH_DONTNEED || advice == EXCH_FREE) {
		lib_ensure();
		return tier_drop_range(a, p, len,
				       advice == EXCH_DONTNEED ? MADV_DONTNEED : MADV_FREE, false);
	}
	if (!a->registered)
		return -EOPNOTSUPP;
	rc = tier_ready();
	if (rc < 0)
		return rc;
	if (advice == EXCH_COLD)
		tier_evict_range(a, p, len, false, &ev);
	else
		rc = tier_restore_range(a, p, len);
	lock_drop(&tier.lock, LOCK_TIER);
	return rc;
}

/* zbud compaction callback: the object moved from @from to @to. */
static int tier_moved(uint64_t from, uint64_t to, void *arg)
{
	uintptr_t addr = *(const uint64_t *)(uintptr_t)to;
	struct exch_arena *a = arena_lookup(addr);
	struct tier_entry *e;

	(void)arg;
	if (!a)
		return -ENOENT;
	/* tier.gate is held for writing: no reader uses a handle now */
	e = tier_entry_is(arena_region(a, addr), tier_index(a, addr), TE_ZBUD, from);
	if (!e)
		return -ENOENT;
	e->v = to;
	return 0;
}

/* Unuse callback: the object at @handle goes back into the application. */
static int tier_unuse_one(uint64_t handle, void *arg)
{
	struct tier_entry *e = NULL;
	struct region *r;
	uintptr_t addr;
	int rc = -ENOENT;

	(void)arg;
	if (!(r = tier_object_entry(handle, &addr, &e)))
		return rc;
	if (e) {
		rc = tier_install(r, e, addr, 0);
		if (rc == 0)
			stat_inc(STAT_tier_unused);
	}
	tier_object_done(r);
	return rc;
}

static size_t tier_pool_bytes(void)
{
	struct zpool_usage u = { 0 };

	if (tier.zpool)
		tier.zops->usage(tier.zpool, &u);
	return u.pages * PAGE_SIZE_4K;
}

long exch_tier_shrink(size_t target)
{
	long freed;
	int rc = tier_ready();

	if (rc < 0)
		return rc;
	tier_gate_write();
	freed = tier.zops->compact(tier.zpool, tier_moved, NULL);
	tier_gate_leave();
	stat_add(STAT_tier_compacted_pages, (uint64_t)freed);
	/* Each page is tried once at most: reclaim rotates one it keeps. */
	for (size_t n = tier_pool_bytes() / PAGE_SIZE_4K; n && tier_pool_bytes() > target; n--)
		if (tier.zops->reclaim(tier.zpool, tier_unuse_one, NULL) == -ENOENT)
			break;
	lock_drop(&tier.lock, LOCK_TIER);
	return (long)tier_pool_bytes();
}

void tier_measure(void)
{
	struct zpool_usage u = { 0 };

	if (!tier.zpool)
		return;
	tier.zops->usage(tier.zpool, &u);
	stat_set(STAT_tier_pool_bytes, u.pages * PAGE_SIZE_4K);
	stat_set(STAT_tier_stored_bytes, u.stored_bytes);
	stat_set(STAT_tier_pool_pages, u.objects);
}

/* Tests: the current swap file, opened if need be (NULL: swap is off). */
struct swap_file *tier_swap_file(void)
{
	struct swap_file *f;

	lock_take(&tier.lock, LOCK_TIER);
	f = tier_file();
	lock_drop(&tier.lock, LOCK_TIER);
	return f;
}

void tier_arena_free(struct exch_arena *a)
{
	for (size_t i = 0; i < arena_span(a); i++) {
		struct region *r = &a->regions[i];

		lock_take(&r->lock, LOCK_REGION);
		tier_discard(a, r, i * PAGES_PER_REGION, PAGES_PER_REGION);
		lock_drop(&r->lock, LOCK_REGION);
	}
}

void tier_sync(void)
{
	lock_take(&tier.lock, LOCK_TIER);
	lock_drop(&tier.lock, LOCK_TIER);
}

void tier_fork_prepare(void)
{
	lock_take(&tier.lock, LOCK_TIER);
}

/* Both sides: no more writes to the files that exist now. */
static void tier_retire_files(void)
{
	for (int i = 0; i < TIER_SWAP_FILES; i++)
		if (tier.files[i])
			swap_retire(tier.files[i]);
	tier.cur = -1;
}

void tier_fork_parent(void)
{
	tier_retire_files();
	lock_drop(&tier.lock, LOCK_TIER);
}

void tier_fork_child(void)
{
	pthread_mutex_init(&tier_limit.lock, NULL);
	pthread_cond_init(&tier_limit.wake, NULL);
	tier_limit.running = false; /* the child starts its own (init.c) */
	pthread_mutex_init(&tier.lock, NULL);
	pthread_rwlock_init(&tier.gate, NULL);
	tier.scratch = NULL; /* MADV_DONTFORK: not mapped here */
	if (tier.zpool)
		tier.zops->fork_child(tier.zpool);
	for (int i = 0; i < TIER_SWAP_FILES; i++)
		if (tier.files[i] && swap_fork_child(tier.files[i]) < 0) {
			log_warn("fork child: no io_uring for the tier's swap file; its pages "
				 "there cannot be read");
			stat_inc(STAT_degraded);
		}
	tier_retire_files();
}

bool tier_holds_pages(void)
{
	return stat_get(STAT_tier_pages) > 0;
}

/* ---- EXCH_LIMIT: the resident cap, kept in the background ---- */

/* Resident bytes of every registered arena, from the page tables. */
static size_t tier_resident(void)
{
	size_t total = 0;

	for (unsigned i = 0; i < arena_slots(); i++) {
		struct exch_arena *a = arena_at(i);
		long n = a && a->registered ? prim_private_bytes(lib.pagemap_fd, a->base, a->size) : 0;

		total += n > 0 ? (size_t)n : 0;
	}
	return total;
}

/*
 * One pass: above the limit, evict coldest regions across arenas. The
 * limit covers what the library holds resident for the heap: the arenas'
 * pages, the compressed pool and the frame pool's frames (ready or
 * captured). The arenas get what the other two leave, a quarter of the
 * limit at least; the compressed pool keeps to its own cap by writing to
 * swap, which EXCH_LIMIT makes a quarter of the limit by default (init.c).
 */
static void tier_limit_pass(size_t limit)
{
	struct tier_evict ev = { 0 };
	size_t resident, held, budget, want;

	lock_take(&tier.lock, LOCK_TIER);
	held = tier_pool_bytes() + pool_resident_bytes();
	budget = held < limit - limit / TIER_LIMIT_ARENA_DIV ? limit - held
							      : limit / TIER_LIMIT_ARENA_DIV;
	resident = tier_resident();
	if (resident <= budget) {
		lock_drop(&tier.lock, LOCK_TIER);
		return;
	}
	stat_inc(STAT_tier_limit_passes);
	want = resident - budget + budget / TIER_LIMIT_SLACK;
	tier_evict_coldest(NULL, want, false, &ev);
	lock_drop(&tier.lock, LOCK_TIER);
}

static bool tier_limit_sleep(void)
{
	struct timespec ts;
	bool go;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += TIER_LIMIT_INTERVAL_MS * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&tier_limit.lock);
	while (!tier_limit.stop &&
	       pthread_cond_timedwait(&tier_limit.wake, &tier_limit.lock, &ts) == 0)
		;
	go = !tier_limit.stop;
	pthread_mutex_unlock(&tier_limit.lock);
	return go;
}

static void *tier_limit_main(void *arg)
{
	(void)arg;
	while (tier_limit_sleep())
		tier_limit_pass((size_t)opt_get(OPT_LIMIT));
	return NULL;
}

void tier_limit_start(void)
{
	int rc;

	if (!opt_get(OPT_LIMIT))
		return;
	if (!(lib.feat.on & EXCH_ON_ARENA_UFFD)) { /* the start said why */
		log_warn("EXCH_LIMIT: not enforced: without userfaultfd the arenas are plain "
			 "memory");
		return;
	}
	rc = tier_supported() ? 0 : -EOPNOTSUPP;
	if (rc == 0) {
		lock_take(&tier.lock, LOCK_TIER);
		rc = tier_pool();
		if (rc == 0)
			rc = tier_scratch();
		lock_drop(&tier.lock, LOCK_TIER);
	}
	pthread_mutex_lock(&tier_limit.lock);
	if (rc == 0 && !tier_limit.running) {
		tier_limit.stop = false;
		rc = prim_thread_create(&tier_limit.thread, tier_limit_main, NULL);
		tier_limit.running = rc == 0;
	}
	pthread_mutex_unlock(&tier_limit.lock);
	if (rc == 0 && opt_get(OPT_FAULT_PER_CPU) == FAULT_PER_CPU_AUTO) {
		lock_take(&lib.lock, LOCK_LIB);
		fault_per_cpu();
		lock_drop(&lib.lock, LOCK_LIB);
	}
	if (rc < 0) {
		log_warn("EXCH_LIMIT: not enforced (%s)", prim_errstr(-rc));
		stat_inc(STAT_degraded);
	} else {
		log_info("EXCH_LIMIT: the heap (arenas, compressed pool, frames) kept under %lld "
			 "bytes resident", opt_get(OPT_LIMIT));
	}
}

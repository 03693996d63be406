/*
 * zbud.c - a pool for compressed pages: at most two objects per 4K page.
 *
 * The compressed tier (issue: tier) stores each evicted page, compressed, as
 * one object. zbud keeps it simple and predictable, as the kernel's
 * mm/zbud.c does: a zbud page is one 4K page holding at most two objects,
 * the "first buddy" right after the page's header and the "last buddy" at
 * the page's end, both in 64-byte chunks. So the density is at most 2 (two
 * pages stored per page used) and never much below the compression ratio
 * of the worse of two buddies; reclaim of one zbud page frees exactly one
 * page, and it needs no search: the least recently used zbud page is the
 * one to write to swap.
 *
 *   allocation  an object of n chunks goes into an unbuddied page with at
 *               least n free chunks (first fit, up from n: lists by free
 *               chunks), as its first or last buddy, or into a new page
 *               as its first buddy. Objects of more than ZBUD_MAX_CHUNKS
 *               chunks do not fit (-ENOSPC): the tier stores such a page
 *               raw, elsewhere.
 *   handles     the object's address. The page is the handle rounded down;
 *               the first buddy starts one chunk in, the last buddy at
 *               least two chunks in (the first buddy had one at least).
 *   free        the buddy goes; a half-empty page goes to the unbuddied
 *               lists, an empty one back to the system with MADV_DONTNEED,
 *               unless it is kept warm: up to ZBUD_WARM empty pages stay
 *               resident for the next allocations, within the cap. At the
 *               cap every store follows a reclaim that empties a page, and
 *               a DONTNEED per page is a TLB shootdown of every CPU running
 *               the process, then a fault to use the page again (seen here:
 *               most of an eviction's time went to those shootdowns). Pages
 *               given back are tracked in bitmaps of their slab, never in
 *               the pages: writing a link into one would bring it back.
 *   reclaim     the LRU tail page is taken off every list and marked under
 *               reclaim, and the caller's evict callback runs for each of
 *               its buddies without the pool lock (it writes the object to
 *               swap and frees it, or brings it back to the application:
 *               "unuse"). A free of a buddy of a page under reclaim only
 *               clears the buddy; reclaim frees the page when both are gone
 *               or puts it back. A reference count keeps the page alive
 *               while reclaim or a reader (zbud_map) holds it.
 *   compaction  pages with a single buddy waste their other half. Compaction
 *               moves the buddy of the emptiest such page into the free
 *               half of the fullest other one that can take it, tells the
 *               owner the new handle through a callback, and frees the
 *               emptied page; each move frees a page, so it ends. Mapped
 *               pages and pages under reclaim are left alone.
 *
 * zbud pages come from private anonymous memory in slabs of
 * ZBUD_SLAB_PAGES pages, never from an arena and never from malloc, and the
 * pool has its own cap on pages in use. A fork child inherits the pool, as
 * it inherits the memory the objects stand for.
 *
 * The interface is struct zpool_ops (internal.h), so the tier can take a
 * denser allocator later without changing.
 *
 * Locking: zbud_pool.lock protects every list, page header and count; the
 * evict callback runs without it, the compaction callback with it (it must
 * not call the pool). Nothing else is taken under it.
 */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "internal.h"

#define ZBUD_CHUNK_SHIFT 6
#define ZBUD_CHUNK ((size_t)1 << ZBUD_CHUNK_SHIFT)
#define ZBUD_NCHUNKS (PAGE_SIZE_4K >> ZBUD_CHUNK_SHIFT)
#define ZBUD_MAX_CHUNKS (ZBUD_NCHUNKS - 1) /* the header takes one chunk */
#define ZBUD_SLAB_PAGES 512                /* pages mapped at once */
#define ZBUD_MAX_SLABS 65536
#define ZBUD_WARM 64                       /* empty pages kept resident, at most */

/* The header at the start of every zbud page (one chunk). */
struct zbud_page {
	struct zbud_page *prev, *next;         /* unbuddied[free] or buddied */
	struct zbud_page *lru_prev, *lru_next; /* every page, MRU first */
	uint16_t first_chunks;                 /* 0: no first buddy */
	uint16_t last_chunks;                  /* 0: no last buddy */
	uint16_t refs;                         /* reclaim and readers */
	uint16_t slab;                         /* its slab, in zbud_pool.slabs */
	bool under_reclaim;
	bool listed;                           /* on unbuddied/buddied */
};

_Static_assert(sizeof(struct zbud_page) <= ZBUD_CHUNK, "zbud: the header must fit a chunk");

/* A list head: a page-less sentinel. */
struct zbud_list {
	struct zbud_page head;
};

/* A slab: which of its pages are out of use and not resident ("cold").
 * Those are tracked here, not in the pages: a write would bring the page
 * back. */
struct zbud_slab {
	char *mem;
	uint64_t cold[ZBUD_SLAB_PAGES / 64];
	unsigned ncold;
};

struct zbud_pool {
	pthread_mutex_t lock;
	struct zbud_list unbuddied[ZBUD_NCHUNKS]; /* by free chunks */
	struct zbud_list buddied;
	struct zbud_list lru;
	struct zbud_page *warm_pages;  /* unused pages still resident, linked by next */
	size_t nwarm;                  /* pages on warm_pages */
	struct zbud_slab slabs[ZBUD_MAX_SLABS];
	unsigned nslabs;
	unsigned cold_from;            /* no slab below it has a cold page */
	size_t max_pages;              /* the cap */
	size_t pages;                  /* in use */
	size_t stored;                 /* bytes the objects asked for */
	size_t objects;                /* objects allocated */
};

/* ---- lists ---- */

static void zbud_list_init(struct zbud_list *l)
{
	l->head.prev = l->head.next = &l->head;
	l->head.lru_prev = l->head.lru_next = &l->head;
}

static void zbud_unlink(struct zbud_page *z)
{
	if (!z->listed)
		return;
	z->prev->next = z->next;
	z->next->prev = z->prev;
	z->listed = false;
}

static void zbud_link(struct zbud_list *l, struct zbud_page *z)
{
	z->next = l->head.next;
	z->prev = &l->head;
	l->head.next->prev = z;
	l->head.next = z;
	z->listed = true;
}

static void zbud_lru_unlink(struct zbud_page *z)
{
	z->lru_prev->lru_next = z->lru_next;
	z->lru_next->lru_prev = z->lru_prev;
}

/* Most recently used: the head. */
static void zbud_lru_touch(struct zbud_pool *p, struct zbud_page *z, bool linked)
{
	if (linked)
		zbud_lru_unlink(z);
	z->lru_next = p->lru.head.lru_next;
	z->lru_prev = &p->lru.head;
	p->lru.head.lru_next->lru_prev = z;
	p->lru.head.lru_next = z;
}

static unsigned zbud_free_chunks(const struct zbud_page *z)
{
	return ZBUD_MAX_CHUNKS - z->first_chunks - z->last_chunks;
}

/* Onto the list its free space says. Under lock. */
static void zbud_relist(struct zbud_pool *p, struct zbud_page *z)
{
	zbud_unlink(z);
	if (z->first_chunks && z->last_chunks)
		zbud_link(&p->buddied, z);
	else
		zbud_link(&p->unbuddied[zbud_free_chunks(z)], z);
}

/* ---- pages ---- */

static struct zbud_page *zbud_page_of(uint64_t handle)
{
	return (struct zbud_page *)(uintptr_t)ALIGN_DOWN(handle, PAGE_SIZE_4K);
}

static bool zbud_is_first(uint64_t handle)
{
	return (handle & (PAGE_SIZE_4K - 1)) == ZBUD_CHUNK;
}

static uint64_t zbud_first_handle(const struct zbud_page *z)
{
	return (uint64_t)(uintptr_t)z + ZBUD_CHUNK;
}

static uint64_t zbud_last_handle(const struct zbud_page *z)
{
	return (uint64_t)(uintptr_t)z + PAGE_SIZE_4K - ((size_t)z->last_chunks << ZBUD_CHUNK_SHIFT);
}

/* Maps another slab, all cold; false if the address space says no. */
static bool zbud_grow(struct zbud_pool *p)
{
	struct zbud_slab *sl = &p->slabs[p->nslabs];
	void *mem;

	if (p->nslabs == ZBUD_MAX_SLABS ||
	    prim_map(ZBUD_SLAB_PAGES * PAGE_SIZE_4K, PAGE_SIZE_4K, true, &mem) < 0)
		return false;
	prim_madvise(mem, ZBUD_SLAB_PAGES * PAGE_SIZE_4K, MADV_NOHUGEPAGE);
	sl->mem = mem;
	memset(sl->cold, 0xff, sizeof(sl->cold));
	sl->ncold = ZBUD_SLAB_PAGES;
	p->nslabs++;
	return true;
}

/* A cold page, no longer cold, or NULL. Under lock. */
static struct zbud_page *zbud_take_cold(struct zbud_pool *p)
{
	struct zbud_slab *sl;
	unsigned w = 0, b;

	while (p->cold_from < p->nslabs && !p->slabs[p->cold_from].ncold)
		p->cold_from++;
	if (p->cold_from == p->nslabs && !zbud_grow(p))
		return NULL;
	sl = &p->slabs[p->cold_from];
	while (!sl->cold[w]) /* ncold says one is set */
		w++;
	b = (unsigned)__builtin_ctzll(sl->cold[w]);
	sl->cold[w] &= sl->cold[w] - 1;
	sl->ncold--;
	return (struct zbud_page *)(sl->mem + (w * 64 + b) * PAGE_SIZE_4K);
}

/* A new, empty zbud page, or NULL at the cap. Under lock. */
static struct zbud_page *zbud_page_new(struct zbud_pool *p)
{
	struct zbud_page *z;
	uint16_t slab;

	if (p->pages >= p->max_pages)
		return NULL;
	if (p->warm_pages) {
		z = p->warm_pages;
		p->warm_pages = z->next;
		p->nwarm--;
		slab = z->slab;
	} else {
		z = zbud_take_cold(p);
		if (!z)
			return NULL;
		slab = (uint16_t)p->cold_from;
	}
	memset(z, 0, sizeof(*z));
	z->slab = slab;
	p->pages++;
	zbud_lru_touch(p, z, false);
	return z;
}

/* Takes an empty page out of use: kept warm while the pages in use and
 * the warm ones stay within the cap, else given back. Under lock. */
static void zbud_page_release(struct zbud_pool *p, struct zbud_page *z)
{
	unsigned z_slab = z->slab;
	struct zbud_slab *sl;
	size_t i;

	zbud_unlink(z);
	zbud_lru_unlink(z);
	p->pages--;
	if (p->nwarm < ZBUD_WARM && p->pages + p->nwarm < p->max_pages) {
		z->next = p->warm_pages;
		p->warm_pages = z;
		p->nwarm++;
		return;
	}
	sl = &p->slabs[z->slab];
	i = (size_t)((char *)z - sl->mem) / PAGE_SIZE_4K;
	prim_madvise(z, PAGE_SIZE_4K, MADV_DONTNEED); /* z is not to be written now */
	sl->cold[i / 64] |= 1ull << (i % 64);
	sl->ncold++;
	if (z_slab < p->cold_from)
		p->cold_from = z_slab;
}

/* ---- the pool ---- */

static void *zbud_create(size_t max_bytes)
{
	struct zbud_pool *p = prim_meta_alloc(sizeof(*p));

	if (!p)
		return NULL;
	pthread_mutex_init(&p->lock, NULL);
	for (unsigned i = 0; i < ZBUD_NCHUNKS; i++)
		zbud_list_init(&p->unbuddied[i]);
	zbud_list_init(&p->buddied);
	zbud_list_init(&p->lru);
	p->max_pages = max_bytes / PAGE_SIZE_4K;
	return p;
}

static void zbud_destroy(void *pool)
{
	struct zbud_pool *p = pool;

	for (unsigned i = 0; i < p->nslabs; i++)
		prim_unmap(p->slabs[i].mem, ZBUD_SLAB_PAGES * PAGE_SIZE_4K);
	prim_meta_free(p, sizeof(*p));
}

/* An unbuddied page with at least @chunks free, not under reclaim. */
static struct zbud_page *zbud_find(struct zbud_pool *p, unsigned chunks)
{
	for (unsigned i = chunks; i <= ZBUD_MAX_CHUNKS; i++) {
		struct zbud_page *z;

		for (z = p->unbuddied[i].head.next; z != &p->unbuddied[i].head; z = z->next)
			if (!z->under_reclaim)
				return z;
	}
	return NULL;
}

/* Puts an object of @chunks into @z; its handle. Under lock. */
static uint64_t zbud_place(struct zbud_pool *p, struct zbud_page *z, unsigned chunks)
{
	uint64_t h;

	if (!z->first_chunks) {
		z->first_chunks = (uint16_t)chunks;
		h = zbud_first_handle(z);
	} else {
		z->last_chunks = (uint16_t)chunks;
		h = zbud_last_handle(z);
	}
	zbud_relist(p, z);
	zbud_lru_touch(p, z, true);
	return h;
}

static int zbud_alloc(void *pool, size_t size, uint64_t *handle)
{
	struct zbud_pool *p = pool;
	unsigned chunks = (unsigned)((size + ZBUD_CHUNK - 1) >> ZBUD_CHUNK_SHIFT);
	struct zbud_page *z;
	int rc = 0;

	if (!size || chunks > ZBUD_MAX_CHUNKS)
		return -ENOSPC;
	lock_take(&p->lock, LOCK_ZPOOL);
	z = zbud_find(p, chunks);
	if (!z)
		z = zbud_page_new(p);
	if (z) {
		*handle = zbud_place(p, z, chunks);
		p->stored += size;
		p->objects++;
	} else {
		rc = -ENOMEM;
	}
	lock_drop(&p->lock, LOCK_ZPOOL);
	return rc;
}

/* Clears the buddy of @handle; true if its page is now empty. Under lock. */
static bool zbud_clear(struct zbud_pool *p, uint64_t handle, size_t size)
{
	struct zbud_page *z = zbud_page_of(handle);

	if (zbud_is_first(handle))
		z->first_chunks = 0;
	else
		z->last_chunks = 0;
	p->stored -= size;
	p->objects--;
	return !z->first_chunks && !z->last_chunks;
}

static void zbud_free(void *pool, uint64_t handle, size_t size)
{
	struct zbud_pool *p = pool;
	struct zbud_page *z = zbud_page_of(handle);
	bool empty;

	lock_take(&p->lock, LOCK_ZPOOL);
	empty = zbud_clear(p, handle, size);
	/* Under reclaim or mapped: the holder of the reference decides. */
	if (!z->under_reclaim && !z->refs) {
		if (empty)
			zbud_page_release(p, z);
		else
			zbud_relist(p, z);
	}
	lock_drop(&p->lock, LOCK_ZPOOL);
}

static void *zbud_map(void *pool, uint64_t handle)
{
	struct zbud_pool *p = pool;

	lock_take(&p->lock, LOCK_ZPOOL);
	zbud_page_of(handle)->refs++;
	lock_drop(&p->lock, LOCK_ZPOOL);
	return (void *)(uintptr_t)handle;
}

/* Drops a reference; the last one settles a page freed meanwhile. */
static void zbud_put(struct zbud_pool *p, struct zbud_page *z)
{
	if (--z->refs || z->under_reclaim)
		return;
	if (!z->first_chunks && !z->last_chunks)
		zbud_page_release(p, z);
	else
		zbud_relist(p, z);
}

static void zbud_unmap(void *pool, uint64_t handle)
{
	struct zbud_pool *p = pool;

	lock_take(&p->lock, LOCK_ZPOOL);
	zbud_put(p, zbud_page_of(handle));
	lock_drop(&p->lock, LOCK_ZPOOL);
}

/* The LRU tail that is not under reclaim or mapped, or NULL. Under lock. */
static struct zbud_page *zbud_lru_victim(struct zbud_pool *p)
{
	for (struct zbud_page *z = p->lru.head.lru_prev; z != &p->lru.head; z = z->lru_prev)
		if (!z->under_reclaim && !z->refs)
			return z;
	return NULL;
}

static int zbud_reclaim(void *pool, zpool_evict_fn evict, void *arg)
{
	struct zbud_pool *p = pool;
	struct zbud_page *z;
	uint64_t first = 0, last = 0;
	int rc;

	lock_take(&p->lock, LOCK_ZPOOL);
	z = zbud_lru_victim(p);
	if (!z) {
		lock_drop(&p->lock, LOCK_ZPOOL);
		return -ENOENT;
	}
	zbud_unlink(z);
	z->under_reclaim = true;
	z->refs++;
	if (z->first_chunks)
		first = zbud_first_handle(z);
	if (z->last_chunks)
		last = zbud_last_handle(z);
	lock_drop(&p->lock, LOCK_ZPOOL);

	/* The callback frees what it evicts (zbud_free sees under_reclaim). */
	if (first)
		evict(first, arg);
	if (last)
		evict(last, arg);

	lock_take(&p->lock, LOCK_ZPOOL);
	z->under_reclaim = false;
	rc = z->first_chunks || z->last_chunks ? -EAGAIN : 0;
	if (rc)
		zbud_lru_touch(p, z, true); /* kept: it was just used */
	zbud_put(p, z);
	lock_drop(&p->lock, LOCK_ZPOOL);
	return rc;
}

/* Moves the single buddy of @src into @dst's free half; the move callback
 * must accept the new handle. Under lock. */
static bool zbud_migrate(struct zbud_pool *p, struct zbud_page *src, struct zbud_page *dst,
			 zpool_moved_fn moved, void *arg)
{
	unsigned chunks = src->first_chunks ? src->first_chunks : src->last_chunks;
	uint64_t from = src->first_chunks ? zbud_first_handle(src) : zbud_last_handle(src);
	uint64_t to = zbud_place(p, dst, chunks);

	memcpy((void *)(uintptr_t)to, (void *)(uintptr_t)from, (size_t)chunks << ZBUD_CHUNK_SHIFT);
	if (moved(from, to, arg) != 0) {
		if (zbud_is_first(to))
			dst->first_chunks = 0;
		else
			dst->last_chunks = 0;
		zbud_relist(p, dst);
		return false;
	}
	src->first_chunks = src->last_chunks = 0;
	zbud_page_release(p, src);
	return true;
}

/* May @z be compacted now (one buddy, not held)? */
static bool zbud_single(const struct zbud_page *z)
{
	return !z->under_reclaim && !z->refs && !!z->first_chunks != !!z->last_chunks;
}

/* The first compactable page of unbuddied lists [lo, hi] other than
 * @not, or NULL. Under lock. */
static struct zbud_page *zbud_first_single(struct zbud_pool *p, unsigned lo, unsigned hi,
					   const struct zbud_page *not)
{
	for (unsigned i = lo; i <= hi; i++)
		for (struct zbud_page *z = p->unbuddied[i].head.next; z != &p->unbuddied[i].head;
		     z = z->next)
			if (z != not && zbud_single(z))
				return z;
	return NULL;
}

/*
 * Packs single-buddy pages: the buddy of the emptiest one moves into the
 * free half of the fullest other one that can take it, and its page is
 * freed, until no pair fits. Stops when the owner refuses a move. Returns
 * the pages freed.
 */
static long zbud_compact(void *pool, zpool_moved_fn moved, void *arg)
{
	struct zbud_pool *p = pool;
	long freed = 0;
	bool refused = false;

	lock_take(&p->lock, LOCK_ZPOOL);
	for (unsigned sfree = ZBUD_MAX_CHUNKS; sfree > 0 && !refused; sfree--) {
		unsigned need = ZBUD_MAX_CHUNKS - sfree;

		for (;;) {
			struct zbud_page *src = zbud_first_single(p, sfree, sfree, NULL), *dst;

			dst = src ? zbud_first_single(p, need, sfree, src) : NULL;
			if (!dst)
				break;
			refused = !zbud_migrate(p, src, dst, moved, arg);
			if (refused)
				break;
			freed++;
		}
	}
	lock_drop(&p->lock, LOCK_ZPOOL);
	return freed;
}

static void zbud_usage(void *pool, struct zpool_usage *u)
{
	struct zbud_pool *p = pool;

	lock_take(&p->lock, LOCK_ZPOOL);
	u->pages = p->pages;
	u->stored_bytes = p->stored;
	u->objects = p->objects;
	lock_drop(&p->lock, LOCK_ZPOOL);
}

static void zbud_fork_child(void *pool)
{
	pthread_mutex_init(&((struct zbud_pool *)pool)->lock, NULL);
}

const struct zpool_ops zbud_zpool_ops = {
	.name = "zbud",
	.max_object = ZBUD_MAX_CHUNKS * ZBUD_CHUNK,
	.create = zbud_create,
	.destroy = zbud_destroy,
	.alloc = zbud_alloc,
	.free = zbud_free,
	.map = zbud_map,
	.unmap = zbud_unmap,
	.reclaim = zbud_reclaim,
	.compact = zbud_compact,
	.usage = zbud_usage,
	.fork_child = zbud_fork_child,
};

/*
 * check_zbud.c - the zbud pool: two objects per page, reclaim, compaction.
 *
 * Every object holds a pattern of its own, checked whenever it is read, so
 * a buddy written over its neighbour, a page freed while still in use or a
 * handle the owner was not told about shows up as wrong bytes. Counts of
 * pages in use are asserted where zbud's layout fixes them.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

#define PAGE 4096u
#define CHUNK 64u
#define POOL_CAP (64 * MB)
#define OBJECTS 2000
#define HALF_PAGE_OBJ (31 * CHUNK)  /* two fit in a page */
#define BIG_OBJ (47 * CHUNK)        /* one per page */
#define SMALL_OBJ (16 * CHUNK)
#define THREADS 3
#define THREAD_ROUNDS 3000
#define THREAD_SLOTS 64

static const struct zpool_ops *ops = &zbud_zpool_ops;
static struct exch_features feat;

struct obj {
	uint64_t handle;
	size_t size;
	uint64_t seed;
	bool live;
};

static unsigned char obj_byte(uint64_t seed, size_t i)
{
	return (unsigned char)((seed * 0x9E3779B97F4A7C15ull + i * 131) >> 24);
}

static void obj_write(const struct obj *o)
{
	unsigned char *b = (unsigned char *)(uintptr_t)o->handle;

	for (size_t i = 0; i < o->size; i++)
		b[i] = obj_byte(o->seed, i);
}

static bool obj_ok(void *pool, const struct obj *o)
{
	const unsigned char *b = ops->map(pool, o->handle);
	bool ok = true;

	for (size_t i = 0; i < o->size && ok; i++)
		ok = b[i] == obj_byte(o->seed, i);
	ops->unmap(pool, o->handle);
	return ok;
}

static void obj_new(void *pool, struct obj *o, size_t size, uint64_t seed)
{
	*o = (struct obj){ .size = size, .seed = seed, .live = true };
	ck_assert_int_eq(ops->alloc(pool, size, &o->handle), 0);
	obj_write(o);
}

static size_t pages_of(void *pool)
{
	struct zpool_usage u;

	ops->usage(pool, &u);
	return u.pages;
}

START_TEST(test_zbud_round_trip)
{
	void *pool = ops->create(POOL_CAP);
	struct obj *o = calloc(OBJECTS, sizeof(*o));
	struct zpool_usage u;
	size_t stored = 0;

	ck_assert_ptr_nonnull(pool);
	srand(1);
	for (int i = 0; i < OBJECTS; i++) {
		obj_new(pool, &o[i], 1 + (size_t)rand() % ops->max_object, (uint64_t)i + 1);
		stored += o[i].size;
	}
	for (int i = 0; i < OBJECTS; i++)
		ck_assert(obj_ok(pool, &o[i]));
	ops->usage(pool, &u);
	ck_assert_uint_eq(u.stored_bytes, stored);
	for (int i = 1; i < OBJECTS; i += 2)
		ops->free(pool, o[i].handle, o[i].size);
	for (int i = 1; i < OBJECTS; i += 2)
		obj_new(pool, &o[i], 1 + (size_t)rand() % ops->max_object, (uint64_t)i + 7777);
	for (int i = 0; i < OBJECTS; i++)
		ck_assert(obj_ok(pool, &o[i]));
	for (int i = 0; i < OBJECTS; i++)
		ops->free(pool, o[i].handle, o[i].size);
	ops->usage(pool, &u);
	ck_assert_uint_eq(u.pages, 0);
	ck_assert_uint_eq(u.stored_bytes, 0);
	ops->destroy(pool);
	free(o);
}
END_TEST

/* Two objects of up to half a page (less the header) share a page. */
START_TEST(test_zbud_two_per_page)
{
	void *pool = ops->create(POOL_CAP);
	struct obj o[100];

	for (int i = 0; i < 100; i++)
		obj_new(pool, &o[i], HALF_PAGE_OBJ, (uint64_t)i + 1);
	ck_assert_uint_eq(pages_of(pool), 50);
	for (int i = 0; i < 100; i++)
		ck_assert(obj_ok(pool, &o[i]));
	ops->destroy(pool);
}
END_TEST

START_TEST(test_zbud_limits)
{
	void *pool = ops->create(16 * PAGE);
	struct obj o[16];
	uint64_t h;

	ck_assert_uint_eq(ops->max_object, PAGE - CHUNK);
	ck_assert_int_eq(ops->alloc(pool, ops->max_object + 1, &h), -ENOSPC);
	ck_assert_int_eq(ops->alloc(pool, 0, &h), -ENOSPC);
	for (int i = 0; i < 16; i++)
		obj_new(pool, &o[i], BIG_OBJ, (uint64_t)i + 1);
	ck_assert_int_eq(ops->alloc(pool, BIG_OBJ, &h), -ENOMEM); /* the cap */
	ops->free(pool, o[3].handle, o[3].size);
	obj_new(pool, &o[3], ops->max_object, 99);
	for (int i = 0; i < 16; i++)
		ck_assert(obj_ok(pool, &o[i]));
	ops->destroy(pool);
}
END_TEST

struct evictor {
	void *pool;
	struct obj *objs;
	int n;
	int evicted;
	int refuse;  /* refuse this many, then evict */
	bool checked;
};

/* Evicts by freeing (where the tier would write to swap first). */
static int evict(uint64_t handle, void *arg)
{
	struct evictor *e = arg;

	if (e->refuse > 0) {
		e->refuse--;
		return -EAGAIN;
	}
	for (int i = 0; i < e->n; i++) {
		if (e->objs[i].live && e->objs[i].handle == handle) {
			e->checked = obj_ok(e->pool, &e->objs[i]);
			ops->free(e->pool, handle, e->objs[i].size);
			e->objs[i].live = false;
			e->evicted = i;
			return 0;
		}
	}
	ck_abort_msg("evict of an unknown handle");
	return -EINVAL;
}

/* The least recently used page goes first; a refused or mapped page stays. */
START_TEST(test_zbud_reclaim_lru)
{
	void *pool = ops->create(POOL_CAP);
	struct obj o[4];
	struct evictor e = { .pool = pool, .objs = o, .n = 4 };

	for (int i = 0; i < 4; i++)
		obj_new(pool, &o[i], BIG_OBJ, (uint64_t)i + 1);
	ck_assert_int_eq(ops->reclaim(pool, evict, &e), 0);
	ck_assert_int_eq(e.evicted, 0);
	ck_assert(e.checked);
	ck_assert_uint_eq(pages_of(pool), 3);
	/* A refused page is kept, and made most recent. */
	e.refuse = 1;
	ck_assert_int_eq(ops->reclaim(pool, evict, &e), -EAGAIN);
	ck_assert(o[1].live);
	ck_assert_int_eq(ops->reclaim(pool, evict, &e), 0);
	ck_assert_int_eq(e.evicted, 2);
	/* A mapped page is not reclaimed. */
	ops->map(pool, o[3].handle);
	ck_assert_int_eq(ops->reclaim(pool, evict, &e), 0);
	ck_assert_int_eq(e.evicted, 1);
	ck_assert_int_eq(ops->reclaim(pool, evict, &e), -ENOENT);
	ops->unmap(pool, o[3].handle);
	ck_assert(obj_ok(pool, &o[3]));
	ck_assert_int_eq(ops->reclaim(pool, evict, &e), 0);
	ck_assert_uint_eq(pages_of(pool), 0);
	ops->destroy(pool);
}
END_TEST

/*
 * Emptied pages: a few stay resident for the next allocations (at the cap
 * every store follows a reclaim, and giving each page back costs a TLB
 * shootdown and a fault), the rest go back to the system.
 */
START_TEST(test_zbud_warm_pages)
{
	enum { N = 256, WARM = 64 };
	void *pool = ops->create(POOL_CAP);
	struct obj *o = calloc(N, sizeof(*o));
	uintptr_t lo = UINTPTR_MAX, hi = 0;
	char *page;

	for (int i = 0; i < N; i++) {
		obj_new(pool, &o[i], BIG_OBJ, (uint64_t)i + 1);
		lo = o[i].handle < lo ? o[i].handle : lo;
		hi = o[i].handle > hi ? o[i].handle : hi;
	}
	lo &= ~(uintptr_t)(PAGE - 1);
	hi = (hi | (PAGE - 1)) + 1;
	ck_assert_int_eq(th_private_bytes((void *)lo, hi - lo), (long)N * PAGE);
	/* One emptied page is still there, and the next object takes it. */
	page = (char *)(uintptr_t)(o[7].handle & ~(uint64_t)(PAGE - 1));
	ops->free(pool, o[7].handle, o[7].size);
	ck_assert_int_eq(th_private_bytes(page, PAGE), PAGE);
	obj_new(pool, &o[7], BIG_OBJ, 99);
	ck_assert_ptr_eq((void *)(uintptr_t)(o[7].handle & ~(uint64_t)(PAGE - 1)), page);
	for (int i = 0; i < N; i++)
		ck_assert(obj_ok(pool, &o[i]));
	/* Emptied all: no more than the warm ones stay resident. */
	for (int i = 0; i < N; i++)
		ops->free(pool, o[i].handle, o[i].size);
	ck_assert_uint_eq(pages_of(pool), 0);
	ck_assert_int_le(th_private_bytes((void *)lo, hi - lo), (long)WARM * PAGE);
	ops->destroy(pool);
	free(o);
}
END_TEST

/* A page whose buddies are freed while it is mapped goes when unmapped. */
START_TEST(test_zbud_free_while_mapped)
{
	void *pool = ops->create(POOL_CAP);
	struct obj a, b, c;

	obj_new(pool, &a, HALF_PAGE_OBJ, 1);
	obj_new(pool, &b, HALF_PAGE_OBJ, 2); /* same page */
	ops->map(pool, a.handle);
	ops->free(pool, b.handle, b.size);
	ck_assert(obj_ok(pool, &a));
	ops->free(pool, a.handle, a.size);
	ck_assert_uint_eq(pages_of(pool), 1); /* still held */
	ops->unmap(pool, a.handle);
	ck_assert_uint_eq(pages_of(pool), 0);
	obj_new(pool, &c, HALF_PAGE_OBJ, 3);
	ck_assert(obj_ok(pool, &c));
	ops->destroy(pool);
}
END_TEST

struct mover {
	struct obj *objs;
	int n;
	int moves;
	bool refuse;
};

static int moved(uint64_t from, uint64_t to, void *arg)
{
	struct mover *m = arg;

	if (m->refuse)
		return -EBUSY;
	for (int i = 0; i < m->n; i++) {
		if (m->objs[i].live && m->objs[i].handle == from) {
			m->objs[i].handle = to;
			m->moves++;
			return 0;
		}
	}
	return -ENOENT;
}

/* 200 objects two per page, then one of each pair freed: compaction packs
 * the 100 single-buddy pages into 50, and every object reads back. */
START_TEST(test_zbud_compact)
{
	void *pool = ops->create(POOL_CAP);
	struct obj o[200];
	struct mover m = { .objs = o, .n = 200 };

	for (int i = 0; i < 200; i++)
		obj_new(pool, &o[i], SMALL_OBJ + (size_t)(i % 7) * CHUNK, (uint64_t)i + 1);
	ck_assert_uint_eq(pages_of(pool), 100);
	for (int i = 0; i < 200; i += 2) {
		ops->free(pool, o[i].handle, o[i].size);
		o[i].live = false;
	}
	ck_assert_uint_eq(pages_of(pool), 100);
	m.refuse = true;
	ck_assert_int_eq(ops->compact(pool, moved, &m), 0); /* the owner said no */
	m.refuse = false;
	ck_assert_int_eq(ops->compact(pool, moved, &m), 50);
	ck_assert_int_eq(m.moves, 50);
	ck_assert_uint_eq(pages_of(pool), 50);
	for (int i = 1; i < 200; i += 2)
		ck_assert(obj_ok(pool, &o[i]));
	ck_assert_int_eq(ops->compact(pool, moved, &m), 0);
	ops->destroy(pool);
}
END_TEST

struct worker {
	void *pool;
	int id;
	int bad;
};

/* Allocates, checks and frees its own objects at random. */
static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct obj o[THREAD_SLOTS] = { 0 };
	unsigned seed = (unsigned)w->id;

	for (int r = 0; r < THREAD_ROUNDS; r++) {
		struct obj *x = &o[rand_r(&seed) % THREAD_SLOTS];

		if (x->live) {
			w->bad += !obj_ok(w->pool, x);
			ops->free(w->pool, x->handle, x->size);
			x->live = false;
		} else {
			size_t size = 1 + (size_t)rand_r(&seed) % ops->max_object;

			if (ops->alloc(w->pool, size, &x->handle) == 0) {
				x->size = size;
				x->seed = (uint64_t)w->id << 32 | (uint64_t)r;
				x->live = true;
				obj_write(x);
			}
		}
	}
	for (int i = 0; i < THREAD_SLOTS; i++)
		if (o[i].live) {
			w->bad += !obj_ok(w->pool, &o[i]);
			ops->free(w->pool, o[i].handle, o[i].size);
		}
	return NULL;
}

static int refuse_all(uint64_t handle, void *arg)
{
	(void)handle;
	(void)arg;
	usleep(10);
	return -EAGAIN;
}

/* Threads allocate and free while another keeps reclaiming (and being
 * refused): a page freed under reclaim is released once, by reclaim. */
START_TEST(test_zbud_threads)
{
	void *pool = ops->create(POOL_CAP);
	struct worker w[THREADS];
	pthread_t th[THREADS];
	bool joined[THREADS] = { false };
	int running = THREADS;

	for (int i = 0; i < THREADS; i++) {
		w[i] = (struct worker){ .pool = pool, .id = i + 1 };
		ck_assert_int_eq(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
	}
	while (running) {
		ops->reclaim(pool, refuse_all, NULL);
		for (int i = 0; i < THREADS; i++)
			if (!joined[i] && pthread_tryjoin_np(th[i], NULL) == 0) {
				joined[i] = true;
				running--;
			}
	}
	for (int i = 0; i < THREADS; i++)
		ck_assert_int_eq(w[i].bad, 0);
	ck_assert_uint_eq(pages_of(pool), 0);
	ops->destroy(pool);
}
END_TEST

/* A fork child reads its copy of the pool. */
START_TEST(test_zbud_fork)
{
	void *pool = ops->create(POOL_CAP);
	struct obj o[64];
	int status;
	pid_t pid;

	for (int i = 0; i < 64; i++)
		obj_new(pool, &o[i], SMALL_OBJ, (uint64_t)i + 1);
	pid = fork();
	if (pid == 0) {
		ops->fork_child(pool);
		for (int i = 0; i < 64; i++)
			if (!obj_ok(pool, &o[i]))
				_exit(1);
		_exit(0);
	}
	ops->free(pool, o[0].handle, o[0].size); /* the parent's change only */
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	ops->destroy(pool);
}
END_TEST

static Suite *zbud_suite(void)
{
	Suite *s = suite_create("zbud");
	TCase *tc = tcase_create("zbud");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_zbud_round_trip);
	tcase_add_test(tc, test_zbud_two_per_page);
	tcase_add_test(tc, test_zbud_limits);
	tcase_add_test(tc, test_zbud_reclaim_lru);
	tcase_add_test(tc, test_zbud_warm_pages);
	tcase_add_test(tc, test_zbud_free_while_mapped);
	tcase_add_test(tc, test_zbud_compact);
	tcase_add_test(tc, test_zbud_threads);
	tcase_add_test(tc, test_zbud_fork);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return th_main(&feat, zbud_suite);
}

/*
 * pin.c - ranges whose owner is asked before the library moves them.
 *
 * Some memory must stay on the same physical pages while something outside
 * the CPU's page tables uses it: an io_uring registered buffer, an RDMA
 * region, a buffer handed to a device. The kernel pins such pages, and a
 * UFFDIO_MOVE of a pinned page fails with EBUSY, so the coalescer would
 * only skip the region, again and again. exch_pin() lets the owner say so
 * up front and, better, take part: before a region that overlaps a pin is
 * moved, its callback gets EXCH_PIN_MOVE_BEGIN and may release the range
 * (unregister the buffer) and allow the move, or decline it; after the
 * move it gets EXCH_PIN_MOVE_END and may register the range again.
 *
 * Each arena keeps its own pins in a sorted array (struct pin_set,
 * internal.h) with its own lock: no lock is shared between arenas, and the
 * fault service never looks at pins. The coalescer copies the pins that
 * overlap a region (at most PIN_MAX_ASKED; a region under more is not
 * moved) and calls their callbacks without the lock, so a callback may
 * take as long as it needs. exch_unpin() removes the pin and then waits
 * for the coalescer to finish the region in progress (coalesce_sync), so a
 * callback never runs after exch_unpin() has returned.
 *
 * Locking: pins.lock protects the array of one arena; nothing else is
 * taken under it. The coalescer takes it under coalesce.lock.
 */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "internal.h"

#define PIN_MIN_CAP 16

/* The arena that holds all of [addr, addr+len), or NULL. */
static struct exch_arena *pin_arena(const void *addr, size_t len)
{
	struct exch_arena *a;

	if (!len)
		return NULL;
	a = arena_lookup((uintptr_t)addr);
	return a && arena_contains(a, (uintptr_t)addr, len) ? a : NULL;
}

/* Index of the first pin with start >= @start. Under lock. */
static size_t pin_index(const struct pin_set *s, uintptr_t start)
{
	size_t lo = 0, hi = s->n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (s->v[mid].start < start)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Room for one more pin; 0 or -ENOMEM. Under lock. */
static int pin_grow(struct pin_set *s)
{
	size_t cap = s->cap ? s->cap * 2 : PIN_MIN_CAP;
	struct pin *v;

	if (s->n < s->cap)
		return 0;
	v = prim_meta_alloc(cap * sizeof(*v));
	if (!v)
		return -ENOMEM;
	if (s->n)
		memcpy(v, s->v, s->n * sizeof(*v));
	prim_meta_free(s->v, s->cap * sizeof(*v));
	s->v = v;
	s->cap = cap;
	return 0;
}

/* Index of the pin of exactly [start, end), or SIZE_MAX. Under lock. */
static size_t pin_find(const struct pin_set *s, uintptr_t start, uintptr_t end)
{
	for (size_t i = pin_index(s, start); i < s->n && s->v[i].start == start; i++)
		if (s->v[i].end == end)
			return i;
	return SIZE_MAX;
}

int exch_pin(void *addr, size_t len, exch_pin_fn fn, void *arg)
{
	struct exch_arena *a = pin_arena(addr, len);
	uintptr_t start = (uintptr_t)addr;
	struct pin_set *s;
	size_t i;
	int rc;

	if (!a) {
		stat_inc(STAT_misuse);
		return -EINVAL;
	}
	s = &a->pins;
	lock_take(&s->lock, LOCK_PIN);
	rc = pin_find(s, start, start + len) != SIZE_MAX ? -EEXIST : pin_grow(s);
	if (rc == 0) {
		i = pin_index(s, start);
		memmove(&s->v[i + 1], &s->v[i], (s->n - i) * sizeof(*s->v));
		s->v[i] = (struct pin){ .start = start, .end = start + len, .fn = fn, .arg = arg };
		s->n++;
		stat_add(STAT_pins_live, 1);
	}
	lock_drop(&s->lock, LOCK_PIN);
	if (rc == -EEXIST)
		stat_inc(STAT_misuse);
	return rc;
}

int exch_unpin(void *addr, size_t len)
{
	struct exch_arena *a = pin_arena(addr, len);
	uintptr_t start = (uintptr_t)addr;
	struct pin_set *s;
	size_t i;

	if (!a)
		return -ENOENT;
	if (coalesce_is_mine())
		return -EDEADLK;
	s = &a->pins;
	lock_take(&s->lock, LOCK_PIN);
	i = pin_find(s, start, start + len);
	if (i != SIZE_MAX) {
		memmove(&s->v[i], &s->v[i + 1], (s->n - i - 1) * sizeof(*s->v));
		s->n--;
		stat_sub(STAT_pins_live, 1);
	}
	lock_drop(&s->lock, LOCK_PIN);
	if (i == SIZE_MAX)
		return -ENOENT;
	/* A region being moved may have copied the pin before it went. */
	coalesce_sync();
	return 0;
}

/* Copies the pins over [start, end) into @ask; false if there are too many. */
static bool pin_collect(struct pin_set *s, uintptr_t start, uintptr_t end, struct pin_ask *ask)
{
	bool fits = true;

	ask->n = 0;
	lock_take(&s->lock, LOCK_PIN);
	/* Sorted by start: every overlapping pin starts before @end. */
	for (size_t i = 0; i < s->n && s->v[i].start < end; i++) {
		if (s->v[i].end <= start)
			continue;
		if (ask->n == PIN_MAX_ASKED) {
			fits = false;
			break;
		}
		ask->v[ask->n++] = s->v[i];
	}
	lock_drop(&s->lock, LOCK_PIN);
	return fits;
}

static int pin_call(const struct pin *p, enum exch_pin_event ev)
{
	return p->fn((void *)p->start, (size_t)(p->end - p->start), ev, p->arg);
}

int pin_ask(struct exch_arena *a, uintptr_t start, size_t len, struct pin_ask *ask)
{
	if (!pin_collect(&a->pins, start, start + len, ask)) {
		ask->n = 0;
		return -EPERM;
	}
	for (unsigned i = 0; i < ask->n; i++) {
		if (ask->v[i].fn && pin_call(&ask->v[i], EXCH_PIN_MOVE_BEGIN) == 0)
			continue;
		ask->n = i; /* END goes only to those that allowed */
		pin_done(ask);
		return -EPERM;
	}
	return 0;
}

void pin_done(struct pin_ask *ask)
{
	for (unsigned i = 0; i < ask->n; i++)
		pin_call(&ask->v[i], EXCH_PIN_MOVE_END);
	ask->n = 0;
}

void pin_arena_free(struct exch_arena *a)
{
	struct pin_set *s = &a->pins;

	stat_sub(STAT_pins_live, s->n);
	prim_meta_free(s->v, s->cap * sizeof(*s->v));
	memset(s, 0, sizeof(*s));
}

void pin_fork_child(struct exch_arena *a)
{
	pthread_mutex_init(&a->pins.lock, NULL);
}

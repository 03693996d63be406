/*
 * lock.c - the lock order, checked in debug builds.
 *
 * internal.h states the order in which the library's locks nest. Every
 * lock is taken with lock_take(), which names the lock's level; in a debug
 * build (--enable-debug, and the sanitizer build) each thread counts the
 * locks it holds per level and asserts that it never takes a lock while it
 * holds one of a later level. Locks of one level may nest (fork takes every
 * arena's alloc_lock). A violation aborts at the point where the order was
 * broken, which a deadlock would only show once two threads collide.
 *
 * In a normal build lock_take() and lock_drop() are plain pthread calls.
 */
#include "config.h"

#include "internal.h"

#ifdef EXCH_DEBUG

static __thread unsigned lock_held[LOCK__COUNT];

void lock_order_take(enum lock_level level)
{
	for (int l = (int)level + 1; l < LOCK__COUNT; l++)
		EXCH_ASSERT(lock_held[l] == 0 && "lock order: an inner lock is held");
	lock_held[level]++;
}

void lock_order_drop(enum lock_level level)
{
	EXCH_ASSERT(lock_held[level] > 0 && "lock order: dropping a lock not held");
	lock_held[level]--;
}

void lock_order_reset(void)
{
	for (int l = 0; l < LOCK__COUNT; l++)
		lock_held[l] = 0;
}

#endif

/*
 * demo_tier.h - part 3 of the demo (demo_tier.c).
 */
#ifndef EXCH_DEMO_TIER_H
#define EXCH_DEMO_TIER_H

#include <stddef.h>

/* Runs part 3 on a heap of @bytes; 0, or -errno (-EIO: a page came back wrong). */
int demo_tier(size_t bytes);

#endif

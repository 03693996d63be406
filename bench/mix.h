/*
 * mix.h - a realistic mix of 4K pages, for the tier's tests, bench and demo.
 *
 * Heaps hold more than one kind of page. The mix cycles through six kinds,
 * one page each: zeros, one 64-bit word repeated, random bytes (what a
 * cipher or a compressed file leaves: incompressible), English-like text,
 * pointers (list nodes of two pointers, a key and a value), and numbers (a
 * sparse table of counters). Page i of a mix is a pure function of (i,
 * seed), so any page can be checked on its own.
 */
#ifndef EXCH_MIX_H
#define EXCH_MIX_H

#include <stddef.h>
#include <stdint.h>

#define MIX_PAGE 4096u

enum mix_kind { MIX_ZERO, MIX_WORD, MIX_RANDOM, MIX_TEXT, MIX_POINTERS, MIX_NUMBERS, MIX__COUNT };

static inline enum mix_kind mix_kind_of(size_t idx)
{
	return (enum mix_kind)(idx % MIX__COUNT);
}

/* xorshift64: the generator of the mix (state never 0). */
uint64_t mix_rand(uint64_t *state);
/* The contents of page @idx for @seed, into @page. */
void mix_page(unsigned char *page, size_t idx, uint64_t seed);
/* Pages [first, first+n) of @base, as the mix has them. */
void mix_fill_from(char *base, size_t first, size_t n, uint64_t seed);
void mix_fill(char *p, size_t pages, uint64_t seed);
/* Index of the first of pages [first, first+n) of @base that differs, or -1. */
long mix_check(const char *base, size_t first, size_t n, uint64_t seed);
long mix_verify(const char *p, size_t pages, uint64_t seed);
/* Pages that differ among [0, pages). */
size_t mix_mismatches(const char *p, size_t pages, uint64_t seed);
/* Pages of kinds [lo, hi] among the first @pages. */
uint64_t mix_count(size_t pages, enum mix_kind lo, enum mix_kind hi);

#endif

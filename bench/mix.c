/*
 * mix.c - the page mix of mix.h.
 */
#include "mix.h"

#include <string.h>

uint64_t mix_rand(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void mix_text(unsigned char *p, uint64_t *s)
{
	static const char *const words[] = { "page ", "region ", "frame ", "the ", "tier ",
					     "zbud ", "swap ", "cold ", "hot ", "evict " };
	size_t n = 0;

	while (n < MIX_PAGE) {
		const char *word = words[mix_rand(s) % 10];

		for (size_t k = 0; word[k] && n < MIX_PAGE; k++)
			p[n++] = (unsigned char)word[k];
	}
}

void mix_page(unsigned char *p, size_t idx, uint64_t seed)
{
	uint64_t s = seed * 0x9e3779b97f4a7c15ull + idx + 1, *w = (uint64_t *)p;

	switch (mix_kind_of(idx)) {
	case MIX_ZERO:
		memset(p, 0, MIX_PAGE);
		break;
	case MIX_WORD:
		for (size_t i = 0; i < MIX_PAGE / 8; i++)
			w[i] = 0x0123456789abcdefull ^ seed;
		break;
	case MIX_RANDOM:
		for (size_t i = 0; i < MIX_PAGE / 8; i++)
			w[i] = mix_rand(&s);
		break;
	case MIX_TEXT:
		mix_text(p, &s);
		break;
	case MIX_POINTERS: /* list nodes: next, prev, key and flags, value */
		for (size_t i = 0; i < MIX_PAGE / 8; i += 4) {
			uint64_t key = mix_rand(&s) % 1000;

			w[i] = 0x7f3a12000000ull + (idx * 128 + i / 4 + 1) * 32;
			w[i + 1] = w[i] - 64;
			w[i + 2] = key | 1ull << 32;
			w[i + 3] = key * 3 + 7;
		}
		break;
	default: /* a sparse table of counters */
		for (size_t i = 0; i < MIX_PAGE / 8; i++)
			w[i] = i % 8 ? 0 : mix_rand(&s) % 100000;
		break;
	}
}

void mix_fill_from(char *base, size_t first, size_t n, uint64_t seed)
{
	for (size_t i = first; i < first + n; i++)
		mix_page((unsigned char *)base + i * MIX_PAGE, i, seed);
}

void mix_fill(char *p, size_t pages, uint64_t seed)
{
	mix_fill_from(p, 0, pages, seed);
}

long mix_check(const char *base, size_t first, size_t n, uint64_t seed)
{
	unsigned char want[MIX_PAGE];

	for (size_t i = first; i < first + n; i++) {
		mix_page(want, i, seed);
		if (memcmp(base + i * MIX_PAGE, want, MIX_PAGE))
			return (long)i;
	}
	return -1;
}

long mix_verify(const char *p, size_t pages, uint64_t seed)
{
	return mix_check(p, 0, pages, seed);
}

size_t mix_mismatches(const char *p, size_t pages, uint64_t seed)
{
	unsigned char want[MIX_PAGE];
	size_t bad = 0;

	for (size_t i = 0; i < pages; i++) {
		mix_page(want, i, seed);
		bad += memcmp(p + i * MIX_PAGE, want, MIX_PAGE) != 0;
	}
	return bad;
}

uint64_t mix_count(size_t pages, enum mix_kind lo, enum mix_kind hi)
{
	uint64_t n = 0;

	for (size_t i = 0; i < pages; i++)
		n += mix_kind_of(i) >= lo && mix_kind_of(i) <= hi;
	return n;
}

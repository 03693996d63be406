/*
 * xcopy_scalar.c - exchange-engine kernels in plain C on 64-bit words.
 *
 * The variant every x86-64 CPU runs, and the reference the SIMD variants
 * are tested against, so it favours plain code over speed: 8-byte words,
 * then the last bytes one by one. Unaligned words are read and written
 * through memcpy, which compiles to single moves.
 *
 * The only instruction beyond plain C is MOVNTI (_mm_stream_si64), the
 * non-temporal store of a general-purpose register. It belongs to SSE2,
 * which every x86-64 CPU has, so copy_nt and zero_nt are really
 * non-temporal here too: bytes up to a word boundary of the destination,
 * streamed aligned words, the last bytes, and SFENCE like every _nt kernel.
 *
 * CRC-32C is slice-by-8: eight 256-entry tables, built once on first use
 * (pthread_once), fold one 8-byte word per step. It is exported as
 * xcopy_crc32c_sw() for the variants whose level lacks the CRC32
 * instruction (SSE2). Words are loaded little-endian, as x86 stores them.
 */
#include "config.h"

#include <emmintrin.h>
#include <string.h>

#include "internal.h"

#define SCALAR_WORD sizeof(uint64_t)
#define SCALAR_BLOCK (4 * SCALAR_WORD) /* bytes OR-ed per zero-test step */
#define SCALAR_NT_MIN ((size_t)256)    /* shorter copies stay temporal */

#define SCALAR_CRC_POLY 0x82F63B78u /* CRC-32C (Castagnoli), bit-reflected */
#define SCALAR_CRC_SLICES 8
#define SCALAR_CRC_BYTE_VALUES 256
#define SCALAR_BYTE_BITS 8
#define SCALAR_BYTE_MASK 0xFFu

static inline uint64_t scalar_load(const unsigned char *p)
{
	uint64_t w;

	memcpy(&w, p, sizeof(w));
	return w;
}

static inline void scalar_store(unsigned char *p, uint64_t w)
{
	memcpy(p, &w, sizeof(w));
}

/* Bytes until @p is word-aligned, at most @len. */
static inline size_t scalar_head(const void *p, size_t len)
{
	size_t head = -(uintptr_t)p & (SCALAR_WORD - 1);

	return head < len ? head : len;
}

static void scalar_copy_t(void *dst, const void *src, size_t len)
{
	unsigned char *d = dst;
	const unsigned char *s = src;

	for (; len >= SCALAR_WORD; len -= SCALAR_WORD) {
		scalar_store(d, scalar_load(s));
		d += SCALAR_WORD;
		s += SCALAR_WORD;
	}
	while (len--)
		*d++ = *s++;
}

static void scalar_copy_nt(void *dst, const void *src, size_t len)
{
	unsigned char *d = dst;
	const unsigned char *s = src;
	size_t head;

	if (len < SCALAR_NT_MIN) {
		scalar_copy_t(d, s, len);
		_mm_sfence();
		return;
	}
	head = scalar_head(d, len);
	scalar_copy_t(d, s, head);
	d += head;
	s += head;
	len -= head;
	for (; len >= SCALAR_WORD; len -= SCALAR_WORD) {
		_mm_stream_si64((long long *)d, (long long)scalar_load(s));
		d += SCALAR_WORD;
		s += SCALAR_WORD;
	}
	scalar_copy_t(d, s, len);
	_mm_sfence();
}

static void scalar_exchange(void *pa, void *pb, size_t len)
{
	unsigned char *a = pa, *b = pb;

	for (; len >= SCALAR_WORD; len -= SCALAR_WORD) {
		uint64_t x = scalar_load(a), y = scalar_load(b);

		scalar_store(a, y);
		scalar_store(b, x);
		a += SCALAR_WORD;
		b += SCALAR_WORD;
	}
	for (; len; len--) {
		unsigned char x = *a;

		*a++ = *b;
		*b++ = x;
	}
}

static void scalar_zero_t(void *dst, size_t len)
{
	unsigned char *d = dst;
	uint64_t z = 0;

	/* Hide that z is zero: the compiler would turn the loop into memset. */
	__asm__("" : "+r"(z));
	for (; len >= SCALAR_WORD; len -= SCALAR_WORD) {
		scalar_store(d, z);
		d += SCALAR_WORD;
	}
	for (; len; len--)
		*d++ = (unsigned char)z;
}

static void scalar_zero_nt(void *dst, size_t len)
{
	unsigned char *d = dst;
	size_t head;

	if (len < SCALAR_NT_MIN) {
		scalar_zero_t(d, len);
		_mm_sfence();
		return;
	}
	head = scalar_head(d, len);
	scalar_zero_t(d, head);
	d += head;
	len -= head;
	for (; len >= SCALAR_WORD; len -= SCALAR_WORD) {
		_mm_stream_si64((long long *)d, 0);
		d += SCALAR_WORD;
	}
	scalar_zero_t(d, len);
	_mm_sfence();
}

static bool scalar_is_zero(const void *p, size_t len)
{
	const unsigned char *s = p;
	uint64_t acc;

	for (; len >= SCALAR_BLOCK; len -= SCALAR_BLOCK) {
		acc = scalar_load(s) | scalar_load(s + SCALAR_WORD) |
		      scalar_load(s + 2 * SCALAR_WORD) |
		      scalar_load(s + 3 * SCALAR_WORD);
		if (acc != 0)
			return false;
		s += SCALAR_BLOCK;
	}
	for (acc = 0; len >= SCALAR_WORD; len -= SCALAR_WORD) {
		acc |= scalar_load(s);
		s += SCALAR_WORD;
	}
	while (len--)
		acc |= *s++;
	return acc == 0;
}

/* scalar_crc_table[k][v]: CRC register after byte v and then k zero bytes. */
static uint32_t scalar_crc_table[SCALAR_CRC_SLICES][SCALAR_CRC_BYTE_VALUES];
static pthread_once_t scalar_crc_once = PTHREAD_ONCE_INIT;

static void scalar_crc_init(void)
{
	for (uint32_t v = 0; v < SCALAR_CRC_BYTE_VALUES; v++) {
		uint32_t c = v;

		for (int bit = 0; bit < SCALAR_BYTE_BITS; bit++)
			c = (c >> 1) ^ (SCALAR_CRC_POLY & -(c & 1));
		scalar_crc_table[0][v] = c;
	}
	for (int k = 1; k < SCALAR_CRC_SLICES; k++)
		for (uint32_t v = 0; v < SCALAR_CRC_BYTE_VALUES; v++) {
			uint32_t c = scalar_crc_table[k - 1][v];

			scalar_crc_table[k][v] =
				(c >> SCALAR_BYTE_BITS) ^
				scalar_crc_table[0][c & SCALAR_BYTE_MASK];
		}
}

/* Table lookup for byte @i (0 = lowest) of an 8-byte step. */
#define SCALAR_CRC_SLICE(w, i)                                                 \
	scalar_crc_table[SCALAR_CRC_SLICES - 1 - (i)]                          \
			[((w) >> ((i) * SCALAR_BYTE_BITS)) & SCALAR_BYTE_MASK]

uint32_t xcopy_crc32c_sw(uint32_t crc, const void *p, size_t len)
{
	const unsigned char *s = p;
	uint32_t c = ~crc;

	pthread_once(&scalar_crc_once, scalar_crc_init);
	for (; len >= SCALAR_WORD; len -= SCALAR_WORD) {
		uint64_t w = scalar_load(s) ^ c;

		c = SCALAR_CRC_SLICE(w, 0) ^ SCALAR_CRC_SLICE(w, 1) ^
		    SCALAR_CRC_SLICE(w, 2) ^ SCALAR_CRC_SLICE(w, 3) ^
		    SCALAR_CRC_SLICE(w, 4) ^ SCALAR_CRC_SLICE(w, 5) ^
		    SCALAR_CRC_SLICE(w, 6) ^ SCALAR_CRC_SLICE(w, 7);
		s += SCALAR_WORD;
	}
	while (len--)
		c = scalar_crc_table[0][(c ^ *s++) & SCALAR_BYTE_MASK] ^
		    (c >> SCALAR_BYTE_BITS);
	return ~c;
}

const struct xcopy_ops xcopy_scalar_ops = {
	.name = "scalar",
	.level = EXCH_SIMD_SCALAR,
	.copy_t = scalar_copy_t,
	.copy_nt = scalar_copy_nt,
	.exchange = scalar_exchange,
	.zero_t = scalar_zero_t,
	.zero_nt = scalar_zero_nt,
	.is_zero = scalar_is_zero,
	.crc32c = xcopy_crc32c_sw,
};

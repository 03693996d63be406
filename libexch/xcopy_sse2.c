/*
 * xcopy_sse2.c - exchange-engine kernels on 16-byte SSE2 vectors.
 *
 * Compiled with -msse2, the x86-64 baseline, so this variant runs on every
 * CPU the library supports. Shapes shared by every kernel here:
 *   - Below one vector, words and bytes (the xxx_small helpers).
 *   - copy and zero store the first vector unaligned, then step to the next
 *     16-byte boundary of the destination, run a four-vector loop of aligned
 *     stores, and finish with one unaligned vector ending exactly at the
 *     last byte. Stores that overlap write the same value twice, which is
 *     harmless because source and destination never overlap.
 *   - The _nt forms do the same with MOVNTDQ for the aligned body; head and
 *     tail stay temporal because a partial line cannot be streamed. They end
 *     with SFENCE so the streamed data is ordered before later stores.
 *   - exchange may never touch a byte twice (a second swap would undo the
 *     first), so its head up to alignment of @a and its tail are swapped
 *     exactly with words and bytes; every step loads both sides before it
 *     stores either.
 * SSE2 has no CRC32 instruction: crc32c is the slice-by-8 xcopy_crc32c_sw().
 */
#include "config.h"

#include <emmintrin.h>
#include <string.h>

#include "internal.h"

#define SSE2_VEC ((size_t)sizeof(__m128i))
#define SSE2_UNROLL 4
#define SSE2_BLOCK (SSE2_UNROLL * SSE2_VEC)
#define SSE2_NT_MIN ((size_t)256)      /* shorter copies stay temporal */
#define SSE2_ALL_BYTES_EQUAL 0xFFFF    /* movemask of 16 equal bytes */

static inline __m128i sse2_load(const unsigned char *p)
{
	return _mm_loadu_si128((const __m128i *)p);
}

static inline void sse2_store(unsigned char *p, __m128i v)
{
	_mm_storeu_si128((__m128i *)p, v);
}

static inline bool sse2_vec_zero(__m128i v)
{
	return _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_setzero_si128())) ==
	       SSE2_ALL_BYTES_EQUAL;
}

/* Bytes from @p to the next vector boundary (0 if aligned). */
static inline size_t sse2_to_boundary(const void *p)
{
	return -(uintptr_t)p & (SSE2_VEC - 1);
}

/*
 * Fewer than SSE2_VEC bytes: two moves of one width that overlap in the
 * middle (8 or 4 bytes), or for 1 to 3 bytes the first, middle and last.
 */
static void sse2_copy_small(unsigned char *d, const unsigned char *s,
			    size_t len)
{
	if (len >= sizeof(uint64_t)) {
		uint64_t x, y;

		memcpy(&x, s, sizeof(x));
		memcpy(&y, s + len - sizeof(y), sizeof(y));
		memcpy(d, &x, sizeof(x));
		memcpy(d + len - sizeof(y), &y, sizeof(y));
	} else if (len >= sizeof(uint32_t)) {
		uint32_t x, y;

		memcpy(&x, s, sizeof(x));
		memcpy(&y, s + len - sizeof(y), sizeof(y));
		memcpy(d, &x, sizeof(x));
		memcpy(d + len - sizeof(y), &y, sizeof(y));
	} else if (len) {
		d[0] = s[0];
		d[len / 2] = s[len / 2];
		d[len - 1] = s[len - 1];
	}
}

static void sse2_zero_small(unsigned char *d, size_t len)
{
	const uint64_t z8 = 0;
	const uint32_t z4 = 0;

	if (len >= sizeof(z8)) {
		memcpy(d, &z8, sizeof(z8));
		memcpy(d + len - sizeof(z8), &z8, sizeof(z8));
	} else if (len >= sizeof(z4)) {
		memcpy(d, &z4, sizeof(z4));
		memcpy(d + len - sizeof(z4), &z4, sizeof(z4));
	} else if (len) {
		d[0] = 0;
		d[len / 2] = 0;
		d[len - 1] = 0;
	}
}

/* Swap exactly @len < SSE2_VEC bytes: one step per set bit of @len. */
static void sse2_swap_small(unsigned char *a, unsigned char *b, size_t len)
{
	if (len & sizeof(uint64_t)) {
		uint64_t x, y;

		memcpy(&x, a, sizeof(x));
		memcpy(&y, b, sizeof(y));
		memcpy(a, &y, sizeof(y));
		memcpy(b, &x, sizeof(x));
		a += sizeof(x);
		b += sizeof(x);
	}
	if (len & sizeof(uint32_t)) {
		uint32_t x, y;

		memcpy(&x, a, sizeof(x));
		memcpy(&y, b, sizeof(y));
		memcpy(a, &y, sizeof(y));
		memcpy(b, &x, sizeof(x));
		a += sizeof(x);
		b += sizeof(x);
	}
	for (size_t i = 0; i < (len & (sizeof(uint32_t) - 1)); i++) {
		unsigned char x = a[i];

		a[i] = b[i];
		b[i] = x;
	}
}

/* Copy or stream whole vectors to 16-byte-aligned @d; returns bytes done. */
static size_t sse2_copy_body(unsigned char *d, const unsigned char *s,
			     size_t len, bool nt)
{
	size_t done = 0;

	for (; len - done >= SSE2_BLOCK; done += SSE2_BLOCK) {
		__m128i v0 = sse2_load(s + done);
		__m128i v1 = sse2_load(s + done + SSE2_VEC);
		__m128i v2 = sse2_load(s + done + 2 * SSE2_VEC);
		__m128i v3 = sse2_load(s + done + 3 * SSE2_VEC);
		__m128i *o = (__m128i *)(d + done);

		if (nt) {
			_mm_stream_si128(o, v0);
			_mm_stream_si128(o + 1, v1);
			_mm_stream_si128(o + 2, v2);
			_mm_stream_si128(o + 3, v3);
		} else {
			_mm_store_si128(o, v0);
			_mm_store_si128(o + 1, v1);
			_mm_store_si128(o + 2, v2);
			_mm_store_si128(o + 3, v3);
		}
	}
	for (; len - done >= SSE2_VEC; done += SSE2_VEC) {
		__m128i *o = (__m128i *)(d + done);

		if (nt)
			_mm_stream_si128(o, sse2_load(s + done));
		else
			_mm_store_si128(o, sse2_load(s + done));
	}
	return done;
}

/* Head vector, aligned body, tail vector; @len >= SSE2_VEC. */
static void sse2_copy(unsigned char *d, const unsigned char *s, size_t len,
		      bool nt)
{
	size_t head = sse2_to_boundary(d), done;

	sse2_store(d, sse2_load(s));
	done = head + sse2_copy_body(d + head, s + head, len - head, nt);
	if (done < len)
		sse2_store(d + len - SSE2_VEC, sse2_load(s + len - SSE2_VEC));
}

static void sse2_copy_t(void *dst, const void *src, size_t len)
{
	if (len < SSE2_VEC)
		sse2_copy_small(dst, src, len);
	else
		sse2_copy(dst, src, len, false);
}

static void sse2_copy_nt(void *dst, const void *src, size_t len)
{
	if (len < SSE2_NT_MIN)
		sse2_copy_t(dst, src, len);
	else
		sse2_copy(dst, src, len, true);
	_mm_sfence();
}

static void sse2_exchange(void *pa, void *pb, size_t len)
{
	unsigned char *a = pa, *b = pb;
	size_t head = sse2_to_boundary(a);

	if (head > len)
		head = len;
	sse2_swap_small(a, b, head);
	a += head;
	b += head;
	len -= head;
	for (; len >= SSE2_BLOCK; len -= SSE2_BLOCK) {
		__m128i *va = (__m128i *)a;
		__m128i x0 = _mm_load_si128(va), y0 = sse2_load(b);
		__m128i x1 = _mm_load_si128(va + 1);
		__m128i y1 = sse2_load(b + SSE2_VEC);
		__m128i x2 = _mm_load_si128(va + 2);
		__m128i y2 = sse2_load(b + 2 * SSE2_VEC);
		__m128i x3 = _mm_load_si128(va + 3);
		__m128i y3 = sse2_load(b + 3 * SSE2_VEC);

		_mm_store_si128(va, y0);
		_mm_store_si128(va + 1, y1);
		_mm_store_si128(va + 2, y2);
		_mm_store_si128(va + 3, y3);
		sse2_store(b, x0);
		sse2_store(b + SSE2_VEC, x1);
		sse2_store(b + 2 * SSE2_VEC, x2);
		sse2_store(b + 3 * SSE2_VEC, x3);
		a += SSE2_BLOCK;
		b += SSE2_BLOCK;
	}
	for (; len >= SSE2_VEC; len -= SSE2_VEC) {
		__m128i x = _mm_load_si128((__m128i *)a), y = sse2_load(b);

		_mm_store_si128((__m128i *)a, y);
		sse2_store(b, x);
		a += SSE2_VEC;
		b += SSE2_VEC;
	}
	sse2_swap_small(a, b, len);
}

/* Zero or stream zeros over whole vectors of 16-byte-aligned @d. */
static size_t sse2_zero_body(unsigned char *d, size_t len, bool nt)
{
	const __m128i z = _mm_setzero_si128();
	size_t done = 0;

	for (; len - done >= SSE2_VEC; done += SSE2_VEC) {
		if (nt)
			_mm_stream_si128((__m128i *)(d + done), z);
		else
			_mm_store_si128((__m128i *)(d + done), z);
	}
	return done;
}

/* Head vector, aligned body, tail vector; @len >= SSE2_VEC. */
static void sse2_zero(unsigned char *d, size_t len, bool nt)
{
	size_t head = sse2_to_boundary(d), done;

	sse2_store(d, _mm_setzero_si128());
	done = head + sse2_zero_body(d + head, len - head, nt);
	if (done < len)
		sse2_store(d + len - SSE2_VEC, _mm_setzero_si128());
}

static void sse2_zero_t(void *dst, size_t len)
{
	if (len < SSE2_VEC)
		sse2_zero_small(dst, len);
	else
		sse2_zero(dst, len, false);
}

static void sse2_zero_nt(void *dst, size_t len)
{
	if (len < SSE2_NT_MIN)
		sse2_zero_t(dst, len);
	else
		sse2_zero(dst, len, true);
	_mm_sfence();
}

static bool sse2_is_zero_small(const unsigned char *s, size_t len)
{
	if (len >= sizeof(uint64_t)) {
		uint64_t x, y;

		memcpy(&x, s, sizeof(x));
		memcpy(&y, s + len - sizeof(y), sizeof(y));
		return (x | y) == 0;
	}
	if (len >= sizeof(uint32_t)) {
		uint32_t x, y;

		memcpy(&x, s, sizeof(x));
		memcpy(&y, s + len - sizeof(y), sizeof(y));
		return (x | y) == 0;
	}
	return len == 0 || (s[0] | s[len / 2] | s[len - 1]) == 0;
}

static bool sse2_is_zero(const void *p, size_t len)
{
	const unsigned char *s = p, *last;

	if (len < SSE2_VEC)
		return sse2_is_zero_small(s, len);
	last = s + len - SSE2_VEC;
	for (; len >= SSE2_BLOCK; len -= SSE2_BLOCK) {
		__m128i acc = _mm_or_si128(
			_mm_or_si128(sse2_load(s), sse2_load(s + SSE2_VEC)),
			_mm_or_si128(sse2_load(s + 2 * SSE2_VEC),
				     sse2_load(s + 3 * SSE2_VEC)));

		if (!sse2_vec_zero(acc))
			return false;
		s += SSE2_BLOCK;
	}
	for (; len >= SSE2_VEC; len -= SSE2_VEC) {
		if (!sse2_vec_zero(sse2_load(s)))
			return false;
		s += SSE2_VEC;
	}
	return sse2_vec_zero(sse2_load(last));
}

const struct xcopy_ops xcopy_sse2_ops = {
	.name = "sse2",
	.level = EXCH_SIMD_SSE2,
	.copy_t = sse2_copy_t,
	.copy_nt = sse2_copy_nt,
	.exchange = sse2_exchange,
	.zero_t = sse2_zero_t,
	.zero_nt = sse2_zero_nt,
	.is_zero = sse2_is_zero,
	.crc32c = xcopy_crc32c_sw,
};

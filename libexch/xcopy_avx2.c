/*
 * xcopy_avx2.c - exchange-engine kernels on 32-byte AVX2 vectors.
 *
 * Compiled with -mavx2; xcopy.c runs it only when CPUID reports AVX2 and
 * SSE4.2 and XGETBV shows the OS saves the YMM state. The kernels have the
 * same shape as xcopy_sse2.c, twice as wide:
 *   - Below one vector, 16-byte vectors, words and bytes (xxx_small).
 *   - copy and zero store the first vector unaligned, step to the next
 *     32-byte boundary of the destination, run a four-vector loop of aligned
 *     stores, and end with one unaligned vector that finishes exactly at the
 *     last byte (overlapping stores write the same value twice).
 *   - The _nt forms stream the aligned body with VMOVNTDQ; head and tail
 *     stay temporal, and SFENCE orders the streamed data at the end.
 *   - exchange never touches a byte twice: the head up to alignment of @a
 *     and the tail are swapped exactly by avx2_swap_small.
 * crc32c is xcopy_crc32c_hw() (xcopy_crc.c), the three-stream CRC32
 * instruction, which is why this level also requires SSE4.2.
 */
#include "config.h"

#include <immintrin.h>
#include <string.h>

#include "internal.h"

#define AVX2_VEC ((size_t)sizeof(__m256i))
#define AVX2_HALF ((size_t)sizeof(__m128i))
#define AVX2_UNROLL 4
#define AVX2_BLOCK (AVX2_UNROLL * AVX2_VEC)
#define AVX2_NT_MIN ((size_t)256) /* shorter copies stay temporal */

static inline __m256i avx2_load(const unsigned char *p)
{
	return _mm256_loadu_si256((const __m256i *)p);
}

static inline void avx2_store(unsigned char *p, __m256i v)
{
	_mm256_storeu_si256((__m256i *)p, v);
}

static inline __m128i avx2_load_half(const unsigned char *p)
{
	return _mm_loadu_si128((const __m128i *)p);
}

static inline void avx2_store_half(unsigned char *p, __m128i v)
{
	_mm_storeu_si128((__m128i *)p, v);
}

static inline uint64_t avx2_load64(const unsigned char *p)
{
	uint64_t w;

	memcpy(&w, p, sizeof(w));
	return w;
}

/* Bytes from @p to the next vector boundary (0 if aligned). */
static inline size_t avx2_to_boundary(const void *p)
{
	return -(uintptr_t)p & (AVX2_VEC - 1);
}

/*
 * Fewer than AVX2_VEC bytes: two moves of one width that overlap in the
 * middle (16, 8 or 4 bytes), or for 1 to 3 bytes the first, middle and last.
 */
static void avx2_copy_small(unsigned char *d, const unsigned char *s,
			    size_t len)
{
	if (len >= AVX2_HALF) {
		__m128i x = avx2_load_half(s);
		__m128i y = avx2_load_half(s + len - AVX2_HALF);

		avx2_store_half(d, x);
		avx2_store_half(d + len - AVX2_HALF, y);
	} else if (len >= sizeof(uint64_t)) {
		uint64_t x = avx2_load64(s);
		uint64_t y = avx2_load64(s + len - sizeof(y));

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

static void avx2_zero_small(unsigned char *d, size_t len)
{
	const uint64_t z8 = 0;
	const uint32_t z4 = 0;

	if (len >= AVX2_HALF) {
		avx2_store_half(d, _mm_setzero_si128());
		avx2_store_half(d + len - AVX2_HALF, _mm_setzero_si128());
	} else if (len >= sizeof(z8)) {
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

/* Swap exactly @len < AVX2_VEC bytes: one step per set bit of @len. */
static void avx2_swap_small(unsigned char *a, unsigned char *b, size_t len)
{
	if (len & AVX2_HALF) {
		__m128i x = avx2_load_half(a), y = avx2_load_half(b);

		avx2_store_half(a, y);
		avx2_store_half(b, x);
		a += AVX2_HALF;
		b += AVX2_HALF;
	}
	if (len & sizeof(uint64_t)) {
		uint64_t x = avx2_load64(a), y = avx2_load64(b);

		memcpy(a, &y, sizeof(y));
		memcpy(b, &x, sizeof(x));
		a += sizeof(x);
		b += sizeof(x);
	}
	for (size_t i = 0; i < (len & (sizeof(uint64_t) - 1)); i++) {
		unsigned char x = a[i];

		a[i] = b[i];
		b[i] = x;
	}
}

/* Copy or stream whole vectors to 32-byte-aligned @d; returns bytes done. */
static size_t avx2_copy_body(unsigned char *d, const unsigned char *s,
			     size_t len, bool nt)
{
	size_t done = 0;

	for (; len - done >= AVX2_BLOCK; done += AVX2_BLOCK) {
		__m256i v0 = avx2_load(s + done);
		__m256i v1 = avx2_load(s + done + AVX2_VEC);
		__m256i v2 = avx2_load(s + done + 2 * AVX2_VEC);
		__m256i v3 = avx2_load(s + done + 3 * AVX2_VEC);
		__m256i *o = (__m256i *)(d + done);

		if (nt) {
			_mm256_stream_si256(o, v0);
			_mm256_stream_si256(o + 1, v1);
			_mm256_stream_si256(o + 2, v2);
			_mm256_stream_si256(o + 3, v3);
		} else {
			_mm256_store_si256(o, v0);
			_mm256_store_si256(o + 1, v1);
			_mm256_store_si256(o + 2, v2);
			_mm256_store_si256(o + 3, v3);
		}
	}
	for (; len - done >= AVX2_VEC; done += AVX2_VEC) {
		__m256i *o = (__m256i *)(d + done);

		if (nt)
			_mm256_stream_si256(o, avx2_load(s + done));
		else
			_mm256_store_si256(o, avx2_load(s + done));
	}
	return done;
}

/* Head vector, aligned body, tail vector; @len >= AVX2_VEC. */
static void avx2_copy(unsigned char *d, const unsigned char *s, size_t len,
		      bool nt)
{
	size_t head = avx2_to_boundary(d), done;

	avx2_store(d, avx2_load(s));
	done = head + avx2_copy_body(d + head, s + head, len - head, nt);
	if (done < len)
		avx2_store(d + len - AVX2_VEC, avx2_load(s + len - AVX2_VEC));
}

static void avx2_copy_t(void *dst, const void *src, size_t len)
{
	if (len < AVX2_VEC)
		avx2_copy_small(dst, src, len);
	else
		avx2_copy(dst, src, len, false);
}

static void avx2_copy_nt(void *dst, const void *src, size_t len)
{
	if (len < AVX2_NT_MIN)
		avx2_copy_t(dst, src, len);
	else
		avx2_copy(dst, src, len, true);
	_mm_sfence();
}

static void avx2_exchange(void *pa, void *pb, size_t len)
{
	unsigned char *a = pa, *b = pb;
	size_t head = avx2_to_boundary(a);

	if (head > len)
		head = len;
	avx2_swap_small(a, b, head);
	a += head;
	b += head;
	len -= head;
	for (; len >= AVX2_BLOCK; len -= AVX2_BLOCK) {
		__m256i *va = (__m256i *)a;
		__m256i x0 = _mm256_load_si256(va), y0 = avx2_load(b);
		__m256i x1 = _mm256_load_si256(va + 1);
		__m256i y1 = avx2_load(b + AVX2_VEC);
		__m256i x2 = _mm256_load_si256(va + 2);
		__m256i y2 = avx2_load(b + 2 * AVX2_VEC);
		__m256i x3 = _mm256_load_si256(va + 3);
		__m256i y3 = avx2_load(b + 3 * AVX2_VEC);

		_mm256_store_si256(va, y0);
		_mm256_store_si256(va + 1, y1);
		_mm256_store_si256(va + 2, y2);
		_mm256_store_si256(va + 3, y3);
		avx2_store(b, x0);
		avx2_store(b + AVX2_VEC, x1);
		avx2_store(b + 2 * AVX2_VEC, x2);
		avx2_store(b + 3 * AVX2_VEC, x3);
		a += AVX2_BLOCK;
		b += AVX2_BLOCK;
	}
	for (; len >= AVX2_VEC; len -= AVX2_VEC) {
		__m256i x = _mm256_load_si256((__m256i *)a), y = avx2_load(b);

		_mm256_store_si256((__m256i *)a, y);
		avx2_store(b, x);
		a += AVX2_VEC;
		b += AVX2_VEC;
	}
	avx2_swap_small(a, b, len);
}

/* Zero or stream zeros over whole vectors of 32-byte-aligned @d. */
static size_t avx2_zero_body(unsigned char *d, size_t len, bool nt)
{
	const __m256i z = _mm256_setzero_si256();
	size_t done = 0;

	for (; len - done >= AVX2_BLOCK; done += AVX2_BLOCK) {
		__m256i *o = (__m256i *)(d + done);

		if (nt) {
			_mm256_stream_si256(o, z);
			_mm256_stream_si256(o + 1, z);
			_mm256_stream_si256(o + 2, z);
			_mm256_stream_si256(o + 3, z);
		} else {
			_mm256_store_si256(o, z);
			_mm256_store_si256(o + 1, z);
			_mm256_store_si256(o + 2, z);
			_mm256_store_si256(o + 3, z);
		}
	}
	for (; len - done >= AVX2_VEC; done += AVX2_VEC) {
		if (nt)
			_mm256_stream_si256((__m256i *)(d + done), z);
		else
			_mm256_store_si256((__m256i *)(d + done), z);
	}
	return done;
}

/* Head vector, aligned body, tail vector; @len >= AVX2_VEC. */
static void avx2_zero(unsigned char *d, size_t len, bool nt)
{
	size_t head = avx2_to_boundary(d), done;

	avx2_store(d, _mm256_setzero_si256());
	done = head + avx2_zero_body(d + head, len - head, nt);
	if (done < len)
		avx2_store(d + len - AVX2_VEC, _mm256_setzero_si256());
}

static void avx2_zero_t(void *dst, size_t len)
{
	if (len < AVX2_VEC)
		avx2_zero_small(dst, len);
	else
		avx2_zero(dst, len, false);
}

static void avx2_zero_nt(void *dst, size_t len)
{
	if (len < AVX2_NT_MIN)
		avx2_zero_t(dst, len);
	else
		avx2_zero(dst, len, true);
	_mm_sfence();
}

static bool avx2_is_zero_small(const unsigned char *s, size_t len)
{
	if (len >= AVX2_HALF) {
		__m128i v = _mm_or_si128(avx2_load_half(s),
					 avx2_load_half(s + len - AVX2_HALF));

		return _mm_testz_si128(v, v);
	}
	if (len >= sizeof(uint64_t))
		return (avx2_load64(s) |
			avx2_load64(s + len - sizeof(uint64_t))) == 0;
	if (len >= sizeof(uint32_t)) {
		uint32_t x, y;

		memcpy(&x, s, sizeof(x));
		memcpy(&y, s + len - sizeof(y), sizeof(y));
		return (x | y) == 0;
	}
	return len == 0 || (s[0] | s[len / 2] | s[len - 1]) == 0;
}

static bool avx2_is_zero(const void *p, size_t len)
{
	const unsigned char *s = p, *last;
	__m256i acc;

	if (len < AVX2_VEC)
		return avx2_is_zero_small(s, len);
	last = s + len - AVX2_VEC;
	for (; len >= AVX2_BLOCK; len -= AVX2_BLOCK) {
		acc = _mm256_or_si256(
			_mm256_or_si256(avx2_load(s), avx2_load(s + AVX2_VEC)),
			_mm256_or_si256(avx2_load(s + 2 * AVX2_VEC),
					avx2_load(s + 3 * AVX2_VEC)));
		if (!_mm256_testz_si256(acc, acc))
			return false;
		s += AVX2_BLOCK;
	}
	for (; len >= AVX2_VEC; len -= AVX2_VEC) {
		acc = avx2_load(s);
		if (!_mm256_testz_si256(acc, acc))
			return false;
		s += AVX2_VEC;
	}
	acc = avx2_load(last);
	return _mm256_testz_si256(acc, acc);
}

const struct xcopy_ops xcopy_avx2_ops = {
	.name = "avx2",
	.level = EXCH_SIMD_AVX2,
	.copy_t = avx2_copy_t,
	.copy_nt = avx2_copy_nt,
	.exchange = avx2_exchange,
	.zero_t = avx2_zero_t,
	.zero_nt = avx2_zero_nt,
	.is_zero = avx2_is_zero,
	.crc32c = xcopy_crc32c_hw,
};

/*
 * xcopy_avx512.c - exchange-engine kernels on 64-byte AVX-512 vectors.
 *
 * Compiled with -mavx512f -mavx512bw -mavx512vl; xcopy.c runs it only when
 * CPUID reports AVX-512 F, BW and VL (on top of everything the AVX2 level
 * needs, SSE4.2 included) and XGETBV shows the OS saves the opmask and full
 * ZMM state.
 *
 * A vector is one cache line, so aligning the destination makes every
 * store of the body a whole-line store: no store splits, and MOVNTDQ
 * writes full lines that bypass the cache completely.
 *
 * Byte-masked loads and stores (AVX-512BW) replace all the small-size code
 * of the narrower variants: any run of fewer than 64 bytes, the head up to
 * alignment or the tail, is one masked load and one masked store. Masked-off
 * bytes are neither read nor written and cannot fault, so a masked access
 * may reach past the end of a buffer onto an unmapped page. Because every
 * byte is touched exactly once, exchange uses the same head/body/tail shape
 * as copy and zero.
 *
 * The _nt forms stream the aligned body with VMOVNTDQ; head and tail are
 * temporal, and SFENCE orders the streamed data at the end.
 *
 * crc32c is xcopy_crc32c_hw() (xcopy_crc.c): the CRC32 instruction works
 * on general registers, not vectors, so it is the same SSE4.2 code as in
 * the AVX2 variant.
 */
#include "config.h"

#include <immintrin.h>

#include "internal.h"

#define AVX512_VEC ((size_t)sizeof(__m512i))
#define AVX512_UNROLL 4
#define AVX512_BLOCK (AVX512_UNROLL * AVX512_VEC)
#define AVX512_NT_MIN ((size_t)256) /* shorter copies stay temporal */

/* Mask of the first @n < AVX512_VEC bytes. */
static inline __mmask64 avx512_mask(size_t n)
{
	return ((__mmask64)1 << n) - 1;
}

/* Bytes from @p to the next vector boundary (0 if aligned), at most @len. */
static inline size_t avx512_head(const void *p, size_t len)
{
	size_t head = -(uintptr_t)p & (AVX512_VEC - 1);

	return head < len ? head : len;
}

static inline __m512i avx512_load(const unsigned char *p)
{
	return _mm512_loadu_si512(p);
}

/* Store one vector at 64-byte-aligned @d, streamed if @nt. */
static inline void avx512_put(unsigned char *d, __m512i v, bool nt)
{
	if (nt)
		_mm512_stream_si512((__m512i *)d, v);
	else
		_mm512_store_si512(d, v);
}

/* Copy @n < AVX512_VEC bytes with one masked load and store. */
static inline void avx512_copy_part(unsigned char *d, const unsigned char *s,
				    size_t n)
{
	__mmask64 m = avx512_mask(n);

	_mm512_mask_storeu_epi8(d, m, _mm512_maskz_loadu_epi8(m, s));
}

static inline void avx512_zero_part(unsigned char *d, size_t n)
{
	_mm512_mask_storeu_epi8(d, avx512_mask(n), _mm512_setzero_si512());
}

static inline void avx512_swap_part(unsigned char *a, unsigned char *b,
				    size_t n)
{
	__mmask64 m = avx512_mask(n);
	__m512i x = _mm512_maskz_loadu_epi8(m, a);
	__m512i y = _mm512_maskz_loadu_epi8(m, b);

	_mm512_mask_storeu_epi8(a, m, y);
	_mm512_mask_storeu_epi8(b, m, x);
}

/* Masked head to alignment of @d, aligned body, masked tail. */
static void avx512_copy(unsigned char *d, const unsigned char *s, size_t len,
			bool nt)
{
	size_t head = avx512_head(d, len);

	avx512_copy_part(d, s, head);
	d += head;
	s += head;
	len -= head;
	for (; len >= AVX512_BLOCK; len -= AVX512_BLOCK) {
		__m512i v0 = avx512_load(s);
		__m512i v1 = avx512_load(s + AVX512_VEC);
		__m512i v2 = avx512_load(s + 2 * AVX512_VEC);
		__m512i v3 = avx512_load(s + 3 * AVX512_VEC);

		avx512_put(d, v0, nt);
		avx512_put(d + AVX512_VEC, v1, nt);
		avx512_put(d + 2 * AVX512_VEC, v2, nt);
		avx512_put(d + 3 * AVX512_VEC, v3, nt);
		d += AVX512_BLOCK;
		s += AVX512_BLOCK;
	}
	for (; len >= AVX512_VEC; len -= AVX512_VEC) {
		avx512_put(d, avx512_load(s), nt);
		d += AVX512_VEC;
		s += AVX512_VEC;
	}
	avx512_copy_part(d, s, len);
}

static void avx512_copy_t(void *dst, const void *src, size_t len)
{
	avx512_copy(dst, src, len, false);
}

static void avx512_copy_nt(void *dst, const void *src, size_t len)
{
	avx512_copy(dst, src, len, len >= AVX512_NT_MIN);
	_mm_sfence();
}

static void avx512_exchange(void *pa, void *pb, size_t len)
{
	unsigned char *a = pa, *b = pb;
	size_t head = avx512_head(a, len);

	avx512_swap_part(a, b, head);
	a += head;
	b += head;
	len -= head;
	for (; len >= AVX512_BLOCK; len -= AVX512_BLOCK) {
		__m512i x0 = _mm512_load_si512(a), y0 = avx512_load(b);
		__m512i x1 = _mm512_load_si512(a + AVX512_VEC);
		__m512i y1 = avx512_load(b + AVX512_VEC);
		__m512i x2 = _mm512_load_si512(a + 2 * AVX512_VEC);
		__m512i y2 = avx512_load(b + 2 * AVX512_VEC);
		__m512i x3 = _mm512_load_si512(a + 3 * AVX512_VEC);
		__m512i y3 = avx512_load(b + 3 * AVX512_VEC);

		_mm512_store_si512(a, y0);
		_mm512_store_si512(a + AVX512_VEC, y1);
		_mm512_store_si512(a + 2 * AVX512_VEC, y2);
		_mm512_store_si512(a + 3 * AVX512_VEC, y3);
		_mm512_storeu_si512(b, x0);
		_mm512_storeu_si512(b + AVX512_VEC, x1);
		_mm512_storeu_si512(b + 2 * AVX512_VEC, x2);
		_mm512_storeu_si512(b + 3 * AVX512_VEC, x3);
		a += AVX512_BLOCK;
		b += AVX512_BLOCK;
	}
	for (; len >= AVX512_VEC; len -= AVX512_VEC) {
		__m512i x = _mm512_load_si512(a), y = avx512_load(b);

		_mm512_store_si512(a, y);
		_mm512_storeu_si512(b, x);
		a += AVX512_VEC;
		b += AVX512_VEC;
	}
	avx512_swap_part(a, b, len);
}

/* Masked head to alignment of @d, aligned body, masked tail. */
static void avx512_zero(unsigned char *d, size_t len, bool nt)
{
	__m512i z = _mm512_setzero_si512();
	size_t head = avx512_head(d, len);

	/* Hide that z is zero: the compiler would turn the loop into memset. */
	__asm__("" : "+v"(z));

	avx512_zero_part(d, head);
	d += head;
	len -= head;
	for (; len >= AVX512_VEC; len -= AVX512_VEC) {
		avx512_put(d, z, nt);
		d += AVX512_VEC;
	}
	avx512_zero_part(d, len);
}

static void avx512_zero_t(void *dst, size_t len)
{
	avx512_zero(dst, len, false);
}

static void avx512_zero_nt(void *dst, size_t len)
{
	avx512_zero(dst, len, len >= AVX512_NT_MIN);
	_mm_sfence();
}

static inline bool avx512_vec_zero(__m512i v)
{
	return _mm512_test_epi64_mask(v, v) == 0;
}

/* Masked head to alignment of @p, aligned OR-ed blocks, masked tail. */
static bool avx512_is_zero(const void *p, size_t len)
{
	const unsigned char *s = p;
	size_t head = avx512_head(s, len);

	if (!avx512_vec_zero(_mm512_maskz_loadu_epi8(avx512_mask(head), s)))
		return false;
	s += head;
	len -= head;
	for (; len >= AVX512_BLOCK; len -= AVX512_BLOCK) {
		__m512i acc = _mm512_or_si512(
			_mm512_or_si512(_mm512_load_si512(s),
					_mm512_load_si512(s + AVX512_VEC)),
			_mm512_or_si512(_mm512_load_si512(s + 2 * AVX512_VEC),
					_mm512_load_si512(s + 3 * AVX512_VEC)));

		if (!avx512_vec_zero(acc))
			return false;
		s += AVX512_BLOCK;
	}
	for (; len >= AVX512_VEC; len -= AVX512_VEC) {
		if (!avx512_vec_zero(_mm512_load_si512(s)))
			return false;
		s += AVX512_VEC;
	}
	return avx512_vec_zero(_mm512_maskz_loadu_epi8(avx512_mask(len), s));
}

const struct xcopy_ops xcopy_avx512_ops = {
	.name = "avx512",
	.level = EXCH_SIMD_AVX512,
	.copy_t = avx512_copy_t,
	.copy_nt = avx512_copy_nt,
	.exchange = avx512_exchange,
	.zero_t = avx512_zero_t,
	.zero_nt = avx512_zero_nt,
	.is_zero = avx512_is_zero,
	.crc32c = xcopy_crc32c_hw,
};

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
 * The aligned bodies between head and tail are the template in
 * xcopy_vec.h, built here from the AVX-512 intrinsics named below; with
 * XVEC_MASKED_EDGES the template leaves out its unmasked small-size code
 * and entry points, and this file supplies the masked edges around the
 * bodies. The _nt forms stream the aligned body with VMOVNTDQ; head and
 * tail are temporal, and SFENCE orders the streamed data at the end.
 *
 * crc32c is xcopy_crc32c_hw() (xcopy_crc.c): the CRC32 instruction works
 * on general registers, not vectors, so it is the same SSE4.2 code as in
 * the AVX2 variant.
 */
#include "config.h"

#include <immintrin.h>

#include "internal.h"

#define XVEC_PREFIX avx512
#define XVEC_T __m512i
#define XVEC_LOAD(p) _mm512_load_si512(p)
#define XVEC_LOADU(p) _mm512_loadu_si512(p)
#define XVEC_STORE(p, v) _mm512_store_si512((p), (v))
#define XVEC_STOREU(p, v) _mm512_storeu_si512((p), (v))
#define XVEC_STREAM(p, v) _mm512_stream_si512((__m512i *)(p), (v))
#define XVEC_SETZERO() _mm512_setzero_si512()
#define XVEC_OR(a, b) _mm512_or_si512((a), (b))
#define XVEC_ALLZERO(v) (_mm512_test_epi64_mask((v), (v)) == 0)
#define XVEC_MASKED_EDGES /* the head and tail below, not the template's */

#include "xcopy_vec.h"

/* Mask of the first @n < XVEC_VEC bytes. */
static inline __mmask64 avx512_mask(size_t n)
{
	return ((__mmask64)1 << n) - 1;
}

/* Bytes from @p to the next vector boundary (0 if aligned), at most @len. */
static inline size_t avx512_head(const void *p, size_t len)
{
	size_t head = -(uintptr_t)p & (XVEC_VEC - 1);

	return head < len ? head : len;
}

/* Copy @n < XVEC_VEC bytes with one masked load and store. */
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

static inline bool avx512_part_zero(const unsigned char *s, size_t n)
{
	return avx512_all_zero(_mm512_maskz_loadu_epi8(avx512_mask(n), s));
}

/* Masked head to alignment of @d, aligned body, masked tail. */
static void avx512_copy(unsigned char *d, const unsigned char *s, size_t len,
			bool nt)
{
	size_t head = avx512_head(d, len), done;

	avx512_copy_part(d, s, head);
	d += head;
	s += head;
	len -= head;
	done = avx512_copy_body(d, s, len, nt);
	avx512_copy_part(d + done, s + done, len - done);
}

static void avx512_copy_t(void *dst, const void *src, size_t len)
{
	avx512_copy(dst, src, len, false);
}

static void avx512_copy_nt(void *dst, const void *src, size_t len)
{
	avx512_copy(dst, src, len, len >= XVEC_NT_MIN);
	_mm_sfence();
}

static void avx512_exchange(void *pa, void *pb, size_t len)
{
	unsigned char *a = pa, *b = pb;
	size_t head = avx512_head(a, len), done;

	avx512_swap_part(a, b, head);
	a += head;
	b += head;
	len -= head;
	done = avx512_exchange_body(a, b, len);
	avx512_swap_part(a + done, b + done, len - done);
}

/* Masked head to alignment of @d, aligned body, masked tail. */
static void avx512_zero(unsigned char *d, size_t len, bool nt)
{
	size_t head = avx512_head(d, len), done;

	avx512_zero_part(d, head);
	d += head;
	len -= head;
	done = avx512_zero_body(d, len, nt);
	avx512_zero_part(d + done, len - done);
}

static void avx512_zero_t(void *dst, size_t len)
{
	avx512_zero(dst, len, false);
}

static void avx512_zero_nt(void *dst, size_t len)
{
	avx512_zero(dst, len, len >= XVEC_NT_MIN);
	_mm_sfence();
}

/* Masked head to alignment of @p, whole vectors, masked tail. */
static bool avx512_is_zero(const void *p, size_t len)
{
	const unsigned char *s = p;
	size_t head = avx512_head(s, len), tail;

	if (!avx512_part_zero(s, head))
		return false;
	s += head;
	len -= head;
	tail = len & (XVEC_VEC - 1);
	return avx512_is_zero_body(s, len) &&
	       avx512_part_zero(s + len - tail, tail);
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

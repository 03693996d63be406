/*
 * xcopy_sse2.c - exchange-engine kernels on 16-byte SSE2 vectors.
 *
 * Compiled with -msse2, the x86-64 baseline, so this variant runs on every
 * CPU the library supports. The kernels themselves are the template in
 * xcopy_vec.h (their shape is described there); this file names the SSE2
 * intrinsics it is built from. Aligned stores and MOVNTDQ need a 16-byte
 * boundary of the destination; below one vector the template moves words
 * and bytes, as there is no narrower vector.
 * SSE2 has no CRC32 instruction: crc32c is the slice-by-8 xcopy_crc32c_sw().
 */
#include "config.h"

#include <emmintrin.h>

#include "internal.h"

#define SSE2_ALL_BYTES_EQUAL 0xFFFF    /* movemask of 16 equal bytes */

#define XVEC_PREFIX sse2
#define XVEC_T __m128i
#define XVEC_LOAD(p) _mm_load_si128((const __m128i *)(p))
#define XVEC_LOADU(p) _mm_loadu_si128((const __m128i *)(p))
#define XVEC_STORE(p, v) _mm_store_si128((__m128i *)(p), (v))
#define XVEC_STOREU(p, v) _mm_storeu_si128((__m128i *)(p), (v))
#define XVEC_STREAM(p, v) _mm_stream_si128((__m128i *)(p), (v))
#define XVEC_SETZERO() _mm_setzero_si128()
#define XVEC_OR(a, b) _mm_or_si128((a), (b))
/* SSE2 has no PTEST: compare every byte with zero and gather the results. */
#define XVEC_ALLZERO(v)                                                  \
	(_mm_movemask_epi8(_mm_cmpeq_epi8((v), _mm_setzero_si128())) == \
	 SSE2_ALL_BYTES_EQUAL)

#include "xcopy_vec.h"

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

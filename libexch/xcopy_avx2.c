/*
 * xcopy_avx2.c - exchange-engine kernels on 32-byte AVX2 vectors.
 *
 * Compiled with -mavx2; xcopy.c runs it only when CPUID reports AVX2 and
 * SSE4.2 and XGETBV shows the OS saves the YMM state. The kernels are the
 * template in xcopy_vec.h, the same code as xcopy_sse2.c twice as wide;
 * this file names the AVX2 intrinsics it is built from. Two things differ
 * from SSE2:
 *   - Below one vector, a 16-byte XMM half vector comes before words and
 *     bytes (the template's XVEC_HALF_ step).
 *   - A vector is tested for zero with VPTEST (PTEST for the half), not a
 *     byte compare and mask.
 * crc32c is xcopy_crc32c_hw() (xcopy_crc.c), the three-stream CRC32
 * instruction, which is why this level also requires SSE4.2.
 */
#include "config.h"

#include <immintrin.h>

#include "internal.h"

#define XVEC_PREFIX avx2
#define XVEC_T __m256i
#define XVEC_LOAD(p) _mm256_load_si256((const __m256i *)(p))
#define XVEC_LOADU(p) _mm256_loadu_si256((const __m256i *)(p))
#define XVEC_STORE(p, v) _mm256_store_si256((__m256i *)(p), (v))
#define XVEC_STOREU(p, v) _mm256_storeu_si256((__m256i *)(p), (v))
#define XVEC_STREAM(p, v) _mm256_stream_si256((__m256i *)(p), (v))
#define XVEC_SETZERO() _mm256_setzero_si256()
#define XVEC_OR(a, b) _mm256_or_si256((a), (b))
#define XVEC_ALLZERO(v) _mm256_testz_si256((v), (v))

#define XVEC_HALF_T __m128i
#define XVEC_HALF_LOADU(p) _mm_loadu_si128((const __m128i *)(p))
#define XVEC_HALF_STOREU(p, v) _mm_storeu_si128((__m128i *)(p), (v))
#define XVEC_HALF_SETZERO() _mm_setzero_si128()
#define XVEC_HALF_OR(a, b) _mm_or_si128((a), (b))
#define XVEC_HALF_ALLZERO(v) _mm_testz_si128((v), (v))

#include "xcopy_vec.h"

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

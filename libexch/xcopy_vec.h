/*
 * xcopy_vec.h - the exchange-engine kernels once, for any vector width.
 *
 * xcopy_sse2.c, xcopy_avx2.c and xcopy_avx512.c run the same algorithms on
 * 16-, 32- and 64-byte vectors; only the vector type and the intrinsic
 * names differ. This header holds those algorithms once, in the manner of
 * glibc's memmove-vec-unaligned-erms.S: each variant file defines a few
 * macros and includes it.
 *
 * Why a header and not a shared function: each variant file is compiled
 * with its own -m flags (Makefile.am), and the compiler may emit an
 * instruction set only where those flags allow it. A function compiled
 * once could hold only one ISA; this text, included into each variant,
 * becomes SSE2 code in xcopy_sse2.c and AVX2 code in xcopy_avx2.c. It is
 * a template, not an interface: include it once, in a variant file only.
 *
 * The includer defines, before including:
 *   XVEC_PREFIX          name prefix of the file (sse2): the kernels become
 *                        static sse2_copy_t, sse2_zero_body ..., so every
 *                        object keeps its own symbols
 *   XVEC_T               the vector type (__m128i); the width, XVEC_VEC, is
 *                        its size, a power of two
 *   XVEC_LOAD(p)         aligned load from unsigned char *p
 *   XVEC_LOADU(p)        unaligned load
 *   XVEC_STORE(p, v)     aligned store
 *   XVEC_STOREU(p, v)    unaligned store
 *   XVEC_STREAM(p, v)    aligned non-temporal store
 *   XVEC_SETZERO()       a vector of zero bytes
 *   XVEC_OR(a, b)        bitwise or
 *   XVEC_ALLZERO(v)      nonzero if every byte of v is zero; v may be
 *                        evaluated twice (it is always a variable here)
 * Optionally, a variant wider than 16 bytes defines a 16-byte half vector,
 * so that a small size of 16 bytes or more takes two overlapping half moves
 * instead of falling through to words: XVEC_HALF_T, XVEC_HALF_LOADU(p),
 * XVEC_HALF_STOREU(p, v), XVEC_HALF_SETZERO(), XVEC_HALF_OR(a, b) and
 * XVEC_HALF_ALLZERO(v). The includer also includes its intrinsics header,
 * which brings _mm_sfence() with it.
 *
 * What it defines, static and prefixed:
 *   - Body kernels over whole vectors, for every includer: xxx_copy_body,
 *     xxx_zero_body and xxx_exchange_body need an XVEC_VEC-aligned
 *     destination (@a for exchange) and return the bytes done, a multiple
 *     of XVEC_VEC; xxx_is_zero_body tests the whole vectors of a range of
 *     any alignment. A four-vector loop then a one-vector loop; the _nt
 *     forms stream with XVEC_STREAM, and issue no fence.
 *   - Unless the includer defines XVEC_MASKED_EDGES, the entry points
 *     xxx_copy_t, _copy_nt, _exchange, _zero_t, _zero_nt and _is_zero for
 *     struct xcopy_ops, with the edges done without masks:
 *       * Below one vector, half vectors (if defined), words and bytes.
 *       * copy and zero store the first vector unaligned, step to the next
 *         vector boundary of the destination, run the body, and end with
 *         one unaligned vector that finishes exactly at the last byte.
 *         Stores that overlap write the same value twice, which is harmless
 *         because source and destination never overlap.
 *       * The _nt forms stream the body only from XVEC_NT_MIN bytes; head
 *         and tail stay temporal because a partial line cannot be
 *         streamed. They end with SFENCE so the streamed data is ordered
 *         before later stores.
 *       * exchange may never touch a byte twice (a second swap would undo
 *         the first), so its head up to alignment of @a and its tail are
 *         swapped exactly; every step loads both sides before it stores
 *         either.
 *     A variant with byte-masked loads and stores (AVX-512BW) defines
 *     XVEC_MASKED_EDGES and writes its own head and tail around the bodies.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if !defined(XVEC_PREFIX) || !defined(XVEC_T) || !defined(XVEC_LOAD) || \
	!defined(XVEC_LOADU) || !defined(XVEC_STORE) ||                  \
	!defined(XVEC_STOREU) || !defined(XVEC_STREAM) ||                \
	!defined(XVEC_SETZERO) || !defined(XVEC_OR) || !defined(XVEC_ALLZERO)
#error "xcopy_vec.h: define the XVEC_ macros of its header comment first"
#endif

#define XVEC_CAT_(a, b) a##_##b
#define XVEC_CAT(a, b) XVEC_CAT_(a, b)
#define XVEC_FN(name) XVEC_CAT(XVEC_PREFIX, name)

#define XVEC_VEC ((size_t)sizeof(XVEC_T))
#define XVEC_BLOCK (4 * XVEC_VEC)      /* the body loop does four vectors */
#define XVEC_NT_MIN ((size_t)256)      /* shorter copies stay temporal */

_Static_assert((XVEC_VEC & (XVEC_VEC - 1)) == 0,
	       "xcopy_vec.h: the alignment masks need a power-of-two width");

static inline bool XVEC_FN(all_zero)(XVEC_T v)
{
	return XVEC_ALLZERO(v);
}

/* Store @v at XVEC_VEC-aligned @d, streamed if @nt. */
static inline void XVEC_FN(put)(unsigned char *d, XVEC_T v, bool nt)
{
	if (nt)
		XVEC_STREAM(d, v);
	else
		XVEC_STORE(d, v);
}

/* Store four vectors from aligned @d, streamed if @nt: one test a block. */
static inline void XVEC_FN(put4)(unsigned char *d, XVEC_T v0, XVEC_T v1,
				 XVEC_T v2, XVEC_T v3, bool nt)
{
	if (nt) {
		XVEC_STREAM(d, v0);
		XVEC_STREAM(d + XVEC_VEC, v1);
		XVEC_STREAM(d + 2 * XVEC_VEC, v2);
		XVEC_STREAM(d + 3 * XVEC_VEC, v3);
	} else {
		XVEC_STORE(d, v0);
		XVEC_STORE(d + XVEC_VEC, v1);
		XVEC_STORE(d + 2 * XVEC_VEC, v2);
		XVEC_STORE(d + 3 * XVEC_VEC, v3);
	}
}

/* Copy or stream whole vectors to aligned @d; returns bytes done. */
static inline size_t XVEC_FN(copy_body)(unsigned char *d,
					const unsigned char *s, size_t len,
					bool nt)
{
	size_t done = 0;

	for (; len - done >= XVEC_BLOCK; done += XVEC_BLOCK) {
		XVEC_T v0 = XVEC_LOADU(s + done);
		XVEC_T v1 = XVEC_LOADU(s + done + XVEC_VEC);
		XVEC_T v2 = XVEC_LOADU(s + done + 2 * XVEC_VEC);
		XVEC_T v3 = XVEC_LOADU(s + done + 3 * XVEC_VEC);

		XVEC_FN(put4)(d + done, v0, v1, v2, v3, nt);
	}
	for (; len - done >= XVEC_VEC; done += XVEC_VEC)
		XVEC_FN(put)(d + done, XVEC_LOADU(s + done), nt);
	return done;
}

/* Zero or stream zeros over whole vectors of aligned @d; returns done. */
static inline size_t XVEC_FN(zero_body)(unsigned char *d, size_t len,
					bool nt)
{
	XVEC_T z = XVEC_SETZERO();
	size_t done = 0;

	/*
	 * Hide that z is zero: wherever nt is known false (zero_body inlined
	 * into a temporal caller) the compiler would turn the loop into memset.
	 */
	__asm__("" : "+v"(z));

	for (; len - done >= XVEC_BLOCK; done += XVEC_BLOCK)
		XVEC_FN(put4)(d + done, z, z, z, z, nt);
	for (; len - done >= XVEC_VEC; done += XVEC_VEC)
		XVEC_FN(put)(d + done, z, nt);
	return done;
}

/* Swap whole vectors of aligned @a and any @b; returns bytes done. */
static inline size_t XVEC_FN(exchange_body)(unsigned char *a,
					    unsigned char *b, size_t len)
{
	size_t done = 0;

	for (; len - done >= XVEC_BLOCK; done += XVEC_BLOCK) {
		unsigned char *pa = a + done, *pb = b + done;
		XVEC_T x0 = XVEC_LOAD(pa), y0 = XVEC_LOADU(pb);
		XVEC_T x1 = XVEC_LOAD(pa + XVEC_VEC);
		XVEC_T y1 = XVEC_LOADU(pb + XVEC_VEC);
		XVEC_T x2 = XVEC_LOAD(pa + 2 * XVEC_VEC);
		XVEC_T y2 = XVEC_LOADU(pb + 2 * XVEC_VEC);
		XVEC_T x3 = XVEC_LOAD(pa + 3 * XVEC_VEC);
		XVEC_T y3 = XVEC_LOADU(pb + 3 * XVEC_VEC);

		XVEC_FN(put4)(pa, y0, y1, y2, y3, false);
		XVEC_STOREU(pb, x0);
		XVEC_STOREU(pb + XVEC_VEC, x1);
		XVEC_STOREU(pb + 2 * XVEC_VEC, x2);
		XVEC_STOREU(pb + 3 * XVEC_VEC, x3);
	}
	for (; len - done >= XVEC_VEC; done += XVEC_VEC) {
		XVEC_T x = XVEC_LOAD(a + done), y = XVEC_LOADU(b + done);

		XVEC_STORE(a + done, y);
		XVEC_STOREU(b + done, x);
	}
	return done;
}

/* Whether the first len / XVEC_VEC whole vectors at @s are all zero. */
static inline bool XVEC_FN(is_zero_body)(const unsigned char *s, size_t len)
{
	for (; len >= XVEC_BLOCK; len -= XVEC_BLOCK) {
		XVEC_T acc = XVEC_OR(
			XVEC_OR(XVEC_LOADU(s), XVEC_LOADU(s + XVEC_VEC)),
			XVEC_OR(XVEC_LOADU(s + 2 * XVEC_VEC),
				XVEC_LOADU(s + 3 * XVEC_VEC)));

		if (!XVEC_FN(all_zero)(acc))
			return false;
		s += XVEC_BLOCK;
	}
	for (; len >= XVEC_VEC; len -= XVEC_VEC) {
		if (!XVEC_FN(all_zero)(XVEC_LOADU(s)))
			return false;
		s += XVEC_VEC;
	}
	return true;
}

#ifndef XVEC_MASKED_EDGES

/* Bytes from @p to the next vector boundary (0 if aligned). */
static inline size_t XVEC_FN(to_boundary)(const void *p)
{
	return -(uintptr_t)p & (XVEC_VEC - 1);
}

/*
 * The word moves of the small helpers, @w (8 or 4) bytes from each end of
 * @len bytes, w <= len <= 2 * w: the two moves overlap in the middle.
 */
static inline void XVEC_FN(copy_ends)(unsigned char *d,
				      const unsigned char *s, size_t len,
				      size_t w)
{
	uint64_t x, y;

	memcpy(&x, s, w);
	memcpy(&y, s + len - w, w);
	memcpy(d, &x, w);
	memcpy(d + len - w, &y, w);
}

static inline void XVEC_FN(zero_ends)(unsigned char *d, size_t len, size_t w)
{
	const uint64_t z = 0;

	memcpy(d, &z, w);
	memcpy(d + len - w, &z, w);
}

static inline bool XVEC_FN(ends_zero)(const unsigned char *s, size_t len,
				      size_t w)
{
	uint64_t x = 0, y = 0;

	memcpy(&x, s, w);
	memcpy(&y, s + len - w, w);
	return (x | y) == 0;
}

/* Swap the @w (8 or 4) bytes at @a and @b. */
static inline void XVEC_FN(swap_word)(unsigned char *a, unsigned char *b,
				      size_t w)
{
	uint64_t x, y;

	memcpy(&x, a, w);
	memcpy(&y, b, w);
	memcpy(a, &y, w);
	memcpy(b, &x, w);
}

/*
 * Fewer than XVEC_VEC bytes: two moves of one width that overlap in the
 * middle (half vector, 8 or 4 bytes), or for 1 to 3 bytes the first,
 * middle and last.
 */
static void XVEC_FN(copy_small)(unsigned char *d, const unsigned char *s,
				size_t len)
{
#ifdef XVEC_HALF_T
	if (len >= sizeof(XVEC_HALF_T)) {
		XVEC_HALF_T x = XVEC_HALF_LOADU(s);
		XVEC_HALF_T y = XVEC_HALF_LOADU(s + len - sizeof(y));

		XVEC_HALF_STOREU(d, x);
		XVEC_HALF_STOREU(d + len - sizeof(y), y);
		return;
	}
#endif
	if (len >= sizeof(uint64_t)) {
		XVEC_FN(copy_ends)(d, s, len, sizeof(uint64_t));
	} else if (len >= sizeof(uint32_t)) {
		XVEC_FN(copy_ends)(d, s, len, sizeof(uint32_t));
	} else if (len) {
		d[0] = s[0];
		d[len / 2] = s[len / 2];
		d[len - 1] = s[len - 1];
	}
}

static void XVEC_FN(zero_small)(unsigned char *d, size_t len)
{
#ifdef XVEC_HALF_T
	if (len >= sizeof(XVEC_HALF_T)) {
		XVEC_HALF_STOREU(d, XVEC_HALF_SETZERO());
		XVEC_HALF_STOREU(d + len - sizeof(XVEC_HALF_T),
				 XVEC_HALF_SETZERO());
		return;
	}
#endif
	if (len >= sizeof(uint64_t)) {
		XVEC_FN(zero_ends)(d, len, sizeof(uint64_t));
	} else if (len >= sizeof(uint32_t)) {
		XVEC_FN(zero_ends)(d, len, sizeof(uint32_t));
	} else if (len) {
		d[0] = 0;
		d[len / 2] = 0;
		d[len - 1] = 0;
	}
}

static bool XVEC_FN(is_zero_small)(const unsigned char *s, size_t len)
{
#ifdef XVEC_HALF_T
	if (len >= sizeof(XVEC_HALF_T)) {
		XVEC_HALF_T v = XVEC_HALF_LOADU(s);

		v = XVEC_HALF_OR(v, XVEC_HALF_LOADU(s + len - sizeof(v)));
		return XVEC_HALF_ALLZERO(v);
	}
#endif
	if (len >= sizeof(uint64_t))
		return XVEC_FN(ends_zero)(s, len, sizeof(uint64_t));
	if (len >= sizeof(uint32_t))
		return XVEC_FN(ends_zero)(s, len, sizeof(uint32_t));
	return len == 0 || (s[0] | s[len / 2] | s[len - 1]) == 0;
}

/* Swap exactly @len < XVEC_VEC bytes: one step per set bit of @len. */
static void XVEC_FN(swap_small)(unsigned char *a, unsigned char *b,
				size_t len)
{
#ifdef XVEC_HALF_T
	if (len & sizeof(XVEC_HALF_T)) {
		XVEC_HALF_T x = XVEC_HALF_LOADU(a), y = XVEC_HALF_LOADU(b);

		XVEC_HALF_STOREU(a, y);
		XVEC_HALF_STOREU(b, x);
		a += sizeof(x);
		b += sizeof(x);
	}
#endif
	if (len & sizeof(uint64_t)) {
		XVEC_FN(swap_word)(a, b, sizeof(uint64_t));
		a += sizeof(uint64_t);
		b += sizeof(uint64_t);
	}
	if (len & sizeof(uint32_t)) {
		XVEC_FN(swap_word)(a, b, sizeof(uint32_t));
		a += sizeof(uint32_t);
		b += sizeof(uint32_t);
	}
	for (size_t i = 0; i < (len & (sizeof(uint32_t) - 1)); i++) {
		unsigned char x = a[i];

		a[i] = b[i];
		b[i] = x;
	}
}

/* Head vector, aligned body, tail vector; @len >= XVEC_VEC. */
static void XVEC_FN(copy)(unsigned char *d, const unsigned char *s,
			  size_t len, bool nt)
{
	size_t head = XVEC_FN(to_boundary)(d), done;

	XVEC_STOREU(d, XVEC_LOADU(s));
	done = head + XVEC_FN(copy_body)(d + head, s + head, len - head, nt);
	if (done < len)
		XVEC_STOREU(d + len - XVEC_VEC, XVEC_LOADU(s + len - XVEC_VEC));
}

static void XVEC_FN(copy_t)(void *dst, const void *src, size_t len)
{
	if (len < XVEC_VEC)
		XVEC_FN(copy_small)(dst, src, len);
	else
		XVEC_FN(copy)(dst, src, len, false);
}

static void XVEC_FN(copy_nt)(void *dst, const void *src, size_t len)
{
	if (len < XVEC_NT_MIN)
		XVEC_FN(copy_t)(dst, src, len);
	else
		XVEC_FN(copy)(dst, src, len, true);
	_mm_sfence();
}

/* Exact head to alignment of @a, aligned body, exact tail. */
static void XVEC_FN(exchange)(void *pa, void *pb, size_t len)
{
	unsigned char *a = pa, *b = pb;
	size_t head = XVEC_FN(to_boundary)(a), done;

	if (head > len)
		head = len;
	XVEC_FN(swap_small)(a, b, head);
	a += head;
	b += head;
	len -= head;
	done = XVEC_FN(exchange_body)(a, b, len);
	XVEC_FN(swap_small)(a + done, b + done, len - done);
}

/* Head vector, aligned body, tail vector; @len >= XVEC_VEC. */
static void XVEC_FN(zero)(unsigned char *d, size_t len, bool nt)
{
	size_t head = XVEC_FN(to_boundary)(d), done;

	XVEC_STOREU(d, XVEC_SETZERO());
	done = head + XVEC_FN(zero_body)(d + head, len - head, nt);
	if (done < len)
		XVEC_STOREU(d + len - XVEC_VEC, XVEC_SETZERO());
}

static void XVEC_FN(zero_t)(void *dst, size_t len)
{
	if (len < XVEC_VEC)
		XVEC_FN(zero_small)(dst, len);
	else
		XVEC_FN(zero)(dst, len, false);
}

static void XVEC_FN(zero_nt)(void *dst, size_t len)
{
	if (len < XVEC_NT_MIN)
		XVEC_FN(zero_t)(dst, len);
	else
		XVEC_FN(zero)(dst, len, true);
	_mm_sfence();
}

/* Whole vectors from @p, then one unaligned vector ending at the last byte. */
static bool XVEC_FN(is_zero)(const void *p, size_t len)
{
	const unsigned char *s = p;

	if (len < XVEC_VEC)
		return XVEC_FN(is_zero_small)(s, len);
	return XVEC_FN(is_zero_body)(s, len) &&
	       XVEC_FN(all_zero)(XVEC_LOADU(s + len - XVEC_VEC));
}

#endif /* !XVEC_MASKED_EDGES */

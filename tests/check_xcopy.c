/*
 * check_xcopy.c - tests of the exchange engine (libexch/xcopy*.c).
 *
 * Every variant this CPU can run gets one test case (named after it) that
 * checks each kernel against what the kernel must do, with random lengths
 * (0 to about 70 KiB, plus exact 2 MB ranges) and random alignments of
 * source and destination (offsets 0..127):
 *   - copy_t, copy_nt, zero_t, zero_nt: the range holds the expected bytes
 *     and CX_GUARD bytes on each side of it are unchanged;
 *   - exchange: both ranges swapped, guards of both unchanged;
 *   - is_zero: true on zero ranges, false with one non-zero byte at every
 *     position near either end (and random ones in long zero runs), never
 *     influenced by the non-zero bytes around the range;
 *   - crc32c: known vectors, a bitwise reference (which checks the scalar
 *     variant), the scalar variant (which checks the others), and chaining
 *     over random pieces.
 * A variant the CPU cannot run is skipped with a message saying so; the
 * scalar variant always runs. A last test case checks the public calls:
 * -EINVAL for overlapping ranges and unknown hints with memory unchanged,
 * exchange of a range with itself, every hint giving the right bytes.
 *
 * Random cases derive from one seed, printed at start; CHECK_SEED=<n>
 * reruns with another (decimal or 0x-hex). Each test mixes the seed with
 * its own tag and the variant level, so it reproduces alone too.
 */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exch.h"
#include "internal.h"

#define CX_SEED_DEFAULT 20240611ULL
#define CX_GUARD 64               /* bytes checked on each side of a range */
#define CX_MAX_OFFSET 128         /* alignments tried: offsets 0..127 */
#define CX_RANDOM_MAX (70u << 10) /* largest random length */
#define CX_SMALL_MAX 256          /* every length up to this is tried */
#define CX_MID_MAX 4096
#define CX_BIG ((size_t)2 << 20)  /* one region */
#define CX_ROUNDS 400             /* random cases per kernel */
#define CX_BIG_ROUNDS 3           /* 2 MB cases per kernel */
#define CX_EDGE 80                /* is_zero: positions tried at each end */
#define CX_RUN_PROBES 64          /* is_zero: random positions in a 2 MB run */
#define CX_CRC_PIECES 7           /* crc32c: pieces of a chained buffer */
#define CX_TIMEOUT_S 300
#define CX_AREA_SIZE (CX_GUARD + CX_MAX_OFFSET + CX_BIG + CX_GUARD)
#define CX_FILL_BYTE 0xA5         /* non-zero bytes around is_zero ranges */
#define CX_CRC_POLY 0x82F63B78u   /* CRC-32C, bit-reflected */
#define CX_BYTE_BITS 8

/* Tags that give each test its own random stream. */
enum cx_tag {
	CX_TAG_COPY_T = 1,
	CX_TAG_COPY_NT,
	CX_TAG_EXCHANGE,
	CX_TAG_ZERO_T,
	CX_TAG_ZERO_NT,
	CX_TAG_IS_ZERO,
	CX_TAG_CRC,
	CX_TAG_CRC_CHAIN,
	CX_TAG_API,
};

static const struct xcopy_ops *const cx_all[] = {
	&xcopy_scalar_ops,
	&xcopy_sse2_ops,
	&xcopy_avx2_ops,
	&xcopy_avx512_ops,
};
#define CX_LEVELS (sizeof(cx_all) / sizeof(cx_all[0]))

static unsigned long long cx_seed;

/* ---- helpers ---- */

struct cx_rng {
	uint64_t s;
};

/* splitmix64 */
static uint64_t cx_next(struct cx_rng *r)
{
	uint64_t z = (r->s += 0x9E3779B97F4A7C15ULL);

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

static struct cx_rng cx_rng_for(enum cx_tag tag, int level)
{
	struct cx_rng r = { cx_seed };

	r.s ^= cx_next(&r) * (uint64_t)tag;
	r.s += (uint64_t)level;
	return r;
}

static size_t cx_below(struct cx_rng *r, size_t n)
{
	return (size_t)(cx_next(r) % n);
}

static void cx_fill(struct cx_rng *r, unsigned char *p, size_t n)
{
	while (n) {
		uint64_t w = cx_next(r);
		size_t k = n < sizeof(w) ? n : sizeof(w);

		memcpy(p, &w, k);
		p += k;
		n -= k;
	}
}

/* A length for random round @i: small, medium and large in turn. */
static size_t cx_pick_len(struct cx_rng *r, unsigned i)
{
	switch (i % 3) {
	case 0:
		return cx_below(r, CX_SMALL_MAX + 1);
	case 1:
		return cx_below(r, CX_MID_MAX + 1);
	default:
		return cx_below(r, CX_RANDOM_MAX + 1);
	}
}

/*
 * Length of round @i of a kernel test: every length up to CX_SMALL_MAX,
 * then CX_ROUNDS random ones, then CX_BIG_ROUNDS of 2 MB.
 */
#define CX_ALL_ROUNDS (CX_SMALL_MAX + 1 + CX_ROUNDS + CX_BIG_ROUNDS)

static size_t cx_round_len(struct cx_rng *r, unsigned i)
{
	if (i <= CX_SMALL_MAX)
		return i;
	if (i <= CX_SMALL_MAX + CX_ROUNDS)
		return cx_pick_len(r, i);
	return CX_BIG;
}

/*
 * A buffer with a snapshot: a range at @off (plus the front guard) inside
 * random bytes, so a kernel that writes one byte too many is seen.
 */
struct cx_area {
	unsigned char *buf;
	unsigned char *snap;
	size_t off;
	size_t len;
};

static void cx_area_init(struct cx_area *a)
{
	a->buf = malloc(CX_AREA_SIZE);
	a->snap = malloc(CX_AREA_SIZE);
	ck_assert_ptr_nonnull(a->buf);
	ck_assert_ptr_nonnull(a->snap);
}

static void cx_area_free(struct cx_area *a)
{
	free(a->buf);
	free(a->snap);
}

static size_t cx_area_window(const struct cx_area *a)
{
	return CX_GUARD + a->off + a->len + CX_GUARD;
}

/* Fill the window with random bytes, snapshot it, return the range. */
static unsigned char *cx_area_prepare(struct cx_area *a, struct cx_rng *r,
				      size_t len)
{
	a->off = cx_below(r, CX_MAX_OFFSET);
	a->len = len;
	cx_fill(r, a->buf, cx_area_window(a));
	memcpy(a->snap, a->buf, cx_area_window(a));
	return a->buf + CX_GUARD + a->off;
}

static bool cx_guards_intact(const struct cx_area *a)
{
	size_t front = CX_GUARD + a->off, back = front + a->len;

	return memcmp(a->buf, a->snap, front) == 0 &&
	       memcmp(a->buf + back, a->snap + back, CX_GUARD) == 0;
}

static const unsigned char *cx_area_orig(const struct cx_area *a)
{
	return a->snap + CX_GUARD + a->off;
}

static const struct xcopy_ops *cx_ops(int level)
{
	const struct xcopy_ops *ops = xcopy_variant((enum exch_simd)level);

	ck_assert_ptr_nonnull(ops);
	ck_assert_int_eq(ops->level, level);
	return ops;
}

/* Bit-at-a-time CRC-32C, the reference for the scalar variant. */
static uint32_t cx_crc32c_ref(uint32_t crc, const unsigned char *p,
			      size_t len)
{
	uint32_t c = ~crc;

	while (len--) {
		c ^= *p++;
		for (int bit = 0; bit < CX_BYTE_BITS; bit++)
			c = (c >> 1) ^ (CX_CRC_POLY & -(c & 1));
	}
	return ~c;
}

/* ---- variant tests: _i is the level ---- */

static void cx_check_copy(int level, enum cx_tag tag, bool nt)
{
	const struct xcopy_ops *ops = cx_ops(level);
	struct cx_rng r = cx_rng_for(tag, level);
	struct cx_area src, dst;

	cx_area_init(&src);
	cx_area_init(&dst);
	for (unsigned i = 0; i < CX_ALL_ROUNDS; i++) {
		size_t len = cx_round_len(&r, i);
		unsigned char *s = cx_area_prepare(&src, &r, len);
		unsigned char *d = cx_area_prepare(&dst, &r, len);

		(nt ? ops->copy_nt : ops->copy_t)(d, s, len);
		ck_assert_msg(memcmp(d, s, len) == 0 && cx_guards_intact(&dst),
			      "%s copy_%s: len %zu src+%zu dst+%zu wrong",
			      ops->name, nt ? "nt" : "t", len, src.off,
			      dst.off);
		ck_assert_msg(!memcmp(src.buf, src.snap, cx_area_window(&src)),
			      "%s copy_%s: len %zu changed the source",
			      ops->name, nt ? "nt" : "t", len);
	}
	cx_area_free(&src);
	cx_area_free(&dst);
}

START_TEST(test_copy_t)
{
	cx_check_copy(_i, CX_TAG_COPY_T, false);
}
END_TEST

START_TEST(test_copy_nt)
{
	cx_check_copy(_i, CX_TAG_COPY_NT, true);
}
END_TEST

START_TEST(test_exchange)
{
	const struct xcopy_ops *ops = cx_ops(_i);
	struct cx_rng r = cx_rng_for(CX_TAG_EXCHANGE, _i);
	struct cx_area x, y;

	cx_area_init(&x);
	cx_area_init(&y);
	for (unsigned i = 0; i < CX_ALL_ROUNDS; i++) {
		size_t len = cx_round_len(&r, i);
		unsigned char *a = cx_area_prepare(&x, &r, len);
		unsigned char *b = cx_area_prepare(&y, &r, len);

		ops->exchange(a, b, len);
		ck_assert_msg(memcmp(a, cx_area_orig(&y), len) == 0 &&
				      memcmp(b, cx_area_orig(&x), len) == 0,
			      "%s exchange: len %zu a+%zu b+%zu not swapped",
			      ops->name, len, x.off, y.off);
		ck_assert_msg(cx_guards_intact(&x) && cx_guards_intact(&y),
			      "%s exchange: len %zu a+%zu b+%zu wrote a guard",
			      ops->name, len, x.off, y.off);
	}
	cx_area_free(&x);
	cx_area_free(&y);
}
END_TEST

static void cx_check_zero(int level, enum cx_tag tag, bool nt)
{
	const struct xcopy_ops *ops = cx_ops(level);
	struct cx_rng r = cx_rng_for(tag, level);
	struct cx_area dst;

	cx_area_init(&dst);
	for (unsigned i = 0; i < CX_ALL_ROUNDS; i++) {
		size_t len = cx_round_len(&r, i);
		unsigned char *d = cx_area_prepare(&dst, &r, len);
		bool zero = true;

		(nt ? ops->zero_nt : ops->zero_t)(d, len);
		for (size_t k = 0; k < len; k++)
			zero = zero && d[k] == 0;
		ck_assert_msg(zero && cx_guards_intact(&dst),
			      "%s zero_%s: len %zu dst+%zu wrong", ops->name,
			      nt ? "nt" : "t", len, dst.off);
	}
	cx_area_free(&dst);
}

START_TEST(test_zero_t)
{
	cx_check_zero(_i, CX_TAG_ZERO_T, false);
}
END_TEST

START_TEST(test_zero_nt)
{
	cx_check_zero(_i, CX_TAG_ZERO_NT, true);
}
END_TEST

/* One non-zero byte at @pos of the zero range @p must be seen. */
static void cx_expect_nonzero(const struct xcopy_ops *ops, struct cx_rng *r,
			      unsigned char *p, size_t len, size_t pos)
{
	p[pos] = (unsigned char)(1 + cx_below(r, UINT8_MAX));
	ck_assert_msg(!ops->is_zero(p, len),
		      "%s is_zero: len %zu missed byte %zu (%p)", ops->name,
		      len, pos, (void *)p);
	p[pos] = 0;
}

static void cx_check_is_zero_len(const struct xcopy_ops *ops,
				 struct cx_rng *r, unsigned char *buf,
				 size_t len)
{
	unsigned char *p = buf + CX_GUARD + cx_below(r, CX_MAX_OFFSET);

	memset(buf, CX_FILL_BYTE, CX_AREA_SIZE);
	memset(p, 0, len);
	ck_assert_msg(ops->is_zero(p, len), "%s is_zero: zero len %zu (%p)",
		      ops->name, len, (void *)p);
	for (size_t pos = 0; pos < len; pos++) {
		if (pos == CX_EDGE && len > 2 * CX_EDGE)
			pos = len - CX_EDGE;
		cx_expect_nonzero(ops, r, p, len, pos);
	}
	if (len > 2 * CX_EDGE)
		for (unsigned i = 0; i < CX_RUN_PROBES; i++)
			cx_expect_nonzero(ops, r, p, len, cx_below(r, len));
}

START_TEST(test_is_zero)
{
	const struct xcopy_ops *ops = cx_ops(_i);
	struct cx_rng r = cx_rng_for(CX_TAG_IS_ZERO, _i);
	unsigned char *buf = malloc(CX_AREA_SIZE);

	ck_assert_ptr_nonnull(buf);
	for (size_t len = 0; len <= CX_SMALL_MAX; len++)
		cx_check_is_zero_len(ops, &r, buf, len);
	for (unsigned i = 0; i < CX_ROUNDS / 4; i++)
		cx_check_is_zero_len(ops, &r, buf, cx_pick_len(&r, i));
	for (unsigned i = 0; i < CX_BIG_ROUNDS; i++)
		cx_check_is_zero_len(ops, &r, buf, CX_BIG);
	free(buf);
}
END_TEST

/* The usual check string, and RFC 3720 (iSCSI) B.4. */
static const char cx_check_string[] = "123456789";
#define CX_CHECK_STRING_CRC 0xE3069283u
#define CX_RFC_LEN 32

START_TEST(test_crc_vectors)
{
	const struct xcopy_ops *ops = cx_ops(_i);
	unsigned char zeros[CX_RFC_LEN], ones[CX_RFC_LEN], up[CX_RFC_LEN],
		down[CX_RFC_LEN];

	for (unsigned k = 0; k < sizeof(up); k++) {
		zeros[k] = 0;
		ones[k] = UINT8_MAX;
		up[k] = (unsigned char)k;
		down[k] = (unsigned char)(sizeof(down) - 1 - k);
	}
	ck_assert_uint_eq(ops->crc32c(0, cx_check_string,
				      sizeof(cx_check_string) - 1),
			  CX_CHECK_STRING_CRC);
	ck_assert_uint_eq(ops->crc32c(0, zeros, sizeof(zeros)), 0x8A9136AAu);
	ck_assert_uint_eq(ops->crc32c(0, ones, sizeof(ones)), 0x62A8AB43u);
	ck_assert_uint_eq(ops->crc32c(0, up, sizeof(up)), 0x46DD794Eu);
	ck_assert_uint_eq(ops->crc32c(0, down, sizeof(down)), 0x113FDB5Cu);
	ck_assert_uint_eq(ops->crc32c(0, "", 0), 0);
	ck_assert_uint_eq(ops->crc32c(CX_CHECK_STRING_CRC, "", 0),
			  CX_CHECK_STRING_CRC);
}
END_TEST

/* Lengths around the interleaving steps of the hardware CRC kernels. */
static const size_t cx_crc_edges[] = {
	1, 7, 8, 9, 63, 64, 65, 767, 768, 769, 1535, 1536, 1537,
	24575, 24576, 24577, 24576 + 768, 49151, 49152, 49153,
};
#define CX_CRC_EDGES (sizeof(cx_crc_edges) / sizeof(cx_crc_edges[0]))

/* ops->crc32c against scalar (and scalar against the bitwise reference). */
static void cx_check_crc_len(const struct xcopy_ops *ops, struct cx_rng *r,
			     unsigned char *buf, size_t len)
{
	unsigned char *p = buf + cx_below(r, CX_MAX_OFFSET);
	uint32_t init = (uint32_t)cx_next(r);
	uint32_t want;

	cx_fill(r, p, len);
	want = xcopy_scalar_ops.crc32c(init, p, len);
	if (len <= CX_RANDOM_MAX)
		ck_assert_msg(want == cx_crc32c_ref(init, p, len),
			      "scalar crc32c: len %zu differs from bitwise",
			      len);
	ck_assert_msg(ops->crc32c(init, p, len) == want,
		      "%s crc32c: len %zu at %p differs from scalar",
		      ops->name, len, (void *)p);
}

START_TEST(test_crc_random)
{
	const struct xcopy_ops *ops = cx_ops(_i);
	struct cx_rng r = cx_rng_for(CX_TAG_CRC, _i);
	unsigned char *buf = malloc(CX_AREA_SIZE);

	ck_assert_ptr_nonnull(buf);
	for (size_t len = 0; len <= CX_SMALL_MAX; len++)
		cx_check_crc_len(ops, &r, buf, len);
	for (unsigned i = 0; i < CX_CRC_EDGES; i++)
		cx_check_crc_len(ops, &r, buf, cx_crc_edges[i]);
	for (unsigned i = 0; i < CX_ROUNDS / 4; i++)
		cx_check_crc_len(ops, &r, buf, cx_pick_len(&r, i));
	cx_check_crc_len(ops, &r, buf, CX_BIG);
	free(buf);
}
END_TEST

START_TEST(test_crc_chain)
{
	const struct xcopy_ops *ops = cx_ops(_i);
	struct cx_rng r = cx_rng_for(CX_TAG_CRC_CHAIN, _i);
	unsigned char *buf = malloc(CX_AREA_SIZE);

	ck_assert_ptr_nonnull(buf);
	for (unsigned i = 0; i < CX_ROUNDS / 4; i++) {
		size_t len = i == 0 ? CX_BIG : cx_pick_len(&r, i), done = 0;
		uint32_t whole, c = 0;

		cx_fill(&r, buf, len);
		whole = xcopy_scalar_ops.crc32c(0, buf, len);
		for (unsigned piece = 1; piece < CX_CRC_PIECES && done < len;
		     piece++) {
			size_t n = cx_below(&r, len - done + 1);

			c = ops->crc32c(c, buf + done, n);
			done += n;
		}
		c = ops->crc32c(c, buf + done, len - done);
		ck_assert_msg(c == whole, "%s crc32c: chained len %zu wrong",
			      ops->name, len);
	}
	free(buf);
}
END_TEST

/* ---- the public calls ---- */

#define CX_API_LEN 4096
#define CX_API_SPAN 100
#define CX_HINT_BAD ((enum exch_hint)3)
#define CX_HINT_NEG ((enum exch_hint)-1)
#define CX_API_BIG ((size_t)1 << 20)

static const enum exch_hint cx_hints[] = {
	EXCH_HINT_AUTO, EXCH_HINT_COLD, EXCH_HINT_HOT,
};

START_TEST(test_api_copy_overlap)
{
	struct cx_rng r = cx_rng_for(CX_TAG_API, 0);
	unsigned char buf[CX_API_LEN], snap[CX_API_LEN];
	unsigned char *p = buf + CX_API_SPAN;
	/* dst - src for ranges of CX_API_SPAN bytes that share a byte. */
	const long overlaps[] = { 0, 1, -1, CX_API_SPAN - 1, -(CX_API_SPAN - 1) };

	cx_fill(&r, buf, sizeof(buf));
	memcpy(snap, buf, sizeof(buf));
	for (unsigned i = 0; i < sizeof(overlaps) / sizeof(overlaps[0]); i++) {
		ck_assert_int_eq(exch_copy(p + overlaps[i], p, CX_API_SPAN,
					   EXCH_HINT_HOT), -EINVAL);
		ck_assert_int_eq(exch_copy(p + overlaps[i], p, CX_API_SPAN,
					   EXCH_HINT_COLD), -EINVAL);
	}
	ck_assert(memcmp(buf, snap, sizeof(buf)) == 0);

	/* Adjacent ranges do not overlap. */
	ck_assert_int_eq(exch_copy(p + CX_API_SPAN, p, CX_API_SPAN,
				   EXCH_HINT_HOT), 0);
	ck_assert(memcmp(p + CX_API_SPAN, snap + CX_API_SPAN, CX_API_SPAN) == 0);
	ck_assert_int_eq(exch_copy(p, p, 0, EXCH_HINT_AUTO), 0);
}
END_TEST

START_TEST(test_api_bad_hint)
{
	unsigned char src[CX_API_SPAN], dst[CX_API_SPAN], snap[CX_API_SPAN];

	memset(src, 1, sizeof(src));
	memset(dst, 2, sizeof(dst));
	memcpy(snap, dst, sizeof(dst));
	ck_assert_int_eq(exch_copy(dst, src, sizeof(dst), CX_HINT_BAD), -EINVAL);
	ck_assert_int_eq(exch_copy(dst, src, sizeof(dst), CX_HINT_NEG), -EINVAL);
	ck_assert_int_eq(exch_zero(dst, sizeof(dst), CX_HINT_BAD), -EINVAL);
	ck_assert_int_eq(exch_zero(dst, sizeof(dst), CX_HINT_NEG), -EINVAL);
	ck_assert(memcmp(dst, snap, sizeof(dst)) == 0);
}
END_TEST

START_TEST(test_api_exchange)
{
	struct cx_rng r = cx_rng_for(CX_TAG_API, 1);
	unsigned char buf[CX_API_LEN], snap[CX_API_LEN];
	unsigned char *a = buf, *b = buf + CX_API_SPAN;

	cx_fill(&r, buf, sizeof(buf));
	memcpy(snap, buf, sizeof(buf));
	ck_assert_int_eq(exch_exchange(a, a, CX_API_SPAN), 0);
	ck_assert_int_eq(exch_exchange(a, a, 0), 0);
	ck_assert(memcmp(buf, snap, sizeof(buf)) == 0);
	ck_assert_int_eq(exch_exchange(a, a + 1, CX_API_SPAN), -EINVAL);
	ck_assert_int_eq(exch_exchange(a + 1, a, CX_API_SPAN), -EINVAL);
	ck_assert_int_eq(exch_exchange(b - 1, a, CX_API_SPAN), -EINVAL);
	ck_assert_int_eq(exch_exchange(a, b - 1, CX_API_SPAN), -EINVAL);
	ck_assert(memcmp(buf, snap, sizeof(buf)) == 0);

	/* Adjacent ranges swap. */
	ck_assert_int_eq(exch_exchange(a, b, CX_API_SPAN), 0);
	ck_assert(memcmp(a, snap + CX_API_SPAN, CX_API_SPAN) == 0);
	ck_assert(memcmp(b, snap, CX_API_SPAN) == 0);
	ck_assert(memcmp(buf + 2 * CX_API_SPAN, snap + 2 * CX_API_SPAN,
			 sizeof(buf) - 2 * CX_API_SPAN) == 0);
}
END_TEST

/* Every valid hint gives the right bytes, small and large. */
START_TEST(test_api_hints)
{
	struct cx_rng r = cx_rng_for(CX_TAG_API, 2);
	const size_t lens[] = { 1, 100, PAGE_SIZE_4K - 1, PAGE_SIZE_4K,
				5 * PAGE_SIZE_4K + 3, CX_API_BIG };
	unsigned char *src = malloc(CX_API_BIG), *dst = malloc(CX_API_BIG);

	ck_assert_ptr_nonnull(src);
	ck_assert_ptr_nonnull(dst);
	for (unsigned h = 0; h < sizeof(cx_hints) / sizeof(cx_hints[0]); h++)
		for (unsigned i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
			cx_fill(&r, src, lens[i]);
			cx_fill(&r, dst, lens[i]);
			ck_assert_int_eq(exch_copy(dst, src, lens[i],
						   cx_hints[h]), 0);
			ck_assert(memcmp(dst, src, lens[i]) == 0);
			ck_assert_int_eq(exch_zero(dst, lens[i], cx_hints[h]), 0);
			ck_assert_int_eq(exch_is_zero(dst, lens[i]), 1);
			ck_assert_uint_eq(exch_crc32c(0, src, lens[i]),
					  cx_crc32c_ref(0, src, lens[i]));
		}
	dst[CX_API_BIG - 1] = 1;
	ck_assert_int_eq(exch_is_zero(dst, CX_API_BIG), 0);
	ck_assert_int_eq(exch_is_zero(dst, 0), 1);
	ck_assert_uint_eq(exch_crc32c(0, cx_check_string,
				      sizeof(cx_check_string) - 1),
			  CX_CHECK_STRING_CRC);
	free(src);
	free(dst);
}
END_TEST

/* The chosen variant runs here; levels above the CPU's are refused. */
START_TEST(test_api_select)
{
	enum exch_simd cpu = xcopy_cpu_level();

	ck_assert_ptr_nonnull(xcopy_ops());
	ck_assert_int_le(xcopy_ops()->level, cpu);
	for (unsigned level = 0; level < CX_LEVELS; level++)
		ck_assert(!xcopy_variant((enum exch_simd)level) ==
			  (level > (unsigned)cpu));
	ck_assert_ptr_null(xcopy_variant((enum exch_simd)CX_LEVELS));
	ck_assert_uint_gt(xcopy_nt_threshold(), 0);
}
END_TEST

static void cx_add_variant(Suite *s, int level)
{
	TCase *tc = tcase_create(cx_all[level]->name);

	tcase_set_timeout(tc, CX_TIMEOUT_S);
	tcase_add_loop_test(tc, test_copy_t, level, level + 1);
	tcase_add_loop_test(tc, test_copy_nt, level, level + 1);
	tcase_add_loop_test(tc, test_exchange, level, level + 1);
	tcase_add_loop_test(tc, test_zero_t, level, level + 1);
	tcase_add_loop_test(tc, test_zero_nt, level, level + 1);
	tcase_add_loop_test(tc, test_is_zero, level, level + 1);
	tcase_add_loop_test(tc, test_crc_vectors, level, level + 1);
	tcase_add_loop_test(tc, test_crc_random, level, level + 1);
	tcase_add_loop_test(tc, test_crc_chain, level, level + 1);
	suite_add_tcase(s, tc);
}

static Suite *cx_suite(void)
{
	Suite *s = suite_create("xcopy");
	TCase *api = tcase_create("api");

	for (unsigned level = 0; level < CX_LEVELS; level++) {
		if (xcopy_variant((enum exch_simd)level) == NULL) {
			printf("skipping %s: not supported by this CPU\n",
			       cx_all[level]->name);
			continue;
		}
		cx_add_variant(s, (int)level);
	}
	tcase_set_timeout(api, CX_TIMEOUT_S);
	tcase_add_test(api, test_api_copy_overlap);
	tcase_add_test(api, test_api_bad_hint);
	tcase_add_test(api, test_api_exchange);
	tcase_add_test(api, test_api_hints);
	tcase_add_test(api, test_api_select);
	suite_add_tcase(s, api);
	return s;
}

int main(void)
{
	const char *env = getenv("CHECK_SEED");
	SRunner *sr;
	int failed;

	cx_seed = env ? strtoull(env, NULL, 0) : CX_SEED_DEFAULT;
	printf("check_xcopy: seed %llu (set CHECK_SEED to change it)\n",
	       cx_seed);
	sr = srunner_create(cx_suite());
	fflush(stdout); /* before Check forks, or children print it again */
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}

/*
 * check_codec.c - one page in and out of the tier's encodings.
 *
 * Pages of each kind the tier meets (zeros, a repeated word, text,
 * pointers, random bytes) go through codec_pack and codec_unpack and must
 * come back byte for byte, in the encoding their content calls for; a
 * damaged stream must be refused, not decoded into a wrong page.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"

#define PAGE 4096u
#define ZBUD_LARGEST 4032u /* zbud's largest object */
#define WORDS (PAGE / 8)

static struct exch_features feat;
static const char text[] =
	"the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. ";

static void fill_text(unsigned char *p)
{
	for (size_t i = 0; i < PAGE; i++)
		p[i] = (unsigned char)text[i % (sizeof(text) - 1)];
}

/* Heap-like pointers: a base plus small, aligned offsets. */
static void fill_pointers(unsigned char *p)
{
	uint64_t *w = (uint64_t *)p;

	for (size_t i = 0; i < WORDS; i++)
		w[i] = 0x00007f3a12340000ull + (uint64_t)((i * 37) % 512) * 16;
}

static void fill_random(unsigned char *p, unsigned seed)
{
	for (size_t i = 0; i < PAGE; i++)
		p[i] = (unsigned char)rand_r(&seed);
}

/* Packs and unpacks @page; asserts the round trip; returns the kind. */
static enum codec_kind round_trip(const unsigned char *page, size_t limit, size_t *len)
{
	unsigned char out[PAGE], back[PAGE];
	struct codec_info info;

	*len = codec_pack(page, out, limit, &info);
	memset(back, 0xEE, sizeof(back));
	ck_assert_int_eq(codec_unpack(&info, out, *len, back), 0);
	ck_assert_mem_eq(back, page, PAGE);
	return info.kind;
}

START_TEST(test_codec_same_filled)
{
	unsigned char page[PAGE];
	uint64_t *w = (uint64_t *)page;
	size_t len;

	memset(page, 0, sizeof(page));
	ck_assert_int_eq(round_trip(page, ZBUD_LARGEST, &len), CODEC_SAME);
	ck_assert_uint_eq(len, 0);
	for (size_t i = 0; i < WORDS; i++)
		w[i] = 0xdeadbeefcafef00dull;
	ck_assert_int_eq(round_trip(page, ZBUD_LARGEST, &len), CODEC_SAME);
	w[WORDS - 1] ^= 1; /* one bit off: no longer same-filled */
	ck_assert_int_eq(round_trip(page, ZBUD_LARGEST, &len), CODEC_LZ4);
	ck_assert_uint_gt(len, 0);
}
END_TEST

START_TEST(test_codec_compressible)
{
	unsigned char page[PAGE];
	size_t len;

	fill_text(page);
	ck_assert_int_eq(round_trip(page, ZBUD_LARGEST, &len), CODEC_LZ4);
	ck_assert_uint_lt(len, PAGE / 8);
	fill_pointers(page);
	ck_assert_int_eq(round_trip(page, ZBUD_LARGEST, &len), CODEC_LZ4);
	ck_assert_uint_lt(len, PAGE * 3 / 4);
}
END_TEST

/* Random bytes do not compress: raw, whatever the limit. */
START_TEST(test_codec_incompressible)
{
	unsigned char page[PAGE];
	size_t len;

	fill_random(page, 7);
	ck_assert_int_eq(round_trip(page, ZBUD_LARGEST, &len), CODEC_RAW);
	ck_assert_uint_eq(len, PAGE);
	ck_assert_int_eq(round_trip(page, 1u << 20, &len), CODEC_RAW);
	/* A compressible page over a tight limit is raw too. */
	fill_pointers(page);
	ck_assert_int_eq(round_trip(page, 16, &len), CODEC_RAW);
	ck_assert_int_eq(round_trip(page, 0, &len), CODEC_RAW);
}
END_TEST

/* Damage is refused: a truncated stream, a raw page of the wrong length,
 * an unknown kind. LZ4 itself only notices a malformed stream; flipped
 * bytes that still parse decode to other bytes (which is why the swap
 * slots carry a CRC-32C), never to the original page. */
START_TEST(test_codec_refuses_damage)
{
	unsigned char page[PAGE], out[PAGE], back[PAGE];
	struct codec_info info, bad = { .kind = (enum codec_kind)42 };
	size_t len;

	fill_text(page);
	len = codec_pack(page, out, ZBUD_LARGEST, &info);
	ck_assert_int_eq(info.kind, CODEC_LZ4);
	ck_assert_int_eq(codec_unpack(&info, out, len - 1, back), -EIO);
	out[len / 2] ^= 0xff;
	out[1] ^= 0x5a;
	ck_assert(codec_unpack(&info, out, len, back) == -EIO || memcmp(back, page, PAGE) != 0);
	/* the same stream, undamaged again, still decodes */
	out[len / 2] ^= 0xff;
	out[1] ^= 0x5a;
	ck_assert_int_eq(codec_unpack(&info, out, len, back), 0);
	ck_assert_mem_eq(back, page, PAGE);
	info.kind = CODEC_RAW;
	ck_assert_int_eq(codec_unpack(&info, out, PAGE - 1, back), -EIO);
	ck_assert_int_eq(codec_unpack(&bad, out, len, back), -EINVAL);
}
END_TEST

static Suite *codec_suite(void)
{
	Suite *s = suite_create("codec");
	TCase *tc = tcase_create("codec");

	tcase_add_test(tc, test_codec_same_filled);
	tcase_add_test(tc, test_codec_compressible);
	tcase_add_test(tc, test_codec_incompressible);
	tcase_add_test(tc, test_codec_refuses_damage);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return th_main(&feat, codec_suite);
}

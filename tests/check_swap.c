/*
 * check_swap.c - the tier's swap file, for real: an O_TMPFILE file in /tmp,
 * written and read with io_uring.
 *
 * Pages go out in batches and come back byte for byte; a byte flipped in
 * the file itself, a wrong identity, an injected write or read error and a
 * full file each give their error, count it, and leave every other slot
 * readable and no slot leaked.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"

#define PAGE 4096u
#define SWAP_DIR "/tmp"
#define PAGES 256

static struct exch_features feat;

static void fill(unsigned char *p, unsigned seed)
{
	for (size_t i = 0; i < PAGE; i++)
		p[i] = (unsigned char)rand_r(&seed);
}

/* Writes @n pages from @data (seeded by index) in batches; slots to @slot. */
static void write_pages(struct swap_file *s, unsigned char (*data)[PAGE], unsigned n,
			uint32_t *slot)
{
	for (unsigned i = 0; i < n; i += SWAP_BATCH) {
		unsigned k = n - i < SWAP_BATCH ? n - i : SWAP_BATCH;
		const void *pages[SWAP_BATCH];
		size_t lens[SWAP_BATCH];
		uint64_t ids[SWAP_BATCH];

		for (unsigned j = 0; j < k; j++) {
			fill(data[i + j], i + j + 1);
			pages[j] = data[i + j];
			lens[j] = PAGE - (i + j) % 100; /* compressed lengths vary */
			ids[j] = 0x1000ull * (i + j + 1);
		}
		ck_assert_int_eq(swap_write(s, pages, lens, ids, k, &slot[i]), 0);
	}
}

static bool read_ok(struct swap_file *s, uint32_t slot, unsigned i, unsigned char (*data)[PAGE])
{
	unsigned char back[PAGE];
	size_t len = 0;

	return swap_read(s, slot, 0x1000ull * (i + 1), back, &len) == 0 &&
	       len == PAGE - i % 100 && !memcmp(back, data[i], len);
}

START_TEST(test_swap_round_trip)
{
	unsigned char (*data)[PAGE] = malloc(PAGES * PAGE);
	uint32_t slot[PAGES];
	struct swap_file *s;

	ck_assert_int_eq(swap_open(SWAP_DIR, 4 * MB, &s), 0);
	write_pages(s, data, PAGES, slot);
	ck_assert_uint_eq(th_stat("swap_pages_written"), PAGES);
	ck_assert_uint_eq(th_stat("swap_slots_used"), PAGES);
	for (unsigned i = 0; i < PAGES; i++)
		ck_assert(read_ok(s, slot[i], i, data));
	/* A batch is one run of slots: a sequential write. */
	for (unsigned i = 1; i < SWAP_BATCH; i++)
		ck_assert_uint_eq(slot[i], slot[0] + i);
	for (unsigned i = 0; i < PAGES; i += 2)
		swap_free(s, slot[i]);
	ck_assert_uint_eq(th_stat("swap_slots_used"), PAGES / 2);
	for (unsigned i = 1; i < PAGES; i += 2)
		ck_assert(read_ok(s, slot[i], i, data));
	swap_close(s);
	free(data);
}
END_TEST

/* A byte flipped in the file is caught; the other slots are fine. */
START_TEST(test_swap_detects_damage)
{
	unsigned char (*data)[PAGE] = malloc(8 * PAGE), back[PAGE], bad = 0;
	uint32_t slot[8];
	struct swap_file *s;
	size_t len;

	ck_assert_int_eq(swap_open(SWAP_DIR, MB, &s), 0);
	write_pages(s, data, 8, slot);
	ck_assert_int_eq(pread(swap_fd(s), &bad, 1, (off_t)slot[3] * PAGE + 77), 1);
	bad ^= 0x10;
	ck_assert_int_eq(pwrite(swap_fd(s), &bad, 1, (off_t)slot[3] * PAGE + 77), 1);
	ck_assert_int_eq(swap_read(s, slot[3], 0x1000ull * 4, back, &len), -EIO);
	ck_assert_uint_eq(th_stat("swap_mismatches"), 1);
	for (unsigned i = 0; i < 8; i++)
		if (i != 3)
			ck_assert(read_ok(s, slot[i], i, data));
	/* the wrong identity is refused too */
	ck_assert_int_eq(swap_read(s, slot[5], 0x1000ull * 9, back, &len), -EIO);
	ck_assert_uint_eq(th_stat("swap_mismatches"), 2);
	ck_assert_int_eq(swap_read(s, 1u << 30, 0, back, &len), -EINVAL);
	swap_close(s);
	free(data);
}
END_TEST

/* Injected errors: a failed batch takes no slot; a failed read is an error. */
START_TEST(test_swap_errors)
{
	unsigned char (*data)[PAGE] = malloc(4 * PAGE), back[PAGE];
	const void *pages[1];
	uint32_t slot[4], extra;
	size_t lens[1] = { PAGE }, len;
	uint64_t ids[1] = { 1 };
	struct swap_file *s;

	ck_assert_int_eq(swap_open(SWAP_DIR, 4 * PAGE, &s), 0);
	write_pages(s, data, 2, slot);
	pages[0] = data[0];
	swap_inject(s, -ENOSPC, 0);
	ck_assert_int_eq(swap_write(s, pages, lens, ids, 1, &extra), -ENOSPC);
	ck_assert_uint_eq(th_stat("swap_write_errors"), 1);
	ck_assert_uint_eq(th_stat("swap_slots_used"), 2);
	swap_inject(s, 0, -EIO);
	ck_assert_int_eq(swap_read(s, slot[0], 0x1000, back, &len), -EIO);
	ck_assert_uint_eq(th_stat("swap_read_errors"), 1);
	swap_inject(s, 0, 0);
	ck_assert(read_ok(s, slot[0], 0, data));
	/* Full: two slots left, three asked. */
	{
		const void *three[3] = { data[0], data[1], data[2] };
		size_t l3[3] = { PAGE, PAGE, PAGE };
		uint64_t i3[3] = { 1, 2, 3 };
		uint32_t s3[3];

		ck_assert_int_eq(swap_write(s, three, l3, i3, 3, s3), -ENOSPC);
		ck_assert_uint_eq(th_stat("swap_full"), 1);
		ck_assert_int_eq(swap_write(s, three, l3, i3, 2, s3), 0);
	}
	ck_assert(read_ok(s, slot[1], 1, data));
	swap_close(s);
	free(data);
}
END_TEST

START_TEST(test_swap_open_errors)
{
	struct swap_file *s;

	ck_assert_int_eq(swap_open("/nonexistent-dir", MB, &s), -ENOENT);
	ck_assert_int_eq(swap_open(SWAP_DIR, 0, &s), -EINVAL);
}
END_TEST

static Suite *swap_suite(void)
{
	Suite *s = suite_create("swap");
	TCase *tc = tcase_create("swap");

	tcase_set_timeout(tc, 60);
	if (!(feat.have & EXCH_HAVE_IO_URING)) {
		th_skip("swap file tests", "io_uring is not available");
		return s;
	}
	tcase_add_test(tc, test_swap_round_trip);
	tcase_add_test(tc, test_swap_detects_damage);
	tcase_add_test(tc, test_swap_errors);
	tcase_add_test(tc, test_swap_open_errors);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return th_main(&feat, swap_suite);
}

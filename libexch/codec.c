/*
 * codec.c - how the compressed tier stores one 4K page.
 *
 * Three encodings, cheapest first:
 *
 *   SAME  every 64-bit word of the page is the same (zeros above all):
 *         the page is that one word and takes no pool space at all.
 *   LZ4   LZ4 (liblz4, its fast default level) into at most @limit bytes,
 *         which the caller sets from what it can store well: the tier
 *         passes zbud's largest object, or less to keep the pool dense.
 *   RAW   LZ4 would not fit in @limit: the page is stored as it is (the
 *         tier sends such pages to the swap file rather than the pool).
 *
 * Decoding checks what it can: an LZ4 stream that does not decode to
 * exactly one page is -EIO, never a partly written page passed off as
 * data. The functions keep no state and are safe from any thread.
 */
#include "config.h"

#include <errno.h>
#include <lz4.h>
#include <string.h>

#include "internal.h"

#define CODEC_WORDS (PAGE_SIZE_4K / sizeof(uint64_t))

/* Is every word of @page equal to its first? Then *@word is it. */
static bool codec_same_filled(const void *page, uint64_t *word)
{
	const uint64_t *w = page;
	uint64_t first = w[0], diff = 0;

	for (size_t i = 1; i < CODEC_WORDS; i++)
		diff |= w[i] ^ first;
	*word = first;
	return diff == 0;
}

size_t codec_pack(const void *page, void *out, size_t limit, struct codec_info *info)
{
	int n;

	if (codec_same_filled(page, &info->word)) {
		info->kind = CODEC_SAME;
		return 0;
	}
	if (limit > PAGE_SIZE_4K)
		limit = PAGE_SIZE_4K;
	n = limit ? LZ4_compress_default(page, out, (int)PAGE_SIZE_4K, (int)limit) : 0;
	if (n > 0) {
		info->kind = CODEC_LZ4;
		return (size_t)n;
	}
	info->kind = CODEC_RAW;
	memcpy(out, page, PAGE_SIZE_4K);
	return PAGE_SIZE_4K;
}

int codec_unpack(const struct codec_info *info, const void *in, size_t len, void *page)
{
	uint64_t *w = page;

	switch (info->kind) {
	case CODEC_SAME:
		for (size_t i = 0; i < CODEC_WORDS; i++)
			w[i] = info->word;
		return 0;
	case CODEC_LZ4:
		if (len > (size_t)LZ4_compressBound((int)PAGE_SIZE_4K) ||
		    LZ4_decompress_safe(in, page, (int)len, (int)PAGE_SIZE_4K) != (int)PAGE_SIZE_4K)
			return -EIO;
		return 0;
	case CODEC_RAW:
		if (len != PAGE_SIZE_4K)
			return -EIO;
		memcpy(page, in, PAGE_SIZE_4K);
		return 0;
	}
	return -EINVAL;
}

/*
 * xcopy_crc.c - CRC-32C with the SSE4.2 CRC32 instruction, for the
 * variants whose level has it (xcopy_avx2.c, xcopy_avx512.c).
 *
 * Why it is a file of its own. The CRC needs SSE4.2 and nothing wider, and
 * it is the same code whatever vector width the copy kernels use. Compiled
 * once with -msse4.2, it serves every variant from AVX2 up through
 * xcopy_crc32c_hw(); the variants below (scalar, SSE2) use the slice-by-8
 * xcopy_crc32c_sw() of xcopy_scalar.c instead.
 *
 * Contract. xcopy_crc32c_hw(crc, p, len) returns the same value as
 * xcopy_crc32c_sw(): CRC-32C (Castagnoli) of @len bytes at @p, continuing
 * from the CRC @crc of what came before (0 to start), for any length and
 * alignment. It must only run where CPUID reports SSE4.2; xcopy.c selects
 * the AVX2 and AVX-512 variants only then.
 *
 * The 3-way interleave. One CRC32 instruction has a latency of three cycles
 * but a throughput of one per cycle, so a single dependent chain runs at a
 * third of the possible speed. Large buffers are cut into three adjacent
 * streams A, B, C of equal length L, whose CRCs are computed side by side
 * in one loop: three independent chains keep the unit busy every cycle.
 *
 * The combine. The three results are joined with
 *     crc(A B C) = Z(Z(crc(A)) ^ crc(B)) ^ crc(C),
 * where crc(A) continues from the running register, crc(B) and crc(C)
 * start from 0, and Z is "append L zero bytes" to the raw CRC register.
 * Z is linear over GF(2), so it is a 32x32 bit matrix; it is applied here
 * as four 256-entry tables, one per register byte, whose entries XOR
 * together. The tables for the two stream lengths used (CRC_LONG,
 * CRC_SHORT) are built once on first use (pthread_once), by running the
 * CRC32 instruction over L zero bytes from each of the 32 single-bit
 * registers. CRC_LONG amortises the combine (eight table lookups) over
 * 24 KiB; CRC_SHORT keeps the interleave for what is left, from 768 bytes
 * up. The rest, shorter than three short streams, goes through one chain,
 * eight bytes and then one byte at a time.
 */
#include "config.h"

#include <nmmintrin.h>
#include <string.h>

#include "internal.h"

#define CRC_STREAMS 3
#define CRC_LONG ((size_t)8192) /* bytes per stream, large buffers */
#define CRC_SHORT ((size_t)256) /* bytes per stream, the rest */
#define CRC_REG_BITS 32
#define CRC_REG_BYTES 4
#define CRC_BYTE_BITS 8
#define CRC_BYTE_VALUES 256
#define CRC_BYTE_MASK 0xFFu

/* Z for one stream length: t[k][v] = Z(v << 8k). */
struct crc_zeros {
	uint32_t t[CRC_REG_BYTES][CRC_BYTE_VALUES];
};

/* Written once, by crc_init() under crc_once; read-only afterwards. */
static struct crc_zeros crc_zeros_long, crc_zeros_short;
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static inline uint64_t crc_load64(const unsigned char *p)
{
	uint64_t w;

	memcpy(&w, p, sizeof(w));
	return w;
}

static void crc_zeros_build(struct crc_zeros *z, size_t len)
{
	uint32_t basis[CRC_REG_BITS];

	for (int bit = 0; bit < CRC_REG_BITS; bit++) {
		uint64_t c = (uint64_t)1 << bit;

		for (size_t i = 0; i < len; i += sizeof(uint64_t))
			c = _mm_crc32_u64(c, 0);
		basis[bit] = (uint32_t)c;
	}
	for (int k = 0; k < CRC_REG_BYTES; k++)
		for (unsigned v = 0; v < CRC_BYTE_VALUES; v++) {
			uint32_t x = 0;

			for (int bit = 0; bit < CRC_BYTE_BITS; bit++)
				if (v & (1u << bit))
					x ^= basis[k * CRC_BYTE_BITS + bit];
			z->t[k][v] = x;
		}
}

static void crc_init(void)
{
	crc_zeros_build(&crc_zeros_long, CRC_LONG);
	crc_zeros_build(&crc_zeros_short, CRC_SHORT);
}

static uint32_t crc_shift(const struct crc_zeros *z, uint32_t c)
{
	return z->t[0][c & CRC_BYTE_MASK] ^
	       z->t[1][(c >> CRC_BYTE_BITS) & CRC_BYTE_MASK] ^
	       z->t[2][(c >> (2 * CRC_BYTE_BITS)) & CRC_BYTE_MASK] ^
	       z->t[3][c >> (3 * CRC_BYTE_BITS)];
}

/* Raw register @c over three adjacent streams of @len bytes at @p. */
static uint32_t crc_3way(uint32_t c, const unsigned char *p, size_t len,
			 const struct crc_zeros *z)
{
	uint64_t c0 = c, c1 = 0, c2 = 0;

	for (size_t i = 0; i < len; i += sizeof(uint64_t)) {
		c0 = _mm_crc32_u64(c0, crc_load64(p + i));
		c1 = _mm_crc32_u64(c1, crc_load64(p + len + i));
		c2 = _mm_crc32_u64(c2, crc_load64(p + 2 * len + i));
	}
	c = crc_shift(z, (uint32_t)c0) ^ (uint32_t)c1;
	return crc_shift(z, c) ^ (uint32_t)c2;
}

uint32_t xcopy_crc32c_hw(uint32_t crc, const void *p, size_t len)
{
	const unsigned char *s = p;
	uint32_t c = ~crc;
	uint64_t c64;

	pthread_once(&crc_once, crc_init);
	for (; len >= CRC_STREAMS * CRC_LONG; len -= CRC_STREAMS * CRC_LONG) {
		c = crc_3way(c, s, CRC_LONG, &crc_zeros_long);
		s += CRC_STREAMS * CRC_LONG;
	}
	for (; len >= CRC_STREAMS * CRC_SHORT; len -= CRC_STREAMS * CRC_SHORT) {
		c = crc_3way(c, s, CRC_SHORT, &crc_zeros_short);
		s += CRC_STREAMS * CRC_SHORT;
	}
	for (c64 = c; len >= sizeof(uint64_t); len -= sizeof(uint64_t)) {
		c64 = _mm_crc32_u64(c64, crc_load64(s));
		s += sizeof(uint64_t);
	}
	for (c = (uint32_t)c64; len; len--)
		c = _mm_crc32_u8(c, *s++);
	return ~c;
}

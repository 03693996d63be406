/*
 * xcopy.c - the exchange engine: which SIMD variant runs, and the public
 * copy, exchange, zero, zero-test and CRC-32C calls.
 *
 * Why it exists. libexch moves and clears memory in 2 MB regions. A plain
 * memcpy is tuned for copies whose destination is read again soon; the
 * library's copies mostly fill memory that nobody touches for a while (a
 * region being moved, a frame being cleared), and swapping two regions
 * through a buffer costs three copies. The engine gives those callers:
 *   - non-temporal copy and zero, which write around the cache: no read for
 *     ownership of the destination and no eviction of the caller's data;
 *   - exchange, which swaps two ranges in one pass (load both, store both)
 *     instead of three copies through a temporary buffer;
 *   - a zero test and CRC-32C, to verify frames and pages cheaply.
 *
 * Variants. Each set of kernels is one struct xcopy_ops (internal.h) in its
 * own file, compiled with the flags of its level: xcopy_scalar.c,
 * xcopy_sse2.c, xcopy_avx2.c, xcopy_avx512.c. This file is compiled for the
 * x86-64 baseline, so no instruction of a higher level can run before the
 * level has been checked. It only decides:
 *   - xcopy_cpu_level(): CPUID says which instructions exist, XGETBV says
 *     which register state the OS saves on a context switch. AVX2 needs the
 *     XMM and YMM state, and SSE4.2 for its CRC-32C (xcopy_crc.c, shared
 *     with AVX-512); AVX-512 (F, BW and VL) also needs the opmask state and
 *     both parts of the ZMM state. Instructions whose registers the OS does
 *     not save must not be used.
 *   - xcopy_ops(): the variant in use, chosen once (pthread_once). EXCH_SIMD
 *     forces a level; a level this CPU cannot run is refused with a warning
 *     that names the level used instead (the best one), and the choice is
 *     kept for the life of the process.
 *   - xcopy_nt_threshold(): from which size EXCH_HINT_AUTO goes
 *     non-temporal. EXCH_NT_THRESHOLD when set; else this core's share of
 *     the last-level cache (a copy larger than that evicts the caller's
 *     working set whatever we do), at most 1 MiB, 1 MiB when the cache is
 *     unknown, and never less than 256 KiB. Derived once, on first use.
 *
 * Contract of the public calls (include/exch.h): they validate their
 * arguments, count a refusal in the misuse counter, and run the kernel of
 * the chosen variant. They do not start the rest of the library (no fault
 * service, no arenas): the engine works on any memory, before and without
 * exch_init(). Kernels never fail; a call that returns -EINVAL has not
 * touched memory.
 */
#include "config.h"

#include <cpuid.h>
#include <errno.h>
#include <string.h>

#include "internal.h"

/* EXCH_HINT_COLD streams only when a copy spans whole pages. */
#define XCOPY_COLD_NT_MIN ((size_t)4 << 10)
/* Floor and fallback of the EXCH_HINT_AUTO threshold. */
#define XCOPY_NT_THRESHOLD_MIN ((size_t)256 << 10)
#define XCOPY_LLC_SHARE_UNKNOWN ((size_t)1 << 20)
/*
 * Cap of the LLC share. A VM may report the host's whole L3 as its own
 * (480 MB on the machine this was measured on), and the share would then
 * keep copies of hundreds of MB temporal. Even a true share is too high:
 * measured there, a 2 MB non-temporal copy beats a temporal one even when
 * the destination is cached (19 against 15 GB/s), and at 64 MB by far
 * (13.7 against 7.7 GB/s). EXCH_NT_THRESHOLD still overrides it.
 */
#define XCOPY_LLC_SHARE_MAX ((size_t)1 << 20)

/* CPUID leaf 1 and leaf 7 (sub-leaf 0) feature bits. */
#define XCOPY_CPUID_BASIC 1u
#define XCOPY_CPUID_EXTENDED 7u
#define XCOPY_CPUID1_EDX_SSE2 (1u << 26)
#define XCOPY_CPUID1_ECX_SSE42 (1u << 20)
#define XCOPY_CPUID1_ECX_OSXSAVE (1u << 27)
#define XCOPY_CPUID1_ECX_AVX (1u << 28)
#define XCOPY_CPUID7_EBX_AVX2 (1u << 5)
#define XCOPY_CPUID7_EBX_AVX512F (1u << 16)
#define XCOPY_CPUID7_EBX_AVX512BW (1u << 30)
#define XCOPY_CPUID7_EBX_AVX512VL (1u << 31)

/* XCR0 state components the OS must enable (saved on context switch). */
#define XCOPY_XCR0_XMM (1u << 1)
#define XCOPY_XCR0_YMM (1u << 2)
#define XCOPY_XCR0_OPMASK (1u << 5)
#define XCOPY_XCR0_ZMM_HI256 (1u << 6)
#define XCOPY_XCR0_HI16_ZMM (1u << 7)
#define XCOPY_XCR0_AVX (XCOPY_XCR0_XMM | XCOPY_XCR0_YMM)
#define XCOPY_XCR0_AVX512                                                      \
	(XCOPY_XCR0_AVX | XCOPY_XCR0_OPMASK | XCOPY_XCR0_ZMM_HI256 |           \
	 XCOPY_XCR0_HI16_ZMM)

/* Indexed by enum exch_simd, lowest level first. */
static const struct xcopy_ops *const xcopy_all[] = {
	[EXCH_SIMD_SCALAR] = &xcopy_scalar_ops,
	[EXCH_SIMD_SSE2] = &xcopy_sse2_ops,
	[EXCH_SIMD_AVX2] = &xcopy_avx2_ops,
	[EXCH_SIMD_AVX512] = &xcopy_avx512_ops,
};
#define XCOPY_LEVELS (sizeof(xcopy_all) / sizeof(xcopy_all[0]))

/* Each written once, by the pthread_once routine above it. */
static pthread_once_t xcopy_ops_once = PTHREAD_ONCE_INIT;
static const struct xcopy_ops *xcopy_chosen;
static pthread_once_t xcopy_threshold_once = PTHREAD_ONCE_INIT;
static size_t xcopy_threshold;

/* XCR0; only valid when CPUID reports OSXSAVE. */
static uint64_t xcopy_xcr0(void)
{
	uint32_t lo, hi;

	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return ((uint64_t)hi << 32) | lo;
}

enum exch_simd xcopy_cpu_level(void)
{
	unsigned a1, b1, c1, d1, a7, b7, c7, d7;
	uint64_t xcr0;

	if (!__get_cpuid(XCOPY_CPUID_BASIC, &a1, &b1, &c1, &d1) ||
	    !(d1 & XCOPY_CPUID1_EDX_SSE2))
		return EXCH_SIMD_SCALAR;
	if (!(c1 & XCOPY_CPUID1_ECX_OSXSAVE) || !(c1 & XCOPY_CPUID1_ECX_AVX) ||
	    !(c1 & XCOPY_CPUID1_ECX_SSE42) ||
	    !__get_cpuid_count(XCOPY_CPUID_EXTENDED, 0, &a7, &b7, &c7, &d7))
		return EXCH_SIMD_SSE2;
	xcr0 = xcopy_xcr0();
	if ((xcr0 & XCOPY_XCR0_AVX) != XCOPY_XCR0_AVX ||
	    !(b7 & XCOPY_CPUID7_EBX_AVX2))
		return EXCH_SIMD_SSE2;
	if ((xcr0 & XCOPY_XCR0_AVX512) != XCOPY_XCR0_AVX512 ||
	    !(b7 & XCOPY_CPUID7_EBX_AVX512F) ||
	    !(b7 & XCOPY_CPUID7_EBX_AVX512BW) ||
	    !(b7 & XCOPY_CPUID7_EBX_AVX512VL))
		return EXCH_SIMD_AVX2;
	return EXCH_SIMD_AVX512;
}

const struct xcopy_ops *xcopy_variant(enum exch_simd level)
{
	if ((unsigned)level >= XCOPY_LEVELS || level > xcopy_cpu_level())
		return NULL;
	return xcopy_all[level];
}

static void xcopy_choose(void)
{
	enum exch_simd best = xcopy_cpu_level();
	const char *want = opt_str(OPT_SIMD);

	xcopy_chosen = xcopy_all[best];
	if (want[0] == '\0')
		return;
	for (unsigned level = 0; level < XCOPY_LEVELS; level++) {
		if (strcmp(want, xcopy_all[level]->name) != 0)
			continue;
		if (level <= (unsigned)best)
			xcopy_chosen = xcopy_all[level];
		else
			log_warn("EXCH_SIMD=%s: not supported by this CPU, using %s",
				 want, xcopy_chosen->name);
		return;
	}
}

const struct xcopy_ops *xcopy_ops(void)
{
	pthread_once(&xcopy_ops_once, xcopy_choose);
	return xcopy_chosen;
}

static void xcopy_derive_threshold(void)
{
	const struct topo *t;
	size_t share = XCOPY_LLC_SHARE_UNKNOWN;
	long long forced = opt_get(OPT_NT_THRESHOLD);

	if (forced > 0) {
		xcopy_threshold = (size_t)forced;
		return;
	}
	t = topo_get();
	if (t->llc_bytes != 0 && t->llc_cpus != 0)
		share = t->llc_bytes / t->llc_cpus;
	if (share > XCOPY_LLC_SHARE_MAX)
		share = XCOPY_LLC_SHARE_MAX;
	xcopy_threshold = share < XCOPY_NT_THRESHOLD_MIN ? XCOPY_NT_THRESHOLD_MIN
							 : share;
}

size_t xcopy_nt_threshold(void)
{
	pthread_once(&xcopy_threshold_once, xcopy_derive_threshold);
	return xcopy_threshold;
}

/* ---- public calls ---- */

static bool xcopy_hint_valid(enum exch_hint hint)
{
	return hint == EXCH_HINT_AUTO || hint == EXCH_HINT_COLD ||
	       hint == EXCH_HINT_HOT;
}

/* Whether [a, a+len) and [b, b+len) share a byte; never wraps around. */
static bool xcopy_overlap(const void *a, const void *b, size_t len)
{
	uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;

	return (x > y ? x - y : y - x) < len;
}

static bool xcopy_want_nt(enum exch_hint hint, size_t len)
{
	switch (hint) {
	case EXCH_HINT_HOT:
		return false;
	case EXCH_HINT_COLD:
		return len >= XCOPY_COLD_NT_MIN;
	case EXCH_HINT_AUTO:
		return len >= xcopy_nt_threshold();
	}
	return false;
}

static int xcopy_refuse(void)
{
	stat_inc(STAT_misuse);
	return -EINVAL;
}

int exch_copy(void *dst, const void *src, size_t len, enum exch_hint hint)
{
	const struct xcopy_ops *ops;

	if (!xcopy_hint_valid(hint) || xcopy_overlap(dst, src, len))
		return xcopy_refuse();
	if (len == 0)
		return 0;
	ops = xcopy_ops();
	if (xcopy_want_nt(hint, len))
		ops->copy_nt(dst, src, len);
	else
		ops->copy_t(dst, src, len);
	return 0;
}

int exch_exchange(void *a, void *b, size_t len)
{
	if (a == b)
		return 0;
	if (xcopy_overlap(a, b, len))
		return xcopy_refuse();
	if (len != 0)
		xcopy_ops()->exchange(a, b, len);
	return 0;
}

int exch_zero(void *dst, size_t len, enum exch_hint hint)
{
	const struct xcopy_ops *ops;

	if (!xcopy_hint_valid(hint))
		return xcopy_refuse();
	if (len == 0)
		return 0;
	ops = xcopy_ops();
	if (xcopy_want_nt(hint, len))
		ops->zero_nt(dst, len);
	else
		ops->zero_t(dst, len);
	return 0;
}

int exch_is_zero(const void *p, size_t len)
{
	return xcopy_ops()->is_zero(p, len) ? 1 : 0;
}

uint32_t exch_crc32c(uint32_t crc, const void *p, size_t len)
{
	return xcopy_ops()->crc32c(crc, p, len);
}

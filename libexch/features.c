/*
 * features.c - what this kernel and CPU can do, decided at run time.
 *
 * The build machine is not the run machine, so nothing is assumed from
 * headers: every feature is asked of the running kernel once, at start.
 *
 *   userfaultfd  opened with userfaultfd(2), else through /dev/userfaultfd,
 *                else with UFFD_USER_MODE_ONLY; its feature bits come from a
 *                UFFDIO_API handshake on a probe fd.
 *   PAGEMAP_SCAN one ioctl on /proc/self/pagemap over an empty range.
 *   madvise      MADV_COLLAPSE and MADV_POPULATE_WRITE with length 0: the
 *                kernel validates the advice before it looks at the range,
 *                so an unknown advice is EINVAL and a known one is 0.
 *   THP mode     /sys/kernel/mm/transparent_hugepage/enabled.
 *   io_uring     io_uring_setup(2) of a one-entry ring.
 *   SIMD         CPUID and XGETBV (xcopy.c).
 *
 * Then the policy: each missing feature turns off exactly what depends on it,
 * and says so in one line naming both, counted in the `degraded` stat.
 *   - no userfaultfd, or only user-mode-only: arenas are plain mappings with
 *     MADV_HUGEPAGE (the kernel's THP fault). User-mode-only is refused for
 *     arenas because a kernel access to a never-touched page, such as read(2)
 *     into a fresh buffer, would fail with EFAULT instead of being served.
 *   - no UFFDIO_MOVE or no THP: no hugepage-first; first touches get 4K
 *     pages through userfaultfd.
 *   - no PAGEMAP_SCAN: pool frames are used without the check that they are
 *     still huge.
 *   - no MADV_POPULATE_WRITE: the pool refills frames by touching them.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/* UFFD features the library enables on its fd when the kernel offers them. */
#define FEAT_UFFD_WANT (UFFD_FEATURE_MOVE | UFFD_FEATURE_PAGEFAULT_FLAG_WP | \
			UFFD_FEATURE_THREAD_ID | UFFD_FEATURE_POISON)

static bool feat_madvise_known(int advice)
{
	static char probe[1] __attribute__((aligned(4096)));

	return prim_madvise(probe, 0, advice) == 0;
}

static bool feat_pagemap_scan(void)
{
	struct page_region r;
	int fd = prim_pagemap_open();
	long n;

	if (fd < 0)
		return false;
	n = prim_pagemap_scan(fd, (void *)PAGE_SIZE_4K, (void *)(2 * PAGE_SIZE_4K),
			      0, 0, 0, PAGE_IS_PRESENT, &r, 1);
	close(fd);
	return n >= 0;
}

/* Opens the uffd: full mode if allowed, else user-mode-only; fills @f. */
static int feat_uffd_open(struct exch_features *f)
{
	enum exch_uffd_source src = EXCH_UFFD_SRC_NONE;
	int fd = prim_uffd_open(false, true, &src);

	f->uffd_mode = EXCH_UFFD_FULL;
	if (fd < 0) {
		fd = prim_uffd_open(true, false, &src);
		f->uffd_mode = fd < 0 ? EXCH_UFFD_NONE : EXCH_UFFD_USER_ONLY;
	}
	f->uffd_source = fd < 0 ? EXCH_UFFD_SRC_NONE : src;
	return fd;
}

/* Probe handshake: which features does the kernel offer? */
static uint64_t feat_uffd_kernel_features(struct exch_features *f, int *fdp)
{
	uint64_t offered = 0;

	if (prim_uffd_api(*fdp, 0, &offered) < 0)
		return 0;
	/* UFFDIO_API may be done once per fd: the real fd is a new one. */
	close(*fdp);
	*fdp = feat_uffd_open(f);
	return offered;
}

static void feat_have(struct exch_features *f)
{
	uint64_t k = f->uffd_kernel_features;

	if (k & UFFD_FEATURE_MOVE)
		f->have |= EXCH_HAVE_UFFD_MOVE;
	if (k & UFFD_FEATURE_PAGEFAULT_FLAG_WP)
		f->have |= EXCH_HAVE_UFFD_WP;
	if (k & UFFD_FEATURE_WP_ASYNC)
		f->have |= EXCH_HAVE_UFFD_WP_ASYNC;
	if (k & UFFD_FEATURE_POISON)
		f->have |= EXCH_HAVE_UFFD_POISON;
	if (feat_pagemap_scan())
		f->have |= EXCH_HAVE_PAGEMAP_SCAN;
	if (feat_madvise_known(MADV_COLLAPSE))
		f->have |= EXCH_HAVE_MADV_COLLAPSE;
	if (feat_madvise_known(MADV_POPULATE_WRITE))
		f->have |= EXCH_HAVE_POPULATE_WRITE;
	if (prim_io_uring_probe() == 0)
		f->have |= EXCH_HAVE_IO_URING;
}

static void feat_degrade(const char *missing, const char *effect)
{
	log_warn("%s: %s", missing, effect);
	stat_inc(STAT_degraded);
}

/* Decides what the library turns on; returns the fd arenas use, or -1. */
static int feat_policy(struct exch_features *f, int fd)
{
	if (!opt_get(OPT_UFFD)) {
		log_info("EXCH_UFFD=0: arenas are plain THP-backed memory");
	} else if (f->uffd_mode == EXCH_UFFD_NONE) {
		feat_degrade("userfaultfd unavailable",
			     "arenas are plain THP-backed memory, hugepage-first off");
	} else if (f->uffd_mode == EXCH_UFFD_USER_ONLY) {
		feat_degrade("userfaultfd is user-mode-only (needs CAP_SYS_PTRACE, "
			     "/dev/userfaultfd or vm.unprivileged_userfaultfd=1)",
			     "arenas are plain THP-backed memory, hugepage-first off");
	} else if (prim_uffd_api(fd, f->uffd_kernel_features & FEAT_UFFD_WANT, NULL) < 0) {
		feat_degrade("UFFDIO_API handshake failed",
			     "arenas are plain THP-backed memory, hugepage-first off");
	} else {
		f->on |= EXCH_ON_ARENA_UFFD;
	}
	if (!(f->on & EXCH_ON_ARENA_UFFD)) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (!(f->have & EXCH_HAVE_UFFD_MOVE))
		feat_degrade("UFFDIO_MOVE unavailable", "hugepage-first off, 4K pages on first touch");
	else if (f->thp_mode == EXCH_THP_NEVER || f->thp_mode == EXCH_THP_UNKNOWN)
		feat_degrade("transparent hugepages disabled",
			     "hugepage-first off, 4K pages on first touch");
	else if (opt_get(OPT_THP) == 0)
		f->on |= EXCH_ON_HUGE_FIRST;
	else
		log_info("EXCH_THP=never: 4K pages on first touch");
	if (f->on & EXCH_ON_HUGE_FIRST) {
		if (f->have & EXCH_HAVE_PAGEMAP_SCAN)
			f->on |= EXCH_ON_FRAME_VERIFY;
		else
			feat_degrade("PAGEMAP_SCAN unavailable",
				     "pool frames are not checked huge before use");
		if (!(f->have & EXCH_HAVE_POPULATE_WRITE))
			feat_degrade("MADV_POPULATE_WRITE unavailable",
				     "the frame pool refills by touching each page");
	}
	return fd;
}

int feat_reopen(const struct exch_features *f)
{
	enum exch_uffd_source src;
	int fd = prim_uffd_open(false, true, &src);
	int rc;

	if (fd < 0)
		return fd;
	rc = prim_uffd_api(fd, f->uffd_kernel_features & FEAT_UFFD_WANT, NULL);
	if (rc < 0) {
		close(fd);
		return rc;
	}
	return fd;
}

int feat_probe(struct exch_features *f)
{
	const struct topo *t = topo_get();
	int fd;

	memset(f, 0, sizeof(*f));
	f->thp_mode = prim_thp_mode();
	f->cpus = t->cpus;
	f->numa_nodes = t->numa_nodes;
	f->llc_bytes = t->llc_bytes;
	f->simd_cpu = xcopy_cpu_level();
	f->simd_used = xcopy_ops()->level;
	f->nt_threshold = xcopy_nt_threshold();
	fd = feat_uffd_open(f);
	if (fd >= 0)
		f->uffd_kernel_features = feat_uffd_kernel_features(f, &fd);
	feat_have(f);
	return feat_policy(f, fd);
}

const char *exch_simd_name(enum exch_simd level)
{
	static const char *const names[] = { "scalar", "sse2", "avx2", "avx512" };

	return (unsigned)level < 4 ? names[level] : "?";
}

void exch_features_print(FILE *out)
{
	feat_print(out, exch_features());
}

void feat_print(FILE *out, const struct exch_features *f)
{
	static const char *const modes[] = { "none", "user-mode-only", "full" };
	static const char *const srcs[] = { "", " via syscall", " via /dev/userfaultfd" };
	static const char *const thp[] = { "unknown", "always", "madvise", "never" };

	fprintf(out, "libexch: uffd=%s%s move=%d wp=%d wp_async=%d poison=%d "
		"pagemap_scan=%d collapse=%d populate_write=%d io_uring=%d thp=%s "
		"simd=%s(cpu %s) nodes=%u cpus=%u llc=%zuK nt>=%zuK | arenas=%s "
		"hugepage-first=%s frame-verify=%s\n",
		modes[f->uffd_mode], srcs[f->uffd_source],
		!!(f->have & EXCH_HAVE_UFFD_MOVE), !!(f->have & EXCH_HAVE_UFFD_WP),
		!!(f->have & EXCH_HAVE_UFFD_WP_ASYNC),
		!!(f->have & EXCH_HAVE_UFFD_POISON),
		!!(f->have & EXCH_HAVE_PAGEMAP_SCAN),
		!!(f->have & EXCH_HAVE_MADV_COLLAPSE),
		!!(f->have & EXCH_HAVE_POPULATE_WRITE),
		!!(f->have & EXCH_HAVE_IO_URING), thp[f->thp_mode],
		exch_simd_name(f->simd_used), exch_simd_name(f->simd_cpu),
		f->numa_nodes, f->cpus, f->llc_bytes >> 10, f->nt_threshold >> 10,
		(f->on & EXCH_ON_ARENA_UFFD) ? "uffd" : "plain",
		(f->on & EXCH_ON_HUGE_FIRST) ? "on" : "off",
		(f->on & EXCH_ON_FRAME_VERIFY) ? "on" : "off");
}

/* "1G", "256K": sizes in the words the settings use. */
static void feat_size(size_t v, char *buf, size_t size)
{
	static const char units[] = "BKMGT";
	int u = 0;

	while (v >= 1024 && v % 1024 == 0 && u < 4) {
		v /= 1024;
		u++;
	}
	snprintf(buf, size, "%zu%c", v, units[u]);
}

/*
 * EXCH_VERBOSE=1 at start: what is on, one line a subsystem. What fell
 * back has already said why in its own warning (feat_policy), and the
 * threads that start later (coalescer, limit, publisher) say so themselves.
 */
#define FEAT_HUGE_ORDER 9 /* a 2 MB block */
#define FEAT_REPORTING_ORDER "/sys/module/page_reporting/parameters/page_reporting_order"

/* The guest's free page reporting order, or -1 without reporting. */
static int feat_reporting_order(void)
{
	char buf[16] = "";
	int fd = open(FEAT_REPORTING_ORDER, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;

	if (fd >= 0)
		close(fd);
	return n > 0 && buf[0] >= '0' && buf[0] <= '9' ? atoi(buf) : -1;
}

void feat_explain(const struct exch_features *f)
{
	static const char *const srcs[] = { "", " (the syscall)", " (/dev/userfaultfd)" };
	static const char *const thp[] = { "unknown", "always", "madvise", "never" };
	char pool[16], swap[16], nt[16];
	const char *dir = opt_str(OPT_SWAP_DIR);

	log_info("version %d.%d.%d in pid %d: %u CPUs, %u NUMA node(s), THP %s",
		 EXCH_VERSION_MAJOR, EXCH_VERSION_MINOR, EXCH_VERSION_PATCH, (int)getpid(),
		 f->cpus, f->numa_nodes, thp[f->thp_mode]);
	if (f->on & EXCH_ON_ARENA_UFFD)
		log_info("arenas: served through userfaultfd%s; UFFDIO_MOVE %s, write-protect %s, "
			 "poison %s, PAGEMAP_SCAN %s", srcs[f->uffd_source],
			 f->have & EXCH_HAVE_UFFD_MOVE ? "yes" : "no",
			 f->have & EXCH_HAVE_UFFD_WP ? "yes" : "no",
			 f->have & EXCH_HAVE_UFFD_POISON ? "yes" : "no",
			 f->have & EXCH_HAVE_PAGEMAP_SCAN ? "yes" : "no");
	else
		log_info("arenas: plain memory with the kernel's THP; no hugepage-first, "
			 "coalescing or tier");
	if (f->on & EXCH_ON_HUGE_FIRST) {
		int order = feat_reporting_order();

		log_info("hugepage-first: on, first touches get a pre-zeroed 2 MB frame%s",
			 f->on & EXCH_ON_FRAME_VERIFY ? " checked PMD-mapped" : "");
		if (order >= 0 && order <= FEAT_HUGE_ORDER)
			log_info("host: this virtual machine gives free blocks of 2^%d pages back "
				 "to its host (page_reporting_order): a frame taken from one costs "
				 "the host's faults, and frames come slower (pool_populate_us)",
				 order);
	}
	else if (f->on & EXCH_ON_ARENA_UFFD)
		log_info("hugepage-first: off, 4K pages on first touch (coalescing can still "
			 "make hugepages)");
	feat_size(f->nt_threshold, nt, sizeof(nt));
	log_info("exchange copies: %s (the CPU runs %s), non-temporal from %s",
		 exch_simd_name(f->simd_used), exch_simd_name(f->simd_cpu), nt);
	if (!(f->on & EXCH_ON_ARENA_UFFD))
		return;
	feat_size((size_t)opt_get(OPT_TIER_MAX), pool, sizeof(pool));
	feat_size((size_t)opt_get(OPT_SWAP_MAX), swap, sizeof(swap));
	if (!(f->have & EXCH_HAVE_IO_URING) || !opt_get(OPT_SWAP_MAX))
		log_info("tier: compressed pool up to %s; no swap file (%s)", pool,
			 opt_get(OPT_SWAP_MAX) ? "no io_uring" : "EXCH_SWAP_MAX=0");
	else
		log_info("tier: compressed pool up to %s, then a swap file in %s up to %s "
			 "(io_uring)", pool, *dir ? dir : TIER_SWAP_DIR_DEFAULT, swap);
	if (!opt_get(OPT_LIMIT))
		log_info("resident limit: none (EXCH_LIMIT sets one); pages are evicted only "
			 "when the program asks");
	if (!opt_get(OPT_COALESCE))
		log_info("background coalescer: off (EXCH_COALESCE=1 starts it)");
}

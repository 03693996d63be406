/*
 * exchstat - a running process's libexch state, live.
 *
 *   exchstat               one line per process of this user using libexch
 *   exchstat PID           a row every second, like vmstat: memory, hugepage
 *                          coverage, tier, swap, and the rates of faults,
 *                          coalescing, evictions, restores and fallbacks
 *   exchstat -a PID        every counter once, with its reason
 *   exchstat -j PID        every counter once, as JSON
 *   -i SECONDS             the interval (default 1; fractions allowed)
 *   -c COUNT               stop after COUNT rows
 *
 * It reads the segment each process publishes (libexch/publish.h): it asks
 * the process for a fresh copy through the segment's futex and reads the
 * copy under its sequence count. The first row's rates are averages since
 * the library started in that process, as vmstat's first row is since boot.
 * Segments of processes that are gone are removed when the list is shown.
 *
 * Exit status: 0, 1 when the process cannot be read, 2 on a usage error.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "publish.h"

#define EXCHSTAT_ANSWER_MS 1000 /* how long a process has to answer */
#define EXCHSTAT_HEADER_EVERY 20
#define EXCHSTAT_PAGE 4096ull
#define MB (1024.0 * 1024.0)

struct seg {
	struct pub_header *h;
	size_t size;
	int fd;
	pid_t pid;
	const struct pub_name *names;
	const _Atomic uint64_t *values;
};

/* A consistent copy of the counters, and when it was made. */
struct snap {
	uint64_t *v;
	uint64_t ns;
	bool fresh; /* the process answered this request */
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void seg_path(pid_t pid, char *buf, size_t size)
{
	snprintf(buf, size, "%s/%s%d", PUB_DIR, PUB_PREFIX, (int)pid);
}

static void seg_close(struct seg *s)
{
	if (s->h)
		munmap(s->h, s->size);
	if (s->fd >= 0)
		close(s->fd);
	s->h = NULL;
	s->fd = -1;
}

/* 0, or -errno (-EPROTO: not a segment this exchstat can read). */
static int seg_open(pid_t pid, struct seg *s)
{
	char path[PATH_MAX];
	struct stat st;
	struct pub_header *h;

	*s = (struct seg){ .fd = -1, .pid = pid };
	seg_path(pid, path, sizeof(path));
	s->fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
	if (s->fd < 0)
		return -errno;
	if (fstat(s->fd, &st) < 0 || (size_t)st.st_size < sizeof(*h)) {
		seg_close(s);
		return -EPROTO;
	}
	s->size = (size_t)st.st_size;
	h = mmap(NULL, s->size, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
	if (h == MAP_FAILED) {
		int err = -errno;

		seg_close(s);
		return err;
	}
	s->h = h;
	if (memcmp(h->magic, PUB_MAGIC, sizeof(PUB_MAGIC)) || h->version != PUB_VERSION ||
	    h->size > s->size || h->pid != pid || h->values_off % 8 ||
	    h->names_off + (uint64_t)h->nstats * sizeof(struct pub_name) > h->size ||
	    h->values_off + (uint64_t)h->nstats * 8 > h->size) {
		seg_close(s);
		return -EPROTO;
	}
	s->names = (const struct pub_name *)((char *)h + h->names_off);
	s->values = (const _Atomic uint64_t *)((char *)h + h->values_off);
	return 0;
}

static long futex(_Atomic uint32_t *addr, int op, uint32_t val, const struct timespec *t)
{
	return syscall(SYS_futex, addr, op, val, t, NULL, 0);
}

/* Asks for a fresh copy; true if the process made one within @ms. */
static bool seg_refresh(struct seg *s, unsigned ms)
{
	struct pub_header *h = s->h;
	uint32_t before = atomic_load(&h->seq);
	uint64_t deadline = now_ns() + ms * 1000000ull;

	atomic_fetch_add(&h->request, 1);
	futex(&h->request, FUTEX_WAKE, INT32_MAX, NULL);
	for (;;) {
		uint32_t seq = atomic_load(&h->seq);
		uint64_t now = now_ns();
		struct timespec left;

		/* Even, and a copy begun after our request has ended. */
		if (!(seq & 1) && seq - before >= (before & 1 ? 1u : 2u))
			return true;
		if (now >= deadline)
			return false;
		left.tv_sec = (time_t)((deadline - now) / 1000000000ull);
		left.tv_nsec = (long)((deadline - now) % 1000000000ull);
		futex(&h->seq, FUTEX_WAIT, seq, &left);
	}
}

static void seg_read(struct seg *s, struct snap *out)
{
	struct pub_header *h = s->h;

	for (;;) {
		uint32_t seq = atomic_load_explicit(&h->seq, memory_order_acquire);

		if (seq & 1) {
			sched_yield();
			continue;
		}
		for (uint32_t i = 0; i < h->nstats; i++)
			out->v[i] = atomic_load_explicit(&s->values[i], memory_order_relaxed);
		out->ns = atomic_load_explicit(&h->published_ns, memory_order_relaxed);
		atomic_thread_fence(memory_order_acquire);
		if (atomic_load_explicit(&h->seq, memory_order_relaxed) == seq)
			return;
	}
}

static void seg_snap(struct seg *s, struct snap *out)
{
	out->fresh = seg_refresh(s, EXCHSTAT_ANSWER_MS);
	seg_read(s, out);
}

static int seg_index(const struct seg *s, const char *name)
{
	for (uint32_t i = 0; i < s->h->nstats; i++)
		if (!strncmp(s->names[i].name, name, PUB_NAME_MAX))
			return (int)i;
	return -1;
}

static uint64_t val(const struct seg *s, const struct snap *n, const char *name)
{
	int i = seg_index(s, name);

	return i < 0 ? 0 : n->v[i];
}

/* Sum of every counter whose name starts with @prefix. */
static uint64_t val_prefix(const struct seg *s, const struct snap *n, const char *prefix)
{
	uint64_t sum = 0;

	for (uint32_t i = 0; i < s->h->nstats; i++)
		if (!strncmp(s->names[i].name, prefix, strlen(prefix)) &&
		    !strncmp(s->names[i].kind, "COUNT", PUB_KIND_MAX))
			sum += n->v[i];
	return sum;
}

static double rss_mb(pid_t pid)
{
	char path[64];
	unsigned long size, rss;
	FILE *f;
	int n;

	snprintf(path, sizeof(path), "/proc/%d/statm", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	n = fscanf(f, "%lu %lu", &size, &rss);
	fclose(f);
	return n == 2 ? (double)rss * (double)sysconf(_SC_PAGESIZE) / MB : 0;
}

/* Compression of what the pool holds: original bytes over zbud memory. */
static double tier_ratio(const struct seg *s, const struct snap *n)
{
	uint64_t pool = val(s, n, "tier_pool_bytes");

	return pool ? (double)(val(s, n, "tier_pool_pages") * EXCHSTAT_PAGE) / (double)pool : 0;
}

static void row_header(void)
{
	printf("%7s %6s %8s %5s %8s %7s %5s %7s %8s %7s %8s %8s %6s %7s\n", "rssMB",
	       "arenas", "resMB", "huge%", "tierMB", "poolMB", "ratio", "swapMB", "flt/s",
	       "coal/s", "evict/s", "rest/s", "fb/s", "escMB");
}

static void row(const struct seg *s, const struct snap *a, const struct snap *b)
{
	double dt = b->ns > a->ns ? (double)(b->ns - a->ns) / 1e9 : 0;
#define RATE(name) (dt > 0 ? (double)(val(s, b, name) - val(s, a, name)) / dt : 0)
	double fb = dt > 0 ? (double)(val_prefix(s, b, "fallback_") -
				      val_prefix(s, a, "fallback_")) / dt : 0;

	printf("%7.1f %6" PRIu64 " %8.1f %5" PRIu64 " %8.1f %7.1f %5.2f %7.1f %8.0f %7.0f %8.0f "
	       "%8.0f %6.0f %7.1f%s\n",
	       rss_mb(s->pid), val(s, b, "arenas_live"), val(s, b, "resident_bytes") / MB,
	       val(s, b, "hugepage_coverage_pct"), val(s, b, "tier_pages") * EXCHSTAT_PAGE / MB,
	       val(s, b, "tier_pool_bytes") / MB, tier_ratio(s, b),
	       val(s, b, "swap_slots_used") * EXCHSTAT_PAGE / MB, RATE("faults"),
	       RATE("coalesced_regions"), RATE("evicted_pages"), RATE("restored_pages"), fb,
	       val(s, b, "escaped_bytes") / MB, b->fresh ? "" : "  (no answer)");
#undef RATE
	fflush(stdout);
}

static const char *uffd_mode_name(uint32_t m)
{
	static const char *const names[] = { "none", "user-mode-only", "full" };

	return m < 3 ? names[m] : "?";
}

static int watch(struct seg *s, double interval, long count)
{
	struct pub_header *h = s->h;
	struct snap a = { .v = calloc(h->nstats, 8) }, b = { .v = calloc(h->nstats, 8) };
	struct timespec nap = { (time_t)interval,
				(long)((interval - (double)(time_t)interval) * 1e9) };

	if (!a.v || !b.v)
		return 1;
	printf("exchstat: pid %d (%s), uffd %s, simd %s; every %g s\n", (int)s->pid, h->comm,
	       uffd_mode_name(h->uffd_mode), h->simd, interval);
	a.ns = h->start_ns; /* zeros: the first row averages since start */
	for (long n = 0; count <= 0 || n < count; n++) {
		if (n)
			nanosleep(&nap, NULL);
		if (kill(s->pid, 0) < 0 && errno == ESRCH) {
			printf("exchstat: pid %d has exited\n", (int)s->pid);
			break;
		}
		if (n % EXCHSTAT_HEADER_EVERY == 0)
			row_header();
		seg_snap(s, &b);
		row(s, &a, &b);
		memcpy(a.v, b.v, h->nstats * 8);
		a.ns = b.ns;
	}
	free(a.v);
	free(b.v);
	return 0;
}

static void json_string(const char *str, size_t max)
{
	putchar('"');
	for (size_t i = 0; i < max && str[i]; i++) {
		unsigned char c = (unsigned char)str[i];

		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

static int dump(struct seg *s, bool json)
{
	struct pub_header *h = s->h;
	struct snap n = { .v = calloc(h->nstats, 8) };

	if (!n.v)
		return 1;
	seg_snap(s, &n);
	if (json) {
		printf("{\"pid\":%d,\"comm\":", (int)s->pid);
		json_string(h->comm, sizeof(h->comm));
		printf(",\"fresh\":%s,\"uptime_ms\":%" PRIu64 ",\"counters\":{",
		       n.fresh ? "true" : "false", (n.ns - h->start_ns) / 1000000);
		for (uint32_t i = 0; i < h->nstats; i++) {
			printf("%s", i ? "," : "");
			json_string(s->names[i].name, PUB_NAME_MAX);
			printf(":%" PRIu64, n.v[i]);
		}
		printf("}}\n");
	} else {
		printf("exchstat: pid %d (%s)%s\n", (int)s->pid, h->comm,
		       n.fresh ? "" : ", no answer: values from its last copy");
		for (uint32_t i = 0; i < h->nstats; i++)
			printf("  %-26.*s %14" PRIu64 "  %.*s\n", PUB_NAME_MAX, s->names[i].name,
			       n.v[i], PUB_REASON_MAX, s->names[i].reason);
	}
	free(n.v);
	return n.fresh ? 0 : 1;
}

/* A file whose process is gone, or exec'd without the library: nobody
 * holds its lock and nobody answers. */
static bool seg_stale(struct seg *s)
{
	if (kill(s->pid, 0) < 0 && errno == ESRCH)
		return true;
	if (flock(s->fd, LOCK_EX | LOCK_NB) < 0)
		return false;
	flock(s->fd, LOCK_UN);
	return !seg_refresh(s, EXCHSTAT_ANSWER_MS);
}

static int list(void)
{
	DIR *d = opendir(PUB_DIR);
	struct dirent *e;
	int shown = 0;

	if (!d) {
		fprintf(stderr, "exchstat: %s: %s\n", PUB_DIR, strerror(errno));
		return 1;
	}
	while ((e = readdir(d))) {
		struct seg s;
		struct snap n;
		char *end;
		long pid;

		if (strncmp(e->d_name, PUB_PREFIX, strlen(PUB_PREFIX)))
			continue;
		pid = strtol(e->d_name + strlen(PUB_PREFIX), &end, 10);
		if (*end || pid <= 0 || seg_open((pid_t)pid, &s) < 0)
			continue; /* another user's, or not ours to read */
		if (seg_stale(&s)) {
			char path[PATH_MAX];

			seg_path(s.pid, path, sizeof(path));
			if (unlink(path) == 0)
				printf("exchstat: removed %s (process %ld is gone)\n", path, pid);
			seg_close(&s);
			continue;
		}
		n.v = calloc(s.h->nstats, 8);
		if (n.v) {
			seg_snap(&s, &n);
			if (!shown++)
				printf("%7s %-16s %7s %8s %5s %8s %5s %7s %12s %10s\n", "PID",
				       "COMMAND", "rssMB", "resMB", "huge%", "tierMB", "ratio",
				       "swapMB", "faults", "coalesced");
			printf("%7ld %-16.16s %7.1f %8.1f %5" PRIu64 " %8.1f %5.2f %7.1f %12" PRIu64
			       " %10" PRIu64 "\n", pid, s.h->comm, rss_mb(s.pid),
			       val(&s, &n, "resident_bytes") / MB,
			       val(&s, &n, "hugepage_coverage_pct"),
			       val(&s, &n, "tier_pages") * EXCHSTAT_PAGE / MB, tier_ratio(&s, &n),
			       val(&s, &n, "swap_slots_used") * EXCHSTAT_PAGE / MB,
			       val(&s, &n, "faults"), val(&s, &n, "coalesced_regions"));
			free(n.v);
		}
		seg_close(&s);
	}
	closedir(d);
	if (!shown)
		printf("exchstat: no process of this user is using libexch\n");
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: exchstat [-a | -j] [-i SECONDS] [-c COUNT] [PID]\n"
		   "  without PID: the processes of this user that use libexch\n"
		   "  PID: its memory, coverage, tier and rates, a row every interval\n"
		   "  -a  every counter once, with its reason\n"
		   "  -j  every counter once, as JSON\n"
		   "  -i  seconds between rows (default 1)\n"
		   "  -c  rows to print (default: until interrupted)\n");
}

int main(int argc, char **argv)
{
	double interval = 1;
	long count = 0, pid;
	bool all = false, json = false;
	struct seg s;
	char *end;
	int opt, rc;

	while ((opt = getopt(argc, argv, "ajc:i:h")) != -1) {
		switch (opt) {
		case 'a': all = true; break;
		case 'j': json = true; break;
		case 'c':
			count = strtol(optarg, &end, 10);
			if (*end || count <= 0) {
				fprintf(stderr, "exchstat: -c %s: not a positive count\n", optarg);
				return 2;
			}
			break;
		case 'i':
			interval = strtod(optarg, &end);
			if (*end || !(interval >= 0.01 && interval <= 86400)) {
				fprintf(stderr, "exchstat: -i %s: seconds between 0.01 and 86400\n",
					optarg);
				return 2;
			}
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind == argc)
		return list();
	pid = strtol(argv[optind], &end, 10);
	if (*end || pid <= 0 || pid > INT32_MAX || optind + 1 != argc) {
		usage(stderr);
		return 2;
	}
	rc = seg_open((pid_t)pid, &s);
	if (rc < 0) {
		char path[PATH_MAX];

		seg_path((pid_t)pid, path, sizeof(path));
		if (rc == -ENOENT)
			fprintf(stderr, "exchstat: pid %ld publishes no libexch counters (%s does "
				"not exist: not using libexch, or EXCH_PUBLISH=0)\n", pid, path);
		else if (rc == -EPROTO)
			fprintf(stderr, "exchstat: %s: not a libexch segment of version %d\n",
				path, PUB_VERSION);
		else
			fprintf(stderr, "exchstat: %s: %s\n", path, strerror(-rc));
		return 1;
	}
	rc = all || json ? dump(&s, json) : watch(&s, interval, count);
	seg_close(&s);
	return rc;
}

/*
 * publish.c - the counters of this process, live, for exchstat.
 *
 * EXCH_STATS and EXCH_STATS_FILE report at exit; a long-running program
 * needs its state while it runs. Once the library starts, it creates one
 * segment (publish.h: /dev/shm/libexch.<pid>, mode 0600, so only its own
 * user and root can read it) holding the names, kinds and reasons of the
 * stats list and a copy of their values, and starts one publisher thread.
 *
 * The thread sleeps on a futex in the segment and works only when a reader
 * asks: it measures the coverage and tier gauges (the same PAGEMAP_SCAN
 * walk as exch_stats_print), copies every counter under a sequence count,
 * and wakes the reader. A program that nobody watches pays one sleeping
 * thread and a few shared pages, nothing per fault or allocation.
 *
 * Life cycle. The segment is removed at exit. A fork child does not inherit
 * the mapping (MADV_DONTFORK) and closes the inherited fd, so it never
 * writes its parent's segment or holds its lock; when it starts the library
 * it publishes its own. A process that is killed, or ends with _exit, leaves
 * its file: every publisher removes those of its user's processes that are
 * gone when it starts, and exchstat's list removes them too, along with
 * those of processes that exec'd a program without the library (found by
 * the lock). EXCH_PUBLISH=0 turns all
 * of this off. A failure to create the segment costs one warning and
 * nothing else.
 *
 * Locking: pub_state is written at start, in the fork child and at exit,
 * all under lib.lock or with no other library thread running; the
 * publisher thread reads it, and writes only the segment's values.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "publish.h"

static const struct pub_name pub_names[STAT__COUNT] = {
#define PUB_DESC(name, kind, reason) { #name, #kind, reason },
	EXCH_STATS_LIST(PUB_DESC)
#undef PUB_DESC
};

struct pub_state {
	struct pub_header *seg; /* NULL: not publishing */
	size_t size;
	int fd;                 /* holds the liveness lock */
	pid_t pid;              /* the owner: only it removes the file */
	char path[PATH_MAX];
	pthread_t thread;
};

static struct pub_state pub = { .fd = -1 };

static uint64_t pub_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t *pub_values(struct pub_header *h)
{
	return (uint64_t *)((char *)h + h->values_off);
}

/* Measures the gauges and copies every counter, under the sequence count. */
static void pub_copy(struct pub_header *h)
{
	uint64_t *v = pub_values(h);

	arena_measure_coverage();
	tier_measure();
	atomic_fetch_add_explicit(&h->seq, 1, memory_order_acq_rel);
	for (int i = 0; i < STAT__COUNT; i++)
		v[i] = stat_get((enum stat_id)i);
	atomic_store_explicit(&h->published_ns, pub_now_ns(), memory_order_relaxed);
	atomic_fetch_add_explicit(&h->seq, 1, memory_order_release);
	(void)prim_futex_wake(&h->seq);
}

/*
 * Removes the segments of this user's processes that are gone: a process
 * that ends with _exit (fork children often do) or is killed does not
 * remove its own. Run once, by the publisher thread, off the start path.
 */
static void pub_sweep_one(const char *name, void *arg)
{
	const size_t plen = strlen(PUB_PREFIX);
	char path[PATH_MAX], *end;
	long pid;

	(void)arg;
	if (strncmp(name, PUB_PREFIX, plen))
		return;
	pid = strtol(name + plen, &end, 10);
	if (*end || pid <= 0 || pid > INT32_MAX || kill((pid_t)pid, 0) == 0 || errno != ESRCH)
		return;
	snprintf(path, sizeof(path), "%s/%s", PUB_DIR, name);
	(void)unlink(path); /* the sticky /dev/shm refuses other users' */
}

/* Without malloc (prim_dir_each): the thread may start in a fork child
 * before the program's allocator has been made usable again. */
static void pub_sweep(void)
{
	(void)prim_dir_each(PUB_DIR, pub_sweep_one, NULL);
}

static void *pub_main(void *arg)
{
	struct pub_header *h = arg;
	uint32_t seen = atomic_load(&h->request);

	pub_sweep();
	for (;;) {
		pub_copy(h);
		while (atomic_load(&h->request) == seen)
			(void)prim_futex_wait(&h->request, seen);
		seen = atomic_load(&h->request);
	}
	return NULL;
}

static void pub_fill(struct pub_header *h, size_t size)
{
	const size_t names = sizeof(struct pub_header);
	const size_t values = ALIGN_UP(names + sizeof(pub_names), 8);
	char comm[PUB_COMM_MAX] = "?";

	memcpy(h->magic, PUB_MAGIC, sizeof(h->magic));
	h->version = PUB_VERSION;
	h->size = (uint32_t)size;
	h->nstats = STAT__COUNT;
	h->names_off = (uint32_t)names;
	h->values_off = (uint32_t)values;
	h->pid = (int32_t)getpid();
	h->start_ns = pub_now_ns();
	h->uffd_mode = (uint32_t)lib.feat.uffd_mode;
	h->on = lib.feat.on;
	snprintf(h->simd, sizeof(h->simd), "%s", exch_simd_name(lib.feat.simd_used));
	if (prim_read_text("/proc/self/comm", comm, sizeof(comm)) > 0)
		comm[strcspn(comm, "\n")] = '\0';
	memcpy(h->comm, comm, sizeof(h->comm));
	memcpy((char *)h + names, pub_names, sizeof(pub_names));
}

void pub_start(void)
{
	size_t size = ALIGN_UP(sizeof(struct pub_header) + sizeof(pub_names) + 8 +
				       STAT__COUNT * sizeof(uint64_t), PAGE_SIZE_4K);
	void *map;
	int fd, rc;

	if (!opt_get(OPT_PUBLISH) || pub.seg)
		return;
	snprintf(pub.path, sizeof(pub.path), "%s/%s%d", PUB_DIR, PUB_PREFIX, (int)getpid());
	fd = prim_shm_create(pub.path, size, &map);
	if (fd < 0) {
		log_warn("live counters not published: %s: %s (exchstat cannot see "
			 "this process; EXCH_PUBLISH=0 silences this)", pub.path, prim_errstr(-fd));
		return;
	}
	pub_fill(map, size);
	rc = prim_thread_create(&pub.thread, pub_main, map);
	if (rc < 0) {
		log_warn("live counters not published: no publisher thread (%s)",
			 prim_errstr(-rc));
		unlink(pub.path);
		prim_sys_munmap(map, size);
		close(fd);
		return;
	}
	pub.seg = map;
	pub.size = size;
	pub.fd = fd;
	pub.pid = getpid();
	log_info("live counters: %s (exchstat %d)", pub.path, (int)pub.pid);
}

/* At exit: the file goes; the mapping stays for the thread, which may be
 * copying while the process ends. */
void pub_stop(void)
{
	if (pub.seg && pub.pid == getpid())
		unlink(pub.path);
}

/* Fork child: the parent's segment is not mapped here, and its lock must
 * not be held by a process that is not it. */
void pub_fork_child(void)
{
	if (pub.fd >= 0)
		close(pub.fd);
	pub.seg = NULL;
	pub.fd = -1;
	pub.pid = 0;
}

/*
 * publish.h - the layout of a process's published counters.
 *
 * Shared by the library (publish.c writes it) and exchstat (reads it), and
 * by nothing else: it is a file format, versioned by PUB_MAGIC and
 * PUB_VERSION, not an API. A segment is one file, PUB_DIR/PUB_PREFIX<pid>,
 * mode 0600, holding a header, the counters' names and reasons (so a reader
 * of another version can still show them) and their values. It holds
 * counters only, never memory contents.
 *
 * Refresh protocol. The counters are copied, and the coverage gauges
 * measured, only when a reader asks: the reader adds one to @request and
 * wakes it (a futex in shared memory); the process's publisher thread wakes,
 * sets @seq odd, writes the values and @published_ns, sets @seq even and
 * wakes @seq. A reader copies the values between two reads of the same even
 * @seq. A process that nobody watches does no work for this.
 *
 * Liveness. The owner holds a shared flock on the file while it runs (the fd
 * is close-on-exec). A reader that can take the lock exclusively, and gets no
 * answer to a request, has found a stale file (the process was killed or
 * exec'd a program without the library) and may remove it.
 */
#ifndef EXCH_PUBLISH_H
#define EXCH_PUBLISH_H

#include <stdatomic.h>
#include <stdint.h>

#define PUB_DIR "/dev/shm"
#define PUB_PREFIX "libexch."
#define PUB_MAGIC "LIBEXCH"  /* 8 bytes with its NUL */
#define PUB_VERSION 1
#define PUB_NAME_MAX 32
#define PUB_KIND_MAX 8
#define PUB_REASON_MAX 96
#define PUB_COMM_MAX 64

struct pub_name {
	char name[PUB_NAME_MAX];
	char kind[PUB_KIND_MAX]; /* "COUNT" (only grows) or "GAUGE" */
	char reason[PUB_REASON_MAX];
};

struct pub_header {
	char magic[8];
	uint32_t version;
	uint32_t size;           /* bytes of the whole segment */
	uint32_t nstats;
	uint32_t names_off;      /* struct pub_name[nstats] */
	uint32_t values_off;     /* uint64_t[nstats], 8-aligned */
	int32_t pid;
	uint64_t start_ns;       /* CLOCK_MONOTONIC when the library started */
	_Atomic uint32_t request; /* readers: += 1, then futex wake */
	_Atomic uint32_t seq;     /* odd while the values are being written */
	_Atomic uint64_t published_ns; /* CLOCK_MONOTONIC of the last copy */
	uint32_t uffd_mode;      /* enum exch_uffd_mode */
	uint32_t on;             /* EXCH_ON_* */
	char simd[16];
	char comm[PUB_COMM_MAX]; /* the program, from /proc/self/comm */
};

#endif /* EXCH_PUBLISH_H */

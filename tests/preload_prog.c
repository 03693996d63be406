/*
 * preload_prog.c - a program that knows nothing of libexch, run by
 * check_preload under LD_PRELOAD=libexch-preload.so. Each scenario checks
 * its own results and exits 0 when all is right; it reaches the library's
 * counters through dlsym, as any program could.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <linux/filter.h>
#include <liburing.h>
#include <linux/seccomp.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <malloc.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define MB (1024ul * 1024ul)

extern char **environ;
#define THREADS 4
#define ROUNDS 20000

static int fails;

#define CHECK(c)                                                                   \
	do {                                                                       \
		if (!(c)) {                                                        \
			fprintf(stderr, "preload_prog: %s:%d: %s\n", __FILE__,     \
				__LINE__, #c);                                     \
			fails++;                                                   \
		}                                                                  \
	} while (0)

static uint64_t stat_of(const char *name)
{
	int (*get)(const char *, uint64_t *) =
		(int (*)(const char *, uint64_t *))dlsym(RTLD_DEFAULT, "exch_stats_get");
	uint64_t v = 0;

	if (!get || get(name, &v) != 0)
		return UINT64_MAX;
	return v;
}

static void fill(unsigned char *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (unsigned char)(seed + i * 131);
}

static int same(const unsigned char *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != (unsigned char)(seed + i * 131))
			return 0;
	return 1;
}

/* What jemalloc made with its own hooks before the preload's were set
 * (the loader's and the library's start-up allocations): counted as
 * escaped, and small. Nothing made after the start may add to it. */
#define EARLY_ESCAPED_MAX (16 * MB)

static void heap(void)
{
	static const size_t sizes[] = { 8, 100, 4096, 70000, 1 * MB, 3 * MB, 17 * MB };
	enum { N = sizeof(sizes) / sizeof(sizes[0]) };
	uint64_t escaped = stat_of("escaped_bytes");
	unsigned char *p[N];
	void *q = NULL;

	for (int i = 0; i < N; i++) {
		p[i] = malloc(sizes[i]);
		CHECK(p[i] != NULL);
		CHECK(malloc_usable_size(p[i]) >= sizes[i]);
		fill(p[i], sizes[i], (unsigned)i);
	}
	for (int i = 0; i < N; i++) {
		CHECK(same(p[i], sizes[i], (unsigned)i));
		p[i] = realloc(p[i], sizes[i] * 2 + 1);
		CHECK(same(p[i], sizes[i], (unsigned)i));
		free(p[i]);
	}
	/* calloc on recycled memory reads zeros */
	for (int r = 0; r < 4; r++) {
		unsigned char *x = malloc(4 * MB), *z;

		memset(x, 0xff, 4 * MB);
		free(x);
		z = calloc(4 * MB, 1);
		for (size_t i = 0; i < 4 * MB; i += 512)
			CHECK(z[i] == 0);
		free(z);
	}
	CHECK(posix_memalign(&q, 2 * MB, 5 * MB) == 0 && (uintptr_t)q % (2 * MB) == 0);
	free(q);
	q = aligned_alloc(65536, 65536 * 3);
	CHECK(q && (uintptr_t)q % 65536 == 0);
	free(q);
	/* An alignment above a region's is cut out of the arena too. */
	for (int r = 0; r < 20; r++) {
		CHECK(posix_memalign(&q, 8 * MB, 9 * MB) == 0 && (uintptr_t)q % (8 * MB) == 0);
		fill(q, 9 * MB, (unsigned)r);
		CHECK(same(q, 9 * MB, (unsigned)r));
		free(q);
	}
	/* The heap is in the arena: extents were allocated there, none escaped. */
	CHECK(stat_of("allocs") > 0 && stat_of("allocs") != UINT64_MAX);
	CHECK(escaped < EARLY_ESCAPED_MAX);
	CHECK(stat_of("escaped_bytes") == escaped);
	CHECK(stat_of("misuse") == 0);
}

static void *thread_main(void *arg)
{
	unsigned seed = (unsigned)(uintptr_t)arg;
	unsigned char *live[64] = { 0 };
	size_t len[64] = { 0 };
	unsigned tag[64] = { 0 };

	for (int r = 0; r < ROUNDS; r++) {
		unsigned k = (unsigned)rand_r(&seed) % 64;

		if (live[k]) {
			CHECK(same(live[k], len[k], tag[k]));
			free(live[k]);
		}
		len[k] = (size_t)rand_r(&seed) % (r % 100 == 0 ? 3 * MB : 4096) + 1;
		tag[k] = (unsigned)r;
		live[k] = malloc(len[k]);
		fill(live[k], len[k], tag[k]);
	}
	for (int k = 0; k < 64; k++)
		free(live[k]);
	return NULL;
}

static void threads(void)
{
	pthread_t th[THREADS];

	for (unsigned i = 0; i < THREADS; i++)
		CHECK(pthread_create(&th[i], NULL, thread_main, (void *)(uintptr_t)(i * 7 + 1)) == 0);
	for (unsigned i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
}

static void forked(void)
{
	size_t n = 32 * MB;
	unsigned char *p = malloc(n);
	pid_t pid;
	int st = 0;

	fill(p, n, 9);
	pid = fork();
	if (pid == 0) {
		int ok = same(p, n, 9);
		unsigned char *q = malloc(n);

		fill(q, n, 10);
		ok = ok && same(q, n, 10);
		free(q);
		_exit(ok ? 0 : 1);
	}
	CHECK(pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
	CHECK(same(p, n, 9));
	free(p);
}

/* A runtime's own large mappings: into the arena, and back out. */
static void mapped(void)
{
	uint64_t before = stat_of("mmap_interposed");
	size_t n = 8 * MB;
	unsigned char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
				-1, 0), *q;
	void *shared;

	CHECK(p != MAP_FAILED);
	CHECK(stat_of("mmap_interposed") == before + 1);
	for (size_t i = 0; i < n; i += 4096)
		CHECK(p[i] == 0);
	fill(p, n, 3);
	q = mremap(p, n, 2 * n, MREMAP_MAYMOVE);
	CHECK(q != MAP_FAILED && same(q, n, 3));
	for (size_t i = n; i < 2 * n; i += 4096)
		CHECK(q[i] == 0);
	CHECK(madvise(q + MB, MB, MADV_DONTNEED) == 0);
	for (size_t i = MB; i < 2 * MB; i += 512)
		CHECK(q[i] == 0);
	CHECK(same(q + 2 * MB, MB, (unsigned)(3 + 2 * MB * 131)));
	CHECK(munmap(q, 2 * n) == 0);
	/* Shared mappings are not the library's business. */
	shared = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(shared != MAP_FAILED && stat_of("mmap_interposed") == before + 1);
	CHECK(munmap(shared, n) == 0);
}

/* A fork child reads its heap right, evicted pages included. */
static void fork_evicted(void)
{
	int (*advise)(void *, size_t, int) =
		(int (*)(void *, size_t, int))dlsym(RTLD_DEFAULT, "exch_advise");
	size_t n = 32 * MB;
	unsigned char *p = malloc(n + 2 * MB);
	unsigned char *a = (unsigned char *)(((uintptr_t)p + 2 * MB - 1) & ~(2 * MB - 1));
	pid_t pid;
	int st = 0;

	CHECK(advise != NULL);
	fill(a, n, 21);
	CHECK(advise(a, n, 1 /* EXCH_COLD */) == 0);
	CHECK(stat_of("tier_pages") > 0);
	pid = fork();
	if (pid == 0)
		_exit(same(a, n, 21) ? 0 : 1);
	CHECK(pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
	CHECK(same(a, n, 21));
	free(p);
}

static int (*advise_fn(void))(void *, size_t, int)
{
	return (int (*)(void *, size_t, int))dlsym(RTLD_DEFAULT, "exch_advise");
}

/* 2 MB-aligned @n bytes inside a fresh allocation (*@raw to free). */
static unsigned char *aligned_heap(size_t n, unsigned char **raw)
{
	*raw = malloc(n + 2 * MB);
	return (unsigned char *)(((uintptr_t)*raw + 2 * MB - 1) & ~(2 * MB - 1));
}

static volatile unsigned long sig_sum;
static unsigned char *sig_buf;

static void sig_handler(int sig)
{
	unsigned long s = 0;

	(void)sig;
	for (size_t i = 0; i < 4 * MB; i += 64)
		s += sig_buf[i];
	sig_sum = s;
}

/* A signal handler reads evicted heap memory. */
static void signals(void)
{
	unsigned char *raw, *p = aligned_heap(4 * MB, &raw);
	unsigned long want = 0;
	struct sigaction sa = { .sa_handler = sig_handler };

	fill(p, 4 * MB, 31);
	for (size_t i = 0; i < 4 * MB; i += 64)
		want += p[i];
	sig_buf = p;
	CHECK(advise_fn()(p, 4 * MB, 1 /* EXCH_COLD */) == 0);
	sigaction(SIGUSR1, &sa, NULL);
	raise(SIGUSR1);
	CHECK(sig_sum == want);
	free(raw);
}

/* The kernel reads from and writes into evicted heap pages: write(2) and
 * O_DIRECT read(2). */
static void kernel_io(void)
{
	unsigned char *raw, *p = aligned_heap(4 * MB, &raw), *raw2, *q = aligned_heap(4 * MB, &raw2);
	char path[] = "/var/tmp/exch-dio-XXXXXX";
	int fd = mkstemp(path);

	CHECK(fd >= 0);
	fill(p, 4 * MB, 41);
	CHECK(advise_fn()(p, 4 * MB, 1) == 0);
	CHECK(write(fd, p, 4 * MB) == (ssize_t)(4 * MB)); /* the kernel reads evicted pages */
	close(fd);
	memset(q, 0x5a, 4 * MB);
	CHECK(advise_fn()(q, 4 * MB, 1) == 0);
	fd = open(path, O_RDONLY | O_DIRECT);
	if (fd >= 0) { /* tmpfs has no O_DIRECT: then a buffered read */
		CHECK(read(fd, q, 4 * MB) == (ssize_t)(4 * MB));
	} else {
		fd = open(path, O_RDONLY);
		CHECK(read(fd, q, 4 * MB) == (ssize_t)(4 * MB));
	}
	close(fd);
	unlink(path);
	CHECK(same(q, 4 * MB, 41));
	free(raw);
	free(raw2);
}

/* A library loaded and unloaded at run time, allocating as it goes. */
static void dl(void)
{
	void *h = dlopen("libz.so.1", RTLD_NOW | RTLD_LOCAL);
	unsigned long (*crc)(unsigned long, const unsigned char *, unsigned);

	if (!h) {
		fprintf(stderr, "preload_prog: libz.so.1 not found, dlopen of libm.so.6\n");
		h = dlopen("libm.so.6", RTLD_NOW | RTLD_LOCAL);
		CHECK(h != NULL);
		CHECK(dlclose(h) == 0);
		return;
	}
	crc = (unsigned long (*)(unsigned long, const unsigned char *, unsigned))dlsym(h, "crc32");
	CHECK(crc && crc(0, (const unsigned char *)"abc", 3) == 0x352441c2ul);
	CHECK(dlclose(h) == 0);
}

/* system(), posix_spawn() and vfork() + exec from a preloaded program. */
static void spawning(void)
{
	char *argv[] = { "/bin/sh", "-c", "exit 7", NULL };
	pid_t pid;
	int st = 0;

	CHECK(system("exit 3") == 3 << 8);
	CHECK(posix_spawn(&pid, "/bin/sh", NULL, NULL, argv, environ) == 0);
	CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 7);
	pid = vfork();
	if (pid == 0) {
		execv("/bin/sh", argv);
		_exit(127);
	}
	CHECK(pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 7);
}

/*
 * A process where userfaultfd is denied, as container profiles do: the
 * syscall and /dev/userfaultfd's ioctl fail with EPERM. The filter is
 * installed, then this program runs itself again (the preload starts in
 * the new image) with the heap scenario, which must pass on plain arenas.
 */
#define UFFD_IOC_NEW 0xaa00u /* _IO(0xAA, 0x00) */

static void seccomp_then(char *self)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_userfaultfd, 3, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_ioctl, 0, 3),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1])),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, UFFD_IOC_NEW, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof(f) / sizeof(f[0]), .filter = f };
	char *argv[] = { self, "heap-plain", NULL };

	CHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0);
	CHECK(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0);
	execv(self, argv);
	fails++;
}

/*
 * io_uring with registered buffers in heap memory: registration pins the
 * pages, so they must stay where they are: eviction leaves them (they
 * count as busy), and what the kernel reads into them with READ_FIXED is
 * what the program then sees.
 */
static void uring(void)
{
	unsigned char *raw, *buf = aligned_heap(4 * MB, &raw), *raw2, *src = aligned_heap(4 * MB, &raw2);
	char path[] = "/var/tmp/exch-uring-XXXXXX";
	struct iovec iov = { .iov_base = buf, .iov_len = 4 * MB };
	uint64_t busy = stat_of("tier_evict_busy");
	struct io_uring ring;
	struct io_uring_cqe *cqe;
	int fd = mkstemp(path), rc;

	CHECK(fd >= 0);
	rc = io_uring_queue_init(8, &ring, 0);
	if (rc < 0) {
		fprintf(stderr, "preload_prog: io_uring unavailable (%s), uring scenario not run\n",
			strerror(-rc));
		close(fd);
		unlink(path);
		fails++;
		return;
	}
	fill(buf, 4 * MB, 51);
	CHECK(io_uring_register_buffers(&ring, &iov, 1) == 0);
	CHECK(advise_fn()(buf, 4 * MB, 1 /* EXCH_COLD */) == 0);
	CHECK(stat_of("tier_evict_busy") > busy); /* pinned: left in place */
	CHECK(same(buf, 4 * MB, 51));
	/* The file gets other bytes; READ_FIXED brings them into the buffer. */
	fill(src, 4 * MB, 52);
	CHECK(write(fd, src, 4 * MB) == (ssize_t)(4 * MB));
	for (int round = 0; round < 2; round++) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);

		io_uring_prep_read_fixed(sqe, fd, buf, 4 * MB, 0, 0);
		CHECK(io_uring_submit(&ring) == 1);
		CHECK(io_uring_wait_cqe(&ring, &cqe) == 0 && cqe->res == (int)(4 * MB));
		io_uring_cqe_seen(&ring, cqe);
		CHECK(same(buf, 4 * MB, 52));
		memset(buf, 0, 4 * MB);
		CHECK(advise_fn()(buf, 4 * MB, 1) == 0);
	}
	CHECK(io_uring_unregister_buffers(&ring) == 0);
	io_uring_queue_exit(&ring);
	close(fd);
	unlink(path);
	/* Unpinned, the same memory is evicted and comes back. */
	fill(buf, 4 * MB, 53);
	busy = stat_of("evicted_pages");
	CHECK(advise_fn()(buf, 4 * MB, 1) == 0);
	CHECK(stat_of("evicted_pages") > busy);
	CHECK(same(buf, 4 * MB, 53));
	free(raw);
	free(raw2);
}

/* mlock on heap memory: locked pages are not evicted; once unlocked they
 * are, and both times they read back. */
static void locked(void)
{
	unsigned char *raw, *p = aligned_heap(4 * MB, &raw);
	uint64_t busy = stat_of("tier_evict_busy"), evicted;

	fill(p, 4 * MB, 61);
	CHECK(mlock(p, 4 * MB) == 0);
	evicted = stat_of("evicted_pages");
	CHECK(advise_fn()(p, 4 * MB, 1 /* EXCH_COLD */) == 0);
	CHECK(stat_of("tier_evict_busy") > busy);
	CHECK(stat_of("evicted_pages") == evicted);
	CHECK(same(p, 4 * MB, 61));
	CHECK(munlock(p, 4 * MB) == 0);
	CHECK(advise_fn()(p, 4 * MB, 1) == 0);
	CHECK(stat_of("evicted_pages") > evicted);
	CHECK(same(p, 4 * MB, 61));
	free(raw);
}

/* Holds 64 MB of heap while another program looks (exchstat): says
 * "ready", waits for a line on stdin, then checks the memory. */
static void hold(void)
{
	size_t n = 64 * MB;
	unsigned char *p = malloc(n);
	char line[16];

	fill(p, n, 71);
	printf("ready\n");
	fflush(stdout);
	CHECK(fgets(line, sizeof(line), stdin) != NULL);
	CHECK(same(p, n, 71));
	free(p);
}

/* The /proc/self/maps mapping holding @p: its end, or 0. */
static uintptr_t mapping_end(const void *p, uintptr_t *start)
{
	char line[512];
	unsigned long a, b;
	uintptr_t end = 0;
	FILE *f = fopen("/proc/self/maps", "r");

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "%lx-%lx", &a, &b) == 2 && (uintptr_t)p >= a && (uintptr_t)p < b) {
			*start = a;
			end = b;
		}
	if (f)
		fclose(f);
	return end;
}

/*
 * munmap and mremap of a mapping placed in the arena, piece by piece, as
 * runtimes do: trimmed to an aligned middle and then unmapped, shrunk and
 * then unmapped. Every piece is freed in the arena (before, the pieces
 * stayed allocated for good), the part kept keeps its data, and nothing is
 * refused as misuse. A munmap reaching past the arena's end unmaps what is
 * outside and leaves the arena whole.
 */
static void unmap_pieces(void)
{
	const int prot = PROT_READ | PROT_WRITE, flags = MAP_PRIVATE | MAP_ANONYMOUS;
	uint64_t frees = stat_of("frees"), interposed = stat_of("mmap_interposed");
	uintptr_t start = 0, end;
	unsigned char *p, *q;

	for (unsigned r = 0; r < 50; r++) {
		p = mmap(NULL, 8 * MB, prot, flags, -1, 0);
		CHECK(p != MAP_FAILED);
		if (p == MAP_FAILED)
			return;
		fill(p, 8 * MB, r);
		CHECK(munmap(p, 2 * MB) == 0);          /* the head */
		CHECK(munmap(p + 6 * MB, 2 * MB) == 0); /* the tail */
		/* Unmapped, the head is the arena's again: not the program's to
		 * map over (the arena may hand it to jemalloc). */
		if (r == 0)
			CHECK(mmap(p, 2 * MB, prot, flags | MAP_FIXED, -1, 0) == MAP_FAILED &&
			      errno == EINVAL);
		for (size_t i = 2 * MB; i < 6 * MB; i += 4093)
			CHECK(p[i] == (unsigned char)(r + i * 131));
		CHECK(munmap(p + 2 * MB, 4 * MB) == 0);
	}
	for (unsigned r = 0; r < 50; r++) {
		p = mmap(NULL, 4 * MB, prot, flags, -1, 0);
		CHECK(p != MAP_FAILED);
		if (p == MAP_FAILED)
			return;
		fill(p, 4 * MB, r);
		CHECK(mremap(p, 4 * MB, 1 * MB, 0) == p);
		CHECK(same(p, 1 * MB, r));
		CHECK(munmap(p, 1 * MB) == 0);
	}
	CHECK(stat_of("mmap_interposed") - interposed == 100);
	CHECK(stat_of("frees") - frees >= 50 * 3 + 50 * 2);
	CHECK(stat_of("misuse") == 0);

	/* A page mapped right after the arena, unmapped with the arena's last. */
	p = mmap(NULL, 1 * MB, prot, flags, -1, 0);
	end = mapping_end(p, &start);
	if (end - start < ((uintptr_t)1 << 30)) {
		printf("unmap: the arena is not one mapping here, straddling munmap not tried\n");
		return;
	}
	q = mmap((void *)end, 4096, prot, flags | MAP_FIXED_NOREPLACE, -1, 0);
	if (q != (unsigned char *)end) {
		printf("unmap: the page after the arena is taken, straddling munmap not tried\n");
		return;
	}
	q[0] = 1;
	CHECK(munmap(q - 4096, 8192) == 0);
	CHECK(msync(q, 4096, MS_ASYNC) == -1 && errno == ENOMEM); /* gone */
	CHECK(mapping_end(q - 4096, &start) == end);                /* the arena is whole */
	fill(p, 1 * MB, 5);
	CHECK(same(p, 1 * MB, 5));
	CHECK(munmap(p, 1 * MB) == 0);
}

/* jemalloc's own API, as a program linked against libjemalloc calls it:
 * the preload's, on the same heap as malloc and free. */
static void jemalloc_api(void)
{
	void *(*mallocx_fn)(size_t, int) = (void *(*)(size_t, int))dlsym(RTLD_DEFAULT, "mallocx");
	void (*sdallocx_fn)(void *, size_t, int) =
		(void (*)(void *, size_t, int))dlsym(RTLD_DEFAULT, "sdallocx");
	void (*dallocx_fn)(void *, int) = (void (*)(void *, int))dlsym(RTLD_DEFAULT, "dallocx");
	size_t (*nallocx_fn)(size_t, int) = (size_t (*)(size_t, int))dlsym(RTLD_DEFAULT, "nallocx");
	int (*mallctl_fn)(const char *, void *, size_t *, void *, size_t) =
		(int (*)(const char *, void *, size_t *, void *, size_t))dlsym(RTLD_DEFAULT, "mallctl");
	Dl_info info;
	unsigned char *p;
	size_t allocated = 0, len = sizeof(allocated), opt = 1;
	uint64_t epoch = 1, escaped = stat_of("escaped_bytes");
	bool retain = true;

	CHECK(mallocx_fn && sdallocx_fn && dallocx_fn && nallocx_fn && mallctl_fn);
	if (!mallocx_fn || !sdallocx_fn || !dallocx_fn || !nallocx_fn || !mallctl_fn)
		return;
	CHECK(dladdr((void *)mallocx_fn, &info) && strstr(info.dli_fname, "libexch-preload"));
	CHECK(nallocx_fn(1000, 0) == 1024);
	p = mallocx_fn(3000, 0);
	fill(p, 3000, 81);
	CHECK(malloc_usable_size(p) >= 3000 && same(p, 3000, 81));
	free(p); /* mallocx's memory, freed by free */
	p = malloc(5000);
	fill(p, 5000, 82);
	sdallocx_fn(p, 5000, 0); /* malloc's, freed by sdallocx */
	p = malloc(64);
	dallocx_fn(p, 0);
	CHECK(mallctl_fn("epoch", NULL, NULL, &epoch, sizeof(epoch)) == 0);
	CHECK(mallctl_fn("stats.allocated", &allocated, &len, NULL, 0) == 0 && allocated > 0);
	CHECK(stat_of("escaped_bytes") == escaped);
	/* check_preload runs this with a MALLOC_CONF that would let extents
	 * escape: the preload's options win. */
	len = sizeof(retain);
	CHECK(mallctl_fn("opt.retain", &retain, &len, NULL, 0) == 0 && !retain);
	len = sizeof(opt);
	CHECK(mallctl_fn("opt.oversize_threshold", &opt, &len, NULL, 0) == 0 && opt == 0);
}

/*
 * MAP_FIXED over heap memory: an anonymous private one (a runtime resetting
 * or decommitting its own memory) is done in the arena, reading zeros with
 * the protection asked for; a file over it is refused, and nothing around
 * either changes.
 */
static void map_fixed(void)
{
	size_t n = 8 * MB;
	unsigned char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	unsigned char *q;
	char path[] = "/var/tmp/exch-fixed-XXXXXX";
	int fd = mkstemp(path);

	CHECK(p != MAP_FAILED && fd >= 0);
	fill(p, n, 101);
	CHECK(advise_fn()(p + 3 * MB, MB, 1 /* EXCH_COLD */) == 0); /* evicted pages too */
	q = mmap(p + 2 * MB, 2 * MB, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS,
		 -1, 0);
	CHECK(q == p + 2 * MB);
	for (size_t i = 0; i < 2 * MB; i += 512)
		CHECK(q[i] == 0);
	CHECK(same(p, 2 * MB, 101));
	CHECK(same(p + 4 * MB, 4 * MB, (unsigned)(101 + 4 * MB * 131)));
	q[5] = 7; /* writable */
	/* decommitted to PROT_NONE, then committed again: zeros */
	q = mmap(p + 4 * MB, MB, PROT_NONE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(q == p + 4 * MB);
	CHECK(mprotect(q, MB, PROT_READ | PROT_WRITE) == 0);
	for (size_t i = 0; i < MB; i += 512)
		CHECK(q[i] == 0);
	/* a file over heap memory: refused, nothing changed */
	CHECK(ftruncate(fd, MB) == 0);
	errno = 0;
	CHECK(mmap(p + 6 * MB, MB, PROT_READ, MAP_FIXED | MAP_SHARED, fd, 0) == MAP_FAILED &&
	      errno == EINVAL);
	CHECK(same(p + 6 * MB, 2 * MB, (unsigned)(101 + 6 * MB * 131)));
	/* other memory moved over heap memory: refused the same way */
	q = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(q != MAP_FAILED);
	errno = 0;
	CHECK(mremap(q, 65536, 65536, MREMAP_MAYMOVE | MREMAP_FIXED, p + 6 * MB) == MAP_FAILED &&
	      errno == EINVAL);
	CHECK(same(p + 6 * MB, 2 * MB, (unsigned)(101 + 6 * MB * 131)));
	CHECK(munmap(q, 65536) == 0);
	CHECK(stat_of("mmap_fixed_emulated") == 2 && stat_of("mmap_fixed_refused") == 2);
	CHECK(munmap(p, n) == 0);
	close(fd);
	unlink(path);
}

static char *self;

static void *churn_thread(void *arg)
{
	void *p = malloc(4096);

	(void)arg;
	memset(p, 1, 4096);
	free(p);
	return NULL;
}

/* Waits for @pid up to @s seconds; kills it if it is still there. */
static int wait_or_kill(pid_t pid, unsigned s)
{
	int st = 0;

	for (unsigned i = 0; i < s * 10; i++) {
		if (waitpid(pid, &st, WNOHANG) == pid)
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
		usleep(100 * 1000);
	}
	fprintf(stderr, "preload_prog: the fork child hung; killed\n");
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	return -1;
}

/*
 * fork under a resident limit so small that the tier takes nearly the
 * whole heap: jemalloc's own data, and the thread data glibc keeps for
 * the stacks of exited threads, included. jemalloc's fork handler locks
 * mutexes in those pages, and the child's first pthread_create reads
 * that thread data: both must be served, in the parent while it forks and
 * in the child before its fault service is up. The scenario runs itself
 * again with the limit set.
 */
static void fork_limit(void)
{
	size_t n = 48 * MB;
	unsigned char *p;
	pthread_t th;
	pid_t pid;

	if (!getenv("EXCH_LIMIT")) {
		char *argv[] = { self, "fork-limit", NULL };

		setenv("EXCH_LIMIT", "2M", 1);
		execv(self, argv);
		fails++;
		return;
	}
	for (int i = 0; i < 8; i++) {
		CHECK(pthread_create(&th, NULL, churn_thread, NULL) == 0);
		pthread_join(th, NULL);
	}
	p = malloc(n);
	fill(p, n, 91);
	for (int i = 0; i < 200 && stat_of("tier_pages") < n / 4096 / 2; i++)
		usleep(50 * 1000);
	CHECK(stat_of("tier_pages") >= n / 4096 / 2);
	pid = fork();
	if (pid == 0) {
		int ok = pthread_create(&th, NULL, churn_thread, NULL) == 0;

		if (ok)
			pthread_join(th, NULL);
		_exit(ok && same(p, n, 91) ? 0 : 1);
	}
	CHECK(pid > 0 && wait_or_kill(pid, 60) == 0);
	CHECK(same(p, n, 91));
	free(p);
}

static void seccomp_self(void)
{
	seccomp_then(self);
}

/* After seccomp_then's exec: the heap on plain arenas. */
static void heap_plain(void)
{
	heap();
	CHECK(stat_of("degraded") >= 1); /* said once, and counted */
}

static const struct {
	const char *name;
	void (*run)(void);
} scenarios[] = {
	{ "heap", heap },
	{ "threads", threads },
	{ "fork", forked },
	{ "mmap", mapped },
	{ "fork-evicted", fork_evicted },
	{ "spawn", spawning },
	{ "signal", signals },
	{ "kernel-io", kernel_io },
	{ "dlopen", dl },
	{ "seccomp", seccomp_self },
	{ "heap-plain", heap_plain },
	{ "uring", uring },
	{ "mlock", locked },
	{ "hold", hold },
	{ "jemalloc-api", jemalloc_api },
	{ "fork-limit", fork_limit },
	{ "map-fixed", map_fixed },
	{ "unmap", unmap_pieces },
};

int main(int argc, char **argv)
{
	self = argv[0];
	/* jemalloc-api runs with a MALLOC_CONF that would let extents escape
	 * (retained, or in an arena of their own): the preload's must win. */
	if (argc > 1 && !strcmp(argv[1], "jemalloc-api") && !getenv("MALLOC_CONF")) {
		setenv("MALLOC_CONF", "retain:true,oversize_threshold:1048576", 1);
		execv("/proc/self/exe", argv);
		perror("preload_prog: execv");
		return 1;
	}
	for (size_t i = 0; argc > 1 && i < sizeof(scenarios) / sizeof(scenarios[0]); i++)
		if (!strcmp(argv[1], scenarios[i].name)) {
			scenarios[i].run();
			return fails ? 1 : 0;
		}
	fprintf(stderr, "usage: preload_prog SCENARIO (see tests/check_preload.c)\n");
	return 2;
}

/*
 * prim.c - the one place libexch talks to the kernel.
 *
 * Every mmap, madvise, userfaultfd ioctl, PAGEMAP_SCAN and /proc or /sys read
 * goes through here, and every function returns 0 (or a count) on success and
 * a negative errno on failure, never -1 with errno set. The rest of the
 * library can then treat kernel calls as ordinary functions, and a reader can
 * see in one file everything libexch asks of the kernel.
 *
 * Nothing here allocates with malloc: the fault service calls these
 * functions, and it must never lock against memory the application holds.
 * prim_meta_alloc() is the library's metadata allocator for the same reason:
 * library metadata lives in private mappings, never in arenas, never in the
 * application's heap.
 *
 * UFFDIO_MOVE can move fewer bytes than asked and report -EAGAIN with the
 * count in .move; prim_uffd_move() retries the rest so that the error it
 * returns is the real one (EBUSY for a pinned or shared page, EEXIST for a
 * populated destination, ENOENT for a source hole).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <linux/io_uring.h>
#include <poll.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

#define PRIM_PM_PRESENT_BIT 63
#define PRIM_PM_PFN_MASK ((1ull << 55) - 1)

#define PRIM_THP_ENABLED "/sys/kernel/mm/transparent_hugepage/enabled"

static inline int prim_err(long rc)
{
	return rc < 0 ? -errno : 0;
}

/*
 * The library's own mappings are made with the system calls themselves:
 * under the preload, mmap, munmap and madvise are interposed (preload.c),
 * and the library must not place its metadata in its own arenas.
 */
void *prim_sys_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

int prim_sys_munmap(void *p, size_t len)
{
	return (int)syscall(SYS_munmap, p, len);
}

int prim_sys_mprotect(void *p, size_t len, int prot)
{
	return (int)syscall(SYS_mprotect, p, len, prot);
}

int prim_sys_madvise(void *p, size_t len, int advice)
{
	return (int)syscall(SYS_madvise, p, len, advice);
}

void *prim_sys_mremap(void *old, size_t old_len, size_t new_len, int flags, void *new_addr)
{
	return (void *)syscall(SYS_mremap, old, old_len, new_len, flags, new_addr);
}

int prim_map(size_t size, size_t align, bool noreserve, void **out)
{
	int flags = MAP_PRIVATE | MAP_ANONYMOUS | (noreserve ? MAP_NORESERVE : 0);
	size_t span = size + (align > PAGE_SIZE_4K ? align : 0);
	char *p = prim_sys_mmap(NULL, span, PROT_READ | PROT_WRITE, flags, -1, 0);

	if (p == MAP_FAILED)
		return -errno;
	if (align > PAGE_SIZE_4K) {
		char *a = (char *)ALIGN_UP((uintptr_t)p, align);
		size_t head = (size_t)(a - p);
		size_t tail = span - head - size;

		if (head)
			prim_sys_munmap(p, head);
		if (tail)
			prim_sys_munmap(a + size, tail);
		p = a;
	}
	*out = p;
	return 0;
}

int prim_unmap(void *p, size_t len)
{
	return prim_err(prim_sys_munmap(p, len));
}

int prim_madvise(void *p, size_t len, int advice)
{
	return prim_err(prim_sys_madvise(p, len, advice));
}

int prim_map_scratch(int uffd, size_t len, void **out)
{
	void *p;
	int rc = prim_map(len, REGION_SIZE, true, &p);

	if (rc < 0)
		return rc;
	prim_madvise(p, len, MADV_NOHUGEPAGE);
	prim_madvise(p, len, MADV_DONTFORK);
	rc = prim_uffd_register(uffd, p, len, UFFDIO_REGISTER_MODE_MISSING);
	if (rc < 0) {
		prim_unmap(p, len);
		return rc;
	}
	*out = p;
	return 0;
}

void *prim_meta_alloc(size_t size)
{
	void *p = NULL;

	/* NORESERVE: metadata sized for a huge arena costs only what is used. */
	if (prim_map(ALIGN_UP(size, PAGE_SIZE_4K), 0, true, &p) < 0)
		return NULL;
	return p;
}

void prim_meta_free(void *p, size_t size)
{
	if (p)
		prim_sys_munmap(p, ALIGN_UP(size, PAGE_SIZE_4K));
}

/* ---- userfaultfd ---- */

int prim_uffd_open(bool user_mode_only, bool try_device,
		   enum exch_uffd_source *src)
{
	int flags = O_CLOEXEC | O_NONBLOCK | (user_mode_only ? UFFD_USER_MODE_ONLY : 0);
	long fd = syscall(SYS_userfaultfd, flags);
	int err;

	if (fd >= 0) {
		*src = EXCH_UFFD_SRC_SYSCALL;
		return (int)fd;
	}
	err = -errno;
	if (!try_device || user_mode_only)
		return err;
	/* /dev/userfaultfd hands out full-mode fds to whoever may open it. */
	int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev < 0)
		return err;
	fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
	err = fd < 0 ? -errno : 0;
	close(dev);
	if (fd < 0)
		return err;
	*src = EXCH_UFFD_SRC_DEVICE;
	return (int)fd;
}

int prim_uffd_api(int fd, uint64_t want, uint64_t *features)
{
	struct uffdio_api api = { .api = UFFD_API, .features = want };

	if (ioctl(fd, UFFDIO_API, &api) < 0)
		return -errno;
	if (features)
		*features = api.features;
	return 0;
}

int prim_uffd_register(int fd, void *p, size_t len, uint64_t modes)
{
	struct uffdio_register reg = {
		.range = { .start = (uintptr_t)p, .len = len },
		.mode = modes,
	};

	return prim_err(ioctl(fd, UFFDIO_REGISTER, &reg));
}

int prim_uffd_unregister(int fd, void *p, size_t len)
{
	struct uffdio_range range = { .start = (uintptr_t)p, .len = len };

	return prim_err(ioctl(fd, UFFDIO_UNREGISTER, &range));
}

int prim_uffd_move(int fd, void *dst, void *src, size_t len, uint64_t mode,
		   size_t *moved)
{
	size_t done = 0;
	int rc = 0;

	while (done < len) {
		struct uffdio_move mv = {
			.dst = (uintptr_t)dst + done,
			.src = (uintptr_t)src + done,
			.len = len - done,
			.mode = mode,
		};

		if (ioctl(fd, UFFDIO_MOVE, &mv) == 0) {
			done += (size_t)mv.move;
			break;
		}
		rc = -errno;
		if (mv.move > 0)
			done += (size_t)mv.move;
		if (rc != -EAGAIN || mv.move <= 0)
			break;
		rc = 0;
	}
	if (moved)
		*moved = done;
	return done == len ? 0 : (rc ? rc : -EAGAIN);
}

int prim_uffd_zeropage(int fd, void *dst, size_t len)
{
	struct uffdio_zeropage zp = {
		.range = { .start = (uintptr_t)dst, .len = len },
	};

	return prim_err(ioctl(fd, UFFDIO_ZEROPAGE, &zp));
}

int prim_uffd_copy(int fd, void *dst, const void *src, size_t len)
{
	struct uffdio_copy cp = {
		.dst = (uintptr_t)dst, .src = (uintptr_t)src, .len = len,
	};

	return prim_err(ioctl(fd, UFFDIO_COPY, &cp));
}

int prim_uffd_poison(int fd, void *p, size_t len)
{
	struct uffdio_poison po = {
		.range = { .start = (uintptr_t)p, .len = len },
	};

	return prim_err(ioctl(fd, UFFDIO_POISON, &po));
}

int prim_uffd_wake(int fd, void *p, size_t len)
{
	struct uffdio_range range = { .start = (uintptr_t)p, .len = len };

	return prim_err(ioctl(fd, UFFDIO_WAKE, &range));
}

static int prim_uffd_writeprotect(int fd, void *p, size_t len, uint64_t mode)
{
	struct uffdio_writeprotect wp = {
		.range = { .start = (uintptr_t)p, .len = len },
		.mode = mode,
	};

	return prim_err(ioctl(fd, UFFDIO_WRITEPROTECT, &wp));
}

int prim_uffd_unprotect(int fd, void *p, size_t len)
{
	return prim_uffd_writeprotect(fd, p, len, 0);
}

int prim_uffd_protect(int fd, void *p, size_t len)
{
	return prim_uffd_writeprotect(fd, p, len, UFFDIO_WRITEPROTECT_MODE_WP);
}

/* ---- PAGEMAP_SCAN ---- */

int prim_pagemap_open(void)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	return fd < 0 ? -errno : fd;
}

long prim_pagemap_scan(int fd, const void *start, const void *end,
		       uint64_t mask, uint64_t anyof, uint64_t inverted, uint64_t ret,
		       struct page_region *vec, size_t vec_len)
{
	struct pm_scan_arg arg = {
		.size = sizeof(arg),
		.start = (uintptr_t)start,
		.end = (uintptr_t)end,
		.vec = (uintptr_t)vec,
		.vec_len = vec_len,
		.category_inverted = inverted,
		.category_mask = mask,
		.category_anyof_mask = anyof,
		.return_mask = ret,
	};
	long n = ioctl(fd, PAGEMAP_SCAN, &arg);

	return n < 0 ? -errno : n;
}

/* Bytes of [p, p+len) whose categories, xor @inverted, have every one of
 * @mask and, if @anyof is set, at least one of @anyof. */
static long prim_bytes_matching(int fd, const void *p, size_t len, uint64_t mask,
				uint64_t anyof, uint64_t inverted)
{
	enum { VEC = 64 };
	struct page_region vec[VEC];
	const char *pos = p, *end = (const char *)p + len;
	long total = 0;

	while (pos < end) {
		long n = prim_pagemap_scan(fd, pos, end, mask, anyof, inverted,
					   (mask | anyof) & ~inverted, vec, VEC);

		if (n < 0)
			return n;
		for (long i = 0; i < n; i++)
			total += (long)(vec[i].end - vec[i].start);
		if (n < VEC)
			break;
		pos = (const char *)(uintptr_t)vec[VEC - 1].end;
	}
	return total;
}

long prim_huge_bytes(int fd, const void *p, size_t len)
{
	return prim_bytes_matching(fd, p, len, PAGE_IS_PRESENT | PAGE_IS_HUGE, 0, 0);
}

long prim_present_bytes(int fd, const void *p, size_t len)
{
	return prim_bytes_matching(fd, p, len, PAGE_IS_PRESENT, 0, 0);
}

long prim_data_bytes(int fd, const void *p, size_t len)
{
	return prim_bytes_matching(fd, p, len, 0, PAGE_IS_PRESENT | PAGE_IS_SWAPPED, 0);
}

long prim_private_bytes(int fd, const void *p, size_t len)
{
	return prim_bytes_matching(fd, p, len, PAGE_IS_PFNZERO,
				   PAGE_IS_PRESENT | PAGE_IS_SWAPPED, PAGE_IS_PFNZERO);
}

/* ---- files, /sys, io_uring ---- */

/*
 * PFNs of the @n pages from @p, from /proc/self/pagemap (@fd): 0 for a page
 * that is not present. The kernel shows PFNs only to CAP_SYS_ADMIN and
 * zeroes them for anyone else. Returns 0 or -errno.
 */
int prim_pagemap_pfns(int fd, const void *p, size_t n, uint64_t *pfn)
{
	off_t off = (off_t)((uintptr_t)p / PAGE_SIZE_4K * sizeof(uint64_t));
	size_t want = n * sizeof(uint64_t);
	ssize_t got = pread(fd, pfn, want, off);

	if (got < 0)
		return -errno;
	if ((size_t)got != want)
		return -EIO;
	for (size_t i = 0; i < n; i++)
		pfn[i] = pfn[i] >> PRIM_PM_PRESENT_BIT & 1 ? pfn[i] & PRIM_PM_PFN_MASK : 0;
	return 0;
}

/*
 * A library thread: it starts with every signal blocked (the mask is
 * inherited from the creator, which is restored at once), so a signal sent
 * to the process is never run by a library thread in the program's handler,
 * and a thread that blocks in an ioctl is never interrupted. 0 or -errno.
 */
struct prim_start {
	void *(*fn)(void *);
	void *arg;
	sem_t started;
};

static void *prim_thread_main(void *p)
{
	struct prim_start *st = p;
	void *(*fn)(void *) = st->fn;
	void *arg = st->arg;

	sem_post(&st->started); /* @st lives on the creator's stack: done with it */
	return fn(arg);
}

/*
 * The creator waits until the thread runs: a thread still starting (its
 * runtime setting itself up, allocating) when the program forks can leave
 * the child a lock held forever (seen with a sanitizer runtime).
 */
__thread bool prim_in_thread_create __attribute__((tls_model("initial-exec")));

static int prim_thread_start(pthread_t *thread, const pthread_attr_t *attr,
			     void *(*fn)(void *), void *arg)
{
	struct prim_start st = { .fn = fn, .arg = arg };
	sigset_t all, old;
	int rc;

	sem_init(&st.started, 0, 0);
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	/* What glibc allocates for the new thread must not come from the
	 * preload's jemalloc: the library may be starting (its lock held, and
	 * jemalloc's extents come from it), or restarting in a fork child. */
	prim_in_thread_create = true;
	rc = pthread_create(thread, attr, prim_thread_main, &st);
	prim_in_thread_create = false;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	while (rc == 0 && sem_wait(&st.started) < 0 && errno == EINTR)
		;
	sem_destroy(&st.started);
	return -rc;
}

int prim_thread_create(pthread_t *thread, void *(*fn)(void *), void *arg)
{
	return prim_thread_start(thread, NULL, fn, arg);
}

/*
 * The same on a stack of the library's own, mapped here (with a guard page
 * below it) and returned in *@stack for prim_thread_stack_free. glibc then
 * neither takes a cached stack nor reads the cached stack's old thread
 * data, which lives in malloc'd memory: in a fork child restarting the
 * library, that memory may be an evicted arena page that only this very
 * thread will be able to bring back.
 */
int prim_thread_create_own_stack(pthread_t *thread, void *(*fn)(void *), void *arg,
				 void **stack)
{
	char *p = prim_sys_mmap(NULL, PRIM_THREAD_STACK, PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
	pthread_attr_t attr;
	int rc;

	if (p == MAP_FAILED)
		return -errno;
	(void)prim_sys_mprotect(p, PAGE_SIZE_4K, PROT_NONE);
	pthread_attr_init(&attr);
	pthread_attr_setstack(&attr, p + PAGE_SIZE_4K, PRIM_THREAD_STACK - PAGE_SIZE_4K);
	rc = prim_thread_start(thread, &attr, fn, arg);
	pthread_attr_destroy(&attr);
	if (rc < 0) {
		prim_sys_munmap(p, PRIM_THREAD_STACK);
		return rc;
	}
	*stack = p;
	return 0;
}

void prim_thread_stack_free(void *stack)
{
	if (stack)
		prim_sys_munmap(stack, PRIM_THREAD_STACK);
}

long prim_read_text(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = read(fd, buf, size - 1);
	if (n < 0)
		n = -errno;
	close(fd);
	if (n >= 0)
		buf[n] = '\0';
	return n;
}

int prim_write_all(int fd, const char *buf, size_t len)
{
	while (len) {
		ssize_t n = write(fd, buf, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

enum exch_thp_mode prim_thp_mode(void)
{
	char buf[128];

	if (prim_read_text(PRIM_THP_ENABLED, buf, sizeof(buf)) <= 0)
		return EXCH_THP_UNKNOWN;
	if (strstr(buf, "[always]"))
		return EXCH_THP_ALWAYS;
	if (strstr(buf, "[madvise]"))
		return EXCH_THP_MADVISE;
	if (strstr(buf, "[never]"))
		return EXCH_THP_NEVER;
	return EXCH_THP_UNKNOWN;
}

int prim_io_uring_probe(void)
{
	struct io_uring_params p;
	long fd;

	memset(&p, 0, sizeof(p));
	fd = syscall(SYS_io_uring_setup, 1, &p);
	if (fd < 0)
		return -errno;
	close((int)fd);
	return 0;
}

int prim_eventfd(void)
{
	int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);

	return fd < 0 ? -errno : fd;
}

int prim_eventfd_signal(int fd)
{
	uint64_t one = 1;

	return write(fd, &one, sizeof(one)) < 0 ? -errno : 0;
}

long prim_uffd_read(int fd, struct uffd_msg *msgs, size_t n)
{
	ssize_t got = read(fd, msgs, n * sizeof(*msgs));

	return got < 0 ? -errno : got / (ssize_t)sizeof(*msgs);
}

int prim_poll_in(const int fds[2], bool ready[2])
{
	struct pollfd pfd[2] = {
		{ .fd = fds[0], .events = POLLIN },
		{ .fd = fds[1], .events = POLLIN },
	};

	if (poll(pfd, 2, -1) < 0)
		return -errno;
	ready[0] = pfd[0].revents != 0;
	ready[1] = pfd[1].revents != 0;
	return 0;
}

int prim_create(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	return fd < 0 ? -errno : fd;
}

/*
 * A shared-memory file of @size bytes at @path, mode 0600 whatever the
 * umask, mapped shared and left out of fork children. A file already there
 * for this path names a process that is gone or has exec'd (the path holds
 * our pid), so it is replaced. A shared flock on it is held while the fd is
 * open, so a reader can tell a live owner from a stale file. fd or -errno.
 */
int prim_shm_create(const char *path, size_t size, void **map)
{
	int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	void *p;

	if (fd < 0 && errno == EEXIST && unlink(path) == 0)
		fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	if (fchmod(fd, 0600) < 0 || ftruncate(fd, (off_t)size) < 0 ||
	    flock(fd, LOCK_SH | LOCK_NB) < 0)
		goto fail;
	p = prim_sys_mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		goto fail;
	(void)prim_sys_madvise(p, size, MADV_DONTFORK);
	*map = p;
	return fd;
fail:;
	int err = errno;

	unlink(path);
	close(fd);
	return -err;
}

/* Futexes in shared memory (not FUTEX_PRIVATE): another process wakes us. */
int prim_futex_wait(_Atomic uint32_t *addr, uint32_t val)
{
	long rc = syscall(SYS_futex, addr, FUTEX_WAIT, val, NULL, NULL, 0);

	return rc < 0 ? -errno : 0;
}

int prim_futex_wake(_Atomic uint32_t *addr)
{
	long rc = syscall(SYS_futex, addr, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);

	return rc < 0 ? -errno : (int)rc;
}

/*
 * Calls @fn with the name of each entry of directory @path, reading it with
 * getdents64 into a stack buffer: no malloc (opendir's), so it is safe in
 * a fork child before the program's allocator is usable. 0 or -errno.
 */
int prim_dir_each(const char *path, void (*fn)(const char *name, void *arg), void *arg)
{
	char buf[8192] __attribute__((aligned(8)));
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	long n;

	if (fd < 0)
		return -errno;
	while ((n = syscall(SYS_getdents64, fd, buf, sizeof(buf))) > 0) {
		for (long off = 0; off < n;) {
			struct prim_dirent {
				uint64_t ino;
				int64_t off;
				unsigned short reclen;
				unsigned char type;
				char name[];
			} *d = (struct prim_dirent *)(buf + off);

			fn(d->name, arg);
			off += d->reclen;
		}
	}
	close(fd);
	return n < 0 ? -errno : 0;
}

/*
 * An error's description for a message. Not strerror(): that translates
 * through the locale, taking glibc's locale lock, and the library may be
 * speaking from inside the program's first malloc, which can come from
 * bindtextdomain holding that very lock (PostgreSQL hung so under the
 * preload). strerrordesc_np is the untranslated text, without a lock.
 */
const char *prim_errstr(int err)
{
	const char *s = strerrordesc_np(err);

	return s ? s : "unknown error";
}

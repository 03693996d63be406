/*
 * swap.c - the tier's swap file: pages written and read with io_uring.
 *
 * The coldest compressed pages leave memory for a file of the library's
 * own, never the system's swap: an unlinked file (O_TMPFILE, mode 0600) in
 * EXCH_SWAP_DIR that nobody else can open and that disappears with the
 * process. It is a row of 4K slots, at most max_bytes of them.
 *
 *   writes  in batches: the pages are copied into buffers registered with
 *           the ring (so the kernel does not map them per request), one
 *           WRITE_FIXED each, submitted together and waited for together.
 *           Slots are taken as one run where the bitmap has one (the
 *           "cluster"), so a batch is a sequential write. A failed or short
 *           write (ENOSPC, EIO) frees the batch's slots and returns the
 *           error: the caller still has the pages, nothing is lost.
 *   reads   READ_FIXED into registered buffers: one page, or a fault's page
 *           and its neighbours (readahead) submitted together.
 *   checks  every slot carries, in memory, the CRC-32C of what was written
 *           and the identity the caller gave (the page's address): a read
 *           whose bytes or identity do not match is -EIO and counted,
 *           never handed out as data.
 *
 * Tests inject errors (swap_inject) to take the failure paths for real.
 *
 * Locking: swap_file.lock protects the ring, the buffers, the bitmap and the
 * slot table; one batch is in flight at a time. Nothing is taken under it.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define SWAP_QUEUE_DEPTH SWAP_BATCH
#define SWAP_BITS 64

struct swap_slot {
	uint64_t id;   /* the identity written with it */
	uint32_t crc;  /* CRC-32C of its PAGE_SIZE_4K bytes */
	uint32_t len;  /* bytes the caller wrote (the rest is padding) */
};

struct swap_file {
	pthread_mutex_t lock;
	int fd;
	struct io_uring ring;
	char *bufs;              /* SWAP_BATCH registered pages */
	size_t nslots;
	uint64_t *used;          /* bitmap of nslots */
	struct swap_slot *slots;
	size_t used_count;
	size_t hint;             /* where the next run search starts */
	bool retired;            /* no new slots: a fork child may read them */
	int inject_write;        /* tests: -errno for the next writes */
	int inject_read;
};

static size_t swap_map_bytes(size_t nslots)
{
	return ALIGN_UP(nslots, SWAP_BITS) / 8;
}

static bool swap_bit(const struct swap_file *s, size_t i)
{
	return s->used[i / SWAP_BITS] >> (i % SWAP_BITS) & 1;
}

static void swap_set(struct swap_file *s, size_t i, bool on)
{
	if (on)
		s->used[i / SWAP_BITS] |= (uint64_t)1 << (i % SWAP_BITS);
	else
		s->used[i / SWAP_BITS] &= ~((uint64_t)1 << (i % SWAP_BITS));
}

void swap_close(struct swap_file *s)
{
	if (!s)
		return;
	if (s->ring.ring_fd > 0)
		io_uring_queue_exit(&s->ring);
	if (s->fd >= 0)
		close(s->fd);
	if (s->bufs)
		prim_unmap(s->bufs, SWAP_BATCH * PAGE_SIZE_4K);
	prim_meta_free(s->used, swap_map_bytes(s->nslots));
	prim_meta_free(s->slots, s->nslots * sizeof(*s->slots));
	prim_meta_free(s, sizeof(*s));
}

/* The ring and its registered buffers; 0 or -errno. */
static int swap_ring(struct swap_file *s)
{
	struct iovec iov;
	void *p;
	int rc = prim_map(SWAP_BATCH * PAGE_SIZE_4K, PAGE_SIZE_4K, false, &p);

	if (rc < 0)
		return rc;
	s->bufs = p;
	rc = io_uring_queue_init(SWAP_QUEUE_DEPTH, &s->ring, 0);
	if (rc < 0) {
		s->ring.ring_fd = 0;
		return rc;
	}
	iov = (struct iovec){ .iov_base = s->bufs, .iov_len = SWAP_BATCH * PAGE_SIZE_4K };
	return io_uring_register_buffers(&s->ring, &iov, 1);
}

int swap_open(const char *dir, size_t max_bytes, struct swap_file **out)
{
	struct swap_file *s = prim_meta_alloc(sizeof(*s));
	int rc;

	if (!s)
		return -ENOMEM;
	pthread_mutex_init(&s->lock, NULL);
	s->nslots = max_bytes / PAGE_SIZE_4K;
	s->fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	s->used = prim_meta_alloc(swap_map_bytes(s->nslots));
	s->slots = prim_meta_alloc(s->nslots * sizeof(*s->slots));
	rc = s->fd < 0 ? -errno : !s->nslots ? -EINVAL : !s->used || !s->slots ? -ENOMEM : 0;
	if (rc == 0)
		rc = swap_ring(s);
	if (rc < 0) {
		swap_close(s);
		return rc;
	}
	*out = s;
	return 0;
}

/* A run of @n free slots (or @n scattered ones); false if fewer are free.
 * Under lock. */
static bool swap_take(struct swap_file *s, unsigned n, uint32_t *slot)
{
	size_t run = 0, got = 0;

	if (s->retired || s->nslots - s->used_count < n)
		return false;
	for (size_t k = 0; k < s->nslots && run < n; k++) {
		size_t i = (s->hint + k) % s->nslots;

		if (swap_bit(s, i))
			run = 0;
		else
			run = i == 0 ? 1 : run + 1; /* a run does not wrap around */
		if (run == n) {
			for (unsigned j = 0; j < n; j++)
				slot[j] = (uint32_t)(i + 1 - n + j);
			got = n;
		}
	}
	for (size_t i = 0; got < n && i < s->nslots; i++) /* no run: any */
		if (!swap_bit(s, i))
			slot[got++] = (uint32_t)i;
	for (unsigned j = 0; j < n; j++)
		swap_set(s, slot[j], true);
	s->used_count += n;
	s->hint = slot[n - 1] + 1;
	return true;
}

/* A ring that failed to submit or reap cannot be trusted to hold only
 * this batch's requests: a new one. Under lock. */
static void swap_ring_reset(struct swap_file *s)
{
	struct iovec iov = { .iov_base = s->bufs, .iov_len = SWAP_BATCH * PAGE_SIZE_4K };

	io_uring_queue_exit(&s->ring);
	if (io_uring_queue_init(SWAP_QUEUE_DEPTH, &s->ring, 0) < 0 ||
	    io_uring_register_buffers(&s->ring, &iov, 1) < 0)
		s->ring.ring_fd = 0; /* every later request fails with -EIO */
}

static bool swap_transient(int rc)
{
	return rc == -EINTR || rc == -EAGAIN || rc == -EBUSY;
}

/* Submits the @n requests the caller prepared and reaps them, calling
 * @done for each completion; 0, or a ring error (the ring is then new and
 * the requests' outcome unknown). Under lock. */
static int swap_submit(struct swap_file *s, unsigned n,
		       void (*done)(struct swap_file *, const struct io_uring_cqe *, void *),
		       void *arg)
{
	int rc;

	do
		rc = io_uring_submit(&s->ring);
	while (swap_transient(rc));
	for (unsigned reaped = 0; rc >= 0 && reaped < n; reaped++) {
		struct io_uring_cqe *cqe;

		do
			rc = io_uring_wait_cqe(&s->ring, &cqe);
		while (rc == -EINTR);
		if (rc < 0)
			break;
		done(s, cqe, arg);
		io_uring_cqe_seen(&s->ring, cqe);
	}
	if (rc < 0) {
		swap_ring_reset(s);
		return rc;
	}
	return 0;
}

struct swap_run_state {
	const size_t *want;
	int first;
};

static void swap_run_done(struct swap_file *s, const struct io_uring_cqe *cqe, void *arg)
{
	struct swap_run_state *st = arg;

	(void)s;
	if (!st->first && cqe->res < 0)
		st->first = cqe->res;
	else if (!st->first && (size_t)cqe->res != st->want[cqe->user_data])
		st->first = -EIO;
}

/* Submits @n requests prepared by the caller and reaps them; 0 if each
 * moved @want[i] bytes, else the first -errno (short: -EIO). Under lock. */
static int swap_run(struct swap_file *s, unsigned n, const size_t *want)
{
	struct swap_run_state st = { .want = want };
	int rc = swap_submit(s, n, swap_run_done, &st);

	return rc < 0 ? rc : st.first;
}

int swap_write(struct swap_file *s, const void *const *pages, const size_t *lens,
	       const uint64_t *ids, unsigned n, uint32_t *slot)
{
	size_t want[SWAP_BATCH];
	int rc;

	if (!n || n > SWAP_BATCH)
		return -EINVAL;
	lock_take(&s->lock, LOCK_SWAP);
	if (!swap_take(s, n, slot)) {
		lock_drop(&s->lock, LOCK_SWAP);
		stat_inc(STAT_swap_full);
		return -ENOSPC;
	}
	for (unsigned i = 0; i < n; i++) {
		char *buf = s->bufs + (size_t)i * PAGE_SIZE_4K;
		struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);

		memcpy(buf, pages[i], lens[i]);
		memset(buf + lens[i], 0, PAGE_SIZE_4K - lens[i]);
		s->slots[slot[i]] = (struct swap_slot){
			.id = ids[i], .crc = exch_crc32c(0, buf, PAGE_SIZE_4K), .len = (uint32_t)lens[i],
		};
		io_uring_prep_write_fixed(sqe, s->fd, buf, PAGE_SIZE_4K,
					  (off_t)slot[i] * (off_t)PAGE_SIZE_4K, 0);
		sqe->user_data = i;
		want[i] = PAGE_SIZE_4K;
	}
	rc = swap_run(s, n, want);
	if (rc == 0 && s->inject_write)
		rc = s->inject_write;
	if (rc < 0) { /* the caller keeps its pages; the slots are free again */
		for (unsigned i = 0; i < n; i++)
			swap_set(s, slot[i], false);
		s->used_count -= n;
		stat_inc(STAT_swap_write_errors);
	} else {
		stat_add(STAT_swap_pages_written, n);
		stat_add(STAT_swap_slots_used, n);
	}
	lock_drop(&s->lock, LOCK_SWAP);
	return rc;
}

/* Checks the read of slot @slot in buffer @buf and hands it out; 0 or -EIO. */
static int swap_check(struct swap_file *s, uint32_t slot, uint64_t id, const char *buf,
		      void *page, size_t *len)
{
	if (s->slots[slot].id != id || exch_crc32c(0, buf, PAGE_SIZE_4K) != s->slots[slot].crc) {
		stat_inc(STAT_swap_mismatches);
		return -EIO;
	}
	*len = s->slots[slot].len;
	memcpy(page, buf, *len);
	stat_inc(STAT_swap_pages_read);
	return 0;
}

static void swap_read_done(struct swap_file *s, const struct io_uring_cqe *cqe, void *arg)
{
	int *rc = arg;

	(void)s;
	rc[cqe->user_data] = cqe->res < 0 ? cqe->res : cqe->res != (int)PAGE_SIZE_4K ? -EIO : 0;
}

int swap_read_many(struct swap_file *s, unsigned n, const uint32_t *slot, const uint64_t *id,
		   void *const *page, size_t *len, int *rc)
{
	unsigned queued = 0;
	int err = 0;

	if (!n || n > SWAP_BATCH)
		return -EINVAL;
	lock_take(&s->lock, LOCK_SWAP);
	for (unsigned i = 0; i < n; i++) {
		struct io_uring_sqe *sqe;

		rc[i] = s->ring.ring_fd <= 0 ? -EIO :
			slot[i] >= s->nslots || !swap_bit(s, slot[i]) ? -EINVAL : 1;
		if (rc[i] < 0)
			continue;
		sqe = io_uring_get_sqe(&s->ring);
		io_uring_prep_read_fixed(sqe, s->fd, s->bufs + (size_t)i * PAGE_SIZE_4K,
					 PAGE_SIZE_4K, (off_t)slot[i] * (off_t)PAGE_SIZE_4K, 0);
		sqe->user_data = i;
		queued++;
	}
	if (queued)
		err = swap_submit(s, queued, swap_read_done, rc);
	for (unsigned i = 0; i < n; i++) {
		if (rc[i] == 1) /* never completed: the ring failed */
			rc[i] = err < 0 ? err : -EIO;
		if (rc[i] == 0 && s->inject_read)
			rc[i] = s->inject_read;
		if (rc[i] == 0)
			rc[i] = swap_check(s, slot[i], id[i], s->bufs + (size_t)i * PAGE_SIZE_4K,
					   page[i], &len[i]);
		else if (rc[i] != -EINVAL)
			stat_inc(STAT_swap_read_errors);
	}
	lock_drop(&s->lock, LOCK_SWAP);
	return 0;
}

int swap_read(struct swap_file *s, uint32_t slot, uint64_t id, void *page, size_t *len)
{
	int rc;

	swap_read_many(s, 1, &slot, &id, &page, len, &rc);
	return rc;
}

void swap_free(struct swap_file *s, uint32_t slot)
{
	lock_take(&s->lock, LOCK_SWAP);
	if (slot < s->nslots && swap_bit(s, slot)) {
		swap_set(s, slot, false);
		s->used_count--;
		stat_sub(STAT_swap_slots_used, 1);
	}
	lock_drop(&s->lock, LOCK_SWAP);
}

int swap_fd(const struct swap_file *s)
{
	return s->fd;
}

void swap_inject(struct swap_file *s, int write_errno, int read_errno)
{
	lock_take(&s->lock, LOCK_SWAP);
	s->inject_write = write_errno;
	s->inject_read = read_errno;
	lock_drop(&s->lock, LOCK_SWAP);
}

size_t swap_slots_used(struct swap_file *s)
{
	size_t n;

	lock_take(&s->lock, LOCK_SWAP);
	n = s->used_count;
	lock_drop(&s->lock, LOCK_SWAP);
	return n;
}

void swap_retire(struct swap_file *s)
{
	s->retired = true; /* fork handlers: nothing else runs */
}

int swap_fork_child(struct swap_file *s)
{
	struct iovec iov = { .iov_base = s->bufs, .iov_len = SWAP_BATCH * PAGE_SIZE_4K };
	int rc;

	pthread_mutex_init(&s->lock, NULL);
	s->retired = true;
	/* The parent's ring: its queues are shared memory with the parent.
	 * Only this process's mapping and fd reference go away. */
	io_uring_queue_exit(&s->ring);
	rc = io_uring_queue_init(SWAP_QUEUE_DEPTH, &s->ring, 0);
	if (rc < 0) {
		s->ring.ring_fd = 0; /* reads fail with -EIO from now on */
		return rc;
	}
	return io_uring_register_buffers(&s->ring, &iov, 1);
}

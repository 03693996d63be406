/*
 * alloc_work.c - allocation-heavy workloads for bench_preload, run as
 * separate programs so each can be given a different malloc (plain glibc,
 * jemalloc, libexch-preload.so). Each checks its own data and exits 1 if
 * anything came back wrong.
 *
 *   small     one thread: a pool of small objects (16-512 B) replaced at
 *             random, like a cache of strings and nodes, then a pass that
 *             reads them all
 *   threads   four threads doing the same on their own pools, with objects
 *             freed by another thread than the one that allocated them
 *   large     one thread: buffers of 64 KiB to 8 MiB allocated, written,
 *             resized and freed, like a program handling requests
 *   cache     one thread: CACHE_RECORDS text records of ~1 KB, then two
 *             rounds of random lookups from the first tenth of them (the
 *             hot set; the rest is kept but never read again), each record
 *             served checked. It prints the second round's time (the
 *             steady state: under a resident limit the first round is the
 *             tier settling in) and its resident memory then (VmRSS).
 *
 * Usage: alloc_work small|threads|large|cache [scale]   (scale 1 = default size)
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SMALL_OBJECTS 1000000
#define SMALL_ROUNDS 6000000
#define THREADS 4
#define LARGE_ROUNDS 3000
#define LARGE_LIVE 32
#define CACHE_RECORDS 400000
#define CACHE_RECORD 1000
#define CACHE_HOT_DIV 10 /* the first tenth is read */
#define CACHE_LOOKUPS 20000000

static unsigned long scale = 1;

/* Under libexch-preload.so: the hugepage share of the heap now, printed
 * for bench_preload while the heap is at its largest, and how long the
 * pool has been taking to populate a frame. */
static void report_coverage(void)
{
	int (*get)(const char *, uint64_t *) =
		(int (*)(const char *, uint64_t *))dlsym(RTLD_DEFAULT, "exch_stats_get");
	uint64_t pct = 0;

	if (get && get("hugepage_coverage_pct", &pct) == 0)
		printf("coverage %llu\n", (unsigned long long)pct);
	if (get && get("pool_populate_us", &pct) == 0)
		printf("populate_us %llu\n", (unsigned long long)pct);
}

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

struct obj {
	uint32_t len;
	uint32_t tag;
	unsigned char data[];
};

static struct obj *obj_new(uint64_t *s, uint32_t tag)
{
	uint32_t len = (uint32_t)(16 + rnd(s) % 497);
	struct obj *o = malloc(sizeof(*o) + len);

	o->len = len;
	o->tag = tag;
	memset(o->data, (int)(tag & 0xff), len);
	return o;
}

static int obj_ok(const struct obj *o)
{
	return o->data[0] == (unsigned char)(o->tag & 0xff) &&
	       o->data[o->len - 1] == (unsigned char)(o->tag & 0xff);
}

/* Replaces objects of @pool at random; returns the objects found wrong. */
static long churn(struct obj **pool, size_t n, unsigned long rounds, uint64_t seed)
{
	long bad = 0;

	for (size_t i = 0; i < n; i++)
		pool[i] = obj_new(&seed, (uint32_t)i);
	for (unsigned long r = 0; r < rounds; r++) {
		size_t i = rnd(&seed) % n;

		bad += !obj_ok(pool[i]);
		free(pool[i]);
		pool[i] = obj_new(&seed, (uint32_t)r);
	}
	for (size_t i = 0; i < n; i++)
		bad += !obj_ok(pool[i]);
	return bad;
}

static pthread_barrier_t churned; /* threads: coverage when all pools are full */

static int small(void)
{
	size_t n = SMALL_OBJECTS * scale;
	struct obj **pool = malloc(n * sizeof(*pool));
	long bad = churn(pool, n, SMALL_ROUNDS * scale, 1);

	report_coverage();
	for (size_t i = 0; i < n; i++)
		free(pool[i]);
	free(pool);
	return bad != 0;
}

struct worker {
	struct obj **pool;
	size_t n;
	uint64_t seed;
	long bad;
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;

	w->bad = churn(w->pool, w->n, SMALL_ROUNDS * scale / THREADS, w->seed);
	pthread_barrier_wait(&churned);
	return NULL;
}

static int threads(void)
{
	struct worker w[THREADS];
	pthread_t th[THREADS];
	long bad = 0;

	pthread_barrier_init(&churned, NULL, THREADS + 1);
	for (int t = 0; t < THREADS; t++) {
		w[t] = (struct worker){ .n = SMALL_OBJECTS * scale / THREADS, .seed = (uint64_t)t + 7 };
		w[t].pool = malloc(w[t].n * sizeof(struct obj *));
		pthread_create(&th[t], NULL, worker_main, &w[t]);
	}
	pthread_barrier_wait(&churned);
	report_coverage();
	for (int t = 0; t < THREADS; t++)
		pthread_join(th[t], NULL);
	/* Each pool is freed by the next thread's owner: cross-thread frees. */
	for (int t = 0; t < THREADS; t++) {
		struct worker *o = &w[(t + 1) % THREADS];

		bad += w[t].bad;
		for (size_t i = 0; i < o->n; i++)
			free(o->pool[i]);
		free(o->pool);
	}
	return bad != 0;
}

static int large(void)
{
	unsigned char *live[LARGE_LIVE] = { 0 };
	size_t len[LARGE_LIVE] = { 0 };
	uint64_t s = 3;
	long bad = 0;

	for (unsigned long r = 0; r < LARGE_ROUNDS * scale; r++) {
		unsigned k = (unsigned)(rnd(&s) % LARGE_LIVE);

		if (live[k]) {
			bad += live[k][0] != (unsigned char)k || live[k][len[k] - 1] != (unsigned char)k;
			if (r % 3 == 0) { /* grow it, as a buffer does */
				live[k] = realloc(live[k], len[k] * 2);
				bad += live[k][len[k] - 1] != (unsigned char)k;
				len[k] *= 2;
				memset(live[k], k, len[k]);
				continue;
			}
			free(live[k]);
		}
		len[k] = (64u << 10) << (rnd(&s) % 8);
		live[k] = malloc(len[k]);
		memset(live[k], k, len[k]);
	}
	report_coverage();
	for (unsigned k = 0; k < LARGE_LIVE; k++)
		free(live[k]);
	return bad != 0;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long vm_rss_kb(void)
{
	char line[128];
	long kb = -1;
	FILE *f = fopen("/proc/self/status", "r");

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb;
}

/* Record @i: its number, then words drawn at random, as text is (LZ4
 * makes a page of it 1.8-1.9x smaller). */
static void cache_fill(unsigned char *r, uint32_t i)
{
	static const char *const words[] = {
		"the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as",
		"by", "at", "from", "his", "record", "server", "request", "value", "cache",
		"memory", "page", "time", "user", "session", "data", "index", "alpha", "bravo",
		"charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
		"lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
		"uniform", "victor", "whiskey", "xray", "yankee", "zulu", "north", "south", "east",
		"west", "spring", "summer", "autumn", "winter",
	};
	uint64_t s = i + 1;
	size_t k = sizeof(i);

	memcpy(r, &i, sizeof(i));
	while (k < CACHE_RECORD) {
		const char *w = words[rnd(&s) % (sizeof(words) / sizeof(words[0]))];

		while (*w && k < CACHE_RECORD)
			r[k++] = (unsigned char)*w++;
		if (k < CACHE_RECORD)
			r[k++] = ' ';
	}
}

static int cache(void)
{
	size_t n = CACHE_RECORDS * scale, hot = n / CACHE_HOT_DIV;
	unsigned char **rec = malloc(n * sizeof(*rec));
	uint64_t s = 11, sum = 0;
	long bad = 0;
	double t0 = 0;

	for (size_t i = 0; i < n; i++) {
		rec[i] = malloc(CACHE_RECORD);
		cache_fill(rec[i], (uint32_t)i);
	}
	for (int round = 0; round < 2; round++) {
		t0 = now_s();
		for (unsigned long l = 0; l < CACHE_LOOKUPS * scale; l++) {
			size_t i = rnd(&s) % hot;
			uint32_t id;

			memcpy(&id, rec[i], sizeof(id));
			bad += id != (uint32_t)i;
			for (size_t k = sizeof(id); k < CACHE_RECORD; k += 64)
				sum += rec[i][k];
		}
	}
	printf("steady_s %.3f\nrss_kb %ld\nsum %llu\n", now_s() - t0, vm_rss_kb(),
	       (unsigned long long)sum);
	report_coverage();
	return bad != 0; /* the records go with the process, as a server's do */
}

int main(int argc, char **argv)
{
	if (argc > 2)
		scale = strtoul(argv[2], NULL, 10) ? strtoul(argv[2], NULL, 10) : 1;
	if (argc > 1 && !strcmp(argv[1], "small"))
		return small();
	if (argc > 1 && !strcmp(argv[1], "threads"))
		return threads();
	if (argc > 1 && !strcmp(argv[1], "large"))
		return large();
	if (argc > 1 && !strcmp(argv[1], "cache"))
		return cache();
	fprintf(stderr, "usage: alloc_work small|threads|large|cache [scale]\n");
	return 2;
}

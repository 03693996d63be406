/*
 * options.c - the EXCH_* options table.
 *
 * Every knob of the library is one row here: its environment name, kind,
 * default, bounds and meaning. Values are read from `environ` directly, not
 * through getenv(), because under LD_PRELOAD the library may start before
 * libc has finished its own start-up, and getenv() is not safe against a
 * concurrent setenv() anyway.
 *
 * Parsing is strict and forgiving at once: a value that is not valid for its
 * kind, or out of bounds, is rejected with one warning naming the variable,
 * the bad value and the default that is kept; the program goes on. Sizes
 * take binary suffixes K, M, G (and T), upper or lower case, so
 * EXCH_NT_THRESHOLD=2M means 2 MiB.
 *
 * The table is read once (opt_init) and is immutable afterwards, so readers
 * need no lock. opt_reload() exists for tests that change the environment.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

extern char **environ;

enum opt_kind { OPT_BOOL, OPT_COUNT, OPT_SIZE, OPT_ENUM, OPT_STRING };

#define OPT_STRING_MAX 256
#define OPT_ENUM_MAX 5

struct opt_desc {
	const char *name; /* without the EXCH_ prefix */
	enum opt_kind kind;
	long long def;
	long long min, max;
	const char *choices[OPT_ENUM_MAX]; /* OPT_ENUM: value = index */
	const char *doc;      /* what it does; README and libexch(7) print it */
	const char *def_text; /* the default in words, when not just the value */
};

static const struct opt_desc opt_table[OPT__COUNT] = {
	[OPT_VERBOSE] = { "VERBOSE", OPT_BOOL, 0, 0, 1, { 0 },
		"1: say at start what is on, what fell back and why (one line each)" },
	[OPT_STATS] = { "STATS", OPT_BOOL, 0, 0, 1, { 0 },
		"1: print every counter, with its reason, on stderr at exit" },
	[OPT_STATS_FILE] = { "STATS_FILE", OPT_STRING, 0, 0, 0, { 0 },
		"write the counters as JSON to this path at exit; %p in it is the "
		"process ID (use it when the program starts others: each process "
		"writes at its exit); without %p a fork child that uses the library "
		"writes path.<pid>", "unset" },
	[OPT_PUBLISH] = { "PUBLISH", OPT_BOOL, 1, 0, 1, { 0 },
		"publish live counters for exchstat(1) in /dev/shm/libexch.<pid>, "
		"readable by this user only; 0: do not" },
	[OPT_UFFD] = { "UFFD", OPT_BOOL, 1, 0, 1, { 0 },
		"0: do not use userfaultfd; arenas are plain memory with kernel THP" },
	[OPT_THP] = { "THP", OPT_ENUM, 0, 0, 1, { "always", "never" },
		"always: first touches get pool hugepages; never: 4K pages" },
	[OPT_POOL_FRAMES] = { "POOL_FRAMES", OPT_COUNT, 32, 1, 65536, { 0 },
		"pre-zeroed 2 MB frames kept ready per NUMA node, at most",
		"32 (with EXCH_LIMIT: a 32nd of the limit, at least 1, if less)" },
	[OPT_POOL_START] = { "POOL_START", OPT_COUNT, 0, 0, 65536, { 0 },
		"frames per node at start (0: EXCH_POOL_FRAMES); the pool doubles, up to "
		"EXCH_POOL_FRAMES, when first touches drain it after it was full",
		"0 (4 under the preload)" },
	[OPT_FAULT_PER_CPU] = { "FAULT_PER_CPU", OPT_ENUM, 0, 0, 2, { "auto", "always", "never" },
		"a fault thread bound to each CPU (up to 8), so a restore is served on the "
		"CPU that faulted; auto: once the tier first evicts" },
	[OPT_FAULT_THREADS] = { "FAULT_THREADS", OPT_COUNT, 1, 1, 64, { 0 },
		"threads serving userfaultfd faults when they are not one per CPU" },
	[OPT_SIMD] = { "SIMD", OPT_ENUM, -1, 0, 3,
		{ "scalar", "sse2", "avx2", "avx512" },
		"the exchange engine's variant; one the CPU lacks warns and uses the best",
		"the best the CPU runs" },
	[OPT_NT_THRESHOLD] = { "NT_THRESHOLD", OPT_SIZE, 0, 0, 1LL << 40, { 0 },
		"copies at least this large use non-temporal stores (EXCH_HINT_AUTO)",
		"a core's LLC share, 256K to 1M" },
	[OPT_MAX_PTES_NONE] = { "MAX_PTES_NONE", OPT_COUNT, 64, 0, 511, { 0 },
		"a region with more never-used 4K pages than this is not coalesced "
		"(it would make them resident)" },
	[OPT_COALESCE_BLOCK_MS] = { "COALESCE_BLOCK_MS", OPT_COUNT, 1000, 0, 3600000, { 0 },
		"how long exch_coalesce(EXCH_BLOCK) retries busy regions" },
	[OPT_CAPTURE_FRAMES] = { "CAPTURE_FRAMES", OPT_COUNT, 32, 0, 65536, { 0 },
		"freed hugepages kept for reuse per NUMA node (0: give them back)",
		"32 (with EXCH_LIMIT: a 32nd of the limit, at least 1, if less)" },
	[OPT_POOL_DECAY_MS] = { "POOL_DECAY_MS", OPT_COUNT, 10000, 0, 86400000, { 0 },
		"after this long without a frame taken or captured, the frames the pool "
		"grew by and the captured hugepages are given back (0: kept)" },
	[OPT_COALESCE] = { "COALESCE", OPT_BOOL, 0, 0, 1, { 0 },
		"1: start the background coalescer with the library" },
	[OPT_COALESCE_MBPS] = { "COALESCE_MBPS", OPT_COUNT, 256, 1, 1000000, { 0 },
		"the background coalescer's budget, MB of regions per second" },
	[OPT_COALESCE_INTERVAL_MS] = { "COALESCE_INTERVAL_MS", OPT_COUNT, 100, 10, 3600000, { 0 },
		"how often the background coalescer wakes up" },
	[OPT_TIER_MAX] = { "TIER_MAX", OPT_SIZE, 1LL << 30, 1LL << 20, 1LL << 40, { 0 },
		"memory the tier's compressed pool may use; beyond it, its least "
		"recently used pages go to the swap file",
		"1G (with EXCH_LIMIT: a quarter of the limit, if less)" },
	[OPT_SWAP_DIR] = { "SWAP_DIR", OPT_STRING, 0, 0, 0, { 0 },
		"directory of the tier's swap file (unlinked at creation, mode 0600)",
		TIER_SWAP_DIR_DEFAULT },
	[OPT_SWAP_MAX] = { "SWAP_MAX", OPT_SIZE, 4LL << 30, 0, 1LL << 42, { 0 },
		"size cap of the swap file; 0 turns swap off (pages that do not "
		"compress stay in memory)" },
	[OPT_LIMIT] = { "LIMIT", OPT_SIZE, 0, 0, 1LL << 50, { 0 },
		"resident cap of the heap: the arenas' pages, the compressed pool and "
		"the frame pool's frames; a background thread evicts the coldest regions "
		"first (the arenas keep a quarter of it at least); 0: none" },
	[OPT_HEAP_MAX] = { "HEAP_MAX", OPT_SIZE, 64LL << 30, 64LL << 20, 1LL << 46, { 0 },
		"preload: address space reserved for the heap arena (MAP_NORESERVE: "
		"not memory)" },
	[OPT_MMAP_MIN] = { "MMAP_MIN", OPT_SIZE, 256LL << 10, 4096, 1LL << 40, { 0 },
		"preload: anonymous private read-write mmap calls at least this large, "
		"without a fixed address, are placed in an arena" },
};

static long long opt_values[OPT__COUNT];
static bool opt_from_env[OPT__COUNT]; /* set in the environment, validly */
static char opt_strings[OPT__COUNT][OPT_STRING_MAX];
static pthread_once_t opt_once = PTHREAD_ONCE_INIT;
static _Atomic bool opt_loaded;

int opt_parse_size(const char *s, long long *out)
{
	char *end;
	unsigned long long v;
	int shift = 0;

	if (!s || !*s || *s == '-' || *s == '+' || *s == ' ')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (end == s)
		return -EINVAL;
	if (errno == ERANGE)
		return -ERANGE;
	switch (*end) {
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	case 't': case 'T': shift = 40; end++; break;
	default: break;
	}
	if (shift && (*end == 'b' || *end == 'B' || *end == 'i'))
		end += (*end == 'i' && (end[1] == 'b' || end[1] == 'B')) ? 2 : 1;
	if (*end)
		return -EINVAL;
	if (v > ((unsigned long long)LLONG_MAX >> shift))
		return -ERANGE;
	*out = (long long)(v << shift);
	return 0;
}

static int opt_parse_bool(const char *s, long long *out)
{
	static const char *const yes[] = { "1", "yes", "on", "true" };
	static const char *const no[] = { "0", "no", "off", "false" };

	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		if (!strcasecmp(s, yes[i]))
			return *out = 1, 0;
		if (!strcasecmp(s, no[i]))
			return *out = 0, 0;
	}
	return -EINVAL;
}

static int opt_parse(const struct opt_desc *d, const char *s, long long *out)
{
	switch (d->kind) {
	case OPT_BOOL:
		return opt_parse_bool(s, out);
	case OPT_COUNT:
	case OPT_SIZE: {
		int rc = opt_parse_size(s, out);

		if (rc == 0 && (*out < d->min || *out > d->max))
			rc = -ERANGE;
		return rc;
	}
	case OPT_ENUM:
		for (int i = 0; i < OPT_ENUM_MAX && d->choices[i]; i++)
			if (!strcasecmp(s, d->choices[i]))
				return *out = i, 0;
		return -EINVAL;
	case OPT_STRING:
		return strlen(s) < OPT_STRING_MAX ? 0 : -ENAMETOOLONG;
	}
	return -EINVAL;
}

/* The value of EXCH_<name> in environ, or NULL. */
static const char *opt_env(const char *name)
{
	size_t n = strlen(name);

	for (char **e = environ; e && *e; e++) {
		const char *s = *e;

		if (!strncmp(s, "EXCH_", 5) && !strncmp(s + 5, name, n) && s[5 + n] == '=')
			return s + 6 + n;
	}
	return NULL;
}

/* 64M, 1G, 0: the largest binary unit that divides @v. */
static void opt_size_text(long long v, char *buf, size_t size)
{
	static const char units[] = "KMGT";
	int u = -1;

	while (v && u < 3 && v % 1024 == 0) {
		v /= 1024;
		u++;
	}
	if (u < 0)
		snprintf(buf, size, "%lld", v);
	else
		snprintf(buf, size, "%lld%c", v, units[u]);
}

static void opt_default_text(const struct opt_desc *d, char *buf, size_t size)
{
	if (d->def_text)
		snprintf(buf, size, "%s", d->def_text);
	else if (d->kind == OPT_ENUM)
		snprintf(buf, size, "%s", d->choices[d->def]);
	else if (d->kind == OPT_SIZE)
		opt_size_text(d->def, buf, size);
	else
		snprintf(buf, size, "%lld", d->def);
}

/* What a valid value looks like, for the warning about an invalid one. */
static void opt_expected_text(const struct opt_desc *d, char *buf, size_t size)
{
	char lo[24], hi[24];
	size_t n = 0;

	switch (d->kind) {
	case OPT_BOOL:
		snprintf(buf, size, "0 or 1");
		return;
	case OPT_COUNT:
		snprintf(buf, size, "a whole number from %lld to %lld", d->min, d->max);
		return;
	case OPT_SIZE:
		opt_size_text(d->min, lo, sizeof(lo));
		opt_size_text(d->max, hi, sizeof(hi));
		snprintf(buf, size, "a size from %s to %s; K, M, G, T suffixes", lo, hi);
		return;
	case OPT_ENUM:
		n = (size_t)snprintf(buf, size, "one of");
		for (int i = 0; i < OPT_ENUM_MAX && d->choices[i] && n < size; i++)
			n += (size_t)snprintf(buf + n, size - n, "%s %s", i ? "," : "",
					      d->choices[i]);
		return;
	case OPT_STRING:
		snprintf(buf, size, "fewer than %d bytes", OPT_STRING_MAX);
		return;
	}
}

/* @s with what @format cannot show as is escaped. */
static void opt_print_escaped(FILE *out, const char *s, enum opt_doc_format format)
{
	for (; *s; s++) {
		if (format == OPT_DOC_MAN && *s == '-')
			fputs("\\-", out);
		else if (format == OPT_DOC_MAN && *s == '\\')
			fputs("\\e", out);
		else if (format == OPT_DOC_MARKDOWN && *s == '<')
			fputs("&lt;", out);
		else if (format == OPT_DOC_MARKDOWN && *s == '>')
			fputs("&gt;", out);
		else
			fputc(*s, out);
	}
}

void opt_print_doc(FILE *out, enum opt_doc_format format)
{
	if (format == OPT_DOC_MARKDOWN)
		fputs("| variable | default | meaning |\n| --- | --- | --- |\n", out);
	for (int i = 0; i < OPT__COUNT; i++) {
		const struct opt_desc *d = &opt_table[i];
		char def[64], values[136] = "";

		opt_default_text(d, def, sizeof(def));
		if (d->kind == OPT_ENUM) {
			strcpy(values, " (");
			opt_expected_text(d, values + 2, sizeof(values) - 3);
			strcat(values, ")");
		}
		if (format == OPT_DOC_MARKDOWN) {
			fprintf(out, "| `EXCH_%s` | ", d->name);
			opt_print_escaped(out, def, format);
			fputs(" | ", out);
			opt_print_escaped(out, d->doc, format);
			opt_print_escaped(out, values, format);
			fputs(" |\n", out);
		} else {
			fprintf(out, ".TP\n.B EXCH_%s\n", d->name);
			opt_print_escaped(out, d->doc, format);
			opt_print_escaped(out, values, format);
			fputs(".\nDefault: ", out);
			opt_print_escaped(out, def, format);
			fputs(".\n", out);
		}
	}
}

static void opt_read_all(void)
{
	for (int i = 0; i < OPT__COUNT; i++) {
		const struct opt_desc *d = &opt_table[i];
		const char *s = opt_env(d->name);
		long long v = d->def;
		char def[64], expected[128];

		opt_values[i] = d->def;
		opt_strings[i][0] = '\0';
		opt_from_env[i] = false;
		if (!s)
			continue;
		int rc = opt_parse(d, s, &v);
		if (rc < 0) {
			opt_default_text(d, def, sizeof(def));
			opt_expected_text(d, expected, sizeof(expected));
			log_warn("EXCH_%s=\"%.64s\" is not valid (expected %s), keeping the "
				 "default %s", d->name, s, expected, def);
			stat_inc(STAT_options_invalid);
			continue;
		}
		opt_values[i] = v;
		opt_from_env[i] = true;
		if (d->kind == OPT_STRING)
			memcpy(opt_strings[i], s, strlen(s) + 1);
	}
	atomic_store(&opt_loaded, true);
}

void opt_init(void)
{
	pthread_once(&opt_once, opt_read_all);
}

void opt_reload(void)
{
	if (atomic_load(&opt_loaded))
		opt_read_all();
	else
		opt_init();
}

void opt_prefer(enum opt_id id, long long v)
{
	opt_init();
	if (!opt_from_env[id])
		opt_values[id] = v;
}

void opt_override(enum opt_id id, long long v)
{
	opt_init();
	opt_values[id] = v;
	opt_from_env[id] = false;
}

long long opt_get(enum opt_id id)
{
	opt_init();
	return opt_values[id];
}

const char *opt_str(enum opt_id id)
{
	opt_init();
	if (opt_table[id].kind == OPT_ENUM)
		return opt_values[id] >= 0 ? opt_table[id].choices[opt_values[id]] : "";
	return opt_strings[id];
}

const char *opt_name(enum opt_id id)
{
	return opt_table[id].name;
}

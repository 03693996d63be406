/*
 * stats.c - counters with a reason each.
 *
 * The counters are one list (EXCH_STATS_LIST in internal.h): a name, a kind
 * and the reason it exists. A COUNT only grows; a GAUGE is a current value.
 * Every fallback the library takes has its own counter, so a user who sees
 * fewer hugepages than expected can read why. Counters are relaxed atomics:
 * they are statistics, not synchronisation.
 *
 * The coverage gauges (resident_bytes, huge_bytes, hugepage_coverage_pct)
 * are not kept up to date: they are read from the page tables, one
 * PAGEMAP_SCAN per arena, whenever the stats are printed or asked for.
 *
 * Output is text (one counter a line with its reason) or one JSON object
 * with the features and the counters; EXCH_STATS=1 prints the text on stderr
 * at exit and EXCH_STATS_FILE=path writes the JSON there at exit. "%p" in
 * the path is the process ID; without one, a fork child that used the
 * library writes path.<pid>, so it never overwrites its parent's file.
 * Printing
 * goes through a stack buffer and write(2), so it works in a process whose
 * stdio is already torn down by exit().
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

_Atomic uint64_t stat_values[STAT__COUNT];

struct stat_desc {
	const char *name;
	const char *kind;
	const char *reason;
};

static const struct stat_desc stat_table[STAT__COUNT] = {
#define STAT_DESC(name, kind, reason) { #name, #kind, reason },
	EXCH_STATS_LIST(STAT_DESC)
#undef STAT_DESC
};

#define STAT_LINE_MAX 256

/* Appends to a fixed buffer and flushes it to a FILE or an fd. */
struct stat_out {
	FILE *f;
	int fd;
	char buf[4096];
	size_t len;
};

static void stat_flush(struct stat_out *o)
{
	if (o->f)
		fwrite(o->buf, 1, o->len, o->f);
	else
		(void)prim_write_all(o->fd, o->buf, o->len);
	o->len = 0;
}

static void stat_emit(struct stat_out *o, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void stat_emit(struct stat_out *o, const char *fmt, ...)
{
	char line[STAT_LINE_MAX];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	if (o->len + (size_t)n > sizeof(o->buf))
		stat_flush(o);
	memcpy(o->buf + o->len, line, (size_t)n);
	o->len += (size_t)n;
}

static void stat_text(struct stat_out *o)
{
	stat_emit(o, "libexch stats\n");
	for (int i = 0; i < STAT__COUNT; i++)
		stat_emit(o, "  %-26s %14" PRIu64 "  %s\n", stat_table[i].name,
			  stat_get((enum stat_id)i), stat_table[i].reason);
}

static void stat_json(struct stat_out *o)
{
	const struct exch_features *f = &lib.feat;

	stat_emit(o, "{\"version\":1,\"features\":{\"uffd_mode\":%d,\"have\":%u,"
		  "\"on\":%u,\"thp_mode\":%d,\"simd\":\"%s\"},\"counters\":{",
		  (int)f->uffd_mode, f->have, f->on, (int)f->thp_mode,
		  exch_simd_name(f->simd_used));
	for (int i = 0; i < STAT__COUNT; i++)
		stat_emit(o, "%s\"%s\":%" PRIu64, i ? "," : "", stat_table[i].name,
			  stat_get((enum stat_id)i));
	stat_emit(o, "}}\n");
}

int exch_stats_print(FILE *out, int json)
{
	struct stat_out o = { .f = out, .fd = -1 };

	if (!out)
		return -EINVAL;
	arena_measure_coverage();
	tier_measure();
	if (json)
		stat_json(&o);
	else
		stat_text(&o);
	stat_flush(&o);
	return ferror(out) ? -EIO : 0;
}

int exch_stats_get(const char *name, uint64_t *value)
{
	if (!name || !value)
		return -EINVAL;
	if (!strcmp(name, "resident_bytes") || !strcmp(name, "huge_bytes") ||
	    !strcmp(name, "hugepage_coverage_pct") || !strncmp(name, "phys_", 5))
		arena_measure_coverage();
	if (!strncmp(name, "tier_pool_", 10) || !strcmp(name, "tier_stored_bytes"))
		tier_measure();
	for (int i = 0; i < STAT__COUNT; i++) {
		if (!strcmp(stat_table[i].name, name)) {
			*value = stat_get((enum stat_id)i);
			return 0;
		}
	}
	return -ENOENT;
}

void stat_reset_counts(void)
{
	for (int i = 0; i < STAT__COUNT; i++)
		if (!strcmp(stat_table[i].kind, "COUNT"))
			stat_set((enum stat_id)i, 0);
}

/*
 * EXCH_STATS_FILE's path for this process: each "%p" replaced by its
 * process ID ("%%" is a "%"), so that every process of a program that
 * starts others (a shell, make, time) writes a file of its own. Without
 * a "%p", a fork child (@child, its pid) writes path.<pid>. false if the
 * path does not fit.
 */
static bool stat_path(char *buf, size_t size, const char *file, pid_t child)
{
	size_t n = 0;
	bool has_pid = false;
	int w;

	for (const char *c = file; *c && n < size; c++) {
		if (c[0] == '%' && (c[1] == 'p' || c[1] == '%')) {
			if (*++c == 'p') {
				w = snprintf(buf + n, size - n, "%d", (int)getpid());
				n += w > 0 ? (size_t)w : size;
				has_pid = true;
				continue;
			}
		}
		buf[n++] = *c;
	}
	if (n < size && child && !has_pid) {
		w = snprintf(buf + n, size - n, ".%d", (int)child);
		n += w > 0 ? (size_t)w : size;
	}
	if (n >= size)
		return false;
	buf[n] = 0;
	return true;
}

void stat_at_exit(pid_t child)
{
	char path[PATH_MAX];
	const char *file = opt_str(OPT_STATS_FILE);

	arena_measure_coverage();
	tier_measure();
	if (opt_get(OPT_STATS)) {
		struct stat_out o = { .fd = STDERR_FILENO };

		if (child)
			stat_emit(&o, "(pid %d) ", (int)child);
		stat_text(&o);
		stat_flush(&o);
	}
	if (*file) {
		int fd = stat_path(path, sizeof(path), file, child) ? prim_create(path) :
								     -ENAMETOOLONG;
		struct stat_out o = { .fd = fd };

		if (fd < 0) {
			log_warn("EXCH_STATS_FILE=%s: cannot open (%s), stats not written",
				 file, prim_errstr(-fd));
			return;
		}
		stat_json(&o);
		stat_flush(&o);
		close(fd);
	}
}

/*
 * log.c - the library's voice: warnings and verbose lines on stderr.
 *
 * A preloaded library speaks inside somebody else's program, so it says
 * little and says it in one line with a "libexch:" prefix: a warning when a
 * setting is rejected or a kernel feature is missing (what was missing and
 * what replaces it), and, with EXCH_VERBOSE=1, what it turned on. Lines are
 * formatted into a stack buffer and written with one write(2), so they never
 * call malloc, never interleave with each other, and are safe to emit from
 * the fault service and from a fork child.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#include "internal.h"

#define LOG_LINE_MAX 512

static void log_line(const char *fmt, va_list ap)
{
	char buf[LOG_LINE_MAX];
	int n = snprintf(buf, sizeof(buf), "libexch: ");
	int m = vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);

	if (m < 0)
		return;
	n += m;
	if (n > (int)sizeof(buf) - 2)
		n = (int)sizeof(buf) - 2;
	buf[n++] = '\n';
	(void)prim_write_all(STDERR_FILENO, buf, (size_t)n);
}

void log_warn(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_line(fmt, ap);
	va_end(ap);
}

void log_info(const char *fmt, ...)
{
	va_list ap;

	if (!opt_get(OPT_VERBOSE))
		return;
	va_start(ap, fmt);
	log_line(fmt, ap);
	va_end(ap);
}

/*
 * log.c - logfmt lines on stderr, one write(2) per line so lines from
 * different workers never interleave.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int log_level = LOG_INFO;

void log_line(int level, const char *fmt, ...)
{
    static const char *const names[] = { "debug", "info", "warn", "error" };
    if (level < log_level)
        return;
    char buf[8192];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    /* gmtime_r takes glibc's process-wide tz lock: format once a second per
     * thread, so workers never meet on it. */
    static __thread time_t cached_sec = -1;
    static __thread char cached[32];
    static __thread int cached_len;
    if (ts.tv_sec != cached_sec) {
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        cached_len = (int)strftime(cached, sizeof cached, "ts=%Y-%m-%dT%H:%M:%S", &tm);
        cached_sec = ts.tv_sec;
    }
    memcpy(buf, cached, (size_t)cached_len);
    int n = cached_len;
    n += snprintf(buf + n, sizeof buf - (size_t)n, ".%03ldZ level=%s ", ts.tv_nsec / 1000000, names[level]);
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    n += k < 0 ? 0 : k;
    if (n > (int)sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    if (write(STDERR_FILENO, buf, (size_t)n) < 0)
        return;
}

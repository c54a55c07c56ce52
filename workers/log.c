/*
 * log.c - logfmt lines on stderr, one write(2) per line so lines from
 * different workers never interleave.
 *
 * Values are escaped here and nowhere else: bare when they hold only
 * printable ASCII other than '"', '=' and '\', else in double quotes with
 * \" \\ \n \r \t and \xNN for every other control or non-ASCII byte.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

_Atomic int log_level = LOG_INFO;

static void write_line(int level, const char *body, size_t n)
{
    static const char *const names[] = { "debug", "info", "warn", "error" };
    char buf[LOG_LINE_MAX + 64];
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
    size_t k = (size_t)cached_len;
    k += (size_t)snprintf(buf + k, sizeof buf - k, ".%03ldZ level=%s ", ts.tv_nsec / 1000000, names[level & 3]);
    if (n > sizeof buf - k - 1)
        n = sizeof buf - k - 1;
    memcpy(buf + k, body, n);
    k += n;
    buf[k++] = '\n';
    if (write(STDERR_FILENO, buf, k) < 0)
        return;
}

void log_line(int level, const char *fmt, ...)
{
    if (level < log_level)
        return;
    char body[LOG_LINE_MAX];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    if (k < 0)
        return;
    /* A format's own text never holds a newline; a %s might: end it there. */
    size_t n = (size_t)k < sizeof body ? (size_t)k : sizeof body - 1;
    char *nl = memchr(body, '\n', n);
    write_line(level, body, nl ? (size_t)(nl - body) : n);
}

static bool bare_ok(unsigned char c)
{
    return c > 0x20 && c < 0x7f && c != '"' && c != '=' && c != '\\';
}

size_t log_escape(char *out, size_t cap, const char *p, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    bool bare = n > 0;
    for (size_t i = 0; i < n && bare; i++)
        bare = bare_ok((unsigned char)p[i]);
    if (bare) {
        if (n > cap)
            return 0;
        memcpy(out, p, n);
        return n;
    }
    size_t k = 0;
    if (cap < 2)
        return 0;
    out[k++] = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        char e[4];
        size_t el = 0;
        if (c == '"' || c == '\\')
            e[0] = '\\', e[1] = (char)c, el = 2;
        else if (c == '\n')
            e[0] = '\\', e[1] = 'n', el = 2;
        else if (c == '\r')
            e[0] = '\\', e[1] = 'r', el = 2;
        else if (c == '\t')
            e[0] = '\\', e[1] = 't', el = 2;
        else if (c < 0x20 || c >= 0x7f)
            e[0] = '\\', e[1] = 'x', e[2] = hex[c >> 4], e[3] = hex[c & 15], el = 4;
        else
            e[0] = (char)c, el = 1;
        if (k + el + 1 > cap)
            return 0;
        memcpy(out + k, e, el);
        k += el;
    }
    out[k++] = '"';
    return k;
}

static void add_raw(logbuf_t *b, const char *key, const char *val, size_t vl)
{
    size_t kl = strlen(key);
    /* " truncated=1" must always fit after the last field */
    if (b->full || b->len + 1 + kl + 1 + vl + 16 > sizeof b->buf) {
        if (!b->full) {
            memcpy(b->buf + b->len, " truncated=1", 12);
            b->len += 12;
        }
        b->full = true;
        return;
    }
    b->buf[b->len++] = ' ';
    memcpy(b->buf + b->len, key, kl);
    b->len += kl;
    b->buf[b->len++] = '=';
    memcpy(b->buf + b->len, val, vl);
    b->len += vl;
}

void lb_init(logbuf_t *b, const char *event)
{
    b->full = false;
    b->len = 0;
    size_t n = strlen(event);
    memcpy(b->buf, "event=", 6);
    memcpy(b->buf + 6, event, n);
    b->len = 6 + n;
}

void lb_str(logbuf_t *b, const char *key, const char *p, size_t n)
{
    char v[LOG_LINE_MAX];
    size_t vl = log_escape(v, sizeof v, p ? p : "", p ? n : 0);
    if (!vl) {
        add_raw(b, key, "\"(too long)\"", 12);
        return;
    }
    add_raw(b, key, v, vl);
}

void lb_cstr(logbuf_t *b, const char *key, const char *s)
{
    lb_str(b, key, s, s ? strlen(s) : 0);
}

void lb_u64(logbuf_t *b, const char *key, uint64_t v)
{
    char t[24];
    int n = snprintf(t, sizeof t, "%llu", (unsigned long long)v);
    add_raw(b, key, t, (size_t)n);
}

void lb_i64(logbuf_t *b, const char *key, int64_t v)
{
    char t[24];
    int n = snprintf(t, sizeof t, "%lld", (long long)v);
    add_raw(b, key, t, (size_t)n);
}

void lb_hex(logbuf_t *b, const char *key, uint64_t v)
{
    char t[24];
    int n = snprintf(t, sizeof t, "%016llx", (unsigned long long)v);
    add_raw(b, key, t, (size_t)n);
}

void lb_fmt(logbuf_t *b, const char *key, const char *fmt, ...)
{
    char t[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t, sizeof t, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    lb_str(b, key, t, (size_t)n < sizeof t ? (size_t)n : sizeof t - 1);
}

void log_emit(int level, logbuf_t *b)
{
    if (level < log_level)
        return;
    write_line(level, b->buf, b->len);
}

/*
 * log.h - logfmt lines on stderr (log.c), for the workers and for the SPF
 * helper process alike: "ts=... level=... " then the caller's pairs.
 *
 * Lines that carry anything a peer chose (a HELO name, an address, a
 * downstream's reply) are built with a logbuf_t: every value goes through
 * lb_str(), which quotes and escapes it the logfmt way, so no client text
 * can end a value early, add a field or start a new line. A field is added
 * whole or not at all; a line that would pass LOG_LINE_MAX ends with
 * `truncated=1` instead.
 */
#ifndef MXGATE_LOG_H
#define MXGATE_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };

#define LOG_LINE_MAX 8192

extern _Atomic int log_level; /* lines below it are dropped */
void log_line(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

typedef struct logbuf {
    size_t len;
    bool full;
    char buf[LOG_LINE_MAX - 64]; /* the timestamp and level go in front */
} logbuf_t;

static inline bool log_enabled(int level)
{
    return level >= log_level;
}

/* Start a line with "event=NAME". */
void lb_init(logbuf_t *b, const char *event);
/* key=value, quoted and escaped as needed (any bytes). */
void lb_str(logbuf_t *b, const char *key, const char *p, size_t n);
void lb_cstr(logbuf_t *b, const char *key, const char *s);
void lb_u64(logbuf_t *b, const char *key, uint64_t v);
void lb_i64(logbuf_t *b, const char *key, int64_t v);
/* key=<16 hex digits> */
void lb_hex(logbuf_t *b, const char *key, uint64_t v);
/* key=value with a printf format; the result is escaped like lb_str. */
void lb_fmt(logbuf_t *b, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void log_emit(int level, logbuf_t *b);

/* Escape one value the logfmt way into out (cap >= 4); returns its length,
 * or 0 when it does not fit. Exposed for tests. */
size_t log_escape(char *out, size_t cap, const char *p, size_t n);

#endif

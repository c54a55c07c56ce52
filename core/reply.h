/*
 * reply.h - SMTP reply text with enhanced status codes (RFC 3463).
 *
 * Replies are appended to a caller-owned output buffer (smtp_out_t), which
 * the worker sends as one write per read batch (RFC 2920: replies of a
 * pipelined group go out together, in command order). Every reply the engine
 * builds carries an enhanced code; text is sanitized so that nothing a peer
 * supplied (a downstream's reply text, say) can break the line framing.
 */
#ifndef MXGATE_REPLY_H
#define MXGATE_REPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "slice.h"

/* The longest reply line we ever build, CRLF included (RFC 5321: 512). */
#define REPLY_LINE_MAX 512

typedef struct smtp_out {
    char *buf;
    size_t len;
    size_t cap;
    uint32_t replies[6]; /* whole replies written, by class (index 2..5): for metrics */
} smtp_out_t;

static inline size_t reply_room(const smtp_out_t *o)
{
    return o->cap - o->len;
}

/*
 * Append "CODE[-| ]ESC TEXT\r\n". `more` makes it a continuation line.
 * `esc` may be NULL for replies that have no enhanced code (the greeting and
 * EHLO's first line). Text is cut so the line fits REPLY_LINE_MAX; CR, LF and
 * other control bytes in it become spaces. Returns false, writing nothing,
 * when the buffer lacks room for the whole line.
 */
bool reply_line(smtp_out_t *o, int code, bool more, const char *esc, slice_t text);

/* One-line reply; the common case. */
static inline bool reply(smtp_out_t *o, int code, const char *esc, const char *text)
{
    return reply_line(o, code, false, esc, slice_make(text, strlen(text)));
}

/* Is `esc` a well-formed enhanced status code "c.s.d" (RFC 3463 2)? */
bool reply_esc_valid(const char *esc, size_t len);

#endif

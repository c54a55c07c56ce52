/*
 * testutil.h - shared by the unit tests and the fuzz targets.
 *
 * guard_copy() (guard.h): puts bytes at the very end of a page followed by a
 * PROT_NONE page, so any read past the input crashes.
 *
 * tu_drive(): feeds a session to the engine cut at the given split points,
 * each piece in its own guarded buffer that is unmapped as soon as it has
 * been consumed (so an engine that keeps a pointer into old input crashes),
 * answers verdicts through a callback and writes a canonical log: replies as
 * "S: ..." lines, events as "E: ..." lines, adjacent body chunks joined.
 * The same bytes must give the same log whatever the splits.
 */
#ifndef MXGATE_TESTUTIL_H
#define MXGATE_TESTUTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "guard.h"
#include "smtp.h"

/* A growing text log. */
typedef struct tu_log {
    char *buf;
    size_t len, cap;
} tu_log_t;

static inline void tu_put(tu_log_t *l, const char *p, size_t n)
{
    if (l->len + n + 1 > l->cap) {
        l->cap = (l->len + n + 1) * 2;
        l->buf = realloc(l->buf, l->cap);
        if (!l->buf)
            abort();
    }
    memcpy(l->buf + l->len, p, n);
    l->len += n;
    l->buf[l->len] = 0;
}

static inline void tu_puts(tu_log_t *l, const char *s)
{
    tu_put(l, s, strlen(s));
}

/* Bytes with CR, LF and non-printables escaped, so logs stay one line each. */
static inline void tu_put_escaped(tu_log_t *l, slice_t s)
{
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        char t[8];
        if (c == '\r')
            tu_puts(l, "\\r");
        else if (c == '\n')
            tu_puts(l, "\\n");
        else if (c == '\\')
            tu_puts(l, "\\\\");
        else if (c < 0x20 || c >= 0x7f) {
            snprintf(t, sizeof t, "\\x%02x", c);
            tu_puts(l, t);
        } else
            tu_put(l, (const char *)&c, 1);
    }
}

static inline void tu_free_log(tu_log_t *l)
{
    free(l->buf);
    l->buf = NULL;
    l->len = l->cap = 0;
}

/*
 * Verdict callback: return 0 to accept with the default reply, or fill
 * code/esc/text to answer otherwise. NULL callback: accept everything.
 */
typedef int (*tu_verdict_fn)(const smtp_event_t *ev, int *code, const char **esc, const char **text,
                             void *arg);

typedef struct tu_driver {
    tu_log_t log;
    tu_log_t body;     /* body bytes of the current message, joined */
    int in_body;
    int closed;
    tu_verdict_fn verdict;
    void *arg;
} tu_driver_t;

static inline void tu_flush_out(tu_driver_t *d, smtp_out_t *o)
{
    size_t start = 0;
    for (size_t i = 0; i < o->len; i++) {
        if (o->buf[i] == '\n') {
            tu_puts(&d->log, "S: ");
            tu_put_escaped(&d->log, slice_make(o->buf + start, i + 1 - start));
            tu_puts(&d->log, "\n");
            start = i + 1;
        }
    }
    if (start != o->len) { /* a reply must always be whole lines */
        tu_puts(&d->log, "S-PARTIAL: ");
        tu_put_escaped(&d->log, slice_make(o->buf + start, o->len - start));
        tu_puts(&d->log, "\n");
    }
    o->len = 0;
}

static inline void tu_end_body(tu_driver_t *d)
{
    if (!d->in_body)
        return;
    tu_puts(&d->log, "E: BODY ");
    tu_put_escaped(&d->log, slice_make(d->body.buf ? d->body.buf : "", d->body.len));
    tu_puts(&d->log, "\n");
    d->body.len = 0;
    d->in_body = 0;
}

static inline void tu_log_event(tu_driver_t *d, const smtp_event_t *ev)
{
    char t[160];
    if (ev->type == SMTP_EV_BODY) {
        tu_put(&d->body, ev->arg.ptr, ev->arg.len);
        d->in_body = 1;
        return;
    }
    tu_end_body(d);
    tu_puts(&d->log, "E: ");
    tu_puts(&d->log, smtp_ev_name(ev->type));
    if (ev->err) {
        tu_puts(&d->log, " err=");
        tu_puts(&d->log, smtp_err_name(ev->err));
    }
    if (ev->type == SMTP_EV_MAIL || ev->type == SMTP_EV_RCPT) {
        tu_puts(&d->log, " <");
        tu_put_escaped(&d->log, ev->path.mailbox);
        tu_puts(&d->log, "> local=");
        tu_put_escaped(&d->log, ev->path.local);
        tu_puts(&d->log, " domain=");
        tu_put_escaped(&d->log, ev->path.domain);
        snprintf(t, sizeof t, "%s%s%s", ev->path.null ? " null" : "", ev->path.utf8 ? " utf8" : "",
                 ev->path.postmaster ? " postmaster" : "");
        tu_puts(&d->log, t);
    }
    if (ev->type == SMTP_EV_MAIL) {
        snprintf(t, sizeof t, " size=%s%llu body=%d smtputf8=%d", ev->params.has_size ? "" : "-",
                 (unsigned long long)ev->params.size, ev->params.body, ev->params.smtputf8);
        tu_puts(&d->log, t);
    }
    if (ev->arg.len && ev->type != SMTP_EV_MAIL && ev->type != SMTP_EV_RCPT) {
        tu_puts(&d->log, " arg=");
        tu_put_escaped(&d->log, ev->arg);
    }
    tu_puts(&d->log, "\n");
}

/* Process one piece of input; returns 0 when the session closed. */
static inline int tu_feed_piece(tu_driver_t *d, smtp_t *s, smtp_out_t *o, const char *p, size_t n)
{
    smtp_event_t ev;
    for (;;) {
        size_t used = 0;
        memset(&ev, 0, sizeof ev);
        smtp_status_t st = smtp_feed(s, p, n, &used, &ev);
        if (used > n)
            abort();
        p += used;
        n -= used;
        if (st != SMTP_EVENT || ev.type != SMTP_EV_BODY) {
            if (o->len)
                tu_end_body(d);
            tu_flush_out(d, o);
        }
        switch (st) {
        case SMTP_EVENT: {
            tu_log_event(d, &ev);
            if (smtp_ev_wants_verdict(ev.type)) {
                int code = 0;
                const char *esc = NULL, *text = NULL;
                if (d->verdict && d->verdict(&ev, &code, &esc, &text, d->arg)) {
                    smtp_reply_t r = { code, esc, slice_make(text, text ? strlen(text) : 0), 0 };
                    smtp_verdict(s, ev.slot, &r);
                } else {
                    smtp_accept(s, ev.slot);
                }
                tu_flush_out(d, o);
            }
            break;
        }
        case SMTP_AGAIN:
            if (n != 0)
                abort(); /* AGAIN means everything was taken */
            return 1;
        case SMTP_FULL:
            break; /* flushed above */
        case SMTP_PAUSED:
            abort(); /* we always answer at once */
        case SMTP_CLOSED:
            tu_end_body(d);
            tu_puts(&d->log, "CLOSED\n");
            d->closed = 1;
            return 0;
        }
    }
}

/*
 * Run a whole session: greeting, then `in` cut at the sorted split points
 * (offsets in (0, len)). outcap sizes the reply buffer (small values exercise
 * SMTP_FULL). Returns the log; free it with tu_free_log.
 */
static inline tu_log_t tu_drive(const smtp_config_t *cfg, const char *in, size_t len, const size_t *splits,
                                size_t nsplits, size_t outcap, tu_verdict_fn verdict, void *arg)
{
    tu_driver_t d;
    memset(&d, 0, sizeof d);
    d.verdict = verdict;
    d.arg = arg;
    char *ob = malloc(outcap);
    smtp_out_t o = { .buf = ob, .len = 0, .cap = outcap };
    smtp_t s;
    memset(&s, 0, sizeof s);
    smtp_init(&s, cfg, &o);
    smtp_greet(&s);
    tu_flush_out(&d, &o);
    size_t prev = 0;
    for (size_t i = 0; i <= nsplits && !d.closed; i++) {
        size_t end = i < nsplits ? splits[i] : len;
        if (end < prev || end > len)
            abort();
        guard_buf_t g;
        guard_copy(&g, in + prev, end - prev);
        tu_feed_piece(&d, &s, &o, g.data, end - prev);
        guard_free(&g);
        prev = end;
    }
    if (!d.closed) {
        tu_end_body(&d);
        tu_puts(&d.log, "EOF\n");
    }
    smtp_free(&s);
    free(ob);
    tu_free_log(&d.body);
    if (!d.log.buf)
        tu_puts(&d.log, "");
    return d.log;
}

#endif

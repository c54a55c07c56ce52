/*
 * replyq.c - the ordered reply queue (see replyq.h).
 *
 * A ring indexed by sequence number modulo a power of two; sequence numbers
 * compare by unsigned difference from the head, so they may wrap. Copies of
 * out-of-order replies go into one bump-allocated park that is reset
 * whenever the queue empties, so a session pays for a copy only when a
 * verdict overtakes an earlier one, and never frees per reply.
 */
#include "replyq.h"

#include "grow.h"

#include <stdlib.h>
#include <string.h>

#define RQ_FIRST_CAP 8u
#define RQ_PARK_FIRST 256u

static const char oom_text[] = "Error: out of resources, try again later";

static rq_slot_t *at(const replyq_t *q, uint32_t seq)
{
    return &q->ring[seq & (q->cap - 1)];
}

static bool grow(replyq_t *q, uint32_t max)
{
    uint32_t cap = q->cap ? q->cap * 2 : RQ_FIRST_CAP;
    if (q->cap >= max || cap < q->cap)
        return false;
    rq_slot_t *n = calloc(cap, sizeof *n);
    if (!n)
        return false;
    for (uint32_t s = q->head; s != q->tail; s++)
        n[s & (cap - 1)] = *at(q, s);
    free(q->ring);
    q->ring = n;
    q->cap = cap;
    return true;
}

bool replyq_push(replyq_t *q, uint8_t kind, uint32_t max, uint32_t *seq)
{
    if (replyq_len(q) == q->cap && !grow(q, max))
        return false;
    if (replyq_len(q) >= max)
        return false;
    rq_slot_t *s = at(q, q->tail);
    memset(s, 0, sizeof *s);
    s->kind = kind;
    *seq = q->tail++;
    return true;
}

const rq_slot_t *replyq_slot(const replyq_t *q, uint32_t seq)
{
    return seq - q->head < replyq_len(q) ? at(q, seq) : NULL;
}

bool replyq_open(const replyq_t *q, uint32_t seq)
{
    const rq_slot_t *s = replyq_slot(q, seq);
    return s && !s->filled;
}

uint32_t replyq_keep(replyq_t *q, const char *p, size_t n)
{
    return grow_append(&q->park, &q->park_cap, &q->park_len, p, n, RQ_PARK_FIRST);
}

bool replyq_fill(replyq_t *q, uint32_t seq, const smtp_reply_t *r, bool borrow)
{
    if (!replyq_open(q, seq))
        return false;
    rq_slot_t *s = at(q, seq);
    size_t el = r->esc ? strnlen(r->esc, RQ_ESC_MAX + 1) : 0;
    if (el > RQ_ESC_MAX)
        el = 0; /* not an enhanced code; the text still says what it is */
    s->filled = true;
    s->flags = r->flags;
    s->code = (uint16_t)r->code;
    s->esc_len = (uint8_t)el;
    s->text_len = (uint32_t)r->text.len;
    if (borrow && seq == q->head) {
        s->esc_ptr = r->esc;
        s->text_ptr = r->text.ptr;
        return true;
    }
    uint32_t off = replyq_keep(q, r->esc ? r->esc : "", el);
    if (off != UINT32_MAX && replyq_keep(q, r->text.ptr, r->text.len) != UINT32_MAX) {
        s->parked = true;
        s->off = off;
        return true;
    }
    /* No memory to keep the text: a reply the client can act on instead. */
    s->code = 451;
    s->flags = SMTP_R_PEER;
    s->esc_ptr = "4.3.0";
    s->esc_len = 5;
    s->text_ptr = oom_text;
    s->text_len = sizeof oom_text - 1;
    return true;
}

const rq_slot_t *replyq_ready(const replyq_t *q)
{
    if (q->head == q->tail)
        return NULL;
    const rq_slot_t *s = at(q, q->head);
    return s->filled ? s : NULL;
}

smtp_reply_t replyq_reply(const replyq_t *q, const rq_slot_t *s, char esc_buf[RQ_ESC_MAX + 1])
{
    smtp_reply_t r = { s->code, NULL, SLICE_NULL, s->flags };
    const char *esc = s->parked ? q->park + s->off : s->esc_ptr;
    if (s->esc_len) {
        memcpy(esc_buf, esc, s->esc_len);
        esc_buf[s->esc_len] = '\0';
        r.esc = esc_buf;
    }
    r.text = slice_make(s->parked ? q->park + s->off + s->esc_len : s->text_ptr, s->text_len);
    return r;
}

void replyq_pop(replyq_t *q)
{
    if (q->head == q->tail)
        return;
    q->head++;
    if (q->head == q->tail)
        q->park_len = 0;
}

void replyq_clear(replyq_t *q)
{
    q->head = q->tail;
    q->park_len = 0;
}

void replyq_free(replyq_t *q)
{
    free(q->ring);
    free(q->park);
    q->ring = NULL;
    q->park = NULL;
    q->cap = q->park_cap = q->park_len = 0;
    q->head = q->tail;
}

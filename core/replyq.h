/*
 * replyq.h - the ordered reply queue of one SMTP session.
 *
 * Every command that needs an answer takes a slot, in command order. Whoever
 * decides the answer (the engine, a filter, the downstream) fills the slot,
 * in any order and at any time; replies leave only from the head, so a
 * client always reads them in the order it sent its commands (RFC 2920),
 * however the verdicts raced. This is the one mechanism that keeps replies in
 * order: nothing else queues or reorders them.
 *
 * A slot is named by its sequence number (a uint32_t that only grows), so a
 * verdict for a slot that is gone (the session reset or closed the queue) is
 * recognized and dropped instead of landing on a newer command.
 *
 * Texts: a slot filled while it is the head is emitted during the same call,
 * so its text is only borrowed. A slot filled behind an open head keeps a
 * copy of its enhanced code and text in the queue's park buffer, because the
 * filler's text (a downstream's reply in its receive buffer) dies before the
 * head does. The park is emptied whenever the queue is.
 *
 * Memory: nothing until the first slot is taken (an idle connection costs
 * nothing here); then a ring that grows by doubling up to the caller's bound
 * and is kept until replyq_free().
 */
#ifndef MXGATE_REPLYQ_H
#define MXGATE_REPLYQ_H

#include <stdbool.h>
#include <stdint.h>

#include "slice.h"

/* Flags of a reply. */
#define SMTP_R_PEER 0x01 /* a refusal that is not the client's fault (the downstream failed,
                          * the gateway is short of something): it does not count toward the
                          * client's error limit, and commands pipelined behind a MAIL refused
                          * this way get the same reply instead of 503 */

/* A reply as a verdict carries it: code, enhanced code, text. */
typedef struct smtp_reply {
    int code;        /* 200..599 */
    const char *esc; /* "x.y.z" (RFC 3463) or NULL for none */
    slice_t text;    /* one line, no CRLF; control bytes are blanked when sent */
    uint8_t flags;   /* SMTP_R_* */
} smtp_reply_t;

#define RQ_ESC_MAX 11 /* "5.999.999" and room to spare */

typedef struct rq_slot {
    uint8_t kind;    /* the caller's tag for the command (the engine: smtp_ev_type_t) */
    bool filled;
    bool parked;     /* esc and text live in the park buffer */
    uint8_t flags;   /* SMTP_R_* */
    uint16_t code;
    uint8_t esc_len;
    uint32_t text_len;
    const char *esc_ptr, *text_ptr; /* borrowed (not parked) */
    uint32_t off;    /* parked: esc at off, text right after it */
} rq_slot_t;

typedef struct replyq {
    rq_slot_t *ring;   /* cap slots; NULL until the first push */
    uint32_t cap;      /* a power of two, or 0 */
    uint32_t head;     /* sequence number of the oldest slot */
    uint32_t tail;     /* sequence number the next push gets */
    char *park;
    uint32_t park_len, park_cap;
} replyq_t;

static inline uint32_t replyq_len(const replyq_t *q)
{
    return q->tail - q->head;
}

/* Take the next slot for a command of this kind, at most `max` slots in
 * all. False: the queue is at its bound (or memory ran out): the caller
 * stops reading until slots leave. */
bool replyq_push(replyq_t *q, uint8_t kind, uint32_t max, uint32_t *seq) __attribute__((warn_unused_result));

/* Is seq a slot in the queue that is still waiting for its reply? */
bool replyq_open(const replyq_t *q, uint32_t seq);

/* The slot of seq (in the queue), or NULL. */
const rq_slot_t *replyq_slot(const replyq_t *q, uint32_t seq);

/* Fill an open slot. With `borrow` and seq at the head, the reply's slices
 * are only borrowed: the caller emits the head before the filler's text
 * goes away. Otherwise they are copied into the park. False: no such open
 * slot (stale, or already filled): nothing changed. If the park cannot grow,
 * the slot gets a fixed 451 4.3.0 of its own instead. */
bool replyq_fill(replyq_t *q, uint32_t seq, const smtp_reply_t *r, bool borrow);

/* The head, if it is filled; NULL otherwise. */
const rq_slot_t *replyq_ready(const replyq_t *q);

/* The reply a filled slot holds; its slices stay valid until the queue
 * next changes. */
smtp_reply_t replyq_reply(const replyq_t *q, const rq_slot_t *s, char esc_buf[RQ_ESC_MAX + 1]);

/* Drop the head (it has been emitted). */
void replyq_pop(replyq_t *q);

/* Keep a copy of bytes in the park while the queue is not empty; returns
 * the offset, or UINT32_MAX when the park cannot grow. */
uint32_t replyq_keep(replyq_t *q, const char *p, size_t n);

static inline slice_t replyq_kept(const replyq_t *q, uint32_t off, uint32_t len)
{
    return slice_make(q->park + off, len);
}

/* Forget every slot (a verdict for one of them will be dropped). */
void replyq_clear(replyq_t *q);

void replyq_free(replyq_t *q);

#endif

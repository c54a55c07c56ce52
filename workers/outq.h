/*
 * outq.h - bytes waiting to be sent on one socket: a chain of fixed blocks.
 *
 * Appends go to the tail block while it is not lent to the kernel, else to a
 * new block, so nothing in flight is ever moved, grown or written (lend.h):
 * a reply produced while a send is in flight simply starts the next block.
 * outq_lend() hands the head blocks to a send; outq_sent() takes them back
 * with the count the completion reported (short sends keep the rest).
 *
 * Blocks come from and return to a per-worker free list (outq_pool_t), so a
 * busy session costs no allocation per reply, and an idle one holds none.
 */
#ifndef MXGATE_OUTQ_H
#define MXGATE_OUTQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define OUTQ_BLOCK 4096u     /* bytes per block, header included */
#define OUTQ_POOL_KEEP 1024u /* free blocks a worker keeps (4 MiB) */

typedef struct outq_block outq_block_t;

typedef struct outq_pool {
    outq_block_t *free;
    uint32_t nfree;
} outq_pool_t;

typedef struct outq {
    outq_block_t *head, *tail;
    size_t bytes;   /* not yet sent, lent ones included */
    size_t lent;    /* bytes handed to the kernel and not yet taken back */
} outq_t;

/* Append n bytes; false only when memory runs out (nothing is appended). */
bool outq_append(outq_t *q, outq_pool_t *pool, const char *p, size_t n) __attribute__((warn_unused_result));

/* Writable room of at least `min` bytes (min <= OUTQ_ROOM_MAX) at the end of
 * the queue, in a tail block that is not lent: NULL when memory runs out.
 * Bytes written there count once outq_commit() says how many. */
#define OUTQ_ROOM_MAX 2048u
char *outq_reserve(outq_t *q, outq_pool_t *pool, size_t min, size_t *room);
void outq_commit(outq_t *q, outq_pool_t *pool, size_t n);

/* Lend up to max head blocks to a send: fills iov, returns how many (0 when
 * nothing is waiting or a send is already out). */
int outq_lend(outq_t *q, struct iovec *iov, int max);

/* The send completed with n >= 0 bytes written: take the blocks back, drop
 * what was sent. */
void outq_sent(outq_t *q, outq_pool_t *pool, size_t n);

/* For a queue that is read rather than sent (TLS's plaintext, encrypted
 * into the socket's queue): the head block's bytes (0: none, or lent), and
 * dropping n bytes that were used. */
size_t outq_peek(const outq_t *q, const char **p);
void outq_drop(outq_t *q, outq_pool_t *pool, size_t n);

static inline bool outq_busy(const outq_t *q)
{
    return q->lent != 0;
}

/* Drop everything (the socket is closing). Lent blocks must have been taken
 * back first: only after the last completion. */
void outq_clear(outq_t *q, outq_pool_t *pool);

void outq_pool_free(outq_pool_t *pool);

#endif

/*
 * outq.c - the send chain (see outq.h).
 */
#include "outq.h"

#include <stdlib.h>
#include <string.h>

#include "lend.h"

struct outq_block {
    outq_block_t *next;
    uint32_t off;   /* first byte not yet sent */
    uint32_t len;   /* bytes written into data */
    bool lent;      /* [off, len) is the kernel's until outq_sent */
    char data[];
};

#define DATA_CAP (OUTQ_BLOCK - offsetof(outq_block_t, data))

static outq_block_t *block_get(outq_pool_t *pool)
{
    outq_block_t *b = pool->free;
    if (b) {
        pool->free = b->next;
        pool->nfree--;
    } else if (!(b = malloc(OUTQ_BLOCK))) {
        return NULL;
    }
    b->next = NULL;
    b->off = b->len = 0;
    b->lent = false;
    return b;
}

static void block_put(outq_pool_t *pool, outq_block_t *b)
{
    if (pool->nfree >= OUTQ_POOL_KEEP) {
        free(b);
        return;
    }
    b->next = pool->free;
    pool->free = b;
    pool->nfree++;
}

bool outq_append(outq_t *q, outq_pool_t *pool, const char *p, size_t n)
{
    /* Room first, so a failure appends nothing. */
    size_t room = q->tail && !q->tail->lent ? DATA_CAP - q->tail->len : 0;
    outq_block_t *first = NULL, *last = NULL;
    for (size_t need = n > room ? n - room : 0; need;) {
        outq_block_t *b = block_get(pool);
        if (!b) {
            while (first) {
                outq_block_t *nx = first->next;
                block_put(pool, first);
                first = nx;
            }
            return false;
        }
        if (last)
            last->next = b;
        else
            first = b;
        last = b;
        need = need > DATA_CAP ? need - DATA_CAP : 0;
    }
    q->bytes += n;
    if (room) {
        size_t k = n < room ? n : room;
        memcpy(q->tail->data + q->tail->len, p, k);
        q->tail->len += (uint32_t)k;
        p += k, n -= k;
    }
    for (outq_block_t *b = first; b; b = b->next) {
        size_t k = n < DATA_CAP ? n : DATA_CAP;
        memcpy(b->data, p, k);
        b->len = (uint32_t)k;
        p += k, n -= k;
    }
    if (first) {
        if (q->tail)
            q->tail->next = first;
        else
            q->head = first;
        q->tail = last;
    }
    return true;
}

char *outq_reserve(outq_t *q, outq_pool_t *pool, size_t min, size_t *room)
{
    if (min > OUTQ_ROOM_MAX)
        return NULL;
    outq_block_t *t = q->tail;
    if (!t || t->lent || DATA_CAP - t->len < min) {
        outq_block_t *b = block_get(pool);
        if (!b)
            return NULL;
        if (t)
            t->next = b;
        else
            q->head = b;
        q->tail = t = b;
    }
    *room = DATA_CAP - t->len;
    return t->data + t->len;
}

void outq_commit(outq_t *q, outq_pool_t *pool, size_t n)
{
    outq_block_t *t = q->tail;
    if (!t)
        return;
    t->len += (uint32_t)n;
    q->bytes += n;
    if (t->len == 0 && q->head == t) {
        /* Nothing was written: an idle session keeps no block. */
        q->head = q->tail = NULL;
        block_put(pool, t);
    }
}

int outq_lend(outq_t *q, struct iovec *iov, int max)
{
    if (q->lent)
        return 0;
    int k = 0;
    for (outq_block_t *b = q->head; b && k < max; b = b->next) {
        if (b->len == b->off)
            continue;
        iov[k].iov_base = b->data + b->off;
        iov[k].iov_len = b->len - b->off;
        q->lent += iov[k].iov_len;
        b->lent = true;
        LEND(b->data + b->off, b->len - b->off);
        k++;
    }
    return k;
}

void outq_sent(outq_t *q, outq_pool_t *pool, size_t n)
{
    for (outq_block_t *b = q->head; b && b->lent; b = b->next) {
        RECLAIM(b->data + b->off, b->len - b->off);
        b->lent = false;
    }
    if (n > q->lent)
        n = q->lent;
    q->lent = 0;
    outq_drop(q, pool, n);
}

size_t outq_peek(const outq_t *q, const char **p)
{
    const outq_block_t *b = q->head;
    while (b && !b->lent && b->len == b->off)
        b = b->next; /* a block reserved and left empty */
    if (!b || b->lent)
        return 0;
    *p = b->data + b->off;
    return b->len - b->off;
}

void outq_drop(outq_t *q, outq_pool_t *pool, size_t n)
{
    q->bytes -= n;
    while (q->head) {
        outq_block_t *b = q->head;
        size_t left = b->len - b->off;
        if (n < left) {
            b->off += (uint32_t)n;
            break;
        }
        n -= left;
        q->head = b->next;
        if (!q->head)
            q->tail = NULL;
        block_put(pool, b);
    }
}

void outq_clear(outq_t *q, outq_pool_t *pool)
{
    while (q->head) {
        outq_block_t *b = q->head;
        q->head = b->next;
        if (b->lent)
            RECLAIM(b->data + b->off, b->len - b->off);
        block_put(pool, b);
    }
    q->tail = NULL;
    q->bytes = q->lent = 0;
}

void outq_pool_free(outq_pool_t *pool)
{
    while (pool->free) {
        outq_block_t *b = pool->free;
        pool->free = b->next;
        free(b);
    }
    pool->nfree = 0;
}

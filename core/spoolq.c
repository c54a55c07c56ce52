/*
 * spoolq.c - the queue as the spool's records say it is (see spoolq.h).
 */
#include "spoolq.h"

#include "grow.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void spoolq_init(spoolq_t *q)
{
    memset(q, 0, sizeof *q);
}

void spoolq_free(spoolq_t *q)
{
    for (uint32_t i = 0; i < q->n; i++)
        free(q->msg[i].codes);
    free(q->msg);
    free(q->slot);
    memset(q, 0, sizeof *q);
}

static uint32_t hash(spool_id_t id)
{
    uint64_t h = id.session * 0x9E3779B97F4A7C15ull ^ (uint64_t)id.number * 0xC2B2AE3D27D4EB4Full;
    return (uint32_t)(h ^ h >> 32);
}

/* The slot that holds id, or the empty one where it would go. */
static uint32_t *probe(const spoolq_t *q, spool_id_t id)
{
    uint32_t mask = q->nslot - 1;
    for (uint32_t i = hash(id) & mask;; i = (i + 1) & mask) {
        uint32_t *s = &q->slot[i];
        if (!*s || spool_id_eq(q->msg[*s - 1].id, id))
            return s;
    }
}

static bool rehash(spoolq_t *q, uint32_t nslot)
{
    uint32_t *old = q->slot;
    q->slot = calloc(nslot, sizeof *q->slot);
    if (!q->slot) {
        q->slot = old;
        return false;
    }
    q->nslot = nslot;
    free(old);
    for (uint32_t i = 0; i < q->n; i++)
        *probe(q, q->msg[i].id) = i + 1;
    return true;
}

spoolq_msg_t *spoolq_find(spoolq_t *q, spool_id_t id)
{
    if (!q->nslot)
        return NULL;
    uint32_t s = *probe(q, id);
    return s ? &q->msg[s - 1] : NULL;
}

static bool add_msg(spoolq_t *q, uint32_t seg, const spool_rec_t *r)
{
    if (spoolq_find(q, r->id)) {
        q->duplicates++;
        return true;
    }
    if ((uint64_t)(q->n + 1) * 2 > q->nslot && !rehash(q, q->nslot ? q->nslot * 2 : 64))
        return false;
    if (!grow_item((void **)&q->msg, &q->cap, q->n, sizeof *q->msg, 32))
        return false;
    spoolq_msg_t *m = &q->msg[q->n];
    memset(m, 0, sizeof *m);
    m->codes = calloc(r->msg.nrcpt ? r->msg.nrcpt : 1, sizeof *m->codes);
    if (!m->codes)
        return false;
    m->id = r->id;
    m->seg = seg;
    m->offset = r->offset;
    m->size = r->size;
    m->arrival_ms = r->msg.arrival_ms;
    m->body_len = r->msg.body_len;
    m->nrcpt = r->msg.nrcpt;
    m->left = r->msg.nrcpt;
    m->done = r->msg.nrcpt == 0;
    q->n++;
    *probe(q, m->id) = q->n;
    if (!m->done) {
        q->pending++;
        q->pending_octets += m->size;
    }
    return true;
}

static void finish(spoolq_t *q, spoolq_msg_t *m)
{
    if (m->done)
        return;
    m->done = true;
    q->pending--;
    q->pending_octets -= m->size;
}

bool spoolq_add(spoolq_t *q, uint32_t seg, const spool_rec_t *r)
{
    if (r->type == SPOOL_MSG)
        return add_msg(q, seg, r);
    spoolq_msg_t *m = spoolq_find(q, r->id);
    if (!m) {
        q->orphans++;
        return true;
    }
    switch (r->type) {
    case SPOOL_RCPT:
        if (r->index < m->nrcpt && !m->codes[r->index] && r->code) {
            m->codes[r->index] = r->code;
            if (--m->left == 0)
                finish(q, m);
        }
        break;
    case SPOOL_TRY: {
        m->attempts = r->attempts;
        m->next_ms = r->next_ms;
        m->last_code = r->code;
        size_t n = r->text.len < SPOOLQ_TEXT_MAX ? r->text.len : SPOOLQ_TEXT_MAX;
        if (n)
            memcpy(m->last_text, r->text.ptr, n);
        m->last_text[n] = '\0';
        break;
    }
    case SPOOL_DONE:
        finish(q, m);
        break;
    default:
        break;
    }
    return true;
}

void spool_id_format(spool_id_t id, char out[28])
{
    snprintf(out, 28, "%016llx-%u", (unsigned long long)id.session, id.number);
}

bool spool_id_parse(const char *s, spool_id_t *id)
{
    uint64_t v = 0;
    int i = 0;
    for (; i < 16; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0)
            return false;
        v = v << 4 | (uint64_t)d;
    }
    if (s[i++] != '-' || !s[i])
        return false;
    uint64_t n = 0;
    for (; s[i]; i++) {
        if (s[i] < '0' || s[i] > '9' || n > 429496729u)
            return false;
        n = n * 10 + (uint64_t)(s[i] - '0');
    }
    if (n > UINT32_MAX)
        return false;
    id->session = v;
    id->number = (uint32_t)n;
    return true;
}

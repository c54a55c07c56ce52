/*
 * spool.c - the spool's records (see spool.h).
 */
#include "spool.h"

#include "crc32c.h"

#include <string.h>

/* ---- little-endian fields ---- */

static inline void put16(char *p, uint16_t v)
{
    p[0] = (char)(v & 0xff);
    p[1] = (char)(v >> 8);
}

static inline void put32(char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (char)((v >> (8 * i)) & 0xff);
}

static inline void put64(char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (char)((v >> (8 * i)) & 0xff);
}

static inline uint16_t get16(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint16_t)(u[0] | u[1] << 8);
}

static inline uint32_t get32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
}

static inline uint64_t get64(const char *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* ---- writing ---- */

#define ID_SIZE 12u

static char *put_id(char *p, spool_id_t id)
{
    put64(p, id.session);
    put32(p + 8, id.number);
    return p + ID_SIZE;
}

static char *put_str16(char *p, slice_t s)
{
    put16(p, (uint16_t)s.len);
    if (s.len)
        memcpy(p + 2, s.ptr, s.len);
    return p + 2 + s.len;
}

void spool_seg_head(char *out, const spool_seg_t *seg)
{
    memset(out, 0, SPOOL_SEG_HEAD);
    put32(out, SPOOL_SEG_MAGIC);
    out[4] = SPOOL_VERSION;
    put64(out + 8, seg->nonce);
    put64(out + 16, seg->created_ms);
    put32(out + 24, seg->worker);
    put32(out + 28, crc32c(0, out, 28));
}

uint32_t spool_check_start(uint64_t nonce, uint64_t offset)
{
    char b[8];
    put64(b, offset);
    return crc32c((uint32_t)(nonce ^ (nonce >> 32)), b, 8);
}

/* The header's fields after the magic, and the check over payload then
 * those fields. */
static void seal(char *head, uint8_t type, uint32_t payload, uint32_t crc)
{
    put32(head, SPOOL_MAGIC);
    head[4] = SPOOL_VERSION;
    head[5] = (char)type;
    put16(head + 6, 0);
    put32(head + 8, payload);
    put32(head + 12, crc32c(crc, head + 4, 8));
}

int64_t spool_msg_head_size(const spool_msg_t *m, const slice_t *rcpts)
{
    if (m->client.len > 255 || m->sender.len > 65535 || m->helo.len > 65535)
        return -1;
    uint64_t n = SPOOL_HEAD + ID_SIZE + 8 + 4 + 2 + m->sender.len + 1 + m->client.len + 2 + m->helo.len + 4;
    for (uint32_t i = 0; i < m->nrcpt; i++) {
        if (rcpts[i].len > 65535)
            return -1;
        n += 2 + rcpts[i].len;
    }
    if (n - SPOOL_HEAD + m->body_len > SPOOL_PAYLOAD_MAX)
        return -1;
    return (int64_t)n;
}

bool spool_msg_head(char *out, const spool_msg_t *m, const slice_t *rcpts, uint32_t *crc)
{
    int64_t size = spool_msg_head_size(m, rcpts);
    if (size < 0)
        return false;
    char *p = put_id(out + SPOOL_HEAD, m->id);
    put64(p, m->arrival_ms);
    p[8] = (char)m->flags;
    p[9] = 0;
    put16(p + 10, m->nrcpt);
    p = put_str16(p + 12, m->sender);
    *p++ = (char)m->client.len;
    if (m->client.len)
        memcpy(p, m->client.ptr, m->client.len);
    p = put_str16(p + m->client.len, m->helo);
    for (uint32_t i = 0; i < m->nrcpt; i++)
        p = put_str16(p, rcpts[i]);
    put32(p, m->body_len);
    p += 4;
    *crc = crc32c(*crc, out + SPOOL_HEAD, (size_t)(p - out) - SPOOL_HEAD);
    return true;
}

uint32_t spool_seal(char *head, size_t head_size, uint32_t crc, uint32_t body_len)
{
    uint32_t payload = (uint32_t)(head_size - SPOOL_HEAD) + body_len;
    seal(head, SPOOL_MSG, payload, crc);
    return (uint32_t)(spool_record_size(payload) - SPOOL_HEAD - payload);
}

int spool_seg_order(const spool_seg_t *a, const char *a_name, const spool_seg_t *b, const char *b_name)
{
    if (a->created_ms != b->created_ms)
        return a->created_ms < b->created_ms ? -1 : 1;
    return strcmp(a_name, b_name);
}

void spool_reseal(char *rec, uint64_t nonce, uint64_t offset)
{
    uint32_t payload = get32(rec + 8);
    uint32_t crc = crc32c(spool_check_start(nonce, offset), rec + SPOOL_HEAD, payload);
    put32(rec + 12, crc32c(crc, rec + 4, 8));
}

static size_t finish(char *out, uint64_t nonce, uint64_t offset, uint8_t type, char *end)
{
    uint32_t payload = (uint32_t)(end - out) - SPOOL_HEAD;
    seal(out, type, payload, crc32c(spool_check_start(nonce, offset), out + SPOOL_HEAD, payload));
    size_t total = (size_t)spool_record_size(payload);
    memset(end, 0, total - SPOOL_HEAD - payload);
    return total;
}

size_t spool_put_rcpt(char *out, uint64_t nonce, uint64_t offset, spool_id_t id, uint16_t index, uint16_t code)
{
    char *p = put_id(out + SPOOL_HEAD, id);
    put16(p, index);
    put16(p + 2, code);
    return finish(out, nonce, offset, SPOOL_RCPT, p + 4);
}

size_t spool_put_try(char *out, uint64_t nonce, uint64_t offset, spool_id_t id, uint32_t attempts, uint64_t next_ms,
                     uint16_t code, slice_t text)
{
    if (text.len > 65535)
        return 0;
    char *p = put_id(out + SPOOL_HEAD, id);
    put32(p, attempts);
    put64(p + 4, next_ms);
    put16(p + 12, code);
    p = put_str16(p + 14, text);
    return finish(out, nonce, offset, SPOOL_TRY, p);
}

size_t spool_put_done(char *out, uint64_t nonce, uint64_t offset, spool_id_t id)
{
    return finish(out, nonce, offset, SPOOL_DONE, put_id(out + SPOOL_HEAD, id));
}

/* ---- reading ---- */

typedef struct rd {
    const char *p, *end;
    bool bad;
} rd_t;

static const char *take(rd_t *r, size_t n)
{
    if (r->bad || (size_t)(r->end - r->p) < n) {
        r->bad = true;
        return NULL;
    }
    const char *q = r->p;
    r->p += n;
    return q;
}

static uint8_t rd8(rd_t *r)
{
    const char *q = take(r, 1);
    return q ? (uint8_t)*q : 0;
}

static uint16_t rd16(rd_t *r)
{
    const char *q = take(r, 2);
    return q ? get16(q) : 0;
}

static uint32_t rd32(rd_t *r)
{
    const char *q = take(r, 4);
    return q ? get32(q) : 0;
}

static uint64_t rd64(rd_t *r)
{
    const char *q = take(r, 8);
    return q ? get64(q) : 0;
}

static slice_t rd_str(rd_t *r, size_t n)
{
    const char *q = take(r, n);
    return q ? slice_make(q, n) : SLICE_NULL;
}

static spool_id_t rd_id(rd_t *r)
{
    spool_id_t id;
    id.session = rd64(r);
    id.number = rd32(r);
    return id;
}

/* The payload's fields, all of them and nothing more. */
static bool decode(uint8_t type, const char *p, uint32_t len, spool_rec_t *rec)
{
    rd_t r = { p, p + len, false };
    rec->id = rd_id(&r);
    switch (type) {
    case SPOOL_MSG: {
        spool_msg_t *m = &rec->msg;
        m->id = rec->id;
        m->arrival_ms = rd64(&r);
        m->flags = rd8(&r);
        if (rd8(&r) != 0)
            return false;
        m->nrcpt = rd16(&r);
        m->sender = rd_str(&r, rd16(&r));
        m->client = rd_str(&r, rd8(&r));
        m->helo = rd_str(&r, rd16(&r));
        const char *rstart = r.p;
        for (uint32_t i = 0; i < m->nrcpt && !r.bad; i++)
            (void)rd_str(&r, rd16(&r));
        if (r.bad)
            return false;
        m->rcpt_block = slice_make(rstart, (size_t)(r.p - rstart));
        m->body_len = rd32(&r);
        m->body = rd_str(&r, m->body_len);
        break;
    }
    case SPOOL_RCPT:
        rec->index = rd16(&r);
        rec->code = rd16(&r);
        break;
    case SPOOL_TRY:
        rec->attempts = rd32(&r);
        rec->next_ms = rd64(&r);
        rec->code = rd16(&r);
        rec->text = rd_str(&r, rd16(&r));
        break;
    case SPOOL_DONE:
        break;
    default:
        return false;
    }
    return !r.bad && r.p == r.end;
}

/* A whole, checked, well-formed record at h, written at offset pos of a
 * segment with this nonce, with avail octets readable from h? */
static bool record_check(const char *h, uint64_t avail, uint64_t nonce, uint64_t pos, spool_rec_t *rec)
{
    if (avail < SPOOL_HEAD)
        return false;
    if (get32(h) != SPOOL_MAGIC || (uint8_t)h[4] != SPOOL_VERSION || get16(h + 6) != 0)
        return false;
    uint8_t type = (uint8_t)h[5];
    uint32_t len = get32(h + 8);
    if (type < SPOOL_MSG || type >= SPOOL_TYPE_END || len > SPOOL_PAYLOAD_MAX)
        return false;
    uint64_t size = spool_record_size(len);
    if (avail < SPOOL_HEAD + (uint64_t)len)
        return false; /* cut short (the padding may be missing at the very end) */
    uint32_t crc = crc32c(spool_check_start(nonce, pos), h + SPOOL_HEAD, len);
    if (crc32c(crc, h + 4, 8) != get32(h + 12))
        return false;
    memset(rec, 0, sizeof *rec);
    if (!decode(type, h + SPOOL_HEAD, len, rec))
        return false;
    rec->type = type;
    rec->offset = pos;
    rec->size = (uint32_t)size;
    return true;
}

static bool record_at(const spool_scanner_t *s, uint64_t pos, spool_rec_t *rec)
{
    return record_check(s->p + pos, s->len - pos, s->seg.nonce, pos, rec);
}

bool spool_record_parse(const char *p, uint64_t len, uint64_t nonce, uint64_t offset, spool_rec_t *rec)
{
    return record_check(p, len, nonce, offset, rec) && rec->size <= len + SPOOL_ALIGN;
}

bool spool_scan_init(spool_scanner_t *s, const char *p, uint64_t len)
{
    memset(s, 0, sizeof *s);
    s->p = p;
    s->len = len;
    if (len < SPOOL_SEG_HEAD || get32(p) != SPOOL_SEG_MAGIC || (uint8_t)p[4] != SPOOL_VERSION ||
        crc32c(0, p, 28) != get32(p + 28)) {
        s->pos = len; /* nothing to read */
        return false;
    }
    s->seg.nonce = get64(p + 8);
    s->seg.created_ms = get64(p + 16);
    s->seg.worker = get32(p + 24);
    s->pos = SPOOL_SEG_HEAD;
    return true;
}

enum spool_scan spool_scan_next(spool_scanner_t *s, spool_rec_t *rec, uint64_t *at, uint64_t *skipped)
{
    if (s->pos >= s->len)
        return SPOOL_END;
    if (record_at(s, s->pos, rec)) {
        s->pos += rec->size;
        if (s->pos > s->len)
            s->pos = s->len; /* the last record's padding was not written: harmless */
        return SPOOL_OK;
    }
    /* Not a record here: the next aligned place where one checks out. */
    *at = s->pos;
    for (uint64_t q = s->pos + SPOOL_ALIGN; q + SPOOL_HEAD <= s->len; q += SPOOL_ALIGN) {
        if (get32(s->p + q) != SPOOL_MAGIC)
            continue;
        spool_rec_t probe;
        if (record_at(s, q, &probe)) {
            *skipped = q - s->pos;
            s->pos = q;
            return SPOOL_SKIPPED;
        }
    }
    *skipped = s->len - s->pos;
    s->pos = s->len;
    return SPOOL_TORN;
}

bool spool_rcpt_next(const spool_msg_t *m, uint32_t *cur, slice_t *out)
{
    const char *p = m->rcpt_block.ptr;
    size_t n = m->rcpt_block.len;
    if (*cur + 2 > n)
        return false;
    uint16_t len = get16(p + *cur);
    if (*cur + 2 + len > n)
        return false;
    *out = slice_make(p + *cur + 2, len);
    *cur += 2 + (uint32_t)len;
    return true;
}

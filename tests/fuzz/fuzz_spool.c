/*
 * fuzz_spool.c - libFuzzer target over the spool's records (core/spool.h):
 * the input is a program that writes a segment the way a worker would, then
 * damages it, then reads it back; checked against what was written.
 *
 * Input:
 *   b[0]: records to write, 1 + b % 8
 *   each record: a type byte (% 4: message, recipient result, attempt,
 *     done), then its fields: a message takes a recipient count (% 5), a
 *     sender length (% 40), a client length, a HELO length and a body
 *     length (two bytes, at most 4095), their octets taken in turn from the
 *     rest of the input (cycling; zeros when it is empty); an attempt takes
 *     a text length (% 200)
 *   then damage operations, up to 8, each a kind byte and a position (two
 *     bytes, modulo the segment's length) and a value:
 *     0 flip: xor the octet with the value (0 counts as 0x80)
 *     1 cut: the segment ends there
 *     2 stamp: write the value over 1..8 octets from there
 *     3 raw: the rest of the input appended as octets (a tail of garbage)
 *
 * Checks (__builtin_trap):
 *   - the scanner ends (END or TORN) within a bounded number of calls,
 *     offsets strictly increase, every record returned lies inside the
 *     segment, is 8-aligned, and a SKIPPED range ends where the next record
 *     begins;
 *   - every record returned re-encodes (same nonce, same offset) to exactly
 *     the octets it was read from;
 *   - a record returned at an offset where one was written, with none of its
 *     octets damaged, has the fields that were written;
 *   - when every record returned is one that was written there (no damage
 *     made a new one), every written record whose octets are untouched and
 *     wholly inside the segment is returned: damage never costs a record
 *     that was not damaged.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "crc32c.h"
#include "spool.h"

#define NONCE 0x5eedf00dcafe1234ull
#define MAX_SEG (1u << 17)
#define MAX_RECS 8

#define CHECK(c)                                                                                                       \
    do {                                                                                                               \
        if (!(c))                                                                                                      \
            __builtin_trap();                                                                                          \
    } while (0)

typedef struct in {
    const uint8_t *p;
    size_t n, pos;
    const uint8_t *fill; /* octets for fields, cycling */
    size_t nfill, fpos;
} in_t;

static uint8_t byte(in_t *in)
{
    return in->pos < in->n ? in->p[in->pos++] : 0;
}

static char filler(in_t *in)
{
    if (!in->nfill)
        return 0;
    char c = (char)in->fill[in->fpos % in->nfill];
    in->fpos++;
    return c;
}

typedef struct written {
    uint8_t type;
    uint64_t off, end; /* end: header + payload (the padding not counted) */
    spool_id_t id;
} written_t;

static char seg[MAX_SEG + 65536];
static char strings[4][8192];
static char body[4096];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    in_t in = { data, size, 0, NULL, 0, 0 };
    in.fill = size > 64 ? data + size / 2 : data;
    in.nfill = size > 64 ? size - size / 2 : size;
    spool_seg_t sh = { NONCE, 1, 1 };
    spool_seg_head(seg, &sh);
    size_t len = SPOOL_SEG_HEAD;
    written_t w[MAX_RECS];
    int nw = 1 + byte(&in) % MAX_RECS;
    for (int i = 0; i < nw; i++) {
        uint8_t t = byte(&in) % 4;
        spool_id_t id = { 0x1000 + (uint64_t)i, (uint32_t)i + 1 };
        w[i] = (written_t){ 0, len, 0, id };
        if (t == 0) {
            slice_t rc[4];
            uint16_t nr = byte(&in) % 5;
            size_t sl = byte(&in) % 40, cl = byte(&in), hl = byte(&in);
            uint32_t bl = (uint32_t)(byte(&in) | byte(&in) << 8) & 4095;
            for (size_t k = 0; k < sl; k++)
                strings[0][k] = filler(&in);
            for (size_t k = 0; k < cl; k++)
                strings[1][k] = filler(&in);
            for (size_t k = 0; k < hl; k++)
                strings[2][k] = filler(&in);
            size_t rp = 0;
            for (uint16_t r = 0; r < nr; r++) {
                size_t rl = 1 + byte(&in) % 60;
                for (size_t k = 0; k < rl; k++)
                    strings[3][rp + k] = filler(&in);
                rc[r] = slice_make(strings[3] + rp, rl);
                rp += rl;
            }
            for (uint32_t k = 0; k < bl; k++)
                body[k] = filler(&in);
            spool_msg_t m = { .id = id, .arrival_ms = 7, .flags = 1, .sender = slice_make(strings[0], sl),
                              .client = slice_make(strings[1], cl), .helo = slice_make(strings[2], hl),
                              .nrcpt = nr, .body_len = bl };
            int64_t hs = spool_msg_head_size(&m, rc);
            CHECK(hs > 0);
            uint32_t crc = spool_check_start(NONCE, len);
            CHECK(spool_msg_head(seg + len, &m, rc, &crc));
            memcpy(seg + len + hs, body, bl);
            crc = crc32c(crc, body, bl);
            uint32_t pad = spool_seal(seg + len, (size_t)hs, crc, bl);
            memset(seg + len + hs + bl, 0, pad);
            w[i].type = SPOOL_MSG;
            w[i].end = len + (uint64_t)hs + bl;
            len += (size_t)hs + bl + pad;
        } else {
            size_t n;
            if (t == 1) {
                n = spool_put_rcpt(seg + len, NONCE, len, id, byte(&in), 250);
                w[i].type = SPOOL_RCPT;
            } else if (t == 2) {
                size_t tl = byte(&in) % 200;
                for (size_t k = 0; k < tl; k++)
                    strings[0][k] = filler(&in);
                n = spool_put_try(seg + len, NONCE, len, id, 3, 99, 451, slice_make(strings[0], tl));
                w[i].type = SPOOL_TRY;
            } else {
                n = spool_put_done(seg + len, NONCE, len, id);
                w[i].type = SPOOL_DONE;
            }
            CHECK(n > 0);
            uint32_t plen;
            memcpy(&plen, seg + len + 8, 4);
            w[i].end = len + SPOOL_HEAD + plen;
            len += n;
        }
    }
    /* damage: which octets were touched */
    static uint8_t touched[MAX_SEG + 65536];
    memset(touched, 0, len);
    size_t written_len = len;
    int nops = byte(&in) % 9;
    for (int k = 0; k < nops && in.pos < in.n; k++) {
        uint8_t kind = byte(&in) % 4;
        size_t pos = (size_t)(byte(&in) | byte(&in) << 8) % (len ? len : 1);
        uint8_t v = byte(&in);
        if (kind == 0) {
            seg[pos] ^= (char)(v ? v : 0x80);
            touched[pos] = 1;
        } else if (kind == 1) {
            len = pos;
        } else if (kind == 2) {
            for (size_t j = 0; j < 1u + (v & 7) && pos + j < len; j++) {
                seg[pos + j] = (char)v;
                touched[pos + j] = 1;
            }
        } else {
            size_t rest = in.n - in.pos;
            if (rest > 65536)
                rest = 65536;
            memcpy(seg + len, in.p + in.pos, rest);
            memset(touched + len, 1, rest);
            len += rest;
            in.pos = in.n;
        }
    }
    /* read it back from a copy of exactly len octets (ASan sees overreads) */
    char *copy = malloc(len ? len : 1);
    CHECK(copy);
    memcpy(copy, seg, len);
    spool_scanner_t sc;
    bool head_ok = spool_scan_init(&sc, copy, len);
    bool head_touched = false;
    for (size_t k = 0; k < SPOOL_SEG_HEAD && k < len; k++)
        head_touched |= touched[k] != 0;
    if (len >= SPOOL_SEG_HEAD && !head_touched)
        CHECK(head_ok);
    bool found[MAX_RECS] = { false };
    bool stranger = false;
    uint64_t last = 0;
    char *re = malloc(SPOOL_SMALL_MAX + 65536 + 8192);
    CHECK(re);
    for (int guard = 0; head_ok; guard++) {
        CHECK(guard < 100000);
        spool_rec_t r;
        uint64_t at = 0, skipped = 0;
        enum spool_scan st = spool_scan_next(&sc, &r, &at, &skipped);
        if (st == SPOOL_END)
            break;
        if (st == SPOOL_TORN) {
            CHECK(at + skipped == len && skipped > 0);
            break;
        }
        if (st == SPOOL_SKIPPED) {
            CHECK(skipped > 0 && skipped % SPOOL_ALIGN == 0 && at + skipped == sc.pos && sc.pos < len);
            continue;
        }
        CHECK(st == SPOOL_OK);
        CHECK(r.offset >= SPOOL_SEG_HEAD && r.offset % SPOOL_ALIGN == 0 && r.offset >= last);
        CHECK(r.offset + SPOOL_HEAD <= len && r.size >= SPOOL_HEAD && r.size % SPOOL_ALIGN == 0);
        last = r.offset + 1;
        /* re-encode */
        uint32_t plen;
        memcpy(&plen, copy + r.offset + 8, 4);
        CHECK(r.offset + SPOOL_HEAD + plen <= len);
        if (r.type == SPOOL_MSG) {
            slice_t rc[64];
            uint32_t cur = 0;
            uint16_t k = 0;
            while (k < 64 && spool_rcpt_next(&r.msg, &cur, &rc[k]))
                k++;
            CHECK(k == r.msg.nrcpt || k == 64);
            if (k == r.msg.nrcpt) {
                int64_t hs = spool_msg_head_size(&r.msg, rc);
                CHECK(hs > 0 && (uint64_t)hs + r.msg.body_len == SPOOL_HEAD + plen);
                char *buf = malloc((size_t)hs);
                CHECK(buf);
                uint32_t crc = spool_check_start(NONCE, r.offset);
                CHECK(spool_msg_head(buf, &r.msg, rc, &crc));
                crc = crc32c(crc, r.msg.body.ptr, r.msg.body_len);
                (void)spool_seal(buf, (size_t)hs, crc, r.msg.body_len);
                CHECK(memcmp(buf, copy + r.offset, (size_t)hs) == 0);
                free(buf);
            }
        } else {
            size_t n = r.type == SPOOL_RCPT ? spool_put_rcpt(re, NONCE, r.offset, r.id, r.index, r.code)
                       : r.type == SPOOL_TRY
                           ? spool_put_try(re, NONCE, r.offset, r.id, r.attempts, r.next_ms, r.code, r.text)
                           : spool_put_done(re, NONCE, r.offset, r.id);
            CHECK(n > 0 && memcmp(re, copy + r.offset, SPOOL_HEAD + plen) == 0);
        }
        /* one of ours? */
        int mine = -1;
        for (int i = 0; i < nw; i++)
            if (w[i].off == r.offset)
                mine = i;
        bool intact = mine >= 0 && w[mine].end <= len;
        for (uint64_t k = r.offset; intact && k < w[mine].end; k++)
            intact = !touched[k];
        if (mine < 0 || !intact) {
            stranger = true;
            continue;
        }
        CHECK(r.type == w[mine].type && spool_id_eq(r.id, w[mine].id));
        found[mine] = true;
    }
    if (head_ok && !stranger) {
        for (int i = 0; i < nw; i++) {
            bool intact = w[i].end <= len && w[i].end <= written_len;
            for (uint64_t k = w[i].off; intact && k < w[i].end; k++)
                intact = !touched[k];
            if (intact)
                CHECK(found[i]);
        }
    }
    free(re);
    free(copy);
    return 0;
}

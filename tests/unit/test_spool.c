/*
 * test_spool.c - the spool's records (core/spool.h) and their checksum
 * (core/crc32c.h).
 *
 * Covers:
 *   1. CRC-32C: the standard check value, the SSE4.2 layer against the
 *      table at every length and alignment up to past three lanes, and a
 *      checksum built in pieces equal to the whole;
 *   2. a segment written record by record reads back field for field:
 *      messages (null sender, no client, many recipients, empty and large
 *      bodies), recipient results, attempts, done;
 *   3. a segment cut at every length reads back as exactly the records
 *      wholly inside the cut, then END or TORN (never a record that was not
 *      written whole);
 *   4. every octet of a record in the middle damaged in turn: that record
 *      is skipped (and said so, with where and how much) and the ones after
 *      it are read;
 *   5. a record hidden in a message body (the client chose those octets)
 *      is never taken for one, when the message around it is torn or
 *      damaged: the check is bound to the segment's nonce and the offset;
 *   6. limits: a client address over 255 octets, a string over 65535;
 *      a segment header that is missing, damaged or torn;
 *   7. the queue the records make (core/spoolq.h): pending, recipients
 *      done one by one, attempts, done, duplicates and orphans, ten
 *      thousand messages; message ids formatted and parsed back;
 *   8. a record sealed at its place after it was made (spool_reseal), and
 *      read alone (spool_record_parse), as the gateway's batches do.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crc32c.h"
#include "spool.h"
#include "spoolq.h"

#define NONCE 0x0123456789abcdefull

/* ---- 1. CRC-32C ---- */

static void test_crc_check_value(void **state)
{
    (void)state;
    assert_int_equal(crc32c(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(crc32c_portable(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(crc32c(0, "", 0), 0);
    /* 32 zero octets and 32 0xff octets (RFC 3720 B.4) */
    char z[32], f[32];
    memset(z, 0, sizeof z);
    memset(f, 0xff, sizeof f);
    assert_int_equal(crc32c(0, z, 32), 0x8A9136AAu);
    assert_int_equal(crc32c(0, f, 32), 0x62A8AB43u);
    const char *layer = crc32c_layer();
    assert_true(!strcmp(layer, "sse4.2") || !strcmp(layer, "portable"));
}

static void test_crc_layers_agree(void **state)
{
    (void)state;
    size_t cap = 3 * 1024 * 3 + 64;
    unsigned char *buf = malloc(cap);
    assert_non_null(buf);
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < cap; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        buf[i] = (unsigned char)x;
    }
    for (size_t off = 0; off < 8; off++) {
        for (size_t n = 0; n + off <= cap; n += n < 64 ? 1 : n < 3200 ? 61 : 997) {
            uint32_t a = crc32c(7, buf + off, n), b = crc32c_portable(7, buf + off, n);
            if (a != b)
                fail_msg("offset %zu length %zu: %08x != %08x", off, n, a, b);
        }
    }
    /* in pieces, across the three-lane step */
    uint32_t whole = crc32c(0, buf, cap);
    for (size_t cut = 0; cut <= cap; cut += 1001) {
        uint32_t parts = crc32c(crc32c(0, buf, cut), buf + cut, cap - cut);
        assert_int_equal(parts, whole);
    }
    free(buf);
}

/* ---- a segment builder ---- */

typedef struct seg {
    char *p;
    size_t len, cap;
} seg_t;

static void seg_reserve(seg_t *s, size_t more)
{
    if (s->len + more <= s->cap)
        return;
    s->cap = (s->len + more) * 2;
    s->p = realloc(s->p, s->cap);
    assert_non_null(s->p);
}

static seg_t seg_new(void)
{
    seg_t s = { NULL, 0, 0 };
    seg_reserve(&s, SPOOL_SEG_HEAD);
    spool_seg_t h = { NONCE, 1767225600000ull, 3 };
    spool_seg_head(s.p, &h);
    s.len = SPOOL_SEG_HEAD;
    return s;
}

/* A message record as a writer makes it: head, body, padding. */
static uint64_t seg_msg(seg_t *s, const spool_msg_t *m, const slice_t *rcpts, const char *body, uint32_t blen)
{
    int64_t hs = spool_msg_head_size(m, rcpts);
    assert_true(hs > 0);
    uint64_t at = s->len;
    seg_reserve(s, (size_t)spool_record_size((uint64_t)hs - SPOOL_HEAD + blen));
    spool_msg_t mm = *m;
    mm.body_len = blen;
    uint32_t crc = spool_check_start(NONCE, at);
    assert_true(spool_msg_head(s->p + at, &mm, rcpts, &crc));
    if (blen)
        memcpy(s->p + at + hs, body, blen);
    /* the body's checksum in two pieces, as it arrives */
    crc = crc32c(crc, body, blen / 2);
    crc = crc32c(crc, body + blen / 2, blen - blen / 2);
    uint32_t pad = spool_seal(s->p + at, (size_t)hs, crc, blen);
    memset(s->p + at + hs + blen, 0, pad);
    s->len = at + (size_t)hs + blen + pad;
    assert_int_equal(s->len % SPOOL_ALIGN, 0);
    return at;
}

static uint64_t seg_small(seg_t *s, int type, spool_id_t id, uint32_t a, uint64_t b, uint16_t code, const char *text)
{
    seg_reserve(s, SPOOL_SMALL_MAX);
    uint64_t at = s->len;
    size_t n = 0;
    if (type == SPOOL_RCPT)
        n = spool_put_rcpt(s->p + at, NONCE, at, id, (uint16_t)a, code);
    else if (type == SPOOL_TRY)
        n = spool_put_try(s->p + at, NONCE, at, id, a, b, code, slice_make(text, strlen(text)));
    else
        n = spool_put_done(s->p + at, NONCE, at, id);
    assert_true(n > 0 && n % SPOOL_ALIGN == 0);
    s->len += n;
    return at;
}

static slice_t S(const char *s)
{
    return slice_make(s, strlen(s));
}

/* The sample segment: what each record is, to compare with. */
#define NREC 6
static const char BODY1[] = "Received: from x\r\nSubject: hi\r\n\r\nHello.\r\n..dot-stuffed\r\n";

static seg_t sample(uint64_t offs[NREC])
{
    seg_t s = seg_new();
    slice_t r1[] = { S("b@example.com"), S("\"odd> local\"@example.com"), S("c@example.net") };
    spool_msg_t m1 = { .id = { 0xfeedfacecafebeefull, 1 }, .arrival_ms = 1767225600123ull,
                       .flags = SPOOL_F_8BITMIME | SPOOL_F_SMTPUTF8, .sender = S("alice@example.org"),
                       .client = S("192.0.2.7"), .helo = S("mail.example.org"), .nrcpt = 3 };
    offs[0] = seg_msg(&s, &m1, r1, BODY1, sizeof BODY1 - 1);
    slice_t r2[] = { S("postmaster@example.com") };
    spool_msg_t m2 = { .id = { 42, 7 }, .nrcpt = 1 }; /* null sender, no client, no HELO, empty body */
    offs[1] = seg_msg(&s, &m2, r2, "", 0);
    offs[2] = seg_small(&s, SPOOL_RCPT, m1.id, 1, 0, 250, NULL);
    offs[3] = seg_small(&s, SPOOL_TRY, m1.id, 3, 1767225700000ull, 451, "4.4.1 downstream unavailable");
    offs[4] = seg_small(&s, SPOOL_DONE, m2.id, 0, 0, 0, NULL);
    char *big = malloc(100000);
    assert_non_null(big);
    for (int i = 0; i < 100000; i++)
        big[i] = (char)('a' + i % 26);
    spool_msg_t m3 = { .id = { 43, 1 }, .sender = S("x@y.test"), .nrcpt = 1 };
    offs[5] = seg_msg(&s, &m3, r2, big, 100000);
    free(big);
    return s;
}

/* One line per record read, and per scan status; into a static buffer. */
static const char *scan_all(const char *p, size_t len)
{
    static char out[8192];
    size_t n = 0;
    out[0] = 0;
    spool_scanner_t sc;
    if (!spool_scan_init(&sc, p, len)) {
        snprintf(out, sizeof out, "NOSEG\n");
        return out;
    }
    for (int guard = 0; guard < 1000; guard++) {
        spool_rec_t r;
        uint64_t at = 0, skipped = 0;
        enum spool_scan st = spool_scan_next(&sc, &r, &at, &skipped);
        if (st == SPOOL_END) {
            n += (size_t)snprintf(out + n, sizeof out - n, "END\n");
            break;
        }
        if (st == SPOOL_TORN || st == SPOOL_SKIPPED) {
            n += (size_t)snprintf(out + n, sizeof out - n, "%s at=%llu n=%llu\n",
                                  st == SPOOL_TORN ? "TORN" : "SKIPPED", (unsigned long long)at,
                                  (unsigned long long)skipped);
            if (st == SPOOL_TORN)
                break;
            continue;
        }
        n += (size_t)snprintf(out + n, sizeof out - n, "%d@%llu %llx-%u\n", r.type, (unsigned long long)r.offset,
                              (unsigned long long)r.id.session, r.id.number);
    }
    return out;
}

/* ---- 2. round trip ---- */

static void test_round_trip(void **state)
{
    (void)state;
    uint64_t offs[NREC];
    seg_t s = sample(offs);
    spool_scanner_t sc;
    assert_true(spool_scan_init(&sc, s.p, s.len));
    assert_int_equal(sc.seg.nonce, NONCE);
    assert_int_equal(sc.seg.worker, 3);
    spool_rec_t r;
    uint64_t at, sk;
    assert_int_equal(spool_scan_next(&sc, &r, &at, &sk), SPOOL_OK);
    assert_int_equal(r.type, SPOOL_MSG);
    assert_int_equal(r.offset, offs[0]);
    assert_int_equal(r.msg.id.session, 0xfeedfacecafebeefull);
    assert_int_equal(r.msg.id.number, 1);
    assert_int_equal(r.msg.arrival_ms, 1767225600123ull);
    assert_int_equal(r.msg.flags, SPOOL_F_8BITMIME | SPOOL_F_SMTPUTF8);
    assert_true(slice_eq(r.msg.sender, S("alice@example.org")));
    assert_true(slice_eq(r.msg.client, S("192.0.2.7")));
    assert_true(slice_eq(r.msg.helo, S("mail.example.org")));
    assert_int_equal(r.msg.nrcpt, 3);
    uint32_t cur = 0;
    slice_t rc;
    const char *want[] = { "b@example.com", "\"odd> local\"@example.com", "c@example.net" };
    for (int i = 0; i < 3; i++) {
        assert_true(spool_rcpt_next(&r.msg, &cur, &rc));
        assert_true(slice_eq(rc, S(want[i])));
    }
    assert_false(spool_rcpt_next(&r.msg, &cur, &rc));
    assert_int_equal(r.msg.body_len, sizeof BODY1 - 1);
    assert_memory_equal(r.msg.body.ptr, BODY1, sizeof BODY1 - 1);

    assert_int_equal(spool_scan_next(&sc, &r, &at, &sk), SPOOL_OK);
    assert_int_equal(r.type, SPOOL_MSG);
    assert_int_equal(r.msg.sender.len, 0);
    assert_int_equal(r.msg.client.len, 0);
    assert_int_equal(r.msg.body_len, 0);

    assert_int_equal(spool_scan_next(&sc, &r, &at, &sk), SPOOL_OK);
    assert_int_equal(r.type, SPOOL_RCPT);
    assert_int_equal(r.index, 1);
    assert_int_equal(r.code, 250);
    assert_int_equal(r.id.session, 0xfeedfacecafebeefull);

    assert_int_equal(spool_scan_next(&sc, &r, &at, &sk), SPOOL_OK);
    assert_int_equal(r.type, SPOOL_TRY);
    assert_int_equal(r.attempts, 3);
    assert_int_equal(r.next_ms, 1767225700000ull);
    assert_int_equal(r.code, 451);
    assert_true(slice_eq(r.text, S("4.4.1 downstream unavailable")));

    assert_int_equal(spool_scan_next(&sc, &r, &at, &sk), SPOOL_OK);
    assert_int_equal(r.type, SPOOL_DONE);
    assert_int_equal(r.id.session, 42);
    assert_int_equal(r.id.number, 7);

    assert_int_equal(spool_scan_next(&sc, &r, &at, &sk), SPOOL_OK);
    assert_int_equal(r.msg.body_len, 100000);
    assert_int_equal(r.msg.body.ptr[99999], 'a' + 99999 % 26);
    assert_int_equal(spool_scan_next(&sc, &r, &at, &sk), SPOOL_END);
    assert_int_equal(spool_scan_next(&sc, &r, &at, &sk), SPOOL_END);
    free(s.p);
}

/* ---- 3. torn at every length ---- */

static void test_torn_at_every_length(void **state)
{
    (void)state;
    uint64_t offs[NREC];
    seg_t s = sample(offs);
    uint64_t ends[NREC];
    for (int i = 0; i < NREC; i++)
        ends[i] = i + 1 < NREC ? offs[i + 1] : s.len;
    /* past the first records every octet; in the long last one a stride */
    for (size_t cut = 0; cut <= s.len; cut += cut < offs[5] + 64 || cut + 64 > s.len ? 1 : 509) {
        char *copy = malloc(cut ? cut : 1); /* exactly cut octets: ASan sees any read past it */
        assert_non_null(copy);
        memcpy(copy, s.p, cut);
        const char *got = scan_all(copy, cut);
        char want[4096];
        size_t n = 0;
        if (cut < SPOOL_SEG_HEAD) {
            snprintf(want, sizeof want, "NOSEG\n");
        } else {
            int whole = 0;
            /* a record is whole once its payload is; its padding may be cut */
            static const int types[NREC] = { SPOOL_MSG, SPOOL_MSG, SPOOL_RCPT, SPOOL_TRY, SPOOL_DONE, SPOOL_MSG };
            static const char *const ids[NREC] = { "feedfacecafebeef-1", "2a-7", "feedfacecafebeef-1",
                                                   "feedfacecafebeef-1", "2a-7", "2b-1" };
            want[0] = 0;
            for (int i = 0; i < NREC; i++) {
                /* the unpadded end: header + payload */
                uint32_t plen = 0;
                memcpy(&plen, s.p + offs[i] + 8, 4);
                if (cut >= offs[i] + SPOOL_HEAD + plen) {
                    n += (size_t)snprintf(want + n, sizeof want - n, "%d@%llu %s\n", types[i],
                                          (unsigned long long)offs[i], ids[i]);
                    whole = i + 1;
                } else {
                    break;
                }
            }
            uint64_t stop = whole ? ends[whole - 1] : SPOOL_SEG_HEAD;
            if (cut <= stop)
                snprintf(want + n, sizeof want - n, "END\n");
            else
                snprintf(want + n, sizeof want - n, "TORN at=%llu n=%llu\n", (unsigned long long)stop,
                         (unsigned long long)(cut - stop));
        }
        if (strcmp(got, want))
            fail_msg("cut at %zu:\n--- want\n%s--- got\n%s", cut, want, got);
        free(copy);
    }
    free(s.p);
}

/* ---- 4. damage in the middle ---- */

static void test_damage_costs_one_record(void **state)
{
    (void)state;
    uint64_t offs[NREC];
    seg_t s = sample(offs);
    /* record 2 (RCPT) and record 0 (a message), every octet of header and payload */
    const int victims[] = { 2, 0 };
    for (size_t v = 0; v < 2; v++) {
        int i = victims[v];
        uint32_t plen;
        memcpy(&plen, s.p + offs[i] + 8, 4);
        for (uint64_t k = offs[i]; k < offs[i] + SPOOL_HEAD + plen; k++) {
            for (int bit = 0; bit < 8; bit += 7) {
                s.p[k] ^= (char)(1 << bit);
                const char *got = scan_all(s.p, s.len);
                char skipped[64];
                snprintf(skipped, sizeof skipped, "SKIPPED at=%llu n=%llu\n", (unsigned long long)offs[i],
                         (unsigned long long)(offs[i + 1] - offs[i]));
                if (!strstr(got, skipped) || !strstr(got, "END\n"))
                    fail_msg("record %d octet %llu bit %d:\n%s", i, (unsigned long long)(k - offs[i]), bit, got);
                /* every other record is still there */
                for (int j = 0; j < NREC; j++) {
                    char line[64];
                    snprintf(line, sizeof line, "@%llu ", (unsigned long long)offs[j]);
                    if ((strstr(got, line) != NULL) != (j != i))
                        fail_msg("record %d octet %llu: record %d %s:\n%s", i, (unsigned long long)(k - offs[i]), j,
                                 j == i ? "read" : "lost", got);
                }
                s.p[k] ^= (char)(1 << bit);
            }
        }
    }
    assert_string_equal(scan_all(s.p, s.len), scan_all(s.p, s.len)); /* restored */
    free(s.p);
}

/* ---- 5. a record inside a body ---- */

/* A body that holds, at every aligned place it could land, a whole record
 * made the way a client who knows the format would: the right magic and
 * layout, a check over what it can know. */
static void test_record_in_a_body_is_never_taken(void **state)
{
    (void)state;
    for (int attempt = 0; attempt < 3; attempt++) {
        seg_t s = seg_new();
        /* the forged record: a message to a recipient nobody accepted */
        seg_t forge = { NULL, 0, 0 };
        seg_reserve(&forge, 4096);
        slice_t evil[] = { S("victim@elsewhere.test") };
        spool_msg_t fm = { .id = { 666, 1 }, .sender = S("spam@x.test"), .nrcpt = 1 };
        int64_t hs = spool_msg_head_size(&fm, evil);
        /* what a client could compute: nonce unknown (0, or a guess), the
         * offset guessed right (attempt 2) */
        uint64_t guess_nonce = attempt == 1 ? NONCE + 1 : 0;
        uint64_t inner_off = SPOOL_SEG_HEAD + 256; /* where it lands: past the outer head, aligned below */
        uint32_t crc = spool_check_start(guess_nonce, attempt == 2 ? inner_off : 0);
        assert_true(spool_msg_head(forge.p, &fm, evil, &crc));
        uint32_t pad = spool_seal(forge.p, (size_t)hs, crc, 0);
        forge.len = (size_t)hs + pad;
        /* the outer message: its head is 256 - body offset; fill the body
         * with the forged record at an aligned place */
        char body[2048];
        memset(body, 'x', sizeof body);
        slice_t r[] = { S("user@example.com") };
        spool_msg_t om = { .id = { 7, 1 }, .sender = S("a@b.test"), .nrcpt = 1 };
        int64_t ohs = spool_msg_head_size(&om, r);
        size_t lead = (size_t)(inner_off - SPOOL_SEG_HEAD - (uint64_t)ohs);
        assert_true(lead < sizeof body && lead + forge.len < sizeof body);
        memcpy(body + lead, forge.p, forge.len);
        seg_msg(&s, &om, r, body, sizeof body);
        assert_int_equal(memcmp(s.p + inner_off, forge.p, forge.len), 0);
        /* whole: one message */
        char want[128];
        snprintf(want, sizeof want, "1@%u 7-1\nEND\n", SPOOL_SEG_HEAD);
        assert_string_equal(scan_all(s.p, s.len), want);
        /* torn after the forged record, and the outer header damaged:
         * never the forged one */
        for (size_t cut = inner_off + forge.len; cut < s.len; cut += 97) {
            const char *got = scan_all(s.p, cut);
            if (strstr(got, " 29a-1"))
                fail_msg("attempt %d: cut at %zu: the forged record was read:\n%s", attempt, cut, got);
        }
        s.p[SPOOL_SEG_HEAD + 20] ^= 1;
        const char *got = scan_all(s.p, s.len);
        if (strstr(got, " 29a-1"))
            fail_msg("attempt %d: damaged head: the forged record was read:\n%s", attempt, got);
        free(forge.p);
        free(s.p);
    }
}

/* ---- 6. limits and segment headers ---- */

static void test_limits(void **state)
{
    (void)state;
    char big[70000];
    memset(big, 'a', sizeof big);
    slice_t r[] = { S("u@example.com") };
    spool_msg_t m = { .id = { 1, 1 }, .nrcpt = 1, .client = slice_make(big, 256) };
    assert_true(spool_msg_head_size(&m, r) < 0);
    m.client = slice_make(big, 255);
    assert_true(spool_msg_head_size(&m, r) > 0);
    m.helo = slice_make(big, 65536);
    assert_true(spool_msg_head_size(&m, r) < 0);
    m.helo = SLICE_NULL;
    slice_t long_r[] = { slice_make(big, 65536) };
    assert_true(spool_msg_head_size(&m, long_r) < 0);
    m.body_len = SPOOL_PAYLOAD_MAX;
    assert_true(spool_msg_head_size(&m, r) < 0);
    char *out = malloc(SPOOL_SMALL_MAX);
    assert_non_null(out);
    assert_int_equal(spool_put_try(out, NONCE, 32, m.id, 1, 2, 451, slice_make(big, 65536)), 0);
    assert_true(spool_put_try(out, NONCE, 32, m.id, 1, 2, 451, slice_make(big, 65535)) <= SPOOL_SMALL_MAX);
    free(out);
}

static void test_segment_header(void **state)
{
    (void)state;
    seg_t s = seg_new();
    spool_scanner_t sc;
    assert_true(spool_scan_init(&sc, s.p, s.len));
    assert_int_equal(sc.seg.created_ms, 1767225600000ull);
    assert_string_equal(scan_all(s.p, s.len), "END\n");
    for (size_t cut = 0; cut < SPOOL_SEG_HEAD; cut++)
        assert_false(spool_scan_init(&sc, s.p, cut));
    for (size_t k = 0; k < SPOOL_SEG_HEAD; k++) {
        s.p[k] ^= 0x10;
        assert_false(spool_scan_init(&sc, s.p, s.len));
        s.p[k] ^= 0x10;
    }
    /* records of another segment (another nonce) are not this one's */
    uint64_t offs[NREC];
    seg_t t = sample(offs);
    spool_seg_t other = { NONCE ^ 1, 0, 3 };
    spool_seg_head(t.p, &other);
    const char *got = scan_all(t.p, t.len);
    assert_non_null(strstr(got, "TORN at=32 "));
    assert_null(strstr(got, "@"));
    free(t.p);
    free(s.p);
}

/* ---- 7. the queue the records make ---- */

static void feed(spoolq_t *q, uint32_t seg, const seg_t *s)
{
    spool_scanner_t sc;
    assert_true(spool_scan_init(&sc, s->p, s->len));
    spool_rec_t r;
    uint64_t at, sk;
    while (spool_scan_next(&sc, &r, &at, &sk) == SPOOL_OK)
        assert_true(spoolq_add(q, seg, &r));
}

static void test_queue_from_records(void **state)
{
    (void)state;
    uint64_t offs[NREC];
    seg_t s = sample(offs); /* m1 (3 rcpts: #1 done 250, a TRY), m2 (DONE), m3 */
    spoolq_t q;
    spoolq_init(&q);
    feed(&q, 4, &s);
    assert_int_equal(q.n, 3);
    assert_int_equal(q.pending, 2);
    spoolq_msg_t *m1 = spoolq_find(&q, (spool_id_t){ 0xfeedfacecafebeefull, 1 });
    assert_non_null(m1);
    assert_int_equal(m1->seg, 4);
    assert_int_equal(m1->offset, offs[0]);
    assert_int_equal(m1->left, 2);
    assert_int_equal(m1->codes[1], 250);
    assert_int_equal(m1->attempts, 3);
    assert_int_equal(m1->last_code, 451);
    assert_string_equal(m1->last_text, "4.4.1 downstream unavailable");
    assert_false(m1->done);
    assert_true(spoolq_find(&q, (spool_id_t){ 42, 7 })->done);
    assert_null(spoolq_find(&q, (spool_id_t){ 42, 8 }));
    uint64_t octets = q.pending_octets;
    /* the other recipients done, one twice: m1 is done, once */
    spool_rec_t r = { .type = SPOOL_RCPT, .id = m1->id, .index = 0, .code = 250 };
    assert_true(spoolq_add(&q, 4, &r));
    assert_true(spoolq_add(&q, 4, &r));
    assert_int_equal(m1->left, 1);
    r.index = 2;
    r.code = 550;
    assert_true(spoolq_add(&q, 4, &r));
    r.index = 9; /* no such recipient */
    assert_true(spoolq_add(&q, 4, &r));
    assert_true(m1->done);
    assert_int_equal(q.pending, 1);
    assert_int_equal(q.pending_octets, octets - m1->size);
    r = (spool_rec_t){ .type = SPOOL_DONE, .id = m1->id };
    assert_true(spoolq_add(&q, 4, &r)); /* done again: nothing changes */
    assert_int_equal(q.pending, 1);
    r.id = (spool_id_t){ 99, 1 };
    assert_true(spoolq_add(&q, 4, &r));
    assert_int_equal(q.orphans, 1);
    /* the same segment again: duplicates, ignored */
    feed(&q, 5, &s);
    assert_int_equal(q.duplicates, 3);
    assert_int_equal(q.n, 3);
    spoolq_free(&q);
    /* ten thousand: the table grows */
    spoolq_init(&q);
    for (uint32_t i = 0; i < 10000; i++) {
        spool_rec_t m = { .type = SPOOL_MSG, .id = { i / 7, i % 7 }, .size = 64 };
        m.msg.nrcpt = 1;
        assert_true(spoolq_add(&q, 0, &m));
    }
    assert_int_equal(q.pending, 10000);
    for (uint32_t i = 0; i < 10000; i += 2) {
        spool_rec_t d = { .type = SPOOL_DONE, .id = { i / 7, i % 7 } };
        assert_true(spoolq_add(&q, 0, &d));
    }
    assert_int_equal(q.pending, 5000);
    assert_int_equal(q.pending_octets, 5000 * 64);
    assert_false(spoolq_find(&q, (spool_id_t){ 1 / 7, 1 % 7 })->done);
    spoolq_free(&q);
    free(s.p);
}

/* 8. a record made anywhere and sealed at its place (spool_reseal, as the
 * worker's batches do) reads back, alone (spool_record_parse) and in its
 * segment; at any other offset or under another nonce it is no record. */
static void test_reseal_and_parse_alone(void **state)
{
    (void)state;
    uint64_t offs[NREC];
    seg_t s = sample(offs);
    /* the first message again, made at offset 0 of nothing, sealed at the end */
    size_t size = offs[1] - offs[0];
    char *rec = malloc(size);
    assert_non_null(rec);
    memcpy(rec, s.p + offs[0], size);
    uint64_t at = s.len;
    spool_reseal(rec, NONCE, at);
    seg_reserve(&s, size);
    memcpy(s.p + at, rec, size);
    s.len += size;
    spool_rec_t r;
    assert_true(spool_record_parse(s.p + at, size, NONCE, at, &r));
    assert_int_equal(r.type, SPOOL_MSG);
    assert_int_equal(r.size, size);
    assert_true(slice_eq(r.msg.sender, S("alice@example.org")));
    assert_int_equal(r.msg.body.len, sizeof BODY1 - 1);
    assert_memory_equal(r.msg.body.ptr, BODY1, sizeof BODY1 - 1);
    /* where it was first written it checks out too; moved, it does not */
    assert_true(spool_record_parse(s.p + offs[0], size, NONCE, offs[0], &r));
    assert_false(spool_record_parse(s.p + at, size, NONCE, offs[0], &r));
    assert_false(spool_record_parse(s.p + at, size, NONCE + 1, at, &r));
    assert_false(spool_record_parse(s.p + at, size - 9, NONCE, at, &r)); /* cut into the payload */
    /* the scanner reads the segment with the resealed record at its end */
    spool_scanner_t sc;
    assert_true(spool_scan_init(&sc, s.p, s.len));
    uint64_t where, skipped;
    int n = 0;
    enum spool_scan st;
    while ((st = spool_scan_next(&sc, &r, &where, &skipped)) == SPOOL_OK)
        n++;
    assert_int_equal(st, SPOOL_END);
    assert_int_equal(n, NREC + 1);
    assert_int_equal(r.offset, at);
    /* a small record sealed elsewhere */
    char small[SPOOL_SMALL_MAX];
    size_t k = spool_put_done(small, 0, 0, (spool_id_t){ 9, 9 });
    spool_reseal(small, NONCE, 4096);
    assert_true(spool_record_parse(small, k, NONCE, 4096, &r));
    assert_int_equal(r.type, SPOOL_DONE);
    assert_int_equal(r.id.session, 9);
    free(rec);
    free(s.p);
}

static void test_id_format_and_parse(void **state)
{
    (void)state;
    char b[28];
    spool_id_format((spool_id_t){ 0x8f3a2b1c4d5e6f70ull, 1 }, b);
    assert_string_equal(b, "8f3a2b1c4d5e6f70-1");
    spool_id_format((spool_id_t){ UINT64_MAX, UINT32_MAX }, b);
    assert_string_equal(b, "ffffffffffffffff-4294967295");
    spool_id_t id;
    assert_true(spool_id_parse("ffffffffffffffff-4294967295", &id));
    assert_true(id.session == UINT64_MAX && id.number == UINT32_MAX);
    assert_true(spool_id_parse("8F3A2B1C4D5E6F70-12", &id));
    assert_true(id.session == 0x8f3a2b1c4d5e6f70ull && id.number == 12);
    static const char *const bad[] = { "", "8f3a2b1c4d5e6f70", "8f3a2b1c4d5e6f70-", "8f3a2b1c4d5e6f7-1",
                                       "8f3a2b1c4d5e6f70x1", "8f3a2b1c4d5e6f70-4294967296", "8f3a2b1c4d5e6f70-1x",
                                       "g f3a2b1c4d5e6f70-1", "8f3a2b1c4d5e6f70--1", "8f3a2b1c4d5e6f70-99999999999" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (spool_id_parse(bad[i], &id))
            fail_msg("\"%s\" parsed", bad[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc_check_value),
        cmocka_unit_test(test_crc_layers_agree),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_torn_at_every_length),
        cmocka_unit_test(test_damage_costs_one_record),
        cmocka_unit_test(test_record_in_a_body_is_never_taken),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_segment_header),
        cmocka_unit_test(test_queue_from_records),
        cmocka_unit_test(test_id_format_and_parse),
        cmocka_unit_test(test_reseal_and_parse_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_proxy.c - proxy.h: the PROXY protocol header, versions 1 and 2.
 *
 * Tables of valid and invalid headers: v1 TCP4, TCP6 (every textual form
 * inet_pton takes), UNKNOWN short and long, the 107-octet limit at its edge;
 * v2 PROXY over IPv4, IPv6, UNSPEC and AF_UNIX, LOCAL with any family, TLVs
 * of several sizes up to the largest block PROXY_V2_MAX allows; and every
 * error, with the offset of the byte it must be found at. Each sample is fed
 * whole, byte by byte, cut at every position (and every pair of positions
 * when short), each piece in a guarded buffer unmapped once fed; and again
 * with SMTP bytes after the header, which must be left alone: the printed
 * logs (result, header length, error and its offset) must all be the same.
 * Each is also run accepting only its own version, and only the other one.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy.h"
#include "testutil.h"

/* accept modes for drive(): a version set, or a zeroed proxy_t */
#define BOTH (PROXY_V1 | PROXY_V2)
#define ZEROED 0x100u

static const char smtp_after[] = "EHLO client.example.org\r\nMAIL FROM:<a@example.org>\r\n";

/* ---- the driver: feeds pieces, prints a canonical log ---- */

static void log_result(tu_log_t *l, const proxy_result_t *r, size_t hdr)
{
    char t[256];
    if (r->local) {
        /* nothing of a header's addresses leaks into a local result */
        static const uint8_t zero[16];
        assert_int_equal(r->family, 0);
        assert_memory_equal(r->src, zero, 16);
        assert_memory_equal(r->dst, zero, 16);
        assert_int_equal(r->src_port, 0);
        assert_int_equal(r->dst_port, 0);
        snprintf(t, sizeof t, "DONE v%u local hdr=%zu\n", r->version, hdr);
    } else {
        char s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN];
        assert_true(r->family == AF_INET || r->family == AF_INET6);
        assert_non_null(inet_ntop(r->family, r->src, s, sizeof s));
        assert_non_null(inet_ntop(r->family, r->dst, d, sizeof d));
        if (r->family == AF_INET) {
            static const uint8_t zero[12];
            assert_memory_equal(r->src + 4, zero, 12);
            assert_memory_equal(r->dst + 4, zero, 12);
        }
        snprintf(t, sizeof t, "DONE v%u %s %s %u %s %u hdr=%zu\n", r->version,
                 r->family == AF_INET ? "inet" : "inet6", s, r->src_port, d, r->dst_port, hdr);
    }
    assert_true(r->version == 1 || r->version == 2);
    tu_puts(l, t);
}

static void assert_result_equal(const proxy_result_t *a, const proxy_result_t *b)
{
    assert_int_equal(a->version, b->version);
    assert_int_equal(a->local, b->local);
    assert_int_equal(a->family, b->family);
    assert_memory_equal(a->src, b->src, 16);
    assert_memory_equal(a->dst, b->dst, 16);
    assert_int_equal(a->src_port, b->src_port);
    assert_int_equal(a->dst_port, b->dst_port);
}

static void start(proxy_t *p, unsigned accept)
{
    if (accept == ZEROED) {
        memset(p, 0, sizeof *p);
        return;
    }
    memset(p, 0x77, sizeof *p); /* proxy_init must not depend on what was there */
    proxy_init(p, accept);
}

/*
 * Feed `in` cut at the sorted split points; returns the log: "DONE ..." with
 * the header's length, "ERROR name at=offset", or "AGAIN taken=n". Checks
 * the feed contract on every call.
 */
static tu_log_t drive(const char *in, size_t len, unsigned accept, const size_t *splits, size_t nsplits)
{
    tu_log_t log = { 0 };
    proxy_t p;
    start(&p, accept);
    size_t prev = 0, taken = 0;
    int ended = 0;
    proxy_result_t poison;
    memset(&poison, 0x5a, sizeof poison);
    for (size_t i = 0; i <= nsplits && !ended; i++) {
        size_t end = i < nsplits ? splits[i] : len;
        assert_true(end >= prev && end <= len);
        size_t n = end - prev;
        guard_buf_t g;
        guard_copy(&g, in + prev, n);
        proxy_result_t r, r2;
        memcpy(&r, &poison, sizeof r);
        memcpy(&r2, &poison, sizeof r2);
        size_t used = (size_t)-1, used2 = (size_t)-1;
        {
            enum proxy_status st = proxy_feed(&p, g.data, n, &used, &r);
            switch (st) {
            case PROXY_AGAIN:
                assert_int_equal(used, n);
                assert_memory_equal(&r, &poison, sizeof r); /* *out only on DONE */
                assert_int_equal(proxy_error(&p), PROXY_ERR_NONE);
                taken += used;
                assert_int_equal(proxy_offset(&p), taken);
                break;
            case PROXY_DONE:
                assert_true(used > 0 && used <= n);
                assert_int_equal(proxy_error(&p), PROXY_ERR_NONE);
                taken += used;
                assert_int_equal(proxy_offset(&p), taken);
                log_result(&log, &r, taken);
                /* DONE again, taking nothing, with the same result */
                assert_int_equal(proxy_feed(&p, g.data + used, n - used, &used2, &r2), PROXY_DONE);
                assert_int_equal(used2, 0);
                assert_result_equal(&r, &r2);
                ended = 1;
                break;
            case PROXY_ERROR: {
                assert_int_equal(used, 0);
                assert_memory_equal(&r, &poison, sizeof r);
                proxy_err_t e = proxy_error(&p);
                assert_int_not_equal(e, PROXY_ERR_NONE);
                /* found at a byte of this very piece: never later than needed */
                size_t at = proxy_offset(&p);
                assert_true(at >= taken && at < taken + n);
                char t[96];
                snprintf(t, sizeof t, "ERROR %s at=%zu\n", proxy_err_name(e), at);
                tu_puts(&log, t);
                /* sticky */
                assert_int_equal(proxy_feed(&p, "PROXY UNKNOWN\r\n", 15, &used2, &r2), PROXY_ERROR);
                assert_int_equal(used2, 0);
                assert_int_equal(proxy_error(&p), e);
                assert_int_equal(proxy_offset(&p), at);
                ended = 1;
                break;
            }
            default:
                fail_msg("status %d", (int)st);
            }
        }
        guard_free(&g);
        prev = end;
    }
    if (!ended) {
        char t[64];
        snprintf(t, sizeof t, "AGAIN taken=%zu\n", taken);
        tu_puts(&log, t);
        /* nothing in, nothing taken; NULL is fine with 0 */
        proxy_result_t r;
        size_t used = 1;
        assert_int_equal(proxy_feed(&p, NULL, 0, &used, &r), PROXY_AGAIN);
        assert_int_equal(used, 0);
    }
    if (!log.buf)
        tu_puts(&log, "");
    return log;
}

static void assert_log(const tu_log_t *got, const char *want, const char *what, const char *in, size_t len)
{
    if (strcmp(got->buf, want) != 0) {
        tu_log_t esc = { 0 };
        tu_put_escaped(&esc, slice_make(in, len < 200 ? len : 200));
        fail_msg("%s: input \"%s\"%s\ngot  %swant %s", what, esc.buf ? esc.buf : "", len > 200 ? "..." : "",
                 got->buf, want);
    }
}

/* `in` fed whole, byte by byte, at every cut and (when short) every pair of
 * cuts must give `want`. */
static void check_splits(const char *in, size_t len, unsigned accept, const char *want)
{
    tu_log_t whole = drive(in, len, accept, NULL, 0);
    assert_log(&whole, want, "whole", in, len);
    tu_free_log(&whole);

    size_t *cuts = malloc((len ? len : 1) * sizeof *cuts);
    assert_non_null(cuts);
    for (size_t i = 1; i < len; i++)
        cuts[i - 1] = i;
    tu_log_t bytes = drive(in, len, accept, cuts, len ? len - 1 : 0);
    assert_log(&bytes, want, "byte by byte", in, len);
    tu_free_log(&bytes);
    free(cuts);

    for (size_t i = 0; i <= len; i++) {
        size_t one[1] = { i };
        tu_log_t l = drive(in, len, accept, one, 1);
        if (strcmp(l.buf, want) != 0) {
            char what[64];
            snprintf(what, sizeof what, "cut at %zu", i);
            assert_log(&l, want, what, in, len);
        }
        tu_free_log(&l);
    }
    if (len <= 80) {
        for (size_t i = 1; i < len; i++) {
            for (size_t j = i; j < len; j++) {
                size_t two[2] = { i, j };
                tu_log_t l = drive(in, len, accept, two, 2);
                if (strcmp(l.buf, want) != 0) {
                    char what[64];
                    snprintf(what, sizeof what, "cuts at %zu,%zu", i, j);
                    assert_log(&l, want, what, in, len);
                }
                tu_free_log(&l);
            }
        }
    }
}

static unsigned checked; /* samples run through check() */
static uint32_t errors_seen; /* bit per proxy_err_t a sample expected */

/*
 * The whole check of one sample: alone and followed by SMTP bytes (unless it
 * is an unfinished header, whose verdict the SMTP bytes would decide), with
 * both versions accepted, with its own only (the same log), a zeroed
 * proxy_t, and with the other version only (refused at its first byte).
 */
static void check(const char *in, size_t len, const char *want)
{
    checked++;
    check_splits(in, len, BOTH, want);
    if (strncmp(want, "AGAIN", 5) != 0) {
        char *buf = malloc(len + sizeof smtp_after);
        assert_non_null(buf);
        memcpy(buf, in, len);
        memcpy(buf + len, smtp_after, sizeof smtp_after - 1);
        check_splits(buf, len + sizeof smtp_after - 1, BOTH, want);
        tu_log_t l = drive(buf, len + sizeof smtp_after - 1, ZEROED, NULL, 0);
        assert_log(&l, want, "zeroed, with SMTP after", in, len);
        tu_free_log(&l);
        free(buf);
    }
    if (strncmp(want, "ERROR ", 6) == 0) {
        for (unsigned e = 1; e < 32; e++) {
            const char *n = proxy_err_name((proxy_err_t)e);
            size_t nl = strlen(n);
            if (strncmp(want + 6, n, nl) == 0 && want[6 + nl] == ' ')
                errors_seen |= 1u << e;
        }
    }
    if (len == 0 || (in[0] != 'P' && in[0] != '\r'))
        return;
    unsigned own = in[0] == 'P' ? PROXY_V1 : PROXY_V2;
    tu_log_t l = drive(in, len, own, NULL, 0);
    assert_log(&l, want, "own version only", in, len);
    tu_free_log(&l);
    l = drive(in, len, BOTH & ~own, NULL, 0);
    assert_log(&l, "ERROR not_proxy at=0\n", "other version only", in, len);
    tu_free_log(&l);
}

#define SAMPLE(lit, want) check((lit), sizeof(lit) - 1, (want))

/* A complete header: the log says DONE with `what` and the sample's length. */
static void check_done(const char *in, size_t len, const char *what)
{
    char want[256];
    snprintf(want, sizeof want, "DONE %s hdr=%zu\n", what, len);
    check(in, len, want);
}

#define DONE(lit, what) check_done((lit), sizeof(lit) - 1, (what))

static void check_err(const char *in, size_t len, const char *name, size_t at)
{
    char want[128];
    snprintf(want, sizeof want, "ERROR %s at=%zu\n", name, at);
    check(in, len, want);
}

#define ERR(lit, name, at) check_err((lit), sizeof(lit) - 1, (name), (at))

/* The offset of the first `mark` in a literal: where an error must be found. */
static size_t at_char(const char *s, char mark)
{
    const char *p = strchr(s, mark);
    assert_non_null(p);
    return (size_t)(p - s);
}

/* ---- v2 headers, built ---- */

#define SIG "\r\n\r\n\0\r\nQUIT\n"

typedef struct v2buf {
    char b[16 + 65536 + 64];
    size_t n;
} v2buf_t;

/* signature, version/command, family, the length (network order) */
static v2buf_t *v2_start(unsigned ver_cmd, unsigned fam, unsigned declared)
{
    v2buf_t *v = calloc(1, sizeof *v);
    assert_non_null(v);
    memcpy(v->b, SIG, 12);
    v->b[12] = (char)ver_cmd;
    v->b[13] = (char)fam;
    v->b[14] = (char)(declared >> 8);
    v->b[15] = (char)(declared & 0xff);
    v->n = 16;
    return v;
}

static void v2_put(v2buf_t *v, const void *p, size_t n)
{
    assert_true(v->n + n <= sizeof v->b);
    memcpy(v->b + v->n, p, n);
    v->n += n;
}

static void v2_fill(v2buf_t *v, int c, size_t n)
{
    assert_true(v->n + n <= sizeof v->b);
    memset(v->b + v->n, c, n);
    v->n += n;
}

static void v2_tlv(v2buf_t *v, unsigned type, const void *val, size_t n)
{
    unsigned char h[3] = { (unsigned char)type, (unsigned char)(n >> 8), (unsigned char)(n & 0xff) };
    v2_put(v, h, 3);
    if (val)
        v2_put(v, val, n);
    else
        v2_fill(v, 'v', n);
}

/* 192.0.2.1:56260 -> 198.51.100.7:25 */
static const unsigned char inet_block[12] = { 192, 0, 2, 1, 198, 51, 100, 7, 0xdb, 0xc4, 0, 25 };
#define INET_WHAT "v2 inet 192.0.2.1 56260 198.51.100.7 25"
/* [2001:db8::1]:40000 -> [2001:db8::25]:587 */
static const unsigned char inet6_block[36] = {
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x25,
    0x9c, 0x40, 0x02, 0x4b,
};
#define INET6_WHAT "v2 inet6 2001:db8::1 40000 2001:db8::25 587"

static void v2_check_done(v2buf_t *v, const char *what)
{
    check_done(v->b, v->n, what);
    free(v);
}

static void v2_check_err(v2buf_t *v, const char *name, size_t at)
{
    check_err(v->b, v->n, name, at);
    free(v);
}

/* ---- tests ---- */

static void test_v1_valid(void **state)
{
    (void)state;
    DONE("PROXY TCP4 192.0.2.1 198.51.100.7 56324 25\r\n", "v1 inet 192.0.2.1 56324 198.51.100.7 25");
    DONE("PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n", "v1 inet 0.0.0.0 0 255.255.255.255 65535");
    DONE("PROXY TCP4 10.0.0.10 100.64.0.1 1 10\r\n", "v1 inet 10.0.0.10 1 100.64.0.1 10");
    /* the spec's longest TCP4 line, 56 octets */
    DONE("PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
         "v1 inet 255.255.255.255 65535 255.255.255.255 65535");

    DONE("PROXY TCP6 2001:db8::1 2001:db8::25 40000 25\r\n", "v1 inet6 2001:db8::1 40000 2001:db8::25 25");
    DONE("PROXY TCP6 ::1 ::1 1 2\r\n", "v1 inet6 ::1 1 ::1 2");
    DONE("PROXY TCP6 :: :: 0 0\r\n", "v1 inet6 :: 0 :: 0");
    /* upper case, leading zeros in groups, every group written out */
    DONE("PROXY TCP6 2001:DB8:0:0:0:0:0:1 2001:0db8:0000:0000:0000:0000:0000:0025 7 8\r\n",
         "v1 inet6 2001:db8::1 7 2001:db8::25 8");
    DONE("PROXY TCP6 ::ffff:192.0.2.1 ::ffff:198.51.100.7 5 6\r\n", "v1 inet6 ::ffff:192.0.2.1 5 ::ffff:198.51.100.7 6");
    /* the spec's longest TCP6 line, 104 octets */
    DONE("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
         "v1 inet6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535");
    /* the longest IPv6 text, 45 characters */
    DONE("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 ::1 1 2\r\n",
         "v1 inet6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 1 ::1 2");

    DONE("PROXY UNKNOWN\r\n", "v1 local");
    DONE("PROXY UNKNOWN \r\n", "v1 local");
    DONE("PROXY UNKNOWN 192.0.2.1 198.51.100.7 56324 25\r\n", "v1 local");
    DONE("PROXY UNKNOWN anything  at all ~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./\r\n", "v1 local");
    /* the spec's worst case: 107 octets */
    DONE("PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 "
         "65535\r\n",
         "v1 local");
}

static void test_v1_invalid(void **state)
{
    (void)state;
    /* not a header: the first byte that differs */
    ERR("EHLO client.example.org\r\n", "not_proxy", 0);
    ERR("HELO x\r\n", "not_proxy", 0);
    ERR("\x16\x03\x01\x00\xa5\x01", "not_proxy", 0); /* a TLS ClientHello */
    ERR("PROXX TCP4", "not_proxy", 4);
    ERR("PRO\r\n", "not_proxy", 3);
    ERR("proxy TCP4", "not_proxy", 0);
    ERR("POST / HTTP/1.1\r\n", "not_proxy", 1);
    SAMPLE("PROXY", "AGAIN taken=5\n");
    SAMPLE("P", "AGAIN taken=1\n");
    SAMPLE("PROXY TCP4 192.0.2", "AGAIN taken=18\n");

    /* the protocol token */
    ERR("PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n", "bad_v1_syntax", 5);
    ERR("PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "bad_v1_syntax", 6);
    ERR("PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "bad_v1_syntax", 9);
    ERR("PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "bad_v1_syntax", 6);
    ERR("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "bad_v1_syntax", 7); /* "U" could start UNKNOWN */
    ERR("PROXY TCP 1.2.3.4 5.6.7.8 1 2\r\n", "bad_v1_syntax", 9);
    ERR("PROXY TCP4\r\n", "bad_v1_syntax", 10);
    ERR("PROXY TCP4 \r\n", "bad_v1_syntax", 11);
    ERR("PROXY \r\n", "bad_v1_syntax", 6);
    ERR("PROXY UNKNOWNX\r\n", "bad_v1_syntax", 13);
    ERR("PROXY UNKNOW\r\n", "bad_v1_syntax", 12);
    ERR("PROXY UNKNOWN\n", "bad_v1_syntax", 13);
    ERR("PROXY UNKNOWN\r\r\n", "bad_v1_syntax", 14);
    ERR("PROXY UNKNOWN\rx", "bad_v1_syntax", 14);

    /* control and 8-bit bytes, anywhere, even in UNKNOWN's ignored tail */
    ERR("PROXY UNKNOWN a\0b\r\n", "bad_v1_syntax", 15);
    ERR("PROXY UNKNOWN a\tb\r\n", "bad_v1_syntax", 15);
    ERR("PROXY UNKNOWN a\x7f\r\n", "bad_v1_syntax", 15);
    ERR("PROXY UNKNOWN \xc3\xa9\r\n", "bad_v1_syntax", 14);
    ERR("PROXY UNKNOWN a\nb\r\n", "bad_v1_syntax", 15);
    ERR("PROXY TCP4 1.2.3.4\0 5.6.7.8 1 2\r\n", "bad_v1_syntax", 18);
    ERR("PROXY TCP4 1.2.3.4 5.6.7.8 1\t2\r\n", "bad_v1_syntax", 28);

    /* fields missing, empty, or one too many */
    ERR("PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "bad_v1_syntax", 19);
    ERR("PROXY TCP4 1.2.3.4 5.6.7.8\r\n", "bad_v1_syntax", 26);
    ERR("PROXY TCP4 1.2.3.4\r\n", "bad_v1_syntax", 18);
    ERR("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "bad_v1_syntax", 28);
    ERR("PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n", "bad_v1_syntax", 29);
    ERR("PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n", "bad_v1_syntax", 29);
    ERR("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "bad_v1_syntax", 30);
    ERR("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "bad_v1_syntax", 30);
    /* the line's end: CRLF, nothing else */
    ERR("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bad_v1_syntax", 30);
    ERR("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", "bad_v1_syntax", 31);
    ERR("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rEHLO", "bad_v1_syntax", 31);
    SAMPLE("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r", "AGAIN taken=31\n");

    /* IPv4 addresses */
    ERR("PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "bad_address", 12);
    ERR("PROXY TCP4 1.2.3.00 5.6.7.8 1 2\r\n", "bad_address", 18);
    ERR("PROXY TCP4 1.2.3.4 5.6.7.08 1 2\r\n", "bad_address", 26);
    ERR("PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "bad_address", 19);
    ERR("PROXY TCP4 1.2.3.1000 5.6.7.8 1 2\r\n", "bad_address", 20);
    ERR("PROXY TCP4 1.999.3.4 5.6.7.8 1 2\r\n", "bad_address", 15);
    ERR("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "bad_address", 16);
    ERR("PROXY TCP4 1.2.3. 5.6.7.8 1 2\r\n", "bad_address", 17);
    ERR("PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", "bad_address", 18);
    ERR("PROXY TCP4 1..2.3 5.6.7.8 1 2\r\n", "bad_address", 13);
    ERR("PROXY TCP4 .1.2.3 5.6.7.8 1 2\r\n", "bad_address", 11);
    ERR("PROXY TCP4 1.2.3.4 5.6.7.8. 1 2\r\n", "bad_address", 26);
    ERR("PROXY TCP4 1.2.3.x 5.6.7.8 1 2\r\n", "bad_address", 17);
    ERR("PROXY TCP4 1.2.3.-4 5.6.7.8 1 2\r\n", "bad_address", 17);
    ERR("PROXY TCP4 2001:db8::1 ::1 1 2\r\n", "bad_address", 14); /* 2001 > 255 */
    ERR("PROXY TCP4 1.2.3.4 ::1 1 2\r\n", "bad_address", 19);
    ERR("PROXY TCP4 0x1.2.3.4 5.6.7.8 1 2\r\n", "bad_address", 12);

    /* IPv6 addresses: the alphabet at once, the rest at the space */
    ERR("PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "bad_address", 18);
    ERR("PROXY TCP6 ::: ::1 1 2\r\n", "bad_address", 14);
    ERR("PROXY TCP6 1::2::3 ::1 1 2\r\n", "bad_address", 18);
    ERR("PROXY TCP6 12345:: ::1 1 2\r\n", "bad_address", 18);
    ERR("PROXY TCP6 1:2:3:4:5:6:7 ::1 1 2\r\n", "bad_address", 24);
    ERR("PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", "bad_address", 28);
    ERR("PROXY TCP6 ::1 2001:db8::g 1 2\r\n", "bad_address", 25);
    ERR("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "bad_address", 18);
    ERR("PROXY TCP6 [::1] ::1 1 2\r\n", "bad_address", 11);
    ERR("PROXY TCP6 ::ffff:1.2.3.04 ::1 1 2\r\n", "bad_address", 26);
    /* 46 characters: longer than any IPv6 text, refused at the 46th */
    ERR("PROXY TCP6 0000:0000:0000:0000:0000:0000:0000:0000:0000:0 ::1 1 2\r\n", "bad_address", 56);

    /* ports */
    ERR("PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "bad_port", 28);
    ERR("PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n", "bad_port", 30);
    ERR("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "bad_port", 31);
    ERR("PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", "bad_port", 33);
    ERR("PROXY TCP4 1.2.3.4 5.6.7.8 1 6553a\r\n", "bad_port", 33);
    ERR("PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "bad_port", 27);
    ERR("PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "bad_port", 27);
    ERR("PROXY TCP4 1.2.3.4 5.6.7.8 1 0x19\r\n", "bad_port", 30);
    ERR("PROXY TCP4 1.2.3.4 5.6.7.8 1 1000000\r\n", "bad_port", 34);
    ERR("PROXY TCP6 ::1 ::1 80 25x\r\n", "bad_port", 24);

    /* the offsets above are counted by hand; a few by the marker, to be sure */
    const char mark[] = "PROXY TCP4 1.2.3.4 5.6.7.8 1 2#\r\n";
    ERR(mark, "bad_port", at_char(mark, '#'));
}

static void test_v1_length(void **state)
{
    (void)state;
    /* UNKNOWN lines of 105 to 110 octets: the CR is due by offset 105 */
    for (size_t n = 100; n <= 110; n++) {
        char line[128];
        memset(line, 'x', sizeof line);
        memcpy(line, "PROXY UNKNOWN ", 14);
        line[n - 2] = '\r';
        line[n - 1] = '\n';
        char want[64];
        if (n <= PROXY_V1_MAX)
            snprintf(want, sizeof want, "DONE v1 local hdr=%zu\n", n);
        else
            snprintf(want, sizeof want, "ERROR v1_too_long at=%d\n", PROXY_V1_MAX - 2);
        check(line, n, want);
    }
    /* a stream with no line end at all: refused at offset 105, not later */
    char big[300];
    memset(big, 'y', sizeof big);
    memcpy(big, "PROXY UNKNOWN ", 14);
    check(big, sizeof big, "ERROR v1_too_long at=105\n");
    check(big, 105, "AGAIN taken=105\n");
    /* a LF at 106 after a byte that is not CR is a bare LF, but the line was
     * already too long at 105 */
    big[106] = '\n';
    check(big, 107, "ERROR v1_too_long at=105\n");
    /* a CR at 105, then not LF */
    big[105] = '\r';
    big[106] = 'z';
    check(big, 107, "ERROR bad_v1_syntax at=106\n");

    /* TCP6 with two 45-character addresses cannot fit: it is refused where
     * the line passes offset 105 (the destination port) */
    ERR("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 1 "
        "2\r\n",
        "v1_too_long", 105);
    /* and at 105 with anything legal but the CR, whatever the field */
    ERR("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 "
        "12345 2\r\n",
        "v1_too_long", 105);
    /* a field error at 105 is named as such */
    ERR("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 "
        "12x45 2\r\n",
        "bad_port", 105);
}

static void test_v2_valid(void **state)
{
    (void)state;
    v2buf_t *v;

    /* PROXY, TCP over IPv4 and IPv6, no TLV */
    v = v2_start(0x21, 0x11, 12);
    v2_put(v, inet_block, 12);
    v2_check_done(v, INET_WHAT);
    v = v2_start(0x21, 0x21, 36);
    v2_put(v, inet6_block, 36);
    v2_check_done(v, INET6_WHAT);
    /* extreme values */
    v = v2_start(0x21, 0x11, 12);
    v2_fill(v, 0xff, 12);
    v2_check_done(v, "v2 inet 255.255.255.255 65535 255.255.255.255 65535");
    v = v2_start(0x21, 0x21, 36);
    v2_fill(v, 0, 36);
    v2_check_done(v, "v2 inet6 :: 0 :: 0");

    /* PROXY with a family that carries no IP address: local */
    v = v2_start(0x21, 0x00, 0);
    v2_check_done(v, "v2 local");
    v = v2_start(0x21, 0x00, 12);
    v2_put(v, inet_block, 12); /* UNSPEC: whatever it holds is ignored */
    v2_check_done(v, "v2 local");
    v = v2_start(0x21, 0x00, 5);
    v2_put(v, "\x01\xff\x00\x00\x09", 5); /* not even TLV-shaped: not read */
    v2_check_done(v, "v2 local");
    v = v2_start(0x21, 0x31, 216);
    v2_fill(v, '/', 216);
    v2_check_done(v, "v2 local");
    v = v2_start(0x21, 0x31, 216 + 3 + 4);
    v2_fill(v, 0, 216);
    v2_tlv(v, 0x02, "mx.x", 4);
    v2_check_done(v, "v2 local");

    /* LOCAL: the balancer's health check; the family and block are ignored */
    v = v2_start(0x20, 0x00, 0);
    v2_check_done(v, "v2 local");
    v = v2_start(0x20, 0x11, 12);
    v2_put(v, inet_block, 12);
    v2_check_done(v, "v2 local");
    v = v2_start(0x20, 0x12, 3);
    v2_put(v, "abc", 3);
    v2_check_done(v, "v2 local");
    v = v2_start(0x20, 0xff, 0);
    v2_check_done(v, "v2 local");
    v = v2_start(0x20, 0x21, 2); /* shorter than IPv6's block: not read */
    v2_put(v, "\x00\x01", 2);
    v2_check_done(v, "v2 local");
    v = v2_start(0x20, 0x11, PROXY_V2_MAX);
    v2_fill(v, 0xee, PROXY_V2_MAX);
    v2_check_done(v, "v2 local");

    /* TLVs: small, several, empty, the unique id's 128, the SSL summary */
    v = v2_start(0x21, 0x11, 12 + 3 + 4);
    v2_put(v, inet_block, 12);
    v2_tlv(v, 0x01, "smtp", 4);
    v2_check_done(v, INET_WHAT);
    v = v2_start(0x21, 0x11, 12 + 3);
    v2_put(v, inet_block, 12);
    v2_tlv(v, 0x04, NULL, 0);
    v2_check_done(v, INET_WHAT);
    {
        static const char ssl[] = "\x01\x00\x00\x00\x00"            /* client SSL, verified */
                                  "\x21\x00\x07TLSv1.3"             /* version */
                                  "\x23\x00\x16TLS_AES_256_GCM_SHA384"; /* cipher */
        v = v2_start(0x21, 0x21, 36 + (3 + 14) + (3 + 128) + 3 + (3 + sizeof ssl - 1) + (3 + 1));
        v2_put(v, inet6_block, 36);
        v2_tlv(v, 0x02, "mx.example.net", 14);
        v2_tlv(v, 0x05, NULL, 128);
        v2_tlv(v, 0x04, NULL, 0);
        v2_tlv(v, 0x20, ssl, sizeof ssl - 1);
        v2_tlv(v, 0xe0, "!", 1);
        v2_check_done(v, INET6_WHAT);
    }
    /* the largest block: one TLV filling it, and 1 352 TLVs filling it */
    v = v2_start(0x21, 0x11, PROXY_V2_MAX);
    v2_put(v, inet_block, 12);
    v2_tlv(v, 0x04, NULL, PROXY_V2_MAX - 12 - 3);
    assert_int_equal(v->n, 16 + PROXY_V2_MAX);
    v2_check_done(v, INET_WHAT);
    v = v2_start(0x21, 0x21, PROXY_V2_MAX);
    v2_put(v, inet6_block, 36);
    for (int k = 0; k < 1351; k++)
        v2_tlv(v, 0x04, NULL, 0);
    v2_tlv(v, 0x04, "pad!", 4);
    assert_int_equal(v->n, 16 + PROXY_V2_MAX);
    v2_check_done(v, INET6_WHAT);
    /* a TLV value of 256 and more: its length's high octet matters */
    v = v2_start(0x21, 0x11, 12 + 3 + 300 + 3 + 2);
    v2_put(v, inet_block, 12);
    v2_tlv(v, 0x30, NULL, 300);
    v2_tlv(v, 0x01, "h2", 2);
    v2_check_done(v, INET_WHAT);
}

static void test_v2_invalid(void **state)
{
    (void)state;
    v2buf_t *v;

    /* the signature, byte by byte */
    for (size_t k = 1; k < 12; k++) {
        v = v2_start(0x21, 0x11, 12);
        v2_put(v, inet_block, 12);
        v->b[k] ^= 0x20;
        v2_check_err(v, "not_proxy", k);
    }
    SAMPLE("\r\n", "AGAIN taken=2\n");
    ERR("\r\nEHLO x\r\n", "not_proxy", 2);   /* an empty line, then SMTP */
    ERR("\r\n\r\n\0\r\nQUIX", "not_proxy", 10);
    ERR("\n", "not_proxy", 0);
    SAMPLE(SIG "\x21\x11\x00", "AGAIN taken=15\n");

    /* version and command */
    static const struct {
        unsigned vc;
        const char *err;
    } vcs[] = {
        { 0x11, "bad_v2_version" }, { 0x01, "bad_v2_version" }, { 0x31, "bad_v2_version" },
        { 0xf1, "bad_v2_version" }, { 0x22, "bad_v2_command" }, { 0x2f, "bad_v2_command" },
    };
    for (size_t k = 0; k < sizeof vcs / sizeof vcs[0]; k++) {
        v = v2_start(vcs[k].vc, 0x11, 12);
        v2_put(v, inet_block, 12);
        v2_check_err(v, vcs[k].err, 12);
    }

    /* family and protocol, with PROXY */
    static const unsigned fams[] = { 0x12, 0x22, 0x32, 0x01, 0x02, 0x10, 0x20, 0x30, 0x13, 0x41, 0x40, 0xff };
    for (size_t k = 0; k < sizeof fams / sizeof fams[0]; k++) {
        v = v2_start(0x21, fams[k], 12);
        v2_put(v, inet_block, 12);
        v2_check_err(v, "unsupported_family", 13);
    }

    /* the length: over the maximum (found at its high octet when that is
     * enough), or shorter than the family's addresses */
    v = v2_start(0x21, 0x11, PROXY_V2_MAX + 1);
    v2_check_err(v, "v2_oversized", 15);
    v = v2_start(0x20, 0x00, PROXY_V2_MAX + 1); /* LOCAL too */
    v2_check_err(v, "v2_oversized", 15);
    v = v2_start(0x21, 0x11, PROXY_V2_MAX + 256);
    v2_check_err(v, "v2_oversized", 14);
    v = v2_start(0x21, 0x11, 0xffff);
    v2_check_err(v, "v2_oversized", 14);
    v = v2_start(0x21, 0x11, 0);
    v2_check_err(v, "v2_too_short", 15);
    v = v2_start(0x21, 0x11, 11);
    v2_put(v, inet_block, 11);
    v2_check_err(v, "v2_too_short", 15);
    v = v2_start(0x21, 0x21, 35);
    v2_put(v, inet6_block, 35);
    v2_check_err(v, "v2_too_short", 15);
    v = v2_start(0x21, 0x21, 12); /* an IPv4 block under the IPv6 family */
    v2_put(v, inet_block, 12);
    v2_check_err(v, "v2_too_short", 15);
    v = v2_start(0x21, 0x31, 215);
    v2_check_err(v, "v2_too_short", 15);

    /* TLVs that run past the declared length */
    v = v2_start(0x21, 0x11, 12 + 2); /* a head cut short: found at its type */
    v2_put(v, inet_block, 12);
    v2_put(v, "\x04\x00", 2);
    v2_check_err(v, "bad_v2_tlv", 28);
    v = v2_start(0x21, 0x11, 12 + 1);
    v2_put(v, inet_block, 12);
    v2_put(v, "\x04", 1);
    v2_check_err(v, "bad_v2_tlv", 28);
    v = v2_start(0x21, 0x11, 12 + 3 + 4); /* a value of 5 where 4 are left */
    v2_put(v, inet_block, 12);
    v2_put(v, "\x01\x00\x05" "abcd", 7);
    v2_check_err(v, "bad_v2_tlv", 30);
    v = v2_start(0x21, 0x11, 12 + 3 + 10); /* 256 where 10 are left */
    v2_put(v, inet_block, 12);
    v2_put(v, "\x01\x01\x00", 3);
    v2_fill(v, 'x', 10);
    v2_check_err(v, "bad_v2_tlv", 30);
    v = v2_start(0x21, 0x21, 36 + 7 + 2); /* a good TLV, then a cut head */
    v2_put(v, inet6_block, 36);
    v2_tlv(v, 0x01, "smtp", 4);
    v2_put(v, "\x04\x00", 2);
    v2_check_err(v, "bad_v2_tlv", 59);
    v = v2_start(0x21, 0x11, PROXY_V2_MAX); /* one octet too many, at the end */
    v2_put(v, inet_block, 12);
    v2_tlv(v, 0x04, NULL, PROXY_V2_MAX - 12 - 3 + 1);
    v2_check_err(v, "bad_v2_tlv", 16 + 12 + 2);

    /* cut short: waiting, having taken everything */
    v = v2_start(0x21, 0x11, 12 + 7);
    v2_put(v, inet_block, 12);
    v2_put(v, "\x01\x00\x04" "sm", 5);
    check(v->b, v->n, "AGAIN taken=33\n");
    free(v);
}

static void test_accept(void **state)
{
    (void)state;
    static const char v1[] = "PROXY TCP4 192.0.2.1 198.51.100.7 56324 25\r\nEHLO x\r\n";
    v2buf_t *v = v2_start(0x21, 0x11, 12);
    v2_put(v, inet_block, 12);
    v2_put(v, "EHLO x\r\n", 8);
    static const struct {
        unsigned accept;
        const char *want1, *want2;
    } cases[] = {
        { PROXY_V1, "DONE v1 inet 192.0.2.1 56324 198.51.100.7 25 hdr=44\n", "ERROR not_proxy at=0\n" },
        { PROXY_V2, "ERROR not_proxy at=0\n", "DONE " INET_WHAT " hdr=28\n" },
        { BOTH, "DONE v1 inet 192.0.2.1 56324 198.51.100.7 25 hdr=44\n", "DONE " INET_WHAT " hdr=28\n" },
        { 0, "DONE v1 inet 192.0.2.1 56324 198.51.100.7 25 hdr=44\n", "DONE " INET_WHAT " hdr=28\n" },
        { ZEROED, "DONE v1 inet 192.0.2.1 56324 198.51.100.7 25 hdr=44\n", "DONE " INET_WHAT " hdr=28\n" },
        /* bits other than the two versions are ignored */
        { PROXY_V1 | 0x80, "DONE v1 inet 192.0.2.1 56324 198.51.100.7 25 hdr=44\n", "ERROR not_proxy at=0\n" },
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        check_splits(v1, sizeof v1 - 1, cases[k].accept, cases[k].want1);
        check_splits(v->b, v->n, cases[k].accept, cases[k].want2);
    }
    /* with both, anything but 'P' or CR is refused at once */
    for (unsigned c = 0; c < 256; c++) {
        if (c == 'P' || c == '\r')
            continue;
        char b[2] = { (char)c, 'x' };
        tu_log_t l = drive(b, 2, BOTH, NULL, 0);
        assert_log(&l, "ERROR not_proxy at=0\n", "first byte", b, 2);
        tu_free_log(&l);
    }
    free(v);
}

/* One call at a time: exact counts, the result's fields, the contract. */
static void test_contract(void **state)
{
    (void)state;
    proxy_t p;
    proxy_result_t r, r2;
    size_t used;

    /* a header and a pipelined command in one read: the command is left */
    static const char in[] = "PROXY TCP6 2001:db8::1 2001:db8::25 40000 25\r\nEHLO x\r\n";
    proxy_init(&p, PROXY_V1 | PROXY_V2);
    assert_int_equal(proxy_feed(&p, in, sizeof in - 1, &used, &r), PROXY_DONE);
    assert_int_equal(used, strlen("PROXY TCP6 2001:db8::1 2001:db8::25 40000 25\r\n"));
    assert_string_equal(in + used, "EHLO x\r\n");
    assert_int_equal(r.version, 1);
    assert_false(r.local);
    assert_int_equal(r.family, AF_INET6);
    static const uint8_t src6[16] = { 0x20, 0x01, 0x0d, 0xb8, [15] = 1 };
    static const uint8_t dst6[16] = { 0x20, 0x01, 0x0d, 0xb8, [15] = 0x25 };
    assert_memory_equal(r.src, src6, 16);
    assert_memory_equal(r.dst, dst6, 16);
    assert_int_equal(r.src_port, 40000);
    assert_int_equal(r.dst_port, 25);
    assert_int_equal(proxy_offset(&p), used);
    /* DONE again, nothing taken, the same result */
    assert_int_equal(proxy_feed(&p, in + used, sizeof in - 1 - used, &used, &r2), PROXY_DONE);
    assert_int_equal(used, 0);
    assert_result_equal(&r, &r2);

    /* v2 IPv4: addresses in network order, ports as numbers */
    v2buf_t *v = v2_start(0x21, 0x11, 12 + 7);
    v2_put(v, inet_block, 12);
    v2_tlv(v, 0x01, "smtp", 4);
    v2_put(v, "QUIT\r\n", 6);
    proxy_init(&p, PROXY_V2);
    assert_int_equal(proxy_feed(&p, v->b, 20, &used, &r), PROXY_AGAIN);
    assert_int_equal(used, 20);
    assert_int_equal(proxy_offset(&p), 20);
    assert_int_equal(proxy_feed(&p, v->b + 20, v->n - 20, &used, &r), PROXY_DONE);
    assert_int_equal(used, 35 - 20);
    assert_memory_equal(v->b + 35, "QUIT\r\n", 6);
    assert_int_equal(r.version, 2);
    assert_false(r.local);
    assert_int_equal(r.family, AF_INET);
    assert_memory_equal(r.src, inet_block, 4);
    assert_memory_equal(r.dst, inet_block + 4, 4);
    assert_int_equal(r.src_port, 56260);
    assert_int_equal(r.dst_port, 25);
    free(v);

    /* nothing in */
    proxy_init(&p, PROXY_V1);
    assert_int_equal(proxy_feed(&p, NULL, 0, &used, &r), PROXY_AGAIN);
    assert_int_equal(used, 0);
    assert_int_equal(proxy_offset(&p), 0);

    /* an error: nothing taken, the reason and its byte, and it sticks */
    proxy_init(&p, PROXY_V1 | PROXY_V2);
    assert_int_equal(proxy_feed(&p, "PROX", 4, &used, &r), PROXY_AGAIN);
    used = 99;
    assert_int_equal(proxy_feed(&p, "X TCP4", 6, &used, &r), PROXY_ERROR);
    assert_int_equal(used, 0);
    assert_int_equal(proxy_error(&p), PROXY_ERR_NOT_PROXY);
    assert_string_equal(proxy_err_name(proxy_error(&p)), "not_proxy");
    assert_int_equal(proxy_offset(&p), 4);
    assert_int_equal(proxy_feed(&p, "PROXY UNKNOWN\r\n", 15, &used, &r), PROXY_ERROR);
    assert_int_equal(used, 0);
    /* proxy_init starts afresh */
    proxy_init(&p, PROXY_V1);
    assert_int_equal(proxy_feed(&p, "PROXY UNKNOWN\r\n", 15, &used, &r), PROXY_DONE);
    assert_int_equal(used, 15);
    assert_true(r.local);
    assert_int_equal(r.version, 1);

    /* names: distinct, and "?" outside the enum */
    for (unsigned a = 0; a <= PROXY_ERR_V2_TLV; a++) {
        assert_string_not_equal(proxy_err_name((proxy_err_t)a), "?");
        for (unsigned b = 0; b < a; b++)
            assert_string_not_equal(proxy_err_name((proxy_err_t)a), proxy_err_name((proxy_err_t)b));
    }
    assert_string_equal(proxy_err_name((proxy_err_t)(PROXY_ERR_V2_TLV + 1)), "?");
    assert_string_equal(proxy_err_name((proxy_err_t)200), "?");

    /* small enough to live in every session while the header is read */
    assert_true(sizeof(proxy_t) <= 128);
}

/* Run last: every error was expected by some sample above. */
static void test_every_error(void **state)
{
    (void)state;
    tu_note("%u samples checked\n", checked);
    for (unsigned e = 1; e <= PROXY_ERR_V2_TLV; e++)
        if (!(errors_seen & (1u << e)))
            fail_msg("no sample expects %s", proxy_err_name((proxy_err_t)e));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v1_valid),  cmocka_unit_test(test_v1_invalid), cmocka_unit_test(test_v1_length),
        cmocka_unit_test(test_v2_valid),  cmocka_unit_test(test_v2_invalid), cmocka_unit_test(test_accept),
        cmocka_unit_test(test_contract),  cmocka_unit_test(test_every_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * fuzz_proxy.c - libFuzzer target over the PROXY protocol header parser
 * (proxy_feed), with fuzzer-chosen fragmentation and a reference parser.
 *
 * Input: a 1-byte header, 0-7 chunk-length bytes, then the connection's first
 * bytes (at most FUZZ_MAX_INPUT).
 *   h[0] bits 0-2: number of chunk-length bytes that follow (0: no splits)
 *   h[0] bits 3-4: the versions accepted: 0 a zeroed proxy_t (both), 1 v1,
 *                  2 v2, 3 both through proxy_init
 *   chunk-length bytes, cycled: below 0x80 give 1..16 octets, the others
 *   1..1017 (fuzzutil.h).
 * The seeds in corpus/fuzz_proxy/ are in this format (gen-corpus.py).
 *
 * Checks (__builtin_trap on failure):
 *  - the feed contract: consumed <= input; AGAIN only with all consumed and
 *    *out untouched; DONE consumes something, and again takes nothing with
 *    the same result; ERROR consumes nothing, has a reason, leaves *out
 *    untouched and sticks; proxy_offset() is the bytes taken (AGAIN), the
 *    header's length (DONE), the offending byte inside the call's input
 *    (ERROR);
 *  - on DONE the header is what the bytes say: v1 runs up to and including
 *    the first CRLF (at most 107 octets), v2 is 16 + its declared length;
 *    a local result carries no address; a v2 result's addresses and ports
 *    are the block's bytes; a v1 result's addresses round-trip through
 *    inet_ntop/inet_pton;
 *  - a reference parser, written for clarity over the whole input (strtok-
 *    like splitting, inet_pton for both families), agrees: DONE exactly when
 *    it finds a valid complete header, with the same length and result; v2
 *    AGAIN and ERROR exactly when it says incomplete and invalid; v1 AGAIN
 *    only when incomplete, ERROR only when invalid or incomplete (the parser
 *    refuses a hopeless prefix early);
 *  - an error is found at its byte: the input cut just before it is AGAIN,
 *    cut just after it the same error at the same offset;
 *  - differential fragmentation: the fuzzer's splits, and one byte at a time
 *    for short inputs, give the same printed log as the whole input. Each
 *    piece is its own heap block, freed once fed: ASan sees any read past it.
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzzutil.h"
#include "proxy.h"

#define FUZZ_MAX_INPUT 8192
#define FUZZ_MAX_SPLITS 512
#define FUZZ_BYTEWISE_MAX 512

typedef struct outcome {
    enum proxy_status st;
    proxy_err_t err;
    size_t off; /* AGAIN: taken; DONE: header length; ERROR: offending byte */
    proxy_result_t r;
} outcome_t;

static bool same_result(const proxy_result_t *a, const proxy_result_t *b)
{
    return a->version == b->version && a->local == b->local && a->family == b->family &&
           memcmp(a->src, b->src, 16) == 0 && memcmp(a->dst, b->dst, 16) == 0 && a->src_port == b->src_port &&
           a->dst_port == b->dst_port;
}

static void start(proxy_t *p, unsigned mode)
{
    if (mode == 0)
        memset(p, 0, sizeof *p);
    else
        proxy_init(p, mode);
}

static void log_outcome(tu_log_t *l, const outcome_t *o)
{
    char t[256];
    if (o->st == PROXY_ERROR) {
        snprintf(t, sizeof t, "ERROR %s at=%zu\n", proxy_err_name(o->err), o->off);
    } else if (o->st == PROXY_AGAIN) {
        snprintf(t, sizeof t, "AGAIN taken=%zu\n", o->off);
    } else if (o->r.local) {
        snprintf(t, sizeof t, "DONE v%u local hdr=%zu\n", o->r.version, o->off);
    } else {
        char s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN];
        CHECK(inet_ntop(o->r.family, o->r.src, s, sizeof s) != NULL);
        CHECK(inet_ntop(o->r.family, o->r.dst, d, sizeof d) != NULL);
        snprintf(t, sizeof t, "DONE v%u %d %s %u %s %u hdr=%zu\n", o->r.version, o->r.family, s, o->r.src_port, d,
                 o->r.dst_port, o->off);
    }
    tu_puts(l, t);
}

/* Feed `in` cut at the sorted split points, checking the contract. */
static outcome_t drive(const char *in, size_t len, unsigned mode, const size_t *splits, size_t nsplits)
{
    outcome_t o = { PROXY_AGAIN, PROXY_ERR_NONE, 0, { 0 } };
    proxy_t p;
    start(&p, mode);
    proxy_result_t poison;
    memset(&poison, 0x5a, sizeof poison);
    size_t prev = 0;
    for (size_t i = 0; i <= nsplits; i++) {
        size_t end = i < nsplits ? splits[i] : len;
        size_t n = end - prev;
        char *piece = malloc(n ? n : 1);
        CHECK(piece != NULL);
        memcpy(piece, in + prev, n);
        proxy_result_t r;
        memcpy(&r, &poison, sizeof r);
        size_t used = (size_t)-1;
        enum proxy_status st = proxy_feed(&p, piece, n, &used, &r);
        CHECK(used <= n);
        if (st == PROXY_AGAIN) {
            CHECK(used == n && proxy_error(&p) == PROXY_ERR_NONE);
            CHECK(memcmp(&r, &poison, sizeof r) == 0);
            o.off += used;
            CHECK(proxy_offset(&p) == o.off);
        } else if (st == PROXY_DONE) {
            CHECK(used > 0 && proxy_error(&p) == PROXY_ERR_NONE);
            o.off += used;
            CHECK(proxy_offset(&p) == o.off);
            o.st = st;
            o.r = r;
            proxy_result_t r2;
            size_t used2 = 1;
            CHECK(proxy_feed(&p, piece + used, n - used, &used2, &r2) == PROXY_DONE);
            CHECK(used2 == 0 && same_result(&r, &r2));
        } else {
            CHECK(st == PROXY_ERROR && used == 0);
            CHECK(memcmp(&r, &poison, sizeof r) == 0);
            o.st = st;
            o.err = proxy_error(&p);
            CHECK(o.err != PROXY_ERR_NONE && strcmp(proxy_err_name(o.err), "?") != 0);
            CHECK(proxy_offset(&p) >= o.off && proxy_offset(&p) < o.off + n);
            o.off = proxy_offset(&p);
            size_t used2 = 1;
            CHECK(proxy_feed(&p, "PROXY UNKNOWN\r\n", 15, &used2, &r) == PROXY_ERROR && used2 == 0);
            CHECK(proxy_error(&p) == o.err && proxy_offset(&p) == o.off);
        }
        free(piece);
        prev = end;
        if (st != PROXY_AGAIN)
            break;
    }
    return o;
}

/* ---- the reference: whole input, written for clarity, not for streams ---- */

enum ref { REF_INCOMPLETE, REF_INVALID, REF_VALID };

/* A decimal port: 1-5 digits, no leading zero, at most 65535. */
static bool ref_port(const char *s, size_t n, uint16_t *v)
{
    if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
        return false;
    unsigned x = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        x = x * 10 + (unsigned)(s[i] - '0');
    }
    if (x > 65535)
        return false;
    *v = (uint16_t)x;
    return true;
}

static enum ref ref_v1(const char *in, size_t len, proxy_result_t *r, size_t *hdr)
{
    static const char sig[] = "PROXY";
    for (size_t i = 0; i < len && i < 5; i++)
        if (in[i] != sig[i])
            return REF_INVALID;
    size_t scan = len < PROXY_V1_MAX ? len : PROXY_V1_MAX;
    const char *lf = memchr(in, '\n', scan);
    if (!lf)
        return len >= PROXY_V1_MAX ? REF_INVALID : REF_INCOMPLETE;
    size_t k = (size_t)(lf - in);
    if (k < 1 || in[k - 1] != '\r')
        return REF_INVALID;
    size_t n = k - 1; /* the line without CRLF */
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)in[i] < 0x20 || (unsigned char)in[i] > 0x7e)
            return REF_INVALID;
    if (n < 6 || memcmp(in, "PROXY ", 6) != 0)
        return REF_INVALID;
    char line[PROXY_V1_MAX + 1];
    memcpy(line, in + 6, n - 6);
    line[n - 6] = 0;
    memset(r, 0, sizeof *r);
    r->version = 1;
    *hdr = k + 1;
    if (strcmp(line, "UNKNOWN") == 0 || strncmp(line, "UNKNOWN ", 8) == 0) {
        r->local = true;
        return REF_VALID;
    }
    /* exactly five fields, single spaces */
    char *f[6];
    size_t nf = 0;
    char *s = line;
    for (;;) {
        if (nf == 6)
            return REF_INVALID;
        f[nf++] = s;
        char *sp = strchr(s, ' ');
        if (!sp)
            break;
        *sp = 0;
        s = sp + 1;
    }
    if (nf != 5)
        return REF_INVALID;
    for (size_t i = 0; i < 5; i++)
        if (f[i][0] == 0)
            return REF_INVALID;
    int af;
    if (strcmp(f[0], "TCP4") == 0)
        af = AF_INET;
    else if (strcmp(f[0], "TCP6") == 0)
        af = AF_INET6;
    else
        return REF_INVALID;
    r->family = (uint8_t)af;
    if (inet_pton(af, f[1], r->src) != 1 || inet_pton(af, f[2], r->dst) != 1)
        return REF_INVALID;
    if (!ref_port(f[3], strlen(f[3]), &r->src_port) || !ref_port(f[4], strlen(f[4]), &r->dst_port))
        return REF_INVALID;
    return REF_VALID;
}

static enum ref ref_v2(const unsigned char *in, size_t len, proxy_result_t *r, size_t *hdr)
{
    static const unsigned char sig[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };
    for (size_t i = 0; i < len && i < 12; i++)
        if (in[i] != sig[i])
            return REF_INVALID;
    if (len < 13)
        return REF_INCOMPLETE;
    unsigned vc = in[12];
    if (vc >> 4 != 2 || (vc & 15) > 1)
        return REF_INVALID;
    bool proxy = (vc & 15) == 1;
    if (len < 14)
        return REF_INCOMPLETE;
    unsigned fam = in[13];
    size_t alen = 0;
    if (proxy) {
        if (fam == 0x11)
            alen = 12;
        else if (fam == 0x21)
            alen = 36;
        else if (fam == 0x31)
            alen = 216;
        else if (fam != 0x00)
            return REF_INVALID;
    }
    if (len < 15)
        return REF_INCOMPLETE;
    if ((size_t)in[14] * 256 > PROXY_V2_MAX)
        return REF_INVALID;
    if (len < 16)
        return REF_INCOMPLETE;
    size_t declared = (size_t)in[14] * 256 + in[15];
    if (declared > PROXY_V2_MAX || declared < alen)
        return REF_INVALID;
    size_t end = 16 + declared;
    /* TLVs after the addresses, with PROXY and an address family */
    if (proxy && alen) {
        size_t off = 16 + alen;
        while (off < end) {
            if (off >= len)
                return REF_INCOMPLETE;
            if (end - off < 3)
                return REF_INVALID;
            if (off + 2 >= len)
                return REF_INCOMPLETE;
            size_t l = (size_t)in[off + 1] * 256 + in[off + 2];
            if (off + 3 + l > end)
                return REF_INVALID;
            off += 3 + l;
        }
    }
    if (len < end)
        return REF_INCOMPLETE;
    memset(r, 0, sizeof *r);
    r->version = 2;
    *hdr = end;
    if (!proxy || fam == 0x00 || fam == 0x31) {
        r->local = true;
        return REF_VALID;
    }
    size_t al = fam == 0x11 ? 4 : 16;
    r->family = fam == 0x11 ? AF_INET : AF_INET6;
    memcpy(r->src, in + 16, al);
    memcpy(r->dst, in + 16 + al, al);
    r->src_port = (uint16_t)(in[16 + 2 * al] << 8 | in[16 + 2 * al + 1]);
    r->dst_port = (uint16_t)(in[16 + 2 * al + 2] << 8 | in[16 + 2 * al + 3]);
    return REF_VALID;
}

/* ---- checks on the whole-input outcome ---- */

static void check_done(const char *in, size_t len, const outcome_t *o)
{
    const proxy_result_t *r = &o->r;
    CHECK(o->off >= 1 && o->off <= len);
    static const uint8_t zero[16];
    if (r->local) {
        CHECK(r->family == 0 && memcmp(r->src, zero, 16) == 0 && memcmp(r->dst, zero, 16) == 0);
        CHECK(r->src_port == 0 && r->dst_port == 0);
    } else {
        CHECK(r->family == AF_INET || r->family == AF_INET6);
        if (r->family == AF_INET)
            CHECK(memcmp(r->src + 4, zero, 12) == 0 && memcmp(r->dst + 4, zero, 12) == 0);
    }
    if (r->version == 1) {
        CHECK(in[0] == 'P');
        const char *crlf = memmem(in, len, "\r\n", 2);
        CHECK(crlf != NULL && o->off == (size_t)(crlf - in) + 2);
        CHECK(o->off <= PROXY_V1_MAX);
        if (!r->local) {
            /* the addresses round-trip through their text */
            const uint8_t *a[2] = { r->src, r->dst };
            for (int k = 0; k < 2; k++) {
                char t[INET6_ADDRSTRLEN];
                uint8_t back[16] = { 0 };
                CHECK(inet_ntop(r->family, a[k], t, sizeof t) != NULL);
                CHECK(inet_pton(r->family, t, back) == 1);
                CHECK(memcmp(back, a[k], r->family == AF_INET ? 4 : 16) == 0);
            }
        }
    } else {
        CHECK(r->version == 2 && in[0] == '\r' && len >= 16);
        size_t declared = (size_t)(unsigned char)in[14] << 8 | (unsigned char)in[15];
        CHECK(o->off == 16 + declared && declared <= PROXY_V2_MAX);
        if (!r->local) {
            size_t al = r->family == AF_INET ? 4 : 16;
            CHECK(memcmp(r->src, in + 16, al) == 0 && memcmp(r->dst, in + 16 + al, al) == 0);
        }
    }
}

static void check_reference(const char *in, size_t len, unsigned mode, const outcome_t *o)
{
    unsigned accept = mode ? mode : PROXY_V1 | PROXY_V2;
    if (len == 0) {
        CHECK(o->st == PROXY_AGAIN && o->off == 0);
        return;
    }
    bool v1 = in[0] == 'P' && (accept & PROXY_V1);
    bool v2 = in[0] == '\r' && (accept & PROXY_V2);
    if (!v1 && !v2) {
        CHECK(o->st == PROXY_ERROR && o->err == PROXY_ERR_NOT_PROXY && o->off == 0);
        return;
    }
    proxy_result_t rr;
    size_t hdr = 0;
    enum ref ref = v1 ? ref_v1(in, len, &rr, &hdr) : ref_v2((const unsigned char *)in, len, &rr, &hdr);
    switch (o->st) {
    case PROXY_DONE:
        CHECK(ref == REF_VALID && hdr == o->off && same_result(&rr, &o->r));
        break;
    case PROXY_AGAIN:
        CHECK(ref == REF_INCOMPLETE);
        break;
    case PROXY_ERROR:
        CHECK(ref != REF_VALID);
        if (v2)
            CHECK(ref == REF_INVALID);
        break;
    }
    if (ref == REF_INVALID)
        CHECK(o->st == PROXY_ERROR);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t nlen = data[0] & 7, len, nsplits;
    unsigned mode = (data[0] >> 3) & 3;
    static size_t splits[FUZZ_MAX_SPLITS];
    const char *in;
    if (!fuzz_rest(data, size, 1, nlen, FUZZ_MAX_INPUT, &in, &len, splits, FUZZ_MAX_SPLITS, &nsplits))
        return 0;

    outcome_t whole = drive(in, len, mode, NULL, 0);
    if (whole.st == PROXY_DONE)
        check_done(in, len, &whole);
    check_reference(in, len, mode, &whole);
    if (whole.st == PROXY_ERROR) {
        /* found at its byte: not before, and the same with nothing after */
        outcome_t before = drive(in, whole.off, mode, NULL, 0);
        CHECK(before.st == PROXY_AGAIN && before.off == whole.off);
        outcome_t at = drive(in, whole.off + 1, mode, NULL, 0);
        CHECK(at.st == PROXY_ERROR && at.err == whole.err && at.off == whole.off);
    }

    tu_log_t want = { 0 }, got = { 0 };
    log_outcome(&want, &whole);
    outcome_t split = drive(in, len, mode, splits, nsplits);
    log_outcome(&got, &split);
    fuzz_same_or_trap("logs with and without the fuzzer's splits", &want, &got);
    CHECK(split.st != PROXY_DONE || same_result(&split.r, &whole.r));
    tu_free_log(&got);

    if (len <= FUZZ_BYTEWISE_MAX && len > 1) {
        for (size_t i = 1; i < len; i++)
            splits[i - 1] = i;
        outcome_t bytes = drive(in, len, mode, splits, len - 1);
        tu_log_t b = { 0 };
        log_outcome(&b, &bytes);
        fuzz_same_or_trap("logs whole and byte by byte", &want, &b);
        tu_free_log(&b);
    }
    tu_free_log(&want);
    return 0;
}

/*
 * fuzz_scan.c - libFuzzer target over the DATA-phase scanner (scan_step)
 * alone, with fuzzer-chosen mode, limits and fragmentation.
 *
 * Input: a 4-byte header, 0-7 chunk-length bytes, then the body bytes (what
 * follows the DATA command's CRLF; at most FUZZ_MAX_BODY).
 *   h[0] 0x01 normalize bare CR/LF (else reject);
 *        bits 1-2 line_max: 0 none, 1: 2..65 (h[1]), 2: 64..319 (h[1]), 3: 1000
 *        bits 3-4 size_max: 0 none, 1: h[2], 2: 32 * h[2], 3: 1 MiB
 *   h[1], h[2] limit values; h[3] bits 0-2: number of chunk-length bytes,
 *        bits 3-4 SIMD layer: 1 avx2, 2 sse2, else the CPU's best.
 * tests/fuzz/gen-corpus.py writes seeds in this format.
 *
 * Checks (__builtin_trap on failure):
 *  - per call: consumed <= len; a body slice lies inside the consumed input
 *    or is a short static insert; no run of calls without progress; after
 *    the end only "end, nothing consumed";
 *  - split invariance: the forwarded bytes, the end position and the final
 *    scanner state (errors, size, line length) are the same whole and split;
 *  - against a plain reference: the end is the first CRLF "." CRLF (the
 *    DATA line's CRLF counting as the first CRLF) in both modes; in reject
 *    mode the bare-LF and bare-CR bits are set exactly when such a byte comes
 *    before the end; normalize mode never sets them; for input without bare
 *    CR/LF the body is forwarded unchanged, and the line-length and size
 *    bits agree with the reference lengths;
 *  - a clean body (no error, end found) has only CRLF line ends, no interior
 *    CRLF.CRLF, is empty or ends in CRLF, and its length is sc.size.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scan.h"
#include "fuzzutil.h"

#define FUZZ_MAX_BODY 8192
#define FUZZ_MAX_SPLITS 512
#define HDR 4

typedef struct outcome {
    tu_log_t body; /* forwarded bytes, joined */
    int end;
    size_t end_pos; /* input offset just past the end marker */
    scan_t sc;      /* final state */
} outcome_t;

static void run(uint64_t size_max, uint32_t line_max, enum scan_bare mode, const char *in, size_t len,
                const size_t *splits, size_t nsplits, outcome_t *o)
{
    memset(o, 0, sizeof *o);
    scan_init(&o->sc, size_max, line_max, mode);
    tu_put(&o->body, "", 0);
    size_t prev = 0;
    for (size_t k = 0; k <= nsplits && !o->end; k++) {
        size_t stop = k < nsplits ? splits[k] : len;
        size_t n = stop - prev;
        /* an exact-size heap copy: ASan sees any read past the piece */
        char *p = malloc(n ? n : 1);
        CHECK(p != NULL);
        memcpy(p, in + prev, n);
        size_t off = 0;
        int idle = 0;
        while (off < n) {
            scan_result_t res;
            memset(&res, 0x5a, sizeof res);
            scan_step(&o->sc, p + off, n - off, &res);
            CHECK(res.consumed <= n - off);
            if (res.body.len) {
                const char *b = res.body.ptr;
                if (b >= p && b < p + n)
                    CHECK(b >= p + off && b + res.body.len <= p + off + res.consumed);
                else
                    CHECK(b != NULL && res.body.len <= 4); /* a static insert */
                tu_put(&o->body, b, res.body.len);
            }
            off += res.consumed;
            idle = res.consumed ? 0 : idle + 1;
            CHECK(idle <= 3);
            if (res.end) {
                CHECK(res.body.len == 0);
                o->end = 1;
                o->end_pos = prev + off;
                /* the end is sticky and takes nothing more */
                if (off < n) {
                    scan_result_t again;
                    scan_step(&o->sc, p + off, n - off, &again);
                    CHECK(again.end && again.consumed == 0 && again.body.len == 0);
                }
                break;
            }
        }
        free(p);
        prev = stop;
    }
}

static void check_clean_body(const char *b, size_t len)
{
    if (len == 0)
        return;
    CHECK(len >= 2 && b[len - 2] == '\r' && b[len - 1] == '\n');
    if (len >= 3)
        CHECK(!(b[0] == '.' && b[1] == '\r' && b[2] == '\n'));
    for (size_t i = 0; i < len; i++) {
        if (b[i] == '\r')
            CHECK(i + 1 < len && b[i + 1] == '\n');
        if (b[i] == '\n')
            CHECK(i > 0 && b[i - 1] == '\r');
        if (b[i] == '\n' && i + 3 < len)
            CHECK(!(b[i + 1] == '.' && b[i + 2] == '\r' && b[i + 3] == '\n'));
    }
}

/* Offset of the '.' of the first CRLF "." CRLF in "\r\n" + in, or -1. */
static long ref_marker(const char *in, size_t len)
{
    for (size_t j = 0; j + 3 <= len; j++) {
        if (in[j] != '.' || in[j + 1] != '\r' || in[j + 2] != '\n')
            continue;
        if (j == 0 || (j >= 2 && in[j - 2] == '\r' && in[j - 1] == '\n'))
            return (long)j;
    }
    return -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < HDR)
        return 0;
    const uint8_t *h = data;
    enum scan_bare mode = (h[0] & 1) ? SCAN_BARE_NORMALIZE : SCAN_BARE_REJECT;
    uint32_t line_max = 0;
    switch ((h[0] >> 1) & 3) {
    case 1: line_max = 2 + (h[1] & 63); break;
    case 2: line_max = 64 + h[1]; break;
    case 3: line_max = 1000; break;
    }
    uint64_t size_max = 0;
    switch ((h[0] >> 3) & 3) {
    case 1: size_max = h[2]; break;
    case 2: size_max = 32u * h[2]; break;
    case 3: size_max = 1u << 20; break;
    }
    static const char *best;
    if (!best)
        best = scan_impl();
    static const char *const layer[4] = { NULL, "avx2", "sse2", NULL };
    const char *want = layer[(h[3] >> 3) & 3];
    if (!want || !scan_use(want))
        scan_use(best);
    size_t nlen = h[3] & 7, len, nsplits;
    size_t splits[FUZZ_MAX_SPLITS];
    const char *in;
    if (!fuzz_rest(data, size, HDR, nlen, FUZZ_MAX_BODY, &in, &len, splits, FUZZ_MAX_SPLITS, &nsplits))
        return 0;

    outcome_t whole, split;
    run(size_max, line_max, mode, in, len, NULL, 0, &whole);
    run(size_max, line_max, mode, in, len, splits, nsplits, &split);

    /* split invariance */
    CHECK(whole.end == split.end);
    CHECK(whole.end_pos == split.end_pos);
    CHECK(whole.body.len == split.body.len && memcmp(whole.body.buf, split.body.buf, whole.body.len) == 0);
    CHECK(whole.sc.errors == split.sc.errors);
    CHECK(whole.sc.size == split.sc.size);
    CHECK(whole.sc.line_len == split.sc.line_len);
    CHECK(whole.sc._state == split.sc._state);

    /* the reference */
    long j = ref_marker(in, len);
    CHECK(whole.end == (j >= 0));
    if (j >= 0)
        CHECK(whole.end_pos == (size_t)j + 3);
    size_t lim = j >= 0 ? (size_t)j : len; /* bytes before the end marker's dot */
    int bare_lf = 0, bare_cr = 0;
    for (size_t i = 0; i < lim; i++) {
        if (in[i] == '\n' && (i == 0 || in[i - 1] != '\r'))
            bare_lf = 1;
        if (in[i] == '\r' && i + 1 < len && in[i + 1] != '\n')
            bare_cr = 1;
    }
    uint8_t e = whole.sc.errors;
    if (mode == SCAN_BARE_REJECT) {
        CHECK(!!(e & SCAN_ERR_BARE_LF) == bare_lf);
        CHECK(!!(e & SCAN_ERR_BARE_CR) == bare_cr);
    } else {
        CHECK(!(e & (SCAN_ERR_BARE_LF | SCAN_ERR_BARE_CR)));
    }
    if (j >= 0 && !bare_lf && !bare_cr) {
        /* plain CRLF lines: lengths as sent, CRLF included; a leading
         * (stuffing) dot may or may not count, so only the clear cases */
        int must = 0, may = 0;
        for (size_t ls = 0; ls < lim;) {
            size_t le = ls;
            while (in[le] != '\n')
                le++;
            size_t l = le + 1 - ls;
            size_t lo = l - (in[ls] == '.');
            if (line_max && lo > line_max)
                must = 1;
            if (line_max && l > line_max)
                may = 1;
            ls = le + 1;
        }
        if (must)
            CHECK(e & SCAN_ERR_LINE_TOO_LONG);
        if (!may)
            CHECK(!(e & SCAN_ERR_LINE_TOO_LONG));
        if (!(e & SCAN_ERR_LINE_TOO_LONG))
            CHECK(!!(e & SCAN_ERR_SIZE) == (size_max && lim > size_max));
        if (!e)
            CHECK(whole.body.len == lim && memcmp(whole.body.buf, in, lim) == 0);
    }
    if (whole.end && !e) {
        check_clean_body(whole.body.buf, whole.body.len);
        CHECK(whole.sc.size == whole.body.len);
    }

    tu_free_log(&whole.body);
    tu_free_log(&split.body);
    return 0;
}

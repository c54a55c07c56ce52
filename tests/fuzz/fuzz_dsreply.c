/*
 * fuzz_dsreply.c - libFuzzer target over the downstream reply parser
 * (dsr_feed), with fuzzer-chosen fragmentation.
 *
 * Input: a 1-byte header, 0-7 chunk-length bytes, then the downstream's bytes
 * (at most FUZZ_MAX_INPUT).
 *   h[0] bits 0-2: number of chunk-length bytes that follow (0: no splits)
 *   chunk-length bytes, cycled: below 0x80 give 1..16 octets, the others
 *   1..1017, so both short cuts and cuts around DSR_LINE_MAX come up.
 * The seeds in corpus/fuzz_dsreply/ are in this format.
 *
 * Checks (__builtin_trap on failure):
 *  - the feed contract: consumed <= input; AGAIN only with all consumed;
 *    REPLY consumes something; ERROR consumes nothing, has a reason and
 *    sticks;
 *  - every reply: code 200..599; lines >= 1; esc empty or "C.S.D" of the
 *    code's class followed in the line by a space or the end; text without
 *    LF or NUL and shorter than DSR_LINE_MAX; caps only for a 250 of two
 *    lines or more; size_max only with SIZE;
 *  - fed whole, each reply's slices lie in the bytes that reply consumed
 *    (no copy), the text runs to its last line's end, that line starts with
 *    the code, and the reply has as many lines as its bytes have LFs;
 *  - differential fragmentation: the fuzzer's splits, and one byte at a time
 *    for short inputs, give the same printed log as the whole input. Each
 *    piece is its own heap block, freed once fed: ASan sees any read past it
 *    and any use of a stale pointer into it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsreply.h"
#include "fuzzutil.h"

#define FUZZ_MAX_INPUT 8192
#define FUZZ_MAX_SPLITS 512
#define FUZZ_BYTEWISE_MAX 256

static int within(slice_t s, const char *base, size_t n)
{
    return s.len == 0 || (s.ptr >= base && s.ptr + s.len <= base + n);
}

static void check_reply(const dsr_reply_t *r)
{
    CHECK(r->code >= 200 && r->code <= 599);
    CHECK(r->lines >= 1);
    if (r->esc.len) {
        CHECK(r->esc.len >= 5 && r->esc.len <= 9);
        CHECK(r->esc.ptr[0] == '0' + r->code / 100 && r->esc.ptr[1] == '.');
        CHECK(memchr(r->esc.ptr, ' ', r->esc.len) == NULL);
        CHECK(r->esc.ptr[r->esc.len - 1] >= '0' && r->esc.ptr[r->esc.len - 1] <= '9');
    }
    CHECK(r->text.len < DSR_LINE_MAX);
    if (r->text.len) {
        CHECK(memchr(r->text.ptr, '\n', r->text.len) == NULL);
        CHECK(memchr(r->text.ptr, 0, r->text.len) == NULL);
    }
    if (r->caps)
        CHECK(r->code == 250 && r->lines >= 2);
    if (r->size_max)
        CHECK(r->caps & DSR_CAP_SIZE);
}

/* Fed whole, a reply is the bytes in[0..n) it consumed. */
static void check_in_place(const dsr_reply_t *r, const char *in, size_t n)
{
    CHECK(n >= 4 && in[n - 1] == '\n');
    CHECK(within(r->text, in, n) && within(r->esc, in, n));
    size_t lfs = 0;
    for (size_t i = 0; i < n; i++)
        lfs += in[i] == '\n';
    CHECK(lfs == r->lines);
    /* the last line */
    size_t start = n - 1;
    while (start > 0 && in[start - 1] != '\n')
        start--;
    const char *l = in + start;
    size_t ll = n - 1 - start;
    if (ll && l[ll - 1] == '\r')
        ll--;
    CHECK(ll >= 3);
    CHECK((l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0') == r->code);
    CHECK(ll == 3 || l[3] == ' ');
    if (r->text.len)
        CHECK(r->text.ptr + r->text.len == l + ll);
    if (r->esc.len) {
        CHECK(r->esc.ptr == l + 4);
        CHECK(r->esc.ptr + r->esc.len == l + ll || r->esc.ptr[r->esc.len] == ' ');
    }
    if (!r->esc.len && ll > 4)
        CHECK(r->text.ptr == l + 4 && r->text.len == ll - 4);
}

static void log_reply(tu_log_t *l, const dsr_reply_t *r)
{
    char t[128];
    snprintf(t, sizeof t, "R %d lines=%u caps=%x size=%llu esc=", r->code, r->lines, (unsigned)r->caps,
             (unsigned long long)r->size_max);
    tu_puts(l, t);
    tu_put_escaped(l, r->esc);
    tu_puts(l, " text=");
    tu_put_escaped(l, r->text);
    tu_puts(l, "\n");
}

/* Feed `in` cut at the sorted split points; return the printed log. */
static tu_log_t drive(const char *in, size_t len, const size_t *splits, size_t nsplits, int whole)
{
    tu_log_t log = { 0 };
    dsr_t *d = malloc(sizeof *d);
    CHECK(d != NULL);
    memset(d, 0, sizeof *d);
    size_t prev = 0;
    int failed = 0;
    for (size_t i = 0; i <= nsplits && !failed; i++) {
        size_t end = i < nsplits ? splits[i] : len;
        size_t n = end - prev;
        char *piece = malloc(n ? n : 1);
        CHECK(piece != NULL);
        memcpy(piece, in + prev, n);
        const char *p = piece;
        for (;;) {
            dsr_reply_t r;
            memset(&r, 0x5a, sizeof r);
            size_t used = (size_t)-1;
            enum dsr_status st = dsr_feed(d, p, n, &used, &r);
            if (st == DSR_ERROR) {
                CHECK(used == 0 && dsr_error(d) != DSR_ERR_NONE);
                tu_puts(&log, "ERROR ");
                tu_puts(&log, dsr_err_name(dsr_error(d)));
                tu_puts(&log, "\n");
                used = 1;
                CHECK(dsr_feed(d, "250 Ok\r\n", 8, &used, &r) == DSR_ERROR && used == 0);
                failed = 1;
                break;
            }
            CHECK(dsr_error(d) == DSR_ERR_NONE);
            CHECK(used <= n);
            if (st == DSR_AGAIN) {
                CHECK(used == n);
                break;
            }
            CHECK(st == DSR_REPLY && used > 0);
            CHECK(!dsr_pending(d));
            check_reply(&r);
            CHECK((within(r.text, piece, end - prev) || within(r.text, d->_carry, sizeof d->_carry)) &&
                  (within(r.esc, piece, end - prev) || within(r.esc, d->_carry, sizeof d->_carry)));
            if (whole)
                check_in_place(&r, p, used);
            log_reply(&log, &r);
            p += used;
            n -= used;
        }
        free(piece);
        prev = end;
    }
    if (!failed)
        tu_puts(&log, dsr_pending(d) ? "END pending\n" : "END\n");
    free(d);
    return log;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t nlen = data[0] & 7, len, nsplits;
    static size_t splits[FUZZ_MAX_SPLITS];
    const char *in;
    if (!fuzz_rest(data, size, 1, nlen, FUZZ_MAX_INPUT, &in, &len, splits, FUZZ_MAX_SPLITS, &nsplits))
        return 0;

    tu_log_t whole = drive(in, len, NULL, 0, 1);
    tu_log_t split = drive(in, len, splits, nsplits, 0);
    fuzz_same_or_trap("logs with and without the fuzzer's splits", &whole, &split);
    tu_free_log(&split);

    if (len <= FUZZ_BYTEWISE_MAX && len > 1) {
        for (size_t i = 1; i < len; i++)
            splits[i - 1] = i;
        tu_log_t bytes = drive(in, len, splits, len - 1, 0);
        fuzz_same_or_trap("logs whole and byte by byte", &whole, &bytes);
        tu_free_log(&bytes);
    }
    tu_free_log(&whole);
    return 0;
}

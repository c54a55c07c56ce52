/*
 * fuzz_msgedit.c - libFuzzer target over msgedit.h: unstuffing and the
 * header cuts against a naive model written here (lines found by position,
 * fields listed in arrays, each del's instances counted), and the
 * Authentication-Results merge against the properties its result must
 * have.
 *
 * Input: a 1-byte header, then what the mode reads.
 *   h[0] bits 0-1: the mode:
 *     0  a message in wire form: unstuffed, out of place and in place.
 *     1  cuts: a byte c, then (c & 15) dels, each an index byte (int8_t;
 *        -128 is INT_MIN, 127 INT_MAX), a length byte and the name's
 *        octets; then the message. c >> 4 is the cap tried first (0: one
 *        per line, enough; k: k - 1).
 *     2  a merge: ours NUL theirs (no NUL: theirs is "x; none").
 *     3  the three at once on the same bytes: wire, dels none (header end
 *        and unstuffing), and the bytes split at their middle as values.
 * The seeds in corpus/fuzz_msgedit/ are in this format.
 *
 * Checks (__builtin_trap on failure):
 *  - unstuff: the model's output; length <= the input's, equal when
 *    !msgedit_stuffed() and only then; in place equals out of place;
 *  - cuts: the model's set exactly; sorted, apart, inside the header
 *    section, each from a line start to after a CRLF (or the end); the
 *    header end the model's; MSGEDIT_OVERFLOW exactly when cap is under
 *    the count (tried at the count, one under, and the header's cap), in
 *    an out[] guarded at its end;
 *  - merge: validity does not depend on which side a value is on; on
 *    success, no CR or LF but in ";" CRLF HTAB separators, no line over
 *    998 with "Authentication-Results: " in front, no white space at
 *    either end, the measured size the written size, no room one octet
 *    short (guarded), and merging the result with "x; none" or with
 *    itself gives it back unchanged.
 */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzzutil.h"
#include "msgedit.h"

#define FUZZ_MAX_INPUT 65536
#define DELS_MAX 15

/* ---- the model: lines by position ---- */

typedef struct mline {
    size_t start, text, end, next;
    bool crlf;
} mline_t;

/* The lines of p[0..n): one starts at 0 and wherever "\r\n" ends. */
static size_t model_lines(const char *p, size_t n, mline_t *ls)
{
    size_t k = 0, s = 0;
    for (size_t i = 2; i <= n; i++) {
        if (i >= s + 2 && p[i - 2] == '\r' && p[i - 1] == '\n') {
            ls[k++] = (mline_t){ s, 0, i - 2, i, true };
            s = i;
        }
    }
    if (s < n)
        ls[k++] = (mline_t){ s, 0, n, n, false };
    for (size_t j = 0; j < k; j++)
        ls[j].text = ls[j].start + (p[ls[j].start] == '.');
    return k;
}

static void check_unstuff(const char *p, size_t n)
{
    mline_t *ls = malloc((n + 1) * sizeof *ls);
    char *want = malloc(n + 1), *got = malloc(n + 1), *inplace = malloc(n + 1);
    CHECK(ls && want && got && inplace);
    size_t k = model_lines(p, n, ls), wn = 0;
    bool dots = false;
    for (size_t j = 0; j < k; j++) {
        dots = dots || ls[j].text != ls[j].start;
        memcpy(want + wn, p + ls[j].text, ls[j].next - ls[j].text);
        wn += ls[j].next - ls[j].text;
    }
    guard_buf_t g;
    guard_copy(&g, p, n);
    bool st = msgedit_stuffed(g.data, n);
    CHECK(st == dots);
    size_t gn = msgedit_unstuff(got, g.data, n);
    CHECK(gn == wn && memcmp(got, want, wn) == 0);
    CHECK(gn <= n && (gn == n) == !st);
    if (!st)
        CHECK(memcmp(got, p, n) == 0);
    memcpy(inplace, p, n);
    size_t in = msgedit_unstuff(inplace, inplace, n);
    CHECK(in == gn && memcmp(inplace, got, gn) == 0);
    guard_free(&g);
    free(ls);
    free(want);
    free(got);
    free(inplace);
}

/* ---- the model: fields and dels ---- */

typedef struct mfield {
    size_t off, len;
    slice_t name;
} mfield_t;

static bool wsp(char c)
{
    return c == ' ' || c == '\t';
}

static bool same_name(slice_t a, slice_t b)
{
    if (a.len != b.len || a.len == 0)
        return false;
    for (size_t i = 0; i < a.len; i++) {
        char x = a.ptr[i], y = b.ptr[i];
        if (x >= 'A' && x <= 'Z')
            x = (char)(x + 32);
        if (y >= 'A' && y <= 'Z')
            y = (char)(y + 32);
        if (x != y)
            return false;
    }
    return true;
}

/* The header's end and its fields. */
static size_t model_fields(const char *p, size_t n, mfield_t *fs, size_t *nf)
{
    mline_t *ls = malloc((n + 1) * sizeof *ls);
    CHECK(ls);
    size_t k = model_lines(p, n, ls), hl = k, hend = n;
    for (size_t j = 0; j < k; j++) {
        if (ls[j].crlf && ls[j].text == ls[j].end) {
            hl = j;
            hend = ls[j].start;
            break;
        }
    }
    *nf = 0;
    for (size_t j = 0; j < hl; j++) {
        const mline_t *l = &ls[j];
        if (l->text == l->end || wsp(p[l->text]))
            continue;
        const char *colon = memchr(p + l->text, ':', l->end - l->text);
        if (!colon)
            continue;
        size_t e = (size_t)(colon - p);
        while (e > l->text && wsp(p[e - 1]))
            e--;
        size_t last = j;
        while (last + 1 < hl && ls[last + 1].text < ls[last + 1].end && wsp(p[ls[last + 1].text]))
            last++;
        fs[(*nf)++] = (mfield_t){ l->start, ls[last].next - l->start, slice_make(p + l->text, e - l->text) };
    }
    free(ls);
    return hend;
}

/* The cuts the model makes: fields marked, in order. */
static size_t model_cuts(const mfield_t *fs, size_t nf, const msgedit_del_t *dels, size_t nd, msgedit_cut_t *out)
{
    bool *cut = calloc(nf + 1, 1);
    size_t *match = malloc((nf + 1) * sizeof *match);
    CHECK(cut && match);
    for (size_t d = 0; d < nd; d++) {
        size_t m = 0;
        for (size_t i = 0; i < nf; i++)
            if (same_name(fs[i].name, dels[d].name))
                match[m++] = i;
        long long x = dels[d].index;
        if (x == 0)
            for (size_t i = 0; i < m; i++)
                cut[match[i]] = true;
        else if (x > 0 && (unsigned long long)x <= m)
            cut[match[x - 1]] = true;
        else if (x < 0 && (unsigned long long)-x <= m)
            cut[match[(long long)m + x]] = true;
    }
    size_t k = 0;
    for (size_t i = 0; i < nf; i++)
        if (cut[i])
            out[k++] = (msgedit_cut_t){ fs[i].off, fs[i].len };
    free(cut);
    free(match);
    return k;
}

/* msgedit_cuts with an out[cap] guarded at its end. */
static size_t run_cuts(const char *p, size_t n, const msgedit_del_t *dels, size_t nd, size_t cap, msgedit_cut_t *copy)
{
    guard_buf_t g;
    guard_alloc(&g, cap * sizeof(msgedit_cut_t));
    msgedit_cut_t *out = cap ? (msgedit_cut_t *)(void *)g.data : NULL;
    size_t k = msgedit_cuts(p, n, dels, nd, out, cap);
    if (k != MSGEDIT_OVERFLOW) {
        CHECK(k <= cap);
        if (k)
            memcpy(copy, out, k * sizeof *out);
    }
    guard_free(&g);
    return k;
}

static void check_cuts(const char *p, size_t n, const msgedit_del_t *dels, size_t nd, int capsel)
{
    guard_buf_t g;
    guard_copy(&g, p, n);
    mfield_t *fs = malloc((n + 1) * sizeof *fs);
    msgedit_cut_t *want = malloc((n + 1) * sizeof *want), *got = malloc((n + 1) * sizeof *got);
    CHECK(fs && want && got);
    size_t nf, hend = model_fields(g.data, n, fs, &nf);
    CHECK(msgedit_header_end(g.data, n) == hend);
    size_t wn = model_cuts(fs, nf, dels, nd, want);
    size_t k = run_cuts(g.data, n, dels, nd, nf, got);
    CHECK(k == wn && (k == 0 || memcmp(got, want, k * sizeof *got) == 0));
    size_t prev = 0;
    for (size_t i = 0; i < k; i++) {
        size_t off = got[i].off, end = got[i].off + got[i].len;
        CHECK(off >= prev && got[i].len > 0 && end <= hend);
        CHECK(off == 0 || (p[off - 2] == '\r' && p[off - 1] == '\n'));
        CHECK(end == n || (end >= off + 2 && p[end - 2] == '\r' && p[end - 1] == '\n'));
        prev = end;
    }
    CHECK(run_cuts(g.data, n, dels, nd, wn, got) == wn);
    if (wn)
        CHECK(run_cuts(g.data, n, dels, nd, wn - 1, got) == MSGEDIT_OVERFLOW);
    if (capsel) {
        size_t cap = (size_t)capsel - 1, r = run_cuts(g.data, n, dels, nd, cap, got);
        CHECK(cap < wn ? r == MSGEDIT_OVERFLOW : r == wn);
    }
    guard_free(&g);
    free(fs);
    free(want);
    free(got);
}

static void mode_cuts(const uint8_t *d, size_t size)
{
    if (size < 1)
        return;
    msgedit_del_t dels[DELS_MAX];
    size_t nd = 0, i = 1, want = d[0] & 15;
    while (nd < want && i + 2 <= size) {
        int8_t x = (int8_t)d[i];
        size_t len = d[i + 1];
        if (i + 2 + len > size)
            break;
        int index = x == INT8_MIN ? INT_MIN : x == INT8_MAX ? INT_MAX : x;
        dels[nd++] = (msgedit_del_t){ slice_make((const char *)d + i + 2, len), index };
        i += 2 + len;
    }
    check_cuts((const char *)d + i, size - i, dels, nd, d[0] >> 4);
}

/* ---- the merge ---- */

static msgedit_err_t merge(slice_t a, slice_t b, char *out, size_t cap, size_t *len)
{
    return msgedit_ar_merge(a, b, out, cap, len);
}

/* The result's shape: lines, separators, white space. */
static void check_shape(const char *p, size_t n)
{
    CHECK(n > 0 && !wsp(p[0]) && !wsp(p[n - 1]));
    size_t col = MSGEDIT_AR_PREFIX;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\r' || p[i] == '\n') {
            CHECK(p[i] == '\r' && i > 0 && p[i - 1] == ';' && i + 2 < n && p[i + 1] == '\n' && p[i + 2] == '\t');
            i++;
            col = 0;
            continue;
        }
        CHECK(++col <= MSGEDIT_LINE_MAX);
    }
}

/* Merging r (a result) with more gives r back. */
static void check_again(slice_t r, slice_t more)
{
    size_t need = 0, len = 0;
    CHECK(merge(r, more, NULL, 0, &need) == MSGEDIT_ERR_NO_ROOM && need == r.len);
    char *b = malloc(need);
    CHECK(b);
    CHECK(merge(r, more, b, need, &len) == MSGEDIT_OK && len == r.len && memcmp(b, r.ptr, len) == 0);
    free(b);
}

static void check_merge(slice_t ours, slice_t theirs)
{
    guard_buf_t go, gt;
    guard_copy(&go, ours.ptr, ours.len);
    guard_copy(&gt, theirs.ptr, theirs.len);
    ours.ptr = go.data;
    theirs.ptr = gt.data;
    size_t need = 7;
    msgedit_err_t e = merge(ours, theirs, NULL, 0, &need), f = merge(theirs, ours, NULL, 0, &need);
    CHECK(msgedit_err_name(e)[0] != '?' && e != MSGEDIT_OK);
    /* a value is good or bad on either side */
    bool obad = e == MSGEDIT_ERR_OURS, tbad = e == MSGEDIT_ERR_THEIRS;
    CHECK(obad ? (f == MSGEDIT_ERR_OURS || f == MSGEDIT_ERR_THEIRS) : true);
    CHECK(tbad ? f == MSGEDIT_ERR_OURS : true);
    CHECK(f == MSGEDIT_ERR_THEIRS ? obad : true);
    CHECK(!obad && !tbad ? f == MSGEDIT_ERR_LONG || f == MSGEDIT_ERR_NO_ROOM : true);
    if (e != MSGEDIT_ERR_NO_ROOM) {
        guard_free(&go);
        guard_free(&gt);
        return;
    }
    CHECK(merge(ours, theirs, NULL, 0, &need) == MSGEDIT_ERR_NO_ROOM && need > 0);
    guard_buf_t g;
    size_t len = 0;
    guard_alloc(&g, need);
    CHECK(merge(ours, theirs, g.data, need, &len) == MSGEDIT_OK && len == need);
    check_shape(g.data, len);
    char *r = malloc(len);
    CHECK(r);
    memcpy(r, g.data, len);
    guard_free(&g);
    guard_alloc(&g, need - 1);
    len = 0;
    CHECK(merge(ours, theirs, g.data, need - 1, &len) == MSGEDIT_ERR_NO_ROOM && len == need);
    guard_free(&g);
    check_again(slice_make(r, need), SLICE_LIT("x; none"));
    check_again(slice_make(r, need), slice_make(r, need));
    free(r);
    guard_free(&go);
    guard_free(&gt);
}

static void mode_merge(const char *p, size_t n)
{
    const char *nul = memchr(p, '\0', n);
    if (!nul) {
        check_merge(slice_make(p, n), SLICE_LIT("x; none"));
        return;
    }
    size_t k = (size_t)(nul - p);
    check_merge(slice_make(p, k), slice_make(nul + 1, n - k - 1));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size - 1 > FUZZ_MAX_INPUT)
        return 0;
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    switch (data[0] & 3) {
    case 0:
        check_unstuff(p, n);
        break;
    case 1:
        mode_cuts(data + 1, n);
        break;
    case 2:
        mode_merge(p, n);
        break;
    case 3:
        check_unstuff(p, n);
        check_cuts(p, n, NULL, 0, 0);
        check_merge(slice_make(p, n / 2), slice_make(p + n / 2, n - n / 2));
        break;
    }
    return 0;
}

/*
 * test_msgedit.c - msgedit.h: dot-unstuffing (lines that begin with '.' at
 * the start, in the middle, after CRLF and after a bare CR or LF, in place
 * and not); the header section's end; the header fields rspamd asks to
 * remove as cuts (names, case, obsolete white space before the colon,
 * stuffed names, continuation lines, lines that are no field, every kind of
 * index, dels that select one field twice, cap overflow at its edge); and
 * the Authentication-Results merge (rspamd 3.4's own values, comments and
 * quoted strings holding ';', folds, "none", methods both sides have,
 * every refusal, line lengths at 998, no room).
 *
 * Every input is a guarded copy (guard.h) that ends where an unmapped page
 * begins, and every output buffer is one too, sized to what is written, so
 * an over-read or overrun crashes the test. Cuts are printed as
 * "off:[text]" with CR and LF escaped, so each expectation says which bytes
 * go.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msgedit.h"
#include "testutil.h"

/* ---- unstuffing ---- */

static bool stuffed(const char *s, size_t n)
{
    guard_buf_t g;
    guard_copy(&g, s, n);
    bool r = msgedit_stuffed(g.data, n);
    guard_free(&g);
    return r;
}

#define STUFFED(lit) stuffed((lit), sizeof(lit) - 1)

static void test_stuffed(void **state)
{
    (void)state;
    assert_false(stuffed("", 0));
    assert_false(STUFFED("\r\n"));
    assert_false(STUFFED("a"));
    assert_false(STUFFED("a\r\n"));            /* a line start at the end has no octet */
    assert_false(STUFFED("a.b\r\nc . d\r\n")); /* dots not at a line start */
    assert_true(STUFFED("."));
    assert_true(STUFFED(".a"));
    assert_true(STUFFED("..a\r\n"));
    assert_true(STUFFED("a\r\n.b"));
    assert_true(STUFFED("a\r\nb\r\n..\r\nc\r\n"));
    assert_true(STUFFED("a\r\n\r\n."));
    assert_true(STUFFED("a\r\r\n.b")); /* the CR before the CRLF is the line's */
    assert_false(STUFFED("a\n.b"));    /* a bare LF ends no line */
    assert_false(STUFFED("a\r.b"));    /* nor a bare CR */
    assert_false(STUFFED("a\n\r.b"));  /* LF CR is no CRLF */
    assert_false(STUFFED("a\r"));
}

/* unstuffed out of place (into a guarded buffer of n octets) and in place;
 * both must be want */
static void unstuff_is(const char *in, size_t n, const char *want, size_t wn)
{
    guard_buf_t gi, go, gp;
    guard_copy(&gi, in, n);
    guard_alloc(&go, n);
    size_t k = msgedit_unstuff(n ? go.data : NULL, gi.data, n);
    assert_int_equal(k, wn);
    assert_memory_equal(go.data, want, wn);
    guard_copy(&gp, in, n);
    k = msgedit_unstuff(gp.data, gp.data, n);
    assert_int_equal(k, wn);
    assert_memory_equal(gp.data, want, wn);
    assert_int_equal(msgedit_stuffed(gi.data, n), wn != n);
    guard_free(&gi);
    guard_free(&go);
    guard_free(&gp);
}

#define UNSTUFF(in, want) unstuff_is((in), sizeof(in) - 1, (want), sizeof(want) - 1)

static void test_unstuff(void **state)
{
    (void)state;
    unstuff_is("", 0, "", 0);
    unstuff_is(NULL, 0, NULL, 0);
    UNSTUFF("\r\n", "\r\n");
    UNSTUFF("abc", "abc");
    UNSTUFF(".", "");
    UNSTUFF("..", ".");
    UNSTUFF("...", "..");
    UNSTUFF(".\r\n", "\r\n"); /* a single dot loses it too (RFC 5321 4.5.2) */
    UNSTUFF("..\r\n", ".\r\n");
    UNSTUFF(".a\r\n", "a\r\n");
    UNSTUFF("..a\r\n", ".a\r\n");
    /* at the start, in the middle, at the end, without a final CRLF */
    UNSTUFF("..start\r\nmid\r\n..dot\r\n.single\r\nend.\r\n..", ".start\r\nmid\r\n.dot\r\nsingle\r\nend.\r\n.");
    UNSTUFF("a\r\n\r\n..b\r\n", "a\r\n\r\n.b\r\n");
    UNSTUFF("a\r\n.", "a\r\n");
    UNSTUFF("a\r\n..\r\n..\r\n", "a\r\n.\r\n.\r\n");
    /* only CRLF starts a line */
    UNSTUFF("a\n..b\r\n", "a\n..b\r\n");
    UNSTUFF("a\r..b\r\n", "a\r..b\r\n");
    UNSTUFF("a\r\r\n..b", "a\r\r\n.b");
    UNSTUFF("a\n\r\n..b", "a\n\r\n.b");
    UNSTUFF("a\r\n\n..b", "a\r\n\n..b");
    UNSTUFF(".\r.\n..\r\n", "\r.\n..\r\n");
    /* a dot after the stuffing dot stays: the line is "..", "." */
    UNSTUFF("x\r\n...\r\n", "x\r\n..\r\n");
}

/* Every line stuffed, 64 KiB of them, in place: the output never passes
 * the input. */
static void test_unstuff_long(void **state)
{
    (void)state;
    size_t lines = 16384, n = lines * 4;
    char *in = malloc(n), *want = malloc(n);
    assert_non_null(in);
    assert_non_null(want);
    for (size_t i = 0; i < lines; i++) {
        memcpy(in + 4 * i, "..\r\n", 4);
        memcpy(want + 3 * i, ".\r\n", 3);
    }
    unstuff_is(in, n, want, lines * 3);
    free(in);
    free(want);
}

/* ---- the header section ---- */

static size_t hend(const char *s, size_t n)
{
    guard_buf_t g;
    guard_copy(&g, s, n);
    size_t r = msgedit_header_end(g.data, n);
    guard_free(&g);
    return r;
}

#define HEND(lit) hend((lit), sizeof(lit) - 1)

static void test_header_end(void **state)
{
    (void)state;
    assert_int_equal(hend("", 0), 0);
    assert_int_equal(HEND("\r\n"), 0);
    assert_int_equal(HEND("\r\nA: b\r\n"), 0);
    assert_int_equal(HEND("A: b\r\n\r\nbody\r\n"), 6);
    assert_int_equal(HEND("A: b\r\n"), 6);               /* no blank line: all of it */
    assert_int_equal(HEND("A: b"), 4);                   /* nor a final CRLF */
    assert_int_equal(HEND("A: b\r\n.\r\nbody"), 6);      /* "." unstuffed is empty */
    assert_int_equal(HEND("A: b\r\n..\r\nbody"), 14);    /* ".." is "." */
    assert_int_equal(HEND("A: b\r\n \r\nC: d\r\n"), 15); /* white space: a continuation */
    assert_int_equal(HEND("A: b\n\nbody"), 10);          /* bare LFs end nothing */
    assert_int_equal(HEND("A: b\r\n\r"), 7);             /* a CR alone is no empty line */
    assert_int_equal(HEND("A: b\r\n\r\n"), 6);
    assert_int_equal(HEND("."), 1);
    assert_int_equal(HEND(".\r\n"), 0);
}

/* ---- cuts ---- */

static char printed[8192];

/* CR, LF and HTAB as \r, \n and \t; other octets as they are. */
static void put_esc(tu_log_t *log, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\t')
            tu_puts(log, "\\t");
        else
            tu_put_escaped(log, slice_make(p + i, 1));
    }
}

/* msgedit_cuts over a guarded copy of msg into a guarded out[cap], printed
 * as "off:[text] ..." or "OVERFLOW"; the cuts checked sorted, apart and
 * whole lines of the header section on the way. */
static const char *cuts_n(const char *msg, size_t n, const msgedit_del_t *dels, size_t ndels, size_t cap)
{
    guard_buf_t gm, go;
    guard_copy(&gm, msg, n);
    guard_alloc(&go, cap * sizeof(msgedit_cut_t));
    msgedit_cut_t *out = cap ? (msgedit_cut_t *)(void *)go.data : NULL;
    size_t k = msgedit_cuts(gm.data, n, dels, ndels, out, cap);
    tu_log_t log = { 0 };
    if (k == MSGEDIT_OVERFLOW) {
        tu_puts(&log, "OVERFLOW");
    } else {
        size_t he = msgedit_header_end(gm.data, n), prev = 0;
        assert_true(k <= cap);
        for (size_t i = 0; i < k; i++) {
            char t[32];
            assert_true(out[i].off >= prev && out[i].len > 0 && out[i].off + out[i].len <= he);
            assert_true(out[i].off == 0 || (gm.data[out[i].off - 2] == '\r' && gm.data[out[i].off - 1] == '\n'));
            prev = out[i].off + out[i].len;
            snprintf(t, sizeof t, "%s%zu:[", i ? " " : "", out[i].off);
            tu_puts(&log, t);
            put_esc(&log, gm.data + out[i].off, out[i].len);
            tu_puts(&log, "]");
        }
    }
    snprintf(printed, sizeof printed, "%s", log.buf ? log.buf : "");
    tu_free_log(&log);
    guard_free(&gm);
    guard_free(&go);
    return printed;
}

static const char *cuts(const char *msg, const msgedit_del_t *dels, size_t ndels, size_t cap)
{
    return cuts_n(msg, strlen(msg), dels, ndels, cap);
}

#define DEL(name, index) ((msgedit_del_t){ SLICE_LIT(name), (index) })
#define NDELS(a) (sizeof(a) / sizeof((a)[0]))

static const char MSG[] = "Received: from a\r\n"  /* 0 */
                          "X-Spam: one\r\n"       /* 18 */
                          "Subject: hello\r\n"    /* 31 */
                          "x-spam: two\r\n"       /* 47 */
                          "\tfolded\r\n"          /* 60 */
                          " twice\r\n"            /* 69 */
                          "X-Spam-Status: No\r\n" /* 77 */
                          "X-SPAM : three\r\n"    /* 96 */
                          "\r\n"                  /* 112 */
                          "X-Spam: in the body\r\n";

#define CUT1 "18:[X-Spam: one\\r\\n]"
#define CUT2 "47:[x-spam: two\\r\\n\\tfolded\\r\\n twice\\r\\n]"
#define CUT3 "96:[X-SPAM : three\\r\\n]"

static void test_cuts_index(void **state)
{
    (void)state;
    msgedit_del_t d[1];
    d[0] = DEL("X-Spam", 0);
    assert_string_equal(cuts(MSG, d, 1, 8), CUT1 " " CUT2 " " CUT3);
    d[0] = DEL("x-SPAM", 1);
    assert_string_equal(cuts(MSG, d, 1, 8), CUT1);
    d[0] = DEL("X-Spam", 2);
    assert_string_equal(cuts(MSG, d, 1, 8), CUT2);
    d[0] = DEL("X-Spam", 3);
    assert_string_equal(cuts(MSG, d, 1, 8), CUT3);
    d[0] = DEL("X-Spam", 4); /* out of range: the body's is not a field */
    assert_string_equal(cuts(MSG, d, 1, 8), "");
    d[0] = DEL("X-Spam", -1);
    assert_string_equal(cuts(MSG, d, 1, 8), CUT3);
    d[0] = DEL("X-Spam", -2);
    assert_string_equal(cuts(MSG, d, 1, 8), CUT2);
    d[0] = DEL("X-Spam", -3);
    assert_string_equal(cuts(MSG, d, 1, 8), CUT1);
    d[0] = DEL("X-Spam", -4);
    assert_string_equal(cuts(MSG, d, 1, 8), "");
    d[0] = DEL("X-Spam", INT_MIN);
    assert_string_equal(cuts(MSG, d, 1, 8), "");
    d[0] = DEL("X-Spam", INT_MAX);
    assert_string_equal(cuts(MSG, d, 1, 8), "");
    d[0] = DEL("Received", -1);
    assert_string_equal(cuts(MSG, d, 1, 8), "0:[Received: from a\\r\\n]");
    d[0] = DEL("Nothing", 0);
    assert_string_equal(cuts(MSG, d, 1, 8), "");
    /* a name is all of it: no prefix, no longer name */
    d[0] = DEL("X-Spa", 0);
    assert_string_equal(cuts(MSG, d, 1, 8), "");
    d[0] = DEL("X-Spam-Status", 0);
    assert_string_equal(cuts(MSG, d, 1, 8), "77:[X-Spam-Status: No\\r\\n]");
    d[0] = DEL("X-Spam ", 0); /* the del's name is not trimmed */
    assert_string_equal(cuts(MSG, d, 1, 8), "");
    d[0] = (msgedit_del_t){ SLICE_NULL, 0 };
    assert_string_equal(cuts(MSG, d, 1, 8), "");
    assert_string_equal(cuts(MSG, NULL, 0, 8), "");
    assert_string_equal(cuts(MSG, NULL, 0, 0), "");
}

static void test_cuts_overlap(void **state)
{
    (void)state;
    /* every del chooses a field others chose: each cut once, in order */
    msgedit_del_t a[] = { DEL("X-Spam", -1), DEL("x-spam", 0),   DEL("X-SPAM", 1),  DEL("X-Spam", 3),
                          DEL("X-Spam", -3), DEL("Received", 1), DEL("received", 0) };
    assert_string_equal(cuts(MSG, a, NDELS(a), 8), "0:[Received: from a\\r\\n] " CUT1 " " CUT2 " " CUT3);
    assert_string_equal(cuts(MSG, a, NDELS(a), 4), "0:[Received: from a\\r\\n] " CUT1 " " CUT2 " " CUT3);
    assert_string_equal(cuts(MSG, a, NDELS(a), 3), "OVERFLOW");
    /* the same field by its index from the top and from the bottom */
    msgedit_del_t b[] = { DEL("X-Spam", 2), DEL("X-Spam", -2), DEL("x-spam", 2) };
    assert_string_equal(cuts(MSG, b, NDELS(b), 1), CUT2);
    /* listed in any order, the cuts come sorted */
    msgedit_del_t c[] = { DEL("X-Spam", -1), DEL("Subject", 1), DEL("X-Spam", 1), DEL("Received", -1) };
    assert_string_equal(cuts(MSG, c, NDELS(c), 4),
                        "0:[Received: from a\\r\\n] " CUT1 " 31:[Subject: hello\\r\\n] " CUT3);
}

static void test_cuts_overflow(void **state)
{
    (void)state;
    msgedit_del_t all[] = { DEL("X-Spam", 0) };
    assert_string_equal(cuts(MSG, all, 1, 3), CUT1 " " CUT2 " " CUT3);
    assert_string_equal(cuts(MSG, all, 1, 2), "OVERFLOW");
    assert_string_equal(cuts(MSG, all, 1, 0), "OVERFLOW");
    /* targets alone over the cap */
    msgedit_del_t idx[] = { DEL("X-Spam", 3), DEL("X-Spam", 1), DEL("X-Spam", 2) };
    assert_string_equal(cuts(MSG, idx, 3, 3), CUT1 " " CUT2 " " CUT3);
    assert_string_equal(cuts(MSG, idx, 3, 2), "OVERFLOW");
    assert_string_equal(cuts(MSG, idx, 3, 0), "OVERFLOW");
    /* targets that fit, and fields of index 0 around them that do not */
    msgedit_del_t mix[] = { DEL("X-Spam", -1), DEL("Received", 0), DEL("Subject", 0) };
    assert_string_equal(cuts(MSG, mix, 3, 3), "0:[Received: from a\\r\\n] 31:[Subject: hello\\r\\n] " CUT3);
    assert_string_equal(cuts(MSG, mix, 3, 2), "OVERFLOW");
    /* a target in the last slot, written over as it is read */
    msgedit_del_t last[] = { DEL("Received", 0), DEL("Received", 1) };
    assert_string_equal(cuts(MSG, last, 2, 1), "0:[Received: from a\\r\\n]");
    /* duplicates do not count against the cap */
    msgedit_del_t dup[] = { DEL("Subject", 1), DEL("Subject", -1), DEL("subject", 1), DEL("Subject", 0) };
    assert_string_equal(cuts(MSG, dup, 4, 1), "31:[Subject: hello\\r\\n]");
    /* nothing to cut needs no room */
    msgedit_del_t none[] = { DEL("X-Spam", 9), DEL("Absent", 0) };
    assert_string_equal(cuts(MSG, none, 2, 0), "");
}

static void test_cuts_lines(void **state)
{
    (void)state;
    msgedit_del_t d[2];
    /* n = 0, "\r\n", a header without a blank line, a last line without
     * CRLF (the cut ends at n) */
    d[0] = DEL("A", 0);
    assert_string_equal(cuts_n("", 0, d, 1, 4), "");
    assert_string_equal(cuts_n(NULL, 0, d, 1, 4), "");
    assert_string_equal(cuts("\r\n", d, 1, 4), "");
    assert_string_equal(cuts("\r\nA: body\r\n", d, 1, 4), "");
    assert_string_equal(cuts("A: 1", d, 1, 4), "0:[A: 1]");
    assert_string_equal(cuts("A: 1\r\n", d, 1, 4), "0:[A: 1\\r\\n]");
    assert_string_equal(cuts("B: 0\r\nA: 1", d, 1, 4), "6:[A: 1]");
    assert_string_equal(cuts("A: 1\r\n\tcont", d, 1, 4), "0:[A: 1\\r\\n\\tcont]");
    assert_string_equal(cuts("A:\r\n \r\n", d, 1, 4), "0:[A:\\r\\n \\r\\n]");
    assert_string_equal(cuts("A: 1\r\n\r\n", d, 1, 4), "0:[A: 1\\r\\n]");
    assert_string_equal(cuts("A: 1\r\n\r\n\tbody\r\n", d, 1, 4), "0:[A: 1\\r\\n]");
    /* continuation lines, and lines that are no field */
    assert_string_equal(cuts(" lead: x\r\n\tmore\r\nA: 1\r\n", d, 1, 4), "17:[A: 1\\r\\n]");
    assert_string_equal(cuts("junk\r\n A: no\r\nA: 1\r\n", d, 1, 4), "14:[A: 1\\r\\n]");
    d[0] = DEL("junk", 0);
    assert_string_equal(cuts("junk\r\n\tx: y\r\nA: 1\r\n", d, 1, 4), "");
    d[0] = DEL("Foo", 0); /* a colon only in the continuation */
    assert_string_equal(cuts("Foo\r\n : bar\r\n", d, 1, 4), "");
    /* obsolete white space before the colon; an empty name */
    assert_string_equal(cuts("Foo \t : bar\r\nFoo\t:\r\n", d, 1, 4), "0:[Foo \\t : bar\\r\\n] 13:[Foo\\t:\\r\\n]");
    d[0] = (msgedit_del_t){ SLICE_LIT(""), 0 };
    assert_string_equal(cuts(": x\r\n", d, 1, 4), "");
    /* bare CR and LF are octets of the line */
    d[0] = DEL("A", 0);
    d[1] = DEL("B", 0);
    assert_string_equal(cuts("A: 1\nB: 2\r\n", d + 1, 1, 4), "");
    assert_string_equal(cuts("A: 1\nB: 2\r\n", d, 1, 4), "0:[A: 1\\nB: 2\\r\\n]");
    assert_string_equal(cuts("A: 1\rB: 2\r\n", d, 2, 4), "0:[A: 1\\rB: 2\\r\\n]");
    assert_string_equal(cuts("A: 1\r\n\n\r\nB: 2\r\n", d, 2, 4), "0:[A: 1\\r\\n] 9:[B: 2\\r\\n]");
    /* a blank line ends it; "." unstuffed is blank, ".." is not */
    assert_string_equal(cuts("A: 1\r\n.\r\nA: 2\r\n", d, 1, 4), "0:[A: 1\\r\\n]");
    assert_string_equal(cuts("A: 1\r\n..\r\nA: 2\r\n", d, 1, 4), "0:[A: 1\\r\\n] 10:[A: 2\\r\\n]");
}

static void test_cuts_stuffed(void **state)
{
    (void)state;
    msgedit_del_t d[1];
    /* ".Hidden" is "..Hidden" in the wire */
    d[0] = DEL(".Hidden", 0);
    assert_string_equal(cuts("..Hidden: x\r\nA: 1\r\n", d, 1, 4), "0:[..Hidden: x\\r\\n]");
    assert_string_equal(cuts("A: 1\r\n..hidden: y\r\n", d, 1, 4), "6:[..hidden: y\\r\\n]");
    d[0] = DEL("Hidden", 0);
    assert_string_equal(cuts("..Hidden: x\r\n", d, 1, 4), "");
    /* a single dot is lost, as unstuffing loses it */
    assert_string_equal(cuts(".Hidden: x\r\n", d, 1, 4), "0:[.Hidden: x\\r\\n]");
    d[0] = DEL(".Hidden", 0);
    assert_string_equal(cuts(".Hidden: x\r\n", d, 1, 4), "");
    /* a stuffed continuation is a continuation; a stuffed line of white
     * space too */
    d[0] = DEL("A", 0);
    assert_string_equal(cuts("A: 1\r\n. more\r\n.\t\r\nB: 2\r\n", d, 1, 4), "0:[A: 1\\r\\n. more\\r\\n.\\t\\r\\n]");
    /* the dot is no white space: "..x" is no continuation */
    assert_string_equal(cuts("A: 1\r\n..x\r\n", d, 1, 4), "0:[A: 1\\r\\n]");
}

/* Many fields, many dels: the answer of a naive count. */
static void test_cuts_many(void **state)
{
    (void)state;
    size_t nf = 2000;
    char *msg = malloc(nf * 16 + 16);
    assert_non_null(msg);
    size_t n = 0;
    for (size_t i = 0; i < nf; i++)
        n += (size_t)sprintf(msg + n, "%s: %zu\r\n", i % 3 ? "Received" : "X-Rspamd", i);
    n += (size_t)sprintf(msg + n, "\r\nbody\r\n");
    msgedit_del_t d[] = { DEL("received", -1), DEL("RECEIVED", 1), DEL("X-Rspamd", 0), DEL("Received", 700),
                          DEL("Received", -700) };
    msgedit_cut_t *out = malloc(nf * sizeof *out);
    assert_non_null(out);
    size_t k = msgedit_cuts(msg, n, d, NDELS(d), out, nf);
    /* X-Rspamd: fields 0, 3, ... (667 of them); Received: 1333 of them */
    size_t want = 667 + 4, prev = 0;
    assert_int_equal(k, want);
    for (size_t i = 0; i < k; i++) {
        assert_true(out[i].off >= prev);
        prev = out[i].off + out[i].len;
    }
    assert_int_equal(msgedit_cuts(msg, n, d, NDELS(d), out, want - 1), MSGEDIT_OVERFLOW);
    assert_int_equal(msgedit_cuts(msg, n, d, NDELS(d), out, want), want);
    free(out);
    free(msg);
}

/* ---- Authentication-Results ---- */

static char merged[4096];

/* The merge of guarded copies into a guarded buffer of exactly the size
 * measured; merged[] then holds the result as a string, or the error's
 * name. Also: one octet less is no room, and says how much. */
static msgedit_err_t merge_n(const char *ours, size_t on, const char *theirs, size_t tn)
{
    guard_buf_t go, gt, gout;
    guard_copy(&go, ours, on);
    guard_copy(&gt, theirs, tn);
    size_t need = 12345;
    msgedit_err_t e = msgedit_ar_merge(slice_make(go.data, on), slice_make(gt.data, tn), NULL, 0, &need);
    if (e != MSGEDIT_ERR_NO_ROOM) {
        assert_int_not_equal(e, MSGEDIT_OK); /* nothing fits in 0 */
        assert_int_equal(need, 12345);
        snprintf(merged, sizeof merged, "%s", msgedit_err_name(e));
        guard_free(&go);
        guard_free(&gt);
        return e;
    }
    assert_true(need > 0 && need < sizeof merged);
    guard_alloc(&gout, need);
    size_t len = 0;
    e = msgedit_ar_merge(slice_make(go.data, on), slice_make(gt.data, tn), gout.data, need, &len);
    assert_int_equal(e, MSGEDIT_OK);
    assert_int_equal(len, need);
    memcpy(merged, gout.data, len);
    merged[len] = '\0';
    guard_free(&gout);
    guard_alloc(&gout, need - 1);
    len = 0;
    assert_int_equal(msgedit_ar_merge(slice_make(go.data, on), slice_make(gt.data, tn), gout.data, need - 1, &len),
                     MSGEDIT_ERR_NO_ROOM);
    assert_int_equal(len, need);
    guard_free(&gout);
    guard_free(&go);
    guard_free(&gt);
    return MSGEDIT_OK;
}

static const char *merge(const char *ours, const char *theirs)
{
    merge_n(ours, strlen(ours), theirs, strlen(theirs));
    return merged;
}

/* rspamd 3.4's value (milter.add_headers) and ours as written after the
 * colon */
static const char RSPAMD_AR[] =
    "mx.test;\r\n\tdkim=pass header.d=example.test header.s=sel header.b=abcdEFGH;\r\n\tdmarc=pass (policy=reject) "
    "header.from=example.test;\r\n\tspf=fail (mx.test: domain of a@example.test does not designate 127.0.0.1 as "
    "permitted sender) smtp.mailfrom=a@example.test";
static const char OURS_AR[] = " mx.test; spf=pass smtp.mailfrom=a@example.test";

static void test_ar_rspamd(void **state)
{
    (void)state;
    assert_string_equal(merge(OURS_AR, RSPAMD_AR), "mx.test;\r\n\tspf=pass smtp.mailfrom=a@example.test;\r\n"
                                                   "\tdkim=pass header.d=example.test header.s=sel "
                                                   "header.b=abcdEFGH;\r\n"
                                                   "\tdmarc=pass (policy=reject) header.from=example.test");
    /* captured from rspamd 3.4 (test_rspamd.c): a quoted string, a comment
     * with a quoted string in it, and "dkim=none", which is a result */
    assert_string_equal(
        merge("mx.example.net; spf=pass smtp.mailfrom=a@example.org",
              "mx.example.net;\r\n\tdkim=temperror (\"DNS error when getting key\") header.d=example.org "
              "header.s=sel header.b=dGVzdHNp;\r\n\tspf=temperror (mx.example.net: error in processing during "
              "lookup of a@example.org: DNS error) smtp.mailfrom=a@example.org;\r\n\tdmarc=temperror "
              "reason=\"query timed out\" header.from=example.org (policy=temperror)"),
        "mx.example.net;\r\n\tspf=pass smtp.mailfrom=a@example.org;\r\n\tdkim=temperror (\"DNS error when getting "
        "key\") header.d=example.org header.s=sel header.b=dGVzdHNp;\r\n\tdmarc=temperror reason=\"query timed "
        "out\" header.from=example.org (policy=temperror)");
    assert_string_equal(merge("mx.example.net; spf=none smtp.mailfrom=a@example.org",
                              "mx.example.net;\r\n\tdkim=none;\r\n\tdmarc=none"),
                        "mx.example.net;\r\n\tspf=none smtp.mailfrom=a@example.org;\r\n\tdkim=none;\r\n\tdmarc=none");
    /* theirs' authserv-id is not used */
    assert_string_equal(merge("mx.test; spf=pass", "other.test; arc=pass"), "mx.test;\r\n\tspf=pass;\r\n\tarc=pass");
}

static void test_ar_split(void **state)
{
    (void)state;
    /* ';' in a comment, a nested comment, a quoted string, a quoted-pair */
    assert_string_equal(merge("mx; spf=pass (ok; really (no; kidding)) smtp.mailfrom=a@b", "mx; none"),
                        "mx;\r\n\tspf=pass (ok; really (no; kidding)) smtp.mailfrom=a@b");
    assert_string_equal(merge("mx", "mx; dmarc=fail reason=\"p=reject; sp=none\" header.from=b"),
                        "mx;\r\n\tdmarc=fail reason=\"p=reject; sp=none\" header.from=b");
    assert_string_equal(merge("mx", "mx; x=y reason=\"a\\\"; b\" (c\\); d) e"),
                        "mx;\r\n\tx=y reason=\"a\\\"; b\" (c\\); d) e");
    /* a quote in a comment and a parenthesis in a quoted string are text */
    assert_string_equal(merge("mx", "mx; a=b (\"x; y) c; d=e \"(\"; f=g"),
                        "mx;\r\n\ta=b (\"x; y) c;\r\n\td=e \"(\";\r\n\tf=g");
    /* a backslash outside both is an octet */
    assert_string_equal(merge("mx", "mx; a=b\\; c=d"), "mx;\r\n\ta=b\\;\r\n\tc=d");
    /* empty parts are skipped, white space around parts trimmed */
    assert_string_equal(merge("  mx.test  ;; spf=pass ; (just a comment);  ", "mx.test;"), "mx.test;\r\n\tspf=pass");
    /* the authserv-id's version and comments are kept */
    assert_string_equal(merge("(front) mx.test 1 (back); spf=pass", "x; none"),
                        "(front) mx.test 1 (back);\r\n\tspf=pass");
    assert_string_equal(merge("\"quoted id\" 2; spf=pass", "x; none"), "\"quoted id\" 2;\r\n\tspf=pass");
    /* method versions and white space before '=' */
    assert_string_equal(merge("mx; dkim/1 = pass header.d=a", "mx; dkim / 2=fail; spf (c) = pass"),
                        "mx;\r\n\tdkim/1 = pass header.d=a;\r\n\tspf (c) = pass");
}

static void test_ar_folds(void **state)
{
    (void)state;
    /* a fold (CRLF and the white space after it) is one SP; several in a
     * row too; folds around parts go */
    assert_string_equal(merge("\r\n mx.test\r\n\t;\r\n spf=pass\r\n\t\tsmtp.mailfrom=a@b\r\n ", "mx; none"),
                        "mx.test;\r\n\tspf=pass smtp.mailfrom=a@b");
    assert_string_equal(merge("mx; spf=pass\r\n \r\n\t \r\n smtp.mailfrom=a@b", "mx"),
                        "mx;\r\n\tspf=pass smtp.mailfrom=a@b");
    assert_string_equal(merge("mx; spf=pass (a\r\n\tcomment) x", "mx"), "mx;\r\n\tspf=pass (a comment) x");
    assert_string_equal(merge("mx\r\n (id\r\n comment); a=b", "mx"), "mx (id comment);\r\n\ta=b");
    /* in a quoted string only the CRLF goes */
    assert_string_equal(merge("mx; dmarc=fail reason=\"a\r\n\t b\r\n c\" x\r\n\ty", "mx"),
                        "mx;\r\n\tdmarc=fail reason=\"a\t b c\" x y");
    /* white space inside a part is kept as it is */
    assert_string_equal(merge("mx; spf=pass   x\t\ty", "mx"), "mx;\r\n\tspf=pass   x\t\ty");
}

static void test_ar_none(void **state)
{
    (void)state;
    assert_string_equal(merge("mx.test; none", "mx.test; none"), "mx.test; none");
    assert_string_equal(merge("mx.test", "mx.test"), "mx.test; none");
    assert_string_equal(merge("mx.test;", "other"), "mx.test; none");
    assert_string_equal(merge("mx.test; NONE (nothing)", "x;;"), "mx.test; none");
    assert_string_equal(merge("mx.test (c)", "x"), "mx.test (c); none");
    /* dropped when any result is present, on either side */
    assert_string_equal(merge("mx.test; none", "mx.test; dkim=pass"), "mx.test;\r\n\tdkim=pass");
    assert_string_equal(merge("mx.test; spf=pass", "mx.test; none"), "mx.test;\r\n\tspf=pass");
    assert_string_equal(merge("mx.test; none; spf=pass; none", "x; none"), "mx.test;\r\n\tspf=pass");
    /* "none=..." is a method named none */
    assert_string_equal(merge("mx.test", "x; none=pass"), "mx.test;\r\n\tnone=pass");
}

static void test_ar_methods(void **state)
{
    (void)state;
    /* ours win; theirs of a method ours lacks all stay, duplicates too */
    assert_string_equal(merge("mx; spf=pass smtp.mailfrom=a@b",
                              "mx; SPF=fail smtp.mailfrom=a@b; dkim=pass header.d=a; dkim=fail header.d=b; "
                              "Spf/1=softfail"),
                        "mx;\r\n\tspf=pass smtp.mailfrom=a@b;\r\n\tdkim=pass header.d=a;\r\n\tdkim=fail header.d=b");
    assert_string_equal(merge("mx; spf=pass; spf=fail", "mx; spf=neutral"), "mx;\r\n\tspf=pass;\r\n\tspf=fail");
    assert_string_equal(merge("mx; dkim/1=pass", "mx; dkim=fail; dmarc=pass; arc=none"),
                        "mx;\r\n\tdkim/1=pass;\r\n\tdmarc=pass;\r\n\tarc=none");
    /* a method is the whole keyword */
    assert_string_equal(merge("mx; dkim=pass", "mx; dkim-atps=pass; dkim_x=fail"),
                        "mx;\r\n\tdkim=pass;\r\n\tdkim-atps=pass;\r\n\tdkim_x=fail");
    /* (a comment) before the method */
    assert_string_equal(merge("mx; (c; d) spf=pass", "mx; (e) spf=fail"), "mx;\r\n\t(c; d) spf=pass");
}

static void test_ar_refused(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",           /* no authserv-id */
        "   ",        /* nor here */
        "\r\n ",      /* nor here */
        "; spf=pass", /* empty */
        "(only a comment); spf=pass",
        "\"\"; spf=pass",      /* an empty quoted string */
        "spf=pass; dkim=pass", /* '=' is no token octet */
        "mx.test x; spf=pass", /* a version is digits */
        "mx.test 1 2; spf=pass",
        "mx.test 1x; spf=pass",
        "mx.test@x; spf=pass",
        "mx; spf=pass (open", /* unbalanced */
        "mx; spf=pass (a (b)",
        "mx; spf=pass close)",
        "mx) ; spf=pass",
        "mx; dmarc=fail reason=\"open",
        "mx; a=b \"x\\\"",     /* the quoted-pair takes the quote */
        "mx; a=b (x\\",        /* a backslash at the end */
        "mx; a=b (x\\\r\n y)", /* a quoted CR */
        "mx; a=b \"x\\\x01\"", /* a quoted control */
        "mx;\r spf=pass",      /* bare CR */
        "mx;\n spf=pass",      /* bare LF */
        "mx;\r\nspf=pass",     /* CRLF without WSP: no fold */
        "mx; spf=pass\r\n",    /* the field's CRLF is not the value's */
        "mx; spf=pass\r",
        "mx; spf=pass\n",
        "mx; spf=pass \x01", /* control octets */
        "mx; spf=pass \x7f",
        "mx; spf=pass (\x1b)",
        "mx; spf", /* no '=' */
        "mx; spf pass",
        "mx; =pass", /* no method */
        "mx; none more",
        "mx; ~x=pass", /* not a keyword */
        "mx; \"spf\"=pass",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t n = strlen(bad[i]);
        if (merge_n(bad[i], n, "mx; dkim=pass", 13) != MSGEDIT_ERR_OURS ||
            merge_n("mx; dkim=pass", 13, bad[i], n) != MSGEDIT_ERR_THEIRS ||
            merge_n(bad[i], n, bad[i], n) != MSGEDIT_ERR_OURS)
            fail_msg("bad[%zu] not refused", i);
    }
    /* a NUL is a control octet; NULL is no value */
    assert_int_equal(merge_n("mx; a=b\0c", 9, "mx", 2), MSGEDIT_ERR_OURS);
    size_t len = 7;
    char out[64];
    assert_int_equal(msgedit_ar_merge(SLICE_NULL, SLICE_LIT("mx"), out, sizeof out, &len), MSGEDIT_ERR_OURS);
    assert_int_equal(msgedit_ar_merge(SLICE_LIT("mx"), SLICE_NULL, out, sizeof out, &len), MSGEDIT_ERR_THEIRS);
    assert_int_equal(len, 7);
    /* octets over 0x7f are text (RFC 6532) */
    assert_string_equal(merge("mx.t\xc3\xa9st; spf=pass (caf\xc3\xa9)", "x"),
                        "mx.t\xc3\xa9st;\r\n\tspf=pass (caf\xc3\xa9)");
    /* a TAB is white space, and may be quoted */
    assert_string_equal(merge("mx;\tspf=pass\t(\\\t)", "x"), "mx;\r\n\tspf=pass\t(\\\t)");
}

/* A line is at most 998 octets: the field's name counts in the first. */
static void test_ar_long(void **state)
{
    (void)state;
    static char ours[2200], theirs[2200];
    /* the last line: TAB and the resinfo */
    memset(ours, 0, sizeof ours);
    memcpy(ours, "mx; a=", 6);
    memset(ours + 6, 'x', 997 - 2); /* "a=" and 995: 997 octets */
    assert_int_equal(merge_n(ours, strlen(ours), "mx", 2), MSGEDIT_OK);
    ours[6 + 995] = 'y';
    assert_int_equal(merge_n(ours, strlen(ours), "mx", 2), MSGEDIT_ERR_LONG);
    /* not the last: its ';' counts */
    assert_int_equal(merge_n(ours, strlen(ours) - 1, "mx", 2), MSGEDIT_OK);
    memcpy(theirs, "mx; b=c", 8);
    assert_int_equal(merge_n(ours, strlen(ours) - 1, theirs, 7), MSGEDIT_ERR_LONG);
    assert_int_equal(merge_n(ours, strlen(ours) - 2, theirs, 7), MSGEDIT_OK);
    /* unfolding joins lines: two halves fit, joined they do not */
    memset(theirs, 0, sizeof theirs);
    memcpy(theirs, "mx; a=", 6);
    memset(theirs + 6, 'x', 600);
    memcpy(theirs + 606, "\r\n\t", 3);
    memset(theirs + 609, 'x', 600);
    assert_int_equal(merge_n("mx", 2, theirs, strlen(theirs)), MSGEDIT_ERR_LONG);
    /* the first line: "Authentication-Results: " (24), the id and ';' */
    memset(ours, 0, sizeof ours);
    memset(ours, 'i', 973);
    memcpy(ours + 973, "; a=b", 5);
    assert_int_equal(merge_n(ours, strlen(ours), "x", 1), MSGEDIT_OK);
    memmove(ours + 1, ours, strlen(ours));
    assert_int_equal(merge_n(ours, strlen(ours), "x", 1), MSGEDIT_ERR_LONG);
    /* ... or the id and "; none" */
    memset(ours, 0, sizeof ours);
    memset(ours, 'i', 969);
    assert_int_equal(merge_n(ours, 968, "x", 1), MSGEDIT_OK);
    assert_int_equal(merge_n(ours, 969, "x", 1), MSGEDIT_ERR_LONG);
    /* too long comes before no room */
    size_t len = 0;
    assert_int_equal(msgedit_ar_merge(slice_make(ours, 969), SLICE_LIT("x"), NULL, 0, &len), MSGEDIT_ERR_LONG);
    /* but a long value of many short parts is fine */
    static char many[20000];
    size_t n = (size_t)sprintf(many, "mx");
    for (int i = 0; i < 1000; i++)
        n += (size_t)sprintf(many + n, "; m%d=pass", i);
    size_t need = 0;
    assert_int_equal(msgedit_ar_merge(slice_make(many, n), SLICE_LIT("x"), NULL, 0, &need), MSGEDIT_ERR_NO_ROOM);
    char *out = malloc(need);
    assert_non_null(out);
    assert_int_equal(msgedit_ar_merge(slice_make(many, n), slice_make(many, n), out, need, &len), MSGEDIT_OK);
    assert_int_equal(len, need);
    free(out);
}

static void test_ar_room(void **state)
{
    (void)state;
    char out[256];
    size_t len = 0;
    msgedit_err_t e = msgedit_ar_merge(SLICE_LIT(OURS_AR), SLICE_LIT("mx.test; dkim=pass"), out, sizeof out, &len);
    assert_int_equal(e, MSGEDIT_OK);
    const char want[] = "mx.test;\r\n\tspf=pass smtp.mailfrom=a@example.test;\r\n\tdkim=pass";
    assert_int_equal(len, sizeof want - 1);
    assert_memory_equal(out, want, len);
    /* every cap below it: no room, the size needed, nothing written past */
    for (size_t cap = 0; cap < sizeof want - 1; cap++) {
        guard_buf_t g;
        guard_alloc(&g, cap);
        len = 0;
        e = msgedit_ar_merge(SLICE_LIT(OURS_AR), SLICE_LIT("mx.test; dkim=pass"), g.data, cap, &len);
        assert_int_equal(e, MSGEDIT_ERR_NO_ROOM);
        assert_int_equal(len, sizeof want - 1);
        guard_free(&g);
    }
    assert_string_equal(msgedit_err_name(MSGEDIT_OK), "none");
    assert_string_equal(msgedit_err_name(MSGEDIT_ERR_OURS), "bad_ours");
    assert_string_equal(msgedit_err_name(MSGEDIT_ERR_THEIRS), "bad_theirs");
    assert_string_equal(msgedit_err_name(MSGEDIT_ERR_LONG), "line_too_long");
    assert_string_equal(msgedit_err_name(MSGEDIT_ERR_NO_ROOM), "no_room");
    assert_string_equal(msgedit_err_name((msgedit_err_t)99), "?");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stuffed),       cmocka_unit_test(test_unstuff),    cmocka_unit_test(test_unstuff_long),
        cmocka_unit_test(test_header_end),    cmocka_unit_test(test_cuts_index), cmocka_unit_test(test_cuts_overlap),
        cmocka_unit_test(test_cuts_overflow), cmocka_unit_test(test_cuts_lines), cmocka_unit_test(test_cuts_stuffed),
        cmocka_unit_test(test_cuts_many),     cmocka_unit_test(test_ar_rspamd),  cmocka_unit_test(test_ar_split),
        cmocka_unit_test(test_ar_folds),      cmocka_unit_test(test_ar_none),    cmocka_unit_test(test_ar_methods),
        cmocka_unit_test(test_ar_refused),    cmocka_unit_test(test_ar_long),    cmocka_unit_test(test_ar_room),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

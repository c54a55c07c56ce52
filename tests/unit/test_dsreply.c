/*
 * test_dsreply.c - dsreply.h: parsing a downstream server's replies.
 * Single-line and multi-line replies, EHLO keywords and SIZE, pipelined
 * replies in one read, enhanced status codes present and absent, LMTP's reply
 * per recipient, malformed replies (and that the error sticks), the line
 * limit at its edge, and split-invariance: every sample is fed whole, byte by
 * byte, cut at every position (and every pair of positions when short), each
 * piece in a guarded buffer that is unmapped once fed, and the printed logs
 * must be identical.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsreply.h"
#include "testutil.h"
#include "splits.h"

/* ---- the driver: feeds pieces, prints a canonical log ---- */

static const struct {
    uint32_t bit;
    const char *name;
} cap_names[] = {
    { DSR_CAP_PIPELINING, "PIPELINING" }, { DSR_CAP_SIZE, "SIZE" },
    { DSR_CAP_8BITMIME, "8BITMIME" },     { DSR_CAP_SMTPUTF8, "SMTPUTF8" },
    { DSR_CAP_CHUNKING, "CHUNKING" },     { DSR_CAP_ENHANCEDSTATUSCODES, "ENHANCEDSTATUSCODES" },
    { DSR_CAP_STARTTLS, "STARTTLS" },     { DSR_CAP_DSN, "DSN" },
};

static int within(slice_t s, const char *base, size_t n)
{
    return s.len == 0 || (s.ptr >= base && s.ptr + s.len <= base + n);
}

static void log_reply(tu_log_t *l, const dsr_reply_t *r)
{
    char t[96];
    snprintf(t, sizeof t, "R %d lines=%u", r->code, r->lines);
    tu_puts(l, t);
    if (r->caps) {
        const char *sep = " caps=";
        for (size_t k = 0; k < sizeof cap_names / sizeof cap_names[0]; k++) {
            if (r->caps & cap_names[k].bit) {
                tu_puts(l, sep);
                tu_puts(l, cap_names[k].name);
                sep = ",";
            }
        }
    }
    if (r->size_max) {
        snprintf(t, sizeof t, " size=%llu", (unsigned long long)r->size_max);
        tu_puts(l, t);
    }
    tu_puts(l, " esc=");
    tu_put_escaped(l, r->esc);
    tu_puts(l, " text=");
    tu_put_escaped(l, r->text);
    tu_puts(l, "\n");
}

/*
 * Feed `in` cut at the sorted split points; returns the log: one "R ..." line
 * per reply, then "ERROR reason" or "END" (with "pending" when a partial
 * reply is held). Checks the feed contract on every call.
 */
static tu_log_t drive(const char *in, size_t len, const size_t *splits, size_t nsplits)
{
    tu_log_t log = { 0 };
    dsr_t d;
    memset(&d, 0, sizeof d);
    size_t prev = 0;
    int failed = 0;
    for (size_t i = 0; i <= nsplits && !failed; i++) {
        size_t end = i < nsplits ? splits[i] : len;
        assert_true(end >= prev && end <= len);
        guard_buf_t g;
        guard_copy(&g, in + prev, end - prev);
        const char *p = g.data;
        size_t n = end - prev;
        for (;;) {
            dsr_reply_t r;
            memset(&r, 0x5a, sizeof r);
            size_t used = (size_t)-1;
            enum dsr_status st = dsr_feed(&d, p, n, &used, &r);
            if (st == DSR_ERROR) {
                assert_int_equal(used, 0);
                assert_int_not_equal(dsr_error(&d), DSR_ERR_NONE);
                tu_puts(&log, "ERROR ");
                tu_puts(&log, dsr_err_name(dsr_error(&d)));
                tu_puts(&log, "\n");
                /* sticky: nothing more is taken */
                used = 1;
                assert_int_equal(dsr_feed(&d, p, n, &used, &r), DSR_ERROR);
                assert_int_equal(used, 0);
                failed = 1;
                break;
            }
            assert_int_equal(dsr_error(&d), DSR_ERR_NONE);
            assert_true(used <= n);
            if (st == DSR_AGAIN) {
                assert_int_equal(used, n);
                break;
            }
            assert_int_equal(st, DSR_REPLY);
            assert_true(used > 0);
            assert_true(r.code >= 200 && r.code <= 599);
            assert_true(r.lines >= 1);
            assert_false(dsr_pending(&d));
            /* the slices lie in this piece or in the carry */
            assert_true(within(r.text, g.data, end - prev) || within(r.text, d._carry, sizeof d._carry));
            assert_true(within(r.esc, g.data, end - prev) || within(r.esc, d._carry, sizeof d._carry));
            assert_true(r.text.len == 0 || memchr(r.text.ptr, '\n', r.text.len) == NULL);
            log_reply(&log, &r);
            p += used;
            n -= used;
        }
        guard_free(&g);
        prev = end;
    }
    if (!failed)
        tu_puts(&log, dsr_pending(&d) ? "END pending\n" : "END\n");
    return log;
}

static tu_log_t drive_whole(const char *in, size_t len)
{
    return drive(in, len, NULL, 0);
}

static void assert_log(const tu_log_t *got, const char *want, const char *what)
{
    if (strcmp(got->buf, want) != 0)
        fail_msg("%s: got\n%s--- want\n%s", what, got->buf, want);
}

/* The sample fed whole, byte by byte, and at every cut must give `want`
 * (or, with want NULL, the whole feed's log). */
static void check_splits(const char *in, size_t len, const char *want)
{
    tu_log_t whole = tu_check_splits(drive, in, len);
    if (want)
        assert_log(&whole, want, "whole");
    tu_free_log(&whole);
}

#define CHECK_SPLITS(lit, want) check_splits((lit), sizeof(lit) - 1, (want))

/* ---- one call at a time, for exact consumed counts and slices ---- */

static enum dsr_status feed_str(dsr_t *d, const char *s, size_t *used, dsr_reply_t *r)
{
    return dsr_feed(d, s, strlen(s), used, r);
}

static void assert_slice(slice_t s, const char *want)
{
    size_t n = strlen(want);
    if (s.len != n || (n && memcmp(s.ptr, want, n) != 0))
        fail_msg("got \"%.*s\" (%zu), want \"%s\"", (int)s.len, s.ptr ? s.ptr : "", s.len, want);
}

/* ---- tests ---- */

static void test_single_line(void **state)
{
    (void)state;
    dsr_t d;
    dsr_reply_t r;
    size_t used;
    dsr_init(&d);

    const char *greet = "220 mx.example.net ESMTP Postfix\r\n";
    assert_int_equal(feed_str(&d, greet, &used, &r), DSR_REPLY);
    assert_int_equal(used, strlen(greet));
    assert_int_equal(r.code, 220);
    assert_int_equal(dsr_class(&r), 2);
    assert_int_equal(r.lines, 1);
    assert_int_equal(r.caps, 0);
    assert_int_equal(r.size_max, 0);
    assert_slice(r.esc, "");
    assert_slice(r.text, "mx.example.net ESMTP Postfix");
    /* it arrived whole: the text is not copied */
    assert_true(r.text.ptr == greet + 4);
    assert_false(dsr_pending(&d));

    assert_int_equal(feed_str(&d, "354 End data with <CR><LF>.<CR><LF>\r\n", &used, &r), DSR_REPLY);
    assert_int_equal(r.code, 354);
    assert_int_equal(dsr_class(&r), 3);
    assert_slice(r.esc, "");
    assert_slice(r.text, "End data with <CR><LF>.<CR><LF>");

    /* a bare code, with and without the space; a bare LF ends a line too */
    assert_int_equal(feed_str(&d, "250\r\n", &used, &r), DSR_REPLY);
    assert_int_equal(r.code, 250);
    assert_slice(r.text, "");
    assert_int_equal(feed_str(&d, "221 \r\n", &used, &r), DSR_REPLY);
    assert_int_equal(r.code, 221);
    assert_slice(r.text, "");
    assert_int_equal(feed_str(&d, "451 4.3.0 try later\n", &used, &r), DSR_REPLY);
    assert_int_equal(r.code, 451);
    assert_int_equal(dsr_class(&r), 4);
    assert_slice(r.esc, "4.3.0");
    assert_slice(r.text, "try later");
    assert_int_equal(feed_str(&d, "250\n", &used, &r), DSR_REPLY);
    assert_int_equal(r.code, 250);
    assert_slice(r.text, "");

    /* no input, and a partial line: AGAIN, everything taken */
    assert_int_equal(dsr_feed(&d, NULL, 0, &used, &r), DSR_AGAIN);
    assert_int_equal(used, 0);
    assert_false(dsr_pending(&d));
    assert_int_equal(feed_str(&d, "250 O", &used, &r), DSR_AGAIN);
    assert_int_equal(used, 5);
    assert_true(dsr_pending(&d));
    assert_int_equal(feed_str(&d, "k\r", &used, &r), DSR_AGAIN);
    assert_int_equal(feed_str(&d, "\n", &used, &r), DSR_REPLY);
    assert_int_equal(used, 1);
    assert_slice(r.text, "Ok");
    /* split: the text was gathered in the carry */
    assert_true(r.text.ptr >= d._carry && r.text.ptr < d._carry + sizeof d._carry);
    assert_false(dsr_pending(&d));

    CHECK_SPLITS("220 mx.example.net ESMTP\r\n", "R 220 lines=1 esc= text=mx.example.net ESMTP\nEND\n");
    CHECK_SPLITS("250 Ok\r\n", "R 250 lines=1 esc= text=Ok\nEND\n");
    CHECK_SPLITS("250\r\n", "R 250 lines=1 esc= text=\nEND\n");
    CHECK_SPLITS("250\n", "R 250 lines=1 esc= text=\nEND\n");
    CHECK_SPLITS("221 2.0.0 Bye\n", "R 221 lines=1 esc=2.0.0 text=Bye\nEND\n");
    CHECK_SPLITS("250 Ok\r\n250 O", "R 250 lines=1 esc= text=Ok\nEND pending\n");
    /* a CR inside the text is the downstream's business; reply.c cleans it */
    CHECK_SPLITS("250 a\rb\r\r\n", "R 250 lines=1 esc= text=a\\rb\\r\nEND\n");
}

static void test_ehlo(void **state)
{
    (void)state;
    const char ehlo[] = "250-mx.example.net\r\n"
                        "250-PIPELINING\r\n"
                        "250-SIZE 10240000\r\n"
                        "250-VRFY\r\n"
                        "250-ETRN\r\n"
                        "250-STARTTLS\r\n"
                        "250-AUTH PLAIN LOGIN\r\n"
                        "250-ENHANCEDSTATUSCODES\r\n"
                        "250-8BITMIME\r\n"
                        "250-DSN\r\n"
                        "250-SMTPUTF8\r\n"
                        "250 CHUNKING\r\n";
    dsr_t d;
    dsr_reply_t r;
    size_t used;
    dsr_init(&d);
    assert_int_equal(dsr_feed(&d, ehlo, sizeof ehlo - 1, &used, &r), DSR_REPLY);
    assert_int_equal(used, sizeof ehlo - 1);
    assert_int_equal(r.code, 250);
    assert_int_equal(r.lines, 12);
    assert_int_equal(r.caps, DSR_CAP_PIPELINING | DSR_CAP_SIZE | DSR_CAP_STARTTLS |
                                 DSR_CAP_ENHANCEDSTATUSCODES | DSR_CAP_8BITMIME | DSR_CAP_DSN |
                                 DSR_CAP_SMTPUTF8 | DSR_CAP_CHUNKING);
    assert_int_equal(r.size_max, 10240000);
    assert_slice(r.text, "CHUNKING");
    assert_slice(r.esc, "");

    CHECK_SPLITS(ehlo, "R 250 lines=12 caps=PIPELINING,SIZE,8BITMIME,SMTPUTF8,CHUNKING,ENHANCEDSTATUSCODES,"
                       "STARTTLS,DSN size=10240000 esc= text=CHUNKING\nEND\n");

    /* keywords in any case, bare LF; SIZE without a number; the caps of one
     * reply do not leak into the next */
    CHECK_SPLITS("250-mx\n250-pipelining\n250-Size\n250 8bitmime\n250 2.0.0 Ok\r\n",
                 "R 250 lines=4 caps=PIPELINING,SIZE,8BITMIME esc= text=8bitmime\n"
                 "R 250 lines=1 esc=2.0.0 text=Ok\nEND\n");

    /* the first line is the server's name, even when it looks like a keyword */
    CHECK_SPLITS("250-PIPELINING\r\n250 8BITMIME\r\n",
                 "R 250 lines=2 caps=8BITMIME esc= text=8BITMIME\nEND\n");
    CHECK_SPLITS("250 PIPELINING\r\n", "R 250 lines=1 esc= text=PIPELINING\nEND\n");

    /* whole keywords only; a parameter after a space is fine */
    CHECK_SPLITS("250-mx\r\n250-SIZEX 5\r\n250-PIPELINING2\r\n250-XDSN\r\n250-DSN extra\r\n250 SIZE=5\r\n",
                 "R 250 lines=6 caps=DSN esc= text=SIZE=5\nEND\n");

    /* SIZE's number: zero means no limit; junk means none; huge saturates;
     * the last SIZE line wins */
    CHECK_SPLITS("250-mx\r\n250 SIZE 0\r\n", "R 250 lines=2 caps=SIZE esc= text=SIZE 0\nEND\n");
    CHECK_SPLITS("250-mx\r\n250 SIZE 12k\r\n", "R 250 lines=2 caps=SIZE esc= text=SIZE 12k\nEND\n");
    CHECK_SPLITS("250-mx\r\n250 SIZE  52428800 \r\n",
                 "R 250 lines=2 caps=SIZE size=52428800 esc= text=SIZE  52428800 \nEND\n");
    CHECK_SPLITS("250-mx\r\n250 SIZE 99999999999999999999999\r\n",
                 "R 250 lines=2 caps=SIZE size=18446744073709551615 esc= text=SIZE 99999999999999999999999\n"
                 "END\n");
    CHECK_SPLITS("250-mx\r\n250-SIZE 100\r\n250 SIZE 200\r\n",
                 "R 250 lines=3 caps=SIZE size=200 esc= text=SIZE 200\nEND\n");

    /* not 250: no caps (a 5xx EHLO refusal, a HELP text) */
    CHECK_SPLITS("554-mx\r\n554 PIPELINING\r\n", "R 554 lines=2 esc= text=PIPELINING\nEND\n");
    CHECK_SPLITS("214-help\r\n214 DSN\r\n", "R 214 lines=2 esc= text=DSN\nEND\n");

    /* an empty continuation line */
    CHECK_SPLITS("250-mx\r\n250-\r\n250 DSN\r\n", "R 250 lines=3 caps=DSN esc= text=DSN\nEND\n");
}

static void test_pipelined(void **state)
{
    (void)state;
    /* MAIL, RCPT, RCPT, DATA sent as one group: four replies in one read */
    const char in[] = "250 2.1.0 Ok\r\n"
                      "250 2.1.5 Ok\r\n"
                      "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown\r\n"
                      "354 End data with <CR><LF>.<CR><LF>\r\n";
    static const struct {
        int code;
        const char *esc, *text;
    } want[] = {
        { 250, "2.1.0", "Ok" },
        { 250, "2.1.5", "Ok" },
        { 550, "5.1.1", "<nobody@example.org>: Recipient address rejected: User unknown" },
        { 354, "", "End data with <CR><LF>.<CR><LF>" },
    };
    dsr_t d;
    dsr_reply_t r;
    dsr_init(&d);
    const char *p = in;
    size_t n = sizeof in - 1;
    for (size_t k = 0; k < 4; k++) {
        size_t used;
        assert_int_equal(dsr_feed(&d, p, n, &used, &r), DSR_REPLY);
        const char *eol = strchr(p, '\n');
        assert_int_equal(used, (size_t)(eol - p) + 1); /* through this reply only */
        assert_int_equal(r.code, want[k].code);
        assert_slice(r.esc, want[k].esc);
        assert_slice(r.text, want[k].text);
        assert_int_equal(r.lines, 1);
        p += used;
        n -= used;
    }
    size_t used = 1;
    assert_int_equal(dsr_feed(&d, p, n, &used, &r), DSR_AGAIN);
    assert_int_equal(n, 0);
    assert_int_equal(used, 0);

    CHECK_SPLITS(in, "R 250 lines=1 esc=2.1.0 text=Ok\n"
                     "R 250 lines=1 esc=2.1.5 text=Ok\n"
                     "R 550 lines=1 esc=5.1.1 text=<nobody@example.org>: Recipient address rejected: User "
                     "unknown\n"
                     "R 354 lines=1 esc= text=End data with <CR><LF>.<CR><LF>\n"
                     "END\n");

    /* a multi-line reply among single ones, and one left unfinished */
    CHECK_SPLITS("250 Ok\r\n450-4.2.0 first\r\n450 4.2.0 second\r\n250 Ok\r\n250-more",
                 "R 250 lines=1 esc= text=Ok\n"
                 "R 450 lines=2 esc=4.2.0 text=second\n"
                 "R 250 lines=1 esc= text=Ok\n"
                 "END pending\n");
}

static void test_esc(void **state)
{
    (void)state;
    CHECK_SPLITS("250 Ok\r\n", "R 250 lines=1 esc= text=Ok\nEND\n");
    CHECK_SPLITS("250 2.0.0 Ok: queued as ABC\r\n", "R 250 lines=1 esc=2.0.0 text=Ok: queued as ABC\nEND\n");
    CHECK_SPLITS("550 5.7.1 Rejected\r\n", "R 550 lines=1 esc=5.7.1 text=Rejected\nEND\n");
    CHECK_SPLITS("552 5.3.4\r\n", "R 552 lines=1 esc=5.3.4 text=\nEND\n");
    CHECK_SPLITS("250 2.0.0 \r\n", "R 250 lines=1 esc=2.0.0 text=\nEND\n");
    CHECK_SPLITS("452 4.5.3 Too many recipients\r\n", "R 452 lines=1 esc=4.5.3 text=Too many recipients\nEND\n");
    CHECK_SPLITS("550 5.123.456 x\r\n", "R 550 lines=1 esc=5.123.456 text=x\nEND\n");
    /* not enhanced codes: another class, no class 3, bad shapes (the finer
     * rules are reply_esc_valid()'s, tested in test_reply.c) */
    CHECK_SPLITS("250 5.1.1 odd\r\n", "R 250 lines=1 esc= text=5.1.1 odd\nEND\n");
    CHECK_SPLITS("354 3.0.0 go\r\n", "R 354 lines=1 esc= text=3.0.0 go\nEND\n");
    CHECK_SPLITS("451 4.3.0abc\r\n", "R 451 lines=1 esc= text=4.3.0abc\nEND\n");
    CHECK_SPLITS("451 4.3\r\n", "R 451 lines=1 esc= text=4.3\nEND\n");
    CHECK_SPLITS("451 4.3.1234 x\r\n", "R 451 lines=1 esc= text=4.3.1234 x\nEND\n");
    CHECK_SPLITS("250 2.0.0\tOk\r\n", "R 250 lines=1 esc= text=2.0.0\\x09Ok\nEND\n");
    CHECK_SPLITS("250 Ok 2.0.0\r\n", "R 250 lines=1 esc= text=Ok 2.0.0\nEND\n");
    /* of a multi-line reply, the last line's */
    CHECK_SPLITS("550-5.1.1 first\r\n550 5.1.2 last\r\n", "R 550 lines=2 esc=5.1.2 text=last\nEND\n");
    CHECK_SPLITS("550-5.1.1 first\r\n550 last\r\n", "R 550 lines=2 esc= text=last\nEND\n");
}

static void test_lmtp(void **state)
{
    (void)state;
    /* LHLO, MAIL, three RCPT, DATA; then, after the final dot, one reply per
     * accepted recipient (RFC 2033 4.2), in RCPT order */
    const char in[] = "250-lmtp.example.net\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n"
                      "250 2.1.0 Ok\r\n"
                      "250 2.1.5 Ok\r\n"
                      "250 2.1.5 Ok\r\n"
                      "250 2.1.5 Ok\r\n"
                      "354 Start mail input\r\n"
                      "250 2.0.0 <a@example.net> Saved\r\n"
                      "452 4.2.2 <b@example.net> Mailbox full\r\n"
                      "550 5.1.1 <c@example.net> User unknown\r\n";
    CHECK_SPLITS(in, "R 250 lines=4 caps=PIPELINING,8BITMIME,ENHANCEDSTATUSCODES esc= text=8BITMIME\n"
                     "R 250 lines=1 esc=2.1.0 text=Ok\n"
                     "R 250 lines=1 esc=2.1.5 text=Ok\n"
                     "R 250 lines=1 esc=2.1.5 text=Ok\n"
                     "R 250 lines=1 esc=2.1.5 text=Ok\n"
                     "R 354 lines=1 esc= text=Start mail input\n"
                     "R 250 lines=1 esc=2.0.0 text=<a@example.net> Saved\n"
                     "R 452 lines=1 esc=4.2.2 text=<b@example.net> Mailbox full\n"
                     "R 550 lines=1 esc=5.1.1 text=<c@example.net> User unknown\n"
                     "END\n");

    /* the per-recipient replies in one read: three separate REPLYs */
    const char *tail = strstr(in, "250 2.0.0");
    dsr_t d;
    dsr_reply_t r;
    dsr_init(&d);
    size_t n = strlen(tail), used;
    int codes[3], k = 0;
    while (n) {
        assert_int_equal(dsr_feed(&d, tail, n, &used, &r), DSR_REPLY);
        assert_true(k < 3);
        codes[k++] = r.code;
        tail += used;
        n -= used;
    }
    assert_int_equal(k, 3);
    assert_int_equal(codes[0], 250);
    assert_int_equal(codes[1], 452);
    assert_int_equal(codes[2], 550);
}

static void test_malformed(void **state)
{
    (void)state;
    CHECK_SPLITS("250-a\r\n251 b\r\n", "ERROR code_mismatch\n");
    CHECK_SPLITS("250-a\r\n350 b\r\n", "ERROR code_mismatch\n");
    CHECK_SPLITS("25x\r\n", "ERROR syntax\n");
    CHECK_SPLITS("25x", "ERROR syntax\n"); /* found before the line ends */
    CHECK_SPLITS("600 x\r\n", "ERROR bad_class\n");
    CHECK_SPLITS("199 x\r\n", "ERROR bad_class\n");
    CHECK_SPLITS("6", "ERROR bad_class\n");
    CHECK_SPLITS("250x\r\n", "ERROR syntax\n");
    CHECK_SPLITS("250\rx\r\n", "ERROR syntax\n");
    CHECK_SPLITS("250\r\r\n", "ERROR syntax\n");
    CHECK_SPLITS("\r\n", "ERROR syntax\n");
    CHECK_SPLITS("\n", "ERROR syntax\n");
    CHECK_SPLITS("25\r\n", "ERROR syntax\n");
    CHECK_SPLITS(" 250 Ok\r\n", "ERROR syntax\n");
    CHECK_SPLITS("250\tOk\r\n", "ERROR syntax\n");
    CHECK_SPLITS("250 a\0b\r\n", "ERROR nul_byte\n");
    CHECK_SPLITS("2\0", "ERROR nul_byte\n");
    CHECK_SPLITS("250 Ok\r\n\0", "R 250 lines=1 esc= text=Ok\nERROR nul_byte\n");
    /* replies before the bad one are delivered; nothing after it */
    CHECK_SPLITS("250 2.1.0 Ok\r\n250-x\r\n550 y\r\n250 Ok\r\n",
                 "R 250 lines=1 esc=2.1.0 text=Ok\nERROR code_mismatch\n");
    /* the first offending byte decides the reason, however the bytes came */
    CHECK_SPLITS("2x\0\r\n", "ERROR syntax\n");
    CHECK_SPLITS("250-a\r\n2\0", "ERROR nul_byte\n");
    CHECK_SPLITS("250-a\r\n26\0", "ERROR code_mismatch\n");

    /* the error sticks, even for good bytes, until dsr_init */
    dsr_t d;
    dsr_reply_t r;
    size_t used;
    dsr_init(&d);
    assert_int_equal(feed_str(&d, "250-a\r\n251 b\r\n", &used, &r), DSR_ERROR);
    assert_int_equal(used, 0);
    assert_int_equal(dsr_error(&d), DSR_ERR_MISMATCH);
    assert_int_equal(feed_str(&d, "250 Ok\r\n", &used, &r), DSR_ERROR);
    assert_int_equal(used, 0);
    dsr_init(&d);
    assert_int_equal(dsr_error(&d), DSR_ERR_NONE);
    assert_int_equal(feed_str(&d, "250 Ok\r\n", &used, &r), DSR_REPLY);
    assert_int_equal(r.code, 250);

    assert_string_equal(dsr_err_name(DSR_ERR_NONE), "none");
    assert_string_equal(dsr_err_name(DSR_ERR_TOO_LONG), "line_too_long");
    assert_string_equal(dsr_err_name((dsr_err_t)99), "?");
}

/* A line of exactly `total` octets: "250 xxx...x" then CRLF (or LF). */
static char *long_line(size_t total, int crlf, const char *before, const char *after)
{
    size_t b = strlen(before), a = strlen(after), eol = crlf ? 2 : 1;
    char *s = malloc(b + total + a + 1);
    assert_non_null(s);
    memcpy(s, before, b);
    memcpy(s + b, "250 ", 4);
    memset(s + b + 4, 'x', total - 4 - eol);
    memcpy(s + b + total - eol, crlf ? "\r\n" : "\n", eol);
    memcpy(s + b + total, after, a + 1);
    return s;
}

static void test_line_max(void **state)
{
    (void)state;
    for (int crlf = 0; crlf <= 1; crlf++) {
        /* exactly DSR_LINE_MAX octets with the line end: accepted, also when
         * the whole line has to be gathered in the carry */
        char *s = long_line(DSR_LINE_MAX, crlf, "250 Ok\r\n", "221 Bye\r\n");
        size_t len = strlen(s);
        tu_log_t whole = drive_whole(s, len);
        assert_non_null(strstr(whole.buf, "R 250 lines=1 esc= text=Ok\nR 250 lines=1 esc= text=xxx"));
        assert_non_null(strstr(whole.buf, "\nR 221 lines=1 esc= text=Bye\nEND\n"));
        tu_free_log(&whole);
        check_splits(s, len, NULL);
        free(s);

        /* one more: refused */
        s = long_line(DSR_LINE_MAX + 1, crlf, "250 Ok\r\n", "221 Bye\r\n");
        check_splits(s, strlen(s), "R 250 lines=1 esc= text=Ok\nERROR line_too_long\n");
        free(s);
    }

    /* a line that never ends is refused once DSR_LINE_MAX octets without an
     * LF are in, not buffered without end */
    char *s = malloc(4 * DSR_LINE_MAX);
    assert_non_null(s);
    memcpy(s, "250 ", 4);
    memset(s + 4, 'x', 4 * DSR_LINE_MAX - 4);
    check_splits(s, DSR_LINE_MAX - 1, "END pending\n");
    check_splits(s, DSR_LINE_MAX, "ERROR line_too_long\n");
    tu_log_t l = drive_whole(s, 4 * DSR_LINE_MAX);
    assert_log(&l, "ERROR line_too_long\n", "4x line");
    tu_free_log(&l);
    /* a NUL past the limit is not looked at: the length is the reason */
    s[DSR_LINE_MAX + 10] = 0;
    check_splits(s, DSR_LINE_MAX + 20, "ERROR line_too_long\n");
    /* one before it is */
    s[DSR_LINE_MAX - 1] = 0;
    check_splits(s, DSR_LINE_MAX + 20, "ERROR nul_byte\n");
    free(s);
}

/* A long pipelined exchange, cut at pseudo-random points many times. */
static void test_random_splits(void **state)
{
    (void)state;
    const char in[] = "220 mx.example.net ESMTP\r\n"
                      "250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 35882577\r\n250-8BITMIME\r\n"
                      "250-ENHANCEDSTATUSCODES\r\n250 SMTPUTF8\r\n"
                      "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n"
                      "550-5.1.1 The email account that you tried to reach does not exist.\r\n"
                      "550-5.1.1 Please try double-checking the recipient's email\r\n"
                      "550 5.1.1 address for typos or unnecessary spaces.\n"
                      "354 Go ahead\r\n"
                      "250 2.0.0 OK 1700000000 x1si123\r\n"
                      "221 2.0.0 closing connection\r\n";
    size_t len = sizeof in - 1;
    tu_log_t whole = drive_whole(in, len);
    assert_log(&whole,
               "R 220 lines=1 esc= text=mx.example.net ESMTP\n"
               "R 250 lines=6 caps=PIPELINING,SIZE,8BITMIME,SMTPUTF8,ENHANCEDSTATUSCODES size=35882577 esc= "
               "text=SMTPUTF8\n"
               "R 250 lines=1 esc=2.1.0 text=Sender OK\n"
               "R 250 lines=1 esc=2.1.5 text=Recipient OK\n"
               "R 550 lines=3 esc=5.1.1 text=address for typos or unnecessary spaces.\n"
               "R 354 lines=1 esc= text=Go ahead\n"
               "R 250 lines=1 esc=2.0.0 text=OK 1700000000 x1si123\n"
               "R 221 lines=1 esc=2.0.0 text=closing connection\n"
               "END\n",
               "whole");
    uint32_t x = 2463534242u;
    for (int round = 0; round < 300; round++) {
        size_t cuts[64], nc = 0, pos = 0;
        for (;;) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            pos += 1 + x % 40;
            if (pos >= len || nc == 64)
                break;
            cuts[nc++] = pos;
        }
        tu_log_t l = drive(in, len, cuts, nc);
        assert_log(&l, whole.buf, "random cuts");
        tu_free_log(&l);
    }
    check_splits(in, len, whole.buf);
    tu_free_log(&whole);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_single_line), cmocka_unit_test(test_ehlo),
        cmocka_unit_test(test_pipelined),   cmocka_unit_test(test_esc),
        cmocka_unit_test(test_lmtp),        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_line_max),    cmocka_unit_test(test_random_splits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

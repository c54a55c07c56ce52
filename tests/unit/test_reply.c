/*
 * test_reply.c - reply.h: reply_line()/reply() build "CODE[-| ]ESC TEXT\r\n"
 * lines (continuations, no enhanced code, text sanitizing, cutting to
 * REPLY_LINE_MAX, all-or-nothing writes against the buffer's room) and
 * reply_esc_valid() checks enhanced status codes against RFC 3463 section 2
 * (class 2/4/5, subject and detail 1-3 digits without leading zeros).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reply.h"

#define SENTINEL 0x5a

/* An output buffer whose unused bytes hold a sentinel, to see stray writes. */
typedef struct tbuf {
    char mem[4096];
    smtp_out_t o;
} tbuf_t;

static void tb_init(tbuf_t *t, size_t cap)
{
    assert_true(cap <= sizeof t->mem);
    memset(t->mem, SENTINEL, sizeof t->mem);
    t->o.buf = t->mem;
    t->o.len = 0;
    t->o.cap = cap;
}

static void assert_untouched_from(const tbuf_t *t, size_t from)
{
    for (size_t i = from; i < sizeof t->mem; i++)
        if ((unsigned char)t->mem[i] != SENTINEL)
            fail_msg("byte %zu written beyond len (0x%02x)", i, (unsigned char)t->mem[i]);
}

static void assert_out(const tbuf_t *t, const char *want)
{
    size_t n = strlen(want);
    if (t->o.len != n || memcmp(t->o.buf, want, n) != 0)
        fail_msg("got \"%.*s\" (%zu bytes), want \"%s\" (%zu bytes)", (int)t->o.len, t->o.buf, t->o.len,
                 want, n);
    assert_untouched_from(t, t->o.len);
}

/* Every line in the buffer ends in CRLF and has no other CR or LF. */
static void assert_well_framed(const tbuf_t *t)
{
    size_t start = 0;
    for (size_t i = 0; i < t->o.len; i++) {
        char c = t->o.buf[i];
        if (c == '\n') {
            assert_true(i > start && t->o.buf[i - 1] == '\r');
            assert_true(i + 1 - start <= REPLY_LINE_MAX);
            start = i + 1;
        } else if (c == '\r') {
            assert_true(i + 1 < t->o.len && t->o.buf[i + 1] == '\n');
        } else {
            assert_true(c != '\0');
        }
    }
    assert_int_equal(start, t->o.len);
}

static bool line(tbuf_t *t, int code, bool more, const char *esc, const char *text)
{
    return reply_line(&t->o, code, more, esc, slice_make(text, strlen(text)));
}

static void test_one_line(void **state)
{
    (void)state;
    tbuf_t t;
    tb_init(&t, 1024);
    assert_true(line(&t, 250, false, "2.1.0", "Ok"));
    assert_out(&t, "250 2.1.0 Ok\r\n");
    assert_well_framed(&t);
}

static void test_reply_wrapper(void **state)
{
    (void)state;
    tbuf_t t;
    tb_init(&t, 1024);
    assert_true(reply(&t.o, 550, "5.1.1", "No such user"));
    assert_out(&t, "550 5.1.1 No such user\r\n");
}

static void test_continuation(void **state)
{
    (void)state;
    tbuf_t t;
    tb_init(&t, 1024);
    assert_true(line(&t, 250, true, NULL, "mx.example.org"));
    assert_true(line(&t, 250, true, NULL, "PIPELINING"));
    assert_true(line(&t, 250, true, NULL, "SIZE 10485760"));
    assert_true(line(&t, 250, false, NULL, "ENHANCEDSTATUSCODES"));
    assert_out(&t, "250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 10485760\r\n250 ENHANCEDSTATUSCODES\r\n");
    assert_well_framed(&t);

    tb_init(&t, 1024);
    assert_true(line(&t, 550, true, "5.7.1", "first"));
    assert_true(line(&t, 550, false, "5.7.1", "last"));
    assert_out(&t, "550-5.7.1 first\r\n550 5.7.1 last\r\n");
}

static void test_no_esc(void **state)
{
    (void)state;
    tbuf_t t;
    tb_init(&t, 1024);
    assert_true(line(&t, 220, false, NULL, "mx.example.org ESMTP"));
    assert_out(&t, "220 mx.example.org ESMTP\r\n");
}

static void test_appends(void **state)
{
    (void)state;
    tbuf_t t;
    tb_init(&t, 1024);
    memcpy(t.mem, "xyz", 3);
    t.o.len = 3;
    assert_true(line(&t, 354, false, NULL, "End data with <CR><LF>.<CR><LF>"));
    assert_out(&t, "xyz354 End data with <CR><LF>.<CR><LF>\r\n");
}

static void test_sanitize(void **state)
{
    (void)state;
    tbuf_t t;
    static const char text[] = "a\r\nb\0c\rd\ne\tf\x01g\x7fh";
    tb_init(&t, 1024);
    assert_true(reply_line(&t.o, 451, false, "4.3.0", slice_make(text, sizeof text - 1)));
    assert_out(&t, "451 4.3.0 a  b c d e f g h\r\n");
    assert_well_framed(&t);

    /* A downstream reply smuggled into text must not become a second line. */
    tb_init(&t, 1024);
    assert_true(line(&t, 250, false, "2.0.0", "queued\r\n250 2.0.0 forged"));
    assert_int_equal(t.o.len, strlen("250 2.0.0 queued  250 2.0.0 forged\r\n"));
    assert_well_framed(&t);

    /* Without an enhanced code too. */
    tb_init(&t, 1024);
    assert_true(line(&t, 220, false, NULL, "x\ny"));
    assert_out(&t, "220 x y\r\n");
}

static void test_cut_long_text(void **state)
{
    (void)state;
    static char text[2001];
    for (size_t i = 0; i < 2000; i++)
        text[i] = (char)('a' + i % 26);
    text[2000] = 0;
    static const char *escs[] = { "2.0.0", NULL, "5.7.23" };
    for (size_t e = 0; e < 3; e++) {
        for (int more = 0; more < 2; more++) {
            tbuf_t t;
            tb_init(&t, 4096);
            assert_true(reply_line(&t.o, 250, more, escs[e], slice_make(text, 2000)));
            assert_well_framed(&t);
            assert_true(t.o.len <= REPLY_LINE_MAX);
            /* Cut, not emptied: the line is filled up to the limit. */
            assert_int_equal(t.o.len, REPLY_LINE_MAX);
            char head[32];
            snprintf(head, sizeof head, "250%c%s%s", more ? '-' : ' ', escs[e] ? escs[e] : "", escs[e] ? " " : "");
            size_t hl = strlen(head);
            assert_memory_equal(t.o.buf, head, hl);
            /* What is left of the text is its prefix. */
            assert_memory_equal(t.o.buf + hl, text, t.o.len - 2 - hl);
            assert_untouched_from(&t, t.o.len);
        }
    }
}

static void test_text_at_limit(void **state)
{
    (void)state;
    /* "250 2.0.0 " is 10 bytes: 500 bytes of text make a 512-byte line. */
    static char text[502];
    memset(text, 'q', 501);
    text[501] = 0;
    tbuf_t t;
    tb_init(&t, 4096);
    assert_true(reply_line(&t.o, 250, false, "2.0.0", slice_make(text, 500)));
    assert_int_equal(t.o.len, 512);
    assert_memory_equal(t.o.buf + 10, text, 500);
    assert_memory_equal(t.o.buf + 510, "\r\n", 2);

    /* One more byte of text is cut off, the line stays at 512. */
    tb_init(&t, 4096);
    assert_true(reply_line(&t.o, 250, false, "2.0.0", slice_make(text, 501)));
    assert_int_equal(t.o.len, 512);
    assert_memory_equal(t.o.buf + 510, "\r\n", 2);
}

static void test_no_room(void **state)
{
    (void)state;
    const char *want = "250 2.1.0 Ok\r\n"; /* 14 bytes */
    tbuf_t t;

    for (size_t cap = 0; cap < 14; cap++) {
        tb_init(&t, cap);
        assert_false(line(&t, 250, false, "2.1.0", "Ok"));
        assert_int_equal(t.o.len, 0);
        assert_untouched_from(&t, 0);
    }

    /* Exactly enough room. */
    tb_init(&t, 14);
    assert_true(line(&t, 250, false, "2.1.0", "Ok"));
    assert_out(&t, want);

    /* Partly filled buffer: 5 used, 18 cap: 13 left, one short. */
    tb_init(&t, 18);
    memcpy(t.mem, "abcde", 5);
    t.o.len = 5;
    assert_false(line(&t, 250, false, "2.1.0", "Ok"));
    assert_int_equal(t.o.len, 5);
    assert_untouched_from(&t, 5);
    t.o.cap = 19;
    assert_true(line(&t, 250, false, "2.1.0", "Ok"));
    assert_out(&t, "abcde250 2.1.0 Ok\r\n");
    assert_int_equal(reply_room(&t.o), 0);
    assert_false(line(&t, 250, false, "2.1.0", "Ok"));
    assert_int_equal(t.o.len, 19);

    /* A line that would be cut: the room needed is that of the cut line. */
    static char text[2000];
    memset(text, 'z', sizeof text);
    tb_init(&t, REPLY_LINE_MAX - 1);
    assert_false(reply_line(&t.o, 250, false, "2.0.0", slice_make(text, sizeof text)));
    assert_int_equal(t.o.len, 0);
    assert_untouched_from(&t, 0);
    tb_init(&t, REPLY_LINE_MAX);
    assert_true(reply_line(&t.o, 250, false, "2.0.0", slice_make(text, sizeof text)));
    assert_int_equal(t.o.len, REPLY_LINE_MAX);
}

static bool esc_ok(const char *s)
{
    return reply_esc_valid(s, strlen(s));
}

static void test_esc_valid(void **state)
{
    (void)state;
    static const char *good[] = {
        "2.1.0", "5.7.23", "4.4.1", "2.0.0", "5.5.4", "4.7.0", "5.3.4", "2.999.999", "5.1.10", "4.10.100",
    };
    static const char *bad[] = {
        "",        "2",        "2.",       "2.1",      "2.1.",     "6.0.0",    "3.0.0",    "1.0.0",
        "0.0.0",   "2.1000.0", "2.1.1000", "x.y.z",    "2.x.0",    "2..0",     ".1.0",     "21.0",
        "2.1.0.0", "2.1.0 ",   " 2.1.0",   "2 .1.0",   "2.-1.0",   "2.1.+0",   "22.1.0",   "2,1,0",
        "2.01.0",  "2.1.00",   "2.00.1",   "5.7.023",  "2.1.0\r\n", "2.1.0x",
    };
    int wrong = 0;
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        if (!esc_ok(good[i])) {
            print_error("\"%s\" should be valid\n", good[i]);
            wrong++;
        }
    /* RFC 3463 2: "Each numeric sub-code ... MUST be expressed without
     * leading zero digits", so "2.01.0" is as wrong as "2.1000.0". */
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        if (esc_ok(bad[i])) {
            print_error("\"%s\" should be invalid (RFC 3463 2)\n", bad[i]);
            wrong++;
        }
    assert_int_equal(wrong, 0);

    /* Only `len` bytes count. */
    assert_true(reply_esc_valid("2.1.0 Ok", 5));
    assert_true(reply_esc_valid("5.7.23xyz", 6));
    assert_false(reply_esc_valid("2.1.0", 4));
    assert_false(reply_esc_valid("2.1.0", 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_line),     cmocka_unit_test(test_reply_wrapper),
        cmocka_unit_test(test_continuation), cmocka_unit_test(test_no_esc),
        cmocka_unit_test(test_appends),      cmocka_unit_test(test_sanitize),
        cmocka_unit_test(test_cut_long_text), cmocka_unit_test(test_text_at_limit),
        cmocka_unit_test(test_no_room),      cmocka_unit_test(test_esc_valid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

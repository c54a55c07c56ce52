/*
 * test_replyq.c - the ordered reply queue (core/replyq.h): slots in command
 * order, filled in any order, emitted from the head only; texts borrowed at
 * the head and parked behind it; stale sequence numbers ignored; the bound
 * respected; growth and wrap-around keep the order.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "replyq.h"

static smtp_reply_t rep(int code, const char *esc, const char *text)
{
    return (smtp_reply_t){ code, esc, slice_make(text, strlen(text)), 0 };
}

/* Pop every ready head; returns "code text|..." in a static buffer. */
static const char *drain(replyq_t *q)
{
    static char out[4096];
    size_t n = 0;
    out[0] = 0;
    const rq_slot_t *h;
    while ((h = replyq_ready(q))) {
        char esc[RQ_ESC_MAX + 1];
        smtp_reply_t r = replyq_reply(q, h, esc);
        n += (size_t)snprintf(out + n, sizeof out - n, "%s%d %s %.*s", n ? "|" : "", r.code, r.esc ? r.esc : "-",
                              (int)r.text.len, r.text.ptr);
        replyq_pop(q);
    }
    return out;
}

static void test_order(void **state)
{
    (void)state;
    replyq_t q = { 0 };
    uint32_t a, b, c;
    assert_true(replyq_push(&q, 1, 8, &a));
    assert_true(replyq_push(&q, 2, 8, &b));
    assert_true(replyq_push(&q, 3, 8, &c));
    assert_int_equal(replyq_len(&q), 3);
    smtp_reply_t r = rep(550, "5.1.1", "c refused");
    assert_true(replyq_fill(&q, c, &r, false));
    r = rep(250, "2.1.5", "b ok");
    assert_true(replyq_fill(&q, b, &r, false));
    assert_string_equal(drain(&q), ""); /* the head is open: nothing leaves */
    r = rep(250, "2.1.0", "a ok");
    assert_true(replyq_fill(&q, a, &r, true));
    assert_string_equal(drain(&q), "250 2.1.0 a ok|250 2.1.5 b ok|550 5.1.1 c refused");
    assert_int_equal(replyq_len(&q), 0);
    assert_int_equal(q.park_len, 0); /* emptied with the queue */
    replyq_free(&q);
}

static void test_parked_text_outlives_its_source(void **state)
{
    (void)state;
    replyq_t q = { 0 };
    uint32_t a, b;
    assert_true(replyq_push(&q, 1, 8, &a));
    assert_true(replyq_push(&q, 2, 8, &b));
    char *text = strdup("from the downstream"), *esc = strdup("4.4.1");
    smtp_reply_t r = { 451, esc, slice_make(text, strlen(text)), SMTP_R_PEER };
    assert_true(replyq_fill(&q, b, &r, true)); /* not the head: parked even if borrowing is allowed */
    memset(text, 'X', strlen(text));
    free(text);
    memset(esc, 'Y', strlen(esc));
    free(esc);
    r = rep(250, NULL, "ok");
    assert_true(replyq_fill(&q, a, &r, true));
    const rq_slot_t *h = replyq_ready(&q);
    assert_non_null(h);
    assert_false(h->parked);
    replyq_pop(&q);
    h = replyq_ready(&q);
    assert_true(h->parked);
    assert_int_equal(h->flags, SMTP_R_PEER);
    assert_string_equal(drain(&q), "451 4.4.1 from the downstream");
    replyq_free(&q);
}

static void test_stale_and_double(void **state)
{
    (void)state;
    replyq_t q = { 0 };
    uint32_t a;
    smtp_reply_t r = rep(250, NULL, "ok");
    assert_true(replyq_push(&q, 1, 8, &a));
    assert_true(replyq_open(&q, a));
    assert_true(replyq_fill(&q, a, &r, true));
    assert_false(replyq_fill(&q, a, &r, true)); /* filled already */
    assert_false(replyq_open(&q, a));
    drain(&q);
    assert_false(replyq_fill(&q, a, &r, true)); /* gone */
    assert_false(replyq_fill(&q, a + 1, &r, true)); /* never taken */
    assert_null(replyq_slot(&q, a));
    uint32_t b;
    assert_true(replyq_push(&q, 1, 8, &b));
    replyq_clear(&q);
    assert_false(replyq_fill(&q, b, &r, true)); /* cleared: a late verdict lands nowhere */
    assert_int_equal(replyq_len(&q), 0);
    replyq_free(&q);
}

static void test_bound_growth_and_wrap(void **state)
{
    (void)state;
    replyq_t q = { 0 };
    uint32_t seq[64];
    char t[32];
    /* many rounds: the ring wraps and grows while slots stay in order */
    for (int round = 0; round < 50; round++) {
        int n = 1 + round % 40;
        for (int i = 0; i < n; i++)
            assert_true(replyq_push(&q, 1, 40, &seq[i]));
        if (n == 40)
            assert_false(replyq_push(&q, 1, 40, &seq[40])); /* at its bound */
        for (int i = n - 1; i >= 0; i--) { /* newest first */
            snprintf(t, sizeof t, "r%d", i);
            smtp_reply_t r = rep(250, NULL, t);
            assert_true(replyq_fill(&q, seq[i], &r, i == 0));
        }
        for (int i = 0; i < n; i++) {
            const rq_slot_t *h = replyq_ready(&q);
            assert_non_null(h);
            char esc[RQ_ESC_MAX + 1];
            smtp_reply_t r = replyq_reply(&q, h, esc);
            snprintf(t, sizeof t, "r%d", i);
            assert_int_equal(r.text.len, strlen(t));
            assert_memory_equal(r.text.ptr, t, r.text.len);
            replyq_pop(&q);
        }
        assert_int_equal(replyq_len(&q), 0);
    }
    assert_true(q.cap <= 64);
    replyq_free(&q);
}

static void test_keep(void **state)
{
    (void)state;
    replyq_t q = { 0 };
    uint32_t a;
    assert_true(replyq_push(&q, 1, 8, &a));
    uint32_t off = replyq_keep(&q, "abc", 3);
    assert_int_not_equal(off, UINT32_MAX);
    slice_t k = replyq_kept(&q, off, 3);
    assert_memory_equal(k.ptr, "abc", 3);
    /* an over-long enhanced code is dropped, the text kept */
    smtp_reply_t r = { 451, "4.4.1.1.1.1.1", SLICE_LIT("long esc"), 0 };
    uint32_t b;
    assert_true(replyq_push(&q, 1, 8, &b));
    assert_true(replyq_fill(&q, b, &r, false));
    r = rep(250, NULL, "ok");
    assert_true(replyq_fill(&q, a, &r, true));
    assert_string_equal(drain(&q), "250 - ok|451 - long esc");
    replyq_free(&q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order),           cmocka_unit_test(test_parked_text_outlives_its_source),
        cmocka_unit_test(test_stale_and_double), cmocka_unit_test(test_bound_growth_and_wrap),
        cmocka_unit_test(test_keep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_dnsbl.c - DNS block- and allow-lists (core/dnsbl.h): the site list
 * in postscreen's syntax and its errors, the names asked for IPv4 and IPv6
 * clients (RFC 5782), which answers count, and the score.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "dnsbl.h"

static size_t parse_ok(const char *spec, dnsbl_site_t *s)
{
    size_t n = 0;
    char err[256] = "";
    if (dnsbl_parse(spec, s, DNSBL_SITES_MAX, &n, err, sizeof err) != 0)
        fail_msg("\"%s\": %s", spec, err);
    return n;
}

static bool match(const dnsbl_site_t *s, int a, int b, int c, int d)
{
    const uint8_t x[4] = { (uint8_t)a, (uint8_t)b, (uint8_t)c, (uint8_t)d };
    return dnsbl_match(s, x);
}

static void test_parse(void **state)
{
    (void)state;
    static dnsbl_site_t s[DNSBL_SITES_MAX];
    assert_int_equal(parse_ok("", s), 0);
    assert_int_equal(parse_ok(" ,, ", s), 0);
    size_t n = parse_ok("zen.example*2, BL.Example=127.0.0.[2..11]*1 wl.example*-2,,x.test=127.0.[1;3..4;9].2", s);
    assert_int_equal(n, 4);
    assert_string_equal(s[0].domain, "zen.example");
    assert_int_equal(s[0].weight, 2);
    assert_false(s[0].filtered);
    assert_string_equal(s[1].domain, "bl.example"); /* lower case */
    assert_int_equal(s[1].weight, 1);
    assert_true(s[1].filtered);
    assert_false(match(&s[1], 127, 0, 0, 1));
    for (int v = 2; v <= 11; v++)
        assert_true(match(&s[1], 127, 0, 0, v));
    assert_false(match(&s[1], 127, 0, 0, 12));
    assert_false(match(&s[1], 127, 0, 1, 2));
    assert_int_equal(s[2].weight, -2);
    for (int v = 0; v < 12; v++)
        assert_int_equal(match(&s[3], 127, 0, v, 2), v == 1 || v == 3 || v == 4 || v == 9);
    assert_false(match(&s[3], 127, 0, 1, 3));
    /* the default weight, a +, and the weight's bounds */
    n = parse_ok("a.test b.test*+3 c.test*1000 d.test*-1000 e.test*0", s);
    assert_int_equal(n, 5);
    assert_int_equal(s[0].weight, 1);
    assert_int_equal(s[1].weight, 3);
    assert_int_equal(s[2].weight, 1000);
    assert_int_equal(s[3].weight, -1000);
    assert_int_equal(s[4].weight, 0);
}

static void test_parse_errors(void **state)
{
    (void)state;
    static const struct {
        const char *spec, *why;
    } bad[] = {
        { "bad..example", "not a DNS domain" },
        { "-x.example", "not a DNS domain" },
        { "x-.example", "not a DNS domain" },
        { "x.example.", "not a DNS domain" },
        { "[127.0.0.1]", "not a DNS domain" },
        { "x_y.example", "not a DNS domain" },
        { "=127.0.0.2", "not a DNS domain" },
        { "x.example=127.0.0", "four octets" },
        { "x.example=127.0.0.256", "an octet" },
        { "x.example=127.0.0.[5..2]", "an octet" },
        { "x.example=127.0.0.[2..]", "an octet" },
        { "x.example=127.0.0.[2;]", "an octet" },
        { "x.example=127.0.0.[2", "an octet" },
        { "x.example=127.0.0.2.5", "expected domain" },
        { "x.example*", "the weight" },
        { "x.example*1001", "the weight" },
        { "x.example*-1001", "the weight" },
        { "x.example*two", "the weight" },
        { "x.example*2*3", "expected domain" },
        { "x.example x.EXAMPLE", "listed twice" },
    };
    static dnsbl_site_t s[DNSBL_SITES_MAX];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t n = 99;
        char err[256] = "";
        if (dnsbl_parse(bad[i].spec, s, DNSBL_SITES_MAX, &n, err, sizeof err) == 0)
            fail_msg("\"%s\" parsed", bad[i].spec);
        if (!strstr(err, bad[i].why))
            fail_msg("\"%s\": \"%s\" does not say \"%s\"", bad[i].spec, err, bad[i].why);
    }
    /* a label of 63 is a label; of 64 is not; more sites than room */
    char spec[600];
    memset(spec, 'a', 63);
    strcpy(spec + 63, ".test");
    size_t n;
    char err[256];
    assert_int_equal(dnsbl_parse(spec, s, DNSBL_SITES_MAX, &n, err, sizeof err), 0);
    memset(spec, 'a', 64);
    strcpy(spec + 64, ".test");
    assert_int_equal(dnsbl_parse(spec, s, DNSBL_SITES_MAX, &n, err, sizeof err), -1);
    assert_int_equal(dnsbl_parse("a.test b.test c.test", s, 2, &n, err, sizeof err), -1);
    assert_non_null(strstr(err, "more than 2 sites"));
}

static void test_qname(void **state)
{
    (void)state;
    static dnsbl_site_t s[1];
    assert_int_equal(parse_ok("zen.example", s), 1);
    char q[DNSBL_QNAME_MAX + 1];
    const uint8_t v4[4] = { 192, 0, 2, 7 };
    assert_true(dnsbl_qname(&s[0], AF_INET, v4, q, sizeof q));
    assert_string_equal(q, "7.2.0.192.zen.example");
    /* RFC 5782 2.4: 2001:db8:1:2:3:4:567:89ab */
    const uint8_t v6[16] = { 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x01, 0x00, 0x02,
                             0x00, 0x03, 0x00, 0x04, 0x05, 0x67, 0x89, 0xab };
    assert_true(dnsbl_qname(&s[0], AF_INET6, v6, q, sizeof q));
    assert_string_equal(q, "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.zen.example");
    /* the longest domain still fits the buffer the header sizes */
    char spec[300];
    for (int i = 0; i < 4; i++) {
        memset(spec + i * 62, 'a' + i, 61);
        spec[i * 62 + 61] = '.';
    }
    memcpy(spec + 248, "test", 5); /* 252 octets */
    assert_int_equal(parse_ok(spec, s), 1);
    assert_true(dnsbl_qname(&s[0], AF_INET6, v6, q, sizeof q));
    assert_int_equal(strlen(q), 64 + 252);
    assert_false(dnsbl_qname(&s[0], AF_INET6, v6, q, 100));
}

static void test_unfiltered_answers(void **state)
{
    (void)state;
    static dnsbl_site_t s[1];
    assert_int_equal(parse_ok("zen.example", s), 1);
    assert_true(match(&s[0], 127, 0, 0, 2));
    assert_true(match(&s[0], 127, 0, 0, 1));
    assert_true(match(&s[0], 127, 1, 2, 3));
    assert_false(match(&s[0], 192, 0, 2, 1));      /* a wildcard elsewhere: not a listing */
    assert_false(match(&s[0], 127, 255, 255, 254)); /* an error code of the list */
    assert_false(match(&s[0], 127, 255, 255, 252));
    assert_true(match(&s[0], 127, 255, 254, 1));
}

static void test_score(void **state)
{
    (void)state;
    static dnsbl_site_t s[DNSBL_SITES_MAX];
    size_t n = parse_ok("zen.example*2, bl.example=127.0.0.[2..11], wl.example*-2, other.example*5", s);
    assert_int_equal(n, 4);
    static const uint8_t zen[][4] = { { 127, 0, 0, 4 }, { 127, 0, 0, 10 } }; /* two records: counts once */
    static const uint8_t bl_no[][4] = { { 127, 0, 0, 1 } };                   /* outside the pattern */
    static const uint8_t wl[][4] = { { 127, 0, 0, 2 } };
    const uint8_t(*answers[4])[4] = { zen, bl_no, wl, NULL };
    size_t counts[4] = { 2, 1, 1, 0 };
    uint32_t hit = 0;
    assert_int_equal(dnsbl_score(s, n, answers, counts, &hit), 0); /* 2 - 2 */
    assert_int_equal(hit, 0x5);
    counts[2] = 0;
    assert_int_equal(dnsbl_score(s, n, answers, counts, &hit), 2);
    assert_int_equal(hit, 0x1);
    static const uint8_t bl_yes[][4] = { { 127, 0, 0, 1 }, { 127, 0, 0, 11 } };
    answers[1] = bl_yes;
    counts[1] = 2;
    assert_int_equal(dnsbl_score(s, n, answers, counts, &hit), 3);
    assert_int_equal(hit, 0x3);
    assert_int_equal(dnsbl_score(s, n, NULL, NULL, &hit), 0);
    assert_int_equal(hit, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_qname),        cmocka_unit_test(test_unfiltered_answers),
        cmocka_unit_test(test_score),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_addr.c - addr.h: addr_parse_path() for reverse and forward paths
 * (null path, plain and quoted local parts, address literals, source routes,
 * <postmaster>, RFC 5321 4.5.3.1 length limits, UTF-8 with and without
 * SMTPUTF8, `used`), addr_utf8_valid(), addr_domain_valid(), and the MAIL and
 * RCPT parameter parsers. Every input is parsed from a guarded copy (a
 * PROT_NONE page right after its last byte), so an over-read crashes.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "addr.h"
#include "testutil.h"

/* ---- helpers ---------------------------------------------------------- */

static const char *status_name(enum addr_status st)
{
    switch (st) {
    case ADDR_OK:
        return "ADDR_OK";
    case ADDR_SYNTAX:
        return "ADDR_SYNTAX";
    case ADDR_UTF8:
        return "ADDR_UTF8";
    case ADDR_TOO_LONG:
        return "ADDR_TOO_LONG";
    }
    return "?";
}

static const char *pstatus_name(enum param_status st)
{
    switch (st) {
    case PARAM_OK:
        return "PARAM_OK";
    case PARAM_SYNTAX:
        return "PARAM_SYNTAX";
    case PARAM_UNKNOWN:
        return "PARAM_UNKNOWN";
    }
    return "?";
}

/* A slice must be empty or lie inside [base, base + n). */
static void assert_inside(slice_t s, const char *base, size_t n, const char *what, const char *in)
{
    if (s.len == 0)
        return;
    if (s.ptr < base || s.ptr + s.len > base + n)
        fail_msg("%s of \"%s\" points outside the input", what, in);
}

static bool slice_is(slice_t s, const char *want)
{
    return slice_eq(s, slice_make(want, strlen(want)));
}

typedef struct path_want {
    const char *mailbox, *local, *domain;
    bool null, utf8, postmaster;
    size_t used; /* 0: through the last '>' of the input */
} path_want_t;

/* Parse in[0..n) from a guarded copy and return the status. */
static enum addr_status parse_n(const char *in, size_t n, enum addr_kind kind, bool utf8, const path_want_t *want)
{
    guard_buf_t g;
    guard_copy(&g, in, n);
    smtp_path_t p;
    memset(&p, 0x33, sizeof p);
    size_t used = (size_t)-1;
    const char *why = NULL;
    enum addr_status st = addr_parse_path(slice_make(g.data, n), kind, utf8, &p, &used, &why);
    if (st != ADDR_OK) {
        if (why == NULL)
            fail_msg("\"%.*s\": %s without a reason", (int)n, in, status_name(st));
    } else if (want) {
        size_t want_used = want->used;
        if (want_used == 0) {
            const char *gt = memrchr(in, '>', n);
            assert_non_null(gt);
            want_used = (size_t)(gt - in) + 1;
        }
        if (used != want_used)
            fail_msg("\"%.*s\": used %zu, want %zu", (int)n, in, used, want_used);
        assert_inside(p.mailbox, g.data, n, "mailbox", in);
        assert_inside(p.local, g.data, n, "local", in);
        assert_inside(p.domain, g.data, n, "domain", in);
        if (!slice_is(p.mailbox, want->mailbox))
            fail_msg("\"%.*s\": mailbox \"%.*s\", want \"%s\"", (int)n, in, (int)p.mailbox.len, p.mailbox.ptr,
                     want->mailbox);
        if (!slice_is(p.local, want->local))
            fail_msg("\"%.*s\": local \"%.*s\", want \"%s\"", (int)n, in, (int)p.local.len, p.local.ptr,
                     want->local);
        if (!slice_is(p.domain, want->domain))
            fail_msg("\"%.*s\": domain \"%.*s\", want \"%s\"", (int)n, in, (int)p.domain.len, p.domain.ptr,
                     want->domain);
        if (p.null != want->null || p.utf8 != want->utf8 || p.postmaster != want->postmaster)
            fail_msg("\"%.*s\": null=%d utf8=%d postmaster=%d, want %d %d %d", (int)n, in, p.null, p.utf8,
                     p.postmaster, want->null, want->utf8, want->postmaster);
    }
    guard_free(&g);
    return st;
}

static void ok_path(const char *in, enum addr_kind kind, bool utf8, path_want_t want)
{
    enum addr_status st = parse_n(in, strlen(in), kind, utf8, &want);
    if (st != ADDR_OK)
        fail_msg("\"%s\" (%s%s): %s, want ADDR_OK", in, kind == ADDR_FORWARD ? "forward" : "reverse",
                 utf8 ? ", utf8" : "", status_name(st));
}

static void bad_path_n(const char *in, size_t n, enum addr_kind kind, bool utf8, enum addr_status want)
{
    enum addr_status st = parse_n(in, n, kind, utf8, NULL);
    if (st != want)
        fail_msg("\"%.*s\" (%s%s): %s, want %s", (int)n, in, kind == ADDR_FORWARD ? "forward" : "reverse",
                 utf8 ? ", utf8" : "", status_name(st), status_name(want));
}

static void bad_path(const char *in, enum addr_kind kind, bool utf8, enum addr_status want)
{
    bad_path_n(in, strlen(in), kind, utf8, want);
}

/* Refused in both kinds, with and without SMTPUTF8. */
static void bad_all(const char *in, enum addr_status want)
{
    for (int k = 0; k < 2; k++)
        for (int u = 0; u < 2; u++)
            bad_path(in, (enum addr_kind)k, u, want);
}

/* ---- paths -------------------------------------------------------------- */

static void test_null_path(void **state)
{
    (void)state;
    path_want_t w = { "", "", "", true, false, false, 2 };
    ok_path("<>", ADDR_REVERSE, false, w);
    ok_path("<>", ADDR_REVERSE, true, w);
    ok_path("<> SIZE=100", ADDR_REVERSE, false, w);
    /* The forward path has no null form. */
    bad_path("<>", ADDR_FORWARD, false, ADDR_SYNTAX);
    bad_path("<>", ADDR_FORWARD, true, ADDR_SYNTAX);
    bad_path("<> SIZE=100", ADDR_FORWARD, false, ADDR_SYNTAX);
}

static void test_simple(void **state)
{
    (void)state;
    for (int k = 0; k < 2; k++) {
        for (int u = 0; u < 2; u++) {
            enum addr_kind kind = (enum addr_kind)k;
            ok_path("<user@example.com>", kind, u,
                    (path_want_t){ "user@example.com", "user", "example.com", false, false, false, 0 });
            ok_path("<first.last+tag@mx-1.sub.example.org>", kind, u,
                    (path_want_t){ "first.last+tag@mx-1.sub.example.org", "first.last+tag", "mx-1.sub.example.org",
                                   false, false, false, 0 });
            ok_path("<!#$%&'*+-/=?^_`{|}~@example.com>", kind, u,
                    (path_want_t){ "!#$%&'*+-/=?^_`{|}~@example.com", "!#$%&'*+-/=?^_`{|}~", "example.com", false,
                                   false, false, 0 });
            ok_path("<a@b>", kind, u, (path_want_t){ "a@b", "a", "b", false, false, false, 0 });
            ok_path("<o'brien@123.example>", kind, u,
                    (path_want_t){ "o'brien@123.example", "o'brien", "123.example", false, false, false, 0 });
            ok_path("<User@Example.COM>", kind, u,
                    (path_want_t){ "User@Example.COM", "User", "Example.COM", false, false, false, 0 });
        }
    }
}

static void test_used(void **state)
{
    (void)state;
    path_want_t w = { "user@example.com", "user", "example.com", false, false, false, 18 };
    ok_path("<user@example.com>", ADDR_REVERSE, false, w);
    ok_path("<user@example.com> SIZE=1000 BODY=8BITMIME", ADDR_REVERSE, false, w);
    ok_path("<user@example.com> NOTIFY=NEVER", ADDR_FORWARD, false, w);
    ok_path("<user@example.com>>", ADDR_FORWARD, false, w);
    ok_path("<user@example.com><x@y>", ADDR_FORWARD, false, w);
}

static void test_quoted_local(void **state)
{
    (void)state;
    for (int k = 0; k < 2; k++) {
        enum addr_kind kind = (enum addr_kind)k;
        ok_path("<\"john doe\"@example.com>", kind, false,
                (path_want_t){ "\"john doe\"@example.com", "\"john doe\"", "example.com", false, false, false, 0 });
        ok_path("<\"a\\\"b\"@example.com>", kind, false,
                (path_want_t){ "\"a\\\"b\"@example.com", "\"a\\\"b\"", "example.com", false, false, false, 0 });
        ok_path("<\"a\\\\b\"@example.com>", kind, false,
                (path_want_t){ "\"a\\\\b\"@example.com", "\"a\\\\b\"", "example.com", false, false, false, 0 });
        /* '>' and '@' inside quotes do not end anything. */
        ok_path("<\"a>b@c\"@example.com> SIZE=1", kind, false,
                (path_want_t){ "\"a>b@c\"@example.com", "\"a>b@c\"", "example.com", false, false, false, 21 });
        ok_path("<\"x,y:z <w>\"@example.com>", kind, false,
                (path_want_t){ "\"x,y:z <w>\"@example.com", "\"x,y:z <w>\"", "example.com", false, false, false,
                               0 });
    }
    bad_all("<\"unterminated@example.com>", ADDR_SYNTAX);
    bad_all("<\"a\"b@example.com>", ADDR_SYNTAX);
    bad_all("<a\"b\"@example.com>", ADDR_SYNTAX);
    bad_all("<\"a\x01\"@example.com>", ADDR_SYNTAX);   /* qtextSMTP: no controls */
    bad_all("<\"a\\\x01\"@example.com>", ADDR_SYNTAX); /* quoted-pairSMTP: %d92 %d32-126 */
    bad_all("<\"a\\\"@example.com>", ADDR_SYNTAX);     /* the escape eats the closing quote */
    bad_all("<\"a\tb\"@example.com>", ADDR_SYNTAX);
}

static void test_bad_local(void **state)
{
    (void)state;
    bad_all("<@example.com>", ADDR_SYNTAX);
    bad_all("<.a@example.com>", ADDR_SYNTAX);
    bad_all("<a.@example.com>", ADDR_SYNTAX);
    bad_all("<a..b@example.com>", ADDR_SYNTAX);
    bad_all("<us er@example.com>", ADDR_SYNTAX);
    bad_all("<us\x01er@example.com>", ADDR_SYNTAX);
    bad_all("<us(er@example.com>", ADDR_SYNTAX);
    bad_all("<us[er@example.com>", ADDR_SYNTAX);
    bad_all("<user@@example.com>", ADDR_SYNTAX);
    bad_all("<a@b@example.com>", ADDR_SYNTAX);
    bad_path_n("<a\0b@example.com>", 17, ADDR_REVERSE, false, ADDR_SYNTAX);
    bad_path_n("<a\0b@example.com>", 17, ADDR_FORWARD, true, ADDR_SYNTAX);
}

static void test_brackets(void **state)
{
    (void)state;
    bad_all("", ADDR_SYNTAX);
    bad_all("<", ADDR_SYNTAX);
    bad_all(">", ADDR_SYNTAX);
    bad_all("<user@example.com", ADDR_SYNTAX);
    bad_all("<user@example.com SIZE=10", ADDR_SYNTAX);
    bad_all("user@example.com>", ADDR_SYNTAX);
    bad_all("user@example.com", ADDR_SYNTAX);
    bad_all(" <user@example.com>", ADDR_SYNTAX);
    bad_all("< user@example.com>", ADDR_SYNTAX);
    bad_all("<user@example.com >", ADDR_SYNTAX);
    bad_all("<<user@example.com>>", ADDR_SYNTAX);
    bad_all("<user@example.com", ADDR_SYNTAX);
    bad_all("<user>", ADDR_SYNTAX);
    bad_all("<user@>", ADDR_SYNTAX);
    bad_all("<@>", ADDR_SYNTAX);
    bad_all("<\">", ADDR_SYNTAX);
}

static void test_domain_syntax(void **state)
{
    (void)state;
    bad_all("<user@example.com.>", ADDR_SYNTAX);
    bad_all("<user@example..com>", ADDR_SYNTAX);
    bad_all("<user@.example.com>", ADDR_SYNTAX);
    bad_all("<user@.>", ADDR_SYNTAX);
    bad_all("<user@-example.com>", ADDR_SYNTAX);
    bad_all("<user@example-.com>", ADDR_SYNTAX);
    bad_all("<user@ex_ample.com>", ADDR_SYNTAX);
    bad_all("<user@exa mple.com>", ADDR_SYNTAX);
    bad_all("<user@example.com:25>", ADDR_SYNTAX);
}

static void test_address_literals(void **state)
{
    (void)state;
    for (int k = 0; k < 2; k++) {
        enum addr_kind kind = (enum addr_kind)k;
        ok_path("<user@[192.0.2.1]>", kind, false,
                (path_want_t){ "user@[192.0.2.1]", "user", "[192.0.2.1]", false, false, false, 0 });
        ok_path("<user@[255.255.255.255]>", kind, false,
                (path_want_t){ "user@[255.255.255.255]", "user", "[255.255.255.255]", false, false, false, 0 });
        ok_path("<user@[IPv6:2001:db8::1]>", kind, false,
                (path_want_t){ "user@[IPv6:2001:db8::1]", "user", "[IPv6:2001:db8::1]", false, false, false, 0 });
        ok_path("<user@[IPv6:2001:db8:0:0:0:0:0:1]>", kind, false,
                (path_want_t){ "user@[IPv6:2001:db8:0:0:0:0:0:1]", "user", "[IPv6:2001:db8:0:0:0:0:0:1]", false,
                               false, false, 0 });
        ok_path("<user@[IPv6:::1]>", kind, false,
                (path_want_t){ "user@[IPv6:::1]", "user", "[IPv6:::1]", false, false, false, 0 });
        ok_path("<user@[IPv6:::ffff:192.0.2.1]>", kind, false,
                (path_want_t){ "user@[IPv6:::ffff:192.0.2.1]", "user", "[IPv6:::ffff:192.0.2.1]", false, false,
                               false, 0 });
    }
    bad_all("<user@[192.0.2.256]>", ADDR_SYNTAX);
    bad_all("<user@[192.0.2]>", ADDR_SYNTAX);
    bad_all("<user@[192.0.2.1.5]>", ADDR_SYNTAX);
    bad_all("<user@[192.0.2.1>", ADDR_SYNTAX);
    bad_all("<user@192.0.2.1]>", ADDR_SYNTAX);
    bad_all("<user@[1234.0.2.1]>", ADDR_SYNTAX);
    bad_all("<user@[192.0.2.]>", ADDR_SYNTAX);
    bad_all("<user@[192.0.2.1 ]>", ADDR_SYNTAX);
    bad_all("<user@[]>", ADDR_SYNTAX);
    bad_all("<user@[IPv6:]>", ADDR_SYNTAX);
    bad_all("<user@[IPv6:zzz]>", ADDR_SYNTAX);
    bad_all("<user@[IPv6:2001:db8:::1]>", ADDR_SYNTAX);
    bad_all("<user@[IPv6:1::2::3]>", ADDR_SYNTAX);
    bad_all("<user@[IPv6:12345::1]>", ADDR_SYNTAX);
    bad_all("<user@[IPv6:1:2:3:4:5:6:7]>", ADDR_SYNTAX);
    bad_all("<user@[IPv6:1:2:3:4:5:6:7:8:9]>", ADDR_SYNTAX);
    bad_all("<user@[IPv6:2001:db8::1>", ADDR_SYNTAX);
    bad_all("<user@[2001:db8::1]>", ADDR_SYNTAX);
}

static void test_source_route(void **state)
{
    (void)state;
    for (int k = 0; k < 2; k++) {
        enum addr_kind kind = (enum addr_kind)k;
        ok_path("<@a.example,@b.example:user@c.example>", kind, false,
                (path_want_t){ "user@c.example", "user", "c.example", false, false, false, 0 });
        ok_path("<@a.example:user@c.example> SIZE=5", kind, false,
                (path_want_t){ "user@c.example", "user", "c.example", false, false, false, 27 });
    }
    /* At-domain = "@" Domain: no address literal in a route (RFC 5321 4.1.2). */
    bad_all("<@[192.0.2.1]:user@c.example>", ADDR_SYNTAX);
    bad_all("<@a.example:>", ADDR_SYNTAX);
    bad_all("<@:user@c.example>", ADDR_SYNTAX);
    bad_all("<@a.example,user@c.example>", ADDR_SYNTAX);
    bad_all("<@a.example,:user@c.example>", ADDR_SYNTAX);
    bad_all("<@a..example:user@c.example>", ADDR_SYNTAX);
    bad_all("<a.example:user@c.example>", ADDR_SYNTAX);
    bad_all("<@a.example:@b.example:user@c.example>", ADDR_SYNTAX);
}

static void test_postmaster(void **state)
{
    (void)state;
    ok_path("<postmaster>", ADDR_FORWARD, false,
            (path_want_t){ "postmaster", "postmaster", "", false, false, true, 0 });
    ok_path("<Postmaster>", ADDR_FORWARD, false,
            (path_want_t){ "Postmaster", "Postmaster", "", false, false, true, 0 });
    ok_path("<POSTMASTER> NOTIFY=NEVER", ADDR_FORWARD, true,
            (path_want_t){ "POSTMASTER", "POSTMASTER", "", false, false, true, 12 });
    /* With a domain it is an ordinary mailbox. */
    ok_path("<postmaster@example.com>", ADDR_FORWARD, false,
            (path_want_t){ "postmaster@example.com", "postmaster", "example.com", false, false, false, 0 });
    ok_path("<postmaster@example.com>", ADDR_REVERSE, false,
            (path_want_t){ "postmaster@example.com", "postmaster", "example.com", false, false, false, 0 });
    /* Only the forward path has the domain-less form. */
    bad_path("<postmaster>", ADDR_REVERSE, false, ADDR_SYNTAX);
    bad_path("<postmaster>", ADDR_REVERSE, true, ADDR_SYNTAX);
    /* Not a prefix match, not quoted. */
    bad_path("<postmasters>", ADDR_FORWARD, false, ADDR_SYNTAX);
    bad_path("<postmaste>", ADDR_FORWARD, false, ADDR_SYNTAX);
    bad_path("<postmaster@>", ADDR_FORWARD, false, ADDR_SYNTAX);
}

/* n octets of domain: labels of at most 50 octets. */
static void make_domain(char *out, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t left = n - i;
        size_t lab = left > 51 ? 50 : left;
        if (left > 51 && left - 51 < 2)
            lab = 48; /* never leave a 0-octet last label */
        for (size_t j = 0; j < lab; j++)
            out[i++] = (char)('a' + j % 26);
        if (i < n)
            out[i++] = '.';
    }
    out[n] = 0;
}

static void test_lengths(void **state)
{
    (void)state;
    char local[100], dom[400], in[600], mb[600];

    /* Local part: 64 octets fit, 65 do not. */
    memset(local, 'l', 64);
    local[64] = 0;
    snprintf(in, sizeof in, "<%s@example.com>", local);
    snprintf(mb, sizeof mb, "%s@example.com", local);
    ok_path(in, ADDR_FORWARD, false, (path_want_t){ mb, local, "example.com", false, false, false, 0 });
    ok_path(in, ADDR_REVERSE, false, (path_want_t){ mb, local, "example.com", false, false, false, 0 });
    memset(local, 'l', 65);
    local[65] = 0;
    snprintf(in, sizeof in, "<%s@example.com>", local);
    bad_all(in, ADDR_TOO_LONG);
    /* A quoted local part counts its quotes. */
    memset(local, 'q', 62);
    local[62] = 0;
    snprintf(in, sizeof in, "<\"%s\"@example.com>", local);
    assert_int_equal(parse_n(in, strlen(in), ADDR_FORWARD, false, NULL), ADDR_OK);
    memset(local, 'q', 63);
    local[63] = 0;
    snprintf(in, sizeof in, "<\"%s\"@example.com>", local);
    bad_all(in, ADDR_TOO_LONG);

    /* Path: 256 octets with the brackets fit (mailbox 254), 257 do not. */
    memset(local, 'l', 64);
    local[64] = 0;
    make_domain(dom, 189);
    assert_int_equal(strlen(dom), 189);
    snprintf(in, sizeof in, "<%s@%s>", local, dom);
    assert_int_equal(strlen(in), 256);
    snprintf(mb, sizeof mb, "%s@%s", local, dom);
    ok_path(in, ADDR_FORWARD, false, (path_want_t){ mb, local, dom, false, false, false, 0 });
    ok_path(in, ADDR_REVERSE, false, (path_want_t){ mb, local, dom, false, false, false, 0 });
    make_domain(dom, 190);
    snprintf(in, sizeof in, "<%s@%s>", local, dom);
    assert_int_equal(strlen(in), 257);
    bad_all(in, ADDR_TOO_LONG);
    memset(local, 'l', 10);
    local[10] = 0;
    make_domain(dom, 244);
    snprintf(in, sizeof in, "<%s@%s>", local, dom);
    assert_int_equal(strlen(in), 257);
    bad_all(in, ADDR_TOO_LONG);

    /* Very long input, no '>' for a long way: refused, no over-read. */
    static char huge[5000];
    huge[0] = '<';
    memset(huge + 1, 'a', sizeof huge - 1);
    for (int k = 0; k < 2; k++) {
        enum addr_status st = parse_n(huge, sizeof huge, (enum addr_kind)k, false, NULL);
        assert_true(st == ADDR_TOO_LONG || st == ADDR_SYNTAX);
    }
}

/* Domain over 255 octets (RFC 5321 4.5.3.1.2): too long, not a syntax error. */
static void test_domain_too_long(void **state)
{
    (void)state;
    char dom[400], in[600];
    make_domain(dom, 256);
    snprintf(in, sizeof in, "<a@%s>", dom);
    bad_all(in, ADDR_TOO_LONG);
    make_domain(dom, 300);
    snprintf(in, sizeof in, "<a@%s>", dom);
    bad_all(in, ADDR_TOO_LONG);
}

static void test_utf8_paths(void **state)
{
    (void)state;
    /* "пользователь@пример.рф" and a UTF-8 domain with an ASCII local part. */
    const char *u1 = "<\xd0\xbf\xd0\xbe\xd0\xbb\xd1\x8c\xd0\xb7\xd0\xbe\xd0\xb2\xd0\xb0\xd1\x82\xd0\xb5\xd0\xbb\xd1\x8c"
                     "@\xd0\xbf\xd1\x80\xd0\xb8\xd0\xbc\xd0\xb5\xd1\x80.\xd1\x80\xd1\x84>";
    const char *u2 = "<user@b\xc3\xbc" "cher.example>";
    const char *u3 = "<j\xc3\xb6rg@example.com>";
    const char *u4 = "<\"j\xc3\xb6rg x\"@example.com>";
    const char *all[] = { u1, u2, u3, u4 };
    for (size_t i = 0; i < 4; i++) {
        for (int k = 0; k < 2; k++) {
            enum addr_kind kind = (enum addr_kind)k;
            bad_path(all[i], kind, false, ADDR_UTF8);
            const char *in = all[i];
            size_t n = strlen(in);
            const char *at = memrchr(in, '@', n);
            char mb[300], lp[300], dm[300];
            snprintf(mb, sizeof mb, "%.*s", (int)(n - 2), in + 1);
            snprintf(lp, sizeof lp, "%.*s", (int)(at - in - 1), in + 1);
            snprintf(dm, sizeof dm, "%.*s", (int)(in + n - 1 - at - 1), at + 1);
            ok_path(in, kind, true, (path_want_t){ mb, lp, dm, false, true, false, 0 });
        }
    }
    /* Plain ASCII is never flagged. */
    ok_path("<user@example.com>", ADDR_FORWARD, true,
            (path_want_t){ "user@example.com", "user", "example.com", false, false, false, 0 });

    /* Invalid UTF-8: refused with SMTPUTF8 as syntax, refused without it. */
    static const char *badu[] = {
        "<\xc3\x28@example.com>",             /* bad continuation */
        "<\xc0\xafx@example.com>",            /* overlong '/' */
        "<\xe0\x80\xaf@example.com>",         /* overlong */
        "<a\xed\xa0\x80@example.com>",        /* surrogate U+D800 */
        "<a\xf4\x90\x80\x80@example.com>",    /* U+110000 */
        "<a\xe2\x82@example.com>",            /* truncated */
        "<a\xff@example.com>",                /* never valid */
        "<\x80@example.com>",                 /* lone continuation */
        "<user@b\xc3.example>",               /* truncated in the domain */
        "<user@\xed\xbf\xbf.example>",        /* surrogate in the domain */
        "<user@example.\xc3>",                /* truncated right before '>' */
        "<\"\xc3\"@example.com>",             /* truncated inside quotes */
    };
    for (size_t i = 0; i < sizeof badu / sizeof *badu; i++) {
        for (int k = 0; k < 2; k++) {
            bad_path(badu[i], (enum addr_kind)k, true, ADDR_SYNTAX);
            enum addr_status st = parse_n(badu[i], strlen(badu[i]), (enum addr_kind)k, false, NULL);
            if (st != ADDR_SYNTAX && st != ADDR_UTF8)
                fail_msg("\"%s\" without SMTPUTF8: %s", badu[i], status_name(st));
        }
    }
    /* Truncated at the very end of the input (the guard page follows). */
    bad_path_n("<a\xe2", 3, ADDR_FORWARD, true, ADDR_SYNTAX);
    bad_path_n("<a@b\xf0\x90", 6, ADDR_FORWARD, true, ADDR_SYNTAX);
    bad_path_n("<\"\\", 3, ADDR_FORWARD, true, ADDR_SYNTAX);
    bad_path_n("<@a", 3, ADDR_FORWARD, true, ADDR_SYNTAX);
    bad_path_n("<a@[1.2.3.4", 11, ADDR_FORWARD, true, ADDR_SYNTAX);
    bad_path_n("<a@[IPv6:", 9, ADDR_FORWARD, true, ADDR_SYNTAX);
}

/* Every prefix of valid paths is refused and read within bounds. */
static void test_prefixes(void **state)
{
    (void)state;
    static const char *paths[] = {
        "<user@example.com>",
        "<\"a\\\"b c\"@example.com>",
        "<@a.example,@b.example:user@[IPv6:2001:db8::ffff:192.0.2.1]>",
        "<user@[192.0.2.1]>",
        "<j\xc3\xb6rg@b\xc3\xbc" "cher.example>",
    };
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
        size_t n = strlen(paths[i]);
        for (int k = 0; k < 2; k++) {
            assert_int_equal(parse_n(paths[i], n, (enum addr_kind)k, true, NULL), ADDR_OK);
            for (size_t m = 0; m < n; m++) {
                enum addr_status st = parse_n(paths[i], m, (enum addr_kind)k, true, NULL);
                if (st == ADDR_OK)
                    fail_msg("prefix %zu of \"%s\" accepted", m, paths[i]);
            }
        }
    }
}

/* ---- addr_utf8_valid ---------------------------------------------------- */

static bool utf8_ok(const char *s, size_t n)
{
    guard_buf_t g;
    guard_copy(&g, s, n);
    bool r = addr_utf8_valid(slice_make(g.data, n));
    guard_free(&g);
    return r;
}

static void test_utf8_valid(void **state)
{
    (void)state;
    static const char *good[] = {
        "",
        "abc",
        "\xc2\x80",         /* U+0080 */
        "\xc3\xa9",         /* U+00E9 */
        "\xdf\xbf",         /* U+07FF */
        "\xe0\xa0\x80",     /* U+0800 */
        "\xe2\x82\xac",     /* U+20AC */
        "\xed\x9f\xbf",     /* U+D7FF */
        "\xee\x80\x80",     /* U+E000 */
        "\xef\xbf\xbf",     /* U+FFFF */
        "\xf0\x90\x80\x80", /* U+10000 */
        "\xf0\x90\x8d\x88", /* U+10348 */
        "\xf4\x8f\xbf\xbf", /* U+10FFFF */
        "a\xc3\xa9z\xe2\x82\xac\xf0\x9f\x98\x80.",
    };
    static const char *bad[] = {
        "\x80",                 /* lone continuation */
        "\xbf",
        "a\x80z",
        "\xc0\x80",             /* overlong NUL */
        "\xc0\xaf",             /* overlong '/' */
        "\xc1\xbf",             /* overlong */
        "\xe0\x80\x80",         /* overlong 3 */
        "\xe0\x9f\xbf",         /* overlong U+07FF */
        "\xf0\x80\x80\x80",     /* overlong 4 */
        "\xf0\x8f\xbf\xbf",     /* overlong U+FFFF */
        "\xed\xa0\x80",         /* U+D800 */
        "\xed\xbf\xbf",         /* U+DFFF */
        "\xed\xb0\x80",         /* U+DC00 */
        "\xf4\x90\x80\x80",     /* U+110000 */
        "\xf5\x80\x80\x80",
        "\xf7\xbf\xbf\xbf",
        "\xf8\x88\x80\x80\x80", /* 5 octets */
        "\xfc\x84\x80\x80\x80\x80",
        "\xfe",
        "\xff",
        "\xc3",                 /* truncated */
        "\xe2\x82",
        "\xf0\x90\x8d",
        "a\xc3",
        "\xc3\x28",             /* bad continuation */
        "\xe2\x28\xa1",
        "\xe2\x82\x28",
        "\xf0\x28\x8c\xbc",
        "\xf0\x90\x28\xbc",
        "\xf0\x90\x8d\x28",
        "\xc3\xa9\xa9",         /* one continuation too many */
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        if (!utf8_ok(good[i], strlen(good[i])))
            fail_msg("good[%zu] refused", i);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        if (utf8_ok(bad[i], strlen(bad[i])))
            fail_msg("bad[%zu] accepted", i);
    /* The slice's length counts, not a NUL. */
    assert_true(utf8_ok("\0", 1));
    assert_false(utf8_ok("\xc3\xa9", 1));
    assert_false(utf8_ok("\xf0\x90\x8d\x88", 3));
    /* Every prefix of a 4-octet sequence but the whole is truncated. */
    for (size_t m = 1; m < 4; m++)
        assert_false(utf8_ok("\xf4\x8f\xbf\xbf", m));
}

/* ---- addr_domain_valid -------------------------------------------------- */

static bool dom_ok(const char *s, bool utf8)
{
    size_t n = strlen(s);
    guard_buf_t g;
    guard_copy(&g, s, n);
    bool r = addr_domain_valid(slice_make(g.data, n), utf8);
    guard_free(&g);
    return r;
}

static void test_domain_valid(void **state)
{
    (void)state;
    static const char *good[] = {
        "example.com",
        "a",
        "localhost",
        "mx-1.sub.example.org",
        "123.example",
        "xn--bcher-kva.example",
        "EXAMPLE.COM",
        "a-b--c.d",
        "[192.0.2.1]",
        "[0.0.0.0]",
        "[IPv6:2001:db8::1]",
        "[IPv6:::1]",
        "[IPv6:::]",
        "[IPv6:2001:db8:0:0:0:0:0:1]",
        "[IPv6:::ffff:192.0.2.1]",
        "[IPv6:1:2:3:4:5:6:192.0.2.1]",
    };
    static const char *bad[] = {
        "",
        ".",
        "example.com.",
        ".example.com",
        "example..com",
        "-example.com",
        "example-.com",
        "exa-.mple.com",
        "ex_ample.com",
        "exa mple.com",
        "example.com ",
        "exa\x01mple.com",
        "user@example.com",
        "[192.0.2.256]",
        "[192.0.2]",
        "[192.0.2.1.5]",
        "[192.0.2.1",
        "192.0.2.1]",
        "[]",
        "[1.2.3.-4]",
        "[IPv6:]",
        "[IPv6:zzzz::1]",
        "[IPv6:1:2:3:4:5:6:7:8:9]",
        "[IPv6:1:2:3:4:5:6:7]",
        "[IPv6:1::2::3]",
        "[IPv6:12345::1]",
        "[IPv6:2001:db8:::1]",
        "[IPv6:1.2.3.4]",
        "[2001:db8::1]",
        "b\xc3\xbc" "cher.example", /* without SMTPUTF8 */
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        if (!dom_ok(good[i], false))
            fail_msg("\"%s\" refused", good[i]);
        if (!dom_ok(good[i], true))
            fail_msg("\"%s\" refused with utf8", good[i]);
    }
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        if (dom_ok(bad[i], false))
            fail_msg("\"%s\" accepted", bad[i]);
    assert_true(dom_ok("b\xc3\xbc" "cher.example", true));
    assert_true(dom_ok("\xd0\xbf\xd1\x80\xd0\xb8\xd0\xbc\xd0\xb5\xd1\x80.\xd1\x80\xd1\x84", true));
    assert_false(dom_ok("b\xff.example", true));
    assert_false(dom_ok("b\xc3.example", true));
    assert_false(dom_ok("b\xed\xa0\x80.example", true));
    assert_false(dom_ok("example.com.", true));

    char dom[400];
    make_domain(dom, 255);
    assert_true(dom_ok(dom, false));
    make_domain(dom, 256);
    assert_false(dom_ok(dom, false));
}

/* ---- MAIL and RCPT parameters ------------------------------------------- */

static enum param_status mail_params(const char *s, smtp_mail_params_t *out)
{
    size_t n = strlen(s);
    guard_buf_t g;
    guard_copy(&g, s, n);
    memset(out, 0x5a, sizeof *out);
    const char *why = NULL;
    enum param_status st = addr_parse_mail_params(slice_make(g.data, n), out, &why);
    guard_free(&g);
    if (st != PARAM_OK && why == NULL)
        fail_msg("\"%s\": %s without a reason", s, pstatus_name(st));
    return st;
}

static void mail_ok(const char *s, bool has_size, uint64_t size, int body, bool smtputf8)
{
    smtp_mail_params_t p;
    enum param_status st = mail_params(s, &p);
    if (st != PARAM_OK)
        fail_msg("\"%s\": %s, want PARAM_OK", s, pstatus_name(st));
    if (p.has_size != has_size || p.size != size || p.body != body || p.smtputf8 != smtputf8)
        fail_msg("\"%s\": has_size=%d size=%llu body=%d smtputf8=%d, want %d %llu %d %d", s, p.has_size,
                 (unsigned long long)p.size, p.body, p.smtputf8, has_size, (unsigned long long)size, body,
                 smtputf8);
}

static void mail_bad(const char *s, enum param_status want)
{
    smtp_mail_params_t p;
    enum param_status st = mail_params(s, &p);
    if (st != want)
        fail_msg("\"%s\": %s, want %s", s, pstatus_name(st), pstatus_name(want));
}

/* Refused, as syntax or as unknown: both are defensible. */
static void mail_refused(const char *s)
{
    smtp_mail_params_t p;
    enum param_status st = mail_params(s, &p);
    if (st == PARAM_OK)
        fail_msg("\"%s\": PARAM_OK, want a refusal", s);
}

static void test_mail_params_ok(void **state)
{
    (void)state;
    mail_ok("", false, 0, BODY_UNSPEC, false);
    mail_ok(" SIZE=1000", true, 1000, BODY_UNSPEC, false);
    mail_ok(" SIZE=0", true, 0, BODY_UNSPEC, false);
    mail_ok(" size=1000", true, 1000, BODY_UNSPEC, false);
    mail_ok(" SIZE=12345678901234567890", true, 12345678901234567890ull, BODY_UNSPEC, false);
    mail_ok(" BODY=8BITMIME", false, 0, BODY_8BITMIME, false);
    mail_ok(" BODY=7BIT", false, 0, BODY_7BIT, false);
    mail_ok(" body=7bit", false, 0, BODY_7BIT, false);
    mail_ok(" Body=8bitMime", false, 0, BODY_8BITMIME, false);
    mail_ok(" SMTPUTF8", false, 0, BODY_UNSPEC, true);
    mail_ok(" smtputf8", false, 0, BODY_UNSPEC, true);
    mail_ok(" SIZE=1000 BODY=8BITMIME SMTPUTF8", true, 1000, BODY_8BITMIME, true);
    mail_ok(" SMTPUTF8 BODY=7BIT SIZE=42", true, 42, BODY_7BIT, true);
}

static void test_mail_params_bad(void **state)
{
    (void)state;
    mail_bad(" SIZE=abc", PARAM_SYNTAX);
    mail_bad(" SIZE=", PARAM_SYNTAX);
    mail_bad(" SIZE", PARAM_SYNTAX);
    mail_bad(" SIZE=-1", PARAM_SYNTAX);
    mail_bad(" SIZE=+1", PARAM_SYNTAX);
    mail_bad(" SIZE=1x", PARAM_SYNTAX);
    mail_bad(" SIZE=1.5", PARAM_SYNTAX);
    mail_bad(" SIZE=123456789012345678901", PARAM_SYNTAX);      /* 21 digits */
    mail_bad(" SIZE=000000000000000000000001", PARAM_SYNTAX);   /* 1*20DIGIT */
    mail_bad(" SIZE=1000 SIZE=1000", PARAM_SYNTAX);
    mail_bad(" SIZE=1 BODY=7BIT size=2", PARAM_SYNTAX);
    mail_bad(" BODY=", PARAM_SYNTAX);
    mail_bad(" BODY", PARAM_SYNTAX);
    mail_bad(" SMTPUTF8=x", PARAM_SYNTAX);
    mail_bad(" SMTPUTF8=", PARAM_SYNTAX);
    mail_bad(" =1", PARAM_SYNTAX);
    mail_bad(" FOO=BAR", PARAM_UNKNOWN);
    mail_bad(" FOO", PARAM_UNKNOWN);
    mail_bad(" AUTH=<>", PARAM_UNKNOWN);
    mail_bad(" RET=FULL", PARAM_UNKNOWN);
    mail_bad(" ENVID=abc", PARAM_UNKNOWN);
    mail_bad(" SIZE=100 FOO=BAR", PARAM_UNKNOWN);
    /* BINARYMIME needs CHUNKING, which is not advertised; an unknown BODY
     * value is refused either way. */
    mail_refused(" BODY=BINARYMIME");
    mail_refused(" BODY=FOO");
    mail_refused(" BODY=8BITMIMEX");
    mail_refused(" BODY=7BIT BODY=8BITMIME");
    mail_refused(" SMTPUTF8 SMTPUTF8");

    /* A SIZE too big for 64 bits must never wrap to a small number. */
    smtp_mail_params_t p;
    enum param_status st = mail_params(" SIZE=99999999999999999999", &p);
    if (st == PARAM_OK && p.size < 10000000000000000000ull)
        fail_msg("SIZE=99999999999999999999 wrapped to %llu", (unsigned long long)p.size);
    st = mail_params(" SIZE=18446744073709551616", &p);
    if (st == PARAM_OK && p.size < 10000000000000000000ull)
        fail_msg("SIZE=18446744073709551616 wrapped to %llu", (unsigned long long)p.size);
}

static void test_rcpt_params(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        enum param_status want;
    } cases[] = {
        { "", PARAM_OK },
        { " NOTIFY=NEVER", PARAM_UNKNOWN },
        { " NOTIFY=SUCCESS,FAILURE", PARAM_UNKNOWN },
        { " ORCPT=rfc822;user@example.com", PARAM_UNKNOWN },
        { " SIZE=100", PARAM_UNKNOWN },
        { " FOO", PARAM_UNKNOWN },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t n = strlen(cases[i].in);
        guard_buf_t g;
        guard_copy(&g, cases[i].in, n);
        const char *why = NULL;
        enum param_status st = addr_parse_rcpt_params(slice_make(g.data, n), &why);
        guard_free(&g);
        if (st != cases[i].want)
            fail_msg("RCPT \"%s\": %s, want %s", cases[i].in, pstatus_name(st), pstatus_name(cases[i].want));
        if (st != PARAM_OK && why == NULL)
            fail_msg("RCPT \"%s\": no reason", cases[i].in);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_null_path),        cmocka_unit_test(test_simple),
        cmocka_unit_test(test_used),             cmocka_unit_test(test_quoted_local),
        cmocka_unit_test(test_bad_local),        cmocka_unit_test(test_brackets),
        cmocka_unit_test(test_domain_syntax),    cmocka_unit_test(test_address_literals),
        cmocka_unit_test(test_source_route),     cmocka_unit_test(test_postmaster),
        cmocka_unit_test(test_lengths),          cmocka_unit_test(test_domain_too_long),
        cmocka_unit_test(test_utf8_paths),
        cmocka_unit_test(test_prefixes),         cmocka_unit_test(test_utf8_valid),
        cmocka_unit_test(test_domain_valid),     cmocka_unit_test(test_mail_params_ok),
        cmocka_unit_test(test_mail_params_bad),  cmocka_unit_test(test_rcpt_params),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

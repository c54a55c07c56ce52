/*
 * test_spf_record.c - spf_record.h: RFC 7208's record grammar (section 12,
 * with the rules of sections 4.6, 5 and 7.1) and the rewrite the SPF helper
 * hands libspf2.
 *
 * Every mechanism and modifier, with and without qualifiers; CIDR lengths at
 * and over their limits (ip4, ip6, a/mx dual CIDR); macro strings (every
 * letter in both cases, transformers, delimiters, %%, %_, %-, bad escapes);
 * domain-spec and toplabel rules; case; spacing; the empty record; bytes
 * outside printable ASCII; the output capacity at its edge; and, for every
 * record accepted anywhere in this file, that rewriting the rewrite gives
 * the same text (the normal form). test_rfc_forbids is the list of records
 * the RFC forbids, one rule each: it fails if any of them gets through.
 * Cases borrow from the openspf.org suite (tests/spf/suite), read by hand.
 *
 * Each record and each output buffer sits at the very end of a page followed
 * by a PROT_NONE page, so a read past the record's NUL or a write past the
 * capacity crashes (ASan does not watch mmap'd memory). The module is linked
 * alone: it needs no core/, no libspf2.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "guard.h"
#include "spf_record.h"

/* The reasons spf_record_rewrite() gives. */
#define BAD_ALL "bad all"
#define BAD_INCLUDE "bad domain in include: or exists:"
#define BAD_A_MX "bad a or mx"
#define BAD_PTR "bad ptr"
#define BAD_IP "bad ip4 or ip6"
#define UNKNOWN "unknown mechanism"
#define EXP_TWICE "exp= twice"
#define REDIRECT_TWICE "redirect= twice"
#define BAD_EXP "bad exp= domain"
#define BAD_REDIRECT "bad redirect= domain"
#define BAD_MACRO "bad macro in a modifier"
#define NOT_ASCII "a character outside printable ASCII"
#define TOO_LONG "record too long"
#define NOT_SPF "not an SPF record"

/* The last output, copied out of its guarded buffer. */
static char got[1 << 20];

/* rewrite rec (NUL included, guarded) into a guarded buffer of cap bytes. */
static const char *rewrite_cap(const char *rec, size_t cap)
{
    guard_buf_t gr, go;
    size_t n = strlen(rec);
    memcpy(guard_alloc(&gr, n + 1), rec, n + 1);
    char *out = guard_alloc(&go, cap);
    const char *why = spf_record_rewrite(gr.data, out, cap);
    if (cap > sizeof got)
        abort();
    if (cap)
        memcpy(got, out, strnlen(out, cap) < cap ? strnlen(out, cap) + 1 : cap);
    else
        got[0] = '\0';
    if (cap && !memchr(out, '\0', cap))
        fail_msg("output not NUL-terminated within its capacity %zu", cap);
    guard_free(&gr);
    guard_free(&go);
    return why;
}

static const char *rewrite(const char *rec)
{
    return rewrite_cap(rec, SPF_RECORD_OUT_CAP(strlen(rec)));
}

/* Text with the bytes outside printable ASCII as \xNN, for messages. */
static const char *show(const char *s)
{
    static char buf[4][512];
    static int k;
    char *b = buf[k++ % 4];
    size_t o = 0;
    for (; *s && o + 8 < sizeof buf[0]; s++) {
        unsigned char c = (unsigned char)*s;
        o += (size_t)snprintf(b + o, sizeof buf[0] - o, c < 0x20 || c > 0x7e ? "\\x%02x" : "%c", c);
    }
    b[o] = '\0';
    return b;
}

/* rec is accepted as want, and want is its own rewrite. */
static void accept_at(const char *file, int line, const char *rec, const char *want)
{
    const char *why = rewrite(rec);
    if (why)
        fail_msg("%s:%d: \"%s\" refused (%s), want \"%s\"", file, line, show(rec), why, show(want));
    if (strcmp(got, want) != 0)
        fail_msg("%s:%d: \"%s\" gave \"%s\", want \"%s\"", file, line, show(rec), show(got), show(want));
    why = rewrite(want);
    if (why || strcmp(got, want) != 0)
        fail_msg("%s:%d: the rewrite \"%s\" is not a normal form: %s \"%s\"", file, line, show(want),
                 why ? why : "gave", why ? "" : show(got));
}

static void reject_at(const char *file, int line, const char *rec, const char *want)
{
    const char *why = rewrite(rec);
    if (!why)
        fail_msg("%s:%d: \"%s\" accepted as \"%s\", want refused (%s)", file, line, show(rec), show(got), want);
    if (strcmp(why, want) != 0)
        fail_msg("%s:%d: \"%s\" refused with \"%s\", want \"%s\"", file, line, show(rec), why, want);
    if (got[0] != '\0')
        fail_msg("%s:%d: \"%s\" refused but the output holds \"%s\"", file, line, show(rec), show(got));
}

#define ACCEPT(rec, want) accept_at(__FILE__, __LINE__, (rec), (want))
#define REJECT(rec, why) reject_at(__FILE__, __LINE__, (rec), (why))

/* One term that the rewrite keeps as written (most of them). */
static void term_ok_at(const char *file, int line, const char *term)
{
    char rec[512], want[512];
    snprintf(rec, sizeof rec, "v=spf1 %s", term);
    snprintf(want, sizeof want, "v=spf1 %s", term);
    accept_at(file, line, rec, want);
    snprintf(rec, sizeof rec, "v=spf1 %s -all", term); /* and not at the end */
    snprintf(want, sizeof want, "v=spf1 %s -all", term);
    accept_at(file, line, rec, want);
}

static void term_bad_at(const char *file, int line, const char *term, const char *why)
{
    char rec[512];
    snprintf(rec, sizeof rec, "v=spf1 %s", term);
    reject_at(file, line, rec, why);
    snprintf(rec, sizeof rec, "v=spf1 a %s -all", term); /* an error anywhere counts */
    reject_at(file, line, rec, why);
}

#define TERM_OK(t) term_ok_at(__FILE__, __LINE__, (t))
#define TERM_BAD(t, why) term_bad_at(__FILE__, __LINE__, (t), (why))

/* Lists of cases, in order: terms kept as written (why NULL) or refused
 * for `why`, records refused for `why`; NULL ends a list. */
static void terms_at(const char *file, int line, const char *why, const char *const *terms)
{
    for (; *terms; terms++) {
        if (why)
            term_bad_at(file, line, *terms, why);
        else
            term_ok_at(file, line, *terms);
    }
}

static void rejects_at(const char *file, int line, const char *why, const char *const *recs)
{
    for (; *recs; recs++)
        reject_at(file, line, *recs, why);
}

#define TERMS_OK(...) terms_at(__FILE__, __LINE__, NULL, (const char *const[]){__VA_ARGS__, NULL})
#define TERMS_BAD(why, ...) terms_at(__FILE__, __LINE__, (why), (const char *const[]){__VA_ARGS__, NULL})
#define REJECTS(why, ...) rejects_at(__FILE__, __LINE__, (why), (const char *const[]){__VA_ARGS__, NULL})

/*
 * One place to put a piece (a macro string, a domain, a CIDR length) and
 * what must come of it: `fmt` has one %s for the piece; a term is checked
 * as TERM_OK or TERM_BAD, a whole record (fmt starts with "v=spf1 ") as
 * ACCEPT, its rewrite `want` (NULL: as written), or REJECT.
 */
typedef struct use {
    const char *fmt;
    const char *why; /* the refusal; NULL: accepted */
    const char *want;
} use_t;

/* Every piece in every use, in that order. */
static void uses_at(const char *file, int line, const char *const *pieces, size_t npieces, const use_t *uses,
                    size_t nuses)
{
    char t[512];
    for (size_t i = 0; i < npieces; i++) {
        for (size_t u = 0; u < nuses; u++) {
            const use_t *x = &uses[u];
            snprintf(t, sizeof t, x->fmt, pieces[i]);
            if (strncmp(x->fmt, "v=spf1 ", 7) != 0) {
                if (x->why)
                    term_bad_at(file, line, t, x->why);
                else
                    term_ok_at(file, line, t);
            } else if (x->why) {
                reject_at(file, line, t, x->why);
            } else {
                accept_at(file, line, t, x->want ? x->want : t);
            }
        }
    }
}

/* The CIDR lengths from..to, in decimal, as pieces. */
static void lengths_at(const char *file, int line, unsigned from, unsigned to, const use_t *uses, size_t nuses)
{
    for (unsigned v = from; v <= to; v++) {
        char n[16];
        const char *piece = n;
        snprintf(n, sizeof n, "%u", v);
        uses_at(file, line, &piece, 1, uses, nuses);
    }
}

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
#define USES(pieces, uses) uses_at(__FILE__, __LINE__, (pieces), COUNT(pieces), (uses), COUNT(uses))
#define LENGTHS(from, to, uses) lengths_at(__FILE__, __LINE__, (from), (to), (uses), COUNT(uses))

/* ---- version and selection ---- */

static void test_is_spf(void **state)
{
    (void)state;
    assert_true(spf_record_is_spf("v=spf1"));
    assert_true(spf_record_is_spf("v=spf1 "));
    assert_true(spf_record_is_spf("v=spf1 -all"));
    assert_true(spf_record_is_spf("V=SPF1 -all")); /* ABNF strings are case-insensitive */
    assert_true(spf_record_is_spf("v=Spf1  mx"));
    assert_true(spf_record_is_spf("v=spf1 \x80")); /* selected; the check refuses it later */
    assert_false(spf_record_is_spf(""));
    assert_false(spf_record_is_spf("v"));
    assert_false(spf_record_is_spf("v=spf"));
    assert_false(spf_record_is_spf("v=spf10")); /* section 4.5: SP or the end after the version */
    assert_false(spf_record_is_spf("v=spf1-all"));
    assert_false(spf_record_is_spf("v=spf1\t-all"));
    assert_false(spf_record_is_spf("v=spf2.0/pra -all"));
    assert_false(spf_record_is_spf(" v=spf1 -all"));
    assert_false(spf_record_is_spf("spf1 -all"));
    assert_false(spf_record_is_spf("v =spf1"));
    assert_false(spf_record_is_spf("\xff=spf1"));
}

static void test_not_spf_refused(void **state)
{
    (void)state;
    REJECTS(NOT_SPF, "", "v=spf", "v=spf10", "v=spf1all", " v=spf1 -all", /* no space before the version */
            "v=spf1\t-all", "spf2.0/mfrom -all", "hello world");
}

static void test_empty_and_spaces(void **state)
{
    (void)state;
    ACCEPT("v=spf1", "v=spf1"); /* the empty record: neutral, section 4.7 */
    ACCEPT("v=spf1 ", "v=spf1");
    ACCEPT("v=spf1        ", "v=spf1");
    ACCEPT("V=SPF1", "v=spf1");
    ACCEPT("v=spf1 -all", "v=spf1 -all");
    ACCEPT("v=spf1  -all", "v=spf1 -all");
    ACCEPT("v=spf1 a  -all", "v=spf1 a -all"); /* two-spaces */
    ACCEPT("v=spf1 a -all ", "v=spf1 a -all"); /* trailing-space */
    ACCEPT("v=spf1   a     mx   -all    ", "v=spf1 a mx -all");
    ACCEPT("V=Spf1 A MX -ALL", "v=spf1 A MX -ALL"); /* terms keep their case */
    ACCEPT("v=spf1 -all\0 garbage", "v=spf1 -all"); /* a C string ends at NUL */
}

/* ---- mechanisms ---- */

static void test_all(void **state)
{
    (void)state;
    TERMS_OK("all", "+all", "-all", "~all", "?all", "ALL", "-aLl");
    ACCEPT("v=spf1 all -all", "v=spf1 all -all"); /* later terms are moot, not wrong */
    ACCEPT("v=spf1 -all a mx", "v=spf1 -all a mx");
    TERMS_BAD(UNKNOWN, "all.", /* all-dot */
              "-all.");
    TERMS_BAD(BAD_ALL, "-all:foobar", /* all-arg */
              "all:", "-all/8",       /* all-cidr */
              "all//64");
    TERMS_BAD(UNKNOWN, "alll", "al");
}

static void test_include(void **state)
{
    (void)state;
    TERMS_OK("include:example.com", "include:example.com.", "-include:_spf.example.com", "?include:webmail.pair.com",
             "INCLUDE:Example.COM", "include:%{d}", "include:_spfh.%{d2}", "include:o.spf.example.com.");
    TERMS_BAD(BAD_INCLUDE, "include",                                      /* include-empty-domain, include-none */
              "include:", "include:example", "include:ip5.example.com/24", /* include-cidr */
              "include:ip5.example.com//64", "include/24");
    TERM_BAD("includes:example.com", UNKNOWN);
}

static void test_exists(void **state)
{
    (void)state;
    TERMS_OK("exists:mail.example.com", "exists:%{i}.%{l2r-}.user.%{d2}", "exists:%{ir}.%{v}._spf.%{d}",
             "-exists:%{p}.should.example.com", "~exists:%{l1r+-}.user.%{d2}", "EXISTS:%{I}.example.com");
    TERMS_BAD(BAD_INCLUDE, "exists",        /* exists-implicit */
              "exists:",                    /* exists-empty-domain */
              "exists:mail.example.com/24", /* exists-cidr */
              "exists:%(ir).sbl.example.com", "exists:foo%(ir).sbl.example.com", "exists:foo%.sbl.example.com");
}

static void test_a_mx(void **state)
{
    (void)state;
    static const char *const m[] = {"a", "mx", "A", "Mx"};
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
        static const char *const ok[] = {"",
                                         ":example.com",
                                         ":example.com.",
                                         "/24",
                                         "//64",
                                         "/24//64",
                                         ":example.com/24",
                                         ":example.com//64",
                                         ":example.com/24//64",
                                         ":%{d}/24",
                                         ":%{d}",
                                         ":foo:bar/baz.example.com", /* a-colon-domain */
                                         ":foo.example.xn--zckzah",
                                         ":foo.example.com/24"};
        static const char *const bad[] = {":",
                                          ":/24",
                                          "/",
                                          "//",
                                          "/24/",
                                          "/24/64", /* the ip6 length needs two slashes */
                                          "//64/24",
                                          "/24//",
                                          "/24///64",
                                          ":example.com:8080",
                                          ":example.com/",
                                          ":example",
                                          ":abc.123",
                                          ":111.222.33.44",
                                          ":museum",
                                          ":museum.",
                                          ":example.-com",
                                          ":foo-bar",
                                          "-b",
                                          "x"};
        char t[128];
        for (size_t k = 0; k < sizeof ok / sizeof ok[0]; k++) {
            snprintf(t, sizeof t, "%s%s", m[i], ok[k]);
            TERM_OK(t);
        }
        for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
            snprintf(t, sizeof t, "%s%s", m[i], bad[k]);
            /* "a-b", "ax", "mxx": another name */
            TERM_BAD(t, bad[k][0] == '-' || bad[k][0] == 'x' ? UNKNOWN : BAD_A_MX);
        }
    }
    /* a/0 and mx/0 have no equivalent libspf2 reads right: kept as they are */
    ACCEPT("v=spf1 a/0 -all", "v=spf1 a/0 -all");
    ACCEPT("v=spf1 mx//0 -all", "v=spf1 mx//0 -all");
    ACCEPT("v=spf1 -mx:example.com/0//0", "v=spf1 -mx:example.com/0//0");
    ACCEPT("v=spf1 a=:example.com", "v=spf1"); /* a modifier named "a" */
}

static void test_ptr(void **state)
{
    (void)state;
    TERMS_OK("ptr", "ptr:example.com", "ptr:example.Com", "?ptr:%{d}", "-PTR");
    TERMS_BAD(BAD_PTR, "ptr:", /* ptr-empty-domain */
              "ptr/0",         /* ptr-cidr */
              "ptr//64", "ptr:example.com/24", "ptr:example");
    TERM_BAD("ptrs", UNKNOWN);
}

static void test_ip4(void **state)
{
    (void)state;
    TERMS_OK("ip4:192.0.2.1", "ip4:0.0.0.0", "ip4:255.255.255.255", "-IP4:192.0.2.0/24", "~Ip4:10.0.0.0/8");
    TERMS_BAD(BAD_IP, "ip4",                                    /* bare-ip4 */
              "ip4:", "ip4:/24", "ip4:1.2.3",                   /* bad-ip4-short */
              "ip4:1.2.3.4.5", "ip4:1.2.3.256", "ip4:01.2.3.4", /* qnum: no leading zero */
              "ip4:1.2.3.4:8080",                               /* bad-ip4-port */
              "ip4:1.2.3.4//32",                                /* ip4-dual-cidr */
              "ip4:1.2.3.4/24//64", "ip4:1.2.3.4/", "ip4:1.2.3.4/24/", "ip4:1.2.3.4/2a", "ip4:::1", "ip4:example.com",
              "ip4:0x7f.1.1.1");
    TERM_BAD("ip5:1.2.3.4", UNKNOWN);
}

static void test_ip6(void **state)
{
    (void)state;
    TERMS_OK("ip6:::1", "ip6:::", "ip6:2001:db8::/32", "ip6:Cafe:Babe:8000::/33", "ip6:::FFFF:1.2.3.4",
             "?IP6:2001:DB8:0:0:0:0:0:1");
    TERMS_BAD(BAD_IP, "ip6",               /* bare-ip6 */
              "ip6:", "ip6:::1.1.1.1//33", /* no dual CIDR for ip6 */
              "ip6::CAFE::BABE",           /* ip6-bad1 */
              "ip6:2001:db8:::1", "ip6:1.2.3.4", "ip6:2001:db8::/", "ip6:2001:db8::g", "ip6:[::1]", "ip6:fe80::1%eth0");
}

static void test_qualifiers(void **state)
{
    (void)state;
    static const char *const mech[] = {"all",   "include:example.com", "a",       "mx:example.com/24",
                                       "ptr",   "ip4:192.0.2.0/24",    "ip6:::1", "exists:%{i}.x.example",
                                       "a//64", "ptr:example.org"};
    static const char q[] = {'+', '-', '~', '?'};
    char t[96];
    for (size_t i = 0; i < sizeof mech / sizeof mech[0]; i++) {
        TERM_OK(mech[i]);
        for (size_t k = 0; k < sizeof q; k++) {
            snprintf(t, sizeof t, "%c%s", q[k], mech[i]);
            TERM_OK(t); /* the qualifier as written, "+" too */
            snprintf(t, sizeof t, "%c%c%s", q[k], q[(k + 1) % sizeof q], mech[i]);
            TERM_BAD(t, UNKNOWN); /* one qualifier at most */
        }
    }
    TERMS_BAD(UNKNOWN, "+", "-", "!all", "*all", "-redirect=example.com", /* modifiers take none */
              "?exp=example.com", "+foo=bar");
}

/* ---- CIDR lengths at and over their limits ---- */

static void test_cidr_limits(void **state)
{
    (void)state;
    static const use_t len4[] = {
        {"ip4:192.0.2.1/%s", NULL, NULL}, {"a/%s", NULL, NULL}, {"mx:example.com/%s//128", NULL, NULL}};
    static const use_t len6[] = {{"ip6:2001:db8::/%s", NULL, NULL}, {"a//%s", NULL, NULL}, {"mx/32//%s", NULL, NULL}};
    LENGTHS(1, 32, len4);
    LENGTHS(1, 128, len6);
    static const char *const over4[] = {"33", "64", "99", "100", "128", "999"};
    static const use_t over4_uses[] = {
        {"ip4:192.0.2.1/%s", BAD_IP, NULL}, /* cidr4-33 */
        {"a/%s", BAD_A_MX, NULL},           /* a-bad-cidr4 */
        {"mx/%s//64", BAD_A_MX, NULL},
    };
    USES(over4, over4_uses);
    static const char *const over6[] = {"129", "200", "999"};
    static const use_t over6_uses[] = {
        {"ip6:2001:db8::/%s", BAD_IP, NULL}, /* cidr6-129 */
        {"a//%s", BAD_A_MX, NULL},           /* a-bad-cidr6 */
        {"mx/24//%s", BAD_A_MX, NULL},
    };
    USES(over6, over6_uses);
    /* leading zeros and more than three digits: syntax errors (cidr4-032) */
    static const char *const odd[] = {"00", "01", "032", "0032", "1000", "0128", "00000"};
    static const use_t odd_uses[] = {{"ip4:1.2.3.4/%s", BAD_IP, NULL},
                                     {"ip6:::1/%s", BAD_IP, NULL},
                                     {"a/%s", BAD_A_MX, NULL},
                                     {"a//%s", BAD_A_MX, NULL}};
    USES(odd, odd_uses);
    char t[96], want[128];
    /* /0 goes into libspf2 as the two halves of the address space */
    static const char *const qual[] = {"", "+", "-", "~", "?"};
    for (size_t i = 0; i < sizeof qual / sizeof qual[0]; i++) {
        const char *q = qual[i];
        snprintf(t, sizeof t, "v=spf1 %sip4:192.0.2.1/0", q);
        snprintf(want, sizeof want, "v=spf1 %sip4:0.0.0.0/1 %sip4:128.0.0.0/1", q, q);
        ACCEPT(t, want);
        snprintf(t, sizeof t, "v=spf1 %sip6:2001:db8::1/0 -all", q);
        snprintf(want, sizeof want, "v=spf1 %sip6:::/1 %sip6:8000::/1 -all", q, q);
        ACCEPT(t, want);
    }
    ACCEPT("v=spf1 IP4:1.1.1.1/0 -all", "v=spf1 ip4:0.0.0.0/1 ip4:128.0.0.0/1 -all"); /* cidr4-0 */
    ACCEPT("v=spf1 ip6:::1.1.1.1/0", "v=spf1 ip6:::/1 ip6:8000::/1");                 /* cidr6-0 */
    ACCEPT("v=spf1 ip4:0.0.0.0/0 ip6:::/0", "v=spf1 ip4:0.0.0.0/1 ip4:128.0.0.0/1 ip6:::/1 ip6:8000::/1");
    ACCEPT("v=spf1 ip4:10.0.0.0/10", "v=spf1 ip4:10.0.0.0/10"); /* ends in 0, not /0 */
    ACCEPT("v=spf1 ip6:::/120", "v=spf1 ip6:::/120");
}

/* ---- modifiers ---- */

static void test_redirect_exp(void **state)
{
    (void)state;
    ACCEPT("v=spf1 redirect=example.com", "v=spf1 redirect=example.com");
    ACCEPT("v=spf1 redirect=example.com a", "v=spf1 a redirect=example.com"); /* evaluated last */
    ACCEPT("v=spf1 ip4:1.2.3.4 redirect=t2.example.com", "v=spf1 ip4:1.2.3.4 redirect=t2.example.com");
    ACCEPT("v=spf1 redirect=t5.example.com ~all", "v=spf1 ~all"); /* an "all" makes it moot */
    ACCEPT("v=spf1 -all redirect=example.com", "v=spf1 -all");
    ACCEPT("v=spf1 ?all redirect=%{d}.example.com", "v=spf1 ?all");
    ACCEPT("v=spf1 exp=explain.example.com -all", "v=spf1 -all exp=explain.example.com");
    ACCEPT("v=spf1 -all exp=exp.example.net", "v=spf1 -all exp=exp.example.net");
    ACCEPT("v=spf1 redirect=r.example exp=e.example mx", "v=spf1 mx exp=e.example redirect=r.example");
    ACCEPT("v=spf1 exp=exp1.example.com redirect=e2.example.com",
           "v=spf1 exp=exp1.example.com redirect=e2.example.com");
    ACCEPT("v=spf1 exp=msg.example.com. -all", "v=spf1 -all exp=msg.example.com.");
    ACCEPT("v=spf1 redirect=%{d}.d.spf.example.com.", "v=spf1 redirect=%{d}.d.spf.example.com.");
    ACCEPT("v=spf1 -all exp=%{ir}.example.com", "v=spf1 -all exp=%{ir}.example.com");
    ACCEPT("v=spf1 -all exp=msg8.%{D2}", "v=spf1 -all exp=msg8.%{D2}");
    ACCEPT("v=spf1 REDIRECT=Example.COM", "v=spf1 REDIRECT=Example.COM"); /* names in any case */
    ACCEPT("v=spf1 Exp=X.example -ALL", "v=spf1 -ALL Exp=X.example");
    REJECTS(REDIRECT_TWICE, "v=spf1 redirect=a.example.com redirect=b.example.com",
            "v=spf1 redirect=e12.example.com -all redirect=e12.example.com", /* redirect-twice */
            "v=spf1 redirect=a.example.com REDIRECT=a.example.com");
    REJECTS(EXP_TWICE, "v=spf1 exp=e13msg.example.com -all exp=e11msg.example.com", /* exp-twice */
            "v=spf1 eXp=a.example.com EXP=a.example.com");
    REJECTS(BAD_REDIRECT,
            "v=spf1 redirect=", "v=spf1 ?all redirect=", /* redirect-empty-domain: checked even when moot */
            "v=spf1 redirect=-all ?all", "v=spf1 redirect=example", "v=spf1 redirect=example.com/24",
            "v=spf1 redirect=%{c}.example.com");
    REJECTS(BAD_EXP, "v=spf1 exp= -all",                           /* exp-empty-domain */
            "v=spf1 exp=-all", "v=spf1 -all exp=%{r}.example.com", /* exp-only-macro-char */
            "v=spf1 -all exp=%{t}.example.com", "v=spf1 -all exp=%{c}", "v=spf1 -all exp=example.123");
    TERMS_BAD(UNKNOWN, "redirect", "redirect:t2.example.com", /* redirect-is-modifier */
              "exp:e.example.com");
}

static void test_unknown_modifiers(void **state)
{
    (void)state;
    /* checked, then left out: they have no effect (section 6) */
    ACCEPT("v=spf1 foo=bar -all", "v=spf1 -all");
    ACCEPT("v=spf1 moo.cow-far_out=man:dog/cat ip4:1.2.3.4 -all", "v=spf1 ip4:1.2.3.4 -all");
    ACCEPT("v=spf1 default=pass", "v=spf1"); /* default-modifier-obsolete */
    ACCEPT("v=spf1 default=+", "v=spf1");
    ACCEPT("v=spf1 foo= -all", "v=spf1 -all");  /* an empty macro-string */
    ACCEPT("v=spf1 foo=bar foo=baz", "v=spf1"); /* unknown ones may repeat */
    ACCEPT("v=spf1 a=b mx", "v=spf1 mx");       /* "a" is a modifier name too */
    ACCEPT("v=spf1 X-Y_Z.9=%{d}.%{l}%%%_%-{}=", "v=spf1");
    ACCEPT("v=spf1 foo=a=b", "v=spf1");
    ACCEPT("v=spf1 foo=%{i} exp=e.example.com foo=1 a", "v=spf1 a exp=e.example.com");
    ACCEPT("v=spf1 foo=%{d}} -all", "v=spf1 -all"); /* "}" is a literal */
    ACCEPT("v=spf1 foo=.", "v=spf1");               /* no domain-end needed */
    REJECTS(BAD_MACRO, "v=spf1 -all foo=%abc",      /* unknown-modifier-syntax */
            "v=spf1 foo=%", "v=spf1 foo=abc%", "v=spf1 foo=%{c}", "v=spf1 foo=%{d");
    TERMS_BAD(UNKNOWN, "1up=foo",                            /* invalid-modifier: a name starts with ALPHA */
              "=all",                                        /* empty-modifier-name */
              "_x=y", "-x=y", "moo.cow/far_out=man:dog/cat", /* "/" is not in a name */
              "moo.cow:far_out=man:dog/cat", "moo",          /* detect-errors-anywhere */
              "foo!=bar");
}

/* ---- macro strings ---- */

static void test_macro_letters(void **state)
{
    (void)state;
    static const char ok[] = "slodiphvSLODIPHV";
    static const char bad[] = "crtCRTabefgjkmnquwxyzAZ0_.{";
    static const use_t ok_uses[] = {
        {"exists:%s", NULL, NULL}, {"a:%s.example.com", NULL, NULL}, {"v=spf1 x=%s", NULL, "v=spf1"}};
    static const use_t bad_uses[] = {
        {"exists:%s", BAD_INCLUDE, NULL}, /* c, r, t: explanation text only (section 7.3) */
        {"a:%s.example.com", BAD_A_MX, NULL},
        {"v=spf1 x=%s", BAD_MACRO, NULL},
    };
    char macro[8];
    const char *piece = macro;
    for (size_t i = 0; ok[i]; i++) {
        snprintf(macro, sizeof macro, "%%{%c}", ok[i]);
        uses_at(__FILE__, __LINE__, &piece, 1, ok_uses, COUNT(ok_uses));
    }
    for (size_t i = 0; bad[i]; i++) {
        snprintf(macro, sizeof macro, "%%{%c}", bad[i]);
        uses_at(__FILE__, __LINE__, &piece, 1, bad_uses, COUNT(bad_uses));
    }
}

static void test_macro_transformers(void **state)
{
    (void)state;
    static const char *const ok[] = {"%{d1}",       "%{d2}",    "%{d9}",   "%{d10}",  "%{d127}", "%{d999}",
                                     "%{dr}",       "%{dR}",    "%{d2r}",  "%{D2R}",  "%{ir}",   "%{d.}",
                                     "%{l-}",       "%{l+}",    "%{l,}",   "%{l/}",   "%{l_}",   "%{l=}",
                                     "%{l.-+,/_=}", "%{l1r+-}", "%{l2r-}", "%{d3r.}", "%{ir.-}", "%{h--}"};
    static const char *const bad[] = {"%{d0}",  "%{d00}", "%{d01}", "%{d1000}", "%{d0r}", "%{drr}", "%{dr2}", "%{d2.r}",
                                      "%{d-r}", "%{d:}",  "%{d;}",  "%{d%}",    "%{d{}",  "%{d\\}", "%{d|}",  "%{d",
                                      "%{d2",   "%{d2r",  "%{d2r.", "%{",       "%{}",    "%{dd}",  "%{d2x}"};
    static const use_t ok_uses[] = {{"exists:%s", NULL, NULL}, {"include:%s.example.com", NULL, NULL}};
    static const use_t bad_uses[] = {
        {"exists:%s", BAD_INCLUDE, NULL}, {"ptr:%s.example.com", BAD_PTR, NULL}, {"v=spf1 x=%s", BAD_MACRO, NULL}};
    USES(ok, ok_uses);
    USES(bad, bad_uses);
    /* after a macro-expand, "}" is a literal: fine, but not a domain-end */
    TERM_OK("exists:%{d}}x.example.com");
    TERM_BAD("exists:%{d}}x", BAD_INCLUDE);
}

static void test_macro_escapes(void **state)
{
    (void)state;
    TERMS_OK("a:macro%%percent%_%_space%-url-space.example.com", /* macro-mania-in-domain */
             "exists:%%.example.com", "exists:%_.example.com", "exists:%-.example.com",
             "exists:foo%%", /* a domain-end may be any macro-expand */
             "exists:foo.%_", "exists:%-");
    ACCEPT("v=spf1 x=%%{d}", "v=spf1"); /* "%%" then the literals "{d}" */
    static const char *const bad[] = {"%", "%a", "%x", "%(ir)", "%}", "%.", "%0", "%{", "%%%", "x%", "%D"};
    static const use_t bad_uses[] = {
        {"exists:%s.example.com", BAD_INCLUDE, NULL}, /* invalid-macro-char, -embedded-, -trailing- */
        {"exists:example.com%s", BAD_INCLUDE, NULL},
        {"v=spf1 y=%s", BAD_MACRO, NULL},
    };
    USES(bad, bad_uses);
}

/* ---- domain-spec and toplabel ---- */

static void test_domain_spec(void **state)
{
    (void)state;
    /* where a domain-spec goes, and what a bad one is refused as */
    static const use_t ok_uses[] = {
        {"a:%s", NULL, NULL}, {"include:%s", NULL, NULL}, {"v=spf1 redirect=%s", NULL, NULL}};
    static const use_t bad_uses[] = {
        {"a:%s", BAD_A_MX, NULL},
        {"mx:%s/24", BAD_A_MX, NULL},
        {"include:%s", BAD_INCLUDE, NULL},
        {"ptr:%s", BAD_PTR, NULL},
        {"v=spf1 redirect=%s", BAD_REDIRECT, NULL},
        {"v=spf1 exp=%s", BAD_EXP, NULL},
    };
    static const char *const ok[] = {
        "example.com",
        "example.com.",
        "EXAMPLE.COM",
        "foo.example.xn--zckzah", /* a hyphen between alphanumerics */
        "foo.c0m",
        "foo.9a",
        "foo.a9",
        "foo.1-2", /* no letter needed with a hyphen */
        "foo.a--b",
        "foo.0-0",
        ".com", /* the macro-string before the domain-end may be empty */
        "mail.example...com",
        "a123456789012345678901234567890123456789012345678901234567890123.example.com", /* a DNS limit, not syntax */
        "%{H}.bar",
        "%{d}",
        "x.%{d}",
        "%{d}.com",
        "-.com",
        "_spf.example.com",
        "!$&'()*+,;=~^`|.example.com", /* macro-literals: %x21-24 / %x26-7E */
    };
    static const char *const bad[] = {
        "example",
        "museum",
        "museum.",
        "abc.123", /* a-numeric-toplabel */
        "111.222.33.44",
        "example.-com",
        "example.com-",
        "example.-",
        "example.c_m",
        "example.com..",
        "example.com:8080",
        "foo-bar",
        "%{d}x",
        "%{d}.",
        "%{d}.123",
        ".",
        "..",
        "example.",
        "example.c%m",
        "example.co}",
    };
    USES(ok, ok_uses);
    USES(bad, bad_uses);
}

/* ---- bytes ---- */

static void test_bytes_outside_ascii(void **state)
{
    (void)state;
    static const char *const recs[] = {
        "v=spf1 a:\xEF\xBB\xBFgarbage.example.net -all", /* non-ascii-mech */
        "v=spf1 \x80"
        "a:example.net -all",
        "v=spf1 a:example.net \x96"
        "all",                                   /* non-ascii-result */
        "v=spf1 a:ctrl.example.com\x0dptr -all", /* control-char-policy */
        "v=spf1 ip4:192.0.2.5\x0a include:example.com ~all",
        "v=spf1 a:foo.example.com\x01", /* a NUL in the TXT data: the DNS layer's \x01 */
        "v=spf1 -all\t",
        "v=spf1 \x7f",
        "v=spf1 -all exp=caf\xc3\xa9.example",
        "v=spf1 x=\xff",
        "v=spf1 -all \x1b[0m",
        "v=spf1 \x01",
    };
    for (size_t i = 0; i < sizeof recs / sizeof recs[0]; i++)
        REJECT(recs[i], NOT_ASCII);
    /* the byte check comes first: it wins over a syntax error and a small cap */
    REJECT("v=spf1 bogus \x80", NOT_ASCII);
    assert_string_equal(rewrite_cap("v=spf1 \x80", 0), NOT_ASCII);
    /* every printable byte is fine where the grammar allows it */
    char t[128];
    size_t n = 0;
    for (int c = 0x21; c <= 0x7e; c++)
        if (c != '%')
            t[n++] = (char)c;
    t[n] = '\0';
    char rec[160];
    snprintf(rec, sizeof rec, "v=spf1 x=%s", t);
    ACCEPT(rec, "v=spf1");
}

/* ---- capacity ---- */

static void test_capacity(void **state)
{
    (void)state;
    const char *rec = "v=spf1 ip4:192.0.2.1/0 -all";
    size_t cap = SPF_RECORD_OUT_CAP(strlen(rec));
    assert_null(rewrite_cap(rec, cap));
    assert_string_equal(got, "v=spf1 ip4:0.0.0.0/1 ip4:128.0.0.0/1 -all");
    assert_string_equal(rewrite_cap(rec, cap - 1), TOO_LONG);
    assert_string_equal(got, ""); /* nothing left behind */
    assert_string_equal(rewrite_cap(rec, 1), TOO_LONG);
    assert_string_equal(rewrite_cap(rec, 0), TOO_LONG); /* and nothing written at all */
    assert_string_equal(rewrite_cap("v=spf1", 0), TOO_LONG);
    assert_null(rewrite_cap("v=spf1", SPF_RECORD_OUT_CAP(6)));
    assert_string_equal(got, "v=spf1");
    /* an error found before the capacity matters is still that error */
    assert_string_equal(rewrite_cap("", 0), NOT_SPF);
}

/* Records of n terms: the worst expansion (every term an ip6 /0 with a
 * qualifier, one space each) at the exact capacity, in guarded buffers. */
static void test_long_records(void **state)
{
    (void)state;
    static const size_t counts[] = {1, 2, 10, 100, 455, 1000, 6553};
    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
        size_t n = counts[c];
        char *rec = malloc(8 + 10 * n), *want = malloc(8 + 24 * n);
        assert_non_null(rec);
        assert_non_null(want);
        size_t r = (size_t)sprintf(rec, "v=spf1"), w = (size_t)sprintf(want, "v=spf1");
        for (size_t i = 0; i < n; i++) {
            r += (size_t)sprintf(rec + r, " -ip6:::/0");
            w += (size_t)sprintf(want + w, " -ip6:::/1 -ip6:8000::/1");
        }
        ACCEPT(rec, want);
        assert_string_equal(rewrite_cap(rec, SPF_RECORD_OUT_CAP(r) - 1), TOO_LONG);
        free(rec);
        free(want);
    }
    /* a long record that is fine as it is: 64 KiB, near the largest TXT */
    size_t n = 65000;
    char *rec = malloc(n + 1);
    assert_non_null(rec);
    memcpy(rec, "v=spf1", 6);
    size_t r = 6;
    while (r + 24 < n)
        r += (size_t)sprintf(rec + r, " ip4:192.0.2.%zu", r % 250);
    rec[r] = '\0';
    ACCEPT(rec, rec);
    /* with runs of spaces the output only shrinks */
    char *spaced = malloc(2 * r + 1);
    assert_non_null(spaced);
    size_t s = 0;
    for (size_t i = 0; i < r; i++) {
        spaced[s++] = rec[i];
        if (rec[i] == ' ')
            spaced[s++] = ' ';
    }
    spaced[s] = '\0';
    ACCEPT(spaced, rec);
    free(spaced);
    free(rec);
}

/* ---- the normal form ---- */

static void test_normal_form(void **state)
{
    (void)state;
    /* ACCEPT checks it for every case; here the messiest records, and the
     * rewrite of each rewrite a few times over */
    static const char *const recs[] = {
        "V=SPF1   redirect=r.example  foo=bar  +ip4:1.2.3.4/0   exp=e.example  ~ip6:::/0 mx   ",
        "v=spf1 exp=e.example -all redirect=r.example x=%{d} ip6:::/0",
        "v=spf1 ip4:0.0.0.0/1 ip4:128.0.0.0/1 ip6:::/1 ip6:8000::/1",
        "v=spf1 a/0 mx//0 ptr exists:%{ir}.%{v}.arpa.example include:%{d2}.example",
    };
    for (size_t i = 0; i < sizeof recs / sizeof recs[0]; i++) {
        assert_null(rewrite(recs[i]));
        char *first = strdup(got);
        assert_non_null(first);
        for (int k = 0; k < 3; k++) {
            assert_null(rewrite(first));
            assert_string_equal(got, first);
        }
        free(first);
    }
    ACCEPT("V=SPF1   redirect=r.example  foo=bar  +ip4:1.2.3.4/0   exp=e.example  ~ip6:::/0 mx   ",
           "v=spf1 +ip4:0.0.0.0/1 +ip4:128.0.0.0/1 ~ip6:::/1 ~ip6:8000::/1 mx exp=e.example redirect=r.example");
}

/* ---- what the RFC forbids, one rule each ---- */

static void test_rfc_forbids(void **state)
{
    (void)state;
    static const struct {
        const char *rec, *rule;
    } forbidden[] = {
        {"v=spf1 ip4:1.2.3.4/032", "ip4-cidr-length: no leading zero"},
        {"v=spf1 ip4:1.2.3.4/33", "ip4-cidr-length: at most 32"},
        {"v=spf1 ip6:::1/129", "ip6-cidr-length: at most 128"},
        {"v=spf1 ip6:::1//64", "ip6: no dual-cidr-length"},
        {"v=spf1 ip4:1.2.3.4//32", "ip4: no dual-cidr-length"},
        {"v=spf1 a/24/64", "dual-cidr-length: the ip6 part after //"},
        {"v=spf1 a//064", "ip6-cidr-length: no leading zero"},
        {"v=spf1 a:abc.123", "toplabel: not all digits"},
        {"v=spf1 a:example.-com", "toplabel: no leading hyphen"},
        {"v=spf1 include:example", "domain-end: a dot and a toplabel"},
        {"v=spf1 include:", "include: a domain-spec"},
        {"v=spf1 exists", "exists: a domain-spec"},
        {"v=spf1 ptr/24", "ptr: no cidr-length"},
        {"v=spf1 -all/8", "all: no argument"},
        {"v=spf1 exists:%{c}.example.com", "7.3: c only in explanations"},
        {"v=spf1 exists:%{d0}.example.com", "7.1: a DIGIT transformer is nonzero"},
        {"v=spf1 exists:%(ir).example.com", "7.1: % is followed by {, %, _ or -"},
        {"v=spf1 exists:%{d:}.example.com", "delimiter: one of . - + , / _ ="},
        {"v=spf1 -all foo=%abc", "unknown-modifier: a macro-string"},
        {"v=spf1 1up=foo", "name: starts with ALPHA"},
        {"v=spf1 -redirect=example.com", "modifier: no qualifier"},
        {"v=spf1 redirect=a.example redirect=b.example", "6: redirect at most once"},
        {"v=spf1 exp=a.example exp=b.example", "6: exp at most once"},
        {"v=spf1 exp=", "exp: a domain-spec"},
        {"v=spf1 a:ctrl.example.com\x0dptr -all", "record: printable ASCII and SP only"},
        {"v=spf1 \xc3\xa9", "record: ASCII only"},
        {"v=spf1 moo", "terms: a directive or a modifier"},
        {"v=spf1 ip4:01.2.3.4", "qnum: no leading zero"},
    };
    for (size_t i = 0; i < sizeof forbidden / sizeof forbidden[0]; i++)
        if (!rewrite(forbidden[i].rec))
            fail_msg("\"%s\" accepted as \"%s\"; RFC 7208 forbids it (%s)", show(forbidden[i].rec), show(got),
                     forbidden[i].rule);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_is_spf),
        cmocka_unit_test(test_not_spf_refused),
        cmocka_unit_test(test_empty_and_spaces),
        cmocka_unit_test(test_all),
        cmocka_unit_test(test_include),
        cmocka_unit_test(test_exists),
        cmocka_unit_test(test_a_mx),
        cmocka_unit_test(test_ptr),
        cmocka_unit_test(test_ip4),
        cmocka_unit_test(test_ip6),
        cmocka_unit_test(test_qualifiers),
        cmocka_unit_test(test_cidr_limits),
        cmocka_unit_test(test_redirect_exp),
        cmocka_unit_test(test_unknown_modifiers),
        cmocka_unit_test(test_macro_letters),
        cmocka_unit_test(test_macro_transformers),
        cmocka_unit_test(test_macro_escapes),
        cmocka_unit_test(test_domain_spec),
        cmocka_unit_test(test_bytes_outside_ascii),
        cmocka_unit_test(test_capacity),
        cmocka_unit_test(test_long_records),
        cmocka_unit_test(test_normal_form),
        cmocka_unit_test(test_rfc_forbids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

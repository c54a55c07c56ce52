/*
 * spf_record.c - RFC 7208's record grammar (section 12) and the rewrite that
 * hands libspf2 an equivalent record it evaluates correctly.
 *
 * Kept apart from the DNS layer (spf_dns.c) so that the part of the helper
 * that reads anyone's text has no I/O, no allocation and no libspf2: the
 * unit tests and the fuzz target drive it alone. The check is one function
 * per ABNF rule, each taking a (pointer, length) slice of one term, so no
 * rule can read past its term; the record is split at spaces first.
 * Case-insensitive comparisons are ASCII-only on purpose: the ABNF's strings
 * are ASCII, and the locale must not change what a record means.
 */
#include "spf_record.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_alnum(char c)
{
    return is_digit(c) || is_alpha(c);
}

static char ascii_lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c | 0x20) : c;
}

/* The first n octets of t are name, in any case (name is lower case). */
static bool prefix_is(const char *t, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (ascii_lower(t[i]) != name[i])
            return false;
    return true;
}

static bool name_is(const char *t, size_t n, const char *name)
{
    return strlen(name) == n && prefix_is(t, n, name);
}

/* macro-string (section 7.1); *last_macro: it ends in a macro-expand. The
 * letters c, r and t belong to explanations only (section 7.3), and a digit
 * transformer of 0 is an error (section 7.1); leading zeros and more than
 * three digits are refused as well, stricter than the ABNF's *DIGIT (a name
 * has at most 127 labels, so no sane record needs them). */
static bool macro_string_ok(const char *s, size_t n, bool *last_macro)
{
    *last_macro = false;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x21 || c > 0x7e)
            return false;
        if (c != '%') {
            *last_macro = false;
            i++;
            continue;
        }
        if (i + 1 >= n)
            return false;
        char m = s[i + 1];
        if (m == '%' || m == '_' || m == '-') {
            i += 2;
            *last_macro = true;
            continue;
        }
        if (m != '{' || i + 2 >= n)
            return false;
        size_t j = i + 2;
        if (!is_alpha(s[j]) || !strchr("slodiphv", ascii_lower(s[j])))
            return false;
        j++;
        size_t digits = j;
        while (j < n && is_digit(s[j]))
            j++;
        if (j > digits && (s[digits] == '0' || j - digits > 3)) /* 1..999 parts */
            return false;
        if (j < n && (s[j] == 'r' || s[j] == 'R'))
            j++;
        while (j < n && s[j] && strchr(".-+,/_=", s[j])) /* strchr finds the NUL too */
            j++;
        if (j >= n || s[j] != '}')
            return false;
        i = j + 1;
        *last_macro = true;
    }
    return true;
}

/* toplabel = ( *alphanum ALPHA *alphanum ) /
 *            ( 1*alphanum "-" *( alphanum / "-" ) alphanum )
 * RFC 3696 section 2: a top-level label is never all digits, so that a
 * dotted quad can never be taken for a name. */
static bool toplabel_ok(const char *t, size_t n)
{
    bool alpha = false, hyphen = false;
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (is_alpha(t[i]))
            alpha = true;
        else if (t[i] == '-')
            hyphen = true;
        else if (!is_digit(t[i]))
            return false;
    }
    return hyphen ? is_alnum(t[0]) && is_alnum(t[n - 1]) : alpha;
}

/* domain-spec = macro-string domain-end;
 * domain-end  = ( "." toplabel [ "." ] ) / macro-expand */
static bool domain_spec_ok(const char *s, size_t n)
{
    bool last_macro;
    if (n == 0 || !macro_string_ok(s, n, &last_macro))
        return false;
    if (last_macro)
        return true;
    if (s[n - 1] == '.')
        n--;
    size_t dot = n;
    while (dot > 0 && s[dot - 1] != '.')
        dot--;
    return dot > 0 && toplabel_ok(s + dot, n - dot);
}

/* "/" ("0" / %x31-39 0*N DIGIT), at most max: a leading zero is a syntax
 * error, not a longer way to write the same length. */
static bool cidr_ok(const char *s, size_t n, unsigned max)
{
    if (n == 0 || n > 3 || (s[0] == '0' && n > 1))
        return false;
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit(s[i]))
            return false;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    return v <= max;
}

/* ip4 / ip6: ":" network [ "/" cidr ]. inet_pton is pure (no lookup) and
 * takes exactly the ABNF's forms: dotted quads without leading zeros, RFC
 * 4291 text. */
static bool ip_ok(const char *s, size_t n, int af)
{
    char buf[INET6_ADDRSTRLEN + 8];
    unsigned char addr[16];
    const char *slash = memchr(s, '/', n);
    size_t alen = slash ? (size_t)(slash - s) : n;
    if (slash && !cidr_ok(slash + 1, n - alen - 1, af == AF_INET ? 32 : 128))
        return false;
    if (alen == 0 || alen >= sizeof buf)
        return false;
    memcpy(buf, s, alen);
    buf[alen] = '\0';
    return inet_pton(af, buf, addr) == 1;
}

/* a / mx: [ ":" domain-spec ] [ ip4-cidr-length ] [ "/" ip6-cidr-length ].
 * Read from the end, since a domain-spec may hold "/" itself. */
static bool a_mx_ok(const char *s, size_t n)
{
    size_t e = n, j = n;
    while (j > 0 && is_digit(s[j - 1]))
        j--;
    if (j < e && j >= 2 && s[j - 1] == '/' && s[j - 2] == '/') {
        if (!cidr_ok(s + j, e - j, 128))
            return false;
        e = j - 2;
    }
    j = e;
    while (j > 0 && is_digit(s[j - 1]))
        j--;
    if (j < e && j >= 1 && s[j - 1] == '/') {
        if (!cidr_ok(s + j, e - j, 32))
            return false;
        e = j - 1;
    }
    if (e == 0)
        return true;
    return s[0] == ':' && domain_spec_ok(s + 1, e - 1);
}

/* One directive: [qualifier] mechanism. */
static const char *directive_check(const char *t, size_t n, bool *all)
{
    if (n && strchr("+-?~", t[0])) {
        t++;
        n--;
    }
    size_t k = 0;
    while (k < n && t[k] != ':' && t[k] != '/')
        k++;
    const char *arg = t + k;
    size_t an = n - k;
    bool colon = an > 1 && arg[0] == ':';
    if (name_is(t, k, "all")) {
        *all = true;
        return an ? "bad all" : NULL;
    }
    if (name_is(t, k, "include") || name_is(t, k, "exists"))
        return colon && domain_spec_ok(arg + 1, an - 1) ? NULL : "bad domain in include: or exists:";
    if (name_is(t, k, "a") || name_is(t, k, "mx"))
        return a_mx_ok(arg, an) ? NULL : "bad a or mx";
    if (name_is(t, k, "ptr"))
        return an == 0 || (colon && domain_spec_ok(arg + 1, an - 1)) ? NULL : "bad ptr";
    if (name_is(t, k, "ip4") || name_is(t, k, "ip6"))
        return colon && ip_ok(arg + 1, an - 1, t[2] == '4' ? AF_INET : AF_INET6) ? NULL : "bad ip4 or ip6";
    return "unknown mechanism";
}

/*
 * Appends " term" (returns the octets written, under 3n + 40). libspf2
 * cannot hold a CIDR length of 0 (it reads 0 as "none given"), so
 * ip4:x/0 and ip6:x/0 go in as the two halves of the address space, the
 * same set. a/0 and mx/0 have no such equivalent and stay libspf2's
 * permerror.
 */
static size_t append_directive(char *out, const char *t, size_t n)
{
    const char *q = n && strchr("+-?~", t[0]) ? t : NULL;
    size_t qn = q ? 1 : 0;
    const char *m = t + qn;
    size_t mn = n - qn;
    const char *halves = NULL;
    if (mn > 6 && m[mn - 2] == '/' && m[mn - 1] == '0' && prefix_is(m, 4, "ip4:"))
        halves = "ip4:0.0.0.0/1 ip4:128.0.0.0/1";
    else if (mn > 6 && m[mn - 2] == '/' && m[mn - 1] == '0' && prefix_is(m, 4, "ip6:"))
        halves = "ip6:::/1 ip6:8000::/1";
    if (!halves) {
        out[0] = ' ';
        memcpy(out + 1, t, n);
        return n + 1;
    }
    size_t h = strcspn(halves, " ");
    return (size_t)sprintf(out, " %.*s%.*s %.*s%s", (int)qn, t, (int)h, halves, (int)qn, t, halves + h + 1);
}

/* A modifier (name "=" value): exp= and redirect= are remembered for the
 * end of the record, unknown ones only checked. */
static const char *modifier_check(const char *t, size_t n, size_t k, const char **exp, size_t *exp_n,
                                  const char **redirect, size_t *redirect_n)
{
    const char *v = t + k + 1;
    size_t vn = n - k - 1;
    bool last_macro;
    if (name_is(t, k, "redirect") || name_is(t, k, "exp")) {
        bool is_exp = k == 3;
        if (is_exp ? *exp != NULL : *redirect != NULL)
            return is_exp ? "exp= twice" : "redirect= twice";
        if (!domain_spec_ok(v, vn))
            return is_exp ? "bad exp= domain" : "bad redirect= domain";
        *(is_exp ? exp : redirect) = t;
        *(is_exp ? exp_n : redirect_n) = n;
        return NULL;
    }
    return macro_string_ok(v, vn, &last_macro) ? NULL : "bad macro in a modifier";
}

/*
 * The check and the rewrite in one pass (spf_record.h says what they do):
 * mechanisms are written as they are checked, exp= and redirect= wait for
 * the end, where libspf2 (which evaluates redirect= where it stands) reads
 * them as the RFC means them. The capacity test up front is what bounds the
 * output (no term writes more than three times its length plus 40); the
 * test per term only keeps that true if the expansions ever grow.
 */
static const char *rewrite(const char *rec, char *out, size_t cap)
{
    const char *p = rec + 6, *end = rec + strlen(rec); /* after "v=spf1" */
    const char *exp = NULL, *redirect = NULL;
    size_t exp_n = 0, redirect_n = 0, o = 6;
    bool all = false;
    for (const char *c = rec; c < end; c++)
        if (*c != ' ' && (*c < 0x21 || *c > 0x7e))
            return "a character outside printable ASCII";
    if (cap < SPF_RECORD_OUT_CAP(end - rec))
        return "record too long";
    memcpy(out, "v=spf1", 6);
    while (p < end) {
        while (p < end && *p == ' ')
            p++;
        const char *t = p;
        while (p < end && *p != ' ')
            p++;
        size_t n = (size_t)(p - t), k = 0;
        if (n == 0)
            break;
        if (is_alpha(t[0])) /* name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." ) */
            for (k = 1; k < n && (is_alnum(t[k]) || t[k] == '-' || t[k] == '_' || t[k] == '.');)
                k++;
        const char *why;
        if (k > 0 && k < n && t[k] == '=') {
            why = modifier_check(t, n, k, &exp, &exp_n, &redirect, &redirect_n);
            if (why)
                return why;
            continue;
        }
        why = directive_check(t, n, &all);
        if (why)
            return why;
        if (o + 3 * n + 40 >= cap)
            return "record too long";
        o += append_directive(out + o, t, n);
    }
    if (exp) {
        out[o++] = ' ';
        memcpy(out + o, exp, exp_n);
        o += exp_n;
    }
    if (redirect && !all) { /* section 5.1: "all" makes redirect= moot */
        out[o++] = ' ';
        memcpy(out + o, redirect, redirect_n);
        o += redirect_n;
    }
    out[o] = '\0';
    return NULL;
}

bool spf_record_is_spf(const char *txt)
{
    return prefix_is(txt, 6, "v=spf1") && (txt[6] == ' ' || txt[6] == '\0');
}

const char *spf_record_rewrite(const char *rec, char *out, size_t cap)
{
    const char *why = spf_record_is_spf(rec) ? rewrite(rec, out, cap) : "not an SPF record";
    if (why && cap > 0)
        out[0] = '\0';
    return why;
}

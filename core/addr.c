/*
 * addr.c - RFC 5321 4.1.2 paths and RFC 1870/6152/6531 MAIL parameters.
 *
 * A recursive-descent reader over a slice, one function per grammar rule, in
 * the order the RFC gives them. Strict where the RFC is (brackets required,
 * label syntax, literal syntax), with the two leniencies every real MTA has:
 * spaces after "FROM:" are handled by the caller, and source routes are read
 * and dropped (RFC 5321 appendix C).
 */
#include "addr.h"

#include <arpa/inet.h>
#include <strings.h>

typedef struct cur {
    const char *p, *end;
} cur_t;

static bool is_alpha(unsigned char c)
{
    return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* RFC 5322 atext: letters, digits and !#$%&'*+-/=?^_`{|}~ */
static const uint8_t atext_table[128] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['/'] = 1, ['='] = 1, ['?'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['{'] = 1,
    ['|'] = 1, ['}'] = 1, ['~'] = 1,
};

static bool is_atext(unsigned char c, bool utf8)
{
    if (is_alpha(c) || is_digit(c))
        return true;
    if (c >= 0x80)
        return utf8;
    return atext_table[c];
}

size_t addr_utf8_seq(const unsigned char *p, size_t n)
{
    unsigned char c = p[0];
    if (c < 0x80)
        return 1;
    size_t len;
    unsigned min;
    unsigned cp;
    if (c >= 0xc2 && c <= 0xdf)
        len = 2, min = 0x80, cp = c & 0x1f;
    else if (c >= 0xe0 && c <= 0xef)
        len = 3, min = 0x800, cp = c & 0x0f;
    else if (c >= 0xf0 && c <= 0xf4)
        len = 4, min = 0x10000, cp = c & 0x07;
    else
        return 0;
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

bool addr_utf8_valid(slice_t s)
{
    const unsigned char *p = (const unsigned char *)s.ptr;
    size_t i = 0;
    while (i < s.len) {
        size_t n = addr_utf8_seq(p + i, s.len - i);
        if (n == 0)
            return false;
        i += n;
    }
    return true;
}

/* sub-domain *("." sub-domain); U-labels when utf8. */
static bool read_domain(cur_t *c, bool utf8)
{
    for (;;) {
        const char *label = c->p;
        while (c->p < c->end) {
            unsigned char ch = (unsigned char)*c->p;
            if (is_alpha(ch) || is_digit(ch) || ch == '-' || (utf8 && ch >= 0x80))
                c->p++;
            else
                break;
        }
        size_t n = (size_t)(c->p - label);
        if (n == 0 || n > 63 || label[0] == '-' || label[n - 1] == '-')
            return false;
        if (c->p < c->end && *c->p == '.' && c->p + 1 < c->end &&
            (is_alpha((unsigned char)c->p[1]) || is_digit((unsigned char)c->p[1]) ||
             (utf8 && (unsigned char)c->p[1] >= 0x80))) {
            c->p++;
            continue;
        }
        break;
    }
    return true; /* the length limit is the caller's: it reports ADDR_TOO_LONG */
}

/* "[" IPv4 / "IPv6:" IPv6 / tag ":" dcontent "]" */
static bool read_literal(cur_t *c)
{
    const char *close = memchr(c->p, ']', (size_t)(c->end - c->p));
    if (*c->p != '[' || !close)
        return false;
    const char *in = c->p + 1;
    size_t n = (size_t)(close - in);
    char tmp[64];
    unsigned char bin[16];
    if (n == 0 || n >= sizeof tmp)
        return false;
    if (n > 5 && strncasecmp(in, "IPv6:", 5) == 0) {
        memcpy(tmp, in + 5, n - 5);
        tmp[n - 5] = 0;
        if (inet_pton(AF_INET6, tmp, bin) != 1)
            return false;
    } else if (is_digit((unsigned char)in[0])) {
        memcpy(tmp, in, n);
        tmp[n] = 0;
        if (inet_pton(AF_INET, tmp, bin) != 1)
            return false;
    } else {
        /* General-address-literal: Ldh-str ":" 1*dcontent */
        const char *colon = memchr(in, ':', n);
        if (!colon || colon == in || colon + 1 == close)
            return false;
        for (const char *q = in; q < colon; q++)
            if (!is_alpha((unsigned char)*q) && !is_digit((unsigned char)*q) && *q != '-')
                return false;
        for (const char *q = colon + 1; q < close; q++)
            if ((unsigned char)*q < 33 || (unsigned char)*q > 126 || *q == '[' || *q == '\\')
                return false;
    }
    c->p = close + 1;
    return true;
}

static bool read_dot_string(cur_t *c, bool utf8)
{
    const char *start = c->p;
    for (;;) {
        const char *atom = c->p;
        while (c->p < c->end && is_atext((unsigned char)*c->p, utf8))
            c->p++;
        if (c->p == atom)
            return false;
        if (c->p < c->end && *c->p == '.') {
            c->p++;
            continue;
        }
        return c->p > start;
    }
}

static bool read_quoted(cur_t *c, bool utf8)
{
    c->p++; /* DQUOTE */
    while (c->p < c->end) {
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '"') {
            c->p++;
            return true;
        }
        if (ch == '\\') {
            if (c->p + 1 >= c->end || (unsigned char)c->p[1] < 32 || (unsigned char)c->p[1] > 126)
                return false;
            c->p += 2;
        } else if ((ch >= 32 && ch <= 126) || (utf8 && ch >= 0x80)) {
            c->p++;
        } else {
            return false;
        }
    }
    return false;
}

/* A-d-l ":" -- read and dropped. */
static bool skip_source_route(cur_t *c)
{
    while (c->p < c->end && *c->p == '@') {
        c->p++;
        if (!read_domain(c, false))
            return false;
        if (c->p < c->end && *c->p == ',') {
            c->p++;
            if (c->p >= c->end || *c->p != '@')
                return false;
            continue;
        }
        if (c->p < c->end && *c->p == ':') {
            c->p++;
            return true;
        }
        return false;
    }
    return false;
}

enum addr_status addr_parse_path(slice_t s, enum addr_kind kind, bool allow_utf8, smtp_path_t *out,
                                 size_t *used, const char **why)
{
    memset(out, 0, sizeof *out);
    cur_t c = { s.ptr, s.ptr + s.len };
    *why = "missing '<'";
    if (c.p >= c.end || *c.p != '<')
        return ADDR_SYNTAX;
    c.p++;
    if (c.p < c.end && *c.p == '>') {
        *used = 2;
        if (kind == ADDR_FORWARD) {
            *why = "empty recipient";
            return ADDR_SYNTAX;
        }
        out->null = true;
        return ADDR_OK;
    }
    if (c.p < c.end && *c.p == '@') {
        *why = "bad source route";
        if (!skip_source_route(&c))
            return ADDR_SYNTAX;
    }
    const char *mbox = c.p;
    if (kind == ADDR_FORWARD && c.end - c.p >= 11 && strncasecmp(c.p, "postmaster>", 11) == 0) {
        out->mailbox = out->local = slice_make(c.p, 10);
        out->postmaster = true;
        *used = (size_t)(c.p + 11 - s.ptr);
        return ADDR_OK;
    }
    /* Read with UTF-8 allowed, then refuse it if it was not asked for, so the
     * client learns the real reason (553 5.6.7) instead of a syntax error. */
    *why = "bad local part";
    bool ok = (c.p < c.end && *c.p == '"') ? read_quoted(&c, true) : read_dot_string(&c, true);
    if (!ok)
        return ADDR_SYNTAX;
    out->local = slice_make(mbox, (size_t)(c.p - mbox));
    *why = "missing '@domain'";
    if (c.p >= c.end || *c.p != '@')
        return ADDR_SYNTAX;
    c.p++;
    const char *dom = c.p;
    *why = "bad domain";
    ok = (c.p < c.end && *c.p == '[') ? read_literal(&c) : read_domain(&c, true);
    if (!ok)
        return ADDR_SYNTAX;
    out->domain = slice_make(dom, (size_t)(c.p - dom));
    *why = "missing '>'";
    if (c.p >= c.end || *c.p != '>')
        return ADDR_SYNTAX;
    out->mailbox = slice_make(mbox, (size_t)(c.p - mbox));
    *used = (size_t)(c.p + 1 - s.ptr);
    *why = "address too long";
    if (out->local.len > ADDR_LOCAL_MAX || out->domain.len > ADDR_DOMAIN_MAX ||
        out->mailbox.len + 2 > ADDR_PATH_MAX)
        return ADDR_TOO_LONG;
    for (size_t i = 0; i < out->mailbox.len; i++) {
        if ((unsigned char)out->mailbox.ptr[i] >= 0x80) {
            out->utf8 = true;
            break;
        }
    }
    if (out->utf8) {
        *why = "invalid UTF-8 in address";
        if (!addr_utf8_valid(out->mailbox))
            return ADDR_SYNTAX;
        *why = "non-ASCII address without SMTPUTF8";
        if (!allow_utf8)
            return ADDR_UTF8;
    }
    return ADDR_OK;
}

bool addr_domain_valid(slice_t s, bool allow_utf8)
{
    cur_t c = { s.ptr, s.ptr + s.len };
    if (s.len == 0)
        return false;
    bool ok = *c.p == '[' ? read_literal(&c) : read_domain(&c, allow_utf8);
    return ok && c.p == c.end && s.len <= ADDR_DOMAIN_MAX && (!allow_utf8 || addr_utf8_valid(s));
}

/* Splits " KEY=VALUE KEY2" into keyword and value; returns false at the end. */
static bool next_param(cur_t *c, slice_t *key, slice_t *val, bool *has_val, bool *bad)
{
    while (c->p < c->end && *c->p == ' ')
        c->p++;
    if (c->p >= c->end)
        return false;
    const char *k = c->p;
    while (c->p < c->end && *c->p != ' ' && *c->p != '=')
        c->p++;
    *key = slice_make(k, (size_t)(c->p - k));
    *has_val = false;
    *val = SLICE_NULL;
    if (c->p < c->end && *c->p == '=') {
        const char *v = ++c->p;
        while (c->p < c->end && *c->p != ' ')
            c->p++;
        *val = slice_make(v, (size_t)(c->p - v));
        *has_val = true;
    }
    *bad = key->len == 0 || !(is_alpha((unsigned char)k[0]) || is_digit((unsigned char)k[0]));
    for (size_t i = 0; i < key->len && !*bad; i++)
        if (!is_alpha((unsigned char)k[i]) && !is_digit((unsigned char)k[i]) && k[i] != '-')
            *bad = true;
    for (size_t i = 0; i < val->len && !*bad; i++)
        if ((unsigned char)val->ptr[i] < 33 || (unsigned char)val->ptr[i] > 126 || val->ptr[i] == '=')
            *bad = true;
    if (*has_val && val->len == 0)
        *bad = true;
    return true;
}

enum param_status addr_parse_mail_params(slice_t s, smtp_mail_params_t *out, const char **why)
{
    memset(out, 0, sizeof *out);
    cur_t c = { s.ptr, s.ptr + s.len };
    slice_t key, val;
    bool has_val, bad;
    while (next_param(&c, &key, &val, &has_val, &bad)) {
        *why = "bad parameter syntax";
        if (bad)
            return PARAM_SYNTAX;
        if (slice_ieq(key, "SIZE")) {
            *why = "bad SIZE value";
            if (out->has_size || !has_val || val.len > 20)
                return PARAM_SYNTAX;
            uint64_t n = 0;
            for (size_t i = 0; i < val.len; i++) {
                unsigned d = (unsigned char)val.ptr[i] - '0';
                if (d > 9 || n > (UINT64_MAX - d) / 10)
                    return PARAM_SYNTAX;
                n = n * 10 + d;
            }
            out->size = n;
            out->has_size = true;
        } else if (slice_ieq(key, "BODY")) {
            *why = "bad BODY value";
            if (out->body || !has_val)
                return PARAM_SYNTAX;
            if (slice_ieq(val, "7BIT"))
                out->body = BODY_7BIT;
            else if (slice_ieq(val, "8BITMIME"))
                out->body = BODY_8BITMIME;
            else {
                *why = "unsupported BODY type";
                return PARAM_UNKNOWN;
            }
        } else if (slice_ieq(key, "SMTPUTF8")) {
            *why = "SMTPUTF8 takes no value";
            if (has_val || out->smtputf8)
                return PARAM_SYNTAX;
            out->smtputf8 = true;
        } else {
            *why = "unsupported parameter";
            return PARAM_UNKNOWN;
        }
    }
    return PARAM_OK;
}

enum param_status addr_parse_rcpt_params(slice_t s, const char **why)
{
    cur_t c = { s.ptr, s.ptr + s.len };
    slice_t key, val;
    bool has_val, bad;
    if (!next_param(&c, &key, &val, &has_val, &bad))
        return PARAM_OK;
    *why = bad ? "bad parameter syntax" : "unsupported parameter";
    return bad ? PARAM_SYNTAX : PARAM_UNKNOWN;
}

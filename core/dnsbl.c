/*
 * dnsbl.c - DNS block- and allow-lists, I/O-free (see dnsbl.h).
 */
#include "dnsbl.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

static bool sep(char c)
{
    return c == ',' || c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static int fail(char *err, size_t errlen, const char *item, size_t n, const char *why)
{
    snprintf(err, errlen, "%.*s: %s", (int)(n > 80 ? 80 : n), item, why);
    return -1;
}

/* A DNS name: labels of letters, digits and hyphens (not at either end),
 * 1 to 63 octets each, 253 in all; lower-cased into out. */
static bool domain(const char *p, size_t n, char *out)
{
    if (n == 0 || n > DNSBL_DOMAIN_MAX)
        return false;
    size_t label = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '.') {
            if (label == 0 || p[i - 1] == '-')
                return false;
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                   (c == '-' && label > 0)) {
            if (++label > 63)
                return false;
        } else {
            return false;
        }
        out[i] = (char)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
    }
    if (label == 0 || p[n - 1] == '-')
        return false;
    out[n] = '\0';
    return true;
}

/* A decimal number 0..max at *p (advanced); false when there is none. */
static bool number(const char **p, const char *end, long max, long *v)
{
    const char *q = *p;
    long x = 0;
    if (q == end || *q < '0' || *q > '9')
        return false;
    while (q < end && *q >= '0' && *q <= '9') {
        x = x * 10 + (*q - '0');
        if (x > max)
            return false;
        q++;
    }
    *p = q;
    *v = x;
    return true;
}

static void allow(uint8_t set[32], long lo, long hi)
{
    for (long v = lo; v <= hi; v++)
        set[v / 8] |= (uint8_t)(1u << (v % 8));
}

/* One octet's pattern: a number, or [a;b..c;...]. */
static bool octet(const char **p, const char *end, uint8_t set[32])
{
    long a, b;
    if (*p < end && **p == '[') {
        (*p)++;
        for (;;) {
            if (!number(p, end, 255, &a))
                return false;
            b = a;
            if (end - *p >= 2 && (*p)[0] == '.' && (*p)[1] == '.') {
                *p += 2;
                if (!number(p, end, 255, &b) || b < a)
                    return false;
            }
            allow(set, a, b);
            if (*p < end && **p == ';') {
                (*p)++;
                continue;
            }
            if (*p < end && **p == ']') {
                (*p)++;
                return true;
            }
            return false;
        }
    }
    if (!number(p, end, 255, &a))
        return false;
    allow(set, a, a);
    return true;
}

static int item(const char *p, size_t n, dnsbl_site_t *s, char *err, size_t errlen)
{
    const char *end = p + n, *it = p;
    memset(s, 0, sizeof *s);
    s->weight = 1;
    const char *d = p;
    while (p < end && *p != '=' && *p != '*')
        p++;
    if (!domain(d, (size_t)(p - d), s->domain))
        return fail(err, errlen, it, n, "not a DNS domain");
    if (p < end && *p == '=') {
        p++;
        s->filtered = true;
        for (int k = 0; k < 4; k++) {
            if (k && (p == end || *p++ != '.'))
                return fail(err, errlen, it, n, "the answer pattern has not four octets");
            if (!octet(&p, end, s->octets[k]))
                return fail(err, errlen, it, n, "an octet of the answer pattern is not n, [n..m] or [a;b] (0 to 255)");
        }
    }
    if (p < end && *p == '*') {
        p++;
        bool neg = p < end && *p == '-';
        if (neg || (p < end && *p == '+'))
            p++;
        long w;
        if (!number(&p, end, 1000, &w))
            return fail(err, errlen, it, n, "the weight is not a number from -1000 to 1000");
        s->weight = neg ? -(int)w : (int)w;
    }
    if (p != end)
        return fail(err, errlen, it, n, "expected domain[=pattern][*weight]");
    return 0;
}

int dnsbl_parse(const char *spec, dnsbl_site_t *out, size_t max, size_t *n, char *err, size_t errlen)
{
    *n = 0;
    const char *p = spec;
    for (;;) {
        while (*p && sep(*p))
            p++;
        if (!*p)
            return 0;
        const char *q = p;
        while (*q && !sep(*q))
            q++;
        if (*n == max) {
            snprintf(err, errlen, "more than %zu sites", max);
            return -1;
        }
        if (item(p, (size_t)(q - p), &out[*n], err, errlen))
            return -1;
        for (size_t i = 0; i < *n; i++) {
            if (!strcmp(out[i].domain, out[*n].domain)) {
                return fail(err, errlen, p, (size_t)(q - p), "listed twice");
            }
        }
        (*n)++;
        p = q;
    }
}

bool dnsbl_qname(const dnsbl_site_t *s, int family, const uint8_t *addr, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    char b[DNSBL_QNAME_MAX + 1];
    size_t k = 0;
    if (family == AF_INET6) {
        for (int i = 15; i >= 0; i--) {
            b[k++] = hex[addr[i] & 15];
            b[k++] = '.';
            b[k++] = hex[addr[i] >> 4];
            b[k++] = '.';
        }
    } else {
        for (int i = 3; i >= 0; i--)
            k += (size_t)snprintf(b + k, sizeof b - k, "%u.", addr[i]);
    }
    int w = snprintf(out, cap, "%.*s%s", (int)k, b, s->domain);
    return w > 0 && (size_t)w < cap;
}

bool dnsbl_match(const dnsbl_site_t *s, const uint8_t a[4])
{
    if (!s->filtered) /* RFC 5782 2.3: listings are in 127/8; 127.255.255.x are lists' error codes */
        return a[0] == 127 && !(a[1] == 255 && a[2] == 255);
    for (int k = 0; k < 4; k++)
        if (!(s->octets[k][a[k] / 8] & (1u << (a[k] % 8))))
            return false;
    return true;
}

int dnsbl_score(const dnsbl_site_t *s, size_t n, const uint8_t (*const *answers)[4], const size_t *counts,
                uint32_t *hit)
{
    int score = 0;
    *hit = 0;
    for (size_t i = 0; i < n && i < 32; i++) {
        if (!answers || !answers[i] || !counts || !counts[i])
            continue;
        for (size_t j = 0; j < counts[i]; j++) {
            if (dnsbl_match(&s[i], answers[i][j])) {
                score += s[i].weight;
                *hit |= 1u << i;
                break;
            }
        }
    }
    return score;
}

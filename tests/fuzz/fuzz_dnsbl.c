/*
 * fuzz_dnsbl.c - libFuzzer target over the DNSBL site list (core/dnsbl.h):
 * any text parses or is refused with a reason; what parses prints back as
 * a list that parses to the same sites (every octet pattern as a list of
 * its values), and every site's query names fit, for an IPv4 and an IPv6
 * client, and end with the site's domain.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "dnsbl.h"

#define CHECK(c)                                                                                                       \
    do {                                                                                                               \
        if (!(c)) {                                                                                                    \
            fprintf(stderr, "fuzz_dnsbl.c:%d: %s\n", __LINE__, #c);                                                  \
            __builtin_trap();                                                                                          \
        }                                                                                                              \
    } while (0)

static dnsbl_site_t a[DNSBL_SITES_MAX], b[DNSBL_SITES_MAX];

/* A site as text: domain=[v;v;...].[...].[...].[...]*weight */
static size_t print(const dnsbl_site_t *s, char *out, size_t cap)
{
    size_t k = (size_t)snprintf(out, cap, "%s", s->domain);
    if (s->filtered) {
        for (int o = 0; o < 4; o++) {
            k += (size_t)snprintf(out + k, cap - k, "%s[", o ? "." : "=");
            int first = 1;
            for (int v = 0; v < 256; v++) {
                if (s->octets[o][v / 8] & (1u << (v % 8))) {
                    k += (size_t)snprintf(out + k, cap - k, "%s%d", first ? "" : ";", v);
                    first = 0;
                }
            }
            k += (size_t)snprintf(out + k, cap - k, "]");
        }
    }
    k += (size_t)snprintf(out + k, cap - k, "*%d, ", s->weight);
    return k;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0;
    char *spec = malloc(size + 1);
    CHECK(spec);
    memcpy(spec, data, size);
    spec[size] = '\0';
    size_t n = 0, m = 0;
    char err[256];
    err[0] = '\0';
    if (dnsbl_parse(spec, a, DNSBL_SITES_MAX, &n, err, sizeof err) != 0) {
        CHECK(err[0] != '\0');
        free(spec);
        return 0;
    }
    CHECK(n <= DNSBL_SITES_MAX);
    static char text[DNSBL_SITES_MAX * 1400];
    size_t k = 0;
    text[0] = '\0';
    for (size_t i = 0; i < n; i++)
        k += print(&a[i], text + k, sizeof text - k);
    CHECK(k < sizeof text);
    CHECK(dnsbl_parse(text, b, DNSBL_SITES_MAX, &m, err, sizeof err) == 0 && m == n);
    for (size_t i = 0; i < n; i++) {
        CHECK(!memcmp(&a[i], &b[i], sizeof a[i]) || (!strcmp(a[i].domain, b[i].domain) && a[i].weight == b[i].weight &&
                                                      a[i].filtered == b[i].filtered &&
                                                      !memcmp(a[i].octets, b[i].octets, sizeof a[i].octets)));
        char q[DNSBL_QNAME_MAX + 1];
        const uint8_t v4[4] = { 1, 2, 3, 4 }, v6[16] = { 0x20, 1, 0xd, 0xb8 };
        CHECK(dnsbl_qname(&a[i], AF_INET, v4, q, sizeof q));
        CHECK(strlen(q) > strlen(a[i].domain) && !strcmp(q + strlen(q) - strlen(a[i].domain), a[i].domain));
        CHECK(dnsbl_qname(&a[i], AF_INET6, v6, q, sizeof q));
        CHECK(strlen(q) == 64 + strlen(a[i].domain));
    }
    free(spec);
    return 0;
}

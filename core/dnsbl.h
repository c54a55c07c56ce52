/*
 * dnsbl.h - DNS blocklists and allow-lists in postscreen's terms, I/O-free:
 * the site list, the name to ask for a client, whether an answer counts,
 * and the score.
 *
 * A site list is what postscreen_dnsbl_sites takes, comma- or space-
 * separated:
 *
 *     zen.example*2, bl.example=127.0.0.[2..11]*1, wl.example*-2
 *
 * Each item: a DNS domain; optionally "=" and a pattern that an A record of
 * the answer must match (four octets, each a number, [n..m] a range, or
 * [a;b;c] a list of numbers and ranges); optionally "*" and a weight
 * (default 1; negative for an allow-list). A site counts once, with its
 * weight, when any A record it returns matches; the client's score is the
 * sum over the sites that count. Without a pattern an answer counts when it
 * is in 127.0.0.0/8 (RFC 5782 2.3) and not 127.255.255.x, where lists put
 * their error codes (a query refused, a resolver not allowed): a domain
 * that lapsed into a wildcard, or an error, never lists every client.
 *
 * The name asked for an IPv4 client 192.0.2.7 on zen.example is
 * 7.2.0.192.zen.example; for IPv6 the 32 nibbles, lowest first (RFC 5782).
 */
#ifndef MXGATE_DNSBL_H
#define MXGATE_DNSBL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DNSBL_SITES_MAX 32
#define DNSBL_DOMAIN_MAX 253
#define DNSBL_QNAME_MAX (64 + DNSBL_DOMAIN_MAX + 2) /* 32 nibbles and dots, the domain */

typedef struct dnsbl_site {
    char domain[DNSBL_DOMAIN_MAX + 1]; /* lower case, no final dot */
    bool filtered;                     /* an answer must match octets[] */
    uint8_t octets[4][32];             /* per octet, a bit per value allowed */
    int weight;
} dnsbl_site_t;

/* The sites of spec (at most max). 0, or -1 with err saying which item and
 * why. An empty spec is no site. */
int dnsbl_parse(const char *spec, dnsbl_site_t *out, size_t max, size_t *n, char *err, size_t errlen);

/* The name to ask about addr (4 octets for AF_INET, 16 for AF_INET6); false
 * when it does not fit cap. */
bool dnsbl_qname(const dnsbl_site_t *s, int family, const uint8_t *addr, char *out, size_t cap);

/* Whether an A record of the site's answer counts. */
bool dnsbl_match(const dnsbl_site_t *s, const uint8_t a[4]);

/* The score of answers: for each site i, answers[i] holds counts[i] A
 * records (NULL or 0: no answer). Sites that count are set in *hit (bit i). */
int dnsbl_score(const dnsbl_site_t *s, size_t n, const uint8_t (*const *answers)[4], const size_t *counts,
                uint32_t *hit);

#endif

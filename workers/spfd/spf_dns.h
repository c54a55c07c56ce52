/*
 * spf_dns.h - the DNS layer that libspf2 runs on inside the SPF helper.
 *
 * libspf2 asks its resolver layer for one (name, type) at a time. This layer
 * answers from a cache shared by the helper's pool threads, or asks exactly
 * one configured server through a per-thread libresolv state, and on the way
 * keeps what RFC 7208 wants counted per check and libspf2 does not count
 * right: DNS-querying terms across includes, void lookups (section 4.6.4)
 * and the smallest TTL the result rests on. Its get_spf hook fetches each
 * SPF record, checks it against the RFC's grammar and hands libspf2 an
 * equivalent it evaluates correctly (spf_record.h).
 *
 * Ownership: spf_dns_t (server address, cache) is created once before the
 * pool threads start and outlives them. Each pool thread owns one layer from
 * spf_dns_layer_new(), freed with SPF_dns_free() after its server. The counters
 * of spf_dns_check_t belong to that thread's current check.
 */
#ifndef MXGATE_SPF_DNS_H
#define MXGATE_SPF_DNS_H

#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <resolv.h>
#include <spf2/spf.h>
#include <spf2/spf_dns_rr.h>

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#define SPF_DNS_TTL_CAP 3600      /* no answer is trusted (or cached) longer */
#define SPF_DNS_NEG_TTL_REPLY 300 /* negative answer without SOA: reply TTL */
#define SPF_DNS_NEG_TTL_CACHE 60  /* ... and how long it is cached */
#define SPF_DNS_VOID_MAX 2        /* RFC 7208 section 4.6.4 */
#define SPF_DNS_TERMS_MAX 10      /* ... DNS-querying terms per check */
#define SPF_DNS_MX_MAX 10         /* ... MX records one "mx" may use */
#define SPF_DNS_PTR_MAX 10        /* ... PTR names one "ptr" looks at */
#define SPF_DNS_CHECK_S 20        /* no new lookup after this long (4.6.4) */

/* Where the helper's log lines go; level as in spfd.c (0 debug .. 3 error). */
typedef void spf_dns_log_fn(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

typedef struct spf_dns_conf {
    const char *server;  /* "a.b.c.d:port", "[v6]:port" or NULL/"" */
    unsigned timeout_s;  /* per try; libresolv tries twice */
    unsigned cache_size; /* entries (and 2 KiB each on average); 0: none */
    spf_dns_log_fn *log;
    bool debug; /* a line per lookup */
} spf_dns_conf_t;

typedef struct spf_dns spf_dns_t;

/* What one check used, reset by spf_dns_check_begin(). */
typedef struct spf_dns_check {
    uint32_t min_ttl;  /* smallest TTL of the answers used, <= cap */
    unsigned terms;    /* DNS-querying terms, includes included */
    unsigned voids;    /* void lookups among them */
    unsigned records;  /* SPF records fetched (the first: the domain's) */
    const char *limit; /* a section 4.6.4 limit crossed: permerror */
    bool out_of_time;  /* lookups refused past SPF_DNS_CHECK_S */
    time_t deadline;   /* CLOCK_MONOTONIC seconds */
    unsigned queries;  /* sent to the server */
    unsigned cache_hits;
    unsigned temp_errors; /* lookups answered TRY_AGAIN */
} spf_dns_check_t;

/* Parses the server address and creates the shared cache. Call before
 * dropping privileges. Returns NULL with a message in err. */
spf_dns_t *spf_dns_new(const spf_dns_conf_t *conf, char *err, size_t errlen) __attribute__((warn_unused_result));
void spf_dns_free(spf_dns_t *dns);

/* "127.0.0.1:5353" or "system(10.0.0.53:53,...)": for the start-up line. */
const char *spf_dns_server_name(const spf_dns_t *dns);

/* One layer per pool thread, with its own resolver state (reads
 * /etc/resolv.conf when no server was given: call before dropping
 * privileges). For SPF_server_new_dns(), which does not take ownership. */
SPF_dns_server_t *spf_dns_layer_new(spf_dns_t *dns, char *err, size_t errlen) __attribute__((warn_unused_result));

/* Resets the layer's per-check counters; returns them for reading after
 * the check (valid until the layer is freed). */
spf_dns_check_t *spf_dns_check_begin(SPF_dns_server_t *layer);

/* Cache statistics, for the stop line. */
void spf_dns_cache_stats(spf_dns_t *dns, uint64_t *hits, uint64_t *misses, unsigned *entries);

/* Parses "a.b.c.d:port" / "[v6]:port" (port optional, default 53).
 * Exposed for tests. Returns 0 or -1. */
int spf_dns_parse_server(const char *s, struct sockaddr_storage *ss, socklen_t *len);

#endif

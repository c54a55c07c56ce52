/*
 * resolve.c - the downstream's address by name, refreshed by TTL (resolve.h).
 *
 * libresolv, not getaddrinfo: getaddrinfo gives no TTL, and the TTL is what
 * says when a Service's new address must be picked up. Each round is
 * res_ninit (so a changed /etc/resolv.conf applies), then res_nsearch for A
 * and, when the name has no A record, AAAA; the answer section is read with
 * ns_parserr and its smallest TTL (CNAMEs on the way included) decides the
 * next round. With dns_server set, the state's server list is that one
 * server and the name is taken as absolute (no search list), as the SPF
 * helper does (spfd/spf_dns.c); without it, resolv.conf's servers, search
 * list and ndots apply, as for any program on the host (Kubernetes' short
 * Service names work), and the hosts file is read first (its IPv4 entries,
 * through the NSS enumeration gethostent_r): "localhost", Docker's
 * --add-host and Kubernetes' hostAliases keep working.
 *
 * What is published: found, or not. A definite "no" (NXDOMAIN, no A nor
 * AAAA) withdraws the address; a failure to get any answer (timeout,
 * SERVFAIL) keeps the last one found and tries again every
 * RESOLVE_RETRY_S: a DNS outage should not stop mail to a server that is
 * still there. One log line per change of what is known, not per round.
 */
#include "resolve.h"

#include "log.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <resolv.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define RESOLVE_BUF 65536 /* largest DNS message (TCP) */
#define RESOLVE_JOIN_MS 2000 /* resolve_free waits this long for a lookup in progress */
#define RESOLVE_HOST_MAX 256 /* a domain name (253) and its NUL, rounded */

enum lookup { LK_OK, LK_NONE /* the name has no address */, LK_FAIL /* no answer to go by */ };

struct resolve {
    char host[RESOLVE_HOST_MAX];
    uint16_t port;
    bool literal;
    struct sockaddr_storage dns;
    socklen_t dnslen;
    bool have_dns;
    unsigned timeout_s;

    pthread_mutex_t mu; /* guards ok, cur, curlen, first_done, stop */
    pthread_cond_t cv;  /* CLOCK_MONOTONIC */
    bool ok;
    struct sockaddr_storage cur;
    socklen_t curlen;
    bool first_done, stop;
    bool started;
    pthread_t th;

    /* the thread's own */
    struct __res_state res;
    unsigned char *buf;
    char logged[320]; /* what the last log line said, to log changes only */
};

/* "host:port", "[v6]:port": the host part into host, the port into *port. */
static int split_hostport(const char *s, char *host, size_t cap, uint16_t *port)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s)
        return -1;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || colon[1] == '\0' || p <= 0 || p > 65535)
        return -1;
    const char *h = s;
    size_t n = (size_t)(colon - s);
    if (h[0] == '[') {
        if (n < 3 || h[n - 1] != ']')
            return -1;
        h++, n -= 2;
    }
    if (n == 0 || n >= cap)
        return -1;
    memcpy(host, h, n);
    host[n] = '\0';
    *port = (uint16_t)p;
    return 0;
}

/* An IP literal with a port into ss; false when host is no literal. */
static bool literal(const char *host, uint16_t port, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        *len = sizeof *a4;
        return true;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        *len = sizeof *a6;
        return true;
    }
    return false;
}

static void set_addr(struct sockaddr_storage *ss, socklen_t *len, int family, const void *addr, uint16_t port)
{
    memset(ss, 0, sizeof *ss);
    if (family == AF_INET) {
        struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        memcpy(&a4->sin_addr, addr, 4);
        *len = sizeof *a4;
    } else {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        memcpy(&a6->sin6_addr, addr, 16);
        *len = sizeof *a6;
    }
}

static void addr_text(const struct sockaddr_storage *ss, char *out, size_t cap)
{
    const void *a = ss->ss_family == AF_INET ? (const void *)&((const struct sockaddr_in *)ss)->sin_addr
                                             : (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr;
    if (!inet_ntop(ss->ss_family, a, out, (socklen_t)cap))
        snprintf(out, cap, "?");
}

/* host equals name, any case, either with one trailing dot. */
static bool same_name(const char *name, const char *host)
{
    size_t a = strlen(name), b = strlen(host);
    if (a && name[a - 1] == '.')
        a--;
    if (b && host[b - 1] == '.')
        b--;
    return a == b && strncasecmp(name, host, a) == 0;
}

/* The hosts file's first IPv4 entry for the name (NSS enumeration: the
 * "files" source; dns has none). */
static bool hosts_lookup(resolve_t *r, struct sockaddr_storage *ss, socklen_t *len)
{
    struct hostent he, *e = NULL;
    char buf[8192];
    int herr = 0;
    bool found = false;
    sethostent(0);
    while (!found && gethostent_r(&he, buf, sizeof buf, &e, &herr) == 0 && e) {
        if (e->h_addrtype != AF_INET || e->h_length != 4 || !e->h_addr_list[0])
            continue;
        bool match = same_name(e->h_name, r->host);
        for (char **a = e->h_aliases; !match && a && *a; a++)
            match = same_name(*a, r->host);
        if (match) {
            set_addr(ss, len, AF_INET, e->h_addr_list[0], r->port);
            found = true;
        }
    }
    endhostent();
    return found;
}

/* One query (after the search list, if any); the first address of the
 * answer and the answer's smallest TTL. */
static enum lookup dns_query(resolve_t *r, int type, struct sockaddr_storage *ss, socklen_t *len, uint32_t *ttl,
                             char *why, size_t whylen)
{
    const char *tname = type == ns_t_a ? "A" : "AAAA";
    int n = res_nsearch(&r->res, r->host, ns_c_in, type, r->buf, RESOLVE_BUF);
    if (n < 0) {
        switch (r->res.res_h_errno) {
        case HOST_NOT_FOUND:
            snprintf(why, whylen, "NXDOMAIN: no such name");
            return LK_NONE;
        case NO_DATA:
            snprintf(why, whylen, "no %s record", tname);
            return LK_NONE;
        case TRY_AGAIN:
            snprintf(why, whylen, "no answer for %s (timeout or SERVFAIL)", tname);
            return LK_FAIL;
        default:
            snprintf(why, whylen, "the DNS server refused the %s query or failed", tname);
            return LK_FAIL;
        }
    }
    if (n > RESOLVE_BUF)
        n = RESOLVE_BUF;
    ns_msg msg;
    if (ns_initparse(r->buf, n, &msg) < 0) {
        snprintf(why, whylen, "unreadable DNS answer for %s", tname);
        return LK_FAIL;
    }
    uint32_t min = UINT32_MAX;
    bool got = false;
    for (int i = 0; i < ns_msg_count(msg, ns_s_an); i++) {
        ns_rr rr;
        if (ns_parserr(&msg, ns_s_an, i, &rr) < 0) {
            snprintf(why, whylen, "unreadable DNS answer for %s", tname);
            return LK_FAIL;
        }
        if (ns_rr_class(rr) != ns_c_in)
            continue;
        int t = ns_rr_type(rr);
        bool addr = t == type && ns_rr_rdlen(rr) == (type == ns_t_a ? 4 : 16);
        if (t != ns_t_cname && !addr)
            continue;
        if (ns_rr_ttl(rr) < min)
            min = ns_rr_ttl(rr);
        if (addr && !got) {
            set_addr(ss, len, type == ns_t_a ? AF_INET : AF_INET6, ns_rr_rdata(rr), r->port);
            got = true;
        }
    }
    if (!got) {
        snprintf(why, whylen, "no %s record", tname);
        return LK_NONE;
    }
    *ttl = min;
    return LK_OK;
}

/* libresolv's state for one round: resolv.conf, or our one server. */
static int res_setup(resolve_t *r, char *why, size_t whylen)
{
    memset(&r->res, 0, sizeof r->res);
    if (res_ninit(&r->res) != 0) {
        snprintf(why, whylen, "res_ninit failed: no usable /etc/resolv.conf");
        return -1;
    }
    r->res.retrans = (int)r->timeout_s;
    r->res.retry = 2;
    if (!r->have_dns)
        return 0;
    r->res.options &= ~(unsigned long)(RES_DEFNAMES | RES_DNSRCH);
    /* As spfd/spf_dns.c: forget resolv.conf's servers (res_nclose frees the
     * IPv6 ones), then name ours; an IPv6 server goes in _u._ext.nsaddrs. */
    res_nclose(&r->res);
    r->res.nscount = 1;
    if (r->dns.ss_family == AF_INET) {
        memcpy(&r->res.nsaddr_list[0], &r->dns, sizeof(struct sockaddr_in));
    } else {
        struct sockaddr_in6 *a6 = malloc(sizeof *a6);
        if (!a6) {
            snprintf(why, whylen, "out of memory");
            return -1;
        }
        memcpy(a6, &r->dns, sizeof *a6);
        memset(&r->res.nsaddr_list[0], 0, sizeof r->res.nsaddr_list[0]);
        r->res._u._ext.nsaddrs[0] = a6;
        r->res._u._ext.nssocks[0] = -1;
    }
    return 0;
}

static enum lookup lookup(resolve_t *r, struct sockaddr_storage *ss, socklen_t *len, uint32_t *ttl,
                          const char **source, char *why, size_t whylen)
{
    if (!r->have_dns && hosts_lookup(r, ss, len)) {
        *ttl = RESOLVE_HOSTS_TTL_S;
        *source = "hosts";
        return LK_OK;
    }
    *source = "dns";
    if (res_setup(r, why, whylen) != 0)
        return LK_FAIL;
    enum lookup st = dns_query(r, ns_t_a, ss, len, ttl, why, whylen);
    if (st == LK_NONE && r->res.res_h_errno != HOST_NOT_FOUND) {
        char why6[160];
        enum lookup st6 = dns_query(r, ns_t_aaaa, ss, len, ttl, why6, sizeof why6);
        if (st6 == LK_OK)
            st = LK_OK;
        else if (st6 == LK_FAIL)
            st = LK_FAIL, snprintf(why, whylen, "%s", why6);
        else
            snprintf(why, whylen, "no A or AAAA record");
    }
    res_nclose(&r->res);
    return st;
}

/* A line when what is known changed since the last one. */
static void report(resolve_t *r, enum lookup st, bool ok, const struct sockaddr_storage *cur, uint32_t ttl,
                   unsigned next_s, const char *source, const char *why)
{
    char addr[INET6_ADDRSTRLEN] = "", key[sizeof r->logged];
    if (ok)
        addr_text(cur, addr, sizeof addr);
    snprintf(key, sizeof key, "%d %s %s", (int)st, addr, st == LK_OK ? source : why);
    bool changed = strcmp(key, r->logged) != 0;
    int level = !changed ? LOG_DEBUG : st == LK_OK ? LOG_INFO : LOG_WARN;
    if (!log_enabled(level))
        return;
    snprintf(r->logged, sizeof r->logged, "%s", key);
    logbuf_t b;
    lb_init(&b, st == LK_OK ? "downstream_resolved" : ok ? "downstream_resolve_failed" : "downstream_unresolved");
    lb_cstr(&b, "name", r->host);
    if (ok) {
        lb_cstr(&b, "address", addr);
        lb_u64(&b, "port", r->port);
    }
    if (st == LK_OK) {
        lb_cstr(&b, "source", source);
        lb_u64(&b, "ttl", ttl);
    } else {
        lb_cstr(&b, "error", why);
    }
    lb_u64(&b, "next_s", next_s);
    if (st != LK_OK)
        lb_cstr(&b, "note", ok ? "keeping the last address until an answer comes"
                               : "until the name resolves: MAIL gets 451 4.4.1, /readyz 503");
    log_emit(level, &b);
}

static void *resolve_main(void *arg)
{
    resolve_t *r = arg;
    for (;;) {
        struct sockaddr_storage ss, cur;
        socklen_t len = 0;
        uint32_t ttl = 0;
        const char *source = "dns";
        char why[160] = "";
        enum lookup st = lookup(r, &ss, &len, &ttl, &source, why, sizeof why);
        unsigned next = RESOLVE_RETRY_S;
        if (st == LK_OK)
            next = ttl < RESOLVE_TTL_MIN_S ? RESOLVE_TTL_MIN_S : ttl > RESOLVE_TTL_MAX_S ? RESOLVE_TTL_MAX_S : ttl;
        pthread_mutex_lock(&r->mu);
        if (st == LK_OK) {
            r->cur = ss;
            r->curlen = len;
            r->ok = true;
        } else if (st == LK_NONE) {
            r->ok = false;
        }
        bool ok = r->ok;
        cur = r->cur;
        r->first_done = true;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        report(r, st, ok, &cur, ttl, next, source, why);

        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += next;
        pthread_mutex_lock(&r->mu);
        while (!r->stop && pthread_cond_timedwait(&r->cv, &r->mu, &until) != ETIMEDOUT)
            ;
        bool stop = r->stop;
        pthread_mutex_unlock(&r->mu);
        if (stop)
            return NULL;
    }
}

resolve_t *resolve_new(const char *hostport, const char *dns_server, unsigned timeout_s, char *err, size_t errlen)
{
    resolve_t *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, errlen, "downstream: out of memory");
        return NULL;
    }
    if (split_hostport(hostport, r->host, sizeof r->host, &r->port) != 0) {
        snprintf(err, errlen, "downstream: expected host:port or [IPv6]:port: %s", hostport);
        free(r);
        return NULL;
    }
    r->timeout_s = timeout_s ? timeout_s : 5;
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (literal(r->host, r->port, &r->cur, &r->curlen)) {
        r->literal = r->ok = r->first_done = true;
        return r;
    }
    if (dns_server && dns_server[0]) {
        char h[RESOLVE_HOST_MAX];
        uint16_t p;
        if (split_hostport(dns_server, h, sizeof h, &p) != 0 || !literal(h, p, &r->dns, &r->dnslen)) {
            snprintf(err, errlen, "dns_server: expected an IP address and port: %s", dns_server);
            resolve_free(r);
            return NULL;
        }
        r->have_dns = true;
    }
    return r;
}

int resolve_start(resolve_t *r, char *err, size_t errlen)
{
    if (r->literal)
        return 0;
    r->buf = malloc(RESOLVE_BUF);
    if (!r->buf) {
        snprintf(err, errlen, "downstream: out of memory");
        return -1;
    }
    if ((errno = pthread_create(&r->th, NULL, resolve_main, r))) {
        snprintf(err, errlen, "downstream: cannot start the resolver thread: %s", strerror(errno));
        return -1;
    }
    r->started = true;
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += RESOLVE_FIRST_WAIT_MS / 1000;
    until.tv_nsec += (long)(RESOLVE_FIRST_WAIT_MS % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000)
        until.tv_sec++, until.tv_nsec -= 1000000000;
    pthread_mutex_lock(&r->mu);
    while (!r->first_done && pthread_cond_timedwait(&r->cv, &r->mu, &until) != ETIMEDOUT)
        ;
    pthread_mutex_unlock(&r->mu);
    return 0;
}

void resolve_free(resolve_t *r)
{
    if (!r)
        return;
    if (r->started) {
        pthread_mutex_lock(&r->mu);
        r->stop = true;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += RESOLVE_JOIN_MS / 1000;
        if (pthread_timedjoin_np(r->th, NULL, &until) != 0) {
            /* Inside a DNS query that will time out by itself: the process
             * is ending, leave the thread its state. */
            pthread_detach(r->th);
            return;
        }
    }
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r->buf);
    free(r);
}

bool resolve_get(resolve_t *r, struct sockaddr_storage *ss, socklen_t *len)
{
    if (!r)
        return false;
    pthread_mutex_lock(&r->mu);
    bool ok = r->ok;
    if (ok && ss) {
        *ss = r->cur;
        *len = r->curlen;
    }
    pthread_mutex_unlock(&r->mu);
    return ok;
}

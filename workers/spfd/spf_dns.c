/*
 * spf_dns.c - libspf2's DNS layer inside the SPF helper: one server, a TTL
 * cache shared by the pool threads, and the per-check accounting RFC 7208
 * asks for.
 *
 * libspf2's own resolv layer follows /etc/resolv.conf only, asks for type
 * SPF (99) before TXT on every name, drops negative TTLs and counts no void
 * lookups. This one builds each query with res_nmkquery and sends it with
 * res_nsend on a per-thread struct __res_state whose nameserver list is
 * exactly the configured server: libresolv keeps the retries, the ID and
 * source-port randomisation and the TCP fallback on truncation, and the
 * whole answer (rcode, authority section) comes back here to be parsed, so
 * NXDOMAIN and NODATA keep their SOA TTL.
 *
 * RFC 7208 section 4.6.4 counts terms, and libspf2 only sees lookups (and
 * counts each included record's terms on their own), so the counting is
 * done here, per check: a term is the lookup of a term's own name (A/AAAA,
 * MX, PTR) or the fetch of an include:/redirect= record (get_spf below);
 * the address lookups of the names an MX or PTR answer listed are part of
 * that term. Void lookups are terms that found nothing, less PTR (the
 * client, not the domain, owns its reverse zone) and less every TXT lookup
 * (the checked domain's own gives "none", an include or redirect target
 * without a record is a permerror of its own, exp= MUST NOT count). A
 * limit crossed stops libspf2 with a refused lookup; spfd.c turns that into
 * the permerror.
 *
 * libspf2 1.2.10 is also lenient with record syntax and strict where the
 * RFC is not; get_spf checks each record against the RFC's grammar and
 * hands libspf2 an equivalent it evaluates correctly (spf_record.c).
 */
#include "spf_dns.h"
#include "spf_record.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define SPF_DNS_BUF 65536             /* largest DNS message, over TCP */
#define SPF_DNS_CACHE_ENTRY_MAX 16384 /* octets one cached answer may hold */
#define SPF_DNS_CACHE_AVG_BYTES 2048  /* the cache's byte budget per entry */

typedef struct cache_entry {
    struct cache_entry *hnext;         /* bucket chain */
    struct cache_entry *older, *newer; /* insertion order */
    uint32_t hash;
    ns_type type;
    time_t expires; /* CLOCK_MONOTONIC seconds */
    size_t bytes;   /* what it holds, roughly */
    SPF_dns_rr_t *rr;
    char name[]; /* lowercased, no trailing dot */
} cache_entry_t;

struct spf_dns {
    struct sockaddr_storage server;
    socklen_t server_len;
    bool have_server;
    unsigned timeout_s;
    spf_dns_log_fn *log;
    bool debug;
    char server_name[256];

    pthread_mutex_t mu; /* guards everything below */
    cache_entry_t **buckets;
    uint32_t nbuckets; /* power of two */
    unsigned cap, count;
    size_t bytes, max_bytes;
    cache_entry_t *oldest, *newest;
    time_t last_sweep;
    uint64_t hits, misses;
};

/* One per pool thread; libspf2 sees only srv (srv.hook points back here). */
typedef struct spf_dns_layer {
    SPF_dns_server_t srv;
    spf_dns_t *dns;
    struct __res_state res;
    unsigned char *buf; /* SPF_DNS_BUF octets */
    spf_dns_check_t check;
    /* The names an MX or PTR answer just listed: libspf2 asks for their
     * addresses next, in this order, and those lookups are not terms. */
    SPF_dns_rr_t *follow;
    int follow_next;
} spf_dns_layer_t;

static time_t mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return ts.tv_sec;
}

static const char *type_name(ns_type t)
{
    switch (t) {
    case ns_t_a:
        return "A";
    case ns_t_aaaa:
        return "AAAA";
    case ns_t_mx:
        return "MX";
    case ns_t_ptr:
        return "PTR";
    case ns_t_txt:
        return "TXT";
    case ns_t_spf:
        return "SPF";
    default:
        return "other";
    }
}

/* A name from DNS or from a macro, made safe for a logfmt value. */
static const char *log_name(char *dst, size_t cap, const char *s)
{
    size_t n = 0;
    for (; *s && n + 1 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        dst[n++] = (c > 0x20 && c < 0x7f && c != '"' && c != '\\' && c != '=') ? (char)c : '?';
    }
    dst[n] = '\0';
    return n ? dst : "-";
}

/* ---- server address --------------------------------------------------- */

static int parse_port(const char *p, unsigned *port)
{
    unsigned v = 0;
    if (!*p)
        return -1;
    for (; *p; p++) {
        if (*p < '0' || *p > '9' || v > 65535)
            return -1;
        v = v * 10 + (unsigned)(*p - '0');
    }
    if (v == 0 || v > 65535)
        return -1;
    *port = v;
    return 0;
}

int spf_dns_parse_server(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[INET6_ADDRSTRLEN];
    const char *port_s = NULL;
    unsigned port = 53;
    size_t n;
    bool v6;

    memset(ss, 0, sizeof *ss);
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || end == s + 1)
            return -1;
        n = (size_t)(end - s - 1);
        if (end[1] == ':')
            port_s = end + 2;
        else if (end[1])
            return -1;
        s++;
        v6 = true;
    } else {
        const char *colon = strchr(s, ':');
        if (colon && strchr(colon + 1, ':')) { /* bare IPv6, port 53 */
            n = strlen(s);
            v6 = true;
        } else {
            n = colon ? (size_t)(colon - s) : strlen(s);
            port_s = colon ? colon + 1 : NULL;
            v6 = false;
        }
    }
    if (n == 0 || n >= sizeof host)
        return -1;
    memcpy(host, s, n);
    host[n] = '\0';
    if (port_s && parse_port(port_s, &port))
        return -1;
    if (v6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1)
            return -1;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        *len = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
            return -1;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        *len = sizeof *a;
    }
    return 0;
}

static void format_addr(const struct sockaddr *sa, char *dst, size_t cap)
{
    char host[INET6_ADDRSTRLEN] = "?";
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        snprintf(dst, cap, "[%s]:%u", host, ntohs(a->sin6_port));
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        snprintf(dst, cap, "%s:%u", host, ntohs(a->sin_port));
    }
}

/* ---- answers as libspf2 records ---------------------------------------- */

static size_t rr_data_len(ns_type type, const SPF_dns_rr_data_t *d)
{
    switch (type) {
    case ns_t_a:
        return sizeof d->a;
    case ns_t_aaaa:
        return sizeof d->aaaa;
    default:
        return strlen(d->txt) + 1; /* ptr, mx, txt: one string */
    }
}

/* Never NULL but when out of memory (libspf2 then aborts: it has no way to
 * take a failed lookup without a record). */
static SPF_dns_rr_t *rr_new(SPF_dns_server_t *srv, const char *name, ns_type type, uint32_t ttl, int herrno)
{
    return SPF_dns_rr_new_init(srv, name, type, (int)ttl, herrno);
}

static SPF_dns_rr_t *rr_copy(const SPF_dns_rr_t *src, SPF_dns_server_t *srv)
{
    SPF_dns_rr_t *dst = rr_new(srv, src->domain, src->rr_type, (uint32_t)src->ttl, src->herrno);
    if (!dst)
        return NULL;
    for (int i = 0; i < src->num_rr; i++) {
        size_t len = rr_data_len(src->rr_type, src->rr[i]);
        if (SPF_dns_rr_buf_realloc(dst, i, len) != SPF_E_SUCCESS) {
            SPF_dns_rr_free(dst);
            return NULL;
        }
        memcpy(dst->rr[i], src->rr[i], len);
        dst->num_rr = i + 1;
    }
    return dst;
}

static int rr_add(SPF_dns_rr_t *rr, const void *data, size_t len, bool string)
{
    int i = rr->num_rr;
    if (SPF_dns_rr_buf_realloc(rr, i, len + (string ? 1 : 0)) != SPF_E_SUCCESS)
        return -1;
    memcpy(rr->rr[i], data, len);
    if (string)
        ((char *)rr->rr[i])[len] = '\0';
    rr->num_rr = i + 1;
    return 0;
}

/*
 * TXT: the character-strings of one RR concatenated (RFC 7208 section
 * 3.3). Two rewrites, both for libspf2's sake:
 *  - a NUL octet cannot reach it inside a C string; it becomes 0x01, which
 *    no SPF term accepts, so such a record is a permerror rather than
 *    silently cut short;
 *  - a TXT record that is not an SPF record reaches libspf2 only as an
 *    explanation (exp=), and libspf2 1.2.10's macro compiler mangles a
 *    literal space there ("See me." comes out "See%me." with the macros
 *    after it left unexpanded): the space goes in as "%_", the macro for
 *    one space (section 7.1), which it handles.
 */
static int rr_add_txt(SPF_dns_rr_t *rr, const unsigned char *p, size_t len)
{
    int idx = rr->num_rr;
    if (SPF_dns_rr_buf_realloc(rr, idx, 2 * len + 1) != SPF_E_SUCCESS)
        return -1;
    char *txt = rr->rr[idx]->txt;
    size_t n = 0;
    while (len > 0) {
        size_t k = *p++;
        len--;
        if (k > len)
            return -1; /* a string runs past the RR: malformed */
        memcpy(txt + n, p, k);
        n += k;
        p += k;
        len -= k;
    }
    bool spf = n >= 7 && strncasecmp(txt, "v=spf1 ", 7) == 0;
    if (n == 6 && strncasecmp(txt, "v=spf1", 6) == 0)
        spf = true;
    size_t spaces = 0;
    for (size_t i = 0; i < n; i++) {
        if (!txt[i])
            txt[i] = '\x01';
        else if (txt[i] == ' ' && !spf)
            spaces++;
    }
    if (spaces) { /* widen in place, from the end */
        size_t w = n + spaces;
        for (size_t i = n; i-- > 0;) {
            if (txt[i] == ' ') {
                txt[--w] = '_';
                txt[--w] = '%';
            } else {
                txt[--w] = txt[i];
            }
        }
        n += spaces;
    }
    txt[n] = '\0';
    rr->num_rr = idx + 1;
    return 0;
}

static int rr_add_name(SPF_dns_rr_t *rr, const ns_msg *msg, const unsigned char *p)
{
    char name[NS_MAXDNAME];
    if (ns_name_uncompress(ns_msg_base(*msg), ns_msg_end(*msg), p, name, sizeof name) < 0)
        return -1;
    return rr_add(rr, name, strlen(name), true);
}

static uint32_t rr_ttl(const ns_rr *r)
{
    unsigned long t = ns_rr_ttl(*r);
    return t > 0x7fffffffUL ? 0 : (uint32_t)t; /* RFC 2181 section 8 */
}

/* The negative TTL of RFC 2308 section 5: min(SOA TTL, SOA MINIMUM), or -1
 * when the authority section carries no SOA. */
static long negative_ttl(ns_msg *msg)
{
    int n = ns_msg_count(*msg, ns_s_ns);
    for (int i = 0; i < n; i++) {
        ns_rr r;
        if (ns_parserr(msg, ns_s_ns, i, &r) < 0)
            return -1;
        if (ns_rr_type(r) != ns_t_soa)
            continue;
        const unsigned char *p = ns_rr_rdata(r), *end = p + ns_rr_rdlen(r);
        for (int names = 0; names < 2; names++) { /* MNAME, RNAME */
            int k = dn_skipname(p, end);
            if (k < 0)
                return -1;
            p += k;
        }
        if (end - p < 20)
            return -1;
        uint32_t minimum = ns_get32(p + 16), ttl = rr_ttl(&r);
        return minimum < ttl ? minimum : ttl;
    }
    return -1;
}

/* Fills rr from the answer section: RRs of the asked type, in order. The
 * smallest TTL among them and the CNAMEs that led there goes to *ttl. */
static int parse_answers(ns_msg *msg, ns_type type, SPF_dns_rr_t *rr, uint32_t *ttl)
{
    int n = ns_msg_count(*msg, ns_s_an);
    for (int i = 0; i < n; i++) {
        ns_rr r;
        if (ns_parserr(msg, ns_s_an, i, &r) < 0)
            return -1;
        ns_type t = ns_rr_type(r);
        if (ns_rr_class(r) != ns_c_in || (t != type && t != ns_t_cname))
            continue;
        if (rr_ttl(&r) < *ttl)
            *ttl = rr_ttl(&r);
        const unsigned char *p = ns_rr_rdata(r);
        size_t len = ns_rr_rdlen(r);
        int err = 0;
        switch (t) {
        case ns_t_a:
            if (len == 4)
                err = rr_add(rr, p, 4, false);
            break;
        case ns_t_aaaa:
            if (len == 16)
                err = rr_add(rr, p, 16, false);
            break;
        case ns_t_mx:
            if (len > NS_INT16SZ)
                err = rr_add_name(rr, msg, p + NS_INT16SZ);
            break;
        case ns_t_ptr:
            err = rr_add_name(rr, msg, p);
            break;
        case ns_t_txt:
            err = rr_add_txt(rr, p, len);
            break;
        default:
            break; /* CNAME: its TTL only */
        }
        if (err)
            return -1;
    }
    return 0;
}

/* ---- the cache ----------------------------------------------------------- */

static uint32_t key_hash(const char *name, ns_type type)
{
    uint32_t h = 2166136261u ^ (uint32_t)type;
    for (; *name; name++)
        h = (h ^ (unsigned char)*name) * 16777619u;
    return h;
}

static void cache_unlink(spf_dns_t *d, cache_entry_t *e)
{
    cache_entry_t **pp = &d->buckets[e->hash & (d->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    if (e->older)
        e->older->newer = e->newer;
    else
        d->oldest = e->newer;
    if (e->newer)
        e->newer->older = e->older;
    else
        d->newest = e->older;
    d->count--;
    d->bytes -= e->bytes;
}

static void cache_entry_free(cache_entry_t *e)
{
    if (e->rr)
        SPF_dns_rr_free(e->rr);
    free(e);
}

static cache_entry_t *cache_find(spf_dns_t *d, const char *name, ns_type type, uint32_t h)
{
    for (cache_entry_t *e = d->buckets[h & (d->nbuckets - 1)]; e; e = e->hnext)
        if (e->hash == h && e->type == type && strcmp(e->name, name) == 0)
            return e;
    return NULL;
}

/* Expired entries go first (one sweep a second at most, so a full cache of
 * live entries costs O(1) per insert), then the oldest. */
static void cache_make_room(spf_dns_t *d, time_t now, size_t need)
{
    if (d->count < d->cap && d->bytes + need <= d->max_bytes)
        return;
    if (now != d->last_sweep) {
        d->last_sweep = now;
        for (cache_entry_t *e = d->oldest, *next; e; e = next) {
            next = e->newer;
            if (e->expires <= now) {
                cache_unlink(d, e);
                cache_entry_free(e);
            }
        }
    }
    while ((d->count >= d->cap || d->bytes + need > d->max_bytes) && d->oldest) {
        cache_entry_t *e = d->oldest;
        cache_unlink(d, e);
        cache_entry_free(e);
    }
}

/* A copy of the cached answer owned by the caller, or NULL on a miss. */
static SPF_dns_rr_t *cache_get(spf_dns_t *d, const char *name, ns_type type, SPF_dns_server_t *srv, uint32_t *ttl)
{
    if (!d->cap)
        return NULL;
    uint32_t h = key_hash(name, type);
    time_t now = mono_now();
    SPF_dns_rr_t *rr = NULL;
    pthread_mutex_lock(&d->mu);
    cache_entry_t *e = cache_find(d, name, type, h);
    if (e && e->expires > now) {
        rr = rr_copy(e->rr, srv);
        *ttl = (uint32_t)(e->expires - now);
    } else if (e) {
        cache_unlink(d, e);
        cache_entry_free(e);
    }
    if (rr)
        d->hits++;
    else
        d->misses++;
    pthread_mutex_unlock(&d->mu);
    return rr;
}

/* Not kept: TTL 0, and answers over SPF_DNS_CACHE_ENTRY_MAX octets (a
 * domain publishing that much TXT must not push everything else out). */
static void cache_put(spf_dns_t *d, const char *name, ns_type type, const SPF_dns_rr_t *rr, uint32_t ttl)
{
    size_t len = strlen(name) + 1, bytes = sizeof(cache_entry_t) + len;
    for (int i = 0; i < rr->num_rr; i++)
        bytes += rr_data_len(rr->rr_type, rr->rr[i]) + 32;
    if (!d->cap || ttl == 0 || bytes > SPF_DNS_CACHE_ENTRY_MAX)
        return;
    cache_entry_t *e = malloc(sizeof *e + len);
    if (!e)
        return;
    memcpy(e->name, name, len);
    e->type = type;
    e->hash = key_hash(name, type);
    e->bytes = bytes;
    e->rr = rr_copy(rr, NULL);
    if (!e->rr) {
        free(e);
        return;
    }
    time_t now = mono_now();
    e->expires = now + (time_t)ttl;
    pthread_mutex_lock(&d->mu);
    cache_entry_t *old = cache_find(d, name, type, e->hash);
    if (old) { /* two threads asked at once: keep the newer answer */
        cache_unlink(d, old);
        cache_entry_free(old);
    }
    cache_make_room(d, now, e->bytes);
    e->hnext = d->buckets[e->hash & (d->nbuckets - 1)];
    d->buckets[e->hash & (d->nbuckets - 1)] = e;
    e->newer = NULL;
    e->older = d->newest;
    if (d->newest)
        d->newest->newer = e;
    else
        d->oldest = e;
    d->newest = e;
    d->count++;
    d->bytes += e->bytes;
    pthread_mutex_unlock(&d->mu);
}

void spf_dns_cache_stats(spf_dns_t *d, uint64_t *hits, uint64_t *misses, unsigned *entries)
{
    pthread_mutex_lock(&d->mu);
    *hits = d->hits;
    *misses = d->misses;
    *entries = d->count;
    pthread_mutex_unlock(&d->mu);
}

/* ---- one query on the wire ----------------------------------------------- */

/*
 * Asks the server; NULL when the name cannot be put in a query. TRY_AGAIN
 * for a timeout, SERVFAIL, REFUSED (libresolv tries again, then gives up
 * with -1) and anything unparsable; HOST_NOT_FOUND for NXDOMAIN; NO_DATA
 * for NOERROR without an RR of the asked type. *reply_ttl is what the
 * check's result may rest on, *cache_ttl how long to keep the answer (0:
 * do not).
 */
static SPF_dns_rr_t *query(spf_dns_layer_t *l, const char *name, ns_type type, uint32_t *reply_ttl, uint32_t *cache_ttl)
{
    SPF_dns_server_t *srv = &l->srv;
    unsigned char q[NS_PACKETSZ];
    *reply_ttl = *cache_ttl = 0;

    int qlen = res_nmkquery(&l->res, ns_o_query, name, ns_c_in, type, NULL, 0, NULL, q, sizeof q);
    if (qlen < 0) /* not a name DNS can carry (a label over 63 octets, ...) */
        return NULL;
    l->check.queries++;
    int n = res_nsend(&l->res, q, qlen, l->buf, SPF_DNS_BUF);
    if (n < 0)
        return rr_new(srv, name, type, 0, TRY_AGAIN);
    if (n > SPF_DNS_BUF)
        n = SPF_DNS_BUF;

    ns_msg msg;
    if (ns_initparse(l->buf, n, &msg) < 0)
        return rr_new(srv, name, type, 0, TRY_AGAIN);
    int rcode = ns_msg_getflag(msg, ns_f_rcode);
    if (rcode != ns_r_noerror && rcode != ns_r_nxdomain)
        return rr_new(srv, name, type, 0, TRY_AGAIN);

    uint32_t ttl = SPF_DNS_TTL_CAP;
    SPF_dns_rr_t *rr = rr_new(srv, name, type, 0, NETDB_SUCCESS);
    if (!rr)
        return NULL;
    if (rcode == ns_r_noerror && parse_answers(&msg, type, rr, &ttl) < 0) {
        SPF_dns_rr_free(rr);
        return rr_new(srv, name, type, 0, TRY_AGAIN);
    }
    if (rcode == ns_r_noerror && rr->num_rr > 0) {
        rr->ttl = ttl;
        *reply_ttl = *cache_ttl = ttl;
        return rr;
    }
    rr->num_rr = 0; /* CNAMEs alone are no answer */
    rr->herrno = rcode == ns_r_nxdomain ? HOST_NOT_FOUND : NO_DATA;
    long neg = negative_ttl(&msg);
    *reply_ttl = neg >= 0 ? (uint32_t)neg : SPF_DNS_NEG_TTL_REPLY;
    *cache_ttl = neg >= 0 ? (uint32_t)neg : SPF_DNS_NEG_TTL_CACHE;
    if (*reply_ttl > SPF_DNS_TTL_CAP)
        *reply_ttl = SPF_DNS_TTL_CAP;
    if (*cache_ttl > SPF_DNS_TTL_CAP)
        *cache_ttl = SPF_DNS_TTL_CAP;
    rr->ttl = *reply_ttl;
    return rr;
}

/* ---- the layer libspf2 calls --------------------------------------------- */

/*
 * The cache key and query name: lowercased, one trailing dot dropped, and
 * over 253 octets cut from the left a label at a time (RFC 7208 section
 * 7.3: a macro may expand to more than a name can hold). False (key empty)
 * when nothing is left.
 */
static bool make_key(const char *domain, char *key, size_t cap)
{
    size_t n = strlen(domain);
    key[0] = '\0';
    if (n > 0 && domain[n - 1] == '.')
        n--;
    while (n > 253) {
        const char *dot = memchr(domain, '.', n);
        if (!dot)
            return false;
        n -= (size_t)(dot + 1 - domain);
        domain = dot + 1;
    }
    if (n == 0 || n >= cap)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = domain[i];
        key[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    key[n] = '\0';
    return true;
}

static void follow_clear(spf_dns_layer_t *l)
{
    if (l->follow)
        SPF_dns_rr_free(l->follow);
    l->follow = NULL;
    l->follow_next = 0;
}

/* Is this the address lookup of the next name of the last MX/PTR answer? */
static bool follow_match(spf_dns_layer_t *l, const char *domain, ns_type type)
{
    if (!l->follow || (type != ns_t_a && type != ns_t_aaaa) || l->follow_next >= l->follow->num_rr)
        return false;
    if (strcasecmp(l->follow->rr[l->follow_next]->txt, domain) != 0)
        return false;
    l->follow_next++;
    return true;
}

static void set_limit(spf_dns_check_t *c, const char *why)
{
    if (!c->limit)
        c->limit = why;
}

/* A term's own lookup: counted against the ten-term limit, and against
 * the void limit when it is void (not a PTR: see the top of this file). */
static bool count_term(spf_dns_check_t *c)
{
    if (++c->terms > SPF_DNS_TERMS_MAX) {
        set_limit(c, "more than 10 DNS-querying terms");
        return false;
    }
    return true;
}

static void account(spf_dns_layer_t *l, const SPF_dns_rr_t *rr, uint32_t ttl, bool term)
{
    spf_dns_check_t *c = &l->check;
    if (rr->herrno == TRY_AGAIN) {
        c->temp_errors++;
        return;
    }
    if (ttl < c->min_ttl)
        c->min_ttl = ttl;
    if (term && rr->rr_type != ns_t_ptr && rr->num_rr == 0 && ++c->voids > SPF_DNS_VOID_MAX)
        set_limit(c, "more than 2 void DNS lookups");
    if (rr->rr_type == ns_t_mx && rr->num_rr > SPF_DNS_MX_MAX)
        set_limit(c, "more than 10 MX records");
}

/* Cache, then the server; never NULL but out of memory. */
static SPF_dns_rr_t *fetch(spf_dns_layer_t *l, const char *domain, ns_type type, uint32_t *ttl, const char **how)
{
    char key[NS_MAXDNAME];
    uint32_t cache_ttl = 0;
    SPF_dns_rr_t *rr = NULL;
    *ttl = SPF_DNS_TTL_CAP; /* no name to ask for: nothing there, for good */
    *how = "none";
    if (!make_key(domain, key, sizeof key))
        return rr_new(&l->srv, domain, type, 0, HOST_NOT_FOUND);
    rr = cache_get(l->dns, key, type, &l->srv, ttl);
    if (rr) {
        l->check.cache_hits++;
        *how = "cache";
        return rr;
    }
    rr = query(l, key, type, ttl, &cache_ttl);
    if (!rr) {
        *ttl = SPF_DNS_TTL_CAP;
        return rr_new(&l->srv, domain, type, 0, HOST_NOT_FOUND);
    }
    *how = "query";
    if (rr->herrno != TRY_AGAIN)
        cache_put(l->dns, key, type, rr, cache_ttl);
    return rr;
}

static SPF_dns_rr_t *layer_lookup(SPF_dns_server_t *srv, const char *domain, ns_type type, int should_cache)
{
    spf_dns_layer_t *l = srv->hook;
    spf_dns_t *d = l->dns;
    (void)should_cache; /* TTLs decide, for every lookup alike */

    /* RFC 7208 section 3.1 retired type SPF; libspf2 still asks for it
     * first (when no get_spf hook is set), and NO_DATA sends it on to TXT
     * without a query. */
    if (type == ns_t_spf)
        return rr_new(srv, domain, type, 0, NO_DATA);
    bool follows = follow_match(l, domain, type);
    bool after_ptr = follows && l->follow->rr_type == ns_t_ptr;
    if (!follows)
        follow_clear(l);
    bool term = !follows && type != ns_t_txt;
    if (l->check.limit || (term && !count_term(&l->check))) /* stop the evaluation here */
        return rr_new(srv, domain, type, 0, TRY_AGAIN);
    if (mono_now() >= l->check.deadline) { /* a temperror, whatever is left */
        l->check.out_of_time = true;
        return rr_new(srv, domain, type, 0, TRY_AGAIN);
    }

    uint32_t ttl;
    const char *how;
    SPF_dns_rr_t *rr = fetch(l, domain, type, &ttl, &how);
    if (!rr)
        return NULL;
    account(l, rr, ttl, term);
    if (d->debug && d->log) {
        char nb[128];
        static const char *const st[] = {"ok", "nxdomain", "temp", "error", "nodata"};
        int h = rr->herrno;
        d->log(0, "event=spf_dns name=%s type=%s via=%s status=%s answers=%d ttl=%u term=%d terms=%u voids=%u",
               log_name(nb, sizeof nb, domain), type_name(type), how, h >= 0 && h <= 4 ? st[h] : "?", rr->num_rr,
               (unsigned)ttl, term, l->check.terms, l->check.voids);
    }
    if (l->check.limit) {
        rr->num_rr = 0;
        rr->herrno = TRY_AGAIN;
    } else if (after_ptr && rr->herrno == TRY_AGAIN) {
        /* section 5.5: a PTR name whose address lookup fails is skipped */
        rr->herrno = NO_DATA;
    } else if ((type == ns_t_mx || type == ns_t_ptr) && rr->num_rr > 0) {
        /* section 4.6.4: the first 10 PTR names only, and no error (libspf2
         * would make more than 10 a permerror, which the client's own
         * reverse zone must not be able to cause) */
        if (type == ns_t_ptr && rr->num_rr > SPF_DNS_PTR_MAX)
            rr->num_rr = SPF_DNS_PTR_MAX;
        l->follow = rr_copy(rr, NULL);
        l->follow_next = 0;
    }
    return rr;
}

/* ---- the record, checked (spf_record.c) before libspf2 compiles it --------------- */

static SPF_errcode_t record_error(SPF_response_t *resp, SPF_result_t result, SPF_errcode_t err, const char *fmt,
                                  const char *a, const char *b)
{
    resp->result = result;
    resp->reason = SPF_REASON_FAILURE;
    resp->err = err;
    return SPF_response_add_error(resp, err, fmt, a, b);
}

/*
 * libspf2's get_spf hook: the record of the current domain, for the check
 * itself and for each include: and redirect= (each of those a term against
 * the limit of ten; libspf2 counts each included record on its own). TXT
 * only, exactly one "v=spf1" record, checked and rewritten as above.
 */
static SPF_errcode_t layer_get_spf(SPF_server_t *server, SPF_request_t *req, SPF_response_t *resp, SPF_record_t **recp)
{
    spf_dns_layer_t *l = server->resolver->hook;
    const char *domain = req->cur_dom;
    *recp = NULL;
    if (l->check.records++ > 0 && (l->check.limit || !count_term(&l->check)))
        return record_error(resp, SPF_RESULT_PERMERROR, SPF_E_BIG_DNS, "%s for '%s'", "too many DNS lookups", domain);

    SPF_dns_rr_t *rr = SPF_dns_lookup(server->resolver, domain, ns_t_txt, 1);
    SPF_errcode_t err;
    int found = 0, idx = 0;
    switch (rr->herrno) {
    case NETDB_SUCCESS:
        for (int i = 0; i < rr->num_rr; i++)
            if (spf_record_is_spf(rr->rr[i]->txt)) {
                found++;
                idx = i;
            }
        break;
    case HOST_NOT_FOUND:
    case NO_DATA:
        break;
    default:
        SPF_dns_rr_free(rr);
        return SPF_response_add_error(resp, SPF_E_DNS_ERROR, "Temporary DNS failure for '%s'", domain);
    }
    if (found != 1) {
        SPF_dns_rr_free(rr);
        if (found == 0)
            return record_error(resp, SPF_RESULT_NONE, SPF_E_NOT_SPF, "%s for '%s'", "No SPF record", domain);
        return record_error(resp, SPF_RESULT_PERMERROR, SPF_E_MULTIPLE_RECORDS, "%s for '%s'", "Multiple SPF records",
                            domain);
    }
    size_t cap = SPF_RECORD_OUT_CAP(strlen(rr->rr[idx]->txt));
    char *rec = malloc(cap);
    const char *why = rec ? spf_record_rewrite(rr->rr[idx]->txt, rec, cap) : "out of memory";
    SPF_dns_rr_free(rr);
    if (why) {
        free(rec);
        return record_error(resp, SPF_RESULT_PERMERROR, SPF_E_SYNTAX, "%s in the SPF record of '%s'", why, domain);
    }
    err = SPF_record_compile(server, resp, recp, rec);
    free(rec);
    if (err != SPF_E_SUCCESS) {
        if (*recp) {
            SPF_record_free(*recp);
            *recp = NULL;
        }
        return record_error(resp, SPF_RESULT_PERMERROR, err, "%s '%s'", "Failed to compile the SPF record of", domain);
    }
    return SPF_E_SUCCESS;
}

static void layer_free(SPF_dns_server_t *srv)
{
    spf_dns_layer_t *l = srv->hook;
    follow_clear(l);
    res_nclose(&l->res);
    free(l->buf);
    free(l);
}

SPF_dns_server_t *spf_dns_layer_new(spf_dns_t *d, char *err, size_t errlen)
{
    spf_dns_layer_t *l = calloc(1, sizeof *l);
    if (!l || !(l->buf = malloc(SPF_DNS_BUF))) {
        free(l);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (res_ninit(&l->res) != 0) {
        free(l->buf);
        free(l);
        snprintf(err, errlen, "res_ninit failed");
        return NULL;
    }
    l->res.options &= ~(unsigned long)(RES_DEFNAMES | RES_DNSRCH | RES_ROTATE);
    l->res.retrans = (int)d->timeout_s;
    l->res.retry = 2;
    if (d->have_server) {
        /* Forget resolv.conf's servers (res_nclose frees the IPv6 ones),
         * then name ours. IPv6 goes where res_ninit puts it: a family of 0
         * in nsaddr_list tells libresolv to use _u._ext.nsaddrs. */
        res_nclose(&l->res);
        l->res.nscount = 1;
        if (d->server.ss_family == AF_INET) {
            memcpy(&l->res.nsaddr_list[0], &d->server, sizeof(struct sockaddr_in));
        } else {
            struct sockaddr_in6 *a6 = malloc(sizeof *a6);
            if (!a6) {
                free(l->buf);
                free(l);
                snprintf(err, errlen, "out of memory");
                return NULL;
            }
            memcpy(a6, &d->server, sizeof *a6);
            memset(&l->res.nsaddr_list[0], 0, sizeof l->res.nsaddr_list[0]);
            l->res._u._ext.nsaddrs[0] = a6;
            l->res._u._ext.nssocks[0] = -1;
        }
    }
    l->dns = d;
    l->srv.destroy = layer_free;
    l->srv.lookup = layer_lookup;
    l->srv.get_spf = layer_get_spf;
    l->srv.name = "mxgate";
    l->srv.hook = l;
    l->check.min_ttl = SPF_DNS_TTL_CAP;
    return &l->srv;
}

spf_dns_check_t *spf_dns_check_begin(SPF_dns_server_t *srv)
{
    spf_dns_layer_t *l = srv->hook;
    follow_clear(l);
    memset(&l->check, 0, sizeof l->check);
    l->check.min_ttl = SPF_DNS_TTL_CAP;
    l->check.deadline = mono_now() + SPF_DNS_CHECK_S;
    return &l->check;
}

/* ---- shared state ---------------------------------------------------------- */

spf_dns_t *spf_dns_new(const spf_dns_conf_t *conf, char *err, size_t errlen)
{
    spf_dns_t *d = calloc(1, sizeof *d);
    if (!d) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    d->timeout_s = conf->timeout_s ? conf->timeout_s : 5;
    d->log = conf->log;
    d->debug = conf->debug;
    d->cap = conf->cache_size;
    d->max_bytes = (size_t)d->cap * SPF_DNS_CACHE_AVG_BYTES;
    if (conf->server && conf->server[0]) {
        if (spf_dns_parse_server(conf->server, &d->server, &d->server_len)) {
            snprintf(err, errlen, "--dns-server: cannot parse '%.200s' (a.b.c.d:port or [v6]:port)", conf->server);
            free(d);
            return NULL;
        }
        d->have_server = true;
        format_addr((struct sockaddr *)&d->server, d->server_name, sizeof d->server_name);
    } else {
        /* Name the system's servers once, for the start-up line. */
        struct __res_state rs;
        memset(&rs, 0, sizeof rs);
        if (res_ninit(&rs) != 0) {
            snprintf(err, errlen, "res_ninit failed: no usable /etc/resolv.conf");
            free(d);
            return NULL;
        }
        size_t k = (size_t)snprintf(d->server_name, sizeof d->server_name, "system(");
        for (int i = 0; i < rs.nscount && i < MAXNS && k < sizeof d->server_name; i++) {
            char one[INET6_ADDRSTRLEN + 8];
            if (rs.nsaddr_list[i].sin_family == AF_INET)
                format_addr((struct sockaddr *)&rs.nsaddr_list[i], one, sizeof one);
            else if (rs._u._ext.nsaddrs[i])
                format_addr((struct sockaddr *)rs._u._ext.nsaddrs[i], one, sizeof one);
            else
                continue;
            k += (size_t)snprintf(d->server_name + k, sizeof d->server_name - k, "%s%s", i ? "," : "", one);
        }
        if (k < sizeof d->server_name)
            snprintf(d->server_name + k, sizeof d->server_name - k, ")");
        res_nclose(&rs);
    }
    if (d->cap) {
        uint32_t nb = 16;
        while (nb < d->cap * 2 && nb < (1u << 30))
            nb <<= 1;
        d->nbuckets = nb;
        d->buckets = calloc(nb, sizeof *d->buckets);
        if (!d->buckets) {
            snprintf(err, errlen, "out of memory for a DNS cache of %u entries", d->cap);
            free(d);
            return NULL;
        }
    }
    pthread_mutex_init(&d->mu, NULL);
    return d;
}

void spf_dns_free(spf_dns_t *d)
{
    if (!d)
        return;
    for (cache_entry_t *e = d->oldest, *next; e; e = next) {
        next = e->newer;
        cache_entry_free(e);
    }
    free(d->buckets);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

const char *spf_dns_server_name(const spf_dns_t *d)
{
    return d->server_name;
}

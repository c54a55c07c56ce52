/*
 * spf_client.c - the worker's side of SPF (see spf_client.h).
 *
 * A request is one datagram sent without blocking (MSG_DONTWAIT: a full
 * socket buffer means the helper is far behind, and the check is a
 * temperror rather than a stall). Replies come back through the worker's
 * ring (an IORING_OP_RECV kept armed on the socket), so the loop never
 * waits on DNS.
 *
 * Results are cached per worker (share-nothing: no lock) for the TTL the
 * helper reports, keyed by everything the result and its Received-SPF text
 * depend on: client address, HELO name and sender. The cache is a table
 * of 4-way sets; a new entry takes an empty or expired way, else the one
 * closest to expiry.
 *
 * If the helper dies, the socket reads end-of-file: every pending request
 * gets temperror at once, new checks get temperror until the main thread
 * has started a new helper and handed its socket over (taken at the next
 * tick).
 */
#include "spf_client.h"

#include "lend.h"
#include "spf.h"
#include "spf_proto.h"
#include "worker.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define WAYS 4
#define KEY_MAX (17 + SPF_NAME_MAX + 1 + SPF_SENDER_MAX)
#define MAX_TTL_S 86400u

struct spf_cent {
    uint64_t hash;
    uint64_t expires; /* ms, w->now's clock */
    uint8_t result;
    uint16_t klen, rlen, clen;
    char data[]; /* key, received value, comment */
};

typedef struct spf_req_slot {
    uint32_t gen;
    bool live;
    spf_owner_t owner;
    timer_node_t timer;
    uint16_t klen;
    char key[KEY_MAX]; /* for caching the answer */
} req_slot_t;

struct spfc {
    spfc_done_fn *done;
    int fd;                  /* our end of the helper's socketpair; -1: none */
    atomic_int newfd;        /* a restarted helper's socket, from the main thread */
    uint32_t fd_gen;         /* which socket an OP_SPF_RECV was armed on */
    bool recv_armed;
    char *in;                /* one reply datagram; the kernel's while armed */
    req_slot_t **req;        /* pending requests, by slot */
    uint32_t nreq, *free_slots, nfree;
    struct spf_cent **cache; /* 4-way sets of results, by TTL */
    uint32_t sets;           /* a power of two; 0: no cache */
};

int spfc_init(worker_t *w, spfc_done_fn *done, char *err, size_t errlen)
{
    /* Always: a reload may put SPF in the chain, and main then starts the
     * helper and hands each worker its socket (spfc_handover). */
    spfc_t *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "worker %d: out of memory for SPF", w->id);
        return -1;
    }
    w->spf = c;
    c->done = done;
    c->fd = -1;
    atomic_init(&c->newfd, -1);
    c->in = malloc(SPF_PROTO_MAX);
    uint32_t want = w->cfg->spf_cache_size / WAYS + 1;
    if (w->cfg->spf_cache_size) {
        c->sets = 1;
        while (c->sets < want)
            c->sets *= 2;
        c->cache = calloc((size_t)c->sets * WAYS, sizeof *c->cache);
    }
    if (!c->in || (c->sets && !c->cache)) {
        snprintf(err, errlen, "worker %d: out of memory for SPF", w->id);
        return -1;
    }
    return 0;
}

void spfc_destroy(worker_t *w)
{
    spfc_t *c = w->spf;
    if (!c)
        return;
    for (size_t i = 0; c->cache && i < (size_t)c->sets * WAYS; i++)
        free(c->cache[i]);
    for (uint32_t i = 0; i < c->nreq; i++) {
        if (c->req[i])
            timer_stop(&w->timers, &c->req[i]->timer);
        free(c->req[i]);
    }
    free(c->req);
    free(c->free_slots);
    free(c->cache);
    free(c->in);
    if (c->fd >= 0)
        close(c->fd);
    int nfd = atomic_exchange(&c->newfd, -1);
    if (nfd >= 0)
        close(nfd);
    free(c);
    w->spf = NULL;
}

void spfc_set_fd(worker_t *w, int fd)
{
    if (w->spf)
        w->spf->fd = fd;
}

void spfc_handover(worker_t *w, int fd)
{
    if (!w->spf) {
        close(fd);
        return;
    }
    int old = atomic_exchange(&w->spf->newfd, fd);
    if (old >= 0)
        close(old); /* never taken: that worker is stuck or gone */
}

/* ---- the cache ---- */

/* family, address, HELO, NUL, sender: what the result depends on. */
static size_t make_key(uint8_t family, const uint8_t *addr, slice_t helo, slice_t sender, char *key, size_t n)
{
    size_t need = 17 + helo.len + 1 + sender.len;
    if (need > n)
        return 0;
    key[0] = (char)family;
    memcpy(key + 1, addr, family == AF_INET6 ? 16 : 4);
    if (family != AF_INET6)
        memset(key + 5, 0, 12);
    memcpy(key + 17, helo.ptr, helo.len);
    key[17 + helo.len] = '\0';
    memcpy(key + 18 + helo.len, sender.ptr, sender.len);
    return need;
}

static uint64_t hash64(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static struct spf_cent *cache_find(worker_t *w, const char *key, size_t klen)
{
    spfc_t *c = w->spf;
    if (!c->sets)
        return NULL;
    uint64_t h = hash64(key, klen);
    struct spf_cent **set = c->cache + (h & (c->sets - 1)) * WAYS;
    for (int i = 0; i < WAYS; i++) {
        struct spf_cent *e = set[i];
        if (e && e->hash == h && e->klen == klen && e->expires > w->now && memcmp(e->data, key, klen) == 0)
            return e;
    }
    return NULL;
}

static void cache_put(worker_t *w, const char *key, size_t klen, const spf_res_t *r, const char *text)
{
    spfc_t *c = w->spf;
    if (!c->sets || r->ttl == 0 || r->result == SPFR_TEMPERROR || klen > UINT16_MAX)
        return;
    uint64_t h = hash64(key, klen);
    struct spf_cent **set = c->cache + (h & (c->sets - 1)) * WAYS, **slot = &set[0];
    for (int i = 0; i < WAYS; i++) {
        struct spf_cent *e = set[i];
        if (!e || e->expires <= w->now || (e->hash == h && e->klen == klen && !memcmp(e->data, key, klen))) {
            slot = &set[i];
            break;
        }
        if (e->expires < (*slot)->expires)
            slot = &set[i];
    }
    struct spf_cent *e = malloc(sizeof *e + klen + r->received_len + r->comment_len);
    if (!e)
        return;
    e->hash = h;
    e->expires = w->now + (uint64_t)(r->ttl > MAX_TTL_S ? MAX_TTL_S : r->ttl) * 1000;
    e->result = r->result;
    e->klen = (uint16_t)klen;
    e->rlen = r->received_len;
    e->clen = r->comment_len;
    memcpy(e->data, key, klen);
    memcpy(e->data + klen, text, (size_t)r->received_len + r->comment_len);
    free(*slot);
    *slot = e;
}

/* ---- pending requests ---- */

static req_slot_t *req_get(worker_t *w, uint64_t id)
{
    spfc_t *c = w->spf;
    uint32_t idx = (uint32_t)id;
    if (!c || idx >= c->nreq || !c->req[idx])
        return NULL;
    req_slot_t *q = c->req[idx];
    return q->live && q->gen == (uint32_t)(id >> 32) ? q : NULL;
}

static req_slot_t *req_new(worker_t *w, uint64_t *id)
{
    spfc_t *c = w->spf;
    uint32_t idx;
    if (c->nfree) {
        idx = c->free_slots[--c->nfree];
    } else {
        uint32_t n = c->nreq ? c->nreq * 2 : 64;
        req_slot_t **nr = realloc(c->req, n * sizeof *nr);
        if (!nr)
            return NULL;
        c->req = nr;
        uint32_t *nf = realloc(c->free_slots, n * sizeof *nf);
        if (!nf)
            return NULL;
        c->free_slots = nf;
        for (uint32_t i = c->nreq; i < n; i++)
            c->req[i] = NULL;
        for (uint32_t i = n; i > c->nreq + 1; i--)
            c->free_slots[c->nfree++] = i - 1;
        idx = c->nreq;
        c->nreq = n;
    }
    if (!c->req[idx] && !(c->req[idx] = calloc(1, sizeof *c->req[idx]))) {
        c->free_slots[c->nfree++] = idx;
        return NULL;
    }
    req_slot_t *q = c->req[idx];
    q->gen++;
    q->live = true;
    *id = (uint64_t)q->gen << 32 | idx;
    return q;
}

static void req_end(worker_t *w, req_slot_t *q, uint64_t id)
{
    spfc_t *c = w->spf;
    timer_stop(&w->timers, &q->timer);
    q->live = false;
    c->free_slots[c->nfree++] = (uint32_t)id;
}

static void answer(worker_t *w, req_slot_t *q, uint64_t id, unsigned result, slice_t received, slice_t comment)
{
    m_inc(&w->m.spf_checks[result < SPFR_COUNT ? result : SPFR_TEMPERROR]);
    spf_owner_t o = q->owner;
    req_end(w, q, id);
    w->spf->done(w, &o, result, received, comment);
}

static uint64_t id_of(const spfc_t *c, const req_slot_t *q)
{
    for (uint32_t i = 0; i < c->nreq; i++)
        if (c->req[i] == q)
            return (uint64_t)q->gen << 32 | i;
    return 0;
}

static void on_timeout(worker_t *w, timer_node_t *t)
{
    req_slot_t *q = TIMER_OWNER(t, req_slot_t, timer);
    m_inc(&w->m.timeouts[MT_SPF]);
    answer(w, q, id_of(w->spf, q), SPFR_TEMPERROR, SLICE_LIT("temperror"), SLICE_LIT("the SPF check timed out"));
}

static void fail_now(worker_t *w, spf_state_t *out, const char *why)
{
    m_inc(&w->m.spf_checks[SPFR_TEMPERROR]);
    if (!spf_set_result(out, SPFR_TEMPERROR, "temperror", 9, why, strlen(why)))
        out->status = SPF_DONE, out->result = SPFR_TEMPERROR;
}

uint64_t spfc_start(worker_t *w, const spf_owner_t *o, uint8_t family, const uint8_t *addr, slice_t helo,
                    slice_t sender, spf_state_t *out)
{
    spfc_t *c = w->spf;
    char key[KEY_MAX];
    if (!helo.ptr)
        helo = SLICE_LIT("");
    if (!sender.ptr)
        sender = SLICE_LIT(""); /* the null sender: the helper checks the HELO name */
    if (helo.len > SPF_NAME_MAX)
        helo.len = SPF_NAME_MAX;
    if (!c) {
        fail_now(w, out, "SPF is not configured");
        return 0;
    }
    size_t klen = make_key(family, addr, helo, sender, key, sizeof key);
    if (!klen) {
        m_inc(&w->m.spf_checks[SPFR_NONE]);
        if (!spf_set_result(out, SPFR_NONE, "none (sender address too long to check)", 39, "", 0))
            fail_now(w, out, "out of memory");
        return 0;
    }
    struct spf_cent *e = cache_find(w, key, klen);
    if (e) {
        m_inc(&w->m.spf_cache_hits);
        m_inc(&w->m.spf_checks[e->result < SPFR_COUNT ? e->result : SPFR_TEMPERROR]);
        if (!spf_set_result(out, e->result, e->data + e->klen, e->rlen, e->data + e->klen + e->rlen, e->clen))
            fail_now(w, out, "out of memory");
        return 0;
    }
    uint64_t id = 0;
    req_slot_t *q = c->fd >= 0 ? req_new(w, &id) : NULL;
    if (!q) {
        fail_now(w, out, c->fd < 0 ? "the SPF service is not running" : "out of memory");
        return 0;
    }
    char buf[sizeof(spf_req_t) + SPF_NAME_MAX + SPF_SENDER_MAX];
    spf_req_t r;
    memset(&r, 0, sizeof r);
    r.id = id;
    r.family = family == AF_INET6 ? 6 : 4;
    memcpy(r.addr, addr, r.family == 6 ? 16 : 4);
    r.helo_len = (uint16_t)helo.len;
    r.sender_len = (uint16_t)sender.len;
    memcpy(buf, &r, sizeof r);
    memcpy(buf + sizeof r, helo.ptr, helo.len);
    memcpy(buf + sizeof r + helo.len, sender.ptr, sender.len);
    size_t n = sizeof r + helo.len + sender.len;
    if (send(c->fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL) != (ssize_t)n) {
        log_line(LOG_WARN, "event=spf_send_failed worker=%d error=\"%s\"", w->id, strerror(errno));
        req_end(w, q, id);
        fail_now(w, out, "the SPF service is overloaded");
        return 0;
    }
    q->owner = *o;
    q->klen = (uint16_t)klen;
    memcpy(q->key, key, klen);
    timer_arm(&w->timers, &q->timer, w->now + (uint64_t)w->cfg->spf_timeout * 1000, on_timeout);
    out->status = SPF_PENDING;
    return id;
}

void spfc_cancel(worker_t *w, uint64_t id)
{
    req_slot_t *q = req_get(w, id);
    if (q)
        req_end(w, q, id);
}

/* ---- the helper's socket ---- */

static void arm_recv(worker_t *w)
{
    spfc_t *c = w->spf;
    struct io_uring_sqe *sqe = worker_sqe(w);
    LEND(c->in, SPF_PROTO_MAX);
    io_uring_prep_recv(sqe, c->fd, c->in, SPF_PROTO_MAX, 0);
    io_uring_sqe_set_data64(sqe, ud_make(OP_SPF_RECV, 0, c->fd_gen));
    c->recv_armed = true;
}

/* Every pending request gets temperror (the helper is gone). */
static void fail_all(worker_t *w, const char *why)
{
    spfc_t *c = w->spf;
    for (uint32_t i = 0; i < c->nreq; i++) {
        req_slot_t *q = c->req[i];
        if (q && q->live) {
                answer(w, q, (uint64_t)q->gen << 32 | i, SPFR_TEMPERROR, SLICE_LIT("temperror"),
                   slice_make(why, strlen(why)));
        }
    }
}

static void take_reply(worker_t *w, const char *p, size_t n)
{
    spf_res_t r;
    if (n < sizeof r)
        return;
    memcpy(&r, p, sizeof r);
    if (sizeof r + (size_t)r.received_len + r.comment_len > n || r.result >= SPFR_COUNT) {
        log_line(LOG_WARN, "event=spf_bad_reply worker=%d size=%zu", w->id, n);
        return;
    }
    req_slot_t *q = req_get(w, r.id);
    if (!q)
        return; /* timed out or cancelled: its slot may serve a newer request */
    const char *text = p + sizeof r;
    cache_put(w, q->key, q->klen, &r, text);
    answer(w, q, r.id, r.result, slice_make(text, r.received_len), slice_make(text + r.received_len, r.comment_len));
}

void spfc_cqe(worker_t *w, struct io_uring_cqe *cqe)
{
    spfc_t *c = w->spf;
    if (!c)
        return;
    uint64_t ud = io_uring_cqe_get_data64(cqe);
    if (UD_GEN(ud) != (c->fd_gen & GEN_MASK))
        return; /* armed on a socket that is gone (its buffer was reclaimed then) */
    c->recv_armed = false;
    RECLAIM(c->in, SPF_PROTO_MAX);
    if (cqe->res > 0) {
        take_reply(w, c->in, (size_t)cqe->res);
    } else if (cqe->res != -EINTR && cqe->res != -EAGAIN && !w->stopped) {
        log_line(LOG_ERROR, "event=spf_helper_lost worker=%d error=\"%s\"", w->id,
                 cqe->res ? strerror(-cqe->res) : "end of file");
        close(c->fd);
        c->fd = -1;
        c->fd_gen++;
        fail_all(w, "the SPF service failed");
        return;
    }
    if (c->fd >= 0 && !c->recv_armed)
        arm_recv(w);
}

void spfc_tick(worker_t *w)
{
    spfc_t *c = w->spf;
    if (!c)
        return;
    int nfd = atomic_exchange(&c->newfd, -1);
    if (nfd >= 0) {
        if (c->fd >= 0)
            close(c->fd);
        if (c->recv_armed)
            RECLAIM(c->in, SPF_PROTO_MAX); /* that receive ends with its socket and is ignored */
        c->fd = nfd;
        c->fd_gen++;
        c->recv_armed = false;
        log_line(LOG_INFO, "event=spf_helper_attached worker=%d", w->id);
    }
    if (c->fd >= 0 && !c->recv_armed)
        arm_recv(w);
}

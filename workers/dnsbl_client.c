/*
 * dnsbl_client.c - a worker's DNSBL lookups (see dnsbl_client.h).
 */
#include "dnsbl_client.h"

#include "dnsbl.h"
#include "grow.h"
#include "log.h"
#include "timer.h"
#include "worker.h"

#include <arpa/inet.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unbound.h>

#define ANSWERS_MAX 8   /* A records kept per list */
#define REQ_FIRST 64    /* lookups in flight per worker, growing */
#define SLOT_BITS 24    /* a callback's data: slot << 8 | site */
#define CACHE_SLOTS 4096u /* answers kept per worker (a power of two) */
#define CACHE_TTL_MAX 86400u

typedef struct req {
    uint32_t gen;
    bool live;
    dnsbl_owner_t owner;
    const dnsbl_list_t *sites;
    int async_id[DNSBL_SITES_MAX]; /* 0: answered (or never asked) */
    uint8_t answers[DNSBL_SITES_MAX][ANSWERS_MAX][4];
    size_t count[DNSBL_SITES_MAX];
    uint32_t pending;
    uint32_t slot;                /* its index in the worker's table */
    timer_node_t timer;           /* dnsbl_timeout */
    uint32_t next_free;
} req_t;

/* One list's answer for one client, by its query name, until its TTL ends.
 * libunbound caches too, but reaching its cache costs a round trip through
 * its thread and pipe (two queries cost a connection about 90 us of CPU);
 * this costs a hash and a compare. Direct-mapped: a collision forgets. */
typedef struct cached {
    uint64_t hash;
    uint64_t until_ms;           /* 0: empty */
    uint8_t count;
    uint8_t answers[ANSWERS_MAX][4];
    char qname[DNSBL_QNAME_MAX + 1];
} cached_t;

struct dnsblc {
    struct ub_ctx *ub;
    cached_t *cache;              /* CACHE_SLOTS, made with the context */
    bool armed;                   /* the poll on ub_fd is in the ring */
    dnsblc_done_fn *done;
    req_t **req;                  /* stable addresses: timers point into them */
    uint32_t nreq, cap, free_head;
};

#define NONE UINT32_MAX

/* "127.0.0.1:5353" or "[::1]:53" as libunbound's "addr@port". */
static bool fwd_addr(const char *hostport, char *out, size_t cap)
{
    const char *colon = strrchr(hostport, ':');
    if (!colon)
        return false;
    const char *h = hostport, *he = colon;
    if (*h == '[') {
        h++;
        if (he[-1] != ']')
            return false;
        he--;
    }
    int n = snprintf(out, cap, "%.*s@%s", (int)(he - h), h, colon + 1);
    return n > 0 && (size_t)n < cap;
}

/* The context, made on first use (the chain may gain dnsbl on a reload). */
static bool ctx_ready(worker_t *w)
{
    dnsblc_t *c = w->dnsbl;
    if (c->ub)
        return true;
    if (!c->cache && !(c->cache = calloc(CACHE_SLOTS, sizeof *c->cache)))
        return false;
    struct ub_ctx *ub = ub_ctx_create();
    if (!ub)
        return false;
    char fwd[128];
    int rc = 0;
    /* answers from a server on loopback are the point in tests, and a
     * local resolver's in production */
    rc |= ub_ctx_set_option(ub, "do-not-query-localhost:", "no");
    if (w->cfg->dns_server[0])
        rc |= !fwd_addr(w->cfg->dns_server, fwd, sizeof fwd) || ub_ctx_set_fwd(ub, fwd) != 0;
    else
        rc |= ub_ctx_resolvconf(ub, NULL) != 0;
    rc |= ub_ctx_async(ub, 1) != 0; /* a thread resolves; callbacks run here, in ub_process */
    if (rc) {
        log_line(LOG_ERROR, "event=dnsbl_failed worker=%d error=\"cannot set up the resolver\" dns_server=%s", w->id,
                 w->cfg->dns_server[0] ? w->cfg->dns_server : "system");
        ub_ctx_delete(ub);
        return false;
    }
    c->ub = ub;
    return true;
}

static void arm(worker_t *w)
{
    dnsblc_t *c = w->dnsbl;
    if (c->armed || !c->ub)
        return;
    struct io_uring_sqe *sqe = worker_sqe(w);
    io_uring_prep_poll_multishot(sqe, ub_fd(c->ub), POLLIN);
    io_uring_sqe_set_data64(sqe, ud_make(OP_DNSBL, 0, 0));
    c->armed = true;
}

int dnsblc_init(worker_t *w, dnsblc_done_fn *done, char *err, size_t errlen)
{
    dnsblc_t *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "dnsbl: out of memory");
        return -1;
    }
    c->done = done;
    c->free_head = NONE;
    w->dnsbl = c;
    return 0;
}

void dnsblc_destroy(worker_t *w)
{
    dnsblc_t *c = w->dnsbl;
    if (!c)
        return;
    if (c->ub)
        ub_ctx_delete(c->ub); /* stops its thread; outstanding queries go with it */
    for (uint32_t i = 0; i < c->nreq; i++)
        free(c->req[i]);
    free(c->req);
    free(c->cache);
    free(c);
    w->dnsbl = NULL;
}

/* The lookup is over or given up: its slot goes back, and its generation
 * moves on so a handle to it is stale. */
static void slot_free(dnsblc_t *c, req_t *r)
{
    r->live = false;
    r->gen = (r->gen + 1) & GEN_MASK;
    r->next_free = c->free_head;
    c->free_head = r->slot;
}

/* Every list answered, or the deadline: score what came, tell the owner. */
static void finish(worker_t *w, uint32_t slot)
{
    dnsblc_t *c = w->dnsbl;
    req_t *r = c->req[slot];
    unsigned unanswered = 0;
    for (size_t i = 0; i < r->sites->n; i++)
        if (r->async_id[i]) {
            ub_cancel(c->ub, r->async_id[i]);
            r->async_id[i] = 0;
            unanswered++;
        }
    timer_stop(&w->timers, &r->timer);
    const uint8_t(*ans[DNSBL_SITES_MAX])[4];
    for (size_t i = 0; i < r->sites->n; i++)
        ans[i] = (const uint8_t(*)[4])r->answers[i];
    uint32_t hit = 0;
    int score = dnsbl_score(r->sites->site, r->sites->n, ans, r->count, &hit);
    dnsbl_owner_t o = r->owner;
    slot_free(c, r);
    m_inc(&w->m.dnsbl_lookups[unanswered ? MDL_TIMEOUT : hit ? MDL_LISTED : MDL_CLEAN]);
    c->done(w, &o, score, hit, unanswered);
}

static uint64_t name_hash(const char *q)
{
    uint64_t h = 1469598103934665603ull;
    for (; *q; q++)
        h = (h ^ (unsigned char)*q) * 1099511628211ull;
    return h ^ h >> 31;
}

static cached_t *cache_find(dnsblc_t *c, const char *qname, uint64_t h, uint64_t now)
{
    cached_t *e = &c->cache[h & (CACHE_SLOTS - 1)];
    return e->until_ms > now && e->hash == h && !strcmp(e->qname, qname) ? e : NULL;
}

/* An answer (listed or not) worth keeping: the list answered, with a TTL. */
static void cache_put(worker_t *w, const char *qname, int ttl, const uint8_t (*answers)[4], size_t count)
{
    dnsblc_t *c = w->dnsbl;
    size_t n = strlen(qname);
    if (ttl <= 0 || n > DNSBL_QNAME_MAX)
        return;
    while (n && qname[n - 1] == '.')
        n--; /* libunbound hands back the name as asked, maybe with its root dot */
    uint64_t h;
    cached_t *e;
    char q[DNSBL_QNAME_MAX + 1];
    memcpy(q, qname, n);
    q[n] = 0;
    h = name_hash(q);
    e = &c->cache[h & (CACHE_SLOTS - 1)];
    e->hash = h;
    e->until_ms = w->now + (uint64_t)((unsigned)ttl < CACHE_TTL_MAX ? (unsigned)ttl : CACHE_TTL_MAX) * 1000;
    e->count = (uint8_t)count;
    if (count)
        memcpy(e->answers, answers, count * sizeof answers[0]);
    memcpy(e->qname, q, n + 1);
}

/* The worker whose ub_process() is running: libunbound's callbacks carry
 * only the data pointer, which names the lookup and the list. */
static _Thread_local worker_t *processing;

static void on_answer(void *data, int err, struct ub_result *res)
{
    uintptr_t d = (uintptr_t)data;
    worker_t *w = processing;
    dnsblc_t *c = w->dnsbl;
    uint32_t slot = (uint32_t)(d >> 8), site = (uint32_t)(d & 0xff);
    req_t *r = slot < c->nreq ? c->req[slot] : NULL;
    if (!r || !r->live || site >= r->sites->n || !r->async_id[site]) {
        if (res)
            ub_resolve_free(res);
        return;
    }
    r->async_id[site] = 0;
    r->pending--;
    if (err == 0 && res && res->havedata) {
        for (int i = 0; res->data[i] && r->count[site] < ANSWERS_MAX; i++)
            if (res->len[i] == 4)
                memcpy(r->answers[site][r->count[site]++], res->data[i], 4);
        cache_put(w, res->qname, res->ttl, (const uint8_t(*)[4])r->answers[site], r->count[site]);
    } else if (err == 0 && res && res->rcode == 3) {
        cache_put(w, res->qname, res->ttl, NULL, 0); /* not listed, for the zone's negative TTL */
    } else if (err != 0 || (res && res->rcode != 0 && res->rcode != 3 /* NXDOMAIN: not listed */)) {
        m_inc(&w->m.dnsbl_errors);
        log_line(LOG_DEBUG, "event=dnsbl_error worker=%d list=%s error=\"%s\" rcode=%d", w->id,
                 r->sites->site[site].domain, err ? ub_strerror(err) : "-", res ? res->rcode : -1);
    }
    if (res)
        ub_resolve_free(res);
    if (r->pending == 0)
        finish(w, slot);
}

void dnsblc_cqe(worker_t *w, struct io_uring_cqe *cqe)
{
    dnsblc_t *c = w->dnsbl;
    if (!(cqe->flags & IORING_CQE_F_MORE))
        c->armed = false;
    if (cqe->res >= 0 && c->ub) {
        processing = w;
        ub_process(c->ub);
    }
    if (!w->stopped)
        arm(w);
}

static void on_deadline(worker_t *w, timer_node_t *t)
{
    finish(w, TIMER_OWNER(t, req_t, timer)->slot);
}

static uint32_t slot_new(dnsblc_t *c)
{
    if (c->free_head != NONE) {
        uint32_t s = c->free_head;
        c->free_head = c->req[s]->next_free;
        return s;
    }
    if (c->nreq >= (1u << SLOT_BITS))
        return NONE;
    if (!grow_item((void **)&c->req, &c->cap, c->nreq, sizeof *c->req, REQ_FIRST))
        return NONE;
    req_t *r = calloc(1, sizeof *r);
    if (!r)
        return NONE;
    r->slot = c->nreq;
    c->req[c->nreq] = r;
    return c->nreq++;
}

uint64_t dnsblc_start(worker_t *w, const dnsbl_owner_t *o, const dnsbl_list_t *sites, int family,
                      const uint8_t *addr, dnsbl_state_t *now)
{
    dnsblc_t *c = w->dnsbl;
    if (!c || !sites || !sites->n || !ctx_ready(w))
        return 0;
    uint32_t slot = slot_new(c);
    if (slot == NONE)
        return 0;
    req_t *r = c->req[slot];
    uint32_t gen = r->gen;
    memset(r, 0, sizeof *r); /* its timer is not armed: finish and cancel stop it */
    r->gen = gen;
    r->slot = slot;
    r->live = true;
    r->owner = *o;
    r->sites = sites;
    bool asked = false;
    for (size_t i = 0; i < sites->n; i++) {
        char qname[DNSBL_QNAME_MAX + 1];
        if (!dnsbl_qname(&sites->site[i], family, addr, qname, sizeof qname))
            continue;
        uint64_t h = name_hash(qname);
        const cached_t *e = cache_find(c, qname, h, w->now);
        if (e) {
            m_inc(&w->m.dnsbl_cache_hits);
            r->count[i] = e->count;
            memcpy(r->answers[i], e->answers, sizeof e->answers);
            continue;
        }
        asked = true;
        int id = 0;
        void *data = (void *)(uintptr_t)((uintptr_t)slot << 8 | i);
        if (ub_resolve_async(c->ub, qname, 1 /* A */, 1 /* IN */, data, on_answer, &id) == 0 && id) {
            r->async_id[i] = id;
            r->pending++;
        }
    }
    if (!asked) { /* every list from the cache: the verdict now */
        const uint8_t(*ans[DNSBL_SITES_MAX])[4];
        for (size_t i = 0; i < sites->n; i++)
            ans[i] = (const uint8_t(*)[4])r->answers[i];
        now->status = DNSBL_DONE;
        now->hit = 0;
        now->score = dnsbl_score(sites->site, sites->n, ans, r->count, &now->hit);
        m_inc(&w->m.dnsbl_lookups[now->hit ? MDL_LISTED : MDL_CLEAN]);
        slot_free(c, r);
        return DNSBLC_NOW;
    }
    if (!r->pending) {
        slot_free(c, r);
        return 0;
    }
    arm(w);
    timer_arm(&w->timers, &r->timer, w->now + (uint64_t)w->cfg->dnsbl_timeout * 1000, on_deadline);
    return (uint64_t)(r->gen + 1) << 32 | slot; /* never 0 */
}

void dnsblc_cancel(worker_t *w, uint64_t handle)
{
    dnsblc_t *c = w->dnsbl;
    uint32_t slot = (uint32_t)handle, gen = (uint32_t)(handle >> 32) - 1;
    if (!c || slot >= c->nreq)
        return;
    req_t *r = c->req[slot];
    if (!r->live || r->gen != gen)
        return;
    for (size_t i = 0; i < r->sites->n; i++)
        if (r->async_id[i])
            ub_cancel(c->ub, r->async_id[i]);
    timer_stop(&w->timers, &r->timer);
    slot_free(c, r);
}

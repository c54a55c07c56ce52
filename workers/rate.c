/*
 * rate.c - per client address token buckets, shared by the workers (rate.h).
 */
#include "rate.h"

#include "config.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define SHARDS 64u
#define SLOTS 1024u /* per shard */
#define PROBE 8u

typedef struct entry {
    uint8_t used, family;
    uint8_t addr[16];
    uint64_t touched_ms;
    double tokens[RATE_KINDS];
    uint64_t at_ms[RATE_KINDS]; /* when tokens[k] was last brought up to date; 0: never */
    uint64_t pass_until_ms;     /* the pass cache: DNSBL skipped until then (0: no pass) */
    /* The fleet's bucket as Redis last told it (fleet.h), debited here for
     * each event let through since; fleet_at_ms 0: never heard. */
    double fleet_left[RATE_KINDS];
    uint64_t fleet_at_ms[RATE_KINDS];
} entry_t;

typedef struct shard {
    pthread_mutex_t mu;
    entry_t e[SLOTS];
} shard_t;

struct rate {
    shard_t *shard;
};

rate_t *rate_new(void)
{
    rate_t *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    /* about 4 MB of address space; pages are touched only as addresses come */
    r->shard = calloc(SHARDS, sizeof *r->shard);
    if (!r->shard) {
        free(r);
        return NULL;
    }
    for (uint32_t i = 0; i < SHARDS; i++)
        pthread_mutex_init(&r->shard[i].mu, NULL);
    return r;
}

void rate_free(rate_t *r)
{
    if (!r)
        return;
    for (uint32_t i = 0; i < SHARDS; i++)
        pthread_mutex_destroy(&r->shard[i].mu);
    free(r->shard);
    free(r);
}

static uint64_t hash(int family, const uint8_t *a, size_t n)
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t)family;
    for (size_t i = 0; i < n; i++)
        h = (h ^ a[i]) * 1099511628211ull;
    return h ^ h >> 29;
}

/* The address's entry, made (in place of the one touched longest ago in
 * the probe window) when there is none and `make`; its shard is locked on
 * return (unlock *locked), even when NULL comes back. */
static entry_t *entry_of(rate_t *r, int family, const uint8_t *addr, bool make, pthread_mutex_t **locked)
{
    size_t n = family == AF_INET6 ? 16 : 4;
    uint64_t h = hash(family, addr, n);
    shard_t *s = &r->shard[h % SHARDS];
    uint32_t at = (uint32_t)(h / SHARDS) % SLOTS;
    pthread_mutex_lock(&s->mu);
    *locked = &s->mu;
    entry_t *e = NULL, *victim = NULL;
    for (uint32_t i = 0; i < PROBE && !e; i++) {
        entry_t *c = &s->e[(at + i) % SLOTS];
        if (c->used && c->family == family && !memcmp(c->addr, addr, n))
            e = c;
        else if (!victim || (victim->used && (!c->used || c->touched_ms < victim->touched_ms)))
            victim = c;
    }
    if (!e && make) {
        e = victim;
        memset(e, 0, sizeof *e);
        e->used = 1;
        e->family = (uint8_t)family;
        memcpy(e->addr, addr, n);
    }
    return e;
}

/* A bucket of cap tokens a minute, last at *at_ms with *tokens, brought up
 * to now. Each worker's clock is its loop turn's: another's may be a little
 * behind the last update, which then counts as no time. */
static double refill(double tokens, uint64_t *at_ms, double cap, uint64_t now_ms)
{
    if (now_ms > *at_ms) {
        tokens += (double)(now_ms - *at_ms) * cap / 60000.0;
        *at_ms = now_ms;
    }
    return tokens > cap ? cap : tokens; /* a lowered limit (a reload) applies at once */
}

bool rate_take(rate_t *r, enum rate_kind k, int family, const uint8_t *addr, uint32_t per_min, uint64_t now_ms)
{
    if (!per_min || !r)
        return true;
    pthread_mutex_t *mu;
    entry_t *e = entry_of(r, family, addr, true, &mu);
    e->touched_ms = now_ms;
    double cap = per_min;
    if (!e->at_ms[k]) {
        e->at_ms[k] = now_ms ? now_ms : 1;
        e->tokens[k] = cap;
    }
    double t = refill(e->tokens[k], &e->at_ms[k], cap, now_ms);
    double f = e->fleet_at_ms[k] ? refill(e->fleet_left[k], &e->fleet_at_ms[k], cap, now_ms) : cap;
    /* Over when this process's count or the fleet's says so; an event
     * refused takes nothing from either. */
    bool ok = t >= 1.0 && f >= 1.0;
    e->tokens[k] = ok ? t - 1.0 : t;
    if (e->fleet_at_ms[k])
        e->fleet_left[k] = ok ? f - 1.0 : f;
    pthread_mutex_unlock(mu);
    return ok;
}

void rate_fleet_set(rate_t *r, enum rate_kind k, int family, const uint8_t *addr, double left, uint64_t now_ms)
{
    if (!r)
        return;
    pthread_mutex_t *mu;
    entry_t *e = entry_of(r, family, addr, true, &mu);
    e->touched_ms = now_ms;
    e->fleet_left[k] = left;
    e->fleet_at_ms[k] = now_ms ? now_ms : 1;
    pthread_mutex_unlock(mu);
}

void rate_pass_set(rate_t *r, int family, const uint8_t *addr, uint64_t until_ms, uint64_t now_ms)
{
    if (!r)
        return;
    pthread_mutex_t *mu;
    entry_t *e = entry_of(r, family, addr, true, &mu);
    e->touched_ms = now_ms;
    e->pass_until_ms = until_ms;
    pthread_mutex_unlock(mu);
}

bool rate_passed(rate_t *r, int family, const uint8_t *addr, uint64_t now_ms)
{
    if (!r)
        return false;
    pthread_mutex_t *mu;
    entry_t *e = entry_of(r, family, addr, false, &mu);
    bool ok = e && e->pass_until_ms > now_ms;
    pthread_mutex_unlock(mu);
    return ok;
}

int rate_plain_addr(int family, const uint8_t **addr)
{
    static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    if (family == AF_INET6 && !memcmp(*addr, mapped, sizeof mapped)) {
        *addr += 12;
        return AF_INET;
    }
    return family;
}

uint32_t rate_per_min(const mx_config_t *cfg, enum rate_kind k)
{
    return k == RATE_CONN ? cfg->rate_connections : k == RATE_MSG ? cfg->rate_messages : cfg->rate_recipients;
}

bool rate_exceeded(rate_t *r, const mx_config_t *cfg, enum rate_kind k, int family, const uint8_t *addr,
                   uint64_t now_ms)
{
    uint32_t per_min = rate_per_min(cfg, k);
    if (!per_min || config_cidrs_match(&cfg->rate_allow, family, addr))
        return false;
    return !rate_take(r, k, family, addr, per_min, now_ms);
}

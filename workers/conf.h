/*
 * conf.h - the running configuration, one generation per load.
 *
 * A generation is everything read from the configuration's sources that the
 * workers use while they run: the keys, the filter chain built from them
 * (relay domains, recipient map, SPF policy, limits), the engine's limits,
 * and the downstream's resolver. It is built whole by the main thread and
 * never changed afterwards, so a worker reads it without a lock.
 *
 * SIGHUP builds the next one (reload.h); main publishes it with one atomic
 * store. Each worker looks at that pointer once per loop turn, between
 * turns, and adopts a new generation there: new sessions and the downstream
 * pool use it from then on. A session keeps the generation it began with to
 * its end (its engine's limits, its filter chain), so nothing a client is in
 * the middle of changes under it, and no connection is dropped.
 *
 * Lifetime: a worker counts the sessions on each generation it holds (its
 * own counters, no atomics per session) and holds one reference per
 * generation in use (`holders`, atomic, touched only when a worker adopts
 * or lets go of a generation). Main frees a retired generation once every
 * worker has adopted a newer one (`seen`) and no worker holds it.
 */
#ifndef MXGATE_CONF_H
#define MXGATE_CONF_H

#include "config.h"
#include "filter.h"
#include "smtp.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct resolve;
struct tls_ctx;

typedef struct conf {
    mx_config_t cfg;
    filter_chain_t chain;
    smtp_config_t smtp;        /* the engine's limits, from cfg */
    struct tls_ctx *tls;       /* certificates and settings for STARTTLS; NULL when tls = off */
    struct tls_ctx *ds_tls;    /* the client side towards the downstream; NULL when downstream_tls = off */
    struct resolve *resolver;  /* the downstream's address; NULL without one */
    bool own_resolver;         /* freed with this generation (else a later one took it over) */
    uint64_t number;           /* 1 at start-up, then one more per reload applied */
    atomic_uint holders;       /* workers with a session (or their pool) on it */
    struct conf *retired_next; /* main's list of generations waiting to be freed */
} conf_t;

/* A generation from a loaded configuration: cfg is moved in (the caller's
 * copy is zeroed and must not be freed); the filter chain is built and the
 * TLS certificates are loaded (a reload reads them again). The
 * resolver is the caller's to set. NULL with err (cfg freed). */
conf_t *conf_new(mx_config_t *cfg, uint64_t number, char *err, size_t errlen);

/* The chain, the keys, and the resolver if own_resolver. */
void conf_free(conf_t *c);

/* What a worker keeps of each generation it holds. */
typedef struct conf_held {
    conf_t *c;
    uint32_t users; /* sessions on it in this worker */
} conf_held_t;

#endif

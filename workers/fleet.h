/*
 * fleet.h - rate limits shared by a fleet of gateways, kept in Redis.
 *
 * Behind a balancer a sender spreads its connections over the instances,
 * and each would see only its share; `limits_redis` names the Redis that
 * holds the one count. Each address has one hash there (mxgate:rate:<ip>)
 * with a token bucket per kind (connections, messages, recipients), the
 * same buckets rate.h keeps per process, updated atomically by a Lua
 * script on Redis's clock. Each worker keeps one connection to Redis,
 * commands pipelined on it, sent and received by the worker's ring; the
 * replies are parsed by hiredis's reader (Debian's libhiredis) with object
 * functions that allocate nothing. The commands are written here: a RESP
 * request is a few lines of text, and hiredis's formatter allocates one
 * string per command.
 *
 * When the verdict waits for Redis: at connect only. The connection's
 * token is taken there and the address's other buckets read in the same
 * round trip, before the greeting (a DNSBL lookup started at the same time
 * runs meanwhile). MAIL and RCPT never wait: their verdict comes from the
 * fleet's buckets as last heard (rate.c keeps them, refilled and debited
 * locally), and their token is taken in Redis without waiting, its answer
 * refreshing that view. So a sender that spreads over N instances gets at
 * most the rate, plus what the instances let through between two answers
 * of Redis (one round trip each), never N times the rate.
 *
 * Redis down, slow (limits_redis_timeout) or backed up: fail open to the
 * instance's own counts, which still hold across its workers. Each event
 * decided that way is counted (mxgate_rate_redis_failopen_total), each
 * outage logged once when it starts and once when it ends, and the
 * connection is retried with backoff. A stuck Redis holds a greeting for
 * limits_redis_timeout at most, then the connection is dropped.
 */
#ifndef MXGATE_FLEET_H
#define MXGATE_FLEET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rate.h"

typedef struct worker worker_t;
struct io_uring_cqe;
struct mx_config;

typedef struct fleet_owner {
    uint32_t idx, gen;
} fleet_owner_t;

/* The connection's verdict from Redis: over the fleet's rate or not
 * (failing open says not). Never from inside fleet_connect. */
typedef void fleet_done_fn(worker_t *w, const fleet_owner_t *o, bool over);

int fleet_init(worker_t *w, fleet_done_fn *done, char *err, size_t errlen);
void fleet_destroy(worker_t *w);

enum fleet_verdict { FLEET_OK, FLEET_OVER, FLEET_WAIT };

/* A connection from this address (4 or 16 octets; an IPv4-mapped IPv6
 * address counts as IPv4): over rate_connections here or in the fleet as
 * last heard, or FLEET_WAIT when Redis is asked first (done() follows). */
enum fleet_verdict fleet_connect(worker_t *w, const fleet_owner_t *o, const struct mx_config *cfg, int family,
                                 const uint8_t *addr);

/* A MAIL (RATE_MSG) or RCPT (RATE_RCPT): over its rate here or in the
 * fleet as last heard; when not, its token is also taken in Redis. */
bool fleet_rate_over(worker_t *w, const struct mx_config *cfg, enum rate_kind k, int family, const uint8_t *addr);

/* The ring's completions for the Redis connection (OP_FLEET). */
void fleet_cqe(worker_t *w, struct io_uring_cqe *cqe);

/* End of a loop turn: (re)connect as the configuration says, and send
 * what this turn queued, as one write. */
void fleet_flush(worker_t *w);

#endif

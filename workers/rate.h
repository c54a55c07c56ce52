/*
 * rate.h - per client address rate limits, shared by every worker of the
 * process: token buckets (a minute's worth of tokens, refilled evenly), in
 * a table sharded by the address's hash, one mutex per shard.
 *
 * A client's connections land on any worker (SO_REUSEPORT), so a count per
 * worker would let it have workers x the limit; this table is the one
 * count. The session (connect) and the transaction (MAIL, each RCPT) take
 * one token of the kind when the event first happens, and hand the filter
 * chain the verdict as a fact (filter.h, rate_over); the limits filter
 * turns it into a reply. Entries that have not been touched for the
 * longest are the ones a full probe window gives up, so a flood from many
 * addresses can only make the table forget (a fresh, full bucket), never
 * throttle an address that sent nothing.
 *
 * A fleet of gateways shares the counts through Redis (fleet.h): each
 * entry also keeps the fleet's bucket as Redis last told it, refilled and
 * debited here like the local one, and an event is over when either is.
 */
#ifndef MXGATE_RATE_H
#define MXGATE_RATE_H

#include <stdbool.h>
#include <stdint.h>

enum rate_kind { RATE_CONN = 0, RATE_MSG, RATE_RCPT, RATE_KINDS };

typedef struct rate rate_t;

rate_t *rate_new(void);
void rate_free(rate_t *r);

/* One token of kind k for this address (4 octets for AF_INET, 16 for
 * AF_INET6) from a bucket of per_min tokens refilled evenly over a minute;
 * false when none is left. per_min 0: always true. Any thread. */
bool rate_take(rate_t *r, enum rate_kind k, int family, const uint8_t *addr, uint32_t per_min, uint64_t now_ms);

/* The fleet's bucket of kind k for this address, as Redis answered it
 * (tokens left after the event it counted). Any thread. */
void rate_fleet_set(rate_t *r, enum rate_kind k, int family, const uint8_t *addr, double left, uint64_t now_ms);

/* The pass cache (postscreen's): an address whose session passed the
 * DNSBL (and ended cleanly) is remembered until until_ms, and its next
 * sessions skip the lookups. Same table, same eviction: forgetting costs a
 * lookup, never a wrong verdict. Any thread. */
void rate_pass_set(rate_t *r, int family, const uint8_t *addr, uint64_t until_ms, uint64_t now_ms);
bool rate_passed(rate_t *r, int family, const uint8_t *addr, uint64_t now_ms);

/* The configuration's rate for k (rate_connections, rate_messages,
 * rate_recipients), unless the address is in rate_allow: true when this
 * event is over it. */
/* The address as the table (and the DNSBL lists) know it: an IPv4 client
 * on an IPv6 socket (::ffff:a.b.c.d) is IPv4. Returns the family and moves
 * *addr to the octets. */
int rate_plain_addr(int family, const uint8_t **addr);

struct mx_config;
uint32_t rate_per_min(const struct mx_config *cfg, enum rate_kind k);
bool rate_exceeded(rate_t *r, const struct mx_config *cfg, enum rate_kind k, int family, const uint8_t *addr,
                   uint64_t now_ms);

#endif

/*
 * dnsbl_client.h - a worker's DNSBL lookups: every list of the chain asked
 * in parallel for one client, the answers scored (core/dnsbl.h), the
 * session told once, within dnsbl_timeout.
 *
 * DNS is libunbound's (Debian's libunbound): one resolving context per
 * worker, forwarding to dns_server (or the system's resolvers), with its
 * own cache that keeps answers for their TTL, so a client seen again costs
 * no query. libunbound resolves in a thread of its own (ub_ctx_async) and
 * hands results back through a pipe whose descriptor the worker's ring
 * polls; the callbacks then run in the worker's thread (ub_process), so
 * nothing here is shared between threads and the loop never blocks on DNS.
 * The kept SPF helper was the other choice; it is a separate process for
 * libspf2's sake, and a DNSBL query needs neither its isolation nor a
 * round trip through a socket. In front of libunbound's cache each worker
 * keeps the answers it got, by query name, for their TTL: a repeat client
 * costs a hash lookup, not a trip through libunbound's thread.
 *
 * Owner handles, as for the pool and the SPF client: the session is named
 * by (slot, generation), and a session that ends first cancels its lookups
 * (dnsblc_cancel), so no answer ever reaches a newer session in the slot.
 */
#ifndef MXGATE_DNSBL_CLIENT_H
#define MXGATE_DNSBL_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "filter.h"

typedef struct worker worker_t;
struct io_uring_cqe;

typedef struct dnsbl_owner {
    uint32_t idx, gen;
} dnsbl_owner_t;

/* The lookups are over: the score and the lists that counted (bit i: site
 * i), and how many lists had not answered by the deadline. */
typedef void dnsblc_done_fn(worker_t *w, const dnsbl_owner_t *o, int score, uint32_t hit, unsigned unanswered);

int dnsblc_init(worker_t *w, dnsblc_done_fn *done, char *err, size_t errlen);
void dnsblc_destroy(worker_t *w);

/* Ask every site about the client (4 or 16 octets). A handle for
 * dnsblc_cancel, with `done` to come later, never from inside this call;
 * 0 when nothing could be asked (the session goes on as if unlisted:
 * failing open, counted); or DNSBLC_NOW when every list's answer was in
 * the worker's cache (kept for the answer's TTL): the result is in *now
 * and nothing follows. sites must outlive the lookups (the session's
 * configuration generation holds them). */
#define DNSBLC_NOW UINT64_MAX
uint64_t dnsblc_start(worker_t *w, const dnsbl_owner_t *o, const dnsbl_list_t *sites, int family,
                      const uint8_t *addr, dnsbl_state_t *now);
void dnsblc_cancel(worker_t *w, uint64_t handle);

/* The ring: libunbound's descriptor became readable. */
void dnsblc_cqe(worker_t *w, struct io_uring_cqe *cqe);

#endif

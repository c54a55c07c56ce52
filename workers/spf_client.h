/*
 * spf_client.h - a worker's side of SPF: the per-worker result cache, and
 * requests to the SPF helper process (workers/spfd/) over this worker's
 * socketpair, answered through the worker's ring.
 *
 * A request is named by a 64-bit id: its slot in this worker's table of
 * pending requests and that slot's generation. A request that times out is
 * removed from the table, so its reply, whenever it comes, finds a newer
 * generation (or nothing) and is dropped: it can never reach a newer
 * transaction, in the same session or another.
 *
 * The requester is named by an owner handle (session slot, generation,
 * transaction number); its answer comes through the done() function given
 * at init, which checks the handle (session.c).
 */
#ifndef MXGATE_SPF_CLIENT_H
#define MXGATE_SPF_CLIENT_H

#include <stdbool.h>
#include <stdint.h>

#include "filter.h"
#include "slice.h"

typedef struct worker worker_t;
struct io_uring_cqe;

typedef struct spf_owner {
    uint32_t idx, gen, seq;
} spf_owner_t;

/* A check's result for its owner (texts valid during the call). */
typedef void spfc_done_fn(worker_t *w, const spf_owner_t *o, unsigned result, slice_t received, slice_t comment);

int spfc_init(worker_t *w, spfc_done_fn *done, char *err, size_t errlen);
void spfc_destroy(worker_t *w);

/* Give the worker its end of the helper's socket: before its thread starts
 * (first helper), or from the main thread later (a restarted helper; the
 * worker takes it at its next tick). */
void spfc_set_fd(worker_t *w, int fd);
void spfc_handover(worker_t *w, int fd);

/*
 * Start a check for this owner. Answered at once (a cached result, or a
 * temperror when the helper is unavailable): *out is set and 0 is returned.
 * Otherwise *out is SPF_PENDING, the request's id is returned, and done()
 * comes later with the result or a timeout's temperror.
 */
uint64_t spfc_start(worker_t *w, const spf_owner_t *o, uint8_t family, const uint8_t *addr, slice_t helo,
                    slice_t sender, spf_state_t *out);

/* The owner no longer wants the answer. */
void spfc_cancel(worker_t *w, uint64_t id);

void spfc_cqe(worker_t *w, struct io_uring_cqe *cqe);
/* Takes a restarted helper's socket, keeps the receive armed. */
void spfc_tick(worker_t *w);

#endif

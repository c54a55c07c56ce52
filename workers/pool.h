/*
 * pool.h - a worker's pool of persistent connections to the downstream mail
 * server, leased to one transaction at a time.
 *
 * In the manner of h2o's socket pool, a transaction asks for a lease and
 * hears back through its owner handle: callbacks that name the owner by
 * (slot, generation, transaction number), never by pointer, so a callback for
 * an owner that has gone or moved on is recognized by the owner and dropped.
 * The pool never looks at a session, a transaction or the SMTP engine.
 *
 * The protocol on each connection is core/relay.h's; the pool does the I/O
 * (connect, the send chain, a receive buffer lent to the kernel, a timer that
 * measures time without progress), keeps at most downstream_connections,
 * queues owners in a bounded FIFO when all are busy, backs off when connecting
 * fails, and retires connections by age and message count.
 *
 * Every failure of a leased connection reaches its owner the same way: the
 * relay's REPLY events (451 4.4.1, SMTP_R_PEER) for each command still owed a
 * reply, in order, then LOST, all within the loop turn that saw the failure.
 */
#ifndef MXGATE_POOL_H
#define MXGATE_POOL_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "relay.h"

typedef struct worker worker_t;
typedef struct pool pool_t;
struct io_uring_cqe;

/* A lease: which connection, and which use of it. 0 is no lease. */
typedef uint64_t pool_lease_t;

typedef struct pool_owner pool_owner_t;

typedef struct pool_owner_ops {
    /* The lease asked for (POOL_QUEUED) is granted. */
    void (*ready)(worker_t *w, const pool_owner_t *o, pool_lease_t lease);
    /* The lease asked for cannot be given (queue timeout, no server). */
    void (*failed)(worker_t *w, const pool_owner_t *o, const smtp_reply_t *r);
    /* A REPLY or LOST on a granted lease (after LOST the lease is void). */
    void (*event)(worker_t *w, const pool_owner_t *o, const relay_event_t *ev);
    /* The lease's send buffer has room again (body backpressure). */
    void (*writable)(worker_t *w, const pool_owner_t *o);
} pool_owner_ops_t;

struct pool_owner {
    const pool_owner_ops_t *ops;
    uint32_t idx, gen; /* the owner's slot and its generation */
    uint32_t seq;      /* the owner's use (its transaction number) */
};

/* Send-buffer bytes past which an owner should stop feeding the body. */
#define POOL_SEND_HIGH (128u * 1024u)

int pool_init(worker_t *w, char *err, size_t errlen);
/* In the worker's thread, once its ring is up: open a first connection, so
 * that readiness knows whether the server answers before the first client. */
void pool_start(worker_t *w);
void pool_destroy(worker_t *w);

/* The worker adopted a new configuration generation (w->cfg); before is
 * the one it had. Connections that no longer match it (downstream,
 * downstream_protocol, hostname, a higher recipient_limit) are retired:
 * idle ones now, leased ones after their transaction. */
void pool_reconfigure(worker_t *w, const mx_config_t *before);

enum pool_acquire { POOL_GRANTED, POOL_QUEUED, POOL_REFUSED };

/*
 * Ask for a connection. GRANTED: *lease is usable now. QUEUED: ready() or
 * failed() comes later (never from inside this call). REFUSED: *refusal says
 * why (451 4.4.1 while the server is unreachable, 451 4.4.5 when the queue
 * is full).
 */
enum pool_acquire pool_acquire(worker_t *w, const pool_owner_t *o, pool_lease_t *lease, smtp_reply_t *refusal);

/* Leave the queue (the owner no longer wants a lease). */
void pool_cancel(worker_t *w, const pool_owner_t *o);

/* The owner's commands on its lease: core/relay.h's, with the I/O done here.
 * A stale lease refuses with 451 4.4.1. */
bool pool_mail(worker_t *w, pool_lease_t l, uint32_t token, slice_t mailbox, const smtp_mail_params_t *p,
               smtp_reply_t *refusal) __attribute__((warn_unused_result));
bool pool_rcpt(worker_t *w, pool_lease_t l, uint32_t token, slice_t mailbox, smtp_reply_t *refusal)
    __attribute__((warn_unused_result));
bool pool_data(worker_t *w, pool_lease_t l, uint32_t token, smtp_reply_t *refusal) __attribute__((warn_unused_result));
bool pool_eod(worker_t *w, pool_lease_t l, uint32_t token, smtp_reply_t *refusal) __attribute__((warn_unused_result));

/* Body bytes (wire form), only while the server is in the body. False: the
 * lease is gone or memory ran out (the owner latches a failure). */
bool pool_body(worker_t *w, pool_lease_t l, const char *p, size_t n) __attribute__((warn_unused_result));

/* How many more body bytes the lease takes before POOL_SEND_HIGH (0 when
 * it is full; a large number when the lease is gone: nothing to wait for). */
size_t pool_room(worker_t *w, pool_lease_t l);

/* The owner is done with the lease (transaction over, or abandoned). */
void pool_release(worker_t *w, pool_lease_t l);

/* The loop: completions, timers run by the wheel, and the sends gathered
 * during a loop turn (one write per connection per turn). */
void pool_cqe(worker_t *w, int op, uint32_t idx, uint32_t gen, struct io_uring_cqe *cqe);
void pool_flush(worker_t *w);
void pool_reap(worker_t *w);

/* Draining: close idle connections; true when none is left. */
bool pool_drain(worker_t *w);
/* Drain deadline: close every connection. */
void pool_close_all(worker_t *w);

#endif

/*
 * session.h - the client connections of one worker.
 *
 * A session is the I/O half of a client connection: the socket, its receive
 * buffers, its send chain, its timer, the SMTP engine (core/smtp.h) and at
 * most one transaction (tx.h). Its struct is private to session.c; other
 * subsystems reach a session only through the owner handles it gives them
 * (slot, generation, transaction number) and the callbacks below, which
 * check the handle and drop what is stale.
 *
 * Work is posted, not nested: a completion or a callback changes a
 * session's state and posts it; sessions_run() then lets each posted session
 * read on, answer and send, once per loop turn, so a read batch's replies
 * leave in one send and no callback re-enters a session's processing.
 */
#ifndef MXGATE_SESSION_H
#define MXGATE_SESSION_H

#include <stdbool.h>
#include <stdint.h>

#include "pool.h"
#include "dnsbl_client.h"
#include "fleet.h"
#include "scanner.h"
#include "spf_client.h"
#include "spooler.h"

typedef struct worker worker_t;
struct io_uring_cqe;

int sessions_init(worker_t *w, char *err, size_t errlen);
void sessions_destroy(worker_t *w);

/* A connection the listener accepted. */
void session_accept(worker_t *w, int fd);

/*
 * The loop's side, in the order of a loop turn: the OP_RECV, OP_SEND and
 * OP_CANCEL completions of session (idx, gen); the posted sessions read on,
 * answer and send (sessions_run); sessions starved of receive buffers read
 * again once buffers went back (sessions_buffers_back); closed sessions
 * whose last completion is in are freed (sessions_reap). Draining: idle
 * sessions get 421 now, the others after their transaction
 * (sessions_drain); at the drain deadline every session gets 421 and is
 * closed (sessions_close_all).
 */
void session_cqe(worker_t *w, int op, uint32_t idx, uint32_t gen, struct io_uring_cqe *cqe);
void sessions_run(worker_t *w);
void sessions_buffers_back(worker_t *w);
void sessions_reap(worker_t *w);
void sessions_drain(worker_t *w);
void sessions_close_all(worker_t *w);
uint32_t sessions_count(const worker_t *w);

/* The callbacks other subsystems call with a session's owner handle. */
extern const pool_owner_ops_t session_pool_ops;
extern const spool_owner_ops_t session_spool_ops;
void session_spf_done(worker_t *w, const spf_owner_t *o, unsigned result, slice_t received, slice_t comment);
void session_scan_done(worker_t *w, const scanner_owner_t *o, scanner_result_t *r);
void session_dnsbl_done(worker_t *w, const dnsbl_owner_t *o, int score, uint32_t hit, unsigned unanswered);
void session_fleet_done(worker_t *w, const fleet_owner_t *o, bool over);

#endif

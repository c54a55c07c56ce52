/*
 * tx.h - one mail transaction of a client session: from MAIL to its end.
 *
 * The transaction owns everything that lives as long as one message: the
 * sender and its parameters, the recipients with the reply each got, the
 * filter and SPF state, the trace headers, the downstream lease, sizes and
 * timings. It is created at MAIL and ended in one place, tx_end(), whatever
 * ends it (end-of-data verdict, refusal, RSET, HELO, QUIT, client gone,
 * timeout, drain); tx_end() writes its one log line from these fields, so
 * nothing is ever parsed back out of a log buffer.
 *
 * The client's commands reach it as engine events, each with the reply slot
 * it must fill (core/smtp.h). It fills every slot exactly once: with a
 * filter's verdict, with the downstream's reply to the forwarded command, or
 * with 451 4.4.1 when the downstream failed. Addresses go downstream exactly
 * as the engine parsed them.
 *
 * Ownership: the session holds its transaction (at most one) and calls
 * tx_end() when the transaction is over (tx_over()) or the session ends.
 * Freed transactions go back to a per-thread cache, so a message costs no
 * allocation once a worker is warm.
 */
#ifndef MXGATE_TX_H
#define MXGATE_TX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "filter.h"
#include "pool.h"
#include "scanner.h"
#include "smtp.h"
#include "spooler.h"

typedef struct worker worker_t;
typedef struct tx tx_t;

/* What a transaction knows of its session; fixed for its life. */
typedef struct tx_env {
    worker_t *w;
    const mx_config_t *cfg;       /* the session's configuration generation (conf.h) */
    const filter_chain_t *chain;  /* and its filters */
    smtp_t *smtp;                 /* the session's engine: where verdicts go */
    const pool_owner_ops_t *ops;  /* the session's callbacks for the pool */
    const spool_owner_ops_t *sops; /* and for the spool (delivery = spool) */
    uint32_t owner_idx, owner_gen;
    uint64_t session_id;
    uint32_t number;              /* transactions begun in the session, this one included */
    uint8_t family;               /* AF_INET or AF_INET6 */
    const uint8_t *addr;          /* the client's address (the session's, lives longer) */
    uint16_t port;
    const char *ip;               /* the address as text */
    slice_t helo;                 /* the session's copy; HELO cannot change within a transaction */
    bool esmtp;
    const struct tls_conn *tls;   /* the session's TLS after STARTTLS; NULL in plaintext */
    const dnsbl_state_t *dnsbl;   /* the session's DNSBL lookups (it outlives the transaction); NULL: none */
} tx_env_t;

/* How a transaction ended, for its log line. */
enum tx_end {
    TXE_DATA = 1,      /* its end of data was answered */
    TXE_REFUSED,       /* MAIL refused */
    TXE_REJECTED,      /* the body broke a limit (the engine answered) */
    TXE_RSET,
    TXE_HELO,
    TXE_QUIT,
    TXE_CLIENT_CLOSED,
    TXE_TIMEOUT,
    TXE_DRAIN,
    TXE_ERROR,         /* the session ended for another reason */
};

/* MAIL (the event's slot is answered now or later). NULL: out of memory,
 * and the slot has been answered 451. */
tx_t *tx_begin(const tx_env_t *env, const smtp_event_t *mail);
/* rcpts_conn: RCPT commands in this connection, this one included. */
void tx_rcpt(tx_t *t, const smtp_event_t *ev, uint32_t rcpts_conn);
void tx_data(tx_t *t, const smtp_event_t *ev);
void tx_body(tx_t *t, slice_t wire);
void tx_data_end(tx_t *t, const smtp_event_t *ev);
void tx_body_rejected(tx_t *t, const smtp_event_t *ev);

/* Body bytes the transaction takes now before the downstream must catch up
 * (SIZE_MAX when nothing waits on it). */
size_t tx_room(tx_t *t);

/* Nothing more will happen: how it ended (the session should end it), or 0. */
enum tx_end tx_over(const tx_t *t);

/* Is a reply of this transaction's still owed to the client? */
bool tx_waiting(const tx_t *t);

void tx_end(tx_t *t, enum tx_end how);

/* The transaction's number in its session (owner handles carry it). */
uint32_t tx_number(const tx_t *t);

/* From the pool and the SPF client, through the session. */
void tx_lease_ready(tx_t *t, pool_lease_t lease);
void tx_lease_failed(tx_t *t, const smtp_reply_t *r);
void tx_relay_event(tx_t *t, const relay_event_t *ev);
void tx_spf_result(tx_t *t, unsigned result, slice_t received, slice_t comment);
/* Work a filter waited for is done (the session's DNSBL lookups): every
 * stage that waited runs again, in command order. */
void tx_rerun(tx_t *t);
/* delivery = spool: the message handed over at its end of data is durable
 * (ok: 250), or could not be written (451 4.3.0). */
void tx_spool_committed(tx_t *t, bool ok);

/* content_scanner: the scan of the message ended (scanner.h); the buffer
 * comes back with it. */
void tx_scan_done(tx_t *t, scanner_result_t *r);
/* The lease's connection drained: a held message being pushed goes on. */
bool tx_pushing(const tx_t *t);
void tx_writable(tx_t *t);

/* The worker thread's cache of free transactions, freed at its exit. */
void tx_cache_free(void);

#endif

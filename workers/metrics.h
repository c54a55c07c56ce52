/*
 * metrics.h - what a worker counts, for /metrics.
 *
 * Each worker has its own metrics_t and is the only writer of it: an
 * increment is a relaxed load and a relaxed store (a plain add on x86-64),
 * no lock and no atomic read-modify-write on the per-message path. The HTTP
 * thread reads with relaxed loads when scraped and sums over workers, so a
 * scrape sees each counter at some moment of its own; counters never go
 * back. Process-wide numbers (reloads, helper restarts) live in
 * proc_metrics_t, written by the main thread.
 */
#ifndef MXGATE_METRICS_H
#define MXGATE_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include "smtp.h"

typedef _Atomic uint64_t mcount_t;

static inline void m_add(mcount_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n, memory_order_relaxed);
}

static inline void m_inc(mcount_t *c)
{
    m_add(c, 1);
}

static inline void m_set(mcount_t *c, uint64_t v)
{
    atomic_store_explicit(c, v, memory_order_relaxed);
}

static inline uint64_t m_get(const mcount_t *c)
{
    return atomic_load_explicit((mcount_t *)c, memory_order_relaxed);
}

/* Why a connection was refused before its greeting. */
enum m_refused {
    MR_MAX_CONNECTIONS = 0,
    MR_MAX_CONNECTIONS_PER_IP,
    MR_FILTER,
    MR_PROXY,        /* a bad, slow or missing PROXY header */
    MR_EARLY_TALKER,
    MR_RATE_CONNECTIONS, /* over rate_connections */
    MR_COUNT
};

/* How a transaction ended (enum tx_end, 1-based; 0 unused). */
#define M_TX_END_COUNT 11

/* The final reply to a message: accepted, deferred (4xx), refused (5xx). */
enum m_outcome { MO_ACCEPTED = 0, MO_DEFERRED, MO_REFUSED, MO_COUNT };

enum m_backpressure {
    MB_CLIENT_SLOW = 0, /* the client does not read its replies */
    MB_DOWNSTREAM_SLOW, /* the downstream takes the body slower than the client sends it */
    MB_HELD_BUFFERS,    /* a pipelining client holds too many receive buffers */
    MB_NO_BUFFERS,      /* the worker's receive buffers ran out (ENOBUFS) */
    MB_COUNT
};

enum m_timeout { MT_COMMAND = 0, MT_DATA, MT_DATA_RATE, MT_PROXY, MT_DOWNSTREAM, MT_SPF, MT_TLS, MT_COUNT };

/* STARTTLS handshakes, by how they ended. */
enum m_tls { MTLS_OK = 0, MTLS_FAILED, MTLS_TIMEOUT, MTLS_REFUSED /* over the per-address limit */, MTLS_COUNT };

/* Downstream connections that wanted TLS, by how they went on: encrypted
 * with a certificate that verified, or did not; in plaintext (may: not
 * offered, or refused); or failed (the handshake, or TLS required). */
enum m_ds_tls { MDT_VERIFIED = 0, MDT_UNVERIFIED, MDT_PLAINTEXT, MDT_FAILED, MDT_COUNT };

/* PROXY headers accepted: with an address by version, or LOCAL (the
 * balancer's own check, or an address family without an IP). */
enum m_proxy { MP_V1 = 0, MP_V2, MP_LOCAL, MP_COUNT };

/* PROXY headers refused: proxy_err_t's values (1 to 11, core/proxy.h), then
 * the session's own reasons. */
enum m_proxy_err {
    MPE_TIMEOUT = 12, /* not whole within proxy_timeout */
    MPE_CLOSED,       /* the connection closed before it was whole */
    MPE_UNTRUSTED,    /* sent by a source outside proxy_trusted */
    MPE_COUNT
};

/* What became of a spooled message's delivery attempt (and DSNs made). */
enum m_spool_result { MSR_DELIVERED = 0, MSR_DEFERRED, MSR_BOUNCED, MSR_EXPIRED, MSR_DSN, MSR_COUNT };

/* DNSBL lookups of a client, by outcome: no list counted, some did, or a
 * list had not answered by dnsbl_timeout. */
enum m_dnsbl { MDL_CLEAN = 0, MDL_LISTED, MDL_TIMEOUT, MDL_PASS_CACHE /* not asked: a recent pass */, MDL_COUNT };

/* A histogram in seconds with fixed bounds (Prometheus's cumulative form is
 * built when rendered). */
#define M_BUCKETS 12
typedef struct mhist {
    mcount_t bucket[M_BUCKETS + 1]; /* the last: above every bound */
    mcount_t sum_us;
    mcount_t count;
} mhist_t;

void m_observe(mhist_t *h, const double *bounds, uint64_t us);

/* Redis's answers to the fleet's rate updates (fleet.h). */
enum m_fleet { MFL_TAKEN = 0, MFL_OVER, MFL_ERROR, MFL_COUNT };

/* The content stage (scanner.h): a scan's result, rspamd's action or a
 * failure; why a scan failed; what the fallback did. */
enum m_content { MCS_NO_ACTION = 0, MCS_GREYLIST, MCS_ADD_HEADER, MCS_REWRITE_SUBJECT, MCS_SOFT_REJECT, MCS_REJECT,
                 MCS_ERROR, MCS_COUNT };
/* "no_action", ..., "reject", "error": in /metrics and the tx log line. */
extern const char *const m_content_names[MCS_COUNT];
enum m_content_err { MCE_CONNECT = 0, MCE_TIMEOUT, MCE_IO, MCE_HTTP, MCE_RESPONSE, MCE_REQUEST, MCE_COUNT };
/* rspamd's DKIM, DMARC and ARC results (rspamd_auth_t without "absent"). */
#define M_AUTH_METHODS 3
#define M_AUTH_RESULTS 5

typedef struct metrics {
    mcount_t connections_accepted;
    mcount_t connections_open;             /* gauge */
    mcount_t refused[MR_COUNT];
    mcount_t transactions[M_TX_END_COUNT]; /* by enum tx_end */
    mcount_t messages[MO_COUNT];
    mcount_t replies[6];                   /* to clients, by class (index 2..5) */
    mcount_t relayed_bytes;
    mcount_t ds_open, ds_busy, ds_idle, ds_queue; /* gauges */
    mcount_t ds_reachable;                 /* gauge: 1 while the downstream answers connects */
    mcount_t ds_connects, ds_connect_failures;
    mcount_t ds_replies[6];                /* from the downstream, by class */
    mcount_t ds_failures;                  /* connections that failed while in use */
    mcount_t ds_tls[MDT_COUNT];
    mcount_t ds_tls_resumed;               /* downstream handshakes that resumed a session */
    mcount_t spf_checks[7];                /* by enum spf_result */
    mcount_t spf_cache_hits;
    mcount_t backpressure[MB_COUNT];
    mcount_t timeouts[MT_COUNT];
    mcount_t proxy[MP_COUNT];
    mcount_t proxy_errors[MPE_COUNT];
    mcount_t tls_handshakes[MTLS_COUNT];
    mcount_t tls_resumed;                  /* handshakes that resumed a session (a ticket) */
    mcount_t spool_messages, spool_bytes;  /* gauges: pending in the spool */
    mcount_t spool_oldest_ms;              /* gauge: the oldest pending message's arrival, Unix ms (0: none) */
    mcount_t spool_fsyncs;                 /* group commits (one fsync each) */
    mcount_t spool_written;                /* octets written to segments */
    mcount_t spool_write_failures;
    mcount_t spool_fallbacks;              /* relay-then-spool transactions the downstream could not take */
    mcount_t spool_results[MSR_COUNT];
    mcount_t dnsbl_lookups[MDL_COUNT];
    mcount_t dnsbl_errors;                 /* list queries that failed (not: answered "not listed") */
    mcount_t dnsbl_cache_hits;             /* list queries answered from the worker's cache */
    mcount_t dnsbl_refused;                /* clients refused for their score (at the greeting or a RCPT) */
    mcount_t protocol_violations[SMTP_V_COUNT]; /* postscreen's tests failed, by SMTP_V_* bit */
    mcount_t fleet_up;                     /* gauge: 1 while the worker's Redis connection is up */
    mcount_t fleet_replies[MFL_COUNT];
    mcount_t fleet_failopen;               /* rate events decided without the fleet (Redis down, slow, full) */
    mcount_t fleet_disconnects;            /* Redis connections lost or given up (timeout, error, refused) */
    mcount_t content_scans[MCS_COUNT];
    mcount_t content_errors[MCE_COUNT];
    mcount_t content_fallback[2];          /* by enum config_content_fallback */
    mcount_t content_auth[M_AUTH_METHODS][M_AUTH_RESULTS];
    mcount_t content_held;                 /* gauge: octets of messages held for the scanner */
    mcount_t content_memory_full;          /* messages refused 452 4.3.1: both budgets full */
    mcount_t content_spilled;              /* gauge: octets of held messages in files (content_spill_limit) */
    mcount_t content_spills;               /* messages moved to a file past content_memory_limit */
    mhist_t content_latency;               /* a scan, from its start to rspamd's verdict */
    mcount_t heartbeat_ms;                 /* the loop's last turn, CLOCK_MONOTONIC ms */
    mhist_t relay_latency;                 /* end of data sent to the downstream's reply */
    mhist_t session_duration;
} metrics_t;

extern const double m_latency_bounds[M_BUCKETS];  /* seconds */
extern const double m_duration_bounds[M_BUCKETS]; /* seconds */

/* Written by the main thread. */
typedef struct proc_metrics {
    mcount_t reloads_ok, reloads_failed;
    mcount_t spf_helper_restarts;
    mcount_t draining; /* gauge: 1 from SIGTERM on (readiness off) */
    mcount_t tls_ktls; /* gauge: 1 when the kernel carries TLS records; 0 user-space TLS (or no TLS) */
} proc_metrics_t;

/*
 * The Prometheus text format (version 0.0.4) of every worker's metrics
 * summed, and the process's. Returns the length written, like snprintf
 * (the text was cut when that is >= cap).
 */
size_t metrics_render(char *buf, size_t cap, const metrics_t *const *workers, int n, const proc_metrics_t *proc);

#endif

/*
 * worker.h - the per-core runtime: one thread, one io_uring, its own
 * SO_REUSEPORT listener, receive buffers, timers and send blocks, and the
 * state of each subsystem that runs on it (client sessions, the downstream
 * pool, the SPF client), each behind its own header and opaque type.
 * Nothing is shared between workers except the connection counters (atomics
 * touched on connect and close only) and the read-only config.
 *
 * Completions name their owner: user_data carries (op, slot, generation), so
 * a late completion never lands on a recycled slot. A session or downstream
 * connection is freed only when its count of operations in flight is zero,
 * after the loop turn (never from inside a callback).
 *
 * Buffers lent to the kernel (lend.h): the provided receive buffers belong to
 * the ring from buf_release() until their completion, send blocks from
 * outq_lend() until outq_sent(), the downstream and SPF receive buffers from
 * their arm to their completion.
 */
#ifndef MXGATE_WORKER_H
#define MXGATE_WORKER_H

#include <liburing.h>
#include <netinet/in.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdint.h>

#include "conf.h"
#include "config.h"
#include "filter.h"
#include "log.h"
#include "metrics.h"
#include "outq.h"
#include "smtp.h"
#include "timer.h"

#define RECV_BUF_SIZE 8192u  /* one provided buffer */
#define RECV_BUF_COUNT 512u  /* per worker: 4 MiB of receive memory in all */
#define BGID 1               /* the provided-buffer group of every worker's ring */
#define RING_ENTRIES 2048u
#define RING_CQ_ENTRIES 16384u
#define LISTEN_BACKLOG 4096
#define SCRATCH_CAP 65536u   /* the engine's reply buffer, emptied after every call */

enum op {
    OP_ACCEPT = 1,
    OP_RECV,
    OP_SEND,
    OP_TICK,
    OP_WAKE,
    OP_CANCEL,
    OP_DS_CONNECT,
    OP_DS_RECV,
    OP_DS_SEND,
    OP_DS_CANCEL,
    OP_SPF_RECV,
    OP_SPOOL_IO,
    OP_CALL,
    OP_DNSBL,
    OP_FLEET,
    OP_SCAN,         /* the content scanner's requests (scanner.c) */
    OP_SCAN_CANCEL,  /* its cancellations' own completions: nothing to do */
};

static inline uint64_t ud_make(enum op op, uint32_t idx, uint32_t gen)
{
    return (uint64_t)op << 56 | (uint64_t)(gen & 0xffffffu) << 32 | idx;
}
#define UD_OP(u) ((enum op)((u) >> 56))
#define UD_GEN(u) ((uint32_t)((u) >> 32) & 0xffffffu)
#define UD_IDX(u) ((uint32_t)(u))
#define GEN_MASK 0xffffffu

struct rate;
struct spool_shared;

typedef struct conn_limits {
    atomic_int total;
    atomic_ushort per_ip[65536];
    struct rate *rate; /* per address rates, all workers (rate.h) */
    struct spool_shared *spool; /* delivery = spool: the directory and its octets (spooler.h) */
    int spill_dirfd;            /* content_scanner: where held messages past the memory budget go; -1: none */
} conn_limits_t;

typedef struct worker worker_t;
typedef struct sessions sessions_t;
typedef struct pool pool_t;
typedef struct spfc spfc_t;
typedef struct spooler spooler_t;
typedef struct dnsblc dnsblc_t;
typedef struct fleet fleet_t;
typedef struct scanner scanner_t;
typedef void worker_call_fn(worker_t *w, void *arg);

struct worker {
    int id;
    struct io_uring ring;
    /* The configuration generation new sessions and the pool use (conf.h):
     * cfg and chain are its, for short. Adopted between loop turns. */
    conf_t *conf;
    const mx_config_t *cfg;
    const filter_chain_t *chain;
    conf_t *_Atomic *conf_pub;    /* main's current generation */
    _Atomic uint64_t conf_seen;   /* the number of the last one adopted, for main */
    conf_held_t *held;            /* generations held here: the current one and any with sessions */
    uint32_t nheld, held_cap;
    conn_limits_t *limits;
    uint64_t now;                 /* ms, CLOCK_MONOTONIC, once per loop turn */
    bool draining, stopped;
    uint64_t drain_deadline;
    /* receive buffers */
    struct io_uring_buf_ring *br;
    char *bufs;
    uint32_t buf_refs[RECV_BUF_COUNT];
    bool bufs_returned;           /* a buffer went back: starved sessions may read */
    timer_wheel_t timers;
    timer_node_t drain_timer;
    outq_pool_t blocks;           /* send blocks */
    smtp_out_t scratch;           /* the engine's replies before they join a send chain */
    char *tls_plain;              /* TLS_PLAIN_CAP: a session's decrypted input while it runs (session.c) */
    uint64_t id_next;             /* session ids: random start, then counting */
    /* subsystems */
    sessions_t *sessions;
    pool_t *pool;
    spfc_t *spf;
    spooler_t *spool;             /* delivery = spool (spooler.h); NULL otherwise */
    dnsblc_t *dnsbl;              /* DNSBL lookups (dnsbl_client.h) */
    fleet_t *fleet;               /* the fleet's rate limits in Redis (fleet.h) */
    scanner_t *scanner;           /* the content stage's rspamd requests (scanner.h) */
    struct resolve *resolver;     /* the downstream's address (resolve.h); set by main, read at connect */
    metrics_t m;                  /* written by this worker only; read when scraped */
    /* the loop's own */
    int listen_fd[CONFIG_LISTEN_MAX];
    int nlisten;
    bool accept_paused[CONFIG_LISTEN_MAX];
    int wake_fd;
    uint64_t wake_val;
    /* worker_call(): another thread's function, run here between turns */
    int call_fd;
    uint64_t call_val;
    pthread_mutex_t call_mu;
    pthread_cond_t call_cv;
    worker_call_fn *call_fn;      /* posted, not yet taken */
    void *call_arg;
    bool call_running;
    struct __kernel_timespec tick;
    sem_t ready;                  /* posted once the thread's ring is up (or failed) */
    char init_err[512];
};

int worker_init(worker_t *w, int id, conf_t *_Atomic *pub, conn_limits_t *limits, char *err, size_t errlen);

/* A session begins on the current generation and keeps it: conf_hold at its
 * start, conf_drop at its end (conf.h). */
conf_t *worker_conf_hold(worker_t *w);
void worker_conf_drop(worker_t *w, conf_t *c);
void *worker_main(void *arg);
void worker_destroy(worker_t *w);
void worker_wake(worker_t *w);

/* From another thread (the control socket's): run fn(w, arg) in the
 * worker's thread between two loop turns and wait for it. -1 when the
 * worker did not take it within timeout_ms (stopped, or stuck); fn is then
 * never run. Calls are serialized. */
int worker_call(worker_t *w, worker_call_fn *fn, void *arg, unsigned timeout_ms);
int worker_parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *len);

/* An SQE; submits when the SQ is full, so it never fails. */
struct io_uring_sqe *worker_sqe(worker_t *w);

/* A provided receive buffer: its bytes, and giving it back to the ring once
 * nothing points into it (refcounted by the worker). */
static inline const char *buf_data(const worker_t *w, uint16_t bid)
{
    return w->bufs + (size_t)bid * RECV_BUF_SIZE;
}
void buf_taken(worker_t *w, uint16_t bid, size_t len);
void buf_release(worker_t *w, uint16_t bid);

/* A fresh id, unique across workers, instances and restarts. */
uint64_t worker_new_id(worker_t *w);

#endif

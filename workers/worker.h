/*
 * worker.h - the per-core runtime: one thread, one io_uring, its own
 * SO_REUSEPORT listener, its sessions and its downstream pool. Nothing here is
 * shared between workers except the connection counters (atomics touched on
 * connect and close only) and the read-only config.
 *
 * Ownership: a session or downstream connection is freed only when its count
 * of operations in flight is zero; every completion carries (op, slot,
 * generation) in user_data, so a late completion never lands on a recycled
 * slot.
 */
#ifndef MXGATE_WORKER_H
#define MXGATE_WORKER_H

#include <liburing.h>
#include <semaphore.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdint.h>

#include "config.h"
#include "dsreply.h"
#include "filter.h"
#include "log.h"
#include "smtp.h"

#define RECV_BUF_SIZE 8192u  /* one provided buffer */
#define RECV_BUF_COUNT 512u  /* per worker: 4 MiB of receive memory in all */
#define HELD_INLINE 4        /* held buffers kept in the session itself */
#define HELD_CANCEL 3        /* past this many held buffers, reading stops */
#define SEND_HIGH 65536u     /* unsent replies past which a session stops reading */
#define DS_OUT_CAP 131072u   /* downstream send buffer */
#define DS_IN_CAP 4096u
#define BGID 1               /* the provided-buffer group of every worker's ring */

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
    OP_SPF_RECV,
};

static inline uint64_t ud_make(enum op op, uint32_t idx, uint32_t gen)
{
    return (uint64_t)op << 56 | (uint64_t)(gen & 0xffffffu) << 32 | idx;
}
#define UD_OP(u) ((enum op)((u) >> 56))
#define UD_GEN(u) ((uint32_t)((u) >> 32) & 0xffffffu)
#define UD_IDX(u) ((uint32_t)(u))

/* An intrusive list kept in deadline order: every member of one list has the
 * same timeout, so appending at refresh keeps it sorted (no heap needed). */
typedef struct tnode {
    struct tnode *prev, *next;
    uint64_t deadline;
} tnode_t;

typedef struct worker worker_t;
typedef struct session session_t;
typedef struct dsconn dsconn_t;

typedef struct held {
    uint16_t bid, off, len;
} held_t;

enum sess_flag {
    SF_CLOSING = 1 << 0,   /* shut down; freed when nothing is in flight */
    SF_RECV = 1 << 1,      /* a multishot recv is armed */
    SF_SENDING = 1 << 2,   /* a send is in flight */
    SF_REARM = 1 << 3,     /* recv ended (ENOBUFS or cancel): arm again when possible */
    SF_CANCELLED = 1 << 4, /* we cancelled the recv for backpressure */
    SF_QUIT = 1 << 5,      /* close once the output is sent */
    SF_DSWAIT = 1 << 6,    /* waiting in the pool's queue */
    SF_STARVED = 1 << 7,   /* recv ended on ENOBUFS: counted in w->nstarved */
    SF_INPROC = 1 << 8,    /* inside session_process: a nested call only asks for another pass */
};

struct session {
    uint32_t idx, gen;
    int fd;
    uint16_t inflight;
    uint16_t flags;
    uint16_t nheld, held_cap;
    uint8_t family;
    uint16_t port;
    /* Received buffers not yet consumed. Reading is cancelled past
     * HELD_CANCEL, but a multishot recv may post more before the cancel
     * lands, so the queue grows (into the heap) rather than drop input; the
     * ring's buffer count bounds it. */
    held_t *held;
    held_t held_inline[HELD_INLINE];
    uint8_t addr[16];
    smtp_t smtp;
    tnode_t timer;
    tnode_t qnode;          /* in the pool's wait queue */
    char *send;             /* replies not yet sent; allocated while needed */
    uint32_t send_len, send_off, send_cap, send_inflight;
    char *helo;             /* copied at HELO: the Received header needs it */
    int local_code;         /* a local verdict waiting behind deferred ones */
    const char *local_esc, *local_text;
    char *txlog;            /* "from=<..> rcpt=<..>,..": logging and Received */
    uint32_t txlog_len, txlog_cap;
    char *mbuf;             /* Maildir mode: the body */
    size_t mlen, mcap;
    dsconn_t *ds;
    uint32_t ds_gen;
    uint32_t rcpts, rcpt_ok;
    uint64_t id;
    uint64_t start_ms, tx_ms;
    uint32_t txn;           /* transactions so far */
    uint32_t rcpts_conn;    /* RCPT commands in this connection */
    uint8_t wait_stage;     /* enum filter_stage the chain waits on; 0: none */
    char *wait_rcpt;        /* the waiting RCPT's mailbox (its slices died with the buffer) */
    bool wait_postmaster;
    spf_state_t spf;        /* this transaction's SPF check */
    tnode_t spf_timer;      /* in w->t_spf while the check runs */
};

enum ds_state {
    DS_CONNECTING = 1,
    DS_GREETING,
    DS_EHLO,
    DS_READY,   /* idle in the pool */
    DS_BUSY,    /* leased to a session */
    DS_RSET,
    DS_DEAD,
};

/* What the downstream's next reply answers. */
enum ds_expect {
    DX_NONE = 0,
    DX_GREETING,
    DX_EHLO,
    DX_MAIL,
    DX_RCPT,
    DX_DATA,
    DX_EOD,
    DX_RSET,
    /* Verdicts of our own, queued in turn behind pipelined commands; no
     * downstream reply belongs to them: DX_LOCAL + enum filter_reason. */
    DX_LOCAL = 16,
};

struct dsconn {
    uint32_t idx, gen;
    int fd;
    uint16_t inflight;
    uint8_t state;
    uint8_t *exq;            /* replies due, oldest first (enum ds_expect) */
    uint32_t exq_head, exq_len, exq_cap;
    bool in_data;            /* DATA accepted: only the end or a close ends it */
    bool tx_open;            /* MAIL accepted downstream, message not ended */
    bool retire;             /* close when the current use ends */
    bool recv_armed, sending;
    uint32_t caps;
    uint32_t messages;
    uint32_t eod_left;       /* LMTP: replies still due after the end of data */
    int eod_code;            /* LMTP: the worst reply so far */
    uint64_t born_ms;
    session_t *owner;
    uint32_t owner_gen;
    tnode_t timer;
    dsr_t parser;
    char in[DS_IN_CAP];
    char *out;
    uint32_t out_len, out_inflight;
    char err[160];
};

typedef struct conn_limits {
    atomic_int total;
    atomic_ushort per_ip[65536];
} conn_limits_t;

struct worker {
    int id;
    struct io_uring ring;
    const mx_config_t *cfg;
    smtp_config_t smtp_cfg;
    conn_limits_t *limits;
    int listen_fd[8];
    int nlisten;
    int wake_fd;
    sem_t ready;                  /* posted once the thread's ring is up (or failed) */
    char init_err[512];
    uint64_t wake_val;
    bool draining, stopped;
    bool accept_paused[8];        /* out of descriptors: re-armed by the tick */
    uint64_t drain_deadline;
    uint64_t now;                 /* ms, CLOCK_MONOTONIC, once per loop turn */
    /* receive buffers */
    struct io_uring_buf_ring *br;
    char *bufs;
    uint32_t buf_refs[RECV_BUF_COUNT];
    bool need_rearm;
    uint32_t nstarved;            /* sessions whose recv ended on ENOBUFS */
    /* sessions: slot table with generations */
    session_t **sess;
    uint32_t *sess_gen;
    uint32_t nsess_slots, nsessions;
    uint32_t *sess_free;
    uint32_t nsess_free;
    /* timers */
    tnode_t t_cmd, t_data, t_ds, t_greet;
    tnode_t reap;                 /* closed sessions waiting for their last completion */
    struct __kernel_timespec tick;
    /* downstream pool */
    dsconn_t **ds;
    uint32_t *ds_gen;
    uint32_t nds_slots, nds, nds_dead;
    tnode_t dsq;                  /* sessions waiting for a connection */
    uint32_t dsq_len;
    struct sockaddr_storage ds_addr;
    socklen_t ds_addrlen;
    uint64_t ds_backoff_until;
    uint32_t ds_backoff_ms;
    /* scratch output for the engine; moved into the session after each call */
    smtp_out_t scratch;
    uint64_t next_id;
    /* the filter chain (shared, read-only) and the SPF helper */
    const filter_chain_t *chain;
    filter_host_t host;
    int spf_fd;                   /* our end of the helper's socketpair; -1: none */
    atomic_int spf_newfd;         /* a restarted helper's socket, from the main thread */
    char *spf_in;                 /* one reply datagram */
    bool spf_recv_armed;
    uint32_t spf_seq;
    uint32_t spf_gen;             /* which socket an OP_SPF_RECV was armed on */
    tnode_t t_spf;                /* sessions waiting for the helper, by deadline */
    struct spf_cent **spf_cache;  /* 4-way sets of results, by TTL */
    uint32_t spf_sets;            /* a power of two; 0: no cache */
    /* counters (per worker, summed when read) */
    uint64_t n_conn, n_msg, n_rejected;
    uint64_t n_spf_checks, n_spf_cached, n_spf_errors;
};

/* worker.c */
int worker_init(worker_t *w, int id, const mx_config_t *cfg, const filter_chain_t *chain, conn_limits_t *limits,
                char *err, size_t errlen);
void *worker_main(void *arg);
void worker_destroy(worker_t *w);
void worker_wake(worker_t *w);
int worker_parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *len);
struct io_uring_sqe *worker_sqe(worker_t *w);
void buf_release(worker_t *w, uint16_t bid);

void tlist_init(tnode_t *head);
void tlist_put(tnode_t *head, tnode_t *n, uint64_t deadline);
void tlist_del(tnode_t *n);

/* session.c */
void session_accept(worker_t *w, int fd);
void session_cqe(worker_t *w, session_t *s, enum op op, struct io_uring_cqe *cqe);
void session_process(worker_t *w, session_t *s);
void session_timeout(worker_t *w, session_t *s);
void session_drain(worker_t *w, session_t *s);
void session_reap(worker_t *w);
void session_greet(worker_t *w, session_t *s);
void session_flush(worker_t *w, session_t *s);
void session_ds_reply(worker_t *w, session_t *s, enum ds_expect what, int code, slice_t esc, slice_t text);
void session_ds_ready(worker_t *w, session_t *s);
void session_ds_failed(worker_t *w, session_t *s, int code, const char *esc, const char *text);
session_t *session_get(worker_t *w, uint32_t idx, uint32_t gen);
void session_spf_done(worker_t *w, session_t *s);
slice_t session_sender(const session_t *s);

/* spf_client.c: the worker's side of the SPF helper */
int spfc_init(worker_t *w, char *err, size_t errlen);
void spfc_start(void *ctx, const filter_facts_t *fx);
void spfc_cqe(worker_t *w, struct io_uring_cqe *cqe);
void spfc_tick(worker_t *w);
void spfc_cancel(worker_t *w, session_t *s);
void spfc_destroy(worker_t *w);

/* downstream.c */
int ds_init(worker_t *w, char *err, size_t errlen);
void ds_acquire(worker_t *w, session_t *s);
void ds_send_cmd(worker_t *w, dsconn_t *c, enum ds_expect what, const char *line, size_t len);
bool ds_queue_cmd(worker_t *w, dsconn_t *c, enum ds_expect what, const char *line, size_t len);
enum ds_expect ds_pop_local(dsconn_t *c);
bool ds_append(worker_t *w, dsconn_t *c, const char *p, size_t len);
uint32_t ds_room(const dsconn_t *c);
void ds_flush(worker_t *w, dsconn_t *c);
void ds_release(worker_t *w, dsconn_t *c, bool clean);
void ds_cqe(worker_t *w, dsconn_t *c, enum op op, struct io_uring_cqe *cqe);
void ds_timeout(worker_t *w, dsconn_t *c);
void ds_queue_timeout(worker_t *w, session_t *s);
void ds_unqueue(worker_t *w, session_t *s);
dsconn_t *ds_get(worker_t *w, uint32_t idx, uint32_t gen);
void ds_shutdown_idle(worker_t *w);
void ds_reap(worker_t *w);

/* maildir.c */
int maildir_prepare(const char *dir, char *err, size_t errlen);
int maildir_deliver(const char *dir, const char *hostname, uint64_t id, const char *hdr, size_t hlen,
                    const char *body, size_t blen, char *name, size_t namelen);


#endif

/*
 * pool.c - the downstream pool (see pool.h): the I/O around core/relay.h.
 *
 * Pooling is where peers went wrong (Haraka dropped its pool after leaks), so
 * the rules are few and strict: a connection is leased to one transaction at
 * a time; it returns to the pool only when the relay says it is clean (after
 * an end-of-data verdict, or after RSET answered 250); one that broke, timed
 * out, spoke out of turn, served downstream_max_messages or outlived
 * downstream_max_lifetime is closed, never reused. An idle connection keeps
 * a receive armed, so a server that closes it is noticed before the next
 * lease, not by the next message.
 *
 * Sends are gathered: commands and body bytes join the connection's send
 * chain during a loop turn and pool_flush() writes each chain once, so a
 * client's pipelined MAIL, RCPT..., DATA leaves in one write.
 */
#include "pool.h"

#include "lend.h"
#include "resolve.h"
#include "spooler.h"
#include "tls.h"
#include "worker.h"

#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define DS_IN_CAP 4096u     /* one receive: replies are short */
#define DS_IOV 16           /* send blocks per write */
#define BACKOFF_FIRST_MS 100u
#define BACKOFF_MAX_MS 2000u /* a restarted server is found within 2 s */
#define PROBE_MS 500u        /* how often a slow reader's progress is looked at */
#define PROBE_AFTER_CLOSE_MS 200u /* a server that closed: try it again this soon */
#define UNACKED_UNKNOWN (-1)
#define TLS_PLAIN_MS (300u * 1000u) /* may: after a failed handshake, plaintext this long */
#define DS_PLAIN_CAP 4096u          /* decrypted replies, per read */

enum phase { PH_CONNECTING = 1, PH_OPEN, PH_CLOSING };

typedef struct dsconn dsconn_t;

struct dsconn {
    uint32_t idx, gen;
    int fd;
    uint16_t inflight;
    uint8_t phase;
    bool recv_armed, sending, posted, leased;
    bool was_ready;          /* reached READY once: a later failure is not the server's set-up */
    bool hs;                 /* the TLS handshake is under way */
    bool plain_next;         /* may: its handshake failed, the next connections go in plaintext */
    tls_conn_t *tls;         /* after the server's 220 to STARTTLS: every byte is TLS */
    relay_t relay;
    relay_config_t rcfg;     /* the relay's, as the configuration was at its open */
    char helo[CONFIG_DOMAIN_MAX + 1];
    char tls_name[CONFIG_ADDR_MAX]; /* what the server's certificate must show */
    uint8_t tls_level;       /* enum config_ds_tls at its open */
    uint32_t conf_gen;       /* p->conf_gen at its open: older ones are retired */
    outq_t out;
    pool_owner_t owner;
    uint64_t born_ms;
    struct sockaddr_storage peer; /* where it connects: the address current at its open */
    socklen_t peerlen;
    bool unresolved;         /* the name had no address: its "connect" is a timeout that fails */
    const char *why;         /* why it is closing, for the log */
    timer_node_t timer;      /* no progress for downstream_timeout */
    int unacked;             /* bytes the kernel held for the server when last looked at;
                              * UNACKED_UNKNOWN: not looked at since our sends drained */
    uint64_t progress_at;    /* the last sign of life: a byte either way */
    dsconn_t *post_next;     /* in the pool's flush list */
    struct msghdr msg;
    struct iovec iov[DS_IOV];
    char in[DS_IN_CAP];
};

typedef struct waiter {
    pool_owner_t owner;
    uint64_t deadline;
    bool live;
} waiter_t;

struct pool {
    uint32_t conf_gen;       /* one more each time a reload changes what a connection is */
    uint32_t max_due;        /* replies a connection may owe: the largest recipient_limit seen, + 8 */
    dsconn_t **conn;         /* downstream_connections slots */
    uint32_t *gen;
    uint32_t nslots, nconn, nclosing;
    waiter_t *wq;            /* FIFO of owners waiting for a connection */
    uint32_t wq_head, wq_len, wq_cap;
    timer_node_t wq_timer;   /* the head waiter's deadline */
    timer_node_t probe;      /* while the server is unreachable: the next try */
    uint64_t backoff_until;
    uint32_t backoff_ms;
    dsconn_t *posted;        /* connections with bytes to send this turn */
    tls_session_t *sess;     /* the newest TLS session the server gave: the next handshake resumes it */
    uint64_t tls_plain_until; /* may: a handshake failed; connections until then skip STARTTLS */
};

static void conn_fail(worker_t *w, dsconn_t *c, enum relay_fail why);
static void close_conn(worker_t *w, dsconn_t *c, const char *why);
static void fail_waiters(worker_t *w, const smtp_reply_t *r, bool expired_only);
static void on_probe(worker_t *w, timer_node_t *t);
static void serve_queue(worker_t *w);
static void to_pool(worker_t *w, dsconn_t *c);

/* ---- set-up ---- */

int pool_init(worker_t *w, char *err, size_t errlen)
{
    const mx_config_t *cfg = w->cfg;
    if (!cfg->downstream[0])
        return 0;
    pool_t *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, errlen, "downstream: out of memory");
        return -1;
    }
    w->pool = p;
    /* The address is the resolver's (resolve.h), taken at each connect: a
     * name that does not resolve yet does not stop start-up. */
    p->max_due = cfg->recipient_limit + 8;
    p->nslots = cfg->downstream_connections;
    p->conn = calloc(p->nslots, sizeof *p->conn);
    p->gen = calloc(p->nslots, sizeof *p->gen);
    p->wq_cap = cfg->downstream_queue_limit ? cfg->downstream_queue_limit : 1;
    p->wq = calloc(p->wq_cap, sizeof *p->wq);
    if (!p->conn || !p->gen || !p->wq) {
        snprintf(err, errlen, "downstream: out of memory");
        return -1;
    }
    return 0;
}

static void conn_free(worker_t *w, dsconn_t *c)
{
    pool_t *p = w->pool;
    p->conn[c->idx] = NULL;
    p->gen[c->idx]++;
    p->nconn--;
    timer_stop(&w->timers, &c->timer);
    close(c->fd);
    tls_conn_free(c->tls);
    outq_clear(&c->out, &w->blocks);
    relay_free(&c->relay);
    free(c);
}

void pool_reconfigure(worker_t *w, const mx_config_t *before)
{
    pool_t *p = w->pool;
    const mx_config_t *cfg = w->cfg;
    if (!p)
        return;
    if (cfg->recipient_limit + 8 > p->max_due)
        p->max_due = cfg->recipient_limit + 8; /* never lower: older sessions may still send more */
    if (!strcmp(before->downstream, cfg->downstream) && before->downstream_protocol == cfg->downstream_protocol &&
        !strcmp(before->hostname, cfg->hostname) && before->recipient_limit <= cfg->recipient_limit &&
        before->downstream_tls == cfg->downstream_tls &&
        !strcmp(before->downstream_tls_ca_file, cfg->downstream_tls_ca_file) &&
        !strcmp(before->downstream_tls_name, cfg->downstream_tls_name))
        return;
    /* What a connection is has changed (server, protocol, the name it
     * greets with, how many replies it may owe): the idle ones close now,
     * leased ones when their transaction is done, and new ones open as the
     * new configuration says. A new server gets a fresh start. */
    p->conf_gen++;
    if (strcmp(before->downstream, cfg->downstream)) {
        p->backoff_ms = 0;
        p->backoff_until = 0;
    }
    /* A session of the old server, or of the old trust, resumes nothing. */
    tls_session_free(p->sess);
    p->sess = NULL;
    p->tls_plain_until = 0;
    for (uint32_t i = 0; i < p->nslots; i++) {
        dsconn_t *c = p->conn[i];
        if (c && c->phase == PH_OPEN && !c->leased && relay_ready(&c->relay))
            close_conn(w, c, "reload");
    }
    serve_queue(w);
}

void pool_destroy(worker_t *w)
{
    pool_t *p = w->pool;
    if (!p)
        return;
    for (uint32_t i = 0; i < p->nslots; i++)
        if (p->conn[i])
            conn_free(w, p->conn[i]);
    timer_stop(&w->timers, &p->probe);
    timer_stop(&w->timers, &p->wq_timer);
    tls_session_free(p->sess);
    free(p->conn); /* then the pool itself */
    free(p->gen);
    free(p->wq);
    free(p);
    w->pool = NULL;
}

/* ---- leases ---- */

static pool_lease_t lease_of(const dsconn_t *c)
{
    return (uint64_t)(c->gen & GEN_MASK) << 32 | (c->idx + 1);
}

static dsconn_t *leased(worker_t *w, pool_lease_t l)
{
    pool_t *p = w->pool;
    uint32_t idx = (uint32_t)l - 1;
    if (!p || !l || idx >= p->nslots)
        return NULL;
    dsconn_t *c = p->conn[idx];
    if (!c || (c->gen & GEN_MASK) != (uint32_t)(l >> 32) || !c->leased || c->phase != PH_OPEN)
        return NULL;
    return c;
}

static bool same_owner(const pool_owner_t *a, const pool_owner_t *b)
{
    return a->ops == b->ops && a->idx == b->idx && a->gen == b->gen && a->seq == b->seq;
}

static bool stale_lease(smtp_reply_t *refusal)
{
    *refusal = (smtp_reply_t){ 451, "4.4.1", SLICE_LIT("Error: downstream server unavailable, try again later"),
                               SMTP_R_PEER };
    return false;
}

/* ---- the send side ---- */

static void post(worker_t *w, dsconn_t *c)
{
    if (c->posted || c->phase != PH_OPEN)
        return;
    c->posted = true;
    c->post_next = w->pool->posted;
    w->pool->posted = c;
}

/* The relay's staged commands join the send chain. */
static void take_output(worker_t *w, dsconn_t *c)
{
    slice_t o = relay_output(&c->relay);
    if (!o.len)
        return;
    if (c->tls ? tls_write(c->tls, o.ptr, o.len, &c->out, &w->blocks) != 0
               : !outq_append(&c->out, &w->blocks, o.ptr, o.len)) {
        conn_fail(w, c, RELAY_FAIL_FULL);
        return;
    }
    relay_sent(&c->relay, o.len);
    post(w, c);
}

static void arm_timer(worker_t *w, dsconn_t *c);

static void send_now(worker_t *w, dsconn_t *c)
{
    if (c->sending || c->phase != PH_OPEN)
        return;
    int n = outq_lend(&c->out, c->iov, DS_IOV);
    if (n == 0)
        return;
    struct io_uring_sqe *sqe = worker_sqe(w);
    if (n == 1) { /* commands, a short body: the cheaper plain send */
        io_uring_prep_send(sqe, c->fd, c->iov[0].iov_base, c->iov[0].iov_len, MSG_NOSIGNAL);
    } else {
        memset(&c->msg, 0, sizeof c->msg);
        c->msg.msg_iov = c->iov;
        c->msg.msg_iovlen = (size_t)n;
        io_uring_prep_sendmsg(sqe, c->fd, &c->msg, MSG_NOSIGNAL);
    }
    io_uring_sqe_set_data64(sqe, ud_make(OP_DS_SEND, c->idx, c->gen));
    c->inflight++;
    c->sending = true;
    arm_timer(w, c);
}

/* The gauges /metrics shows, from the pool as it is. */
static void gauges(worker_t *w)
{
    pool_t *p = w->pool;
    uint64_t busy = 0, idle = 0;
    for (uint32_t i = 0; i < p->nslots; i++) {
        dsconn_t *c = p->conn[i];
        busy += c && c->leased;
        idle += c && !c->leased && c->phase == PH_OPEN && relay_ready(&c->relay);
    }
    m_set(&w->m.ds_open, p->nconn);
    m_set(&w->m.ds_busy, busy);
    m_set(&w->m.ds_idle, idle);
    m_set(&w->m.ds_queue, p->wq_len);
}

void pool_flush(worker_t *w)
{
    pool_t *p = w->pool;
    if (!p)
        return;
    gauges(w);
    while (p->posted) {
        dsconn_t *c = p->posted;
        p->posted = c->post_next;
        c->posted = false;
        send_now(w, c);
    }
}

/* ---- timers ---- */

/* Bytes the kernel still holds for the server (sent to it, not yet acked). */
static int unacked(const dsconn_t *c)
{
    int n = 0;
    return ioctl(c->fd, SIOCOUTQ, &n) == 0 ? n : 0;
}

static void on_timeout(worker_t *w, timer_node_t *t);

/*
 * The next look at the connection: when downstream_timeout has passed since
 * the last progress, or sooner while the kernel holds bytes for the server.
 * Our sends complete once the kernel has the bytes, so a server that reads
 * slowly shows its progress only in the kernel's queue, which the probe
 * reads (a send still out means the kernel could not take more: no probe is
 * needed to know the server reads nothing).
 */
static void arm_next(worker_t *w, dsconn_t *c)
{
    uint64_t when = c->progress_at + (uint64_t)w->cfg->downstream_timeout * 1000;
    if (!c->sending && c->unacked != 0 && when > w->now + PROBE_MS)
        when = w->now + PROBE_MS;
    timer_arm(&w->timers, &c->timer, when, on_timeout);
}

static void on_timeout(worker_t *w, timer_node_t *t)
{
    dsconn_t *c = TIMER_OWNER(t, dsconn_t, timer);
    if (c->phase == PH_OPEN && !c->sending && c->unacked != 0) {
        /* Looked at only when a reply is slow to come: a fast server costs
         * no system call here. */
        int n = unacked(c);
        if (c->unacked != UNACKED_UNKNOWN && n < c->unacked)
            c->progress_at = w->now;
        c->unacked = n;
    }
    if (w->now - c->progress_at < (uint64_t)w->cfg->downstream_timeout * 1000) {
        arm_next(w, c);
        return;
    }
    conn_fail(w, c, RELAY_FAIL_TIMEOUT); /* close_conn cancels a connect in flight */
}

/* downstream_timeout measures time without progress: armed while something
 * is owed (a reply, a send, the connect), moved on by every byte either way. */
static void arm_timer(worker_t *w, dsconn_t *c)
{
    if (c->phase == PH_CLOSING)
        return;
    if (c->phase == PH_CONNECTING || c->hs || relay_due(&c->relay) || c->out.bytes) {
        c->progress_at = w->now;
        arm_next(w, c);
    } else {
        timer_stop(&w->timers, &c->timer);
    }
}

/* ---- events from the relay ---- */

static void arm_recv(worker_t *w, dsconn_t *c)
{
    if (c->recv_armed || c->phase != PH_OPEN)
        return;
    struct io_uring_sqe *sqe = worker_sqe(w);
    LEND(c->in, sizeof c->in);
    io_uring_prep_recv(sqe, c->fd, c->in, sizeof c->in, 0);
    io_uring_sqe_set_data64(sqe, ud_make(OP_DS_RECV, c->idx, c->gen));
    c->inflight++;
    c->recv_armed = true;
}

static void close_conn(worker_t *w, dsconn_t *c, const char *why)
{
    if (c->phase == PH_CLOSING)
        return;
    bool quiet = (!c->leased && relay_ready(&c->relay)) || c->unresolved; /* the resolver logs that */
    /* retirement is routine; a reload's is an operator's act, worth a line */
    log_line(!quiet ? LOG_WARN : strcmp(why, "reload") ? LOG_DEBUG : LOG_INFO, "event=downstream_closed worker=%d conn=%u reason=%s messages=%u", w->id,
             c->idx, why, c->relay.messages);
    if (c->phase == PH_CONNECTING) {
        /* A connect to a silent address may take minutes to fail by itself. */
        struct io_uring_sqe *sqe = worker_sqe(w);
        io_uring_prep_cancel64(sqe, ud_make(OP_DS_CONNECT, c->idx, c->gen), 0);
        io_uring_sqe_set_data64(sqe, ud_make(OP_DS_CANCEL, c->idx, c->gen));
        c->inflight++;
    }
    /* Retired, closed by the server, or failed above TLS: the TLS session
     * itself is sound, so the next connection may resume it. */
    if (c->tls && !c->hs && c->relay.fail != RELAY_FAIL_TLS)
        tls_end_clean(c->tls);
    c->phase = PH_CLOSING;
    c->leased = false;
    c->why = why;
    timer_stop(&w->timers, &c->timer);
    shutdown(c->fd, SHUT_RDWR); /* ends the receive in flight */
    w->pool->nclosing++;
}

static void start_tls(worker_t *w, dsconn_t *c);

/* Give the owner what the relay has for it; act on what is the pool's. */
static void dispatch(worker_t *w, dsconn_t *c, const relay_event_t *ev)
{
    switch (ev->type) {
    case RELAY_EV_READY:
        w->pool->backoff_ms = 0;
        m_set(&w->m.ds_reachable, 1);
        c->was_ready = true;
        if (c->relay.cfg->starttls != RELAY_TLS_OFF && !c->relay.tls) {
            /* may: the server does not offer STARTTLS, or refused it */
            m_inc(&w->m.ds_tls[MDT_PLAINTEXT]);
            log_line(LOG_INFO, "event=downstream_tls worker=%d conn=%u result=plaintext reason=%s", w->id, c->idx,
                     c->relay.caps & DSR_CAP_STARTTLS ? "starttls_refused" : "not_offered");
        }
        to_pool(w, c);
        break;
    case RELAY_EV_STARTTLS:
        start_tls(w, c);
        break;
    case RELAY_EV_REPLY:
        if (c->relay.state != RELAY_DEAD) /* the server's own, not a failure's 451 */
            m_inc(&w->m.ds_replies[ev->reply.code / 100 % 6]);
        if (c->leased)
            c->owner.ops->event(w, &c->owner, ev);
        break;
    case RELAY_EV_LOST:
        if (c->leased) {
            pool_owner_t o = c->owner;
            c->leased = false; /* the lease is void: a release from the callback does nothing */
            o.ops->event(w, &o, ev);
        }
        break;
    case RELAY_EV_IDLE:
        to_pool(w, c);
        break;
    }
}

/*
 * A connection that failed before it was ever ready (the connect, the
 * greeting, EHLO, TLS): the server cannot be used now, so back off rather
 * than open the next one at once, and unless another connection is on its
 * way, the waiters hear it now and a probe finds out when it is back.
 * Except after a failed handshake under downstream_tls = may: the next
 * connection goes in plaintext, at once.
 */
static void setup_failed(worker_t *w, dsconn_t *c)
{
    pool_t *p = w->pool;
    if (w->draining || c->plain_next)
        return;
    p->backoff_ms = p->backoff_ms ? p->backoff_ms * 2 : BACKOFF_FIRST_MS;
    if (p->backoff_ms > BACKOFF_MAX_MS)
        p->backoff_ms = BACKOFF_MAX_MS;
    p->backoff_until = w->now + p->backoff_ms;
    bool other = false;
    for (uint32_t i = 0; i < p->nslots && !other; i++)
        other = p->conn[i] && p->conn[i] != c && p->conn[i]->phase != PH_CLOSING;
    if (other)
        return;
    m_set(&w->m.ds_reachable, 0);
    timer_arm(&w->timers, &p->probe, p->backoff_until, on_probe);
    static const smtp_reply_t down = { 451, "4.4.1", SLICE_INIT("Error: downstream server unavailable, try again later"),
                                       SMTP_R_PEER };
    fail_waiters(w, &down, false);
}

/* Feed the relay (bytes, or nothing after a failure) and route its events. */
static void run_relay(worker_t *w, dsconn_t *c, const char *in, size_t len)
{
    for (int guard = 0; guard < 100000; guard++) {
        size_t used = 0;
        relay_event_t ev;
        enum relay_status st = relay_feed(&c->relay, in, len, &used, &ev);
        in += used, len -= used;
        if (st == RELAY_EVENT) {
            dispatch(w, c, &ev);
            continue;
        }
        if (st == RELAY_CLOSE) {
            bool setup = !c->was_ready && c->phase != PH_CLOSING;
            close_conn(w, c, relay_fail_name((enum relay_fail)c->relay.fail));
            if (setup)
                setup_failed(w, c);
        }
        break;
    }
    if (c->phase == PH_OPEN) {
        take_output(w, c);
        arm_timer(w, c);
    }
}

/* ---- TLS ---- */

/* The handshake failed (or TLS broke later): say why, once. */
static void tls_failed(worker_t *w, dsconn_t *c, const char *why)
{
    pool_t *p = w->pool;
    const char *cert = c->tls ? tls_peer_unverified(c->tls) : NULL;
    c->plain_next = c->hs && c->tls_level == CONFIG_DS_TLS_MAY;
    if (c->hs)
        m_inc(&w->m.ds_tls[MDT_FAILED]);
    if (c->plain_next)
        p->tls_plain_until = w->now + TLS_PLAIN_MS;
    log_line(LOG_WARN, "event=downstream_tls_failed worker=%d conn=%u downstream=%s error=\"%s\"%s%s%s%s", w->id,
             c->idx, w->cfg->downstream, why, cert ? " certificate=\"" : "", cert ? cert : "", cert ? "\"" : "",
             c->plain_next ? " then=plaintext_300s" : "");
    conn_fail(w, c, RELAY_FAIL_TLS);
}

/* The server said 220 to STARTTLS: our ClientHello goes out. */
static void start_tls(worker_t *w, dsconn_t *c)
{
    tls_ctx_t *ctx = w->conf->ds_tls; /* the current generation's (a reload may have made a new one) */
    c->tls = ctx ? tls_conn_client(ctx, c->tls_name, c->tls_level == CONFIG_DS_TLS_VERIFY, w->pool->sess) : NULL;
    if (!c->tls) {
        tls_failed(w, c, ctx ? "out of memory" : "downstream_tls is off now");
        return;
    }
    c->hs = true;
    const char *in = NULL;
    size_t len = 0;
    if (tls_handshake(c->tls, &in, &len, &c->out, &w->blocks) == TLS_ERROR) {
        tls_failed(w, c, tls_error(c->tls));
        return;
    }
    post(w, c);
}

static void tls_done(worker_t *w, dsconn_t *c)
{
    c->hs = false;
    const char *cert = tls_peer_unverified(c->tls);
    bool resumed = tls_resumed(c->tls);
    m_inc(&w->m.ds_tls[cert ? MDT_UNVERIFIED : MDT_VERIFIED]);
    if (resumed)
        m_inc(&w->m.ds_tls_resumed);
    int alg = 0, bits = tls_bits(c->tls, &alg);
    log_line(LOG_INFO,
             "event=downstream_tls worker=%d conn=%u result=%s version=%s cipher=%s bits=%d resumed=%s%s%s%s", w->id,
             c->idx, cert ? "unverified" : "verified", tls_version(c->tls), tls_cipher(c->tls), bits,
             resumed ? "yes" : "no", cert ? " certificate=\"" : "", cert ? cert : "", cert ? "\"" : "");
    relay_tls_done(&c->relay); /* EHLO again, encrypted */
}

/* A session the server just gave (TLS 1.2: at the handshake's end; 1.3: a
 * ticket after it): the next connection's handshake resumes it. */
static void keep_session(worker_t *w, dsconn_t *c)
{
    tls_session_t *sess = tls_session_take(c->tls);
    if (sess) {
        tls_session_free(w->pool->sess);
        w->pool->sess = sess;
    }
}

/* Ciphertext from the server: the handshake, then replies for the relay. */
static void tls_in(worker_t *w, dsconn_t *c, const char *in, size_t len)
{
    char plain[DS_PLAIN_CAP];
    for (int guard = 0; guard < 100000 && c->phase == PH_OPEN; guard++) {
        size_t before = len;
        if (c->hs) {
            enum tls_status st = tls_handshake(c->tls, &in, &len, &c->out, &w->blocks);
            post(w, c);
            if (st == TLS_ERROR) {
                tls_failed(w, c, tls_error(c->tls));
                return;
            }
            if (st == TLS_AGAIN) {
                if (!len || len == before)
                    break;
                continue;
            }
            keep_session(w, c);
            tls_done(w, c);
            run_relay(w, c, NULL, 0); /* sends the EHLO */
            continue;
        }
        long n = tls_read(c->tls, &in, &len, plain, sizeof plain, &c->out, &w->blocks);
        keep_session(w, c);
        if (n > 0) {
            run_relay(w, c, plain, (size_t)n);
            continue;
        }
        if (n == 0) {
            if (!len || len == before)
                break;
            continue;
        }
        if (n == -TLS_CLOSED) {
            conn_fail(w, c, RELAY_FAIL_CLOSED);
            return;
        }
        tls_failed(w, c, tls_error(c->tls));
        return;
    }
    if (c->phase == PH_OPEN && c->out.bytes)
        post(w, c); /* a key update, an alert */
}

static void conn_fail(worker_t *w, dsconn_t *c, enum relay_fail why)
{
    if (c->phase == PH_CLOSING)
        return;
    if (c->leased)
        m_inc(&w->m.ds_failures);
    if (why == RELAY_FAIL_TIMEOUT)
        m_inc(&w->m.timeouts[MT_DOWNSTREAM]);
    /* The server closed its side, perhaps because it is going away: unless
     * another connection is still there, find out whether it comes back (for
     * readiness, and for a warm connection when the next client comes). */
    if ((why == RELAY_FAIL_CLOSED || why == RELAY_FAIL_RESET) && w->pool->nconn == 1 && !w->draining) {
        uint64_t at = w->now + PROBE_AFTER_CLOSE_MS;
        timer_arm(&w->timers, &w->pool->probe, at > w->pool->backoff_until ? at : w->pool->backoff_until, on_probe);
    }
    relay_fail(&c->relay, why);
    run_relay(w, c, NULL, 0);
}

/* A clean, unleased connection: retire it, or serve the queue with it. */
static void to_pool(worker_t *w, dsconn_t *c)
{
    const mx_config_t *cfg = w->cfg;
    const char *why = NULL;
    if (w->draining)
        why = "draining";
    else if (c->conf_gen != w->pool->conf_gen)
        why = "reload";
    else if (c->relay.messages >= cfg->downstream_max_messages)
        why = "max_messages";
    else if (w->now - c->born_ms > (uint64_t)cfg->downstream_max_lifetime * 1000)
        why = "max_lifetime";
    if (why) {
        close_conn(w, c, why);
        return;
    }
    arm_recv(w, c);
    arm_timer(w, c);
    serve_queue(w);
    if (!c->leased)
        spooler_pool_ready(w); /* the spool's deliveries may use it (acted on at the end of the turn) */
}

/* ---- the wait queue ---- */

static waiter_t *wq_at(pool_t *p, uint32_t i)
{
    return &p->wq[(p->wq_head + i) % p->wq_cap];
}

static void wq_pop(pool_t *p)
{
    p->wq_head = (p->wq_head + 1) % p->wq_cap;
    p->wq_len--;
}

static void on_queue_timeout(worker_t *w, timer_node_t *t);

/* Drop cancelled waiters at the head; arm the head's deadline. */
static void wq_settle(worker_t *w)
{
    pool_t *p = w->pool;
    while (p->wq_len && !wq_at(p, 0)->live)
        wq_pop(p);
    if (p->wq_len)
        timer_arm(&w->timers, &p->wq_timer, wq_at(p, 0)->deadline, on_queue_timeout);
    else
        timer_stop(&w->timers, &p->wq_timer);
}

static void fail_waiters(worker_t *w, const smtp_reply_t *r, bool expired_only)
{
    pool_t *p = w->pool;
    while (p->wq_len) {
        waiter_t *q = wq_at(p, 0);
        if (q->live && expired_only && q->deadline > w->now)
            break;
        pool_owner_t o = q->owner;
        bool live = q->live;
        wq_pop(p);
        if (live)
            o.ops->failed(w, &o, r);
    }
    wq_settle(w);
}

static void on_queue_timeout(worker_t *w, timer_node_t *t)
{
    (void)t;
    static const smtp_reply_t busy = { 451, "4.4.5", SLICE_INIT("Error: downstream busy, try again later"),
                                       SMTP_R_PEER };
    fail_waiters(w, &busy, true);
}

static void open_conn(worker_t *w);
static void on_probe(worker_t *w, timer_node_t *t);

static void lease_to(dsconn_t *c, const pool_owner_t *o)
{
    c->leased = true;
    c->owner = *o;
    relay_lease(&c->relay);
}

/* A connection became free, or a slot did: serve the longest waiter. */
static void serve_queue(worker_t *w)
{
    pool_t *p = w->pool;
    wq_settle(w);
    while (p->wq_len) {
        dsconn_t *c = NULL;
        for (uint32_t i = 0; i < p->nslots && !c; i++)
            if (p->conn[i] && p->conn[i]->phase == PH_OPEN && !p->conn[i]->leased &&
                relay_ready(&p->conn[i]->relay) && p->conn[i]->conf_gen == p->conf_gen)
                c = p->conn[i];
        if (!c) {
            /* One connection on its way per waiter, within the limit. */
            uint32_t coming = 0;
            for (uint32_t i = 0; i < p->nslots; i++)
                if (p->conn[i] && p->conn[i]->phase != PH_CLOSING && !p->conn[i]->leased &&
                    !relay_ready(&p->conn[i]->relay) && p->conn[i]->conf_gen == p->conf_gen)
                    coming++;
            if (coming < p->wq_len && p->nconn < p->nslots && p->backoff_until <= w->now)
                open_conn(w);
            return;
        }
        pool_owner_t o = wq_at(p, 0)->owner;
        wq_pop(p);
        wq_settle(w);
        lease_to(c, &o);
        o.ops->ready(w, &o, lease_of(c));
    }
}

/* ---- connections ---- */

/* Try the server again (readiness, and a warm pool for the next client). */
static void on_probe(worker_t *w, timer_node_t *t)
{
    (void)t;
    if (w->pool->nconn == 0 && !w->draining)
        open_conn(w);
}

void pool_start(worker_t *w)
{
    if (w->pool)
        open_conn(w); /* find out at once whether the server answers */
}

/* The name the server's certificate must show: downstream_tls_name, or the
 * host of downstream (a name or an address literal). */
static void tls_name(const mx_config_t *cfg, char *out, size_t cap)
{
    const char *d = cfg->downstream;
    if (cfg->downstream_tls_name[0]) {
        snprintf(out, cap, "%s", cfg->downstream_tls_name);
        return;
    }
    const char *end = d[0] == '[' ? strchr(d, ']') : strrchr(d, ':');
    if (d[0] == '[')
        d++;
    size_t n = end ? (size_t)(end - d) : strlen(d);
    snprintf(out, cap, "%.*s", (int)n, d);
}

static void open_conn(worker_t *w)
{
    pool_t *p = w->pool;
    uint32_t slot = 0;
    while (slot < p->nslots && p->conn[slot])
        slot++;
    if (slot == p->nslots)
        return;
    dsconn_t *c = calloc(1, sizeof *c);
    if (c && !resolve_get(w->resolver, &c->peer, &c->peerlen)) {
        c->unresolved = true; /* fails like a refused connect, below */
        c->peer.ss_family = AF_INET;
    }
    int fd = c ? socket(c->peer.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0) : -1;
    if (fd < 0) {
        free(c);
        log_line(LOG_ERROR, "event=downstream_socket_failed worker=%d error=\"%s\"", w->id, strerror(errno));
        return;
    }
    /* Commands and bodies go out as one write each, and a reply is awaited:
     * Nagle would hold the write for the peer's delayed ACK (40 ms a message). */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->idx = slot;
    c->gen = ++p->gen[slot] & GEN_MASK;
    c->born_ms = w->now;
    c->phase = PH_CONNECTING;
    const mx_config_t *cfg = w->cfg;
    snprintf(c->helo, sizeof c->helo, "%s", cfg->hostname);
    c->tls_level = cfg->downstream_tls;
    uint8_t starttls = cfg->downstream_tls == CONFIG_DS_TLS_OFF ? RELAY_TLS_OFF
                       : cfg->downstream_tls != CONFIG_DS_TLS_MAY ? RELAY_TLS_REQUIRE
                       : w->now < p->tls_plain_until           ? RELAY_TLS_OFF
                                                                : RELAY_TLS_MAY;
    tls_name(cfg, c->tls_name, sizeof c->tls_name);
    c->rcfg = (relay_config_t){ slice_make(c->helo, strlen(c->helo)), cfg->downstream_protocol == CONFIG_PROTO_LMTP,
                                p->max_due, starttls };
    c->conf_gen = p->conf_gen;
    relay_init(&c->relay, &c->rcfg);
    p->conn[slot] = c;
    p->nconn++;
    m_inc(&w->m.ds_connects);
    struct io_uring_sqe *sqe = worker_sqe(w);
    static struct __kernel_timespec now_ts; /* zero: completes at once with -ETIME */
    if (c->unresolved)
        io_uring_prep_timeout(sqe, &now_ts, 0, 0);
    else
        io_uring_prep_connect(sqe, fd, (struct sockaddr *)&c->peer, c->peerlen);
    io_uring_sqe_set_data64(sqe, ud_make(OP_DS_CONNECT, c->idx, c->gen));
    c->inflight++;
    arm_timer(w, c);
}

enum pool_acquire pool_acquire(worker_t *w, const pool_owner_t *o, pool_lease_t *lease, smtp_reply_t *refusal)
{
    pool_t *p = w->pool;
    const mx_config_t *cfg = w->cfg;
    if (!p)
        return stale_lease(refusal), POOL_REFUSED;
    for (uint32_t i = 0; i < p->nslots; i++) {
        dsconn_t *c = p->conn[i];
        if (!c || c->phase != PH_OPEN || c->leased || !relay_ready(&c->relay))
            continue;
        if (w->now - c->born_ms > (uint64_t)cfg->downstream_max_lifetime * 1000 || c->conf_gen != p->conf_gen) {
            close_conn(w, c, c->conf_gen != p->conf_gen ? "reload" : "max_lifetime");
            continue;
        }
        lease_to(c, o);
        *lease = lease_of(c);
        return POOL_GRANTED;
    }
    bool connecting = false;
    for (uint32_t i = 0; i < p->nslots && !connecting; i++)
        connecting = p->conn[i] && p->conn[i]->phase != PH_CLOSING && !p->conn[i]->leased;
    if (p->backoff_until > w->now && !connecting) {
        *refusal = (smtp_reply_t){ 451, "4.4.1", SLICE_LIT("Error: downstream server unavailable, try again later"),
                                   SMTP_R_PEER };
        return POOL_REFUSED;
    }
    if (p->wq_len >= p->wq_cap) {
        *refusal = (smtp_reply_t){ 451, "4.4.5", SLICE_LIT("Error: downstream busy, try again later"), SMTP_R_PEER };
        return POOL_REFUSED;
    }
    *wq_at(p, p->wq_len++) = (waiter_t){ *o, w->now + (uint64_t)cfg->downstream_queue_timeout * 1000, true };
    if (p->wq_len == 1)
        timer_arm(&w->timers, &p->wq_timer, wq_at(p, 0)->deadline, on_queue_timeout);
    /* serve_queue opens a connection if one is needed and allowed; the
     * owner hears back later, never from inside this call. */
    uint32_t coming = 0;
    for (uint32_t i = 0; i < p->nslots; i++)
        if (p->conn[i] && p->conn[i]->phase != PH_CLOSING && !p->conn[i]->leased)
            coming++;
    if (coming < p->wq_len && p->nconn < p->nslots && p->backoff_until <= w->now)
        open_conn(w);
    return POOL_QUEUED;
}

void pool_cancel(worker_t *w, const pool_owner_t *o)
{
    pool_t *p = w->pool;
    if (!p)
        return;
    for (uint32_t i = 0; i < p->wq_len; i++) {
        waiter_t *q = wq_at(p, i);
        if (q->live && same_owner(&q->owner, o))
            q->live = false;
    }
    wq_settle(w);
}

/* ---- the owner's commands ---- */

static bool after_command(worker_t *w, dsconn_t *c, bool ok)
{
    if (c->relay.state == RELAY_DEAD)
        run_relay(w, c, NULL, 0); /* the command failed the connection */
    else
        take_output(w, c);
    arm_timer(w, c);
    return ok;
}

bool pool_mail(worker_t *w, pool_lease_t l, uint32_t token, slice_t mailbox, const smtp_mail_params_t *p,
               smtp_reply_t *refusal)
{
    dsconn_t *c = leased(w, l);
    if (!c)
        return stale_lease(refusal);
    return after_command(w, c, relay_mail(&c->relay, token, mailbox, p, refusal));
}

bool pool_rcpt(worker_t *w, pool_lease_t l, uint32_t token, slice_t mailbox, smtp_reply_t *refusal)
{
    dsconn_t *c = leased(w, l);
    if (!c)
        return stale_lease(refusal);
    return after_command(w, c, relay_rcpt(&c->relay, token, mailbox, refusal));
}

bool pool_data(worker_t *w, pool_lease_t l, uint32_t token, smtp_reply_t *refusal)
{
    dsconn_t *c = leased(w, l);
    if (!c)
        return stale_lease(refusal);
    return after_command(w, c, relay_data(&c->relay, token, refusal));
}

bool pool_eod(worker_t *w, pool_lease_t l, uint32_t token, smtp_reply_t *refusal)
{
    dsconn_t *c = leased(w, l);
    if (!c)
        return stale_lease(refusal);
    return after_command(w, c, relay_eod(&c->relay, token, refusal));
}

bool pool_body(worker_t *w, pool_lease_t l, const char *p, size_t n)
{
    dsconn_t *c = leased(w, l);
    if (!c || !relay_in_body(&c->relay))
        return false;
    if (c->tls ? tls_write(c->tls, p, n, &c->out, &w->blocks) != 0 : !outq_append(&c->out, &w->blocks, p, n)) {
        conn_fail(w, c, RELAY_FAIL_FULL);
        return false;
    }
    post(w, c);
    return true;
}

size_t pool_room(worker_t *w, pool_lease_t l)
{
    dsconn_t *c = leased(w, l);
    if (!c)
        return SIZE_MAX;
    return c->out.bytes >= POOL_SEND_HIGH ? 0 : POOL_SEND_HIGH - c->out.bytes;
}

void pool_release(worker_t *w, pool_lease_t l)
{
    dsconn_t *c = leased(w, l);
    if (!c)
        return;
    c->leased = false;
    switch (relay_release(&c->relay)) {
    case RELAY_REUSE:
        to_pool(w, c);
        break;
    case RELAY_DRAINING:
        take_output(w, c);
        arm_timer(w, c);
        break;
    case RELAY_DISCARD:
        close_conn(w, c, c->relay.state == RELAY_DEAD   ? relay_fail_name((enum relay_fail)c->relay.fail)
                         : relay_in_body(&c->relay) ? "aborted_in_data"
                                                    : "reply_outstanding");
        break;
    }
}

/* ---- completions ---- */

void pool_cqe(worker_t *w, int op, uint32_t idx, uint32_t gen, struct io_uring_cqe *cqe)
{
    pool_t *p = w->pool;
    if (!p || idx >= p->nslots || !p->conn[idx] || (p->conn[idx]->gen & GEN_MASK) != gen)
        return;
    dsconn_t *c = p->conn[idx];
    int res = cqe->res;
    c->inflight--;
    switch (op) {
    case OP_DS_CONNECT:
        if (c->phase != PH_CONNECTING)
            break;
        if (res < 0) {
            /* unresolved: the resolver has said so once already */
            log_line(c->unresolved ? LOG_DEBUG : LOG_WARN,
                     "event=downstream_connect_failed worker=%d downstream=%s error=\"%s\"", w->id,
                     w->cfg->downstream, c->unresolved ? "the name does not resolve" : strerror(-res));
            m_inc(&w->m.ds_connect_failures);
            c->phase = PH_OPEN; /* so the failure takes the usual path: setup_failed() */
            conn_fail(w, c, RELAY_FAIL_CONNECT);
            break;
        }
        c->phase = PH_OPEN;
        relay_connected(&c->relay);
        arm_recv(w, c);
        arm_timer(w, c);
        break;
    case OP_DS_RECV:
        c->recv_armed = false;
        RECLAIM(c->in, sizeof c->in);
        if (c->phase != PH_OPEN)
            break;
        if (res <= 0) {
            conn_fail(w, c, res == 0 ? RELAY_FAIL_CLOSED : RELAY_FAIL_RESET);
            break;
        }
        if (c->tls)
            tls_in(w, c, c->in, (size_t)res);
        else
            run_relay(w, c, c->in, (size_t)res);
        arm_recv(w, c);
        break;
    case OP_DS_SEND: {
        c->sending = false;
        outq_sent(&c->out, &w->blocks, res > 0 ? (size_t)res : 0);
        if (c->phase != PH_OPEN)
            break;
        if (res < 0) {
            conn_fail(w, c, RELAY_FAIL_SEND);
            break;
        }
        if (c->out.bytes == 0)
            c->unacked = UNACKED_UNKNOWN; /* all in the kernel: from here on its queue shows progress */
        arm_timer(w, c); /* progress */
        send_now(w, c);
        if (c->leased && c->out.bytes < POOL_SEND_HIGH / 2 && c->owner.ops->writable)
            c->owner.ops->writable(w, &c->owner);
        break;
    }
    default:
        break;
    }
}

void pool_reap(worker_t *w)
{
    pool_t *p = w->pool;
    if (!p || !p->nclosing)
        return;
    for (uint32_t i = 0; i < p->nslots; i++) {
        dsconn_t *c = p->conn[i];
        if (c && c->phase == PH_CLOSING && c->inflight == 0) {
            p->nclosing--;
            conn_free(w, c);
        }
    }
    serve_queue(w); /* a slot is free */
}

bool pool_drain(worker_t *w)
{
    pool_t *p = w->pool;
    if (!p)
        return true;
    for (uint32_t i = 0; i < p->nslots; i++) {
        dsconn_t *c = p->conn[i];
        if (c && c->phase != PH_CLOSING && !c->leased && relay_due(&c->relay) == 0)
            close_conn(w, c, "draining");
    }
    return p->nconn == 0;
}

void pool_close_all(worker_t *w)
{
    /* Failed, not just closed: what their owners still wait for is answered. */
    for (uint32_t i = 0; w->pool && i < w->pool->nslots; i++)
        if (w->pool->conn[i])
            conn_fail(w, w->pool->conn[i], RELAY_FAIL_TIMEOUT);
}

/*
 * session.c - one client connection: the bridge between the io_uring
 * completions and the I/O-free engine (core/smtp.h), and the holder of the
 * session's transaction (tx.h).
 *
 * Received bytes stay in the provided buffer they arrived in: the session
 * feeds them to the engine in place and gives each buffer back to the ring
 * once the engine has consumed it. While the engine waits for verdicts the
 * unread rest is held, and past HELD_CANCEL buffers the multishot receive is
 * cancelled, so a pipelining client cannot hoard the worker's buffers.
 *
 * Replies are written by the engine straight into the session's send chain
 * (outq.h): the engine's output window is the chain's unlent tail block, set
 * up around every engine call (engine_begin/engine_end), so each session's
 * replies land only in its own chain and nothing in flight is ever touched.
 * The chain is sent block by block; a session stops reading while its client
 * leaves more than SEND_HIGH bytes of replies unread.
 *
 * Timers measure what the RFC means: a command must be complete within
 * command_timeout of the moment the session started waiting for it (a slow
 * drip of bytes does not restart the clock); the body must keep up
 * data_min_rate and never stall for data_timeout; while the session waits
 * for its own peers (the downstream, SPF) or holds the client back for the
 * downstream, the client's clock does not run (the peers' timers do).
 */
#include "session.h"

#include "dnsbl.h"
#include "lend.h"
#include "proxy.h"
#include "rate.h"
#include "tls.h"
#include "tx.h"
#include "worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define HELD_INLINE 4        /* held buffers kept in the session itself */
#define HELD_CANCEL 3        /* past this many held buffers, reading stops */
#define SEND_HIGH 65536u     /* unsent replies past which a session stops reading */
#define FIRST_SLOTS 1024u    /* session slots a worker starts with */
#define HELO_MAX 255u        /* HELO name octets kept */
#define LINGER_MAX_S 10u     /* a closing session's last replies may take this long to leave */
#define LINGER_DRAIN_S 1u    /* ... and this long once drain_timeout has passed */
#define TLS_PLAIN_CAP 16384u /* decrypted input at a time: one TLS record's plaintext */

enum sflag {
    SF_CLOSING = 1 << 0,   /* shut down; freed when nothing is in flight */
    SF_RECV = 1 << 1,      /* a multishot receive is armed */
    SF_SENDING = 1 << 2,   /* a send is in flight */
    SF_CANCELLED = 1 << 3, /* we cancelled the receive for backpressure */
    SF_QUIT = 1 << 4,      /* close once the replies are sent */
    SF_STARVED = 1 << 5,   /* the receive ended on ENOBUFS */
    SF_POSTED = 1 << 6,    /* in the run list */
    SF_PARTIAL = 1 << 7,   /* a command line has started arriving */
    SF_ENGINE = 1 << 8,    /* the engine's output window is open */
    SF_EOF = 1 << 9,       /* the client closed its side */
    SF_DS_BLOCKED = 1 << 10, /* reading stopped until the downstream takes the body */
    SF_IN_DATA = 1 << 11,  /* the engine is in the body: the data clock runs */
    SF_WAITING = 1 << 12,  /* replies are owed by our peers: no client clock */
    SF_PROXY = 1 << 13,    /* reading the PROXY header: no greeting yet */
    SF_PER_IP = 1 << 14,   /* counted in limits->per_ip (once the address is known) */
    SF_NO_PROXY = 1 << 15, /* an untrusted source on a PROXY listener: a header is refused */
    SF_STARTTLS = 1 << 16, /* STARTTLS accepted in this feed: TLS begins after it */
    SF_TLS = 1 << 17,      /* the socket carries TLS: input goes to OpenSSL, replies through pout */
    SF_TLS_HS = 1 << 18,   /* ... and the handshake is not done */
    SF_TLS_IP = 1 << 19,   /* the handshake counts once more in limits->per_ip */
    SF_DNSBL_WAIT = 1 << 20, /* the greeting waits for the DNSBL lookups (dnsbl_stage = greeting) */
    SF_RATE_CONN = 1 << 21,  /* the connection was over rate_connections (its token taken once) */
    SF_FLEET_WAIT = 1 << 22, /* the greeting waits for the fleet's rate verdict from Redis (fleet.h) */
};

enum tkind { T_NONE = 0, T_PROXY, T_GREET, T_COMMAND, T_DATA, T_LINGER, T_TLS };

_Static_assert(PROXY_ERR_V2_TLV + 1 == MPE_TIMEOUT, "metrics' proxy errors follow proxy_err_t");

typedef struct held {
    uint16_t bid, off, len;
} held_t;

typedef struct session session_t;

struct session {
    uint32_t idx, gen;
    int fd;
    uint16_t inflight;
    uint32_t flags;
    uint8_t tkind;         /* what the timer is counting */
    uint8_t family;
    uint16_t port;
    uint16_t nheld, held_cap;
    held_t *held;
    held_t held_inline[HELD_INLINE];
    uint8_t addr[16];
    char ip[INET6_ADDRSTRLEN];
    smtp_t smtp;
    smtp_out_t view;       /* the engine's window into the send chain */
    outq_t out;
    timer_node_t timer;
    uint64_t clock;        /* the command clock's start */
    uint64_t data_deadline, blocked_since, last_byte;
    char *helo;
    uint16_t helo_len;
    uint64_t id, start_ms;
    uint32_t txn, rcpts_conn;
    tx_t *tx;
    conf_t *conf;          /* the configuration it began with, to its end (conf.h) */
    tls_conn_t *tls;       /* after STARTTLS */
    outq_t pout;           /* TLS: the engine's replies before they are encrypted into out */
    char *plain;           /* TLS: decrypted input the engine has not taken: in the worker's
                            * w->tls_plain while the session runs, in a block of its own
                            * (just the rest) when it stops with some left; NULL when none */
    uint32_t plain_off, plain_len;
    uint64_t tls_start;    /* when the handshake began */
    proxy_t *proxy;        /* while SF_PROXY */
    const char *reason;    /* how it ended, for the disconnect line */
    dnsbl_state_t dnsbl;   /* the lookups started at connect (dnsbl_client.h) */
    uint64_t dnsbl_req;    /* while they run */
    uint8_t dnsbl_unanswered; /* lists that had not answered by dnsbl_timeout */
    bool dnsbl_cached;     /* the pass cache answered: nothing was asked */
    uint8_t violations_seen; /* the engine's SMTP_V_* already counted and logged */
    uint32_t conn_total, conn_per_ip; /* at admission: the connect stage may run again */
    session_t *post_next;
    session_t *reap_next;
};

struct sessions {
    session_t **slot;
    uint32_t *gen;
    uint32_t nslots, count;
    uint32_t *free;
    uint32_t nfree;
    session_t *posted, *posted_tail;
    session_t *reap;
    uint32_t nstarved;
};

static void close_session(worker_t *w, session_t *s, const char *why);
static int client_addr(const session_t *s, const uint8_t **a);
static void post(worker_t *w, session_t *s);
static void proxy_read(worker_t *w, session_t *s);
static bool proxy_refused_here(worker_t *w, session_t *s);
static void proxy_refuse(worker_t *w, session_t *s, unsigned kind, const char *error, const char *why);

/* ---- slots ---- */

int sessions_init(worker_t *w, char *err, size_t errlen)
{
    w->sessions = calloc(1, sizeof *w->sessions);
    if (!w->sessions) {
        snprintf(err, errlen, "worker %d: out of memory", w->id);
        return -1;
    }
    return 0;
}

static session_t *session_get(worker_t *w, uint32_t idx, uint32_t gen)
{
    sessions_t *ss = w->sessions;
    if (idx >= ss->nslots || !ss->slot[idx] || (ss->gen[idx] & GEN_MASK) != gen)
        return NULL;
    return ss->slot[idx];
}

static int slot_alloc(worker_t *w)
{
    sessions_t *ss = w->sessions;
    if (ss->nfree)
        return (int)ss->free[--ss->nfree];
    uint32_t n = ss->nslots ? ss->nslots * 2 : FIRST_SLOTS;
    session_t **ns = realloc(ss->slot, n * sizeof *ns);
    if (!ns)
        return -1;
    ss->slot = ns;
    uint32_t *ng = realloc(ss->gen, n * sizeof *ng);
    if (!ng)
        return -1;
    ss->gen = ng;
    uint32_t *nf = realloc(ss->free, n * sizeof *nf);
    if (!nf)
        return -1;
    ss->free = nf;
    for (uint32_t i = ss->nslots; i < n; i++) {
        ss->slot[i] = NULL;
        ss->gen[i] = 0;
    }
    for (uint32_t i = n; i > ss->nslots + 1; i--)
        ss->free[ss->nfree++] = i - 1;
    uint32_t slot = ss->nslots;
    ss->nslots = n;
    return (int)slot;
}

static uint16_t ip_slot(const session_t *s)
{
    uint32_t h = 2166136261u;
    for (int i = 0; i < 16; i++)
        h = (h ^ s->addr[i]) * 16777619u;
    return (uint16_t)(h ^ (h >> 16));
}

/* ---- the engine's output window ---- */

/* Where the engine writes: the socket's queue, or in TLS the plaintext
 * queue that is encrypted into it. */
static outq_t *engine_q(session_t *s)
{
    return (s->flags & SF_TLS) ? &s->pout : &s->out;
}

static void engine_begin(worker_t *w, session_t *s)
{
    size_t room = 0;
    char *p = outq_reserve(engine_q(s), &w->blocks, SMTP_OUT_MIN, &room);
    s->view = (smtp_out_t){ .buf = p, .len = 0, .cap = p ? room : 0 };
    s->flags |= SF_ENGINE;
}

/* The replies the engine wrote in this window, for the metrics. */
static void count_replies(worker_t *w, session_t *s)
{
    for (int c = 2; c < 6; c++)
        if (s->view.replies[c])
            m_add(&w->m.replies[c], s->view.replies[c]);
}

static void engine_end(worker_t *w, session_t *s)
{
    /* Replies that waited for room go into fresh blocks. */
    for (int guard = 0; guard < 1024 && s->view.buf && smtp_drain(&s->smtp); guard++) {
        count_replies(w, s);
        outq_commit(engine_q(s), &w->blocks, s->view.len);
        engine_begin(w, s);
    }
    count_replies(w, s);
    if (s->view.buf)
        outq_commit(engine_q(s), &w->blocks, s->view.len);
    s->view = (smtp_out_t){ .buf = NULL, .len = 0, .cap = 0 };
    s->flags &= (uint32_t)~SF_ENGINE;
}

/* A new window when the engine filled this one (SMTP_FULL). */
static void engine_more(worker_t *w, session_t *s)
{
    count_replies(w, s);
    if (s->view.buf)
        outq_commit(engine_q(s), &w->blocks, s->view.len);
    engine_begin(w, s);
}

/* ---- sending and receiving ---- */

/* TLS: the engine's replies encrypted into the socket's queue, and our
 * close_notify after the last of them. */
static bool tls_seal(worker_t *w, session_t *s)
{
    const char *p;
    size_t n;
    while ((n = outq_peek(&s->pout, &p))) {
        if (tls_write(s->tls, p, n, &s->out, &w->blocks)) {
            log_line(LOG_WARN, "event=tls_error session=%016llx error=\"%s\"", (unsigned long long)s->id,
                     tls_error(s->tls));
            close_session(w, s, "tls_error");
            return false;
        }
        outq_drop(&s->pout, &w->blocks, n);
    }
    if (s->flags & SF_QUIT)
        tls_shutdown(s->tls, &s->out, &w->blocks);
    return true;
}

static void send_out(worker_t *w, session_t *s)
{
    if (s->flags & (SF_CLOSING | SF_ENGINE))
        return;
    if ((s->flags & SF_TLS) && !(s->flags & SF_TLS_HS) && !tls_seal(w, s))
        return;
    if (s->flags & SF_SENDING)
        return;
    struct iovec iov;
    if (outq_lend(&s->out, &iov, 1) == 0)
        return;
    struct io_uring_sqe *sqe = worker_sqe(w);
    io_uring_prep_send(sqe, s->fd, iov.iov_base, iov.iov_len, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, ud_make(OP_SEND, s->idx, s->gen));
    s->inflight++;
    s->flags |= SF_SENDING;
}

static void arm_recv(worker_t *w, session_t *s)
{
    struct io_uring_sqe *sqe = worker_sqe(w);
    io_uring_prep_recv_multishot(sqe, s->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BGID;
    io_uring_sqe_set_data64(sqe, ud_make(OP_RECV, s->idx, s->gen));
    s->inflight++;
    s->flags |= SF_RECV;
    s->flags &= (uint32_t)~SF_CANCELLED;
}

static void cancel_recv(worker_t *w, session_t *s)
{
    struct io_uring_sqe *sqe = worker_sqe(w);
    io_uring_prep_cancel64(sqe, ud_make(OP_RECV, s->idx, s->gen), 0);
    io_uring_sqe_set_data64(sqe, ud_make(OP_CANCEL, s->idx, s->gen));
    s->inflight++;
    s->flags |= SF_CANCELLED;
}

/* Read on, or stop reading for backpressure. */
static void recv_policy(worker_t *w, session_t *s)
{
    if (s->flags & (SF_CLOSING | SF_QUIT | SF_EOF))
        return;
    bool blocked = s->out.bytes + s->pout.bytes > SEND_HIGH || s->nheld >= HELD_CANCEL || (s->flags & SF_DS_BLOCKED);
    if ((s->flags & SF_RECV) && blocked && !(s->flags & SF_CANCELLED)) {
        cancel_recv(w, s);
        if (s->out.bytes > SEND_HIGH)
            m_inc(&w->m.backpressure[MB_CLIENT_SLOW]);
        else if (s->nheld >= HELD_CANCEL)
            m_inc(&w->m.backpressure[MB_HELD_BUFFERS]);
    }
    else if (!(s->flags & SF_RECV) && !blocked && !(s->flags & SF_STARVED))
        arm_recv(w, s);
}

static void held_shrink(session_t *s)
{
    if (s->nheld == 0 && s->held != s->held_inline) {
        free(s->held);
        s->held = s->held_inline;
        s->held_cap = HELD_INLINE;
    }
}

static bool held_push(session_t *s, held_t h)
{
    if (s->nheld == s->held_cap) {
        uint16_t cap = (uint16_t)(s->held_cap * 2);
        held_t *n = malloc(cap * sizeof *n);
        if (!n)
            return false;
        memcpy(n, s->held, s->nheld * sizeof *n);
        if (s->held != s->held_inline)
            free(s->held);
        s->held = n;
        s->held_cap = cap;
    }
    s->held[s->nheld++] = h;
    return true;
}

static void held_drop_first(worker_t *w, session_t *s)
{
    buf_release(w, s->held[0].bid);
    memmove(&s->held[0], &s->held[1], (size_t)(--s->nheld) * sizeof s->held[0]);
    held_shrink(s);
}

/* ---- timers ---- */

static void on_timer(worker_t *w, timer_node_t *t);

static void arm(worker_t *w, session_t *s, enum tkind k, uint64_t deadline)
{
    s->tkind = (uint8_t)k;
    timer_arm(&w->timers, &s->timer, deadline, on_timer);
}

/* Which clock runs now, and when it runs out. */
static void set_timer(worker_t *w, session_t *s)
{
    const mx_config_t *cfg = &s->conf->cfg;
    if (s->flags & SF_CLOSING)
        return;
    if (s->flags & SF_QUIT) {
        if (s->tkind != T_LINGER) {
            uint32_t linger = cfg->command_timeout < LINGER_MAX_S ? cfg->command_timeout : LINGER_MAX_S;
            if (w->draining && w->now >= w->drain_deadline)
                linger = LINGER_DRAIN_S; /* the drain's time is up */
            arm(w, s, T_LINGER, w->now + (uint64_t)linger * 1000);
        }
        return;
    }
    if (s->tkind == T_GREET)
        return;
    if (s->flags & SF_TLS_HS) {
        if (s->tkind != T_TLS)
            arm(w, s, T_TLS, s->tls_start + (uint64_t)cfg->tls_handshake_timeout * 1000);
        return;
    }
    bool waiting = smtp_open(&s->smtp) != 0 || (s->tx && tx_waiting(s->tx));
    if (s->smtp.state == SMTP_S_DATA && !waiting) {
        if (!(s->flags & SF_IN_DATA)) {
            s->flags |= SF_IN_DATA;
            s->data_deadline = w->now + (uint64_t)cfg->data_timeout * 1000;
            s->last_byte = w->now;
        }
        if (s->flags & SF_DS_BLOCKED) {
            /* Held back for the downstream: not the client's time. */
            timer_stop(&w->timers, &s->timer);
            s->tkind = T_NONE;
            return;
        }
        arm(w, s, T_DATA, s->data_deadline);
        return;
    }
    s->flags &= (uint32_t)~SF_IN_DATA;
    if (waiting) {
        s->flags |= SF_WAITING;
        timer_stop(&w->timers, &s->timer);
        s->tkind = T_NONE;
        return;
    }
    if (s->flags & SF_WAITING) {
        s->flags &= (uint32_t)~SF_WAITING;
        s->clock = w->now; /* the client's turn starts with our replies */
    }
    arm(w, s, T_COMMAND, s->clock + (uint64_t)cfg->command_timeout * 1000);
}

/* Reading stops until the downstream takes the body; the client's data
 * clock stops with it and resumes where it was. */
static void ds_block(worker_t *w, session_t *s)
{
    if (s->flags & SF_DS_BLOCKED)
        return;
    s->flags |= SF_DS_BLOCKED;
    s->blocked_since = w->now;
    m_inc(&w->m.backpressure[MB_DOWNSTREAM_SLOW]);
}

static void ds_unblock(worker_t *w, session_t *s)
{
    if (!(s->flags & SF_DS_BLOCKED))
        return;
    s->flags &= (uint32_t)~SF_DS_BLOCKED;
    s->data_deadline += w->now - s->blocked_since;
}

/* Body bytes earn time at data_min_rate, up to data_timeout ahead. */
static void data_credit(worker_t *w, session_t *s, size_t n)
{
    const mx_config_t *cfg = &s->conf->cfg;
    uint64_t cap = w->now + (uint64_t)cfg->data_timeout * 1000;
    s->last_byte = w->now;
    if (!cfg->data_min_rate) {
        s->data_deadline = cap;
        return;
    }
    s->data_deadline += (uint64_t)n * 1000 / cfg->data_min_rate;
    if (s->data_deadline > cap)
        s->data_deadline = cap;
}

/* ---- transactions ---- */

static void end_tx(worker_t *w, session_t *s, enum tx_end how)
{
    (void)w;
    if (!s->tx)
        return;
    tx_t *t = s->tx;
    s->tx = NULL;
    tx_end(t, how);
}

static void end_tx_if_over(worker_t *w, session_t *s)
{
    enum tx_end how;
    if (s->tx && (how = (enum tx_end)tx_over(s->tx)))
        end_tx(w, s, how);
}

static enum tx_end end_of(const char *why)
{
    if (!strcmp(why, "client_closed"))
        return TXE_CLIENT_CLOSED;
    if (!strcmp(why, "command_timeout") || !strcmp(why, "data_timeout") || !strcmp(why, "data_rate"))
        return TXE_TIMEOUT;
    if (!strcmp(why, "drain"))
        return TXE_DRAIN;
    if (!strcmp(why, "quit"))
        return TXE_QUIT;
    return TXE_ERROR;
}

static tx_env_t env_of(worker_t *w, session_t *s)
{
    return (tx_env_t){ w,
                       &s->conf->cfg,
                       &s->conf->chain,
                       &s->smtp,
                       &session_pool_ops,
                       &session_spool_ops,
                       s->idx,
                       s->gen,
                       s->id,
                       s->txn,
                       s->family,
                       s->addr,
                       s->port,
                       s->ip,
                       slice_make(s->helo ? s->helo : "", s->helo_len),
                       s->smtp.esmtp,
                       (s->flags & SF_TLS) ? s->tls : NULL,
                       s->dnsbl.status ? &s->dnsbl : NULL };
}

/* Close with a reply once it is sent (the engine writes it). */
static void quit_with(worker_t *w, session_t *s, int code, const char *esc, const char *text, const char *why)
{
    bool open = s->flags & SF_ENGINE;
    if (!open)
        engine_begin(w, s);
    smtp_close(&s->smtp, code, esc, text);
    if (!open)
        engine_end(w, s);
    if (!s->reason)
        s->reason = why;
    s->flags |= SF_QUIT;
    post(w, s);
}

/* What the filters see of the session outside a transaction. */
static void facts_of(worker_t *w, const session_t *s, filter_facts_t *fx)
{
    (void)w;
    memset(fx, 0, sizeof *fx);
    fx->cfg = &s->conf->cfg;
    fx->family = s->family;
    fx->addr = s->addr;
    fx->helo = slice_make(s->helo ? s->helo : "", s->helo_len);
    fx->messages = s->txn;
    fx->rcpts = s->rcpts_conn;
    fx->dnsbl = s->dnsbl.status ? &s->dnsbl : NULL;
}

static void on_helo(worker_t *w, session_t *s, const smtp_event_t *ev)
{
    end_tx(w, s, TXE_HELO);
    size_t n = ev->arg.len > HELO_MAX ? HELO_MAX : ev->arg.len;
    char *h = realloc(s->helo, n + 1);
    if (h) {
        memcpy(h, ev->arg.ptr, n);
        h[n] = '\0';
        s->helo = h;
        s->helo_len = (uint16_t)n;
    }
    filter_facts_t fx;
    filter_verdict_t v;
    facts_of(w, s, &fx);
    enum filter_act a = filter_run(&s->conf->chain, FS_HELO, &fx, &v);
    if (a == FA_REJECT || a == FA_TEMPFAIL) {
        smtp_reply_t r = { v.code, v.esc, slice_make(v.text, strlen(v.text)), 0 };
        smtp_verdict(&s->smtp, ev->slot, &r);
    } else {
        smtp_accept(&s->smtp, ev->slot);
    }
}

static void on_mail(worker_t *w, session_t *s, const smtp_event_t *ev)
{
    if (w->draining) {
        quit_with(w, s, 421, "4.3.2", "Service shutting down, try again later", "drain");
        return;
    }
    end_tx(w, s, TXE_ERROR); /* none is left by now; never two at once */
    s->txn++;
    tx_env_t env = env_of(w, s);
    s->tx = tx_begin(&env, ev);
}

/* STARTTLS: one more against the address's connection limit while the
 * handshake runs; false when that is within max_connections_per_ip. */
static bool tls_over_limit(worker_t *w, session_t *s)
{
    uint32_t max = s->conf->cfg.max_connections_per_ip;
    if (!max || !(s->flags & SF_PER_IP))
        return false;
    int n = atomic_fetch_add(&w->limits->per_ip[ip_slot(s)], 1) + 1;
    if ((uint32_t)n > max) {
        atomic_fetch_sub(&w->limits->per_ip[ip_slot(s)], 1);
        return true;
    }
    s->flags |= SF_TLS_IP;
    return false;
}

static void on_event(worker_t *w, session_t *s, const smtp_event_t *ev)
{
    if (ev->type != SMTP_EV_BODY)
        end_tx_if_over(w, s);
    static const smtp_reply_t lost = { 451, "4.3.0", SLICE_INIT("Error: transaction lost, try again later"),
                                       SMTP_R_PEER };
    bool in_tx = ev->type == SMTP_EV_RCPT || ev->type == SMTP_EV_DATA || ev->type == SMTP_EV_DATA_END ||
                 ev->type == SMTP_EV_BODY || ev->type == SMTP_EV_DATA_REJECTED;
    if (in_tx && !s->tx) {
        /* The engine asks these only inside a transaction, which only a
         * failed allocation at MAIL can have left without one. */
        if (smtp_ev_wants_verdict(ev->type))
            smtp_verdict(&s->smtp, ev->slot, &lost);
        return;
    }
    switch (ev->type) {
    case SMTP_EV_HELO:
    case SMTP_EV_EHLO:
        on_helo(w, s, ev);
        break;
    case SMTP_EV_MAIL:
        on_mail(w, s, ev);
        break;
    case SMTP_EV_RCPT:
        tx_rcpt(s->tx, ev, ++s->rcpts_conn);
        break;
    case SMTP_EV_DATA:
        tx_data(s->tx, ev);
        break;
    case SMTP_EV_BODY:
        data_credit(w, s, ev->arg.len);
        tx_body(s->tx, ev->arg);
        break;
    case SMTP_EV_DATA_END:
        tx_data_end(s->tx, ev);
        break;
    case SMTP_EV_DATA_REJECTED:
        tx_body_rejected(s->tx, ev);
        break;
    case SMTP_EV_RSET:
        end_tx(w, s, TXE_RSET);
        break;
    case SMTP_EV_STARTTLS:
        /* The engine offers STARTTLS only where this generation has a TLS
         * context; TLS begins once this feed's bytes are used (process). */
        if (s->conf->tls && !tls_over_limit(w, s)) {
            smtp_accept(&s->smtp, ev->slot);
            s->flags |= SF_STARTTLS;
        } else if (s->conf->tls) {
            /* A handshake costs far more CPU than a plaintext session: it
             * counts twice against its address's limit while it runs, so
             * one address cannot keep a worker busy with handshakes. */
            static const smtp_reply_t busy = { 454, "4.7.0",
                                               SLICE_INIT("Error: too many connections from your address, try "
                                                          "STARTTLS later"),
                                               0 };
            m_inc(&w->m.tls_handshakes[MTLS_REFUSED]);
            smtp_verdict(&s->smtp, ev->slot, &busy);
        } else {
            static const smtp_reply_t no = { 454, "4.7.0", SLICE_INIT("TLS not available due to local problem"),
                                             SMTP_R_PEER };
            smtp_verdict(&s->smtp, ev->slot, &no);
        }
        break;
    case SMTP_EV_QUIT:
        end_tx(w, s, TXE_QUIT);
        if (!s->reason)
            s->reason = "quit";
        s->flags |= SF_QUIT;
        break;
    case SMTP_EV_EARLY_TALK:
    case SMTP_EV_ERROR:
        if (ev->err == SMTP_ERR_JUNK || ev->err == SMTP_ERR_TOO_MANY || ev->type == SMTP_EV_EARLY_TALK ||
            (ev->err == SMTP_ERR_PROTOCOL && s->smtp.state == SMTP_S_CLOSED)) {
            s->reason = ev->type == SMTP_EV_EARLY_TALK ? "early_talker" : smtp_err_name(ev->err);
            if (ev->type == SMTP_EV_EARLY_TALK)
                m_inc(&w->m.refused[MR_EARLY_TALKER]);
            end_tx(w, s, TXE_ERROR);
        }
        break;
    default:
        break;
    }
    if (ev->type != SMTP_EV_BODY)
        end_tx_if_over(w, s);
}

/* ---- TLS ---- */

/* n octets of the first held buffer were used. */
static void held_used(worker_t *w, session_t *s, size_t n)
{
    if (!n)
        return;
    held_t *h = &s->held[0];
    h->off = (uint16_t)(h->off + n);
    h->len = (uint16_t)(h->len - n);
    if (h->len == 0)
        held_drop_first(w, s);
}

static void tls_failed(worker_t *w, session_t *s, const char *why)
{
    m_inc(&w->m.tls_handshakes[MTLS_FAILED]);
    logbuf_t b;
    lb_init(&b, "tls_failed");
    lb_hex(&b, "session", s->id);
    lb_cstr(&b, "client", s->ip);
    lb_cstr(&b, "error", why);
    log_emit(LOG_INFO, &b);
    close_session(w, s, "tls_failed"); /* an alert may be in out: closing does not wait for it */
}

/* The handshake is done: RFC 3207 4.2, the session starts over. */
static void tls_started(worker_t *w, session_t *s)
{
    if (s->flags & SF_TLS_IP)
        atomic_fetch_sub(&w->limits->per_ip[ip_slot(s)], 1);
    s->flags &= (uint32_t)~(SF_TLS_HS | SF_TLS_IP);
    smtp_tls_started(&s->smtp);
    free(s->helo);
    s->helo = NULL;
    s->helo_len = 0;
    s->clock = w->now;
    m_inc(&w->m.tls_handshakes[MTLS_OK]);
    bool resumed = tls_resumed(s->tls);
    if (resumed)
        m_inc(&w->m.tls_resumed);
    int alg = 0, bits = tls_bits(s->tls, &alg);
    log_line(LOG_DEBUG, "event=tls session=%016llx client=%s version=%s cipher=%s bits=%d resumed=%s",
             (unsigned long long)s->id, s->ip, tls_version(s->tls), tls_cipher(s->tls), bits, resumed ? "yes" : "no");
}

/* STARTTLS was accepted and its 220 is in out: what else the client sent in
 * plaintext is dropped unread (CVE-2011-0411), and every byte from now on
 * is TLS. */
static bool tls_begin(worker_t *w, session_t *s)
{
    engine_end(w, s); /* the 220, in plaintext */
    while (s->nheld)
        held_drop_first(w, s);
    s->tls = tls_conn_new(s->conf->tls);
    if (!s->tls) {
        close_session(w, s, "out_of_memory");
        return false;
    }
    s->flags |= SF_TLS | SF_TLS_HS;
    s->tls_start = w->now;
    engine_begin(w, s);
    return true;
}

/* Decrypted input for the engine in s->plain, from the held ciphertext;
 * the handshake runs here first. false: nothing to feed now (or closed).
 * Records are decrypted into the worker's buffer, which only the session
 * being processed uses (process() moves what is left of it out). */
static bool tls_input(worker_t *w, session_t *s)
{
    if (s->plain_len)
        return true;
    if (s->plain != w->tls_plain)
        free(s->plain); /* its own rest, all taken now */
    s->plain = NULL;
    for (int guard = 0; guard < 4096; guard++) {
        const char *p = NULL;
        size_t len = 0;
        if (s->nheld) {
            p = buf_data(w, s->held[0].bid) + s->held[0].off;
            len = s->held[0].len;
        }
        const char *q = p;
        size_t left = len;
        if (s->flags & SF_TLS_HS) {
            enum tls_status st = tls_handshake(s->tls, &q, &left, &s->out, &w->blocks);
            held_used(w, s, len - left);
            if (st == TLS_ERROR) {
                tls_failed(w, s, tls_error(s->tls));
                return false;
            }
            if (st == TLS_DONE)
                tls_started(w, s);
            else if (left == len)
                return false; /* needs bytes not here yet */
            continue;
        }
        if (!w->tls_plain && !(w->tls_plain = malloc(TLS_PLAIN_CAP))) {
            close_session(w, s, "out_of_memory");
            return false;
        }
        long got = tls_read(s->tls, &q, &left, w->tls_plain, TLS_PLAIN_CAP, &s->out, &w->blocks);
        held_used(w, s, len - left);
        if (got > 0) {
            s->plain = w->tls_plain;
            s->plain_off = 0;
            s->plain_len = (uint32_t)got;
            return true;
        }
        if (got == -TLS_CLOSED) {
            s->flags |= SF_EOF; /* close_notify: as a FIN */
            while (s->nheld)
                held_drop_first(w, s);
            return false;
        }
        if (got < 0) {
            log_line(LOG_INFO, "event=tls_error session=%016llx client=%s error=\"%s\"", (unsigned long long)s->id,
                     s->ip, tls_error(s->tls));
            close_session(w, s, "tls_error");
            return false;
        }
        if (left == len)
            return false;
    }
    return false;
}

/* The end of a pass: decrypted input the engine has not taken (it is
 * waiting on a verdict, the downstream or the client's reading) moves out of
 * the worker's buffer into one of the session's own, just its size; an idle
 * TLS session holds no input buffer. */
static void keep_plain(worker_t *w, session_t *s)
{
    if (!s->plain_len) {
        if (s->plain != w->tls_plain)
            free(s->plain);
        s->plain = NULL;
        return;
    }
    if (s->plain != w->tls_plain)
        return; /* its own already */
    char *own = malloc(s->plain_len);
    if (!own) {
        s->plain = NULL;
        s->plain_len = 0;
        close_session(w, s, "out_of_memory");
        return;
    }
    memcpy(own, s->plain + s->plain_off, s->plain_len);
    s->plain = own;
    s->plain_off = 0;
}

/* ---- one pass over the held input ---- */

/* The client failed one of postscreen's protocol tests (the engine has
 * acted as configured): counted and logged once per test and session. */
static void violations(worker_t *w, session_t *s)
{
    static const char *const test[SMTP_V_COUNT] = { "pipelining", "non_smtp_command", "bare_newline" };
    const mx_config_t *cfg = &s->conf->cfg;
    const uint8_t action[SMTP_V_COUNT] = { cfg->pipelining_action, cfg->non_smtp_command_action,
                                           cfg->bare_newline_action };
    static const char *const act[] = { "ignore", "enforce", "drop" };
    uint8_t fresh = s->smtp.violations & (uint8_t)~s->violations_seen;
    s->violations_seen = s->smtp.violations;
    for (unsigned i = 0; i < SMTP_V_COUNT; i++) {
        if (!(fresh & (1u << i)))
            continue;
        m_inc(&w->m.protocol_violations[i]);
        logbuf_t b;
        lb_init(&b, "protocol_violation");
        lb_hex(&b, "session", s->id);
        lb_cstr(&b, "client", s->ip);
        lb_cstr(&b, "test", test[i]);
        lb_cstr(&b, "action", act[action[i] < 3 ? action[i] : 0]);
        log_emit(LOG_INFO, &b);
    }
}

static void process(worker_t *w, session_t *s)
{
    bool progressed = false;
    ds_unblock(w, s); /* looked at again below */
    engine_begin(w, s);
    while (!(s->flags & (SF_CLOSING | SF_QUIT))) {
        if (s->out.bytes + s->pout.bytes + s->view.len > SEND_HIGH)
            break; /* the client is not reading its replies */
        if (s->smtp.state == SMTP_S_DATA && s->tx && tx_room(s->tx) < RECV_BUF_SIZE) {
            ds_block(w, s); /* the downstream is slower than the client */
            break;
        }
        /* The engine reads the held buffers in place, or in TLS what was
         * decrypted from them. */
        bool tls = s->flags & SF_TLS;
        const char *p;
        size_t len;
        if (tls) {
            if (!tls_input(w, s))
                break;
            p = s->plain + s->plain_off;
            len = s->plain_len;
        } else {
            if (!s->nheld)
                break;
            p = buf_data(w, s->held[0].bid) + s->held[0].off;
            len = s->held[0].len;
        }
        size_t n = 0;
        smtp_event_t ev;
        smtp_status_t st = smtp_feed(&s->smtp, p, len, &n, &ev);
        if (s->smtp.violations != s->violations_seen)
            violations(w, s);
        if (st == SMTP_EVENT) {
            if (ev.type != SMTP_EV_BODY)
                progressed = true;
            on_event(w, s, &ev); /* before the buffer may go back: ev points into it */
        }
        if (s->flags & SF_CLOSING)
            break;
        if (tls) {
            s->plain_off += (uint32_t)n;
            s->plain_len -= (uint32_t)n;
        } else {
            held_used(w, s, n);
        }
        if (s->flags & SF_STARTTLS) {
            s->flags &= (uint32_t)~SF_STARTTLS;
            if (!tls_begin(w, s))
                break;
            continue;
        }
        if (st == SMTP_FULL)
            engine_more(w, s);
        else if (st == SMTP_PAUSED || st == SMTP_CLOSED)
            break;
    }
    if (!(s->flags & SF_CLOSING)) {
        engine_end(w, s);
        keep_plain(w, s);
    } else if (s->plain == w->tls_plain) {
        s->plain = NULL; /* the worker's, and this session reads no more */
        s->plain_len = 0;
    }
    if (progressed)
        s->clock = w->now;
    if (smtp_partial(&s->smtp)) {
        if (!(s->flags & SF_PARTIAL))
            s->clock = w->now; /* a command's first byte starts its clock */
        s->flags |= SF_PARTIAL;
    } else {
        s->flags &= (uint32_t)~SF_PARTIAL;
    }
}

/* What a session does after anything happened to it: read on, answer,
 * send, keep its clock, close when done. */
static void run_one(worker_t *w, session_t *s)
{
    if (s->flags & SF_CLOSING)
        return;
    if (s->flags & SF_PROXY) {
        proxy_read(w, s);
        if (s->flags & SF_CLOSING)
            return;
        if (s->flags & SF_PROXY) {
            recv_policy(w, s);
            return;
        }
    }
    if ((s->flags & SF_NO_PROXY) && proxy_refused_here(w, s)) {
        send_out(w, s);
        return;
    }
    process(w, s);
    if (s->flags & SF_CLOSING)
        return;
    end_tx_if_over(w, s);
    if (s->smtp.state == SMTP_S_CLOSED)
        s->flags |= SF_QUIT;
    if (w->draining && !s->tx && !(s->flags & SF_QUIT) && smtp_open(&s->smtp) == 0 && s->smtp.state != SMTP_S_DATA)
        quit_with(w, s, 421, "4.3.2", "Service shutting down, closing transmission channel", "drain");
    if ((s->flags & SF_EOF) && !(s->flags & SF_QUIT) && s->nheld == 0 && !s->plain_len && smtp_open(&s->smtp) == 0 &&
        !(s->tx && tx_waiting(s->tx))) {
        /* The client is gone and every reply it could still read is out. */
        s->reason = s->reason ? s->reason : "client_closed";
        s->flags |= SF_QUIT;
    }
    set_timer(w, s);
    send_out(w, s);
    /* mid-handshake a reply (a drain's 421) cannot be sent: it is not waited for */
    if ((s->flags & SF_QUIT) && !(s->flags & SF_SENDING) && s->out.bytes == 0 &&
        (s->pout.bytes == 0 || (s->flags & SF_TLS_HS))) {
        close_session(w, s, s->reason ? s->reason : "quit");
        return;
    }
    recv_policy(w, s);
}

static void post(worker_t *w, session_t *s)
{
    sessions_t *ss = w->sessions;
    if (s->flags & (SF_POSTED | SF_CLOSING))
        return;
    s->flags |= SF_POSTED;
    s->post_next = NULL;
    if (ss->posted_tail)
        ss->posted_tail->post_next = s;
    else
        ss->posted = s;
    ss->posted_tail = s;
}

void sessions_run(worker_t *w)
{
    sessions_t *ss = w->sessions;
    for (int guard = 0; ss->posted && guard < 1000000; guard++) {
        session_t *s = ss->posted;
        ss->posted = s->post_next;
        if (!ss->posted)
            ss->posted_tail = NULL;
        s->flags &= (uint32_t)~SF_POSTED;
        run_one(w, s);
    }
}

/* ---- life and death ---- */

static void session_free(worker_t *w, session_t *s)
{
    sessions_t *ss = w->sessions;
    ss->slot[s->idx] = NULL;
    ss->gen[s->idx]++;
    ss->free[ss->nfree++] = s->idx;
    ss->count--;
    m_set(&w->m.connections_open, ss->count);
    close(s->fd);
    outq_clear(&s->out, &w->blocks);
    smtp_free(&s->smtp);
    free(s->helo);
    free(s->proxy);
    if (s->plain != w->tls_plain)
        free(s->plain);
    outq_clear(&s->pout, &w->blocks);
    tls_conn_free(s->tls);
    if (s->held != s->held_inline)
        free(s->held);
    worker_conf_drop(w, s->conf);
    free(s);
}

static void close_session(worker_t *w, session_t *s, const char *why)
{
    sessions_t *ss = w->sessions;
    if (s->flags & SF_CLOSING)
        return;
    if (!s->reason)
        s->reason = why;
    end_tx(w, s, end_of(s->reason));
    s->flags |= SF_CLOSING;
    if (s->flags & SF_STARVED) {
        s->flags &= (uint32_t)~SF_STARVED;
        ss->nstarved--;
    }
    timer_stop(&w->timers, &s->timer);
    if (s->dnsbl_req) {
        dnsblc_cancel(w, s->dnsbl_req);
        s->dnsbl_req = 0;
    }
    /* postscreen's pass cache: every list answered, the score stayed under
     * the threshold, the client failed no protocol test and ended with QUIT:
     * its next sessions skip the lookups for pass_cache_ttl. */
    const mx_config_t *cfg = &s->conf->cfg;
    if (cfg->pass_cache_ttl && s->dnsbl.status == DNSBL_DONE && !s->dnsbl_cached && !s->dnsbl_unanswered &&
        s->conf->chain.dnsbl && s->dnsbl.score < (int)cfg->dnsbl_threshold && !strcmp(s->reason, "quit") &&
        !s->smtp.violations) {
        const uint8_t *a;
        int family = client_addr(s, &a);
        rate_pass_set(w->limits->rate, family, a, w->now + (uint64_t)cfg->pass_cache_ttl * 1000, w->now);
    }
    for (uint16_t i = 0; i < s->nheld; i++)
        buf_release(w, s->held[i].bid);
    s->nheld = 0;
    held_shrink(s);
    shutdown(s->fd, SHUT_RDWR); /* ends the multishot receive and a send in flight */
    if (log_enabled(LOG_INFO)) {
        logbuf_t b;
        lb_init(&b, "disconnect");
        lb_hex(&b, "session", s->id);
        lb_cstr(&b, "client", s->ip);
        lb_u64(&b, "port", s->port);
        lb_str(&b, "helo", s->helo ? s->helo : "", s->helo_len);
        lb_u64(&b, "messages", s->smtp.messages);
        lb_u64(&b, "transactions", s->txn);
        lb_u64(&b, "commands", s->smtp.commands);
        lb_u64(&b, "errors", s->smtp.errors);
        lb_cstr(&b, "reason", s->reason);
        lb_u64(&b, "duration_ms", w->now - s->start_ms);
        log_emit(LOG_INFO, &b);
    }
    atomic_fetch_sub(&w->limits->total, 1);
    if (s->flags & SF_PER_IP)
        atomic_fetch_sub(&w->limits->per_ip[ip_slot(s)], 1);
    if (s->flags & SF_TLS_IP)
        atomic_fetch_sub(&w->limits->per_ip[ip_slot(s)], 1);
    m_observe(&w->m.session_duration, m_duration_bounds, (w->now - s->start_ms) * 1000);
    /* Freed by sessions_reap after this loop turn, once nothing is in
     * flight: callers up the stack may still hold the pointer. */
    s->reap_next = ss->reap;
    ss->reap = s;
}

void sessions_reap(worker_t *w)
{
    sessions_t *ss = w->sessions;
    session_t **pp = &ss->reap;
    while (*pp) {
        session_t *s = *pp;
        if (s->inflight == 0 && !(s->flags & SF_POSTED)) {
            *pp = s->reap_next;
            session_free(w, s);
        } else {
            pp = &s->reap_next;
        }
    }
}

static void greet(worker_t *w, session_t *s)
{
    if (s->flags & SF_CLOSING || s->smtp.state != SMTP_S_CONNECT)
        return;
    engine_begin(w, s);
    smtp_greet(&s->smtp);
    engine_end(w, s);
    s->tkind = T_NONE;
    s->clock = w->now;
    post(w, s);
}

static void timeout(worker_t *w, session_t *s, const char *why, enum m_timeout kind)
{
    m_inc(&w->m.timeouts[kind]);
    s->reason = why;
    end_tx(w, s, TXE_TIMEOUT);
    quit_with(w, s, 421, "4.4.2", "Error: timeout exceeded", why);
}

static void on_timer(worker_t *w, timer_node_t *t)
{
    session_t *s = TIMER_OWNER(t, session_t, timer);
    enum tkind k = (enum tkind)s->tkind;
    s->tkind = T_NONE;
    switch (k) {
    case T_PROXY:
        m_inc(&w->m.timeouts[MT_PROXY]);
        proxy_refuse(w, s, MPE_TIMEOUT, "timeout", "proxy_timeout");
        break;
    case T_GREET:
        greet(w, s);
        break;
    case T_COMMAND:
        timeout(w, s, "command_timeout", MT_COMMAND);
        break;
    case T_DATA:
        /* Bytes came within data_timeout: the client is just too slow. */
        if (w->now - s->last_byte < (uint64_t)s->conf->cfg.data_timeout * 1000)
            timeout(w, s, "data_rate", MT_DATA_RATE);
        else
            timeout(w, s, "data_timeout", MT_DATA);
        break;
    case T_LINGER:
        close_session(w, s, s->reason ? s->reason : "quit"); /* its last replies never left */
        break;
    case T_TLS:
        /* Mid-handshake nothing can be said to the client: close. */
        m_inc(&w->m.timeouts[MT_TLS]);
        m_inc(&w->m.tls_handshakes[MTLS_TIMEOUT]);
        log_line(LOG_INFO, "event=tls_failed session=%016llx client=%s error=\"handshake timeout\"",
                 (unsigned long long)s->id, s->ip);
        close_session(w, s, "tls_timeout");
        break;
    default:
        break;
    }
}

/* The client's address as the lists and the pass cache know it: an IPv4
 * client on an IPv6 socket is IPv4. */
static int client_addr(const session_t *s, const uint8_t **a)
{
    *a = s->addr;
    return rate_plain_addr(s->family, a);
}

static void dnsbl_result(session_t *s, int score, uint32_t hit, unsigned unanswered);

/* The DNSBL lookups, every list at once, as soon as the address is known;
 * none for a client in the pass cache. */
static void dnsbl_begin(worker_t *w, session_t *s)
{
    const dnsbl_list_t *l = s->conf->chain.dnsbl;
    if (!l)
        return;
    const uint8_t *a;
    int family = client_addr(s, &a);
    if (s->conf->cfg.pass_cache_ttl && rate_passed(w->limits->rate, family, a, w->now)) {
        s->dnsbl = (dnsbl_state_t){ DNSBL_DONE, 0, 0 };
        s->dnsbl_cached = true;
        m_inc(&w->m.dnsbl_lookups[MDL_PASS_CACHE]);
        return;
    }
    dnsbl_owner_t o = { s->idx, s->gen };
    dnsbl_state_t now;
    s->dnsbl.status = DNSBL_PENDING;
    s->dnsbl_req = dnsblc_start(w, &o, l, family, a, &now);
    if (s->dnsbl_req == DNSBLC_NOW) { /* every answer from the worker's cache */
        s->dnsbl_req = 0;
        dnsbl_result(s, now.score, now.hit, 0);
    } else if (!s->dnsbl_req) {
        s->dnsbl.status = DNSBL_DONE; /* nothing could be asked: fail open, counted */
        m_inc(&w->m.dnsbl_errors);
    }
}

static void connect_stage(worker_t *w, session_t *s);

/*
 * The client's address is known: count it, start its DNSBL lookups, ask
 * the connect filters, greet. Directly after accept, or once a PROXY header
 * said who the client is.
 */
static void admit(worker_t *w, session_t *s, int total)
{
    int per_ip = atomic_fetch_add(&w->limits->per_ip[ip_slot(s)], 1) + 1;
    s->flags |= SF_PER_IP;
    s->conn_total = (uint32_t)total;
    s->conn_per_ip = (uint32_t)per_ip;
    fleet_owner_t o = { s->idx, s->gen };
    enum fleet_verdict fv = fleet_connect(w, &o, &s->conf->cfg, s->family, s->addr);
    if (fv == FLEET_OVER)
        s->flags |= SF_RATE_CONN;
    dnsbl_begin(w, s);
    if (fv == FLEET_WAIT) {
        /* One round trip to Redis (limits_redis_timeout at most) before
         * the greeting; the DNSBL lookups run meanwhile, and a client
         * that talks is an early talker. */
        s->flags |= SF_FLEET_WAIT;
        if (!(s->flags & SF_RECV))
            arm_recv(w, s);
        return;
    }
    connect_stage(w, s);
}

/* The connect filters; again when the DNSBL lookups they waited for end. */
static void connect_stage(worker_t *w, session_t *s)
{
    filter_facts_t fx;
    filter_verdict_t v;
    facts_of(w, s, &fx);
    fx.conn_total = s->conn_total;
    fx.conn_per_ip = s->conn_per_ip;
    if (s->flags & SF_RATE_CONN)
        fx.rate_over |= FILTER_RATE_CONN;
    enum filter_act act = filter_run(&s->conf->chain, FS_CONNECT, &fx, &v);
    if (act == FA_WAIT && s->dnsbl.status == DNSBL_PENDING) {
        /* dnsbl_stage = greeting: no 220 before the lists have answered
         * (dnsbl_timeout at most); a client that talks meanwhile is an
         * early talker, as during greeting_delay. */
        s->flags |= SF_DNSBL_WAIT;
        if (!(s->flags & SF_RECV))
            arm_recv(w, s);
        return;
    }
    if (act >= FA_REJECT) {
        bool wait = v.act == FA_WAIT;
        const char *why = wait || !v.why ? "filter" : v.why;
        m_inc(&w->m.refused[!strcmp(why, "max_connections")          ? MR_MAX_CONNECTIONS
                            : !strcmp(why, "max_connections_per_ip") ? MR_MAX_CONNECTIONS_PER_IP
                            : !strcmp(why, "rate_connections")       ? MR_RATE_CONNECTIONS
                                                                     : MR_FILTER]);
        logbuf_t b;
        lb_init(&b, "refused");
        lb_hex(&b, "session", s->id);
        lb_cstr(&b, "client", s->ip);
        lb_cstr(&b, "reason", wait ? "filter" : v.why ? v.why : "filter");
        log_emit(LOG_WARN, &b);
        if (!wait && v.why && !strcmp(v.why, "dnsbl"))
            m_inc(&w->m.dnsbl_refused);
        quit_with(w, s, wait ? 421 : v.code, wait ? "4.3.0" : v.esc, wait ? "Error: try again later" : v.text,
                  wait ? "filter" : v.why ? v.why : "filter");
        return;
    }
    log_line(LOG_DEBUG, "event=connect session=%016llx client=%s port=%u", (unsigned long long)s->id, s->ip,
             s->port);
    if (!(s->flags & SF_RECV))
        arm_recv(w, s);
    if (s->conf->cfg.greeting_delay) {
        /* postscreen's pregreet test: a client that talks before it hears
         * the 220 is a bot; the engine answers it 554 and closes. */
        arm(w, s, T_GREET, w->now + s->conf->cfg.greeting_delay);
        return;
    }
    greet(w, s);
}

/* ---- the PROXY header ---- */

/* Refused: closed without a greeting or a reply (the peer is a balancer
 * that is misconfigured, or someone who is not a balancer at all). */
static void proxy_refuse(worker_t *w, session_t *s, unsigned kind, const char *error, const char *why)
{
    m_inc(&w->m.proxy_errors[kind]);
    m_inc(&w->m.refused[MR_PROXY]);
    logbuf_t b;
    lb_init(&b, "proxy_refused");
    lb_hex(&b, "session", s->id);
    lb_cstr(&b, "client", s->ip);
    lb_u64(&b, "port", s->port);
    lb_cstr(&b, "error", error);
    lb_u64(&b, "offset", s->proxy ? proxy_offset(s->proxy) : 0);
    log_emit(LOG_WARN, &b);
    close_session(w, s, why);
}

/* The header said who the client is: from here on that is the session's
 * address, for the limits, the filters, SPF, the logs and Received:. */
static void proxy_done(worker_t *w, session_t *s, const proxy_result_t *r)
{
    free(s->proxy);
    s->proxy = NULL;
    s->flags &= (uint32_t)~SF_PROXY;
    timer_stop(&w->timers, &s->timer);
    s->tkind = T_NONE;
    m_inc(&w->m.proxy[r->local ? MP_LOCAL : r->version == 1 ? MP_V1 : MP_V2]);
    if (!r->local) {
        char via[INET6_ADDRSTRLEN];
        memcpy(via, s->ip, sizeof via);
        uint16_t via_port = s->port;
        s->family = r->family;
        memset(s->addr, 0, sizeof s->addr);
        memcpy(s->addr, r->src, r->family == AF_INET ? 4 : 16);
        s->port = r->src_port;
        if (!inet_ntop(s->family, s->addr, s->ip, sizeof s->ip))
            snprintf(s->ip, sizeof s->ip, "?");
        log_line(LOG_DEBUG, "event=proxy session=%016llx client=%s port=%u via=%s via_port=%u version=%u",
                 (unsigned long long)s->id, s->ip, s->port, via, via_port, r->version);
    }
    s->clock = w->now;
    admit(w, s, atomic_load(&w->limits->total));
}

/* Feed what arrived to the PROXY parser; what follows the header stays
 * held for the engine (a client that talks before the greeting). */
static void proxy_read(worker_t *w, session_t *s)
{
    while (s->nheld) {
        held_t *h = &s->held[0];
        size_t n = 0;
        proxy_result_t r;
        enum proxy_status st = proxy_feed(s->proxy, buf_data(w, h->bid) + h->off, h->len, &n, &r);
        if (st == PROXY_ERROR) {
            proxy_err_t e = proxy_error(s->proxy);
            proxy_refuse(w, s, e, proxy_err_name(e), "proxy_error");
            return;
        }
        h->off = (uint16_t)(h->off + n);
        h->len = (uint16_t)(h->len - n);
        if (h->len == 0)
            held_drop_first(w, s);
        if (st == PROXY_DONE) {
            proxy_done(w, s, &r);
            return;
        }
    }
    if (s->flags & SF_EOF)
        proxy_refuse(w, s, MPE_CLOSED, "closed", "proxy_closed");
}

/* An untrusted source's first bytes: a PROXY header from it is refused
 * (it could claim any address), whatever else follows is SMTP. */
static bool proxy_refused_here(worker_t *w, session_t *s)
{
    static const char v2sig[12] = { '\r', '\n', '\r', '\n', '\0', '\r', '\n', 'Q', 'U', 'I', 'T', '\n' };
    if (!s->nheld)
        return false;
    s->flags &= (uint32_t)~SF_NO_PROXY;
    const held_t *h = &s->held[0];
    const char *p = buf_data(w, h->bid) + h->off;
    if (!((h->len >= 6 && memcmp(p, "PROXY ", 6) == 0) || (h->len >= 12 && memcmp(p, v2sig, 12) == 0)))
        return false;
    m_inc(&w->m.proxy_errors[MPE_UNTRUSTED]);
    logbuf_t b;
    lb_init(&b, "proxy_refused");
    lb_hex(&b, "session", s->id);
    lb_cstr(&b, "client", s->ip);
    lb_u64(&b, "port", s->port);
    lb_cstr(&b, "error", "untrusted");
    log_emit(LOG_WARN, &b);
    quit_with(w, s, 554, "5.7.1", "Error: PROXY header not accepted from this address", "proxy_untrusted");
    return true;
}

void session_accept(worker_t *w, int fd)
{
    sessions_t *ss = w->sessions;
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    session_t *s = calloc(1, sizeof *s);
    int slot = s ? slot_alloc(w) : -1;
    if (slot < 0 || getpeername(fd, (struct sockaddr *)&sa, &sl)) {
        free(s);
        close(fd);
        return;
    }
    s->fd = fd;
    s->conf = worker_conf_hold(w);
    const mx_config_t *cfg = &s->conf->cfg;
    s->held = s->held_inline;
    s->held_cap = HELD_INLINE;
    if (sa.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&sa;
        s->family = AF_INET6;
        memcpy(s->addr, &a->sin6_addr, 16);
        s->port = ntohs(a->sin6_port);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&sa;
        s->family = AF_INET;
        memcpy(s->addr, &a->sin_addr, 4);
        s->port = ntohs(a->sin_port);
    }
    if (!inet_ntop(s->family, s->addr, s->ip, sizeof s->ip))
        snprintf(s->ip, sizeof s->ip, "?");
    int total = atomic_fetch_add(&w->limits->total, 1) + 1;
    s->idx = (uint32_t)slot;
    s->gen = ++ss->gen[slot] & GEN_MASK;
    ss->slot[slot] = s;
    ss->count++;
    m_inc(&w->m.connections_accepted);
    m_set(&w->m.connections_open, ss->count);
    s->id = worker_new_id(w);
    s->start_ms = w->now;
    s->clock = w->now;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    smtp_init(&s->smtp, &s->conf->smtp, &s->view);
    if (cfg->proxy_protocol != CONFIG_PROXY_OFF) {
        if (cfg->proxy_trusted.n && !config_cidrs_match(&cfg->proxy_trusted, s->family, s->addr)) {
            s->flags |= SF_NO_PROXY;
        } else {
            /* No greeting, no limits and no filters until the header says
             * who the client is: the balancer's address means nothing. */
            static const unsigned accept[] = { 0, PROXY_V1, PROXY_V2, PROXY_V1 | PROXY_V2 };
            s->proxy = malloc(sizeof *s->proxy);
            if (!s->proxy) {
                close_session(w, s, "out_of_memory");
                return;
            }
            proxy_init(s->proxy, accept[cfg->proxy_protocol & 3]);
            s->flags |= SF_PROXY;
            arm_recv(w, s);
            arm(w, s, T_PROXY, w->now + (uint64_t)cfg->proxy_timeout * 1000);
            return;
        }
    }
    admit(w, s, total);
}

/* ---- completions ---- */

void session_cqe(worker_t *w, int op, uint32_t idx, uint32_t gen, struct io_uring_cqe *cqe)
{
    sessions_t *ss = w->sessions;
    session_t *s = session_get(w, idx, gen);
    int res = cqe->res;
    if (!s) {
        if (op == OP_RECV && (cqe->flags & IORING_CQE_F_BUFFER))
            buf_release(w, (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT));
        return;
    }
    switch (op) {
    case OP_RECV:
        if (cqe->flags & IORING_CQE_F_BUFFER) {
            uint16_t bid = (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
            buf_taken(w, bid, res > 0 ? (size_t)res : 0);
            if (res <= 0 || (s->flags & (SF_CLOSING | SF_EOF))) {
                buf_release(w, bid);
            } else if (!held_push(s, (held_t){ bid, 0, (uint16_t)res })) {
                buf_release(w, bid);
                close_session(w, s, "out_of_memory");
            }
        }
        if (!(cqe->flags & IORING_CQE_F_MORE)) {
            s->inflight--;
            s->flags &= (uint32_t)~SF_RECV;
            if (s->flags & SF_CLOSING)
                break;
            if (res == -ENOBUFS) {
                s->flags |= SF_STARVED;
                ss->nstarved++;
                m_inc(&w->m.backpressure[MB_NO_BUFFERS]);
            } else if (res == 0) {
                s->flags |= SF_EOF;
                /* Inside a body nothing partial may be delivered: stop now. */
                if (s->smtp.state == SMTP_S_DATA)
                    close_session(w, s, "client_closed");
            } else if (res < 0 && res != -ECANCELED) {
                close_session(w, s, "recv_error");
            }
        }
        if (!(s->flags & SF_CLOSING))
            post(w, s);
        break;
    case OP_SEND:
        s->inflight--;
        s->flags &= (uint32_t)~SF_SENDING;
        outq_sent(&s->out, &w->blocks, res > 0 ? (size_t)res : 0);
        if (res < 0) {
            close_session(w, s, "send_error");
            break;
        }
        post(w, s);
        break;
    case OP_CANCEL:
        s->inflight--;
        break;
    default:
        break;
    }
}

void sessions_buffers_back(worker_t *w)
{
    sessions_t *ss = w->sessions;
    for (uint32_t i = 0; i < ss->nslots && ss->nstarved; i++) {
        session_t *s = ss->slot[i];
        if (s && (s->flags & SF_STARVED)) {
            s->flags &= (uint32_t)~SF_STARVED;
            ss->nstarved--;
            post(w, s);
        }
    }
}

/* ---- callbacks from the pool and the SPF client ---- */

static session_t *owner(worker_t *w, uint32_t idx, uint32_t gen, uint32_t seq)
{
    session_t *s = session_get(w, idx, gen);
    if (!s || (s->flags & SF_CLOSING) || !s->tx || tx_number(s->tx) != seq)
        return NULL;
    return s;
}

/* A callback for a live session's current transaction: the engine's output
 * window opens around what the transaction does, and the session runs in
 * this loop turn. NULL: the handle is stale, drop the callback. */
static session_t *enter(worker_t *w, uint32_t idx, uint32_t gen, uint32_t seq)
{
    session_t *s = owner(w, idx, gen, seq);
    if (s)
        engine_begin(w, s);
    return s;
}

static void leave(worker_t *w, session_t *s)
{
    engine_end(w, s);
    post(w, s);
}

static void pool_ready(worker_t *w, const pool_owner_t *o, pool_lease_t lease)
{
    session_t *s = enter(w, o->idx, o->gen, o->seq);
    if (!s) {
        pool_release(w, lease);
        return;
    }
    tx_lease_ready(s->tx, lease);
    leave(w, s);
}

static void pool_failed(worker_t *w, const pool_owner_t *o, const smtp_reply_t *r)
{
    session_t *s = enter(w, o->idx, o->gen, o->seq);
    if (s) {
        tx_lease_failed(s->tx, r);
        leave(w, s);
    }
}

static void pool_event(worker_t *w, const pool_owner_t *o, const relay_event_t *ev)
{
    session_t *s = enter(w, o->idx, o->gen, o->seq);
    if (s) {
        tx_relay_event(s->tx, ev);
        leave(w, s);
    }
}

static void pool_writable(worker_t *w, const pool_owner_t *o)
{
    session_t *s = owner(w, o->idx, o->gen, o->seq);
    if (!s)
        return;
    if (s->flags & SF_DS_BLOCKED)
        post(w, s); /* the next pass looks at the room again */
    if (tx_pushing(s->tx)) { /* a scanned message going downstream as it drains */
        engine_begin(w, s);
        tx_writable(s->tx);
        leave(w, s);
    }
}

const pool_owner_ops_t session_pool_ops = { pool_ready, pool_failed, pool_event, pool_writable };

static void spool_committed(worker_t *w, const spool_owner_t *o, bool ok)
{
    session_t *s = enter(w, o->idx, o->gen, o->seq);
    if (s) {
        tx_spool_committed(s->tx, ok);
        leave(w, s);
    }
}

const spool_owner_ops_t session_spool_ops = { spool_committed };

/* The lookups are over (or came from the cache): kept, and logged when a
 * list counted or did not answer. */
static void dnsbl_result(session_t *s, int score, uint32_t hit, unsigned unanswered)
{
    s->dnsbl = (dnsbl_state_t){ DNSBL_DONE, score, hit };
    s->dnsbl_unanswered = (uint8_t)(unanswered > 255 ? 255 : unanswered);
    const dnsbl_list_t *l = s->conf->chain.dnsbl;
    if (log_enabled(hit || unanswered ? LOG_INFO : LOG_DEBUG)) {
        char lists[512] = "";
        size_t n = 0;
        for (size_t i = 0; l && i < l->n && n < sizeof lists; i++)
            if (hit & (1u << i)) {
                int k = snprintf(lists + n, sizeof lists - n, "%s%s", n ? "," : "", l->site[i].domain);
                n += k > 0 ? (size_t)k : 0;
            }
        logbuf_t b;
        lb_init(&b, "dnsbl");
        lb_hex(&b, "session", s->id);
        lb_cstr(&b, "client", s->ip);
        lb_i64(&b, "score", score);
        lb_cstr(&b, "lists", n ? lists : "-");
        lb_u64(&b, "unanswered", unanswered);
        lb_cstr(&b, "listed", score >= (int)s->conf->cfg.dnsbl_threshold ? "yes" : "no");
        log_emit(hit || unanswered ? LOG_INFO : LOG_DEBUG, &b);
    }
}

void session_dnsbl_done(worker_t *w, const dnsbl_owner_t *o, int score, uint32_t hit, unsigned unanswered)
{
    session_t *s = session_get(w, o->idx, o->gen);
    if (!s || (s->flags & SF_CLOSING))
        return;
    s->dnsbl_req = 0;
    dnsbl_result(s, score, hit, unanswered);
    if (s->flags & SF_DNSBL_WAIT) {
        s->flags &= (uint32_t)~SF_DNSBL_WAIT;
        connect_stage(w, s);
        return;
    }
    if (s->tx) {
        engine_begin(w, s);
        tx_rerun(s->tx);
        leave(w, s);
    }
}

void session_fleet_done(worker_t *w, const fleet_owner_t *o, bool over)
{
    session_t *s = session_get(w, o->idx, o->gen);
    if (!s || (s->flags & SF_CLOSING) || !(s->flags & SF_FLEET_WAIT))
        return;
    s->flags &= (uint32_t)~SF_FLEET_WAIT;
    if (over)
        s->flags |= SF_RATE_CONN;
    connect_stage(w, s);
}

void session_scan_done(worker_t *w, const scanner_owner_t *o, scanner_result_t *r)
{
    session_t *s = enter(w, o->idx, o->gen, o->seq);
    if (!s) { /* cannot happen (a transaction that ends cancels its scan), but the buffer must not leak */
        scanner_buf_free(w, r->buf, r->cap, r->held, r->fd);
        return;
    }
    tx_scan_done(s->tx, r);
    leave(w, s);
}

void session_spf_done(worker_t *w, const spf_owner_t *o, unsigned result, slice_t received, slice_t comment)
{
    session_t *s = enter(w, o->idx, o->gen, o->seq);
    if (s) {
        tx_spf_result(s->tx, result, received, comment);
        leave(w, s);
    }
}

/* ---- draining ---- */

void sessions_drain(worker_t *w)
{
    sessions_t *ss = w->sessions;
    for (uint32_t i = 0; i < ss->nslots; i++)
        if (ss->slot[i] && !(ss->slot[i]->flags & SF_CLOSING))
            post(w, ss->slot[i]); /* idle ones get 421 in run_one */
}

void sessions_close_all(worker_t *w)
{
    sessions_t *ss = w->sessions;
    for (uint32_t i = 0; i < ss->nslots; i++) {
        session_t *s = ss->slot[i];
        if (!s || (s->flags & SF_CLOSING))
            continue;
        if (s->flags & SF_QUIT) {
            close_session(w, s, s->reason ? s->reason : "drain");
            continue;
        }
        s->reason = "drain";
        end_tx(w, s, TXE_DRAIN);
        quit_with(w, s, 421, "4.3.2", "Service shutting down, closing transmission channel", "drain");
    }
}

uint32_t sessions_count(const worker_t *w)
{
    return w->sessions ? w->sessions->count : 0;
}

void sessions_destroy(worker_t *w)
{
    sessions_t *ss = w->sessions;
    if (!ss)
        return;
    for (uint32_t i = 0; i < ss->nslots; i++)
        if (ss->slot[i]) {
            close(ss->slot[i]->fd);
            smtp_free(&ss->slot[i]->smtp);
            outq_clear(&ss->slot[i]->out, &w->blocks);
            free(ss->slot[i]->helo);
            free(ss->slot[i]);
        }
    free(ss->slot);
    free(ss->gen);
    free(ss->free);
    free(ss);
    w->sessions = NULL;
}

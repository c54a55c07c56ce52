/*
 * downstream.c - the worker's pool of persistent SMTP/LMTP connections to the
 * organization's mail server.
 *
 * Pooling is where peers went wrong (Haraka dropped its pool after leaks), so
 * the rules are few and strict: a connection is leased to one session at a
 * time; it goes back to the pool only in a known state (after the end of a
 * message, or after RSET answered 250); one that broke mid-message, timed
 * out, spoke out of turn, served downstream_max_messages or outlived
 * downstream_max_lifetime is closed, never reused. The pool never holds more
 * than downstream_connections; a session that finds every connection busy
 * waits in a bounded FIFO with a timeout and is then told 451 4.4.5. An idle
 * connection keeps a recv armed, so a server that closes it is noticed before
 * the next lease rather than by the next message.
 *
 * Replies are read by the I/O-free parser in core/dsreply.h and matched to
 * a FIFO of the commands they answer. With PIPELINING offered, a client's
 * MAIL, RCPT..., DATA group goes out in one write and each reply becomes the
 * verdict of the client's command it stands for (smtp_defer/smtp_resolve);
 * without it, commands go one at a time.
 */
#include "worker.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

static void ds_kill(worker_t *w, dsconn_t *c, const char *why);

int ds_init(worker_t *w, char *err, size_t errlen)
{
    if (!w->cfg->downstream[0])
        return 0;
    if (worker_parse_addr(w->cfg->downstream, &w->ds_addr, &w->ds_addrlen)) {
        snprintf(err, errlen, "downstream: cannot resolve %s", w->cfg->downstream);
        return -1;
    }
    w->nds_slots = w->cfg->downstream_connections;
    w->ds = calloc(w->nds_slots, sizeof *w->ds);
    w->ds_gen = calloc(w->nds_slots, sizeof *w->ds_gen);
    if (!w->ds || !w->ds_gen) {
        snprintf(err, errlen, "downstream: out of memory");
        return -1;
    }
    return 0;
}

dsconn_t *ds_get(worker_t *w, uint32_t idx, uint32_t gen)
{
    if (idx >= w->nds_slots || !w->ds[idx] || (w->ds_gen[idx] & 0xffffffu) != gen)
        return NULL;
    return w->ds[idx];
}

uint32_t ds_room(const dsconn_t *c)
{
    return DS_OUT_CAP - c->out_len;
}

static void arm_recv(worker_t *w, dsconn_t *c)
{
    if (c->recv_armed || c->state == DS_DEAD)
        return;
    struct io_uring_sqe *sqe = worker_sqe(w);
    io_uring_prep_recv(sqe, c->fd, c->in, sizeof c->in, 0);
    io_uring_sqe_set_data64(sqe, ud_make(OP_DS_RECV, c->idx, c->gen));
    c->inflight++;
    c->recv_armed = true;
}

void ds_flush(worker_t *w, dsconn_t *c)
{
    if (c->sending || c->out_len == 0 || c->state == DS_DEAD)
        return;
    struct io_uring_sqe *sqe = worker_sqe(w);
    c->out_inflight = c->out_len;
    io_uring_prep_send(sqe, c->fd, c->out, c->out_inflight, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, ud_make(OP_DS_SEND, c->idx, c->gen));
    c->inflight++;
    c->sending = true;
}

bool ds_append(worker_t *w, dsconn_t *c, const char *p, size_t len)
{
    (void)w;
    if (len > ds_room(c))
        return false;
    memcpy(c->out + c->out_len, p, len);
    c->out_len += (uint32_t)len;
    return true;
}

static void arm_timer(worker_t *w, dsconn_t *c)
{
    tlist_put(&w->t_ds, &c->timer, w->now + (uint64_t)w->cfg->downstream_timeout * 1000);
}

static enum ds_expect ex_head(const dsconn_t *c)
{
    return c->exq_len ? (enum ds_expect)c->exq[c->exq_head] : DX_NONE;
}

static void ex_pop(dsconn_t *c)
{
    c->exq_head = (c->exq_head + 1) % c->exq_cap;
    c->exq_len--;
}

/* A local verdict at the head of the FIFO: take it (no reply is due). */
enum ds_expect ds_pop_local(dsconn_t *c)
{
    enum ds_expect h = ex_head(c);
    if (h < DX_LOCAL)
        return DX_NONE;
    ex_pop(c);
    return h;
}

/* Append a command and what its reply answers; the caller flushes. */
bool ds_queue_cmd(worker_t *w, dsconn_t *c, enum ds_expect what, const char *line, size_t len)
{
    if (c->exq_len == c->exq_cap || (line && !ds_append(w, c, line, len)))
        return false;
    c->exq[(c->exq_head + c->exq_len++) % c->exq_cap] = (uint8_t)what;
    arm_timer(w, c);
    return true;
}

void ds_send_cmd(worker_t *w, dsconn_t *c, enum ds_expect what, const char *line, size_t len)
{
    if (!ds_queue_cmd(w, c, what, line, len)) {
        ds_kill(w, c, "send_buffer_full");
        return;
    }
    ds_flush(w, c);
}

static void serve_queue(worker_t *w, dsconn_t *c);

static void ds_free(worker_t *w, dsconn_t *c)
{
    w->ds[c->idx] = NULL;
    w->ds_gen[c->idx]++;
    w->nds--;
    close(c->fd);
    free(c->out);
    free(c->exq);
    free(c);
    serve_queue(w, NULL);
}

static void dsq_push(worker_t *w, session_t *s)
{
    s->flags |= SF_DSWAIT;
    w->dsq_len++;
    tlist_put(&w->dsq, &s->qnode, w->now + (uint64_t)w->cfg->downstream_queue_timeout * 1000);
}

void ds_unqueue(worker_t *w, session_t *s)
{
    if (!(s->flags & SF_DSWAIT))
        return;
    tlist_del(&s->qnode);
    s->flags &= (uint16_t)~SF_DSWAIT;
    w->dsq_len--;
}

static session_t *dsq_pop(worker_t *w)
{
    if (w->dsq.next == &w->dsq)
        return NULL;
    session_t *s = (session_t *)((char *)w->dsq.next - offsetof(session_t, qnode));
    ds_unqueue(w, s);
    return s;
}

static void lease(worker_t *w, dsconn_t *c, session_t *s)
{
    c->state = DS_BUSY;
    c->owner = s;
    c->owner_gen = s->gen;
    c->in_data = false;
    s->ds = c;
    session_ds_ready(w, s);
}

static void open_conn(worker_t *w, session_t *owner);
static void to_pool(worker_t *w, dsconn_t *c);

/* A connection became free, or a slot did: serve the longest waiter. */
static void serve_queue(worker_t *w, dsconn_t *c)
{
    session_t *s;
    if (c && c->state == DS_READY && (s = dsq_pop(w)))
        lease(w, c, s);
    else if (!c && w->nds < w->nds_slots && (s = dsq_pop(w)))
        open_conn(w, s);
}

static void ds_kill(worker_t *w, dsconn_t *c, const char *why)
{
    if (c->state == DS_DEAD)
        return;
    session_t *s = c->owner;
    bool owner_ok = s && s->ds == c && s->gen == c->owner_gen;
    log_line(owner_ok || c->state != DS_READY ? LOG_WARN : LOG_DEBUG,
             "event=downstream_closed worker=%d conn=%u reason=%s messages=%u", w->id, c->idx, why, c->messages);
    c->state = DS_DEAD;
    c->owner = NULL;
    tlist_del(&c->timer);
    shutdown(c->fd, SHUT_RDWR);
    if (owner_ok) {
        s->ds = NULL;
        /* The client waits on this connection: its pending command gets 451.
         * Nothing was acknowledged, so nothing is lost. */
        if (smtp_pending(&s->smtp) != SMTP_EV_NONE)
            session_ds_failed(w, s, 451, "4.4.1", "Error: downstream server unavailable, try again later");
    }
    w->nds_dead++; /* freed by ds_reap once nothing is in flight */
    serve_queue(w, NULL);
}

void ds_reap(worker_t *w)
{
    for (uint32_t i = 0; i < w->nds_slots && w->nds_dead; i++) {
        dsconn_t *c = w->ds[i];
        if (c && c->state == DS_DEAD && c->inflight == 0) {
            w->nds_dead--;
            ds_free(w, c);
        }
    }
}

static void open_conn(worker_t *w, session_t *owner)
{
    uint32_t slot = 0;
    while (slot < w->nds_slots && w->ds[slot])
        slot++;
    dsconn_t *c = slot < w->nds_slots ? calloc(1, sizeof *c) : NULL;
    char *out = c ? malloc(DS_OUT_CAP) : NULL;
    /* room for a whole pipelined transaction: MAIL, every RCPT, DATA, end */
    uint32_t exq_cap = w->cfg->recipient_limit + 8;
    uint8_t *exq = out ? malloc(exq_cap) : NULL;
    int fd = exq ? socket(w->ds_addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0) : -1;
    if (fd < 0) {
        free(exq);
        free(out);
        free(c);
        session_ds_failed(w, owner, 451, "4.3.0", "Error: out of resources, try again later");
        return;
    }
    /* Commands and bodies go out as one write each, and a reply is awaited:
     * Nagle would hold the write for the peer's delayed ACK (40 ms a message). */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->out = out;
    c->exq = exq;
    c->exq_cap = exq_cap;
    c->idx = slot;
    c->gen = ++w->ds_gen[slot] & 0xffffffu;
    c->born_ms = w->now;
    c->state = DS_CONNECTING;
    dsr_init(&c->parser);
    w->ds[slot] = c;
    w->nds++;
    c->owner = owner;
    c->owner_gen = owner->gen;
    owner->ds = c;
    struct io_uring_sqe *sqe = worker_sqe(w);
    io_uring_prep_connect(sqe, fd, (struct sockaddr *)&w->ds_addr, w->ds_addrlen);
    io_uring_sqe_set_data64(sqe, ud_make(OP_DS_CONNECT, c->idx, c->gen));
    c->inflight++;
    arm_timer(w, c);
}

void ds_acquire(worker_t *w, session_t *s)
{
    for (uint32_t i = 0; i < w->nds_slots; i++) {
        dsconn_t *c = w->ds[i];
        if (!c || c->state != DS_READY)
            continue;
        if (w->now - c->born_ms > (uint64_t)w->cfg->downstream_max_lifetime * 1000) {
            ds_kill(w, c, "max_lifetime");
            continue;
        }
        lease(w, c, s);
        return;
    }
    if (w->ds_backoff_until > w->now) {
        session_ds_failed(w, s, 451, "4.4.1", "Error: downstream server unavailable, try again later");
        return;
    }
    if (w->nds < w->nds_slots) {
        open_conn(w, s);
        return;
    }
    if (w->dsq_len >= w->cfg->downstream_queue_limit) {
        session_ds_failed(w, s, 451, "4.4.5", "Error: downstream busy, try again later");
        return;
    }
    dsq_push(w, s);
}

void ds_queue_timeout(worker_t *w, session_t *s)
{
    ds_unqueue(w, s);
    session_ds_failed(w, s, 451, "4.4.5", "Error: downstream busy, try again later");
}

/* The session is done with the connection. clean: it may be reused. */
void ds_release(worker_t *w, dsconn_t *c, bool clean)
{
    c->owner = NULL;
    if (c->state == DS_DEAD)
        return;
    if (c->state == DS_CONNECTING || c->state == DS_GREETING || c->state == DS_EHLO) {
        return; /* finishes its handshake and joins the pool */
    }
    bool old = w->now - c->born_ms > (uint64_t)w->cfg->downstream_max_lifetime * 1000;
    if (!clean || c->in_data || c->retire || old || c->messages >= w->cfg->downstream_max_messages ||
        w->draining) {
        ds_kill(w, c, c->in_data ? "aborted_in_data" : old ? "max_lifetime"
                      : c->messages >= w->cfg->downstream_max_messages ? "max_messages"
                      : w->draining ? "draining" : "retired");
        return;
    }
    if (c->exq_len) {
        /* A reply is still due for a command whose client is gone: the
         * stream's position is uncertain, so the connection is not reused. */
        ds_kill(w, c, "reply_outstanding");
        return;
    }
    if (c->tx_open) {
        c->state = DS_RSET; /* MAIL or RCPT accepted downstream: reset it */
        ds_send_cmd(w, c, DX_RSET, "RSET\r\n", 6);
        return;
    }
    to_pool(w, c);
}

static void to_pool(worker_t *w, dsconn_t *c)
{
    c->state = DS_READY;
    c->owner = NULL;
    tlist_del(&c->timer);
    arm_recv(w, c);
    serve_queue(w, c);
}

static void handshake_done(worker_t *w, dsconn_t *c)
{
    session_t *s = c->owner;
    tlist_del(&c->timer);
    w->ds_backoff_ms = 0;
    if (s && s->ds == c && s->gen == c->owner_gen) {
        c->state = DS_BUSY;
        session_ds_ready(w, s);
    } else {
        to_pool(w, c);
    }
}

static void on_reply(worker_t *w, dsconn_t *c, const dsr_reply_t *r)
{
    enum ds_expect what = ex_head(c);
    session_t *s = c->owner;
    bool owner_ok = s && s->ds == c && s->gen == c->owner_gen;
    bool lmtp_more = what == DX_EOD && w->cfg->downstream_protocol == 1 && owner_ok &&
                     (c->eod_left ? c->eod_left : (s->rcpt_ok ? s->rcpt_ok : 1)) > 1;
    if (what != DX_NONE && !lmtp_more)
        ex_pop(c);
    if (c->exq_len)
        arm_timer(w, c);
    else
        tlist_del(&c->timer);
    switch (what) {
    case DX_GREETING:
        if (r->code != 220)
            return ds_kill(w, c, "bad_greeting");
        c->state = DS_EHLO;
        char cmd[300];
        int k = snprintf(cmd, sizeof cmd, "%s %s\r\n", w->cfg->downstream_protocol == 1 ? "LHLO" : "EHLO",
                         w->cfg->hostname);
        ds_send_cmd(w, c, DX_EHLO, cmd, (size_t)k);
        return;
    case DX_EHLO:
        if (r->code != 250)
            return ds_kill(w, c, "ehlo_refused");
        c->caps = r->caps;
        return handshake_done(w, c);
    case DX_RSET:
        if (r->code != 250)
            return ds_kill(w, c, "rset_refused");
        c->tx_open = false;
        return to_pool(w, c);
    case DX_MAIL:
    case DX_RCPT:
    case DX_DATA:
        if (what == DX_DATA && r->code == 354)
            c->in_data = true;
        if (what == DX_MAIL && r->code < 300)
            c->tx_open = true;
        if (owner_ok)
            session_ds_reply(w, s, what, r->code, r->esc, r->text);
        return;
    case DX_EOD:
        if (w->cfg->downstream_protocol == 1 && owner_ok) {
            /* LMTP: one reply per accepted recipient (RFC 2033 4.2). The
             * client gets one answer: the worst of them, so a failure is
             * never hidden behind a 250 (a 4xx makes the client retry). */
            if (c->eod_left == 0)
                c->eod_left = s->rcpt_ok ? s->rcpt_ok : 1;
            if (r->code > c->eod_code)
                c->eod_code = r->code;
            if (--c->eod_left) {
                arm_timer(w, c);
                return;
            }
            int code = c->eod_code;
            c->eod_code = 0;
            c->in_data = false;
            c->tx_open = false;
            c->messages++;
            session_ds_reply(w, s, what, code, code == r->code ? r->esc : SLICE_NULL,
                             code == r->code ? r->text : SLICE_LIT("Error: not accepted for every recipient"));
            return;
        }
        c->in_data = false;
        c->tx_open = false;
        c->messages++;
        if (owner_ok)
            session_ds_reply(w, s, what, r->code, r->esc, r->text);
        return;
    default:
        /* A reply nobody asked for: a 421 on idle, or a broken stream. */
        return ds_kill(w, c, "unexpected_reply");
    }
}

void ds_cqe(worker_t *w, dsconn_t *c, enum op op, struct io_uring_cqe *cqe)
{
    int res = cqe->res;
    c->inflight--;
    switch (op) {
    case OP_DS_CONNECT:
        if (res < 0) {
            snprintf(c->err, sizeof c->err, "%s", strerror(-res));
            log_line(LOG_WARN, "event=downstream_connect_failed worker=%d downstream=%s error=\"%s\"", w->id,
                     w->cfg->downstream, c->err);
            w->ds_backoff_ms = w->ds_backoff_ms ? w->ds_backoff_ms * 2 : 100;
            if (w->ds_backoff_ms > 2000)
                w->ds_backoff_ms = 2000; /* a restarted server is found within 2 s */
            w->ds_backoff_until = w->now + w->ds_backoff_ms;
            ds_kill(w, c, "connect_failed");
            break;
        }
        if (c->state == DS_DEAD)
            break;
        c->state = DS_GREETING;
        ds_queue_cmd(w, c, DX_GREETING, NULL, 0);
        arm_recv(w, c);
        break;
    case OP_DS_RECV: {
        c->recv_armed = false;
        if (res <= 0) {
            ds_kill(w, c, res == 0 ? "closed_by_server" : "recv_error");
            break;
        }
        size_t off = 0;
        while (off < (size_t)res && c->state != DS_DEAD) {
            size_t used = 0;
            dsr_reply_t r;
            enum dsr_status st = dsr_feed(&c->parser, c->in + off, (size_t)res - off, &used, &r);
            off += used;
            if (st == DSR_ERROR) {
                ds_kill(w, c, dsr_err_name(dsr_error(&c->parser)));
                break;
            }
            if (st == DSR_AGAIN)
                break;
            on_reply(w, c, &r);
        }
        arm_recv(w, c);
        break;
    }
    case OP_DS_SEND: {
        c->sending = false;
        if (res < 0) {
            ds_kill(w, c, "send_error");
            break;
        }
        memmove(c->out, c->out + res, c->out_len - (uint32_t)res);
        c->out_len -= (uint32_t)res;
        ds_flush(w, c);
        session_t *s = c->owner;
        if (s && s->ds == c && s->gen == c->owner_gen)
            session_process(w, s); /* room again for the body */
        break;
    }
    default:
        break;
    }
}

void ds_timeout(worker_t *w, dsconn_t *c)
{
    ds_kill(w, c, "timeout");
}

void ds_shutdown_idle(worker_t *w)
{
    for (uint32_t i = 0; i < w->nds_slots; i++)
        if (w->ds[i] && w->ds[i]->state == DS_READY)
            ds_kill(w, w->ds[i], "draining");
}

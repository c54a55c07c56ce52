/*
 * session.c - one client connection: the bridge between the io_uring
 * completions and the I/O-free engine (core/smtp.h).
 *
 * Received bytes stay in the provided buffer they arrived in: the session
 * feeds them to the engine in place and gives each buffer back to the ring
 * as soon as the engine has consumed it. While the engine waits for a verdict
 * (the downstream's answer) the unread rest is held, and past HELD_CANCEL
 * buffers the multishot recv is cancelled, so a pipelining client cannot
 * hoard the worker's buffers; it is re-armed once the held bytes are used.
 *
 * Replies from one pass over the input are gathered and go out in one send.
 * Relay-through: the client's answer to MAIL, RCPT, DATA and the end of data
 * is the downstream's answer to the same command; mxgate never says 250 for a
 * message no downstream accepted.
 */
#include "worker.h"

#include "spf.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

session_t *session_get(worker_t *w, uint32_t idx, uint32_t gen)
{
    if (idx >= w->nsess_slots || !w->sess[idx] || (w->sess_gen[idx] & 0xffffffu) != gen)
        return NULL;
    return w->sess[idx];
}

static int slot_alloc(worker_t *w)
{
    if (w->nsess_free)
        return (int)w->sess_free[--w->nsess_free];
    uint32_t n = w->nsess_slots ? w->nsess_slots * 2 : 1024;
    session_t **ns = realloc(w->sess, n * sizeof *ns);
    if (!ns)
        return -1;
    w->sess = ns;
    uint32_t *ng = realloc(w->sess_gen, n * sizeof *ng);
    if (!ng)
        return -1;
    w->sess_gen = ng;
    uint32_t *nf = realloc(w->sess_free, n * sizeof *nf);
    if (!nf)
        return -1;
    w->sess_free = nf;
    for (uint32_t i = n; i > w->nsess_slots + 1; i--)
        w->sess_free[w->nsess_free++] = i - 1;
    for (uint32_t i = w->nsess_slots; i < n; i++) {
        w->sess[i] = NULL;
        w->sess_gen[i] = 0;
    }
    uint32_t slot = w->nsess_slots;
    w->nsess_slots = n;
    return (int)slot;
}

static uint16_t ip_slot(const session_t *s)
{
    uint32_t h = 2166136261u;
    for (int i = 0; i < 16; i++)
        h = (h ^ s->addr[i]) * 16777619u;
    return (uint16_t)(h ^ (h >> 16));
}

static void fmt_ip(const session_t *s, char *buf, size_t n)
{
    if (!inet_ntop(s->family, s->addr, buf, (socklen_t)n))
        snprintf(buf, n, "?");
}

/* The transaction's sender, from the copy kept for logging ("from=<...>"). */
slice_t session_sender(const session_t *s)
{
    if (!s->txlog || s->txlog_len < 7 || memcmp(s->txlog, "from=<", 6) != 0)
        return slice_make("", 0);
    const char *e = memchr(s->txlog + 6, '>', s->txlog_len - 6);
    return e ? slice_make(s->txlog + 6, (size_t)(e - s->txlog - 6)) : slice_make("", 0);
}

static void path_of(slice_t mailbox, bool postmaster, smtp_path_t *p)
{
    memset(p, 0, sizeof *p);
    p->mailbox = mailbox;
    p->null = mailbox.len == 0;
    p->postmaster = postmaster;
    const char *at = mailbox.len ? memrchr(mailbox.ptr, '@', mailbox.len) : NULL;
    if (at) {
        p->local = slice_make(mailbox.ptr, (size_t)(at - mailbox.ptr));
        p->domain = slice_make(at + 1, (size_t)(mailbox.ptr + mailbox.len - at - 1));
    } else {
        p->local = mailbox;
    }
}

/* What the filters see of this session. */
static void facts_init(worker_t *w, session_t *s, filter_facts_t *fx)
{
    memset(fx, 0, sizeof *fx);
    fx->cfg = w->cfg;
    fx->host = &w->host;
    fx->session = s;
    fx->family = s->family;
    fx->addr = s->addr;
    fx->helo = s->helo ? slice_make(s->helo, strlen(s->helo)) : slice_make("", 0);
    fx->messages = s->txn;
    fx->rcpts = s->rcpts_conn;
    fx->spf = &s->spf;
}

/* The facts within a transaction: the sender from the session's copy. */
static void facts_tx(worker_t *w, session_t *s, filter_facts_t *fx, smtp_path_t *sender)
{
    facts_init(w, s, fx);
    path_of(session_sender(s), false, sender);
    fx->sender = sender;
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
    s->flags &= (uint16_t)~SF_CANCELLED;
}

static void cancel_recv(worker_t *w, session_t *s)
{
    struct io_uring_sqe *sqe = worker_sqe(w);
    io_uring_prep_cancel64(sqe, ud_make(OP_RECV, s->idx, s->gen), 0);
    io_uring_sqe_set_data64(sqe, ud_make(OP_CANCEL, s->idx, s->gen));
    s->inflight++;
    s->flags |= SF_CANCELLED;
}

static void refresh_timer(worker_t *w, session_t *s)
{
    if (s->smtp.state == SMTP_S_DATA)
        tlist_put(&w->t_data, &s->timer, w->now + (uint64_t)w->cfg->data_timeout * 1000);
    else
        tlist_put(&w->t_cmd, &s->timer, w->now + (uint64_t)w->cfg->command_timeout * 1000);
}

static void txlog_add(session_t *s, const char *fmt, const char *p, size_t n)
{
    size_t need = s->txlog_len + n + 16;
    if (need > 4096)
        return; /* enough for a log line; the rest is counted, not listed */
    if (need > s->txlog_cap) {
        char *nb = realloc(s->txlog, need * 2);
        if (!nb)
            return;
        s->txlog = nb;
        s->txlog_cap = (uint32_t)need * 2;
    }
    int k = snprintf(s->txlog + s->txlog_len, s->txlog_cap - s->txlog_len, fmt, (int)n, p);
    if (k > 0)
        s->txlog_len += (uint32_t)k;
}

/* Ends the worker's side of a transaction: the downstream lease, the body. */
static void tx_abort(worker_t *w, session_t *s)
{
    if (s->flags & SF_DSWAIT)
        ds_unqueue(w, s);
    if (s->ds) {
        dsconn_t *c = s->ds;
        s->ds = NULL;
        ds_release(w, c, true);
    }
    free(s->mbuf);
    s->mbuf = NULL;
    s->mlen = s->mcap = 0;
    s->txlog_len = 0;
    s->rcpts = s->rcpt_ok = 0;
    s->local_code = 0;
    spfc_cancel(w, s);
    s->wait_stage = 0;
    free(s->wait_rcpt);
    s->wait_rcpt = NULL;
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

static void session_free(worker_t *w, session_t *s)
{
    w->sess[s->idx] = NULL;
    w->sess_gen[s->idx]++;
    w->sess_free[w->nsess_free++] = s->idx;
    w->nsessions--;
    close(s->fd);
    smtp_free(&s->smtp);
    free(s->send);
    free(s->helo);
    free(s->txlog);
    spf_state_free(&s->spf);
    free(s);
}

static void session_close(worker_t *w, session_t *s, const char *why)
{
    if (s->flags & SF_CLOSING)
        return;
    s->flags |= SF_CLOSING;
    if (s->flags & SF_STARVED) {
        s->flags &= (uint16_t)~SF_STARVED;
        w->nstarved--;
    }
    tx_abort(w, s);
    tlist_del(&s->timer);
    for (uint16_t i = 0; i < s->nheld; i++)
        buf_release(w, s->held[i].bid);
    s->nheld = 0;
    held_shrink(s);
    shutdown(s->fd, SHUT_RDWR); /* ends the multishot recv */
    char ip[64];
    fmt_ip(s, ip, sizeof ip);
    log_line(LOG_INFO, "event=disconnect session=%016llx client=%s helo=\"%s\" messages=%u commands=%u errors=%u "
                       "reason=%s duration_ms=%llu",
             (unsigned long long)s->id, ip, s->helo ? s->helo : "", s->smtp.messages, s->smtp.commands,
             s->smtp.errors, why, (unsigned long long)(w->now - s->start_ms));
    atomic_fetch_sub(&w->limits->total, 1);
    atomic_fetch_sub(&w->limits->per_ip[ip_slot(s)], 1);
    /* Freed by session_reap after this loop turn, once nothing is in flight:
     * callers up the stack may still hold the pointer. */
    tlist_put(&w->reap, &s->timer, 0);
}

void session_reap(worker_t *w)
{
    tnode_t *n = w->reap.next;
    while (n != &w->reap) {
        tnode_t *next = n->next;
        session_t *s = (session_t *)((char *)n - offsetof(session_t, timer));
        if (s->inflight == 0) {
            tlist_del(n);
            session_free(w, s);
        }
        n = next;
    }
}

/* Move what the engine wrote into this session's send queue and send it. */
void session_flush(worker_t *w, session_t *s)
{
    smtp_out_t *o = &w->scratch;
    if (o->len) {
        if (!(s->flags & SF_CLOSING)) {
            uint32_t need = s->send_len + (uint32_t)o->len;
            if (need > s->send_cap) {
                uint32_t cap = s->send_cap ? s->send_cap : 512;
                while (cap < need)
                    cap *= 2;
                char *nb = realloc(s->send, cap);
                if (!nb) {
                    o->len = 0;
                    session_close(w, s, "out_of_memory");
                    return;
                }
                s->send = nb;
                s->send_cap = cap;
            }
            memcpy(s->send + s->send_len, o->buf, o->len);
            s->send_len = need;
        }
        o->len = 0;
    }
    if (s->flags & (SF_CLOSING | SF_SENDING))
        return;
    if (s->send_len > s->send_off) {
        struct io_uring_sqe *sqe = worker_sqe(w);
        s->send_inflight = s->send_len - s->send_off;
        io_uring_prep_send(sqe, s->fd, s->send + s->send_off, s->send_inflight, MSG_NOSIGNAL);
        io_uring_sqe_set_data64(sqe, ud_make(OP_SEND, s->idx, s->gen));
        s->inflight++;
        s->flags |= SF_SENDING;
    } else if (s->flags & SF_QUIT) {
        session_close(w, s, "quit");
    }
}

static void verdict(worker_t *w, session_t *s, int code, const char *esc, const char *text)
{
    smtp_reply(&s->smtp, code, esc, text);
    session_flush(w, s);
}

/* After a pass: whether to read more, or stop reading for backpressure. */
static void recv_policy(worker_t *w, session_t *s)
{
    if (s->flags & (SF_CLOSING | SF_QUIT))
        return;
    bool blocked = s->send_len - s->send_off > SEND_HIGH || s->nheld >= HELD_CANCEL;
    if ((s->flags & SF_RECV) && blocked && !(s->flags & SF_CANCELLED))
        cancel_recv(w, s);
    else if (!(s->flags & SF_RECV) && !blocked && !(s->flags & SF_STARVED))
        arm_recv(w, s);
}

void session_accept(worker_t *w, int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    session_t *s = calloc(1, sizeof *s);
    int slot = s ? slot_alloc(w) : -1;
    if (slot < 0 || getpeername(fd, (struct sockaddr *)&ss, &sl)) {
        free(s);
        close(fd);
        return;
    }
    s->fd = fd;
    s->held = s->held_inline;
    s->held_cap = HELD_INLINE;
    if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        s->family = AF_INET6;
        memcpy(s->addr, &a->sin6_addr, 16);
        s->port = ntohs(a->sin6_port);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        s->family = AF_INET;
        memcpy(s->addr, &a->sin_addr, 4);
        s->port = ntohs(a->sin_port);
    }
    int total = atomic_fetch_add(&w->limits->total, 1) + 1;
    int per_ip = atomic_fetch_add(&w->limits->per_ip[ip_slot(s)], 1) + 1;
    s->idx = (uint32_t)slot;
    s->gen = ++w->sess_gen[slot] & 0xffffffu;
    w->sess[slot] = s;
    w->nsessions++;
    w->n_conn++;
    s->id = w->next_id++;
    s->start_ms = w->now;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    smtp_init(&s->smtp, &w->smtp_cfg, &w->scratch);
    char ip[64];
    fmt_ip(s, ip, sizeof ip);
    filter_facts_t fx;
    facts_init(w, s, &fx);
    fx.conn_total = (uint32_t)total;
    fx.conn_per_ip = (uint32_t)per_ip;
    filter_verdict_t v;
    if (filter_run(w->chain, FS_CONNECT, &fx, &v) >= FA_REJECT) {
        smtp_close(&s->smtp, v.act == FA_WAIT ? 421 : v.code, v.act == FA_WAIT ? "4.3.0" : v.esc,
                   v.act == FA_WAIT ? "Error: try again later" : v.text);
        log_line(LOG_WARN, "event=refused session=%016llx client=%s reason=%s", (unsigned long long)s->id, ip,
                 v.reason == FR_CONN_TOTAL ? "max_connections" : v.reason == FR_CONN_PER_IP ? "max_connections_per_ip"
                                                                                           : "filter");
        s->flags |= SF_QUIT;
        session_flush(w, s);
        return;
    }
    log_line(LOG_DEBUG, "event=connect session=%016llx client=%s port=%u", (unsigned long long)s->id, ip, s->port);
    arm_recv(w, s);
    if (w->cfg->greeting_delay) {
        /* postscreen's pregreet test: a client that talks before it hears
         * the 220 is a bot; the engine answers it 554 and closes. */
        tlist_put(&w->t_greet, &s->timer, w->now + w->cfg->greeting_delay);
        return;
    }
    session_greet(w, s);
}

void session_greet(worker_t *w, session_t *s)
{
    if (s->flags & SF_CLOSING || s->smtp.state != SMTP_S_CONNECT)
        return;
    smtp_greet(&s->smtp);
    refresh_timer(w, s);
    session_flush(w, s);
}

/* ---- transactions ---- */

static const char *esc_or(slice_t esc, int code, char *buf)
{
    if (esc.len && esc.len < 12) {
        memcpy(buf, esc.ptr, esc.len);
        buf[esc.len] = 0;
        return buf;
    }
    buf[0] = (char)('0' + (code / 100) % 10);
    memcpy(buf + 1, ".0.0", 5);
    return buf;
}

static void received_header(worker_t *w, session_t *s, char *out, size_t n, size_t *len)
{
    char ip[64];
    fmt_ip(s, ip, sizeof ip);
    /* localtime_r takes glibc's process-wide tz lock: once a second per
     * worker thread is enough for a date with one-second resolution. */
    static __thread time_t date_sec = -1;
    static __thread char date[64];
    time_t t = time(NULL);
    if (t != date_sec) {
        struct tm tm;
        localtime_r(&t, &tm);
        strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S %z", &tm);
        date_sec = t;
    }
    const char *proto = s->smtp.tx.params.smtputf8 ? "UTF8SMTP" : s->smtp.esmtp ? "ESMTP" : "SMTP";
    char forpart[300] = "";
    if (s->rcpt_ok == 1 && s->txlog) {
        const char *r = strstr(s->txlog, " rcpt=<");
        if (r) {
            const char *e = strchr(r + 7, '>');
            if (e && e - r < 280)
                snprintf(forpart, sizeof forpart, "\r\n\tfor <%.*s>", (int)(e - r - 7), r + 7);
        }
    }
    int k = snprintf(out, n, "Received: from %s (%s%s%s)\r\n\tby %s (mxgate) with %s id %016llx%s;\r\n\t%s\r\n",
                     s->helo ? s->helo : "unknown", s->family == AF_INET6 ? "[IPv6:" : "[", ip, "]",
                     w->cfg->hostname, proto, (unsigned long long)s->id * 1000003u + s->txn, forpart, date);
    *len = k > 0 && (size_t)k < n ? (size_t)k : 0;
}

static void log_tx(worker_t *w, session_t *s, const char *result)
{
    char ip[64];
    fmt_ip(s, ip, sizeof ip);
    log_line(LOG_INFO, "event=tx session=%016llx tx=%u client=%s helo=\"%s\" %.*s rcpts=%u spf=%s size=%llu "
                       "result=\"%s\" duration_ms=%llu",
             (unsigned long long)s->id, s->txn, ip, s->helo ? s->helo : "", (int)s->txlog_len,
             s->txlog ? s->txlog : "", s->rcpt_ok,
             s->spf.status == SPF_DONE ? spf_result_name(s->spf.result) : s->spf.status ? "pending" : "-", (unsigned long long)(s->smtp.state == SMTP_S_DATA ? s->smtp.tx.scan.size : s->smtp.last_size), result,
             (unsigned long long)(w->now - s->tx_ms));
}

static bool relay_mode(const worker_t *w)
{
    return w->cfg->downstream[0] != 0;
}

static void on_mail(worker_t *w, session_t *s, const smtp_event_t *ev)
{
    if (w->draining) {
        smtp_close(&s->smtp, 421, "4.3.2", "Service shutting down, try again later");
        s->flags |= SF_QUIT;
        return;
    }
    tx_abort(w, s);
    s->txn++;
    s->tx_ms = w->now;
    filter_facts_t fx;
    filter_verdict_t v;
    facts_init(w, s, &fx);
    fx.sender = &ev->path;
    enum filter_act a = filter_run(w->chain, FS_MAIL, &fx, &v);
    if (a == FA_REJECT || a == FA_TEMPFAIL) {
        spfc_cancel(w, s);
        if (v.code == 421) {
            smtp_close(&s->smtp, v.code, v.esc, v.text);
            s->flags |= SF_QUIT;
        } else {
            smtp_reply(&s->smtp, v.code, v.esc, v.text);
        }
        return;
    }
    txlog_add(s, "from=<%.*s>", ev->path.mailbox.ptr, ev->path.mailbox.len);
    if (!relay_mode(w)) {
        smtp_accept(&s->smtp);
        return;
    }
    /* The event's slices die with the receive buffer; the pool may need time
     * to connect, so the downstream command is built now. */
    ds_acquire(w, s);
}

/* MAIL FROM for the downstream, with the parameters it understands. */
size_t session_mail_cmd(const session_t *s, uint32_t caps, char *out, size_t n)
{
    const smtp_mail_params_t *p = &s->smtp.tx.params;
    const char *from = s->txlog ? s->txlog + 6 : "";
    const char *end = strchr(from, '>');
    int k = snprintf(out, n, "MAIL FROM:<%.*s>%s%s", end ? (int)(end - from) : 0, from,
                     p->body == BODY_8BITMIME && (caps & DSR_CAP_8BITMIME) ? " BODY=8BITMIME" : "",
                     p->smtputf8 && (caps & DSR_CAP_SMTPUTF8) ? " SMTPUTF8" : "");
    if (k > 0 && p->has_size && (caps & DSR_CAP_SIZE) && (size_t)k + 30 < n)
        k += snprintf(out + k, n - (size_t)k, " SIZE=%llu", (unsigned long long)p->size);
    if (k > 0 && (size_t)k + 2 < n) {
        memcpy(out + k, "\r\n", 2);
        k += 2;
    }
    return k > 0 && (size_t)k < n ? (size_t)k : 0;
}

void session_ds_ready(worker_t *w, session_t *s)
{
    char cmd[600];
    dsconn_t *c = s->ds;
    if (s->smtp.tx.params.smtputf8 && !(c->caps & DSR_CAP_SMTPUTF8)) {
        s->ds = NULL;
        ds_release(w, c, true);
        verdict(w, s, 553, "5.6.7", "Error: the downstream server does not support SMTPUTF8");
        session_process(w, s);
        return;
    }
    size_t n = session_mail_cmd(s, c->caps, cmd, sizeof cmd);
    if (!(c->caps & DSR_CAP_PIPELINING)) {
        ds_send_cmd(w, c, DX_MAIL, cmd, n);
        return;
    }
    /* PIPELINING downstream: the MAIL waits in the send buffer for the
     * RCPTs and DATA the client pipelined after it; one write at the end of
     * the pass carries them all (session_process). */
    if (!ds_queue_cmd(w, c, DX_MAIL, cmd, n)) {
        session_ds_failed(w, s, 451, "4.3.0", "Error: out of resources, try again later");
        return;
    }
    smtp_defer(&s->smtp);
    if (!(s->flags & SF_INPROC))
        session_process(w, s); /* reads on, then flushes the group */
}

/* A verdict of our own for the pending command, given in its turn: behind
 * the forwarded commands still waiting for the downstream's replies. */
static void local_verdict(worker_t *w, session_t *s, const filter_verdict_t *v)
{
    if (smtp_deferred(&s->smtp) && s->ds && v->reason != FR_NONE &&
        ds_queue_cmd(w, s->ds, (enum ds_expect)(DX_LOCAL + v->reason), NULL, 0)) {
        smtp_defer(&s->smtp); /* keeps the pipelined group whole */
        return;
    }
    if (smtp_deferred(&s->smtp)) {
        s->local_code = v->code, s->local_esc = v->esc, s->local_text = v->text;
        return;
    }
    smtp_reply(&s->smtp, v->code, v->esc, v->text);
    session_flush(w, s);
}

static void local_error(worker_t *w, session_t *s, int code, const char *esc, const char *text)
{
    filter_verdict_t v = {FA_TEMPFAIL, FR_NONE, code, esc, text};
    local_verdict(w, s, &v);
}

/* Deferred verdicts are all in: a local verdict that waited goes out. */
static void local_flush(worker_t *w, session_t *s)
{
    if (!s->local_code || smtp_deferred(&s->smtp))
        return;
    int code = s->local_code;
    s->local_code = 0;
    smtp_reply(&s->smtp, code, s->local_esc, s->local_text);
    session_flush(w, s);
}

void session_ds_failed(worker_t *w, session_t *s, int code, const char *esc, const char *text)
{
    s->ds = NULL;
    while (smtp_deferred(&s->smtp))
        smtp_resolve(&s->smtp, code, esc, text);
    s->local_code = 0;
    verdict(w, s, code, esc, text);
    session_process(w, s);
}

/* A client command for the downstream: pipelined when it can be. */
static void ds_command(worker_t *w, session_t *s, enum ds_expect what, const char *cmd, size_t n)
{
    if (!(s->ds->caps & DSR_CAP_PIPELINING)) {
        ds_send_cmd(w, s->ds, what, cmd, n);
        return;
    }
    if (!ds_queue_cmd(w, s->ds, what, cmd, n)) {
        local_error(w, s, 451, "4.3.0", "Error: too many commands in flight, try again later");
        return;
    }
    smtp_defer(&s->smtp);
}

/* The chain's verdict on a recipient, then the recipient goes on. */
static void rcpt_decide(worker_t *w, session_t *s, const smtp_path_t *path)
{
    filter_facts_t fx;
    filter_verdict_t v;
    smtp_path_t sender;
    facts_tx(w, s, &fx, &sender);
    fx.rcpt = path;
    enum filter_act a = filter_run(w->chain, FS_RCPT, &fx, &v);
    if (a == FA_WAIT) {
        /* The event's slices die with the receive buffer: keep the mailbox
         * until the verdict can be given (session_spf_done). */
        s->wait_rcpt = strndup(path->mailbox.ptr, path->mailbox.len);
        if (!s->wait_rcpt) {
            local_error(w, s, 451, "4.3.0", "Error: out of resources, try again later");
            return;
        }
        s->wait_postmaster = path->postmaster;
        s->wait_stage = FS_RCPT;
        return;
    }
    if (a == FA_REJECT || a == FA_TEMPFAIL) {
        local_verdict(w, s, &v);
        return;
    }
    txlog_add(s, " rcpt=<%.*s>", path->mailbox.ptr, path->mailbox.len);
    if (!relay_mode(w)) {
        s->rcpt_ok++;
        smtp_accept(&s->smtp);
        return;
    }
    if (!s->ds) {
        local_error(w, s, 451, "4.4.1", "Error: downstream connection lost");
        return;
    }
    char cmd[600];
    int k = snprintf(cmd, sizeof cmd, "RCPT TO:<%.*s>\r\n", (int)path->mailbox.len, path->mailbox.ptr);
    if (k <= 0 || (size_t)k >= sizeof cmd) {
        filter_reason_reply(FR_TOO_LONG, w->cfg, NULL, &v);
        local_verdict(w, s, &v);
        return;
    }
    ds_command(w, s, DX_RCPT, cmd, (size_t)k);
}

static void on_rcpt(worker_t *w, session_t *s, const smtp_event_t *ev)
{
    s->rcpts++;
    s->rcpts_conn++;
    rcpt_decide(w, s, &ev->path);
}

/* Trace headers for the message: the filters' tags (Received-SPF,
 * Authentication-Results), then our Received. The chain is pure, so running
 * its DATA stage again when the downstream says 354 gives what it gave at
 * DATA. */
static void trace_headers(worker_t *w, session_t *s, char *out, size_t n, size_t *len)
{
    filter_facts_t fx;
    filter_verdict_t v;
    smtp_path_t sender;
    facts_tx(w, s, &fx, &sender);
    fx.hdr = out;
    fx.hdr_cap = n > 1024 ? n - 1024 : 0; /* the Received header's room */
    if (filter_run(w->chain, FS_DATA, &fx, &v) >= FA_REJECT)
        fx.hdr_len = 0;
    size_t rl = 0;
    received_header(w, s, out + fx.hdr_len, n - fx.hdr_len, &rl);
    *len = fx.hdr_len + rl;
}

/* DATA: the chain may refuse the message (SPF at the data stage) or wait. */
static bool data_allowed(worker_t *w, session_t *s)
{
    filter_facts_t fx;
    filter_verdict_t v;
    smtp_path_t sender;
    facts_tx(w, s, &fx, &sender); /* no header buffer: only the verdict is wanted */
    enum filter_act a = filter_run(w->chain, FS_DATA, &fx, &v);
    if (a == FA_WAIT) {
        s->wait_stage = FS_DATA;
        return false;
    }
    if (a == FA_REJECT || a == FA_TEMPFAIL) {
        local_verdict(w, s, &v);
        return false;
    }
    return true;
}

static void on_data(worker_t *w, session_t *s)
{
    if (!data_allowed(w, s))
        return;
    if (!relay_mode(w)) {
        char hdr[4096];
        size_t hl;
        smtp_accept(&s->smtp);
        trace_headers(w, s, hdr, sizeof hdr, &hl);
        s->mcap = 16384 > hl ? 16384 : 2 * hl;
        s->mbuf = malloc(s->mcap);
        if (s->mbuf) {
            memcpy(s->mbuf, hdr, hl);
            s->mlen = hl;
        }
        return;
    }
    if (!s->ds) {
        local_error(w, s, 451, "4.4.1", "Error: downstream connection lost");
        return;
    }
    ds_command(w, s, DX_DATA, "DATA\r\n", 6);
}

static void on_body(worker_t *w, session_t *s, slice_t b)
{
    if (relay_mode(w)) {
        if (s->ds && !ds_append(w, s->ds, b.ptr, b.len))
            log_line(LOG_ERROR, "event=bug session=%016llx what=ds_buffer_overrun", (unsigned long long)s->id);
        return;
    }
    if (!s->mbuf)
        return;
    if (s->mlen + b.len > s->mcap) {
        size_t cap = s->mcap;
        while (cap < s->mlen + b.len)
            cap *= 2;
        char *nb = realloc(s->mbuf, cap);
        if (!nb) {
            free(s->mbuf);
            s->mbuf = NULL;
            return;
        }
        s->mbuf = nb;
        s->mcap = cap;
    }
    memcpy(s->mbuf + s->mlen, b.ptr, b.len);
    s->mlen += b.len;
}

static void tx_done(worker_t *w, session_t *s, const char *result)
{
    log_tx(w, s, result);
    tx_abort(w, s);
    if (w->draining && !(s->flags & SF_QUIT)) {
        smtp_close(&s->smtp, 421, "4.3.2", "Service shutting down, closing transmission channel");
        s->flags |= SF_QUIT;
    }
}

static void on_data_end(worker_t *w, session_t *s)
{
    filter_facts_t fx;
    filter_verdict_t v;
    smtp_path_t sender;
    facts_tx(w, s, &fx, &sender);
    enum filter_act a = filter_run(w->chain, FS_DATA_END, &fx, &v);
    if (a == FA_REJECT || a == FA_TEMPFAIL || a == FA_WAIT) {
        if (s->ds) { /* cut mid-DATA: the downstream drops the message */
            dsconn_t *c = s->ds;
            s->ds = NULL;
            ds_release(w, c, false);
        }
        if (a == FA_WAIT)
            v = (filter_verdict_t){FA_TEMPFAIL, FR_NONE, 451, "4.3.0", "Error: try again later"};
        verdict(w, s, v.code, v.esc, v.text);
        tx_done(w, s, v.text);
        return;
    }
    if (relay_mode(w)) {
        if (!s->ds) {
            verdict(w, s, 451, "4.4.1", "Error: downstream connection lost");
            tx_done(w, s, "451 4.4.1 downstream lost");
            return;
        }
        ds_append(w, s->ds, ".\r\n", 3);
        ds_send_cmd(w, s->ds, DX_EOD, NULL, 0);
        return;
    }
    char name[256], text[300];
    if (!s->mbuf || maildir_deliver(w->cfg->maildir, w->cfg->hostname, s->id, NULL, 0, s->mbuf, s->mlen, name,
                                    sizeof name)) {
        verdict(w, s, 451, "4.3.0", "Error: local delivery failed");
        tx_done(w, s, "451 4.3.0 maildir write failed");
        return;
    }
    snprintf(text, sizeof text, "Ok: delivered as %s", name);
    verdict(w, s, 250, "2.0.0", text);
    w->n_msg++;
    tx_done(w, s, "250 maildir");
}

/* The downstream's answer to the command the session is waiting on. */
void session_ds_reply(worker_t *w, session_t *s, enum ds_expect what, int code, slice_t esc, slice_t text)
{
    char escbuf[16], txt[REPLY_LINE_MAX];
    snprintf(txt, sizeof txt, "%.*s", (int)text.len, text.ptr);
    const char *e = esc_or(esc, code, escbuf);
    bool deferred = what != DX_EOD && smtp_deferred(&s->smtp);
    switch (what) {
    case DX_MAIL:
    case DX_RCPT:
        if (deferred)
            smtp_resolve(&s->smtp, code, e, txt);
        else
            smtp_reply(&s->smtp, code, e, txt);
        if (what == DX_RCPT && code < 400 && s->smtp.state != SMTP_S_HELO)
            s->rcpt_ok++;
        session_flush(w, s);
        break;
    case DX_DATA:
        if (code == 354) {
            if (deferred)
                smtp_resolve(&s->smtp, 354, NULL, "End data with <CR><LF>.<CR><LF>");
            else
                smtp_reply(&s->smtp, 354, NULL, "End data with <CR><LF>.<CR><LF>");
            if (s->smtp.state == SMTP_S_DATA) {
                s->rcpt_ok = s->smtp.tx.rcpt_ok; /* every RCPT verdict is in */
                char hdr[4096];
                size_t hl;
                trace_headers(w, s, hdr, sizeof hdr, &hl);
                ds_append(w, s->ds, hdr, hl);
            } else if (s->ds) {
                /* the downstream waits for a body our client will not send */
                dsconn_t *c = s->ds;
                s->ds = NULL;
                ds_release(w, c, false);
            }
        } else {
            int c2 = code >= 400 ? code : 451;
            const char *e2 = code >= 400 ? e : "4.4.0";
            if (deferred)
                smtp_resolve(&s->smtp, c2, e2, txt);
            else
                smtp_reply(&s->smtp, c2, e2, txt);
        }
        session_flush(w, s);
        break;
    case DX_EOD: {
        char result[REPLY_LINE_MAX + 32];
        verdict(w, s, code, e, txt);
        snprintf(result, sizeof result, "%d %.15s %.480s", code, e, txt);
        if (code < 300)
            w->n_msg++;
        tx_done(w, s, result);
        break;
    }
    default:
        break;
    }
    /* Our own verdicts queued behind this reply go out in their turn. */
    for (enum ds_expect l; s->ds && (l = ds_pop_local(s->ds)) != DX_NONE;) {
        filter_verdict_t v;
        filter_reason_reply((enum filter_reason)(l - DX_LOCAL), w->cfg, &s->spf, &v);
        smtp_resolve(&s->smtp, v.code, v.esc, v.text);
        session_flush(w, s);
    }
    /* Every verdict is in and the MAIL was refused: the downstream has no
     * transaction, so the connection goes back to the pool. */
    if (s->ds && !smtp_deferred(&s->smtp) && s->smtp.state == SMTP_S_HELO && what != DX_EOD) {
        dsconn_t *c = s->ds;
        s->ds = NULL;
        ds_release(w, c, true);
    }
    local_flush(w, s);
    session_process(w, s);
}

static void on_helo(worker_t *w, session_t *s)
{
    filter_facts_t fx;
    filter_verdict_t v;
    facts_init(w, s, &fx);
    enum filter_act a = filter_run(w->chain, FS_HELO, &fx, &v);
    if (a == FA_REJECT || a == FA_TEMPFAIL)
        smtp_reply(&s->smtp, v.code, v.esc, v.text);
    else
        smtp_accept(&s->smtp);
}

/* The SPF result is in: a stage that waited for it goes on. */
void session_spf_done(worker_t *w, session_t *s)
{
    if (s->flags & SF_CLOSING)
        return;
    uint8_t st = s->wait_stage;
    s->wait_stage = 0;
    if (st == FS_RCPT) {
        char *m = s->wait_rcpt;
        s->wait_rcpt = NULL;
        smtp_path_t p;
        path_of(slice_make(m, strlen(m)), s->wait_postmaster, &p);
        rcpt_decide(w, s, &p);
        free(m);
    } else if (st == FS_DATA) {
        on_data(w, s);
    } else {
        return; /* in before anyone asked */
    }
    session_flush(w, s);
    if (!(s->flags & SF_CLOSING))
        session_process(w, s);
}

static void handle_event(worker_t *w, session_t *s, const smtp_event_t *ev)
{
    switch (ev->type) {
    case SMTP_EV_HELO:
    case SMTP_EV_EHLO:
        tx_abort(w, s);
        free(s->helo);
        s->helo = strndup(ev->arg.ptr, ev->arg.len > 255 ? 255 : ev->arg.len);
        for (char *p = s->helo; p && *p; p++)
            if (*p == '"' || *p == '\\')
                *p = '?'; /* it goes into log lines and a header */
        on_helo(w, s);
        break;
    case SMTP_EV_MAIL:
        on_mail(w, s, ev);
        break;
    case SMTP_EV_RCPT:
        on_rcpt(w, s, ev);
        break;
    case SMTP_EV_DATA:
        on_data(w, s);
        break;
    case SMTP_EV_BODY:
        on_body(w, s, ev->arg);
        break;
    case SMTP_EV_DATA_END:
        on_data_end(w, s);
        break;
    case SMTP_EV_DATA_REJECTED:
        w->n_rejected++;
        tx_done(w, s, smtp_err_name(ev->err));
        break;
    case SMTP_EV_RSET:
        tx_abort(w, s);
        break;
    case SMTP_EV_QUIT:
        s->flags |= SF_QUIT;
        break;
    case SMTP_EV_EARLY_TALK:
    case SMTP_EV_ERROR:
        if (ev->err == SMTP_ERR_JUNK || ev->err == SMTP_ERR_TOO_MANY || ev->type == SMTP_EV_EARLY_TALK) {
            char ip[64];
            fmt_ip(s, ip, sizeof ip);
            log_line(LOG_WARN, "event=dropped session=%016llx client=%s reason=%s", (unsigned long long)s->id, ip,
                     ev->type == SMTP_EV_EARLY_TALK ? "early_talker" : smtp_err_name(ev->err));
        }
        break;
    default:
        break;
    }
}

static void process_input(worker_t *w, session_t *s);

/* Feed held input to the engine until it is used up, paused or blocked. */
void session_process(worker_t *w, session_t *s)
{
    if (s->flags & SF_INPROC)
        return; /* a verdict given from inside a pass: that pass reads on */
    s->flags |= SF_INPROC;
    process_input(w, s);
    s->flags &= (uint16_t)~SF_INPROC;
    if (s->ds)
        ds_flush(w, s->ds); /* one write for the pipelined group */
    if (!(s->flags & SF_CLOSING))
        recv_policy(w, s);
}

static void process_input(worker_t *w, session_t *s)
{
    while (s->nheld && !(s->flags & (SF_CLOSING | SF_QUIT))) {
        if (s->send_len - s->send_off > SEND_HIGH)
            break; /* the client is not reading its replies */
        if (s->smtp.state == SMTP_S_DATA && s->ds && ds_room(s->ds) < RECV_BUF_SIZE + 1024)
            break; /* the downstream is slower than the client */
        held_t *h = &s->held[0];
        const char *p = w->bufs + (size_t)h->bid * RECV_BUF_SIZE + h->off;
        size_t n = 0;
        smtp_event_t ev;
        smtp_status_t st = smtp_feed(&s->smtp, p, h->len, &n, &ev);
        if (st == SMTP_EVENT)
            handle_event(w, s, &ev); /* before the buffer may go back: ev points into it */
        if (s->flags & SF_CLOSING)
            return; /* the held queue is gone with the session's buffers */
        h->off = (uint16_t)(h->off + n);
        h->len = (uint16_t)(h->len - n);
        if (h->len == 0) { /* event slices are used up by handle_event: give it back */
            buf_release(w, h->bid);
            memmove(&s->held[0], &s->held[1], (size_t)(--s->nheld) * sizeof s->held[0]);
            held_shrink(s);
        }
        session_flush(w, s);
        if (st == SMTP_PAUSED || st == SMTP_CLOSED || (s->flags & SF_CLOSING))
            break;
    }
    if (s->flags & SF_CLOSING)
        return;
    if (s->smtp.state == SMTP_S_CLOSED)
        s->flags |= SF_QUIT;
    session_flush(w, s);
}

void session_cqe(worker_t *w, session_t *s, enum op op, struct io_uring_cqe *cqe)
{
    int res = cqe->res;
    switch (op) {
    case OP_RECV:
        if (cqe->flags & IORING_CQE_F_BUFFER) {
            uint16_t bid = (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
            if (res <= 0 || (s->flags & SF_CLOSING)) {
                buf_release(w, bid);
            } else if (!held_push(s, (held_t){ bid, 0, (uint16_t)res })) {
                buf_release(w, bid);
                session_close(w, s, "out_of_memory");
            } else {
                w->buf_refs[bid] = 1;
            }
        }
        if (!(cqe->flags & IORING_CQE_F_MORE)) {
            s->inflight--;
            s->flags &= (uint16_t)~SF_RECV;
            if (res == -ENOBUFS && !(s->flags & SF_CLOSING)) {
                s->flags |= SF_STARVED;
                w->nstarved++;
            } else if (res == 0 || (res < 0 && res != -ECANCELED && res != -ENOBUFS)) {
                if (!(s->flags & SF_CLOSING))
                    session_close(w, s, res == 0 ? "client_closed" : "recv_error");
            }
        }
        if (res > 0 && !(s->flags & SF_CLOSING)) {
            refresh_timer(w, s);
            session_process(w, s);
        } else if (!(s->flags & SF_CLOSING) && !(cqe->flags & IORING_CQE_F_MORE)) {
            recv_policy(w, s);
        }
        break;
    case OP_SEND:
        s->inflight--;
        s->flags &= (uint16_t)~SF_SENDING;
        if (res < 0) {
            session_close(w, s, "send_error");
            break;
        }
        s->send_off += (uint32_t)res;
        if (s->send_off == s->send_len) {
            s->send_off = s->send_len = 0;
            /* Between transactions a session holds no send buffer (idle
             * connections stay small); within one it keeps it, so a message
             * costs no allocation per reply. An outsized one always goes. */
            bool in_tx = s->smtp.state >= SMTP_S_MAIL || smtp_pending(&s->smtp) || smtp_deferred(&s->smtp);
            if (s->send_cap > 4096 || (!in_tx && s->nheld == 0)) {
                free(s->send);
                s->send = NULL;
                s->send_cap = 0;
            }
        }
        if (!(s->flags & SF_CLOSING)) {
            session_flush(w, s);
            if (!(s->flags & SF_CLOSING))
                session_process(w, s);
        }
        break;
    case OP_CANCEL:
        s->inflight--;
        break;
    default:
        break;
    }
}

void session_timeout(worker_t *w, session_t *s)
{
    if (s->flags & SF_CLOSING)
        return;
    if ((s->ds && (smtp_pending(&s->smtp) != SMTP_EV_NONE || smtp_deferred(&s->smtp))) || s->wait_stage) {
        refresh_timer(w, s); /* waiting on the downstream or on SPF, whose own timers run */
        return;
    }
    smtp_close(&s->smtp, 421, "4.4.2", "Error: timeout exceeded");
    if (s->smtp.tx.rcpt_ok || s->txlog_len)
        tx_done(w, s, "421 timeout");
    s->flags |= SF_QUIT;
    session_flush(w, s);
}

void session_drain(worker_t *w, session_t *s)
{
    if (s->flags & (SF_CLOSING | SF_QUIT))
        return;
    if (s->smtp.state >= SMTP_S_MAIL || smtp_pending(&s->smtp) != SMTP_EV_NONE)
        return; /* finishes its transaction first (tx_done closes it) */
    smtp_close(&s->smtp, 421, "4.3.2", "Service shutting down, closing transmission channel");
    s->flags |= SF_QUIT;
    session_flush(w, s);
}

/*
 * scanner.c - the content stage's rspamd client (see scanner.h).
 *
 * A request lives in a slot named by (index, generation) in the ring's
 * user_data, and has at most one operation in flight: connect, sendmsg or
 * recv. That keeps its end simple: whatever ends it early (the deadline,
 * the owner gone) cancels that one operation and shuts the socket down,
 * and the request is finished when the operation's completion comes back,
 * never before, so the message buffer and the iovecs are never touched
 * or freed while the kernel may still read them.
 */
#include "scanner.h"

#include "config.h"
#include "lend.h"
#include "worker.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define IN_CAP 8192u       /* one receive; rspamd's verdict is a few KiB */
#define IOV_BATCH 256u     /* iovecs per sendmsg (below IOV_MAX) */
#define KEEP_FREE 16u      /* finished requests kept for reuse per worker */

enum phase { P_CONNECT = 1, P_SEND, P_RECV };

typedef struct scan_req scan_req_t;
struct scan_req {
    uint32_t idx;
    uint8_t phase;
    bool inflight;          /* one ring operation is out */
    bool orphan;            /* the owner is gone: no callback */
    bool ended;             /* the end is decided (status below); waiting for the operation */
    enum scanner_status status;
    const char *why;
    int fd;
    scanner_owner_t owner;
    uint64_t start_ms;
    timer_node_t timer;
    struct sockaddr_storage peer;
    socklen_t peerlen;
    /* the lent message */
    char *buf;
    size_t cap, held;
    int buf_fd;             /* its file when spilled; -1 */
    /* the request: iov[0] the head, then the message around its stuffing dots */
    char *head;
    size_t head_cap;
    struct iovec *iov;
    size_t niov, iov_cap, at; /* iov[at] is the next to send */
    struct msghdr msg;
    rspamd_resp_t resp;
    scan_req_t *next_free;
    char in[IN_CAP];
};

typedef struct scanner {
    scanner_done_fn *done;
    scan_req_t **slot;
    uint32_t *gen;
    uint32_t nslots, live;
    uint32_t *free_idx;
    uint32_t nfree_idx;
    scan_req_t *spare;      /* finished requests, their buffers kept */
    uint32_t nspare;
    rspamd_verdict_t *v;    /* ~70 KiB: the verdict being handed over */
} scanner_t;

const char *scanner_status_name(enum scanner_status s)
{
    static const char *const names[] = { "ok", "connect", "timeout", "io", "http", "response", "request" };
    return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "?";
}

int scanner_init(worker_t *w, scanner_done_fn *done, char *err, size_t errlen)
{
    scanner_t *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "scanner: out of memory");
        return -1;
    }
    s->done = done;
    w->scanner = s;
    return 0;
}

static void req_free(scan_req_t *r)
{
    free(r->head);
    free(r->iov);
    rspamd_resp_free(&r->resp);
    free(r);
}

void scanner_destroy(worker_t *w)
{
    scanner_t *s = w->scanner;
    if (!s)
        return;
    for (uint32_t i = 0; i < s->nslots; i++)
        if (s->slot[i]) {
            scan_req_t *r = s->slot[i];
            if (r->fd >= 0)
                close(r->fd);
            RECLAIM(r->buf, r->cap);
            scanner_buf_free(w, r->buf, r->cap, r->held, r->buf_fd);
            req_free(r);
        }
    while (s->spare) {
        scan_req_t *r = s->spare;
        s->spare = r->next_free;
        req_free(r);
    }
    free(s->slot);
    free(s->gen);
    free(s->free_idx);
    free(s->v);
    free(s);
    w->scanner = NULL;
}

bool scanner_idle(const worker_t *w)
{
    return !w->scanner || w->scanner->live == 0;
}

bool scanner_hold(worker_t *w, const mx_config_t *cfg, size_t want)
{
    uint64_t held = m_get(&w->m.content_held);
    if (held + want > cfg->content_memory_limit)
        return false;
    m_set(&w->m.content_held, held + want);
    return true;
}

void scanner_unhold(worker_t *w, size_t n)
{
    uint64_t held = m_get(&w->m.content_held);
    m_set(&w->m.content_held, held > n ? held - n : 0);
}

bool scanner_spill_hold(worker_t *w, const mx_config_t *cfg, size_t want)
{
    uint64_t held = m_get(&w->m.content_spilled);
    if (w->limits->spill_dirfd < 0 || held + want > cfg->content_spill_limit)
        return false;
    m_set(&w->m.content_spilled, held + want);
    return true;
}

void scanner_spill_unhold(worker_t *w, size_t n)
{
    uint64_t spilled = m_get(&w->m.content_spilled);
    m_set(&w->m.content_spilled, spilled > n ? spilled - n : 0);
}

void scanner_buf_free(worker_t *w, char *buf, size_t cap, size_t held, int fd)
{
    if (fd < 0) {
        free(buf);
        scanner_unhold(w, held);
        return;
    }
    if (buf)
        munmap(buf, cap);
    close(fd);
    scanner_spill_unhold(w, cap);
}

/* ---- slots ---- */

static uint64_t req_id(const scanner_t *s, const scan_req_t *r)
{
    return (uint64_t)s->gen[r->idx] << 32 | (uint64_t)(r->idx + 1);
}

static scan_req_t *req_new(scanner_t *s)
{
    if (s->nfree_idx == 0) {
        uint32_t n = s->nslots ? s->nslots * 2 : 64;
        scan_req_t **slot = realloc(s->slot, n * sizeof *slot);
        if (!slot)
            return NULL;
        s->slot = slot;
        uint32_t *gen = realloc(s->gen, n * sizeof *gen);
        if (!gen)
            return NULL;
        s->gen = gen;
        uint32_t *fi = realloc(s->free_idx, n * sizeof *fi);
        if (!fi)
            return NULL;
        s->free_idx = fi;
        for (uint32_t i = n; i-- > s->nslots;) {
            s->slot[i] = NULL;
            s->gen[i] = 0;
            s->free_idx[s->nfree_idx++] = i;
        }
        s->nslots = n;
    }
    scan_req_t *r = s->spare;
    if (r) {
        s->spare = r->next_free;
        s->nspare--;
        char *head = r->head;
        size_t head_cap = r->head_cap;
        struct iovec *iov = r->iov;
        size_t iov_cap = r->iov_cap;
        rspamd_resp_free(&r->resp);
        memset(r, 0, offsetof(scan_req_t, in));
        r->head = head;
        r->head_cap = head_cap;
        r->iov = iov;
        r->iov_cap = iov_cap;
    } else if (!(r = calloc(1, sizeof *r))) {
        return NULL;
    }
    r->idx = s->free_idx[--s->nfree_idx];
    r->fd = -1;
    r->buf_fd = -1;
    s->gen[r->idx] = (s->gen[r->idx] + 1) & GEN_MASK;
    s->slot[r->idx] = r;
    s->live++;
    return r;
}

static void req_release(worker_t *w, scan_req_t *r)
{
    scanner_t *s = w->scanner;
    timer_stop(&w->timers, &r->timer);
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
    if (r->buf) { /* the owner is gone: nobody takes the message back */
        RECLAIM(r->buf, r->cap);
        scanner_buf_free(w, r->buf, r->cap, r->held, r->buf_fd);
        r->buf = NULL;
    }
    s->slot[r->idx] = NULL;
    s->free_idx[s->nfree_idx++] = r->idx;
    s->live--;
    if (s->nspare < KEEP_FREE) {
        r->next_free = s->spare;
        s->spare = r;
        s->nspare++;
    } else {
        req_free(r);
    }
}

/* ---- the end ---- */

static void finish(worker_t *w, scan_req_t *r)
{
    scanner_t *s = w->scanner;
    static const uint8_t err_of[] = {
        [SCANNER_CONNECT] = MCE_CONNECT, [SCANNER_TIMEOUT] = MCE_TIMEOUT,   [SCANNER_IO] = MCE_IO,
        [SCANNER_HTTP] = MCE_HTTP,       [SCANNER_RESPONSE] = MCE_RESPONSE, [SCANNER_REQUEST] = MCE_REQUEST,
    };
    if (r->status != SCANNER_OK && !r->orphan)
        m_inc(&w->m.content_errors[err_of[r->status]]);
    if (!r->orphan) {
        RECLAIM(r->buf, r->cap);
        scanner_result_t res = {
            .status = r->status,
            .http_code = rspamd_resp_code(&r->resp),
            .v = r->status == SCANNER_OK ? s->v : NULL,
            .why = r->why,
            .buf = r->buf,
            .cap = r->cap,
            .held = r->held,
            .fd = r->buf_fd,
            .ms = w->now - r->start_ms,
        };
        r->buf = NULL; /* the owner's again, and its count */
        if (r->status == SCANNER_OK)
            m_observe(&w->m.content_latency, m_latency_bounds, res.ms * 1000);
        scanner_owner_t o = r->owner;
        s->done(w, &o, &res);
    }
    req_release(w, r);
}

/* Decide the end now; it is carried out when the operation in flight (if
 * any) has come back. */
static void end_req(worker_t *w, scan_req_t *r, enum scanner_status st, const char *why)
{
    if (!r->ended) {
        r->ended = true;
        r->status = st;
        r->why = why;
    }
    timer_stop(&w->timers, &r->timer);
    if (!r->inflight) {
        finish(w, r);
        return;
    }
    /* Cancel the one operation out, and shut the socket so that a send the
     * kernel is already copying ends too. */
    struct io_uring_sqe *sqe = worker_sqe(w);
    io_uring_prep_cancel64(sqe, ud_make(OP_SCAN, r->idx, w->scanner->gen[r->idx]), 0);
    io_uring_sqe_set_data64(sqe, ud_make(OP_SCAN_CANCEL, 0, 0));
    if (r->fd >= 0)
        shutdown(r->fd, SHUT_RDWR);
}

static void on_deadline(worker_t *w, timer_node_t *t)
{
    scan_req_t *r = TIMER_OWNER(t, scan_req_t, timer);
    end_req(w, r, SCANNER_TIMEOUT, "rspamd_timeout");
}

/* ---- the exchange ---- */

static void submit(worker_t *w, scan_req_t *r, struct io_uring_sqe *sqe)
{
    io_uring_sqe_set_data64(sqe, ud_make(OP_SCAN, r->idx, w->scanner->gen[r->idx]));
    r->inflight = true;
}

static void send_more(worker_t *w, scan_req_t *r)
{
    memset(&r->msg, 0, sizeof r->msg);
    r->msg.msg_iov = r->iov + r->at;
    size_t n = r->niov - r->at;
    r->msg.msg_iovlen = n > IOV_BATCH ? IOV_BATCH : n;
    struct io_uring_sqe *sqe = worker_sqe(w);
    io_uring_prep_sendmsg(sqe, r->fd, &r->msg, MSG_NOSIGNAL);
    submit(w, r, sqe);
}

static void recv_more(worker_t *w, scan_req_t *r)
{
    struct io_uring_sqe *sqe = worker_sqe(w);
    io_uring_prep_recv(sqe, r->fd, r->in, IN_CAP, 0);
    submit(w, r, sqe);
}

/* n octets of the request went out: step over the iovecs they covered. */
static void sent(scan_req_t *r, size_t n)
{
    while (n && r->at < r->niov) {
        struct iovec *v = &r->iov[r->at];
        if (n < v->iov_len) {
            v->iov_base = (char *)v->iov_base + n;
            v->iov_len -= n;
            return;
        }
        n -= v->iov_len;
        r->at++;
    }
}

static void got_response(worker_t *w, scan_req_t *r)
{
    scanner_t *s = w->scanner;
    if (rspamd_resp_code(&r->resp) != 200) {
        end_req(w, r, SCANNER_HTTP, "http_status");
        return;
    }
    if (!s->v && !(s->v = malloc(sizeof *s->v))) {
        end_req(w, r, SCANNER_RESPONSE, "no_memory");
        return;
    }
    rspamd_err_t e = rspamd_verdict_parse(s->v, rspamd_resp_body(&r->resp));
    if (e != RSPAMD_ERR_NONE)
        end_req(w, r, SCANNER_RESPONSE, rspamd_err_name(e));
    else
        end_req(w, r, SCANNER_OK, NULL);
}

void scanner_cqe(worker_t *w, struct io_uring_cqe *cqe)
{
    scanner_t *s = w->scanner;
    uint64_t ud = io_uring_cqe_get_data64(cqe);
    uint32_t idx = UD_IDX(ud);
    if (UD_OP(ud) != OP_SCAN || idx >= s->nslots || !s->slot[idx] || s->gen[idx] != UD_GEN(ud))
        return;
    scan_req_t *r = s->slot[idx];
    int res = cqe->res;
    r->inflight = false;
    if (r->ended) {
        finish(w, r);
        return;
    }
    switch (r->phase) {
    case P_CONNECT:
        if (res < 0) {
            end_req(w, r, SCANNER_CONNECT, strerror(-res));
            return;
        }
        r->phase = P_SEND;
        send_more(w, r);
        return;
    case P_SEND:
        if (res <= 0) {
            end_req(w, r, SCANNER_IO, res == 0 ? "closed" : strerror(-res));
            return;
        }
        sent(r, (size_t)res);
        if (r->at < r->niov) {
            send_more(w, r);
            return;
        }
        r->phase = P_RECV;
        recv_more(w, r);
        return;
    case P_RECV: {
        if (res <= 0) {
            end_req(w, r, SCANNER_IO, res == 0 ? "closed" : strerror(-res));
            return;
        }
        size_t used;
        switch (rspamd_resp_feed(&r->resp, r->in, (size_t)res, &used)) {
        case RSPAMD_AGAIN:
            recv_more(w, r);
            return;
        case RSPAMD_DONE:
            got_response(w, r);
            return;
        case RSPAMD_ERROR:
            end_req(w, r, SCANNER_RESPONSE, rspamd_err_name(rspamd_resp_error(&r->resp)));
            return;
        }
        return;
    }
    default:
        return;
    }
}

/* ---- starting ---- */

/* The iovecs of the plain message: wire[0, len) with the stuffing dot of
 * each line left out (a line that begins with '.' was sent with one more).
 * iov[0] is left for the head. The plain length is returned in *plain. */
static const char *next_dot(const char *p, const char *end)
{
    const char *d = memmem(p, (size_t)(end - p), "\r\n.", 3);
    return d ? d + 2 : end;
}

static bool build_iov(scan_req_t *r, const char *wire, size_t len, size_t *plain)
{
    /* Line starts that hold a '.': the first octet, and after each CRLF
     * (one search for the rare stuffed line, not one per line). */
    const char *end = wire + len;
    size_t dots = 0;
    for (const char *d = len && *wire == '.' ? wire : next_dot(wire, end); d < end; d = next_dot(d + 1, end))
        dots++;
    size_t need = dots + 2;
    if (need > r->iov_cap) {
        struct iovec *v = realloc(r->iov, need * sizeof *v);
        if (!v)
            return false;
        r->iov = v;
        r->iov_cap = need;
    }
    r->niov = 1;
    const char *seg = wire;
    for (const char *d = len && *wire == '.' ? wire : next_dot(wire, end); d < end; d = next_dot(d + 1, end)) {
        if (d > seg)
            r->iov[r->niov++] = (struct iovec){ (void *)seg, (size_t)(d - seg) };
        seg = d + 1;
    }
    if (end > seg)
        r->iov[r->niov++] = (struct iovec){ (void *)seg, (size_t)(end - seg) };
    *plain = len - dots;
    return true;
}

static size_t head_cap(const rspamd_env_t *env)
{
    size_t n = 1024 + env->ip.len + env->helo.len + env->sender.len + env->queue_id.len + env->mta_name.len;
    for (size_t i = 0; i < env->nrcpts; i++)
        n += env->rcpts[i].len + 16;
    return n;
}

uint64_t scanner_start(worker_t *w, const scanner_owner_t *o, const mx_config_t *cfg, const rspamd_env_t *env,
                       char *buf, size_t cap, size_t held, int fd, size_t off, size_t len,
                       enum scanner_status *status)
{
    scanner_t *s = w->scanner;
    scan_req_t *r = req_new(s);
    *status = SCANNER_REQUEST;
    if (!r) {
        m_inc(&w->m.content_errors[MCE_REQUEST]);
        return 0;
    }
    r->owner = *o;
    r->start_ms = w->now;
    if (worker_parse_addr(cfg->rspamd_url, &r->peer, &r->peerlen) != 0) {
        *status = SCANNER_CONNECT;
        goto fail;
    }
    size_t plain, hcap = head_cap(env), hlen;
    if (hcap > r->head_cap) { /* kept with the request for the next scan */
        char *head = realloc(r->head, hcap);
        if (!head)
            goto fail;
        r->head = head;
        r->head_cap = hcap;
    }
    if (!build_iov(r, buf + off, len, &plain) ||
        rspamd_request_head(r->head, hcap, &hlen, env, plain, NULL) != RSPAMD_ERR_NONE)
        goto fail;
    r->iov[0] = (struct iovec){ r->head, hlen };
    r->fd = socket(r->peer.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (r->fd < 0) {
        *status = SCANNER_CONNECT;
        goto fail;
    }
    r->buf = buf;
    r->cap = cap;
    r->held = held;
    r->buf_fd = fd;
    LEND(buf, cap); /* read by the kernel's sends until the request ends */
    r->phase = P_CONNECT;
    struct io_uring_sqe *sqe = worker_sqe(w);
    io_uring_prep_connect(sqe, r->fd, (struct sockaddr *)&r->peer, r->peerlen);
    submit(w, r, sqe);
    timer_arm(&w->timers, &r->timer, w->now + (uint64_t)cfg->rspamd_timeout * 1000, on_deadline);
    *status = SCANNER_OK;
    return req_id(s, r);
fail:
    m_inc(&w->m.content_errors[*status == SCANNER_CONNECT ? MCE_CONNECT : MCE_REQUEST]);
    req_release(w, r);
    return 0;
}

void scanner_cancel(worker_t *w, uint64_t id)
{
    scanner_t *s = w->scanner;
    uint32_t idx = (uint32_t)id - 1;
    if (!id || idx >= s->nslots || !s->slot[idx] || s->gen[idx] != (uint32_t)(id >> 32))
        return;
    scan_req_t *r = s->slot[idx];
    r->orphan = true;
    end_req(w, r, SCANNER_TIMEOUT, "cancelled");
}

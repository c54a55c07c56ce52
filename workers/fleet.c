/*
 * fleet.c - rate limits shared by a fleet, in Redis (see fleet.h).
 *
 * One connection per worker: connect, send and receive are ring
 * operations named (OP_FLEET, which, the connection's generation), so a
 * completion of a connection given up never touches the next one. The
 * commands a turn queues go out as one send at its end; Redis answers in
 * order, so the requests awaiting an answer are a FIFO, and the oldest's
 * age is the one clock: past limits_redis_timeout the connection is
 * dropped, everyone waiting is told "not over", and a new one is tried
 * after a backoff.
 */
#include "fleet.h"

#include "log.h"
#include "worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <hiredis/read.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define INFLIGHT_MAX 4096u   /* requests awaiting Redis's answer, per worker */
#define OUT_MAX (1u << 20)   /* octets queued for Redis, per worker */
#define IN_CAP 16384u
#define BACKOFF_FIRST_MS 250u
#define BACKOFF_MAX_MS 8000u
#define KEY_PREFIX "mxgate:rate:"

enum { W_CONNECT = 0, W_RECV, W_SEND, W_CANCEL }; /* the `which` of a completion */

/*
 * KEYS[1]: the address's hash. ARGV[1]: the kind to take a token of (0
 * connections, 1 messages, 2 recipients; 3: none, only read), ARGV[2..4]:
 * each kind's tokens per minute (0: not limited). Per kind the answer is
 * the tokens left, in thousandths, times 2, plus 1 when one was taken
 * (-1: not limited). Fields tK and aK are kind K's tokens and when they
 * were counted, in Redis's milliseconds; the hash expires a minute after
 * its last take, when every bucket would be full again anyway.
 */
static const char script[] =
    "local now = redis.call('TIME')\n"
    "now = now[1] * 1000 + math.floor(now[2] / 1000)\n"
    "local take = tonumber(ARGV[1])\n"
    "local st = redis.call('HMGET', KEYS[1], 't0', 'a0', 't1', 'a1', 't2', 'a2')\n"
    "local out = {}\n"
    "for k = 0, 2 do\n"
    "  local cap = tonumber(ARGV[k + 2])\n"
    "  if cap <= 0 then\n"
    "    out[k + 1] = -1\n"
    "  else\n"
    "    local tok = cap\n"
    "    local t, a = st[2 * k + 1], st[2 * k + 2]\n"
    "    if t then\n"
    "      tok = math.min(cap, tonumber(t) + math.max(0, now - tonumber(a)) * cap / 60000)\n"
    "    end\n"
    "    local took = 0\n"
    "    if k == take then\n"
    "      if tok >= 1 then tok = tok - 1; took = 1 end\n"
    "      redis.call('HSET', KEYS[1], 't' .. k, tostring(tok), 'a' .. k, now)\n"
    "    end\n"
    "    out[k + 1] = math.floor(tok * 1000) * 2 + took\n"
    "  end\n"
    "end\n"
    "if take <= 2 then redis.call('PEXPIRE', KEYS[1], 60000) end\n"
    "return out\n";

enum fstate { FL_OFF, FL_CONNECTING, FL_UP, FL_CLOSING, FL_BACKOFF };

typedef struct pend {
    uint8_t load;         /* SCRIPT LOAD; otherwise a rate update */
    uint8_t take;         /* the kind taken (RATE_KINDS: none) */
    uint8_t family;
    uint8_t addr[16];
    bool waits;           /* owner waits for the verdict (fleet_done_fn) */
    fleet_owner_t owner;
    uint64_t queued_ms;
} pend_t;

typedef struct obuf {
    char *p;
    size_t len, cap;
} obuf_t;

/* The reply being read: hiredis's reader builds it through the functions
 * below, into this struct, instead of allocating objects. */
typedef struct answer {
    int n;                /* array elements seen */
    long long v[RATE_KINDS];
    bool err;
    char text[64];        /* an error's first words */
} answer_t;

typedef struct fleet {
    fleet_done_fn *done;
    enum fstate st;
    int fd;
    uint32_t gen;         /* the connection's; completions of another are stale */
    unsigned inflight;    /* ring operations on fd */
    bool sending;
    char server[CONFIG_ADDR_MAX]; /* limits_redis the connection is to */
    struct sockaddr_storage peer;
    socklen_t peerlen;
    obuf_t fill, lent;    /* queued this turn; in the send (lend.h) */
    size_t lent_off;
    char *in;             /* IN_CAP, lent to the receive */
    redisReader *rd;
    answer_t ans;
    pend_t *q;            /* INFLIGHT_MAX, a ring */
    uint32_t qhead, qlen;
    timer_node_t timer;   /* the oldest request or the connect; the backoff while down */
    uint32_t backoff_ms;
    bool outage;          /* logged as down: the next connect logs it up */
    bool load_queued;
    char sha[41];
} fleet_t;

/* ---- hiredis's reader, allocating nothing ---- */

static void *r_string(const redisReadTask *t, char *s, size_t n)
{
    answer_t *a = t->privdata;
    if (t->type == REDIS_REPLY_ERROR && !a->err) {
        a->err = true;
        snprintf(a->text, sizeof a->text, "%.*s", (int)(n < 63 ? n : 63), s);
    }
    return a;
}

static void *r_array(const redisReadTask *t, int n)
{
    (void)n;
    return t->privdata;
}

static void *r_integer(const redisReadTask *t, long long v)
{
    answer_t *a = t->privdata;
    if (t->parent && t->idx >= 0 && t->idx < RATE_KINDS) {
        a->v[t->idx] = v;
        a->n = t->idx + 1 > a->n ? t->idx + 1 : a->n;
    }
    return a;
}

static void *r_nil(const redisReadTask *t)
{
    return t->privdata;
}

static void r_free(void *o)
{
    (void)o;
}

static redisReplyObjectFunctions reader_fns = { r_string, r_array, r_integer, r_nil, r_free };

/* ---- the requests ---- */

static bool out_reserve(obuf_t *b, size_t more)
{
    if (b->len + more <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return false;
    b->p = p;
    b->cap = cap;
    return true;
}

/* One RESP request: *argc, then each argument as a bulk string. */
static bool out_request(obuf_t *b, int argc, const char *const *argv, const size_t *len)
{
    size_t need = 16;
    for (int i = 0; i < argc; i++)
        need += len[i] + 24;
    if (!out_reserve(b, need))
        return false;
    b->len += (size_t)sprintf(b->p + b->len, "*%d\r\n", argc);
    for (int i = 0; i < argc; i++) {
        b->len += (size_t)sprintf(b->p + b->len, "$%zu\r\n", len[i]);
        memcpy(b->p + b->len, argv[i], len[i]);
        b->len += len[i];
        memcpy(b->p + b->len, "\r\n", 2);
        b->len += 2;
    }
    return true;
}

static pend_t *push(fleet_t *f, uint64_t now)
{
    pend_t *p = &f->q[(f->qhead + f->qlen++) % INFLIGHT_MAX];
    memset(p, 0, sizeof *p);
    p->queued_ms = now;
    return p;
}

static void on_timer(worker_t *w, timer_node_t *t);

static void watch_oldest(worker_t *w)
{
    fleet_t *f = w->fleet;
    if (f->qlen && !timer_armed(&f->timer))
        timer_arm(&w->timers, &f->timer, f->q[f->qhead].queued_ms + w->cfg->limits_redis_timeout, on_timer);
}

static bool queue_load(worker_t *w)
{
    fleet_t *f = w->fleet;
    const char *argv[] = { "SCRIPT", "LOAD", script };
    size_t len[] = { 6, 4, sizeof script - 1 };
    if (f->qlen >= INFLIGHT_MAX || !out_request(&f->fill, 3, argv, len))
        return false;
    push(f, w->now)->load = 1;
    f->load_queued = true;
    watch_oldest(w);
    return true;
}

/* EVALSHA for one event (take < RATE_KINDS) or a read of the buckets. */
static bool queue_rate(worker_t *w, const struct mx_config *cfg, unsigned take, int family, const uint8_t *addr,
                       const fleet_owner_t *o)
{
    fleet_t *f = w->fleet;
    if (f->st != FL_UP || f->qlen >= INFLIGHT_MAX || f->fill.len > OUT_MAX)
        return false;
    char key[sizeof KEY_PREFIX + INET6_ADDRSTRLEN] = KEY_PREFIX;
    inet_ntop(family, addr, key + sizeof KEY_PREFIX - 1, INET6_ADDRSTRLEN);
    char k[2] = { (char)('0' + take), 0 }, cap[RATE_KINDS][12];
    for (unsigned i = 0; i < RATE_KINDS; i++)
        snprintf(cap[i], sizeof cap[i], "%u", rate_per_min(cfg, (enum rate_kind)i));
    const char *argv[] = { "EVALSHA", f->sha, "1", key, k, cap[0], cap[1], cap[2] };
    size_t len[8];
    for (int i = 0; i < 8; i++)
        len[i] = strlen(argv[i]);
    if (!out_request(&f->fill, 8, argv, len))
        return false;
    pend_t *p = push(f, w->now);
    p->take = (uint8_t)take;
    p->family = (uint8_t)family;
    memcpy(p->addr, addr, family == AF_INET6 ? 16 : 4);
    if (o) {
        p->waits = true;
        p->owner = *o;
    }
    watch_oldest(w);
    return true;
}

/* ---- the connection ---- */

static void arm_recv(worker_t *w)
{
    fleet_t *f = w->fleet;
    struct io_uring_sqe *sqe = worker_sqe(w);
    io_uring_prep_recv(sqe, f->fd, f->in, IN_CAP, 0);
    io_uring_sqe_set_data64(sqe, ud_make(OP_FLEET, W_RECV, f->gen));
    f->inflight++;
}

static void send_lent(worker_t *w)
{
    fleet_t *f = w->fleet;
    struct io_uring_sqe *sqe = worker_sqe(w);
    io_uring_prep_send(sqe, f->fd, f->lent.p + f->lent_off, f->lent.len - f->lent_off, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, ud_make(OP_FLEET, W_SEND, f->gen));
    f->inflight++;
    f->sending = true;
}

/* The turn's requests, as one send (one at a time: Redis reads them in
 * order, and the buffer is the ring's until the completion). */
static void send_fill(worker_t *w)
{
    fleet_t *f = w->fleet;
    if (f->st != FL_UP || f->sending || !f->fill.len)
        return;
    obuf_t t = f->lent;
    f->lent = f->fill;
    f->fill = t;
    f->fill.len = 0;
    f->lent_off = 0;
    send_lent(w);
}

/* Everyone waiting hears "not over": the instance's own counts decided. */
static void fail_pending(worker_t *w)
{
    fleet_t *f = w->fleet;
    while (f->qlen) {
        pend_t p = f->q[f->qhead];
        f->qhead = (f->qhead + 1) % INFLIGHT_MAX;
        f->qlen--;
        if (p.load)
            continue;
        m_inc(&w->m.fleet_failopen);
        if (p.waits)
            f->done(w, &p.owner, false);
    }
    f->qhead = 0;
}

/* The connection is given up; the next is tried once its operations are in. */
static void drop(worker_t *w, const char *why, int err)
{
    fleet_t *f = w->fleet;
    if (f->st != FL_CONNECTING && f->st != FL_UP)
        return;
    if (f->st == FL_UP)
        m_set(&w->m.fleet_up, 0);
    if (!strcmp(why, "reload")) { /* the operator's act, not an outage */
        log_line(LOG_INFO, "event=rate_redis_closed worker=%d server=%s reason=reload pending=%u", w->id, f->server,
                 f->qlen);
    } else {
        m_inc(&w->m.fleet_disconnects);
        if (!f->outage)
            log_line(LOG_WARN, "event=rate_redis_down worker=%d server=%s reason=%s error=\"%s\" pending=%u", w->id,
                     f->server, why, err ? strerror(err) : "-", f->qlen);
        f->outage = true;
    }
    if (f->st == FL_CONNECTING) {
        struct io_uring_sqe *sqe = worker_sqe(w);
        io_uring_prep_cancel64(sqe, ud_make(OP_FLEET, W_CONNECT, f->gen), 0);
        io_uring_sqe_set_data64(sqe, ud_make(OP_FLEET, W_CANCEL, f->gen));
        f->inflight++;
    }
    f->st = FL_CLOSING;
    timer_stop(&w->timers, &f->timer);
    shutdown(f->fd, SHUT_RDWR); /* ends the receive in flight */
    fail_pending(w);
    f->fill.len = 0;
    f->load_queued = false;
}

/* The last operation of a dropped connection is in: close, wait, retry. */
static void closed(worker_t *w)
{
    fleet_t *f = w->fleet;
    close(f->fd);
    f->fd = -1;
    f->sending = false;
    if (f->rd) {
        redisReaderFree(f->rd);
        f->rd = NULL;
    }
    f->st = FL_BACKOFF;
    f->backoff_ms = !f->backoff_ms ? BACKOFF_FIRST_MS : f->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : f->backoff_ms * 2;
    timer_arm(&w->timers, &f->timer, w->now + f->backoff_ms, on_timer);
}

static void connect_now(worker_t *w)
{
    fleet_t *f = w->fleet;
    snprintf(f->server, sizeof f->server, "%s", w->cfg->limits_redis);
    int fd = -1;
    if (worker_parse_addr(f->server, &f->peer, &f->peerlen) == 0)
        fd = socket(f->peer.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    f->rd = fd >= 0 ? redisReaderCreateWithFunctions(&reader_fns) : NULL;
    if (!f->rd) {
        if (fd >= 0)
            close(fd);
        log_line(LOG_ERROR, "event=rate_redis_failed worker=%d server=%s error=\"%s\"", w->id, f->server,
                 fd < 0 ? strerror(errno) : "out of memory");
        f->st = FL_BACKOFF;
        f->backoff_ms = BACKOFF_MAX_MS;
        timer_arm(&w->timers, &f->timer, w->now + f->backoff_ms, on_timer);
        return;
    }
    f->rd->privdata = &f->ans;
    memset(&f->ans, 0, sizeof f->ans);
    int one = 1; /* a request is small and its answer awaited: no Nagle */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    f->fd = fd;
    f->gen = (f->gen + 1) & GEN_MASK;
    f->st = FL_CONNECTING;
    struct io_uring_sqe *sqe = worker_sqe(w);
    io_uring_prep_connect(sqe, fd, (struct sockaddr *)&f->peer, f->peerlen);
    io_uring_sqe_set_data64(sqe, ud_make(OP_FLEET, W_CONNECT, f->gen));
    f->inflight++;
    timer_arm(&w->timers, &f->timer, w->now + w->cfg->limits_redis_timeout, on_timer);
}

static void on_timer(worker_t *w, timer_node_t *t)
{
    (void)t;
    fleet_t *f = w->fleet;
    switch (f->st) {
    case FL_BACKOFF:
        f->st = FL_OFF;
        fleet_flush(w); /* connects, if limits_redis still says so */
        break;
    case FL_CONNECTING:
        drop(w, "connect_timeout", 0);
        break;
    case FL_UP:
        if (f->qlen && w->now >= f->q[f->qhead].queued_ms + w->cfg->limits_redis_timeout)
            drop(w, "timeout", 0);
        else
            watch_oldest(w);
        break;
    default:
        break;
    }
}

/* ---- answers ---- */

static void answered(worker_t *w, const pend_t *p, const answer_t *a)
{
    fleet_t *f = w->fleet;
    if (a->err) {
        m_inc(&w->m.fleet_replies[MFL_ERROR]);
        log_line(LOG_WARN, "event=rate_redis_error worker=%d server=%s error=\"%s\"", w->id, f->server, a->text);
        if (p->load)
            f->load_queued = false;
        else if (!strncmp(a->text, "NOSCRIPT", 8) && !f->load_queued)
            queue_load(w); /* the script cache was flushed: load it again */
        if (!p->load) {
            m_inc(&w->m.fleet_failopen);
            if (p->waits)
                f->done(w, &p->owner, false);
        }
        return;
    }
    if (p->load) {
        f->load_queued = false;
        return;
    }
    bool over = false;
    for (int k = 0; k < a->n && k < RATE_KINDS; k++) {
        if (a->v[k] < 0)
            continue;
        rate_fleet_set(w->limits->rate, (enum rate_kind)k, p->family, p->addr, (double)(a->v[k] >> 1) / 1000.0, w->now);
        if (k == p->take)
            over = !(a->v[k] & 1);
    }
    if (p->take < RATE_KINDS)
        m_inc(&w->m.fleet_replies[over ? MFL_OVER : MFL_TAKEN]);
    if (p->waits)
        f->done(w, &p->owner, over);
}

static void on_recv(worker_t *w, int res)
{
    fleet_t *f = w->fleet;
    if (res <= 0) {
        drop(w, res == 0 ? "closed" : "recv", res < 0 ? -res : 0);
        return;
    }
    if (redisReaderFeed(f->rd, f->in, (size_t)res) != REDIS_OK) {
        drop(w, "memory", ENOMEM);
        return;
    }
    for (;;) {
        void *reply = NULL;
        if (redisReaderGetReply(f->rd, &reply) != REDIS_OK) {
            log_line(LOG_WARN, "event=rate_redis_error worker=%d server=%s error=\"%s\"", w->id, f->server,
                     f->rd->errstr);
            drop(w, "protocol", 0);
            return;
        }
        if (!reply)
            break;
        if (!f->qlen) {
            drop(w, "unexpected_reply", 0);
            return;
        }
        pend_t p = f->q[f->qhead];
        f->qhead = (f->qhead + 1) % INFLIGHT_MAX;
        f->qlen--;
        answer_t a = f->ans;
        memset(&f->ans, 0, sizeof f->ans);
        answered(w, &p, &a);
        if (f->st != FL_UP)
            return;
    }
    timer_stop(&w->timers, &f->timer); /* the oldest changed */
    watch_oldest(w);
    arm_recv(w);
}

void fleet_cqe(worker_t *w, struct io_uring_cqe *cqe)
{
    fleet_t *f = w->fleet;
    uint64_t ud = io_uring_cqe_get_data64(cqe);
    unsigned which = UD_IDX(ud);
    f->inflight--;
    bool stale = UD_GEN(ud) != f->gen || f->st == FL_CLOSING;
    if (which == W_SEND)
        f->sending = false;
    if (!stale) {
        switch (which) {
        case W_CONNECT:
            if (cqe->res < 0) {
                drop(w, "connect", -cqe->res);
                break;
            }
            f->st = FL_UP;
            f->backoff_ms = 0;
            timer_stop(&w->timers, &f->timer);
            m_set(&w->m.fleet_up, 1);
            log_line(f->outage ? LOG_WARN : LOG_INFO, "event=rate_redis_up worker=%d server=%s", w->id, f->server);
            f->outage = false;
            arm_recv(w);
            queue_load(w); /* first on the connection: every EVALSHA after it finds the script */
            break;
        case W_RECV:
            on_recv(w, cqe->res);
            break;
        case W_SEND:
            if (cqe->res < 0) {
                drop(w, "send", -cqe->res);
            } else if (f->lent_off + (size_t)cqe->res < f->lent.len) {
                f->lent_off += (size_t)cqe->res; /* short: the rest */
                send_lent(w);
            } else {
                f->lent.len = 0;
                send_fill(w);
            }
            break;
        default:
            break;
        }
    }
    if (f->st == FL_CLOSING && !f->inflight)
        closed(w);
}

/* ---- the API ---- */

static bool limited(const struct mx_config *cfg, int family, const uint8_t *addr)
{
    return (cfg->rate_connections || cfg->rate_messages || cfg->rate_recipients) &&
           !config_cidrs_match(&cfg->rate_allow, family, addr);
}

enum fleet_verdict fleet_connect(worker_t *w, const fleet_owner_t *o, const struct mx_config *cfg, int family,
                                 const uint8_t *addr)
{
    family = rate_plain_addr(family, &addr);
    if (rate_exceeded(w->limits->rate, cfg, RATE_CONN, family, addr, w->now))
        return FLEET_OVER;
    if (!cfg->limits_redis[0] || !limited(cfg, family, addr))
        return FLEET_OK;
    unsigned take = cfg->rate_connections ? RATE_CONN : RATE_KINDS;
    if (!queue_rate(w, cfg, take, family, addr, o)) {
        m_inc(&w->m.fleet_failopen);
        return FLEET_OK;
    }
    return FLEET_WAIT;
}

bool fleet_rate_over(worker_t *w, const struct mx_config *cfg, enum rate_kind k, int family, const uint8_t *addr)
{
    family = rate_plain_addr(family, &addr);
    if (rate_exceeded(w->limits->rate, cfg, k, family, addr, w->now))
        return true;
    if (cfg->limits_redis[0] && rate_per_min(cfg, k) && limited(cfg, family, addr) &&
        !queue_rate(w, cfg, k, family, addr, NULL))
        m_inc(&w->m.fleet_failopen);
    return false;
}

void fleet_flush(worker_t *w)
{
    fleet_t *f = w->fleet;
    const char *want = w->cfg->limits_redis;
    bool moved = strcmp(want, f->server) != 0;
    if ((f->st == FL_UP || f->st == FL_CONNECTING) && moved) {
        drop(w, "reload", 0); /* limits_redis changed or went away */
        return;
    }
    if (f->st == FL_BACKOFF && moved) {
        timer_stop(&w->timers, &f->timer);
        f->st = FL_OFF;
        f->backoff_ms = 0;
    }
    if (f->st == FL_OFF) {
        if (!want[0]) {
            f->server[0] = 0;
            return;
        }
        if (!w->draining)
            connect_now(w);
        return;
    }
    send_fill(w);
}

int fleet_init(worker_t *w, fleet_done_fn *done, char *err, size_t errlen)
{
    fleet_t *f = calloc(1, sizeof *f);
    char *in = malloc(IN_CAP);
    pend_t *q = calloc(INFLIGHT_MAX, sizeof *q);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    if (!f || !in || !q || !EVP_Digest(script, sizeof script - 1, md, &mdlen, EVP_sha1(), NULL) || mdlen != 20) {
        free(f);
        free(in);
        free(q);
        snprintf(err, errlen, "rate limits: out of memory");
        return -1;
    }
    for (unsigned i = 0; i < 20; i++)
        sprintf(f->sha + 2 * i, "%02x", md[i]);
    f->done = done;
    f->fd = -1;
    f->in = in;
    f->q = q;
    w->fleet = f;
    return 0;
}

void fleet_destroy(worker_t *w)
{
    fleet_t *f = w->fleet;
    if (!f)
        return;
    if (f->fd >= 0)
        close(f->fd);
    if (f->rd)
        redisReaderFree(f->rd);
    free(f->fill.p);
    free(f->lent.p);
    free(f->in);
    free(f->q);
    free(f);
    w->fleet = NULL;
}

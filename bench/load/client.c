/*
 * client.c - client mode of mxgate-load: C parallel SMTP sessions spread
 * over T threads, each thread one io_uring loop owning its connections.
 *
 * A connection: connect -> 220 -> EHLO (HELO if refused) -> transactions
 * -> QUIT. A transaction is MAIL, RCPT x R, DATA, the body and its end:
 * with --pipelining on (and PIPELINING offered) MAIL..DATA go out in one
 * write and the replies are read as they come; otherwise one command per
 * reply. The replies are matched by position (the transaction's phase):
 * 0 MAIL, 1..R RCPT, R+1 DATA, R+2 end of data.
 *
 * Closed loop (default): an idle connection starts the next message at
 * once. Open loop (--rate): message k of thread t is due at
 * t0 + (k*T + t)/rate; an idle connection takes the next due message, and
 * its latency counts from the time it was due, not from when a connection
 * got free (no coordinated omission).
 *
 * Per thread, one recv and at most one send in flight per connection, a
 * 100 ms housekeeping tick (reply timeouts, reconnects, the end of the run)
 * and, in open loop, a timer for the next due message.
 *
 * --starttls: after the EHLO reply, STARTTLS, its 220, a TLS handshake and
 * EHLO again; then the session runs in TLS. OpenSSL works on two memory
 * BIOs and never sees the socket: what a recv brings goes into the read
 * BIO, and the write BIO is drained into the connection's ciphertext
 * buffer (obuf), which the ring sends; obuf is not touched while its send
 * is in flight. Plaintext to send is queued as before (iov/piov) and is
 * encrypted only when the send slot is free, at most OBUF_SZ ahead, so a
 * large body is never encrypted whole. One SSL_CTX for the process; per
 * thread the last session the server gave is resumed by new connections
 * (--tls-resume on).
 */
#include "client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <strings.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

const char *const cerr_names[E_N] = { "refused",  "reset", "timeout", "closed",      "protocol", "connect",
                                      "greeting", "other", "aborted", "no_starttls", "tls" };

#define IN_SZ 8192u
#define NVAR 4u        /* body variants per size class */
#define RECONNECT_US 100000u
#define RAW_SZ 16384u    /* TLS: ciphertext per recv */
#define OBUF_SZ 32768u   /* TLS: ciphertext per send */
#define TLS_CHUNK 16384u /* TLS: plaintext per SSL_write (one record) */

static SSL_CTX *g_ssl_ctx;
static atomic_int g_tls_said; /* the first TLS failure's reason went to stderr */

/* ---- bodies: made once, shared read-only by every thread ---- */

typedef struct body {
    char *wire;      /* dot-stuffed, ends with CRLF (no end marker) */
    size_t wire_len; /* octets on the wire */
    size_t len;      /* octets unstuffed */
    uint32_t crc;    /* CRC-32 of the unstuffed octets */
} body_t;

static body_t g_bodies[SIZE_CLASSES_MAX][NVAR];
static uint32_t g_weight_total;
static char g_run_id[64];
static char g_date[64];

#define HDR_EST 260u /* about what a message's header block takes */

static void make_body(body_t *b, size_t len, uint64_t seed)
{
    static const char alpha[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:-_=+!?";
    if (len < 2)
        len = 2;
    char *plain = malloc(len);
    b->wire = malloc(len + len / 2 + 16);
    if (!plain || !b->wire)
        fatal("out of memory for message bodies");
    uint64_t s = seed;
    size_t off = 0, w = 0;
    while (off < len) {
        size_t left = len - off; /* >= 2 */
        uint64_t r = rng_next(&s);
        size_t L;
        if (r % 50 == 0)
            L = 200 + (size_t)(rng_next(&s) % 799); /* up to 998 */
        else if (r % 5 == 0)
            L = (size_t)(rng_next(&s) % 77); /* short lines, empty ones too */
        else
            L = 72 + (size_t)(rng_next(&s) % 7); /* most lines full, as base64 and quoted-printable are */
        if (L > left - 2)
            L = left - 2;
        if (left - (L + 2) == 1) /* never leave a single octet for the last line */
            L = L + 1 <= 998 ? L + 1 : L - 1;
        char *line = plain + off;
        for (size_t i = 0; i < L; i++)
            line[i] = alpha[rng_next(&s) % (sizeof alpha - 1)];
        uint64_t d = rng_next(&s) % 40;
        if (L >= 1 && d < 4)
            line[0] = '.'; /* a line starting with a dot: stuffed on the wire */
        if (L == 1 && d < 8)
            line[0] = '.'; /* a line that is only a dot */
        line[L] = '\r';
        line[L + 1] = '\n';
        if (L >= 1 && line[0] == '.')
            b->wire[w++] = '.';
        memcpy(b->wire + w, line, L + 2);
        w += L + 2;
        off += L + 2;
    }
    b->len = len;
    b->wire_len = w;
    b->crc = crc32_update(0, plain, len);
    free(plain);
}

/* ---- per-thread state ---- */

enum cst { CS_FREE, CS_WAIT, CS_CONNECTING, CS_GREETING, CS_EHLO, CS_HELO, CS_STARTTLS, CS_TLSHS, CS_IDLE, CS_TX, CS_RSET,
           CS_QUIT, CS_CLOSING };

typedef struct cconn {
    uint32_t slot, gen;
    int fd;
    uint8_t st;
    bool recv_on, send_on, srv_pipe, ehlo_pipe, in_idle, in_tx, counted_open, close_failed;
    bool ehlo_tls;  /* the EHLO reply offers STARTTLS */
    bool quit_err;  /* the QUIT ends a failed session: reconnect after a pause */
    bool send_tls;  /* the send in flight is of obuf */
    SSL *ssl;       /* from the 220 to STARTTLS to the close; owns rbio and wbio */
    BIO *rbio, *wbio;
    char *raw, *obuf; /* TLS buffers, made on the slot's first STARTTLS */
    uint32_t olen, ooff;
    uint64_t t_hs;
    int inflight;
    uint64_t t_conn, deadline, wait_until;
    uint32_t inlen;
    struct iovec iov[4], piov[4];
    unsigned niov, ioff, npiov;
    struct msghdr mh;
    char *cmd;
    size_t cmdcap;
    char hdr[512];
    /* the transaction */
    uint64_t n, t_start;
    const body_t *body;
    uint32_t phase, rcpt_ok, session_msgs;
    int fail, last_rcpt;
    bool lockstep;
    char in[IN_SZ];
} cconn_t;

typedef struct cthread {
    int id;
    pthread_t th;
    struct io_uring ring;
    bool ring_ok;
    cconn_t *conns;
    uint32_t nconns, nactive;
    uint32_t *idle;
    uint32_t nidle;
    uint64_t quota, issued, rng, now;
    struct __kernel_timespec tick_ts, sched_ts;
    bool sched_on, stopping;
    uint64_t stop_at;
    recbuf_t *rec;
    SSL_SESSION *sess; /* the newest session a server gave this thread (--tls-resume on) */
    cstats_t st;
    atomic_int done; /* 1 finished, 2 finished having completed the run */
    uint64_t end_us; /* when it finished (written before done) */
    char err[512];
} cthread_t;

static cthread_t *g_thr;
static int g_nthr;
static atomic_int g_greeted;
static uint64_t g_end_us; /* t0 + duration, or UINT64_MAX */

static void c_close(cthread_t *t, cconn_t *c, int err);
static void go_idle(cthread_t *t, cconn_t *c);
static void c_connect(cthread_t *t, cconn_t *c);
static void tls_flush(cthread_t *t, cconn_t *c);
static void tls_start(cthread_t *t, cconn_t *c);

/* ---- work ---- */

static uint64_t sched_us(const cthread_t *t, uint64_t k)
{
    double n = (double)k * g_nthr + t->id;
    return g_t0_us + (uint64_t)(n * 1e6 / g_opt.rate);
}

static bool work_left(const cthread_t *t)
{
    if (t->stopping || atomic_load(&g_stop))
        return false;
    if (t->issued >= t->quota)
        return false;
    if (g_opt.rate > 0)
        return sched_us(t, t->issued) < g_end_us;
    return t->now < g_end_us;
}

enum { CLAIM_OK, CLAIM_LATER, CLAIM_NONE };

static int claim(cthread_t *t, uint64_t *n, uint64_t *t_start)
{
    if (!work_left(t))
        return CLAIM_NONE;
    uint64_t k = t->issued;
    if (g_opt.rate > 0) {
        uint64_t due = sched_us(t, k);
        if (due > t->now)
            return CLAIM_LATER;
        *t_start = due;
    } else {
        *t_start = t->now;
    }
    t->issued++;
    *n = k * (uint64_t)g_nthr + (uint64_t)t->id;
    return CLAIM_OK;
}

/* ---- I/O ---- */

static void arm_recv(cthread_t *t, cconn_t *c)
{
    if (c->recv_on || c->st == CS_CLOSING)
        return;
    struct io_uring_sqe *sqe = get_sqe(&t->ring);
    if (c->ssl) /* ciphertext: all of it goes into the read BIO at once */
        io_uring_prep_recv(sqe, c->fd, c->raw, RAW_SZ, 0);
    else
        io_uring_prep_recv(sqe, c->fd, c->in + c->inlen, IN_SZ - c->inlen, 0);
    io_uring_sqe_set_data64(sqe, UD(OP_RECV, c->slot, c->gen));
    c->recv_on = true;
    c->inflight++;
}

static void arm_send(cthread_t *t, cconn_t *c)
{
    if (c->ssl) {
        tls_flush(t, c);
        return;
    }
    while (c->ioff < c->niov && c->iov[c->ioff].iov_len == 0)
        c->ioff++;
    if (c->ioff == c->niov) {
        c->niov = c->ioff = 0;
        if (!c->npiov)
            return;
        memcpy(c->iov, c->piov, c->npiov * sizeof c->iov[0]);
        c->niov = c->npiov;
        c->npiov = 0;
        arm_send(t, c);
        return;
    }
    struct io_uring_sqe *sqe = get_sqe(&t->ring);
    if (c->niov - c->ioff == 1) {
        io_uring_prep_send(sqe, c->fd, c->iov[c->ioff].iov_base, c->iov[c->ioff].iov_len, MSG_NOSIGNAL);
    } else {
        memset(&c->mh, 0, sizeof c->mh);
        c->mh.msg_iov = c->iov + c->ioff;
        c->mh.msg_iovlen = c->niov - c->ioff;
        io_uring_prep_sendmsg(sqe, c->fd, &c->mh, MSG_NOSIGNAL);
    }
    io_uring_sqe_set_data64(sqe, UD(OP_SEND, c->slot, c->gen));
    c->send_on = true;
    c->send_tls = false;
    c->inflight++;
}

/* Queue octets for sending; they go after whatever is being sent. The
 * buffers must stay put until sent (a command buffer is rewritten only
 * after the reply to what it held, which the server sends only once it has
 * read all of it). */
static void c_send(cthread_t *t, cconn_t *c, const struct iovec *v, unsigned n)
{
    if (c->send_on || c->niov) {
        for (unsigned i = 0; i < n && c->npiov < 4; i++)
            c->piov[c->npiov++] = v[i];
        return;
    }
    memcpy(c->iov, v, n * sizeof *v);
    c->niov = n;
    c->ioff = 0;
    arm_send(t, c);
}

static void send_cmd(cthread_t *t, cconn_t *c, size_t len)
{
    struct iovec v = { c->cmd, len };
    c_send(t, c, &v, 1);
    c->deadline = t->now + (uint64_t)(g_opt.reply_timeout * 1e6);
}

static void send_text(cthread_t *t, cconn_t *c, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void send_text(cthread_t *t, cconn_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(c->cmd, c->cmdcap, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= c->cmdcap)
        n = 0;
    send_cmd(t, c, (size_t)n);
}

/* ---- transactions ---- */

static const body_t *pick_body(cthread_t *t, uint64_t n)
{
    int cls = 0;
    if (g_opt.nsizes > 1) {
        uint64_t r = rng_next(&t->rng) % g_weight_total;
        for (cls = 0; cls < g_opt.nsizes - 1; cls++) {
            if (r < g_opt.sizes[cls].weight)
                break;
            r -= g_opt.sizes[cls].weight;
        }
    }
    return &g_bodies[cls][n % NVAR];
}

static size_t fmt_rcpt(char *p, size_t cap, uint64_t n, uint32_t j)
{
    (void)n;
    int k = snprintf(p, cap, "RCPT TO:<user%u@%s>\r\n", j, g_opt.rcpt_domain);
    return k > 0 && (size_t)k < cap ? (size_t)k : 0;
}

static void start_tx(cthread_t *t, cconn_t *c, uint64_t n, uint64_t t_start)
{
    c->n = n;
    c->t_start = t_start;
    c->body = pick_body(t, n);
    c->phase = c->rcpt_ok = 0;
    c->fail = c->last_rcpt = 0;
    c->st = CS_TX;
    c->in_tx = true;
    c->session_msgs++;
    c->lockstep = !(g_opt.pipelining && c->srv_pipe);
    if (c->lockstep) {
        send_text(t, c, "MAIL FROM:<%s>\r\n", g_opt.from);
        return;
    }
    size_t len = 0;
    int k = snprintf(c->cmd, c->cmdcap, "MAIL FROM:<%s>\r\n", g_opt.from);
    len = (size_t)k;
    for (uint32_t j = 0; j < g_opt.rcpts; j++)
        len += fmt_rcpt(c->cmd + len, c->cmdcap - len, n, j);
    memcpy(c->cmd + len, "DATA\r\n", 6);
    len += 6;
    send_cmd(t, c, len);
}

static void send_body(cthread_t *t, cconn_t *c)
{
    const body_t *b = c->body;
    int k = snprintf(c->hdr, sizeof c->hdr,
                     "From: <%s>\r\n"
                     "To: <user0@%s>\r\n"
                     "Subject: mxgate-load message %llu\r\n"
                     "Date: %s\r\n"
                     "Message-ID: <loadgen.%s.%llu@mxgate-load>\r\n"
                     "X-Load-Checksum: %08x\r\n"
                     "X-Load-Body-Octets: %zu\r\n"
                     "\r\n",
                     g_opt.from, g_opt.rcpt_domain, (unsigned long long)c->n, g_date, g_run_id,
                     (unsigned long long)c->n, b->crc, b->len);
    if (k < 0 || (size_t)k >= sizeof c->hdr)
        k = 0;
    struct iovec v[3] = { { c->hdr, (size_t)k }, { b->wire, b->wire_len }, { (void *)".\r\n", 3 } };
    c_send(t, c, v, 3);
    CADD(t->st.bytes_out, (size_t)k + b->wire_len + 3);
    c->deadline = t->now + (uint64_t)(g_opt.reply_timeout * 1e6);
}

/* The message's outcome: code (a reply) or err (a transport error, code 0). */
static void end_tx(cthread_t *t, cconn_t *c, int code, int err)
{
    if (!c->in_tx)
        return;
    c->in_tx = false;
    if (code >= 200 && code < 300)
        CINC(t->st.msgs_ok);
    else
        CINC(t->st.msgs_failed);
    if (code > 0 && code < 600) {
        CINC(t->st.final[code]);
        hist_record(&t->st.lat, t->now > c->t_start ? t->now - c->t_start : 0);
    }
    if (t->rec) {
        if (code > 0)
            rec_line(t->rec, "<loadgen.%s.%llu@mxgate-load> %d\n", g_run_id, (unsigned long long)c->n, code);
        else
            rec_line(t->rec, "<loadgen.%s.%llu@mxgate-load> %s\n", g_run_id, (unsigned long long)c->n,
                     cerr_names[err]);
    }
}

/* A transaction ended before its end of data: RSET, then the next. */
static void tx_failed(cthread_t *t, cconn_t *c, int code)
{
    end_tx(t, c, code, 0);
    c->st = CS_RSET;
    send_text(t, c, "RSET\r\n");
}

static void tx_done(cthread_t *t, cconn_t *c)
{
    if (g_opt.per_message) {
        c->st = CS_QUIT;
        send_text(t, c, "QUIT\r\n");
        return;
    }
    go_idle(t, c);
}

static void tx_reply(cthread_t *t, cconn_t *c, int code)
{
    uint32_t p = c->phase++;
    uint32_t R = g_opt.rcpts;
    if (p == 0) { /* MAIL */
        if (code >= 300) {
            c->fail = code;
            if (c->lockstep)
                tx_failed(t, c, code);
            return;
        }
        if (c->lockstep) {
            size_t len = fmt_rcpt(c->cmd, c->cmdcap, c->n, 0);
            send_cmd(t, c, len);
        }
        return;
    }
    if (p <= R) { /* RCPT p-1 */
        if (code >= 200 && code < 300)
            c->rcpt_ok++;
        else
            c->last_rcpt = code;
        if (!c->lockstep)
            return;
        if (p < R) {
            size_t len = fmt_rcpt(c->cmd, c->cmdcap, c->n, p);
            send_cmd(t, c, len);
        } else if (c->rcpt_ok) {
            send_text(t, c, "DATA\r\n");
        } else {
            tx_failed(t, c, c->last_rcpt);
        }
        return;
    }
    if (p == R + 1) { /* DATA */
        if (code == 354) {
            send_body(t, c);
            return;
        }
        int why = c->fail ? c->fail : c->rcpt_ok == 0 && c->last_rcpt ? c->last_rcpt : code;
        tx_failed(t, c, why);
        return;
    }
    /* end of data */
    end_tx(t, c, code, 0);
    tx_done(t, c);
}

/* --starttls, and the server did not offer it (or refused it): the session
 * failed; QUIT, then a new one after a pause. */
static void no_starttls(cthread_t *t, cconn_t *c)
{
    CINC(t->st.err[E_NO_STARTTLS]);
    c->quit_err = true;
    c->st = CS_QUIT;
    send_text(t, c, "QUIT\r\n");
}

static void on_reply(cthread_t *t, cconn_t *c, int code)
{
    if (code >= 100 && code < 600)
        CINC(t->st.replies[code]);
    if (code == 421 && c->st != CS_QUIT) { /* the server is closing the session */
        end_tx(t, c, code, 0);
        c_close(t, c, E_N);
        return;
    }
    switch (c->st) {
    case CS_GREETING:
        if (code == 220) {
            atomic_store_explicit(&g_greeted, 1, memory_order_relaxed);
            CINC(t->st.greetings);
            hist_record(&t->st.greet, t->now - c->t_conn);
            c->st = CS_EHLO;
            c->ehlo_pipe = c->ehlo_tls = false;
            send_text(t, c, "EHLO %s\r\n", g_opt.ehlo);
        } else {
            CINC(t->st.err[E_GREETING]);
            c->st = CS_QUIT;
            send_text(t, c, "QUIT\r\n");
        }
        break;
    case CS_EHLO:
        if (code >= 200 && code < 300) {
            c->srv_pipe = c->ehlo_pipe;
            if (g_opt.starttls && !c->ssl) {
                if (c->ehlo_tls) {
                    c->st = CS_STARTTLS;
                    send_text(t, c, "STARTTLS\r\n");
                } else {
                    no_starttls(t, c);
                }
                break;
            }
            go_idle(t, c);
        } else {
            c->st = CS_HELO;
            send_text(t, c, "HELO %s\r\n", g_opt.ehlo);
        }
        break;
    case CS_HELO:
        if (code >= 200 && code < 300) {
            c->srv_pipe = false;
            if (g_opt.starttls && !c->ssl) {
                no_starttls(t, c);
                break;
            }
            go_idle(t, c);
        } else {
            CINC(t->st.err[E_GREETING]);
            c->st = CS_QUIT;
            send_text(t, c, "QUIT\r\n");
        }
        break;
    case CS_STARTTLS:
        if (code == 220)
            c->st = CS_TLSHS; /* parse_replies starts the handshake once this batch is read */
        else
            no_starttls(t, c);
        break;
    case CS_TX:
        tx_reply(t, c, code);
        break;
    case CS_RSET:
        go_idle(t, c);
        break;
    case CS_QUIT:
        c_close(t, c, c->quit_err ? E_N : -1);
        break;
    default: /* a reply nobody asked for */
        CINC(t->st.err[E_PROTOCOL]);
        c_close(t, c, E_PROTOCOL);
        break;
    }
}

/* Every complete reply line in the buffer; multi-line replies end at the
 * line whose fourth octet is a space. */
static void parse_replies(cthread_t *t, cconn_t *c)
{
    uint32_t off = 0;
    uint32_t gen = c->gen;
    while (off < c->inlen && c->st != CS_CLOSING && c->st != CS_TLSHS && c->gen == gen) {
        char *p = c->in + off;
        char *nl = memchr(p, '\n', c->inlen - off);
        if (!nl)
            break;
        size_t len = (size_t)(nl - p) + 1;
        off += (uint32_t)len;
        if (len < 4 || p[0] < '1' || p[0] > '5' || p[1] < '0' || p[1] > '9' || p[2] < '0' || p[2] > '9' ||
            (len > 5 && p[3] != ' ' && p[3] != '-')) {
            CINC(t->st.err[E_PROTOCOL]);
            end_tx(t, c, 0, E_PROTOCOL);
            c_close(t, c, E_PROTOCOL);
            return;
        }
        int code = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
        bool more = len > 5 && p[3] == '-';
        if (c->st == CS_EHLO && len >= 15 && strncasecmp(p + 4, "PIPELINING", 10) == 0 &&
            (p[14] == '\r' || p[14] == '\n' || p[14] == ' '))
            c->ehlo_pipe = true;
        if (c->st == CS_EHLO && len >= 13 && strncasecmp(p + 4, "STARTTLS", 8) == 0 &&
            (p[12] == '\r' || p[12] == '\n' || p[12] == ' '))
            c->ehlo_tls = true;
        if (!more)
            on_reply(t, c, code);
    }
    if (c->st == CS_CLOSING || c->gen != gen)
        return;
    if (c->st == CS_TLSHS && !c->ssl) { /* the 220 to STARTTLS */
        if (off < c->inlen) { /* plaintext after it: injected, or a confused server */
            CINC(t->st.err[E_PROTOCOL]);
            c_close(t, c, E_PROTOCOL);
            return;
        }
        c->inlen = 0;
        tls_start(t, c);
        return;
    }
    if (off) {
        memmove(c->in, c->in + off, c->inlen - off);
        c->inlen -= off;
    }
    if (c->inlen == IN_SZ) { /* a reply line longer than the buffer */
        CINC(t->st.err[E_PROTOCOL]);
        end_tx(t, c, 0, E_PROTOCOL);
        c_close(t, c, E_PROTOCOL);
    }
}

/* ---- TLS (--starttls): OpenSSL on memory BIOs, the ring does the I/O ---- */

static void tls_failed(cthread_t *t, cconn_t *c, const char *what)
{
    if (!g_opt.quiet && !atomic_exchange(&g_tls_said, 1)) {
        char why[256];
        unsigned long e = ERR_peek_last_error();
        if (e)
            ERR_error_string_n(e, why, sizeof why);
        else
            snprintf(why, sizeof why, "no reason given");
        long v = c->ssl ? SSL_get_verify_result(c->ssl) : X509_V_OK;
        fprintf(stderr, "mxgate-load: TLS %s failed: %s%s%s (counted as error tls; said once)\n", what, why,
                v != X509_V_OK ? "; certificate: " : "", v != X509_V_OK ? X509_verify_cert_error_string(v) : "");
    }
    ERR_clear_error();
    CINC(t->st.err[E_TLS]);
    c_close(t, c, E_TLS);
}

/* A session the server sent: the newest one is what this thread's next
 * connections resume (TLS 1.3 tickets come after the handshake, on a read). */
static int new_session_cb(SSL *s, SSL_SESSION *sess)
{
    cthread_t *t = SSL_get_app_data(s);
    if (!t || !g_opt.tls_resume)
        return 0;
    SSL_SESSION_free(t->sess);
    t->sess = sess;
    return 1; /* the reference is ours */
}

static int tls_ctx_init(char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        snprintf(err, errlen, "SSL_CTX_new failed");
        return -1;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    /* Sessions stay per thread (no lock per handshake), never in the
     * context's cache. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, new_session_cb);
    if (g_opt.tls_verify) {
        int ok = g_opt.tls_ca ? SSL_CTX_load_verify_locations(ctx, g_opt.tls_ca, NULL)
                              : SSL_CTX_set_default_verify_paths(ctx);
        if (ok != 1) {
            snprintf(err, errlen, "--tls-ca %s: cannot load the trust anchors", g_opt.tls_ca ? g_opt.tls_ca : "(system)");
            SSL_CTX_free(ctx);
            return -1;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    g_ssl_ctx = ctx;
    return 0;
}

/* Sending in TLS: while no send is in flight, encrypt queued plaintext
 * (up to OBUF_SZ of ciphertext waiting), drain the write BIO into obuf and
 * send it. obuf is written only here, and only with no send in flight. */
static void tls_flush(cthread_t *t, cconn_t *c)
{
    if (c->send_on || c->st == CS_CLOSING)
        return;
    if (c->ooff >= c->olen) {
        c->ooff = c->olen = 0;
        while (SSL_is_init_finished(c->ssl) && BIO_ctrl_pending(c->wbio) < OBUF_SZ) {
            while (c->ioff < c->niov && c->iov[c->ioff].iov_len == 0)
                c->ioff++;
            if (c->ioff == c->niov) {
                c->niov = c->ioff = 0;
                if (!c->npiov)
                    break;
                memcpy(c->iov, c->piov, c->npiov * sizeof c->iov[0]);
                c->niov = c->npiov;
                c->npiov = 0;
                continue;
            }
            struct iovec *v = &c->iov[c->ioff];
            size_t n = v->iov_len < TLS_CHUNK ? v->iov_len : TLS_CHUNK, done = 0;
            ERR_clear_error();
            if (SSL_write_ex(c->ssl, v->iov_base, n, &done) != 1) {
                tls_failed(t, c, "write");
                return;
            }
            v->iov_base = (char *)v->iov_base + done;
            v->iov_len -= done;
        }
        int k = BIO_read(c->wbio, c->obuf, (int)OBUF_SZ);
        if (k <= 0)
            return;
        c->olen = (uint32_t)k;
    }
    struct io_uring_sqe *sqe = get_sqe(&t->ring);
    io_uring_prep_send(sqe, c->fd, c->obuf + c->ooff, c->olen - c->ooff, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, UD(OP_SEND, c->slot, c->gen));
    c->send_on = true;
    c->send_tls = true;
    c->inflight++;
}

/* The handshake, a step: done (EHLO sent), still going, or failed (closed). */
static void tls_step(cthread_t *t, cconn_t *c)
{
    ERR_clear_error();
    int rc = SSL_do_handshake(c->ssl);
    if (rc == 1) {
        CINC(t->st.tls_handshakes);
        if (SSL_session_reused(c->ssl))
            CINC(t->st.tls_resumed);
        hist_record(&t->st.tls_hs, t->now > c->t_hs ? t->now - c->t_hs : 0);
        c->st = CS_EHLO; /* RFC 3207 4.2: the session starts over */
        c->ehlo_pipe = c->ehlo_tls = false;
        send_text(t, c, "EHLO %s\r\n", g_opt.ehlo); /* goes out with the client's Finished */
        return;
    }
    int e = SSL_get_error(c->ssl, rc);
    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
        tls_failed(t, c, "handshake");
        return;
    }
    tls_flush(t, c);
}

/* After the 220 to STARTTLS: an SSL for the connection, the ClientHello out. */
static void tls_start(cthread_t *t, cconn_t *c)
{
    ERR_clear_error();
    if (!c->raw) {
        c->raw = malloc(RAW_SZ);
        c->obuf = malloc(OBUF_SZ);
        if (!c->raw || !c->obuf) {
            free(c->raw);
            free(c->obuf);
            c->raw = c->obuf = NULL;
            CINC(t->st.err[E_OTHER]);
            c_close(t, c, E_OTHER);
            return;
        }
    }
    SSL *s = SSL_new(g_ssl_ctx);
    BIO *r = BIO_new(BIO_s_mem()), *w = BIO_new(BIO_s_mem());
    if (!s || !r || !w) {
        SSL_free(s);
        BIO_free(r);
        BIO_free(w);
        tls_failed(t, c, "setup");
        return;
    }
    BIO_set_mem_eof_return(r, -1); /* empty: "retry", not end of file */
    BIO_set_mem_eof_return(w, -1);
    SSL_set_bio(s, r, w); /* the SSL owns both */
    SSL_set_connect_state(s);
    SSL_set_app_data(s, t);
    c->ssl = s;
    c->rbio = r;
    c->wbio = w;
    c->olen = c->ooff = 0;
    if (g_opt.tls_name && (SSL_set_tlsext_host_name(s, g_opt.tls_name) != 1 ||
                           (g_opt.tls_verify && SSL_set1_host(s, g_opt.tls_name) != 1))) {
        tls_failed(t, c, "setup");
        return;
    }
    if (g_opt.tls_resume && t->sess && SSL_SESSION_is_resumable(t->sess)) {
        /* A copy: at the end of a TLS 1.3 handshake OpenSSL marks the
         * session it used as not resumable (tickets are meant to be used
         * once), which would spoil the thread's until the next ticket. */
        SSL_SESSION *d = SSL_SESSION_dup(t->sess);
        if (!d || SSL_set_session(s, d) != 1)
            ERR_clear_error(); /* a full handshake then */
        SSL_SESSION_free(d);
    }
    c->t_hs = t->now;
    c->deadline = t->now + (uint64_t)(g_opt.reply_timeout * 1e6); /* the handshake's timeout */
    tls_step(t, c);
}

/* n octets of ciphertext arrived in raw. */
static void tls_input(cthread_t *t, cconn_t *c, size_t n)
{
    uint32_t gen = c->gen;
    if (BIO_write(c->rbio, c->raw, (int)n) != (int)n) {
        tls_failed(t, c, "read");
        return;
    }
    if (c->st == CS_TLSHS) {
        tls_step(t, c); /* done: EHLO sent (which may have failed and closed it) */
        if (c->gen != gen || c->st != CS_EHLO || !c->ssl)
            return;
    }
    for (;;) { /* every whole record; a reply may close the connection */
        size_t got = 0;
        ERR_clear_error();
        int rc = SSL_read_ex(c->ssl, c->in + c->inlen, IN_SZ - c->inlen, &got);
        if (rc == 1) {
            c->inlen += (uint32_t)got;
            parse_replies(t, c); /* leaves room in c->in, or closes */
            if (c->gen != gen || c->st == CS_CLOSING || !c->ssl)
                return;
            continue;
        }
        int e = SSL_get_error(c->ssl, rc);
        if (e == SSL_ERROR_WANT_READ)
            break;
        if (e == SSL_ERROR_ZERO_RETURN) { /* close_notify */
            ERR_clear_error();
            if (c->st == CS_QUIT) {
                c_close(t, c, c->quit_err ? E_N : -1);
            } else {
                CINC(t->st.err[E_CLOSED]);
                c_close(t, c, E_CLOSED);
            }
            return;
        }
        tls_failed(t, c, "read");
        return;
    }
    tls_flush(t, c); /* what reading made OpenSSL say, if anything */
}

/* ---- connections ---- */

static void idle_push(cthread_t *t, cconn_t *c)
{
    if (c->in_idle)
        return;
    c->in_idle = true;
    t->idle[t->nidle++] = c->slot;
}

static void arm_sched(cthread_t *t)
{
    if (t->sched_on || g_opt.rate <= 0 || !t->nidle || !work_left(t))
        return;
    uint64_t due = sched_us(t, t->issued);
    t->sched_ts.tv_sec = (long long)(due / 1000000u);
    t->sched_ts.tv_nsec = (long long)(due % 1000000u) * 1000;
    struct io_uring_sqe *sqe = get_sqe(&t->ring);
    io_uring_prep_timeout(sqe, &t->sched_ts, 0, IORING_TIMEOUT_ABS);
    io_uring_sqe_set_data64(sqe, UD(OP_CTIMER, 0, 0));
    t->sched_on = true;
}

static void go_idle(cthread_t *t, cconn_t *c)
{
    c->st = CS_IDLE;
    c->deadline = 0;
    if (g_opt.per_message && c->session_msgs >= 1) {
        c->st = CS_QUIT;
        send_text(t, c, "QUIT\r\n");
        return;
    }
    uint64_t n, ts;
    switch (claim(t, &n, &ts)) {
    case CLAIM_OK:
        start_tx(t, c, n, ts);
        break;
    case CLAIM_LATER:
        idle_push(t, c);
        arm_sched(t);
        break;
    default:
        c->st = CS_QUIT;
        send_text(t, c, "QUIT\r\n");
        break;
    }
}

/* Idle connections take what is due; when nothing is left they quit. */
static void serve_idle(cthread_t *t)
{
    while (t->nidle) {
        cconn_t *c = &t->conns[t->idle[t->nidle - 1]];
        if (c->st != CS_IDLE || !c->in_idle) {
            c->in_idle = false;
            t->nidle--;
            continue;
        }
        uint64_t n, ts;
        int r = claim(t, &n, &ts);
        if (r == CLAIM_LATER)
            break;
        t->nidle--;
        c->in_idle = false;
        if (r == CLAIM_OK) {
            start_tx(t, c, n, ts);
        } else {
            c->st = CS_QUIT;
            send_text(t, c, "QUIT\r\n");
        }
    }
    arm_sched(t);
}

static void finish_close(cthread_t *t, cconn_t *c, bool failed)
{
    close(c->fd);
    c->fd = -1;
    if (c->counted_open) {
        c->counted_open = false;
        CSET(t->st.open, CGET(t->st.open) - 1);
    }
    c->gen++;
    c->inlen = 0;
    c->niov = c->ioff = c->npiov = 0;
    c->recv_on = c->send_on = c->send_tls = c->quit_err = false;
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
        c->rbio = c->wbio = NULL;
    }
    c->olen = c->ooff = 0;
    c->session_msgs = 0; /* in_idle stays: its entry in the idle list is dropped there */
    c->deadline = 0;
    CINC(t->st.sessions_done);
    if (work_left(t)) {
        c->st = CS_WAIT;
        c->wait_until = t->now + (failed ? RECONNECT_US : 0);
        if (!failed)
            c_connect(t, c);
    } else {
        c->st = CS_FREE;
        t->nactive--;
    }
}

/* err: an enum cerr counted by the caller, E_N for a close that is not an
 * error but pauses before reconnecting (a 421), or -1 for an orderly close. */
static void c_close(cthread_t *t, cconn_t *c, int err)
{
    if (c->st == CS_CLOSING || c->st == CS_FREE || c->st == CS_WAIT)
        return;
    if (c->in_tx)
        end_tx(t, c, 0, err >= 0 && err < E_N ? err : E_CLOSED);
    if (c->ssl && err < 0 && SSL_is_init_finished(c->ssl)) {
        /* An orderly end: OpenSSL would mark the session of a connection
         * freed without a shutdown as not resumable. */
        SSL_set_quiet_shutdown(c->ssl, 1);
        SSL_shutdown(c->ssl);
        ERR_clear_error();
    }
    c->st = CS_CLOSING;
    c->close_failed = err >= 0; /* reconnect after a pause */
    c->deadline = 0;
    if (c->fd >= 0)
        shutdown(c->fd, SHUT_RDWR);
    if (c->inflight == 0)
        finish_close(t, c, err >= 0);
}

static void c_connect(cthread_t *t, cconn_t *c)
{
    int fd = socket(g_opt.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        CINC(t->st.err[E_OTHER]);
        c->st = CS_WAIT;
        c->wait_until = t->now + RECONNECT_US;
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->st = CS_CONNECTING;
    c->t_conn = t->now;
    c->deadline = t->now + (uint64_t)(g_opt.reply_timeout * 1e6);
    c->srv_pipe = false;
    CINC(t->st.connects);
    struct io_uring_sqe *sqe = get_sqe(&t->ring);
    io_uring_prep_connect(sqe, fd, (struct sockaddr *)&g_opt.addr, g_opt.addrlen);
    io_uring_sqe_set_data64(sqe, UD(OP_CONNECT, c->slot, c->gen));
    c->inflight++;
}

static int errno_kind(int e)
{
    switch (e) {
    case ECONNREFUSED:
        return E_REFUSED;
    case ECONNRESET:
    case EPIPE:
    case ECONNABORTED:
        return E_RESET;
    case ETIMEDOUT:
        return E_TIMEOUT;
    default:
        return E_OTHER;
    }
}

static void conn_cqe(cthread_t *t, unsigned op, cconn_t *c, int res)
{
    c->inflight--;
    if (op == OP_RECV)
        c->recv_on = false;
    else if (op == OP_SEND)
        c->send_on = false;
    if (c->st == CS_CLOSING) {
        if (c->inflight == 0)
            finish_close(t, c, c->close_failed);
        return;
    }
    switch (op) {
    case OP_CONNECT:
        if (res < 0) {
            int k = res == -ECONNREFUSED ? E_REFUSED : res == -ETIMEDOUT ? E_TIMEOUT : E_CONNECT;
            CINC(t->st.err[k]);
            if (!atomic_load_explicit(&g_greeted, memory_order_relaxed)) {
                /* nothing ever answered: the target is not there */
                int none = AB_NONE;
                atomic_compare_exchange_strong(&g_abort, &none, AB_UNREACHABLE);
                atomic_store(&g_stop, 1);
                snprintf(t->err, sizeof t->err, "connect to %s: %s", g_opt.addr_text, strerror(-res));
            }
            c_close(t, c, k);
            return;
        }
        c->counted_open = true;
        CSET(t->st.open, CGET(t->st.open) + 1);
        c->st = CS_GREETING;
        arm_recv(t, c);
        break;
    case OP_RECV:
        if (res > 0) {
            uint32_t gen = c->gen; /* a reply may close it and start a new connection in the slot */
            if (c->ssl) {
                tls_input(t, c, (size_t)res);
            } else {
                c->inlen += (uint32_t)res;
                parse_replies(t, c);
            }
            if (c->gen == gen && c->st != CS_CLOSING && c->st != CS_WAIT && c->st != CS_FREE)
                arm_recv(t, c);
        } else if (res == 0) {
            if (c->st == CS_QUIT) {
                c_close(t, c, c->quit_err ? E_N : -1);
            } else {
                CINC(t->st.err[E_CLOSED]);
                c_close(t, c, E_CLOSED);
            }
        } else if (res == -EAGAIN || res == -EINTR || res == -ENOBUFS) {
            arm_recv(t, c);
        } else {
            int k = errno_kind(-res);
            CINC(t->st.err[k]);
            c_close(t, c, k);
        }
        break;
    case OP_SEND:
        if (res < 0) {
            if (res == -EAGAIN || res == -EINTR) {
                arm_send(t, c);
                return;
            }
            int k = errno_kind(-res);
            CINC(t->st.err[k]);
            c_close(t, c, k);
            return;
        }
        if (c->send_tls) {
            c->ooff += (uint32_t)res;
            arm_send(t, c);
            break;
        }
        {
            size_t n = (size_t)res;
            while (n && c->ioff < c->niov) {
                struct iovec *v = &c->iov[c->ioff];
                if (n >= v->iov_len) {
                    n -= v->iov_len;
                    v->iov_len = 0;
                    c->ioff++;
                } else {
                    v->iov_base = (char *)v->iov_base + n;
                    v->iov_len -= n;
                    n = 0;
                }
            }
        }
        arm_send(t, c); /* the rest of a short send, or what was queued behind */
        break;
    default:
        break;
    }
}

/* ---- the tick: timeouts, reconnects, the end of the run ---- */

static void arm_tick(cthread_t *t)
{
    t->tick_ts.tv_sec = 0;
    t->tick_ts.tv_nsec = TICK_US * 1000;
    struct io_uring_sqe *sqe = get_sqe(&t->ring);
    io_uring_prep_timeout(sqe, &t->tick_ts, 0, 0);
    io_uring_sqe_set_data64(sqe, UD(OP_TIMER, 0, 0));
}

static void tick(cthread_t *t)
{
    if (atomic_load(&g_stop) && !t->stopping) {
        t->stopping = true;
        t->stop_at = t->now;
    }
    for (uint32_t i = 0; i < t->nconns; i++) {
        cconn_t *c = &t->conns[i];
        if (c->st == CS_FREE || c->st == CS_CLOSING)
            continue;
        if (c->st == CS_WAIT) {
            if (!work_left(t)) {
                c->st = CS_FREE;
                t->nactive--;
            } else if (t->now >= c->wait_until) {
                c_connect(t, c);
            }
            continue;
        }
        if (t->stopping) {
            CINC(t->st.err[E_ABORTED]);
            c_close(t, c, E_ABORTED);
            continue;
        }
        if (c->deadline && t->now > c->deadline) {
            CINC(t->st.err[E_TIMEOUT]);
            c_close(t, c, E_TIMEOUT);
        }
    }
    if (!work_left(t))
        serve_idle(t); /* the idle ones quit */
}

static void *cthread_main(void *arg)
{
    cthread_t *t = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    if (ring_init(&t->ring, RING_ENTRIES, t->err, sizeof t->err)) {
        int none = AB_NONE;
        atomic_compare_exchange_strong(&g_abort, &none, AB_SETUP);
        atomic_store(&g_stop, 1);
        t->end_us = now_us();
        atomic_store(&t->done, 1);
        return NULL;
    }
    t->ring_ok = true;
    t->now = now_us();
    arm_tick(t);
    for (uint32_t i = 0; i < t->nconns; i++) {
        t->nactive++;
        if (work_left(t))
            c_connect(t, &t->conns[i]);
        else
            t->conns[i].st = CS_WAIT;
    }
    while (t->nactive > 0) {
        if (t->stopping && t->now - t->stop_at > 1000000u)
            break; /* what is still in flight is cancelled with the ring */
        int rc = io_uring_submit_and_wait(&t->ring, 1);
        if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY && rc != -ETIME) {
            snprintf(t->err, sizeof t->err, "io_uring_submit_and_wait: %s", strerror(-rc));
            break;
        }
        t->now = now_us();
        struct io_uring_cqe *cqe;
        unsigned head, n = 0;
        io_uring_for_each_cqe(&t->ring, head, cqe)
        {
            uint64_t ud = io_uring_cqe_get_data64(cqe);
            unsigned op = UD_OP(ud);
            n++;
            if (op == OP_TIMER) {
                tick(t);
                if (t->nactive > 0)
                    arm_tick(t);
            } else if (op == OP_CTIMER) {
                t->sched_on = false;
                serve_idle(t);
            } else {
                uint32_t slot = UD_SLOT(ud);
                if (slot < t->nconns && t->conns[slot].gen == UD_GEN(ud))
                    conn_cqe(t, op, &t->conns[slot], cqe->res);
            }
        }
        io_uring_cq_advance(&t->ring, n);
    }
    bool completed = !t->stopping && !atomic_load(&g_stop) && t->err[0] == 0;
    t->end_us = now_us();
    atomic_store(&t->done, completed ? 2 : 1);
    return NULL;
}

/* ---- the main thread: start, progress, summary ---- */

static void sum_stats(cstats_t *s, hist_t *lat, hist_t *greet, hist_t *tls_hs)
{
    memset(s, 0, sizeof *s);
    hist_init(lat);
    hist_init(greet);
    hist_init(tls_hs);
    for (int i = 0; i < g_nthr; i++) {
        cstats_t *x = &g_thr[i].st;
        CADD(s->msgs_ok, CGET(x->msgs_ok));
        CADD(s->msgs_failed, CGET(x->msgs_failed));
        CADD(s->connects, CGET(x->connects));
        CADD(s->greetings, CGET(x->greetings));
        CADD(s->sessions_done, CGET(x->sessions_done));
        CADD(s->open, CGET(x->open));
        CADD(s->bytes_out, CGET(x->bytes_out));
        CADD(s->tls_handshakes, CGET(x->tls_handshakes));
        CADD(s->tls_resumed, CGET(x->tls_resumed));
        for (int k = 0; k < 600; k++) {
            CADD(s->replies[k], CGET(x->replies[k]));
            CADD(s->final[k], CGET(x->final[k]));
        }
        for (int k = 0; k < E_N; k++)
            CADD(s->err[k], CGET(x->err[k]));
        hist_merge(lat, &x->lat);
        hist_merge(greet, &x->greet);
        hist_merge(tls_hs, &x->tls_hs);
    }
}

static void progress(double el, const cstats_t *s, const cstats_t *prev, const hist_t *dl, double dt)
{
    char codes[512];
    size_t o = 0;
    codes[0] = 0;
    for (int k = 100; k < 600 && o < sizeof codes - 32; k++)
        if (CGET(s->final[k]))
            o += (size_t)snprintf(codes + o, sizeof codes - o, " %d:%llu", k,
                                  (unsigned long long)CGET(s->final[k]));
    uint64_t errs = 0;
    for (int k = 0; k < E_N; k++)
        errs += CGET(s->err[k]);
    uint64_t done = CGET(s->msgs_ok) + CGET(s->msgs_failed);
    uint64_t pdone = CGET(prev->msgs_ok) + CGET(prev->msgs_failed);
    char tls[64] = "";
    if (g_opt.starttls)
        snprintf(tls, sizeof tls, " | tls %llu (resumed %llu)", (unsigned long long)CGET(s->tls_handshakes),
                 (unsigned long long)CGET(s->tls_resumed));
    fprintf(stderr, "[%7.1fs] %8.0f msg/s  p50 %7.2f ms  p99 %7.2f ms | ok %llu failed %llu |%s | conns %llu%s | errors %llu\n",
            el, dt > 0 ? (double)(done - pdone) / dt : 0.0, hist_percentile(dl, 50) / 1000.0,
            hist_percentile(dl, 99) / 1000.0, (unsigned long long)CGET(s->msgs_ok),
            (unsigned long long)CGET(s->msgs_failed), codes[0] ? codes : " -", (unsigned long long)CGET(s->open),
            tls, (unsigned long long)errs);
}

static void summary(FILE *f, double el, bool completed, const cstats_t *s, const hist_t *lat, const hist_t *greet,
                    const hist_t *tls_hs)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
    double cs = (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    uint64_t ok = CGET(s->msgs_ok), failed = CGET(s->msgs_failed);
    static const char *const why[] = { "", "timeout", "unreachable", "signal", "setup" };
    json_t j = { .f = f };
    j_open(&j, NULL);
    j_str(&j, "mode", "client");
    j_open(&j, "config");
    j_str(&j, "target", g_opt.addr_text);
    j_u64(&j, "threads", (uint64_t)g_opt.threads);
    j_u64(&j, "connections", g_opt.connections);
    j_u64(&j, "messages", g_opt.messages);
    j_dbl(&j, "duration_s", g_opt.duration);
    j_dbl(&j, "timeout_s", g_opt.timeout);
    j_str(&j, "size", g_opt.size_text);
    j_u64(&j, "rcpts", g_opt.rcpts);
    j_str(&j, "from", g_opt.from);
    j_str(&j, "rcpt_domain", g_opt.rcpt_domain);
    j_bool(&j, "pipelining", g_opt.pipelining);
    j_str(&j, "session", g_opt.per_message ? "per-message" : "persistent");
    j_dbl(&j, "rate", g_opt.rate);
    j_bool(&j, "starttls", g_opt.starttls);
    j_bool(&j, "tls_resume", g_opt.tls_resume);
    j_bool(&j, "tls_verify", g_opt.tls_verify);
    j_str(&j, "run_id", g_run_id);
    j_close(&j);
    j_bool(&j, "completed", completed);
    int ab = atomic_load(&g_abort);
    j_str(&j, "aborted", ab > 0 && ab < 5 ? why[ab] : "");
    j_dbl(&j, "elapsed_s", el);
    j_u64(&j, "messages_ok", ok);
    j_u64(&j, "messages_failed", failed);
    j_dbl(&j, "msgs_per_s", el > 0 ? (double)ok / el : 0.0);
    j_u64(&j, "connects", CGET(s->connects));
    j_u64(&j, "greetings", CGET(s->greetings));
    j_u64(&j, "bytes_out", CGET(s->bytes_out));
    j_u64(&j, "tls_handshakes", CGET(s->tls_handshakes));
    j_u64(&j, "tls_resumed", CGET(s->tls_resumed));
    j_u64(&j, "tls_full", CGET(s->tls_handshakes) - CGET(s->tls_resumed));
    j_open(&j, "replies");
    char k3[16];
    for (int k = 100; k < 600; k++)
        if (CGET(s->replies[k])) {
            snprintf(k3, sizeof k3, "%d", k);
            j_u64(&j, k3, CGET(s->replies[k]));
        }
    j_close(&j);
    j_open(&j, "outcomes");
    for (int k = 100; k < 600; k++)
        if (CGET(s->final[k])) {
            snprintf(k3, sizeof k3, "%d", k);
            j_u64(&j, k3, CGET(s->final[k]));
        }
    j_close(&j);
    j_open(&j, "reply_classes");
    for (int cls = 2; cls <= 5; cls++) {
        uint64_t n = 0;
        for (int k = cls * 100; k < cls * 100 + 100; k++)
            n += CGET(s->final[k]);
        snprintf(k3, sizeof k3, "%dxx", cls);
        j_u64(&j, k3, n);
    }
    j_close(&j);
    j_open(&j, "errors");
    for (int k = 0; k < E_N; k++)
        j_u64(&j, cerr_names[k], CGET(s->err[k]));
    j_close(&j);
    j_hist(&j, "latency", lat);
    j_hist(&j, "connect_to_greeting", greet);
    j_hist(&j, "tls_handshake", tls_hs);
    j_dbl(&j, "cpu_user_s", cu);
    j_dbl(&j, "cpu_sys_s", cs);
    j_dbl(&j, "cpu_s_per_1000_msgs", ok + failed ? (cu + cs) * 1000.0 / (double)(ok + failed) : 0.0);
    j_close(&j);
}

int client_main(void)
{
    /* the run id and the bodies */
    if (g_opt.run_id) {
        snprintf(g_run_id, sizeof g_run_id, "%s", g_opt.run_id);
    } else {
        uint32_t r = 0;
        if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
            r = (uint32_t)time(NULL) ^ (uint32_t)getpid();
        snprintf(g_run_id, sizeof g_run_id, "%08x", r);
    }
    for (const char *p = g_run_id; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '-' ||
              *p == '_'))
            fatal("--run-id: letters, digits, '-' and '_' only");
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(g_date, sizeof g_date, "%a, %d %b %Y %H:%M:%S +0000", &tm);
    g_weight_total = 0;
    for (int i = 0; i < g_opt.nsizes; i++) {
        g_weight_total += g_opt.sizes[i].weight;
        size_t body = g_opt.sizes[i].size > HDR_EST + 16 ? g_opt.sizes[i].size - HDR_EST : 16;
        for (unsigned v = 0; v < NVAR; v++)
            make_body(&g_bodies[i][v], body, g_opt.seed * 1000003u + (uint64_t)i * 101u + v + 1u);
    }
    if (!g_weight_total)
        fatal("--size-dist: the weights add up to 0");
    if (g_opt.starttls) {
        char why[256];
        if (tls_ctx_init(why, sizeof why))
            fatal("%s", why);
    }

    int recfd = -1;
    if (g_opt.record_file) {
        recfd = open(g_opt.record_file, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
        if (recfd < 0)
            fatal("--record %s: %s", g_opt.record_file, strerror(errno));
    }
    FILE *jf = stdout;
    if (g_opt.json_file) {
        jf = fopen(g_opt.json_file, "w");
        if (!jf)
            fatal("--json %s: %s", g_opt.json_file, strerror(errno));
    }

    g_nthr = g_opt.threads;
    if ((uint32_t)g_nthr > g_opt.connections)
        g_nthr = (int)g_opt.connections;
    g_thr = calloc((size_t)g_nthr, sizeof *g_thr);
    if (!g_thr)
        fatal("out of memory");
    size_t cmdcap = 256 + strlen(g_opt.from) + (size_t)g_opt.rcpts * (strlen(g_opt.rcpt_domain) + 32);
    if (cmdcap < 1024)
        cmdcap = 1024;
    g_t0_us = now_us();
    g_end_us = g_opt.duration > 0 ? g_t0_us + (uint64_t)(g_opt.duration * 1e6) : UINT64_MAX;
    for (int i = 0; i < g_nthr; i++) {
        cthread_t *t = &g_thr[i];
        t->id = i;
        t->nconns = g_opt.connections / (uint32_t)g_nthr + ((uint32_t)i < g_opt.connections % (uint32_t)g_nthr);
        t->conns = calloc(t->nconns, sizeof *t->conns);
        t->idle = calloc(t->nconns, sizeof *t->idle);
        if (!t->conns || !t->idle)
            fatal("out of memory");
        for (uint32_t k = 0; k < t->nconns; k++) {
            cconn_t *c = &t->conns[k];
            c->slot = k;
            c->fd = -1;
            c->cmdcap = cmdcap;
            c->cmd = malloc(cmdcap);
            if (!c->cmd)
                fatal("out of memory");
        }
        if (g_opt.messages)
            t->quota = g_opt.messages / (uint64_t)g_nthr + ((uint64_t)i < g_opt.messages % (uint64_t)g_nthr);
        else
            t->quota = UINT64_MAX;
        t->rng = g_opt.seed ^ (0x9E3779B97F4A7C15ull * (uint64_t)(i + 1));
        hist_init(&t->st.lat);
        hist_init(&t->st.greet);
        hist_init(&t->st.tls_hs);
        if (recfd >= 0) {
            t->rec = malloc(sizeof *t->rec);
            if (!t->rec)
                fatal("out of memory");
            t->rec->fd = recfd;
            t->rec->len = 0;
        }
    }

    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    for (int i = 0; i < g_nthr; i++)
        if (pthread_create(&g_thr[i].th, NULL, cthread_main, &g_thr[i]))
            fatal("pthread_create: %s", strerror(errno));

    cstats_t *cur = malloc(sizeof *cur), *prev = calloc(1, sizeof *prev);
    hist_t *lat = malloc(sizeof *lat), *greet = malloc(sizeof *greet), *plat = malloc(sizeof *plat),
           *dl = malloc(sizeof *dl), *tls_hs = malloc(sizeof *tls_hs);
    if (!cur || !prev || !lat || !greet || !plat || !dl || !tls_hs)
        fatal("out of memory");
    hist_init(plat);
    uint64_t hard = g_t0_us + (uint64_t)(g_opt.timeout * 1e6);
    uint64_t next_progress = g_t0_us + 1000000u, last_progress = g_t0_us;
    for (;;) {
        int alldone = 1;
        for (int i = 0; i < g_nthr; i++)
            if (!atomic_load(&g_thr[i].done))
                alldone = 0;
        if (alldone)
            break;
        struct timespec ts = { 0, 5 * 1000000 }; /* the threads' end is taken from their own clocks */
        int sig = sigtimedwait(&sigs, NULL, &ts);
        uint64_t now = now_us();
        if (sig > 0) {
            int none = AB_NONE;
            atomic_compare_exchange_strong(&g_abort, &none, AB_SIGNAL);
            atomic_store(&g_stop, 1);
        }
        if (now >= hard && !atomic_load(&g_stop)) {
            int none = AB_NONE;
            atomic_compare_exchange_strong(&g_abort, &none, AB_TIMEOUT);
            atomic_store(&g_stop, 1);
        }
        if (now >= next_progress) {
            sum_stats(cur, lat, greet, tls_hs);
            hist_diff(dl, lat, plat);
            if (!g_opt.quiet)
                progress((double)(now - g_t0_us) / 1e6, cur, prev, dl, (double)(now - last_progress) / 1e6);
            memcpy(prev, cur, sizeof *cur);
            memcpy(plat, lat, sizeof *lat);
            last_progress = now;
            next_progress += 1000000u;
            if (next_progress <= now)
                next_progress = now + 1000000u;
        }
    }
    bool completed = atomic_load(&g_abort) == AB_NONE;
    for (int i = 0; i < g_nthr; i++) {
        pthread_join(g_thr[i].th, NULL);
        if (atomic_load(&g_thr[i].done) != 2)
            completed = false;
        if (g_thr[i].err[0])
            fprintf(stderr, "mxgate-load: thread %d: %s\n", i, g_thr[i].err);
    }
    uint64_t end = g_t0_us;
    for (int i = 0; i < g_nthr; i++)
        if (g_thr[i].end_us > end)
            end = g_thr[i].end_us;
    double el = (double)(end - g_t0_us) / 1e6;
    sum_stats(cur, lat, greet, tls_hs);
    for (int i = 0; i < g_nthr; i++) {
        if (g_thr[i].rec)
            rec_flush(g_thr[i].rec);
    }
    if (recfd >= 0)
        close(recfd);
    summary(jf, el, completed, cur, lat, greet, tls_hs);
    if (jf != stdout)
        fclose(jf);
    else
        fflush(stdout);
    if (!g_opt.quiet) {
        int ab = atomic_load(&g_abort);
        if (ab == AB_TIMEOUT)
            fprintf(stderr, "mxgate-load: hard timeout (%.0f s) reached\n", g_opt.timeout);
        else if (ab == AB_UNREACHABLE)
            fprintf(stderr, "mxgate-load: target %s unreachable\n", g_opt.addr_text);
    }
    for (int i = 0; i < g_nthr; i++) {
        cthread_t *t = &g_thr[i];
        if (t->ring_ok)
            io_uring_queue_exit(&t->ring);
        for (uint32_t k = 0; k < t->nconns; k++) {
            if (t->conns[k].fd >= 0)
                close(t->conns[k].fd);
            SSL_free(t->conns[k].ssl);
            free(t->conns[k].cmd);
            free(t->conns[k].raw);
            free(t->conns[k].obuf);
        }
        SSL_SESSION_free(t->sess);
        free(t->conns);
        free(t->idle);
        free(t->rec);
    }
    free(g_thr);
    for (int i = 0; i < g_opt.nsizes; i++)
        for (unsigned v = 0; v < NVAR; v++)
            free(g_bodies[i][v].wire);
    free(cur);
    free(prev);
    free(lat);
    free(greet);
    free(plat);
    free(dl);
    free(tls_hs);
    SSL_CTX_free(g_ssl_ctx);
    return completed ? 0 : 1;
}

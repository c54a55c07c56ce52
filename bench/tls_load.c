/*
 * tls_load.c - an SMTP load client that speaks STARTTLS (Postfix's
 * smtp-source does not), for bench/tls.sh.
 *
 *   tls_load [options] HOST:PORT
 *
 * Modes:
 *   (default)        messages: EHLO, STARTTLS, handshake, EHLO, then MAIL,
 *                    RCPT, DATA, body, "." per message, QUIT at the end;
 *                    --plain skips STARTTLS (the same client for the
 *                    plaintext baseline)
 *   --handshakes N   N sessions of EHLO, STARTTLS, handshake, QUIT (no
 *                    mail): handshakes per second; --plain: EHLO, QUIT
 *   --idle N         N sessions set up (greeting, EHLO, STARTTLS, handshake,
 *                    EHLO) and then held open without a byte for --hold
 *                    seconds; with --rss-pid, the server's VmRSS before and
 *                    while they are held
 *
 * Why one epoll loop per thread with non-blocking OpenSSL, not a thread per
 * session: on the 2-core box the client shares the CPUs with the server it
 * measures, so it must cost less than the server per message. A thread per
 * session pays a context switch per reply and wakes once per reply; a loop
 * takes every reply that is ready in one epoll_wait and needs no lock. It is
 * also the only way to hold 10 000 idle sessions. One thread (the default)
 * is enough to keep 2 mxgate workers busy with messages (it costs about
 * half of mxgate's CPU per message); --threads spreads the sessions over
 * more loops, each with its own epoll, sharing only the counters that hand
 * out work. Handshakes are the exception: OpenSSL 3.0's client side costs
 * more than its server side (decoding the server's certificate alone is
 * about 120 us, and the signature is verified), about 2.4 times mxgate's
 * CPU per full handshake here, so on 2 cores the handshake rate is bounded
 * by the client; bench/tls.sh reads mxgate's CPU per handshake for that.
 *
 * The socket belongs to OpenSSL (SSL_set_fd) once the 220 to STARTTLS is
 * in; read-ahead lets one read() take every record that is there. A reply
 * arriving in a phase that does not expect it, a code other than the one
 * the phase expects, a malformed line or any I/O or TLS error is counted as
 * an error and closes that session (the first ones are printed with the
 * reply); the run goes on until --max-errors and exits non-zero if there
 * was any error, if the time limit stopped it, or if fewer messages,
 * sessions or idle sessions than asked for were done.
 *
 * Every loop is bounded: work is handed out by count (messages, handshakes,
 * idle sessions), each claim is one attempt, sessions that fail are not
 * retried beyond what is left to hand out, and --time-limit ends the run
 * (default 300 s) naming the phase each open session was stuck in.
 *
 * Last line, for scripts:
 *   tls_load: mode=messages messages=20000 seconds=3.210 msgs_per_s=6230
 *     sessions=50 handshakes=50 resumed=0 handshakes_per_s=... errors=0 ...
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum mode { M_MESSAGES, M_HANDSHAKES, M_IDLE };
static const char *const mode_name[] = { "messages", "handshakes", "idle" };

static struct {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    const char *target;
    enum mode mode;
    unsigned sessions, threads, max_errors, idle_window;
    uint64_t messages, per_session, handshakes, idle;
    size_t size;
    bool plain, resume, pipeline;
    int tls_min, tls_max;
    double time_limit, hold;
    long rss_pid;
    const char *helo, *from, *to;
} opt = {
    .mode = M_MESSAGES,
    .sessions = 50,
    .threads = 1,
    .max_errors = 10,
    .idle_window = 256,
    .messages = 20000,
    .size = 4096,
    .tls_min = TLS1_2_VERSION,
    .tls_max = TLS1_3_VERSION,
    .time_limit = 300,
    .hold = 2,
    .helo = "client.bench",
    .from = "sender@src.test",
    .to = "user@example.com",
};

/* A session's phase: what it waits for. */
enum phase {
    P_FREE,      /* no connection */
    P_CONNECT,   /* non-blocking connect in progress */
    P_GREET,     /* 220 greeting */
    P_EHLO,      /* 250 to EHLO (before or after TLS) */
    P_STARTTLS,  /* 220 to STARTTLS */
    P_HANDSHAKE, /* TLS handshake */
    P_MAIL,      /* 250 to MAIL */
    P_RCPT,      /* 250 to RCPT */
    P_DATA,      /* 354 to DATA */
    P_DOT,       /* 250 to the final dot */
    P_QUIT,      /* 221 to QUIT */
    P_CLOSING,   /* after 221: the server's close */
    P_IDLE,      /* --idle: held, nothing may come */
    P_COUNT
};
static const char *const phase_name[P_COUNT] = {
    "free", "connect", "greeting", "ehlo", "starttls", "handshake", "mail",
    "rcpt", "data", "dot", "quit", "closing", "idle",
};

struct stats {
    uint64_t messages, sessions, handshakes, resumed, opened, errors, idle_up;
    uint64_t replies[6]; /* by class: 1xx .. 5xx */
    uint64_t stuck[P_COUNT];
};

struct loop;

struct conn {
    struct loop *lp;
    int fd;
    SSL *ssl;
    SSL_SESSION *last; /* --resume: this slot's newest session */
    enum phase ph;
    uint32_t events;   /* the epoll mask registered now */
    bool starttls, pipelining; /* what the last EHLO offered */
    bool tls;
    uint64_t msgs;     /* messages on this session */
    const char *out;   /* output not yet sent: cmd or the shared body */
    size_t out_len;
    size_t in_len;
    char cmd[1100];
    char in[2048];     /* replies; an EHLO reply fits many times */
};

struct loop {
    pthread_t th;
    int ep;
    struct conn *c;
    unsigned n;         /* slots */
    unsigned next_open; /* --idle: the next slot to connect */
    unsigned active;    /* slots with a connection or work to come */
    unsigned setting_up; /* --idle: sessions not yet held or failed */
    bool joined;
    struct stats st;
};

static SSL_CTX *ctx;
static char *body;   /* the message and its final dot, shared by every session */
static size_t body_len;
static atomic_uint_fast64_t claimed; /* messages or handshakes handed out */
static atomic_uint errors_total, errors_printed;
static atomic_uint settled;          /* --idle: sessions held or failed */
static atomic_bool stop;
static pthread_mutex_t seen_mu = PTHREAD_MUTEX_INITIALIZER;
static char seen_proto[32], seen_cipher[80];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           (double)ru.ru_stime.tv_usec / 1e6;
}

static long rss_kb(long pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) {
            kb = strtol(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kb;
}

static void slot_next(struct conn *c);

static void conn_close(struct conn *c)
{
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0)
        close(c->fd); /* leaves the epoll set with it */
    c->fd = -1;
    c->ph = P_FREE;
    c->tls = false;
    c->out_len = 0;
    c->in_len = 0;
    c->events = 0;
}

/* An error: counted, the first ones printed, the session closed. Always -1. */
static int fail(struct conn *c, const char *fmt, ...)
{
    c->lp->st.errors++;
    unsigned n = atomic_fetch_add(&errors_total, 1) + 1;
    if (atomic_fetch_add(&errors_printed, 1) < 20) {
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        fprintf(stderr, "tls_load: error: session in %s (%s, %llu messages on it): %s\n", phase_name[c->ph],
                c->tls ? "tls" : "plain", (unsigned long long)c->msgs, msg);
    }
    if (n >= opt.max_errors)
        atomic_store(&stop, true);
    ERR_clear_error();
    enum phase was = c->ph;
    conn_close(c);
    if (opt.mode == M_IDLE && was != P_IDLE) {
        c->lp->setting_up--;
        atomic_fetch_add(&settled, 1);
    }
    slot_next(c);
    return -1;
}

static int fail_ssl(struct conn *c, const char *what, int e)
{
    unsigned long code = ERR_peek_error();
    char why[256];
    if (code)
        ERR_error_string_n(code, why, sizeof why);
    else if (e == SSL_ERROR_SYSCALL)
        snprintf(why, sizeof why, "%s", errno ? strerror(errno) : "connection closed by the server");
    else
        snprintf(why, sizeof why, "SSL_get_error %d", e);
    return fail(c, "TLS %s: %s", what, why);
}

static void want(struct conn *c, uint32_t ev)
{
    if (ev == c->events)
        return;
    struct epoll_event e = { .events = ev, .data.ptr = c };
    epoll_ctl(c->lp->ep, EPOLL_CTL_MOD, c->fd, &e);
    c->events = ev;
}

/* Sends what is pending: 0 all sent, 1 the socket is full (waits for
 * EPOLLOUT), -1 the session failed. */
static int flush(struct conn *c)
{
    while (c->out_len) {
        size_t n;
        if (c->ssl) {
            int r = SSL_write_ex(c->ssl, c->out, c->out_len, &n);
            if (r != 1) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_WRITE) {
                    want(c, EPOLLIN | EPOLLOUT);
                    return 1;
                }
                if (e == SSL_ERROR_WANT_READ) {
                    want(c, EPOLLIN);
                    return 1;
                }
                return fail_ssl(c, "write", e);
            }
        } else {
            ssize_t w = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    want(c, EPOLLIN | EPOLLOUT);
                    return 1;
                }
                return fail(c, "send: %s", strerror(errno));
            }
            n = (size_t)w;
        }
        c->out += n;
        c->out_len -= n;
    }
    if (c->events & EPOLLOUT)
        want(c, EPOLLIN);
    return 0;
}

static int send_out(struct conn *c, const char *p, size_t n)
{
    if (c->out_len) /* a reply came before the command it answers had left */
        return fail(c, "reply before our command was sent");
    c->out = p;
    c->out_len = n;
    return flush(c) < 0 ? -1 : 0;
}

static int send_cmd(struct conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(c->cmd, sizeof c->cmd, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof c->cmd)
        return fail(c, "command too long");
    return send_out(c, c->cmd, (size_t)n);
}

static bool claim(uint64_t limit)
{
    return atomic_fetch_add(&claimed, 1) < limit;
}

static int quit(struct conn *c)
{
    c->ph = P_QUIT;
    return send_cmd(c, "QUIT\r\n");
}

static int next_message(struct conn *c)
{
    if ((opt.per_session && c->msgs >= opt.per_session) || atomic_load(&stop) || !claim(opt.messages))
        return quit(c);
    c->ph = P_MAIL;
    if (opt.pipeline)
        return send_cmd(c, "MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n", opt.from, opt.to);
    return send_cmd(c, "MAIL FROM:<%s>\r\n", opt.from);
}

static void note_tls(struct conn *c)
{
    struct stats *st = &c->lp->st;
    st->handshakes++;
    if (SSL_session_reused(c->ssl))
        st->resumed++;
    if (!seen_proto[0]) {
        pthread_mutex_lock(&seen_mu);
        if (!seen_proto[0]) {
            snprintf(seen_cipher, sizeof seen_cipher, "%s", SSL_get_cipher_name(c->ssl));
            snprintf(seen_proto, sizeof seen_proto, "%s", SSL_get_version(c->ssl));
        }
        pthread_mutex_unlock(&seen_mu);
    }
}

/* One step of the handshake; on completion the session goes on in TLS. */
static int handshake(struct conn *c)
{
    int r = SSL_connect(c->ssl);
    if (r != 1) {
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ) {
            want(c, EPOLLIN);
            return 0;
        }
        if (e == SSL_ERROR_WANT_WRITE) {
            want(c, EPOLLIN | EPOLLOUT);
            return 0;
        }
        return fail_ssl(c, "handshake", e);
    }
    want(c, EPOLLIN);
    c->tls = true;
    note_tls(c);
    if (opt.mode == M_HANDSHAKES)
        return quit(c);
    c->ph = P_EHLO;
    c->starttls = c->pipelining = false;
    return send_cmd(c, "EHLO %s\r\n", opt.helo);
}

static int start_tls(struct conn *c)
{
    c->ssl = SSL_new(ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1)
        return fail(c, "SSL_new: out of memory");
    SSL_set_app_data(c->ssl, c);
    if (opt.resume && c->last)
        SSL_set_session(c->ssl, c->last);
    SSL_set_connect_state(c->ssl);
    c->ph = P_HANDSHAKE;
    return handshake(c);
}

/* --resume: keep the newest session (TLS 1.3: each ticket as it comes). */
static int new_session(SSL *ssl, SSL_SESSION *sess)
{
    struct conn *c = SSL_get_app_data(ssl);
    if (!c)
        return 0;
    if (c->last)
        SSL_SESSION_free(c->last);
    c->last = sess;
    return 1; /* the reference is ours */
}

static int expect(struct conn *c, int code, int want_code, const char *line, size_t len)
{
    if (code == want_code)
        return 0;
    return fail(c, "expected %d, got \"%.*s\"", want_code, (int)(len > 200 ? 200 : len), line);
}

/* --idle: the session is set up; the loop opens the next one (idle_fill). */
static void idle_held(struct conn *c)
{
    c->ph = P_IDLE;
    c->lp->st.idle_up++;
    c->lp->setting_up--;
    atomic_fetch_add(&settled, 1);
}

/* One complete reply (its last line). 0 go on, 1 TLS begins now, -1 the
 * session is gone. */
static int on_reply(struct conn *c, int code, const char *line, size_t len)
{
    switch (c->ph) {
    case P_GREET:
        if (expect(c, code, 220, line, len))
            return -1;
        c->ph = P_EHLO;
        c->starttls = c->pipelining = false;
        return send_cmd(c, "EHLO %s\r\n", opt.helo);
    case P_EHLO:
        if (expect(c, code, 250, line, len))
            return -1;
        if (!opt.plain && !c->tls) {
            if (!c->starttls)
                return fail(c, "STARTTLS not offered in the EHLO reply");
            c->ph = P_STARTTLS;
            return send_cmd(c, "STARTTLS\r\n");
        }
        if (opt.mode == M_IDLE) {
            idle_held(c);
            return 0;
        }
        if (opt.mode == M_HANDSHAKES)
            return quit(c);
        if (opt.pipeline && !c->pipelining)
            return fail(c, "--pipeline, but PIPELINING not offered");
        return next_message(c);
    case P_STARTTLS:
        if (expect(c, code, 220, line, len))
            return -1;
        return 1;
    case P_MAIL:
        if (expect(c, code, 250, line, len))
            return -1;
        c->ph = P_RCPT;
        return opt.pipeline ? 0 : send_cmd(c, "RCPT TO:<%s>\r\n", opt.to);
    case P_RCPT:
        if (expect(c, code, 250, line, len))
            return -1;
        c->ph = P_DATA;
        return opt.pipeline ? 0 : send_cmd(c, "DATA\r\n");
    case P_DATA:
        if (expect(c, code, 354, line, len))
            return -1;
        c->ph = P_DOT;
        return send_out(c, body, body_len);
    case P_DOT:
        if (expect(c, code, 250, line, len))
            return -1;
        c->lp->st.messages++;
        c->msgs++;
        return next_message(c);
    case P_QUIT:
        if (expect(c, code, 221, line, len))
            return -1;
        c->ph = P_CLOSING;
        return 0;
    default:
        return fail(c, "unexpected reply \"%.*s\"", (int)(len > 200 ? 200 : len), line);
    }
}

/* Takes every complete reply out of c->in. 0 go on, 1 TLS has begun (stop
 * reading in plaintext), -1 the session is gone. */
static int parse(struct conn *c)
{
    size_t used = 0, off = 0;
    for (;;) {
        char *line = c->in + off;
        char *nl = memchr(line, '\n', c->in_len - off);
        if (!nl)
            break;
        size_t len = (size_t)(nl - line) + 1;
        if (len < 5 || nl[-1] != '\r' || !isdigit((unsigned char)line[0]) || !isdigit((unsigned char)line[1]) ||
            !isdigit((unsigned char)line[2]) || (len > 5 && line[3] != ' ' && line[3] != '-'))
            return fail(c, "malformed reply line \"%.*s\"", (int)(len > 200 ? 200 : len - 2), line);
        off += len;
        if (c->ph == P_EHLO && len > 6) {
            const char *kw = line + 4;
            size_t kl = len - 6;
            if (kl >= 8 && !strncasecmp(kw, "STARTTLS", 8) && (kl == 8 || kw[8] == ' '))
                c->starttls = true;
            if (kl >= 10 && !strncasecmp(kw, "PIPELINING", 10) && (kl == 10 || kw[10] == ' '))
                c->pipelining = true;
        }
        if (len > 5 && line[3] == '-')
            continue;
        int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
        if (code / 100 >= 1 && code / 100 <= 5)
            c->lp->st.replies[code / 100]++;
        used = off;
        int r = on_reply(c, code, line, len - 2);
        if (r < 0)
            return -1;
        if (r == 1) {
            /* Plaintext after the 220 to STARTTLS would be an injection
             * (CVE-2011-0411): the server must send nothing more. */
            if (c->in_len != used)
                return fail(c, "%zu octets after the 220 to STARTTLS", c->in_len - used);
            c->in_len = 0;
            return start_tls(c) < 0 ? -1 : 1;
        }
    }
    if (used) {
        memmove(c->in, c->in + used, c->in_len - used);
        c->in_len -= used;
    }
    return 0;
}

/* The server closed after our QUIT was answered: the session is done. */
static void finished(struct conn *c)
{
    if (c->ssl) {
        /* A session freed without shutdown is marked not resumable. */
        SSL_set_quiet_shutdown(c->ssl, 1);
        SSL_shutdown(c->ssl);
    }
    ERR_clear_error();
    c->lp->st.sessions++;
    conn_close(c);
    slot_next(c);
}

static void readable(struct conn *c)
{
    for (;;) {
        size_t room = sizeof c->in - c->in_len, got;
        if (!room) {
            fail(c, "reply line longer than %zu octets", sizeof c->in);
            return;
        }
        if (c->ssl) {
            int r = SSL_read_ex(c->ssl, c->in + c->in_len, room, &got);
            if (r != 1) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_READ)
                    return;
                if (e == SSL_ERROR_WANT_WRITE) {
                    want(c, EPOLLIN | EPOLLOUT);
                    return;
                }
                if (c->ph == P_CLOSING) /* close_notify, or a plain close */
                    finished(c);
                else if (e == SSL_ERROR_ZERO_RETURN)
                    fail(c, "close_notify from the server");
                else
                    fail_ssl(c, "read", e);
                return;
            }
        } else {
            ssize_t n = recv(c->fd, c->in + c->in_len, room, 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return;
            if (n <= 0) {
                if (c->ph == P_CLOSING)
                    finished(c);
                else if (n == 0)
                    fail(c, "connection closed by the server");
                else
                    fail(c, "recv: %s", strerror(errno));
                return;
            }
            got = (size_t)n;
        }
        c->in_len += got;
        if (c->ph == P_CLOSING) { /* 221 was the last word */
            fail(c, "data after the 221 to QUIT");
            return;
        }
        int r = parse(c);
        if (r != 0)
            return;
        /* Level-triggered epoll reports what the kernel still holds; only
         * what OpenSSL already took in must be read now. */
        if (c->ssl ? !SSL_has_pending(c->ssl) : got < room)
            return;
    }
}

static void on_event(struct conn *c, uint32_t ev)
{
    if (c->ph == P_FREE)
        return;
    if (c->ph == P_CONNECT) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) {
            fail(c, "connect: %s", strerror(err));
            return;
        }
        c->ph = P_GREET;
        want(c, EPOLLIN);
        return;
    }
    if (c->ph == P_HANDSHAKE) {
        handshake(c);
        return;
    }
    if (c->out_len && flush(c) < 0)
        return;
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR))
        readable(c);
}

static void conn_open(struct conn *c)
{
    struct loop *lp = c->lp;
    c->msgs = 0;
    c->fd = socket(opt.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        c->ph = P_CONNECT;
        fail(c, "socket: %s", strerror(errno));
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* whole commands only: no small-write delay */
    lp->st.opened++;
    int r = connect(c->fd, (struct sockaddr *)&opt.addr, opt.addrlen);
    if (r < 0 && errno != EINPROGRESS) {
        c->ph = P_CONNECT;
        fail(c, "connect: %s", strerror(errno));
        return;
    }
    c->ph = r == 0 ? P_GREET : P_CONNECT;
    c->events = r == 0 ? EPOLLIN : EPOLLOUT;
    struct epoll_event e = { .events = c->events, .data.ptr = c };
    if (epoll_ctl(lp->ep, EPOLL_CTL_ADD, c->fd, &e) < 0)
        fail(c, "epoll_ctl: %s", strerror(errno));
}

/* What a slot does after its session ended: another session while there is
 * work, or nothing. In --idle mode a slot is used once (idle_fill). */
static void slot_next(struct conn *c)
{
    if (opt.mode == M_IDLE)
        return;
    struct loop *lp = c->lp;
    bool more = false;
    if (!atomic_load(&stop)) {
        if (opt.mode == M_MESSAGES)
            more = atomic_load(&claimed) < opt.messages;
        else
            more = claim(opt.handshakes);
    }
    if (more)
        conn_open(c);
    else
        lp->active--;
}

/* --idle: keeps up to idle_window sessions in setup. */
static void idle_fill(struct loop *lp)
{
    while (!atomic_load(&stop) && lp->next_open < lp->n && lp->setting_up < opt.idle_window) {
        struct conn *c = &lp->c[lp->next_open++];
        lp->setting_up++;
        conn_open(c);
    }
}

static void *loop_main(void *arg)
{
    struct loop *lp = arg;
    struct epoll_event ev[256];
    if (opt.mode == M_IDLE) {
        idle_fill(lp);
    } else {
        for (unsigned i = 0; i < lp->n; i++) {
            struct conn *c = &lp->c[i];
            lp->active++;
            if (opt.mode == M_HANDSHAKES) {
                if (!claim(opt.handshakes)) {
                    lp->active--;
                    continue;
                }
            } else if (atomic_load(&claimed) >= opt.messages) {
                lp->active--;
                continue;
            }
            conn_open(c);
        }
    }
    for (;;) {
        if (atomic_load(&stop))
            break;
        if (opt.mode != M_IDLE && lp->active == 0)
            break;
        int n = epoll_wait(lp->ep, ev, 256, 100); /* wakes to see stop */
        for (int i = 0; i < n; i++)
            on_event(ev[i].data.ptr, ev[i].events);
        if (opt.mode == M_IDLE)
            idle_fill(lp);
    }
    for (unsigned i = 0; i < lp->n; i++) {
        struct conn *c = &lp->c[i];
        if (c->ph != P_FREE) {
            if (c->ph != P_IDLE)
                lp->st.stuck[c->ph]++;
            conn_close(c);
        }
        if (c->last)
            SSL_SESSION_free(c->last);
        c->last = NULL;
    }
    return NULL;
}

static int accept_chain(X509_STORE_CTX *x, void *arg)
{
    (void)x, (void)arg;
    return 1;
}

static void make_body(void)
{
    /* Headers, then 76-octet lines of filler (none starts with a dot), the
     * last one cut so that the message is exactly --size octets; then the
     * final dot. */
    size_t cap = opt.size + 512;
    body = malloc(cap);
    if (!body) {
        fprintf(stderr, "tls_load: out of memory\n");
        exit(2);
    }
    int h = snprintf(body, cap, "From: <%s>\r\nTo: <%s>\r\nSubject: tls_load\r\n\r\n", opt.from, opt.to);
    size_t n = (size_t)h;
    static const char fill[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-abcdefghijklm";
    while (n + 2 < opt.size) {
        size_t k = opt.size - n - 2;
        if (k > sizeof fill - 1)
            k = sizeof fill - 1;
        memcpy(body + n, fill, k);
        n += k;
        body[n++] = '\r';
        body[n++] = '\n';
    }
    memcpy(body + n, ".\r\n", 3);
    body_len = n + 3;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: tls_load [options] HOST:PORT\n"
            "  -s, --sessions N      sessions in parallel (default 50)\n"
            "  -m, --messages N      messages in all (default 20000)\n"
            "      --per-session N   messages per session, then QUIT and a new one (default 0: no limit)\n"
            "  -l, --size N          message size in octets (default 4096)\n"
            "      --pipeline        MAIL, RCPT and DATA in one write (PIPELINING)\n"
            "      --plain           no STARTTLS\n"
            "      --handshakes N    N sessions of EHLO, STARTTLS, handshake, QUIT; no mail\n"
            "      --resume          offer each slot's previous TLS session (ticket)\n"
            "      --tls12, --tls13  only that TLS version (default: both, the server picks)\n"
            "      --idle N          N sessions set up and held open, --hold seconds\n"
            "      --hold S          (default 2)\n"
            "      --rss-pid PID     --idle: print PID's VmRSS before and while held\n"
            "      --idle-window N   --idle: sessions in setup at once (default 256)\n"
            "  -t, --threads N       event loops (default 1)\n"
            "      --time-limit S    the whole run (default 300)\n"
            "      --max-errors N    stop after N errors (default 10)\n"
            "      --helo NAME, --from ADDR, --to ADDR\n");
}

static uint64_t num(const char *name, const char *s, uint64_t min, uint64_t max)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < min || v > max) {
        fprintf(stderr, "tls_load: %s: %s: expected a number from %llu to %llu\n", name, s, (unsigned long long)min,
                (unsigned long long)max);
        exit(2);
    }
    return v;
}

static double seconds(const char *name, const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !(v > 0) || v > 86400) {
        fprintf(stderr, "tls_load: %s: %s: expected seconds\n", name, s);
        exit(2);
    }
    return v;
}

static void resolve(const char *target)
{
    char host[256];
    const char *colon = strrchr(target, ':');
    if (!colon || colon == target || (size_t)(colon - target) >= sizeof host) {
        fprintf(stderr, "tls_load: %s: expected HOST:PORT\n", target);
        exit(2);
    }
    memcpy(host, target, (size_t)(colon - target));
    host[colon - target] = '\0';
    char *h = host;
    if (h[0] == '[' && h[strlen(h) - 1] == ']') {
        h[strlen(h) - 1] = '\0';
        h++;
    }
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai;
    int e = getaddrinfo(h, colon + 1, &hints, &ai);
    if (e) {
        fprintf(stderr, "tls_load: %s: %s\n", target, gai_strerror(e));
        exit(2);
    }
    memcpy(&opt.addr, ai->ai_addr, ai->ai_addrlen);
    opt.addrlen = ai->ai_addrlen;
    freeaddrinfo(ai);
    opt.target = target;
}

static void parse_args(int argc, char **argv)
{
    enum { O_PER = 256, O_PIPE, O_PLAIN, O_HS, O_RESUME, O_TLS12, O_TLS13, O_IDLE, O_HOLD, O_RSS, O_WIN, O_TIME,
           O_MAXERR, O_HELO, O_FROM, O_TO };
    static const struct option lo[] = {
        { "sessions", 1, 0, 's' },     { "messages", 1, 0, 'm' },      { "size", 1, 0, 'l' },
        { "threads", 1, 0, 't' },      { "per-session", 1, 0, O_PER }, { "pipeline", 0, 0, O_PIPE },
        { "plain", 0, 0, O_PLAIN },    { "handshakes", 1, 0, O_HS },   { "resume", 0, 0, O_RESUME },
        { "tls12", 0, 0, O_TLS12 },    { "tls13", 0, 0, O_TLS13 },     { "idle", 1, 0, O_IDLE },
        { "hold", 1, 0, O_HOLD },      { "rss-pid", 1, 0, O_RSS },     { "idle-window", 1, 0, O_WIN },
        { "time-limit", 1, 0, O_TIME }, { "max-errors", 1, 0, O_MAXERR }, { "helo", 1, 0, O_HELO },
        { "from", 1, 0, O_FROM },      { "to", 1, 0, O_TO },           { "help", 0, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    int o;
    while ((o = getopt_long(argc, argv, "s:m:l:t:h", lo, NULL)) != -1) {
        switch (o) {
        case 's': opt.sessions = (unsigned)num("--sessions", optarg, 1, 100000); break;
        case 'm': opt.messages = num("--messages", optarg, 1, UINT64_C(1) << 40); break;
        case 'l': opt.size = (size_t)num("--size", optarg, 64, 64u << 20); break;
        case 't': opt.threads = (unsigned)num("--threads", optarg, 1, 64); break;
        case O_PER: opt.per_session = num("--per-session", optarg, 0, UINT64_C(1) << 40); break;
        case O_PIPE: opt.pipeline = true; break;
        case O_PLAIN: opt.plain = true; break;
        case O_HS:
            opt.mode = M_HANDSHAKES;
            opt.handshakes = num("--handshakes", optarg, 1, UINT64_C(1) << 40);
            break;
        case O_RESUME: opt.resume = true; break;
        case O_TLS12: opt.tls_min = opt.tls_max = TLS1_2_VERSION; break;
        case O_TLS13: opt.tls_min = opt.tls_max = TLS1_3_VERSION; break;
        case O_IDLE:
            opt.mode = M_IDLE;
            opt.idle = num("--idle", optarg, 1, 1000000);
            break;
        case O_HOLD: opt.hold = seconds("--hold", optarg); break;
        case O_RSS: opt.rss_pid = (long)num("--rss-pid", optarg, 1, 1u << 30); break;
        case O_WIN: opt.idle_window = (unsigned)num("--idle-window", optarg, 1, 100000); break;
        case O_TIME: opt.time_limit = seconds("--time-limit", optarg); break;
        case O_MAXERR: opt.max_errors = (unsigned)num("--max-errors", optarg, 1, 1000000); break;
        case O_HELO: opt.helo = optarg; break;
        case O_FROM: opt.from = optarg; break;
        case O_TO: opt.to = optarg; break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        exit(2);
    }
    if (opt.plain && opt.resume) {
        fprintf(stderr, "tls_load: --resume needs TLS (not --plain)\n");
        exit(2);
    }
    resolve(argv[optind]);
}

/* One descriptor per session, and a few. */
static void raise_nofile(uint64_t need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl))
        return;
    if (rl.rlim_cur < need + 32) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > need + 32 ? need + 32 : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < need + 16) {
        fprintf(stderr, "tls_load: %llu sessions need %llu descriptors; the limit is %llu (ulimit -Hn)\n",
                (unsigned long long)need, (unsigned long long)need + 16, (unsigned long long)rl.rlim_cur);
        exit(2);
    }
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    uint64_t slots = opt.mode == M_IDLE ? opt.idle : opt.sessions;
    if (opt.mode == M_HANDSHAKES && slots > opt.handshakes)
        slots = opt.handshakes;
    if (opt.mode == M_MESSAGES && slots > opt.messages)
        slots = opt.messages;
    if (opt.threads > slots)
        opt.threads = (unsigned)slots;
    raise_nofile(slots);
    make_body();

    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        fprintf(stderr, "tls_load: SSL_CTX_new failed\n");
        return 2;
    }
    /* A benchmark against a self-signed certificate: the chain is not
     * checked (the handshake's signature still is). SSL_VERIFY_NONE alone
     * would still verify the chain and only ignore the result: a second
     * signature check per handshake the server does not pay for. */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_cert_verify_callback(ctx, accept_chain, NULL);
    SSL_CTX_set_min_proto_version(ctx, opt.tls_min);
    SSL_CTX_set_max_proto_version(ctx, opt.tls_max);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_read_ahead(ctx, 1);
    if (opt.resume) {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(ctx, new_session);
    } else {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    }

    long rss0 = -1, rss1 = -1;
    if (opt.mode == M_IDLE && opt.rss_pid) {
        rss0 = rss_kb(opt.rss_pid);
        if (rss0 < 0) {
            fprintf(stderr, "tls_load: cannot read VmRSS of pid %ld\n", opt.rss_pid);
            return 2;
        }
    }

    struct loop *loops = calloc(opt.threads, sizeof *loops);
    struct conn *conns = calloc(slots, sizeof *conns);
    if (!loops || !conns) {
        fprintf(stderr, "tls_load: out of memory for %llu sessions\n", (unsigned long long)slots);
        return 2;
    }
    for (uint64_t i = 0; i < slots; i++) {
        conns[i].fd = -1;
        conns[i].ph = P_FREE;
    }
    double t0 = now_s(), c0 = cpu_s(), deadline = t0 + opt.time_limit;
    uint64_t at = 0;
    for (unsigned i = 0; i < opt.threads; i++) {
        struct loop *lp = &loops[i];
        lp->n = (unsigned)(slots / opt.threads + (i < slots % opt.threads));
        lp->c = conns + at;
        at += lp->n;
        for (unsigned k = 0; k < lp->n; k++)
            lp->c[k].lp = lp;
        lp->ep = epoll_create1(EPOLL_CLOEXEC);
        if (lp->ep < 0 || pthread_create(&lp->th, NULL, loop_main, lp)) {
            fprintf(stderr, "tls_load: cannot start loop %u\n", i);
            return 2;
        }
    }

    /* The supervisor: the time limit, and in --idle mode the hold. */
    bool timed_out = false;
    double held_at = 0, up_at = 0;
    for (;;) {
        struct timespec ts = { 0, 20 * 1000 * 1000 };
        nanosleep(&ts, NULL);
        double t = now_s();
        bool all_done = true;
        if (opt.mode == M_IDLE) {
            if (!up_at && atomic_load(&settled) >= opt.idle) {
                up_at = t;
                held_at = t + opt.hold;
                if (held_at > deadline)
                    held_at = deadline;
            }
            all_done = up_at && t >= held_at;
            if (all_done && opt.rss_pid)
                rss1 = rss_kb(opt.rss_pid);
        } else {
            for (unsigned i = 0; i < opt.threads; i++)
                if (!loops[i].joined && !(loops[i].joined = pthread_tryjoin_np(loops[i].th, NULL) == 0))
                    all_done = false;
        }
        if (all_done || atomic_load(&stop))
            break;
        if (t >= deadline) {
            timed_out = true;
            break;
        }
    }
    double t1 = opt.mode == M_IDLE && up_at ? up_at : now_s();
    atomic_store(&stop, true);
    struct stats st = { 0 };
    for (unsigned i = 0; i < opt.threads; i++) {
        struct loop *lp = &loops[i];
        if (!lp->joined)
            pthread_join(lp->th, NULL);
        close(lp->ep);
        st.messages += lp->st.messages;
        st.sessions += lp->st.sessions;
        st.handshakes += lp->st.handshakes;
        st.resumed += lp->st.resumed;
        st.opened += lp->st.opened;
        st.errors += lp->st.errors;
        st.idle_up += lp->st.idle_up;
        for (int k = 0; k < 6; k++)
            st.replies[k] += lp->st.replies[k];
        for (int k = 0; k < P_COUNT; k++)
            st.stuck[k] += lp->st.stuck[k];
    }
    double secs = t1 - t0, cpu = cpu_s() - c0;
    if (secs <= 0)
        secs = 1e-9;

    if (timed_out) {
        fprintf(stderr, "tls_load: time limit of %.0f s reached; sessions still open by phase:", opt.time_limit);
        for (int k = 0; k < P_COUNT; k++)
            if (st.stuck[k])
                fprintf(stderr, " %s=%llu", phase_name[k], (unsigned long long)st.stuck[k]);
        fprintf(stderr, "\n");
    }
    const char *proto = opt.plain ? "plain" : seen_proto[0] ? seen_proto : "-";
    const char *cipher = opt.plain ? "-" : seen_cipher[0] ? seen_cipher : "-";
    bool short_of = false;
    if (opt.mode == M_MESSAGES) {
        short_of = st.messages < opt.messages;
        printf("tls_load: %llu messages of %zu octets in %.3f s (%.0f msgs/s), %u sessions in parallel, %llu "
               "opened, %s %s, %llu handshakes (%llu resumed), client cpu %.2f s\n",
               (unsigned long long)st.messages, opt.size, secs, (double)st.messages / secs, opt.sessions,
               (unsigned long long)st.opened, proto, cipher, (unsigned long long)st.handshakes,
               (unsigned long long)st.resumed, cpu);
    } else if (opt.mode == M_HANDSHAKES) {
        short_of = st.sessions < opt.handshakes;
        printf("tls_load: %llu sessions (%llu handshakes, %llu resumed) in %.3f s (%.0f/s), %u in parallel, "
               "%s %s, client cpu %.2f s\n",
               (unsigned long long)st.sessions, (unsigned long long)st.handshakes,
               (unsigned long long)st.resumed, secs, (double)st.sessions / secs, opt.sessions, proto, cipher, cpu);
    } else {
        short_of = st.idle_up < opt.idle;
        printf("tls_load: %llu of %llu idle sessions (%s %s) set up in %.3f s, held %.1f s, client cpu %.2f s\n",
               (unsigned long long)st.idle_up, (unsigned long long)opt.idle, proto, cipher, secs, opt.hold, cpu);
    }
    printf("tls_load: replies 2xx=%llu 3xx=%llu 4xx=%llu 5xx=%llu errors=%llu%s\n", (unsigned long long)st.replies[2],
           (unsigned long long)st.replies[3], (unsigned long long)st.replies[4], (unsigned long long)st.replies[5],
           (unsigned long long)st.errors, timed_out ? " (time limit)" : "");
    printf("tls_load: mode=%s messages=%llu seconds=%.3f msgs_per_s=%.0f sessions=%llu sessions_per_s=%.0f "
           "handshakes=%llu resumed=%llu handshakes_per_s=%.0f idle=%llu errors=%llu replies_4xx=%llu "
           "replies_5xx=%llu client_cpu_s=%.2f protocol=%s cipher=%s",
           mode_name[opt.mode], (unsigned long long)st.messages, secs, (double)st.messages / secs,
           (unsigned long long)st.sessions, (double)st.sessions / secs, (unsigned long long)st.handshakes,
           (unsigned long long)st.resumed, (double)st.handshakes / secs, (unsigned long long)st.idle_up,
           (unsigned long long)st.errors, (unsigned long long)st.replies[4], (unsigned long long)st.replies[5], cpu,
           proto, cipher);
    if (opt.mode == M_IDLE && opt.rss_pid) {
        printf(" rss_before_kb=%ld rss_held_kb=%ld", rss0, rss1);
        if (st.idle_up && rss1 >= 0)
            printf(" rss_per_idle_conn_bytes=%.0f", (double)(rss1 - rss0) * 1024.0 / (double)st.idle_up);
    }
    printf("%s\n", timed_out ? " timed_out=1" : "");
    SSL_CTX_free(ctx);
    free(body);
    return st.errors || timed_out || short_of ? 1 : 0;
}

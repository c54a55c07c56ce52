/*
 * sink.c - sink mode of mxgate-load: an SMTP server (RFC 5321 subset, with
 * PIPELINING, SIZE, 8BITMIME and ENHANCEDSTATUSCODES) that counts, records
 * and checks what it is sent, and injects faults on demand.
 *
 * One io_uring loop per thread, each with its own SO_REUSEPORT listener and
 * multishot accept, owning its connections. Per connection: one recv and at
 * most one send in flight, a reply timer (greeting delay, --latency-ms,
 * --data-latency-ms) and a read timer (--slow-read). Input is processed only
 * when no reply is pending: every complete command in the buffer is
 * answered, the replies gathered into one send (PIPELINING). A body is
 * scanned as it streams (the end marker may be split across reads), never
 * stored: dot-unstuffed, its header block searched for Message-ID and
 * X-Load-Checksum, the rest CRC-32'd for --check.
 *
 * Faults are drawn per message (and per RCPT) from a per-thread PRNG seeded
 * from --seed: the same seed and the same order of arrival give the same
 * faults. A message drawn for --close-mid-data-rate has its connection
 * closed once 1 to 2048 octets of its body (after the header block, so its
 * Message-ID is known) were read, or at its end if it is shorter; no reply.
 */
#include "load.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SIN_SZ 32768u
#define SOUT_SZ 8192u
#define OUT_ROOM 1024u /* process commands only while this much reply space is left */
#define CMD_MAX 4096u  /* a command line longer than this is refused */
#define HL_MAX 1000u

typedef struct sstats {
    _Atomic uint64_t sessions, open, accepted, refused, tempfail, permfail, corrupt, closed_mid_data, rcpt_tempfail,
        rcpts, bytes_in, data_bytes, commands, unknown, checksum_ok, checksum_missing, size_refused, aborted,
        conn_rejected;
} sstats_t;

static const char *const sstat_names[] = { "sessions", "open", "messages_accepted", "messages_refused",
                                           "tempfail", "permfail", "corrupt", "closed_mid_data",
                                           "rcpt_tempfail", "rcpts", "bytes_in", "data_bytes", "commands",
                                           "unknown_commands", "checksum_ok", "checksum_missing",
                                           "size_refused", "aborted_by_client", "connections_rejected" };
#define NSSTAT (sizeof(sstats_t) / sizeof(_Atomic uint64_t))
_Static_assert(sizeof sstat_names / sizeof sstat_names[0] == NSSTAT, "a name per counter");

enum sst { SS_FREE, SS_CMD, SS_DATA, SS_CLOSING };
enum fault { F_NONE, F_TEMP, F_PERM, F_CLOSE };
enum ds { DS_BOL, DS_MID, DS_DOT, DS_DOTCR };
enum { D_MORE, D_EOD, D_CLOSE };

typedef struct sconn {
    uint32_t slot, gen;
    int fd;
    uint8_t st, ds, fault;
    bool recv_on, send_on, rtimer_on, stimer_on, waiting, quit_after;
    bool helo, mail, in_hdr, have_sum, too_big;
    int inflight;
    uint32_t nrcpt, delay_ms, hlen;
    uint32_t inlen, inoff, outlen, outoff;
    uint32_t crc, sum;
    uint64_t data_bytes, body_bytes, close_after, next_read_at, msgs;
    struct __kernel_timespec rts, sts;
    char mid[200];
    char hline[HL_MAX];
    char out[SOUT_SZ];
    char in[SIN_SZ];
} sconn_t;

typedef struct sthread {
    int id;
    pthread_t th;
    struct io_uring ring;
    bool ring_ok, accept_paused;
    int lfd;
    sconn_t **conns;
    uint32_t nconns, cap;
    uint32_t *freel;
    uint32_t nfree;
    uint64_t rng, now;
    struct __kernel_timespec tick_ts;
    recbuf_t *rec;
    sstats_t st;
    atomic_int ready;
    char err[256];
} sthread_t;

static sthread_t *g_sthr;
static int g_nsthr;

static void s_kick(sthread_t *t, sconn_t *c);

/* ---- replies ---- */

static void out_add(sconn_t *c, const char *s)
{
    size_t n = strlen(s);
    if (c->outlen + n > SOUT_SZ)
        n = SOUT_SZ - c->outlen; /* cannot happen: commands stop at OUT_ROOM */
    memcpy(c->out + c->outlen, s, n);
    c->outlen += (uint32_t)n;
}

static void out_fmt(sconn_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out_fmt(sconn_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(c->out + c->outlen, SOUT_SZ - c->outlen, fmt, ap);
    va_end(ap);
    if (n > 0)
        c->outlen += (uint32_t)n < SOUT_SZ - c->outlen ? (uint32_t)n : SOUT_SZ - c->outlen - 1;
}

/* ---- connections ---- */

static void arm_timer(sthread_t *t, sconn_t *c, bool reply, uint64_t delay_us)
{
    struct __kernel_timespec *ts = reply ? &c->rts : &c->sts;
    ts->tv_sec = (long long)(delay_us / 1000000u);
    ts->tv_nsec = (long long)(delay_us % 1000000u) * 1000;
    struct io_uring_sqe *sqe = get_sqe(&t->ring);
    io_uring_prep_timeout(sqe, ts, 0, 0);
    io_uring_sqe_set_data64(sqe, UD(reply ? OP_TIMER : OP_STIMER, c->slot, c->gen));
    if (reply)
        c->rtimer_on = true;
    else
        c->stimer_on = true;
}

static void s_finish(sthread_t *t, sconn_t *c)
{
    close(c->fd);
    c->fd = -1;
    c->gen++;
    c->st = SS_FREE;
    CSET(t->st.open, CGET(t->st.open) - 1);
    t->freel[t->nfree++] = c->slot;
}

static void s_close(sthread_t *t, sconn_t *c)
{
    if (c->st == SS_CLOSING || c->st == SS_FREE)
        return;
    c->st = SS_CLOSING;
    shutdown(c->fd, SHUT_RDWR);
    if (c->inflight == 0)
        s_finish(t, c);
}

static void s_accept(sthread_t *t, int fd)
{
    uint32_t slot;
    if (t->nfree) {
        slot = t->freel[--t->nfree];
    } else if (t->nconns < t->cap) {
        slot = t->nconns;
        t->conns[slot] = calloc(1, sizeof(sconn_t));
        if (!t->conns[slot]) {
            close(fd);
            CINC(t->st.conn_rejected);
            return;
        }
        t->conns[slot]->slot = slot;
        t->nconns++;
    } else {
        close(fd);
        CINC(t->st.conn_rejected);
        return;
    }
    sconn_t *c = t->conns[slot];
    uint32_t gen = c->gen;
    size_t keep = offsetof(sconn_t, mid);
    memset(c, 0, keep);
    c->slot = slot;
    c->gen = gen;
    c->fd = fd;
    c->st = SS_CMD;
    CINC(t->st.sessions);
    CSET(t->st.open, CGET(t->st.open) + 1);
    out_fmt(c, "220 %s ESMTP mxgate-load sink\r\n", g_opt.hostname);
    c->delay_ms = g_opt.greeting_delay_ms;
    s_kick(t, c);
}

/* ---- the data phase ---- */

static void header_line(sconn_t *c)
{
    const char *h = c->hline;
    uint32_t n = c->hlen;
    if ((n == 2 && h[0] == '\r' && h[1] == '\n') || (n == 1 && h[0] == '\n')) {
        c->in_hdr = false;
        return;
    }
    const char *v = NULL;
    bool is_mid = false;
    if (n > 11 && strncasecmp(h, "Message-ID:", 11) == 0) {
        v = h + 11;
        is_mid = true;
    } else if (n > 16 && strncasecmp(h, "X-Load-Checksum:", 16) == 0) {
        v = h + 16;
    }
    if (!v)
        return;
    const char *e = h + n;
    while (v < e && (*v == ' ' || *v == '\t'))
        v++;
    while (e > v && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' ' || e[-1] == '\t'))
        e--;
    if (is_mid) {
        size_t k = 0;
        for (; v < e && k < sizeof c->mid - 1; v++)
            if (*v > ' ' && *v < 0x7f)
                c->mid[k++] = *v;
        c->mid[k] = 0;
    } else {
        char hex[16];
        size_t k = (size_t)(e - v) < sizeof hex - 1 ? (size_t)(e - v) : sizeof hex - 1;
        memcpy(hex, v, k);
        hex[k] = 0;
        char *end;
        unsigned long x = strtoul(hex, &end, 16);
        if (k && !*end) {
            c->sum = (uint32_t)x;
            c->have_sum = true;
        }
    }
}

/* Unstuffed message content: the header block line by line, then the body. */
static void content(sconn_t *c, const char *s, size_t n)
{
    c->data_bytes += n;
    while (n && c->in_hdr) {
        const char *nl = memchr(s, '\n', n);
        size_t k = nl ? (size_t)(nl - s) + 1 : n;
        size_t room = HL_MAX - c->hlen;
        memcpy(c->hline + c->hlen, s, k < room ? k : room);
        c->hlen += (uint32_t)(k < room ? k : room);
        s += k;
        n -= k;
        if (nl) {
            header_line(c);
            c->hlen = 0;
        }
    }
    c->body_bytes += n;
    if (n && g_opt.check)
        c->crc = crc32_update(c->crc, s, n);
}

static int data_feed(sconn_t *c, const char *p, size_t n, size_t *used)
{
    const char *s = p, *e = p + n;
    while (s < e) {
        switch (c->ds) {
        case DS_BOL:
            if (*s == '.') {
                c->ds = DS_DOT;
                s++;
                break;
            }
            c->ds = DS_MID;
            /* fall through */
        case DS_MID: {
            const char *nl = memchr(s, '\n', (size_t)(e - s));
            const char *q = nl ? nl + 1 : e;
            content(c, s, (size_t)(q - s));
            s = q;
            c->ds = nl ? DS_BOL : DS_MID;
            break;
        }
        case DS_DOT:
            if (*s == '\r') {
                c->ds = DS_DOTCR;
                s++;
                break;
            }
            c->ds = DS_MID; /* the dot was stuffing: dropped */
            break;
        case DS_DOTCR:
            if (*s == '\n') {
                *used = (size_t)(s + 1 - p);
                return D_EOD;
            }
            content(c, "\r", 1);
            c->ds = DS_MID;
            break;
        }
        if (c->fault == F_CLOSE && !c->in_hdr && c->body_bytes >= c->close_after) {
            *used = (size_t)(s - p);
            return D_CLOSE;
        }
    }
    *used = n;
    return D_MORE;
}

static void data_begin(sthread_t *t, sconn_t *c)
{
    c->st = SS_DATA;
    c->ds = DS_BOL;
    c->in_hdr = true;
    c->hlen = 0;
    c->crc = 0;
    c->sum = 0;
    c->have_sum = false;
    c->mid[0] = 0;
    c->data_bytes = c->body_bytes = 0;
    c->msgs++;
    /* one draw per fault kind and message, always, so that one rate does
     * not shift the draws of another */
    double uc = rng_unit(&t->rng), up = rng_unit(&t->rng), ut = rng_unit(&t->rng);
    uint64_t at = rng_next(&t->rng);
    c->fault = F_NONE;
    if (uc < g_opt.close_mid_data_rate) {
        c->fault = F_CLOSE;
        c->close_after = 1 + at % 2048;
    } else if (up < g_opt.permfail_rate) {
        c->fault = F_PERM;
    } else if (ut < g_opt.tempfail_rate) {
        c->fault = F_TEMP;
    }
}

static const char *mid_of(sthread_t *t, sconn_t *c)
{
    if (!c->mid[0])
        snprintf(c->mid, sizeof c->mid, "<no-message-id.%d.%u.%llu>", t->id, c->slot,
                 (unsigned long long)c->msgs);
    return c->mid;
}

/* The end of data: the verdict, its record, its reply. */
static void data_end(sthread_t *t, sconn_t *c)
{
    const char *mid = mid_of(t, c);
    CADD(t->st.data_bytes, c->data_bytes);
    c->st = SS_CMD;
    c->mail = false;
    c->nrcpt = 0;
    bool corrupt = false;
    if (g_opt.check) {
        if (!c->have_sum)
            CINC(t->st.checksum_missing);
        else if (c->sum != c->crc)
            corrupt = true;
        else
            CINC(t->st.checksum_ok);
    }
    const char *what;
    int code;
    if (corrupt) {
        CINC(t->st.corrupt);
        out_add(c, "554 5.6.0 Message corrupt: X-Load-Checksum mismatch\r\n");
        what = "corrupt", code = 554;
    } else if (c->too_big || c->data_bytes > g_opt.size_limit) {
        CINC(t->st.size_refused);
        out_add(c, "552 5.3.4 Message size exceeds fixed limit\r\n");
        what = "refused", code = 552;
    } else if (c->fault == F_PERM) {
        CINC(t->st.permfail);
        out_add(c, "554 5.6.0 Message refused (injected permanent failure)\r\n");
        what = "permfail", code = 554;
    } else if (c->fault == F_TEMP) {
        CINC(t->st.tempfail);
        out_add(c, "451 4.3.0 Temporary failure (injected), try again later\r\n");
        what = "tempfail", code = 451;
    } else {
        CINC(t->st.accepted);
        out_fmt(c, "250 2.0.0 Ok: queued as %d.%u.%llu\r\n", t->id, c->slot, (unsigned long long)c->msgs);
        what = "accepted", code = 250;
    }
    if (code != 250)
        CINC(t->st.refused);
    rec_line(t->rec, "%s %s %d\n", mid, what, code);
    uint32_t d = g_opt.data_latency_ms ? g_opt.data_latency_ms : g_opt.latency_ms;
    c->delay_ms = d;
    c->too_big = false;
}

/* ---- commands ---- */

static void reset_tx(sconn_t *c)
{
    c->mail = false;
    c->nrcpt = 0;
    c->too_big = false;
}

static bool prefix(const char *line, size_t len, const char *p)
{
    size_t n = strlen(p);
    return len >= n && strncasecmp(line, p, n) == 0;
}

static void command(sthread_t *t, sconn_t *c, char *line, size_t len)
{
    CINC(t->st.commands);
    while (len && (line[len - 1] == '\r' || line[len - 1] == '\n'))
        len--;
    line[len] = 0;
    size_t vl = 0;
    while (vl < len && line[vl] != ' ')
        vl++;
    const char *arg = line + vl;
    while (*arg == ' ')
        arg++;
#define VERB(v) (vl == sizeof(v) - 1 && strncasecmp(line, v, vl) == 0)
    if (VERB("EHLO")) {
        if (!*arg) {
            out_add(c, "501 5.5.4 Syntax: EHLO hostname\r\n");
            return;
        }
        reset_tx(c);
        c->helo = true;
        out_fmt(c,
                "250-%s\r\n250-PIPELINING\r\n250-SIZE %llu\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n",
                g_opt.hostname, (unsigned long long)g_opt.size_limit);
    } else if (VERB("HELO")) {
        if (!*arg) {
            out_add(c, "501 5.5.4 Syntax: HELO hostname\r\n");
            return;
        }
        reset_tx(c);
        c->helo = true;
        out_fmt(c, "250 %s\r\n", g_opt.hostname);
    } else if (VERB("MAIL")) {
        if (!c->helo) {
            out_add(c, "503 5.5.1 Error: send HELO/EHLO first\r\n");
        } else if (c->mail) {
            out_add(c, "503 5.5.1 Error: nested MAIL command\r\n");
        } else if (!prefix(line, len, "MAIL FROM:") || !strchr(line, '<') || !strchr(line, '>')) {
            out_add(c, "501 5.5.4 Syntax: MAIL FROM:<address>\r\n");
        } else {
            const char *sz = strcasestr(strchr(line, '>'), " SIZE=");
            if (sz && strtoull(sz + 6, NULL, 10) > g_opt.size_limit) {
                CINC(t->st.size_refused);
                out_add(c, "552 5.3.4 Message size exceeds fixed limit\r\n");
                return;
            }
            c->mail = true;
            c->nrcpt = 0;
            out_add(c, "250 2.1.0 Ok\r\n");
        }
    } else if (VERB("RCPT")) {
        if (!c->mail) {
            out_add(c, "503 5.5.1 Error: need MAIL command\r\n");
        } else if (!prefix(line, len, "RCPT TO:") || !strchr(line, '<') || !strchr(line, '>')) {
            out_add(c, "501 5.5.4 Syntax: RCPT TO:<address>\r\n");
        } else if (g_opt.rcpt_tempfail_rate > 0 && rng_unit(&t->rng) < g_opt.rcpt_tempfail_rate) {
            CINC(t->st.rcpt_tempfail);
            out_add(c, "450 4.2.0 Mailbox temporarily unavailable (injected)\r\n");
        } else {
            c->nrcpt++;
            CINC(t->st.rcpts);
            out_add(c, "250 2.1.5 Ok\r\n");
        }
    } else if (VERB("DATA")) {
        if (!c->mail) {
            out_add(c, "503 5.5.1 Error: need MAIL command\r\n");
        } else if (!c->nrcpt) {
            out_add(c, "554 5.5.1 Error: no valid recipients\r\n");
        } else if (*arg) {
            out_add(c, "501 5.5.4 Syntax: DATA\r\n");
        } else {
            out_add(c, "354 End data with <CR><LF>.<CR><LF>\r\n");
            data_begin(t, c);
        }
    } else if (VERB("RSET")) {
        reset_tx(c);
        out_add(c, "250 2.0.0 Ok\r\n");
    } else if (VERB("NOOP")) {
        out_add(c, "250 2.0.0 Ok\r\n");
    } else if (VERB("QUIT")) {
        out_add(c, "221 2.0.0 Bye\r\n");
        c->quit_after = true;
    } else if (VERB("VRFY")) {
        out_add(c, "252 2.0.0 Cannot VRFY user\r\n");
    } else if (VERB("HELP")) {
        out_add(c, "214 2.0.0 mxgate-load sink: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT\r\n");
    } else {
        CINC(t->st.unknown);
        out_add(c, "500 5.5.2 Error: command not recognized\r\n");
    }
#undef VERB
}

/* Every complete command (and the body of a DATA) in the buffer, while no
 * reply is pending; stops after an end of data (its reply goes first). */
static void s_process(sthread_t *t, sconn_t *c)
{
    while (c->inoff < c->inlen && !c->quit_after && c->st != SS_CLOSING) {
        if (c->st == SS_DATA) {
            size_t used;
            int r = data_feed(c, c->in + c->inoff, c->inlen - c->inoff, &used);
            c->inoff += (uint32_t)used;
            if (r == D_CLOSE || (r == D_EOD && c->fault == F_CLOSE)) {
                CINC(t->st.closed_mid_data);
                CADD(t->st.data_bytes, c->data_bytes);
                rec_line(t->rec, "%s closed 0\n", mid_of(t, c));
                s_close(t, c);
                return;
            }
            if (r == D_EOD) {
                data_end(t, c);
                break;
            }
            continue;
        }
        if (c->outlen + OUT_ROOM > SOUT_SZ)
            break;
        char *p = c->in + c->inoff;
        char *nl = memchr(p, '\n', c->inlen - c->inoff);
        if (!nl) {
            if (c->inlen - c->inoff >= CMD_MAX) {
                out_add(c, "500 5.5.2 Error: line too long\r\n");
                c->inoff = c->inlen;
            }
            break;
        }
        c->inoff = (uint32_t)(nl + 1 - c->in);
        *nl = 0; /* command() may write the terminator at the end */
        command(t, c, p, (size_t)(nl - p));
        if (c->outlen && !c->delay_ms)
            c->delay_ms = g_opt.latency_ms;
    }
    if (c->inoff == c->inlen) {
        c->inoff = c->inlen = 0;
    } else if (c->inoff > 0 && (c->st != SS_DATA || c->inlen == SIN_SZ)) {
        memmove(c->in, c->in + c->inoff, c->inlen - c->inoff);
        c->inlen -= c->inoff;
        c->inoff = 0;
    }
}

static void arm_recv(sthread_t *t, sconn_t *c)
{
    if (c->inoff > 0 && c->inlen == SIN_SZ) {
        memmove(c->in, c->in + c->inoff, c->inlen - c->inoff);
        c->inlen -= c->inoff;
        c->inoff = 0;
    }
    size_t room = SIN_SZ - c->inlen;
    if (room == 0)
        return;
    if (g_opt.slow_read) {
        if (t->now < c->next_read_at) {
            if (!c->stimer_on)
                arm_timer(t, c, false, c->next_read_at - t->now);
            return;
        }
        size_t chunk = g_opt.slow_read / 10 ? g_opt.slow_read / 10 : 1;
        if (room > chunk)
            room = chunk;
    }
    struct io_uring_sqe *sqe = get_sqe(&t->ring);
    io_uring_prep_recv(sqe, c->fd, c->in + c->inlen, room, 0);
    io_uring_sqe_set_data64(sqe, UD(OP_RECV, c->slot, c->gen));
    c->recv_on = true;
    c->inflight++;
}

static void send_out(sthread_t *t, sconn_t *c)
{
    struct io_uring_sqe *sqe = get_sqe(&t->ring);
    io_uring_prep_send(sqe, c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, UD(OP_SEND, c->slot, c->gen));
    c->send_on = true;
    c->inflight++;
}

/* Whatever can happen next: the pending reply (after its delay), then the
 * input, then the next read. */
static void s_kick(sthread_t *t, sconn_t *c)
{
    for (int guard = 0; guard < 4; guard++) {
        if (c->st == SS_CLOSING || c->st == SS_FREE)
            return;
        if (c->send_on || c->waiting)
            break;
        if (c->outlen > c->outoff) {
            if (c->delay_ms) {
                arm_timer(t, c, true, (uint64_t)c->delay_ms * 1000u);
                c->delay_ms = 0;
                c->waiting = true;
            } else {
                send_out(t, c);
            }
            break;
        }
        if (c->quit_after) {
            s_close(t, c);
            return;
        }
        s_process(t, c);
        if (c->outlen == c->outoff)
            break;
    }
    if (c->st == SS_CLOSING || c->st == SS_FREE)
        return;
    if (!c->recv_on && !c->quit_after)
        arm_recv(t, c);
}

static void conn_cqe(sthread_t *t, unsigned op, sconn_t *c, int res)
{
    if (op == OP_TIMER) {
        c->rtimer_on = false;
        c->waiting = false;
        s_kick(t, c);
        return;
    }
    if (op == OP_STIMER) {
        c->stimer_on = false;
        s_kick(t, c);
        return;
    }
    c->inflight--;
    if (op == OP_RECV)
        c->recv_on = false;
    else
        c->send_on = false;
    if (c->st == SS_CLOSING) {
        if (c->inflight == 0)
            s_finish(t, c);
        return;
    }
    if (op == OP_RECV) {
        if (res > 0) {
            c->inlen += (uint32_t)res;
            CADD(t->st.bytes_in, res);
            if (g_opt.slow_read) {
                uint64_t base = c->next_read_at > t->now ? c->next_read_at : t->now;
                c->next_read_at = base + (uint64_t)res * 1000000u / g_opt.slow_read;
            }
            s_kick(t, c);
        } else if (res == -EAGAIN || res == -EINTR) {
            s_kick(t, c);
        } else {
            if (c->st == SS_DATA)
                CINC(t->st.aborted);
            s_close(t, c);
        }
    } else {
        if (res < 0) {
            if (res == -EAGAIN || res == -EINTR) {
                send_out(t, c);
                return;
            }
            s_close(t, c);
            return;
        }
        c->outoff += (uint32_t)res;
        if (c->outoff < c->outlen) {
            send_out(t, c);
            return;
        }
        c->outoff = c->outlen = 0;
        s_kick(t, c);
    }
}

/* ---- the loop ---- */

static void arm_accept(sthread_t *t)
{
    struct io_uring_sqe *sqe = get_sqe(&t->ring);
    io_uring_prep_multishot_accept(sqe, t->lfd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, UD(OP_ACCEPT, 0, 0));
}

static void arm_tick(sthread_t *t)
{
    t->tick_ts.tv_sec = 0;
    t->tick_ts.tv_nsec = TICK_US * 1000;
    struct io_uring_sqe *sqe = get_sqe(&t->ring);
    io_uring_prep_timeout(sqe, &t->tick_ts, 0, 0);
    io_uring_sqe_set_data64(sqe, UD(OP_CTIMER, 0, 0));
}

static void *sthread_main(void *arg)
{
    sthread_t *t = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    if (ring_init(&t->ring, RING_ENTRIES, t->err, sizeof t->err)) {
        atomic_store(&t->ready, -1);
        return NULL;
    }
    t->ring_ok = true;
    t->now = now_us();
    arm_accept(t);
    arm_tick(t);
    atomic_store(&t->ready, 1);
    while (!atomic_load(&g_stop)) {
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
            if (op == OP_ACCEPT) {
                if (cqe->res >= 0) {
                    s_accept(t, cqe->res);
                } else if (cqe->res == -EMFILE || cqe->res == -ENFILE) {
                    t->accept_paused = true;
                }
                if (!(cqe->flags & IORING_CQE_F_MORE) && !t->accept_paused)
                    arm_accept(t);
            } else if (op == OP_CTIMER) {
                if (t->accept_paused) {
                    t->accept_paused = false;
                    arm_accept(t);
                }
                arm_tick(t);
            } else {
                uint32_t slot = UD_SLOT(ud);
                if (slot < t->nconns && t->conns[slot]->gen == UD_GEN(ud) && t->conns[slot]->st != SS_FREE)
                    conn_cqe(t, op, t->conns[slot], cqe->res);
            }
        }
        io_uring_cq_advance(&t->ring, n);
        if (t->rec && t->rec->len)
            rec_flush(t->rec); /* per loop turn: a reader sees whole lines soon */
    }
    if (t->rec)
        rec_flush(t->rec);
    return NULL;
}

/* ---- main thread ---- */

static void sum_sstats(uint64_t *v)
{
    memset(v, 0, NSSTAT * sizeof *v);
    for (int i = 0; i < g_nsthr; i++) {
        const _Atomic uint64_t *x = (const _Atomic uint64_t *)&g_sthr[i].st;
        for (size_t k = 0; k < NSSTAT; k++)
            v[k] += atomic_load_explicit(&x[k], memory_order_relaxed);
    }
}

static void write_json(FILE *f, const uint64_t *v, double el, bool final)
{
    json_t j = { .f = f };
    j_open(&j, NULL);
    j_str(&j, "mode", "sink");
    j_str(&j, "listen", g_opt.addr_text);
    j_dbl(&j, "elapsed_s", el);
    j_bool(&j, "final", final);
    for (size_t k = 0; k < NSSTAT; k++)
        j_u64(&j, sstat_names[k], v[k]);
    if (final) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        j_dbl(&j, "cpu_user_s", (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6);
        j_dbl(&j, "cpu_sys_s", (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
    }
    j_open(&j, "config");
    j_u64(&j, "threads", (uint64_t)g_opt.threads);
    j_bool(&j, "check", g_opt.check);
    j_u64(&j, "seed", g_opt.seed);
    j_u64(&j, "latency_ms", g_opt.latency_ms);
    j_u64(&j, "data_latency_ms", g_opt.data_latency_ms);
    j_u64(&j, "greeting_delay_ms", g_opt.greeting_delay_ms);
    j_dbl(&j, "tempfail_rate", g_opt.tempfail_rate);
    j_dbl(&j, "permfail_rate", g_opt.permfail_rate);
    j_dbl(&j, "rcpt_tempfail_rate", g_opt.rcpt_tempfail_rate);
    j_dbl(&j, "close_mid_data_rate", g_opt.close_mid_data_rate);
    j_u64(&j, "slow_read", g_opt.slow_read);
    j_close(&j);
    j_close(&j);
}

static void write_count_file(const uint64_t *v, double el, bool final)
{
    char tmp[4096 + 16];
    snprintf(tmp, sizeof tmp, "%s.tmp", g_opt.count_file);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return;
    write_json(f, v, el, final);
    if (fclose(f) == 0)
        rename(tmp, g_opt.count_file);
}

static int listen_socket(char *err, size_t errlen)
{
    int fd = socket(g_opt.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) ||
        (g_opt.rcvbuf && setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &g_opt.rcvbuf, sizeof g_opt.rcvbuf)) ||
        bind(fd, (struct sockaddr *)&g_opt.addr, g_opt.addrlen) || listen(fd, 4096)) {
        snprintf(err, errlen, "listen on %s: %s", g_opt.addr_text, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

int sink_main(void)
{
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
    g_nsthr = g_opt.threads;
    g_sthr = calloc((size_t)g_nsthr, sizeof *g_sthr);
    if (!g_sthr)
        fatal("out of memory");
    char err[512];
    for (int i = 0; i < g_nsthr; i++) {
        sthread_t *t = &g_sthr[i];
        t->id = i;
        t->cap = g_opt.max_connections;
        t->conns = calloc(t->cap, sizeof *t->conns);
        t->freel = calloc(t->cap, sizeof *t->freel);
        if (!t->conns || !t->freel)
            fatal("out of memory");
        t->rng = g_opt.seed ^ (0xD1B54A32D192ED03ull * (uint64_t)(i + 1));
        t->lfd = listen_socket(err, sizeof err);
        if (t->lfd < 0)
            fatal("%s", err);
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
    g_t0_us = now_us();
    for (int i = 0; i < g_nsthr; i++)
        if (pthread_create(&g_sthr[i].th, NULL, sthread_main, &g_sthr[i]))
            fatal("pthread_create: %s", strerror(errno));
    for (int i = 0; i < g_nsthr; i++) {
        while (atomic_load(&g_sthr[i].ready) == 0) {
            struct timespec ts = { 0, 1000000 };
            nanosleep(&ts, NULL);
        }
        if (atomic_load(&g_sthr[i].ready) < 0)
            fatal("thread %d: %s", i, g_sthr[i].err);
    }
    uint64_t v[NSSTAT], pv[NSSTAT], cv[NSSTAT];
    memset(pv, 0, sizeof pv);
    memset(cv, 0xff, sizeof cv);
    if (g_opt.count_file) {
        sum_sstats(v);
        write_count_file(v, 0, false);
        memcpy(cv, v, sizeof v);
    }
    if (!g_opt.quiet)
        fprintf(stderr, "mxgate-load sink: listening on %s (%d thread%s)\n", g_opt.addr_text, g_nsthr,
                g_nsthr == 1 ? "" : "s");
    uint64_t next_progress = g_t0_us + 1000000u, last = g_t0_us;
    for (;;) {
        struct timespec ts = { 0, 100 * 1000000 };
        int sig = sigtimedwait(&sigs, NULL, &ts);
        if (sig > 0)
            break;
        uint64_t now = now_us();
        sum_sstats(v);
        if (g_opt.count_file && memcmp(v, cv, sizeof v)) {
            write_count_file(v, (double)(now - g_t0_us) / 1e6, false);
            memcpy(cv, v, sizeof v);
        }
        if (now >= next_progress) {
            if (!g_opt.quiet) {
                double dt = (double)(now - last) / 1e6;
                /* indexes in sstats_t: 0 sessions, 1 open, 2 accepted, 3 refused, 4 tempfail,
                 * 5 permfail, 6 corrupt, 7 closed_mid_data, 10 bytes_in */
                fprintf(stderr,
                        "[%7.1fs] %8.0f msg/s %7.2f MB/s | accepted %llu refused %llu (tempfail %llu permfail "
                        "%llu corrupt %llu) closed %llu | sessions %llu open %llu\n",
                        (double)(now - g_t0_us) / 1e6, dt > 0 ? (double)(v[2] + v[3] - pv[2] - pv[3]) / dt : 0.0,
                        dt > 0 ? (double)(v[10] - pv[10]) / dt / 1e6 : 0.0, (unsigned long long)v[2],
                        (unsigned long long)v[3], (unsigned long long)v[4], (unsigned long long)v[5],
                        (unsigned long long)v[6], (unsigned long long)v[7], (unsigned long long)v[0],
                        (unsigned long long)v[1]);
            }
            memcpy(pv, v, sizeof v);
            last = now;
            next_progress += 1000000u;
            if (next_progress <= now)
                next_progress = now + 1000000u;
        }
    }
    atomic_store(&g_stop, 1);
    for (int i = 0; i < g_nsthr; i++) {
        pthread_join(g_sthr[i].th, NULL);
        if (g_sthr[i].err[0])
            fprintf(stderr, "mxgate-load sink: thread %d: %s\n", i, g_sthr[i].err);
    }
    double el = (double)(now_us() - g_t0_us) / 1e6;
    sum_sstats(v);
    if (recfd >= 0)
        close(recfd);
    if (g_opt.count_file)
        write_count_file(v, el, true);
    write_json(jf, v, el, true);
    if (jf != stdout)
        fclose(jf);
    else
        fflush(stdout);
    for (int i = 0; i < g_nsthr; i++) {
        sthread_t *t = &g_sthr[i];
        if (t->ring_ok)
            io_uring_queue_exit(&t->ring);
        close(t->lfd);
        for (uint32_t k = 0; k < t->nconns; k++) {
            if (t->conns[k]->fd > 0 && t->conns[k]->st != SS_FREE)
                close(t->conns[k]->fd);
            free(t->conns[k]);
        }
        free(t->conns);
        free(t->freel);
        free(t->rec);
    }
    free(g_sthr);
    return 0;
}

/*
 * relay.c - the client side of one downstream SMTP/LMTP connection (see
 * relay.h).
 *
 * One FIFO of expectations drives everything: each command sent (or held,
 * when the server does not pipeline) appends what its reply answers and the
 * owner's token; each parsed reply pops the head and says what it means.
 * A failure walks the same FIFO and answers what is left, so there is
 * exactly one way for a client's command to get its reply from here: in
 * order, through relay_feed().
 */
#include "relay.h"

#include "grow.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const fail_names[RELAY_FAIL_COUNT] = {
    [RELAY_FAIL_NONE] = "none",
    [RELAY_FAIL_CLOSED] = "closed_by_server",
    [RELAY_FAIL_RESET] = "recv_error",
    [RELAY_FAIL_SEND] = "send_error",
    [RELAY_FAIL_TIMEOUT] = "timeout",
    [RELAY_FAIL_CONNECT] = "connect_failed",
    [RELAY_FAIL_SYNTAX] = "bad_reply",
    [RELAY_FAIL_UNEXPECTED] = "unexpected_reply",
    [RELAY_FAIL_GREETING] = "bad_greeting",
    [RELAY_FAIL_HELLO] = "hello_refused",
    [RELAY_FAIL_RSET] = "rset_refused",
    [RELAY_FAIL_ORPHAN_DATA] = "orphan_data",
    [RELAY_FAIL_FULL] = "too_many_commands",
    [RELAY_FAIL_NO_TLS] = "tls_not_offered",
    [RELAY_FAIL_TLS_REFUSED] = "starttls_refused",
    [RELAY_FAIL_TLS] = "tls_failed",
};

const char *relay_fail_name(enum relay_fail f)
{
    return (unsigned)f < RELAY_FAIL_COUNT ? fail_names[f] : "?";
}

#define RELAY_BUF_FIRST 512u /* a command group fits */

static const smtp_reply_t lost_reply = { 451, "4.4.1", SLICE_INIT("Error: downstream server unavailable, try again later"),
                                         SMTP_R_PEER };

void relay_init(relay_t *r, const relay_config_t *cfg)
{
    memset(r, 0, sizeof *r);
    r->cfg = cfg;
    r->state = RELAY_CONNECTING;
    dsr_init(&r->parser);
}

void relay_free(relay_t *r)
{
    free(r->due);
    free(r->held);
    free(r->out);
    r->due = NULL;
    r->held = r->out = NULL;
    r->due_cap = r->held_cap = r->out_cap = 0;
}

/* ---- buffers ---- */

static bool put_out(relay_t *r, const char *p, size_t n)
{
    return grow_append(&r->out, &r->out_cap, &r->out_len, p, n, RELAY_BUF_FIRST) != UINT32_MAX;
}

void relay_sent(relay_t *r, size_t n)
{
    if (n >= r->out_len) {
        r->out_len = 0;
        return;
    }
    memmove(r->out, r->out + n, r->out_len - n);
    r->out_len -= (uint32_t)n;
}

static relay_due_t *due_at(const relay_t *r, uint32_t i)
{
    return &r->due[(r->due_head + i) % r->due_cap];
}

static relay_due_t *due_push(relay_t *r, uint8_t kind, uint32_t token)
{
    uint32_t limit = r->cfg->max_due ? r->cfg->max_due : 256;
    /* the owner's commands: max_due; the handshake and RSET (never owned) may
     * add to a full group */
    if (r->due_len >= (r->owned ? limit : limit + 4))
        return NULL;
    if (r->due_len == r->due_cap) {
        uint32_t cap = r->due_cap ? r->due_cap * 2 : 8;
        relay_due_t *n = malloc(cap * sizeof *n);
        if (!n)
            return NULL;
        for (uint32_t i = 0; i < r->due_len; i++)
            n[i] = *due_at(r, i);
        free(r->due);
        r->due = n;
        r->due_cap = cap;
        r->due_head = 0;
    }
    relay_due_t *d = due_at(r, r->due_len++);
    *d = (relay_due_t){ kind, r->owned, true, token, 0, 0 };
    return d;
}

static void due_pop(relay_t *r)
{
    r->due_head = (r->due_head + 1) % r->due_cap;
    r->due_len--;
}

/*
 * Send a command, or hold it until the replies before it are in when the
 * server does not pipeline (RFC 2920 lets a client pipeline only where the
 * server said PIPELINING). The handshake always goes one at a time.
 */
static bool command(relay_t *r, uint8_t kind, uint32_t token, const char *line, size_t n)
{
    bool wait = !(r->caps & DSR_CAP_PIPELINING) && r->due_len > 0;
    relay_due_t *d = due_push(r, kind, token);
    if (!d)
        return false;
    if (!wait) {
        if (put_out(r, line, n))
            return true;
        r->due_len--;
        return false;
    }
    uint32_t off = grow_append(&r->held, &r->held_cap, &r->held_len, line, n, RELAY_BUF_FIRST);
    if (off == UINT32_MAX) {
        r->due_len--;
        return false;
    }
    d->sent = false;
    d->off = off;
    d->len = (uint32_t)n;
    r->unsent++;
    return true;
}

/* The reply to the head came in: send the next held command, if any. */
static void release_held(relay_t *r)
{
    if (!r->unsent || r->due_len == 0)
        return;
    relay_due_t *d = due_at(r, 0);
    if (d->sent)
        return;
    d->sent = true;
    r->unsent--;
    if (!put_out(r, r->held + d->off, d->len))
        relay_fail(r, RELAY_FAIL_FULL);
    if (!r->unsent)
        r->held_len = 0;
}

/* ---- the handshake ---- */

void relay_connected(relay_t *r)
{
    if (r->state != RELAY_CONNECTING)
        return;
    r->state = RELAY_GREETING;
    (void)due_push(r, RK_GREETING, 0);
}

static void hello(relay_t *r, bool helo)
{
    char line[DSR_LINE_MAX];
    const char *verb = helo ? "HELO" : r->cfg->lmtp ? "LHLO" : "EHLO";
    int n = snprintf(line, sizeof line, "%s %.*s\r\n", verb, (int)r->cfg->helo.len, r->cfg->helo.ptr);
    r->state = RELAY_HELLO;
    if (n <= 0 || (size_t)n >= sizeof line || !command(r, helo ? RK_HELO : RK_HELLO, 0, line, (size_t)n))
        relay_fail(r, RELAY_FAIL_FULL);
}

void relay_tls_done(relay_t *r)
{
    if (r->state != RELAY_TLS)
        return;
    r->tls = true;
    r->caps = 0;
    r->size_max = 0;
    hello(r, false);
}

/* ---- failure ---- */

void relay_fail(relay_t *r, enum relay_fail why)
{
    if (r->state == RELAY_DEAD)
        return;
    r->fail = (uint8_t)why;
    r->lost_due = r->owned;
    r->state = RELAY_DEAD;
    r->close_due = true;
    r->out_len = 0;
    r->held_len = 0;
    r->unsent = 0;
}

/* After a failure: the due replies in order, then LOST, then CLOSE. */
static enum relay_status failed_events(relay_t *r, relay_event_t *ev)
{
    while (r->due_len) {
        relay_due_t d = *due_at(r, 0);
        due_pop(r);
        if (!d.routed || d.kind < RK_MAIL)
            continue;
        *ev = (relay_event_t){ RELAY_EV_REPLY, d.kind, d.token, lost_reply, true };
        return RELAY_EVENT;
    }
    if (r->lost_due) {
        r->lost_due = false;
        *ev = (relay_event_t){ .type = RELAY_EV_LOST };
        return RELAY_EVENT;
    }
    return RELAY_CLOSE;
}

/* ---- replies ---- */

static smtp_reply_t to_reply(const dsr_reply_t *d, char *esc)
{
    smtp_reply_t r = { d->code, NULL, d->text, 0 };
    if (d->esc.len && d->esc.len <= RQ_ESC_MAX) {
        memcpy(esc, d->esc.ptr, d->esc.len);
        esc[d->esc.len] = '\0';
        r.esc = esc;
    }
    /* A 4xx is the server's trouble, never the client's error. */
    if (d->code >= 400 && d->code < 500)
        r.flags |= SMTP_R_PEER;
    return r;
}

/* Once a released connection has no replies due, it is clean again. */
static bool drained(relay_t *r, relay_event_t *ev)
{
    if (r->state != RELAY_DRAIN || r->due_len)
        return false;
    if (r->tx_open) {
        /* The server holds a transaction nobody will finish. */
        if (!command(r, RK_RSET, 0, "RSET\r\n", 6))
            relay_fail(r, RELAY_FAIL_FULL);
        return false;
    }
    r->state = RELAY_READY;
    *ev = (relay_event_t){ .type = RELAY_EV_IDLE };
    return true;
}

/* LMTP: one reply per accepted recipient after the data (RFC 2033 4.2); the
 * owner hears the worst, so a failure is never hidden behind a 250. */
static bool lmtp_eod(relay_t *r, const relay_due_t *d, const smtp_reply_t *one, relay_event_t *ev, char *esc)
{
    if (one->code > r->eod_worst) {
        r->eod_worst = one->code;
        size_t n = one->text.len < sizeof r->worst_text ? one->text.len : sizeof r->worst_text - 1;
        if (n)
            memcpy(r->worst_text, one->text.ptr, n);
        r->worst_len = (uint16_t)n;
        snprintf(r->worst_esc, sizeof r->worst_esc, "%s", one->esc ? one->esc : "");
    }
    if (--r->eod_left)
        return false;
    smtp_reply_t w = { r->eod_worst, r->worst_esc[0] ? r->worst_esc : NULL, slice_make(r->worst_text, r->worst_len),
                       r->eod_worst >= 400 && r->eod_worst < 500 ? SMTP_R_PEER : 0 };
    (void)esc;
    r->eod_worst = 0;
    *ev = (relay_event_t){ RELAY_EV_REPLY, RK_EOD, d->token, w, false };
    return true;
}

/* One parsed reply: what it answers and what it means. True: *ev is an event. */
static bool on_reply(relay_t *r, const dsr_reply_t *dr, relay_event_t *ev, char *esc)
{
    if (r->due_len == 0 || !due_at(r, 0)->sent) {
        relay_fail(r, RELAY_FAIL_UNEXPECTED); /* a 421 on an idle connection, or a broken stream */
        return false;
    }
    relay_due_t d = *due_at(r, 0);
    smtp_reply_t rep = to_reply(dr, esc);
    /* A 3xx means "go on" only for DATA, and DATA's only 3xx is 354: any
     * other positive reply would let the client send a body the server is
     * not reading as one (or treat a command as a body). */
    bool intermediate = dr->code >= 300 && dr->code < 400;
    if ((d.kind == RK_DATA && dr->code < 400 && dr->code != 354) || (d.kind != RK_DATA && intermediate)) {
        relay_fail(r, RELAY_FAIL_UNEXPECTED);
        return false;
    }
    bool lmtp_more = d.kind == RK_EOD && r->cfg->lmtp && r->eod_left > 1;
    if (!lmtp_more)
        due_pop(r);
    switch (d.kind) {
    case RK_GREETING:
        if (dr->code != 220) {
            relay_fail(r, RELAY_FAIL_GREETING);
            return false;
        }
        hello(r, false);
        return false;
    case RK_HELLO:
    case RK_HELO:
        if (dr->code != 250) {
            if (d.kind == RK_HELLO && !r->cfg->lmtp && dr->code >= 500)
                hello(r, true); /* an old server: HELO, no extensions */
            else
                relay_fail(r, RELAY_FAIL_HELLO);
            return false;
        }
        r->caps = d.kind == RK_HELLO ? dr->caps : 0;
        r->size_max = d.kind == RK_HELLO ? dr->size_max : 0;
        if (r->cfg->starttls != RELAY_TLS_OFF && !r->tls) {
            if (r->caps & DSR_CAP_STARTTLS) {
                r->state = RELAY_STARTTLS;
                if (!command(r, RK_STARTTLS, 0, "STARTTLS\r\n", 10))
                    relay_fail(r, RELAY_FAIL_FULL);
                return false;
            }
            if (r->cfg->starttls == RELAY_TLS_REQUIRE) {
                relay_fail(r, RELAY_FAIL_NO_TLS);
                return false;
            }
        }
        r->state = RELAY_READY;
        *ev = (relay_event_t){ .type = RELAY_EV_READY };
        return true;
    case RK_STARTTLS:
        if (dr->code == 220) {
            r->state = RELAY_TLS;
            *ev = (relay_event_t){ .type = RELAY_EV_STARTTLS };
            return true;
        }
        if (r->cfg->starttls == RELAY_TLS_REQUIRE || dr->code < 400) {
            relay_fail(r, RELAY_FAIL_TLS_REFUSED); /* required, or a reply that means nothing here */
            return false;
        }
        /* Opportunistic: a server that cannot do TLS now is still a server,
         * with the extensions it announced in plaintext. */
        r->state = RELAY_READY;
        *ev = (relay_event_t){ .type = RELAY_EV_READY };
        return true;
    case RK_RSET:
        if (dr->code != 250) {
            relay_fail(r, RELAY_FAIL_RSET);
            return false;
        }
        r->tx_open = false;
        return drained(r, ev);
    case RK_MAIL:
        if (dr->code < 300)
            r->tx_open = true;
        break;
    case RK_RCPT:
        if (dr->code < 300)
            r->rcpt_ok++;
        break;
    case RK_DATA:
        if (dr->code == 354) {
            if (!d.routed) {
                relay_fail(r, RELAY_FAIL_ORPHAN_DATA); /* the server wants a body nobody will send */
                return false;
            }
            r->state = RELAY_BODY;
        }
        break;
    case RK_EOD:
        if (r->cfg->lmtp && r->eod_left) {
            if (!lmtp_eod(r, &d, &rep, ev, esc))
                return false;
        } else {
            *ev = (relay_event_t){ RELAY_EV_REPLY, RK_EOD, d.token, rep, false };
        }
        r->tx_open = false;
        r->rcpt_ok = 0;
        r->messages++;
        if (r->state != RELAY_DRAIN)
            r->state = RELAY_READY;
        if (!d.routed)
            return drained(r, ev);
        return true;
    default:
        relay_fail(r, RELAY_FAIL_UNEXPECTED);
        return false;
    }
    /* refused at MAIL and every reply of the group in: nothing is open */
    if (r->state == RELAY_TX && !r->tx_open && r->due_len == 0)
        r->state = RELAY_READY;
    if (!d.routed)
        return drained(r, ev);
    *ev = (relay_event_t){ RELAY_EV_REPLY, d.kind, d.token, rep, false };
    return true;
}

enum relay_status relay_feed(relay_t *r, const char *in, size_t len, size_t *consumed, relay_event_t *ev)
{
    char *esc = r->esc; /* an event's enhanced code must outlive this call */
    *consumed = 0;
    for (;;) {
        if (r->state == RELAY_DEAD) {
            *consumed += len; /* nothing after a failure means anything */
            return failed_events(r, ev);
        }
        if (len == 0)
            return RELAY_AGAIN;
        if (r->state == RELAY_TLS) {
            relay_fail(r, RELAY_FAIL_UNEXPECTED); /* plaintext after the 220: injected */
            continue;
        }
        size_t used = 0;
        dsr_reply_t dr;
        enum dsr_status st = dsr_feed(&r->parser, in, len, &used, &dr);
        in += used, len -= used;
        *consumed += used;
        if (st == DSR_ERROR) {
            relay_fail(r, RELAY_FAIL_SYNTAX);
            continue;
        }
        if (st == DSR_AGAIN)
            return RELAY_AGAIN;
        bool event = on_reply(r, &dr, ev, esc);
        release_held(r);
        if (event)
            return RELAY_EVENT;
    }
}

/* ---- the owner's commands ---- */

void relay_lease(relay_t *r)
{
    r->owned = true;
    r->rcpt_ok = 0;
}

static bool refuse(smtp_reply_t *out, int code, const char *esc, const char *text, uint8_t flags)
{
    *out = (smtp_reply_t){ code, esc, slice_make(text, strlen(text)), flags };
    return false;
}

static bool usable(relay_t *r, smtp_reply_t *refusal)
{
    if (r->state == RELAY_DEAD || !r->owned)
        return refuse(refusal, lost_reply.code, lost_reply.esc, "Error: downstream server unavailable, try again later",
                      SMTP_R_PEER);
    return true;
}

static bool too_many(relay_t *r, smtp_reply_t *refusal)
{
    relay_fail(r, RELAY_FAIL_FULL);
    return refuse(refusal, 451, "4.3.0", "Error: too many commands in flight, try again later", SMTP_R_PEER);
}

/* One of the owner's commands, in the state it belongs to. */
static bool owner_command(relay_t *r, uint8_t state, uint8_t kind, uint32_t token, const char *line, size_t n,
                          smtp_reply_t *refusal)
{
    if (!usable(r, refusal))
        return false;
    if (r->state != state)
        return refuse(refusal, 451, "4.3.0", "Error: internal error, try again later", SMTP_R_PEER);
    if (!command(r, kind, token, line, n))
        return too_many(r, refusal);
    return true;
}

/* "VERB:<path>" exactly as the client wrote the path (quoted local parts and
 * all): the engine checked it, and it never passes through printf. */
static size_t path_line(char *line, const char *verb, size_t vlen, slice_t mailbox)
{
    size_t n = vlen;
    memcpy(line, verb, vlen);
    if (mailbox.len) /* <> comes as {NULL, 0} */
        memcpy(line + n, mailbox.ptr, mailbox.len), n += mailbox.len;
    line[n++] = '>';
    return n;
}

bool relay_mail(relay_t *r, uint32_t token, slice_t mailbox, const smtp_mail_params_t *p, smtp_reply_t *refusal)
{
    if (p->smtputf8 && !(r->caps & DSR_CAP_SMTPUTF8) && r->state == RELAY_READY)
        return refuse(refusal, 553, "5.6.7", "Error: the downstream server does not support SMTPUTF8", 0);
    if (p->has_size && r->size_max && p->size > r->size_max && r->state == RELAY_READY)
        return refuse(refusal, 552, "5.3.4", "Error: message size exceeds the downstream server's limit", 0);
    if (mailbox.len > ADDR_PATH_MAX)
        return refuse(refusal, 501, "5.1.7", "Error: sender address too long", 0);
    char line[ADDR_PATH_MAX + 128];
    size_t n = path_line(line, "MAIL FROM:<", 11, mailbox);
    if (p->body == BODY_8BITMIME && (r->caps & DSR_CAP_8BITMIME))
        memcpy(line + n, " BODY=8BITMIME", 14), n += 14;
    if (p->smtputf8)
        memcpy(line + n, " SMTPUTF8", 9), n += 9;
    if (p->has_size && (r->caps & DSR_CAP_SIZE))
        n += (size_t)snprintf(line + n, sizeof line - n, " SIZE=%llu", (unsigned long long)p->size);
    memcpy(line + n, "\r\n", 2), n += 2;
    if (!owner_command(r, RELAY_READY, RK_MAIL, token, line, n, refusal))
        return false;
    r->state = RELAY_TX;
    r->rcpt_ok = 0;
    return true;
}

bool relay_rcpt(relay_t *r, uint32_t token, slice_t mailbox, smtp_reply_t *refusal)
{
    if (mailbox.len > ADDR_PATH_MAX)
        return refuse(refusal, 501, "5.1.3", "Error: recipient address too long", 0);
    char line[ADDR_PATH_MAX + 16];
    size_t n = path_line(line, "RCPT TO:<", 9, mailbox);
    memcpy(line + n, "\r\n", 2), n += 2;
    return owner_command(r, RELAY_TX, RK_RCPT, token, line, n, refusal);
}

bool relay_data(relay_t *r, uint32_t token, smtp_reply_t *refusal)
{
    return owner_command(r, RELAY_TX, RK_DATA, token, "DATA\r\n", 6, refusal);
}

bool relay_eod(relay_t *r, uint32_t token, smtp_reply_t *refusal)
{
    if (!owner_command(r, RELAY_BODY, RK_EOD, token, ".\r\n", 3, refusal))
        return false;
    r->state = RELAY_EOD;
    if (r->cfg->lmtp) {
        r->eod_left = r->rcpt_ok ? r->rcpt_ok : 1;
        r->eod_worst = 0;
    }
    return true;
}

enum relay_release relay_release(relay_t *r)
{
    if (!r->owned)
        return r->state == RELAY_DEAD ? RELAY_DISCARD : RELAY_REUSE;
    /* A released lease hears nothing more, not even the rest of a failure
     * it is in the middle of. */
    r->owned = false;
    r->lost_due = false;
    /* Held commands of the owner are never sent (they are the newest dues). */
    while (r->unsent) {
        r->due_len--;
        r->unsent--;
    }
    r->held_len = 0;
    bool data_due = false;
    for (uint32_t i = 0; i < r->due_len; i++) {
        relay_due_t *d = due_at(r, i);
        d->routed = false;
        data_due |= d->kind == RK_DATA || d->kind == RK_EOD;
    }
    /* DATA may yet get its 354 (a body nobody sends), and an end marker in
     * flight leaves the message's fate to the server: either way the
     * stream's future is not ours to predict. */
    if (r->state == RELAY_DEAD || r->state == RELAY_BODY || data_due)
        return RELAY_DISCARD;
    if (r->due_len == 0 && !r->tx_open) {
        r->state = RELAY_READY;
        return RELAY_REUSE;
    }
    r->state = RELAY_DRAIN;
    if (r->due_len == 0) {
        /* MAIL accepted and nothing due: reset now. */
        if (!command(r, RK_RSET, 0, "RSET\r\n", 6))
            return RELAY_DISCARD;
    }
    return RELAY_DRAINING;
}

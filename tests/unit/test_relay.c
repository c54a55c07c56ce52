/*
 * test_relay.c - unit tests for the client side of one downstream SMTP/LMTP
 * connection (core/relay.h), alone and wired to the SMTP engine
 * (core/smtp.h) the way the gateway's session wires them.
 *
 * Covers, against the header contract:
 *   1. the handshake: greeting, EHLO/LHLO and the caps of its reply, the HELO
 *      fallback, refusals, multi-line replies, replies nobody asked for;
 *   2. replies at every split: scripted server transcripts fed whole, byte by
 *      byte, at every split point and every pair of split points (short
 *      ones), each piece in a guard buffer unmapped right after its call: the
 *      event log and the bytes sent must not depend on the splits;
 *   3. commands out: pipelined groups, one command at a time without
 *      PIPELINING, paths byte for byte, ESMTP parameters only where offered,
 *      the SMTPUTF8 and SIZE refusals, commands in the wrong state;
 *   4. failure at every step of a MAIL/RCPT/RCPT/DATA group, its body and end
 *      marker, for every way a connection fails, and the server's own 4xx,
 *      5xx and 421 at every step: exactly one reply per command, in order,
 *      451 4.4.1 (SMTP_R_PEER) for what was owed, then LOST, then CLOSE;
 *   5. the client's view: the real engine and the relay joined by a small
 *      glue, and the exact replies the client reads for the same matrix;
 *   6. release: REUSE, DRAINING (drained replies, RSET, IDLE), DISCARD;
 *   7. LMTP: one reply per accepted recipient, the owner hears the worst;
 *   8. limits: more commands than max_due.
 *
 * Tests named test_regression_* pin down defects these tests found in
 * core/relay.c (each says which); the ones that would trip a sanitizer run
 * in a child process so that they fail alone.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "relay.h"
#include "testutil.h"

#define LOST_TEXT "Error: downstream server unavailable, try again later"
#define PAIR_MAX_LEN 200 /* transcripts up to this long are split at every pair */
#define REC_MAX 1024

static const relay_config_t CFG_SMTP = { SLICE_INIT("gw.test"), false, 64, RELAY_TLS_OFF };
static const relay_config_t CFG_LMTP = { SLICE_INIT("gw.test"), true, 64, RELAY_TLS_OFF };
static const relay_config_t CFG_MAX4 = { SLICE_INIT("gw.test"), false, 4, RELAY_TLS_OFF }; /* max_due 4 */
static const relay_config_t CFG_TLS_MAY = { SLICE_INIT("gw.test"), false, 64, RELAY_TLS_MAY };
static const relay_config_t CFG_TLS_REQ = { SLICE_INIT("gw.test"), false, 64, RELAY_TLS_REQUIRE };
static const relay_config_t CFG_LMTP_TLS = { SLICE_INIT("gw.test"), true, 64, RELAY_TLS_REQUIRE };
static const smtp_mail_params_t NO_PARAMS = { .size = 0 };

/* Server texts. */
#define GREET "220 ds.test ESMTP\r\n"
#define EHLO_FULL                                                                                            \
    "250-ds.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n"           \
    "250 SMTPUTF8\r\n"
#define EHLO_PIPE "250-ds.test\r\n250 PIPELINING\r\n"
#define EHLO_NOPIPE "250-ds.test\r\n250 8BITMIME\r\n"
#define LMTP_HELLO "220 lmtp.test LMTP\r\n250-lmtp.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n"


/* ------------------------------------------------------------------ */
/* The harness: one relay, its event log and the bytes it sent         */
/* ------------------------------------------------------------------ */

typedef struct rec {
    int type; /* enum relay_ev_type; 0: CLOSE */
    int kind;
    uint32_t token;
    int code;
    uint8_t flags;
} rec_t;

typedef struct rh rh_t;
typedef void (*owner_fn)(rh_t *h, const relay_event_t *ev);

struct rh {
    relay_t r;
    tu_log_t log; /* canonical: one line per event, refusal, release, CLOSE */
    tu_log_t out; /* every byte the relay asked to send */
    rec_t rec[REC_MAX];
    size_t nrec;
    bool closed;
    owner_fn owner; /* reacts to events, as an owner would */
};

static rh_t *rh_new(const relay_config_t *cfg, owner_fn owner)
{
    rh_t *h = calloc(1, sizeof *h);
    assert_non_null(h);
    relay_init(&h->r, cfg);
    h->owner = owner;
    return h;
}

static void rh_del(rh_t *h)
{
    relay_free(&h->r);
    tu_free_log(&h->log);
    tu_free_log(&h->out);
    free(h);
}

static const char *rh_log(const rh_t *h)
{
    return h->log.buf ? h->log.buf : "";
}

static const char *rh_out(const rh_t *h)
{
    return h->out.buf ? h->out.buf : "";
}

static void rh_clear(rh_t *h)
{
    h->log.len = 0;
    if (h->log.buf)
        h->log.buf[0] = 0;
    h->out.len = 0;
    if (h->out.buf)
        h->out.buf[0] = 0;
    h->nrec = 0;
}

/* What the relay holds to send, as a C string (for comparisons). */
static char *pending_out(const rh_t *h)
{
    slice_t o = relay_output(&h->r);
    char *s = malloc(o.len + 1);
    assert_non_null(s);
    if (o.len)
        memcpy(s, o.ptr, o.len);
    s[o.len] = 0;
    return s;
}

#define ASSERT_PENDING(h, lit)                                                                                \
    do {                                                                                                      \
        char *p_ = pending_out(h);                                                                            \
        assert_string_equal(p_, (lit));                                                                       \
        free(p_);                                                                                             \
    } while (0)

/* "Send" everything a relay holds: into `sent`. */
static void take_output(relay_t *r, tu_log_t *sent)
{
    slice_t o = relay_output(r);
    if (o.len)
        tu_put(sent, o.ptr, o.len);
    relay_sent(r, o.len);
}

static void rh_take(rh_t *h)
{
    take_output(&h->r, &h->out);
}

/* Feed a relay the server's bytes (NULL, 0: only the due events) until it
 * wants more or closes: each event goes to on_event(arg, ev), and what the
 * relay asks to send is "sent" into `sent` after every call. Returns
 * RELAY_AGAIN (all input used) or RELAY_CLOSE. */
static enum relay_status feed_relay(relay_t *r, const char *p, size_t n,
                                    void (*on_event)(void *, const relay_event_t *), void *arg, tu_log_t *sent)
{
    for (int guard = 0; guard < 100000; guard++) {
        size_t used = (size_t)-1;
        relay_event_t ev;
        memset(&ev, 0, sizeof ev);
        enum relay_status st = relay_feed(r, p, n, &used, &ev);
        assert_true(used <= n);
        if (used) {
            p += used;
            n -= used;
        }
        if (st == RELAY_EVENT)
            on_event(arg, &ev);
        take_output(r, sent);
        if (st == RELAY_EVENT)
            continue;
        if (st == RELAY_AGAIN)
            assert_int_equal(n, 0); /* AGAIN: all input used */
        else
            assert_int_equal(st, RELAY_CLOSE);
        return st;
    }
    fail_msg("relay_feed loops");
    return RELAY_CLOSE;
}

static const char *kind_name(unsigned k)
{
    static const char *const n[] = { "NONE", "GREETING", "HELLO", "HELO", "MAIL", "RCPT", "DATA", "EOD", "RSET",
                                     "STARTTLS" };
    return k < sizeof n / sizeof n[0] ? n[k] : "?";
}

static void put_caps(tu_log_t *l, uint32_t caps)
{
    static const struct {
        uint32_t bit;
        const char *name;
    } t[] = { { DSR_CAP_PIPELINING, "PIPELINING" }, { DSR_CAP_SIZE, "SIZE" }, { DSR_CAP_8BITMIME, "8BITMIME" },
              { DSR_CAP_SMTPUTF8, "SMTPUTF8" } };
    bool any = false;
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        if (!(caps & t[i].bit))
            continue;
        if (any)
            tu_puts(l, ",");
        tu_puts(l, t[i].name);
        any = true;
    }
    if (!any)
        tu_puts(l, "-");
}

static void put_reply(tu_log_t *l, const char *what, uint32_t tok, const smtp_reply_t *rep)
{
    char b[160];
    snprintf(b, sizeof b, "%s #%u %d %s %s ", what, tok, rep->code, rep->esc ? rep->esc : "-",
             (rep->flags & SMTP_R_PEER) ? "peer" : "-");
    tu_puts(l, b);
    tu_put_escaped(l, rep->text);
    tu_puts(l, "\n");
}

static void rh_record(rh_t *h, const relay_event_t *ev)
{
    char b[160];
    switch (ev->type) {
    case RELAY_EV_READY:
        tu_puts(&h->log, "READY caps=");
        put_caps(&h->log, h->r.caps);
        snprintf(b, sizeof b, " size=%llu\n", (unsigned long long)h->r.size_max);
        tu_puts(&h->log, b);
        break;
    case RELAY_EV_REPLY:
        /* the relay's own 451 for what a failed connection owed, and only that, is marked lost */
        assert_int_equal(ev->lost, h->r.state == RELAY_DEAD);
        snprintf(b, sizeof b, "REPLY %s", kind_name(ev->kind));
        put_reply(&h->log, b, ev->token, &ev->reply);
        break;
    case RELAY_EV_LOST:
        tu_puts(&h->log, "LOST\n");
        break;
    case RELAY_EV_IDLE:
        tu_puts(&h->log, "IDLE\n");
        break;
    case RELAY_EV_STARTTLS:
        tu_puts(&h->log, "STARTTLS\n");
        break;
    default:
        snprintf(b, sizeof b, "EVENT?%d\n", (int)ev->type);
        tu_puts(&h->log, b);
        break;
    }
    assert_true(h->nrec < REC_MAX);
    h->rec[h->nrec++] = (rec_t){ (int)ev->type, ev->kind, ev->token, ev->reply.code, ev->reply.flags };
}

static void rh_on_event(void *arg, const relay_event_t *ev)
{
    rh_t *h = arg;
    rh_record(h, ev);
    if (h->owner)
        h->owner(h, ev);
}

/* Feed server bytes (NULL, 0: only the due events) through feed_relay; the
 * owner reacts to each event; a CLOSE is logged and recorded. */
static void rh_feed(rh_t *h, const char *p, size_t n)
{
    if (feed_relay(&h->r, p, n, rh_on_event, h, &h->out) != RELAY_CLOSE)
        return;
    char b[80];
    snprintf(b, sizeof b, "CLOSE %s\n", relay_fail_name((enum relay_fail)h->r.fail));
    tu_puts(&h->log, b);
    assert_true(h->nrec < REC_MAX);
    h->rec[h->nrec++] = (rec_t){ 0, 0, 0, 0, 0 };
    h->closed = true;
}

static void rh_feeds(rh_t *h, const char *s)
{
    rh_feed(h, s, strlen(s));
}

static void rh_pump(rh_t *h)
{
    rh_feed(h, NULL, 0);
}

static void rh_fail(rh_t *h, enum relay_fail f)
{
    relay_fail(&h->r, f);
    rh_pump(h);
}

static void log_refusal(rh_t *h, uint32_t tok, const smtp_reply_t *ref)
{
    put_reply(&h->log, "REFUSED", tok, ref);
}

/* One of the owner's commands (kind RK_MAIL, RK_RCPT, RK_DATA or RK_EOD;
 * mbox and p only where the command takes them); a refusal is logged. */
static bool rh_cmd(rh_t *h, enum relay_kind kind, uint32_t tok, const char *mbox, const smtp_mail_params_t *p)
{
    smtp_reply_t ref;
    memset(&ref, 0, sizeof ref);
    slice_t m = mbox ? slice_make(mbox, strlen(mbox)) : SLICE_NULL;
    bool ok;
    switch (kind) {
    case RK_MAIL:
        ok = relay_mail(&h->r, tok, m, p, &ref);
        break;
    case RK_RCPT:
        ok = relay_rcpt(&h->r, tok, m, &ref);
        break;
    case RK_DATA:
        ok = relay_data(&h->r, tok, &ref);
        break;
    default:
        assert_int_equal(kind, RK_EOD);
        ok = relay_eod(&h->r, tok, &ref);
        break;
    }
    if (!ok)
        log_refusal(h, tok, &ref);
    return ok;
}

#define rh_mail_p(h, tok, mbox, p) rh_cmd((h), RK_MAIL, (tok), (mbox), (p))
#define rh_mail(h, tok, mbox) rh_cmd((h), RK_MAIL, (tok), (mbox), &NO_PARAMS)
#define rh_rcpt(h, tok, mbox) rh_cmd((h), RK_RCPT, (tok), (mbox), NULL)
#define rh_data(h, tok) rh_cmd((h), RK_DATA, (tok), NULL, NULL)
#define rh_eod(h, tok) rh_cmd((h), RK_EOD, (tok), NULL, NULL)

/* The group most tests send: MAIL #1 from s@x.test, RCPT #2, #3, ... to
 * a@, b@, c@y.test (nrcpt of them, at most 3), then DATA when `data`, with
 * the next token. True when every command went. */
static bool rh_group(rh_t *h, uint32_t nrcpt, bool data)
{
    static const char *const rcpt[] = { "a@y.test", "b@y.test", "c@y.test" };
    assert_true(nrcpt <= sizeof rcpt / sizeof rcpt[0]);
    bool ok = rh_mail(h, 1, "s@x.test");
    for (uint32_t i = 0; i < nrcpt; i++)
        ok = rh_rcpt(h, i + 2, rcpt[i]) && ok;
    if (data)
        ok = rh_data(h, nrcpt + 2) && ok;
    return ok;
}

static const char *release_name(enum relay_release x)
{
    return x == RELAY_REUSE ? "REUSE" : x == RELAY_DRAINING ? "DRAINING" : x == RELAY_DISCARD ? "DISCARD" : "?";
}

static enum relay_release rh_release(rh_t *h)
{
    enum relay_release x = relay_release(&h->r);
    tu_puts(&h->log, "RELEASE ");
    tu_puts(&h->log, release_name(x));
    tu_puts(&h->log, "\n");
    return x;
}

/* Connect and shake hands; the log and output are cleared after READY. */
static void rh_ready(rh_t *h, const char *server)
{
    relay_connected(&h->r);
    rh_feeds(h, server);
    const char *l = rh_log(h);
    if (strncmp(l, "READY", 5) != 0)
        tu_note("handshake failed:\n%s", l);
    assert_true(strncmp(l, "READY", 5) == 0);
    assert_true(relay_ready(&h->r));
    rh_clear(h);
}

/* A fresh connection that shook hands with `hello` (rh_ready), leased. */
static rh_t *rh_leased(const relay_config_t *cfg, const char *hello)
{
    rh_t *h = rh_new(cfg, NULL);
    rh_ready(h, hello);
    relay_lease(&h->r);
    return h;
}

/* A leased connection (rh_leased) that sent rh_group(nrcpt, data) and
 * was answered `replies` (NULL: not yet). */
static rh_t *rh_sent(const relay_config_t *cfg, const char *hello, uint32_t nrcpt, bool data, const char *replies)
{
    rh_t *h = rh_leased(cfg, hello);
    assert_true(rh_group(h, nrcpt, data));
    if (replies)
        rh_feeds(h, replies);
    return h;
}

/* A fresh connection, connected, fed the greeting and then `reply` in two
 * calls (each NULL: not fed). */
static rh_t *rh_greeted(const relay_config_t *cfg, const char *greeting, const char *reply)
{
    rh_t *h = rh_new(cfg, NULL);
    relay_connected(&h->r);
    if (greeting)
        rh_feeds(h, greeting);
    if (reply)
        rh_feeds(h, reply);
    return h;
}

static bool log_is(const rh_t *h, const char *want, const char *what)
{
    if (strcmp(rh_log(h), want) == 0)
        return true;
    tu_note("%s: log differs\n--- want ---\n%s--- got ---\n%s------------\n", what, want, rh_log(h));
    return false;
}

#define LOG_IS(h, want) assert_true(log_is((h), (want), __func__))

/*
 * The routing invariants: the REPLY events carry exactly the tokens in
 * `issued`, each once and in that order; at most one LOST, after every
 * REPLY; CLOSE, if any, last.
 */
static bool routed_once_in_order(const rh_t *h, const uint32_t *issued, size_t n, const char *what)
{
    size_t next = 0;
    bool lost = false, closed = false, ok = true;
    for (size_t i = 0; i < h->nrec && ok; i++) {
        const rec_t *e = &h->rec[i];
        if (closed)
            ok = false;
        else if (e->type == RELAY_EV_REPLY)
            ok = !lost && next < n && e->token == issued[next++];
        else if (e->type == RELAY_EV_LOST)
            ok = !lost, lost = true;
        else if (e->type == 0)
            closed = true;
    }
    if (ok && next != n)
        ok = false;
    if (!ok)
        tu_note("%s: routing broken (%zu of %zu replies)\n%s", what, next, n, rh_log(h));
    return ok;
}

static int count_type(const rh_t *h, int type)
{
    int c = 0;
    for (size_t i = 0; i < h->nrec; i++)
        c += h->rec[i].type == type;
    return c;
}

/* ------------------------------------------------------------------ */
/* 1. The handshake                                                    */
/* ------------------------------------------------------------------ */

static void test_fail_names(void **state)
{
    (void)state;
    for (int i = 0; i < RELAY_FAIL_COUNT; i++) {
        const char *a = relay_fail_name((enum relay_fail)i);
        assert_non_null(a);
        assert_string_not_equal(a, "?");
        for (int j = 0; j < i; j++)
            assert_string_not_equal(a, relay_fail_name((enum relay_fail)j));
    }
    assert_string_equal(relay_fail_name(RELAY_FAIL_COUNT), "?");
    assert_string_equal(relay_fail_name((enum relay_fail)200), "?");
}

static void test_handshake_ehlo_caps(void **state)
{
    (void)state;
    rh_t *h = rh_new(&CFG_SMTP, NULL);
    assert_false(relay_ready(&h->r));
    relay_connected(&h->r);
    assert_int_equal(relay_due(&h->r), 1); /* the greeting */
    ASSERT_PENDING(h, "");                 /* the server speaks first */
    rh_feeds(h, GREET);
    LOG_IS(h, "");
    assert_string_equal(rh_out(h), "EHLO gw.test\r\n");
    assert_false(relay_ready(&h->r));
    rh_feeds(h, "250-ds.test greets gw.test\r\n250-PIPELINING\r\n250-SIZE 12345\r\n250-SMTPUTF8\r\n"
                "250-DSN\r\n250 8BITMIME\r\n");
    LOG_IS(h, "READY caps=PIPELINING,SIZE,8BITMIME,SMTPUTF8 size=12345\n");
    assert_true(relay_ready(&h->r));
    assert_int_equal(relay_due(&h->r), 0);
    assert_int_equal(h->r.size_max, 12345);
    assert_true(h->r.caps & DSR_CAP_DSN);
    assert_string_equal(rh_out(h), "EHLO gw.test\r\n");
    rh_del(h);
}

/* Each keyword on its own, any case; the first line is the server's name. */
static void test_handshake_caps_each(void **state)
{
    (void)state;
    static const struct {
        const char *ehlo;
        const char *want;
    } cases[] = {
        { "250-x\r\n250 PIPELINING\r\n", "READY caps=PIPELINING size=0\n" },
        { "250-x\r\n250 pipelining\r\n", "READY caps=PIPELINING size=0\n" },
        { "250-x\r\n250 SIZE 52428800\r\n", "READY caps=SIZE size=52428800\n" },
        { "250-x\r\n250 SIZE\r\n", "READY caps=SIZE size=0\n" },
        { "250-x\r\n250 8BITMIME\r\n", "READY caps=8BITMIME size=0\n" },
        { "250-x\r\n250 SMTPUTF8\r\n", "READY caps=SMTPUTF8 size=0\n" },
        { "250 x\r\n", "READY caps=- size=0\n" },
        { "250 PIPELINING\r\n", "READY caps=- size=0\n" }, /* a server named PIPELINING */
        { "250\r\n", "READY caps=- size=0\n" },
        { "250-x\r\n250-PIPELININGX\r\n250 XSIZE 5\r\n", "READY caps=- size=0\n" },
        { "250-x\n250-PIPELINING\n250 SIZE 7\n", "READY caps=PIPELINING,SIZE size=7\n" }, /* bare LF */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rh_t *h = rh_greeted(&CFG_SMTP, GREET, cases[i].ehlo);
        if (!log_is(h, cases[i].want, cases[i].ehlo))
            fail_msg("case %zu", i);
        rh_del(h);
    }
}

static void test_handshake_lmtp_lhlo(void **state)
{
    (void)state;
    rh_t *h = rh_greeted(&CFG_LMTP, LMTP_HELLO, NULL);
    LOG_IS(h, "READY caps=PIPELINING size=0\n");
    assert_string_equal(rh_out(h), "LHLO gw.test\r\n");
    assert_true(relay_ready(&h->r));
    rh_del(h);
}

static void test_greeting_not_220_fails(void **state)
{
    (void)state;
    static const char *const greetings[] = {
        "554 5.7.1 No service here\r\n", "421 4.3.2 Too busy\r\n", "250 not a greeting\r\n",
        "554-5.7.1 go\r\n554 5.7.1 away\r\n", "221 2.0.0 bye\r\n",
    };
    for (size_t i = 0; i < sizeof greetings / sizeof greetings[0]; i++) {
        rh_t *h = rh_greeted(&CFG_SMTP, greetings[i], NULL);
        if (!log_is(h, "CLOSE bad_greeting\n", greetings[i]))
            fail_msg("greeting %zu", i);
        assert_string_equal(rh_out(h), ""); /* no EHLO to a server that refused us */
        assert_int_equal(relay_due(&h->r), 0);
        assert_int_equal(relay_release(&h->r), RELAY_DISCARD);
        rh_del(h);
    }
}

/* A multi-line greeting: EHLO goes out after its last line, once. */
static void test_greeting_multiline(void **state)
{
    (void)state;
    rh_t *h = rh_greeted(&CFG_SMTP, "220-ds.test ESMTP\r\n220-more words\r\n", NULL);
    assert_string_equal(rh_out(h), "");
    rh_feeds(h, "220 ready\r\n");
    assert_string_equal(rh_out(h), "EHLO gw.test\r\n");
    rh_feeds(h, "250-ds.test\r\n250-SIZE 10\r\n250 PIPELINING\r\n");
    LOG_IS(h, "READY caps=PIPELINING,SIZE size=10\n");
    assert_string_equal(rh_out(h), "EHLO gw.test\r\n");
    rh_del(h);
}

/* EHLO refused with 5xx: HELO, and no extensions whatever HELO's reply says. */
static void test_ehlo_5xx_helo_fallback(void **state)
{
    (void)state;
    static const char *const refusals[] = { "502 5.5.2 EHLO not implemented\r\n", "500 what\r\n",
                                            "550-5.7.1 no\r\n550 5.7.1 EHLO\r\n", "554 5.5.1 no\r\n" };
    for (size_t i = 0; i < sizeof refusals / sizeof refusals[0]; i++) {
        rh_t *h = rh_greeted(&CFG_SMTP, GREET, refusals[i]);
        LOG_IS(h, "");
        assert_string_equal(rh_out(h), "EHLO gw.test\r\nHELO gw.test\r\n");
        rh_feeds(h, "250-ds.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n");
        LOG_IS(h, "READY caps=- size=0\n");
        assert_int_equal(h->r.caps, 0);
        assert_true(relay_ready(&h->r));
        /* no PIPELINING: one command at a time */
        relay_lease(&h->r);
        rh_clear(h);
        assert_true(rh_group(h, 1, false));
        ASSERT_PENDING(h, "MAIL FROM:<s@x.test>\r\n");
        rh_del(h);
    }
}

/* The greeting, the reply to EHLO/LHLO and, if any, to HELO: the handshake
 * fails with hello_refused, having sent `out`. */
static void check_hello_refused(const relay_config_t *cfg, const char *greeting, const char *hello,
                                const char *helo, const char *out)
{
    rh_t *h = rh_greeted(cfg, greeting, hello);
    if (helo)
        rh_feeds(h, helo);
    assert_true(log_is(h, "CLOSE hello_refused\n", hello));
    assert_string_equal(rh_out(h), out);
    rh_del(h);
}

static void test_ehlo_4xx_fails(void **state)
{
    (void)state;
    /* no HELO after a 4xx */
    check_hello_refused(&CFG_SMTP, GREET, "421 4.3.2 Shutting down\r\n", NULL, "EHLO gw.test\r\n");
}

static void test_helo_refused_fails(void **state)
{
    (void)state;
    check_hello_refused(&CFG_SMTP, GREET, "502 5.5.2 no EHLO\r\n", "501 5.5.4 no HELO either\r\n",
                        "EHLO gw.test\r\nHELO gw.test\r\n");
}

static void test_lhlo_refused_fails(void **state)
{
    (void)state;
    static const char *const refusals[] = { "500 5.5.1 Unknown command\r\n", "421 4.3.2 busy\r\n",
                                            "550-a\r\n550 b\r\n" };
    for (size_t i = 0; i < sizeof refusals / sizeof refusals[0]; i++) /* LMTP has no HELO */
        check_hello_refused(&CFG_LMTP, "220 lmtp.test LMTP\r\n", refusals[i], NULL, "LHLO gw.test\r\n");
}

/* Replies that answer nothing: before the connect completed, on an idle
 * pooled connection, right behind the EHLO reply. */
static void test_unexpected_reply_fails(void **state)
{
    (void)state;
    rh_t *h = rh_new(&CFG_SMTP, NULL);
    rh_feeds(h, "220 early\r\n"); /* relay_connected not called yet */
    LOG_IS(h, "CLOSE unexpected_reply\n");
    rh_del(h);

    h = rh_new(&CFG_SMTP, NULL);
    rh_ready(h, GREET EHLO_PIPE);
    rh_feeds(h, "421 4.4.2 Idle timeout\r\n");
    LOG_IS(h, "CLOSE unexpected_reply\n"); /* not leased: nobody to tell */
    rh_del(h);

    h = rh_greeted(&CFG_SMTP, GREET EHLO_PIPE "250 one too many\r\n", NULL);
    LOG_IS(h, "READY caps=PIPELINING size=0\nCLOSE unexpected_reply\n");
    rh_del(h);
}

/* Failures during the handshake: no owner, so no REPLY and no LOST. */
static void test_handshake_failures(void **state)
{
    (void)state;
    rh_t *h = rh_new(&CFG_SMTP, NULL);
    rh_fail(h, RELAY_FAIL_CONNECT);
    LOG_IS(h, "CLOSE connect_failed\n");
    relay_connected(&h->r); /* too late: stays dead */
    assert_int_equal(relay_due(&h->r), 0);
    rh_del(h);

    h = rh_greeted(&CFG_SMTP, NULL, NULL);
    rh_fail(h, RELAY_FAIL_TIMEOUT);
    LOG_IS(h, "CLOSE timeout\n");
    rh_del(h);

    h = rh_greeted(&CFG_SMTP, GREET "250-ds.test\r\n", NULL);
    rh_fail(h, RELAY_FAIL_CLOSED);
    LOG_IS(h, "CLOSE closed_by_server\n");
    assert_int_equal(relay_due(&h->r), 0);
    ASSERT_PENDING(h, "");
    rh_del(h);

    h = rh_greeted(&CFG_SMTP, "220 ok\r\n250-ds\r\nxyz\r\n", NULL);
    LOG_IS(h, "CLOSE bad_reply\n");
    rh_del(h);
}

static void test_connected_twice(void **state)
{
    (void)state;
    rh_t *h = rh_greeted(&CFG_SMTP, NULL, NULL);
    relay_connected(&h->r);
    assert_int_equal(relay_due(&h->r), 1);
    rh_feeds(h, GREET EHLO_PIPE);
    LOG_IS(h, "READY caps=PIPELINING size=0\n");
    assert_string_equal(rh_out(h), "EHLO gw.test\r\n");
    rh_del(h);
}

/* ---- STARTTLS (RFC 3207) ---- */

#define EHLO_TLS "250-ds.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 STARTTLS\r\n"

/* Greeting, EHLO offering STARTTLS, STARTTLS, its 220, the handshake (the
 * caller's), EHLO again: READY only then, with the caps of the second
 * reply; STARTTLS is not asked for twice. Whole and byte by byte. */
static void test_starttls_handshake(void **state)
{
    (void)state;
    for (int bytewise = 0; bytewise < 2; bytewise++) {
        rh_t *h = rh_new(&CFG_TLS_MAY, NULL);
        relay_connected(&h->r);
        const char *before = GREET EHLO_TLS "220 2.0.0 Ready to start TLS\r\n";
        if (bytewise)
            for (const char *p = before; *p; p++)
                rh_feed(h, p, 1);
        else
            rh_feeds(h, before);
        LOG_IS(h, "STARTTLS\n");
        assert_string_equal(rh_out(h), "EHLO gw.test\r\nSTARTTLS\r\n");
        assert_int_equal(h->r.state, RELAY_TLS);
        assert_false(relay_ready(&h->r));
        assert_int_equal(relay_due(&h->r), 0);
        assert_false(h->r.tls);
        relay_tls_done(&h->r);
        rh_take(h);
        assert_string_equal(rh_out(h), "EHLO gw.test\r\nSTARTTLS\r\nEHLO gw.test\r\n");
        assert_true(h->r.tls);
        assert_int_equal(h->r.caps, 0); /* forgotten (RFC 3207 4.2) */
        rh_feeds(h, "250-ds.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n");
        LOG_IS(h, "STARTTLS\nREADY caps=PIPELINING size=0\n");
        assert_true(relay_ready(&h->r));
        assert_string_equal(rh_out(h), "EHLO gw.test\r\nSTARTTLS\r\nEHLO gw.test\r\n");
        relay_tls_done(&h->r); /* out of place: nothing happens */
        rh_take(h);
        assert_string_equal(rh_out(h), "EHLO gw.test\r\nSTARTTLS\r\nEHLO gw.test\r\n");
        assert_true(relay_ready(&h->r));
        rh_del(h);
    }
}

/* STARTTLS offered or not, refused or not, for each level. */
static void test_starttls_levels(void **state)
{
    (void)state;
    static const struct {
        const relay_config_t *cfg;
        const char *server;
        const char *log;
        const char *out;
    } cases[] = {
        /* off: never asked for */
        { &CFG_SMTP, GREET EHLO_TLS, "READY caps=PIPELINING,SIZE size=1000\n", "EHLO gw.test\r\n" },
        /* not offered */
        { &CFG_TLS_MAY, GREET EHLO_PIPE, "READY caps=PIPELINING size=0\n", "EHLO gw.test\r\n" },
        { &CFG_TLS_REQ, GREET EHLO_PIPE, "CLOSE tls_not_offered\n", "EHLO gw.test\r\n" },
        /* an old server: HELO has no extensions */
        { &CFG_TLS_MAY, GREET "502 5.5.2 what\r\n250 ds.test\r\n", "READY caps=- size=0\n",
          "EHLO gw.test\r\nHELO gw.test\r\n" },
        { &CFG_TLS_REQ, GREET "502 5.5.2 what\r\n250 ds.test\r\n", "CLOSE tls_not_offered\n",
          "EHLO gw.test\r\nHELO gw.test\r\n" },
        /* refused for now: may goes on in plaintext with what EHLO said */
        { &CFG_TLS_MAY, GREET EHLO_TLS "454 4.7.0 TLS not available\r\n", "READY caps=PIPELINING,SIZE size=1000\n",
          "EHLO gw.test\r\nSTARTTLS\r\n" },
        { &CFG_TLS_REQ, GREET EHLO_TLS "454 4.7.0 TLS not available\r\n", "CLOSE starttls_refused\n",
          "EHLO gw.test\r\nSTARTTLS\r\n" },
        { &CFG_TLS_MAY, GREET EHLO_TLS "502 5.5.1 no\r\n", "READY caps=PIPELINING,SIZE size=1000\n",
          "EHLO gw.test\r\nSTARTTLS\r\n" },
        /* a reply that means nothing for STARTTLS: not a server to trust */
        { &CFG_TLS_MAY, GREET EHLO_TLS "250 2.0.0 sure\r\n", "CLOSE starttls_refused\n",
          "EHLO gw.test\r\nSTARTTLS\r\n" },
        { &CFG_TLS_MAY, GREET EHLO_TLS "354 go\r\n", "CLOSE unexpected_reply\n", "EHLO gw.test\r\nSTARTTLS\r\n" },
        /* replies after the 220, in plaintext: injected, whatever the level */
        { &CFG_TLS_MAY, GREET EHLO_TLS "220 go\r\n250 injected\r\n", "STARTTLS\nCLOSE unexpected_reply\n",
          "EHLO gw.test\r\nSTARTTLS\r\n" },
        { &CFG_TLS_REQ, GREET EHLO_TLS "220 go\r\nx", "STARTTLS\nCLOSE unexpected_reply\n",
          "EHLO gw.test\r\nSTARTTLS\r\n" },
        /* LMTP: the same, after LHLO */
        { &CFG_LMTP_TLS, "220 l\r\n250-l\r\n250 STARTTLS\r\n220 go\r\n", "STARTTLS\n", "LHLO gw.test\r\nSTARTTLS\r\n" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rh_t *h = rh_greeted(cases[i].cfg, cases[i].server, NULL);
        if (!log_is(h, cases[i].log, cases[i].server))
            fail_msg("case %zu", i);
        /* (a failure drops what was not taken yet: only the rest is checked) */
        if (!strstr(cases[i].log, "CLOSE") && strcmp(rh_out(h), cases[i].out))
            fail_msg("case %zu: sent \"%s\"", i, rh_out(h));
        rh_del(h);
    }
}

/* The caller's handshake fails, or the connection breaks while it runs:
 * one CLOSE with the reason, no owner to answer. */
static void test_starttls_handshake_failures(void **state)
{
    (void)state;
    static const enum relay_fail whys[] = { RELAY_FAIL_TLS, RELAY_FAIL_CLOSED, RELAY_FAIL_TIMEOUT };
    for (size_t i = 0; i < sizeof whys / sizeof whys[0]; i++) {
        rh_t *h = rh_greeted(&CFG_TLS_REQ, GREET EHLO_TLS "220 go\r\n", NULL);
        rh_clear(h);
        rh_fail(h, whys[i]);
        char want[64];
        snprintf(want, sizeof want, "CLOSE %s\n", relay_fail_name(whys[i]));
        LOG_IS(h, want);
        rh_del(h);
    }
    /* after the handshake, the second EHLO refused */
    rh_t *h = rh_greeted(&CFG_TLS_REQ, GREET EHLO_TLS "220 go\r\n", NULL);
    relay_tls_done(&h->r);
    rh_feeds(h, "421 4.3.2 going away\r\n");
    LOG_IS(h, "STARTTLS\nCLOSE hello_refused\n");
    rh_del(h);
}

/* ------------------------------------------------------------------ */
/* 2. Replies at every split                                           */
/* ------------------------------------------------------------------ */

/* Owners for the transcripts: they react to events the same way whatever
 * the splits, so the log and the bytes sent must not change. */
static void owner_group(rh_t *h, const relay_event_t *ev, bool eod)
{
    if (ev->type == RELAY_EV_READY) {
        relay_lease(&h->r);
        (void)rh_group(h, 3, true);
    } else if (eod && ev->type == RELAY_EV_REPLY && ev->kind == RK_DATA && ev->reply.code == 354) {
        (void)rh_eod(h, 6);
    }
}

static void owner_tx(rh_t *h, const relay_event_t *ev)
{
    owner_group(h, ev, true);
}

static void owner_no_eod(rh_t *h, const relay_event_t *ev)
{
    owner_group(h, ev, false);
}

/* Leases, sends MAIL and two RCPTs and releases before any reply. */
static void owner_drain(rh_t *h, const relay_event_t *ev)
{
    if (ev->type != RELAY_EV_READY)
        return;
    relay_lease(&h->r);
    (void)rh_group(h, 2, false);
    (void)rh_release(h);
}

/* Two transactions on one lease. */
static void owner_two(rh_t *h, const relay_event_t *ev)
{
    if (ev->type == RELAY_EV_READY) {
        relay_lease(&h->r);
        (void)rh_group(h, 1, true);
    } else if (ev->type == RELAY_EV_REPLY && ev->kind == RK_DATA && ev->reply.code == 354) {
        (void)rh_eod(h, ev->token + 1);
    } else if (ev->type == RELAY_EV_REPLY && ev->kind == RK_EOD && ev->token == 4) {
        (void)rh_mail(h, 11, "t@x.test");
        (void)rh_rcpt(h, 12, "b@y.test");
        (void)rh_data(h, 13);
    }
}

typedef struct sample {
    const char *name;
    const relay_config_t *cfg;
    owner_fn owner;
    const char *in;
    const char *expect; /* the whole-feed log, checked first */
} sample_t;

#define TX_REPLIES                                                                                            \
    "250 2.1.0 Sender ok\r\n250 2.1.5 Ok\r\n550 5.1.1 No such user\r\n250 2.1.5 Ok\r\n"                       \
    "354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as 4XyZ\r\n"

#define TX_EVENTS                                                                                             \
    "REPLY MAIL #1 250 2.1.0 - Sender ok\n"                                                                   \
    "REPLY RCPT #2 250 2.1.5 - Ok\n"                                                                          \
    "REPLY RCPT #3 550 5.1.1 - No such user\n"                                                                \
    "REPLY RCPT #4 250 2.1.5 - Ok\n"                                                                          \
    "REPLY DATA #5 354 - - End data with <CR><LF>.<CR><LF>\n"                                                 \
    "REPLY EOD #6 250 2.0.0 - Ok: queued as 4XyZ\n"

/* owner_tx's group as sent, escaped; then with the end marker */
#define GROUP_OUT                                                                                             \
    "MAIL FROM:<s@x.test>\\r\\nRCPT TO:<a@y.test>\\r\\nRCPT TO:<b@y.test>\\r\\nRCPT TO:<c@y.test>\\r\\n"       \
    "DATA\\r\\n"
#define TX_OUT GROUP_OUT ".\\r\\n"

#define L451(kind, tok) "REPLY " kind " #" tok " 451 4.4.1 peer " LOST_TEXT "\n"

static const sample_t samples[] = {
    { "pipelined", &CFG_SMTP, owner_tx, GREET EHLO_FULL TX_REPLIES,
      "READY caps=PIPELINING,SIZE,8BITMIME,SMTPUTF8 size=1000\n" TX_EVENTS "EOF\n"
      "OUT EHLO gw.test\\r\\n" TX_OUT },
    { "no_pipelining", &CFG_SMTP, owner_tx, GREET EHLO_NOPIPE TX_REPLIES,
      "READY caps=8BITMIME size=0\n" TX_EVENTS "EOF\nOUT EHLO gw.test\\r\\n" TX_OUT },
    { "helo_fallback", &CFG_SMTP, owner_tx, GREET "502 5.5.2 Error: command not recognized\r\n250 ds.test\r\n" TX_REPLIES,
      "READY caps=- size=0\n" TX_EVENTS "EOF\nOUT EHLO gw.test\\r\\nHELO gw.test\\r\\n" TX_OUT },
    { "multiline", &CFG_SMTP, owner_tx,
      "220-ds.test ESMTP\r\n220 welcome\r\n"
      "250-ds.test hello\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250 ENHANCEDSTATUSCODES\r\n"
      "250-2.1.0 first\r\n250 2.1.0 Sender ok\r\n"
      "550-5.1.1 The mailbox\r\n550-5.1.1 does not\r\n550 5.1.1 exist\r\n"
      "450-4.2.1 try\r\n450 4.2.1 later\r\n"
      "250 2.1.5 Ok\r\n"
      "354-go\r\n354 ahead\r\n"
      "250-2.0.0 queued\r\n250 2.0.0 as 1\r\n",
      "READY caps=PIPELINING,SIZE size=1000000\n"
      "REPLY MAIL #1 250 2.1.0 - Sender ok\n"
      "REPLY RCPT #2 550 5.1.1 - exist\n"
      "REPLY RCPT #3 450 4.2.1 peer later\n"
      "REPLY RCPT #4 250 2.1.5 - Ok\n"
      "REPLY DATA #5 354 - - ahead\n"
      "REPLY EOD #6 250 2.0.0 - as 1\n"
      "EOF\nOUT EHLO gw.test\\r\\n" TX_OUT },
    { "bare_lf", &CFG_SMTP, owner_tx,
      "220 ds.test\n250-ds.test\n250 PIPELINING\n250 2.1.0 Sender ok\n250 2.1.5 Ok\n550 5.1.1 No such user\n"
      "250 2.1.5 Ok\n354 End data with <CR><LF>.<CR><LF>\n250 2.0.0 Ok: queued as 4XyZ\n",
      "READY caps=PIPELINING size=0\n" TX_EVENTS "EOF\nOUT EHLO gw.test\\r\\n" TX_OUT },
    { "garbage_mid_group", &CFG_SMTP, owner_tx,
      GREET EHLO_PIPE "250 2.1.0 Sender ok\r\n250 2.1.5 Ok\r\nxyz\r\n250 2.1.5 Ok\r\n",
      "READY caps=PIPELINING size=0\n"
      "REPLY MAIL #1 250 2.1.0 - Sender ok\n"
      "REPLY RCPT #2 250 2.1.5 - Ok\n" L451("RCPT", "3") L451("RCPT", "4") L451("DATA", "5")
      "LOST\nCLOSE bad_reply\n"
      "OUT EHLO gw.test\\r\\n" GROUP_OUT },
    { "bad_class_mid_reply", &CFG_SMTP, owner_tx,
      GREET EHLO_PIPE "250-2.1.0 Sender\r\n650 ok\r\n250 2.1.5 Ok\r\n",
      "READY caps=PIPELINING size=0\n" L451("MAIL", "1") L451("RCPT", "2") L451("RCPT", "3") L451("RCPT", "4")
      L451("DATA", "5") "LOST\nCLOSE bad_reply\n"
      "OUT EHLO gw.test\\r\\n" GROUP_OUT },
    { "reply_in_body", &CFG_SMTP, owner_no_eod,
      GREET EHLO_PIPE "250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go\r\n250 surprise\r\n",
      "READY caps=PIPELINING size=0\n"
      "REPLY MAIL #1 250 2.1.0 - ok\nREPLY RCPT #2 250 2.1.5 - ok\nREPLY RCPT #3 250 2.1.5 - ok\n"
      "REPLY RCPT #4 250 2.1.5 - ok\nREPLY DATA #5 354 - - go\nLOST\nCLOSE unexpected_reply\n"
      "OUT EHLO gw.test\\r\\n" GROUP_OUT },
    { "extra_after_eod", &CFG_SMTP, owner_tx, GREET EHLO_PIPE TX_REPLIES "250 2.0.0 one more\r\n",
      "READY caps=PIPELINING size=0\n" TX_EVENTS "LOST\nCLOSE unexpected_reply\nOUT EHLO gw.test\\r\\n" TX_OUT },
    { "server_421", &CFG_SMTP, owner_tx,
      GREET EHLO_PIPE "250 2.1.0 ok\r\n421 4.4.2 ds.test closing connection\r\n",
      "READY caps=PIPELINING size=0\nREPLY MAIL #1 250 2.1.0 - ok\n"
      "REPLY RCPT #2 421 4.4.2 peer ds.test closing connection\nEOF\n"
      "OUT EHLO gw.test\\r\\n" GROUP_OUT },
    { "greeting_refused", &CFG_SMTP, owner_tx, "554 5.7.1 No SMTP service here\r\n250 ignored\r\n",
      "CLOSE bad_greeting\nOUT " },
    { "lmtp", &CFG_LMTP, owner_tx,
      LMTP_HELLO "250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 unknown\r\n250 2.1.5 ok\r\n354 go\r\n"
      "250 2.1.5 <a@y.test> delivered\r\n452 4.2.2 <c@y.test> mailbox full\r\n",
      "READY caps=PIPELINING size=0\n"
      "REPLY MAIL #1 250 2.1.0 - ok\nREPLY RCPT #2 250 2.1.5 - ok\nREPLY RCPT #3 550 5.1.1 - unknown\n"
      "REPLY RCPT #4 250 2.1.5 - ok\nREPLY DATA #5 354 - - go\n"
      "REPLY EOD #6 452 4.2.2 peer <c@y.test> mailbox full\nEOF\n"
      "OUT LHLO gw.test\\r\\n" TX_OUT },
    { "drain", &CFG_SMTP, owner_drain,
      GREET EHLO_PIPE "250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no\r\n250 2.0.0 reset\r\n",
      "READY caps=PIPELINING size=0\nRELEASE DRAINING\nIDLE\nEOF\n"
      "OUT EHLO gw.test\\r\\nMAIL FROM:<s@x.test>\\r\\nRCPT TO:<a@y.test>\\r\\nRCPT TO:<b@y.test>\\r\\n"
      "RSET\\r\\n" },
    { "two_transactions", &CFG_SMTP, owner_two,
      GREET EHLO_PIPE "250 m\r\n250 r\r\n354 d\r\n250 e\r\n250 m2\r\n550 r2\r\n554 d2\r\n",
      "READY caps=PIPELINING size=0\n"
      "REPLY MAIL #1 250 - - m\nREPLY RCPT #2 250 - - r\nREPLY DATA #3 354 - - d\nREPLY EOD #4 250 - - e\n"
      "REPLY MAIL #11 250 - - m2\nREPLY RCPT #12 550 - - r2\nREPLY DATA #13 554 - - d2\nEOF\n"
      "OUT EHLO gw.test\\r\\nMAIL FROM:<s@x.test>\\r\\nRCPT TO:<a@y.test>\\r\\nDATA\\r\\n.\\r\\n"
      "MAIL FROM:<t@x.test>\\r\\nRCPT TO:<b@y.test>\\r\\nDATA\\r\\n" },
    { "short", &CFG_SMTP, owner_tx,
      "220 a\r\n250-a\r\n250 PIPELINING\r\n250 m\r\n250 r\r\n550 n\r\n250 r\r\n354 d\r\n250 e\r\n",
      "READY caps=PIPELINING size=0\n"
      "REPLY MAIL #1 250 - - m\nREPLY RCPT #2 250 - - r\nREPLY RCPT #3 550 - - n\nREPLY RCPT #4 250 - - r\n"
      "REPLY DATA #5 354 - - d\nREPLY EOD #6 250 - - e\nEOF\nOUT EHLO gw.test\\r\\n" TX_OUT },
    { "short_garbage", &CFG_SMTP, owner_tx, "220 a\r\n250-a\r\n250 PIPELINING\r\n250 m\r\n25x\r\n",
      "READY caps=PIPELINING size=0\nREPLY MAIL #1 250 - - m\n" L451("RCPT", "2") L451("RCPT", "3")
      L451("RCPT", "4") L451("DATA", "5") "LOST\nCLOSE bad_reply\n"
      "OUT EHLO gw.test\\r\\n" GROUP_OUT },
};

/* One run: the transcript cut at the sorted split points, each piece in a
 * guard buffer unmapped right after its call. Returns log + "OUT " + bytes. */
static char *run_split(const sample_t *sm, const size_t *splits, size_t nsplits)
{
    size_t len = strlen(sm->in);
    rh_t *h = rh_new(sm->cfg, sm->owner);
    relay_connected(&h->r);
    size_t prev = 0;
    for (size_t i = 0; i <= nsplits && !h->closed; i++) {
        size_t end = i < nsplits ? splits[i] : len;
        assert_true(end >= prev && end <= len);
        guard_buf_t g;
        guard_copy(&g, sm->in + prev, end - prev);
        rh_feed(h, g.data, end - prev);
        guard_free(&g);
        prev = end;
    }
    if (!h->closed)
        tu_puts(&h->log, "EOF\n");
    tu_puts(&h->log, "OUT ");
    tu_put_escaped(&h->log, slice_make(rh_out(h), h->out.len));
    char *s = strdup(rh_log(h));
    assert_non_null(s);
    rh_del(h);
    return s;
}

/* The run at these splits gives the sample's whole-feed log. */
static void check_split(const sample_t *sm, const size_t *splits, size_t nsplits, const char *how)
{
    char *got = run_split(sm, splits, nsplits);
    bool same = strcmp(sm->expect, got) == 0;
    if (!same)
        tu_note("sample %s (%s) differs\n--- want ---\n%s\n--- got ---\n%s\n------------\n", sm->name, how,
                sm->expect, got);
    free(got);
    assert_true(same);
}

static void test_samples_whole(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++)
        check_split(&samples[i], NULL, 0, "whole");
}

static void test_samples_byte_by_byte(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++) {
        const sample_t *sm = &samples[i];
        size_t len = strlen(sm->in);
        size_t *splits = malloc(len * sizeof *splits + 1);
        assert_non_null(splits);
        for (size_t k = 1; k < len; k++)
            splits[k - 1] = k;
        check_split(sm, splits, len ? len - 1 : 0, "byte by byte");
        free(splits);
    }
}

static void test_samples_every_split(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++) {
        const sample_t *sm = &samples[i];
        size_t len = strlen(sm->in);
        for (size_t a = 1; a < len; a++) {
            char how[40];
            snprintf(how, sizeof how, "split at %zu", a);
            check_split(sm, &a, 1, how);
        }
    }
}

static void test_samples_every_pair(void **state)
{
    (void)state;
    int runs = 0;
    for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++) {
        const sample_t *sm = &samples[i];
        size_t len = strlen(sm->in);
        if (len > PAIR_MAX_LEN)
            continue;
        for (size_t a = 1; a < len; a++) {
            for (size_t b = a + 1; b < len; b++) {
                size_t sp[2] = { a, b };
                char how[48];
                snprintf(how, sizeof how, "split at %zu and %zu", a, b);
                check_split(sm, sp, 2, how);
                runs++;
            }
        }
    }
    assert_true(runs > 1000); /* at least the short samples were split */
}

/* ------------------------------------------------------------------ */
/* 3. Commands out                                                     */
/* ------------------------------------------------------------------ */

static void test_pipelined_group_goes_out_together(void **state)
{
    (void)state;
    rh_t *h = rh_leased(&CFG_SMTP, GREET EHLO_FULL);
    assert_false(relay_ready(&h->r)); /* leased */
    assert_true(rh_group(h, 3, true));
    ASSERT_PENDING(h, "MAIL FROM:<s@x.test>\r\nRCPT TO:<a@y.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\n"
                      "DATA\r\n");
    assert_int_equal(relay_due(&h->r), 5);
    LOG_IS(h, "");
    rh_del(h);
}

/* A partial send keeps the rest, in order. */
static void test_partial_send(void **state)
{
    (void)state;
    rh_t *h = rh_sent(&CFG_SMTP, GREET EHLO_PIPE, 1, false, NULL);
    relay_sent(&h->r, 5);
    ASSERT_PENDING(h, "FROM:<s@x.test>\r\nRCPT TO:<a@y.test>\r\n");
    assert_true(rh_rcpt(h, 3, "b@y.test"));
    ASSERT_PENDING(h, "FROM:<s@x.test>\r\nRCPT TO:<a@y.test>\r\nRCPT TO:<b@y.test>\r\n");
    relay_sent(&h->r, 0);
    relay_sent(&h->r, 17);
    ASSERT_PENDING(h, "RCPT TO:<a@y.test>\r\nRCPT TO:<b@y.test>\r\n");
    relay_sent(&h->r, 1000);
    ASSERT_PENDING(h, "");
    rh_del(h);
}

/* Runs one MAIL/RCPT x3/DATA/EOD transaction against a server; returns
 * the log (REPLY events) for comparing pipelined and one-at-a-time runs. */
static char *one_tx(const char *hello, bool check_lockstep)
{
    rh_t *h = rh_sent(&CFG_SMTP, hello, 3, true, NULL);
    assert_int_equal(relay_due(&h->r), 5);
    static const char *const replies[] = { "250 2.1.0 Sender ok\r\n", "250 2.1.5 Ok\r\n", "550 5.1.1 No such user\r\n",
                                           "250 2.1.5 Ok\r\n", "354 Go ahead\r\n" };
    static const char *const next[] = { "RCPT TO:<a@y.test>\r\n", "RCPT TO:<b@y.test>\r\n", "RCPT TO:<c@y.test>\r\n",
                                        "DATA\r\n", "" };
    if (check_lockstep)
        ASSERT_PENDING(h, "MAIL FROM:<s@x.test>\r\n");
    for (size_t i = 0; i < 5; i++) {
        if (check_lockstep) {
            rh_take(h);
            /* nothing more goes out until the reply */
            ASSERT_PENDING(h, "");
            size_t before = h->out.len;
            /* the reply's first half releases nothing */
            rh_feed(h, replies[i], 4);
            assert_int_equal(h->out.len, before);
            rh_feeds(h, replies[i] + 4);
            /* rh_feed "sent" what the reply released */
            assert_string_equal(rh_out(h) + before, next[i]);
        } else {
            rh_feeds(h, replies[i]);
        }
    }
    assert_true(relay_in_body(&h->r));
    assert_true(rh_eod(h, 6));
    ASSERT_PENDING(h, ".\r\n"); /* the end marker goes at once, even without PIPELINING */
    rh_feeds(h, "250 2.0.0 Queued\r\n");
    assert_true(relay_ready(&h->r) == false); /* still leased */
    assert_int_equal(h->r.state, RELAY_READY);
    assert_string_equal(rh_out(h), "MAIL FROM:<s@x.test>\r\nRCPT TO:<a@y.test>\r\nRCPT TO:<b@y.test>\r\n"
                                   "RCPT TO:<c@y.test>\r\nDATA\r\n.\r\n");
    char *s = strdup(rh_log(h));
    assert_non_null(s);
    rh_del(h);
    return s;
}

static void test_no_pipelining_one_at_a_time(void **state)
{
    (void)state;
    char *lock = one_tx(GREET EHLO_NOPIPE, true);
    char *pipe = one_tx(GREET EHLO_PIPE, false);
    assert_string_equal(lock, pipe); /* the same reply for every token */
    assert_string_equal(lock, "REPLY MAIL #1 250 2.1.0 - Sender ok\n"
                              "REPLY RCPT #2 250 2.1.5 - Ok\n"
                              "REPLY RCPT #3 550 5.1.1 - No such user\n"
                              "REPLY RCPT #4 250 2.1.5 - Ok\n"
                              "REPLY DATA #5 354 - - Go ahead\n"
                              "REPLY EOD #6 250 2.0.0 - Queued\n");
    free(lock);
    free(pipe);
}

/* Paths go out exactly as the client wrote them: quoted local parts with
 * '>', '"', '\\', spaces and '@' inside, address literals, the null sender. */
static void test_paths_byte_for_byte(void **state)
{
    (void)state;
    static const char *const paths[] = {
        "\"a>b\"@x.test",       /* "a>b"@x.test */
        "\"a\\\"b\"@x.test",    /* "a\"b"@x.test */
        "\"a\\\\b\"@x.test",    /* "a\\b"@x.test */
        "\"a b\"@x.test",       /* "a b"@x.test */
        "\"a@b\"@x.test",       /* "a@b"@x.test */
        "\"<a>\"@x.test",       /* "<a>"@x.test */
        "\"\\>\\\\ \\\"@\"@x.test",
        "user@[192.0.2.1]",
        "user@[IPv6:2001:db8::1]",
        "first.last+tag@sub.x.test",
        "%!#$&'*/=?^_`{|}~@x.test",
        ("\xc3\xbc" "ser@x.test"),
    };
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        rh_t *h = rh_leased(&CFG_SMTP, GREET EHLO_FULL);
        smtp_mail_params_t p = { .smtputf8 = (unsigned char)paths[i][0] >= 0x80 };
        assert_true(rh_mail_p(h, 1, paths[i], &p));
        assert_true(rh_rcpt(h, 2, paths[i]));
        char want[600];
        snprintf(want, sizeof want, "MAIL FROM:<%s>%s\r\nRCPT TO:<%s>\r\n", paths[i], p.smtputf8 ? " SMTPUTF8" : "",
                 paths[i]);
        ASSERT_PENDING(h, want);
        rh_del(h);
    }
    /* the null sender as an empty (not NULL) slice; postmaster */
    rh_t *h = rh_leased(&CFG_SMTP, GREET EHLO_PIPE);
    assert_true(rh_mail(h, 1, ""));
    assert_true(rh_rcpt(h, 2, "postmaster"));
    ASSERT_PENDING(h, "MAIL FROM:<>\r\nRCPT TO:<postmaster>\r\n");
    rh_del(h);
}

/* ADDR_PATH_MAX octets go; one more is refused and nothing is sent. */
static void test_path_too_long(void **state)
{
    (void)state;
    char path[ADDR_PATH_MAX + 2];
    memset(path, 'a', sizeof path);
    memcpy(path + ADDR_PATH_MAX - 7, "@x.test", 7);
    path[ADDR_PATH_MAX] = 0;
    rh_t *h = rh_leased(&CFG_SMTP, GREET EHLO_PIPE);
    assert_true(rh_mail(h, 1, path));
    assert_true(rh_rcpt(h, 2, path));
    assert_int_equal(relay_output(&h->r).len, 11 + ADDR_PATH_MAX + 3 + 9 + ADDR_PATH_MAX + 3);
    rh_take(h);
    memset(path, 'b', sizeof path);
    path[ADDR_PATH_MAX + 1] = 0;
    assert_false(rh_rcpt(h, 3, path));
    LOG_IS(h, "REFUSED #3 501 5.1.3 - Error: recipient address too long\n");
    ASSERT_PENDING(h, "");
    assert_int_equal(relay_due(&h->r), 2);
    rh_del(h);

    h = rh_leased(&CFG_SMTP, GREET EHLO_PIPE);
    assert_false(rh_mail(h, 1, path));
    LOG_IS(h, "REFUSED #1 501 5.1.7 - Error: sender address too long\n");
    ASSERT_PENDING(h, "");
    assert_int_equal(relay_due(&h->r), 0);
    assert_true(rh_mail(h, 2, "s@x.test")); /* still usable */
    rh_del(h);
}

/* ESMTP parameters only where the server offered them. */
static void test_mail_params(void **state)
{
    (void)state;
    static const struct {
        const char *ehlo;
        smtp_mail_params_t p;
        const char *want;
    } cases[] = {
        { EHLO_FULL, { 500, BODY_8BITMIME, true, true }, "MAIL FROM:<s@x.test> BODY=8BITMIME SMTPUTF8 SIZE=500\r\n" },
        { EHLO_FULL, { 0, BODY_8BITMIME, false, false }, "MAIL FROM:<s@x.test> BODY=8BITMIME\r\n" },
        { EHLO_FULL, { 0, BODY_7BIT, false, false }, "MAIL FROM:<s@x.test>\r\n" },
        { EHLO_FULL, { 0, BODY_UNSPEC, true, false }, "MAIL FROM:<s@x.test> SIZE=0\r\n" },
        { EHLO_FULL, { 1000, BODY_UNSPEC, true, false }, "MAIL FROM:<s@x.test> SIZE=1000\r\n" },
        { EHLO_FULL, { 0, BODY_UNSPEC, false, true }, "MAIL FROM:<s@x.test> SMTPUTF8\r\n" },
        { EHLO_PIPE, { 500, BODY_8BITMIME, true, false }, "MAIL FROM:<s@x.test>\r\n" },
        { EHLO_PIPE, { UINT64_MAX, BODY_UNSPEC, true, false }, "MAIL FROM:<s@x.test>\r\n" },
        { "250-x\r\n250-PIPELINING\r\n250 SIZE\r\n", { 99999999, BODY_UNSPEC, true, false },
          "MAIL FROM:<s@x.test> SIZE=99999999\r\n" },
        { "250-x\r\n250-SMTPUTF8\r\n250 8BITMIME\r\n", { 7, BODY_8BITMIME, true, true },
          "MAIL FROM:<s@x.test> BODY=8BITMIME SMTPUTF8\r\n" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rh_t *h = rh_greeted(&CFG_SMTP, GREET, cases[i].ehlo);
        rh_clear(h);
        relay_lease(&h->r);
        if (!rh_mail_p(h, 1, "s@x.test", &cases[i].p))
            fail_msg("case %zu refused: %s", i, rh_log(h));
        ASSERT_PENDING(h, cases[i].want);
        rh_del(h);
    }
}

static void test_smtputf8_to_server_without(void **state)
{
    (void)state;
    rh_t *h = rh_leased(&CFG_SMTP, GREET EHLO_PIPE);
    smtp_mail_params_t p = { .smtputf8 = true };
    assert_false(rh_mail_p(h, 1, "\xc3\xbc@x.test", &p));
    LOG_IS(h, "REFUSED #1 553 5.6.7 - Error: the downstream server does not support SMTPUTF8\n");
    ASSERT_PENDING(h, "");
    assert_int_equal(relay_due(&h->r), 0);
    /* the connection is as it was: the next transaction goes */
    assert_true(rh_mail(h, 2, "s@x.test"));
    ASSERT_PENDING(h, "MAIL FROM:<s@x.test>\r\n");
    rh_del(h);
}

static void test_size_over_server_limit(void **state)
{
    (void)state;
    rh_t *h = rh_leased(&CFG_SMTP, GREET EHLO_FULL); /* SIZE 1000 */
    smtp_mail_params_t p = { .size = 1001, .has_size = true };
    assert_false(rh_mail_p(h, 1, "s@x.test", &p));
    LOG_IS(h, "REFUSED #1 552 5.3.4 - Error: message size exceeds the downstream server's limit\n");
    ASSERT_PENDING(h, "");
    assert_int_equal(relay_due(&h->r), 0);
    p.size = 1000;
    assert_true(rh_mail_p(h, 2, "s@x.test", &p));
    ASSERT_PENDING(h, "MAIL FROM:<s@x.test> SIZE=1000\r\n");
    rh_del(h);
}

/* Commands in a state that cannot take them: refused, nothing sent or due. */
static void test_commands_in_wrong_state(void **state)
{
    (void)state;
    rh_t *h = rh_greeted(&CFG_SMTP, NULL, NULL);
    assert_false(rh_mail(h, 1, "s@x.test")); /* handshake running, not leased */
    rh_feeds(h, GREET EHLO_PIPE);
    assert_false(rh_mail(h, 2, "s@x.test")); /* ready, not leased */
    relay_lease(&h->r);
    assert_false(rh_rcpt(h, 3, "a@y.test")); /* no MAIL */
    assert_false(rh_data(h, 4));
    assert_false(rh_eod(h, 5));
    assert_true(rh_mail(h, 6, "s@x.test"));
    assert_false(rh_mail(h, 7, "s@x.test")); /* nested */
    assert_false(rh_eod(h, 8));              /* no 354 yet */
    LOG_IS(h, "REFUSED #1 451 4.4.1 peer " LOST_TEXT "\n"
              "READY caps=PIPELINING size=0\n"
              "REFUSED #2 451 4.4.1 peer " LOST_TEXT "\n"
              "REFUSED #3 451 4.3.0 peer Error: internal error, try again later\n"
              "REFUSED #4 451 4.3.0 peer Error: internal error, try again later\n"
              "REFUSED #5 451 4.3.0 peer Error: internal error, try again later\n"
              "REFUSED #7 451 4.3.0 peer Error: internal error, try again later\n"
              "REFUSED #8 451 4.3.0 peer Error: internal error, try again later\n");
    ASSERT_PENDING(h, "MAIL FROM:<s@x.test>\r\n");
    assert_int_equal(relay_due(&h->r), 1);
    rh_del(h);
}

/* ------------------------------------------------------------------ */
/* 4. Failure at every step                                            */
/* ------------------------------------------------------------------ */

/* Where a MAIL/RCPT/RCPT/DATA group, its body and end marker stand. */
enum step {
    AT_START,    /* the group sent, no reply yet */
    AT_MAIL,     /* MAIL answered */
    AT_RCPT1,    /* the first RCPT answered */
    AT_RCPT2,    /* the second RCPT answered */
    AT_DATA,     /* DATA got 354: in the body, none of it sent */
    AT_BODY,     /* in the body, some of it sent */
    AT_EOD_SENT, /* the end marker sent, no reply yet */
    AT_DONE,     /* the end-of-data reply in: transaction over, still leased */
    AT_COUNT
};

static const char *const step_names[AT_COUNT] = { "start", "after MAIL", "after RCPT 1", "after RCPT 2",
                                                  "after 354", "mid-body", "after end marker", "after EOD reply" };

/* Tokens: MAIL 1, RCPT 2, RCPT 3, DATA 4, EOD 5. */
static const char *const tx_reply[5] = { "250 2.1.0 Sender ok\r\n", "250 2.1.5 Recipient ok\r\n",
                                         "250 2.1.5 Recipient ok\r\n", "354 Go ahead\r\n", "250 2.0.0 Queued as 1\r\n" };
static const char *const tx_kind[5] = { "MAIL", "RCPT", "RCPT", "DATA", "EOD" };

static int answered_at(enum step s)
{
    static const int n[AT_COUNT] = { 0, 1, 2, 3, 4, 4, 4, 5 };
    return n[s];
}

static int issued_at(enum step s)
{
    return s >= AT_EOD_SENT ? 5 : 4;
}

/* "REPLY KIND #tok code esc flags text" from a server reply line. */
static void put_expected(tu_log_t *l, int i, const char *server)
{
    int code = atoi(server);
    const char *t = server + 4;
    size_t tl = strcspn(t, "\r\n");
    char esc[16] = "-";
    size_t el = strcspn(t, " \r\n");
    if (el >= 5 && el < sizeof esc && t[0] == server[0] && reply_esc_valid(t, el)) {
        memcpy(esc, t, el);
        esc[el] = 0;
        t += el + (t[el] == ' ');
        tl = strcspn(t, "\r\n");
    }
    char b[200];
    snprintf(b, sizeof b, "REPLY %s #%d %d %s %s %.*s\n", tx_kind[i], i + 1, code, esc,
             code >= 400 && code < 500 ? "peer" : "-", (int)tl, t);
    tu_puts(l, b);
}

/* What follows a failure: 451 4.4.1 for the commands from..n-1 still owed
 * a reply, LOST, and CLOSE with the reason. */
static void put_lost_close(tu_log_t *l, int from, int n, const char *reason)
{
    char b[200];
    for (int i = from; i < n; i++) {
        snprintf(b, sizeof b, "REPLY %s #%d 451 4.4.1 peer " LOST_TEXT "\n", tx_kind[i], i + 1);
        tu_puts(l, b);
    }
    snprintf(b, sizeof b, "LOST\nCLOSE %s\n", reason);
    tu_puts(l, b);
}

/* The log is `want` (freed here), and the REPLY events carry tokens 1..n,
 * each once, in order. */
static void check_tx_log(const rh_t *h, tu_log_t *want, int n, const char *what)
{
    static const uint32_t tokens[] = { 1, 2, 3, 4, 5 };
    assert_true(n <= 5);
    bool same = log_is(h, want->buf ? want->buf : "", what);
    tu_free_log(want);
    assert_true(same);
    assert_true(routed_once_in_order(h, tokens, (size_t)n, what));
}

/* The replies of tx_reply with `reply` for command `at` (0 MAIL, 1 and 2
 * RCPT, 3 DATA, 4 end of data); after a refused MAIL the RCPTs and DATA
 * get "503 need MAIL". */
static void refusal_script(const char *script[5], int at, const char *reply)
{
    for (int i = 0; i < 5; i++)
        script[i] = tx_reply[i];
    script[at] = reply;
    if (at == 0)
        script[1] = script[2] = script[3] = "503 5.5.1 Error: need MAIL command\r\n";
}

/* Bring a fresh, leased, pipelining connection to step s. */
static rh_t *tx_to(const char *hello, enum step s)
{
    rh_t *h = rh_sent(&CFG_SMTP, hello, 2, true, NULL);
    rh_take(h);
    int a = answered_at(s) < 4 ? answered_at(s) : 4;
    for (int i = 0; i < a; i++)
        rh_feeds(h, tx_reply[i]);
    if (s >= AT_DATA && s < AT_EOD_SENT)
        assert_true(relay_in_body(&h->r));
    if (s >= AT_EOD_SENT)
        assert_true(rh_eod(h, 5));
    if (s == AT_DONE)
        rh_feeds(h, tx_reply[4]);
    assert_false(h->closed);
    return h;
}

/* Ways a connection fails. */
typedef struct inject {
    const char *name;
    enum relay_fail fail; /* relay_fail() after the bytes, if any */
    const char *bytes;    /* server bytes fed first */
    size_t len;
    const char *reason; /* relay_fail_name of the outcome */
    bool idle_only;     /* a reply that answers nothing: only where nothing is due */
} inject_t;

static const inject_t injections[] = {
    { "closed", RELAY_FAIL_CLOSED, NULL, 0, "closed_by_server", false },
    { "reset", RELAY_FAIL_RESET, NULL, 0, "recv_error", false },
    { "timeout", RELAY_FAIL_TIMEOUT, NULL, 0, "timeout", false },
    { "send", RELAY_FAIL_SEND, NULL, 0, "send_error", false },
    { "garbage xyz", RELAY_FAIL_NONE, "xyz\r\n", 5, "bad_reply", false },
    { "garbage 25", RELAY_FAIL_NONE, "25\r\n", 4, "bad_reply", false },
    { "garbage 25x", RELAY_FAIL_NONE, "25x", 3, "bad_reply", false },
    { "bad class", RELAY_FAIL_NONE, "650 what\r\n", 10, "bad_reply", false },
    { "nul", RELAY_FAIL_NONE, "250 a\0b\r\n", 9, "bad_reply", false },
    { "code mismatch", RELAY_FAIL_NONE, "250-a\r\n251 b\r\n", 14, "bad_reply", false },
    { "cut reply, closed", RELAY_FAIL_CLOSED, "250-2.1.5 first\r\n250 2.1", 24, "closed_by_server", false },
    { "cut reply, timeout", RELAY_FAIL_TIMEOUT, "25", 2, "timeout", false },
    { "unexpected reply", RELAY_FAIL_NONE, "250 2.0.0 extra\r\n", 17, "unexpected_reply", true },
};

static bool nothing_due_at(enum step s)
{
    return s == AT_DATA || s == AT_BODY || s == AT_DONE;
}

static void inject(rh_t *h, const inject_t *in)
{
    if (in->bytes)
        rh_feed(h, in->bytes, in->len);
    if (h->closed)
        return; /* the bytes failed it: rh_feed gave the due events and CLOSE */
    if (in->fail != RELAY_FAIL_NONE)
        relay_fail(&h->r, in->fail);
    rh_pump(h);
}

/* Every failure that can strike while replies are due, each on a fresh
 * connection from setup(): from there on the log is `before`, then CLOSE
 * and the failure's reason. */
static void check_failures_after(rh_t *(*setup)(void), const char *before)
{
    for (size_t k = 0; k < sizeof injections / sizeof injections[0]; k++) {
        const inject_t *in = &injections[k];
        if (in->idle_only)
            continue;
        rh_t *h = setup();
        rh_clear(h);
        inject(h, in);
        char want[200];
        snprintf(want, sizeof want, "%sCLOSE %s\n", before, in->reason);
        assert_true(log_is(h, want, in->name));
        rh_del(h);
    }
}

/* A closed relay answers bytes and nothing alike: CLOSE. */
static void assert_closes(relay_t *r)
{
    size_t used = 0;
    relay_event_t ev;
    assert_int_equal(relay_feed(r, "250 ok\r\n", 8, &used, &ev), RELAY_CLOSE);
    assert_int_equal(relay_feed(r, NULL, 0, &used, &ev), RELAY_CLOSE);
}

/* After a failure: dead, quiet, refusing. */
static void assert_dead(rh_t *h)
{
    assert_true(h->closed);
    assert_int_equal(relay_due(&h->r), 0);
    ASSERT_PENDING(h, "");
    assert_closes(&h->r);
    smtp_reply_t ref;
    assert_false(relay_mail(&h->r, 90, SLICE_LIT("s@x.test"), &NO_PARAMS, &ref));
    assert_int_equal(ref.code, 451);
    assert_string_equal(ref.esc, "4.4.1");
    assert_true(ref.flags & SMTP_R_PEER);
    assert_false(relay_rcpt(&h->r, 91, SLICE_LIT("a@y.test"), &ref));
    assert_int_equal(ref.code, 451);
    assert_false(relay_data(&h->r, 92, &ref));
    assert_int_equal(ref.code, 451);
    assert_false(relay_eod(&h->r, 93, &ref));
    assert_int_equal(ref.code, 451);
    ASSERT_PENDING(h, "");
    assert_false(relay_ready(&h->r));
    assert_int_equal(relay_release(&h->r), RELAY_DISCARD);
}

/* The failure matrix: every injection at every step where it can happen,
 * that is all 12 failures at every step, and the unexpected reply at the 3
 * steps where nothing is due. Walk it with
 *     for (failure_case_t f = { 0 }; next_failure(&f);) ... f.s, f.in, f.what */
typedef struct failure_case {
    size_t next; /* step * injections + injection */
    int cases;
    enum step s;
    const inject_t *in;
    char what[96];
} failure_case_t;

static bool next_failure(failure_case_t *f)
{
    const size_t n = sizeof injections / sizeof injections[0];
    while (f->next < AT_COUNT * n) {
        f->s = (enum step)(f->next / n);
        f->in = &injections[f->next % n];
        f->next++;
        if (f->in->idle_only && !nothing_due_at(f->s))
            continue;
        snprintf(f->what, sizeof f->what, "%s %s", f->in->name, step_names[f->s]);
        f->cases++;
        return true;
    }
    assert_int_equal(f->cases, AT_COUNT * 12 + 3);
    return false;
}

static void test_failure_at_every_step(void **state)
{
    (void)state;
    for (failure_case_t f = { 0 }; next_failure(&f);) {
        rh_t *h = tx_to(GREET EHLO_FULL, f.s);
        inject(h, f.in);
        tu_log_t want = { 0 };
        int a = answered_at(f.s), n = issued_at(f.s);
        for (int i = 0; i < a; i++)
            put_expected(&want, i, tx_reply[i]);
        put_lost_close(&want, a, n, f.in->reason);
        check_tx_log(h, &want, n, f.what);
        assert_int_equal(count_type(h, RELAY_EV_LOST), 1);
        /* nothing was sent after the failure (the output is dropped) */
        assert_dead(h);
        rh_del(h);
    }
}

/* The server's own 4xx and 5xx at every step are replies, not failures:
 * routed as they are, 4xx flagged SMTP_R_PEER, and nothing else happens. */
static void test_server_refusal_at_every_step(void **state)
{
    (void)state;
    static const char *const refusals[] = { "451 4.3.2 Try again later\r\n", "550 5.7.1 Refused\r\n",
                                            "452 4.5.3 Too many\r\n", "554 Transaction failed\r\n" };
    for (int at = 0; at < 5; at++) {
        for (size_t c = 0; c < sizeof refusals / sizeof refusals[0]; c++) {
            const char *script[5];
            refusal_script(script, at, refusals[c]);
            rh_t *h = tx_to(GREET EHLO_FULL, AT_START);
            tu_log_t want = { 0 };
            int n = 4;
            for (int i = 0; i < 4; i++) {
                rh_feeds(h, script[i]);
                put_expected(&want, i, script[i]);
            }
            if (relay_in_body(&h->r)) {
                assert_true(rh_eod(h, 5));
                rh_feeds(h, script[4]);
                put_expected(&want, 4, script[4]);
                n = 5;
            } else {
                assert_true(at <= 3 && (at == 3 || at == 0));
                assert_false(rh_eod(h, 5)); /* no body after a refused DATA */
                tu_puts(&want, "REFUSED #5 451 4.3.0 peer Error: internal error, try again later\n");
            }
            char what[96];
            snprintf(what, sizeof what, "%s at %s", refusals[c], tx_kind[at]);
            check_tx_log(h, &want, n, what);
            assert_int_equal(count_type(h, RELAY_EV_LOST), 0);
            assert_false(h->closed);
            assert_int_equal(relay_due(&h->r), 0);
            /* the connection is still sound: released, it is reused or reset */
            enum relay_release x = relay_release(&h->r);
            if (at == 3) {
                assert_int_equal(x, RELAY_DRAINING); /* MAIL accepted, DATA refused: RSET */
                ASSERT_PENDING(h, "RSET\r\n");
                rh_clear(h);
                rh_feeds(h, "250 2.0.0 Ok\r\n");
                LOG_IS(h, "IDLE\n");
            } else {
                assert_int_equal(x, RELAY_REUSE);
                ASSERT_PENDING(h, "");
            }
            assert_true(relay_ready(&h->r));
            rh_del(h);
        }
    }
}

/* A 421 at every step, then the close that follows it. */
static void test_server_421_at_every_step(void **state)
{
    (void)state;
    for (int at = 0; at < 5; at++) {
        rh_t *h = tx_to(GREET EHLO_FULL, AT_START);
        tu_log_t want = { 0 };
        int n = 4;
        for (int i = 0; i < at; i++) {
            rh_feeds(h, tx_reply[i]);
            put_expected(&want, i, tx_reply[i]);
        }
        if (at == 4) {
            assert_true(rh_eod(h, 5));
            n = 5;
        }
        const char *bye = "421 4.4.2 ds.test closing connection\r\n";
        rh_feeds(h, bye);
        put_expected(&want, at, bye);
        rh_fail(h, RELAY_FAIL_CLOSED);
        put_lost_close(&want, at + 1, n, "closed_by_server");
        check_tx_log(h, &want, n, tx_kind[at]);
        assert_dead(h);
        rh_del(h);
    }
}

/* Without PIPELINING, held commands are owed replies too. */
static void test_failure_with_held_commands(void **state)
{
    (void)state;
    rh_t *h = rh_sent(&CFG_SMTP, GREET EHLO_NOPIPE, 2, true, "250 2.1.0 ok\r\n");
    rh_fail(h, RELAY_FAIL_TIMEOUT);
    LOG_IS(h, "REPLY MAIL #1 250 2.1.0 - ok\n" L451("RCPT", "2") L451("RCPT", "3") L451("DATA", "4")
              "LOST\nCLOSE timeout\n");
    /* the held RCPT #3 and DATA never went out */
    assert_string_equal(rh_out(h), "MAIL FROM:<s@x.test>\r\nRCPT TO:<a@y.test>\r\n");
    assert_dead(h);
    rh_del(h);
}

/* Leased with nothing in flight: the lease dies, nothing to answer. */
static void test_failure_leased_idle(void **state)
{
    (void)state;
    rh_t *h = rh_leased(&CFG_SMTP, GREET EHLO_PIPE);
    rh_fail(h, RELAY_FAIL_CLOSED);
    LOG_IS(h, "LOST\nCLOSE closed_by_server\n");
    assert_dead(h);
    rh_del(h);
}

/* The first failure is the one reported; a second changes nothing. */
static void test_failure_twice(void **state)
{
    (void)state;
    rh_t *h = tx_to(GREET EHLO_PIPE, AT_MAIL);
    relay_fail(&h->r, RELAY_FAIL_TIMEOUT);
    relay_fail(&h->r, RELAY_FAIL_CLOSED);
    rh_feeds(h, "xyz\r\n"); /* ignored: the due events, then CLOSE */
    LOG_IS(h, "REPLY MAIL #1 250 2.1.0 - Sender ok\n" L451("RCPT", "2") L451("RCPT", "3") L451("DATA", "4")
              "LOST\nCLOSE timeout\n");
    relay_fail(&h->r, RELAY_FAIL_SEND);
    relay_fail(&h->r, RELAY_FAIL_SYNTAX);
    assert_dead(h);
    assert_string_equal(relay_fail_name((enum relay_fail)h->r.fail), "timeout");
    rh_del(h);
}

/* Due events come one per call, and commands given meanwhile are refused
 * without disturbing them. */
static void test_failure_events_one_at_a_time(void **state)
{
    (void)state;
    rh_t *h = tx_to(GREET EHLO_PIPE, AT_START);
    relay_fail(&h->r, RELAY_FAIL_RESET);
    relay_event_t ev;
    size_t used = 99;
    static const uint32_t tok[] = { 1, 2, 3, 4 };
    static const uint8_t kind[] = { RK_MAIL, RK_RCPT, RK_RCPT, RK_DATA };
    for (int i = 0; i < 4; i++) {
        memset(&ev, 0, sizeof ev);
        assert_int_equal(relay_feed(&h->r, NULL, 0, &used, &ev), RELAY_EVENT);
        assert_int_equal(used, 0);
        assert_int_equal(ev.type, RELAY_EV_REPLY);
        assert_int_equal(ev.token, tok[i]);
        assert_int_equal(ev.kind, kind[i]);
        assert_int_equal(ev.reply.code, 451);
        assert_string_equal(ev.reply.esc, "4.4.1");
        assert_int_equal(ev.reply.flags, SMTP_R_PEER);
        assert_true(ev.lost);
        smtp_reply_t ref;
        assert_false(relay_rcpt(&h->r, 50, SLICE_LIT("x@y.test"), &ref));
    }
    assert_int_equal(relay_feed(&h->r, NULL, 0, &used, &ev), RELAY_EVENT);
    assert_int_equal(ev.type, RELAY_EV_LOST);
    assert_int_equal(relay_feed(&h->r, NULL, 0, &used, &ev), RELAY_CLOSE);
    assert_closes(&h->r);
    rh_del(h);
}

/* ------------------------------------------------------------------ */
/* 5. The client's view: the engine and the relay joined               */
/* ------------------------------------------------------------------ */

static const smtp_reply_t GLUE_LOST = { 451, "4.4.1", SLICE_INIT(LOST_TEXT), SMTP_R_PEER };

/*
 * The session's glue, reduced: client bytes to smtp_feed; MAIL/RCPT/DATA
 * events to the relay with ev.slot as the token (a refusal straight to
 * smtp_verdict); REPLY events to smtp_verdict(ev.token); body bytes "sent";
 * DATA_END to relay_eod, or 451 4.4.1 when the connection was lost during
 * the body. A connection is opened (and leased) at the first MAIL that
 * finds none.
 */
typedef struct glue {
    smtp_config_t scfg;
    smtp_out_t o;
    char obuf[8192];
    smtp_t s;
    relay_config_t rcfg;
    const char *server_hello; /* greeting and EHLO reply of each new connection */
    relay_t r;
    bool live;
    bool lost;   /* LOST came while the engine was in the body */
    bool closed; /* the client session ended */
    int connections;
    int lost_events;
    tu_log_t client; /* what the client read */
    tu_log_t wire;   /* what went downstream in transactions */
    tu_log_t pend;   /* client bytes the engine has not taken */
    size_t pend_off;
} glue_t;

static void glue_flush(glue_t *g)
{
    if (g->o.len)
        tu_put(&g->client, g->o.buf, g->o.len);
    g->o.len = 0;
}

static void glue_take(glue_t *g)
{
    if (g->live)
        take_output(&g->r, &g->wire);
}

static glue_t *glue_new(uint32_t error_max, const char *server_hello)
{
    glue_t *g = calloc(1, sizeof *g);
    assert_non_null(g);
    smtp_config_defaults(&g->scfg, SLICE_LIT("mx.test"));
    g->scfg.error_max = error_max;
    g->scfg.smtputf8 = true;
    g->o = (smtp_out_t){ .buf = g->obuf, .len = 0, .cap = sizeof g->obuf };
    smtp_init(&g->s, &g->scfg, &g->o);
    smtp_greet(&g->s);
    glue_flush(g);
    g->rcfg = CFG_SMTP;
    g->server_hello = server_hello;
    return g;
}

static void glue_del(glue_t *g)
{
    if (g->live)
        relay_free(&g->r);
    smtp_free(&g->s);
    tu_free_log(&g->client);
    tu_free_log(&g->wire);
    tu_free_log(&g->pend);
    free(g);
}

static void glue_route(void *arg, const relay_event_t *ev)
{
    glue_t *g = arg;
    switch (ev->type) {
    case RELAY_EV_REPLY:
        smtp_verdict(&g->s, ev->token, &ev->reply);
        glue_flush(g);
        break;
    case RELAY_EV_LOST:
        g->lost_events++;
        if (g->s.state == SMTP_S_DATA)
            g->lost = true;
        break;
    default:
        break;
    }
}

/* Feed the downstream's bytes (or only due events) to the relay. */
static void glue_relay_feed(glue_t *g, const char *p, size_t n)
{
    assert_true(g->live);
    if (feed_relay(&g->r, p, n, glue_route, g, &g->wire) == RELAY_CLOSE) {
        relay_free(&g->r);
        g->live = false;
    }
}

static void glue_connect(glue_t *g)
{
    relay_init(&g->r, &g->rcfg);
    relay_connected(&g->r);
    g->live = true;
    g->connections++;
    size_t wire = g->wire.len;
    glue_relay_feed(g, g->server_hello, strlen(g->server_hello));
    assert_true(g->live && relay_ready(&g->r));
    g->wire.len = wire; /* the handshake is not in `wire` */
    if (g->wire.buf)
        g->wire.buf[wire] = 0;
    relay_lease(&g->r);
}

/* The engine's events, as the session handles them. */
static void glue_event(glue_t *g, const smtp_event_t *ev)
{
    smtp_reply_t ref;
    memset(&ref, 0, sizeof ref);
    switch (ev->type) {
    case SMTP_EV_HELO:
    case SMTP_EV_EHLO:
        smtp_accept(&g->s, ev->slot);
        break;
    case SMTP_EV_MAIL:
        if (!g->live)
            glue_connect(g);
        if (!relay_mail(&g->r, ev->slot, ev->path.mailbox, &ev->params, &ref))
            smtp_verdict(&g->s, ev->slot, &ref);
        break;
    case SMTP_EV_RCPT:
        if (!g->live)
            smtp_verdict(&g->s, ev->slot, &GLUE_LOST);
        else if (!relay_rcpt(&g->r, ev->slot, ev->path.mailbox, &ref))
            smtp_verdict(&g->s, ev->slot, &ref);
        break;
    case SMTP_EV_DATA:
        if (!g->live)
            smtp_verdict(&g->s, ev->slot, &GLUE_LOST);
        else if (!relay_data(&g->r, ev->slot, &ref))
            smtp_verdict(&g->s, ev->slot, &ref);
        break;
    case SMTP_EV_BODY:
        if (g->live && !g->lost && relay_in_body(&g->r)) /* only while the downstream takes a body */
            tu_put(&g->wire, ev->arg.ptr, ev->arg.len);
        break;
    case SMTP_EV_DATA_END:
        if (g->lost || !g->live) {
            g->lost = false;
            smtp_verdict(&g->s, ev->slot, &GLUE_LOST);
        } else if (!relay_eod(&g->r, ev->slot, &ref)) {
            smtp_verdict(&g->s, ev->slot, &ref);
        }
        break;
    case SMTP_EV_RSET:
    case SMTP_EV_DATA_REJECTED:
        if (g->live && g->r.owned && g->r.state != RELAY_READY) {
            if (relay_release(&g->r) == RELAY_REUSE) {
                relay_lease(&g->r);
            } else {
                relay_free(&g->r); /* a real pool would drain it; here it is closed */
                g->live = false;
            }
        }
        break;
    default:
        break;
    }
    glue_take(g);
    glue_flush(g);
}

/* Let the engine take as much pending client input as it will. */
static void glue_pump(glue_t *g)
{
    for (int guard = 0; guard < 100000 && !g->closed; guard++) {
        const char *p = g->pend.buf ? g->pend.buf + g->pend_off : "";
        size_t n = g->pend.len - g->pend_off;
        smtp_event_t ev;
        memset(&ev, 0, sizeof ev);
        size_t used = 0;
        smtp_status_t st = smtp_feed(&g->s, p, n, &used, &ev);
        assert_true(used <= n);
        g->pend_off += used;
        glue_flush(g);
        switch (st) {
        case SMTP_EVENT:
            glue_event(g, &ev);
            continue;
        case SMTP_FULL:
            continue;
        case SMTP_AGAIN:
            g->pend.len = g->pend_off = 0;
            return;
        case SMTP_PAUSED:
            return;
        case SMTP_CLOSED:
            g->closed = true;
            return;
        }
    }
}

static void glue_client(glue_t *g, const char *s)
{
    tu_puts(&g->pend, s);
    glue_pump(g);
}

static void glue_server(glue_t *g, const char *p, size_t n)
{
    glue_relay_feed(g, p, n);
    glue_pump(g);
}

static void glue_servers(glue_t *g, const char *s)
{
    glue_server(g, s, strlen(s));
}

static void glue_inject(glue_t *g, const inject_t *in)
{
    if (in->bytes)
        glue_relay_feed(g, in->bytes, in->len);
    if (g->live && in->fail != RELAY_FAIL_NONE)
        relay_fail(&g->r, in->fail);
    if (g->live)
        glue_relay_feed(g, NULL, 0);
    assert_false(g->live); /* every injection ends the connection */
    glue_pump(g);
}

static bool looks_esc(const char *p, size_t n)
{
    return n >= 5 && (p[0] == '2' || p[0] == '4' || p[0] == '5') && reply_esc_valid(p, n);
}

/* The client's replies as "220|250|250 2.1.0|451 4.4.1|...": one token per
 * final reply line, the code and its enhanced code if any. */
static char *client_sig(const glue_t *g)
{
    tu_log_t sig = { 0 };
    const char *p = g->client.buf ? g->client.buf : "";
    const char *end = p + g->client.len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
        if (n >= 4 && p[3] == '-') {
            p += n;
            continue;
        }
        char tok[32];
        const char *e = p + 4;
        size_t el = 0;
        while (n > 4 && e + el < p + n && e[el] != ' ' && e[el] != '\r' && e[el] != '\n')
            el++;
        if (n > 4 && p[3] == ' ' && looks_esc(e, el))
            snprintf(tok, sizeof tok, "%.3s %.*s", p, (int)el, e);
        else
            snprintf(tok, sizeof tok, "%.3s", p);
        if (sig.len)
            tu_puts(&sig, "|");
        tu_puts(&sig, tok);
        p += n;
    }
    if (!sig.buf)
        tu_puts(&sig, "");
    return sig.buf;
}

static bool client_saw(const glue_t *g, const char *want, const char *what)
{
    char *sig = client_sig(g);
    bool ok = strcmp(sig, want) == 0;
    if (!ok)
        tu_note("%s: client replies differ\n  want: %s\n  got:  %s\n--- client ---\n%s--------------\n", what, want,
             sig, g->client.buf ? g->client.buf : "");
    free(sig);
    return ok;
}

#define CLIENT_GROUP "MAIL FROM:<s@x.test>\r\nRCPT TO:<a@y.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
#define WIRE_GROUP CLIENT_GROUP
#define BODY1 "Subject: t\r\n\r\nline one\r\n..dot-stuffed\r\n"
#define BODY2 "line two\r\n"

/* A session whose client sent EHLO and `more` in one go, relayed to
 * connections that greet with `server_hello`. */
static glue_t *glue_session(uint32_t error_max, const char *server_hello, const char *more)
{
    glue_t *g = glue_new(error_max, server_hello);
    tu_puts(&g->pend, "EHLO client.test\r\n");
    glue_client(g, more);
    return g;
}

/* The downstream answers the first n commands of the group (tx_reply). */
static void glue_answer(glue_t *g, int n)
{
    for (int i = 0; i < n; i++)
        glue_servers(g, tx_reply[i]);
}

/* One transaction through the glue, failing as `in` says at step s. */
static void glue_tx_fail(glue_t *g, enum step s, const inject_t *in)
{
    glue_client(g, CLIENT_GROUP);
    glue_answer(g, answered_at(s) < 4 ? answered_at(s) : 4);
    if (s < AT_DATA || s == AT_DATA)
        glue_inject(g, in);
    if (g->s.state == SMTP_S_DATA) {
        glue_client(g, BODY1);
        if (s == AT_BODY)
            glue_inject(g, in);
        glue_client(g, BODY2 ".\r\n");
        if (s == AT_EOD_SENT)
            glue_inject(g, in);
        if (s == AT_DONE) {
            glue_servers(g, tx_reply[4]);
            glue_inject(g, in);
        }
    }
    assert_false(g->live);
}

/* After glue_tx_fail at each step: the replies the client read for the
 * transaction, and what reached the downstream. */
static const struct {
    const char *client;
    const char *wire;
} tx_after[AT_COUNT] = {
    [AT_START] = { "451 4.4.1|451 4.4.1|451 4.4.1|451 4.4.1", WIRE_GROUP },
    [AT_MAIL] = { "250 2.1.0|451 4.4.1|451 4.4.1|451 4.4.1", WIRE_GROUP },
    [AT_RCPT1] = { "250 2.1.0|250 2.1.5|451 4.4.1|451 4.4.1", WIRE_GROUP },
    [AT_RCPT2] = { "250 2.1.0|250 2.1.5|250 2.1.5|451 4.4.1", WIRE_GROUP },
    [AT_DATA] = { "250 2.1.0|250 2.1.5|250 2.1.5|354|451 4.4.1", WIRE_GROUP },
    [AT_BODY] = { "250 2.1.0|250 2.1.5|250 2.1.5|354|451 4.4.1", WIRE_GROUP BODY1 },
    [AT_EOD_SENT] = { "250 2.1.0|250 2.1.5|250 2.1.5|354|451 4.4.1", WIRE_GROUP BODY1 BODY2 ".\r\n" },
    [AT_DONE] = { "250 2.1.0|250 2.1.5|250 2.1.5|354|250 2.0.0", WIRE_GROUP BODY1 BODY2 ".\r\n" },
};

static void test_client_success(void **state)
{
    (void)state;
    glue_t *g = glue_session(20, GREET EHLO_FULL, CLIENT_GROUP);
    assert_true(client_saw(g, "220|250", "before replies")); /* MAIL..DATA wait for the downstream */
    assert_string_equal(g->wire.buf, WIRE_GROUP);            /* forwarded as one group */
    glue_answer(g, 4);
    assert_int_equal(g->s.state, SMTP_S_DATA);
    glue_client(g, BODY1 BODY2 ".\r\n");
    glue_servers(g, tx_reply[4]);
    glue_client(g, "QUIT\r\n");
    assert_true(client_saw(g, "220|250|250 2.1.0|250 2.1.5|250 2.1.5|354|250 2.0.0|221 2.0.0", "success"));
    assert_string_equal(g->wire.buf, WIRE_GROUP BODY1 BODY2 ".\r\n");
    assert_int_equal(g->s.errors, 0);
    assert_int_equal(g->lost_events, 0);
    assert_true(g->closed);
    /* the downstream's own texts reach the client */
    assert_non_null(strstr(g->client.buf, "354 Go ahead\r\n"));
    assert_non_null(strstr(g->client.buf, "250 2.0.0 Queued as 1\r\n"));
    glue_del(g);
}

/* The failure matrix of part 4, as the client reads it. */
static void test_client_failure_at_every_step(void **state)
{
    (void)state;
    for (failure_case_t f = { 0 }; next_failure(&f);) {
        glue_t *g = glue_session(20, GREET EHLO_FULL, "");
        glue_tx_fail(g, f.s, f.in);
        glue_client(g, "QUIT\r\n");
        char want[256];
        snprintf(want, sizeof want, "220|250|%s|221 2.0.0", tx_after[f.s].client);
        assert_true(client_saw(g, want, f.what));
        if (strcmp(g->wire.buf, tx_after[f.s].wire) != 0)
            fail_msg("%s: wire \"%s\"", f.what, g->wire.buf);
        assert_int_equal(g->s.errors, 0); /* none of it is the client's fault */
        assert_int_equal(g->lost_events, 1);
        assert_false(g->lost); /* the latch was used and cleared */
        glue_del(g);
    }
}

/* The server's own refusals at each step, as the client reads them. */
static void test_client_server_refusals(void **state)
{
    (void)state;
    static const struct {
        int at; /* the command refused: 0 MAIL, 1 and 2 RCPT, 3 DATA, 4 end of data */
        const char *reply;
        const char *want;
        uint32_t errors;
    } cases[] = {
        { 0, "550 5.7.1 Sender refused\r\n", "550 5.7.1|503 5.5.1|503 5.5.1|503 5.5.1", 4 },
        { 0, "451 4.3.2 Try later\r\n", "451 4.3.2|451 4.3.2|451 4.3.2|451 4.3.2", 0 },
        { 0, "421 4.4.2 Closing\r\n", "421 4.4.2|421 4.4.2|421 4.4.2|421 4.4.2", 0 },
        { 1, "550 5.1.1 No such user\r\n", "250 2.1.0|550 5.1.1|250 2.1.5|354|250 2.0.0", 1 },
        { 1, "450 4.2.1 Mailbox busy\r\n", "250 2.1.0|450 4.2.1|250 2.1.5|354|250 2.0.0", 0 },
        { 2, "552 5.2.2 Mailbox full\r\n", "250 2.1.0|250 2.1.5|552 5.2.2|354|250 2.0.0", 1 },
        { 3, "554 5.5.1 No valid recipients\r\n", "250 2.1.0|250 2.1.5|250 2.1.5|554 5.5.1", 1 },
        { 3, "451 4.3.0 Local error\r\n", "250 2.1.0|250 2.1.5|250 2.1.5|451 4.3.0", 0 },
        { 4, "554 5.6.0 Content refused\r\n", "250 2.1.0|250 2.1.5|250 2.1.5|354|554 5.6.0", 0 },
        { 4, "451 4.3.0 Queue write error\r\n", "250 2.1.0|250 2.1.5|250 2.1.5|354|451 4.3.0", 0 },
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const char *script[5];
        refusal_script(script, cases[c].at, cases[c].reply);
        bool bye = strncmp(cases[c].reply, "421", 3) == 0; /* and then the server closes */
        glue_t *g = glue_session(20, GREET EHLO_FULL, CLIENT_GROUP);
        for (int i = 0; i < 4 && g->live; i++) {
            glue_servers(g, script[i]);
            if (bye && i == cases[c].at) {
                relay_fail(&g->r, RELAY_FAIL_CLOSED);
                glue_server(g, NULL, 0);
            }
        }
        if (g->s.state == SMTP_S_DATA) {
            glue_client(g, BODY1 BODY2 ".\r\n");
            glue_servers(g, script[4]);
        }
        glue_client(g, "RSET\r\nQUIT\r\n");
        char want[256];
        snprintf(want, sizeof want, "220|250|%s|250 2.0.0|221 2.0.0", cases[c].want);
        assert_true(client_saw(g, want, cases[c].reply));
        if (g->s.errors != cases[c].errors)
            fail_msg("%s: errors %u, want %u", cases[c].reply, g->s.errors, cases[c].errors);
        glue_del(g);
    }
}

/* The relay's own refusals go straight to the verdict. */
static void test_client_relay_refusals(void **state)
{
    (void)state;
    static const struct {
        const char *server_hello, *mail_params, *want;
    } cases[] = {
        { GREET EHLO_FULL, " SIZE=5000", "220|250|552 5.3.4|503 5.5.1|503 5.5.1" }, /* SIZE 1000 */
        { GREET EHLO_PIPE, " SMTPUTF8", "220|250|553 5.6.7|503 5.5.1|503 5.5.1" },  /* no SMTPUTF8 */
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char more[128];
        snprintf(more, sizeof more, "MAIL FROM:<s@x.test>%s\r\nRCPT TO:<a@y.test>\r\nDATA\r\n", cases[c].mail_params);
        glue_t *g = glue_session(20, cases[c].server_hello, more);
        assert_true(client_saw(g, cases[c].want, cases[c].mail_params));
        assert_string_equal(g->wire.buf ? g->wire.buf : "", "");
        glue_del(g);
    }
}

/* What the client wrote is what the downstream reads. */
static void test_client_paths_forwarded(void **state)
{
    (void)state;
    glue_t *g = glue_session(20, GREET EHLO_FULL,
                             "MAIL FROM:<\"a>b\"@x.test> BODY=8BITMIME SIZE=100\r\n"
                             "RCPT TO:<\"c\\\"d\"@y.test>\r\n"
                             "RCPT TO:<\"e\\\\f g@h\"@y.test>\r\n"
                             "RCPT TO:<@relay.test:user@[192.0.2.1]>\r\n"
                             "DATA\r\n");
    assert_string_equal(g->wire.buf, "MAIL FROM:<\"a>b\"@x.test> BODY=8BITMIME SIZE=100\r\n"
                                     "RCPT TO:<\"c\\\"d\"@y.test>\r\n"
                                     "RCPT TO:<\"e\\\\f g@h\"@y.test>\r\n"
                                     "RCPT TO:<user@[192.0.2.1]>\r\n"
                                     "DATA\r\n");
    glue_servers(g, "250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go\r\n");
    glue_client(g, BODY1 ".\r\n");
    glue_servers(g, "250 2.0.0 ok\r\n");
    assert_true(client_saw(g, "220|250|250 2.1.0|250 2.1.5|250 2.1.5|250 2.1.5|354|250 2.0.0", "paths"));
    glue_del(g);
}

/* 20 pipelined transactions, each lost to a downstream failure somewhere:
 * with error_max 5 the client never gets a 421, and every command is
 * answered. */
static void many_failures(const size_t kinds[4])
{
    glue_t *g = glue_session(5, GREET EHLO_FULL, "");
    tu_log_t want = { 0 };
    tu_puts(&want, "220|250");
    for (int t = 0; t < 20; t++) {
        enum step s = (enum step)(t % AT_COUNT);
        glue_client(g, "RSET\r\n");
        glue_tx_fail(g, s, &injections[kinds[t % 4]]);
        tu_puts(&want, "|250 2.0.0|");
        tu_puts(&want, tx_after[s].client);
        assert_false(g->closed);
    }
    glue_client(g, "QUIT\r\n");
    tu_puts(&want, "|221 2.0.0");
    assert_true(client_saw(g, want.buf, "20 transactions"));
    assert_null(strstr(g->client.buf, "421"));
    assert_int_equal(g->s.errors, 0);
    assert_int_equal(g->connections, 20);
    assert_int_equal(g->lost_events, 20);
    assert_true(g->closed);
    tu_free_log(&want);
    glue_del(g);
}

static void test_client_many_failures_no_421(void **state)
{
    (void)state;
    static const size_t closed[4] = { 0, 0, 0, 0 }; /* the downstream closes */
    static const size_t mixed[4] = { 0, 2, 3, 4 };  /* closed, timeout, send, garbage */
    many_failures(closed);
    many_failures(mixed);
}

/* A body larger than one feed, lost in the middle: nothing after the loss
 * is forwarded, and the final dot gets 451 4.4.1. */
static void test_client_lost_mid_body_long(void **state)
{
    (void)state;
    glue_t *g = glue_session(20, GREET EHLO_FULL, CLIENT_GROUP);
    glue_answer(g, 4);
    for (int i = 0; i < 50; i++)
        glue_client(g, "0123456789012345678901234567890123456789\r\n");
    size_t before = g->wire.len;
    relay_fail(&g->r, RELAY_FAIL_RESET);
    glue_server(g, NULL, 0);
    assert_true(g->lost);
    for (int i = 0; i < 50; i++)
        glue_client(g, "abcdefghijabcdefghijabcdefghijabcdefghij\r\n");
    assert_int_equal(g->wire.len, before);
    glue_client(g, ".\r\n");
    assert_true(client_saw(g, "220|250|250 2.1.0|250 2.1.5|250 2.1.5|354|451 4.4.1", "long body"));
    assert_int_equal(g->wire.len, before);
    /* the next transaction gets a new connection and goes through */
    glue_client(g, CLIENT_GROUP);
    assert_int_equal(g->connections, 2);
    glue_answer(g, 4);
    glue_client(g, BODY1 ".\r\n");
    glue_servers(g, tx_reply[4]);
    assert_true(client_saw(g, "220|250|250 2.1.0|250 2.1.5|250 2.1.5|354|451 4.4.1|"
                              "250 2.1.0|250 2.1.5|250 2.1.5|354|250 2.0.0",
                           "after"));
    assert_int_equal(g->s.errors, 0);
    glue_del(g);
}

/* ------------------------------------------------------------------ */
/* 6. Release                                                          */
/* ------------------------------------------------------------------ */

static void test_release_after_complete_tx(void **state)
{
    (void)state;
    rh_t *h = tx_to(GREET EHLO_PIPE, AT_DONE);
    rh_clear(h);
    assert_int_equal(rh_release(h), RELAY_REUSE);
    assert_true(relay_ready(&h->r));
    ASSERT_PENDING(h, "");
    /* leased again, it carries the next transaction */
    relay_lease(&h->r);
    assert_true(rh_mail(h, 7, "t@x.test"));
    ASSERT_PENDING(h, "MAIL FROM:<t@x.test>\r\n");
    rh_feeds(h, "250 ok\r\n");
    LOG_IS(h, "RELEASE REUSE\nREPLY MAIL #7 250 - - ok\n");
    rh_del(h);
}

/* A leased connection sends MAIL and nrcpt RCPTs (rh_group), the server
 * answers `replies` (NULL: nothing yet), and the owner releases it:
 * draining. */
static rh_t *drain_after(uint32_t nrcpt, const char *replies)
{
    rh_t *h = rh_sent(&CFG_SMTP, GREET EHLO_PIPE, nrcpt, false, replies);
    assert_int_equal(rh_release(h), RELAY_DRAINING);
    return h;
}

static void test_release_mail_accepted_rset(void **state)
{
    (void)state;
    rh_t *h = drain_after(0, "250 2.1.0 ok\r\n");
    ASSERT_PENDING(h, "RSET\r\n");
    assert_false(relay_ready(&h->r));
    assert_int_equal(relay_due(&h->r), 1);
    rh_feeds(h, "250 2.0.0 Flushed\r\n");
    LOG_IS(h, "REPLY MAIL #1 250 2.1.0 - ok\nRELEASE DRAINING\nIDLE\n");
    assert_true(relay_ready(&h->r));
    assert_int_equal(relay_due(&h->r), 0);
    assert_string_equal(rh_out(h), "MAIL FROM:<s@x.test>\r\nRSET\r\n");
    rh_del(h);
}

static void test_release_rcpt_replies_drained(void **state)
{
    (void)state;
    rh_t *h = drain_after(2, "250 2.1.0 ok\r\n");
    ASSERT_PENDING(h, ""); /* no RSET before the RCPT replies are in */
    rh_feeds(h, "250 2.1.5 ok\r\n");
    ASSERT_PENDING(h, "");
    rh_feeds(h, "450 4.2.1 busy\r\n");
    assert_int_equal(count_type(h, RELAY_EV_REPLY), 1); /* drained, not routed */
    assert_string_equal(rh_out(h) + strlen(rh_out(h)) - 6, "RSET\r\n");
    rh_feeds(h, "250 2.0.0 ok\r\n");
    LOG_IS(h, "REPLY MAIL #1 250 2.1.0 - ok\nRELEASE DRAINING\nIDLE\n");
    assert_true(relay_ready(&h->r));
    /* and it is as good as new */
    relay_lease(&h->r);
    rh_clear(h);
    assert_true(rh_mail(h, 9, "t@x.test"));
    rh_feeds(h, "250 2.1.0 ok\r\n");
    LOG_IS(h, "REPLY MAIL #9 250 2.1.0 - ok\n");
    rh_del(h);
}

/* Released before any reply (MAIL, RCPT), the server's `replies` drain it
 * to IDLE, having sent `out`. */
static void release_before_replies(const char *replies, const char *out)
{
    rh_t *h = drain_after(1, NULL);
    rh_feeds(h, replies);
    assert_true(log_is(h, "RELEASE DRAINING\nIDLE\n", replies));
    assert_string_equal(rh_out(h), out);
    assert_true(relay_ready(&h->r));
    rh_del(h);
}

/* Released before any reply: MAIL's reply decides whether RSET is needed. */
static void test_release_everything_due(void **state)
{
    (void)state;
    release_before_replies("250 ok\r\n250 ok\r\n250 reset\r\n",
                           "MAIL FROM:<s@x.test>\r\nRCPT TO:<a@y.test>\r\nRSET\r\n");
    /* no transaction at the server: no RSET */
    release_before_replies("550 5.7.1 no\r\n503 5.5.1 need MAIL\r\n", "MAIL FROM:<s@x.test>\r\nRCPT TO:<a@y.test>\r\n");
}

/* Without PIPELINING the held commands of a released owner never go out. */
static void test_release_drops_held_commands(void **state)
{
    (void)state;
    rh_t *h = rh_sent(&CFG_SMTP, GREET EHLO_NOPIPE, 2, false, NULL);
    assert_int_equal(relay_due(&h->r), 3);
    assert_int_equal(rh_release(h), RELAY_DRAINING);
    assert_int_equal(relay_due(&h->r), 1);
    rh_feeds(h, "250 ok\r\n");
    rh_feeds(h, "250 reset\r\n");
    LOG_IS(h, "RELEASE DRAINING\nIDLE\n");
    assert_string_equal(rh_out(h), "MAIL FROM:<s@x.test>\r\nRSET\r\n");
    rh_del(h);

    /* held DATA does not make the connection unusable: it was never sent */
    h = rh_sent(&CFG_SMTP, GREET EHLO_NOPIPE, 1, true, NULL);
    assert_int_equal(rh_release(h), RELAY_DRAINING);
    rh_feeds(h, "250 ok\r\n250 reset\r\n");
    LOG_IS(h, "RELEASE DRAINING\nIDLE\n");
    rh_del(h);
}

static void test_release_discard(void **state)
{
    (void)state;
    /* DATA unanswered (twice), inside the body, end marker unanswered */
    static const enum step unclean[] = { AT_RCPT2, AT_START, AT_DATA, AT_EOD_SENT };
    for (size_t i = 0; i < sizeof unclean / sizeof unclean[0]; i++) {
        rh_t *h = tx_to(GREET EHLO_PIPE, unclean[i]);
        assert_int_equal(relay_release(&h->r), RELAY_DISCARD);
        rh_del(h);
    }
    /* failed */
    rh_t *h = tx_to(GREET EHLO_PIPE, AT_DONE);
    relay_fail(&h->r, RELAY_FAIL_TIMEOUT);
    assert_int_equal(relay_release(&h->r), RELAY_DISCARD);
    rh_del(h);
    /* discarded with DATA due, but fed on: the 354 nobody will answer
     * fails it, and nothing reaches the owner who left */
    h = tx_to(GREET EHLO_PIPE, AT_START);
    assert_int_equal(relay_release(&h->r), RELAY_DISCARD);
    rh_clear(h);
    rh_feeds(h, "250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    LOG_IS(h, "CLOSE orphan_data\n");
    rh_del(h);
    /* not leased: ready is reusable, dead is not */
    h = rh_new(&CFG_SMTP, NULL);
    rh_ready(h, GREET EHLO_PIPE);
    assert_int_equal(relay_release(&h->r), RELAY_REUSE);
    relay_fail(&h->r, RELAY_FAIL_CLOSED);
    assert_int_equal(relay_release(&h->r), RELAY_DISCARD);
    rh_del(h);
}

/* MAIL #1 accepted, then released (RSET goes out): the server says
 * `first` and, in a later read, `later` (NULL: nothing); the whole log is
 * `want`. */
static void check_drain_after_mail(const char *first, const char *later, const char *want)
{
    rh_t *h = drain_after(0, "250 ok\r\n");
    rh_feeds(h, first);
    if (later)
        rh_feeds(h, later);
    assert_true(log_is(h, want, first));
    rh_del(h);
}

static void test_release_rset_refused(void **state)
{
    (void)state;
    check_drain_after_mail("500 5.5.1 What RSET\r\n", NULL,
                           "REPLY MAIL #1 250 - - ok\nRELEASE DRAINING\nCLOSE rset_refused\n");
}

/* A released connection's failure routes nothing: no REPLY, no LOST. */
static rh_t *drain_rcpts(void)
{
    return drain_after(2, "250 ok\r\n");
}

static void test_release_then_failure_routes_nothing(void **state)
{
    (void)state;
    check_failures_after(drain_rcpts, "");
    /* failing while the RSET is out */
    rh_t *h = drain_after(0, "250 ok\r\n");
    rh_clear(h);
    rh_fail(h, RELAY_FAIL_TIMEOUT);
    LOG_IS(h, "CLOSE timeout\n");
    rh_del(h);
}

/* An idle pooled connection that the server talks to is closed. */
static void test_release_idle_then_reply(void **state)
{
    (void)state;
    check_drain_after_mail("250 reset\r\n", "421 4.4.2 Timeout\r\n",
                           "REPLY MAIL #1 250 - - ok\nRELEASE DRAINING\nIDLE\nCLOSE unexpected_reply\n");
}

/* ------------------------------------------------------------------ */
/* 7. LMTP                                                             */
/* ------------------------------------------------------------------ */

/* MAIL, RCPTs with the given replies, DATA 354, the end marker and the
 * replies after it, fed one at a time; returns the harness. */
static rh_t *lmtp_tx(rh_t *h, uint32_t tok0, const char *const *rcpt, size_t nrcpt, const char *const *after,
                     size_t nafter, bool check_quiet)
{
    assert_true(rh_mail(h, tok0, "s@x.test"));
    for (size_t i = 0; i < nrcpt; i++)
        assert_true(rh_rcpt(h, tok0 + 1 + (uint32_t)i, "r@y.test"));
    assert_true(rh_data(h, tok0 + 1 + (uint32_t)nrcpt));
    rh_feeds(h, "250 2.1.0 ok\r\n");
    for (size_t i = 0; i < nrcpt; i++)
        rh_feeds(h, rcpt[i]);
    rh_feeds(h, "354 go\r\n");
    assert_true(rh_eod(h, tok0 + 2 + (uint32_t)nrcpt));
    for (size_t i = 0; i < nafter; i++) {
        size_t before = h->nrec;
        rh_feeds(h, after[i]);
        if (check_quiet && i + 1 < nafter)
            assert_int_equal(h->nrec, before); /* nothing until the last */
    }
    return h;
}

#define RCPT_OK "250 2.1.5 ok\r\n"
static const char *const rcpts_ok[3] = { RCPT_OK, RCPT_OK, RCPT_OK };
static const char *const delivered_a[1] = { "250 2.1.5 <a> delivered\r\n" };

/* lmtp_tx from token 1 on a fresh leased LMTP connection. */
static rh_t *lmtp_first_tx(const char *const *rcpt, size_t nrcpt, const char *const *after, size_t nafter,
                           bool check_quiet)
{
    return lmtp_tx(rh_leased(&CFG_LMTP, LMTP_HELLO), 1, rcpt, nrcpt, after, nafter, check_quiet);
}

static void test_lmtp_worst_reply(void **state)
{
    (void)state;
    static const char *const ok = RCPT_OK;
    static const struct {
        const char *rcpt[3];
        size_t nrcpt;
        const char *after[3];
        size_t nafter;
        const char *want;
    } cases[] = {
        { { ok, ok }, 2, { "250 2.1.5 <a> delivered\r\n", "250 2.1.5 <b> delivered\r\n" }, 2,
          "REPLY EOD #5 250 2.1.5 - <a> delivered\n" },
        { { ok, ok }, 2, { "250 2.1.5 <a> delivered\r\n", "452 4.2.2 <b> full\r\n" }, 2,
          "REPLY EOD #5 452 4.2.2 peer <b> full\n" },
        { { ok, ok }, 2, { "452 4.2.2 <a> full\r\n", "250 2.1.5 <b> delivered\r\n" }, 2,
          "REPLY EOD #5 452 4.2.2 peer <a> full\n" },
        { { ok, ok }, 2, { "550 5.1.1 <a> gone\r\n", "452 4.2.2 <b> full\r\n" }, 2,
          "REPLY EOD #5 550 5.1.1 - <a> gone\n" },
        { { ok, ok }, 2, { "451 4.3.0 <a> later\r\n", "554 5.6.0 <b> refused\r\n" }, 2,
          "REPLY EOD #5 554 5.6.0 - <b> refused\n" },
        { { ok, "550 5.1.1 unknown\r\n", ok }, 3, { "250 2.1.5 <a> ok\r\n", "450 4.2.1 <c> busy\r\n" }, 2,
          "REPLY EOD #6 450 4.2.1 peer <c> busy\n" },
        { { ok }, 1, { "250-2.1.5 <a>\r\n250 2.1.5 <a> delivered\r\n" }, 1, "REPLY EOD #4 250 2.1.5 - <a> delivered\n" },
        { { ok, ok, ok }, 3, { "250 2.1.5 a\r\n", "250 2.1.5 b\r\n", "250 2.1.5 c\r\n" }, 3,
          "REPLY EOD #6 250 2.1.5 - a\n" },
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        rh_t *h = lmtp_first_tx(cases[c].rcpt, cases[c].nrcpt, cases[c].after, cases[c].nafter, true);
        /* one REPLY for the end of data, last */
        assert_int_equal(h->rec[h->nrec - 1].type, RELAY_EV_REPLY);
        assert_int_equal(h->rec[h->nrec - 1].kind, RK_EOD);
        int eods = 0;
        for (size_t i = 0; i < h->nrec; i++)
            eods += h->rec[i].kind == RK_EOD;
        assert_int_equal(eods, 1);
        const char *l = rh_log(h);
        const char *last = strstr(l, "REPLY EOD");
        assert_non_null(last);
        if (strcmp(last, cases[c].want) != 0)
            fail_msg("case %zu: %s", c, last);
        assert_int_equal(relay_due(&h->r), 0);
        assert_int_equal(h->r.state, RELAY_READY);
        rh_del(h);
    }
}

/* A second transaction on the lease starts from a clean worst. */
static void test_lmtp_next_transaction(void **state)
{
    (void)state;
    static const char *const bad[2] = { "550 5.1.1 <a> gone\r\n", "250 2.1.5 <b> ok\r\n" };
    static const char *const good[1] = { "250 2.1.5 <c> ok\r\n" };
    rh_t *h = lmtp_first_tx(rcpts_ok, 2, bad, 2, true);
    rh_clear(h);
    lmtp_tx(h, 11, rcpts_ok, 1, good, 1, true); /* one recipient: one reply */
    LOG_IS(h, "REPLY MAIL #11 250 2.1.0 - ok\nREPLY RCPT #12 250 2.1.5 - ok\nREPLY DATA #13 354 - - go\n"
              "REPLY EOD #14 250 2.1.5 - <c> ok\n");
    assert_int_equal(relay_release(&h->r), RELAY_REUSE);
    rh_del(h);
}

/* Lost between the per-recipient replies: the end of data is owed once. */
static rh_t *lmtp_between_replies(void)
{
    return lmtp_first_tx(rcpts_ok, 3, delivered_a, 1, false);
}

static void test_lmtp_failure_between_replies(void **state)
{
    (void)state;
    check_failures_after(lmtp_between_replies, L451("EOD", "6") "LOST\n");
}

/* Released with the per-recipient replies due: the stream's future is the
 * server's, so the connection is closed. */
static void test_lmtp_release_during_replies(void **state)
{
    (void)state;
    rh_t *h = lmtp_first_tx(rcpts_ok, 2, delivered_a, 1, false);
    assert_int_equal(relay_release(&h->r), RELAY_DISCARD);
    rh_del(h);
}

/* ------------------------------------------------------------------ */
/* 8. Limits                                                           */
/* ------------------------------------------------------------------ */

static void test_too_many_commands(void **state)
{
    (void)state;
    rh_t *h = rh_leased(&CFG_MAX4, GREET EHLO_PIPE);
    assert_true(rh_mail(h, 1, "s@x.test"));
    uint32_t tok = 2;
    while (rh_rcpt(h, tok, "a@y.test")) {
        tok++;
        assert_true(tok < 100);
    }
    uint32_t refused = tok;
    assert_true(refused >= 5); /* at least max_due commands were taken */
    rh_take(h);
    rh_pump(h);
    tu_log_t want = { 0 };
    char b[200];
    snprintf(b, sizeof b, "REFUSED #%u 451 4.3.0 peer Error: too many commands in flight, try again later\n",
             refused);
    tu_puts(&want, b);
    snprintf(b, sizeof b, "REPLY MAIL #1 451 4.4.1 peer " LOST_TEXT "\n");
    tu_puts(&want, b);
    for (uint32_t t = 2; t < refused; t++) {
        snprintf(b, sizeof b, "REPLY RCPT #%u 451 4.4.1 peer " LOST_TEXT "\n", t);
        tu_puts(&want, b);
    }
    tu_puts(&want, "LOST\nCLOSE too_many_commands\n");
    LOG_IS(h, want.buf);
    uint32_t tokens[100];
    for (uint32_t t = 1; t < refused; t++)
        tokens[t - 1] = t;
    assert_true(routed_once_in_order(h, tokens, refused - 1, __func__));
    assert_dead(h);
    tu_free_log(&want);
    rh_del(h);
}

/* The FIFO is a ring that grows while wrapped: replies still come out in
 * command order. */
static void test_due_ring_wraps_and_grows(void **state)
{
    (void)state;
    static const relay_config_t cfg = { SLICE_INIT("gw.test"), false, 0, RELAY_TLS_OFF }; /* the default bound */
    rh_t *h = rh_leased(&cfg, GREET EHLO_PIPE);
    assert_true(rh_mail(h, 1, "s@x.test"));
    uint32_t tok = 2;
    for (; tok <= 8; tok++) /* 8 due: the first ring is full */
        assert_true(rh_rcpt(h, tok, "a@y.test"));
    rh_feeds(h, "250 m\r\n250 r\r\n250 r\r\n250 r\r\n250 r\r\n"); /* the head moves on */
    for (; tok <= 120; tok++)                                          /* wraps, then grows */
        assert_true(rh_rcpt(h, tok, "a@y.test"));
    assert_true(rh_data(h, tok));
    assert_int_equal(relay_due(&h->r), 121 - 5);
    tu_log_t srv = { 0 };
    for (uint32_t t = 6; t <= 120; t++)
        tu_puts(&srv, t % 7 ? "250 2.1.5 ok\r\n" : "550 5.1.1 no\r\n");
    tu_puts(&srv, "354 go\r\n");
    rh_feed(h, srv.buf, srv.len);
    uint32_t tokens[121];
    for (uint32_t t = 0; t < 121; t++)
        tokens[t] = t + 1;
    assert_true(routed_once_in_order(h, tokens, 121, __func__));
    assert_true(relay_in_body(&h->r));
    for (size_t i = 5; i < 120; i++)
        assert_int_equal(h->rec[i].code, h->rec[i].token % 7 ? 250 : 550);
    tu_free_log(&srv);
    rh_del(h);
}

/* ------------------------------------------------------------------ */
/* Regressions: defects found in core/relay.c, fixed                 */
/* ------------------------------------------------------------------ */

/* Run fn in a child: a sanitizer report there fails this test only (fn
 * fails with _exit(non-zero), and passes by returning). */
static bool survives(void (*fn)(void))
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        fn();
        _exit(0);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

/*
 * relay.h: max_due is "commands that may await their replies at once";
 * due_push() allows max_due + 4 ("the handshake and a RSET may add to a
 * full group", but neither can be in flight while an owner's group is).
 */
static void test_regression_max_due_is_off_by_four(void **state)
{
    (void)state;
    rh_t *h = rh_sent(&CFG_MAX4, GREET EHLO_PIPE, 1, false, NULL);
    assert_true(rh_rcpt(h, 3, "a@y.test"));
    assert_true(rh_rcpt(h, 4, "a@y.test"));
    assert_int_equal(relay_due(&h->r), 4);
    bool fifth = rh_rcpt(h, 5, "a@y.test"); /* the fifth command with max_due 4 */
    rh_del(h);
    assert_false(fifth);
}

/*
 * A transaction refused at MAIL leaves the relay in RELAY_TX (tx_open
 * false, nothing due): the owner's next transaction on the same lease is
 * refused "451 4.3.0 internal error", although the header says READY is
 * also the state "leased between transactions" and the server has nothing
 * open.
 */
static void test_regression_mail_refused_blocks_next_mail(void **state)
{
    (void)state;
    rh_t *h = rh_sent(&CFG_SMTP, GREET EHLO_PIPE, 1, false, "550 5.7.1 Sender refused\r\n503 5.5.1 need MAIL\r\n");
    assert_int_equal(relay_due(&h->r), 0);
    bool ok = rh_mail(h, 3, "other@x.test");
    const char *l = rh_log(h);
    bool refused = strstr(l, "REFUSED #3") != NULL;
    rh_del(h);
    assert_true(ok);
    assert_false(refused);
}

/* For the children: no cmocka asserts (they would longjmp into the
 * parent's runner state); any surprise is an exit code. */
static int quiet_feed(relay_t *r, const char *in, relay_event_t *last)
{
    size_t n = strlen(in), used = 0;
    int events = 0;
    for (int guard = 0; guard < 1000; guard++) {
        relay_event_t ev;
        enum relay_status st = relay_feed(r, in, n, &used, &ev);
        if (used > n)
            _exit(10);
        in += used, n -= used;
        if (st != RELAY_EVENT)
            return events;
        *last = ev;
        events++;
    }
    _exit(11);
}

/* A child's relay through its handshake, its output sent, leased. */
static void quiet_leased(relay_t *r, const relay_config_t *cfg, const char *hello)
{
    relay_event_t ev;
    relay_init(r, cfg);
    relay_connected(r);
    if (quiet_feed(r, hello, &ev) != 1 || ev.type != RELAY_EV_READY)
        _exit(2);
    relay_sent(r, relay_output(r).len);
    relay_lease(r);
}

/*
 * LMTP: a per-recipient reply with no text ("250 2.1.5", "250") reaches
 * lmtp_eod() with text = SLICE_NULL; memcpy(worst_text, NULL, 0) at
 * relay.c:271 is undefined behaviour (UBSan: "null pointer passed as
 * argument 2, which is declared to never be null").
 */
static void lmtp_textless_child(void)
{
    relay_t r;
    relay_event_t ev;
    smtp_reply_t ref;
    quiet_leased(&r, &CFG_LMTP, LMTP_HELLO);
    if (!relay_mail(&r, 1, SLICE_LIT("s@x.test"), &NO_PARAMS, &ref) ||
        !relay_rcpt(&r, 2, SLICE_LIT("a@y.test"), &ref) || !relay_data(&r, 3, &ref))
        _exit(3);
    if (quiet_feed(&r, "250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n", &ev) != 3 || !relay_eod(&r, 4, &ref))
        _exit(4);
    if (quiet_feed(&r, "250 2.1.5\r\n", &ev) != 1 || ev.kind != RK_EOD || ev.reply.code != 250)
        _exit(5);
    relay_free(&r);
}

static void test_regression_lmtp_reply_without_text(void **state)
{
    (void)state;
    assert_true(survives(lmtp_textless_child));
}

/*
 * The engine gives the null reverse-path <> as mailbox = {NULL, 0}
 * (addr_parse_path zeroes the path and returns at once); relay_mail() then
 * does memcpy(line + 11, NULL, 0) at relay.c:442: undefined behaviour, and
 * a UBSan abort for every bounce relayed by the sanitizer build.
 */
static void null_sender_child(void)
{
    smtp_path_t path;
    size_t used = 0;
    const char *why = NULL;
    if (addr_parse_path(SLICE_LIT("<>"), ADDR_REVERSE, true, &path, &used, &why) != ADDR_OK || !path.null)
        _exit(2);
    relay_t r;
    smtp_reply_t ref;
    quiet_leased(&r, &CFG_SMTP, GREET EHLO_PIPE);
    if (!relay_mail(&r, 1, path.mailbox, &NO_PARAMS, &ref))
        _exit(4);
    slice_t o = relay_output(&r);
    if (!slice_eq(o, SLICE_LIT("MAIL FROM:<>\r\n")))
        _exit(5);
    relay_free(&r);
}

static void test_regression_null_sender_slice_null(void **state)
{
    (void)state;
    assert_true(survives(null_sender_child));
}

/*
 * relay_feed(): when a reply that gives no event (the greeting, an LMTP
 * per-recipient reply, a drained reply) is followed in the same input by
 * bytes that fail the connection, *consumed is set to the bytes left after
 * the parsed replies instead of all of them (`*consumed = len` after len
 * was reduced). Harmless for a caller that feeds again, but it breaks the
 * "*consumed input bytes were used" contract.
 */
static void test_regression_consumed_after_failure(void **state)
{
    (void)state;
    relay_t r;
    relay_init(&r, &CFG_SMTP);
    relay_connected(&r);
    static const char in[] = "220 ds.test\r\nxyz\r\n";
    size_t used = 0;
    relay_event_t ev;
    enum relay_status st = relay_feed(&r, in, sizeof in - 1, &used, &ev);
    relay_free(&r);
    assert_int_equal(st, RELAY_CLOSE);
    assert_int_equal(used, sizeof in - 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        /* 1. handshake */
        cmocka_unit_test(test_fail_names),
        cmocka_unit_test(test_handshake_ehlo_caps),
        cmocka_unit_test(test_handshake_caps_each),
        cmocka_unit_test(test_handshake_lmtp_lhlo),
        cmocka_unit_test(test_greeting_not_220_fails),
        cmocka_unit_test(test_greeting_multiline),
        cmocka_unit_test(test_ehlo_5xx_helo_fallback),
        cmocka_unit_test(test_ehlo_4xx_fails),
        cmocka_unit_test(test_helo_refused_fails),
        cmocka_unit_test(test_lhlo_refused_fails),
        cmocka_unit_test(test_unexpected_reply_fails),
        cmocka_unit_test(test_handshake_failures),
        cmocka_unit_test(test_connected_twice),
        cmocka_unit_test(test_starttls_handshake),
        cmocka_unit_test(test_starttls_levels),
        cmocka_unit_test(test_starttls_handshake_failures),
        /* 2. splits */
        cmocka_unit_test(test_samples_whole),
        cmocka_unit_test(test_samples_byte_by_byte),
        cmocka_unit_test(test_samples_every_split),
        cmocka_unit_test(test_samples_every_pair),
        /* 3. commands out */
        cmocka_unit_test(test_pipelined_group_goes_out_together),
        cmocka_unit_test(test_partial_send),
        cmocka_unit_test(test_no_pipelining_one_at_a_time),
        cmocka_unit_test(test_paths_byte_for_byte),
        cmocka_unit_test(test_path_too_long),
        cmocka_unit_test(test_mail_params),
        cmocka_unit_test(test_smtputf8_to_server_without),
        cmocka_unit_test(test_size_over_server_limit),
        cmocka_unit_test(test_commands_in_wrong_state),
        /* 4. failure at every step */
        cmocka_unit_test(test_failure_at_every_step),
        cmocka_unit_test(test_server_refusal_at_every_step),
        cmocka_unit_test(test_server_421_at_every_step),
        cmocka_unit_test(test_failure_with_held_commands),
        cmocka_unit_test(test_failure_leased_idle),
        cmocka_unit_test(test_failure_twice),
        cmocka_unit_test(test_failure_events_one_at_a_time),
        /* 5. the client's view */
        cmocka_unit_test(test_client_success),
        cmocka_unit_test(test_client_failure_at_every_step),
        cmocka_unit_test(test_client_server_refusals),
        cmocka_unit_test(test_client_relay_refusals),
        cmocka_unit_test(test_client_paths_forwarded),
        cmocka_unit_test(test_client_many_failures_no_421),
        cmocka_unit_test(test_client_lost_mid_body_long),
        /* 6. release */
        cmocka_unit_test(test_release_after_complete_tx),
        cmocka_unit_test(test_release_mail_accepted_rset),
        cmocka_unit_test(test_release_rcpt_replies_drained),
        cmocka_unit_test(test_release_everything_due),
        cmocka_unit_test(test_release_drops_held_commands),
        cmocka_unit_test(test_release_discard),
        cmocka_unit_test(test_release_rset_refused),
        cmocka_unit_test(test_release_then_failure_routes_nothing),
        cmocka_unit_test(test_release_idle_then_reply),
        /* 7. LMTP */
        cmocka_unit_test(test_lmtp_worst_reply),
        cmocka_unit_test(test_lmtp_next_transaction),
        cmocka_unit_test(test_lmtp_failure_between_replies),
        cmocka_unit_test(test_lmtp_release_during_replies),
        /* 8. limits */
        cmocka_unit_test(test_too_many_commands),
        cmocka_unit_test(test_due_ring_wraps_and_grows),
        /* known bugs */
        cmocka_unit_test(test_regression_max_due_is_off_by_four),
        cmocka_unit_test(test_regression_mail_refused_blocks_next_mail),
        cmocka_unit_test(test_regression_lmtp_reply_without_text),
        cmocka_unit_test(test_regression_null_sender_slice_null),
        cmocka_unit_test(test_regression_consumed_after_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

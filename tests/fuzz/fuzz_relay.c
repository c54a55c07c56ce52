/*
 * fuzz_relay.c - libFuzzer target over the client side of one downstream
 * SMTP/LMTP connection (core/relay.h), as a small interpreter: the input is
 * a program of operations on one relay_t, checked against a model the
 * harness keeps of what the header promises.
 *
 * Input: a 3-byte header (4 bytes when h[1] bit 7 is set), then operations
 * (at most MAX_OPS, input at most MAX_INPUT bytes; an argument past the end
 * reads as 0).
 *   h[0] bit 0: LMTP (LHLO) instead of SMTP (EHLO)
 *        bits 1-2: prelude: 0 none (the program connects and greets itself);
 *          1 connect, 220, EHLO reply with PIPELINING, SIZE 1000, 8BITMIME,
 *          SMTPUTF8; 2 the same without PIPELINING; 3 SMTP: 220, 502 to
 *          EHLO, 250 to HELO (no extensions); LMTP: a plain LHLO reply
 *        bit 3: lease the connection once the prelude made it ready
 *        bit 4: lazy owner: after each operation take at most 1-4 events
 *          (h[2] bits 2-3) and leave the rest, bytes and due events, for
 *          later operations (an owner that acts from inside its callbacks);
 *          otherwise every operation is followed by a full drain
 *        bits 5-6: our HELO name: "gw.fuzz", "", 255 octets (a DNS name
 *          at its longest), 1016 octets (an EHLO line of 1023)
 *        bit 7: send everything after each operation (relay_sent of all)
 *   h[1] bits 0-2: max_due 0 (the default, 256), 1, 2, 3, 4, 5, 8, 64
 *        bits 3-6: the failure that ends the run (1 + v % 15: every reason;
 *          v 12-14 are the TLS ones, 15 wraps to CLOSED)
 *        bit 7: h[3] follows (STARTTLS); clear: cfg.starttls RELAY_TLS_OFF
 *   h[2] bits 0-1: first token 1, 0, 0x7ffffffe, 0xfffffff8
 *        bits 4-7: piece size for server bytes (0: whole)
 *   h[3] bits 0-1: cfg.starttls: RELAY_TLS_OFF, MAY, REQUIRE, MAY
 *        bit 2: the prelude's server offers STARTTLS (its EHLO/LHLO reply
 *          with the keyword; prelude 3 SMTP: EHLO is answered with STARTTLS
 *          this time, and the 502/HELO fallback happens after the TLS
 *          handshake), says 220 to STARTTLS, the handshake completes
 *          (relay_tls_done) and the prelude's reply answers the new EHLO
 *        bit 3: with bit 2: the prelude stops at the STARTTLS event (the
 *          program plays the handshake itself: TLSDONE or FAIL)
 * Operations (op byte % 17), with their argument bytes:
 *    0 FEED a          server bytes: dictionary entry a
 *    1 FEED2 a b       two dictionary entries in one read
 *    2 RAW n bytes     n % 64 raw fuzzer bytes
 *    3 AUTO a v        a plausible reply to each of 1 + a % 8 commands in
 *                      flight (2 bits of v each: ok, 4xx, 5xx, other ok);
 *                      nothing in flight and a & 8: an unsolicited 250
 *    4 CONNECT         relay_connected
 *    5 LEASE           relay_lease, if relay_ready() (as the pool does)
 *    6 MAIL m [raw] p  relay_mail: mailbox m (see mailbox()), params p:
 *                      bit 0 SMTPUTF8, 1 SIZE, 2-3 BODY=, 4-6 SIZE value
 *    7 RCPT m [raw]    relay_rcpt
 *    8 DATA            relay_data
 *    9 EOD             relay_eod
 *   10 GROUP a         MAIL (<> if a & 0x80), a & 7 RCPTs (a & 8: to
 *                      a@y.test, else postmaster), DATA
 *   11 SENT a          relay_sent of a & 0x7f octets, or everything (+3)
 *                      when a & 0x80
 *   12 FAIL a          relay_fail(1 + a % 15): every reason (RELAY_FAIL_TLS:
 *                      the caller's TLS handshake failed)
 *   13 RELEASE         relay_release, if leased
 *   14 PIECE a         piece size a % 32 for later feeds (0: whole)
 *   15 PUMP            only the drain that follows every operation
 *   16 TLSDONE         the TLS handshake completed: relay_tls_done (in any
 *                      state: outside RELAY_TLS it must do nothing). Server
 *                      bytes still pending in RELAY_TLS came in plaintext
 *                      before the handshake: they are fed first (as the
 *                      caller's loop does), and fail the connection
 * The owner keeps the rules the SMTP engine keeps: it leases only a ready
 * connection, releases only its lease, and issues nothing after a DATA
 * until DATA's reply (DATA ends a pipelined group, RFC 2920). Commands in
 * the wrong state are issued (the relay must refuse them). At the end the
 * rest is fed, the connection fails (h[1]) and is drained to RELAY_CLOSE.
 *
 * The model: every line the relay is to send (the greeting as a line of
 * nothing, EHLO/LHLO/HELO, STARTTLS, the owner's commands, RSET, the end
 * marker) is an entry in one FIFO, sent or held; a second dsr_t is fed
 * exactly the bytes relay_feed() consumed and each reply is matched to the
 * oldest entry in flight. From that the harness predicts every event
 * (READY, STARTTLS, REPLY with code, enhanced code, text and flags, the
 * LMTP worst reply, IDLE), every failure and its reason, every refusal of
 * a command, every release's verdict and every byte of output, and
 * compares.
 * STARTTLS (cfg.starttls MAY or REQUIRE, before the handshake): a 250 to
 * EHLO/LHLO with the STARTTLS keyword is followed by "STARTTLS" on the
 * output and no event; without the keyword (or after HELO: no extensions)
 * REQUIRE fails with tls_not_offered and MAY gives READY. STARTTLS's 220
 * gives the STARTTLS event and any byte fed after it fails the connection
 * (unexpected_reply: plaintext injected after the 220); another reply fails
 * it with starttls_refused under REQUIRE or when below 400 (a 3xx is
 * unexpected_reply, as for any command but DATA), and under MAY a 4xx/5xx
 * gives READY with the plaintext EHLO's extensions. relay_tls_done() forgets
 * the extensions (caps and SIZE 0), puts EHLO/LHLO on the output again, and
 * READY follows its 250 (or HELO's, after a 5xx; never a second STARTTLS).
 * Checks (__builtin_trap):
 *  - every token the owner sent a command for gets exactly one REPLY, in
 *    command order, unless released first (then none ever does, not even
 *    the rest of a failure the owner was in the middle of); a REPLY
 *    carries only an outstanding token; the failure's replies are exactly
 *    451 4.4.1 with SMTP_R_PEER and the relay's text; a server's 4xx is
 *    flagged SMTP_R_PEER, 2xx/3xx/5xx are not;
 *  - after RELAY_CLOSE only RELAY_CLOSE (all input consumed), no event;
 *    LOST at most once per lease, only for a lease, after its REPLYs;
 *  - relay_output() holds whole CRLF lines, each the next one predicted (a
 *    MAIL's parameters in any order, only those the server offered);
 *    without PIPELINING nothing goes out beyond the one command in flight;
 *    the bytes not yet sent never change; nothing after a failure;
 *  - READY once per connection, STARTTLS at most once, before READY and
 *    only with cfg.starttls set; IDLE only after a DRAINING release, with
 *    nothing due; relay_ready(), relay_in_body(), relay_due(), caps,
 *    size_max, tls, messages and the failure reason agree with the model;
 *  - the feed contract: consumed <= len; AGAIN with all input used; an
 *    event's reply ends where the consumed bytes end; each piece is its own
 *    heap block, freed after its call (ASan sees any stale pointer);
 *  - every loop is bounded: a relay_feed() that keeps giving events traps.
 * The seeds in corpus/fuzz_relay/ are written by gen-corpus.py (not yet the
 * tls-* ones: h[3] and TLSDONE). With FUZZ_RELAY_TRACE=1 in the environment
 * a run prints its operations, the bytes fed and sent and the events.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzzutil.h"
#include "relay.h"

#define MAX_INPUT 4096
#define MAX_OPS 1024
#define MAX_LINES 16384 /* at most 10 lines per operation, and RSET/handshake */
#define ARENA_MAX (1u << 21)
#define FEED_GUARD 100000
#define LOST_TEXT "Error: downstream server unavailable, try again later"

/* Checks that print what the model expected before trapping. */
#define CHECKF(c, ...)                                                                                                 \
    do {                                                                                                               \
        if (!(c)) {                                                                                                    \
            fprintf(stderr, "fuzz_relay: ");                                                                           \
            fprintf(stderr, __VA_ARGS__);                                                                              \
            fprintf(stderr, "\n");                                                                                     \
            CHECK(c);                                                                                                  \
        }                                                                                                              \
    } while (0)

/* FUZZ_RELAY_TRACE=1 in the environment: print operations, output and events. */
static bool trace;
#define TRACE(...)                                                                                                     \
    do {                                                                                                               \
        if (trace)                                                                                                     \
            fprintf(stderr, __VA_ARGS__);                                                                              \
    } while (0)

enum mstate {
    M_CONNECTING,
    M_GREETING,
    M_HELLO,
    M_STARTTLS, /* STARTTLS sent */
    M_TLS,      /* its 220 in: the caller's handshake runs, no byte may come */
    M_READY,
    M_TX,
    M_BODY,
    M_EOD,
    M_DRAIN,
    M_DEAD
};

/* MAIL parameters expected on the line, in any order. */
#define P_8BIT 1
#define P_UTF8 2
#define P_SIZE 4

typedef struct mline {
    uint8_t kind;   /* enum relay_kind */
    bool routed;    /* the owner waits for its reply */
    uint8_t params; /* MAIL: P_* */
    uint32_t token;
    uint32_t need; /* replies still due (LMTP end of data: one per accepted RCPT) */
    uint32_t off;  /* the line (MAIL: up to '>') in the arena */
    uint32_t len;  /* 0: the greeting, nothing sent */
    uint64_t size; /* MAIL: SIZE= */
} mline_t;

typedef struct want {
    int type; /* enum relay_ev_type; 0: RELAY_CLOSE */
    uint8_t kind;
    uint32_t token;
    int code;
    const char *esc;
    slice_t text;
    uint8_t flags;
} want_t;

typedef struct fz {
    relay_config_t cfg;
    relay_t r;
    bool lazy, send_all;
    uint32_t budget;
    size_t piece;
    uint32_t next_token;
    uint32_t limit; /* max_due as the relay reads it */

    /* the model */
    int st;           /* enum mstate */
    bool owned;       /* the relay's owner (a lease until release) */
    bool lease_valid; /* the owner's lease: until release or LOST */
    bool tx_open;     /* the server holds a transaction */
    bool lost_due;
    bool closed;
    bool discarded; /* released with DISCARD: the pool closes it, nobody leases it */
    bool draining;  /* released with DRAINING, IDLE not yet */
    bool tls;       /* relay_tls_done() took: STARTTLS is not asked for again */
    uint8_t fail;
    uint32_t caps;
    uint64_t size_max;
    uint32_t rcpt_ok, messages;
    mline_t q[MAX_LINES];
    uint32_t qhead; /* oldest unanswered */
    uint32_t qemit; /* first held (not sent) */
    uint32_t qn;    /* entries */
    uint32_t qattr; /* first sent entry not yet seen in the output */
    uint32_t qfail; /* after a failure: the next entry to answer */
    char *arena;
    uint32_t arena_len;
    int worst; /* LMTP end of data: the worst reply so far */
    char worst_esc[RQ_ESC_MAX + 1];
    char worst_text[DSR_LINE_MAX];
    size_t worst_len;
    char esc[RQ_ESC_MAX + 1];
    dsr_t mirror;

    /* the owner's view, kept apart from the model */
    uint32_t own_tok[MAX_LINES];
    uint8_t own_kind[MAX_LINES];
    uint32_t own_head, own_n;
    unsigned ready_events, lost_events, starttls_events;

    /* the relay's unsent output as last seen */
    char *shadow;
    size_t shadow_len, shadow_cap;
    /* server bytes not fed yet */
    char *pend;
    size_t pend_len, pend_cap;
} fz_t;

/* ---- fixed material ---- */

static const char *const dict[] = {
    "220 ds.fuzz ESMTP\r\n",
    "220-ds.fuzz ESMTP\r\n220 welcome\r\n",
    "554 5.3.2 no service\r\n",
    "421 4.3.2 shutting down\r\n",
    "250-ds.fuzz\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 SMTPUTF8\r\n",
    "250-ds.fuzz\r\n250 PIPELINING\r\n",
    "250-ds.fuzz\r\n250 8BITMIME\r\n",
    "250 ds.fuzz\r\n",
    "250-ds.fuzz\r\n250-SIZE\r\n250-SMTPUTF8\r\n250 PIPELINING\r\n",
    "250-ds.fuzz\r\n250-SIZE 0\r\n250-CHUNKING\r\n250 DSN\r\n",
    "502 5.5.2 Error: command not recognized\r\n",
    "500 unknown\r\n",
    "250 2.1.0 Sender ok\r\n",
    "250 2.1.5 Recipient ok\r\n",
    "250 ok\r\n",
    "250\r\n",
    "250 2.0.0 Ok: queued as 4XyZ\r\n",
    "354 End data with <CR><LF>.<CR><LF>\r\n",
    "354 go\r\n",
    "334 VXNlcm5hbWU6\r\n",
    "450 4.2.0 mailbox busy\r\n",
    "451 4.3.0 try again later\r\n",
    "452 4.5.3 too many recipients\r\n",
    "421 4.4.2 timeout\r\n",
    "550 5.1.1 no such user\r\n",
    "554 5.7.1 rejected\r\n",
    "503 5.5.1 bad sequence of commands\r\n",
    "552 5.3.4 message too big\r\n",
    "550-5.1.1 the mailbox\r\n550-5.1.1 does not\r\n550 5.1.1 exist\r\n",
    "250-2.1.5 first\r\n250 2.1.5 second\r\n",
    "251 2.1.5 will forward\r\n",
    "451 4.4.1 " LOST_TEXT "\r\n",
    "garbage\r\n",
    "25",
    "0 ok\r\n",
    "\n",
    "\r\n",
    "\r",
    "250 bare lf\n",
    "250-",
    "600 bad class\r\n",
    "250-x\r\n251 mismatch\r\n",
    "250 2.9.9999 odd code\r\n",
    "550 4.1.1 wrong class\r\n",
    "220 lmtp.fuzz LMTP\r\n",
    "250-lmtp.fuzz\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n",
    "250 2.1.5 <a@y.test> delivered\r\n",
    "452 4.2.2 <b@y.test> over quota\r\n",
    "550 5.1.1 <c@y.test> unknown\r\n",
    NULL, /* a NUL byte: dict_entry() */
    NULL, /* a reply line of DSR_LINE_MAX octets (the longest) */
    NULL, /* one octet longer */
    NULL, /* a 250 with a 1000-line EHLO list */
    /* STARTTLS (after the specials: the indices before keep their meaning) */
    "250-ds.fuzz\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-STARTTLS\r\n250 SMTPUTF8\r\n",
    "250-ds.fuzz\r\n250-SIZE 2000\r\n250 STARTTLS\r\n",
    "250-ds.fuzz\r\n250-starttls\r\n250 pipelining\r\n",
    "250 STARTTLS\r\n", /* the first line is the server's name, not a keyword */
    "250-lmtp.fuzz\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 ENHANCEDSTATUSCODES\r\n",
    "220 2.0.0 Ready to start TLS\r\n",
    "220-ds.fuzz\r\n220 2.0.0 go ahead\r\n",
    "220 2.0.0 Ready to start TLS\r\n250-ds.fuzz\r\n250 PIPELINING\r\n", /* RFC 3207 injection */
    "220 go\r\n250 2.1.0 Sender ok\r\n",
    "220 go\r\nx",
    "454 4.7.0 TLS not available due to temporary reason\r\n",
    "554 5.7.3 TLS not supported\r\n",
    "501 5.5.4 Syntax error (no parameters allowed)\r\n",
    "502 5.5.1 STARTTLS not recognized\r\n",
    "230 2.0.0 odd\r\n",
};
#define NDICT (sizeof dict / sizeof dict[0])
#define DICT_SPECIAL 49 /* the first of the four NULL entries */

static char long_ok[DSR_LINE_MAX + 1], long_bad[DSR_LINE_MAX + 2];
static char *ehlo_many;
static size_t ehlo_many_len;
static char mb_256[ADDR_PATH_MAX + 1], mb_257[ADDR_PATH_MAX + 2], mb_255[ADDR_PATH_MAX], mb_1000[1001];

static slice_t dict_entry(uint8_t a)
{
    size_t i = a % NDICT;
    if (dict[i])
        return slice_make(dict[i], strlen(dict[i]));
    switch (i - DICT_SPECIAL) {
    case 0:
        return slice_make("\0", 1);
    case 1:
        return slice_make(long_ok, sizeof long_ok - 1);
    case 2:
        return slice_make(long_bad, sizeof long_bad - 1);
    default:
        return slice_make(ehlo_many, ehlo_many_len);
    }
}

static void init_once(void)
{
    static bool done;
    if (done)
        return;
    done = true;
    for (size_t i = 0; i < NDICT; i++)
        CHECK((dict[i] == NULL) == (i >= DICT_SPECIAL && i < DICT_SPECIAL + 4));
    /* "250 xxx...\r\n": DSR_LINE_MAX octets with its CRLF, then one more */
    memset(long_ok, 'x', sizeof long_ok - 1);
    memcpy(long_ok, "250 ", 4);
    memcpy(long_ok + sizeof long_ok - 3, "\r\n", 2);
    memset(long_bad, 'y', sizeof long_bad - 1);
    memcpy(long_bad, "250 ", 4);
    memcpy(long_bad + sizeof long_bad - 3, "\r\n", 2);
    size_t cap = 1000 * 16 + 64;
    ehlo_many = malloc(cap);
    CHECK(ehlo_many != NULL);
    size_t n = 0;
    for (int i = 0; i < 999; i++)
        n += (size_t)snprintf(ehlo_many + n, cap - n, "250-X-KW%d\r\n", i);
    n += (size_t)snprintf(ehlo_many + n, cap - n, "250 PIPELINING\r\n");
    ehlo_many_len = n;
    /* mailboxes at and around ADDR_PATH_MAX */
    memset(mb_256, 'a', ADDR_PATH_MAX);
    memcpy(mb_256 + ADDR_PATH_MAX - 7, "@x.test", 7);
    memset(mb_257, 'b', ADDR_PATH_MAX + 1);
    memcpy(mb_257 + ADDR_PATH_MAX + 1 - 7, "@x.test", 7);
    memset(mb_255, 'c', ADDR_PATH_MAX - 1);
    memcpy(mb_255 + ADDR_PATH_MAX - 1 - 7, "@x.test", 7);
    memset(mb_1000, 'd', 1000);
}

/* ---- the input ---- */

typedef struct prog {
    const uint8_t *p;
    size_t n, pos;
} prog_t;

static uint8_t arg(prog_t *g)
{
    return g->pos < g->n ? g->p[g->pos++] : 0;
}

/* A mailbox: m % 13 picks one; 11 takes a length byte and that many raw
 * bytes (CR and LF made '_': the engine never passes a line end). */
static slice_t mailbox(prog_t *g, uint8_t m, char raw[64])
{
    switch (m % 13) {
    case 0:
        return SLICE_NULL; /* <> as the engine gives it */
    case 1:
        return SLICE_LIT("s@x.test");
    case 2:
        return SLICE_LIT("user@example.com");
    case 3:
        return SLICE_LIT("\"quoted local\"@example.org");
    case 4:
        return SLICE_LIT("@relay.example:user@example.org");
    case 5:
        return SLICE_LIT("j\xc3\xbcrgen@b\xc3\xbc"
                         "cher.example");
    case 6:
        return slice_make(mb_256, ADDR_PATH_MAX);
    case 7:
        return slice_make(mb_257, ADDR_PATH_MAX + 1);
    case 8:
        return slice_make(mb_255, ADDR_PATH_MAX - 1);
    case 9:
        return slice_make(mb_1000, 1000);
    case 10:
        return SLICE_LIT("postmaster");
    case 11: {
        size_t l = arg(g) % 64;
        for (size_t i = 0; i < l; i++) {
            char c = (char)arg(g);
            raw[i] = c == '\r' || c == '\n' ? '_' : c;
        }
        return slice_make(raw, l);
    }
    default:
        return slice_make("", 0); /* empty, not NULL */
    }
}

/* ---- model: the FIFO of lines ---- */

static uint32_t unanswered(const fz_t *f)
{
    return f->qn - f->qhead;
}

static bool room(const fz_t *f, uint32_t lines)
{
    return f->qn + lines + 8 <= MAX_LINES && f->arena_len + lines * (ADDR_PATH_MAX + 64) + 4096 <= ARENA_MAX;
}

/* Append an expected line. A command goes out at once with PIPELINING or
 * with nothing due; otherwise it is held until the replies before it. */
static mline_t *push(fz_t *f, uint8_t kind, bool routed, uint32_t token, const char *bytes, size_t len)
{
    CHECKF(f->qn < MAX_LINES && f->arena_len + len <= ARENA_MAX, "harness: model full");
    bool send = (f->caps & DSR_CAP_PIPELINING) || f->qhead == f->qn;
    mline_t *e = &f->q[f->qn];
    *e = (mline_t){kind, routed, 0, token, 1, f->arena_len, (uint32_t)len, 0};
    if (len)
        memcpy(f->arena + f->arena_len, bytes, len);
    f->arena_len += (uint32_t)len;
    if (send) {
        CHECKF(f->qemit == f->qn, "model: a command would overtake a held one");
        f->qemit++;
    }
    f->qn++;
    return e;
}

static void die(fz_t *f, enum relay_fail why)
{
    if (f->st == M_DEAD)
        return;
    f->st = M_DEAD;
    f->fail = (uint8_t)why;
    f->lost_due = f->owned;
    f->qfail = f->qhead;
    f->shadow_len = 0; /* nothing of the output goes out any more */
}

/* The next of a failure's events: a 451 for each command still owed a reply
 * to the owner, in order, then LOST for a lease, then CLOSE. */
static void next_fail(fz_t *f, want_t *w)
{
    static const char esc441[] = "4.4.1";
    while (f->qfail < f->qn) {
        const mline_t *e = &f->q[f->qfail++];
        if (!e->routed || e->kind < RK_MAIL)
            continue;
        *w = (want_t){RELAY_EV_REPLY, e->kind, e->token, 451, esc441, SLICE_LIT(LOST_TEXT), SMTP_R_PEER};
        return;
    }
    if (f->lost_due) {
        f->lost_due = false;
        *w = (want_t){.type = RELAY_EV_LOST};
        return;
    }
    *w = (want_t){.type = 0};
}

/* EHLO/LHLO, or HELO; false when the line cannot be made (too long). */
static bool hello_line(fz_t *f, bool helo)
{
    char line[DSR_LINE_MAX + 64];
    const char *verb = helo ? "HELO" : f->cfg.lmtp ? "LHLO" : "EHLO";
    size_t n = 5 + f->cfg.helo.len + 2; /* at most 1023: every name the harness uses fits */
    f->st = M_HELLO;
    memcpy(line, verb, 4);
    line[4] = ' ';
    if (f->cfg.helo.len)
        memcpy(line + 5, f->cfg.helo.ptr, f->cfg.helo.len);
    memcpy(line + n - 2, "\r\n", 2);
    push(f, helo ? RK_HELO : RK_HELLO, false, 0, line, n);
    return true;
}

/* Released and nothing due: RSET if a transaction is open, else IDLE. */
static int drained(fz_t *f, want_t *w)
{
    if (f->st != M_DRAIN || f->qhead != f->qn)
        return 0;
    if (f->tx_open) {
        push(f, RK_RSET, false, 0, "RSET\r\n", 6);
        return 0;
    }
    f->st = M_READY;
    f->draining = false;
    *w = (want_t){.type = RELAY_EV_IDLE};
    return 1;
}

static void reply_of(fz_t *f, const dsr_reply_t *dr, want_t *w, uint8_t kind, uint32_t token)
{
    const char *esc = NULL;
    if (dr->esc.len) {
        CHECK(dr->esc.len <= RQ_ESC_MAX);
        memcpy(f->esc, dr->esc.ptr, dr->esc.len);
        f->esc[dr->esc.len] = 0;
        esc = f->esc;
    }
    *w = (want_t){
        RELAY_EV_REPLY, kind, token, dr->code, esc, dr->text, dr->code >= 400 && dr->code < 500 ? SMTP_R_PEER : 0};
}

/*
 * One reply the relay parsed, matched to the oldest line in flight.
 * Returns 1 with *w the event it must give, 0 for none, -1: the connection
 * fails (the model is dead with the reason).
 */
static int model_reply(fz_t *f, const dsr_reply_t *dr, want_t *w)
{
    if (f->qhead == f->qemit) { /* nothing in flight */
        die(f, RELAY_FAIL_UNEXPECTED);
        return -1;
    }
    mline_t *e = &f->q[f->qhead];
    int code = dr->code;
    bool inter = code >= 300 && code < 400;
    /* 354 only for DATA, and DATA's only positive reply is 354 */
    if ((e->kind == RK_DATA && code < 400 && code != 354) || (e->kind != RK_DATA && inter)) {
        die(f, RELAY_FAIL_UNEXPECTED);
        return -1;
    }
    int res = 0;
    switch (e->kind) {
    case RK_GREETING:
        f->qhead++;
        if (code != 220) {
            die(f, RELAY_FAIL_GREETING);
            return -1;
        }
        if (!hello_line(f, false))
            return -1;
        break;
    case RK_HELLO:
    case RK_HELO:
        f->qhead++;
        if (code != 250) {
            if (e->kind == RK_HELLO && !f->cfg.lmtp && code >= 500) {
                hello_line(f, true); /* same length as the EHLO line: fits */
                break;
            }
            die(f, RELAY_FAIL_HELLO);
            return -1;
        }
        f->caps = e->kind == RK_HELLO ? dr->caps : 0;
        f->size_max = e->kind == RK_HELLO ? dr->size_max : 0;
        if (f->cfg.starttls != RELAY_TLS_OFF && !f->tls) {
            if (f->caps & DSR_CAP_STARTTLS) {
                f->st = M_STARTTLS; /* nothing else is due: it goes out */
                push(f, RK_STARTTLS, false, 0, "STARTTLS\r\n", 10);
                break;
            }
            if (f->cfg.starttls == RELAY_TLS_REQUIRE) {
                die(f, RELAY_FAIL_NO_TLS);
                return -1;
            }
        }
        f->st = M_READY;
        *w = (want_t){.type = RELAY_EV_READY};
        res = 1;
        break;
    case RK_STARTTLS:
        f->qhead++;
        if (code == 220) {
            f->st = M_TLS;
            *w = (want_t){.type = RELAY_EV_STARTTLS};
            res = 1;
            break;
        }
        if (f->cfg.starttls == RELAY_TLS_REQUIRE || code < 400) {
            die(f, RELAY_FAIL_TLS_REFUSED);
            return -1;
        }
        f->st = M_READY; /* MAY: plaintext, with the plaintext EHLO's extensions */
        *w = (want_t){.type = RELAY_EV_READY};
        res = 1;
        break;
    case RK_RSET:
        f->qhead++;
        if (code != 250) {
            die(f, RELAY_FAIL_RSET);
            return -1;
        }
        f->tx_open = false;
        res = drained(f, w);
        break;
    case RK_EOD: {
        want_t one;
        reply_of(f, dr, &one, RK_EOD, e->token);
        if (f->cfg.lmtp && code > f->worst) { /* the first of the worst */
            f->worst = code;
            snprintf(f->worst_esc, sizeof f->worst_esc, "%s", one.esc ? one.esc : "");
            f->worst_len = dr->text.len < sizeof f->worst_text ? dr->text.len : sizeof f->worst_text - 1;
            if (f->worst_len)
                memcpy(f->worst_text, dr->text.ptr, f->worst_len);
        }
        if (f->cfg.lmtp && e->need > 1) {
            e->need--;
            break;
        }
        f->qhead++;
        f->tx_open = false;
        f->rcpt_ok = 0;
        f->messages++;
        if (f->st != M_DRAIN)
            f->st = M_READY;
        if (!e->routed) {
            res = drained(f, w);
            break;
        }
        if (f->cfg.lmtp)
            one = (want_t){RELAY_EV_REPLY,
                           RK_EOD,
                           e->token,
                           f->worst,
                           f->worst_esc[0] ? f->worst_esc : NULL,
                           slice_make(f->worst_text, f->worst_len),
                           f->worst >= 400 && f->worst < 500 ? SMTP_R_PEER : 0};
        *w = one;
        res = 1;
        break;
    }
    default: /* MAIL, RCPT, DATA */
        f->qhead++;
        if (e->kind == RK_MAIL && code < 300)
            f->tx_open = true;
        if (e->kind == RK_RCPT && code < 300)
            f->rcpt_ok++;
        if (e->kind == RK_DATA && code == 354) {
            if (!e->routed) {
                die(f, RELAY_FAIL_ORPHAN_DATA);
                return -1;
            }
            f->st = M_BODY;
        }
        /* refused at MAIL and every reply in: nothing is open */
        if (f->st == M_TX && !f->tx_open && f->qhead == f->qn)
            f->st = M_READY;
        if (!e->routed) {
            res = drained(f, w);
            break;
        }
        reply_of(f, dr, w, e->kind, e->token);
        res = 1;
        break;
    }
    /* the next held command goes out once nothing is in flight */
    if (f->qhead == f->qemit && f->qemit < f->qn)
        f->qemit++;
    return res;
}

/* ---- output ---- */

/* How many bytes of p the expected line e is, or SIZE_MAX if it is not there. */
static size_t match_line(const fz_t *f, const mline_t *e, const char *p, size_t n)
{
    const char *x = f->arena + e->off;
    if (e->kind != RK_MAIL)
        return n >= e->len && memcmp(p, x, e->len) == 0 ? e->len : SIZE_MAX;
    /* "MAIL FROM:<path>", then the parameters in any order, then CRLF */
    char size_param[32];
    snprintf(size_param, sizeof size_param, "SIZE=%llu", (unsigned long long)e->size);
    const char *names[3] = {"BODY=8BITMIME", "SMTPUTF8", size_param};
    size_t total = e->len + 2;
    for (int i = 0; i < 3; i++)
        if (e->params & (1u << i))
            total += 1 + strlen(names[i]);
    if (n < total || memcmp(p, x, e->len) != 0 || memcmp(p + total - 2, "\r\n", 2) != 0)
        return SIZE_MAX;
    unsigned seen = 0;
    size_t i = e->len;
    while (i < total - 2) {
        if (p[i] != ' ')
            return SIZE_MAX;
        size_t j = i + 1;
        while (j < total - 2 && p[j] != ' ')
            j++;
        bool found = false;
        for (int k = 0; k < 3 && !found; k++) {
            if ((e->params & (1u << k)) && !(seen & (1u << k)) && strlen(names[k]) == j - i - 1 &&
                memcmp(p + i + 1, names[k], j - i - 1) == 0) {
                seen |= 1u << k;
                found = true;
            }
        }
        if (!found)
            return SIZE_MAX;
        i = j;
    }
    return seen == e->params ? total : SIZE_MAX;
}

/* Append to one of the harness's growing byte buffers. */
static void bytes_put(char **buf, size_t *len, size_t *cap, const char *p, size_t n)
{
    if (*len + n > *cap) {
        *cap = (*len + n) * 2 + 256;
        *buf = realloc(*buf, *cap);
        CHECK(*buf != NULL);
    }
    memcpy(*buf + *len, p, n);
    *len += n;
}

static void shadow_put(fz_t *f, const char *p, size_t n)
{
    bytes_put(&f->shadow, &f->shadow_len, &f->shadow_cap, p, n);
}

/* The output must be what was there plus the lines sent since, whole. */
static void observe(fz_t *f)
{
    slice_t o = relay_output(&f->r);
    if (f->st == M_DEAD) {
        CHECKF(o.len == 0, "output after the failure: %zu bytes", o.len);
        f->shadow_len = 0;
        f->qattr = f->qemit;
        return;
    }
    CHECKF(o.len >= f->shadow_len && (f->shadow_len == 0 || memcmp(o.ptr, f->shadow, f->shadow_len) == 0),
           "bytes waiting to be sent changed");
    const char *p = o.len ? o.ptr + f->shadow_len : ""; /* o.ptr is NULL before any output */
    size_t n = o.len - f->shadow_len;
    for (; f->qattr < f->qemit; f->qattr++) {
        const mline_t *e = &f->q[f->qattr];
        if (e->len == 0)
            continue; /* the greeting */
        size_t l = match_line(f, e, p, n);
        CHECKF(l != SIZE_MAX, "output: line %u (kind %d) expected \"%.*s\", got \"%.*s\"", f->qattr, e->kind,
               (int)e->len, f->arena + e->off, (int)(n > 300 ? 300 : n), p);
        TRACE("  out: %.*s", (int)l, p);
        shadow_put(f, p, l);
        p += l, n -= l;
    }
    CHECKF(n == 0, "output: %zu unexpected bytes \"%.*s\" (%u held, %u in flight)", n, (int)(n > 300 ? 300 : n), p,
           f->qn - f->qemit, f->qemit - f->qhead);
}

/* After every relay call: the output and what the accessors say. */
static void after_call(fz_t *f)
{
    observe(f);
    if (f->closed)
        return;
    CHECKF(relay_ready(&f->r) == (f->st == M_READY && !f->owned), "relay_ready() %d, model state %d owned %d",
           relay_ready(&f->r), f->st, f->owned);
    CHECKF(relay_in_body(&f->r) == (f->st == M_BODY), "relay_in_body() %d, model state %d", relay_in_body(&f->r),
           f->st);
    if (f->st != M_DEAD)
        CHECKF(relay_due(&f->r) == unanswered(f), "relay_due() %u, model %u", relay_due(&f->r), unanswered(f));
    else
        CHECKF(f->r.fail == f->fail, "failure reason %s, model %s", relay_fail_name((enum relay_fail)f->r.fail),
               relay_fail_name((enum relay_fail)f->fail));
    CHECK(f->r.messages == f->messages);
    CHECKF(f->r.tls == f->tls, "tls %d, model %d", f->r.tls, f->tls);
    /* at every step: after relay_tls_done() none of the plaintext EHLO's */
    CHECKF(f->r.caps == f->caps && f->r.size_max == f->size_max, "caps %#x/%llu, model %#x/%llu", f->r.caps,
           (unsigned long long)f->r.size_max, f->caps, (unsigned long long)f->size_max);
}

/* ---- events ---- */

static const char *ev_name(int t)
{
    static const char *const n[] = {"CLOSE", "READY", "REPLY", "LOST", "IDLE", "STARTTLS"};
    return t >= 0 && t <= 5 ? n[t] : "?";
}

/* What the relay gave against what the model says it must give. */
static void expect(fz_t *f, enum relay_status st, const relay_event_t *ev, const want_t *w)
{
    int got = st == RELAY_EVENT ? (int)ev->type : st == RELAY_CLOSE ? 0 : -1;
    if (got == RELAY_EV_REPLY)
        TRACE("  event REPLY kind %d #%u %d %s %.*s%s\n", ev->kind, ev->token, ev->reply.code,
              ev->reply.esc ? ev->reply.esc : "-", (int)ev->reply.text.len,
              ev->reply.text.len ? ev->reply.text.ptr : "", ev->reply.flags & SMTP_R_PEER ? " (peer)" : "");
    else if (got == 0)
        TRACE("  CLOSE %s\n", relay_fail_name((enum relay_fail)f->r.fail));
    else if (got > 0)
        TRACE("  event %s\n", ev_name(got));
    CHECKF(got == w->type, "event: got %s (status %d, kind %d token %u code %d), want %s (kind %d token %u code %d)",
           got < 0 ? "AGAIN" : ev_name(got), (int)st, st == RELAY_EVENT ? ev->kind : -1,
           st == RELAY_EVENT ? ev->token : 0, st == RELAY_EVENT ? ev->reply.code : 0, ev_name(w->type), w->kind,
           w->token, w->code);
    /* the owner's view, from the events alone */
    switch (got) {
    case RELAY_EV_READY:
        CHECKF(f->ready_events++ == 0, "READY twice");
        break;
    case RELAY_EV_STARTTLS:
        CHECKF(f->cfg.starttls != RELAY_TLS_OFF && f->starttls_events++ == 0 && f->ready_events == 0 && !f->owned &&
                   !f->lease_valid,
               "STARTTLS: tls %d, %u before, %u READY, owned %d", f->cfg.starttls, f->starttls_events, f->ready_events,
               f->owned);
        break;
    case RELAY_EV_REPLY:
        CHECKF(f->own_head < f->own_n && ev->token == f->own_tok[f->own_head] && ev->kind == f->own_kind[f->own_head],
               "REPLY for token %u kind %d: not the oldest outstanding", ev->token, ev->kind);
        f->own_head++;
        if (ev->reply.code == 451 && f->st == M_DEAD)
            CHECK(ev->reply.esc && strcmp(ev->reply.esc, "4.4.1") == 0 && ev->reply.flags == SMTP_R_PEER);
        if (ev->reply.code >= 400 && ev->reply.code < 500)
            CHECK(ev->reply.flags & SMTP_R_PEER);
        else
            CHECK(!(ev->reply.flags & SMTP_R_PEER));
        CHECK(ev->reply.code >= 200 && ev->reply.code <= 599);
        break;
    case RELAY_EV_LOST:
        CHECKF(f->lease_valid && f->own_head == f->own_n && f->lost_events++ == 0,
               "LOST: lease %d, %u replies outstanding, %u LOST before", f->lease_valid, f->own_n - f->own_head,
               f->lost_events);
        f->lease_valid = false;
        break;
    case RELAY_EV_IDLE:
        CHECKF(!f->lease_valid && !f->owned && relay_due(&f->r) == 0, "IDLE while leased or with replies due");
        break;
    case 0:
        CHECKF(f->own_head == f->own_n, "CLOSE with %u replies outstanding", f->own_n - f->own_head);
        CHECKF(!f->lease_valid, "CLOSE without LOST for a lease");
        break;
    default:
        break;
    }
    if (got != RELAY_EV_REPLY)
        return;
    const smtp_reply_t *r = &ev->reply;
    CHECKF(ev->kind == w->kind && ev->token == w->token && r->code == w->code && r->flags == w->flags,
           "REPLY kind %d token %u code %d flags %d, want kind %d token %u code %d flags %d", ev->kind, ev->token,
           r->code, r->flags, w->kind, w->token, w->code, w->flags);
    CHECKF((r->esc == NULL) == (w->esc == NULL) && (!r->esc || strcmp(r->esc, w->esc) == 0),
           "REPLY esc \"%s\", want \"%s\"", r->esc ? r->esc : "(null)", w->esc ? w->esc : "(null)");
    CHECKF(r->text.len == w->text.len && (r->text.len == 0 || memcmp(r->text.ptr, w->text.ptr, r->text.len) == 0),
           "REPLY text \"%.*s\", want \"%.*s\"", (int)r->text.len, r->text.len ? r->text.ptr : "", (int)w->text.len,
           w->text.len ? w->text.ptr : "");
}

/* ---- feeding ---- */

static void pend_put(fz_t *f, const char *p, size_t n)
{
    bytes_put(&f->pend, &f->pend_len, &f->pend_cap, p, n);
}

/* The mirror parser's next reply out of the bytes the relay consumed. */
static enum dsr_status mirror_step(fz_t *f, const char **p, size_t *left, dsr_reply_t *dr)
{
    size_t u = 0;
    enum dsr_status ds = dsr_feed(&f->mirror, *p, *left, &u, dr);
    *p += u;
    *left -= u;
    return ds;
}

/* One relay_feed() with the first n pending bytes (none: NULL, 0). */
static enum relay_status call_feed(fz_t *f, size_t n)
{
    char *in = NULL;
    if (n) {
        in = malloc(n);
        CHECK(in != NULL);
        memcpy(in, f->pend, n);
    }
    relay_event_t ev;
    memset(&ev, 0, sizeof ev);
    size_t used = (size_t)-1;
    enum relay_status st = relay_feed(&f->r, in, n, &used, &ev);
    if (n)
        TRACE("  feed %zu: \"%.*s\" used %zu\n", n, (int)(n > 200 ? 200 : n), in, used);
    CHECKF(used <= n, "consumed %zu of %zu", used, n);
    want_t w = {0};
    if (f->closed) {
        CHECKF(st == RELAY_CLOSE && used == n, "after CLOSE: status %d, consumed %zu of %zu", (int)st, used, n);
    } else if (f->st == M_DEAD) {
        CHECKF(used == n, "failed: consumed %zu of %zu", used, n);
        next_fail(f, &w);
        expect(f, st, &ev, &w);
    } else {
        /* after STARTTLS's 220 the bytes are the TLS layer's: a byte here
         * came in plaintext (injected), and nothing of it is a reply */
        if (f->st == M_TLS && n)
            die(f, RELAY_FAIL_UNEXPECTED);
        /* the same bytes through the mirror, reply by reply */
        const char *p = in;
        size_t left = f->st == M_DEAD ? 0 : used;
        int res = 0;
        for (int guard = 0; left && guard < FEED_GUARD; guard++) {
            dsr_reply_t dr;
            enum dsr_status ds = mirror_step(f, &p, &left, &dr);
            if (ds == DSR_ERROR) {
                die(f, RELAY_FAIL_SYNTAX);
                break;
            }
            if (ds == DSR_AGAIN) {
                CHECK(left == 0);
                break;
            }
            res = model_reply(f, &dr, &w);
            if (res < 0)
                break;
            if (res > 0) {
                CHECKF(left == 0, "the relay read %zu bytes past the reply that gives %s", left, ev_name(w.type));
                expect(f, st, &ev, &w);
                break;
            }
        }
        if (f->st == M_DEAD) {
            CHECKF(used == n, "failing: consumed %zu of %zu", used, n);
            CHECKF(f->r.fail == f->fail, "failure reason %s, model %s", relay_fail_name((enum relay_fail)f->r.fail),
                   relay_fail_name((enum relay_fail)f->fail));
            next_fail(f, &w);
            expect(f, st, &ev, &w);
        } else if (res == 0) {
            CHECKF(st == RELAY_AGAIN && used == n, "no event due, got status %d type %d (consumed %zu of %zu)", (int)st,
                   st == RELAY_EVENT ? (int)ev.type : -1, used, n);
        }
    }
    free(in);
    if (st == RELAY_CLOSE) {
        f->closed = true;
        f->pend_len = 0; /* the connection is closed with whatever came */
    } else if (used) {
        memmove(f->pend, f->pend + used, f->pend_len - used);
        f->pend_len -= used;
    }
    after_call(f);
    return st;
}

/* Feed what is pending, in pieces, then the due events: at most budget events. */
static void drain(fz_t *f, uint32_t budget)
{
    for (int guard = 0; guard < FEED_GUARD; guard++) {
        if (!budget || (f->closed && f->pend_len == 0 && guard > 0))
            return;
        size_t n = f->pend_len;
        if (f->piece && n > f->piece)
            n = f->piece;
        enum relay_status st = call_feed(f, n);
        if (st == RELAY_EVENT) {
            budget--;
            continue;
        }
        if (st == RELAY_CLOSE || f->pend_len == 0)
            return;
    }
    CHECKF(0, "relay_feed does not settle");
}

/* ---- the owner ---- */

/* The owner issues nothing after DATA until DATA's reply. */
static bool data_due(const fz_t *f)
{
    for (uint32_t i = f->qhead; i < f->qn; i++)
        if (f->q[i].kind == RK_DATA && f->q[i].routed)
            return true;
    return false;
}

static void owner_sent(fz_t *f, uint8_t kind, uint32_t tok)
{
    if (!f->lease_valid)
        return;
    f->own_tok[f->own_n] = tok;
    f->own_kind[f->own_n] = kind;
    f->own_n++;
}

/*
 * Why a command may be refused (relay.h): not usable (failed, or not
 * leased), the wrong state, SMTPUTF8 to a server without it, SIZE over the
 * server's, a path over ADDR_PATH_MAX. The header gives no order among
 * them: a refusal must be one that applies. With none, the command goes
 * out, unless max_due commands are due: then 451 4.3.0 and the connection
 * fails (RELAY_FAIL_FULL).
 */
enum { X_USABLE = 1, X_STATE = 2, X_UTF8 = 4, X_SIZE = 8, X_LEN = 16 };

static unsigned applies(const fz_t *f, int state, slice_t mb, const smtp_mail_params_t *p)
{
    unsigned x = 0;
    if (!f->owned || f->st == M_DEAD)
        x |= X_USABLE;
    if (f->st != state)
        x |= X_STATE;
    if (p && p->smtputf8 && !(f->caps & DSR_CAP_SMTPUTF8))
        x |= X_UTF8;
    if (p && p->has_size && f->size_max && p->size > f->size_max)
        x |= X_SIZE;
    if (mb.len > ADDR_PATH_MAX)
        x |= X_LEN;
    return x;
}

static bool is(const smtp_reply_t *r, int code, const char *esc, uint8_t flags)
{
    return r->code == code && r->esc && strcmp(r->esc, esc) == 0 && r->flags == flags;
}

/* Compare what the relay did with a command against what may happen.
 * True: the command is on its way. */
static bool outcome(fz_t *f, bool ok, const smtp_reply_t *ref, unsigned x, const char *len_esc, const char *what,
                    uint32_t tok)
{
    bool full = !x && unanswered(f) >= f->limit;
    if (!x && !full) {
        CHECKF(ok, "%s #%u refused %d %s, model: accepted", what, tok, ref->code, ref->esc ? ref->esc : "-");
        return true;
    }
    CHECKF(!ok, "%s #%u accepted, model: refused (reasons %#x, full %d)", what, tok, x, full);
    TRACE("  %s #%u refused %d %s\n", what, tok, ref->code, ref->esc ? ref->esc : "-");
    bool fits = (full && is(ref, 451, "4.3.0", SMTP_R_PEER)) ||
                ((x & X_USABLE) && is(ref, 451, "4.4.1", SMTP_R_PEER)) ||
                ((x & X_STATE) && is(ref, 451, "4.3.0", SMTP_R_PEER)) || ((x & X_UTF8) && is(ref, 553, "5.6.7", 0)) ||
                ((x & X_SIZE) && is(ref, 552, "5.3.4", 0)) || ((x & X_LEN) && is(ref, 501, len_esc, 0));
    CHECKF(fits, "%s #%u refused %d %s flags %d, model: reasons %#x, full %d", what, tok, ref->code,
           ref->esc ? ref->esc : "-", ref->flags, x, full);
    CHECK(ref->text.len > 0 && ref->text.ptr != NULL);
    if (full)
        die(f, RELAY_FAIL_FULL);
    return false;
}

/* One of the owner's commands: the call and the model's verdict on how it
 * went; true when it is on its way (*tok names it). */
static bool owner_call(fz_t *f, uint8_t kind, slice_t mb, const smtp_mail_params_t *p, uint32_t *tok)
{
    static const struct {
        int state;
        const char *len_esc, *name;
    } k[] = {
        [RK_MAIL] = { M_READY, "5.1.7", "MAIL" }, [RK_RCPT] = { M_TX, "5.1.3", "RCPT" },
        [RK_DATA] = { M_TX, "", "DATA" },         [RK_EOD] = { M_BODY, "", "EOD" },
    };
    *tok = f->next_token++;
    unsigned x = applies(f, k[kind].state, mb, p);
    smtp_reply_t ref;
    memset(&ref, 0, sizeof ref);
    bool ok = kind == RK_MAIL   ? relay_mail(&f->r, *tok, mb, p, &ref)
              : kind == RK_RCPT ? relay_rcpt(&f->r, *tok, mb, &ref)
              : kind == RK_DATA ? relay_data(&f->r, *tok, &ref)
                                : relay_eod(&f->r, *tok, &ref);
    return outcome(f, ok, &ref, x, k[kind].len_esc, k[kind].name, *tok);
}

/* "VERB:<mailbox>" as the relay must send it (no line end). */
static size_t path_of(char *line, const char *verb, slice_t mb)
{
    size_t n = strlen(verb);
    memcpy(line, verb, n);
    if (mb.len)
        memcpy(line + n, mb.ptr, mb.len);
    line[n + mb.len] = '>';
    return n + mb.len + 1;
}

static void op_mail(fz_t *f, slice_t mb, const smtp_mail_params_t *p)
{
    uint32_t tok;
    if (data_due(f) || !room(f, 1))
        return;
    if (owner_call(f, RK_MAIL, mb, p, &tok)) {
        char line[ADDR_PATH_MAX + 16];
        mline_t *e = push(f, RK_MAIL, true, tok, line, path_of(line, "MAIL FROM:<", mb));
        e->params = (uint8_t)((p->body == BODY_8BITMIME && (f->caps & DSR_CAP_8BITMIME) ? P_8BIT : 0) |
                              (p->smtputf8 ? P_UTF8 : 0) | (p->has_size && (f->caps & DSR_CAP_SIZE) ? P_SIZE : 0));
        e->size = p->size;
        owner_sent(f, RK_MAIL, tok);
        f->st = M_TX;
        f->rcpt_ok = 0;
    }
    after_call(f);
}

static void op_rcpt(fz_t *f, slice_t mb)
{
    uint32_t tok;
    if (data_due(f) || !room(f, 1))
        return;
    if (owner_call(f, RK_RCPT, mb, NULL, &tok)) {
        char line[ADDR_PATH_MAX + 16];
        size_t n = path_of(line, "RCPT TO:<", mb);
        memcpy(line + n, "\r\n", 2);
        push(f, RK_RCPT, true, tok, line, n + 2);
        owner_sent(f, RK_RCPT, tok);
    }
    after_call(f);
}

static void op_data(fz_t *f)
{
    uint32_t tok;
    if (data_due(f) || !room(f, 1))
        return;
    if (owner_call(f, RK_DATA, SLICE_NULL, NULL, &tok)) {
        push(f, RK_DATA, true, tok, "DATA\r\n", 6);
        owner_sent(f, RK_DATA, tok);
    }
    after_call(f);
}

static void op_eod(fz_t *f)
{
    uint32_t tok;
    if (!room(f, 1))
        return;
    if (owner_call(f, RK_EOD, SLICE_NULL, NULL, &tok)) {
        mline_t *e = push(f, RK_EOD, true, tok, ".\r\n", 3);
        if (f->cfg.lmtp)
            e->need = f->rcpt_ok ? f->rcpt_ok : 1;
        f->worst = 0;
        f->worst_len = 0;
        f->worst_esc[0] = 0;
        owner_sent(f, RK_EOD, tok);
        f->st = M_EOD;
    }
    after_call(f);
}

static void op_lease(fz_t *f)
{
    if (f->discarded || !relay_ready(&f->r))
        return;
    relay_lease(&f->r);
    f->owned = true;
    f->lease_valid = true;
    f->lost_events = 0;
    f->rcpt_ok = 0;
    after_call(f);
}

/*
 * The header's promise: released, none of the owner's commands gets an
 * event any more, nor does LOST come; held commands never go out.
 * That includes an owner that releases from inside the callback of a
 * failure's first 451: this target found the relay yielding the rest of
 * that failure's REPLYs and LOST to the released lease (fixed).
 */
static void op_release(fz_t *f)
{
    if (!f->lease_valid)
        return;
    f->owned = false;
    f->lease_valid = false;
    enum relay_release want;
    if (f->st == M_DEAD || f->st == M_BODY) {
        want = RELAY_DISCARD;
    } else {
        f->qn = f->qemit;
        bool data = false;
        for (uint32_t i = f->qhead; i < f->qn; i++)
            data |= f->q[i].kind == RK_DATA || f->q[i].kind == RK_EOD;
        if (data)
            want = RELAY_DISCARD;
        else if (f->qhead == f->qn && !f->tx_open)
            want = RELAY_REUSE;
        else
            want = RELAY_DRAINING;
    }
    f->own_head = f->own_n; /* the owner waits for nothing */
    f->lost_due = false;
    for (uint32_t i = f->st == M_DEAD ? f->qfail : f->qhead; i < f->qn; i++)
        f->q[i].routed = false;
    enum relay_release got = relay_release(&f->r);
    TRACE("  release: %s\n", got == RELAY_REUSE ? "REUSE" : got == RELAY_DRAINING ? "DRAINING" : "DISCARD");
    CHECKF(got == want, "relay_release %d, model %d (state %d, %u due, tx %d)", (int)got, (int)want, f->st,
           unanswered(f), f->tx_open);
    if (want == RELAY_DISCARD) {
        f->discarded = true;
    } else if (want == RELAY_REUSE) {
        f->st = M_READY;
    } else {
        f->st = M_DRAIN;
        f->draining = true;
        if (f->qhead == f->qn)
            push(f, RK_RSET, false, 0, "RSET\r\n", 6);
    }
    after_call(f);
}

static void op_fail(fz_t *f, enum relay_fail why)
{
    relay_fail(&f->r, why);
    die(f, why);
    after_call(f);
}

/*
 * The caller's TLS handshake completed. Server bytes still pending in
 * RELAY_TLS arrived before it, in plaintext: a caller's feed loop gives
 * them to the relay first (and they fail it). Outside RELAY_TLS the call
 * must change nothing.
 */
static void op_tls_done(fz_t *f)
{
    if (f->st == M_TLS && f->pend_len)
        (void)call_feed(f, f->pend_len);
    relay_tls_done(&f->r);
    if (f->st == M_TLS) {
        f->tls = true;
        f->caps = 0; /* RFC 3207 4.2: forget what the server said in plaintext */
        f->size_max = 0;
        hello_line(f, false);
    }
    after_call(f);
}

static void op_connect(fz_t *f)
{
    relay_connected(&f->r);
    if (f->st == M_CONNECTING) {
        f->st = M_GREETING;
        push(f, RK_GREETING, false, 0, NULL, 0);
    }
    after_call(f);
}

static void op_sent(fz_t *f, uint8_t a)
{
    slice_t o = relay_output(&f->r);
    size_t n = a & 0x80 ? o.len + 3 : (size_t)(a & 0x7f);
    size_t k = n < o.len ? n : o.len;
    relay_sent(&f->r, n);
    CHECKF(relay_output(&f->r).len == o.len - k, "relay_sent(%zu) of %zu left %zu", n, o.len, relay_output(&f->r).len);
    CHECK(k <= f->shadow_len || f->st == M_DEAD);
    if (k > f->shadow_len)
        k = f->shadow_len;
    if (k) {
        memmove(f->shadow, f->shadow + k, f->shadow_len - k);
        f->shadow_len -= k;
    }
    after_call(f);
}

/* A plausible reply to each command in flight. */
static void op_auto(fz_t *f, uint8_t a, uint8_t v)
{
    static const char *const r[][4] = {
        [RK_GREETING] = {"220 ds.fuzz ESMTP\r\n", "421 4.3.2 busy\r\n", "554 5.3.2 no\r\n",
                         "220-ds.fuzz\r\n220 hi\r\n"},
        [RK_HELLO] = {"250-ds.fuzz\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
                      "421 4.3.2 bye\r\n", "502 5.5.2 no\r\n",
                      "250-ds.fuzz\r\n250-8BITMIME\r\n250-STARTTLS\r\n250-SIZE 1000\r\n250 SMTPUTF8\r\n"},
        [RK_HELO] = {"250 ds.fuzz\r\n", "451 4.3.0 no\r\n", "550 5.5.1 no\r\n", "250-ds.fuzz\r\n250 hi\r\n"},
        [RK_MAIL] = {"250 2.1.0 Sender ok\r\n", "451 4.3.0 try later\r\n", "550 5.7.1 refused\r\n",
                     "250-2.1.0 a\r\n250 2.1.0 b\r\n"},
        [RK_RCPT] = {"250 2.1.5 ok\r\n", "452 4.5.3 too many\r\n", "550 5.1.1 unknown\r\n",
                     "251 2.1.5 will forward\r\n"},
        [RK_DATA] = {"354 go ahead\r\n", "451 4.3.0 not now\r\n", "554 5.5.1 no valid recipients\r\n",
                     "354-go\r\n354 on\r\n"},
        [RK_EOD] = {"250 2.0.0 Ok: queued\r\n", "451 4.3.0 later\r\n", "554 5.7.1 spam\r\n", "250 ok\r\n"},
        [RK_RSET] = {"250 2.0.0 ok\r\n", "421 4.4.2 bye\r\n", "500 5.5.1 what\r\n", "250 ok\r\n"},
        [RK_STARTTLS] = {"220 2.0.0 Ready to start TLS\r\n", "454 4.7.0 TLS not available\r\n",
                         "554 5.7.3 TLS not supported\r\n", "220-ds.fuzz\r\n220 go ahead\r\n"},
    };
    if (f->st == M_DEAD || f->closed)
        return;
    uint32_t count = 1 + a % 8, done = 0, bit = 0;
    if (f->qhead == f->qemit && (a & 8)) {
        pend_put(f, "250 2.0.0 unsolicited\r\n", 23);
        return;
    }
    for (uint32_t i = f->qhead; i < f->qemit && done < count; i++) {
        const mline_t *e = &f->q[i];
        uint32_t k = e->kind == RK_EOD ? e->need : 1;
        for (uint32_t j = 0; j < k && done < count; j++, done++, bit += 2) {
            const char *s = r[e->kind][(v >> (bit % 8)) & 3];
            pend_put(f, s, strlen(s));
        }
    }
}

/* ---- the run ---- */

static fz_t *fz;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint32_t max_due[8] = {0, 1, 2, 3, 4, 5, 8, 64};
    static const uint32_t tok0[4] = {1, 0, 0x7ffffffe, 0xfffffff8};
    static const uint64_t sizes[8] = {0, 1, 999, 1000, 1001, 10485760, 1ull << 32, UINT64_MAX};
    static char helo_long[1016];
    if (size < 3 || size > MAX_INPUT)
        return 0;
    init_once();
    if (!fz) {
        trace = getenv("FUZZ_RELAY_TRACE") != NULL;
        fz = calloc(1, sizeof *fz);
        CHECK(fz != NULL);
        fz->arena = malloc(ARENA_MAX);
        CHECK(fz->arena != NULL);
        memset(helo_long, 'h', sizeof helo_long);
    }
    fz_t *f = fz;
    /* reset the model, keeping the buffers */
    char *arena = f->arena, *shadow = f->shadow, *pend = f->pend;
    size_t shadow_cap = f->shadow_cap, pend_cap = f->pend_cap;
    memset(f, 0, offsetof(fz_t, q));
    f->qhead = f->qemit = f->qn = f->qattr = f->qfail = 0;
    f->arena_len = 0;
    f->worst = 0;
    f->worst_len = 0;
    f->worst_esc[0] = 0;
    dsr_init(&f->mirror);
    f->own_head = f->own_n = 0;
    f->ready_events = f->lost_events = f->starttls_events = 0;
    f->arena = arena, f->shadow = shadow, f->pend = pend;
    f->shadow_cap = shadow_cap, f->pend_cap = pend_cap;
    f->shadow_len = f->pend_len = 0;

    prog_t g = {data, size, 3};
    uint8_t h0 = data[0], h1 = data[1], h2 = data[2], h3 = h1 & 0x80 ? arg(&g) : 0;
    static const slice_t helos[4] = {SLICE_INIT("gw.fuzz"), {"", 0}, {helo_long, 255}, {helo_long, 1016}};
    static const uint8_t tls_levels[4] = {RELAY_TLS_OFF, RELAY_TLS_MAY, RELAY_TLS_REQUIRE, RELAY_TLS_MAY};
    f->cfg = (relay_config_t){helos[(h0 >> 5) & 3], (h0 & 1) != 0, max_due[h1 & 7], tls_levels[h3 & 3]};
    f->limit = f->cfg.max_due ? f->cfg.max_due : 256;
    f->lazy = (h0 & 0x10) != 0;
    f->budget = f->lazy ? 1u + ((h2 >> 2) & 3u) : UINT32_MAX;
    f->send_all = (h0 & 0x80) != 0;
    f->next_token = tok0[h2 & 3];
    f->piece = h2 >> 4;
    enum relay_fail final = (enum relay_fail)(1 + ((h1 >> 3) & 15) % (RELAY_FAIL_COUNT - 1));
    f->st = M_CONNECTING;
    relay_init(&f->r, &f->cfg);

    /* the greeting, then the reply to EHLO/LHLO (with the HELO fallback) */
    static const char *const greetings[2] = {"220 ds.fuzz ESMTP\r\n", "220 lmtp.fuzz LMTP\r\n"};
    static const char *const hellos[4][2] = {
        {NULL, NULL},
        {"250-ds.fuzz\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
         "250-lmtp.fuzz\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"},
        {"250-ds.fuzz\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
         "250-lmtp.fuzz\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"},
        {"502 5.5.2 Error: command not recognized\r\n250 ds.fuzz\r\n", "250 lmtp.fuzz\r\n"},
    };
    /* h[3] bit 2: the same server offering STARTTLS before the handshake */
    static const char *const hellos_tls[4][2] = {
        {NULL, NULL},
        {"250-ds.fuzz\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-STARTTLS\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
         "250-lmtp.fuzz\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-STARTTLS\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"},
        {"250-ds.fuzz\r\n250-STARTTLS\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
         "250-lmtp.fuzz\r\n250-STARTTLS\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"},
        {"250-ds.fuzz\r\n250 STARTTLS\r\n", "250-lmtp.fuzz\r\n250 STARTTLS\r\n"},
    };
    unsigned pre = (h0 >> 1) & 3;
    if (pre) {
        bool offer = (h3 & 4) != 0;
        const char *hello = (offer ? hellos_tls : hellos)[pre][f->cfg.lmtp];
        op_connect(f);
        pend_put(f, greetings[f->cfg.lmtp], strlen(greetings[f->cfg.lmtp]));
        pend_put(f, hello, strlen(hello));
        drain(f, UINT32_MAX);
        if (offer && f->st == M_STARTTLS) {
            static const char ready[] = "220 2.0.0 Ready to start TLS\r\n";
            pend_put(f, ready, sizeof ready - 1);
            drain(f, UINT32_MAX);
        }
        if (offer && f->st == M_TLS && !(h3 & 8)) {
            op_tls_done(f);
            hello = hellos[pre][f->cfg.lmtp];
            pend_put(f, hello, strlen(hello));
            drain(f, UINT32_MAX);
        }
        if (h0 & 8)
            op_lease(f);
    }

    char raw[64];
    for (int ops = 0; g.pos < g.n && ops < MAX_OPS; ops++) {
        uint8_t op = arg(&g);
        static const char *const op_names[17] = {"FEED", "FEED2",   "RAW",   "AUTO", "CONNECT", "LEASE",
                                                 "MAIL", "RCPT",    "DATA",  "EOD",  "GROUP",   "SENT",
                                                 "FAIL", "RELEASE", "PIECE", "PUMP", "TLSDONE"};
        TRACE("%s (at %zu)\n", op_names[op % 17], g.pos - 1);
        switch (op % 17) {
        case 0: {
            slice_t s = dict_entry(arg(&g));
            pend_put(f, s.ptr, s.len);
            break;
        }
        case 1: {
            slice_t s = dict_entry(arg(&g)), t = dict_entry(arg(&g));
            pend_put(f, s.ptr, s.len);
            pend_put(f, t.ptr, t.len);
            break;
        }
        case 2: {
            size_t l = arg(&g) % 64;
            for (size_t i = 0; i < l; i++) {
                char c = (char)arg(&g);
                pend_put(f, &c, 1);
            }
            break;
        }
        case 3: {
            uint8_t a = arg(&g);
            op_auto(f, a, arg(&g));
            break;
        }
        case 4:
            op_connect(f);
            break;
        case 5:
            op_lease(f);
            break;
        case 6: {
            slice_t mb = mailbox(&g, arg(&g), raw);
            uint8_t pb = arg(&g);
            smtp_mail_params_t p = {sizes[(pb >> 4) & 7], (uint8_t)((pb >> 2) & 3), (pb & 2) != 0, (pb & 1) != 0};
            if (p.body > BODY_8BITMIME)
                p.body = BODY_8BITMIME;
            if (!p.has_size)
                p.size = 0;
            op_mail(f, mb, &p);
            break;
        }
        case 7:
            op_rcpt(f, mailbox(&g, arg(&g), raw));
            break;
        case 8:
            op_data(f);
            break;
        case 9:
            op_eod(f);
            break;
        case 10: {
            uint8_t a = arg(&g);
            static const smtp_mail_params_t plain = {.size = 0};
            op_mail(f, a & 0x80 ? SLICE_NULL : SLICE_LIT("s@x.test"), &plain);
            for (uint32_t i = 0; i < (a & 7u); i++)
                op_rcpt(f, a & 8 ? SLICE_LIT("a@y.test") : SLICE_LIT("postmaster"));
            op_data(f);
            break;
        }
        case 11:
            op_sent(f, arg(&g));
            break;
        case 12:
            op_fail(f, (enum relay_fail)(1 + arg(&g) % (RELAY_FAIL_COUNT - 1)));
            break;
        case 13:
            op_release(f);
            break;
        case 14:
            f->piece = arg(&g) % 32;
            break;
        case 16:
            op_tls_done(f);
            break;
        default:
            break;
        }
        drain(f, f->budget);
        if (f->send_all)
            op_sent(f, 0x80);
    }

    /* the end: the rest comes in, the connection fails, everything is told */
    TRACE("END (fail %s)\n", relay_fail_name(final));
    drain(f, UINT32_MAX);
    if (!f->closed)
        op_fail(f, final);
    drain(f, UINT32_MAX);
    CHECKF(f->closed, "no RELAY_CLOSE after the failure");
    CHECKF(f->own_head == f->own_n, "%u replies never came", f->own_n - f->own_head);
    /* closed stays closed */
    pend_put(f, "250 ok\r\n", 8);
    CHECK(call_feed(f, f->pend_len) == RELAY_CLOSE);
    CHECK(call_feed(f, 0) == RELAY_CLOSE);
    relay_fail(&f->r, RELAY_FAIL_TIMEOUT);
    CHECK(f->r.fail == f->fail);
    smtp_reply_t ref;
    static const smtp_mail_params_t plain = {.size = 0};
    CHECK(!relay_mail(&f->r, 7, SLICE_LIT("s@x.test"), &plain, &ref) && ref.code == 451);
    CHECK(!relay_eod(&f->r, 8, &ref) && ref.code == 451);
    CHECK(relay_release(&f->r) == RELAY_DISCARD);
    relay_tls_done(&f->r); /* a handshake that ends after the failure */
    CHECK(f->r.state == RELAY_DEAD && relay_output(&f->r).len == 0 && relay_due(&f->r) == 0);
    CHECK(call_feed(f, 0) == RELAY_CLOSE);
    relay_free(&f->r);
    return 0;
}

/*
 * fuzz_smtp.c - libFuzzer target over the SMTP engine (smtp_feed and the
 * verdict calls), with fuzzer-chosen configuration, fragmentation, output
 * buffer size and verdicts.
 *
 * Input: a 6-byte header, 0-7 chunk-length bytes, then the session bytes
 * (what the client sends after the greeting; at most FUZZ_MAX_SESSION; with
 * STARTTLS, what it sends in plaintext and then through TLS).
 *   h[0] config flags: 0x01 bare_newline normalize, 0x02 SMTPUTF8 on,
 *        0x04 small line_max, 0x08 small text_line_max, 0x10 small rcpt_max,
 *        0x20 small size_max, 0x40 small error_max
 *   h[1] line_max / text_line_max value byte
 *   h[2] rcpt_max (bits 0-1), error_max (bits 2-4), size_max (bits 5-7;
 *        7 means no limit)
 *   h[3] bits 0-2: output buffer size; 0x08 delay verdicts (check PAUSED),
 *        0x10 talk before the greeting, 0x20 smtp_close() at the end;
 *        bits 6-7: on_bare_newline (mod 3: ignore, enforce, drop)
 *   h[4] verdict seed: (h[4] & 3) == 0 accepts everything, otherwise a
 *        deterministic mix of accept, 550 5.7.1, 451 4.4.3, custom 250
 *        (STARTTLS: accept or 454 4.7.0)
 *   h[5] bits 0-2: number of chunk-length bytes that follow (0: no splits);
 *        bits 3-4: tls (0 off, 1 may, 2 encrypt, 3 may); bits 5-7:
 *        on_non_smtp (0 drop, the default, then ignore, enforce, drop...).
 *        on_pipelining stays ignore: it is the one test that depends on the
 *        splits, which the comparison below must not see.
 * tests/fuzz/gen-corpus.py writes seeds in this format.
 *
 * Checks (__builtin_trap on failure):
 *  - consumed <= input; SMTP_AGAIN only with all input consumed; PAUSED only
 *    with a verdict pending and nothing consumed; FULL never with an empty
 *    output buffer; after CLOSED only CLOSED, nothing consumed or written;
 *  - an event wants a verdict exactly when it is HELO/EHLO/MAIL/RCPT/DATA/
 *    DATA_END; BODY only between DATA and its end;
 *  - the output holds whole CRLF lines "DDD[ -]...", no bare CR/LF, at most
 *    REPLY_LINE_MAX octets; a '-' line is followed by a line with the same
 *    code; every final 4xx/5xx line has an enhanced code "C.D.D" whose class
 *    is the reply's first digit;
 *  - every message that reaches DATA_END was forwarded clean: only CRLF line
 *    ends, no interior CRLF.CRLF, empty or ending in CRLF, within size_max;
 *  - STARTTLS: the event only with tls on and not yet encrypted; once it is
 *    accepted, smtp_feed takes every byte and says nothing (no event, no
 *    reply) until smtp_tls_started(), which this file's driver calls before
 *    the next piece (the handshake happens between reads) and which leaves
 *    a fresh, encrypted session with nothing written; no STARTTLS keyword
 *    once encrypted; no MAIL event with tls = encrypt before it;
 *  - differential fragmentation: tu_drive() with the fuzzer's splits gives
 *    the same canonical log as with no splits (and a different output buffer
 *    size), and this file's own driver (which flushes output only on FULL or
 *    when input runs out, and may delay verdicts) gives the same events and
 *    the same reply bytes. tu_drive never completes a handshake, so it
 *    drops everything after an accepted STARTTLS; where the own driver went
 *    on through TLS, its log up to smtp_tls_started() is compared.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp.h"
#include "fuzzutil.h"

#define FUZZ_MAX_SESSION 8192
#define FUZZ_MAX_SPLITS 128
#define HDR 6

/* reply buffer sizes: from the engine's minimum (tight: FULL after almost
 * every reply) to roomy */
#define M SMTP_OUT_MIN
static const size_t outcaps[8] = { M, M + 1, M + 76, M + 276, M + 512, 2 * M, 4 * M, 65536 };
#undef M

/* ---- verdicts: a function of the verdict's rank only, so every driver
 * gives the same answers to the same event sequence ---- */

typedef struct verdicts {
    uint32_t rng;
    int mixed;
} verdicts_t;

static uint32_t xs32(uint32_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    return *x;
}

static int verdict_fn(const smtp_event_t *ev, int *code, const char **esc, const char **text, void *arg)
{
    verdicts_t *v = arg;
    if (!v->mixed)
        return 0;
    uint32_t x = xs32(&v->rng) % 8;
    if (ev->type == SMTP_EV_STARTTLS) {
        if (x > 1)
            return 0;
        *code = 454, *esc = "4.7.0", *text = "TLS not available due to local problem";
        return 1;
    }
    switch (x) {
    case 0:
        *code = 550, *esc = "5.7.1", *text = "Rejected by policy";
        return 1;
    case 1:
        *code = 451, *esc = "4.4.3", *text = "Try again later\r\n250 injected";
        return 1;
    case 2:
        if (ev->type == SMTP_EV_MAIL || ev->type == SMTP_EV_RCPT || ev->type == SMTP_EV_DATA_END) {
            *code = 250, *esc = "2.0.0", *text = "Ok: custom\r\n.\r\nMAIL FROM:<x@y>";
            return 1;
        }
        if (ev->type == SMTP_EV_HELO || ev->type == SMTP_EV_EHLO) {
            *code = 250, *esc = NULL, *text = "mx.example.net greets you";
            return 1;
        }
        return 0;
    default:
        return 0;
    }
}

/* ---- output checks ---- */

static void check_output(const char *b, size_t len)
{
    size_t i = 0;
    while (i < len) {
        const char *lf = memchr(b + i, '\n', len - i);
        CHECK(lf != NULL); /* whole lines only */
        size_t n = (size_t)(lf - (b + i)) + 1;
        const char *l = b + i;
        CHECK(n >= 6 && n <= REPLY_LINE_MAX);
        CHECK(l[n - 2] == '\r');
        CHECK(memchr(l, '\r', n - 2) == NULL); /* no bare CR inside */
        CHECK(l[0] >= '2' && l[0] <= '5' && l[1] >= '0' && l[1] <= '9' && l[2] >= '0' && l[2] <= '9');
        CHECK(l[3] == ' ' || l[3] == '-');
        if (l[3] == '-') {
            /* a continuation must be followed by a line of the same reply */
            CHECK(i + n + 4 <= len);
            CHECK(memcmp(l, l + n, 3) == 0);
        } else if (l[0] == '4' || l[0] == '5') {
            /* enhanced status code right after the code: class.subject.detail */
            size_t k = 4;
            CHECK(k < n - 2 && l[k] == l[0]);
            k++;
            CHECK(k < n - 2 && l[k] == '.');
            k++;
            size_t d = 0;
            while (k < n - 2 && l[k] >= '0' && l[k] <= '9')
                k++, d++;
            CHECK(d >= 1 && d <= 3);
            CHECK(k < n - 2 && l[k] == '.');
            k++;
            d = 0;
            while (k < n - 2 && l[k] >= '0' && l[k] <= '9')
                k++, d++;
            CHECK(d >= 1 && d <= 3);
            CHECK(k == n - 2 || l[k] == ' ');
        }
        i += n;
    }
}

/* A body as forwarded must not let any downstream find another end. */
static void check_body(const smtp_config_t *cfg, const char *b, size_t len)
{
    if (cfg->size_max)
        CHECK(len <= cfg->size_max);
    if (len == 0)
        return;
    CHECK(len >= 2 && b[len - 2] == '\r' && b[len - 1] == '\n');
    if (len >= 3)
        CHECK(!(b[0] == '.' && b[1] == '\r' && b[2] == '\n')); /* the DATA CRLF is the first CRLF */
    for (size_t i = 0; i < len; i++) {
        if (b[i] == '\r')
            CHECK(i + 1 < len && b[i + 1] == '\n');
        if (b[i] == '\n')
            CHECK(i > 0 && b[i - 1] == '\r');
        if (b[i] == '\n' && i + 3 < len)
            CHECK(!(b[i + 1] == '.' && b[i + 2] == '\r' && b[i + 3] == '\n'));
    }
}

/* ---- this file's own driver ---- */

typedef struct run {
    const smtp_config_t *cfg;
    smtp_out_t o;
    smtp_t s;
    tu_driver_t d;   /* canonical event log (tu_log_event) */
    tu_log_t wire;   /* every reply byte, escaped as tu_drive's S: lines */
    tu_log_t body;   /* forwarded body of the current message */
    verdicts_t v;
    uint32_t rng;    /* for delaying verdicts */
    int delay;
    int closed;
    int in_data;     /* a BODY may come: DATA accepted, end not yet seen */
    size_t tls_log, tls_wire; /* log and wire lengths at the first smtp_tls_started */
    int tls_done;
} run_t;

static void flush(run_t *r)
{
    check_output(r->o.buf, r->o.len);
    if (r->s.tls || r->cfg->tls == SMTP_TLS_OFF) { /* all of it written since the handshake, or no TLS */
        CHECK(memmem(r->o.buf, r->o.len, "250-STARTTLS\r\n", 14) == NULL);
        CHECK(memmem(r->o.buf, r->o.len, "250 STARTTLS\r\n", 14) == NULL);
    }
    tu_put_escaped(&r->wire, slice_make(r->o.buf, r->o.len));
    r->o.len = 0;
}

static int wants_verdict(smtp_ev_type_t t)
{
    return t == SMTP_EV_HELO || t == SMTP_EV_EHLO || t == SMTP_EV_MAIL || t == SMTP_EV_RCPT ||
           t == SMTP_EV_DATA || t == SMTP_EV_DATA_END || t == SMTP_EV_STARTTLS;
}

static void after_closed(run_t *r, const char *p, size_t n)
{
    size_t before = r->o.len, used = 1;
    smtp_event_t ev;
    CHECK(smtp_feed(&r->s, p, n, &used, &ev) == SMTP_CLOSED);
    CHECK(used == 0 && r->o.len == before);
    CHECK(smtp_open(&r->s) == 0);
}

static void handle_event(run_t *r, const smtp_event_t *ev, const char *rest, size_t restlen)
{
    CHECK(ev->type != SMTP_EV_NONE);
    CHECK(!smtp_tls_pending(&r->s)); /* nothing is read between the 220 and the handshake */
    if (ev->type == SMTP_EV_STARTTLS)
        CHECK(r->cfg->tls != SMTP_TLS_OFF && !r->s.tls && smtp_open(&r->s) == 1 && r->s.state < SMTP_S_MAIL);
    if (ev->type == SMTP_EV_MAIL)
        CHECK(r->cfg->tls != SMTP_TLS_ENCRYPT || r->s.tls);
    tu_log_event(&r->d, ev);
    if (ev->type == SMTP_EV_BODY) {
        CHECK(r->in_data);
        tu_put(&r->body, ev->arg.ptr, ev->arg.len);
        return;
    }
    if (ev->type == SMTP_EV_DATA_END) {
        CHECK(r->in_data);
        check_body(r->cfg, r->body.buf ? r->body.buf : "", r->body.len);
    }
    if (ev->type == SMTP_EV_DATA_END || ev->type == SMTP_EV_DATA_REJECTED) {
        CHECK(r->in_data);
        r->in_data = 0;
        r->body.len = 0;
    }
    CHECK(!r->in_data);
    CHECK(wants_verdict(ev->type) == smtp_ev_wants_verdict(ev->type));
    if (!wants_verdict(ev->type)) {
        CHECK(smtp_open(&r->s) == 0);
        return;
    }
    CHECK(smtp_open(&r->s) == 1);
    bool blocks = ev->type != SMTP_EV_MAIL && ev->type != SMTP_EV_RCPT; /* MAIL, RCPT: reads ahead */
    if (r->delay && blocks && (xs32(&r->rng) & 1)) {
        /* the verdict comes later: meanwhile the engine takes nothing */
        size_t used = 1, before = r->o.len;
        smtp_event_t ev2;
        CHECK(smtp_feed(&r->s, rest, restlen, &used, &ev2) == SMTP_PAUSED);
        CHECK(used == 0 && r->o.len == before);
    }
    int code = 0;
    const char *esc = NULL, *text = NULL;
    int data_ok = 0;
    if (verdict_fn(ev, &code, &esc, &text, &r->v)) {
        smtp_reply_t rep = { code, esc, slice_make(text, text ? strlen(text) : 0), 0 };
        smtp_verdict(&r->s, ev->slot, &rep);
        data_ok = code < 400;
    } else {
        smtp_accept(&r->s, ev->slot);
        data_ok = 1;
    }
    CHECK(smtp_open(&r->s) == 0 || r->o.cap - r->o.len < SMTP_OUT_MIN);
    if (ev->type == SMTP_EV_DATA && data_ok)
        r->in_data = 1;
}

/* The handshake, between two reads: the 220 is sent in plaintext first. */
static void tls_handshake(run_t *r)
{
    CHECK(smtp_open(&r->s) == 0 && !r->in_data && !r->s.tls);
    flush(r);
    if (!r->tls_done) {
        r->tls_done = 1;
        r->tls_log = r->d.log.len;
        r->tls_wire = r->wire.len;
    }
    uint32_t commands = r->s.commands, errors = r->s.errors, messages = r->s.messages;
    smtp_tls_started(&r->s);
    CHECK(r->o.len == 0); /* the client speaks first */
    CHECK(r->s.tls && !r->s.esmtp && r->s.state == SMTP_S_INIT && !smtp_tls_pending(&r->s));
    CHECK(smtp_open(&r->s) == 0 && !smtp_partial(&r->s));
    CHECK(r->s.commands == commands && r->s.errors == errors && r->s.messages == messages);
    smtp_tls_started(&r->s); /* only once */
    CHECK(r->s.state == SMTP_S_INIT);
}

/* Feed one piece; returns 0 once the session is closed. */
static int feed_piece(run_t *r, const char *p, size_t n)
{
    int idle = 0;
    if (smtp_tls_pending(&r->s))
        tls_handshake(r);
    for (;;) {
        smtp_event_t ev;
        size_t used = (size_t)-1, before = r->o.len;
        bool tls_wait = smtp_tls_pending(&r->s);
        memset(&ev, 0x5a, sizeof ev);
        smtp_status_t st = smtp_feed(&r->s, p, n, &used, &ev);
        CHECK(used <= n);
        if (tls_wait) /* plaintext behind STARTTLS: taken, unanswered */
            CHECK(st == SMTP_AGAIN && used == n && r->o.len == before && smtp_tls_pending(&r->s));
        p += used;
        n -= used;
        idle = used ? 0 : idle + 1;
        CHECK(idle < 8); /* no livelock */
        switch (st) {
        case SMTP_EVENT:
            idle = 0;
            handle_event(r, &ev, p, n);
            break;
        case SMTP_AGAIN:
            CHECK(n == 0);
            return 1;
        case SMTP_PAUSED:
            CHECK(0); /* verdicts are always given */
            break;
        case SMTP_FULL:
            CHECK(r->o.len > 0); /* else no send could ever make room */
            flush(r);
            break;
        case SMTP_CLOSED:
            CHECK(smtp_open(&r->s) == 0);
            flush(r);
            tu_end_body(&r->d);
            tu_puts(&r->d.log, "CLOSED\n");
            r->closed = 1;
            after_closed(r, p, n);
            return 0;
        default:
            CHECK(0);
        }
    }
}

static void run_own(run_t *r, const smtp_config_t *cfg, const char *in, size_t len, const size_t *splits,
                    size_t nsplits, size_t outcap, verdicts_t v, int delay, int early)
{
    memset(r, 0, sizeof *r);
    r->cfg = cfg;
    r->v = v;
    r->delay = delay;
    r->rng = (v.rng ^ 0x5bd1e995u) | 1;
    r->o.buf = malloc(outcap);
    r->o.cap = outcap;
    CHECK(r->o.buf != NULL);
    smtp_init(&r->s, cfg, &r->o);
    size_t prev = 0, i = 0;
    if (early && len) {
        /* talk before the greeting: refused and closed at once */
        size_t used = 0;
        smtp_event_t ev;
        CHECK(smtp_feed(&r->s, in, len, &used, &ev) == SMTP_EVENT);
        CHECK(ev.type == SMTP_EV_EARLY_TALK && used == len);
        size_t before = r->o.len;
        smtp_greet(&r->s); /* too late: must add nothing */
        CHECK(r->o.len == before && before > 0);
        flush(r);
        r->closed = 1;
        after_closed(r, in, len);
        return;
    }
    smtp_greet(&r->s);
    flush(r);
    for (; i <= nsplits && !r->closed; i++) {
        size_t end = i < nsplits ? splits[i] : len;
        size_t n = end - prev;
        /* each piece in its own heap block, freed once fed: ASan sees any
         * read past it or any use of a stale pointer into it */
        char *piece = malloc(n ? n : 1);
        CHECK(piece != NULL);
        memcpy(piece, in + prev, n);
        feed_piece(r, piece, n);
        free(piece);
        prev = end;
    }
    if (!r->closed) {
        flush(r);
        tu_end_body(&r->d);
        tu_puts(&r->d.log, "EOF\n");
    }
}

/* The S: payloads of a tu_drive log, concatenated, and its other lines;
 * returns the number of S-PARTIAL lines (replies that were not whole). */
static size_t split_log(const tu_log_t *l, tu_log_t *wire, tu_log_t *events)
{
    size_t partial = 0;
    size_t i = 0;
    while (i < l->len) {
        const char *nl = memchr(l->buf + i, '\n', l->len - i);
        size_t n = nl ? (size_t)(nl - (l->buf + i)) + 1 : l->len - i;
        const char *line = l->buf + i;
        if (n >= 3 && memcmp(line, "S: ", 3) == 0)
            tu_put(wire, line + 3, n - 4);
        else if (n >= 11 && memcmp(line, "S-PARTIAL: ", 11) == 0)
            tu_put(wire, line + 11, n - 12), partial++;
        else
            tu_put(events, line, n);
        i += n;
    }
    return partial;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < HDR)
        return 0;
    const uint8_t *h = data;
    smtp_config_t cfg;
    smtp_config_defaults(&cfg, SLICE_LIT("mx.example.net"));
    cfg.bare_newline = (h[0] & 0x01) ? SCAN_BARE_NORMALIZE : SCAN_BARE_REJECT;
    cfg.smtputf8 = (h[0] & 0x02) != 0;
    if (h[0] & 0x04)
        cfg.line_max = 8 + (uint32_t)(h[1] & 0x3f) * 8; /* 8..512 */
    if (h[0] & 0x08)
        cfg.text_line_max = 1 + (uint32_t)h[1];         /* 1..256 */
    if (h[0] & 0x10)
        cfg.rcpt_max = 1 + (h[2] & 3);
    if (h[0] & 0x40)
        cfg.error_max = 1 + ((h[2] >> 2) & 7);
    if (h[0] & 0x20) /* 16..1024, or 0: no limit */
        cfg.size_max = (h[2] >> 5) == 7 ? 0 : (uint64_t)16 << (h[2] >> 5);
    static const uint8_t tls_modes[4] = { SMTP_TLS_OFF, SMTP_TLS_MAY, SMTP_TLS_ENCRYPT, SMTP_TLS_MAY };
    cfg.tls = tls_modes[(h[5] >> 3) & 3];
    cfg.on_bare_newline = (uint8_t)((h[3] >> 6) % 3);
    cfg.on_non_smtp = (uint8_t)(((h[5] >> 5) + SMTP_VA_DROP) % 3);
    size_t outcap = outcaps[h[3] & 7];
    int delay = (h[3] & 0x08) != 0, early = (h[3] & 0x10) != 0, close_at_end = (h[3] & 0x20) != 0;
    verdicts_t v0 = { (0x9e3779b9u ^ ((uint32_t)h[4] * 0x01000193u)) | 1, (h[4] & 3) != 0 };

    size_t nlen = h[5] & 7, len, nsplits;
    size_t splits[FUZZ_MAX_SPLITS];
    const char *in;
    if (!fuzz_rest(data, size, HDR, nlen, FUZZ_MAX_SESSION, &in, &len, splits, FUZZ_MAX_SPLITS, &nsplits))
        return 0;

    /* 1. this file's driver: contract checks, FULL, delayed verdicts */
    run_t *r = calloc(1, sizeof *r);
    CHECK(r != NULL);
    run_own(r, &cfg, in, len, splits, nsplits, outcap, v0, delay, early && len);

    if (!(early && len)) {
        /* 2. tu_drive with the splits, and whole with a large buffer */
        verdicts_t v1 = v0, v2 = v0;
        tu_log_t split = tu_drive(&cfg, in, len, splits, nsplits, outcap, verdict_fn, &v1);
        tu_log_t whole = tu_drive(&cfg, in, len, NULL, 0, 65536, verdict_fn, &v2);
        fuzz_same_or_trap("logs with and without splits", &split, &whole);
        tu_log_t wire = { 0 }, events = { 0 };
        CHECK(split_log(&whole, &wire, &events) == 0);
        if (r->tls_done) {
            /* tu_drive stayed where the own driver did the handshake */
            tu_log_t own_wire = { 0 }, own_events = { 0 };
            tu_put(&own_wire, r->wire.buf, r->tls_wire);
            tu_put(&own_events, r->d.log.buf, r->tls_log);
            tu_puts(&own_events, "EOF\n");
            fuzz_same_or_trap("reply bytes of tu_drive and the own driver up to TLS", &wire, &own_wire);
            fuzz_same_or_trap("events of tu_drive and the own driver up to TLS", &events, &own_events);
            tu_free_log(&own_wire);
            tu_free_log(&own_events);
        } else {
            fuzz_same_or_trap("reply bytes of tu_drive and the own driver", &wire, &r->wire);
            fuzz_same_or_trap("events of tu_drive and the own driver", &events, &r->d.log);
        }
        tu_free_log(&wire);
        tu_free_log(&events);
        tu_free_log(&split);
        tu_free_log(&whole);
    }

    if (close_at_end && !r->closed) {
        smtp_close(&r->s, 421, "4.4.2", "Error: timeout exceeded");
        CHECK(r->o.len > 0);
        check_output(r->o.buf, r->o.len);
        r->o.len = 0;
        after_closed(r, in, len);
    }
    smtp_free(&r->s);
    free(r->o.buf);
    tu_free_log(&r->d.log);
    tu_free_log(&r->d.body);
    tu_free_log(&r->wire);
    tu_free_log(&r->body);
    free(r);
    return 0;
}

/*
 * fuzz_defer.c - when and in what order verdicts come must be invisible to
 * the client (the reply queue, core/replyq.h).
 *
 * Each input is run twice: once answering every verdict at once, once
 * leaving every MAIL, RCPT and DATA verdict open and filling the open slots
 * only when the engine pauses or a piece of input is used up, the way a
 * pipelining downstream's replies arrive, in an order the fuzzer picks (in
 * command order, newest first, or odd slots before even ones: replies that
 * overtake each other). A verdict is a function of the command it answers
 * (a hash of its address), not of its position, so both runs answer each
 * command alike; some refusals carry SMTP_R_PEER. The reply bytes, the
 * forwarded body and the error count must be identical; the deferred run is
 * also cut at fuzzer-chosen points.
 *
 * Input: h[0] config bits (normalize, small rcpt_max/error_max, fill
 * order), h[1] verdict seed, h[2] piece length for the deferred run (0:
 * whole), rest: the session.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzzutil.h"
#include "smtp.h"

typedef struct run {
    smtp_t s;
    smtp_out_t o;
    char *body;
    size_t blen, bcap;
    uint8_t seed;
    int defer;
    int order;     /* 0: command order, 1: newest first, 2: odd ones first */
    /* open slots and their verdicts, oldest first */
    uint32_t slot[4096];
    smtp_reply_t q[4096];
    size_t qn;
} run_t;

static smtp_reply_t verdict_for(const run_t *r, const smtp_event_t *ev)
{
    uint32_t h = 2166136261u ^ r->seed;
    for (size_t i = 0; i < ev->path.mailbox.len; i++)
        h = (h ^ (uint8_t)ev->path.mailbox.ptr[i]) * 16777619u;
    h ^= (uint32_t)ev->type * 0x9e3779b9u;
    switch (h % 6) {
    case 0:
        return (smtp_reply_t){ 550, "5.7.1", SLICE_LIT("verdict"), 0 };
    case 1:
        return (smtp_reply_t){ 451, "4.3.0", SLICE_LIT("verdict"), 0 };
    case 2:
        return (smtp_reply_t){ 451, "4.4.1", SLICE_LIT("downstream gone"), SMTP_R_PEER };
    default:
        if (ev->type == SMTP_EV_DATA)
            return (smtp_reply_t){ 354, NULL, SLICE_LIT("go on"), 0 };
        return (smtp_reply_t){ 250, "2.0.0", SLICE_LIT("verdict"), 0 };
    }
}

static void fill(run_t *r, size_t i)
{
    smtp_verdict(&r->s, r->slot[i], &r->q[i]);
}

static void resolve_all(run_t *r)
{
    CHECK(smtp_open(&r->s) == r->qn || r->s.state == SMTP_S_CLOSED);
    if (r->order == 1) {
        for (size_t i = r->qn; i-- > 0;)
            fill(r, i);
    } else if (r->order == 2) {
        for (size_t i = 1; i < r->qn; i += 2)
            fill(r, i);
        for (size_t i = 0; i < r->qn; i += 2)
            fill(r, i);
    } else {
        for (size_t i = 0; i < r->qn; i++)
            fill(r, i);
    }
    r->qn = 0;
    CHECK(smtp_open(&r->s) == 0);
}

static void on_event(run_t *r, const smtp_event_t *ev)
{
    if (ev->type == SMTP_EV_BODY) {
        if (r->blen + ev->arg.len > r->bcap) {
            r->bcap = (r->blen + ev->arg.len) * 2;
            r->body = realloc(r->body, r->bcap);
            CHECK(r->body != NULL);
        }
        memcpy(r->body + r->blen, ev->arg.ptr, ev->arg.len);
        r->blen += ev->arg.len;
        return;
    }
    if (!smtp_ev_wants_verdict(ev->type))
        return;
    if (ev->type == SMTP_EV_MAIL || ev->type == SMTP_EV_RCPT || ev->type == SMTP_EV_DATA) {
        smtp_reply_t v = verdict_for(r, ev);
        if (r->defer) {
            CHECK(r->qn < 4096);
            r->slot[r->qn] = ev->slot;
            r->q[r->qn++] = v;
            return;
        }
        CHECK(smtp_open(&r->s) == 1);
        smtp_verdict(&r->s, ev->slot, &v);
        return;
    }
    CHECK(smtp_open(&r->s) == 1); /* the engine never reads past open verdicts to this */
    smtp_accept(&r->s, ev->slot);
}

/* Feed one piece; returns 0 once the session is closed. */
static int feed(run_t *r, const char *p, size_t n)
{
    for (int guard = 0; guard < 1000000; guard++) {
        size_t used = 0;
        smtp_event_t ev;
        smtp_status_t st = smtp_feed(&r->s, p, n, &used, &ev);
        CHECK(used <= n);
        p += used, n -= used;
        switch (st) {
        case SMTP_EVENT:
            on_event(r, &ev);
            break;
        case SMTP_PAUSED:
            CHECK(used == 0);
            CHECK(r->qn > 0); /* nothing else can pause this driver */
            resolve_all(r);
            break;
        case SMTP_FULL:
            CHECK(0); /* the buffer is sized for the whole session */
            break;
        case SMTP_AGAIN:
            CHECK(n == 0);
            resolve_all(r); /* the downstream's replies arrive between reads */
            return 1;
        case SMTP_CLOSED:
            return 0;
        }
    }
    CHECK(0);
    return 0;
}

static void run(run_t *r, const smtp_config_t *cfg, const char *in, size_t len, size_t piece)
{
    smtp_init(&r->s, cfg, &r->o);
    smtp_greet(&r->s);
    size_t off = 0;
    while (off < len) {
        size_t n = piece && piece < len - off ? piece : len - off;
        char *copy = malloc(n ? n : 1); /* freed after use: stale pointers crash under ASan */
        memcpy(copy, in + off, n);
        int open = feed(r, copy, n);
        free(copy);
        off += n;
        if (!open)
            break;
    }
    if (r->s.state != SMTP_S_CLOSED)
        resolve_all(r);
    smtp_free(&r->s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3 || size > 8192)
        return 0;
    smtp_config_t cfg;
    smtp_config_defaults(&cfg, SLICE_LIT("mx.fuzz"));
    cfg.bare_newline = data[0] & 1 ? SCAN_BARE_NORMALIZE : SCAN_BARE_REJECT;
    if (data[0] & 2)
        cfg.rcpt_max = 3;
    if (data[0] & 4)
        cfg.error_max = 4;
    const char *in = (const char *)data + 3;
    size_t len = size - 3;

    static char ob1[1 << 20], ob2[1 << 20];
    run_t *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    a->o = (smtp_out_t){ .buf = ob1, .len = 0, .cap = sizeof ob1 };
    b->o = (smtp_out_t){ .buf = ob2, .len = 0, .cap = sizeof ob2 };
    a->seed = b->seed = data[1];
    b->defer = 1;
    b->order = (data[0] >> 3) % 3;
    run(a, &cfg, in, len, 0);
    run(b, &cfg, in, len, data[2]);
    CHECK(a->o.len == b->o.len && memcmp(ob1, ob2, a->o.len) == 0);
    CHECK(a->s.errors == b->s.errors);
    CHECK(a->blen == b->blen && (a->blen == 0 || memcmp(a->body, b->body, a->blen) == 0));
    free(a->body);
    free(b->body);
    free(a);
    free(b);
    return 0;
}

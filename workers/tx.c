/*
 * tx.c - one mail transaction (see tx.h).
 *
 * Each client command of the transaction goes through the same steps: the
 * filter chain (now, or again once SPF has answered), then forwarding (to the
 * downstream lease, or to the local Maildir), then its reply slot is filled.
 * pump() moves every command as far as it can go whenever something changes
 * (a filter's wait ended, the lease arrived or died, a reply came), so the
 * order of arrival of those things never matters: the reply queue in the
 * engine puts the replies back in command order.
 *
 * Forwarding keeps RFC 2920's rules: MAIL before its RCPTs, DATA only after
 * every RCPT was decided here and at least one was forwarded, the body only
 * after the downstream's 354. A recipient refused here never reaches the
 * downstream; a message refused here never does either.
 */
#include "tx.h"

#include "filter.h"
#include "grow.h"
#include "maildir.h"
#include "fleet.h"
#include "msgedit.h"
#include "rate.h"
#include "scanner.h"
#include "spf.h"
#include "spf_client.h"
#include "tls.h"
#include "worker.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define TX_CACHE_KEEP 64       /* free transactions a worker thread keeps */
#define TX_ARENA_FIRST 1024u   /* a sender and a few recipients */
#define TX_ARENA_KEEP 65536u   /* an arena grown past this is not kept */
#define HDR_CAP 8192u          /* trace headers: filters' tags and Received */
#define LOG_REPLY_MAX 200u     /* reply text kept per command for the log */
#define MAILDIR_FIRST 16384u
#define SPILL_STEP (1u << 20) /* a spilled message's file grows by this much */

enum mstate { M_LEASE = 1, M_SENT, M_DONE };
enum rstate { R_FILTER = 1, R_QUEUED, R_SENT, R_DONE };
enum dstate { D_NONE = 0, D_FILTER, D_QUEUED, D_SENT, D_BODY, D_ENDED, D_DONE };
enum lstate { L_NONE = 0, L_WAIT, L_READY, L_GONE };

/* A latched failure of the data phase: answered at the final dot. */
enum txerr { ERR_NONE = 0, ERR_DOWNSTREAM, ERR_MEMORY, ERR_FULL /* content_memory_limit */ };

/* The content stage, after the end of data: rspamd scans the held
 * message; then, when it passes, DATA goes downstream (its 354 awaited),
 * the message is pushed as the downstream takes it, and the end marker
 * follows. */
enum cphase { CP_NONE = 0, CP_SCAN, CP_DATA, CP_PUSH, CP_EOD };

typedef struct tx_rcpt {
    uint32_t slot;
    uint32_t off;         /* mailbox in the arena */
    uint16_t len;
    bool postmaster;
    uint8_t state;        /* enum rstate */
    uint32_t conn_no;     /* its number among the connection's RCPTs (limits) */
    bool rate_over;       /* over rate_recipients (its token taken once, when it came) */
    uint32_t reply_off;   /* "code esc text" in the arena, for the log */
    uint16_t reply_len;
} tx_rcpt_t;

struct tx {
    tx_env_t env;
    tx_t *next_free;
    uint64_t start_ms;
    /* MAIL */
    uint8_t mstate;
    bool mail_failed;
    bool mail_rate_over;       /* this MAIL was over rate_messages (its token taken once, at MAIL) */
    uint32_t mail_slot;
    smtp_mail_params_t params;
    uint32_t from_off;
    uint16_t from_len;
    smtp_reply_t mail_refusal; /* given again to what was pipelined behind it */
    char mail_esc[RQ_ESC_MAX + 1];
    uint32_t mail_reply_off;
    uint16_t mail_reply_len;
    /* RCPT */
    tx_rcpt_t *rcpt;
    uint32_t nrcpt, rcpt_cap, accepted;
    /* DATA and the end of data */
    uint8_t dstate;
    uint32_t data_slot, eod_slot;
    uint8_t error;             /* enum txerr */
    uint64_t size;
    uint64_t eod_sent_ms;      /* when the end marker went to the downstream */
    uint32_t final_off;
    uint16_t final_len;
    /* the downstream */
    uint8_t lstate;
    pool_lease_t lease;
    smtp_reply_t gone;         /* why the lease failed: the reply for what it owed */
    char gone_esc[RQ_ESC_MAX + 1];
    /* filters */
    filter_host_t host;
    spf_state_t spf;
    uint64_t spf_req;
    /* trace headers, and the body in Maildir and spool modes */
    char *hdr;
    size_t hdr_len;
    char *mbuf;
    size_t mlen, mcap;
    size_t mhead;              /* spool: room left at the start of mbuf for the record's head */
    bool local;                /* relay-then-spool: the downstream failed this transaction; answered here */
    /* the content stage (content_scanner) */
    uint8_t cphase;            /* enum cphase */
    uint64_t scan_id;          /* the scan in flight (mbuf is the scanner's meanwhile) */
    size_t held;               /* octets of mbuf counted against content_memory_limit */
    int spill_fd;              /* mbuf is this file's mapping (past the memory budget); -1: memory */
    uint8_t c_result;          /* enum m_content + 1; 0: not scanned */
    uint8_t c_error;           /* enum scanner_status of a failed scan */
    bool c_accepted;           /* a failed scan whose message went on (content_fallback = accept) */
    double c_score;
    uint8_t dkim, dmarc, arc, dmarc_policy; /* rspamd's, rspamd_auth_t and its policy */
    char *xhdr;                /* headers to put above the message (rspamd's), wire form */
    size_t xhdr_len;
    size_t push_off;           /* octets of xhdr and the message given to the downstream */
    uint64_t arrival_ms;       /* spool: the wall clock at DATA */
    /* strings that outlive the receive buffer */
    char *arena;
    uint32_t arena_len, arena_cap;
    uint8_t over;              /* enum tx_end once nothing more will happen */
    char id[40];               /* "<session>-<n>": logs, Received, Maildir */
};

static _Thread_local tx_t *cache;
static _Thread_local unsigned ncache;

static const smtp_reply_t down_reply = { 451, "4.4.1", SLICE_INIT("Error: downstream server unavailable, try again later"),
                                         SMTP_R_PEER };
static const smtp_reply_t oom_reply = { 451, "4.3.0", SLICE_INIT("Error: out of resources, try again later"),
                                        SMTP_R_PEER };
static const smtp_reply_t spool_full_reply = { 452, "4.3.1", SLICE_INIT("Error: insufficient system storage"),
                                               SMTP_R_PEER };
static const smtp_reply_t spool_failed_reply = { 451, "4.3.0", SLICE_INIT("Error: queue file write error"),
                                                 SMTP_R_PEER };
static const smtp_reply_t scanner_down_reply = {
    451, "4.3.0", SLICE_INIT("Error: content scanner unavailable, try again later"), SMTP_R_PEER
};

/* Is the content stage on for this transaction? */
static bool content_on(const tx_t *t)
{
    return t->env.cfg->content_scanner != CONFIG_CONTENT_NONE;
}

/* content: mbuf's capacity is counted against content_memory_limit; false
 * when the budget cannot take cap octets. */
static bool count_mbuf(tx_t *t, size_t cap)
{
    if (!content_on(t) || cap <= t->held)
        return true;
    if (!scanner_hold(t->env.w, t->env.cfg, cap - t->held))
        return false;
    t->held = cap;
    return true;
}

static bool recording(const tx_t *t);

/* A failure to spill, logged at most once a second per worker. */
static void spill_failed(tx_t *t, const char *what)
{
    static _Thread_local uint64_t last;
    if (t->env.w->now - last < 1000 && last)
        return;
    last = t->env.w->now;
    log_line(LOG_WARN, "event=content_spill_failed worker=%d dir=%s op=%s error=\"%s\"", t->env.w->id,
             t->env.cfg->spool_dir, what, strerror(errno));
}

/* Past content_memory_limit: the held message moves to an unlinked file
 * under spool_dir, mapped in mbuf's place (the spool's own modes hold it in
 * their record instead: not here). */
static bool spill_start(tx_t *t, size_t cap)
{
    worker_t *w = t->env.w;
    int dirfd = w->limits->spill_dirfd;
    if (!content_on(t) || recording(t) || !scanner_spill_hold(w, t->env.cfg, cap))
        return false;
    char name[64];
    snprintf(name, sizeof name, "content-%s.tmp", t->id);
    int fd = openat(dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        spill_failed(t, "open");
        scanner_spill_unhold(w, cap);
        return false;
    }
    unlinkat(dirfd, name, 0);
    char *p = ftruncate(fd, (off_t)cap) == 0 ? mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
    if (p == MAP_FAILED) {
        spill_failed(t, "map");
        scanner_buf_free(w, NULL, cap, 0, fd);
        return false;
    }
    if (t->mlen)
        memcpy(p, t->mbuf, t->mlen);
    free(t->mbuf);
    scanner_unhold(w, t->held);
    t->held = 0;
    t->mbuf = p;
    t->mcap = cap;
    t->spill_fd = fd;
    m_inc(&w->m.content_spills);
    return true;
}

static bool spill_grow(tx_t *t, size_t cap)
{
    worker_t *w = t->env.w;
    if (!scanner_spill_hold(w, t->env.cfg, cap - t->mcap))
        return false;
    char *p = ftruncate(t->spill_fd, (off_t)cap) == 0 ? mremap(t->mbuf, t->mcap, cap, MREMAP_MAYMOVE) : MAP_FAILED;
    if (p == MAP_FAILED) {
        spill_failed(t, "grow");
        scanner_spill_unhold(w, cap - t->mcap);
        return false;
    }
    t->mbuf = p;
    t->mcap = cap;
    return true;
}

/* mbuf holds at least cap octets, its first mlen kept, counted against the
 * content stage's budgets (memory, then a file). false: t->error says why. */
static bool grow_mbuf(tx_t *t, size_t cap)
{
    if (t->spill_fd >= 0) {
        if (cap <= t->mcap || spill_grow(t, cap))
            return true;
    } else if (count_mbuf(t, cap)) {
        if (cap <= t->mcap)
            return true;
        char *m = realloc(t->mbuf, cap);
        if (m) {
            t->mbuf = m;
            t->mcap = cap;
            return true;
        }
        t->error = ERR_MEMORY;
        return false;
    } else if (spill_start(t, cap)) {
        return true;
    }
    m_inc(&t->env.w->m.content_memory_full);
    t->error = ERR_FULL;
    return false;
}

/* Relay-through: each command goes to a leased downstream connection. The
 * other modes answer here and keep the message: the Maildir (no
 * downstream), or the spool (delivery = spool), whose record the body is
 * written into, its head left room for at DATA. */
static bool fallback(const tx_t *t)
{
    return t->env.cfg->delivery == CONFIG_DELIVERY_RELAY_THEN_SPOOL && t->env.w->spool;
}

/* Forwarding to a lease now? relay-then-spool stops when the downstream
 * cannot take this transaction (t->local). */
static bool relay_mode(const tx_t *t)
{
    if (!t->env.cfg->downstream[0])
        return false;
    return t->env.cfg->delivery == CONFIG_DELIVERY_RELAY || (fallback(t) && !t->local);
}

/* Answered here and spooled at the end of data? */
static bool spool_mode(const tx_t *t)
{
    return (t->env.cfg->delivery == CONFIG_DELIVERY_SPOOL && t->env.w->spool) || (fallback(t) && t->local);
}

/* Is the message's spool record being built (in relay-then-spool, also
 * while it is forwarded: the downstream may still fail)? */
static bool recording(const tx_t *t)
{
    return spool_mode(t) || fallback(t);
}

/* ---- the arena: strings that must outlive a receive buffer ---- */

static uint32_t keep(tx_t *t, const char *p, size_t n)
{
    if (n > UINT16_MAX)
        return UINT32_MAX;
    return grow_append(&t->arena, &t->arena_cap, &t->arena_len, p, n, TX_ARENA_FIRST);
}

static slice_t kept(const tx_t *t, uint32_t off, uint32_t len)
{
    return off == UINT32_MAX ? SLICE_NULL : slice_make(t->arena + off, len);
}

/* "250 2.1.5 Ok" for the log, cut to LOG_REPLY_MAX. */
static void keep_reply(tx_t *t, const smtp_reply_t *r, uint32_t *off, uint16_t *len)
{
    char b[LOG_REPLY_MAX];
    int n = snprintf(b, sizeof b, "%d%s%s %.*s", r->code, r->esc ? " " : "", r->esc ? r->esc : "",
                     (int)r->text.len, r->text.ptr ? r->text.ptr : "");
    size_t k = n < 0 ? 0 : (size_t)n < sizeof b ? (size_t)n : sizeof b - 1;
    *off = keep(t, b, k);
    *len = (uint16_t)(*off == UINT32_MAX ? 0 : k);
}

/* ---- replies ---- */

static void answer(tx_t *t, uint32_t slot, const smtp_reply_t *r)
{
    smtp_verdict(t->env.smtp, slot, r);
}

static tx_rcpt_t *rcpt_by_slot(tx_t *t, uint32_t slot)
{
    for (uint32_t i = 0; i < t->nrcpt; i++)
        if (t->rcpt[i].slot == slot && t->rcpt[i].state == R_SENT)
            return &t->rcpt[i];
    return NULL;
}

static void answer_rcpt(tx_t *t, tx_rcpt_t *rc, const smtp_reply_t *r)
{
    rc->state = R_DONE;
    if (r->code < 300 && !t->mail_failed)
        t->accepted++;
    keep_reply(t, r, &rc->reply_off, &rc->reply_len);
    answer(t, rc->slot, r);
}

static void answer_mail(tx_t *t, const smtp_reply_t *r)
{
    t->mstate = M_DONE;
    keep_reply(t, r, &t->mail_reply_off, &t->mail_reply_len);
    if (r->code >= 400) {
        t->mail_failed = true;
        t->mail_refusal = *r;
        snprintf(t->mail_esc, sizeof t->mail_esc, "%s", r->esc ? r->esc : "");
        t->mail_refusal.esc = t->mail_esc[0] ? t->mail_esc : NULL;
        t->mail_refusal.text = SLICE_LIT("Error: sender not accepted");
    }
    answer(t, t->mail_slot, r);
}

static void answer_data(tx_t *t, const smtp_reply_t *r)
{
    t->dstate = D_DONE;
    answer(t, t->data_slot, r);
}

static void answer_eod(tx_t *t, const smtp_reply_t *r)
{
    t->dstate = D_DONE;
    keep_reply(t, r, &t->final_off, &t->final_len);
    m_inc(&t->env.w->m.messages[r->code < 300 ? MO_ACCEPTED : r->code < 500 ? MO_DEFERRED : MO_REFUSED]);
    t->over = TXE_DATA;
    answer(t, t->eod_slot, r);
}

/* ---- the lease ---- */

static void lease_gone(tx_t *t, const smtp_reply_t *r)
{
    t->lstate = L_GONE;
    t->lease = 0;
    t->gone = *r;
    snprintf(t->gone_esc, sizeof t->gone_esc, "%s", r->esc ? r->esc : "");
    t->gone.esc = t->gone_esc[0] ? t->gone_esc : NULL;
    t->gone.text = SLICE_LIT("Error: downstream server unavailable, try again later");
    t->gone.flags |= SMTP_R_PEER;
    if (t->dstate == D_BODY)
        t->error = ERR_DOWNSTREAM; /* answered at the final dot */
}

static void release(tx_t *t)
{
    if (t->lstate == L_READY)
        pool_release(t->env.w, t->lease);
    else if (t->lstate == L_WAIT) {
        pool_owner_t o = { t->env.ops, t->env.owner_idx, t->env.owner_gen, t->env.number };
        pool_cancel(t->env.w, &o);
    }
    t->lstate = L_GONE;
    t->lease = 0;
    t->gone = down_reply;
}

static void deliver_spool(tx_t *t);

/*
 * relay-then-spool: the downstream cannot take this transaction (it is
 * unreachable or busy past its queue, its connection failed or timed out,
 * or it answered MAIL, DATA or the end of data with a 4xx of its own). The
 * commands it still owes replies for are answered here instead, and the
 * message goes to the spool: the client's 250 is one it can trust either
 * way. A 4xx to a RCPT is the recipient's and a 5xx is final: both pass.
 */
static void go_local(tx_t *t)
{
    if (t->local)
        return;
    t->local = true;
    release(t);
    m_inc(&t->env.w->m.spool_fallbacks);
    if (t->mstate == M_SENT) {
        smtp_reply_t ok = { 250, "2.1.0", SLICE_LIT("Ok"), 0 };
        answer_mail(t, &ok);
    }
    for (uint32_t i = 0; i < t->nrcpt; i++)
        if (t->rcpt[i].state == R_SENT)
            t->rcpt[i].state = R_QUEUED;
    if (t->dstate == D_SENT)
        t->dstate = D_QUEUED;
    if (t->cphase != CP_SCAN)
        t->cphase = CP_NONE; /* what was on its way downstream goes to the spool instead */
    if (t->dstate == D_ENDED && t->cphase != CP_SCAN) /* a scan in flight: spooled at its verdict */
        deliver_spool(t);
}

static void pump(tx_t *t);

/* A command the lease refused before sending it: it died under us, or the
 * relay is full (4xx): relay-then-spool goes on here. A 5xx (SMTPUTF8 or a
 * SIZE the server does not offer) is the message's answer in every mode:
 * better refused now than bounced later. false: the refusal is the answer. */
static bool refused_fallback(tx_t *t, const smtp_reply_t *refusal)
{
    if (!fallback(t) || refusal->code >= 500)
        return false;
    go_local(t);
    pump(t);
    return true;
}

/* ---- filters ---- */

static void path_of(slice_t mailbox, bool postmaster, smtp_path_t *p)
{
    memset(p, 0, sizeof *p);
    p->mailbox = mailbox;
    p->null = mailbox.len == 0;
    p->postmaster = postmaster;
    const char *at = mailbox.len ? memrchr(mailbox.ptr, '@', mailbox.len) : NULL;
    if (at) {
        p->local = slice_make(mailbox.ptr, (size_t)(at - mailbox.ptr));
        p->domain = slice_make(at + 1, (size_t)(mailbox.ptr + mailbox.len - at - 1));
    } else {
        p->local = mailbox;
    }
}

static void facts(tx_t *t, filter_facts_t *fx, smtp_path_t *sender)
{
    memset(fx, 0, sizeof *fx);
    fx->cfg = t->env.cfg;
    fx->host = &t->host;
    fx->family = t->env.family;
    fx->addr = t->env.addr;
    fx->helo = t->env.helo;
    fx->messages = t->env.number;
    fx->rate_over = t->mail_rate_over ? FILTER_RATE_MSG : 0;
    fx->spf = &t->spf;
    fx->dnsbl = t->env.dnsbl;
    path_of(kept(t, t->from_off, t->from_len), false, sender);
    fx->sender = sender;
}

static void hook_spf(void *ctx, const filter_facts_t *fx)
{
    tx_t *t = ctx;
    spf_owner_t o = { t->env.owner_idx, t->env.owner_gen, t->env.number };
    slice_t sender = fx->sender && !fx->sender->null ? fx->sender->mailbox : SLICE_NULL;
    t->spf_req = spfc_start(t->env.w, &o, t->env.family, t->env.addr, fx->helo, sender, &t->spf);
}

static smtp_reply_t verdict_reply(const filter_verdict_t *v)
{
    smtp_reply_t r = { v->code, v->esc, slice_make(v->text, v->text ? strlen(v->text) : 0), 0 };
    if (v->act == FA_TEMPFAIL && v->code < 500)
        r.flags |= SMTP_R_PEER; /* a limit or a lookup, not a client error */
    return r;
}

/* Run one stage of the chain for this transaction (and a recipient at
 * RCPT): FA_WAIT, FA_ACCEPT, or a refusal with its reply in *r. */
static enum filter_act run_stage(tx_t *t, enum filter_stage st, const tx_rcpt_t *rc, smtp_reply_t *r)
{
    filter_facts_t fx;
    smtp_path_t sender, rcpt;
    filter_verdict_t v;
    facts(t, &fx, &sender);
    if (rc) {
        path_of(kept(t, rc->off, rc->len), rc->postmaster, &rcpt);
        fx.rcpt = &rcpt;
        fx.rcpts = rc->conn_no;
        if (rc->rate_over)
            fx.rate_over |= FILTER_RATE_RCPT;
    }
    enum filter_act a = filter_run(t->env.chain, st, &fx, &v);
    if (a == FA_REJECT || a == FA_TEMPFAIL)
        *r = verdict_reply(&v);
    if (a == FA_REJECT && v.why && !strcmp(v.why, "dnsbl"))
        m_inc(&t->env.w->m.dnsbl_refused);
    return a == FA_TAG ? FA_ACCEPT : a;
}

/* The RCPT stage for a recipient, or the DATA stage (rc NULL; the verdict
 * only, the headers come at 354): waiting, queued, or answered. */
static void stage_step(tx_t *t, tx_rcpt_t *rc)
{
    smtp_reply_t r;
    enum filter_act a = run_stage(t, rc ? FS_RCPT : FS_DATA, rc, &r);
    uint8_t *state = rc ? &rc->state : &t->dstate;
    if (a == FA_WAIT)
        *state = rc ? R_FILTER : D_FILTER;
    else if (a == FA_ACCEPT)
        *state = rc ? R_QUEUED : D_QUEUED;
    else if (rc)
        answer_rcpt(t, rc, &r);
    else
        answer_data(t, &r);
}

/* ---- trace headers ---- */

/* A HELO name goes into a header: printable, and nothing that would end the
 * comment or the clause it stands in. */
static size_t clean_helo(slice_t h, char *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < h.len && n + 1 < cap; i++) {
        unsigned char c = (unsigned char)h.ptr[i];
        out[n++] = c > 0x20 && c < 0x7f && c != '(' && c != ')' && c != '\\' && c != ';' ? (char)c : '?';
    }
    if (n == 0)
        memcpy(out, "unknown", 7), n = 7;
    out[n] = '\0';
    return n;
}

/* The filters' tags (Received-SPF, Authentication-Results), then our
 * Received, whose id is the transaction's log id. */
static bool build_headers(tx_t *t)
{
    if (!t->hdr && !(t->hdr = malloc(HDR_CAP)))
        return false;
    filter_facts_t fx;
    smtp_path_t sender;
    filter_verdict_t v;
    facts(t, &fx, &sender);
    fx.hdr = t->hdr;
    fx.hdr_cap = HDR_CAP - 1024; /* the Received header's room */
    if (filter_run(t->env.chain, FS_DATA, &fx, &v) >= FA_REJECT)
        fx.hdr_len = 0; /* the verdict was taken before; only the tags matter here */
    /* localtime_r takes glibc's process-wide tz lock: once a second per
     * worker thread is enough for a date with one-second resolution. */
    static _Thread_local time_t date_sec = -1;
    static _Thread_local char date[64];
    time_t now = time(NULL);
    if (now != date_sec) {
        struct tm tm;
        localtime_r(&now, &tm);
        strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S %z", &tm);
        date_sec = now;
    }
    /* RFC 3848 and 6531's names; S for STARTTLS */
    const char *proto = t->params.smtputf8 ? (t->env.tls ? "UTF8SMTPS" : "UTF8SMTP")
                        : t->env.esmtp     ? (t->env.tls ? "ESMTPS" : "ESMTP")
                                           : (t->env.tls ? "SMTPS" : "SMTP");
    char using[192] = "";
    if (t->env.tls) {
        /* Postfix's form: (using TLSv1.3 with cipher X (256/256 bits)) */
        int alg = 0, bits = tls_bits(t->env.tls, &alg);
        snprintf(using, sizeof using, "\r\n\t(using %s with cipher %s (%d/%d bits))", tls_version(t->env.tls),
                 tls_cipher(t->env.tls), bits, alg);
    }
    char helo[256], forpart[ADDR_PATH_MAX + 16] = "";
    clean_helo(t->env.helo, helo, sizeof helo);
    if (t->accepted == 1) {
        for (uint32_t i = 0; i < t->nrcpt; i++) {
            tx_rcpt_t *rc = &t->rcpt[i];
            if (rc->state == R_DONE && rc->reply_len && t->arena[rc->reply_off] == '2')
                snprintf(forpart, sizeof forpart, "\r\n\tfor <%.*s>", (int)rc->len, t->arena + rc->off);
        }
    }
    int k = snprintf(t->hdr + fx.hdr_len, HDR_CAP - fx.hdr_len,
                     "Received: from %s (%s%s])%s\r\n\tby %s (mxgate) with %s id %s%s;\r\n\t%s\r\n", helo,
                     t->env.family == AF_INET6 ? "[IPv6:" : "[", t->env.ip, using, t->env.cfg->hostname, proto,
                     t->id, forpart, date);
    if (k <= 0 || (size_t)k >= HDR_CAP - fx.hdr_len)
        k = 0;
    t->hdr_len = fx.hdr_len + (size_t)k;
    return true;
}

/* ---- moving commands along ---- */

static bool rcpts_decided(const tx_t *t)
{
    for (uint32_t i = 0; i < t->nrcpt; i++)
        if (t->rcpt[i].state == R_FILTER || t->rcpt[i].state == R_QUEUED)
            return false;
    return true;
}

static bool any_forwarded(const tx_t *t)
{
    for (uint32_t i = 0; i < t->nrcpt; i++)
        if (t->rcpt[i].state == R_SENT)
            return true;
    return t->accepted > 0;
}

static void send_mail(tx_t *t)
{
    smtp_reply_t refusal;
    if (!relay_mode(t)) {
        t->mstate = M_SENT;
        smtp_reply_t ok = { 250, "2.1.0", SLICE_LIT("Ok"), 0 };
        answer_mail(t, &ok);
        return;
    }
    if (t->lstate == L_GONE) {
        answer_mail(t, &t->gone);
        return;
    }
    if (t->lstate != L_READY)
        return;
    t->mstate = M_SENT;
    if (!pool_mail(t->env.w, t->lease, t->mail_slot, kept(t, t->from_off, t->from_len), &t->params, &refusal) &&
        !refused_fallback(t, &refusal))
        answer_mail(t, &refusal);
}

/* The spool record's envelope: the accepted recipients, as slices (valid
 * until the next call in this thread). */
static _Thread_local slice_t *env_rcpts; /* freed with the cache, at the thread's end */
static _Thread_local uint32_t env_rcap;

static bool spool_envelope(tx_t *t, spool_msg_t *m, const slice_t **rcpts)
{
    slice_t *r = env_rcpts;
    uint32_t n = 0;
    memset(m, 0, sizeof *m);
    if (t->nrcpt > env_rcap) {
        slice_t *g = realloc(r, t->nrcpt * sizeof *g);
        if (!g)
            return false;
        r = env_rcpts = g;
        env_rcap = t->nrcpt;
    }
    for (uint32_t i = 0; i < t->nrcpt; i++) {
        tx_rcpt_t *rc = &t->rcpt[i];
        if (rc->state == R_DONE && rc->reply_len && t->arena[rc->reply_off] == '2')
            r[n++] = slice_make(t->arena + rc->off, rc->len);
    }
    m->id = (spool_id_t){ t->env.session_id, t->env.number };
    m->arrival_ms = t->arrival_ms;
    m->flags = (t->params.smtputf8 ? SPOOL_F_SMTPUTF8 : 0) | (t->params.body == BODY_8BITMIME ? SPOOL_F_8BITMIME : 0) |
               (t->params.body == BODY_7BIT ? SPOOL_F_7BIT : 0);
    m->sender = kept(t, t->from_off, t->from_len);
    m->client = slice_make(t->env.ip, strlen(t->env.ip));
    m->helo = t->env.helo;
    m->nrcpt = (uint16_t)(n > SPOOL_RCPT_MAX ? SPOOL_RCPT_MAX : n);
    *rcpts = r;
    return true;
}

/* Lay the body buffer out from the trace headers built: Maildir and spool
 * modes keep the message here (in spool modes after room for the record's
 * head). */
static bool start_record(tx_t *t)
{
    t->mhead = 0;
    if (recording(t)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        t->arrival_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
        spool_msg_t m;
        const slice_t *rcpts;
        int64_t h = spool_envelope(t, &m, &rcpts) ? spool_msg_head_size(&m, rcpts) : -1;
        if (h < 0)
            return false;
        t->mhead = (size_t)h;
    }
    size_t cap = t->mcap >= MAILDIR_FIRST ? t->mcap : MAILDIR_FIRST;
    if (cap < 2 * (t->hdr_len + t->mhead))
        cap = 2 * (t->hdr_len + t->mhead);
    if (!grow_mbuf(t, cap))
        return false;
    memcpy(t->mbuf + t->mhead, t->hdr, t->hdr_len);
    t->mlen = t->mhead + t->hdr_len;
    return true;
}

static bool start_local_body(tx_t *t)
{
    return build_headers(t) && start_record(t);
}

static void send_data(tx_t *t)
{
    smtp_reply_t refusal;
    if (t->mail_failed) {
        answer_data(t, &t->mail_refusal);
    } else if (!any_forwarded(t)) {
        smtp_reply_t r = { 554, "5.5.1", SLICE_LIT("Error: no valid recipients"), 0 };
        answer_data(t, &r);
    } else if (!relay_mode(t) || (content_on(t) && t->lstate == L_READY)) {
        /* Held here: the Maildir, the spool, or the content stage (whose
         * DATA goes downstream only once the message passed). */
        if (!start_local_body(t)) {
            answer_data(t, t->error == ERR_FULL ? &spool_full_reply : &oom_reply);
            t->error = ERR_NONE;
            return;
        }
        t->dstate = D_BODY;
        smtp_reply_t go = { 354, NULL, SLICE_LIT("End data with <CR><LF>.<CR><LF>"), 0 };
        answer(t, t->data_slot, &go);
    } else if (t->lstate == L_GONE) {
        answer_data(t, &t->gone);
    } else if (t->lstate == L_READY) {
        t->dstate = D_SENT;
        if (!pool_data(t->env.w, t->lease, t->data_slot, &refusal) && !refused_fallback(t, &refusal))
            answer_data(t, &refusal);
    }
}

static void pump(tx_t *t)
{
    if (t->mstate == M_LEASE)
        send_mail(t);
    if (t->mstate == M_LEASE)
        return; /* RCPTs go after their MAIL */
    for (uint32_t i = 0; i < t->nrcpt; i++) {
        tx_rcpt_t *rc = &t->rcpt[i];
        if (rc->state != R_QUEUED)
            continue;
        smtp_reply_t refusal;
        if (t->mail_failed) {
            answer_rcpt(t, rc, &t->mail_refusal);
        } else if (!relay_mode(t)) {
            smtp_reply_t ok = { 250, "2.1.5", SLICE_LIT("Ok"), 0 };
            answer_rcpt(t, rc, &ok);
        } else if (t->lstate == L_GONE) {
            answer_rcpt(t, rc, &t->gone);
        } else if (t->lstate == L_READY) {
            rc->state = R_SENT;
            if (!pool_rcpt(t->env.w, t->lease, rc->slot, kept(t, rc->off, rc->len), &refusal)) {
                if (refused_fallback(t, &refusal))
                    return; /* pumped again, answered here from now on */
                answer_rcpt(t, rc, &refusal);
            }
        }
    }
    if (t->dstate == D_QUEUED && rcpts_decided(t))
        send_data(t);
}

/* ---- the client's commands ---- */

static tx_t *tx_new(void)
{
    tx_t *t = cache;
    if (t) {
        cache = t->next_free;
        ncache--;
        char *arena = t->arena, *hdr = t->hdr, *mbuf = t->mbuf;
        uint32_t acap = t->arena_cap, rcap = t->rcpt_cap;
        size_t mcap = t->mcap;
        tx_rcpt_t *rcpt = t->rcpt;
        spf_state_t spf = t->spf;
        memset(t, 0, sizeof *t);
        t->arena = arena, t->arena_cap = acap;
        t->hdr = hdr;
        t->mbuf = mbuf, t->mcap = mcap;
        t->rcpt = rcpt, t->rcpt_cap = rcap;
        t->spf = spf;
        t->spf.status = SPF_IDLE;
        t->spill_fd = -1;
        return t;
    }
    t = calloc(1, sizeof *t);
    if (t)
        t->spill_fd = -1;
    return t;
}

tx_t *tx_begin(const tx_env_t *env, const smtp_event_t *mail)
{
    tx_t *t = tx_new();
    if (!t) {
        smtp_verdict(env->smtp, mail->slot, &oom_reply);
        return NULL;
    }
    t->env = *env;
    t->start_ms = env->w->now;
    t->mail_slot = mail->slot;
    t->params = mail->params;
    t->mail_rate_over = fleet_rate_over(env->w, env->cfg, RATE_MSG, env->family, env->addr);
    t->host.spf_start = hook_spf;
    t->host.ctx = t;
    t->mstate = M_LEASE;
    snprintf(t->id, sizeof t->id, "%016llx-%u", (unsigned long long)env->session_id, env->number);
    t->from_off = keep(t, mail->path.mailbox.ptr, mail->path.mailbox.len);
    t->from_len = (uint16_t)mail->path.mailbox.len;
    if (t->from_off == UINT32_MAX) {
        t->from_len = 0;
        answer_mail(t, &oom_reply);
        return t;
    }
    filter_facts_t fx;
    smtp_path_t sender;
    filter_verdict_t v;
    facts(t, &fx, &sender);
    fx.sender = &mail->path;
    enum filter_act a = filter_run(env->chain, FS_MAIL, &fx, &v);
    if (a == FA_REJECT || a == FA_TEMPFAIL || a == FA_WAIT) {
        if (a == FA_WAIT)
            v = (filter_verdict_t){ FA_TEMPFAIL, 451, "4.3.0", "Error: try again later", "wait" };
        smtp_reply_t r = verdict_reply(&v);
        if (v.code == 421) { /* a limit that ends the session */
            keep_reply(t, &r, &t->mail_reply_off, &t->mail_reply_len);
            t->mstate = M_DONE;
            t->mail_failed = true;
            smtp_close(env->smtp, v.code, v.esc, v.text);
            t->over = TXE_REFUSED;
            return t;
        }
        answer_mail(t, &r);
        return t;
    }
    if (spool_mode(t) && spooler_full(env->w, t->params.size)) {
        answer_mail(t, &spool_full_reply);
        return t;
    }
    if (content_on(t) && t->params.size &&
        m_get(&env->w->m.content_held) + t->params.size > env->cfg->content_memory_limit &&
        (spool_mode(t) || fallback(t) || env->w->limits->spill_dirfd < 0 ||
         m_get(&env->w->m.content_spilled) + t->params.size > env->cfg->content_spill_limit)) {
        m_inc(&env->w->m.content_memory_full);
        answer_mail(t, &spool_full_reply);
        return t;
    }
    if (relay_mode(t)) {
        pool_owner_t o = { env->ops, env->owner_idx, env->owner_gen, env->number };
        smtp_reply_t refusal;
        switch (pool_acquire(env->w, &o, &t->lease, &refusal)) {
        case POOL_GRANTED:
            t->lstate = L_READY;
            break;
        case POOL_QUEUED:
            t->lstate = L_WAIT;
            break;
        case POOL_REFUSED:
            if (fallback(t)) {
                t->local = true; /* unreachable or full: straight to the spool */
                m_inc(&env->w->m.spool_fallbacks);
                break;
            }
            lease_gone(t, &refusal);
            t->gone.text = refusal.text; /* static: the pool's own words */
            break;
        }
    }
    pump(t);
    return t;
}

void tx_rcpt(tx_t *t, const smtp_event_t *ev, uint32_t rcpts_conn)
{
    if (t->nrcpt == t->rcpt_cap) {
        uint32_t cap = t->rcpt_cap ? t->rcpt_cap * 2 : 8;
        tx_rcpt_t *n = realloc(t->rcpt, cap * sizeof *n);
        if (!n) {
            answer(t, ev->slot, &oom_reply);
            return;
        }
        t->rcpt = n;
        t->rcpt_cap = cap;
    }
    tx_rcpt_t *rc = &t->rcpt[t->nrcpt++];
    memset(rc, 0, sizeof *rc);
    rc->slot = ev->slot;
    rc->postmaster = ev->path.postmaster;
    rc->conn_no = rcpts_conn;
    rc->rate_over = fleet_rate_over(t->env.w, t->env.cfg, RATE_RCPT, t->env.family, t->env.addr);
    rc->off = keep(t, ev->path.mailbox.ptr, ev->path.mailbox.len);
    rc->len = (uint16_t)ev->path.mailbox.len;
    if (rc->off == UINT32_MAX) {
        rc->len = 0;
        answer_rcpt(t, rc, &oom_reply);
        return;
    }
    if (t->mail_failed) {
        answer_rcpt(t, rc, &t->mail_refusal);
        return;
    }
    stage_step(t, rc);
    pump(t);
}

void tx_data(tx_t *t, const smtp_event_t *ev)
{
    t->data_slot = ev->slot;
    if (t->mail_failed) {
        answer_data(t, &t->mail_refusal);
        return;
    }
    stage_step(t, NULL);
    pump(t);
}

void tx_body(tx_t *t, slice_t b)
{
    t->size += b.len;
    if (t->dstate != D_BODY || t->error)
        return; /* drained: the failure is answered at the final dot */
    if (!relay_mode(t) || recording(t) || content_on(t)) {
        if (t->mlen + b.len + SPOOL_ALIGN > t->mcap) { /* the spool record's padding: room kept at its end */
            size_t cap = t->mcap ? t->mcap : MAILDIR_FIRST;
            while (cap < t->mlen + b.len + SPOOL_ALIGN)
                cap = content_on(t) ? cap + cap / 2 : cap * 2; /* held while scanned: less slack */
            if (t->spill_fd >= 0) /* a file grows in place (mremap): by the megabyte */
                cap = (t->mlen + b.len + SPOOL_ALIGN + SPILL_STEP - 1) / SPILL_STEP * SPILL_STEP;
            if (!grow_mbuf(t, cap))
                return; /* the rest is read and dropped; 452 4.3.1 (or 451) at the final dot */
        }
        memcpy(t->mbuf + t->mlen, b.ptr, b.len);
        t->mlen += b.len;
        if (!relay_mode(t) || content_on(t))
            return;
    }
    if (t->lstate != L_READY || !pool_body(t->env.w, t->lease, b.ptr, b.len)) {
        if (fallback(t)) {
            go_local(t); /* the body goes on into the record */
            return;
        }
        if (!t->error)
            t->error = ERR_DOWNSTREAM;
        return;
    }
    m_add(&t->env.w->m.relayed_bytes, b.len);
}

size_t tx_room(tx_t *t)
{
    if (t->dstate != D_BODY || t->error || t->lstate != L_READY || content_on(t))
        return SIZE_MAX;
    return pool_room(t->env.w, t->lease);
}

static void deliver_local(tx_t *t)
{
    char name[512], text[600];
    if (t->error || !t->mbuf ||
        maildir_deliver(t->env.cfg->maildir, t->env.cfg->hostname, t->id, t->xhdr, t->xhdr_len, t->mbuf + t->mhead,
                        t->mlen - t->mhead, name, sizeof name)) {
        smtp_reply_t r = { 451, "4.3.0", SLICE_LIT("Error: local delivery failed"), SMTP_R_PEER };
        answer_eod(t, &r);
        return;
    }
    int n = snprintf(text, sizeof text, "Ok: delivered as %s", name);
    smtp_reply_t r = { 250, "2.0.0", slice_make(text, n > 0 ? (size_t)n : 0), 0 };
    answer_eod(t, &r);
}

/* ---- the content stage ---- */

/* The accepted recipients as slices (valid until the next call in this
 * thread). */
static const slice_t *accepted_rcpts(tx_t *t, size_t *n)
{
    spool_msg_t m;
    const slice_t *r;
    if (!spool_envelope(t, &m, &r))
        return NULL;
    *n = 0;
    for (uint32_t i = 0; i < t->nrcpt; i++) {
        tx_rcpt_t *rc = &t->rcpt[i];
        if (rc->state == R_DONE && rc->reply_len && t->arena[rc->reply_off] == '2')
            (*n)++;
    }
    return r;
}

static void forward_content(tx_t *t);

/* The scan failed (rspamd down, slow, or unreadable): content_fallback. */
static void content_failed(tx_t *t, enum scanner_status st)
{
    worker_t *w = t->env.w;
    t->c_error = (uint8_t)st;
    t->c_result = MCS_ERROR + 1;
    m_inc(&w->m.content_scans[MCS_ERROR]);
    bool accept = t->env.cfg->content_fallback == CONFIG_CONTENT_ACCEPT;
    m_inc(&w->m.content_fallback[accept ? CONFIG_CONTENT_ACCEPT : CONFIG_CONTENT_TEMPFAIL]);
    if (!accept) {
        release(t);
        answer_eod(t, &scanner_down_reply);
        return;
    }
    t->c_accepted = true;
    forward_content(t);
}

static void start_scan(tx_t *t)
{
    size_t n = 0;
    const slice_t *rcpts = accepted_rcpts(t, &n);
    if (!rcpts) {
        release(t);
        answer_eod(t, &oom_reply);
        return;
    }
    slice_t from = kept(t, t->from_off, t->from_len);
    rspamd_env_t env = {
        .ip = slice_make(t->env.ip, strlen(t->env.ip)),
        .helo = t->env.helo,
        .sender = from,
        .rcpts = rcpts,
        .nrcpts = n,
        .queue_id = slice_make(t->id, strlen(t->id)),
        .mta_name = slice_make(t->env.cfg->hostname, strlen(t->env.cfg->hostname)),
    };
    scanner_owner_t o = { t->env.owner_idx, t->env.owner_gen, t->env.number };
    enum scanner_status st;
    t->scan_id = scanner_start(t->env.w, &o, t->env.cfg, &env, t->mbuf, t->mcap, t->held, t->spill_fd, t->mhead,
                               t->mlen - t->mhead, &st);
    if (!t->scan_id) {
        content_failed(t, st);
        return;
    }
    /* The buffer and its count are the scanner's until the verdict. */
    t->mbuf = NULL;
    t->mcap = 0;
    t->held = 0;
    t->spill_fd = -1;
    t->cphase = CP_SCAN;
}

/* Header edits that rspamd asked for, applied to the held message: its
 * headers to prepend (with mxgate's Authentication-Results merged into
 * rspamd's, RFC 8601's one field per authserv-id... and per message here),
 * the fields it removes, and the Subject it rewrites. The trace block
 * (mxgate's own headers) is mbuf[mhead, mhead + hdr_len); the client's
 * message follows it. */
#define EDIT_CUTS 64 /* on the stack; a header with more lines gets them from the heap */
#define XHDR_CAP (RSPAMD_ARENA_MAX + 16384)

static _Thread_local char *scratch, *merged; /* freed with the cache, at the thread's end */

static bool apply_edits(tx_t *t, rspamd_verdict_t *v)
{
    if (!scratch && !(scratch = malloc(XHDR_CAP)))
        return false;
    if (!merged && !(merged = malloc(RSPAMD_WIRE_LINE_MAX * 8)))
        return false;
    msgedit_cut_t stack[EDIT_CUTS], *cuts = stack;
    size_t ncuts = 0;
    const char *trace = t->mbuf + t->mhead;
    size_t trace_len = t->hdr_len <= t->mlen - t->mhead ? t->hdr_len : 0;
    /* One Authentication-Results: mxgate's (SPF) merged into rspamd's. */
    static const msgedit_del_t ar_del = { SLICE_INIT("Authentication-Results"), 0 };
    for (size_t i = 0; i < v->nadd; i++) {
        if (!slice_ieq(v->add[i].name, "Authentication-Results"))
            continue;
        msgedit_cut_t ours;
        if (msgedit_cuts(trace, trace_len, &ar_del, 1, &ours, 1) != 1)
            break;
        const char *colon = memchr(trace + ours.off, ':', ours.len);
        if (!colon || ours.len < 2)
            break;
        size_t vlen = ours.len - (size_t)(colon + 1 - (trace + ours.off)) - 2; /* without its CRLF */
        size_t mlen;
        if (msgedit_ar_merge(slice_make(colon + 1, vlen), v->add[i].value, merged, RSPAMD_WIRE_LINE_MAX * 8,
                             &mlen) == 0) {
            v->add[i].value = slice_make(merged, mlen);
            cuts[ncuts++] = (msgedit_cut_t){ t->mhead + ours.off, ours.len };
        }
        break;
    }
    /* What rspamd removes, and a rewritten Subject, in the client's part. */
    msgedit_del_t dels[RSPAMD_REMOVE_MAX + 1];
    size_t ndels = 0;
    for (size_t i = 0; i < v->nremove; i++)
        dels[ndels++] = (msgedit_del_t){ v->remove[i].name, v->remove[i].index };
    size_t sublen = 0, hlen = 0;
    if (v->action == RSPAMD_REWRITE_SUBJECT && v->subject.len)
        dels[ndels++] = (msgedit_del_t){ SLICE_LIT("Subject"), 0 };
    if (rspamd_render_headers(v, scratch, XHDR_CAP, &hlen) != RSPAMD_ERR_NONE)
        return false;
    if (v->action == RSPAMD_REWRITE_SUBJECT && v->subject.len &&
        rspamd_render_subject(v, t->params.smtputf8, scratch + hlen, XHDR_CAP - hlen, &sublen) != RSPAMD_ERR_NONE)
        return false;
    hlen += sublen;
    size_t body_off = t->mhead + trace_len;
    if (ndels) {
        /* A cut is at least a line: as many as the sender's header has
         * lines can never overflow, however many fields it repeats. */
        const char *h = t->mbuf + body_off;
        size_t hend = msgedit_header_end(h, t->mlen - body_off), lines = 1;
        for (const char *p = h; (p = memmem(p, (size_t)(h + hend - p), "\r\n", 2)); p += 2)
            lines++;
        if (ncuts + lines > EDIT_CUTS) {
            if (!(cuts = malloc((ncuts + lines) * sizeof *cuts)))
                return false;
            memcpy(cuts, stack, ncuts * sizeof *cuts);
        }
        size_t k = msgedit_cuts(h, t->mlen - body_off, dels, ndels, cuts + ncuts, lines);
        if (k == MSGEDIT_OVERFLOW) { /* cannot happen (above); refuse rather than keep a forged field */
            if (cuts != stack)
                free(cuts);
            return false;
        }
        for (size_t i = 0; i < k; i++)
            cuts[ncuts + i].off += body_off;
        ncuts += k;
    }
    /* Cut in place, front to back: the cuts are sorted and apart. */
    size_t out = ncuts ? cuts[0].off : t->mlen, in = out;
    for (size_t i = 0; i < ncuts; i++) {
        size_t keep_to = i + 1 < ncuts ? cuts[i + 1].off : t->mlen;
        in = cuts[i].off + cuts[i].len;
        memmove(t->mbuf + out, t->mbuf + in, keep_to - in);
        out += keep_to - in;
    }
    t->mlen = out;
    if (cuts != stack)
        free(cuts);
    /* The headers lead the message in wire form: a line that begins with
     * '.' is stuffed (a field name may hold one); for the Maildir they are
     * written as they are. */
    free(t->xhdr);
    t->xhdr = NULL;
    t->xhdr_len = 0;
    if (!hlen)
        return true;
    bool wire = relay_mode(t) || recording(t); /* the downstream and the spool's record take wire form */
    size_t dots = 0;
    for (size_t i = 0; wire && i < hlen; i++)
        dots += scratch[i] == '.' && (i == 0 || scratch[i - 1] == '\n');
    if (!(t->xhdr = malloc(hlen + dots)))
        return false;
    for (size_t i = 0; i < hlen; i++) {
        if (wire && scratch[i] == '.' && (i == 0 || scratch[i - 1] == '\n'))
            t->xhdr[t->xhdr_len++] = '.';
        t->xhdr[t->xhdr_len++] = scratch[i];
    }
    return true;
}

/* A command of the scanned message's delivery refused before it went out
 * (the lease died, the relay is full, a 5xx of the relay's own):
 * relay-then-spool spools the message on a 4xx; otherwise the refusal is
 * the client's answer. */
static void content_refused(tx_t *t, const smtp_reply_t *refusal)
{
    t->cphase = CP_NONE;
    if (fallback(t) && refusal->code < 500) {
        go_local(t);
        return;
    }
    release(t);
    answer_eod(t, refusal);
}

/* Give the downstream as much of the message as it takes now; then the
 * end marker. Called again when its connection drains (tx_writable). */
static void push_content(tx_t *t)
{
    worker_t *w = t->env.w;
    size_t body = t->mlen - t->mhead, total = t->xhdr_len + body;
    while (t->push_off < total) {
        size_t room = pool_room(w, t->lease);
        if (room == 0)
            return;
        const char *p;
        size_t n;
        if (t->push_off < t->xhdr_len) {
            p = t->xhdr + t->push_off;
            n = t->xhdr_len - t->push_off;
        } else {
            p = t->mbuf + t->mhead + (t->push_off - t->xhdr_len);
            n = total - t->push_off;
        }
        if (n > room)
            n = room;
        if (!pool_body(w, t->lease, p, n)) {
            content_refused(t, &down_reply);
            return;
        }
        m_add(&w->m.relayed_bytes, n);
        t->push_off += n;
    }
    t->cphase = CP_EOD;
    t->eod_sent_ms = w->now;
    smtp_reply_t refusal;
    if (!pool_eod(w, t->lease, t->eod_slot, &refusal))
        content_refused(t, &refusal);
}

static void deliver_local(tx_t *t);

/* A message kept here at its end: into the spool, or the Maildir. false:
 * it goes to the downstream. */
static bool deliver_here(tx_t *t)
{
    if (spool_mode(t))
        deliver_spool(t);
    else if (!relay_mode(t))
        deliver_local(t);
    else
        return false;
    return true;
}

/* The message passed (or goes on unscanned): to the spool or the Maildir,
 * or DATA to the downstream, whose 354 starts the push. */
static void forward_content(tx_t *t)
{
    if (deliver_here(t))
        return;
    if (t->lstate != L_READY) {
        content_refused(t, t->lstate == L_GONE ? &t->gone : &down_reply);
        return;
    }
    smtp_reply_t refusal;
    t->cphase = CP_DATA;
    if (!pool_data(t->env.w, t->lease, t->data_slot, &refusal))
        content_refused(t, &refusal);
}

void tx_scan_done(tx_t *t, scanner_result_t *r)
{
    worker_t *w = t->env.w;
    t->scan_id = 0;
    t->mbuf = r->buf;
    t->mcap = r->cap;
    t->held = r->held;
    t->spill_fd = r->fd;
    t->cphase = CP_NONE;
    if (t->dstate != D_ENDED)
        return;
    if (r->status != SCANNER_OK) {
        content_failed(t, r->status);
        return;
    }
    rspamd_verdict_t *v = r->v;
    t->c_result = (uint8_t)(v->action + 1);
    t->c_score = v->score;
    m_inc(&w->m.content_scans[v->action]);
    t->dkim = (uint8_t)v->dkim;
    t->dmarc = (uint8_t)v->dmarc;
    t->arc = (uint8_t)v->arc;
    t->dmarc_policy = (uint8_t)v->dmarc_policy;
    const uint8_t auth[M_AUTH_METHODS] = { t->dkim, t->dmarc, t->arc };
    for (int i = 0; i < M_AUTH_METHODS; i++)
        if (auth[i] != RSPAMD_AUTH_ABSENT)
            m_inc(&w->m.content_auth[i][auth[i] - 1]);
    switch (v->action) {
    case RSPAMD_REJECT: {
        smtp_reply_t rr = { 554, "5.7.1",
                            v->smtp_message.len ? v->smtp_message : SLICE_LIT("Error: message content rejected"), 0 };
        release(t); /* the downstream never sees DATA: RSET */
        answer_eod(t, &rr);
        return;
    }
    case RSPAMD_SOFT_REJECT:
    case RSPAMD_GREYLIST: {
        smtp_reply_t rr = { 451, "4.7.1", v->smtp_message.len ? v->smtp_message : SLICE_LIT("Error: try again later"),
                            0 };
        release(t);
        answer_eod(t, &rr);
        return;
    }
    default:
        break;
    }
    if (!apply_edits(t, v)) {
        release(t);
        answer_eod(t, &oom_reply);
        return;
    }
    forward_content(t);
}

bool tx_pushing(const tx_t *t)
{
    return t->cphase == CP_PUSH;
}

void tx_writable(tx_t *t)
{
    if (t->cphase == CP_PUSH)
        push_content(t);
}

/* Hand the record over to the spool; the reply comes with its commit. */
/* The content stage's headers go into the spool's record: above the
 * message, below the room for the record's head (one move of the message;
 * the scan that came before costs far more). */
static bool insert_xhdr(tx_t *t)
{
    if (!t->xhdr_len)
        return true;
    if (!grow_mbuf(t, t->mlen + t->xhdr_len + SPOOL_ALIGN))
        return false;
    memmove(t->mbuf + t->mhead + t->xhdr_len, t->mbuf + t->mhead, t->mlen - t->mhead);
    memcpy(t->mbuf + t->mhead, t->xhdr, t->xhdr_len);
    t->mlen += t->xhdr_len;
    free(t->xhdr);
    t->xhdr = NULL;
    t->xhdr_len = 0;
    return true;
}

static void deliver_spool(tx_t *t)
{
    if (t->mbuf && !insert_xhdr(t)) {
        answer_eod(t, t->error == ERR_FULL ? &spool_full_reply : &oom_reply);
        return;
    }
    if (t->error || !t->mbuf) {
        answer_eod(t, t->error == ERR_MEMORY || !t->mbuf ? &oom_reply : &spool_failed_reply);
        return;
    }
    if (spooler_full(t->env.w, t->mlen)) {
        answer_eod(t, &spool_full_reply);
        return;
    }
    spool_msg_t m;
    const slice_t *rcpts;
    if (!spool_envelope(t, &m, &rcpts)) {
        answer_eod(t, &oom_reply);
        return;
    }
    spool_owner_t o = { t->env.sops, t->env.owner_idx, t->env.owner_gen, t->env.number };
    if (!spooler_submit(t->env.w, &o, t->mbuf, t->mhead, t->mlen - t->mhead, &m, rcpts)) {
        answer_eod(t, &oom_reply);
        return;
    }
    t->mbuf = NULL; /* the spool's now, outside the content stage's budget */
    t->mcap = t->mlen = 0;
    if (t->held)
        scanner_unhold(t->env.w, t->held);
    t->held = 0;
    t->eod_sent_ms = t->env.w->now;
}

void tx_spool_committed(tx_t *t, bool ok)
{
    if (t->dstate != D_ENDED)
        return;
    if (!ok) {
        answer_eod(t, &spool_failed_reply);
        return;
    }
    m_observe(&t->env.w->m.relay_latency, m_latency_bounds, (t->env.w->now - t->eod_sent_ms) * 1000);
    char text[64];
    int n = snprintf(text, sizeof text, "Ok: queued as %s", t->id);
    smtp_reply_t r = { 250, "2.0.0", slice_make(text, n > 0 ? (size_t)n : 0), 0 };
    answer_eod(t, &r);
}

void tx_data_end(tx_t *t, const smtp_event_t *ev)
{
    t->eod_slot = ev->slot;
    t->dstate = D_ENDED;
    filter_facts_t fx;
    smtp_path_t sender;
    filter_verdict_t v;
    facts(t, &fx, &sender);
    enum filter_act a = filter_run(t->env.chain, FS_DATA_END, &fx, &v);
    if (a == FA_REJECT || a == FA_TEMPFAIL || a == FA_WAIT) {
        if (a == FA_WAIT)
            v = (filter_verdict_t){ FA_TEMPFAIL, 451, "4.3.0", "Error: try again later", "wait" };
        release(t); /* the downstream never sees the end marker: it drops the message */
        smtp_reply_t r = verdict_reply(&v);
        answer_eod(t, &r);
        return;
    }
    if (t->error) {
        release(t);
        answer_eod(t, t->error == ERR_MEMORY ? &oom_reply : t->error == ERR_FULL ? &spool_full_reply : &down_reply);
        return;
    }
    if (content_on(t)) {
        start_scan(t);
        return;
    }
    if (deliver_here(t))
        return;
    smtp_reply_t refusal;
    if (t->lstate != L_READY) {
        if (fallback(t))
            go_local(t);
        else
            answer_eod(t, &down_reply);
        return;
    }
    t->eod_sent_ms = t->env.w->now;
    if (!pool_eod(t->env.w, t->lease, t->eod_slot, &refusal)) {
        if (fallback(t))
            go_local(t);
        else
            answer_eod(t, &refusal);
    }
}

void tx_body_rejected(tx_t *t, const smtp_event_t *ev)
{
    static const struct {
        smtp_err_t err;
        smtp_reply_t r;
    } replies[] = {
        { SMTP_ERR_BODY_SIZE, { 552, "5.3.4", SLICE_INIT("Error: message size exceeds fixed limit"), 0 } },
        { SMTP_ERR_BODY_BARE_LF, { 554, "5.5.2", SLICE_INIT("Error: bare <LF> received"), 0 } },
        { SMTP_ERR_BODY_BARE_CR, { 554, "5.5.2", SLICE_INIT("Error: bare <CR> received"), 0 } },
        { SMTP_ERR_BODY_LINE, { 554, "5.5.2", SLICE_INIT("Error: text line too long"), 0 } },
    };
    m_inc(&t->env.w->m.messages[MO_REFUSED]);
    for (size_t i = 0; i < sizeof replies / sizeof replies[0]; i++)
        if (replies[i].err == ev->err)
            keep_reply(t, &replies[i].r, &t->final_off, &t->final_len);
    release(t); /* mid-body: the connection goes, and the partial message with it */
    t->dstate = D_DONE;
    t->over = TXE_REJECTED;
}

/* ---- from the pool and the SPF client ---- */

void tx_lease_ready(tx_t *t, pool_lease_t lease)
{
    if (t->lstate != L_WAIT) {
        pool_release(t->env.w, lease);
        return;
    }
    t->lstate = L_READY;
    t->lease = lease;
    pump(t);
}

void tx_lease_failed(tx_t *t, const smtp_reply_t *r)
{
    if (t->lstate != L_WAIT)
        return;
    if (fallback(t)) {
        t->lstate = L_GONE;
        go_local(t);
        pump(t);
        return;
    }
    lease_gone(t, r);
    t->gone.text = r->text; /* the pool's own words, static */
    pump(t);
}

/* A DATA answered 354 downstream: the headers lead the body. */
static void data_accepted(tx_t *t, const smtp_reply_t *r)
{
    if (!build_headers(t) || !pool_body(t->env.w, t->lease, t->hdr, t->hdr_len)) {
        release(t);
        answer_data(t, &oom_reply);
        return;
    }
    m_add(&t->env.w->m.relayed_bytes, t->hdr_len);
    if (recording(t) && !start_record(t)) {
        release(t);
        answer_data(t, &oom_reply);
        return;
    }
    t->dstate = D_BODY;
    answer(t, t->data_slot, r);
    if (t->accepted == 0) {
        /* The engine refuses this DATA after all (it accepted no recipient):
         * the downstream waits for a body the client will not send. */
        release(t);
        t->dstate = D_DONE;
    }
}

void tx_relay_event(tx_t *t, const relay_event_t *ev)
{
    if (ev->type == RELAY_EV_LOST) {
        if (t->cphase == CP_PUSH && !fallback(t)) { /* nothing was owed a reply: answered here */
            t->cphase = CP_NONE;
            answer_eod(t, &down_reply);
        }
        if (fallback(t)) {
            t->lstate = L_GONE;
            t->lease = 0;
            go_local(t);
        } else {
            lease_gone(t, &down_reply);
        }
        pump(t);
        return;
    }
    if (ev->type != RELAY_EV_REPLY)
        return;
    const smtp_reply_t *r = &ev->reply;
    if (fallback(t) && !t->local && (ev->lost || (r->code >= 400 && r->code < 500 && ev->kind != RK_RCPT))) {
        go_local(t); /* the downstream's own trouble: this message is spooled */
        pump(t);
        return;
    }
    switch (ev->kind) {
    case RK_MAIL:
        if (t->mstate == M_SENT && ev->token == t->mail_slot)
            answer_mail(t, r);
        break;
    case RK_RCPT: {
        tx_rcpt_t *rc = rcpt_by_slot(t, ev->token);
        if (rc)
            answer_rcpt(t, rc, r);
        break;
    }
    case RK_DATA:
        if (t->cphase == CP_DATA && ev->token == t->data_slot) {
            if (r->code == 354) {
                t->cphase = CP_PUSH;
                t->push_off = 0;
                push_content(t);
            } else {
                t->cphase = CP_NONE;
                answer_eod(t, r); /* the downstream's refusal of DATA is the message's answer */
                release(t);
            }
            break;
        }
        if (t->dstate != D_SENT || ev->token != t->data_slot)
            break;
        if (r->code == 354)
            data_accepted(t, r);
        else
            answer_data(t, r);
        break;
    case RK_EOD:
        if (t->dstate == D_ENDED && ev->token == t->eod_slot) {
            m_observe(&t->env.w->m.relay_latency, m_latency_bounds, (t->env.w->now - t->eod_sent_ms) * 1000);
            answer_eod(t, r);
            /* The message is decided: the connection goes back to the pool. */
            release(t);
        }
        break;
    default:
        break;
    }
    pump(t);
}

void tx_spf_result(tx_t *t, unsigned result, slice_t received, slice_t comment)
{
    t->spf_req = 0;
    if (!spf_set_result(&t->spf, result, received.ptr, received.len, comment.ptr, comment.len))
        spf_set_result(&t->spf, SPFR_TEMPERROR, "temperror", 9, "", 0);
    tx_rerun(t);
}

void tx_rerun(tx_t *t)
{
    /* Every stage that waited runs again, in command order. */
    for (uint32_t i = 0; i < t->nrcpt; i++)
        if (t->rcpt[i].state == R_FILTER)
            stage_step(t, &t->rcpt[i]);
    if (t->dstate == D_FILTER)
        stage_step(t, NULL);
    pump(t);
}

/* ---- the end ---- */

enum tx_end tx_over(const tx_t *t)
{
    if (t->over)
        return (enum tx_end)t->over;
    /* A refused MAIL: over once what was pipelined behind it is answered. */
    return t->mail_failed && smtp_open(t->env.smtp) == 0 ? TXE_REFUSED : 0;
}

bool tx_waiting(const tx_t *t)
{
    return smtp_open(t->env.smtp) != 0 || t->dstate == D_ENDED;
}

uint32_t tx_number(const tx_t *t)
{
    return t->env.number;
}

static const char *end_name(enum tx_end how)
{
    static const char *const names[] = {
        [TXE_DATA] = "data",       [TXE_REFUSED] = "refused", [TXE_REJECTED] = "rejected",
        [TXE_RSET] = "rset",       [TXE_HELO] = "helo",       [TXE_QUIT] = "quit",
        [TXE_CLIENT_CLOSED] = "client_closed", [TXE_TIMEOUT] = "timeout", [TXE_DRAIN] = "drain",
        [TXE_ERROR] = "error",
    };
    return (unsigned)how < sizeof names / sizeof names[0] && names[how] ? names[how] : "error";
}

static void log_tx(tx_t *t, enum tx_end how)
{
    int level = LOG_INFO;
    if (!log_enabled(level))
        return;
    logbuf_t b;
    lb_init(&b, "tx");
    lb_hex(&b, "session", t->env.session_id);
    lb_cstr(&b, "tx", t->id);
    lb_cstr(&b, "client", t->env.ip);
    lb_u64(&b, "port", t->env.port);
    lb_str(&b, "helo", t->env.helo.ptr, t->env.helo.len);
    slice_t from = kept(t, t->from_off, t->from_len);
    lb_str(&b, "from", from.ptr, from.len);
    if (t->mail_reply_len)
        lb_str(&b, "mail.reply", t->arena + t->mail_reply_off, t->mail_reply_len);
    lb_u64(&b, "rcpts", t->accepted);
    for (uint32_t i = 0; i < t->nrcpt; i++) {
        char key[32];
        tx_rcpt_t *rc = &t->rcpt[i];
        snprintf(key, sizeof key, "rcpt.%u", i + 1);
        lb_str(&b, key, t->arena + rc->off, rc->len);
        snprintf(key, sizeof key, "rcpt.%u.reply", i + 1);
        if (rc->reply_len)
            lb_str(&b, key, t->arena + rc->reply_off, rc->reply_len);
        else
            lb_cstr(&b, key, "none");
    }
    lb_u64(&b, "size", t->size);
    if (t->final_len)
        lb_str(&b, "result", t->arena + t->final_off, t->final_len);
    lb_cstr(&b, "end", end_name(how));
    if (t->error)
        lb_cstr(&b, "error", t->error == ERR_DOWNSTREAM ? "downstream_lost"
                             : t->error == ERR_FULL   ? "content_memory_full"
                                                      : "out_of_memory");
    if (t->local)
        lb_cstr(&b, "fallback", "spool"); /* relay-then-spool: the downstream could not take it */
    lb_cstr(&b, "spf", t->spf.status == SPF_DONE ? spf_result_name(t->spf.result) : t->spf.status ? "pending" : "-");
    if (t->c_result) {
        lb_cstr(&b, "content", m_content_names[t->c_result - 1]);
        if (t->c_result - 1 == MCS_ERROR) {
            lb_cstr(&b, "content.error", scanner_status_name((enum scanner_status)t->c_error));
            lb_cstr(&b, "content.fallback", t->c_accepted ? "accept" : "tempfail");
        } else {
            char score[32];
            snprintf(score, sizeof score, "%.2f", t->c_score);
            lb_cstr(&b, "content.score", score);
            const uint8_t auth[3] = { t->dkim, t->dmarc, t->arc };
            static const char *const keys[3] = { "dkim", "dmarc", "arc" };
            for (int i = 0; i < 3; i++)
                if (auth[i] != RSPAMD_AUTH_ABSENT)
                    lb_cstr(&b, keys[i], rspamd_auth_name((rspamd_auth_t)auth[i]));
            if (t->dmarc == RSPAMD_AUTH_FAIL && t->dmarc_policy != RSPAMD_DMARC_POLICY_UNKNOWN)
                lb_cstr(&b, "dmarc.policy", rspamd_dmarc_policy_name((rspamd_dmarc_policy_t)t->dmarc_policy));
        }
    }
    if (t->env.dnsbl && t->env.dnsbl->status == DNSBL_DONE)
        lb_i64(&b, "dnsbl", t->env.dnsbl->score);
    lb_cstr(&b, "tls", t->env.tls ? tls_version(t->env.tls) : "-");
    if (t->env.tls)
        lb_cstr(&b, "tls.cipher", tls_cipher(t->env.tls));
    lb_u64(&b, "duration_ms", t->env.w->now - t->start_ms);
    log_emit(level, &b);
}

void tx_end(tx_t *t, enum tx_end how)
{
    if ((unsigned)how < M_TX_END_COUNT)
        m_inc(&t->env.w->m.transactions[how]);
    log_tx(t, how);
    release(t);
    if (t->spf_req)
        spfc_cancel(t->env.w, t->spf_req);
    t->spf_req = 0;
    if (t->scan_id)
        scanner_cancel(t->env.w, t->scan_id); /* the buffer is the scanner's to free */
    t->scan_id = 0;
    if (t->spill_fd >= 0) { /* a mapping, not the cache's to keep */
        scanner_buf_free(t->env.w, t->mbuf, t->mcap, 0, t->spill_fd);
        t->mbuf = NULL;
        t->mcap = t->mlen = 0;
        t->spill_fd = -1;
    }
    if (t->held)
        scanner_unhold(t->env.w, t->held);
    t->held = 0;
    free(t->xhdr);
    t->xhdr = NULL;
    /* Back to the cache, memory kept unless it grew past reason. */
    if (ncache >= TX_CACHE_KEEP || t->arena_cap > TX_ARENA_KEEP || t->mcap > 4 * MAILDIR_FIRST) {
        free(t->arena);
        free(t->hdr);
        free(t->mbuf);
        free(t->rcpt);
        spf_state_free(&t->spf);
        if (ncache >= TX_CACHE_KEEP) {
            free(t);
            return;
        }
        t->arena = t->hdr = t->mbuf = NULL;
        t->rcpt = NULL;
        t->arena_cap = t->rcpt_cap = 0;
        t->mcap = 0;
    }
    t->arena_len = 0;
    t->next_free = cache;
    cache = t;
    ncache++;
}

void tx_cache_free(void)
{
    free(scratch);
    free(merged);
    scratch = merged = NULL;
    free(env_rcpts);
    env_rcpts = NULL;
    env_rcap = 0;
    while (cache) {
        tx_t *t = cache;
        cache = t->next_free;
        free(t->arena);
        free(t->hdr);
        free(t->mbuf);
        free(t->rcpt);
        spf_state_free(&t->spf);
        free(t);
    }
    ncache = 0;
}

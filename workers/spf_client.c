/*
 * spf_client.c - the worker's side of SPF: a result cache, and requests to
 * the helper process (workers/spfd/) over this worker's socketpair.
 *
 * A request is one datagram sent without blocking (MSG_DONTWAIT: a full
 * socket buffer means the helper is far behind, and the check is a
 * temperror rather than a stall). Replies come back through the worker's
 * ring (an IORING_OP_RECV kept armed on the socket), so the loop never
 * waits on DNS. A reply carries the request id: the session's slot in its
 * low 22 bits and a sequence number above, and it is taken only by the
 * session still waiting for exactly that id.
 *
 * Results are cached per worker (share-nothing: no lock) for the TTL the
 * helper reports, keyed by everything the result and its Received-SPF text
 * depend on: client address, HELO name and sender. The cache is a table
 * of 4-way sets; a new entry takes an empty or expired way, else the one
 * closest to expiry.
 *
 * If the helper dies, the socket reads end-of-file: every waiting session
 * gets temperror at once, new checks get temperror until the main thread
 * has started a new helper and handed its socket over (w->spf_newfd,
 * taken at the next tick).
 */
#include "worker.h"

#include "spf.h"
#include "spf_proto.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define WAYS 4
#define ID_SLOT_BITS 22

struct spf_cent {
    uint64_t hash;
    uint64_t expires; /* ms, w->now's clock */
    uint8_t result;
    uint16_t klen, rlen, clen;
    char data[]; /* key, received value, comment */
};

int spfc_init(worker_t *w, char *err, size_t errlen)
{
    w->spf_fd = -1;
    atomic_init(&w->spf_newfd, -1);
    tlist_init(&w->t_spf);
    if (!w->chain || !w->chain->spf)
        return 0;
    w->spf_in = malloc(SPF_PROTO_MAX);
    uint32_t want = w->cfg->spf_cache_size / WAYS + 1;
    if (w->cfg->spf_cache_size) {
        w->spf_sets = 1;
        while (w->spf_sets < want)
            w->spf_sets *= 2;
        w->spf_cache = calloc((size_t)w->spf_sets * WAYS, sizeof *w->spf_cache);
    }
    if (!w->spf_in || (w->spf_sets && !w->spf_cache)) {
        snprintf(err, errlen, "worker %d: out of memory for SPF", w->id);
        return -1;
    }
    return 0;
}

void spfc_destroy(worker_t *w)
{
    for (size_t i = 0; w->spf_cache && i < (size_t)w->spf_sets * WAYS; i++)
        free(w->spf_cache[i]);
    free(w->spf_cache);
    free(w->spf_in);
    if (w->spf_fd >= 0)
        close(w->spf_fd);
    int nfd = atomic_exchange(&w->spf_newfd, -1);
    if (nfd >= 0)
        close(nfd);
}

/* family, address, HELO, NUL, sender: what the result depends on. */
static size_t make_key(uint8_t family, const uint8_t *addr, slice_t helo, slice_t sender, char *key, size_t n)
{
    size_t need = 17 + helo.len + 1 + sender.len;
    if (need > n)
        return 0;
    key[0] = (char)family;
    memcpy(key + 1, addr, 16);
    memcpy(key + 17, helo.ptr, helo.len);
    key[17 + helo.len] = '\0';
    memcpy(key + 18 + helo.len, sender.ptr, sender.len);
    return need;
}

static uint64_t hash64(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static struct spf_cent *cache_find(worker_t *w, const char *key, size_t klen, uint64_t h)
{
    if (!w->spf_sets)
        return NULL;
    struct spf_cent **set = w->spf_cache + (h & (w->spf_sets - 1)) * WAYS;
    for (int i = 0; i < WAYS; i++) {
        struct spf_cent *e = set[i];
        if (e && e->hash == h && e->klen == klen && e->expires > w->now && memcmp(e->data, key, klen) == 0)
            return e;
    }
    return NULL;
}

static void cache_put(worker_t *w, const char *key, size_t klen, const spf_res_t *r, const char *text)
{
    if (!w->spf_sets || r->ttl == 0 || r->result == SPFR_TEMPERROR || klen > UINT16_MAX)
        return;
    uint64_t h = hash64(key, klen);
    struct spf_cent **set = w->spf_cache + (h & (w->spf_sets - 1)) * WAYS, **slot = &set[0];
    for (int i = 0; i < WAYS; i++) {
        struct spf_cent *e = set[i];
        if (!e || e->expires <= w->now || (e->hash == h && e->klen == klen && !memcmp(e->data, key, klen))) {
            slot = &set[i];
            break;
        }
        if (e->expires < (*slot)->expires)
            slot = &set[i];
    }
    struct spf_cent *e = malloc(sizeof *e + klen + r->received_len + r->comment_len);
    if (!e)
        return;
    e->hash = h;
    e->expires = w->now + (uint64_t)(r->ttl > 86400 ? 86400 : r->ttl) * 1000;
    e->result = r->result;
    e->klen = (uint16_t)klen;
    e->rlen = r->received_len;
    e->clen = r->comment_len;
    memcpy(e->data, key, klen);
    memcpy(e->data + klen, text, (size_t)r->received_len + r->comment_len);
    free(*slot);
    *slot = e;
}

static void fail_check(session_t *s, const char *why)
{
    spf_set_result(&s->spf, SPFR_TEMPERROR, "temperror", 9, why, strlen(why));
}

void spfc_start(void *ctx, const filter_facts_t *fx)
{
    worker_t *w = ctx;
    session_t *s = fx->session;
    slice_t sender = fx->sender && !fx->sender->null ? fx->sender->mailbox : slice_make("", 0);
    char key[17 + SPF_NAME_MAX + 1 + SPF_SENDER_MAX];
    slice_t helo = fx->helo;
    if (helo.len > SPF_NAME_MAX)
        helo.len = SPF_NAME_MAX;
    w->n_spf_checks++;
    size_t klen = make_key(fx->family, fx->addr, helo, sender, key, sizeof key);
    if (!klen) {
        spf_set_result(&s->spf, SPFR_NONE, "none (sender address too long to check)", 39, "", 0);
        return;
    }
    struct spf_cent *e = cache_find(w, key, klen, hash64(key, klen));
    if (e) {
        w->n_spf_cached++;
        spf_set_result(&s->spf, e->result, e->data + e->klen, e->rlen, e->data + e->klen + e->rlen, e->clen);
        return;
    }
    if (w->spf_fd < 0) {
        w->n_spf_errors++;
        fail_check(s, "the SPF service is not running");
        return;
    }
    char buf[sizeof(spf_req_t) + SPF_NAME_MAX + SPF_SENDER_MAX];
    spf_req_t *q = (spf_req_t *)buf;
    memset(q, 0, sizeof *q);
    q->id = (s->idx & ((1u << ID_SLOT_BITS) - 1)) | (++w->spf_seq << ID_SLOT_BITS);
    q->family = fx->family == AF_INET6 ? 6 : 4;
    memcpy(q->addr, fx->addr, q->family == 6 ? 16 : 4);
    q->helo_len = (uint16_t)helo.len;
    q->sender_len = (uint16_t)sender.len;
    memcpy(buf + sizeof *q, helo.ptr, helo.len);
    memcpy(buf + sizeof *q + helo.len, sender.ptr, sender.len);
    size_t n = sizeof *q + helo.len + sender.len;
    if (send(w->spf_fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL) != (ssize_t)n) {
        w->n_spf_errors++;
        log_line(LOG_WARN, "event=spf_send_failed worker=%d error=\"%s\"", w->id, strerror(errno));
        fail_check(s, "the SPF service is overloaded");
        return;
    }
    s->spf.status = SPF_PENDING;
    s->spf.reqid = q->id;
    tlist_put(&w->t_spf, &s->spf_timer, w->now + (uint64_t)w->cfg->spf_timeout * 1000);
}

void spfc_cancel(worker_t *w, session_t *s)
{
    (void)w;
    if (s->spf.status == SPF_PENDING)
        tlist_del(&s->spf_timer);
    s->spf.status = SPF_IDLE;
}

static void arm_recv(worker_t *w)
{
    struct io_uring_sqe *sqe = worker_sqe(w);
    io_uring_prep_recv(sqe, w->spf_fd, w->spf_in, SPF_PROTO_MAX, 0);
    io_uring_sqe_set_data64(sqe, ud_make(OP_SPF_RECV, 0, w->spf_gen));
    w->spf_recv_armed = true;
}

/* Every session still waiting gets temperror (the helper is gone). */
static void fail_all(worker_t *w, const char *why)
{
    while (w->t_spf.next != &w->t_spf) {
        session_t *s = (session_t *)((char *)w->t_spf.next - offsetof(session_t, spf_timer));
        tlist_del(&s->spf_timer);
        w->n_spf_errors++;
        fail_check(s, why);
        session_spf_done(w, s);
    }
}

static void helper_gone(worker_t *w, int res)
{
    log_line(LOG_ERROR, "event=spf_helper_lost worker=%d error=\"%s\" waiting=%s", w->id,
             res ? strerror(-res) : "end of file", w->t_spf.next != &w->t_spf ? "yes" : "no");
    close(w->spf_fd);
    w->spf_fd = -1;
    w->spf_gen++;
    fail_all(w, "the SPF service failed");
}

static void take_reply(worker_t *w, const char *p, size_t n)
{
    spf_res_t r;
    if (n < sizeof r)
        return;
    memcpy(&r, p, sizeof r);
    if (sizeof r + (size_t)r.received_len + r.comment_len > n || r.result >= SPFR_COUNT) {
        log_line(LOG_WARN, "event=spf_bad_reply worker=%d size=%zu", w->id, n);
        return;
    }
    uint32_t idx = r.id & ((1u << ID_SLOT_BITS) - 1);
    session_t *s = idx < w->nsess_slots ? w->sess[idx] : NULL;
    if (!s || (s->flags & SF_CLOSING) || s->spf.status != SPF_PENDING || s->spf.reqid != r.id)
        return; /* timed out, or the transaction is gone */
    tlist_del(&s->spf_timer);
    const char *text = p + sizeof r;
    char key[17 + SPF_NAME_MAX + 1 + SPF_SENDER_MAX];
    slice_t helo = slice_make(s->helo ? s->helo : "", s->helo ? strlen(s->helo) : 0);
    if (helo.len > SPF_NAME_MAX)
        helo.len = SPF_NAME_MAX;
    size_t klen = make_key(s->family, s->addr, helo, session_sender(s), key, sizeof key);
    if (klen)
        cache_put(w, key, klen, &r, text);
    if (r.result == SPFR_TEMPERROR)
        w->n_spf_errors++;
    if (!spf_set_result(&s->spf, r.result, text, r.received_len, text + r.received_len, r.comment_len))
        fail_check(s, "out of memory");
    session_spf_done(w, s);
}

void spfc_cqe(worker_t *w, struct io_uring_cqe *cqe)
{
    uint64_t ud = io_uring_cqe_get_data64(cqe);
    if (UD_GEN(ud) != (w->spf_gen & 0xffffffu))
        return; /* armed on a socket that is gone */
    w->spf_recv_armed = false;
    if (cqe->res > 0)
        take_reply(w, w->spf_in, (size_t)cqe->res);
    else if (cqe->res != -EINTR && cqe->res != -EAGAIN && !w->stopped) {
        helper_gone(w, cqe->res);
        return;
    }
    if (w->spf_fd >= 0 && !w->spf_recv_armed)
        arm_recv(w);
}

void spfc_tick(worker_t *w)
{
    int nfd = atomic_exchange(&w->spf_newfd, -1);
    if (nfd >= 0) {
        if (w->spf_fd >= 0)
            close(w->spf_fd);
        w->spf_fd = nfd;
        w->spf_gen++;
        w->spf_recv_armed = false;
        log_line(LOG_INFO, "event=spf_helper_attached worker=%d", w->id);
    }
    if (w->spf_fd >= 0 && !w->spf_recv_armed)
        arm_recv(w);
    while (w->t_spf.next != &w->t_spf && w->t_spf.next->deadline <= w->now) {
        session_t *s = (session_t *)((char *)w->t_spf.next - offsetof(session_t, spf_timer));
        tlist_del(&s->spf_timer);
        w->n_spf_errors++;
        fail_check(s, "the SPF check timed out");
        session_spf_done(w, s);
    }
}

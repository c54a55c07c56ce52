/*
 * worker.c - one io_uring event loop per core.
 *
 * Written the way liburing's examples are: SINGLE_ISSUER|DEFER_TASKRUN with a
 * fallback to COOP_TASKRUN and then to nothing, an oversized CQ, completions
 * taken in a batch and the CQ advanced once, a get-SQE that submits when the
 * SQ is full, multishot accept and receive re-armed whenever
 * IORING_CQE_F_MORE is missing, and ENOBUFS treated as backpressure (re-arm
 * once buffers return).
 *
 * A loop turn: take the completions (each goes to the subsystem its user_data
 * names), let the sessions posted by them run (read on, answer, send), write
 * what the downstream connections gathered, then free what closed. Every
 * deadline is on the timer wheel (timer.h), run by a TIMER_TICK_MS tick.
 */
#include "worker.h"

#include "lend.h"
#include "listen.h"
#include "pool.h"
#include "session.h"
#include "spf_client.h"
#include "spooler.h"
#include "dnsbl_client.h"
#include "fleet.h"
#include "scanner.h"
#include "tx.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netdb.h>

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

struct io_uring_sqe *worker_sqe(worker_t *w)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
    while (!sqe) {
        io_uring_submit(&w->ring);
        sqe = io_uring_get_sqe(&w->ring);
    }
    return sqe;
}

/* A provided buffer came back from the kernel holding len bytes: the
 * session owns it now (and may read exactly those bytes). */
void buf_taken(worker_t *w, uint16_t bid, size_t len)
{
    w->buf_refs[bid] = 1;
    RECLAIM(w->bufs + (size_t)bid * RECV_BUF_SIZE, len);
}

/* Back to the ring: the kernel's until it hands the buffer out again. */
void buf_release(worker_t *w, uint16_t bid)
{
    if (w->buf_refs[bid] && --w->buf_refs[bid])
        return;
    char *p = w->bufs + (size_t)bid * RECV_BUF_SIZE;
    LEND(p, RECV_BUF_SIZE);
    io_uring_buf_ring_add(w->br, p, RECV_BUF_SIZE, bid, io_uring_buf_ring_mask(RECV_BUF_COUNT), 0);
    io_uring_buf_ring_advance(w->br, 1);
    w->bufs_returned = true;
}

uint64_t worker_new_id(worker_t *w)
{
    return w->id_next++;
}

/* io_uring_setup errors name their cause: a seccomp profile or the sysctl. */
static const char *uring_hint(int err)
{
    switch (err) {
    case EPERM:
        return "io_uring_setup: permission denied (EPERM). A seccomp profile is blocking io_uring "
               "(Docker's default profile does: run with deploy/seccomp.json, "
               "`--security-opt seccomp=deploy/seccomp.json`), or the sysctl kernel.io_uring_disabled is 2 "
               "(or 1 and this user is not in kernel.io_uring_group): set it to 0";
    case ENOSYS:
        return "io_uring_setup: not implemented (ENOSYS). The kernel lacks io_uring or a seccomp profile "
               "filters it out; mxgate needs Linux 6.1 or later with io_uring enabled";
    case ENOMEM:
        return "io_uring_setup: out of memory (ENOMEM). Raise the locked-memory limit (ulimit -l)";
    default:
        return NULL;
    }
}

static int ring_setup(worker_t *w, char *err, size_t errlen)
{
    static const unsigned flag_sets[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
        IORING_SETUP_COOP_TASKRUN,
        0,
    };
    int rc = -EINVAL;
    for (size_t i = 0; i < sizeof flag_sets / sizeof flag_sets[0]; i++) {
        struct io_uring_params p;
        memset(&p, 0, sizeof p);
        p.flags = flag_sets[i] | IORING_SETUP_CQSIZE;
        p.cq_entries = RING_CQ_ENTRIES;
        rc = io_uring_queue_init_params(RING_ENTRIES, &w->ring, &p);
        if (rc == 0) {
            if (!(p.features & IORING_FEAT_NODROP)) {
                snprintf(err, errlen, "io_uring: the kernel lacks IORING_FEAT_NODROP (need Linux 6.1+)");
                return -1;
            }
            return 0;
        }
        if (rc != -EINVAL)
            break;
    }
    const char *hint = uring_hint(-rc);
    snprintf(err, errlen, "%s", hint ? hint : strerror(-rc));
    return -1;
}

static int buffers_setup(worker_t *w, char *err, size_t errlen)
{
    size_t ring_bytes = RECV_BUF_COUNT * sizeof(struct io_uring_buf);
    w->br = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    w->bufs = mmap(NULL, (size_t)RECV_BUF_COUNT * RECV_BUF_SIZE, PROT_READ | PROT_WRITE,
                   MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (w->br == MAP_FAILED || w->bufs == MAP_FAILED) {
        snprintf(err, errlen, "mmap for receive buffers: %s", strerror(errno));
        return -1;
    }
    /* liburing 2.3 has no io_uring_setup_buf_ring: register our own memory. */
    struct io_uring_buf_reg reg = { .ring_addr = (uintptr_t)w->br, .ring_entries = RECV_BUF_COUNT, .bgid = BGID };
    int rc = io_uring_register_buf_ring(&w->ring, &reg, 0);
    if (rc) {
        snprintf(err, errlen, "io_uring: provided buffer rings unsupported (%s): need Linux 5.19+", strerror(-rc));
        return -1;
    }
    io_uring_buf_ring_init(w->br);
    for (uint32_t i = 0; i < RECV_BUF_COUNT; i++) {
        LEND(w->bufs + (size_t)i * RECV_BUF_SIZE, RECV_BUF_SIZE);
        io_uring_buf_ring_add(w->br, w->bufs + (size_t)i * RECV_BUF_SIZE, RECV_BUF_SIZE, (uint16_t)i,
                              io_uring_buf_ring_mask(RECV_BUF_COUNT), (int)i);
    }
    io_uring_buf_ring_advance(w->br, RECV_BUF_COUNT);
    return 0;
}

int worker_parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[256];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof host)
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port <= 0 || port > 65535)
        return -1;
    memset(ss, 0, sizeof *ss);
    char *h = host;
    if (h[0] == '[') {
        size_t n = strlen(h);
        if (n < 2 || h[n - 1] != ']')
            return -1;
        h[n - 1] = 0;
        h++;
    }
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, h, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *len = sizeof *a4;
        return 0;
    }
    if (inet_pton(AF_INET6, h, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof *a6;
        return 0;
    }
    /* A host name: resolved once, at start-up, where blocking is harmless. */
    struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM }, *res = NULL;
    if (getaddrinfo(h, NULL, &hints, &res) || !res) { /* IPv4 first: "localhost" means 127.0.0.1 */
        hints.ai_family = AF_UNSPEC;
        if (getaddrinfo(h, NULL, &hints, &res) || !res)
            return -1;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    if (ss->ss_family == AF_INET)
        a4->sin_port = htons((uint16_t)port);
    else
        a6->sin6_port = htons((uint16_t)port);
    freeaddrinfo(res);
    return 0;
}

static int listen_setup(worker_t *w, char *err, size_t errlen)
{
    for (int i = 0; i < w->cfg->nlisten; i++) {
        struct sockaddr_storage ss;
        socklen_t len;
        if (worker_parse_addr(w->cfg->listen[i], &ss, &len)) {
            snprintf(err, errlen, "listen: bad address %s", w->cfg->listen[i]);
            return -1;
        }
        int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) || bind(fd, (struct sockaddr *)&ss, len) ||
            listen(fd, LISTEN_BACKLOG)) {
            listen_error(err, errlen, "listen", w->cfg->listen[i], (struct sockaddr *)&ss, errno);
            if (fd >= 0)
                close(fd);
            return -1;
        }
        w->listen_fd[w->nlisten++] = fd;
    }
    return 0;
}

static void arm_accept(worker_t *w, int i)
{
    struct io_uring_sqe *sqe = worker_sqe(w);
    io_uring_prep_multishot_accept(sqe, w->listen_fd[i], NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, ud_make(OP_ACCEPT, (uint32_t)i, 0));
}

static void arm_wake(worker_t *w)
{
    struct io_uring_sqe *sqe = worker_sqe(w);
    io_uring_prep_read(sqe, w->wake_fd, &w->wake_val, sizeof w->wake_val, 0);
    io_uring_sqe_set_data64(sqe, ud_make(OP_WAKE, 0, 0));
}

static void arm_call(worker_t *w)
{
    struct io_uring_sqe *sqe = worker_sqe(w);
    io_uring_prep_read(sqe, w->call_fd, &w->call_val, sizeof w->call_val, 0);
    io_uring_sqe_set_data64(sqe, ud_make(OP_CALL, 0, 0));
}

/* A call posted by worker_call(): take it, run it, say it is done. */
static void run_call(worker_t *w)
{
    pthread_mutex_lock(&w->call_mu);
    worker_call_fn *fn = w->call_fn;
    void *arg = w->call_arg;
    w->call_fn = NULL;
    w->call_running = fn != NULL;
    pthread_mutex_unlock(&w->call_mu);
    if (!fn)
        return;
    fn(w, arg);
    pthread_mutex_lock(&w->call_mu);
    w->call_running = false;
    pthread_cond_broadcast(&w->call_cv);
    pthread_mutex_unlock(&w->call_mu);
}

int worker_call(worker_t *w, worker_call_fn *fn, void *arg, unsigned timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&w->call_mu);
    while ((w->call_fn || w->call_running) &&
           pthread_cond_timedwait(&w->call_cv, &w->call_mu, &until) == 0)
        ;
    if (w->call_fn || w->call_running) {
        pthread_mutex_unlock(&w->call_mu);
        return -1;
    }
    w->call_fn = fn;
    w->call_arg = arg;
    pthread_mutex_unlock(&w->call_mu);
    uint64_t one = 1;
    bool posted = write(w->call_fd, &one, sizeof one) == (ssize_t)sizeof one;
    pthread_mutex_lock(&w->call_mu);
    int rc = 0;
    if (!posted && w->call_fn == fn) {
        w->call_fn = NULL; /* the worker was never told: withdrawn */
        rc = -1;
    }
    while (w->call_fn == fn && w->call_arg == arg) { /* not taken yet */
        if (pthread_cond_timedwait(&w->call_cv, &w->call_mu, &until) != 0 && w->call_fn == fn) {
            w->call_fn = NULL; /* withdrawn: it will never run */
            rc = -1;
            break;
        }
    }
    while (rc == 0 && w->call_running)
        pthread_cond_wait(&w->call_cv, &w->call_mu); /* taken: it runs to its end */
    pthread_mutex_unlock(&w->call_mu);
    return rc;
}

static void arm_tick(worker_t *w)
{
    w->tick.tv_sec = 0;
    w->tick.tv_nsec = TIMER_TICK_MS * 1000000;
    struct io_uring_sqe *sqe = worker_sqe(w);
    io_uring_prep_timeout(sqe, &w->tick, 0, 0);
    io_uring_sqe_set_data64(sqe, ud_make(OP_TICK, 0, 0));
}

/* ---- configuration generations (conf.h) ---- */

static conf_held_t *held_find(worker_t *w, const conf_t *c)
{
    for (uint32_t i = 0; i < w->nheld; i++)
        if (w->held[i].c == c)
            return &w->held[i];
    return NULL;
}

/* Let go of an entry: the worker's reference on its generation goes back
 * to main, which may free it from then on. */
static void held_release(worker_t *w, conf_held_t *h)
{
    atomic_fetch_sub_explicit(&h->c->holders, 1, memory_order_release);
    *h = w->held[--w->nheld];
}

/* Take c as the current generation: a reference first, then `seen` says
 * main may count on it (release: main reads holders after seen). */
static int conf_adopt(worker_t *w, conf_t *c)
{
    if (w->nheld == w->held_cap) {
        uint32_t cap = w->held_cap ? w->held_cap * 2 : 4;
        conf_held_t *n = realloc(w->held, cap * sizeof *n);
        if (!n)
            return -1;
        w->held = n;
        w->held_cap = cap;
    }
    atomic_fetch_add_explicit(&c->holders, 1, memory_order_relaxed);
    w->held[w->nheld++] = (conf_held_t){ c, 0 };
    conf_t *old = w->conf;
    w->conf = c;
    w->cfg = &c->cfg;
    w->chain = &c->chain;
    w->resolver = c->resolver;
    if (old) {
        conf_held_t *h = held_find(w, old);
        if (h && h->users == 0)
            held_release(w, h);
    }
    atomic_store_explicit(&w->conf_seen, c->number, memory_order_release);
    return 0;
}

/* Once per loop turn, between turns: a generation main published since. */
static void conf_turn(worker_t *w)
{
    conf_t *c = atomic_load_explicit(w->conf_pub, memory_order_acquire);
    if (c == w->conf)
        return;
    const mx_config_t *before = w->cfg;
    conf_t *old = w->conf;
    /* the old generation stays held while the pool compares with it */
    conf_held_t *h = held_find(w, old);
    if (h)
        h->users++;
    if (conf_adopt(w, c)) {
        if (h)
            h->users--;
        return; /* no memory for the list: try again next turn */
    }
    pool_reconfigure(w, before);
    if ((h = held_find(w, old)) && --h->users == 0)
        held_release(w, h);
    log_line(LOG_DEBUG, "event=reload_adopted worker=%d generation=%llu", w->id, (unsigned long long)c->number);
}

conf_t *worker_conf_hold(worker_t *w)
{
    held_find(w, w->conf)->users++;
    return w->conf;
}

void worker_conf_drop(worker_t *w, conf_t *c)
{
    conf_held_t *h = held_find(w, c);
    if (h && --h->users == 0 && c != w->conf)
        held_release(w, h);
}

int worker_init(worker_t *w, int id, conf_t *_Atomic *pub, conn_limits_t *limits, char *err, size_t errlen)
{
    memset(w, 0, sizeof *w);
    w->id = id;
    w->conf_pub = pub;
    w->limits = limits;
    w->wake_fd = w->call_fd = -1;
    for (int i = 0; i < CONFIG_LISTEN_MAX; i++)
        w->listen_fd[i] = -1;
    if (conf_adopt(w, atomic_load(pub))) {
        snprintf(err, errlen, "worker %d: out of memory", id);
        return -1;
    }
    w->now = now_ms();
    timer_wheel_init(&w->timers, w->now);
    /* Ids start at a random point: unique across workers, instances and
     * restarts with overwhelming odds, and in order within a worker. */
    if (getrandom(&w->id_next, sizeof w->id_next, 0) != (ssize_t)sizeof w->id_next)
        w->id_next = (uint64_t)time(NULL) << 32 ^ (uint64_t)getpid() << 16 ^ (uint64_t)id;
    pthread_mutex_init(&w->call_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->call_cv, &ca);
    pthread_condattr_destroy(&ca);
    w->call_fd = eventfd(0, EFD_CLOEXEC);
    w->wake_fd = eventfd(0, EFD_CLOEXEC);
    if (w->wake_fd < 0 || w->call_fd < 0) {
        snprintf(err, errlen, "worker %d: %s", id, strerror(errno));
        return -1;
    }
    sem_init(&w->ready, 0, 0);
    if (sessions_init(w, err, errlen) || spfc_init(w, session_spf_done, err, errlen) ||
        listen_setup(w, err, errlen) || pool_init(w, err, errlen) || spooler_init(w, limits->spool, err, errlen) ||
        dnsblc_init(w, session_dnsbl_done, err, errlen) || fleet_init(w, session_fleet_done, err, errlen) ||
        scanner_init(w, session_scan_done, err, errlen))
        return -1;
    return 0;
}

void worker_wake(worker_t *w)
{
    uint64_t one = 1;
    if (write(w->wake_fd, &one, sizeof one) < 0)
        log_line(LOG_WARN, "event=wake_failed worker=%d errno=%d", w->id, errno);
}

static void on_drain_deadline(worker_t *w, timer_node_t *t)
{
    (void)t;
    log_line(LOG_INFO, "event=drain_deadline worker=%d sessions=%u", w->id, sessions_count(w));
    pool_close_all(w);     /* what still waits on the downstream is answered 451 4.4.1 */
    sessions_close_all(w); /* then every session gets 421 4.3.2 */
}

static void start_drain(worker_t *w)
{
    if (w->draining)
        return;
    w->draining = true;
    w->drain_deadline = w->now + (uint64_t)w->cfg->drain_timeout * 1000;
    for (int i = 0; i < w->nlisten; i++) {
        close(w->listen_fd[i]); /* ends the multishot accept */
        w->listen_fd[i] = -1;
    }
    log_line(LOG_INFO, "event=drain worker=%d sessions=%u", w->id, sessions_count(w));
    timer_arm(&w->timers, &w->drain_timer, w->drain_deadline, on_drain_deadline);
    sessions_drain(w);
}

static void handle_cqe(worker_t *w, struct io_uring_cqe *cqe)
{
    uint64_t ud = io_uring_cqe_get_data64(cqe);
    enum op op = UD_OP(ud);
    switch (op) {
    case OP_ACCEPT:
        if (cqe->res >= 0) {
            if (w->draining)
                close(cqe->res);
            else
                session_accept(w, cqe->res);
        } else if (cqe->res == -EMFILE || cqe->res == -ENFILE) {
            /* Out of descriptors: re-arming at once would spin on the same
             * error. Pending clients wait in the backlog until the tick. */
            if (!w->accept_paused[UD_IDX(ud)])
                log_line(LOG_WARN, "event=accept_paused worker=%d error=\"%s\" sessions=%u", w->id,
                         strerror(-cqe->res), sessions_count(w));
            w->accept_paused[UD_IDX(ud)] = true;
        } else if (cqe->res != -ECANCELED && cqe->res != -EBADF && cqe->res != -EINVAL) {
            log_line(LOG_WARN, "event=accept_error worker=%d error=\"%s\"", w->id, strerror(-cqe->res));
        }
        if (!(cqe->flags & IORING_CQE_F_MORE) && !w->draining && w->listen_fd[UD_IDX(ud)] >= 0 &&
            !w->accept_paused[UD_IDX(ud)])
            arm_accept(w, (int)UD_IDX(ud));
        break;
    case OP_WAKE:
        start_drain(w);
        break;
    case OP_DNSBL:
        dnsblc_cqe(w, cqe);
        break;
    case OP_FLEET:
        fleet_cqe(w, cqe);
        break;
    case OP_SCAN:
        scanner_cqe(w, cqe);
        break;
    case OP_SCAN_CANCEL:
        break;
    case OP_CALL:
        run_call(w);
        if (!w->stopped)
            arm_call(w);
        break;
    case OP_TICK:
        for (int i = 0; i < w->nlisten; i++)
            if (w->accept_paused[i] && !w->draining && w->listen_fd[i] >= 0) {
                w->accept_paused[i] = false;
                arm_accept(w, i);
            }
        timer_run(&w->timers, w, w->now);
        spfc_tick(w);
        if (!w->stopped)
            arm_tick(w);
        break;
    case OP_SPF_RECV:
        spfc_cqe(w, cqe);
        break;
    case OP_SPOOL_IO:
        spooler_cqe(w, op, cqe);
        break;
    case OP_RECV:
    case OP_SEND:
    case OP_CANCEL:
        session_cqe(w, op, UD_IDX(ud), UD_GEN(ud), cqe);
        break;
    case OP_DS_CONNECT:
    case OP_DS_RECV:
    case OP_DS_SEND:
    case OP_DS_CANCEL:
        pool_cqe(w, op, UD_IDX(ud), UD_GEN(ud), cqe);
        break;
    }
}

/* After the completions: the work they posted, then the frees. */
static void end_of_turn(worker_t *w)
{
    for (int guard = 0; guard < 64; guard++) {
        sessions_run(w);
        pool_flush(w);
        if (!w->bufs_returned)
            break;
        w->bufs_returned = false;
        sessions_buffers_back(w);
    }
    sessions_reap(w);
    pool_reap(w);
    sessions_run(w); /* a freed downstream slot may have served a waiter */
    spooler_flush(w); /* deliveries due, then this turn's records: one write and one fsync */
    pool_flush(w);
    fleet_flush(w); /* this turn's rate updates to Redis: one write */
}

void *worker_main(void *arg)
{
    worker_t *w = arg;
    /* SINGLE_ISSUER: the ring belongs to the thread that creates it. */
    if (ring_setup(w, w->init_err, sizeof w->init_err) || buffers_setup(w, w->init_err, sizeof w->init_err)) {
        sem_post(&w->ready);
        return NULL;
    }
    sem_post(&w->ready);
    w->now = now_ms();
    for (int i = 0; i < w->nlisten; i++)
        arm_accept(w, i);
    arm_wake(w);
    arm_call(w);
    arm_tick(w);
    spfc_tick(w); /* arms the helper socket's receive */
    pool_start(w);
    spooler_start(w);
    if (!w->pool)
        m_set(&w->m.ds_reachable, 1); /* Maildir mode: nothing to reach */
    for (;;) {
        int rc = io_uring_submit_and_wait(&w->ring, 1);
        if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
            log_line(LOG_ERROR, "event=ring_error worker=%d error=\"%s\"", w->id, strerror(-rc));
            break;
        }
        w->now = now_ms();
        struct io_uring_cqe *cqe;
        unsigned head, n = 0;
        io_uring_for_each_cqe(&w->ring, head, cqe)
        {
            handle_cqe(w, cqe);
            n++;
        }
        io_uring_cq_advance(&w->ring, n);
        end_of_turn(w);
        conf_turn(w);
        m_set(&w->m.heartbeat_ms, w->now);
        if (w->draining && sessions_count(w) == 0 && spooler_drained(w) && pool_drain(w) && scanner_idle(w))
            break;
    }
    w->stopped = true;
    tx_cache_free();
    return NULL;
}

/* After the thread has stopped: give back what the worker owned. */
void worker_destroy(worker_t *w)
{
    sessions_destroy(w);
    pool_destroy(w);
    spooler_destroy(w);
    dnsblc_destroy(w);
    fleet_destroy(w);
    scanner_destroy(w);
    spfc_destroy(w);
    if (w->br && w->br != MAP_FAILED) {
        io_uring_queue_exit(&w->ring);
        RECLAIM(w->bufs, (size_t)RECV_BUF_COUNT * RECV_BUF_SIZE); /* the shadow must not outlive the mapping */
        munmap(w->br, RECV_BUF_COUNT * sizeof(struct io_uring_buf));
        munmap(w->bufs, (size_t)RECV_BUF_COUNT * RECV_BUF_SIZE);
    }
    for (int i = 0; i < w->nlisten; i++)
        if (w->listen_fd[i] >= 0)
            close(w->listen_fd[i]);
    outq_pool_free(&w->blocks);
    free(w->tls_plain);
    w->tls_plain = NULL;
    while (w->nheld)
        held_release(w, &w->held[0]);
    free(w->held);
    w->held = NULL;
    if (w->wake_fd >= 0)
        close(w->wake_fd);
    if (w->call_fd >= 0)
        close(w->call_fd);
    pthread_mutex_destroy(&w->call_mu);
    pthread_cond_destroy(&w->call_cv);
    sem_destroy(&w->ready);
}

/*
 * main.c - start-up and signals.
 *
 * Loads the configuration (defaults < file < MXGATE_* environment < flags),
 * prepares the Maildir when no downstream is set, starts one worker thread
 * per CPU (each with its own ring and SO_REUSEPORT listener) and then only
 * waits for signals: SIGTERM/SIGINT drain (stop accepting, let transactions
 * finish up to drain_timeout, then 421) and exit 0.
 *
 * The order of start-up is the privilege separation: everything that needs
 * root happens first (look up user and group, prepare the Maildir for that
 * user, check that no one listens on our addresses, bind the listeners and
 * the HTTP endpoint, start the SPF helper, which drops to spf_user itself),
 * then root is given up for good (privs.c), and only then do the resolver
 * and the worker threads start: no client byte is read as root.
 */
#include "cli.h"
#include "control.h"
#include "http.h"
#include "listen.h"
#include "maildir.h"
#include "metrics.h"
#include "privs.h"
#include "reload.h"
#include "resolve.h"
#include "spf.h"
#include "spf_client.h"
#include "spfd.h"
#include "spooler.h"
#include "queue.h"
#include "rate.h"
#include "tls.h"
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define SPF_RESTART_PAUSE_S 1 /* between restarts of a helper that dies at once */
#define HEALTH_STALE_MS 5000  /* a worker whose loop has not turned this long is unhealthy */
#define METRICS_FIRST 16384   /* the text's first buffer; it grows to fit */

/* What the operations endpoint reads: the workers' metrics and state,
 * published by them (metrics.h), and the process's own. */
typedef struct ops {
    worker_t *w;
    int n;
    bool relay;          /* a downstream is configured: readiness needs it */
    pthread_mutex_t mu;  /* guards res: a reload may change it */
    resolve_t *res;      /* the current generation's downstream address; NULL without one */
    atomic_bool started; /* the workers run (the endpoint starts before them) */
    proc_metrics_t pm;
} ops_t;

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void reply_text(http_reply_t *out, unsigned status, const char *text)
{
    out->status = status;
    out->body = strdup(text);
    out->len = out->body ? strlen(out->body) : 0;
}

static void metrics_text(ops_t *o, http_reply_t *out)
{
    const metrics_t *m[CONFIG_WORKERS_MAX];
    for (int i = 0; i < o->n; i++)
        m[i] = &o->w[i].m;
    size_t cap = METRICS_FIRST;
    for (int tries = 0; tries < 8; tries++, cap *= 2) {
        char *buf = malloc(cap);
        if (!buf)
            break;
        size_t len = metrics_render(buf, cap, m, o->n, &o->pm);
        if (len < cap) {
            out->status = 200;
            out->content_type = "text/plain; version=0.0.4; charset=utf-8";
            out->body = buf;
            out->len = len;
            return;
        }
        free(buf);
    }
    reply_text(out, 500, "out of memory\n");
}

/*
 * /healthz: every worker's loop turned within HEALTH_STALE_MS (a stuck
 * worker is what a restart cures). /readyz: serving, not draining, and the
 * downstream answering connects (where there is one): what a balancer
 * should send mail to.
 */
static bool resolves(ops_t *o)
{
    pthread_mutex_lock(&o->mu);
    bool ok = !o->res || resolve_get(o->res, NULL, NULL);
    pthread_mutex_unlock(&o->mu);
    return ok;
}

static void on_http(void *ctx, const char *path, http_reply_t *out)
{
    ops_t *o = ctx;
    char text[128];
    if (strcmp(path, "/metrics") == 0) {
        metrics_text(o, out);
    } else if ((strcmp(path, "/healthz") == 0 || strcmp(path, "/readyz") == 0) && !atomic_load(&o->started)) {
        reply_text(out, 503, "starting\n");
    } else if (strcmp(path, "/healthz") == 0) {
        uint64_t now = mono_ms();
        for (int i = 0; i < o->n; i++) {
            uint64_t hb = m_get(&o->w[i].m.heartbeat_ms);
            if (hb + HEALTH_STALE_MS < now) {
                snprintf(text, sizeof text, "worker %d: no loop turn for %llu ms\n", i,
                         (unsigned long long)(now - hb));
                reply_text(out, 500, text);
                return;
            }
        }
        reply_text(out, 200, "ok\n");
    } else if (strcmp(path, "/readyz") == 0) {
        bool reachable = !o->relay;
        for (int i = 0; i < o->n && !reachable; i++)
            reachable = m_get(&o->w[i].m.ds_reachable) != 0;
        if (m_get(&o->pm.draining))
            reply_text(out, 503, "draining\n");
        else if (!resolves(o))
            reply_text(out, 503, "downstream name does not resolve\n");
        else if (!reachable)
            reply_text(out, 503, "downstream unreachable\n");
        else
            reply_text(out, 200, "ready\n");
    }
}

/* SIGTERM: readiness off at once; the listeners stay for drain_delay so
 * balancers notice before connections are refused. A second signal ends
 * the wait. */
static void drain_delay(const mx_config_t *cfg, ops_t *o, const sigset_t *set)
{
    m_set(&o->pm.draining, 1);
    if (!cfg->drain_delay)
        return;
    log_line(LOG_INFO, "event=drain_delay seconds=%u", (unsigned)cfg->drain_delay);
    uint64_t end = mono_ms() + (uint64_t)cfg->drain_delay * 1000;
    for (uint64_t now; (now = mono_ms()) < end;) {
        struct timespec ts = { (time_t)((end - now) / 1000), (long)((end - now) % 1000) * 1000000 };
        int sig = sigtimedwait(set, NULL, &ts);
        if (sig == SIGTERM || sig == SIGINT)
            return;
    }
}

/*
 * The SPF helper: this executable again, started with --spf-helper and one
 * end of a SOCK_SEQPACKET socketpair per worker. The main thread watches it
 * (SIGCHLD) and starts a new one when it dies; the workers take their new
 * socket at their next tick and meanwhile answer temperror.
 *
 * The first helper starts as root and becomes spf_user itself. A restart
 * happens after the gateway gave up root, so the new helper runs as the
 * gateway's user (it says so in its log). It is executed through
 * /proc/self/exe, the very binary that runs, which needs no search
 * permission on the directories of its path (the new user may have none)
 * and is the same version even if the file was replaced meanwhile.
 */
static pid_t spf_spawn(const mx_config_t *cfg, worker_t *w, int n, bool running)
{
    char exe[CONFIG_PATH_MAX], fds[CONFIG_WORKERS_MAX * 8] = "", threads[16], tmo[16];
    ssize_t el = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (el <= 0)
        snprintf(exe, sizeof exe, "mxgate"); /* only argv[0], for ps */
    else
        exe[el] = '\0';
    int mine[CONFIG_WORKERS_MAX], theirs[CONFIG_WORKERS_MAX];
    int k = 0;
    for (int i = 0; i < n && i < CONFIG_WORKERS_MAX; i++, k++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv)) {
            log_line(LOG_ERROR, "event=spf_helper_failed error=\"socketpair: %s\"", strerror(errno));
            for (int j = 0; j < k; j++)
                close(mine[j]), close(theirs[j]);
            return -1;
        }
        mine[i] = sv[0];
        theirs[i] = sv[1];
        fcntl(sv[1], F_SETFD, 0); /* this end goes to the helper */
        size_t l = strlen(fds);
        snprintf(fds + l, sizeof fds - l, "%s%d", i ? "," : "", sv[1]);
    }
    snprintf(threads, sizeof threads, "%u", cfg->spf_threads);
    snprintf(tmo, sizeof tmo, "%u", cfg->dns_timeout);
    static const char *const levels[] = {"debug", "info", "warn", "error"};
    char *argv[] = {exe, "--spf-helper", "--fds", fds, "--threads", threads, "--user", (char *)cfg->spf_user,
                    "--dns-timeout", tmo, "--hostname", (char *)cfg->hostname, "--log-level",
                    (char *)levels[cfg->log_level & 3], cfg->dns_server[0] ? "--dns-server" : NULL,
                    (char *)cfg->dns_server, NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, "/proc/self/exe", NULL, NULL, argv, environ);
    for (int i = 0; i < k; i++)
        close(theirs[i]);
    if (rc) {
        log_line(LOG_ERROR, "event=spf_helper_failed error=\"spawn: %s\"", strerror(rc));
        for (int i = 0; i < k; i++)
            close(mine[i]);
        return -1;
    }
    for (int i = 0; i < k; i++) {
        if (!running)
            spfc_set_fd(&w[i], mine[i]);
        else
            spfc_handover(&w[i], mine[i]);
    }
    log_line(LOG_INFO, "event=spf_helper_started pid=%d workers=%d", (int)pid, k);
    return pid;
}

/* Generations replaced by a reload, until no worker holds them (conf.h). */
static conf_t *retired;

static void retire_sweep(worker_t *w, int n, const conf_t *cur)
{
    for (conf_t **pp = &retired; *pp;) {
        conf_t *c = *pp;
        bool seen = true;
        for (int i = 0; i < n && seen; i++)
            seen = atomic_load_explicit(&w[i].conf_seen, memory_order_acquire) >= cur->number;
        if (seen && atomic_load_explicit(&c->holders, memory_order_acquire) == 0) {
            *pp = c->retired_next;
            log_line(LOG_DEBUG, "event=reload_freed generation=%llu", (unsigned long long)c->number);
            conf_free(c);
            continue;
        }
        pp = &c->retired_next;
    }
}

/*
 * SIGHUP: build the next generation and publish it; the workers adopt it
 * at their next loop turn. On failure the running one stays and the
 * reason is logged and counted.
 */
static conf_t *reload(conf_t *_Atomic *pub, ops_t *o, int argc, char **argv, char **envp)
{
    conf_t *cur = atomic_load(pub);
    reload_report_t rep;
    char err[512];
    conf_t *next = reload_build(cur, argc, argv, envp, &rep, err, sizeof err);
    logbuf_t b;
    lb_init(&b, "reload");
    if (!next) {
        m_inc(&o->pm.reloads_failed);
        lb_cstr(&b, "result", "failed");
        lb_u64(&b, "generation", cur->number);
        lb_cstr(&b, "error", err);
        lb_cstr(&b, "note", "the running configuration stays");
        log_emit(LOG_ERROR, &b);
        return cur;
    }
    log_level = next->cfg.log_level;
    pthread_mutex_lock(&o->mu);
    o->res = next->resolver;
    pthread_mutex_unlock(&o->mu);
    atomic_store_explicit(pub, next, memory_order_release);
    cur->retired_next = retired;
    retired = cur;
    m_inc(&o->pm.reloads_ok);
    lb_cstr(&b, "result", "ok");
    lb_u64(&b, "generation", next->number);
    lb_cstr(&b, "changed", rep.changed[0] ? rep.changed : "-");
    if (rep.not_applied[0]) {
        lb_cstr(&b, "not_applied", rep.not_applied);
        lb_cstr(&b, "note", "these keys need a restart");
    }
    log_emit(rep.not_applied[0] ? LOG_WARN : LOG_INFO, &b);
    return next;
}

int main(int argc, char **argv, char **envp)
{
    if (argc > 1 && strcmp(argv[1], "--spf-helper") == 0)
        return spfd_main(argc, argv);
    if (argc > 1 && strcmp(argv[1], "queue") == 0)
        return queue_main(argc - 1, argv + 1);
    mx_config_t loaded;
    memset(&loaded, 0, sizeof loaded);
    char err[512];
    int rc = cli_load(&loaded, argc, argv, envp, err, sizeof err);
    if (rc > 0) {
        config_free(&loaded);
        return 0; /* --help, --print-config, --version */
    }
    if (rc) {
        config_free(&loaded);
        fprintf(stderr, "mxgate: %s\n", err);
        return 2;
    }
    log_level = loaded.log_level;
    conf_t *conf = conf_new(&loaded, 1, err, sizeof err);
    if (!conf) {
        fprintf(stderr, "mxgate: %s\n", err);
        return 2;
    }
    static conf_t *_Atomic current;
    atomic_init(&current, conf);
    const mx_config_t *cfg = &conf->cfg; /* the keys that need a restart: the same in every generation */
    /* As root: who to become, before anything is bound. */
    privs_t privs;
    if (privs_plan(cfg, &privs, err, sizeof err)) {
        fprintf(stderr, "mxgate: %s\n", err);
        return 1;
    }
    if (!cfg->downstream[0] && maildir_prepare(cfg->maildir, privs.drop ? privs.uid : (uid_t)-1,
                                               privs.drop ? privs.gid : (gid_t)-1, err, sizeof err)) {
        fprintf(stderr, "mxgate: %s\n", err);
        return 1;
    }
    if (cfg->downstream[0] &&
        !(conf->resolver = resolve_new(cfg->downstream, cfg->dns_server, cfg->dns_timeout, err, sizeof err))) {
        fprintf(stderr, "mxgate: %s\n", err);
        return 1;
    }
    conf->own_resolver = true;
    /* SO_REUSEPORT would let us join another instance's listeners in
     * silence: find out first whether anyone listens there. */
    for (int i = 0; i < cfg->nlisten; i++) {
        if (listen_probe("listen", cfg->listen[i], err, sizeof err)) {
            fprintf(stderr, "mxgate: %s\n", err);
            return 1;
        }
    }
    if (cfg->http_listen[0] && listen_probe("http_listen", cfg->http_listen, err, sizeof err)) {
        fprintf(stderr, "mxgate: %s\n", err);
        return 1;
    }
    /* One descriptor per client and per downstream connection: take every
     * descriptor the hard limit allows. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int n = cfg->workers ? (int)cfg->workers : (ncpu > 0 ? (int)ncpu : 1);

    /* Workers inherit this mask: signals reach only the main thread. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGCHLD);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    conn_limits_t *limits = calloc(1, sizeof *limits);
    worker_t *w = calloc((size_t)n, sizeof *w);
    pthread_t *th = calloc((size_t)n, sizeof *th);
    if (limits)
        limits->rate = rate_new();
    if (!limits || !limits->rate || !w || !th) {
        fprintf(stderr, "mxgate: out of memory\n");
        return 1;
    }
    static spool_shared_t spool;
    if (config_spooling(cfg)) {
        if (spool_shared_open(&spool, cfg->spool_dir, privs.drop ? privs.uid : (uid_t)-1,
                              privs.drop ? privs.gid : (gid_t)-1, (uint32_t)n, err, sizeof err)) {
            fprintf(stderr, "mxgate: %s\n", err);
            return 1;
        }
        limits->spool = &spool;
    }
    limits->spill_dirfd = -1;
    if (cfg->content_scanner != CONFIG_CONTENT_NONE && cfg->content_spill_limit && !config_spooling(cfg)) {
        bool made;
        limits->spill_dirfd = spool_dir_open(cfg->spool_dir, privs.drop ? privs.uid : (uid_t)-1,
                                             privs.drop ? privs.gid : (gid_t)-1, &made, err, sizeof err);
        if (limits->spill_dirfd < 0) {
            fprintf(stderr, "mxgate: %s\n", err);
            return 1;
        }
    }
    for (int i = 0; i < n; i++) {
        if (worker_init(&w[i], i, &current, limits, err, sizeof err)) {
            fprintf(stderr, "mxgate: %s\n", err);
            return 1;
        }
    }
    static ops_t ops;
    ops.w = w;
    ops.n = n;
    ops.relay = cfg->downstream[0] != 0;
    pthread_mutex_init(&ops.mu, NULL);
    ops.res = conf->resolver;
    http_server_t *http = NULL;
    if (cfg->http_listen[0] && !(http = http_start(cfg->http_listen, on_http, &ops, err, sizeof err))) {
        fprintf(stderr, "mxgate: %s\n", err);
        return 1;
    }
    pid_t spf_pid = conf->chain.spf ? spf_spawn(cfg, w, n, false) : -1;
    if (conf->chain.spf && spf_pid < 0)
        return 1;
    time_t spf_started = time(NULL);
    /* Everything that needed root is done. */
    if (privs_drop(&privs, err, sizeof err)) {
        fprintf(stderr, "mxgate: %s\n", err);
        return 1;
    }
    if (conf->resolver && resolve_start(conf->resolver, err, sizeof err)) {
        fprintf(stderr, "mxgate: %s\n", err);
        return 1;
    }
    for (int i = 0; i < n; i++) {
        if ((errno = pthread_create(&th[i], NULL, worker_main, &w[i]))) {
            fprintf(stderr, "mxgate: pthread_create: %s\n", strerror(errno));
            return 1;
        }
    }
    for (int i = 0; i < n; i++) {
        sem_wait(&w[i].ready);
        if (w[i].init_err[0]) {
            fprintf(stderr, "mxgate: worker %d: %s\n", i, w[i].init_err);
            return 1;
        }
    }
    atomic_store(&ops.started, true);
    log_line(LOG_INFO, "event=start version=%s workers=%d listen=%s hostname=%s downstream=%s maildir=%s http=%s",
             MXGATE_VERSION, n, cfg->listen[0], cfg->hostname, cfg->downstream[0] ? cfg->downstream : "-",
             cfg->downstream[0] ? "-" : cfg->maildir, cfg->http_listen[0] ? cfg->http_listen : "-");
    /* mxgate queue on the running gateway: after the drop, so the socket
     * is the gateway user's, in the 0700 spool directory. */
    control_t *control = NULL;
    if (limits->spool && !(control = control_start(spool.dirfd, w, n, err, sizeof err)))
        log_line(LOG_WARN, "event=control_failed error=\"%s\" note=\"mxgate queue works offline only\"", err);
    if (cfg->tls != CONFIG_TLS_OFF) {
        /* Which TLS runs: user space, here; the probe says whether the
         * kernel could take the records (mxgate_tls_ktls stays 0). */
        char why[192];
        bool k = tls_ktls_probe(why, sizeof why);
        log_line(LOG_INFO, "event=tls_mode mode=user ktls=%s note=\"%s\"", k ? "possible" : "unavailable", why);
    }
    for (;;) {
        /* A second at most between sweeps of retired generations. */
        struct timespec tick = { 1, 0 };
        int sig = sigtimedwait(&set, NULL, &tick);
        conf = atomic_load(&current);
        retire_sweep(w, n, conf);
        if (conf->tls)
            tls_ticket_rotate(conf->cfg.tls_ticket_rotation);
        if (sig < 0)
            continue;
        if (sig == SIGCHLD) {
            int st;
            pid_t pid;
            while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
                if (pid != spf_pid)
                    continue;
                log_line(LOG_ERROR, "event=spf_helper_exited pid=%d status=%d signal=%d action=restart", (int)pid,
                         WIFEXITED(st) ? WEXITSTATUS(st) : -1, WIFSIGNALED(st) ? WTERMSIG(st) : 0);
                if (time(NULL) - spf_started < 1)
                    sleep(SPF_RESTART_PAUSE_S); /* a helper that dies at once must not spin */
                spf_pid = spf_spawn(&conf->cfg, w, n, true);
                spf_started = time(NULL);
                m_inc(&ops.pm.spf_helper_restarts);
            }
            continue;
        }
        if (sig == SIGHUP) {
            conf = reload(&current, &ops, argc, argv, envp);
            if (conf->chain.spf && spf_pid < 0) {
                /* SPF is new in the chain: its helper, as after a crash */
                spf_pid = spf_spawn(&conf->cfg, w, n, true);
                spf_started = time(NULL);
            }
            continue;
        }
        log_line(LOG_INFO, "event=signal signal=%s action=drain delay_s=%u timeout_s=%u",
                 sig == SIGTERM ? "TERM" : "INT", (unsigned)conf->cfg.drain_delay, (unsigned)conf->cfg.drain_timeout);
        drain_delay(&conf->cfg, &ops, &set);
        break;
    }
    control_stop(control); /* no command into a draining worker */
    for (int i = 0; i < n; i++)
        worker_wake(&w[i]);
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    uint64_t conns = 0, acc = 0, def = 0, ref = 0, spf = 0, spf_cached = 0, spf_temp = 0;
    for (int i = 0; i < n; i++) { /* per-worker counters, summed when read */
        conns += m_get(&w[i].m.connections_accepted);
        acc += m_get(&w[i].m.messages[MO_ACCEPTED]);
        def += m_get(&w[i].m.messages[MO_DEFERRED]);
        ref += m_get(&w[i].m.messages[MO_REFUSED]);
        for (int r = 0; r < SPFR_COUNT; r++)
            spf += m_get(&w[i].m.spf_checks[r]);
        spf_cached += m_get(&w[i].m.spf_cache_hits);
        spf_temp += m_get(&w[i].m.spf_checks[SPFR_TEMPERROR]);
    }
    log_line(LOG_INFO,
             "event=stop connections=%llu messages_accepted=%llu messages_deferred=%llu messages_refused=%llu "
             "spf_checks=%llu spf_cached=%llu spf_temperrors=%llu",
             (unsigned long long)conns, (unsigned long long)acc, (unsigned long long)def, (unsigned long long)ref,
             (unsigned long long)spf, (unsigned long long)spf_cached, (unsigned long long)spf_temp);
    http_stop(http);
    if (spf_pid > 0) {
        kill(spf_pid, SIGTERM);
        waitpid(spf_pid, NULL, 0);
    }
    for (int i = 0; i < n; i++)
        worker_destroy(&w[i]);
    while (retired) {
        conf_t *c = retired;
        retired = c->retired_next;
        conf_free(c);
    }
    conf_free(atomic_load(&current));
    free(w);
    free(th);
    rate_free(limits->rate);
    free(limits);
    spool_shared_close(&spool);
    return 0;
}

/*
 * main.c - start-up and signals.
 *
 * Loads the configuration (defaults < file < MXGATE_* environment < flags),
 * prepares the Maildir when no downstream is set, starts one worker thread
 * per CPU (each with its own ring and SO_REUSEPORT listener) and then only
 * waits for signals: SIGTERM/SIGINT drain (stop accepting, let transactions
 * finish up to drain_timeout, then 421) and exit 0.
 */
#include "cli.h"
#include "worker.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

int main(int argc, char **argv, char **envp)
{
    static mx_config_t cfg;
    char err[512];
    int rc = cli_load(&cfg, argc, argv, envp, err, sizeof err);
    if (rc == 1 || rc == 2)
        return 0; /* --help, --print-config */
    if (rc) {
        fprintf(stderr, "mxgate: %s\n", err);
        return 2;
    }
    log_level = cfg.log_level;
    if (!cfg.downstream[0] && maildir_prepare(cfg.maildir, err, sizeof err)) {
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
    int n = cfg.workers ? (int)cfg.workers : (ncpu > 0 ? (int)ncpu : 1);

    /* Workers inherit this mask: signals reach only the main thread. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    conn_limits_t *limits = calloc(1, sizeof *limits);
    worker_t *w = calloc((size_t)n, sizeof *w);
    pthread_t *th = calloc((size_t)n, sizeof *th);
    if (!limits || !w || !th) {
        fprintf(stderr, "mxgate: out of memory\n");
        return 1;
    }
    for (int i = 0; i < n; i++) {
        if (worker_init(&w[i], i, &cfg, limits, err, sizeof err)) {
            fprintf(stderr, "mxgate: %s\n", err);
            return 1;
        }
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
    log_line(LOG_INFO, "event=start version=0.1 workers=%d listen=%s hostname=%s downstream=%s maildir=%s", n,
             cfg.listen[0], cfg.hostname, cfg.downstream[0] ? cfg.downstream : "-",
             cfg.downstream[0] ? "-" : cfg.maildir);
    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig))
            continue;
        if (sig == SIGHUP) {
            log_line(LOG_WARN, "event=sighup note=\"configuration reload is not implemented; restart to apply\"");
            continue;
        }
        log_line(LOG_INFO, "event=signal signal=%s action=drain timeout_s=%u", sig == SIGTERM ? "TERM" : "INT",
                 (unsigned)cfg.drain_timeout);
        break;
    }
    for (int i = 0; i < n; i++)
        worker_wake(&w[i]);
    uint64_t msgs = 0, conns = 0, rejected = 0;
    for (int i = 0; i < n; i++) { /* per-worker counters, summed when read */
        pthread_join(th[i], NULL);
        msgs += w[i].n_msg;
        conns += w[i].n_conn;
        rejected += w[i].n_rejected;
    }
    log_line(LOG_INFO, "event=stop connections=%llu messages=%llu bodies_rejected=%llu", (unsigned long long)conns,
             (unsigned long long)msgs, (unsigned long long)rejected);
    for (int i = 0; i < n; i++)
        worker_destroy(&w[i]);
    free(w);
    free(th);
    free(limits);
    config_free(&cfg);
    return 0;
}

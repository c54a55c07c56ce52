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
#include "maildir.h"
#include "spf_client.h"
#include "spfd.h"
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
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

/*
 * The SPF helper: this executable again, started with --spf-helper and one
 * end of a SOCK_SEQPACKET socketpair per worker. The main thread watches it
 * (SIGCHLD) and starts a new one when it dies; the workers take their new
 * socket at their next tick and meanwhile answer temperror.
 */
static pid_t spf_spawn(const mx_config_t *cfg, worker_t *w, int n, bool running)
{
    char exe[CONFIG_PATH_MAX], fds[CONFIG_WORKERS_MAX * 8] = "", threads[16], tmo[16];
    ssize_t el = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (el <= 0) {
        log_line(LOG_ERROR, "event=spf_helper_failed error=\"readlink /proc/self/exe: %s\"", strerror(errno));
        return -1;
    }
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
    int rc = posix_spawn(&pid, exe, NULL, NULL, argv, environ);
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

int main(int argc, char **argv, char **envp)
{
    if (argc > 1 && strcmp(argv[1], "--spf-helper") == 0)
        return spfd_main(argc, argv);
    static mx_config_t cfg;
    static filter_chain_t chain;
    char err[512];
    int rc = cli_load(&cfg, argc, argv, envp, err, sizeof err);
    if (rc == 1 || rc == 2)
        return 0; /* --help, --print-config */
    if (rc) {
        fprintf(stderr, "mxgate: %s\n", err);
        return 2;
    }
    log_level = cfg.log_level;
    if (filter_chain_init(&chain, &cfg, err, sizeof err)) {
        fprintf(stderr, "mxgate: %s\n", err);
        return 2;
    }
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
    sigaddset(&set, SIGCHLD);
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
        if (worker_init(&w[i], i, &cfg, &chain, limits, err, sizeof err)) {
            fprintf(stderr, "mxgate: %s\n", err);
            return 1;
        }
    }
    pid_t spf_pid = chain.spf ? spf_spawn(&cfg, w, n, false) : -1;
    if (chain.spf && spf_pid < 0)
        return 1;
    time_t spf_started = time(NULL);
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
                spf_pid = spf_spawn(&cfg, w, n, true);
                spf_started = time(NULL);
            }
            continue;
        }
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
    counters_t sum = { 0 };
    for (int i = 0; i < n; i++) { /* per-worker counters, summed when read */
        pthread_join(th[i], NULL);
        sum.connections += w[i].n.connections;
        sum.messages += w[i].n.messages;
        sum.tx_refused += w[i].n.tx_refused;
        sum.bodies_rejected += w[i].n.bodies_rejected;
        sum.timeouts += w[i].n.timeouts;
        sum.ds_connects += w[i].n.ds_connects;
        sum.ds_failures += w[i].n.ds_failures;
        sum.spf_checks += w[i].n.spf_checks;
        sum.spf_cached += w[i].n.spf_cached;
        sum.spf_errors += w[i].n.spf_errors;
    }
    log_line(LOG_INFO,
             "event=stop connections=%llu messages=%llu transactions_refused=%llu bodies_rejected=%llu "
             "timeouts=%llu downstream_connects=%llu downstream_connect_failures=%llu spf_checks=%llu "
             "spf_cached=%llu spf_temperrors=%llu",
             (unsigned long long)sum.connections, (unsigned long long)sum.messages,
             (unsigned long long)sum.tx_refused, (unsigned long long)sum.bodies_rejected,
             (unsigned long long)sum.timeouts, (unsigned long long)sum.ds_connects,
             (unsigned long long)sum.ds_failures, (unsigned long long)sum.spf_checks,
             (unsigned long long)sum.spf_cached, (unsigned long long)sum.spf_errors);
    if (spf_pid > 0) {
        kill(spf_pid, SIGTERM);
        waitpid(spf_pid, NULL, 0);
    }
    for (int i = 0; i < n; i++)
        worker_destroy(&w[i]);
    filter_chain_fini(&chain);
    free(w);
    free(th);
    free(limits);
    config_free(&cfg);
    return 0;
}

/*
 * reload.h - SIGHUP: the next configuration generation, or why not.
 *
 * The sources are read again as at start-up (the file, the environment the
 * process was started with, the same flags, which still win), the filter
 * chain is built anew (the recipient map's file is read again even when its
 * path did not change), and the result becomes a new generation (conf.h).
 * Anything that fails leaves the running generation as it is.
 *
 * Some keys are the shape of the process and cannot change while it runs
 * (RELOAD_RESTART_KEYS: its sockets, threads, user, the SPF helper's start
 * options, the Maildir it opened, the pool's size), nor can the delivery
 * mode (downstream set or empty): the new generation keeps the running
 * values of those and they are reported as not applied.
 */
#ifndef MXGATE_RELOAD_H
#define MXGATE_RELOAD_H

#include "conf.h"

#include <stddef.h>

#define RELOAD_RESTART_KEYS                                                                                         \
    "listen", "workers", "http_listen", "user", "group", "maildir", "downstream_connections",                      \
        "downstream_queue_limit", "spf_user", "spf_threads", "spf_cache_size", "dns_server", "dns_timeout",    \
        "delivery", "spool_dir"

typedef struct reload_report {
    char changed[1024];    /* the keys applied with a new value, comma-separated ("" none) */
    char not_applied[512]; /* the keys that differ but need a restart, kept at their running value */
} reload_report_t;

/*
 * Build the generation after cur from argv/envp (as main got them). The
 * downstream's resolver is cur's when the downstream did not change (cur
 * gives it up), else a new one, started. NULL with err: cur stays.
 */
conf_t *reload_build(conf_t *cur, int argc, char **argv, char **envp, reload_report_t *rep, char *err,
                     size_t errlen);

#endif

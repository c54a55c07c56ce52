/*
 * privs.h - giving up root after start-up, the way Postfix's smtpd does.
 *
 * Started as root, mxgate binds its listeners and the HTTP endpoint and
 * starts the SPF helper (which drops to spf_user itself) while it is root,
 * then becomes `user`/`group` for good (setgroups, setgid, setuid) before
 * any worker thread exists: no client byte is ever read by a root process.
 * The names are looked up first (privs_plan), before anything is bound, so
 * an unknown user stops start-up at once. Not started as root: there is
 * nothing to drop and the keys are not looked at.
 */
#ifndef MXGATE_PRIVS_H
#define MXGATE_PRIVS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "config.h"

typedef struct privs {
    bool root;        /* started with euid 0 */
    bool drop;        /* root, and `user` is not root: privs_drop() changes user */
    uid_t uid;        /* the user to become (root && !drop: 0) */
    gid_t gid;        /* its group */
    char user[64];    /* the names, for the log */
    char group[64];
} privs_t;

/* Look up user and group (user "": mxgate if it exists, else nobody; group
 * "": the user's primary group). 0, or -1 with err naming the key and the
 * name that does not exist. Only looks when started as root. */
int privs_plan(const mx_config_t *cfg, privs_t *p, char *err, size_t errlen);

/* Become p's user and group for good, check that root cannot come back,
 * clear the dumpable bit, and log one line (event=privileges). When there
 * is nothing to drop (not root, or user = root) it only logs. 0, or -1 with
 * err: the caller must not go on. */
int privs_drop(const privs_t *p, char *err, size_t errlen);

#endif

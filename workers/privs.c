/*
 * privs.c - giving up root after start-up (see privs.h).
 *
 * The drop is setgroups(1, {gid}), setresgid and setresuid with all three
 * ids the same, as Postfix's set_ugid() does: no saved id keeps a way back.
 * glibc applies each of these calls to every thread of the process, so the
 * HTTP server's thread (started before, to bind its port) drops too.
 *
 * It is then checked rather than trusted: every id is the new one, no
 * capability is left (a securebits setting can keep capabilities across a
 * setuid) and setuid(0) fails.
 *
 * Dumpable: cleared explicitly (PR_SET_DUMPABLE 0). The kernel clears it by
 * itself on the change of user unless fs.suid_dumpable says otherwise; the
 * process has held root, its memory may hold what only root could read, and
 * when `user` falls back to nobody other daemons share the uid: with the bit
 * clear no process of the same user can ptrace mxgate or read its
 * /proc/PID/mem or environ. The price is no core dumps (attach a debugger as
 * root instead); the process itself still reads its own /proc/self.
 */
#include "privs.h"

#include "log.h"

#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PRIVS_DEFAULT_USER "mxgate"
#define PRIVS_FALLBACK_USER "nobody"

static const char *lookup_error(int e)
{
    /* getpwnam: NULL with errno 0 (or ENOENT, ESRCH, ... by NSS module)
     * when the name is simply not there. */
    return e == 0 || e == ENOENT || e == ESRCH || e == EBADF || e == EPERM ? "no such user" : strerror(e);
}

int privs_plan(const mx_config_t *cfg, privs_t *p, char *err, size_t errlen)
{
    memset(p, 0, sizeof *p);
    p->uid = geteuid();
    p->gid = getegid();
    p->root = p->uid == 0;
    if (!p->root)
        return 0;
    const char *name = cfg->user[0] ? cfg->user : PRIVS_DEFAULT_USER;
    errno = 0;
    struct passwd *pw = getpwnam(name);
    if (!pw && !cfg->user[0]) {
        name = PRIVS_FALLBACK_USER;
        errno = 0;
        pw = getpwnam(name);
        if (!pw) {
            snprintf(err, errlen,
                     "user: started as root and neither %s nor %s exists to drop privileges to; "
                     "create a user for mxgate and set user (or user = root to keep root, not advised)",
                     PRIVS_DEFAULT_USER, PRIVS_FALLBACK_USER);
            return -1;
        }
    }
    if (!pw) {
        snprintf(err, errlen, "user: %s: %s (mxgate drops root to this user after binding its ports)", name,
                 lookup_error(errno));
        return -1;
    }
    snprintf(p->user, sizeof p->user, "%s", pw->pw_name);
    p->uid = pw->pw_uid;
    p->gid = pw->pw_gid;
    if (cfg->group[0]) {
        errno = 0;
        struct group *gr = getgrnam(cfg->group);
        if (!gr) {
            int e = errno;
            snprintf(err, errlen, "group: %s: %s", cfg->group,
                     e == 0 || e == ENOENT || e == ESRCH || e == EBADF || e == EPERM ? "no such group" : strerror(e));
            return -1;
        }
        p->gid = gr->gr_gid;
        snprintf(p->group, sizeof p->group, "%s", gr->gr_name);
    } else {
        struct group *gr = getgrgid(p->gid);
        if (gr)
            snprintf(p->group, sizeof p->group, "%s", gr->gr_name);
        else
            snprintf(p->group, sizeof p->group, "%u", (unsigned)p->gid);
    }
    p->drop = p->uid != 0;
    if (!p->drop)
        p->gid = getegid(); /* user = root (or a uid-0 alias): everything stays */
    return 0;
}

/* Any capability left in the effective or permitted set. */
static bool caps_left(void)
{
    struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capget, &hdr, data) != 0)
        return true;
    for (int i = 0; i < _LINUX_CAPABILITY_U32S_3; i++)
        if (data[i].effective || data[i].permitted)
            return true;
    return false;
}

/* event=privileges user= uid= group= gid= (names from the system's
 * databases: escaped like any value). */
static void privs_log(int level, const privs_t *p, const char *action, const char *note)
{
    logbuf_t b;
    lb_init(&b, "privileges");
    lb_cstr(&b, "user", p->user);
    lb_u64(&b, "uid", p->uid);
    lb_cstr(&b, "group", p->group);
    lb_u64(&b, "gid", p->gid);
    if (action)
        lb_cstr(&b, "action", action);
    if (note)
        lb_cstr(&b, "note", note);
    log_emit(level, &b);
}

int privs_drop(const privs_t *p, char *err, size_t errlen)
{
    if (!p->root) {
        log_line(LOG_DEBUG, "event=privileges action=none uid=%u gid=%u note=\"not started as root: nothing to drop\"",
                 (unsigned)getuid(), (unsigned)getgid());
        return 0;
    }
    if (!p->drop) {
        privs_log(LOG_WARN, p, "kept", "user is root: privileges not dropped, every worker runs as root");
        return 0;
    }
    if (setgroups(1, &p->gid) != 0 || setresgid(p->gid, p->gid, p->gid) != 0 ||
        setresuid(p->uid, p->uid, p->uid) != 0) {
        snprintf(err, errlen, "cannot drop privileges to user %s (uid %u) and group %s (gid %u): %s", p->user,
                 (unsigned)p->uid, p->group, (unsigned)p->gid, strerror(errno));
        return -1;
    }
    uid_t ru, eu, su;
    gid_t rg, eg, sg;
    if (getresuid(&ru, &eu, &su) != 0 || getresgid(&rg, &eg, &sg) != 0 || ru != p->uid || eu != p->uid ||
        su != p->uid || rg != p->gid || eg != p->gid || sg != p->gid) {
        snprintf(err, errlen, "privileges not dropped: the ids did not change to %u:%u", (unsigned)p->uid,
                 (unsigned)p->gid);
        return -1;
    }
    if (setuid(0) == 0 || seteuid(0) == 0 || geteuid() == 0) {
        snprintf(err, errlen, "privileges not dropped: root is still reachable after setuid(%u)", (unsigned)p->uid);
        return -1;
    }
    if (caps_left()) {
        snprintf(err, errlen, "privileges not dropped: capabilities remain after setuid(%u) (securebits?)",
                 (unsigned)p->uid);
        return -1;
    }
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
        snprintf(err, errlen, "prctl(PR_SET_DUMPABLE): %s", strerror(errno));
        return -1;
    }
    privs_log(LOG_INFO, p, NULL, NULL);
    return 0;
}

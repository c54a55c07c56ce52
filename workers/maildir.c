/*
 * maildir.c - the embedded default delivery: a local Maildir, so that a
 * newcomer's `make run` plus any SMTP client shows a delivered message.
 *
 * Delivery follows the Maildir rules (write under tmp/, fsync, rename into
 * new/) and then fsyncs new/ itself, so a 250 is never given for a file a
 * crash could take back. The wire form is turned into a file: CRLF becomes
 * LF and the stuffing dot is removed. This is synchronous disk I/O on the
 * worker thread; it is the laptop mode, and production relays downstream.
 */
#include "maildir.h"

#include "config.h"
#include "log.h"

#include <stdbool.h>
#include <stdint.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

/* tmp/ and new/, opened by maildir_prepare() before the workers start and
 * only read afterwards. */
static int md_tmp = -1, md_new = -1;

/* A shared directory (sticky or writable by all, like /tmp) is never given
 * away: the new user can write there anyway. */
static int give(int fd, const char *path, uid_t owner, gid_t group, char *err, size_t errlen)
{
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(err, errlen, "maildir: %s: %s", path, strerror(errno));
        return -1;
    }
    if ((st.st_uid == owner && st.st_gid == group) || (st.st_mode & (S_ISVTX | S_IWOTH)))
        return 0;
    if (fchown(fd, owner, group) != 0) {
        snprintf(err, errlen, "maildir: cannot make %s owned by uid %u gid %u: %s", path, (unsigned)owner,
                 (unsigned)group, strerror(errno));
        return -1;
    }
    return 0;
}

int maildir_prepare(const char *dir, uid_t owner, gid_t group, char *err, size_t errlen)
{
    static const char *const sub[] = { "tmp", "new", "cur" };
    char path[CONFIG_PATH_MAX + 16];
    bool made = mkdir(dir, 0700) == 0;
    if (!made && errno != EEXIST) {
        snprintf(err, errlen, "maildir: cannot create %s: %s", dir, strerror(errno));
        return -1;
    }
    int top = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (top < 0) {
        snprintf(err, errlen, "maildir: cannot open %s: %s", dir, strerror(errno));
        return -1;
    }
    int rc = made && owner != (uid_t)-1 ? give(top, dir, owner, group, err, errlen) : 0;
    for (size_t i = 0; i < 3 && rc == 0; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, sub[i]);
        /* Relative to the open directory and never through a symbolic link:
         * whoever owns the Maildir cannot point root's chown elsewhere. */
        if (mkdirat(top, sub[i], 0700) != 0 && errno != EEXIST) {
            snprintf(err, errlen, "maildir: cannot create %s: %s", path, strerror(errno));
            rc = -1;
            break;
        }
        int fd = openat(top, sub[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) {
            snprintf(err, errlen, "maildir: cannot open %s: %s", path, strerror(errno));
            rc = -1;
            break;
        }
        if (owner != (uid_t)-1)
            rc = give(fd, path, owner, group, err, errlen);
        if (i == 0 && rc == 0)
            md_tmp = fd;
        else if (i == 1 && rc == 0)
            md_new = fd;
        else
            close(fd);
    }
    close(top);
    return rc;
}

/* Wire form to file form: "\r\n" -> "\n", a leading ".." -> ".". */
static size_t unwire(const char *in, size_t n, char *out)
{
    size_t o = 0;
    bool bol = true;
    for (size_t i = 0; i < n; i++) {
        char c = in[i];
        if (bol && c == '.' && i + 1 < n && in[i + 1] == '.') {
            bol = false;
            continue;
        }
        bol = false;
        if (c == '\r' && i + 1 < n && in[i + 1] == '\n')
            continue;
        out[o++] = c;
        if (c == '\n')
            bol = true;
    }
    return o;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

int maildir_deliver(const char *dir, const char *hostname, const char *uniq, const char *hdr, size_t hlen,
                    const char *body, size_t blen, char *name, size_t namelen)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    snprintf(name, namelen, "%lld.M%06ldP%dQ%s.%s", (long long)tv.tv_sec, (long)tv.tv_usec, (int)getpid(), uniq,
             hostname);
    char dst[CONFIG_PATH_MAX + 300];
    snprintf(dst, sizeof dst, "%s/new/%s", dir, name);
    if (md_tmp < 0 || md_new < 0) {
        log_line(LOG_ERROR, "event=maildir_error path=%s error=\"not prepared\"", dst);
        return -1;
    }
    char *file = malloc(hlen + blen + 1);
    if (!file)
        return -1;
    size_t flen = unwire(hdr ? hdr : "", hdr ? hlen : 0, file);
    flen += unwire(body, blen, file + flen);
    int fd = openat(md_tmp, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    int rc = -1;
    if (fd >= 0) {
        if (write_all(fd, file, flen) == 0 && fsync(fd) == 0) {
            rc = close(fd);
            fd = -1;
            if (rc == 0)
                rc = renameat(md_tmp, name, md_new, name);
        }
        if (fd >= 0)
            close(fd);
        if (rc)
            unlinkat(md_tmp, name, 0);
    }
    free(file);
    if (rc == 0)
        rc = fsync(md_new);
    if (rc)
        log_line(LOG_ERROR, "event=maildir_error path=%s error=\"%s\"", dst, strerror(errno));
    return rc;
}

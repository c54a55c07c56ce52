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

int maildir_prepare(const char *dir, char *err, size_t errlen)
{
    static const char *const sub[] = { "", "/tmp", "/new", "/cur" };
    char path[CONFIG_PATH_MAX + 16];
    for (size_t i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s%s", dir, sub[i]);
        if (mkdir(path, 0700) && errno != EEXIST) {
            snprintf(err, errlen, "maildir: cannot create %s: %s", path, strerror(errno));
            return -1;
        }
    }
    return 0;
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
    char tmp[CONFIG_PATH_MAX + 300], dst[CONFIG_PATH_MAX + 300], newdir[CONFIG_PATH_MAX + 16];
    snprintf(tmp, sizeof tmp, "%s/tmp/%s", dir, name);
    snprintf(dst, sizeof dst, "%s/new/%s", dir, name);
    snprintf(newdir, sizeof newdir, "%s/new", dir);
    char *file = malloc(hlen + blen + 1);
    if (!file)
        return -1;
    size_t flen = unwire(hdr ? hdr : "", hdr ? hlen : 0, file);
    flen += unwire(body, blen, file + flen);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    int rc = -1;
    if (fd >= 0) {
        if (write_all(fd, file, flen) == 0 && fsync(fd) == 0) {
            rc = close(fd);
            fd = -1;
            if (rc == 0)
                rc = rename(tmp, dst);
        }
        if (fd >= 0)
            close(fd);
        if (rc)
            unlink(tmp);
    }
    free(file);
    if (rc == 0) {
        int d = open(newdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        rc = d >= 0 ? fsync(d) : -1;
        if (d >= 0)
            close(d);
    }
    if (rc)
        log_line(LOG_ERROR, "event=maildir_error path=%s error=\"%s\"", dst, strerror(errno));
    return rc;
}

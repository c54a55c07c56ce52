/*
 * queue.c - `mxgate queue` (see queue.h).
 */
#include "queue.h"

#include "spool.h"
#include "spoolq.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

typedef struct segfile {
    char *name;
    char *map;
    uint64_t len;
    spool_seg_t head;
    bool valid;
} segfile_t;

typedef struct spooldir {
    const char *dir;
    segfile_t *seg;
    uint32_t nseg;
    spoolq_t q;
} spooldir_t;

/* The order the gateway replays them in (spool.h). */
static int by_creation(const void *a, const void *b)
{
    const segfile_t *x = a, *y = b;
    return spool_seg_order(&x->head, x->name, &y->head, y->name);
}

static bool is_seg(const char *n)
{
    size_t l = strlen(n);
    return l > 4 && !strcmp(n + l - 4, ".seg") && n[0] != '.';
}

/* A segment file opened (flags: O_RDONLY or O_WRONLY) with its size;
 * -1, said on stderr, when it cannot be. */
static int open_seg(const spooldir_t *sd, const segfile_t *s, int flags, uint64_t *size)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", sd->dir, s->name);
    int fd = open(path, flags | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        fprintf(stderr, "mxgate queue: %s: %s\n", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    *size = (uint64_t)st.st_size;
    return fd;
}

/* Every segment mapped and every record fed to the queue. */
static int load(spooldir_t *sd)
{
    DIR *d = opendir(sd->dir);
    if (!d) {
        fprintf(stderr, "mxgate queue: %s: %s\n", sd->dir, strerror(errno));
        return 1;
    }
    struct dirent *e;
    uint32_t cap = 0;
    while ((e = readdir(d))) {
        if (!is_seg(e->d_name))
            continue;
        if (sd->nseg == cap) {
            cap = cap ? cap * 2 : 16;
            segfile_t *n = realloc(sd->seg, cap * sizeof *n);
            if (!n) {
                closedir(d);
                fprintf(stderr, "mxgate queue: out of memory\n");
                return 1;
            }
            sd->seg = n;
        }
        sd->seg[sd->nseg++] = (segfile_t){ .name = strdup(e->d_name) };
    }
    closedir(d);
    spoolq_init(&sd->q);
    for (uint32_t i = 0; i < sd->nseg; i++) {
        segfile_t *s = &sd->seg[i];
        int fd = open_seg(sd, s, O_RDONLY, &s->len);
        if (fd < 0)
            continue;
        if (s->len) {
            s->map = mmap(NULL, s->len, PROT_READ, MAP_PRIVATE, fd, 0);
            if (s->map == MAP_FAILED) {
                s->map = NULL;
                fprintf(stderr, "mxgate queue: %s: %s\n", s->name, strerror(errno));
            }
        }
        close(fd);
        spool_scanner_t sc;
        if (!s->map || !spool_scan_init(&sc, s->map, s->len)) {
            fprintf(stderr, "mxgate queue: %s: not a spool segment (no header that checks out); skipped\n", s->name);
            continue;
        }
        s->valid = true;
        s->head = sc.seg;
    }
    if (sd->nseg)
        qsort(sd->seg, sd->nseg, sizeof *sd->seg, by_creation);
    for (uint32_t i = 0; i < sd->nseg; i++) {
        segfile_t *s = &sd->seg[i];
        spool_scanner_t sc;
        if (!s->valid || !spool_scan_init(&sc, s->map, s->len))
            continue;
        for (;;) {
            spool_rec_t r;
            uint64_t at = 0, skipped = 0;
            enum spool_scan st2 = spool_scan_next(&sc, &r, &at, &skipped);
            if (st2 == SPOOL_END)
                break;
            if (st2 == SPOOL_TORN || st2 == SPOOL_SKIPPED) {
                fprintf(stderr, "mxgate queue: %s: %" PRIu64 " octets at %" PRIu64 " are no record (%s); skipped\n",
                        s->name, skipped, at, st2 == SPOOL_TORN ? "a torn tail" : "damaged");
                if (st2 == SPOOL_TORN)
                    break;
                continue;
            }
            if (!spoolq_add(&sd->q, i, &r)) {
                fprintf(stderr, "mxgate queue: out of memory\n");
                return 1;
            }
        }
    }
    return 0;
}

static void unload(spooldir_t *sd)
{
    for (uint32_t i = 0; i < sd->nseg; i++) {
        if (sd->seg[i].map)
            munmap(sd->seg[i].map, sd->seg[i].len);
        free(sd->seg[i].name);
    }
    free(sd->seg);
    spoolq_free(&sd->q);
}

/* A message's record again. */
static bool record(const spooldir_t *sd, const spoolq_msg_t *m, spool_rec_t *r)
{
    const segfile_t *s = &sd->seg[m->seg];
    spool_scanner_t sc;
    if (!spool_scan_init(&sc, s->map, s->len))
        return false;
    sc.pos = m->offset;
    uint64_t at, skipped;
    return spool_scan_next(&sc, r, &at, &skipped) == SPOOL_OK && r->type == SPOOL_MSG;
}

/* Octets a disk or a client chose, shown so that they cannot make lines or
 * break JSON: control octets, backslash and quote escaped. */
static void show(FILE *f, slice_t s, bool json)
{
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            fprintf(f, json ? "\\u%04x" : "\\x%02x", c);
        else
            fputc(c, f);
    }
}

static void when(char *out, size_t cap, uint64_t ms)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

void queue_print(FILE *f, bool json, bool first, const queue_item_t *it)
{
    char id[28], arr[32], next[32];
    spool_id_format(it->id, id);
    when(arr, sizeof arr, it->arrival_ms);
    when(next, sizeof next, it->next_ms);
    const spool_msg_t *msg = &it->rec->msg;
    if (json) {
        fprintf(f, "%s\n{\"id\":\"%s\",\"segment\":\"", first ? "" : ",", id);
        show(f, slice_make(it->where, strlen(it->where)), true);
        fprintf(f, "\",\"arrival\":\"%s\",\"size\":%u,\"held\":%s,\"sender\":\"", arr, it->size,
                it->held ? "true" : "false");
        show(f, msg->sender, true);
        fprintf(f, "\",\"recipients\":[");
    } else {
        fprintf(f, "%-27s %9u %s%s  <", id, it->size, arr, it->held ? " (held)" : "");
        show(f, msg->sender, false);
        fprintf(f, ">\n");
    }
    uint32_t cur = 0;
    slice_t rc;
    for (uint16_t k = 0; k < it->nrcpt && spool_rcpt_next(msg, &cur, &rc); k++) {
        if (json) {
            fprintf(f, "%s{\"address\":\"", k ? "," : "");
            show(f, rc, true);
            fprintf(f, "\",\"done\":%u}", it->codes[k]);
        } else {
            fprintf(f, "    <");
            show(f, rc, false);
            if (it->codes[k])
                fprintf(f, ">  done %u\n", it->codes[k]);
            else
                fprintf(f, ">\n");
        }
    }
    slice_t last = slice_make(it->last_text, strlen(it->last_text));
    bool due = it->attempts && !it->held;
    if (json) {
        fprintf(f, "],\"attempts\":%u,\"next_try\":\"%s\",\"last_reply\":\"", it->attempts, due ? next : "");
        if (it->attempts) {
            fprintf(f, "%u ", it->last_code);
            show(f, last, true);
        }
        fprintf(f, "\"}");
    } else if (it->attempts) {
        fprintf(f, "    attempts %u, %s%s, last \"%u ", it->attempts, due ? "next " : "held", due ? next : "",
                it->last_code);
        show(f, last, false);
        fprintf(f, "\"\n");
    }
}

void queue_footer(FILE *f, bool json, uint32_t shown, uint64_t octets, uint64_t oldest)
{
    if (json) {
        fprintf(f, "%s]\n", shown ? "\n" : "");
    } else if (shown) {
        char old[32];
        when(old, sizeof old, oldest);
        fprintf(f, "-- %u message%s, %" PRIu64 " octets in the spool, oldest from %s\n", shown,
                shown == 1 ? "" : "s", octets, old);
    } else {
        fprintf(f, "-- the queue is empty\n");
    }
}

static int list(spooldir_t *sd, bool json)
{
    uint32_t shown = 0;
    uint64_t oldest = 0;
    if (json)
        printf("[");
    for (uint32_t i = 0; i < sd->q.n; i++) {
        const spoolq_msg_t *m = &sd->q.msg[i];
        if (m->done)
            continue;
        spool_rec_t r;
        if (!record(sd, m, &r))
            continue;
        if (!oldest || m->arrival_ms < oldest)
            oldest = m->arrival_ms;
        queue_item_t it = { m->id, sd->seg[m->seg].name, m->arrival_ms, m->body_len, &r, m->codes, m->nrcpt,
                            m->attempts, m->next_ms, m->last_code, m->last_text, m->next_ms == SPOOL_HELD };
        queue_print(stdout, json, shown == 0, &it);
        shown++;
    }
    queue_footer(stdout, json, shown, sd->q.pending_octets, oldest);
    return 0;
}

/* The directory's lock: shared to read (several lists at once), exclusive
 * to change; -2 when a running gateway holds it. */
static int lock_dir(const char *dir, bool shared)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "mxgate queue: %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (flock(fd, (shared ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0) {
        int e = errno;
        close(fd);
        if (e == EWOULDBLOCK)
            return -2; /* a running gateway holds it */
        fprintf(stderr, "mxgate queue: %s: %s\n", path, strerror(e));
        return -1;
    }
    return fd;
}

/* A record about m (DONE, or TRY with its next attempt: SPOOL_HELD holds
 * it, 0 makes it due), appended to its segment (aligned after whatever is
 * there, a torn tail included) and fsynced. */
static bool append(const spooldir_t *sd, const spoolq_msg_t *m, enum spool_type type, uint64_t next_ms)
{
    const segfile_t *s = &sd->seg[m->seg];
    uint64_t size;
    int fd = open_seg(sd, s, O_WRONLY, &size);
    if (fd < 0)
        return false;
    uint64_t at = (size + SPOOL_ALIGN - 1) & ~(uint64_t)(SPOOL_ALIGN - 1);
    static char rec[SPOOL_ALIGN + SPOOL_SMALL_MAX];
    size_t pad = (size_t)(at - size);
    memset(rec, 0, pad);
    size_t n = type == SPOOL_DONE ? spool_put_done(rec + pad, s->head.nonce, at, m->id)
                                  : spool_put_try(rec + pad, s->head.nonce, at, m->id, m->attempts, next_ms,
                                                  m->last_code, slice_make(m->last_text, strlen(m->last_text)));
    bool ok = pwrite(fd, rec, pad + n, (off_t)size) == (ssize_t)(pad + n) && fsync(fd) == 0;
    if (!ok)
        fprintf(stderr, "mxgate queue: %s: %s\n", s->name, strerror(errno));
    close(fd);
    return ok;
}

/* delete, hold, release or flush, offline: one record per message named. */
static int change(spooldir_t *sd, const char *cmd, const char *what)
{
    bool all = !what || !strcmp(what, "ALL");
    spool_id_t id = { 0, 0 };
    if (!all && !spool_id_parse(what, &id)) {
        fprintf(stderr, "mxgate queue: %s: not a message id (like 8f3a2b1c4d5e6f70-1) or ALL\n", what);
        return 2;
    }
    bool del = !strcmp(cmd, "delete"), hold = !strcmp(cmd, "hold"), release = !strcmp(cmd, "release");
    const char *done = del ? "deleted" : hold ? "held" : release ? "released" : "flushed";
    int rc = 0;
    uint32_t n = 0, named = 0;
    for (uint32_t i = 0; i < sd->q.n; i++) {
        spoolq_msg_t *m = &sd->q.msg[i];
        if (m->done || (!all && !spool_id_eq(m->id, id)))
            continue;
        named++;
        bool held = m->next_ms == SPOOL_HELD;
        if ((hold && held) || (release && !held) || (!del && !hold && !release && held))
            continue; /* nothing to change (flush leaves held messages held) */
        char s[28];
        spool_id_format(m->id, s);
        if (!append(sd, m, del ? SPOOL_DONE : SPOOL_TRY, hold ? SPOOL_HELD : 0)) {
            rc = 1;
            continue;
        }
        printf("%s: %s\n", s, done);
        n++;
    }
    if (!all && !named && !rc) {
        fprintf(stderr, "mxgate queue: %s: no such message in the queue\n", what);
        rc = 1;
    }
    if (all)
        printf("-- %u message%s %s\n", n, n == 1 ? "" : "s", done);
    return rc;
}

/* A running gateway holds the directory: the command goes to it through
 * DIR/control, a Unix socket only the directory's owner can reach. */
static int ask_gateway(const char *dir, const char *cmd, const char *what, bool json)
{
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int fd = dfd >= 0 ? socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0) : -1;
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof sa.sun_path, "/proc/self/fd/%d/control", dfd); /* any length of DIR */
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        fprintf(stderr, "mxgate queue: %s is in use by a running mxgate (its lock is held), and its control socket "
                "does not answer: %s\n", dir, strerror(errno));
        if (fd >= 0)
            close(fd);
        if (dfd >= 0)
            close(dfd);
        return 1;
    }
    close(dfd);
    char req[256];
    int k = snprintf(req, sizeof req, "%s %s%s\n", cmd, what ? what : "ALL", json ? " json" : "");
    if (k <= 0 || (size_t)k >= sizeof req || write(fd, req, (size_t)k) != k) {
        fprintf(stderr, "mxgate queue: control socket: %s\n", strerror(errno));
        close(fd);
        return 1;
    }
    shutdown(fd, SHUT_WR);
    /* the answer: "ok" or "error: why" on its first line, then the output */
    char buf[65536];
    bool first = true, ok = false;
    size_t have = 0;
    ssize_t r;
    while ((r = read(fd, buf + have, sizeof buf - have)) > 0) {
        have += (size_t)r;
        if (first) {
            char *nl = memchr(buf, '\n', have);
            if (!nl && have < sizeof buf)
                continue;
            first = false;
            size_t line = nl ? (size_t)(nl - buf) : have;
            ok = line == 2 && !memcmp(buf, "ok", 2);
            if (!ok)
                fprintf(stderr, "mxgate queue: %.*s\n", (int)line, buf);
            size_t rest = nl ? have - line - 1 : 0;
            memmove(buf, buf + have - rest, rest);
            have = rest;
        }
        fwrite(buf, 1, have, stdout);
        have = 0;
    }
    close(fd);
    if (first) {
        fprintf(stderr, "mxgate queue: the gateway closed the control socket without an answer\n");
        return 1;
    }
    return ok ? 0 : 1;
}

static int usage(void)
{
    fprintf(stderr, "usage: mxgate queue list --spool-dir DIR [--json]\n"
                    "       mxgate queue delete|hold|release ID|ALL --spool-dir DIR\n"
                    "       mxgate queue flush [ID|ALL] --spool-dir DIR\n");
    return 2;
}

static bool known(const char *cmd)
{
    static const char *const cmds[] = { "list", "delete", "hold", "release", "flush" };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(cmd, cmds[i]))
            return true;
    return false;
}

int queue_main(int argc, char **argv)
{
    const char *dir = NULL, *cmd = NULL, *target = NULL;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--spool-dir") && i + 1 < argc)
            dir = argv[++i];
        else if (!strncmp(argv[i], "--spool-dir=", 12))
            dir = argv[i] + 12;
        else if (!strcmp(argv[i], "--json"))
            json = true;
        else if (!cmd && argv[i][0] != '-')
            cmd = argv[i];
        else if (cmd && !target && argv[i][0] != '-' && strcmp(cmd, "list"))
            target = argv[i];
        else
            return usage();
    }
    bool list_cmd = cmd && !strcmp(cmd, "list"), flush = cmd && !strcmp(cmd, "flush");
    if (!cmd || !dir || !known(cmd) || (!list_cmd && !flush && !target) || (json && !list_cmd))
        return usage();
    if (target && strcmp(target, "ALL")) {
        spool_id_t id;
        if (!spool_id_parse(target, &id)) {
            fprintf(stderr, "mxgate queue: %s: not a message id (like 8f3a2b1c4d5e6f70-1) or ALL\n", target);
            return 2;
        }
    }
    /* The directory's lock says whether a gateway runs on it: if so, it
     * is asked; otherwise the segments are read (and changed) here. */
    int lock = lock_dir(dir, list_cmd);
    if (lock == -2)
        return ask_gateway(dir, cmd, target, json);
    if (lock < 0)
        return 1;
    spooldir_t sd = { .dir = dir };
    int rc = load(&sd);
    if (!rc)
        rc = list_cmd ? list(&sd, json) : change(&sd, cmd, target);
    unload(&sd);
    close(lock);
    return rc;
}

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
#include <sys/stat.h>
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

static int by_name(const void *a, const void *b)
{
    return strcmp(((const segfile_t *)a)->name, ((const segfile_t *)b)->name);
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
    if (sd->nseg)
        qsort(sd->seg, sd->nseg, sizeof *sd->seg, by_name);
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
        char id[28], arr[32], next[32];
        spool_id_format(m->id, id);
        when(arr, sizeof arr, m->arrival_ms);
        when(next, sizeof next, m->next_ms);
        if (!oldest || m->arrival_ms < oldest)
            oldest = m->arrival_ms;
        if (json) {
            printf("%s\n{\"id\":\"%s\",\"segment\":\"", shown ? "," : "", id);
            show(stdout, slice_make(sd->seg[m->seg].name, strlen(sd->seg[m->seg].name)), true);
            printf("\",\"arrival\":\"%s\",\"size\":%u,\"sender\":\"", arr, m->body_len);
            show(stdout, r.msg.sender, true);
            printf("\",\"recipients\":[");
        } else {
            printf("%-27s %9u %s  <", id, m->body_len, arr);
            show(stdout, r.msg.sender, false);
            printf(">\n");
        }
        uint32_t cur = 0;
        slice_t rc;
        for (uint16_t k = 0; k < m->nrcpt && spool_rcpt_next(&r.msg, &cur, &rc); k++) {
            if (json) {
                printf("%s{\"address\":\"", k ? "," : "");
                show(stdout, rc, true);
                printf("\",\"done\":%u}", m->codes[k]);
            } else {
                printf("    <");
                show(stdout, rc, false);
                if (m->codes[k])
                    printf(">  done %u\n", m->codes[k]);
                else
                    printf(">\n");
            }
        }
        slice_t last = slice_make(m->last_text, strlen(m->last_text));
        if (json) {
            printf("],\"attempts\":%u,\"next_try\":\"%s\",\"last_reply\":\"", m->attempts, m->attempts ? next : "");
            if (m->attempts) {
                printf("%u ", m->last_code);
                show(stdout, last, true);
            }
            printf("\"}");
        } else if (m->attempts) {
            printf("    attempts %u, next %s, last \"%u ", m->attempts, next, m->last_code);
            show(stdout, last, false);
            printf("\"\n");
        }
        shown++;
    }
    if (json) {
        printf("%s]\n", shown ? "\n" : "");
    } else if (shown) {
        char old[32];
        when(old, sizeof old, oldest);
        printf("-- %u message%s, %" PRIu64 " octets in the spool, oldest from %s\n", shown, shown == 1 ? "" : "s",
               sd->q.pending_octets, old);
    } else {
        printf("-- the queue is empty\n");
    }
    return 0;
}

static int lock_dir(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "mxgate queue: %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        fprintf(stderr, "mxgate queue: %s is in use by a running mxgate (its lock is held); stop it first\n", dir);
        close(fd);
        return -1;
    }
    return fd;
}

/* A DONE record for m, appended to its segment (aligned after whatever is
 * there, a torn tail included) and fsynced. */
static bool mark_done(const spooldir_t *sd, const spoolq_msg_t *m)
{
    const segfile_t *s = &sd->seg[m->seg];
    uint64_t size;
    int fd = open_seg(sd, s, O_WRONLY, &size);
    if (fd < 0)
        return false;
    uint64_t at = (size + SPOOL_ALIGN - 1) & ~(uint64_t)(SPOOL_ALIGN - 1);
    char rec[SPOOL_ALIGN + 64];
    size_t pad = (size_t)(at - size);
    memset(rec, 0, pad);
    size_t n = spool_put_done(rec + pad, s->head.nonce, at, m->id);
    bool ok = pwrite(fd, rec, pad + n, (off_t)size) == (ssize_t)(pad + n) && fsync(fd) == 0;
    if (!ok)
        fprintf(stderr, "mxgate queue: %s: %s\n", s->name, strerror(errno));
    close(fd);
    return ok;
}

static int delete(spooldir_t *sd, const char *what)
{
    bool all = !strcmp(what, "ALL");
    spool_id_t id = { 0, 0 };
    if (!all && !spool_id_parse(what, &id)) {
        fprintf(stderr, "mxgate queue: %s: not a message id (like 8f3a2b1c4d5e6f70-1) or ALL\n", what);
        return 2;
    }
    int lock = lock_dir(sd->dir);
    if (lock < 0)
        return 1;
    int rc = 0;
    uint32_t n = 0;
    for (uint32_t i = 0; i < sd->q.n; i++) {
        spoolq_msg_t *m = &sd->q.msg[i];
        if (m->done || (!all && !spool_id_eq(m->id, id)))
            continue;
        char s[28];
        spool_id_format(m->id, s);
        if (!mark_done(sd, m)) {
            rc = 1;
            continue;
        }
        printf("%s: deleted\n", s);
        n++;
    }
    if (!all && !n && !rc) {
        fprintf(stderr, "mxgate queue: %s: no such message in the queue\n", what);
        rc = 1;
    }
    if (all)
        printf("-- %u message%s deleted\n", n, n == 1 ? "" : "s");
    close(lock);
    return rc;
}

static int usage(void)
{
    fprintf(stderr, "usage: mxgate queue list --spool-dir DIR [--json]\n"
                    "       mxgate queue delete ID|ALL --spool-dir DIR\n");
    return 2;
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
        else if (cmd && !target && argv[i][0] != '-' && !strcmp(cmd, "delete"))
            target = argv[i];
        else
            return usage();
    }
    if (!cmd || !dir || (strcmp(cmd, "list") && strcmp(cmd, "delete")) || (!strcmp(cmd, "delete") && !target) ||
        (json && strcmp(cmd, "list")))
        return usage();
    spooldir_t sd = { .dir = dir };
    int rc = load(&sd);
    if (!rc)
        rc = !strcmp(cmd, "list") ? list(&sd, json) : delete(&sd, target);
    unload(&sd);
    return rc;
}

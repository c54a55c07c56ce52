/*
 * spooler.c - a worker's part of the spool (see spooler.h).
 *
 * Records are built wherever they are made (a transaction's buffer for a
 * message, the batch's small-record buffer for the rest) with their type and
 * length, and sealed with spool_reseal() when the batch they belong to is
 * given its place in the segment: offsets are known only then, one batch per
 * loop turn, so nothing is ever predicted or sealed twice.
 *
 * Times in records are the wall clock (Unix ms: they must mean something
 * after a restart); the worker's own clock is monotonic, so the spooler
 * keeps the difference, taken once at start-up.
 */
#include "spooler.h"

#include "dsn.h"
#include "grow.h"
#include "lend.h"
#include "log.h"
#include "pool.h"
#include "queue.h"
#include "spoolq.h"
#include "worker.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define SEG_MAX (64ull << 20)       /* a segment past this is followed by a new one */
#define MEM_BUDGET (64ull << 20)    /* record octets a worker keeps in memory for delivery */
#define RETRY_FIRST_S 30u           /* the first retry of a message's own temporary failure */
#define SWEEP_MS 1000u              /* deferred messages are looked at this often */
#define FREE_CHECK_MS 1000u         /* statvfs at most this often */
#define IOV_PER_WRITE 256u          /* iovecs per writev */
#define SMALL_FIRST 4096u
#define TEXT_MAX 200u               /* reply text kept per recipient for a bounce */
#define TOK_MAIL 0x10000u           /* tokens: a recipient's is its index */
#define TOK_DATA 0x10001u
#define TOK_EOD 0x10002u
#define NONE UINT32_MAX

/* ---- state ---- */

typedef struct seg {
    uint32_t seq;
    int fd;
    uint64_t nonce, created_ms;
    uint64_t size;   /* where the next record goes */
    uint32_t live;   /* messages in it not done */
    uint32_t writes; /* batches in flight to it */
    bool fresh;      /* its header is not written yet */
    bool retired;    /* no more appends (full, failed, or another run's) */
    char name[48];
} seg_t;

enum estate { E_FREE = 0, E_COMMIT, E_WAIT, E_READY, E_ACTIVE };

typedef struct entry {
    spool_id_t id;
    uint8_t state;   /* enum estate */
    bool owned;      /* an owner waits for the commit */
    bool held;       /* mxgate queue hold: not delivered, not expired, until released */
    bool broken;     /* its record cannot be read back: left alone */
    bool kill;       /* deleted while being delivered: done when the attempt ends */
    bool hold_after; /* held while being delivered: held when the attempt ends */
    spool_owner_t owner;
    uint32_t seq;    /* its segment */
    uint64_t offset;
    uint32_t size;   /* the record's octets, padding included */
    char *buf;       /* the record, or NULL: read back from the segment */
    uint64_t arrival_ms, next_ms; /* wall clock */
    uint32_t attempts;
    uint16_t nrcpt, left;
    uint16_t *codes; /* per recipient: 0 pending, else its final code */
    uint16_t last_code;
    char last[TEXT_MAX + 1];
    uint32_t next;   /* the ready FIFO, or the free list */
} entry_t;

/* A piece of a batch: a whole record. */
typedef struct piece {
    char *rec;       /* a message's buffer, or NULL: small at small_off */
    uint32_t small_off;
    uint32_t size;
    uint32_t entry;  /* the message's entry, or NONE */
} piece_t;

typedef struct batch {
    piece_t *p;
    uint32_t n, cap;
    char *small;
    uint32_t small_len, small_cap;
    /* in flight */
    uint32_t seq;
    char seghead[SPOOL_SEG_HEAD];
    struct iovec *iov;
    uint32_t iov_cap;
    uint64_t *expect; /* per write SQE, its octets */
    uint32_t nexpect;
    uint32_t ops_left;
    bool failed;
    int err;
} batch_t;

enum dl_lease { DL_FREE = 0, DL_WAIT, DL_READY, DL_DONE };

typedef struct delivery {
    uint32_t gen;
    uint8_t lstate;      /* enum dl_lease */
    uint32_t entry;
    pool_lease_t lease;
    char *loaded;        /* the record read back for this attempt (the entry kept none) */
    spool_rec_t rec;
    bool counted;        /* the server answered: the attempt counts */
    uint16_t mail_code, data_code, eod_code;
    uint16_t *code;      /* per recipient: this attempt's RCPT reply code (0: not sent) */
    char (*text)[TEXT_MAX + 1]; /* and its text ("550 5.1.1 ..."), or the message's when refused later */
    uint32_t cap;        /* recipients code and text hold: kept from attempt to attempt */
    uint64_t body_sent;
    bool eod_sent;
    char final[TEXT_MAX + 1]; /* MAIL, DATA or end-of-data refusal text */
} delivery_t;

struct spooler {
    spool_shared_t *sh;
    int dirfd;
    seg_t *seg;
    uint32_t nseg, seg_cap;
    uint32_t seq_next;
    batch_t b[2];
    batch_t *fill, *fly;
    entry_t *e;
    uint32_t ne, e_cap, free_head;
    uint32_t ready_head, ready_tail;
    uint32_t pending;    /* messages not done */
    uint64_t bytes;      /* their octets (this worker's share of sh->bytes) */
    uint64_t mem;        /* record octets kept in memory */
    delivery_t *dl;
    uint32_t ndl, active;
    uint32_t serial;     /* attempts begun: owner handles carry it */
    bool blocked;        /* the downstream cannot be reached: wait for the pool */
    bool kick;           /* look for work at the end of the turn */
    int64_t wall_off;    /* wall clock ms minus the worker's monotonic ms */
    timer_node_t sweep;
    uint64_t free_checked;
    bool low_space;
};

static const pool_owner_ops_t dl_ops;

static uint64_t wall(const worker_t *w)
{
    return (uint64_t)((int64_t)w->now + w->spool->wall_off);
}

static uint64_t realtime_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void gauges(worker_t *w)
{
    spooler_t *sp = w->spool;
    m_set(&w->m.spool_messages, sp->pending);
    m_set(&w->m.spool_bytes, sp->bytes);
}

/* ---- the directory ---- */

int spool_dir_open(const char *dir, uid_t uid, gid_t gid, bool *made, char *err, size_t errlen)
{
    *made = mkdir(dir, 0700) == 0;
    if (!*made && errno != EEXIST) {
        snprintf(err, errlen, "spool_dir: cannot create %s: %s", dir, strerror(errno));
        return -1;
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "spool_dir: cannot open %s: %s", dir, strerror(errno));
        return -1;
    }
    if (*made && uid != (uid_t)-1 && fchown(fd, uid, gid) != 0) {
        snprintf(err, errlen, "spool_dir: cannot give %s to uid %u: %s", dir, (unsigned)uid, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

int spool_shared_open(spool_shared_t *sh, const char *dir, uid_t uid, gid_t gid, uint32_t workers, char *err,
                      size_t errlen)
{
    memset(sh, 0, sizeof *sh);
    sh->dirfd = sh->lockfd = -1;
    sh->workers = workers;
    bool made;
    sh->dirfd = spool_dir_open(dir, uid, gid, &made, err, errlen);
    if (sh->dirfd < 0)
        return -1;
    sh->lockfd = openat(sh->dirfd, "lock", O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (sh->lockfd < 0) {
        snprintf(err, errlen, "spool_dir: cannot open %s/lock: %s", dir, strerror(errno));
        return -1;
    }
    if (flock(sh->lockfd, LOCK_EX | LOCK_NB) != 0) {
        snprintf(err, errlen, "spool_dir: %s is in use by another mxgate (its lock is held)", dir);
        return -1;
    }
    if (made)
        fsync(sh->dirfd);
    return 0;
}

void spool_shared_close(spool_shared_t *sh)
{
    if (sh->lockfd >= 0)
        close(sh->lockfd);
    if (sh->dirfd >= 0)
        close(sh->dirfd);
    sh->lockfd = sh->dirfd = -1;
}

static seg_t *seg_by_seq(spooler_t *sp, uint32_t seq)
{
    for (uint32_t i = 0; i < sp->nseg; i++)
        if (sp->seg[i].seq == seq)
            return &sp->seg[i];
    return NULL;
}

static seg_t *seg_push(spooler_t *sp)
{
    if (!grow_item((void **)&sp->seg, &sp->seg_cap, sp->nseg, sizeof *sp->seg, 8))
        return NULL;
    seg_t *s = &sp->seg[sp->nseg++];
    memset(s, 0, sizeof *s);
    s->fd = -1;
    return s;
}

/* The segment new records go to: the last one, unless it is retired or
 * full; otherwise a new file (its header goes with its first batch). */
static seg_t *seg_current(worker_t *w)
{
    spooler_t *sp = w->spool;
    seg_t *s = sp->nseg ? &sp->seg[sp->nseg - 1] : NULL;
    if (s && !s->retired && s->size < SEG_MAX)
        return s;
    if (s && !s->retired && s->writes == 0) /* full: it keeps its descriptor for reading back */
        s->retired = true;
    if (s && !s->retired)
        return s; /* full but still being written: the next turn starts the new one */
    uint64_t nonce;
    if (getrandom(&nonce, sizeof nonce, 0) != (ssize_t)sizeof nonce)
        nonce = realtime_ms() * 0x9E3779B97F4A7C15ull ^ (uint64_t)w->id;
    char name[48];
    int fd = -1;
    for (int tries = 0; fd < 0 && tries < 16; tries++) {
        snprintf(name, sizeof name, "w%d-%08u.seg", w->id, sp->seq_next);
        fd = openat(sp->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0 && errno != EEXIST)
            break;
        if (fd < 0)
            sp->seq_next++; /* someone else's file by that name: the next one */
    }
    if (fd < 0) {
        log_line(LOG_ERROR, "event=spool_segment_failed worker=%d segment=%s error=\"%s\"", w->id, name,
                 strerror(errno));
        return NULL;
    }
    if (!(s = seg_push(sp))) {
        close(fd);
        unlinkat(sp->dirfd, name, 0);
        return NULL;
    }
    s->seq = sp->seq_next++;
    s->fd = fd;
    s->nonce = nonce;
    s->created_ms = wall(w);
    s->size = SPOOL_SEG_HEAD;
    s->fresh = true;
    snprintf(s->name, sizeof s->name, "%s", name);
    return s;
}

/* Segments whose messages are all done go, oldest first, and only while
 * every older one has gone: a later segment may hold a record about a
 * message of an earlier one, never the other way round. */
static void seg_remove_done(worker_t *w)
{
    spooler_t *sp = w->spool;
    uint32_t k = 0;
    while (k < sp->nseg && k + 1 < sp->nseg && sp->seg[k].live == 0 && sp->seg[k].writes == 0) {
        seg_t *s = &sp->seg[k];
        if (unlinkat(sp->dirfd, s->name, 0) != 0 && errno != ENOENT)
            log_line(LOG_WARN, "event=spool_unlink_failed worker=%d segment=%s error=\"%s\"", w->id, s->name,
                     strerror(errno));
        close(s->fd);
        k++;
    }
    if (!k)
        return;
    fsync(sp->dirfd); /* rare: once per SEG_MAX of mail */
    memmove(sp->seg, sp->seg + k, (sp->nseg - k) * sizeof *sp->seg);
    sp->nseg -= k;
}

/* ---- entries ---- */

static uint32_t entry_new(spooler_t *sp)
{
    uint32_t i = sp->free_head;
    if (i != NONE) {
        sp->free_head = sp->e[i].next;
    } else {
        if (!grow_item((void **)&sp->e, &sp->e_cap, sp->ne, sizeof *sp->e, 256))
            return NONE;
        i = sp->ne++;
    }
    memset(&sp->e[i], 0, sizeof sp->e[i]);
    sp->e[i].next = NONE;
    return i;
}

static void entry_forget_buf(spooler_t *sp, entry_t *e)
{
    if (e->buf) {
        sp->mem -= e->size;
        free(e->buf);
        e->buf = NULL;
    }
}

static void entry_free(worker_t *w, uint32_t i)
{
    spooler_t *sp = w->spool;
    entry_t *e = &sp->e[i];
    seg_t *s = e->seq != NONE ? seg_by_seq(sp, e->seq) : NULL;
    if (s && s->live)
        s->live--;
    entry_forget_buf(sp, e);
    free(e->codes);
    sp->pending--;
    sp->bytes -= e->size;
    atomic_fetch_sub_explicit(&sp->sh->bytes, e->size, memory_order_relaxed);
    e->state = E_FREE;
    e->next = sp->free_head;
    sp->free_head = i;
}

static void ready_push(spooler_t *sp, uint32_t i, bool front)
{
    entry_t *e = &sp->e[i];
    e->state = E_READY;
    e->next = NONE;
    if (sp->ready_head == NONE) {
        sp->ready_head = sp->ready_tail = i;
    } else if (front) {
        e->next = sp->ready_head;
        sp->ready_head = i;
    } else {
        sp->e[sp->ready_tail].next = i;
        sp->ready_tail = i;
    }
    sp->kick = true;
}

static uint32_t ready_pop(spooler_t *sp)
{
    uint32_t i = sp->ready_head;
    if (i == NONE)
        return NONE;
    sp->ready_head = sp->e[i].next;
    if (sp->ready_head == NONE)
        sp->ready_tail = NONE;
    sp->e[i].next = NONE;
    return i;
}

/* ---- batches ---- */

static bool piece_add(batch_t *b, char *rec, uint32_t small_off, uint32_t size, uint32_t entry)
{
    if (!grow_item((void **)&b->p, &b->cap, b->n, sizeof *b->p, 64))
        return false;
    b->p[b->n++] = (piece_t){ rec, small_off, size, entry };
    return true;
}

/* A small record (RCPT, TRY, DONE): made now, sealed when written. */
enum small_kind { SK_RCPT, SK_TRY, SK_DONE };

static void put_small(worker_t *w, enum small_kind k, spool_id_t id, uint16_t index, uint16_t code, uint32_t attempts,
                      uint64_t next_ms, slice_t text)
{
    batch_t *b = w->spool->fill;
    if (text.len > TEXT_MAX)
        text.len = TEXT_MAX;
    size_t need = SPOOL_HEAD + 64 + text.len;
    if (b->small_len + need > b->small_cap) {
        uint32_t cap = b->small_cap ? b->small_cap : SMALL_FIRST;
        while (cap < b->small_len + need)
            cap *= 2;
        char *n = realloc(b->small, cap);
        if (!n)
            goto lost;
        b->small = n;
        b->small_cap = cap;
    }
    char *out = b->small + b->small_len;
    size_t size = k == SK_RCPT  ? spool_put_rcpt(out, 0, 0, id, index, code)
                  : k == SK_TRY ? spool_put_try(out, 0, 0, id, attempts, next_ms, code, text)
                                : spool_put_done(out, 0, 0, id);
    if (!size || !piece_add(b, NULL, b->small_len, (uint32_t)size, NONE))
        goto lost;
    b->small_len += (uint32_t)size;
    w->spool->kick = true;
    return;
lost:
    /* Without the record a restart delivers the message again: a duplicate, never a loss. */
    log_line(LOG_WARN, "event=spool_record_dropped worker=%d reason=out_of_memory", w->id);
}

static void batch_reset(batch_t *b)
{
    b->n = 0;
    b->small_len = 0;
    b->nexpect = 0;
    b->ops_left = 0;
    b->failed = false;
    b->err = 0;
}

static bool batch_room(batch_t *b, uint32_t niov)
{
    if (niov > b->iov_cap) {
        struct iovec *n = realloc(b->iov, niov * sizeof *n);
        uint64_t *x = realloc(b->expect, (niov / IOV_PER_WRITE + 4) * sizeof *x);
        if (n)
            b->iov = n;
        if (x)
            b->expect = x;
        if (!n || !x)
            return false;
        b->iov_cap = niov;
    }
    return true;
}

static void commit_done(worker_t *w, batch_t *b);

/* The batch gathered in this turn: sealed at its place, then one linked
 * chain of writev(s), fdatasync, and the directory's fsync for a new file. */
static void batch_submit(worker_t *w)
{
    spooler_t *sp = w->spool;
    batch_t *b = sp->fill;
    if (!b->n || sp->fly->ops_left)
        return;
    seg_t *s = seg_current(w);
    if (!s || !batch_room(b, b->n + 1)) {
        b->failed = true;
        b->err = ENOSPC;
        sp->fill = sp->fly;
        sp->fly = b;
        b->seq = NONE;
        commit_done(w, b); /* answered 451 now; the next turn tries a new segment */
        return;
    }
    uint64_t start = s->fresh ? 0 : s->size, off = s->size;
    uint32_t niov = 0;
    if (s->fresh) {
        spool_seg_t head = { s->nonce, s->created_ms, (uint32_t)w->id };
        spool_seg_head(b->seghead, &head);
        b->iov[niov++] = (struct iovec){ b->seghead, SPOOL_SEG_HEAD };
    }
    for (uint32_t i = 0; i < b->n; i++) {
        piece_t *p = &b->p[i];
        char *rec = p->rec ? p->rec : b->small + p->small_off;
        spool_reseal(rec, s->nonce, off);
        if (p->entry != NONE) {
            entry_t *e = &sp->e[p->entry];
            e->seq = s->seq;
            e->offset = off;
            s->live++;
        }
        LEND(rec, p->size);
        b->iov[niov++] = (struct iovec){ rec, p->size };
        off += p->size;
    }
    b->seq = s->seq;
    s->size = off;
    s->writes++;
    uint32_t writes = (niov + IOV_PER_WRITE - 1) / IOV_PER_WRITE;
    uint32_t nsqe = writes + 1 + (s->fresh ? 1 : 0);
    if (io_uring_sq_space_left(&w->ring) < nsqe)
        io_uring_submit(&w->ring); /* a chain must not be split across submissions */
    uint64_t at = start;
    for (uint32_t k = 0; k < writes; k++) {
        uint32_t first = k * IOV_PER_WRITE, cnt = niov - first < IOV_PER_WRITE ? niov - first : IOV_PER_WRITE;
        uint64_t len = 0;
        for (uint32_t j = 0; j < cnt; j++)
            len += b->iov[first + j].iov_len;
        struct io_uring_sqe *sqe = worker_sqe(w);
        io_uring_prep_writev(sqe, s->fd, &b->iov[first], cnt, at);
        io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK);
        io_uring_sqe_set_data64(sqe, ud_make(OP_SPOOL_IO, k, 0));
        b->expect[k] = len;
        at += len;
    }
    b->nexpect = writes;
    struct io_uring_sqe *sqe = worker_sqe(w);
    io_uring_prep_fsync(sqe, s->fd, IORING_FSYNC_DATASYNC);
    io_uring_sqe_set_data64(sqe, ud_make(OP_SPOOL_IO, NONE, 0));
    if (s->fresh) {
        io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK);
        sqe = worker_sqe(w);
        io_uring_prep_fsync(sqe, sp->dirfd, 0); /* the new file's name */
        io_uring_sqe_set_data64(sqe, ud_make(OP_SPOOL_IO, NONE, 0));
        s->fresh = false;
    }
    b->ops_left = nsqe;
    m_inc(&w->m.spool_fsyncs);
    m_add(&w->m.spool_written, off - start);
    sp->fill = sp->fly;
    sp->fly = b;
}

/* Every completion of the batch in flight is in: answer its owners. */
static void commit_done(worker_t *w, batch_t *b)
{
    spooler_t *sp = w->spool;
    seg_t *s = b->seq != NONE ? seg_by_seq(sp, b->seq) : NULL;
    if (s)
        s->writes--;
    if (b->failed && s) {
        s->retired = true; /* what follows the failure in it is unknown */
        m_inc(&w->m.spool_write_failures);
        log_line(LOG_ERROR, "event=spool_write_failed worker=%d segment=%s error=\"%s\" records=%u", w->id, s->name,
                 strerror(b->err), b->n);
    }
    for (uint32_t i = 0; i < b->n; i++) {
        piece_t *p = &b->p[i];
        char *rec = p->rec ? p->rec : b->small + p->small_off;
        if (s)
            RECLAIM(rec, p->size);
        if (p->entry == NONE)
            continue;
        uint32_t idx = p->entry;
        entry_t *e = &sp->e[idx];
        spool_owner_t o = e->owner;
        bool owned = e->owned;
        e->owned = false;
        if (b->failed) {
            entry_free(w, idx);
        } else {
            if (sp->mem > MEM_BUDGET)
                entry_forget_buf(sp, e); /* read back when its turn comes */
            ready_push(sp, idx, false);
        }
        if (owned)
            o.ops->committed(w, &o, !b->failed);
    }
    batch_reset(b);
    seg_remove_done(w);
    gauges(w);
}

void spooler_cqe(worker_t *w, int op, struct io_uring_cqe *cqe)
{
    (void)op;
    spooler_t *sp = w->spool;
    if (!sp || !sp->fly->ops_left)
        return;
    batch_t *b = sp->fly;
    uint32_t k = UD_IDX(io_uring_cqe_get_data64(cqe));
    if (cqe->res < 0) {
        if (!b->failed)
            b->err = -cqe->res;
        b->failed = true;
    } else if (k < b->nexpect && (uint64_t)cqe->res != b->expect[k]) {
        b->failed = true; /* short: the disk is full */
        if (!b->err)
            b->err = ENOSPC;
    }
    if (--b->ops_left == 0)
        commit_done(w, b);
}

/* ---- handing a message over ---- */

static uint32_t take_message(worker_t *w, char *rec, size_t size, spool_id_t id, uint64_t arrival, uint16_t nrcpt)
{
    spooler_t *sp = w->spool;
    uint32_t i = entry_new(sp);
    if (i == NONE)
        return NONE;
    entry_t *e = &sp->e[i];
    e->codes = calloc(nrcpt ? nrcpt : 1, sizeof *e->codes);
    if (!e->codes || !piece_add(sp->fill, rec, 0, (uint32_t)size, i)) {
        free(e->codes);
        e->state = E_FREE;
        e->next = sp->free_head;
        sp->free_head = i;
        return NONE;
    }
    e->state = E_COMMIT;
    e->seq = NONE; /* its segment is known when its batch is written */
    e->id = id;
    e->size = (uint32_t)size;
    e->buf = rec;
    e->arrival_ms = arrival;
    e->nrcpt = e->left = nrcpt;
    sp->mem += size;
    sp->pending++;
    sp->bytes += size;
    atomic_fetch_add_explicit(&sp->sh->bytes, size, memory_order_relaxed);
    sp->kick = true;
    return i;
}

/* Seal the envelope into the record's head; the octets, padding included. */
static size_t build_record(char *rec, size_t head_size, size_t body_len, spool_msg_t *m, const slice_t *rcpts)
{
    m->body_len = (uint32_t)body_len;
    uint32_t crc = 0; /* sealed again at its place */
    if (body_len > SPOOL_PAYLOAD_MAX || spool_msg_head_size(m, rcpts) != (int64_t)head_size ||
        !spool_msg_head(rec, m, rcpts, &crc))
        return 0;
    uint32_t pad = spool_seal(rec, head_size, crc, (uint32_t)body_len);
    memset(rec + head_size + body_len, 0, pad);
    return head_size + body_len + pad;
}

bool spooler_submit(worker_t *w, const spool_owner_t *o, char *rec, size_t head_size, size_t body_len,
                    spool_msg_t *m, const slice_t *rcpts)
{
    if (!w->spool)
        return false;
    size_t size = build_record(rec, head_size, body_len, m, rcpts);
    if (!size)
        return false;
    uint32_t i = take_message(w, rec, size, m->id, m->arrival_ms, m->nrcpt);
    if (i == NONE)
        return false;
    if (o) {
        w->spool->e[i].owner = *o;
        w->spool->e[i].owned = true;
    }
    gauges(w);
    return true;
}

bool spooler_full(worker_t *w, uint64_t size)
{
    spooler_t *sp = w->spool;
    const mx_config_t *cfg = w->cfg;
    if (!sp)
        return false;
    if (atomic_load_explicit(&sp->sh->bytes, memory_order_relaxed) + size > cfg->spool_max_bytes)
        return true;
    if (w->now - sp->free_checked >= FREE_CHECK_MS || !sp->free_checked) {
        sp->free_checked = w->now;
        struct statvfs v;
        sp->low_space = fstatvfs(sp->dirfd, &v) == 0 && (uint64_t)v.f_bavail * v.f_frsize < cfg->spool_min_free + size;
    }
    return sp->low_space;
}

/* ---- bounces ---- */

typedef struct bounce {
    uint16_t index, code;
    const char *text; /* "550 5.1.1 text" */
} bounce_t;

/* "550 5.1.1 text" into its parts. */
static void split_reply(const char *t, uint16_t *code, slice_t *status, slice_t *text)
{
    size_t n = strlen(t);
    *code = (uint16_t)(n >= 3 ? (t[0] - '0') * 100 + (t[1] - '0') * 10 + (t[2] - '0') : 0);
    const char *p = n > 3 ? t + 4 : t + n;
    const char *sp = memchr(p, ' ', (size_t)(t + n - p));
    if (sp && (p[0] == '2' || p[0] == '4' || p[0] == '5') && p[1] == '.') {
        *status = slice_make(p, (size_t)(sp - p));
        p = sp + 1;
    } else {
        *status = SLICE_NULL;
    }
    *text = slice_make(p, (size_t)(t + n - p));
}

/* Return what could not be delivered to the sender: a DSN, spooled as a
 * message of its own. Never to the null sender (a bounce of a bounce). */
static void send_dsn(worker_t *w, const spool_rec_t *r, const bounce_t *bo, uint32_t nb, bool expired)
{
    if (!nb || r->msg.sender.len == 0)
        return;
    dsn_rcpt_t *dr = calloc(nb, sizeof *dr);
    if (!dr)
        goto fail;
    slice_t rcpts[1] = { r->msg.sender };
    for (uint32_t i = 0, cur = 0, k = 0; i < r->msg.nrcpt && k < nb; i++) {
        slice_t addr;
        if (!spool_rcpt_next(&r->msg, &cur, &addr))
            break;
        for (uint32_t j = 0; j < nb; j++) {
            if (bo[j].index != i)
                continue;
            uint16_t code;
            split_reply(bo[j].text, &code, &dr[k].status, &dr[k].text);
            dr[k].addr = addr;
            dr[k].code = bo[j].code;
            k++;
        }
    }
    char qid[28];
    spool_id_format(r->id, qid);
    uint64_t boundary;
    if (getrandom(&boundary, sizeof boundary, 0) != (ssize_t)sizeof boundary)
        boundary = realtime_ms() ^ r->id.session;
    dsn_msg_t d = {
        .reporting_mta = slice_make(w->cfg->hostname, strlen(w->cfg->hostname)),
        .queue_id = slice_make(qid, strlen(qid)),
        .sender = r->msg.sender,
        .client_helo = r->msg.helo,
        .arrival_s = r->msg.arrival_ms / 1000,
        .now_s = wall(w) / 1000,
        .expired = expired,
        .rcpt = dr,
        .nrcpt = nb,
        .original = r->msg.body,
        .boundary = boundary,
    };
    spool_msg_t m = {
        .id = { worker_new_id(w), 1 },
        .arrival_ms = wall(w),
        .sender = SLICE_NULL,
        .client = SLICE_NULL, /* our own */
        .helo = slice_make(w->cfg->hostname, strlen(w->cfg->hostname)),
        .nrcpt = 1,
    };
    int64_t head = spool_msg_head_size(&m, rcpts);
    size_t max = dsn_size_max(&d);
    char *rec = head > 0 ? malloc((size_t)head + max + SPOOL_ALIGN) : NULL;
    size_t body = rec ? dsn_write(rec + head, max, &d) : 0;
    free(dr);
    if (!body) {
        free(rec);
        goto fail;
    }
    for (size_t i = 0; i < body; i++)
        if ((unsigned char)rec[head + (int64_t)i] >= 0x80) {
            m.flags = SPOOL_F_8BITMIME; /* the returned headers are 8-bit: so is the DSN (dsn.h) */
            break;
        }
    size_t size = build_record(rec, (size_t)head, body, &m, rcpts);
    if (!size || take_message(w, rec, size, m.id, m.arrival_ms, 1) == NONE) {
        free(rec);
        goto fail;
    }
    char nid[28];
    spool_id_format(m.id, nid);
    m_inc(&w->m.spool_results[MSR_DSN]);
    log_line(LOG_INFO, "event=dsn worker=%d tx=%s dsn=%s recipients=%u reason=%s", w->id, qid, nid, nb,
             expired ? "expired" : "refused");
    return;
fail:
    log_line(LOG_ERROR, "event=dsn_failed worker=%d reason=out_of_memory", w->id);
}

/* ---- delivering ---- */

static delivery_t *dl_of(worker_t *w, const pool_owner_t *o)
{
    spooler_t *sp = w->spool;
    if (!sp || o->idx >= sp->ndl)
        return NULL;
    delivery_t *d = &sp->dl[o->idx];
    return d->lstate != DL_FREE && d->gen == o->gen ? d : NULL;
}

static uint64_t backoff_ms(const mx_config_t *cfg, uint32_t attempts)
{
    uint64_t s = RETRY_FIRST_S;
    for (uint32_t i = 1; i < attempts && s < cfg->retry_max_interval; i++)
        s *= 2;
    if (s > cfg->retry_max_interval)
        s = cfg->retry_max_interval;
    return s * 1000;
}

static void keep_text(char *out, const smtp_reply_t *r)
{
    snprintf(out, TEXT_MAX + 1, "%d%s%s %.*s", r->code, r->esc ? " " : "", r->esc ? r->esc : "", (int)r->text.len,
             r->text.ptr ? r->text.ptr : "");
}

static bool too_old(const worker_t *w, const entry_t *e)
{
    uint64_t now = wall(w);
    return now > e->arrival_ms && now - e->arrival_ms >= (uint64_t)w->cfg->max_queue_age * 1000;
}

/* max_queue_age: every recipient still pending is given up with the last
 * reply it got (or 451: no server was reached; the DSN says 4.4.7) and
 * recorded, and joins the bounces in bo (nb so far); the new count. */
static uint32_t give_up(worker_t *w, entry_t *e, bounce_t *bo, uint32_t nb)
{
    for (uint16_t i = 0; i < e->nrcpt; i++) {
        if (e->codes[i])
            continue;
        e->codes[i] = e->last_code ? e->last_code : 451;
        e->left--;
        bo[nb++] = (bounce_t){ i, e->codes[i], e->last_code ? e->last : "" };
        put_small(w, SK_RCPT, e->id, i, e->codes[i], 0, 0, SLICE_NULL);
    }
    return nb;
}

/* The attempt is over (every reply in, or the connection gone): what it
 * decided becomes records, and the message is done, deferred or returned. */
static void attempt_end(worker_t *w, delivery_t *d)
{
    spooler_t *sp = w->spool;
    entry_t *e = &sp->e[d->entry];
    const spool_rec_t *r = &d->rec;
    if (d->lstate == DL_READY)
        pool_release(w, d->lease);
    d->lstate = DL_DONE;
    sp->active--;
    char qid[28];
    spool_id_format(e->id, qid);
    if (e->kill) {
        put_small(w, SK_DONE, e->id, 0, 0, 0, 0, SLICE_NULL);
        log_line(LOG_INFO, "event=delivery worker=%d tx=%s attempt=%u result=deleted", w->id, qid, e->attempts);
        entry_free(w, d->entry);
        goto out;
    }
    if (!d->counted && e->hold_after) {
        e->held = true; /* held meanwhile; no server was reached, so no attempt */
        e->hold_after = false;
        e->state = E_WAIT;
        put_small(w, SK_TRY, e->id, 0, e->last_code, e->attempts, SPOOL_HELD, slice_make(e->last, strlen(e->last)));
        goto out;
    }
    if (!d->counted) {
        /* No server to talk to: no attempt, the message waits at the head. */
        sp->blocked = true;
        ready_push(sp, d->entry, true);
        sp->kick = false;
        goto out;
    }
    bounce_t *bo = calloc(e->nrcpt, sizeof *bo);
    uint32_t nb = 0, delivered = 0, deferred = 0;
    /* the whole message's verdict, for every recipient the server took */
    uint16_t msg_code = d->mail_code >= 400 ? d->mail_code
                        : d->data_code && d->data_code != 354 ? d->data_code
                                                              : d->eod_code;
    for (uint16_t i = 0; i < e->nrcpt; i++) {
        if (e->codes[i])
            continue;
        uint16_t c = d->code[i];
        const char *text = d->text[i];
        if (d->mail_code >= 400 || (c >= 200 && c < 300)) {
            c = msg_code;
            text = d->final;
        }
        if (c >= 200 && c < 300) {
            e->codes[i] = c;
            e->left--;
            delivered++;
            put_small(w, SK_RCPT, e->id, i, c, 0, 0, SLICE_NULL);
        } else if (c >= 500) {
            e->codes[i] = c;
            e->left--;
            if (bo)
                bo[nb++] = (bounce_t){ i, c, text };
            put_small(w, SK_RCPT, e->id, i, c, 0, 0, SLICE_NULL);
        } else {
            deferred++;
            e->last_code = c ? c : 451;
            snprintf(e->last, sizeof e->last, "%s", c ? text : "451 4.4.1 downstream connection lost");
        }
    }
    e->attempts++;
    bool expired = false;
    if (e->left && too_old(w, e) && bo) {
        expired = true;
        nb = give_up(w, e, bo, nb);
    }
    const char *result = e->left == 0 ? (nb ? (expired ? "expired" : "bounced") : "delivered") : "deferred";
    if (nb)
        send_dsn(w, r, bo, nb, expired);
    free(bo);
    e = &sp->e[d->entry]; /* the DSN's entry may have moved the table */
    if (e->left == 0) {
        put_small(w, SK_DONE, e->id, 0, 0, 0, 0, SLICE_NULL);
        m_inc(&w->m.spool_results[expired ? MSR_EXPIRED : nb ? MSR_BOUNCED : MSR_DELIVERED]);
        log_line(LOG_INFO, "event=delivery worker=%d tx=%s attempt=%u result=%s delivered=%u bounced=%u", w->id, qid,
                 e->attempts, result, delivered, nb);
        entry_free(w, d->entry);
    } else {
        e->next_ms = e->hold_after ? SPOOL_HELD : wall(w) + backoff_ms(w->cfg, e->attempts);
        e->held = e->hold_after;
        e->hold_after = false;
        put_small(w, SK_TRY, e->id, 0, e->last_code, e->attempts, e->next_ms, slice_make(e->last, strlen(e->last)));
        e->state = E_WAIT;
        m_inc(&w->m.spool_results[MSR_DEFERRED]);
        log_line(LOG_INFO,
                 "event=delivery worker=%d tx=%s attempt=%u result=deferred delivered=%u bounced=%u deferred=%u "
                 "next_in_s=%llu",
                 w->id, qid, e->attempts, delivered, nb, deferred,
                 e->held ? 0ull : (unsigned long long)(e->next_ms - wall(w)) / 1000);
        if (e->buf && sp->mem > MEM_BUDGET)
            entry_forget_buf(sp, e);
    }
out:
    free(d->loaded);
    d->loaded = NULL;
    d->lstate = DL_FREE;
    d->gen = (d->gen + 1) & GEN_MASK;
    sp->kick = sp->kick || !sp->blocked;
    gauges(w);
}

/* Feed the body while the lease has room, then the end marker. */
static void feed_body(worker_t *w, delivery_t *d)
{
    slice_t body = d->rec.msg.body;
    while (d->body_sent < body.len) {
        size_t room = pool_room(w, d->lease);
        if (room == 0)
            return; /* writable() comes back */
        size_t n = body.len - d->body_sent < room ? body.len - d->body_sent : room;
        if (!pool_body(w, d->lease, body.ptr + d->body_sent, n))
            return; /* the lease failed: LOST follows */
        d->body_sent += n;
    }
    smtp_reply_t refusal;
    if (!d->eod_sent) {
        d->eod_sent = true;
        if (!pool_eod(w, d->lease, TOK_EOD, &refusal)) {
            keep_text(d->final, &refusal);
            d->eod_code = (uint16_t)refusal.code;
            attempt_end(w, d);
        }
    }
}

/* A command the relay refused before sending it: the lease is dead (its
 * 451 4.4.1: no server was reached, no attempt), or the message cannot go
 * to this server as it is (SMTPUTF8 or SIZE it does not offer, an address
 * too long: the relay's own 5xx, final), or the relay is full (4xx: an
 * attempt, retried later). */
static bool refused_by_relay(const smtp_reply_t *r)
{
    return !(r->code == 451 && r->esc && !strcmp(r->esc, "4.4.1"));
}

/* The lease is ours: MAIL, the recipients still pending, DATA, pipelined.
 * Every refusal ends the attempt here and now: nothing else will. */
static void dl_go(worker_t *w, delivery_t *d)
{
    entry_t *e = &w->spool->e[d->entry];
    const spool_msg_t *m = &d->rec.msg;
    smtp_mail_params_t params = { 0 };
    params.smtputf8 = (m->flags & SPOOL_F_SMTPUTF8) != 0;
    params.body = m->flags & SPOOL_F_8BITMIME ? BODY_8BITMIME : m->flags & SPOOL_F_7BIT ? BODY_7BIT : BODY_UNSPEC;
    smtp_reply_t refusal;
    if (!pool_mail(w, d->lease, TOK_MAIL, m->sender, &params, &refusal)) {
        d->counted = refused_by_relay(&refusal);
        d->mail_code = (uint16_t)refusal.code;
        keep_text(d->final, &refusal);
        attempt_end(w, d);
        return;
    }
    uint32_t cur = 0;
    slice_t addr;
    for (uint16_t i = 0; spool_rcpt_next(m, &cur, &addr); i++) {
        if (i >= e->nrcpt || e->codes[i])
            continue;
        if (!pool_rcpt(w, d->lease, i, addr, &refusal)) {
            if (!refused_by_relay(&refusal)) {
                attempt_end(w, d); /* the lease died: no attempt */
                return;
            }
            d->code[i] = (uint16_t)refusal.code; /* this recipient's answer; the others go on */
            keep_text(d->text[i], &refusal);
            continue;
        }
    }
    if (!pool_data(w, d->lease, TOK_DATA, &refusal)) {
        d->counted = refused_by_relay(&refusal);
        d->data_code = (uint16_t)refusal.code;
        keep_text(d->final, &refusal);
        attempt_end(w, d);
    }
}

static void dl_ready(worker_t *w, const pool_owner_t *o, pool_lease_t lease)
{
    delivery_t *d = dl_of(w, o);
    if (!d || d->lstate != DL_WAIT) {
        pool_release(w, lease);
        return;
    }
    d->lstate = DL_READY;
    d->lease = lease;
    dl_go(w, d);
}

static void dl_failed(worker_t *w, const pool_owner_t *o, const smtp_reply_t *r)
{
    (void)r;
    delivery_t *d = dl_of(w, o);
    if (d && d->lstate == DL_WAIT) {
        d->lstate = DL_DONE;
        attempt_end(w, d);
    }
}

static void dl_event(worker_t *w, const pool_owner_t *o, const relay_event_t *ev)
{
    delivery_t *d = dl_of(w, o);
    if (!d || d->lstate != DL_READY)
        return;
    if (ev->type == RELAY_EV_LOST) {
        d->lstate = DL_DONE; /* the lease is void */
        attempt_end(w, d);
        return;
    }
    if (ev->type != RELAY_EV_REPLY)
        return;
    const smtp_reply_t *r = &ev->reply;
    /* the relay's own 451s for a connection that failed carry no server's word (a
     * server's 4xx is flagged SMTP_R_PEER too, so the flag cannot tell them apart) */
    bool lost = ev->lost;
    switch (ev->kind) {
    case RK_MAIL:
        if (lost)
            break;
        d->counted = true;
        d->mail_code = (uint16_t)r->code;
        if (r->code >= 400) {
            keep_text(d->final, r);
            attempt_end(w, d);
        }
        break;
    case RK_RCPT:
        if (ev->token < w->spool->e[d->entry].nrcpt && !lost) {
            d->code[ev->token] = (uint16_t)r->code;
            keep_text(d->text[ev->token], r);
        }
        break;
    case RK_DATA:
        if (lost)
            break;
        d->data_code = (uint16_t)r->code;
        if (r->code == 354) {
            feed_body(w, d);
        } else {
            keep_text(d->final, r);
            attempt_end(w, d);
        }
        break;
    case RK_EOD:
        if (lost)
            break;
        d->eod_code = (uint16_t)r->code;
        keep_text(d->final, r);
        attempt_end(w, d);
        break;
    default:
        break;
    }
}

static void dl_writable(worker_t *w, const pool_owner_t *o)
{
    delivery_t *d = dl_of(w, o);
    if (d && d->lstate == DL_READY && d->data_code == 354 && !d->eod_sent)
        feed_body(w, d);
}

static const pool_owner_ops_t dl_ops = { dl_ready, dl_failed, dl_event, dl_writable };

/* The record of an entry, in memory for the attempt. */
static bool load(worker_t *w, delivery_t *d, entry_t *e)
{
    spooler_t *sp = w->spool;
    seg_t *s = seg_by_seq(sp, e->seq);
    const char *rec = e->buf;
    if (!s)
        return false;
    if (!rec) {
        d->loaded = malloc(e->size);
        /* A read from the page cache, usually; synchronous, and only for
         * messages past the memory budget or from before a restart. */
        if (!d->loaded || pread(s->fd, d->loaded, e->size, (off_t)e->offset) != (ssize_t)e->size)
            return false;
        rec = d->loaded;
    }
    return spool_record_parse(rec, e->size, s->nonce, e->offset, &d->rec) && d->rec.type == SPOOL_MSG &&
           spool_id_eq(d->rec.id, e->id);
}

/* A delivery slot made ready for an attempt at entry idx: its
 * per-recipient arrays are kept from attempt to attempt (grown for a
 * message with more recipients), so an attempt allocates nothing else. */
static bool dl_reset(delivery_t *d, uint32_t idx, uint16_t nrcpt)
{
    uint32_t n = nrcpt ? nrcpt : 1;
    if (n > d->cap) {
        uint16_t *code = realloc(d->code, n * sizeof *code);
        if (code)
            d->code = code;
        char(*text)[TEXT_MAX + 1] = code ? realloc(d->text, n * sizeof *text) : NULL;
        if (!text)
            return false;
        d->text = text;
        d->cap = n;
    }
    uint16_t *code = d->code;
    char(*text)[TEXT_MAX + 1] = d->text;
    uint32_t cap = d->cap, gen = d->gen;
    *d = (delivery_t){ .gen = gen, .entry = idx, .code = code, .text = text, .cap = cap };
    memset(d->code, 0, n * sizeof *d->code);
    return true;
}

static void start_one(worker_t *w, uint32_t idx)
{
    spooler_t *sp = w->spool;
    entry_t *e = &sp->e[idx];
    uint32_t k = 0;
    while (k < sp->ndl && sp->dl[k].lstate != DL_FREE)
        k++;
    delivery_t *d = &sp->dl[k];
    if (!dl_reset(d, idx, e->nrcpt)) {
        e->state = E_WAIT; /* out of memory: the next sweep tries again */
        return;
    }
    char qid[28];
    spool_id_format(e->id, qid);
    if (!load(w, d, e)) {
        /* Unreadable: the record is damaged or gone. It stays on disk
         * (mxgate queue shows it); this run stops trying it. */
        log_line(LOG_ERROR, "event=spool_unreadable worker=%d tx=%s segment_seq=%u offset=%llu", w->id, qid, e->seq,
                 (unsigned long long)e->offset);
        free(d->loaded);
        d->loaded = NULL;
        e->state = E_WAIT;
        e->broken = true;
        return;
    }
    e->state = E_ACTIVE;
    d->lstate = DL_WAIT;
    sp->active++;
    pool_owner_t o = { &dl_ops, k, d->gen, ++sp->serial };
    smtp_reply_t refusal;
    switch (pool_acquire(w, &o, &d->lease, &refusal)) {
    case POOL_GRANTED:
        d->lstate = DL_READY;
        dl_go(w, d);
        break;
    case POOL_QUEUED:
        break;
    case POOL_REFUSED:
        d->lstate = DL_DONE;
        attempt_end(w, d);
        break;
    }
}

/* Messages due, as far as connections allow. */
static void start_deliveries(worker_t *w)
{
    spooler_t *sp = w->spool;
    sp->kick = false;
    while (!w->draining && !sp->blocked && sp->active < sp->ndl) {
        uint32_t i = ready_pop(sp);
        if (i == NONE)
            break;
        start_one(w, i);
    }
}

/* A message past max_queue_age that no attempt could reach (the
 * downstream has been unreachable): what is pending goes back to its
 * sender, with the last reply it got or 4.4.7. */
static void expire(worker_t *w, uint32_t idx)
{
    spooler_t *sp = w->spool;
    delivery_t tmp;
    memset(&tmp, 0, sizeof tmp);
    entry_t *e = &sp->e[idx];
    char qid[28];
    spool_id_format(e->id, qid);
    bounce_t *bo = calloc(e->nrcpt ? e->nrcpt : 1, sizeof *bo);
    if (!bo || !load(w, &tmp, e)) {
        free(bo);
        free(tmp.loaded);
        return; /* the next sweep tries again */
    }
    uint32_t nb = give_up(w, e, bo, 0);
    put_small(w, SK_DONE, e->id, 0, 0, 0, 0, SLICE_NULL);
    send_dsn(w, &tmp.rec, bo, nb, true);
    m_inc(&w->m.spool_results[MSR_EXPIRED]);
    log_line(LOG_INFO, "event=delivery worker=%d tx=%s attempt=%u result=expired delivered=0 bounced=%u", w->id, qid,
             sp->e[idx].attempts, nb);
    free(bo);
    free(tmp.loaded);
    entry_free(w, idx);
}

static void unready(spooler_t *sp, uint32_t idx)
{
    uint32_t prev = NONE;
    for (uint32_t i = sp->ready_head; i != NONE; prev = i, i = sp->e[i].next) {
        if (i != idx)
            continue;
        if (prev == NONE)
            sp->ready_head = sp->e[i].next;
        else
            sp->e[prev].next = sp->e[i].next;
        if (sp->ready_tail == i)
            sp->ready_tail = prev;
        return;
    }
}

/* Once a second: deferred messages whose time has come, and those too old
 * to wait any longer. */
static void on_sweep(worker_t *w, timer_node_t *t)
{
    spooler_t *sp = w->spool;
    uint64_t now = wall(w), oldest = 0;
    for (uint32_t i = 0; i < sp->ne; i++) {
        entry_t *e = &sp->e[i];
        if ((e->state == E_WAIT || e->state == E_READY) && too_old(w, e) && !e->held && !e->broken) {
            if (e->state == E_READY)
                unready(sp, i);
            expire(w, i);
            continue;
        }
        if (e->state == E_WAIT && !e->held && !e->broken && e->next_ms <= now)
            ready_push(sp, i, false);
        if (sp->e[i].state != E_FREE && (!oldest || sp->e[i].arrival_ms < oldest))
            oldest = sp->e[i].arrival_ms;
    }
    m_set(&w->m.spool_oldest_ms, oldest);
    if (sp->blocked && sp->ready_head != NONE) {
        sp->blocked = false; /* one try a second, in case the pool has not said */
        sp->kick = true;
    }
    gauges(w);
    if (!w->draining)
        timer_arm(&w->timers, t, w->now + SWEEP_MS, on_sweep);
}

void spooler_pool_ready(worker_t *w)
{
    spooler_t *sp = w->spool;
    if (sp && sp->blocked) {
        sp->blocked = false;
        sp->kick = true;
    }
}

void spooler_flush(worker_t *w)
{
    spooler_t *sp = w->spool;
    if (!sp)
        return;
    if (sp->kick)
        start_deliveries(w);
    batch_submit(w);
}

bool spooler_drained(worker_t *w)
{
    spooler_t *sp = w->spool;
    return !sp || (sp->active == 0 && sp->fly->ops_left == 0 && sp->fill->n == 0);
}

/* ---- operator commands (control.c, through worker_call) ---- */

/* Does the command name this entry? */
static bool named(const spool_cmd_t *c, const entry_t *e)
{
    return e->state != E_FREE && e->state != E_COMMIT && (c->all || spool_id_eq(c->id, e->id));
}

static void cmd_list(worker_t *w, spool_cmd_t *c, uint32_t i)
{
    spooler_t *sp = w->spool;
    entry_t *e = &sp->e[i];
    delivery_t tmp;
    memset(&tmp, 0, sizeof tmp);
    seg_t *s = seg_by_seq(sp, e->seq);
    if (!load(w, &tmp, e)) {
        free(tmp.loaded);
        return;
    }
    queue_item_t it = { e->id, s ? s->name : "?", e->arrival_ms, tmp.rec.msg.body_len, &tmp.rec, e->codes, e->nrcpt,
                        e->attempts, e->next_ms, e->last_code, e->last, e->held };
    queue_print(c->out, c->json, c->shown == 0, &it);
    c->shown++;
    c->octets += e->size;
    if (!c->oldest || e->arrival_ms < c->oldest)
        c->oldest = e->arrival_ms;
    free(tmp.loaded);
}

/* A TRY record for what the entry now is (held, or due at next_ms). */
static void put_state(worker_t *w, entry_t *e)
{
    put_small(w, SK_TRY, e->id, 0, e->last_code, e->attempts, e->held ? SPOOL_HELD : e->next_ms,
              slice_make(e->last, strlen(e->last)));
}

void spooler_command(worker_t *w, void *arg)
{
    spool_cmd_t *c = arg;
    spooler_t *sp = w->spool;
    if (!sp)
        return;
    char qid[28];
    for (uint32_t i = 0; i < sp->ne; i++) {
        entry_t *e = &sp->e[i];
        if (!named(c, e))
            continue;
        c->matched++;
        spool_id_format(e->id, qid);
        switch (c->op) {
        case SC_LIST:
            cmd_list(w, c, i);
            break;
        case SC_DELETE:
            c->changed++;
            if (e->state == E_ACTIVE) {
                e->kill = true; /* the attempt ends it */
                break;
            }
            if (e->state == E_READY)
                unready(sp, i);
            put_small(w, SK_DONE, e->id, 0, 0, 0, 0, SLICE_NULL);
            log_line(LOG_INFO, "event=queue_delete worker=%d tx=%s", w->id, qid);
            entry_free(w, i);
            break;
        case SC_HOLD:
            if (e->held || e->hold_after)
                break;
            c->changed++;
            if (e->state == E_ACTIVE) {
                e->hold_after = true;
                break;
            }
            if (e->state == E_READY)
                unready(sp, i);
            e->state = E_WAIT;
            e->held = true;
            put_state(w, e);
            log_line(LOG_INFO, "event=queue_hold worker=%d tx=%s", w->id, qid);
            break;
        case SC_RELEASE:
        case SC_FLUSH:
            if (e->hold_after && c->op == SC_RELEASE) {
                e->hold_after = false;
                c->changed++;
                break;
            }
            if (e->state != E_WAIT || e->broken || (e->held != (c->op == SC_RELEASE)))
                break; /* flush leaves held messages held; release only those */
            c->changed++;
            e->held = false;
            e->next_ms = 0;
            put_state(w, e);
            ready_push(sp, i, false);
            log_line(LOG_INFO, "event=queue_%s worker=%d tx=%s", c->op == SC_FLUSH ? "flush" : "release", w->id,
                     qid);
            break;
        }
    }
    if (c->op == SC_FLUSH || c->op == SC_RELEASE) {
        sp->blocked = false; /* try the downstream now, whatever the pool last said */
        sp->kick = true;
    }
    gauges(w);
}

/* ---- start-up: the segments of an earlier run ---- */

typedef struct found {
    char name[48];
    uint32_t owner, seq;
    int fd;
    char *map;
    uint64_t len;
    spool_seg_t head;
} found_t;

static int by_creation(const void *a, const void *b)
{
    const found_t *x = a, *y = b;
    return spool_seg_order(&x->head, x->name, &y->head, y->name);
}

static bool seg_name(const char *n, uint32_t *owner, uint32_t *seq)
{
    unsigned a, b;
    int end = 0;
    if (sscanf(n, "w%u-%u.seg%n", &a, &b, &end) != 2 || n[end] != '\0')
        return false;
    *owner = a;
    *seq = b;
    return true;
}

static int recover(worker_t *w, char *err, size_t errlen)
{
    spooler_t *sp = w->spool;
    int dfd = openat(sp->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC); /* a position of its own */
    DIR *dir = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!dir) {
        if (dfd >= 0)
            close(dfd);
        snprintf(err, errlen, "spool_dir: %s", strerror(errno));
        return -1;
    }
    found_t *f = NULL;
    uint32_t nf = 0, cap = 0;
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(dir))) {
        uint32_t owner, seq;
        if (strlen(de->d_name) >= sizeof f->name || !seg_name(de->d_name, &owner, &seq))
            continue;
        if (owner == (uint32_t)w->id && seq >= sp->seq_next)
            sp->seq_next = seq + 1;
        if (owner % sp->sh->workers != (uint32_t)w->id)
            continue;
        if (!grow_item((void **)&f, &cap, nf, sizeof *f, 16)) {
            rc = -1;
            break;
        }
        found_t *x = &f[nf];
        memset(x, 0, sizeof *x);
        memcpy(x->name, de->d_name, strlen(de->d_name) + 1);
        x->owner = owner;
        x->seq = seq;
        x->fd = openat(sp->dirfd, x->name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        struct stat st;
        if (x->fd < 0 || fstat(x->fd, &st) != 0) {
            snprintf(err, errlen, "spool_dir: %s: %s", x->name, strerror(errno));
            if (x->fd >= 0)
                close(x->fd);
            rc = -1;
            break;
        }
        x->len = (uint64_t)st.st_size;
        x->map = x->len ? mmap(NULL, x->len, PROT_READ, MAP_PRIVATE, x->fd, 0) : NULL;
        if (x->map == MAP_FAILED)
            x->map = NULL;
        spool_scanner_t sc;
        if (x->map && spool_scan_init(&sc, x->map, x->len))
            x->head = sc.seg;
        nf++;
    }
    closedir(dir);
    if (rc) {
        if (!err[0])
            snprintf(err, errlen, "spool_dir: out of memory");
        goto out;
    }
    if (nf)
        qsort(f, nf, sizeof *f, by_creation);
    /* Replay every record of every segment, in creation order. */
    spoolq_t q;
    spoolq_init(&q);
    uint64_t torn = 0, skipped = 0;
    for (uint32_t i = 0; i < nf && rc == 0; i++) {
        spool_scanner_t sc;
        if (!f[i].map || !spool_scan_init(&sc, f[i].map, f[i].len))
            continue; /* a creation torn before its header: nothing in it */
        spool_rec_t r;
        uint64_t at, n;
        enum spool_scan st;
        while ((st = spool_scan_next(&sc, &r, &at, &n)) != SPOOL_END) {
            if (st == SPOOL_TORN) {
                torn += n;
                break;
            }
            if (st == SPOOL_SKIPPED) {
                skipped += n;
                continue;
            }
            if (!spoolq_add(&q, i, &r)) {
                snprintf(err, errlen, "spool_dir: out of memory reading %s", f[i].name);
                rc = -1;
                break;
            }
        }
    }
    /* Every file becomes a (retired) segment; its pending messages, entries. */
    for (uint32_t i = 0; i < nf && rc == 0; i++) {
        seg_t *s = seg_push(sp);
        if (!s) {
            rc = -1;
            break;
        }
        s->seq = f[i].seq | (f[i].owner != (uint32_t)w->id ? 0x80000000u : 0); /* never one of ours to come */
        s->fd = f[i].fd;
        f[i].fd = -1;
        s->nonce = f[i].head.nonce;
        s->created_ms = f[i].head.created_ms;
        s->size = f[i].len;
        s->retired = true;
        snprintf(s->name, sizeof s->name, "%s", f[i].name);
    }
    uint32_t msgs = 0;
    for (uint32_t i = 0; i < q.n && rc == 0; i++) {
        spoolq_msg_t *m = &q.msg[i];
        if (m->done)
            continue;
        uint32_t k = entry_new(sp);
        if (k == NONE) {
            rc = -1;
            break;
        }
        entry_t *e = &sp->e[k];
        e->codes = calloc(m->nrcpt ? m->nrcpt : 1, sizeof *e->codes);
        if (!e->codes) {
            rc = -1;
            break;
        }
        memcpy(e->codes, m->codes, m->nrcpt * sizeof *e->codes);
        e->id = m->id;
        e->seq = sp->seg[m->seg].seq;
        e->offset = m->offset;
        e->size = m->size;
        e->arrival_ms = m->arrival_ms;
        e->attempts = m->attempts;
        e->next_ms = m->next_ms;
        e->nrcpt = m->nrcpt;
        e->left = m->left;
        e->last_code = m->last_code;
        e->held = m->next_ms == SPOOL_HELD;
        snprintf(e->last, sizeof e->last, "%s", m->last_text);
        sp->seg[m->seg].live++;
        sp->pending++;
        sp->bytes += m->size;
        atomic_fetch_add_explicit(&sp->sh->bytes, m->size, memory_order_relaxed);
        e->state = E_WAIT; /* the first sweep queues what is due */
        msgs++;
    }
    if (rc && !err[0])
        snprintf(err, errlen, "spool_dir: out of memory");
    if (!rc && nf)
        log_line(LOG_INFO,
                 "event=spool_recovered worker=%d segments=%u messages=%u octets=%llu torn=%llu skipped=%llu "
                 "orphans=%u duplicates=%u",
                 w->id, nf, msgs, (unsigned long long)sp->bytes, (unsigned long long)torn,
                 (unsigned long long)skipped, q.orphans, q.duplicates);
    spoolq_free(&q);
out:
    for (uint32_t i = 0; i < nf; i++) {
        if (f[i].map)
            munmap(f[i].map, f[i].len);
        if (f[i].fd >= 0)
            close(f[i].fd);
    }
    free(f);
    return rc;
}

/* ---- life ---- */

int spooler_init(worker_t *w, spool_shared_t *sh, char *err, size_t errlen)
{
    if (!config_spooling(w->cfg) || !sh)
        return 0;
    spooler_t *sp = calloc(1, sizeof *sp);
    if (!sp) {
        snprintf(err, errlen, "spool: out of memory");
        return -1;
    }
    w->spool = sp;
    sp->sh = sh;
    sp->dirfd = sh->dirfd;
    sp->fill = &sp->b[0];
    sp->fly = &sp->b[1];
    sp->free_head = sp->ready_head = sp->ready_tail = NONE;
    sp->ndl = w->cfg->downstream_connections;
    sp->dl = calloc(sp->ndl, sizeof *sp->dl);
    if (!sp->dl) {
        snprintf(err, errlen, "spool: out of memory");
        return -1;
    }
    err[0] = '\0';
    return recover(w, err, errlen);
}

void spooler_start(worker_t *w)
{
    spooler_t *sp = w->spool;
    if (!sp)
        return;
    sp->wall_off = (int64_t)realtime_ms() - (int64_t)monotonic_ms();
    on_sweep(w, &sp->sweep);
}

void spooler_destroy(worker_t *w)
{
    spooler_t *sp = w->spool;
    if (!sp)
        return;
    for (uint32_t i = 0; i < sp->ne; i++)
        if (sp->e[i].state != E_FREE) {
            free(sp->e[i].buf);
            free(sp->e[i].codes);
        }
    for (uint32_t i = 0; i < sp->ndl; i++) {
        free(sp->dl[i].loaded);
        free(sp->dl[i].code);
        free(sp->dl[i].text);
    }
    for (uint32_t i = 0; i < sp->nseg; i++)
        if (sp->seg[i].fd >= 0)
            close(sp->seg[i].fd);
    for (int i = 0; i < 2; i++) {
        free(sp->b[i].p);
        free(sp->b[i].small);
        free(sp->b[i].iov);
        free(sp->b[i].expect);
    }
    free(sp->seg);
    free(sp->e);
    free(sp->dl);
    free(sp);
    w->spool = NULL;
}

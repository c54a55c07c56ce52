/*
 * spooler.h - a worker's part of the spool (delivery = spool): messages
 * written durably before their 250, and delivered from there to the
 * downstream, retried, returned to their senders when they cannot be.
 *
 * Writing. Each worker appends to its own segment file,
 * spool_dir/w<worker>-<sequence>.seg, in core/spool.h's format; no file and
 * no lock is shared between workers. A transaction builds its message
 * record in a buffer of its own while the body arrives and hands the buffer
 * over at the end of data (spooler_submit). Every record handed over in a
 * loop turn joins one batch, written at the end of the turn with one writev
 * and one fsync linked behind it in the ring (group commit); the owners of
 * the batch's messages hear `committed` from the fsync's completion, and
 * only then say 250. A failed write or fsync answers them 451 4.3.0 and the
 * segment is retired (its state past the failure is unknown).
 *
 * Buffers lent to the kernel (lend.h): a batch's records belong to the ring
 * from its writev's submission to the completion of its fsync; records
 * handed over meanwhile go into the next batch, written when the first one
 * completes.
 *
 * Delivering. The worker's queue (the messages whose records are durable
 * and not done) is delivered through the same downstream pool as
 * relay-through, up to downstream_connections at once, each delivery an
 * owner of a lease like a client's transaction. Results become RCPT, TRY and
 * DONE records in the same batches (nobody waits on them). A downstream that
 * cannot be reached (no lease) costs no attempt: the queue waits and starts
 * again as soon as the pool has a connection ready. A message's own
 * temporary failure is retried with exponential backoff up to
 * retry_max_interval; past max_queue_age, or for a 5xx, its recipients are
 * returned to the sender in a delivery status notification (core/dsn.h),
 * itself spooled and delivered like any message (never to the null sender).
 *
 * Crash safety. At start-up each worker reads back the segments it owns
 * (w<j> with j modulo the number of workers, so a changed worker count
 * loses nothing), in the order they were created, and queues every message
 * not done. A segment goes once it and every older segment of the worker
 * hold nothing pending; the directory is fsynced after a segment is created
 * or removed.
 */
#ifndef MXGATE_SPOOLER_H
#define MXGATE_SPOOLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "slice.h"
#include "spool.h"

typedef struct worker worker_t;
typedef struct spooler spooler_t;
struct io_uring_cqe;

/* What all workers share: the directory, its lock, the octets pending. */
typedef struct spool_shared {
    int dirfd;
    int lockfd;             /* flock held while the process runs (mxgate queue checks it) */
    _Atomic uint64_t bytes; /* octets of records pending in every worker */
    uint32_t workers;
} spool_shared_t;

/* The spool's directory, made when missing (owned by uid/gid when they are
 * not -1; *made says whether it was): a descriptor, or -1 with err. Also
 * where the content stage keeps messages past its memory budget. */
int spool_dir_open(const char *dir, uid_t uid, gid_t gid, bool *made, char *err, size_t errlen);

/* Main, before the workers and as the user that starts: make the directory
 * (owned by uid/gid when they are not -1) and take its lock. */
int spool_shared_open(spool_shared_t *sh, const char *dir, uid_t uid, gid_t gid, uint32_t workers, char *err,
                      size_t errlen);
void spool_shared_close(spool_shared_t *sh);

typedef struct spool_owner spool_owner_t;
typedef struct spool_owner_ops {
    /* The message handed over is durable (ok), or could not be written. */
    void (*committed)(worker_t *w, const spool_owner_t *o, bool ok);
} spool_owner_ops_t;

struct spool_owner {
    const spool_owner_ops_t *ops;
    uint32_t idx, gen, seq; /* as pool_owner_t: slot, its generation, the transaction */
};

/* worker_init (main thread): read back the worker's segments. */
int spooler_init(worker_t *w, spool_shared_t *sh, char *err, size_t errlen);
/* In the worker's thread once its ring is up: start delivering. */
void spooler_start(worker_t *w);
void spooler_destroy(worker_t *w);

/* Would a message of `size` octets more go over spool_max_bytes, or the
 * file system below spool_min_free? (452 4.3.1) */
bool spooler_full(worker_t *w, uint64_t size);

/*
 * Hand a message over. rec holds head_size octets left for the record's
 * header and envelope, then body_len octets of body (wire form), and has
 * room for SPOOL_ALIGN more (the padding). m and rcpts are the envelope
 * (m->body_len is set here). On success the spooler owns rec (malloc'd)
 * and o hears `committed` from a later loop turn; false: nothing was
 * taken (out of memory, or the envelope does not fit the format).
 */
bool spooler_submit(worker_t *w, const spool_owner_t *o, char *rec, size_t head_size, size_t body_len,
                    spool_msg_t *m, const slice_t *rcpts) __attribute__((warn_unused_result));

/* The loop: completions, and the batch gathered in a turn. */
void spooler_cqe(worker_t *w, int op, struct io_uring_cqe *cqe);
void spooler_flush(worker_t *w);
/* The pool has a connection ready and nobody waiting for it. */
void spooler_pool_ready(worker_t *w);

/* An operator's command on the worker's queue (mxgate queue, through the
 * control socket): run in the worker's thread by worker_call(). */
enum spool_op { SC_LIST, SC_DELETE, SC_HOLD, SC_RELEASE, SC_FLUSH };
typedef struct spool_cmd {
    enum spool_op op;
    bool all;         /* every message, or only id */
    spool_id_t id;
    bool json;        /* SC_LIST: queue.h's JSON */
    FILE *out;        /* SC_LIST: where the messages are printed */
    uint32_t shown;   /* SC_LIST, over all workers: printed so far */
    uint64_t octets, oldest;
    uint32_t matched; /* messages the command named, over all workers */
    uint32_t changed; /* and changed */
} spool_cmd_t;
void spooler_command(worker_t *w, void *cmd);

/* Draining: nothing in flight to the disk, no delivery holding a lease
 * (they stop being started from the drain on). */
bool spooler_drained(worker_t *w);

#endif

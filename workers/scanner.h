/*
 * scanner.h - the content stage's client: one message, one HTTP request to
 * rspamd (POST /checkv2, core/rspamd.h), sent and read through the worker's
 * ring, with a deadline on the worker's timing wheel.
 *
 * rspamd's normal worker answers every request with "Connection: close"
 * (3.4), so each scan opens its own connection: connect, one sendmsg of
 * the request head and the message (continued after a short send), then
 * receives until the response is whole. Requests are local and short; a
 * scan costs rspamd milliseconds and the connection a round trip on
 * loopback.
 *
 * The message is lent: scanner_start() takes the buffer, and done() hands
 * it back with the verdict. The message is sent as rspamd wants it (the
 * plain message), straight from the buffer, which holds it in wire form:
 * each stuffing dot is left out by the iovecs around it, so nothing is
 * copied. An owner that ends first cancels; the buffer is then freed once
 * the kernel has let go of it, and no callback comes.
 *
 * The memory held for the content stage (messages being received or
 * scanned) is counted per worker against content_memory_limit: the holder
 * of a buffer counts it (scanner_hold), and whoever frees it uncounts it.
 * Past that budget a message is held in a file under spool_dir instead (an
 * unlinked file, mapped: the rest of the stage reads and edits it as
 * memory, and the kernel's page cache, not the gateway, decides what stays
 * in RAM), counted against content_spill_limit (scanner_spill_hold).
 */
#ifndef MXGATE_SCANNER_H
#define MXGATE_SCANNER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rspamd.h"

typedef struct worker worker_t;
struct io_uring_cqe;
struct mx_config;

typedef struct scanner_owner {
    uint32_t idx, gen, seq;
} scanner_owner_t;

/* How a scan ended (metrics.h's enum m_content_err follows the failures). */
enum scanner_status {
    SCANNER_OK = 0,     /* rspamd's verdict is in */
    SCANNER_CONNECT,    /* no connection (refused, unreachable) */
    SCANNER_TIMEOUT,    /* rspamd_timeout passed */
    SCANNER_IO,         /* the connection failed or closed before the response was whole */
    SCANNER_HTTP,       /* an HTTP status other than 200 ({"error": ...}) */
    SCANNER_RESPONSE,   /* a response or verdict that does not parse */
    SCANNER_REQUEST,    /* the request could not be made (a value with a control byte, no memory) */
};

const char *scanner_status_name(enum scanner_status s);

typedef struct scanner_result {
    enum scanner_status status;
    int http_code;
    rspamd_verdict_t *v;        /* SCANNER_OK: valid during the callback only (the owner may edit it) */
    const char *why;            /* a static detail for the log (rspamd's error name, errno's text) */
    char *buf;                  /* the message buffer, back to its owner, and what is counted for it */
    size_t cap, held;
    int fd;                     /* a spilled buffer's file (buf is its mapping); -1: memory */
    uint64_t ms;                /* the scan's duration */
} scanner_result_t;

typedef void scanner_done_fn(worker_t *w, const scanner_owner_t *o, scanner_result_t *r);

int scanner_init(worker_t *w, scanner_done_fn *done, char *err, size_t errlen);
void scanner_destroy(worker_t *w);

/*
 * Scan buf[off, off + len) (wire form: CRLF lines, dot-stuffed) with env
 * as the envelope. On success the buffer (cap octets, `held` of them
 * counted against the budget) is the scanner's until done() hands it back,
 * and a request id (non-zero) is returned. 0: not started (*status says
 * why: SCANNER_REQUEST, SCANNER_CONNECT); the buffer stays the caller's.
 */
uint64_t scanner_start(worker_t *w, const scanner_owner_t *o, const struct mx_config *cfg, const rspamd_env_t *env,
                       char *buf, size_t cap, size_t held, int fd, size_t off, size_t len,
                       enum scanner_status *status);

/* The owner is gone: no callback; the buffer is freed (and uncounted) once
 * the kernel is done with it. */
void scanner_cancel(worker_t *w, uint64_t id);

/* The ring's completions (OP_SCAN). */
void scanner_cqe(worker_t *w, struct io_uring_cqe *cqe);

/* Nothing in flight: the worker may exit. */
bool scanner_idle(const worker_t *w);

/* The budget: may `want` more octets be held (beyond what is held now)?
 * Counting them when so. */
bool scanner_hold(worker_t *w, const struct mx_config *cfg, size_t want);
void scanner_unhold(worker_t *w, size_t n);

/* The same for the files (content_spill_limit); false also when no spill
 * directory is open. */
bool scanner_spill_hold(worker_t *w, const struct mx_config *cfg, size_t want);
void scanner_spill_unhold(worker_t *w, size_t n);

/* Gives back a held buffer and its count: memory (fd -1: free, held octets
 * uncounted) or a spilled file (munmap, close, cap octets uncounted). */
void scanner_buf_free(worker_t *w, char *buf, size_t cap, size_t held, int fd);

#endif

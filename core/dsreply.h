/*
 * dsreply.h - parser for the replies of a downstream SMTP/LMTP server, where
 * mxgate is the client (RFC 5321 4.2, with 1870, 2920, 3463 and LMTP's
 * RFC 2033). I/O-free: bytes in, one complete reply at a time out.
 *
 * With pipelining one read can hold several replies and a reply can end in
 * the next read, so replies are parsed line by line (OpenSMTPD's
 * parse_smtp_response): "DDD-text" continues a reply, "DDD text" or a bare
 * "DDD" ends it. The caller owns a dsr_t (zeroed, or dsr_init) per downstream
 * connection and loops:
 *
 *     for (;;) {
 *         size_t n;
 *         enum dsr_status st = dsr_feed(d, p, len, &n, &r);
 *         p += n, len -= n;
 *         if (st == DSR_REPLY) { handle(&r); continue; }  // in command order
 *         break;          // AGAIN: all taken, read more; ERROR: close
 *     }
 *
 * Lines end in CRLF; a bare LF ends a line too (the downstream is a server we
 * chose, and how its replies are framed cannot change how a message is
 * framed). A malformed reply is DSR_ERROR: a line that is not three digits
 * then ' ', '-' or the line's end; a first digit outside 2-5; a continuation
 * whose code differs from its reply's first line; a line over DSR_LINE_MAX
 * octets; a NUL. After an error the client cannot know which command a later
 * reply answers, so the error is sticky: the connection must be closed.
 * Errors are found at the first offending byte, before the line's end has
 * arrived where that is enough to tell ("25x" is an error at once).
 *
 * Results depend only on the bytes, never on how they were split into feeds:
 * tests and the fuzz target feed every sample at every split and compare.
 *
 * Slices in a dsr_reply_t point into the caller's input (a reply's last line
 * that arrived in one piece: no copy) or into the dsr_t's carry buffer (a line
 * split across feeds). They are valid until the next dsr_feed() on the same
 * dsr_t and, for the input, as long as the caller keeps its buffer. Nothing is
 * allocated.
 */
#ifndef MXGATE_DSREPLY_H
#define MXGATE_DSREPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "slice.h"

/*
 * The longest reply line accepted, line end included. RFC 5321 4.5.3.1.5
 * says 512; real servers send longer texts (Exchange's, long EHLO AUTH
 * lists), and a few downstream connections per worker can afford the room.
 */
#define DSR_LINE_MAX 1024

/* EHLO keywords (RFC 5321 4.1.1.1), found in dsr_reply_t.caps. */
#define DSR_CAP_PIPELINING          (1u << 0) /* RFC 2920 */
#define DSR_CAP_SIZE                (1u << 1) /* RFC 1870 */
#define DSR_CAP_8BITMIME            (1u << 2) /* RFC 6152 */
#define DSR_CAP_SMTPUTF8            (1u << 3) /* RFC 6531 */
#define DSR_CAP_CHUNKING            (1u << 4) /* RFC 3030 */
#define DSR_CAP_ENHANCEDSTATUSCODES (1u << 5) /* RFC 2034 */
#define DSR_CAP_STARTTLS            (1u << 6) /* RFC 3207 */
#define DSR_CAP_DSN                 (1u << 7) /* RFC 3461 */

/* Why a reply was refused; sticky, see dsr_error(). */
typedef enum dsr_err {
    DSR_ERR_NONE = 0,
    DSR_ERR_SYNTAX,   /* not "DDD" then ' ', '-' or the line's end */
    DSR_ERR_CLASS,    /* first digit not 2-5 */
    DSR_ERR_MISMATCH, /* a continuation line with another code */
    DSR_ERR_TOO_LONG, /* a line over DSR_LINE_MAX octets */
    DSR_ERR_NUL,      /* a NUL byte */
} dsr_err_t;

const char *dsr_err_name(dsr_err_t e);

/* One downstream connection's parser state. All fields are private. */
typedef struct dsr {
    uint16_t _carry_len; /* octets of a partial line held in _carry */
    uint16_t _code;      /* the reply's code, once its first line is in */
    uint8_t _err;        /* dsr_err_t; non-zero: every feed fails */
    unsigned _lines;     /* complete lines of the reply so far; 0: between replies */
    uint32_t _caps;      /* DSR_CAP_* seen so far in this reply */
    uint64_t _size_max;  /* SIZE's argument so far in this reply */
    char _carry[DSR_LINE_MAX];
} dsr_t;

/* Zeroing a dsr_t is the same; either starts a connection afresh. */
static inline void dsr_init(dsr_t *d)
{
    memset(d, 0, sizeof *d);
}

typedef struct dsr_reply {
    int code;          /* 200..599 */
    slice_t esc;       /* the last line's enhanced status code ("2.1.0"), if it
                        * has a valid one (RFC 3463) of the reply's class; else
                        * empty, and any such text stays in `text` */
    slice_t text;      /* the last line after the code, its separator and the
                        * enhanced code with its space; no line end */
    unsigned lines;    /* lines in the reply (saturates at UINT_MAX) */
    uint32_t caps;     /* DSR_CAP_* keywords on the reply's lines after the
                        * first, for code 250 only (the EHLO reply) */
    uint64_t size_max; /* from "SIZE n" in caps; 0: none, no number, or "no
                        * fixed limit" (RFC 1870); saturates at UINT64_MAX */
} dsr_reply_t;

enum dsr_status {
    DSR_REPLY, /* *r holds one complete reply; *consumed ends at its last LF */
    DSR_AGAIN, /* all input consumed (a partial reply is kept); read more */
    DSR_ERROR, /* malformed; nothing consumed; close the connection */
};

/*
 * Parse `in` up to the end of the next complete reply. *r is written only on
 * DSR_REPLY. `in` may be NULL when len is 0. On DSR_ERROR, *consumed is 0 and
 * this and every later call return DSR_ERROR until dsr_init().
 */
enum dsr_status dsr_feed(dsr_t *d, const char *in, size_t len, size_t *consumed, dsr_reply_t *r)
    __attribute__((warn_unused_result));

/* The reason for DSR_ERROR; DSR_ERR_NONE while the connection is sound. */
static inline dsr_err_t dsr_error(const dsr_t *d)
{
    return (dsr_err_t)d->_err;
}

/*
 * Are bytes of an unfinished reply held? A downstream that closes, or an
 * exchange that times out, while this is true cut a reply short.
 */
static inline bool dsr_pending(const dsr_t *d)
{
    return d->_lines != 0 || d->_carry_len != 0;
}

/* 2: success, 3: send more (354), 4: temporary, 5: permanent failure. */
static inline int dsr_class(const dsr_reply_t *r)
{
    return r->code / 100;
}

#endif

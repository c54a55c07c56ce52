/*
 * dsn.h - the bounce: a delivery status notification (RFC 3464, in a
 * multipart/report of RFC 6522, with RFC 3461's fields and RFC 6522's
 * text/rfc822-headers), built I/O-free for a message the spool gives up on:
 * a 5xx from the downstream, or max_queue_age reached while still deferred.
 *
 * dsn_write() writes the whole message, headers and body, in SMTP wire form:
 * CRLF line ends, every line that starts with '.' stuffed with another,
 * without the final ".\r\n" (the sender adds it, as for any spooled body).
 * The caller gives the buffer: dsn_size_max() says how large, and nothing is
 * allocated. The message is
 *
 *    From: Mail Delivery System <MAILER-DAEMON@reporting_mta>
 *    To: <sender>, Subject, Date (now_s), Message-ID,
 *    Auto-Submitted: auto-replied (RFC 3834: nobody answers it, so a bounce
 *      cannot start a loop), MIME-Version, Content-Type: multipart/report;
 *      report-type=delivery-status; boundary="..."
 *    1. text/plain: what happened, for a person, recipient by recipient
 *    2. message/delivery-status: Reporting-MTA, X-Mxgate-Queue-ID,
 *       Received-From-MTA, Arrival-Date; then per recipient Final-Recipient,
 *       Original-Recipient, Action: failed, Status, Diagnostic-Code,
 *       Last-Attempt-Date
 *    3. text/rfc822-headers: the original's header section only (at most
 *       DSN_HEAD_MAX octets, cut at a line's end), so a bounce never carries
 *       a body back: no backscatter amplification
 *
 * Everything in a dsn_msg_t but `original` may hold any octets (a client
 * chose them). In headers, fields and the human text, each octet outside
 * printable US-ASCII (0x20..0x7e) is written as '?', so no CR, LF or NUL
 * can start a header or a boundary line, and each line is cut at
 * DSN_LINE_MAX octets (nothing is folded). The returned header section is
 * copied as it is (it is already in wire form); its octets decide part 3's
 * Content-Transfer-Encoding (8bit if any is, else 7bit), and the
 * boundary is re-derived until it occurs neither in them nor in any of the
 * caller's slices (the human text is wrapped, so a reply text could put it
 * alone on a line).
 *
 * A bounce is never sent to the null sender (RFC 5321 6.1), so an empty
 * sender is invalid, like an empty reporting_mta or no recipients.
 */
#ifndef MXGATE_DSN_H
#define MXGATE_DSN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "slice.h"

#define DSN_LINE_MAX 998            /* octets per line, CRLF not counted (RFC 5322 2.1.1) */
#define DSN_HEAD_MAX (64u * 1024)   /* of the original's header section returned */
#define DSN_DATE_LEN 31             /* "Thu, 01 Jan 1970 00:00:00 +0000" */

typedef struct dsn_rcpt {
    slice_t addr;   /* the recipient's mailbox as given at RCPT, without <> */
    uint16_t code;  /* its final reply code: 5xx (failed) or 4xx (still deferred
                     * when it expired); 0: no reply (say, no connection) */
    slice_t status; /* the enhanced status code from that reply ("5.1.1"); empty
                     * or not a 4.x.x/5.x.x code: derived (5xx: 5.0.0, else
                     * 4.4.7, the queue lifetime's) */
    slice_t text;   /* the reply's text. Diagnostic-Code and the human text give
                     * the reply as it came, "550 5.1.1 text" (status only if
                     * the reply had one); "X-Mxgate; text" without a 4xx/5xx
                     * code; no Diagnostic-Code when neither code nor text */
} dsn_rcpt_t;

typedef struct dsn_msg {
    slice_t reporting_mta;  /* our hostname: Reporting-MTA, From: MAILER-DAEMON@it */
    slice_t queue_id;       /* our id for the message: X-Mxgate-Queue-ID, the human
                             * text, the boundary and the Message-ID (may be empty) */
    slice_t sender;         /* the original reverse path (the DSN goes To: it) */
    slice_t client_helo;    /* Received-From-MTA (none when empty) */
    uint64_t arrival_s;     /* Unix seconds: Arrival-Date */
    uint64_t now_s;         /* Unix seconds: Date: and Last-Attempt-Date */
    bool expired;           /* gave up after the queue lifetime: recipients with
                             * a code that is not 5xx are told it expired */
    const dsn_rcpt_t *rcpt;
    uint32_t nrcpt;         /* >= 1 */
    slice_t original;       /* the original message in wire form (dot-stuffed CRLF,
                             * trace headers first, no final dot) */
    uint64_t boundary;      /* the caller's random number: the MIME boundary and the
                             * Message-ID are made from it and the queue id */
} dsn_msg_t;

/*
 * The size of dsn_write's output for m, so the caller can allocate once; 0
 * when m is invalid. Exact (a dry run of dsn_write), hence an upper bound.
 */
size_t dsn_size_max(const dsn_msg_t *m);

/*
 * Write the DSN into out (cap octets). Returns the octets written; 0 when cap
 * is too small or m is invalid (no recipients, an empty sender or
 * reporting_mta), or, never in practice, when no boundary could be found that
 * the returned headers lack (only a sender who knew `boundary` could try).
 */
size_t dsn_write(char *out, size_t cap, const dsn_msg_t *m);

/*
 * unix_s as an RFC 5322 date in UTC, "Tue, 14 Nov 2023 22:13:20 +0000":
 * exactly DSN_DATE_LEN octets, no NUL. Calendar arithmetic only (no libc
 * time functions, no locale, no locks); times past 9999-12-31 23:59:59
 * are written as that.
 */
void dsn_date(char out[DSN_DATE_LEN], uint64_t unix_s);

#endif

/*
 * rspamd.h - the content stage's side of rspamd's HTTP protocol
 * (POST /checkv2), I/O-free: the request head to send before the message,
 * the response read as it arrives, the verdict in its JSON, and the headers
 * rspamd asks to add, checked and rendered in wire form.
 *
 * One exchange, with the caller doing the I/O:
 *
 *     size_t n;
 *     const char *field;
 *     if (rspamd_request_head(buf, sizeof buf, &n, &env, msg_len, &field) != RSPAMD_ERR_NONE)
 *         refuse();                           // a value that must not reach rspamd
 *     send(buf, n); send(message, msg_len);
 *     rspamd_resp_t r = { 0 };                // or rspamd_resp_init(&r, mybuf, mycap)
 *     for (;;) {                              // as bytes arrive, split anyhow
 *         switch (rspamd_resp_feed(&r, in, len, &n)) {
 *         case RSPAMD_AGAIN: continue;        // all taken; read more
 *         case RSPAMD_DONE: break;            // in[n..len) is not rspamd's answer
 *         case RSPAMD_ERROR: log(rspamd_err_name(rspamd_resp_error(&r))); ...
 *         }
 *     }
 *     rspamd_verdict_t *v = ...;              // ~70 KiB: not on a worker's stack
 *     if (rspamd_resp_code(&r) == 200 &&
 *         rspamd_verdict_parse(v, rspamd_resp_body(&r)) == RSPAMD_ERR_NONE)
 *         act(v->action);
 *     if (!rspamd_resp_keepalive(&r)) close(); // rspamd 3.4 always closes
 *     rspamd_resp_free(&r);
 *
 * Request. The envelope goes in rspamd's protocol headers: From (the null
 * sender as "<>", as rspamd's own milter proxy sends it), one Rcpt per
 * recipient, IP, Helo, Queue-Id, MTA-Name. Hostname (the client's verified
 * PTR) is left out: the gateway does not know it, and rspamd looks it up.
 * rspamd's protocol has no header for an SPF result (it checks SPF itself),
 * so none is sent. Every value comes from a client or its DNS: a value with
 * a control byte (CR, LF, TAB, NUL, DEL, any byte below 0x20) is refused,
 * the whole request is not built, and the caller is told which field. A
 * header injected into rspamd's request could forge the client's IP or
 * choose rspamd's settings.
 *
 * Response. HTTP/1.0 or 1.1, read strictly: CRLF line ends, no folded
 * headers, a body framed by Content-Length or chunked transfer coding and by
 * nothing else (no length, both, or a coding other than "chunked" is an
 * error, as is a body over the cap). Lines are gathered whole before they
 * are judged, so the result, the error and the offset it was found at depend
 * only on the bytes, never on how they were split into feeds. rspamd 3.4
 * answers every request with "Connection: close" and a Content-Length.
 *
 * JSON. The verdict is read by a small strict reader in rspamd.c (see there
 * for why not a library): objects, arrays, strings with every escape,
 * numbers, literals; nesting bounded by RSPAMD_JSON_DEPTH; anything
 * malformed is an error. Members it does not know are skipped (validated,
 * not kept).
 */
#ifndef MXGATE_RSPAMD_H
#define MXGATE_RSPAMD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "slice.h"

/* The largest response body taken; a larger one is an error as soon as its
 * length (or the chunk that crosses it) is read. rspamd's verdict on a
 * message is a few KiB, more with many symbols and their options. */
#define RSPAMD_BODY_MAX (256 * 1024)
/* The longest status, header, chunk-size or trailer line, CRLF included. */
#define RSPAMD_LINE_MAX 2048
/* The head (status line and headers) in octets and in lines. */
#define RSPAMD_HEAD_MAX 16384
#define RSPAMD_HEAD_LINES 64
/* Objects and arrays nested in the JSON body. rspamd's own go 5 deep. */
#define RSPAMD_JSON_DEPTH 32
/* Headers to add and to remove kept from milter.add_headers/remove_headers;
 * more are dropped (and counted). */
#define RSPAMD_ADD_MAX 32
#define RSPAMD_REMOVE_MAX 32
/* Text of the header names and values and the subject. */
#define RSPAMD_ARENA_MAX 65536
/* A header name rspamd may ask for (RFC 5322 allows more; nobody needs it). */
#define RSPAMD_NAME_MAX 128
/* messages.smtp_message and error, after sanitizing. */
#define RSPAMD_TEXT_MAX 400
/* An Internet Message Format line, CRLF excluded (RFC 5322 2.1.1). */
#define RSPAMD_WIRE_LINE_MAX 998

/* One vocabulary for the module; sticky in a rspamd_resp_t. */
typedef enum rspamd_err {
    RSPAMD_ERR_NONE = 0,
    /* building the request */
    RSPAMD_ERR_UNSAFE_VALUE, /* "unsafe_value": a control byte in a value */
    RSPAMD_ERR_NO_ROOM,      /* "no_room": the output buffer is too small */
    /* reading the response */
    RSPAMD_ERR_STATUS,       /* "bad_status_line": not "HTTP/1.x DDD reason",
                              * or a 1xx (nothing was asked that calls for one) */
    RSPAMD_ERR_VERSION,      /* "bad_http_version": not HTTP/1.0 or 1.1 */
    RSPAMD_ERR_HEADER,       /* "bad_header": no colon, a name that is not a
                              * token, space before the colon, a control byte,
                              * a folded line, a bare CR or LF */
    RSPAMD_ERR_LINE_TOO_LONG, /* "line_too_long": over RSPAMD_LINE_MAX */
    RSPAMD_ERR_HEAD_TOO_LARGE, /* "head_too_large": over RSPAMD_HEAD_MAX
                                * octets or RSPAMD_HEAD_LINES lines */
    RSPAMD_ERR_LENGTH,       /* "bad_content_length": not digits, too large
                              * for 64 bits, or two that differ */
    RSPAMD_ERR_NO_LENGTH,    /* "no_content_length": neither a length nor
                              * chunked (the end of the connection does not
                              * frame a body here) */
    RSPAMD_ERR_FRAMING,      /* "ambiguous_framing": a length and chunked */
    RSPAMD_ERR_ENCODING,     /* "unsupported_transfer_encoding": a coding
                              * other than "chunked" alone */
    RSPAMD_ERR_CHUNK,        /* "bad_chunk": a chunk size that is not hex, or
                              * data not followed by CRLF */
    RSPAMD_ERR_BODY_TOO_LARGE, /* "body_too_large": over the body cap */
    RSPAMD_ERR_NO_MEMORY,    /* "no_memory": the one body allocation failed */
    /* reading the verdict */
    RSPAMD_ERR_JSON,         /* "bad_json": not one well-formed JSON object */
    RSPAMD_ERR_JSON_DEPTH,   /* "json_too_deep": over RSPAMD_JSON_DEPTH */
    RSPAMD_ERR_FIELD,        /* "bad_field": action, score, required_score,
                              * is_skipped, subject, error, messages (or its
                              * smtp_message) or symbols of the wrong JSON
                              * type (what milter holds is advisory: a wrong
                              * type there is dropped and counted) */
    RSPAMD_ERR_NO_ACTION,    /* "no_action": no action member (an error reply
                              * has "error" instead: see verdict.error) */
    RSPAMD_ERR_ACTION,       /* "unknown_action": an action not listed below */
} rspamd_err_t;

/* The error's name, for logs and counters ("?" outside the enum). Static. */
const char *rspamd_err_name(rspamd_err_t e);

/* ---- the request ---- */

/*
 * The envelope of one message. Slices are read during the call only. An
 * empty ip, helo, queue_id or mta_name leaves its header out; an empty
 * sender is the null sender. Bytes 0x20-0x7e and 0x80-0xff are allowed
 * (SMTPUTF8 addresses); ip only hex digits, '.' and ':'.
 */
typedef struct rspamd_env {
    slice_t ip;           /* the client's address as text */
    slice_t helo;         /* what it said in HELO/EHLO */
    slice_t sender;       /* the reverse-path's mailbox, without <> */
    const slice_t *rcpts; /* the recipients' mailboxes, without <> */
    size_t nrcpts;
    slice_t queue_id;     /* ours, so rspamd's log and ours meet */
    slice_t mta_name;     /* our host name, for rspamd's Authentication-Results */
} rspamd_env_t;

/*
 * The head of "POST /checkv2 HTTP/1.1" with Connection: keep-alive, the
 * envelope headers and Content-Length: body_len, ending with the blank line;
 * the body (the message as it will be delivered) follows it. Written to
 * out[0..*len); nothing is promised about out on an error. Returns
 * RSPAMD_ERR_UNSAFE_VALUE with *field naming the header ("Helo", "Rcpt", ...)
 * when a value is refused, RSPAMD_ERR_NO_ROOM when cap is too small. field
 * may be NULL.
 */
rspamd_err_t rspamd_request_head(char *out, size_t cap, size_t *len, const rspamd_env_t *env, uint64_t body_len,
                                 const char **field) __attribute__((warn_unused_result));

/* ---- the response ---- */

enum rspamd_status {
    RSPAMD_AGAIN, /* everything given was taken (*consumed == len); read more */
    RSPAMD_DONE,  /* the response ended at in[*consumed - 1]; anything after
                   * it is not part of it (rspamd sends nothing more) */
    RSPAMD_ERROR, /* rspamd_resp_error() says why; *consumed is 0; close */
};

/*
 * One response's reader; fields are private. Zeroed, it is ready and the
 * body gets one allocation when its size is known (the Content-Length, or
 * RSPAMD_BODY_MAX for a chunked body), released by rspamd_resp_free(); after
 * rspamd_resp_init() with a buffer it uses that buffer, whose size is then
 * the body cap. ~2.1 KiB.
 */
typedef struct rspamd_resp {
    uint8_t _state;      /* rspamd.c's enum */
    uint8_t _err;        /* rspamd_err_t; non-zero: every feed fails */
    uint8_t _flags;      /* rspamd.c's F_* */
    uint16_t _code;      /* the status code */
    uint16_t _line_len;  /* octets of the line being gathered in _line */
    uint16_t _lines;     /* lines of the head so far */
    uint32_t _head_len;  /* octets of the head so far */
    uint64_t _clen;      /* Content-Length, then the current chunk's rest */
    size_t _pos;         /* octets taken before the line in _line; on
                          * error, where it was found */
    size_t _body_len;    /* body octets so far */
    size_t _cap;         /* the body buffer's size (0: not yet allocated) */
    char *_body;
    char _line[RSPAMD_LINE_MAX];
} rspamd_resp_t;

/* Start afresh with a caller-owned body buffer of cap octets, which is then
 * the body cap. body NULL: as zeroed. */
void rspamd_resp_init(rspamd_resp_t *r, char *body, size_t cap);

/* Frees the body allocation, if one was made; the reader is then zeroed. */
void rspamd_resp_free(rspamd_resp_t *r);

/*
 * Read in[0..len) as the next bytes of the response. in may be NULL when len
 * is 0. After DONE every call returns DONE and takes nothing; after ERROR
 * every call returns ERROR and takes nothing, until rspamd_resp_init() or
 * _free().
 */
enum rspamd_status rspamd_resp_feed(rspamd_resp_t *r, const char *in, size_t len, size_t *consumed)
    __attribute__((warn_unused_result));

static inline rspamd_err_t rspamd_resp_error(const rspamd_resp_t *r)
{
    return (rspamd_err_t)r->_err;
}

/* The status code (0 until the status line is in). rspamd says 200 with a
 * verdict, 4xx/5xx with {"error": ...}. */
static inline int rspamd_resp_code(const rspamd_resp_t *r)
{
    return r->_code;
}

/* Octets taken so far; after ERROR, the offset of the line that revealed it
 * (0 for the status line). */
size_t rspamd_resp_offset(const rspamd_resp_t *r);

/* Whether the connection may carry another request once DONE: HTTP/1.1
 * without "Connection: close", or HTTP/1.0 with "Connection: keep-alive". */
bool rspamd_resp_keepalive(const rspamd_resp_t *r);

/* The body once DONE (empty before): valid until _free() or _init(). */
slice_t rspamd_resp_body(const rspamd_resp_t *r);

/* ---- the verdict ---- */

typedef enum rspamd_action {
    RSPAMD_NO_ACTION = 0,     /* "no action" */
    RSPAMD_GREYLIST,          /* "greylist" */
    RSPAMD_ADD_HEADER,        /* "add header" */
    RSPAMD_REWRITE_SUBJECT,   /* "rewrite subject": see verdict.subject */
    RSPAMD_SOFT_REJECT,       /* "soft reject" */
    RSPAMD_REJECT,            /* "reject" */
} rspamd_action_t;

/* rspamd's own spelling ("no action"), for logs; "?" outside the enum. */
const char *rspamd_action_name(rspamd_action_t a);

/*
 * An authentication result from rspamd's symbols, in RFC 8601's words.
 * ABSENT: rspamd named no symbol for it (the module is off, or the scan
 * stopped early, as for GTUBE).
 *   DKIM:  R_DKIM_ALLOW pass, R_DKIM_REJECT fail, R_DKIM_TEMPFAIL temperror,
 *          R_DKIM_PERMFAIL permerror, R_DKIM_NA none.
 *   DMARC: DMARC_POLICY_ALLOW and DMARC_POLICY_ALLOW_WITH_FAILURES pass;
 *          DMARC_POLICY_REJECT, _QUARANTINE, _SOFTFAIL fail (with the policy
 *          in dmarc_policy; SOFTFAIL is a failure under p=none);
 *          DMARC_DNSFAIL temperror; DMARC_BAD_POLICY permerror; DMARC_NA none.
 *   ARC:   ARC_ALLOW pass, ARC_REJECT fail, ARC_DNSFAIL temperror,
 *          ARC_INVALID permerror, ARC_NA none.
 * (Names as rspamd 3.4 defines them: lualib/plugins/dmarc.lua, plugins/arc.lua.)
 * When several symbols of one mechanism come (two DKIM signatures), the
 * result is the first of pass, fail, temperror, permerror, none that came;
 * *_seen has a bit (1 << result) for each.
 */
typedef enum rspamd_auth {
    RSPAMD_AUTH_ABSENT = 0, /* "absent" */
    RSPAMD_AUTH_PASS,       /* "pass" */
    RSPAMD_AUTH_FAIL,       /* "fail" */
    RSPAMD_AUTH_TEMPERROR,  /* "temperror" */
    RSPAMD_AUTH_PERMERROR,  /* "permerror" */
    RSPAMD_AUTH_NONE,       /* "none" */
} rspamd_auth_t;

const char *rspamd_auth_name(rspamd_auth_t a);

typedef enum rspamd_dmarc_policy {
    RSPAMD_DMARC_POLICY_UNKNOWN = 0, /* "-": no failure, or none named */
    RSPAMD_DMARC_POLICY_NONE,        /* "none" (DMARC_POLICY_SOFTFAIL) */
    RSPAMD_DMARC_POLICY_QUARANTINE,  /* "quarantine" */
    RSPAMD_DMARC_POLICY_REJECT,      /* "reject" */
} rspamd_dmarc_policy_t;

/* "-", "none", "quarantine", "reject"; "?" outside the enum. */
const char *rspamd_dmarc_policy_name(rspamd_dmarc_policy_t p);

/* A header to add: name and value point into the verdict's arena. value may
 * hold folds (CRLF then SP or HTAB), never a bare CR or LF. */
typedef struct rspamd_header {
    slice_t name;
    slice_t value;
    int order; /* rspamd's: 0, 1, ... a position among the headers; negative:
                * after all of them */
} rspamd_header_t;

/* A header to remove: rspamd's index (0: every instance, n: the nth,
 * negative: counted from the last). */
typedef struct rspamd_remove {
    slice_t name;
    int index;
} rspamd_remove_t;

/*
 * What rspamd said. Slices point into this struct (its arena and text
 * fields): valid while it is neither freed, moved nor parsed into again.
 * Large (the arena): allocate it, do not put it on a stack.
 */
typedef struct rspamd_verdict {
    rspamd_action_t action;
    double score, required_score; /* 0 when absent */
    bool is_skipped;              /* rspamd stopped early (GTUBE, a pre-result) */
    slice_t smtp_message;         /* messages.smtp_message: printable ASCII
                                   * only (a run of white space one SP,
                                   * another control byte dropped, a non-ASCII
                                   * character '?'), at most RSPAMD_TEXT_MAX
                                   * octets; empty when absent */
    slice_t error;                /* "error" of a 4xx/5xx reply, sanitized the
                                   * same way */
    slice_t subject;              /* "subject" (rewrite subject): raw UTF-8,
                                   * unfolded, checked like a header value;
                                   * empty when absent or refused */
    rspamd_auth_t dkim, dmarc, arc;
    uint8_t dkim_seen, dmarc_seen, arc_seen; /* bit (1 << rspamd_auth_t) */
    rspamd_dmarc_policy_t dmarc_policy;
    size_t nadd;
    rspamd_header_t add[RSPAMD_ADD_MAX];   /* in the order rspamd listed them */
    size_t nremove;
    rspamd_remove_t remove[RSPAMD_REMOVE_MAX];
    unsigned dropped;             /* headers to add or remove, and a subject,
                                   * refused: a name that is not ftext, a
                                   * value with a bare CR/LF or a control
                                   * byte or bad UTF-8, a line that cannot
                                   * be folded under 998 octets, a malformed
                                   * entry, or no room left */
    size_t arena_len;
    char arena[RSPAMD_ARENA_MAX];
    char text[2][RSPAMD_TEXT_MAX];  /* smtp_message, error */
} rspamd_verdict_t;

/*
 * Read a /checkv2 JSON body into *v (overwritten whole). RSPAMD_ERR_NONE
 * when it is a well-formed object with a known action; otherwise the reason,
 * with whatever was read before it left in *v for the log (v->error of an
 * error reply in particular). A header rspamd asks for that fails the checks
 * above is dropped and counted, never an error: the verdict stands.
 */
rspamd_err_t rspamd_verdict_parse(rspamd_verdict_t *v, slice_t json) __attribute__((warn_unused_result));

/*
 * The headers of v->add as wire-form lines ("Name: value\r\n", the value's
 * folds kept, a line longer than RSPAMD_WIRE_LINE_MAX folded at the last
 * white space that fits), to put above the message: the headers with an
 * order of 0 or more first, by order, then the rest, each group in rspamd's
 * order. out[0..*len); RSPAMD_ERR_NO_ROOM when cap is too small.
 */
rspamd_err_t rspamd_render_headers(const rspamd_verdict_t *v, char *out, size_t cap, size_t *len)
    __attribute__((warn_unused_result));

/*
 * "Subject: <v->subject>\r\n", folded as above, to replace the message's
 * Subject. Without utf8 (the message is not SMTPUTF8) a subject that is not
 * all ASCII is written as RFC 2047 encoded-words (UTF-8, base64). An empty
 * subject writes nothing (*len 0).
 */
rspamd_err_t rspamd_render_subject(const rspamd_verdict_t *v, bool utf8, char *out, size_t cap, size_t *len)
    __attribute__((warn_unused_result));

/* Whether name is a field name (RFC 5322 ftext, 1..RSPAMD_NAME_MAX octets)
 * and value a field body that can follow it (see rspamd_header_t), foldable
 * under RSPAMD_WIRE_LINE_MAX. */
bool rspamd_header_ok(slice_t name, slice_t value);

#endif

/*
 * smtp.h - the SMTP server protocol engine (RFC 5321, with 1870, 2920, 3463,
 * 6152 and 6531). I/O-free: bytes in, events and reply bytes out.
 *
 * The caller owns an smtp_t (zero it, then smtp_init), feeds it byte slices as
 * they arrive and pulls events one at a time:
 *
 *     for (;;) {
 *         size_t n;
 *         smtp_status_t st = smtp_feed(s, p, len, &n, &ev);
 *         p += n, len -= n;
 *         if (st == SMTP_EVENT) { handle(&ev); continue; }   // may call smtp_accept
 *         break;           // AGAIN: need bytes; PAUSED: await a verdict;
 *     }                    // FULL: send out and call again; CLOSED: send, close
 *
 * Events for HELO, EHLO, MAIL, RCPT, DATA and end of data want a verdict:
 * the engine stops (SMTP_PAUSED, consuming nothing) until the caller calls
 * smtp_accept() or smtp_reply(), now or later (after an SPF lookup, after the
 * downstream answered). Every other command is answered by the engine itself
 * and reported for logging. Replies are appended to the smtp_out_t given at
 * init, always in command order, so a pipelined group is answered in one send.
 *
 * Slices in an event point into the caller's input or into the engine's small
 * carry buffer (a command split across feeds). They stay valid until the next
 * smtp_feed() and as long as the caller keeps its input; a verdict call does
 * not invalidate them. The engine allocates only the carry buffer, once, the
 * first time a command arrives split, and frees it in smtp_free().
 *
 * The engine's output depends only on the bytes, never on how they were split
 * into feeds: tests feed every sample at every split and compare event logs.
 *
 * Replies (the enhanced code decides a test's expectation; texts may change):
 *   greeting 220; HELO 250; EHLO 250 with PIPELINING, SIZE, 8BITMIME,
 *   ENHANCEDSTATUSCODES, SMTPUTF8 (optional); MAIL 250 2.1.0; RCPT 250 2.1.5;
 *   DATA 354; end of data 250 2.0.0 (or the caller's verdict); RSET/NOOP
 *   250 2.0.0; QUIT 221 2.0.0; VRFY 252 2.5.2; EXPN 502 5.5.1; HELP 214 2.0.0.
 *   Unknown verb 500 5.5.2; SEND/SOML/SAML/TURN/ETRN/BDAT/AUTH/STARTTLS
 *   502 5.5.1; wrong order 503 5.5.1; syntax 501 5.5.4 (addresses 501 5.1.7
 *   sender, 501 5.1.3 recipient); unknown parameter 555 5.5.4; non-ASCII
 *   address without SMTPUTF8 553 5.6.7; SIZE= over the limit 552 5.3.4; too
 *   many recipients 452 4.5.3; DATA with no accepted recipient 554 5.5.1;
 *   command line too long, bare LF/CR or control bytes in a command 500 5.5.2
 *   (with bare_newline = normalize a bare LF ends a command line instead);
 *   body too large 552 5.3.4, body with bare LF/CR or a long line 554 5.5.2
 *   (after the final dot); too many errors 421 4.7.0 and close; a client that
 *   talks before the greeting 554 5.5.0 and close; HTTP requests or mail
 *   headers sent as commands 221 2.7.0 and close.
 */
#ifndef MXGATE_SMTP_H
#define MXGATE_SMTP_H

#include <stdbool.h>
#include <stdint.h>

#include "addr.h"
#include "reply.h"
#include "scan.h"
#include "slice.h"

/*
 * Room the engine wants free in the output buffer before it starts a command:
 * the command's reply (at most a line) plus a 421 it may add. An output
 * buffer must be at least this large; below it, smtp_feed answers FULL.
 */
#define SMTP_OUT_MIN (2 * REPLY_LINE_MAX)

typedef struct smtp_config {
    slice_t hostname;        /* in the greeting, EHLO and 421 replies */
    uint32_t line_max;       /* command line octets with CRLF (RFC: 512) */
    uint32_t text_line_max;  /* body line octets with CRLF (RFC: 1000) */
    uint32_t rcpt_max;       /* recipients per message (RFC minimum: 100) */
    uint32_t error_max;      /* error replies per session before 421 */
    uint64_t size_max;       /* message octets; 0: no limit */
    uint8_t bare_newline;    /* enum scan_bare: reject (default) or normalize */
    bool smtputf8;           /* advertise and accept SMTPUTF8 */
} smtp_config_t;

/* Fill the RFC defaults: 512, 1000, 100 recipients, 20 errors, 10 MiB. */
void smtp_config_defaults(smtp_config_t *c, slice_t hostname);

typedef enum smtp_ev_type {
    SMTP_EV_NONE = 0,
    SMTP_EV_EARLY_TALK,    /* input before the greeting; replied 554, closed */
    SMTP_EV_HELO,          /* verdict; arg = the name given */
    SMTP_EV_EHLO,          /* verdict; arg = the name given */
    SMTP_EV_MAIL,          /* verdict; path, params */
    SMTP_EV_RCPT,          /* verdict; path */
    SMTP_EV_DATA,          /* verdict; accept sends 354 */
    SMTP_EV_BODY,          /* arg = body bytes in wire form (dot-stuffed, CRLF) */
    SMTP_EV_DATA_END,      /* verdict: the message's reply; body complete */
    SMTP_EV_DATA_REJECTED, /* the body broke a limit; replied; tx is over */
    SMTP_EV_RSET,          /* replied; any transaction is gone */
    SMTP_EV_NOOP,
    SMTP_EV_QUIT,          /* replied 221; the session closes */
    SMTP_EV_VRFY,
    SMTP_EV_EXPN,
    SMTP_EV_HELP,
    SMTP_EV_ERROR,         /* a command refused by the engine; replied */
} smtp_ev_type_t;

typedef enum smtp_err {
    SMTP_ERR_NONE = 0,
    SMTP_ERR_LINE_TOO_LONG,
    SMTP_ERR_BARE_LF,
    SMTP_ERR_CONTROL,   /* bare CR, NUL or another control byte */
    SMTP_ERR_UNKNOWN,   /* verb not recognized */
    SMTP_ERR_NOT_IMPL,  /* a verb we know but do not do */
    SMTP_ERR_SEQUENCE,  /* 503 */
    SMTP_ERR_SYNTAX,    /* 501 */
    SMTP_ERR_PARAM,     /* 555 */
    SMTP_ERR_UTF8,      /* 553 */
    SMTP_ERR_SIZE,      /* 552 at MAIL */
    SMTP_ERR_RCPT_MAX,  /* 452 */
    SMTP_ERR_NO_RCPT,   /* 554 at DATA */
    SMTP_ERR_JUNK,      /* HTTP or header as a command; closed */
    SMTP_ERR_TOO_MANY,  /* error limit; closed */
    SMTP_ERR_BODY_BARE_LF,
    SMTP_ERR_BODY_BARE_CR,
    SMTP_ERR_BODY_LINE,
    SMTP_ERR_BODY_SIZE,
} smtp_err_t;

const char *smtp_err_name(smtp_err_t e);
const char *smtp_ev_name(smtp_ev_type_t t);

typedef struct smtp_event {
    smtp_ev_type_t type;
    smtp_err_t err;            /* ERROR, DATA_REJECTED */
    slice_t arg;               /* HELO name, body bytes, VRFY/HELP argument, bad line */
    smtp_path_t path;          /* MAIL, RCPT */
    smtp_mail_params_t params; /* MAIL */
} smtp_event_t;

typedef enum smtp_status {
    SMTP_EVENT,  /* *ev is filled */
    SMTP_AGAIN,  /* all input consumed; feed more */
    SMTP_PAUSED, /* a verdict is pending; nothing consumed */
    SMTP_FULL,   /* the output buffer needs sending first */
    SMTP_CLOSED, /* session over: send the output, then close */
} smtp_status_t;

enum smtp_state {
    SMTP_S_CONNECT = 0, /* before the greeting */
    SMTP_S_INIT,        /* greeted, no HELO yet */
    SMTP_S_HELO,        /* HELO/EHLO done, no transaction */
    SMTP_S_MAIL,        /* MAIL accepted */
    SMTP_S_RCPT,        /* at least one RCPT accepted */
    SMTP_S_DATA,        /* reading the body */
    SMTP_S_CLOSED,
};

/* The transaction: begins at MAIL, ends at end of data, RSET, HELO or abort. */
typedef struct smtp_tx {
    smtp_mail_params_t params;
    uint32_t rcpt_ok;      /* accepted recipients */
    uint32_t rcpt_tried;   /* RCPT commands that reached a verdict or a 452 */
    scan_t scan;           /* body state, valid in SMTP_S_DATA */
} smtp_tx_t;

typedef struct smtp {
    const smtp_config_t *cfg;
    smtp_out_t *out;
    char *_carry;          /* partial command line, allocated on first use */
    uint16_t _carry_len;
    uint8_t state;         /* enum smtp_state */
    uint8_t _pending;      /* smtp_ev_type_t awaiting a verdict, or 0 */
    uint8_t _skip;         /* discarding the rest of an over-long line */
    uint8_t _dq_mail;      /* deferred verdicts, oldest first: a MAIL, */
    uint8_t _dq_data;      /* ...then RCPTs (_dq_rcpt), then a DATA */
    bool _mail_failed;     /* a deferred MAIL was refused: its RCPTs and DATA get 503 */
    uint32_t _dq_rcpt;
    bool esmtp;            /* the client said EHLO */
    bool utf8;             /* this transaction asked for SMTPUTF8 */
    uint32_t errors;
    uint32_t commands;
    uint32_t messages;     /* messages whose end of data was reached */
    uint64_t last_size;    /* body octets of the last message, kept past its end */
    smtp_tx_t tx;
} smtp_t;

void smtp_init(smtp_t *s, const smtp_config_t *cfg, smtp_out_t *out);
void smtp_free(smtp_t *s);

/* Send the 220 greeting; input that arrived before this is early talk. */
void smtp_greet(smtp_t *s);

smtp_status_t smtp_feed(smtp_t *s, const char *in, size_t len, size_t *consumed, smtp_event_t *ev)
    __attribute__((warn_unused_result));

/* The default positive reply for the pending command. */
void smtp_accept(smtp_t *s);

/*
 * Answer the pending command with this reply: 2xx/3xx accepts it (custom
 * text), 4xx/5xx refuses it. `esc` is an enhanced code or NULL for none.
 */
void smtp_reply(smtp_t *s, int code, const char *esc, const char *text);

/* Is a verdict pending, and for which event? */
static inline smtp_ev_type_t smtp_pending(const smtp_t *s)
{
    return (smtp_ev_type_t)s->_pending;
}

/*
 * Pipelining through to a downstream (RFC 2920): instead of answering the
 * pending MAIL, RCPT or DATA now, promise the verdict for later and let the
 * engine read on, so a client's MAIL, RCPT..., DATA group can be forwarded
 * in one write. Deferred verdicts are given with smtp_resolve(), oldest
 * first. The engine reads on only while every following command is one
 * that waits for a verdict (MAIL, RCPT, DATA): before any command it would
 * answer itself, and after a DATA, it stops (SMTP_PAUSED) until every
 * deferred verdict is in, so replies stay in command order. While verdicts
 * are deferred a newly pending event must be deferred too, or answered
 * only after the deferred ones are resolved (smtp_reply() does nothing
 * until then). A refused MAIL makes its deferred RCPTs and DATA 503.
 */
void smtp_defer(smtp_t *s);
void smtp_resolve(smtp_t *s, int code, const char *esc, const char *text);

static inline unsigned smtp_deferred(const smtp_t *s)
{
    return s->_dq_mail + s->_dq_rcpt + s->_dq_data;
}

/* Which command the next smtp_resolve() answers. */
static inline smtp_ev_type_t smtp_deferred_head(const smtp_t *s)
{
    return s->_dq_mail ? SMTP_EV_MAIL : s->_dq_rcpt ? SMTP_EV_RCPT : s->_dq_data ? SMTP_EV_DATA : SMTP_EV_NONE;
}

/* End the session with a reply (421 on timeout, shutdown, overload). */
void smtp_close(smtp_t *s, int code, const char *esc, const char *text);

#endif

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
 * Events for HELO, EHLO, MAIL, RCPT, DATA, end of data and STARTTLS want a
 * verdict.
 * Each takes a slot in the session's reply queue (core/replyq.h), named in
 * ev.slot; the caller fills it with smtp_verdict() or smtp_accept(), now or
 * later (after an SPF lookup, after the downstream answered), in any order.
 * Replies leave in command order, whatever order the verdicts come in.
 * Every other command is answered by the engine itself and reported for
 * logging. Replies are appended to the smtp_out_t given at init, so a
 * pipelined group is answered in one send.
 *
 * Reading ahead (RFC 2920): while MAIL and RCPT verdicts are open, the engine
 * reads on as long as the next command is another RCPT or a DATA that passes
 * its checks, with the state moved on as if the open verdicts were positive;
 * the verdicts, applied in command order, correct it (a refused MAIL turns
 * the RCPTs and DATA behind it into 503, or into the MAIL's own reply when
 * that refusal was not the client's fault: SMTP_R_PEER; so do the RCPTs and
 * DATA a pipelining client sent blind after a MAIL refused that way at once,
 * until its next MAIL, RSET or HELO, uncounted; and a DATA whose recipients
 * were all refused that way gets their reply rather than 554). Any other command
 * waits (SMTP_PAUSED) until every open verdict is in; nothing is read after
 * DATA, HELO/EHLO, STARTTLS or the end of data until theirs is.
 *
 * STARTTLS (RFC 3207; cfg->tls not off): the engine does the protocol, the
 * caller the TLS. STARTTLS ends a pipelined group: it is read only once
 * every open verdict is in and, outside a transaction and while the session
 * is still in plaintext, becomes SMTP_EV_STARTTLS. Accepted (smtp_accept:
 * 220 2.0.0), the engine enters SMTP_S_TLS (smtp_tls_pending): from then on
 * smtp_feed discards every byte it is given, unanswered, because plaintext
 * a client pipelined behind STARTTLS must never be taken as if it had come
 * through TLS (CVE-2011-0411). The caller sends the output (the 220 is its
 * last plaintext), does the handshake and calls smtp_tls_started(): the
 * session starts over as right after the greeting, encrypted, and the
 * client speaks first (EHLO). A refusal (454 4.7.0 when TLS cannot be had)
 * leaves the session as it was, in plaintext; like other refusals it counts
 * as the client's error unless flagged SMTP_R_PEER.
 *
 * Slices in an event point into the caller's input or into the engine's small
 * carry buffer (a command split across feeds). They stay valid until the next
 * smtp_feed() and as long as the caller keeps its input; a verdict call does
 * not invalidate them. The engine allocates only the carry buffer, once, the
 * first time a command arrives split, and frees it in smtp_free().
 *
 * The engine's output depends only on the bytes, never on how they were split
 * into feeds: tests feed every sample at every split and compare event logs.
 * The one exception is by design: postscreen's pipelining test asks whether
 * a command came in the same read as the HELO/EHLO before it, i.e. before
 * its reply was sent; it is off (ignore, only remembered) by default.
 *
 * Protocol tests (postscreen's): a command behind HELO/EHLO in the same
 * read (cfg->on_pipelining), HTTP or a mail header as a command
 * (on_non_smtp), a command line ended by a bare LF (on_bare_newline). Each
 * failure sets its bit in violations; the action is ignore (the command is
 * handled as usual), enforce (as usual, and every later RCPT gets
 * 550 5.5.1: the client can go on, and be logged, but no mail gets in) or
 * drop (521 5.5.1 and close; a non-SMTP command gets Postfix's
 * 221 2.7.0 instead).
 *
 * Replies (the enhanced code decides a test's expectation; texts may change):
 *   greeting 220; HELO 250; EHLO 250 with PIPELINING, SIZE, STARTTLS (tls
 *   not off, not yet encrypted), 8BITMIME, ENHANCEDSTATUSCODES, SMTPUTF8
 *   (optional); MAIL 250 2.1.0; RCPT 250 2.1.5; DATA 354; end of data
 *   250 2.0.0 (or the caller's verdict); RSET/NOOP 250 2.0.0; QUIT 221 2.0.0;
 *   VRFY 252 2.5.2; EXPN 502 5.5.1; HELP 214 2.0.0; STARTTLS 220 2.0.0 (or
 *   the caller's verdict), 503 5.5.1 when TLS is already on or inside a
 *   transaction, 501 5.5.4 with an argument; MAIL before STARTTLS with
 *   tls = encrypt 530 5.7.0. Unknown verb 500 5.5.2;
 *   SEND/SOML/SAML/TURN/ETRN/BDAT/AUTH, and STARTTLS with tls = off,
 *   502 5.5.1; wrong order 503 5.5.1; syntax 501 5.5.4 (addresses 501 5.1.7
 *   sender, 501 5.1.3 recipient); unknown parameter 555 5.5.4; non-ASCII
 *   address without SMTPUTF8 553 5.6.7; SIZE= over the limit 552 5.3.4; too
 *   many recipients 452 4.5.3; DATA with no accepted recipient 554 5.5.1;
 *   command line too long, bare LF/CR or control bytes in a command 500 5.5.2
 *   (with bare_newline = normalize a bare LF ends a command line instead);
 *   body too large 552 5.3.4, body with bare LF/CR or a long line 554 5.5.2
 *   (after the final dot); too many errors 421 4.7.0 and close; a client that
 *   talks before the greeting 554 5.5.0 and close; HTTP requests or mail
 *   headers sent as commands 221 2.7.0 and close (on_non_smtp = drop, the
 *   default); a failed protocol test with drop 521 5.5.1 and close, with
 *   enforce every RCPT after it 550 5.5.1.
 */
#ifndef MXGATE_SMTP_H
#define MXGATE_SMTP_H

#include <stdbool.h>
#include <stdint.h>

#include "addr.h"
#include "reply.h"
#include "replyq.h"
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
    uint8_t tls;             /* enum smtp_tls: STARTTLS off (default), offered, required */
    /* postscreen's protocol tests, each an enum smtp_va (defaults: ignore,
     * drop, ignore): */
    uint8_t on_pipelining;   /* a command behind HELO/EHLO before its reply */
    uint8_t on_non_smtp;     /* HTTP or a mail header as a command */
    uint8_t on_bare_newline; /* a command line ended by a bare LF */
} smtp_config_t;

/* What a client that fails a protocol test gets (postscreen's actions).
 * Each failure is remembered in smtp_t.violations either way. */
enum smtp_va {
    SMTP_VA_IGNORE = 0, /* the command is handled as usual */
    SMTP_VA_ENFORCE,    /* ... and every later RCPT gets 550 5.5.1: the client may go on, no mail gets in */
    SMTP_VA_DROP,       /* 521 5.5.1 and the session closes (a non-SMTP command: Postfix's 221 2.7.0) */
};

/* smtp_t.violations: the tests a client failed. */
enum {
    SMTP_V_PIPELINING = 1 << 0,
    SMTP_V_NON_SMTP = 1 << 1,
    SMTP_V_BARE_NEWLINE = 1 << 2,
};
#define SMTP_V_COUNT 3

/* STARTTLS (RFC 3207). Zero is off, so a zeroed config is as before it. */
enum smtp_tls {
    SMTP_TLS_OFF = 0,  /* not offered: STARTTLS is 502 */
    SMTP_TLS_MAY,      /* offered in EHLO; plaintext mail is taken too */
    SMTP_TLS_ENCRYPT,  /* offered, and MAIL before it is 530 5.7.0 (RFC 3207 4) */
};

/* Fill the RFC defaults: 512, 1000, 100 recipients, 20 errors, 10 MiB,
 * no STARTTLS. */
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
    SMTP_EV_STARTTLS,      /* verdict; accept sends 220, then the handshake */
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
    SMTP_ERR_TLS_REQUIRED, /* 530 at MAIL: tls = encrypt and no STARTTLS yet */
    SMTP_ERR_PROTOCOL,  /* a protocol test failed: 521 and closed (drop), or a RCPT's 550 5.5.1 (enforce) */
} smtp_err_t;

const char *smtp_err_name(smtp_err_t e);
const char *smtp_ev_name(smtp_ev_type_t t);

typedef struct smtp_event {
    smtp_ev_type_t type;
    smtp_err_t err;            /* ERROR, DATA_REJECTED */
    slice_t arg;               /* HELO name, body bytes, VRFY/HELP argument, bad line */
    smtp_path_t path;          /* MAIL, RCPT */
    smtp_mail_params_t params; /* MAIL */
    uint32_t slot;             /* verdict events: the reply slot to fill */
} smtp_event_t;

/* Does an event of this type take a reply slot (want a verdict)? */
static inline bool smtp_ev_wants_verdict(smtp_ev_type_t t)
{
    return t == SMTP_EV_HELO || t == SMTP_EV_EHLO || t == SMTP_EV_MAIL || t == SMTP_EV_RCPT || t == SMTP_EV_DATA ||
           t == SMTP_EV_DATA_END || t == SMTP_EV_STARTTLS;
}

typedef enum smtp_status {
    SMTP_EVENT,  /* *ev is filled */
    SMTP_AGAIN,  /* all input consumed; feed more */
    SMTP_PAUSED, /* waiting for a verdict; nothing consumed */
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
    SMTP_S_TLS,         /* STARTTLS accepted: input discarded until smtp_tls_started
                         * (after CLOSED: the values before it stay as they were) */
};

/* The transaction: begins at MAIL, ends at end of data, RSET, HELO or abort. */
typedef struct smtp_tx {
    smtp_mail_params_t params;
    uint32_t rcpt_ok;      /* accepted recipients */
    uint32_t rcpt_tried;   /* RCPT commands that reached a verdict or a 452 */
    bool rcpt_client_refused; /* a RCPT was refused for the client's own fault */
    uint16_t rcpt_peer_code;  /* the last RCPT refused for a peer's trouble (SMTP_R_PEER) */
    char rcpt_peer_esc[RQ_ESC_MAX + 1];
    scan_t scan;           /* body state, valid in SMTP_S_DATA */
} smtp_tx_t;

/* Most reply slots open at once: a pipelined MAIL, its RCPTs and DATA. Past
 * it the engine stops reading until verdicts come in. */
#define SMTP_SLOTS_MAX 128

typedef struct smtp {
    const smtp_config_t *cfg;
    smtp_out_t *out;
    char *_carry;          /* partial command line, allocated on first use */
    uint16_t _carry_len;
    uint8_t state;         /* enum smtp_state */
    uint8_t _skip;         /* discarding the rest of an over-long line */
    bool _mail_failed;     /* the open MAIL was refused: RCPTs and DATA behind it follow */
    bool _mail_peer;       /* the last MAIL was refused for a peer's trouble (SMTP_R_PEER):
                            * RCPT and DATA get its reply until the next MAIL, RSET or HELO */
    uint8_t _mail_flags;   /* ... its reply's SMTP_R_* */
    uint16_t _mail_code;   /* ... and code */
    char _mail_esc[RQ_ESC_MAX + 1];
    bool esmtp;            /* the client said EHLO */
    bool _more;            /* input follows the line being handled, in the same feed */
    uint8_t violations;    /* SMTP_V_*: protocol tests failed */
    uint8_t enforced;      /* ... those whose action is enforce */
    bool tls;              /* the session is encrypted (set by smtp_tls_started) */
    uint32_t errors;
    uint32_t commands;
    uint32_t messages;     /* messages whose end of data was reached */
    uint64_t last_size;    /* body octets of the last message, kept past its end */
    replyq_t rq;           /* replies in command order */
    smtp_tx_t tx;
} smtp_t;

void smtp_init(smtp_t *s, const smtp_config_t *cfg, smtp_out_t *out);
void smtp_free(smtp_t *s);

/* Send the 220 greeting; input that arrived before this is early talk. */
void smtp_greet(smtp_t *s);

smtp_status_t smtp_feed(smtp_t *s, const char *in, size_t len, size_t *consumed, smtp_event_t *ev)
    __attribute__((warn_unused_result));

/*
 * Fill reply slot `slot` (from a verdict event). 2xx/3xx accepts the command
 * (with this text), 4xx/5xx refuses it. A slot that is no longer open (the
 * session was closed or reset since) is ignored. Replies that are now at the
 * head of the queue are written to the output at once, as far as it has
 * room; if it fills up, smtp_feed() answers SMTP_FULL and writes the rest
 * once the caller has sent and called again (or call smtp_drain()).
 */
void smtp_verdict(smtp_t *s, uint32_t slot, const smtp_reply_t *r);

/* The default positive reply for a slot: 250 2.1.0 for MAIL, 354 for DATA... */
void smtp_accept(smtp_t *s, uint32_t slot);

/* Write replies that are ready at the head as far as the output has room;
 * true when some are left for lack of room. */
bool smtp_drain(smtp_t *s);

/* Reply slots still waiting for a verdict (or for room to be written). */
static inline uint32_t smtp_open(const smtp_t *s)
{
    return replyq_len(&s->rq);
}

/* Is a command line partly received (its first byte is in, its LF not)? */
static inline bool smtp_partial(const smtp_t *s)
{
    return s->_carry_len != 0 || s->_skip;
}

/* End the session with a reply (421 on timeout, shutdown, overload). */
void smtp_close(smtp_t *s, int code, const char *esc, const char *text);

/*
 * STARTTLS was accepted and its 220 written: send the output, then start the
 * TLS handshake. Until smtp_tls_started() smtp_feed discards all input and
 * writes nothing (smtp_close still writes its reply: a caller whose
 * handshake has begun closes without sending it).
 */
static inline bool smtp_tls_pending(const smtp_t *s)
{
    return s->state == SMTP_S_TLS;
}

/*
 * The TLS handshake after STARTTLS completed. RFC 3207 4.2: the session
 * forgets what the client said before it: back to the state right after the
 * greeting (no HELO/EHLO, no transaction, no partial line, no open reply),
 * with tls set. Counters are kept; nothing is written (the client speaks
 * first). Does nothing unless smtp_tls_pending(); a failed handshake is
 * the caller's to end (close the connection).
 */
void smtp_tls_started(smtp_t *s);

#endif

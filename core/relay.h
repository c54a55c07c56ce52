/*
 * relay.h - the client side of one downstream SMTP/LMTP connection, I/O-free.
 *
 * The worker's pool owns the socket; this machine owns the protocol: the
 * handshake (greeting, EHLO or LHLO, HELO as a fallback), which reply answers
 * which command (a FIFO of expectations, each carrying the caller's token:
 * the client's reply slot), pipelined command groups (RFC 2920) or one
 * command at a time when the server does not offer PIPELINING, the body
 * state, RSET after an abandoned transaction, and what a failure means.
 *
 * Commands in; bytes to send and events out:
 *
 *     relay_mail(r, token, ...);            // relay_rcpt, relay_data, relay_eod
 *     send(relay_output(r));  relay_sent(r, n);
 *     while (relay_feed(r, p, len, &n, &ev) == RELAY_EVENT) { p += n; len -= n; route(&ev); }
 *
 * Failure: whatever ends the connection (the server closed it, a reset, a
 * send error, a timeout, a reply that does not parse or answers nothing) is
 * given to relay_fail(), or found by relay_feed() itself. From then on
 * relay_feed() yields, in command order, a REPLY of 451 4.4.1 (flagged
 * SMTP_R_PEER) for every command still owed a reply to the owner, then LOST
 * if the connection was leased (the lease is void; a body in flight has no
 * command to answer: the owner latches the failure and answers the final
 * dot), and then returns RELAY_CLOSE. Every failure path is this one. A
 * reply of the wrong kind (250 to DATA, 354 to anything else) is a failure
 * too: the two sides no longer agree on what the bytes mean.
 *
 * Ownership: a connection serves one owner at a time (relay_lease ..
 * relay_release). Released with replies still due, it drains them without
 * routing them, resets an open transaction with RSET, and yields IDLE when it
 * is clean again; released where that cannot work (inside a body, or with
 * DATA unanswered) it asks to be closed.
 *
 * Output bytes are staged in the relay until the caller takes them
 * (relay_output / relay_sent); the body does not pass through here: while
 * relay_in_body() the caller sends the client's body bytes itself, then
 * relay_eod() adds the end marker. Nothing here does I/O or keeps time: the
 * caller's timer calls relay_fail(r, RELAY_FAIL_TIMEOUT).
 *
 * Slices in an event point into the caller's input or the relay's parser;
 * they are valid until the next relay call.
 */
#ifndef MXGATE_RELAY_H
#define MXGATE_RELAY_H

#include <stdbool.h>
#include <stdint.h>

#include "addr.h"
#include "dsreply.h"
#include "replyq.h"
#include "slice.h"

/* STARTTLS towards the server (RFC 3207): not asked for; asked for when
 * the server offers it (plaintext when it does not, or refuses); required
 * (a server that does not offer it, or refuses it, fails the connection). */
enum relay_tls { RELAY_TLS_OFF = 0, RELAY_TLS_MAY, RELAY_TLS_REQUIRE };

typedef struct relay_config {
    slice_t helo;          /* our name in EHLO/LHLO/HELO */
    bool lmtp;             /* LHLO; one reply per accepted recipient after the data */
    uint32_t max_due;      /* commands that may await their replies at once */
    uint8_t starttls;      /* enum relay_tls */
} relay_config_t;

enum relay_state {
    RELAY_CONNECTING = 0, /* the TCP connect is in flight */
    RELAY_GREETING,       /* waiting for the 220 */
    RELAY_HELLO,          /* EHLO/LHLO (or the HELO fallback) sent */
    RELAY_STARTTLS,       /* STARTTLS sent: waiting for its 220 */
    RELAY_TLS,            /* 220 to STARTTLS: the caller runs the TLS handshake */
    RELAY_READY,          /* clean: may be leased, or is leased between transactions */
    RELAY_TX,             /* MAIL sent: a transaction is open */
    RELAY_BODY,           /* DATA got 354: the body goes out */
    RELAY_EOD,            /* the end marker is sent: waiting for the verdict */
    RELAY_DRAIN,          /* released with replies due: draining them (and RSET) */
    RELAY_DEAD,           /* failed or closing: close the connection */
};

/* What a reply answers. */
enum relay_kind { RK_NONE = 0, RK_GREETING, RK_HELLO, RK_HELO, RK_MAIL, RK_RCPT, RK_DATA, RK_EOD, RK_RSET, RK_STARTTLS };

enum relay_fail {
    RELAY_FAIL_NONE = 0,
    RELAY_FAIL_CLOSED,      /* the server closed the connection */
    RELAY_FAIL_RESET,       /* a receive error (reset) */
    RELAY_FAIL_SEND,        /* a send error */
    RELAY_FAIL_TIMEOUT,     /* no progress for the caller's timeout */
    RELAY_FAIL_CONNECT,     /* the connect failed */
    RELAY_FAIL_SYNTAX,      /* a reply that does not parse (core/dsreply.h) */
    RELAY_FAIL_UNEXPECTED,  /* a reply when none was due */
    RELAY_FAIL_GREETING,    /* the greeting was not 220 */
    RELAY_FAIL_HELLO,       /* EHLO/LHLO and HELO refused */
    RELAY_FAIL_RSET,        /* RSET refused */
    RELAY_FAIL_ORPHAN_DATA, /* 354 for a DATA whose client is gone */
    RELAY_FAIL_FULL,        /* more commands than max_due, or no memory */
    RELAY_FAIL_NO_TLS,      /* TLS required and the server does not offer STARTTLS */
    RELAY_FAIL_TLS_REFUSED, /* TLS required and the server refused STARTTLS */
    RELAY_FAIL_TLS,         /* the TLS handshake failed (the caller's), or TLS broke */
    RELAY_FAIL_COUNT
};

const char *relay_fail_name(enum relay_fail f);

typedef struct relay_due {
    uint8_t kind;  /* enum relay_kind */
    bool routed;   /* the owner waits for this reply (false: drained) */
    bool sent;     /* on the wire (false: held until the server is ready for it) */
    uint32_t token;
    uint32_t off, len; /* held: the command's bytes in r->held */
} relay_due_t;

typedef struct relay {
    const relay_config_t *cfg;
    uint8_t state;          /* enum relay_state */
    uint8_t fail;           /* enum relay_fail once failed */
    bool owned;             /* leased to an owner */
    bool tx_open;           /* the server has a transaction (MAIL accepted) */
    bool lost_due;          /* a LOST event is still to be given */
    bool close_due;         /* RELAY_CLOSE once the due events are given */
    bool tls;               /* the TLS handshake is done: everything since is encrypted */
    uint32_t caps;          /* DSR_CAP_* from the EHLO reply */
    uint64_t size_max;      /* the server's SIZE, 0: none */
    uint32_t rcpt_ok;       /* RCPTs accepted in this transaction (LMTP's reply count) */
    uint32_t eod_left;      /* LMTP: replies still due after the end marker */
    int eod_worst;          /* LMTP: the worst so far, its token */
    uint32_t messages;      /* transactions that reached their end-of-data verdict */
    relay_due_t *due;       /* ring of expectations, oldest first */
    uint32_t due_head, due_len, due_cap;
    uint32_t unsent;        /* dues at the tail whose commands are held (no PIPELINING) */
    char *held;             /* bytes of held commands */
    uint32_t held_len, held_cap;
    char *out;              /* bytes to send */
    uint32_t out_len, out_cap;
    char worst_text[DSR_LINE_MAX]; /* LMTP: the worst reply's text and code */
    char worst_esc[RQ_ESC_MAX + 1];
    char esc[RQ_ESC_MAX + 1];      /* the current event's enhanced code */
    uint16_t worst_len;
    dsr_t parser;
} relay_t;

enum relay_ev_type {
    RELAY_EV_READY = 1, /* handshake done: caps known, may be leased */
    RELAY_EV_REPLY,     /* the reply to the owner's command `token` (kind says which) */
    RELAY_EV_LOST,      /* the owner's transaction here is gone (after its REPLYs) */
    RELAY_EV_IDLE,      /* released and clean again: back to the pool */
    RELAY_EV_STARTTLS,  /* 220 to STARTTLS: run the TLS handshake, then relay_tls_done() */
};

typedef struct relay_event {
    enum relay_ev_type type;
    uint8_t kind;       /* REPLY: enum relay_kind */
    uint32_t token;     /* REPLY: the owner's token */
    smtp_reply_t reply; /* REPLY */
    bool lost;          /* REPLY: the relay's 451 for a command the failed connection owed (no server said it) */
} relay_event_t;

enum relay_status {
    RELAY_EVENT, /* *ev is filled; *consumed input bytes were used */
    RELAY_AGAIN, /* all input used; wait for more (or for the caller's next command) */
    RELAY_CLOSE, /* close the connection: nothing more will come */
};

/* A fresh connection (zeroing first is not needed). */
void relay_init(relay_t *r, const relay_config_t *cfg);
void relay_free(relay_t *r);

/* The TCP connect completed: wait for the greeting. */
void relay_connected(relay_t *r);

/*
 * Take the server's bytes (in may be NULL with len 0: only due events) and
 * give the next event. Events are produced only here, one per call.
 */
enum relay_status relay_feed(relay_t *r, const char *in, size_t len, size_t *consumed, relay_event_t *ev)
    __attribute__((warn_unused_result));

/*
 * STARTTLS: with cfg->starttls set, the EHLO (LHLO) reply that offers
 * STARTTLS is followed by STARTTLS, and its 220 gives RELAY_EV_STARTTLS:
 * from then on the caller's bytes are TLS records. Nothing may follow the
 * 220 in plaintext (a server, or a man in the middle, that pipelines
 * replies past it fails the connection: RFC 3207's injection). Once the
 * caller's handshake completes, relay_tls_done() forgets the server's
 * extensions and says EHLO again (RFC 3207 4.2); READY comes after its
 * reply. A handshake that fails is relay_fail(r, RELAY_FAIL_TLS).
 */
void relay_tls_done(relay_t *r);

/* The connection failed (see the top): due events follow from relay_feed. */
void relay_fail(relay_t *r, enum relay_fail why);

/* Bytes waiting to be sent, and how many of them were sent. */
static inline slice_t relay_output(const relay_t *r)
{
    return slice_make(r->out, r->out_len);
}
void relay_sent(relay_t *r, size_t n);

/* Commands waiting for replies (a connection with none may idle). */
static inline uint32_t relay_due(const relay_t *r)
{
    return r->due_len;
}

static inline bool relay_in_body(const relay_t *r)
{
    return r->state == RELAY_BODY;
}

static inline bool relay_ready(const relay_t *r)
{
    return r->state == RELAY_READY && !r->owned;
}

/* Lease a ready connection to an owner. */
void relay_lease(relay_t *r);

/*
 * The owner's commands. Each returns true when the command is on its way
 * (its reply will come as a REPLY event for `token`), false with *refusal
 * set when it cannot be sent: the relay is not in a state for it, the
 * server lacks SMTPUTF8 for an SMTPUTF8 transaction (553 5.6.7), the
 * declared SIZE is over the server's (552 5.3.4), too many commands are due.
 */
bool relay_mail(relay_t *r, uint32_t token, slice_t mailbox, const smtp_mail_params_t *p, smtp_reply_t *refusal)
    __attribute__((warn_unused_result));
bool relay_rcpt(relay_t *r, uint32_t token, slice_t mailbox, smtp_reply_t *refusal) __attribute__((warn_unused_result));
bool relay_data(relay_t *r, uint32_t token, smtp_reply_t *refusal) __attribute__((warn_unused_result));
/* The body has been sent in full: add the end marker. */
bool relay_eod(relay_t *r, uint32_t token, smtp_reply_t *refusal) __attribute__((warn_unused_result));

enum relay_release { RELAY_REUSE, RELAY_DRAINING, RELAY_DISCARD };

/*
 * The owner is done with the connection. REUSE: clean, back to the pool now.
 * DRAINING: replies (and RSET) are due; IDLE comes when it is clean.
 * DISCARD: it cannot be made clean (inside a body, DATA unanswered, failed):
 * close it.
 */
enum relay_release relay_release(relay_t *r);

#endif

/*
 * client.h - client mode of mxgate-load: the per-thread state the main
 * thread reads for the progress line and the summary.
 */
#ifndef MXLOAD_CLIENT_H
#define MXLOAD_CLIENT_H

#include "load.h"

/* E_NO_STARTTLS: --starttls and the server did not offer STARTTLS (or
 * refused it); E_TLS: a TLS handshake (or a record after it) failed. */
enum cerr { E_REFUSED, E_RESET, E_TIMEOUT, E_CLOSED, E_PROTOCOL, E_CONNECT, E_GREETING, E_OTHER, E_ABORTED,
            E_NO_STARTTLS, E_TLS, E_N };
extern const char *const cerr_names[E_N];

typedef struct cstats {
    _Atomic uint64_t msgs_ok, msgs_failed, connects, greetings, sessions_done, open, bytes_out;
    _Atomic uint64_t tls_handshakes, tls_resumed; /* completed handshakes; of them, resumed sessions */
    _Atomic uint64_t replies[600]; /* every reply, by code */
    _Atomic uint64_t final[600];   /* each message's outcome, by code (the first refusal, or end of data) */
    _Atomic uint64_t err[E_N];     /* transport errors, by kind (per connection) */
    hist_t lat;                    /* message: MAIL sent (or scheduled start) to the final reply */
    hist_t greet;                  /* connect() start to the 220 greeting */
    hist_t tls_hs;                 /* 220 to STARTTLS (the ClientHello) to the handshake's end */
} cstats_t;

#endif

/*
 * tls.h - TLS for STARTTLS, with OpenSSL working on memory: the ring keeps
 * doing the socket I/O.
 *
 * OpenSSL never sees a descriptor. Each connection's SSL has one BIO of our
 * own (tls.c) on both sides: reading takes ciphertext from the slice the
 * caller passes in (a receive buffer the kernel filled), writing appends
 * ciphertext to the session's send chain (outq.h), which the ring then
 * sends. So the loop never blocks on TLS and a session in TLS stays in the
 * same event model, with no copy of its input into a BIO pair's buffer and
 * no buffer of its own while idle (SSL_MODE_RELEASE_BUFFERS).
 *
 * A tls_ctx_t is built from a configuration generation (conf.h): its
 * certificates, protocols and ciphers. It is shared by every worker, so a
 * session ticket issued on one worker resumes on another; a reload builds a
 * new one (new certificates for new sessions), while sessions keep theirs.
 */
#ifndef MXGATE_TLS_H
#define MXGATE_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "outq.h"

typedef struct tls_ctx tls_ctx_t;
typedef struct tls_conn tls_conn_t;
typedef struct tls_session tls_session_t; /* a session to resume (OpenSSL's SSL_SESSION) */

/* The server context for cfg (tls != off): every certificate and key pair
 * loaded and matched, protocols and ciphers set. NULL with err naming the
 * key and OpenSSL's reason. */
tls_ctx_t *tls_ctx_new(const mx_config_t *cfg, char *err, size_t errlen);
void tls_ctx_free(tls_ctx_t *c);

/* A connection in the server role, before its handshake; NULL when memory
 * runs out. */
tls_conn_t *tls_conn_new(tls_ctx_t *c);
void tls_conn_free(tls_conn_t *t);

/*
 * The client side, towards the downstream: the client context for cfg
 * (downstream_tls != off): TLS 1.2 and 1.3, the trust anchors of
 * downstream_tls_ca_file or the system's. NULL with err.
 */
tls_ctx_t *tls_client_ctx_new(const mx_config_t *cfg, char *err, size_t errlen);

/*
 * A connection in the client role, before its handshake. name: what the
 * server's certificate must show (a DNS name, also sent as SNI, or an
 * address literal); verify: a certificate that does not verify, by its
 * chain and that name, fails the handshake (otherwise the result is only
 * reported by tls_peer_unverified). sess: a session to resume, or NULL
 * (the caller keeps it). NULL when memory runs out.
 */
tls_conn_t *tls_conn_client(tls_ctx_t *c, const char *name, bool verify, tls_session_t *sess);

/* After the handshake: NULL when the peer's certificate verified (chain
 * and name), else why not. */
const char *tls_peer_unverified(const tls_conn_t *t);

/* Client role: the newest session the server gave since the last take,
 * now the caller's (free it with tls_session_free), or NULL. Sessions
 * arrive after the handshake in TLS 1.3, so look after reads too. */
tls_session_t *tls_session_take(tls_conn_t *t);
void tls_session_free(tls_session_t *s);

enum tls_status { TLS_AGAIN = 0, TLS_DONE, TLS_ERROR, TLS_CLOSED };

/*
 * Each call takes ciphertext from *in (advancing *in and *len by what
 * OpenSSL read, which may be less than all of it) and appends what OpenSSL
 * has to send to out.
 *
 * tls_handshake: TLS_DONE once complete, TLS_AGAIN for more input, or
 * TLS_ERROR (tls_error() says why; an alert may be in out).
 *
 * tls_read: plaintext into buf: > 0 octets, 0 (TLS_AGAIN: no whole record
 * yet), or -TLS_CLOSED (the peer sent close_notify) / -TLS_ERROR.
 *
 * tls_write: all n octets of plaintext encrypted into out; 0, or -1 (no
 * memory for out, or a fatal error).
 */
enum tls_status tls_handshake(tls_conn_t *t, const char **in, size_t *len, outq_t *out, outq_pool_t *pool);
long tls_read(tls_conn_t *t, const char **in, size_t *len, char *buf, size_t cap, outq_t *out, outq_pool_t *pool);
int tls_write(tls_conn_t *t, const char *p, size_t n, outq_t *out, outq_pool_t *pool);

/*
 * Whether the kernel could carry the record layer after the handshake
 * (kTLS): the tls ULP on a TCP socket here, and an OpenSSL built with it.
 * Used at start-up to say which TLS runs; why holds the reason when not.
 * This build always runs user-space TLS: handing the keys to the kernel
 * from a memory BIO is not done yet.
 */
bool tls_ktls_probe(char *why, size_t cap);

/* Main thread, about once a second: a new ticket key when the current one
 * has sealed tickets for every_s seconds (tls.c says how they rotate). */
void tls_ticket_rotate(unsigned every_s);

/* The connection ends in good order, without a close_notify on the wire
 * (its SMTP session was clean): its TLS session stays resumable. */
void tls_end_clean(tls_conn_t *t);

/* close_notify into out (the session is ending); once. */
void tls_shutdown(tls_conn_t *t, outq_t *out, outq_pool_t *pool);

/* Why the last call failed (OpenSSL's reason, or ours). */
const char *tls_error(const tls_conn_t *t);

/* After the handshake: "TLSv1.3", "TLS_AES_256_GCM_SHA384", the secret
 * bits and the algorithm's bits, and whether the session was resumed. */
const char *tls_version(const tls_conn_t *t);
const char *tls_cipher(const tls_conn_t *t);
int tls_bits(const tls_conn_t *t, int *alg_bits);
bool tls_resumed(const tls_conn_t *t);

#endif

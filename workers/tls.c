/*
 * tls.c - OpenSSL on memory for STARTTLS (tls.h).
 *
 * The BIO: OpenSSL's BIO pair would copy every received record into a
 * buffer of its own and keep two buffers per connection for its life. Ours
 * reads straight from the receive buffer the ring filled (OpenSSL reads a
 * record header, then exactly the record, so it never takes more than it
 * needs and the rest stays with the caller) and writes straight into the
 * session's send chain. With SSL_MODE_RELEASE_BUFFERS OpenSSL frees its
 * own record buffers whenever nothing is pending, so an idle TLS session
 * holds only the SSL object.
 *
 * The context: TLS 1.2 and 1.3 only; no renegotiation (a TLS 1.2 client
 * asking gets a no_renegotiation alert); no compression; the server's
 * cipher preference. Several certificate and key pairs may be loaded, one
 * per key type (ECDSA and RSA): OpenSSL picks the one the client's
 * signature algorithms allow. Sessions resume with stateless tickets
 * sealed by the context's ticket key, which every worker shares; the
 * stateful session cache is off, so no lock is shared by the workers per
 * handshake for it.
 *
 * Ticket keys: our own ring rather than OpenSSL's per-context key, so the
 * key outlives a reload's new context (a ticket from before the reload
 * still resumes) and rotates: every tls_ticket_rotation seconds the main
 * thread makes a new key that seals new tickets; the one before still
 * opens tickets (they are renewed with the new key), older ones do not.
 * Three slots and an atomic index: the slot written is neither the
 * current nor the previous one, which are all a handshake reads, so
 * readers take no lock.
 */
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdatomic.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct tls_ctx {
    SSL_CTX *ssl;
};

struct tls_conn {
    SSL *ssl;
    const char *in;     /* ciphertext the current call may read */
    size_t in_len;
    outq_t *out;        /* where ciphertext goes during the current call */
    outq_pool_t *pool;
    bool shut;
    SSL_SESSION *fresh; /* client role: the newest session from the server, untaken */
    char err[160];
};

static BIO_METHOD *bio_method;

typedef struct ticket_key {
    unsigned char name[16], aes[32], hmac[32];
    time_t born; /* CLOCK_MONOTONIC seconds */
} ticket_key_t;

static ticket_key_t tkeys[3];
static atomic_uint tkey_cur; /* the slot sealing new tickets */
static bool tkeys_ready;

static time_t mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

static int tkey_make(ticket_key_t *k)
{
    if (RAND_bytes(k->name, sizeof k->name) != 1 || RAND_bytes(k->aes, sizeof k->aes) != 1 ||
        RAND_bytes(k->hmac, sizeof k->hmac) != 1)
        return -1;
    k->born = mono_s();
    return 0;
}

void tls_ticket_rotate(unsigned every_s)
{
    if (!tkeys_ready)
        return;
    unsigned cur = atomic_load_explicit(&tkey_cur, memory_order_acquire);
    if (mono_s() - tkeys[cur].born < (time_t)every_s)
        return;
    unsigned next = (cur + 1) % 3;
    if (tkey_make(&tkeys[next]) == 0)
        atomic_store_explicit(&tkey_cur, next, memory_order_release);
}

static int hmac_key(EVP_MAC_CTX *h, unsigned char *key)
{
    OSSL_PARAM p[] = { OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key, 32),
                       OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
                       OSSL_PARAM_construct_end() };
    return EVP_MAC_CTX_set_params(h, p);
}

/* OpenSSL's ticket callback: 1 sealed or opened with the current key, 2
 * opened with the previous one (renew), 0 unknown (a full handshake). */
static int ticket_cb(SSL *s, unsigned char name[16], unsigned char iv[EVP_MAX_IV_LENGTH], EVP_CIPHER_CTX *c,
                     EVP_MAC_CTX *h, int enc)
{
    unsigned cur = atomic_load_explicit(&tkey_cur, memory_order_acquire);
    ticket_key_t *k = &tkeys[cur];
    if (enc) {
        if (RAND_bytes(iv, 16) != 1)
            return -1;
        memcpy(name, k->name, 16);
        if (EVP_EncryptInit_ex(c, EVP_aes_256_cbc(), NULL, k->aes, iv) != 1 || hmac_key(h, k->hmac) != 1)
            return -1;
        return 1;
    }
    ticket_key_t *prev = &tkeys[(cur + 2) % 3];
    int rc = 1;
    if (memcmp(name, k->name, 16) != 0) {
        if (!prev->born || memcmp(name, prev->name, 16) != 0)
            return 0;
        k = prev;
        rc = 2;
    }
    /* TLS 1.3 clients use a ticket once: renewing is what gives them the
     * next one after a resumption. */
    if (SSL_version(s) == TLS1_3_VERSION)
        rc = 2;
    if (hmac_key(h, k->hmac) != 1 || EVP_DecryptInit_ex(c, EVP_aes_256_cbc(), NULL, k->aes, iv) != 1)
        return -1;
    return rc;
}

static int bio_write_ex(BIO *b, const char *p, size_t n, size_t *written)
{
    tls_conn_t *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (!t->out || !outq_append(t->out, t->pool, p, n))
        return 0;
    *written = n;
    return 1;
}

static int bio_read_ex(BIO *b, char *p, size_t n, size_t *got)
{
    tls_conn_t *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (t->in_len == 0) {
        BIO_set_retry_read(b);
        *got = 0;
        return 0;
    }
    size_t k = n < t->in_len ? n : t->in_len;
    memcpy(p, t->in, k);
    t->in += k;
    t->in_len -= k;
    *got = k;
    return 1;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b, (void)num, (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static const char *ssl_reason(char *buf, size_t cap)
{
    /* The last error is the one that says what failed; the first is often
     * a provider's detail under it. */
    unsigned long e = ERR_peek_last_error();
    if (!e) {
        snprintf(buf, cap, "unknown error");
        return buf;
    }
    ERR_error_string_n(e, buf, cap);
    ERR_clear_error();
    return buf;
}

/* "a, b" -> each trimmed item in turn; false at the end. */
static bool next_path(const char **p, char *out, size_t cap)
{
    const char *s = *p;
    while (*s == ' ' || *s == '\t' || *s == ',')
        s++;
    if (!*s)
        return false;
    const char *e = strchr(s, ',');
    size_t n = e ? (size_t)(e - s) : strlen(s);
    *p = s + n;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    if (n >= cap)
        n = cap - 1;
    memcpy(out, s, n);
    out[n] = '\0';
    return true;
}

static int set_protocols(SSL_CTX *ctx, const char *list, char *err, size_t errlen)
{
    bool v12 = false, v13 = false;
    char word[32];
    for (const char *p = list; next_path(&p, word, sizeof word);) {
        if (!strcmp(word, "tlsv1.2"))
            v12 = true;
        else if (!strcmp(word, "tlsv1.3"))
            v13 = true;
        else {
            snprintf(err, errlen, "tls_protocols: %s: expected tlsv1.2 or tlsv1.3", word);
            return -1;
        }
    }
    if (!v12 && !v13) {
        snprintf(err, errlen, "tls_protocols: expected tlsv1.2, tlsv1.3 or both");
        return -1;
    }
    SSL_CTX_set_min_proto_version(ctx, v12 ? TLS1_2_VERSION : TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(ctx, v13 ? TLS1_3_VERSION : TLS1_2_VERSION);
    return 0;
}

/* Our BIO's method, made once (start-up and reloads run in main only). */
static int bio_init(char *err, size_t errlen)
{
    char why[256];
    if (bio_method)
        return 0;
    bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "mxgate ring");
    if (!bio_method || !BIO_meth_set_write_ex(bio_method, bio_write_ex) ||
        !BIO_meth_set_read_ex(bio_method, bio_read_ex) || !BIO_meth_set_ctrl(bio_method, bio_ctrl) ||
        !BIO_meth_set_create(bio_method, bio_create)) {
        snprintf(err, errlen, "tls: cannot make the BIO: %s", ssl_reason(why, sizeof why));
        return -1;
    }
    return 0;
}

/* A context for either role, with what both share: our BIO's method, no
 * renegotiation, no compression, record buffers released when idle. */
static tls_ctx_t *ctx_alloc(const SSL_METHOD *method, const char *key, char *err, size_t errlen)
{
    char why[256];
    if (bio_init(err, errlen))
        return NULL;
    tls_ctx_t *c = calloc(1, sizeof *c);
    SSL_CTX *ctx = c ? SSL_CTX_new(method) : NULL;
    if (!ctx) {
        snprintf(err, errlen, "%s: %s", key, c ? ssl_reason(why, sizeof why) : "out of memory");
        free(c);
        return NULL;
    }
    c->ssl = ctx;
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE);
    return c;
}

tls_ctx_t *tls_ctx_new(const mx_config_t *cfg, char *err, size_t errlen)
{
    char why[256];
    if (!cfg->tls_cert_file[0] || !cfg->tls_key_file[0]) {
        snprintf(err, errlen, "tls = %s needs tls_cert_file and tls_key_file",
                 cfg->tls == CONFIG_TLS_ENCRYPT ? "encrypt" : "may");
        return NULL;
    }
    tls_ctx_t *c = ctx_alloc(TLS_server_method(), "tls", err, errlen);
    if (!c)
        return NULL;
    SSL_CTX *ctx = c->ssl;
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"mxgate", 6);
    if (!tkeys_ready) {
        if (tkey_make(&tkeys[0]) != 0) {
            snprintf(err, errlen, "tls: no random bytes for the ticket key: %s", ssl_reason(why, sizeof why));
            goto fail;
        }
        tkeys_ready = true;
    }
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
    SSL_CTX_set_timeout(ctx, (long)cfg->tls_ticket_rotation * 2); /* the lifetime hint: what the ring honours */
    if (set_protocols(ctx, cfg->tls_protocols, err, errlen))
        goto fail;
    if (cfg->tls_ciphers[0] && !SSL_CTX_set_cipher_list(ctx, cfg->tls_ciphers)) {
        snprintf(err, errlen, "tls_ciphers: %s: %s", cfg->tls_ciphers, ssl_reason(why, sizeof why));
        goto fail;
    }
    if (cfg->tls_ciphersuites[0] && !SSL_CTX_set_ciphersuites(ctx, cfg->tls_ciphersuites)) {
        snprintf(err, errlen, "tls_ciphersuites: %s: %s", cfg->tls_ciphersuites, ssl_reason(why, sizeof why));
        goto fail;
    }
    const char *cp = cfg->tls_cert_file, *kp = cfg->tls_key_file;
    char cert[CONFIG_PATH_MAX], key[CONFIG_PATH_MAX];
    int pairs = 0;
    for (;;) {
        bool hc = next_path(&cp, cert, sizeof cert), hk = next_path(&kp, key, sizeof key);
        if (!hc && !hk)
            break;
        if (hc != hk) {
            snprintf(err, errlen, "tls_cert_file and tls_key_file: %s without its %s", hc ? cert : key,
                     hc ? "key" : "certificate");
            goto fail;
        }
        if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
            snprintf(err, errlen, "tls_cert_file: %s: %s", cert, ssl_reason(why, sizeof why));
            goto fail;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
            snprintf(err, errlen, "tls_key_file: %s: %s", key, ssl_reason(why, sizeof why));
            goto fail;
        }
        if (SSL_CTX_check_private_key(ctx) != 1) {
            snprintf(err, errlen, "tls_key_file: %s does not match %s", key, cert);
            ERR_clear_error();
            goto fail;
        }
        pairs++;
    }
    if (!pairs) {
        snprintf(err, errlen, "tls_cert_file and tls_key_file: no certificate and key pair in \"%s\"",
                 cfg->tls_cert_file);
        goto fail;
    }
    return c;
fail:
    tls_ctx_free(c);
    return NULL;
}

void tls_ctx_free(tls_ctx_t *c)
{
    if (!c)
        return;
    SSL_CTX_free(c->ssl);
    free(c);
}

static tls_conn_t *conn_new(tls_ctx_t *c)
{
    tls_conn_t *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->ssl = SSL_new(c->ssl);
    BIO *b = t->ssl ? BIO_new(bio_method) : NULL;
    if (!b) {
        SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return NULL;
    }
    BIO_set_data(b, t);
    SSL_set_bio(t->ssl, b, b); /* one BIO, both ways; the SSL owns it */
    SSL_set_app_data(t->ssl, t);
    return t;
}

tls_conn_t *tls_conn_new(tls_ctx_t *c)
{
    tls_conn_t *t = conn_new(c);
    if (t)
        SSL_set_accept_state(t->ssl);
    return t;
}

/* ---- the client role: towards the downstream ---- */

/* A session the server sent (a TLS 1.3 ticket after the handshake, or the
 * TLS 1.2 session at its end): kept for the pool to take. */
static int new_session_cb(SSL *s, SSL_SESSION *sess)
{
    tls_conn_t *t = SSL_get_app_data(s);
    if (!t)
        return 0;
    SSL_SESSION_free(t->fresh);
    t->fresh = sess;
    return 1; /* the reference is ours */
}

tls_ctx_t *tls_client_ctx_new(const mx_config_t *cfg, char *err, size_t errlen)
{
    char why[256];
    tls_ctx_t *c = ctx_alloc(TLS_client_method(), "downstream_tls", err, errlen);
    if (!c)
        return NULL;
    SSL_CTX *ctx = c->ssl;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* Sessions live in the pool that opened them (one per worker, no lock),
     * never in a cache the workers would share. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, new_session_cb);
    const char *ca = cfg->downstream_tls_ca_file;
    if (ca[0] ? SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1 : SSL_CTX_set_default_verify_paths(ctx) != 1) {
        snprintf(err, errlen, "downstream_tls_ca_file: %s: %s", ca[0] ? ca : "(the system's)",
                 ssl_reason(why, sizeof why));
        tls_ctx_free(c);
        return NULL;
    }
    return c;
}

tls_conn_t *tls_conn_client(tls_ctx_t *c, const char *name, bool verify, tls_session_t *sess)
{
    tls_conn_t *t = conn_new(c);
    if (!t)
        return NULL;
    SSL_set_connect_state(t->ssl);
    SSL_set_verify(t->ssl, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    /* The name the certificate must show: checked during the chain's
     * verification, so SSL_get_verify_result() covers both. An address
     * literal is matched against the certificate's IP addresses, and sent
     * no SNI (RFC 6066 3). */
    bool ok = true;
    if (name && name[0]) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);
        if (X509_VERIFY_PARAM_set1_ip_asc(vp, name) != 1) {
            ERR_clear_error();
            ok = SSL_set1_host(t->ssl, name) == 1 && SSL_set_tlsext_host_name(t->ssl, name) == 1;
        }
    }
    if (ok && sess)
        ok = SSL_set_session(t->ssl, (SSL_SESSION *)sess) == 1;
    if (!ok) {
        ERR_clear_error();
        tls_conn_free(t);
        return NULL;
    }
    return t;
}

const char *tls_peer_unverified(const tls_conn_t *t)
{
    /* After a handshake that failed on it, the certificate is gone but the
     * verdict stays. */
    long v = SSL_get_verify_result(t->ssl);
    if (v != X509_V_OK)
        return X509_verify_cert_error_string(v);
    return SSL_get0_peer_certificate(t->ssl) ? NULL : "no certificate";
}

tls_session_t *tls_session_take(tls_conn_t *t)
{
    SSL_SESSION *s = t->fresh;
    t->fresh = NULL;
    return (tls_session_t *)s;
}

void tls_session_free(tls_session_t *s)
{
    SSL_SESSION_free((SSL_SESSION *)s);
}

void tls_conn_free(tls_conn_t *t)
{
    if (!t)
        return;
    SSL_SESSION_free(t->fresh);
    SSL_free(t->ssl);
    free(t);
}

static void io_begin(tls_conn_t *t, const char *in, size_t len, outq_t *out, outq_pool_t *pool)
{
    /* SSL_get_error() reads the thread's error queue first: an entry left
     * there by anything else must not fail this connection. */
    ERR_clear_error();
    t->in = in;
    t->in_len = len;
    t->out = out;
    t->pool = pool;
}

static void io_end(tls_conn_t *t, const char **in, size_t *len)
{
    if (in) {
        *in = t->in;
        *len = t->in_len;
    }
    t->in = NULL;
    t->in_len = 0;
    t->out = NULL;
    t->pool = NULL;
}

/* What SSL_get_error() says, as ours; the reason kept for tls_error(). */
static enum tls_status failed(tls_conn_t *t, int rc)
{
    int e = SSL_get_error(t->ssl, rc);
    if (e == SSL_ERROR_WANT_READ)
        return TLS_AGAIN;
    if (e == SSL_ERROR_ZERO_RETURN) {
        snprintf(t->err, sizeof t->err, "close_notify from the peer");
        return TLS_CLOSED;
    }
    if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
        snprintf(t->err, sizeof t->err, "no memory for the send chain");
    else
        ssl_reason(t->err, sizeof t->err);
    ERR_clear_error();
    return TLS_ERROR;
}

enum tls_status tls_handshake(tls_conn_t *t, const char **in, size_t *len, outq_t *out, outq_pool_t *pool)
{
    io_begin(t, *in, *len, out, pool);
    int rc = SSL_do_handshake(t->ssl);
    enum tls_status st = rc == 1 ? TLS_DONE : failed(t, rc);
    if (st == TLS_CLOSED)
        st = TLS_ERROR;
    io_end(t, in, len);
    return st;
}

long tls_read(tls_conn_t *t, const char **in, size_t *len, char *buf, size_t cap, outq_t *out, outq_pool_t *pool)
{
    io_begin(t, *in, *len, out, pool);
    size_t got = 0;
    int rc = SSL_read_ex(t->ssl, buf, cap, &got);
    long r = rc == 1 ? (long)got : -(long)failed(t, rc);
    io_end(t, in, len);
    return r;
}

int tls_write(tls_conn_t *t, const char *p, size_t n, outq_t *out, outq_pool_t *pool)
{
    io_begin(t, NULL, 0, out, pool);
    int r = 0;
    while (n) {
        size_t done = 0;
        int rc = SSL_write_ex(t->ssl, p, n, &done);
        if (rc != 1) {
            failed(t, rc);
            r = -1;
            break;
        }
        p += done, n -= done;
    }
    io_end(t, NULL, NULL);
    return r;
}

void tls_end_clean(tls_conn_t *t)
{
    /* OpenSSL marks the session of a connection freed without a shutdown
     * as not resumable; a quiet one says we are done with it on purpose. */
    if (!t || !SSL_is_init_finished(t->ssl))
        return;
    SSL_set_quiet_shutdown(t->ssl, 1);
    SSL_shutdown(t->ssl);
    ERR_clear_error();
}

void tls_shutdown(tls_conn_t *t, outq_t *out, outq_pool_t *pool)
{
    if (t->shut || !SSL_is_init_finished(t->ssl))
        return;
    t->shut = true;
    io_begin(t, NULL, 0, out, pool);
    SSL_shutdown(t->ssl); /* our close_notify; the client's is not waited for */
    ERR_clear_error();
    io_end(t, NULL, NULL);
}

bool tls_ktls_probe(char *why, size_t cap)
{
#ifdef OPENSSL_NO_KTLS
    snprintf(why, cap, "OpenSSL was built without kTLS");
    return false;
#else
    /* A connected loopback pair: the ULP attaches only to an established
     * TCP socket. ENOENT: the kernel has no tls module. */
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), c = -1, a = -1;
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t sl = sizeof sa;
    bool ok = false;
    if (l >= 0 && bind(l, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(l, 1) == 0 &&
        getsockname(l, (struct sockaddr *)&sa, &sl) == 0 && (c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) >= 0 &&
        connect(c, (struct sockaddr *)&sa, sizeof sa) == 0 && (a = accept4(l, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
        if (setsockopt(a, IPPROTO_TCP, TCP_ULP, "tls", 3) == 0)
            ok = true;
        else
            snprintf(why, cap, "the kernel has no tls ULP (setsockopt TCP_ULP tls: %s)", strerror(errno));
    } else {
        snprintf(why, cap, "loopback probe failed: %s", strerror(errno));
    }
    if (a >= 0)
        close(a);
    if (c >= 0)
        close(c);
    if (l >= 0)
        close(l);
    if (ok)
        snprintf(why, cap, "the kernel and OpenSSL could; this build hands no keys to the kernel yet");
    return ok;
#endif
}

const char *tls_error(const tls_conn_t *t)
{
    return t->err[0] ? t->err : "unknown";
}

const char *tls_version(const tls_conn_t *t)
{
    return SSL_get_version(t->ssl);
}

const char *tls_cipher(const tls_conn_t *t)
{
    return SSL_get_cipher_name(t->ssl);
}

int tls_bits(const tls_conn_t *t, int *alg_bits)
{
    return SSL_get_cipher_bits(t->ssl, alg_bits);
}

bool tls_resumed(const tls_conn_t *t)
{
    return SSL_session_reused(t->ssl) == 1;
}

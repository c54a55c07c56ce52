/*
 * fuzz_tls.c - libFuzzer target over STARTTLS's OpenSSL-on-memory layer
 * (workers/tls.c: our BIO reading the caller's slice and writing into the
 * send chain, workers/outq.c), linked as the server links it.
 *
 * A TLS record reaches the server cut wherever the kernel's receive buffers
 * cut it: tls_handshake() and tls_read() must take any split (one byte at a
 * time, several records at once, a record header alone), say exactly how
 * much they consumed, and never read outside the slice. The bytes come from
 * a real OpenSSL client in this process ("peer" mode), so the fuzzer gets
 * past the handshake to the record layer, or from the input itself ("raw"
 * mode: garbage ClientHellos, truncated records).
 *
 * Input, peer mode: an 8-byte header, the chunk-length bytes, the payload.
 *   h[0] bit 0: 0 (peer)
 *        bit 1: the client offers at most TLS 1.2 (else 1.3)
 *        bits 2-3: the client's offer (offers[] below: cipher, signature
 *                  algorithm or key exchange, so each record protection
 *                  and both certificates are reached)
 *        bit 4: corrupt one client->server byte: at offset h[4..5] (h[4]
 *               below 0x80: (h[4] << 8 | h[5]) % 4096, the handshake's
 *               neighbourhood; else (h[4] & 0x7f) << 8 | h[5]), XOR h[6]
 *               (0 counts as 0x80)
 *        bit 5: the client sends close_notify at the end
 *        bit 6: after its first piece of data the client asks for a KeyUpdate
 *               (TLS 1.3) or a renegotiation (TLS 1.2: refused)
 *        bit 7: resume: a second connection with the first one's session
 *               (the corruption, if any, applies to the second), after
 *               h[7] bits 0-1 ticket-key rotations (tls_ticket_rotate:
 *               0 the current key, 1 the previous one, 2 or 3 too old)
 *   h[1] bits 0-2: client->server chunk-length bytes; bits 3-5:
 *        server->client ones (0: all that is there at once); bit 6: the
 *        data and the reply are repeated to BIG_LEN octets (records of
 *        16 KiB, the send chain's blocks crossed); bit 7: junk: after its
 *        data the client's own plaintext is appended to the server's input
 *        as if it were records
 *   h[2] the server's read capacity: below 0x80 1..128, else up to 17273
 *   h[3] bits 0-3: plaintext piece-length bytes (0: one piece; at most
 *        MAX_PIECES pieces, the last takes the rest); bits 4-7:
 *        the payload's first k/16 is the client's data, the rest the
 *        server's reply
 *   h[7] bits 0-1: rotations (above); bits 2-7 unused
 *   then the chunk-length bytes (client->server, server->client, pieces;
 *   each cycled, fuzzutil.h's coding: below 0x80 1..16 octets, else
 *   1..1017), then the payload (at most MAX_PAYLOAD).
 *
 * Input, raw mode: h[0] bit 0: 1; bits 1-3: chunk-length bytes; h[1] the
 * read capacity as h[2] above; the chunk-length bytes; then the ciphertext,
 * fed to a fresh connection's handshake (and reads, should it complete).
 *
 * tests/fuzz/gen-corpus-tls.py writes seeds in these formats.
 *
 * Checks (__builtin_trap on failure):
 *  - the call contract: *in advances by what was consumed and *len drops by
 *    as much; TLS_AGAIN and a 0 read take every byte offered (the session
 *    waits for the socket only then); a read gives at most cap octets into
 *    an exact-size heap buffer; an error has a reason; no call returns with
 *    OpenSSL's thread error queue non-empty (the next call of any session
 *    on the worker would read it as its own failure);
 *  - an error sticks: the call after TLS_ERROR fails too;
 *  - uncorrupted: both sides finish the handshake at the version asked
 *    for, the server reads exactly the client's bytes in order, the client
 *    reads exactly the server's reply (after a KeyUpdate too: OpenSSL
 *    answers it with the server's next write), a session resumes with the
 *    current ticket key or the one before and not with an older one, a TLS
 *    1.2 renegotiation gets the no_renegotiation alert (OpenSSL's client
 *    then gives up with a fatal alert, on which the server fails),
 *    close_notify arrives both ways, and nothing stalls;
 *  - corrupted: whatever the server read is a prefix of what the client
 *    wrote (and the client's reply a prefix of the server's), every loop
 *    ends (all are bounded), and ASan/UBSan/LSan stay quiet.
 *
 * OpenSSL's randomness is replaced by a generator restarted for every input
 * (det_rand below): the same input then makes the same bytes, so an offset
 * to corrupt names the same field on every run and a crash reproduces. The
 * one exception is tls.c's ticket-key ring, which outlives inputs as it
 * outlives reloads: keys made by a rotation come from the generator mixed
 * with a count of rotations (else a rerun would remake a key it had
 * retired), so tickets' bytes, though not their lengths, differ between
 * processes.
 */
#define OPENSSL_SUPPRESS_DEPRECATED /* RAND_set_rand_method: see det_rand */

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "outq.h"
#include "tls.h"

#include "guard.h" /* CHECK */

#define HDR 8
#define MAX_PAYLOAD 8192
#define BIG_LEN 20000       /* > 16384: a write spans records, a record spans outq blocks */
#define MAX_PIECES 64       /* writes per direction (the last takes the rest): each is a record, so
                               1-octet pieces of BIG_LEN would make a megabyte of ciphertext */
#define MAX_STEPS 60000     /* pump steps per phase; a 1-octet chunk per step covers BIG_LEN */
#define MAX_CALLS 400000    /* tls_* calls per connection; about 120 000 at most (1-octet chunks and reads) */

/* ---- deterministic randomness ---- */

static uint64_t rng;
static uint64_t rotations; /* tls_ticket_rotate calls, ever */

static int det_bytes(unsigned char *buf, int num)
{
    for (int i = 0; i < num; i++) {
        uint64_t z = (rng += 0x9e3779b97f4a7c15ull); /* splitmix64 */
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        buf[i] = (unsigned char)(z ^ (z >> 31));
    }
    return 1;
}

static int det_seed(const void *b, int n)
{
    (void)b, (void)n;
    return 1;
}

static int det_add(const void *b, int n, double e)
{
    (void)b, (void)n, (void)e;
    return 1;
}

static int det_status(void)
{
    return 1;
}

static const RAND_METHOD det_rand = { det_seed, det_bytes, NULL, det_add, det_bytes, det_status };

/* ---- the fixed parts: certificates, contexts ---- */

static tls_ctx_t *server;
static SSL_CTX *client;
static bool verbose; /* FUZZ_TLS_VERBOSE=1: a line per connection, for reproducers */

static void die(const char *what)
{
    fprintf(stderr, "fuzz_tls: %s\n", what);
    ERR_print_errors_fp(stderr);
    abort();
}

/* A self-signed certificate for key into dir/name.crt and dir/name.key. */
static void write_pair(const char *dir, const char *name, EVP_PKEY *key, char *crt, char *kf, size_t cap)
{
    X509 *x = X509_new();
    if (!key || !x)
        die("cannot make a key");
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600L * 24 * 825);
    X509_set_pubkey(x, key);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1, 0);
    X509_set_issuer_name(x, n);
    if (!X509_sign(x, key, EVP_sha256()))
        die("cannot sign the certificate");
    snprintf(crt, cap, "%s/%s.crt", dir, name);
    snprintf(kf, cap, "%s/%s.key", dir, name);
    FILE *fc = fopen(crt, "w"), *fk = fopen(kf, "w");
    if (!fc || !fk || !PEM_write_X509(fc, x) || !PEM_write_PrivateKey(fk, key, NULL, NULL, 0, NULL, NULL))
        die("cannot write the PEM files");
    fclose(fc);
    fclose(fk);
    X509_free(x);
    EVP_PKEY_free(key);
}

/* tls_ctx_new refuses what it should, without leaking (LSan at exit). */
static void expect_refused(mx_config_t *cfg, const char *key, const char *value, const char *want)
{
    char old[CONFIG_PATH_MAX], err[512] = "";
    const char *cur = !strcmp(key, "tls_protocols") ? cfg->tls_protocols
                      : !strcmp(key, "tls_key_file") ? cfg->tls_key_file
                                                     : cfg->tls_ciphers;
    snprintf(old, sizeof old, "%s", cur);
    if (config_set(cfg, key, value, err, sizeof err))
        die(err);
    tls_ctx_t *c = tls_ctx_new(cfg, err, sizeof err);
    CHECK(c == NULL && strstr(err, want) != NULL);
    CHECK(ERR_peek_error() == 0);
    if (config_set(cfg, key, old, err, sizeof err))
        die(err);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    verbose = getenv("FUZZ_TLS_VERBOSE") && *getenv("FUZZ_TLS_VERBOSE") == '1';
    rng = 1;
    if (!RAND_set_rand_method(&det_rand))
        die("cannot set the RAND method");

    /* Two pairs, one per key type, as an operator would list them: the
     * client's offer picks (tls.c). Gone from disk once loaded. */
    char dir[512], ec_crt[600], ec_key[600], rsa_crt[600], rsa_key[600];
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/fuzz_tls.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir))
        die("mkdtemp");
    write_pair(dir, "ec", EVP_EC_gen("P-256"), ec_crt, ec_key, sizeof ec_crt);
    write_pair(dir, "rsa", EVP_RSA_gen(2048), rsa_crt, rsa_key, sizeof rsa_crt);

    static mx_config_t cfg; /* large; config_defaults fills it */
    char list[2 * sizeof ec_crt + 4], err[512] = "";
    config_defaults(&cfg);
    if (config_set(&cfg, "tls", "may", err, sizeof err) ||
        config_set(&cfg, "tls_protocols", "tlsv1.2, tlsv1.3", err, sizeof err))
        die(err);
    snprintf(list, sizeof list, "%s, %s", ec_crt, rsa_crt);
    if (config_set(&cfg, "tls_cert_file", list, err, sizeof err))
        die(err);
    snprintf(list, sizeof list, " %s ,%s", ec_key, rsa_key);
    if (config_set(&cfg, "tls_key_file", list, err, sizeof err))
        die(err);
    server = tls_ctx_new(&cfg, err, sizeof err);
    if (!server)
        die(err);
    CHECK(ERR_peek_error() == 0);

    snprintf(list, sizeof list, "%s, %s", rsa_key, ec_key);
    expect_refused(&cfg, "tls_key_file", list, "does not match");
    expect_refused(&cfg, "tls_key_file", ec_key, "without its key");
    expect_refused(&cfg, "tls_ciphers", "NO-SUCH-CIPHER", "tls_ciphers");
    unlink(ec_crt), unlink(ec_key), unlink(rsa_crt), unlink(rsa_key);
    rmdir(dir);
    expect_refused(&cfg, "tls_key_file", ec_key, "tls_cert_file");
    config_free(&cfg);

    client = SSL_CTX_new(TLS_client_method());
    if (!client)
        die("SSL_CTX_new");
    SSL_CTX_set_verify(client, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(client, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
    return 0;
}

/* ---- one connection ---- */

/* What the client offers besides its version: index h[0] bits 2-3. */
static const struct offer {
    const char *ciphers;    /* TLS 1.2 list, or TLS 1.3 suites */
    const char *sigalgs;    /* NULL: OpenSSL's */
    const char *groups;     /* NULL: OpenSSL's */
    bool no_etm;            /* TLS 1.2 CBC: MAC-then-encrypt */
} offers[2][4] = {
    { /* TLS 1.3 */
      { NULL, NULL, NULL, false },
      { "TLS_CHACHA20_POLY1305_SHA256", NULL, NULL, false },
      { "TLS_AES_128_GCM_SHA256", "rsa_pss_rsae_sha256", NULL, false },
      { "TLS_AES_256_GCM_SHA384", "ecdsa_secp256r1_sha256", "P-256:X25519", false } },
    { /* TLS 1.2 */
      { NULL, NULL, NULL, false },
      { "ECDHE-ECDSA-AES128-SHA", NULL, NULL, false },
      { "ECDHE-RSA-CHACHA20-POLY1305", NULL, NULL, false },
      { "AES128-SHA256", NULL, NULL, true } },
};

typedef struct buf {
    char *p;
    size_t len, cap;
} buf_t;

static void buf_put(buf_t *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        CHECK(b->p != NULL);
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, p, n);
    b->len += n;
}

/* Chunk lengths, cycled; fuzzutil.h's coding. None given: no limit. */
typedef struct lens {
    const uint8_t *v;
    size_t n, k;
} lens_t;

static size_t next_len(lens_t *l)
{
    if (!l->n)
        return SIZE_MAX;
    uint8_t b = l->v[l->k++ % l->n];
    return b < 0x80 ? (size_t)1 + (b & 15) : (size_t)1 + (size_t)(b - 0x80) * 8;
}

static size_t read_cap(uint8_t b)
{
    return b < 0x80 ? (size_t)1 + b : (size_t)1 + (size_t)(b - 0x80) * 136;
}

typedef struct params {
    bool tls12, corrupt, close, midway, resume, big, junk;
    unsigned offer, rotations;
    size_t cap;
    size_t corrupt_at;
    uint8_t corrupt_xor;
    lens_t c2s, s2c, pieces;
    const char *data, *reply;
    size_t data_len, reply_len;
} params_t;

typedef struct conn {
    params_t *P;             /* its chunk-length cursors move */
    /* the server, as a session holds it */
    tls_conn_t *srv;
    outq_t out;
    outq_pool_t pool;
    char *rbuf;              /* exact-size: ASan sees a write past cap */
    enum tls_status hs;      /* TLS_AGAIN until DONE or ERROR */
    bool srv_dead, srv_closed;
    char why[160];           /* the first failure's reason */
    buf_t got;               /* plaintext the server read */
    size_t calls;
    /* the client */
    SSL *cli;
    BIO *crd;                /* server -> client ciphertext */
    BIO *cwr;                /* client -> server ciphertext */
    bool cli_done, cli_dead, cli_closed;
    buf_t reply_got;
    /* the client -> server stream: all of it, and how much the server took */
    buf_t c2s;
    size_t used;
    bool may_corrupt;
    bool tampered;           /* a byte flipped or junk appended */
} conn_t;

static void no_stale_errors(void)
{
    CHECK(ERR_peek_error() == 0);
}

/* What the client wrote since last time, into the stream (corrupted once,
 * where asked). */
static void drain_client(conn_t *c)
{
    char tmp[4096];
    int n;
    while (c->cli && (n = BIO_read(c->cwr, tmp, sizeof tmp)) > 0) {
        size_t at = c->c2s.len;
        buf_put(&c->c2s, tmp, (size_t)n);
        if (c->may_corrupt && c->P->corrupt && c->P->corrupt_at >= at && c->P->corrupt_at < c->c2s.len) {
            c->c2s.p[c->P->corrupt_at] ^= (char)c->P->corrupt_xor;
            c->tampered = true;
        }
    }
}

/* The call moved *in by what it consumed, within the slice, and *len by
 * as much. */
static void check_advanced(const char *p0, size_t l0, const char *p, size_t l)
{
    CHECK(p >= p0 && l <= l0 && (size_t)(p - p0) == l0 - l);
}

static void srv_failed(conn_t *c)
{
    const char *why = tls_error(c->srv);
    CHECK(why && why[0]);
    no_stale_errors();
    if (!c->why[0])
        snprintf(c->why, sizeof c->why, "%s", why);
    if (!c->tampered && !c->cli_dead) {
        fprintf(stderr, "uncorrupted connection failed: %s\n", why);
        __builtin_trap();
    }
    c->srv_dead = true;
}

static void check_prefix(const buf_t *got, const char *want, size_t want_len, const char *what)
{
    if (got->len <= want_len && (got->len == 0 || memcmp(got->p, want, got->len) == 0))
        return;
    fprintf(stderr, "%s: read %zu octets that are not a prefix of the %zu written\n", what, got->len, want_len);
    __builtin_trap();
}

/* The handshake just completed on the server's side. */
static void srv_established(conn_t *c)
{
    const char *v = tls_version(c->srv), *cipher = tls_cipher(c->srv);
    int alg = -1, bits = tls_bits(c->srv, &alg);
    CHECK(v && cipher && bits > 0 && alg >= bits);
    CHECK(!strcmp(v, "TLSv1.2") || !strcmp(v, "TLSv1.3"));
    if (!c->tampered)
        CHECK(!strcmp(v, c->P->tls12 ? "TLSv1.2" : "TLSv1.3"));
}

/*
 * Deliver the next chunk of the client's stream to the server and run it
 * dry, as session.c's tls_input does with one receive buffer: the
 * handshake, then reads until one says "no whole record". The chunk is its
 * own exact-size heap block, freed when done.
 */
static bool server_step(conn_t *c)
{
    if (c->srv_dead || c->srv_closed || c->used == c->c2s.len)
        return false;
    size_t n = next_len(&c->P->c2s);
    if (n > c->c2s.len - c->used)
        n = c->c2s.len - c->used;
    char *blk = malloc(n);
    CHECK(blk != NULL);
    memcpy(blk, c->c2s.p + c->used, n);
    const char *q = blk;
    size_t left = n;
    while (c->calls++ < MAX_CALLS) {
        const char *q0 = q;
        size_t l0 = left;
        if (c->hs != TLS_DONE) {
            c->hs = tls_handshake(c->srv, &q, &left, &c->out, &c->pool);
            check_advanced(q0, l0, q, left);
            if (c->hs == TLS_ERROR) {
                srv_failed(c);
                /* an error sticks */
                const char *e = "\x16\x03\x01\x00\x01\x01";
                size_t el = 6;
                CHECK(tls_handshake(c->srv, &e, &el, &c->out, &c->pool) == TLS_ERROR);
                no_stale_errors();
                break;
            }
            no_stale_errors();
            if (c->hs == TLS_AGAIN) {
                CHECK(left == 0);
                break;
            }
            CHECK(c->hs == TLS_DONE);
            srv_established(c);
            continue;
        }
        long r = tls_read(c->srv, &q, &left, c->rbuf, c->P->cap, &c->out, &c->pool);
        check_advanced(q0, l0, q, left);
        if (r > 0) {
            no_stale_errors();
            CHECK((size_t)r <= c->P->cap);
            buf_put(&c->got, c->rbuf, (size_t)r);
            check_prefix(&c->got, c->P->data, c->P->data_len, "server");
            continue;
        }
        if (r == 0) {
            no_stale_errors();
            CHECK(left == 0);
            break;
        }
        if (r == -TLS_CLOSED) {
            no_stale_errors();
            c->srv_closed = true;
            /* close_notify sticks too */
            const char *e = NULL;
            size_t el = 0;
            CHECK(tls_read(c->srv, &e, &el, c->rbuf, c->P->cap, &c->out, &c->pool) == -TLS_CLOSED);
            no_stale_errors();
            break;
        }
        CHECK(r == -TLS_ERROR);
        srv_failed(c);
        const char *e = "\x17\x03\x03\x00\x01\x00";
        size_t el = 6;
        CHECK(tls_read(c->srv, &e, &el, c->rbuf, c->P->cap, &c->out, &c->pool) < 0);
        no_stale_errors();
        break;
    }
    /* Calls are bounded by the octets (a read gives at least one, a chunk
     * at least one): running out means a call that makes no progress. */
    CHECK(c->calls <= MAX_CALLS);
    c->used += n - left;
    free(blk);
    return true;
}

/* Move the next chunk of the server's send chain to the client, and let the
 * client run: its handshake, or reads (tickets, KeyUpdate, alerts, reply). */
static bool client_step(conn_t *c)
{
    bool moved = false;
    const char *p;
    size_t n = outq_peek(&c->out, &p);
    if (n) {
        size_t k = next_len(&c->P->s2c);
        if (k > n)
            k = n;
        CHECK(BIO_write(c->crd, p, (int)k) == (int)k);
        outq_drop(&c->out, &c->pool, k);
        moved = true;
    }
    if (c->cli_dead)
        goto out;
    if (!c->cli_done) {
        int rc = SSL_do_handshake(c->cli);
        if (rc == 1)
            c->cli_done = true;
        else if (SSL_get_error(c->cli, rc) != SSL_ERROR_WANT_READ)
            c->cli_dead = true;
    }
    if (c->cli_done) {
        for (int guard = 0; guard < 4096 && !c->cli_dead; guard++) {
            char tmp[16384];
            size_t got = 0;
            int rc = SSL_read_ex(c->cli, tmp, sizeof tmp, &got);
            if (rc == 1) {
                buf_put(&c->reply_got, tmp, got);
                check_prefix(&c->reply_got, c->P->reply, c->P->reply_len, "client");
                continue;
            }
            int e = SSL_get_error(c->cli, rc);
            if (e == SSL_ERROR_ZERO_RETURN)
                c->cli_closed = true;
            else if (e != SSL_ERROR_WANT_READ)
                c->cli_dead = true;
            break;
        }
    }
out:
    ERR_clear_error(); /* the client's; the server's calls start clean */
    size_t before = c->c2s.len;
    drain_client(c);
    return moved || c->c2s.len != before;
}

/* Both ways until nothing moves. False when it ran out of steps. */
static bool pump(conn_t *c)
{
    for (int i = 0; i < MAX_STEPS; i++) {
        bool s = server_step(c);
        bool m = client_step(c);
        bool srv_idle = c->srv_dead || c->srv_closed || c->used == c->c2s.len;
        bool cli_idle = c->cli_dead || BIO_ctrl_pending(c->crd) == 0;
        if (!s && !m && srv_idle && cli_idle && c->out.bytes == 0)
            return true;
    }
    return false;
}

static void client_write(conn_t *c, const char *p, size_t n)
{
    if (c->cli_dead || !c->cli_done || !n)
        return;
    size_t done = 0;
    if (SSL_write_ex(c->cli, p, n, &done) != 1)
        c->cli_dead = true; /* an alert from the server */
    else
        CHECK(done == n);
    ERR_clear_error();
    drain_client(c);
}

/* The next piece of a write of len octets, off of them done, k pieces so far. */
static size_t next_piece(params_t *P, size_t off, size_t len, size_t k)
{
    size_t n = k + 1 < MAX_PIECES ? next_len(&P->pieces) : SIZE_MAX;
    return n < len - off ? n : len - off;
}

static bool alive(const conn_t *c)
{
    return !c->srv_dead && !c->cli_dead;
}

/* One connection; *sess in: a session to resume (NULL: none), out: the one
 * to resume next (NULL when none came). */
static void run_conn(params_t *P, bool may_corrupt, SSL_SESSION **sess)
{
    conn_t c = { .P = P, .hs = TLS_AGAIN, .may_corrupt = may_corrupt };
    c.rbuf = malloc(P->cap);
    c.srv = tls_conn_new(server);
    c.cli = SSL_new(client);
    c.crd = BIO_new(BIO_s_mem());
    c.cwr = BIO_new(BIO_s_mem());
    CHECK(c.rbuf && c.srv && c.cli && c.crd && c.cwr);
    SSL_set_bio(c.cli, c.crd, c.cwr); /* the SSL owns both */
    SSL_set_connect_state(c.cli);
    SSL_set_tlsext_host_name(c.cli, "localhost");
    const struct offer *o = &offers[P->tls12][P->offer];
    SSL_set_min_proto_version(c.cli, TLS1_2_VERSION);
    SSL_set_max_proto_version(c.cli, P->tls12 ? TLS1_2_VERSION : TLS1_3_VERSION);
    if (o->ciphers)
        CHECK(P->tls12 ? SSL_set_cipher_list(c.cli, o->ciphers) : SSL_set_ciphersuites(c.cli, o->ciphers));
    if (o->sigalgs)
        CHECK(SSL_set1_sigalgs_list(c.cli, o->sigalgs));
    if (o->groups)
        CHECK(SSL_set1_groups_list(c.cli, o->groups));
    if (o->no_etm)
        SSL_set_options(c.cli, SSL_OP_NO_ENCRYPT_THEN_MAC);
    if (*sess)
        CHECK(SSL_set_session(c.cli, *sess));
    ERR_clear_error();

    /* The handshake: the client's first step writes its ClientHello. */
    bool calm = pump(&c);
    if (!c.tampered) {
        bool resumes = *sess != NULL && P->rotations < 2;
        CHECK(calm && c.cli_done && c.hs == TLS_DONE && alive(&c));
        CHECK(SSL_version(c.cli) == (P->tls12 ? TLS1_2_VERSION : TLS1_3_VERSION));
        CHECK(tls_resumed(c.srv) == resumes);
        CHECK(SSL_session_reused(c.cli) == resumes);
    }

    /* The client's data, in pieces, each pumped through before the next;
     * after the first, a KeyUpdate (1.3; a renegotiation attempt for 1.2
     * comes after the data, below). */
    size_t off = 0, npieces = 0;
    bool reneg = false;
    while (off < P->data_len && alive(&c) && c.cli_done) {
        size_t n = next_piece(P, off, P->data_len, npieces++);
        client_write(&c, P->data + off, n);
        off += n;
        if (P->midway && !P->tls12 && npieces == 1 && !c.cli_dead) {
            /* OpenSSL answers with the server's next write
             * (ssl3_write_bytes), so the reply checks it */
            CHECK(SSL_key_update(c.cli, SSL_KEY_UPDATE_REQUESTED) == 1);
            CHECK(SSL_do_handshake(c.cli) == 1); /* sends it now */
            ERR_clear_error();
            drain_client(&c);
        }
        calm = pump(&c);
    }
    calm = pump(&c);
    if (!c.tampered) {
        CHECK(calm && alive(&c));
        CHECK(c.got.len == P->data_len && (!c.got.len || !memcmp(c.got.p, P->data, c.got.len)));
    }
    if (P->junk && P->data_len && alive(&c)) {
        /* Plaintext where records belong: refused or waited for, nothing
         * more read. */
        size_t had = c.got.len;
        buf_put(&c.c2s, P->data, P->data_len);
        c.tampered = true;
        pump(&c);
        CHECK(c.got.len == had);
    }
    if (P->midway && P->tls12 && alive(&c) && c.cli_done) {
        /* OpenSSL's client treats the refusal as fatal and says so: the
         * server then fails on that alert. */
        reneg = true;
        CHECK(SSL_renegotiate(c.cli) == 1);
        SSL_do_handshake(c.cli);
        ERR_clear_error();
        drain_client(&c);
        calm = pump(&c);
        if (!c.tampered) {
            CHECK(calm && c.cli_dead && c.srv_dead);
            CHECK(strstr(c.why, "handshake failure") != NULL);
        }
    }

    /* The server's reply, in pieces through tls_write (as tls_seal: only
     * once the handshake is done). */
    off = 0, npieces = 0;
    while (off < P->reply_len && !c.srv_dead && c.hs == TLS_DONE) {
        size_t n = next_piece(P, off, P->reply_len, npieces++);
        if (tls_write(c.srv, P->reply + off, n, &c.out, &c.pool) != 0) {
            srv_failed(&c);
            break;
        }
        no_stale_errors();
        off += n;
        pump(&c);
    }
    calm = pump(&c);
    if (alive(&c) && c.hs == TLS_DONE && c.cli_done && !reneg) {
        /* c2s corruption cannot touch what goes the other way */
        CHECK(calm);
        CHECK(c.reply_got.len == P->reply_len &&
              (!c.reply_got.len || !memcmp(c.reply_got.p, P->reply, c.reply_got.len)));
    }

    /* Our close_notify, once; then the client's, if it sends one. */
    if (!c.srv_dead) {
        tls_shutdown(c.srv, &c.out, &c.pool);
        no_stale_errors();
        size_t had = c.out.bytes;
        tls_shutdown(c.srv, &c.out, &c.pool);
        CHECK(c.out.bytes == had);
        calm = pump(&c);
        if (!c.tampered)
            CHECK(calm && c.cli_closed);
    }
    if (P->close && !c.cli_dead && c.cli_done) {
        SSL_shutdown(c.cli);
        ERR_clear_error();
        drain_client(&c);
        calm = pump(&c);
        if (!c.tampered)
            CHECK(calm && c.srv_closed);
    }

    if (verbose)
        fprintf(stderr,
                "conn: %s %s resumed=%d tampered=%d hs=%d srv_dead=%d srv_closed=%d cli_done=%d cli_dead=%d "
                "cli_closed=%d c2s=%zu/%zu read=%zu/%zu reply=%zu/%zu why=\"%s\"\n",
                c.hs == TLS_DONE ? tls_version(c.srv) : "-", c.hs == TLS_DONE ? tls_cipher(c.srv) : "-",
                c.hs == TLS_DONE && tls_resumed(c.srv), c.tampered, c.hs, c.srv_dead, c.srv_closed, c.cli_done,
                c.cli_dead, c.cli_closed, c.used, c.c2s.len, c.got.len, P->data_len, c.reply_got.len, P->reply_len,
                c.why);

    /* A session to resume: a clean first connection leaves one. */
    bool first = *sess == NULL;
    SSL_SESSION_free(*sess);
    *sess = NULL;
    if (first && P->resume && !c.tampered && !reneg) {
        CHECK(SSL_get0_session(c.cli) && SSL_SESSION_is_resumable(SSL_get0_session(c.cli)));
        *sess = SSL_get1_session(c.cli);
    }

    /* Freed without its close_notify, OpenSSL's client would mark the
     * session not resumable (ssl_clear_bad_session): it was clean. */
    SSL_set_shutdown(c.cli, SSL_get_shutdown(c.cli) | SSL_SENT_SHUTDOWN);
    SSL_free(c.cli);
    tls_conn_free(c.srv);
    outq_clear(&c.out, &c.pool);
    outq_pool_free(&c.pool); /* freed, not pooled: ASan sees a stale block */
    free(c.rbuf);
    free(c.got.p);
    free(c.reply_got.p);
    free(c.c2s.p);
    ERR_clear_error();
}

/* Raw mode: the input is the client. */
static void run_raw(const uint8_t *data, size_t size)
{
    size_t nlen = (data[0] >> 1) & 7;
    if (size < 2 + nlen)
        return;
    params_t P = { .cap = read_cap(data[1]), .c2s = { data + 2, nlen, 0 } };
    conn_t c = { .P = &P, .hs = TLS_AGAIN, .tampered = true };
    buf_put(&c.c2s, data + 2 + nlen, size - 2 - nlen);
    c.rbuf = malloc(P.cap);
    c.srv = tls_conn_new(server);
    CHECK(c.rbuf && c.srv);
    for (int i = 0; i < MAX_STEPS && server_step(&c); i++) {
        /* what the server says goes nowhere; its chain must stay sound */
        const char *p;
        size_t n;
        while ((n = outq_peek(&c.out, &p)))
            outq_drop(&c.out, &c.pool, n);
        CHECK(c.out.bytes == 0);
    }
    if (!c.srv_dead && c.hs == TLS_DONE) {
        tls_shutdown(c.srv, &c.out, &c.pool);
        no_stale_errors();
    }
    if (verbose)
        fprintf(stderr, "raw: hs=%d srv_dead=%d c2s=%zu/%zu read=%zu why=\"%s\"\n", c.hs, c.srv_dead, c.used,
                c.c2s.len, c.got.len, c.why);
    tls_conn_free(c.srv);
    outq_clear(&c.out, &c.pool);
    outq_pool_free(&c.pool);
    free(c.rbuf);
    free(c.c2s.p);
    ERR_clear_error();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    rng = 0x6d786761746521ull; /* the same bytes for the same input */
    if (data[0] & 1) {
        run_raw(data, size);
        return 0;
    }
    if (size < HDR)
        return 0;
    params_t P = { 0 };
    uint8_t h0 = data[0], h1 = data[1], h3 = data[3];
    P.tls12 = h0 & 2;
    P.offer = (h0 >> 2) & 3;
    P.corrupt = h0 & 0x10;
    P.close = h0 & 0x20;
    P.midway = h0 & 0x40;
    P.resume = h0 & 0x80;
    P.big = h1 & 0x40;
    P.junk = h1 & 0x80;
    P.cap = read_cap(data[2]);
    P.corrupt_at = data[4] < 0x80 ? ((size_t)data[4] << 8 | data[5]) % 4096 : (size_t)(data[4] & 0x7f) << 8 | data[5];
    P.corrupt_xor = data[6] ? data[6] : 0x80;
    P.rotations = data[7] & 3;
    size_t n1 = h1 & 7, n2 = (h1 >> 3) & 7, n3 = h3 & 15;
    if (size < HDR + n1 + n2 + n3)
        return 0;
    const uint8_t *l = data + HDR;
    P.c2s = (lens_t){ l, n1, 0 };
    P.s2c = (lens_t){ l + n1, n2, 0 };
    P.pieces = (lens_t){ l + n1 + n2, n3, 0 };
    const char *payload = (const char *)l + n1 + n2 + n3;
    size_t plen = size - HDR - n1 - n2 - n3;
    if (plen > MAX_PAYLOAD)
        plen = MAX_PAYLOAD;
    size_t dlen = plen * (h3 >> 4) / 16;
    /* exact-size copies, repeated up to BIG_LEN when asked */
    size_t want_d = P.big && dlen ? BIG_LEN : dlen, want_r = P.big && plen > dlen ? BIG_LEN : plen - dlen;
    char *d = malloc(want_d ? want_d : 1), *r = malloc(want_r ? want_r : 1);
    CHECK(d && r);
    for (size_t i = 0; i < want_d; i++)
        d[i] = payload[i % dlen];
    for (size_t i = 0; i < want_r; i++)
        r[i] = payload[dlen + i % (plen - dlen)];
    P.data = d, P.data_len = want_d;
    P.reply = r, P.reply_len = want_r;

    SSL_SESSION *sess = NULL;
    run_conn(&P, !P.resume, &sess);
    if (P.resume && sess) { /* none after junk or a renegotiation */
        for (unsigned i = 0; i < P.rotations; i++) {
            rng ^= ++rotations * 0xd1b54a32d192ed03ull; /* a key never made before */
            tls_ticket_rotate(0);                        /* 0: the current key is old enough */
        }
        P.c2s.k = P.s2c.k = P.pieces.k = 0;
        run_conn(&P, true, &sess);
    }
    SSL_SESSION_free(sess);
    free(d);
    free(r);
    return 0;
}

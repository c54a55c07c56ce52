/*
 * load.h - mxgate-load: an io_uring SMTP load generator (client mode) and a
 * fault-injecting SMTP sink (sink mode). See bench/load/README.md.
 *
 * Threads: one io_uring loop per thread, each owning its connections. The
 * main thread only starts them, prints the progress line, writes the count
 * file and the final JSON. Per-thread counters are relaxed atomics written by
 * their one thread (a load and a store, no read-modify-write) and read by
 * main at any time.
 */
#ifndef MXLOAD_H
#define MXLOAD_H

#include "hist.h"

#include <liburing.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#define CINC(x) atomic_store_explicit(&(x), atomic_load_explicit(&(x), memory_order_relaxed) + 1u, memory_order_relaxed)
#define CADD(x, n)                                                                                           \
    atomic_store_explicit(&(x), atomic_load_explicit(&(x), memory_order_relaxed) + (uint64_t)(n),            \
                          memory_order_relaxed)
#define CSET(x, v) atomic_store_explicit(&(x), (uint64_t)(v), memory_order_relaxed)
#define CGET(x) atomic_load_explicit(&(x), memory_order_relaxed)

/* ---- user_data: op (8 bits) | slot (24 bits) | generation (32 bits) ---- */
enum op { OP_NONE, OP_CONNECT, OP_RECV, OP_SEND, OP_TIMER, OP_CTIMER, OP_STIMER, OP_ACCEPT };
#define UD(op, slot, gen) ((uint64_t)(op) << 56 | (uint64_t)((slot) & 0xffffffu) << 32 | (uint64_t)(uint32_t)(gen))
#define UD_OP(u) ((unsigned)((u) >> 56))
#define UD_SLOT(u) ((uint32_t)(((u) >> 32) & 0xffffffu))
#define UD_GEN(u) ((uint32_t)(u))

#define RING_ENTRIES 1024u
#define TICK_US 100000u /* the per-thread housekeeping tick */

/* ---- options ---- */
typedef struct size_class {
    uint32_t size;
    uint32_t weight;
} size_class_t;
#define SIZE_CLASSES_MAX 16

typedef struct opts {
    int mode; /* 'c' client, 's' sink */
    int threads;
    char addr_text[256];
    struct sockaddr_storage addr;
    socklen_t addrlen;
    const char *json_file, *record_file;
    bool quiet;
    /* client */
    uint32_t connections;
    uint64_t messages; /* 0: no limit (duration only) */
    double duration;   /* seconds; 0: no limit (messages only) */
    double timeout;    /* hard limit, seconds */
    double reply_timeout;
    size_class_t sizes[SIZE_CLASSES_MAX];
    int nsizes;
    const char *size_text;
    uint32_t rcpts;
    const char *rcpt_domain, *from, *ehlo, *run_id;
    bool pipelining, per_message;
    double rate; /* msgs/s; 0: closed loop */
    bool starttls, tls_resume, tls_verify;
    const char *tls_ca, *tls_name;
    /* sink */
    const char *count_file, *hostname;
    bool check;
    uint64_t seed;
    uint32_t latency_ms, data_latency_ms, greeting_delay_ms;
    double tempfail_rate, permfail_rate, rcpt_tempfail_rate, close_mid_data_rate;
    uint64_t slow_read; /* bytes/s per connection; 0: off */
    uint32_t max_connections;
    int rcvbuf;
    uint64_t size_limit;
} opts_t;

extern opts_t g_opt;
extern atomic_int g_stop;  /* client: 1 stop now (timeout, signal); sink: 1 shut down */
extern atomic_int g_abort; /* client: why the run was cut short (enum abort_reason) */
extern uint64_t g_t0_us;   /* CLOCK_MONOTONIC at start */

enum abort_reason { AB_NONE, AB_TIMEOUT, AB_UNREACHABLE, AB_SIGNAL, AB_SETUP };

/* ---- util.c ---- */
uint64_t now_us(void);
int parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *len);
uint32_t crc32_update(uint32_t crc, const void *p, size_t n); /* IEEE 802.3, as zlib: crc32_update(0, ...) */
uint64_t rng_next(uint64_t *s);                             /* splitmix64 */
double rng_unit(uint64_t *s);                               /* [0, 1) */
int ring_init(struct io_uring *ring, unsigned entries, char *err, size_t errlen);
struct io_uring_sqe *get_sqe(struct io_uring *ring);
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Per-thread record buffer appended with write(2) to an O_APPEND file. */
typedef struct recbuf {
    int fd;
    size_t len;
    char buf[65536];
} recbuf_t;
void rec_line(recbuf_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void rec_flush(recbuf_t *r);

/* A tiny JSON writer (to a FILE). */
typedef struct json {
    FILE *f;
    int depth;
    bool first[16];
} json_t;
void j_open(json_t *j, const char *key); /* key NULL inside an array / at the top */
void j_close(json_t *j);
void j_u64(json_t *j, const char *key, uint64_t v);
void j_dbl(json_t *j, const char *key, double v);
void j_str(json_t *j, const char *key, const char *v);
void j_bool(json_t *j, const char *key, bool v);
void j_hist(json_t *j, const char *key, const hist_t *h);

/* ---- client.c / sink.c ---- */
int client_main(void);
int sink_main(void);

#endif

/*
 * util.c - clock, addresses, CRC-32, a PRNG, ring set-up, record files and
 * a small JSON writer for mxgate-load.
 */
#include "load.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("mxgate-load: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

int parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[256];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof host)
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port <= 0 || port > 65535)
        return -1;
    char *h = host;
    if (h[0] == '[') {
        size_t n = strlen(h);
        if (n < 2 || h[n - 1] != ']')
            return -1;
        h[n - 1] = 0;
        h++;
    }
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, h, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *len = sizeof *a4;
        return 0;
    }
    if (inet_pton(AF_INET6, h, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof *a6;
        return 0;
    }
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res = NULL;
    if (getaddrinfo(h, NULL, &hints, &res) || !res)
        return -1;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    if (ss->ss_family == AF_INET)
        a4->sin_port = htons((uint16_t)port);
    else
        a6->sin6_port = htons((uint16_t)port);
    freeaddrinfo(res);
    return 0;
}

/* CRC-32 (IEEE 802.3, reflected, as zlib's crc32()), slicing by 8. */
static uint32_t crc_tab[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_tab[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_tab[t][i] = (crc_tab[t - 1][i] >> 8) ^ crc_tab[0][crc_tab[t - 1][i] & 0xff];
}

uint32_t crc32_update(uint32_t crc, const void *data, size_t n)
{
    pthread_once(&crc_once, crc_init);
    const unsigned char *p = data;
    uint32_t c = ~crc;
    while (n >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
        lo ^= c;
        c = crc_tab[7][lo & 0xff] ^ crc_tab[6][(lo >> 8) & 0xff] ^ crc_tab[5][(lo >> 16) & 0xff] ^
            crc_tab[4][lo >> 24] ^ crc_tab[3][hi & 0xff] ^ crc_tab[2][(hi >> 8) & 0xff] ^
            crc_tab[1][(hi >> 16) & 0xff] ^ crc_tab[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--)
        c = crc_tab[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    return ~c;
}

uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double rng_unit(uint64_t *s)
{
    return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

int ring_init(struct io_uring *ring, unsigned entries, char *err, size_t errlen)
{
    static const unsigned flag_sets[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
        IORING_SETUP_COOP_TASKRUN,
        0,
    };
    int rc = -EINVAL;
    for (size_t i = 0; i < sizeof flag_sets / sizeof flag_sets[0]; i++) {
        struct io_uring_params p;
        memset(&p, 0, sizeof p);
        p.flags = flag_sets[i] | IORING_SETUP_CQSIZE;
        p.cq_entries = entries * 8;
        rc = io_uring_queue_init_params(entries, ring, &p);
        if (rc == 0) {
            if (!(p.features & IORING_FEAT_NODROP)) {
                io_uring_queue_exit(ring);
                snprintf(err, errlen, "io_uring: the kernel lacks IORING_FEAT_NODROP");
                return -1;
            }
            return 0;
        }
        if (rc != -EINVAL)
            break;
    }
    snprintf(err, errlen, "io_uring_queue_init: %s", strerror(-rc));
    return -1;
}

struct io_uring_sqe *get_sqe(struct io_uring *ring)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    while (!sqe) {
        io_uring_submit(ring);
        sqe = io_uring_get_sqe(ring);
    }
    return sqe;
}

/* ---- record files ---- */

void rec_flush(recbuf_t *r)
{
    size_t off = 0;
    while (off < r->len) {
        ssize_t n = write(r->fd, r->buf + off, r->len - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "mxgate-load: record file: %s\n", strerror(errno));
            break;
        }
        off += (size_t)n;
    }
    r->len = 0;
}

void rec_line(recbuf_t *r, const char *fmt, ...)
{
    if (!r || r->fd < 0)
        return;
    if (r->len > sizeof r->buf - 1024)
        rec_flush(r);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(r->buf + r->len, sizeof r->buf - r->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        r->len += (size_t)n < sizeof r->buf - r->len ? (size_t)n : sizeof r->buf - r->len - 1;
}

/* ---- JSON ---- */

static void j_sep(json_t *j, const char *key)
{
    if (j->depth > 0) {
        if (!j->first[j->depth])
            fputc(',', j->f);
        j->first[j->depth] = false;
    }
    if (key)
        fprintf(j->f, "\"%s\":", key);
}

void j_open(json_t *j, const char *key)
{
    j_sep(j, key);
    fputc('{', j->f);
    j->depth++;
    j->first[j->depth] = true;
}

void j_close(json_t *j)
{
    fputc('}', j->f);
    j->depth--;
    if (j->depth == 0)
        fputc('\n', j->f);
}

void j_u64(json_t *j, const char *key, uint64_t v)
{
    j_sep(j, key);
    fprintf(j->f, "%llu", (unsigned long long)v);
}

void j_dbl(json_t *j, const char *key, double v)
{
    j_sep(j, key);
    if (isfinite(v))
        fprintf(j->f, "%.6g", v);
    else
        fputs("null", j->f);
}

void j_str(json_t *j, const char *key, const char *v)
{
    j_sep(j, key);
    fputc('"', j->f);
    for (const unsigned char *p = (const unsigned char *)(v ? v : ""); *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(j->f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(j->f, "\\u%04x", *p);
        else
            fputc(*p, j->f);
    }
    fputc('"', j->f);
}

void j_bool(json_t *j, const char *key, bool v)
{
    j_sep(j, key);
    fputs(v ? "true" : "false", j->f);
}

void j_hist(json_t *j, const char *key, const hist_t *h)
{
    j_open(j, key);
    j_u64(j, "count", hist_count(h));
    j_dbl(j, "mean_us", hist_mean(h));
    j_u64(j, "min_us", hist_min(h));
    j_u64(j, "p50_us", hist_percentile(h, 50));
    j_u64(j, "p90_us", hist_percentile(h, 90));
    j_u64(j, "p99_us", hist_percentile(h, 99));
    j_u64(j, "p999_us", hist_percentile(h, 99.9));
    j_u64(j, "max_us", hist_max(h));
    /* The distribution for plots: [percentile, us] from 1 to 99 and on
     * into the tail, each within the histogram's 1% relative error. */
    static const double tail[] = { 99.5, 99.9, 99.95, 99.99, 100 };
    j_sep(j, "cdf");
    fputc('[', j->f);
    for (int q = 1; q <= 99 + (int)(sizeof tail / sizeof tail[0]); q++) {
        double pct = q <= 99 ? q : tail[q - 100];
        fprintf(j->f, "%s[%g,%llu]", q > 1 ? "," : "", pct, (unsigned long long)hist_percentile(h, pct));
    }
    fputc(']', j->f);
    j_close(j);
}

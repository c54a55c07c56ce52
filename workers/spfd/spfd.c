/*
 * spfd.c - the SPF helper process: libspf2 off the gateway's address space.
 *
 * libspf2 blocks on DNS and has a history of memory-safety bugs, so it runs
 * here, in a process of its own, the way OpenSMTPD runs its lookups:
 * unprivileged (setuid to --user, no new privileges), no listening socket,
 * no descriptor but stdio and the workers' sockets, killed with the
 * gateway. The dispatcher (the main thread) polls the sockets and queues
 * requests in a bounded ring: a full ring answers temperror at once, so a
 * slow DNS never grows memory. --threads pool threads each own one
 * SPF_server_t with its own DNS layer (spf_dns.c), run a check and send the
 * reply datagram themselves.
 *
 * Sockets are never closed before exit: a reply still being computed for a
 * worker that hung up must not land on a descriptor number that a DNS
 * query has reused since.
 */
#include "spfd.h"

#include "log.h"

#include "spf_dns.h"
#include "spf_proto.h"

#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define SPFD_QUEUE_MAX 4096 /* requests waiting for a pool thread */
#define SPFD_FDS_MAX 1024   /* worker sockets */
#define SPFD_THREADS_MAX 256
#define SPFD_RECV_BURST 64     /* datagrams per socket per poll turn */
#define SPFD_JOIN_GRACE_S 2    /* at EOF, for checks still waiting on DNS */
#define SPFD_SEND_WAIT_MS 1000 /* a pool thread's wait on a full socket buffer */

/* A fail's explanation when the domain publishes none (libspf2's own
 * points at a web site that is gone). */
#define SPFD_DEFAULT_EXP "%{c}%_is%_not%_allowed%_to%_send%_mail%_from%_%{o}"

typedef struct spfd_opts {
    int fds[SPFD_FDS_MAX];
    unsigned nfds;
    const char *dns_server;
    unsigned threads, dns_timeout, cache_size;
    const char *user;
    char hostname[256];
    int level;
} spfd_opts_t;

/* One request, parsed and NUL-terminated; copied by value through the ring. */
typedef struct spfd_job {
    int fd;
    uint64_t id; /* the worker's, echoed whole */
    uint8_t family;
    uint8_t addr[16];
    uint16_t helo_len, sender_len;
    char helo[SPF_NAME_MAX + 1];
    char sender[SPF_SENDER_MAX + 1];
    struct timespec queued;
} spfd_job_t;

typedef struct spfd_answer {
    uint8_t result;
    uint32_t ttl;
    size_t received_len, comment_len;
    char received[SPF_RECEIVED_MAX + 1];
    char comment[SPF_COMMENT_MAX + 1];
} spfd_answer_t;

typedef struct spfd spfd_t;

typedef struct spfd_thread {
    spfd_t *d;
    pthread_t th;
    bool started;
    SPF_server_t *spf;
    SPF_dns_server_t *layer;   /* used by spf, freed after it */
    const spf_dns_check_t *dc; /* the last check's DNS counters */
    uint64_t checks, send_failed;
} spfd_thread_t;

struct spfd {
    spfd_opts_t o;
    spf_dns_t *dns;
    spfd_thread_t *pool;

    pthread_mutex_t mu; /* guards the ring and stop */
    pthread_cond_t cv;
    spfd_job_t *ring;
    unsigned head, len;
    bool stop;

    /* the dispatcher's own counters */
    uint64_t requests, overloaded, malformed, send_failed;
    time_t overload_logged;
};

/* ---- logging: log_line (log.c), as the gateway logs ---------------------- */

/* An untrusted string as a logfmt value: quoted, escaped, cut short. */
static const char *qv(char *dst, size_t cap, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    dst[n++] = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (n + 8 >= cap) {
            memcpy(dst + n, "...", 3);
            n += 3;
            break;
        }
        if (c == '"' || c == '\\') {
            dst[n++] = '\\';
            dst[n++] = (char)c;
        } else if (c < 0x20 || c > 0x7e) {
            dst[n++] = '\\';
            dst[n++] = 'x';
            dst[n++] = hex[c >> 4];
            dst[n++] = hex[c & 15];
        } else {
            dst[n++] = (char)c;
        }
    }
    dst[n++] = '"';
    dst[n] = '\0';
    return dst;
}

/* libspf2's messages: debug and info are chatter, an error is a broken
 * invariant inside libspf2 and it expects the handler not to return. */
static void spfd_lib_error(const char *file, int line, const char *msg) __attribute__((noreturn));
static void spfd_lib_error(const char *file, int line, const char *msg)
{
    char q[512];
    log_line(LOG_ERROR, "event=spf_helper_libspf2_abort file=%s line=%d msg=%s", file ? file : "-", line,
             qv(q, sizeof q, msg ? msg : "", msg ? strlen(msg) : 0));
    abort();
}

static void spfd_lib_warn(const char *file, int line, const char *msg)
{
    char q[512];
    (void)file;
    (void)line;
    log_line(LOG_DEBUG, "event=spf_libspf2_warning msg=%s", qv(q, sizeof q, msg ? msg : "", msg ? strlen(msg) : 0));
}

/* ---- command line ------------------------------------------------------------ */

static int parse_uint(const char *s, unsigned lo, unsigned hi, unsigned *out)
{
    char *end;
    if (!s || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return -1;
    *out = (unsigned)v;
    return 0;
}

static int parse_fds(const char *s, spfd_opts_t *o, char *err, size_t errlen)
{
    char buf[8192];
    if (strlen(s) >= sizeof buf) {
        snprintf(err, errlen, "--fds: list too long");
        return -1;
    }
    strcpy(buf, s);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        unsigned fd;
        if (parse_uint(tok, 3, 1u << 20, &fd)) {
            snprintf(err, errlen, "--fds: '%.32s' is not a descriptor number above 2", tok);
            return -1;
        }
        for (unsigned i = 0; i < o->nfds; i++)
            if (o->fds[i] == (int)fd) {
                snprintf(err, errlen, "--fds: %u given twice", fd);
                return -1;
            }
        if (o->nfds == SPFD_FDS_MAX) {
            snprintf(err, errlen, "--fds: more than %d sockets", SPFD_FDS_MAX);
            return -1;
        }
        o->fds[o->nfds++] = (int)fd;
    }
    if (!o->nfds) {
        snprintf(err, errlen, "--fds: no descriptor given");
        return -1;
    }
    return 0;
}

static int parse_level(const char *s, int *level)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (strcmp(s, names[i]) == 0) {
            *level = i;
            return 0;
        }
    return -1;
}

/* `--name value` or `--name=value`, from argv[2] on. */
static int spfd_parse(int argc, char **argv, spfd_opts_t *o, char *err, size_t errlen)
{
    memset(o, 0, sizeof *o);
    o->threads = 16;
    o->dns_timeout = 5;
    o->cache_size = 8192;
    o->user = "nobody";
    o->level = LOG_INFO;
    if (gethostname(o->hostname, sizeof o->hostname - 1) != 0 || !o->hostname[0])
        strcpy(o->hostname, "localhost");
    bool have_fds = false;

    for (int i = 2; i < argc; i++) {
        const char *arg = argv[i], *val = NULL;
        char name[32];
        if (strncmp(arg, "--", 2) != 0) {
            snprintf(err, errlen, "unexpected argument '%.64s'", arg);
            return -1;
        }
        const char *eq = strchr(arg, '=');
        size_t nlen = eq ? (size_t)(eq - arg) : strlen(arg);
        if (nlen >= sizeof name) {
            snprintf(err, errlen, "unknown option '%.64s'", arg);
            return -1;
        }
        memcpy(name, arg, nlen);
        name[nlen] = '\0';
        if (eq)
            val = eq + 1;
        else if (i + 1 < argc)
            val = argv[++i];
        else {
            snprintf(err, errlen, "%s needs a value", name);
            return -1;
        }

        int bad = 0;
        if (strcmp(name, "--fds") == 0) {
            if (parse_fds(val, o, err, errlen))
                return -1;
            have_fds = true;
        } else if (strcmp(name, "--dns-server") == 0) {
            o->dns_server = val;
        } else if (strcmp(name, "--threads") == 0) {
            bad = parse_uint(val, 1, SPFD_THREADS_MAX, &o->threads);
        } else if (strcmp(name, "--user") == 0) {
            o->user = val;
            bad = !val[0];
        } else if (strcmp(name, "--dns-timeout") == 0) {
            bad = parse_uint(val, 1, 60, &o->dns_timeout);
        } else if (strcmp(name, "--cache-size") == 0) {
            bad = parse_uint(val, 0, 1u << 24, &o->cache_size);
        } else if (strcmp(name, "--hostname") == 0) {
            bad = !val[0] || strlen(val) >= sizeof o->hostname;
            if (!bad)
                strcpy(o->hostname, val);
        } else if (strcmp(name, "--log-level") == 0) {
            bad = parse_level(val, &o->level);
        } else {
            snprintf(err, errlen, "unknown option '%s'", name);
            return -1;
        }
        if (bad) {
            snprintf(err, errlen, "%s: bad value '%.64s'", name, val);
            return -1;
        }
    }
    if (!have_fds) {
        snprintf(err, errlen, "--fds is required");
        return -1;
    }
    return 0;
}

/* ---- process hygiene -------------------------------------------------------- */

/* Each --fds entry must be an open AF_UNIX SOCK_SEQPACKET socket. */
static int check_fds(const spfd_opts_t *o, char *err, size_t errlen)
{
    for (unsigned i = 0; i < o->nfds; i++) {
        int type = 0, domain = 0;
        socklen_t len = sizeof type;
        if (getsockopt(o->fds[i], SOL_SOCKET, SO_TYPE, &type, &len) != 0) {
            snprintf(err, errlen, "--fds: %d: %s", o->fds[i], strerror(errno));
            return -1;
        }
        len = sizeof domain;
        if (getsockopt(o->fds[i], SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0 || domain != AF_UNIX ||
            type != SOCK_SEQPACKET) {
            snprintf(err, errlen, "--fds: %d is not an AF_UNIX SOCK_SEQPACKET socket", o->fds[i]);
            return -1;
        }
    }
    return 0;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

static void close_range_fallback(unsigned lo, unsigned hi)
{
    if (close_range(lo, hi, 0) == 0)
        return;
    struct rlimit rl;
    unsigned max = 65536;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < max)
        max = (unsigned)rl.rlim_cur;
    for (unsigned fd = lo; fd <= hi && fd < max; fd++)
        close((int)fd);
}

/* Everything but stdio and the worker sockets: no inherited listener, spool
 * or log file stays reachable from here. */
static void close_other_fds(const spfd_opts_t *o)
{
    int keep[SPFD_FDS_MAX];
    memcpy(keep, o->fds, o->nfds * sizeof keep[0]);
    qsort(keep, o->nfds, sizeof keep[0], cmp_int);
    unsigned next = 3;
    for (unsigned i = 0; i < o->nfds; i++) {
        if ((unsigned)keep[i] > next)
            close_range_fallback(next, (unsigned)keep[i] - 1);
        next = (unsigned)keep[i] + 1;
    }
    close_range_fallback(next, ~0u);
}

/* As root: become --user for good (and prove it by failing to become root
 * again). Otherwise there is nothing to drop. */
static int drop_privileges(const struct passwd *pw, char *err, size_t errlen)
{
    if (geteuid() != 0)
        return 0;
    if (!pw) {
        snprintf(err, errlen, "running as root and --user does not exist");
        return -1;
    }
    if (pw->pw_uid == 0) {
        snprintf(err, errlen, "refusing to run as root: --user %s has uid 0", pw->pw_name);
        return -1;
    }
    if (setgroups(0, NULL) != 0 || setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) != 0 ||
        setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid) != 0) {
        snprintf(err, errlen, "cannot drop privileges to %s: %s", pw->pw_name, strerror(errno));
        return -1;
    }
    if (setuid(0) == 0 || geteuid() == 0) {
        snprintf(err, errlen, "privileges not dropped: root is still reachable");
        return -1;
    }
    return 0;
}

/* ---- replies ---------------------------------------------------------------- */

/* Printable ASCII only, cut at cap: the text goes into a header and a reply. */
static size_t copy_text(char *dst, size_t cap, const char *src)
{
    size_t n = 0;
    for (; src && *src && n < cap; src++) {
        unsigned char c = (unsigned char)*src;
        dst[n++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    dst[n] = '\0';
    return n;
}

/* One reply datagram. A full socket buffer (a worker not reading) is
 * waited on for at most wait_ms, then the reply is dropped: the worker's
 * own timeout answers for it. */
static int spfd_send(int fd, uint64_t id, const spfd_answer_t *a, int wait_ms)
{
    spf_res_t h;
    memset(&h, 0, sizeof h);
    h.id = id;
    h.result = a->result;
    h.received_len = (uint16_t)a->received_len;
    h.comment_len = (uint16_t)a->comment_len;
    h.ttl = a->result == SPFR_TEMPERROR ? 0 : a->ttl;
    struct iovec iov[3] = {
        {&h, sizeof h},
        {(void *)a->received, a->received_len},
        {(void *)a->comment, a->comment_len},
    };
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 3};
    for (int tries = 0; tries < 4; tries++) {
        if (sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT) >= 0)
            return 0;
        if (errno == EINTR)
            continue;
        if ((errno != EAGAIN && errno != EWOULDBLOCK) || wait_ms <= 0)
            return -1;
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        poll(&p, 1, wait_ms);
        wait_ms = 0; /* one wait, then one more try */
    }
    return -1;
}

/* RFC 5322 atext: what a key-value pair's value may hold unquoted. */
static bool atext(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

/* A key-value pair's value (RFC 7208 9.1): a dot-atom as it is, anything
 * else as a quoted-string, so client-chosen text (a HELO name, a sender)
 * can never add pairs of its own. */
static int kv_value(char *out, size_t cap, const char *v)
{
    bool dotatom = *v && *v != '.';
    for (const char *p = v; *p && dotatom; p++)
        dotatom = atext((unsigned char)*p) || (*p == '.' && p[1] && p[1] != '.');
    if (dotatom)
        return snprintf(out, cap, "%s", v);
    size_t n = 0;
    if (cap < 3)
        return 0;
    out[n++] = '"';
    for (const char *p = v; *p && n + 4 < cap; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\')
            out[n++] = '\\';
        out[n++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    out[n++] = '"';
    out[n] = '\0';
    return (int)n;
}

/*
 * The Received-SPF value: "<result> (<host>: <why>) receiver=...;
 * client-ip=...; envelope-from="..."; helo=...;". Written here for every
 * result rather than taken from libspf2, which puts client text in the
 * pairs unquoted. The comment loses parentheses and backslashes, which
 * would end or escape it.
 */
static void build_received(spfd_answer_t *a, const char *host, uint8_t result, const char *why, const char *ip,
                           const char *env_from, const char *helo)
{
    char buf[SPF_RECEIVED_MAX + 256], c[SPF_COMMENT_MAX + 1], q[SPF_SENDER_MAX * 2 + 8];
    size_t k = 0, hl = strlen(host);
    const char *w = why ? why : "";
    if (strncmp(w, host, hl) == 0 && w[hl] == ':') /* libspf2's comment names the host already */
        for (w += hl + 1; *w == ' ';)
            w++;
    for (const char *p = w; *p && k < sizeof c - 1; p++)
        c[k++] = *p == '(' || *p == ')' || *p == '\\' ? ' ' : *p;
    c[k] = '\0';
    int n = snprintf(buf, sizeof buf, "%s (%s: %s) receiver=%s; client-ip=%s;", spf_result_name(result), host, c,
                     host, ip);
    if (env_from && *env_from && n > 0 && (size_t)n < sizeof buf) {
        kv_value(q, sizeof q, env_from);
        n += snprintf(buf + n, sizeof buf - (size_t)n, " envelope-from=%s;", q);
    }
    if (helo && *helo && n > 0 && (size_t)n < sizeof buf) {
        kv_value(q, sizeof q, helo);
        snprintf(buf + n, sizeof buf - (size_t)n, " helo=%s;", q);
    }
    a->result = result;
    a->received_len = copy_text(a->received, SPF_RECEIVED_MAX, buf);
}

/* A reply libspf2 did not write. */
static void answer_own(spfd_answer_t *a, const char *host, uint8_t result, const char *why, const char *ip,
                       const char *env_from, const char *helo)
{
    build_received(a, host, result, why, ip, env_from, helo);
    a->comment_len = copy_text(a->comment, SPF_COMMENT_MAX, why);
}

/* ---- the check --------------------------------------------------------------- */

/*
 * RFC 7208 section 4.3: a malformed domain (empty or over-long label, not
 * multi-label, no real top label) gives "none" before any DNS query. Also
 * refused: octets DNS names for SPF never carry (a NUL cannot even reach
 * libspf2 intact).
 */
static bool domain_ok(const char *d, size_t len)
{
    if (len > 0 && d[len - 1] == '.')
        len--;
    if (len == 0 || len > 253)
        return false;
    size_t label = 0, labels = 0;
    bool top_alpha = false;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || d[i] == '.') {
            if (label == 0 || label > 63)
                return false;
            labels++;
            label = 0;
            continue;
        }
        unsigned char c = (unsigned char)d[i];
        if (c <= 0x20 || c >= 0x7f)
            return false;
        label++;
    }
    /* the top label: alphanumerics and '-', not all digits */
    const char *t = memrchr(d, '.', len);
    t = t ? t + 1 : d;
    for (; t < d + len; t++) {
        if (!((*t >= '0' && *t <= '9') || (*t >= 'a' && *t <= 'z') || (*t >= 'A' && *t <= 'Z') || *t == '-'))
            return false;
        if (!(*t >= '0' && *t <= '9'))
            top_alpha = true;
    }
    return labels >= 2 && top_alpha;
}

/* libspf2 leaves result INVALID when it stopped before evaluating: no
 * record (none), a record that does not compile (permerror), DNS trouble
 * (temperror). */
static uint8_t map_invalid(SPF_response_t *r, SPF_errcode_t err)
{
    if (err == SPF_E_DNS_ERROR)
        return SPFR_TEMPERROR;
    for (int i = 0; i < SPF_response_messages(r); i++) {
        SPF_error_t *e = SPF_response_message(r, i);
        if (e && e->is_error && e->code != SPF_E_NOT_SPF && e->code != SPF_E_SUCCESS)
            return e->code == SPF_E_DNS_ERROR ? SPFR_TEMPERROR : SPFR_PERMERROR;
    }
    return err == SPF_E_NOT_SPF ? SPFR_NONE : SPFR_TEMPERROR;
}

static uint8_t map_result(SPF_response_t *r, SPF_errcode_t err)
{
    switch (SPF_response_result(r)) {
    case SPF_RESULT_NEUTRAL:
        return SPFR_NEUTRAL;
    case SPF_RESULT_PASS:
        return SPFR_PASS;
    case SPF_RESULT_FAIL:
        return SPFR_FAIL;
    case SPF_RESULT_SOFTFAIL:
        return SPFR_SOFTFAIL;
    case SPF_RESULT_NONE:
        return SPFR_NONE;
    case SPF_RESULT_TEMPERROR:
        return SPFR_TEMPERROR;
    case SPF_RESULT_PERMERROR:
        return SPFR_PERMERROR;
    default:
        return map_invalid(r, err);
    }
}

typedef struct spfd_ident {
    char ip[INET6_ADDRSTRLEN];
    const char *domain; /* the checked identity's domain */
    size_t domain_len;
    char env_from[SPF_SENDER_MAX + SPF_NAME_MAX + 16];
} spfd_ident_t;

/*
 * SPF_request_query_mailfrom() without its first step, which answers
 * "pass" for any loopback client without a lookup: RFC 7208 knows no such
 * exemption, and a gateway that trusts local clients says so in its own
 * policy, not in a Received-SPF header. The rest is the same public calls.
 */
static SPF_errcode_t query_mailfrom(SPF_server_t *spf, SPF_request_t *req, SPF_response_t **respp)
{
    SPF_record_t *rec = NULL;
    *respp = SPF_response_new(req);
    if (!*respp)
        return SPF_E_NO_MEMORY;
    req->cur_dom = req->env_from_dp;
    SPF_errcode_t err = SPF_server_get_record(spf, req, *respp, &rec);
    if (err == SPF_E_SUCCESS && rec) {
        (*respp)->spf_record_exp = rec;
        err = SPF_record_interpret(rec, req, *respp, 0);
    }
    if (rec)
        SPF_record_free(rec);
    return err;
}

/* Runs libspf2 on a well-formed identity. */
static void check_libspf2(spfd_thread_t *t, const spfd_job_t *j, const spfd_ident_t *id, bool v4, const void *addr,
                          spfd_answer_t *a, const spf_dns_check_t *dc)
{
    const char *host = t->d->o.hostname;
    SPF_request_t *req = SPF_request_new(t->spf);
    if (!req) {
        answer_own(a, host, SPFR_TEMPERROR, "out of memory", id->ip, id->env_from, j->helo);
        return;
    }
    if (v4) {
        struct in_addr a4;
        memcpy(&a4, addr, sizeof a4);
        SPF_request_set_ipv4(req, a4);
    } else {
        struct in6_addr a6;
        memcpy(&a6, addr, sizeof a6);
        SPF_request_set_ipv6(req, a6);
    }
    /* The helo first: an empty sender then becomes postmaster@helo. */
    if ((j->helo_len && SPF_request_set_helo_dom(req, j->helo) != SPF_E_SUCCESS) ||
        SPF_request_set_env_from(req, j->sender) != 0) {
        SPF_request_free(req);
        answer_own(a, host, SPFR_TEMPERROR, "out of memory", id->ip, id->env_from, j->helo);
        return;
    }
    SPF_response_t *resp = NULL;
    SPF_errcode_t err = query_mailfrom(t->spf, req, &resp);
    if (!resp) {
        SPF_request_free(req);
        answer_own(a, host, SPFR_TEMPERROR, "out of memory", id->ip, id->env_from, j->helo);
        return;
    }

    const char *env_from = req->env_from ? req->env_from : id->env_from;
    const char *recv = SPF_response_get_received_spf_value(resp);
    a->result = map_result(resp, err);
    if (dc->limit) { /* RFC 7208 section 4.6.4; the layer stopped libspf2 */
        char why[128];
        snprintf(why, sizeof why, "%s (RFC 7208 section 4.6.4)", dc->limit);
        answer_own(a, host, SPFR_PERMERROR, why, id->ip, env_from, j->helo);
    } else if (!recv || SPF_response_result(resp) == SPF_RESULT_INVALID) {
        /* libspf2 decided without writing the header value */
        char why[SPF_COMMENT_MAX];
        char dom[SPF_NAME_MAX + 1];
        snprintf(dom, sizeof dom, "%.*s", (int)id->domain_len, id->domain);
        switch (a->result) {
        case SPFR_NONE:
            snprintf(why, sizeof why, "domain of %s does not provide an SPF record", dom);
            break;
        case SPFR_TEMPERROR:
            snprintf(why, sizeof why, "encountered temporary error during SPF processing of domain of %s", dom);
            break;
        default:
            snprintf(why, sizeof why, "error in processing during lookup of domain of %s: %s", dom,
                     SPF_strerror(err ? err : SPF_response_errcode(resp)));
            break;
        }
        answer_own(a, host, a->result, why, id->ip, env_from, j->helo);
    } else {
        const char *comment =
            a->result == SPFR_FAIL ? SPF_response_get_explanation(resp) : SPF_response_get_smtp_comment(resp);
        if ((!comment || !*comment) && (a->result == SPFR_PERMERROR || a->result == SPFR_TEMPERROR))
            comment = SPF_strerror(SPF_response_errcode(resp));
        build_received(a, host, a->result, SPF_response_get_header_comment(resp), id->ip, env_from, j->helo);
        a->comment_len = copy_text(a->comment, SPF_COMMENT_MAX, comment);
    }
    SPF_response_free(resp);
    SPF_request_free(req);
}

static void spfd_check(spfd_thread_t *t, const spfd_job_t *j, spfd_answer_t *a)
{
    const char *host = t->d->o.hostname;
    spf_dns_check_t *dc = spf_dns_check_begin(t->layer);
    spfd_ident_t id;
    memset(a, 0, sizeof *a);
    t->dc = dc;

    /* RFC 7208 section 5: an IPv4-mapped IPv6 client is an IPv4 client. */
    bool v4 = j->family == 4;
    const void *addr = j->addr;
    struct in6_addr a6;
    memcpy(&a6, j->addr, sizeof a6);
    if (!v4 && IN6_IS_ADDR_V4MAPPED(&a6)) {
        v4 = true;
        addr = j->addr + 12;
    }
    inet_ntop(v4 ? AF_INET : AF_INET6, addr, id.ip, sizeof id.ip);

    /* The identity (section 2.4): MAIL FROM, or postmaster@HELO for the
     * null sender; a mailbox without '@' gets the postmaster local part. */
    if (j->sender_len) {
        const char *at = memrchr(j->sender, '@', j->sender_len);
        id.domain = at ? at + 1 : j->sender;
        id.domain_len = j->sender_len - (size_t)(id.domain - j->sender);
        snprintf(id.env_from, sizeof id.env_from, "%s%s", at ? "" : "postmaster@", j->sender);
    } else {
        id.domain = j->helo;
        id.domain_len = j->helo_len;
        snprintf(id.env_from, sizeof id.env_from, "postmaster@%s", j->helo);
    }
    if (memchr(j->helo, '\0', j->helo_len) || memchr(j->sender, '\0', j->sender_len) ||
        !domain_ok(id.domain, id.domain_len)) {
        answer_own(a, host, SPFR_NONE, "no valid domain to check", id.ip, id.env_from, j->helo);
        a->ttl = SPF_DNS_TTL_CAP;
        return;
    }
    check_libspf2(t, j, &id, v4, addr, a, dc);
    a->ttl = a->result == SPFR_TEMPERROR ? 0 : dc->min_ttl;
}

static double ms_since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t0->tv_sec) * 1e3 + (double)(now.tv_nsec - t0->tv_nsec) / 1e6;
}

static void *spfd_pool(void *arg)
{
    spfd_thread_t *t = arg;
    spfd_t *d = t->d;
    spfd_job_t *job = malloc(sizeof *job);
    spfd_answer_t *a = malloc(sizeof *a);
    if (!job || !a) {
        log_line(LOG_ERROR, "event=spf_helper_thread_fail error=\"out of memory\"");
        free(job);
        free(a);
        return NULL;
    }
    for (;;) {
        pthread_mutex_lock(&d->mu);
        while (!d->len && !d->stop)
            pthread_cond_wait(&d->cv, &d->mu);
        if (d->stop) {
            pthread_mutex_unlock(&d->mu);
            break;
        }
        *job = d->ring[d->head];
        d->head = (d->head + 1) % SPFD_QUEUE_MAX;
        d->len--;
        pthread_mutex_unlock(&d->mu);

        spfd_check(t, job, a);
        t->checks++;
        int sent = spfd_send(job->fd, job->id, a, SPFD_SEND_WAIT_MS);
        if (sent)
            t->send_failed++;
        if (log_level <= LOG_DEBUG) {
            char qh[SPF_NAME_MAX * 4 + 16], qs[SPF_SENDER_MAX * 4 + 16];
            log_line(LOG_DEBUG,
                     "event=spf_check fd=%d id=%" PRIu64 " helo=%s sender=%s result=%s ttl=%u dns_queries=%u "
                     "cache_hits=%u voids=%u sent=%s ms=%.1f",
                     job->fd, job->id, qv(qh, sizeof qh, job->helo, job->helo_len),
                     qv(qs, sizeof qs, job->sender, job->sender_len), spf_result_name(a->result),
                     a->result == SPFR_TEMPERROR ? 0 : a->ttl, t->dc->queries, t->dc->cache_hits, t->dc->voids,
                     sent ? "no" : "yes", ms_since(&job->queued));
        }
    }
    free(job);
    free(a);
    return NULL;
}

/* ---- the dispatcher ------------------------------------------------------------ */

static void reply_now(spfd_t *d, int fd, uint64_t id, const char *why)
{
    spfd_answer_t a;
    memset(&a, 0, sizeof a);
    a.result = SPFR_TEMPERROR;
    char buf[SPF_RECEIVED_MAX];
    snprintf(buf, sizeof buf, "temperror (%s: %s)", d->o.hostname, why);
    a.received_len = copy_text(a.received, SPF_RECEIVED_MAX, buf);
    a.comment_len = copy_text(a.comment, SPF_COMMENT_MAX, why);
    if (spfd_send(fd, id, &a, 0)) { /* the dispatcher never waits */
        d->send_failed++;
        log_line(LOG_DEBUG, "event=spf_helper_send_fail fd=%d id=%" PRIu64 " error=\"%s\"", fd, id, strerror(errno));
    }
}

/* One datagram: validated against its header, then queued. */
static void spfd_request(spfd_t *d, int fd, const unsigned char *buf, size_t n, bool truncated)
{
    spf_req_t h;
    const char *why = NULL;
    d->requests++;
    if (n < sizeof h.id) {
        d->malformed++;
        log_line(LOG_WARN, "event=spf_helper_bad_request fd=%d len=%zu reason=no_id action=drop", fd, n);
        return;
    }
    memset(&h, 0, sizeof h);
    memcpy(&h, buf, n < sizeof h ? n : sizeof h);
    if (truncated)
        why = "oversized";
    else if (n < sizeof h)
        why = "short";
    else if (h.family != 4 && h.family != 6)
        why = "family";
    else if (h.helo_len > SPF_NAME_MAX || h.sender_len > SPF_SENDER_MAX)
        why = "too_long";
    else if (sizeof h + h.helo_len + h.sender_len != n)
        why = "length";
    if (why) {
        d->malformed++;
        log_line(LOG_WARN, "event=spf_helper_bad_request fd=%d id=%" PRIu64 " len=%zu reason=%s action=temperror", fd,
                 h.id, n, why);
        reply_now(d, fd, h.id, "malformed SPF request");
        return;
    }

    pthread_mutex_lock(&d->mu);
    if (d->len == SPFD_QUEUE_MAX) {
        pthread_mutex_unlock(&d->mu);
        d->overloaded++;
        time_t now = time(NULL);
        if (now != d->overload_logged) { /* once a second at most */
            d->overload_logged = now;
            log_line(LOG_WARN, "event=spf_helper_overload queue=%d overloaded_total=%llu", SPFD_QUEUE_MAX,
                     (unsigned long long)d->overloaded);
        }
        reply_now(d, fd, h.id, "SPF helper overloaded");
        return;
    }
    spfd_job_t *j = &d->ring[(d->head + d->len) % SPFD_QUEUE_MAX];
    j->fd = fd;
    j->id = h.id;
    j->family = h.family;
    memcpy(j->addr, h.addr, sizeof j->addr);
    j->helo_len = h.helo_len;
    j->sender_len = h.sender_len;
    memcpy(j->helo, buf + sizeof h, h.helo_len);
    j->helo[h.helo_len] = '\0';
    memcpy(j->sender, buf + sizeof h + h.helo_len, h.sender_len);
    j->sender[h.sender_len] = '\0';
    clock_gettime(CLOCK_MONOTONIC, &j->queued);
    d->len++;
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

/* Reads what is there; true when the socket is done (EOF or error). */
static bool spfd_read(spfd_t *d, int fd)
{
    unsigned char buf[SPF_PROTO_MAX];
    for (int i = 0; i < SPFD_RECV_BURST; i++) {
        struct iovec iov = {buf, sizeof buf};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
        ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                return false;
            log_line(LOG_WARN, "event=spf_helper_recv_fail fd=%d error=\"%s\"", fd, strerror(errno));
            return true;
        }
        if (n == 0)
            return true;
        spfd_request(d, fd, buf, (size_t)n, (mh.msg_flags & MSG_TRUNC) != 0);
    }
    return false;
}

static int spfd_dispatch(spfd_t *d)
{
    struct pollfd *pf = calloc(d->o.nfds, sizeof *pf);
    if (!pf)
        return -1;
    for (unsigned i = 0; i < d->o.nfds; i++) {
        pf[i].fd = d->o.fds[i];
        pf[i].events = POLLIN;
    }
    unsigned open = d->o.nfds;
    while (open) {
        if (poll(pf, d->o.nfds, -1) < 0) {
            if (errno == EINTR)
                continue;
            log_line(LOG_ERROR, "event=spf_helper_poll_fail error=\"%s\"", strerror(errno));
            free(pf);
            return -1;
        }
        for (unsigned i = 0; i < d->o.nfds; i++) {
            if (pf[i].fd < 0 || !pf[i].revents)
                continue;
            if ((pf[i].revents & POLLNVAL) || spfd_read(d, pf[i].fd)) {
                log_line(LOG_DEBUG, "event=spf_helper_eof fd=%d", pf[i].fd);
                pf[i].fd = -1; /* kept open: see the top of this file */
                open--;
            }
        }
    }
    free(pf);
    return 0;
}

/* ---- start and stop ------------------------------------------------------------ */

static int spfd_setup_pool(spfd_t *d, char *err, size_t errlen)
{
    d->pool = calloc(d->o.threads, sizeof *d->pool);
    d->ring = calloc(SPFD_QUEUE_MAX, sizeof *d->ring);
    if (!d->pool || !d->ring) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (unsigned i = 0; i < d->o.threads; i++) {
        spfd_thread_t *t = &d->pool[i];
        t->d = d;
        t->layer = spf_dns_layer_new(d->dns, err, errlen);
        if (!t->layer)
            return -1;
        t->spf = SPF_server_new_dns(t->layer, 0);
        if (!t->spf) {
            snprintf(err, errlen, "SPF_server_new_dns failed");
            return -1;
        }
        SPF_response_t *r = NULL;
        if (SPF_server_set_rec_dom(t->spf, d->o.hostname) != SPF_E_SUCCESS ||
            SPF_server_set_explanation(t->spf, SPFD_DEFAULT_EXP, &r) != SPF_E_SUCCESS) {
            if (r)
                SPF_response_free(r);
            snprintf(err, errlen, "cannot configure libspf2");
            return -1;
        }
        if (r)
            SPF_response_free(r);
    }
    return 0;
}

/* Threads still waiting on DNS get a grace period; past it the process
 * leaves without them (there is nobody left to answer). */
static bool spfd_stop_pool(spfd_t *d)
{
    pthread_mutex_lock(&d->mu);
    d->stop = true;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += SPFD_JOIN_GRACE_S;
    bool all = true;
    for (unsigned i = 0; i < d->o.threads; i++) {
        if (!d->pool[i].started)
            continue;
        if (pthread_timedjoin_np(d->pool[i].th, NULL, &deadline) == 0)
            d->pool[i].started = false;
        else
            all = false;
    }
    return all;
}

static void spfd_free(spfd_t *d)
{
    for (unsigned i = 0; d->pool && i < d->o.threads; i++) {
        spfd_thread_t *t = &d->pool[i];
        /* SPF_server_new_dns() servers leave their layer to the caller */
        bool owned = t->spf && t->spf->destroy_resolver;
        if (t->spf)
            SPF_server_free(t->spf);
        if (t->layer && !owned)
            SPF_dns_free(t->layer);
    }
    free(d->pool);
    free(d->ring);
    spf_dns_free(d->dns);
    pthread_mutex_destroy(&d->mu);
    pthread_cond_destroy(&d->cv);
}

int spfd_main(int argc, char **argv)
{
    static spfd_t d; /* the options hold SPFD_FDS_MAX descriptors */
    char err[512];
    pid_t parent = getppid();

    if (spfd_parse(argc, argv, &d.o, err, sizeof err) || check_fds(&d.o, err, sizeof err)) {
        fprintf(stderr, "mxgate --spf-helper: %s\n", err);
        return 2;
    }
    log_level = d.o.level;
    /* The gateway's main thread spawns this process with its signals
     * blocked (it takes them with sigwait): start from a clean mask. */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);  /* the gateway decides when this process ends: */
    signal(SIGINT, SIG_IGN);  /* a terminal's ^C drains the gateway, which */
    signal(SIGTERM, SIG_DFL); /* still needs answers meanwhile */
    signal(SIGCHLD, SIG_DFL);
    SPF_error_handler = spfd_lib_error;
    SPF_warning_handler = spfd_lib_warn;
    SPF_info_handler = spfd_lib_warn;
    SPF_debug_handler = spfd_lib_warn;

    /* Everything that needs a file or root happens before the drop: the
     * user's entry, resolv.conf (res_ninit, once per pool thread). */
    bool root = geteuid() == 0;
    struct passwd *pw = root ? getpwnam(d.o.user) : NULL;
    close_other_fds(&d.o);
    if (chdir("/") != 0) /* no hold on the gateway's working directory */
        log_line(LOG_WARN, "event=spf_helper_chdir_fail error=\"%s\"", strerror(errno));
    pthread_mutex_init(&d.mu, NULL);
    pthread_cond_init(&d.cv, NULL);
    spf_dns_conf_t dc = {.server = d.o.dns_server,
                         .timeout_s = d.o.dns_timeout,
                         .cache_size = d.o.cache_size,
                         .log = log_line,
                         .debug = log_level <= LOG_DEBUG};
    d.dns = spf_dns_new(&dc, err, sizeof err);
    if (!d.dns || spfd_setup_pool(&d, err, sizeof err) || drop_privileges(pw, err, sizeof err)) {
        log_line(LOG_ERROR, "event=spf_helper_fail error=\"%s\"", err);
        spfd_free(&d);
        return 1;
    }
    if (!root) {
        /* Started by a gateway that already gave up root (a restart), or
         * never had it: it runs as that user; --user cannot be taken. */
        logbuf_t b;
        lb_init(&b, "spf_helper_privileges");
        lb_u64(&b, "uid", geteuid());
        lb_u64(&b, "gid", getegid());
        lb_cstr(&b, "user", d.o.user);
        lb_cstr(&b, "action", "none");
        lb_cstr(&b, "note", "not started as root: runs as the gateway's user, cannot switch to --user");
        log_emit(LOG_INFO, &b);
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) {
        log_line(LOG_ERROR, "event=spf_helper_fail error=\"prctl: %s\"", strerror(errno));
        spfd_free(&d);
        return 1;
    }
    if (getppid() != parent) { /* the gateway died before PDEATHSIG was set */
        spfd_free(&d);
        return 0;
    }

    for (unsigned i = 0; i < d.o.threads; i++) {
        if ((errno = pthread_create(&d.pool[i].th, NULL, spfd_pool, &d.pool[i]))) {
            log_line(LOG_ERROR, "event=spf_helper_fail error=\"pthread_create: %s\"", strerror(errno));
            if (spfd_stop_pool(&d))
                spfd_free(&d);
            return 1;
        }
        d.pool[i].started = true;
    }
    log_line(LOG_INFO,
             "event=spf_helper_start pid=%d threads=%u fds=%u dns_server=%s dns_timeout=%u cache_size=%u "
             "hostname=%s uid=%u",
             (int)getpid(), d.o.threads, d.o.nfds, spf_dns_server_name(d.dns), d.o.dns_timeout, d.o.cache_size,
             d.o.hostname, (unsigned)geteuid());

    int rc = spfd_dispatch(&d) ? 1 : 0;
    bool joined = spfd_stop_pool(&d);
    uint64_t checks = 0, send_failed = d.send_failed, hits = 0, misses = 0;
    unsigned entries = 0;
    for (unsigned i = 0; i < d.o.threads; i++) {
        checks += d.pool[i].checks;
        send_failed += d.pool[i].send_failed;
    }
    spf_dns_cache_stats(d.dns, &hits, &misses, &entries);
    log_line(LOG_INFO,
             "event=spf_helper_stop reason=%s requests=%llu checks=%llu overloaded=%llu malformed=%llu "
             "send_failed=%llu cache_hits=%llu cache_misses=%llu cache_entries=%u",
             rc ? "error" : "eof", (unsigned long long)d.requests, (unsigned long long)checks,
             (unsigned long long)d.overloaded, (unsigned long long)d.malformed, (unsigned long long)send_failed,
             (unsigned long long)hits, (unsigned long long)misses, entries);
    if (!joined)
        _exit(rc); /* a thread is still inside libspf2: nothing to free safely */
    spfd_free(&d);
    return rc;
}

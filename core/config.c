/*
 * config.c - the key table and the value parsers behind config.h.
 *
 * Each row of `rows` says everything about one key: name, default text, type,
 * where it lives in mx_config_t, its range and its help line. Numeric rows
 * carry a compile-time check that the field has the type the parser writes,
 * so a field changed from uint32_t to uint64_t cannot be half-written.
 *
 * Parsers work on a trimmed slice of the value and write the field only once
 * the whole value has passed, so a refused value leaves the old one in place.
 * Error texts quote the value (cut short, control bytes masked): the person
 * reading the error needs to see which of their values was refused.
 *
 * INI text goes through libinih's ini_parse_stream() with our own line reader
 * rather than ini_parse_string(): the reader knows the line number of every
 * handler call (inih only reports the first failing line, and only the one it
 * found itself), it sees the raw line so indented continuation lines can be
 * told apart from new keys, and it refuses a line longer than inih's line
 * buffer, which inih itself would cut silently (a truncated relay_domains
 * line would be a different list of domains).
 */
#include "config.h"

#include <arpa/inet.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sys/socket.h>

#include "scan.h"
#include "smtp.h"

enum key_type {
    K_UINT,     /* uint32_t, plain decimal */
    K_SIZE,     /* uint64_t octets, suffix k/m/g (powers of 1024) */
    K_SECS,     /* uint32_t seconds, suffix s/m/h/d */
    K_MSECS,    /* uint32_t milliseconds, suffix ms/s */
    K_BOOL,     /* bool */
    K_ENUM,     /* uint8_t index into names */
    K_LISTEN,   /* listen[], nlisten */
    K_HOSTNAME, /* char[CONFIG_DOMAIN_MAX + 1] */
    K_DOMAINS,  /* relay_* and the arena */
    K_HOSTPORT, /* char[CONFIG_ADDR_MAX], may be empty */
    K_PATH,     /* char[CONFIG_PATH_MAX]; min 1: may not be empty */
    K_WORDS,    /* char[CONFIG_WORDS_MAX]: names, at most max of them */
    K_CIDRS,    /* config_cidrs_t */
};

typedef struct key_row {
    config_key_t pub;
    uint8_t type;
    size_t off;
    uint64_t min, max;
    const char *const *names; /* K_ENUM: NULL-terminated, value = index */
} key_row_t;

/* offsetof(mx_config_t, f), refused at compile time unless f has type T. */
#define FIELD(f, T)                                                                                                    \
    (offsetof(mx_config_t, f) +                                                                                        \
     0 * sizeof(char[__builtin_types_compatible_p(__typeof__(((mx_config_t *)0)->f), T) ? 1 : -1]))

#define ROW(name, def, type, T, lo, hi, names, help)                                                                   \
    {                                                                                                                  \
        {#name, def, help}, type, FIELD(name, T), lo, hi, names                                                        \
    }
#define U32(name, def, lo, hi, help) ROW(name, def, K_UINT, uint32_t, lo, hi, NULL, help)
#define SECS(name, def, lo, hi, help) ROW(name, def, K_SECS, uint32_t, lo, hi, NULL, help)
#define ENUM(name, def, names, help) ROW(name, def, K_ENUM, uint8_t, 0, 0, names, help)

/* The limit on message_size_limit only keeps the arithmetic far from
 * overflow; 1 TiB is not a sensible message size either. */
#define SIZE_MAX_OCTETS (1ull << 40)

static const char *const bare_names[] = {"reject", "normalize", NULL};
static const char *const va_names[] = {"ignore", "enforce", "drop", NULL};
static const char *const proto_names[] = {"smtp", "lmtp", NULL};
static const char *const level_names[] = {"debug", "info", "warn", "error", NULL};
static const char *const spf_action_names[] = {"accept", "reject", "tempfail", NULL};
static const char *const spf_stage_names[] = {"rcpt", "data", NULL};
static const char *const proxy_names[] = {"off", "v1", "v2", "any", NULL};
static const char *const tls_names[] = {"off", "may", "encrypt", NULL};
static const char *const ds_tls_names[] = {"off", "may", "encrypt", "verify", NULL};
static const char *const dnsbl_action_names[] = {"reject", "tag", "ignore", NULL};
static const char *const dnsbl_stage_names[] = {"rcpt", "greeting", NULL};
static const char *const delivery_names[] = {"relay", "spool", "relay-then-spool", NULL};
static const char *const content_names[] = {"none", "rspamd", NULL};
static const char *const content_fallback_names[] = {"tempfail", "accept", NULL};

_Static_assert(SCAN_BARE_REJECT == 0 && SCAN_BARE_NORMALIZE == 1, "bare_names follows enum scan_bare");
_Static_assert(SMTP_VA_IGNORE == 0 && SMTP_VA_ENFORCE == 1 && SMTP_VA_DROP == 2, "va_names follows enum smtp_va");
_Static_assert(CONFIG_PROTO_SMTP == 0 && CONFIG_PROTO_LMTP == 1, "proto_names follows enum config_proto");
_Static_assert(CONFIG_LOG_DEBUG == 0 && CONFIG_LOG_ERROR == 3, "level_names follows enum config_log_level");
_Static_assert(CONFIG_SPF_ACCEPT == 0 && CONFIG_SPF_TEMPFAIL == 2, "spf_action_names follows enum config_spf_action");
_Static_assert(CONFIG_SPF_AT_RCPT == 0 && CONFIG_SPF_AT_DATA == 1, "spf_stage_names follows enum config_spf_stage");
_Static_assert(CONFIG_PROXY_OFF == 0 && CONFIG_PROXY_ANY == 3, "proxy_names follows enum config_proxy");
_Static_assert(CONFIG_TLS_OFF == 0 && CONFIG_TLS_ENCRYPT == 2, "tls_names follows enum config_tls");
_Static_assert(CONFIG_DS_TLS_OFF == 0 && CONFIG_DS_TLS_VERIFY == 3, "ds_tls_names follows enum config_ds_tls");
_Static_assert(CONFIG_DNSBL_REJECT == 0 && CONFIG_DNSBL_IGNORE == 2, "dnsbl_action_names follows its enum");
_Static_assert(CONFIG_DNSBL_AT_RCPT == 0 && CONFIG_DNSBL_AT_GREETING == 1, "dnsbl_stage_names follows its enum");
_Static_assert(CONFIG_DELIVERY_RELAY == 0 && CONFIG_DELIVERY_RELAY_THEN_SPOOL == 2,
               "delivery_names follows enum config_delivery");
_Static_assert(CONFIG_CONTENT_NONE == 0 && CONFIG_CONTENT_RSPAMD == 1, "content_names follows enum config_content");
_Static_assert(CONFIG_CONTENT_TEMPFAIL == 0 && CONFIG_CONTENT_ACCEPT == 1,
               "content_fallback_names follows enum config_content_fallback");
_Static_assert(CONFIG_RELAY_MAX < UINT16_MAX, "relay_index holds domain index + 1 in a uint16_t");

static const key_row_t rows[] = {
    ROW(listen, "127.0.0.1:2525", K_LISTEN, char[CONFIG_LISTEN_MAX][CONFIG_ADDR_MAX], 1, CONFIG_LISTEN_MAX, NULL,
        "addresses to accept SMTP on, IPv4:port or [IPv6]:port, comma-separated (at most 8)"),
    U32(workers, "0", 0, CONFIG_WORKERS_MAX, "worker threads; 0: one per online CPU"),
    ROW(hostname, "", K_HOSTNAME, char[CONFIG_DOMAIN_MAX + 1], 0, 0, NULL,
        "name in the greeting and in EHLO replies; empty: the system host name"),
    ROW(relay_domains, "", K_DOMAINS, const slice_t *, 0, CONFIG_RELAY_MAX, NULL,
        "domains to accept mail for, comma-separated (at most 1024); empty: localhost and the host name"),
    ROW(message_size_limit, "10m", K_SIZE, uint64_t, 0, SIZE_MAX_OCTETS, NULL,
        "largest message in octets; 0: no limit"),
    U32(recipient_limit, "100", 1, 100000, "recipients per message"),
    U32(smtp_line_limit, "512", 512, 65535, "command line length in octets, CRLF included"),
    U32(text_line_limit, "1000", 1000, 1000000, "message line length in octets, CRLF included"),
    U32(error_limit, "20", 1, 1000, "error replies in a session before it is closed with 421"),
    ENUM(bare_newline, "reject", bare_names, "bare CR or LF in a message: reject (554) or normalize to CRLF"),
    ENUM(bare_newline_action, "ignore", va_names,
         "a command line ended by a bare LF (postscreen's test): ignore (bare_newline decides), enforce (every "
         "later RCPT gets 550 5.5.1) or drop (521 5.5.1, closed); counted either way"),
    ENUM(pipelining_action, "ignore", va_names,
         "a command sent behind HELO/EHLO before its reply (postscreen's test): ignore, enforce (every later RCPT "
         "gets 550 5.5.1) or drop (521 5.5.1, closed); counted either way"),
    ENUM(non_smtp_command_action, "drop", va_names,
         "HTTP or a mail header as a command (postscreen's test): drop (221 2.7.0, closed), enforce (500, and "
         "every later RCPT gets 550 5.5.1) or ignore (500 5.5.2, as any unknown command); counted either way"),
    ROW(smtputf8, "yes", K_BOOL, bool, 0, 0, NULL, "advertise and accept SMTPUTF8 (yes or no)"),
    SECS(command_timeout, "300", 1, 3600, "seconds a command may take, from the moment the session waits for it"),
    SECS(data_timeout, "600", 1, 3600, "seconds the message data may stall"),
    U32(data_min_rate, "500", 0, 100000000,
        "octets per second a message body must keep up (each octet buys 1/rate s); 0: no minimum"),
    ROW(greeting_delay, "0", K_MSECS, uint32_t, 0, 60000, NULL,
        "milliseconds to wait before the greeting; a client that talks first is refused"),
    SECS(downstream_timeout, "120", 1, 3600, "seconds the downstream server may go without progress"),
    U32(max_connections, "10000", 1, 1000000, "client connections, all workers together"),
    U32(max_connections_per_ip, "50", 0, 1000000, "client connections from one address; 0: no limit"),
    ROW(downstream, "", K_HOSTPORT, char[CONFIG_ADDR_MAX], 0, 0, NULL,
        "server to relay to, host:port or [IPv6]:port; empty: deliver to maildir"),
    ENUM(downstream_protocol, "smtp", proto_names, "protocol spoken to the downstream: smtp or lmtp"),
    U32(downstream_connections, "8", 1, 1000, "downstream connections per worker"),
    U32(downstream_max_messages, "1000", 1, 1000000, "messages per downstream connection before it is retired"),
    SECS(downstream_max_lifetime, "300", 1, 86400, "seconds a downstream connection is used before it is retired"),
    U32(downstream_queue_limit, "1000", 0, 1000000, "transactions per worker waiting for a downstream connection"),
    SECS(downstream_queue_timeout, "30", 1, 3600, "seconds a transaction may wait for a downstream connection"),
    ENUM(downstream_tls, "off", ds_tls_names,
         "STARTTLS to the downstream: off, may (when offered), encrypt (required) or verify (required, and the "
         "certificate must verify)"),
    ROW(downstream_tls_ca_file, "", K_PATH, char[CONFIG_PATH_MAX], 0, 0, NULL,
        "PEM file of the certificates that the downstream's must chain to; empty: the system's"),
    ROW(downstream_tls_name, "", K_HOSTNAME, char[CONFIG_DOMAIN_MAX + 1], 0, 0, NULL,
        "name the downstream's certificate must show; empty: the host of downstream"),
    ROW(maildir, "./mail", K_PATH, char[CONFIG_PATH_MAX], 1, 0, NULL,
        "Maildir to deliver to when no downstream is set"),
    ENUM(delivery, "relay", delivery_names,
         "when a message gets its 250: relay (after the downstream's 250), spool (once it is durable in "
         "spool_dir; delivered from there) or relay-then-spool (the downstream's 250 while it answers, the "
         "spool's when it is down, slow or answers 4xx of its own)"),
    ROW(spool_dir, "./spool", K_PATH, char[CONFIG_PATH_MAX], 1, 0, NULL,
        "directory of the spool's segment files (delivery = spool)"),
    ROW(spool_max_bytes, "1g", K_SIZE, uint64_t, 1, SIZE_MAX_OCTETS, NULL,
        "octets the spool may hold, all workers together; past it new mail gets 452 4.3.1"),
    ROW(spool_min_free, "64m", K_SIZE, uint64_t, 0, SIZE_MAX_OCTETS, NULL,
        "octets the spool's file system must keep free; below it new mail gets 452 4.3.1"),
    SECS(retry_max_interval, "30m", 1, 86400, "seconds between delivery attempts at most (they back off to it)"),
    SECS(max_queue_age, "5d", 1, 30 * 86400,
         "seconds a spooled message may wait for delivery before it is returned to its sender"),
    ROW(filters, "limits, relay, recipients, size", K_WORDS, char[CONFIG_WORDS_MAX], 1, 32, NULL,
        "the filter chain, in order: limits, relay, recipients, size, spf (relay is required)"),
    ROW(recipient_map, "", K_PATH, char[CONFIG_PATH_MAX], 0, 0, NULL,
        "file of valid recipients (user@domain or @domain per line); others get 550 5.1.1; empty: no check"),
    U32(max_messages_per_connection, "0", 0, 1000000, "messages per client connection, then 421; 0: no limit"),
    U32(max_recipients_per_connection, "0", 0, 10000000,
        "recipients per client connection, then 452; 0: no limit"),
    U32(rate_connections, "0", 0, 1000000,
        "connections per minute from one client address, all workers together, then 421 4.7.0; 0: no limit"),
    U32(rate_messages, "0", 0, 1000000,
        "messages (MAIL) per minute from one client address, then 450 4.7.1; 0: no limit"),
    U32(rate_recipients, "0", 0, 10000000,
        "recipients (RCPT) per minute from one client address, then 450 4.7.1; 0: no limit"),
    ROW(rate_allow, "", K_CIDRS, config_cidrs_t, 0, CONFIG_CIDR_MAX, NULL,
        "networks the rate limits do not apply to (CIDR, comma-separated)"),
    ROW(limits_redis, "", K_HOSTPORT, char[CONFIG_ADDR_MAX], 0, 0, NULL,
        "Redis server that keeps the rate limits for a fleet of gateways, IPv4:port or [IPv6]:port; empty: "
        "each instance counts alone"),
    ROW(limits_redis_timeout, "250", K_MSECS, uint32_t, 10, 10000, NULL,
        "milliseconds Redis may take to answer; past it the gateway goes on without it (fail open, counted)"),
    ENUM(content_scanner, "none", content_names,
         "content stage at the end of data: none, or rspamd (each message is held and scanned before the "
         "downstream sees it; rspamd's reject gives 554 5.7.1, soft reject and greylist 451 4.7.1)"),
    ROW(rspamd_url, "http://127.0.0.1:11333", K_HOSTPORT, char[CONFIG_ADDR_MAX], 0, 0, NULL,
        "rspamd's normal worker, http://IPv4:port or http://[IPv6]:port (POST /checkv2)"),
    SECS(rspamd_timeout, "15", 1, 600, "seconds a scan may take, connect to verdict; then content_fallback"),
    ENUM(content_fallback, "tempfail", content_fallback_names,
         "when the scanner fails or is slower than rspamd_timeout: tempfail (451 4.3.0) or accept (the "
         "message goes on unscanned); counted and logged either way"),
    ROW(content_memory_limit, "128m", K_SIZE, uint64_t, 1024, SIZE_MAX_OCTETS, NULL,
        "octets of messages held in memory for the content scanner, per worker; past it they go to files in "
        "spool_dir (content_spill_limit)"),
    ROW(content_spill_limit, "1g", K_SIZE, uint64_t, 0, SIZE_MAX_OCTETS, NULL,
        "octets of messages held for the content scanner in files under spool_dir once content_memory_limit is "
        "reached, per worker; past both new mail gets 452 4.3.1; 0: none"),
    ENUM(spf_fail, "reject", spf_action_names, "SPF fail: accept, reject (550 5.7.23) or tempfail (451 4.7.24)"),
    ENUM(spf_softfail, "accept", spf_action_names, "SPF softfail: accept, reject or tempfail"),
    ENUM(spf_neutral, "accept", spf_action_names, "SPF neutral: accept, reject or tempfail"),
    ENUM(spf_none, "accept", spf_action_names, "SPF none: accept, reject or tempfail"),
    ENUM(spf_temperror, "tempfail", spf_action_names, "SPF temperror: accept, reject or tempfail (451 4.4.3)"),
    ENUM(spf_permerror, "accept", spf_action_names, "SPF permerror: accept, reject (550 5.5.2) or tempfail"),
    ENUM(spf_stage, "rcpt", spf_stage_names, "where an SPF refusal is given: rcpt (the first RCPT) or data"),
    SECS(spf_timeout, "20", 1, 600, "seconds an SPF check may take before it counts as temperror"),
    U32(spf_cache_size, "10000", 0, 10000000, "SPF results cached per worker, by the records' TTL; 0: none"),
    U32(spf_threads, "16", 1, 1024, "SPF helper threads (each waits on one DNS lookup at a time)"),
    ROW(spf_user, "nobody", K_WORDS, char[CONFIG_WORDS_MAX], 1, 1, NULL,
        "user the SPF helper process runs as when mxgate starts as root"),
    ROW(dns_server, "", K_HOSTPORT, char[CONFIG_ADDR_MAX], 0, 0, NULL,
        "DNS server for SPF, IPv4:port or [IPv6]:port; empty: the system resolver"),
    SECS(dns_timeout, "5", 1, 60, "seconds to wait for one DNS answer"),
    ROW(dnsbl_sites, "", K_PATH, char[CONFIG_PATH_MAX], 0, 0, NULL,
        "DNS block- and allow-lists in postscreen's syntax: zen.example*2, bl.example=127.0.0.[2..11], "
        "wl.example*-2 (put dnsbl in filters); asked through dns_server"),
    U32(dnsbl_threshold, "1", 1, 1000, "the DNSBL score (sum of the weights of the lists that answer) that acts"),
    ENUM(dnsbl_action, "reject", dnsbl_action_names,
         "a client at or over dnsbl_threshold: reject (554 5.7.1), tag (an X-Mxgate-DNSBL header) or ignore (log)"),
    ENUM(dnsbl_stage, "rcpt", dnsbl_stage_names,
         "where a DNSBL rejection is given: rcpt (postmaster still gets through) or greeting (then close)"),
    SECS(dnsbl_timeout, "5", 1, 60, "seconds the DNSBL lookups may take; a list that has not answered does not count"),
    SECS(pass_cache_ttl, "1h", 0, 86400,
         "seconds a client that passed the DNSBL (and quit cleanly) skips the lookups, all workers; 0: off"),
    ENUM(proxy_protocol, "off", proxy_names,
         "PROXY protocol header before the greeting: off, v1, v2 or any (v1 or v2)"),
    ROW(proxy_trusted, "", K_CIDRS, config_cidrs_t, 0, CONFIG_CIDR_MAX, NULL,
        "networks that must send the PROXY header (CIDR, comma-separated); others may not; empty: every source must"),
    SECS(proxy_timeout, "5", 1, 600, "seconds a PROXY header may take to arrive"),
    ENUM(tls, "off", tls_names,
         "STARTTLS: off, may (offered) or encrypt (required: MAIL before it gets 530 5.7.0); needs a certificate"),
    ROW(tls_cert_file, "", K_PATH, char[CONFIG_PATH_MAX], 0, 0, NULL,
        "PEM certificate chains, comma-separated, one per key type (e.g. ECDSA and RSA: the client's offer picks)"),
    ROW(tls_key_file, "", K_PATH, char[CONFIG_PATH_MAX], 0, 0, NULL,
        "PEM private keys, comma-separated, in the order of tls_cert_file"),
    ROW(tls_protocols, "tlsv1.2, tlsv1.3", K_WORDS, char[CONFIG_WORDS_MAX], 1, 2, NULL,
        "TLS versions offered: tlsv1.2, tlsv1.3 or both"),
    ROW(tls_ciphers, "", K_PATH, char[CONFIG_PATH_MAX], 0, 0, NULL,
        "TLS 1.2 cipher list, OpenSSL syntax; empty: OpenSSL's default"),
    ROW(tls_ciphersuites, "", K_PATH, char[CONFIG_PATH_MAX], 0, 0, NULL,
        "TLS 1.3 cipher suites, OpenSSL syntax; empty: OpenSSL's default"),
    SECS(tls_handshake_timeout, "30", 1, 600, "seconds the TLS handshake after STARTTLS may take"),
    SECS(tls_ticket_rotation, "1h", 1, 86400,
         "seconds a session-ticket key seals new tickets; tickets resume for twice this long"),
    ROW(user, "", K_WORDS, char[CONFIG_WORDS_MAX], 0, 1, NULL,
        "user the workers run as after binding when started as root; empty: mxgate if it exists, else nobody"),
    ROW(group, "", K_WORDS, char[CONFIG_WORDS_MAX], 0, 1, NULL,
        "group the workers run as after binding when started as root; empty: the user's primary group"),
    SECS(drain_delay, "0", 0, 3600,
         "seconds between SIGTERM and closing the listeners: /readyz says 503 at once, so balancers stop sending"),
    SECS(drain_timeout, "30", 0, 3600, "seconds sessions get to finish on shutdown; 0: close at once"),
    ROW(http_listen, "127.0.0.1:8025", K_HOSTPORT, char[CONFIG_ADDR_MAX], 0, 0, NULL,
        "address of the operations endpoint (/metrics, /healthz, /readyz); empty: none"),
    ENUM(log_level, "info", level_names, "debug, info, warn or error"),
};

#define NROWS (sizeof rows / sizeof rows[0])

/* ---- small helpers ---- */

static inline char lower(char ch)
{
    return ch >= 'A' && ch <= 'Z' ? (char)(ch + ('a' - 'A')) : ch;
}

static inline bool blank(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n' || ch == '\v' || ch == '\f';
}

static slice_t trim(const char *p, size_t n)
{
    while (n && blank(*p))
        p++, n--;
    while (n && blank(p[n - 1]))
        n--;
    return slice_make(p, n);
}

/* The value as an error message shows it: at most 64 bytes, no control
 * bytes (the text ends up in a terminal or a log line). */
static const char *shown(slice_t v, char out[static 72])
{
    size_t n = v.len > 64 ? 61 : v.len, i;
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)v.ptr[i];
        out[i] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
    }
    if (n < v.len)
        memcpy(out + i, "...", 3), i += 3;
    out[i] = '\0';
    return out;
}

__attribute__((format(printf, 3, 4))) static int fail(char *why, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, n, fmt, ap);
    va_end(ap);
    return -1;
}

/* Decimal digits from v[*i]; saturates at UINT64_MAX so the range check
 * refuses an overflow. Returns how many digits it read. */
static size_t digits(slice_t v, size_t *i, uint64_t *out)
{
    uint64_t x = 0;
    size_t start = *i;
    for (; *i < v.len && v.ptr[*i] >= '0' && v.ptr[*i] <= '9'; (*i)++) {
        unsigned d = (unsigned)(v.ptr[*i] - '0');
        x = x > (UINT64_MAX - d) / 10 ? UINT64_MAX : x * 10 + d;
    }
    *out = x;
    return *i - start;
}

static uint64_t mul_sat(uint64_t x, uint64_t m)
{
    return x > UINT64_MAX / m ? UINT64_MAX : x * m;
}

/*
 * RFC 1035/1123 host name: letters, digits, hyphens; labels of 1 to 63 that
 * neither start nor end with a hyphen; at most 253 octets; no trailing dot.
 * A last label of digits only is refused: that is an IPv4 address written
 * where a name belongs.
 */
static bool domain_valid(const char *p, size_t n)
{
    if (n == 0 || n > CONFIG_DOMAIN_MAX)
        return false;
    size_t label = 0;
    bool numeric = true;
    for (size_t i = 0; i <= n; i++) {
        char ch = i < n ? p[i] : '.';
        if (ch == '.') {
            if (label == 0 || label > 63 || p[i - 1] == '-')
                return false;
            if (i < n)
                numeric = true;
            label = 0;
            continue;
        }
        bool alpha = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
        bool digit = ch >= '0' && ch <= '9';
        if (!alpha && !digit && ch != '-')
            return false;
        if (label == 0 && ch == '-')
            return false;
        if (!digit)
            numeric = false;
        label++;
    }
    return !numeric;
}

/* ---- numbers ---- */

static uint32_t *u32_at(mx_config_t *c, const key_row_t *k)
{
    return (uint32_t *)((char *)c + k->off);
}

static int set_uint(mx_config_t *c, const key_row_t *k, slice_t v, char *why, size_t n)
{
    uint64_t x;
    size_t i = 0;
    char sv[72];
    if (!digits(v, &i, &x) || i != v.len || x < k->min || x > k->max)
        return fail(why, n, "expected a number from %llu to %llu: %s", (unsigned long long)k->min,
                    (unsigned long long)k->max, shown(v, sv));
    *u32_at(c, k) = (uint32_t)x;
    return 0;
}

static int set_size(mx_config_t *c, const key_row_t *k, slice_t v, char *why, size_t n)
{
    uint64_t x;
    size_t i = 0;
    char sv[72];
    if (!digits(v, &i, &x))
        return fail(why, n, "not a number: %s", shown(v, sv));
    if (i < v.len) {
        char suffix = i + 1 == v.len ? lower(v.ptr[i]) : '\0';
        int shift = suffix == 'k' ? 10 : suffix == 'm' ? 20 : suffix == 'g' ? 30 : 0;
        if (!shift)
            return fail(why, n, "not a number: %s", shown(v, sv));
        x = mul_sat(x, 1ull << shift);
    }
    if (x > k->max)
        return fail(why, n, "too large (at most %llu octets): %s", (unsigned long long)k->max, shown(v, sv));
    if (x < k->min)
        return fail(why, n, "too small (at least %llu octets): %s", (unsigned long long)k->min, shown(v, sv));
    *(uint64_t *)((char *)c + k->off) = x;
    return 0;
}

/* Seconds (K_SECS: bare, s, m, h, d) or milliseconds (K_MSECS: bare, ms, s). */
static int set_time(mx_config_t *c, const key_row_t *k, slice_t v, char *why, size_t n)
{
    uint64_t x;
    size_t i = 0;
    bool ok = digits(v, &i, &x) > 0;
    slice_t suf = slice_make(v.ptr + i, v.len - i);
    uint64_t unit; /* 0: not a suffix we know */
    if (suf.len == 0)
        unit = 1;
    else if (k->type == K_SECS)
        unit = slice_ieq(suf, "s")   ? 1
               : slice_ieq(suf, "m") ? 60
               : slice_ieq(suf, "h") ? 3600
               : slice_ieq(suf, "d") ? 86400
                                     : 0;
    else
        unit = slice_ieq(suf, "ms") ? 1 : slice_ieq(suf, "s") ? 1000 : 0;
    x = mul_sat(x, unit ? unit : 1);
    char sv[72];
    if (!ok || !unit || x < k->min || x > k->max) {
        if (k->type == K_MSECS)
            return fail(why, n, "expected milliseconds from %llu to %llu (suffix ms or s allowed): %s",
                        (unsigned long long)k->min, (unsigned long long)k->max, shown(v, sv));
        return fail(why, n, "expected seconds from %llu to %llu (suffix s, m, h or d allowed): %s",
                    (unsigned long long)k->min, (unsigned long long)k->max, shown(v, sv));
    }
    *u32_at(c, k) = (uint32_t)x;
    return 0;
}

static int set_bool(mx_config_t *c, const key_row_t *k, slice_t v, char *why, size_t n)
{
    bool *b = (bool *)((char *)c + k->off);
    char sv[72];
    if (slice_ieq(v, "yes") || slice_ieq(v, "true") || slice_ieq(v, "on") || slice_ieq(v, "1"))
        *b = true;
    else if (slice_ieq(v, "no") || slice_ieq(v, "false") || slice_ieq(v, "off") || slice_ieq(v, "0"))
        *b = false;
    else
        return fail(why, n, "expected yes or no: %s", shown(v, sv));
    return 0;
}

static int set_enum(mx_config_t *c, const key_row_t *k, slice_t v, char *why, size_t n)
{
    size_t count = 0;
    for (; k->names[count]; count++)
        if (slice_ieq(v, k->names[count])) {
            *((uint8_t *)c + k->off) = (uint8_t)count;
            return 0;
        }
    /* "expected a or b", "expected a, b, c or d" */
    char list[96];
    size_t len = 0;
    for (size_t i = 0; i < count && len < sizeof list; i++)
        len += (size_t)snprintf(list + len, sizeof list - len, "%s%s",
                                i == 0           ? ""
                                : i + 1 == count ? " or "
                                                 : ", ",
                                k->names[i]);
    char sv[72];
    return fail(why, n, "expected %s: %s", list, shown(v, sv));
}

/* ---- addresses ---- */

/*
 * "IPv4:port", "[IPv6]:port" or, with names allowed, "name:port", written
 * back to out in canonical form (brackets kept, port in plain decimal).
 * inet_pton is pure parsing, no lookup, so it is fair game in core; it
 * refuses forms like "1.2.3" or octal that inet_aton would take.
 */
static int parse_hostport(slice_t s, bool names, char out[static CONFIG_ADDR_MAX], char *why, size_t n)
{
    char sv[72], host[CONFIG_DOMAIN_MAX + 1] = "";
    const char *colon;
    bool ipv6 = false;
    if (s.len && s.ptr[0] == '[') {
        const char *close = memchr(s.ptr, ']', s.len);
        if (!close || close + 1 == s.ptr + s.len || close[1] != ':')
            return fail(why, n, "expected [IPv6]:port: %s", shown(s, sv));
        size_t hlen = (size_t)(close - s.ptr - 1);
        struct in6_addr a6;
        if (hlen < INET6_ADDRSTRLEN)
            memcpy(host, s.ptr + 1, hlen);
        if (hlen >= INET6_ADDRSTRLEN || inet_pton(AF_INET6, host, &a6) != 1)
            return fail(why, n, "not an IPv6 address: %s", shown(s, sv));
        colon = close + 1;
        ipv6 = true;
    } else {
        colon = memrchr(s.ptr, ':', s.len);
        if (!colon)
            return fail(why, n, "expected %s:port: %s", names ? "host" : "IPv4", shown(s, sv));
        size_t hlen = (size_t)(colon - s.ptr);
        if (memchr(s.ptr, ':', hlen))
            return fail(why, n, "an IPv6 address needs brackets, as in [::1]:25: %s", shown(s, sv));
        struct in_addr a4;
        if (hlen <= CONFIG_DOMAIN_MAX)
            memcpy(host, s.ptr, hlen);
        bool ok =
            hlen <= CONFIG_DOMAIN_MAX && (inet_pton(AF_INET, host, &a4) == 1 || (names && domain_valid(host, hlen)));
        if (!ok)
            return fail(why, n, "%s: %s", names ? "not an IP address or host name" : "not an IPv4 address",
                        shown(s, sv));
    }
    uint64_t port;
    size_t i = (size_t)(colon + 1 - s.ptr);
    if (!digits(s, &i, &port) || i != s.len || port < 1 || port > 65535)
        return fail(why, n, "expected a port from 1 to 65535: %s", shown(s, sv));
    snprintf(out, CONFIG_ADDR_MAX, ipv6 ? "[%s]:%u" : "%s:%u", host, (unsigned)port);
    return 0;
}

/* The next comma-separated item of *rest, trimmed. Empty items are skipped,
 * so a trailing comma or a continuation line joined with "," is harmless. */
static bool next_item(slice_t *rest, slice_t *item)
{
    while (rest->len) {
        const char *comma = memchr(rest->ptr, ',', rest->len);
        size_t k = comma ? (size_t)(comma - rest->ptr) + 1 : rest->len;
        *item = trim(rest->ptr, comma ? k - 1 : k);
        rest->ptr += k;
        rest->len -= k;
        if (item->len)
            return true;
    }
    return false;
}

static int set_listen(mx_config_t *c, slice_t v, char *why, size_t n)
{
    char tmp[CONFIG_LISTEN_MAX][CONFIG_ADDR_MAX];
    int count = 0;
    char sv[72];
    slice_t rest = v, item;
    while (next_item(&rest, &item)) {
        if (count == CONFIG_LISTEN_MAX)
            return fail(why, n, "too many addresses (at most %d): %s", CONFIG_LISTEN_MAX, shown(v, sv));
        if (parse_hostport(item, false, tmp[count], why, n) != 0)
            return -1;
        for (int j = 0; j < count; j++)
            if (strcmp(tmp[j], tmp[count]) == 0)
                return fail(why, n, "address given twice: %s", shown(item, sv));
        count++;
    }
    if (count == 0)
        return fail(why, n, "expected at least one address");
    memset(c->listen, 0, sizeof c->listen);
    memcpy(c->listen, tmp, (size_t)count * sizeof tmp[0]);
    c->nlisten = count;
    return 0;
}

/* ---- relay domains ---- */

static uint32_t hash_lower(const char *p, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a: short keys, good enough spread */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)lower(p[i])) * 16777619u;
    return h;
}

static bool ieq_lower(const char *p, const char *low, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (lower(p[i]) != low[i])
            return false;
    return true;
}

/*
 * One allocation: the slices, then the index, then the lowercased names
 * (NUL-terminated for the convenience of whoever prints them). The index has
 * at least twice as many slots as names, so probes stay short and there is
 * always an empty slot to end a miss.
 */
static int set_domains(mx_config_t *c, slice_t v, char *why, size_t n)
{
    size_t count = 0, bytes = 0;
    char sv[72];
    slice_t rest = v, item;
    while (next_item(&rest, &item)) {
        if (!domain_valid(item.ptr, item.len))
            return fail(why, n, "not a domain name: %s", shown(item, sv));
        if (++count > CONFIG_RELAY_MAX)
            return fail(why, n, "too many domains (at most %d)", CONFIG_RELAY_MAX);
        bytes += item.len + 1;
    }
    void *arena = NULL;
    slice_t *list = NULL;
    uint16_t *index = NULL;
    uint32_t slots = 0, used = 0;
    if (count) {
        slots = 16;
        while (slots < 2 * count)
            slots *= 2;
        arena = malloc(count * sizeof(slice_t) + slots * sizeof(uint16_t) + bytes);
        if (!arena)
            return fail(why, n, "out of memory");
        list = arena;
        index = (uint16_t *)(list + count);
        memset(index, 0, slots * sizeof(uint16_t));
        char *text = (char *)(index + slots);
        for (rest = v; next_item(&rest, &item);) {
            uint32_t s = hash_lower(item.ptr, item.len) & (slots - 1);
            for (; index[s]; s = (s + 1) & (slots - 1)) {
                slice_t d = list[index[s] - 1];
                if (d.len == item.len && ieq_lower(item.ptr, d.ptr, d.len))
                    break;
            }
            if (index[s])
                continue; /* given twice */
            for (size_t i = 0; i < item.len; i++)
                text[i] = lower(item.ptr[i]);
            text[item.len] = '\0';
            list[used] = slice_make(text, item.len);
            index[s] = (uint16_t)++used;
            text += item.len + 1;
        }
    }
    free(c->relay_arena);
    c->relay_arena = arena;
    c->relay_domains = list;
    c->relay_index = index;
    c->relay_count = used;
    c->relay_mask = slots ? slots - 1 : 0;
    return 0;
}

bool config_relay_domain(const mx_config_t *c, slice_t domain)
{
    if (c->relay_count == 0 || domain.len == 0 || domain.len > CONFIG_DOMAIN_MAX)
        return false;
    for (uint32_t s = hash_lower(domain.ptr, domain.len) & c->relay_mask; c->relay_index[s];
         s = (s + 1) & c->relay_mask) {
        slice_t d = c->relay_domains[c->relay_index[s] - 1];
        if (d.len == domain.len && ieq_lower(domain.ptr, d.ptr, d.len))
            return true;
    }
    return false;
}

/* ---- strings ---- */

static int set_hostname(mx_config_t *c, const key_row_t *k, slice_t v, char *why, size_t n)
{
    char sv[72];
    char *out = (char *)c + k->off;
    if (v.len && !domain_valid(v.ptr, v.len))
        return fail(why, n, "not a domain name: %s", shown(v, sv));
    memcpy(out, v.ptr, v.len);
    out[v.len] = '\0';
    return 0;
}

static int set_path(mx_config_t *c, const key_row_t *k, slice_t v, char *why, size_t n)
{
    char sv[72];
    char *out = (char *)c + k->off;
    if (v.len == 0 && k->min)
        return fail(why, n, "expected a path");
    if (v.len >= CONFIG_PATH_MAX)
        return fail(why, n, "path too long (at most %d octets): %s", CONFIG_PATH_MAX - 1, shown(v, sv));
    for (size_t i = 0; i < v.len; i++)
        if ((unsigned char)v.ptr[i] < 0x20 || v.ptr[i] == 0x7f)
            return fail(why, n, "control character in path: %s", shown(v, sv));
    memcpy(out, v.ptr, v.len);
    out[v.len] = '\0';
    return 0;
}

/* downstream may name a host; dns_server must be an address (no lookup to
 * find the server that does the lookups). */
static int set_hostport(mx_config_t *c, const key_row_t *k, slice_t v, char *why, size_t n)
{
    char *out = (char *)c + k->off;
    if (v.len == 0) {
        out[0] = '\0';
        return 0;
    }
    if (k->off == offsetof(mx_config_t, rspamd_url)) {
        /* A URL with nothing but the scheme and the authority (the path
         * is rspamd's own: /checkv2); the bare host:port that config_dump
         * writes back is taken too. */
        char sv[72];
        if (v.len >= 7 && !strncasecmp(v.ptr, "http://", 7))
            v = slice_make(v.ptr + 7, v.len - 7);
        else if (memmem(v.ptr, v.len, "://", 3))
            return fail(why, n, "expected http://IPv4:port or http://[IPv6]:port: %s", shown(v, sv));
        if (v.len && v.ptr[v.len - 1] == '/')
            v.len--;
    }
    return parse_hostport(v, k->off == offsetof(mx_config_t, downstream), out, why, n);
}

/* Names of filters or users: [a-z0-9_.-], lowercased, kept as "a,b,c". */
static int set_words(mx_config_t *c, const key_row_t *k, slice_t v, char *why, size_t n)
{
    char sv[72], buf[CONFIG_WORDS_MAX];
    size_t len = 0, count = 0;
    slice_t rest = v, item;
    while (next_item(&rest, &item)) {
        for (size_t i = 0; i < item.len; i++) {
            char ch = lower(item.ptr[i]);
            if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '-' || ch == '.'))
                return fail(why, n, "not a name: %s", shown(item, sv));
        }
        if (++count > k->max)
            return fail(why, n, k->max == 1 ? "expected one name: %s" : "too many names: %s", shown(v, sv));
        if (len + item.len + 1 >= sizeof buf)
            return fail(why, n, "too long (at most %d octets): %s", CONFIG_WORDS_MAX - 1, shown(v, sv));
        if (len)
            buf[len++] = ',';
        for (size_t i = 0; i < item.len; i++)
            buf[len++] = lower(item.ptr[i]);
    }
    if (count < k->min)
        return fail(why, n, "expected a name");
    buf[len] = '\0';
    memcpy((char *)c + k->off, buf, len + 1);
    return 0;
}

/* "192.0.2.0/24, 2001:db8::/32, 127.0.0.1": the bits past the prefix must
 * be zero, so a typo in the length does not silently widen the network. */
static int set_cidrs(mx_config_t *c, const key_row_t *k, slice_t v, char *why, size_t n)
{
    char sv[72];
    config_cidrs_t out = {0};
    slice_t rest = v, item;
    while (next_item(&rest, &item)) {
        char text[INET6_ADDRSTRLEN + 8];
        if (item.len >= sizeof text)
            return fail(why, n, "not a network: %s", shown(item, sv));
        memcpy(text, item.ptr, item.len);
        text[item.len] = '\0';
        char *slash = strchr(text, '/');
        if (slash)
            *slash = '\0';
        struct config_cidr e = {0};
        if (inet_pton(AF_INET, text, e.addr) == 1)
            e.family = AF_INET, e.bits = 32;
        else if (inet_pton(AF_INET6, text, e.addr) == 1)
            e.family = AF_INET6, e.bits = 128;
        else
            return fail(why, n, "not an IPv4 or IPv6 network: %s", shown(item, sv));
        if (slash) {
            const char *b = slash + 1;
            unsigned bits = 0;
            if (!*b || strlen(b) > 3)
                return fail(why, n, "bad prefix length: %s", shown(item, sv));
            for (; *b; b++) {
                if (*b < '0' || *b > '9')
                    return fail(why, n, "bad prefix length: %s", shown(item, sv));
                bits = bits * 10 + (unsigned)(*b - '0');
            }
            if (bits > e.bits)
                return fail(why, n, "prefix longer than the address: %s", shown(item, sv));
            e.bits = (uint8_t)bits;
        }
        for (unsigned i = e.bits; i < (e.family == AF_INET ? 32u : 128u); i++)
            if (e.addr[i / 8] & (0x80 >> (i % 8)))
                return fail(why, n, "host bits set past the prefix: %s", shown(item, sv));
        if (out.n == k->max)
            return fail(why, n, "too many networks (at most %llu)", (unsigned long long)k->max);
        out.v[out.n++] = e;
    }
    memcpy((char *)c + k->off, &out, sizeof out);
    return 0;
}

static bool prefix_eq(const uint8_t *a, const uint8_t *b, unsigned bits)
{
    if (memcmp(a, b, bits / 8))
        return false;
    uint8_t mask = (uint8_t)(0xff00 >> (bits % 8));
    return bits % 8 == 0 || ((a[bits / 8] ^ b[bits / 8]) & mask) == 0;
}

bool config_cidrs_match(const config_cidrs_t *c, int family, const uint8_t *addr)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (family == AF_INET6 && memcmp(addr, mapped, sizeof mapped) == 0)
        family = AF_INET, addr += 12;
    for (uint32_t i = 0; i < c->n; i++)
        if (c->v[i].family == family && prefix_eq(c->v[i].addr, addr, c->v[i].bits))
            return true;
    return false;
}

static int apply(mx_config_t *c, const key_row_t *k, slice_t v, char *why, size_t n)
{
    switch (k->type) {
    case K_UINT:
        return set_uint(c, k, v, why, n);
    case K_SIZE:
        return set_size(c, k, v, why, n);
    case K_SECS:
    case K_MSECS:
        return set_time(c, k, v, why, n);
    case K_BOOL:
        return set_bool(c, k, v, why, n);
    case K_ENUM:
        return set_enum(c, k, v, why, n);
    case K_LISTEN:
        return set_listen(c, v, why, n);
    case K_HOSTNAME:
        return set_hostname(c, k, v, why, n);
    case K_DOMAINS:
        return set_domains(c, v, why, n);
    case K_HOSTPORT:
        return set_hostport(c, k, v, why, n);
    case K_PATH:
        return set_path(c, k, v, why, n);
    case K_WORDS:
        return set_words(c, k, v, why, n);
    case K_CIDRS:
        return set_cidrs(c, k, v, why, n);
    }
    return fail(why, n, "internal error: key type %d", k->type);
}

/* ---- public ---- */

static const key_row_t *row_find(const char *name, size_t n)
{
    for (size_t r = 0; r < NROWS; r++) {
        const char *k = rows[r].pub.name;
        size_t i = 0;
        for (; i < n && k[i]; i++) {
            char ch = name[i] == '-' ? '_' : lower(name[i]);
            if (ch != k[i])
                break;
        }
        if (i == n && k[i] == '\0')
            return &rows[r];
    }
    return NULL;
}

const config_key_t *config_key_at(size_t i)
{
    return i < NROWS ? &rows[i].pub : NULL;
}

const config_key_t *config_key_find(const char *name)
{
    const key_row_t *k = name ? row_find(name, strlen(name)) : NULL;
    return k ? &k->pub : NULL;
}

void config_defaults(mx_config_t *c)
{
    memset(c, 0, sizeof *c);
    for (size_t r = 0; r < NROWS; r++) {
        char why[160];
        /* A default that does not parse is a bug in the table; the unit
         * test catches it, and no config is better than a wrong one. */
        if (apply(c, &rows[r], trim(rows[r].pub.def, strlen(rows[r].pub.def)), why, sizeof why) != 0)
            abort();
    }
}

void config_free(mx_config_t *c)
{
    free(c->relay_arena);
    c->relay_arena = NULL;
    c->relay_domains = NULL;
    c->relay_index = NULL;
    c->relay_count = 0;
    c->relay_mask = 0;
}

/* The octets a key's value takes in mx_config_t (K_LISTEN and K_DOMAINS
 * are more than one field: handled by the callers). */
static size_t value_size(const key_row_t *k)
{
    switch (k->type) {
    case K_UINT:
    case K_SECS:
    case K_MSECS:
        return sizeof(uint32_t);
    case K_SIZE:
        return sizeof(uint64_t);
    case K_BOOL:
        return sizeof(bool);
    case K_ENUM:
        return sizeof(uint8_t);
    case K_HOSTNAME:
        return CONFIG_DOMAIN_MAX + 1;
    case K_HOSTPORT:
        return CONFIG_ADDR_MAX;
    case K_PATH:
        return CONFIG_PATH_MAX;
    case K_WORDS:
        return CONFIG_WORDS_MAX;
    case K_CIDRS:
        return sizeof(config_cidrs_t);
    }
    return 0;
}

bool config_key_same(const mx_config_t *a, const mx_config_t *b, const char *name)
{
    const key_row_t *k = name ? row_find(name, strlen(name)) : NULL;
    if (!k)
        return false;
    if (k->type == K_LISTEN) {
        if (a->nlisten != b->nlisten)
            return false;
        for (int i = 0; i < a->nlisten; i++)
            if (strcmp(a->listen[i], b->listen[i]))
                return false;
        return true;
    }
    if (k->type == K_DOMAINS) {
        if (a->relay_count != b->relay_count)
            return false;
        for (uint32_t i = 0; i < a->relay_count; i++)
            if (!slice_eq(a->relay_domains[i], b->relay_domains[i]))
                return false;
        return true;
    }
    if (k->type == K_HOSTNAME || k->type == K_HOSTPORT || k->type == K_PATH || k->type == K_WORDS)
        return strcmp((const char *)a + k->off, (const char *)b + k->off) == 0;
    if (k->type == K_CIDRS) {
        const config_cidrs_t *x = (const config_cidrs_t *)(const void *)((const char *)a + k->off);
        const config_cidrs_t *y = (const config_cidrs_t *)(const void *)((const char *)b + k->off);
        return x->n == y->n && memcmp(x->v, y->v, x->n * sizeof x->v[0]) == 0;
    }
    return memcmp((const char *)a + k->off, (const char *)b + k->off, value_size(k)) == 0;
}

int config_key_copy(mx_config_t *dst, const mx_config_t *src, const char *name)
{
    const key_row_t *k = name ? row_find(name, strlen(name)) : NULL;
    if (!k || k->type == K_DOMAINS)
        return -1;
    if (k->type == K_LISTEN) {
        memcpy(dst->listen, src->listen, sizeof dst->listen);
        dst->nlisten = src->nlisten;
        return 0;
    }
    memcpy((char *)dst + k->off, (const char *)src + k->off, value_size(k));
    return 0;
}

int config_set(mx_config_t *c, const char *key, const char *value, char *err, size_t errlen)
{
    char why[256], sv[72];
    const key_row_t *k = key ? row_find(key, strlen(key)) : NULL;
    if (!k) {
        if (errlen)
            snprintf(err, errlen, "unknown key: %s", key ? shown(slice_make(key, strlen(key)), sv) : "(null)");
        return -1;
    }
    if (!value) {
        if (errlen)
            snprintf(err, errlen, "%s: missing value", k->pub.name);
        return -1;
    }
    if (apply(c, k, trim(value, strlen(value)), why, sizeof why) != 0) {
        if (errlen)
            snprintf(err, errlen, "%s: %s", k->pub.name, why);
        return -1;
    }
    return 0;
}

/* ---- INI ---- */

typedef struct ini_ctx {
    mx_config_t *c;
    const char *next;      /* unread text */
    unsigned line;         /* number of the line inih is working on */
    bool indented;         /* that line starts with a blank */
    const key_row_t *prev; /* key of the last key line, NULL after [section] */
    char *acc;             /* list value so far, continuation lines joined */
    size_t acc_len, acc_cap;
    unsigned fail_line; /* 0: no error yet */
    char *err;
    size_t errlen;
} ini_ctx_t;

__attribute__((format(printf, 2, 3))) static void ini_fail(ini_ctx_t *x, const char *fmt, ...)
{
    if (x->fail_line)
        return;
    x->fail_line = x->line;
    int k = x->errlen ? snprintf(x->err, x->errlen, "line %u: ", x->line) : 0;
    if (k >= 0 && (size_t)k < x->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(x->err + k, x->errlen - (size_t)k, fmt, ap);
        va_end(ap);
    }
}

/* fgets for inih over the string: one whole line per call or nothing, so our
 * line count is inih's. */
static char *ini_read(char *buf, int size, void *stream)
{
    ini_ctx_t *x = stream;
    if (x->fail_line || *x->next == '\0')
        return NULL; /* after an error: pretend the text ended, stop inih */
    const char *p = x->next, *nl = strchr(p, '\n');
    size_t len = nl ? (size_t)(nl - p) + 1 : strlen(p);
    x->line++;
    x->next += len;
    if (len + 1 > (size_t)size) {
        /* inih would take the first size - 1 bytes as the line and the rest
         * as more lines: a silently different value. */
        ini_fail(x, "line too long (at most %d octets)", size > 2 ? size - 2 : 0);
        return NULL;
    }
    memcpy(buf, p, len);
    buf[len] = '\0';
    if (x->line == 1 && len >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0)
        p += 3, len -= 3; /* inih skips a BOM; so do we, to look at the line */
    x->indented = len && blank(*p);
    slice_t t = trim(p, len);
    /* inih reads an indented line after a key as a continuation even when it
     * starts with '[' (as "  [::1]:25" does); only other lines open sections. */
    if (t.len && t.ptr[0] == '[' && !(x->indented && x->prev)) {
        x->prev = NULL; /* inih forgets the previous key here too */
        const char *close = memchr(t.ptr, ']', t.len);
        slice_t name = close ? slice_make(t.ptr + 1, (size_t)(close - t.ptr - 1)) : SLICE_NULL;
        char sv[72];
        if (close && !slice_ieq(name, "mxgate")) {
            ini_fail(x, "unknown section [%s]; keys go in [mxgate] or before any section", shown(name, sv));
            return NULL;
        }
    }
    return buf;
}

/* The value so far: v[0..n) alone, or appended after a comma when the line
 * continues a list. */
static int acc_add(ini_ctx_t *x, const char *v, size_t n, bool more)
{
    if (!more)
        x->acc_len = 0;
    size_t need = x->acc_len + n + 2;
    if (need > x->acc_cap) {
        size_t cap = x->acc_cap ? x->acc_cap : 256;
        while (cap < need)
            cap *= 2;
        char *a = realloc(x->acc, cap);
        if (!a)
            return -1;
        x->acc = a, x->acc_cap = cap;
    }
    if (more && x->acc_len)
        x->acc[x->acc_len++] = ',';
    memcpy(x->acc + x->acc_len, v, n);
    x->acc_len += n;
    x->acc[x->acc_len] = '\0';
    return 0;
}

static int ini_on(void *user, const char *section, const char *name, const char *value)
{
    ini_ctx_t *x = user;
    char sv[72];
    if (x->fail_line)
        return 0;
    if (*section && strcasecmp(section, "mxgate") != 0) {
        ini_fail(x, "unknown section [%s]", shown(slice_make(section, strlen(section)), sv));
        return 0;
    }
    const key_row_t *k = row_find(name, strlen(name));
    if (!k) {
        ini_fail(x, "unknown key: %s", shown(slice_make(name, strlen(name)), sv));
        return 0;
    }
    bool more = x->indented && x->prev == k;
    if (more && k->type != K_LISTEN && k->type != K_DOMAINS) {
        ini_fail(x, "%s: an indented line continues the previous value, and %s takes one value", k->pub.name,
                 k->pub.name);
        return 0;
    }
    x->prev = k;
    size_t n = strlen(value);
    for (size_t i = 0; more && i < n; i++)
        if (value[i] == ';' && (i == 0 || blank(value[i - 1])))
            n = i; /* inih strips "; comment" from key lines only; no list item holds a ';' */
    if (acc_add(x, value, n, more) != 0) {
        ini_fail(x, "out of memory");
        return 0;
    }
    char e[384];
    if (config_set(x->c, k->pub.name, x->acc, e, sizeof e) != 0) {
        ini_fail(x, "%s", e);
        return 0;
    }
    return 1;
}

int config_parse_ini(mx_config_t *c, const char *text, char *err, size_t errlen)
{
    ini_ctx_t x = {.c = c, .next = text, .err = err, .errlen = errlen};
    int rc = ini_parse_stream(ini_read, &x, ini_on, &x);
    free(x.acc);
    if (rc > 0 && (!x.fail_line || (unsigned)rc < x.fail_line)) {
        /* a line inih could not read; it calls no handler for it */
        if (errlen)
            snprintf(err, errlen, "line %d: expected key = value, [section] or a comment", rc);
        return -1;
    }
    if (x.fail_line)
        return -1;
    if (rc < 0) {
        if (errlen)
            snprintf(err, errlen, "cannot parse: inih error %d", rc);
        return -1;
    }
    return 0;
}

/* ---- dump ---- */

typedef struct out {
    char *buf;
    size_t n, len;
} out_t;

static void put(out_t *o, const char *p, size_t k)
{
    if (o->len + 1 < o->n) {
        size_t room = o->n - 1 - o->len;
        memcpy(o->buf + o->len, p, k < room ? k : room);
    }
    o->len += k;
}

__attribute__((format(printf, 2, 3))) static void putf(out_t *o, const char *fmt, ...)
{
    char tmp[CONFIG_DOMAIN_MAX + 64];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k > 0)
        put(o, tmp, (size_t)k < sizeof tmp ? (size_t)k : sizeof tmp - 1);
}

/* Lists longer than this go on indented continuation lines, so the text
 * stays within inih's default line buffer (200 octets) when read back. */
#define DUMP_WRAP 150

static void put_item(out_t *o, size_t *col, size_t i, const char *p, size_t k)
{
    if (i > 0 && *col + 2 + k > DUMP_WRAP) {
        put(o, ",\n    ", 6);
        *col = 4;
    } else if (i > 0) {
        put(o, ", ", 2);
        *col += 2;
    }
    put(o, p, k);
    *col += k;
}

size_t config_dump(const mx_config_t *c, char *buf, size_t n)
{
    out_t o = {buf, n, 0};
    for (size_t r = 0; r < NROWS; r++) {
        const key_row_t *k = &rows[r];
        const char *f = (const char *)c + k->off;
        size_t col = strlen(k->pub.name) + 3;
        putf(&o, "%s = ", k->pub.name);
        switch (k->type) {
        case K_UINT:
        case K_SECS:
        case K_MSECS:
            putf(&o, "%u", (unsigned)*(const uint32_t *)f);
            break;
        case K_SIZE:
            putf(&o, "%llu", (unsigned long long)*(const uint64_t *)f);
            break;
        case K_BOOL:
            putf(&o, "%s", *(const bool *)f ? "yes" : "no");
            break;
        case K_ENUM: {
            uint8_t v = *(const uint8_t *)f, i = 0;
            while (k->names[i] && i < v)
                i++;
            putf(&o, "%s", k->names[i] ? k->names[i] : "?");
            break;
        }
        case K_LISTEN:
            for (int i = 0; i < c->nlisten; i++)
                put_item(&o, &col, (size_t)i, c->listen[i], strlen(c->listen[i]));
            break;
        case K_DOMAINS:
            for (uint32_t i = 0; i < c->relay_count; i++)
                put_item(&o, &col, i, c->relay_domains[i].ptr, c->relay_domains[i].len);
            break;
        case K_HOSTPORT:
        case K_HOSTNAME:
        case K_PATH:
            put(&o, f, strlen(f));
            break;
        case K_WORDS:
            for (const char *p = f; *p; p++)
                put(&o, *p == ',' ? ", " : p, *p == ',' ? 2 : 1);
            break;
        case K_CIDRS: {
            const config_cidrs_t *cs = (const config_cidrs_t *)(const void *)f;
            for (uint32_t i = 0; i < cs->n; i++) {
                char a[INET6_ADDRSTRLEN + 8];
                inet_ntop(cs->v[i].family, cs->v[i].addr, a, INET6_ADDRSTRLEN);
                snprintf(a + strlen(a), 8, "/%u", cs->v[i].bits);
                put_item(&o, &col, i, a, strlen(a));
            }
            break;
        }
        }
        put(&o, "\n", 1);
    }
    if (n)
        buf[o.len < n ? o.len : n - 1] = '\0';
    return o.len;
}

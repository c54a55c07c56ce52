/*
 * config.h - the configuration model: every key, its default, its checks.
 *
 * One table in config.c describes each key once (name, default, range, help);
 * defaults, parsing, --help and --print-config are all driven by it, so they
 * cannot drift apart. A value is checked completely when it is set, and a
 * refused value leaves the key as it was: the runtime never sees a config
 * that has not passed every check.
 *
 * The same key is spelled `message_size_limit` in the INI file,
 * `--message-size-limit` as a flag and `MXGATE_MESSAGE_SIZE_LIMIT` in the
 * environment; config_set() takes dashes or underscores in any case. Where a
 * value comes from and which wins is workers/cli.c's business: this file does
 * no I/O (the INI text arrives as a string).
 *
 * Strings live in fixed arrays inside mx_config_t, except the relay domains
 * (up to 1024 of them), which live in one allocation owned by the struct. So:
 * config_defaults() on a fresh struct, config_free() when done, and never
 * copy an mx_config_t by assignment (both copies would own the arena).
 */
#ifndef MXGATE_CONFIG_H
#define MXGATE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "slice.h"

#define CONFIG_LISTEN_MAX 8
#define CONFIG_RELAY_MAX 1024
#define CONFIG_DOMAIN_MAX 253                   /* RFC 1035 text form, no trailing dot */
#define CONFIG_ADDR_MAX (CONFIG_DOMAIN_MAX + 7) /* "name:65535" and its NUL */
#define CONFIG_PATH_MAX 4096                    /* PATH_MAX with its NUL */
#define CONFIG_WORDS_MAX 256                    /* a list of names, "a,b,c" and its NUL */
#define CONFIG_WORKERS_MAX 256                  /* worker threads */
#define CONFIG_CIDR_MAX 64                      /* proxy_trusted networks */

/* What an SPF result leads to (spf_fail, spf_softfail, ...). An accepted
 * message always carries Received-SPF and Authentication-Results. */
enum config_spf_action { CONFIG_SPF_ACCEPT = 0, CONFIG_SPF_REJECT = 1, CONFIG_SPF_TEMPFAIL = 2 };
/* Where an SPF reject or tempfail is given: at the first RCPT or at DATA. */
enum config_spf_stage { CONFIG_SPF_AT_RCPT = 0, CONFIG_SPF_AT_DATA = 1 };

enum config_proto { CONFIG_PROTO_SMTP = 0, CONFIG_PROTO_LMTP = 1 };

/* Which PROXY protocol header a listener reads before its greeting. */
enum config_proxy { CONFIG_PROXY_OFF = 0, CONFIG_PROXY_V1, CONFIG_PROXY_V2, CONFIG_PROXY_ANY };
enum config_tls { CONFIG_TLS_OFF = 0, CONFIG_TLS_MAY, CONFIG_TLS_ENCRYPT };
/* STARTTLS towards the downstream: not used; used when offered; required;
 * required with a certificate that verifies (chain and name). */
enum config_ds_tls { CONFIG_DS_TLS_OFF = 0, CONFIG_DS_TLS_MAY, CONFIG_DS_TLS_ENCRYPT, CONFIG_DS_TLS_VERIFY };
/* When the client hears 250 for a message: after the downstream's 250
 * (relay), once the message is durable in the spool (spool), or the
 * downstream's 250 while it answers and the spool's when it does not
 * (relay-then-spool). */
enum config_delivery { CONFIG_DELIVERY_RELAY = 0, CONFIG_DELIVERY_SPOOL, CONFIG_DELIVERY_RELAY_THEN_SPOOL };
/* The content stage at the end of data (workers/scanner.h): none, or
 * rspamd's HTTP protocol. What a scanner that fails or is slow means:
 * 451 4.3.0 (tempfail), or the message goes on unscanned (accept). */
enum config_content { CONFIG_CONTENT_NONE = 0, CONFIG_CONTENT_RSPAMD };
enum config_content_fallback { CONFIG_CONTENT_TEMPFAIL = 0, CONFIG_CONTENT_ACCEPT };

/* What a DNSBL score at or over the threshold does: refuse, add a header,
 * only log. Where the refusal is given: at RCPT (postmaster still gets
 * through) or before the greeting. */
enum config_dnsbl_action { CONFIG_DNSBL_REJECT = 0, CONFIG_DNSBL_TAG, CONFIG_DNSBL_IGNORE };
enum config_dnsbl_stage { CONFIG_DNSBL_AT_RCPT = 0, CONFIG_DNSBL_AT_GREETING };

/* Networks, for proxy_trusted: an address family (AF_INET or AF_INET6, as
 * in <sys/socket.h>), the network's first bits and its prefix length. */
typedef struct config_cidrs {
    uint32_t n;
    struct config_cidr {
        uint8_t family, bits;
        uint8_t addr[16];
    } v[CONFIG_CIDR_MAX];
} config_cidrs_t;

enum config_log_level {
    CONFIG_LOG_DEBUG = 0,
    CONFIG_LOG_INFO,
    CONFIG_LOG_WARN,
    CONFIG_LOG_ERROR,
};

/*
 * Field names are the key names. Read the fields freely; change them only
 * through config_set() so the checks and the relay index stay right.
 * Addresses are kept as checked, canonical text: "192.0.2.1:25",
 * "[2001:db8::1]:25" (IPv6 always in brackets), or for the downstream also
 * "name:25"; the runtime turns them into socket addresses.
 */
typedef struct mx_config {
    char listen[CONFIG_LISTEN_MAX][CONFIG_ADDR_MAX]; /* IPv4:port or [IPv6]:port */
    int nlisten;                                     /* 1 to CONFIG_LISTEN_MAX */
    uint32_t workers;                                /* 0: one per online CPU */
    char hostname[CONFIG_DOMAIN_MAX + 1];            /* "": the caller fills it in */

    /* Lowercased, duplicates dropped, in the order given; the slices point
     * into relay_arena. Empty: the caller fills in localhost and hostname. */
    const slice_t *relay_domains;
    uint32_t relay_count;
    uint32_t relay_mask;         /* relay_index has relay_mask + 1 slots */
    const uint16_t *relay_index; /* open addressing; slot = domain index + 1 */
    void *relay_arena;           /* owns all of the above; config_free */

    uint64_t message_size_limit; /* octets; 0: no limit */
    uint32_t recipient_limit;
    uint32_t smtp_line_limit; /* octets with CRLF */
    uint32_t text_line_limit; /* octets with CRLF */
    uint32_t error_limit;
    uint8_t bare_newline; /* enum scan_bare */
    uint8_t bare_newline_action, pipelining_action, non_smtp_command_action; /* enum smtp_va */
    bool smtputf8;

    uint32_t command_timeout;        /* seconds */
    uint32_t data_timeout;           /* seconds */
    uint32_t data_min_rate;          /* octets per second; 0: none */
    uint32_t greeting_delay;         /* milliseconds; 0: greet at once */
    uint32_t downstream_timeout;     /* seconds */
    uint32_t max_connections;        /* whole process */
    uint32_t max_connections_per_ip; /* 0: no limit */

    char downstream[CONFIG_ADDR_MAX];  /* "": deliver to maildir */
    uint8_t downstream_protocol;       /* enum config_proto */
    uint32_t downstream_connections;   /* per worker */
    uint32_t downstream_max_messages;  /* per connection, then it is retired */
    uint32_t downstream_max_lifetime;  /* seconds, then it is retired */
    uint32_t downstream_queue_limit;   /* waiting transactions per worker */
    uint32_t downstream_queue_timeout; /* seconds */
    uint8_t downstream_tls;            /* enum config_ds_tls */
    char downstream_tls_ca_file[CONFIG_PATH_MAX]; /* trust anchors (PEM); "": the system's */
    char downstream_tls_name[CONFIG_DOMAIN_MAX + 1]; /* the certificate's name; "": downstream's host */

    char maildir[CONFIG_PATH_MAX];

    uint8_t delivery;                  /* enum config_delivery */
    char spool_dir[CONFIG_PATH_MAX];   /* the spool's segments, one series per worker */
    uint64_t spool_max_bytes;          /* octets of pending messages, all workers; past it 452 4.3.1 */
    uint64_t spool_min_free;           /* octets the spool's file system keeps free; below it 452 4.3.1 */
    uint32_t retry_max_interval;       /* seconds: the longest wait between two delivery attempts */
    uint32_t max_queue_age;            /* seconds a message may wait before it is returned */

    /* The filter chain, in order: names from filters/filter.c's table,
     * lowercase, comma-separated ("limits,relay,recipients,size"). */
    char filters[CONFIG_WORDS_MAX];
    char recipient_map[CONFIG_PATH_MAX];     /* "": no recipient check */
    uint32_t max_messages_per_connection;    /* 0: no limit */
    uint32_t max_recipients_per_connection;  /* 0: no limit */
    uint32_t rate_connections;               /* per client address per minute, all workers; 0: no limit */
    uint32_t rate_messages;                  /* MAIL commands, the same way */
    uint32_t rate_recipients;                /* RCPT commands, the same way */
    config_cidrs_t rate_allow;               /* networks the rates do not apply to */
    char limits_redis[CONFIG_ADDR_MAX];      /* the fleet's counts (workers/fleet.h); "": this instance's only */
    uint32_t limits_redis_timeout;           /* milliseconds for a Redis answer, then fail open */
    uint8_t content_scanner;                 /* enum config_content */
    char rspamd_url[CONFIG_ADDR_MAX];        /* rspamd's normal worker, IPv4:port or [IPv6]:port
                                              * (given as http://...; kept without the scheme) */
    uint32_t rspamd_timeout;                 /* seconds for a whole scan, connect to verdict */
    uint8_t content_fallback;                /* enum config_content_fallback */
    uint64_t content_memory_limit;           /* octets of messages held for the scanner, per worker */
    uint64_t content_spill_limit;            /* octets beyond it held in files in spool_dir, per worker; 0: none */

    uint8_t spf_fail, spf_softfail, spf_neutral, spf_none, spf_temperror, spf_permerror; /* config_spf_action */
    uint8_t spf_stage;                       /* enum config_spf_stage */
    uint32_t spf_timeout;                    /* seconds for a whole check */
    uint32_t spf_cache_size;                 /* results cached per worker; 0: none */
    uint32_t spf_threads;                    /* helper threads waiting on DNS */
    char spf_user[CONFIG_WORDS_MAX];         /* the helper's user when started as root */
    char dns_server[CONFIG_ADDR_MAX];        /* "": the system resolver */
    char dnsbl_sites[CONFIG_PATH_MAX];       /* postscreen's syntax (core/dnsbl.h); "": none */
    uint32_t dnsbl_threshold;                /* the score that acts */
    uint8_t dnsbl_action;                    /* enum config_dnsbl_action */
    uint8_t dnsbl_stage;                     /* enum config_dnsbl_stage */
    uint32_t dnsbl_timeout;                  /* seconds the lookups may take; unanswered lists do not count */
    uint32_t pass_cache_ttl;                 /* seconds a client that passed skips the lookups; 0: off */
    uint32_t dns_timeout;                    /* seconds per DNS query */

    uint8_t proxy_protocol;         /* enum config_proxy */
    config_cidrs_t proxy_trusted;   /* n == 0: every source must send the header */
    uint32_t proxy_timeout;         /* seconds for the whole header */
    uint8_t tls;                          /* enum config_tls: STARTTLS offered (may) or required */
    char tls_cert_file[CONFIG_PATH_MAX];  /* PEM chains, comma-separated (one per key type) */
    char tls_key_file[CONFIG_PATH_MAX];   /* their keys, in the same order */
    char tls_protocols[CONFIG_WORDS_MAX]; /* "tlsv1.2,tlsv1.3" */
    char tls_ciphers[CONFIG_PATH_MAX];    /* TLS 1.2 cipher list (OpenSSL syntax); "": OpenSSL's */
    char tls_ciphersuites[CONFIG_PATH_MAX]; /* TLS 1.3 suites; "": OpenSSL's */
    uint32_t tls_handshake_timeout;       /* seconds */
    uint32_t tls_ticket_rotation;         /* seconds a ticket key seals new tickets */
    char user[CONFIG_WORDS_MAX];    /* "": mxgate if that user exists, else nobody */
    char group[CONFIG_WORDS_MAX];   /* "": the user's primary group */

    uint32_t drain_delay;   /* seconds from SIGTERM to closing the listeners */
    uint32_t drain_timeout; /* seconds; 0: close at once */
    char http_listen[CONFIG_ADDR_MAX]; /* "": no operations endpoint */
    uint8_t log_level;      /* enum config_log_level */
} mx_config_t;

/* Does this configuration keep a spool (spool_dir, the delivery loop)? */
static inline bool config_spooling(const mx_config_t *c)
{
    return c->delivery == CONFIG_DELIVERY_SPOOL || c->delivery == CONFIG_DELIVERY_RELAY_THEN_SPOOL;
}

/* Whether the address (4 octets for AF_INET, 16 for AF_INET6; an IPv4
 * address mapped into IPv6 counts as IPv4) lies in one of the networks. */
bool config_cidrs_match(const config_cidrs_t *c, int family, const uint8_t *addr);

/* Whether key `name` (canonical or not) has the same value in a and b;
 * false for an unknown key. */
bool config_key_same(const mx_config_t *a, const mx_config_t *b, const char *name);

/* Give dst src's value of key `name` (how a reload keeps a key that needs a
 * restart); -1 for an unknown key and for relay_domains (an arena). */
int config_key_copy(mx_config_t *dst, const mx_config_t *src, const char *name);

/* What --help shows about a key. */
typedef struct config_key {
    const char *name; /* canonical: underscores, lower case */
    const char *def;  /* the default, as config_set() would take it */
    const char *help;
} config_key_t;

/* Every field set to its default; relay_domains empty, no allocation.
 * The struct must not hold an arena (fresh, or after config_free). */
void config_defaults(mx_config_t *c);

/* Frees the relay arena and leaves no domains; safe to call twice. */
void config_free(mx_config_t *c);

/*
 * Set one key from its text form (surrounding blanks ignored). Returns 0, or
 * -1 with the key unchanged and err = "key: reason" (the canonical key name,
 * e.g. "message_size_limit: not a number: 12x", or "unknown key: foo").
 * err may be NULL when errlen is 0.
 */
int config_set(mx_config_t *c, const char *key, const char *value, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/*
 * Apply INI text (parsed by libinih: link with -linih). Keys go in the
 * global section or in [mxgate]; other sections and unknown keys are errors.
 * ';' and '#' start comment lines, " ;" an inline comment. An indented line
 * continues the previous key's value, which only the list keys (listen,
 * relay_domains) accept, so long lists can span lines; a line longer than
 * libinih's line buffer (198 octets in Debian's build) is refused rather
 * than cut. Returns 0, or -1 with err = "line N: key: reason" for the first
 * bad line ("line N: reason" when no key could be read). Keys on other lines
 * may have been applied by then: give up on the whole config.
 */
int config_parse_ini(mx_config_t *c, const char *text, char *err, size_t errlen) __attribute__((warn_unused_result));

/* Is domain (as written in RCPT TO, any case) one of relay_domains? An
 * O(1) hash probe; no allocation, safe to call from any thread. */
bool config_relay_domain(const mx_config_t *c, slice_t domain);

/*
 * Write every key as "key = value\n", in table order, as INI text that
 * config_parse_ini() takes back (long lists are wrapped onto indented lines).
 * Returns the length the full text needs, like snprintf: the output was cut
 * when that is >= n. buf may be NULL when n is 0.
 */
size_t config_dump(const mx_config_t *c, char *buf, size_t n);

/* The key table, for --help: entry i, or NULL past the end. */
const config_key_t *config_key_at(size_t i);

/* Look a key up by name (dashes or underscores, any case); NULL if none. */
const config_key_t *config_key_find(const char *name);

#endif

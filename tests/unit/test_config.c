/*
 * test_config.c - config.h and workers/cli.c: defaults; every key taken in a
 * good form and refused in a bad one with the key named (and left as it
 * was); size and time suffixes; lists, addresses and relay-domain lookup;
 * INI text (sections, comments, continuation lines, errors with their line
 * numbers, over-long lines); config_dump() read back by config_parse_ini();
 * and cli_load()'s sources in order of precedence (file < environment <
 * flags), its error texts, --help and --print-config.
 *
 * cli.c is included rather than linked: the unit-test build links only
 * core/ (h2o's t/00unit does the same to reach static functions).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "scan.h"
#include "smtp.h"

#include "../../workers/cli.c"

#define assert_err(err, want) assert_string_equal((err), (want))
#define assert_err_has(err, want)                                                                                      \
    do {                                                                                                               \
        if (!strstr((err), (want)))                                                                                    \
            fail_msg("error \"%s\" lacks \"%s\"", (err), (want));                                                      \
    } while (0)

static char *dump(const mx_config_t *c)
{
    size_t n = config_dump(c, NULL, 0);
    char *s = malloc(n + 1);
    assert_non_null(s);
    assert_int_equal(config_dump(c, s, n + 1), n);
    assert_int_equal(strlen(s), n);
    return s;
}

static void set_ok(mx_config_t *c, const char *key, const char *value)
{
    char err[256] = "";
    if (config_set(c, key, value, err, sizeof err) != 0)
        fail_msg("%s = %s refused: %s", key, value, err);
}

/* Refused, err starts with "key: " and contains want, nothing changed. */
static void set_bad(mx_config_t *c, const char *key, const char *value, const char *want)
{
    char err[256] = "";
    char *before = dump(c);
    if (config_set(c, key, value, err, sizeof err) == 0)
        fail_msg("%s = %s taken", key, value);
    const config_key_t *k = config_key_find(key);
    assert_non_null(k);
    assert_int_equal(strncmp(err, k->name, strlen(k->name)), 0);
    assert_int_equal(strncmp(err + strlen(k->name), ": ", 2), 0);
    if (want)
        assert_err_has(err, want);
    char *after = dump(c);
    assert_string_equal(before, after);
    free(before);
    free(after);
}

static bool relay(const mx_config_t *c, const char *d)
{
    return config_relay_domain(c, slice_make(d, strlen(d)));
}

/* ---- defaults ---- */

static void test_defaults(void **state)
{
    (void)state;
    mx_config_t c;
    config_defaults(&c);
    assert_int_equal(c.nlisten, 1);
    assert_string_equal(c.listen[0], "127.0.0.1:2525");
    assert_int_equal(c.workers, 0);
    assert_string_equal(c.hostname, "");
    assert_int_equal(c.relay_count, 0);
    assert_null(c.relay_arena);
    assert_int_equal(c.message_size_limit, 10485760);
    assert_int_equal(c.recipient_limit, 100);
    assert_int_equal(c.smtp_line_limit, 512);
    assert_int_equal(c.text_line_limit, 1000);
    assert_int_equal(c.error_limit, 20);
    assert_int_equal(c.bare_newline, SCAN_BARE_REJECT);
    assert_true(c.smtputf8);
    assert_int_equal(c.command_timeout, 300);
    assert_int_equal(c.data_timeout, 600);
    assert_int_equal(c.data_min_rate, 500);
    assert_int_equal(c.greeting_delay, 0);
    assert_int_equal(c.downstream_timeout, 120);
    assert_int_equal(c.max_connections, 10000);
    assert_int_equal(c.max_connections_per_ip, 50);
    assert_string_equal(c.downstream, "");
    assert_int_equal(c.downstream_protocol, CONFIG_PROTO_SMTP);
    assert_int_equal(c.downstream_connections, 8);
    assert_int_equal(c.downstream_max_messages, 1000);
    assert_int_equal(c.downstream_max_lifetime, 300);
    assert_int_equal(c.downstream_queue_limit, 1000);
    assert_int_equal(c.downstream_queue_timeout, 30);
    assert_int_equal(c.downstream_tls, CONFIG_DS_TLS_OFF);
    assert_string_equal(c.downstream_tls_ca_file, "");
    assert_string_equal(c.downstream_tls_name, "");
    assert_string_equal(c.maildir, "./mail");
    assert_int_equal(c.drain_timeout, 30);
    assert_int_equal(c.drain_delay, 0);
    assert_string_equal(c.http_listen, "127.0.0.1:8025");
    assert_int_equal(c.proxy_protocol, CONFIG_PROXY_OFF);
    assert_int_equal(c.proxy_trusted.n, 0);
    assert_int_equal(c.proxy_timeout, 5);
    assert_int_equal(c.tls, CONFIG_TLS_OFF);
    assert_string_equal(c.tls_protocols, "tlsv1.2,tlsv1.3");
    assert_int_equal(c.tls_handshake_timeout, 30);
    assert_string_equal(c.user, "");
    assert_string_equal(c.group, "");
    assert_int_equal(c.log_level, CONFIG_LOG_INFO);
    assert_string_equal(c.filters, "limits,relay,recipients,size");
    assert_string_equal(c.recipient_map, "");
    assert_int_equal(c.max_messages_per_connection, 0);
    assert_int_equal(c.spf_fail, CONFIG_SPF_REJECT);
    assert_int_equal(c.spf_softfail, CONFIG_SPF_ACCEPT);
    assert_int_equal(c.spf_temperror, CONFIG_SPF_TEMPFAIL);
    assert_int_equal(c.spf_permerror, CONFIG_SPF_ACCEPT);
    assert_int_equal(c.spf_stage, CONFIG_SPF_AT_RCPT);
    assert_int_equal(c.spf_timeout, 20);
    assert_string_equal(c.spf_user, "nobody");
    assert_string_equal(c.dns_server, "");
    assert_string_equal(c.dnsbl_sites, "");
    assert_int_equal(c.dnsbl_threshold, 1);
    assert_int_equal(c.dnsbl_action, CONFIG_DNSBL_REJECT);
    assert_int_equal(c.dnsbl_stage, CONFIG_DNSBL_AT_RCPT);
    assert_int_equal(c.dnsbl_timeout, 5);
    assert_int_equal(c.pass_cache_ttl, 3600);
    assert_string_equal(c.limits_redis, "");
    assert_int_equal(c.bare_newline_action, SMTP_VA_IGNORE);
    assert_int_equal(c.pipelining_action, SMTP_VA_IGNORE);
    assert_int_equal(c.non_smtp_command_action, SMTP_VA_DROP);
    assert_int_equal(c.limits_redis_timeout, 250);
    assert_int_equal(c.content_scanner, CONFIG_CONTENT_NONE);
    assert_string_equal(c.rspamd_url, "127.0.0.1:11333");
    assert_int_equal(c.rspamd_timeout, 15);
    assert_int_equal(c.content_fallback, CONFIG_CONTENT_TEMPFAIL);
    assert_int_equal(c.content_memory_limit, 128ull << 20);
    assert_int_equal(c.content_spill_limit, 1ull << 30);
    assert_int_equal(c.delivery, CONFIG_DELIVERY_RELAY);
    assert_string_equal(c.spool_dir, "./spool");
    assert_int_equal(c.spool_max_bytes, 1ull << 30);
    assert_int_equal(c.spool_min_free, 64ull << 20);
    assert_int_equal(c.retry_max_interval, 1800);
    assert_int_equal(c.max_queue_age, 5 * 86400);
    assert_false(relay(&c, "localhost"));

    /* Every key in the table takes its own default back. */
    const config_key_t *k;
    size_t nkeys = 0;
    for (size_t i = 0; (k = config_key_at(i)); i++, nkeys++) {
        set_ok(&c, k->name, k->def);
        assert_ptr_equal(config_key_find(k->name), k);
    }
    assert_int_equal(nkeys, 90);
    config_free(&c);
    config_free(&c); /* twice is fine */
}

/* ---- every key: a good value and a bad one ---- */

typedef struct kv_case {
    const char *key, *good, *bad, *why;
} kv_case_t;

static const kv_case_t kv_cases[] = {
    {"listen", "0.0.0.0:25, [::]:25", "localhost:25", "not an IPv4 address: localhost:25"},
    {"workers", "16", "257", "expected a number from 0 to 256: 257"},
    {"hostname", "mx1.example.com", "mx_1.example.com", "not a domain name: mx_1.example.com"},
    {"relay_domains", "example.com, Example.ORG", "example.com, bad..example", "not a domain name: bad..example"},
    {"message_size_limit", "25m", "12x", "not a number: 12x"},
    {"recipient_limit", "1000", "0", "expected a number from 1 to 100000: 0"},
    {"smtp_line_limit", "2048", "511", "expected a number from 512 to 65535: 511"},
    {"text_line_limit", "998000", "999", "expected a number from 1000 to 1000000: 999"},
    {"error_limit", "5", "1001", "expected a number from 1 to 1000: 1001"},
    {"bare_newline", "normalize", "strip", "expected reject or normalize: strip"},
    {"smtputf8", "off", "maybe", "expected yes or no: maybe"},
    {"command_timeout", "4m", "0", "expected seconds from 1 to 3600"},
    {"data_timeout", "900", "2h", "expected seconds from 1 to 3600"},
    {"drain_delay", "5", "3601", "expected seconds from 0 to 3600"},
    {"http_listen", "[::1]:9025", "ops.internal", "expected IPv4:port: ops.internal"},
    {"data_min_rate", "0", "100000001", "expected a number from 0 to 100000000: 100000001"},
    {"greeting_delay", "1500", "61s", "expected milliseconds from 0 to 60000"},
    {"downstream_timeout", "60s", "-1", "expected seconds from 1 to 3600"},
    {"max_connections", "50000", "0", "expected a number from 1 to 1000000: 0"},
    {"max_connections_per_ip", "0", "1000001", "expected a number from 0 to 1000000: 1000001"},
    {"downstream", "mail.internal:25", "mail.internal", "expected host:port: mail.internal"},
    {"downstream_protocol", "lmtp", "esmtp", "expected smtp or lmtp: esmtp"},
    {"downstream_connections", "1", "1001", "expected a number from 1 to 1000"},
    {"downstream_max_messages", "1", "0", "expected a number from 1 to 1000000: 0"},
    {"downstream_max_lifetime", "1h", "2d", "expected seconds from 1 to 86400"},
    {"downstream_queue_limit", "10", "1e3", "expected a number from 0 to 1000000: 1e3"},
    {"downstream_queue_timeout", "2m", "1.5", "expected seconds from 1 to 3600"},
    {"downstream_tls", "verify", "require", "expected off, may, encrypt or verify: require"},
    {"downstream_tls_ca_file", "/etc/ssl/mail-ca.pem", "a\001b", "control character in path"},
    {"downstream_tls_name", "mail.internal.example", "mail..internal", "not a domain name: mail..internal"},
    {"maildir", "/var/mail/mxgate", "", "expected a path"},
    {"dnsbl_sites", "zen.example*2, bl.example=127.0.0.[2..11]", "a\001b", "control character in path"},
    {"dnsbl_threshold", "3", "0", "expected a number from 1 to 1000: 0"},
    {"dnsbl_action", "tag", "drop", "expected reject, tag or ignore: drop"},
    {"dnsbl_stage", "greeting", "data", "expected rcpt or greeting: data"},
    {"dnsbl_timeout", "2", "61", "expected seconds from 1 to 60"},
    {"pass_cache_ttl", "0", "2d", "expected seconds from 0 to 86400"},
    {"delivery", "spool", "queue", "expected relay, spool or relay-then-spool: queue"},
    {"spool_dir", "/var/spool/mxgate", "", "expected a path"},
    {"spool_max_bytes", "10g", "0", "too small (at least 1 octets): 0"},
    {"spool_min_free", "0", "1x", "not a number: 1x"},
    {"retry_max_interval", "1h", "2d", "expected seconds from 1 to 86400 (suffix s, m, h or d allowed): 2d"},
    {"max_queue_age", "4d", "31d", "expected seconds from 1 to 2592000"},
    {"drain_timeout", "0", "3601", "expected seconds from 0 to 3600"},
    {"log_level", "WARN", "verbose", "expected debug, info, warn or error: verbose"},
    {"filters", "Relay, spf,limits", "relay, sp f", "not a name: sp f"},
    {"recipient_map", "/etc/mxgate/recipients", "/etc/\x01", "control character in path"},
    {"max_messages_per_connection", "10", "-1", "expected a number from 0 to 1000000"},
    {"max_recipients_per_connection", "100", "x", "expected a number from 0 to 10000000"},
    {"rate_connections", "60", "1000001", "expected a number from 0 to 1000000: 1000001"},
    {"rate_messages", "600", "-5", "expected a number from 0 to 1000000"},
    {"rate_recipients", "6000", "lots", "expected a number from 0 to 10000000"},
    {"rate_allow", "192.0.2.0/24, 2001:db8::/32", "192.0.2.1/24", "host bits set past the prefix: 192.0.2.1/24"},
    {"bare_newline_action", "drop", "reject", "expected ignore, enforce or drop: reject"},
    {"pipelining_action", "enforce", "", "expected ignore, enforce or drop"},
    {"non_smtp_command_action", "ignore", "block", "expected ignore, enforce or drop: block"},
    {"limits_redis", "[::1]:6379", "redis.internal:6379", "not an IPv4 address: redis.internal:6379"},
    {"limits_redis_timeout", "2s", "5ms", "expected milliseconds from 10 to 10000"},
    {"content_scanner", "rspamd", "spamassassin", "expected none or rspamd: spamassassin"},
    {"rspamd_url", "http://[::1]:11333/", "https://127.0.0.1:11333", "expected http://IPv4:port or http://[IPv6]:port"},
    {"rspamd_timeout", "30", "0", "expected seconds from 1 to 600"},
    {"content_fallback", "accept", "discard", "expected tempfail or accept: discard"},
    {"content_memory_limit", "1g", "512", "too small (at least 1024 octets): 512"},
    {"content_spill_limit", "0", "-1", "content_spill_limit"},
    {"spf_fail", "tempfail", "bounce", "expected accept, reject or tempfail: bounce"},
    {"spf_softfail", "reject", "tag", "expected accept, reject or tempfail: tag"},
    {"spf_neutral", "reject", "", "expected accept, reject or tempfail"},
    {"spf_none", "tempfail", "no", "expected accept, reject or tempfail: no"},
    {"spf_temperror", "accept", "451", "expected accept, reject or tempfail: 451"},
    {"spf_permerror", "reject", "ignore", "expected accept, reject or tempfail: ignore"},
    {"spf_stage", "data", "mail", "expected rcpt or data: mail"},
    {"spf_timeout", "5s", "0", "expected seconds from 1 to 600"},
    {"spf_cache_size", "0", "10000001", "expected a number from 0 to 10000000"},
    {"spf_threads", "64", "0", "expected a number from 1 to 1024"},
    {"spf_user", "_mxspf", "a, b", "expected one name: a, b"},
    {"dns_server", "127.0.0.1:5353", "localhost:53", "not an IPv4 address: localhost:53"},
    {"dns_timeout", "2", "61", "expected seconds from 1 to 60"},
    {"proxy_protocol", "any", "v3", "expected off, v1, v2 or any: v3"},
    {"proxy_trusted", "10.0.0.0/8, ::1", "10.0.0.1/8", "host bits set past the prefix: 10.0.0.1/8"},
    {"proxy_timeout", "10", "0", "expected seconds from 1 to 600"},
    {"tls", "encrypt", "required", "expected off, may or encrypt: required"},
    {"tls_cert_file", "/etc/mxgate/ec.pem, /etc/mxgate/rsa.pem", "a\001b", "control character in path"},
    {"tls_key_file", "/etc/mxgate/ec.key", "a\001b", "control character in path"},
    {"tls_protocols", "tlsv1.3", "tlsv1.2, tlsv1.3, tlsv1.1", "too many names: tlsv1.2, tlsv1.3, tlsv1.1"},
    {"tls_ciphers", "ECDHE+AESGCM:!aNULL", "a\001b", "control character in path"},
    {"tls_ciphersuites", "TLS_AES_256_GCM_SHA384", "a\001b", "control character in path"},
    {"tls_handshake_timeout", "10", "601", "expected seconds from 1 to 600"},
    {"tls_ticket_rotation", "12h", "0", "expected seconds from 1 to 86400"},
    {"user", "mxgate", "mx gate", "not a name: mx gate"},
    {"group", "mail", "a,b", "expected one name: a,b"},
};

static void test_each_key(void **state)
{
    (void)state;
    size_t n = sizeof kv_cases / sizeof kv_cases[0];
    const config_key_t *k;
    for (size_t i = 0; (k = config_key_at(i)); i++) {
        size_t j = 0;
        while (j < n && strcmp(kv_cases[j].key, k->name) != 0)
            j++;
        if (j == n)
            fail_msg("no test case for key %s", k->name);
    }
    for (size_t i = 0; i < n; i++) {
        mx_config_t c;
        config_defaults(&c);
        char *def = dump(&c);
        set_ok(&c, kv_cases[i].key, kv_cases[i].good);
        char *changed = dump(&c);
        if (strcmp(def, changed) == 0) /* the value landed somewhere */
            fail_msg("%s = %s changed nothing", kv_cases[i].key, kv_cases[i].good);
        set_bad(&c, kv_cases[i].key, kv_cases[i].bad, kv_cases[i].why);
        /* the same key spelled as a flag, and in capitals */
        char dashed[64], upper[64];
        size_t len = strlen(kv_cases[i].key);
        for (size_t j = 0; j <= len; j++) {
            dashed[j] = kv_cases[i].key[j] == '_' ? '-' : kv_cases[i].key[j];
            upper[j] = (char)(kv_cases[i].key[j] >= 'a' && kv_cases[i].key[j] <= 'z' ? kv_cases[i].key[j] - 32
                                                                                     : kv_cases[i].key[j]);
        }
        set_ok(&c, dashed, kv_cases[i].good);
        set_ok(&c, upper, kv_cases[i].good);
        set_bad(&c, dashed, kv_cases[i].bad, kv_cases[i].why);
        free(def);
        free(changed);
        config_free(&c);
    }
}

static void test_values_land(void **state)
{
    (void)state;
    mx_config_t c;
    config_defaults(&c);
    set_ok(&c, "workers", " 16 ");
    assert_int_equal(c.workers, 16);
    set_ok(&c, "bare_newline", "Normalize");
    assert_int_equal(c.bare_newline, SCAN_BARE_NORMALIZE);
    set_ok(&c, "downstream-protocol", "LMTP");
    assert_int_equal(c.downstream_protocol, CONFIG_PROTO_LMTP);
    set_ok(&c, "log_level", "debug");
    assert_int_equal(c.log_level, CONFIG_LOG_DEBUG);
    set_ok(&c, "log_level", "error");
    assert_int_equal(c.log_level, CONFIG_LOG_ERROR);
    const char *yes[] = {"yes", "true", "1", "on", "YES", "True"}, *no[] = {"no", "false", "0", "off", "No", "OFF"};
    for (size_t i = 0; i < 6; i++) {
        set_ok(&c, "smtputf8", no[i]);
        assert_false(c.smtputf8);
        set_ok(&c, "smtputf8", yes[i]);
        assert_true(c.smtputf8);
    }
    set_ok(&c, "maildir", "/srv/mail box");
    assert_string_equal(c.maildir, "/srv/mail box");
    set_bad(&c, "maildir", "/srv/\x01mail", "control character in path");
    char longpath[CONFIG_PATH_MAX + 1];
    memset(longpath, 'a', sizeof longpath - 1);
    longpath[sizeof longpath - 1] = '\0';
    set_bad(&c, "maildir", longpath, "path too long");
    longpath[CONFIG_PATH_MAX - 1] = '\0';
    set_ok(&c, "maildir", longpath);
    assert_int_equal(strlen(c.maildir), CONFIG_PATH_MAX - 1);
    set_ok(&c, "hostname", "MX.Example.COM");
    assert_string_equal(c.hostname, "MX.Example.COM");
    set_ok(&c, "hostname", "");
    assert_string_equal(c.hostname, "");
    set_bad(&c, "hostname", "-mx.example.com", "not a domain name");
    set_bad(&c, "hostname", "mx-.example.com", "not a domain name");
    set_bad(&c, "hostname", "example.com.", "not a domain name");
    set_bad(&c, "hostname", "192.0.2.1", "not a domain name");
    set_bad(&c, "hostname", "a b", "not a domain name");
    char label[80];
    memset(label, 'a', 64);
    strcpy(label + 64, ".example");
    set_bad(&c, "hostname", label, "not a domain name"); /* a 64-octet label */
    set_ok(&c, "hostname", label + 1);                   /* a 63-octet one */
    char name[300];
    for (int i = 0; i < 4; i++)
        memcpy(name + 64 * i, label + 1, 63), name[64 * i + 63] = '.';
    strcpy(name + 256, "x");
    set_bad(&c, "hostname", name + 3, "not a domain name"); /* 254 octets */
    set_ok(&c, "hostname", name + 4);                       /* 253 octets */
    assert_int_equal(strlen(c.hostname), 253);
    config_free(&c);
}

static void test_unknown_and_missing(void **state)
{
    (void)state;
    mx_config_t c;
    char err[128];
    config_defaults(&c);
    assert_int_equal(config_set(&c, "foo", "1", err, sizeof err), -1);
    assert_err(err, "unknown key: foo");
    assert_int_equal(config_set(&c, "work_ers_", "1", err, sizeof err), -1);
    assert_err(err, "unknown key: work_ers_");
    assert_int_equal(config_set(&c, "", "1", err, sizeof err), -1);
    assert_int_equal(config_set(&c, "workers", NULL, err, sizeof err), -1);
    assert_err(err, "workers: missing value");
    assert_int_equal(config_set(&c, "workers", "x", NULL, 0), -1); /* no room for the error is fine */
    assert_int_equal(config_set(&c, "workers", "x", err, 12), -1);
    assert_string_equal(err, "workers: ex"); /* cut, terminated */
    assert_null(config_key_find("nope"));
    assert_null(config_key_find(NULL));
    assert_null(config_key_at(1000));
    config_free(&c);
}

/* ---- suffixes and numbers ---- */

static void test_suffixes(void **state)
{
    (void)state;
    mx_config_t c;
    char err[256];
    config_defaults(&c);
    static const struct {
        const char *v;
        uint64_t want;
    } sizes[] = {
        {"0", 0},
        {"1", 1},
        {"10k", 10240},
        {"10K", 10240},
        {"25m", 25u << 20},
        {"25M", 25u << 20},
        {"2g", 2ull << 30},
        {"2G", 2ull << 30},
        {"1024g", 1ull << 40},
        {"1099511627776", 1ull << 40},
    };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        set_ok(&c, "message_size_limit", sizes[i].v);
        assert_int_equal(c.message_size_limit, sizes[i].want);
    }
    assert_int_equal(config_set(&c, "message_size_limit", "12x", err, sizeof err), -1);
    assert_err(err, "message_size_limit: not a number: 12x");
    set_bad(&c, "message_size_limit", "k", "not a number: k");
    set_bad(&c, "message_size_limit", "10 m", "not a number");
    set_bad(&c, "message_size_limit", "10mb", "not a number");
    set_bad(&c, "message_size_limit", "-1", "not a number");
    set_bad(&c, "message_size_limit", "+1", "not a number");
    set_bad(&c, "message_size_limit", "1025g", "too large");
    set_bad(&c, "message_size_limit", "1099511627777", "too large");
    set_bad(&c, "message_size_limit", "99999999999999999999999999g", "too large"); /* no wrap-around */

    set_ok(&c, "command_timeout", "5m");
    assert_int_equal(c.command_timeout, 300);
    set_ok(&c, "command_timeout", "90s");
    assert_int_equal(c.command_timeout, 90);
    set_ok(&c, "command_timeout", "1h");
    assert_int_equal(c.command_timeout, 3600);
    set_ok(&c, "command_timeout", "42");
    assert_int_equal(c.command_timeout, 42);
    set_bad(&c, "command_timeout", "61m", "expected seconds from 1 to 3600 (suffix s, m, h or d allowed): 61m");
    set_bad(&c, "command_timeout", "5ms", "expected seconds");
    set_bad(&c, "command_timeout", "m", "expected seconds");
    set_bad(&c, "command_timeout", "18446744073709551617", "expected seconds");
    set_ok(&c, "data_timeout", "10M");
    assert_int_equal(c.data_timeout, 600);
    set_ok(&c, "greeting_delay", "2s");
    assert_int_equal(c.greeting_delay, 2000);
    set_ok(&c, "greeting_delay", "150ms");
    assert_int_equal(c.greeting_delay, 150);
    set_ok(&c, "greeting_delay", "60s");
    assert_int_equal(c.greeting_delay, 60000);
    set_bad(&c, "greeting_delay", "1m", "expected milliseconds from 0 to 60000 (suffix ms or s allowed): 1m");
    set_bad(&c, "workers", "", "expected a number from 0 to 256: ");
    set_bad(&c, "workers", "4k", "expected a number");
    set_bad(&c, "workers", "0x10", "expected a number");
    set_ok(&c, "workers", "007");
    assert_int_equal(c.workers, 7);
    config_free(&c);
}

/* ---- addresses ---- */

static void test_listen(void **state)
{
    (void)state;
    mx_config_t c;
    config_defaults(&c);
    set_ok(&c, "listen", "0.0.0.0:25,[::]:25 , [2001:DB8::1]:00587,192.0.2.7:2525,");
    assert_int_equal(c.nlisten, 4);
    assert_string_equal(c.listen[0], "0.0.0.0:25");
    assert_string_equal(c.listen[1], "[::]:25");
    assert_string_equal(c.listen[2], "[2001:DB8::1]:587"); /* port canonical, host as given */
    assert_string_equal(c.listen[3], "192.0.2.7:2525");
    set_ok(&c, "listen",
           "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3,127.0.0.1:4,127.0.0.1:5,127.0.0.1:6,127.0.0.1:7,[::1]:65535");
    assert_int_equal(c.nlisten, 8);
    assert_string_equal(c.listen[7], "[::1]:65535");
    set_bad(&c, "listen",
            "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3,127.0.0.1:4,127.0.0.1:5,127.0.0.1:6,127.0.0.1:7,"
            "127.0.0.1:8,127.0.0.1:9",
            "too many addresses (at most 8)");
    set_bad(&c, "listen", "", "expected at least one address");
    set_bad(&c, "listen", " , ", "expected at least one address");
    set_bad(&c, "listen", "127.0.0.1", "expected IPv4:port: 127.0.0.1");
    set_bad(&c, "listen", "127.0.0.1:0", "expected a port from 1 to 65535");
    set_bad(&c, "listen", "127.0.0.1:65536", "expected a port from 1 to 65535");
    set_bad(&c, "listen", "127.0.0.1:", "expected a port");
    set_bad(&c, "listen", "127.0.0.1:25x", "expected a port");
    set_bad(&c, "listen", "127.1:25", "not an IPv4 address");
    set_bad(&c, "listen", "256.0.0.1:25", "not an IPv4 address");
    set_bad(&c, "listen", ":25", "not an IPv4 address");
    set_bad(&c, "listen", "::1:25", "an IPv6 address needs brackets");
    set_bad(&c, "listen", "[::1]", "expected [IPv6]:port");
    set_bad(&c, "listen", "[::1]25", "expected [IPv6]:port");
    set_bad(&c, "listen", "[::1:25", "expected [IPv6]:port");
    set_bad(&c, "listen", "[1.2.3.4]:25", "not an IPv6 address");
    set_bad(&c, "listen", "[fe80::1%eth0]:25", "not an IPv6 address");
    set_bad(&c, "listen", "[]:25", "not an IPv6 address");
    set_bad(&c, "listen", "0.0.0.0:25,0.0.0.0:025", "address given twice: 0.0.0.0:025");
    set_bad(&c, "listen", "0.0.0.0:25,mx:25", "not an IPv4 address: mx:25");

    set_ok(&c, "downstream", "[::1]:24");
    assert_string_equal(c.downstream, "[::1]:24");
    set_ok(&c, "downstream", " 10.0.0.5:25 ");
    assert_string_equal(c.downstream, "10.0.0.5:25");
    set_ok(&c, "downstream", "Mail.Internal:2525");
    assert_string_equal(c.downstream, "Mail.Internal:2525");
    char longname[CONFIG_ADDR_MAX + 8];
    memset(longname, 'a', 63), longname[63] = '.';
    memcpy(longname + 64, longname, 64);
    memcpy(longname + 128, longname, 64);
    memset(longname + 192, 'b', 61);
    strcpy(longname + 253, ":65535");
    set_ok(&c, "downstream", longname); /* the longest there is */
    assert_string_equal(c.downstream, longname);
    strcpy(longname + 253, "b:65535");
    set_bad(&c, "downstream", longname, "not an IP address or host name");
    set_bad(&c, "downstream", "mail_internal:25", "not an IP address or host name");
    set_bad(&c, "downstream", "mail.internal:smtp", "expected a port");
    set_bad(&c, "downstream", "a:1,b:2", "an IPv6 address needs brackets");
    set_bad(&c, "downstream", "a.example, b.example:2", "not an IP address or host name");
    set_ok(&c, "downstream", "  ");
    assert_string_equal(c.downstream, "");
    config_free(&c);
}

/* ---- relay domains ---- */

static void test_relay_domains(void **state)
{
    (void)state;
    mx_config_t c;
    config_defaults(&c);
    set_ok(&c, "relay_domains", "Example.COM, example.org,sub.Example.net ,example.com");
    assert_int_equal(c.relay_count, 3); /* the duplicate dropped */
    assert_int_equal(c.relay_domains[0].len, 11);
    assert_memory_equal(c.relay_domains[0].ptr, "example.com", 11); /* stored lowercased */
    assert_memory_equal(c.relay_domains[2].ptr, "sub.example.net", 15);
    assert_true(relay(&c, "example.com"));
    assert_true(relay(&c, "EXAMPLE.com"));
    assert_true(relay(&c, "Sub.Example.Net"));
    assert_true(relay(&c, "example.ORG"));
    assert_false(relay(&c, "example.net"));   /* parent of a listed one */
    assert_false(relay(&c, "x.example.com")); /* subdomain of a listed one */
    assert_false(relay(&c, "example.co"));    /* prefix */
    assert_false(relay(&c, "example.comm"));
    assert_false(relay(&c, "example.com."));
    assert_false(relay(&c, ""));
    assert_false(relay(&c, "[192.0.2.1]"));
    assert_false(config_relay_domain(&c, SLICE_NULL));
    /* Not NUL-terminated: the length decides. */
    assert_true(config_relay_domain(&c, slice_make("example.orgXYZ", 11)));

    /* A refused list keeps the old one. */
    set_bad(&c, "relay_domains", "a.example, -b.example", "not a domain name: -b.example");
    assert_int_equal(c.relay_count, 3);
    assert_true(relay(&c, "example.com"));

    /* Empty means "not set": the caller fills in localhost and hostname. */
    set_ok(&c, "relay_domains", "");
    assert_int_equal(c.relay_count, 0);
    assert_false(relay(&c, "example.com"));

    /* The most there may be, all found, and one more refused. */
    size_t cap = CONFIG_RELAY_MAX * 24 + 32;
    char *list = malloc(cap), *p = list;
    for (int i = 0; i < CONFIG_RELAY_MAX; i++)
        p += sprintf(p, "%sD%d.Example", i ? "," : "", i);
    set_ok(&c, "relay_domains", list);
    assert_int_equal(c.relay_count, CONFIG_RELAY_MAX);
    for (int i = 0; i < CONFIG_RELAY_MAX; i++) {
        char d[32];
        sprintf(d, "d%d.example", i);
        assert_true(relay(&c, d));
        sprintf(d, "d%d.example", i + CONFIG_RELAY_MAX);
        assert_false(relay(&c, d));
    }
    sprintf(p, ",one-more.example");
    set_bad(&c, "relay_domains", list, "too many domains (at most 1024)");
    assert_int_equal(c.relay_count, CONFIG_RELAY_MAX);
    free(list);
    config_free(&c);
    assert_false(relay(&c, "d1.example"));
}

/* ---- INI ---- */

static int ini(mx_config_t *c, const char *text, char *err, size_t n)
{
    return config_parse_ini(c, text, err, n);
}

static void test_ini(void **state)
{
    (void)state;
    mx_config_t c;
    char err[256];
    config_defaults(&c);
    const char *text = "; mxgate test config\n"
                       "# another comment style\n"
                       "workers = 4\n"
                       "\n"
                       "[mxgate]\n"
                       "  hostname = mx.example.com   ; inline comment\n"
                       "message-size-limit=20m\r\n"
                       "relay_domains = a.example, B.example,\n"
                       "    c.example\n"
                       "\t; a comment between continuation lines\n"
                       "    d.example ; the last\n"
                       "listen = 0.0.0.0:25\n"
                       "  [::]:25\n"
                       "[MXGATE]\n"
                       "smtputf8 = no\n";
    assert_int_equal(ini(&c, text, err, sizeof err), 0);
    assert_int_equal(c.workers, 4);
    assert_string_equal(c.hostname, "mx.example.com");
    assert_int_equal(c.message_size_limit, 20u << 20);
    assert_int_equal(c.relay_count, 4);
    assert_true(relay(&c, "b.example"));
    assert_true(relay(&c, "d.example"));
    assert_int_equal(c.nlisten, 2);
    assert_string_equal(c.listen[1], "[::]:25");
    assert_false(c.smtputf8);

    /* A BOM and a last line without a newline. */
    assert_int_equal(ini(&c, "\xEF\xBB\xBFworkers = 6", err, sizeof err), 0);
    assert_int_equal(c.workers, 6);
    assert_int_equal(ini(&c, "", err, sizeof err), 0);
    config_free(&c);
}

static void test_ini_errors(void **state)
{
    (void)state;
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"workers = 4\n\n[mxgate]\nworkers = many\n", "line 4: workers: expected a number from 0 to 256: many"},
        {"workers = 4\nthis line has no equals sign\nworkers = 5\n",
         "line 2: expected key = value, [section] or a comment"},
        {"[mxgate]\nworkers = 4\n[smtpd]\nworkers = 5\n",
         "line 3: unknown section [smtpd]; keys go in [mxgate] or before any section"},
        {"[mxgate\nworkers = 4\n", "line 1: expected key = value, [section] or a comment"},
        {"\n\nfoo = bar\n", "line 3: unknown key: foo"},
        {"workers = 4\n  8\n", "line 2: workers: an indented line continues the previous value"},
        {"workers = 4\n  hostname = x.example\n", "line 2: workers: an indented line continues"},
        {"relay_domains = a.example\n  b_example\n", "line 2: relay_domains: not a domain name: b_example"},
        {"bare_newline = strip\n", "line 1: bare_newline: expected reject or normalize: strip"},
        {"x = 1\nworkers = nope\n", "line 1: unknown key: x"}, /* the first error wins */
        {"junk\nworkers = nope\n", "line 1: expected key = value"},
        {"workers = nope\njunk\n", "line 1: workers: expected a number"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mx_config_t c;
        char err[256] = "";
        config_defaults(&c);
        if (ini(&c, cases[i].text, err, sizeof err) != -1)
            fail_msg("case %zu parsed", i);
        assert_err_has(err, cases[i].want);
        config_free(&c);
    }

    /* A line longer than inih's buffer is refused, not cut into pieces. */
    mx_config_t c;
    char err[256];
    config_defaults(&c);
    char *text = malloc(5000), *p = text;
    p += sprintf(p, "workers = 2\nrelay_domains = ");
    for (int i = 0; i < 100; i++)
        p += sprintf(p, "%sd%d.example", i ? ", " : "", i);
    sprintf(p, "\nworkers = 3\n");
    assert_int_equal(ini(&c, text, err, sizeof err), -1);
    assert_err_has(err, "line 2: line too long (at most ");
    assert_int_equal(c.relay_count, 0);
    assert_int_equal(c.workers, 2);
    free(text);
    config_free(&c);
}

/* ---- dump ---- */

static void test_dump_round_trip(void **state)
{
    (void)state;
    mx_config_t c, d;
    char err[256];
    config_defaults(&c);
    char *text = dump(&c);
    assert_non_null(strstr(text, "listen = 127.0.0.1:2525\n"));
    assert_non_null(strstr(text, "message_size_limit = 10485760\n"));
    assert_non_null(strstr(text, "hostname = \n"));
    assert_non_null(strstr(text, "bare_newline = reject\n"));
    assert_non_null(strstr(text, "smtputf8 = yes\n"));
    assert_non_null(strstr(text, "maildir = ./mail\n"));
    assert_non_null(strstr(text, "log_level = info\n"));
    const config_key_t *k;
    for (size_t i = 0; (k = config_key_at(i)); i++) {
        char line[80];
        snprintf(line, sizeof line, "\n%s = ", k->name);
        assert_true(strstr(text, line) || strncmp(text, line + 1, strlen(line + 1)) == 0);
    }
    free(text);

    /* Everything changed, long lists included: dump, read back, same dump. */
    set_ok(&c, "listen",
           "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3,127.0.0.1:4,[2001:db8::1234:5678]:5,"
           "[2001:db8::1234:5679]:6,[2001:db8::1234:567a]:7,[::1]:8");
    char *list = malloc(CONFIG_RELAY_MAX * 32), *p = list;
    for (int i = 0; i < CONFIG_RELAY_MAX; i++)
        p += sprintf(p, "%sdomain-%d.example.org", i ? "," : "", i);
    set_ok(&c, "relay_domains", list);
    free(list);
    static const char *const kv[][2] = {
        {"workers", "3"},
        {"hostname", "mx.example.net"},
        {"message_size_limit", "1g"},
        {"recipient_limit", "7"},
        {"smtp_line_limit", "1024"},
        {"text_line_limit", "2000"},
        {"error_limit", "3"},
        {"bare_newline", "normalize"},
        {"smtputf8", "no"},
        {"command_timeout", "61"},
        {"data_timeout", "62"},
        {"greeting_delay", "63"},
        {"downstream_timeout", "64"},
        {"max_connections", "65"},
        {"max_connections_per_ip", "66"},
        {"downstream", "[::1]:10025"},
        {"downstream_protocol", "lmtp"},
        {"downstream_connections", "67"},
        {"downstream_max_messages", "68"},
        {"downstream_max_lifetime", "69"},
        {"downstream_queue_limit", "70"},
        {"downstream_queue_timeout", "71"},
        {"downstream_tls", "verify"},
        {"downstream_tls_ca_file", "/etc/ssl/mail ca.pem"},
        {"downstream_tls_name", "mail.internal.example"},
        {"maildir", "/var/spool/mx gate"},
        {"drain_timeout", "72"},
        {"log_level", "warn"},
    };
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
        set_ok(&c, kv[i][0], kv[i][1]);
    text = dump(&c);
    for (const char *line = text; *line;) { /* every line fits inih's buffer */
        const char *nl = strchr(line, '\n');
        assert_non_null(nl);
        assert_true(nl - line < 160);
        line = nl + 1;
    }
    config_defaults(&d);
    if (config_parse_ini(&d, text, err, sizeof err) != 0)
        fail_msg("dump not read back: %s", err);
    char *again = dump(&d);
    assert_string_equal(text, again);
    assert_int_equal(d.relay_count, CONFIG_RELAY_MAX);
    assert_true(relay(&d, "DOMAIN-1023.example.org"));

    /* Cut short like snprintf: the full length back, the text terminated. */
    size_t full = strlen(text);
    char small[40];
    memset(small, 'X', sizeof small);
    assert_int_equal(config_dump(&c, small, sizeof small), full);
    assert_int_equal(strlen(small), sizeof small - 1);
    assert_memory_equal(small, text, sizeof small - 1);
    assert_int_equal(config_dump(&c, small, 1), full);
    assert_string_equal(small, "");
    free(text);
    free(again);
    config_free(&c);
    config_free(&d);
}

/* ---- cli ---- */

/* A temporary file holding text; the path is written to path. */
static void temp_file(char path[static 64], const char *text)
{
    strcpy(path, "/tmp/mxgate-test-config-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t n = strlen(text);
    assert_int_equal(write(fd, text, n), (ssize_t)n);
    close(fd);
}

/* Runs cli_load with stdout going to a file; returns what was printed. */
static char *cli_captured(mx_config_t *c, int argc, char **argv, char **envp, char *err, size_t n, int *rc)
{
    char path[64];
    temp_file(path, "");
    fflush(stdout);
    int saved = dup(1), fd = open(path, O_WRONLY);
    assert_true(saved >= 0 && fd >= 0);
    dup2(fd, 1);
    close(fd);
    *rc = cli_load(c, argc, argv, envp, err, n);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    char *text = cli_slurp(path, err, n);
    assert_non_null(text);
    unlink(path);
    return text;
}

static void test_cli_precedence(void **state)
{
    (void)state;
    char path[64], err[512] = "";
    temp_file(path, "# file\n"
                    "workers = 3\n"
                    "recipient_limit = 30\n"
                    "[mxgate]\n"
                    "error_limit = 7\n"
                    "hostname = file.example\n"
                    "downstream = file.example:25\n");
    char *envp[] = {"HOME=/nonexistent",  "MXGATE_WORKERS=5", "MXGATE_RECIPIENT_LIMIT=42",
                    "MXGATE_DOWNSTREAM=", "PATH=/bin",        NULL};
    char *argv[] = {"mxgate",         "--config",  path, "--workers", "9", "--message-size-limit=1m",
                    "--bare_newline", "normalize", NULL};
    mx_config_t c;
    int rc = cli_load(&c, 8, argv, envp, err, sizeof err);
    if (rc != CLI_RUN)
        fail_msg("cli_load: %d %s", rc, err);
    assert_int_equal(c.workers, 9);          /* flag over environment over file */
    assert_int_equal(c.recipient_limit, 42); /* environment over file */
    assert_int_equal(c.error_limit, 7);      /* file over default */
    assert_string_equal(c.downstream, "");   /* the environment may clear a key */
    assert_int_equal(c.message_size_limit, 1u << 20);
    assert_int_equal(c.bare_newline, SCAN_BARE_NORMALIZE);
    assert_int_equal(c.text_line_limit, 1000); /* default */
    assert_string_equal(c.hostname, "file.example");
    assert_int_equal(c.relay_count, 2); /* filled in */
    assert_true(relay(&c, "localhost"));
    assert_true(relay(&c, "FILE.example"));
    config_free(&c);

    /* No envp, no flags: the file alone. */
    char *argv2[] = {"mxgate", "--config=", NULL};
    char arg[80];
    snprintf(arg, sizeof arg, "--config=%s", path);
    argv2[1] = arg;
    assert_int_equal(cli_load(&c, 2, argv2, NULL, err, sizeof err), CLI_RUN);
    assert_int_equal(c.workers, 3);
    assert_int_equal(c.recipient_limit, 30);
    config_free(&c);
    unlink(path);

    /* An explicit relay list is kept as it is. */
    char *argv3[] = {"mxgate", "--relay-domains", "example.com", "--hostname", "mx.example.com", NULL};
    assert_int_equal(cli_load(&c, 5, argv3, NULL, err, sizeof err), CLI_RUN);
    assert_int_equal(c.relay_count, 1);
    assert_false(relay(&c, "localhost"));
    config_free(&c);
}

static void test_cli_hostname(void **state)
{
    (void)state;
    char name[256] = "", err[512];
    assert_int_equal(gethostname(name, sizeof name - 1), 0);
    char *argv[] = {"mxgate", NULL};
    mx_config_t c;
    int rc = cli_load(&c, 1, argv, NULL, err, sizeof err);
    mx_config_t probe;
    config_defaults(&probe);
    bool valid = config_set(&probe, "hostname", name, err, sizeof err) == 0 && name[0];
    config_free(&probe);
    if (!valid) {
        /* This machine's name is not a domain: the error must say so. */
        assert_int_equal(rc, CLI_ERROR);
        assert_err_has(err, "set hostname");
        config_free(&c);
        skip();
    }
    assert_int_equal(rc, CLI_RUN);
    assert_string_equal(c.hostname, name);
    assert_true(relay(&c, "localhost"));
    assert_true(relay(&c, name));
    config_free(&c);
}

static void test_cli_errors(void **state)
{
    (void)state;
    char path[64], bad[64];
    temp_file(path, "workers = 2\n");
    temp_file(bad, "workers = 2\n\nmessage_size_limit = 12x\n");
    char missing[80];
    snprintf(missing, sizeof missing, "%s-missing", path);
    static char *env_bad[] = {"MXGATE_WORKERS=abc", NULL};
    static char *env_unknown[] = {"MXGATE_WROKERS=4", NULL};
    static char *env_other[] = {"MXGATEWAY=1", "NOT_MXGATE_WORKERS=x", "MXGATE_NOEQUALS", NULL};
    struct {
        char *argv[6];
        char **envp;
        const char *want;
    } cases[] = {
        {{"mxgate", "--workers", "abc"}, NULL, "--workers: expected a number from 0 to 256: abc"},
        {{"mxgate", "--workers=300"}, NULL, "--workers: expected a number from 0 to 256: 300"},
        {{"mxgate", "--max_connections", "0"}, NULL, "--max_connections: expected a number from 1 to 1000000: 0"},
        {{"mxgate", "--bare-newline=strip"}, NULL, "--bare-newline: expected reject or normalize: strip"},
        {{"mxgate", "--wrokers", "4"}, NULL, "--wrokers: unknown option"},
        {{"mxgate", "--workers"}, NULL, "--workers: missing value"},
        {{"mxgate", "--config"}, NULL, "--config: missing value"},
        {{"mxgate", "workers=4"}, NULL, "unexpected argument: workers=4"},
        {{"mxgate", "-w", "4"}, NULL, "unexpected argument: -w"},
        {{"mxgate", "--"}, NULL, "unexpected argument: --"},
        {{"mxgate", "--help=yes"}, NULL, "--help: takes no value"},
        {{"mxgate", "--workers", "abc", "--config", missing}, NULL, "--config "},
        {{"mxgate", "--config", missing}, NULL, "No such file or directory"},
        {{"mxgate", "--config", bad}, NULL, "line 3: message_size_limit: not a number: 12x"},
        {{"mxgate", "--config", path}, env_bad, "MXGATE_WORKERS: expected a number from 0 to 256: abc"},
        {{"mxgate", "--hostname", "mx_1"}, NULL, "--hostname: not a domain name: mx_1"},
        /* a bad flag is reported even when the environment is fine */
        {{"mxgate", "--workers", "-1"}, env_other, "--workers: expected a number from 0 to 256: -1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int argc = 0;
        while (cases[i].argv[argc])
            argc++;
        char err[512] = "";
        mx_config_t c;
        int rc = cli_load(&c, argc, cases[i].argv, cases[i].envp, err, sizeof err);
        if (rc != CLI_ERROR)
            fail_msg("case %zu: rc %d", i, rc);
        assert_err_has(err, cases[i].want);
        config_free(&c);
    }
    /* The file's errors name the file. */
    {
        char *argv[] = {"mxgate", "--config", bad, NULL};
        char err[512], want[128];
        mx_config_t c;
        assert_int_equal(cli_load(&c, 3, argv, NULL, err, sizeof err), CLI_ERROR);
        snprintf(want, sizeof want, "%s: line 3: message_size_limit: not a number: 12x", bad);
        assert_string_equal(err, want);
        config_free(&c);
    }
    /* An MXGATE_* variable that is no setting is ignored with a warning:
     * orchestrators inject their own (Kubernetes: MXGATE_SERVICE_HOST). */
    {
        char *argv[] = {"mxgate", NULL};
        char err[512] = "";
        mx_config_t c;
        assert_int_equal(cli_load(&c, 1, argv, env_unknown, err, sizeof err), CLI_RUN);
        config_free(&c);
    }
    /* Unrelated variables are not ours to judge. */
    {
        char *argv[] = {"mxgate", "--hostname", "mx.example", NULL};
        char err[512];
        mx_config_t c;
        assert_int_equal(cli_load(&c, 3, argv, env_other, err, sizeof err), CLI_RUN);
        config_free(&c);
    }
    unlink(path);
    unlink(bad);
}

static void test_cli_help_and_print(void **state)
{
    (void)state;
    char err[512] = "";
    int rc;
    mx_config_t c;
    /* --help wins even over a broken flag after it. */
    char *argv[] = {"/usr/sbin/mxgate", "--help", "--workers", "abc", NULL};
    char *out = cli_captured(&c, 4, argv, NULL, err, sizeof err, &rc);
    assert_int_equal(rc, CLI_HELP);
    assert_non_null(strstr(out, "usage: mxgate "));
    const config_key_t *k;
    for (size_t i = 0; (k = config_key_at(i)); i++) {
        char flag[64], env[64];
        size_t n = strlen(k->name);
        for (size_t j = 0; j <= n; j++) {
            flag[j] = k->name[j] == '_' ? '-' : k->name[j];
            env[j] = (char)(k->name[j] >= 'a' && k->name[j] <= 'z' ? k->name[j] - 32 : k->name[j]);
        }
        char line[256];
        snprintf(line, sizeof line, "  --%s VALUE  (MXGATE_%s; default: %s)\n", flag, env,
                 *k->def ? k->def : "(empty)");
        if (!strstr(out, line))
            fail_msg("--help lacks \"%s\"", line);
    }
    assert_non_null(strstr(out, "--message-size-limit VALUE  (MXGATE_MESSAGE_SIZE_LIMIT; default: 10m)"));
    free(out);
    config_free(&c);

    /* --print-config prints what was loaded, as INI text that loads again. */
    char *argv2[] = {"mxgate", "--print-config", "--hostname=mx.example", "--workers", "12", NULL};
    out = cli_captured(&c, 5, argv2, NULL, err, sizeof err, &rc);
    assert_int_equal(rc, CLI_PRINTED);
    assert_non_null(strstr(out, "workers = 12\n"));
    assert_non_null(strstr(out, "hostname = mx.example\n"));
    assert_non_null(strstr(out, "relay_domains = localhost, mx.example\n"));
    char *expect = dump(&c);
    assert_string_equal(out, expect);
    mx_config_t d;
    config_defaults(&d);
    assert_int_equal(config_parse_ini(&d, out, err, sizeof err), 0);
    assert_int_equal(d.workers, 12);
    free(expect);
    free(out);
    config_free(&c);
    config_free(&d);
}

/* proxy_trusted: what parses, what is refused, what matches. */
static void test_cidrs(void **state)
{
    (void)state;
    mx_config_t c;
    config_defaults(&c);
    char err[256];
    static const char *const bad[][2] = {
        {"10.0.0.0/33", "prefix longer than the address"},
        {"::/129", "prefix longer than the address"},
        {"10.0.0.0/", "bad prefix length"},
        {"10.0.0.0/8x", "bad prefix length"},
        {"10.0.0.0/-1", "bad prefix length"},
        {"10.0.0.0/0008", "bad prefix length"},
        {"10.0.0", "not an IPv4 or IPv6 network"},
        {"example.com", "not an IPv4 or IPv6 network"},
        {"2001:db8::1/32", "host bits set past the prefix"},
        {"192.168.1.1/31", "host bits set past the prefix"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_not_equal(config_set(&c, "proxy_trusted", bad[i][0], err, sizeof err), 0);
        assert_non_null(strstr(err, bad[i][1]));
        assert_int_equal(c.proxy_trusted.n, 0); /* a refused value leaves the key as it was */
    }
    char many[CONFIG_CIDR_MAX * 20 + 32] = "";
    for (int i = 0; i <= CONFIG_CIDR_MAX; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "%s10.%d.0.0/16", i ? "," : "", i);
    assert_int_not_equal(config_set(&c, "proxy_trusted", many, err, sizeof err), 0);
    assert_non_null(strstr(err, "too many networks"));

    set_ok(&c, "proxy_trusted", "10.1.0.0/16, 192.0.2.7, 2001:db8::/32, 0.0.0.0/0");
    assert_int_equal(c.proxy_trusted.n, 4);
    uint8_t a4[4] = {10, 1, 200, 3}, b4[4] = {10, 2, 0, 1}, m6[16] = {[10] = 0xff, [11] = 0xff, 10, 1, 0, 9};
    uint8_t a6[16] = {0x20, 0x01, 0x0d, 0xb8, [15] = 1}, b6[16] = {0x20, 0x01, 0x0d, 0xb9, [15] = 1};
    assert_true(config_cidrs_match(&c.proxy_trusted, AF_INET, a4));
    assert_true(config_cidrs_match(&c.proxy_trusted, AF_INET, b4)); /* 0.0.0.0/0 */
    assert_true(config_cidrs_match(&c.proxy_trusted, AF_INET6, m6)); /* ::ffff:10.1.0.9 is IPv4 */
    assert_true(config_cidrs_match(&c.proxy_trusted, AF_INET6, a6));
    assert_false(config_cidrs_match(&c.proxy_trusted, AF_INET6, b6));

    set_ok(&c, "proxy_trusted", "192.0.2.7, 10.1.128.0/17, 2001:db8::/33");
    uint8_t c4[4] = {10, 1, 127, 255}, d4[4] = {10, 1, 128, 0}, e4[4] = {192, 0, 2, 8};
    assert_false(config_cidrs_match(&c.proxy_trusted, AF_INET, c4));
    assert_true(config_cidrs_match(&c.proxy_trusted, AF_INET, d4));
    assert_false(config_cidrs_match(&c.proxy_trusted, AF_INET, e4));
    uint8_t f6[16] = {0x20, 0x01, 0x0d, 0xb8, 0x80}, g6[16] = {0x20, 0x01, 0x0d, 0xb8, 0x7f, 0xff};
    assert_false(config_cidrs_match(&c.proxy_trusted, AF_INET6, f6));
    assert_true(config_cidrs_match(&c.proxy_trusted, AF_INET6, g6));

    char dump[8192];
    config_dump(&c, dump, sizeof dump);
    assert_non_null(strstr(dump, "proxy_trusted = 192.0.2.7/32, 10.1.128.0/17, 2001:db8::/33\n"));
    set_ok(&c, "proxy_trusted", "");
    assert_int_equal(c.proxy_trusted.n, 0);
    assert_false(config_cidrs_match(&c.proxy_trusted, AF_INET, a4));
    config_free(&c);
}

/* config_key_same and config_key_copy: every key, against a value that
 * differs only in it (what a reload compares and keeps). */
static void test_key_same_and_copy(void **state)
{
    (void)state;
    size_t n = sizeof kv_cases / sizeof kv_cases[0];
    for (size_t i = 0; i < n; i++) {
        mx_config_t a, b;
        config_defaults(&a);
        config_defaults(&b);
        set_ok(&b, kv_cases[i].key, kv_cases[i].good);
        const config_key_t *k;
        for (size_t j = 0; (k = config_key_at(j)); j++) {
            bool same = config_key_same(&a, &b, k->name);
            if (same != (strcmp(k->name, kv_cases[i].key) != 0))
                fail_msg("after %s = %s: config_key_same(%s) is %d", kv_cases[i].key, kv_cases[i].good, k->name,
                         same);
        }
        if (strcmp(kv_cases[i].key, "relay_domains") == 0) {
            assert_int_equal(config_key_copy(&a, &b, "relay_domains"), -1);
        } else {
            assert_int_equal(config_key_copy(&a, &b, kv_cases[i].key), 0);
            assert_true(config_key_same(&a, &b, kv_cases[i].key));
            char *da = dump(&a), *db = dump(&b);
            assert_string_equal(da, db);
            free(da);
            free(db);
        }
        config_free(&a);
        config_free(&b);
    }
    mx_config_t a;
    config_defaults(&a);
    assert_false(config_key_same(&a, &a, "no_such_key"));
    assert_int_equal(config_key_copy(&a, &a, "no_such_key"), -1);
    config_free(&a);
}

/* --version: the version alone, before anything else is looked at. */
static void test_cli_version(void **state)
{
    (void)state;
    char err[512] = "";
    int rc;
    mx_config_t c;
    char *argv[] = {"mxgate", "--version", "--workers", "abc", NULL};
    char *out = cli_captured(&c, 4, argv, NULL, err, sizeof err, &rc);
    assert_int_equal(rc, CLI_VERSION);
    assert_string_equal(out, "mxgate " MXGATE_VERSION "\n");
    assert_string_equal(MXGATE_VERSION, "0.2.0");
    free(out);
    config_free(&c);
    char *bad[] = {"mxgate", "--version=1", NULL};
    assert_int_equal(cli_load(&c, 2, bad, NULL, err, sizeof err), CLI_ERROR);
    assert_err_has(err, "--version: takes no value");
    config_free(&c);
    char *help[] = {"mxgate", "--help", NULL};
    out = cli_captured(&c, 2, help, NULL, err, sizeof err, &rc);
    assert_non_null(strstr(out, "--version\n"));
    assert_non_null(strstr(out, "--print-config -n\n"));
    free(out);
    config_free(&c);
}

/* --print-config -n: only what a source set to other than the default,
 * each below a comment naming the file and line, the variable or the flag;
 * the output loads again to the same values. */
static void test_cli_print_set(void **state)
{
    (void)state;
    char path[64], err[512] = "", want[2048];
    temp_file(path, "\xEF\xBB\xBF# file\n"
                    "workers = 3\n"
                    "recipient_limit = 100\n"              /* the default: not shown */
                    "listen = 127.0.0.1:25,\n"
                    "  ; a comment between\n"
                    "\n"
                    "    [::1]:25\n"                        /* continues listen (line 4) */
                    "[mxgate]\n"
                    "Error-Limit: 7\n"
                    "data_timeout = 10m\n"                 /* 600 s: the default */
                    "hostname = file.example\n"
                    "message_size_limit = 1m\n");
    char *envp[] = {"MXGATE_WORKERS=5", "MXGATE_DOWNSTREAM=mail.example:25", "MXGATE_HOSTNAME=", NULL};
    char *argv[] = {"mxgate", "--print-config", "-n", "--config", path, "--error-limit=8",
                    "--message-size-limit", "10m", NULL};
    mx_config_t c;
    int rc;
    char *out = cli_captured(&c, 8, argv, envp, err, sizeof err, &rc);
    if (rc != CLI_PRINTED)
        fail_msg("rc %d: %s", rc, err);
    snprintf(want, sizeof want,
             "# mxgate " MXGATE_VERSION ": the keys set to other than their default, each below where it was set\n"
             "# %s, line 4\n"
             "listen = 127.0.0.1:25, [::1]:25\n"
             "# MXGATE_WORKERS\n"
             "workers = 5\n"
             "# --error-limit\n"
             "error_limit = 8\n"
             "# MXGATE_DOWNSTREAM\n"
             "downstream = mail.example:25\n",
             path);
    /* hostname: emptied by the environment, then filled from the system;
     * relay_domains filled in; message_size_limit set back to the default */
    assert_string_equal(out, want);
    mx_config_t d;
    config_defaults(&d);
    if (config_parse_ini(&d, out, err, sizeof err) != 0)
        fail_msg("output does not load: %s", err);
    assert_int_equal(d.workers, 5);
    assert_int_equal(d.error_limit, 8);
    assert_int_equal(d.nlisten, 2);
    assert_string_equal(d.downstream, "mail.example:25");
    config_free(&d);
    free(out);
    config_free(&c);

    /* Nothing set: the header line alone. -n only right after --print-config. */
    char *argv2[] = {"mxgate", "--print-config", "-n", NULL};
    out = cli_captured(&c, 3, argv2, NULL, err, sizeof err, &rc);
    assert_int_equal(rc, CLI_PRINTED);
    assert_true(strncmp(out, "# mxgate ", 9) == 0);
    assert_non_null(strchr(out, '\n'));
    assert_string_equal(strchr(out, '\n'), "\n"); /* one line */
    free(out);
    config_free(&c);
    char *argv3[] = {"mxgate", "-n", "--print-config", NULL};
    assert_int_equal(cli_load(&c, 3, argv3, NULL, err, sizeof err), CLI_ERROR);
    assert_err_has(err, "unexpected argument: -n");
    config_free(&c);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),       cmocka_unit_test(test_each_key),
        cmocka_unit_test(test_values_land),    cmocka_unit_test(test_unknown_and_missing),
        cmocka_unit_test(test_suffixes),       cmocka_unit_test(test_listen),
        cmocka_unit_test(test_relay_domains),  cmocka_unit_test(test_ini),
        cmocka_unit_test(test_ini_errors),     cmocka_unit_test(test_dump_round_trip),
        cmocka_unit_test(test_cli_precedence), cmocka_unit_test(test_cli_hostname),
        cmocka_unit_test(test_cli_errors),     cmocka_unit_test(test_cli_help_and_print),
        cmocka_unit_test(test_cidrs),          cmocka_unit_test(test_key_same_and_copy),
        cmocka_unit_test(test_cli_version),    cmocka_unit_test(test_cli_print_set),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

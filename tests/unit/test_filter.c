/*
 * test_filter.c - the filter chain (filters/): building it from the config,
 * each filter at its stages (relay, recipients, limits, spf), the replies
 * behind each refusal reason, and header folding.
 *
 * The filters are pure, so these tests give them facts and look at the
 * verdicts; the SPF filter's one effect (starting a check) goes through a
 * host hook that the tests record.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "reply.h"

#include "filter.c"
#include "limits.c"
#include "recipients.c"
#include "relay_domains.c"
#include "spf.c"
#include "dnsbl_filter.c"

static void set(mx_config_t *c, const char *k, const char *v)
{
    char err[200];
    if (config_set(c, k, v, err, sizeof err))
        fail_msg("%s = %s: %s", k, v, err);
}

static int started;
static void hook_start(void *ctx, const filter_facts_t *fx)
{
    (void)ctx;
    started++;
    fx->spf->status = SPF_PENDING;
}

typedef struct env {
    mx_config_t cfg;
    filter_chain_t ch;
    filter_host_t host;
    spf_state_t spf;
    filter_facts_t fx;
    smtp_path_t sender, rcpt;
    char hdr[4096];
} env_t;

static void path(smtp_path_t *p, const char *mailbox)
{
    memset(p, 0, sizeof *p);
    p->mailbox = slice_make(mailbox, strlen(mailbox));
    p->null = !*mailbox;
    const char *at = strrchr(mailbox, '@');
    if (at) {
        p->local = slice_make(mailbox, (size_t)(at - mailbox));
        p->domain = slice_make(at + 1, strlen(at + 1));
    } else {
        p->local = p->mailbox;
        p->postmaster = strcmp(mailbox, "postmaster") == 0;
    }
}

static env_t *env_new(const char *filters)
{
    env_t *e = calloc(1, sizeof *e);
    assert_non_null(e);
    config_defaults(&e->cfg);
    set(&e->cfg, "hostname", "mx.example.net");
    set(&e->cfg, "relay_domains", "example.com, example.org");
    set(&e->cfg, "filters", filters);
    char err[300];
    if (filter_chain_init(&e->ch, &e->cfg, err, sizeof err))
        fail_msg("chain: %s", err);
    e->host.spf_start = hook_start;
    static const uint8_t ip[16] = {192, 0, 2, 1};
    e->fx.cfg = &e->cfg;
    e->fx.host = &e->host;
    e->fx.family = AF_INET;
    e->fx.addr = ip;
    e->fx.helo = slice_make("client.example.org", 18);
    e->fx.spf = &e->spf;
    e->fx.messages = 1;
    e->fx.rcpts = 1;
    path(&e->sender, "alice@example.org");
    e->fx.sender = &e->sender;
    e->fx.rcpt = &e->rcpt;
    e->fx.hdr = e->hdr;
    e->fx.hdr_cap = sizeof e->hdr;
    started = 0;
    return e;
}

static void env_free(env_t *e)
{
    filter_chain_fini(&e->ch);
    spf_state_free(&e->spf);
    config_free(&e->cfg);
    free(e);
}

static enum filter_act rcpt(env_t *e, const char *mailbox, filter_verdict_t *v)
{
    path(&e->rcpt, mailbox);
    return filter_run(&e->ch, FS_RCPT, &e->fx, v);
}

static void test_chain_from_config(void **state)
{
    (void)state;
    mx_config_t c;
    filter_chain_t ch;
    char err[300];
    config_defaults(&c);
    assert_int_equal(filter_chain_init(&ch, &c, err, sizeof err), 0);
    assert_int_equal(ch.n, 3); /* limits, relay, recipients; size is the engine's */
    assert_string_equal(ch.f[0]->name, "limits");
    assert_false(ch.spf);
    filter_chain_fini(&ch);

    set(&c, "filters", "relay, spf");
    assert_int_equal(filter_chain_init(&ch, &c, err, sizeof err), 0);
    assert_true(ch.spf);
    assert_string_equal(ch.f[1]->name, "spf");
    filter_chain_fini(&ch);

    set(&c, "filters", "relay, dkim");
    assert_int_equal(filter_chain_init(&ch, &c, err, sizeof err), -1);
    assert_string_equal(err, "filters: unknown filter: dkim");
    set(&c, "filters", "spf, limits");
    assert_int_equal(filter_chain_init(&ch, &c, err, sizeof err), -1);
    assert_non_null(strstr(err, "open relay"));
    set(&c, "filters", "relay, spf, relay");
    assert_int_equal(filter_chain_init(&ch, &c, err, sizeof err), -1);
    assert_string_equal(err, "filters: relay is listed twice");
    config_free(&c);
}

static void test_relay(void **state)
{
    (void)state;
    env_t *e = env_new("relay");
    filter_verdict_t v;
    assert_int_equal(rcpt(e, "bob@example.com", &v), FA_ACCEPT);
    assert_int_equal(rcpt(e, "bob@EXAMPLE.org.", &v), FA_ACCEPT);
    assert_int_equal(rcpt(e, "postmaster", &v), FA_ACCEPT);
    assert_int_equal(rcpt(e, "bob@example.net", &v), FA_REJECT);
    assert_int_equal(v.code, 550);
    assert_string_equal(v.esc, "5.7.1");
    assert_string_equal(v.why, "relay");
    assert_int_equal(rcpt(e, "bob@sub.example.com", &v), FA_REJECT);
    env_free(e);
}

static char map_path[64];

static void write_map(const char *text)
{
    strcpy(map_path, "/tmp/mxgate-test-map-XXXXXX");
    int fd = mkstemp(map_path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

static void test_recipients(void **state)
{
    (void)state;
    write_map("# valid users\n"
              "alice@example.com\n"
              "  Bob@Example.COM   OK\n"
              "\n"
              "@example.org\n"
              "\"quoted user\"@example.com\n");
    env_t *e = env_new("relay");
    filter_chain_fini(&e->ch);
    set(&e->cfg, "recipient_map", map_path);
    set(&e->cfg, "filters", "relay, recipients");
    char err[300];
    if (filter_chain_init(&e->ch, &e->cfg, err, sizeof err))
        fail_msg("%s", err);
    filter_verdict_t v;
    assert_int_equal(rcpt(e, "alice@example.com", &v), FA_ACCEPT);
    assert_int_equal(rcpt(e, "ALICE@example.com", &v), FA_ACCEPT);
    assert_int_equal(rcpt(e, "bob@example.com", &v), FA_ACCEPT);
    assert_int_equal(rcpt(e, "anyone@example.org", &v), FA_ACCEPT); /* @domain: every user */
    assert_int_equal(rcpt(e, "\"quoted user\"@example.com", &v), FA_ACCEPT);
    assert_int_equal(rcpt(e, "postmaster@example.com", &v), FA_ACCEPT);
    assert_int_equal(rcpt(e, "postmaster", &v), FA_ACCEPT);
    assert_int_equal(rcpt(e, "carol@example.com", &v), FA_REJECT);
    assert_int_equal(v.code, 550);
    assert_string_equal(v.esc, "5.1.1");
    /* relay comes first: a foreign domain is a relay refusal, not an unknown user */
    assert_int_equal(rcpt(e, "alice@example.net", &v), FA_REJECT);
    assert_string_equal(v.esc, "5.7.1");
    env_free(e);
    unlink(map_path);

    mx_config_t c;
    filter_chain_t ch;
    config_defaults(&c);
    write_map("alice@example.com\nno-at-sign\n");
    set(&c, "recipient_map", map_path);
    assert_int_equal(filter_chain_init(&ch, &c, err, sizeof err), -1);
    assert_non_null(strstr(err, "line 2: expected user@domain"));
    unlink(map_path);
    assert_int_equal(filter_chain_init(&ch, &c, err, sizeof err), -1);
    assert_non_null(strstr(err, "No such file"));
    config_free(&c);

    /* Two chains at once, as during a reload: each answers by its own map,
     * and ending one leaves the other whole. */
    env_t *old = env_new("relay");
    filter_chain_fini(&old->ch);
    write_map("alice@example.com\n");
    set(&old->cfg, "recipient_map", map_path);
    set(&old->cfg, "filters", "relay, recipients");
    if (filter_chain_init(&old->ch, &old->cfg, err, sizeof err))
        fail_msg("%s", err);
    unlink(map_path);
    env_t *next = env_new("relay");
    filter_chain_fini(&next->ch);
    write_map("carol@example.com\n");
    set(&next->cfg, "recipient_map", map_path);
    set(&next->cfg, "filters", "relay, recipients");
    if (filter_chain_init(&next->ch, &next->cfg, err, sizeof err))
        fail_msg("%s", err);
    unlink(map_path);
    assert_int_equal(rcpt(old, "alice@example.com", &v), FA_ACCEPT);
    assert_int_equal(rcpt(old, "carol@example.com", &v), FA_REJECT);
    assert_int_equal(rcpt(next, "alice@example.com", &v), FA_REJECT);
    assert_int_equal(rcpt(next, "carol@example.com", &v), FA_ACCEPT);
    env_free(old);
    assert_int_equal(rcpt(next, "carol@example.com", &v), FA_ACCEPT);
    assert_int_equal(rcpt(next, "dave@example.com", &v), FA_REJECT);
    env_free(next);
}

static void test_limits(void **state)
{
    (void)state;
    env_t *e = env_new("limits, relay");
    filter_verdict_t v;
    set(&e->cfg, "max_connections", "10");
    set(&e->cfg, "max_connections_per_ip", "2");
    e->fx.conn_total = 10, e->fx.conn_per_ip = 2;
    assert_int_equal(filter_run(&e->ch, FS_CONNECT, &e->fx, &v), FA_ACCEPT);
    e->fx.conn_per_ip = 3;
    assert_int_equal(filter_run(&e->ch, FS_CONNECT, &e->fx, &v), FA_TEMPFAIL);
    assert_int_equal(v.code, 421);
    assert_string_equal(v.why, "max_connections_per_ip");
    e->fx.conn_total = 11;
    assert_int_equal(filter_run(&e->ch, FS_CONNECT, &e->fx, &v), FA_TEMPFAIL);
    assert_string_equal(v.why, "max_connections");

    assert_int_equal(filter_run(&e->ch, FS_MAIL, &e->fx, &v), FA_ACCEPT); /* no limit by default */
    set(&e->cfg, "max_messages_per_connection", "3");
    e->fx.messages = 3;
    assert_int_equal(filter_run(&e->ch, FS_MAIL, &e->fx, &v), FA_ACCEPT);
    e->fx.messages = 4;
    assert_int_equal(filter_run(&e->ch, FS_MAIL, &e->fx, &v), FA_TEMPFAIL);
    assert_int_equal(v.code, 421);
    assert_string_equal(v.esc, "4.7.0");

    set(&e->cfg, "max_recipients_per_connection", "5");
    e->fx.rcpts = 5;
    assert_int_equal(rcpt(e, "bob@example.com", &v), FA_ACCEPT);
    e->fx.rcpts = 6;
    assert_int_equal(rcpt(e, "bob@example.com", &v), FA_TEMPFAIL);
    assert_int_equal(v.code, 452);
    assert_string_equal(v.esc, "4.5.3");
    env_free(e);
}

static void spf_done(env_t *e, unsigned result, const char *comment)
{
    const char *rv = "pass (mx.example.net: domain of alice@example.org designates 192.0.2.1 as permitted sender) "
                     "client-ip=192.0.2.1; envelope-from=alice@example.org; helo=client.example.org;";
    assert_true(spf_set_result(&e->spf, result, rv, strlen(rv), comment, strlen(comment)));
}

static void test_spf_waits_at_rcpt(void **state)
{
    (void)state;
    env_t *e = env_new("relay, spf");
    filter_verdict_t v;
    assert_int_equal(filter_run(&e->ch, FS_MAIL, &e->fx, &v), FA_ACCEPT);
    assert_int_equal(started, 1);
    assert_int_equal(e->spf.status, SPF_PENDING);
    /* a relay refusal does not wait for SPF; an acceptable recipient does */
    assert_int_equal(rcpt(e, "bob@example.net", &v), FA_REJECT);
    assert_int_equal(rcpt(e, "bob@example.com", &v), FA_WAIT);
    spf_done(e, SPFR_FAIL, "Please see https://example.org/spf");
    assert_int_equal(rcpt(e, "bob@example.com", &v), FA_REJECT);
    assert_int_equal(v.code, 550);
    assert_string_equal(v.esc, "5.7.23");
    assert_string_equal(v.text, "Error: SPF fail: Please see https://example.org/spf");
    assert_string_equal(v.why, "spf");

    spf_done(e, SPFR_TEMPERROR, "");
    assert_int_equal(rcpt(e, "bob@example.com", &v), FA_TEMPFAIL);
    assert_int_equal(v.code, 451);
    assert_string_equal(v.esc, "4.4.3");
    spf_done(e, SPFR_SOFTFAIL, "");
    assert_int_equal(rcpt(e, "bob@example.com", &v), FA_ACCEPT);
    spf_done(e, SPFR_PERMERROR, "");
    assert_int_equal(rcpt(e, "bob@example.com", &v), FA_ACCEPT);
    set(&e->cfg, "spf_permerror", "reject");
    assert_int_equal(rcpt(e, "bob@example.com", &v), FA_REJECT);
    assert_string_equal(v.esc, "5.7.24");
    set(&e->cfg, "spf_permerror", "tempfail");
    assert_int_equal(rcpt(e, "bob@example.com", &v), FA_TEMPFAIL);
    assert_string_equal(v.esc, "4.7.24");
    spf_done(e, SPFR_FAIL, "");
    set(&e->cfg, "spf_fail", "tempfail");
    assert_int_equal(rcpt(e, "bob@example.com", &v), FA_TEMPFAIL);
    assert_string_equal(v.esc, "4.7.23");
    set(&e->cfg, "spf_fail", "accept");
    assert_int_equal(rcpt(e, "bob@example.com", &v), FA_ACCEPT);
    spf_done(e, SPFR_NONE, "");
    set(&e->cfg, "spf_none", "reject");
    assert_int_equal(rcpt(e, "bob@example.com", &v), FA_REJECT);
    assert_string_equal(v.esc, "5.7.23");
    env_free(e);
}

/* Every header line ends in CRLF, continuation lines start with a tab, and
 * no line is longer than 78 octets when the value has room to fold. */
static void assert_folded(const char *h, size_t n)
{
    size_t start = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        if (h[i] == '\r') {
            assert_int_equal(h[i + 1], '\n');
            assert_true(i - start <= 78);
            start = i + 2;
            i++;
            if (start < n && h[start] != '\t')
                assert_true(h[start] >= 'A' && h[start] <= 'Z'); /* a new header */
        } else {
            assert_true(h[i] != '\n');
        }
    }
    assert_int_equal(h[n - 2], '\r');
    assert_int_equal(h[n - 1], '\n');
}

/* The header block with every fold (CRLF TAB) undone. */
static const char *unfolded(const env_t *e)
{
    static char out[4096];
    size_t o = 0;
    for (size_t i = 0; i < e->fx.hdr_len; i++) {
        if (e->hdr[i] == '\r' && i + 2 < e->fx.hdr_len && e->hdr[i + 2] == '\t') {
            out[o++] = ' ';
            i += 2;
            continue;
        }
        out[o++] = e->hdr[i];
    }
    out[o] = '\0';
    return out;
}

static void test_spf_headers(void **state)
{
    (void)state;
    env_t *e = env_new("relay, spf");
    filter_verdict_t v;
    e->spf.status = SPF_PENDING;
    assert_int_equal(filter_run(&e->ch, FS_DATA, &e->fx, &v), FA_WAIT); /* the headers need the result */
    spf_done(e, SPFR_PASS, "");
    assert_int_equal(filter_run(&e->ch, FS_DATA, &e->fx, &v), FA_TAG);
    assert_true(strncmp(e->hdr, "Received-SPF: pass (mx.example.net: domain of", 45) == 0);
    assert_non_null(strstr(unfolded(e), "\r\nAuthentication-Results: mx.example.net; spf=pass "
                                   "smtp.mailfrom=alice@example.org\r\n"));
    assert_folded(e->hdr, e->fx.hdr_len);

    /* the null sender: the HELO identity was checked */
    e->fx.hdr_len = 0;
    path(&e->sender, "");
    spf_done(e, SPFR_NEUTRAL, "");
    assert_int_equal(filter_run(&e->ch, FS_DATA, &e->fx, &v), FA_TAG);
    assert_non_null(strstr(unfolded(e), "Authentication-Results: mx.example.net; spf=neutral "
                                   "smtp.helo=client.example.org\r\n"));

    /* spf_stage = data: RCPT goes on while the check runs; DATA refuses */
    set(&e->cfg, "spf_stage", "data");
    e->spf.status = SPF_PENDING;
    assert_int_equal(rcpt(e, "bob@example.com", &v), FA_ACCEPT);
    spf_done(e, SPFR_FAIL, "");
    assert_int_equal(rcpt(e, "bob@example.com", &v), FA_ACCEPT);
    e->fx.hdr_len = 0;
    assert_int_equal(filter_run(&e->ch, FS_DATA, &e->fx, &v), FA_REJECT);
    assert_int_equal(v.code, 550);
    assert_int_equal(e->fx.hdr_len, 0);
    env_free(e);
}

/* The chain again, after keys it reads at init were set. */
static void rechain(env_t *e, const char *filters)
{
    char err[300];
    filter_chain_fini(&e->ch);
    set(&e->cfg, "filters", filters);
    if (filter_chain_init(&e->ch, &e->cfg, err, sizeof err))
        fail_msg("chain: %s", err);
}

static void test_dnsbl(void **state)
{
    (void)state;
    env_t *e = env_new("relay");
    set(&e->cfg, "dnsbl_sites", "zen.example*2, bl.example, wl.example*-2");
    set(&e->cfg, "dnsbl_threshold", "2");
    rechain(e, "relay, dnsbl");
    assert_non_null(e->ch.dnsbl);
    assert_int_equal(e->ch.dnsbl->n, 3);
    filter_verdict_t v;
    dnsbl_state_t d = { DNSBL_PENDING, 0, 0 };
    e->fx.dnsbl = &d;
    /* at RCPT (the default): the lookups are waited for, postmaster is not */
    assert_int_equal(filter_run(&e->ch, FS_CONNECT, &e->fx, &v), FA_ACCEPT);
    assert_int_equal(rcpt(e, "bob@example.com", &v), FA_WAIT);
    assert_int_equal(rcpt(e, "postmaster@example.com", &v), FA_ACCEPT);
    assert_int_equal(rcpt(e, "postmaster", &v), FA_ACCEPT);
    d = (dnsbl_state_t){ DNSBL_DONE, 1, 1u << 1 };
    assert_int_equal(rcpt(e, "bob@example.com", &v), FA_ACCEPT); /* 1 < 2 */
    d = (dnsbl_state_t){ DNSBL_DONE, 3, 1u << 0 | 1u << 1 };
    assert_int_equal(rcpt(e, "bob@example.com", &v), FA_REJECT);
    assert_int_equal(v.code, 554);
    assert_string_equal(v.esc, "5.7.1");
    assert_string_equal(v.text, "Service unavailable; client [192.0.2.1] blocked using zen.example");
    assert_string_equal(v.why, "dnsbl");
    assert_int_equal(rcpt(e, "bob@example.net", &v), FA_REJECT); /* relay's own refusal comes first */
    assert_string_equal(v.why, "relay");
    /* before the greeting instead */
    set(&e->cfg, "dnsbl_stage", "greeting");
    assert_int_equal(rcpt(e, "bob@example.com", &v), FA_ACCEPT);
    assert_int_equal(filter_run(&e->ch, FS_CONNECT, &e->fx, &v), FA_REJECT);
    d.status = DNSBL_PENDING;
    assert_int_equal(filter_run(&e->ch, FS_CONNECT, &e->fx, &v), FA_WAIT);
    /* tag: a header at DATA, after the lookups */
    set(&e->cfg, "dnsbl_action", "tag");
    assert_int_equal(filter_run(&e->ch, FS_CONNECT, &e->fx, &v), FA_ACCEPT);
    assert_int_equal(filter_run(&e->ch, FS_DATA, &e->fx, &v), FA_WAIT);
    d.status = DNSBL_DONE;
    assert_int_equal(filter_run(&e->ch, FS_DATA, &e->fx, &v), FA_TAG);
    e->hdr[e->fx.hdr_len] = '\0';
    assert_string_equal(e->hdr, "X-Mxgate-DNSBL: score=3 lists=zen.example,bl.example\r\n");
    /* ignore: nothing but the log */
    set(&e->cfg, "dnsbl_action", "ignore");
    e->fx.hdr_len = 0;
    assert_int_equal(filter_run(&e->ch, FS_DATA, &e->fx, &v), FA_ACCEPT);
    assert_int_equal(filter_run(&e->ch, FS_CONNECT, &e->fx, &v), FA_ACCEPT);
    /* no lookups asked (facts without them): no opinion */
    e->fx.dnsbl = NULL;
    set(&e->cfg, "dnsbl_action", "reject");
    assert_int_equal(filter_run(&e->ch, FS_CONNECT, &e->fx, &v), FA_ACCEPT);
    /* a chain with dnsbl needs lists, and lists that parse */
    char err[300];
    filter_chain_fini(&e->ch);
    set(&e->cfg, "dnsbl_sites", "");
    assert_int_equal(filter_chain_init(&e->ch, &e->cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "dnsbl_sites names no list"));
    set(&e->cfg, "dnsbl_sites", "bl.example=127.0.0.[9..2]");
    assert_int_equal(filter_chain_init(&e->ch, &e->cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "dnsbl_sites:"));
    set(&e->cfg, "filters", "relay");
    assert_int_equal(filter_chain_init(&e->ch, &e->cfg, err, sizeof err), 0);
    env_free(e);
}

static void test_fold_and_room(void **state)
{
    (void)state;
    char buf[2048];
    filter_facts_t fx = {.hdr = buf, .hdr_cap = sizeof buf};
    char value[900];
    for (size_t i = 0; i < sizeof value - 1; i++)
        value[i] = i % 9 == 8 ? ' ' : (char)('a' + i % 26);
    value[sizeof value - 1] = '\0';
    assert_true(filter_add_header(&fx, "X-Long", value, strlen(value)));
    assert_folded(buf, fx.hdr_len);
    /* unfolding gives the value back */
    char unf[2048];
    size_t u = 0;
    for (size_t i = strlen("X-Long: "); i < fx.hdr_len - 2; i++) {
        if (buf[i] == '\r') {
            i += 2; /* CRLF TAB -> one space */
            unf[u++] = ' ';
            continue;
        }
        unf[u++] = buf[i];
    }
    unf[u] = '\0';
    assert_string_equal(unf, value);
    /* a word longer than a line is cut, never a line over 998 */
    char word[1500];
    memset(word, 'x', sizeof word - 1);
    word[sizeof word - 1] = '\0';
    fx.hdr_len = 0;
    assert_true(filter_add_header(&fx, "X-Word", word, strlen(word)));
    assert_true(fx.hdr_len <= 998);
    /* no room: nothing written */
    fx.hdr_len = 0;
    fx.hdr_cap = 20;
    assert_false(filter_add_header(&fx, "X-Long", value, strlen(value)));
    assert_int_equal(fx.hdr_len, 0);
}

/* Every refusal a filter gives is a reply a client can act on: a 4xx or
 * 5xx with an enhanced code of the same class, a text, and a name for the
 * log. */
static void check_refusal(const filter_verdict_t *v)
{
    assert_true(v->code >= 400 && v->code < 600);
    assert_non_null(v->esc);
    assert_true(reply_esc_valid(v->esc, strlen(v->esc)));
    assert_int_equal(v->esc[0] - '0', v->code / 100);
    assert_non_null(v->text);
    assert_non_null(v->why);
    assert_true(v->act == FA_REJECT ? v->code >= 500 : v->code < 500);
}

static void test_refusals_carry_replies(void **state)
{
    (void)state;
    env_t *e = env_new("limits,relay");
    filter_verdict_t v;
    set(&e->cfg, "max_connections", "1");
    set(&e->cfg, "max_connections_per_ip", "1");
    set(&e->cfg, "max_messages_per_connection", "1");
    set(&e->cfg, "max_recipients_per_connection", "1");
    e->fx.conn_total = 2, e->fx.conn_per_ip = 1;
    assert_int_equal(filter_run(&e->ch, FS_CONNECT, &e->fx, &v), FA_TEMPFAIL);
    check_refusal(&v);
    e->fx.conn_total = 1, e->fx.conn_per_ip = 2;
    assert_int_equal(filter_run(&e->ch, FS_CONNECT, &e->fx, &v), FA_TEMPFAIL);
    check_refusal(&v);
    e->fx.messages = 2;
    assert_int_equal(filter_run(&e->ch, FS_MAIL, &e->fx, &v), FA_TEMPFAIL);
    check_refusal(&v);
    e->fx.rcpts = 2;
    assert_int_equal(rcpt(e, "bob@example.com", &v), FA_TEMPFAIL);
    check_refusal(&v);
    e->fx.rcpts = 1;
    assert_int_equal(rcpt(e, "bob@example.net", &v), FA_REJECT);
    check_refusal(&v);
    env_free(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chain_from_config), cmocka_unit_test(test_relay),
        cmocka_unit_test(test_recipients),        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_spf_waits_at_rcpt), cmocka_unit_test(test_spf_headers),
        cmocka_unit_test(test_fold_and_room),     cmocka_unit_test(test_refusals_carry_replies),
        cmocka_unit_test(test_dnsbl),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

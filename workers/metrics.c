/*
 * metrics.c - the Prometheus text format of the workers' metrics (see
 * metrics.h). Names follow Prometheus's conventions: a `mxgate_` prefix,
 * `_total` for counters, base units (seconds, bytes), labels for the
 * dimension a counter is split by.
 */
#include "metrics.h"

#include "rspamd.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

const double m_latency_bounds[M_BUCKETS] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30 };
const double m_duration_bounds[M_BUCKETS] = { 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 3600 };

void m_observe(mhist_t *h, const double *bounds, uint64_t us)
{
    double s = (double)us / 1e6;
    size_t i = 0;
    while (i < M_BUCKETS && s > bounds[i])
        i++;
    m_inc(&h->bucket[i]);
    m_add(&h->sum_us, us);
    m_inc(&h->count);
}

typedef struct out {
    char *buf;
    size_t cap, len;
} out_t;

__attribute__((format(printf, 2, 3))) static void put(out_t *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->len < o->cap ? o->buf + o->len : NULL, o->len < o->cap ? o->cap - o->len : 0, fmt, ap);
    va_end(ap);
    if (n > 0)
        o->len += (size_t)n;
}

/* The sum over workers of the counter at byte offset `off` in metrics_t. */
static uint64_t sum(const metrics_t *const *w, int n, size_t off)
{
    uint64_t s = 0;
    for (int i = 0; i < n; i++)
        s += m_get((const mcount_t *)(const void *)((const char *)w[i] + off));
    return s;
}

#define SUM(field) sum(w, n, offsetof(metrics_t, field))

static void head(out_t *o, const char *name, const char *type, const char *help)
{
    put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void one(out_t *o, const char *name, const char *type, const char *help, uint64_t v)
{
    head(o, name, type, help);
    put(o, "%s %llu\n", name, (unsigned long long)v);
}

/* A counter split by one label: values at offsets base + i * step. */
static void labelled(out_t *o, const metrics_t *const *w, int n, const char *name, const char *help,
                     const char *label, const char *const *values, size_t count, size_t base, bool gauge)
{
    head(o, name, gauge ? "gauge" : "counter", help);
    for (size_t i = 0; i < count; i++)
        if (values[i])
            put(o, "%s{%s=\"%s\"} %llu\n", name, label, values[i],
                (unsigned long long)sum(w, n, base + i * sizeof(mcount_t)));
}

static void histogram(out_t *o, const metrics_t *const *w, int n, const char *name, const char *help, size_t base,
                      const double *bounds)
{
    head(o, name, "histogram", help);
    uint64_t cum = 0;
    for (size_t i = 0; i <= M_BUCKETS; i++) {
        cum += sum(w, n, base + offsetof(mhist_t, bucket) + i * sizeof(mcount_t));
        if (i < M_BUCKETS)
            put(o, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i], (unsigned long long)cum);
        else
            put(o, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    }
    put(o, "%s_sum %.6f\n", name, (double)sum(w, n, base + offsetof(mhist_t, sum_us)) / 1e6);
    put(o, "%s_count %llu\n", name, (unsigned long long)sum(w, n, base + offsetof(mhist_t, count)));
}

const char *const m_content_names[MCS_COUNT] = { "no_action",   "greylist", "add_header", "rewrite_subject",
                                                 "soft_reject", "reject",   "error" };

size_t metrics_render(char *buf, size_t cap, const metrics_t *const *w, int n, const proc_metrics_t *proc)
{
    static const char *const refused[MR_COUNT] = { "max_connections", "max_connections_per_ip", "filter", "proxy",
                                                   "early_talker", "rate_connections" };
    static const char *const tx_end[M_TX_END_COUNT] = { NULL,     "data",          "refused", "rejected",
                                                        "rset",   "helo",          "quit",    "client_closed",
                                                        "timeout", "drain",        "error" };
    static const char *const outcome[MO_COUNT] = { "accepted", "deferred", "refused" };
    static const char *const classes[6] = { NULL, NULL, "2xx", "3xx", "4xx", "5xx" };
    static const char *const bp[MB_COUNT] = { "client_slow", "downstream_slow", "held_buffers", "no_buffers" };
    static const char *const tmo[MT_COUNT] = { "command", "data", "data_rate", "proxy", "downstream", "spf",
                                                  "tls_handshake" };
    static const char *const tls_hs[MTLS_COUNT] = { "ok", "failed", "timeout", "refused" };
    static const char *const ds_tls[MDT_COUNT] = { "verified", "unverified", "plaintext", "failed" };
    static const char *const proxy[MP_COUNT] = { "v1", "v2", "local" };
    static const char *const proxy_err[MPE_COUNT] = {
        NULL,          "not_proxy",      "bad_v1_syntax",  "bad_address",       "bad_port",
        "v1_too_long", "bad_v2_version", "bad_v2_command", "unsupported_family", "v2_too_short",
        "v2_oversized", "bad_v2_tlv",    "timeout",        "closed",             "untrusted" };
    static const char *const spf[7] = { "none", "neutral", "pass", "fail", "softfail", "temperror", "permerror" };
    out_t o = { buf, cap, 0 };
    if (cap)
        buf[0] = '\0';
    one(&o, "mxgate_workers", "gauge", "Worker threads.", (uint64_t)n);
    one(&o, "mxgate_connections_accepted_total", "counter", "Client connections accepted.",
        SUM(connections_accepted));
    one(&o, "mxgate_connections_open", "gauge", "Client connections open.", SUM(connections_open));
    labelled(&o, w, n, "mxgate_connections_refused_total", "Client connections refused before the greeting.",
             "reason", refused, MR_COUNT, offsetof(metrics_t, refused), false);
    labelled(&o, w, n, "mxgate_transactions_total", "Transactions (MAIL to their end), by how they ended.", "end",
             tx_end, M_TX_END_COUNT, offsetof(metrics_t, transactions), false);
    labelled(&o, w, n, "mxgate_messages_total", "Messages whose end of data was answered, by the reply.",
             "outcome", outcome, MO_COUNT, offsetof(metrics_t, messages), false);
    labelled(&o, w, n, "mxgate_replies_total", "Replies sent to clients, by class.", "class", classes, 6,
             offsetof(metrics_t, replies), false);
    one(&o, "mxgate_relayed_bytes_total", "counter", "Message bytes (wire form, trace headers included) sent downstream.",
        SUM(relayed_bytes));
    one(&o, "mxgate_downstream_connections_open", "gauge", "Downstream connections open.", SUM(ds_open));
    one(&o, "mxgate_downstream_connections_busy", "gauge", "Downstream connections leased to a transaction.",
        SUM(ds_busy));
    one(&o, "mxgate_downstream_connections_idle", "gauge", "Downstream connections ready in the pool.", SUM(ds_idle));
    one(&o, "mxgate_downstream_queue_length", "gauge", "Transactions waiting for a downstream connection.",
        SUM(ds_queue));
    one(&o, "mxgate_downstream_reachable_workers", "gauge",
        "Workers whose last attempt reached the downstream (0 while it is down).", SUM(ds_reachable));
    one(&o, "mxgate_downstream_connects_total", "counter", "Downstream connections opened.", SUM(ds_connects));
    one(&o, "mxgate_downstream_connect_failures_total", "counter", "Downstream connects that failed.",
        SUM(ds_connect_failures));
    one(&o, "mxgate_downstream_failures_total", "counter",
        "Downstream connections that failed (closed, reset, timed out, garbled).", SUM(ds_failures));
    labelled(&o, w, n, "mxgate_downstream_replies_total", "Replies from the downstream, by class.", "class", classes, 6,
             offsetof(metrics_t, ds_replies), false);
    labelled(&o, w, n, "mxgate_spf_checks_total", "SPF checks, by result.", "result", spf, 7,
             offsetof(metrics_t, spf_checks), false);
    one(&o, "mxgate_spf_cache_hits_total", "counter", "SPF checks answered from a worker's cache.",
        SUM(spf_cache_hits));
    one(&o, "mxgate_spf_helper_restarts_total", "counter", "SPF helper processes restarted.",
        m_get(&proc->spf_helper_restarts));
    labelled(&o, w, n, "mxgate_backpressure_events_total", "Times a session stopped reading, by cause.", "cause", bp,
             MB_COUNT, offsetof(metrics_t, backpressure), false);
    labelled(&o, w, n, "mxgate_timeouts_total", "Timeouts, by what waited.", "kind", tmo, MT_COUNT,
             offsetof(metrics_t, timeouts), false);
    labelled(&o, w, n, "mxgate_proxy_headers_total", "PROXY protocol headers accepted, by kind.", "kind", proxy,
             MP_COUNT, offsetof(metrics_t, proxy), false);
    labelled(&o, w, n, "mxgate_proxy_errors_total", "PROXY protocol headers refused (the connection closed), by error.",
             "error", proxy_err, MPE_COUNT, offsetof(metrics_t, proxy_errors), false);
    labelled(&o, w, n, "mxgate_tls_handshakes_total", "STARTTLS handshakes, by how they ended.", "result", tls_hs,
             MTLS_COUNT, offsetof(metrics_t, tls_handshakes), false);
    one(&o, "mxgate_tls_resumed_total", "counter", "STARTTLS handshakes that resumed a session.", SUM(tls_resumed));
    labelled(&o, w, n, "mxgate_downstream_tls_total",
             "Downstream connections that wanted TLS, by the outcome (the certificate verified or not, plaintext, failed).",
             "result", ds_tls, MDT_COUNT, offsetof(metrics_t, ds_tls), false);
    one(&o, "mxgate_downstream_tls_resumed_total", "counter", "Downstream TLS handshakes that resumed a session.",
        SUM(ds_tls_resumed));
    static const char *const dnsbl_res[MDL_COUNT] = { "clean", "listed", "timeout", "pass_cache" };
    labelled(&o, w, n, "mxgate_dnsbl_lookups_total", "Clients looked up on the DNSBL sites, by outcome.", "result",
             dnsbl_res, MDL_COUNT, offsetof(metrics_t, dnsbl_lookups), false);
    one(&o, "mxgate_dnsbl_errors_total", "counter", "DNSBL queries that failed (they do not count).",
        SUM(dnsbl_errors));
    one(&o, "mxgate_dnsbl_cache_hits_total", "counter",
        "DNSBL list queries answered from the worker's cache (within the answer's TTL).", SUM(dnsbl_cache_hits));
    one(&o, "mxgate_dnsbl_refused_total", "counter", "Commands or connections refused for a DNSBL score.",
        SUM(dnsbl_refused));
    static const char *const ptest[SMTP_V_COUNT] = { "pipelining", "non_smtp_command", "bare_newline" };
    labelled(&o, w, n, "mxgate_protocol_violations_total",
             "Sessions that failed a protocol test (postscreen's), by test, whatever the action.", "test", ptest,
             SMTP_V_COUNT, offsetof(metrics_t, protocol_violations), false);
    static const char *const fleet_res[MFL_COUNT] = { "taken", "over", "error" };
    one(&o, "mxgate_rate_redis_up", "gauge", "Workers connected to the Redis that keeps the fleet's rate limits.",
        SUM(fleet_up));
    labelled(&o, w, n, "mxgate_rate_redis_replies_total",
             "Redis's answers to rate updates: the token taken, the fleet over its rate, or an error.", "result",
             fleet_res, MFL_COUNT, offsetof(metrics_t, fleet_replies), false);
    one(&o, "mxgate_rate_redis_failopen_total", "counter",
        "Rate events decided by this instance's counts alone because Redis was down, slow or backed up.",
        SUM(fleet_failopen));
    one(&o, "mxgate_rate_redis_disconnects_total", "counter",
        "Redis connections that failed, closed or timed out (each is retried with backoff).", SUM(fleet_disconnects));
    static const char *const content_err[MCE_COUNT] = { "connect", "timeout", "io", "http", "response", "request" };
    static const char *const content_fb[2] = { "tempfail", "accept" };
    labelled(&o, w, n, "mxgate_content_scans_total",
             "Messages scanned by the content stage, by rspamd's action, or error (the fallback decided).", "result",
             m_content_names, MCS_COUNT, offsetof(metrics_t, content_scans), false);
    labelled(&o, w, n, "mxgate_content_errors_total",
             "Scans that failed: connect, timeout, io, http (an error status), response (unreadable), request "
             "(a value that cannot be sent).",
             "reason", content_err, MCE_COUNT, offsetof(metrics_t, content_errors), false);
    labelled(&o, w, n, "mxgate_content_fallback_total", "Failed scans, by what content_fallback did with the message.",
             "action", content_fb, 2, offsetof(metrics_t, content_fallback), false);
    static const char *const auth_m[M_AUTH_METHODS] = { "dkim", "dmarc", "arc" };
    head(&o, "mxgate_content_auth_total", "counter", "DKIM, DMARC and ARC results rspamd reported, by method and result.");
    for (size_t i = 0; i < M_AUTH_METHODS; i++)
        for (size_t j = 0; j < M_AUTH_RESULTS; j++)
            put(&o, "mxgate_content_auth_total{method=\"%s\",result=\"%s\"} %llu\n", auth_m[i],
                rspamd_auth_name((rspamd_auth_t)(j + 1)),
                (unsigned long long)sum(w, n, offsetof(metrics_t, content_auth) + (i * M_AUTH_RESULTS + j) * sizeof(mcount_t)));
    one(&o, "mxgate_content_held_bytes", "gauge", "Octets of messages held for the content scanner.",
        SUM(content_held));
    one(&o, "mxgate_content_memory_full_total", "counter",
        "Messages refused 452 4.3.1 because content_memory_limit and content_spill_limit were reached.",
        SUM(content_memory_full));
    one(&o, "mxgate_content_spilled_bytes", "gauge",
        "Octets of messages held for the content scanner in files under spool_dir.", SUM(content_spilled));
    one(&o, "mxgate_content_spills_total", "counter",
        "Messages moved to a file under spool_dir because content_memory_limit was reached.", SUM(content_spills));
    histogram(&o, w, n, "mxgate_content_scan_seconds", "Content scans, from the request's start to the verdict.",
              offsetof(metrics_t, content_latency), m_latency_bounds);
    static const char *const spool_res[MSR_COUNT] = { "delivered", "deferred", "bounced", "expired", "dsn" };
    one(&o, "mxgate_spool_messages", "gauge", "Messages in the spool not yet delivered or returned.",
        SUM(spool_messages));
    one(&o, "mxgate_spool_bytes", "gauge", "Octets of those messages' records.", SUM(spool_bytes));
    uint64_t oldest = 0;
    for (int i = 0; i < n; i++) {
        uint64_t t = m_get(&w[i]->spool_oldest_ms);
        if (t && (!oldest || t < oldest))
            oldest = t;
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    uint64_t now_ms = (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000;
    one(&o, "mxgate_spool_oldest_age_seconds", "gauge", "Age of the oldest message in the spool (0: empty).",
        oldest && now_ms > oldest ? (now_ms - oldest) / 1000 : 0);
    one(&o, "mxgate_spool_fsyncs_total", "counter", "Group commits to the spool, one fsync each.", SUM(spool_fsyncs));
    one(&o, "mxgate_spool_written_bytes_total", "counter", "Octets written to spool segments.", SUM(spool_written));
    one(&o, "mxgate_spool_write_failures_total", "counter", "Spool writes or fsyncs that failed.",
        SUM(spool_write_failures));
    one(&o, "mxgate_spool_fallbacks_total", "counter",
        "relay-then-spool transactions spooled because the downstream could not take them.", SUM(spool_fallbacks));
    labelled(&o, w, n, "mxgate_spool_deliveries_total",
             "Delivery attempts from the spool, by result, and the DSNs made (result=\"dsn\").", "result", spool_res,
             MSR_COUNT, offsetof(metrics_t, spool_results), false);
    head(&o, "mxgate_config_reloads_total", "counter", "Configuration reloads (SIGHUP), by result.");
    put(&o, "mxgate_config_reloads_total{result=\"ok\"} %llu\n", (unsigned long long)m_get(&proc->reloads_ok));
    put(&o, "mxgate_config_reloads_total{result=\"failed\"} %llu\n", (unsigned long long)m_get(&proc->reloads_failed));
    one(&o, "mxgate_draining", "gauge", "1 once a shutdown has begun.", m_get(&proc->draining));
    one(&o, "mxgate_tls_ktls", "gauge", "1 when the kernel carries the TLS record layer (kTLS), 0 for user-space TLS.",
        m_get(&proc->tls_ktls));
    histogram(&o, w, n, "mxgate_relay_latency_seconds", "From the end of data sent downstream to its reply.",
              offsetof(metrics_t, relay_latency), m_latency_bounds);
    histogram(&o, w, n, "mxgate_session_duration_seconds", "Client sessions, from accept to close.",
              offsetof(metrics_t, session_duration), m_duration_bounds);
    return o.len;
}

/*
 * limits.c - per-client limits: connections (all workers, and per client
 * address) at connect, messages and recipients per connection, and per
 * client address per minute (the host keeps the counts: workers/rate.h).
 * Over a limit the client hears a 4xx: it may come back later, or use
 * another connection.
 */
#include "filter.h"

static enum filter_act limits_connect(const filter_facts_t *fx, filter_verdict_t *v)
{
    const mx_config_t *c = fx->cfg;
    if (c->max_connections && fx->conn_total > c->max_connections) {
        return filter_refuse(v, FA_TEMPFAIL, 421, "4.7.0", "Error: too many connections, try again later",
                             "max_connections");
    }
    if (c->max_connections_per_ip && fx->conn_per_ip > c->max_connections_per_ip) {
        return filter_refuse(v, FA_TEMPFAIL, 421, "4.7.0", "Error: too many connections from your address",
                             "max_connections_per_ip");
    }
    if (fx->rate_over & FILTER_RATE_CONN) {
        return filter_refuse(v, FA_TEMPFAIL, 421, "4.7.0",
                             "Error: too many connections from your address per minute, try again later",
                             "rate_connections");
    }
    return FA_ACCEPT;
}

static enum filter_act limits_mail(const filter_facts_t *fx, filter_verdict_t *v)
{
    uint32_t max = fx->cfg->max_messages_per_connection;
    if (max && fx->messages > max) {
        return filter_refuse(v, FA_TEMPFAIL, 421, "4.7.0", "Error: too many messages in one connection, reconnect",
                             "max_messages_per_connection");
    }
    if (fx->rate_over & FILTER_RATE_MSG) {
        return filter_refuse(v, FA_TEMPFAIL, 450, "4.7.1",
                             "Error: too many messages from your address per minute, try again later",
                             "rate_messages");
    }
    return FA_ACCEPT;
}

static enum filter_act limits_rcpt(const filter_facts_t *fx, filter_verdict_t *v)
{
    uint32_t max = fx->cfg->max_recipients_per_connection;
    if (max && fx->rcpts > max) {
        return filter_refuse(v, FA_TEMPFAIL, 452, "4.5.3", "Error: too many recipients in one connection",
                             "max_recipients_per_connection");
    }
    if (fx->rate_over & FILTER_RATE_RCPT) {
        return filter_refuse(v, FA_TEMPFAIL, 450, "4.7.1",
                             "Error: too many recipients from your address per minute, try again later",
                             "rate_recipients");
    }
    return FA_ACCEPT;
}

const filter_def_t filter_limits = {
    .name = "limits",
    .stage = {[FS_CONNECT] = limits_connect, [FS_MAIL] = limits_mail, [FS_RCPT] = limits_rcpt},
};

/*
 * relay_domains.c - the "relay" filter: which recipients mxgate takes mail for: relay_domains. Anything
 * else gets 550 5.7.1 at RCPT, so the gateway is never an open relay; the
 * chain refuses to start without this filter.
 */
#include "filter.h"

static enum filter_act relay_rcpt(const filter_facts_t *fx, filter_verdict_t *v)
{
    const smtp_path_t *r = fx->rcpt;
    if (r->postmaster)
        return FA_ACCEPT; /* RFC 5321 4.5.1: <postmaster> must always be accepted */
    slice_t d = r->domain;
    if (d.len && d.ptr[d.len - 1] == '.')
        d.len--; /* a root-anchored name is the same domain */
    if (config_relay_domain(fx->cfg, d))
        return FA_ACCEPT;
    return filter_refuse(v, FA_REJECT, 550, "5.7.1", "Error: relay access denied", "relay");
}

const filter_def_t filter_relay = {
    .name = "relay",
    .stage = {[FS_RCPT] = relay_rcpt},
};

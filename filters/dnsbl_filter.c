/*
 * dnsbl_filter.c - the DNSBL filter: refuses (or tags) a client whose score over
 * the DNS block- and allow-lists of dnsbl_sites reaches dnsbl_threshold.
 *
 * The lookups are the worker's (workers/dnsbl_client.c): every list is
 * asked in parallel as soon as the connection is accepted, and the result
 * lands in facts->dnsbl. This filter only reads it: it waits (FA_WAIT) at
 * the stage where it must answer while the lookups run, which is bounded by
 * dnsbl_timeout (a list that has not answered by then does not count).
 *
 * Where it answers (dnsbl_stage): at RCPT by default, as Postfix's smtpd
 * does with reject_rbl_client, so that mail to postmaster still gets
 * through from a listed client; or before the greeting, as postscreen does
 * (554, then the session closes). dnsbl_action = tag adds a header at DATA
 * instead; ignore only logs (the session's event=dnsbl line).
 */
#include "dnsbl.h"
#include "filter.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define REPLY_MAX 512

static int dnsbl_init(const mx_config_t *cfg, void **state, char *err, size_t errlen)
{
    dnsbl_list_t *l = calloc(1, sizeof *l);
    dnsbl_site_t *s = l ? calloc(DNSBL_SITES_MAX, sizeof *s) : NULL;
    char why[256];
    if (!s) {
        free(l);
        snprintf(err, errlen, "dnsbl: out of memory");
        return -1;
    }
    if (dnsbl_parse(cfg->dnsbl_sites, s, DNSBL_SITES_MAX, &l->n, why, sizeof why) != 0) {
        snprintf(err, errlen, "dnsbl_sites: %s", why);
        free(s);
        free(l);
        return -1;
    }
    if (l->n == 0) {
        snprintf(err, errlen, "filters: dnsbl is in the chain but dnsbl_sites names no list");
        free(s);
        free(l);
        return -1;
    }
    l->site = s;
    *state = l;
    return 0;
}

static void dnsbl_fini(void *state)
{
    dnsbl_list_t *l = state;
    if (l)
        free(l->site);
    free(l);
}

static bool dnsbl_listed(const filter_facts_t *fx)
{
    return fx->dnsbl && fx->dnsbl->status == DNSBL_DONE && fx->dnsbl->score >= (int)fx->cfg->dnsbl_threshold;
}

/* "Service unavailable; client [192.0.2.7] blocked using zen.example",
 * Postfix's words, naming the heaviest list that counted. */
static void dnsbl_refusal(const filter_facts_t *fx, filter_verdict_t *v)
{
    static _Thread_local char text[REPLY_MAX];
    const dnsbl_list_t *l = fx->self;
    const char *name = "a DNS blocklist";
    int best = 0;
    for (size_t i = 0; i < l->n; i++)
        if ((fx->dnsbl->hit & (1u << i)) && l->site[i].weight > best) {
            best = l->site[i].weight;
            name = l->site[i].domain;
        }
    char ip[INET6_ADDRSTRLEN] = "?";
    inet_ntop(fx->family == AF_INET6 ? AF_INET6 : AF_INET, fx->addr, ip, sizeof ip);
    snprintf(text, sizeof text, "Service unavailable; client [%s] blocked using %s", ip, name);
    filter_refuse(v, FA_REJECT, 554, "5.7.1", text, "dnsbl");
}

/* Refuse here, if this is where the policy refuses. */
static enum filter_act dnsbl_at(const filter_facts_t *fx, filter_verdict_t *v, enum config_dnsbl_stage stage)
{
    if (fx->cfg->dnsbl_action != CONFIG_DNSBL_REJECT || fx->cfg->dnsbl_stage != stage || !fx->dnsbl)
        return FA_ACCEPT;
    if (stage == CONFIG_DNSBL_AT_RCPT && fx->rcpt && (fx->rcpt->postmaster || slice_ieq(fx->rcpt->local, "postmaster")))
        return FA_ACCEPT; /* RFC 5321 4.5.1: postmaster always reachable */
    if (fx->dnsbl->status == DNSBL_PENDING)
        return filter_refuse(v, FA_WAIT, 0, NULL, NULL, "dnsbl");
    if (!dnsbl_listed(fx))
        return FA_ACCEPT;
    dnsbl_refusal(fx, v);
    return FA_REJECT;
}

static enum filter_act dnsbl_connect(const filter_facts_t *fx, filter_verdict_t *v)
{
    return dnsbl_at(fx, v, CONFIG_DNSBL_AT_GREETING);
}

static enum filter_act dnsbl_rcpt(const filter_facts_t *fx, filter_verdict_t *v)
{
    return dnsbl_at(fx, v, CONFIG_DNSBL_AT_RCPT);
}

/* tag: the score and the lists that counted, above the trace headers. */
static enum filter_act dnsbl_data(const filter_facts_t *fx, filter_verdict_t *v)
{
    if (fx->cfg->dnsbl_action != CONFIG_DNSBL_TAG || !fx->dnsbl)
        return FA_ACCEPT;
    if (fx->dnsbl->status == DNSBL_PENDING) /* DATA waits, so the header is there at 354 */
        return filter_refuse(v, FA_WAIT, 0, NULL, NULL, "dnsbl");
    if (!fx->hdr || !dnsbl_listed(fx))
        return FA_ACCEPT;
    const dnsbl_list_t *l = fx->self;
    char value[REPLY_MAX];
    int n = snprintf(value, sizeof value, "score=%d lists=", fx->dnsbl->score);
    bool first = true;
    for (size_t i = 0; i < l->n && n > 0 && (size_t)n < sizeof value; i++)
        if (fx->dnsbl->hit & (1u << i)) {
            n += snprintf(value + n, sizeof value - (size_t)n, "%s%s", first ? "" : ",", l->site[i].domain);
            first = false;
        }
    if (n <= 0 || (size_t)n >= sizeof value)
        n = (int)strlen(value);
    filter_add_header((filter_facts_t *)fx, "X-Mxgate-DNSBL", value, (size_t)n);
    v->why = "dnsbl";
    return FA_TAG;
}

const filter_def_t filter_dnsbl = {
    .name = "dnsbl",
    .init = dnsbl_init,
    .fini = dnsbl_fini,
    .stage = { [FS_CONNECT] = dnsbl_connect, [FS_RCPT] = dnsbl_rcpt, [FS_DATA] = dnsbl_data },
};

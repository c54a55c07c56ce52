/*
 * filter.c - the filter table, the chain the config asks for, and header
 * folding for the filters that tag.
 */
#include "filter.h"

#include <stdio.h>
#include <string.h>


/* Every filter mxgate has. A new one is a file and a line here. */
static const filter_def_t *const table[] = {
    &filter_limits,
    &filter_relay,
    &filter_recipients,
    &filter_spf,
    &filter_dnsbl,
};

#define NTABLE (sizeof table / sizeof table[0])

int filter_chain_init(filter_chain_t *ch, const mx_config_t *cfg, char *err, size_t errlen)
{
    memset(ch, 0, sizeof *ch);
    bool relay = false;
    for (const char *p = cfg->filters; *p;) {
        size_t n = strcspn(p, ",");
        const filter_def_t *f = NULL;
        for (size_t i = 0; i < NTABLE && !f; i++)
            if (strlen(table[i]->name) == n && memcmp(table[i]->name, p, n) == 0)
                f = table[i];
        if (n == 4 && memcmp(p, "size", 4) == 0) {
            /* The size limits are the engine's (core/smtp.c): SIZE= at MAIL
             * and the real size at the end of data. Accepted as a name so a
             * config can say where it stands. */
        } else if (!f) {
            snprintf(err, errlen, "filters: unknown filter: %.*s", (int)n, p);
            filter_chain_fini(ch);
            return -1;
        } else {
            for (int i = 0; i < ch->n; i++)
                if (ch->f[i] == f) {
                    snprintf(err, errlen, "filters: %s is listed twice", f->name);
                    filter_chain_fini(ch);
                    return -1;
                }
            if (ch->n == (int)(sizeof ch->f / sizeof ch->f[0])) {
                snprintf(err, errlen, "filters: too many filters");
                filter_chain_fini(ch);
                return -1;
            }
            void *state = NULL;
            if (f->init && f->init(cfg, &state, err, errlen)) {
                filter_chain_fini(ch);
                return -1;
            }
            ch->state[ch->n] = state;
            ch->f[ch->n++] = f;
            relay |= f == &filter_relay;
            ch->spf |= f == &filter_spf;
            if (f == &filter_dnsbl)
                ch->dnsbl = state;
        }
        p += n;
        if (*p == ',')
            p++;
    }
    if (!relay) {
        snprintf(err, errlen, "filters: relay must be in the chain (without it mxgate would be an open relay)");
        filter_chain_fini(ch);
        return -1;
    }
    return 0;
}

void filter_chain_fini(filter_chain_t *ch)
{
    for (int i = 0; i < ch->n; i++) {
        if (ch->f[i]->fini)
            ch->f[i]->fini(ch->state[i]);
        ch->state[i] = NULL;
    }
    ch->n = 0;
}

enum filter_act filter_run(const filter_chain_t *ch, enum filter_stage st, filter_facts_t *fx, filter_verdict_t *v)
{
    enum filter_act out = FA_ACCEPT;
    for (int i = 0; i < ch->n; i++) {
        if (!ch->f[i]->stage[st])
            continue;
        filter_verdict_t one = {0};
        fx->self = ch->state[i];
        enum filter_act a = ch->f[i]->stage[st](fx, &one);
        if (a == FA_TAG) {
            out = FA_TAG;
            continue;
        }
        if (a == FA_ACCEPT)
            continue;
        one.act = (uint8_t)a;
        *v = one;
        return a;
    }
    memset(v, 0, sizeof *v);
    v->act = (uint8_t)out;
    return out;
}

/* RFC 5322 2.2.3: a long header is folded at white space. Lines stay under
 * 78 octets where the value has spaces to fold at, and under 998 always. */
bool filter_add_header(filter_facts_t *fx, const char *name, const char *value, size_t vlen)
{
    size_t nl = strlen(name), need = nl + 2 + vlen + 2 + vlen / 60 * 3 + 3;
    if (!fx->hdr || fx->hdr_len + need > fx->hdr_cap)
        return false;
    char *o = fx->hdr + fx->hdr_len;
    memcpy(o, name, nl);
    o += nl;
    *o++ = ':';
    *o++ = ' ';
    size_t col = nl + 2;
    const char *p = value, *end = value + vlen;
    while (p < end) {
        /* the next word, with the spaces before it */
        const char *w = p;
        while (w < end && *w == ' ')
            w++;
        const char *sp = memchr(w, ' ', (size_t)(end - w));
        const char *we = sp ? sp : end;
        if (col + (size_t)(we - p) > 76 && p > value && *p == ' ' && col > nl + 2) {
            memcpy(o, "\r\n\t", 3);
            o += 3;
            col = 1;
            p++; /* the space becomes the fold */
        }
        size_t k = (size_t)(we - p);
        if (col + k > 990)
            k = col < 990 ? 990 - col : 0; /* one word longer than a line: cut */
        memcpy(o, p, k);
        o += k;
        col += k;
        p = we;
    }
    *o++ = '\r';
    *o++ = '\n';
    fx->hdr_len = (size_t)(o - fx->hdr);
    return true;
}

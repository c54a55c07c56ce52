/*
 * conf.c - a generation of the running configuration (conf.h).
 */
#include "conf.h"

#include "resolve.h"
#include "tls.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

conf_t *conf_new(mx_config_t *cfg, uint64_t number, char *err, size_t errlen)
{
    conf_t *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        config_free(cfg);
        return NULL;
    }
    c->cfg = *cfg;
    memset(cfg, 0, sizeof *cfg);
    c->number = number;
    atomic_init(&c->holders, 0);
    if (filter_chain_init(&c->chain, &c->cfg, err, errlen)) {
        config_free(&c->cfg);
        free(c);
        return NULL;
    }
    const mx_config_t *k = &c->cfg;
    smtp_config_defaults(&c->smtp, slice_make(k->hostname, strlen(k->hostname)));
    c->smtp.line_max = k->smtp_line_limit;
    c->smtp.text_line_max = k->text_line_limit;
    c->smtp.rcpt_max = k->recipient_limit;
    c->smtp.error_max = k->error_limit;
    c->smtp.size_max = k->message_size_limit;
    c->smtp.bare_newline = k->bare_newline;
    c->smtp.on_bare_newline = k->bare_newline_action;
    c->smtp.on_pipelining = k->pipelining_action;
    c->smtp.on_non_smtp = k->non_smtp_command_action;
    c->smtp.smtputf8 = k->smtputf8;
    c->smtp.tls = k->tls == CONFIG_TLS_ENCRYPT ? SMTP_TLS_ENCRYPT : k->tls == CONFIG_TLS_MAY ? SMTP_TLS_MAY : SMTP_TLS_OFF;
    if (k->tls != CONFIG_TLS_OFF && !(c->tls = tls_ctx_new(k, err, errlen))) {
        conf_free(c);
        return NULL;
    }
    if (k->downstream_tls != CONFIG_DS_TLS_OFF && k->downstream[0] &&
        !(c->ds_tls = tls_client_ctx_new(k, err, errlen))) {
        conf_free(c);
        return NULL;
    }
    return c;
}

void conf_free(conf_t *c)
{
    if (!c)
        return;
    if (c->own_resolver)
        resolve_free(c->resolver);
    tls_ctx_free(c->tls);
    tls_ctx_free(c->ds_tls);
    filter_chain_fini(&c->chain);
    config_free(&c->cfg);
    free(c);
}

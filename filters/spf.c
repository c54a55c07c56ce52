/*
 * spf.c - the SPF filter: starts the check at MAIL, waits for it where the
 * policy says, refuses per result, and tags every message it lets through
 * with Received-SPF (RFC 7208 9.1) and Authentication-Results (RFC 8601).
 */
#include "spf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

unsigned spf_action(const mx_config_t *cfg, unsigned result)
{
    switch (result) {
    case SPFR_NONE:
        return cfg->spf_none;
    case SPFR_NEUTRAL:
        return cfg->spf_neutral;
    case SPFR_PASS:
        return CONFIG_SPF_ACCEPT;
    case SPFR_FAIL:
        return cfg->spf_fail;
    case SPFR_SOFTFAIL:
        return cfg->spf_softfail;
    case SPFR_PERMERROR:
        return cfg->spf_permerror;
    default:
        return cfg->spf_temperror;
    }
}

static const char *reply_text(const spf_state_t *spf)
{
    return spf->text + spf->received_len + 1 + spf->comment_len + 1;
}

void spf_reply(const mx_config_t *cfg, const spf_state_t *spf, filter_verdict_t *v)
{
    unsigned r = spf ? spf->result : SPFR_TEMPERROR;
    bool temp = !spf || spf_action(cfg, r) != CONFIG_SPF_REJECT;
    bool err = r == SPFR_TEMPERROR || r == SPFR_PERMERROR;
    v->act = temp ? FA_TEMPFAIL : FA_REJECT;
    v->why = "spf";
    v->code = temp ? 451 : 550;
    /* RFC 7372: x.7.23 validation failed, x.7.24 validation error; the
     * temperror code is RFC 3463's directory failure, 4.4.3. */
    v->esc = temp ? (r == SPFR_TEMPERROR ? "4.4.3" : err ? "4.7.24" : "4.7.23") : err ? "5.7.24" : "5.7.23";
    v->text = spf && spf->text ? reply_text(spf) : "Error: SPF check failed, try again later";
}

bool spf_set_result(spf_state_t *spf, unsigned result, const char *received, size_t rlen, const char *comment,
                    size_t clen)
{
    char reply[600];
    const char *name = spf_result_name(result);
    int k;
    if (result == SPFR_PASS)
        k = 0, reply[0] = '\0'; /* a pass is never refused */
    else if (result == SPFR_TEMPERROR)
        k = snprintf(reply, sizeof reply, "Error: SPF check of the sender failed temporarily, try again later");
    else if (clen)
        k = snprintf(reply, sizeof reply, "Error: SPF %s: %.*s", name, (int)(clen > 400 ? 400 : clen), comment);
    else
        k = snprintf(reply, sizeof reply, "Error: SPF %s for the sender's domain", name);
    size_t need = rlen + 1 + clen + 1 + (size_t)k + 1;
    if (need > spf->text_cap) {
        char *n = realloc(spf->text, need);
        if (!n)
            return false;
        spf->text = n;
        spf->text_cap = (uint32_t)need;
    }
    memcpy(spf->text, received, rlen);
    spf->text[rlen] = '\0';
    memcpy(spf->text + rlen + 1, comment, clen);
    spf->text[rlen + 1 + clen] = '\0';
    memcpy(spf->text + rlen + 1 + clen + 1, reply, (size_t)k + 1);
    spf->received_len = (uint32_t)rlen;
    spf->comment_len = (uint32_t)clen;
    spf->result = (uint8_t)(result < SPFR_COUNT ? result : SPFR_TEMPERROR);
    spf->status = SPF_DONE;
    return true;
}

void spf_state_free(spf_state_t *spf)
{
    free(spf->text);
    memset(spf, 0, sizeof *spf);
}

static enum filter_act spf_mail(const filter_facts_t *fx, filter_verdict_t *v)
{
    (void)v;
    if (fx->spf->status == SPF_IDLE && fx->host && fx->host->spf_start)
        fx->host->spf_start(fx->host->ctx, fx);
    return FA_ACCEPT;
}

static enum filter_act refusal(const filter_facts_t *fx, filter_verdict_t *v)
{
    if (spf_action(fx->cfg, fx->spf->result) == CONFIG_SPF_ACCEPT)
        return FA_ACCEPT;
    spf_reply(fx->cfg, fx->spf, v);
    return (enum filter_act)v->act;
}

static enum filter_act spf_rcpt(const filter_facts_t *fx, filter_verdict_t *v)
{
    if (fx->cfg->spf_stage != CONFIG_SPF_AT_RCPT || fx->spf->status == SPF_IDLE)
        return FA_ACCEPT;
    if (fx->spf->status == SPF_PENDING)
        return FA_WAIT;
    return refusal(fx, v);
}

/* At DATA the result is needed either way: the headers go before the body. */
static enum filter_act spf_data(const filter_facts_t *fx, filter_verdict_t *v)
{
    const spf_state_t *spf = fx->spf;
    if (spf->status == SPF_IDLE)
        return FA_ACCEPT;
    if (spf->status == SPF_PENDING)
        return FA_WAIT;
    enum filter_act a = refusal(fx, v);
    if (a != FA_ACCEPT)
        return a;
    if (!fx->hdr)
        return FA_TAG; /* the caller only asks whether DATA may go on */
    filter_facts_t *out = (filter_facts_t *)fx; /* the header buffer is the facts' one writable part */
    /* "<host>; spf=<result> smtp.mailfrom=<sender>" (smtp.helo=<name> for
     * the null sender), built without printf: this runs per message. */
    char ar[CONFIG_DOMAIN_MAX + ADDR_PATH_MAX + 64];
    const smtp_path_t *s = fx->sender;
    const char *name = spf_result_name(spf->result);
    slice_t who = s && !s->null ? s->mailbox : fx->helo;
    const char *prop = s && !s->null ? " smtp.mailfrom=" : " smtp.helo=";
    size_t hl = strlen(fx->cfg->hostname), nl = strlen(name), pl = strlen(prop), k = 0;
    if (hl + 6 + nl + pl + who.len < sizeof ar) {
        memcpy(ar + k, fx->cfg->hostname, hl), k += hl;
        memcpy(ar + k, "; spf=", 6), k += 6;
        memcpy(ar + k, name, nl), k += nl;
        memcpy(ar + k, prop, pl), k += pl;
        memcpy(ar + k, who.ptr, who.len), k += who.len;
    }
    if (spf->received_len)
        filter_add_header(out, "Received-SPF", spf->text, spf->received_len);
    else
        filter_add_header(out, "Received-SPF", name, nl);
    if (k)
        filter_add_header(out, "Authentication-Results", ar, k);
    return FA_TAG;
}

const filter_def_t filter_spf = {
    .name = "spf",
    .stage = {[FS_MAIL] = spf_mail, [FS_RCPT] = spf_rcpt, [FS_DATA] = spf_data},
};

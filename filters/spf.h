/*
 * spf.h - the SPF filter's side of SPF (RFC 7208): what each result leads to
 * (spf_fail = reject, ...), the reply for a refusal, and the trace headers.
 * The lookups themselves run in the helper process (workers/spfd/), started
 * by the worker through filter_host_t.spf_start at MAIL; the filter waits for
 * the result at the stage spf_stage names (the first RCPT by default).
 */
#ifndef MXGATE_SPF_H
#define MXGATE_SPF_H

#include "filter.h"

/* RFC 7208 section 2.6; the helper's wire uses the same numbers. */
enum spf_result {
    SPFR_NONE = 0,
    SPFR_NEUTRAL,
    SPFR_PASS,
    SPFR_FAIL,
    SPFR_SOFTFAIL,
    SPFR_TEMPERROR,
    SPFR_PERMERROR,
    SPFR_COUNT
};

/* "none", "neutral", "pass", "fail", "softfail", "temperror", "permerror" */
static inline const char *spf_result_name(unsigned r)
{
    static const char *const names[SPFR_COUNT] = {"none",     "neutral",   "pass",     "fail",
                                                  "softfail", "temperror", "permerror"};
    return r < SPFR_COUNT ? names[r] : "temperror";
}

/* The configured action for a result (enum config_spf_action). */
unsigned spf_action(const mx_config_t *cfg, unsigned result);

/* The refusal for the transaction's result: 550 5.7.23 for fail, 451 4.4.3
 * for temperror, ... (the action must not be accept). */
void spf_reply(const mx_config_t *cfg, const spf_state_t *spf, filter_verdict_t *v);

/* Store a result in the transaction's state (copies the texts). */
bool spf_set_result(spf_state_t *spf, unsigned result, const char *received, size_t rlen, const char *comment,
                    size_t clen);

void spf_state_free(spf_state_t *spf);

#endif

/*
 * policy.c - recipient domain policy (no open relay).
 */
#include "policy.h"

bool policy_rcpt_allowed(const mx_config_t *cfg, const smtp_path_t *rcpt)
{
    if (rcpt->postmaster)
        return true; /* RFC 5321 4.5.1: <postmaster> must always be accepted */
    slice_t d = rcpt->domain;
    if (d.len && d.ptr[d.len - 1] == '.')
        d.len--; /* a root-anchored name is the same domain */
    return config_relay_domain(cfg, d);
}

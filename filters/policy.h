/*
 * policy.h - the first policy filter: which recipients mxgate accepts mail
 * for. Recipients outside relay_domains are refused at RCPT with 550 5.7.1,
 * so the gateway can never be an open relay. The filter chain of issue 4
 * grows from here (one file per filter, one row in a table).
 */
#ifndef MXGATE_POLICY_H
#define MXGATE_POLICY_H

#include <stdbool.h>

#include "addr.h"
#include "config.h"

bool policy_rcpt_allowed(const mx_config_t *cfg, const smtp_path_t *rcpt);

#endif

/*
 * cli.h - builds mxgate's configuration from its sources at start-up.
 *
 * Sources, each overriding the one before for the keys it sets:
 *
 *     defaults < config file (--config FILE) < MXGATE_* environment < flags
 *
 * A key is `message_size_limit` in the file, MXGATE_MESSAGE_SIZE_LIMIT in
 * the environment and --message-size-limit VALUE (or =VALUE) as a flag; see
 * core/config.h for the keys. This is the I/O half of the configuration (it
 * reads the file, the environment and the host name); core/config.c checks
 * the values.
 */
#ifndef MXGATE_CLI_H
#define MXGATE_CLI_H

#include <stddef.h>
#include <stdio.h>

#include "config.h"

#define MXGATE_VERSION "0.2.0"

enum cli_status {
    CLI_ERROR = -1,  /* err says what and where; exit 2 */
    CLI_RUN = 0,     /* c is ready */
    CLI_HELP = 1,    /* --help: usage printed on stdout; exit 0 */
    CLI_PRINTED = 2, /* --print-config [-n]: config printed on stdout; exit 0 */
    CLI_VERSION = 3, /* --version: "mxgate VERSION" printed on stdout; exit 0 */
};

/*
 * Fill c from defaults, the --config file, envp (may be NULL) and argv, in
 * that order, then fill what was left empty: hostname from gethostname(),
 * relay_domains with "localhost" and the hostname. c must be fresh or
 * config_free()d. Returns an enum cli_status; whatever it returns, c then
 * holds a config to config_free().
 * Errors name the source and the key: "--workers: expected a number from 0
 * to 256: abc", "MXGATE_WORKERS: ...", "FILE: line 3: workers: ...".
 * Unknown flags are errors (a misspelt name would otherwise be ignored in
 * silence); unknown MXGATE_* variables get a warning on stderr (orchestrators
 * add their own).
 *
 * --print-config prints every key as INI text; --print-config -n only the
 * keys whose value differs from the default and that a source set, each
 * after a comment line naming that source (like Postfix's postconf -n):
 * "# FILE, line N", "# MXGATE_KEY" or "# --key". Both outputs load again.
 */
int cli_load(mx_config_t *c, int argc, char **argv, char **envp, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* The --help text: every key with its flag, variable, default and meaning. */
void cli_usage(FILE *out, const char *prog);

#endif

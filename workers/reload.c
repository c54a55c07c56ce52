/*
 * reload.c - the next configuration generation (reload.h).
 */
#include "reload.h"

#include "cli.h"
#include "resolve.h"

#include <stdio.h>
#include <string.h>

static void add_name(char *list, size_t cap, const char *name)
{
    size_t n = strlen(list);
    if (n + strlen(name) + 2 > cap)
        return; /* the list is for the log: the first ones are enough */
    snprintf(list + n, cap - n, "%s%s", n ? "," : "", name);
}

conf_t *reload_build(conf_t *cur, int argc, char **argv, char **envp, reload_report_t *rep, char *err,
                     size_t errlen)
{
    static const char *const restart[] = { RELOAD_RESTART_KEYS };
    memset(rep, 0, sizeof *rep);
    mx_config_t n;
    memset(&n, 0, sizeof n); /* what a failed load leaves is freed below */
    int rc = cli_load(&n, argc, argv, envp, err, errlen);
    if (rc != CLI_RUN) {
        if (rc > 0)
            snprintf(err, errlen, "the command line asks for no server (--help, --version, --print-config)");
        config_free(&n);
        return NULL;
    }
    for (size_t i = 0; i < sizeof restart / sizeof restart[0]; i++) {
        if (config_key_same(&n, &cur->cfg, restart[i]))
            continue;
        add_name(rep->not_applied, sizeof rep->not_applied, restart[i]);
        if (config_key_copy(&n, &cur->cfg, restart[i]) != 0) {
            snprintf(err, errlen, "%s: cannot keep its running value", restart[i]);
            config_free(&n);
            return NULL;
        }
    }
    /* Relaying or delivering to the Maildir is the shape of the process
     * too (the pool exists or not); another server is not. */
    if (!n.downstream[0] != !cur->cfg.downstream[0]) {
        add_name(rep->not_applied, sizeof rep->not_applied, "downstream");
        config_key_copy(&n, &cur->cfg, "downstream");
    }
    const config_key_t *k;
    for (size_t i = 0; (k = config_key_at(i)); i++)
        if (!config_key_same(&n, &cur->cfg, k->name))
            add_name(rep->changed, sizeof rep->changed, k->name);

    bool same_ds = strcmp(n.downstream, cur->cfg.downstream) == 0;
    resolve_t *res = NULL;
    if (!same_ds && !(res = resolve_new(n.downstream, n.dns_server, n.dns_timeout, err, errlen))) {
        config_free(&n);
        return NULL;
    }
    conf_t *next = conf_new(&n, cur->number + 1, err, errlen);
    if (!next) {
        resolve_free(res);
        return NULL;
    }
    if (same_ds) {
        next->resolver = cur->resolver;
        next->own_resolver = cur->own_resolver;
        cur->own_resolver = false;
    } else {
        next->resolver = res;
        next->own_resolver = true;
        if (resolve_start(res, err, errlen) != 0) {
            conf_free(next);
            return NULL;
        }
    }
    return next;
}

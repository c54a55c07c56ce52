/*
 * cli.c - the configuration's sources: file, environment, flags.
 *
 * argv is walked twice. The first walk checks every flag's spelling and
 * finds --config, --help and --print-config, so a typo fails before any file
 * is read and --help works however broken the rest of the setup is. The
 * second walk applies the flags after the file and the environment, which is
 * all "flags win" means. Each source's errors are rewritten to name what the
 * person actually typed (the flag, the variable, the file and line) rather
 * than the internal key.
 *
 * No main() here: tests/unit/test_config.c includes this file to test it.
 */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CLI_ENV_PREFIX "MXGATE_"
#define CLI_FILE_MAX (16u << 20) /* 1024 long relay domains are ~256 KiB */
#define CLI_NAME_MAX 64          /* longer than any key */

typedef struct cli_flag {
    const char *arg; /* as typed, up to len: "--workers" */
    int len;
    const char *value; /* NULL for --help and --print-config */
    const char *key;   /* canonical key, or NULL for the three own flags */
} cli_flag_t;

static bool cli_is(const cli_flag_t *f, const char *name)
{
    return (size_t)f->len == strlen(name) && memcmp(f->arg, name, (size_t)f->len) == 0;
}

/* argv[*i] (and argv[*i + 1] for "--key value") as one flag; *i moves past
 * what it took. */
static int cli_next(int argc, char **argv, int *i, cli_flag_t *f, char *err, size_t errlen)
{
    const char *a = argv[(*i)++];
    if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
        snprintf(err, errlen, "unexpected argument: %s (options are --key value or --key=value)", a);
        return -1;
    }
    const char *eq = strchr(a, '=');
    *f = (cli_flag_t){a, eq ? (int)(eq - a) : (int)strlen(a), eq ? eq + 1 : NULL, NULL};
    if (cli_is(f, "--help") || cli_is(f, "--print-config")) {
        if (eq) {
            snprintf(err, errlen, "%.*s: takes no value", f->len, a);
            return -1;
        }
        return 0;
    }
    if (!cli_is(f, "--config")) {
        char name[CLI_NAME_MAX];
        const config_key_t *k = NULL;
        if (f->len - 2 < CLI_NAME_MAX) {
            memcpy(name, a + 2, (size_t)f->len - 2);
            name[f->len - 2] = '\0';
            k = config_key_find(name);
        }
        if (!k) {
            snprintf(err, errlen, "%.*s: unknown option (--help lists them)", f->len, a);
            return -1;
        }
        f->key = k->name;
    }
    if (!f->value) {
        if (*i >= argc) {
            snprintf(err, errlen, "%.*s: missing value", f->len, a);
            return -1;
        }
        f->value = argv[(*i)++];
    }
    return 0;
}

/* config says "key: reason"; name what the person typed instead. */
static void cli_blame(char *err, size_t errlen, const char *who, int wholen, const char *cfgerr)
{
    const char *reason = strstr(cfgerr, ": ");
    snprintf(err, errlen, "%.*s: %s", wholen, who, reason ? reason + 2 : cfgerr);
}

/* Read the whole file: a pipe or /dev/fd/N works as well as a plain file. */
static char *cli_slurp(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "--config %s: %s", path, strerror(errno));
        return NULL;
    }
    size_t len = 0, cap = 4096;
    char *text = malloc(cap);
    for (;;) {
        if (!text) {
            snprintf(err, errlen, "--config %s: out of memory", path);
            break;
        }
        if (len + 1 == cap) {
            char *t = cap >= CLI_FILE_MAX ? NULL : realloc(text, cap * 2);
            if (!t) {
                snprintf(err, errlen, "--config %s: larger than %u octets", path, CLI_FILE_MAX);
                free(text), text = NULL;
                break;
            }
            text = t, cap *= 2;
        }
        ssize_t n = read(fd, text + len, cap - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, errlen, "--config %s: %s", path, strerror(errno));
            free(text), text = NULL;
            break;
        }
        if (n == 0) {
            text[len] = '\0';
            if (strlen(text) != len) {
                snprintf(err, errlen, "--config %s: contains a NUL byte", path);
                free(text), text = NULL;
            }
            break;
        }
        len += (size_t)n;
    }
    close(fd);
    return text;
}

static int cli_file(mx_config_t *c, const char *path, char *err, size_t errlen)
{
    char *text = cli_slurp(path, err, errlen);
    if (!text)
        return -1;
    char e[512];
    int rc = config_parse_ini(c, text, e, sizeof e);
    free(text);
    if (rc != 0)
        snprintf(err, errlen, "%s: %s", path, e);
    return rc;
}

static int cli_env(mx_config_t *c, char **envp, char *err, size_t errlen)
{
    const size_t plen = sizeof CLI_ENV_PREFIX - 1;
    for (; *envp; envp++) {
        const char *var = *envp, *eq = strchr(var, '=');
        if (strncmp(var, CLI_ENV_PREFIX, plen) != 0 || !eq)
            continue;
        size_t n = (size_t)(eq - var) - plen;
        char name[CLI_NAME_MAX], e[512];
        const config_key_t *k = NULL;
        if (n < sizeof name) {
            memcpy(name, var + plen, n);
            name[n] = '\0';
            k = config_key_find(name);
        }
        if (!k || strchr(name, '-')) {
            /* Not fatal, unlike an unknown flag: orchestrators put their own
             * MXGATE_* variables in the environment (Kubernetes service
             * links: MXGATE_SERVICE_HOST, MXGATE_PORT...). */
            fprintf(stderr, "mxgate: warning: ignoring %.*s: not a setting (--help lists them)\n", (int)(eq - var),
                    var);
            continue;
        }
        if (config_set(c, k->name, eq + 1, e, sizeof e) != 0) {
            cli_blame(err, errlen, var, (int)(eq - var), e);
            return -1;
        }
    }
    return 0;
}

/* What only the running system knows: its name. */
static int cli_fill(mx_config_t *c, char *err, size_t errlen)
{
    char e[512];
    if (!c->hostname[0]) {
        char name[256] = "";
        if (gethostname(name, sizeof name - 1) != 0) {
            snprintf(err, errlen, "hostname: gethostname: %s; set hostname", strerror(errno));
            return -1;
        }
        if (config_set(c, "hostname", name, e, sizeof e) != 0 || !c->hostname[0]) {
            snprintf(err, errlen, "%s (the system's host name); set hostname",
                     name[0] ? e : "hostname: the system has no host name");
            return -1;
        }
    }
    if (c->relay_count == 0) {
        char list[CONFIG_DOMAIN_MAX + 16];
        snprintf(list, sizeof list, "localhost,%s", c->hostname);
        if (config_set(c, "relay_domains", list, err, errlen) != 0)
            return -1;
    }
    return 0;
}

static int cli_print(const mx_config_t *c)
{
    size_t n = config_dump(c, NULL, 0) + 1;
    char *buf = malloc(n);
    if (!buf)
        return -1;
    config_dump(c, buf, n);
    fputs(buf, stdout);
    free(buf);
    return fflush(stdout) == 0 ? 0 : -1;
}

int cli_load(mx_config_t *c, int argc, char **argv, char **envp, char *err, size_t errlen)
{
    const char *file = NULL;
    bool print = false;
    cli_flag_t f;
    char e[512];

    config_defaults(c);
    for (int i = 1; i < argc;) {
        if (cli_next(argc, argv, &i, &f, err, errlen) != 0)
            return CLI_ERROR;
        if (cli_is(&f, "--help")) {
            cli_usage(stdout, argc > 0 ? argv[0] : NULL);
            return CLI_HELP;
        }
        if (cli_is(&f, "--print-config"))
            print = true;
        else if (cli_is(&f, "--config"))
            file = f.value;
    }
    if (file && cli_file(c, file, err, errlen) != 0)
        return CLI_ERROR;
    if (envp && cli_env(c, envp, err, errlen) != 0)
        return CLI_ERROR;
    for (int i = 1; i < argc;) {
        if (cli_next(argc, argv, &i, &f, err, errlen) != 0)
            return CLI_ERROR; /* cannot happen: the first walk took them all */
        if (f.key && config_set(c, f.key, f.value, e, sizeof e) != 0) {
            cli_blame(err, errlen, f.arg, f.len, e);
            return CLI_ERROR;
        }
    }
    if (cli_fill(c, err, errlen) != 0)
        return CLI_ERROR;
    if (print) {
        if (cli_print(c) != 0) {
            snprintf(err, errlen, "--print-config: %s", strerror(errno));
            return CLI_ERROR;
        }
        return CLI_PRINTED;
    }
    return CLI_RUN;
}

void cli_usage(FILE *out, const char *prog)
{
    const char *base = prog && *prog ? strrchr(prog, '/') : NULL;
    fprintf(out,
            "usage: %s [--config FILE] [--KEY VALUE | --KEY=VALUE]... [--print-config] [--help]\n"
            "\n"
            "Every key can be set in the config file (key = value, before any section or in\n"
            "[mxgate]), in the environment (MXGATE_KEY) or as a flag (--key); later sources\n"
            "win: defaults < config file < environment < flags. Sizes take a suffix k, m or g\n"
            "(powers of 1024), seconds a suffix s, m or h, milliseconds ms or s.\n"
            "\n"
            "  --config FILE\n        read keys from this INI file\n"
            "  --print-config\n        print the resulting configuration and exit\n"
            "  --help\n        print this text and exit\n"
            "\n",
            base            ? base + 1
            : prog && *prog ? prog
                            : "mxgate");
    const config_key_t *k;
    for (size_t i = 0; (k = config_key_at(i)); i++) {
        char flag[CLI_NAME_MAX], env[CLI_NAME_MAX];
        size_t n = strlen(k->name);
        for (size_t j = 0; j <= n && j < CLI_NAME_MAX - 1; j++) {
            flag[j] = k->name[j] == '_' ? '-' : k->name[j];
            env[j] = k->name[j] >= 'a' && k->name[j] <= 'z' ? (char)(k->name[j] - 'a' + 'A') : k->name[j];
        }
        flag[CLI_NAME_MAX - 1] = env[CLI_NAME_MAX - 1] = '\0';
        fprintf(out, "  --%s VALUE  (%s%s; default: %s)\n        %s\n", flag, CLI_ENV_PREFIX, env,
                *k->def ? k->def : "(empty)", k->help);
    }
}

/*
 * cli.c - the configuration's sources: file, environment, flags.
 *
 * argv is walked twice. The first walk checks every flag's spelling and
 * finds --config, --help, --version and --print-config, so a typo fails
 * before any file is read and --help works however broken the rest of the
 * setup is. The second walk applies the flags after the file and the
 * environment, which is all "flags win" means. Each source's errors are
 * rewritten to name what the person actually typed (the flag, the variable,
 * the file and line) rather than the internal key.
 *
 * For --print-config -n each key remembers the last source that set it (the
 * same walk, in the same order); the file's lines are found by reading the
 * file's text again with inih's rules for what a key line is (the file has
 * passed config_parse_ini by then). A value is "not the default" when its
 * text in config_dump() differs from a default config's.
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
    const char *value; /* NULL for --help, --version and --print-config ("-n" for --print-config -n) */
    const char *key;   /* canonical key, or NULL for the own flags */
} cli_flag_t;

/* Where a key's value came from: the file (and line), the variable or the
 * flag, as typed; who == NULL: the default (or filled in at start). */
typedef struct cli_src {
    const char *who;
    int len;
    unsigned line; /* the file's; 0 for the others */
} cli_src_t;

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
    if (cli_is(f, "--help") || cli_is(f, "--version") || cli_is(f, "--print-config")) {
        if (eq) {
            snprintf(err, errlen, "%.*s: takes no value", f->len, a);
            return -1;
        }
        if (cli_is(f, "--print-config") && *i < argc && strcmp(argv[*i], "-n") == 0)
            f->value = argv[(*i)++];
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

/* The key's place in the table (config_key_at order). */
static size_t cli_key_index(const config_key_t *k)
{
    const config_key_t *t;
    for (size_t i = 0; (t = config_key_at(i)); i++)
        if (t == k)
            return i;
    return 0;
}

static void cli_note(cli_src_t *src, const char *name, const char *who, int len, unsigned line)
{
    const config_key_t *k = src ? config_key_find(name) : NULL;
    if (k)
        src[cli_key_index(k)] = (cli_src_t){who, len, line};
}

static bool cli_blank(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n' || ch == '\f' || ch == '\v';
}

/* Which line of the (already accepted) file set each key last: inih's rules
 * for a line (a comment starts with ';' or '#'; an indented line after a key
 * continues it, even across blank and comment lines; '[' opens a section
 * and forgets the key; else the name ends at the first '=' or ':'). */
static void cli_file_sources(const char *path, const char *text, cli_src_t *src)
{
    unsigned line = 0;
    bool prev = false;
    for (const char *p = text; *p;) {
        const char *nl = strchr(p, '\n');
        const char *end = nl ? nl : p + strlen(p), *q = p;
        line++;
        if (line == 1 && end - q >= 3 && memcmp(q, "\xEF\xBB\xBF", 3) == 0)
            q += 3;
        bool indented = q < end && cli_blank(*q);
        while (q < end && cli_blank(*q))
            q++;
        if (q == end || *q == ';' || *q == '#' || (indented && prev)) {
            /* blank, comment or continuation */
        } else if (*q == '[') {
            prev = false;
        } else {
            const char *d = q;
            while (d < end && *d != '=' && *d != ':')
                d++;
            const char *ne = d;
            while (ne > q && cli_blank(ne[-1]))
                ne--;
            char name[CLI_NAME_MAX];
            if ((size_t)(ne - q) < sizeof name) {
                memcpy(name, q, (size_t)(ne - q));
                name[ne - q] = '\0';
                cli_note(src, name, path, (int)strlen(path), line);
            }
            prev = true;
        }
        p = nl ? nl + 1 : end;
    }
}

static int cli_file(mx_config_t *c, const char *path, cli_src_t *src, char *err, size_t errlen)
{
    char *text = cli_slurp(path, err, errlen);
    if (!text)
        return -1;
    char e[512];
    int rc = config_parse_ini(c, text, e, sizeof e);
    if (rc != 0)
        snprintf(err, errlen, "%s: %s", path, e);
    else if (src)
        cli_file_sources(path, text, src);
    free(text);
    return rc;
}

static int cli_env(mx_config_t *c, char **envp, cli_src_t *src, char *err, size_t errlen)
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
        cli_note(src, k->name, var, (int)(eq - var), 0);
    }
    return 0;
}

/* What only the running system knows: its name. What is filled in here was
 * left at its default by every source (src: no longer theirs). */
static int cli_fill(mx_config_t *c, cli_src_t *src, char *err, size_t errlen)
{
    char e[512];
    if (!c->hostname[0]) {
        cli_note(src, "hostname", NULL, 0, 0);
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
    if (config_spooling(c) && !c->downstream[0]) {
        snprintf(err, errlen, "delivery: %s needs a downstream to deliver to (set downstream)",
                 c->delivery == CONFIG_DELIVERY_SPOOL ? "spool" : "relay-then-spool");
        return -1;
    }
    if (c->content_scanner != CONFIG_CONTENT_NONE && !c->rspamd_url[0]) {
        snprintf(err, errlen, "content_scanner: rspamd needs rspamd_url");
        return -1;
    }
    if (c->relay_count == 0) {
        cli_note(src, "relay_domains", NULL, 0, 0);
        char list[CONFIG_DOMAIN_MAX + 16];
        snprintf(list, sizeof list, "localhost,%s", c->hostname);
        if (config_set(c, "relay_domains", list, err, errlen) != 0)
            return -1;
    }
    return 0;
}

static char *cli_dump(const mx_config_t *c)
{
    size_t n = config_dump(c, NULL, 0) + 1;
    char *buf = malloc(n);
    if (buf)
        config_dump(c, buf, n);
    return buf;
}

static int cli_print(const mx_config_t *c)
{
    char *buf = cli_dump(c);
    if (!buf)
        return -1;
    fputs(buf, stdout);
    free(buf);
    return fflush(stdout) == 0 ? 0 : -1;
}

/* One key's "key = value\n" and its indented continuation lines in a dump;
 * *p moves past it. */
static size_t cli_block(const char **p)
{
    const char *s = *p, *e = s;
    do {
        const char *nl = strchr(e, '\n');
        e = nl ? nl + 1 : e + strlen(e);
    } while (*e == ' ');
    *p = e;
    return (size_t)(e - s);
}

/* --print-config -n: the keys a source set to something else than the
 * default, each after a comment line naming the source (its text with
 * anything unprintable masked, so a comment stays one line). */
static int cli_print_set(const mx_config_t *c, const cli_src_t *src)
{
    mx_config_t d;
    config_defaults(&d);
    char *now = cli_dump(c), *def = cli_dump(&d);
    config_free(&d);
    if (!now || !def) {
        free(now), free(def);
        errno = ENOMEM;
        return -1;
    }
    printf("# mxgate %s: the keys set to other than their default, each below where it was set\n", MXGATE_VERSION);
    const char *pn = now, *pd = def;
    for (size_t i = 0; config_key_at(i) && *pn && *pd; i++) {
        const char *bn = pn, *bd = pd;
        size_t ln = cli_block(&pn), ld = cli_block(&pd);
        if (!src[i].who || (ln == ld && memcmp(bn, bd, ln) == 0))
            continue;
        fputs("# ", stdout);
        for (int j = 0; j < src[i].len; j++) {
            unsigned char ch = (unsigned char)src[i].who[j];
            putchar(ch >= 0x20 && ch != 0x7f ? ch : '?');
        }
        if (src[i].line)
            printf(", line %u", src[i].line);
        putchar('\n');
        fwrite(bn, 1, ln, stdout);
    }
    free(now);
    free(def);
    return fflush(stdout) == 0 ? 0 : -1;
}

int cli_load(mx_config_t *c, int argc, char **argv, char **envp, char *err, size_t errlen)
{
    const char *file = NULL;
    bool print = false;
    cli_src_t *src = NULL; /* --print-config -n only */
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
        if (cli_is(&f, "--version")) {
            printf("mxgate %s\n", MXGATE_VERSION);
            fflush(stdout);
            return CLI_VERSION;
        }
        if (cli_is(&f, "--print-config")) {
            print = true;
            if (f.value && !src) {
                size_t n = 0;
                while (config_key_at(n))
                    n++;
                if (!(src = calloc(n, sizeof *src))) {
                    snprintf(err, errlen, "--print-config: out of memory");
                    return CLI_ERROR;
                }
            }
        } else if (cli_is(&f, "--config")) {
            file = f.value;
        }
    }
    int rc = CLI_ERROR;
    if (file && cli_file(c, file, src, err, errlen) != 0)
        goto out;
    if (envp && cli_env(c, envp, src, err, errlen) != 0)
        goto out;
    for (int i = 1; i < argc;) {
        if (cli_next(argc, argv, &i, &f, err, errlen) != 0)
            goto out; /* cannot happen: the first walk took them all */
        if (f.key && config_set(c, f.key, f.value, e, sizeof e) != 0) {
            cli_blame(err, errlen, f.arg, f.len, e);
            goto out;
        }
        if (f.key)
            cli_note(src, f.key, f.arg, f.len, 0);
    }
    if (cli_fill(c, src, err, errlen) != 0)
        goto out;
    rc = CLI_RUN;
    if (print) {
        rc = CLI_PRINTED;
        if ((src ? cli_print_set(c, src) : cli_print(c)) != 0) {
            snprintf(err, errlen, "--print-config: %s", strerror(errno));
            rc = CLI_ERROR;
        }
    }
out:
    free(src);
    return rc;
}

void cli_usage(FILE *out, const char *prog)
{
    const char *base = prog && *prog ? strrchr(prog, '/') : NULL;
    fprintf(out,
            "usage: %s [--config FILE] [--KEY VALUE | --KEY=VALUE]... [--print-config [-n]] [--version] [--help]\n"
            "\n"
            "Every key can be set in the config file (key = value, before any section or in\n"
            "[mxgate]), in the environment (MXGATE_KEY) or as a flag (--key); later sources\n"
            "win: defaults < config file < environment < flags. Sizes take a suffix k, m or g\n"
            "(powers of 1024), seconds a suffix s, m or h, milliseconds ms or s.\n"
            "\n"
            "  --config FILE\n        read keys from this INI file\n"
            "  --print-config\n        print the resulting configuration and exit\n"
            "  --print-config -n\n        print only the keys set to other than their default, each with\n"
            "        where it was set (file and line, variable or flag), and exit\n"
            "  --version\n        print the version and exit\n"
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

/*
 * main.c - mxgate-load's command line: `mxgate-load client ...` or
 * `mxgate-load sink ...` (see usage() and bench/load/README.md).
 */
#include "load.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

opts_t g_opt;
atomic_int g_stop;
atomic_int g_abort;
uint64_t g_t0_us;

static void usage(FILE *f)
{
    fputs(
        "usage: mxgate-load client --target HOST:PORT [options]\n"
        "       mxgate-load sink --listen HOST:PORT [options]\n"
        "\n"
        "common:\n"
        "  --threads N             io_uring loops (threads), default 1\n"
        "  --json FILE             the final JSON summary to FILE instead of stdout\n"
        "  --record FILE           one line per message (client: '<message-id> CODE|error';\n"
        "                          sink: '<message-id> accepted|tempfail|permfail|corrupt|closed|refused CODE')\n"
        "  --seed N                PRNG seed (bodies, size choice, faults), default 1\n"
        "  --quiet                 no progress line\n"
        "client:\n"
        "  --connections C         parallel sessions, default 10\n"
        "  --messages N            messages in all (default 1000 unless --duration)\n"
        "  --duration S            seconds to send for (whichever of N and S comes first)\n"
        "  --timeout S             hard limit: report and exit 1 (default 2 x duration, or 300)\n"
        "  --reply-timeout S       a reply (or connect) not in S seconds is an error, default 60\n"
        "  --size BYTES            message size (headers + body), default 4k (k = 1024, m = 1048576)\n"
        "  --size-dist 1k:50,10k:40,100k:10   sizes with weights\n"
        "  --rcpts R               recipients per message (user<i>@DOMAIN), default 1\n"
        "  --rcpt-domain D         default example.com\n"
        "  --from ADDR             default loadgen@example.org\n"
        "  --ehlo NAME             default mxgate-load.test\n"
        "  --pipelining on|off     MAIL..DATA in one write when offered, default on\n"
        "  --session persistent|per-message   default persistent\n"
        "  --rate R                open loop at R messages/s in all (latency from the scheduled start)\n"
        "  --run-id ID             in the Message-IDs (default random)\n"
        "  --starttls              STARTTLS after EHLO (not offered: error no_starttls), then EHLO again\n"
        "  --tls-resume on|off     resume the thread's last TLS session on new connections, default on\n"
        "  --tls-verify            verify the server's certificate (default: not verified)\n"
        "  --tls-ca FILE           trust anchors for --tls-verify (default: the system's)\n"
        "  --tls-name NAME         SNI, and the name --tls-verify checks\n"
        "sink:\n"
        "  --count-file FILE       counters as JSON, rewritten atomically at most every 100 ms\n"
        "  --check                 verify X-Load-Checksum; a mismatch is refused 554 5.6.0 (corrupt)\n"
        "  --hostname NAME         in the greeting and EHLO, default sink.test\n"
        "  --latency-ms N          delay every reply by N ms\n"
        "  --data-latency-ms N     delay the reply to the end of data by N ms\n"
        "  --greeting-delay-ms N   delay the greeting by N ms\n"
        "  --tempfail-rate P       fraction of messages answered 451 4.3.0 at the end of data\n"
        "  --permfail-rate P       fraction answered 554 5.6.0\n"
        "  --rcpt-tempfail-rate P  fraction of RCPTs answered 450 4.2.0\n"
        "  --close-mid-data-rate P fraction of messages whose connection is closed mid-DATA, no reply\n"
        "  --slow-read BYTES_PER_S read each connection at most this fast\n"
        "  --rcvbuf BYTES          SO_RCVBUF of accepted connections (a slow reader's window)\n"
        "  --max-connections N     per thread, default 10000\n"
        "  --size-limit BYTES      SIZE offered and enforced, default 100m\n"
        "the sink runs until SIGTERM or SIGINT, then prints its JSON summary and exits 0.\n",
        f);
}

static uint64_t parse_size(const char *opt, const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0)
        fatal("%s: bad size '%s'", opt, s);
    if (*end == 'k' || *end == 'K')
        v *= 1024, end++;
    else if (*end == 'm' || *end == 'M')
        v *= 1024 * 1024, end++;
    else if (*end == 'g' || *end == 'G')
        v *= 1024.0 * 1024 * 1024, end++;
    if (*end == 'b' || *end == 'B')
        end++;
    if (*end || v > 1e12)
        fatal("%s: bad size '%s'", opt, s);
    return (uint64_t)v;
}

static double parse_num(const char *opt, const char *s, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < lo || v > hi)
        fatal("%s: '%s' is not a number in [%g, %g]", opt, s, lo, hi);
    return v;
}

static void parse_dist(const char *s)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", s);
    g_opt.nsizes = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (g_opt.nsizes == SIZE_CLASSES_MAX)
            fatal("--size-dist: at most %d sizes", SIZE_CLASSES_MAX);
        char *colon = strchr(tok, ':');
        uint32_t w = 1;
        if (colon) {
            *colon = 0;
            w = (uint32_t)parse_num("--size-dist weight", colon + 1, 0, 1e6);
        }
        uint64_t sz = parse_size("--size-dist", tok);
        if (sz > 64u << 20)
            fatal("--size-dist: %s is over 64m", tok);
        g_opt.sizes[g_opt.nsizes++] = (size_class_t){ (uint32_t)sz, w };
    }
    if (!g_opt.nsizes)
        fatal("--size-dist: empty");
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "client"))
        g_opt.mode = 'c';
    else if (!strcmp(argv[1], "sink"))
        g_opt.mode = 's';
    else
        fatal("the first argument is client or sink (--help)");

    g_opt.threads = 1;
    g_opt.connections = 10;
    g_opt.reply_timeout = 60;
    g_opt.rcpts = 1;
    g_opt.rcpt_domain = "example.com";
    g_opt.from = "loadgen@example.org";
    g_opt.ehlo = "mxgate-load.test";
    g_opt.pipelining = true;
    g_opt.tls_resume = true;
    g_opt.hostname = "sink.test";
    g_opt.seed = 1;
    g_opt.max_connections = 10000;
    g_opt.size_limit = 100u << 20;
    g_opt.size_text = "4k";
    g_opt.sizes[0] = (size_class_t){ 4096, 1 };
    g_opt.nsizes = 1;
    bool have_messages = false, have_addr = false;
    double timeout = -1;

    for (int i = 2; i < argc; i++) {
        char name[64];
        const char *a = argv[i], *val = NULL;
        if (strncmp(a, "--", 2))
            fatal("unexpected argument '%s' (--help)", a);
        const char *eq = strchr(a, '=');
        if (eq) {
            snprintf(name, sizeof name, "%.*s", (int)(eq - a), a);
            val = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", a);
        }
#define FLAG(s) (!strcmp(name, s))
        if (FLAG("--quiet")) {
            g_opt.quiet = true;
            continue;
        }
        if (FLAG("--check")) {
            g_opt.check = true;
            continue;
        }
        if (g_opt.mode == 'c' && FLAG("--starttls")) {
            g_opt.starttls = true;
            continue;
        }
        if (g_opt.mode == 'c' && FLAG("--tls-verify")) {
            g_opt.tls_verify = true;
            continue;
        }
        if (FLAG("--help")) {
            usage(stdout);
            return 0;
        }
        if (!val) {
            if (i + 1 >= argc)
                fatal("%s needs a value", name);
            val = argv[++i];
        }
        if (FLAG("--threads"))
            g_opt.threads = (int)parse_num(name, val, 1, 256);
        else if (FLAG("--json"))
            g_opt.json_file = val;
        else if (FLAG("--record"))
            g_opt.record_file = val;
        else if (FLAG("--seed"))
            g_opt.seed = (uint64_t)parse_num(name, val, 0, 1e18);
        else if ((FLAG("--target") && g_opt.mode == 'c') || (FLAG("--listen") && g_opt.mode == 's')) {
            snprintf(g_opt.addr_text, sizeof g_opt.addr_text, "%s", val);
            if (parse_addr(val, &g_opt.addr, &g_opt.addrlen))
                fatal("%s: bad address '%s' (HOST:PORT)", name, val);
            have_addr = true;
        } else if (g_opt.mode == 'c' && FLAG("--connections"))
            g_opt.connections = (uint32_t)parse_num(name, val, 1, 1000000);
        else if (g_opt.mode == 'c' && FLAG("--messages")) {
            g_opt.messages = (uint64_t)parse_num(name, val, 1, 1e15);
            have_messages = true;
        } else if (g_opt.mode == 'c' && FLAG("--duration"))
            g_opt.duration = parse_num(name, val, 0.001, 1e7);
        else if (g_opt.mode == 'c' && FLAG("--timeout"))
            timeout = parse_num(name, val, 0.1, 1e7);
        else if (g_opt.mode == 'c' && FLAG("--reply-timeout"))
            g_opt.reply_timeout = parse_num(name, val, 0.01, 1e6);
        else if (g_opt.mode == 'c' && FLAG("--size")) {
            uint64_t sz = parse_size(name, val);
            if (sz > 64u << 20)
                fatal("--size: at most 64m");
            g_opt.sizes[0] = (size_class_t){ (uint32_t)sz, 1 };
            g_opt.nsizes = 1;
            g_opt.size_text = val;
        } else if (g_opt.mode == 'c' && FLAG("--size-dist")) {
            parse_dist(val);
            g_opt.size_text = val;
        } else if (g_opt.mode == 'c' && FLAG("--rcpts"))
            g_opt.rcpts = (uint32_t)parse_num(name, val, 1, 10000);
        else if (g_opt.mode == 'c' && FLAG("--rcpt-domain"))
            g_opt.rcpt_domain = val;
        else if (g_opt.mode == 'c' && FLAG("--from"))
            g_opt.from = val;
        else if (g_opt.mode == 'c' && FLAG("--ehlo"))
            g_opt.ehlo = val;
        else if (g_opt.mode == 'c' && FLAG("--pipelining")) {
            if (!strcasecmp(val, "on"))
                g_opt.pipelining = true;
            else if (!strcasecmp(val, "off"))
                g_opt.pipelining = false;
            else
                fatal("--pipelining: on or off");
        } else if (g_opt.mode == 'c' && FLAG("--session")) {
            if (!strcmp(val, "persistent"))
                g_opt.per_message = false;
            else if (!strcmp(val, "per-message"))
                g_opt.per_message = true;
            else
                fatal("--session: persistent or per-message");
        } else if (g_opt.mode == 'c' && FLAG("--rate"))
            g_opt.rate = parse_num(name, val, 0.001, 1e8);
        else if (g_opt.mode == 'c' && FLAG("--run-id"))
            g_opt.run_id = val;
        else if (g_opt.mode == 'c' && FLAG("--tls-resume")) {
            if (!strcasecmp(val, "on"))
                g_opt.tls_resume = true;
            else if (!strcasecmp(val, "off"))
                g_opt.tls_resume = false;
            else
                fatal("--tls-resume: on or off");
        } else if (g_opt.mode == 'c' && FLAG("--tls-ca"))
            g_opt.tls_ca = val;
        else if (g_opt.mode == 'c' && FLAG("--tls-name"))
            g_opt.tls_name = val;
        else if (g_opt.mode == 's' && FLAG("--count-file"))
            g_opt.count_file = val;
        else if (g_opt.mode == 's' && FLAG("--hostname"))
            g_opt.hostname = val;
        else if (g_opt.mode == 's' && FLAG("--latency-ms"))
            g_opt.latency_ms = (uint32_t)parse_num(name, val, 0, 3600000);
        else if (g_opt.mode == 's' && FLAG("--data-latency-ms"))
            g_opt.data_latency_ms = (uint32_t)parse_num(name, val, 0, 3600000);
        else if (g_opt.mode == 's' && FLAG("--greeting-delay-ms"))
            g_opt.greeting_delay_ms = (uint32_t)parse_num(name, val, 0, 3600000);
        else if (g_opt.mode == 's' && FLAG("--tempfail-rate"))
            g_opt.tempfail_rate = parse_num(name, val, 0, 1);
        else if (g_opt.mode == 's' && FLAG("--permfail-rate"))
            g_opt.permfail_rate = parse_num(name, val, 0, 1);
        else if (g_opt.mode == 's' && FLAG("--rcpt-tempfail-rate"))
            g_opt.rcpt_tempfail_rate = parse_num(name, val, 0, 1);
        else if (g_opt.mode == 's' && FLAG("--close-mid-data-rate"))
            g_opt.close_mid_data_rate = parse_num(name, val, 0, 1);
        else if (g_opt.mode == 's' && FLAG("--slow-read"))
            g_opt.slow_read = parse_size(name, val);
        else if (g_opt.mode == 's' && FLAG("--rcvbuf"))
            g_opt.rcvbuf = (int)parse_size(name, val);
        else if (g_opt.mode == 's' && FLAG("--max-connections"))
            g_opt.max_connections = (uint32_t)parse_num(name, val, 1, 1 << 23);
        else if (g_opt.mode == 's' && FLAG("--size-limit"))
            g_opt.size_limit = parse_size(name, val);
        else
            fatal("unknown option %s for %s mode (--help)", name, g_opt.mode == 'c' ? "client" : "sink");
#undef FLAG
    }
    if (!have_addr)
        fatal(g_opt.mode == 'c' ? "--target HOST:PORT is required" : "--listen HOST:PORT is required");
    signal(SIGPIPE, SIG_IGN);
    if (g_opt.mode == 's')
        return sink_main();
    if (!have_messages && g_opt.duration <= 0)
        g_opt.messages = 1000;
    if (g_opt.rate > 0 && !have_messages && g_opt.duration <= 0)
        fatal("--rate needs --messages or --duration");
    g_opt.timeout = timeout > 0 ? timeout : g_opt.duration > 0 ? fmax(2 * g_opt.duration, 5) : 300;
    return client_main();
}

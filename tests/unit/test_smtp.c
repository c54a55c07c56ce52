/*
 * test_smtp.c - unit tests for the SMTP server protocol engine (smtp.h).
 *
 * Covers, against the header contract and RFC 5321/1870/2920/3463/6152/6531:
 *   - every command and its reply code and enhanced code, the EHLO keyword
 *     list, command order (503), syntax (501), parameters (555/501/552);
 *   - paths: null sender, quoted local parts, address literals, source
 *     routes, postmaster, SMTPUTF8 addresses and invalid UTF-8;
 *   - every limit crossed by one octet or one item: command line, text line,
 *     recipients, SIZE at MAIL, body size, error count;
 *   - SMTP smuggling markers in both bare-newline modes, with a strict
 *     CRLF.CRLF reader (wire_body_safe) checking what would be forwarded;
 *   - early talkers, HTTP/header junk, bare LF/CR and NUL in commands (a bare
 *     LF ends a command line only with bare_newline = normalize);
 *   - verdicts: refused, deferred (hand-driven PAUSED loop), custom text;
 *     smtp_close; an output buffer below SMTP_OUT_MIN;
 *   - STARTTLS (RFC 3207): the EHLO keyword in each tls mode, the 220 and
 *     the plaintext behind it dropped unanswered (CVE-2011-0411), the reset
 *     at smtp_tls_started, its refusals (502, 501, 503, the caller's 454),
 *     530 before it with tls = encrypt, its place in a pipelined group, and
 *     sessions across the handshake split at every pair of positions;
 *   - a table of sample sessions, each fed whole, byte by byte, split at
 *     every position, at every pair of positions (short ones) and with the
 *     smallest legal output buffer (SMTP_OUT_MIN, so SMTP_FULL comes after
 *     nearly every reply): every log must equal the whole-feed log.
 *
 * Assertions look at reply codes and enhanced codes, not at reply texts,
 * except where the text is the point (greeting/EHLO domain, EHLO keywords,
 * a caller's custom reply).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define OUTCAP 8192      /* the reference output buffer */
#define SMALL_OUTCAP SMTP_OUT_MIN /* the smallest buffer the engine accepts: SMTP_FULL often */
#define MID_OUTCAP 1100  /* fills after a few replies of a pipelined group */
_Static_assert(MID_OUTCAP >= SMTP_OUT_MIN, "a legal output buffer");
#define PAIR_MAX_LEN 200 /* samples up to this long are split at every pair */

/* ------------------------------------------------------------------ */
/* Configurations                                                      */
/* ------------------------------------------------------------------ */

enum cfg_kind {
    CFG_DEFAULT,   /* smtp_config_defaults as they are */
    CFG_UTF8,      /* defaults, SMTPUTF8 on */
    CFG_NORMALIZE, /* defaults, bare CR/LF in a body normalized */
    CFG_SMALL,     /* small limits, so short samples can cross them */
    CFG_TLS,       /* defaults, STARTTLS offered */
    CFG_TLS_ENCRYPT, /* defaults, STARTTLS required before MAIL */
};

static smtp_config_t make_cfg(enum cfg_kind k)
{
    smtp_config_t c;
    memset(&c, 0, sizeof c);
    smtp_config_defaults(&c, SLICE_LIT("mx.test"));
    switch (k) {
    case CFG_DEFAULT:
        break;
    case CFG_UTF8:
        c.smtputf8 = true;
        break;
    case CFG_NORMALIZE:
        c.bare_newline = SCAN_BARE_NORMALIZE;
        break;
    case CFG_SMALL:
        c.line_max = 64;
        c.text_line_max = 40;
        c.rcpt_max = 2;
        c.size_max = 200;
        c.error_max = 5;
        break;
    case CFG_TLS:
        c.tls = SMTP_TLS_MAY;
        break;
    case CFG_TLS_ENCRYPT:
        c.tls = SMTP_TLS_ENCRYPT;
        break;
    }
    return c;
}

/* ------------------------------------------------------------------ */
/* Running sessions                                                    */
/* ------------------------------------------------------------------ */

/* Whole feed; returns the log (free it). */
static char *run_full(const smtp_config_t *cfg, const char *in, size_t len, tu_verdict_fn v, void *arg)
{
    tu_log_t l = tu_drive(cfg, in, len, NULL, 0, OUTCAP, v, arg);
    return l.buf;
}

#define RUN(cfg, lit) run_full((cfg), (lit), sizeof(lit) - 1, NULL, NULL)
#define RUNV(cfg, lit, v) run_full((cfg), (lit), sizeof(lit) - 1, (v), NULL)

/* ------------------------------------------------------------------ */
/* Log helpers                                                         */
/* ------------------------------------------------------------------ */


/* Length of the line starting at p, without its '\n'. */
static size_t line_len(const char *p)
{
    const char *e = strchr(p, '\n');
    return e ? (size_t)(e - p) : strlen(p);
}

static const char *next_line(const char *p)
{
    const char *e = strchr(p, '\n');
    return e ? e + 1 : NULL;
}

static bool starts_with(const char *p, size_t n, const char *prefix)
{
    size_t k = strlen(prefix);
    return n >= k && memcmp(p, prefix, k) == 0;
}

/* Count the lines that begin with prefix. */
static int count_prefix(const char *log, const char *prefix)
{
    int n = 0;
    for (const char *p = log; p && *p; p = next_line(p))
        if (starts_with(p, line_len(p), prefix))
            n++;
    return n;
}

/* Is there a line exactly equal to `line`? */
static bool has_line(const char *log, const char *line)
{
    size_t k = strlen(line);
    for (const char *p = log; p && *p; p = next_line(p))
        if (line_len(p) == k && memcmp(p, line, k) == 0)
            return true;
    return false;
}

static bool looks_esc(const char *p, size_t n)
{
    /* class "." subject "." detail: [245].d{1,3}.d{1,3} */
    if (n < 5 || (p[0] != '2' && p[0] != '4' && p[0] != '5') || p[1] != '.')
        return false;
    size_t i = 2, d = 0;
    while (i < n && p[i] >= '0' && p[i] <= '9')
        i++, d++;
    if (d < 1 || d > 3 || i >= n || p[i] != '.')
        return false;
    i++, d = 0;
    while (i < n && p[i] >= '0' && p[i] <= '9')
        i++, d++;
    return d >= 1 && d <= 3 && i == n;
}

/*
 * The reply signature of a log: one token per final reply line ("250",
 * "250 2.1.0" when it has an enhanced code), "CLOSED", "EOF", or
 * "PARTIAL" for a half-written reply, joined by '|'.
 */
static void signature(const char *log, tu_log_t *sig)
{
    for (const char *p = log; p && *p; p = next_line(p)) {
        size_t n = line_len(p);
        const char *tok = NULL;
        char buf[64];
        if (starts_with(p, n, "S-PARTIAL:"))
            tok = "PARTIAL";
        else if (n == 6 && memcmp(p, "CLOSED", 6) == 0)
            tok = "CLOSED";
        else if (n == 3 && memcmp(p, "EOF", 3) == 0)
            tok = "EOF";
        else if (starts_with(p, n, "S: ") && n >= 7) {
            if (p[6] == '-')
                continue; /* a continuation line */
            const char *e = p + 7;
            size_t el = 0;
            while (7 + el < n && e[el] != ' ' && e[el] != '\\')
                el++;
            if (looks_esc(e, el))
                snprintf(buf, sizeof buf, "%.3s %.*s", p + 3, (int)el, e);
            else
                snprintf(buf, sizeof buf, "%.3s", p + 3);
            tok = buf;
        }
        if (!tok)
            continue;
        if (sig->len)
            tu_puts(sig, "|");
        tu_puts(sig, tok);
    }
    if (!sig->buf)
        tu_puts(sig, "");
}

/*
 * Do the replies in `log` match `expect` ("220|250|250 2.1.0|...|CLOSED")?
 * A token without an enhanced code ("354", "220") matches that reply code
 * with or without one; a token with one must match exactly.
 */
static bool replies_are(const char *log, const char *expect)
{
    tu_log_t sig = { 0 };
    signature(log, &sig);
    bool ok = true;
    const char *a = sig.buf, *x = expect;
    for (;;) {
        size_t al = strcspn(a, "|"), xl = strcspn(x, "|");
        bool x_has_esc = memchr(x, ' ', xl) != NULL;
        if (x_has_esc || xl != 3) {
            if (al != xl || memcmp(a, x, xl) != 0)
                ok = false;
        } else if (!((al == 3 || (al > 3 && a[3] == ' ')) && memcmp(a, x, 3) == 0)) {
            ok = false;
        }
        if (!ok)
            break;
        a += al, x += xl;
        if (!*a || !*x) {
            ok = !*a && !*x;
            break;
        }
        a++, x++;
    }
    if (!ok)
        tu_note("replies differ\n  expected: %s\n  actual:   %s\n--- log ---\n%s-----------\n", expect,
             sig.buf, log);
    tu_free_log(&sig);
    return ok;
}

/* "E: NAME" as the log writes it. */
static void ev_prefix(char *buf, size_t n, smtp_ev_type_t t)
{
    snprintf(buf, n, "E: %s", smtp_ev_name(t));
}

/* Does line p (length n) hold event t (the name followed by ' ' or end)? */
static bool is_ev_line(const char *p, size_t n, smtp_ev_type_t t)
{
    char pre[64];
    ev_prefix(pre, sizeof pre, t);
    size_t k = strlen(pre);
    return starts_with(p, n, pre) && (n == k || p[k] == ' ');
}

static int count_ev(const char *log, smtp_ev_type_t t)
{
    int c = 0;
    for (const char *p = log; p && *p; p = next_line(p))
        if (is_ev_line(p, line_len(p), t))
            c++;
    return c;
}

/* Does the nth (0-based) event of type t contain `sub` in its log line? */
static bool ev_has(const char *log, smtp_ev_type_t t, int nth, const char *sub)
{
    int c = 0;
    for (const char *p = log; p && *p; p = next_line(p)) {
        size_t n = line_len(p);
        if (!is_ev_line(p, n, t))
            continue;
        if (c++ != nth)
            continue;
        char *line = strndup(p, n);
        bool ok = line && strstr(line, sub) != NULL;
        free(line);
        if (!ok)
            tu_note("event %s #%d lacks \"%s\"\n--- log ---\n%s-----------\n", smtp_ev_name(t), nth, sub,
                 log);
        return ok;
    }
    tu_note("no event %s #%d\n--- log ---\n%s-----------\n", smtp_ev_name(t), nth, log);
    return false;
}

/* "E: ERROR err=NAME" / "E: DATA_REJECTED err=NAME" as a substring. */
static const char *err_sub(smtp_err_t e)
{
    static char buf[8][64];
    static int i;
    char *b = buf[i++ % 8];
    snprintf(b, 64, " err=%s", smtp_err_name(e));
    return b;
}

/* Undo tu_put_escaped. */
static void unescape(const char *p, size_t n, tu_log_t *out)
{
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char d = p[++i];
            if (d == 'r')
                c = '\r';
            else if (d == 'n')
                c = '\n';
            else if (d == '\\')
                c = '\\';
            else if (d == 'x' && i + 2 < n) {
                unsigned v = 0;
                sscanf(p + i + 1, "%2x", &v);
                c = (char)v;
                i += 2;
            }
        }
        tu_put(out, &c, 1);
    }
    if (!out->buf)
        tu_puts(out, "");
}

/*
 * The body of the nth (0-based) message that reached DATA_END: the bytes of
 * the "E: BODY" line(s) since the last "E: DATA" line ("" when none).
 */
static bool body_of(const char *log, int nth, tu_log_t *out)
{
    const char *body = NULL;
    size_t blen = 0;
    int c = 0;
    for (const char *p = log; p && *p; p = next_line(p)) {
        size_t n = line_len(p);
        if (is_ev_line(p, n, SMTP_EV_DATA))
            body = NULL, blen = 0;
        else if (starts_with(p, n, "E: BODY ")) {
            body = p + 8;
            blen = n - 8;
        } else if (is_ev_line(p, n, SMTP_EV_DATA_END)) {
            if (c++ == nth) {
                unescape(body ? body : "", blen, out);
                return true;
            }
        }
    }
    return false;
}

/* Assert that the nth delivered body is exactly `want` (wire form). */
static bool body_is(const char *log, int nth, const char *want, size_t wlen)
{
    tu_log_t b = { 0 };
    bool ok = body_of(log, nth, &b) && b.len == wlen && memcmp(b.buf, want, wlen) == 0;
    if (!ok) {
        tu_log_t w = { 0 };
        tu_put_escaped(&w, slice_make(want, wlen));
        tu_note("body #%d differs; want \"%s\"\n--- log ---\n%s-----------\n", nth, w.buf ? w.buf : "", log);
        tu_free_log(&w);
    }
    tu_free_log(&b);
    return ok;
}
#define BODY_IS(log, nth, lit) assert_true(body_is((log), (nth), (lit), sizeof(lit) - 1))

/*
 * The smuggling checker: would a strict downstream reader, given the
 * forwarded body after the CRLF that ended DATA and followed by the ".\r\n"
 * that completes the end-of-data marker, end the message exactly where
 * mxgate did? That needs: no bare CR, no bare LF, the body empty or ending
 * in CRLF, and the first CRLF "." CRLF being the final one.
 */
static bool wire_body_safe(const char *b, size_t n, const char **why)
{
    for (size_t i = 0; i < n; i++) {
        if (b[i] == '\r' && (i + 1 >= n || b[i + 1] != '\n')) {
            *why = "bare CR";
            return false;
        }
        if (b[i] == '\n' && (i == 0 || b[i - 1] != '\r')) {
            *why = "bare LF";
            return false;
        }
    }
    if (n && (n < 2 || b[n - 2] != '\r' || b[n - 1] != '\n')) {
        *why = "does not end in CRLF";
        return false;
    }
    tu_log_t w = { 0 };
    tu_puts(&w, "\r\n");
    tu_put(&w, b, n);
    tu_puts(&w, ".\r\n");
    const char *m = memmem(w.buf, w.len, "\r\n.\r\n", 5);
    bool ok = m && (size_t)(m - w.buf) == n;
    tu_free_log(&w);
    if (!ok)
        *why = "a line holding only \".\" ends the message early";
    return ok;
}

/* Check every body that reached DATA_END in a log. */
static bool delivered_bodies_safe(const char *log)
{
    int msgs = count_ev(log, SMTP_EV_DATA_END);
    for (int i = 0; i < msgs; i++) {
        tu_log_t b = { 0 };
        const char *why = "";
        bool ok = body_of(log, i, &b) && wire_body_safe(b.buf, b.len, &why);
        tu_free_log(&b);
        if (!ok) {
            tu_note("body #%d unsafe to forward: %s\n--- log ---\n%s-----------\n", i, why, log);
            return false;
        }
    }
    return true;
}

/* Print up to 100 characters of a line, around column `at`. */
static void print_excerpt(const char *tag, const char *line, size_t at)
{
    size_t n = line ? line_len(line) : 0;
    size_t from = at > 40 ? at - 40 : 0;
    size_t k = n > from ? n - from : 0;
    if (k > 100)
        k = 100;
    tu_note("  %s (%zu chars, from column %zu): %.*s%s\n", tag, n, from, (int)k, line ? line + from : "",
         from + k < n ? "..." : "");
}

/* Compare two logs; print the first differing line (and small logs whole). */
static bool logs_equal(const char *want, const char *got, const char *sample, const char *how)
{
    if (strcmp(want, got) == 0)
        return true;
    const char *a = want, *b = got;
    int line = 1;
    while (a && b && *a && *b) {
        size_t al = line_len(a), bl = line_len(b);
        if (al != bl || memcmp(a, b, al) != 0)
            break;
        a = next_line(a), b = next_line(b), line++;
    }
    size_t col = 0;
    while (a && b && a[col] && a[col] == b[col] && a[col] != '\n')
        col++;
    tu_note("sample \"%s\" fed %s: log differs from the whole feed at line %d, column %zu\n", sample, how,
         line, col);
    print_excerpt("whole", a, col);
    print_excerpt("split", b, col);
    if (strlen(want) + strlen(got) < 6000)
        tu_note("--- whole ---\n%s--- split ---\n%s-------------\n", want, got);
    return false;
}

/* ------------------------------------------------------------------ */
/* Verdict callbacks                                                   */
/* ------------------------------------------------------------------ */

/* Refuse recipients in bad.example. */
static int verdict_bad_domain(const smtp_event_t *ev, int *code, const char **esc, const char **text, void *arg)
{
    (void)arg;
    if (ev->type == SMTP_EV_RCPT && slice_ieq(ev->path.domain, "bad.example")) {
        *code = 550;
        *esc = "5.7.1";
        *text = "relaying denied";
        return 1;
    }
    return 0;
}

/* A fixed verdict for every event of one type: the callback it names. */
#define FIXED_VERDICT(fn, evtype, c, e, t)                                                                     \
    static int fn(const smtp_event_t *ev, int *code, const char **esc, const char **text, void *arg)          \
    {                                                                                                          \
        (void)arg;                                                                                             \
        if (ev->type != (evtype))                                                                              \
            return 0;                                                                                          \
        *code = (c);                                                                                           \
        *esc = (e);                                                                                            \
        *text = (t);                                                                                           \
        return 1;                                                                                              \
    }

/* Accept a message with a queue id in the text. */
FIXED_VERDICT(verdict_queued, SMTP_EV_DATA_END, 250, "2.0.0", "queued as ABC123")
/* Refuse every MAIL. */
FIXED_VERDICT(verdict_refuse_mail, SMTP_EV_MAIL, 550, "5.7.1", "sender refused")
/* STARTTLS refused: no certificate, the TLS library failed... */
FIXED_VERDICT(verdict_no_tls, SMTP_EV_STARTTLS, 454, "4.7.0", "TLS not available due to local problem")
/* Refuse every message at end of data. */
FIXED_VERDICT(verdict_spam, SMTP_EV_DATA_END, 554, "5.7.1", "looks like spam")

/* ------------------------------------------------------------------ */
/* Sample sessions                                                     */
/* ------------------------------------------------------------------ */

typedef struct sample {
    const char *name;
    enum cfg_kind cfg;
    tu_verdict_fn verdict;
    const char *expect; /* reply signature of the whole feed; NULL: not checked */
    const char *data;
    size_t len;
} sample_t;

#define SAMPLE(name, cfg, verdict, expect, lit) { name, cfg, verdict, expect, lit, sizeof(lit) - 1 }

#define TX_OK "250 2.1.0|250 2.1.5|354|250 2.0.0"
#define TX_HEAD "EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"

static const sample_t static_samples[] = {
    SAMPLE("plain", CFG_DEFAULT, NULL, "220|250|" TX_OK "|221 2.0.0|CLOSED",
           "EHLO client.example\r\n"
           "MAIL FROM:<alice@example.org>\r\n"
           "RCPT TO:<bob@example.com>\r\n"
           "DATA\r\n"
           "Subject: hi\r\n"
           "\r\n"
           "Hello Bob.\r\n"
           ".\r\n"
           "QUIT\r\n"),
    SAMPLE("pipelined group", CFG_DEFAULT, NULL,
           "220|250|250 2.1.0|250 2.1.5|250 2.1.5|354|250 2.0.0|221 2.0.0|CLOSED",
           "EHLO client.example\r\n"
           "MAIL FROM:<a@example.org> SIZE=42 BODY=8BITMIME\r\n"
           "RCPT TO:<b@example.com>\r\n"
           "RCPT TO:<c@example.com>\r\n"
           "DATA\r\n"
           "Subject: p\r\n\r\nbody\r\n.\r\n"
           "QUIT\r\n"),
    SAMPLE("dot-stuffed", CFG_DEFAULT, NULL, "220|250|" TX_OK "|221 2.0.0|CLOSED",
           "HELO client.example\r\n"
           "MAIL FROM:<a@example.org>\r\n"
           "RCPT TO:<b@example.com>\r\n"
           "DATA\r\n"
           "..leading dot\r\n"
           "...\r\n"
           "..\r\n"
           "mid.dot .\r\n"
           ".\r\n"
           "QUIT\r\n"),
    SAMPLE("empty body", CFG_DEFAULT, NULL, "220|250|" TX_OK "|221 2.0.0|CLOSED",
           "EHLO client.example\r\n"
           "MAIL FROM:<>\r\n"
           "RCPT TO:<b@example.com>\r\n"
           "DATA\r\n"
           ".\r\n"
           "QUIT\r\n"),
    SAMPLE("dot not at line start", CFG_DEFAULT, NULL, "220|250|" TX_OK "|221 2.0.0|CLOSED",
           "EHLO client.example\r\n"
           "MAIL FROM:<a@example.org>\r\n"
           "RCPT TO:<b@example.com>\r\n"
           "DATA\r\n"
           "hello.\r\n"
           "QUIT\r\n"
           "world\r\n"
           ".\r\n"
           "QUIT\r\n"),
    SAMPLE("waits for the end of data", CFG_DEFAULT, NULL, "220|250|250 2.1.0|250 2.1.5|354|EOF",
           "EHLO client.example\r\n"
           "MAIL FROM:<a@example.org>\r\n"
           "RCPT TO:<b@example.com>\r\n"
           "DATA\r\n"
           "hello.\r\n"
           "QUIT\r\n"),
    SAMPLE("two messages", CFG_DEFAULT, NULL,
           "220|250|" TX_OK "|250 2.1.0|250 2.1.5|250 2.0.0|" TX_OK "|250 2.0.0|221 2.0.0|CLOSED",
           "EHLO client.example\r\n"
           "MAIL FROM:<a@example.org>\r\n"
           "RCPT TO:<b@example.com>\r\n"
           "DATA\r\n"
           "first\r\n"
           ".\r\n"
           "MAIL FROM:<c@example.org>\r\n"
           "RCPT TO:<d@example.com>\r\n"
           "RSET\r\n"
           "MAIL FROM:<e@example.org>\r\n"
           "RCPT TO:<f@example.com>\r\n"
           "DATA\r\n"
           "second\r\n"
           ".\r\n"
           "NOOP\r\n"
           "QUIT\r\n"),
    SAMPLE("errors mid-session", CFG_DEFAULT, NULL,
           "220|250|500 5.5.2|503 5.5.1|501 5.1.7|250 2.1.0|503 5.5.1|501 5.1.3|555 5.5.4|250 2.1.5|"
           "252 2.5.2|502 5.5.1|354|250 2.0.0|221 2.0.0|CLOSED",
           "EHLO client.example\r\n"
           "FOO bar\r\n"
           "RCPT TO:<b@example.com>\r\n"
           "MAIL FROM:a@example.org\r\n"
           "MAIL FROM:<a@example.org>\r\n"
           "MAIL FROM:<a@example.org>\r\n"
           "RCPT TO:<>\r\n"
           "RCPT TO:<b@example.com> NOTIFY=NEVER\r\n"
           "RCPT TO:<b@example.com>\r\n"
           "VRFY bob\r\n"
           "EXPN list\r\n"
           "DATA\r\n"
           "body\r\n"
           ".\r\n"
           "QUIT\r\n"),
    SAMPLE("quit then junk", CFG_DEFAULT, NULL, "220|250|221 2.0.0|CLOSED",
           "EHLO client.example\r\n"
           "QUIT\r\n"
           "MAIL FROM:<x@y.example>\r\n"
           "\x00\xff garbage\r\n"
           "GET / HTTP/1.1\r\n"),
    SAMPLE("verdict refuses one recipient", CFG_DEFAULT, verdict_bad_domain,
           "220|250|250 2.1.0|550 5.7.1|250 2.1.5|354|250 2.0.0|221 2.0.0|CLOSED",
           "EHLO client.example\r\n"
           "MAIL FROM:<a@example.org>\r\n"
           "RCPT TO:<x@bad.example>\r\n"
           "RCPT TO:<y@good.example>\r\n"
           "DATA\r\n"
           "hi\r\n"
           ".\r\n"
           "QUIT\r\n"),
    SAMPLE("custom end-of-data reply", CFG_DEFAULT, verdict_queued, "220|250|" TX_OK "|221 2.0.0|CLOSED",
           "EHLO client.example\r\n"
           "MAIL FROM:<a@example.org>\r\n"
           "RCPT TO:<b@example.com>\r\n"
           "DATA\r\n"
           "x\r\n"
           ".\r\n"
           "QUIT\r\n"),
    SAMPLE("smtputf8", CFG_UTF8, NULL, "220|250|553 5.6.7|" TX_OK "|221 2.0.0|CLOSED",
           "EHLO client.example\r\n"
           "MAIL FROM:<d\xc3\xbcrst@example.org>\r\n"
           "MAIL FROM:<d\xc3\xbcrst@example.org> SMTPUTF8\r\n"
           "RCPT TO:<j\xc3\xb6rg@example.com>\r\n"
           "DATA\r\n"
           "Subject: gr\xc3\xbc\xc3\x9f\r\n\r\nx\r\n"
           ".\r\n"
           "QUIT\r\n"),
    SAMPLE("case-insensitive verbs", CFG_DEFAULT, NULL,
           "220|250|" TX_OK "|250 2.0.0|250 2.0.0|221 2.0.0|CLOSED",
           "ehlo client.example\r\n"
           "mail from:<a@example.org>\r\n"
           "RcPt To:<b@example.com>\r\n"
           "data\r\n"
           "x\r\n"
           ".\r\n"
           "noop\r\n"
           "rset\r\n"
           "QuIt\r\n"),
    SAMPLE("bare CR in a command", CFG_DEFAULT, NULL, "220|250|500 5.5.2|250 2.0.0|221 2.0.0|CLOSED",
           "EHLO client.example\r\n"
           "NO\rOP\r\n"
           "NOOP\r\n"
           "QUIT\r\n"),
    SAMPLE("bare LF in a command", CFG_DEFAULT, NULL, NULL,
           "EHLO client.example\r\n"
           "NOOP\n"
           "\r\n"
           "QUIT\r\n"),
    SAMPLE("bare LF commands, normalized", CFG_NORMALIZE, NULL, "220|250|250 2.0.0|" TX_OK "|221 2.0.0|CLOSED",
           "EHLO client.example\n"
           "NOOP\n"
           "MAIL FROM:<a@example.org>\n"
           "RCPT TO:<b@example.com>\r\n"
           "DATA\n"
           "x\r\n"
           ".\r\n"
           "QUIT\n"),
    SAMPLE("NUL in a command", CFG_DEFAULT, NULL, "220|250|500 5.5.2|250 2.0.0|221 2.0.0|CLOSED",
           "EHLO client.example\r\n"
           "NO\0OP\r\n"
           "NOOP\r\n"
           "QUIT\r\n"),
    SAMPLE("bare LF in a body", CFG_DEFAULT, NULL, "220|250|250 2.1.0|250 2.1.5|354|554 5.5.2|221 2.0.0|CLOSED",
           "EHLO client.example\r\n"
           "MAIL FROM:<a@example.org>\r\n"
           "RCPT TO:<b@example.com>\r\n"
           "DATA\r\n"
           "line one\nline two\r\n"
           ".\r\n"
           "QUIT\r\n"),
    SAMPLE("bare LF in a body, normalized", CFG_NORMALIZE, NULL, "220|250|" TX_OK "|221 2.0.0|CLOSED",
           "EHLO client.example\r\n"
           "MAIL FROM:<a@example.org>\r\n"
           "RCPT TO:<b@example.com>\r\n"
           "DATA\r\n"
           "line one\n.line two\rthree\r\n"
           ".\r\n"
           "QUIT\r\n"),
    SAMPLE("http request", CFG_DEFAULT, NULL, "220|221 2.7.0|CLOSED",
           "GET / HTTP/1.1\r\n"
           "Host: mx.test\r\n"
           "\r\n"),
    SAMPLE("small limits", CFG_SMALL, NULL,
           "220|250|250 2.1.0|250 2.1.5|250 2.1.5|452 4.5.3|354|554 5.5.2|"
           "250 2.1.0|250 2.1.5|354|250 2.0.0|221 2.0.0|CLOSED",
           "EHLO client.example\r\n"
           "MAIL FROM:<a@example.org>\r\n"
           "RCPT TO:<b@example.com>\r\n"
           "RCPT TO:<c@example.com>\r\n"
           "RCPT TO:<d@example.com>\r\n"
           "DATA\r\n"
           "this line is longer than forty octets, by a lot\r\n"
           ".\r\n"
           "MAIL FROM:<a@example.org>\r\n"
           "RCPT TO:<b@example.com>\r\n"
           "DATA\r\n"
           "short\r\n"
           ".\r\n"
           "QUIT\r\n"),
    SAMPLE("error limit", CFG_SMALL, NULL, "220|250|500 5.5.2|503 5.5.1|501 5.5.4|500 5.5.2|502 5.5.1|421 4.7.0|CLOSED",
           "EHLO client.example\r\n"
           "FOO\r\n"
           "RCPT TO:<b@example.com>\r\n"
           "HELO\r\n"
           "BAR\r\n"
           "TURN\r\n"
           "NOOP\r\n"
           "NOOP\r\n"),
    /* STARTTLS: whatever follows an accepted one in plaintext is dropped,
     * unanswered, however it is cut (tu_drive never does the handshake) */
    SAMPLE("starttls, plaintext behind it dropped", CFG_TLS, NULL, "220|250|220 2.0.0|EOF",
           "EHLO client.example\r\n"
           "STARTTLS\r\n"
           "NOOP\r\n"
           "MAIL FROM:<a@b.example>\r\n"
           "QUIT\r\n"),
    SAMPLE("starttls refused by the caller", CFG_TLS, verdict_no_tls,
           "220|250|454 4.7.0|250 2.0.0|" TX_OK "|221 2.0.0|CLOSED",
           "EHLO client.example\r\n"
           "STARTTLS\r\n"
           "NOOP\r\n"
           "MAIL FROM:<a@example.org>\r\n"
           "RCPT TO:<b@example.com>\r\n"
           "DATA\r\n"
           "x\r\n"
           ".\r\n"
           "QUIT\r\n"),
    SAMPLE("starttls refused by the engine", CFG_TLS, NULL,
           "220|501 5.5.4|250|250 2.1.0|503 5.5.1|250 2.0.0|220 2.0.0|EOF",
           "STARTTLS now\r\n"
           "EHLO client.example\r\n"
           "MAIL FROM:<a@example.org>\r\n"
           "STARTTLS\r\n"
           "RSET\r\n"
           "starttls\r\n"
           "NOOP\r\n"),
    SAMPLE("starttls required", CFG_TLS_ENCRYPT, NULL, "220|250|530 5.7.0|503 5.5.1|250 2.0.0|250|220 2.0.0|EOF",
           "EHLO client.example\r\n"
           "MAIL FROM:<a@example.org>\r\n"
           "RCPT TO:<b@example.com>\r\n"
           "RSET\r\n"
           "HELO client.example\r\n"
           "STARTTLS\r\n"
           "MAIL FROM:<a@example.org>\r\n"),
    SAMPLE("starttls behind a refused MAIL", CFG_TLS, verdict_refuse_mail, "220|250|550 5.7.1|503 5.5.1|220 2.0.0|EOF",
           "EHLO client.example\r\n"
           "MAIL FROM:<a@example.org>\r\n"
           "RCPT TO:<b@example.com>\r\n"
           "STARTTLS\r\n"
           "NOOP\r\n"),
    SAMPLE("starttls off", CFG_DEFAULT, NULL, "220|250|502 5.5.1|250 2.0.0|221 2.0.0|CLOSED",
           "EHLO client.example\r\n"
           "STARTTLS\r\n"
           "NOOP\r\n"
           "QUIT\r\n"),
};

#define NSTATIC (sizeof static_samples / sizeof static_samples[0])
#define MAX_SAMPLES (NSTATIC + 32)

static sample_t samples[MAX_SAMPLES];
static size_t nsamples;
static tu_log_t sample_store[MAX_SAMPLES]; /* bytes of generated samples */

static const char *const smuggle_markers[] = { "\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n", "\r\n.\r" };
#define NMARKERS (sizeof smuggle_markers / sizeof smuggle_markers[0])
static const char *const smuggle_names[] = {
    "smuggling LF.LF", "smuggling CR.CR", "smuggling LF.CRLF", "smuggling CRLF.LF", "smuggling CRLF.CR",
};
static const char *const smuggle_names_norm[] = {
    "smuggling LF.LF, normalized",   "smuggling CR.CR, normalized",   "smuggling LF.CRLF, normalized",
    "smuggling CRLF.LF, normalized", "smuggling CRLF.CR, normalized",
};

static const char SMUGGLE_HEAD[] = "EHLO client.example\r\n"
                                   "MAIL FROM:<alice@example.org>\r\n"
                                   "RCPT TO:<bob@example.com>\r\n"
                                   "DATA\r\n"
                                   "Subject: hi\r\n"
                                   "\r\n"
                                   "hello";
static const char SMUGGLE_TAIL[] = "MAIL FROM:<evil@x.example>\r\n"
                                   "RCPT TO:<victim@y.example>\r\n"
                                   "DATA\r\n"
                                   "Subject: smuggled\r\n"
                                   "\r\n"
                                   "evil\r\n"
                                   ".\r\n"
                                   "QUIT\r\n";

static void build_smuggle(tu_log_t *b, const char *marker)
{
    tu_puts(b, SMUGGLE_HEAD);
    tu_puts(b, marker);
    tu_puts(b, SMUGGLE_TAIL);
}

static void repeat(tu_log_t *b, char c, size_t n)
{
    for (size_t i = 0; i < n; i++)
        tu_put(b, &c, 1);
}

static sample_t *add_sample(const char *name, enum cfg_kind cfg, const char *expect)
{
    assert_true(nsamples < MAX_SAMPLES);
    sample_t *s = &samples[nsamples];
    memset(s, 0, sizeof *s);
    s->name = name;
    s->cfg = cfg;
    s->expect = expect;
    return s;
}

static void finish_sample(sample_t *s)
{
    s->data = sample_store[nsamples].buf;
    s->len = sample_store[nsamples].len;
    nsamples++;
}

static int setup_samples(void **state)
{
    (void)state;
    nsamples = 0;
    for (size_t i = 0; i < NSTATIC; i++)
        samples[nsamples++] = static_samples[i];

    for (size_t m = 0; m < NMARKERS; m++) {
        sample_t *s = add_sample(smuggle_names[m], CFG_DEFAULT,
                                 "220|250|250 2.1.0|250 2.1.5|354|554 5.5.2|221 2.0.0|CLOSED");
        build_smuggle(&sample_store[nsamples], smuggle_markers[m]);
        finish_sample(s);
        s = add_sample(smuggle_names_norm[m], CFG_NORMALIZE, "220|250|" TX_OK "|221 2.0.0|CLOSED");
        build_smuggle(&sample_store[nsamples], smuggle_markers[m]);
        finish_sample(s);
    }

    /* Command line of exactly line_max (512) octets, then one more. */
    sample_t *s = add_sample("command line at the limit", CFG_DEFAULT,
                             "220|250|250 2.0.0|500 5.5.2|250 2.0.0|221 2.0.0|CLOSED");
    tu_log_t *b = &sample_store[nsamples];
    tu_puts(b, "EHLO client.example\r\nNOOP ");
    repeat(b, 'a', 512 - 7);
    tu_puts(b, "\r\nNOOP ");
    repeat(b, 'b', 512 - 6);
    tu_puts(b, "\r\nNOOP\r\nQUIT\r\n");
    finish_sample(s);

    /* A very long command line: one 500, then back in step. */
    s = add_sample("very long command line", CFG_DEFAULT, "220|250|500 5.5.2|250 2.0.0|221 2.0.0|CLOSED");
    b = &sample_store[nsamples];
    tu_puts(b, "EHLO client.example\r\nMAIL FROM:<");
    repeat(b, 'x', 3000);
    tu_puts(b, "@example.org>\r\nNOOP\r\nQUIT\r\n");
    finish_sample(s);

    /* RCPT of exactly line_max (64) octets with CFG_SMALL, then 65. */
    s = add_sample("small command line limit", CFG_SMALL,
                   "220|250|250 2.1.0|250 2.1.5|500 5.5.2|250 2.0.0|221 2.0.0|CLOSED");
    b = &sample_store[nsamples];
    tu_puts(b, "EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<");
    repeat(b, 'r', 64 - 24);
    tu_puts(b, "@example.com>\r\nRCPT TO:<");
    repeat(b, 's', 64 - 23);
    tu_puts(b, "@example.com>\r\nRSET\r\nQUIT\r\n");
    finish_sample(s);

    /* Text lines of exactly text_line_max (1000) octets, then 1001. */
    s = add_sample("text line at the limit", CFG_DEFAULT,
                   "220|250|" TX_OK "|250 2.1.0|250 2.1.5|354|554 5.5.2|250 2.0.0|221 2.0.0|CLOSED");
    b = &sample_store[nsamples];
    tu_puts(b, "EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n");
    repeat(b, 'c', 998);
    tu_puts(b, "\r\n.\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n");
    repeat(b, 'd', 999);
    tu_puts(b, "\r\nNOOP\r\n.\r\nNOOP\r\nQUIT\r\n");
    finish_sample(s);

    /* Bodies of exactly size_max (200) octets, then 201, with CFG_SMALL. */
    s = add_sample("body size at the limit", CFG_SMALL,
                   "220|250|" TX_OK "|250 2.1.0|250 2.1.5|354|552 5.3.4|250 2.1.0|250 2.0.0|221 2.0.0|CLOSED");
    b = &sample_store[nsamples];
    tu_puts(b, "EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n");
    for (int i = 0; i < 10; i++) {
        repeat(b, (char)('a' + i), 18);
        tu_puts(b, "\r\n");
    }
    tu_puts(b, ".\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n");
    for (int i = 0; i < 10; i++) {
        repeat(b, (char)('a' + i), i == 9 ? 19 : 18);
        tu_puts(b, "\r\n");
    }
    tu_puts(b, ".\r\nMAIL FROM:<a@example.org>\r\nRSET\r\nQUIT\r\n");
    finish_sample(s);

    return 0;
}

static int teardown_samples(void **state)
{
    (void)state;
    for (size_t i = 0; i < MAX_SAMPLES; i++)
        tu_free_log(&sample_store[i]);
    nsamples = 0;
    return 0;
}

static const sample_t *find_sample(const char *name)
{
    for (size_t i = 0; i < nsamples; i++)
        if (strcmp(samples[i].name, name) == 0)
            return &samples[i];
    fail_msg("no sample \"%s\"", name);
    return NULL;
}

static char *run_sample(const sample_t *sm, const size_t *splits, size_t nsplits, size_t outcap)
{
    smtp_config_t cfg = make_cfg(sm->cfg);
    tu_log_t l = tu_drive(&cfg, sm->data, sm->len, splits, nsplits, outcap, sm->verdict, NULL);
    return l.buf;
}

/* ------------------------------------------------------------------ */
/* Configuration                                                       */
/* ------------------------------------------------------------------ */

static void test_config_defaults(void **state)
{
    (void)state;
    smtp_config_t c;
    memset(&c, 0xa5, sizeof c);
    smtp_config_defaults(&c, SLICE_LIT("mx.test"));
    assert_true(slice_eq(c.hostname, SLICE_LIT("mx.test")));
    assert_int_equal(c.line_max, 512);
    assert_int_equal(c.text_line_max, 1000);
    assert_int_equal(c.rcpt_max, 100);
    assert_int_equal(c.error_max, 20);
    assert_int_equal(c.size_max, 10485760);
    assert_int_equal(c.bare_newline, SCAN_BARE_REJECT);
    assert_int_equal(c.tls, SMTP_TLS_OFF);
}

/* ------------------------------------------------------------------ */
/* 1. Commands and replies                                             */
/* ------------------------------------------------------------------ */

static void test_greeting(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    char *log = RUN(&cfg, "");
    /* RFC 5321 4.2: "220 " domain; the greeting carries no enhanced code */
    assert_true(starts_with(log, strlen(log), "S: 220 mx.test"));
    assert_true(replies_are(log, "220|EOF"));
    assert_int_equal(count_prefix(log, "S: "), 1);
    free(log);
}

static void test_helo(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    char *log = RUN(&cfg, "HELO client.example\r\nQUIT\r\n");
    assert_true(replies_are(log, "220|250|221 2.0.0|CLOSED"));
    /* RFC 5321 4.1.1.1: "250" SP Domain; one line, no extensions */
    assert_int_equal(count_prefix(log, "S: 250 mx.test"), 1);
    assert_int_equal(count_prefix(log, "S: 250-"), 0);
    assert_true(ev_has(log, SMTP_EV_HELO, 0, " arg=client.example"));
    free(log);
}

/* Is there an EHLO line "250-KW..." or "250 KW..." (exact when exact)? */
static bool ehlo_kw(const char *log, const char *kw, bool exact)
{
    char a[128], b[128];
    snprintf(a, sizeof a, "S: 250-%s%s", kw, exact ? "\\r\\n" : "");
    snprintf(b, sizeof b, "S: 250 %s%s", kw, exact ? "\\r\\n" : "");
    if (exact)
        return has_line(log, a) || has_line(log, b);
    return count_prefix(log, a) + count_prefix(log, b) > 0;
}

static void test_ehlo_keywords(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_UTF8);
    char *log = RUN(&cfg, "EHLO client.example\r\nQUIT\r\n");
    assert_true(replies_are(log, "220|250|221 2.0.0|CLOSED"));
    assert_true(ev_has(log, SMTP_EV_EHLO, 0, " arg=client.example"));
    /* RFC 5321 4.1.1.1: first line "250-" Domain; keyword lines follow */
    assert_int_equal(count_prefix(log, "S: 250-mx.test"), 1);
    assert_true(ehlo_kw(log, "PIPELINING", true));
    assert_true(ehlo_kw(log, "SIZE 10485760", true));
    assert_true(ehlo_kw(log, "8BITMIME", true));
    assert_true(ehlo_kw(log, "ENHANCEDSTATUSCODES", true));
    assert_true(ehlo_kw(log, "SMTPUTF8", true));
    /* not offered: no BDAT, no TLS, no AUTH, no DSN */
    assert_false(ehlo_kw(log, "CHUNKING", false));
    assert_false(ehlo_kw(log, "STARTTLS", false));
    assert_false(ehlo_kw(log, "AUTH", false));
    assert_false(ehlo_kw(log, "DSN", true));
    /* one multi-line reply: 5 continuation lines, one final line */
    assert_int_equal(count_prefix(log, "S: 250-"), 5);
    assert_int_equal(count_prefix(log, "S: 250 "), 1);
    free(log);
}

static void test_ehlo_no_smtputf8(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    cfg.smtputf8 = false;
    cfg.size_max = 1000;
    char *log = RUN(&cfg, "EHLO client.example\r\nQUIT\r\n");
    assert_true(replies_are(log, "220|250|221 2.0.0|CLOSED"));
    assert_false(ehlo_kw(log, "SMTPUTF8", false));
    assert_true(ehlo_kw(log, "PIPELINING", true));
    assert_true(ehlo_kw(log, "SIZE 1000", true));
    assert_true(ehlo_kw(log, "8BITMIME", true));
    assert_true(ehlo_kw(log, "ENHANCEDSTATUSCODES", true));
    assert_int_equal(count_prefix(log, "S: 250-"), 4);
    free(log);
}

static void test_plain_transaction(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    char *log = RUN(&cfg, "EHLO client.example\r\n"
                          "MAIL FROM:<alice@example.org>\r\n"
                          "RCPT TO:<bob@example.com>\r\n"
                          "DATA\r\n"
                          "Subject: hi\r\n"
                          "\r\n"
                          "Hello Bob.\r\n"
                          ".\r\n"
                          "QUIT\r\n");
    assert_true(replies_are(log, "220|250|250 2.1.0|250 2.1.5|354|250 2.0.0|221 2.0.0|CLOSED"));
    assert_true(ev_has(log, SMTP_EV_MAIL, 0, " <alice@example.org> local=alice domain=example.org"));
    assert_true(ev_has(log, SMTP_EV_RCPT, 0, " <bob@example.com> local=bob domain=example.com"));
    assert_int_equal(count_ev(log, SMTP_EV_DATA), 1);
    assert_int_equal(count_ev(log, SMTP_EV_DATA_END), 1);
    BODY_IS(log, 0, "Subject: hi\r\n\r\nHello Bob.\r\n");
    assert_int_equal(count_ev(log, SMTP_EV_QUIT), 1);
    /* the log ends with the close */
    size_t n = strlen(log);
    assert_true(n >= 7 && strcmp(log + n - 7, "CLOSED\n") == 0);
    free(log);
}

static void test_rset(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    char *log = RUN(&cfg, "EHLO client.example\r\n"
                          "MAIL FROM:<a@example.org>\r\n"
                          "RCPT TO:<b@example.com>\r\n"
                          "RSET\r\n"
                          "RCPT TO:<b@example.com>\r\n"
                          "DATA\r\n"
                          "MAIL FROM:<a@example.org>\r\n"
                          "RSET\r\n"
                          "RSET\r\n"
                          "QUIT\r\n");
    assert_true(replies_are(log, "220|250|250 2.1.0|250 2.1.5|250 2.0.0|503 5.5.1|503 5.5.1|250 2.1.0|"
                                 "250 2.0.0|250 2.0.0|221 2.0.0|CLOSED"));
    assert_int_equal(count_ev(log, SMTP_EV_RSET), 3);
    free(log);
}

static void test_noop_vrfy_expn_help(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    char *log = RUN(&cfg, "NOOP\r\n"
                          "HELP\r\n"
                          "EHLO client.example\r\n"
                          "NOOP\r\n"
                          "NOOP ignored argument\r\n"
                          "VRFY bob\r\n"
                          "EXPN staff\r\n"
                          "HELP MAIL\r\n"
                          "QUIT\r\n");
    assert_true(replies_are(log, "220|250 2.0.0|214 2.0.0|250|250 2.0.0|250 2.0.0|252 2.5.2|502 5.5.1|"
                                 "214 2.0.0|221 2.0.0|CLOSED"));
    assert_int_equal(count_ev(log, SMTP_EV_NOOP), 3);
    assert_true(ev_has(log, SMTP_EV_VRFY, 0, " arg=bob"));
    assert_int_equal(count_ev(log, SMTP_EV_EXPN), 1);
    assert_int_equal(count_ev(log, SMTP_EV_HELP), 2);
    assert_true(ev_has(log, SMTP_EV_HELP, 1, " arg=MAIL"));
    free(log);
}

static void test_quit(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    char *log = RUN(&cfg, "QUIT\r\nNOOP\r\n");
    assert_true(replies_are(log, "220|221 2.0.0|CLOSED"));
    assert_int_equal(count_ev(log, SMTP_EV_QUIT), 1);
    assert_int_equal(count_ev(log, SMTP_EV_NOOP), 0);
    free(log);

    /* QUIT in the middle of a transaction ends the session too */
    log = RUN(&cfg, "EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nQUIT\r\nRCPT TO:<b@example.com>\r\n");
    assert_true(replies_are(log, "220|250|250 2.1.0|221 2.0.0|CLOSED"));
    assert_int_equal(count_ev(log, SMTP_EV_RCPT), 0);
    free(log);
}

static void test_case_insensitive(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    char *log = RUN(&cfg, "ehlo client.example\r\n"
                          "mail from:<a@example.org>\r\n"
                          "RcPt To:<b@example.com>\r\n"
                          "DaTa\r\n"
                          "x\r\n"
                          ".\r\n"
                          "Helo client.example\r\n"
                          "nOoP\r\n"
                          "rset\r\n"
                          "vrfy bob\r\n"
                          "quit\r\n");
    assert_true(replies_are(log, "220|250|250 2.1.0|250 2.1.5|354|250 2.0.0|250|250 2.0.0|250 2.0.0|252 2.5.2|"
                                 "221 2.0.0|CLOSED"));
    assert_true(ev_has(log, SMTP_EV_MAIL, 0, " <a@example.org>"));
    assert_true(ev_has(log, SMTP_EV_RCPT, 0, " <b@example.com>"));
    free(log);
}

static void test_not_implemented(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    char *log = RUN(&cfg, "EHLO client.example\r\n"
                          "SEND FROM:<a@example.org>\r\n"
                          "SOML FROM:<a@example.org>\r\n"
                          "SAML FROM:<a@example.org>\r\n"
                          "TURN\r\n"
                          "ETRN example.org\r\n"
                          "AUTH PLAIN\r\n"
                          "STARTTLS\r\n"
                          "send from:<a@example.org>\r\n"
                          "NOOP\r\n"
                          "QUIT\r\n");
    assert_true(replies_are(log, "220|250|502 5.5.1|502 5.5.1|502 5.5.1|502 5.5.1|502 5.5.1|502 5.5.1|"
                                 "502 5.5.1|502 5.5.1|250 2.0.0|221 2.0.0|CLOSED"));
    assert_int_equal(count_ev(log, SMTP_EV_ERROR), 8);
    assert_true(ev_has(log, SMTP_EV_ERROR, 0, err_sub(SMTP_ERR_NOT_IMPL)));
    free(log);

    /* BDAT (no CHUNKING advertised) is refused, like the others */
    log = RUN(&cfg, "EHLO client.example\r\nBDAT 0 LAST\r\nQUIT\r\n");
    assert_true(replies_are(log, "220|250|502 5.5.1|221 2.0.0|CLOSED"));
    free(log);
}

static void test_unknown_verb(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    char *log = RUN(&cfg, "FOO\r\nXYZZY plugh\r\nMAILX FROM:<a@example.org>\r\nEHLO client.example\r\nQUIT\r\n");
    assert_true(replies_are(log, "220|500 5.5.2|500 5.5.2|500 5.5.2|250|221 2.0.0|CLOSED"));
    assert_true(ev_has(log, SMTP_EV_ERROR, 0, err_sub(SMTP_ERR_UNKNOWN)));
    assert_int_equal(count_ev(log, SMTP_EV_MAIL), 0);
    free(log);
}

static void test_sequence_errors(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    char *log = RUN(&cfg, "MAIL FROM:<a@example.org>\r\n" /* before HELO */
                          "RCPT TO:<b@example.com>\r\n"
                          "DATA\r\n"
                          "EHLO client.example\r\n"
                          "RCPT TO:<b@example.com>\r\n" /* before MAIL */
                          "DATA\r\n"                    /* before MAIL */
                          "MAIL FROM:<a@example.org>\r\n"
                          "DATA\r\n"                    /* before RCPT */
                          "MAIL FROM:<a@example.org>\r\n" /* second MAIL */
                          "RCPT TO:<b@example.com>\r\n"
                          "DATA\r\n"
                          ".\r\n"
                          "QUIT\r\n");
    assert_true(replies_are(log, "220|503 5.5.1|503 5.5.1|503 5.5.1|250|503 5.5.1|503 5.5.1|250 2.1.0|"
                                 "503 5.5.1|503 5.5.1|250 2.1.5|354|250 2.0.0|221 2.0.0|CLOSED"));
    assert_int_equal(count_ev(log, SMTP_EV_MAIL), 1); /* the others were refused */
    assert_true(ev_has(log, SMTP_EV_ERROR, 0, err_sub(SMTP_ERR_SEQUENCE)));
    free(log);
}

static void test_data_all_rcpt_refused(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    char *log = RUNV(&cfg,
                     "EHLO client.example\r\n"
                     "MAIL FROM:<a@example.org>\r\n"
                     "RCPT TO:<x@bad.example>\r\n"
                     "RCPT TO:<y@BAD.example>\r\n"
                     "DATA\r\n"
                     "RSET\r\n"
                     "MAIL FROM:<a@example.org>\r\n"
                     "RCPT TO:<z@good.example>\r\n"
                     "DATA\r\n"
                     ".\r\n"
                     "QUIT\r\n",
                     verdict_bad_domain);
    assert_true(replies_are(log, "220|250|250 2.1.0|550 5.7.1|550 5.7.1|554 5.5.1|250 2.0.0|250 2.1.0|250 2.1.5|"
                                 "354|250 2.0.0|221 2.0.0|CLOSED"));
    assert_true(ev_has(log, SMTP_EV_ERROR, 0, err_sub(SMTP_ERR_NO_RCPT)));
    free(log);
}

static void test_syntax_errors(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    cfg.error_max = 100;
    char *log = RUN(&cfg, "HELO\r\n"
                          "EHLO\r\n"
                          "EHLO client.example\r\n"
                          "MAIL\r\n"
                          "MAIL <a@example.org>\r\n"     /* no FROM: */
                          "MAIL FROM:a@example.org\r\n"  /* no brackets */
                          "MAIL FROM:<a@example.org\r\n" /* no closing bracket */
                          "MAIL FROM:<a@@example.org>\r\n"
                          "MAIL FROM:<@example.org>\r\n"
                          "MAIL FROM:<a@>\r\n"
                          "MAIL FROM:<a b@example.org>\r\n"
                          "MAIL FROM:<postmaster>\r\n"   /* a reverse path needs a domain */
                          "MAIL FROM:<a@example.org>\r\n"
                          "RCPT\r\n"
                          "RCPT <b@example.com>\r\n"     /* no TO: */
                          "RCPT TO:b@example.com\r\n"
                          "RCPT TO:<b@@example.com>\r\n"
                          "RCPT TO:<b@example..com>\r\n"
                          "RCPT TO:<>\r\n"
                          "RCPT TO:<b@example.com>\r\n"
                          "DATA now\r\n"
                          "RSET all\r\n"
                          "QUIT now\r\n"
                          "QUIT\r\n");
    assert_true(replies_are(log, "220|501 5.5.4|501 5.5.4|250|501 5.5.4|501 5.5.4|501 5.1.7|501 5.1.7|501 5.1.7|"
                                 "501 5.1.7|501 5.1.7|501 5.1.7|501 5.1.7|250 2.1.0|501 5.5.4|501 5.5.4|"
                                 "501 5.1.3|501 5.1.3|501 5.1.3|501 5.1.3|250 2.1.5|501 5.5.4|501 5.5.4|"
                                 "501 5.5.4|221 2.0.0|CLOSED"));
    assert_true(ev_has(log, SMTP_EV_ERROR, 0, err_sub(SMTP_ERR_SYNTAX)));
    /* the transaction survived all of that */
    assert_int_equal(count_ev(log, SMTP_EV_MAIL), 1);
    assert_int_equal(count_ev(log, SMTP_EV_RCPT), 1);
    free(log);
}

static void test_helo_resets_transaction(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    char *log = RUN(&cfg, "EHLO client.example\r\n"
                          "MAIL FROM:<a@example.org>\r\n"
                          "RCPT TO:<b@example.com>\r\n"
                          "EHLO client.example\r\n"
                          "RCPT TO:<b@example.com>\r\n"
                          "DATA\r\n"
                          "MAIL FROM:<a@example.org>\r\n"
                          "RCPT TO:<b@example.com>\r\n"
                          "HELO client.example\r\n"
                          "DATA\r\n"
                          "MAIL FROM:<c@example.org>\r\n"
                          "QUIT\r\n");
    assert_true(replies_are(log, "220|250|250 2.1.0|250 2.1.5|250|503 5.5.1|503 5.5.1|250 2.1.0|250 2.1.5|"
                                 "250|503 5.5.1|250 2.1.0|221 2.0.0|CLOSED"));
    free(log);

    /* nothing of the old transaction survives: refused recipients (DATA is
     * 503, not 554) and the recipient count (rcpt_max applies anew) */
    log = RUNV(&cfg,
               "EHLO client.example\r\n"
               "MAIL FROM:<a@example.org>\r\n"
               "RCPT TO:<x@bad.example>\r\n"
               "EHLO client.example\r\n"
               "MAIL FROM:<a@example.org>\r\n"
               "DATA\r\n"
               "QUIT\r\n",
               verdict_bad_domain);
    assert_true(replies_are(log, "220|250|250 2.1.0|550 5.7.1|250|250 2.1.0|503 5.5.1|221 2.0.0|CLOSED"));
    free(log);
    cfg.rcpt_max = 1;
    log = RUN(&cfg, "EHLO client.example\r\n"
                    "MAIL FROM:<a@example.org>\r\n"
                    "RCPT TO:<b@example.com>\r\n"
                    "HELO client.example\r\n"
                    "MAIL FROM:<a@example.org>\r\n"
                    "RCPT TO:<b@example.com>\r\n"
                    "QUIT\r\n");
    assert_true(replies_are(log, "220|250|250 2.1.0|250 2.1.5|250|250 2.1.0|250 2.1.5|221 2.0.0|CLOSED"));
    free(log);
}

/* ------------------------------------------------------------------ */
/* 2. Paths                                                            */
/* ------------------------------------------------------------------ */

static void test_paths(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    char *log = RUN(&cfg, "EHLO client.example\r\n"
                          "MAIL FROM:<>\r\n"
                          "RCPT TO:<\"john doe\"@example.com>\r\n"
                          "RCPT TO:<user@[192.0.2.1]>\r\n"
                          "RCPT TO:<user@[IPv6:2001:db8::1]>\r\n"
                          "RCPT TO:<@a.example,@b.example:user@c.example>\r\n"
                          "RCPT TO:<postmaster>\r\n"
                          "RCPT TO:<Postmaster>\r\n"
                          "RSET\r\n"
                          "MAIL FROM:<\"john doe\"@example.com>\r\n"
                          "RSET\r\n"
                          "MAIL FROM:<user@[192.0.2.1]>\r\n"
                          "RSET\r\n"
                          "MAIL FROM:<user@[IPv6:2001:db8::1]>\r\n"
                          "RSET\r\n"
                          "MAIL FROM:<@a.example,@b.example:user@c.example>\r\n"
                          "QUIT\r\n");
    assert_true(replies_are(log, "220|250|250 2.1.0|250 2.1.5|250 2.1.5|250 2.1.5|250 2.1.5|250 2.1.5|250 2.1.5|"
                                 "250 2.0.0|250 2.1.0|250 2.0.0|250 2.1.0|250 2.0.0|250 2.1.0|250 2.0.0|"
                                 "250 2.1.0|221 2.0.0|CLOSED"));
    /* null sender */
    assert_true(ev_has(log, SMTP_EV_MAIL, 0, " <> "));
    assert_true(ev_has(log, SMTP_EV_MAIL, 0, " null"));
    /* quoted local part, kept quoted */
    assert_true(ev_has(log, SMTP_EV_RCPT, 0, " <\"john doe\"@example.com> local=\"john doe\" domain=example.com"));
    assert_true(ev_has(log, SMTP_EV_MAIL, 1, " <\"john doe\"@example.com> local=\"john doe\" domain=example.com"));
    /* address literals */
    assert_true(ev_has(log, SMTP_EV_RCPT, 1, " <user@[192.0.2.1]> local=user domain=[192.0.2.1]"));
    assert_true(ev_has(log, SMTP_EV_RCPT, 2, " <user@[IPv6:2001:db8::1]> local=user domain=[IPv6:2001:db8::1]"));
    assert_true(ev_has(log, SMTP_EV_MAIL, 2, " domain=[192.0.2.1]"));
    assert_true(ev_has(log, SMTP_EV_MAIL, 3, " domain=[IPv6:2001:db8::1]"));
    /* source route stripped */
    assert_true(ev_has(log, SMTP_EV_RCPT, 3, " <user@c.example> local=user domain=c.example"));
    assert_true(ev_has(log, SMTP_EV_MAIL, 4, " <user@c.example> local=user domain=c.example"));
    /* postmaster, any case */
    assert_true(ev_has(log, SMTP_EV_RCPT, 4, " postmaster"));
    assert_true(ev_has(log, SMTP_EV_RCPT, 5, " postmaster"));
    free(log);
}

/* RFC 6531 3.4: a non-ASCII address needs the SMTPUTF8 parameter on MAIL. */
static void test_utf8_needs_param(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_UTF8);
    char *log = RUN(&cfg, "EHLO client.example\r\n"
                          "MAIL FROM:<d\xc3\xbcrst@example.org>\r\n"
                          "MAIL FROM:<a@example.org>\r\n"
                          "RCPT TO:<j\xc3\xb6rg@example.com>\r\n"
                          "QUIT\r\n");
    assert_true(replies_are(log, "220|250|553 5.6.7|250 2.1.0|553 5.6.7|221 2.0.0|CLOSED"));
    assert_true(ev_has(log, SMTP_EV_ERROR, 0, err_sub(SMTP_ERR_UTF8)));
    assert_int_equal(count_ev(log, SMTP_EV_MAIL), 1);
    assert_int_equal(count_ev(log, SMTP_EV_RCPT), 0);
    free(log);
}

static void test_utf8_paths(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_UTF8);
    char *log = RUN(&cfg, "EHLO client.example\r\n"
                          "MAIL FROM:<d\xc3\xbcrst@example.org> SMTPUTF8\r\n"
                          "RCPT TO:<j\xc3\xb6rg@b\xc3\xbc\x63her.example>\r\n"
                          "RCPT TO:<plain@example.com>\r\n"
                          "QUIT\r\n");
    assert_true(replies_are(log, "220|250|250 2.1.0|250 2.1.5|250 2.1.5|221 2.0.0|CLOSED"));
    assert_true(ev_has(log, SMTP_EV_MAIL, 0, " <d\\xc3\\xbcrst@example.org>"));
    assert_true(ev_has(log, SMTP_EV_MAIL, 0, " utf8"));
    assert_true(ev_has(log, SMTP_EV_MAIL, 0, " smtputf8=1"));
    assert_true(ev_has(log, SMTP_EV_RCPT, 0, " <j\\xc3\\xb6rg@b\\xc3\\xbccher.example>"));
    assert_true(ev_has(log, SMTP_EV_RCPT, 0, " utf8"));
    free(log);
}

/* Invalid UTF-8 is refused even with SMTPUTF8 (RFC 6531 3.3: UTF-8 per
 * RFC 3629): a stray octet, overlong, surrogate, truncated, above U+10FFFF. */
static void test_utf8_invalid(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_UTF8);
    static const char *const bad[] = {
        "d\xffrst", "d\xc0\xafrst", "d\xed\xa0\x80rst", "d\xc3", "d\xf4\x90\x80\x80rst",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char in[256];
        int n = snprintf(in, sizeof in,
                         "EHLO client.example\r\nMAIL FROM:<%s@example.org> SMTPUTF8\r\n"
                         "MAIL FROM:<a@example.org> SMTPUTF8\r\nRCPT TO:<%s@example.com>\r\nQUIT\r\n",
                         bad[i], bad[i]);
        char *log = run_full(&cfg, in, (size_t)n, NULL, NULL);
        /* a malformed address is a syntax error: 501 5.1.7 / 501 5.1.3 */
        assert_true(replies_are(log, "220|250|501 5.1.7|250 2.1.0|501 5.1.3|221 2.0.0|CLOSED"));
        assert_int_equal(count_ev(log, SMTP_EV_RCPT), 0);
        free(log);
    }
}

/* With cfg.smtputf8 off, SMTPUTF8 is an unknown parameter (555) and a
 * non-ASCII address is refused (553). */
static void test_utf8_disabled(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    cfg.smtputf8 = false;
    char *log = RUN(&cfg, "EHLO client.example\r\n"
                          "MAIL FROM:<a@example.org> SMTPUTF8\r\n"
                          "MAIL FROM:<d\xc3\xbcrst@example.org> SMTPUTF8\r\n"
                          "MAIL FROM:<a@example.org>\r\n"
                          "RCPT TO:<j\xc3\xb6rg@example.com>\r\n"
                          "QUIT\r\n");
    assert_true(replies_are(log, "220|250|555 5.5.4|555 5.5.4|250 2.1.0|553 5.6.7|221 2.0.0|CLOSED"));
    assert_int_equal(count_ev(log, SMTP_EV_MAIL), 1);
    free(log);
}

/* ------------------------------------------------------------------ */
/* 3. Parameters                                                       */
/* ------------------------------------------------------------------ */

static void test_mail_params(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_UTF8);
    char *log = RUN(&cfg, "EHLO client.example\r\n"
                          "MAIL FROM:<a@example.org> SIZE=12345\r\nRSET\r\n"
                          "MAIL FROM:<a@example.org> BODY=7BIT\r\nRSET\r\n"
                          "MAIL FROM:<a@example.org> BODY=8BITMIME\r\nRSET\r\n"
                          "MAIL FROM:<a@example.org> SMTPUTF8\r\nRSET\r\n"
                          "MAIL FROM:<a@example.org> SIZE=10 BODY=8BITMIME SMTPUTF8\r\nRSET\r\n"
                          "MAIL FROM:<a@example.org> size=77 body=8bitmime\r\nRSET\r\n"
                          "MAIL FROM:<a@example.org>\r\nRSET\r\n"
                          "MAIL FROM:<a@example.org> FOO=BAR\r\n"
                          "MAIL FROM:<a@example.org> SIZE=abc\r\n"
                          "QUIT\r\n");
    assert_true(replies_are(log, "220|250|250 2.1.0|250 2.0.0|250 2.1.0|250 2.0.0|250 2.1.0|250 2.0.0|"
                                 "250 2.1.0|250 2.0.0|250 2.1.0|250 2.0.0|250 2.1.0|250 2.0.0|250 2.1.0|"
                                 "250 2.0.0|555 5.5.4|501 5.5.4|221 2.0.0|CLOSED"));
    assert_true(ev_has(log, SMTP_EV_MAIL, 0, " size=12345 body=0 smtputf8=0"));
    assert_true(ev_has(log, SMTP_EV_MAIL, 1, " body=1 "));
    assert_true(ev_has(log, SMTP_EV_MAIL, 2, " body=2 "));
    assert_true(ev_has(log, SMTP_EV_MAIL, 3, " smtputf8=1"));
    assert_true(ev_has(log, SMTP_EV_MAIL, 4, " size=10 body=2 smtputf8=1"));
    assert_true(ev_has(log, SMTP_EV_MAIL, 5, " size=77 body=2 "));
    assert_true(ev_has(log, SMTP_EV_MAIL, 6, " size=-0 body=0 smtputf8=0"));
    assert_int_equal(count_ev(log, SMTP_EV_MAIL), 7);
    assert_true(ev_has(log, SMTP_EV_ERROR, 0, err_sub(SMTP_ERR_PARAM)));
    assert_true(ev_has(log, SMTP_EV_ERROR, 1, err_sub(SMTP_ERR_SYNTAX)));
    free(log);
}

static void test_rcpt_params(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    char *log = RUN(&cfg, "EHLO client.example\r\n"
                          "MAIL FROM:<a@example.org>\r\n"
                          "RCPT TO:<b@example.com> NOTIFY=NEVER\r\n"
                          "RCPT TO:<b@example.com> ORCPT=rfc822;b@example.com\r\n"
                          "RCPT TO:<b@example.com>\r\n"
                          "QUIT\r\n");
    assert_true(replies_are(log, "220|250|250 2.1.0|555 5.5.4|555 5.5.4|250 2.1.5|221 2.0.0|CLOSED"));
    assert_int_equal(count_ev(log, SMTP_EV_RCPT), 1);
    assert_true(ev_has(log, SMTP_EV_ERROR, 0, err_sub(SMTP_ERR_PARAM)));
    free(log);
}

/* ------------------------------------------------------------------ */
/* 4. Limits                                                           */
/* ------------------------------------------------------------------ */

static void test_line_max(void **state)
{
    (void)state;
    const sample_t *sm = find_sample("command line at the limit");
    char *log = run_sample(sm, NULL, 0, OUTCAP);
    assert_true(replies_are(log, sm->expect));
    assert_true(ev_has(log, SMTP_EV_ERROR, 0, err_sub(SMTP_ERR_LINE_TOO_LONG)));
    free(log);

    sm = find_sample("very long command line");
    log = run_sample(sm, NULL, 0, OUTCAP);
    assert_true(replies_are(log, sm->expect));
    assert_int_equal(count_ev(log, SMTP_EV_MAIL), 0);
    free(log);

    /* a non-default limit, on a command that is parsed */
    sm = find_sample("small command line limit");
    log = run_sample(sm, NULL, 0, OUTCAP);
    assert_true(replies_are(log, sm->expect));
    assert_int_equal(count_ev(log, SMTP_EV_RCPT), 1);
    free(log);
}

static void test_rcpt_max(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    tu_log_t in = { 0 }, want = { 0 };
    tu_puts(&in, "EHLO client.example\r\nMAIL FROM:<a@example.org>\r\n");
    tu_puts(&want, "220|250|250 2.1.0");
    for (int i = 0; i < 101; i++) {
        char r[64];
        snprintf(r, sizeof r, "RCPT TO:<r%d@example.com>\r\n", i);
        tu_puts(&in, r);
        tu_puts(&want, i < 100 ? "|250 2.1.5" : "|452 4.5.3");
    }
    tu_puts(&in, "DATA\r\nx\r\n.\r\nQUIT\r\n");
    tu_puts(&want, "|354|250 2.0.0|221 2.0.0|CLOSED");
    char *log = run_full(&cfg, in.buf, in.len, NULL, NULL);
    assert_true(replies_are(log, want.buf));
    assert_int_equal(count_ev(log, SMTP_EV_RCPT), 100);
    assert_true(ev_has(log, SMTP_EV_ERROR, 0, err_sub(SMTP_ERR_RCPT_MAX)));
    free(log);
    tu_free_log(&in);
    tu_free_log(&want);

    cfg.rcpt_max = 3;
    log = RUN(&cfg, "EHLO client.example\r\nMAIL FROM:<a@example.org>\r\n"
                    "RCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\n"
                    "RCPT TO:<d@example.com>\r\nRCPT TO:<e@example.com>\r\n"
                    "DATA\r\nx\r\n.\r\n"
                    "MAIL FROM:<a@example.org>\r\nRCPT TO:<a@example.com>\r\n" /* a new tx counts anew */
                    "QUIT\r\n");
    assert_true(replies_are(log, "220|250|250 2.1.0|250 2.1.5|250 2.1.5|250 2.1.5|452 4.5.3|452 4.5.3|354|"
                                 "250 2.0.0|250 2.1.0|250 2.1.5|221 2.0.0|CLOSED"));
    free(log);
}

static void test_size_at_mail(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    cfg.size_max = 1000;
    char *log = RUN(&cfg, "EHLO client.example\r\n"
                          "MAIL FROM:<a@example.org> SIZE=1000\r\n"
                          "RSET\r\n"
                          "MAIL FROM:<a@example.org> SIZE=1001\r\n"
                          "MAIL FROM:<a@example.org> SIZE=18446744073709551615\r\n"
                          "RCPT TO:<b@example.com>\r\n"
                          "QUIT\r\n");
    assert_true(ehlo_kw(log, "SIZE 1000", true));
    assert_true(replies_are(log, "220|250|250 2.1.0|250 2.0.0|552 5.3.4|552 5.3.4|503 5.5.1|221 2.0.0|CLOSED"));
    assert_true(ev_has(log, SMTP_EV_ERROR, 0, err_sub(SMTP_ERR_SIZE)));
    assert_int_equal(count_ev(log, SMTP_EV_MAIL), 1);
    free(log);
}

static void test_body_size(void **state)
{
    (void)state;
    /* exactly size_max octets is fine, one more is refused after the dot */
    const sample_t *sm = find_sample("body size at the limit");
    char *log = run_sample(sm, NULL, 0, OUTCAP);
    assert_true(replies_are(log, sm->expect));
    assert_int_equal(count_ev(log, SMTP_EV_DATA_END), 1);
    assert_int_equal(count_ev(log, SMTP_EV_DATA_REJECTED), 1);
    assert_true(ev_has(log, SMTP_EV_DATA_REJECTED, 0, err_sub(SMTP_ERR_BODY_SIZE)));
    free(log);

    /* far over the limit: one reply, after the final dot, then usable */
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    cfg.size_max = 100;
    tu_log_t in = { 0 };
    tu_puts(&in, "EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n");
    for (int i = 0; i < 200; i++)
        tu_puts(&in, "0123456789012345678901234567890123456789\r\nNOOP\r\n");
    tu_puts(&in, ".\r\nMAIL FROM:<a@example.org>\r\nQUIT\r\n");
    log = run_full(&cfg, in.buf, in.len, NULL, NULL);
    assert_true(replies_are(log, "220|250|250 2.1.0|250 2.1.5|354|552 5.3.4|250 2.1.0|221 2.0.0|CLOSED"));
    assert_int_equal(count_ev(log, SMTP_EV_DATA_END), 0);
    assert_true(ev_has(log, SMTP_EV_DATA_REJECTED, 0, err_sub(SMTP_ERR_BODY_SIZE)));
    free(log);
    tu_free_log(&in);
}

static void test_body_line(void **state)
{
    (void)state;
    const sample_t *sm = find_sample("text line at the limit");
    char *log = run_sample(sm, NULL, 0, OUTCAP);
    assert_true(replies_are(log, sm->expect));
    assert_int_equal(count_ev(log, SMTP_EV_DATA_END), 1);
    assert_true(ev_has(log, SMTP_EV_DATA_REJECTED, 0, err_sub(SMTP_ERR_BODY_LINE)));
    free(log);

    /* RFC 5321 4.5.3.1.6: the limit does not count the dot doubled for
     * transparency: 1001 octets on the wire, 1000 unstuffed, is fine */
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    tu_log_t in = { 0 };
    tu_puts(&in, TX_HEAD "..");
    repeat(&in, 'x', 997);
    tu_puts(&in, "\r\n.\r\nQUIT\r\n");
    log = run_full(&cfg, in.buf, in.len, NULL, NULL);
    assert_true(replies_are(log, "220|250|" TX_OK "|221 2.0.0|CLOSED"));
    free(log);
    tu_free_log(&in);

    /* a small limit, crossed on the last line before the dot */
    sm = find_sample("small limits");
    log = run_sample(sm, NULL, 0, OUTCAP);
    assert_true(replies_are(log, sm->expect));
    assert_true(ev_has(log, SMTP_EV_DATA_REJECTED, 0, err_sub(SMTP_ERR_BODY_LINE)));
    assert_true(ev_has(log, SMTP_EV_ERROR, 0, err_sub(SMTP_ERR_RCPT_MAX)));
    free(log);
}

static void test_error_limit(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    cfg.error_max = 3;
    /* error_max errors are replied; then 421 and the session is over */
    char *log = RUN(&cfg, "EHLO client.example\r\nFOO\r\nBAR\r\nBAZ\r\nQUX\r\nNOOP\r\n");
    assert_true(replies_are(log, "220|250|500 5.5.2|500 5.5.2|500 5.5.2|421 4.7.0|CLOSED"));
    assert_int_equal(count_ev(log, SMTP_EV_NOOP), 0);
    free(log);

    /* one error fewer: the session goes on */
    log = RUN(&cfg, "EHLO client.example\r\nFOO\r\nBAR\r\nNOOP\r\nQUIT\r\n");
    assert_true(replies_are(log, "220|250|500 5.5.2|500 5.5.2|250 2.0.0|221 2.0.0|CLOSED"));
    free(log);

    /* all kinds of refusals count */
    const sample_t *sm = find_sample("error limit");
    log = run_sample(sm, NULL, 0, OUTCAP);
    assert_true(replies_are(log, sm->expect));
    free(log);

    /* the 421 names the host (RFC 5321 4.2: "421 <domain> ...") */
    log = RUN(&cfg, "FOO\r\nFOO\r\nFOO\r\nFOO\r\n");
    assert_true(replies_are(log, "220|500 5.5.2|500 5.5.2|500 5.5.2|421 4.7.0|CLOSED"));
    assert_int_equal(count_prefix(log, "S: 421 4.7.0 mx.test"), 1);
    free(log);
}

/* ------------------------------------------------------------------ */
/* 5. Body wire form                                                   */
/* ------------------------------------------------------------------ */

static void test_body_wire_form(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);

    char *log = RUN(&cfg, TX_HEAD "..leading dot\r\n...\r\n..\r\nmid.dot .\r\n.\r\nQUIT\r\n");
    assert_true(replies_are(log, "220|250|" TX_OK "|221 2.0.0|CLOSED"));
    BODY_IS(log, 0, "..leading dot\r\n...\r\n..\r\nmid.dot .\r\n"); /* not unstuffed */
    free(log);

    log = RUN(&cfg, TX_HEAD ".\r\nQUIT\r\n");
    assert_true(replies_are(log, "220|250|" TX_OK "|221 2.0.0|CLOSED"));
    BODY_IS(log, 0, "");
    free(log);

    log = RUN(&cfg, TX_HEAD "\r\n.\r\nQUIT\r\n"); /* one empty line */
    assert_true(replies_are(log, "220|250|" TX_OK "|221 2.0.0|CLOSED"));
    BODY_IS(log, 0, "\r\n");
    free(log);

    /* "hello.\r\n" is not an end of data, nor ".\r" or "." at the end */
    static const char *const waits[] = {
        TX_HEAD "hello.\r\n",          TX_HEAD "hello\r\n.",       TX_HEAD "hello\r\n.\r",
        TX_HEAD "hello\r\n. \r\nQUIT\r\n", TX_HEAD "hello\r\n.x\r\nQUIT\r\n",
    };
    for (size_t i = 0; i < sizeof waits / sizeof waits[0]; i++) {
        log = run_full(&cfg, waits[i], strlen(waits[i]), NULL, NULL);
        assert_true(replies_are(log, "220|250|250 2.1.0|250 2.1.5|354|EOF"));
        assert_int_equal(count_ev(log, SMTP_EV_DATA_END), 0);
        assert_int_equal(count_ev(log, SMTP_EV_QUIT), 0);
        free(log);
    }

    log = RUN(&cfg, TX_HEAD "hello.\r\nworld\r\n.\r\nQUIT\r\n");
    assert_true(replies_are(log, "220|250|" TX_OK "|221 2.0.0|CLOSED"));
    BODY_IS(log, 0, "hello.\r\nworld\r\n");
    free(log);

    /* 8-bit and binary-ish octets pass through untouched */
    log = RUN(&cfg, TX_HEAD "caf\xc3\xa9 \x01\x7f\xff\r\n.\r\nQUIT\r\n");
    assert_true(replies_are(log, "220|250|" TX_OK "|221 2.0.0|CLOSED"));
    BODY_IS(log, 0, "caf\xc3\xa9 \x01\x7f\xff\r\n");
    free(log);

    /* two messages, each body its own */
    const sample_t *sm = find_sample("two messages");
    log = run_sample(sm, NULL, 0, OUTCAP);
    assert_true(replies_are(log, sm->expect));
    BODY_IS(log, 0, "first\r\n");
    BODY_IS(log, 1, "second\r\n");
    free(log);
}

/* ------------------------------------------------------------------ */
/* 6. SMTP smuggling                                                   */
/* ------------------------------------------------------------------ */

static void test_smuggling_reject(void **state)
{
    (void)state;
    for (size_t m = 0; m < NMARKERS; m++) {
        const sample_t *sm = find_sample(smuggle_names[m]);
        char *log = run_sample(sm, NULL, 0, OUTCAP);
        tu_note("%s\n", sm->name);
        /* no end at the fake marker, 554 after the real one, one MAIL */
        assert_true(replies_are(log, "220|250|250 2.1.0|250 2.1.5|354|554 5.5.2|221 2.0.0|CLOSED"));
        assert_int_equal(count_ev(log, SMTP_EV_MAIL), 1);
        assert_int_equal(count_ev(log, SMTP_EV_RCPT), 1);
        assert_int_equal(count_ev(log, SMTP_EV_DATA), 1);
        assert_int_equal(count_ev(log, SMTP_EV_DATA_END), 0);
        assert_int_equal(count_ev(log, SMTP_EV_DATA_REJECTED), 1);
        assert_true(ev_has(log, SMTP_EV_DATA_REJECTED, 0, " err=") &&
                    (strstr(log, err_sub(SMTP_ERR_BODY_BARE_LF)) || strstr(log, err_sub(SMTP_ERR_BODY_BARE_CR))));
        assert_true(ev_has(log, SMTP_EV_MAIL, 0, " <alice@example.org> "));
        assert_true(ev_has(log, SMTP_EV_RCPT, 0, " <bob@example.com> "));
        free(log);
    }
}

static void test_smuggling_normalize(void **state)
{
    (void)state;
    for (size_t m = 0; m < NMARKERS; m++) {
        const sample_t *sm = find_sample(smuggle_names_norm[m]);
        char *log = run_sample(sm, NULL, 0, OUTCAP);
        tu_note("%s\n", sm->name);
        assert_true(replies_are(log, "220|250|" TX_OK "|221 2.0.0|CLOSED"));
        assert_int_equal(count_ev(log, SMTP_EV_MAIL), 1);
        assert_int_equal(count_ev(log, SMTP_EV_DATA_END), 1);
        assert_int_equal(count_ev(log, SMTP_EV_DATA_REJECTED), 0);
        tu_log_t b = { 0 };
        assert_true(body_of(log, 0, &b));
        const char *why = "";
        bool safe = wire_body_safe(b.buf, b.len, &why);
        if (!safe)
            tu_note("forwarded body unsafe: %s\n--- log ---\n%s", why, log);
        assert_true(safe);
        /* it is all one message: the smuggled part is content */
        assert_non_null(memmem(b.buf, b.len, "hello", 5));
        assert_non_null(memmem(b.buf, b.len, "MAIL FROM:<evil@x.example>\r\n", 28));
        assert_non_null(memmem(b.buf, b.len, "evil\r\n", 6));
        tu_free_log(&b);
        free(log);
    }

    /* the checker itself: it must catch what it is there to catch */
    const char *why = "";
    assert_true(wire_body_safe("", 0, &why));
    assert_true(wire_body_safe("a\r\n..\r\n", 7, &why));
    assert_false(wire_body_safe("a\n.\r\n", 5, &why));
    assert_false(wire_body_safe("a\r.\r\n", 5, &why));
    assert_false(wire_body_safe("a\r\n.\r\nb\r\n", 9, &why));
    assert_false(wire_body_safe(".\r\nb\r\n", 6, &why));
    assert_false(wire_body_safe("a", 1, &why));
}

/* ------------------------------------------------------------------ */
/* 7. Early talkers, junk, bad bytes in commands                       */
/* ------------------------------------------------------------------ */

/* A hand-driven engine, for the tests that tu_drive cannot express. */
typedef struct hand {
    smtp_config_t cfg;
    smtp_out_t o;
    char buf[OUTCAP];
    smtp_t s;
    tu_driver_t d; /* its log: replies via tu_flush_out, events */
} hand_t;

static void hand_init(hand_t *h, enum cfg_kind k)
{
    memset(h, 0, sizeof *h);
    h->cfg = make_cfg(k);
    h->o = (smtp_out_t){ .buf = h->buf, .len = 0, .cap = sizeof h->buf };
    smtp_init(&h->s, &h->cfg, &h->o);
}

static void hand_free(hand_t *h)
{
    smtp_free(&h->s);
    tu_free_log(&h->d.log);
    tu_free_log(&h->d.body);
}

/* Move the output into the log. */
static void hand_flush(hand_t *h)
{
    tu_flush_out(&h->d, &h->o);
}

/* One smtp_feed call on (p, n); events are logged, nothing is answered. */
static smtp_status_t hand_feed(hand_t *h, const char **p, size_t *n, smtp_event_t *ev)
{
    size_t used = 0;
    memset(ev, 0, sizeof *ev);
    smtp_status_t st = smtp_feed(&h->s, *p, *n, &used, ev);
    assert_true(used <= *n);
    *p += used;
    *n -= used;
    hand_flush(h);
    if (st == SMTP_EVENT)
        tu_log_event(&h->d, ev);
    else if (st == SMTP_CLOSED)
        tu_puts(&h->d.log, "CLOSED\n");
    return st;
}

/* Feed until the input is used up or the session closes, accepting all. */
static smtp_status_t hand_run(hand_t *h, const char *p, size_t n)
{
    smtp_event_t ev;
    for (int guard = 0; guard < 10000; guard++) {
        smtp_status_t st = hand_feed(h, &p, &n, &ev);
        if (st == SMTP_EVENT) {
            if (smtp_ev_wants_verdict(ev.type)) {
                smtp_accept(&h->s, ev.slot);
                hand_flush(h);
            }
            continue;
        }
        if (st == SMTP_FULL)
            continue;
        return st;
    }
    fail_msg("engine loops");
    return SMTP_CLOSED;
}

static void test_early_talk(void **state)
{
    (void)state;
    static const char *const inputs[] = { "EHLO early.example\r\n", "E", "QUIT\r\n" };
    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
        hand_t *h = malloc(sizeof *h);
        assert_non_null(h);
        hand_init(h, CFG_DEFAULT);
        /* no smtp_greet: the client talks first */
        smtp_status_t st = hand_run(h, inputs[i], strlen(inputs[i]));
        assert_int_equal(st, SMTP_CLOSED);
        const char *log = h->d.log.buf;
        assert_non_null(log);
        assert_true(replies_are(log, "554 5.5.0|CLOSED"));
        assert_int_equal(count_prefix(log, "S: 220"), 0);
        assert_int_equal(count_ev(log, SMTP_EV_EARLY_TALK), 1);
        assert_int_equal(count_ev(log, SMTP_EV_EHLO), 0);
        assert_int_equal(count_ev(log, SMTP_EV_QUIT), 0);
        /* and it stays closed */
        size_t used = 99;
        smtp_event_t ev;
        assert_int_equal(smtp_feed(&h->s, "NOOP\r\n", 6, &used, &ev), SMTP_CLOSED);
        hand_free(h);
        free(h);
    }
}

/* postscreen's protocol tests: each failure is remembered in violations,
 * and acted on as the config says. */
/* A greeted engine whose config may still be changed (it is read by
 * pointer at each feed). */
static void hand_greeted(hand_t *h, enum cfg_kind k)
{
    hand_init(h, k);
    smtp_greet(&h->s);
    hand_flush(h);
}

static smtp_status_t hand_pieces(hand_t *h, const char *const *pieces)
{
    smtp_status_t st = SMTP_AGAIN;
    for (size_t i = 0; pieces[i] && st != SMTP_CLOSED; i++)
        st = hand_run(h, pieces[i], strlen(pieces[i]));
    return st;
}

static void test_pipelining_before_ehlo_reply(void **state)
{
    (void)state;
    /* in one read: MAIL sent before the EHLO's reply could have come */
    static const char *const ahead[] = { "EHLO c.example\r\nMAIL FROM:<a@example.org>\r\n", "RCPT TO:<b@example.com>\r\n", NULL };
    /* the same commands, each after its reply: no violation */
    static const char *const waited[] = { "EHLO c.example\r\n", "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n", NULL };
    const uint8_t actions[] = { SMTP_VA_IGNORE, SMTP_VA_ENFORCE, SMTP_VA_DROP };
    const char *expect[] = { "220|250|250 2.1.0|250 2.1.5", "220|250|250 2.1.0|550 5.5.1", "220|521 5.5.1|CLOSED" };
    for (size_t i = 0; i < 3; i++) {
        hand_t h;
        hand_greeted(&h, CFG_DEFAULT);
        h.cfg.on_pipelining = actions[i];
        hand_pieces(&h, ahead);
        assert_true(replies_are(h.d.log.buf, expect[i]));
        assert_int_equal(h.s.violations, SMTP_V_PIPELINING);
        assert_int_equal(h.s.enforced, actions[i] == SMTP_VA_ENFORCE ? SMTP_V_PIPELINING : 0);
        hand_free(&h);

        hand_greeted(&h, CFG_DEFAULT);
        h.cfg.on_pipelining = actions[i];
        assert_int_equal(hand_pieces(&h, waited), SMTP_AGAIN);
        assert_true(replies_are(h.d.log.buf, "220|250|250 2.1.0|250 2.1.5"));
        assert_int_equal(h.s.violations, 0);
        hand_free(&h);
    }
    /* HELO too; and PIPELINING once offered makes MAIL, RCPT, DATA in one
     * read fine */
    hand_t h;
    hand_greeted(&h, CFG_DEFAULT);
    h.cfg.on_pipelining = SMTP_VA_DROP;
    static const char *const helo[] = { "HELO c.example\r\nQUIT\r\n", NULL };
    assert_int_equal(hand_pieces(&h, helo), SMTP_CLOSED);
    assert_true(replies_are(h.d.log.buf, "220|521 5.5.1|CLOSED"));
    hand_free(&h);
    hand_greeted(&h, CFG_DEFAULT);
    h.cfg.on_pipelining = SMTP_VA_DROP;
    static const char *const group[] = { "EHLO c.example\r\n",
                                         "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n", NULL };
    hand_pieces(&h, group);
    assert_true(replies_are(h.d.log.buf, "220|250|250 2.1.0|250 2.1.5|354"));
    assert_int_equal(h.s.violations, 0);
    hand_free(&h);
}

static void test_non_smtp_command_actions(void **state)
{
    (void)state;
    static const char *const in[] = { "EHLO c.example\r\n", "GET / HTTP/1.1\r\n", "MAIL FROM:<a@example.org>\r\n",
                                      "RCPT TO:<b@example.com>\r\n", NULL };
    const uint8_t actions[] = { SMTP_VA_IGNORE, SMTP_VA_ENFORCE, SMTP_VA_DROP };
    const char *expect[] = { "220|250|500 5.5.2|250 2.1.0|250 2.1.5", "220|250|500 5.5.2|250 2.1.0|550 5.5.1",
                             "220|250|221 2.7.0|CLOSED" };
    for (size_t i = 0; i < 3; i++) {
        hand_t h;
        hand_greeted(&h, CFG_DEFAULT);
        h.cfg.on_non_smtp = actions[i];
        hand_pieces(&h, in);
        assert_true(replies_are(h.d.log.buf, expect[i]));
        assert_int_equal(h.s.violations, SMTP_V_NON_SMTP);
        hand_free(&h);
    }
}

static void test_bare_newline_command_actions(void **state)
{
    (void)state;
    static const char *const in[] = { "EHLO c.example\n", "MAIL FROM:<a@example.org>\r\n", "RCPT TO:<b@example.com>\r\n",
                                      NULL };
    const uint8_t actions[] = { SMTP_VA_IGNORE, SMTP_VA_ENFORCE, SMTP_VA_DROP };
    /* bare_newline = reject: the line itself gets 500 5.5.2 (no EHLO: MAIL is out of sequence) */
    const char *reject[] = { "220|500 5.5.2|503 5.5.1|503 5.5.1", "220|500 5.5.2|503 5.5.1|503 5.5.1",
                             "220|521 5.5.1|CLOSED" };
    /* bare_newline = normalize: the line counts as a command */
    const char *normalize[] = { "220|250|250 2.1.0|250 2.1.5", "220|250|250 2.1.0|550 5.5.1", "220|521 5.5.1|CLOSED" };
    for (size_t i = 0; i < 3; i++)
        for (int norm = 0; norm < 2; norm++) {
            hand_t h;
            hand_greeted(&h, norm ? CFG_NORMALIZE : CFG_DEFAULT);
            h.cfg.on_bare_newline = actions[i];
            hand_pieces(&h, in);
            assert_true(replies_are(h.d.log.buf, norm ? normalize[i] : reject[i]));
            assert_int_equal(h.s.violations, SMTP_V_BARE_NEWLINE);
            hand_free(&h);
        }
}

static void test_junk_commands(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    char *log = RUN(&cfg, "GET / HTTP/1.1\r\nHost: mx.test\r\n\r\n");
    assert_true(replies_are(log, "220|221 2.7.0|CLOSED"));
    assert_true(ev_has(log, SMTP_EV_ERROR, 0, err_sub(SMTP_ERR_JUNK)));
    free(log);

    log = RUN(&cfg, "POST /submit HTTP/1.1\r\nHost: mx.test\r\n\r\n");
    assert_true(replies_are(log, "220|221 2.7.0|CLOSED"));
    free(log);

    log = RUN(&cfg, "Subject: hi\r\nNOOP\r\n");
    assert_true(replies_are(log, "220|221 2.7.0|CLOSED"));
    free(log);

    /* headers after a refused DATA: a client that did not wait for 354 */
    log = RUN(&cfg, "EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nDATA\r\n"
                    "Subject: hi\r\n\r\nbody\r\n.\r\n");
    assert_true(replies_are(log, "220|250|250 2.1.0|503 5.5.1|221 2.7.0|CLOSED"));
    assert_int_equal(count_ev(log, SMTP_EV_DATA_END), 0);
    free(log);
}

/*
 * A command ended by a bare LF is refused with 500 5.5.2 and does nothing.
 * Whether the engine takes the LF as the end of the line is not specified,
 * so "NOOP\n\r\n" is refused either as one line or as two (the second an
 * empty line); either way the NOOP is not done and QUIT still works.
 */
static void bare_lf_command_refused(enum cfg_kind k)
{
    smtp_config_t cfg = make_cfg(k);
    char *log = RUN(&cfg, "EHLO client.example\r\nNOOP\n\r\nQUIT\r\n");
    tu_log_t sig = { 0 };
    signature(log, &sig);
    size_t n = strlen(sig.buf);
    bool ok = strncmp(sig.buf, "220|250|500 5.5.2|", 18) == 0 && strstr(sig.buf, "250 2.0.0") == NULL &&
              n > 17 && strcmp(sig.buf + n - 17, "|221 2.0.0|CLOSED") == 0;
    if (!ok)
        tu_note("a bare LF ended NOOP\n--- log ---\n%s", log);
    assert_true(ok);
    assert_int_equal(count_ev(log, SMTP_EV_NOOP), 0);
    assert_true(ev_has(log, SMTP_EV_ERROR, 0, err_sub(SMTP_ERR_BARE_LF)));
    tu_free_log(&sig);
    free(log);

    /* a MAIL ended by a bare LF does not start a transaction */
    log = RUN(&cfg, "EHLO client.example\r\nMAIL FROM:<a@example.org>\n\r\nRCPT TO:<b@example.com>\r\n");
    assert_int_equal(count_ev(log, SMTP_EV_MAIL), 0);
    assert_true(ev_has(log, SMTP_EV_ERROR, 0, err_sub(SMTP_ERR_BARE_LF)));
    free(log);
}

static void test_bare_newline_command(void **state)
{
    (void)state;
    bare_lf_command_refused(CFG_DEFAULT);

    /* a bare CR inside a command line */
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    char *log = RUN(&cfg, "EHLO client.example\r\nNO\rOP\r\nNOOP\r\nQUIT\r\n");
    assert_true(replies_are(log, "220|250|500 5.5.2|250 2.0.0|221 2.0.0|CLOSED"));
    assert_true(ev_has(log, SMTP_EV_ERROR, 0, err_sub(SMTP_ERR_CONTROL)));
    free(log);
}

/*
 * With bare_newline = normalize (Postfix 3.9's compatibility mode) a command
 * line ended by a bare LF is taken as a line, as smtp.h says; a bare CR
 * inside a command is still a control byte and refused.
 */
static void test_bare_newline_command_normalize(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_NORMALIZE);
    char *log = RUN(&cfg, "EHLO client.example\nNOOP\nMAIL FROM:<a@example.org>\nQUIT\n");
    assert_true(replies_are(log, "220|250|250 2.0.0|250 2.1.0|221 2.0.0|CLOSED"));
    assert_int_equal(count_ev(log, SMTP_EV_NOOP), 1);
    free(log);
    log = RUN(&cfg, "EHLO client.example\r\nNO\rOP\r\nQUIT\r\n");
    assert_true(replies_are(log, "220|250|500 5.5.2|221 2.0.0|CLOSED"));
    free(log);
}

static void test_nul_in_command(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    char *log = RUN(&cfg, "EHLO client.example\r\nNO\0OP\r\nNOOP\r\nQUIT\r\n");
    assert_true(replies_are(log, "220|250|500 5.5.2|250 2.0.0|221 2.0.0|CLOSED"));
    assert_true(ev_has(log, SMTP_EV_ERROR, 0, err_sub(SMTP_ERR_CONTROL)));
    free(log);

    /* a NUL inside an address does not reach the address parser */
    log = RUN(&cfg, "EHLO client.example\r\nMAIL FROM:<a\0b@example.org>\r\nMAIL FROM:<a@example.org>\r\nQUIT\r\n");
    assert_true(replies_are(log, "220|250|500 5.5.2|250 2.1.0|221 2.0.0|CLOSED"));
    assert_int_equal(count_ev(log, SMTP_EV_MAIL), 1);
    free(log);
}

/* ------------------------------------------------------------------ */
/* 8. Verdicts                                                         */
/* ------------------------------------------------------------------ */

static void test_verdict_refuse_rcpt(void **state)
{
    (void)state;
    const sample_t *sm = find_sample("verdict refuses one recipient");
    char *log = run_sample(sm, NULL, 0, OUTCAP);
    assert_true(replies_are(log, sm->expect));
    assert_int_equal(count_ev(log, SMTP_EV_RCPT), 2);
    assert_int_equal(count_ev(log, SMTP_EV_DATA_END), 1);
    BODY_IS(log, 0, "hi\r\n");
    free(log);

    /* a message refused at end of data; the session goes on */
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    log = RUNV(&cfg, "EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
                     "x\r\n.\r\nMAIL FROM:<a@example.org>\r\nQUIT\r\n",
               verdict_spam);
    assert_true(replies_are(log, "220|250|250 2.1.0|250 2.1.5|354|554 5.7.1|250 2.1.0|221 2.0.0|CLOSED"));
    free(log);
}

static void test_verdict_refuse_mail(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    char *log = RUNV(&cfg, "EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"
                           "DATA\r\nQUIT\r\n",
                     verdict_refuse_mail);
    assert_true(replies_are(log, "220|250|550 5.7.1|503 5.5.1|503 5.5.1|221 2.0.0|CLOSED"));
    free(log);
}

static bool out_has(const hand_t *h, const char *sub)
{
    return h->d.log.buf && strstr(h->d.log.buf, sub) != NULL;
}

static smtp_reply_t rep(int code, const char *esc, const char *text)
{
    return (smtp_reply_t){ code, esc, slice_make(text, strlen(text)), 0 };
}

static void test_verdict_deferred(void **state)
{
    (void)state;
    hand_t *h = malloc(sizeof *h);
    assert_non_null(h);
    hand_init(h, CFG_DEFAULT);
    smtp_greet(&h->s);
    hand_flush(h);
    assert_int_equal(hand_run(h, "EHLO client.example\r\n", 21), SMTP_AGAIN);

    static const char group[] = "MAIL FROM:<a@example.org>\r\n"
                                "RCPT TO:<b@example.com>\r\n"
                                "NOOP\r\n"
                                "RCPT TO:<c@example.com>\r\n"
                                "DATA\r\n";
    const char *p = group;
    size_t n = sizeof group - 1;
    smtp_event_t ev, ev2;

    /* MAIL: its verdict is open, and the RCPT behind it is read ahead */
    assert_int_equal(hand_feed(h, &p, &n, &ev), SMTP_EVENT);
    assert_int_equal(ev.type, SMTP_EV_MAIL);
    uint32_t mail = ev.slot;
    assert_int_equal(hand_feed(h, &p, &n, &ev2), SMTP_EVENT);
    assert_int_equal(ev2.type, SMTP_EV_RCPT);
    uint32_t rcpt_b = ev2.slot;
    assert_int_equal(smtp_open(&h->s), 2);
    /* the NOOP is the engine's own answer: it waits for both */
    for (int i = 0; i < 2; i++) {
        size_t left = n;
        smtp_event_t ev3;
        assert_int_equal(hand_feed(h, &p, &n, &ev3), SMTP_PAUSED);
        assert_int_equal(n, left); /* nothing consumed */
    }
    /* RCPT b refused first: nothing leaves while MAIL's verdict is open */
    smtp_reply_t r = rep(550, "5.1.1", "no such user");
    smtp_verdict(&h->s, rcpt_b, &r);
    hand_flush(h);
    assert_false(out_has(h, "S: 550"));
    smtp_accept(&h->s, mail);
    hand_flush(h);
    assert_true(out_has(h, "S: 250 2.1.0"));
    assert_true(out_has(h, "S: 550 5.1.1 no such user"));
    assert_true(strstr(h->d.log.buf, "S: 250 2.1.0") < strstr(h->d.log.buf, "S: 550 5.1.1"));
    assert_int_equal(smtp_open(&h->s), 0);
    /* the event's slices outlive the verdict */
    assert_true(slice_eq(ev.path.mailbox, SLICE_LIT("a@example.org")));
    assert_true(slice_eq(ev2.path.mailbox, SLICE_LIT("b@example.com")));
    /* a verdict for a slot that is gone changes nothing */
    size_t before = h->d.log.len;
    smtp_verdict(&h->s, rcpt_b, &r);
    smtp_accept(&h->s, mail);
    hand_flush(h);
    assert_int_equal(h->d.log.len, before);

    /* NOOP: answered by the engine, then RCPT c and DATA read ahead */
    assert_int_equal(hand_feed(h, &p, &n, &ev), SMTP_EVENT);
    assert_int_equal(ev.type, SMTP_EV_NOOP);
    assert_int_equal(hand_feed(h, &p, &n, &ev), SMTP_EVENT);
    assert_int_equal(ev.type, SMTP_EV_RCPT);
    uint32_t rcpt_c = ev.slot;
    assert_int_equal(hand_feed(h, &p, &n, &ev), SMTP_EVENT);
    assert_int_equal(ev.type, SMTP_EV_DATA);
    uint32_t data = ev.slot;
    smtp_accept(&h->s, data); /* before the RCPT it depends on */
    hand_flush(h);
    assert_false(out_has(h, "S: 354"));
    smtp_accept(&h->s, rcpt_c);
    hand_flush(h);
    assert_true(out_has(h, "S: 354"));
    assert_int_equal(hand_feed(h, &p, &n, &ev), SMTP_AGAIN);
    assert_int_equal(n, 0);

    /* end of data: the verdict comes after the next command arrived */
    static const char rest[] = "body\r\n.\r\nQUIT\r\n";
    p = rest;
    n = sizeof rest - 1;
    smtp_status_t st;
    while ((st = hand_feed(h, &p, &n, &ev)) == SMTP_EVENT && ev.type == SMTP_EV_BODY)
        ;
    assert_int_equal(st, SMTP_EVENT);
    assert_int_equal(ev.type, SMTP_EV_DATA_END);
    assert_int_equal(smtp_open(&h->s), 1);
    assert_int_equal(hand_feed(h, &p, &n, &ev2), SMTP_PAUSED);
    assert_false(out_has(h, "S: 221"));
    r = rep(250, "2.0.0", "queued as Q1");
    smtp_verdict(&h->s, ev.slot, &r);
    hand_flush(h);
    assert_int_equal(hand_feed(h, &p, &n, &ev), SMTP_EVENT);
    assert_int_equal(ev.type, SMTP_EV_QUIT);
    assert_int_equal(hand_feed(h, &p, &n, &ev), SMTP_CLOSED);

    /* replies in command order */
    assert_true(replies_are(h->d.log.buf, "220|250|250 2.1.0|550 5.1.1|250 2.0.0|250 2.1.5|354|250 2.0.0|"
                                          "221 2.0.0|CLOSED"));
    assert_true(has_line(h->d.log.buf, "S: 250 2.0.0 queued as Q1\\r\\n"));
    hand_free(h);
    free(h);
}

/* ---- deferred verdicts (pipelining through to a downstream) ---- */

/*
 * Feeds `in` in pieces cut at `cut` (0: whole), leaving every MAIL, RCPT and
 * DATA verdict open and filling open verdicts from `codes` (in command
 * order) whenever the engine pauses or a piece is used up, as a downstream's
 * replies would arrive; with `reverse` the open slots are filled newest
 * first, so replies overtake each other. Other verdicts are accepted at once.
 * Returns the replies as one string.
 */
static char *run_deferred_order(const char *in, size_t cut, const int *codes, bool reverse)
{
    smtp_config_t cfg;
    smtp_config_defaults(&cfg, SLICE_LIT("mx.test"));
    char ob[8192];
    smtp_out_t o = { .buf = ob, .len = 0, .cap = sizeof ob };
    smtp_t s;
    smtp_init(&s, &cfg, &o);
    smtp_greet(&s);
    size_t len = strlen(in), off = 0, ci = 0;
    uint32_t open[64];
    size_t nopen = 0;
    static char all[16384];
    size_t alen = 0;
    while (off < len && s.state != SMTP_S_CLOSED) {
        size_t end = cut && off + cut < len ? off + cut : len;
        const char *p = in + off;
        size_t n = end - off;
        for (int guard = 0; guard < 10000; guard++) {
            size_t used = 0;
            smtp_event_t ev;
            smtp_status_t st = smtp_feed(&s, p, n, &used, &ev);
            p += used, n -= used;
            if (st == SMTP_EVENT) {
                if (ev.type == SMTP_EV_MAIL || ev.type == SMTP_EV_RCPT || ev.type == SMTP_EV_DATA)
                    open[nopen++] = ev.slot;
                else if (smtp_ev_wants_verdict(ev.type))
                    smtp_accept(&s, ev.slot);
                continue;
            }
            if (st == SMTP_PAUSED && nopen) {
                /* the codes belong to the slots in command order */
                for (size_t k = 0; k < nopen; k++) {
                    size_t i = reverse ? nopen - 1 - k : k;
                    int c = codes[ci + i];
                    smtp_reply_t r = { c, c < 300 ? "2.0.0" : c < 400 ? NULL : c < 500 ? "4.0.0" : "5.1.1",
                                       c == 354 ? SLICE_LIT("go ahead") : SLICE_LIT("from downstream"), 0 };
                    smtp_verdict(&s, open[i], &r);
                }
                ci += nopen;
                nopen = 0;
                continue;
            }
            if (st == SMTP_AGAIN && n == 0)
                break;
            if (st == SMTP_CLOSED)
                break;
            fail_msg("unexpected status %d", st);
        }
        off = end;
    }
    memcpy(all + alen, ob, o.len);
    alen += o.len;
    all[alen] = 0;
    smtp_free(&s);
    return strdup(all);
}

static char *run_deferred(const char *in, size_t cut, const int *codes)
{
    char *fwd = run_deferred_order(in, cut, codes, false);
    char *rev = run_deferred_order(in, cut, codes, true);
    if (strcmp(fwd, rev) != 0)
        fail_msg("verdicts filled newest first give other replies:\n%s\nin order:\n%s", rev, fwd);
    free(rev);
    return fwd;
}

static void expect_lines(const char *out, const char *const *want, size_t n)
{
    const char *p = out;
    for (size_t i = 0; i < n; i++) {
        if (strncmp(p, want[i], strlen(want[i])) != 0)
            fail_msg("line %zu: want \"%s\", output:\n%s", i, want[i], out);
        p = strstr(p, "\r\n");
        assert_non_null(p);
        p += 2;
    }
    assert_string_equal(p, "");
}

static void test_defer_pipelined_group(void **state)
{
    (void)state;
    const char *in = "EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"
                     "RCPT TO:<x@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n";
    const int codes[] = { 250, 250, 550, 250, 354 };
    const char *want[] = { "220 ", "250-mx.test", "250-PIPELINING", "250-SIZE", "250-8BITMIME",
                           "250-ENHANCEDSTATUSCODES", "250 SMTPUTF8", "250 2.0.0 from downstream",
                           "250 2.0.0 from downstream", "550 5.1.1 from downstream", "250 2.0.0 from downstream",
                           "354 go ahead", "250 2.0.0 Ok: queued", "221 2.0.0" };
    char *whole = run_deferred(in, 0, codes);
    expect_lines(whole, want, sizeof want / sizeof want[0]);
    /* the same replies in the same order however the input is cut */
    for (size_t cut = 1; cut < strlen(in); cut++) {
        char *split = run_deferred(in, cut, codes);
        if (strcmp(split, whole) != 0)
            fail_msg("cut every %zu bytes:\n%s\nwhole:\n%s", cut, split, whole);
        free(split);
    }
    free(whole);
}

static void test_defer_mail_refused(void **state)
{
    (void)state;
    /* The downstream refuses MAIL: what was pipelined after it gets 503,
     * whatever the downstream said, and a new MAIL works. */
    const char *in = "EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
                     "MAIL FROM:<a@example.org>\r\nQUIT\r\n";
    const int codes[] = { 550, 250, 354, 250 };
    const char *want[] = { "220 ", "250-", "250-", "250-", "250-", "250-", "250 ", "550 5.1.1",
                           "503 5.5.1", "503 5.5.1", "250 2.0.0", "221 2.0.0" };
    char *out = run_deferred(in, 0, codes);
    expect_lines(out, want, sizeof want / sizeof want[0]);
    free(out);
}

static void test_defer_no_valid_recipient(void **state)
{
    (void)state;
    const char *in = "EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nQUIT\r\n";
    const int codes[] = { 250, 550, 354 };
    const char *want[] = { "220 ", "250-", "250-", "250-", "250-", "250-", "250 ", "250 2.0.0",
                           "550 5.1.1", "554 5.5.1", "221 2.0.0" };
    char *out = run_deferred(in, 0, codes);
    expect_lines(out, want, sizeof want / sizeof want[0]);
    free(out);
}

static void test_defer_stops_before_own_reply(void **state)
{
    (void)state;
    /* NOOP and a bad RCPT are answered by the engine itself: their replies
     * must come after the open ones, so the engine stops before them. */
    smtp_config_t cfg;
    smtp_config_defaults(&cfg, SLICE_LIT("mx.test"));
    char ob[4096];
    smtp_out_t o = { .buf = ob, .len = 0, .cap = sizeof ob };
    smtp_t s;
    smtp_init(&s, &cfg, &o);
    smtp_greet(&s);
    const char *in = "EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nNOOP\r\n"
                     "RCPT TO:bad\r\n";
    size_t len = strlen(in), off = 0, used;
    smtp_event_t ev;
    int events = 0;
    uint32_t slots[4];
    int nslots = 0;
    smtp_status_t st;
    while ((st = smtp_feed(&s, in + off, len - off, &used, &ev)) == SMTP_EVENT) {
        off += used;
        events++;
        if (ev.type == SMTP_EV_EHLO)
            smtp_accept(&s, ev.slot);
        else
            slots[nslots++] = ev.slot;
    }
    assert_int_equal(st, SMTP_PAUSED);
    assert_int_equal(events, 3);
    assert_int_equal(smtp_open(&s), 2);
    assert_string_equal(in + off, "NOOP\r\nRCPT TO:bad\r\n"); /* not consumed */
    smtp_reply_t r1 = rep(250, "2.1.5", "rcpt ok"), r0 = rep(250, "2.1.0", "mail ok");
    smtp_verdict(&s, slots[1], &r1);
    size_t before = o.len;
    smtp_verdict(&s, slots[1], &r1); /* filled already: no effect */
    assert_int_equal(o.len, before);
    smtp_verdict(&s, slots[0], &r0);
    assert_int_equal(smtp_open(&s), 0);
    assert_int_equal(s.state, SMTP_S_RCPT);
    st = smtp_feed(&s, in + off, len - off, &used, &ev);
    assert_int_equal(st, SMTP_EVENT);
    assert_int_equal(ev.type, SMTP_EV_NOOP);
    off += used;
    st = smtp_feed(&s, in + off, len - off, &used, &ev);
    assert_int_equal(ev.type, SMTP_EV_ERROR);
    o.buf[o.len] = 0;
    const char *mail = strstr(ob, "250 2.1.0 mail ok"), *rcpt = strstr(ob, "250 2.1.5 rcpt ok");
    const char *noop = strstr(ob, "250 2.0.0 Ok"), *bad = strstr(ob, "501 5.1.3");
    assert_true(mail && rcpt && noop && bad && mail < rcpt && rcpt < noop && noop < bad);
    smtp_free(&s);
}

/*
 * A MAIL refused for a reason that is not the client's (the downstream is
 * down: SMTP_R_PEER): the RCPT and DATA read behind it get the same reply,
 * not 503, and none of it counts toward the error limit.
 */
static void test_defer_peer_failure_not_counted(void **state)
{
    (void)state;
    smtp_config_t cfg;
    smtp_config_defaults(&cfg, SLICE_LIT("mx.test"));
    cfg.error_max = 3;
    char ob[16384];
    smtp_out_t o = { .buf = ob, .len = 0, .cap = sizeof ob };
    smtp_t s;
    smtp_init(&s, &cfg, &o);
    smtp_greet(&s);
    const char *in = "EHLO c.example\r\n";
    size_t used;
    smtp_event_t ev;
    assert_int_equal(smtp_feed(&s, in, strlen(in), &used, &ev), SMTP_EVENT);
    smtp_accept(&s, ev.slot);
    for (int msg = 0; msg < 10; msg++) {
        const char *g = "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n";
        size_t off = 0, len = strlen(g);
        uint32_t slots[8];
        int n = 0;
        smtp_status_t st;
        while ((st = smtp_feed(&s, g + off, len - off, &used, &ev)) == SMTP_EVENT) {
            off += used;
            slots[n++] = ev.slot;
        }
        assert_int_equal(st, SMTP_PAUSED);
        assert_int_equal(n, 4);
        smtp_reply_t r = { 451, "4.4.1", SLICE_LIT("downstream unavailable"), SMTP_R_PEER };
        for (int i = n - 1; i >= 0; i--) /* newest first, as a failure fans out */
            smtp_verdict(&s, slots[i], &r);
        assert_int_equal(smtp_open(&s), 0);
        assert_int_equal(s.state, SMTP_S_HELO);
    }
    assert_int_equal(s.errors, 0);
    o.buf[o.len] = 0;
    assert_null(strstr(ob, "503"));
    assert_null(strstr(ob, "421"));
    /* 40 commands, 40 replies of 451 4.4.1 */
    int k = 0;
    for (const char *p = ob; (p = strstr(p, "451 4.4.1")); p++)
        k++;
    assert_int_equal(k, 40);
    smtp_free(&s);
}

/* Run `in` (whole), answering verdicts from a table in command order:
 * code, esc, flags per verdict event; EHLO is accepted. Returns the output. */
typedef struct vspec {
    int code;
    const char *esc;
    uint8_t flags;
} vspec_t;

static char *run_table(const char *in, const vspec_t *v, size_t nv, uint32_t *errors)
{
    smtp_config_t cfg;
    smtp_config_defaults(&cfg, SLICE_LIT("mx.test"));
    static char ob[16384];
    smtp_out_t o = { .buf = ob, .len = 0, .cap = sizeof ob - 1 };
    smtp_t s;
    smtp_init(&s, &cfg, &o);
    smtp_greet(&s);
    size_t off = 0, len = strlen(in), vi = 0;
    for (int guard = 0; guard < 1000 && off < len; guard++) {
        size_t used = 0;
        smtp_event_t ev;
        smtp_status_t st = smtp_feed(&s, in + off, len - off, &used, &ev);
        off += used;
        if (st != SMTP_EVENT)
            break;
        if (ev.type == SMTP_EV_EHLO || ev.type == SMTP_EV_HELO) {
            smtp_accept(&s, ev.slot);
        } else if (smtp_ev_wants_verdict(ev.type)) {
            assert_true(vi < nv);
            smtp_reply_t r = { v[vi].code, v[vi].esc, SLICE_LIT("verdict"), v[vi].flags };
            vi++;
            smtp_verdict(&s, ev.slot, &r);
        }
    }
    ob[o.len] = 0;
    *errors = s.errors;
    smtp_free(&s);
    return strdup(ob);
}

/* Lines of out after the greeting and the EHLO reply, as "code esc|...". */
static bool lines_are(const char *out, const char *want)
{
    tu_log_t sig = { 0 };
    const char *p = strstr(out, "250 SMTPUTF8\r\n");
    p = p ? p + 14 : out;
    while (*p) {
        const char *e = strstr(p, "\r\n");
        if (!e)
            break;
        if (sig.len)
            tu_puts(&sig, "|");
        const char *sp = memchr(p + 4, ' ', (size_t)(e - p - 4));
        tu_put(&sig, p, sp && p[3] == ' ' ? (size_t)(sp - p) : 3);
        p = e + 2;
    }
    bool ok = sig.buf && strcmp(sig.buf, want) == 0;
    if (!ok)
        tu_note("want %s\n got %s\n%s", want, sig.buf ? sig.buf : "", out);
    tu_free_log(&sig);
    return ok;
}

/*
 * Refusals that are not the client's fault (SMTP_R_PEER: the downstream is
 * down) and what the client gets for the commands it pipelined blind:
 *  - a MAIL refused that way at once: the RCPT and DATA behind it get the
 *    MAIL's reply, uncounted, until RSET (after it a stray RCPT is the
 *    client's own error again); refused for the client's fault: 503s,
 *    counted;
 *  - every recipient refused that way: DATA gets their reply, not 554,
 *    uncounted; one refused for the client's fault makes it the classic 554.
 */
static void test_peer_refusals(void **state)
{
    (void)state;
    enum { P = SMTP_R_PEER };
    static const char *const mail_rcpt_data = "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n";
    static const char *const two_rcpts =
        "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@example.com>\r\nRCPT TO:<d@example.com>\r\nDATA\r\n";
    static const struct {
        const char *in, *expect;
        vspec_t v[4];
        size_t nv;
        uint32_t errors;
    } cases[] = {
        { "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@example.com>\r\nDATA\r\nRSET\r\nRCPT TO:<c@example.com>\r\n",
          "451 4.4.1|451 4.4.1|451 4.4.1|250 2.0.0|503 5.5.1", { { 451, "4.4.1", P } }, 1, 1 },
        { NULL, "550 5.7.1|503 5.5.1|503 5.5.1", { { 550, "5.7.1", 0 } }, 1, 3 },
        { "", "250 2.1.0|451 4.4.1|451 4.4.1|451 4.4.1",
          { { 250, "2.1.0", 0 }, { 451, "4.4.1", P }, { 451, "4.4.1", P }, { 354, NULL, 0 } }, 4, 0 },
        { "", "250 2.1.0|550 5.1.1|451 4.4.1|554 5.5.1",
          { { 250, "2.1.0", 0 }, { 550, "5.1.1", 0 }, { 451, "4.4.1", P }, { 354, NULL, 0 } }, 4, 2 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint32_t errors = 99;
        const char *in = cases[i].in ? (*cases[i].in ? cases[i].in : two_rcpts) : mail_rcpt_data;
        char *out = run_table(in, cases[i].v, cases[i].nv, &errors);
        if (!lines_are(out, cases[i].expect))
            fail_msg("case %zu", i);
        assert_int_equal(errors, cases[i].errors);
        free(out);
    }
}

/* SMTP_SLOTS_MAX open slots: past it the engine stops reading ahead (it
 * does not take the command) until verdicts come in, and nothing is lost. */
static void test_open_slots_bound(void **state)
{
    (void)state;
    smtp_config_t cfg;
    smtp_config_defaults(&cfg, SLICE_LIT("mx.test"));
    cfg.rcpt_max = 1000;
    static char ob[1 << 17];
    smtp_out_t o = { .buf = ob, .len = 0, .cap = sizeof ob };
    smtp_t s;
    smtp_init(&s, &cfg, &o);
    smtp_greet(&s);
    tu_log_t in = { 0 };
    tu_puts(&in, "EHLO c\r\nMAIL FROM:<a@b.test>\r\n");
    const int n = SMTP_SLOTS_MAX + 50;
    for (int i = 0; i < n; i++) {
        char line[64];
        snprintf(line, sizeof line, "RCPT TO:<r%d@example.com>\r\n", i);
        tu_puts(&in, line);
    }
    size_t off = 0, used;
    smtp_event_t ev;
    uint32_t slots[SMTP_SLOTS_MAX + 64];
    int nslots = 0, rcpts = 0;
    smtp_status_t st;
    while ((st = smtp_feed(&s, in.buf + off, in.len - off, &used, &ev)) == SMTP_EVENT) {
        off += used;
        if (ev.type == SMTP_EV_EHLO)
            smtp_accept(&s, ev.slot);
        else
            slots[nslots++] = ev.slot, rcpts += ev.type == SMTP_EV_RCPT;
    }
    assert_int_equal(st, SMTP_PAUSED);
    assert_int_equal(nslots, SMTP_SLOTS_MAX); /* MAIL and 127 RCPTs, then it waits */
    assert_int_equal(smtp_open(&s), SMTP_SLOTS_MAX);
    for (int i = nslots - 1; i >= 0; i--)
        smtp_accept(&s, slots[i]);
    assert_int_equal(smtp_open(&s), 0);
    while ((st = smtp_feed(&s, in.buf + off, in.len - off, &used, &ev)) == SMTP_EVENT) {
        off += used;
        rcpts++;
        smtp_accept(&s, ev.slot);
    }
    assert_int_equal(st, SMTP_AGAIN);
    assert_int_equal(rcpts, n);
    o.buf[o.len] = 0;
    int ok = 0;
    for (const char *p = ob; (p = strstr(p, "250 2.1.5")); p++)
        ok++;
    assert_int_equal(ok, n);
    tu_free_log(&in);
    smtp_free(&s);
}

static void test_verdict_custom_data_end(void **state)
{
    (void)state;
    const sample_t *sm = find_sample("custom end-of-data reply");
    char *log = run_sample(sm, NULL, 0, OUTCAP);
    assert_true(replies_are(log, sm->expect));
    assert_true(has_line(log, "S: 250 2.0.0 queued as ABC123\\r\\n"));
    free(log);
}

/* ------------------------------------------------------------------ */
/* 9. smtp_close                                                       */
/* ------------------------------------------------------------------ */

static void close_and_check(hand_t *h)
{
    smtp_close(&h->s, 421, "4.4.2", "timeout");
    hand_flush(h);
    assert_int_equal(count_prefix(h->d.log.buf, "S: 421 4.4.2 "), 1);
    assert_true(out_has(h, "timeout"));
    const char *p = "NOOP\r\n";
    size_t n = 6;
    smtp_event_t ev;
    assert_int_equal(hand_feed(h, &p, &n, &ev), SMTP_CLOSED);
    assert_int_equal(count_prefix(h->d.log.buf, "S: 250 2.0.0"), 0);
    /* the 421 is the last reply */
    tu_log_t sig = { 0 };
    signature(h->d.log.buf, &sig);
    size_t l = strlen(sig.buf);
    if (!(l >= 17 && strcmp(sig.buf + l - 17, "|421 4.4.2|CLOSED") == 0))
        tu_note("replies: %s\n", sig.buf);
    assert_true(l >= 17 && strcmp(sig.buf + l - 17, "|421 4.4.2|CLOSED") == 0);
    tu_free_log(&sig);
}

static void test_close(void **state)
{
    (void)state;
    /* idle, after EHLO */
    hand_t *h = malloc(sizeof *h);
    assert_non_null(h);
    hand_init(h, CFG_DEFAULT);
    smtp_greet(&h->s);
    hand_flush(h);
    assert_int_equal(hand_run(h, "EHLO client.example\r\n", 21), SMTP_AGAIN);
    close_and_check(h);
    hand_free(h);

    /* in the middle of a body */
    hand_init(h, CFG_DEFAULT);
    smtp_greet(&h->s);
    static const char tx[] = TX_HEAD "partial bo";
    assert_int_equal(hand_run(h, tx, sizeof tx - 1), SMTP_AGAIN);
    assert_true(out_has(h, "S: 354"));
    close_and_check(h);
    assert_int_equal(count_ev(h->d.log.buf, SMTP_EV_DATA_END), 0);
    hand_free(h);

    /* while a verdict is pending */
    hand_init(h, CFG_DEFAULT);
    smtp_greet(&h->s);
    assert_int_equal(hand_run(h, "EHLO client.example\r\n", 21), SMTP_AGAIN);
    const char *p = "MAIL FROM:<a@example.org>\r\n";
    size_t n = strlen(p);
    smtp_event_t ev;
    assert_int_equal(hand_feed(h, &p, &n, &ev), SMTP_EVENT);
    assert_int_equal(smtp_open(&h->s), 1);
    close_and_check(h);
    hand_free(h);
    free(h);
}

/* ------------------------------------------------------------------ */
/* 10. STARTTLS                                                        */
/* ------------------------------------------------------------------ */

/* A session across STARTTLS: what the client sends in plaintext, and what
 * comes through TLS once the handshake is done. */
typedef struct tls_case {
    const char *name;
    enum cfg_kind cfg;
    tu_verdict_fn verdict;
    const char *expect; /* reply signature of the whole feed */
    const char *plain, *enc;
    size_t plen, elen;
} tls_case_t;

#define TLS_CASE(name, cfg, verdict, expect, plain, enc) \
    { name, cfg, verdict, expect, plain, enc, sizeof(plain) - 1, sizeof(enc) - 1 }

/* What the engine keeps across the handshake, seen after a run. */
typedef struct tls_stats {
    uint32_t commands, errors, messages;
    bool tls;
} tls_stats_t;

/* Feed `in` cut at the sorted split points, each piece guarded as tu_drive
 * does it. */
static void feed_cut(tu_driver_t *d, smtp_t *s, smtp_out_t *o, const char *in, size_t len, const size_t *sp,
                     size_t nsp)
{
    size_t prev = 0;
    for (size_t i = 0; i <= nsp && !d->closed; i++) {
        size_t end = i < nsp ? sp[i] : len;
        guard_buf_t g;
        guard_copy(&g, in + prev, end - prev);
        tu_feed_piece(d, s, o, g.data, end - prev);
        guard_free(&g);
        prev = end;
    }
}

/*
 * Run a tls_case as a TLS-terminating caller would: the plaintext cut at
 * `sp`, then, if the engine waits for the handshake, smtp_tls_started() (a
 * "TLS" line in the log), then the encrypted part cut at `se`. Verdicts as
 * tu_drive gives them (STARTTLS accepted unless the callback says no).
 * Returns the log (free it); `st` (may be NULL) gets the counters.
 */
static char *run_tls(const tls_case_t *c, const size_t *sp, size_t nsp, const size_t *se, size_t nse, size_t outcap,
                     tls_stats_t *st)
{
    smtp_config_t cfg = make_cfg(c->cfg);
    tu_driver_t d;
    memset(&d, 0, sizeof d);
    d.verdict = c->verdict;
    char *ob = malloc(outcap);
    assert_non_null(ob);
    smtp_out_t o = { .buf = ob, .len = 0, .cap = outcap };
    smtp_t s;
    smtp_init(&s, &cfg, &o);
    smtp_greet(&s);
    tu_flush_out(&d, &o);
    feed_cut(&d, &s, &o, c->plain, c->plen, sp, nsp);
    if (!d.closed && smtp_tls_pending(&s)) {
        assert_int_equal(o.len, 0); /* the 220 is out: the handshake may start */
        assert_false(s.tls);
        smtp_tls_started(&s);
        assert_int_equal(o.len, 0); /* the client speaks first */
        assert_true(s.tls);
        tu_puts(&d.log, "TLS\n");
        feed_cut(&d, &s, &o, c->enc, c->elen, se, nse);
    }
    if (!d.closed) {
        tu_end_body(&d);
        tu_puts(&d.log, "EOF\n");
    }
    if (st)
        *st = (tls_stats_t){ s.commands, s.errors, s.messages, s.tls };
    smtp_free(&s);
    free(ob);
    tu_free_log(&d.body);
    return d.log.buf;
}

/* The log from the "TLS" line on ("" when there is none). */
static const char *after_tls(const char *log)
{
    if (strncmp(log, "TLS\n", 4) == 0)
        return log;
    const char *p = strstr(log, "\nTLS\n");
    return p ? p + 1 : "";
}

static const tls_case_t tls_cases[] = {
    /* RFC 3207 4.2: after the handshake the client starts over with EHLO;
     * the STARTTLS keyword is gone, a second STARTTLS is out of order, and
     * MAIL before EHLO is refused as in any session */
    TLS_CASE("starttls then a message", CFG_TLS, NULL,
             "220|250|220 2.0.0|503 5.5.1|503 5.5.1|503 5.5.1|250|" TX_OK "|221 2.0.0|CLOSED",
             "EHLO client.example\r\n"
             "STARTTLS\r\n"
             "NOOP\r\n"
             "MAIL FROM:<a@b>\r\n",
             "MAIL FROM:<a@example.org>\r\n"
             "RCPT TO:<x@example.com>\r\n"
             "STARTTLS\r\n"
             "EHLO client.example\r\n"
             "MAIL FROM:<a@example.org>\r\n"
             "RCPT TO:<b@example.com>\r\n"
             "DATA\r\n"
             "hi\r\n"
             ".\r\n"
             "QUIT\r\n"),
    TLS_CASE("starttls required", CFG_TLS_ENCRYPT, NULL,
             "220|250|530 5.7.0|503 5.5.1|220 2.0.0|250|250 2.1.0|250 2.1.5|354|250 2.0.0|221 2.0.0|CLOSED",
             "EHLO c\r\n"
             "MAIL FROM:<a@example.org>\r\n"
             "RCPT TO:<b@example.com>\r\n"
             "STARTTLS\r\n"
             "RCPT TO:<b@example.com>\r\n",
             "EHLO c\r\n"
             "MAIL FROM:<a@example.org>\r\n"
             "RCPT TO:<b@example.com>\r\n"
             "DATA\r\n"
             "hi\r\n"
             ".\r\n"
             "QUIT\r\n"),
    /* plaintext behind STARTTLS that would leave the engine mid-line (an
     * over-long line without its LF): dropped, and nothing of it survives */
    TLS_CASE("starttls then half a long line", CFG_TLS, NULL, "220|250|220 2.0.0|250|250 2.0.0|221 2.0.0|CLOSED",
             "EHLO c\r\n"
             "STARTTLS\r\n"
             "NOOP aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
             "EHLO c\r\n"
             "NOOP\r\n"
             "QUIT\r\n"),
    /* refused by the caller: the session goes on in plaintext, and what
     * would have been the encrypted part never comes */
    TLS_CASE("starttls refused", CFG_TLS, verdict_no_tls, "220|250|454 4.7.0|250 2.0.0|250 2.1.0|221 2.0.0|CLOSED",
             "EHLO c\r\n"
             "STARTTLS\r\n"
             "NOOP\r\n"
             "MAIL FROM:<a@example.org>\r\n"
             "QUIT\r\n",
             "EHLO c\r\n"),
};

#define NTLS_CASES (sizeof tls_cases / sizeof tls_cases[0])

static const tls_case_t *find_tls_case(const char *name)
{
    for (size_t i = 0; i < NTLS_CASES; i++)
        if (strcmp(tls_cases[i].name, name) == 0)
            return &tls_cases[i];
    fail_msg("no tls case \"%s\"", name);
    return NULL;
}

static void test_starttls_ehlo(void **state)
{
    (void)state;
    /* off: not offered (test_ehlo_keywords checks the whole list) */
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    char *log = RUN(&cfg, "EHLO client.example\r\nQUIT\r\n");
    assert_false(ehlo_kw(log, "STARTTLS", false));
    free(log);

    /* may and encrypt: offered, on a line of its own, after SIZE */
    static const enum cfg_kind kinds[] = { CFG_TLS, CFG_TLS_ENCRYPT };
    for (size_t i = 0; i < 2; i++) {
        cfg = make_cfg(kinds[i]);
        log = RUN(&cfg, "EHLO client.example\r\nQUIT\r\n");
        assert_true(replies_are(log, "220|250|221 2.0.0|CLOSED"));
        assert_true(has_line(log, "S: 250-STARTTLS\\r\\n"));
        const char *size = strstr(log, "S: 250-SIZE"), *tls = strstr(log, "S: 250-STARTTLS");
        const char *bit8 = strstr(log, "S: 250-8BITMIME");
        assert_true(size && tls && bit8 && size < tls && tls < bit8);
        assert_true(ehlo_kw(log, "PIPELINING", true));
        assert_true(ehlo_kw(log, "SMTPUTF8", true));
        assert_int_equal(count_prefix(log, "S: 250-"), 6);
        assert_int_equal(count_prefix(log, "S: 250 "), 1);
        free(log);
        /* HELO has no keywords */
        log = RUN(&cfg, "HELO client.example\r\nQUIT\r\n");
        assert_int_equal(count_prefix(log, "S: 250-"), 0);
        free(log);
    }

    /* the last keyword is STARTTLS's neighbour when SMTPUTF8 is off */
    cfg = make_cfg(CFG_TLS);
    cfg.smtputf8 = false;
    log = RUN(&cfg, "EHLO client.example\r\n");
    assert_true(has_line(log, "S: 250-STARTTLS\\r\\n"));
    assert_true(has_line(log, "S: 250 ENHANCEDSTATUSCODES\\r\\n"));
    free(log);

    /* after the handshake: not offered again */
    static const tls_case_t c = TLS_CASE("ehlo after tls", CFG_TLS, NULL, "220|250|220 2.0.0|250|EOF",
                                         "EHLO client.example\r\nSTARTTLS\r\n", "EHLO client.example\r\n");
    log = run_tls(&c, NULL, 0, NULL, 0, OUTCAP, NULL);
    assert_true(replies_are(log, c.expect));
    const char *tail = after_tls(log);
    assert_true(*tail);
    assert_null(strstr(tail, "STARTTLS"));
    assert_true(strstr(tail, "S: 250-PIPELINING") != NULL);
    assert_int_equal(count_prefix(tail, "S: 250-"), 5); /* the list without STARTTLS */
    assert_int_equal(count_prefix(log, "S: 250-STARTTLS"), 1);
    free(log);
}

/*
 * The 220 and then nothing: commands pipelined behind STARTTLS, in the same
 * buffer or in later ones, are consumed and dropped, with no event and no
 * reply (CVE-2011-0411), until smtp_tls_started().
 */
static void test_starttls_drops_plaintext(void **state)
{
    (void)state;
    hand_t *h = malloc(sizeof *h);
    assert_non_null(h);
    hand_init(h, CFG_TLS);
    smtp_greet(&h->s);
    hand_flush(h);
    assert_int_equal(hand_run(h, "EHLO client.example\r\n", 21), SMTP_AGAIN);
    smtp_tls_started(&h->s); /* no STARTTLS yet: nothing happens */
    assert_false(h->s.tls);
    assert_int_equal(h->s.state, SMTP_S_HELO);

    static const char in[] = "STARTTLS\r\nNOOP\r\nMAIL FROM:<a@b>\r\n";
    const char *p = in;
    size_t n = sizeof in - 1;
    smtp_event_t ev;
    assert_int_equal(hand_feed(h, &p, &n, &ev), SMTP_EVENT);
    assert_int_equal(ev.type, SMTP_EV_STARTTLS);
    assert_true(smtp_ev_wants_verdict(ev.type));
    assert_int_equal(smtp_open(&h->s), 1);
    /* its verdict is open: nothing behind it is read, not even the start
     * of a line into the carry buffer */
    size_t left = n;
    smtp_event_t ev2;
    assert_int_equal(hand_feed(h, &p, &n, &ev2), SMTP_PAUSED);
    assert_int_equal(n, left);
    const char *part = "MAIL FROM:<a@b";
    size_t plen = strlen(part);
    assert_int_equal(hand_feed(h, &part, &plen, &ev2), SMTP_PAUSED);
    assert_int_equal(plen, strlen(part));
    assert_false(smtp_partial(&h->s));
    assert_false(smtp_tls_pending(&h->s));
    smtp_accept(&h->s, ev.slot);
    hand_flush(h);
    assert_true(has_line(h->d.log.buf, "S: 220 2.0.0 Ready to start TLS\\r\\n"));
    assert_true(smtp_tls_pending(&h->s));
    assert_int_equal(smtp_open(&h->s), 0);

    size_t log_len = h->d.log.len;
    uint32_t commands = h->s.commands, errors = h->s.errors;
    /* the rest of this buffer: all taken, nothing said */
    assert_int_equal(hand_feed(h, &p, &n, &ev2), SMTP_AGAIN);
    assert_int_equal(n, 0);
    /* and later buffers, whatever they hold */
    static const char *const later[] = { "NOOP\r\nMAIL FROM:<a@b>\r\n", "", "QUIT\r\n", "\x16\x03\x01\x02\x00", "RSET" };
    for (size_t i = 0; i < sizeof later / sizeof later[0]; i++) {
        p = later[i];
        n = strlen(p);
        assert_int_equal(hand_feed(h, &p, &n, &ev2), SMTP_AGAIN);
        assert_int_equal(n, 0);
    }
    assert_int_equal(h->d.log.len, log_len); /* no reply, no event */
    assert_int_equal(h->s.commands, commands);
    assert_int_equal(h->s.errors, errors);
    assert_true(smtp_tls_pending(&h->s));
    assert_false(smtp_partial(&h->s));
    assert_int_equal(count_ev(h->d.log.buf, SMTP_EV_NOOP), 0);
    assert_int_equal(count_ev(h->d.log.buf, SMTP_EV_MAIL), 0);
    assert_int_equal(count_ev(h->d.log.buf, SMTP_EV_QUIT), 0);
    assert_true(replies_are(h->d.log.buf, "220|250|220 2.0.0"));

    /* the handshake: a fresh session, encrypted; counters kept */
    smtp_tls_started(&h->s);
    hand_flush(h);
    assert_int_equal(h->d.log.len, log_len); /* nothing written */
    assert_true(h->s.tls);
    assert_false(h->s.esmtp);
    assert_int_equal(h->s.state, SMTP_S_INIT);
    assert_false(smtp_tls_pending(&h->s));
    assert_int_equal(h->s.commands, commands);
    smtp_tls_started(&h->s); /* once only: a second call changes nothing */
    assert_int_equal(h->s.state, SMTP_S_INIT);

    /* HELO forgotten: MAIL is out of order, as before any HELO */
    assert_int_equal(hand_run(h, "MAIL FROM:<a@example.org>\r\n", 27), SMTP_AGAIN);
    assert_int_equal(count_ev(h->d.log.buf, SMTP_EV_MAIL), 0);
    assert_int_equal(h->s.errors, errors + 1);
    static const char tx[] = "EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"
                             "DATA\r\nhi\r\n.\r\nSTARTTLS\r\nQUIT\r\n";
    assert_int_equal(hand_run(h, tx, sizeof tx - 1), SMTP_CLOSED);
    assert_true(replies_are(h->d.log.buf, "220|250|220 2.0.0|503 5.5.1|250|" TX_OK "|503 5.5.1|221 2.0.0|CLOSED"));
    assert_true(h->s.esmtp);
    assert_int_equal(h->s.messages, 1);
    assert_int_equal(count_prefix(h->d.log.buf, "S: 250-STARTTLS"), 1); /* only before TLS */
    assert_int_equal(count_ev(h->d.log.buf, SMTP_EV_STARTTLS), 1);
    BODY_IS(h->d.log.buf, 0, "hi\r\n");
    hand_free(h);
    free(h);
}

/* A MAIL refused for a peer's trouble makes the RCPTs behind it get its
 * reply; after the handshake that memory is gone too. */
static void test_starttls_forgets_refused_mail(void **state)
{
    (void)state;
    hand_t *h = malloc(sizeof *h);
    assert_non_null(h);
    hand_init(h, CFG_TLS);
    smtp_greet(&h->s);
    assert_int_equal(hand_run(h, "EHLO c\r\n", 8), SMTP_AGAIN);
    const char *p = "MAIL FROM:<a@example.org>\r\n";
    size_t n = strlen(p);
    smtp_event_t ev;
    assert_int_equal(hand_feed(h, &p, &n, &ev), SMTP_EVENT);
    assert_int_equal(ev.type, SMTP_EV_MAIL);
    smtp_reply_t r = { 451, "4.4.1", SLICE_LIT("downstream unavailable"), SMTP_R_PEER };
    smtp_verdict(&h->s, ev.slot, &r);
    hand_flush(h);
    assert_int_equal(hand_run(h, "RCPT TO:<b@example.com>\r\nSTARTTLS\r\n", 35), SMTP_AGAIN);
    assert_true(smtp_tls_pending(&h->s));
    smtp_tls_started(&h->s);
    assert_int_equal(hand_run(h, "RCPT TO:<b@example.com>\r\n", 25), SMTP_AGAIN);
    assert_true(replies_are(h->d.log.buf, "220|250|451 4.4.1|451 4.4.1|220 2.0.0|503 5.5.1"));
    hand_free(h);
    free(h);
}

/* What the engine itself refuses: 502 when off, 501 with an argument, 503
 * inside a transaction or once encrypted; each counted as an error. */
static void test_starttls_refusals(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_TLS);
    char *log = RUN(&cfg, "EHLO c\r\n"
                          "STARTTLS now\r\n"
                          "MAIL FROM:<a@example.org>\r\n"
                          "STARTTLS\r\n"
                          "RCPT TO:<b@example.com>\r\n"
                          "STARTTLS\r\n"
                          "RSET\r\n"
                          "QUIT\r\n");
    assert_true(replies_are(log, "220|250|501 5.5.4|250 2.1.0|503 5.5.1|250 2.1.5|503 5.5.1|250 2.0.0|221 2.0.0|"
                                 "CLOSED"));
    assert_true(ev_has(log, SMTP_EV_ERROR, 0, err_sub(SMTP_ERR_SYNTAX)));
    assert_true(ev_has(log, SMTP_EV_ERROR, 1, err_sub(SMTP_ERR_SEQUENCE)));
    assert_true(ev_has(log, SMTP_EV_ERROR, 2, err_sub(SMTP_ERR_SEQUENCE)));
    assert_int_equal(count_ev(log, SMTP_EV_STARTTLS), 0);
    free(log);

    /* trailing blanks are no argument; the verb is case-insensitive */
    log = RUN(&cfg, "StartTLS \r\nNOOP\r\n");
    assert_true(replies_are(log, "220|220 2.0.0|EOF"));
    assert_int_equal(count_ev(log, SMTP_EV_STARTTLS), 1);
    free(log);

    /* off: as before STARTTLS existed */
    cfg = make_cfg(CFG_DEFAULT);
    log = RUN(&cfg, "EHLO c\r\nSTARTTLS\r\nNOOP\r\n");
    assert_true(replies_are(log, "220|250|502 5.5.1|250 2.0.0|EOF"));
    assert_true(ev_has(log, SMTP_EV_ERROR, 0, err_sub(SMTP_ERR_NOT_IMPL)));
    assert_int_equal(count_ev(log, SMTP_EV_STARTTLS), 0);
    free(log);

    /* they count toward the error limit */
    cfg = make_cfg(CFG_TLS);
    cfg.error_max = 3;
    log = RUN(&cfg, "STARTTLS x\r\nSTARTTLS x\r\nSTARTTLS x\r\nNOOP\r\n");
    assert_true(replies_are(log, "220|501 5.5.4|501 5.5.4|501 5.5.4|421 4.7.0|CLOSED"));
    free(log);

    /* once encrypted: 503 (run_tls does the handshake) */
    static const tls_case_t c = TLS_CASE("second starttls", CFG_TLS, NULL, "220|220 2.0.0|503 5.5.1|250|503 5.5.1|EOF",
                                         "STARTTLS\r\n", "STARTTLS\r\nEHLO c\r\nSTARTTLS\r\n");
    tls_stats_t st;
    log = run_tls(&c, NULL, 0, NULL, 0, OUTCAP, &st);
    assert_true(replies_are(log, c.expect));
    assert_int_equal(count_ev(log, SMTP_EV_STARTTLS), 1);
    assert_true(ev_has(log, SMTP_EV_ERROR, 1, err_sub(SMTP_ERR_SEQUENCE)));
    assert_int_equal(st.errors, 2);
    assert_int_equal(st.commands, 4);
    assert_true(st.tls);
    free(log);
}

/* The caller cannot do TLS (454): the session goes on in plaintext, as it
 * was; counted unless flagged as not the client's fault. */
static void test_starttls_refused_by_caller(void **state)
{
    (void)state;
    const tls_case_t *c = find_tls_case("starttls refused");
    tls_stats_t st;
    char *log = run_tls(c, NULL, 0, NULL, 0, OUTCAP, &st);
    assert_true(replies_are(log, c->expect));
    assert_true(has_line(log, "S: 454 4.7.0 TLS not available due to local problem\\r\\n"));
    assert_int_equal(count_ev(log, SMTP_EV_STARTTLS), 1);
    assert_int_equal(count_ev(log, SMTP_EV_NOOP), 1);
    assert_int_equal(count_ev(log, SMTP_EV_MAIL), 1);
    assert_null(strstr(log, "\nTLS\n"));
    assert_false(st.tls);
    assert_int_equal(st.errors, 1);
    free(log);

    /* it keeps the EHLO (still offered) and the transaction rules */
    smtp_config_t cfg = make_cfg(CFG_TLS);
    log = RUNV(&cfg, "EHLO c\r\nSTARTTLS\r\nEHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"
                     "DATA\r\nx\r\n.\r\nQUIT\r\n", verdict_no_tls);
    assert_true(replies_are(log, "220|250|454 4.7.0|250|" TX_OK "|221 2.0.0|CLOSED"));
    assert_int_equal(count_prefix(log, "S: 250-STARTTLS"), 2);
    free(log);

    /* flagged SMTP_R_PEER: not the client's error */
    hand_t *h = malloc(sizeof *h);
    assert_non_null(h);
    hand_init(h, CFG_TLS);
    smtp_greet(&h->s);
    assert_int_equal(hand_run(h, "EHLO c\r\n", 8), SMTP_AGAIN);
    const char *p = "STARTTLS\r\nMAIL FROM:<a@example.org>\r\n";
    size_t n = strlen(p);
    smtp_event_t ev;
    assert_int_equal(hand_feed(h, &p, &n, &ev), SMTP_EVENT);
    assert_int_equal(ev.type, SMTP_EV_STARTTLS);
    smtp_reply_t r = { 454, "4.7.0", SLICE_LIT("TLS not available due to local problem"), SMTP_R_PEER };
    smtp_verdict(&h->s, ev.slot, &r);
    assert_false(smtp_tls_pending(&h->s));
    assert_int_equal(h->s.errors, 0);
    assert_int_equal(hand_feed(h, &p, &n, &ev), SMTP_EVENT);
    assert_int_equal(ev.type, SMTP_EV_MAIL);
    hand_free(h);
    free(h);
}

/* tls = encrypt: MAIL before STARTTLS is 530 5.7.0 (no MAIL event, an
 * error); HELO, EHLO, NOOP, RSET, QUIT and STARTTLS work; after the
 * handshake MAIL is taken. */
static void test_starttls_encrypt(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_TLS_ENCRYPT);
    char *log = RUN(&cfg, "MAIL FROM:<a@example.org>\r\n"
                          "EHLO c\r\n"
                          "NOOP\r\n"
                          "RSET\r\n"
                          "MAIL FROM:<a@example.org>\r\n"
                          "RCPT TO:<b@example.com>\r\n"
                          "DATA\r\n"
                          "HELO c\r\n"
                          "STARTTLS\r\n"
                          "MAIL FROM:<a@example.org>\r\n");
    assert_true(replies_are(log, "220|530 5.7.0|250|250 2.0.0|250 2.0.0|530 5.7.0|503 5.5.1|503 5.5.1|250|220 2.0.0|"
                                 "EOF"));
    assert_int_equal(count_ev(log, SMTP_EV_MAIL), 0);
    assert_true(ev_has(log, SMTP_EV_ERROR, 0, err_sub(SMTP_ERR_TLS_REQUIRED)));
    assert_true(ev_has(log, SMTP_EV_ERROR, 1, err_sub(SMTP_ERR_TLS_REQUIRED)));
    assert_true(has_line(log, "S: 530 5.7.0 Must issue a STARTTLS command first\\r\\n"));
    free(log);

    log = RUN(&cfg, "EHLO c\r\nMAIL FROM:<a@example.org>\r\nQUIT\r\n");
    assert_true(replies_are(log, "220|250|530 5.7.0|221 2.0.0|CLOSED"));
    free(log);

    const tls_case_t *c = find_tls_case("starttls required");
    tls_stats_t st;
    log = run_tls(c, NULL, 0, NULL, 0, OUTCAP, &st);
    assert_true(replies_are(log, c->expect));
    assert_int_equal(count_ev(log, SMTP_EV_MAIL), 1);
    assert_true(ev_has(log, SMTP_EV_MAIL, 0, " <a@example.org>"));
    assert_null(strstr(after_tls(log), "err="));
    assert_int_equal(st.errors, 2); /* the 530 and the RCPT behind it */
    assert_int_equal(st.messages, 1);
    free(log);
}

/*
 * STARTTLS ends a pipelined group: read only once the MAIL and RCPT verdicts
 * before it are in, and nothing behind it is read until its own is. With
 * the MAIL refused there is no transaction, STARTTLS is taken, and the NOOP
 * behind it is never answered; with the MAIL accepted, it is 503 and the
 * NOOP is answered.
 */
static void test_starttls_pipelined(void **state)
{
    (void)state;
    static const char group[] = "MAIL FROM:<a@example.org>\r\n"
                                "RCPT TO:<b@example.com>\r\n"
                                "STARTTLS\r\n"
                                "NOOP\r\n";
    for (int accept_mail = 0; accept_mail < 2; accept_mail++) {
        hand_t *h = malloc(sizeof *h);
        assert_non_null(h);
        hand_init(h, CFG_TLS);
        smtp_greet(&h->s);
        assert_int_equal(hand_run(h, "EHLO client.example\r\n", 21), SMTP_AGAIN);
        const char *p = group;
        size_t n = sizeof group - 1;
        smtp_event_t ev;
        assert_int_equal(hand_feed(h, &p, &n, &ev), SMTP_EVENT);
        assert_int_equal(ev.type, SMTP_EV_MAIL);
        uint32_t mail = ev.slot;
        assert_int_equal(hand_feed(h, &p, &n, &ev), SMTP_EVENT);
        assert_int_equal(ev.type, SMTP_EV_RCPT);
        uint32_t rcpt = ev.slot;
        /* STARTTLS waits for both */
        for (int i = 0; i < 2; i++) {
            size_t left = n;
            assert_int_equal(hand_feed(h, &p, &n, &ev), SMTP_PAUSED);
            assert_int_equal(n, left);
        }
        assert_string_equal(p, "STARTTLS\r\nNOOP\r\n");
        smtp_accept(&h->s, rcpt); /* newest first */
        assert_int_equal(hand_feed(h, &p, &n, &ev), SMTP_PAUSED);
        if (accept_mail) {
            smtp_accept(&h->s, mail);
            hand_flush(h);
            assert_int_equal(hand_feed(h, &p, &n, &ev), SMTP_EVENT);
            assert_int_equal(ev.type, SMTP_EV_ERROR);
            assert_int_equal(ev.err, SMTP_ERR_SEQUENCE);
            assert_int_equal(hand_feed(h, &p, &n, &ev), SMTP_EVENT);
            assert_int_equal(ev.type, SMTP_EV_NOOP);
            assert_int_equal(hand_feed(h, &p, &n, &ev), SMTP_AGAIN);
            assert_true(replies_are(h->d.log.buf, "220|250|250 2.1.0|250 2.1.5|503 5.5.1|250 2.0.0"));
            assert_true(has_line(h->d.log.buf, "S: 503 5.5.1 Error: MAIL transaction in progress\\r\\n"));
        } else {
            smtp_reply_t r = rep(550, "5.7.1", "sender refused");
            smtp_verdict(&h->s, mail, &r);
            hand_flush(h);
            assert_int_equal(hand_feed(h, &p, &n, &ev), SMTP_EVENT);
            assert_int_equal(ev.type, SMTP_EV_STARTTLS);
            /* its verdict open: the NOOP stays unread */
            size_t left = n;
            smtp_event_t ev2;
            assert_int_equal(hand_feed(h, &p, &n, &ev2), SMTP_PAUSED);
            assert_int_equal(n, left);
            smtp_accept(&h->s, ev.slot);
            hand_flush(h);
            assert_int_equal(hand_feed(h, &p, &n, &ev2), SMTP_AGAIN);
            assert_int_equal(n, 0);
            assert_true(replies_are(h->d.log.buf, "220|250|550 5.7.1|503 5.5.1|220 2.0.0"));
            assert_int_equal(count_ev(h->d.log.buf, SMTP_EV_NOOP), 0);
            assert_true(smtp_tls_pending(&h->s));
        }
        hand_free(h);
        free(h);
    }
}

/* Does a tls_case give the whole-feed log when cut at these points? */
static bool tls_matches_at(const tls_case_t *c, const char *want, const size_t *sp, size_t nsp, const size_t *se,
                           size_t nse, size_t cap, const char *how)
{
    char *got = run_tls(c, sp, nsp, se, nse, cap, NULL);
    bool ok = strcmp(want, got) == 0;
    if (!ok)
        logs_equal(want, got, c->name, how);
    free(got);
    return ok;
}

/* Every split point of `n` bytes, 1 .. n-1, for byte-by-byte feeding. */
static size_t *every_byte(size_t n)
{
    size_t *sp = malloc((n ? n : 1) * sizeof *sp);
    assert_non_null(sp);
    for (size_t k = 1; k < n; k++)
        sp[k - 1] = k;
    return sp;
}

/*
 * Sessions across the handshake give the same log however either side is
 * cut: at every pair of positions (one in the plaintext, one in the
 * encrypted part; short cases), at every single one, byte by byte, and
 * with smaller output buffers.
 */
static void test_starttls_every_split(void **state)
{
    (void)state;
    int bad = 0;
    for (size_t i = 0; i < NTLS_CASES; i++) {
        const tls_case_t *c = &tls_cases[i];
        char *want = run_tls(c, NULL, 0, NULL, 0, OUTCAP, NULL);
        bool ok = replies_are(want, c->expect) && !strstr(want, "S-PARTIAL") && delivered_bodies_safe(want);
        /* short ones at every pair (0: that side whole), long ones at
         * every single split */
        bool pairs = c->plen <= PAIR_MAX_LEN && c->elen <= PAIR_MAX_LEN;
        for (size_t a = 0; a < c->plen && ok; a++) {
            for (size_t b = 0; b < c->elen && ok; b++) {
                if (!pairs && a && b)
                    break;
                char how[80];
                snprintf(how, sizeof how, "split at %zu in plaintext, %zu in TLS", a, b);
                ok = tls_matches_at(c, want, &a, a != 0, &b, b != 0, OUTCAP, how);
            }
        }
        size_t *sp = every_byte(c->plen), *se = every_byte(c->elen);
        size_t np = c->plen ? c->plen - 1 : 0, ne = c->elen ? c->elen - 1 : 0;
        static const size_t caps[] = { OUTCAP, MID_OUTCAP, SMALL_OUTCAP };
        for (size_t k = 0; k < 3 && ok; k++) {
            char how[80];
            snprintf(how, sizeof how, "byte by byte, output buffer %zu", caps[k]);
            ok = tls_matches_at(c, want, sp, np, se, ne, caps[k], how);
            snprintf(how, sizeof how, "whole, output buffer %zu", caps[k]);
            ok = ok && tls_matches_at(c, want, NULL, 0, NULL, 0, caps[k], how);
        }
        free(sp);
        free(se);
        if (!ok) {
            tu_note("^^^ tls case \"%s\" failed\n\n", c->name);
            bad++;
        }
        free(want);
    }
    if (bad)
        fail_msg("%d of %zu tls cases failed", bad, NTLS_CASES);
}

/* ------------------------------------------------------------------ */
/* 5. Sample sessions at every split                                   */
/* ------------------------------------------------------------------ */

/*
 * The sample tests go through every sample and report every one that fails
 * (the first failing split of each), then fail once at the end.
 */
static void test_samples_whole(void **state)
{
    (void)state;
    int bad = 0;
    for (size_t i = 0; i < nsamples; i++) {
        const sample_t *sm = &samples[i];
        char *log = run_sample(sm, NULL, 0, OUTCAP);
        bool ok = true;
        if (sm->expect && !replies_are(log, sm->expect))
            ok = false;
        if (strstr(log, "S-PARTIAL")) {
            tu_note("a partial reply line\n");
            ok = false;
        }
        if (!delivered_bodies_safe(log))
            ok = false;
        if (!ok) {
            tu_note("^^^ sample \"%s\" failed\n\n", sm->name);
            bad++;
        }
        free(log);
    }
    if (bad)
        fail_msg("%d of %zu samples failed", bad, nsamples);
}

/* Feed a sample at the given splits; print the difference if any. */
static bool sample_matches_at(const sample_t *sm, const char *want, const size_t *sp, size_t nsp, size_t cap,
                              const char *how)
{
    char *got = run_sample(sm, sp, nsp, cap);
    bool ok = strcmp(want, got) == 0;
    if (!ok)
        logs_equal(want, got, sm->name, how);
    free(got);
    return ok;
}

static void test_samples_byte_by_byte(void **state)
{
    (void)state;
    int bad = 0;
    for (size_t i = 0; i < nsamples; i++) {
        const sample_t *sm = &samples[i];
        char *want = run_sample(sm, NULL, 0, OUTCAP);
        size_t *splits = malloc(sm->len * sizeof *splits + 1);
        assert_non_null(splits);
        for (size_t k = 1; k < sm->len; k++)
            splits[k - 1] = k;
        if (!sample_matches_at(sm, want, splits, sm->len ? sm->len - 1 : 0, OUTCAP, "byte by byte"))
            bad++;
        free(splits);
        free(want);
    }
    if (bad)
        fail_msg("%d of %zu samples differ when fed byte by byte", bad, nsamples);
}

static void test_samples_single_splits(void **state)
{
    (void)state;
    int bad = 0;
    for (size_t i = 0; i < nsamples; i++) {
        const sample_t *sm = &samples[i];
        char *want = run_sample(sm, NULL, 0, OUTCAP);
        for (size_t k = 1; k < sm->len; k++) {
            char how[64];
            snprintf(how, sizeof how, "split at %zu", k);
            if (!sample_matches_at(sm, want, &k, 1, OUTCAP, how)) {
                bad++;
                break;
            }
        }
        free(want);
    }
    if (bad)
        fail_msg("%d of %zu samples differ when split in two", bad, nsamples);
}

static void test_samples_pair_splits(void **state)
{
    (void)state;
    int bad = 0;
    size_t runs = 0;
    for (size_t i = 0; i < nsamples; i++) {
        const sample_t *sm = &samples[i];
        if (sm->len > PAIR_MAX_LEN)
            continue;
        char *want = run_sample(sm, NULL, 0, OUTCAP);
        bool ok = true;
        for (size_t a = 1; a < sm->len && ok; a++) {
            for (size_t b = a + 1; b < sm->len && ok; b++) {
                size_t sp[2] = { a, b };
                char how[64];
                snprintf(how, sizeof how, "split at %zu and %zu", a, b);
                ok = sample_matches_at(sm, want, sp, 2, OUTCAP, how);
                runs++;
            }
        }
        if (!ok)
            bad++;
        free(want);
    }
    if (bad)
        fail_msg("%d samples differ when split in three", bad);
    assert_true(runs > 10000); /* the short samples really were covered */
}

/*
 * tu_drive loops on SMTP_FULL, flushing each time: an engine that says FULL
 * while the buffer is empty would hang it. Check by hand first, so such an
 * engine fails the test instead of hanging the run.
 */
static bool outcap_makes_progress(size_t cap)
{
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    char *ob = malloc(cap);
    assert_non_null(ob);
    smtp_out_t o = { .buf = ob, .len = 0, .cap = cap };
    smtp_t s;
    memset(&s, 0, sizeof s);
    smtp_init(&s, &cfg, &o);
    smtp_greet(&s);
    o.len = 0;
    const char *p = "EHLO client.example\r\nNOOP\r\nQUIT\r\n";
    size_t n = strlen(p);
    bool ok = true;
    for (int i = 0; i < 100; i++) {
        size_t used = 0;
        smtp_event_t ev;
        smtp_status_t st = smtp_feed(&s, p, n, &used, &ev);
        p += used, n -= used;
        if (st == SMTP_FULL && o.len == 0) {
            tu_note("smtp_feed returns SMTP_FULL with an empty output buffer of %zu octets: "
                 "the caller can never make progress\n", cap);
            ok = false;
            break;
        }
        o.len = 0;
        if (st == SMTP_EVENT && smtp_ev_wants_verdict(ev.type))
            smtp_accept(&s, ev.slot);
        if (st == SMTP_CLOSED || st == SMTP_AGAIN)
            break;
    }
    smtp_free(&s);
    free(ob);
    return ok;
}

/* Every sample whole, byte by byte and at every single split, small buffer. */
static void samples_with_outcap(size_t cap)
{
    if (!outcap_makes_progress(cap))
        fail_msg("output buffer of %zu octets: engine stalls (see above)", cap);
    int bad = 0;
    for (size_t i = 0; i < nsamples; i++) {
        const sample_t *sm = &samples[i];
        char *want = run_sample(sm, NULL, 0, OUTCAP);
        char how[80];
        snprintf(how, sizeof how, "whole, output buffer %zu", cap);
        bool ok = sample_matches_at(sm, want, NULL, 0, cap, how);
        size_t *splits = malloc(sm->len * sizeof *splits + 1);
        assert_non_null(splits);
        for (size_t k = 1; k < sm->len; k++)
            splits[k - 1] = k;
        snprintf(how, sizeof how, "byte by byte, output buffer %zu", cap);
        ok = ok && sample_matches_at(sm, want, splits, sm->len ? sm->len - 1 : 0, cap, how);
        free(splits);
        for (size_t k = 1; k < sm->len && ok; k++) {
            snprintf(how, sizeof how, "split at %zu, output buffer %zu", k, cap);
            ok = sample_matches_at(sm, want, &k, 1, cap, how);
        }
        if (!ok)
            bad++;
        free(want);
    }
    if (bad)
        fail_msg("%d of %zu samples differ with an output buffer of %zu octets", bad, nsamples, cap);
}

/* smtp.h: below SMTP_OUT_MIN octets of room smtp_feed answers FULL, taking
 * nothing and writing nothing (never a partial reply). */
static void test_outcap_below_min(void **state)
{
    (void)state;
    smtp_config_t cfg = make_cfg(CFG_DEFAULT);
    char ob[SMTP_OUT_MIN];
    smtp_out_t o = { .buf = ob, .len = 0, .cap = sizeof ob - 1 };
    smtp_t s;
    memset(&s, 0, sizeof s);
    smtp_init(&s, &cfg, &o);
    smtp_greet(&s);
    o.len = 0;
    size_t used = 99;
    smtp_event_t ev;
    assert_int_equal(smtp_feed(&s, "NOOP\r\n", 6, &used, &ev), SMTP_FULL);
    assert_int_equal(used, 0);
    assert_int_equal(o.len, 0);
    smtp_free(&s);
}

static void test_samples_outcap_min(void **state)
{
    (void)state;
    samples_with_outcap(SMALL_OUTCAP);
}

static void test_samples_outcap_1100(void **state)
{
    (void)state;
    samples_with_outcap(MID_OUTCAP);
}

/* ------------------------------------------------------------------ */

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_defaults),
        cmocka_unit_test(test_greeting),
        cmocka_unit_test(test_helo),
        cmocka_unit_test(test_ehlo_keywords),
        cmocka_unit_test(test_ehlo_no_smtputf8),
        cmocka_unit_test(test_plain_transaction),
        cmocka_unit_test(test_rset),
        cmocka_unit_test(test_noop_vrfy_expn_help),
        cmocka_unit_test(test_quit),
        cmocka_unit_test(test_case_insensitive),
        cmocka_unit_test(test_not_implemented),
        cmocka_unit_test(test_unknown_verb),
        cmocka_unit_test(test_sequence_errors),
        cmocka_unit_test(test_data_all_rcpt_refused),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_helo_resets_transaction),
        cmocka_unit_test(test_paths),
        cmocka_unit_test(test_utf8_needs_param),
        cmocka_unit_test(test_utf8_paths),
        cmocka_unit_test(test_utf8_invalid),
        cmocka_unit_test(test_utf8_disabled),
        cmocka_unit_test(test_mail_params),
        cmocka_unit_test(test_rcpt_params),
        cmocka_unit_test(test_line_max),
        cmocka_unit_test(test_rcpt_max),
        cmocka_unit_test(test_size_at_mail),
        cmocka_unit_test(test_body_size),
        cmocka_unit_test(test_body_line),
        cmocka_unit_test(test_error_limit),
        cmocka_unit_test(test_body_wire_form),
        cmocka_unit_test(test_smuggling_reject),
        cmocka_unit_test(test_smuggling_normalize),
        cmocka_unit_test(test_early_talk),
        cmocka_unit_test(test_junk_commands),
        cmocka_unit_test(test_pipelining_before_ehlo_reply),
        cmocka_unit_test(test_non_smtp_command_actions),
        cmocka_unit_test(test_bare_newline_command_actions),
        cmocka_unit_test(test_bare_newline_command),
        cmocka_unit_test(test_bare_newline_command_normalize),
        cmocka_unit_test(test_nul_in_command),
        cmocka_unit_test(test_verdict_refuse_rcpt),
        cmocka_unit_test(test_verdict_refuse_mail),
        cmocka_unit_test(test_verdict_deferred),
        cmocka_unit_test(test_verdict_custom_data_end),
        cmocka_unit_test(test_defer_pipelined_group),
        cmocka_unit_test(test_defer_mail_refused),
        cmocka_unit_test(test_defer_no_valid_recipient),
        cmocka_unit_test(test_defer_stops_before_own_reply),
        cmocka_unit_test(test_defer_peer_failure_not_counted),
        cmocka_unit_test(test_peer_refusals),
        cmocka_unit_test(test_open_slots_bound),
        cmocka_unit_test(test_close),
        cmocka_unit_test(test_starttls_ehlo),
        cmocka_unit_test(test_starttls_drops_plaintext),
        cmocka_unit_test(test_starttls_forgets_refused_mail),
        cmocka_unit_test(test_starttls_refusals),
        cmocka_unit_test(test_starttls_refused_by_caller),
        cmocka_unit_test(test_starttls_encrypt),
        cmocka_unit_test(test_starttls_pipelined),
        cmocka_unit_test(test_starttls_every_split),
        cmocka_unit_test(test_samples_whole),
        cmocka_unit_test(test_samples_byte_by_byte),
        cmocka_unit_test(test_samples_single_splits),
        cmocka_unit_test(test_samples_pair_splits),
        cmocka_unit_test(test_outcap_below_min),
        cmocka_unit_test(test_samples_outcap_1100),
        cmocka_unit_test(test_samples_outcap_min),
    };
    return cmocka_run_group_tests(tests, setup_samples, teardown_samples);
}

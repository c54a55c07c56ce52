/*
 * smtp.c - the SMTP server protocol engine.
 *
 * Shape (OpenSMTPD's check/proceed split, Postfix's command table): a line is
 * framed (length, CRLF, control bytes), its verb looked up in cmd_table, and
 * the row's check function decides from state and syntax alone. A check that
 * passes either answers itself (NOOP, RSET...) or hands the caller an event
 * with a reply slot and waits for its verdict; settle() applies verdicts in
 * command order as they reach the head of the reply queue. Every state change
 * goes through enter(). Errors in the data phase are latched by the scanner
 * and answered once, after the final dot.
 *
 * Nothing here depends on how input was split: a command line is processed
 * only when its LF has arrived, a partial line waits in the carry buffer, and
 * the body is scanned by a scanner whose state is byte-exact.
 */
#include "smtp.h"

#include <stdio.h>
#include <stdlib.h>

#define SMTP_OUT_RESERVE SMTP_OUT_MIN

/* Internal: a step that consumed input without anything to report. */
#define SMTP_EVENT_NONE_CONTINUE ((smtp_status_t)100)

/* The carry buffer's length is 16 bits; no sane line limit comes close. */
#define SMTP_LINE_MAX_CAP 65535u

static const char *const ev_names[] = {
    [SMTP_EV_NONE] = "NONE",         [SMTP_EV_EARLY_TALK] = "EARLY_TALK",
    [SMTP_EV_HELO] = "HELO",         [SMTP_EV_EHLO] = "EHLO",
    [SMTP_EV_MAIL] = "MAIL",         [SMTP_EV_RCPT] = "RCPT",
    [SMTP_EV_DATA] = "DATA",         [SMTP_EV_BODY] = "BODY",
    [SMTP_EV_DATA_END] = "DATA_END", [SMTP_EV_DATA_REJECTED] = "DATA_REJECTED",
    [SMTP_EV_RSET] = "RSET",         [SMTP_EV_NOOP] = "NOOP",
    [SMTP_EV_QUIT] = "QUIT",         [SMTP_EV_VRFY] = "VRFY",
    [SMTP_EV_EXPN] = "EXPN",         [SMTP_EV_HELP] = "HELP",
    [SMTP_EV_ERROR] = "ERROR",       [SMTP_EV_STARTTLS] = "STARTTLS",
};

static const char *const err_names[] = {
    [SMTP_ERR_NONE] = "none",
    [SMTP_ERR_LINE_TOO_LONG] = "line_too_long",
    [SMTP_ERR_BARE_LF] = "bare_lf",
    [SMTP_ERR_CONTROL] = "control_byte",
    [SMTP_ERR_UNKNOWN] = "unknown_command",
    [SMTP_ERR_NOT_IMPL] = "not_implemented",
    [SMTP_ERR_SEQUENCE] = "bad_sequence",
    [SMTP_ERR_SYNTAX] = "syntax",
    [SMTP_ERR_PARAM] = "bad_parameter",
    [SMTP_ERR_UTF8] = "utf8_not_allowed",
    [SMTP_ERR_SIZE] = "size_declared",
    [SMTP_ERR_RCPT_MAX] = "too_many_recipients",
    [SMTP_ERR_NO_RCPT] = "no_valid_recipients",
    [SMTP_ERR_JUNK] = "junk",
    [SMTP_ERR_TOO_MANY] = "too_many_errors",
    [SMTP_ERR_BODY_BARE_LF] = "body_bare_lf",
    [SMTP_ERR_BODY_BARE_CR] = "body_bare_cr",
    [SMTP_ERR_BODY_LINE] = "body_line_too_long",
    [SMTP_ERR_BODY_SIZE] = "body_too_large",
    [SMTP_ERR_PROTOCOL] = "protocol",
    [SMTP_ERR_TLS_REQUIRED] = "tls_required",
};

const char *smtp_ev_name(smtp_ev_type_t t)
{
    return (unsigned)t < sizeof ev_names / sizeof ev_names[0] ? ev_names[t] : "?";
}

const char *smtp_err_name(smtp_err_t e)
{
    return (unsigned)e < sizeof err_names / sizeof err_names[0] ? err_names[e] : "?";
}

void smtp_config_defaults(smtp_config_t *c, slice_t hostname)
{
    memset(c, 0, sizeof *c);
    c->hostname = hostname;
    c->line_max = 512;
    c->text_line_max = 1000;
    c->rcpt_max = 100;
    c->error_max = 20;
    c->size_max = 10u << 20;
    c->bare_newline = SCAN_BARE_REJECT;
    c->smtputf8 = true;
    c->tls = SMTP_TLS_OFF; /* the caller has a certificate or not */
    c->on_pipelining = SMTP_VA_IGNORE;
    c->on_non_smtp = SMTP_VA_DROP;
    c->on_bare_newline = SMTP_VA_IGNORE;
}

void smtp_init(smtp_t *s, const smtp_config_t *cfg, smtp_out_t *out)
{
    memset(s, 0, sizeof *s);
    s->cfg = cfg;
    s->out = out;
}

void smtp_free(smtp_t *s)
{
    free(s->_carry);
    s->_carry = NULL;
    replyq_free(&s->rq);
}

/* The one place the state changes; a tracing build can log old -> new here. */
static void enter(smtp_t *s, enum smtp_state st)
{
    if (st <= SMTP_S_HELO || st == SMTP_S_TLS)
        memset(&s->tx, 0, sizeof s->tx);
    s->state = (uint8_t)st;
}

/* After a transaction ends or is reset: HELO state if HELO was given. */
static void reset_tx(smtp_t *s)
{
    enter(s, s->state >= SMTP_S_HELO ? SMTP_S_HELO : SMTP_S_INIT);
}

static void say(smtp_t *s, int code, const char *esc, const char *text)
{
    (void)reply(s->out, code, esc, text);
}

/* "TEXT" prefixed with our hostname, as greetings and 421s are. */
static void say_host(smtp_t *s, int code, const char *esc, const char *text)
{
    char buf[REPLY_LINE_MAX];
    int n = snprintf(buf, sizeof buf, "%.*s %s", (int)s->cfg->hostname.len, s->cfg->hostname.ptr, text);
    (void)reply_line(s->out, code, false, esc, slice_make(buf, n < 0 ? 0 : (size_t)n));
}

void smtp_greet(smtp_t *s)
{
    if (s->state != SMTP_S_CONNECT)
        return;
    say_host(s, 220, NULL, "ESMTP mxgate");
    enter(s, SMTP_S_INIT);
}

void smtp_close(smtp_t *s, int code, const char *esc, const char *text)
{
    if (s->state == SMTP_S_CLOSED)
        return;
    say_host(s, code, esc, text);
    replyq_clear(&s->rq); /* verdicts still to come are dropped */
    s->_mail_failed = false;
    enter(s, SMTP_S_CLOSED);
}

/* An error reply: counted, and past the limit the session ends with 421. */
static void count_error(smtp_t *s)
{
    if (++s->errors >= s->cfg->error_max && s->cfg->error_max && s->state != SMTP_S_CLOSED)
        smtp_close(s, 421, "4.7.0", "Error: too many errors");
}

static smtp_status_t fail(smtp_t *s, smtp_event_t *ev, smtp_err_t err, int code, const char *esc,
                          const char *text)
{
    say(s, code, esc, text);
    ev->type = SMTP_EV_ERROR;
    ev->err = err;
    count_error(s);
    return SMTP_EVENT;
}

/* A protocol test failed (postscreen's): remembered, and acted on as
 * configured. SMTP_EVENT when it dropped the session (521, closed);
 * SMTP_AGAIN when the command goes on as usual. */
static smtp_status_t violation(smtp_t *s, smtp_event_t *ev, unsigned v, uint8_t action)
{
    s->violations |= (uint8_t)v;
    if (action == SMTP_VA_ENFORCE)
        s->enforced |= (uint8_t)v;
    if (action != SMTP_VA_DROP)
        return SMTP_AGAIN;
    smtp_close(s, 521, "5.5.1", "Error: SMTP protocol violation");
    ev->type = SMTP_EV_ERROR;
    ev->err = SMTP_ERR_PROTOCOL;
    return SMTP_EVENT;
}

/* Informational event: the engine has answered. */
static smtp_status_t info(smtp_ev_type_t t, smtp_event_t *ev)
{
    ev->type = t;
    return SMTP_EVENT;
}

/* An event that waits for a verdict in a reply slot. Reading ahead, a full
 * queue pauses (the caller rolls the command back); with nothing open, only
 * memory can be short, which is as fatal here as for the carry buffer. */
static smtp_status_t ask(smtp_t *s, smtp_ev_type_t t, smtp_event_t *ev)
{
    bool ahead = smtp_open(s) != 0;
    if (!replyq_push(&s->rq, (uint8_t)t, SMTP_SLOTS_MAX, &ev->slot)) {
        if (!ahead)
            abort();
        return SMTP_PAUSED;
    }
    ev->type = t;
    /* MAIL and RCPT move the state on as if accepted, so the commands read
     * behind them are checked against it; settle() corrects it. */
    if (t == SMTP_EV_MAIL) {
        enter(s, SMTP_S_MAIL);
    } else if (t == SMTP_EV_RCPT) {
        s->tx.rcpt_ok++;
        enter(s, SMTP_S_RCPT);
    }
    return SMTP_EVENT;
}

static slice_t skip_sp(slice_t a)
{
    while (a.len && *a.ptr == ' ')
        a.ptr++, a.len--;
    return a;
}

/* ---- check functions: state and syntax; one per verb ---- */

typedef smtp_status_t (*check_fn)(smtp_t *s, slice_t args, smtp_event_t *ev);

static smtp_status_t check_helo(smtp_t *s, slice_t args, smtp_event_t *ev, smtp_ev_type_t t)
{
    if (args.len == 0 || memchr(args.ptr, ' ', args.len) || memchr(args.ptr, '\t', args.len))
        return fail(s, ev, SMTP_ERR_SYNTAX, 501, "5.5.4",
                    t == SMTP_EV_EHLO ? "Syntax: EHLO hostname" : "Syntax: HELO hostname");
    /* postscreen's pipelining test: no command may follow HELO/EHLO
     * before its reply (RFC 2920 3.1; PIPELINING has not been offered). */
    if (s->_more && violation(s, ev, SMTP_V_PIPELINING, s->cfg->on_pipelining) == SMTP_EVENT)
        return SMTP_EVENT;
    reset_tx(s); /* RFC 5321 4.1.4: HELO/EHLO resets any transaction */
    s->_mail_peer = false;
    ev->arg = args;
    return ask(s, t, ev);
}

static smtp_status_t check_ehlo_cmd(smtp_t *s, slice_t a, smtp_event_t *ev)
{
    return check_helo(s, a, ev, SMTP_EV_EHLO);
}

static smtp_status_t check_helo_cmd(smtp_t *s, slice_t a, smtp_event_t *ev)
{
    return check_helo(s, a, ev, SMTP_EV_HELO);
}

/* "FROM:" / "TO:" then optional spaces, the path, then parameters. */
static bool path_prefix(slice_t *args, const char *kw)
{
    size_t n = strlen(kw);
    if (args->len < n || !slice_ieq(slice_make(args->ptr, n), kw))
        return false;
    *args = skip_sp(slice_make(args->ptr + n, args->len - n));
    return true;
}

static smtp_status_t path_error(smtp_t *s, smtp_event_t *ev, enum addr_status st, bool sender)
{
    if (st == ADDR_UTF8)
        return fail(s, ev, SMTP_ERR_UTF8, 553, "5.6.7", "Error: SMTPUTF8 is required for non-ASCII addresses");
    return fail(s, ev, SMTP_ERR_SYNTAX, 501, sender ? "5.1.7" : "5.1.3",
                sender ? "Bad sender address syntax" : "Bad recipient address syntax");
}

/* RCPT or DATA sent blind behind a MAIL refused for a peer's trouble: the
 * MAIL's reply again, not counted (the client could not have known). */
static smtp_status_t behind_peer_refusal(smtp_t *s, smtp_event_t *ev)
{
    (void)reply_line(s->out, s->_mail_code, false, s->_mail_esc[0] ? s->_mail_esc : NULL,
                     SLICE_LIT("Error: sender not accepted, try again later"));
    ev->type = SMTP_EV_ERROR;
    ev->err = SMTP_ERR_SEQUENCE;
    return SMTP_EVENT;
}

/* DATA with every recipient refused: 554, or, when none of them was refused
 * for the client's fault (the downstream failed), their reply, uncounted. */
static void say_no_recipients(smtp_t *s)
{
    if (!s->tx.rcpt_client_refused && s->tx.rcpt_peer_code) {
        (void)reply_line(s->out, s->tx.rcpt_peer_code, false, s->tx.rcpt_peer_esc[0] ? s->tx.rcpt_peer_esc : NULL,
                         SLICE_LIT("Error: no recipient could be accepted, try again later"));
        return;
    }
    say(s, 554, "5.5.1", "Error: no valid recipients");
    count_error(s);
}

static smtp_status_t no_recipients(smtp_t *s, smtp_event_t *ev)
{
    say_no_recipients(s);
    ev->type = SMTP_EV_ERROR;
    ev->err = SMTP_ERR_NO_RCPT;
    return SMTP_EVENT;
}

static smtp_status_t check_mail(smtp_t *s, slice_t args, smtp_event_t *ev)
{
    const char *why = "";
    /* RFC 3207 4: a server that requires TLS refuses mail before it; first,
     * as Postfix does, since nothing else the client could fix matters. */
    if (s->cfg->tls == SMTP_TLS_ENCRYPT && !s->tls)
        return fail(s, ev, SMTP_ERR_TLS_REQUIRED, 530, "5.7.0", "Must issue a STARTTLS command first");
    if (s->state == SMTP_S_INIT)
        return fail(s, ev, SMTP_ERR_SEQUENCE, 503, "5.5.1", "Error: send HELO/EHLO first");
    if (s->state >= SMTP_S_MAIL)
        return fail(s, ev, SMTP_ERR_SEQUENCE, 503, "5.5.1", "Error: nested MAIL command");
    if (!path_prefix(&args, "FROM:") || args.len == 0)
        return fail(s, ev, SMTP_ERR_SYNTAX, 501, "5.5.4", "Syntax: MAIL FROM:<address>");
    size_t used = 0;
    enum addr_status as = addr_parse_path(args, ADDR_REVERSE, true, &ev->path, &used, &why);
    if (as != ADDR_OK && as != ADDR_UTF8)
        return path_error(s, ev, as, true);
    slice_t rest = slice_make(args.ptr + used, args.len - used);
    if (rest.len && *rest.ptr != ' ')
        return fail(s, ev, SMTP_ERR_SYNTAX, 501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]");
    switch (addr_parse_mail_params(rest, &ev->params, &why)) {
    case PARAM_OK:
        break;
    case PARAM_SYNTAX:
        return fail(s, ev, SMTP_ERR_SYNTAX, 501, "5.5.4", why);
    case PARAM_UNKNOWN:
        return fail(s, ev, SMTP_ERR_PARAM, 555, "5.5.4", why);
    }
    if (skip_sp(rest).len && !s->esmtp)
        return fail(s, ev, SMTP_ERR_PARAM, 555, "5.5.4", "Parameters need EHLO");
    if (ev->params.smtputf8 && !s->cfg->smtputf8)
        return fail(s, ev, SMTP_ERR_PARAM, 555, "5.5.4", "SMTPUTF8 not supported");
    if (ev->path.utf8 && !ev->params.smtputf8)
        return path_error(s, ev, ADDR_UTF8, true);
    if (s->cfg->size_max && ev->params.has_size && ev->params.size > s->cfg->size_max)
        return fail(s, ev, SMTP_ERR_SIZE, 552, "5.3.4", "Message size exceeds fixed limit");
    s->tx.params = ev->params;
    s->_mail_peer = false;
    return ask(s, SMTP_EV_MAIL, ev);
}

static smtp_status_t check_rcpt(smtp_t *s, slice_t args, smtp_event_t *ev)
{
    const char *why = "";
    if (s->state < SMTP_S_MAIL && s->_mail_peer)
        return behind_peer_refusal(s, ev);
    if (s->state != SMTP_S_MAIL && s->state != SMTP_S_RCPT)
        return fail(s, ev, SMTP_ERR_SEQUENCE, 503, "5.5.1", "Error: need MAIL command");
    if (!path_prefix(&args, "TO:") || args.len == 0)
        return fail(s, ev, SMTP_ERR_SYNTAX, 501, "5.5.4", "Syntax: RCPT TO:<address>");
    size_t used = 0;
    enum addr_status as = addr_parse_path(args, ADDR_FORWARD, s->tx.params.smtputf8, &ev->path, &used, &why);
    if (as != ADDR_OK)
        return path_error(s, ev, as, false);
    slice_t rest = slice_make(args.ptr + used, args.len - used);
    if (rest.len && *rest.ptr != ' ')
        return fail(s, ev, SMTP_ERR_SYNTAX, 501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]");
    switch (addr_parse_rcpt_params(rest, &why)) {
    case PARAM_OK:
        break;
    case PARAM_SYNTAX:
        return fail(s, ev, SMTP_ERR_SYNTAX, 501, "5.5.4", why);
    case PARAM_UNKNOWN:
        return fail(s, ev, SMTP_ERR_PARAM, 555, "5.5.4", why);
    }
    if (s->enforced) {
        /* postscreen's enforce: the client failed a protocol test; it may
         * go on and be logged, but gets no mail in. Not counted toward
         * error_limit: the command itself is fine. */
        s->tx.rcpt_tried++;
        say(s, 550, "5.5.1", "Error: protocol error");
        ev->type = SMTP_EV_ERROR;
        ev->err = SMTP_ERR_PROTOCOL;
        return SMTP_EVENT;
    }
    if (s->cfg->rcpt_max && s->tx.rcpt_ok >= s->cfg->rcpt_max) {
        /* Expected of pipelining clients with long lists (RFC 5321 4.5.3.1.10):
         * not a client error, so not counted toward the error limit. */
        s->tx.rcpt_tried++;
        say(s, 452, "4.5.3", "Error: too many recipients");
        ev->type = SMTP_EV_ERROR;
        ev->err = SMTP_ERR_RCPT_MAX;
        return SMTP_EVENT;
    }
    return ask(s, SMTP_EV_RCPT, ev);
}

static smtp_status_t no_args(smtp_t *s, slice_t args, smtp_event_t *ev, const char *syntax)
{
    if (args.len == 0)
        return SMTP_AGAIN; /* means: fine, go on */
    return fail(s, ev, SMTP_ERR_SYNTAX, 501, "5.5.4", syntax);
}

static smtp_status_t check_data(smtp_t *s, slice_t args, smtp_event_t *ev)
{
    smtp_status_t st = no_args(s, args, ev, "Syntax: DATA");
    if (st != SMTP_AGAIN)
        return st;
    if (s->state < SMTP_S_MAIL && s->_mail_peer)
        return behind_peer_refusal(s, ev);
    if (s->state == SMTP_S_MAIL && s->tx.rcpt_tried)
        return no_recipients(s, ev);
    if (s->state != SMTP_S_RCPT)
        return fail(s, ev, SMTP_ERR_SEQUENCE, 503, "5.5.1",
                    s->state == SMTP_S_MAIL ? "Error: need RCPT command" : "Error: need MAIL command");
    return ask(s, SMTP_EV_DATA, ev);
}

static smtp_status_t check_rset(smtp_t *s, slice_t args, smtp_event_t *ev)
{
    smtp_status_t st = no_args(s, args, ev, "Syntax: RSET");
    if (st != SMTP_AGAIN)
        return st;
    reset_tx(s);
    s->_mail_peer = false;
    say(s, 250, "2.0.0", "Ok");
    return info(SMTP_EV_RSET, ev);
}

static smtp_status_t check_noop(smtp_t *s, slice_t args, smtp_event_t *ev)
{
    (void)args; /* RFC 5321 4.1.1.9: NOOP [ SP String ] */
    say(s, 250, "2.0.0", "Ok");
    return info(SMTP_EV_NOOP, ev);
}

static smtp_status_t check_quit(smtp_t *s, slice_t args, smtp_event_t *ev)
{
    smtp_status_t st = no_args(s, args, ev, "Syntax: QUIT");
    if (st != SMTP_AGAIN)
        return st;
    say(s, 221, "2.0.0", "Bye");
    enter(s, SMTP_S_CLOSED);
    return info(SMTP_EV_QUIT, ev);
}

static smtp_status_t check_vrfy(smtp_t *s, slice_t args, smtp_event_t *ev)
{
    if (args.len == 0)
        return fail(s, ev, SMTP_ERR_SYNTAX, 501, "5.5.4", "Syntax: VRFY address");
    ev->arg = args;
    say(s, 252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery");
    return info(SMTP_EV_VRFY, ev);
}

static smtp_status_t check_expn(smtp_t *s, slice_t args, smtp_event_t *ev)
{
    ev->arg = args;
    fail(s, ev, SMTP_ERR_NOT_IMPL, 502, "5.5.1", "Error: EXPN not available");
    ev->type = SMTP_EV_EXPN;
    return SMTP_EVENT;
}

static smtp_status_t check_help(smtp_t *s, slice_t args, smtp_event_t *ev)
{
    ev->arg = args;
    say(s, 214, "2.0.0", "Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP");
    return info(SMTP_EV_HELP, ev);
}

static smtp_status_t check_not_impl(smtp_t *s, slice_t args, smtp_event_t *ev)
{
    (void)args;
    return fail(s, ev, SMTP_ERR_NOT_IMPL, 502, "5.5.1", "Error: command not implemented");
}

/* RFC 3207. Read only with no verdict open (feed_ahead does not take it), so
 * the state is the real one; its own verdict blocks reading (blocks_reading),
 * so nothing behind it is read in plaintext before settle() decides. */
static smtp_status_t check_starttls(smtp_t *s, slice_t args, smtp_event_t *ev)
{
    if (s->cfg->tls == SMTP_TLS_OFF)
        return check_not_impl(s, args, ev);
    if (s->tls)
        return fail(s, ev, SMTP_ERR_SEQUENCE, 503, "5.5.1", "Error: TLS already active");
    smtp_status_t st = no_args(s, args, ev, "Syntax: STARTTLS");
    if (st != SMTP_AGAIN)
        return st;
    if (s->state >= SMTP_S_MAIL)
        return fail(s, ev, SMTP_ERR_SEQUENCE, 503, "5.5.1", "Error: MAIL transaction in progress");
    return ask(s, SMTP_EV_STARTTLS, ev);
}

/* Four letters as one case-folded word (built byte by byte, so the same on
 * any endianness; compilers turn it into one load). */
#define VKEY(a, b, c, d) ((uint32_t)(a) | (uint32_t)(b) << 8 | (uint32_t)(c) << 16 | (uint32_t)(d) << 24)

static uint32_t verb_key(const char *p)
{
    return VKEY(p[0], p[1], p[2], p[3]) | 0x20202020u;
}

/* One row per verb. Verbs of RFC 821 that RFC 5321 dropped, and extensions
 * we do not offer, are known (502) rather than unknown (500). `key` is the
 * lower-case verb for the four-letter ones, so most lookups are a few
 * integer compares. */
static const struct cmd {
    const char *name;
    uint32_t key;
    check_fn check;
} cmd_table[] = {
    { "EHLO", VKEY('e', 'h', 'l', 'o'), check_ehlo_cmd }, { "HELO", VKEY('h', 'e', 'l', 'o'), check_helo_cmd },
    { "MAIL", VKEY('m', 'a', 'i', 'l'), check_mail },     { "RCPT", VKEY('r', 'c', 'p', 't'), check_rcpt },
    { "DATA", VKEY('d', 'a', 't', 'a'), check_data },     { "RSET", VKEY('r', 's', 'e', 't'), check_rset },
    { "NOOP", VKEY('n', 'o', 'o', 'p'), check_noop },     { "QUIT", VKEY('q', 'u', 'i', 't'), check_quit },
    { "VRFY", VKEY('v', 'r', 'f', 'y'), check_vrfy },     { "EXPN", VKEY('e', 'x', 'p', 'n'), check_expn },
    { "HELP", VKEY('h', 'e', 'l', 'p'), check_help },     { "SEND", VKEY('s', 'e', 'n', 'd'), check_not_impl },
    { "SOML", VKEY('s', 'o', 'm', 'l'), check_not_impl }, { "SAML", VKEY('s', 'a', 'm', 'l'), check_not_impl },
    { "TURN", VKEY('t', 'u', 'r', 'n'), check_not_impl }, { "ETRN", VKEY('e', 't', 'r', 'n'), check_not_impl },
    { "ATRN", VKEY('a', 't', 'r', 'n'), check_not_impl }, { "BDAT", VKEY('b', 'd', 'a', 't'), check_not_impl },
    { "AUTH", VKEY('a', 'u', 't', 'h'), check_not_impl }, { "STARTTLS", 0, check_starttls },
    { "XCLIENT", 0, check_not_impl },                     { "XFORWARD", 0, check_not_impl },
};

static const struct cmd *cmd_lookup(slice_t verb)
{
    const size_t n = sizeof cmd_table / sizeof cmd_table[0];
    if (verb.len == 4) {
        uint32_t k = verb_key(verb.ptr);
        for (size_t i = 0; i < n; i++)
            if (cmd_table[i].key == k && slice_ieq(verb, cmd_table[i].name))
                return &cmd_table[i];
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        if (!cmd_table[i].key && slice_ieq(verb, cmd_table[i].name))
            return &cmd_table[i];
    return NULL;
}

/* Postfix's is_header(): "Subject:" as a verb means a client that lost sync or
 * a web browser pointed at port 25; either way, not an SMTP client. */
static bool is_junk(slice_t verb, slice_t line)
{
    if (verb.len > 1 && verb.ptr[verb.len - 1] == ':') {
        for (size_t i = 0; i + 1 < verb.len; i++) {
            unsigned char c = (unsigned char)verb.ptr[i];
            if (!((c | 0x20) >= 'a' && (c | 0x20) <= 'z') && !(c >= '0' && c <= '9') && c != '-')
                return false;
        }
        return true;
    }
    static const char *const http[] = { "GET", "POST", "HEAD", "PUT", "CONNECT", "OPTIONS", "DELETE" };
    for (size_t i = 0; i < sizeof http / sizeof http[0]; i++)
        if (slice_ieq(verb, http[i]))
            return memmem(line.ptr, line.len, " HTTP/", 6) != NULL;
    return false;
}

/* A complete line, LF excluded. Frames it, then dispatches the verb. */
static smtp_status_t do_line(smtp_t *s, slice_t line, smtp_event_t *ev)
{
    s->commands++;
    if (line.len && line.ptr[line.len - 1] == '\r') {
        line.len--;
    } else {
        if (violation(s, ev, SMTP_V_BARE_NEWLINE, s->cfg->on_bare_newline) == SMTP_EVENT)
            return SMTP_EVENT;
        if (s->cfg->bare_newline != SCAN_BARE_NORMALIZE)
            return fail(s, ev, SMTP_ERR_BARE_LF, 500, "5.5.2", "Error: bare <LF> received");
    }
    for (size_t i = 0; i < line.len; i++) {
        unsigned char c = (unsigned char)line.ptr[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return fail(s, ev, SMTP_ERR_CONTROL, 500, "5.5.2", "Error: control character in command");
    }
    while (line.len && (line.ptr[line.len - 1] == ' ' || line.ptr[line.len - 1] == '\t'))
        line.len--;
    const char *sp = memchr(line.ptr, ' ', line.len);
    slice_t verb = slice_make(line.ptr, sp ? (size_t)(sp - line.ptr) : line.len);
    slice_t args = sp ? slice_make(sp + 1, line.len - verb.len - 1) : SLICE_NULL;
    const struct cmd *c = cmd_lookup(verb);
    if (c)
        return c->check(s, args, ev);
    ev->arg = line;
    if (is_junk(verb, line)) {
        if (s->cfg->on_non_smtp == SMTP_VA_DROP) {
            s->violations |= SMTP_V_NON_SMTP;
            say(s, 221, "2.7.0", "Error: I can break rules, too. Goodbye.");
            enter(s, SMTP_S_CLOSED);
            ev->type = SMTP_EV_ERROR;
            ev->err = SMTP_ERR_JUNK;
            return SMTP_EVENT;
        }
        (void)violation(s, ev, SMTP_V_NON_SMTP, s->cfg->on_non_smtp); /* then an unknown command */
    }
    return fail(s, ev, SMTP_ERR_UNKNOWN, 500, "5.5.2", "Error: command not recognized");
}

static smtp_status_t too_long(smtp_t *s, smtp_event_t *ev)
{
    s->_carry_len = 0;
    s->commands++;
    return fail(s, ev, SMTP_ERR_LINE_TOO_LONG, 500, "5.5.2", "Error: line too long");
}

/* Command phase: one line per call (pipelined lines come in later calls). */
static smtp_status_t feed_command(smtp_t *s, const char *in, size_t len, size_t *consumed, smtp_event_t *ev)
{
    uint32_t max = s->cfg->line_max ? s->cfg->line_max : 512;
    if (max > SMTP_LINE_MAX_CAP)
        max = SMTP_LINE_MAX_CAP;
    const char *lf = memchr(in, '\n', len);
    if (s->_skip) { /* the rest of an over-long line, already answered */
        *consumed = lf ? (size_t)(lf - in) + 1 : len;
        s->_skip = lf == NULL;
        return lf ? SMTP_EVENT_NONE_CONTINUE : SMTP_AGAIN;
    }
    if (!lf) {
        if (s->_carry_len + len >= max) {
            *consumed = len;
            s->_skip = 1;
            return too_long(s, ev);
        }
        if (!s->_carry && !(s->_carry = malloc(max)))
            abort(); /* start-up-sized allocation; out of memory is not recoverable here */
        memcpy(s->_carry + s->_carry_len, in, len);
        s->_carry_len = (uint16_t)(s->_carry_len + len);
        *consumed = len;
        return SMTP_AGAIN;
    }
    size_t n = (size_t)(lf - in) + 1;
    *consumed = n;
    s->_more = n < len;
    if (s->_carry_len + n > max)
        return too_long(s, ev);
    if (s->_carry_len == 0)
        return do_line(s, slice_make(in, n - 1), ev);
    memcpy(s->_carry + s->_carry_len, in, n);
    slice_t line = slice_make(s->_carry, s->_carry_len + n - 1);
    s->_carry_len = 0; /* the bytes stay put until the next feed */
    return do_line(s, line, ev);
}

static smtp_err_t body_error(uint8_t errors)
{
    if (errors & SCAN_ERR_BARE_LF)
        return SMTP_ERR_BODY_BARE_LF;
    if (errors & SCAN_ERR_BARE_CR)
        return SMTP_ERR_BODY_BARE_CR;
    if (errors & SCAN_ERR_SIZE)
        return SMTP_ERR_BODY_SIZE;
    return SMTP_ERR_BODY_LINE;
}

static smtp_status_t feed_body(smtp_t *s, const char *in, size_t len, size_t *consumed, smtp_event_t *ev)
{
    scan_result_t r;
    size_t used = 0;
    for (;;) {
        scan_step(&s->tx.scan, in + used, len - used, &r);
        used += r.consumed;
        if (r.body.len) {
            *consumed = used;
            ev->type = SMTP_EV_BODY;
            ev->arg = r.body;
            return SMTP_EVENT;
        }
        if (r.end)
            break;
        if (used == len) {
            *consumed = used;
            return SMTP_AGAIN;
        }
    }
    *consumed = used;
    s->messages++;
    s->last_size = s->tx.scan.size;
    uint8_t errors = s->tx.scan.errors;
    if (!errors)
        return ask(s, SMTP_EV_DATA_END, ev);
    ev->err = body_error(errors);
    switch (ev->err) {
    case SMTP_ERR_BODY_SIZE:
        say(s, 552, "5.3.4", "Error: message size exceeds fixed limit");
        break;
    case SMTP_ERR_BODY_BARE_LF:
        say(s, 554, "5.5.2", "Error: bare <LF> received");
        break;
    case SMTP_ERR_BODY_BARE_CR:
        say(s, 554, "5.5.2", "Error: bare <CR> received");
        break;
    default:
        say(s, 554, "5.5.2", "Error: text line too long");
        break;
    }
    reset_tx(s);
    ev->type = SMTP_EV_DATA_REJECTED;
    return SMTP_EVENT;
}

/*
 * With verdicts open, a command is taken only if it too waits for a verdict
 * (RCPT, DATA passing their checks). Anything the engine would answer at once
 * is rolled back and left unread until the open verdicts are in: its reply
 * and its effect on the state must not overtake theirs.
 */
static smtp_status_t feed_ahead(smtp_t *s, const char *in, size_t len, size_t *consumed, smtp_event_t *ev)
{
    smtp_t snap = *s;
    size_t out_len = s->out->len;
    smtp_status_t st = feed_command(s, in, len, consumed, ev);
    bool ok = st == SMTP_EVENT ? ev->type == SMTP_EV_RCPT || ev->type == SMTP_EV_DATA
                               : st == SMTP_AGAIN && s->out->len == out_len;
    if (ok)
        return st;
    /* Memory the step may have taken is kept: the carry, a grown ring. */
    char *carry = s->_carry;
    rq_slot_t *ring = s->rq.ring;
    uint32_t cap = s->rq.cap;
    *s = snap;
    s->_carry = carry;
    s->rq.ring = ring;
    s->rq.cap = cap;
    s->out->len = out_len;
    *consumed = 0;
    memset(ev, 0, sizeof *ev);
    return SMTP_PAUSED;
}

/* Is the open head one that no command may be read past (HELO, DATA...)? */
static bool blocks_reading(const smtp_t *s)
{
    if (!smtp_open(s))
        return false;
    const rq_slot_t *tail = replyq_slot(&s->rq, s->rq.tail - 1);
    return tail->kind != SMTP_EV_MAIL && tail->kind != SMTP_EV_RCPT;
}

smtp_status_t smtp_feed(smtp_t *s, const char *in, size_t len, size_t *consumed, smtp_event_t *ev)
{
    *consumed = 0;
    memset(ev, 0, sizeof *ev);
    for (;;) {
        if (s->state == SMTP_S_CLOSED)
            return SMTP_CLOSED;
        if (smtp_drain(s))
            return SMTP_FULL;
        if (s->state == SMTP_S_CLOSED)
            return SMTP_CLOSED; /* a verdict ended it (too many errors) */
        if (blocks_reading(s))
            return SMTP_PAUSED;
        if (s->state == SMTP_S_TLS) {
            /* Between the 220 and the handshake: whatever came in plaintext
             * after STARTTLS is dropped unread (CVE-2011-0411). */
            *consumed += len;
            return SMTP_AGAIN;
        }
        if (len == 0)
            return SMTP_AGAIN;
        if (reply_room(s->out) < SMTP_OUT_RESERVE)
            return SMTP_FULL;
        if (s->state == SMTP_S_CONNECT) {
            /* Talking before the greeting: a bot that does not wait to hear
             * us (postscreen's pregreet test). */
            *consumed = len;
            smtp_close(s, 554, "5.5.0", "Error: SMTP protocol synchronization");
            ev->type = SMTP_EV_EARLY_TALK;
            return SMTP_EVENT;
        }
        size_t n = 0;
        smtp_status_t st;
        if (s->state == SMTP_S_DATA)
            st = feed_body(s, in, len, &n, ev);
        else if (smtp_open(s))
            st = feed_ahead(s, in, len, &n, ev);
        else
            st = feed_command(s, in, len, &n, ev);
        *consumed += n;
        if (st != SMTP_EVENT_NONE_CONTINUE)
            return st;
        in += n, len -= n; /* the tail of a skipped line: nothing to report */
    }
}

/* ---- settle: what a verdict does, in command order ---- */

static void ehlo_reply(smtp_t *s, slice_t first)
{
    char size[40];
    if (s->cfg->size_max)
        snprintf(size, sizeof size, "SIZE %llu", (unsigned long long)s->cfg->size_max);
    else
        snprintf(size, sizeof size, "SIZE");
    const char *caps[6];
    size_t ncaps = 0;
    caps[ncaps++] = "PIPELINING";
    caps[ncaps++] = size;
    if (s->cfg->tls != SMTP_TLS_OFF && !s->tls) /* where Postfix lists it */
        caps[ncaps++] = "STARTTLS";
    caps[ncaps++] = "8BITMIME";
    caps[ncaps++] = "ENHANCEDSTATUSCODES";
    if (s->cfg->smtputf8)
        caps[ncaps++] = "SMTPUTF8";
    (void)reply_line(s->out, 250, true, NULL, first);
    for (size_t i = 0; i < ncaps; i++)
        (void)reply_line(s->out, 250, i + 1 < ncaps, NULL, slice_make(caps[i], strlen(caps[i])));
}

static void say_reply(smtp_t *s, const smtp_reply_t *r)
{
    (void)reply_line(s->out, r->code, false, r->esc, r->text);
}

/* A refusal: counted against the client unless it was not its fault. */
static void refused(smtp_t *s, const smtp_reply_t *r)
{
    say_reply(s, r);
    if (!(r->flags & SMTP_R_PEER))
        count_error(s);
}

/* A command read behind a refused MAIL: 503, or the MAIL's own reply when
 * that was not the client's fault (the client could not have known). */
static void behind_failed_mail(smtp_t *s)
{
    if (s->_mail_flags & SMTP_R_PEER) {
        smtp_reply_t r = { s->_mail_code, s->_mail_esc[0] ? s->_mail_esc : NULL,
                           SLICE_LIT("Error: sender not accepted, try again later"), SMTP_R_PEER };
        refused(s, &r);
        return;
    }
    say(s, 503, "5.5.1", "Error: need MAIL command");
    count_error(s);
}

/* Apply the head's verdict and write its reply. */
static void settle(smtp_t *s, smtp_ev_type_t t, const smtp_reply_t *r)
{
    bool ok = r->code < 400;
    switch (t) {
    case SMTP_EV_HELO:
    case SMTP_EV_EHLO:
        if (!ok) {
            refused(s, r);
            break;
        }
        if (t == SMTP_EV_EHLO)
            ehlo_reply(s, r->text);
        else
            (void)reply_line(s->out, r->code, false, NULL, r->text);
        s->esmtp = t == SMTP_EV_EHLO;
        enter(s, SMTP_S_HELO);
        break;
    case SMTP_EV_MAIL:
        if (ok) {
            say_reply(s, r);
            break;
        }
        s->_mail_failed = true;
        s->_mail_peer = r->flags & SMTP_R_PEER;
        s->_mail_flags = r->flags;
        s->_mail_code = (uint16_t)r->code;
        snprintf(s->_mail_esc, sizeof s->_mail_esc, "%s", r->esc ? r->esc : "");
        refused(s, r);
        break;
    case SMTP_EV_RCPT:
        s->tx.rcpt_tried++;
        if (s->_mail_failed || !ok)
            s->tx.rcpt_ok--;
        if (s->_mail_failed) {
            behind_failed_mail(s);
        } else if (!ok) {
            if (r->flags & SMTP_R_PEER) {
                s->tx.rcpt_peer_code = (uint16_t)r->code;
                snprintf(s->tx.rcpt_peer_esc, sizeof s->tx.rcpt_peer_esc, "%s", r->esc ? r->esc : "");
            } else {
                s->tx.rcpt_client_refused = true;
            }
            refused(s, r);
        } else {
            say_reply(s, r);
        }
        break;
    case SMTP_EV_DATA:
        if (s->_mail_failed) {
            behind_failed_mail(s);
        } else if (s->tx.rcpt_ok == 0) {
            say_no_recipients(s); /* as a DATA read after the refusals would get */
        } else if (!ok) {
            refused(s, r);
        } else {
            (void)reply_line(s->out, r->code, false, NULL, r->text);
            scan_init(&s->tx.scan, s->cfg->size_max, s->cfg->text_line_max, (enum scan_bare)s->cfg->bare_newline);
            enter(s, SMTP_S_DATA);
        }
        break;
    case SMTP_EV_DATA_END:
        say_reply(s, r); /* a refused message is not a client error */
        reset_tx(s);
        break;
    case SMTP_EV_STARTTLS:
        if (!ok) {
            refused(s, r); /* 454: the session goes on in plaintext */
            break;
        }
        say_reply(s, r);
        enter(s, SMTP_S_TLS);
        break;
    default:
        break;
    }
}

/* Every open verdict is in: the state the real verdicts lead to. */
static void settle_state(smtp_t *s)
{
    if (s->state == SMTP_S_CLOSED || s->state == SMTP_S_DATA || s->state == SMTP_S_TLS)
        return;
    if (s->_mail_failed) {
        s->_mail_failed = false;
        reset_tx(s);
    } else if (s->state == SMTP_S_RCPT && s->tx.rcpt_ok == 0) {
        s->state = SMTP_S_MAIL;
    }
}

bool smtp_drain(smtp_t *s)
{
    const rq_slot_t *h;
    while (s->state != SMTP_S_CLOSED && (h = replyq_ready(&s->rq))) {
        if (reply_room(s->out) < SMTP_OUT_RESERVE)
            return true;
        char esc[RQ_ESC_MAX + 1];
        smtp_reply_t r = replyq_reply(&s->rq, h, esc);
        if (!r.text.ptr)
            r.text = r.code < 400 ? SLICE_LIT("Ok") : SLICE_LIT("Error");
        settle(s, (smtp_ev_type_t)h->kind, &r);
        replyq_pop(&s->rq);
        if (!smtp_open(s))
            settle_state(s);
    }
    return false;
}

void smtp_verdict(smtp_t *s, uint32_t slot, const smtp_reply_t *r)
{
    if (s->state == SMTP_S_CLOSED)
        return;
    smtp_reply_t v = *r;
    if (v.code < 200 || v.code > 599)
        v = (smtp_reply_t){ 451, "4.3.0", SLICE_LIT("Error: internal error, try again later"), SMTP_R_PEER };
    bool now = slot == s->rq.head && reply_room(s->out) >= SMTP_OUT_RESERVE;
    if (replyq_fill(&s->rq, slot, &v, now))
        (void)smtp_drain(s);
}

void smtp_accept(smtp_t *s, uint32_t slot)
{
    const rq_slot_t *sl = replyq_slot(&s->rq, slot);
    if (!sl || sl->filled)
        return;
    smtp_reply_t r = { 250, NULL, SLICE_LIT("Ok"), 0 };
    switch ((smtp_ev_type_t)sl->kind) {
    case SMTP_EV_HELO:
    case SMTP_EV_EHLO:
        r.text = s->cfg->hostname;
        break;
    case SMTP_EV_MAIL:
        r.esc = "2.1.0";
        break;
    case SMTP_EV_RCPT:
        r.esc = "2.1.5";
        break;
    case SMTP_EV_DATA:
        r = (smtp_reply_t){ 354, NULL, SLICE_LIT("End data with <CR><LF>.<CR><LF>"), 0 };
        break;
    case SMTP_EV_DATA_END:
        r = (smtp_reply_t){ 250, "2.0.0", SLICE_LIT("Ok: queued"), 0 };
        break;
    case SMTP_EV_STARTTLS:
        r = (smtp_reply_t){ 220, "2.0.0", SLICE_LIT("Ready to start TLS"), 0 };
        break;
    default:
        break;
    }
    smtp_verdict(s, slot, &r);
}

void smtp_tls_started(smtp_t *s)
{
    if (s->state != SMTP_S_TLS)
        return;
    /* RFC 3207 4.2: discard all knowledge obtained from the client before
     * TLS. Nothing here survives but the counters. */
    replyq_clear(&s->rq);
    s->_carry_len = 0;
    s->_skip = 0;
    s->_mail_failed = false;
    s->_mail_peer = false;
    s->_mail_flags = 0;
    s->_mail_code = 0;
    s->_mail_esc[0] = 0;
    s->esmtp = false;
    s->tls = true;
    enter(s, SMTP_S_INIT);
}

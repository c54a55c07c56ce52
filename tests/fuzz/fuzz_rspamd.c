/*
 * fuzz_rspamd.c - libFuzzer target over rspamd.h: the HTTP response reader
 * with fuzzer-chosen fragmentation, the JSON verdict reader, the request
 * head's refusal of unsafe values, and header folding and rendering.
 *
 * Input: a 1-byte header, then what the mode reads.
 *   h[0] bits 0-2: number of chunk-length bytes that follow (mode 0 only;
 *                  0: no splits), cycled as in fuzzutil.h;
 *   h[0] bits 3-4: the mode:
 *     0  an HTTP response (at most FUZZ_MAX_INPUT octets), fed whole, at the
 *        fuzzer's splits and (when short) byte by byte, each piece its own
 *        heap block freed once fed; the printed logs must be equal. When it
 *        is DONE, its body goes to the verdict checks below.
 *     1  a JSON body, straight to the verdict checks.
 *     2  a request envelope: fields separated by NUL (ip, helo, sender,
 *        queue id, MTA name, then recipients).
 *     3  a header: name NUL value; and the value as a subject.
 * The seeds in corpus/fuzz_rspamd/ are in this format.
 *
 * Checks (__builtin_trap on failure):
 *  - the feed contract: consumed <= input; AGAIN only with all consumed;
 *    ERROR consumes nothing, has a reason and sticks; DONE sticks;
 *  - every verdict: enums in range; smtp_message and error printable ASCII,
 *    trimmed, at most RSPAMD_TEXT_MAX; every header kept passes
 *    rspamd_header_ok and lies in the arena; the auth results agree with
 *    their *_seen bits; the rendered headers and subject are wire-form
 *    lines of at most 998 octets whose continuation lines start with white
 *    space, unfolding to "name: value" (encoded-words decode to the
 *    subject), and never overrun a buffer one octet short;
 *  - the request head: built only when no field has a control octet, then
 *    a request line, "Name: value" lines of known names with the fields'
 *    bytes, one Rcpt per recipient, and a blank line.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzzutil.h"
#include "rspamd.h"

#define FUZZ_MAX_INPUT 65536
#define FUZZ_MAX_SPLITS 1024
#define FUZZ_BYTEWISE_MAX 512

static rspamd_verdict_t verdict;
static char out[1 << 18];

static bool within(slice_t s, const char *base, size_t n)
{
    return s.len == 0 || (s.ptr >= base && s.ptr + s.len <= base + n);
}

static void check_text(slice_t s)
{
    CHECK(s.len <= RSPAMD_TEXT_MAX);
    for (size_t i = 0; i < s.len; i++) {
        CHECK(s.ptr[i] >= 0x20 && s.ptr[i] < 0x7f);
        CHECK(s.ptr[i] != ' ' || (i > 0 && i + 1 < s.len && s.ptr[i - 1] != ' '));
    }
}

static void check_auth(rspamd_auth_t a, uint8_t seen)
{
    CHECK(a <= RSPAMD_AUTH_NONE);
    CHECK((seen & 1) == 0);
    if (a == RSPAMD_AUTH_ABSENT) {
        CHECK(seen == 0);
        return;
    }
    CHECK(seen & (1u << a));
    CHECK((seen & ((1u << a) - 1)) == 0); /* the best one seen */
}

/* Wire lines: CRLF only as a line end, each line at most 998 octets, each
 * continuation starting with white space; the unfolded text (CRLFs taken
 * out) into u, its length returned. */
static size_t unfold(const char *w, size_t n, char *u)
{
    size_t col = 0, k = 0;
    CHECK(n >= 2 && w[n - 2] == '\r' && w[n - 1] == '\n');
    for (size_t i = 0; i < n; i++) {
        if (w[i] == '\r') {
            CHECK(i + 1 < n && w[i + 1] == '\n');
            CHECK(col <= RSPAMD_WIRE_LINE_MAX);
            i++;
            col = 0;
            continue;
        }
        CHECK(w[i] != '\n');
        u[k++] = w[i];
        col++;
    }
    return k;
}

/* The value with its own folds' CRLFs taken out. */
static size_t strip_crlf(slice_t v, char *u)
{
    size_t k = 0;
    for (size_t i = 0; i < v.len; i++) {
        if (v.ptr[i] == '\r')
            i++;
        else
            u[k++] = v.ptr[i];
    }
    return k;
}

static char ua[1 << 18], ub[1 << 18];

/* One header's wire form, checked line by line. */
static void check_one_wire(const char *w, size_t n, slice_t name, slice_t value)
{
    size_t k = unfold(w, n, ua);
    for (size_t i = 0; i + 2 < n; i++)
        if (w[i] == '\r')
            CHECK(w[i + 2] == ' ' || w[i + 2] == '\t');
    CHECK(k == name.len + 2 + strip_crlf(value, ub));
    CHECK(memcmp(ua, name.ptr, name.len) == 0 && memcmp(ua + name.len, ": ", 2) == 0);
    CHECK(memcmp(ua + name.len + 2, ub, k - name.len - 2) == 0);
}

static int unb64(char c)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char *p = c ? strchr(t, c) : NULL;
    return p ? (int)(p - t) : -1;
}

/* "Subject: =?UTF-8?B?..?=\r\n( =?UTF-8?B?..?=\r\n)*" decodes to the
 * subject unfolded; every line within 76 octets. */
static void check_words(const char *w, size_t n, slice_t subject)
{
    size_t k = 0, i = 9, col = 0;
    CHECK(n > 9 && memcmp(w, "Subject: ", 9) == 0);
    for (size_t j = 0; j < n; j++, col++) {
        if (w[j] == '\r') {
            CHECK(col <= 76);
            col = (size_t)-1;
            j++;
        }
    }
    while (i < n) {
        if (i > 9) {
            CHECK(w[i] == ' ');
            i++;
        }
        CHECK(n - i > 12 && memcmp(w + i, "=?UTF-8?B?", 10) == 0);
        const char *end = memmem(w + i + 10, n - i - 10, "?=", 2);
        CHECK(end != NULL && (end - (w + i + 10)) % 4 == 0 && end + 2 - (w + i) <= 75);
        for (const char *p = w + i + 10; p < end; p += 4) {
            int a = unb64(p[0]), b = unb64(p[1]), c = p[2] == '=' ? 0 : unb64(p[2]), d = p[3] == '=' ? 0 : unb64(p[3]);
            CHECK(a >= 0 && b >= 0 && c >= 0 && d >= 0);
            uint32_t x = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
            ua[k++] = (char)(x >> 16);
            if (p[2] != '=')
                ua[k++] = (char)(x >> 8 & 0xff);
            if (p[3] != '=')
                ua[k++] = (char)(x & 0xff);
        }
        i = (size_t)(end + 2 - w);
        CHECK(n - i >= 2 && w[i] == '\r' && w[i + 1] == '\n');
        i += 2;
    }
    size_t m = strip_crlf(subject, ub);
    CHECK(k == m && memcmp(ua, ub, k) == 0);
}

/* The render never writes past a buffer one octet short. */
static void check_short(size_t need, bool subject, bool utf8)
{
    if (need == 0)
        return;
    char *b = malloc(need - 1 ? need - 1 : 1);
    CHECK(b != NULL);
    size_t n;
    rspamd_err_t e = subject ? rspamd_render_subject(&verdict, utf8, b, need - 1, &n)
                             : rspamd_render_headers(&verdict, b, need - 1, &n);
    CHECK(e == RSPAMD_ERR_NO_ROOM);
    free(b);
}

static void check_subject(void)
{
    size_t n;
    for (int utf8 = 0; utf8 <= 1; utf8++) {
        CHECK(rspamd_render_subject(&verdict, utf8, out, sizeof out, &n) == RSPAMD_ERR_NONE);
        if (verdict.subject.len == 0) {
            CHECK(n == 0);
            continue;
        }
        bool ascii = true;
        for (size_t i = 0; i < verdict.subject.len; i++)
            ascii = ascii && (unsigned char)verdict.subject.ptr[i] < 0x80;
        if (ascii || utf8)
            check_one_wire(out, n, SLICE_LIT("Subject"), verdict.subject);
        else
            check_words(out, n, verdict.subject);
        check_short(n, true, utf8);
    }
}

static void check_verdict(rspamd_err_t e)
{
    const rspamd_verdict_t *v = &verdict;
    CHECK(e <= RSPAMD_ERR_ACTION && rspamd_err_name(e)[0] != '?');
    CHECK(v->action <= RSPAMD_REJECT);
    check_text(v->smtp_message);
    check_text(v->error);
    CHECK(within(v->smtp_message, v->text[0], sizeof v->text[0]) && within(v->error, v->text[1], sizeof v->text[1]));
    check_auth(v->dkim, v->dkim_seen);
    check_auth(v->dmarc, v->dmarc_seen);
    check_auth(v->arc, v->arc_seen);
    CHECK(v->dmarc_policy <= RSPAMD_DMARC_POLICY_REJECT);
    CHECK(v->dmarc_policy == RSPAMD_DMARC_POLICY_UNKNOWN || v->dmarc == RSPAMD_AUTH_FAIL);
    CHECK(v->arena_len <= RSPAMD_ARENA_MAX);
    CHECK(v->nadd <= RSPAMD_ADD_MAX && v->nremove <= RSPAMD_REMOVE_MAX);
    if (v->subject.len) {
        CHECK(within(v->subject, v->arena, v->arena_len));
        CHECK(rspamd_header_ok(SLICE_LIT("Subject"), v->subject));
    }
    for (size_t i = 0; i < v->nadd; i++) {
        CHECK(within(v->add[i].name, v->arena, v->arena_len) && within(v->add[i].value, v->arena, v->arena_len));
        CHECK(rspamd_header_ok(v->add[i].name, v->add[i].value));
    }
    for (size_t i = 0; i < v->nremove; i++) {
        CHECK(v->remove[i].name.len > 0 && within(v->remove[i].name, v->arena, v->arena_len));
        CHECK(v->remove[i].index >= -1000000 && v->remove[i].index <= 1000000);
    }
    size_t n;
    CHECK(rspamd_render_headers(v, out, sizeof out, &n) == RSPAMD_ERR_NONE);
    /* header by header, in the order promised: order >= 0 ascending, then
     * the rest, each group as listed (ranked here independently) */
    size_t idx[RSPAMD_ADD_MAX], pos = 0;
    for (size_t i = 0; i < v->nadd; i++) {
        long ki = v->add[i].order < 0 ? 1L << 40 : v->add[i].order;
        size_t rank = 0;
        for (size_t j = 0; j < v->nadd; j++) {
            long kj = v->add[j].order < 0 ? 1L << 40 : v->add[j].order;
            rank += kj < ki || (kj == ki && j < i);
        }
        idx[rank] = i;
    }
    for (size_t r = 0; r < v->nadd; r++) {
        const rspamd_header_t *h = &v->add[idx[r]];
        size_t end = pos;
        while (end + 1 < n && !(out[end] == '\r' && out[end + 1] == '\n' &&
                                (end + 2 == n || (out[end + 2] != ' ' && out[end + 2] != '\t'))))
            end++;
        CHECK(end + 1 < n);
        end += 2;
        check_one_wire(out + pos, end - pos, h->name, h->value);
        pos = end;
    }
    CHECK(pos == n);
    check_short(n, false, false);
    check_subject();
}

static void parse_and_check(const char *body, size_t len)
{
    char *copy = malloc(len ? len : 1);
    CHECK(copy != NULL);
    memcpy(copy, body, len);
    rspamd_err_t e = rspamd_verdict_parse(&verdict, slice_make(copy, len));
    free(copy); /* the verdict owns its text */
    check_verdict(e);
}

/* ---- mode 0: the response ---- */

static tu_log_t drive(const char *in, size_t len, const size_t *splits, size_t nsplits, bool verdict_too)
{
    tu_log_t log = { 0 };
    rspamd_resp_t *r = calloc(1, sizeof *r);
    CHECK(r != NULL);
    size_t prev = 0, extra = 0;
    bool failed = false, done = false;
    for (size_t i = 0; i <= nsplits && !failed; i++) {
        size_t end = i < nsplits ? splits[i] : len, n = end - prev, used = (size_t)-1;
        char *piece = malloc(n ? n : 1);
        CHECK(piece != NULL);
        memcpy(piece, in + prev, n);
        enum rspamd_status st = rspamd_resp_feed(r, piece, n, &used);
        CHECK(used <= n);
        if (st == RSPAMD_ERROR) {
            CHECK(used == 0 && rspamd_resp_error(r) != RSPAMD_ERR_NONE);
            used = 1;
            CHECK(rspamd_resp_feed(r, "HTTP/1.1 200 OK\r\n", 17, &used) == RSPAMD_ERROR && used == 0);
            failed = true;
        } else if (st == RSPAMD_AGAIN) {
            CHECK(!done && used == n);
        } else {
            CHECK(st == RSPAMD_DONE && (!done || used == 0));
            extra += n - used;
            done = true;
        }
        free(piece);
        prev = end;
    }
    char t[160];
    if (failed)
        snprintf(t, sizeof t, "ERROR %s at=%zu\n", rspamd_err_name(rspamd_resp_error(r)), rspamd_resp_offset(r));
    else if (done)
        snprintf(t, sizeof t, "DONE code=%d keep=%d extra=%zu at=%zu\n", rspamd_resp_code(r),
                 rspamd_resp_keepalive(r), extra, rspamd_resp_offset(r));
    else
        snprintf(t, sizeof t, "AGAIN at=%zu\n", rspamd_resp_offset(r));
    tu_puts(&log, t);
    if (done) {
        slice_t body = rspamd_resp_body(r);
        CHECK(rspamd_resp_code(r) >= 200 && rspamd_resp_code(r) <= 599);
        CHECK(body.len <= RSPAMD_BODY_MAX);
        tu_put_escaped(&log, body);
        tu_puts(&log, "\n");
        if (verdict_too)
            parse_and_check(body.ptr, body.len);
    } else {
        CHECK(rspamd_resp_body(r).len == 0);
    }
    rspamd_resp_free(r);
    free(r);
    return log;
}

static void mode_response(const uint8_t *data, size_t size)
{
    static size_t splits[FUZZ_MAX_SPLITS];
    size_t nlen = data[0] & 7, len, nsplits;
    const char *in;
    if (!fuzz_rest(data, size, 1, nlen, FUZZ_MAX_INPUT, &in, &len, splits, FUZZ_MAX_SPLITS, &nsplits))
        return;
    tu_log_t whole = drive(in, len, NULL, 0, true);
    tu_log_t split = drive(in, len, splits, nsplits, false);
    fuzz_same_or_trap("logs with and without the fuzzer's splits", &whole, &split);
    tu_free_log(&split);
    if (len <= FUZZ_BYTEWISE_MAX && len > 1) {
        for (size_t i = 1; i < len; i++)
            splits[i - 1] = i;
        tu_log_t bytes = drive(in, len, splits, len - 1, false);
        fuzz_same_or_trap("logs whole and byte by byte", &whole, &bytes);
        tu_free_log(&bytes);
    }
    tu_free_log(&whole);
}

/* ---- mode 2: the request ---- */

static bool has_ctl(slice_t s)
{
    for (size_t i = 0; i < s.len; i++)
        if ((unsigned char)s.ptr[i] < 0x20 || s.ptr[i] == 0x7f)
            return true;
    return false;
}

static bool ip_chars(slice_t s)
{
    for (size_t i = 0; i < s.len; i++)
        if (!strchr("0123456789abcdefABCDEF.:", s.ptr[i]) || s.ptr[i] == 0)
            return false;
    return true;
}

static void mode_request(const char *p, size_t n)
{
    slice_t f[5] = { SLICE_NULL, SLICE_NULL, SLICE_NULL, SLICE_NULL, SLICE_NULL };
    slice_t rc[64];
    size_t nf = 0, nrc = 0, start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && p[i] != '\0')
            continue;
        slice_t s = slice_make(p + start, i - start);
        if (nf < 5)
            f[nf++] = s;
        else if (nrc < 64)
            rc[nrc++] = s;
        start = i + 1;
    }
    rspamd_env_t env = { f[0], f[1], f[2], rc, nrc, f[3], f[4] };
    bool bad = has_ctl(f[0]) || !ip_chars(f[0]);
    for (size_t i = 1; i < 5; i++)
        bad = bad || has_ctl(f[i]);
    for (size_t i = 0; i < nrc; i++)
        bad = bad || has_ctl(rc[i]) || rc[i].len == 0;
    size_t len = 0;
    const char *field = NULL;
    rspamd_err_t e = rspamd_request_head(out, sizeof out, &len, &env, (uint64_t)n, &field);
    CHECK(e == (bad ? RSPAMD_ERR_UNSAFE_VALUE : RSPAMD_ERR_NONE));
    CHECK((field != NULL) == bad);
    if (bad)
        return;
    static const char first[] = "POST /checkv2 HTTP/1.1\r\n";
    CHECK(len > sizeof first + 2 && memcmp(out, first, sizeof first - 1) == 0);
    CHECK(memcmp(out + len - 4, "\r\n\r\n", 4) == 0);
    static const char *const names[] = { "Host", "Connection", "IP", "Helo", "From", "Rcpt", "Queue-Id", "MTA-Name",
                                         "Content-Length" };
    size_t rcpts = 0, pos = sizeof first - 1;
    while (pos < len - 2) {
        const char *eol = memmem(out + pos, len - pos, "\r\n", 2);
        CHECK(eol != NULL);
        size_t ll = (size_t)(eol - (out + pos));
        const char *colon = memchr(out + pos, ':', ll);
        CHECK(colon != NULL && colon[1] == ' ');
        size_t nl = (size_t)(colon - (out + pos));
        bool known = false;
        for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
            known = known || (strlen(names[k]) == nl && memcmp(names[k], out + pos, nl) == 0);
        CHECK(known);
        for (size_t k = 0; k < ll; k++)
            CHECK((unsigned char)out[pos + k] >= 0x20 && out[pos + k] != 0x7f);
        if (nl == 4 && memcmp(out + pos, "Rcpt", 4) == 0) {
            CHECK(rcpts < nrc && ll - 6 == rc[rcpts].len && memcmp(colon + 2, rc[rcpts].ptr, ll - 6) == 0);
            rcpts++;
        }
        pos += ll + 2;
    }
    CHECK(rcpts == nrc);
    /* no room, a byte short, never overruns */
    char *b = malloc(len - 1);
    CHECK(b != NULL);
    size_t m;
    CHECK(rspamd_request_head(b, len - 1, &m, &env, (uint64_t)n, NULL) == RSPAMD_ERR_NO_ROOM);
    free(b);
}

/* ---- mode 3: one header, and a subject ---- */

static void mode_header(const char *p, size_t n)
{
    const char *nul = memchr(p, '\0', n);
    slice_t name = nul ? slice_make(p, (size_t)(nul - p)) : SLICE_LIT("X-Fuzz");
    slice_t value = nul ? slice_make(nul + 1, n - (size_t)(nul - p) - 1) : slice_make(p, n);
    if (value.len > RSPAMD_ARENA_MAX / 2)
        return;
    memset(&verdict, 0, offsetof(rspamd_verdict_t, arena));
    verdict.arena_len = 0;
    if (rspamd_header_ok(name, value)) {
        memcpy(verdict.arena, name.ptr, name.len);
        memcpy(verdict.arena + name.len, value.ptr, value.len);
        verdict.add[0] = (rspamd_header_t){ slice_make(verdict.arena, name.len),
                                            slice_make(verdict.arena + name.len, value.len), -1 };
        verdict.nadd = 1;
        verdict.arena_len = name.len + value.len;
        size_t m;
        CHECK(rspamd_render_headers(&verdict, out, sizeof out, &m) == RSPAMD_ERR_NONE);
        check_one_wire(out, m, name, value);
        check_short(m, false, false);
    }
    if (rspamd_header_ok(SLICE_LIT("Subject"), value)) {
        memcpy(verdict.arena + verdict.arena_len, value.ptr, value.len);
        verdict.subject = slice_make(verdict.arena + verdict.arena_len, value.len);
        verdict.arena_len += value.len;
        check_subject();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    switch ((data[0] >> 3) & 3) {
    case 0:
        mode_response(data, size);
        break;
    case 1:
        if (n <= FUZZ_MAX_INPUT)
            parse_and_check(p, n);
        break;
    case 2:
        if (n <= 4096)
            mode_request(p, n);
        break;
    case 3:
        mode_header(p, n);
        break;
    }
    return 0;
}

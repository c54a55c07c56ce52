/*
 * test_dsn.c - the bounce builder (core/dsn.h).
 *
 * Covers:
 *   1. dates: known timestamps (the epoch, a leap day, 2023), and a sweep
 *      of random ones against gmtime_r + strftime;
 *   2. one recipient refused with a 5xx: every header and field expected,
 *      wire form (CRLF only, stuffed, lines within 998), three parts in
 *      order, the declared boundary the one used and nowhere else;
 *   3. expiry: Action failed, Status 4.4.7 (or the reply's), the human text
 *      says how long it was queued;
 *   4. several recipients, each with its block and its line;
 *   5. hostile values (CR, LF, NUL, 8-bit, boundary-like text) in every
 *      caller's slice: no header, field or boundary line appears that we
 *      did not write, and the original's header section is returned alone;
 *   6. the returned headers: cut at the blank line, the whole original
 *      without one, the 64 KiB cap at a line's end, 8bit when 8-bit octets
 *      are there, a boundary that the headers hold is re-derived;
 *   7. dot-stuffing: a wrapped human line that starts with '.' is stuffed;
 *   8. sizes: dsn_size_max on random messages is what dsn_write writes, and
 *      every cap below it gives 0; invalid messages give 0.
 *
 * With DSN_SAMPLE_DIR set, the samples of 2-5 are also written there (for
 * tests/integration/dsncheck.py).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dsn.h"

#define BUF_MAX (1u << 20)
#define MAX_LINES 4096

static const char ORIGINAL[] = "Received: from client.example (client.example [192.0.2.1])\r\n"
                               "\tby mx.example (mxgate) with ESMTP id 0001\r\n"
                               "From: Alice <alice@example.org>\r\n"
                               "To: bob@example.com\r\n"
                               "Subject: hello\r\n"
                               "\r\n"
                               "The body, which must not come back.\r\n"
                               "..a stuffed line\r\n";

/* ---- helpers ---- */

/* The output's lines, CRLF not included. */
typedef struct lines {
    size_t n;
    slice_t l[MAX_LINES];
} lines_t;

static lines_t *split_lines(const char *p, size_t n)
{
    lines_t *ls = calloc(1, sizeof *ls);
    assert_non_null(ls);
    size_t start = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        if (p[i] == '\r' && p[i + 1] == '\n') {
            assert_true(ls->n < MAX_LINES);
            ls->l[ls->n++] = slice_make(p + start, i - start);
            start = i + 2;
            i++;
        }
    }
    assert_int_equal(start, n); /* ends with a whole line */
    return ls;
}

static bool starts(slice_t s, const char *lit)
{
    size_t n = strlen(lit);
    return s.len >= n && memcmp(s.ptr, lit, n) == 0;
}

static bool line_is(slice_t s, const char *lit)
{
    return s.len == strlen(lit) && memcmp(s.ptr, lit, s.len) == 0;
}

static const char *find_in(const char *p, size_t n, const char *lit)
{
    return memmem(p, n, lit, strlen(lit));
}

/* Does the human text hold lit, however it was wrapped? (A wrap turns one
 * space into CRLF; turned back, the paragraph is as composed.) */
static bool in_text(const char *p, size_t n, const char *lit)
{
    char *u = malloc(n + 1);
    assert_non_null(u);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\r' && i + 1 < n && p[i + 1] == '\n')
            u[k++] = ' ', i++;
        else
            u[k++] = p[i];
    }
    bool found = memmem(u, k, lit, strlen(lit)) != NULL;
    free(u);
    return found;
}

/* Wire form: CR and LF only as CRLF, lines within 998 octets, every line
 * that starts with '.' stuffed, no NUL, a whole last line. */
static void check_wire(const char *p, size_t n)
{
    assert_true(n >= 2 && p[n - 2] == '\r' && p[n - 1] == '\n');
    size_t line = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\r') {
            assert_true(i + 1 < n && p[i + 1] == '\n');
            assert_true(line <= DSN_LINE_MAX);
            i++;
            line = 0;
            continue;
        }
        assert_true(p[i] != '\n' && p[i] != 0);
        if (line == 0 && p[i] == '.')
            assert_true(i + 1 < n && p[i + 1] == '.');
        line++;
    }
}

/* The boundary declared in the top-level Content-Type. */
static slice_t declared_boundary(const char *p, size_t n)
{
    const char *hdr_end = find_in(p, n, "\r\n\r\n");
    assert_non_null(hdr_end);
    const char *b = find_in(p, (size_t)(hdr_end - p), "boundary=\"");
    assert_non_null(b);
    b += strlen("boundary=\"");
    const char *q = memchr(b, '"', (size_t)(hdr_end - b));
    assert_non_null(q);
    return slice_make(b, (size_t)(q - b));
}

/* The structure every DSN has: a top header section of exactly the fields
 * we write, a preamble, three parts opened by "--b" in order and "--b--"
 * as the last line; the boundary nowhere else. Returns the parts' first
 * line indexes (after their blank line) in part[0..2] and the closing
 * delimiter's in part[3]. */
static lines_t *check_structure(const char *p, size_t n, size_t part[4])
{
    check_wire(p, n);
    static const char *const top[] = { "From: Mail Delivery System <MAILER-DAEMON@",
                                       "To: <",
                                       "Subject: Undelivered Mail Returned to Sender",
                                       "Date: ",
                                       "Message-ID: <",
                                       "Auto-Submitted: auto-replied",
                                       "MIME-Version: 1.0",
                                       "Content-Type: multipart/report; report-type=delivery-status;",
                                       "\tboundary=\"",
                                       "Content-Transfer-Encoding: " };
    lines_t *ls = split_lines(p, n);
    size_t ntop = sizeof top / sizeof top[0];
    assert_true(ls->n > ntop);
    for (size_t i = 0; i < ntop; i++)
        if (!starts(ls->l[i], top[i]))
            fail_msg("header line %zu is '%.*s'", i, (int)ls->l[i].len, ls->l[i].ptr);
    assert_int_equal(ls->l[ntop].len, 0);

    slice_t b = declared_boundary(p, n);
    assert_true(b.len >= 20 && b.len <= 70);
    char open[100], close[100];
    snprintf(open, sizeof open, "--%.*s", (int)b.len, b.ptr);
    snprintf(close, sizeof close, "--%.*s--", (int)b.len, b.ptr);
    size_t nopen = 0;
    for (size_t i = 0; i < ls->n; i++) {
        if (line_is(ls->l[i], open)) {
            assert_true(nopen < 3);
            size_t j = i + 1;
            while (j < ls->n && ls->l[j].len)
                j++;
            part[nopen++] = j + 1;
        } else if (line_is(ls->l[i], close)) {
            assert_int_equal(i, ls->n - 1);
            part[3] = i;
        } else {
            /* the boundary text occurs only in its delimiters and the
             * Content-Type parameter */
            const char *hit = memmem(ls->l[i].ptr, ls->l[i].len, b.ptr, b.len);
            if (hit)
                assert_true(starts(ls->l[i], "\tboundary=\""));
        }
    }
    assert_int_equal(nopen, 3);
    assert_true(line_is(ls->l[ls->n - 1], close));
    assert_true(starts(ls->l[part[0] - 3], "Content-Description: Notification"));
    assert_true(line_is(ls->l[part[0] - 2], "Content-Type: text/plain; charset=us-ascii"));
    assert_true(line_is(ls->l[part[1] - 2], "Content-Type: message/delivery-status"));
    assert_true(line_is(ls->l[part[2] - 3], "Content-Type: text/rfc822-headers"));
    assert_true(starts(ls->l[part[2] - 2], "Content-Transfer-Encoding: "));
    return ls;
}

/* Every line of the delivery-status part is a field we write or blank. */
static void check_status_fields(const lines_t *ls, const size_t part[4])
{
    static const char *const names[] = { "Reporting-MTA: dns; ", "X-Mxgate-Queue-ID: ",
                                         "Received-From-MTA: dns; ", "Arrival-Date: ",
                                         "Final-Recipient: rfc822; ", "Original-Recipient: rfc822; ",
                                         "Action: failed", "Status: ", "Diagnostic-Code: ",
                                         "Last-Attempt-Date: " };
    for (size_t i = part[1]; i < part[2] - 5; i++) {
        if (ls->l[i].len == 0)
            continue;
        bool known = false;
        for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
            known = known || starts(ls->l[i], names[k]);
        if (!known)
            fail_msg("field line '%.*s'", (int)ls->l[i].len, ls->l[i].ptr);
    }
}

/* The index of the line after part k's last (its successor's "--b"): the
 * parts' headers take 4, 4 and 5 lines with their delimiters. */
static size_t part_end(const size_t part[4], int k)
{
    return k == 0 ? part[1] - 4 : k == 1 ? part[2] - 5 : part[3];
}

/* Lines of part k (0-based) that start with lit. */
static size_t count_in_part(const lines_t *ls, const size_t part[4], int k, const char *lit)
{
    size_t end = part_end(part, k);
    size_t c = 0;
    for (size_t i = part[k]; i < end; i++)
        c += starts(ls->l[i], lit);
    return c;
}

static bool has_line(const lines_t *ls, const char *lit)
{
    for (size_t i = 0; i < ls->n; i++)
        if (line_is(ls->l[i], lit))
            return true;
    return false;
}

static char *write_dsn(const dsn_msg_t *m, size_t *n)
{
    size_t max = dsn_size_max(m);
    assert_true(max > 0);
    char *buf = malloc(max);
    assert_non_null(buf);
    *n = dsn_write(buf, max, m);
    assert_int_equal(*n, max);
    return buf;
}

static void save_sample(const char *name, const char *p, size_t n)
{
    const char *dir = getenv("DSN_SAMPLE_DIR");
    if (!dir)
        return;
    char path[512];
    snprintf(path, sizeof path, "%s/%s.eml", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}

static dsn_msg_t base_msg(const dsn_rcpt_t *r, uint32_t nrcpt)
{
    return (dsn_msg_t){
        .reporting_mta = SLICE_LIT("mx.example"),
        .queue_id = SLICE_LIT("0001a2b3c4d5e6f7.1"),
        .sender = SLICE_LIT("alice@example.org"),
        .client_helo = SLICE_LIT("client.example"),
        .arrival_s = 1700000000,
        .now_s = 1700000000 + 120,
        .rcpt = r,
        .nrcpt = nrcpt,
        .original = SLICE_LIT(ORIGINAL),
        .boundary = 0x0123456789abcdefull,
    };
}

/* ---- 1. dates ---- */

static void check_date(uint64_t t, const char *want)
{
    char d[DSN_DATE_LEN + 1];
    dsn_date(d, t);
    d[DSN_DATE_LEN] = 0;
    assert_string_equal(d, want);
}

static void test_date_known(void **state)
{
    (void)state;
    check_date(0, "Thu, 01 Jan 1970 00:00:00 +0000");
    check_date(951782400, "Tue, 29 Feb 2000 00:00:00 +0000");
    check_date(1700000000, "Tue, 14 Nov 2023 22:13:20 +0000");
    check_date(951868799, "Tue, 29 Feb 2000 23:59:59 +0000");
    check_date(4107542400, "Mon, 01 Mar 2100 00:00:00 +0000"); /* 2100 is not a leap year */
    check_date(253402300799ull, "Fri, 31 Dec 9999 23:59:59 +0000");
    check_date(UINT64_MAX, "Fri, 31 Dec 9999 23:59:59 +0000"); /* clamped */
}

static void test_date_sweep(void **state)
{
    (void)state;
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < 20000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        time_t t = (time_t)(x % 253402300800ull);
        struct tm tm;
        assert_non_null(gmtime_r(&t, &tm));
        static const char *const wd[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
        static const char *const mo[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                          "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
        char want[64];
        snprintf(want, sizeof want, "%s, %02d %s %04d %02d:%02d:%02d +0000", wd[tm.tm_wday], tm.tm_mday,
                 mo[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
        check_date((uint64_t)t, want);
    }
}

/* ---- 2. one recipient, 5xx ---- */

static void test_one_rcpt(void **state)
{
    (void)state;
    dsn_rcpt_t r = { SLICE_LIT("bob@example.com"), 550, SLICE_LIT("5.1.1"), SLICE_LIT("User unknown") };
    dsn_msg_t m = base_msg(&r, 1);
    size_t n;
    char *out = write_dsn(&m, &n);
    save_sample("one", out, n);
    size_t part[4];
    lines_t *ls = check_structure(out, n, part);
    check_status_fields(ls, part);

    assert_true(has_line(ls, "From: Mail Delivery System <MAILER-DAEMON@mx.example>"));
    assert_true(has_line(ls, "To: <alice@example.org>"));
    assert_true(has_line(ls, "Date: Tue, 14 Nov 2023 22:15:20 +0000"));
    assert_true(has_line(ls, "Message-ID: <0001a2b3c4d5e6f7_1.0123456789abcdef@mx.example>"));
    assert_true(has_line(ls, "Content-Transfer-Encoding: 7bit"));
    assert_true(has_line(ls, "\tboundary=\"=_mxgate_0123456789abcdef_0001a2b3c4d5e6f7_1\""));

    /* part 1 */
    assert_true(has_line(ls, "This is the mail system at host mx.example."));
    assert_true(has_line(ls, "<bob@example.com>: 550 5.1.1 User unknown"));
    assert_true(in_text(out, n, "queue ID, 0001a2b3c4d5e6f7.1."));
    /* part 2, in order */
    static const char *const fields[] = { "Reporting-MTA: dns; mx.example",
                                          "X-Mxgate-Queue-ID: 0001a2b3c4d5e6f7.1",
                                          "Received-From-MTA: dns; client.example",
                                          "Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000",
                                          "",
                                          "Final-Recipient: rfc822; bob@example.com",
                                          "Original-Recipient: rfc822; bob@example.com",
                                          "Action: failed",
                                          "Status: 5.1.1",
                                          "Diagnostic-Code: smtp; 550 5.1.1 User unknown",
                                          "Last-Attempt-Date: Tue, 14 Nov 2023 22:15:20 +0000" };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (!line_is(ls->l[part[1] + i], fields[i]))
            fail_msg("field %zu: '%.*s'", i, (int)ls->l[part[1] + i].len, ls->l[part[1] + i].ptr);
    assert_int_equal(part[1] + sizeof fields / sizeof fields[0], part_end(part, 1));
    /* part 3: the header section, its blank line, and no body */
    const char *p3 = ls->l[part[2]].ptr;
    const char *hdr_end = strstr(ORIGINAL, "\r\n\r\n") + 4;
    assert_memory_equal(p3, ORIGINAL, (size_t)(hdr_end - ORIGINAL));
    assert_null(find_in(out, n, "must not come back"));
    assert_null(find_in(out, n, "stuffed line"));
    free(ls);
    free(out);
}

/* ---- 3. expiry ---- */

static void test_expired(void **state)
{
    (void)state;
    dsn_rcpt_t r[2] = {
        { SLICE_LIT("carol@example.net"), 451, SLICE_NULL, SLICE_LIT("Try again later") },
        { SLICE_LIT("dave@example.net"), 0, SLICE_NULL, SLICE_NULL }, /* never answered */
    };
    dsn_msg_t m = base_msg(r, 2);
    m.expired = true;
    m.now_s = m.arrival_s + 5 * 86400 + 3600;
    size_t n;
    char *out = write_dsn(&m, &n);
    save_sample("expired", out, n);
    size_t part[4];
    lines_t *ls = check_structure(out, n, part);
    check_status_fields(ls, part);
    assert_int_equal(count_in_part(ls, part, 1, "Action: failed"), 2);
    assert_int_equal(count_in_part(ls, part, 1, "Status: 4.4.7"), 2);
    assert_true(has_line(ls, "Diagnostic-Code: smtp; 451 Try again later")); /* as it came */
    assert_int_equal(count_in_part(ls, part, 1, "Diagnostic-Code:"), 1); /* dave had none */
    assert_true(in_text(out, n, "<carol@example.net>: message expired after 5 days in the queue "
                                "(last reply: 451 Try again later)"));
    assert_true(has_line(ls, "<dave@example.net>: message expired after 5 days in the queue"));
    free(ls);
    free(out);

    /* the reply's own status stays; a short stay is told in hours, then minutes */
    dsn_rcpt_t g = { SLICE_LIT("e@example.net"), 450, SLICE_LIT("4.7.1"), SLICE_LIT("greylisted") };
    m = base_msg(&g, 1);
    m.expired = true;
    m.now_s = m.arrival_s + 3600;
    out = write_dsn(&m, &n);
    ls = check_structure(out, n, part);
    assert_true(has_line(ls, "Status: 4.7.1"));
    assert_true(in_text(out, n, "expired after 1 hour in the queue (last reply: 450 4.7.1 greylisted)"));
    free(ls);
    free(out);
    m.now_s = m.arrival_s + 125;
    out = write_dsn(&m, &n);
    assert_true(in_text(out, n, "expired after 2 minutes in the queue"));
    free(out);

    /* a 5xx in an expired message was refused, not expired */
    dsn_rcpt_t f = { SLICE_LIT("f@example.net"), 554, SLICE_NULL, SLICE_LIT("no") };
    m = base_msg(&f, 1);
    m.expired = true;
    out = write_dsn(&m, &n);
    assert_non_null(find_in(out, n, "\r\n<f@example.net>: 554 no\r\n"));
    assert_non_null(find_in(out, n, "\r\nStatus: 5.0.0\r\n"));
    free(out);
}

/* ---- 4. several recipients ---- */

static void test_many_rcpts(void **state)
{
    (void)state;
    enum { N = 40 };
    char addrs[N][32];
    dsn_rcpt_t r[N];
    for (int i = 0; i < N; i++) {
        snprintf(addrs[i], sizeof addrs[i], "user%d@example.com", i);
        r[i] = (dsn_rcpt_t){ slice_make(addrs[i], strlen(addrs[i])), (uint16_t)(550 + i % 5), SLICE_NULL,
                             i % 3 ? SLICE_LIT("Mailbox unavailable") : SLICE_NULL };
    }
    dsn_msg_t m = base_msg(r, N);
    m.client_helo = SLICE_NULL;
    m.queue_id = SLICE_NULL;
    size_t n;
    char *out = write_dsn(&m, &n);
    save_sample("many", out, n);
    size_t part[4];
    lines_t *ls = check_structure(out, n, part);
    check_status_fields(ls, part);
    assert_int_equal(count_in_part(ls, part, 1, "Final-Recipient: rfc822; user"), N);
    assert_int_equal(count_in_part(ls, part, 1, "Original-Recipient: rfc822; user"), N);
    assert_int_equal(count_in_part(ls, part, 1, "Status: 5.0.0"), N);
    assert_int_equal(count_in_part(ls, part, 1, "Diagnostic-Code: smtp; 55"), N);
    assert_int_equal(count_in_part(ls, part, 1, "Last-Attempt-Date: "), N);
    assert_int_equal(count_in_part(ls, part, 1, "Received-From-MTA"), 0);
    assert_int_equal(count_in_part(ls, part, 1, "X-Mxgate-Queue-ID"), 0);
    assert_true(has_line(ls, "Message-ID: <dsn.0123456789abcdef@mx.example>"));
    assert_true(in_text(out, n, "include this problem report."));
    assert_false(in_text(out, n, "queue ID"));
    assert_int_equal(count_in_part(ls, part, 0, "<user"), N);
    for (int i = 0; i < N; i++) {
        char want[96];
        snprintf(want, sizeof want, "Final-Recipient: rfc822; %s", addrs[i]);
        assert_true(has_line(ls, want));
        snprintf(want, sizeof want, "<%s>: %d%s", addrs[i], 550 + i % 5, i % 3 ? " Mailbox unavailable" : "");
        assert_true(has_line(ls, want));
    }
    /* blocks are separated by one blank line each */
    size_t blanks = 0;
    for (size_t i = part[1]; i < part_end(part, 1); i++)
        blanks += ls->l[i].len == 0;
    assert_int_equal(blanks, N);
    free(ls);
    free(out);
}

/* ---- 5. hostile values ---- */

static void test_hostile(void **state)
{
    (void)state;
    static const char evil_addr[] = "x@y\r\nBcc: victim@example.com\r\n\r\n--=_mxgate_\x00\xff.";
    static const char evil_text[] = "bad\r\n.\r\nMAIL FROM:<a@b>\r\nContent-Type: text/html\n\rX\x80\x01";
    static const char evil_helo[] = "h\r\nReporting-MTA: dns; evil\r\n";
    static const char evil_sender[] = "s@x>\r\nSubject: pwned\r\nX: \xc3\xa9";
    static const char evil_status[] = "5.1.1\r\nX: y";
    static const char evil_qid[] = "q\r\n\"; boundary=\"evil";
    dsn_rcpt_t r[2] = {
        { slice_make(evil_addr, sizeof evil_addr - 1), 550, slice_make(evil_status, sizeof evil_status - 1),
          slice_make(evil_text, sizeof evil_text - 1) },
        { slice_make(evil_text, sizeof evil_text - 1), 451, SLICE_NULL, slice_make(evil_addr, sizeof evil_addr - 1) },
    };
    dsn_msg_t m = base_msg(r, 2);
    m.expired = true;
    m.sender = slice_make(evil_sender, sizeof evil_sender - 1);
    m.client_helo = slice_make(evil_helo, sizeof evil_helo - 1);
    m.queue_id = slice_make(evil_qid, sizeof evil_qid - 1);
    m.reporting_mta = SLICE_LIT("mx\r\nX-Injected: 1");
    size_t n;
    char *out = write_dsn(&m, &n);
    save_sample("hostile", out, n);
    size_t part[4];
    lines_t *ls = check_structure(out, n, part);
    check_status_fields(ls, part);
    for (size_t i = 0; i < ls->n; i++) {
        assert_false(starts(ls->l[i], "Bcc:"));
        assert_false(starts(ls->l[i], "MAIL FROM"));
        assert_false(starts(ls->l[i], "Subject: pwned"));
        assert_false(starts(ls->l[i], "X-Injected"));
        assert_false(starts(ls->l[i], "Content-Type: text/html"));
        assert_false(line_is(ls->l[i], "."));
        /* 8-bit and controls only in the returned headers (none here) */
        for (size_t k = 0; k < ls->l[i].len; k++) {
            unsigned char c = (unsigned char)ls->l[i].ptr[k];
            assert_true((c >= 0x20 && c <= 0x7e) || c == '\t');
        }
    }
    assert_int_equal(count_in_part(ls, part, 1, "Final-Recipient:"), 2);
    assert_int_equal(count_in_part(ls, part, 1, "Reporting-MTA:"), 1);
    assert_true(has_line(ls, "To: <s@x>?\?Subject: pwned?\?X: ?\?>" /* "?\?": no trigraphs */));
    assert_true(has_line(ls, "Final-Recipient: rfc822; x@y?\?Bcc: victim@example.com?\??\?--=_mxgate_?\?."));
    /* a status that is not one is replaced by the derived one */
    assert_int_equal(count_in_part(ls, part, 1, "Status: 5.0.0"), 1);
    assert_int_equal(count_in_part(ls, part, 1, "Status: 4.4.7"), 1);
    /* the boundary is made of safe octets only */
    slice_t b = declared_boundary(out, n);
    for (size_t k = 0; k < b.len; k++)
        assert_non_null(strchr("=_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", b.ptr[k]));
    free(ls);
    free(out);
}

/* Each field value is cut so its line stays within 998. */
static void test_long_values(void **state)
{
    (void)state;
    size_t big = 5000;
    char *a = malloc(big);
    assert_non_null(a);
    memset(a, 'a', big);
    dsn_rcpt_t r = { slice_make(a, big), 550, SLICE_NULL, slice_make(a, big) };
    dsn_msg_t m = base_msg(&r, 1);
    m.sender = m.client_helo = m.queue_id = slice_make(a, big);
    size_t n;
    char *out = write_dsn(&m, &n);
    size_t part[4];
    lines_t *ls = check_structure(out, n, part);
    bool cut = false;
    for (size_t i = 0; i < ls->n; i++)
        cut = cut || (starts(ls->l[i], "Final-Recipient: rfc822; aaa") && ls->l[i].len == DSN_LINE_MAX - 1);
    assert_true(cut);
    /* part 1 breaks the long word at 76 columns */
    char want[80];
    snprintf(want, sizeof want, "<%.75s", a);
    assert_true(has_line(ls, want));
    slice_t b = declared_boundary(out, n);
    assert_true(b.len <= 70);
    free(ls);
    free(out);
    free(a);
}

/* ---- 6. the returned headers ---- */

static slice_t returned(const char *out, size_t n, const lines_t *ls, const size_t part[4])
{
    const char *s = ls->l[part[2]].ptr;
    const char *e = ls->l[part[3]].ptr;
    assert_true(s <= e && e <= out + n);
    return slice_make(s, (size_t)(e - s));
}

static void test_returned_headers(void **state)
{
    (void)state;
    dsn_rcpt_t r = { SLICE_LIT("bob@example.com"), 550, SLICE_NULL, SLICE_NULL };
    size_t n, part[4];

    /* no blank line: the whole original, and a line end added */
    dsn_msg_t m = base_msg(&r, 1);
    m.original = SLICE_LIT("Subject: x\r\nX-Last: y");
    char *out = write_dsn(&m, &n);
    lines_t *ls = check_structure(out, n, part);
    slice_t h = returned(out, n, ls, part);
    assert_true(line_is(h, "Subject: x\r\nX-Last: y\r\n"));
    free(ls);
    free(out);

    /* an empty header section, and an empty original */
    m.original = SLICE_LIT("\r\nbody\r\n");
    out = write_dsn(&m, &n);
    ls = check_structure(out, n, part);
    assert_true(line_is(returned(out, n, ls, part), "\r\n"));
    free(ls);
    free(out);
    m.original = SLICE_NULL;
    out = write_dsn(&m, &n);
    ls = check_structure(out, n, part);
    assert_int_equal(returned(out, n, ls, part).len, 0);
    free(ls);
    free(out);

    /* 8-bit octets make part 3 (and the whole) 8bit */
    m.original = SLICE_LIT("Subject: caf\xc3\xa9\r\n\r\nbody\r\n");
    out = write_dsn(&m, &n);
    ls = check_structure(out, n, part);
    assert_true(line_is(ls->l[part[2] - 2], "Content-Transfer-Encoding: 8bit"));
    assert_true(has_line(ls, "Content-Transfer-Encoding: 8bit"));
    assert_false(has_line(ls, "Content-Transfer-Encoding: 7bit"));
    free(ls);
    free(out);

    /* a header section over 64 KiB is cut after a whole line within it */
    size_t big = 3 * DSN_HEAD_MAX;
    char *o = malloc(big);
    assert_non_null(o);
    size_t len = 0;
    for (int i = 0; len + 100 < big; i++)
        len += (size_t)sprintf(o + len, "X-Filler-%d: %.60s\r\n", i,
                               "............................................................");
    m.original = slice_make(o, len);
    out = write_dsn(&m, &n);
    ls = check_structure(out, n, part);
    h = returned(out, n, ls, part);
    assert_true(h.len <= DSN_HEAD_MAX && h.len > DSN_HEAD_MAX - 100);
    assert_memory_equal(h.ptr, o, h.len);
    assert_true(h.ptr[h.len - 2] == '\r' && h.ptr[h.len - 1] == '\n');
    assert_true(n < DSN_HEAD_MAX + 4096);
    free(ls);
    free(out);

    /* one line longer than the cut, its CR the cut's last octet: the CR
     * does not go out without its LF (fuzz_dsn found this) */
    memset(o, 'a', DSN_HEAD_MAX + 10);
    o[DSN_HEAD_MAX - 1] = '\r';
    o[DSN_HEAD_MAX] = '\n';
    m.original = slice_make(o, DSN_HEAD_MAX + 10);
    out = write_dsn(&m, &n); /* (a line over 998 octets, copied as it is: no check_structure) */
    for (size_t i = 0; i < n; i++)
        assert_true(out[i] != '\r' || (i + 1 < n && out[i + 1] == '\n'));
    char *at = memmem(out, n, o, DSN_HEAD_MAX - 1);
    assert_non_null(at);
    assert_memory_equal(at + DSN_HEAD_MAX - 1, "\r\n--", 4);
    free(out);
    free(o);
}

/* Headers that hold the boundary the first derivation would give: another
 * one is used, and it is not in them. */
static void test_boundary_collision(void **state)
{
    (void)state;
    dsn_rcpt_t r = { SLICE_LIT("bob@example.com"), 550, SLICE_NULL, SLICE_NULL };
    dsn_msg_t m = base_msg(&r, 1);
    m.original = SLICE_LIT("X-Trap: --=_mxgate_0123456789abcdef_0001a2b3c4d5e6f7_1\r\n"
                           "--=_mxgate_0123456789abcdef_0001a2b3c4d5e6f7_1--\r\n\r\n");
    size_t n, part[4];
    char *out = write_dsn(&m, &n);
    save_sample("collision", out, n);
    lines_t *ls = check_structure(out, n, part);
    slice_t b = declared_boundary(out, n);
    assert_false(slice_eq(b, SLICE_LIT("=_mxgate_0123456789abcdef_0001a2b3c4d5e6f7_1")));
    assert_null(memmem(m.original.ptr, m.original.len, b.ptr, b.len));
    /* a caller's text holding the boundary (the human text is wrapped, so
     * it could stand alone on a line) moves it too (fuzz_dsn found this) */
    dsn_rcpt_t r2 = { SLICE_LIT("bob@example.com"), 550, SLICE_NULL,
                      SLICE_LIT("no --=_mxgate_0123456789abcdef_0001a2b3c4d5e6f7_1-- here") };
    dsn_msg_t m2 = base_msg(&r2, 1);
    size_t n2, part2[4];
    char *out2 = write_dsn(&m2, &n2);
    lines_t *ls2 = check_structure(out2, n2, part2);
    assert_false(slice_eq(declared_boundary(out2, n2), SLICE_LIT("=_mxgate_0123456789abcdef_0001a2b3c4d5e6f7_1")));
    free(ls2);
    free(out2);
    /* the Message-ID follows the derivation used */
    char want[128];
    snprintf(want, sizeof want, "Message-ID: <0001a2b3c4d5e6f7_1.%.16s@mx.example>", b.ptr + 9);
    assert_true(has_line(ls, want));
    free(ls);
    free(out);
}

/* ---- 7. dot-stuffing ---- */

static void test_dot_stuffed(void **state)
{
    (void)state;
    /* "<bob@example.com>: 550 5.1.1 " is 29 octets: 46 a's and a space fill
     * the first wrapped line (76), ".hidden " and 68 b's the second, and the
     * third is ". c": two lines start with '.' */
    char text[256], want1[128], want2[128];
    size_t n = 0;
    memset(text + n, 'a', 46), n += 46;
    memcpy(text + n, " .hidden ", 9), n += 9;
    memset(text + n, 'b', 68), n += 68;
    memcpy(text + n, " . c", 4), n += 4;
    snprintf(want1, sizeof want1, "<bob@example.com>: 550 5.1.1 %.46s", text);
    snprintf(want2, sizeof want2, ".%.76s", text + 47);
    dsn_rcpt_t r = { SLICE_LIT("bob@example.com"), 550, SLICE_LIT("5.1.1"), slice_make(text, n) };
    dsn_msg_t m = base_msg(&r, 1);
    size_t len, part[4];
    char *out = write_dsn(&m, &len);
    save_sample("dots", out, len);
    lines_t *ls = check_structure(out, len, part);
    assert_int_equal(strlen(want1), 75);
    assert_true(has_line(ls, want1));
    assert_true(has_line(ls, want2)); /* "..hidden bbb...", 77 octets on the wire */
    assert_true(has_line(ls, ".. c"));
    assert_null(find_in(out, len, "\r\n.\r\n"));
    assert_null(find_in(out, len, "\r\n.hidden"));
    /* a field is not wrapped: its text stays on its line */
    char field[300];
    snprintf(field, sizeof field, "Diagnostic-Code: smtp; 550 5.1.1 %.*s", (int)n, text);
    assert_true(has_line(ls, field));
    free(ls);
    free(out);
}

/* ---- 8. sizes ---- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t next(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return rng;
}

/* Random octets, biased to the ones that matter: CR, LF, '.', NUL, 8-bit,
 * spaces (wrapping). */
static slice_t random_slice(char *buf, size_t cap)
{
    static const char special[] = "\r\n. \x00\x80\xff-=_\"<>";
    size_t n = next() % 4 == 0 ? next() % cap : next() % 40;
    for (size_t i = 0; i < n; i++) {
        uint64_t v = next();
        buf[i] = v % 3 == 0 ? special[v / 3 % (sizeof special - 1)] : (char)(v >> 8);
    }
    return slice_make(buf, n);
}

/* A wire-form original of random header lines, maybe a blank line, maybe a
 * body, maybe 8-bit octets. */
static slice_t random_original(char *buf, size_t cap)
{
    size_t len = 0, lines = next() % 50;
    for (size_t i = 0; i < lines && len + 200 < cap; i++) {
        size_t w = next() % 120;
        if (next() % 10 == 0)
            buf[len++] = '.', buf[len++] = '.';
        for (size_t k = 0; k < w; k++) {
            uint64_t v = next();
            char c = v % 50 == 0 ? (char)(0x80 | (v >> 8)) : (char)(0x20 + (v >> 8) % 95);
            buf[len++] = k == 0 && c == '.' ? 'x' : c; /* wire form: a '.' is stuffed */
        }
        buf[len++] = '\r', buf[len++] = '\n';
        if (next() % 20 == 0)
            buf[len++] = '\r', buf[len++] = '\n';
    }
    if (len >= 2 && next() % 4 == 0)
        len -= 2; /* no line end at the end */
    return slice_make(buf, len);
}

static void test_size_random(void **state)
{
    (void)state;
    enum { RCPT_MAX = 12, FIELD = 1500 };
    char *store = malloc((4 + 2 * RCPT_MAX) * FIELD + 8192);
    char *buf = malloc(BUF_MAX);
    assert_non_null(store);
    assert_non_null(buf);
    for (int iter = 0; iter < 3000; iter++) {
        char *s = store;
        dsn_rcpt_t r[RCPT_MAX];
        uint32_t nr = 1 + (uint32_t)(next() % RCPT_MAX);
        for (uint32_t i = 0; i < nr; i++) {
            r[i].addr = random_slice(s, FIELD), s += FIELD;
            r[i].text = random_slice(s, FIELD), s += FIELD;
            r[i].code = (uint16_t)(next() % 700);
            r[i].status = next() % 2 ? SLICE_LIT("5.7.1") : SLICE_NULL;
        }
        dsn_msg_t m = { .rcpt = r, .nrcpt = nr };
        m.reporting_mta = random_slice(s, FIELD), s += FIELD;
        m.queue_id = random_slice(s, FIELD), s += FIELD;
        m.sender = random_slice(s, FIELD), s += FIELD;
        m.client_helo = random_slice(s, FIELD), s += FIELD;
        m.original = random_original(s, 8192);
        m.arrival_s = next() % 4000000000u;
        m.now_s = next() % 4000000000u;
        m.expired = next() % 2;
        m.boundary = next();
        size_t max = dsn_size_max(&m);
        size_t n = dsn_write(buf, BUF_MAX, &m);
        assert_true(max >= n);
        if (!m.sender.len || !m.reporting_mta.len) {
            assert_int_equal(n, 0);
            continue;
        }
        assert_int_equal(n, max);
        size_t part[4];
        lines_t *ls = check_structure(buf, n, part);
        check_status_fields(ls, part);
        assert_int_equal(count_in_part(ls, part, 1, "Final-Recipient:"), nr);
        free(ls);
        /* one octet short, or a random shortfall: nothing */
        assert_int_equal(dsn_write(buf, n - 1, &m), 0);
        assert_int_equal(dsn_write(buf, next() % n, &m), 0);
    }
    free(buf);
    free(store);
}

static void test_cap_small(void **state)
{
    (void)state;
    dsn_rcpt_t r = { SLICE_LIT("bob@example.com"), 550, SLICE_LIT("5.1.1"), SLICE_LIT("User unknown") };
    dsn_msg_t m = base_msg(&r, 1);
    size_t n;
    char *want = write_dsn(&m, &n);
    char *buf = malloc(n + 16);
    assert_non_null(buf);
    for (size_t cap = 0; cap < n; cap++)
        assert_int_equal(dsn_write(cap ? buf : NULL, cap, &m), 0);
    memset(buf, 'Z', n + 16);
    assert_int_equal(dsn_write(buf, n + 16, &m), n);
    assert_memory_equal(buf, want, n);
    assert_int_equal(buf[n], 'Z'); /* nothing past the end */
    free(buf);
    free(want);
}

static void test_invalid(void **state)
{
    (void)state;
    char buf[8192];
    dsn_rcpt_t r = { SLICE_LIT("bob@example.com"), 550, SLICE_NULL, SLICE_NULL };
    dsn_msg_t m = base_msg(&r, 0);
    assert_int_equal(dsn_size_max(&m), 0);
    assert_int_equal(dsn_write(buf, sizeof buf, &m), 0);
    m = base_msg(NULL, 1);
    assert_int_equal(dsn_write(buf, sizeof buf, &m), 0);
    m = base_msg(&r, 1);
    m.sender = SLICE_NULL; /* a bounce is never bounced */
    assert_int_equal(dsn_size_max(&m), 0);
    assert_int_equal(dsn_write(buf, sizeof buf, &m), 0);
    m = base_msg(&r, 1);
    m.reporting_mta = SLICE_NULL;
    assert_int_equal(dsn_write(buf, sizeof buf, &m), 0);
    m = base_msg(&r, 1);
    assert_true(dsn_write(buf, sizeof buf, &m) > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_date_known),       cmocka_unit_test(test_date_sweep),
        cmocka_unit_test(test_one_rcpt),         cmocka_unit_test(test_expired),
        cmocka_unit_test(test_many_rcpts),       cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_long_values),      cmocka_unit_test(test_returned_headers),
        cmocka_unit_test(test_boundary_collision), cmocka_unit_test(test_dot_stuffed),
        cmocka_unit_test(test_size_random),      cmocka_unit_test(test_cap_small),
        cmocka_unit_test(test_invalid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * dsn.c - builds a bounce (dsn.h) line by line.
 *
 * Every line we make is first composed in a line_t, where each octet added is
 * sanitised ('?' for anything not printable US-ASCII) and the line is cut at
 * DSN_LINE_MAX - 1 octets; then it goes out stuffed (a leading '.' doubled,
 * which is why one octet is kept free) and with CRLF. The human text is
 * composed a paragraph at a time and word-wrapped at DSN_WRAP columns, so a
 * caller's octets can begin a line there: the stuffing is what keeps a reply
 * text such as "... ." from putting a lone "." on a line, which would end the
 * DATA early. Only the returned header section is copied without a line_t:
 * it is in wire form already.
 *
 * The output goes through out_t, which only counts when it has no buffer:
 * dsn_size_max() is dsn_write() without one.
 */
#include "dsn.h"

#include <string.h>

#include "reply.h"

#define DSN_WRAP 76                 /* human text: columns (RFC 5322 2.1.1: 78) */
#define DSN_QID_MAX 32              /* queue id octets in the boundary and Message-ID */
#define DSN_BOUNDARY_TRIES 16       /* derivations tried before giving up */
#define DSN_BOUNDARY_PREFIX "=_mxgate_"
/* prefix, 16 hex, '_', the queue id: within RFC 2046's 70 */
#define DSN_BOUNDARY_MAX (sizeof DSN_BOUNDARY_PREFIX - 1 + 16 + 1 + DSN_QID_MAX)
#define DSN_TIME_MAX 253402300799ull /* 9999-12-31 23:59:59: four-digit years */
#define SECS_PER_DAY 86400u

_Static_assert(DSN_BOUNDARY_MAX <= 70, "RFC 2046 5.1.1: a boundary is at most 70 octets");

/* ---- output ---- */

typedef struct out {
    char *buf;  /* NULL: count only */
    size_t cap, len;
    bool full;  /* something did not fit: the result is 0 */
} out_t;

static void put(out_t *o, const char *p, size_t n)
{
    if (o->full || n > o->cap - o->len) {
        o->full = true;
        return;
    }
    if (o->buf && n)
        memcpy(o->buf + o->len, p, n);
    o->len += n;
}

static void put_lit(out_t *o, const char *s)
{
    put(o, s, strlen(s));
}

/* One wire line: stuffed, CRLF. n < DSN_LINE_MAX, so it stays within it. */
static void put_line(out_t *o, const char *p, size_t n)
{
    if (n && p[0] == '.')
        put(o, ".", 1);
    put(o, p, n);
    put(o, "\r\n", 2);
}

/* ---- composing a line ---- */

typedef struct line {
    size_t len;
    char buf[DSN_LINE_MAX - 1]; /* the last octet of a line is the stuffing's */
} line_t;

static bool printable(unsigned char c)
{
    return c >= 0x20 && c <= 0x7e;
}

static void add(line_t *l, slice_t s)
{
    size_t n = s.len < sizeof l->buf - l->len ? s.len : sizeof l->buf - l->len;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        l->buf[l->len++] = printable(c) ? (char)c : '?';
    }
}

static void add_lit(line_t *l, const char *s)
{
    add(l, slice_make(s, strlen(s)));
}

static void add_num(line_t *l, uint64_t v)
{
    char t[20];
    size_t i = sizeof t;
    do
        t[--i] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    add(l, slice_make(t + i, sizeof t - i));
}

static void add_hex64(line_t *l, uint64_t v)
{
    static const char hex[] = "0123456789abcdef";
    char t[16];
    for (int i = 15; i >= 0; i--, v >>= 4)
        t[i] = hex[v & 15];
    add(l, slice_make(t, sizeof t));
}

/* A token for the boundary and the Message-ID: letters, digits and '-'
 * kept, anything else '_' (both are legal in either), at most max octets. */
static void add_token(line_t *l, slice_t s, size_t max)
{
    for (size_t i = 0; i < s.len && i < max && l->len < sizeof l->buf; i++) {
        char c = s.ptr[i];
        bool keep = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
        l->buf[l->len++] = keep ? c : '_';
    }
}

static void add_date(line_t *l, uint64_t t)
{
    char d[DSN_DATE_LEN];
    dsn_date(d, t);
    add(l, slice_make(d, sizeof d));
}

static void emit(out_t *o, line_t *l)
{
    put_line(o, l->buf, l->len);
    l->len = 0;
}

/* A paragraph of human text: broken at the last space that keeps a line
 * within DSN_WRAP, or inside a word longer than that. */
static void emit_wrapped(out_t *o, line_t *l)
{
    const char *p = l->buf;
    size_t n = l->len;
    while (n > DSN_WRAP) {
        size_t cut = DSN_WRAP;
        while (cut > 0 && p[cut] != ' ')
            cut--;
        size_t skip = cut ? cut + 1 : DSN_WRAP; /* the space goes with the break */
        put_line(o, p, cut ? cut : DSN_WRAP);
        p += skip;
        n -= skip;
    }
    put_line(o, p, n);
    l->len = 0;
}

/* "name" then a caller's value, as one line. */
static void emit_field(out_t *o, const char *name, slice_t value)
{
    line_t l = { 0 };
    add_lit(&l, name);
    add(&l, value);
    emit(o, &l);
}

/* ---- dates ---- */

/* Days since 1970-01-01 to the civil date: Howard Hinnant's
 * civil_from_days, for days >= 0 (eras of 400 years, March-based years). */
static void civil_from_days(uint64_t days, uint64_t *y, unsigned *m, unsigned *d)
{
    uint64_t z = days + 719468; /* days from 0000-03-01 */
    uint64_t era = z / 146097;
    uint64_t doe = z - era * 146097;
    uint64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    uint64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    uint64_t mp = (5 * doy + 2) / 153;
    *d = (unsigned)(doy - (153 * mp + 2) / 5 + 1);
    *m = (unsigned)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static void two(char *p, unsigned v)
{
    p[0] = (char)('0' + v / 10 % 10);
    p[1] = (char)('0' + v % 10);
}

void dsn_date(char out[DSN_DATE_LEN], uint64_t t)
{
    static const char wdays[] = "ThuFriSatSunMonTueWed"; /* 1970-01-01 was a Thursday */
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    if (t > DSN_TIME_MAX)
        t = DSN_TIME_MAX;
    uint64_t days = t / SECS_PER_DAY, secs = t % SECS_PER_DAY, y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    memcpy(out, wdays + days % 7 * 3, 3);
    memcpy(out + 3, ", ", 2);
    two(out + 5, d);
    out[7] = ' ';
    memcpy(out + 8, months + (m - 1) * 3, 3);
    out[11] = ' ';
    two(out + 12, (unsigned)(y / 100));
    two(out + 14, (unsigned)(y % 100));
    out[16] = ' ';
    two(out + 17, (unsigned)(secs / 3600));
    out[19] = ':';
    two(out + 20, (unsigned)(secs / 60 % 60));
    out[22] = ':';
    two(out + 23, (unsigned)(secs % 60));
    memcpy(out + 25, " +0000", 6);
}

/* ---- what goes in ---- */

static bool valid(const dsn_msg_t *m)
{
    return m->nrcpt >= 1 && m->rcpt && m->sender.len && m->reporting_mta.len;
}

static bool code_known(uint16_t code)
{
    return code >= 400 && code <= 599;
}

/* Did the reply carry a failure's enhanced code (4.x.x or 5.x.x)? */
static bool status_given(const dsn_rcpt_t *r)
{
    slice_t s = r->status;
    return s.len && s.ptr[0] != '2' && reply_esc_valid(s.ptr, s.len);
}

/* The recipient's Status: its reply's enhanced code if it had one, else
 * 5.0.0 for a 5xx and 4.4.7 (RFC 3463: delivery time expired) for anything
 * still deferred. */
static slice_t rcpt_status(const dsn_rcpt_t *r)
{
    if (status_given(r))
        return r->status;
    return r->code / 100 == 5 ? SLICE_LIT("5.0.0") : SLICE_LIT("4.4.7");
}

/* Told it expired rather than that it was refused. */
static bool rcpt_expired(const dsn_msg_t *m, const dsn_rcpt_t *r)
{
    return m->expired && r->code / 100 != 5;
}

/* "550 5.1.1 text": the reply as the downstream gave it (a derived status
 * is not put in its mouth); nothing without code or text. */
static void add_reply(line_t *l, const dsn_rcpt_t *r)
{
    if (code_known(r->code)) {
        add_num(l, r->code);
        if (status_given(r)) {
            add_lit(l, " ");
            add(l, r->status);
        }
        if (r->text.len)
            add_lit(l, " ");
    }
    add(l, r->text);
}

static bool has_reply(const dsn_rcpt_t *r)
{
    return code_known(r->code) || r->text.len;
}

/*
 * The original's header section: up to and including the blank line that
 * ends it ("\r\n" alone when it is empty), the whole original without one,
 * cut after the last LF within DSN_HEAD_MAX (or at DSN_HEAD_MAX, for one
 * line that long).
 */
static slice_t header_section(slice_t orig)
{
    size_t n = orig.len;
    if (n >= 2 && orig.ptr[0] == '\r' && orig.ptr[1] == '\n')
        n = 2;
    else if (n) {
        const char *end = memmem(orig.ptr, n, "\r\n\r\n", 4);
        if (end)
            n = (size_t)(end - orig.ptr) + 4;
    }
    if (n > DSN_HEAD_MAX) {
        const char *lf = memrchr(orig.ptr, '\n', DSN_HEAD_MAX);
        n = lf ? (size_t)(lf - orig.ptr) + 1 : DSN_HEAD_MAX;
        if (!lf && orig.ptr[n - 1] == '\r')
            n--; /* not a CR without its LF */
    }
    return slice_make(orig.ptr, n);
}

static bool has_8bit(slice_t s)
{
    for (size_t i = 0; i < s.len; i++)
        if ((unsigned char)s.ptr[i] >= 0x80)
            return true;
    return false;
}

/* ---- the boundary ---- */

typedef struct bnd {
    uint64_t random; /* the derivation used: in the boundary and Message-ID */
    line_t text;     /* the boundary itself */
} bnd_t;

/* splitmix64's finaliser: a different, well-mixed value per try. */
static uint64_t mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static bool in(slice_t s, const line_t *b)
{
    return s.len && memmem(s.ptr, s.len, b->buf, b->len);
}

/* "=_mxgate_<16 hex>_<queue id>", the first derivation of the caller's
 * random number that the returned headers do not hold. */
static bool pick_boundary(bnd_t *b, const dsn_msg_t *m, slice_t head)
{
    for (uint64_t k = 0; k < DSN_BOUNDARY_TRIES; k++) {
        b->random = k ? mix(m->boundary + k * 0x9e3779b97f4a7c15ull) : m->boundary;
        b->text.len = 0;
        add_lit(&b->text, DSN_BOUNDARY_PREFIX);
        add_hex64(&b->text, b->random);
        add_lit(&b->text, "_");
        add_token(&b->text, m->queue_id, DSN_QID_MAX);
        bool seen = head.len && memmem(head.ptr, head.len, b->text.buf, b->text.len);
        seen |= in(m->reporting_mta, &b->text) || in(m->queue_id, &b->text) || in(m->sender, &b->text) ||
                in(m->client_helo, &b->text);
        for (uint32_t i = 0; i < m->nrcpt && !seen; i++)
            seen = in(m->rcpt[i].addr, &b->text) || in(m->rcpt[i].status, &b->text) || in(m->rcpt[i].text, &b->text);
        if (!seen)
            return true;
    }
    return false;
}

/* "--boundary" and the part's header lines, then the blank line. */
static void part_head(out_t *o, const bnd_t *b, const char *const *lines)
{
    put(o, "--", 2);
    put_line(o, b->text.buf, b->text.len);
    for (; *lines; lines++) {
        put_lit(o, *lines);
        put(o, "\r\n", 2);
    }
    put(o, "\r\n", 2);
}

/* ---- the message ---- */

static void write_headers(out_t *o, const dsn_msg_t *m, const bnd_t *b, bool eight)
{
    line_t l = { 0 };
    add_lit(&l, "From: Mail Delivery System <MAILER-DAEMON@");
    add(&l, m->reporting_mta);
    add_lit(&l, ">");
    emit(o, &l);
    add_lit(&l, "To: <");
    add(&l, m->sender);
    add_lit(&l, ">");
    emit(o, &l);
    put_lit(o, "Subject: Undelivered Mail Returned to Sender\r\n");
    add_lit(&l, "Date: ");
    add_date(&l, m->now_s);
    emit(o, &l);
    add_lit(&l, "Message-ID: <");
    add_token(&l, m->queue_id.len ? m->queue_id : SLICE_LIT("dsn"), DSN_QID_MAX);
    add_lit(&l, ".");
    add_hex64(&l, b->random);
    add_lit(&l, "@");
    add(&l, m->reporting_mta);
    add_lit(&l, ">");
    emit(o, &l);
    put_lit(o, "Auto-Submitted: auto-replied\r\n"
               "MIME-Version: 1.0\r\n"
               "Content-Type: multipart/report; report-type=delivery-status;\r\n"
               "\tboundary=\"");
    put(o, b->text.buf, b->text.len);
    put_lit(o, "\"\r\n");
    /* a multipart's encoding is its widest part's (RFC 2045 6.4) */
    put_lit(o, eight ? "Content-Transfer-Encoding: 8bit\r\n" : "Content-Transfer-Encoding: 7bit\r\n");
    put_lit(o, "\r\nThis is a MIME-encapsulated message.\r\n\r\n");
}

/* "5 days", "1 hour", "3 minutes": how long the message was queued. */
static void add_age(line_t *l, const dsn_msg_t *m)
{
    uint64_t age = m->now_s > m->arrival_s ? m->now_s - m->arrival_s : 0;
    uint64_t n = age / SECS_PER_DAY;
    const char *unit = "day";
    if (n == 0) {
        n = age / 3600;
        unit = "hour";
    }
    if (n == 0) {
        n = age / 60;
        unit = "minute";
    }
    add_num(l, n);
    add_lit(l, " ");
    add_lit(l, unit);
    if (n != 1)
        add_lit(l, "s");
}

/* "<addr>: 550 5.1.1 text", or for one that expired "<addr>: message expired
 * after 5 days in the queue (last reply: 451 4.7.1 text)". */
static void write_rcpt_text(out_t *o, const dsn_msg_t *m, const dsn_rcpt_t *r)
{
    line_t l = { 0 };
    add_lit(&l, "<");
    add(&l, r->addr);
    add_lit(&l, ">: ");
    if (rcpt_expired(m, r)) {
        add_lit(&l, "message expired after ");
        add_age(&l, m);
        add_lit(&l, " in the queue");
        if (has_reply(r)) {
            add_lit(&l, " (last reply: ");
            add_reply(&l, r);
            add_lit(&l, ")");
        }
    } else if (has_reply(r)) {
        add_reply(&l, r);
    } else {
        add(&l, rcpt_status(r));
    }
    emit_wrapped(o, &l);
}

static void write_notification(out_t *o, const dsn_msg_t *m, const bnd_t *b)
{
    static const char *const head[] = { "Content-Description: Notification",
                                        "Content-Type: text/plain; charset=us-ascii", NULL };
    part_head(o, b, head);
    line_t l = { 0 };
    add_lit(&l, "This is the mail system at host ");
    add(&l, m->reporting_mta);
    add_lit(&l, ".");
    emit_wrapped(o, &l);
    put(o, "\r\n", 2);
    add_lit(&l, "I'm sorry to have to inform you that your message could not be delivered to "
                "one or more recipients. Its headers are attached below.");
    emit_wrapped(o, &l);
    put(o, "\r\n", 2);
    add_lit(&l, "For further assistance, please send mail to postmaster. If you do so, please "
                "include this problem report");
    if (m->queue_id.len) {
        add_lit(&l, " and the message's queue ID, ");
        add(&l, m->queue_id);
    }
    add_lit(&l, ".");
    emit_wrapped(o, &l);
    put_lit(o, "\r\n                   The mail system\r\n");
    for (uint32_t i = 0; i < m->nrcpt; i++) {
        put(o, "\r\n", 2);
        write_rcpt_text(o, m, &m->rcpt[i]);
    }
}

static void write_rcpt_fields(out_t *o, const dsn_msg_t *m, const dsn_rcpt_t *r)
{
    emit_field(o, "Final-Recipient: rfc822; ", r->addr);
    emit_field(o, "Original-Recipient: rfc822; ", r->addr);
    put_lit(o, "Action: failed\r\n");
    emit_field(o, "Status: ", rcpt_status(r));
    if (has_reply(r)) {
        line_t l = { 0 };
        add_lit(&l, code_known(r->code) ? "Diagnostic-Code: smtp; " : "Diagnostic-Code: X-Mxgate; ");
        add_reply(&l, r);
        emit(o, &l);
    }
    line_t l = { 0 };
    add_lit(&l, "Last-Attempt-Date: ");
    add_date(&l, m->now_s);
    emit(o, &l);
}

static void write_status(out_t *o, const dsn_msg_t *m, const bnd_t *b)
{
    static const char *const head[] = { "Content-Description: Delivery report",
                                        "Content-Type: message/delivery-status", NULL };
    part_head(o, b, head);
    emit_field(o, "Reporting-MTA: dns; ", m->reporting_mta);
    if (m->queue_id.len)
        emit_field(o, "X-Mxgate-Queue-ID: ", m->queue_id);
    if (m->client_helo.len)
        emit_field(o, "Received-From-MTA: dns; ", m->client_helo);
    line_t l = { 0 };
    add_lit(&l, "Arrival-Date: ");
    add_date(&l, m->arrival_s);
    emit(o, &l);
    for (uint32_t i = 0; i < m->nrcpt; i++) {
        put(o, "\r\n", 2);
        write_rcpt_fields(o, m, &m->rcpt[i]);
    }
}

static void write_returned(out_t *o, const bnd_t *b, slice_t head, bool eight)
{
    static const char *const head7[] = { "Content-Description: Undelivered Message Headers",
                                         "Content-Type: text/rfc822-headers",
                                         "Content-Transfer-Encoding: 7bit", NULL };
    static const char *const head8[] = { "Content-Description: Undelivered Message Headers",
                                         "Content-Type: text/rfc822-headers",
                                         "Content-Transfer-Encoding: 8bit", NULL };
    part_head(o, b, eight ? head8 : head7);
    put(o, head.ptr, head.len);
    /* the closing delimiter must begin a line */
    if (head.len && head.ptr[head.len - 1] != '\n')
        put(o, "\r\n", 2);
}

static size_t build(out_t *o, const dsn_msg_t *m)
{
    if (!valid(m))
        return 0;
    slice_t head = header_section(m->original);
    bnd_t b;
    if (!pick_boundary(&b, m, head))
        return 0;
    bool eight = has_8bit(head);
    write_headers(o, m, &b, eight);
    write_notification(o, m, &b);
    write_status(o, m, &b);
    write_returned(o, &b, head, eight);
    put(o, "--", 2);
    put(o, b.text.buf, b.text.len);
    put(o, "--\r\n", 4);
    return o->full ? 0 : o->len;
}

size_t dsn_size_max(const dsn_msg_t *m)
{
    out_t o = { NULL, SIZE_MAX, 0, false };
    return build(&o, m);
}

size_t dsn_write(char *out, size_t cap, const dsn_msg_t *m)
{
    out_t o = { out, cap, 0, false };
    return build(&o, m);
}

/*
 * dsreply.c - parses a downstream server's replies, line by line.
 *
 * Every byte is judged once, when it arrives, in stream order: a line's head
 * (code and separator) byte by byte, the rest with memchr for LF and NUL. So
 * an error is found at the same byte, with the same reason, however the input
 * was split, and a partial line is refused as soon as what it holds is wrong.
 * A line that arrived whole is parsed where it lies; one split across feeds
 * is gathered in the carry buffer first, so a reply's slices are contiguous.
 * What a reply's lines add up to (code, line count, caps, SIZE) lives in the
 * dsr_t until the reply's last line hands it out.
 */
#include "dsreply.h"

#include <limits.h>

#include "reply.h"

/* The carry's length is 16 bits. */
_Static_assert(DSR_LINE_MAX <= 65535, "DSR_LINE_MAX must fit _carry_len");

static const char *const err_names[] = {
    [DSR_ERR_NONE] = "none",         [DSR_ERR_SYNTAX] = "syntax",
    [DSR_ERR_CLASS] = "bad_class",   [DSR_ERR_MISMATCH] = "code_mismatch",
    [DSR_ERR_TOO_LONG] = "line_too_long", [DSR_ERR_NUL] = "nul_byte",
};

const char *dsr_err_name(dsr_err_t e)
{
    if ((unsigned)e >= sizeof err_names / sizeof err_names[0])
        return "?";
    return err_names[e];
}

static const struct cap {
    const char *kw;
    uint32_t bit;
} cap_table[] = {
    { "PIPELINING", DSR_CAP_PIPELINING },
    { "SIZE", DSR_CAP_SIZE },
    { "8BITMIME", DSR_CAP_8BITMIME },
    { "SMTPUTF8", DSR_CAP_SMTPUTF8 },
    { "CHUNKING", DSR_CAP_CHUNKING },
    { "ENHANCEDSTATUSCODES", DSR_CAP_ENHANCEDSTATUSCODES },
    { "STARTTLS", DSR_CAP_STARTTLS },
    { "DSN", DSR_CAP_DSN },
};

/* Byte i of the current line: the carry holds bytes [0, base), p the rest. */
static inline unsigned char line_at(const dsr_t *d, size_t base, const char *p, size_t i)
{
    return (unsigned char)(i < base ? d->_carry[i] : p[i - base]);
}

/*
 * Judge p[0..n), which continues the current line at offset `base` (the bytes
 * before were judged by earlier calls). `complete`: p ends with the line's LF.
 * Offsets from DSR_LINE_MAX on are never looked at: a line that reaches them
 * is too long whatever they hold, and the reason must not depend on how much
 * of it one feed happened to bring.
 */
static dsr_err_t check_bytes(const dsr_t *d, size_t base, const char *p, size_t n, bool complete)
{
    size_t end = base + n;
    size_t lim = end < DSR_LINE_MAX ? end : DSR_LINE_MAX;
    size_t i = base;
    for (; i < lim && i < 5; i++) {
        unsigned char c = line_at(d, base, p, i);
        if (c == 0)
            return DSR_ERR_NUL;
        if (i < 3) {
            if (c < '0' || c > '9')
                return DSR_ERR_SYNTAX;
            if (i == 0 && (c < '2' || c > '5'))
                return DSR_ERR_CLASS;
            /* a continuation: each digit must be its reply's, so "26" after
             * "250-" is wrong before the third digit is in */
            static const unsigned scale[3] = { 100, 10, 1 };
            if (d->_lines && (unsigned)(c - '0') != d->_code / scale[i] % 10)
                return DSR_ERR_MISMATCH;
        } else if (i == 3) {
            if (c != ' ' && c != '-' && c != '\r' && c != '\n')
                return DSR_ERR_SYNTAX;
        } else if (line_at(d, base, p, 3) == '\r' && c != '\n') {
            return DSR_ERR_SYNTAX; /* "250\rx": a CR after the code ends the line or is wrong */
        }
    }
    if (i < lim && memchr(p + (i - base), 0, lim - i))
        return DSR_ERR_NUL;
    if (end > DSR_LINE_MAX || (end == DSR_LINE_MAX && !complete))
        return DSR_ERR_TOO_LONG;
    return DSR_ERR_NONE;
}

/* RFC 1870: "SIZE" [SP number]; a missing or bad number reads as 0. */
static uint64_t parse_size(const char *p, size_t n)
{
    size_t i = 0;
    while (i < n && p[i] == ' ')
        i++;
    uint64_t v = 0;
    size_t digits = 0;
    for (; i < n && p[i] >= '0' && p[i] <= '9'; i++, digits++) {
        unsigned dg = (unsigned)(p[i] - '0');
        v = v > (UINT64_MAX - dg) / 10 ? UINT64_MAX : v * 10 + dg;
    }
    while (i < n && p[i] == ' ')
        i++;
    return digits && i == n ? v : 0;
}

/* An EHLO line's keyword: the text up to the first space, any case. */
static void take_caps(dsr_t *d, slice_t text)
{
    if (text.len == 0)
        return;
    const char *sp = memchr(text.ptr, ' ', text.len);
    slice_t kw = slice_make(text.ptr, sp ? (size_t)(sp - text.ptr) : text.len);
    for (size_t k = 0; k < sizeof cap_table / sizeof cap_table[0]; k++) {
        if (!slice_ieq(kw, cap_table[k].kw))
            continue;
        d->_caps |= cap_table[k].bit;
        if (cap_table[k].bit == DSR_CAP_SIZE)
            d->_size_max = parse_size(text.ptr + kw.len, text.len - kw.len);
        return;
    }
}

/*
 * "2.1.0 text": the enhanced code leads the text and is followed by a space
 * or the end (RFC 3463 and 2034). One of another class than the reply's is
 * not trusted as one; it stays in the text for a human to read.
 */
static void split_esc(int code, slice_t text, dsr_reply_t *r)
{
    r->esc = SLICE_NULL;
    r->text = text;
    if (text.len < 5 || text.ptr[0] != '0' + code / 100)
        return;
    const char *sp = memchr(text.ptr, ' ', text.len);
    size_t n = sp ? (size_t)(sp - text.ptr) : text.len;
    if (!reply_esc_valid(text.ptr, n))
        return;
    r->esc = slice_make(text.ptr, n);
    r->text = sp ? slice_make(sp + 1, text.len - n - 1) : SLICE_NULL;
}

/*
 * A complete, checked line (LF included) of the current reply. Returns true
 * when it was the reply's last, with *r filled and the state reset.
 */
static bool take_line(dsr_t *d, const char *line, size_t len, dsr_reply_t *r)
{
    len--; /* LF; the check guarantees three digits before it */
    if (line[len - 1] == '\r')
        len--;
    int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    bool more = len > 3 && line[3] == '-';
    slice_t text = len > 4 ? slice_make(line + 4, len - 4) : SLICE_NULL;

    if (d->_lines == 0)
        d->_code = (uint16_t)code; /* caps and SIZE were cleared by the last reply */
    if (d->_lines < UINT_MAX)
        d->_lines++;
    /* the first line of an EHLO reply is the server's name, not a keyword */
    if (d->_lines > 1 && code == 250)
        take_caps(d, text);
    if (more)
        return false;

    r->code = code;
    split_esc(code, text, r);
    r->lines = d->_lines;
    r->caps = d->_caps;
    r->size_max = d->_size_max;
    d->_lines = 0;
    d->_code = 0;
    d->_caps = 0;
    d->_size_max = 0;
    return true;
}

enum dsr_status dsr_feed(dsr_t *d, const char *in, size_t len, size_t *consumed, dsr_reply_t *r)
{
    *consumed = 0;
    if (d->_err)
        return DSR_ERROR;
    size_t off = 0;
    while (off < len) {
        const char *p = in + off;
        size_t avail = len - off;
        const char *lf = memchr(p, '\n', avail);
        size_t n = lf ? (size_t)(lf - p) + 1 : avail;
        size_t base = d->_carry_len;
        dsr_err_t e = check_bytes(d, base, p, n, lf != NULL);
        if (e != DSR_ERR_NONE) {
            d->_err = (uint8_t)e;
            return DSR_ERROR;
        }
        if (!lf) {
            /* checked, so shorter than DSR_LINE_MAX: wait for the rest */
            memcpy(d->_carry + base, p, n);
            d->_carry_len = (uint16_t)(base + n);
            break;
        }
        off += n;
        const char *line = p;
        size_t linelen = n;
        if (base) {
            /* the whole line fits: it was checked to be at most DSR_LINE_MAX */
            memcpy(d->_carry + base, p, n);
            line = d->_carry;
            linelen = base + n;
            d->_carry_len = 0; /* the bytes stay until the next feed, for r's slices */
        }
        if (take_line(d, line, linelen, r)) {
            *consumed = off;
            return DSR_REPLY;
        }
    }
    *consumed = len;
    return DSR_AGAIN;
}

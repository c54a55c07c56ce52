/*
 * rspamd.c - rspamd's /checkv2 exchange without the I/O (see rspamd.h).
 *
 * The response is read line by line while it is a head (status line,
 * headers, chunk sizes, trailers): a line is gathered whole in the reader's
 * own buffer, then judged, so every verdict and error offset is the same
 * however the bytes were split; a line that cannot fit is refused when its
 * RSPAMD_LINE_MAX-th octet arrives without an LF. The body is copied into
 * one buffer sized before its first octet (the Content-Length, or the cap
 * for chunked), because the JSON reader wants it contiguous.
 *
 * Why a JSON reader of our own rather than a library: core/ links nothing
 * but libc (the Makefile links the unit tests and fuzz targets with libcmocka
 * and inih only), and Debian's JSON libraries (json-c, jansson) would build a
 * tree of allocations per reply for the dozen members we read out of a
 * hundred. The subset is small (RFC 8259 whole, but no value is kept except
 * where we want it) and it must be fuzzed either way. So: recursive descent
 * over the body, nesting bounded by RSPAMD_JSON_DEPTH, no allocation; strings
 * are decoded (every escape, surrogate pairs to UTF-8, a lone surrogate
 * refused) straight into the verdict's arena when kept and only checked when
 * not. Octets >= 0x80 in strings are passed through, not validated as UTF-8
 * there: what rspamd quotes from a message (symbol options) must not be able
 * to make the verdict unreadable. What is kept and reaches a message (header
 * values, the subject) is checked as UTF-8 on its own.
 *
 * Numbers are converted here too, not by strtod, which follows the locale's
 * decimal point: 19 significant digits and a power of ten, exact for
 * rspamd's "7.600000" (one correctly rounded division).
 */
#include "rspamd.h"

#include "addr.h"

#include <stdio.h>
#include <stdlib.h>

enum state {
    ST_STATUS = 0, /* the status line */
    ST_HEADER,     /* header lines, up to the blank line */
    ST_BODY,       /* Content-Length octets */
    ST_CHUNK_SIZE, /* a chunk-size line */
    ST_CHUNK_DATA, /* a chunk's octets */
    ST_CHUNK_END,  /* the CRLF after them */
    ST_TRAILER,    /* trailer lines after the last chunk */
    ST_DONE,
};

#define F_CLOSE 0x01   /* Connection: close */
#define F_KEEP 0x02    /* Connection: keep-alive */
#define F_HTTP10 0x04  /* HTTP/1.0 */
#define F_LENGTH 0x08  /* a Content-Length was read (in _clen) */
#define F_CHUNKED 0x10 /* Transfer-Encoding: chunked */
#define F_CALLER 0x80  /* the body buffer is the caller's */

_Static_assert(RSPAMD_LINE_MAX <= UINT16_MAX, "RSPAMD_LINE_MAX must fit _line_len");
_Static_assert(RSPAMD_ARENA_MAX < INT32_MAX, "arena offsets");

/* A name from one of the tables below; "?" outside it. */
#define NAME_IN(table, i) ((unsigned)(i) < sizeof(table) / sizeof(table)[0] ? (table)[i] : "?")

static const char *const err_names[] = {
    [RSPAMD_ERR_NONE] = "none",
    [RSPAMD_ERR_UNSAFE_VALUE] = "unsafe_value",
    [RSPAMD_ERR_NO_ROOM] = "no_room",
    [RSPAMD_ERR_STATUS] = "bad_status_line",
    [RSPAMD_ERR_VERSION] = "bad_http_version",
    [RSPAMD_ERR_HEADER] = "bad_header",
    [RSPAMD_ERR_LINE_TOO_LONG] = "line_too_long",
    [RSPAMD_ERR_HEAD_TOO_LARGE] = "head_too_large",
    [RSPAMD_ERR_LENGTH] = "bad_content_length",
    [RSPAMD_ERR_NO_LENGTH] = "no_content_length",
    [RSPAMD_ERR_FRAMING] = "ambiguous_framing",
    [RSPAMD_ERR_ENCODING] = "unsupported_transfer_encoding",
    [RSPAMD_ERR_CHUNK] = "bad_chunk",
    [RSPAMD_ERR_BODY_TOO_LARGE] = "body_too_large",
    [RSPAMD_ERR_NO_MEMORY] = "no_memory",
    [RSPAMD_ERR_JSON] = "bad_json",
    [RSPAMD_ERR_JSON_DEPTH] = "json_too_deep",
    [RSPAMD_ERR_FIELD] = "bad_field",
    [RSPAMD_ERR_NO_ACTION] = "no_action",
    [RSPAMD_ERR_ACTION] = "unknown_action",
};

const char *rspamd_err_name(rspamd_err_t e)
{
    return NAME_IN(err_names, e);
}

static const char *const action_names[] = {
    [RSPAMD_NO_ACTION] = "no action",
    [RSPAMD_GREYLIST] = "greylist",
    [RSPAMD_ADD_HEADER] = "add header",
    [RSPAMD_REWRITE_SUBJECT] = "rewrite subject",
    [RSPAMD_SOFT_REJECT] = "soft reject",
    [RSPAMD_REJECT] = "reject",
};

const char *rspamd_action_name(rspamd_action_t a)
{
    return NAME_IN(action_names, a);
}

static const char *const auth_names[] = {
    [RSPAMD_AUTH_ABSENT] = "absent",         [RSPAMD_AUTH_PASS] = "pass",
    [RSPAMD_AUTH_FAIL] = "fail",             [RSPAMD_AUTH_TEMPERROR] = "temperror",
    [RSPAMD_AUTH_PERMERROR] = "permerror",   [RSPAMD_AUTH_NONE] = "none",
};

const char *rspamd_auth_name(rspamd_auth_t a)
{
    return NAME_IN(auth_names, a);
}

static const char *const policy_names[] = {
    [RSPAMD_DMARC_POLICY_UNKNOWN] = "-", [RSPAMD_DMARC_POLICY_NONE] = "none",
    [RSPAMD_DMARC_POLICY_QUARANTINE] = "quarantine", [RSPAMD_DMARC_POLICY_REJECT] = "reject",
};

const char *rspamd_dmarc_policy_name(rspamd_dmarc_policy_t p)
{
    return NAME_IN(policy_names, p);
}

/* ---- a bounded writer: counts past its end, so one pass can measure ---- */

typedef struct wr {
    char *out;
    size_t cap, len;
} wr_t;

static void put(wr_t *w, const char *p, size_t n)
{
    if (w->out && n <= w->cap && w->len <= w->cap - n)
        memcpy(w->out + w->len, p, n);
    w->len += n;
}

static void puts_(wr_t *w, const char *s)
{
    put(w, s, strlen(s));
}

static bool wr_fits(const wr_t *w)
{
    return w->len <= w->cap;
}

/* ---- the request ---- */

/* A value that can sit in an HTTP header: no control octet at all. */
static bool safe(slice_t s)
{
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        if (c < 0x20 || c == 0x7f)
            return false;
    }
    return true;
}

static bool ip_text(slice_t s)
{
    for (size_t i = 0; i < s.len; i++) {
        char c = s.ptr[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == '.' || c == ':'))
            return false;
    }
    return true;
}

static void header(wr_t *w, const char *name, slice_t value)
{
    puts_(w, name);
    put(w, ": ", 2);
    put(w, value.ptr, value.len);
    put(w, "\r\n", 2);
}

rspamd_err_t rspamd_request_head(char *out, size_t cap, size_t *len, const rspamd_env_t *env, uint64_t body_len,
                                 const char **field)
{
    const char *bad = NULL;
    if (!safe(env->ip) || !ip_text(env->ip))
        bad = "IP";
    else if (!safe(env->helo))
        bad = "Helo";
    else if (!safe(env->sender))
        bad = "From";
    else if (!safe(env->queue_id))
        bad = "Queue-Id";
    else if (!safe(env->mta_name))
        bad = "MTA-Name";
    for (size_t i = 0; !bad && i < env->nrcpts; i++)
        if (env->rcpts[i].len == 0 || !safe(env->rcpts[i]))
            bad = "Rcpt";
    if (field)
        *field = bad;
    if (bad)
        return RSPAMD_ERR_UNSAFE_VALUE;

    wr_t w = { out, cap, 0 };
    puts_(&w, "POST /checkv2 HTTP/1.1\r\nHost: rspamd\r\nConnection: keep-alive\r\n");
    if (env->ip.len)
        header(&w, "IP", env->ip);
    if (env->helo.len)
        header(&w, "Helo", env->helo);
    header(&w, "From", env->sender.len ? env->sender : SLICE_LIT("<>"));
    for (size_t i = 0; i < env->nrcpts; i++)
        header(&w, "Rcpt", env->rcpts[i]);
    if (env->queue_id.len)
        header(&w, "Queue-Id", env->queue_id);
    if (env->mta_name.len)
        header(&w, "MTA-Name", env->mta_name);
    char n[32];
    int k = snprintf(n, sizeof n, "%llu", (unsigned long long)body_len);
    header(&w, "Content-Length", slice_make(n, (size_t)k));
    put(&w, "\r\n", 2);
    if (!wr_fits(&w))
        return RSPAMD_ERR_NO_ROOM;
    *len = w.len;
    return RSPAMD_ERR_NONE;
}

/* ---- the response ---- */

void rspamd_resp_init(rspamd_resp_t *r, char *body, size_t cap)
{
    memset(r, 0, sizeof *r);
    if (body) {
        r->_body = body;
        r->_cap = cap;
        r->_flags = F_CALLER;
    }
}

void rspamd_resp_free(rspamd_resp_t *r)
{
    if (!(r->_flags & F_CALLER))
        free(r->_body);
    memset(r, 0, sizeof *r);
}

size_t rspamd_resp_offset(const rspamd_resp_t *r)
{
    return r->_err ? r->_pos : r->_pos + r->_line_len;
}

bool rspamd_resp_keepalive(const rspamd_resp_t *r)
{
    if (r->_state != ST_DONE || (r->_flags & F_CLOSE))
        return false;
    return !(r->_flags & F_HTTP10) || (r->_flags & F_KEEP);
}

slice_t rspamd_resp_body(const rspamd_resp_t *r)
{
    if (r->_state != ST_DONE || !r->_body)
        return slice_make("", 0);
    return slice_make(r->_body, r->_body_len);
}

/* The body cap: the caller's buffer, or what we would allocate. */
static size_t body_cap(const rspamd_resp_t *r)
{
    return (r->_flags & F_CALLER) ? r->_cap : RSPAMD_BODY_MAX;
}

static bool is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Visible, SP, HTAB or obs-text: what a header value and a reason phrase
 * may hold (RFC 9110 5.5). */
static bool text_ok(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return false;
    }
    return true;
}

/* "HTTP/1.x DDD[ reason]" */
static rspamd_err_t status_line(rspamd_resp_t *r, const char *p, size_t n)
{
    if (n < 12 || memcmp(p, "HTTP/", 5) != 0)
        return RSPAMD_ERR_STATUS;
    if (!is_digit(p[5]) || p[6] != '.' || !is_digit(p[7]))
        return RSPAMD_ERR_STATUS;
    if (p[5] != '1' || (p[7] != '0' && p[7] != '1'))
        return RSPAMD_ERR_VERSION;
    if (p[8] != ' ' || !is_digit(p[9]) || !is_digit(p[10]) || !is_digit(p[11]))
        return RSPAMD_ERR_STATUS;
    int code = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    if (code < 200 || code > 599)
        return RSPAMD_ERR_STATUS;
    if (n > 12 && (p[12] != ' ' || !text_ok(p + 13, n - 13)))
        return RSPAMD_ERR_STATUS;
    r->_code = (uint16_t)code;
    if (p[7] == '0')
        r->_flags |= F_HTTP10;
    return RSPAMD_ERR_NONE;
}

static slice_t trim_ows(const char *p, size_t n)
{
    while (n && (*p == ' ' || *p == '\t'))
        p++, n--;
    while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
        n--;
    return slice_make(p, n);
}

/* "close" and "keep-alive" among Connection's comma-separated options. */
static void connection(rspamd_resp_t *r, slice_t v)
{
    size_t i = 0;
    while (i <= v.len) {
        size_t j = i;
        while (j < v.len && v.ptr[j] != ',')
            j++;
        slice_t t = trim_ows(v.ptr + i, j - i);
        if (slice_ieq(t, "close"))
            r->_flags |= F_CLOSE;
        else if (slice_ieq(t, "keep-alive"))
            r->_flags |= F_KEEP;
        i = j + 1;
    }
}

/* A header line, or with `trailer` a trailer line (checked, not used). */
static rspamd_err_t header_line(rspamd_resp_t *r, const char *p, size_t n, bool trailer)
{
    size_t k = 0;
    while (k < n && is_tchar((unsigned char)p[k]))
        k++;
    if (k == 0 || k == n || p[k] != ':' || !text_ok(p + k + 1, n - k - 1))
        return RSPAMD_ERR_HEADER;
    if (trailer)
        return RSPAMD_ERR_NONE;
    slice_t name = slice_make(p, k), v = trim_ows(p + k + 1, n - k - 1);
    if (slice_ieq(name, "content-length")) {
        uint64_t x = 0;
        if (v.len == 0 || v.len > 19)
            return RSPAMD_ERR_LENGTH;
        for (size_t i = 0; i < v.len; i++) {
            if (!is_digit(v.ptr[i]))
                return RSPAMD_ERR_LENGTH;
            x = x * 10 + (uint64_t)(v.ptr[i] - '0');
        }
        if ((r->_flags & F_LENGTH) && r->_clen != x)
            return RSPAMD_ERR_LENGTH;
        if (x > body_cap(r))
            return RSPAMD_ERR_BODY_TOO_LARGE;
        r->_clen = x;
        r->_flags |= F_LENGTH;
    } else if (slice_ieq(name, "transfer-encoding")) {
        if ((r->_flags & F_CHUNKED) || !slice_ieq(v, "chunked"))
            return RSPAMD_ERR_ENCODING;
        r->_flags |= F_CHUNKED;
    } else if (slice_ieq(name, "connection")) {
        connection(r, v);
    }
    return RSPAMD_ERR_NONE;
}

/* The blank line: how the body is framed, and room for it. */
static rspamd_err_t end_of_head(rspamd_resp_t *r)
{
    if ((r->_flags & F_LENGTH) && (r->_flags & F_CHUNKED))
        return RSPAMD_ERR_FRAMING;
    if (!(r->_flags & (F_LENGTH | F_CHUNKED)))
        return RSPAMD_ERR_NO_LENGTH;
    size_t need = (r->_flags & F_CHUNKED) ? RSPAMD_BODY_MAX : (size_t)r->_clen;
    if (!(r->_flags & F_CALLER) && need > 0) {
        r->_body = malloc(need);
        if (!r->_body)
            return RSPAMD_ERR_NO_MEMORY;
        r->_cap = need;
    }
    if (r->_flags & F_CHUNKED)
        r->_state = ST_CHUNK_SIZE;
    else
        r->_state = r->_clen ? ST_BODY : ST_DONE;
    return RSPAMD_ERR_NONE;
}

/* "HEX[ext]": chunk extensions are allowed and ignored. */
static rspamd_err_t chunk_size(rspamd_resp_t *r, const char *p, size_t n)
{
    uint64_t x = 0;
    size_t k = 0;
    for (; k < n && hex_digit(p[k]) >= 0; k++) {
        if (k == 16)
            return RSPAMD_ERR_CHUNK;
        x = x * 16 + (uint64_t)hex_digit(p[k]);
    }
    if (k == 0)
        return RSPAMD_ERR_CHUNK;
    slice_t ext = trim_ows(p + k, n - k);
    if (ext.len && (ext.ptr[0] != ';' || !text_ok(ext.ptr, ext.len)))
        return RSPAMD_ERR_CHUNK;
    if (x > body_cap(r) - r->_body_len)
        return RSPAMD_ERR_BODY_TOO_LARGE;
    r->_clen = x;
    r->_state = x ? ST_CHUNK_DATA : ST_TRAILER;
    return RSPAMD_ERR_NONE;
}

/* What a bare CR or LF breaks, in each state. */
static rspamd_err_t line_error(const rspamd_resp_t *r)
{
    if (r->_state == ST_STATUS)
        return RSPAMD_ERR_STATUS;
    if (r->_state == ST_CHUNK_SIZE || r->_state == ST_CHUNK_END)
        return RSPAMD_ERR_CHUNK;
    return RSPAMD_ERR_HEADER;
}

/* A whole line (CRLF excluded) in the state it arrived in. */
static rspamd_err_t line(rspamd_resp_t *r, const char *p, size_t n)
{
    if (r->_state != ST_CHUNK_SIZE && r->_state != ST_CHUNK_END) {
        r->_head_len += (uint32_t)n + 2;
        if (++r->_lines > RSPAMD_HEAD_LINES || r->_head_len > RSPAMD_HEAD_MAX)
            return RSPAMD_ERR_HEAD_TOO_LARGE;
    }
    if (memchr(p, '\r', n))
        return line_error(r);
    switch (r->_state) {
    case ST_STATUS: {
        rspamd_err_t e = status_line(r, p, n);
        if (e == RSPAMD_ERR_NONE)
            r->_state = ST_HEADER;
        return e;
    }
    case ST_HEADER:
        if (n == 0)
            return end_of_head(r);
        if (p[0] == ' ' || p[0] == '\t') /* obs-fold */
            return RSPAMD_ERR_HEADER;
        return header_line(r, p, n, false);
    case ST_CHUNK_SIZE:
        return chunk_size(r, p, n);
    case ST_CHUNK_END:
        if (n != 0)
            return RSPAMD_ERR_CHUNK;
        r->_state = ST_CHUNK_SIZE;
        return RSPAMD_ERR_NONE;
    case ST_TRAILER:
        if (n == 0) {
            r->_state = ST_DONE;
            return RSPAMD_ERR_NONE;
        }
        return header_line(r, p, n, true);
    default:
        return RSPAMD_ERR_HEADER; /* not reached */
    }
}

static enum rspamd_status fail(rspamd_resp_t *r, rspamd_err_t e, size_t *consumed)
{
    r->_err = (uint8_t)e;
    *consumed = 0;
    return RSPAMD_ERROR;
}

enum rspamd_status rspamd_resp_feed(rspamd_resp_t *r, const char *in, size_t len, size_t *consumed)
{
    *consumed = 0;
    if (r->_err)
        return RSPAMD_ERROR;
    size_t i = 0;
    while (i < len && r->_state != ST_DONE) {
        if (r->_state == ST_BODY || r->_state == ST_CHUNK_DATA) {
            size_t n = len - i < r->_clen ? len - i : (size_t)r->_clen;
            memcpy(r->_body + r->_body_len, in + i, n);
            r->_body_len += n;
            r->_clen -= n;
            r->_pos += n;
            i += n;
            if (r->_clen == 0)
                r->_state = r->_state == ST_BODY ? ST_DONE : ST_CHUNK_END;
            continue;
        }
        const char *lf = memchr(in + i, '\n', len - i);
        size_t n = lf ? (size_t)(lf - (in + i)) + 1 : len - i;
        if (r->_line_len + n > RSPAMD_LINE_MAX || (!lf && r->_line_len + n == RSPAMD_LINE_MAX))
            return fail(r, RSPAMD_ERR_LINE_TOO_LONG, consumed);
        memcpy(r->_line + r->_line_len, in + i, n);
        r->_line_len = (uint16_t)(r->_line_len + n);
        i += n;
        if (!lf)
            break;
        size_t ll = r->_line_len;
        if (ll < 2 || r->_line[ll - 2] != '\r') /* a bare LF */
            return fail(r, line_error(r), consumed);
        rspamd_err_t e = line(r, r->_line, ll - 2);
        if (e != RSPAMD_ERR_NONE)
            return fail(r, e, consumed);
        r->_pos += ll;
        r->_line_len = 0;
    }
    *consumed = i;
    return r->_state == ST_DONE ? RSPAMD_DONE : RSPAMD_AGAIN;
}

/* ---- header names and values ---- */

static bool name_ok(slice_t name)
{
    if (name.len == 0 || name.len > RSPAMD_NAME_MAX)
        return false;
    for (size_t i = 0; i < name.len; i++) {
        unsigned char c = (unsigned char)name.ptr[i];
        if (c < 33 || c > 126 || c == ':')
            return false;
    }
    return true;
}

static bool wsp(char c)
{
    return c == ' ' || c == '\t';
}

/* A field body: text, HTAB, UTF-8, and folds (CRLF, then a line of white
 * space and something else). */
static bool value_ok(slice_t v)
{
    const unsigned char *p = (const unsigned char *)v.ptr;
    for (size_t i = 0; i < v.len;) {
        unsigned char c = p[i];
        if (c == '\r') {
            if (i + 2 >= v.len || p[i + 1] != '\n' || !wsp((char)p[i + 2]))
                return false;
            size_t j = i + 2;
            while (j < v.len && wsp((char)p[j]))
                j++;
            if (j == v.len || p[j] == '\r')
                return false;
            i = j;
        } else if (c >= 0x80) {
            size_t k = addr_utf8_seq(p + i, v.len - i);
            if (k == 0)
                return false;
            i += k;
        } else if ((c < 0x20 && c != '\t') || c == 0x7f) {
            return false;
        } else {
            i++;
        }
    }
    return true;
}

/*
 * "name: value\r\n" with every line at most RSPAMD_WIRE_LINE_MAX octets:
 * the value's own folds are kept, and a line still too long is broken before
 * the last white space that fits and follows something else. False when
 * that is impossible (a run without white space that long).
 */
static bool fold(wr_t *w, slice_t name, slice_t v)
{
    put(w, name.ptr, name.len);
    put(w, ": ", 2);
    size_t col = name.len + 2, i = 0;
    for (;;) {
        size_t e = i;
        while (e < v.len && v.ptr[e] != '\r')
            e++;
        size_t s = i;
        while (col + (e - s) > RSPAMD_WIRE_LINE_MAX) {
            size_t f = s;
            while (f < e && wsp(v.ptr[f]))
                f++;
            size_t k = s + (RSPAMD_WIRE_LINE_MAX - col);
            while (k > f && !wsp(v.ptr[k]))
                k--;
            if (k <= f)
                return false;
            put(w, v.ptr + s, k - s);
            put(w, "\r\n", 2);
            col = 0;
            s = k;
        }
        put(w, v.ptr + s, e - s);
        col += e - s;
        if (e == v.len)
            break;
        put(w, "\r\n", 2);
        col = 0;
        i = e + 2;
    }
    put(w, "\r\n", 2);
    return true;
}

bool rspamd_header_ok(slice_t name, slice_t value)
{
    wr_t w = { NULL, 0, 0 };
    return name_ok(name) && value_ok(value) && fold(&w, name, value);
}

/* ---- the JSON reader ---- */

typedef struct jr {
    const char *p, *end;
    unsigned depth;
    rspamd_err_t err;
} jr_t;

static bool jfail(jr_t *j, rspamd_err_t e)
{
    if (j->err == RSPAMD_ERR_NONE)
        j->err = e;
    return false;
}

static void jws(jr_t *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

/* The next value's first octet (0 at the end), white space skipped. */
static char jpeek(jr_t *j)
{
    jws(j);
    return j->p < j->end ? *j->p : 0;
}

static bool jlit(jr_t *j, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0)
        return jfail(j, RSPAMD_ERR_JSON);
    j->p += n;
    return true;
}

static bool hex4(jr_t *j, uint32_t *u)
{
    if (j->end - j->p < 4)
        return false;
    *u = 0;
    for (int i = 0; i < 4; i++) {
        int d = hex_digit(j->p[i]);
        if (d < 0)
            return false;
        *u = *u << 4 | (uint32_t)d;
    }
    j->p += 4;
    return true;
}

static void out_byte(char *out, size_t cap, size_t *k, uint32_t c)
{
    if (out && *k < cap)
        out[*k] = (char)c;
    (*k)++;
}

/*
 * The string at the cursor, decoded into out[0..cap) (out NULL: checked
 * only); *n is its decoded length, which may exceed cap (the octets past
 * cap were not written).
 */
static bool jstr(jr_t *j, char *out, size_t cap, size_t *n)
{
    if (jpeek(j) != '"')
        return jfail(j, RSPAMD_ERR_JSON);
    j->p++;
    size_t k = 0;
    for (;;) {
        if (j->p >= j->end)
            return jfail(j, RSPAMD_ERR_JSON);
        unsigned char c = (unsigned char)*j->p++;
        if (c == '"')
            break;
        if (c < 0x20)
            return jfail(j, RSPAMD_ERR_JSON);
        if (c != '\\') {
            /* a run of plain octets at once */
            const char *s = j->p - 1;
            while (j->p < j->end && *j->p != '"' && *j->p != '\\' && (unsigned char)*j->p >= 0x20)
                j->p++;
            size_t m = (size_t)(j->p - s);
            if (out && k < cap)
                memcpy(out + k, s, m < cap - k ? m : cap - k);
            k += m;
            continue;
        }
        if (j->p >= j->end)
            return jfail(j, RSPAMD_ERR_JSON);
        uint32_t u;
        switch (*j->p++) {
        case '"': u = '"'; break;
        case '\\': u = '\\'; break;
        case '/': u = '/'; break;
        case 'b': u = '\b'; break;
        case 'f': u = '\f'; break;
        case 'n': u = '\n'; break;
        case 'r': u = '\r'; break;
        case 't': u = '\t'; break;
        case 'u':
            if (!hex4(j, &u))
                return jfail(j, RSPAMD_ERR_JSON);
            if (u >= 0xdc00 && u <= 0xdfff)
                return jfail(j, RSPAMD_ERR_JSON);
            if (u >= 0xd800 && u <= 0xdbff) {
                uint32_t lo;
                if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u')
                    return jfail(j, RSPAMD_ERR_JSON);
                j->p += 2;
                if (!hex4(j, &lo) || lo < 0xdc00 || lo > 0xdfff)
                    return jfail(j, RSPAMD_ERR_JSON);
                u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
            }
            break;
        default:
            return jfail(j, RSPAMD_ERR_JSON);
        }
        if (u < 0x80) {
            out_byte(out, cap, &k, u);
        } else if (u < 0x800) {
            out_byte(out, cap, &k, 0xc0 | u >> 6);
            out_byte(out, cap, &k, 0x80 | (u & 0x3f));
        } else if (u < 0x10000) {
            out_byte(out, cap, &k, 0xe0 | u >> 12);
            out_byte(out, cap, &k, 0x80 | (u >> 6 & 0x3f));
            out_byte(out, cap, &k, 0x80 | (u & 0x3f));
        } else {
            out_byte(out, cap, &k, 0xf0 | u >> 18);
            out_byte(out, cap, &k, 0x80 | (u >> 12 & 0x3f));
            out_byte(out, cap, &k, 0x80 | (u >> 6 & 0x3f));
            out_byte(out, cap, &k, 0x80 | (u & 0x3f));
        }
    }
    *n = k;
    return true;
}

/* A number (RFC 8259 6), as a double. */
static bool jnum(jr_t *j, double *v)
{
    jws(j);
    const char *p = j->p, *e = j->end;
    bool neg = p < e && *p == '-';
    if (neg)
        p++;
    if (p >= e || !is_digit(*p))
        return jfail(j, RSPAMD_ERR_JSON);
    uint64_t m = 0;
    long exp10 = 0;
    if (*p == '0') {
        p++;
    } else {
        for (; p < e && is_digit(*p); p++) {
            if (m < 1000000000000000000ull)
                m = m * 10 + (uint64_t)(*p - '0');
            else if (exp10 < 100000)
                exp10++;
        }
    }
    if (p < e && *p == '.') {
        p++;
        if (p >= e || !is_digit(*p))
            return jfail(j, RSPAMD_ERR_JSON);
        for (; p < e && is_digit(*p); p++) {
            if (m < 1000000000000000000ull) {
                m = m * 10 + (uint64_t)(*p - '0');
                exp10--;
            }
        }
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        bool eneg = p < e && *p == '-';
        if (p < e && (*p == '-' || *p == '+'))
            p++;
        if (p >= e || !is_digit(*p))
            return jfail(j, RSPAMD_ERR_JSON);
        long x = 0;
        for (; p < e && is_digit(*p); p++)
            if (x < 100000)
                x = x * 10 + (*p - '0');
        exp10 += eneg ? -x : x;
    }
    static const double p10[] = { 1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                  1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22 };
    double d = (double)m;
    for (; exp10 < 0 && d != 0; exp10 += exp10 < -22 ? 22 : -exp10)
        d /= p10[exp10 < -22 ? 22 : -exp10];
    for (; exp10 > 0 && d != 0 && d < 1e308; exp10 -= exp10 > 22 ? 22 : exp10)
        d *= p10[exp10 > 22 ? 22 : exp10];
    *v = neg ? -d : d;
    j->p = p;
    return true;
}

/* An integer in [-1000000, 1000000], for orders and indexes. */
static bool jint(jr_t *j, int *v, bool *ok)
{
    double d;
    if (!jnum(j, &d))
        return false;
    *ok = d >= -1000000 && d <= 1000000 && d == (double)(int)d;
    if (*ok)
        *v = (int)d;
    return true;
}

/* Enter an object or array at the cursor. */
static bool jenter(jr_t *j, char open)
{
    if (jpeek(j) != open)
        return jfail(j, RSPAMD_ERR_JSON);
    if (++j->depth > RSPAMD_JSON_DEPTH)
        return jfail(j, RSPAMD_ERR_JSON_DEPTH);
    j->p++;
    return true;
}

/* Inside an object or array: 1 when another member or element follows (its
 * comma taken), 0 at the end (the closing octet taken), -1 on an error. */
static int jnext(jr_t *j, char close, bool *first)
{
    char c = jpeek(j);
    if (c == close) {
        j->p++;
        j->depth--;
        return 0;
    }
    if (!*first) {
        if (c != ',')
            return jfail(j, RSPAMD_ERR_JSON), -1;
        j->p++;
    }
    *first = false;
    return 1;
}

/* A member's name and its colon; the name decoded into key[0..cap). */
static bool jkey(jr_t *j, char *key, size_t cap, size_t *n)
{
    if (!jstr(j, key, cap, n))
        return false;
    if (jpeek(j) != ':')
        return jfail(j, RSPAMD_ERR_JSON);
    j->p++;
    return true;
}

static bool key_is(const char *key, size_t n, const char *lit)
{
    return n == strlen(lit) && memcmp(key, lit, n) == 0;
}

/* Any value, checked and passed over. */
static bool jskip(jr_t *j)
{
    size_t n;
    double d;
    bool first = true;
    int more;
    switch (jpeek(j)) {
    case '{':
        if (!jenter(j, '{'))
            return false;
        while ((more = jnext(j, '}', &first)) > 0)
            if (!jkey(j, NULL, 0, &n) || !jskip(j))
                return false;
        return more == 0;
    case '[':
        if (!jenter(j, '['))
            return false;
        while ((more = jnext(j, ']', &first)) > 0)
            if (!jskip(j))
                return false;
        return more == 0;
    case '"':
        return jstr(j, NULL, 0, &n);
    case 't':
        return jlit(j, "true");
    case 'f':
        return jlit(j, "false");
    case 'n':
        return jlit(j, "null");
    default:
        return jnum(j, &d);
    }
}

/* ---- the verdict ---- */

/*
 * Printable ASCII out of text for an SMTP reply or a log: a run of white
 * space (SP, HTAB, CR, LF) becomes one SP, trimmed at both ends; another
 * control octet or DEL is dropped; a non-ASCII character becomes '?'.
 */
static size_t sanitize(const char *in, size_t n, char *out, size_t cap)
{
    size_t k = 0;
    bool space = false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i], o;
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            space = true;
            continue;
        }
        if (c > 0x20 && c < 0x7f)
            o = c;
        else if (c >= 0x80 && (c & 0xc0) != 0x80)
            o = '?';
        else
            continue;
        if (space && k > 0) {
            if (k + 1 >= cap)
                break;
            out[k++] = ' ';
        }
        space = false;
        if (k >= cap)
            break;
        out[k++] = (char)o;
    }
    return k;
}

/* A string member for the log or a reply: its first 2 KiB, sanitized. */
static bool text_member(jr_t *j, char *out, slice_t *s)
{
    char tmp[2048];
    size_t n;
    if (jpeek(j) != '"')
        return jfail(j, RSPAMD_ERR_FIELD);
    if (!jstr(j, tmp, sizeof tmp, &n))
        return false;
    s->ptr = out;
    s->len = sanitize(tmp, n < sizeof tmp ? n : sizeof tmp, out, RSPAMD_TEXT_MAX);
    return true;
}

static bool action(jr_t *j, rspamd_verdict_t *v)
{
    char buf[32];
    size_t n;
    if (jpeek(j) != '"')
        return jfail(j, RSPAMD_ERR_FIELD);
    if (!jstr(j, buf, sizeof buf, &n))
        return false;
    for (size_t a = 0; a < sizeof action_names / sizeof action_names[0]; a++) {
        if (key_is(buf, n, action_names[a])) {
            v->action = (rspamd_action_t)a;
            return true;
        }
    }
    return jfail(j, RSPAMD_ERR_ACTION);
}

static bool number(jr_t *j, double *d)
{
    char c = jpeek(j);
    if (c != '-' && !is_digit(c))
        return jfail(j, RSPAMD_ERR_FIELD);
    return jnum(j, d);
}

static bool boolean(jr_t *j, bool *b)
{
    char c = jpeek(j);
    if (c != 't' && c != 'f')
        return jfail(j, RSPAMD_ERR_FIELD);
    *b = c == 't';
    return jlit(j, *b ? "true" : "false");
}

static bool messages(jr_t *j, rspamd_verdict_t *v)
{
    char key[32];
    size_t n;
    bool first = true;
    int more;
    if (jpeek(j) != '{')
        return jfail(j, RSPAMD_ERR_FIELD);
    if (!jenter(j, '{'))
        return false;
    while ((more = jnext(j, '}', &first)) > 0) {
        if (!jkey(j, key, sizeof key, &n))
            return false;
        if (key_is(key, n, "smtp_message") ? !text_member(j, v->text[0], &v->smtp_message) : !jskip(j))
            return false;
    }
    return more == 0;
}

/* The subject: into the arena when it fits and is a field body. */
static bool subject(jr_t *j, rspamd_verdict_t *v)
{
    char *dst = v->arena + v->arena_len;
    size_t room = RSPAMD_ARENA_MAX - v->arena_len, n;
    if (jpeek(j) != '"')
        return jfail(j, RSPAMD_ERR_FIELD);
    if (!jstr(j, dst, room, &n))
        return false;
    if (n > room || !rspamd_header_ok(SLICE_LIT("Subject"), slice_make(dst, n))) {
        v->subject = SLICE_NULL;
        v->dropped++;
        return true;
    }
    v->subject = slice_make(dst, n);
    v->arena_len += n;
    return true;
}

static const struct auth_symbol {
    const char *name;
    uint8_t mech; /* 0 DKIM, 1 DMARC, 2 ARC */
    uint8_t result;
    uint8_t policy;
} auth_symbols[] = {
    { "R_DKIM_ALLOW", 0, RSPAMD_AUTH_PASS, 0 },
    { "R_DKIM_REJECT", 0, RSPAMD_AUTH_FAIL, 0 },
    { "R_DKIM_TEMPFAIL", 0, RSPAMD_AUTH_TEMPERROR, 0 },
    { "R_DKIM_PERMFAIL", 0, RSPAMD_AUTH_PERMERROR, 0 },
    { "R_DKIM_NA", 0, RSPAMD_AUTH_NONE, 0 },
    { "DMARC_POLICY_ALLOW", 1, RSPAMD_AUTH_PASS, 0 },
    { "DMARC_POLICY_ALLOW_WITH_FAILURES", 1, RSPAMD_AUTH_PASS, 0 },
    { "DMARC_POLICY_REJECT", 1, RSPAMD_AUTH_FAIL, RSPAMD_DMARC_POLICY_REJECT },
    { "DMARC_POLICY_QUARANTINE", 1, RSPAMD_AUTH_FAIL, RSPAMD_DMARC_POLICY_QUARANTINE },
    { "DMARC_POLICY_SOFTFAIL", 1, RSPAMD_AUTH_FAIL, RSPAMD_DMARC_POLICY_NONE },
    { "DMARC_DNSFAIL", 1, RSPAMD_AUTH_TEMPERROR, 0 },
    { "DMARC_BAD_POLICY", 1, RSPAMD_AUTH_PERMERROR, 0 },
    { "DMARC_NA", 1, RSPAMD_AUTH_NONE, 0 },
    { "ARC_ALLOW", 2, RSPAMD_AUTH_PASS, 0 },
    { "ARC_REJECT", 2, RSPAMD_AUTH_FAIL, 0 },
    { "ARC_DNSFAIL", 2, RSPAMD_AUTH_TEMPERROR, 0 },
    { "ARC_INVALID", 2, RSPAMD_AUTH_PERMERROR, 0 },
    { "ARC_NA", 2, RSPAMD_AUTH_NONE, 0 },
};

static void auth_symbol(rspamd_verdict_t *v, const char *name, size_t n)
{
    for (size_t i = 0; i < sizeof auth_symbols / sizeof auth_symbols[0]; i++) {
        const struct auth_symbol *s = &auth_symbols[i];
        if (!key_is(name, n, s->name))
            continue;
        rspamd_auth_t *res = s->mech == 0 ? &v->dkim : s->mech == 1 ? &v->dmarc : &v->arc;
        uint8_t *seen = s->mech == 0 ? &v->dkim_seen : s->mech == 1 ? &v->dmarc_seen : &v->arc_seen;
        *seen |= (uint8_t)(1u << s->result);
        /* the enum is in order of precedence after ABSENT */
        if (*res == RSPAMD_AUTH_ABSENT || s->result < *res) {
            *res = (rspamd_auth_t)s->result;
            if (s->mech == 1)
                v->dmarc_policy = (rspamd_dmarc_policy_t)s->policy;
        }
        return;
    }
}

static bool symbols(jr_t *j, rspamd_verdict_t *v)
{
    char key[64];
    size_t n;
    bool first = true;
    int more;
    if (jpeek(j) != '{')
        return jfail(j, RSPAMD_ERR_FIELD);
    if (!jenter(j, '{'))
        return false;
    while ((more = jnext(j, '}', &first)) > 0) {
        if (!jkey(j, key, sizeof key, &n) || !jskip(j))
            return false;
        if (n <= sizeof key)
            auth_symbol(v, key, n);
    }
    return more == 0;
}

/*
 * A header name, decoded into the arena's free space (not yet taken): *ok
 * when it is one we could add, with room left after it.
 */
static bool arena_name(jr_t *j, rspamd_verdict_t *v, slice_t *name, bool *ok)
{
    char *dst = v->arena + v->arena_len;
    size_t room = RSPAMD_ARENA_MAX - v->arena_len, n;
    if (!jkey(j, dst, room, &n))
        return false;
    *ok = n < room && name_ok(slice_make(dst, n));
    *name = slice_make(dst, *ok ? n : 0);
    return true;
}

/* One entry of add_headers: a string, or {"value": ..., "order": n}. */
static bool add_entry(jr_t *j, rspamd_verdict_t *v, slice_t name, bool ok)
{
    char *dst = ok ? v->arena + v->arena_len + name.len : NULL;
    size_t room = ok ? RSPAMD_ARENA_MAX - v->arena_len - name.len : 0, n = 0;
    int order = -1;
    bool have = false;
    if (jpeek(j) == '"') {
        if (!jstr(j, dst, room, &n))
            return false;
        have = true;
    } else if (jpeek(j) == '{') {
        char key[16];
        size_t kn;
        bool first = true, iok = true;
        int more;
        if (!jenter(j, '{'))
            return false;
        while ((more = jnext(j, '}', &first)) > 0) {
            if (!jkey(j, key, sizeof key, &kn))
                return false;
            if (key_is(key, kn, "value")) {
                if (jpeek(j) != '"') {
                    if (!jskip(j))
                        return false;
                    ok = false;
                } else if (!jstr(j, dst, room, &n)) {
                    return false;
                }
                have = true;
            } else if (key_is(key, kn, "order")) {
                char c = jpeek(j);
                if (c != '-' && !is_digit(c)) {
                    if (!jskip(j))
                        return false;
                    ok = false;
                } else if (!jint(j, &order, &iok)) {
                    return false;
                } else if (!iok) {
                    ok = false;
                }
            } else if (!jskip(j)) {
                return false;
            }
        }
        if (more < 0)
            return false;
    } else {
        if (!jskip(j))
            return false;
        ok = false;
    }
    if (!ok || !have || n > room || v->nadd == RSPAMD_ADD_MAX || !rspamd_header_ok(name, slice_make(dst, n))) {
        v->dropped++;
        return true;
    }
    /* the name was decoded in front of the value: keep both */
    rspamd_header_t *h = &v->add[v->nadd++];
    h->name = slice_make(v->arena + v->arena_len, name.len);
    h->value = slice_make(dst, n);
    h->order = order;
    v->arena_len += name.len + n;
    return true;
}

static bool add_headers(jr_t *j, rspamd_verdict_t *v)
{
    bool first = true;
    int more;
    if (!jenter(j, '{'))
        return false;
    while ((more = jnext(j, '}', &first)) > 0) {
        slice_t name;
        bool ok;
        if (!arena_name(j, v, &name, &ok))
            return false;
        if (jpeek(j) != '[') {
            if (!add_entry(j, v, name, ok))
                return false;
            continue;
        }
        /* several of one name: each entry repeats the name in the arena */
        bool afirst = true;
        int amore;
        if (!jenter(j, '['))
            return false;
        while ((amore = jnext(j, ']', &afirst)) > 0) {
            if (ok && v->arena + v->arena_len != name.ptr) {
                if (RSPAMD_ARENA_MAX - v->arena_len <= name.len) {
                    ok = false;
                } else {
                    memmove(v->arena + v->arena_len, name.ptr, name.len);
                    name.ptr = v->arena + v->arena_len;
                }
            }
            if (!add_entry(j, v, name, ok))
                return false;
        }
        if (amore < 0)
            return false;
    }
    return more == 0;
}

static bool remove_one(jr_t *j, rspamd_verdict_t *v, slice_t name, bool *ok, bool *kept)
{
    int index = 0;
    bool iok;
    if (!jint(j, &index, &iok))
        return false;
    if (!*ok || !iok || v->nremove == RSPAMD_REMOVE_MAX) {
        v->dropped++;
        return true;
    }
    if (!*kept) {
        v->arena_len += name.len;
        *kept = true;
    }
    v->remove[v->nremove++] = (rspamd_remove_t){ name, index };
    return true;
}

/* remove_headers: name -> an index, or an array of them. */
static bool remove_headers(jr_t *j, rspamd_verdict_t *v)
{
    bool first = true;
    int more;
    if (!jenter(j, '{'))
        return false;
    while ((more = jnext(j, '}', &first)) > 0) {
        slice_t name;
        bool ok, kept = false;
        if (!arena_name(j, v, &name, &ok))
            return false;
        char c = jpeek(j);
        if (c == '-' || is_digit(c)) {
            if (!remove_one(j, v, name, &ok, &kept))
                return false;
        } else if (c == '[') {
            bool afirst = true;
            int amore;
            if (!jenter(j, '['))
                return false;
            while ((amore = jnext(j, ']', &afirst)) > 0) {
                c = jpeek(j);
                if (c == '-' || is_digit(c)) {
                    if (!remove_one(j, v, name, &ok, &kept))
                        return false;
                } else if (!jskip(j)) {
                    return false;
                } else {
                    v->dropped++;
                }
            }
            if (amore < 0)
                return false;
        } else {
            if (!jskip(j))
                return false;
            v->dropped++;
        }
    }
    return more == 0;
}

static bool milter(jr_t *j, rspamd_verdict_t *v)
{
    char key[32];
    size_t n;
    bool first = true;
    int more;
    if (jpeek(j) != '{') {
        if (!jskip(j))
            return false;
        v->dropped++;
        return true;
    }
    if (!jenter(j, '{'))
        return false;
    while ((more = jnext(j, '}', &first)) > 0) {
        if (!jkey(j, key, sizeof key, &n))
            return false;
        bool add = key_is(key, n, "add_headers"), rm = key_is(key, n, "remove_headers");
        if ((add || rm) && jpeek(j) == '{') {
            if (!(add ? add_headers(j, v) : remove_headers(j, v)))
                return false;
        } else {
            if (!jskip(j))
                return false;
            if (add || rm)
                v->dropped++;
        }
    }
    return more == 0;
}

static bool member(jr_t *j, rspamd_verdict_t *v, const char *key, size_t n, bool *have_action)
{
    if (key_is(key, n, "action")) {
        *have_action = true;
        return action(j, v);
    }
    if (key_is(key, n, "score"))
        return number(j, &v->score);
    if (key_is(key, n, "required_score"))
        return number(j, &v->required_score);
    if (key_is(key, n, "is_skipped"))
        return boolean(j, &v->is_skipped);
    if (key_is(key, n, "subject"))
        return subject(j, v);
    if (key_is(key, n, "messages"))
        return messages(j, v);
    if (key_is(key, n, "symbols"))
        return symbols(j, v);
    if (key_is(key, n, "milter"))
        return milter(j, v);
    if (key_is(key, n, "error"))
        return text_member(j, v->text[1], &v->error);
    return jskip(j);
}

rspamd_err_t rspamd_verdict_parse(rspamd_verdict_t *v, slice_t json)
{
    /* the arena's bytes need no clearing: only arena_len says what is used */
    memset(v, 0, offsetof(rspamd_verdict_t, arena_len));
    v->arena_len = 0;
    if (!json.ptr)
        return RSPAMD_ERR_JSON;
    jr_t j = { json.ptr, json.ptr + json.len, 0, RSPAMD_ERR_NONE };
    bool have_action = false, first = true;
    int more;
    if (!jenter(&j, '{'))
        return j.err;
    while ((more = jnext(&j, '}', &first)) > 0) {
        char key[32];
        size_t n;
        if (!jkey(&j, key, sizeof key, &n) || !member(&j, v, key, n, &have_action))
            return j.err;
    }
    if (more < 0)
        return j.err;
    jws(&j);
    if (j.p != j.end)
        return RSPAMD_ERR_JSON;
    return have_action ? RSPAMD_ERR_NONE : RSPAMD_ERR_NO_ACTION;
}

/* ---- rendering ---- */

rspamd_err_t rspamd_render_headers(const rspamd_verdict_t *v, char *out, size_t cap, size_t *len)
{
    /* a stable insertion sort: order >= 0 by order, then the rest as listed */
    size_t idx[RSPAMD_ADD_MAX];
    for (size_t i = 0; i < v->nadd; i++) {
        long key = v->add[i].order < 0 ? (long)INT32_MAX + 1 : v->add[i].order;
        size_t k = i;
        while (k > 0) {
            int o = v->add[idx[k - 1]].order;
            if ((o < 0 ? (long)INT32_MAX + 1 : o) <= key)
                break;
            idx[k] = idx[k - 1];
            k--;
        }
        idx[k] = i;
    }
    wr_t w = { out, cap, 0 };
    for (size_t i = 0; i < v->nadd; i++)
        if (!fold(&w, v->add[idx[i]].name, v->add[idx[i]].value))
            return RSPAMD_ERR_NO_ROOM; /* not reached: checked when parsed */
    if (!wr_fits(&w))
        return RSPAMD_ERR_NO_ROOM;
    *len = w.len;
    return RSPAMD_ERR_NONE;
}

static void base64(wr_t *w, const unsigned char *p, size_t n)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        uint32_t x = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        char q[4] = { b64[x >> 18], b64[x >> 12 & 63], i + 1 < n ? b64[x >> 6 & 63] : '=',
                      i + 2 < n ? b64[x & 63] : '=' };
        put(w, q, 4);
    }
}

/*
 * RFC 2047 encoded-words, UTF-8 in base64, the subject unfolded first: at
 * most 39 octets each (64-octet words, so that even "Subject: " and a word
 * stay within the 76 octets a line with encoded-words may have), never
 * splitting a character, one per line.
 */
static void encoded_words(wr_t *w, slice_t s)
{
    unsigned char buf[39];
    size_t n = 0, i = 0;
    bool first = true;
    put(w, "Subject: ", 9);
    while (i < s.len || n) {
        /* next character, folds skipped */
        size_t cl = 0;
        if (i < s.len && s.ptr[i] == '\r') {
            i += 2;
            continue;
        }
        if (i < s.len) {
            cl = addr_utf8_seq((const unsigned char *)s.ptr + i, s.len - i);
            if (cl == 0)
                cl = 1; /* not reached: the subject was checked */
        }
        if (cl == 0 || n + cl > sizeof buf) {
            if (!first)
                put(w, "\r\n ", 3);
            put(w, "=?UTF-8?B?", 10);
            base64(w, buf, n);
            put(w, "?=", 2);
            first = false;
            n = 0;
            continue;
        }
        memcpy(buf + n, s.ptr + i, cl);
        n += cl;
        i += cl;
    }
    put(w, "\r\n", 2);
}

rspamd_err_t rspamd_render_subject(const rspamd_verdict_t *v, bool utf8, char *out, size_t cap, size_t *len)
{
    wr_t w = { out, cap, 0 };
    bool ascii = true;
    for (size_t i = 0; i < v->subject.len; i++)
        ascii = ascii && (unsigned char)v->subject.ptr[i] < 0x80;
    if (v->subject.len && (ascii || utf8)) {
        if (!fold(&w, SLICE_LIT("Subject"), v->subject))
            return RSPAMD_ERR_NO_ROOM; /* not reached: checked when parsed */
    } else if (v->subject.len) {
        encoded_words(&w, v->subject);
    }
    if (!wr_fits(&w))
        return RSPAMD_ERR_NO_ROOM;
    *len = w.len;
    return RSPAMD_ERR_NONE;
}

/*
 * msgedit.c - wire-form message edits without I/O or allocation (see
 * msgedit.h).
 *
 * Everything is a scan over the caller's buffer. Lines are found where
 * they are needed (line_at), not listed first: a message's header section
 * has no bound but the message's size, and core/ does not allocate here.
 *
 * The cuts need each del's instances counted, and a counter per del would
 * be memory proportional to the dels. So the work is split by index: a del
 * with index 0 is a test of one field (its name), made as the fields go by;
 * a del with an index selects at most one field, found by a walk of the
 * header of its own (two for a count from the bottom), and those targets
 * are kept sorted and unique in the tail of the caller's out[] itself. A
 * last walk writes the result from the front of out[] while it reads the
 * targets from the tail: every target is a cut, so the writes cannot reach
 * a target not yet read unless more than cap cuts are needed, which is then
 * the answer (see msgedit_cuts). O(header octets x dels), no scratch.
 *
 * The Authentication-Results merge checks both values whole before it
 * writes a byte (value_ok), so the writers after it can assume balanced
 * comments and quotes and folds that are CRLF + WSP. One lexer (seg_end)
 * says where a part ends; the writer that unfolds tracks quotes the same
 * way, because a fold in a quoted string keeps its white space.
 */
#include "msgedit.h"

#include <string.h>

static bool is_wsp(char c)
{
    return c == ' ' || c == '\t';
}

static char lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c + ('a' - 'A')) : c;
}

/* ASCII case-insensitive equality of two slices. */
static bool ieq(slice_t a, slice_t b)
{
    if (a.len != b.len)
        return false;
    for (size_t i = 0; i < a.len; i++)
        if (lower(a.ptr[i]) != lower(b.ptr[i]))
            return false;
    return true;
}

/* ---- lines ---- */

/* A line of p[0..n) that starts at start: its text (after the stuffing dot,
 * if any) is p[text..end); next is after its CRLF, or n without one. */
typedef struct line {
    size_t start, text, end, next;
} line_t;

/* The offset of the first CRLF in p[i..n), or n. */
static size_t find_crlf(const char *p, size_t i, size_t n)
{
    while (i < n) {
        const char *cr = memchr(p + i, '\r', n - i);
        if (!cr)
            return n;
        size_t k = (size_t)(cr - p);
        if (k + 1 < n && p[k + 1] == '\n')
            return k;
        i = k + 1;
    }
    return n;
}

static line_t line_at(const char *p, size_t n, size_t start)
{
    line_t l;
    l.start = start;
    l.text = start + (start < n && p[start] == '.');
    l.end = find_crlf(p, l.text, n);
    l.next = l.end < n ? l.end + 2 : n;
    return l;
}

/* ---- unstuffing ---- */

bool msgedit_stuffed(const char *wire, size_t n)
{
    for (size_t i = 0; i < n;) {
        line_t l = line_at(wire, n, i);
        if (l.text != l.start)
            return true;
        i = l.next;
    }
    return false;
}

size_t msgedit_unstuff(char *out, const char *wire, size_t n)
{
    size_t j = 0;
    for (size_t i = 0; i < n;) {
        line_t l = line_at(wire, n, i);
        /* out + j <= wire + l.text: memmove copies forward safely */
        memmove(out + j, wire + l.text, l.next - l.text);
        j += l.next - l.text;
        i = l.next;
    }
    return j;
}

/* ---- header fields ---- */

static bool empty_line(const line_t *l)
{
    return l->text == l->end && l->next != l->end;
}

size_t msgedit_header_end(const char *msg, size_t n)
{
    for (size_t i = 0; i < n;) {
        line_t l = line_at(msg, n, i);
        if (empty_line(&l))
            return i;
        i = l.next;
    }
    return n;
}

typedef struct field {
    size_t off, len;
    slice_t name;
} field_t;

/* Whether l starts a field; its name then in *name. */
static bool field_line(const char *m, const line_t *l, slice_t *name)
{
    if (l->text == l->end || is_wsp(m[l->text]))
        return false;
    const char *colon = memchr(m + l->text, ':', l->end - l->text);
    if (!colon)
        return false;
    size_t k = (size_t)(colon - m);
    while (k > l->text && is_wsp(m[k - 1]))
        k--;
    *name = slice_make(m + l->text, k - l->text);
    return true;
}

static bool continuation(const char *m, const line_t *l)
{
    return l->text < l->end && is_wsp(m[l->text]);
}

/* The next field of m[0..hend) at or after *pos (a line start). */
static bool next_field(const char *m, size_t hend, size_t *pos, field_t *f)
{
    size_t i = *pos;
    while (i < hend) {
        line_t l = line_at(m, hend, i);
        if (!field_line(m, &l, &f->name)) {
            i = l.next;
            continue;
        }
        size_t j = l.next;
        while (j < hend) {
            line_t c = line_at(m, hend, j);
            if (!continuation(m, &c))
                break;
            j = c.next;
        }
        f->off = i;
        f->len = j - i;
        *pos = j;
        return true;
    }
    *pos = hend;
    return false;
}

static bool selects_name(const msgedit_del_t *d, slice_t name)
{
    return d->name.len > 0 && ieq(d->name, name);
}

static size_t count_fields(const char *m, size_t hend, const msgedit_del_t *d)
{
    size_t pos = 0, k = 0;
    field_t f;
    while (next_field(m, hend, &pos, &f))
        k += selects_name(d, f.name);
    return k;
}

/* The one field a del with an index selects: false when there is none. */
static bool target(const char *m, size_t hend, const msgedit_del_t *d, msgedit_cut_t *c)
{
    size_t want;
    if (d->index > 0) {
        want = (size_t)d->index;
    } else {
        size_t total = count_fields(m, hend, d);
        size_t back = (size_t)(-(d->index + 1)) + 1; /* no overflow at INT_MIN */
        if (back > total)
            return false;
        want = total - back + 1;
    }
    size_t pos = 0, k = 0;
    field_t f;
    while (next_field(m, hend, &pos, &f)) {
        if (selects_name(d, f.name) && ++k == want) {
            *c = (msgedit_cut_t){ f.off, f.len };
            return true;
        }
    }
    return false;
}

/*
 * c among the *t targets kept sorted in out[cap - *t .. cap): false when it
 * is new and there is no room.
 */
static bool keep_target(msgedit_cut_t *out, size_t cap, size_t *t, msgedit_cut_t c)
{
    size_t base = cap - *t, lo = 0, hi = *t;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (out[base + mid].off < c.off)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < *t && out[base + lo].off == c.off)
        return true;
    if (*t == cap)
        return false;
    if (lo)
        memmove(out + base - 1, out + base, lo * sizeof *out);
    out[base - 1 + lo] = c;
    (*t)++;
    return true;
}

static bool selected_by_all(const msgedit_del_t *dels, size_t ndels, slice_t name)
{
    for (size_t i = 0; i < ndels; i++)
        if (dels[i].index == 0 && selects_name(&dels[i], name))
            return true;
    return false;
}

size_t msgedit_cuts(const char *msg, size_t n, const msgedit_del_t *dels, size_t ndels, msgedit_cut_t *out, size_t cap)
{
    size_t hend = msgedit_header_end(msg, n), t = 0;
    for (size_t i = 0; i < ndels; i++) {
        msgedit_cut_t c;
        if (dels[i].index != 0 && target(msg, hend, &dels[i], &c) && !keep_target(out, cap, &t, c))
            return MSGEDIT_OVERFLOW;
    }
    /* the targets unread are out[cap - t + q .. cap); writes go to out[r] */
    size_t r = 0, q = 0, pos = 0;
    field_t f;
    while (next_field(msg, hend, &pos, &f)) {
        bool cut = false;
        if (q < t && out[cap - t + q].off == f.off) {
            cut = true;
            q++;
        }
        if (!cut && !selected_by_all(dels, ndels, f.name))
            continue;
        if (r >= cap - (t - q))
            return MSGEDIT_OVERFLOW;
        out[r++] = (msgedit_cut_t){ f.off, f.len };
    }
    return r;
}

/* ---- Authentication-Results ---- */

static const char *const err_names[] = {
    [MSGEDIT_OK] = "none",
    [MSGEDIT_ERR_OURS] = "bad_ours",
    [MSGEDIT_ERR_THEIRS] = "bad_theirs",
    [MSGEDIT_ERR_LONG] = "line_too_long",
    [MSGEDIT_ERR_NO_ROOM] = "no_room",
};

const char *msgedit_err_name(msgedit_err_t e)
{
    if ((unsigned)e >= sizeof err_names / sizeof err_names[0])
        return "?";
    return err_names[e];
}

#define BAD SIZE_MAX

static bool is_ctl(char c)
{
    unsigned char u = (unsigned char)c;
    return (u < 0x20 && c != '\t') || u == 0x7f;
}

/* A fold at p[i]: CRLF and at least one SP or HTAB. */
static bool fold_at(const char *p, size_t i, size_t n)
{
    return i + 2 < n && p[i] == '\r' && p[i + 1] == '\n' && is_wsp(p[i + 2]);
}

/*
 * The end of the part that starts at p[i] (at the top level): the offset of
 * the next ';' outside comments and quoted strings, or n; BAD when p[i..]
 * breaks a rule of msgedit_ar_merge's before that.
 */
static size_t seg_end(const char *p, size_t i, size_t n)
{
    size_t depth = 0;
    bool quoted = false;
    for (; i < n; i++) {
        char c = p[i];
        if (c == '\r') {
            if (!fold_at(p, i, n))
                return BAD;
            i += 2; /* the WSP after it is passed by i++ */
            continue;
        }
        if (is_ctl(c))
            return BAD;
        if (c == '\\' && (quoted || depth)) {
            if (i + 1 >= n || is_ctl(p[i + 1]))
                return BAD;
            i++;
        } else if (quoted) {
            quoted = c != '"';
        } else if (c == '(') {
            depth++;
        } else if (c == ')') {
            if (depth == 0)
                return BAD;
            depth--;
        } else if (depth == 0 && c == '"') {
            quoted = true;
        } else if (depth == 0 && c == ';') {
            return i;
        }
    }
    return depth || quoted ? BAD : n;
}

/* p[i..n) without the white space and folds at its ends. */
static slice_t trim(const char *p, size_t i, size_t n)
{
    while (i < n && (is_wsp(p[i]) || p[i] == '\r' || p[i] == '\n'))
        i++;
    while (n > i && (is_wsp(p[n - 1]) || p[n - 1] == '\r' || p[n - 1] == '\n'))
        n--;
    return slice_make(p + i, n - i);
}

/* The parts of a value, in order (the value checked by value_ok). */
typedef struct parts {
    slice_t v;
    size_t pos;
    bool done;
} parts_t;

static bool part_next(parts_t *s, slice_t *part)
{
    if (s->done)
        return false;
    size_t e = seg_end(s->v.ptr, s->pos, s->v.len);
    if (e == BAD) /* not reached after value_ok */
        e = s->v.len;
    *part = trim(s->v.ptr, s->pos, e);
    if (e >= s->v.len)
        s->done = true;
    else
        s->pos = e + 1;
    return true;
}

/* The offset after white space, folds and whole comments from p[i]. */
static size_t skip_cfws(const char *p, size_t i, size_t n)
{
    size_t depth = 0;
    while (i < n) {
        char c = p[i];
        if (depth && c == '\\') {
            i = i + 2 < n ? i + 2 : n;
            continue;
        }
        if (c == '(')
            depth++;
        else if (c == ')' && depth)
            depth--;
        else if (!depth && !is_wsp(c) && c != '\r' && c != '\n')
            break;
        i++;
    }
    return i;
}

/* The offset after the quoted string that starts at p[i] ('"'). */
static size_t skip_quoted(const char *p, size_t i, size_t n)
{
    for (i++; i < n; i++) {
        if (p[i] == '\\')
            i++;
        else if (p[i] == '"')
            return i + 1;
    }
    return n;
}

/* RFC 2045 token octets (and UTF-8's, RFC 6532). */
static bool is_token(char c)
{
    unsigned char u = (unsigned char)c;
    return u > 0x20 && u != 0x7f && !strchr("()<>@,;:\\\"/[]?=", c);
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* [CFWS] (token / quoted-string) [CFWS [1*DIGIT [CFWS]]] */
static bool authserv_ok(slice_t s)
{
    const char *p = s.ptr;
    size_t n = s.len, i = skip_cfws(p, 0, n), st = i;
    if (i < n && p[i] == '"') {
        i = skip_quoted(p, i, n);
        if (i - st <= 2)
            return false; /* "" */
    } else {
        while (i < n && is_token(p[i]))
            i++;
        if (i == st)
            return false;
    }
    size_t j = skip_cfws(p, i, n);
    if (j == n)
        return true;
    if (j == i)
        return false;
    for (st = j; j < n && is_digit(p[j]); j++)
        ;
    return j > st && skip_cfws(p, j, n) == n;
}

enum kind { K_EMPTY, K_NONE, K_RESULT, K_BAD };

static bool is_keyword(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '-' || c == '_';
}

/* What a part after the authserv-id is; a result's method in *method. */
static enum kind resinfo(slice_t s, slice_t *method)
{
    const char *p = s.ptr;
    size_t n = s.len, i = skip_cfws(p, 0, n), st = i;
    if (i == n)
        return K_EMPTY;
    while (i < n && is_keyword(p[i]))
        i++;
    *method = slice_make(p + st, i - st);
    size_t j = skip_cfws(p, i, n);
    if (i > st && j < n && (p[j] == '=' || p[j] == '/'))
        return K_RESULT;
    if (j == n && ieq(*method, SLICE_LIT("none")))
        return K_NONE;
    return K_BAD;
}

static bool value_ok(slice_t v)
{
    if (v.len == 0 || !v.ptr)
        return false; /* no authserv-id */
    parts_t s = { v, 0, false };
    slice_t part, method;
    for (size_t i = 0; i <= v.len;) {
        size_t e = seg_end(v.ptr, i, v.len);
        if (e == BAD)
            return false;
        i = e + 1;
    }
    if (!part_next(&s, &part) || !authserv_ok(part))
        return false;
    while (part_next(&s, &part))
        if (resinfo(part, &method) == K_BAD)
            return false;
    return true;
}

/* A bounded writer that counts past its end, and measures its lines. */
typedef struct wr {
    char *out;
    size_t cap, len;
    size_t col, maxcol; /* octets in the current line, and the most */
} wr_t;

static void put_raw(wr_t *w, const char *p, size_t n)
{
    if (w->out && n <= w->cap && w->len <= w->cap - n)
        memcpy(w->out + w->len, p, n);
    w->len += n;
}

/* Octets of the current line. */
static void put(wr_t *w, const char *p, size_t n)
{
    put_raw(w, p, n);
    w->col += n;
    if (w->col > w->maxcol)
        w->maxcol = w->col;
}

/* ";" and a fold: the next part starts a line of its own, after a TAB. */
static void put_sep(wr_t *w)
{
    put(w, ";", 1);
    put_raw(w, "\r\n", 2);
    w->col = 0;
    put(w, "\t", 1);
}

/* A part, unfolded (see msgedit.h). */
static void put_unfolded(wr_t *w, slice_t s)
{
    const char *p = s.ptr;
    size_t n = s.len, i = 0, run = 0, depth = 0;
    bool quoted = false;
    while (i < n) {
        char c = p[i];
        if (c == '\r') {
            put(w, p + run, i - run);
            do {
                i += 2;
                size_t ws = i;
                while (i < n && is_wsp(p[i]))
                    i++;
                if (quoted)
                    put(w, p + ws, i - ws);
            } while (i < n && p[i] == '\r');
            if (!quoted)
                put(w, " ", 1);
            run = i;
            continue;
        }
        if (c == '\\' && (quoted || depth))
            i++;
        else if (quoted)
            quoted = c != '"';
        else if (c == '(')
            depth++;
        else if (c == ')' && depth)
            depth--;
        else if (depth == 0 && c == '"')
            quoted = true;
        i++;
    }
    if (i > n)
        i = n;
    put(w, p + run, i - run);
}

/* Whether a result of v (checked) has this method. */
static bool has_method(slice_t v, slice_t method)
{
    parts_t s = { v, 0, false };
    slice_t part, m;
    part_next(&s, &part);
    while (part_next(&s, &part))
        if (resinfo(part, &m) == K_RESULT && ieq(m, method))
            return true;
    return false;
}

/* The results of v (checked) to keep, after a separator each; how many.
 * skip: a value whose methods are dropped (NULL: keep all). */
static size_t put_results(wr_t *w, slice_t v, const slice_t *skip)
{
    parts_t s = { v, 0, false };
    slice_t part, method;
    size_t k = 0;
    part_next(&s, &part);
    while (part_next(&s, &part)) {
        if (resinfo(part, &method) != K_RESULT || (skip && has_method(*skip, method)))
            continue;
        put_sep(w);
        put_unfolded(w, part);
        k++;
    }
    return k;
}

msgedit_err_t msgedit_ar_merge(slice_t ours, slice_t theirs, char *out, size_t cap, size_t *len)
{
    if (!value_ok(ours))
        return MSGEDIT_ERR_OURS;
    if (!value_ok(theirs))
        return MSGEDIT_ERR_THEIRS;
    wr_t w = { out, cap, 0, MSGEDIT_AR_PREFIX, 0 };
    parts_t s = { ours, 0, false };
    slice_t id;
    part_next(&s, &id);
    put_unfolded(&w, id);
    size_t k = put_results(&w, ours, NULL);
    k += put_results(&w, theirs, &ours);
    if (k == 0)
        put(&w, "; none", 6);
    if (w.maxcol > MSGEDIT_LINE_MAX)
        return MSGEDIT_ERR_LONG;
    *len = w.len;
    return w.len <= cap ? MSGEDIT_OK : MSGEDIT_ERR_NO_ROOM;
}

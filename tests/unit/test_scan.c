/*
 * test_scan.c - scan.h, the DATA-phase scanner, against a reference model.
 *
 * The model below is a deliberately simple function over the whole input: it
 * finds the end of data as the first CRLF "." CRLF (the CRLF that ended the
 * DATA command counts, so ".\r\n" first is an empty body), builds the bytes
 * to forward (the wire body unchanged in reject mode; in normalize mode every
 * bare CR/LF becomes CRLF and a line that then starts with a dot is stuffed),
 * and says where each error (bare LF, bare CR, line over line_max octets with
 * CRLF and a line-start dot not counted, size over size_max) first happens.
 *
 * scan_step is driven in a loop over pieces of the input: whole, byte by
 * byte, split at every position, and at random; each piece is a guarded copy
 * (testutil.h) unmapped as soon as it is consumed. What it forwarded, where it
 * found the end, and which errors it latched are compared with the model:
 * exactly for a clean body; for a body with errors, what was forwarded must be
 * a prefix that stops at the first error, the first error must be latched and
 * no error that cannot have happened may be. Normalize mode is also checked
 * by properties (no bare CR/LF forwarded, no end marker before the end, the
 * text and the number of lines kept). Inputs: hand-written cases, lines and
 * markers straddling 64-byte SIMD blocks, line and size limits at the edge,
 * and a fixed-seed randomized differential test in both modes.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "scan.h"
#include "testutil.h"

#define NONE SIZE_MAX
#define REJ SCAN_BARE_REJECT
#define NORM SCAN_BARE_NORMALIZE

enum { K_LF, K_CR, K_LINE, K_SIZE, K_N };
static const unsigned kbit[K_N] = { SCAN_ERR_BARE_LF, SCAN_ERR_BARE_CR, SCAN_ERR_LINE_TOO_LONG, SCAN_ERR_SIZE };
static const char *const kname[K_N] = { "BARE_LF", "BARE_CR", "LINE_TOO_LONG", "SIZE" };

/* ---- small byte buffer ---------------------------------------------------- */

typedef tu_log_t buf_t;

static void buf_reset(buf_t *b)
{
    b->len = 0;
}

static void put(buf_t *b, const char *p, size_t n)
{
    if (n)
        tu_put(b, p, n);
    else if (!b->buf)
        tu_put(b, "", 0);
}

static void put_c(buf_t *b, char c)
{
    tu_put(b, &c, 1);
}

static const char *ptr(const buf_t *b)
{
    return b->buf ? b->buf : "";
}

/* ---- the reference model -------------------------------------------------- */

typedef struct model {
    bool end;          /* the input holds the end marker */
    size_t end_at;     /* input offset just past it */
    size_t body_len;   /* input octets before the marker (all of them if none) */
    buf_t out;         /* what a clean body forwards */
    size_t pos[K_N];   /* output offset of each error's first occurrence */
    size_t early[K_N]; /* the earliest offset a reasonable reading may put it at */
    bool soft[K_N];    /* at the ragged end of an incomplete input */
    unsigned possible; /* bits that may be latched */
    int required;      /* the kind that must be latched (first by a margin), or -1 */
    size_t first;      /* the earliest error offset, NONE without error */
} model_t;

static void model_free(model_t *m)
{
    tu_free_log(&m->out);
}

/*
 * variant: normalize mode only. A line that is just "." after a real CRLF,
 * ended by a bare CR/LF, would become the end marker once normalized; the
 * header leaves open whether it is forwarded stuffed ("..\r\n", variant 0) or
 * as the empty line its stuffing dot stands for ("\r\n", variant 1).
 */
static void model_run(const char *in, size_t len, int mode, uint64_t size_max, uint32_t line_max, int variant,
                      model_t *m)
{
    buf_t keep = m->out;
    memset(m, 0, sizeof *m);
    m->out = keep;
    buf_reset(&m->out);
    put(&m->out, "", 0);
    for (int k = 0; k < K_N; k++)
        m->pos[k] = m->early[k] = NONE;

    /* (a) The end: the first "." CRLF at a line start after a real CRLF. */
    size_t n = len;
    for (size_t i = 0; i + 3 <= len; i++) {
        bool after_crlf = i == 0 || (i >= 2 && in[i - 2] == '\r' && in[i - 1] == '\n');
        if (after_crlf && in[i] == '.' && in[i + 1] == '\r' && in[i + 2] == '\n') {
            m->end = true;
            m->end_at = i + 3;
            n = i;
            break;
        }
    }
    m->body_len = n;

    /* (b) The forwarded bytes. */
    if (mode == REJ) {
        put(&m->out, in, n);
        for (size_t j = 0; j < n; j++) {
            if (in[j] == '\n' && (j == 0 || in[j - 1] != '\r') && m->pos[K_LF] == NONE)
                m->pos[K_LF] = j;
            if (in[j] == '\r' && j + 1 < n && in[j + 1] != '\n' && m->pos[K_CR] == NONE)
                m->pos[K_CR] = j;
        }
    } else {
        bool prev_bare = false, ls = true;
        for (size_t j = 0; j < n; j++) {
            char c = in[j];
            if (c == '\r' && j + 1 < n && in[j + 1] == '\n') {
                put(&m->out, "\r\n", 2);
                j++;
                prev_bare = false, ls = true;
            } else if (c == '\r' && j + 1 == n) {
                put_c(&m->out, '\r'); /* incomplete input: not known yet */
            } else if (c == '\r' || c == '\n') {
                put(&m->out, "\r\n", 2);
                prev_bare = true, ls = true;
            } else if (ls && c == '.') {
                ls = false;
                if (prev_bare) {
                    put(&m->out, "..", 2);
                    continue;
                }
                bool bare_next = j + 1 < n && (in[j + 1] == '\n' || (in[j + 1] == '\r' && j + 2 < n && in[j + 2] != '\n'));
                if (bare_next) {
                    if (variant == 0)
                        put(&m->out, "..", 2);
                    continue;
                }
                put_c(&m->out, '.');
            } else {
                ls = false;
                put_c(&m->out, c);
            }
        }
    }
    for (int k = 0; k < K_N; k++)
        m->early[k] = m->pos[k];

    /* (c) Line length on the forwarded bytes: octets through the LF, the
     * first octet not counted when it is a (stuffing) dot. */
    const char *o = ptr(&m->out);
    size_t on = m->out.len;
    if (line_max) {
        size_t ll = 0, ll2 = 0;
        bool ls = true;
        for (size_t q = 0; q < on; q++) {
            if (!(ls && o[q] == '.'))
                ll++;
            ll2++;
            ls = false;
            if (ll > line_max && m->pos[K_LINE] == NONE)
                m->pos[K_LINE] = q;
            /* The earliest a scanner may tell: only CRLF ends a line, every
             * octet counts, and a line whose text already leaves no room for
             * its CRLF is too long before the CRLF arrives. */
            if (ll2 + 2 > line_max && m->early[K_LINE] == NONE)
                m->early[K_LINE] = q;
            if (o[q] == '\n') {
                ll = 0, ls = true;
                if (q > 0 && o[q - 1] == '\r')
                    ll2 = 0;
            }
        }
    }
    /* Size: forwarded octets. */
    if (size_max && on > size_max)
        m->pos[K_SIZE] = m->early[K_SIZE] = (size_t)size_max;

    /* (d) What must and what may be latched. */
    m->first = NONE;
    m->required = -1;
    for (int k = 0; k < K_N; k++) {
        if (m->early[k] == NONE)
            continue;
        m->possible |= kbit[k];
        if (m->early[k] < m->first)
            m->first = m->early[k];
        m->soft[k] = m->pos[k] == NONE || (!m->end && m->pos[k] + 3 >= on);
    }
    for (int k = 0; k < K_N; k++) {
        if (m->early[k] == NONE || m->soft[k])
            continue;
        bool first = true;
        for (int j = 0; j < K_N; j++)
            if (j != k && m->early[j] != NONE && !(m->pos[k] + 2 < m->early[j]))
                first = false;
        if (first)
            m->required = k;
    }
}

/* ---- driving scan_step ---------------------------------------------------- */

typedef struct run {
    buf_t body;
    unsigned errors;
    bool end;
    size_t end_at;
    uint64_t size;
    char proto[200]; /* a broken rule of the call protocol, or "" */
} run_t;

/* Feed in[0..len) cut at cuts[] (ascending, inside (0, len)). */
static void drive(const char *in, size_t len, const size_t *cuts, size_t ncuts, int mode, uint64_t size_max,
                  uint32_t line_max, run_t *r)
{
    buf_reset(&r->body);
    put(&r->body, "", 0);
    r->errors = 0;
    r->end = false;
    r->end_at = 0;
    r->proto[0] = 0;
    scan_t sc;
    memset(&sc, 0xa5, sizeof sc);
    scan_init(&sc, size_max, line_max, (enum scan_bare)mode);
    size_t prev = 0;
    for (size_t k = 0; k <= ncuts && !r->end && !r->proto[0]; k++) {
        size_t stop = k < ncuts ? cuts[k] : len;
        guard_buf_t g;
        guard_copy(&g, in + prev, stop - prev);
        const char *p = g.data;
        size_t n = stop - prev;
        int idle = 0;
        do {
            unsigned before = sc.errors;
            scan_result_t res;
            memset(&res, 0x5a, sizeof res);
            scan_step(&sc, p, n, &res);
            if (res.consumed > n) {
                snprintf(r->proto, sizeof r->proto, "consumed %zu of %zu", res.consumed, n);
                break;
            }
            if ((sc.errors & before) != before) {
                snprintf(r->proto, sizeof r->proto, "errors went from %#x to %#x", before, sc.errors);
                break;
            }
            if (res.body.len) {
                if (before) {
                    snprintf(r->proto, sizeof r->proto, "%zu body bytes after error %#x was latched",
                             res.body.len, before);
                    break;
                }
                if (res.body.ptr >= g.map && res.body.ptr < g.map + g.maplen &&
                    (res.body.ptr < p || res.body.ptr + res.body.len > p + res.consumed)) {
                    snprintf(r->proto, sizeof r->proto, "body slice outside the consumed input");
                    break;
                }
                put(&r->body, res.body.ptr, res.body.len);
            }
            if (res.end) {
                r->end = true;
                r->end_at = prev + (size_t)(p - g.data) + res.consumed;
                break;
            }
            /* A call may consume nothing (a static insert, or one that an
             * error suppressed), but not forever. */
            idle = res.consumed ? 0 : idle + 1;
            if (idle > 4) {
                snprintf(r->proto, sizeof r->proto, "5 calls in a row consumed nothing at offset %zu",
                         prev + (size_t)(p - g.data));
                break;
            }
            p += res.consumed;
            n -= res.consumed;
        } while (n > 0);
        guard_free(&g);
        prev = stop;
    }
    r->errors = sc.errors;
    r->size = sc.size;
}

/* ---- comparing a run with the model --------------------------------------- */

static size_t strip_len(const char *p, size_t n, char *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (p[i] != '\r' && p[i] != '\n' && p[i] != '.')
            out[k++] = p[i];
    return k;
}

/* Normalize-mode properties that hold whatever the exact bytes. */
static bool check_norm_props(const char *in, const model_t *m, const run_t *r, unsigned errors, char *why, size_t wl)
{
    const char *f = ptr(&r->body);
    size_t fn = r->body.len;
    for (size_t q = 0; q < fn; q++) {
        if (f[q] == '\n' && (q == 0 || f[q - 1] != '\r')) {
            snprintf(why, wl, "normalize forwarded a bare LF at %zu", q);
            return false;
        }
        if (f[q] == '\r' && !(q + 1 < fn ? f[q + 1] == '\n' : !m->end || errors)) {
            snprintf(why, wl, "normalize forwarded a bare CR at %zu", q);
            return false;
        }
    }
    if (fn >= 3 && memcmp(f, ".\r\n", 3) == 0) {
        snprintf(why, wl, "normalize forwarded an end marker at 0");
        return false;
    }
    if (fn >= 5 && memmem(f, fn, "\r\n.\r\n", 5)) {
        snprintf(why, wl, "normalize forwarded an end marker at %zu",
                 (size_t)((const char *)memmem(f, fn, "\r\n.\r\n", 5) - f) + 2);
        return false;
    }
    /* The text between line breaks and dots is kept, in order. */
    char *a = malloc(fn + 1), *b = malloc(m->body_len + 1);
    size_t an = strip_len(f, fn, a), bn = strip_len(in, m->body_len, b);
    bool ok = an <= bn && memcmp(a, b, an) == 0 && (!m->end || errors || an == bn);
    free(a);
    free(b);
    if (!ok) {
        snprintf(why, wl, "normalize changed the text (not counting CR, LF, '.')");
        return false;
    }
    if (m->end && !errors) {
        size_t in_breaks = 0, out_breaks = 0;
        for (size_t j = 0; j < m->body_len; j++)
            if (in[j] == '\n' || (in[j] == '\r' && in[j + 1] != '\n'))
                in_breaks++;
        for (size_t q = 0; q < fn; q++)
            out_breaks += f[q] == '\n';
        if (in_breaks != out_breaks) {
            snprintf(why, wl, "normalize made %zu lines of %zu", out_breaks, in_breaks);
            return false;
        }
        /* Line by line: a line after a bare CR/LF that starts with a dot is
         * stuffed; a line after a real CRLF is kept as it is, but for a lone
         * "." ended by a bare CR/LF, which may not become ".\r\n". */
        size_t j = 0, q = 0;
        bool after_bare = false;
        while (j < m->body_len && q < fn) {
            size_t je = j, qe = q;
            while (je < m->body_len && in[je] != '\r' && in[je] != '\n')
                je++;
            while (qe < fn && f[qe] != '\r')
                qe++;
            bool crlf = in[je] == '\r' && in[je + 1] == '\n';
            const char *il = in + j, *ol = f + q;
            size_t iln = je - j, oln = qe - q;
            bool ok_line;
            if (after_bare && iln && il[0] == '.')
                ok_line = oln == iln + 1 && ol[0] == '.' && memcmp(ol + 1, il, iln) == 0;
            else if (!after_bare && !crlf && iln == 1 && il[0] == '.')
                ok_line = oln == 0 || (oln == 2 && memcmp(ol, "..", 2) == 0);
            else
                ok_line = oln == iln && memcmp(ol, il, iln) == 0;
            if (!ok_line) {
                snprintf(why, wl, "normalize: output line at %zu does not match input line at %zu", q, j);
                return false;
            }
            after_bare = !crlf;
            j = je + (crlf ? 2 : 1);
            q = qe + 2;
        }
        if (fn < m->body_len || fn > 2 * m->body_len + 2) {
            snprintf(why, wl, "normalize forwarded an implausible %zu octets for %zu", fn, m->body_len);
            return false;
        }
    }
    return true;
}

static bool check_model(const char *in, size_t len, int mode, const model_t *m, const run_t *r, char *why, size_t wl)
{
    (void)len;
    const char *f = ptr(&r->body), *o = ptr(&m->out);
    size_t fn = r->body.len, on = m->out.len;
    if (r->proto[0]) {
        snprintf(why, wl, "%s", r->proto);
        return false;
    }
    if (r->end != m->end || (m->end && r->end_at != m->end_at)) {
        snprintf(why, wl, "end %s at %zu, model: %s at %zu", r->end ? "found" : "not found", r->end_at,
                 m->end ? "found" : "not found", m->end_at);
        return false;
    }
    if (mode == NORM && !check_norm_props(in, m, r, r->errors, why, wl))
        return false;
    if (r->errors & ~m->possible) {
        snprintf(why, wl, "errors %#x, model allows only %#x", r->errors, m->possible);
        return false;
    }
    if (m->required >= 0 && !(r->errors & kbit[m->required])) {
        snprintf(why, wl, "errors %#x lack %s, the first error (output offset %zu)", r->errors,
                 kname[m->required], m->pos[m->required]);
        return false;
    }
    bool must_fail = false;
    for (int k = 0; k < K_N; k++)
        must_fail |= m->early[k] != NONE && !m->soft[k];
    if (must_fail && !r->errors) {
        snprintf(why, wl, "no error latched, model has one at output offset %zu", m->first);
        return false;
    }
    if (fn > on || memcmp(f, o, fn) != 0) {
        size_t d = 0;
        while (d < fn && d < on && f[d] == o[d])
            d++;
        snprintf(why, wl, "forwarded %zu octets, model %zu; they differ at offset %zu", fn, on, d);
        return false;
    }
    if (r->errors) {
        /* Nothing past the point where the first latched error happened. */
        size_t stop = NONE;
        for (int k = 0; k < K_N; k++)
            if ((r->errors & kbit[k]) && m->pos[k] != NONE && m->pos[k] < stop)
                stop = m->pos[k];
        if (stop != NONE && fn > stop + 2) {
            snprintf(why, wl, "forwarded %zu octets, past the error at output offset %zu", fn, stop);
            return false;
        }
        return true;
    }
    if (m->end ? fn != on : fn + 3 < on) {
        snprintf(why, wl, "forwarded %zu octets of %zu", fn, on);
        return false;
    }
    if (r->size != fn) {
        snprintf(why, wl, "size %llu, forwarded %zu", (unsigned long long)r->size, fn);
        return false;
    }
    return true;
}

/* ---- cases, failures, shrinking -------------------------------------------- */

typedef struct ctx {
    model_t m[2]; /* variants; the same in reject mode */
    run_t whole, r;
    int failures;
    int printed;
    const char *label;
} ctx_t;

static void ctx_free(ctx_t *c)
{
    model_free(&c->m[0]);
    model_free(&c->m[1]);
    tu_free_log(&c->whole.body);
    tu_free_log(&c->r.body);
}

static void print_bytes(const char *p, size_t n)
{
    tu_log_t l = { 0 };
    tu_put_escaped(&l, slice_make(p, n));
    print_error("\"%s\"", l.buf ? l.buf : "");
    tu_free_log(&l);
}

typedef struct spec {
    int mode;
    uint64_t size_max;
    uint32_t line_max;
} spec_t;

static void print_case(const char *in, size_t len, spec_t s, const size_t *cuts, size_t ncuts)
{
    print_error("  input (%zu) ", len);
    print_bytes(in, len);
    print_error("\n  mode=%s size_max=%llu line_max=%u cuts=", s.mode == NORM ? "normalize" : "reject",
                (unsigned long long)s.size_max, s.line_max);
    if (ncuts == len - 1 && len > 1 && cuts[0] == 1)
        print_error("every byte");
    else if (ncuts == 0)
        print_error("none");
    for (size_t i = 0; i < ncuts && !(ncuts == len - 1 && len > 1 && cuts[0] == 1); i++)
        print_error("%s%zu", i ? "," : "", cuts[i]);
    print_error("\n");
}

/* One way of cutting: compare with the model and with the whole-input run. */
static bool check_cut(ctx_t *c, const char *in, size_t len, spec_t s, const size_t *cuts, size_t ncuts, char *why,
                      size_t wl)
{
    drive(in, len, cuts, ncuts, s.mode, s.size_max, s.line_max, &c->r);
    char w0[256];
    if (!check_model(in, len, s.mode, &c->m[0], &c->r, w0, sizeof w0)) {
        if (s.mode == REJ || !check_model(in, len, s.mode, &c->m[1], &c->r, why, wl)) {
            snprintf(why, wl, "%s", w0);
            return false;
        }
    }
    /* The engine's output may not depend on how the input was cut
     * (smtp.h), so neither may what the scanner forwards or latches, even
     * for a body it refuses. */
    if (ncuts && c->r.errors != c->whole.errors) {
        snprintf(why, wl, "errors %#x, but %#x for the input in one piece", c->r.errors, c->whole.errors);
        return false;
    }
    if (ncuts && !slice_eq(slice_make(ptr(&c->r.body), c->r.body.len),
                           slice_make(ptr(&c->whole.body), c->whole.body.len))) {
        snprintf(why, wl, "forwarded %zu octets, but %zu for the input in one piece", c->r.body.len,
                 c->whole.body.len);
        return false;
    }
    return true;
}

static size_t every_byte[8192];
static size_t two[1];

enum cutset { CUT_WHOLE = 1, CUT_BYTES = 2, CUT_ALL_TWO = 4, CUT_ALL = 7 };

/* Whole, then the requested cuttings. Returns false at the first failure. */
static bool check_input(ctx_t *c, const char *in, size_t len, spec_t s, int cutset, const size_t *xcuts, size_t nx,
                        bool verbose)
{
    char why[256];
    model_run(in, len, s.mode, s.size_max, s.line_max, 0, &c->m[0]);
    model_run(in, len, s.mode, s.size_max, s.line_max, 1, &c->m[1]);
    drive(in, len, NULL, 0, s.mode, s.size_max, s.line_max, &c->whole);
    const size_t *cuts = NULL;
    size_t ncuts = 0;
    bool ok = check_cut(c, in, len, s, NULL, 0, why, sizeof why);
    if (ok && (cutset & CUT_BYTES) && len > 1) {
        assert_true(len <= sizeof every_byte / sizeof *every_byte);
        cuts = every_byte, ncuts = len - 1;
        ok = check_cut(c, in, len, s, cuts, ncuts, why, sizeof why);
    }
    for (size_t k = 1; ok && (cutset & CUT_ALL_TWO) && k < len; k++) {
        two[0] = k;
        cuts = two, ncuts = 1;
        ok = check_cut(c, in, len, s, cuts, ncuts, why, sizeof why);
    }
    if (ok && nx) {
        cuts = xcuts, ncuts = nx;
        ok = check_cut(c, in, len, s, cuts, ncuts, why, sizeof why);
    }
    if (!ok && verbose) {
        print_error("%s: %s\n", c->label, why);
        print_case(in, len, s, cuts, ncuts);
    }
    return ok;
}

/* Drop bytes while it still fails, to report a small input. */
static void shrink_and_print(ctx_t *c, const char *in, size_t len, spec_t s)
{
    int cutset = len <= 120 ? CUT_ALL : CUT_WHOLE | CUT_BYTES;
    if (len > 400 || check_input(c, in, len, s, cutset, NULL, 0, false))
        return; /* needs its random cuts: printed as it is */
    char *cur = malloc(len + 1), *t = malloc(len + 1);
    memcpy(cur, in, len);
    size_t n = len;
    bool changed = true;
    while (changed) {
        changed = false;
        for (size_t i = 0; i < n; i++) {
            memcpy(t, cur, i);
            memcpy(t + i, cur + i + 1, n - i - 1);
            if (!check_input(c, t, n - 1, s, cutset, NULL, 0, false)) {
                memcpy(cur, t, n - 1);
                n--;
                changed = true;
                i--;
            }
        }
        if (s.size_max > 1) { /* smaller limits too */
            spec_t s2 = s;
            s2.size_max--;
            if (!check_input(c, cur, n, s2, cutset, NULL, 0, false))
                s = s2, changed = true;
        }
    }
    print_error("  shrunk to:\n");
    check_input(c, cur, n, s, CUT_ALL, NULL, 0, true);
    free(cur);
    free(t);
}

static void ctx_case(ctx_t *c, const char *in, size_t len, spec_t s, int cutset)
{
    if (!check_input(c, in, len, s, cutset, NULL, 0, c->printed < 6)) {
        c->failures++;
        c->printed++;
    }
}

#define MODES_BOTH(c, in, len, smax, lmax, cutset)                                                                 \
    do {                                                                                                           \
        ctx_case((c), (in), (len), (spec_t){ REJ, (smax), (lmax) }, (cutset));                                     \
        ctx_case((c), (in), (len), (spec_t){ NORM, (smax), (lmax) }, (cutset));                                    \
    } while (0)

static int setup(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof every_byte / sizeof *every_byte; i++)
        every_byte[i] = i + 1;
    return 0;
}

/* ---- exact expectations ---------------------------------------------------- */

typedef struct exact {
    const char *in;
    size_t len;
    int mode;
    const char *body; /* NULL: errors expected, the body is checked by the model */
    size_t body_len;
    const char *alt;  /* another acceptable body (a normalize design choice) */
    size_t alt_len;
    long end;         /* input offset past the marker, -1: none */
    unsigned errors;
} exact_t;

#define X(in, mode, body, end, err) { in, sizeof(in) - 1, mode, body, sizeof(body) - 1, NULL, 0, end, err }
#define XE(in, mode, end, err) { in, sizeof(in) - 1, mode, NULL, 0, NULL, 0, end, err }
#define XA(in, mode, body, alt, end) { in, sizeof(in) - 1, mode, body, sizeof(body) - 1, alt, sizeof(alt) - 1, end, 0 }

static const exact_t exact_cases[] = {
    /* Plain bodies and the marker. */
    X("Subject: hi\r\n\r\nHello\r\n.\r\n", REJ, "Subject: hi\r\n\r\nHello\r\n", 25, 0),
    X(".\r\n", REJ, "", 3, 0),
    X(".\r\nMAIL FROM:<a@b.example>\r\n", REJ, "", 3, 0),
    X(".\r\n", NORM, "", 3, 0),
    X("\r\n.\r\n", REJ, "\r\n", 5, 0),
    X("a\r\n.\r\n.\r\n", REJ, "a\r\n", 6, 0),
    X("a\r\n.\r\nQUIT\r\n", NORM, "a\r\n", 6, 0),
    /* Dot-stuffed and dotted lines are forwarded in wire form. */
    X("..\r\n.\r\n", REJ, "..\r\n", 7, 0),
    X("..\r\n.\r\n", NORM, "..\r\n", 7, 0),
    X(".x\r\n.\r\n", REJ, ".x\r\n", 7, 0),
    X("x.\r\n.\r\n", REJ, "x.\r\n", 7, 0),
    X("a\r\n..\r\n...\r\n.x.\r\n.\r\n", REJ, "a\r\n..\r\n...\r\n.x.\r\n", 20, 0),
    X("a\r\n..\r\n...\r\n.x.\r\n.\r\n", NORM, "a\r\n..\r\n...\r\n.x.\r\n", 20, 0),
    X(". \r\n.\r\n", REJ, ". \r\n", 7, 0),
    /* Not an end. */
    X("x.\r\n", REJ, "x.\r\n", -1, 0),
    X("a\r\nx.\r\n", REJ, "a\r\nx.\r\n", -1, 0),
    X("abc.\r\n", NORM, "abc.\r\n", -1, 0),
    X("a\r\n. \r\n", REJ, "a\r\n. \r\n", -1, 0),
    /* Binary and 8-bit octets pass untouched. */
    X("\x00\xff\x80\x7f\x01 \xc3\xa9t\xc3\xa9\r\n\x00.\r\n.\r\n", REJ, "\x00\xff\x80\x7f\x01 \xc3\xa9t\xc3\xa9\r\n\x00.\r\n", 20, 0),
    X("\x00\xff\x80\x7f\x01 \xc3\xa9t\xc3\xa9\r\n\x00.\r\n.\r\n", NORM, "\x00\xff\x80\x7f\x01 \xc3\xa9t\xc3\xa9\r\n\x00.\r\n", 20, 0),
    /* Smuggling in reject mode: refused, and the real end is still found. */
    XE("a\n.\nb\r\n.\r\n", REJ, 10, SCAN_ERR_BARE_LF),
    XE("a\r.\rb\r\n.\r\n", REJ, 10, SCAN_ERR_BARE_CR),
    XE("a\n.\r\nb\r\n.\r\n", REJ, 11, SCAN_ERR_BARE_LF),
    XE("a\r\n.\nb\r\n.\r\n", REJ, 11, SCAN_ERR_BARE_LF),
    XE("a\r\n.\rb\r\n.\r\n", REJ, 11, SCAN_ERR_BARE_CR),
    XE("a\r\n.\rMAIL FROM:<x@y.example>\r\n", REJ, -1, SCAN_ERR_BARE_CR),
    XE("\n.\r\n", REJ, -1, SCAN_ERR_BARE_LF),
    XE("\r.\r\n", REJ, -1, SCAN_ERR_BARE_CR),
    XE(".\n", REJ, -1, SCAN_ERR_BARE_LF),
    XE(".\rx", REJ, -1, SCAN_ERR_BARE_CR),
    XE("abc\n.\r\n", REJ, -1, SCAN_ERR_BARE_LF),
    XE("abc\r.\r\n", REJ, -1, SCAN_ERR_BARE_CR),
    XE("a\r\r\n.\r\n", REJ, 7, SCAN_ERR_BARE_CR),
    XE("a\n\r\n.\r\n", REJ, 7, SCAN_ERR_BARE_LF),
    XE("\n\r\n.\r\n", REJ, 6, SCAN_ERR_BARE_LF),
    /* Normalize mode. */
    X("a\nb\r\n.\r\n", NORM, "a\r\nb\r\n", 8, 0),
    X("a\rb\r\n.\r\n", NORM, "a\r\nb\r\n", 8, 0),
    X("a\n.\nb\r\n.\r\n", NORM, "a\r\n..\r\nb\r\n", 10, 0),
    X("a\r.\rb\r\n.\r\n", NORM, "a\r\n..\r\nb\r\n", 10, 0),
    X("a\n.\r\nb\r\n.\r\n", NORM, "a\r\n..\r\nb\r\n", 11, 0),
    X("a\n.x\r\n.\r\n", NORM, "a\r\n..x\r\n", 9, 0),
    X("a\r\r\n.\r\n", NORM, "a\r\n\r\n", 7, 0),
    X("\n\r\n.\r\n", NORM, "\r\n\r\n", 6, 0),
    X("\n\n\r\r\r\n.\r\n", NORM, "\r\n\r\n\r\n\r\n\r\n", 9, 0),
    X("a\r.\r\n.\r\n", NORM, "a\r\n..\r\n", 8, 0),
    /* The header leaves this one open: stuffed "." line or an empty line. */
    XA("a\r\n.\nb\r\n.\r\n", NORM, "a\r\n..\r\nb\r\n", "a\r\n\r\nb\r\n", 11),
    XA("a\r\n.\rb\r\n.\r\n", NORM, "a\r\n..\r\nb\r\n", "a\r\n\r\nb\r\n", 11),
    XA(".\n.\r\n", NORM, "..\r\n..\r\n", "\r\n..\r\n", -1),
    XA(".\r\r\n.\r\n", NORM, "..\r\n\r\n", "\r\n\r\n", 7),
};

static void test_exact(void **state)
{
    (void)state;
    ctx_t c = { .label = "exact" };
    for (size_t i = 0; i < sizeof exact_cases / sizeof *exact_cases; i++) {
        const exact_t *x = &exact_cases[i];
        size_t len = x->len;
        spec_t s = { x->mode, 0, 0 };

        /* The model must agree with the hand-written expectation. */
        model_run(x->in, len, x->mode, 0, 0, 0, &c.m[0]);
        bool model_end = x->end >= 0 ? c.m[0].end && c.m[0].end_at == (size_t)x->end : !c.m[0].end;
        if (!model_end)
            fail_msg("case %zu: the model disagrees on the end", i);
        unsigned merr = c.m[0].possible;
        if (merr != x->errors)
            fail_msg("case %zu: the model's errors %#x, want %#x", i, merr, x->errors);
        if (x->body && !x->alt &&
            (c.m[0].out.len != x->body_len || memcmp(ptr(&c.m[0].out), x->body, x->body_len) != 0))
            fail_msg("case %zu: the model's body differs", i);

        /* The scanner, every way of cutting. */
        ctx_case(&c, x->in, len, s, CUT_ALL);

        /* And the exact expectation, in one piece and byte by byte. */
        for (int way = 0; way < 2; way++) {
            drive(x->in, len, way ? every_byte : NULL, way && len > 1 ? len - 1 : 0, x->mode, 0, 0, &c.r);
            bool end_ok = x->end >= 0 ? c.r.end && c.r.end_at == (size_t)x->end : !c.r.end;
            bool err_ok = c.r.errors == x->errors;
            bool body_ok = true;
            if (x->body) {
                const char *f = ptr(&c.r.body);
                size_t fl = c.r.body.len;
                body_ok = fl == x->body_len && memcmp(f, x->body, fl) == 0;
                if (!body_ok && x->alt)
                    body_ok = fl == x->alt_len && memcmp(f, x->alt, fl) == 0;
                /* Incomplete input: the tail may still be held back. */
                if (!body_ok && x->end < 0)
                    body_ok = fl <= x->body_len && fl + 3 >= x->body_len && memcmp(f, x->body, fl) == 0;
            }
            if (!end_ok || !err_ok || !body_ok || c.r.proto[0]) {
                print_error("exact case %zu (%s): end %d at %zu, errors %#x, body ", i, way ? "byte by byte" : "whole",
                            c.r.end, c.r.end_at, c.r.errors);
                print_bytes(ptr(&c.r.body), c.r.body.len);
                print_error(" %s\n", c.r.proto);
                print_case(x->in, len, s, NULL, 0);
                c.failures++;
            }
        }
    }
    int f = c.failures;
    ctx_free(&c);
    assert_int_equal(f, 0);
}

/* ---- inputs around the 64-byte blocks -------------------------------------- */

static size_t build(char *dst, const char *const *parts)
{
    size_t n = 0;
    for (; *parts; parts++) {
        const char *p = *parts;
        if (p[0] == '#') { /* "#<count><char>": a run */
            char *end;
            unsigned long k = strtoul(p + 1, &end, 10);
            memset(dst + n, *end, k);
            n += k;
        } else {
            memcpy(dst + n, p, strlen(p));
            n += strlen(p);
        }
    }
    return n;
}

#define B(...) ((const char *const[]){ __VA_ARGS__, NULL })

static void test_blocks(void **state)
{
    (void)state;
    ctx_t c = { .label = "blocks" };
    static char in[4096];
    const char *const *cases[] = {
        /* CRLF lines of exactly 64, 65 and 128 octets. */
        B("#62x", "\r\n", "#62y", "\r\n", "#62z", "\r\n", "#62w", "\r\n", ".\r\n"),
        B("#63x", "\r\n", "#63y", "\r\n", "#63z", "\r\n", "#63w", "\r\n", ".\r\n"),
        B("#126x", "\r\n", "#126y", "\r\n", "#126z", "\r\n", ".\r\n"),
        B("#64x", "\r\n", "#64y", "\r\n", "#64z", "\r\n", ".\r\n"),
        /* CR at offset 63, LF at 64. */
        B("#63a", "\r\n", "#100b", "\r\n", ".\r\n"),
        B("#63a", "\r\n", ".\r\n", "#100b", "\r\n"),
        B("#63a", "\r\n", "..", "#100b", "\r\n", ".\r\n"),
        B("#63a", "\r\n", ".x", "#100b", "\r\n", ".\r\n"),
        /* A dot at offset 64 after CRLF at 62-63. */
        B("#62a", "\r\n", "..", "#70b", "\r\n", ".\r\n"),
        B("#62a", "\r\n", ".\r\n", "#70b", "\r\n", ".\r\n"),
        B("#62a", "\r\n", ".", "#70b", "\r\n", ".\r\n"),
        B("#126a", "\r\n", ".\r\n", "#70b"),
        B("#125a", "\r\n", ".\r\n", "#70b"),
        B("#127a", "\r\n", ".\r\n", "#70b"),
        /* Bare CR/LF at and around block edges. */
        B("#63a", "\n", "#100b", "\r\n", ".\r\n"),
        B("#64a", "\n", "#100b", "\r\n", ".\r\n"),
        B("#62a", "\n", "#100b", "\r\n", ".\r\n"),
        B("#63a", "\r", "#100b", "\r\n", ".\r\n"),
        B("#63a", "\r", "\r\n", "#100b", "\r\n", ".\r\n"),
        B("#127a", "\r", "x", "#100b", "\r\n", ".\r\n"),
        B("#127a", "\r", "\n", "#100b", "\r\n", ".\r\n"),
        B("#62a", "\r\n", ".\n", "#100b", "\r\n", ".\r\n"),
        B("#62a", "\r\n", ".\r", "#100b", "\r\n", ".\r\n"),
        B("#63a", "\n.\n", "#100b", "\r\n", ".\r\n"),
        B("#63a", "\n.\r\n", "#100b", "\r\n", ".\r\n"),
        B("#62a", "\r\n", "\n", "#100b", "\r\n", ".\r\n"),
        B("#200a", "\r\n", "#61b", "\r\n.\n", "#100c", "\r\n.\r\n"),
        /* Many short lines, then a marker deep inside a block. */
        B("ab\r\n", "ab\r\n", "ab\r\n", "ab\r\n", "ab\r\n", "ab\r\n", "ab\r\n", "ab\r\n", "ab\r\n", "ab\r\n",
          "ab\r\n", "ab\r\n", "ab\r\n", "ab\r\n", "ab\r\n", "ab\r\n", "ab\r\n", "ab\r\n", "ab\r\n", "ab\r\n",
          ".\r\n", "#100z"),
        B("#300q", "\r\n", "\r\n", "\r\n", "#300q", "\r\n", ".\r\n"),
        B("#1000q"),
        B("#999q", "\r"),
        /* 8-bit octets in clean blocks. */
        B("#100\xff", "\r\n", "#100\x80", "\r\n", "#100", "\r\n", ".\r\n"),
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t n = build(in, cases[i]);
        MODES_BOTH(&c, in, n, 0, 0, CUT_ALL);
        MODES_BOTH(&c, in, n, 0, 1000, CUT_WHOLE | CUT_BYTES);
        MODES_BOTH(&c, in, n, 0, 64, CUT_WHOLE | CUT_BYTES);
        MODES_BOTH(&c, in, n, 0, 65, CUT_WHOLE | CUT_BYTES);
        MODES_BOTH(&c, in, n, 0, 66, CUT_WHOLE | CUT_BYTES);
        MODES_BOTH(&c, in, n, 0, 128, CUT_WHOLE | CUT_BYTES);
    }
    int f = c.failures;
    ctx_free(&c);
    assert_int_equal(f, 0);
}

/*
 * The 256-byte chunks (AVX-512, line_max >= 520 or none): they start after
 * one 64-byte block, with a first partial block up to the next cache line,
 * take dot-stuffed lines whole, and stop before the end marker, before a
 * one-octet line and before a chunk with no LF. Each case is run at all 64
 * alignments of the input (trailing bytes after the marker move its start),
 * so the first partial block takes every length from 0 to 63.
 */
static void test_chunks(void **state)
{
    (void)state;
    ctx_t c = { .label = "chunks" };
    static char in[4096];
    const char *const *cases[] = {
        /* The marker right where the chunks start, and just after. */
        B("#62a", "\r\n", ".\r\n", "#70b", "\r\n", "#70b", "\r\n", "#70b", "\r\n", "#70b", "\r\n", "#70b", "\r\n"),
        B("#62a", "\r\n", "x\r\n", ".\r\n", "#70b", "\r\n", "#70b", "\r\n", "#70b", "\r\n", "#70b", "\r\n"),
        B("#61a", "\r\n", "#70b", "\r\n", ".\r\n", "#70b", "\r\n", "#70b", "\r\n", "#70b", "\r\n", "#70b", "\r\n"),
        /* Dot-stuffed lines inside the chunks, a one-octet line, the end. */
        B("#62a", "\r\n", "..stuffed", "\r\n", "#70b", "\r\n", ".", "#60c", "\r\n", "#70b", "\r\n", "x\r\n", "#70b",
          "\r\n", "..", "\r\n", "#70b", "\r\n", "#70b", "\r\n", "#70b", "\r\n", ".\r\n"),
        /* Empty lines, and a marker after them. */
        B("#62a", "\r\n", "\r\n", "\r\n", "\r\n", "#70b", "\r\n", "#70b", "\r\n", "#70b", "\r\n", "#70b", "\r\n", "\r\n",
          ".\r\n", "#70b", "\r\n"),
        /* A dot-stuffed line of 998 octets (the dot not counted) fits 1000;
         * 999 does not. The chunks stop inside it, with no LF ahead. */
        B("#62a", "\r\n", "#70b", "\r\n", "#70b", "\r\n", "#70b", "\r\n", "#70b", "\r\n", ".", "#998x", "\r\n",
          "#70b", "\r\n", ".\r\n"),
        B("#62a", "\r\n", "#70b", "\r\n", "#70b", "\r\n", "#70b", "\r\n", "#70b", "\r\n", ".", "#999x", "\r\n",
          "#70b", "\r\n", ".\r\n"),
        B("#62a", "\r\n", "#70b", "\r\n", "#70b", "\r\n", "#70b", "\r\n", "#70b", "\r\n", "#998x", "\r\n", "#70b",
          "\r\n", ".\r\n"),
        /* A line already 54 octets long where the chunks start: 560 is
         * over 520, 500 is not. */
        B("#8a", "\r\n", "#560b", "\r\n", "#70b", "\r\n", "#70b", "\r\n", ".\r\n"),
        B("#8a", "\r\n", "#500b", "\r\n", "#70b", "\r\n", "#70b", "\r\n", ".\r\n"),
        /* Lines of 300 and 510: chunks without a LF. */
        B("#62a", "\r\n", "#300b", "\r\n", "#510b", "\r\n", "#70b", "\r\n", "#70b", "\r\n", "#70b", "\r\n", ".\r\n"),
        /* Bare CR and bare LF deep inside the chunks. */
        B("#62a", "\r\n", "#70b", "\r\n", "#70b", "\r\n", "#70b", "\n", "#70b", "\r\n", "#70b", "\r\n", ".\r\n"),
        B("#62a", "\r\n", "#70b", "\r\n", "#70b", "\r\n", "#70b", "\r", "#70b", "\r\n", "#70b", "\r\n", ".\r\n"),
        B("#62a", "\r\n", "#70b", "\r\n", "#70b", "\r\n", "#70b", "\r\n.\n", "#70b", "\r\n", "#70b", "\r\n", ".\r\n"),
    };
    /* The model lets a scanner count a stuffing dot early; these must not. */
    static const int long_line[] = { [5] = 1, [6] = 2, [7] = 1 }; /* 1: fits, 2: too long */
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t n = build(in, cases[i]);
        for (size_t pad = 0; pad < 64; pad++) {
            memset(in + n, 'z', pad);
            MODES_BOTH(&c, in, n + pad, 0, 0, CUT_WHOLE);
            MODES_BOTH(&c, in, n + pad, 0, 1000, CUT_WHOLE);
            MODES_BOTH(&c, in, n + pad, 0, 520, CUT_WHOLE);
            if (i < sizeof long_line / sizeof *long_line && long_line[i]) {
                drive(in, n + pad, NULL, 0, REJ, 0, 1000, &c.r);
                if ((c.r.errors == SCAN_ERR_LINE_TOO_LONG) != (long_line[i] == 2) || (c.r.errors & ~SCAN_ERR_LINE_TOO_LONG)) {
                    print_error("chunks: case %zu, pad %zu: errors %#x\n", i, pad, c.r.errors);
                    c.failures++;
                }
            }
        }
    }
    /* The marker after a line of every length from 0 to 130, so that it
     * falls at every offset of a block and across chunk edges. */
    for (size_t k = 0; k <= 130; k++) {
        char run[16];
        snprintf(run, sizeof run, "#%zuq", k);
        size_t n = build(in, B("#62a", "\r\n", "#70b", "\r\n", "#70b", "\r\n", "#70b", "\r\n", "#70b", "\r\n", run,
                               "\r\n", ".\r\n", "#70b", "\r\n"));
        for (size_t pad = 0; pad < 64; pad += 7) {
            memset(in + n, 'z', pad);
            MODES_BOTH(&c, in, n + pad, 0, 1000, CUT_WHOLE);
        }
    }
    int f = c.failures;
    ctx_free(&c);
    assert_int_equal(f, 0);
}

/* ---- line and size limits at the edge -------------------------------------- */

static void test_line_limits(void **state)
{
    (void)state;
    ctx_t c = { .label = "line_max" };
    static char in[8192];
    static const size_t lens[] = { 997, 998, 999, 1000, 1001 };
    for (size_t li = 0; li < 5; li++) {
        for (int dot = 0; dot < 2; dot++) {
            for (int where = 0; where < 3; where++) {
                /* A line of lens[li] octets before CRLF, optionally starting with
                 * a (stuffing) dot, first, in the middle or last. */
                size_t n = 0;
                if (where)
                    n += (size_t)sprintf(in + n, "Subject: x\r\n\r\n");
                if (dot)
                    in[n++] = '.';
                memset(in + n, 'L', lens[li] - (size_t)dot);
                n += lens[li] - (size_t)dot;
                n += (size_t)sprintf(in + n, "\r\n");
                if (where == 1)
                    n += (size_t)sprintf(in + n, "tail line\r\n");
                n += (size_t)sprintf(in + n, ".\r\n");

                /* The model: 998 + CRLF fit 1000; a stuffing dot is extra. */
                model_run(in, n, REJ, 0, 1000, 0, &c.m[0]);
                bool want_err = lens[li] + 2 > 1000 + (size_t)dot;
                if ((c.m[0].pos[K_LINE] != NONE) != want_err) {
                    print_error("model: line of %zu (dot %d) err %#x\n", lens[li], dot, c.m[0].possible);
                    c.failures++;
                }

                spec_t s = { REJ, 0, 1000 };
                ctx_case(&c, in, n, s, CUT_WHOLE | CUT_BYTES);
                s.mode = NORM;
                ctx_case(&c, in, n, s, CUT_WHOLE | CUT_BYTES);
                if (li == 2 && where == 1) {
                    s.mode = REJ;
                    ctx_case(&c, in, n, s, CUT_ALL_TWO);
                }
                drive(in, n, NULL, 0, REJ, 0, 1000, &c.r);
                if (((c.r.errors & SCAN_ERR_LINE_TOO_LONG) != 0) != want_err) {
                    print_error("line of %zu octets + CRLF, dot %d, where %d: errors %#x\n", lens[li], dot, where,
                                c.r.errors);
                    c.failures++;
                }
            }
        }
    }
    /* line_max 0: unlimited. */
    memset(in, 'u', 5000);
    memcpy(in + 5000, "\r\n.\r\n", 5);
    MODES_BOTH(&c, in, 5005, 0, 0, CUT_WHOLE | CUT_BYTES);
    drive(in, 5005, NULL, 0, REJ, 0, 0, &c.r);
    assert_int_equal(c.r.errors, 0);
    assert_int_equal(c.r.body.len, 5002);

    /* Small limits: the byte-wise path only. */
    static const char *const small[] = {
        "ab\r\nabc\r\nabcd\r\n.\r\n", "abc\r\n.ab\r\n..b\r\n.\r\n", "a\nb\r\n.\r\n", "abc\nd\r\n.\r\n",
        "abcdef\r\n.\r\n", "..abc\r\n.\r\n", "abcd\rx\r\n.\r\n", "abcd\n.\r\n.\r\n",
    };
    for (size_t i = 0; i < sizeof small / sizeof *small; i++)
        for (uint32_t lm = 3; lm <= 8; lm++)
            MODES_BOTH(&c, small[i], strlen(small[i]), 0, lm, CUT_ALL);

    int f = c.failures;
    ctx_free(&c);
    assert_int_equal(f, 0);
}

/* Lines at the limit cut at every position: the fast path and the byte-wise
 * path must agree wherever the line crosses a block or a call boundary. */
static void test_line_limit_splits(void **state)
{
    (void)state;
    ctx_t c = { .label = "line_max splits" };
    static char in[2200];
    static const uint32_t lms[] = { 66, 67, 100, 129, 1000 };
    for (size_t li = 0; li < sizeof lms / sizeof *lms; li++) {
        uint32_t lm = lms[li];
        for (uint32_t text = lm - 3; text <= lm; text++) {
            for (int lead = 0; lead < 2; lead++) {
                size_t n = 0;
                if (lead)
                    n += (size_t)sprintf(in, "To: x\r\n");
                memset(in + n, 'T', text);
                n += text;
                n += (size_t)sprintf(in + n, "\r\nend\r\n.\r\n");
                MODES_BOTH(&c, in, n, 0, lm, CUT_WHOLE | CUT_ALL_TWO);
                drive(in, n, two, 0, REJ, 0, lm, &c.r);
                if (((c.r.errors & SCAN_ERR_LINE_TOO_LONG) != 0) != (text + 2 > lm)) {
                    print_error("%u octets + CRLF, line_max %u: errors %#x\n", text, lm, c.r.errors);
                    c.failures++;
                }
            }
        }
    }
    int f = c.failures;
    ctx_free(&c);
    assert_int_equal(f, 0);
}

/* Normalize mode: the CRLF a bare LF becomes counts toward the line. */
static void test_line_limit_normalized(void **state)
{
    (void)state;
    ctx_t c = { .label = "line_max normalize" };
    static char in[2100];
    /* 999 octets and a bare LF: forwarded as 999 + CRLF = 1001 > 1000. */
    memset(in, 'N', 999);
    memcpy(in + 999, "\n\r\n.\r\n", 6);
    ctx_case(&c, in, 1005, (spec_t){ NORM, 0, 1000 }, CUT_WHOLE);
    drive(in, 1005, NULL, 0, NORM, 0, 1000, &c.r);
    if (!(c.r.errors & SCAN_ERR_LINE_TOO_LONG)) {
        print_error("normalize: 999 octets + bare LF forwarded as a 1001-octet line without LINE_TOO_LONG\n");
        c.failures++;
    }
    /* 998 octets and a bare LF: 1000 with the CRLF, fine. */
    memcpy(in + 998, "\n\r\n.\r\n", 6);
    ctx_case(&c, in, 1004, (spec_t){ NORM, 0, 1000 }, CUT_WHOLE);
    int f = c.failures;
    ctx_free(&c);
    assert_int_equal(f, 0);
}

static void test_size_limits(void **state)
{
    (void)state;
    ctx_t c = { .label = "size_max" };
    static char in[4096];
    static const size_t bodies[] = { 2, 5, 64, 65, 200, 1000 };
    for (size_t bi = 0; bi < sizeof bodies / sizeof *bodies; bi++) {
        size_t b = bodies[bi];
        /* Lines of 30 octets, the body exactly b octets, CRLF-terminated. */
        size_t n = 0;
        while (n + 2 < b) {
            size_t line = b - n - 2 > 28 ? 28 : b - n - 2;
            memset(in + n, (n / 30) % 2 || line < 2 ? 's' : '.', 1);
            memset(in + n + 1, 's', line ? line - 1 : 0);
            n += line;
            in[n++] = '\r';
            in[n++] = '\n';
        }
        if (n < b) {
            in[n++] = '\r';
            in[n++] = '\n';
        }
        assert_int_equal(n, b);
        memcpy(in + n, ".\r\n", 3);
        size_t len = n + 3;
        for (uint64_t smax = b - 1; smax <= b + 1; smax++) {
            int cuts = b <= 200 ? CUT_ALL : CUT_WHOLE | CUT_BYTES;
            MODES_BOTH(&c, in, len, smax, 0, cuts);
            drive(in, len, NULL, 0, REJ, smax, 0, &c.r);
            bool want = b > smax;
            if (((c.r.errors & SCAN_ERR_SIZE) != 0) != want || !c.r.end || c.r.end_at != len) {
                print_error("body of %zu, size_max %llu: errors %#x end %d\n", b, (unsigned long long)smax,
                            c.r.errors, c.r.end);
                c.failures++;
            }
            if (!want && (c.r.size != b || c.r.body.len != b)) {
                print_error("body of %zu, size_max %llu: size %llu forwarded %zu\n", b, (unsigned long long)smax,
                            (unsigned long long)c.r.size, c.r.body.len);
                c.failures++;
            }
        }
    }
    /* Dot-stuffed lines count in wire form: "..\r\n" is 4 octets. */
    MODES_BOTH(&c, "..\r\n.\r\n", 7, 4, 0, CUT_ALL);
    MODES_BOTH(&c, "..\r\n.\r\n", 7, 3, 0, CUT_ALL);
    /* Normalize inserts count too: "a\n" is forwarded as 3 octets. */
    ctx_case(&c, "a\n.\r\n", 5, (spec_t){ NORM, 3, 0 }, CUT_ALL);
    ctx_case(&c, "a\nb\r\n.\r\n", 8, (spec_t){ NORM, 5, 0 }, CUT_ALL);
    ctx_case(&c, "a\nb\r\n.\r\n", 8, (spec_t){ NORM, 6, 0 }, CUT_ALL);
    /* The size error does not hide the end. */
    memset(in, 'z', 3000);
    memcpy(in + 3000, "\r\n.\r\nQUIT\r\n", 11);
    MODES_BOTH(&c, in, 3011, 100, 0, CUT_WHOLE | CUT_BYTES);
    int f = c.failures;
    ctx_free(&c);
    assert_int_equal(f, 0);
}

/* Two errors in one body: the first one must be latched however it is cut
 * (the engine picks its reply from these bits). */
static void test_first_error(void **state)
{
    (void)state;
    ctx_t c = { .label = "first error" };
    static char in[512];
    /* Size exceeded at octet 10, bare LF at 40. */
    memset(in, 'e', 40);
    memcpy(in + 40, "\n\r\n.\r\n", 6);
    ctx_case(&c, in, 46, (spec_t){ REJ, 10, 0 }, CUT_ALL);
    /* Size exceeded at octet 10, line too long at 30. */
    ctx_case(&c, in, 46, (spec_t){ REJ, 10, 20 }, CUT_ALL);
    /* Line too long at 20, bare CR at 40. */
    in[40] = '\r';
    in[41] = 'x';
    ctx_case(&c, in, 46, (spec_t){ REJ, 0, 20 }, CUT_ALL);
    int f = c.failures;
    ctx_free(&c);
    assert_int_equal(f, 0);
}

/* ---- randomized differential test ------------------------------------------ */

static uint64_t rng_state;

static uint64_t rnd(void)
{
    /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static size_t rnd_below(size_t n)
{
    return n ? (size_t)(rnd() % n) : 0;
}

static size_t gen_alphabet(char *out, size_t max)
{
    static const char alpha[] = { 'a', '\r', '\n', '.', 'x' };
    size_t n = rnd_below(max + 1);
    for (size_t i = 0; i < n; i++)
        out[i] = alpha[rnd_below(5)];
    return n;
}

/* Mostly clean CRLF text with the odd hazard, so the 64-byte blocks are
 * taken by the fast path and then broken at random places. */
static size_t gen_tokens(char *out, size_t max)
{
    static const char *const tok[] = { "\r\n", "\r\n", "\r\n.", "\r\n..", "\r\n.\r\n", "\n", "\r", ".", "\r\r\n",
                                       "\n.", "\r.", "\r\n.\n", "\r\n.\r" };
    size_t target = rnd_below(max + 1), n = 0;
    while (n < target) {
        size_t r = rnd_below(100);
        const char *t;
        char run[80];
        if (r < 70) {
            size_t k = 1 + rnd_below(r < 20 ? 70 : 12);
            memset(run, "abcxyz"[rnd_below(6)], k);
            run[k] = 0;
            t = run;
        } else if (r < 92) {
            t = tok[rnd_below(3)];
        } else {
            t = tok[rnd_below(sizeof tok / sizeof *tok)];
        }
        size_t tl = strlen(t);
        if (n + tl > max)
            break;
        memcpy(out + n, t, tl);
        n += tl;
    }
    return n;
}

static void random_run(const char *label, size_t (*gen)(char *, size_t), size_t maxlen, uint64_t seed)
{
    ctx_t c = { .label = label };
    rng_state = seed;
    static char in[1200];
    size_t cuts[32];
    int shrunk = 0;
    for (int iter = 0; iter < 2000; iter++) {
        size_t n = gen(in, maxlen);
        if (rnd_below(10) < 8) { /* usually complete */
            memcpy(in + n, "\r\n.\r\n", 5);
            n += 5;
        }
        for (int mode = 0; mode < 2; mode++) {
            spec_t s = { mode, 0, 0 };
            size_t r = rnd_below(10);
            if (r < 2)
                s.size_max = 1 + rnd_below(n + 4);
            r = rnd_below(10);
            if (r < 3) {
                static const uint32_t lms[] = { 3, 4, 5, 8, 16, 40, 64, 65, 66, 100 };
                s.line_max = lms[rnd_below(10)];
            }
            /* Random cuts. */
            size_t nc = n > 1 ? rnd_below(n < 16 ? n : 16) : 0;
            for (size_t k = 0; k < nc; k++)
                cuts[k] = 1 + rnd_below(n - 1);
            for (size_t a = 1; a < nc; a++) /* sort */
                for (size_t b = a; b > 0 && cuts[b - 1] > cuts[b]; b--) {
                    size_t t = cuts[b];
                    cuts[b] = cuts[b - 1];
                    cuts[b - 1] = t;
                }
            int cutset = CUT_WHOLE | (iter % 8 == 0 ? CUT_BYTES : 0);
            if (!check_input(&c, in, n, s, cutset, cuts, nc, c.printed < 3)) {
                c.failures++;
                if (c.printed++ < 3 && shrunk++ < 3)
                    shrink_and_print(&c, in, n, s);
            }
        }
    }
    if (c.failures)
        print_error("%s: %d of 4000 failed\n", label, c.failures);
    int f = c.failures;
    ctx_free(&c);
    assert_int_equal(f, 0);
}

static void test_random_alphabet(void **state)
{
    (void)state;
    random_run("random {a,CR,LF,.,x}", gen_alphabet, 300, 0x6d78676174650001ull);
}

static void test_random_blocks(void **state)
{
    (void)state;
    random_run("random tokens", gen_tokens, 1000, 0x6d78676174650002ull);
}

/* ---- call protocol details --------------------------------------------------- */

static void test_empty_calls(void **state)
{
    (void)state;
    scan_t sc;
    scan_init(&sc, 0, 1000, SCAN_BARE_REJECT);
    scan_result_t res;
    guard_buf_t g;
    guard_copy(&g, "", 0);
    scan_step(&sc, g.data, 0, &res);
    assert_int_equal(res.consumed, 0);
    assert_int_equal(res.body.len, 0);
    assert_false(res.end);
    guard_free(&g);
    assert_int_equal(sc.errors, 0);
    assert_int_equal(sc.size, 0);

    /* scan_init resets a used scanner. */
    guard_copy(&g, "a\nb\r\n.\r\n", 8);
    size_t off = 0;
    while (off < 8) {
        scan_step(&sc, g.data + off, 8 - off, &res);
        off += res.consumed;
        if (res.end)
            break;
    }
    guard_free(&g);
    assert_true(res.end);
    assert_int_equal(off, 8);
    assert_int_equal(sc.errors, SCAN_ERR_BARE_LF);
    scan_init(&sc, 0, 1000, SCAN_BARE_REJECT);
    assert_int_equal(sc.errors, 0);
    assert_int_equal(sc.size, 0);
    guard_copy(&g, "ok\r\n.\r\n", 7);
    tu_log_t body = { 0 };
    off = 0;
    while (off < 7) {
        scan_step(&sc, g.data + off, 7 - off, &res);
        if (res.body.len)
            tu_put(&body, res.body.ptr, res.body.len);
        off += res.consumed;
        if (res.end)
            break;
    }
    guard_free(&g);
    assert_true(res.end);
    assert_int_equal(sc.errors, 0);
    assert_int_equal(body.len, 4);
    assert_memory_equal(body.buf, "ok\r\n", 4);
    tu_free_log(&body);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_calls),
        cmocka_unit_test(test_exact),
        cmocka_unit_test(test_blocks),
        cmocka_unit_test(test_chunks),
        cmocka_unit_test(test_line_limits),
        cmocka_unit_test(test_line_limit_splits),
        cmocka_unit_test(test_line_limit_normalized),
        cmocka_unit_test(test_size_limits),
        cmocka_unit_test(test_first_error),
        cmocka_unit_test(test_random_alphabet),
        cmocka_unit_test(test_random_blocks),
    };
    /* Every layer this build has, each against the same model: the SIMD
     * layers on x86-64, the portable one elsewhere (and in the
     * SCAN_NO_SIMD build, which stands for a CPU that is not x86-64). */
#if defined(__x86_64__) && !defined(SCAN_NO_SIMD) /* as core/scan.c decides */
    static const char *const layers[] = { "avx512", "avx2", "sse2" };
#else
    static const char *const layers[] = { "portable" };
#endif
    int failed = 0, ran = 0;
    for (size_t k = 0; k < sizeof layers / sizeof *layers; k++) {
        if (!scan_use(layers[k])) {
            /* Said, and counted by tests/run-unit.sh: a layer this CPU lacks
             * is not tested here, and a green run must not hide that. */
            printf("[  SKIPPED ] %zu test(s): scan/%s, this CPU lacks it\n", sizeof tests / sizeof *tests, layers[k]);
            continue;
        }
        char name[32];
        snprintf(name, sizeof name, "scan/%s", layers[k]);
        failed += cmocka_run_group_tests_name(name, tests, setup, NULL);
        ran++;
    }
    return ran ? failed : 1;
}

/*
 * fuzz_dsn.c - libFuzzer target over the bounce builder (core/dsn.h): the
 * input is decoded into a dsn_msg_t, the DSN is sized and written, and the
 * output is parsed back and checked against what went in.
 *
 * Input: a header, then octets (the rest of the input; all of it when the
 * header used it up; zeros when it is empty) that the slices take in turn,
 * cycling:
 *   b[0]: recipients, b % 9 (0: none, an invalid message)
 *   b[1]: flags: 0x01 expired; 0x02 rcpt NULL (invalid); 0x04 the
 *     original's lines may be longer than 998 octets; 0x08 its last line
 *     has no CRLF; 0x20 its length is the whole 16 bits of b[2..3] (else
 *     modulo 2048, so most inputs stay small and fast), and with 0x10 as
 *     well 65536 more (past DSN_HEAD_MAX)
 *   b[2..3]: the original's length in source octets (LE)
 *   b[4..7]: length codes of reporting_mta, queue_id, sender, client_helo:
 *     below 0xc0 the octets, else 192 + (b - 0xc0) * 32 (up to 2208, so the
 *     cut at DSN_LINE_MAX comes up); 0 makes an empty slice
 *   b[8..15] arrival_s, b[16..23] now_s, b[24..31] boundary (LE, raw: huge
 *     values included)
 *   b[32]: a short cap, (size - 1) * b / 255, for one more write that must fail
 *   then per recipient: an addr length code; a code selector (& 3: 0 no
 *     code; 1 400 + next % 100; 2 500 + next % 100; 3 the next two bytes as
 *     they are: 250, 399, 600, 65535 ...); a status selector (& 3: 0 empty;
 *     1 made from the next bytes: a class octet from "24539x.0", then 0..4
 *     subject and 0..4 detail digits, one byte each, so leading zeros and
 *     four-digit parts come up; 2 next % 16 octets of the rest; 3 one of a
 *     fixed list of near-misses); a text length code.
 * The original is made in wire form, as dsn.h requires: from its source
 * octets, CR and LF each end a line (written CRLF), a line that starts with
 * '.' is stuffed, and unless flag 0x04 a line is broken at 998 octets. Every
 * slice is its own heap block of exactly its length (ASan sees overreads).
 * The seeds in corpus/fuzz_dsn/ are in this format.
 *
 * Checks (__builtin_trap, via guard.h's CHECK):
 *   - invalid (nrcpt 0, rcpt NULL, empty sender or reporting_mta):
 *     dsn_size_max is 0 and dsn_write returns 0;
 *   - valid: dsn_size_max > 0 (unless the returned headers hold the first
 *     boundary, the only way dsn.h allows 0); dsn_write into exactly that
 *     many octets, which end at a PROT_NONE page, returns it; into a larger
 *     buffer it writes the same octets and nothing past them; into size - 1
 *     octets and into a fuzzer-chosen shorter cap (both ending at a
 *     PROT_NONE page) it returns 0;
 *   - wire form: every CR is followed by LF, every LF preceded by CR, the
 *     output ends with CRLF, no line is ".", a line that starts with '.'
 *     starts with ".." (stuffed); no line over 998 octets except those of
 *     the returned header section when flag 0x04 let the original have them;
 *     outside that section only printable US-ASCII, and a TAB only opening
 *     the boundary's folded line;
 *   - the header: every line before the first blank line starts with one of
 *     the names dsn.c writes (From, To, Subject, Date, Message-ID,
 *     Auto-Submitted, MIME-Version, Content-Type, Content-Transfer-Encoding)
 *     or is a folded line, and they come exactly in dsn.c's order, each
 *     value the caller's sanitised ('?' for non-printables) and cut only at
 *     DSN_LINE_MAX; the boundary is "=_mxgate_" 16 hex "_" and the queue id
 *     as a token, at most 70 octets, never in the returned headers, and
 *     the caller's number unless that boundary is in the returned headers
 *     (or in a caller's slice, should the builder also avoid those); the
 *     Message-ID carries the same number; 8bit exactly when the returned
 *     headers have an octet >= 0x80; then the fixed preamble line;
 *   - structure: on the un-stuffed lines, exactly three "--boundary" lines
 *     and one "--boundary--", in that order, the closer the last line; each
 *     part's header lines as dsn.c writes them (text/plain,
 *     message/delivery-status, text/rfc822-headers with the same encoding);
 *   - part 1 (the human text): lines within DSN_WRAP + 1 octets;
 *   - part 2: Reporting-MTA, X-Mxgate-Queue-ID (iff a queue id),
 *     Received-From-MTA (iff a HELO), Arrival-Date, then per recipient a
 *     blank line, Final-Recipient, Original-Recipient, Action: failed,
 *     Status, Diagnostic-Code (iff a 4xx/5xx code or a text: "smtp; 550
 *     5.1.1 text", the status only when it is the Status, or "X-Mxgate;
 *     text"), and Last-Attempt-Date, nothing else, each value sanitised; as many Final-Recipient lines as
 *     recipients; each Status matches [45]\.[0-9]{1,3}\.[0-9]{1,3}, is the
 *     reply's when that is a 4.x.x/5.x.x code without leading zeros and the
 *     derived one (5xx: 5.0.0, else 4.4.7) when it is not one at all;
 *   - the dates are dsn_date's, "Www, DD Mmm YYYY HH:MM:SS +0000", and
 *     past 9999 "Fri, 31 Dec 9999 23:59:59 +0000";
 *   - part 3 is the original's header section as dsn.h defines it (up to
 *     the blank line, the whole original without one, cut after the last LF
 *     within DSN_HEAD_MAX), byte for byte, plus a CRLF when it does not end
 *     with LF; where a cut without an LF falls between a CR and its LF, the
 *     CR may be left out (keeping it would put a bare CR on the wire).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dsn.h"
#include "guard.h"

#define MAX_RCPT 8
#define ORIG_SRC_MAX (65536u + 65535u)
#define HEAD_MAX DSN_HEAD_MAX
#define WRAP 76 /* dsn.c's DSN_WRAP */
#define QID_TOKEN_MAX 32
#define PREFIX "=_mxgate_"

typedef struct in {
    const uint8_t *p;
    size_t n, pos;
    const uint8_t *fill; /* octets for slices, cycling */
    size_t nfill, fpos;
} in_t;

static uint8_t byte(in_t *in)
{
    return in->pos < in->n ? in->p[in->pos++] : 0;
}

static uint64_t u64(in_t *in)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)byte(in) << (8 * i);
    return v;
}

/* n octets of the rest, cycling (zeros when there is none), copied in runs:
 * a loop per octet costs the fuzzer's comparison hooks 100k calls a run */
static void fill(in_t *in, char *dst, size_t n)
{
    if (!in->nfill) {
        memset(dst, 0, n);
        return;
    }
    while (n) {
        size_t at = in->fpos % in->nfill, k = in->nfill - at;
        if (k > n)
            k = n;
        memcpy(dst, in->fill + at, k);
        dst += k;
        n -= k;
        in->fpos += k;
    }
}

static size_t lenof(uint8_t b)
{
    return b < 0xc0 ? b : 192 + (size_t)(b - 0xc0) * 32;
}

/* ---- the slices: each its own block ---- */

#define MAX_BLOCKS (4 + 3 * MAX_RCPT + 1)
static void *blocks[MAX_BLOCKS];
static size_t nblocks;

static slice_t block(const char *p, size_t n)
{
    if (!n)
        return SLICE_NULL;
    char *b = malloc(n);
    CHECK(b && nblocks < MAX_BLOCKS);
    memcpy(b, p, n);
    blocks[nblocks++] = b;
    return slice_make(b, n);
}

static slice_t take(in_t *in, size_t n)
{
    static char tmp[4096];
    CHECK(n <= sizeof tmp);
    fill(in, tmp, n);
    return block(tmp, n);
}

/* where c next occurs in p[from..n), n if nowhere */
static size_t next(const char *p, size_t n, size_t from, char c)
{
    const char *q = from < n ? memchr(p + from, c, n - from) : NULL;
    return q ? (size_t)(q - p) : n;
}

/* The original in wire form (see the comment at the top). */
static slice_t make_original(in_t *in, size_t src, bool long_lines, bool unterminated)
{
    static char s[ORIG_SRC_MAX], o[3 * ORIG_SRC_MAX + 16];
    fill(in, s, src);
    size_t n = 0, line = 0, pos = 0, ncr = next(s, src, 0, '\r'), nlf = next(s, src, 0, '\n');
    while (pos < src) {
        if (ncr < pos)
            ncr = next(s, src, pos, '\r');
        if (nlf < pos)
            nlf = next(s, src, pos, '\n');
        size_t brk = ncr < nlf ? ncr : nlf; /* the run up to it has no CR or LF */
        while (pos < brk) {
            if (line == 0 && s[pos] == '.') {
                o[n++] = '.';
                line++;
            }
            size_t k = brk - pos;
            if (!long_lines && k > DSN_LINE_MAX - line)
                k = DSN_LINE_MAX - line;
            memcpy(o + n, s + pos, k);
            n += k;
            pos += k;
            line += k;
            if (!long_lines && line >= DSN_LINE_MAX) {
                memcpy(o + n, "\r\n", 2);
                n += 2;
                line = 0;
            }
        }
        if (pos < src) { /* a CR or an LF: a line's end */
            memcpy(o + n, "\r\n", 2);
            n += 2;
            line = 0;
            pos++;
        }
    }
    if (line && !unterminated) {
        memcpy(o + n, "\r\n", 2);
        n += 2;
    }
    return block(o, n);
}

/* ---- expectations, from dsn.h ---- */

static bool printable(unsigned char c)
{
    return c >= 0x20 && c <= 0x7e;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* n digits from s[*i]: how many (stops at a non-digit) */
static size_t digits(slice_t s, size_t *i)
{
    size_t start = *i;
    while (*i < s.len && is_digit(s.ptr[*i]))
        (*i)++;
    return *i - start;
}

/* "[45].d{1,3}.d{1,3}"; *lead: a part of two or more digits starts with 0 */
static bool esc_45(slice_t s, bool *lead)
{
    *lead = false;
    if (s.len < 5 || (s.ptr[0] != '4' && s.ptr[0] != '5') || s.ptr[1] != '.')
        return false;
    size_t i = 2;
    for (int part = 0; part < 2; part++) {
        size_t start = i, d = digits(s, &i);
        if (d < 1 || d > 3)
            return false;
        if (d > 1 && s.ptr[start] == '0')
            *lead = true;
        if (part == 0) {
            if (i >= s.len || s.ptr[i] != '.')
                return false;
            i++;
        }
    }
    return i == s.len;
}

static bool code_known(uint16_t c)
{
    return c >= 400 && c <= 599;
}

/* dsn.h's header section of the original, computed here again */
static slice_t header_section(slice_t o)
{
    size_t n = o.len;
    if (n >= 2 && o.ptr[0] == '\r' && o.ptr[1] == '\n') {
        n = 2;
    } else {
        const char *e = o.len ? memmem(o.ptr, o.len, "\r\n\r\n", 4) : NULL;
        if (e)
            n = (size_t)(e - o.ptr) + 4;
    }
    if (n > HEAD_MAX) {
        const char *lf = memrchr(o.ptr, '\n', HEAD_MAX);
        n = lf ? (size_t)(lf - o.ptr) + 1 : HEAD_MAX;
    }
    return slice_make(o.ptr, n);
}

static bool contains(slice_t hay, const char *needle, size_t n)
{
    if (n == 0)
        return true;
    return hay.len >= n && memmem(hay.ptr, hay.len, needle, n) != NULL;
}

/* letters, digits, '-' kept, anything else '_', at most max */
static size_t token(char *out, slice_t s, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < s.len && i < max; i++) {
        char c = s.ptr[i];
        bool keep = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '-';
        out[n++] = keep ? c : '_';
    }
    return n;
}

static void hex16(char out[16], uint64_t v)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--, v >>= 4)
        out[i] = hex[v & 15];
}

/* A line made of pieces; san: the caller's octets, '?' for non-printables. */
typedef struct piece {
    const char *p;
    size_t n;
    bool san;
} piece_t;

#define LIT(s) ((piece_t){ (s), sizeof(s) - 1, false })
#define RAW(p, n) ((piece_t){ (p), (n), false })
#define SAN(sl) ((piece_t){ (sl).ptr, (sl).len, true })

/* The line is the pieces, or their first DSN_LINE_MAX - 1 or more octets
 * when they are longer (dsn.h: each line is cut, nothing folded). */
static bool line_is(slice_t l, const piece_t *pc, size_t npc)
{
    size_t k = 0;
    for (size_t i = 0; i < npc; i++)
        for (size_t j = 0; j < pc[i].n; j++) {
            unsigned char c = (unsigned char)pc[i].p[j];
            char e = pc[i].san && !printable(c) ? '?' : (char)c;
            if (k == l.len)
                return l.len >= DSN_LINE_MAX - 1;
            if (l.ptr[k] != e)
                return false;
            k++;
        }
    return k == l.len;
}

static bool starts(slice_t l, const char *lit)
{
    size_t n = strlen(lit);
    return l.len >= n && memcmp(l.ptr, lit, n) == 0;
}

static bool equals(slice_t l, const char *p, size_t n)
{
    return l.len == n && memcmp(l.ptr, p, n) == 0;
}

static bool equals_lit(slice_t l, const char *lit)
{
    return equals(l, lit, strlen(lit));
}

/* "Www, DD Mmm YYYY HH:MM:SS +0000" */
static void check_date_form(const char d[DSN_DATE_LEN], uint64_t t)
{
    static const char *const wd = "Mon Tue Wed Thu Fri Sat Sun ";
    static const char *const mo = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec ";
    char w[4] = { d[0], d[1], d[2], ' ' }, m[4] = { d[8], d[9], d[10], ' ' };
    CHECK(memmem(wd, strlen(wd), w, 4) != NULL && memmem(mo, strlen(mo), m, 4) != NULL);
    CHECK(d[3] == ',' && d[4] == ' ' && d[7] == ' ' && d[11] == ' ' && d[16] == ' ' && d[19] == ':' && d[22] == ':');
    static const int dig[] = { 5, 6, 12, 13, 14, 15, 17, 18, 20, 21, 23, 24 };
    for (size_t i = 0; i < sizeof dig / sizeof dig[0]; i++)
        CHECK(is_digit(d[dig[i]]));
    CHECK(memcmp(d + 25, " +0000", 6) == 0);
    if (t >= 253402300799ull)
        CHECK(memcmp(d, "Fri, 31 Dec 9999 23:59:59 +0000", DSN_DATE_LEN) == 0);
}

/* an octet >= 0x80 in p[0..n) (a word at a time: few comparison hooks) */
static bool any8(const char *p, size_t n)
{
    uint64_t acc = 0, w;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, p + i, 8);
        acc |= w;
    }
    for (; i < n; i++)
        acc |= (unsigned char)p[i];
    return (acc & 0x8080808080808080ull) != 0;
}

/* ---- the output, parsed ---- */

typedef struct lines {
    size_t n;
    slice_t *w;  /* wire lines, CRLF not included */
    slice_t *u;  /* the same, un-stuffed */
    size_t *off; /* offset of each line's first octet */
} lines_t;

static void split(lines_t *ls, const char *p, size_t n)
{
    /* as many CRs as LFs, and each LF after a CR: each CR before an LF */
    CHECK(n >= 2 && p[n - 2] == '\r' && p[n - 1] == '\n');
    size_t ncr = 0, nl = 0;
    for (size_t i = next(p, n, 0, '\r'); i < n; i = next(p, n, i + 1, '\r'))
        ncr++;
    for (size_t i = next(p, n, 0, '\n'); i < n; i = next(p, n, i + 1, '\n')) {
        CHECK(i > 0 && p[i - 1] == '\r');
        nl++;
    }
    CHECK(ncr == nl);
    ls->w = malloc(nl * sizeof *ls->w);
    ls->u = malloc(nl * sizeof *ls->u);
    ls->off = malloc(nl * sizeof *ls->off);
    CHECK(ls->w && ls->u && ls->off);
    ls->n = 0;
    size_t start = 0;
    for (size_t i = next(p, n, 0, '\n'); i < n; i = next(p, n, i + 1, '\n')) {
        slice_t l = slice_make(p + start, i - 1 - start);
        /* no lone ".", and a leading '.' is a stuffed one */
        CHECK(!(l.len == 1 && l.ptr[0] == '.'));
        if (l.len && l.ptr[0] == '.')
            CHECK(l.len >= 2 && l.ptr[1] == '.');
        ls->w[ls->n] = l;
        ls->u[ls->n] = l.len && l.ptr[0] == '.' ? slice_make(l.ptr + 1, l.len - 1) : l;
        ls->off[ls->n] = start;
        ls->n++;
        start = i + 1;
    }
    CHECK(start == n && ls->n == nl);
}

static void free_lines(lines_t *ls)
{
    free(ls->w);
    free(ls->u);
    free(ls->off);
}

static const char *const header_names[] = { "From:",
                                            "To:",
                                            "Subject:",
                                            "Date:",
                                            "Message-ID:",
                                            "Auto-Submitted:",
                                            "MIME-Version:",
                                            "Content-Type:",
                                            "Content-Transfer-Encoding:",
                                            NULL };

/* Everything about one written DSN. */
static void check_dsn(const dsn_msg_t *m, const char *out, size_t n, bool long_orig)
{
    lines_t ls;
    split(&ls, out, n);
    slice_t head = header_section(m->original);
    bool eight = any8(head.ptr, head.len);

    /* the header section: known names or folded lines, exactly dsn.c's */
    size_t hend = 0;
    while (hend < ls.n && ls.u[hend].len)
        hend++;
    CHECK(hend == 10 && hend + 3 < ls.n);
    CHECK(equals_lit(ls.w[11], "This is a MIME-encapsulated message.") && ls.w[12].len == 0);
    for (size_t i = 0; i < hend; i++) {
        slice_t l = ls.w[i];
        bool ok = l.len && (l.ptr[0] == ' ' || l.ptr[0] == '\t');
        for (size_t k = 0; !ok && header_names[k]; k++)
            ok = starts(l, header_names[k]);
        CHECK(ok);
    }
    char date[DSN_DATE_LEN], adate[DSN_DATE_LEN];
    dsn_date(date, m->now_s);
    dsn_date(adate, m->arrival_s);
    check_date_form(date, m->now_s);
    check_date_form(adate, m->arrival_s);
    char qtok[QID_TOKEN_MAX];
    size_t qtl = token(qtok, m->queue_id, QID_TOKEN_MAX);
    char mtok[QID_TOKEN_MAX];
    size_t mtl = m->queue_id.len ? token(mtok, m->queue_id, QID_TOKEN_MAX) : token(mtok, SLICE_LIT("dsn"), 3);

    CHECK(line_is(
        ls.w[0], (piece_t[]){ LIT("From: Mail Delivery System <MAILER-DAEMON@"), SAN(m->reporting_mta), LIT(">") }, 3));
    CHECK(line_is(ls.w[1], (piece_t[]){ LIT("To: <"), SAN(m->sender), LIT(">") }, 3));
    CHECK(equals_lit(ls.w[2], "Subject: Undelivered Mail Returned to Sender"));
    CHECK(line_is(ls.w[3], (piece_t[]){ LIT("Date: "), RAW(date, DSN_DATE_LEN) }, 2));
    CHECK(starts(ls.w[4], "Message-ID: <"));
    CHECK(equals_lit(ls.w[5], "Auto-Submitted: auto-replied"));
    CHECK(equals_lit(ls.w[6], "MIME-Version: 1.0"));
    CHECK(equals_lit(ls.w[7], "Content-Type: multipart/report; report-type=delivery-status;"));
    /* the boundary parameter, on the folded line */
    slice_t bl = ls.w[8];
    const char *bp = "\tboundary=\"";
    CHECK(starts(bl, bp) && bl.len > strlen(bp) + 1 && bl.ptr[bl.len - 1] == '"');
    slice_t b = slice_make(bl.ptr + strlen(bp), bl.len - strlen(bp) - 1);
    size_t pl = strlen(PREFIX);
    CHECK(b.len <= 70 && b.len == pl + 16 + 1 + qtl);
    CHECK(memcmp(b.ptr, PREFIX, pl) == 0 && b.ptr[pl + 16] == '_');
    CHECK(memcmp(b.ptr + pl + 17, qtok, qtl) == 0);
    for (size_t i = 0; i < 16; i++) {
        char c = b.ptr[pl + i];
        CHECK(is_digit(c) || (c >= 'a' && c <= 'f'));
    }
    /* the caller's number, unless that boundary is in the returned headers
     * (or, as a builder may also check, in a caller's slice) */
    char first[sizeof PREFIX - 1 + 16 + 1 + QID_TOKEN_MAX];
    memcpy(first, PREFIX, pl);
    hex16(first + pl, m->boundary);
    first[pl + 16] = '_';
    memcpy(first + pl + 17, qtok, qtl);
    size_t fl = pl + 17 + qtl;
    bool taken = contains(head, first, fl) || contains(m->reporting_mta, first, fl) ||
                 contains(m->queue_id, first, fl) || contains(m->sender, first, fl) ||
                 contains(m->client_helo, first, fl);
    for (uint32_t r = 0; r < m->nrcpt; r++)
        taken |= contains(m->rcpt[r].addr, first, fl) || contains(m->rcpt[r].status, first, fl) ||
                 contains(m->rcpt[r].text, first, fl);
    if (!taken)
        CHECK(memcmp(b.ptr, first, b.len) == 0);
    CHECK(!contains(head, b.ptr, b.len));
    CHECK(line_is(ls.w[4],
                  (piece_t[]){ LIT("Message-ID: <"), RAW(mtok, mtl), LIT("."), RAW(b.ptr + pl, 16), LIT("@"),
                               SAN(m->reporting_mta), LIT(">") },
                  7));
    CHECK(equals_lit(ls.w[9], eight ? "Content-Transfer-Encoding: 8bit" : "Content-Transfer-Encoding: 7bit"));

    /* the delimiters, on the un-stuffed lines */
    char *delim = malloc(b.len + 4);
    CHECK(delim);
    delim[0] = delim[1] = '-';
    memcpy(delim + 2, b.ptr, b.len);
    delim[b.len + 2] = delim[b.len + 3] = '-';
    size_t open[3], nopen = 0, close = 0, nclose = 0;
    for (size_t i = 0; i < ls.n; i++) {
        if (equals(ls.u[i], delim, b.len + 2)) {
            CHECK(nopen < 3 && nclose == 0);
            open[nopen++] = i;
        } else if (equals(ls.u[i], delim, b.len + 4)) {
            CHECK(nopen == 3 && nclose == 0);
            close = i;
            nclose++;
        }
    }
    CHECK(nopen == 3 && nclose == 1 && close == ls.n - 1 && open[0] == 13);
    free(delim);

    /* each part's header lines */
    CHECK(open[0] + 3 < open[1] && open[1] + 3 < open[2] && open[2] + 4 <= close);
    CHECK(equals_lit(ls.w[open[0] + 1], "Content-Description: Notification"));
    CHECK(equals_lit(ls.w[open[0] + 2], "Content-Type: text/plain; charset=us-ascii"));
    CHECK(ls.w[open[0] + 3].len == 0);
    CHECK(equals_lit(ls.w[open[1] + 1], "Content-Description: Delivery report"));
    CHECK(equals_lit(ls.w[open[1] + 2], "Content-Type: message/delivery-status"));
    CHECK(ls.w[open[1] + 3].len == 0);
    CHECK(equals_lit(ls.w[open[2] + 1], "Content-Description: Undelivered Message Headers"));
    CHECK(equals_lit(ls.w[open[2] + 2], "Content-Type: text/rfc822-headers"));
    CHECK(equals(ls.w[open[2] + 3], ls.w[9].ptr, ls.w[9].len));
    CHECK(ls.w[open[2] + 4].len == 0);

    /* part 3: the returned header section, as it is, and a CRLF when it
     * does not end with LF; a section cut inside a line (no LF within
     * DSN_HEAD_MAX) may also leave out a CR that the cut parts from its LF */
    size_t p3 = open[2] + 5; /* its first line (maybe the closer) */
    size_t p3_start = ls.off[p3], p3_end = ls.off[close];
    if (head.len == HEAD_MAX && head.ptr[HEAD_MAX - 1] == '\r' && p3_end - p3_start == HEAD_MAX - 1 + 2)
        head.len--;
    bool add_crlf = head.len && head.ptr[head.len - 1] != '\n';
    CHECK(p3_end - p3_start == head.len + (add_crlf ? 2 : 0));
    CHECK(head.len == 0 || memcmp(out + p3_start, head.ptr, head.len) == 0);

    /* octets and lengths of every line but part 3's */
    for (size_t i = 0; i < ls.n; i++) {
        slice_t l = ls.w[i];
        bool returned = i >= p3 && i < close;
        if (!returned || !long_orig)
            CHECK(l.len <= DSN_LINE_MAX);
        if (returned)
            continue;
        for (size_t k = 0; k < l.len; k++)
            CHECK(printable((unsigned char)l.ptr[k]) || (i == 8 && k == 0));
    }

    /* part 1: the human text, wrapped */
    for (size_t i = open[0] + 4; i < open[1]; i++)
        CHECK(ls.w[i].len <= WRAP + 1);

    /* part 2: the fields, exactly */
    size_t i = open[1] + 4, end = open[2];
    CHECK(i < end && line_is(ls.w[i++], (piece_t[]){ LIT("Reporting-MTA: dns; "), SAN(m->reporting_mta) }, 2));
    if (m->queue_id.len)
        CHECK(i < end && line_is(ls.w[i++], (piece_t[]){ LIT("X-Mxgate-Queue-ID: "), SAN(m->queue_id) }, 2));
    if (m->client_helo.len)
        CHECK(i < end && line_is(ls.w[i++], (piece_t[]){ LIT("Received-From-MTA: dns; "), SAN(m->client_helo) }, 2));
    CHECK(i < end && line_is(ls.w[i++], (piece_t[]){ LIT("Arrival-Date: "), RAW(adate, DSN_DATE_LEN) }, 2));
    size_t nfinal = 0;
    for (size_t k = open[1] + 4; k < end; k++)
        nfinal += starts(ls.w[k], "Final-Recipient:");
    CHECK(nfinal == m->nrcpt);
    for (uint32_t r = 0; r < m->nrcpt; r++) {
        const dsn_rcpt_t *rc = &m->rcpt[r];
        CHECK(i + 5 <= end && ls.w[i++].len == 0);
        CHECK(line_is(ls.w[i++], (piece_t[]){ LIT("Final-Recipient: rfc822; "), SAN(rc->addr) }, 2));
        CHECK(line_is(ls.w[i++], (piece_t[]){ LIT("Original-Recipient: rfc822; "), SAN(rc->addr) }, 2));
        CHECK(equals_lit(ls.w[i++], "Action: failed"));
        slice_t st = ls.w[i++];
        CHECK(starts(st, "Status: "));
        st = slice_make(st.ptr + 8, st.len - 8);
        bool lead, slead;
        CHECK(esc_45(st, &lead));
        slice_t derived = rc->code / 100 == 5 ? SLICE_LIT("5.0.0") : SLICE_LIT("4.4.7");
        bool given_ok = esc_45(rc->status, &slead);
        if (given_ok && !slead)
            CHECK(slice_eq(st, rc->status));
        else if (!given_ok)
            CHECK(slice_eq(st, derived));
        else
            CHECK(slice_eq(st, rc->status) || slice_eq(st, derived));
        bool given = rc->status.len && slice_eq(st, rc->status);
        if (code_known(rc->code) || rc->text.len) {
            CHECK(i < end);
            slice_t d = ls.w[i++];
            if (code_known(rc->code)) {
                char num[8];
                int nn = snprintf(num, sizeof num, "%u", (unsigned)rc->code);
                CHECK(line_is(d,
                              (piece_t[]){ LIT("Diagnostic-Code: smtp; "), RAW(num, (size_t)nn),
                                           given ? LIT(" ") : LIT(""), given ? SAN(rc->status) : LIT(""),
                                           rc->text.len ? LIT(" ") : LIT(""), SAN(rc->text) },
                              6));
            } else {
                CHECK(line_is(d, (piece_t[]){ LIT("Diagnostic-Code: X-Mxgate; "), SAN(rc->text) }, 2));
            }
        }
        CHECK(i < end && line_is(ls.w[i++], (piece_t[]){ LIT("Last-Attempt-Date: "), RAW(date, DSN_DATE_LEN) }, 2));
    }
    CHECK(i == end);
    free_lines(&ls);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    in_t in = { data, size, 0, NULL, 0, 0 };
    nblocks = 0;

    /* the header */
    uint32_t nrcpt = byte(&in) % (MAX_RCPT + 1);
    uint8_t flags = byte(&in);
    size_t olen = byte(&in);
    olen |= (size_t)byte(&in) << 8;
    if (!(flags & 0x20))
        olen %= 2048;
    else if (flags & 0x10)
        olen += 65536;
    size_t lmta = lenof(byte(&in)), lqid = lenof(byte(&in)), lsnd = lenof(byte(&in)), lhelo = lenof(byte(&in));
    uint64_t arrival = u64(&in), now = u64(&in), bnd = u64(&in);
    uint8_t capb = byte(&in);
    struct {
        size_t addr, text, st_raw;
        uint16_t code;
        uint8_t ssel;
        char st[16];
        size_t stl;
    } plan[MAX_RCPT];
    static const char *const near[] = { "5.1.1", "4.7.1", "2.0.0",     "5.01.1", "5.1.1000", "4.4.7 ", "3.1.1",
                                        "5.1.",  "5..1",  "4.999.999", "5.0.00", "4.1",      "05.1.1", "5.1.1\r\n" };
    for (uint32_t r = 0; r < nrcpt; r++) {
        plan[r].addr = lenof(byte(&in));
        uint8_t cs = byte(&in);
        switch (cs & 3) {
        case 0:
            plan[r].code = 0;
            break;
        case 1:
            plan[r].code = (uint16_t)(400 + byte(&in) % 100);
            break;
        case 2:
            plan[r].code = (uint16_t)(500 + byte(&in) % 100);
            break;
        default:
            plan[r].code = (uint16_t)(byte(&in) | byte(&in) << 8);
            break;
        }
        uint8_t ss = byte(&in);
        plan[r].ssel = ss & 3;
        plan[r].stl = 0;
        if (plan[r].ssel == 1) {
            uint8_t shape = byte(&in);
            char *s = plan[r].st;
            size_t k = 0;
            s[k++] = "24539x.0"[shape & 7];
            s[k++] = '.';
            for (int d = 0; d < (shape >> 3) % 5; d++)
                s[k++] = (char)('0' + byte(&in) % 10);
            s[k++] = '.';
            for (int d = 0; d < (shape >> 5) % 5; d++)
                s[k++] = (char)('0' + byte(&in) % 10);
            plan[r].stl = k;
        } else if (plan[r].ssel == 2) {
            plan[r].st_raw = byte(&in) % 16;
        } else if (plan[r].ssel == 3) {
            const char *s = near[byte(&in) % (sizeof near / sizeof near[0])];
            plan[r].stl = strlen(s);
            memcpy(plan[r].st, s, plan[r].stl);
        }
        plan[r].text = lenof(byte(&in));
    }

    /* the octets: the rest, cycling */
    if (in.pos < size) {
        in.fill = data + in.pos;
        in.nfill = size - in.pos;
    } else {
        in.fill = data;
        in.nfill = size;
    }
    dsn_rcpt_t rc[MAX_RCPT];
    dsn_msg_t m = { 0 };
    m.reporting_mta = take(&in, lmta);
    m.queue_id = take(&in, lqid);
    m.sender = take(&in, lsnd);
    m.client_helo = take(&in, lhelo);
    m.arrival_s = arrival;
    m.now_s = now;
    m.expired = flags & 1;
    m.boundary = bnd;
    for (uint32_t r = 0; r < nrcpt; r++) {
        rc[r].addr = take(&in, plan[r].addr);
        rc[r].code = plan[r].code;
        rc[r].status = plan[r].ssel == 2 ? take(&in, plan[r].st_raw) : block(plan[r].st, plan[r].stl);
        rc[r].text = take(&in, plan[r].text);
    }
    m.rcpt = flags & 2 ? NULL : rc;
    m.nrcpt = nrcpt;
    bool long_orig = flags & 4;
    m.original = make_original(&in, olen, long_orig, flags & 8);

    bool valid = m.nrcpt >= 1 && m.rcpt && m.sender.len && m.reporting_mta.len;
    size_t max = dsn_size_max(&m);
    guard_buf_t g;
    if (!valid) {
        CHECK(max == 0);
        char *o = guard_alloc(&g, 4096);
        CHECK(dsn_write(o, 4096, &m) == 0);
        guard_free(&g);
    } else if (max == 0) {
        /* dsn.h: no boundary the returned headers lack */
        char qtok[QID_TOKEN_MAX], first[sizeof PREFIX - 1 + 16 + 1 + QID_TOKEN_MAX];
        size_t qtl = token(qtok, m.queue_id, QID_TOKEN_MAX), pl = strlen(PREFIX);
        memcpy(first, PREFIX, pl);
        hex16(first + pl, m.boundary);
        first[pl + 16] = '_';
        memcpy(first + pl + 17, qtok, qtl);
        CHECK(contains(header_section(m.original), first, pl + 17 + qtl));
    } else {
        /* exactly max, ending at a PROT_NONE page */
        char *o = guard_alloc(&g, max);
        size_t n = dsn_write(o, max, &m);
        CHECK(n == max);
        check_dsn(&m, o, n, long_orig);
        /* a larger buffer: the same octets, nothing past them */
        char *big = malloc(max + 64);
        CHECK(big);
        memset(big, 0xa5, max + 64);
        CHECK(dsn_write(big, max + 64, &m) == max);
        CHECK(memcmp(big, o, max) == 0);
        for (size_t k = max; k < max + 64; k++)
            CHECK((unsigned char)big[k] == 0xa5);
        free(big);
        guard_free(&g);
        /* one octet short, and a shorter cap: 0, nothing past the cap */
        o = guard_alloc(&g, max - 1);
        CHECK(dsn_write(o, max - 1, &m) == 0);
        guard_free(&g);
        size_t cap = (max - 1) * capb / 255;
        o = guard_alloc(&g, cap);
        CHECK(dsn_write(o, cap, &m) == 0);
        guard_free(&g);
    }
    for (size_t k = 0; k < nblocks; k++)
        free(blocks[k]);
    return 0;
}

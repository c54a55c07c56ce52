/*
 * msgedit.h - edits to a message in SMTP wire form (CRLF line ends,
 * dot-stuffed) that the content stage makes after rspamd has answered:
 * the message unstuffed for rspamd, the header fields rspamd asks to
 * remove found as byte ranges, and our Authentication-Results merged with
 * rspamd's into one field. I/O-free and allocation-free: every function
 * reads whole buffers the caller owns and writes only into the caller's
 * output.
 *
 * Lines. A line starts at offset 0 and after every CRLF; only CRLF ends a
 * line (a bare CR or LF is an octet of the line). A line that begins with
 * '.' has a stuffing dot (RFC 5321 4.5.2): the line's text starts after it.
 * A correct client stuffs every line that begins with '.', so a line "..x"
 * is the text ".x"; a line ".x" (never sent by a correct client) is the
 * text "x", as the receiver's rule says. Unstuffing and the header parser
 * below apply the same rule, so the cuts found in the wire are the fields
 * the unstuffed message has.
 *
 * One edit, with the caller doing the rest:
 *
 *     // to rspamd: the message as it is, or unstuffed when it has to be
 *     n = msgedit_stuffed(wire, len) ? msgedit_unstuff(copy, wire, len) : len;
 *     // rspamd's remove_headers, as ranges of the wire to leave out
 *     k = msgedit_cuts(wire, len, dels, ndels, cuts, MAXCUTS);
 *     if (k == MSGEDIT_OVERFLOW) ... deliver unedited
 *     // our Authentication-Results and rspamd's, one field
 *     if (msgedit_ar_merge(ours, theirs, buf, sizeof buf, &n) == MSGEDIT_OK)
 *         write "Authentication-Results: ", buf[0..n), CRLF
 *     else
 *         write both fields as they are
 */
#ifndef MXGATE_MSGEDIT_H
#define MXGATE_MSGEDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "slice.h"

/* ---- unstuffing ---- */

/* Whether a line of wire[0..n) begins with '.'. */
bool msgedit_stuffed(const char *wire, size_t n);

/*
 * wire[0..n) with the first '.' of every line that begins with one removed,
 * written to out; returns its length (at most n: equal when
 * !msgedit_stuffed()). out may be wire itself (in place) or any buffer of n
 * octets that does not overlap wire; out may be NULL when n is 0.
 */
size_t msgedit_unstuff(char *out, const char *wire, size_t n);

/* ---- header fields to delete ---- */

/* A byte range of the message: msg[off..off+len). */
typedef struct msgedit_cut {
    size_t off, len;
} msgedit_cut_t;

/*
 * A field to delete, in rspamd's (milter) terms: name compared ASCII
 * case-insensitively; index 0 every instance, n > 0 the nth from the top
 * (1: the first), n < 0 the nth from the bottom (-1: the last). An index
 * past the number of instances, and an empty name, delete nothing.
 */
typedef struct msgedit_del {
    slice_t name;
    int index;
} msgedit_del_t;

/* msgedit_cuts()'s answer when cap cuts are not enough. */
#define MSGEDIT_OVERFLOW SIZE_MAX

/*
 * The header section of msg[0..n) (wire form): msg[0..end) where end is
 * the offset of its first empty line (a line whose text is empty: "\r\n",
 * or ".\r\n" unstuffed), or n when it has none. The body follows that line.
 */
size_t msgedit_header_end(const char *msg, size_t n);

/*
 * The fields of msg's header section that dels select, as ranges to leave
 * out, in out[0..k): k is returned.
 *
 * A field is a line of the header section whose text begins with an octet
 * other than SP and HTAB and holds a ':'; its name is the text before the
 * first ':', without the white space before the colon (obsolete syntax,
 * RFC 5322 4.5.3), and it runs on over the continuation lines that follow
 * (text beginning with SP or HTAB). A line without a colon (and the
 * continuation lines after it) is no field: never cut, and it does not end
 * the section. A cut is a whole field: from the start of its first line to
 * the end of its last, CRLF included (or n, when the section is all of msg
 * and its last line has no CRLF).
 *
 * The cuts are sorted by offset and never overlap or repeat (a field two
 * dels select is cut once). When more than cap would be needed,
 * MSGEDIT_OVERFLOW is returned and out[0..cap) holds nothing promised: the
 * caller then delivers the message unedited. out may be NULL when cap is
 * 0. Time O(header octets x dels), no allocation.
 */
size_t msgedit_cuts(const char *msg, size_t n, const msgedit_del_t *dels, size_t ndels, msgedit_cut_t *out, size_t cap);

/* ---- Authentication-Results ---- */

/* An Internet Message Format line, CRLF excluded (RFC 5322 2.1.1). */
#define MSGEDIT_LINE_MAX 998
/* "Authentication-Results: ", which the caller writes before a value and
 * which counts in the value's first line. */
#define MSGEDIT_AR_PREFIX 24

typedef enum msgedit_err {
    MSGEDIT_OK = 0,
    MSGEDIT_ERR_OURS,    /* "bad_ours": our value does not parse (below) */
    MSGEDIT_ERR_THEIRS,  /* "bad_theirs": rspamd's does not */
    MSGEDIT_ERR_LONG,    /* "line_too_long": a line of the result, the
                          * field's name in front of the first, would be
                          * over MSGEDIT_LINE_MAX */
    MSGEDIT_ERR_NO_ROOM, /* "no_room": out is too small */
} msgedit_err_t;

/* The error's name, for logs and counters ("?" outside the enum). Static. */
const char *msgedit_err_name(msgedit_err_t e);

/*
 * One Authentication-Results field value (RFC 8601) out of ours (the
 * gateway's: its authserv-id, its SPF result) and theirs (rspamd's), each
 * what follows "Authentication-Results:", without the field's final CRLF.
 *
 * A value is split at each ';' outside comments (parentheses, which nest
 * and take quoted-pairs) and quoted strings (which take quoted-pairs); a
 * part is taken without the white space and folds around it. The first
 * part is the authserv-id, with its optional version and comments:
 * [CFWS] (token / quoted-string) [CFWS [1*DIGIT [CFWS]]]. Every other part
 * is a resinfo, whose method is the keyword before '=' (or before '/' and
 * a method version); a part that is "none" is RFC 8601's no-result; a part
 * of nothing but white space and comments ("a;;b", a final ';') is
 * skipped. A value is refused when it has a CR or LF that is not in a fold
 * (CRLF then SP or HTAB), another control octet (other than HTAB), a
 * parenthesis or quote unbalanced, a backslash ending a comment or quoted
 * string, an authserv-id that is empty or not as above, or a part that is
 * neither empty, "none", nor a method followed by '=' or '/'.
 *
 * The result: ours' authserv-id; ours' resinfos; then theirs' resinfos
 * whose method (ASCII case-insensitively) ours has none of (theirs'
 * authserv-id is not used). Each resinfo follows ";\r\n\t", so it starts a
 * line of its own. "none" is dropped; when no resinfo is left the result is
 * "<authserv-id>; none". Every part is copied as given except for its
 * folds, which are unfolded: outside quoted strings a fold (CRLF and the
 * white space after it, several folds in a row alike) becomes one SP; in a
 * quoted string only the CRLF goes (RFC 5322 3.2.4: the white space is the
 * string's). So the result has no CR or LF but the separators' and no
 * leading or trailing white space; the caller writes "Authentication-
 * Results: " before it and CRLF after it.
 *
 * Time O(length of ours x parts of theirs): each of theirs' methods is
 * looked for among ours' (ours is the gateway's own, a line or two).
 *
 * out[0..*len) on MSGEDIT_OK. On MSGEDIT_ERR_NO_ROOM *len is the size
 * needed (out NULL and cap 0 measure); on other errors *len is untouched
 * and nothing is promised about out. Errors are tried in the order of the
 * enum.
 */
msgedit_err_t msgedit_ar_merge(slice_t ours, slice_t theirs, char *out, size_t cap, size_t *len)
    __attribute__((warn_unused_result));

#endif

/*
 * reply.c - builds SMTP reply lines into the caller's output buffer.
 *
 * A reply line is written whole or not at all, so the buffer never holds
 * half a reply; the engine checks room before it starts a command, which is
 * how a slow reader pushes back on a fast pipelining client.
 */
#include "reply.h"


bool reply_esc_valid(const char *esc, size_t len)
{
    if (len < 5 || (esc[0] != '2' && esc[0] != '4' && esc[0] != '5') || esc[1] != '.')
        return false;
    /* subject and detail: 1 to 3 digits, no leading zero (RFC 3463 2) */
    size_t i = 2;
    for (int part = 0; part < 2; part++) {
        size_t start = i;
        while (i < len && esc[i] >= '0' && esc[i] <= '9')
            i++;
        size_t digits = i - start;
        if (digits < 1 || digits > 3 || (digits > 1 && esc[start] == '0'))
            return false;
        if (part == 0) {
            if (i >= len || esc[i] != '.')
                return false;
            i++;
        }
    }
    return i == len;
}

bool reply_line(smtp_out_t *o, int code, bool more, const char *esc, slice_t text)
{
    /* Formatted by hand: this runs once per reply, and printf was a quarter
     * of the engine's time per command. */
    char head[24];
    size_t esclen = esc ? strlen(esc) : 0;
    if (code < 200 || code > 599 || esclen > 12)
        return false;
    size_t hl = 0;
    head[hl++] = (char)('0' + code / 100);
    head[hl++] = (char)('0' + code / 10 % 10);
    head[hl++] = (char)('0' + code % 10);
    head[hl++] = more ? '-' : ' ';
    if (esclen) {
        memcpy(head + hl, esc, esclen);
        hl += esclen;
        if (text.len)
            head[hl++] = ' ';
    }
    size_t tlen = text.len;
    if (hl + tlen + 2 > REPLY_LINE_MAX)
        tlen = REPLY_LINE_MAX - 2 - hl;
    size_t need = hl + tlen + 2;
    if (reply_room(o) < need)
        return false;
    char *w = o->buf + o->len;
    memcpy(w, head, hl);
    w += hl;
    for (size_t i = 0; i < tlen; i++) {
        unsigned char c = (unsigned char)text.ptr[i];
        *w++ = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
    }
    *w++ = '\r';
    *w++ = '\n';
    o->len += need;
    if (!more)
        o->replies[code / 100]++;
    return true;
}

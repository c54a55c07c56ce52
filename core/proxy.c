/*
 * proxy.c - parses the PROXY protocol header, versions 1 and 2.
 *
 * One state machine, one byte at a time, each byte judged once when it
 * arrives: that is what makes the verdict and the offset of an error the
 * same however the input was split, and what lets an impossible header be
 * refused at its first wrong byte. The only bulk path is the one that skips
 * octets nobody reads (a v2 block ignored whole, a TLV's value), where there
 * is nothing to judge but the count.
 *
 * v1 keeps no line buffer: the fixed words are matched by position, IPv4
 * octets and ports are converted digit by digit, and only an IPv6 address
 * is kept as text, until its space arrives and inet_pton() reads it (libc,
 * no I/O; its grammar of '::' and embedded IPv4 is not worth repeating).
 * v2 keeps counters: the offset in the header, the declared length, where
 * the current TLV's head or value is.
 */
#include "proxy.h"

#include <arpa/inet.h>

_Static_assert(16 + PROXY_V2_MAX <= UINT16_MAX, "PROXY_V2_MAX must fit _pos");

enum state {
    ST_START = 0, /* nothing yet: the first byte picks the version */
    /* v1 */
    ST_V1_SIG,   /* "PROXY " */
    ST_V1_PROTO, /* "TCP4", "TCP6" or "UNKNOWN" */
    ST_V1_SRC,   /* source address */
    ST_V1_DST,   /* destination address */
    ST_V1_SPORT, /* source port */
    ST_V1_DPORT, /* destination port */
    ST_V1_TAIL,  /* after "UNKNOWN ": anything printable */
    ST_V1_LF,    /* after the CR: the LF */
    /* v2 */
    ST_V2_FIXED, /* the 16 fixed octets */
    ST_V2_ADDR,  /* the address block */
    ST_V2_TLV,   /* TLVs after the addresses */
    ST_V2_SKIP,  /* a block ignored whole (LOCAL, UNSPEC) */
    ST_DONE,
};

static const char *const err_names[] = {
    [PROXY_ERR_NONE] = "none",
    [PROXY_ERR_NOT_PROXY] = "not_proxy",
    [PROXY_ERR_V1_SYNTAX] = "bad_v1_syntax",
    [PROXY_ERR_BAD_ADDRESS] = "bad_address",
    [PROXY_ERR_BAD_PORT] = "bad_port",
    [PROXY_ERR_V1_TOO_LONG] = "v1_too_long",
    [PROXY_ERR_V2_VERSION] = "bad_v2_version",
    [PROXY_ERR_V2_COMMAND] = "bad_v2_command",
    [PROXY_ERR_FAMILY] = "unsupported_family",
    [PROXY_ERR_V2_TOO_SHORT] = "v2_too_short",
    [PROXY_ERR_V2_OVERSIZED] = "v2_oversized",
    [PROXY_ERR_V2_TLV] = "bad_v2_tlv",
};

const char *proxy_err_name(proxy_err_t e)
{
    if ((unsigned)e >= sizeof err_names / sizeof err_names[0])
        return "?";
    return err_names[e];
}

static const char v1_sig[6] = { 'P', 'R', 'O', 'X', 'Y', ' ' };
static const unsigned char v2_sig[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };

/* The longest IPv6 text inet_pton() takes: eight groups, or six and an IPv4
 * tail ("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"). */
#define V1_INET6_MAX 45
_Static_assert(V1_INET6_MAX < sizeof(((proxy_t *)0)->_tok), "_tok must hold an IPv6 address and its NUL");

static bool is_digit(unsigned c)
{
    return c >= '0' && c <= '9';
}

static bool is_xdigit(unsigned c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static void next_field(proxy_t *p, enum state st)
{
    p->_state = (uint8_t)st;
    p->_flen = 0;
    p->_num = 0;
    p->_dots = 0;
    p->_digits = 0;
}

/* The protocol token so far (_tok[0.._flen)) as a prefix of, or the whole
 * of, one of the three the spec allows. */
static bool proto_prefix(const proxy_t *p, const char *word)
{
    size_t n = strlen(word);
    return p->_flen <= n && memcmp(p->_tok, word, p->_flen) == 0;
}

static bool proto_is(const proxy_t *p, const char *word)
{
    return p->_flen == strlen(word) && memcmp(p->_tok, word, p->_flen) == 0;
}

static proxy_err_t v1_proto(proxy_t *p, unsigned c)
{
    if (c == ' ' || c == '\r') { /* an empty token was refused by v1_byte() */
        if (proto_is(p, "UNKNOWN")) {
            p->_r.local = true;
            next_field(p, c == ' ' ? ST_V1_TAIL : ST_V1_LF);
            return PROXY_ERR_NONE;
        }
        if (c == ' ' && proto_is(p, "TCP4")) {
            p->_r.family = AF_INET;
            next_field(p, ST_V1_SRC);
            return PROXY_ERR_NONE;
        }
        if (c == ' ' && proto_is(p, "TCP6")) {
            p->_r.family = AF_INET6;
            next_field(p, ST_V1_SRC);
            return PROXY_ERR_NONE;
        }
        return PROXY_ERR_V1_SYNTAX; /* "TCP", "TCP4\r", "UNKN " */
    }
    if (p->_flen >= 7)
        return PROXY_ERR_V1_SYNTAX;
    p->_tok[p->_flen++] = (char)c;
    if (!proto_prefix(p, "TCP4") && !proto_prefix(p, "TCP6") && !proto_prefix(p, "UNKNOWN"))
        return PROXY_ERR_V1_SYNTAX;
    return PROXY_ERR_NONE;
}

/* A dotted quad, octet by octet, straight into the result. */
static proxy_err_t v1_inet(proxy_t *p, unsigned c, uint8_t *addr)
{
    if (c == ' ') {
        if (p->_digits == 0 || p->_dots != 3)
            return PROXY_ERR_BAD_ADDRESS; /* "1.2.3", "1.2.3." */
        addr[3] = (uint8_t)p->_num;
        next_field(p, p->_state == ST_V1_SRC ? ST_V1_DST : ST_V1_SPORT);
        return PROXY_ERR_NONE;
    }
    if (c == '.') {
        if (p->_digits == 0 || p->_dots == 3)
            return PROXY_ERR_BAD_ADDRESS; /* ".1", "1..2", "1.2.3.4." */
        addr[p->_dots++] = (uint8_t)p->_num;
        p->_digits = 0;
        p->_num = 0;
    } else if (is_digit(c)) {
        if (p->_digits > 0 && p->_num == 0)
            return PROXY_ERR_BAD_ADDRESS; /* "01": the spec forbids octal look-alikes */
        p->_num = p->_num * 10 + (c - '0');
        if (p->_num > 255)
            return PROXY_ERR_BAD_ADDRESS;
        p->_digits++;
    } else {
        return PROXY_ERR_BAD_ADDRESS;
    }
    p->_flen++;
    return PROXY_ERR_NONE;
}

/* An IPv6 address: its alphabet and length as it arrives, inet_pton() at its
 * space. */
static proxy_err_t v1_inet6(proxy_t *p, unsigned c, uint8_t *addr)
{
    if (c == ' ') {
        p->_tok[p->_flen] = 0;
        if (inet_pton(AF_INET6, p->_tok, addr) != 1)
            return PROXY_ERR_BAD_ADDRESS;
        next_field(p, p->_state == ST_V1_SRC ? ST_V1_DST : ST_V1_SPORT);
        return PROXY_ERR_NONE;
    }
    if (!is_xdigit(c) && c != ':' && c != '.')
        return PROXY_ERR_BAD_ADDRESS;
    if (p->_flen >= V1_INET6_MAX)
        return PROXY_ERR_BAD_ADDRESS;
    p->_tok[p->_flen++] = (char)c;
    return PROXY_ERR_NONE;
}

static proxy_err_t v1_port(proxy_t *p, unsigned c)
{
    if (c == ' ' || c == '\r') {
        /* the source port ends at a space, the destination port at the CR */
        if (p->_state == ST_V1_SPORT ? c != ' ' : c != '\r')
            return PROXY_ERR_V1_SYNTAX; /* a field missing, or one too many */
        if (p->_state == ST_V1_SPORT) {
            p->_r.src_port = (uint16_t)p->_num;
            next_field(p, ST_V1_DPORT);
        } else {
            p->_r.dst_port = (uint16_t)p->_num;
            next_field(p, ST_V1_LF);
        }
        return PROXY_ERR_NONE;
    }
    if (!is_digit(c))
        return PROXY_ERR_BAD_PORT;
    if (p->_flen > 0 && p->_num == 0)
        return PROXY_ERR_BAD_PORT; /* "01" */
    p->_num = p->_num * 10 + (c - '0');
    if (p->_num > 65535)
        return PROXY_ERR_BAD_PORT;
    p->_flen++;
    return PROXY_ERR_NONE;
}

/* One byte of a v1 line, at offset p->_pos. */
static proxy_err_t v1_byte(proxy_t *p, unsigned c)
{
    unsigned pos = p->_pos;
    if (p->_state == ST_V1_SIG) {
        /* "PROXY" names the protocol; the space after it is v1's syntax */
        if (c != (unsigned char)v1_sig[pos])
            return pos < sizeof v1_sig - 1 ? PROXY_ERR_NOT_PROXY : PROXY_ERR_V1_SYNTAX;
        if (pos == sizeof v1_sig - 1)
            next_field(p, ST_V1_PROTO);
        return PROXY_ERR_NONE;
    }
    if (p->_state == ST_V1_LF) {
        if (c != '\n')
            return PROXY_ERR_V1_SYNTAX; /* a CR alone does not end the line */
        p->_state = ST_DONE;
        return PROXY_ERR_NONE;
    }
    if (c == '\n')
        return PROXY_ERR_V1_SYNTAX; /* a bare LF does not either */
    if ((c < 0x20 && c != '\r') || c >= 0x7f)
        return PROXY_ERR_V1_SYNTAX; /* US-ASCII text only */
    /* an empty field: two spaces, or a CR where a field should start */
    if ((c == ' ' || c == '\r') && p->_flen == 0 && p->_state != ST_V1_TAIL)
        return PROXY_ERR_V1_SYNTAX;

    proxy_err_t e = PROXY_ERR_NONE;
    switch (p->_state) {
    case ST_V1_PROTO:
        e = v1_proto(p, c);
        break;
    case ST_V1_SRC:
    case ST_V1_DST:
        if (c == '\r')
            return PROXY_ERR_V1_SYNTAX; /* the line ends before its ports */
        e = p->_r.family == AF_INET ? v1_inet(p, c, p->_state == ST_V1_SRC ? p->_r.src : p->_r.dst)
                                    : v1_inet6(p, c, p->_state == ST_V1_SRC ? p->_r.src : p->_r.dst);
        break;
    case ST_V1_SPORT:
    case ST_V1_DPORT:
        e = v1_port(p, c);
        break;
    case ST_V1_TAIL:
        if (c == '\r')
            p->_state = ST_V1_LF;
        break;
    default:
        return PROXY_ERR_V1_SYNTAX; /* not a v1 state: step() does not call us */
    }
    if (e != PROXY_ERR_NONE)
        return e;
    /* The CR must come by the last but one octet: a line that has not
     * reached it cannot end in PROXY_V1_MAX, whatever follows. */
    if (p->_state != ST_V1_LF && pos >= PROXY_V1_MAX - 2)
        return PROXY_ERR_V1_TOO_LONG;
    return PROXY_ERR_NONE;
}

/* Octets of the address block a PROXY command's family byte announces; 0
 * for one that is refused. */
static unsigned v2_block(unsigned fam)
{
    switch (fam) {
    case 0x00:
        return 0; /* UNSPEC: no layout; the block is skipped whole */
    case 0x11:
        return 12; /* TCP over IPv4: 2 * 4 + 2 * 2 */
    case 0x21:
        return 36; /* TCP over IPv6: 2 * 16 + 2 * 2 */
    case 0x31:
        return 216; /* UNIX stream: 2 * 108 */
    default:
        return 0;
    }
}

static bool v2_family_ok(unsigned fam)
{
    return fam == 0x00 || fam == 0x11 || fam == 0x21 || fam == 0x31;
}

/* One of the 16 fixed octets, at offset p->_pos. */
static proxy_err_t v2_fixed(proxy_t *p, unsigned c)
{
    unsigned pos = p->_pos;
    if (pos < sizeof v2_sig) {
        if (c != v2_sig[pos])
            return PROXY_ERR_NOT_PROXY;
        return PROXY_ERR_NONE;
    }
    switch (pos) {
    case 12:
        if (c >> 4 != 2)
            return PROXY_ERR_V2_VERSION;
        if ((c & 15) > 1)
            return PROXY_ERR_V2_COMMAND;
        p->_cmd = (uint8_t)(c & 15);
        p->_r.local = p->_cmd == 0;
        return PROXY_ERR_NONE;
    case 13:
        if (p->_cmd == 0)
            return PROXY_ERR_NONE; /* LOCAL: "the family ... is ignored" */
        if (!v2_family_ok(c))
            return PROXY_ERR_FAMILY;
        p->_alen = (uint8_t)v2_block(c);
        if (c == 0x11)
            p->_r.family = AF_INET;
        else if (c == 0x21)
            p->_r.family = AF_INET6;
        else
            p->_r.local = true; /* UNSPEC, UNIX: no IP address to use */
        return PROXY_ERR_NONE;
    case 14:
        p->_len = (uint16_t)(c << 8);
        /* the high octet alone can already say the length is too large */
        return p->_len > PROXY_V2_MAX ? PROXY_ERR_V2_OVERSIZED : PROXY_ERR_NONE;
    default: /* 15 */
        p->_len = (uint16_t)(p->_len | c);
        if (p->_len > PROXY_V2_MAX)
            return PROXY_ERR_V2_OVERSIZED;
        if (p->_cmd == 1 && p->_len < p->_alen)
            return PROXY_ERR_V2_TOO_SHORT;
        if (p->_cmd == 0 || p->_alen == 0)
            p->_state = ST_V2_SKIP; /* LOCAL, UNSPEC: nothing in it is read */
        else
            p->_state = ST_V2_ADDR;
        return PROXY_ERR_NONE;
    }
}

/* One octet of the address block, at offset p->_pos: straight into the
 * result (IPv4 and IPv6 addresses arrive in network order, as they are
 * kept), or dropped (AF_UNIX paths are of no use to a TCP server). */
static void v2_addr(proxy_t *p, unsigned c)
{
    unsigned k = p->_pos - 16u;
    unsigned al = p->_r.family == AF_INET ? 4 : 16;
    if (p->_r.family == AF_INET || p->_r.family == AF_INET6) {
        if (k < al)
            p->_r.src[k] = (uint8_t)c;
        else if (k < 2 * al)
            p->_r.dst[k - al] = (uint8_t)c;
        else if (k < 2 * al + 2)
            p->_r.src_port = (uint16_t)(p->_r.src_port << 8 | c);
        else
            p->_r.dst_port = (uint16_t)(p->_r.dst_port << 8 | c);
    }
    if (k + 1 == p->_alen)
        next_field(p, ST_V2_TLV);
}

/*
 * One octet of a TLV's head (type, length high, length low), at offset
 * p->_pos. A head that would not fit before the declared end, or a value
 * longer than what is left, is found at the octet that shows it.
 */
static proxy_err_t v2_tlv(proxy_t *p, unsigned c)
{
    unsigned left = 16u + p->_len - p->_pos; /* this octet included */
    switch (p->_flen) {
    case 0:
        if (left < 3)
            return PROXY_ERR_V2_TLV;
        p->_flen = 1; /* the type: every one is skipped */
        break;
    case 1:
        p->_num = (uint32_t)c << 8;
        p->_flen = 2;
        break;
    default:
        p->_num |= c;
        p->_flen = 0;
        if (p->_num > left - 1)
            return PROXY_ERR_V2_TLV;
        break;
    }
    return PROXY_ERR_NONE;
}

static proxy_err_t step(proxy_t *p, unsigned c)
{
    switch (p->_state) {
    case ST_START: {
        unsigned accept = p->_accept ? p->_accept : PROXY_V1 | PROXY_V2;
        if (c == 'P' && (accept & PROXY_V1)) {
            p->_r.version = 1;
            p->_state = ST_V1_SIG;
            return v1_byte(p, c);
        }
        if (c == v2_sig[0] && (accept & PROXY_V2)) {
            p->_r.version = 2;
            p->_state = ST_V2_FIXED;
            return v2_fixed(p, c);
        }
        return PROXY_ERR_NOT_PROXY;
    }
    case ST_V2_FIXED:
        return v2_fixed(p, c);
    case ST_V2_ADDR:
        v2_addr(p, c);
        return PROXY_ERR_NONE;
    case ST_V2_TLV:
        return v2_tlv(p, c);
    case ST_V1_SIG:
    case ST_V1_PROTO:
    case ST_V1_SRC:
    case ST_V1_DST:
    case ST_V1_SPORT:
    case ST_V1_DPORT:
    case ST_V1_TAIL:
    case ST_V1_LF:
        return v1_byte(p, c);
    default:
        /* ST_V2_SKIP and ST_DONE: proxy_feed() skips or stops first */
        return PROXY_ERR_NOT_PROXY;
    }
}

enum proxy_status proxy_feed(proxy_t *p, const char *in, size_t len, size_t *consumed, proxy_result_t *out)
{
    *consumed = 0;
    if (p->_err)
        return PROXY_ERROR;
    if (p->_state == ST_DONE) {
        *out = p->_r;
        return PROXY_DONE;
    }
    size_t i = 0;
    while (i < len) {
        /* octets nobody reads go by in one step */
        size_t skip = 0;
        if (p->_state == ST_V2_SKIP)
            skip = 16u + p->_len - p->_pos;
        else if (p->_state == ST_V2_TLV && p->_flen == 0)
            skip = p->_num;
        if (skip) {
            size_t n = skip < len - i ? skip : len - i;
            i += n;
            p->_pos = (uint16_t)(p->_pos + n);
            if (p->_state == ST_V2_TLV)
                p->_num -= (uint32_t)n;
        } else {
            proxy_err_t e = step(p, (unsigned char)in[i]);
            if (e != PROXY_ERR_NONE) {
                p->_err = (uint8_t)e; /* _pos stays on the byte that showed it */
                return PROXY_ERROR;
            }
            i++;
            p->_pos++;
        }
        /* a v2 header ends after its declared length, wherever that falls */
        if ((p->_state == ST_V2_ADDR || p->_state == ST_V2_TLV || p->_state == ST_V2_SKIP) &&
            p->_pos == 16u + p->_len)
            p->_state = ST_DONE;
        if (p->_state == ST_DONE) {
            *consumed = i;
            *out = p->_r;
            return PROXY_DONE;
        }
    }
    *consumed = len;
    return PROXY_AGAIN;
}

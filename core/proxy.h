/*
 * proxy.h - parser for the PROXY protocol header, versions 1 and 2 (HAProxy's
 * "The PROXY protocol, Versions 1 & 2", 2020/03/05), which a trusted load
 * balancer sends first on each connection it relays, to tell the server who
 * the client really is. I/O-free: bytes in, one result out.
 *
 * The gateway reads the header before its greeting, on listeners configured
 * for it (the spec forbids guessing whether a header is there: a client that
 * could choose could spoof its address). The caller owns a proxy_t per
 * connection (zeroed, or proxy_init) and feeds it what arrives:
 *
 *     size_t n;
 *     proxy_result_t r;
 *     switch (proxy_feed(p, buf, len, &n, &r)) {
 *     case PROXY_AGAIN: break;                 // all n == len taken; read more
 *     case PROXY_DONE:  use(&r);               // the header was buf[..n) (its
 *                       smtp_feed(s, buf + n, len - n, ...);   // end); the rest is SMTP
 *                       break;
 *     case PROXY_ERROR: log(proxy_err_name(proxy_error(p))); close();
 *     }
 *
 * Exactness. The parser takes the header's bytes and not one more: a v1 line
 * ends at its LF, a v2 header after 16 + its declared length octets. What
 * follows in the same read (a pipelining client's EHLO, for one) belongs to
 * the SMTP engine. *consumed counts the bytes this call took.
 *
 * Early refusal. Every byte is judged once, when it arrives, in stream order,
 * so an error is found at the first byte that makes the header impossible
 * ("PROXX" fails at its fifth byte, a v1 line that has not reached its CR by
 * its 106th byte fails there, a v2 length over PROXY_V2_MAX fails when read,
 * a TLV too long for the block at its length's second octet): a garbage or
 * slow header is refused without waiting for bytes that could not change the
 * verdict. The one exception is an IPv6 address's finer grammar ("::" twice,
 * too many groups), judged by inet_pton() at the space that ends it, at most
 * 45 characters later. A header is accepted only whole: addresses are judged
 * early but handed out only with PROXY_DONE (the spec: decode nothing before
 * the CRLF / before the whole block is in).
 *
 * Split invariance. Results (the header, the error and the byte it was found
 * at) depend only on the bytes, never on how they were split into feeds: the
 * unit tests feed every sample at every split, the fuzz target at its own.
 *
 * v1 is parsed strictly, as the spec writes it: "PROXY", single spaces,
 * "TCP4" or "TCP6", dotted-quad IPv4 (four decimal octets 0-255, no leading
 * zeros) or IPv6 as inet_pton() reads it (at most 45 characters, checked for
 * its alphabet as it arrives, parsed when its space arrives), decimal ports
 * 0-65535 without leading zeros, CRLF (a bare LF, or a CR not followed by LF,
 * is an error); "PROXY UNKNOWN" then CRLF or a space and anything printable up
 * to the CRLF (ignored, as the spec says). No NUL, control or non-ASCII byte
 * anywhere. At most PROXY_V1_MAX octets, CRLF included.
 *
 * v2: the 12-octet signature, version 2, command LOCAL or PROXY, the family
 * and protocol byte, the 16-bit length (network order), then that many octets
 * of addresses and TLVs. With PROXY: TCP over IPv4 (0x11, 12 address octets)
 * or IPv6 (0x21, 36) gives addresses; UNSPEC (0x00: the whole block is
 * skipped, the spec says to ignore it) and UNIX stream (0x31, 216 skipped
 * octets) give a local result; the datagram protocols (0x12, 0x22, 0x32: this
 * is a stream server, a balancer that says otherwise is misconfigured; the
 * spec lets a receiver refuse what it would treat as UNSPEC) and every value
 * the spec leaves unassigned are refused. With LOCAL (a balancer's health
 * check) the family byte and the whole block are ignored, as the spec
 * requires. After the addresses, TLVs are not buffered: their framing (type,
 * 16-bit length, value) is followed as they stream past, and a TLV that runs
 * past the declared length is an error, as it is for recent HAProxy receivers;
 * their contents are skipped.
 *
 * Errors are sticky: the connection must be closed (nothing after a broken
 * header can be trusted to be SMTP). Nothing is allocated; the proxy_t holds
 * no pointer into the caller's input, so the input may be released as soon as
 * each call returns.
 */
#ifndef MXGATE_PROXY_H
#define MXGATE_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h> /* AF_INET, AF_INET6 */

/* Versions, as bits for proxy_init()'s `accept`. */
#define PROXY_V1 1u
#define PROXY_V2 2u

/* The longest v1 line, CRLF included (the spec's worst case, an UNKNOWN line
 * with two full-length IPv6 addresses and two 5-digit ports). */
#define PROXY_V1_MAX 107

/*
 * The largest v2 length accepted (addresses and TLVs, after the 16 fixed
 * octets); a larger one is refused as soon as its bytes are read. The field
 * allows 65535, but the spec designs every header to fit one minimal TCP
 * segment (536 octets; the largest address block, AF_UNIX, is 216), and the
 * TLVs real balancers send (ALPN, authority, unique id up to 128 octets, the
 * SSL summary, cloud endpoint ids) stay well inside that. 4096 leaves room
 * for a generous sender while bounding what a session reads before its
 * greeting. TLVs are never buffered, so the bound costs no memory either way:
 * it exists to refuse a nonsense length (a desynchronised or broken sender)
 * at once rather than read up to 64 KiB of it. It must fit the uint16_t
 * offsets below.
 */
#define PROXY_V2_MAX 4096

/* Why a header was refused; sticky, see proxy_error(). */
typedef enum proxy_err {
    PROXY_ERR_NONE = 0,
    PROXY_ERR_NOT_PROXY,     /* "not_proxy": the first bytes are not the
                              * signature of an accepted version ("PROXY" for
                              * v1, the 12-octet block for v2): a client that
                              * speaks SMTP, TLS, HTTP without a header */
    PROXY_ERR_V1_SYNTAX,     /* "bad_v1_syntax": no space after "PROXY", an
                              * unknown protocol token, a missing, empty or
                              * extra field, two spaces, a
                              * bare LF or lone CR, a NUL, control or
                              * non-ASCII byte */
    PROXY_ERR_BAD_ADDRESS,   /* "bad_address": a v1 address that is not one of
                              * its family (leading zero, octet over 255,
                              * wrong count, a character outside the family's
                              * alphabet, refused by inet_pton) */
    PROXY_ERR_BAD_PORT,      /* "bad_port": a v1 port with a non-digit, a
                              * leading zero or a value over 65535 */
    PROXY_ERR_V1_TOO_LONG,   /* "v1_too_long": no CRLF within PROXY_V1_MAX */
    PROXY_ERR_V2_VERSION,    /* "bad_v2_version": version nibble not 2 */
    PROXY_ERR_V2_COMMAND,    /* "bad_v2_command": command not LOCAL or PROXY */
    PROXY_ERR_FAMILY,        /* "unsupported_family": with PROXY, a family and
                              * protocol byte other than 0x00, 0x11, 0x21 and
                              * 0x31 (datagrams, unassigned values) */
    PROXY_ERR_V2_TOO_SHORT,  /* "v2_too_short": with PROXY, a length shorter
                              * than the family's address block */
    PROXY_ERR_V2_OVERSIZED,  /* "v2_oversized": a length over PROXY_V2_MAX */
    PROXY_ERR_V2_TLV,        /* "bad_v2_tlv": a TLV (its 3-octet head or its
                              * value) that runs past the declared length */
} proxy_err_t;

/* The error's name, for logs ("?" for a value outside the enum). Static. */
const char *proxy_err_name(proxy_err_t e);

/*
 * What a header said. Addresses and ports are in network order as the
 * sockets API wants them: src/dst hold 4 (AF_INET) or 16 (AF_INET6) octets,
 * the rest zero; ports are host-order numbers.
 *
 * `local` means: keep the socket's own addresses. It is set for v1 UNKNOWN,
 * v2 LOCAL (a health check from the balancer itself), and v2 PROXY with a
 * family that carries no IP address (UNSPEC, AF_UNIX stream); then family is
 * AF_UNSPEC (0) and the addresses and ports are zero, so a caller cannot use
 * stale or half-meaningful bytes by mistake.
 *
 * A proxy_result_t is a plain value, copied out: it points at nothing and
 * lives as long as the caller keeps it.
 */
typedef struct proxy_result {
    uint8_t version;  /* 1 or 2 */
    bool local;       /* keep the socket's addresses (see above) */
    uint8_t family;   /* AF_INET or AF_INET6 when !local, else 0 */
    uint8_t src[16];  /* the client's address (network order) */
    uint8_t dst[16];  /* the address it connected to, on the balancer */
    uint16_t src_port;
    uint16_t dst_port;
} proxy_result_t;

/*
 * One connection's parser state; all fields are private. 104 octets on x86-64:
 * it lives in each session only while the header is read. The only text kept
 * is the v1 field being read (the protocol token, or an IPv6 address until
 * its space arrives); an IPv4 address, a port and every v2 field are
 * converted as their bytes arrive, and the result is filled in place.
 */
typedef struct proxy {
    uint8_t _accept;     /* PROXY_V1 | PROXY_V2; 0 reads as both */
    uint8_t _state;      /* where the next byte goes (proxy.c's enum) */
    uint8_t _err;        /* proxy_err_t; non-zero: every feed fails */
    uint8_t _flen;       /* v1: octets of the current field; v2: octets of the
                          * current TLV's head seen (0-2) */
    uint8_t _dots;       /* v1 IPv4: dots seen in the address */
    uint8_t _digits;     /* v1 IPv4: digits of the current octet */
    uint8_t _cmd;        /* v2: 0 LOCAL, 1 PROXY */
    uint8_t _alen;       /* v2: octets of the address block (0, 12, 36, 216) */
    uint16_t _pos;       /* octets of the header judged; on error, the offset
                          * of the byte that revealed it */
    uint16_t _len;       /* v2: the declared length */
    uint32_t _num;       /* v1: the number being read; v2: TLV value octets
                          * still to skip */
    char _tok[46];       /* v1: the current field's text (INET6_ADDRSTRLEN) */
    proxy_result_t _r;   /* the result, filled as its bytes arrive */
} proxy_t;

/*
 * Start a connection afresh. `accept`: PROXY_V1, PROXY_V2 or both; with both
 * the first byte decides ('P': v1, CR: v2) and anything else is not_proxy at
 * once. 0 is taken as both, so a zeroed proxy_t is the same as
 * proxy_init(p, PROXY_V1 | PROXY_V2).
 */
static inline void proxy_init(proxy_t *p, unsigned accept)
{
    memset(p, 0, sizeof *p);
    p->_accept = (uint8_t)(accept & (PROXY_V1 | PROXY_V2));
}

enum proxy_status {
    PROXY_AGAIN, /* everything given was taken (*consumed == len); read more */
    PROXY_DONE,  /* *out holds the header; it ended at in[*consumed - 1]; the
                  * rest of `in` is the client's */
    PROXY_ERROR, /* malformed, or not a header (proxy_error()); nothing taken
                  * (*consumed == 0); close the connection */
};

/*
 * Parse `in[0..len)` as the next bytes of the connection. `in` may be NULL
 * when len is 0. *out is written only on PROXY_DONE (a copy: see
 * proxy_result_t). Once DONE, every later call returns DONE again with the
 * same result and takes nothing; once ERROR, every later call returns ERROR
 * and takes nothing, until proxy_init().
 */
enum proxy_status proxy_feed(proxy_t *p, const char *in, size_t len, size_t *consumed, proxy_result_t *out)
    __attribute__((warn_unused_result));

/* The reason for PROXY_ERROR; PROXY_ERR_NONE while the header is sound. */
static inline proxy_err_t proxy_error(const proxy_t *p)
{
    return (proxy_err_t)p->_err;
}

/*
 * Octets of the header taken so far: while reading, how much of it has
 * arrived (a connection that closes or times out with this non-zero cut its
 * header short); after DONE, the header's length; after ERROR, the offset of
 * the byte that revealed the error (0 for the first), for the log.
 */
static inline size_t proxy_offset(const proxy_t *p)
{
    return p->_pos;
}

#endif

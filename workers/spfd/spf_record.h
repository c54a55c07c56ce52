/*
 * spf_record.h - RFC 7208's record grammar, checked in the SPF helper before
 * libspf2 compiles a record.
 *
 * SPF records come from anyone's DNS, and libspf2 1.2.10 both accepts what
 * the RFC forbids (bad domain-specs, leading zeros in CIDR lengths, unknown
 * modifiers with bad macro syntax, a second redirect=) and evaluates some
 * valid records wrongly. So each record is checked here against the ABNF of
 * RFC 7208 section 12 (with the rules of section 4.6 and 7.1 that the ABNF
 * leaves to the text) and rewritten into an equivalent record that libspf2
 * evaluates correctly. This module does no I/O and no allocation, and holds
 * no state: bytes in, a verdict and bytes out, in a buffer the caller owns,
 * so it can be tested and fuzzed on its own.
 *
 * What the check refuses (each a permerror for the domain, section 4.6):
 *  - a byte outside printable ASCII and SP (tabs, CR, LF, DEL, anything
 *    >= 0x80), anywhere in the record;
 *  - a term that is neither a directive nor a modifier: unknown mechanism
 *    names, qualifiers on modifiers, a modifier name not starting with ALPHA;
 *  - mechanisms with arguments the grammar does not give them (`all:x`,
 *    `all/8`, `ptr/24`, `include` without a domain, `exists:x/24`, `ip4`
 *    with a dual CIDR, ...);
 *  - a domain-spec without a domain-end: it must end in "." toplabel (one
 *    trailing dot allowed) or in a macro-expand; a toplabel has a letter, or
 *    a hyphen between alphanumerics (`com`, `c0m`, `xn--zckzah`, `1-2`, not
 *    `123`, `-com`, `com-`, `a_b`);
 *  - CIDR lengths with a leading zero, or over 32 (ip4) and 128 (ip6);
 *    addresses inet_pton(3) does not parse (dotted quads without leading
 *    zeros, RFC 4291 text for IPv6);
 *  - macro strings with a "%" not followed by "{", "%", "_" or "-"; a
 *    macro-expand whose letter is not one of s l o d i p h v (either case:
 *    c, r and t belong to explanation text only, section 7.3), whose digit
 *    transformer is 0, has a leading zero or more than three digits, or
 *    whose delimiters are not among . - + , / _ =;
 *  - exp= or redirect= twice, or with a value that is not a domain-spec
 *    (modifier names are case-insensitive).
 *
 * What the rewrite produces from an accepted record, and why:
 *  - "v=spf1" in lower case, then each mechanism as written (qualifier and
 *    case kept), in order, separated by single spaces: the caller's copy
 *    owes nothing to the spacing of the DNS text (several spaces between
 *    terms and trailing spaces are valid, section 12);
 *  - ip4:<addr>/0 and ip6:<addr>/0 become the two halves of the address
 *    space (`ip4:0.0.0.0/1 ip4:128.0.0.0/1`, `ip6:::/1 ip6:8000::/1`, each
 *    with the qualifier), the same set: libspf2 reads a CIDR length of 0 as
 *    "none given" and would match one address. `a/0` and `mx/0` have no such
 *    equivalent and go through unchanged (libspf2 then fails the record);
 *  - exp= after the mechanisms, then redirect= last, dropped when the
 *    record has an "all" (section 5.1: redirect is ignored then, wherever it
 *    stands): libspf2 evaluates redirect= where it stands;
 *  - unknown modifiers checked and then left out: they have no effect
 *    (section 6), and libspf2 refuses some names the RFC allows.
 * The rewrite is a normal form: rewriting its output gives the same text.
 */
#ifndef MXGATE_SPF_RECORD_H
#define MXGATE_SPF_RECORD_H

#include <stdbool.h>
#include <stddef.h>

/*
 * The output capacity spf_record_rewrite() needs for a record of len octets
 * (strlen, "v=spf1" included): every expansion (an ip4 or ip6 /0 into two
 * terms) stays under three times its own input, plus room for the NUL.
 */
#define SPF_RECORD_OUT_CAP(len) (3 * (size_t)(len) + 64)

/*
 * True when txt is an SPF version 1 record (section 4.5): it starts with
 * "v=spf1", in any case, followed by a space or its end. A record for which
 * this is false is not an SPF record at all (not a permerror): the caller
 * skips it when selecting the domain's record.
 */
bool spf_record_is_spf(const char *txt);

/*
 * Checks rec, a NUL-terminated record for which spf_record_is_spf() is
 * true (any other text is refused as not an SPF record), and writes its
 * rewrite (see above) into out, NUL-terminated.
 * cap must be at least SPF_RECORD_OUT_CAP(strlen(rec)), or the record is
 * refused as too long; nothing is ever written at or past out + cap.
 * Returns NULL on success, else a static string saying why the record is a
 * permerror (for a log line or a reply text); out then holds "" (when
 * cap > 0). Reentrant; rec and out must not overlap.
 */
const char *spf_record_rewrite(const char *rec, char *out, size_t cap) __attribute__((warn_unused_result));

#endif

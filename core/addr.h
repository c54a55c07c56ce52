/*
 * addr.h - RFC 5321 paths and MAIL/RCPT parameters, parsed in place.
 *
 * Nothing is copied or unquoted: the parts of a path are slices into the
 * command line, valid as long as the line is. A quoted local part stays in
 * its quoted form, which is how it must be forwarded anyway.
 */
#ifndef MXGATE_ADDR_H
#define MXGATE_ADDR_H

#include <stdbool.h>
#include <stdint.h>

#include "slice.h"

/* RFC 5321 4.5.3.1: local part 64, domain 255, path 256 octets. */
#define ADDR_LOCAL_MAX 64
#define ADDR_DOMAIN_MAX 255
#define ADDR_PATH_MAX 256

typedef struct smtp_path {
    slice_t mailbox; /* "local@domain", source route stripped; empty for <> */
    slice_t local;   /* as written, quotes included */
    slice_t domain;  /* a domain or an address literal "[...]" */
    bool null;       /* the null reverse-path <> */
    bool utf8;       /* has octets >= 0x80 (only valid with SMTPUTF8) */
    bool postmaster; /* RCPT TO:<postmaster> with no domain (RFC 5321 4.5.1) */
} smtp_path_t;

enum addr_status {
    ADDR_OK = 0,
    ADDR_SYNTAX,   /* 501 5.1.3 / 5.1.7 */
    ADDR_UTF8,     /* non-ASCII without SMTPUTF8: 553 5.6.7 */
    ADDR_TOO_LONG, /* 501 5.1.3 */
};

enum addr_kind { ADDR_REVERSE = 0, ADDR_FORWARD = 1 };

/*
 * Parse "<...>" at the start of s. On ADDR_OK, *used is the number of bytes
 * taken (through '>'). `why` gets a static reason on failure.
 */
enum addr_status addr_parse_path(slice_t s, enum addr_kind kind, bool allow_utf8, smtp_path_t *out,
                                 size_t *used, const char **why) __attribute__((warn_unused_result));

/* Is s a well-formed UTF-8 sequence (no overlongs, surrogates, > U+10FFFF)? */
bool addr_utf8_valid(slice_t s);

/* The length of the UTF-8 character at p[0..n), n > 0 (RFC 3629: no
 * overlong form, no surrogate, nothing over U+10FFFF; ASCII is 1), or 0. */
size_t addr_utf8_seq(const unsigned char *p, size_t n);

/* Is s a syntactically valid domain or address literal (for HELO/EHLO)? */
bool addr_domain_valid(slice_t s, bool allow_utf8);

enum smtp_body_type { BODY_UNSPEC = 0, BODY_7BIT, BODY_8BITMIME };

typedef struct smtp_mail_params {
    uint64_t size; /* SIZE=, 0 when absent */
    uint8_t body;  /* enum smtp_body_type */
    bool has_size;
    bool smtputf8;
} smtp_mail_params_t;

enum param_status {
    PARAM_OK = 0,
    PARAM_SYNTAX,  /* 501 5.5.4 */
    PARAM_UNKNOWN, /* 555 5.5.4 */
};

/* The text after the path of MAIL FROM: " SIZE=123 BODY=8BITMIME". */
enum param_status addr_parse_mail_params(slice_t s, smtp_mail_params_t *out, const char **why)
    __attribute__((warn_unused_result));

/* RCPT TO: takes no parameters we advertise (no DSN): any is unknown. */
enum param_status addr_parse_rcpt_params(slice_t s, const char **why)
    __attribute__((warn_unused_result));

#endif

/*
 * spf_proto.h - the wire between a worker and the SPF helper process.
 *
 * libspf2 blocks on DNS and has a history of memory-safety bugs, so it runs
 * in a helper process of its own (workers/spfd/spfd.c): unprivileged, no
 * listening sockets, a thread pool sized for DNS waits. Each worker holds one
 * end of an AF_UNIX SOCK_SEQPACKET socketpair to it; one datagram is one
 * request or one reply, so neither side ever parses a stream. Replies come
 * back in any order and carry the request's id; a worker drops a reply whose
 * id it no longer waits for (a check that timed out, a session gone).
 *
 * The id is 64 bits, opaque to the helper, which echoes it whole: the worker
 * puts a generation number in it beside the session's slot, so a reply that
 * arrives after its timeout can never reach a newer session in that slot.
 * It comes first, so even a malformed request's reply can carry it.
 *
 * All integers are in host byte order: both ends are the same binary on the
 * same machine (the helper is this executable, started with --spf-helper).
 * Every padding octet is a named field sent as zero, so no datagram carries
 * uninitialised memory and the layout is the same for every compiler; the
 * static assertions below hold it there.
 */
#ifndef MXGATE_SPF_PROTO_H
#define MXGATE_SPF_PROTO_H

#include <stdint.h>

#include "spf.h" /* enum spf_result */

#define SPF_PROTO_MAX 4096   /* largest datagram either way */
#define SPF_NAME_MAX 255     /* HELO identity octets kept */
#define SPF_SENDER_MAX 512   /* MAIL FROM mailbox octets kept */
#define SPF_RECEIVED_MAX 1024 /* Received-SPF value octets */
#define SPF_COMMENT_MAX 512  /* explanation octets, for a reject's text */

/*
 * Request: this header, then helo_len octets of the HELO/EHLO identity, then
 * sender_len octets of the MAIL FROM mailbox (local@domain, no brackets;
 * empty for the null sender, in which case the helper checks the HELO
 * identity as RFC 7208 section 2.3 says, with postmaster@helo as sender).
 */
typedef struct spf_req {
    uint64_t id;     /* echoed in the reply, all 64 bits */
    uint8_t family;  /* 4 or 6 */
    uint8_t flags;   /* 0 */
    uint16_t helo_len;
    uint16_t sender_len;
    uint16_t _pad;
    uint8_t addr[16]; /* client address: 4 octets for IPv4, 16 for IPv6 */
} spf_req_t;

/*
 * Reply: this header, then received_len octets of the Received-SPF header's
 * value (RFC 7208 section 9.1, e.g. `pass (mx.example: domain of
 * u@example.org designates 192.0.2.1 as permitted sender) client-ip=...;
 * envelope-from=...; helo=...;`: one line, no CRLF, no "Received-SPF:"),
 * then comment_len octets of the explanation for a reject's text (may be
 * empty). Printable ASCII only, so it can go into a header and a reply.
 */
typedef struct spf_res {
    uint64_t id;     /* the request's */
    uint8_t result;  /* enum spf_result */
    uint8_t _pad;
    uint16_t received_len;
    uint16_t comment_len;
    uint16_t _pad2;
    uint32_t ttl;    /* seconds the result may be cached: the smallest TTL of
                        the DNS answers it rests on; 0 for temperror */
    uint32_t _pad3;  /* 0: rounds the header to the id's alignment */
} spf_res_t;

/* The fields add up to exactly these sizes: no padding the compiler adds. */
_Static_assert(sizeof(spf_req_t) == 32, "spf_req_t has unnamed padding");
_Static_assert(sizeof(spf_res_t) == 24, "spf_res_t has unnamed padding");

#endif

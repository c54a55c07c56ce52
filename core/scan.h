/*
 * scan.h - the data-phase scanner: finds the end of a DATA body and checks it
 * on the way, without copying it.
 *
 * The body stays in SMTP wire form (dot-stuffed, CRLF lines): it is forwarded
 * as received, never unstuffed and restuffed. The scanner answers three
 * questions per call: how many input bytes it used, which bytes to forward,
 * and whether CRLF "." CRLF was reached. End of data is exactly that marker;
 * the CRLF that ended the DATA command counts as the first CRLF, so ".\r\n"
 * right after DATA is an empty body.
 *
 * Bare LF and bare CR (a CR not followed by LF, an LF not preceded by CR) are
 * how SMTP smuggling works (CVE-2023-51766 class). SCAN_BARE_REJECT (default)
 * latches an error and keeps looking for the real end of data; the message
 * must then be refused. SCAN_BARE_NORMALIZE turns each bare CR or LF into
 * CRLF and dot-stuffs a line that would then start with a dot, so that no
 * downstream can find an end of data where mxgate did not.
 *
 * Clean text is checked with SIMD masks (AVX-512, AVX2 or SSE2), 256 or 64
 * bytes at a time; anything unusual (the end marker, a bare CR/LF, a long
 * line) is handed to the exact byte-wise machine.
 */
#ifndef MXGATE_SCAN_H
#define MXGATE_SCAN_H

#include <stdbool.h>
#include <stdint.h>

#include "slice.h"

enum scan_bare { SCAN_BARE_REJECT = 0, SCAN_BARE_NORMALIZE = 1 };

/* Latched errors: set once, kept until scan_init. */
enum scan_error {
    SCAN_ERR_BARE_LF = 1u << 0,
    SCAN_ERR_BARE_CR = 1u << 1,
    SCAN_ERR_LINE_TOO_LONG = 1u << 2,
    SCAN_ERR_SIZE = 1u << 3,
};

typedef struct scan {
    uint64_t size;         /* body octets forwarded so far (wire form) */
    uint64_t size_max;     /* 0: unlimited */
    uint32_t line_max;     /* octets per line including CRLF; 0: unlimited */
    uint32_t line_len;     /* octets of the current line so far */
    uint8_t bare;          /* enum scan_bare */
    uint8_t errors;        /* enum scan_error bits */
    uint8_t _state;
    uint8_t _pad;
} scan_t;

typedef struct scan_result {
    slice_t body;    /* bytes to forward: inside the input, or a static string */
    size_t consumed; /* input bytes used (may be 0 when body is a static insert) */
    bool end;        /* the end-of-data marker was consumed; body excludes it */
} scan_result_t;

/* Start a body. The position is "at the start of a line". */
void scan_init(scan_t *sc, uint64_t size_max, uint32_t line_max, enum scan_bare bare);

/*
 * Scan in[0..len). Returns with res->end set, or having consumed everything,
 * or early to emit a static insert (normalize mode) or after a line-start
 * dot. Call again with the unconsumed rest. Body slices inside `in` are valid
 * as long as `in` is; static ones forever. Once an error is latched no more
 * body is returned (the message is lost anyway), but the end is still found.
 */
void scan_step(scan_t *sc, const char *in, size_t len, scan_result_t *res);

/*
 * The SIMD layer in use: "avx512", "avx2", "sse2" (x86-64) or "portable".
 * The best one the CPU runs is chosen at the first scan_step. scan_use()
 * takes another instead, for tests and benchmarks that compare them; it
 * returns false, and changes nothing, when the CPU cannot run that one or
 * there is none of that name. Not while another thread scans.
 */
const char *scan_impl(void);
bool scan_use(const char *name);

#endif

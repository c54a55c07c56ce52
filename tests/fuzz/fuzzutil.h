/*
 * fuzzutil.h - what the libFuzzer targets share: the check that traps with
 * its location, the decoding of fuzzer bytes into split points, and the
 * comparison of two event logs (testutil.h) with a report on mismatch.
 */
#ifndef MXGATE_FUZZUTIL_H
#define MXGATE_FUZZUTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "testutil.h"

/*
 * Split points in (0, len) as cumulative chunk lengths, cycling through
 * lens[0..nlen): a byte below 0x80 gives 1..16 octets, the others 1..1017.
 * Returns how many were written (at most max; none when nlen is 0).
 */
static inline size_t fuzz_splits(const uint8_t *lens, size_t nlen, size_t len, size_t *splits, size_t max)
{
    size_t n = 0, pos = 0;
    for (size_t k = 0; nlen && n < max; k++) {
        uint8_t b = lens[k % nlen];
        pos += b < 0x80 ? (size_t)1 + (b & 15) : (size_t)1 + (size_t)(b - 0x80) * 8;
        if (pos >= len)
            break;
        splits[n++] = pos;
    }
    return n;
}

/*
 * What follows a target's header at data[off]: nlen chunk-length bytes, then
 * the bytes to feed (*in, *len; at most max of them), and the split points
 * the chunk lengths give (fuzz_splits; *nsplits of them, at most
 * max_splits). False when the input is too short to hold the chunk lengths.
 */
static inline bool fuzz_rest(const uint8_t *data, size_t size, size_t off, size_t nlen, size_t max, const char **in,
                             size_t *len, size_t *splits, size_t max_splits, size_t *nsplits)
{
    if (size < off + nlen)
        return false;
    *in = (const char *)data + off + nlen;
    *len = size - off - nlen;
    if (*len > max)
        *len = max;
    *nsplits = fuzz_splits(data + off, nlen, *len, splits, max_splits);
    return true;
}

/* Two logs that must be equal; on a difference print both and trap. */
static inline void fuzz_same_or_trap(const char *what, const tu_log_t *a, const tu_log_t *b)
{
    if (a->len == b->len && (a->len == 0 || memcmp(a->buf, b->buf, a->len) == 0))
        return;
    fprintf(stderr, "%s differ\n--- first:\n%.*s\n--- second:\n%.*s\n", what, (int)a->len, a->buf ? a->buf : "",
            (int)b->len, b->buf ? b->buf : "");
    __builtin_trap();
}

#endif

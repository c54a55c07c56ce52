/*
 * splits.h - for the cmocka tests of the I/O-free readers (dsreply, rspamd):
 * an input must give one log however it is cut into feeds. Include after
 * cmocka.h and testutil.h.
 */
#ifndef MXGATE_SPLITS_H
#define MXGATE_SPLITS_H

#include "testutil.h"

/* Feeds in[0, len) to the reader under test cut at splits[0..nsplits)
 * (offsets, ascending) and returns its log. */
typedef tu_log_t tu_split_drive_fn(const char *in, size_t len, const size_t *splits, size_t nsplits);

/* in fed whole, byte by byte, at every single cut and, when it is short, at
 * every pair of cuts: each log must equal the whole feed's, which is
 * returned (the caller frees it). */
static inline tu_log_t tu_check_splits(tu_split_drive_fn *drive, const char *in, size_t len)
{
    tu_log_t whole = drive(in, len, NULL, 0);
    size_t *cuts = malloc((len ? len : 1) * sizeof *cuts);
    assert_non_null(cuts);
    for (size_t i = 1; i < len; i++)
        cuts[i - 1] = i;
    tu_log_t bytes = drive(in, len, cuts, len ? len - 1 : 0);
    if (strcmp(bytes.buf, whole.buf) != 0)
        fail_msg("byte by byte: got\n%s--- want\n%s", bytes.buf, whole.buf);
    tu_free_log(&bytes);
    for (size_t i = 0; i <= len; i++) {
        size_t one[1] = { i };
        tu_log_t l = drive(in, len, one, 1);
        if (strcmp(l.buf, whole.buf) != 0)
            fail_msg("cut at %zu: got\n%s--- want\n%s", i, l.buf, whole.buf);
        tu_free_log(&l);
    }
    if (len <= 80) {
        for (size_t i = 1; i < len; i++) {
            for (size_t j = i; j < len; j++) {
                size_t two[2] = { i, j };
                tu_log_t l = drive(in, len, two, 2);
                if (strcmp(l.buf, whole.buf) != 0)
                    fail_msg("cuts at %zu,%zu: got\n%s--- want\n%s", i, j, l.buf, whole.buf);
                tu_free_log(&l);
            }
        }
    }
    free(cuts);
    return whole;
}

#endif

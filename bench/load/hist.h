/*
 * hist.h - a small HDR-style log-linear histogram of microsecond values.
 *
 * Values 0 .. 255 have a bucket each (exact). Above, every power of two
 * [2^k, 2^(k+1)) is split into HIST_SUB (128) equal sub-buckets, so a
 * bucket's width is at most 1/128 of its lowest value: any value reported
 * for a bucket (its highest equivalent value) is within 0.79 % of every
 * value recorded into it. Values above HIST_MAX (2^36 - 1 us, about 19
 * hours) are clamped to HIST_MAX.
 *
 * One thread records (single writer); other threads may read at any time:
 * every field is a relaxed atomic, written with a plain load + store (a
 * plain mov on x86-64), so a reader sees each field torn-free. A reader's
 * snapshot (hist_merge into a private histogram) may be off by the few
 * values recorded while it read; counts are taken from the buckets, so a
 * snapshot is always self-consistent for percentiles.
 */
#ifndef MXLOAD_HIST_H
#define MXLOAD_HIST_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define HIST_SUB_BITS 7u
#define HIST_SUB (1u << HIST_SUB_BITS)         /* sub-buckets per power of two: 128 */
#define HIST_LINEAR (2u * HIST_SUB)            /* values below this have a bucket each: 256 */
#define HIST_MAX_BITS 36u
#define HIST_MAX ((UINT64_C(1) << HIST_MAX_BITS) - 1) /* about 19 hours in microseconds */
#define HIST_BUCKETS (HIST_LINEAR + (HIST_MAX_BITS - HIST_SUB_BITS - 1u) * HIST_SUB) /* 3840 */

typedef struct hist {
    _Atomic uint64_t c[HIST_BUCKETS];
    _Atomic uint64_t sum; /* of the recorded (clamped) values */
    _Atomic uint64_t min; /* UINT64_MAX when empty */
    _Atomic uint64_t max;
} hist_t;

void hist_init(hist_t *h);

/* The bucket a value falls into, and the range of values that bucket holds. */
size_t hist_index(uint64_t v);
uint64_t hist_lowest(size_t idx);
uint64_t hist_highest(size_t idx);

/* O(1). Values above HIST_MAX count as HIST_MAX. Single writer only. */
void hist_record(hist_t *h, uint64_t v);

/* dst += src (dst must not be written by anyone else meanwhile). */
void hist_merge(hist_t *dst, const hist_t *src);

/* dst = a - b bucket by bucket, for the values recorded between two
 * snapshots (b taken before a). min and max of the result are those of
 * the buckets that hold values (highest equivalent values), sum is a - b. */
void hist_diff(hist_t *dst, const hist_t *a, const hist_t *b);

uint64_t hist_count(const hist_t *h);
uint64_t hist_min(const hist_t *h); /* 0 when empty */
uint64_t hist_max(const hist_t *h); /* 0 when empty */
double hist_mean(const hist_t *h);  /* 0 when empty */

/* The value at percentile p (0..100): the highest equivalent value of the
 * bucket holding the ceil(p/100 * count)-th smallest value, but never above
 * the recorded maximum nor below the recorded minimum. p <= 0 gives the
 * minimum, p >= 100 the maximum; 0 when empty. */
uint64_t hist_percentile(const hist_t *h, double p);

#endif

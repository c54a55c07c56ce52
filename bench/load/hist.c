/*
 * hist.c - the log-linear histogram of hist.h.
 */
#include "hist.h"

#define LD(x) atomic_load_explicit(&(x), memory_order_relaxed)
#define ST(x, v) atomic_store_explicit(&(x), (v), memory_order_relaxed)

void hist_init(hist_t *h)
{
    for (size_t i = 0; i < HIST_BUCKETS; i++)
        ST(h->c[i], 0);
    ST(h->sum, 0);
    ST(h->min, UINT64_MAX);
    ST(h->max, 0);
}

size_t hist_index(uint64_t v)
{
    if (v > HIST_MAX)
        v = HIST_MAX;
    if (v < HIST_LINEAR)
        return (size_t)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v); /* >= 8 */
    unsigned e = msb - HIST_SUB_BITS;                   /* >= 1: the bucket width is 2^e */
    uint64_t m = v >> e;                                /* HIST_SUB .. 2*HIST_SUB-1 */
    return HIST_LINEAR + (size_t)(e - 1u) * HIST_SUB + (size_t)(m - HIST_SUB);
}

uint64_t hist_lowest(size_t idx)
{
    if (idx < HIST_LINEAR)
        return idx;
    size_t k = idx - HIST_LINEAR;
    unsigned e = (unsigned)(k / HIST_SUB) + 1u;
    uint64_t m = (uint64_t)(k % HIST_SUB) + HIST_SUB;
    return m << e;
}

uint64_t hist_highest(size_t idx)
{
    if (idx < HIST_LINEAR)
        return idx;
    size_t k = idx - HIST_LINEAR;
    unsigned e = (unsigned)(k / HIST_SUB) + 1u;
    uint64_t m = (uint64_t)(k % HIST_SUB) + HIST_SUB;
    return ((m + 1u) << e) - 1u;
}

void hist_record(hist_t *h, uint64_t v)
{
    if (v > HIST_MAX)
        v = HIST_MAX;
    size_t i = hist_index(v);
    ST(h->c[i], LD(h->c[i]) + 1u);
    ST(h->sum, LD(h->sum) + v);
    if (v < LD(h->min))
        ST(h->min, v);
    if (v > LD(h->max))
        ST(h->max, v);
}

void hist_merge(hist_t *dst, const hist_t *src)
{
    for (size_t i = 0; i < HIST_BUCKETS; i++) {
        uint64_t n = LD(src->c[i]);
        if (n)
            ST(dst->c[i], LD(dst->c[i]) + n);
    }
    ST(dst->sum, LD(dst->sum) + LD(src->sum));
    uint64_t mn = LD(src->min), mx = LD(src->max);
    if (mn < LD(dst->min))
        ST(dst->min, mn);
    if (mx > LD(dst->max))
        ST(dst->max, mx);
}

void hist_diff(hist_t *dst, const hist_t *a, const hist_t *b)
{
    uint64_t mn = UINT64_MAX, mx = 0;
    for (size_t i = 0; i < HIST_BUCKETS; i++) {
        uint64_t x = LD(a->c[i]), y = LD(b->c[i]);
        uint64_t n = x > y ? x - y : 0;
        ST(dst->c[i], n);
        if (n) {
            if (mn == UINT64_MAX)
                mn = hist_lowest(i);
            mx = hist_highest(i);
        }
    }
    uint64_t sa = LD(a->sum), sb = LD(b->sum);
    ST(dst->sum, sa > sb ? sa - sb : 0);
    ST(dst->min, mn);
    ST(dst->max, mx);
}

uint64_t hist_count(const hist_t *h)
{
    uint64_t n = 0;
    for (size_t i = 0; i < HIST_BUCKETS; i++)
        n += LD(h->c[i]);
    return n;
}

uint64_t hist_min(const hist_t *h)
{
    uint64_t m = LD(h->min);
    return m == UINT64_MAX ? 0 : m;
}

uint64_t hist_max(const hist_t *h)
{
    return LD(h->max);
}

double hist_mean(const hist_t *h)
{
    uint64_t n = hist_count(h);
    return n ? (double)LD(h->sum) / (double)n : 0.0;
}

uint64_t hist_percentile(const hist_t *h, double p)
{
    uint64_t n = hist_count(h);
    if (n == 0)
        return 0;
    if (p <= 0.0)
        return hist_min(h);
    if (p >= 100.0)
        return hist_max(h);
    /* ceil, less a hair: 99.9 % of 1000 is the 999th value, not the 1000th
     * by a rounding error (and no libm: the unit test links without it) */
    double want = p / 100.0 * (double)n - 1e-7;
    uint64_t rank = (uint64_t)want;
    if ((double)rank < want)
        rank++;
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    uint64_t seen = 0;
    for (size_t i = 0; i < HIST_BUCKETS; i++) {
        seen += LD(h->c[i]);
        if (seen >= rank) {
            uint64_t v = hist_highest(i);
            uint64_t mx = hist_max(h), mn = hist_min(h);
            if (v > mx)
                v = mx;
            if (v < mn)
                v = mn;
            return v;
        }
    }
    return hist_max(h);
}

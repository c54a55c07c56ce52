/*
 * test_hist.c - unit tests for mxgate-load's log-linear latency histogram
 * (bench/load/hist.[ch]), included whole: it is not part of libmxcore.
 *
 * Covers, against the header contract:
 *   1. the buckets: contiguous, covering 0 .. HIST_MAX, every value inside
 *      the bucket hist_index() names, exact below 256, each bucket at most
 *      1/128 of its lowest value wide, the edges of every power of two;
 *   2. percentiles on known distributions (exact small values, uniform,
 *      a heavy-tailed one from a seeded PRNG) against the sorted values,
 *      within the relative error bound;
 *   3. merge equals recording both sets into one histogram; diff gives the
 *      values recorded between two snapshots;
 *   4. extremes: empty, 0, 1, one hour, HIST_MAX, values above it clamped,
 *      a single value, p0 and p100.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../bench/load/hist.c"

#define REL_ERR (1.0 / 128.0) /* the documented bound; under the 1 % asked for */

static hist_t *new_hist(void)
{
    hist_t *h = malloc(sizeof *h);
    assert_non_null(h);
    hist_init(h);
    return h;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The exact percentile of sorted values, by the same rank rule. */
static uint64_t exact_pct(const uint64_t *sorted, size_t n, double p)
{
    if (p <= 0)
        return sorted[0];
    if (p >= 100)
        return sorted[n - 1];
    double want = p / 100.0 * (double)n - 1e-7;
    size_t rank = (size_t)want;
    if ((double)rank < want)
        rank++;
    if (rank < 1)
        rank = 1;
    return sorted[rank - 1];
}

static void assert_close(uint64_t got, uint64_t want, const char *what, double p)
{
    double err = want ? ((double)got - (double)want) / (double)want : (double)got;
    if (err < 0)
        err = -err;
    if (err > REL_ERR) {
        fail_msg("%s p%.3f: got %llu, exact %llu (relative error %.5f > %.5f)", what, p, (unsigned long long)got,
                 (unsigned long long)want, err, REL_ERR);
    }
    /* the reported value is the bucket's highest equivalent: never below */
    assert_true(got >= want);
}

static uint64_t rng(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void check_distribution(const char *what, uint64_t *v, size_t n)
{
    hist_t *h = new_hist();
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        hist_record(h, v[i]);
        sum += v[i];
    }
    qsort(v, n, sizeof *v, cmp_u64);
    static const double ps[] = { 0, 0.1, 1, 10, 25, 50, 75, 90, 95, 99, 99.9, 99.99, 100 };
    for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++)
        assert_close(hist_percentile(h, ps[k]), exact_pct(v, n, ps[k]), what, ps[k]);
    assert_int_equal(hist_count(h), n);
    assert_int_equal(hist_min(h), v[0]);
    assert_int_equal(hist_max(h), v[n - 1]);
    double mean = (double)sum / (double)n;
    assert_true(hist_mean(h) > mean - 1e-6 * mean - 1e-9 && hist_mean(h) < mean + 1e-6 * mean + 1e-9);
    free(h);
}

/* ---- 1. buckets ---- */

static void test_buckets_contiguous(void **state)
{
    (void)state;
    assert_int_equal(hist_lowest(0), 0);
    for (size_t i = 0; i + 1 < HIST_BUCKETS; i++) {
        assert_true(hist_lowest(i) <= hist_highest(i));
        if (hist_highest(i) + 1 != hist_lowest(i + 1))
            fail_msg("gap or overlap after bucket %zu: highest %llu, next lowest %llu", i,
                     (unsigned long long)hist_highest(i), (unsigned long long)hist_lowest(i + 1));
        assert_int_equal(hist_index(hist_lowest(i)), i);
        assert_int_equal(hist_index(hist_highest(i)), i);
    }
    assert_int_equal(hist_highest(HIST_BUCKETS - 1), HIST_MAX);
    assert_int_equal(hist_index(HIST_MAX), HIST_BUCKETS - 1);
    assert_int_equal(HIST_BUCKETS, 3840);
}

static void test_buckets_exact_below_256(void **state)
{
    (void)state;
    for (uint64_t v = 0; v < 256; v++) {
        assert_int_equal(hist_index(v), v);
        assert_int_equal(hist_lowest(v), v);
        assert_int_equal(hist_highest(v), v);
    }
    assert_int_equal(hist_index(256), 256);
    assert_int_equal(hist_lowest(256), 256);
    assert_int_equal(hist_highest(256), 257); /* from 256 on, buckets are 2 wide */
}

static void test_buckets_width_bound(void **state)
{
    (void)state;
    for (size_t i = HIST_LINEAR; i < HIST_BUCKETS; i++) {
        uint64_t lo = hist_lowest(i), hi = hist_highest(i);
        double width = (double)(hi - lo + 1);
        assert_true(width / (double)lo <= REL_ERR + 1e-12);
    }
}

static void test_buckets_powers_of_two(void **state)
{
    (void)state;
    /* every value around each power of two lands in a bucket that holds it,
     * and 2^k starts a bucket */
    for (unsigned k = 1; k < HIST_MAX_BITS; k++) {
        uint64_t p = UINT64_C(1) << k;
        if (p >= HIST_LINEAR)
            assert_int_equal(hist_lowest(hist_index(p)), p);
        for (int d = -3; d <= 3; d++) {
            uint64_t v = p + (uint64_t)(int64_t)d;
            if (v > HIST_MAX)
                continue;
            size_t i = hist_index(v);
            assert_true(hist_lowest(i) <= v && v <= hist_highest(i));
        }
    }
    /* and a sample of everything else */
    uint64_t s = 7;
    for (int n = 0; n < 200000; n++) {
        uint64_t v = rng(&s) >> (28 + rng(&s) % 36);
        if (v > HIST_MAX)
            v = HIST_MAX;
        size_t i = hist_index(v);
        assert_true(i < HIST_BUCKETS);
        assert_true(hist_lowest(i) <= v && v <= hist_highest(i));
    }
    /* monotonic over a dense range */
    size_t last = 0;
    for (uint64_t v = 0; v < (1u << 20); v++) {
        size_t i = hist_index(v);
        assert_true(i == last || i == last + 1);
        last = i;
    }
}

/* ---- 2. distributions ---- */

static void test_small_values_exact(void **state)
{
    (void)state;
    hist_t *h = new_hist();
    for (uint64_t v = 1; v <= 100; v++)
        hist_record(h, v);
    assert_int_equal(hist_percentile(h, 50), 50);
    assert_int_equal(hist_percentile(h, 90), 90);
    assert_int_equal(hist_percentile(h, 99), 99);
    assert_int_equal(hist_percentile(h, 99.9), 100);
    assert_int_equal(hist_percentile(h, 1), 1);
    assert_int_equal(hist_percentile(h, 0), 1);
    assert_int_equal(hist_percentile(h, 100), 100);
    assert_true(hist_mean(h) == 50.5);
    free(h);
}

static void test_uniform(void **state)
{
    (void)state;
    size_t n = 100000;
    uint64_t *v = malloc(n * sizeof *v);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = i + 1; /* 1 .. 100000 us */
    check_distribution("uniform", v, n);
    free(v);
}

static void test_heavy_tail(void **state)
{
    (void)state;
    size_t n = 200000;
    uint64_t *v = malloc(n * sizeof *v);
    assert_non_null(v);
    uint64_t s = 42;
    for (size_t i = 0; i < n; i++) {
        /* log-uniform over 1 us .. about 1 hour: every scale gets values */
        double u = (double)(rng(&s) >> 11) / 9007199254740992.0;
        double x = 1.0;
        for (int k = 0; k < (int)(u * 31.7); k++)
            x *= 2;
        v[i] = (uint64_t)(x * (1.0 + (double)(rng(&s) % 1000) / 1000.0));
    }
    check_distribution("heavy tail", v, n);
    free(v);
}

static void test_bimodal(void **state)
{
    (void)state;
    size_t n = 10000;
    uint64_t *v = malloc(n * sizeof *v);
    assert_non_null(v);
    uint64_t s = 3;
    for (size_t i = 0; i < n; i++)
        v[i] = i % 10 == 0 ? 250000 + rng(&s) % 50000 : 800 + rng(&s) % 400; /* 1 ms and a 250 ms tail */
    check_distribution("bimodal", v, n);
    free(v);
}

/* ---- 3. merge and diff ---- */

static void test_merge_equals_recording_both(void **state)
{
    (void)state;
    hist_t *a = new_hist(), *b = new_hist(), *both = new_hist(), *m = new_hist();
    uint64_t s = 99;
    for (int i = 0; i < 50000; i++) {
        uint64_t x = rng(&s) >> (20 + rng(&s) % 40);
        hist_record(i % 3 ? a : b, x);
        hist_record(both, x);
    }
    hist_record(b, 0);
    hist_record(both, 0);
    hist_record(a, UINT64_MAX);
    hist_record(both, UINT64_MAX);
    hist_merge(m, a);
    hist_merge(m, b);
    for (size_t i = 0; i < HIST_BUCKETS; i++)
        assert_int_equal(atomic_load(&m->c[i]), atomic_load(&both->c[i]));
    assert_int_equal(hist_count(m), hist_count(both));
    assert_int_equal(atomic_load(&m->sum), atomic_load(&both->sum));
    assert_int_equal(hist_min(m), hist_min(both));
    assert_int_equal(hist_max(m), hist_max(both));
    static const double ps[] = { 0, 10, 50, 90, 99, 99.9, 100 };
    for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++)
        assert_int_equal(hist_percentile(m, ps[k]), hist_percentile(both, ps[k]));
    /* merging an empty histogram changes nothing */
    hist_t *e = new_hist();
    hist_merge(m, e);
    assert_int_equal(hist_count(m), hist_count(both));
    assert_int_equal(hist_min(m), 0);
    free(a), free(b), free(both), free(m), free(e);
}

static void test_diff_between_snapshots(void **state)
{
    (void)state;
    hist_t *h = new_hist(), *snap1 = new_hist(), *snap2 = new_hist(), *d = new_hist();
    for (int i = 0; i < 1000; i++)
        hist_record(h, 100);
    hist_merge(snap1, h);
    for (int i = 0; i < 1000; i++)
        hist_record(h, 5000 + (uint64_t)i);
    hist_merge(snap2, h);
    hist_diff(d, snap2, snap1);
    assert_int_equal(hist_count(d), 1000);
    assert_close(hist_percentile(d, 50), 5499, "diff", 50);
    assert_close(hist_percentile(d, 99), 5989, "diff", 99);
    assert_true(hist_min(d) >= 4960 && hist_min(d) <= 5000);
    assert_true(hist_max(d) >= 5999 && hist_max(d) <= 6047);
    /* nothing recorded in between: an empty interval */
    hist_diff(d, snap2, snap2);
    assert_int_equal(hist_count(d), 0);
    assert_int_equal(hist_percentile(d, 99), 0);
    free(h), free(snap1), free(snap2), free(d);
}

/* ---- 4. extremes ---- */

static void test_empty(void **state)
{
    (void)state;
    hist_t *h = new_hist();
    assert_int_equal(hist_count(h), 0);
    assert_int_equal(hist_min(h), 0);
    assert_int_equal(hist_max(h), 0);
    assert_true(hist_mean(h) == 0.0);
    assert_int_equal(hist_percentile(h, 0), 0);
    assert_int_equal(hist_percentile(h, 50), 0);
    assert_int_equal(hist_percentile(h, 100), 0);
    free(h);
}

static void test_zero_and_one(void **state)
{
    (void)state;
    hist_t *h = new_hist();
    hist_record(h, 0);
    assert_int_equal(hist_count(h), 1);
    assert_int_equal(hist_percentile(h, 50), 0);
    assert_int_equal(hist_max(h), 0);
    hist_record(h, 1);
    assert_int_equal(hist_percentile(h, 50), 0);
    assert_int_equal(hist_percentile(h, 100), 1);
    assert_int_equal(hist_min(h), 0);
    assert_int_equal(hist_max(h), 1);
    free(h);
}

static void test_huge_values_clamp(void **state)
{
    (void)state;
    hist_t *h = new_hist();
    hist_record(h, HIST_MAX);
    hist_record(h, HIST_MAX + 1);
    hist_record(h, UINT64_MAX);
    assert_int_equal(hist_count(h), 3);
    assert_int_equal(hist_max(h), HIST_MAX);
    assert_int_equal(hist_min(h), HIST_MAX);
    assert_int_equal(hist_percentile(h, 50), HIST_MAX);
    assert_int_equal(atomic_load(&h->c[HIST_BUCKETS - 1]), 3);
    assert_true(hist_mean(h) == (double)HIST_MAX);
    free(h);
}

static void test_one_hour(void **state)
{
    (void)state;
    uint64_t hour = UINT64_C(3600) * 1000000u;
    assert_true(hour < HIST_MAX);
    hist_t *h = new_hist();
    hist_record(h, 1);
    hist_record(h, hour);
    hist_record(h, hour - 1);
    /* the bucket of one hour is under 1/128 of it wide */
    size_t i = hist_index(hour);
    assert_true((double)(hist_highest(i) - hist_lowest(i) + 1) <= (double)hour / 128.0);
    assert_close(hist_percentile(h, 60), hour - 1, "hour", 60);
    assert_int_equal(hist_percentile(h, 100), hour);
    assert_int_equal(hist_percentile(h, 1), 1);
    free(h);
}

static void test_single_value_reports_itself(void **state)
{
    (void)state;
    /* the highest equivalent value is capped at the recorded max, so a
     * lone value in a wide bucket is reported exactly */
    uint64_t vals[] = { 300, 1000001, 123456789, HIST_MAX - 12345 };
    for (size_t k = 0; k < sizeof vals / sizeof vals[0]; k++) {
        hist_t *h = new_hist();
        hist_record(h, vals[k]);
        assert_int_equal(hist_percentile(h, 50), vals[k]);
        assert_int_equal(hist_percentile(h, 99.9), vals[k]);
        free(h);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buckets_contiguous),
        cmocka_unit_test(test_buckets_exact_below_256),
        cmocka_unit_test(test_buckets_width_bound),
        cmocka_unit_test(test_buckets_powers_of_two),
        cmocka_unit_test(test_small_values_exact),
        cmocka_unit_test(test_uniform),
        cmocka_unit_test(test_heavy_tail),
        cmocka_unit_test(test_bimodal),
        cmocka_unit_test(test_merge_equals_recording_both),
        cmocka_unit_test(test_diff_between_snapshots),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_zero_and_one),
        cmocka_unit_test(test_huge_values_clamp),
        cmocka_unit_test(test_one_hour),
        cmocka_unit_test(test_single_value_reports_itself),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

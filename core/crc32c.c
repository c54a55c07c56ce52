/*
 * crc32c.c - CRC-32C (see crc32c.h).
 *
 * The table layer is the classic slice-by-8: eight 256-entry tables built
 * once, eight octets per step. The SSE4.2 layer uses the crc32 instruction
 * (8 octets per instruction, a latency of 3 cycles and a throughput of 1):
 * one stream is bound by the latency, so inputs of 3 KiB and more are cut
 * into three lanes run together and joined by shifting the first two
 * lanes' CRCs over the octets after them (a multiplication in GF(2) by
 * x^(8 * len), done with precomputed tables for the lane length).
 */
#include "crc32c.h"

#include <stdbool.h>
#include <string.h>
#include <threads.h>

#define POLY 0x82F63B78u /* 0x1EDC6F41 reflected */

static uint32_t table[8][256];
static once_flag table_once = ONCE_FLAG_INIT;

static void table_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ POLY : c >> 1;
        table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xff];
}

static inline uint64_t load64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v; /* little-endian hosts only (x86-64, the target) */
}

uint32_t crc32c_portable(uint32_t crc, const void *data, size_t n)
{
    call_once(&table_once, table_init); /* workers may be first together */
    const unsigned char *p = data;
    crc = ~crc;
    while (n && ((uintptr_t)p & 7)) {
        crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
        n--;
    }
    while (n >= 8) {
        uint64_t v = load64(p) ^ crc;
        crc = table[7][v & 0xff] ^ table[6][(v >> 8) & 0xff] ^ table[5][(v >> 16) & 0xff] ^
              table[4][(v >> 24) & 0xff] ^ table[3][(v >> 32) & 0xff] ^ table[2][(v >> 40) & 0xff] ^
              table[1][(v >> 48) & 0xff] ^ table[0][v >> 56];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
    return ~crc;
}

#if defined(__x86_64__)

#define LANE 1024u /* octets per lane: three lanes of it per step */

/* Shifting a CRC over LANE zero octets, as four 256-entry tables (one per
 * octet of the CRC): the linear map x -> x * x^(8 * LANE) mod P. */
static uint32_t shift_tab[4][256];

/* The CRC register after feeding n zero octets to register value c (no
 * pre/post inversion): the table layer, one octet at a time. */
static uint32_t zeros(uint32_t c, size_t n)
{
    while (n--)
        c = (c >> 8) ^ table[0][c & 0xff];
    return c;
}

static bool hw; /* set once, by layer_init */
static once_flag layer_once = ONCE_FLAG_INIT;

static void layer_init(void)
{
    call_once(&table_once, table_init);
    hw = __builtin_cpu_supports("sse4.2");
    for (int b = 0; hw && b < 4; b++)
        for (uint32_t i = 0; i < 256; i++)
            shift_tab[b][i] = zeros(i << (8 * b), LANE);
}

static inline uint32_t shift(uint32_t c)
{
    return shift_tab[0][c & 0xff] ^ shift_tab[1][(c >> 8) & 0xff] ^ shift_tab[2][(c >> 16) & 0xff] ^
           shift_tab[3][c >> 24];
}

__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const unsigned char *p, size_t n)
{
    uint64_t c = ~crc;
    while (n && ((uintptr_t)p & 7)) {
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
        n--;
    }
    while (n >= 3 * LANE) {
        uint64_t a = c, b = 0, d = 0;
        for (size_t i = 0; i < LANE; i += 8) {
            a = __builtin_ia32_crc32di(a, load64(p + i));
            b = __builtin_ia32_crc32di(b, load64(p + LANE + i));
            d = __builtin_ia32_crc32di(d, load64(p + 2 * LANE + i));
        }
        /* a covers lane 1 and b lane 2 as if each started from zero:
         * a's register moves over lane 2, then both over lane 3. */
        c = shift(shift((uint32_t)a) ^ (uint32_t)b) ^ (uint32_t)d;
        p += 3 * LANE;
        n -= 3 * LANE;
    }
    while (n >= 8) {
        c = __builtin_ia32_crc32di(c, load64(p));
        p += 8;
        n -= 8;
    }
    while (n--)
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    return ~(uint32_t)c;
}

static bool have_hw(void)
{
    call_once(&layer_once, layer_init);
    return hw;
}

uint32_t crc32c(uint32_t crc, const void *p, size_t n)
{
    return have_hw() ? crc_hw(crc, p, n) : crc32c_portable(crc, p, n);
}

const char *crc32c_layer(void)
{
    return have_hw() ? "sse4.2" : "portable";
}

#else

uint32_t crc32c(uint32_t crc, const void *p, size_t n)
{
    return crc32c_portable(crc, p, n);
}

const char *crc32c_layer(void)
{
    return "portable";
}

#endif

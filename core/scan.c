/*
 * scan.c - the data-phase scanner.
 *
 * Two layers. The exact one is a byte-wise state machine (scan_byte loop in
 * scan_step) that knows every rule: CRLF, bare CR/LF, the line-start dot, the
 * end marker, line length. The fast one proves, without a per-byte branch,
 * that a run of bytes holds nothing but well-formed CRLF lines of allowed
 * length and no end marker: 256-byte chunks from two bit masks (CR, LF) per
 * 64 bytes, and, where a chunk cannot tell, 64-byte blocks from three (CR,
 * LF, '.'). What fails the proof goes to the exact layer, so the fast layer
 * can be as strict as it likes: it only ever decides "nothing to see here".
 *
 * The body run returned is always one contiguous piece of the input; anything
 * that would break contiguity (a dot held back at line start, an insert in
 * normalize mode) ends the call, and the next call resumes from _state.
 */
#include "scan.h"

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && !defined(SCAN_NO_SIMD) /* the masks are 64-bit integers */
#include <cpuid.h>
#include <immintrin.h>
#define SCAN_X86 1
#endif

enum {
    ST_MID = 0,   /* inside a line */
    ST_CR,        /* last byte was CR */
    ST_LINESTART, /* just after CRLF */
    ST_NLN,       /* just after a newline we inserted (normalize) */
    ST_DOT,       /* line-start '.' taken, not yet forwarded */
    ST_DOTCR,     /* line-start ".\r" taken */
    ST_END,
};

void scan_init(scan_t *sc, uint64_t size_max, uint32_t line_max, enum scan_bare bare)
{
    sc->size = 0;
    sc->size_max = size_max;
    sc->line_max = line_max;
    sc->line_len = 0;
    sc->bare = (uint8_t)bare;
    sc->errors = 0;
    sc->_state = ST_LINESTART;
}

typedef struct masks {
    uint64_t cr, lf, dot;
} masks_t;

#ifdef SCAN_X86
__attribute__((target("avx2"))) static inline masks_t masks_avx2(const char *p)
{
    __m256i a = _mm256_loadu_si256((const __m256i *)p);
    __m256i b = _mm256_loadu_si256((const __m256i *)(p + 32));
    __m256i cr = _mm256_set1_epi8('\r'), lf = _mm256_set1_epi8('\n'), dot = _mm256_set1_epi8('.');
    masks_t m;
    m.cr = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(a, cr)) |
           (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(b, cr)) << 32;
    m.lf = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(a, lf)) |
           (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(b, lf)) << 32;
    m.dot = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(a, dot)) |
            (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(b, dot)) << 32;
    return m;
}

/* AVX-512BW compares straight into 64-bit mask registers: one load and
 * three compares per block, no movemask. */
__attribute__((target("avx512bw"))) static inline masks_t masks_avx512(const char *p)
{
    __m512i v = _mm512_loadu_si512((const void *)p);
    masks_t m;
    m.cr = _cvtmask64_u64(_mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8('\r')));
    m.lf = _cvtmask64_u64(_mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8('\n')));
    m.dot = _cvtmask64_u64(_mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8('.')));
    /* The proof is integer work: left to itself the compiler does it in
     * mask registers, whose few ports and kmov round trips halve the
     * rate. Pin the masks in general registers. */
    __asm__("" : "+r"(m.cr), "+r"(m.lf), "+r"(m.dot));
    return m;
}

static inline uint64_t mask16x4(__m128i v0, __m128i v1, __m128i v2, __m128i v3, __m128i c)
{
    return (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(v0, c)) |
           (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(v1, c)) << 16 |
           (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(v2, c)) << 32 |
           (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(v3, c)) << 48;
}

static inline masks_t masks_sse2(const char *p)
{
    __m128i v0 = _mm_loadu_si128((const __m128i *)p), v1 = _mm_loadu_si128((const __m128i *)(p + 16));
    __m128i v2 = _mm_loadu_si128((const __m128i *)(p + 32)), v3 = _mm_loadu_si128((const __m128i *)(p + 48));
    masks_t m;
    m.cr = mask16x4(v0, v1, v2, v3, _mm_set1_epi8('\r'));
    m.lf = mask16x4(v0, v1, v2, v3, _mm_set1_epi8('\n'));
    m.dot = mask16x4(v0, v1, v2, v3, _mm_set1_epi8('.'));
    return m;
}
#else
static inline masks_t masks_portable(const char *p)
{
    masks_t m = { 0, 0, 0 };
    for (int i = 0; i < 64; i++) {
        m.cr |= (uint64_t)(p[i] == '\r') << i;
        m.lf |= (uint64_t)(p[i] == '\n') << i;
        m.dot |= (uint64_t)(p[i] == '.') << i;
    }
    return m;
}
#endif

/*
 * After the chunks took p[i, i + n): the state of the last line, as the
 * exact layer would have it. A line-start dot the chunks took is
 * dot-stuffing, not counted in line_len (RFC 5321 4.5.3.1.6) -- unless the
 * line so far is only "." or ".\r", which may yet be the end marker: then
 * the taken bytes end before it. Returns the new i.
 */
static size_t after_chunks(const char *p, size_t i, size_t n, uint64_t at_start, uint64_t *line_len)
{
    const char *end = p + i + n, *ls = memrchr(p + i, '\n', n);
    if (ls)
        ls++;
    else if (at_start)
        ls = p + i;
    else {
        *line_len += n;
        return i + n;
    }
    size_t t = (size_t)(end - ls);
    *line_len = t;
    if (t && *ls == '.') {
        if (t == 1 || (t == 2 && ls[1] == '\r')) {
            *line_len = 0;
            return (size_t)(ls - p);
        }
        *line_len = t - 1;
    }
    return i + n;
}

/*
 * Take clean input from p: 256-byte chunks where CHUNKS can prove them, else
 * 64-byte blocks while at least 65 bytes remain (the 65th tells whether a CR
 * in the last position is followed by LF). Returns the bytes taken; updates
 * *st and sc->line_len as the exact layer would.
 */
#define FAST_BLOCKS(NAME, MASKS, CHUNKS, ATTR)                                                                    \
    ATTR static size_t NAME(scan_t *sc, const char *p, size_t len, uint8_t *st)                           \
    {                                                                                                     \
        size_t i = 0;                                                                                     \
        uint64_t line_len = sc->line_len;                                                                 \
        uint64_t limit = sc->line_max ? sc->line_max : UINT64_MAX;                                        \
        /* the state as two bits, so the loop carries no branch on it */                                 \
        uint64_t prev_cr = *st == ST_CR, at_start = *st == ST_LINESTART;                                  \
        if (*st != ST_MID && !prev_cr && !at_start)                                                       \
            return 0;                                                                                     \
        size_t chunk_at = 64; /* a refused chunk is left to the blocks */                                \
        while (len - i >= 65) {                                                                           \
            if (i >= chunk_at && line_len <= 191 && limit >= 520 && len - i >= 320) {                     \
                size_t n = CHUNKS(p, i, len);                                                             \
                if (n) {                                                                                  \
                    i = after_chunks(p, i, n, at_start, &line_len);                                       \
                    prev_cr = p[i - 1] == '\r';                                                          \
                    at_start = p[i - 1] == '\n';                                                         \
                }                                                                                         \
                chunk_at = i + 256;                                                                       \
                continue;                                                                                 \
            }                                                                                             \
            masks_t m = MASKS(p + i);                                                                     \
            uint64_t next_lf = (uint64_t)(p[i + 64] == '\n') << 63;                                       \
            /* CRLF pairs exactly: the bytes after CRs are the LFs. One     \
             * compare proves no bare CR and no bare LF, and a line-start \
             * dot is the one other thing to look for. */                 \
            uint64_t quick = (((m.cr << 1) | prev_cr) ^ m.lf) | (m.cr & ~next_lf & (1ull << 63)) |       \
                             (((m.lf << 1) | at_start) & m.dot);                                           \
            /* the line in progress: through the first LF, or all 64 bytes \
             * (then with room left for its CRLF); branch-free, since      \
             * whether a block holds a LF is a coin toss on base64 text */  \
            uint64_t none = m.lf == 0;                                                                    \
            uint64_t first = none ? 64 : (uint64_t)__builtin_ctzll(m.lf);                                 \
            uint64_t after = none ? line_len + 64 : (uint64_t)__builtin_clzll(m.lf);                      \
            if (__builtin_expect(quick != 0 || line_len + first + 1 + none > limit, 0)) {                 \
                if (!quick)                                                                               \
                    break;                                                                                \
                uint64_t bad = (m.lf & ~((m.cr << 1) | prev_cr)) | (m.cr & ~((m.lf >> 1) | next_lf)) |    \
                               (((m.lf << 1) | at_start) & m.dot) | (prev_cr & ~m.lf);                     \
                /* take the clean bytes before the first problem; the exact \
                 * layer starts on the problem itself */                   \
                unsigned k = (unsigned)__builtin_ctzll(bad);                                              \
                uint64_t below = k ? (~0ull >> (64 - k)) : 0, lfb = m.lf & below;                         \
                if (k == 0 || (lfb ? line_len + (uint64_t)__builtin_ctzll(lfb) + 1 : line_len + k + 2) > limit) \
                    break;                                                                                \
                line_len = lfb ? (uint64_t)(k - 1 - (63 - (unsigned)__builtin_clzll(lfb))) : line_len + k; \
                prev_cr = (m.cr >> (k - 1)) & 1;                                                          \
                at_start = (m.lf >> (k - 1)) & 1;                                                         \
                i += k;                                                                                   \
                break;                                                                                    \
            }                                                                                             \
            line_len = after;                                                                             \
            prev_cr = m.cr >> 63;                                                                         \
            at_start = m.lf >> 63;                                                                        \
            i += 64;                                                                                      \
        }                                                                                                 \
        sc->line_len = (uint32_t)line_len;                                                                \
        *st = prev_cr ? ST_CR : at_start ? ST_LINESTART : ST_MID;                                         \
        return i;                                                                                         \
    }

#ifdef SCAN_X86
/* lo = (lo >> n) | (hi << (64 - n)): a block's masks moved n places on,
 * the first n bits from the block before. One SHRD; gcc's code for the C
 * form costs three times as many instructions in the loop below. */
#define FUNNEL(n, lo, hi) __asm__("shrd $" #n ", %1, %0" : "+r"(lo) : "r"(hi))

/*
 * Whole 256-byte chunks, for when lines may be long (line_max >= 520). Two
 * masks per 64-byte block, CR and LF; the rest is integer work on them:
 *   - the bytes after CRs are exactly the LFs (no bare CR, no bare LF);
 *   - no LF comes three bytes after another LF. With CRLF pairing, the end
 *     marker CRLF "." CRLF is exactly such a pair, and a one-octet line is
 *     the only other: rare, and then left to the blocks. A line-start dot
 *     that is not the end marker is dot-stuffing and is taken as it is;
 *     the caller accounts for it;
 *   - every chunk holds a LF, so with the caller's line_len <= 191 no line
 *     reaches 2 x 256 octets.
 * Loads are 64-byte aligned after a first partial block; the masks of the
 * block before are carried (SHRD), so no load straddles two cache lines.
 * p[i - 64 .. i) must be input already taken, clean, and len - i >= 320.
 * Returns the bytes taken. The layers differ only in how they get the two
 * masks.
 */
#define CHUNKS(NAME, CRLF, ATTR)                                                                                  \
    ATTR static size_t NAME(const char *p, size_t i, size_t len)                                          \
    {                                                                                                     \
        size_t start = i;                                                                                 \
        uint64_t cp, lp, c, l;                                                                            \
        CRLF(p + i - 64, cp, lp);                                                                         \
        size_t head = (size_t)(-(uintptr_t)(p + i) & 63);                                                 \
        if (head) { /* up to the next cache line; line_len <= 191 bounds it */                           \
            CRLF(p + i, c, l);                                                                            \
            uint64_t x = cp, e = lp;                                                                      \
            FUNNEL(63, x, c);                                                                             \
            FUNNEL(61, e, l);                                                                             \
            if (((x ^ l) | (e & l)) & ((1ull << head) - 1))                                               \
                return 0;                                                                                 \
            cp = cp >> head | c << (64 - head), lp = lp >> head | l << (64 - head);                       \
            i += head;                                                                                    \
        }                                                                                                 \
        while (len - i >= 256) {                                                                          \
            const char *q = p + i;                                                                        \
            uint64_t bad = 0, any = 0;                                                                    \
            _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++)                                           \
            {                                                                                             \
                /* the stream is read once: ask for it well ahead */                                     \
                _mm_prefetch(q + 2048 + 64 * k, _MM_HINT_T0);                                             \
                CRLF(q + 64 * k, c, l);                                                                   \
                FUNNEL(63, cp, c);                                                                        \
                FUNNEL(61, lp, l);                                                                        \
                bad |= (cp ^ l) | (lp & l);                                                               \
                any |= l;                                                                                 \
                cp = c, lp = l;                                                                           \
            }                                                                                             \
            if (bad || !any)                                                                              \
                break;                                                                                    \
            i += 256;                                                                                     \
        }                                                                                                 \
        return i - start;                                                                                 \
    }

/* The CR and LF masks of the 64 bytes at p. */
#define CRLF_AVX512(p, c, l)                                                                                      \
    do {                                                                                                  \
        __m512i v_ = _mm512_loadu_si512((const void *)(p));                                              \
        c = _cvtmask64_u64(_mm512_cmpeq_epi8_mask(v_, _mm512_set1_epi8('\r')));                           \
        l = _cvtmask64_u64(_mm512_cmpeq_epi8_mask(v_, _mm512_set1_epi8('\n')));                           \
    } while (0)

#define CRLF_AVX2(p, c, l)                                                                                        \
    do {                                                                                                  \
        __m256i a_ = _mm256_loadu_si256((const __m256i *)(p)), b_ = _mm256_loadu_si256((const __m256i *)(p) + 1); \
        __m256i cr_ = _mm256_set1_epi8('\r'), lf_ = _mm256_set1_epi8('\n');                               \
        c = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(a_, cr_)) |                                  \
            (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(b_, cr_)) << 32;                   \
        l = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(a_, lf_)) |                                  \
            (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(b_, lf_)) << 32;                   \
    } while (0)

#define CRLF_SSE2(p, c, l)                                                                                        \
    do {                                                                                                  \
        const __m128i *q_ = (const __m128i *)(p);                                                         \
        __m128i v0_ = _mm_loadu_si128(q_), v1_ = _mm_loadu_si128(q_ + 1);                                 \
        __m128i v2_ = _mm_loadu_si128(q_ + 2), v3_ = _mm_loadu_si128(q_ + 3);                             \
        c = mask16x4(v0_, v1_, v2_, v3_, _mm_set1_epi8('\r'));                                           \
        l = mask16x4(v0_, v1_, v2_, v3_, _mm_set1_epi8('\n'));                                           \
    } while (0)

CHUNKS(chunks_avx512, CRLF_AVX512, __attribute__((target("avx512bw,bmi,bmi2,lzcnt"))))
CHUNKS(chunks_avx2, CRLF_AVX2, __attribute__((target("avx2,bmi,bmi2,lzcnt"))))
CHUNKS(chunks_sse2, CRLF_SSE2, )

FAST_BLOCKS(fast_avx512, masks_avx512, chunks_avx512, __attribute__((target("avx512bw,bmi,bmi2,lzcnt"))))
FAST_BLOCKS(fast_avx2, masks_avx2, chunks_avx2, __attribute__((target("avx2,bmi,bmi2,lzcnt"))))
FAST_BLOCKS(fast_sse2, masks_sse2, chunks_sse2, )
#else
static inline size_t no_chunks(const char *p, size_t i, size_t len)
{
    (void)p, (void)i, (void)len;
    return 0;
}

FAST_BLOCKS(fast_portable, masks_portable, no_chunks, )
#endif

typedef size_t (*fast_fn)(scan_t *, const char *, size_t, uint8_t *);

static const struct impl {
    const char *name;
    fast_fn fn;
} impls[] = {
#ifdef SCAN_X86
    { "avx512", fast_avx512 },
    { "avx2", fast_avx2 },
    { "sse2", fast_sse2 },
#else
    { "portable", fast_portable },
#endif
};
static const struct impl *chosen; /* set once, to the same value by any thread */

static bool can_run(const struct impl *m)
{
#ifdef SCAN_X86
    /* the AVX layers use tzcnt/lzcnt and BMI as well */
    unsigned a, b, c, d; /* LZCNT: CPUID 0x80000001, ECX bit 5 (clang has no name for it) */
    bool lzcnt = __get_cpuid(0x80000001, &a, &b, &c, &d) && (c & (1u << 5));
    bool bits = __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") && lzcnt;
    if (m->fn == fast_avx512)
        return bits && __builtin_cpu_supports("avx512bw");
    if (m->fn == fast_avx2)
        return bits && __builtin_cpu_supports("avx2");
#endif
    (void)m;
    return true;
}

static const struct impl *pick(void)
{
    const struct impl *m = __atomic_load_n(&chosen, __ATOMIC_RELAXED);
    if (!m) {
        m = impls;
        while (!can_run(m))
            m++; /* the last one runs anywhere */
        __atomic_store_n(&chosen, m, __ATOMIC_RELAXED);
    }
    return m;
}

const char *scan_impl(void)
{
    return pick()->name;
}

bool scan_use(const char *name)
{
    for (size_t k = 0; k < sizeof impls / sizeof *impls; k++)
        if (strcmp(impls[k].name, name) == 0 && can_run(&impls[k])) {
            __atomic_store_n(&chosen, &impls[k], __ATOMIC_RELAXED);
            return true;
        }
    return false;
}

static const char CRLF[] = "\r\n";
static const char DOT[] = ".";
static const char DOTLINE[] = "..\r\n";

/*
 * Finish a call: account the run (or the insert) and apply the size limit.
 * Past the limit only the allowed prefix goes out, so the bytes forwarded
 * before an error never depend on how the input was split.
 */
static void finish(scan_t *sc, scan_result_t *res, uint8_t st, slice_t body, size_t consumed)
{
    sc->_state = st;
    res->consumed = consumed;
    res->body = SLICE_NULL;
    if (sc->errors || body.len == 0)
        return;
    if (sc->size_max && sc->size + body.len > sc->size_max) {
        body.len = (size_t)(sc->size_max - sc->size);
        sc->errors |= SCAN_ERR_SIZE;
    }
    sc->size += body.len;
    res->body = body;
}

void scan_step(scan_t *sc, const char *in, size_t len, scan_result_t *res)
{
    /* The run to forward is in[bs, i). A run is cut before any byte that
     * latches an error, and a CR is held back until the byte after it is
     * seen, so the forwarded prefix is the same for every split. */
    size_t i = 0, bs = 0;
    uint8_t st = sc->_state;
    bool norm = sc->bare == SCAN_BARE_NORMALIZE;
    uint64_t text_max = sc->line_max >= 2 ? sc->line_max - 2 : (sc->line_max ? 0 : UINT64_MAX);
    bool fast_ok = sc->line_max == 0 || sc->line_max >= 67;
    fast_fn fast = pick()->fn;
    size_t slow_until = 0;
    res->end = false;

    while (i < len) {
        if (fast_ok && i >= slow_until && (st == ST_MID || st == ST_LINESTART) && len - i >= 65) {
            i += fast(sc, in + i, len - i, &st);
            slow_until = i + 64; /* the block the fast layer refused */
            if (i >= len)
                break;
        }
        unsigned char c = (unsigned char)in[i];
        switch (st) {
        case ST_LINESTART:
            sc->line_len = 0;
            if (c == '.') {
                if (i > bs) {
                    finish(sc, res, st, slice_make(in + bs, i - bs), i);
                    return;
                }
                i++, bs = i, st = ST_DOT; /* not counted: RFC 5321 4.5.3.1.6 */
                continue;
            }
            st = ST_MID;
            /* fall through */
        case ST_MID:
            if (c == '\r') {
                sc->line_len++;
                st = ST_CR, i++;
                continue;
            }
            if (c != '\n') {
                if (sc->line_len + 1 > text_max) {
                    if (i > bs) {
                        finish(sc, res, st, slice_make(in + bs, i - bs), i);
                        return;
                    }
                    sc->errors |= SCAN_ERR_LINE_TOO_LONG;
                }
                sc->line_len++, i++;
                continue;
            }
            if (i > bs) { /* a bare LF: cut first */
                finish(sc, res, st, slice_make(in + bs, i - bs), i);
                return;
            }
            sc->line_len = 0;
            if (norm) {
                finish(sc, res, ST_NLN, SLICE_LIT(CRLF), i + 1);
                return;
            }
            sc->errors |= SCAN_ERR_BARE_LF;
            i++, bs = i;
            continue;
        case ST_CR:
            if (i == bs) { /* the CR is held from an earlier call */
                sc->line_len = 0;
                if (c == '\n') {
                    finish(sc, res, ST_LINESTART, SLICE_LIT(CRLF), i + 1);
                    return;
                }
                if (norm) {
                    finish(sc, res, ST_NLN, SLICE_LIT(CRLF), i);
                    return;
                }
                sc->errors |= SCAN_ERR_BARE_CR;
                st = ST_MID;
                continue;
            }
            if (c == '\n') {
                sc->line_len = 0;
                st = ST_LINESTART, i++;
                continue;
            }
            /* a bare CR: forward what came before it, hold it */
            finish(sc, res, ST_CR, slice_make(in + bs, i - 1 - bs), i);
            return;
        case ST_NLN:
            sc->line_len = 0;
            if (c == '.') { /* it starts a line now: stuff it */
                finish(sc, res, ST_MID, SLICE_LIT(DOT), i);
                return;
            }
            st = ST_MID;
            continue;
        case ST_DOT:
            if (c == '\r') {
                i++, bs = i, st = ST_DOTCR;
                continue;
            }
            if (c != '\n') {
                finish(sc, res, ST_MID, SLICE_LIT(DOT), i);
                return;
            }
            if (norm) { /* ".\n" would become ".\r\n", an end marker: forward "..\r\n" */
                finish(sc, res, ST_NLN, SLICE_LIT(DOTLINE), i + 1);
                return;
            }
            sc->errors |= SCAN_ERR_BARE_LF;
            i++, bs = i, st = ST_MID;
            continue;
        case ST_DOTCR:
            if (c == '\n') {
                sc->_state = ST_END;
                res->end = true;
                res->consumed = i + 1;
                res->body = SLICE_NULL;
                return;
            }
            if (norm) {
                finish(sc, res, ST_NLN, SLICE_LIT(DOTLINE), i);
                return;
            }
            sc->errors |= SCAN_ERR_BARE_CR;
            st = ST_MID;
            continue;
        default: /* ST_END: nothing more belongs to this body */
            res->consumed = 0;
            res->body = SLICE_NULL;
            res->end = true;
            return;
        }
    }
    /* A CR at the very end waits for its LF in the next call. */
    size_t run = i - bs;
    if (st == ST_CR && run)
        run--;
    finish(sc, res, st, slice_make(in + bs, run), i);
}

/*
 * scan.c - the data-phase scanner.
 *
 * Two layers. The exact one is a byte-wise state machine (scan_byte loop in
 * scan_step) that knows every rule: CRLF, bare CR/LF, the line-start dot, the
 * end marker, line length. The fast one looks at 64 bytes at a time as three
 * bit masks (CR, LF, '.') and proves with a few shifts that the block holds
 * nothing but well-formed CRLF lines of allowed length and no line starting
 * with a dot; such a block is taken whole without a per-byte branch. A block
 * that fails the proof goes to the exact layer, so the fast layer can be as
 * strict as it likes: it only ever decides "nothing to see here".
 *
 * The body run returned is always one contiguous piece of the input; anything
 * that would break contiguity (a dot held back at line start, an insert in
 * normalize mode) ends the call, and the next call resumes from _state.
 */
#include "scan.h"

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
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
 * Take clean 64-byte blocks from p while at least 65 bytes remain (the 65th
 * tells whether a CR in the last position is followed by LF). Returns the
 * bytes taken; updates *st and sc->line_len as the exact layer would.
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
        size_t chunk_at = 1; /* a refused chunk is left to the blocks */                                 \
        while (len - i >= 65) {                                                                           \
            if (i >= chunk_at && line_len <= 255 && limit >= 520 && len - i >= 257) {                     \
                size_t n = CHUNKS(p, i, len);                                                             \
                chunk_at = i + n + 256;                                                                   \
                if (n) {                                                                                  \
                    i += n;                                                                               \
                    const char *lf = memrchr(p + i - 256, '\n', 256);                                     \
                    line_len = (uint64_t)(p + i - 1 - lf);                                                \
                    prev_cr = p[i - 1] == '\r';                                                          \
                    at_start = p[i - 1] == '\n';                                                         \
                    continue;                                                                             \
                }                                                                                         \
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
/*
 * Whole 256-byte chunks, for when lines may be long (line_max >= 520): the
 * byte before each byte comes from a load one byte back, so the proof needs
 * no carry between blocks and stays in the vector unit. A chunk is clean
 * when the bytes after CRs are exactly the LFs, no LF is followed by a dot,
 * it holds at least one LF (so with the caller's line_len <= 255 no line
 * can reach 2 x 256 octets), and a CR at its end has its LF after it.
 * p[i - 1] must be input already taken. Returns the bytes taken.
 */
__attribute__((target("avx512bw,bmi,bmi2,lzcnt"))) static size_t chunks_avx512(const char *p, size_t i, size_t len)
{
    const __m512i cr = _mm512_set1_epi8('\r'), lf = _mm512_set1_epi8('\n'), dot = _mm512_set1_epi8('.');
    size_t start = i;
    while (len - i >= 257) {
        __mmask64 bad = 0, any = 0;
        for (int k = 0; k < 4; k++) {
            const char *q = p + i + 64 * k;
            __m512i v = _mm512_loadu_si512((const void *)q), w = _mm512_loadu_si512((const void *)(q - 1));
            __mmask64 l = _mm512_cmpeq_epi8_mask(v, lf);
            bad |= l ^ _mm512_cmpeq_epi8_mask(w, cr);
            bad |= _mm512_mask_cmpeq_epi8_mask(_mm512_cmpeq_epi8_mask(w, lf), v, dot);
            any |= l;
        }
        if (bad || !any || (p[i + 255] == '\r' && p[i + 256] != '\n'))
            break;
        i += 256;
    }
    return i - start;
}

static inline size_t no_chunks(const char *p, size_t i, size_t len)
{
    (void)p, (void)i, (void)len;
    return 0;
}

FAST_BLOCKS(fast_avx512, masks_avx512, chunks_avx512, __attribute__((target("avx512bw,bmi,bmi2,lzcnt"))))
FAST_BLOCKS(fast_avx2, masks_avx2, no_chunks, __attribute__((target("avx2,bmi,bmi2,lzcnt"))))
FAST_BLOCKS(fast_sse2, masks_sse2, no_chunks, )
#else
static inline size_t no_chunks(const char *p, size_t i, size_t len)
{
    (void)p, (void)i, (void)len;
    return 0;
}

FAST_BLOCKS(fast_portable, masks_portable, no_chunks, )
#endif

typedef size_t (*fast_fn)(scan_t *, const char *, size_t, uint8_t *);

static fast_fn pick_fast(void)
{
#ifdef SCAN_X86
    static fast_fn chosen;
    if (!chosen)
    {
        /* the fast layers use tzcnt/lzcnt and BMI as well */
        unsigned a, b, c, d; /* LZCNT: CPUID 0x80000001, ECX bit 5 (clang has no name for it) */
        bool lzcnt = __get_cpuid(0x80000001, &a, &b, &c, &d) && (c & (1u << 5));
        bool bits = __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") && lzcnt;
        chosen = bits && __builtin_cpu_supports("avx512bw") ? fast_avx512
                 : bits && __builtin_cpu_supports("avx2")   ? fast_avx2
                                                            : fast_sse2;
    }
    return chosen;
#else
    return fast_portable;
#endif
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
    fast_fn fast = pick_fast();
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
                if (i > bs)
                    return finish(sc, res, st, slice_make(in + bs, i - bs), i);
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
                    if (i > bs)
                        return finish(sc, res, st, slice_make(in + bs, i - bs), i);
                    sc->errors |= SCAN_ERR_LINE_TOO_LONG;
                }
                sc->line_len++, i++;
                continue;
            }
            if (i > bs) /* a bare LF: cut first */
                return finish(sc, res, st, slice_make(in + bs, i - bs), i);
            sc->line_len = 0;
            if (norm)
                return finish(sc, res, ST_NLN, SLICE_LIT(CRLF), i + 1);
            sc->errors |= SCAN_ERR_BARE_LF;
            i++, bs = i;
            continue;
        case ST_CR:
            if (i == bs) { /* the CR is held from an earlier call */
                sc->line_len = 0;
                if (c == '\n')
                    return finish(sc, res, ST_LINESTART, SLICE_LIT(CRLF), i + 1);
                if (norm)
                    return finish(sc, res, ST_NLN, SLICE_LIT(CRLF), i);
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
            return finish(sc, res, ST_CR, slice_make(in + bs, i - 1 - bs), i);
        case ST_NLN:
            sc->line_len = 0;
            if (c == '.') /* it starts a line now: stuff it */
                return finish(sc, res, ST_MID, SLICE_LIT(DOT), i);
            st = ST_MID;
            continue;
        case ST_DOT:
            if (c == '\r') {
                i++, bs = i, st = ST_DOTCR;
                continue;
            }
            if (c != '\n')
                return finish(sc, res, ST_MID, SLICE_LIT(DOT), i);
            if (norm) /* ".\n" would become ".\r\n", an end marker: forward "..\r\n" */
                return finish(sc, res, ST_NLN, SLICE_LIT(DOTLINE), i + 1);
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
            if (norm)
                return finish(sc, res, ST_NLN, SLICE_LIT(DOTLINE), i);
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

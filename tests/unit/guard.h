/*
 * guard.h - input and output buffers that end where a PROT_NONE page
 * begins, so a read or write one byte past them crashes at once
 * (picohttpparser's test trick; ASan does not watch mmap'd memory, the MMU
 * does). Shared by the unit tests and the fuzz targets; no project headers.
 */
#ifndef MXGATE_GUARD_H
#define MXGATE_GUARD_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

typedef struct guard_buf {
    char *map;
    size_t maplen;
    char *data; /* n bytes, ending where the PROT_NONE page starts */
} guard_buf_t;

/* n writable bytes right before a PROT_NONE page; the bytes before them on
 * the same pages are filled with 'Z' (no accidental NUL or CRLF). */
static inline char *guard_alloc(guard_buf_t *g, size_t n)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    size_t body = (n + pg - 1) / pg * pg;
    if (body == 0)
        body = pg;
    g->maplen = body + pg;
    g->map = mmap(NULL, g->maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g->map == MAP_FAILED || mprotect(g->map + body, pg, PROT_NONE) != 0)
        abort();
    memset(g->map, 'Z', body);
    g->data = g->map + body - n;
    return g->data;
}

/* A guarded copy of p[0..n). */
static inline void guard_copy(guard_buf_t *g, const char *p, size_t n)
{
    char *d = guard_alloc(g, n);
    if (n)
        memcpy(d, p, n);
}

static inline void guard_free(guard_buf_t *g)
{
    munmap(g->map, g->maplen);
    g->map = NULL;
}

/* printf to stdout, flushed: cmocka's print_message cuts at 1 KiB and tests'
 * logs are longer. */
__attribute__((format(printf, 1, 2))) static inline void tu_note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
}

/* A check that traps (fuzz targets: libFuzzer keeps the input). */
#define CHECK(c)                                                                                          \
    do {                                                                                                  \
        if (!(c)) {                                                                                       \
            fprintf(stderr, "%s: check failed at line %d: %s\n", __FILE__, __LINE__, #c);                 \
            __builtin_trap();                                                                             \
        }                                                                                                 \
    } while (0)

#endif

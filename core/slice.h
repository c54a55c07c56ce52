/*
 * slice.h - (pointer, length) views into bytes someone else owns.
 *
 * The layout matches struct iovec, so an array of slices can be handed to
 * writev/sendmsg as it is. A slice never owns memory: the API that returns
 * one says how long it stays valid.
 */
#ifndef MXGATE_SLICE_H
#define MXGATE_SLICE_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

typedef struct slice {
    const char *ptr;
    size_t len;
} slice_t;

#define SLICE_LIT(s) ((slice_t){ (s), sizeof(s) - 1 })
#define SLICE_NULL ((slice_t){ NULL, 0 })
/* The same as an initializer of static data (a compound literal is not
 * a constant expression in ISO C). */
#define SLICE_INIT(s) { (s), sizeof(s) - 1 }

static inline slice_t slice_make(const char *p, size_t n)
{
    return (slice_t){ p, n };
}

static inline bool slice_eq(slice_t a, slice_t b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

/* ASCII case-insensitive comparison; the locale never matters in SMTP. */
static inline bool slice_ieq(slice_t a, const char *lit)
{
    size_t n = strlen(lit);
    if (a.len != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)a.ptr[i];
        if (c >= 'A' && c <= 'Z')
            c += 'a' - 'A';
        unsigned char d = (unsigned char)lit[i];
        if (d >= 'A' && d <= 'Z')
            d += 'a' - 'A';
        if (c != d)
            return false;
    }
    return true;
}

#endif

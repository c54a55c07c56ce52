/*
 * grow.h - the one way core and workers grow a byte buffer: doubling, from
 * a first size, with a hard ceiling, never shrinking. Used by the buffers
 * that live as long as a session or a connection (the reply queue's park,
 * the relay's staging, a transaction's arena), so growth is rare and the
 * memory is reused message after message.
 */
#ifndef MXGATE_GROW_H
#define MXGATE_GROW_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GROW_CEILING (1u << 30)

/* Make room for `more` bytes after `len` in *buf (capacity *cap); false,
 * with nothing changed, when memory or the ceiling says no. */
static inline bool grow_reserve(char **buf, uint32_t *cap, size_t len, size_t more, uint32_t first)
    __attribute__((warn_unused_result));
static inline bool grow_reserve(char **buf, uint32_t *cap, size_t len, size_t more, uint32_t first)
{
    if (len + more <= *cap && *buf)
        return true;
    if (more > GROW_CEILING || len + more > GROW_CEILING)
        return false;
    uint32_t c = *cap ? *cap : first;
    while (c < len + more)
        c *= 2;
    char *n = realloc(*buf, c);
    if (!n)
        return false;
    *buf = n;
    *cap = c;
    return true;
}

/* Append n bytes; their offset, or UINT32_MAX (nothing appended). */
static inline uint32_t grow_append(char **buf, uint32_t *cap, uint32_t *len, const char *p, size_t n, uint32_t first)
{
    if (!grow_reserve(buf, cap, *len, n, first))
        return UINT32_MAX;
    uint32_t off = *len;
    if (n)
        memcpy(*buf + off, p, n);
    *len += (uint32_t)n;
    return off;
}

/* Room for one more item after n in an array of `size`-octet items
 * (capacity *cap items, doubling from `first`); false, nothing changed,
 * when memory says no. Used as grow_item((void **)&arr, &cap, n, sizeof *arr, 32). */
static inline bool grow_item(void **arr, uint32_t *cap, uint32_t n, size_t size, uint32_t first)
    __attribute__((warn_unused_result));
static inline bool grow_item(void **arr, uint32_t *cap, uint32_t n, size_t size, uint32_t first)
{
    if (n < *cap && *arr)
        return true;
    if (*cap > UINT32_MAX / 2)
        return false;
    uint32_t c = *cap ? *cap * 2 : first;
    void *a = realloc(*arr, (size_t)c * size);
    if (!a)
        return false;
    *arr = a;
    *cap = c;
    return true;
}

#endif

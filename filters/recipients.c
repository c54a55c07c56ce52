/*
 * recipients.c - the valid recipients (recipient_map), like Postfix's
 * relay_recipient_maps: once a map is set, a recipient in a relay domain is
 * accepted only if the map lists its address or its domain ("@domain": any
 * user there). Everyone else gets 550 5.1.1 at RCPT, so the gateway never
 * takes mail for a mailbox that does not exist and never has to bounce it.
 *
 * The file is read at start-up, and again on each reload into a new map
 * (the chain's state: the old one serves until no worker uses it), into one
 * arena and an open-addressing index of lowercased keys; lookups from the
 * workers only read it.
 * Format: one address per line; blank lines and lines starting with '#'
 * are skipped; anything after the address on a line (a Postfix map's value
 * column) is ignored.
 */
#include "filter.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct rmap {
    char *arena;       /* keys, NUL-terminated, lowercased */
    uint32_t *index;   /* offset + 1 into arena; 0: empty slot */
    uint32_t mask;
    uint32_t count;
} rmap_t;

static uint32_t hash_lower(const char *p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch >= 'A' && ch <= 'Z')
            ch = (unsigned char)(ch + 32);
        h = (h ^ ch) * 16777619u;
    }
    return h;
}

static bool key_eq(const char *key, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char ch = p[i] >= 'A' && p[i] <= 'Z' ? (char)(p[i] + 32) : p[i];
        if (key[i] != ch)
            return false;
    }
    return key[n] == '\0';
}

static bool map_has(const rmap_t *map, const char *p, size_t n)
{
    for (uint32_t s = hash_lower(p, n) & map->mask; map->index[s]; s = (s + 1) & map->mask)
        if (key_eq(map->arena + map->index[s] - 1, p, n))
            return true;
    return false;
}

static void recipients_fini(void *state)
{
    rmap_t *map = state;
    if (!map)
        return;
    free(map->arena);
    free(map->index);
    free(map);
}

/* No map set: *state stays NULL and every recipient passes. */
static int recipients_init(const mx_config_t *cfg, void **state, char *err, size_t errlen)
{
    *state = NULL;
    if (!cfg->recipient_map[0])
        return 0;
    FILE *f = fopen(cfg->recipient_map, "re");
    if (!f) {
        snprintf(err, errlen, "recipient_map: %s: %s", cfg->recipient_map, strerror(errno));
        return -1;
    }
    size_t cap = 4096, len = 0, lines = 0, keys = 0;
    char *arena = malloc(cap), *line = NULL;
    size_t lcap = 0;
    ssize_t got;
    int rc = 0;
    while (arena && (got = getline(&line, &lcap, f)) >= 0) {
        lines++;
        size_t i = 0, n = (size_t)got;
        while (i < n && (line[i] == ' ' || line[i] == '\t'))
            i++;
        size_t e = i;
        bool quoted = false; /* "quoted local part"@domain may hold blanks */
        while (e < n && line[e] != '\r' && line[e] != '\n' && (quoted || (line[e] != ' ' && line[e] != '\t'))) {
            if (line[e] == '"' && (e == i || line[e - 1] != '\\'))
                quoted = !quoted;
            e++;
        }
        if (e == i || line[i] == '#')
            continue;
        const char *at = memrchr(line + i, '@', e - i);
        if (!at || at + 1 == line + e || e - i > ADDR_PATH_MAX) {
            snprintf(err, errlen, "recipient_map: %s line %zu: expected user@domain or @domain", cfg->recipient_map,
                     lines);
            rc = -1;
            break;
        }
        if (len + (e - i) + 1 > cap) {
            char *na = realloc(arena, cap *= 2);
            if (!na) {
                free(arena);
                arena = NULL;
                break;
            }
            arena = na;
        }
        for (size_t k = i; k < e; k++)
            arena[len++] = line[k] >= 'A' && line[k] <= 'Z' ? (char)(line[k] + 32) : line[k];
        arena[len++] = '\0';
        keys++;
    }
    free(line);
    fclose(f);
    if (rc || !arena) {
        if (!arena)
            snprintf(err, errlen, "recipient_map: out of memory");
        free(arena);
        return -1;
    }
    uint32_t slots = 16;
    while (slots < 2 * keys)
        slots *= 2;
    rmap_t *map = calloc(1, sizeof *map);
    if (map)
        map->index = calloc(slots, sizeof *map->index);
    if (!map || !map->index || len >= UINT32_MAX) {
        free(arena);
        recipients_fini(map);
        snprintf(err, errlen, "recipient_map: out of memory");
        return -1;
    }
    map->arena = arena;
    map->mask = slots - 1;
    for (size_t off = 0; off < len; off += strlen(arena + off) + 1) {
        size_t n = strlen(arena + off);
        if (map_has(map, arena + off, n))
            continue; /* listed twice */
        uint32_t s = hash_lower(arena + off, n) & map->mask;
        while (map->index[s])
            s = (s + 1) & map->mask;
        map->index[s] = (uint32_t)off + 1;
        map->count++;
    }
    *state = map;
    return 0;
}

static enum filter_act recipients_rcpt(const filter_facts_t *fx, filter_verdict_t *v)
{
    const smtp_path_t *r = fx->rcpt;
    const rmap_t *map = fx->self;
    if (!map || r->postmaster)
        return FA_ACCEPT;
    slice_t d = r->domain;
    if (d.len && d.ptr[d.len - 1] == '.')
        d.len--;
    char key[ADDR_PATH_MAX + 2];
    if (r->local.len + 1 + d.len < sizeof key) {
        if (r->local.len == 10 && key_eq("postmaster", r->local.ptr, 10))
            return FA_ACCEPT; /* RFC 5321 4.5.1, for every domain we take mail for */
        memcpy(key, r->local.ptr, r->local.len);
        key[r->local.len] = '@';
        memcpy(key + r->local.len + 1, d.ptr, d.len);
        if (map_has(map, key, r->local.len + 1 + d.len) || map_has(map, key + r->local.len, 1 + d.len))
            return FA_ACCEPT;
    }
    return filter_refuse(v, FA_REJECT, 550, "5.1.1", "Error: no such user here", "unknown_user");
}

const filter_def_t filter_recipients = {
    .name = "recipients",
    .init = recipients_init,
    .fini = recipients_fini,
    .stage = {[FS_RCPT] = recipients_rcpt},
};

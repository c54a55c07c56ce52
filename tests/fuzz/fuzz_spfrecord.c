/*
 * fuzz_spfrecord.c - libFuzzer target over the SPF helper's record check
 * (record_rewrite in workers/spf_dns.c): SPF records come from anyone's DNS,
 * and the helper checks each against RFC 7208's grammar and rewrites it
 * before libspf2 compiles it.
 *
 * Input: the record's text after "v=spf1" (the target prepends it; a NUL
 * ends it early, as a C string would).
 *
 * Checks (__builtin_trap on failure):
 *  - the output buffer has exactly the size the helper gives it (3 x the
 *    record's length + 64, on the heap): ASan sees any write past it;
 *  - an accepted record comes out NUL-terminated, starting with "v=spf1",
 *    printable ASCII with single spaces between terms;
 *  - a rewritten record is accepted again, and rewriting it once more gives
 *    the same text (the rewrite is a normal form);
 *  - libspf2 compiles every accepted record without crashing (its verdict
 *    is not checked: the helper turns a compile error into permerror).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../workers/spf_dns.c"

static char *rewrite(const char *rec, const char **why)
{
    size_t cap = 3 * strlen(rec) + 64; /* as get_spf sizes it */
    char *out = malloc(cap);
    if (!out)
        abort();
    *why = record_rewrite(rec, out, cap);
    return out;
}

static void check_form(const char *out)
{
    if (strncmp(out, "v=spf1", 6) != 0)
        __builtin_trap();
    for (const char *p = out; *p; p++) {
        if (*p < 0x20 || *p > 0x7e)
            __builtin_trap();
        if (*p == ' ' && (p[1] == ' ' || p[1] == '\0'))
            __builtin_trap();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0;
    char *rec = malloc(size + 7);
    if (!rec)
        abort();
    memcpy(rec, "v=spf1", 6);
    memcpy(rec + 6, data, size);
    rec[size + 6] = '\0';
    const char *why;
    char *out = rewrite(rec, &why);
    if (!why) {
        check_form(out);
        const char *why2;
        char *again = rewrite(out, &why2);
        if (why2 || strcmp(again, out) != 0)
            __builtin_trap();
        free(again);
        static SPF_server_t *spf;
        if (!spf)
            spf = SPF_server_new(SPF_DNS_CACHE, 0);
        SPF_response_t *resp = SPF_response_new(NULL);
        SPF_record_t *r = NULL;
        if (spf && resp) {
            SPF_record_compile(spf, resp, &r, out);
            if (r)
                SPF_record_free(r);
        }
        if (resp)
            SPF_response_free(resp);
    }
    free(out);
    free(rec);
    return 0;
}

/*
 * fuzz_spfrecord.c - libFuzzer target over the SPF helper's record check
 * (spf_record_rewrite in workers/spfd/spf_record.c, linked as the helper
 * links it): SPF records come from anyone's DNS, and the helper checks each
 * against RFC 7208's grammar and rewrites it before libspf2 compiles it.
 *
 * Input: the record's text after "v=spf1" (the target prepends it; a NUL
 * ends it early, as a C string would).
 *
 * Checks (__builtin_trap on failure):
 *  - the output buffer has exactly the size the helper gives it
 *    (SPF_RECORD_OUT_CAP, on the heap): ASan sees any write past it;
 *  - spf_record_is_spf() agrees with the prefix rule (a space or the end
 *    after "v=spf1"), and a text it refuses is refused by the rewrite too;
 *  - an accepted record comes out NUL-terminated, starting with "v=spf1",
 *    printable ASCII with single spaces between terms, and a refused one
 *    leaves "" behind;
 *  - a rewritten record is accepted again, and rewriting it once more gives
 *    the same text (the rewrite is a normal form);
 *  - libspf2 compiles every accepted record without crashing (its verdict
 *    is not checked: the helper turns a compile error into permerror).
 */
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <spf2/spf.h>

#include "spf_record.h"

#include "guard.h" /* CHECK, without core/'s headers */

static char *rewrite(const char *rec, const char **why)
{
    size_t cap = SPF_RECORD_OUT_CAP(strlen(rec)); /* as get_spf sizes it */
    char *out = malloc(cap);
    if (!out)
        abort();
    *why = spf_record_rewrite(rec, out, cap);
    return out;
}

static void check_form(const char *out)
{
    CHECK(strncmp(out, "v=spf1", 6) == 0);
    for (const char *p = out; *p; p++) {
        CHECK(*p >= 0x20 && *p <= 0x7e);
        CHECK(!(*p == ' ' && (p[1] == ' ' || p[1] == '\0')));
    }
}

static void compile_with_libspf2(const char *rec)
{
    static SPF_server_t *spf;
    if (!spf)
        spf = SPF_server_new(SPF_DNS_CACHE, 0);
    SPF_response_t *resp = SPF_response_new(NULL);
    SPF_record_t *r = NULL;
    if (spf && resp) {
        SPF_record_compile(spf, resp, &r, rec);
        if (r)
            SPF_record_free(r);
    }
    if (resp)
        SPF_response_free(resp);
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
    bool spf = rec[6] == ' ' || rec[6] == '\0';
    CHECK(spf_record_is_spf(rec) == spf);
    const char *why;
    char *out = rewrite(rec, &why);
    if (!spf)
        CHECK(why != NULL);
    if (why) {
        CHECK(out[0] == '\0');
    } else {
        check_form(out);
        CHECK(spf_record_is_spf(out));
        const char *why2;
        char *again = rewrite(out, &why2);
        CHECK(why2 == NULL && strcmp(again, out) == 0);
        free(again);
        compile_with_libspf2(out);
    }
    free(out);
    free(rec);
    return 0;
}

/*
 * test_rspamd.c - rspamd.h: the /checkv2 request head and the values it
 * refuses; the HTTP response read strictly (status line, headers, length
 * or chunked framing, caps, keep-alive) with its errors at their edges; the
 * JSON verdict (actions, scores, messages, DKIM/DMARC/ARC symbols, milter
 * headers to add and remove) and the JSON reader's strictness (escapes,
 * surrogates, numbers, depth); the headers checked and rendered in wire
 * form, folded under 998 octets, and the subject as encoded-words.
 *
 * The responses in vectors[] were captured from rspamd 3.4 (Debian 12) on
 * loopback, for a clean message (greylist, with milter headers), GTUBE
 * (reject), a message with a DKIM-Signature whose key lookup failed, the
 * rewrite-subject action, an empty message, an unknown path (500) and an
 * LF-only message (rspamd folds its headers with bare LF then: dropped).
 *
 * Every response is fed whole, byte by byte and cut at every position
 * (every pair of positions when short), each piece in a guarded buffer
 * unmapped once fed, and the printed logs (including the verdict and the
 * rendered headers) must be identical.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rspamd.h"
#include "testutil.h"
#include "splits.h"

/* ---- captured from rspamd 3.4 ---- */

static const char *const resp_gtube[] = {
    "HTTP/1.1 200 OK\r\nConnection: close\r\nServer: rspamd/3.4\r\nDate: Fri, 04 Dec 2026 13:16:56 GMT\r\nContent-Le"
    "ngth: 238\r\nContent-Type: application/json\r\n\r\n{\"is_skipped\":true,\"score\":15.0,\"required_score\":15.0,"
    "\"action\":\"reject\",\"symbols\":{\"GTUBE\":{\"name\":\"GTUBE\",\"score\":0.0,\"metric_score\":0.0}},\"message"
    "s\":{\"smtp_message\":\"Gtube pattern\"},\"message-id\":\"gtube@example.org\",\"time_real\":0.000952}",
    NULL,
};

static const char *const resp_clean[] = {
    "HTTP/1.1 200 OK\r\nConnection: close\r\nServer: rspamd/3.4\r\nDate: Fri, 04 Dec 2026 13:16:56 GMT\r\nContent-Le"
    "ngth: 5333\r\nContent-Type: application/json\r\n\r\n{\"is_skipped\":false,\"score\":5.0,\"required_score\":15.0"
    ",\"action\":\"greylist\",\"symbols\":{\"ARC_NA\":{\"name\":\"ARC_NA\",\"score\":0.0,\"metric_score\":0.0,\"desc"
    "ription\":\"ARC signature absent\"},\"ASN_FAIL\":{\"name\":\"ASN_FAIL\",\"score\":0.0,\"metric_score\":0.0,\"op"
    "tions\":[\"1.2.0.192.asn.rspamd.com:query timed out\"]},\"SPAMHAUS_FAIL\":{\"name\":\"SPAMHAUS_FAIL\",\"score\""
    ":0.0,\"metric_score\":0.0,\"options\":[\"192.0.2.1:query timed out\"]},\"FROM_HAS_DN\":{\"name\":\"FROM_HAS_DN"
    "\",\"score\":0.0,\"metric_score\":0.0,\"description\":\"From header has a display name\"},\"R_SPF_DNSFAIL\":{\""
    "name\":\"R_SPF_DNSFAIL\",\"score\":0.0,\"metric_score\":0.0,\"description\":\"SPF DNS failure\",\"options\":[\""
    "temporary DNS error\"]},\"RBL_SEM_FAIL\":{\"name\":\"RBL_SEM_FAIL\",\"score\":0.0,\"metric_score\":0.0,\"option"
    "s\":[\"192.0.2.1:query timed out\"]},\"MIME_GOOD\":{\"name\":\"MIME_GOOD\",\"score\":-0.100000,\"metric_score\""
    ":-0.100000,\"description\":\"Known content-type\",\"options\":[\"text/plain\"]},\"HFILTER_HELO_IP_A\":{\"name\""
    ":\"HFILTER_HELO_IP_A\",\"score\":1.0,\"metric_score\":1.0,\"description\":\"Helo A IP != hostname IP\",\"option"
    "s\":[\"mail.example.org\"]},\"HFILTER_HELO_NORES_A_OR_MX\":{\"name\":\"HFILTER_HELO_NORES_A_OR_MX\",\"score\":0"
    ".300000,\"metric_score\":0.300000,\"description\":\"Helo no resolve to A or MX\",\"options\":[\"mail.example.or"
    "g\"]},\"RCPT_COUNT_ONE\":{\"name\":\"RCPT_COUNT_ONE\",\"score\":0.0,\"metric_score\":0.0,\"description\":\"One "
    "recipient\",\"options\":[\"1\"]},\"RBL_VIRUSFREE_UNKNOWN_FAIL\":{\"name\":\"RBL_VIRUSFREE_UNKNOWN_FAIL\",\"scor"
    "e\":0.0,\"metric_score\":0.0,\"options\":[\"192.0.2.1:query timed out\"]},\"MAILSPIKE_FAIL\":{\"name\":\"MAILSP"
    "IKE_FAIL\",\"score\":0.0,\"metric_score\":0.0,\"options\":[\"192.0.2.1:query timed out\"]},\"MID_RHS_MATCH_FROM"
    "TLD\":{\"name\":\"MID_",
    "RHS_MATCH_FROMTLD\",\"score\":0.0,\"metric_score\":0.0,\"description\":\"Message-ID RHS matches From domain tld"
    "\"},\"TO_DN_ALL\":{\"name\":\"TO_DN_ALL\",\"score\":0.0,\"metric_score\":0.0,\"description\":\"All the recipien"
    "ts have display names\"},\"DMARC_DNSFAIL\":{\"name\":\"DMARC_DNSFAIL\",\"score\":0.0,\"metric_score\":0.0,\"opt"
    "ions\":[\"example.org : query timed out\"]},\"RBL_SENDERSCORE_FAIL\":{\"name\":\"RBL_SENDERSCORE_FAIL\",\"score"
    "\":0.0,\"metric_score\":0.0,\"options\":[\"192.0.2.1:query timed out\"]},\"RBL_NIXSPAM_FAIL\":{\"name\":\"RBL_N"
    "IXSPAM_FAIL\",\"score\":0.0,\"metric_score\":0.0,\"options\":[\"192.0.2.1:query timed out\"]},\"FORGED_SENDER\""
    ":{\"name\":\"FORGED_SENDER\",\"score\":0.300000,\"metric_score\":0.300000,\"description\":\"Sender is forged (d"
    "ifferent From: header and smtp MAIL FROM: addresses)\",\"options\":[\"alice@example.org\",\"a@example.org\"]},"
    "\"RCVD_COUNT_ZERO\":{\"name\":\"RCVD_COUNT_ZERO\",\"score\":0.0,\"metric_score\":0.0,\"description\":\"Message "
    "has no Received headers\",\"options\":[\"0\"]},\"RCVD_IN_DNSWL_FAIL\":{\"name\":\"RCVD_IN_DNSWL_FAIL\",\"score"
    "\":0.0,\"metric_score\":0.0,\"options\":[\"192.0.2.1:query timed out\"]},\"R_DKIM_NA\":{\"name\":\"R_DKIM_NA\","
    "\"score\":0.0,\"metric_score\":0.0,\"description\":\"Missing DKIM signature\"},\"MIME_TRACE\":{\"name\":\"MIME_"
    "TRACE\",\"score\":0.0,\"metric_score\":0.0,\"options\":[\"0:+\"]},\"DATE_IN_PAST\":{\"name\":\"DATE_IN_PAST\","
    "\"score\":1.0,\"metric_score\":1.0,\"description\":\"Message date is in past\",\"options\":[\"27\"]},\"FROM_NEQ"
    "_ENVFROM\":{\"name\":\"FROM_NEQ_ENVFROM\",\"score\":0.0,\"metric_score\":0.0,\"description\":\"From address is "
    "different to the envelope\",\"options\":[\"alice@example.org\",\"a@example.org\"]},\"HFILTER_HOSTNAME_UNKNOWN\""
    ":{\"name\":\"HFILTER_HOSTNAME_UNKNOWN\",\"score\":2.500000,\"metric_score\":2.500000,\"description\":\"Unknown "
    "client hostname (PTR or FCrDNS verification failed)\"}},\"messages\":{},\"message-id\":\"20261203100000.1@mail."
    "example",
    ".org\",\"time_real\":3.010275,\"milter\":{\"add_headers\":{\"Authentication-Results\":{\"value\":\"mx.example.n"
    "et;\\r\\n\\tdkim=none;\\r\\n\\tdmarc=temperror reason=\\\"query timed out\\\" header.from=example.org (policy=t"
    "emperror);\\r\\n\\tspf=temperror (mx.example.net: error in processing during lookup of a@example.org: DNS error"
    ") smtp.mailfrom=a@example.org\",\"order\":1},\"X-Rspamd-Server\":{\"value\":\"vm\",\"order\":-1},\"X-Rspamd-Que"
    "ue-Id\":{\"value\":\"4Q7x1abc\",\"order\":-1},\"X-Spamd-Bar\":{\"value\":\"+++++\",\"order\":-1},\"X-Spamd-Resu"
    "lt\":{\"value\":\"default: False [5.00 / 15.00];\\r\\n\\tHFILTER_HOSTNAME_UNKNOWN(2.50)[];\\r\\n\\tDATE_IN_PAST"
    "(1.00)[27];\\r\\n\\tHFILTER_HELO_IP_A(1.00)[mail.example.org];\\r\\n\\tHFILTER_HELO_NORES_A_OR_MX(0.30)[mail.ex"
    "ample.org];\\r\\n\\tFORGED_SENDER(0.30)[alice@example.org,a@example.org];\\r\\n\\tMIME_GOOD(-0.10)[text/plain];"
    "\\r\\n\\tDMARC_DNSFAIL(0.00)[example.org : query timed out];\\r\\n\\tRBL_NIXSPAM_FAIL(0.00)[192.0.2.1:query tim"
    "ed out];\\r\\n\\tRBL_SENDERSCORE_FAIL(0.00)[192.0.2.1:query timed out];\\r\\n\\tRCVD_COUNT_ZERO(0.00)[0];\\r\\n"
    "\\tMIME_TRACE(0.00)[0:+];\\r\\n\\tRCVD_IN_DNSWL_FAIL(0.00)[192.0.2.1:query timed out];\\r\\n\\tR_DKIM_NA(0.00)["
    "];\\r\\n\\tTO_DN_ALL(0.00)[];\\r\\n\\tMID_RHS_MATCH_FROMTLD(0.00)[];\\r\\n\\tMAILSPIKE_FAIL(0.00)[192.0.2.1:que"
    "ry timed out];\\r\\n\\tFROM_HAS_DN(0.00)[];\\r\\n\\tSPAMHAUS_FAIL(0.00)[192.0.2.1:query timed out];\\r\\n\\tASN"
    "_FAIL(0.00)[1.2.0.192.asn.rspamd.com:query timed out];\\r\\n\\tFROM_NEQ_ENVFROM(0.00)[alice@example.org,a@examp"
    "le.org];\\r\\n\\tR_SPF_DNSFAIL(0.00)[temporary DNS error];\\r\\n\\tRCPT_COUNT_ONE(0.00)[1];\\r\\n\\tRBL_SEM_FAI"
    "L(0.00)[192.0.2.1:query timed out];\\r\\n\\tRBL_VIRUSFREE_UNKNOWN_FAIL(0.00)[192.0.2.1:query timed out];\\r\\n"
    "\\tARC_NA(0.00)[]\",\"order\":-1},\"X-Spam-Status\":{\"value\":\"No, score=5.00\",\"order\":-1}},\"remove_heade"
    "rs\":{\"Authentication-Results\":0,\"X-Rspamd-Server\":0,\"X-Rsp",
    "amd-Queue-Id\":0,\"X-Spamd-Bar\":0,\"X-Spam\":0,\"X-Spamd-Result\":0,\"X-Spam-Status\":0}}}",
    NULL,
};

static const char *const resp_dkim[] = {
    "HTTP/1.1 200 OK\r\nConnection: close\r\nServer: rspamd/3.4\r\nDate: Fri, 04 Dec 2026 13:17:48 GMT\r\nContent-Le"
    "ngth: 6335\r\nContent-Type: application/json\r\n\r\n{\"is_skipped\":false,\"score\":7.600000,\"required_score\""
    ":15.0,\"action\":\"add header\",\"symbols\":{\"RDNS_NONE\":{\"name\":\"RDNS_NONE\",\"score\":1.0,\"metric_score"
    "\":1.0,\"description\":\"Cannot resolve reverse DNS for sender's IP\"},\"RBL_SENDERSCORE_FAIL\":{\"name\":\"RBL"
    "_SENDERSCORE_FAIL\",\"score\":0.0,\"metric_score\":0.0,\"options\":[\"192.0.2.1:query timed out\"]},\"R_SPF_DNS"
    "FAIL\":{\"name\":\"R_SPF_DNSFAIL\",\"score\":0.0,\"metric_score\":0.0,\"description\":\"SPF DNS failure\",\"opt"
    "ions\":[\"temporary DNS error\"]},\"HFILTER_HELO_IP_A\":{\"name\":\"HFILTER_HELO_IP_A\",\"score\":1.0,\"metric_"
    "score\":1.0,\"description\":\"Helo A IP != hostname IP\",\"options\":[\"mail.example.org\"]},\"HFILTER_HELO_NOR"
    "ES_A_OR_MX\":{\"name\":\"HFILTER_HELO_NORES_A_OR_MX\",\"score\":0.300000,\"metric_score\":0.300000,\"descriptio"
    "n\":\"Helo no resolve to A or MX\",\"options\":[\"mail.example.org\"]},\"MAILSPIKE_FAIL\":{\"name\":\"MAILSPIKE"
    "_FAIL\",\"score\":0.0,\"metric_score\":0.0,\"options\":[\"192.0.2.1:query timed out\"]},\"MID_RHS_MATCH_FROMTLD"
    "\":{\"name\":\"MID_RHS_MATCH_FROMTLD\",\"score\":0.0,\"metric_score\":0.0,\"description\":\"Message-ID RHS matc"
    "hes From domain tld\"},\"TO_DN_ALL\":{\"name\":\"TO_DN_ALL\",\"score\":0.0,\"metric_score\":0.0,\"description\""
    ":\"All the recipients have display names\"},\"DKIM_TRACE\":{\"name\":\"DKIM_TRACE\",\"score\":0.0,\"metric_scor"
    "e\":0.0,\"description\":\"DKIM trace symbol\",\"options\":[\"example.org:?\"]},\"FORGED_SENDER\":{\"name\":\"FO"
    "RGED_SENDER\",\"score\":0.300000,\"metric_score\":0.300000,\"description\":\"Sender is forged (different From: "
    "header and smtp MAIL FROM: addresses)\",\"options\":[\"alice@example.org\",\"a@example.org\"]},\"RCVD_COUNT_ZER"
    "O\":{\"name\":\"RCVD_COUNT_ZERO\",\"score\":0.0,\"metric_score\":0.0,\"description\":\"Message has no Received "
    "hea",
    "ders\",\"options\":[\"0\"]},\"R_DKIM_TEMPFAIL\":{\"name\":\"R_DKIM_TEMPFAIL\",\"score\":0.0,\"metric_score\":0."
    "0,\"description\":\"DKIM verification soft-failed\",\"options\":[\"example.org:s=sel\"]},\"RCVD_IN_DNSWL_FAIL\""
    ":{\"name\":\"RCVD_IN_DNSWL_FAIL\",\"score\":0.0,\"metric_score\":0.0,\"options\":[\"192.0.2.1:query timed out\""
    "]},\"HFILTER_FROMHOST_NORES_A_OR_MX\":{\"name\":\"HFILTER_FROMHOST_NORES_A_OR_MX\",\"score\":1.500000,\"metric_"
    "score\":1.500000,\"description\":\"FROM host no resolve to A or MX\",\"options\":[\"example.org\"]},\"DATE_IN_P"
    "AST\":{\"name\":\"DATE_IN_PAST\",\"score\":1.0,\"metric_score\":1.0,\"description\":\"Message date is in past\""
    ",\"options\":[\"27\"]},\"MIME_TRACE\":{\"name\":\"MIME_TRACE\",\"score\":0.0,\"metric_score\":0.0,\"options\":["
    "\"0:+\"]},\"FROM_NEQ_ENVFROM\":{\"name\":\"FROM_NEQ_ENVFROM\",\"score\":0.0,\"metric_score\":0.0,\"description"
    "\":\"From address is different to the envelope\",\"options\":[\"alice@example.org\",\"a@example.org\"]},\"ONCE_"
    "RECEIVED\":{\"name\":\"ONCE_RECEIVED\",\"score\":0.100000,\"metric_score\":0.100000,\"description\":\"One recei"
    "ved header in a message\"},\"ARC_NA\":{\"name\":\"ARC_NA\",\"score\":0.0,\"metric_score\":0.0,\"description\":"
    "\"ARC signature absent\"},\"ASN_FAIL\":{\"name\":\"ASN_FAIL\",\"score\":0.0,\"metric_score\":0.0,\"options\":["
    "\"1.2.0.192.asn.rspamd.com:query timed out\"]},\"RDNS_DNSFAIL\":{\"name\":\"RDNS_DNSFAIL\",\"score\":0.0,\"metr"
    "ic_score\":0.0,\"description\":\"PTR verification DNS error\"},\"SPAMHAUS_FAIL\":{\"name\":\"SPAMHAUS_FAIL\",\""
    "score\":0.0,\"metric_score\":0.0,\"options\":[\"192.0.2.1:query timed out\"]},\"FROM_HAS_DN\":{\"name\":\"FROM_"
    "HAS_DN\",\"score\":0.0,\"metric_score\":0.0,\"description\":\"From header has a display name\"},\"RBL_SEM_FAIL"
    "\":{\"name\":\"RBL_SEM_FAIL\",\"score\":0.0,\"metric_score\":0.0,\"options\":[\"192.0.2.1:query timed out\"]},"
    "\"MIME_GOOD\":{\"name\":\"MIME_GOOD\",\"score\":-0.100000,\"metric_score\":-0.100000,\"description\":\"Known co"
    "ntent-type\",\"options\":[\"t",
    "ext/plain\"]},\"RCPT_COUNT_ONE\":{\"name\":\"RCPT_COUNT_ONE\",\"score\":0.0,\"metric_score\":0.0,\"description"
    "\":\"One recipient\",\"options\":[\"1\"]},\"DMARC_DNSFAIL\":{\"name\":\"DMARC_DNSFAIL\",\"score\":0.0,\"metric_"
    "score\":0.0,\"options\":[\"example.org : query timed out\"]},\"BLOCKLISTDE_FAIL\":{\"name\":\"BLOCKLISTDE_FAIL"
    "\",\"score\":0.0,\"metric_score\":0.0,\"options\":[\"192.0.2.1:query timed out\"]},\"RBL_NIXSPAM_FAIL\":{\"name"
    "\":\"RBL_NIXSPAM_FAIL\",\"score\":0.0,\"metric_score\":0.0,\"options\":[\"192.0.2.1:query timed out\"]},\"HFILT"
    "ER_HOSTNAME_UNKNOWN\":{\"name\":\"HFILTER_HOSTNAME_UNKNOWN\",\"score\":2.500000,\"metric_score\":2.500000,\"des"
    "cription\":\"Unknown client hostname (PTR or FCrDNS verification failed)\"}},\"messages\":{},\"message-id\":\"2"
    "0261203100000.2@mail.example.org\",\"time_real\":3.016735,\"milter\":{\"add_headers\":{\"Authentication-Results"
    "\":{\"value\":\"mx.example.net;\\r\\n\\tdkim=temperror (\\\"DNS error when getting key\\\") header.d=example.or"
    "g header.s=sel header.b=dGVzdHNp;\\r\\n\\tspf=temperror (mx.example.net: error in processing during lookup of a"
    "@example.org: DNS error) smtp.mailfrom=a@example.org;\\r\\n\\tdmarc=temperror reason=\\\"query timed out\\\" he"
    "ader.from=example.org (policy=temperror)\",\"order\":1},\"X-Rspamd-Server\":{\"value\":\"vm\",\"order\":-1},\"X"
    "-Rspamd-Queue-Id\":{\"value\":\"4Q7x1abc\",\"order\":-1},\"X-Spamd-Bar\":{\"value\":\"+++++++\",\"order\":-1},"
    "\"X-Spamd-Result\":{\"value\":\"default: False [7.60 / 15.00];\\r\\n\\tHFILTER_HOSTNAME_UNKNOWN(2.50)[];\\r\\n"
    "\\tHFILTER_FROMHOST_NORES_A_OR_MX(1.50)[example.org];\\r\\n\\tHFILTER_HELO_IP_A(1.00)[mail.example.org];\\r\\n"
    "\\tDATE_IN_PAST(1.00)[27];\\r\\n\\tRDNS_NONE(1.00)[];\\r\\n\\tFORGED_SENDER(0.30)[alice@example.org,a@example.o"
    "rg];\\r\\n\\tHFILTER_HELO_NORES_A_OR_MX(0.30)[mail.example.org];\\r\\n\\tONCE_RECEIVED(0.10)[];\\r\\n\\tMIME_GO"
    "OD(-0.10)[text/plain];\\r\\n\\tTO_DN_ALL(0.00)[];\\r\\n\\tSPAMHAUS_FAIL(0.00)[192.0.2.1:quer",
    "y timed out];\\r\\n\\tASN_FAIL(0.00)[1.2.0.192.asn.rspamd.com:query timed out];\\r\\n\\tRDNS_DNSFAIL(0.00)[];\\"
    "r\\n\\tFROM_HAS_DN(0.00)[];\\r\\n\\tRBL_SEM_FAIL(0.00)[192.0.2.1:query timed out];\\r\\n\\tDMARC_DNSFAIL(0.00)["
    "example.org : query timed out];\\r\\n\\tRCPT_COUNT_ONE(0.00)[1];\\r\\n\\tBLOCKLISTDE_FAIL(0.00)[192.0.2.1:query"
    " timed out];\\r\\n\\tMID_RHS_MATCH_FROMTLD(0.00)[];\\r\\n\\tARC_NA(0.00)[];\\r\\n\\tMIME_TRACE(0.00)[0:+];\\r\\"
    "n\\tRCVD_COUNT_ZERO(0.00)[0];\\r\\n\\tMAILSPIKE_FAIL(0.00)[192.0.2.1:query timed out];\\r\\n\\tDKIM_TRACE(0.00)"
    "[example.org:?];\\r\\n\\tR_SPF_DNSFAIL(0.00)[temporary DNS error];\\r\\n\\tR_DKIM_TEMPFAIL(0.00)[example.org:s="
    "sel];\\r\\n\\tRBL_SENDERSCORE_FAIL(0.00)[192.0.2.1:query timed out];\\r\\n\\tRCVD_IN_DNSWL_FAIL(0.00)[192.0.2.1"
    ":query timed out];\\r\\n\\tRBL_NIXSPAM_FAIL(0.00)[192.0.2.1:query timed out];\\r\\n\\tFROM_NEQ_ENVFROM(0.00)[al"
    "ice@example.org,a@example.org]\",\"order\":-1},\"X-Spam-Status\":{\"value\":\"Yes, score=7.60\",\"order\":-1}},"
    "\"remove_headers\":{\"Authentication-Results\":0,\"X-Rspamd-Server\":0,\"X-Rspamd-Queue-Id\":0,\"X-Spamd-Bar\":"
    "0,\"X-Spam\":0,\"X-Spamd-Result\":0,\"X-Spam-Status\":0}}}",
    NULL,
};

static const char *const resp_rewrite[] = {
    "HTTP/1.1 200 OK\r\nConnection: close\r\nServer: rspamd/3.4\r\nDate: Fri, 04 Dec 2026 13:17:02 GMT\r\nContent-Le"
    "ngth: 5562\r\nContent-Type: application/json\r\n\r\n{\"is_skipped\":false,\"score\":5.800000,\"required_score\""
    ":5.0,\"action\":\"rewrite subject\",\"subject\":\"*** SPAM *** Lunch on Friday\",\"symbols\":{\"RDNS_NONE\":{\""
    "name\":\"RDNS_NONE\",\"score\":1.0,\"metric_score\":1.0,\"description\":\"Cannot resolve reverse DNS for sender"
    "'s IP\"},\"RBL_SENDERSCORE_FAIL\":{\"name\":\"RBL_SENDERSCORE_FAIL\",\"score\":0.0,\"metric_score\":0.0,\"optio"
    "ns\":[\"192.0.2.1:query timed out\"]},\"R_SPF_DNSFAIL\":{\"name\":\"R_SPF_DNSFAIL\",\"score\":0.0,\"metric_scor"
    "e\":0.0,\"description\":\"SPF DNS failure\",\"options\":[\"temporary DNS error\"]},\"HFILTER_HELO_IP_A\":{\"nam"
    "e\":\"HFILTER_HELO_IP_A\",\"score\":1.0,\"metric_score\":1.0,\"description\":\"Helo A IP != hostname IP\",\"opt"
    "ions\":[\"mail.example.org\"]},\"MAILSPIKE_FAIL\":{\"name\":\"MAILSPIKE_FAIL\",\"score\":0.0,\"metric_score\":0"
    ".0,\"options\":[\"192.0.2.1:query timed out\"]},\"MID_RHS_MATCH_FROMTLD\":{\"name\":\"MID_RHS_MATCH_FROMTLD\","
    "\"score\":0.0,\"metric_score\":0.0,\"description\":\"Message-ID RHS matches From domain tld\"},\"TO_DN_ALL\":{"
    "\"name\":\"TO_DN_ALL\",\"score\":0.0,\"metric_score\":0.0,\"description\":\"All the recipients have display nam"
    "es\"},\"FORGED_SENDER\":{\"name\":\"FORGED_SENDER\",\"score\":0.300000,\"metric_score\":0.300000,\"description"
    "\":\"Sender is forged (different From: header and smtp MAIL FROM: addresses)\",\"options\":[\"alice@example.org"
    "\",\"a@example.org\"]},\"RCVD_COUNT_ZERO\":{\"name\":\"RCVD_COUNT_ZERO\",\"score\":0.0,\"metric_score\":0.0,\"d"
    "escription\":\"Message has no Received headers\",\"options\":[\"0\"]},\"RCVD_IN_DNSWL_FAIL\":{\"name\":\"RCVD_I"
    "N_DNSWL_FAIL\",\"score\":0.0,\"metric_score\":0.0,\"options\":[\"192.0.2.1:query timed out\"]},\"R_DKIM_NA\":{"
    "\"name\":\"R_DKIM_NA\",\"score\":0.0,\"metric_score\":0.0,\"description\":\"Missing DKIM signature\"},\"MIME_TR"
    "ACE\":{\"na",
    "me\":\"MIME_TRACE\",\"score\":0.0,\"metric_score\":0.0,\"options\":[\"0:+\"]},\"DATE_IN_PAST\":{\"name\":\"DATE"
    "_IN_PAST\",\"score\":1.0,\"metric_score\":1.0,\"description\":\"Message date is in past\",\"options\":[\"27\"]}"
    ",\"SPAMHAUS_FAIL\":{\"name\":\"SPAMHAUS_FAIL\",\"score\":0.0,\"metric_score\":0.0,\"options\":[\"192.0.2.1:quer"
    "y timed out\"]},\"FROM_NEQ_ENVFROM\":{\"name\":\"FROM_NEQ_ENVFROM\",\"score\":0.0,\"metric_score\":0.0,\"descri"
    "ption\":\"From address is different to the envelope\",\"options\":[\"alice@example.org\",\"a@example.org\"]},\""
    "ONCE_RECEIVED\":{\"name\":\"ONCE_RECEIVED\",\"score\":0.100000,\"metric_score\":0.100000,\"description\":\"One "
    "received header in a message\"},\"ARC_NA\":{\"name\":\"ARC_NA\",\"score\":0.0,\"metric_score\":0.0,\"descriptio"
    "n\":\"ARC signature absent\"},\"ASN_FAIL\":{\"name\":\"ASN_FAIL\",\"score\":0.0,\"metric_score\":0.0,\"options"
    "\":[\"1.2.0.192.asn.rspamd.com:query timed out\"]},\"RDNS_DNSFAIL\":{\"name\":\"RDNS_DNSFAIL\",\"score\":0.0,\""
    "metric_score\":0.0,\"description\":\"PTR verification DNS error\"},\"FROM_HAS_DN\":{\"name\":\"FROM_HAS_DN\",\""
    "score\":0.0,\"metric_score\":0.0,\"description\":\"From header has a display name\"},\"RBL_SEM_FAIL\":{\"name\""
    ":\"RBL_SEM_FAIL\",\"score\":0.0,\"metric_score\":0.0,\"options\":[\"192.0.2.1:query timed out\"]},\"MIME_GOOD\""
    ":{\"name\":\"MIME_GOOD\",\"score\":-0.100000,\"metric_score\":-0.100000,\"description\":\"Known content-type\","
    "\"options\":[\"text/plain\"]},\"RCPT_COUNT_ONE\":{\"name\":\"RCPT_COUNT_ONE\",\"score\":0.0,\"metric_score\":0."
    "0,\"description\":\"One recipient\",\"options\":[\"1\"]},\"BLOCKLISTDE_FAIL\":{\"name\":\"BLOCKLISTDE_FAIL\",\""
    "score\":0.0,\"metric_score\":0.0,\"options\":[\"192.0.2.1:query timed out\"]},\"DMARC_DNSFAIL\":{\"name\":\"DMA"
    "RC_DNSFAIL\",\"score\":0.0,\"metric_score\":0.0,\"options\":[\"example.org : query timed out\"]},\"RBL_NIXSPAM_"
    "FAIL\":{\"name\":\"RBL_NIXSPAM_FAIL\",\"score\":0.0,\"metric_score\":0.0,\"options\":[\"192.0.2.1:query timed o"
    "ut\"]},\"HFILTER_HOSTNAME_UNK",
    "NOWN\":{\"name\":\"HFILTER_HOSTNAME_UNKNOWN\",\"score\":2.500000,\"metric_score\":2.500000,\"description\":\"Un"
    "known client hostname (PTR or FCrDNS verification failed)\"}},\"messages\":{},\"message-id\":\"20261203100000.1"
    "@mail.example.org\",\"time_real\":3.011359,\"milter\":{\"add_headers\":{\"Authentication-Results\":{\"value\":"
    "\"mx.example.net;\\r\\n\\tdkim=none;\\r\\n\\tdmarc=temperror reason=\\\"query timed out\\\" header.from=example"
    ".org (policy=temperror);\\r\\n\\tspf=temperror (mx.example.net: error in processing during lookup of a@example."
    "org: DNS error) smtp.mailfrom=a@example.org\",\"order\":1},\"X-Rspamd-Server\":{\"value\":\"vm\",\"order\":-1},"
    "\"X-Rspamd-Queue-Id\":{\"value\":\"4Q7x1abc\",\"order\":-1},\"X-Spamd-Bar\":{\"value\":\"+++++\",\"order\":-1},"
    "\"X-Spamd-Result\":{\"value\":\"default: False [5.80 / 5.00];\\r\\n\\tHFILTER_HOSTNAME_UNKNOWN(2.50)[];\\r\\n\\"
    "tDATE_IN_PAST(1.00)[27];\\r\\n\\tHFILTER_HELO_IP_A(1.00)[mail.example.org];\\r\\n\\tRDNS_NONE(1.00)[];\\r\\n\\t"
    "FORGED_SENDER(0.30)[alice@example.org,a@example.org];\\r\\n\\tONCE_RECEIVED(0.10)[];\\r\\n\\tMIME_GOOD(-0.10)[t"
    "ext/plain];\\r\\n\\tDMARC_DNSFAIL(0.00)[example.org : query timed out];\\r\\n\\tRDNS_DNSFAIL(0.00)[];\\r\\n\\tA"
    "SN_FAIL(0.00)[1.2.0.192.asn.rspamd.com:query timed out];\\r\\n\\tBLOCKLISTDE_FAIL(0.00)[192.0.2.1:query timed o"
    "ut];\\r\\n\\tFROM_HAS_DN(0.00)[];\\r\\n\\tARC_NA(0.00)[];\\r\\n\\tRBL_SEM_FAIL(0.00)[192.0.2.1:query timed out]"
    ";\\r\\n\\tRCPT_COUNT_ONE(0.00)[1];\\r\\n\\tR_SPF_DNSFAIL(0.00)[temporary DNS error];\\r\\n\\tMAILSPIKE_FAIL(0.0"
    "0)[192.0.2.1:query timed out];\\r\\n\\tRBL_NIXSPAM_FAIL(0.00)[192.0.2.1:query timed out];\\r\\n\\tRCVD_COUNT_ZE"
    "RO(0.00)[0];\\r\\n\\tTO_DN_ALL(0.00)[];\\r\\n\\tMID_RHS_MATCH_FROMTLD(0.00)[];\\r\\n\\tFROM_NEQ_ENVFROM(0.00)[a"
    "lice@example.org,a@example.org];\\r\\n\\tRCVD_IN_DNSWL_FAIL(0.00)[192.0.2.1:query timed out];\\r\\n\\tMIME_TRAC"
    "E(0.00)[0:+];\\r\\n\\tR_DKIM_NA(0.00)[];\\r\\n\\tRBL_SENDERSCORE_FA",
    "IL(0.00)[192.0.2.1:query timed out];\\r\\n\\tSPAMHAUS_FAIL(0.00)[192.0.2.1:query timed out]\",\"order\":-1},\"X"
    "-Spam-Status\":{\"value\":\"Yes, score=5.80\",\"order\":-1}},\"remove_headers\":{\"Authentication-Results\":0,"
    "\"X-Rspamd-Server\":0,\"X-Rspamd-Queue-Id\":0,\"X-Spamd-Bar\":0,\"X-Spam\":0,\"X-Spamd-Result\":0,\"X-Spam-Stat"
    "us\":0}}}",
    NULL,
};

static const char *const resp_empty[] = {
    "HTTP/1.1 200 OK\r\nConnection: close\r\nServer: rspamd/3.4\r\nDate: Fri, 04 Dec 2026 13:19:43 GMT\r\nContent-Le"
    "ngth: 570\r\nContent-Type: application/json\r\n\r\n{\"is_skipped\":false,\"score\":0.0,\"required_score\":15.0,"
    "\"action\":\"no action\",\"symbols\":{},\"messages\":{},\"time_real\":0.003243,\"milter\":{\"add_headers\":{\"A"
    "uthentication-Results\":{\"value\":\"vm;\\r\\n\\tnone\",\"order\":1},\"X-Rspamd-Server\":{\"value\":\"vm\",\"or"
    "der\":-1},\"X-Spamd-Bar\":{\"value\":\"/\",\"order\":-1},\"X-Spamd-Result\":{\"value\":\"default: False [0.00 /"
    " 15.00]\",\"order\":-1},\"X-Spam-Status\":{\"value\":\"No, score=0.00\",\"order\":-1}},\"remove_headers\":{\"Au"
    "thentication-Results\":0,\"X-Rspamd-Server\":0,\"X-Rspamd-Queue-Id\":0,\"X-Spamd-Bar\":0,\"X-Spam\":0,\"X-Spamd"
    "-Result\":0,\"X-Spam-Status\":0}}}",
    NULL,
};

static const char *const resp_notfound[] = {
    "HTTP/1.1 500 invalid command\r\nConnection: close\r\nServer: rspamd/3.4\r\nDate: Fri, 04 Dec 2026 13:19:43 GMT"
    "\r\nContent-Length: 59\r\nContent-Type: application/json\r\n\r\n{\"error\":\"invalid command\",\"error_domain\""
    ":\"protocol-error\"}",
    NULL,
};

static const char *const resp_h10[] = {
    "HTTP/1.1 200 OK\r\nConnection: close\r\nServer: rspamd/3.4\r\nDate: Fri, 04 Dec 2026 13:19:43 GMT\r\nContent-Le"
    "ngth: 2373\r\nContent-Type: application/json\r\n\r\n{\"is_skipped\":false,\"score\":10.400000,\"required_score"
    "\":15.0,\"action\":\"add header\",\"symbols\":{\"ARC_NA\":{\"name\":\"ARC_NA\",\"score\":0.0,\"metric_score\":0"
    ".0,\"description\":\"ARC signature absent\"},\"MISSING_FROM\":{\"name\":\"MISSING_FROM\",\"score\":2.0,\"metric"
    "_score\":2.0,\"description\":\"Missing From: header\"},\"MISSING_TO\":{\"name\":\"MISSING_TO\",\"score\":2.0,\""
    "metric_score\":2.0,\"description\":\"To header is missing\"},\"MISSING_SUBJECT\":{\"name\":\"MISSING_SUBJECT\","
    "\"score\":0.500000,\"metric_score\":2.0,\"description\":\"Subject header is missing\"},\"MISSING_DATE\":{\"name"
    "\":\"MISSING_DATE\",\"score\":1.0,\"metric_score\":1.0,\"description\":\"Message date is missing\"},\"MIME_GOOD"
    "\":{\"name\":\"MIME_GOOD\",\"score\":-0.100000,\"metric_score\":-0.100000,\"description\":\"Known content-type"
    "\",\"options\":[\"text/plain\"]},\"DMARC_NA\":{\"name\":\"DMARC_NA\",\"score\":0.0,\"metric_score\":0.0,\"descr"
    "iption\":\"No DMARC record\",\"options\":[\"No From header\"]},\"R_DKIM_NA\":{\"name\":\"R_DKIM_NA\",\"score\":"
    "0.0,\"metric_score\":0.0,\"description\":\"Missing DKIM signature\"},\"MIME_TRACE\":{\"name\":\"MIME_TRACE\",\""
    "score\":0.0,\"metric_score\":0.0,\"options\":[\"0:+\"]},\"HFILTER_HOSTNAME_UNKNOWN\":{\"name\":\"HFILTER_HOSTNA"
    "ME_UNKNOWN\",\"score\":2.500000,\"metric_score\":2.500000,\"description\":\"Unknown client hostname (PTR or FCr"
    "DNS verification failed)\"},\"RCVD_COUNT_ZERO\":{\"name\":\"RCVD_COUNT_ZERO\",\"score\":0.0,\"metric_score\":0."
    "0,\"description\":\"Message has no Received headers\",\"options\":[\"0\"]},\"MISSING_MID\":{\"name\":\"MISSING_"
    "MID\",\"score\":2.500000,\"metric_score\":2.500000,\"description\":\"Message id is missing\"}},\"messages\":{},"
    "\"message-id\":\"undef\",\"time_real\":0.006104,\"milter\":{\"add_headers\":{\"Authentication-Results\":{\"valu"
    "e\":\"vm;\\r\\tdkim=none;\\r\\t",
    "dmarc=none\",\"order\":1},\"X-Rspamd-Server\":{\"value\":\"vm\",\"order\":-1},\"X-Spamd-Bar\":{\"value\":\"++++"
    "++++++\",\"order\":-1},\"X-Spamd-Result\":{\"value\":\"default: False [10.40 / 15.00];\\r\\tMISSING_MID(2.50)[]"
    ";\\r\\tHFILTER_HOSTNAME_UNKNOWN(2.50)[];\\r\\tMISSING_TO(2.00)[];\\r\\tMISSING_FROM(2.00)[];\\r\\tMISSING_DATE("
    "1.00)[];\\r\\tMISSING_SUBJECT(0.50)[];\\r\\tMIME_GOOD(-0.10)[text/plain];\\r\\tR_DKIM_NA(0.00)[];\\r\\tDMARC_NA"
    "(0.00)[No From header];\\r\\tRCVD_COUNT_ZERO(0.00)[0];\\r\\tMIME_TRACE(0.00)[0:+];\\r\\tARC_NA(0.00)[]\",\"orde"
    "r\":-1},\"X-Spam-Status\":{\"value\":\"Yes, score=10.40\",\"order\":-1}},\"remove_headers\":{\"Authentication-R"
    "esults\":0,\"X-Rspamd-Server\":0,\"X-Rspamd-Queue-Id\":0,\"X-Spamd-Bar\":0,\"X-Spam\":0,\"X-Spamd-Result\":0,\""
    "X-Spam-Status\":0}}}",
    NULL,
};


/* ---- the driver ---- */

/* A vector's pieces joined (malloc'd, NUL-terminated). */
static char *join(const char *const *parts, size_t *len)
{
    size_t n = 0;
    for (size_t i = 0; parts[i]; i++)
        n += strlen(parts[i]);
    char *s = malloc(n + 1);
    assert_non_null(s);
    *len = 0;
    for (size_t i = 0; parts[i]; i++) {
        memcpy(s + *len, parts[i], strlen(parts[i]));
        *len += strlen(parts[i]);
    }
    s[n] = '\0';
    return s;
}

static rspamd_verdict_t verdict; /* 70 KiB: static */
static char rendered[1 << 18];

static void logf_(tu_log_t *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(tu_log_t *l, const char *fmt, ...)
{
    char t[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t, sizeof t, fmt, ap);
    va_end(ap);
    tu_puts(l, t);
}

static void log_slice(tu_log_t *l, const char *label, slice_t s)
{
    tu_puts(l, label);
    tu_put_escaped(l, s);
    tu_puts(l, "\n");
}

/* The verdict as text: every field, the headers, and their rendering. */
static void log_verdict(tu_log_t *l, rspamd_err_t e, const rspamd_verdict_t *v)
{
    logf_(l, "V err=%s action=%s score=%.6f required=%.6f skipped=%d\n", rspamd_err_name(e),
          rspamd_action_name(v->action), v->score, v->required_score, v->is_skipped);
    log_slice(l, "  smtp_message=", v->smtp_message);
    log_slice(l, "  error=", v->error);
    log_slice(l, "  subject=", v->subject);
    logf_(l, "  dkim=%s/%x dmarc=%s/%x policy=%d arc=%s/%x dropped=%u\n", rspamd_auth_name(v->dkim), v->dkim_seen,
          rspamd_auth_name(v->dmarc), v->dmarc_seen, v->dmarc_policy, rspamd_auth_name(v->arc), v->arc_seen,
          v->dropped);
    for (size_t i = 0; i < v->nadd; i++) {
        tu_puts(l, "  add ");
        tu_put_escaped(l, v->add[i].name);
        logf_(l, " order=%d: ", v->add[i].order);
        tu_put_escaped(l, v->add[i].value);
        tu_puts(l, "\n");
    }
    for (size_t i = 0; i < v->nremove; i++) {
        tu_puts(l, "  remove ");
        tu_put_escaped(l, v->remove[i].name);
        logf_(l, " %d\n", v->remove[i].index);
    }
    size_t n = 0;
    assert_int_equal(rspamd_render_headers(v, rendered, sizeof rendered, &n), RSPAMD_ERR_NONE);
    log_slice(l, "  render=", slice_make(rendered, n));
    assert_int_equal(rspamd_render_subject(v, false, rendered, sizeof rendered, &n), RSPAMD_ERR_NONE);
    log_slice(l, "  subject7=", slice_make(rendered, n));
    assert_int_equal(rspamd_render_subject(v, true, rendered, sizeof rendered, &n), RSPAMD_ERR_NONE);
    log_slice(l, "  subject8=", slice_make(rendered, n));
}

/*
 * Feed `in` cut at the sorted split points into a fresh reader (with the
 * caller's buffer of bufcap octets when bufcap is not 0); returns the log:
 * "ERROR reason at=offset", or "DONE code= keep= extra= body=" and the
 * verdict, or "AGAIN at=offset" when the input ran out first.
 */
static tu_log_t drive_buf(const char *in, size_t len, const size_t *splits, size_t nsplits, size_t bufcap)
{
    tu_log_t log = { 0 };
    rspamd_resp_t r;
    char *buf = bufcap ? malloc(bufcap) : NULL;
    if (buf)
        rspamd_resp_init(&r, buf, bufcap);
    else
        memset(&r, 0, sizeof r);
    size_t prev = 0, extra = 0;
    int failed = 0, done = 0;
    for (size_t i = 0; i <= nsplits && !failed; i++) {
        size_t end = i < nsplits ? splits[i] : len;
        assert_true(end >= prev && end <= len);
        guard_buf_t g;
        guard_copy(&g, in + prev, end - prev);
        size_t n = end - prev, used = (size_t)-1;
        enum rspamd_status st = rspamd_resp_feed(&r, g.data, n, &used);
        if (st == RSPAMD_ERROR) {
            assert_int_equal(used, 0);
            assert_int_not_equal(rspamd_resp_error(&r), RSPAMD_ERR_NONE);
            logf_(&log, "ERROR %s at=%zu\n", rspamd_err_name(rspamd_resp_error(&r)), rspamd_resp_offset(&r));
            used = 1; /* sticky */
            assert_int_equal(rspamd_resp_feed(&r, "HTTP/1.1 200 OK\r\n", 17, &used), RSPAMD_ERROR);
            assert_int_equal(used, 0);
            assert_int_equal(rspamd_resp_body(&r).len, 0);
            failed = 1;
        } else if (st == RSPAMD_AGAIN) {
            assert_int_equal(used, n);
            assert_false(done);
            assert_int_equal(rspamd_resp_error(&r), RSPAMD_ERR_NONE);
        } else {
            assert_int_equal(st, RSPAMD_DONE);
            assert_true(used <= n);
            assert_true(!done || used == 0);
            extra += n - used;
            done = 1;
        }
        guard_free(&g);
        prev = end;
    }
    if (done) {
        slice_t body = rspamd_resp_body(&r);
        assert_true(buf == NULL || body.len == 0 || body.ptr == buf);
        logf_(&log, "DONE code=%d keep=%d extra=%zu body=%zu at=%zu\n", rspamd_resp_code(&r),
              rspamd_resp_keepalive(&r), extra, body.len, rspamd_resp_offset(&r));
        /* a guarded copy of the body: the JSON reader must not read past it */
        guard_buf_t g;
        guard_copy(&g, body.ptr, body.len);
        rspamd_err_t e = rspamd_verdict_parse(&verdict, slice_make(g.data, body.len));
        log_verdict(&log, e, &verdict);
        guard_free(&g);
    } else if (!failed) {
        assert_int_equal(rspamd_resp_body(&r).len, 0);
        logf_(&log, "AGAIN at=%zu\n", rspamd_resp_offset(&r));
    }
    rspamd_resp_free(&r);
    free(buf);
    return log;
}

static tu_log_t drive(const char *in, size_t len, const size_t *splits, size_t nsplits)
{
    return drive_buf(in, len, splits, nsplits, 0);
}

static void assert_log(const tu_log_t *got, const char *want, const char *what)
{
    if (strcmp(got->buf, want) != 0)
        fail_msg("%s: got\n%s--- want\n%s", what, got->buf, want);
}

/* The log must hold `want` (a line or a part of one). */
static void assert_has(const tu_log_t *got, const char *want)
{
    if (!strstr(got->buf, want))
        fail_msg("log lacks \"%s\":\n%s", want, got->buf);
}

/* The sample fed whole, byte by byte, at every cut (and every pair of cuts
 * when short) gives one log; returned for the caller's checks. */
static tu_log_t check_splits(const char *in, size_t len)
{
    return tu_check_splits(drive, in, len);
}

/* check_splits on a string, the log must hold want. */
static void expect(const char *in, const char *want)
{
    tu_log_t l = check_splits(in, strlen(in));
    assert_has(&l, want);
    tu_free_log(&l);
}

/* A verdict from JSON alone. */
static rspamd_err_t parse(const char *json)
{
    guard_buf_t g;
    size_t n = strlen(json);
    guard_copy(&g, json, n);
    rspamd_err_t e = rspamd_verdict_parse(&verdict, slice_make(g.data, n));
    guard_free(&g);
    /* the slices pointed into the verdict, not into the freed input */
    return e;
}

static void assert_slice(slice_t s, const char *want)
{
    size_t n = strlen(want);
    if (s.len != n || (n && memcmp(s.ptr, want, n) != 0))
        fail_msg("got \"%.*s\" (%zu), want \"%s\"", (int)s.len, s.ptr ? s.ptr : "", s.len, want);
}

/* ---- the request ---- */

static void test_request_head(void **state)
{
    (void)state;
    static const slice_t rcpts[2] = { SLICE_INIT("b@example.com"), SLICE_INIT("c@example.com") };
    rspamd_env_t env = { SLICE_LIT("192.0.2.1"), SLICE_LIT("mail.example.org"), SLICE_LIT("a@example.org"),
                         rcpts, 2, SLICE_LIT("4Q7x1abc"), SLICE_LIT("mx.example.net") };
    static const char want[] = "POST /checkv2 HTTP/1.1\r\nHost: rspamd\r\nConnection: keep-alive\r\n"
                               "IP: 192.0.2.1\r\nHelo: mail.example.org\r\nFrom: a@example.org\r\n"
                               "Rcpt: b@example.com\r\nRcpt: c@example.com\r\nQueue-Id: 4Q7x1abc\r\n"
                               "MTA-Name: mx.example.net\r\nContent-Length: 1234\r\n\r\n";
    char buf[1024];
    size_t n = 0;
    const char *field = "x";
    assert_int_equal(rspamd_request_head(buf, sizeof buf, &n, &env, 1234, &field), RSPAMD_ERR_NONE);
    assert_null(field);
    assert_int_equal(n, sizeof want - 1);
    assert_memory_equal(buf, want, n);

    /* exactly enough room, in a guarded buffer; one octet less is no room */
    for (size_t cap = 0; cap <= n; cap++) {
        guard_buf_t g;
        char *out = guard_alloc(&g, cap);
        size_t m = 0;
        rspamd_err_t e = rspamd_request_head(out, cap, &m, &env, 1234, NULL);
        assert_int_equal(e, cap == n ? RSPAMD_ERR_NONE : RSPAMD_ERR_NO_ROOM);
        if (cap == n)
            assert_memory_equal(out, want, n);
        guard_free(&g);
    }

    /* the null sender, no recipient, everything optional left out */
    rspamd_env_t bare = { 0 };
    assert_int_equal(rspamd_request_head(buf, sizeof buf, &n, &bare, 18446744073709551615ull, NULL),
                     RSPAMD_ERR_NONE);
    static const char want2[] = "POST /checkv2 HTTP/1.1\r\nHost: rspamd\r\nConnection: keep-alive\r\n"
                                "From: <>\r\nContent-Length: 18446744073709551615\r\n\r\n";
    assert_int_equal(n, sizeof want2 - 1);
    assert_memory_equal(buf, want2, n);

    /* SMTPUTF8 addresses and an IPv6 client pass */
    rspamd_env_t u = env;
    u.sender = SLICE_LIT("j\xc3\xb6rg@b\xc3\xbc" "cher.example");
    u.ip = SLICE_LIT("2001:db8::ffff:192.0.2.1");
    assert_int_equal(rspamd_request_head(buf, sizeof buf, &n, &u, 0, NULL), RSPAMD_ERR_NONE);
    assert_non_null(memmem(buf, n, "From: j\xc3\xb6rg@", 9));
}

/* Every control octet in every field is refused, and the field named. */
static void test_request_injection(void **state)
{
    (void)state;
    static const char *const bad[] = { "\r", "\n", "\r\nIP: 10.0.0.1", "\t", "\x01", "\x1b", "\x7f", "\x1f" };
    static const char *const names[] = { "IP", "Helo", "From", "Rcpt", "Queue-Id", "MTA-Name" };
    char buf[1024];
    size_t n;
    for (size_t f = 0; f < 6; f++) {
        for (size_t b = 0; b < sizeof bad / sizeof bad[0] + 1; b++) {
            char val[64];
            size_t vl;
            if (b < sizeof bad / sizeof bad[0]) {
                vl = (size_t)snprintf(val, sizeof val, "x%sy", bad[b]);
            } else { /* a NUL */
                memcpy(val, "x\0y", 3);
                vl = 3;
            }
            slice_t s = slice_make(val, vl), ok = SLICE_LIT("ok"), rc[2] = { SLICE_LIT("b@example.com"), s };
            rspamd_env_t env = { f == 0 ? s : SLICE_LIT("192.0.2.1"), f == 1 ? s : ok, f == 2 ? s : ok,
                                 rc, f == 3 ? 2 : 1, f == 4 ? s : ok, f == 5 ? s : ok };
            const char *field = NULL;
            assert_int_equal(rspamd_request_head(buf, sizeof buf, &n, &env, 1, &field), RSPAMD_ERR_UNSAFE_VALUE);
            assert_non_null(field);
            assert_string_equal(field, names[f]);
        }
    }
    /* an address is digits, hex, dots and colons; a recipient is not empty */
    static const char *const ips[] = { "192.0.2.1 ", "fe80::1%eth0", "localhost", "[192.0.2.1]" };
    for (size_t i = 0; i < sizeof ips / sizeof ips[0]; i++) {
        rspamd_env_t env = { 0 };
        env.ip = slice_make(ips[i], strlen(ips[i]));
        const char *field = NULL;
        assert_int_equal(rspamd_request_head(buf, sizeof buf, &n, &env, 1, &field), RSPAMD_ERR_UNSAFE_VALUE);
        assert_string_equal(field, "IP");
    }
    slice_t empty[1] = { SLICE_NULL };
    rspamd_env_t env = { 0 };
    env.rcpts = empty;
    env.nrcpts = 1;
    assert_int_equal(rspamd_request_head(buf, sizeof buf, &n, &env, 1, NULL), RSPAMD_ERR_UNSAFE_VALUE);
}

/* ---- rspamd's own responses ---- */

static tu_log_t vector(const char *const *parts)
{
    size_t len;
    char *in = join(parts, &len);
    tu_log_t l = check_splits(in, len);
    /* the same with a caller's buffer just big enough, and one too small */
    const char *body = strstr(in, "\r\n\r\n") + 4;
    size_t blen = len - (size_t)(body - in);
    tu_log_t c = drive_buf(in, len, NULL, 0, blen);
    assert_log(&c, l.buf, "caller's buffer");
    tu_free_log(&c);
    c = drive_buf(in, len, NULL, 0, blen - 1);
    assert_has(&c, "ERROR body_too_large");
    tu_free_log(&c);
    free(in);
    return l;
}

static void test_vector_gtube(void **state)
{
    (void)state;
    tu_log_t l = vector(resp_gtube);
    assert_has(&l, "DONE code=200 keep=0 extra=0 body=238 at=386\n");
    assert_has(&l, "V err=none action=reject score=15.000000 required=15.000000 skipped=1\n");
    assert_has(&l, "  smtp_message=Gtube pattern\n");
    assert_has(&l, "  dkim=absent/0 dmarc=absent/0 policy=0 arc=absent/0 dropped=0\n");
    assert_has(&l, "  render=\n");
    tu_free_log(&l);
}

static void test_vector_clean(void **state)
{
    (void)state;
    tu_log_t l = vector(resp_clean);
    assert_has(&l, "DONE code=200 keep=0 extra=0 body=5333 ");
    assert_has(&l, "V err=none action=greylist score=5.000000 required=15.000000 skipped=0\n");
    assert_has(&l, "  smtp_message=\n");
    assert_has(&l, "  dkim=none/20 dmarc=temperror/8 policy=0 arc=none/20 dropped=0\n");
    assert_has(&l, "  add Authentication-Results order=1: mx.example.net;\\r\\n\\x09dkim=none;\\r\\n\\x09dmarc=temperror");
    assert_has(&l, "  add X-Rspamd-Queue-Id order=-1: 4Q7x1abc\n");
    assert_has(&l, "  add X-Spam-Status order=-1: No, score=5.00\n");
    assert_has(&l, "  remove X-Spam 0\n");
    /* order 1 first, then the appended ones as listed */
    assert_has(&l, "  render=Authentication-Results: mx.example.net;\\r\\n\\x09dkim=none;");
    assert_has(&l, "smtp.mailfrom=a@example.org\\r\\nX-Rspamd-Server: vm\\r\\nX-Rspamd-Queue-Id: 4Q7x1abc\\r\\n"
                   "X-Spamd-Bar: +++++\\r\\nX-Spamd-Result: default: False [5.00 / 15.00];\\r\\n\\x09");
    assert_has(&l, "ARC_NA(0.00)[]\\r\\nX-Spam-Status: No, score=5.00\\r\\n\n");
    tu_free_log(&l);
}

static void test_vector_dkim(void **state)
{
    (void)state;
    tu_log_t l = vector(resp_dkim);
    assert_has(&l, "V err=none action=add header score=7.600000 required=15.000000 skipped=0\n");
    assert_has(&l, "  dkim=temperror/8 dmarc=temperror/8 policy=0 arc=none/20 dropped=0\n");
    assert_has(&l, "\\x09dkim=temperror (\"DNS error when getting key\") header.d=example.org header.s=sel");
    tu_free_log(&l);
}

static void test_vector_rewrite(void **state)
{
    (void)state;
    tu_log_t l = vector(resp_rewrite);
    assert_has(&l, "V err=none action=rewrite subject score=5.800000 required=5.000000 skipped=0\n");
    assert_has(&l, "  subject=*** SPAM *** Lunch on Friday\n");
    assert_has(&l, "  subject7=Subject: *** SPAM *** Lunch on Friday\\r\\n\n");
    assert_has(&l, "  subject8=Subject: *** SPAM *** Lunch on Friday\\r\\n\n");
    tu_free_log(&l);
}

static void test_vector_small(void **state)
{
    (void)state;
    tu_log_t l = vector(resp_empty);
    assert_has(&l, "V err=none action=no action score=0.000000 required=15.000000 skipped=0\n");
    assert_has(&l, "  add Authentication-Results order=1: vm;\\r\\n\\x09none\n");
    assert_has(&l, "  dkim=absent/0 dmarc=absent/0 policy=0 arc=absent/0 dropped=0\n");
    tu_free_log(&l);

    l = vector(resp_notfound);
    assert_has(&l, "DONE code=500 keep=0 extra=0 body=59 at=219\n");
    assert_has(&l, "V err=no_action action=no action");
    assert_has(&l, "  error=invalid command\n");
    tu_free_log(&l);

    /* an LF-only message: rspamd folds with bare LF, and those two go */
    l = vector(resp_h10);
    assert_has(&l, "V err=none action=add header score=10.400000 required=15.000000 skipped=0\n");
    assert_has(&l, "  dkim=none/20 dmarc=none/20 policy=0 arc=none/20 dropped=2\n");
    assert_has(&l, "  add X-Spam-Status order=-1: Yes, score=10.40\n");
    tu_free_log(&l);
}

/* ---- HTTP framing ---- */

#define OK200 "HTTP/1.1 200 OK\r\n"
#define BODY "{\"action\":\"reject\"}"

static void test_http_framing(void **state)
{
    (void)state;
    expect(OK200 "Content-Length: 19\r\n\r\n" BODY, "DONE code=200 keep=1 extra=0 body=19 at=58\n");
    expect(OK200 "Content-Length: 19\r\n\r\n" BODY, "V err=none action=reject ");
    expect("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}", "DONE code=200 keep=0 ");
    expect("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n{}", "DONE code=200 keep=1 ");
    expect(OK200 "Connection: Keep-Alive, CLOSE\r\nContent-Length: 2\r\n\r\n{}", "DONE code=200 keep=0 ");
    expect(OK200 "connection:close\r\ncontent-length:2\r\n\r\n{}", "DONE code=200 keep=0 ");
    expect(OK200 "Connection: upgrade\r\nContent-Length: 2\r\n\r\n{}", "DONE code=200 keep=1 ");
    expect("HTTP/1.1 200\r\nContent-Length: 2\r\n\r\n{}", "DONE code=200 ");
    expect("HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\n{}", "DONE code=200 ");
    expect("HTTP/1.1 404 Not \xc3\xa9 Found\r\nContent-Length: 2\r\n\r\n{}", "DONE code=404 ");
    /* the same length twice is one length; white space around it is OWS */
    expect(OK200 "Content-Length: 2\r\nContent-Length:  2 \t\r\n\r\n{}", "DONE code=200 keep=1 extra=0 body=2");
    /* no body; what follows the response is not taken */
    expect(OK200 "Content-Length: 0\r\n\r\n", "V err=bad_json");
    expect(OK200 "Content-Length: 2\r\n\r\n{}EXTRA", "DONE code=200 keep=1 extra=5 body=2 at=40\n");
    /* an unfinished response */
    expect(OK200 "Content-Length: 5\r\n\r\n{}", "AGAIN at=40\n");
    expect("HTTP/1.1 200 O", "AGAIN at=14\n");
    expect("", "AGAIN at=0\n");
    /* chunked, with an extension, white space before it, and trailers */
    expect(OK200 "Transfer-Encoding: chunked\r\n\r\n"
                 "4;name=value\r\n{\"ac\r\nf ;x\r\ntion\":\"reject\"}\r\n0\r\nX-Trailer: 1\r\n\r\n",
           "DONE code=200 keep=1 extra=0 body=19 ");
    expect(OK200 "Transfer-Encoding: Chunked\r\n\r\n"
                 "2\r\n{}\r\n0\r\n\r\nX",
           "DONE code=200 keep=1 extra=1 body=2 ");
    expect(OK200 "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "V err=bad_json");
}

static void test_http_errors(void **state)
{
    (void)state;
    static const struct {
        const char *in, *want;
    } t[] = {
        /* status line */
        { "HTTP/1.1  200 OK\r\n", "ERROR bad_status_line at=0\n" },
        { "HTTP/1.1 200 OK\n", "ERROR bad_status_line at=0\n" },
        { "HTTP/1.1 200 O\rK\r\n", "ERROR bad_status_line at=0\n" },
        { "HTTP/1.1 200 \x01\r\n", "ERROR bad_status_line at=0\n" },
        { "HTTP/1.1 100 Continue\r\n", "ERROR bad_status_line at=0\n" },
        { "HTTP/1.1 199 X\r\n", "ERROR bad_status_line at=0\n" },
        { "HTTP/1.1 600 X\r\n", "ERROR bad_status_line at=0\n" },
        { "HTTP/1.1 2000 OK\r\n", "ERROR bad_status_line at=0\n" },
        { "HTTP/1.1 20\r\n", "ERROR bad_status_line at=0\n" },
        { "http/1.1 200 OK\r\n", "ERROR bad_status_line at=0\n" },
        { "HTTP/2 200\r\n", "ERROR bad_status_line at=0\n" },
        { "SSH-2.0-OpenSSH_9.2\r\n", "ERROR bad_status_line at=0\n" },
        { "HTTP/2.0 200 OK\r\n", "ERROR bad_http_version at=0\n" },
        { "HTTP/1.2 200 OK\r\n", "ERROR bad_http_version at=0\n" },
        { "HTTP/0.9 200 OK\r\n", "ERROR bad_http_version at=0\n" },
        /* headers */
        { OK200 "Foo bar\r\n", "ERROR bad_header at=17\n" },
        { OK200 "Foo : bar\r\n", "ERROR bad_header at=17\n" },
        { OK200 ": bar\r\n", "ERROR bad_header at=17\n" },
        { OK200 "A: b\r\n folded\r\n", "ERROR bad_header at=23\n" },
        { OK200 "A: b\r\n\tfolded\r\n", "ERROR bad_header at=23\n" },
        { OK200 "Foo: a\rb\r\n", "ERROR bad_header at=17\n" },
        { OK200 "Foo: bar\n", "ERROR bad_header at=17\n" },
        { OK200 "Foo: bar\r\n\n", "ERROR bad_header at=27\n" },
        { OK200 "Fo\x80o: x\r\n", "ERROR bad_header at=17\n" },
        { OK200 "Foo: \x01\r\n", "ERROR bad_header at=17\n" },
        { OK200 "Foo: \x7f\r\n", "ERROR bad_header at=17\n" },
        /* framing */
        { OK200 "Content-Length: +5\r\n", "ERROR bad_content_length at=17\n" },
        { OK200 "Content-Length: 5x\r\n", "ERROR bad_content_length at=17\n" },
        { OK200 "Content-Length: -1\r\n", "ERROR bad_content_length at=17\n" },
        { OK200 "Content-Length:\r\n", "ERROR bad_content_length at=17\n" },
        { OK200 "Content-Length: 1 2\r\n", "ERROR bad_content_length at=17\n" },
        { OK200 "Content-Length: 2, 2\r\n", "ERROR bad_content_length at=17\n" },
        { OK200 "Content-Length: 12345678901234567890\r\n", "ERROR bad_content_length at=17\n" },
        { OK200 "Content-Length: 2\r\nContent-Length: 3\r\n", "ERROR bad_content_length at=36\n" },
        { OK200 "Content-Length: 262145\r\n", "ERROR body_too_large at=17\n" },
        { OK200 "Content-Length: 262144\r\n\r\n{}", "AGAIN at=45\n" },
        { OK200 "Transfer-Encoding: gzip\r\n", "ERROR unsupported_transfer_encoding at=17\n" },
        { OK200 "Transfer-Encoding: gzip, chunked\r\n", "ERROR unsupported_transfer_encoding at=17\n" },
        { OK200 "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
          "ERROR unsupported_transfer_encoding at=45\n" },
        { OK200 "Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n", "ERROR ambiguous_framing at=64\n" },
        { OK200 "Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", "ERROR ambiguous_framing at=64\n" },
        { OK200 "\r\n{}", "ERROR no_content_length at=17\n" },
        { OK200 "Content-Type: application/json\r\n\r\n{}", "ERROR no_content_length at=49\n" },
        /* chunks */
        { OK200 "Transfer-Encoding: chunked\r\n\r\nx\r\n", "ERROR bad_chunk at=47\n" },
        { OK200 "Transfer-Encoding: chunked\r\n\r\n\r\n", "ERROR bad_chunk at=47\n" },
        { OK200 "Transfer-Encoding: chunked\r\n\r\n2x\r\n", "ERROR bad_chunk at=47\n" },
        { OK200 "Transfer-Encoding: chunked\r\n\r\n-2\r\n", "ERROR bad_chunk at=47\n" },
        { OK200 "Transfer-Encoding: chunked\r\n\r\n2;\x01\r\n", "ERROR bad_chunk at=47\n" },
        { OK200 "Transfer-Encoding: chunked\r\n\r\n00000000000000001\r\n", "ERROR bad_chunk at=47\n" },
        { OK200 "Transfer-Encoding: chunked\r\n\r\n0000000000000001\r\nx\r\n0\r\n\r\n", "DONE code=200" },
        { OK200 "Transfer-Encoding: chunked\r\n\r\n40001\r\n", "ERROR body_too_large at=47\n" },
        { OK200 "Transfer-Encoding: chunked\r\n\r\n2\r\n{}X\r\n", "ERROR bad_chunk at=52\n" },
        { OK200 "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\n", "ERROR bad_chunk at=52\n" },
        { OK200 "Transfer-Encoding: chunked\r\n\r\n0\r\nBad trailer\r\n", "ERROR bad_header at=50\n" },
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        tu_log_t l = check_splits(t[i].in, strlen(t[i].in));
        if (!strstr(l.buf, t[i].want))
            fail_msg("#%zu %s: got\n%s--- want\n%s", i, t[i].in, l.buf, t[i].want);
        tu_free_log(&l);
    }
}

/* The line, head and body caps at their edges. */
static void test_http_limits(void **state)
{
    (void)state;
    static char in[RSPAMD_HEAD_MAX * 2];
    /* a header line of RSPAMD_LINE_MAX octets, CRLF included, is in */
    for (int extra = 0; extra <= 1; extra++) {
        size_t n = (size_t)snprintf(in, sizeof in, OK200 "X: ");
        size_t fill = RSPAMD_LINE_MAX - 5 + (size_t)extra;
        memset(in + n, 'a', fill);
        n += fill;
        n += (size_t)snprintf(in + n, sizeof in - n, "\r\nContent-Length: 2\r\n\r\n{}");
        tu_log_t l = check_splits(in, n);
        assert_has(&l, extra ? "ERROR line_too_long at=17\n" : "DONE code=200 ");
        tu_free_log(&l);
    }
    /* RSPAMD_HEAD_LINES lines, the status and blank lines included */
    for (int extra = 0; extra <= 1; extra++) {
        size_t n = (size_t)snprintf(in, sizeof in, OK200 "Content-Length: 2\r\n");
        for (int i = 0; i < RSPAMD_HEAD_LINES - 3 + extra; i++)
            n += (size_t)snprintf(in + n, sizeof in - n, "X-%d: y\r\n", i);
        n += (size_t)snprintf(in + n, sizeof in - n, "\r\n{}");
        tu_log_t l = drive(in, n, NULL, 0);
        assert_has(&l, extra ? "ERROR head_too_large" : "DONE code=200 ");
        tu_free_log(&l);
    }
    /* RSPAMD_HEAD_MAX octets of head */
    for (int extra = 0; extra <= 1; extra++) {
        size_t n = (size_t)snprintf(in, sizeof in, OK200 "Content-Length: 2\r\n");
        while (n + 2000 < RSPAMD_HEAD_MAX - 2)
            n += (size_t)snprintf(in + n, sizeof in - n, "X: %01994d\r\n", 0);
        size_t pad = RSPAMD_HEAD_MAX - 2 - n - 5 + (size_t)extra; /* "Y: " pad "\r\n" then "\r\n" */
        n += (size_t)snprintf(in + n, sizeof in - n, "Y: %0*d\r\n", (int)pad, 0);
        n += (size_t)snprintf(in + n, sizeof in - n, "\r\n{}");
        tu_log_t l = drive(in, n, NULL, 0);
        assert_has(&l, extra ? "ERROR head_too_large" : "DONE code=200 ");
        tu_free_log(&l);
    }
    /* a caller's buffer caps a chunked body across chunks */
    static const char ch[] = OK200 "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    tu_log_t l = drive_buf(ch, sizeof ch - 1, NULL, 0, 4);
    assert_has(&l, "ERROR body_too_large at=55\n");
    tu_free_log(&l);
    l = drive_buf(ch, sizeof ch - 1, NULL, 0, 5);
    assert_has(&l, "DONE code=200 keep=1 extra=0 body=5 ");
    tu_free_log(&l);
    /* a zeroed reader that never saw a body frees nothing */
    rspamd_resp_t r = { 0 };
    rspamd_resp_free(&r);
    assert_int_equal(rspamd_resp_body(&r).len, 0);
    assert_false(rspamd_resp_keepalive(&r));
}

/* ---- the JSON reader ---- */

static void test_json_syntax(void **state)
{
    (void)state;
    static const struct {
        const char *json;
        rspamd_err_t want;
    } t[] = {
        { "{\"action\":\"no action\"}", RSPAMD_ERR_NONE },
        { " \t\r\n{ \"action\" :\n\"reject\" , \"x\" : [ ] , \"y\" : { } } \n", RSPAMD_ERR_NONE },
        { "{\"\\u0061ction\":\"reject\"}", RSPAMD_ERR_NONE },
        { "{\"x\":{\"y\":[1,{\"z\":null},-0.5e-3,true,false,\"s\"],\"w\":true},\"action\":\"reject\"}", RSPAMD_ERR_NONE },
        { "{\"action\":\"reject\",\"x\":\"\\ud83d\\ude00\\\"\\\\\\/\\b\\f\\n\\r\\t\\u0000\"}", RSPAMD_ERR_NONE },
        { "{\"action\":\"reject\",\"x\":\"\xff\xfe raw octets\"}", RSPAMD_ERR_NONE },
        { "", RSPAMD_ERR_JSON },
        { " ", RSPAMD_ERR_JSON },
        { "[]", RSPAMD_ERR_JSON },
        { "\"action\"", RSPAMD_ERR_JSON },
        { "{", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\"", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",}", RSPAMD_ERR_JSON },
        { "{\"action\" \"reject\"}", RSPAMD_ERR_JSON },
        { "{,\"action\":\"reject\"}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\"} x", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\"}{}", RSPAMD_ERR_JSON },
        { "{'action':'reject'}", RSPAMD_ERR_JSON },
        { "{action:\"reject\"}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":01}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":1.}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":.5}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":-}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":+1}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":1e}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":1e+}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":0x10}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":NaN}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":Infinity}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":tru}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":True}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":nul}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":[1,2,]}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":[1 2]}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":[1}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":{\"b\"}}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":{1:2}}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":\"\x01\"}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":\"tab\there\"}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":\"unterminated}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":\"\\x41\"}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":\"\\u12\"}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":\"\\uZZZZ\"}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":\"\\ud800\"}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":\"\\ud800x\"}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":\"\\ud800\\u0041\"}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":\"\\ud800\\ud800\"}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":\"\\udc00\"}", RSPAMD_ERR_JSON },
        { "{\"action\":\"reject\",\"a\":\"\\", RSPAMD_ERR_JSON },
        /* what the verdict needs */
        { "{}", RSPAMD_ERR_NO_ACTION },
        { "{\"score\":1}", RSPAMD_ERR_NO_ACTION },
        { "{\"action\":\"discard\"}", RSPAMD_ERR_ACTION },
        { "{\"action\":\"Reject\"}", RSPAMD_ERR_ACTION },
        { "{\"action\":\"reject \"}", RSPAMD_ERR_ACTION },
        { "{\"action\":\"reject\\u0000\"}", RSPAMD_ERR_ACTION },
        { "{\"action\":\"no action, really no action at all\"}", RSPAMD_ERR_ACTION },
        { "{\"action\":1}", RSPAMD_ERR_FIELD },
        { "{\"action\":null}", RSPAMD_ERR_FIELD },
        { "{\"action\":\"reject\",\"score\":\"1\"}", RSPAMD_ERR_FIELD },
        { "{\"action\":\"reject\",\"required_score\":null}", RSPAMD_ERR_FIELD },
        { "{\"action\":\"reject\",\"is_skipped\":1}", RSPAMD_ERR_FIELD },
        { "{\"action\":\"reject\",\"messages\":[]}", RSPAMD_ERR_FIELD },
        { "{\"action\":\"reject\",\"messages\":{\"smtp_message\":1}}", RSPAMD_ERR_FIELD },
        { "{\"action\":\"reject\",\"symbols\":[]}", RSPAMD_ERR_FIELD },
        { "{\"action\":\"reject\",\"subject\":1}", RSPAMD_ERR_FIELD },
        { "{\"action\":\"reject\",\"error\":{}}", RSPAMD_ERR_FIELD },
        { "{\"action\":\"reject\",\"milter\":[]}", RSPAMD_ERR_NONE },
        { "{\"action\":\"reject\",\"milter\":{\"add_headers\":1,\"remove_headers\":[]}}", RSPAMD_ERR_NONE },
        { "{\"error\":\"Message too large\"}", RSPAMD_ERR_NO_ACTION },
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        rspamd_err_t e = parse(t[i].json);
        if (e != t[i].want)
            fail_msg("#%zu %s: %s, want %s", i, t[i].json, rspamd_err_name(e), rspamd_err_name(t[i].want));
    }
    /* a NULL slice */
    assert_int_equal(rspamd_verdict_parse(&verdict, SLICE_NULL), RSPAMD_ERR_JSON);
    assert_int_equal(parse("{\"action\":\"reject\",\"milter\":[]}"), RSPAMD_ERR_NONE);
    assert_int_equal(verdict.dropped, 1);
    /* duplicate members: the last one counts */
    assert_int_equal(parse("{\"action\":\"reject\",\"action\":\"soft reject\"}"), RSPAMD_ERR_NONE);
    assert_int_equal(verdict.action, RSPAMD_SOFT_REJECT);
    assert_int_equal(parse("{\"error\":\"Message\\r\\ntoo large\"}"), RSPAMD_ERR_NO_ACTION);
    assert_slice(verdict.error, "Message too large");
}

/* Nesting: RSPAMD_JSON_DEPTH levels, the top object included, and no more. */
static void test_json_depth(void **state)
{
    (void)state;
    static char j[8 * RSPAMD_JSON_DEPTH + 64];
    for (int extra = 0; extra <= 1; extra++) {
        size_t n = (size_t)sprintf(j, "{\"action\":\"reject\",\"x\":");
        int levels = RSPAMD_JSON_DEPTH - 1 + extra;
        for (int i = 0; i < levels; i++)
            n += (size_t)sprintf(j + n, "%s", i % 2 ? "[" : "{\"k\":");
        j[n++] = '0';
        for (int i = levels - 1; i >= 0; i--)
            j[n++] = i % 2 ? ']' : '}';
        j[n++] = '}';
        j[n] = 0;
        assert_int_equal(parse(j), extra ? RSPAMD_ERR_JSON_DEPTH : RSPAMD_ERR_NONE);
    }
    /* deep but flat is fine: depth comes back down */
    char flat[8192];
    size_t n = (size_t)sprintf(flat, "{\"action\":\"reject\"");
    for (int i = 0; i < 500; i++)
        n += (size_t)sprintf(flat + n, ",\"k%d\":[[[{}]]]", i);
    strcpy(flat + n, "}");
    assert_int_equal(parse(flat), RSPAMD_ERR_NONE);
}

static void test_json_numbers(void **state)
{
    (void)state;
    static const struct {
        const char *num;
        double want;
    } t[] = {
        { "7.600000", 7.6 },     { "15.0", 15.0 },       { "-0.100000", -0.1 },     { "0", 0 },
        { "-0", 0 },             { "1e2", 100 },         { "1E+2", 100 },           { "1.5E-3", 0.0015 },
        { "0.0015e0", 0.0015 },  { "123456789", 123456789 }, { "2.5e-1", 0.25 },    { "1e-400", 0 },
        { "12345678901234567890123", 1.2345678901234568e22 }, { "0.000000000000000000000000001", 1e-27 },
        { "1.0000000000000000000000000001", 1.0 },
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        char j[160];
        snprintf(j, sizeof j, "{\"action\":\"reject\",\"score\":%s,\"required_score\":%s}", t[i].num, t[i].num);
        assert_int_equal(parse(j), RSPAMD_ERR_NONE);
        double d = verdict.score - t[i].want;
        if (d < 0)
            d = -d;
        if (!(d <= 1e-15 * (t[i].want < 0 ? -t[i].want : t[i].want)))
            fail_msg("%s: %.17g, want %.17g", t[i].num, verdict.score, t[i].want);
        assert_true(verdict.required_score == verdict.score);
    }
    /* rspamd's own spelling is exact */
    assert_int_equal(parse("{\"action\":\"reject\",\"score\":7.600000}"), RSPAMD_ERR_NONE);
    assert_true(verdict.score == 7.6);
    assert_int_equal(parse("{\"action\":\"reject\",\"score\":1e400}"), RSPAMD_ERR_NONE);
    assert_true(verdict.score > 1e308);
}

/* ---- the verdict ---- */

static void test_actions(void **state)
{
    (void)state;
    static const char *const names[] = { "no action", "greylist", "add header", "rewrite subject", "soft reject",
                                         "reject" };
    for (size_t a = 0; a < 6; a++) {
        char j[96];
        snprintf(j, sizeof j, "{\"action\":\"%s\",\"is_skipped\":true}", names[a]);
        assert_int_equal(parse(j), RSPAMD_ERR_NONE);
        assert_int_equal(verdict.action, (rspamd_action_t)a);
        assert_true(verdict.is_skipped);
        assert_string_equal(rspamd_action_name(verdict.action), names[a]);
    }
    assert_string_equal(rspamd_action_name((rspamd_action_t)6), "?");
    assert_string_equal(rspamd_auth_name((rspamd_auth_t)6), "?");
    assert_string_equal(rspamd_err_name((rspamd_err_t)99), "?");
    assert_string_equal(rspamd_err_name(RSPAMD_ERR_NONE), "none");
    for (int e = 0; e <= RSPAMD_ERR_ACTION; e++)
        assert_string_not_equal(rspamd_err_name((rspamd_err_t)e), "?");
}

static void test_auth_symbols(void **state)
{
    (void)state;
    static const struct {
        const char *syms;
        rspamd_auth_t dkim, dmarc, arc;
        rspamd_dmarc_policy_t policy;
        unsigned dkim_seen;
    } t[] = {
        { "", RSPAMD_AUTH_ABSENT, RSPAMD_AUTH_ABSENT, RSPAMD_AUTH_ABSENT, 0, 0 },
        { "\"R_DKIM_ALLOW\":{},\"DMARC_POLICY_ALLOW\":{},\"ARC_ALLOW\":{}", RSPAMD_AUTH_PASS, RSPAMD_AUTH_PASS,
          RSPAMD_AUTH_PASS, 0, 1u << RSPAMD_AUTH_PASS },
        /* two signatures, one good: pass, and both seen */
        { "\"R_DKIM_REJECT\":{\"score\":1},\"R_DKIM_ALLOW\":{\"score\":-0.2}", RSPAMD_AUTH_PASS, 0, 0, 0,
          1u << RSPAMD_AUTH_PASS | 1u << RSPAMD_AUTH_FAIL },
        { "\"R_DKIM_TEMPFAIL\":1,\"R_DKIM_PERMFAIL\":[]", RSPAMD_AUTH_TEMPERROR, 0, 0, 0,
          1u << RSPAMD_AUTH_TEMPERROR | 1u << RSPAMD_AUTH_PERMERROR },
        { "\"R_DKIM_NA\":{},\"DMARC_NA\":{},\"ARC_NA\":{}", RSPAMD_AUTH_NONE, RSPAMD_AUTH_NONE, RSPAMD_AUTH_NONE, 0,
          1u << RSPAMD_AUTH_NONE },
        { "\"DMARC_POLICY_REJECT\":{}", 0, RSPAMD_AUTH_FAIL, 0, RSPAMD_DMARC_POLICY_REJECT, 0 },
        { "\"DMARC_POLICY_QUARANTINE\":{}", 0, RSPAMD_AUTH_FAIL, 0, RSPAMD_DMARC_POLICY_QUARANTINE, 0 },
        { "\"DMARC_POLICY_SOFTFAIL\":{}", 0, RSPAMD_AUTH_FAIL, 0, RSPAMD_DMARC_POLICY_NONE, 0 },
        { "\"DMARC_POLICY_ALLOW_WITH_FAILURES\":{}", 0, RSPAMD_AUTH_PASS, 0, 0, 0 },
        { "\"DMARC_DNSFAIL\":{}", 0, RSPAMD_AUTH_TEMPERROR, 0, 0, 0 },
        { "\"DMARC_BAD_POLICY\":{}", 0, RSPAMD_AUTH_PERMERROR, 0, 0, 0 },
        { "\"ARC_REJECT\":{}", 0, 0, RSPAMD_AUTH_FAIL, 0, 0 },
        { "\"ARC_DNSFAIL\":{}", 0, 0, RSPAMD_AUTH_TEMPERROR, 0, 0 },
        { "\"ARC_INVALID\":{}", 0, 0, RSPAMD_AUTH_PERMERROR, 0, 0 },
        /* near misses name nothing */
        { "\"R_DKIM_ALLOWED\":{},\"r_dkim_allow\":{},\"DMARC\":{},\"ARC_ALLOW_TRUSTED\":{}", 0, 0, 0, 0, 0 },
        { "\"\\u0052_DKIM_ALLOW\":{}", RSPAMD_AUTH_PASS, 0, 0, 0, 1u << RSPAMD_AUTH_PASS },
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        char j[512];
        snprintf(j, sizeof j, "{\"symbols\":{%s},\"action\":\"no action\"}", t[i].syms);
        assert_int_equal(parse(j), RSPAMD_ERR_NONE);
        if (verdict.dkim != t[i].dkim || verdict.dmarc != t[i].dmarc || verdict.arc != t[i].arc ||
            verdict.dmarc_policy != t[i].policy || verdict.dkim_seen != t[i].dkim_seen)
            fail_msg("#%zu %s: dkim=%s/%x dmarc=%s/%d arc=%s", i, t[i].syms, rspamd_auth_name(verdict.dkim),
                     verdict.dkim_seen, rspamd_auth_name(verdict.dmarc), verdict.dmarc_policy,
                     rspamd_auth_name(verdict.arc));
    }
    /* a symbol name longer than any we know is passed over */
    char j[1024];
    snprintf(j, sizeof j, "{\"action\":\"reject\",\"symbols\":{\"R_DKIM_ALLOW%0300d\":{}}}", 0);
    assert_int_equal(parse(j), RSPAMD_ERR_NONE);
    assert_int_equal(verdict.dkim, RSPAMD_AUTH_ABSENT);
}

static void test_smtp_message(void **state)
{
    (void)state;
    assert_int_equal(parse("{\"action\":\"reject\",\"messages\":{\"other\":[1],\"smtp_message\":"
                           "\"  Spam\\r\\n\\tdetected:\\u0001 caf\\u00e9\\u007f \\ud83d\\ude00 \"}}"),
                     RSPAMD_ERR_NONE);
    assert_slice(verdict.smtp_message, "Spam detected: caf? ?");
    /* cut at RSPAMD_TEXT_MAX, never ending in a space */
    static char j[8192];
    size_t n = (size_t)sprintf(j, "{\"action\":\"reject\",\"messages\":{\"smtp_message\":\"");
    for (int i = 0; i < 600; i++)
        n += (size_t)sprintf(j + n, "ab ");
    strcpy(j + n, "\"}}");
    assert_int_equal(parse(j), RSPAMD_ERR_NONE);
    assert_true(verdict.smtp_message.len <= RSPAMD_TEXT_MAX && verdict.smtp_message.len >= RSPAMD_TEXT_MAX - 2);
    assert_true(verdict.smtp_message.ptr[verdict.smtp_message.len - 1] != ' ');
    for (size_t i = 0; i < verdict.smtp_message.len; i++)
        assert_true(verdict.smtp_message.ptr[i] >= 0x20 && verdict.smtp_message.ptr[i] < 0x7f);
    /* only white space: empty */
    assert_int_equal(parse("{\"action\":\"reject\",\"messages\":{\"smtp_message\":\" \\r\\n \"}}"), RSPAMD_ERR_NONE);
    assert_slice(verdict.smtp_message, "");
}

/* ---- headers to add and remove ---- */

static void test_milter_headers(void **state)
{
    (void)state;
    static const char j[] =
        "{\"action\":\"add header\",\"milter\":{\"add_headers\":{"
        "\"X-Plain\":\"v1\","
        "\"X-Obj\":{\"value\":\"v2\",\"order\":0},"
        "\"X-Arr\":[{\"value\":\"a1\",\"order\":2},\"a2\",{\"order\":-1,\"value\":\"a3\",\"other\":[1]}],"
        "\"X-NoValue\":{\"order\":1},"
        "\"X-BadOrder\":{\"value\":\"x\",\"order\":1.5},"
        "\"X-BadOrder2\":{\"value\":\"x\",\"order\":\"1\"},"
        "\"X-BadValue\":{\"value\":1},"
        "\"Bad Name\":\"x\","
        "\"X-Colon:\":\"x\","
        "\"\":\"x\","
        "\"X-\\u00e9\":\"x\","
        "\"X-LF\":\"a\\nb\","
        "\"X-CR\":\"a\\rb\","
        "\"X-CRLF-NoWSP\":\"a\\r\\nb\","
        "\"X-CRLF-Blank\":\"a\\r\\n \\r\\n b\","
        "\"X-CRLF-End\":\"a\\r\\n \","
        "\"X-Ctl\":\"a\\u0001b\","
        "\"X-Del\":\"a\\u007fb\","
        "\"X-BadUtf8\":\"\xc0\x80\","
        "\"X-Surrogate\":\"\xed\xa0\x80\","
        "\"X-Cut\":\"\xe2\x82\","
        "\"X-Num\":5,"
        "\"X-Nested\":[[\"x\"]],"
        "\"X-Fold\":\"a\\r\\n\\tb\","
        "\"X-Tab\":\"a\\tb\","
        "\"X-Utf8\":\"caf\\u00e9 \xe2\x82\xac \\ud83d\\ude00\","
        "\"X-Empty\":\"\""
        "},\"remove_headers\":{\"X-Spam\":0,\"X-Multi\":[1,-1,\"x\"],\"X-Bad\":\"x\",\"X-Float\":1.5,"
        "\"Bad Name\":1,\"X-Big\":10000000}}}";
    assert_int_equal(parse(j), RSPAMD_ERR_NONE);
    tu_log_t l = { 0 };
    log_verdict(&l, RSPAMD_ERR_NONE, &verdict);
    assert_log(&l,
               "V err=none action=add header score=0.000000 required=0.000000 skipped=0\n"
               "  smtp_message=\n  error=\n  subject=\n"
               "  dkim=absent/0 dmarc=absent/0 policy=0 arc=absent/0 dropped=25\n"
               "  add X-Plain order=-1: v1\n"
               "  add X-Obj order=0: v2\n"
               "  add X-Arr order=2: a1\n"
               "  add X-Arr order=-1: a2\n"
               "  add X-Arr order=-1: a3\n"
               "  add X-Fold order=-1: a\\r\\n\\x09b\n"
               "  add X-Tab order=-1: a\\x09b\n"
               "  add X-Utf8 order=-1: caf\\xc3\\xa9 \\xe2\\x82\\xac \\xf0\\x9f\\x98\\x80\n"
               "  add X-Empty order=-1: \n"
               "  remove X-Spam 0\n"
               "  remove X-Multi 1\n"
               "  remove X-Multi -1\n"
               "  render=X-Obj: v2\\r\\nX-Arr: a1\\r\\nX-Plain: v1\\r\\nX-Arr: a2\\r\\nX-Arr: a3\\r\\n"
               "X-Fold: a\\r\\n\\x09b\\r\\nX-Tab: a\\x09b\\r\\n"
               "X-Utf8: caf\\xc3\\xa9 \\xe2\\x82\\xac \\xf0\\x9f\\x98\\x80\\r\\nX-Empty: \\r\\n\n"
               "  subject7=\n  subject8=\n",
               "milter headers");
    tu_free_log(&l);

    /* the render never writes past cap */
    size_t need;
    assert_int_equal(rspamd_render_headers(&verdict, rendered, sizeof rendered, &need), RSPAMD_ERR_NONE);
    for (size_t cap = 0; cap <= need; cap++) {
        guard_buf_t g;
        char *out = guard_alloc(&g, cap);
        size_t n = 0;
        assert_int_equal(rspamd_render_headers(&verdict, out, cap, &n),
                         cap == need ? RSPAMD_ERR_NONE : RSPAMD_ERR_NO_ROOM);
        guard_free(&g);
    }
}

/* RSPAMD_ADD_MAX and RSPAMD_REMOVE_MAX entries kept, the rest counted; the
 * arena full drops a header and leaves room for the next. */
static void test_milter_caps(void **state)
{
    (void)state;
    static char j[200000];
    size_t n = (size_t)sprintf(j, "{\"action\":\"reject\",\"milter\":{\"add_headers\":{");
    for (int i = 0; i < RSPAMD_ADD_MAX + 8; i++)
        n += (size_t)sprintf(j + n, "%s\"X-H%d\":\"v%d\"", i ? "," : "", i, i);
    n += (size_t)sprintf(j + n, "},\"remove_headers\":{");
    for (int i = 0; i < RSPAMD_REMOVE_MAX + 3; i++)
        n += (size_t)sprintf(j + n, "%s\"X-R%d\":%d", i ? "," : "", i, i);
    strcpy(j + n, "}}}");
    assert_int_equal(parse(j), RSPAMD_ERR_NONE);
    assert_int_equal(verdict.nadd, RSPAMD_ADD_MAX);
    assert_int_equal(verdict.nremove, RSPAMD_REMOVE_MAX);
    assert_int_equal(verdict.dropped, 8 + 3);
    assert_slice(verdict.add[RSPAMD_ADD_MAX - 1].name, "X-H31");
    assert_slice(verdict.add[RSPAMD_ADD_MAX - 1].value, "v31");
    assert_slice(verdict.remove[RSPAMD_REMOVE_MAX - 1].name, "X-R31");

    /* a value bigger than the arena, then a small one */
    n = (size_t)sprintf(j, "{\"action\":\"reject\",\"milter\":{\"add_headers\":{\"X-Big\":\"");
    for (int i = 0; i < RSPAMD_ARENA_MAX / 2 + 10; i++)
        n += (size_t)sprintf(j + n, "a ");
    strcpy(j + n, "a\",\"X-Small\":\"s\"},\"remove_headers\":{\"X-Gone\":0}},\"subject\":\"S\"}");
    assert_int_equal(parse(j), RSPAMD_ERR_NONE);
    assert_int_equal(verdict.dropped, 1);
    assert_int_equal(verdict.nadd, 1);
    assert_slice(verdict.add[0].name, "X-Small");
    assert_slice(verdict.add[0].value, "s");
    assert_slice(verdict.remove[0].name, "X-Gone");
    assert_slice(verdict.subject, "S");
    /* the slices lie in the verdict's arena */
    assert_true(verdict.add[0].name.ptr >= verdict.arena && verdict.subject.ptr < verdict.arena + verdict.arena_len);
}

/* Each wire line of a rendered header is at most 998 octets, continuation
 * lines start with white space, and unfolding gives "name: value". */
static void check_wire(const char *w, size_t n, const char *name, slice_t value)
{
    size_t col = 0;
    char *unf = malloc(n + 1);
    size_t k = 0;
    assert_true(n >= 2 && w[n - 2] == '\r' && w[n - 1] == '\n');
    for (size_t i = 0; i < n; i++) {
        if (w[i] == '\r') {
            assert_true(i + 1 < n && w[i + 1] == '\n');
            assert_true(i + 2 == n || w[i + 2] == ' ' || w[i + 2] == '\t');
            assert_true(col <= RSPAMD_WIRE_LINE_MAX);
            col = 0;
            i++;
            continue;
        }
        assert_true(w[i] != '\n');
        unf[k++] = w[i];
        col++;
    }
    size_t nl = strlen(name);
    assert_true(k == nl + 2 + value.len - 0 || k <= nl + 2 + value.len);
    assert_memory_equal(unf, name, nl);
    assert_memory_equal(unf + nl, ": ", 2);
    /* the value's own folds are gone from both sides */
    size_t m = 0;
    for (size_t i = 0; i < value.len; i++) {
        if (value.ptr[i] == '\r') {
            i++;
            continue;
        }
        assert_true(nl + 2 + m < k);
        assert_int_equal(unf[nl + 2 + m], value.ptr[i]);
        m++;
    }
    assert_int_equal(nl + 2 + m, k);
    free(unf);
}

static void test_folding(void **state)
{
    (void)state;
    static char v[8192], out[16384];
    /* one word filling the line exactly, and one octet more */
    memset(v, 'a', sizeof v);
    assert_true(rspamd_header_ok(SLICE_LIT("X"), slice_make(v, RSPAMD_WIRE_LINE_MAX - 3)));
    assert_false(rspamd_header_ok(SLICE_LIT("X"), slice_make(v, RSPAMD_WIRE_LINE_MAX - 2)));
    /* a break before the space: the second line is " " and the word */
    memcpy(v, "b ", 2);
    assert_true(rspamd_header_ok(SLICE_LIT("X"), slice_make(v, 2 + RSPAMD_WIRE_LINE_MAX - 1)));
    assert_false(rspamd_header_ok(SLICE_LIT("X"), slice_make(v, 2 + RSPAMD_WIRE_LINE_MAX)));
    /* the value's own fold, then a line of 998 and of 999 */
    memcpy(v, "s\r\n ", 4);
    assert_true(rspamd_header_ok(SLICE_LIT("X"), slice_make(v, 4 + RSPAMD_WIRE_LINE_MAX - 1)));
    assert_false(rspamd_header_ok(SLICE_LIT("X"), slice_make(v, 4 + RSPAMD_WIRE_LINE_MAX)));
    /* white space only before the break point does not make a line */
    memset(v, ' ', 10);
    memset(v + 10, 'a', 2000);
    assert_false(rspamd_header_ok(SLICE_LIT("X"), slice_make(v, 2010)));
    /* names: ftext, 1..RSPAMD_NAME_MAX */
    assert_true(rspamd_header_ok(SLICE_LIT("X-!#$%&'*+-.^_`|~{}[]\"/<>?@=,;"), SLICE_LIT("v")));
    assert_false(rspamd_header_ok(SLICE_LIT("X:Y"), SLICE_LIT("v")));
    assert_false(rspamd_header_ok(SLICE_LIT("X Y"), SLICE_LIT("v")));
    assert_false(rspamd_header_ok(SLICE_LIT("X\x7f"), SLICE_LIT("v")));
    assert_false(rspamd_header_ok(SLICE_LIT(""), SLICE_LIT("v")));
    assert_true(rspamd_header_ok(slice_make(v + 10, RSPAMD_NAME_MAX), SLICE_LIT("v")));
    assert_false(rspamd_header_ok(slice_make(v + 10, RSPAMD_NAME_MAX + 1), SLICE_LIT("v")));
    /* values */
    assert_true(rspamd_header_ok(SLICE_LIT("X"), SLICE_LIT("\r\n\tleading fold")));
    assert_false(rspamd_header_ok(SLICE_LIT("X"), SLICE_LIT("trailing\r\n")));
    assert_false(rspamd_header_ok(SLICE_LIT("X"), SLICE_LIT("a\r\n\t\r\n\tb")));
    assert_false(rspamd_header_ok(SLICE_LIT("X"), SLICE_LIT("a\n\tb")));
    assert_false(rspamd_header_ok(SLICE_LIT("X"), SLICE_LIT("a\r\tb")));
    assert_false(rspamd_header_ok(SLICE_LIT("X"), SLICE_LIT("\xf4\x90\x80\x80"))); /* over U+10FFFF */
    assert_false(rspamd_header_ok(SLICE_LIT("X"), SLICE_LIT("\xe0\x80\xaf")));     /* overlong */
    assert_false(rspamd_header_ok(SLICE_LIT("X"), SLICE_LIT("\x80")));
    assert_true(rspamd_header_ok(SLICE_LIT("X"), SLICE_LIT("\xf4\x8f\xbf\xbf")));

    /* long values of words fold under the limit and unfold to themselves */
    static const size_t words[] = { 1, 7, 77, 500, 997, 998 };
    for (size_t w = 0; w < sizeof words / sizeof words[0]; w++) {
        size_t n = 2;
        memcpy(v, "s ", 2);
        while (n + words[w] + 1 < 6000) {
            memset(v + n, 'w', words[w]);
            n += words[w];
            char sep = (n / 7) % 3 ? ' ' : '\t';
            v[n++] = sep;
        }
        v[n++] = 'z';
        char json[16384];
        size_t jn = (size_t)sprintf(json, "{\"action\":\"reject\",\"milter\":{\"add_headers\":{\"X-Long\":\"");
        for (size_t i = 0; i < n; i++)
            jn += (size_t)sprintf(json + jn, v[i] == '\t' ? "\\t" : "%c", v[i]);
        strcpy(json + jn, "\"}}}");
        assert_int_equal(parse(json), RSPAMD_ERR_NONE);
        bool ok = words[w] <= RSPAMD_WIRE_LINE_MAX - 1; /* after a space */
        assert_int_equal(verdict.nadd, ok ? 1 : 0);
        if (!verdict.nadd)
            continue;
        size_t len;
        assert_int_equal(rspamd_render_headers(&verdict, out, sizeof out, &len), RSPAMD_ERR_NONE);
        check_wire(out, len, "X-Long", slice_make(v, n));
    }
    /* rspamd's own X-Spamd-Result keeps its folds */
    assert_int_equal(parse("{\"action\":\"reject\",\"milter\":{\"add_headers\":{\"X-Spamd-Result\":"
                           "{\"value\":\"default: False [5.00 / 15.00];\\r\\n\\tR_DKIM_NA(0.00)[]\",\"order\":-1}}}}"),
                     RSPAMD_ERR_NONE);
    size_t len;
    assert_int_equal(rspamd_render_headers(&verdict, out, sizeof out, &len), RSPAMD_ERR_NONE);
    assert_int_equal(len, strlen("X-Spamd-Result: default: False [5.00 / 15.00];\r\n\tR_DKIM_NA(0.00)[]\r\n"));
    assert_memory_equal(out, "X-Spamd-Result: default: False [5.00 / 15.00];\r\n\tR_DKIM_NA(0.00)[]\r\n", len);
}

/* ---- the subject ---- */

static int unb64(char c)
{
    const char *t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char *p = strchr(t, c);
    return c && p ? (int)(p - t) : -1;
}

/* Decode "Subject: =?UTF-8?B?...?=\r\n =?UTF-8?B?...?=\r\n" back to text;
 * every word at most 75 octets, no character cut. */
static size_t decode_words(const char *w, size_t n, char *out)
{
    size_t k = 0, i = 9;
    assert_memory_equal(w, "Subject: ", 9);
    while (i < n) {
        if (w[i] == ' ')
            i++;
        assert_memory_equal(w + i, "=?UTF-8?B?", 10);
        const char *end = memmem(w + i + 10, n - i - 10, "?=", 2);
        assert_non_null(end);
        size_t wl = (size_t)(end + 2 - (w + i));
        assert_true(wl <= 75);
        size_t start = k;
        for (const char *p = w + i + 10; p < end; p += 4) {
            int a = unb64(p[0]), b = unb64(p[1]), c = p[2] == '=' ? 0 : unb64(p[2]), d = p[3] == '=' ? 0 : unb64(p[3]);
            assert_true(a >= 0 && b >= 0 && c >= 0 && d >= 0);
            uint32_t x = (uint32_t)(a << 18 | b << 12 | c << 6 | d);
            out[k++] = (char)(x >> 16);
            if (p[2] != '=')
                out[k++] = (char)(x >> 8 & 0xff);
            if (p[3] != '=')
                out[k++] = (char)(x & 0xff);
        }
        /* a word starts at a character and ends at one */
        assert_true(((unsigned char)out[start] & 0xc0) != 0x80);
        i = (size_t)(end + 2 - w);
        assert_memory_equal(w + i, "\r\n", 2);
        i += 2;
    }
    return k;
}

static void test_subject(void **state)
{
    (void)state;
    char out[8192], dec[8192];
    size_t n;
    /* ASCII: as it is, either way */
    assert_int_equal(parse("{\"action\":\"rewrite subject\",\"subject\":\"*** SPAM *** Hi\"}"), RSPAMD_ERR_NONE);
    assert_int_equal(rspamd_render_subject(&verdict, false, out, sizeof out, &n), RSPAMD_ERR_NONE);
    assert_int_equal(n, strlen("Subject: *** SPAM *** Hi\r\n"));
    assert_memory_equal(out, "Subject: *** SPAM *** Hi\r\n", n);
    for (size_t cap = 0; cap < n; cap++)
        assert_int_equal(rspamd_render_subject(&verdict, true, out, cap, &n), RSPAMD_ERR_NO_ROOM);

    /* UTF-8: raw for SMTPUTF8, encoded-words otherwise */
    assert_int_equal(parse("{\"action\":\"rewrite subject\",\"subject\":\"*** SPAM *** caf\\u00e9\"}"),
                     RSPAMD_ERR_NONE);
    assert_int_equal(rspamd_render_subject(&verdict, true, out, sizeof out, &n), RSPAMD_ERR_NONE);
    assert_memory_equal(out, "Subject: *** SPAM *** caf\xc3\xa9\r\n", n);
    assert_int_equal(rspamd_render_subject(&verdict, false, out, sizeof out, &n), RSPAMD_ERR_NONE);
    assert_memory_equal(out, "Subject: =?UTF-8?B?KioqIFNQQU0gKioqIGNhZsOp?=\r\n", n);

    /* long, in characters of every width, with a fold of rspamd's */
    static char j[8192];
    size_t jn = (size_t)sprintf(j, "{\"action\":\"rewrite subject\",\"subject\":\"start\\r\\n ");
    static const char *const chars[] = { "a", "\\u00e9", "\\u20ac", "\\ud83d\\ude00", " " };
    for (int i = 0; i < 300; i++)
        jn += (size_t)sprintf(j + jn, "%s", chars[(i * 7) % 5]);
    strcpy(j + jn, "\"}");
    assert_int_equal(parse(j), RSPAMD_ERR_NONE);
    assert_true(verdict.subject.len > 600);
    assert_int_equal(rspamd_render_subject(&verdict, false, out, sizeof out, &n), RSPAMD_ERR_NONE);
    size_t k = decode_words(out, n, dec);
    /* the fold's CRLF is gone, its space stays */
    assert_int_equal(k, verdict.subject.len - 2);
    assert_memory_equal(dec, "start ", 6);
    assert_memory_equal(dec + 6, verdict.subject.ptr + 8, k - 6);
    for (size_t i = 0, col = 0; i < n; i++, col++) {
        if (out[i] == '\r')
            assert_true(col <= 76), col = (size_t)-1, i++;
    }
    for (size_t cap = 0; cap < n; cap += 7) {
        guard_buf_t g;
        char *o = guard_alloc(&g, cap);
        size_t m;
        assert_int_equal(rspamd_render_subject(&verdict, false, o, cap, &m), RSPAMD_ERR_NO_ROOM);
        guard_free(&g);
    }

    /* refused subjects: dropped, the verdict stands */
    assert_int_equal(parse("{\"action\":\"rewrite subject\",\"subject\":\"a\\u0000b\"}"), RSPAMD_ERR_NONE);
    assert_int_equal(verdict.subject.len, 0);
    assert_int_equal(verdict.dropped, 1);
    assert_int_equal(rspamd_render_subject(&verdict, false, out, sizeof out, &n), RSPAMD_ERR_NONE);
    assert_int_equal(n, 0);
    assert_int_equal(parse("{\"action\":\"rewrite subject\",\"subject\":\"a\\nb\"}"), RSPAMD_ERR_NONE);
    assert_int_equal(verdict.dropped, 1);
    assert_int_equal(parse("{\"action\":\"rewrite subject\",\"subject\":\"\xff\"}"), RSPAMD_ERR_NONE);
    assert_int_equal(verdict.dropped, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_head), cmocka_unit_test(test_request_injection),
        cmocka_unit_test(test_vector_gtube), cmocka_unit_test(test_vector_clean),
        cmocka_unit_test(test_vector_dkim),  cmocka_unit_test(test_vector_rewrite),
        cmocka_unit_test(test_vector_small), cmocka_unit_test(test_http_framing),
        cmocka_unit_test(test_http_errors),  cmocka_unit_test(test_http_limits),
        cmocka_unit_test(test_json_syntax),  cmocka_unit_test(test_json_depth),
        cmocka_unit_test(test_json_numbers), cmocka_unit_test(test_actions),
        cmocka_unit_test(test_auth_symbols), cmocka_unit_test(test_smtp_message),
        cmocka_unit_test(test_milter_headers), cmocka_unit_test(test_milter_caps),
        cmocka_unit_test(test_folding),      cmocka_unit_test(test_subject),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

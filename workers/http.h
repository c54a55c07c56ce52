/*
 * http.h - the operations endpoint: /metrics, /healthz, /readyz over HTTP.
 *
 * Served by libmicrohttpd in a thread of its own, outside the workers'
 * loops: a scrape or a health check never waits behind mail, and mail never
 * waits behind them. The endpoint only reads what the workers publish
 * (metrics.h: relaxed loads), so it needs no lock with them.
 */
#ifndef MXGATE_HTTP_H
#define MXGATE_HTTP_H

#include <stddef.h>

typedef struct http_server http_server_t;

/* What a request gets: status code and body (text/plain). */
typedef struct http_reply {
    unsigned status;
    const char *content_type;
    char *body; /* malloc'd by the handler; the server frees it */
    size_t len;
} http_reply_t;

/* Called in the server's thread for every GET. */
typedef void http_handler_fn(void *ctx, const char *path, http_reply_t *out);

/* Listen on "addr:port" ([v6]:port). NULL with err on failure. */
http_server_t *http_start(const char *listen, http_handler_fn *fn, void *ctx, char *err, size_t errlen);
void http_stop(http_server_t *s);

#endif

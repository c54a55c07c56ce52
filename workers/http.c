/*
 * http.c - the operations endpoint over libmicrohttpd (see http.h).
 *
 * A kept library, not a hand-written parser: the endpoint faces whatever
 * can reach it, and HTTP's corners (pipelining, slow clients, odd framing)
 * are libmicrohttpd's business. One internal polling thread, a connection
 * limit and a timeout keep it small and bounded.
 */
#include "http.h"

#include "worker.h" /* worker_parse_addr */

#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>

#define HTTP_CONN_LIMIT 64 /* scrapers and probes, not the public */
#define HTTP_TIMEOUT_S 10

struct http_server {
    struct MHD_Daemon *d;
    http_handler_fn *fn;
    void *ctx;
};

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_len, void **state)
{
    (void)version, (void)upload, (void)upload_len, (void)state;
    http_server_t *s = cls;
    http_reply_t r = { 404, "text/plain; charset=utf-8", NULL, 0 };
    bool readable = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    if (readable)
        s->fn(s->ctx, url, &r);
    if (!r.body) {
        r.status = readable ? 404 : 405;
        r.body = strdup(readable ? "not found\n" : "method not allowed\n");
        r.len = r.body ? strlen(r.body) : 0;
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(r.len, r.body, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(r.body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", r.content_type);
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    enum MHD_Result ret = MHD_queue_response(c, r.status, resp);
    MHD_destroy_response(resp);
    return ret;
}

http_server_t *http_start(const char *listen, http_handler_fn *fn, void *ctx, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (worker_parse_addr(listen, &ss, &len)) {
        snprintf(err, errlen, "http_listen: bad address %s", listen);
        return NULL;
    }
    http_server_t *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "http_listen: out of memory");
        return NULL;
    }
    s->fn = fn;
    s->ctx = ctx;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    s->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTP_CONN_LIMIT, MHD_OPTION_CONNECTION_TIMEOUT,
                            (unsigned)HTTP_TIMEOUT_S, MHD_OPTION_END);
    if (!s->d) {
        snprintf(err, errlen, "http_listen %s: cannot listen (address in use, or not allowed)", listen);
        free(s);
        return NULL;
    }
    return s;
}

void http_stop(http_server_t *s)
{
    if (!s)
        return;
    MHD_stop_daemon(s->d);
    free(s);
}

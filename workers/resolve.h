/*
 * resolve.h - the downstream's address, looked up by name and kept fresh.
 *
 * `downstream` may be an IP literal (used as it is) or a host name. A name
 * is looked up by a thread of this module, never by a worker loop: first in
 * the hosts file (system resolver only), then in DNS (A, then AAAA when
 * there is no A) with libresolv against `dns_server` or the system's
 * resolver, and looked up again when the answer's TTL runs out (clamped to
 * RESOLVE_TTL_MIN_S..RESOLVE_TTL_MAX_S), or every RESOLVE_RETRY_S while it
 * fails. A name that does not resolve does not stop mxgate: it starts, and
 * until the name resolves every connect fails the way a refused one does
 * (MAIL gets 451 4.4.1) and /readyz says 503.
 *
 * The workers read the current address when they open a connection, not per
 * message: a mutex-held copy (resolve_get). A new address applies to new
 * connections; open ones live on until they are retired as usual.
 */
#ifndef MXGATE_RESOLVE_H
#define MXGATE_RESOLVE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#define RESOLVE_TTL_MIN_S 5u     /* an answer is trusted at least this long */
#define RESOLVE_TTL_MAX_S 3600u  /* and looked up again at least this often */
#define RESOLVE_RETRY_S 1u       /* while it fails */
#define RESOLVE_HOSTS_TTL_S 60u  /* a hosts-file entry has no TTL: read again this often */
#define RESOLVE_FIRST_WAIT_MS 3000u /* resolve_start() waits this long for the first answer */

typedef struct resolve resolve_t;

/*
 * For "host:port" or "[v6]:port". dns_server: "ip:port", "[v6]:port" or ""
 * (the system resolver, /etc/resolv.conf, with its search list); timeout_s
 * per DNS query. NULL with err when the text is not host:port.
 */
resolve_t *resolve_new(const char *hostport, const char *dns_server, unsigned timeout_s, char *err, size_t errlen);

/* A name: start the lookup thread and wait up to RESOLVE_FIRST_WAIT_MS for
 * its first answer (found or not). An IP literal: nothing to do. 0, or -1
 * with err (no thread). */
int resolve_start(resolve_t *r, char *err, size_t errlen);

/* Stop the thread (a lookup in progress is not waited for long) and free. */
void resolve_free(resolve_t *r);

/* The current address (port included) into ss/len, from any thread; false
 * while the name does not resolve. ss may be NULL: only whether it does. */
bool resolve_get(resolve_t *r, struct sockaddr_storage *ss, socklen_t *len);

#endif

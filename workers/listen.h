/*
 * listen.h - before the workers bind: is each address free, and bind errors
 * that say what to do about them.
 *
 * The workers' listeners use SO_REUSEPORT, so a second mxgate started on
 * the same address would not fail: it would join the first and take a share
 * of its connections. listen_probe() binds the address once without
 * SO_REUSEPORT (and with SO_REUSEADDR, as the real listener has): the kernel
 * refuses that with EADDRINUSE while anything listens there, but not for
 * connections of an earlier instance left in TIME_WAIT, so a quick restart
 * still works.
 */
#ifndef MXGATE_LISTEN_H
#define MXGATE_LISTEN_H

#include <stddef.h>
#include <sys/socket.h>

/* Probe addr ("ip:port"; what = "listen" or "http_listen", for the message).
 * 0 when a listener could be bound there now; -1 with err otherwise:
 * "listen 127.0.0.1:2525: address already in use (another mxgate or another
 * server is listening there)", or a bind error with its hint. */
int listen_probe(const char *what, const char *addr, char *err, size_t errlen);

/* "WHAT ADDR: strerror(e)" and, where the cause is known, what to do:
 * EACCES on a privileged port names CAP_NET_BIND_SERVICE and the sysctl
 * net.ipv4.ip_unprivileged_port_start with its current value. */
void listen_error(char *err, size_t errlen, const char *what, const char *addr, const struct sockaddr *sa, int e);

#endif

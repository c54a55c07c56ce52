/*
 * listen.c - the probe before binding and bind errors with hints (listen.h).
 */
#include "listen.h"

#include "worker.h" /* worker_parse_addr */

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define UNPRIV_PORT_SYSCTL "/proc/sys/net/ipv4/ip_unprivileged_port_start"

/* The first unprivileged port of this network namespace; -1 if unknown. */
static long unprivileged_port_start(void)
{
    int fd = open(UNPRIV_PORT_SYSCTL, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char buf[32];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    char *end;
    long v = strtol(buf, &end, 10);
    return end == buf || v < 0 ? -1 : v;
}

static unsigned port_of(const struct sockaddr *sa)
{
    if (sa && sa->sa_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)(const void *)sa)->sin_port);
    if (sa && sa->sa_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)(const void *)sa)->sin6_port);
    return 0;
}

void listen_error(char *err, size_t errlen, const char *what, const char *addr, const struct sockaddr *sa, int e)
{
    unsigned port = port_of(sa);
    long start = unprivileged_port_start();
    char now[48];
    if (start < 0)
        snprintf(now, sizeof now, "unreadable here");
    else
        snprintf(now, sizeof now, "now %ld", start);
    switch (e) {
    case EADDRINUSE:
        snprintf(err, errlen, "%s %s: address already in use (another mxgate or another server is listening there)",
                 what, addr);
        return;
    case EACCES:
    case EPERM:
        if (e == EACCES && port && (start < 0 || port < (unsigned long)start)) {
            snprintf(err, errlen,
                     "%s %s: %s. Port %u is privileged here (the sysctl net.ipv4.ip_unprivileged_port_start is "
                     "%s): start mxgate as root (it drops to `user` after binding), or give it the capability "
                     "CAP_NET_BIND_SERVICE (systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE; or setcap "
                     "cap_net_bind_service=+ep on the binary), or lower net.ipv4.ip_unprivileged_port_start "
                     "(per network namespace; Docker sets 0 in its containers), or listen on a port from %ld up "
                     "and forward %u to it",
                     what, addr, strerror(e), port, now, start < 0 ? 1024 : start, port);
            return;
        }
        snprintf(err, errlen,
                 "%s %s: %s (not for want of CAP_NET_BIND_SERVICE: the sysctl net.ipv4.ip_unprivileged_port_start "
                 "is %s; a security policy such as SELinux, AppArmor, seccomp or a cgroup BPF program refused "
                 "the bind)",
                 what, addr, strerror(e), now);
        return;
    case EADDRNOTAVAIL:
        snprintf(err, errlen, "%s %s: %s (no network interface of this host has that address)", what, addr,
                 strerror(e));
        return;
    default:
        snprintf(err, errlen, "%s %s: %s", what, addr, strerror(e));
    }
}

int listen_probe(const char *what, const char *addr, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (worker_parse_addr(addr, &ss, &len)) {
        snprintf(err, errlen, "%s: bad address %s", what, addr);
        return -1;
    }
    if (port_of((struct sockaddr *)&ss) == 0)
        return 0; /* any free port: nothing to collide with */
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        listen_error(err, errlen, what, addr, (struct sockaddr *)&ss, errno);
        return -1;
    }
    int one = 1, rc = 0;
    /* As the real listener, less SO_REUSEPORT: a listening socket, ours or
     * anyone's, makes this bind fail; TIME_WAIT leftovers do not. */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) || bind(fd, (struct sockaddr *)&ss, len)) {
        listen_error(err, errlen, what, addr, (struct sockaddr *)&ss, errno);
        rc = -1;
    }
    close(fd);
    return rc;
}

/*
 * control.c - the spool's control socket (see control.h).
 */
#include "control.h"

#include "log.h"
#include "queue.h"
#include "spooler.h"
#include "spoolq.h"
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define CONTROL_NAME "control"
#define REQUEST_MAX 256u
#define IO_TIMEOUT_S 5       /* a client that does not send its line, or read its answer */
#define CALL_TIMEOUT_MS 5000 /* a worker that does not take the command */

struct control {
    int fd;          /* the listening socket */
    int stop[2];     /* a pipe: control_stop() writes, the thread wakes */
    int dirfd;
    worker_t *w;
    int n;
    pthread_t th;
};

/* The socket's path through the open directory: any length of spool_dir. */
static void sock_path(struct sockaddr_un *sa, int dirfd)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    snprintf(sa->sun_path, sizeof sa->sun_path, "/proc/self/fd/%d/" CONTROL_NAME, dirfd);
}

static void say(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k <= 0)
            return; /* the client left: nothing to tell */
        p += k;
        n -= (size_t)k;
    }
}

/* One request line into cmd: "list ALL json" etc. false: not one. */
static bool parse(char *line, spool_cmd_t *cmd, const char **why)
{
    static const struct {
        const char *name;
        enum spool_op op;
    } ops[] = { { "list", SC_LIST }, { "delete", SC_DELETE }, { "hold", SC_HOLD },
                { "release", SC_RELEASE }, { "flush", SC_FLUSH } };
    char *save = NULL, *verb = strtok_r(line, " \r\n", &save), *what = strtok_r(NULL, " \r\n", &save);
    char *opt = strtok_r(NULL, " \r\n", &save);
    memset(cmd, 0, sizeof *cmd);
    size_t i = 0;
    while (verb && i < sizeof ops / sizeof ops[0] && strcmp(verb, ops[i].name))
        i++;
    if (!verb || i == sizeof ops / sizeof ops[0]) {
        *why = "unknown command";
        return false;
    }
    cmd->op = ops[i].op;
    cmd->all = !what || !strcmp(what, "ALL");
    if (!cmd->all && !spool_id_parse(what, &cmd->id)) {
        *why = "not a message id";
        return false;
    }
    cmd->json = opt && !strcmp(opt, "json");
    return true;
}

static void serve(control_t *c, int fd)
{
    struct timeval tv = { IO_TIMEOUT_S, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    char line[REQUEST_MAX + 1];
    size_t have = 0;
    ssize_t k;
    while (have < REQUEST_MAX && !memchr(line, '\n', have) && (k = read(fd, line + have, REQUEST_MAX - have)) > 0)
        have += (size_t)k;
    line[have] = '\0';
    spool_cmd_t cmd;
    const char *why = "no request";
    if (!have || !memchr(line, '\n', have) || !parse(line, &cmd, &why)) {
        char e[96];
        int n = snprintf(e, sizeof e, "error: %s\n", why);
        say(fd, e, (size_t)n);
        return;
    }
    char *text = NULL;
    size_t len = 0;
    cmd.out = open_memstream(&text, &len);
    if (!cmd.out) {
        say(fd, "error: out of memory\n", 21);
        return;
    }
    if (cmd.op == SC_LIST && cmd.json)
        fputc('[', cmd.out);
    int failed = 0;
    for (int i = 0; i < c->n; i++)
        if (worker_call(&c->w[i], spooler_command, &cmd, CALL_TIMEOUT_MS) != 0)
            failed++;
    if (cmd.op == SC_LIST)
        queue_footer(cmd.out, cmd.json, cmd.shown, cmd.octets, cmd.oldest);
    else if (cmd.all || cmd.matched)
        fprintf(cmd.out, "-- %u message%s %s\n", cmd.changed, cmd.changed == 1 ? "" : "s",
                cmd.op == SC_DELETE ? "deleted" : cmd.op == SC_HOLD ? "held" : cmd.op == SC_RELEASE ? "released"
                                                                                                  : "flushed");
    fclose(cmd.out);
    if (failed)
        say(fd, "error: a worker did not answer (stopping?)\n", 43);
    else if (!cmd.all && !cmd.matched)
        say(fd, "error: no such message in the queue\n", 36);
    else
        say(fd, "ok\n", 3);
    say(fd, text, len);
    free(text);
    log_line(LOG_INFO, "event=queue_command op=%d all=%d matched=%u changed=%u", (int)cmd.op, cmd.all, cmd.matched,
             cmd.changed);
}

static void *run(void *arg)
{
    control_t *c = arg;
    struct pollfd p[2] = { { c->fd, POLLIN, 0 }, { c->stop[0], POLLIN, 0 } };
    for (;;) {
        if (poll(p, 2, -1) < 0 && errno != EINTR)
            break;
        if (p[1].revents)
            break;
        if (!(p[0].revents & POLLIN))
            continue;
        int fd = accept4(c->fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        serve(c, fd);
        close(fd);
    }
    return NULL;
}

control_t *control_start(int dirfd, worker_t *w, int n, char *err, size_t errlen)
{
    control_t *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "spool control: out of memory");
        return NULL;
    }
    c->dirfd = dirfd;
    c->w = w;
    c->n = n;
    c->stop[0] = c->stop[1] = -1;
    struct sockaddr_un sa;
    sock_path(&sa, dirfd);
    unlinkat(dirfd, CONTROL_NAME, 0); /* an earlier run's (the lock says none runs now) */
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0 || bind(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(c->fd, 8) != 0 ||
        fchmodat(dirfd, CONTROL_NAME, 0600, 0) != 0 || pipe2(c->stop, O_CLOEXEC) != 0) {
        snprintf(err, errlen, "spool control socket: %s", strerror(errno));
        control_stop(c);
        return NULL;
    }
    if ((errno = pthread_create(&c->th, NULL, run, c))) {
        snprintf(err, errlen, "spool control: pthread_create: %s", strerror(errno));
        c->th = 0;
        control_stop(c);
        return NULL;
    }
    return c;
}

void control_stop(control_t *c)
{
    if (!c)
        return;
    if (c->th) {
        if (write(c->stop[1], "x", 1) != 1)
            pthread_cancel(c->th);
        pthread_join(c->th, NULL);
    }
    if (c->fd >= 0) {
        close(c->fd);
        unlinkat(c->dirfd, CONTROL_NAME, 0);
    }
    for (int i = 0; i < 2; i++)
        if (c->stop[i] >= 0)
            close(c->stop[i]);
    free(c);
}

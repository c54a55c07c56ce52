/*
 * control.h - the spool's control socket: `mxgate queue` on a running
 * gateway.
 *
 * A running gateway holds its spool directory's lock, so `mxgate queue`
 * cannot change the segments itself; it sends its command to
 * spool_dir/control, a Unix stream socket that only the directory's owner
 * can reach (the directory is 0700), in Postfix's spirit of a local
 * control channel (postqueue talks to the pickup and flush services the
 * same way). One request per connection, one line:
 *
 *    list ALL [json] | delete ID|ALL | hold ID|ALL | release ID|ALL | flush ID|ALL
 *
 * and the answer: "ok" or "error: why" on its first line, then what the
 * command prints (queue.h's format). A thread of its own accepts and
 * answers; each worker runs the command on its own queue in its own thread
 * (worker_call), one worker after another, so the workers share nothing
 * for it.
 */
#ifndef MXGATE_CONTROL_H
#define MXGATE_CONTROL_H

#include <stddef.h>

typedef struct worker worker_t;
typedef struct control control_t;

/* Listen on spool_dir/control (dirfd: the spool directory, open). NULL
 * with err on failure. */
control_t *control_start(int dirfd, worker_t *w, int n, char *err, size_t errlen);
void control_stop(control_t *c);

#endif

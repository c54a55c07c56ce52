/*
 * maildir.h - the embedded default delivery (no downstream set): a local
 * Maildir, so that `make run` plus any SMTP client shows a delivered message.
 */
#ifndef MXGATE_MAILDIR_H
#define MXGATE_MAILDIR_H

#include <stddef.h>
#include <sys/types.h>

/*
 * Start-up, before the workers: create dir and its tmp/, new/, cur/ where
 * missing, and keep tmp/ and new/ open; deliveries go through those
 * descriptors, so after the drop of root the path to the Maildir need not
 * be reachable by the new user, only tmp/ and new/ writable. owner !=
 * (uid_t)-1: tmp/, new/, cur/ (and dir when created here) become
 * owner:group, so that user can write after the drop.
 */
int maildir_prepare(const char *dir, uid_t owner, gid_t group, char *err, size_t errlen);

/*
 * Write one message (trace headers, then the body in wire form) under tmp/,
 * fsync it, rename it into new/ and fsync new/: 0 only when a crash can no
 * longer take it back. `uniq` (the transaction id) makes the file name
 * unique; the name is returned in name. dir names the Maildir in the log;
 * the files go through the descriptors maildir_prepare() opened.
 */
int maildir_deliver(const char *dir, const char *hostname, const char *uniq, const char *hdr, size_t hlen,
                    const char *body, size_t blen, char *name, size_t namelen);

#endif

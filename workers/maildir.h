/*
 * maildir.h - the embedded default delivery (no downstream set): a local
 * Maildir, so that `make run` plus any SMTP client shows a delivered message.
 */
#ifndef MXGATE_MAILDIR_H
#define MXGATE_MAILDIR_H

#include <stddef.h>

/* Create dir and its tmp/, new/, cur/ (start-up). */
int maildir_prepare(const char *dir, char *err, size_t errlen);

/*
 * Write one message (trace headers, then the body in wire form) under tmp/,
 * fsync it, rename it into new/ and fsync new/: 0 only when a crash can no
 * longer take it back. `uniq` (the transaction id) makes the file name
 * unique; the name is returned in name.
 */
int maildir_deliver(const char *dir, const char *hostname, const char *uniq, const char *hdr, size_t hlen,
                    const char *body, size_t blen, char *name, size_t namelen);

#endif

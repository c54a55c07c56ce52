/*
 * queue.h - `mxgate queue`: the spool's queue, read offline from a spool
 * directory, in Postfix's habits (mailq, postsuper -d).
 *
 *   mxgate queue list --spool-dir DIR [--json]
 *   mxgate queue delete ID|ALL --spool-dir DIR
 *
 * The directory holds segment files (*.seg, core/spool.h), read in name
 * order. list prints each message still to deliver: its id (the log's
 * tx=), arrival, size, sender, recipients (those done with their code),
 * attempts, next try and last reply; damaged or torn parts of a segment
 * are reported on stderr and skipped. delete appends a DONE record for each
 * message named (fsynced), after taking the directory's lock (DIR/lock,
 * flock): a spool a running gateway holds is refused.
 *
 * Exit status: 0 done; 1 a failure (an unreadable directory, a message not
 * found, the lock held); 2 a usage error.
 */
#ifndef MXGATE_QUEUE_H
#define MXGATE_QUEUE_H

int queue_main(int argc, char **argv);

#endif

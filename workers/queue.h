/*
 * queue.h - `mxgate queue`: the spool's queue in Postfix's habits (mailq,
 * postqueue -f, postsuper -d/-h/-H).
 *
 *   mxgate queue list --spool-dir DIR [--json]
 *   mxgate queue delete|hold|release ID|ALL --spool-dir DIR
 *   mxgate queue flush [ID|ALL] --spool-dir DIR
 *
 * When a gateway runs on DIR (it holds DIR/lock) the command goes to it
 * through DIR/control (control.h). Otherwise the directory's segment files
 * (*.seg, core/spool.h) are read here, in the order the gateway replays
 * them (creation time, then name), under the directory's lock (shared for
 * list, exclusive to change). list prints each message still to deliver:
 * its id (the log's tx=), arrival, size, sender, recipients (those done
 * with their code), whether it is held, attempts, next try and last reply;
 * damaged or torn parts of a segment are reported on stderr and skipped.
 * delete appends a DONE record for each message named, hold a TRY record
 * whose next attempt is SPOOL_HELD, release and flush one due now (each
 * fsynced).
 *
 * Exit status: 0 done; 1 a failure (an unreadable directory, a message not
 * found, a gateway that does not answer); 2 a usage error.
 */
#ifndef MXGATE_QUEUE_H
#define MXGATE_QUEUE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "spool.h"

int queue_main(int argc, char **argv);

/* One message as `queue list` shows it, offline or from a running gateway
 * (spooler.c prints its own queue the same way). */
typedef struct queue_item {
    spool_id_t id;
    const char *where;     /* its segment's name */
    uint64_t arrival_ms;
    uint32_t size;         /* of its body */
    const spool_rec_t *rec; /* its SPOOL_MSG record: sender and recipients */
    const uint16_t *codes; /* per recipient: 0 pending, else its final code */
    uint16_t nrcpt;
    uint32_t attempts;
    uint64_t next_ms;
    uint16_t last_code;
    const char *last_text;
    bool held;
} queue_item_t;

/* first: the first item of a JSON array (no comma before it). */
void queue_print(FILE *f, bool json, bool first, const queue_item_t *it);
/* After the items: the JSON array's end, or the summary line. */
void queue_footer(FILE *f, bool json, uint32_t shown, uint64_t octets, uint64_t oldest);

#endif

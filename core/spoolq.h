/*
 * spoolq.h - the queue as the spool's records say it is, I/O-free: feed it
 * every record of every segment in the order they were written (spool.h),
 * and it knows which messages are still to deliver, which of their
 * recipients are done, and how their last attempt went.
 *
 * Used to rebuild a worker's queue at start-up and by `mxgate queue`.
 * Records about a message (RCPT, TRY, DONE) always follow its MSG record
 * in the same segment; ones for a message not seen (its segment removed
 * once it was done, or its record damaged) are counted and otherwise
 * ignored. A message's octets are not kept: its entry says where its
 * record is (segment number, offset), for the caller to read again.
 */
#ifndef MXGATE_SPOOLQ_H
#define MXGATE_SPOOLQ_H

#include <stdbool.h>
#include <stdint.h>

#include "spool.h"

#define SPOOLQ_TEXT_MAX 200 /* of the last reply kept per message */

typedef struct spoolq_msg {
    spool_id_t id;
    uint32_t seg;          /* the caller's number for the segment */
    uint64_t offset;       /* of its SPOOL_MSG record */
    uint32_t size;         /* the record's octets */
    uint64_t arrival_ms;
    uint32_t body_len;
    uint16_t nrcpt;
    uint16_t left;         /* recipients not yet done */
    uint16_t *codes;       /* per recipient: 0 pending, else its final code */
    uint32_t attempts;
    uint64_t next_ms;      /* 0: at once */
    uint16_t last_code;
    char last_text[SPOOLQ_TEXT_MAX + 1];
    bool done;
} spoolq_msg_t;

typedef struct spoolq {
    spoolq_msg_t *msg;     /* in arrival (record) order; done ones stay, marked */
    uint32_t n, cap;
    uint32_t *slot;        /* open addressing: index into msg + 1, 0 empty */
    uint32_t nslot;
    uint32_t pending;      /* not done */
    uint64_t pending_octets;
    uint32_t orphans;      /* RCPT/TRY/DONE for no known message */
    uint32_t duplicates;   /* a MSG whose id was already there (the later is ignored) */
} spoolq_t;

void spoolq_init(spoolq_t *q);
void spoolq_free(spoolq_t *q);

/* One record, read from segment `seg`. false: out of memory. */
bool spoolq_add(spoolq_t *q, uint32_t seg, const spool_rec_t *r) __attribute__((warn_unused_result));

/* The entry for id, or NULL. */
spoolq_msg_t *spoolq_find(spoolq_t *q, spool_id_t id);

/* "feedfacecafebeef-1": a message id as the log's tx= shows it (at most
 * 27 octets and the terminator); parsing it back: false when it is not one. */
void spool_id_format(spool_id_t id, char out[28]);
bool spool_id_parse(const char *s, spool_id_t *id);

#endif

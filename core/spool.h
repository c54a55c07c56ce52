/*
 * spool.h - the spool's records, I/O-free: how a message and what became of
 * it are written into a worker's segment file, and read back after a crash.
 *
 * A segment begins with its own header (SPOOL_SEG_HEAD octets):
 *
 *    0  u32  magic    SPOOL_SEG_MAGIC ("MXsg")
 *    4  u8   version  SPOOL_VERSION
 *    5  u8[3] zero
 *    8  u64  nonce    random, made when the segment is created
 *   16  u64  created  Unix ms
 *   24  u32  worker
 *   28  u32  check    CRC-32C of bytes 0..27
 *
 * then records, each starting at a multiple of 8:
 *
 *    0  u32  magic    SPOOL_MAGIC ("MXsp")
 *    4  u8   version  SPOOL_VERSION
 *    5  u8   type     enum spool_type
 *    6  u16  zero
 *    8  u32  length   of the payload
 *   12  u32  check    CRC-32C (crc32c.h), seeded from the segment's nonce,
 *                     of the record's offset (u64), the payload, then bytes
 *                     4..11 of the header
 *   16       payload, then zeros to the next multiple of 8
 *
 * Little-endian throughout. The check covers the payload first and the
 * header after it, so a writer can checksum a message's envelope when DATA
 * begins and its body as it arrives, and close the record at the end of
 * data without touching a byte twice (spool_msg_head / spool_seal).
 *
 * Why the nonce and the offset: a message body is the client's to choose,
 * and may hold octets that look like a whole record. Were the check
 * computable by the client, a crash that tears the tail (or a damaged
 * record) would let the scanner resume inside that body and take the
 * client's record for one of ours: a message with an envelope nobody
 * checked. The nonce is never shown to a client and the check binds a
 * record to where it was written, so such a record is refused but for a
 * 2^-32 chance per crash; a CRC is not a MAC, but a crash is not a client's
 * to repeat at will.
 *
 * Writers only append, and a record counts once an fsync that covers it
 * has completed. Reading a segment back (spool_scan_next): a record whose
 * header or payload is cut short, or whose check does not match, is not a
 * record. At the end of the segment that is a torn tail (a crash during a
 * write, the expected case, SPOOL_TORN); elsewhere the scanner resumes at
 * the next multiple of 8 where a whole record checks out and reports the
 * octets it skipped (SPOOL_SKIPPED), so a damaged record costs only itself.
 *
 * Payloads (strings are u16 length + octets unless said otherwise):
 *
 *   SPOOL_MSG   id (u64 session, u32 number), u64 arrival (Unix ms),
 *               u8 flags (SPOOL_F_*), u8 zero, u16 recipients,
 *               sender (the path without <>; empty: the null sender),
 *               client address (u8 length), HELO name,
 *               each recipient, then u32 body length and the body: the
 *               message in wire form (dot-stuffed, CRLF, trace headers
 *               first), without the final ".\r\n"
 *   SPOOL_RCPT  id, u16 recipient index, u16 final code: that recipient is
 *               done (2xx delivered, 5xx bounced or expired)
 *   SPOOL_TRY   id, u32 attempts so far, u64 next attempt (Unix ms;
 *               SPOOL_HELD: held until released), u16 last code, last
 *               reply text
 *   SPOOL_DONE  id: the message is done (every recipient delivered,
 *               bounced or expired); its octets may go
 */
#ifndef MXGATE_SPOOL_H
#define MXGATE_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "slice.h"

#define SPOOL_MAGIC 0x7073584du     /* "MXsp" as a little-endian u32 */
#define SPOOL_SEG_MAGIC 0x6773584du /* "MXsg" */
#define SPOOL_SEG_HEAD 32u
#define SPOOL_VERSION 1
#define SPOOL_HEAD 16u
#define SPOOL_ALIGN 8u
#define SPOOL_PAYLOAD_MAX (1u << 30) /* a record's payload: no message is larger */
#define SPOOL_RCPT_MAX 65535u /* nrcpt is a u16 */
#define SPOOL_HELD UINT64_MAX  /* a TRY record's next attempt: held until released (mxgate queue hold) */

enum spool_type { SPOOL_MSG = 1, SPOOL_RCPT, SPOOL_TRY, SPOOL_DONE, SPOOL_TYPE_END };

#define SPOOL_F_SMTPUTF8 0x01u /* MAIL ... SMTPUTF8 */
#define SPOOL_F_8BITMIME 0x02u /* BODY=8BITMIME */
#define SPOOL_F_7BIT 0x04u     /* BODY=7BIT */

typedef struct spool_id {
    uint64_t session;
    uint32_t number; /* the transaction's number in its session */
} spool_id_t;

static inline bool spool_id_eq(spool_id_t a, spool_id_t b)
{
    return a.session == b.session && a.number == b.number;
}

/* A message's envelope, to write or as read (slices into the record). */
typedef struct spool_msg {
    spool_id_t id;
    uint64_t arrival_ms;
    uint8_t flags;
    slice_t sender;
    slice_t client; /* at most 255 octets */
    slice_t helo;
    uint16_t nrcpt;
    slice_t rcpt_block; /* read: the recipients' encoding; spool_rcpt_next walks it */
    uint32_t body_len;
    slice_t body;       /* read: the body */
} spool_msg_t;

/* One record as read. */
typedef struct spool_rec {
    uint8_t type;    /* enum spool_type */
    uint64_t offset; /* of its header in the segment */
    uint32_t size;   /* header, payload and padding */
    spool_id_t id;
    spool_msg_t msg; /* SPOOL_MSG */
    uint16_t index, code; /* SPOOL_RCPT: index, code; SPOOL_TRY: code */
    uint32_t attempts;    /* SPOOL_TRY */
    uint64_t next_ms;     /* SPOOL_TRY */
    slice_t text;         /* SPOOL_TRY */
} spool_rec_t;

/* A segment's own header. */
typedef struct spool_seg {
    uint64_t nonce;
    uint64_t created_ms;
    uint32_t worker;
} spool_seg_t;

/* ---- writing ---- */

/* The segment header into out (SPOOL_SEG_HEAD octets). */
void spool_seg_head(char *out, const spool_seg_t *seg);

/* Where a record's check begins: the seed and the record's offset. */
uint32_t spool_check_start(uint64_t nonce, uint64_t offset);

/* Octets of a record with this payload length, header and padding included. */
static inline uint64_t spool_record_size(uint64_t payload)
{
    return (SPOOL_HEAD + payload + SPOOL_ALIGN - 1) & ~(uint64_t)(SPOOL_ALIGN - 1);
}

/*
 * A message record in three parts: spool_msg_head() writes its header and
 * envelope into out (spool_msg_head_size() octets; the header's length and
 * check are filled by spool_seal), the caller appends the body and then
 * zeros (the count spool_seal returns). The check: *crc enters as
 * spool_check_start(nonce, offset) and leaves extended over the envelope;
 * the caller extends it over the body with crc32c(), and
 * spool_seal(out, crc, body_len) finishes the header. -1 / false: a field
 * over its limit (client over 255, a string over 65535, recipients over
 * SPOOL_RCPT_MAX, a payload over SPOOL_PAYLOAD_MAX).
 */
int64_t spool_msg_head_size(const spool_msg_t *m, const slice_t *rcpts);
bool spool_msg_head(char *out, const spool_msg_t *m, const slice_t *rcpts, uint32_t *crc);
/* Fill in the length (head and body) and the check; returns the padding
 * octets that must follow the body. */
uint32_t spool_seal(char *head, size_t head_size, uint32_t crc, uint32_t body_len);

/* The small records, whole (padding included) into out, which has
 * SPOOL_SMALL_MAX octets, for a record at offset in a segment with nonce;
 * their size. 0: the text is over 65535. */
#define SPOOL_SMALL_MAX (SPOOL_HEAD + 32 + 2 + 65535 + SPOOL_ALIGN)
size_t spool_put_rcpt(char *out, uint64_t nonce, uint64_t offset, spool_id_t id, uint16_t index, uint16_t code);
size_t spool_put_try(char *out, uint64_t nonce, uint64_t offset, spool_id_t id, uint32_t attempts, uint64_t next_ms,
                     uint16_t code, slice_t text);
size_t spool_put_done(char *out, uint64_t nonce, uint64_t offset, spool_id_t id);

/* Check a whole record (its type and length already in its header) for a
 * place: offset in a segment with this nonce. A writer that learns where a
 * record goes only when it writes it (spooler.c, one batch per loop turn)
 * builds it anywhere and seals it here, one pass over the payload. */
void spool_reseal(char *rec, uint64_t nonce, uint64_t offset);

/* The order segments are replayed in (the gateway at start-up, `mxgate
 * queue`): by creation, then by file name. A segment may hold records about
 * an older one's messages (a DONE written after a restart), never the
 * reverse. <0, 0, >0 as strcmp. */
int spool_seg_order(const spool_seg_t *a, const char *a_name, const spool_seg_t *b, const char *b_name);

/* ---- reading ---- */

enum spool_scan {
    SPOOL_OK = 0,  /* *rec is a record */
    SPOOL_END,     /* the segment ends at a record's end: nothing more */
    SPOOL_TORN,    /* the rest (*skipped octets from *at) is no whole record: a torn tail */
    SPOOL_SKIPPED, /* *skipped octets at *at were no record; a record follows (the next call) */
};

typedef struct spool_scanner {
    const char *p; /* the segment, whole */
    uint64_t len;
    uint64_t pos;  /* the next record's offset */
    spool_seg_t seg;
} spool_scanner_t;

/* false: no segment header that checks out (not a segment, or one whose
 * creation was torn: it holds no record). */
bool spool_scan_init(spool_scanner_t *s, const char *p, uint64_t len);

/* The next record, or where the segment stops making sense. Slices in
 * *rec point into the segment. */
enum spool_scan spool_scan_next(spool_scanner_t *s, spool_rec_t *rec, uint64_t *at, uint64_t *skipped);

/* One record on its own (read back from its segment, or kept in memory
 * since it was written): p holds it from its header on, len octets (the
 * padding may be left out); offset and nonce say where it was written.
 * false: not a whole record that checks out there. Slices point into p. */
bool spool_record_parse(const char *p, uint64_t len, uint64_t nonce, uint64_t offset, spool_rec_t *rec);

/* The recipients of a SPOOL_MSG as read, in order: true with *out while
 * there is one. *cur starts at 0. */
bool spool_rcpt_next(const spool_msg_t *m, uint32_t *cur, slice_t *out);

#endif

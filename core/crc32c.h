/*
 * crc32c.h - CRC-32C (Castagnoli, iSCSI's and ext4's polynomial 0x1EDC6F41,
 * reflected), the spool's record checksum.
 *
 * crc32c(0, p, n) is the checksum of p; crc32c(crc32c(0, a, na), b, nb) is
 * the checksum of a then b, so a record's checksum is built while its body
 * arrives. Where the CPU has SSE4.2 its crc32 instruction does the work,
 * three independent streams at a time over long inputs; otherwise a
 * slice-by-8 table. Both give the same value (the unit tests and the
 * benchmark compare them); crc32c_portable() is the table, always.
 */
#ifndef MXGATE_CRC32C_H
#define MXGATE_CRC32C_H

#include <stddef.h>
#include <stdint.h>

uint32_t crc32c(uint32_t crc, const void *p, size_t n);
uint32_t crc32c_portable(uint32_t crc, const void *p, size_t n);

/* Which layer crc32c() uses here: "sse4.2" or "portable". */
const char *crc32c_layer(void);

#endif

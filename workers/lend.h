/*
 * lend.h - the rule for memory lent to the kernel.
 *
 * A buffer handed to io_uring for a send or a receive belongs to the ring
 * until that operation's completion has been taken: it is never freed,
 * reallocated or written (and a receive buffer never read) meanwhile. What
 * arrives or is produced in the meantime goes into another buffer (the send
 * chain's next block, the provided-buffer ring's next buffer).
 *
 * The kernel's own reads and writes are invisible to AddressSanitizer, so a
 * user-space touch of an in-flight buffer would go unseen. In the ASan build
 * LEND() poisons the region when it is handed over and RECLAIM() unpoisons
 * it at the completion: any access in between is reported at once.
 * Elsewhere both cost nothing.
 */
#ifndef MXGATE_LEND_H
#define MXGATE_LEND_H

#include <stddef.h>

#if defined(__SANITIZE_ADDRESS__)
#define MX_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MX_ASAN 1
#endif
#endif

#ifdef MX_ASAN
#include <sanitizer/asan_interface.h>
#define LEND(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define RECLAIM(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define LEND(p, n) ((void)(p), (void)(n))
#define RECLAIM(p, n) ((void)(p), (void)(n))
#endif

#endif

/* bytes.h — a growable byte buffer (control frames, TLS records): the one
 * buffer type shared by the relay, the TLS layer and the load generator. */
#ifndef LK_BYTES_H
#define LK_BYTES_H

#include <stdint.h>

/* A growable byte buffer for control frames and TLS records: not on the
 * packet path, so growing it is allowed (capped, see LK_CTRL_MAX). */
typedef struct lk_bytes {
    uint8_t *data;
    uint32_t len;
    uint32_t off;
    uint32_t cap;
} lk_bytes;

#define LK_CTRL_MAX (4u << 20)

/* Append len bytes, growing the buffer up to LK_CTRL_MAX (0, or -1 past it or
 * out of memory).  `pin`: where to park the old buffer instead of freeing it,
 * when a send that may still be in flight reads from it (io_uring reads a
 * send's memory until it completes); NULL when no send is in flight.  The
 * owner frees *pin once that send completes. */
int lk_bytes_append(lk_bytes *b, const void *data, uint32_t len, uint8_t **pin);

#endif

/* bytes.c — the growable byte buffer behind control frames and TLS records. */
#include <stdlib.h>
#include <string.h>

#include "common/bytes.h"

int lk_bytes_append(lk_bytes *b, const void *data, uint32_t len, uint8_t **pin)
{
    if (b->off == b->len)
        b->off = b->len = 0;
    if (b->len + len > b->cap) {
        uint32_t cap = b->cap ? b->cap : 512;
        while (cap < b->len + len)
            cap *= 2;
        if (cap > LK_CTRL_MAX)
            return -1;
        uint8_t *d;
        if (pin && !*pin) {
            /* a send may still read the old memory: copy, and keep the old */
            if (!(d = malloc(cap)))
                return -1;
            if (b->len)
                memcpy(d, b->data, b->len);
            *pin = b->data;
        } else if (!(d = realloc(b->data, cap))) {
            return -1;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    return 0;
}

/* pool.h — fixed packet-buffer pools, sized at start, one per worker.
 *
 * A packet buffer holds one complete outgoing frame (RecvPacket header, source
 * key, packet), so the receiver's writer sends it without another copy.  Two
 * size classes keep memory small for WireGuard-sized packets while allowing
 * the protocol's 64 KiB maximum.  The free lists are index stacks kept apart
 * from the buffers, so buffers never used are never touched (no RSS). */
#ifndef LK_POOL_H
#define LK_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "proto/frame.h"

#define LK_PKT_SMALL 2048
#define LK_PKT_LARGE (LK_FRAME_HDR + 2 * LK_KEY_LEN + LK_MAX_PACKET)

typedef struct lk_pkt {
    uint32_t len;     /* frame bytes in data */
    uint16_t owner;   /* worker whose pool it returns to */
    uint8_t large;    /* size class */
    uint8_t disco;    /* goes to the disco queue */
    uint32_t xbucket; /* crossing workers: 1 + its destination's bucket (lk_route_state) */
    uint8_t data[];
} lk_pkt;

typedef struct lk_pool_class {
    uint8_t *mem;
    size_t stride;
    uint32_t count;
    uint32_t *free_stack;
    uint32_t n_free;
} lk_pool_class;

typedef struct lk_pool {
    lk_pool_class small, large;
    uint16_t owner;
    int warned_empty;  /* said once on stderr that a class ran dry */
} lk_pool;

int lk_pool_init(lk_pool *p, uint16_t owner, uint32_t n_small, uint32_t n_large);
void lk_pool_destroy(lk_pool *p);
/* A buffer with room for `frame_len` bytes, or NULL when that class is empty. */
lk_pkt *lk_pool_get(lk_pool *p, uint32_t frame_len);
void lk_pool_put(lk_pool *p, lk_pkt *pkt);
uint32_t lk_pool_free_count(const lk_pool *p);
uint32_t lk_pool_size(const lk_pool *p);

#endif

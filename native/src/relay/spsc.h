/* spsc.h — a bounded single-producer/single-consumer ring of messages.
 *
 * One ring per ordered pair of threads, so neither side ever takes a lock:
 * the producer owns `tail`, the consumer owns `head`, and each publishes its
 * index with a release store the other side reads with acquire.  The indices
 * sit on separate cache lines so the two threads do not false-share. */
#ifndef LK_SPSC_H
#define LK_SPSC_H

#include <stdint.h>
#include <stdlib.h>

#include "relay/xmsg.h"

typedef struct lk_spsc {
    _Alignas(64) uint32_t head;   /* consumer's */
    uint32_t tail_cache;          /* consumer's last view of tail */
    _Alignas(64) uint32_t tail;   /* producer's */
    uint32_t head_cache;          /* producer's last view of head */
    _Alignas(64) uint32_t mask;
    lk_xmsg *slots;
} lk_spsc;

static inline int lk_spsc_init(lk_spsc *r, uint32_t cap_pow2)
{
    r->head = r->tail = r->tail_cache = r->head_cache = 0;
    r->mask = cap_pow2 - 1;
    r->slots = malloc(sizeof(lk_xmsg) * cap_pow2);
    return r->slots ? 0 : -1;
}

static inline void lk_spsc_destroy(lk_spsc *r) { free(r->slots); }

/* Producer side.  0, or -1 when `limit` messages (at most the capacity) wait. */
static inline int lk_spsc_push_limit(lk_spsc *r, const lk_xmsg *m, uint32_t limit)
{
    uint32_t t = r->tail;
    if (t - r->head_cache >= limit) {
        r->head_cache = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
        if (t - r->head_cache >= limit)
            return -1;
    }
    r->slots[t & r->mask] = *m;
    __atomic_store_n(&r->tail, t + 1, __ATOMIC_RELEASE);
    return 0;
}

/* Producer side.  0, or -1 when full. */
static inline int lk_spsc_push(lk_spsc *r, const lk_xmsg *m)
{
    return lk_spsc_push_limit(r, m, r->mask + 1);
}

/* Consumer side.  1 with *m filled, or 0 when empty. */
static inline int lk_spsc_pop(lk_spsc *r, lk_xmsg *m)
{
    uint32_t h = r->head;
    if (h == r->tail_cache) {
        r->tail_cache = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
        if (h == r->tail_cache)
            return 0;
    }
    *m = r->slots[h & r->mask];
    __atomic_store_n(&r->head, h + 1, __ATOMIC_RELEASE);
    return 1;
}

static inline int lk_spsc_empty(lk_spsc *r)
{
    return r->head == __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
}

#endif

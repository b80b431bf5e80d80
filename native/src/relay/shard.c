/* shard.c — rings between threads, wake-ups, and packet buffers going home. */
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "relay/shard.h"

static lk_spsc *ring(const lk_relay *r, uint32_t from, uint32_t to)
{
    return &r->rings[from * r->n_threads + to];
}

int lk_shard_init(lk_relay *r)
{
    uint32_t t = r->n_threads;
    randombytes_buf(r->shard_key, sizeof r->shard_key);
    r->rings = calloc((size_t)t * t, sizeof *r->rings);
    if (!r->rings)
        return lk_fail(LK_ERR_NOMEM, "no memory for worker rings");
    for (uint32_t i = 0; i < t * t; i++)
        if (i / t != i % t && lk_spsc_init(&r->rings[i], LK_RING_CAP) != 0)
            return lk_fail(LK_ERR_NOMEM, "no memory for worker rings");
    return LK_OK;
}

void lk_shard_destroy(lk_relay *r)
{
    if (!r->rings)
        return;
    for (uint32_t i = 0; i < r->n_threads * r->n_threads; i++)
        lk_spsc_destroy(&r->rings[i]);
    free(r->rings);
    r->rings = NULL;
}

uint32_t lk_shard_owner_bucket(const lk_relay *r, const uint8_t key[LK_KEY_LEN],
                               uint32_t *bucket)
{
    *bucket = 0;
    if (r->n_workers == 1)
        return 0;
    uint8_t h[crypto_shorthash_BYTES];
    crypto_shorthash(h, key, LK_KEY_LEN, r->shard_key);
    uint64_t v;
    memcpy(&v, h, sizeof v);
    *bucket = (uint32_t)(v >> 40) % LK_XBUCKETS;
    return (uint32_t)(v % r->n_workers);
}

uint32_t lk_shard_owner(const lk_relay *r, const uint8_t key[LK_KEY_LEN])
{
    uint32_t bucket;
    return lk_shard_owner_bucket(r, key, &bucket);
}

static int overflow_push(lk_worker *w, uint32_t to, const lk_xmsg *m)
{
    lk_overflow *o = &w->overflow[to];
    if (o->len == o->cap) {
        uint32_t cap = o->cap ? 2 * o->cap : 64;
        lk_xmsg *d = realloc(o->msgs, cap * sizeof *d);
        if (!d)
            return -1;
        o->msgs = d;
        o->cap = cap;
    }
    o->msgs[o->len++] = *m;
    return 0;
}

uint32_t lk_shard_ring_limit(const lk_worker *w)
{
    uint32_t others = w->relay->n_workers > 1 ? w->relay->n_workers - 1 : 1;
    uint32_t limit = w->pool.small.count / (2 * others);
    return limit < 16 ? 16 : limit > LK_RING_CAP ? LK_RING_CAP : limit;
}

int lk_shard_send(lk_worker *w, uint32_t to, lk_xmsg *m, int droppable)
{
    m->from = w->index;
    w->wake_pending[to] = 1;
    /* A packet's buffer stays ours while it waits in a ring: if a consumer falls behind
     * (one flooded receiver), its ring must not take the whole pool and starve the
     * other senders on this worker.  So all rings together hold at most half of it. */
    uint32_t limit = droppable ? lk_shard_ring_limit(w) : LK_RING_CAP;
    /* keep order behind anything already waiting in overflow */
    if (w->overflow[to].len == 0 &&
        lk_spsc_push_limit(ring(w->relay, w->index, to), m, limit) == 0)
        return 0;
    if (droppable)
        return -1;
    if (overflow_push(w, to, m) != 0) {
        lk_log("worker %u: no memory to queue a message for thread %u", w->index, to);
        return -1;
    }
    return 0;
}

void lk_shard_broadcast(lk_worker *w, lk_xmsg *m)
{
    for (uint32_t t = 0; t < w->relay->n_workers; t++)
        if (t != w->index)
            lk_shard_send(w, t, m, 0);
}

void lk_shard_flush(lk_worker *w)
{
    lk_relay *r = w->relay;
    for (uint32_t to = 0; to < r->n_threads; to++) {
        lk_overflow *o = &w->overflow[to];
        uint32_t sent = 0;
        while (sent < o->len && lk_spsc_push(ring(r, w->index, to), &o->msgs[sent]) == 0)
            sent++;
        if (sent) {
            memmove(o->msgs, o->msgs + sent, (o->len - sent) * sizeof *o->msgs);
            o->len -= sent;
        }
        if (!w->wake_pending[to])
            continue;
        w->wake_pending[to] = o->len != 0;
        /* pairs with the fence in lk_shard_prepare_sleep: either the consumer
         * sees our messages before sleeping, or we see it asleep and wake it */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        lk_worker *peer = &r->workers[to];
        if (__atomic_load_n(&peer->sleeping, __ATOMIC_RELAXED)) {
            LK_COUNT(w, XSHARD_WAKEUPS);
            LK_COUNT(w, SYS_OTHER);
            peer->io->wake(peer);
        }
    }
}

int lk_shard_prepare_sleep(lk_worker *w)
{
    __atomic_store_n(&w->sleeping, 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    for (uint32_t from = 0; from < w->relay->n_threads; from++)
        if (from != w->index && !lk_spsc_empty(ring(w->relay, from, w->index))) {
            lk_shard_awake(w);
            return 1;
        }
    return 0;
}

void lk_shard_awake(lk_worker *w) { __atomic_store_n(&w->sleeping, 0, __ATOMIC_RELAXED); }

int lk_shard_receive(lk_worker *w, uint32_t *from, lk_xmsg *m)
{
    /* one ring after the other (order matters only within a (from, to) pair), each
     * emptied before the next, as far as it holds messages when we get to it */
    for (; *from < w->relay->n_threads; (*from)++)
        if (*from != w->index && lk_spsc_pop(ring(w->relay, *from, w->index), m))
            return 1;
    return 0;
}

void lk_pkt_free(lk_worker *w, lk_pkt *pkt)
{
    if (pkt->owner == w->index) {
        lk_pool_put(&w->pool, pkt);
        return;
    }
    lk_xmsg m = {.kind = LK_X_FREE, .free = pkt};
    lk_shard_send(w, pkt->owner, &m, 0);
}

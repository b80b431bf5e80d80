/* peers.c — the per-worker key table (see peers.h). */
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "relay/peers.h"

int lk_peers_init(lk_peer_table *t, uint32_t max_keys, uint64_t *next_id)
{
    memset(t, 0, sizeof *t);
    t->next_id = next_id;
    uint32_t cap = 16;
    while (cap < 2 * max_keys)  /* load factor <= 1/2 keeps probes short */
        cap <<= 1;
    t->mask = cap - 1;
    t->n_entries = max_keys;
    t->buckets = calloc(cap, sizeof *t->buckets);
    t->entries = calloc(max_keys, sizeof *t->entries);
    t->free_entries = malloc(sizeof(uint32_t) * max_keys);
    if (!t->buckets || !t->entries || !t->free_entries) {
        lk_peers_destroy(t);
        return lk_fail(LK_ERR_NOMEM, "cannot allocate a peer table for %u keys", max_keys);
    }
    for (uint32_t i = 0; i < max_keys; i++)
        t->free_entries[i] = max_keys - 1 - i;
    t->n_free = max_keys;
    randombytes_buf(t->hash_key, sizeof t->hash_key);
    return LK_OK;
}

void lk_peers_destroy(lk_peer_table *t)
{
    if (t->entries)
        for (uint32_t i = 0; i < t->n_entries; i++)
            free(t->entries[i].seen);
    free(t->buckets);
    free(t->entries);
    free(t->free_entries);
    memset(t, 0, sizeof *t);
}

static uint32_t home_bucket(const lk_peer_table *t, const uint8_t key[LK_KEY_LEN])
{
    uint8_t h[crypto_shorthash_BYTES];
    crypto_shorthash(h, key, LK_KEY_LEN, t->hash_key);
    uint32_t v;
    memcpy(&v, h, sizeof v);
    return v & t->mask;
}

lk_peer *lk_peers_find(const lk_peer_table *t, const uint8_t key[LK_KEY_LEN])
{
    for (uint32_t b = home_bucket(t, key);; b = (b + 1) & t->mask) {
        lk_peer *p = t->buckets[b];
        if (!p || memcmp(p->key, key, LK_KEY_LEN) == 0)
            return p;
    }
}

lk_peer *lk_peers_add(lk_peer_table *t, const uint8_t key[LK_KEY_LEN])
{
    if (t->n_free == 0)
        return NULL;
    lk_peer *p = &t->entries[t->free_entries[--t->n_free]];
    lk_seen *seen = p->seen;
    uint32_t cap_seen = p->cap_seen;
    *p = (lk_peer){.id = __atomic_add_fetch(t->next_id, 1, __ATOMIC_RELAXED), .seen = seen,
                   .cap_seen = cap_seen};
    memcpy(p->key, key, LK_KEY_LEN);
    uint32_t b = home_bucket(t, key);
    while (t->buckets[b])
        b = (b + 1) & t->mask;
    t->buckets[b] = p;
    p->bucket = b;
    return p;
}

/* Backward-shift deletion: keeps every probe chain unbroken without tombstones. */
void lk_peers_remove(lk_peer_table *t, lk_peer *p)
{
    uint32_t hole = p->bucket;
    t->buckets[hole] = NULL;
    for (uint32_t b = (hole + 1) & t->mask; t->buckets[b]; b = (b + 1) & t->mask) {
        lk_peer *q = t->buckets[b];
        uint32_t home = home_bucket(t, q->key);
        /* q may move into the hole if its home is not in (hole, b] cyclically */
        if (((b - home) & t->mask) >= ((b - hole) & t->mask)) {
            t->buckets[hole] = q;
            q->bucket = hole;
            t->buckets[b] = NULL;
            hole = b;
        }
    }
    p->n_seen = 0;
    p->id = 0;
    t->free_entries[t->n_free++] = (uint32_t)(p - t->entries);
}

int lk_peers_note_seen(lk_peer *p, uint32_t worker, lk_conn_ref receiver)
{
    for (uint32_t i = 0; i < p->n_seen; i++)
        if (p->seen[i].receiver.id == receiver.id)
            return 0;
    if (p->n_seen == p->cap_seen) {
        /* grows once per new (source, receiver) pair, never per packet */
        uint32_t cap = p->cap_seen ? 2 * p->cap_seen : 8;
        lk_seen *s = realloc(p->seen, cap * sizeof *s);
        if (!s)
            return -1;
        p->seen = s;
        p->cap_seen = cap;
    }
    p->seen[p->n_seen++] = (lk_seen){.receiver = receiver, .worker = worker};
    return 0;
}

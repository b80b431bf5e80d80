/* peers.h — a worker's table of connected keys (docs/protocol.md §6.2, §5.6).
 *
 * One entry per key with at least one connection.  Connections sharing a key
 * (duplicates) hang off the entry; `active` is the one that receives.  `seen`
 * lists the connections that received packets from this key, so they can be
 * told PeerGone when the key's last connection leaves.  Open addressing with
 * SipHash (keyed per relay), so clients cannot aim collisions at the table. */
#ifndef LK_PEERS_H
#define LK_PEERS_H

#include <stdint.h>

#include "relay/conn.h"
#include "relay/xmsg.h"

/* A connection that received from this key; it may live on another worker, whose
 * own table resolves the reference (see routing.c). */
typedef struct lk_seen {
    lk_conn_ref receiver;
    uint32_t worker;
} lk_seen;

typedef struct lk_peer {
    uint8_t key[LK_KEY_LEN];
    uint64_t id;              /* unique per registration of the key */
    lk_conn *conns;           /* duplicate list, newest first */
    lk_conn *active;
    uint32_t n_conns;
    uint64_t gone_stamp;      /* dedupes PeerGone per receiver key */
    lk_seen *seen;
    uint32_t n_seen, cap_seen;
    uint32_t bucket;
} lk_peer;

typedef struct lk_peer_table {
    lk_peer **buckets;
    uint32_t mask;
    lk_peer *entries;
    uint32_t *free_entries;
    uint32_t n_free, n_entries;
    uint64_t *next_id;        /* shared by all workers: ids are relay-wide */
    uint8_t hash_key[16];
} lk_peer_table;

int lk_peers_init(lk_peer_table *t, uint32_t max_keys, uint64_t *next_id);
void lk_peers_destroy(lk_peer_table *t);
lk_peer *lk_peers_find(const lk_peer_table *t, const uint8_t key[LK_KEY_LEN]);
/* New entry for a key not in the table; NULL when the table is full. */
lk_peer *lk_peers_add(lk_peer_table *t, const uint8_t key[LK_KEY_LEN]);
void lk_peers_remove(lk_peer_table *t, lk_peer *p);
/* Record that a receiver got a packet from p (idempotent). 0 or -1 (no memory). */
int lk_peers_note_seen(lk_peer *p, uint32_t worker, lk_conn_ref receiver);

#define lk_peers_foreach(t, p)                                                     \
    for (uint32_t lk_i_ = 0; lk_i_ <= (t)->mask; lk_i_++)                          \
        if (((p) = (t)->buckets[lk_i_]) != NULL)

#endif

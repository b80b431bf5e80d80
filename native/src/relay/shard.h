/* shard.h — share-nothing workers and what crosses between them.
 *
 * The relay runs N data workers plus one acceptor thread.  The acceptor does
 * connection set-up (accept, TLS handshake, HTTP upgrade, ClientInfo) and
 * hands each connection to the worker that owns its key: hash(key) mod N.
 * A worker owns its connections, its peer table and its packet pool alone;
 * anything for a key owned elsewhere travels as an lk_xmsg through the SPSC
 * ring for that (from, to) pair.  Producers wake a consumer once per loop
 * pass, and only when it is asleep. */
#ifndef LK_SHARD_H
#define LK_SHARD_H

#include "relay/spsc.h"
#include "relay/worker.h"

#define LK_RING_CAP 8192

enum lk_xkind {
    LK_X_ADOPT = 1,   /* acceptor -> owner: ptr = lk_handoff */
    LK_X_PACKET,      /* pkt for key; a = source peer id; b = sender conn token */
    LK_X_FREE,        /* pkt returns to its owner's pool */
    LK_X_NOTHERE,     /* to the sender's worker: NotHere(key) for conn token b */
    LK_X_SEEN,        /* to the source's worker: conn (b = id, c = ptr) received from peer a */
    LK_X_GONE,        /* to a receiver's worker: PeerGone(key) to conn (b, c); a = stamp */
    LK_X_PRESENT,     /* broadcast: key connected; a/b = ip16, port, flags -> local watchers */
    LK_X_PRESENT_TO,  /* reply to WATCH_REQ: PeerPresent for watcher token c */
    LK_X_WATCH_GONE,  /* broadcast: key's last connection left -> local watchers */
    LK_X_WATCH_REQ,   /* watcher token c on `from` wants every local key */
    LK_X_CLOSE_PEER,  /* close every connection of key */
};

/* A connection in transit from the acceptor to its worker. */
typedef struct lk_handoff {
    int fd;
    uint64_t id;
    uint8_t key[LK_KEY_LEN];
    uint8_t mesh, prober, not_ideal;
    uint8_t ip16[16];
    uint16_t port;
    struct lk_tls_conn *tls;
    lk_bytes ctrl;             /* ServerInfo (and maybe the 101/ServerKey tail) still to send */
    uint32_t leftover_len;     /* frames the client pipelined after ClientInfo */
    uint8_t leftover[];
} lk_handoff;

int lk_shard_init(lk_relay *r);
void lk_shard_destroy(lk_relay *r);
uint32_t lk_shard_owner(const lk_relay *r, const uint8_t key[LK_KEY_LEN]);
/* The same, and the key's bucket in lk_pool.xinflight (keyed: clients cannot aim). */
uint32_t lk_shard_owner_bucket(const lk_relay *r, const uint8_t key[LK_KEY_LEN],
                               uint32_t *bucket);
/* Queue m for thread `to`.  A droppable message (a packet) is refused when
 * the ring is full (-1); others wait in an overflow list. */
int lk_shard_send(lk_worker *w, uint32_t to, lk_xmsg *m, int droppable);
/* Packets one ring may hold: w's rings to the other workers together keep half of its
 * pool free. */
uint32_t lk_shard_ring_limit(const lk_worker *w);
void lk_shard_broadcast(lk_worker *w, lk_xmsg *m);
/* Consumer side: handle everything that arrived. */
void lk_shard_drain(lk_worker *w);
/* End of a pass: retry overflow, wake the consumers we sent to. */
void lk_shard_flush(lk_worker *w);
/* Before sleeping: announce it, and say whether messages are already waiting. */
int lk_shard_prepare_sleep(lk_worker *w);
void lk_shard_awake(lk_worker *w);
/* Acceptor: move a handshaked connection to its owner. */
void lk_shard_handoff(lk_worker *acc, lk_conn *c, const uint8_t *leftover, size_t n);

#endif

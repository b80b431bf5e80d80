/* shard.h — share-nothing workers and the rings between them.
 *
 * The relay runs N data workers plus one acceptor thread.  The acceptor does
 * connection set-up (accept, TLS handshake, HTTP upgrade, ClientInfo) and
 * hands each connection to the worker that owns its key: hash(key) mod N.
 * A worker owns its connections, its peer table and its packet pool alone;
 * anything for a key owned elsewhere travels as an lk_xmsg (xmsg.h) through the
 * SPSC ring for that (from, to) pair.  Producers wake a consumer once per loop
 * pass, and only when it is asleep.  This file is the transport: what a message
 * means is the dispatcher's business (worker.c). */
#ifndef LK_SHARD_H
#define LK_SHARD_H

#include "relay/spsc.h"
#include "relay/state.h"

#define LK_RING_CAP 8192

int lk_shard_init(lk_relay *r);
void lk_shard_destroy(lk_relay *r);
uint32_t lk_shard_owner(const lk_relay *r, const uint8_t key[LK_KEY_LEN]);
/* The same, and the key's bucket in lk_route_state.xinflight (keyed: clients cannot
 * aim). */
uint32_t lk_shard_owner_bucket(const lk_relay *r, const uint8_t key[LK_KEY_LEN],
                               uint32_t *bucket);
/* Queue m for thread `to`.  A droppable message (a packet) is refused when
 * the ring is full (-1); others wait in an overflow list. */
int lk_shard_send(lk_worker *w, uint32_t to, lk_xmsg *m, int droppable);
/* Packets one ring may hold: w's rings to the other workers together keep half of its
 * pool free. */
uint32_t lk_shard_ring_limit(const lk_worker *w);
void lk_shard_broadcast(lk_worker *w, lk_xmsg *m);
/* Consumer side: the next message that arrived (1), or none left (0).  `from` is the
 * caller's cursor over the rings: start it at 0 for each drain. */
int lk_shard_receive(lk_worker *w, uint32_t *from, lk_xmsg *m);
/* End of a pass: retry overflow, wake the consumers we sent to. */
void lk_shard_flush(lk_worker *w);
/* Before sleeping: announce it, and say whether messages are already waiting. */
int lk_shard_prepare_sleep(lk_worker *w);
void lk_shard_awake(lk_worker *w);

/* A packet buffer is done with: back into its pool, or home to the worker whose
 * pool it came from (pools are share-nothing). */
void lk_pkt_free(lk_worker *w, lk_pkt *pkt);

#endif

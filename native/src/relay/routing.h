/* routing.h — who receives what (routing.c): registration and duplicate keys,
 * forwarding within and across workers, PeerGone to earlier receivers and to
 * watchers, NotHere, WatchConns, ClosePeer.
 *
 * Every key is owned by one worker (lk_shard_owner); all connections of a key live
 * there, so duplicate-key rules stay local.  What concerns a key owned elsewhere is
 * sent to its owner as a message; the lk_route_on_* functions take those messages
 * when they arrive (called by the dispatcher in worker.c). */
#ifndef LK_ROUTING_H
#define LK_ROUTING_H

#include "relay/state.h"
#include "relay/xmsg.h"

/* A handshaked connection joins its key (0), or the peer table is full (-1). */
int lk_route_register(lk_worker *w, lk_conn *c);
/* c leaves its key (idempotent); its last connection leaving announces PeerGone. */
void lk_route_unregister(lk_worker *w, lk_conn *c);
/* c sent a frame: within a duplicate set the last writer is the active one. */
void lk_route_touch(lk_worker *w, lk_conn *c);
/* A packet from `from` (src may differ: ForwardPacket) for key dst. */
void lk_route_packet(lk_worker *w, lk_conn *from, const uint8_t src[LK_KEY_LEN],
                     const uint8_t dst[LK_KEY_LEN], lk_pkt *pkt);
/* c asked for WatchConns (mesh peers only). */
void lk_route_watch(lk_worker *w, lk_conn *c);
/* c asked to close every connection of key (mesh peers only). */
void lk_route_close_peer(lk_worker *w, lk_conn *c, const uint8_t key[LK_KEY_LEN]);

/* Messages from other workers, by kind. */
void lk_route_on_packet(lk_worker *w, const lk_xmsg *m);
void lk_route_on_returned(lk_worker *w, lk_pkt *pkt);  /* LK_X_FREE of a packet we sent */
void lk_route_on_nothere(lk_worker *w, const lk_xmsg *m);
void lk_route_on_seen(lk_worker *w, const lk_xmsg *m);
void lk_route_on_gone(lk_worker *w, const lk_xmsg *m);
void lk_route_on_present(lk_worker *w, const lk_xmsg *m);
void lk_route_on_present_to(lk_worker *w, const lk_xmsg *m);
void lk_route_on_watch_gone(lk_worker *w, const lk_xmsg *m);
void lk_route_on_watch_req(lk_worker *w, const lk_xmsg *m);
void lk_route_on_close_peer(lk_worker *w, const lk_xmsg *m);

#endif

/* routing.c — who receives what: registration, duplicate keys, forwarding,
 * PeerGone (to earlier receivers and to watchers), NotHere, mesh watchers,
 * ClosePeer.  See routing.h; the protocol rules are docs/protocol.md §5–§6. */
#include <string.h>

#include "relay/output.h"
#include "relay/overload.h"
#include "relay/routing.h"
#include "relay/shard.h"

/* ---- frames to a client ------------------------------------------------- */

static void send_peer_gone(lk_worker *w, lk_conn *to, const uint8_t key[LK_KEY_LEN],
                           uint8_t reason)
{
    uint8_t f[LK_FRAME_HDR + LK_KEY_LEN + 1];
    lk_put_frame_hdr(f, LK_FT_PEER_GONE, LK_KEY_LEN + 1);
    memcpy(f + LK_FRAME_HDR, key, LK_KEY_LEN);
    f[LK_FRAME_HDR + LK_KEY_LEN] = reason;
    if (lk_out_ctrl(w, to, f, sizeof f) == 0)
        LK_COUNT(w, PEERGONE_SENT);
}

static lk_presence presence_of(const lk_conn *c)
{
    lk_presence p = {.port = c->port};
    memcpy(p.key, c->key, LK_KEY_LEN);
    memcpy(p.ip16, c->ip16, 16);
    uint8_t flags = (c->mesh ? LK_PRESENT_MESH : 0) | (c->prober ? LK_PRESENT_PROBER : 0) |
                    (c->not_ideal ? LK_PRESENT_NOT_IDEAL : 0);
    p.flags = flags ? flags : LK_PRESENT_REGULAR;  /* "regular" only when nothing else applies */
    return p;
}

static void send_peer_present(lk_worker *w, lk_conn *to, const lk_presence *p)
{
    uint8_t f[LK_FRAME_HDR + 51];
    uint8_t *b = f + LK_FRAME_HDR;
    lk_put_frame_hdr(f, LK_FT_PEER_PRESENT, 51);
    memcpy(b, p->key, LK_KEY_LEN);
    memcpy(b + 32, p->ip16, 16);
    b[48] = (uint8_t)(p->port >> 8);
    b[49] = (uint8_t)p->port;
    b[50] = p->flags;
    lk_out_ctrl(w, to, f, sizeof f);
}

static void present_to_local_watchers(lk_worker *w, const lk_presence *p)
{
    for (lk_conn *wt = w->watchers; wt; wt = wt->watch_next)
        send_peer_present(w, wt, p);
}

static void gone_to_local_watchers(lk_worker *w, const uint8_t key[LK_KEY_LEN])
{
    for (lk_conn *wt = w->watchers; wt; wt = wt->watch_next)
        send_peer_gone(w, wt, key, LK_GONE_DISCONNECTED);
}

/* ---- registration -------------------------------------------------------- */

int lk_route_register(lk_worker *w, lk_conn *c)
{
    lk_peer *p = lk_peers_find(&w->peers, c->key);
    if (!p && !(p = lk_peers_add(&w->peers, c->key)))
        return -1;
    c->peer = p;
    c->dup_prev = NULL;
    c->dup_next = p->conns;
    if (p->conns)
        p->conns->dup_prev = c;
    p->conns = c;
    p->n_conns++;
    p->active = c;  /* the newest connection of a key is the active one (§6.2) */
    c->last_active_ns = w->now;
    lk_xmsg m = {.kind = LK_X_PRESENT, .present = presence_of(c)};
    present_to_local_watchers(w, &m.present);
    lk_shard_broadcast(w, &m);
    return 0;
}

/* The remaining connection that most recently registered or sent becomes active. */
static lk_conn *most_recent(lk_peer *p)
{
    lk_conn *best = p->conns;
    for (lk_conn *c = p->conns; c; c = c->dup_next)
        if (c->last_active_ns > best->last_active_ns)
            best = c;
    return best;
}

static void unlink_watcher(lk_worker *w, lk_conn *c)
{
    for (lk_conn **pp = &w->watchers; *pp; pp = &(*pp)->watch_next)
        if (*pp == c) {
            *pp = c->watch_next;
            break;
        }
    c->watcher = 0;
}

/* PeerGone(key) to receiver r of this worker if it is still the connection that
 * received; one per receiving key (stamp = the departed key's peer id). */
static void gone_to_receiver(lk_worker *w, lk_conn *r, uint64_t conn_id,
                             const uint8_t key[LK_KEY_LEN], uint64_t stamp)
{
    if (!r || r->id != conn_id || r->state != LK_CS_STEADY || !r->peer ||
        r->peer->gone_stamp == stamp)
        return;
    r->peer->gone_stamp = stamp;
    send_peer_gone(w, r->peer->active, key, LK_GONE_DISCONNECTED);
}

/* The key's last connection left: tell everyone that received from it. */
static void announce_gone(lk_worker *w, lk_peer *p)
{
    for (uint32_t i = 0; i < p->n_seen; i++) {
        lk_seen *s = &p->seen[i];
        if (s->worker == w->index) {
            gone_to_receiver(w, lk_conn_from_token(w, s->receiver.token), s->receiver.id,
                             p->key, p->id);
        } else {
            lk_xmsg m = {.kind = LK_X_GONE, .gone = {.stamp = p->id, .receiver = s->receiver}};
            memcpy(m.gone.key, p->key, LK_KEY_LEN);
            lk_shard_send(w, s->worker, &m, 0);
        }
    }
    gone_to_local_watchers(w, p->key);
    lk_xmsg m = {.kind = LK_X_WATCH_GONE};
    memcpy(m.watch_gone, p->key, LK_KEY_LEN);
    lk_shard_broadcast(w, &m);
}

void lk_route_unregister(lk_worker *w, lk_conn *c)
{
    lk_peer *p = c->peer;
    if (!p)
        return;
    if (c->watcher)
        unlink_watcher(w, c);
    if (c->dup_prev)
        c->dup_prev->dup_next = c->dup_next;
    else
        p->conns = c->dup_next;
    if (c->dup_next)
        c->dup_next->dup_prev = c->dup_prev;
    c->peer = NULL;
    if (--p->n_conns > 0) {
        if (p->active == c)
            p->active = most_recent(p);
        return;
    }
    announce_gone(w, p);
    lk_peers_remove(&w->peers, p);
}

void lk_route_touch(lk_worker *w, lk_conn *c)
{
    /* "last writer is active": only matters inside a duplicate set */
    if (LK_UNLIKELY(c->peer && c->peer->n_conns > 1)) {
        c->peer->active = c;
        c->last_active_ns = w->now;
    }
}

/* ---- packets ------------------------------------------------------------- */

/* NotHere feedback, 1 token per second, burst 3 (§5.7). */
static void not_here(lk_worker *w, lk_conn *from, const uint8_t dst[LK_KEY_LEN])
{
    uint64_t whole = (w->now - from->nothere_stamp_ns) / 1000000000u;
    if (whole) {
        uint64_t tokens = from->nothere_tokens + whole;
        from->nothere_tokens = tokens > 3 ? 3 : (uint32_t)tokens;
        from->nothere_stamp_ns += whole * 1000000000u;
    }
    if (from->nothere_tokens == 0)
        return;
    from->nothere_tokens--;
    send_peer_gone(w, from, dst, LK_GONE_NOT_HERE);
    LK_COUNT(w, NOTHERE_SENT);
}

static void not_here_to(lk_worker *w, uint64_t sender, const uint8_t dst[LK_KEY_LEN])
{
    lk_conn *from = lk_conn_from_token(w, sender);
    if (from && from->state == LK_CS_STEADY)
        not_here(w, from, dst);
}

/* The source's worker keeps the list of who received from it. */
static void note_seen(lk_worker *w, lk_conn *r, const uint8_t src_key[LK_KEY_LEN],
                      uint64_t src_peer, uint32_t src_worker)
{
    lk_conn_ref receiver = {.token = lk_conn_token(r), .id = r->id};
    if (src_worker == w->index) {
        lk_peer *sp = lk_peers_find(&w->peers, src_key);
        if (sp && sp->id == src_peer)
            lk_peers_note_seen(sp, w->index, receiver);
        return;
    }
    lk_xmsg m = {.kind = LK_X_SEEN, .seen = {.src_peer = src_peer, .receiver = receiver}};
    memcpy(m.seen.src, src_key, LK_KEY_LEN);
    lk_shard_send(w, src_worker, &m, 0);
}

/* Deliver on the owning worker.  `sender` is the sending connection's token on
 * worker `sender_worker` (for NotHere); src_peer the sending key's peer id. */
static void deliver(lk_worker *w, const uint8_t dst[LK_KEY_LEN], lk_pkt *pkt, uint64_t src_peer,
                    uint32_t sender_worker, uint64_t sender)
{
    lk_peer *p = lk_peers_find(&w->peers, dst);
    if (!p) {
        LK_COUNT(w, DROP_UNKNOWN_DEST);
        if (pkt->disco && sender) {
            if (sender_worker == w->index) {
                not_here_to(w, sender, dst);
            } else {
                lk_xmsg m = {.kind = LK_X_NOTHERE, .nothere = {.sender = sender}};
                memcpy(m.nothere.dst, dst, LK_KEY_LEN);
                lk_shard_send(w, sender_worker, &m, 0);
            }
        }
        lk_pkt_free(w, pkt);
        return;
    }
    lk_conn *r = p->active;
    if (src_peer && r->last_seen_src != src_peer) {
        r->last_seen_src = src_peer;
        note_seen(w, r, pkt->data + LK_FRAME_HDR, src_peer, sender_worker);
    }
    lk_out_packet(w, r, pkt);
    if (sender_worker == w->index)
        lk_overload_after_local(w, sender, r);
}

void lk_route_packet(lk_worker *w, lk_conn *from, const uint8_t src[LK_KEY_LEN],
                     const uint8_t dst[LK_KEY_LEN], lk_pkt *pkt)
{
    /* ForwardPacket carries someone else's source: no PeerGone tracking for it */
    uint64_t src_peer = from->peer && memcmp(src, from->key, LK_KEY_LEN) == 0 ? from->peer->id : 0;
    uint64_t sender = lk_conn_token(from);
    uint32_t bucket;
    uint32_t owner = lk_shard_owner_bucket(w->relay, dst, &bucket);
    if (owner == w->index) {
        deliver(w, dst, pkt, src_peer, w->index, sender);
        return;
    }
    /* Per-destination bound across shards, as Go's per-destination queue: this worker's
     * packets waiting on others (ring, remote queue, remote writer) for one destination
     * stay under a share of the ring, so a flood into a slow or stalled receiver is
     * tail-dropped here instead of crowding the ring for everyone else's packets.  The
     * floor lets one destination fill its queues and its writer; but with a small pool
     * the ring is shorter than that floor, and then the ring's half for everyone else
     * wins (otherwise one flood fills the ring and bystanders across it lose packets). */
    uint32_t ring_limit = lk_shard_ring_limit(w);
    uint32_t floor = 2 * w->relay->cfg.queue_depth + LK_TX_MAX + 256;
    uint32_t bound = ring_limit / 4 > floor ? ring_limit / 4 : floor;
    if (bound > ring_limit / 2)
        bound = ring_limit / 2;
    if (w->route.xinflight[bucket] >= bound) {
        LK_COUNT(w, DROP_QUEUE_TAIL);
        lk_pkt_free(w, pkt);
        return;
    }
    lk_xmsg m = {.kind = LK_X_PACKET,
                 .packet = {.pkt = pkt, .src_peer = src_peer, .sender = sender}};
    memcpy(m.packet.dst, dst, LK_KEY_LEN);
    pkt->xbucket = bucket + 1;  /* read back only by us, when the buffer comes home */
    if (lk_shard_send(w, owner, &m, 1) != 0) {
        LK_COUNT(w, DROP_QUEUE_TAIL);  /* the owner's ring is full */
        lk_pkt_free(w, pkt);
        return;
    }
    w->route.xinflight[bucket]++;
    LK_COUNT(w, XSHARD_SENT);
    lk_overload_after_remote(w, from, bucket, w->route.xinflight[bucket]);
}

void lk_route_on_packet(lk_worker *w, const lk_xmsg *m)
{
    LK_COUNT(w, XSHARD_RECEIVED);
    deliver(w, m->packet.dst, m->packet.pkt, m->packet.src_peer, m->from, m->packet.sender);
}

void lk_route_on_returned(lk_worker *w, lk_pkt *pkt)
{
    if (pkt->xbucket) {  /* one less waiting on others for its destination */
        w->route.xinflight[pkt->xbucket - 1]--;
        pkt->xbucket = 0;
    }
}

void lk_route_on_nothere(lk_worker *w, const lk_xmsg *m)
{
    not_here_to(w, m->nothere.sender, m->nothere.dst);
}

void lk_route_on_seen(lk_worker *w, const lk_xmsg *m)
{
    lk_peer *sp = lk_peers_find(&w->peers, m->seen.src);
    if (sp && sp->id == m->seen.src_peer) {
        lk_peers_note_seen(sp, m->from, m->seen.receiver);
        return;
    }
    /* The source (registration src_peer) left before this note came home: its
     * announce_gone could not know this receiver, so the receiver gets PeerGone
     * now, as it would have if the source had stayed a moment. */
    lk_xmsg gone = {.kind = LK_X_GONE,
                    .gone = {.stamp = m->seen.src_peer, .receiver = m->seen.receiver}};
    memcpy(gone.gone.key, m->seen.src, LK_KEY_LEN);
    lk_shard_send(w, m->from, &gone, 0);
}

void lk_route_on_gone(lk_worker *w, const lk_xmsg *m)
{
    gone_to_receiver(w, lk_conn_from_token(w, m->gone.receiver.token), m->gone.receiver.id,
                     m->gone.key, m->gone.stamp);
}

/* ---- watchers and ClosePeer ----------------------------------------------- */

void lk_route_watch(lk_worker *w, lk_conn *c)
{
    /* a relay watching itself (its own key as client key) is a silent no-op (§5.8) */
    if (c->watcher || memcmp(c->key, w->relay->public_key, LK_KEY_LEN) == 0)
        return;
    c->watcher = 1;
    c->watch_next = w->watchers;
    w->watchers = c;
    lk_peer *p;
    lk_peers_foreach(&w->peers, p) {
        lk_presence present = presence_of(p->active);
        send_peer_present(w, c, &present);
    }
    lk_xmsg req = {.kind = LK_X_WATCH_REQ, .watch_req = lk_conn_token(c)};
    lk_shard_broadcast(w, &req);
}

void lk_route_on_present(lk_worker *w, const lk_xmsg *m)
{
    present_to_local_watchers(w, &m->present);
}

void lk_route_on_watch_gone(lk_worker *w, const lk_xmsg *m)
{
    gone_to_local_watchers(w, m->watch_gone);
}

void lk_route_on_present_to(lk_worker *w, const lk_xmsg *m)
{
    lk_conn *wt = lk_conn_from_token(w, m->present_to.watcher);
    if (wt && wt->watcher)
        send_peer_present(w, wt, &m->present_to.presence);
}

void lk_route_on_watch_req(lk_worker *w, const lk_xmsg *m)
{
    lk_peer *p;
    lk_peers_foreach(&w->peers, p) {
        lk_xmsg reply = {.kind = LK_X_PRESENT_TO,
                         .present_to = {.presence = presence_of(p->active),
                                        .watcher = m->watch_req}};
        lk_shard_send(w, m->from, &reply, 0);
    }
}

/* Every connection of key but `keep` leaves its key now and is doomed (closed before
 * the backend resumes): a packet routed to the key from here on finds no receiver. */
static void close_key(lk_worker *w, lk_conn *keep, const uint8_t key[LK_KEY_LEN])
{
    lk_peer *p;
    while ((p = lk_peers_find(&w->peers, key)) != NULL) {
        lk_conn *victim = p->conns;
        while (victim == keep)
            victim = victim->dup_next;
        if (!victim)
            break;
        lk_route_unregister(w, victim);
        lk_conn_doom(w, victim, -1);
    }
}

void lk_route_close_peer(lk_worker *w, lk_conn *c, const uint8_t key[LK_KEY_LEN])
{
    uint32_t owner = lk_shard_owner(w->relay, key);
    if (owner == w->index) {
        close_key(w, c, key);
        return;
    }
    lk_xmsg m = {.kind = LK_X_CLOSE_PEER};
    memcpy(m.close_peer, key, LK_KEY_LEN);
    lk_shard_send(w, owner, &m, 0);
}

void lk_route_on_close_peer(lk_worker *w, const lk_xmsg *m)
{
    close_key(w, NULL, m->close_peer);
}

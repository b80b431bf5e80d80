/* routing.c — who receives what: registration, duplicate keys, forwarding,
 * PeerGone (to earlier receivers and watchers), NotHere, mesh watchers. */
#include <string.h>

#include "core.h"

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

static void send_peer_present(lk_worker *w, lk_conn *to, const lk_conn *c)
{
    uint8_t f[LK_FRAME_HDR + 51];
    uint8_t *p = f + LK_FRAME_HDR;
    lk_put_frame_hdr(f, LK_FT_PEER_PRESENT, 51);
    memcpy(p, c->key, LK_KEY_LEN);
    memcpy(p + 32, c->ip16, 16);
    p[48] = (uint8_t)(c->port >> 8);
    p[49] = (uint8_t)c->port;
    uint8_t flags = (c->mesh ? LK_PRESENT_MESH : 0) | (c->prober ? LK_PRESENT_PROBER : 0) |
                    (c->not_ideal ? LK_PRESENT_NOT_IDEAL : 0);
    p[50] = flags ? flags : LK_PRESENT_REGULAR;  /* "regular" only when nothing else applies */
    lk_out_ctrl(w, to, f, sizeof f);
}

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
    p->active = c;  /* the newest connection of a key is the active one (7.4) */
    c->last_active_ns = w->now;
    for (lk_conn *wt = w->watchers; wt; wt = wt->watch_next)
        send_peer_present(w, wt, c);
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

/* The key's last connection left: tell everyone that received from it. */
static void announce_gone(lk_worker *w, lk_peer *p)
{
    for (uint32_t i = 0; i < p->n_seen; i++) {
        lk_conn *r = p->seen[i].conn;
        if (r->id != p->seen[i].conn_id || r->state != LK_CS_STEADY || !r->peer)
            continue;
        if (r->peer->gone_stamp == p->id)  /* one PeerGone per receiving key */
            continue;
        r->peer->gone_stamp = p->id;
        send_peer_gone(w, r->peer->active, p->key, LK_GONE_DISCONNECTED);
    }
    for (lk_conn *wt = w->watchers; wt; wt = wt->watch_next)
        send_peer_gone(w, wt, p->key, LK_GONE_DISCONNECTED);
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

/* NotHere feedback, 1 token per second, burst 3 (7.2). */
static void not_here(lk_worker *w, lk_conn *from, const uint8_t dst[LK_KEY_LEN])
{
    uint64_t whole = (w->now - from->nothere_stamp_ns) / 1000000000u;
    if (whole) {
        from->nothere_tokens = from->nothere_tokens + whole > 3 ? 3
                                                                : from->nothere_tokens + (uint32_t)whole;
        from->nothere_stamp_ns += whole * 1000000000u;
    }
    if (from->nothere_tokens == 0)
        return;
    from->nothere_tokens--;
    send_peer_gone(w, from, dst, LK_GONE_NOT_HERE);
    LK_COUNT(w, NOTHERE_SENT);
}

void lk_route_packet(lk_worker *w, lk_conn *from, const uint8_t src[LK_KEY_LEN],
                     const uint8_t dst[LK_KEY_LEN], lk_pkt *pkt)
{
    lk_peer *p = lk_peers_find(&w->peers, dst);
    if (!p) {
        LK_COUNT(w, DROP_UNKNOWN_DEST);
        if (pkt->disco && from)
            not_here(w, from, dst);
        lk_pkt_free(w, pkt);
        return;
    }
    lk_conn *r = p->active;
    lk_peer *sp = from && from->peer && memcmp(src, from->key, LK_KEY_LEN) == 0 ? from->peer : NULL;
    if (sp && r->last_seen_src != sp->id) {
        if (lk_peers_note_seen(sp, r) == 0)
            r->last_seen_src = sp->id;
    }
    lk_out_packet(w, r, pkt);
}

void lk_route_watch(lk_worker *w, lk_conn *c)
{
    /* a relay watching itself (its own key as client key) is a silent no-op (6.8) */
    if (c->watcher || memcmp(c->key, w->relay->public_key, LK_KEY_LEN) == 0)
        return;
    c->watcher = 1;
    c->watch_next = w->watchers;
    w->watchers = c;
    lk_peer *p;
    lk_peers_foreach(&w->peers, p)
        send_peer_present(w, c, p->active);
}

void lk_route_close_peer(lk_worker *w, lk_conn *c, const uint8_t key[LK_KEY_LEN])
{
    lk_peer *p;
    while ((p = lk_peers_find(&w->peers, key)) != NULL) {
        lk_conn *victim = p->conns;
        while (victim == c)
            victim = victim->dup_next;
        if (!victim)
            break;
        lk_conn_close(w, victim, -1);
    }
}

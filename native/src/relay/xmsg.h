/* xmsg.h — the messages workers send each other, one typed payload per kind.
 *
 * Workers share nothing: whatever concerns a key owned by another worker, or a
 * packet buffer from another worker's pool, travels as one of these through the
 * SPSC ring of that (from, to) pair (spsc.h, shard.c).  The receiving worker's
 * loop hands each to the one dispatcher (worker.c), which calls the layer that
 * owns the subject.  A connection on another worker is never a pointer here:
 * it is an lk_conn_ref, looked up (and checked for reuse) by its own worker. */
#ifndef LK_XMSG_H
#define LK_XMSG_H

#include <stdint.h>

#include "proto/frame.h"
#include "relay/pool.h"

struct lk_handoff;

/* A connection as another worker names it: its slot | generation << 32 (stale once
 * the slot is reused) and its relay-wide id. */
typedef struct lk_conn_ref {
    uint64_t token;
    uint64_t id;
} lk_conn_ref;

/* What a PeerPresent frame says about a key. */
typedef struct lk_presence {
    uint8_t key[LK_KEY_LEN];
    uint8_t ip16[16];
    uint16_t port;
    uint8_t flags;            /* LK_PRESENT_* */
} lk_presence;

enum lk_xkind {
    LK_X_ADOPT = 1,   /* acceptor -> owner: a set-up connection to adopt */
    LK_X_PACKET,      /* a packet for a key the receiver owns */
    LK_X_FREE,        /* a packet buffer goes home to its pool */
    LK_X_NOTHERE,     /* to the sender's worker: NotHere for one of its connections */
    LK_X_SEEN,        /* to the source's worker: a connection received from the source */
    LK_X_GONE,        /* to a receiver's worker: PeerGone(key) for that connection */
    LK_X_PRESENT,     /* broadcast: a key connected (to local watchers) */
    LK_X_PRESENT_TO,  /* reply to WATCH_REQ: one key, for one watcher */
    LK_X_WATCH_GONE,  /* broadcast: a key's last connection left (to local watchers) */
    LK_X_WATCH_REQ,   /* a new watcher wants every key the receiver owns */
    LK_X_CLOSE_PEER,  /* close every connection of a key */
};

typedef struct lk_xmsg {
    uint8_t kind;             /* enum lk_xkind */
    uint32_t from;            /* the sending thread's index (set by lk_shard_send) */
    union {
        struct lk_handoff *adopt;
        struct {
            lk_pkt *pkt;
            uint64_t src_peer;        /* the source key's peer id; 0: not tracked */
            uint64_t sender;          /* the sending connection's token (for NotHere) */
            uint8_t dst[LK_KEY_LEN];
        } packet;
        lk_pkt *free;
        struct {
            uint64_t sender;
            uint8_t dst[LK_KEY_LEN];
        } nothere;
        struct {
            uint64_t src_peer;        /* which registration of the source key */
            lk_conn_ref receiver;
            uint8_t src[LK_KEY_LEN];
        } seen;
        struct {
            uint64_t stamp;           /* the departed key's peer id (one PeerGone each) */
            lk_conn_ref receiver;
            uint8_t key[LK_KEY_LEN];
        } gone;
        lk_presence present;
        struct {
            lk_presence presence;
            uint64_t watcher;         /* the watcher's token on the requesting worker */
        } present_to;
        uint8_t watch_gone[LK_KEY_LEN];
        uint64_t watch_req;           /* the watcher's token on the requesting worker */
        uint8_t close_peer[LK_KEY_LEN];
    };
} lk_xmsg;

#endif

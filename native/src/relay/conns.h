/* conns.h — a connection's life on a worker (conns.c): its slot, its arrival
 * (accepted on the acceptor, or adopted from it), its handoff to the worker that
 * owns its key, and its end.  The backends' entry points (io/io.h) are defined
 * there too: each runs the core and then closes whatever the core doomed, so a
 * backend always finds a connection either alive or closing. */
#ifndef LK_CONNS_H
#define LK_CONNS_H

#include "relay/state.h"

/* A connection in transit from the acceptor to its worker. */
typedef struct lk_handoff {
    int fd;
    uint64_t id;
    uint8_t key[LK_KEY_LEN];
    uint8_t mesh, prober, not_ideal;
    uint8_t ip16[16];
    uint16_t port;
    struct lk_tls_conn *tls;
    lk_ws_link *ws;            /* WebSocket state, or NULL */
    lk_bytes ctrl;             /* ServerInfo (and maybe the 101/ServerKey tail) still to send */
    uint32_t leftover_len;     /* frames the client pipelined after ClientInfo */
    uint8_t leftover[];
} lk_handoff;

/* The owning worker takes a connection the acceptor set up (LK_X_ADOPT). */
void lk_conns_adopt(lk_worker *w, lk_handoff *h);
/* Close every connection the core doomed (counting each one's reason). */
void lk_conns_reap(lk_worker *w);
/* Close every connection of a stopping worker. */
void lk_conns_close_all(lk_worker *w);

#endif

/* session.h — a connection's input side (session.c): TLS records -> HTTP request ->
 * DERP handshake -> steady-state frames, fed incrementally from whatever the backend
 * received.  A session never closes its connection itself: it dooms it (state.h),
 * and it leaves a handshaked connection in LK_CS_HANDOFF for the lifecycle layer to
 * move to the worker that owns its key. */
#ifndef LK_SESSION_H
#define LK_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "relay/state.h"

/* A new connection on the acceptor: expect TLS or HTTP, under the handshake deadline. */
void lk_session_start(lk_worker *w, lk_conn *c);
/* A handshaked connection arrived on its owning worker: steady state from here. */
void lk_session_resume(lk_worker *w, lk_conn *c);
/* Bytes as the socket gave them (ciphertext under userspace TLS). */
void lk_session_received(lk_worker *w, lk_conn *c, const uint8_t *data, size_t n);
/* Plaintext bytes of the connection's stream: HTTP, then DERP raw or in WebSocket. */
void lk_session_feed(lk_worker *w, lk_conn *c, const uint8_t *data, size_t n);
/* DERP bytes already out of their transport (what the client pipelined before its
 * handoff, which the acceptor unwrapped from WebSocket). */
void lk_session_feed_derp(lk_worker *w, lk_conn *c, const uint8_t *data, size_t n);

#endif

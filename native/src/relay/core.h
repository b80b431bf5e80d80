/* core.h — functions the protocol core's files share (not for backends). */
#ifndef LK_CORE_H
#define LK_CORE_H

#include "common/common.h"
#include "relay/worker.h"

/* output.c */
/* Queue one whole control frame (counted in frames_out). */
int lk_out_ctrl(lk_worker *w, lk_conn *c, const void *frame, uint32_t len);
/* Queue raw HTTP bytes before the DERP stream. */
int lk_out_http(lk_worker *w, lk_conn *c, const void *bytes, uint32_t len);
void lk_out_packet(lk_worker *w, lk_conn *c, lk_pkt *pkt);
void lk_out_mark_dirty(lk_worker *w, lk_conn *c);
int lk_out_pending(const lk_conn *c);
void lk_out_release_all(lk_worker *w, lk_conn *c);
void lk_out_flush_dirty(lk_worker *w);
int lk_out_queues_init(lk_conn *c, uint32_t depth);

/* routing.c */
int lk_route_register(lk_worker *w, lk_conn *c);
void lk_route_unregister(lk_worker *w, lk_conn *c);
void lk_route_packet(lk_worker *w, lk_conn *from, const uint8_t src[LK_KEY_LEN],
                     const uint8_t dst[LK_KEY_LEN], lk_pkt *pkt);
void lk_route_touch(lk_worker *w, lk_conn *c);
void lk_route_watch(lk_worker *w, lk_conn *c);
void lk_route_close_peer(lk_worker *w, lk_conn *c, const uint8_t key[LK_KEY_LEN]);
struct lk_xmsg;
void lk_route_remote_packet(lk_worker *w, struct lk_xmsg *m);
void lk_route_remote_event(lk_worker *w, struct lk_xmsg *m);

/* session.c */
void lk_session_start(lk_worker *w, lk_conn *c);
struct lk_handoff;
void lk_session_adopt(lk_worker *w, struct lk_handoff *h);

/* worker.c */
void lk_conn_close(lk_worker *w, lk_conn *c, int reason_counter);
/* Forget c on this thread without closing its socket (it moved elsewhere). */
void lk_conn_detach(lk_worker *w, lk_conn *c);
lk_conn *lk_conn_alloc(lk_worker *w, int fd);
void lk_arm(lk_worker *w, uint64_t deadline);
void lk_pkt_free(lk_worker *w, lk_pkt *pkt);

#endif

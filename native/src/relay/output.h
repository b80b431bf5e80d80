/* output.h — what a connection owes its client (output.c).
 *
 * Order on the wire: packets already taken for sending (tx), then control frames
 * (ctrl), then the queues (disco first).  The backend asks for the next bytes with
 * lk_out_gather and reports what left with lk_out_sent, through the core's entry
 * points (io/io.h); the rest of the core queues frames here and marks the
 * connection dirty, and the loop flushes dirty connections at the end of a pass. */
#ifndef LK_OUTPUT_H
#define LK_OUTPUT_H

#include <sys/uio.h>

#include "relay/state.h"

int lk_out_queues_init(lk_conn *c, uint32_t depth);
/* Queue raw HTTP bytes before the DERP stream. */
int lk_out_http(lk_worker *w, lk_conn *c, const void *bytes, uint32_t len);
/* Queue one whole control frame (counted in frames_out). */
int lk_out_ctrl(lk_worker *w, lk_conn *c, const void *frame, uint32_t len);
/* Queue a packet for c (head drop when its queue is full). */
void lk_out_packet(lk_worker *w, lk_conn *c, lk_pkt *pkt);
/* Anything left to send? */
int lk_out_pending(const lk_conn *c);
/* c has output for the end of this pass. */
void lk_out_mark_dirty(lk_worker *w, lk_conn *c);
/* Take the next connection marked dirty (NULL: none left). */
lk_conn *lk_out_next_dirty(lk_worker *w);
/* Drop everything c still owes (it is closing). */
void lk_out_release_all(lk_worker *w, lk_conn *c);

/* For the backend, through lk_core_gather / lk_core_sent: fill iov with what c should
 * send next (the count; 0: nothing, or c was doomed), and advance by n sent bytes. */
int lk_out_gather(lk_worker *w, lk_conn *c, struct iovec *iov, int max);
void lk_out_sent(lk_worker *w, lk_conn *c, size_t n);

#endif

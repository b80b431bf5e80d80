/* overload.h — what the relay does when a destination cannot keep up (overload.c).
 *
 * Two policies, the `backpressure` switch choosing:
 *   drop (off)         a full per-destination queue drops its oldest packet, as
 *                      Tailscale's derper does: senders are never slowed, receivers
 *                      lose packets;
 *   backpressure (on)  a sender whose packet filled a destination's queue is not read
 *                      again until that queue is half empty, so TCP slows the sender
 *                      instead.  The price is head-of-line blocking: while paused, the
 *                      sender's packets to its other destinations wait too.
 * A receive already taken from the kernel is still delivered, so with backpressure
 * the queues have slack beyond queue_depth (LK_BP_SLACK packets); only a burst beyond
 * that drops. */
#ifndef LK_OVERLOAD_H
#define LK_OVERLOAD_H

#include "relay/state.h"

/* Queue room past queue_depth under backpressure: the packets of the receives still
 * on their way once a sender is paused (a 64 KiB read carries 45 frames of 1400 B). */
#define LK_BP_SLACK 128u

/* Slots each per-destination queue needs under this config. */
uint32_t lk_overload_queue_cap(const lk_relay_config *cfg);
/* A packet from local sender `sender` (a token) went into r's queue. */
void lk_overload_after_local(lk_worker *w, uint64_t sender, lk_conn *r);
/* A packet from `from` went to another worker, leaving `inflight` packets of this
 * worker waiting on destination bucket `bucket` there. */
void lk_overload_after_remote(lk_worker *w, lk_conn *from, uint32_t bucket, uint32_t inflight);
/* End of a loop pass: resume every paused client whose destination has drained. */
void lk_overload_resume(lk_worker *w);
/* c is closing or leaving this worker: forget that it was paused. */
void lk_overload_forget(lk_worker *w, lk_conn *c);

#endif

/* overload.c — the backpressure policy (overload.h): pausing a sender's reads while
 * a destination it fills has no room, and resuming it once the destination drained
 * to half its queue (hysteresis: a sender is not flipped on and off per packet). */
#include "relay/overload.h"

static int enabled(const lk_worker *w)
{
    return (w->relay->cfg.switches & LK_SW_BACKPRESSURE) != 0;
}

uint32_t lk_overload_queue_cap(const lk_relay_config *cfg)
{
    return cfg->queue_depth + (cfg->switches & LK_SW_BACKPRESSURE ? LK_BP_SLACK : 0);
}

static int queue_full(const lk_worker *w, const lk_conn *r)
{
    uint32_t depth = w->relay->cfg.queue_depth;
    return r->q_disco.count >= depth || r->q_other.count >= depth;
}

static void pause(lk_worker *w, lk_conn *c)
{
    if (c->read_paused || !lk_conn_alive(c))
        return;
    c->read_paused = 1;
    c->paused_next = w->paused;
    w->paused = c;
    LK_COUNT(w, READ_PAUSES);
    w->stats.c[LK_C_READS_PAUSED]++;
    w->io->set_paused(w, c, 1);
}

void lk_overload_after_local(lk_worker *w, uint64_t sender, lk_conn *r)
{
    if (!enabled(w) || !queue_full(w, r))
        return;
    lk_conn *from = lk_conn_from_token(w, sender);
    if (!from || from == r)
        return;
    from->paused_on = lk_conn_token(r);
    from->paused_bucket = 0;
    pause(w, from);
}

void lk_overload_after_remote(lk_worker *w, lk_conn *from, uint32_t bucket, uint32_t inflight)
{
    /* this worker's packets for that destination (its ring, queue and writer) stand
     * in for the remote queue, which this worker cannot see */
    if (!enabled(w) || inflight < w->relay->cfg.queue_depth)
        return;
    from->paused_on = 0;
    from->paused_bucket = bucket + 1;
    pause(w, from);
}

static int drained(const lk_worker *w, const lk_conn *c)
{
    uint32_t half = w->relay->cfg.queue_depth / 2;
    if (c->paused_bucket)
        return w->route.xinflight[c->paused_bucket - 1] <= half;
    lk_conn *r = lk_conn_from_token((lk_worker *)w, c->paused_on);
    return !r || !lk_conn_alive(r) || (r->q_disco.count <= half && r->q_other.count <= half);
}

void lk_overload_resume(lk_worker *w)
{
    for (lk_conn **pp = &w->paused; *pp;) {
        lk_conn *c = *pp;
        if (!drained(w, c)) {
            pp = &c->paused_next;
            continue;
        }
        *pp = c->paused_next;
        c->read_paused = 0;
        w->stats.c[LK_C_READS_PAUSED]--;
        if (lk_conn_alive(c))
            w->io->set_paused(w, c, 0);
    }
}

void lk_overload_forget(lk_worker *w, lk_conn *c)
{
    if (!c->read_paused)
        return;
    for (lk_conn **pp = &w->paused; *pp; pp = &(*pp)->paused_next)
        if (*pp == c) {
            *pp = c->paused_next;
            break;
        }
    c->read_paused = 0;
    w->stats.c[LK_C_READS_PAUSED]--;
}

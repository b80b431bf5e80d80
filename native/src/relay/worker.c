/* worker.c — a worker thread's life: set-up and tear-down, the loop, timers
 * (handshake deadline, write deadline, keepalive), the one dispatcher of the
 * messages other workers send (xmsg.h), and publishing its counters. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <pthread.h>
#include <sched.h>

#include "relay/overload.h"
#include "relay/conns.h"
#include "relay/worker.h"
#include "relay/output.h"
#include "relay/routing.h"
#include "relay/shard.h"

int lk_worker_init(lk_worker *w, lk_relay *r, uint32_t index)
{
    memset(w, 0, sizeof *w);
    w->relay = r;
    w->index = index;
    w->acceptor = index == r->n_workers;
    /* set-up is not the measured data path: the acceptor always uses epoll */
    w->io = w->acceptor ? &lk_io_epoll : r->io;
    w->max_conns = r->cfg.max_conns;
    w->wake_pending = calloc(r->n_threads, 1);
    w->overflow = calloc(r->n_threads, sizeof *w->overflow);
    w->next_due = UINT64_MAX;
    w->shared = lk_shm_worker(&r->shm, index);
    w->conns = calloc(w->max_conns, sizeof *w->conns);
    w->free_slots = malloc(sizeof(uint32_t) * w->max_conns);
    w->rbuf = malloc(LK_RBUF_LEN);
    w->rbuf_len = LK_RBUF_LEN;
    w->plain = malloc(LK_PLAIN_LEN);
    if (!w->conns || !w->free_slots || !w->rbuf || !w->plain || !w->wake_pending || !w->overflow)
        return lk_fail(LK_ERR_NOMEM, "cannot allocate %u connection slots", w->max_conns);
    for (uint32_t i = 0; i < w->max_conns; i++) {
        lk_conn *c = &w->conns[w->max_conns - 1 - i];
        c->slot = w->max_conns - 1 - i;
        c->fd = -1;
        if (lk_out_queues_init(c, lk_overload_queue_cap(&r->cfg)) != 0)
            return lk_fail(LK_ERR_NOMEM, "cannot allocate send queues");
        w->free_slots[i] = c->slot;
    }
    w->n_free = w->max_conns;
    int rc = lk_peers_init(&w->peers, w->acceptor ? 1 : w->max_conns, &r->next_peer_id);
    /* the acceptor never carries packets: anything pipelined moves with the conn */
    uint32_t small = w->acceptor ? 64 : r->cfg.pool_packets;
    uint32_t large = w->acceptor || small / 64 < 64 ? 64 : small / 64;
    if (rc == LK_OK)
        rc = lk_pool_init(&w->pool, (uint16_t)index, small, large);
    return rc;  /* the backend is set up by the worker's own thread: lk_worker_main */
}

void lk_worker_destroy(lk_worker *w)
{
    if (w->conns) {
        lk_conns_close_all(w);
        if (w->io_state)
            w->io->destroy(w);
        for (uint32_t i = 0; i < w->max_conns; i++) {
            free(w->conns[i].q_disco.slots);
            free(w->conns[i].q_other.slots);
        }
    }
    lk_peers_destroy(&w->peers);
    lk_pool_destroy(&w->pool);
    if (w->overflow)
        for (uint32_t i = 0; i < w->relay->n_threads; i++)
            free(w->overflow[i].msgs);
    free(w->overflow);
    free(w->wake_pending);
    free(w->conns);
    free(w->free_slots);
    free(w->rbuf);
    free(w->plain);
}

static void keepalive(lk_worker *w, lk_conn *c)
{
    static const uint8_t frame[LK_FRAME_HDR] = {LK_FT_KEEP_ALIVE, 0, 0, 0, 0};
    if (lk_out_ctrl(w, c, frame, sizeof frame) == 0)
        LK_COUNT(w, KEEPALIVES);
    uint64_t period = w->relay->cfg.keepalive_ms * LK_MS;
    c->next_keepalive += period;
    if (c->next_keepalive <= w->now)
        c->next_keepalive = w->now + period;
}

/* Fire due timers and find the next one.  O(connections), but it runs only
 * when a deadline is due, not per event. */
static void run_timers(lk_worker *w)
{
    uint64_t next = UINT64_MAX;
    uint64_t write_timeout = w->relay->cfg.write_timeout_ms * LK_MS;
    for (lk_conn *c = w->all, *after; c; c = after) {
        after = c->all_next;
        if (!lk_conn_alive(c))
            continue;  /* doomed earlier in this pass */
        if (c->handshake_deadline && w->now >= c->handshake_deadline) {
            lk_conn_doom(w, c, LK_C_CLOSE_TIMEOUT);
            continue;
        }
        if (c->write_stalled_since && write_timeout &&
            w->now - c->write_stalled_since >= write_timeout) {
            lk_conn_doom(w, c, LK_C_CLOSE_WRITE_TIMEOUT);
            continue;
        }
        if (c->state == LK_CS_STEADY && w->now >= c->next_keepalive)
            keepalive(w, c);
        if (c->handshake_deadline && c->handshake_deadline < next)
            next = c->handshake_deadline;
        if (c->write_stalled_since && write_timeout && c->write_stalled_since + write_timeout < next)
            next = c->write_stalled_since + write_timeout;
        if (c->state == LK_CS_STEADY && c->next_keepalive < next)
            next = c->next_keepalive;
    }
    w->next_due = next;
}

/* ---- messages from other workers: the one dispatcher ---------------------- */

static void dispatch(lk_worker *w, lk_xmsg *m)
{
    switch ((enum lk_xkind)m->kind) {
    case LK_X_ADOPT: lk_conns_adopt(w, m->adopt); break;
    case LK_X_PACKET: lk_route_on_packet(w, m); break;
    case LK_X_FREE:
        lk_route_on_returned(w, m->free);
        lk_pool_put(&w->pool, m->free);
        break;
    case LK_X_NOTHERE: lk_route_on_nothere(w, m); break;
    case LK_X_SEEN: lk_route_on_seen(w, m); break;
    case LK_X_GONE: lk_route_on_gone(w, m); break;
    case LK_X_PRESENT: lk_route_on_present(w, m); break;
    case LK_X_PRESENT_TO: lk_route_on_present_to(w, m); break;
    case LK_X_WATCH_GONE: lk_route_on_watch_gone(w, m); break;
    case LK_X_WATCH_REQ: lk_route_on_watch_req(w, m); break;
    case LK_X_CLOSE_PEER: lk_route_on_close_peer(w, m); break;
    }
}

/* Everything other workers sent; whatever it doomed is closed at the end. */
static void drain(lk_worker *w)
{
    lk_xmsg m;
    uint32_t from = 0;
    while (lk_shard_receive(w, &from, &m))
        dispatch(w, &m);
    lk_conns_reap(w);
}

/* Hand every connection with new output to the backend (end of a pass). */
static void flush_dirty(lk_worker *w)
{
    lk_conn *c;
    while ((c = lk_out_next_dirty(w)) != NULL)
        if (lk_conn_alive(c))
            w->io->flush(w, c);
}

static void publish(lk_worker *w)
{
    w->stats.ns = w->now;
    w->stats.c[LK_C_POOL_FREE] = lk_pool_free_count(&w->pool);
    w->stats.c[LK_C_POOL_SIZE] = lk_pool_size(&w->pool);
    lk_counters_publish(w->shared, &w->stats);
}

static int wait_timeout_ms(const lk_worker *w)
{
    if (w->next_due == UINT64_MAX)
        return -1;
    if (w->next_due <= w->now)
        return 0;
    uint64_t ms = (w->next_due - w->now + LK_MS - 1) / LK_MS;
    return ms > 60000 ? 60000 : (int)ms;
}

static void pin(lk_worker *w)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET((int)(w->index % (uint32_t)(ncpu > 0 ? ncpu : 1)), &set);
    LK_COUNT(w, SYS_OTHER);
    int e = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    if (e != 0)
        lk_log("worker %u: cannot pin to a CPU: %s", w->index, strerror(e));
}

void *lk_worker_main(void *arg)
{
    lk_worker *w = arg;
    lk_relay *r = w->relay;
    uint64_t last_publish = 0;
    if (!w->acceptor && r->cfg.pin_cpus)
        pin(w);
    w->now = lk_now_ns();
    /* The backend is made on this thread: an io_uring set up with single_issuer (or
     * defer_taskrun) takes submissions only from the thread that created it. */
    int rc = w->io->init(w);
    if (rc != LK_OK) {
        w->result = rc;
        snprintf(w->error, sizeof w->error, "%s", lk_last_error());
    }
    publish(w);
    pthread_mutex_lock(&r->start_lock);
    r->started++;
    pthread_cond_signal(&r->started_cond);
    pthread_mutex_unlock(&r->start_lock);
    while (rc == LK_OK && !__atomic_load_n(&r->stopping, __ATOMIC_ACQUIRE)) {
        int timeout = wait_timeout_ms(w);
        /* about to sleep: make sure readers see everything done so far */
        if (timeout != 0 && last_publish != w->now) {
            publish(w);
            last_publish = w->now;
        }
        if (timeout != 0 && lk_shard_prepare_sleep(w))
            timeout = 0;  /* another worker already sent us something */
        /* the backend refreshes w->now as soon as it wakes */
        rc = w->io->wait(w, timeout);
        lk_shard_awake(w);
        if (rc < 0) {
            w->result = LK_ERR_SYSTEM;
            snprintf(w->error, sizeof w->error, "%s", lk_last_error());
            break;
        }
        LK_COUNT(w, LOOP_PASSES);
        drain(w);
        flush_dirty(w);
        if (w->now >= w->next_due) {
            run_timers(w);
            lk_conns_reap(w);
            flush_dirty(w);
        }
        if (w->paused)
            lk_overload_resume(w);
        lk_shard_flush(w);
        if (w->now - last_publish >= LK_MS) {
            publish(w);
            last_publish = w->now;
        }
    }
    publish(w);
    return NULL;
}

/* worker.c — a worker thread's life: its connection slots, accept and close,
 * timers (handshake deadline, write deadline, keepalive), the loop, and
 * publishing its counters. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <pthread.h>
#include <sched.h>

#include "relay/core.h"
#include "relay/shard.h"
#include "tls/tls.h"

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
        if (lk_out_queues_init(c, r->cfg.queue_depth) != 0)
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
    if (rc == LK_OK)
        rc = w->io->init(w);
    return rc;
}

void lk_worker_destroy(lk_worker *w)
{
    if (w->conns) {
        for (lk_conn *c = w->all; c;) {
            lk_conn *next = c->all_next;
            lk_conn_close(w, c, -1);
            c = next;
        }
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

uint64_t lk_core_conn_token(const lk_conn *c) { return (uint64_t)c->slot | (uint64_t)c->gen << 32; }

lk_conn *lk_core_conn_from_token(lk_worker *w, uint64_t token)
{
    uint32_t slot = (uint32_t)token;
    if (slot >= w->max_conns)
        return NULL;
    lk_conn *c = &w->conns[slot];
    return c->gen == (uint32_t)(token >> 32) && c->state != LK_CS_FREE ? c : NULL;
}

void lk_arm(lk_worker *w, uint64_t deadline)
{
    if (deadline < w->next_due)
        w->next_due = deadline;
}

void lk_pkt_free(lk_worker *w, lk_pkt *pkt)
{
    if (pkt->owner == w->index) {
        lk_pool_put(&w->pool, pkt);
        return;
    }
    /* share-nothing pools: a buffer goes home to the worker that took it */
    lk_xmsg m = {.kind = LK_X_FREE, .pkt = pkt};
    lk_shard_send(w, pkt->owner, &m, 0);
}

/* Zero a slot for reuse, keeping what outlives a connection: its queues'
 * storage, its generation, and its place on the flush list. */
static void conn_reset(lk_conn *c)
{
    lk_conn keep = *c;
    memset(c, 0, sizeof *c);
    c->slot = keep.slot;
    c->gen = keep.gen;
    c->dirty = keep.dirty;
    c->dirty_next = keep.dirty_next;
    c->q_disco = (lk_pktq){.slots = keep.q_disco.slots, .cap = keep.q_disco.cap};
    c->q_other = (lk_pktq){.slots = keep.q_other.slots, .cap = keep.q_other.cap};
    c->fd = -1;
}

static void set_remote(lk_conn *c, const struct sockaddr_storage *sa)
{
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        c->ip16[10] = c->ip16[11] = 0xff;  /* IPv4-mapped, as PeerPresent carries it */
        memcpy(c->ip16 + 12, &in->sin_addr, 4);
        c->port = ntohs(in->sin_port);
    } else if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        memcpy(c->ip16, &in6->sin6_addr, 16);
        c->port = ntohs(in6->sin6_port);
    }
}

lk_conn *lk_conn_alloc(lk_worker *w, int fd)
{
    if (w->n_free == 0) {
        lk_log("worker %u: all %u connection slots in use; refusing a connection (raise "
               "max_conns)", w->index, w->max_conns);
        LK_COUNT(w, SYS_CLOSE);
        close(fd);
        return NULL;
    }
    lk_conn *c = &w->conns[w->free_slots[--w->n_free]];
    conn_reset(c);
    c->gen++;
    c->fd = fd;
    c->worker = w;
    c->all_next = w->all;
    if (w->all)
        w->all->all_prev = c;
    w->all = c;
    w->stats.c[LK_G_CONNS_CURRENT]++;
    return c;
}

void lk_core_accepted(lk_worker *w, int fd, const struct sockaddr_storage *addr)
{
    LK_COUNT(w, CONNS_ACCEPTED);
    lk_conn *c = lk_conn_alloc(w, fd);
    if (!c)
        return;
    c->id = __atomic_add_fetch(&w->relay->next_conn_id, 1, __ATOMIC_RELAXED);
    set_remote(c, addr);
    /* frames are small and latency matters: no Nagle delay */
    int one = 1;
    LK_COUNT(w, SYS_OTHER);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (w->relay->tls && !(c->tls = lk_tls_conn_new(w->relay->tls))) {
        c->state = LK_CS_HTTP;
        lk_conn_close(w, c, LK_C_CLOSE_TLS);
        return;
    }
    c->ktls_peek = w->relay->cfg.tls == LK_TLS_KTLS;
    lk_session_start(w, c);
    if (w->io->add_conn(w, c) != 0)
        lk_conn_close(w, c, LK_C_CLOSE_PEER);
}

static void unlink_all(lk_worker *w, lk_conn *c)
{
    if (c->all_prev)
        c->all_prev->all_next = c->all_next;
    else
        w->all = c->all_next;
    if (c->all_next)
        c->all_next->all_prev = c->all_prev;
    w->stats.c[LK_G_CONNS_CURRENT]--;
}

void lk_conn_detach(lk_worker *w, lk_conn *c)
{
    w->io->detach(w, c);
    unlink_all(w, c);
    c->state = LK_CS_CLOSING;
    lk_core_release(w, c);
}

void lk_conn_close(lk_worker *w, lk_conn *c, int reason_counter)
{
    if (!lk_conn_alive(c))
        return;
    c->state = LK_CS_CLOSING;  /* first: nothing may be queued to c from here on */
    if (reason_counter >= 0)
        w->stats.c[reason_counter]++;
    LK_COUNT(w, CONNS_CLOSED);
    lk_route_unregister(w, c);
    unlink_all(w, c);
    w->io->close_conn(w, c);
}

void lk_core_release(lk_worker *w, lk_conn *c)
{
    lk_out_release_all(w, c);
    if (c->rx_pkt)
        lk_pkt_free(w, c->rx_pkt);
    free(c->head);
    free(c->client_info);
    free(c->pipelined.data);
    c->pipelined = (lk_bytes){0};
    lk_tls_conn_free(c->tls);
    c->rx_pkt = NULL;
    c->head = NULL;
    c->client_info = NULL;
    c->tls = NULL;
    c->state = LK_CS_FREE;
    c->gen++;
    w->free_slots[w->n_free++] = c->slot;
}

void lk_core_io_error(lk_worker *w, lk_conn *c, int err)
{
    (void)err;  /* EOF, reset and broken pipe all mean the client is gone */
    lk_conn_close(w, c, LK_C_CLOSE_PEER);
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
        if (c->handshake_deadline && w->now >= c->handshake_deadline) {
            lk_conn_close(w, c, LK_C_CLOSE_TIMEOUT);
            continue;
        }
        if (c->write_stalled_since && write_timeout &&
            w->now - c->write_stalled_since >= write_timeout) {
            lk_conn_close(w, c, LK_C_CLOSE_WRITE_TIMEOUT);
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

static void publish(lk_worker *w)
{
    w->stats.ns = w->now;
    w->stats.c[LK_G_POOL_FREE] = lk_pool_free_count(&w->pool);
    w->stats.c[LK_G_POOL_SIZE] = lk_pool_size(&w->pool);
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
    if (!w->acceptor && (r->cfg.switches & LK_SW_PIN_CPUS))
        pin(w);
    w->now = lk_now_ns();
    publish(w);
    pthread_mutex_lock(&r->start_lock);
    r->started++;
    pthread_cond_signal(&r->started_cond);
    pthread_mutex_unlock(&r->start_lock);
    while (!__atomic_load_n(&r->stopping, __ATOMIC_ACQUIRE)) {
        int timeout = wait_timeout_ms(w);
        /* about to sleep: make sure readers see everything done so far */
        if (timeout != 0 && last_publish != w->now) {
            publish(w);
            last_publish = w->now;
        }
        if (timeout != 0 && lk_shard_prepare_sleep(w))
            timeout = 0;  /* another worker already sent us something */
        /* the backend refreshes w->now as soon as it wakes */
        int rc = w->io->wait(w, timeout);
        lk_shard_awake(w);
        if (rc < 0) {
            w->result = LK_ERR_SYSTEM;
            break;
        }
        LK_COUNT(w, LOOP_PASSES);
        lk_shard_drain(w);
        lk_out_flush_dirty(w);
        if (w->now >= w->next_due) {
            run_timers(w);
            lk_out_flush_dirty(w);
        }
        lk_shard_flush(w);
        if (w->now - last_publish >= LK_MS) {
            publish(w);
            last_publish = w->now;
        }
    }
    publish(w);
    return NULL;
}

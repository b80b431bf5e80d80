/* conns.c — connection slots and a connection's life: accept, handoff to the
 * owning worker, adoption there, and closing; and the entry points the backends
 * call (io/io.h), which close what the core doomed before they return. */
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "relay/overload.h"
#include "relay/conns.h"
#include "relay/output.h"
#include "relay/routing.h"
#include "relay/session.h"
#include "relay/shard.h"
#include "tls/tls.h"

/* ---- slots ------------------------------------------------------------------ */

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

/* A free slot for descriptor fd, or NULL when all are in use (the caller's backend
 * then closes fd). */
static lk_conn *conn_alloc(lk_worker *w, int fd)
{
    if (w->n_free == 0) {
        lk_log("worker %u: all %u connection slots in use; refusing a connection (raise "
               "max_conns)", w->index, w->max_conns);
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
    w->stats.c[LK_C_CONNS_CURRENT]++;
    return c;
}

static void unlink_all(lk_worker *w, lk_conn *c)
{
    lk_overload_forget(w, c);
    if (c->all_prev)
        c->all_prev->all_next = c->all_next;
    else
        w->all = c->all_next;
    if (c->all_next)
        c->all_next->all_prev = c->all_prev;
    w->stats.c[LK_C_CONNS_CURRENT]--;
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
    free(c->ws);
    c->ws = NULL;
    c->rx_pkt = NULL;
    c->head = NULL;
    c->client_info = NULL;
    c->tls = NULL;
    c->state = LK_CS_FREE;
    c->gen++;
    w->free_slots[w->n_free++] = c->slot;
}

/* ---- closing ---------------------------------------------------------------- */

static void close_now(lk_worker *w, lk_conn *c)
{
    c->state = LK_CS_CLOSING;
    if (c->close_reason >= 0)
        w->stats.c[c->close_reason]++;
    LK_COUNT(w, CONNS_CLOSED);
    lk_route_unregister(w, c);
    unlink_all(w, c);
    w->io->close_conn(w, c);
}

void lk_conns_reap(lk_worker *w)
{
    while (w->doomed) {
        lk_conn *c = w->doomed;
        w->doomed = c->doomed_next;
        c->doomed_next = NULL;
        close_now(w, c);
    }
}

void lk_conns_close_all(lk_worker *w)
{
    for (lk_conn *c = w->all; c; c = c->all_next)
        lk_conn_doom(w, c, -1);
    lk_conns_reap(w);
}

/* ---- arrival ---------------------------------------------------------------- */

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

/* derper's accept limit: a token bucket of accept_limit per second holding at most
 * accept_burst (0: one second's worth), full at start like Go's rate.Limiter.  Over
 * it, a connection is closed before any byte is read: refusing early is the point. */
static int accept_admitted(lk_worker *w)
{
    const lk_relay_config *cfg = &w->relay->cfg;
    if (cfg->accept_limit == 0)
        return 1;
    double burst = cfg->accept_burst ? cfg->accept_burst : cfg->accept_limit;
    uint64_t now = lk_now_ns();  /* fresh: a burst of accepts can outlast one pass */
    if (w->accept_stamp_ns == 0)
        w->accept_tokens = burst;
    else
        w->accept_tokens += (double)(now - w->accept_stamp_ns) * cfg->accept_limit / 1e9;
    if (w->accept_tokens > burst)
        w->accept_tokens = burst;
    w->accept_stamp_ns = now;
    if (w->accept_tokens < 1.0)
        return 0;
    w->accept_tokens -= 1.0;
    return 1;
}

int lk_core_accepted(lk_worker *w, int fd, const struct sockaddr_storage *addr)
{
    if (!accept_admitted(w)) {
        LK_COUNT(w, CONNS_REFUSED);
        return -1;  /* the backend closes fd */
    }
    LK_COUNT(w, CONNS_ACCEPTED);
    lk_conn *c = conn_alloc(w, fd);
    if (!c)
        return -1;
    c->id = __atomic_add_fetch(&w->relay->next_conn_id, 1, __ATOMIC_RELAXED);
    set_remote(c, addr);
    if (w->relay->tls && !(c->tls = lk_tls_conn_new(w->relay->tls))) {
        c->state = LK_CS_HTTP;
        lk_conn_doom(w, c, LK_C_CLOSE_TLS);
    } else {
        c->ktls_peek = w->relay->cfg.tls == LK_TLS_KTLS;
        lk_session_start(w, c);
        if (w->io->add_conn(w, c) != 0)
            lk_conn_doom(w, c, LK_C_CLOSE_PEER);
    }
    lk_conns_reap(w);
    return 0;
}

/* Acceptor: the connection is set up; move it (and what came after ClientInfo) to the
 * worker that owns its key, and forget it here without closing its socket. */
static void hand_off(lk_worker *acc, lk_conn *c)
{
    lk_bytes *left = &c->pipelined;
    lk_handoff *h = malloc(sizeof *h + left->len);
    if (!h) {
        lk_conn_doom(acc, c, LK_C_CLOSE_HANDSHAKE);
        return;
    }
    *h = (lk_handoff){.fd = c->fd, .id = c->id, .mesh = c->mesh, .prober = c->prober,
                      .not_ideal = c->not_ideal, .port = c->port, .tls = c->tls, .ws = c->ws, .ctrl = c->ctrl,
                      .leftover_len = left->len};
    memcpy(h->key, c->key, LK_KEY_LEN);
    memcpy(h->ip16, c->ip16, 16);
    if (left->len)  /* data is NULL when nothing was pipelined */
        memcpy(h->leftover, left->data, left->len);
    c->tls = NULL;
    c->ws = NULL;
    c->ctrl = (lk_bytes){0};
    acc->io->detach(acc, c);
    unlink_all(acc, c);
    c->state = LK_CS_CLOSING;
    lk_core_release(acc, c);
    lk_xmsg m = {.kind = LK_X_ADOPT, .adopt = h};
    lk_shard_send(acc, lk_shard_owner(acc->relay, h->key), &m, 0);
}

void lk_conns_adopt(lk_worker *w, lk_handoff *h)
{
    lk_conn *c = conn_alloc(w, h->fd);
    if (!c) {
        w->io->discard_fd(w, h->fd);
        lk_tls_conn_free(h->tls);
        free(h->ws);
        free(h->ctrl.data);
        free(h);
        return;
    }
    c->id = h->id;
    memcpy(c->key, h->key, LK_KEY_LEN);
    memcpy(c->ip16, h->ip16, 16);
    c->port = h->port;
    c->mesh = h->mesh;
    c->prober = h->prober;
    c->not_ideal = h->not_ideal;
    c->tls = h->tls;
    c->ws = h->ws;
    if (c->ws)
        c->ws->rd.ctx = c;  /* the reader's callbacks now serve this slot */
    c->ctrl = h->ctrl;
    lk_session_resume(w, c);
    if (lk_route_register(w, c) != 0) {
        lk_log("worker %u: peer table full (%u keys); refusing a connection", w->index,
               w->peers.n_entries);
        lk_conn_doom(w, c, LK_C_CLOSE_HANDSHAKE);
    } else if (w->io->add_conn(w, c) != 0) {
        lk_conn_doom(w, c, LK_C_CLOSE_PEER);
    } else {
        lk_session_feed_derp(w, c, h->leftover, h->leftover_len);
    }
    free(h);
    lk_conns_reap(w);
}

/* ---- the backends' entry points (io/io.h) ------------------------------------ */

void lk_core_received(lk_worker *w, lk_conn *c, const uint8_t *data, size_t n)
{
    lk_session_received(w, c, data, n);
    if (c->state == LK_CS_HANDOFF)
        hand_off(w, c);
    lk_conns_reap(w);
}

void lk_core_io_error(lk_worker *w, lk_conn *c, int err)
{
    (void)err;  /* EOF, reset and broken pipe all mean the client is gone */
    lk_conn_doom(w, c, LK_C_CLOSE_PEER);
    lk_conns_reap(w);
}

int lk_core_gather(lk_worker *w, lk_conn *c, struct iovec *iov, int max)
{
    int n = lk_out_gather(w, c, iov, max);
    lk_conns_reap(w);
    return n;
}

void lk_core_sent(lk_worker *w, lk_conn *c, size_t n)
{
    lk_out_sent(w, c, n);
    lk_conns_reap(w);
}

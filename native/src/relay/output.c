/* output.c — what a connection owes its client, and handing it to the backend.
 *
 * Order on the wire: packets already taken for sending (tx), then control
 * frames (ctrl), then the queues (disco first, so NAT-traversal messages are
 * not starved by bulk traffic).  ctrl holds only whole frames and tx packets
 * are sent before anything new, so frames never interleave. */
#include <stdlib.h>
#include <string.h>

#include "relay/output.h"
#include "relay/shard.h"
#include "tls/tls.h"

int lk_out_queues_init(lk_conn *c, uint32_t depth)
{
    c->q_disco = (lk_pktq){.slots = calloc(depth, sizeof(lk_pkt *)), .cap = depth};
    c->q_other = (lk_pktq){.slots = calloc(depth, sizeof(lk_pkt *)), .cap = depth};
    return c->q_disco.slots && c->q_other.slots ? 0 : -1;
}

void lk_out_mark_dirty(lk_worker *w, lk_conn *c)
{
    if (c->dirty || !lk_conn_alive(c))
        return;
    c->dirty = 1;
    c->dirty_next = w->dirty;
    w->dirty = c;
}

lk_conn *lk_out_next_dirty(lk_worker *w)
{
    lk_conn *c = w->dirty;
    if (c) {
        w->dirty = c->dirty_next;
        c->dirty = 0;
    }
    return c;
}

int lk_out_http(lk_worker *w, lk_conn *c, const void *bytes, uint32_t len)
{
    if (!lk_conn_alive(c))
        return -1;
    if (lk_bytes_append(&c->ctrl, bytes, len, c->iov_ctrl ? &c->ctrl_pinned : NULL) != 0) {
        /* a client that lets megabytes of control frames pile up is not reading */
        lk_conn_doom(w, c, LK_C_CLOSE_WRITE_TIMEOUT);
        return -1;
    }
    lk_out_mark_dirty(w, c);
    return 0;
}

int lk_out_ctrl(lk_worker *w, lk_conn *c, const void *frame, uint32_t len)
{
    if (lk_out_http(w, c, frame, len) != 0)
        return -1;
    LK_COUNT(w, FRAMES_OUT);  /* control frames count when queued, packets when sent */
    return 0;
}

static lk_pkt *q_pop(lk_pktq *q)
{
    lk_pkt *p = q->slots[q->head];
    q->head = (q->head + 1) % q->cap;
    q->count--;
    return p;
}

/* A full queue is only an overload if the writer cannot take from it now:
 * one read can carry a burst for one receiver, and Go's concurrent writer
 * would drain meanwhile.  So hand packets to the writer's tx list while it has
 * room, and drop only what neither can hold. */
static void make_room(lk_worker *w, lk_conn *c, lk_pktq *q)
{
    /* tx goes out before ctrl: while ctrl holds unsent bytes (ServerInfo not yet out,
     * or a frame cut by a partial send), a packet moved to tx would overtake it */
    while (q->count == q->cap && c->tx_count < LK_TX_MAX && c->ctrl.len == c->ctrl.off) {
        c->tx[c->tx_count++] = q_pop(q);
        w->stats.c[LK_C_QUEUE_DEPTH]--;
    }
    if (q->count == q->cap) {
        /* head drop: the oldest packet is the least useful one (docs/protocol.md §6.3) */
        lk_pkt_free(w, q_pop(q));
        LK_COUNT(w, DROP_QUEUE_HEAD);
        w->stats.c[LK_C_QUEUE_DEPTH]--;
    }
}

void lk_out_packet(lk_worker *w, lk_conn *c, lk_pkt *pkt)
{
    if (!lk_conn_alive(c)) {  /* doomed since it was chosen as the receiver */
        lk_pkt_free(w, pkt);
        LK_COUNT(w, DROP_GONE);
        return;
    }
    lk_pktq *q = pkt->disco ? &c->q_disco : &c->q_other;
    if (q->count == q->cap)
        make_room(w, c, q);
    q->slots[(q->head + q->count) % q->cap] = pkt;
    q->count++;
    uint64_t depth = ++w->stats.c[LK_C_QUEUE_DEPTH];
    if (depth > w->stats.c[LK_C_QUEUE_DEPTH_MAX])
        w->stats.c[LK_C_QUEUE_DEPTH_MAX] = depth;
    lk_out_mark_dirty(w, c);
}

int lk_out_pending(const lk_conn *c)
{
    if (c->tls && lk_tls_out(c->tls)->len > lk_tls_out(c->tls)->off)
        return 1;
    if (c->ws && (c->ws->ctl_len > c->ws->ctl_off || c->ws->hdr_off < c->ws->hdr_len))
        return 1;
    return c->tx_count || c->ctrl.len > c->ctrl.off || c->q_disco.count || c->q_other.count;
}

void lk_out_release_all(lk_worker *w, lk_conn *c)
{
    uint64_t dropped = c->tx_count + c->q_disco.count + c->q_other.count;
    for (uint32_t i = 0; i < c->tx_count; i++)
        lk_pkt_free(w, c->tx[i]);
    while (c->q_disco.count)
        lk_pkt_free(w, q_pop(&c->q_disco));
    while (c->q_other.count)
        lk_pkt_free(w, q_pop(&c->q_other));
    LK_COUNT_N(w, DROP_GONE, dropped);
    w->stats.c[LK_C_QUEUE_DEPTH] -= dropped - c->tx_count;
    c->tx_count = c->tx_off = 0;
    free(c->ctrl.data);
    c->ctrl = (lk_bytes){0};
    free(c->ctrl_pinned);
    c->ctrl_pinned = NULL;
}

/* Plaintext gather: tx, then ctrl, then queued packets moved into tx.
 * New packets join only an iov without ctrl bytes: a partial send that stops
 * inside ctrl must resume there, before any packet. */
static int gather_plain(lk_worker *w, lk_conn *c, struct iovec *iov, int max)
{
    int n = 0;
    c->iov_ctrl = 0;
    c->iov_pkts = 0;
    free(c->ctrl_pinned);  /* no send is in flight while the backend gathers */
    c->ctrl_pinned = NULL;
    for (uint32_t i = 0; i < c->tx_count && n < max; i++, n++) {
        uint32_t skip = i == 0 ? c->tx_off : 0;
        iov[n] = (struct iovec){c->tx[i]->data + skip, c->tx[i]->len - skip};
        c->iov_pkts++;
    }
    if (n < max && c->ctrl.len > c->ctrl.off && c->tx_count == c->iov_pkts) {
        c->iov_ctrl = c->ctrl.len - c->ctrl.off;
        iov[n++] = (struct iovec){c->ctrl.data + c->ctrl.off, c->iov_ctrl};
    }
    while (n < max && c->tx_count < LK_TX_MAX && (c->q_disco.count || c->q_other.count) &&
           c->tx_count == c->iov_pkts && c->iov_ctrl == 0) {
        lk_pkt *p = q_pop(c->q_disco.count ? &c->q_disco : &c->q_other);
        w->stats.c[LK_C_QUEUE_DEPTH]--;
        c->tx[c->tx_count++] = p;
        iov[n++] = (struct iovec){p->data, p->len};
        c->iov_pkts++;
    }
    return n;
}

/* Advance plaintext state by n bytes of what gather_plain returned. */
static void sent_plain(lk_worker *w, lk_conn *c, size_t n)
{
    uint32_t done = 0;  /* tx packets fully sent */
    for (uint32_t i = 0; i < c->iov_pkts && n; i++) {
        uint32_t left = c->tx[i]->len - (i == 0 ? c->tx_off : 0);
        if (n < left) {
            c->tx_off = (i == 0 ? c->tx_off : 0) + (uint32_t)n;
            n = 0;
            break;
        }
        n -= left;
        if (c->tx[i]->data[0] == LK_FT_RECV_PACKET) {
            LK_COUNT(w, PACKETS_FORWARDED);
            LK_COUNT_N(w, PACKET_BYTES_FORWARDED, c->tx[i]->len - LK_FRAME_HDR - LK_KEY_LEN);
        }
        LK_COUNT(w, FRAMES_OUT);
        lk_pkt_free(w, c->tx[i]);
        c->tx_off = 0;
        done++;
    }
    if (done) {
        memmove(c->tx, c->tx + done, (c->tx_count - done) * sizeof c->tx[0]);
        c->tx_count -= done;
    }
    if (n && c->iov_ctrl) {
        uint32_t take = n < c->iov_ctrl ? (uint32_t)n : c->iov_ctrl;
        c->ctrl.off += take;
        if (c->ctrl.off == c->ctrl.len) {
            c->ctrl.off = c->ctrl.len = 0;
            c->pong_pending = 0;
        }
    }
    /* the send completed: nothing reads the gathered memory any more */
    c->iov_ctrl = 0;
    free(c->ctrl_pinned);
    c->ctrl_pinned = NULL;
}

/* WebSocket: the stream leaves as binary messages, one per gather, its header in
 * the iov before its payload.  After a partial send the next gather resumes the
 * same message: what gather_plain returns then starts with the message's unsent
 * rest (it only ever appends), so it is cut at msg_left.  Pong and Close wait for a
 * message boundary and go alone; the 101 before everything goes unframed.
 * `max` 1 (coalesce off) still carries a header with its one frame. */
static int gather_ws(lk_worker *w, lk_conn *c, struct iovec *iov, int max)
{
    lk_ws_link *ws = c->ws;
    ws->sending_ctl = 0;
    if (ws->raw_left) {
        int n = gather_plain(w, c, iov, 1);  /* the 101 is ctrl's first bytes */
        if (n == 1 && iov[0].iov_len > ws->raw_left)
            iov[0].iov_len = c->iov_ctrl = ws->raw_left;
        return n;
    }
    int inner = max > 1 ? max - 1 : 1;
    int between = ws->msg_left == 0 && ws->hdr_off == ws->hdr_len;
    if (between && ws->ctl_len > ws->ctl_off) {
        ws->sending_ctl = 1;
        iov[0] = (struct iovec){ws->ctl + ws->ctl_off, (size_t)(ws->ctl_len - ws->ctl_off)};
        return 1;
    }
    int k = ws->hdr_off < ws->hdr_len;
    int n = gather_plain(w, c, iov + 1, inner);
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += iov[1 + i].iov_len;
    if (between) {
        if (n == 0)
            return 0;
        ws->hdr_len = (uint8_t)lk_ws_put_header(ws->hdr, LK_WS_OP_BINARY, total, NULL);
        ws->hdr_off = 0;
        ws->msg_left = (uint32_t)total;
        k = 1;
    } else {
        size_t keep = 0;
        int m = 0;
        for (; m < n && keep < ws->msg_left; m++) {
            size_t room = ws->msg_left - keep;
            if (iov[1 + m].iov_len > room)
                iov[1 + m].iov_len = room;
            keep += iov[1 + m].iov_len;
        }
        n = m;
    }
    if (k)
        iov[0] = (struct iovec){ws->hdr + ws->hdr_off, (size_t)(ws->hdr_len - ws->hdr_off)};
    else
        memmove(iov, iov + 1, (size_t)n * sizeof *iov);
    return k + n;
}

static void sent_ws(lk_worker *w, lk_conn *c, size_t n)
{
    lk_ws_link *ws = c->ws;
    if (ws->raw_left) {
        ws->raw_left -= (uint32_t)n;
        sent_plain(w, c, n);
        return;
    }
    if (ws->sending_ctl) {
        ws->sending_ctl = 0;
        ws->ctl_off = (uint8_t)(ws->ctl_off + n);
        if (ws->ctl_off == ws->ctl_len)
            ws->ctl_off = ws->ctl_len = 0;
        return;
    }
    size_t h = ws->hdr_len - ws->hdr_off;
    if (h > n)
        h = n;
    ws->hdr_off = (uint8_t)(ws->hdr_off + h);
    ws->msg_left -= (uint32_t)(n - h);
    sent_plain(w, c, n - h);
}

static int gather_stream(lk_worker *w, lk_conn *c, struct iovec *iov, int max)
{
    return c->ws ? gather_ws(w, c, iov, max) : gather_plain(w, c, iov, max);
}

static void sent_stream(lk_worker *w, lk_conn *c, size_t n)
{
    if (c->ws)
        sent_ws(w, c, n);
    else
        sent_plain(w, c, n);
}

/* TLS: encrypt the next plaintext batch when the previous records are gone. */
static int gather_tls(lk_worker *w, lk_conn *c, struct iovec *iov, int max)
{
    lk_bytes *out = lk_tls_out(c->tls);
    if (out->len == out->off && c->state != LK_CS_TLS_HANDSHAKE) {
        struct iovec plain[LK_TX_MAX + 2];  /* + a WebSocket header */
        int n = gather_stream(w, c, plain, max > 1 ? LK_TX_MAX + 1 : 1);
        size_t total = 0;
        for (int i = 0; i < n; i++) {
            if (lk_tls_write(c->tls, plain[i].iov_base, plain[i].iov_len) != 0) {
                c->close_reason = LK_C_CLOSE_TLS;
                return -1;
            }
            total += plain[i].iov_len;
        }
        sent_stream(w, c, total);
    }
    if (out->len == out->off)
        return 0;
    iov[0] = (struct iovec){out->data + out->off, out->len - out->off};
    lk_tls_out_sending(c->tls, 1);
    return 1;
}

int lk_out_gather(lk_worker *w, lk_conn *c, struct iovec *iov, int max)
{
    if (!lk_conn_alive(c))
        return 0;
    int n = c->tls ? gather_tls(w, c, iov, max) : gather_stream(w, c, iov, max);
    if (n < 0) {
        lk_conn_doom(w, c, c->close_reason);
        return 0;
    }
    if (n > 0 && !c->write_stalled_since && w->relay->cfg.write_timeout_ms) {
        c->write_stalled_since = w->now;
        lk_arm(w, w->now + w->relay->cfg.write_timeout_ms * LK_MS);
    }
    return n;
}

void lk_out_sent(lk_worker *w, lk_conn *c, size_t n)
{
    LK_COUNT_N(w, BYTES_OUT, n);
    if (c->tls) {
        lk_bytes *out = lk_tls_out(c->tls);
        lk_tls_out_sending(c->tls, 0);
        out->off += (uint32_t)n;
        if (out->off == out->len)
            out->off = out->len = 0;
    } else {
        sent_stream(w, c, n);
    }
    int pending = lk_out_pending(c);
    if (n > 0)
        c->write_stalled_since = pending ? w->now : 0;
    if (!pending && c->close_when_flushed)
        lk_conn_doom(w, c, c->flushed_reason);
}

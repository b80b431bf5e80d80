/* session.c — a connection's input side: TLS records -> HTTP request ->
 * DERP handshake -> steady-state frames, all fed incrementally from whatever
 * the backend received (session.h; the protocol: docs/protocol.md §2–§5). */
#include <openssl/crypto.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "proto/handshake.h"
#include "proto/websocket.h"
#include "relay/output.h"
#include "relay/routing.h"
#include "relay/session.h"
#include "relay/shard.h"
#include "tls/tls.h"

/* Control frames a WebSocket client may send in a burst, then per second. */
#define LK_WS_CTL_BURST 100
#define LK_WS_CTL_RATE 10

static enum lk_body_action frame_begin(void *ctx, uint8_t type, uint32_t len, uint8_t **dst);
static int frame_end(void *ctx, uint8_t type, uint32_t len, uint8_t *payload);

void lk_session_start(lk_worker *w, lk_conn *c)
{
    lk_frame_reader_init(&c->reader, frame_begin, frame_end, c);
    c->state = c->tls ? LK_CS_TLS_HANDSHAKE : LK_CS_HTTP;
    /* the request head must arrive within handshake_timeout, and then ClientInfo
     * within another (start_derp re-arms it): a slowloris client is closed
     * however it stalls */
    c->handshake_deadline = w->now + w->relay->cfg.handshake_timeout_ms * LK_MS;
    lk_arm(w, c->handshake_deadline);
}

/* ---- HTTP upgrade ------------------------------------------------------- */

static int ws_data(void *ctx, const uint8_t *p, size_t n);
static int ws_control(void *ctx, uint8_t opcode, const uint8_t *p, size_t n);

/* DERP over WebSocket: answer with the RFC 6455 101; from here the stream both
 * ways is binary messages (§2.7).  Fast start does not apply: a WebSocket client
 * needs the 101 to finish its own handshake. */
static int start_websocket(lk_worker *w, lk_conn *c, const lk_http_request *req)
{
    char head[256];
    size_t n = lk_http_build_ws_101(req->ws_key, head, sizeof head);
    if (n == 0 || !(c->ws = calloc(1, sizeof *c->ws))) {
        lk_conn_doom(w, c, LK_C_CLOSE_HTTP);
        return -1;
    }
    lk_ws_reader_init(&c->ws->rd, 1, LK_WS_MESSAGE_MAX, ws_data, ws_control, c);
    c->ws->raw_left = (uint32_t)n;
    c->ws->ctl_tokens = LK_WS_CTL_BURST;
    c->ws->ctl_stamp_ns = w->now;
    LK_COUNT(w, CONNS_WEBSOCKET);
    return lk_out_http(w, c, head, (uint32_t)n);
}

static void start_derp(lk_worker *w, lk_conn *c, const lk_http_request *req)
{
    char head[256];
    uint8_t server_key[LK_SERVER_KEY_FRAME_LEN];
    if (req->ws_ok) {
        if (start_websocket(w, c, req) != 0)
            return;
    } else if (!req->fast_start) {
        /* fast start: the client knows our key already and expects no HTTP reply */
        size_t n = lk_http_build_101(w->relay->public_key, head, sizeof head);
        if (lk_out_http(w, c, head, (uint32_t)n) != 0)
            return;
    }
    lk_build_server_key(server_key, w->relay->public_key);
    if (lk_out_ctrl(w, c, server_key, sizeof server_key) != 0)
        return;
    c->not_ideal = (uint8_t)req->not_ideal;
    c->state = LK_CS_WAIT_CLIENT_INFO;
    c->handshake_deadline = w->now + w->relay->cfg.handshake_timeout_ms * LK_MS;
    lk_arm(w, c->handshake_deadline);
}

static void answer_http(lk_worker *w, lk_conn *c, const lk_http_request *req)
{
    char resp[1024];
    size_t n = lk_http_build_response(req, resp, sizeof resp);
    c->state = LK_CS_HTTP_REPLIED;
    c->close_when_flushed = 1;
    c->flushed_reason = LK_C_CLOSE_HTTP;
    if (n == 0 || lk_out_http(w, c, resp, (uint32_t)n) != 0)
        lk_conn_doom(w, c, LK_C_CLOSE_HTTP);
}

/* Accumulate the request head; returns the bytes of `data` it used, or
 * -1 when the connection closed or nothing more should be read. */
static long feed_http(lk_worker *w, lk_conn *c, const uint8_t *data, size_t n)
{
    if (!c->head && !(c->head = malloc(LK_HTTP_HEAD_MAX))) {
        lk_conn_doom(w, c, LK_C_CLOSE_HTTP);
        return -1;
    }
    size_t room = LK_HTTP_HEAD_MAX - c->head_len;
    size_t take = n < room ? n : room;
    memcpy(c->head + c->head_len, data, take);
    c->head_len += (uint32_t)take;
    lk_http_request req;
    int head = lk_http_parse_request(c->head, c->head_len, LK_HTTP_HEAD_MAX, &req);
    if (head < 0 || (head == 0 && c->head_len == LK_HTTP_HEAD_MAX)) {
        lk_conn_doom(w, c, LK_C_CLOSE_HTTP);
        return -1;
    }
    if (head == 0)
        return (long)take;
    if (req.route == LK_ROUTE_DERP && ((req.upgrade && !req.websocket) || req.ws_ok))
        start_derp(w, c, &req);
    else
        answer_http(w, c, &req);
    /* bytes after the head already belong to the DERP stream (§2.6) */
    size_t surplus_in_head = c->head_len - (size_t)head;
    size_t used = take - surplus_in_head;
    free(c->head);
    c->head = NULL;
    c->head_len = 0;
    return c->state == LK_CS_WAIT_CLIENT_INFO ? (long)used : -1;
}

static void keep_pipelined(lk_worker *w, lk_conn *c, const uint8_t *data, size_t n)
{
    lk_bytes *b = &c->pipelined;
    if (n == 0)
        return;
    if (b->len + n > LK_CLIENT_INFO_MAX) {  /* a flood before ServerInfo: not a client */
        lk_conn_doom(w, c, LK_C_CLOSE_PROTOCOL);
        return;
    }
    if (b->len + n > b->cap) {
        uint32_t cap = (uint32_t)(b->len + n) * 2;
        uint8_t *d = realloc(b->data, cap);
        if (!d) {
            lk_conn_doom(w, c, LK_C_CLOSE_HANDSHAKE);
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, n);
    b->len += (uint32_t)n;
}

void lk_session_feed_derp(lk_worker *w, lk_conn *c, const uint8_t *data, size_t n)
{
    while (n > 0) {
        if (c->state == LK_CS_HANDOFF) {
            keep_pipelined(w, c, data, n);
            return;
        }
        if (c->state != LK_CS_WAIT_CLIENT_INFO && c->state != LK_CS_STEADY)
            return;  /* e.g. a reply is being written before closing */
        size_t used;
        int rc = lk_frame_feed(&c->reader, data, n, &used);
        if (rc < 0) {
            lk_conn_doom(w, c, c->close_reason);
            return;
        }
        if (rc > 0) {
            /* frame_end closed the connection, or ClientInfo completed on the
             * acceptor: what follows belongs to the owning worker */
            if (c->state == LK_CS_HANDOFF)
                keep_pipelined(w, c, data + used, n - used);
            return;
        }
        data += used;
        n -= used;
    }
}

/* ---- WebSocket ----------------------------------------------------------- */

/* Why a WebSocket stream broke the rules, as the counter that says so. */
static const int ws_close_counter[] = {
    [LK_WS_UNMASKED] = LK_C_CLOSE_WS_UNMASKED, [LK_WS_OPCODE] = LK_C_CLOSE_WS_OPCODE,
    [LK_WS_CONTROL] = LK_C_CLOSE_WS_CONTROL,   [LK_WS_FRAGMENT] = LK_C_CLOSE_WS_FRAGMENT,
    [LK_WS_OVERSIZE] = LK_C_CLOSE_WS_OVERSIZE,
};

/* Binary payload: DERP bytes, which may split frames anywhere.  In the handoff
 * state they are kept for the owning worker (lk_session_feed_derp does that), and
 * the reader goes on: the rest of this read is WebSocket framing, which the owning
 * worker could not resume mid-frame. */
static int ws_data(void *ctx, const uint8_t *p, size_t n)
{
    lk_conn *c = ctx;
    lk_session_feed_derp(c->worker, c, p, n);
    return !lk_conn_alive(c);
}

/* A control frame to send at the next message boundary; a Pong not yet started
 * gives way to a newer one (RFC 6455 §5.5.3 allows answering only the latest). */
static void ws_queue_ctl(lk_worker *w, lk_conn *c, uint8_t opcode, const uint8_t *p, size_t n)
{
    lk_ws_link *ws = c->ws;
    if (ws->ctl_off > 0)
        return;  /* one is half sent: it must finish; a Pong may then be skipped */
    ws->ctl_len = (uint8_t)lk_ws_put_header(ws->ctl, opcode, n, NULL);
    memcpy(ws->ctl + ws->ctl_len, p, n);
    ws->ctl_len = (uint8_t)(ws->ctl_len + n);
    lk_out_mark_dirty(w, c);
}

static int ws_control(void *ctx, uint8_t opcode, const uint8_t *p, size_t n)
{
    lk_conn *c = ctx;
    lk_worker *w = c->worker;
    lk_ws_link *ws = c->ws;
    /* a client may ping, but not make the relay answer without end */
    uint64_t elapsed = w->now - ws->ctl_stamp_ns;
    uint64_t refill = elapsed * LK_WS_CTL_RATE / 1000000000ull;
    if (refill) {
        ws->ctl_tokens = ws->ctl_tokens + refill > LK_WS_CTL_BURST
                             ? LK_WS_CTL_BURST : (uint32_t)(ws->ctl_tokens + refill);
        ws->ctl_stamp_ns += refill * 1000000000ull / LK_WS_CTL_RATE;
    }
    if (ws->ctl_tokens == 0) {
        lk_conn_doom(w, c, LK_C_CLOSE_WS_FLOOD);
        return 1;
    }
    ws->ctl_tokens--;
    if (opcode == LK_WS_OP_PING) {
        LK_COUNT(w, WS_PINGS);
        ws_queue_ctl(w, c, LK_WS_OP_PONG, p, n);
        return 0;
    }
    if (opcode != LK_WS_OP_CLOSE)
        return 0;  /* an unsolicited Pong is allowed, and means nothing */
    /* the close handshake: echo the status code, then close once it is written.
     * On the acceptor mid-handoff there is no writer to wait for: close now. */
    ws->closing = 1;
    if (c->state == LK_CS_HANDOFF) {
        lk_conn_doom(w, c, LK_C_CLOSE_WS_CLOSED);
        return 1;
    }
    /* replaces a Pong not yet started; after one half sent, no echo (rare, and the
     * connection closes either way) */
    ws_queue_ctl(w, c, LK_WS_OP_CLOSE, p, n < 2 ? n : 2);
    c->close_when_flushed = 1;
    c->flushed_reason = LK_C_CLOSE_WS_CLOSED;
    return 1;
}

static void feed_ws(lk_worker *w, lk_conn *c, const uint8_t *data, size_t n)
{
    uint8_t scratch[8192];  /* unmasked payload on its way to the DERP reader */
    if (c->ws->closing)
        return;
    if (lk_ws_feed(&c->ws->rd, data, n, scratch, sizeof scratch) < 0)
        lk_conn_doom(w, c, ws_close_counter[c->ws->rd.violation]);
}

void lk_session_feed(lk_worker *w, lk_conn *c, const uint8_t *data, size_t n)
{
    while (n > 0 && c->state == LK_CS_HTTP) {
        long used = feed_http(w, c, data, n);
        if (used < 0)
            return;
        data += used;
        n -= (size_t)used;
    }
    if (n == 0)
        return;
    if (c->ws)
        feed_ws(w, c, data, n);
    else
        lk_session_feed_derp(w, c, data, n);
}

/* kTLS: the handshake runs in OpenSSL on peeked bytes.  The record boundary
 * problem: a client may send its first application records (the HTTP
 * request) right behind its Finished, so one recv can hold both.  Had we
 * read them out of the socket, the kernel would start mid-stream and
 * userspace would have to decrypt them and hand the kernel a later sequence
 * number -- impossible when the last record arrived only in part.  Peeking
 * avoids all of it: OpenSSL reads exactly one record at a time (no
 * read-ahead), so `used` ends precisely after Finished; we remove only those
 * bytes, and everything after stays in the socket for the kernel to decrypt
 * from sequence number 0. */
static void ktls_handshake(lk_worker *w, lk_conn *c, const uint8_t *data, size_t n)
{
    lk_tls_input(c->tls, data, n);
    int hs = lk_tls_handshake(c->tls);
    size_t used = n - lk_tls_unread(c->tls);
    lk_out_mark_dirty(w, c);  /* handshake records to send */
    int consumed = w->io->ktls_consume(w, c, used);  /* counts its recv calls */
    LK_COUNT_N(w, BYTES_IN, used);
    if (consumed < 0 || hs < 0) {
        lk_conn_doom(w, c, LK_C_CLOSE_TLS);
        return;
    }
    if (hs == 0)
        return;
    char why[400];
    lk_ktls_secrets s;
    int rc = lk_tls_ktls_secrets(c->tls, &s, why, sizeof why);
    if (rc == 0) {
        rc = w->io->ktls_install(w, c, &s, why, sizeof why);
        OPENSSL_cleanse(&s, sizeof s);
    }
    if (rc != 0) {
        /* never a silent fall-back to userspace TLS: this connection is refused */
        lk_log("worker %u: kTLS refused connection %llu: %s", w->index,
               (unsigned long long)c->id, why);
        lk_conn_doom(w, c, LK_C_CLOSE_TLS);
        return;
    }
    lk_tls_conn_free(c->tls);
    c->tls = NULL;
    c->ktls_peek = 0;  /* from here the connection is plain to the relay: the kernel
                        * encrypts what it sends and decrypts what it receives */
    c->state = LK_CS_HTTP;
    LK_COUNT(w, CONNS_KTLS);
}

void lk_session_received(lk_worker *w, lk_conn *c, const uint8_t *data, size_t n)
{
    if (c->ktls_peek) {
        ktls_handshake(w, c, data, n);  /* counts bytes_in as it consumes them */
        return;
    }
    LK_COUNT_N(w, BYTES_IN, n);
    if (!c->tls) {
        lk_session_feed(w, c, data, n);
        return;
    }
    lk_tls_input(c->tls, data, n);
    if (c->state == LK_CS_TLS_HANDSHAKE) {
        int hs = lk_tls_handshake(c->tls);
        lk_out_mark_dirty(w, c);  /* handshake records to send */
        if (hs < 0) {
            lk_conn_doom(w, c, LK_C_CLOSE_TLS);
            return;
        }
        if (hs == 0)
            return;
        c->state = LK_CS_HTTP;
    }
    for (;;) {
        int k = lk_tls_read(c->tls, w->plain, LK_PLAIN_LEN);
        if (k < 0) {
            lk_conn_doom(w, c, LK_C_CLOSE_PEER);
            return;
        }
        if (k == 0)
            break;
        lk_session_feed(w, c, w->plain, (size_t)k);
        if (!lk_conn_alive(c))
            return;
    }
    if (lk_out_pending(c))
        lk_out_mark_dirty(w, c);
}

/* ---- frames ------------------------------------------------------------- */

static enum lk_body_action frame_begin(void *ctx, uint8_t type, uint32_t len, uint8_t **dst)
{
    lk_conn *c = ctx;
    lk_worker *w = c->worker;
    if (c->state == LK_CS_WAIT_CLIENT_INFO) {
        c->close_reason = LK_C_CLOSE_HANDSHAKE;
        if (type != LK_FT_CLIENT_INFO || len < LK_CLIENT_INFO_MIN || len > LK_CLIENT_INFO_MAX)
            return LK_BODY_CLOSE;
        /* once per connection, so the heap is fine here */
        if (!(c->client_info = malloc(len)))
            return LK_BODY_CLOSE;
        *dst = c->client_info;
        return LK_BODY_BUFFER;
    }
    int mesh_denied;
    enum lk_body_action a = lk_frame_rule(type, len, c->mesh, &mesh_denied);
    if (a == LK_BODY_CLOSE) {
        c->close_reason = mesh_denied ? LK_C_CLOSE_MESH_DENIED : LK_C_CLOSE_PROTOCOL;
        return a;
    }
    if (a == LK_BODY_SKIP)
        return a;
    if (type == LK_FT_SEND_PACKET || type == LK_FT_FORWARD_PACKET) {
        /* read straight into the buffer the receiver's writer will send */
        c->rx_pkt = lk_pool_get(&w->pool, LK_FRAME_HDR + len);
        if (!c->rx_pkt)
            return LK_BODY_SKIP;
        *dst = c->rx_pkt->data + LK_FRAME_HDR;
        return LK_BODY_BUFFER;
    }
    *dst = c->small;
    return LK_BODY_BUFFER;
}

static int client_info_done(lk_worker *w, lk_conn *c, uint32_t len)
{
    lk_client_info info;
    int rc = lk_open_client_info(c->client_info, len, w->relay->cfg.private_key, c->key, &info);
    free(c->client_info);
    c->client_info = NULL;
    uint8_t server_info[LK_SERVER_INFO_FRAME_LEN];
    LK_COUNT(w, SYS_OTHER);  /* libsodium's getrandom for the ServerInfo nonce */
    if (rc != LK_OK || lk_build_server_info(server_info, c->key, w->relay->cfg.private_key) != 0) {
        lk_conn_doom(w, c, LK_C_CLOSE_HANDSHAKE);
        return 1;
    }
    /* constant time: the mesh key is a secret (TS-2025-003) */
    c->mesh = w->relay->cfg.has_mesh_key && info.has_mesh_key &&
              sodium_memcmp(info.mesh_key, w->relay->cfg.mesh_key, 32) == 0;
    c->prober = (uint8_t)info.is_prober;
    /* ServerInfo goes before anything queued for this client (§4.1) */
    if (lk_out_ctrl(w, c, server_info, sizeof server_info) != 0)
        return 1;
    c->handshake_deadline = 0;
    c->state = LK_CS_HANDOFF;
    LK_COUNT(w, CONNS_HANDSHAKED);
    return 1;  /* stop parsing: the rest is the owning worker's to read */
}

void lk_session_resume(lk_worker *w, lk_conn *c)
{
    lk_frame_reader_init(&c->reader, frame_begin, frame_end, c);
    c->state = LK_CS_STEADY;
    c->nothere_tokens = 3;
    c->nothere_stamp_ns = w->now;
    /* keepalive jitter: up to 5 s at the default 60 s period, scaled for short
     * periods.  Taken from the client's (random) key rather than getrandom: the
     * protocol wants a per-connection offset, not a secret, and this costs no
     * syscall. */
    uint64_t period = w->relay->cfg.keepalive_ms * LK_MS;
    uint32_t spread = ((uint32_t)c->key[0] << 8 | c->key[1]) % 1000;
    c->next_keepalive = w->now + period + spread * (period / 12 / 1000);
    lk_arm(w, c->next_keepalive);
    lk_out_mark_dirty(w, c);
}

static void send_or_forward(lk_worker *w, lk_conn *c, uint8_t type, uint32_t len)
{
    lk_pkt *pkt = c->rx_pkt;
    c->rx_pkt = NULL;
    uint8_t *body = pkt->data + LK_FRAME_HDR;
    uint8_t src[LK_KEY_LEN], dst[LK_KEY_LEN];
    uint32_t plen;
    if (type == LK_FT_SEND_PACKET) {
        memcpy(dst, body, LK_KEY_LEN);
        memcpy(src, c->key, LK_KEY_LEN);
        plen = len - LK_KEY_LEN;
    } else {
        /* ForwardPacket: src, dst, packet -> RecvPacket: src, packet */
        memcpy(src, body, LK_KEY_LEN);
        memcpy(dst, body + LK_KEY_LEN, LK_KEY_LEN);
        plen = len - 2 * LK_KEY_LEN;
        memmove(body + LK_KEY_LEN, body + 2 * LK_KEY_LEN, plen);
    }
    memcpy(body, src, LK_KEY_LEN);
    lk_put_frame_hdr(pkt->data, LK_FT_RECV_PACKET, LK_KEY_LEN + plen);
    pkt->len = LK_FRAME_HDR + LK_KEY_LEN + plen;
    pkt->disco = (uint8_t)lk_is_disco(body + LK_KEY_LEN, plen);
    LK_COUNT(w, PACKETS_IN);
    w->admitted++;
    lk_route_packet(w, c, src, dst, pkt);
}

static void pong(lk_worker *w, lk_conn *c)
{
    if (c->pong_pending)  /* at most one Pong outstanding (§5.4) */
        return;
    uint8_t f[LK_FRAME_HDR + 8];
    lk_put_frame_hdr(f, LK_FT_PONG, 8);
    memcpy(f + LK_FRAME_HDR, c->small, 8);
    if (lk_out_ctrl(w, c, f, sizeof f) == 0)
        c->pong_pending = 1;
}

static int frame_end(void *ctx, uint8_t type, uint32_t len, uint8_t *payload)
{
    lk_conn *c = ctx;
    lk_worker *w = c->worker;
    LK_COUNT(w, FRAMES_IN);
    if (c->state == LK_CS_WAIT_CLIENT_INFO)
        return client_info_done(w, c, len);
    lk_route_touch(w, c);
    switch (payload ? type : 0) {
    case LK_FT_SEND_PACKET:
    case LK_FT_FORWARD_PACKET:
        send_or_forward(w, c, type, len);
        break;
    case LK_FT_PING:
        LK_COUNT(w, PINGS);
        pong(w, c);
        break;
    case LK_FT_WATCH_CONNS:
        lk_route_watch(w, c);
        break;
    case LK_FT_CLOSE_PEER:
        lk_route_close_peer(w, c, c->small);
        break;
    case LK_FT_NOTE_PREFERRED:
        break;  /* statistics only in derper; nothing to route */
    default:
        if (type == LK_FT_SEND_PACKET || type == LK_FT_FORWARD_PACKET)
            LK_COUNT(w, DROP_POOL_EMPTY);  /* begin found no buffer and skipped it */
        else
            LK_COUNT(w, UNKNOWN_FRAMES);
        break;
    }
    return !lk_conn_alive(c);
}

/* load_client.c — one load-generator DERP client: connect, TLS, HTTP upgrade,
 * the client side of the DERP handshake (docs/protocol.md §2, §4), steady-state
 * frame parsing, and its output buffer.  What a received packet *means*
 * (counting, latency, echo) is load_worker.c's business: this file hands it
 * every RecvPacket through lk_load_on_packet().
 *
 * Every socket syscall is counted in the owning thread's counters.  During
 * the connect phase the owning thread is not running yet, so the calling
 * thread counts into it without a race. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tls/ktls.h"
#include "load/load.h"
#include "load/load_tls.h"

#define PONG_FRAME_LEN (LK_FRAME_HDR + 8)

static const char client_info_json[] = "{\"version\":2,\"CanAckPings\":true}";

static enum lk_body_action frame_begin(void *ctx, uint8_t type, uint32_t len, uint8_t **dst);
static int frame_end(void *ctx, uint8_t type, uint32_t len, uint8_t *payload);
static uint8_t *lk_lc_reserve_raw(lk_load_conn *c, uint32_t n);
static int start_ws(lk_load_conn *c, size_t head);

/* ---- set-up -------------------------------------------------------------- */

int lk_lc_init(lk_load *l, lk_load_conn *c, uint32_t index, lk_load_thread *thr)
{
    memset(c, 0, sizeof *c);
    c->load = l;
    c->thr = thr;
    c->index = index;
    c->pair = index / 2;
    c->role = (int)(index % 2);
    c->fd = -1;
    c->epfd = -1;
    crypto_box_keypair(c->pk, c->sk);  /* a fresh random node key per client */
    c->body_cap = LK_KEY_LEN + l->cfg.size;
    if (c->body_cap < LK_LOAD_CTRL_MAX)
        c->body_cap = LK_LOAD_CTRL_MAX;
    /* Output room by job: a sender needs one batch; an echoing receiver
     * replies to up to two batches' worth of input per flush; anyone else
     * only writes the handshake and Pongs. */
    int echo = l->cfg.mode == LK_LOAD_ECHO;
    if (c->role == LK_LR_SENDER)
        c->tx_cap = l->batch_frames * l->frame_len + PONG_FRAME_LEN;
    else if (echo)
        c->tx_cap = 2 * LK_LOAD_BATCH + l->frame_len + LK_LOAD_PLAIN + PONG_FRAME_LEN;
    else
        c->tx_cap = LK_LOAD_CTRL_MAX;
    if (c->tx_cap < LK_LOAD_CTRL_MAX)
        c->tx_cap = LK_LOAD_CTRL_MAX;
    c->tx_cap += 2 * LK_WS_HDR_MAX;  /* a WebSocket header before a batch and a Pong */
    c->body = malloc(c->body_cap);
    c->tx = malloc(c->tx_cap);
    if (!c->body || !c->tx)
        return lk_fail(LK_ERR_NOMEM, "no memory for client buffers (%u pairs)", l->cfg.pairs);
    /* the packet filler: any bytes do, but defined ones */
    memset(c->tx, 0x5a, c->tx_cap);
    if (l->tls) {
        c->tls = lk_load_tls_new(l->tls, l->cfg.host, lk_load_tls_cost(c->tx_cap));
        if (!c->tls)
            return lk_fail(LK_ERR_TLS, "cannot create a TLS client for %s", l->cfg.host);
        c->ktls_peek = l->cfg.tls == LK_TLS_KTLS;
    }
    lk_frame_reader_init(&c->reader, frame_begin, frame_end, c);
    return LK_OK;
}

void lk_lc_free(lk_load_conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free(c->body);
    free(c->tx);
    free(c->head);
    lk_load_tls_free(c->tls);
    c->body = c->tx = NULL;
    c->head = NULL;
    c->tls = NULL;
}

const char *lk_lc_name(const lk_load_conn *c, char *buf, size_t cap)
{
    snprintf(buf, cap, "pair %u %s", c->pair, c->role == LK_LR_SENDER ? "sender" : "receiver");
    return buf;
}

static const char *state_text(int state)
{
    switch (state) {
    case LK_LS_CONNECTING: return "connecting";
    case LK_LS_TLS: return "in the TLS handshake";
    case LK_LS_HTTP: return "waiting for the HTTP 101 response";
    case LK_LS_SERVER_KEY: return "waiting for ServerKey";
    case LK_LS_SERVER_INFO: return "waiting for ServerInfo";
    case LK_LS_STEADY: return "running";
    default: return "closed";
    }
}

/* Record why c failed (the first reason wins: it is the cause). */
static void note(lk_load_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(lk_load_conn *c, const char *fmt, ...)
{
    if (c->failure[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->failure, sizeof c->failure, fmt, ap);
    va_end(ap);
}

static void kill_conn(lk_load_conn *c)
{
    if (!c->failure[0])
        note(c, "closed %s", state_text(c->state));
    if (c->fd >= 0) {
        LK_LCOUNT(c->thr, SYS_CLOSE);
        close(c->fd);  /* also leaves the epoll set */
        c->fd = -1;
    }
    if (c->state != LK_LS_DEAD)
        LK_LCOUNT(c->thr, CONNS_CLOSED);
    c->state = LK_LS_DEAD;
}

void lk_lc_close(lk_load_conn *c, const char *fmt, ...)
{
    if (!c->failure[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->failure, sizeof c->failure, fmt, ap);
        va_end(ap);
    }
    kill_conn(c);
}

/* ---- output -------------------------------------------------------------- */

uint32_t lk_lc_pending(const lk_load_conn *c)
{
    uint32_t n = c->tx_len - c->tx_off;
    if (c->tls) {
        const lk_bytes *o = lk_load_tls_out(c->tls);
        n += o->len - o->off;
    }
    return n;
}

uint32_t lk_lc_room(lk_load_conn *c)
{
    return c->tx_cap - (c->tx_len - c->tx_off);
}

/* WebSocket: each reserve/commit is one binary message, its header written at commit
 * in front of the payload, which is masked in place (RFC 6455 §5.3).  The mask keys
 * come from xorshift seeded by libsodium: the relay cannot tell, and a syscall per
 * message would be the load generator's cost, not the relay's. */
static uint32_t ws_hdr_len(uint32_t n)
{
    return (n < 126 ? 2 : n <= 0xffff ? 4 : 10) + 4;
}

uint8_t *lk_lc_reserve(lk_load_conn *c, uint32_t n)
{
    if (c->ws) {
        c->ws_hdr = (uint8_t)ws_hdr_len(n);
        uint8_t *p = lk_lc_reserve_raw(c, n + c->ws_hdr);
        return p ? p + c->ws_hdr : NULL;
    }
    return lk_lc_reserve_raw(c, n);
}

void lk_lc_commit(lk_load_conn *c, uint32_t n)
{
    if (c->ws) {
        uint64_t x = c->ws_mask_state;
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        c->ws_mask_state = x;
        uint8_t mask[4] = {(uint8_t)x, (uint8_t)(x >> 8), (uint8_t)(x >> 16), (uint8_t)(x >> 24)};
        uint8_t *at = c->tx + c->tx_len;
        lk_ws_put_header(at, LK_WS_OP_BINARY, n, mask);
        lk_ws_mask(at + c->ws_hdr, n, mask, 0);
        n += c->ws_hdr;
    }
    c->tx_len += n;
}

static uint8_t *lk_lc_reserve_raw(lk_load_conn *c, uint32_t n)
{
    if (c->tx_off == c->tx_len)
        c->tx_off = c->tx_len = 0;
    if (c->tx_cap - c->tx_len < n && c->tx_off > 0) {
        /* only after a partial send: move the unsent tail to the front */
        memmove(c->tx, c->tx + c->tx_off, c->tx_len - c->tx_off);
        c->tx_len -= c->tx_off;
        c->tx_off = 0;
    }
    return c->tx_cap - c->tx_len >= n ? c->tx + c->tx_len : NULL;
}


void lk_lc_update_events(lk_load_conn *c)
{
    if (c->fd < 0 || c->epfd < 0)
        return;
    uint32_t want;
    if (c->state == LK_LS_CONNECTING)
        want = EPOLLOUT;
    else
        want = (c->rx_blocked ? 0 : EPOLLIN) |
               (c->want_out || lk_lc_pending(c) ? EPOLLOUT : 0);
    if (want == c->events)
        return;
    struct epoll_event ev = {.events = want, .data.u64 = c->index};
    LK_LCOUNT(c->thr, SYS_EPOLL_CTL);
    if (epoll_ctl(c->epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0)
        c->events = want;
}

/* Move plaintext into TLS records when they fit, and say what to send. */
static int next_wire(lk_load_conn *c, uint8_t **data, uint32_t *n)
{
    if (!c->tls) {
        *data = c->tx + c->tx_off;
        *n = c->tx_len - c->tx_off;
        return 0;
    }
    lk_bytes *o = lk_load_tls_out(c->tls);
    uint32_t plain = c->tx_len - c->tx_off;
    if (plain && lk_load_tls_room(c->tls) >= lk_load_tls_cost(plain)) {
        if (lk_load_tls_write(c->tls, c->tx + c->tx_off, plain) != 0) {
            note(c, "TLS encryption failed");
            return -1;
        }
        c->tx_off = c->tx_len = 0;
    }
    *data = o->data + o->off;
    *n = o->len - o->off;
    return 0;
}

static void wire_sent(lk_load_conn *c, uint32_t n)
{
    if (c->tls)
        lk_load_tls_out(c->tls)->off += n;
    else
        c->tx_off += n;
}

int lk_lc_flush(lk_load_conn *c)
{
    if (c->state == LK_LS_DEAD)
        return -1;
    if (c->pong_pending) {
        uint8_t *p = lk_lc_reserve(c, PONG_FRAME_LEN);
        if (p) {
            lk_put_frame_hdr(p, LK_FT_PONG, 8);
            memcpy(p + LK_FRAME_HDR, c->pong, 8);
            lk_lc_commit(c, PONG_FRAME_LEN);
            LK_LCOUNT(c->thr, FRAMES_OUT);
            c->pong_pending = 0;
        }
    }
    for (;;) {
        uint8_t *data;
        uint32_t n;
        if (next_wire(c, &data, &n) != 0) {
            kill_conn(c);
            return -1;
        }
        if (n == 0)
            break;
        LK_LCOUNT(c->thr, SYS_WRITE);
        ssize_t r = send(c->fd, data, n, MSG_NOSIGNAL);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;  /* back-pressure: EPOLLOUT says when to go on */
            lk_lc_close(c, "send: %s (%s)", strerror(errno), state_text(c->state));
            return -1;
        }
        LK_LCOUNT_N(c->thr, BYTES_OUT, (uint64_t)r);
        wire_sent(c, (uint32_t)r);
        if ((uint32_t)r < n)
            break;  /* the socket buffer is full: another try would only see EAGAIN */
    }
    lk_lc_update_events(c);
    return 0;
}

/* ---- connect and upgrade -------------------------------------------------- */

int lk_lc_connect(lk_load_conn *c, int epfd, uint64_t token)
{
    lk_load *l = c->load;
    LK_LCOUNT(c->thr, SYS_OTHER);
    c->fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        lk_lc_close(c, "socket: %s", strerror(errno));
        return -1;
    }
    /* packets leave when written, as in Go's DERP client (Go sets TCP_NODELAY) */
    int one = 1;
    LK_LCOUNT(c->thr, SYS_OTHER);
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = LK_LS_CONNECTING;
    LK_LCOUNT(c->thr, SYS_OTHER);
    if (connect(c->fd, (const struct sockaddr *)&l->addr, l->addr_len) != 0 &&
        errno != EINPROGRESS) {
        lk_lc_close(c, "connect to %s: %s", l->where, strerror(errno));
        return -1;
    }
    c->epfd = epfd;
    c->events = EPOLLOUT;
    struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = token};
    LK_LCOUNT(c->thr, SYS_EPOLL_CTL);
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
        lk_lc_close(c, "epoll_ctl: %s", strerror(errno));
        return -1;
    }
    return 0;
}

int lk_lc_adopt(lk_load_conn *c, int epfd, uint64_t token)
{
    c->epfd = epfd;
    c->events = EPOLLIN | (lk_lc_pending(c) ? EPOLLOUT : 0);
    struct epoll_event ev = {.events = c->events, .data.u64 = token};
    LK_LCOUNT(c->thr, SYS_EPOLL_CTL);
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
        lk_lc_close(c, "epoll_ctl: %s", strerror(errno));
        return -1;
    }
    return 0;
}

static int send_upgrade(lk_load_conn *c)
{
    char req[640];
    char ws_head[160] = "";
    if (c->load->cfg.transport == LK_TRANSPORT_WEBSOCKET) {
        uint8_t nonce[16];
        randombytes_buf(nonce, sizeof nonce);
        EVP_EncodeBlock((unsigned char *)c->ws_key, nonce, sizeof nonce);
        randombytes_buf(&c->ws_mask_state, sizeof c->ws_mask_state);
        c->ws_mask_state |= 1;  /* xorshift must not start at 0 */
        snprintf(ws_head, sizeof ws_head,
                 "Sec-WebSocket-Protocol: derp\r\n"
                 "Sec-WebSocket-Version: 13\r\n"
                 "Sec-WebSocket-Key: %s\r\n",
                 c->ws_key);
    }
    int n = snprintf(req, sizeof req,
                     "GET /derp HTTP/1.1\r\n"
                     "Host: %s\r\n"
                     "Upgrade: %s\r\n"
                     "Connection: Upgrade\r\n"
                     "%s"
                     "User-Agent: labkit-load\r\n"
                     "\r\n",
                     c->load->where, ws_head[0] ? "websocket" : "DERP", ws_head);
    uint8_t *p = lk_lc_reserve(c, (uint32_t)n);
    c->head = malloc(LK_LOAD_HEAD_MAX);  /* handshake only: the heap is fine */
    if (n <= 0 || (size_t)n >= sizeof req || !p || !c->head) {
        note(c, "cannot build the upgrade request");
        return -1;
    }
    memcpy(p, req, (size_t)n);
    lk_lc_commit(c, (uint32_t)n);
    c->head_len = 0;
    c->state = LK_LS_HTTP;
    return 0;
}

int lk_lc_writable(lk_load_conn *c)
{
    if (c->state == LK_LS_DEAD)
        return -1;
    if (c->state == LK_LS_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        LK_LCOUNT(c->thr, SYS_OTHER);
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
            err = errno;
        if (err) {
            lk_lc_close(c, "connect to %s: %s", c->load->where, strerror(err));
            return -1;
        }
        if (c->tls) {
            c->state = LK_LS_TLS;
            if (lk_load_tls_handshake(c->tls) < 0) {  /* queues the ClientHello */
                lk_lc_close(c, "%s", lk_load_tls_error(c->tls));
                return -1;
            }
        } else if (send_upgrade(c) != 0) {
            kill_conn(c);
            return -1;
        }
    }
    return lk_lc_flush(c);
}

/* Accumulate the response head; the bytes of `data` it used, or -1. */
static long feed_http(lk_load_conn *c, const uint8_t *data, size_t n)
{
    size_t room = LK_LOAD_HEAD_MAX - c->head_len;
    size_t take = n < room ? n : room;
    memcpy(c->head + c->head_len, data, take);
    c->head_len += (uint32_t)take;
    const char *end = memmem(c->head, c->head_len, "\r\n\r\n", 4);
    if (!end) {
        if (c->head_len == LK_LOAD_HEAD_MAX) {
            note(c, "HTTP response head longer than %u bytes: is %s a DERP relay?",
                 LK_LOAD_HEAD_MAX, c->load->where);
            return -1;
        }
        return (long)take;
    }
    size_t head = (size_t)(end - c->head) + 4;
    if (head < 13 || (memcmp(c->head, "HTTP/1.1 101", 12) != 0 &&
                      memcmp(c->head, "HTTP/1.0 101", 12) != 0) ||
        (c->head[12] != ' ' && c->head[12] != '\r')) {
        const char *eol = memchr(c->head, '\r', head);
        int line = (int)(eol ? eol - c->head : 0);
        note(c, "the relay answered \"%.*s\" instead of 101 Switching Protocols to GET /derp",
             line > 80 ? 80 : line, c->head);
        return -1;
    }
    if (c->ws_key[0] && start_ws(c, head) != 0)
        return -1;
    /* bytes after the blank line are already DERP frames (ServerKey) (docs/protocol.md §2.6),
     * or WebSocket frames carrying them */
    size_t surplus = c->head_len - head;
    free(c->head);
    c->head = NULL;
    c->head_len = 0;
    c->state = LK_LS_SERVER_KEY;
    return (long)(take - surplus);
}

static int ws_data(void *ctx, const uint8_t *p, size_t n)
{
    lk_load_conn *c = ctx;
    size_t used;
    return lk_frame_feed(&c->reader, p, n, &used) != 0;
}

static int ws_control(void *ctx, uint8_t opcode, const uint8_t *p, size_t n)
{
    (void)p, (void)n;
    lk_load_conn *c = ctx;
    if (opcode != LK_WS_OP_CLOSE)
        return 0;  /* neither labkit's relay nor derper pings a client over WebSocket */
    note(c, "the relay sent a WebSocket Close (%s)", state_text(c->state));
    return 1;
}

/* The 101 must be the WebSocket one, with the accept value our key asks for. */
static int start_ws(lk_load_conn *c, size_t head)
{
    char accept[LK_WS_ACCEPT_LEN + 1], want[64];
    if (lk_ws_accept(c->ws_key, strlen(c->ws_key), accept) != 0)
        return note(c, "cannot compute Sec-WebSocket-Accept (OpenSSL)"), -1;
    snprintf(want, sizeof want, "Sec-WebSocket-Accept: %s\r\n", accept);
    if (!memmem(c->head, head, want, strlen(want))) {
        note(c, "the relay's 101 lacks \"%.40s\": it does not speak DERP over WebSocket",
             want);
        return -1;
    }
    lk_ws_reader_init(&c->ws_rd, 0, LK_WS_MESSAGE_MAX, ws_data, ws_control, c);
    c->ws = 1;
    return 0;
}

/* Plaintext from the relay: the HTTP head, then frames (raw, or in WebSocket). */
static int feed(lk_load_conn *c, const uint8_t *data, size_t n)
{
    while (n > 0) {
        if (c->state == LK_LS_HTTP) {
            long used = feed_http(c, data, n);
            if (used < 0)
                return -1;
            data += used;
            n -= (size_t)used;
            continue;
        }
        if (c->ws) {
            uint8_t none[1];  /* server frames are not masked: the reader needs no scratch */
            int rc = lk_ws_feed(&c->ws_rd, data, n, none, sizeof none);
            if (rc < 0)
                note(c, "the relay broke a WebSocket rule (%d)", c->ws_rd.violation);
            return rc != 0 ? -1 : 0;
        }
        size_t used;
        if (lk_frame_feed(&c->reader, data, n, &used) != 0)
            return -1;  /* a callback noted why */
        data += used;
        n -= used;
    }
    return 0;
}

/* kTLS, client side: the relay's record-boundary rule (session.c) mirrored.
 * The handshake reads with MSG_PEEK and only the records OpenSSL took are
 * removed, so whatever the relay sent after its Finished stays in the socket
 * for the kernel.  Our own Finished must leave before TLS_TX is set (after
 * it, send() encrypts), so it is sent here, synchronously: a few dozen bytes
 * into an empty socket buffer. */
static int ktls_handshake(lk_load_conn *c, const uint8_t *data, size_t n)
{
    lk_load_tls_input(c->tls, data, n);
    int hs = lk_load_tls_handshake(c->tls);
    size_t used = n - lk_load_tls_unread(c->tls);
    int calls = lk_ktls_consume(c->fd, used, c->thr->plain, LK_LOAD_PLAIN);
    LK_LCOUNT_N(c->thr, SYS_READ, calls >= 0 ? (uint64_t)calls : 1);
    LK_LCOUNT_N(c->thr, BYTES_IN, used);
    if (calls < 0) {
        note(c, "recv (taking the handshake records): %s", strerror(errno));
        return -1;
    }
    if (hs < 0) {
        note(c, "%s", lk_load_tls_error(c->tls));
        return -1;
    }
    if (hs == 0)
        return 0;  /* its records go out with the flush after this read */
    lk_bytes *o = lk_load_tls_out(c->tls);
    while (o->off < o->len) {
        LK_LCOUNT(c->thr, SYS_WRITE);
        ssize_t r = send(c->fd, o->data + o->off, o->len - o->off, MSG_NOSIGNAL);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            note(c, "cannot send the TLS Finished before switching to kTLS: %s",
                 r < 0 ? strerror(errno) : "nothing sent");
            return -1;
        }
        LK_LCOUNT_N(c->thr, BYTES_OUT, (uint64_t)r);
        o->off += (uint32_t)r;
    }
    char why[400];
    lk_ktls_secrets s;
    int rc = lk_load_tls_ktls_secrets(c->tls, &s, why, sizeof why);
    if (rc == 0) {
        LK_LCOUNT_N(c->thr, SYS_OTHER, 3);  /* TCP_ULP, TLS_TX, TLS_RX */
        rc = lk_ktls_install(c->fd, s.client, s.server, s.len, why, sizeof why);
        OPENSSL_cleanse(&s, sizeof s);
    }
    if (rc != 0) {
        note(c, "kTLS: %s", why);  /* never a silent fall-back to userspace TLS */
        return -1;
    }
    lk_load_tls_free(c->tls);  /* from here the socket carries plaintext */
    c->tls = NULL;
    c->ktls_peek = 0;
    c->ktls = 1;
    return send_upgrade(c);
}

static int feed_tls(lk_load_conn *c, const uint8_t *data, size_t n)
{
    if (c->ktls_peek)
        return ktls_handshake(c, data, n);
    lk_load_tls_input(c->tls, data, n);
    if (c->state == LK_LS_TLS) {
        int hs = lk_load_tls_handshake(c->tls);
        if (hs < 0) {
            note(c, "%s", lk_load_tls_error(c->tls));
            return -1;
        }
        if (hs == 0)
            return 0;  /* its records go out with the flush after this read */
        if (send_upgrade(c) != 0)
            return -1;
    }
    for (;;) {
        int k = lk_load_tls_read(c->tls, c->thr->plain, LK_LOAD_PLAIN);
        if (k < 0) {
            note(c, "TLS record error or close_notify from the relay (%s)", state_text(c->state));
            return -1;
        }
        if (k == 0)
            return 0;
        if (feed(c, c->thr->plain, (size_t)k) != 0)
            return -1;
    }
}

int lk_lc_readable(lk_load_conn *c, size_t limit)
{
    lk_load_thread *t = c->thr;
    if (c->state == LK_LS_DEAD)
        return -1;
    if (c->state == LK_LS_CONNECTING)
        return lk_lc_writable(c);  /* EPOLLERR before EPOLLOUT: SO_ERROR says why */
    if (limit > LK_LOAD_RBUF)
        limit = LK_LOAD_RBUF;
    LK_LCOUNT(t, SYS_READ);
    uint8_t record_type = LK_TLS_APPLICATION_DATA;
    ssize_t r = c->ktls ? lk_ktls_recv(c->fd, t->rbuf, limit, 0, &record_type)
                        : recv(c->fd, t->rbuf, limit, c->ktls_peek ? MSG_PEEK : 0);
    if (r == 0) {
        lk_lc_close(c, "the relay closed the connection (%s)", state_text(c->state));
        return -1;
    }
    if (r < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return 0;
        lk_lc_close(c, "recv: %s (%s)", strerror(errno), state_text(c->state));
        return -1;
    }
    /* one clock read per recv: every packet in it arrived by now */
    t->now = lk_now_ns();
    if (!c->ktls_peek)  /* peeked bytes count when ktls_handshake() takes them */
        LK_LCOUNT_N(t, BYTES_IN, (uint64_t)r);
    if (record_type != LK_TLS_APPLICATION_DATA) {
        char why[160];
        if (lk_ktls_other_record(record_type, t->rbuf, (size_t)r, why, sizeof why) == 0)
            return 0;  /* a session ticket (Go's and OpenSSL's servers send them) */
        lk_lc_close(c, "kTLS: %s (%s)", why, state_text(c->state));
        return -1;
    }
    int rc = c->tls ? feed_tls(c, t->rbuf, (size_t)r) : feed(c, t->rbuf, (size_t)r);
    if (rc != 0) {
        kill_conn(c);
        return -1;
    }
    /* handshake frames, echoes and Pongs made by this input leave in one send */
    if (lk_lc_pending(c) || c->pong_pending)
        return lk_lc_flush(c);
    return 0;
}

/* ---- DERP frames ----------------------------------------------------------- */

static int send_client_info(lk_load_conn *c)
{
    uint32_t json_len = sizeof client_info_json - 1;
    uint32_t plen = LK_KEY_LEN + crypto_box_NONCEBYTES + crypto_box_MACBYTES + json_len;
    uint8_t *p = lk_lc_reserve(c, LK_FRAME_HDR + plen);
    if (!p) {
        note(c, "no room for ClientInfo");
        return -1;
    }
    lk_put_frame_hdr(p, LK_FT_CLIENT_INFO, plen);
    memcpy(p + LK_FRAME_HDR, c->pk, LK_KEY_LEN);
    uint8_t *nonce = p + LK_FRAME_HDR + LK_KEY_LEN;
    randombytes_buf(nonce, crypto_box_NONCEBYTES);
    /* nonce || tag || ciphertext: crypto_box_easy writes tag || ciphertext (docs/protocol.md §4.3) */
    if (crypto_box_easy(nonce + crypto_box_NONCEBYTES, (const uint8_t *)client_info_json,
                        json_len, nonce, c->relay_pk, c->sk) != 0) {
        note(c, "cannot seal ClientInfo to the relay's key (a low-order key?)");
        return -1;
    }
    lk_lc_commit(c, LK_FRAME_HDR + plen);
    LK_LCOUNT(c->thr, FRAMES_OUT);
    return 0;
}

static int server_info(lk_load_conn *c, const uint8_t *payload, uint32_t len)
{
    uint8_t plain[LK_LOAD_CTRL_MAX];
    size_t boxed = len - crypto_box_NONCEBYTES;
    if (crypto_box_open_easy(plain, payload + crypto_box_NONCEBYTES, boxed, payload, c->relay_pk,
                             c->sk) != 0) {
        note(c, "ServerInfo does not open with the relay's key and ours: not a DERP relay, "
                "or not the one that sent ServerKey");
        return -1;
    }
    c->state = LK_LS_STEADY;
    LK_LCOUNT(c->thr, CONNS_HANDSHAKED);
    return 0;
}

static enum lk_body_action frame_begin(void *ctx, uint8_t type, uint32_t len, uint8_t **dst)
{
    lk_load_conn *c = ctx;
    *dst = c->body;
    switch (c->state) {
    case LK_LS_SERVER_KEY:
        if (type != LK_FT_SERVER_KEY) {
            note(c, "expected ServerKey (0x01) as the first frame, got type 0x%02x", type);
            return LK_BODY_CLOSE;
        }
        if (len < 8 + LK_KEY_LEN || len > 1024) {
            note(c, "ServerKey of %u bytes (a relay sends 40..1024)", len);
            return LK_BODY_CLOSE;
        }
        return LK_BODY_BUFFER;
    case LK_LS_SERVER_INFO:
        if (type != LK_FT_SERVER_INFO) {
            note(c, "expected ServerInfo (0x03) after ClientInfo, got type 0x%02x", type);
            return LK_BODY_CLOSE;
        }
        if (len < crypto_box_NONCEBYTES + crypto_box_MACBYTES ||
            len > crypto_box_NONCEBYTES + crypto_box_MACBYTES + LK_LOAD_CTRL_MAX) {
            note(c, "ServerInfo of %u bytes is not a sealed box this client accepts", len);
            return LK_BODY_CLOSE;
        }
        return LK_BODY_BUFFER;
    case LK_LS_STEADY:
        if (type == LK_FT_RECV_PACKET)
            /* ours carry at least a source key, sequence and stamp */
            return len >= LK_KEY_LEN + LK_LOAD_PAYLOAD_MIN && len <= c->body_cap ? LK_BODY_BUFFER
                                                                                : LK_BODY_SKIP;
        if (type == LK_FT_PING)
            return len >= LK_PING_MIN && len <= LK_PING_MAX ? LK_BODY_BUFFER : LK_BODY_SKIP;
        return LK_BODY_SKIP;  /* KeepAlive, PeerGone, Health, ...: nothing to do */
    default:
        note(c, "frame while %s", state_text(c->state));
        return LK_BODY_CLOSE;
    }
}

static int frame_end(void *ctx, uint8_t type, uint32_t len, uint8_t *payload)
{
    lk_load_conn *c = ctx;
    LK_LCOUNT(c->thr, FRAMES_IN);
    switch (c->state) {
    case LK_LS_SERVER_KEY:
        if (memcmp(payload, lk_server_key_magic, sizeof lk_server_key_magic) != 0) {
            note(c, "ServerKey without the DERP magic: is %s a DERP relay?", c->load->where);
            return 1;
        }
        memcpy(c->relay_pk, payload + 8, LK_KEY_LEN);
        if (send_client_info(c) != 0)
            return 1;
        c->state = LK_LS_SERVER_INFO;
        return 0;
    case LK_LS_SERVER_INFO:
        return server_info(c, payload, len) != 0;
    default:
        break;
    }
    if (!payload) {
        if (type == LK_FT_KEEP_ALIVE)
            LK_LCOUNT(c->thr, KEEPALIVES);
        else
            LK_LCOUNT(c->thr, UNKNOWN_FRAMES);  /* includes RecvPackets too short to be ours */
        return 0;
    }
    if (type == LK_FT_RECV_PACKET) {
        lk_load_on_packet(c, payload, len);
    } else if (type == LK_FT_PING) {
        LK_LCOUNT(c->thr, PINGS);
        if (!c->pong_pending) {  /* one Pong outstanding, as the relay does (docs/protocol.md §5.4) */
            memcpy(c->pong, payload, 8);
            c->pong_pending = 1;
        }
    }
    return 0;
}

/*
 * fuzz_session.c — libFuzzer harness for the relay core: the frame parser and
 * the connection state machine (session.c), output (output.c), routing,
 * duplicate keys, PeerGone, watchers and ClosePeer (routing.c), connection
 * lifecycle (conns.c), the cross-worker rings (shard.c), the message dispatcher
 * and the timers (worker.c), fed arbitrary byte streams split at arbitrary points.
 *
 *   make build/fuzz/fuzz_session
 *   build/fuzz/fuzz_session -max_total_time=60 build/fuzz/corpus/session \
 *       native/fuzz/corpus/session
 *
 * No sockets and no threads.  A fake lk_io_ops backend stands in for epoll
 * and io_uring: it records every byte the core sends per connection, models a
 * socket that takes only `budget` bytes at a time (readiness model, like
 * io_epoll.c) or sends that stay in flight until the input completes them
 * (completion model, like io_uring.c, including deferred release of a closed
 * connection that the "kernel" still references).  Workers are real lk_worker
 * structs driven from this one thread: a "pass" drains a worker's rings and
 * flushes, as one loop iteration of lk_worker_main would.  worker.c is
 * #included for its static timer pass, drain and flush.
 *
 * Input layout:
 *   byte 0   bits 0-1 workers-1 (1..3; 3 = 3), bit 2 completion model,
 *            bit 3 coalesce (gather many frames per send), bits 4-6 conns-1
 *   then one byte per connection:
 *            bits 0-2 key index (0-3 real Curve25519 keys, 4 the relay's own
 *            key, 5 a key nobody uses), bits 3-4 kind (0,1 adopted regular,
 *            2 adopted mesh, 3 fresh: accepted on the acceptor, HTTP and
 *            ClientInfo parsed for real), bits 5-6 fresh variant (0 plain
 *            ClientInfo, 1 correct mesh key, 2 mesh key wrong in the last hex
 *            digit, 3 no prefix: the input writes the HTTP request itself),
 *            bit 7 fast start (fresh) / prober (adopted)
 *   then operations, each an opcode byte (low nibble: what; high nibble:
 *   which connection or worker) and its arguments; see run_op().  Bytes a
 *   client "writes" queue per connection and reach the relay only through
 *   DELIVER, in whatever pieces the input chooses.
 *
 * FUZZ_SESSION_TRACE=1 prints every frame the relay sends, per connection (to read
 * a crash input).
 *
 * Invariants checked (abort() on violation, so libFuzzer reports it):
 *   - every connection's output is well-formed: [HTTP head] then whole DERP
 *     frames of relay->client types with their exact sizes, ServerKey then
 *     ServerInfo first, never interleaved;
 *   - PeerPresent goes only to mesh connections (peer lists never reach
 *     regular clients);
 *   - a connection the core closed never gets another byte, and the io
 *     backend is never asked to flush a closed connection;
 *   - bytes handed to an in-flight send stay unchanged until it completes
 *     (the kernel may read them any time until then);
 *   - the queue-depth gauge equals the packets queued, after every step;
 *   - after every input, once all connections closed and the rings drained:
 *     every packet buffer is back in its pool, every connection slot and
 *     peer-table entry is free, gauges are zero, no watcher or dirty entry
 *     remains.
 */
#include "relay/worker.c" /* NOLINT: the unity include gives access to run_timers(),
                             * drain() and flush_dirty() */

#include <sodium.h>
#include <stdio.h>

#include "proto/handshake.h"

/* The harness's own loops are not what coverage should steer by, and tracing their
 * comparisons cost most of the run time: only the relay's code is instrumented. */
#define HARNESS __attribute__((no_sanitize("coverage")))

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "fuzz_session: invariant failed at line %d: %s\n", __LINE__, \
                    #cond);                                                              \
            abort();                                                                     \
        }                                                                                \
    } while (0)

#define MAX_RECS 8
#define N_KEYS 6
#define N_REAL_KEYS 4
#define FD_BASE (1 << 22) /* never an open descriptor: the core's stray close() is EBADF */
#define MAX_WORKERS_FUZZ 3
#define UNLIMITED UINT32_MAX

/* ---- deterministic randomness (keys, nonces, hash keys, keepalive jitter) ---- */

static uint64_t rng_state;

HARNESS static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

HARNESS static const char *det_name(void) { return "fuzz-deterministic"; }
HARNESS static uint32_t det_random(void) { return (uint32_t)rng_next(); }
HARNESS static void det_buf(void *const buf, const size_t size)
{
    uint8_t *p = buf;
    for (size_t i = 0; i < size; i++)
        p[i] = (uint8_t)rng_next();
}
static randombytes_implementation det_impl = {
    .implementation_name = det_name, .random = det_random, .buf = det_buf};

/* ---- fixed identities ---------------------------------------------------------- */

static uint8_t relay_sk[32], relay_pk[32], mesh_key[32];
static uint8_t client_sk[N_REAL_KEYS][32], keys[N_KEYS][32];

/* Fresh-connection prefixes: request head + ClientInfo, per key x variant x fast start. */
static uint8_t *prefix[N_REAL_KEYS][3][2];
static size_t prefix_len[N_REAL_KEYS][3][2];

HARNESS static void hex(char *out, const uint8_t *b, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
    out[2 * n] = 0;
}

HARNESS static void make_prefix(int k, int variant, int fast)
{
    char json[256], mk[65];
    hex(mk, mesh_key, 32);
    if (variant == 2)
        mk[63] = mk[63] == '0' ? '1' : '0';
    if (variant == 0)
        snprintf(json, sizeof json, "{\"version\":2,\"CanAckPings\":true}");
    else
        snprintf(json, sizeof json, "{\"meshKey\":\"%s\",\"version\":2}", mk);
    size_t jl = strlen(json);
    uint32_t payload = 32 + 24 + 16 + (uint32_t)jl;
    const char *head = fast ? "GET /derp HTTP/1.1\r\nHost: fuzz\r\nUpgrade: DERP\r\n"
                              "Connection: Upgrade\r\nDerp-Fast-Start: 1\r\n\r\n"
                            : "GET /derp HTTP/1.1\r\nHost: fuzz\r\nUpgrade: DERP\r\n"
                              "Connection: Upgrade\r\n\r\n";
    size_t hl = strlen(head);
    size_t n = hl + LK_FRAME_HDR + payload;
    uint8_t *p = malloc(n);
    CHECK(p);
    memcpy(p, head, hl);
    uint8_t *f = p + hl;
    lk_put_frame_hdr(f, LK_FT_CLIENT_INFO, payload);
    memcpy(f + 5, keys[k], 32);
    uint8_t *nonce = f + 5 + 32;
    for (int i = 0; i < 24; i++)
        nonce[i] = (uint8_t)(i + 16 * k + variant);
    CHECK(crypto_box_easy(nonce + 24, (const uint8_t *)json, jl, nonce, relay_pk,
                          client_sk[k]) == 0);
    prefix[k][variant][fast] = p;
    prefix_len[k][variant][fast] = n;
}

/* ---- per-connection records: what the "client" side knows ---------------------- */

typedef struct outchk {
    int started;
    int http;           /* inside the HTTP response head */
    int skip_rest;      /* a non-101 response: its body follows, then close */
    uint8_t headbuf[4096];
    size_t head_len;
    uint8_t hdr[LK_FRAME_HDR];
    int hdr_have;
    int in_body;
    uint8_t type;
    uint32_t len, have;
    uint32_t frames;
} outchk;

typedef struct rec {
    int used;
    int fresh;
    int mesh;           /* the relay should treat it as a mesh peer */
    int closed;         /* the core closed it (close_conn) */
    int transit;        /* detached by the acceptor, not adopted yet */
    int recv_armed;     /* completion model: a recv holds a reference */
    uint32_t worker;
    uint64_t token;
    uint8_t *pending;   /* written by the client, not yet delivered */
    size_t pend_len, pend_cap;
    uint32_t budget;    /* readiness model: bytes the socket takes now */
    /* completion model: the send in flight */
    int inflight;
    int inflight_n;
    size_t inflight_total;
    uint8_t *snapshot;
    outchk chk;
} rec;

static rec recs[MAX_RECS];
static int n_recs;
static int completion, coalesce;
static lk_relay *relays[MAX_WORKERS_FUZZ + 1];
static lk_relay *R;
static uint64_t clock_ns = 1000000000ull;

HARNESS static rec *rec_of(const lk_conn *c)
{
    int i = c->fd - FD_BASE;
    CHECK(i >= 0 && i < n_recs && recs[i].used);
    return &recs[i];
}

HARNESS static int is_data_worker(const lk_worker *w) { return !w->acceptor; }
HARNESS static int completion_for(const lk_worker *w) { return completion && is_data_worker(w); }

/* ---- output checker --------------------------------------------------------------- */

HARNESS static void check_frame_header(rec *r, outchk *k)
{
    uint8_t t = k->type;
    uint32_t n = k->len;
    if (getenv("FUZZ_SESSION_TRACE"))
        fprintf(stderr, "conn %d: frame %u type 0x%02x len %u\n", (int)(r - recs), k->frames, t, n);
    if (r->fresh && k->frames == 0) {
        CHECK(t == LK_FT_SERVER_KEY && n == 40);
        return;
    }
    if (k->frames == (r->fresh ? 1u : 0u)) {
        CHECK(t == LK_FT_SERVER_INFO && n == LK_SERVER_INFO_FRAME_LEN - LK_FRAME_HDR);
        return;
    }
    switch (t) {
    case LK_FT_RECV_PACKET:
        CHECK(n >= LK_KEY_LEN && n <= LK_KEY_LEN + LK_MAX_PACKET);
        break;
    case LK_FT_KEEP_ALIVE:
        CHECK(n == 0);
        break;
    case LK_FT_PEER_GONE:
        CHECK(n == LK_KEY_LEN + 1);
        break;
    case LK_FT_PEER_PRESENT:
        CHECK(n == 51);
        CHECK(r->mesh); /* peer lists never reach a regular client */
        break;
    case LK_FT_PONG:
        CHECK(n == 8);
        break;
    default:
        CHECK(!"relay sent a frame type it never should");
    }
}

HARNESS static void check_output(rec *r, const uint8_t *p, size_t n)
{
    outchk *k = &r->chk;
    CHECK(!r->closed);
    for (size_t i = 0; i < n; i++) {
        uint8_t b = p[i];
        if (k->skip_rest)
            return;
        if (!k->started) {
            k->started = 1;
            k->http = r->fresh && b == 'H';
            CHECK(r->fresh || b == LK_FT_SERVER_INFO);
        }
        if (k->http) {
            CHECK(k->head_len < sizeof k->headbuf);
            k->headbuf[k->head_len++] = b;
            if (k->head_len >= 4 && memcmp(k->headbuf + k->head_len - 4, "\r\n\r\n", 4) == 0) {
                CHECK(k->head_len > 12 && memcmp(k->headbuf, "HTTP/1.1 ", 9) == 0);
                k->http = 0;
                if (memcmp(k->headbuf + 9, "101", 3) != 0)
                    k->skip_rest = 1;
            }
            continue;
        }
        if (!k->in_body) {
            k->hdr[k->hdr_have++] = b;
            if (k->hdr_have < LK_FRAME_HDR)
                continue;
            k->hdr_have = 0;
            k->type = k->hdr[0];
            k->len = lk_get_be32(k->hdr + 1);
            k->have = 0;
            check_frame_header(r, k);
            k->frames++;
            k->in_body = k->len > 0;
            continue;
        }
        size_t skip = k->len - k->have; /* the body: only its length matters */
        if (skip > n - i)
            skip = n - i;
        k->have += (uint32_t)skip;
        i += skip - 1;
        if (k->have == k->len)
            k->in_body = 0;
    }
}

/* ---- the fake backend -------------------------------------------------------------- */

HARNESS static int fk_init(lk_worker *w)
{
    w->io_state = NULL;
    return LK_OK;
}

HARNESS static void fk_destroy(lk_worker *w) { (void)w; }

HARNESS static int fk_add_conn(lk_worker *w, lk_conn *c)
{
    rec *r = rec_of(c);
    CHECK(!r->closed);
    r->worker = w->index;
    r->token = lk_conn_token(c);
    r->transit = 0;
    if (completion_for(w)) {
        c->io_refs++; /* the recv that is always armed */
        r->recv_armed = 1;
    }
    return 0;
}

HARNESS static void record_iov(rec *r, const struct iovec *iov, int n, size_t limit)
{
    for (int i = 0; i < n && limit; i++) {
        size_t take = iov[i].iov_len < limit ? iov[i].iov_len : limit;
        check_output(r, iov[i].iov_base, take);
        limit -= take;
    }
}

/* io_epoll.c's ep_send with a socket that takes r->budget bytes. */
HARNESS static void fk_send_ready(lk_worker *w, lk_conn *c)
{
    rec *r = rec_of(c);
    struct iovec iov[LK_TX_MAX + 1];
    for (;;) {
        int n = lk_core_gather(w, c, iov, coalesce ? LK_TX_MAX + 1 : 1);
        if (n == 0)
            break;
        CHECK(n > 0 && n <= LK_TX_MAX + 1);
        size_t total = 0;
        for (int i = 0; i < n; i++) {
            CHECK(iov[i].iov_len > 0);
            total += iov[i].iov_len;
        }
        size_t k = total < r->budget ? total : r->budget;
        if (k == 0) {
            c->send_busy = 1; /* EAGAIN: wait for EPOLLOUT */
            return;
        }
        record_iov(r, iov, n, k);
        if (r->budget != UNLIMITED)
            r->budget -= (uint32_t)k;
        lk_core_sent(w, c, k);
        if (!lk_conn_alive(c))
            return;
        if (k < total) {
            c->send_busy = 1;
            return;
        }
    }
    c->send_busy = 0;
}

/* io_uring.c's ur_flush: one send in flight, its bytes snapshotted. */
HARNESS static void fk_send_start(lk_worker *w, lk_conn *c)
{
    rec *r = rec_of(c);
    if (c->send_busy || !lk_conn_alive(c))
        return;
    int n = lk_core_gather(w, c, c->iov, coalesce ? LK_TX_MAX + 1 : 1);
    if (n == 0)
        return;
    CHECK(n > 0 && n <= LK_TX_MAX + 1);
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += c->iov[i].iov_len;
    CHECK(total > 0);
    r->snapshot = malloc(total);
    CHECK(r->snapshot);
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        memcpy(r->snapshot + off, c->iov[i].iov_base, c->iov[i].iov_len);
        off += c->iov[i].iov_len;
    }
    r->inflight = 1;
    r->inflight_n = n;
    r->inflight_total = total;
    c->send_busy = 1;
    c->io_refs++;
}

HARNESS static void fk_flush(lk_worker *w, lk_conn *c)
{
    rec *r = rec_of(c);
    CHECK(lk_conn_alive(c)); /* a closed connection is never flushed */
    CHECK(!r->closed);
    if (completion_for(w)) {
        fk_send_start(w, c);
    } else if (!c->send_busy) {
        fk_send_ready(w, c);
    }
}

HARNESS static void fk_detach(lk_worker *w, lk_conn *c)
{
    rec *r = rec_of(c);
    CHECK(w->acceptor && !r->closed);
    r->transit = 1;
}

HARNESS static void finish_close(lk_worker *w, lk_conn *c)
{
    c->fd = -1;
    lk_core_release(w, c);
}

HARNESS static void fk_close_conn(lk_worker *w, lk_conn *c)
{
    rec *r = rec_of(c);
    CHECK(!r->closed);
    r->closed = 1;
    if (!completion_for(w) || c->io_refs == 0) {
        finish_close(w, c);
        return;
    }
    /* shutdown(): the kernel completes what it holds later; the last completion releases */
}

HARNESS static int fk_wait(lk_worker *w, int timeout_ms)
{
    (void)w;
    (void)timeout_ms;
    return 0;
}

HARNESS static void fk_wake(lk_worker *w) { (void)w; }

HARNESS static void fk_discard_fd(lk_worker *w, int fd)
{
    (void)w;
    (void)fd; /* no real descriptor behind it */
}

static const lk_io_ops fake_io = {
    .name = "fuzz",
    .init = fk_init,
    .destroy = fk_destroy,
    .add_conn = fk_add_conn,
    .flush = fk_flush,
    .detach = fk_detach,
    .close_conn = fk_close_conn,
    .wait = fk_wait,
    .wake = fk_wake,
    .discard_fd = fk_discard_fd,
};

/* ---- the relay ----------------------------------------------------------------------- */

HARNESS static lk_relay *make_relay(uint32_t n_workers)
{
    lk_relay *r = calloc(1, sizeof *r);
    CHECK(r);
    lk_relay_config *cfg = &r->cfg;
    cfg->listen_fd = -1;
    cfg->ready_fd = -1;
    cfg->workers = (int)n_workers;
    memcpy(cfg->private_key, relay_sk, 32);
    cfg->has_mesh_key = 1;
    memcpy(cfg->mesh_key, mesh_key, 32);
    cfg->handshake_timeout_ms = 10000;
    cfg->write_timeout_ms = 2000;
    cfg->keepalive_ms = 60000;
    cfg->queue_depth = 4;  /* small: head drops and make_room happen */
    cfg->max_conns = 12;
    cfg->pool_packets = 64; /* small: the pool can run dry */
    memcpy(r->public_key, relay_pk, 32);
    r->io = &fake_io;
    r->n_workers = n_workers;
    r->n_threads = n_workers + 1;
    r->stop_fd = -1;
    CHECK(lk_shm_create(&r->shm, NULL, r->n_threads, LK_ROLE_RELAY) == LK_OK);
    CHECK(lk_shard_init(r) == LK_OK);
    r->workers = calloc(r->n_threads, sizeof *r->workers);
    CHECK(r->workers);
    for (uint32_t i = 0; i < n_workers; i++) {
        CHECK(lk_worker_init(&r->workers[i], r, i) == LK_OK);
        CHECK(r->workers[i].io->init(&r->workers[i]) == LK_OK); /* its thread would */
    }
    /* the acceptor: initialised as a data worker so it gets the fake backend too,
     * then made the acceptor it is in the relay (readiness model, like epoll) */
    r->n_workers = n_workers + 1;
    CHECK(lk_worker_init(&r->workers[n_workers], r, n_workers) == LK_OK);
    CHECK(r->workers[n_workers].io->init(&r->workers[n_workers]) == LK_OK);
    r->n_workers = n_workers;
    r->workers[n_workers].acceptor = 1;
    return r;
}

HARNESS static void set_now(void)
{
    for (uint32_t i = 0; i < R->n_threads; i++)
        R->workers[i].now = clock_ns;
}

HARNESS static void end_of_pass(void)
{
    for (uint32_t i = 0; i < R->n_threads; i++)
        flush_dirty(&R->workers[i]);
    for (uint32_t i = 0; i < R->n_threads; i++)
        lk_shard_flush(&R->workers[i]);
}

/* Completion model: what the kernel still holds for closed connections completes. */
HARNESS static void reap_closed(lk_worker *w)
{
    if (!completion_for(w))
        return;
    for (int i = 0; i < n_recs; i++) {
        rec *r = &recs[i];
        if (!r->closed || r->worker != w->index)
            continue;
        lk_conn *c = lk_conn_from_token(w, r->token);
        if (!c)
            continue;
        CHECK(c->state == LK_CS_CLOSING);
        if (r->inflight) {
            CHECK(c->send_busy);
            free(r->snapshot);
            r->snapshot = NULL;
            r->inflight = 0;
            c->send_busy = 0;
            if (--c->io_refs == 0)
                finish_close(w, c);
        }
        if (r->recv_armed && c->state == LK_CS_CLOSING) {
            r->recv_armed = 0;
            if (--c->io_refs == 0)
                finish_close(w, c);
        }
    }
}

HARNESS static void pass(lk_worker *w)
{
    drain(w);
    reap_closed(w);
    flush_dirty(w);
    lk_shard_flush(w);
}

HARNESS static int rings_empty(void)
{
    for (uint32_t f = 0; f < R->n_threads; f++)
        for (uint32_t t = 0; t < R->n_threads; t++) {
            if (f == t)
                continue;
            if (!lk_spsc_empty(&R->rings[f * R->n_threads + t]) || R->workers[f].overflow[t].len)
                return 0;
        }
    return 1;
}

/* ---- invariants -------------------------------------------------------------------- */

HARNESS static void check_gauges(void)
{
    for (uint32_t i = 0; i < R->n_threads; i++) {
        lk_worker *w = &R->workers[i];
        uint64_t queued = 0, live = 0;
        for (uint32_t s = 0; s < w->max_conns; s++) {
            lk_conn *c = &w->conns[s];
            CHECK(c->q_disco.count <= c->q_disco.cap && c->q_other.count <= c->q_other.cap);
            CHECK(c->tx_count <= LK_TX_MAX);
            queued += c->q_disco.count + c->q_other.count;
            if (c->state != LK_CS_FREE && c->state != LK_CS_CLOSING)
                live++;
            if (c->state == LK_CS_STEADY)
                CHECK(c->peer && c->peer->n_conns > 0 && c->peer->active &&
                      lk_conn_alive(c->peer->active));
        }
        CHECK(w->stats.c[LK_C_QUEUE_DEPTH] == queued);
        CHECK(w->stats.c[LK_C_CONNS_CURRENT] == live);
        for (lk_conn *wt = w->watchers; wt; wt = wt->watch_next)
            CHECK(wt->state == LK_CS_STEADY && wt->mesh);
    }
}

HARNESS static void check_quiescent(void)
{
    CHECK(rings_empty());
    for (uint32_t i = 0; i < R->n_threads; i++) {
        lk_worker *w = &R->workers[i];
        CHECK(lk_pool_free_count(&w->pool) == w->pool.small.count + w->pool.large.count);
        CHECK(w->n_free == w->max_conns);
        CHECK(w->all == NULL && w->watchers == NULL && w->dirty == NULL);
        CHECK(w->peers.n_free == w->peers.n_entries);
        for (uint32_t b = 0; b <= w->peers.mask; b++)
            CHECK(w->peers.buckets[b] == NULL);
        CHECK(w->stats.c[LK_C_CONNS_CURRENT] == 0);
        CHECK(w->stats.c[LK_C_QUEUE_DEPTH] == 0);
        for (uint32_t b = 0; b < LK_XBUCKETS; b++)
            CHECK(w->route.xinflight[b] == 0); /* every cross-worker packet came home */
        for (uint32_t s = 0; s < w->max_conns; s++) {
            lk_conn *c = &w->conns[s];
            CHECK(c->state == LK_CS_FREE && !c->dirty && c->io_refs == 0);
            CHECK(c->q_disco.count == 0 && c->q_other.count == 0 && c->tx_count == 0);
        }
    }
}

/* ---- client actions -------------------------------------------------------------------- */

HARNESS static void append(rec *r, const void *data, size_t n)
{
    if (n == 0)
        return;
    if (r->pend_len + n > r->pend_cap) {
        size_t cap = r->pend_cap ? r->pend_cap : 256;
        while (cap < r->pend_len + n)
            cap *= 2;
        r->pending = realloc(r->pending, cap);
        CHECK(r->pending);
        r->pend_cap = cap;
    }
    memcpy(r->pending + r->pend_len, data, n);
    r->pend_len += n;
}

HARNESS static void append_frame(rec *r, uint8_t type, const uint8_t *payload, uint32_t len)
{
    uint8_t h[LK_FRAME_HDR];
    lk_put_frame_hdr(h, type, len);
    append(r, h, sizeof h);
    if (len)
        append(r, payload, len);
}

HARNESS static lk_conn *live_conn(rec *r)
{
    if (r->closed || r->transit)
        return NULL;
    lk_conn *c = lk_conn_from_token(&R->workers[r->worker], r->token);
    return c && lk_conn_alive(c) ? c : NULL;
}

HARNESS static void deliver(rec *r, size_t n)
{
    lk_conn *c = live_conn(r);
    if (!c || r->pend_len == 0)
        return;
    if (n == 0 || n > r->pend_len)
        n = r->pend_len;
    /* an exactly sized copy: ASan sees any read past what "arrived", and the core
     * must copy what it keeps (the buffer is gone afterwards) */
    uint8_t *buf = malloc(n);
    CHECK(buf);
    memcpy(buf, r->pending, n);
    memmove(r->pending, r->pending + n, r->pend_len - n);
    r->pend_len -= n;
    lk_worker *w = &R->workers[r->worker];
    lk_core_received(w, c, buf, n);
    free(buf);
}

HARNESS static void client_eof(rec *r)
{
    lk_conn *c = live_conn(r);
    if (!c)
        return;
    lk_worker *w = &R->workers[r->worker];
    if (completion_for(w)) {
        /* on_recv with res 0: the recv's reference goes, then the close */
        CHECK(r->recv_armed && c->io_refs > 0);
        r->recv_armed = 0;
        c->io_refs--;
        lk_core_io_error(w, c, 0);
        if (c->state == LK_CS_CLOSING && c->io_refs == 0)
            finish_close(w, c);
    } else {
        lk_core_io_error(w, c, 0);
    }
}

/* The socket can take `budget` more bytes (readiness), or the send in flight
 * completes with up to `budget` bytes sent (completion; error when fail). */
HARNESS static void writable(rec *r, uint32_t budget, int fail)
{
    if (r->closed || r->transit)
        return;
    lk_worker *w = &R->workers[r->worker];
    lk_conn *c = lk_conn_from_token(w, r->token);
    if (!c || !lk_conn_alive(c))
        return;
    if (!completion_for(w)) {
        r->budget = budget;
        if (fail) {
            lk_core_io_error(w, c, 32 /* EPIPE */);
            return;
        }
        if (c->send_busy) {
            c->send_busy = 0;
            fk_send_ready(w, c);
        }
        return;
    }
    if (!r->inflight)
        return;
    /* the bytes must be what was gathered, still readable (no realloc/free under it) */
    size_t off = 0;
    for (int i = 0; i < r->inflight_n; i++) {
        CHECK(memcmp(c->iov[i].iov_base, r->snapshot + off, c->iov[i].iov_len) == 0);
        off += c->iov[i].iov_len;
    }
    CHECK(off == r->inflight_total);
    size_t k = r->inflight_total < budget ? r->inflight_total : budget;
    uint8_t *snap = r->snapshot;
    r->snapshot = NULL;
    r->inflight = 0;
    c->send_busy = 0;
    c->io_refs--;
    if (fail) {
        free(snap);
        lk_core_io_error(w, c, 32);
        if (c->state == LK_CS_CLOSING && c->io_refs == 0)
            finish_close(w, c);
        return;
    }
    check_output(r, snap, k);
    free(snap);
    lk_core_sent(w, c, k);
    if (lk_conn_alive(c))
        fk_send_start(w, c);
}

HARNESS static void advance(uint64_t ns)
{
    clock_ns += ns;
    set_now();
    for (uint32_t i = 0; i < R->n_threads; i++) {
        lk_worker *w = &R->workers[i];
        if (w->now >= w->next_due) {
            run_timers(w);
            lk_conns_reap(w);
        }
    }
}

/* ---- set-up ----------------------------------------------------------------------------- */

HARNESS static void adopt(rec *r, int idx, int key, int mesh, int prober)
{
    lk_handoff *h = calloc(1, sizeof *h);
    CHECK(h);
    h->fd = FD_BASE + idx;
    h->id = __atomic_add_fetch(&R->next_conn_id, 1, __ATOMIC_RELAXED);
    memcpy(h->key, keys[key], 32);
    h->mesh = (uint8_t)mesh;
    h->prober = (uint8_t)prober;
    h->ip16[10] = h->ip16[11] = 0xff;
    h->ip16[12] = 127;
    h->ip16[15] = 1;
    h->port = (uint16_t)(40000 + idx);
    /* ServerInfo is what the acceptor leaves in ctrl for the owner to send first */
    uint8_t si[LK_SERVER_INFO_FRAME_LEN];
    memset(si, 0, sizeof si);
    lk_put_frame_hdr(si, LK_FT_SERVER_INFO, LK_SERVER_INFO_FRAME_LEN - LK_FRAME_HDR);
    h->ctrl.data = malloc(sizeof si);
    CHECK(h->ctrl.data);
    memcpy(h->ctrl.data, si, sizeof si);
    h->ctrl.len = h->ctrl.cap = sizeof si;
    r->mesh = mesh;
    uint32_t owner = lk_shard_owner(R, h->key);
    r->worker = owner;
    r->transit = 1;
    lk_conns_adopt(&R->workers[owner], h);
}

HARNESS static void accept_fresh(rec *r, int idx, int key, int variant, int fast)
{
    lk_worker *acc = &R->workers[R->n_workers];
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)(40000 + idx));
    in->sin_addr.s_addr = htonl(0x7f000001);
    r->fresh = 1;
    r->worker = acc->index;
    CHECK(lk_core_accepted(acc, FD_BASE + idx, &ss) == 0 || acc->n_free == 0);
    if (variant < 3) {
        r->mesh = variant == 1;
        append(r, prefix[key][variant][fast], prefix_len[key][variant][fast]);
    }
}

/* ---- operations ------------------------------------------------------------------------ */

typedef struct cursor {
    const uint8_t *p;
    size_t n;
} cursor;

HARNESS static int take(cursor *cur, uint8_t *b)
{
    if (cur->n == 0)
        return 0;
    *b = *cur->p++;
    cur->n--;
    return 1;
}

HARNESS static uint8_t take0(cursor *cur)
{
    uint8_t b = 0;
    take(cur, &b);
    return b;
}

HARNESS static uint32_t packet_len(uint8_t s)
{
    static const uint32_t special[] = {0, 1, 61, 62, 1400, 2011, 2012, 65536, 65537, 8000,
                                       30000, 100, 255, 512, 64, 1280};
    return s < 240 ? s : special[s - 240];
}

HARNESS static void fill_packet(uint8_t *p, uint32_t n, int disco, uint8_t seed)
{
    memset(p, seed, n);
    if (n)
        p[n - 1] = (uint8_t)n;
    if (disco)
        memcpy(p, lk_disco_magic, n < sizeof lk_disco_magic ? n : sizeof lk_disco_magic);
}

static uint8_t big[2 * LK_KEY_LEN + LK_MAX_PACKET + 16];

HARNESS static void run_op(cursor *cur)
{
    uint8_t op = take0(cur);
    rec *r = &recs[(op >> 4) % n_recs];
    switch (op & 15) {
    case 0: { /* RAW len bytes */
        uint8_t len = take0(cur);
        size_t n = len < cur->n ? len : cur->n;
        append(r, cur->p, n);
        cur->p += n;
        cur->n -= n;
        break;
    }
    case 1: { /* SendPacket(dst key, size class), disco when bit 7 */
        uint8_t a = take0(cur), s = take0(cur);
        uint32_t plen = packet_len(s);
        memcpy(big, keys[(a & 127) % N_KEYS], 32);
        fill_packet(big + 32, plen, a & 128, a);
        append_frame(r, LK_FT_SEND_PACKET, big, 32 + plen);
        break;
    }
    case 2: { /* ForwardPacket(src, dst, size) */
        uint8_t a = take0(cur), s = take0(cur);
        uint32_t plen = packet_len(s);
        memcpy(big, keys[(a & 7) % N_KEYS], 32);
        memcpy(big + 32, keys[((a >> 3) & 7) % N_KEYS], 32);
        fill_packet(big + 64, plen, a & 128, a);
        append_frame(r, LK_FT_FORWARD_PACKET, big, 64 + plen);
        break;
    }
    case 3: { /* control frames, some with wrong lengths */
        uint8_t k = take0(cur);
        uint8_t arg = k >> 3;
        static const uint32_t ping_lens[] = {8, 8, 8, 7, 20, 1000, 1001, 0};
        static const uint8_t types[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 17, 18, 19, 20, 21,
                                        0, 11, 0x7f, 0xff};
        memset(big, k, 1100);
        switch (k & 7) {
        case 0:
            append_frame(r, LK_FT_PING, big, ping_lens[arg & 7]);
            break;
        case 1:
            append_frame(r, LK_FT_WATCH_CONNS, big, arg & 1);
            break;
        case 2:
            memcpy(big, keys[arg % N_KEYS], 32);
            append_frame(r, LK_FT_CLOSE_PEER, big, (arg & 16) ? 31 : 32);
            break;
        case 3:
            append_frame(r, LK_FT_NOTE_PREFERRED, big, (arg & 1) + 1);
            break;
        case 4:
            append_frame(r, LK_FT_KEEP_ALIVE, big, 0);
            break;
        case 5:
            append_frame(r, types[arg % LK_ARRAY_LEN(types)], big, (uint32_t)arg * 37);
            break;
        case 6:
            append_frame(r, LK_FT_PONG, big, 8);
            break;
        case 7: { /* a header only, with a huge or boundary length */
            static const uint32_t lens[] = {0xffffffffu, 65569, 65568, 65601, 65600, 262145,
                                            0x80000000u, 55};
            uint8_t h[LK_FRAME_HDR];
            lk_put_frame_hdr(h, types[arg % LK_ARRAY_LEN(types)], lens[(arg >> 2) & 7]);
            append(r, h, sizeof h);
            break;
        }
        }
        break;
    }
    case 4:
    case 12:
    case 13: { /* DELIVER: n bytes (0 = all, >= 128 = (n - 127) * 512) */
        uint8_t n = take0(cur);
        deliver(r, n < 128 ? n : (size_t)(n - 127) * 512);
        break;
    }
    case 14:
    case 15:
        deliver(r, 0);
        break;
    case 5:
        client_eof(r);
        break;
    case 6: { /* writable / send completes */
        uint8_t b = take0(cur);
        writable(r, b == 0 ? UNLIMITED : (uint32_t)b * 64, 0);
        break;
    }
    case 7:
        if (!r->closed && !r->transit && !completion_for(&R->workers[r->worker]))
            r->budget = 0;
        break;
    case 8:
        pass(&R->workers[(op >> 4) % R->n_threads]);
        break;
    case 9: { /* time passes; timers fire */
        uint8_t t = take0(cur);
        advance(t < 128 ? (uint64_t)t * 10 * LK_MS : (uint64_t)(t - 127) * 1000 * LK_MS);
        break;
    }
    case 10:
        for (int round = 0; round < 4; round++)
            for (uint32_t i = 0; i < R->n_threads; i++)
                pass(&R->workers[i]);
        break;
    case 11:
        writable(r, UNLIMITED, 1); /* send error (reset) */
        break;
    }
    end_of_pass();
    check_gauges();
}

/* ---- the entry points ------------------------------------------------------------------- */

HARNESS int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    rng_state = 1;
    CHECK(randombytes_set_implementation(&det_impl) == 0);
    CHECK(sodium_init() >= 0);
    memset(relay_sk, 0x11, 32);
    relay_sk[0] &= 248;
    relay_sk[31] = (relay_sk[31] & 127) | 64;
    crypto_scalarmult_base(relay_pk, relay_sk);
    memset(mesh_key, 0x5a, 32);
    for (int k = 0; k < N_REAL_KEYS; k++) {
        memset(client_sk[k], 0x22 + k, 32);
        client_sk[k][0] &= 248;
        client_sk[k][31] = (client_sk[k][31] & 127) | 64;
        crypto_scalarmult_base(keys[k], client_sk[k]);
    }
    memcpy(keys[4], relay_pk, 32);
    memset(keys[5], 0xee, 32);
    for (int k = 0; k < N_REAL_KEYS; k++)
        for (int v = 0; v < 3; v++)
            for (int f = 0; f < 2; f++)
                make_prefix(k, v, f);
    for (uint32_t n = 1; n <= MAX_WORKERS_FUZZ; n++)
        relays[n] = make_relay(n);
    return 0;
}

HARNESS int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cursor cur = {data, size};
    uint8_t h;
    if (!take(&cur, &h))
        return 0;
    R = relays[(h & 3) == 3 ? 3 : (h & 3) + 1];
    completion = (h >> 2) & 1;
    coalesce = (h >> 3) & 1;
    n_recs = ((h >> 4) & 7) + 1;
    rng_state = 7; /* the same input draws the same nonces and jitter every time */
    clock_ns += 1000 * LK_MS;
    set_now();
    memset(recs, 0, sizeof recs);
    for (int i = 0; i < n_recs; i++) {
        rec *r = &recs[i];
        r->used = 1;
        r->budget = UNLIMITED;
        uint8_t b = take0(&cur);
        int key = (b & 7) % N_KEYS;
        int kind = (b >> 3) & 3;
        int variant = (b >> 5) & 3;
        int flag = b >> 7;
        if (kind == 3)
            accept_fresh(r, i, key % N_REAL_KEYS, variant, flag);
        else
            adopt(r, i, key, kind == 2, flag);
        end_of_pass();
    }
    check_gauges();
    while (cur.n > 0)
        run_op(&cur);

    /* Everyone hangs up; drain until nothing moves, then all must be back. */
    for (int round = 0;; round++) {
        CHECK(round < 64);
        int busy = 0;
        for (int i = 0; i < n_recs; i++) {
            rec *r = &recs[i];
            if (r->transit && !r->closed)
                busy = 1;
            lk_conn *c = live_conn(r);
            if (!c)
                continue;
            busy = 1;
            if (completion_for(&R->workers[r->worker]) && r->inflight)
                writable(r, UNLIMITED, 0);
            c = live_conn(r);
            if (c)
                client_eof(r);
        }
        for (uint32_t i = 0; i < R->n_threads; i++)
            pass(&R->workers[i]);
        end_of_pass();
        if (!busy && rings_empty())
            break;
        /* a connection adopted by nobody (its worker had no slot) counts as gone */
        if (round > 8)
            for (int i = 0; i < n_recs; i++)
                if (recs[i].transit && rings_empty())
                    recs[i].closed = 1;
    }
    for (uint32_t i = 0; i < R->n_threads; i++)
        reap_closed(&R->workers[i]);
    check_quiescent();
    for (int i = 0; i < n_recs; i++) {
        free(recs[i].pending);
        free(recs[i].snapshot);
    }
    return 0;
}

/* load.c — the load generator's public entry points: config defaults and
 * validation, the phases of a run (set up, connect, ready, warm-up + window,
 * drain, report), lk_load_stop(), and the result. */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "load/load.h"
#include "tls/ktls.h"
#include "load/load_tls.h"

#define TOKEN_WAKE UINT64_MAX
#define MAX_SECONDS 86400.0

/* One load per process at a time, like the relay. */
static int running;
static int stop_flag;   /* atomic: set by lk_load_stop() */
/* Created once and never closed, so a late lk_load_stop() can never write
 * into a descriptor number that was reused. */
static int stop_fd = -1;

int lk_load_stop_requested(void) { return __atomic_load_n(&stop_flag, __ATOMIC_ACQUIRE); }
int lk_load_stop_fd(void) { return stop_fd; }

void lk_load_log(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lk_vlog("labkit load", fmt, ap);
    va_end(ap);
}

void lk_load_config_defaults(lk_load_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->host = "127.0.0.1";
    cfg->tls = LK_TLS_OFF;
    cfg->mode = LK_LOAD_THROUGHPUT;
    cfg->pairs = 4;
    cfg->size = 1400;
    cfg->rate_mbps = 0;
    cfg->duration_s = 5;
    cfg->warmup_s = 1;
    cfg->threads = 1;
    cfg->ready_fd = -1;
}

static int finite_in(double v, double lo, double hi) { return v >= lo && v <= hi; }

static int validate(const lk_load_config *cfg)
{
    if (!cfg->host || !cfg->host[0])
        return lk_fail(LK_ERR_CONFIG, "host is empty: give the relay's address");
    if (cfg->port == 0)
        return lk_fail(LK_ERR_CONFIG, "port 0: give the relay's port");
    if (cfg->tls < LK_TLS_OFF || cfg->tls > LK_TLS_KTLS)
        return lk_fail(LK_ERR_CONFIG, "tls must be off (0), user (1) or ktls (2), not %d", cfg->tls);
    if (cfg->mode != LK_LOAD_THROUGHPUT && cfg->mode != LK_LOAD_ECHO)
        return lk_fail(LK_ERR_CONFIG, "mode must be throughput (0) or echo (1), not %d", cfg->mode);
    if (cfg->sender != LK_SENDER_BATCHED && cfg->sender != LK_SENDER_FRAME_PER_WRITE)
        return lk_fail(LK_ERR_CONFIG, "sender must be batched (0) or frame-per-write (1), not %d",
                       cfg->sender);
    if (cfg->pairs < 1 || cfg->pairs > LK_LOAD_MAX_PAIRS)
        return lk_fail(LK_ERR_CONFIG, "pairs must be 1..%d, not %d", LK_LOAD_MAX_PAIRS, cfg->pairs);
    if (cfg->size < LK_LOAD_PAYLOAD_MIN || cfg->size > LK_MAX_PACKET)
        return lk_fail(LK_ERR_CONFIG, "size must be %d..%d bytes (sequence + stamp need 16), not %u",
                       LK_LOAD_PAYLOAD_MIN, LK_MAX_PACKET, cfg->size);
    if (!finite_in(cfg->rate_mbps, 0, 1e7))
        return lk_fail(LK_ERR_CONFIG, "rate_mbps must be 0 (unpaced) .. 1e7, not %g", cfg->rate_mbps);
    if (!finite_in(cfg->duration_s, 1e-3, MAX_SECONDS))
        return lk_fail(LK_ERR_CONFIG, "duration must be 0.001..%g s, not %g", MAX_SECONDS,
                       cfg->duration_s);
    if (!finite_in(cfg->warmup_s, 0, MAX_SECONDS))
        return lk_fail(LK_ERR_CONFIG, "warmup must be 0..%g s, not %g", MAX_SECONDS, cfg->warmup_s);
    if (cfg->threads < 1 || cfg->threads > LK_MAX_WORKERS)
        return lk_fail(LK_ERR_CONFIG, "threads must be 1..%d, not %d", LK_MAX_WORKERS, cfg->threads);
    if (cfg->threads > 2 * cfg->pairs)
        return lk_fail(LK_ERR_CONFIG, "threads (%d) > connections (%d): a thread would be idle",
                       cfg->threads, 2 * cfg->pairs);
    if (cfg->first_cpu < 0)
        return lk_fail(LK_ERR_CONFIG, "first_cpu must be >= 0, not %d", cfg->first_cpu);
    return LK_OK;
}

/* Capabilities this kernel does not have are refused, never ignored: kTLS is
 * probed once here rather than failing every connection. */
static int check_supported(const lk_load_config *cfg)
{
    return cfg->tls == LK_TLS_KTLS ? lk_ktls_probe() : LK_OK;
}

/* ---- set-up and teardown ------------------------------------------------------ */

static int resolve(lk_load *l)
{
    const char *host = l->cfg.host;
    snprintf(l->where, sizeof l->where, strchr(host, ':') ? "[%s]:%u" : "%s:%u", host,
             (unsigned)l->cfg.port);
    char port[8];
    snprintf(port, sizeof port, "%u", (unsigned)l->cfg.port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int e = getaddrinfo(host, port, &hints, &res);
    if (e != 0)
        return lk_fail(LK_ERR_CONNECT, "cannot resolve %s: %s", host, gai_strerror(e));
    memcpy(&l->addr, res->ai_addr, res->ai_addrlen);
    l->addr_len = res->ai_addrlen;
    freeaddrinfo(res);
    return LK_OK;
}

static int thread_init(lk_load *l, lk_load_thread *t, uint32_t index, uint32_t max_conns)
{
    t->load = l;
    t->index = index;
    t->wake_fd = -1;
    t->shared = lk_shm_worker(&l->shm, index);
    t->epfd = epoll_create1(EPOLL_CLOEXEC);
    t->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (t->epfd < 0 || t->wake_fd < 0)
        return lk_fail(LK_ERR_SYSTEM, "epoll_create1/eventfd: %s", strerror(errno));
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TOKEN_WAKE};
    LK_LCOUNT(t, SYS_EPOLL_CTL);
    if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, t->wake_fd, &ev) != 0)
        return lk_fail(LK_ERR_SYSTEM, "epoll_ctl: %s", strerror(errno));
    t->conns = calloc(max_conns, sizeof *t->conns);
    t->rbuf = malloc(LK_LOAD_RBUF);
    t->plain = l->tls ? malloc(LK_LOAD_PLAIN) : NULL;
    t->hist = calloc(1, sizeof *t->hist);
    if (!t->conns || !t->rbuf || (l->tls && !t->plain) || !t->hist)
        return lk_fail(LK_ERR_NOMEM, "no memory for load thread %u", index);
    return LK_OK;
}

static int setup(lk_load *l, const lk_load_config *cfg)
{
    l->cfg = *cfg;
    l->frame_len = LK_FRAME_HDR + LK_KEY_LEN + cfg->size;
    l->batch_frames = LK_LOAD_BATCH / l->frame_len ? LK_LOAD_BATCH / l->frame_len : 1;
    if (cfg->rate_mbps > 0) {
        /* rate counts packet (payload) bytes, the same bytes mbps reports */
        l->pps = cfg->rate_mbps * 1e6 / 8 / cfg->size / cfg->pairs;
        l->quantum = l->pps * LK_LOAD_PACE_NS / 1e9;
        if (l->quantum < 1)
            l->quantum = 1;
        if (l->quantum > l->batch_frames)
            l->quantum = l->batch_frames;
    } else {
        l->quantum = l->batch_frames;
    }
    int rc = resolve(l);
    if (rc == LK_OK)
        rc = lk_shm_create(&l->shm, cfg->shm_name, (uint32_t)cfg->threads, LK_ROLE_LOAD);
    if (rc == LK_OK && cfg->tls != LK_TLS_OFF)
        rc = lk_load_tls_ctx_create(&l->tls, cfg->ca_file, cfg->insecure,
                                    cfg->tls == LK_TLS_KTLS);
    if (rc != LK_OK)
        return rc;
    l->n_threads = (uint32_t)cfg->threads;
    l->n_conns = 2 * (uint32_t)cfg->pairs;
    l->threads = calloc(l->n_threads, sizeof *l->threads);
    l->conns = calloc(l->n_conns, sizeof *l->conns);
    if (!l->threads || !l->conns)
        return lk_fail(LK_ERR_NOMEM, "no memory for %u clients", l->n_conns);
    for (uint32_t i = 0; i < l->n_threads; i++)
        l->threads[i].epfd = l->threads[i].wake_fd = -1;
    uint32_t per_thread = (l->n_conns + l->n_threads - 1) / l->n_threads;
    for (uint32_t i = 0; i < l->n_threads && rc == LK_OK; i++)
        rc = thread_init(l, &l->threads[i], i, per_thread);
    /* Spread round-robin over the threads in the order senders, then
     * receivers: every thread gets work when threads <= 2P, and with two
     * threads a pair's sender and receiver share neither nothing nor all. */
    for (uint32_t k = 0; k < l->n_conns && rc == LK_OK; k++) {
        uint32_t pair = k % (uint32_t)cfg->pairs;
        uint32_t role = k < (uint32_t)cfg->pairs ? LK_LR_SENDER : LK_LR_RECEIVER;
        uint32_t index = 2 * pair + role;
        lk_load_thread *t = &l->threads[k % l->n_threads];
        rc = lk_lc_init(l, &l->conns[index], index, t);
        t->conns[t->n_conns++] = &l->conns[index];
    }
    for (uint32_t p = 0; p < (uint32_t)cfg->pairs && rc == LK_OK; p++) {
        lk_load_conn *s = &l->conns[2 * p], *r = &l->conns[2 * p + 1];
        memcpy(s->peer, r->pk, LK_KEY_LEN);
        memcpy(r->peer, s->pk, LK_KEY_LEN);
    }
    return rc;
}

static void teardown(lk_load *l)
{
    if (l->conns)
        for (uint32_t i = 0; i < l->n_conns; i++)
            lk_lc_free(&l->conns[i]);
    if (l->threads)
        for (uint32_t i = 0; i < l->n_threads; i++) {
            lk_load_thread *t = &l->threads[i];
            if (t->epfd >= 0)
                close(t->epfd);
            if (t->wake_fd >= 0)
                close(t->wake_fd);
            free(t->conns);
            free(t->rbuf);
            free(t->plain);
            free(t->hist);
        }
    free(l->conns);
    free(l->threads);
    lk_load_tls_ctx_free(l->tls);
    lk_shm_destroy(&l->shm);
    free(l);
}

/* ---- the run ------------------------------------------------------------------------- */

static void wake_all(lk_load *l)
{
    uint64_t one = 1;
    for (uint32_t i = 0; i < l->n_threads; i++)
        if (l->threads[i].started)
            (void)!write(l->threads[i].wake_fd, &one, sizeof one);
}

/* Sleep until `until` or lk_load_stop(); returns the time it woke. */
static uint64_t wait_until(uint64_t until)
{
    for (;;) {
        uint64_t now = lk_now_ns();
        if (now >= until || lk_load_stop_requested())
            return now;
        struct pollfd pfd = {.fd = stop_fd, .events = POLLIN};
        (void)poll(&pfd, 1, (int)((until - now + LK_MS - 1) / LK_MS));
    }
}

/* After the window: wait until every in-window packet is accounted for
 * (received, or echoed back) or the drain time is up. */
static void drain(lk_load *l, uint64_t deadline)
{
    for (;;) {
        uint64_t sent = 0, recv = 0;
        int closed = 1;
        for (uint32_t i = 0; i < l->n_threads; i++) {
            lk_load_thread *t = &l->threads[i];
            closed &= __atomic_load_n(&t->prog_closed, __ATOMIC_ACQUIRE);
            sent += __atomic_load_n(&t->prog_sent, __ATOMIC_RELAXED);
            recv += __atomic_load_n(&t->prog_recv, __ATOMIC_RELAXED);
        }
        if ((closed && recv >= sent) || lk_now_ns() >= deadline)
            return;
        /* a 1 ms poll on the calling thread only; the event loops never spin */
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
}

static void report(lk_load *l, uint64_t window_end, lk_load_result *out)
{
    lk_load_hist *h = l->threads[0].hist;
    for (uint32_t i = 0; i < l->n_threads; i++) {
        lk_load_thread *t = &l->threads[i];
        out->sent += t->sent_window;
        out->received += t->recv_window;
        out->bytes_received += t->bytes_window;
        out->pace_missed += t->missed_window;
        if (i > 0)
            lk_lh_merge(h, t->hist);
    }
    out->lost = out->sent > out->received ? out->sent - out->received : 0;
    out->seconds = window_end > l->t_start ? (double)(window_end - l->t_start) / 1e9 : 0;
    if (out->seconds > 0) {
        out->mbps = (double)out->bytes_received * 8 / out->seconds / 1e6;
        out->pps = (double)out->received / out->seconds;
    }
    static const double q[] = {0.5, 0.9, 0.99, 0.999};
    for (int i = 0; i < 4; i++)
        out->latency_us[i] = lk_lh_quantile(h, q[i]) / 1e3;
    out->latency_us[4] = (double)h->min / 1e3;
    out->latency_us[5] = (double)h->max / 1e3;
    out->latency_us[6] = h->n ? h->sum / (double)h->n / 1e3 : 0;
    out->latency_samples = h->n;
}

static int run(lk_load *l, lk_load_result *out)
{
    int rc = LK_OK;
    for (uint32_t i = 0; i < l->n_conns && rc == LK_OK; i++) {
        lk_load_conn *c = &l->conns[i];
        if (lk_lc_adopt(c, c->thr->epfd, i) != 0)
            rc = lk_fail(LK_ERR_SYSTEM, "%s", c->failure);
    }
    if (rc != LK_OK)
        return rc;
    uint64_t now = lk_now_ns();
    l->t_start = now + (uint64_t)(l->cfg.warmup_s * 1e9);
    l->t_end = l->t_start + (uint64_t)(l->cfg.duration_s * 1e9);
    if (l->cfg.ready_fd >= 0)
        (void)!write(l->cfg.ready_fd, "ready\n", 6);
    for (uint32_t i = 0; i < l->n_threads && rc == LK_OK; i++) {
        int e = pthread_create(&l->threads[i].thread, NULL, lk_load_thread_main, &l->threads[i]);
        if (e != 0)
            rc = lk_fail(LK_ERR_SYSTEM, "pthread_create: %s", strerror(e));
        else
            l->threads[i].started = 1;
    }
    uint64_t window_end = l->t_end;
    if (rc == LK_OK) {
        uint64_t woke = wait_until(l->t_end);
        if (woke < window_end)
            window_end = woke;  /* lk_load_stop(): the window ends now */
        wake_all(l);            /* senders notice the stop at once */
        drain(l, window_end + LK_LOAD_DRAIN_NS);
    }
    __atomic_store_n(&l->quit, 1, __ATOMIC_RELEASE);
    wake_all(l);
    for (uint32_t i = 0; i < l->n_threads; i++) {
        lk_load_thread *t = &l->threads[i];
        if (t->started)
            pthread_join(t->thread, NULL);
        if (rc == LK_OK && t->result != LK_OK)  /* its detail, on this thread */
            rc = lk_fail(t->result, "load thread %u: %s", i, t->error);
    }
    if (rc == LK_OK)
        report(l, window_end, out);
    return rc;
}

int lk_load_run(const lk_load_config *cfg, lk_load_result *out)
{
    memset(out, 0, sizeof *out);
    int rc = validate(cfg);
    if (rc == LK_OK)
        rc = check_supported(cfg);
    if (rc != LK_OK)
        return rc;
    if (sodium_init() < 0)
        return lk_fail(LK_ERR_SYSTEM, "libsodium failed to initialise");
    int expected = 0;
    if (!__atomic_compare_exchange_n(&running, &expected, 1, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
        return lk_fail(LK_ERR_BUSY, "a load generator already runs in this process");
    if (stop_fd < 0 && (stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
        __atomic_store_n(&running, 0, __ATOMIC_RELEASE);
        return lk_fail(LK_ERR_SYSTEM, "eventfd: %s", strerror(errno));
    }
    uint64_t drained;
    (void)!read(stop_fd, &drained, sizeof drained);  /* a stop meant for an earlier run */
    __atomic_store_n(&stop_flag, 0, __ATOMIC_RELEASE);

    lk_load *l = calloc(1, sizeof *l);
    if (!l) {
        __atomic_store_n(&running, 0, __ATOMIC_RELEASE);
        return lk_fail(LK_ERR_NOMEM, "no memory for the load generator");
    }
    rc = setup(l, cfg);
    if (rc == LK_OK)
        rc = lk_load_connect_all(l, out);
    /* stopped before every pair was up: nothing was measured, and that is no error */
    if (rc == LK_OK && !lk_load_stop_requested())
        rc = run(l, out);
    teardown(l);
    __atomic_store_n(&running, 0, __ATOMIC_RELEASE);
    return rc;
}

void lk_load_stop(void)
{
    __atomic_store_n(&stop_flag, 1, __ATOMIC_RELEASE);
    if (stop_fd >= 0) {
        uint64_t one = 1;
        (void)!write(stop_fd, &one, sizeof one);
    }
}

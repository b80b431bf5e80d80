/* relay.c — the public entry points: config defaults and validation, start
 * the workers, wait for lk_relay_stop(), tear down. */
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/common.h"
#include "relay/shard.h"
#include "tls/tls.h"
#include "relay/worker.h"

/* The relay running in this process, for lk_relay_stop() (signal handlers,
 * other threads).  One at a time: a relay host process runs one relay. */
static lk_relay *running;
/* Created once and never closed, so a late lk_relay_stop() can never write
 * into a descriptor number that was reused. */
static int stop_fd = -1;

void lk_relay_config_defaults(lk_relay_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->listen_fd = -1;
    cfg->ready_fd = -1;
    cfg->io = LK_IO_EPOLL;
    cfg->tls = LK_TLS_OFF;
    cfg->workers = 1;
    cfg->handshake_timeout_ms = 10000;
    cfg->write_timeout_ms = 2000;
    cfg->keepalive_ms = 60000;
    cfg->queue_depth = 32;
    cfg->max_conns = 4096;
    cfg->pool_packets = 16384;
}

static int validate(const lk_relay_config *cfg)
{
    int type = 0;
    socklen_t len = sizeof type;
    if (cfg->listen_fd < 0 || getsockopt(cfg->listen_fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 ||
        type != SOCK_STREAM)
        return lk_fail(LK_ERR_CONFIG, "listen_fd %d is not a TCP socket", cfg->listen_fd);
    if (cfg->io != LK_IO_EPOLL && cfg->io != LK_IO_URING)
        return lk_fail(LK_ERR_CONFIG, "io must be epoll (0) or uring (1), not %d", cfg->io);
    if (cfg->tls < LK_TLS_OFF || cfg->tls > LK_TLS_KTLS)
        return lk_fail(LK_ERR_CONFIG, "tls must be off (0), user (1) or ktls (2), not %d", cfg->tls);
    if (cfg->workers < 1 || cfg->workers > LK_MAX_WORKERS)
        return lk_fail(LK_ERR_CONFIG, "workers must be 1..%d, not %d", LK_MAX_WORKERS, cfg->workers);
    if (cfg->handshake_timeout_ms == 0 || cfg->keepalive_ms == 0)
        return lk_fail(LK_ERR_CONFIG, "handshake_timeout and keepalive must be > 0");
    if (cfg->queue_depth < 1 || cfg->queue_depth > 65536)
        return lk_fail(LK_ERR_CONFIG, "queue_depth must be 1..65536, not %u", cfg->queue_depth);
    if (cfg->max_conns < 1 || cfg->max_conns > (1u << 20))
        return lk_fail(LK_ERR_CONFIG, "max_conns must be 1..1048576, not %u", cfg->max_conns);
    if (cfg->pool_packets < 64)
        return lk_fail(LK_ERR_CONFIG, "pool_packets must be at least 64, not %u", cfg->pool_packets);
    if ((cfg->switches & LK_SW_MULTISHOT) && !(cfg->switches & LK_SW_PROVIDED_BUFFERS))
        return lk_fail(LK_ERR_CONFIG, "multishot recv needs provided_buffers: the kernel picks "
                                      "a buffer per completion");
    uint32_t epoll_ok = LK_SW_COALESCE | LK_SW_PIN_CPUS | LK_SW_ROUND_ROBIN;
    if (cfg->io == LK_IO_EPOLL && (cfg->switches & ~epoll_ok))
        return lk_fail(LK_ERR_CONFIG, "switches 0x%x apply to io_uring only",
                       cfg->switches & ~epoll_ok);
    return LK_OK;
}

/* Capabilities this build or this kernel does not have are refused, never ignored. */
static int check_supported(const lk_relay_config *cfg)
{
    /* once per run, so a kernel without kTLS refuses the run with the reason
     * instead of failing every connection */
    int rc = cfg->tls == LK_TLS_KTLS ? lk_ktls_probe() : LK_OK;
    if (rc != LK_OK)
        return rc;
    if (cfg->switches & LK_SW_ROUND_ROBIN)
        return lk_fail(LK_ERR_UNSUPPORTED, "round-robin assignment is not part of this build: "
                                           "connections go to the worker owning their key");
    return LK_OK;
}

static void wait_all_started(lk_relay *r)
{
    pthread_mutex_lock(&r->start_lock);
    while (r->started < r->n_threads)
        pthread_cond_wait(&r->started_cond, &r->start_lock);
    pthread_mutex_unlock(&r->start_lock);
}

static void teardown(lk_relay *r)
{
    pthread_cond_destroy(&r->started_cond);
    pthread_mutex_destroy(&r->start_lock);
    __atomic_store_n(&running, NULL, __ATOMIC_RELEASE);
    if (r->workers)
        for (uint32_t i = 0; i < r->n_threads; i++)
            lk_worker_destroy(&r->workers[i]);
    free(r->workers);
    lk_shard_destroy(r);
    lk_tls_ctx_free(r->tls);
    lk_shm_destroy(&r->shm);
    free(r);
}

static int setup(lk_relay *r, const lk_relay_config *cfg)
{
    r->cfg = *cfg;
    r->io = cfg->io == LK_IO_URING ? &lk_io_uring : &lk_io_epoll;
    r->n_workers = (uint32_t)cfg->workers;
    r->n_threads = r->n_workers + 1;  /* + the acceptor */
    r->stop_fd = stop_fd;
    crypto_scalarmult_base(r->public_key, cfg->private_key);
    int flags = fcntl(cfg->listen_fd, F_GETFL);
    if (flags < 0 || fcntl(cfg->listen_fd, F_SETFL, flags | O_NONBLOCK) != 0)
        return lk_fail(LK_ERR_SYSTEM, "cannot make listen_fd non-blocking: %s", strerror(errno));
    /* counter slots: one per data worker, then the acceptor's */
    int rc = lk_shm_create(&r->shm, cfg->shm_name, r->n_threads, LK_ROLE_RELAY);
    if (rc == LK_OK)
        rc = lk_shard_init(r);
    if (rc == LK_OK && cfg->tls != LK_TLS_OFF)
        rc = lk_tls_ctx_create(&r->tls, cfg->cert_file, cfg->key_file, cfg->tls == LK_TLS_KTLS);
    if (rc != LK_OK)
        return rc;
    r->workers = calloc(r->n_threads, sizeof *r->workers);
    if (!r->workers)
        return lk_fail(LK_ERR_NOMEM, "no memory for workers");
    for (uint32_t i = 0; i < r->n_threads && rc == LK_OK; i++)
        rc = lk_worker_init(&r->workers[i], r, i);
    return rc;
}

int lk_relay_run(const lk_relay_config *cfg)
{
    int rc = validate(cfg);
    if (rc == LK_OK)
        rc = check_supported(cfg);
    if (rc != LK_OK)
        return rc;
    if (sodium_init() < 0)
        return lk_fail(LK_ERR_SYSTEM, "libsodium failed to initialise");
    if (stop_fd < 0 && (stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
        return lk_fail(LK_ERR_SYSTEM, "eventfd: %s", strerror(errno));
    uint64_t drain;
    (void)!read(stop_fd, &drain, sizeof drain);  /* a stop meant for an earlier run */

    lk_relay *r = calloc(1, sizeof *r);
    if (!r)
        return lk_fail(LK_ERR_NOMEM, "no memory for the relay");
    lk_relay *expected = NULL;
    if (!__atomic_compare_exchange_n(&running, &expected, r, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE)) {
        free(r);
        return lk_fail(LK_ERR_BUSY, "a relay already runs in this process");
    }
    pthread_mutex_init(&r->start_lock, NULL);
    pthread_cond_init(&r->started_cond, NULL);
    rc = setup(r, cfg);
    for (uint32_t i = 0; i < r->n_threads && rc == LK_OK; i++) {
        int e = pthread_create(&r->workers[i].thread, NULL, lk_worker_main, &r->workers[i]);
        if (e != 0)
            rc = lk_fail(LK_ERR_SYSTEM, "pthread_create: %s", strerror(e));
        else
            r->workers[i].thread_started = 1;
    }
    if (rc == LK_OK)
        wait_all_started(r);
    if (rc == LK_OK && cfg->ready_fd >= 0)
        (void)!write(cfg->ready_fd, "ready\n", 6);
    if (rc != LK_OK)
        lk_relay_stop();
    for (uint32_t i = 0; r->workers && i < r->n_threads; i++) {
        if (r->workers[i].thread_started)
            pthread_join(r->workers[i].thread, NULL);
        if (rc == LK_OK && r->workers[i].result != LK_OK)
            rc = r->workers[i].result;
    }
    teardown(r);
    return rc;
}

void lk_relay_stop(void)
{
    lk_relay *r = __atomic_load_n(&running, __ATOMIC_ACQUIRE);
    if (r)
        __atomic_store_n(&r->stopping, 1, __ATOMIC_RELEASE);
    if (stop_fd >= 0) {
        uint64_t one = 1;
        (void)!write(stop_fd, &one, sizeof one);
    }
}

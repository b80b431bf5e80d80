/* relay.c — the public entry points: config defaults and validation, start
 * the workers, wait for lk_relay_stop(), tear down. */
#include <errno.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
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
    cfg->workers = (int)lk_limits[LK_LIMIT_workers].default_value;
    cfg->handshake_timeout_ms = 10000;
    cfg->write_timeout_ms = 2000;
    cfg->keepalive_ms = 60000;
    cfg->queue_depth = lk_limits[LK_LIMIT_queue_depth].default_value;
    cfg->max_conns = lk_limits[LK_LIMIT_max_conns].default_value;
    cfg->pool_packets = lk_limits[LK_LIMIT_pool_packets].default_value;
}

static int validate(const lk_relay_config *cfg)
{
    int rc = lk_io_listener_check(cfg->listen_fd);
    return rc == LK_OK ? lk_relay_config_check(cfg) : rc;
}

/* Capabilities this build or this kernel does not have are refused, never ignored. */
static int check_supported(const lk_relay_config *cfg)
{
    /* once per run, so a kernel without kTLS refuses the run with the reason
     * instead of failing every connection */
    return cfg->tls == LK_TLS_KTLS ? lk_ktls_probe() : LK_OK;
}

/* Wait until every thread has set up its backend and published its counters; LK_OK,
 * or the first set-up failure, its detail moved to this thread. */
static int wait_all_started(lk_relay *r)
{
    pthread_mutex_lock(&r->start_lock);
    while (r->started < r->n_threads)
        pthread_cond_wait(&r->started_cond, &r->start_lock);
    pthread_mutex_unlock(&r->start_lock);
    for (uint32_t i = 0; i < r->n_threads; i++)
        if (r->workers[i].result != LK_OK)
            return lk_fail(r->workers[i].result, "%s", r->workers[i].error);
    return LK_OK;
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
    int rc = lk_io_listener_nonblocking(cfg->listen_fd);
    if (rc != LK_OK)
        return rc;
    /* counter slots: one per data worker, then the acceptor's */
    rc = lk_shm_create(&r->shm, cfg->shm_name, r->n_threads, LK_ROLE_RELAY);
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
        rc = wait_all_started(r);
    if (rc == LK_OK && cfg->ready_fd >= 0)
        (void)!write(cfg->ready_fd, "ready\n", 6);
    if (rc != LK_OK)
        lk_relay_stop();
    for (uint32_t i = 0; r->workers && i < r->n_threads; i++) {
        if (r->workers[i].thread_started)
            pthread_join(r->workers[i].thread, NULL);
        if (rc == LK_OK && r->workers[i].result != LK_OK)  /* its detail, on this thread */
            rc = lk_fail(r->workers[i].result, "worker %u: %s", i, r->workers[i].error);
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

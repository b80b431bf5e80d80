/* worker.h — the relay and its workers: what a worker thread owns. */
#ifndef LK_WORKER_H
#define LK_WORKER_H

#include <pthread.h>
#include <stdint.h>

#include "relay/conn.h"
#include "common/counters.h"
#include "io/io.h"
#include "relay/peers.h"
#include "relay/pool.h"

struct lk_tls_ctx;
struct lk_spsc;
struct lk_xmsg;

/* Messages a full ring could not take yet (never packets: those drop). */
typedef struct lk_overflow {
    struct lk_xmsg *msgs;
    uint32_t len, cap;
} lk_overflow;

typedef struct lk_relay {
    lk_relay_config cfg;
    uint8_t public_key[LK_KEY_LEN];
    struct lk_tls_ctx *tls;
    lk_shm shm;
    const lk_io_ops *io;          /* the data workers' backend */
    struct lk_worker *workers;    /* n_workers data workers, then the acceptor */
    uint32_t n_workers;
    uint32_t n_threads;           /* n_workers + 1 */
    struct lk_spsc *rings;        /* n_threads x n_threads, [from][to] */
    uint8_t shard_key[16];        /* keyed hash: key -> owning worker */
    int stopping;                 /* atomic: set by lk_relay_stop() */
    int stop_fd;                  /* eventfd every worker watches; written by lk_relay_stop() */
    uint64_t next_conn_id;        /* atomic */
    uint64_t next_peer_id;        /* atomic */
    /* Threads that have published their first counters: "ready" waits for all of them,
     * so a reader never finds a slot that was never written. */
    pthread_mutex_t start_lock;
    pthread_cond_t started_cond;
    uint32_t started;
} lk_relay;

typedef struct lk_worker {
    lk_relay *relay;
    uint32_t index;
    pthread_t thread;
    int thread_started;
    int result;                   /* LK_OK or the error that stopped this worker */
    int acceptor;                 /* sets connections up and hands them on */
    const lk_io_ops *io;
    void *io_state;               /* the backend's own */
    int sleeping;                 /* atomic: blocked in the backend's wait */
    uint8_t *wake_pending;        /* per thread: sent to it this pass */
    lk_overflow *overflow;        /* per thread */

    lk_worker_counters stats;     /* private; published each loop pass */
    lk_worker_counters *shared;

    lk_conn *conns;
    uint32_t max_conns;
    uint32_t *free_slots;
    uint32_t n_free;
    lk_conn *all;                 /* live conns (timer scans) */
    lk_conn *dirty;               /* conns with new output, flushed at pass end */
    lk_conn *watchers;            /* mesh peers that sent WatchConns */

    lk_peer_table peers;
    lk_pool pool;
    uint8_t *rbuf;                /* shared receive buffer (readiness backends) */
    uint32_t rbuf_len;
    uint8_t *plain;               /* TLS plaintext scratch */
    uint64_t now;                 /* cached per pass */
    uint64_t next_due;            /* earliest timer of any conn */
} lk_worker;

#define LK_RBUF_LEN (64u * 1024)
#define LK_PLAIN_LEN (16u * 1024 + 256)

#define LK_COUNT(w, name) ((w)->stats.c[LK_C_##name]++)
#define LK_COUNT_N(w, name, n) ((w)->stats.c[LK_C_##name] += (n))

int lk_worker_init(lk_worker *w, lk_relay *r, uint32_t index);
void lk_worker_destroy(lk_worker *w);
void *lk_worker_main(void *arg);

#endif

/* state.h — the relay and its workers: what a worker thread owns, and the few
 * inline helpers every layer of the relay core uses (counting, arming a timer,
 * marking a connection for closing, naming a connection by token).  Data and
 * inlines only: every layer includes it, and it calls none of them.
 *
 * The core's layers, each calling only those below it:
 *   conns.c, worker.c   connection lifecycle, the loop, timers, the message dispatcher,
 *                       and the entry points the backends call (io/io.h)
 *   session.c           input: TLS records -> HTTP -> handshake -> frames
 *   routing.c           who receives what: peers, duplicates, PeerGone, watchers
 *   output.c            what a connection owes its client; gather/sent for backends
 *   shard.c             rings between workers; packet buffers going home
 *   peers.c, pool.c     tables and buffers
 * A lower layer that must end a connection marks it (lk_conn_doom); the lifecycle
 * layer closes it before control returns to the backend. */
#ifndef LK_STATE_H
#define LK_STATE_H

#include <pthread.h>
#include <stdint.h>

#include "common/common.h"
#include "common/counters.h"
#include "relay/conn.h"
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

/* Buckets of destination keys (keyed hash), for counting a worker's packets that wait
 * on other workers per destination (routing.c's cross-shard bound). */
#define LK_XBUCKETS 4096

/* Routing's flow-control state: this worker's packets waiting on other workers (in a
 * ring, a remote queue or a remote writer), per destination bucket. */
typedef struct lk_route_state {
    uint16_t xinflight[LK_XBUCKETS];
} lk_route_state;

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
    char error[512];              /* its detail: lk_last_error() is per thread */
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
    lk_conn *doomed;              /* marked for closing; closed before the backend resumes */
    lk_conn *watchers;            /* mesh peers that sent WatchConns */
    lk_conn *paused;              /* backpressure: clients whose reading is paused */
    uint32_t admitted;            /* packets taken in this loop pass (io_uring's budget) */

    lk_peer_table peers;
    lk_pool pool;
    lk_route_state route;
    uint8_t *rbuf;                /* shared receive buffer (readiness backends) */
    uint32_t rbuf_len;
    uint8_t *plain;               /* TLS plaintext scratch */
    uint64_t now;                 /* cached per pass */
    uint64_t next_due;            /* earliest timer of any conn */
    double accept_tokens;         /* acceptor: the accept limit's bucket (conns.c) */
    uint64_t accept_stamp_ns;     /* its last refill; 0 = not started */
} lk_worker;

#define LK_RBUF_LEN (64u * 1024)
#define LK_PLAIN_LEN (16u * 1024 + 256)

#define LK_COUNT(w, name) ((w)->stats.c[LK_C_##name]++)
#define LK_COUNT_N(w, name, n) ((w)->stats.c[LK_C_##name] += (n))

/* Make sure the worker wakes by `deadline` (CLOCK_MONOTONIC ns). */
static inline void lk_arm(lk_worker *w, uint64_t deadline)
{
    if (deadline < w->next_due)
        w->next_due = deadline;
}

/* End connection c: from now on nothing is queued to it or read from it, and the
 * lifecycle layer closes it (counting `reason_counter`, an LK_C_CLOSE_*, or none
 * when -1) before control returns to the backend. */
static inline void lk_conn_doom(lk_worker *w, lk_conn *c, int reason_counter)
{
    if (!lk_conn_alive(c))
        return;
    c->state = LK_CS_DOOMED;
    c->close_reason = reason_counter;
    c->doomed_next = w->doomed;
    w->doomed = c;
}

/* A connection's name outside its slot (messages, backend tokens): slot | gen << 32. */
static inline uint64_t lk_conn_token(const lk_conn *c)
{
    return (uint64_t)c->slot | (uint64_t)c->gen << 32;
}

/* The connection a token names, or NULL once its slot was freed or reused. */
static inline lk_conn *lk_conn_from_token(lk_worker *w, uint64_t token)
{
    uint32_t slot = (uint32_t)token;
    if (slot >= w->max_conns)
        return NULL;
    lk_conn *c = &w->conns[slot];
    return c->gen == (uint32_t)(token >> 32) && c->state != LK_CS_FREE ? c : NULL;
}


#endif

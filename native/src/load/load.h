/* load.h — the load generator's internals: one run, its event-loop threads,
 * and its DERP clients.
 *
 * Shape of a run (load.c): the calling thread connects and handshakes all
 * 2P clients in one event loop (load_connect.c), hands each client to the
 * thread that will own it, writes "ready", starts the threads
 * (load_worker.c), watches the clock and lk_load_stop(), waits for the drain,
 * and sums the threads' figures.  A client (load_client.c) is the per-socket
 * protocol: HTTP upgrade, DERP handshake, frame parsing, and its output
 * buffer.  After the start nothing is allocated: every buffer is sized from
 * the config up front. */
#ifndef LK_LOAD_H
#define LK_LOAD_H

#include <pthread.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "common/common.h"
#include "common/counters.h"
#include "proto/frame.h"
#include "proto/websocket.h"
#include "load/load_hist.h"

#define LK_LOAD_MAX_PAIRS 4096
#define LK_LOAD_PAYLOAD_MIN 16             /* 8-byte sequence + 8-byte send stamp */
#define LK_LOAD_BATCH (64u * 1024)         /* plaintext bytes one sender send carries */
#define LK_LOAD_BURST 4                    /* batches an unpaced sender writes per event */
#define LK_LOAD_RBUF (256u * 1024)         /* per-thread receive buffer: one recv, many frames */
#define LK_LOAD_PLAIN (16u * 1024 + 256)   /* TLS plaintext scratch: one record */
#define LK_LOAD_HEAD_MAX 4096              /* HTTP response head */
#define LK_LOAD_CTRL_MAX 4096              /* ServerKey/ServerInfo/Ping bodies we accept */
#define LK_LOAD_EVENTS 256
#define LK_LOAD_CONNECT_NS (5000 * LK_MS)  /* connect + TLS + upgrade + DERP handshake */
#define LK_LOAD_DRAIN_NS (500 * LK_MS)     /* after the window: wait this long for stragglers */
#define LK_LOAD_PACE_NS 100000             /* paced senders batch 100 us of their rate per send */
#define LK_LOAD_PUBLISH_NS LK_MS           /* counters reach shared memory at most every 1 ms */

/* The sequence number's top bit says "sent inside the measured window".  The
 * sender decides once, when it stamps the packet, and the receiver trusts the
 * mark: sent and received figures count exactly the same packets, with no
 * race between a thread's clock and a window boundary or lk_load_stop(). */
#define LK_LOAD_IN_WINDOW (1ull << 63)

enum lk_load_role { LK_LR_SENDER = 0, LK_LR_RECEIVER = 1 };

enum lk_load_state {
    LK_LS_IDLE = 0,
    LK_LS_CONNECTING,    /* non-blocking connect() in progress */
    LK_LS_TLS,           /* TLS handshake */
    LK_LS_HTTP,          /* upgrade request sent, reading the 101 */
    LK_LS_SERVER_KEY,    /* the first frame must be ServerKey */
    LK_LS_SERVER_INFO,   /* ClientInfo sent; the next frame must be ServerInfo */
    LK_LS_STEADY,
    LK_LS_DEAD,          /* failed or closed; `failure` says why */
};

struct lk_load;
struct lk_load_thread;
struct lk_load_tls;

typedef struct lk_load_conn {
    struct lk_load *load;
    struct lk_load_thread *thr;   /* owner; its counters count this socket's syscalls */
    uint32_t index;               /* 2 * pair + role */
    uint32_t pair;
    int role;                     /* enum lk_load_role */
    int state;                    /* enum lk_load_state */
    int fd;
    int epfd;                     /* the event loop this socket is registered with */
    uint32_t events;              /* the epoll mask currently registered */
    uint8_t want_out;             /* unpaced sender: keep EPOLLOUT armed */
    uint8_t rx_blocked;           /* echo: no room for replies, EPOLLIN off until flushed */
    uint8_t pong_pending;
    uint8_t pong[8];

    uint8_t pk[LK_KEY_LEN], sk[LK_KEY_LEN];
    uint8_t peer[LK_KEY_LEN];     /* sender: its receiver (destination); receiver: its sender */
    uint8_t relay_pk[LK_KEY_LEN]; /* from ServerKey */

    lk_frame_reader reader;
    uint8_t *body;                /* frame payloads we read: RecvPacket, Ping, handshake */
    uint32_t body_cap;
    char *head;                   /* HTTP response head until the 101 is complete */
    uint32_t head_len;
    /* transport=websocket: the key we sent, then (after the 101) the reader of the
     * relay's frames; each reserve/commit becomes one masked binary message */
    char ws_key[25];
    uint8_t ws;
    uint8_t ws_hdr;               /* header bytes the pending reserve left room for */
    uint64_t ws_mask_state;       /* xorshift state for the mask keys */
    lk_ws_reader ws_rd;

    /* output: plaintext appended at tx[len]; plain TCP sends tx[off, len)
     * directly, TLS encrypts it into the ciphertext buffer first */
    uint8_t *tx;
    uint32_t tx_off, tx_len, tx_cap;
    struct lk_load_tls *tls;      /* NULL when plain, or once the kernel holds the keys */
    uint8_t ktls_peek;            /* kTLS handshake: recv with MSG_PEEK (see load_client.c) */
    uint8_t ktls;                 /* the kernel holds the keys: recv reports record types */

    /* sender: sequence and pacing (token bucket in packets) */
    uint64_t seq;
    double tokens;
    double missed;                /* tokens dropped at the bucket's cap, not yet counted */
    uint64_t refill_ns;
    uint64_t due_ns;              /* next time the bucket holds a quantum; 0 = not waiting */
    uint8_t closed;               /* window over: build no more packets */

    char failure[200];
} lk_load_conn;

typedef struct lk_load_thread {
    struct lk_load *load;
    uint32_t index;
    pthread_t thread;
    int started;
    int result;                   /* LK_OK or the error that stopped this thread */
    char error[512];              /* its detail: lk_last_error() is per thread */
    int epfd;
    int wake_fd;
    lk_load_conn **conns;
    uint32_t n_conns;
    uint8_t *rbuf;
    uint8_t *plain;
    uint64_t now;                 /* CLOCK_MONOTONIC after the last wait or recv */

    lk_worker_counters stats;     /* private; published at most every LK_LOAD_PUBLISH_NS */
    lk_worker_counters *shared;
    uint64_t last_publish;

    /* measured-window figures, this thread's own */
    uint64_t sent_window, recv_window, bytes_window, missed_window;
    lk_load_hist *hist;
    uint32_t senders_open;

    /* what the calling thread polls during the drain (relaxed/acquire atomics) */
    uint64_t prog_sent, prog_recv;
    int prog_closed;

    struct epoll_event events[LK_LOAD_EVENTS];
} lk_load_thread;

typedef struct lk_load {
    lk_load_config cfg;
    char where[300];              /* "host:port" for messages and the Host header */
    struct sockaddr_storage addr;
    socklen_t addr_len;
    uint32_t frame_len;           /* one SendPacket frame: 5 + 32 + size */
    uint32_t batch_frames;        /* frames per sender batch */
    double pps;                   /* per paced sender; 0 = unpaced */
    double quantum;               /* packets a paced sender waits to accumulate */
    struct lk_load_tls_ctx *tls;
    lk_shm shm;
    lk_load_thread *threads;
    uint32_t n_threads;
    lk_load_conn *conns;
    uint32_t n_conns;
    uint64_t t_start, t_end;      /* measured window; fixed before the threads start */
    int quit;                     /* atomic: threads leave their loops */
} lk_load;

#define LK_LCOUNT(t, name) ((t)->stats.c[LK_C_##name]++)
#define LK_LCOUNT_N(t, name, n) ((t)->stats.c[LK_C_##name] += (n))

/* load.c */
int lk_load_stop_requested(void);
/* The eventfd lk_load_stop() writes (never closed: a late stop cannot hit a reused fd). */
int lk_load_stop_fd(void);
/* Say something a person should see ("labkit load: ..."); never per packet. */
void lk_load_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* load_client.c */
int lk_lc_init(lk_load *l, lk_load_conn *c, uint32_t index, lk_load_thread *thr);
void lk_lc_free(lk_load_conn *c);
const char *lk_lc_name(const lk_load_conn *c, char *buf, size_t cap);
/* Start the non-blocking connect; registers with epfd.  0, or -1 (failure set). */
int lk_lc_connect(lk_load_conn *c, int epfd, uint64_t token);
/* Move a handshaked client to another event loop. 0 or -1. */
int lk_lc_adopt(lk_load_conn *c, int epfd, uint64_t token);
/* Readiness handlers; -1 means the client is dead (failure set, socket closed). */
int lk_lc_readable(lk_load_conn *c, size_t limit);
int lk_lc_writable(lk_load_conn *c);
int lk_lc_flush(lk_load_conn *c);
/* Plaintext space for n bytes of frames, or NULL (wait until flushed). */
uint8_t *lk_lc_reserve(lk_load_conn *c, uint32_t n);
void lk_lc_commit(lk_load_conn *c, uint32_t n);
/* Bytes accepted but not yet on the wire. */
uint32_t lk_lc_pending(const lk_load_conn *c);
/* Plaintext bytes that may still be appended before a flush. */
uint32_t lk_lc_room(lk_load_conn *c);
/* Re-register the epoll mask the client needs now (EPOLLIN, EPOLLOUT). */
void lk_lc_update_events(lk_load_conn *c);
void lk_lc_close(lk_load_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* load_worker.c */
void *lk_load_thread_main(void *arg);
/* A RecvPacket for c (payload: source key + packet) in the steady state. */
void lk_load_on_packet(lk_load_conn *c, uint8_t *payload, uint32_t len);

/* load_connect.c */
int lk_load_connect_all(lk_load *l, lk_load_result *out);

#endif

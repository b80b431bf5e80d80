/* conn.h — one client connection: its protocol state, input parser, and the
 * output it owes the client.  Owned by exactly one worker; never shared. */
#ifndef LK_CONN_H
#define LK_CONN_H

#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "common/bytes.h"
#include "proto/frame.h"
#include "proto/websocket.h"
#include "relay/pool.h"

struct lk_tls_conn;
struct lk_peer;

enum lk_conn_state {
    LK_CS_FREE = 0,
    LK_CS_TLS_HANDSHAKE,    /* TLS modes: before the HTTP request */
    LK_CS_HTTP,             /* reading the HTTP request head */
    LK_CS_HTTP_REPLIED,     /* non-upgrade response queued; close once written */
    LK_CS_WAIT_CLIENT_INFO, /* ServerKey queued; the next frame must be ClientInfo */
    LK_CS_HANDOFF,          /* acceptor: handshaked, moving to its owning worker */
    LK_CS_STEADY,           /* registered, forwarding */
    LK_CS_DOOMED,           /* marked for closing (lk_conn_doom); closed at the next reap */
    LK_CS_CLOSING,          /* torn down; the backend still holds it */
};

#define LK_HTTP_HEAD_MAX 16384
#define LK_SMALL_BODY 1024    /* Ping, NotePreferred, ClosePeer payloads */
#define LK_TX_MAX 512         /* frames the writer holds / one vectored send may carry */

/* DERP over WebSocket (session.c reads, output.c writes): the reader of the
 * client's frames, and what the writer owes at and between message boundaries.
 * It moves with the connection from the acceptor to its owning worker. */
typedef struct lk_ws_link {
    lk_ws_reader rd;
    uint32_t raw_left;          /* ctrl bytes that leave unframed: the 101 */
    uint8_t hdr[LK_WS_SERVER_HDR_MAX];  /* header of the message being sent */
    uint8_t hdr_len, hdr_off;
    uint32_t msg_left;          /* its payload bytes not yet sent */
    uint8_t ctl[2 + LK_WS_CTRL_MAX];    /* a Pong or Close, sent between messages */
    uint8_t ctl_len, ctl_off;
    uint8_t sending_ctl;        /* the send in flight carries ctl, not a message */
    uint8_t closing;            /* the client sent Close: read nothing more */
    uint32_t ctl_tokens;        /* control frames a client may send: burst, then 10/s */
    uint64_t ctl_stamp_ns;
} lk_ws_link;

/* A bounded FIFO of packets for one destination: head-drop when full (docs/protocol.md §6.3). */
typedef struct lk_pktq {
    lk_pkt **slots;
    uint32_t head;
    uint32_t count;
    uint32_t cap;
} lk_pktq;

typedef struct lk_conn {
    int fd;
    uint32_t slot;
    uint32_t gen;               /* bumped on reuse: stale backend events are ignored */
    int state;
    int close_reason;           /* LK_C_CLOSE_* counter to bump when it closes (-1: none) */
    struct lk_conn *doomed_next;  /* on the worker's doomed list */
    uint64_t id;                /* unique for the relay's life */
    struct lk_worker *worker;

    /* who this is (valid from LK_CS_STEADY) */
    uint8_t key[LK_KEY_LEN];
    uint8_t mesh, prober, not_ideal, watcher;
    uint8_t ip16[16];           /* remote address, IPv4-mapped */
    uint16_t port;
    struct lk_peer *peer;
    struct lk_conn *dup_next, *dup_prev;  /* connections sharing this key */
    uint64_t last_active_ns;    /* registered or last sent a frame: duplicate-key rule */
    uint64_t last_seen_src;     /* cache: id of the source peer last recorded as seen */
    struct lk_conn *watch_next; /* mesh watchers of this worker */

    /* input */
    lk_frame_reader reader;
    uint8_t *head;              /* HTTP head bytes until the request completes */
    uint32_t head_len;
    uint8_t *client_info;       /* ClientInfo payload (heap, handshake only) */
    lk_bytes pipelined;         /* acceptor: bytes the client sent after ClientInfo */
    lk_pkt *rx_pkt;             /* packet buffer being filled by the reader */
    uint8_t small[LK_SMALL_BODY];

    /* output, in this order: tx (already taken), ctrl, queues */
    lk_bytes ctrl;              /* control frames: 101, ServerKey, ServerInfo, Pong, PeerGone... */
    lk_pktq q_disco, q_other;
    lk_pkt *tx[LK_TX_MAX];      /* packets taken from the queues, oldest first */
    uint32_t tx_count;
    uint32_t tx_off;            /* bytes of tx[0] already sent */
    uint8_t pong_pending;
    uint8_t close_when_flushed;
    int flushed_reason;         /* LK_C_CLOSE_* counted when that close happens */
    uint8_t dirty;              /* on the worker's flush list */
    struct lk_conn *dirty_next;

    /* what the send in flight carries, so its completion advances exactly that */
    struct iovec iov[LK_TX_MAX + 1];
    uint32_t iov_count;
    uint32_t iov_ctrl;          /* ctrl bytes in iov */
    uint8_t *ctrl_pinned;       /* ctrl's old buffer: a send in flight still reads it
                                 (io_uring), so growing ctrl must not free it */
    uint32_t iov_pkts;          /* tx packets (fully or partly) in iov */

    /* TLS (user mode, and kTLS mode until the handshake ends); NULL when
     * plain or once the kernel holds the keys */
    struct lk_tls_conn *tls;
    /* kTLS handshake: the backend must receive with MSG_PEEK, and the core
     * consumes only the records OpenSSL took, so the first application
     * record is still in the socket when the kernel takes over (session.c) */
    uint8_t ktls_peek;
    lk_ws_link *ws;             /* DERP over WebSocket; NULL: raw DERP */

    /* timers, CLOCK_MONOTONIC ns; 0 = not armed */
    uint64_t handshake_deadline;
    uint64_t next_keepalive;
    uint64_t write_stalled_since;

    /* NotHere token bucket: 1 token/s, burst 3 */
    uint64_t nothere_stamp_ns;
    uint32_t nothere_tokens;

    /* backend bookkeeping */
    uint32_t io_refs;           /* operations the kernel still holds */
    uint8_t send_busy;          /* a send is in flight / EPOLLOUT armed */
    uint8_t *io_buf;            /* io_uring per-connection receive buffer */
    struct msghdr io_msg;       /* io_uring: the vectored send in flight */
    uint8_t io_poll;            /* io_uring poll_recv: the multishot poll is armed */
    uint8_t io_ready;           /* io_uring poll_recv: readable, on the worker's ready list */
    uint8_t io_recv_busy;       /* io_uring: a recv (one-shot or multishot) is in flight */
    uint8_t io_hup;             /* io_uring poll_recv: the peer shut down: read to EOF */
    lk_bytes io_held;           /* io_uring: bytes that completed while reads were paused,
                                   parsed in order once resumed (io_uring.c, received) */
    uint8_t io_listed;          /* io_uring: on the worker's list of holders */

    /* backpressure: this client is not read until what it waits on has drained */
    uint8_t read_paused;
    uint64_t paused_on;         /* token of the local destination it waits on, or 0 */
    uint32_t paused_bucket;     /* 1 + the cross-shard destination bucket, or 0 */
    struct lk_conn *paused_next;

    struct lk_conn *all_next, *all_prev;  /* every live conn, for timer scans */
} lk_conn;

/* False once closing started (doomed, closing or free): a backend may release the
 * slot at once (FREE), so code that just ran a callback which can close checks
 * this, not CLOSING. */
static inline int lk_conn_alive(const lk_conn *c)
{
    return c->state != LK_CS_DOOMED && c->state != LK_CS_CLOSING && c->state != LK_CS_FREE;
}

#endif

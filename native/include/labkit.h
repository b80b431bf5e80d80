/*
 * labkit.h — the one public header of the native DERP relay.
 *
 * cffi reads the text between the cdef-begin and cdef-end markers (see
 * labkit/build.py), so that region holds only what cffi's parser accepts:
 * typedefs, enums, prototypes and `#define NAME <integer>`.  Everything the
 * Python side calls or maps lives here; the relay's internals stay in
 * native/src and are not part of the API.
 */
#ifndef LABKIT_H
#define LABKIT_H

#include <stddef.h>
#include <stdint.h>

/* cdef-begin */

/* ---- errors ------------------------------------------------------------ */

enum lk_error {
    LK_OK = 0,
    LK_ERR_CONFIG = -1,    /* a config field is invalid (detail says which) */
    LK_ERR_SYSTEM = -2,    /* a system call failed at start (detail has errno) */
    LK_ERR_TLS = -3,       /* certificate, key or OpenSSL set-up failed */
    LK_ERR_UNSUPPORTED = -4, /* the kernel cannot honour a requested switch */
    LK_ERR_NOMEM = -5,     /* a start-up pool could not be allocated */
    LK_ERR_BUSY = -6,      /* a relay (or load generator) already runs in this process */
    LK_ERR_CONNECT = -7,   /* load generator: target unreachable / handshake failed */
    LK_ERR_RETRY = -8,     /* counters: the writer kept changing them; read again */
};

/* Short fixed text for an lk_error code. */
const char *lk_strerror(int err);
/* Detail of the most recent failure on the calling thread ("" if none).  Each
 * thread has its own: read it on the thread whose call failed. */
const char *lk_last_error(void);

/* ---- the contract: switches, limits, counters --------------------------------
 * Each table below is the one declaration of its rows.  The relay's validation,
 * its counters and the Python side (config, CLI, dashboard, test matrix, plots;
 * through cffi) all read them, so a row added here appears everywhere. */

#define LK_MAX_WORKERS 64

/* Backends a switch applies to (bits). */
enum lk_backend { LK_BK_EPOLL = 1, LK_BK_URING = 2 };

/* Optimisation switches, one bit each, so an experiment can toggle one alone.
 * X(ID, backends, epoll default, uring default, requires (LK_SW_* bits, or 0),
 *   why it requires them, excludes (LK_SW_* bits that cannot be on with it, or 0),
 *   why it excludes them, what it needs from the kernel, what it does) */
#define LK_SWITCH_TABLE(X)                                                                 \
    X(BATCH, LK_BK_URING, 0, 1, 0, "", 0, "", "",                                          \
      "submissions of a loop pass go in with its wait: one io_uring_enter per pass")     \
    X(MULTISHOT, LK_BK_URING, 0, 1, LK_SW_PROVIDED_BUFFERS,                                \
      "the kernel picks a buffer for each completion", 0, "", "Linux 6.0 (multishot recv)",\
      "one multishot recv per connection, re-armed only when it ends")                   \
    X(PROVIDED_BUFFERS, LK_BK_URING, 0, 1, 0, "", 0, "",                                   \
      "Linux 5.19 (io_uring_register_buf_ring)",                                         \
      "receives land in a shared ring of provided buffers, not a buffer per connection")  \
    X(COALESCE, LK_BK_EPOLL | LK_BK_URING, 0, 1, 0, "", 0, "", "",                         \
      "all queued frames for a client leave in one vectored send, not one send per frame")\
    X(SQPOLL, LK_BK_URING, 0, 0, 0, "", LK_SW_DEFER_TASKRUN,                               \
      "its kernel thread runs the completion work, so there is none to defer (io_uring "   \
      "refuses the pair)", "Linux 5.11 (IORING_SETUP_SQPOLL)",                             \
      "a kernel thread polls the submission queue (it spins while busy)")                \
    X(DEFER_TASKRUN, LK_BK_URING, 0, 1, LK_SW_SINGLE_ISSUER,                               \
      "io_uring defers completion work only on a ring with one submitting thread", 0, "",  \
      "Linux 6.1 (IORING_SETUP_DEFER_TASKRUN)",                                          \
      "completion work runs when the worker waits, not as each segment lands: no "         \
      "interrupt of the worker per arriving packet")                                     \
    X(SINGLE_ISSUER, LK_BK_URING, 0, 1, 0, "", 0, "", "Linux 6.0 (IORING_SETUP_SINGLE_ISSUER)",\
      "the kernel may assume one thread submits (each worker owns its ring)")            \
    X(POLL_RECV, LK_BK_URING, 0, 0, LK_SW_MULTISHOT | LK_SW_PROVIDED_BUFFERS,              \
      "the multishot operation becomes a readiness poll; its receives pick provided buffers",\
      0, "", "Linux 5.13 (multishot poll)",                                              \
      "a multishot poll marks a connection readable and the pass's one recv drains it, "  \
      "instead of a receive the kernel re-runs as each segment lands")                    \
    X(BACKPRESSURE, LK_BK_EPOLL | LK_BK_URING, 0, 1, 0, "", 0, "", "",                     \
      "overload policy: stop reading a sender while its destination's queue is full "      \
      "(off: drop the oldest queued packet, as derper does)")                             \
    X(GATHER_WAIT, LK_BK_URING, 0, 0, 0, "", LK_SW_SQPOLL,                                 \
      "this wait publishes the pass's submissions itself, and an sqpoll ring's belong to " \
      "its kernel thread", "Linux 6.12 (IORING_FEAT_MIN_TIMEOUT)",                          \
      "a waiting worker sleeps until 32 completions are in, or 50 us passed with at least "\
      "one: fewer wake-ups under load, more latency (bench/modes.py shows both)")

#define LK_SWITCH_ENUM_(ID, ...) LK_SWI_##ID,
enum lk_switch_index { LK_SWITCH_TABLE(LK_SWITCH_ENUM_) LK_SWITCH__COUNT };
#define LK_SWITCH_BIT_(ID, ...) LK_SW_##ID = 1u << LK_SWI_##ID,
enum lk_switch { LK_SWITCH_TABLE(LK_SWITCH_BIT_) };

typedef struct lk_switch_info {
    const char *name;          /* "multishot": the config field and the CLI flag */
    uint32_t bit;              /* LK_SW_* */
    uint32_t backends;         /* LK_BK_* bits */
    int default_on[2];         /* per backend: [epoll, uring] */
    uint32_t requires;         /* LK_SW_* bits that must be on with it */
    const char *requires_why;
    uint32_t excludes;         /* LK_SW_* bits that must be off with it */
    const char *excludes_why;
    const char *kernel;        /* what it needs from the kernel ("" nothing special) */
    const char *help;
} lk_switch_info;

/* Integer config fields with a range.
 * X(field, minimum, maximum, default, unit, what it is) */
#define LK_LIMIT_TABLE(X)                                                                  \
    X(workers, 1, LK_MAX_WORKERS, 1, "threads", "data worker threads, one shard each")    \
    X(queue_depth, 1, 65536, 32, "packets", "per-destination queue length, each of 2")     \
    X(max_conns, 1, 1048576, 4096, "connections", "connection slots per worker")          \
    X(pool_packets, 64, 4294967295u, 16384, "buffers", "packet buffers per worker")    \
    X(accept_limit, 0, 1000000, 0, "connections/s",                                        \
      "connections admitted per second, as derper's --accept-connection-limit (0 = off)")  \
    X(accept_burst, 0, 1000000, 0, "connections",                                          \
      "connections admitted at once above the rate (0: one second's worth)")

#define LK_LIMIT_ENUM_(FIELD, ...) LK_LIMIT_##FIELD,
enum lk_limit_index { LK_LIMIT_TABLE(LK_LIMIT_ENUM_) LK_LIMIT__COUNT };

typedef struct lk_limit_info {
    const char *name;
    uint32_t min, max, default_value;
    const char *unit;
    const char *help;
} lk_limit_info;

/* Counters only grow; gauges go up and down (a gauge's `max` variant is a
 * high-water mark: summed over workers it is their maximum, not their sum).
 * X(ID, kind, group, unit, what it counts).  Append new rows at the end: the
 * shared-memory layout is a hash of this table, and readers refuse another. */
enum lk_counter_kind { LK_KIND_COUNTER = 0, LK_KIND_GAUGE = 1, LK_KIND_HIGH_WATER = 2 };

#define LK_COUNTER_TABLE(X)                                                                \
    X(LOOP_PASSES, COUNTER, "loop", "passes", "event-loop passes")                         \
    X(FRAMES_IN, COUNTER, "traffic", "frames", "DERP frames received")                     \
    X(FRAMES_OUT, COUNTER, "traffic", "frames", "DERP frames sent")                        \
    X(BYTES_IN, COUNTER, "traffic", "bytes",                                               \
      "bytes received by the socket calls (user TLS: ciphertext; kTLS: plaintext)")       \
    X(BYTES_OUT, COUNTER, "traffic", "bytes", "bytes handed to send calls (likewise)")     \
    X(PACKETS_IN, COUNTER, "traffic", "packets", "SendPacket / ForwardPacket accepted")    \
    X(PACKETS_FORWARDED, COUNTER, "traffic", "packets", "RecvPacket frames written")       \
    X(PACKET_BYTES_FORWARDED, COUNTER, "traffic", "bytes", "packet payload bytes written") \
    X(DROP_UNKNOWN_DEST, COUNTER, "drop", "packets", "no such destination")                \
    X(DROP_QUEUE_HEAD, COUNTER, "drop", "packets", "oldest packet of a full queue")        \
    X(DROP_QUEUE_TAIL, COUNTER, "drop", "packets", "refused: the way to its worker is full")\
    X(DROP_GONE, COUNTER, "drop", "packets", "queued for a connection that then closed")   \
    X(DROP_POOL_EMPTY, COUNTER, "drop", "packets", "no free packet buffer")                \
    X(DROP_INACTIVE_DUP, COUNTER, "drop", "packets", "to an inactive duplicate connection")\
    X(CONNS_ACCEPTED, COUNTER, "conn", "connections", "accepted")                          \
    X(CONNS_HANDSHAKED, COUNTER, "conn", "connections", "completed the DERP handshake")    \
    X(CONNS_CLOSED, COUNTER, "conn", "connections", "closed, for any reason")              \
    X(CLOSE_PROTOCOL, COUNTER, "close", "connections", "malformed frame or bad length")    \
    X(CLOSE_HANDSHAKE, COUNTER, "close", "connections", "bad ClientInfo, box, JSON or key")\
    X(CLOSE_TIMEOUT, COUNTER, "close", "connections", "handshake deadline")                \
    X(CLOSE_WRITE_TIMEOUT, COUNTER, "close", "connections", "write deadline or backlog")  \
    X(CLOSE_PEER, COUNTER, "close", "connections", "EOF or reset by the peer")             \
    X(CLOSE_MESH_DENIED, COUNTER, "close", "connections", "mesh frame without mesh key")   \
    X(CLOSE_TLS, COUNTER, "close", "connections", "TLS handshake or record error")         \
    X(CLOSE_HTTP, COUNTER, "close", "connections", "non-upgrade request answered")         \
    X(PINGS, COUNTER, "control", "frames", "Ping frames received")                         \
    X(KEEPALIVES, COUNTER, "control", "frames", "KeepAlive frames sent")                   \
    X(PEERGONE_SENT, COUNTER, "control", "frames", "PeerGone frames sent")                 \
    X(NOTHERE_SENT, COUNTER, "control", "frames", "PeerGone(NotHere) frames sent")         \
    X(UNKNOWN_FRAMES, COUNTER, "control", "frames", "frames of unknown type, skipped")     \
    X(SYS_READ, COUNTER, "syscall", "calls", "read/recv/recvmsg issued directly")          \
    X(SYS_WRITE, COUNTER, "syscall", "calls", "write/send")                                \
    X(SYS_WRITEV, COUNTER, "syscall", "calls", "writev/sendmsg")                           \
    X(SYS_EPOLL_WAIT, COUNTER, "syscall", "calls", "epoll_wait")                           \
    X(SYS_EPOLL_CTL, COUNTER, "syscall", "calls", "epoll_ctl")                             \
    X(SYS_IO_URING_ENTER, COUNTER, "syscall", "calls", "io_uring_enter")                   \
    X(SYS_ACCEPT, COUNTER, "syscall", "calls", "accept4")                                  \
    X(SYS_CLOSE, COUNTER, "syscall", "calls", "close")                                     \
    X(SYS_OTHER, COUNTER, "syscall", "calls", "setsockopt, eventfd writes, getrandom, ...")\
    X(SQES_SUBMITTED, COUNTER, "uring", "SQEs", "io_uring submissions prepared")           \
    X(CQES_REAPED, COUNTER, "uring", "CQEs", "io_uring completions handled")               \
    X(XSHARD_SENT, COUNTER, "xshard", "packets", "pushed to another worker's ring")        \
    X(XSHARD_RECEIVED, COUNTER, "xshard", "packets", "taken from another worker's ring")   \
    X(XSHARD_WAKEUPS, COUNTER, "xshard", "wake-ups", "sleeping workers woken")             \
    X(LOAD_SENT, COUNTER, "load", "packets", "load generator: packets sent")               \
    X(LOAD_RECEIVED, COUNTER, "load", "packets", "load generator: packets received")       \
    X(LOAD_BYTES_RECEIVED, COUNTER, "load", "bytes", "load generator: payload received")   \
    X(LOAD_PACE_MISSED, COUNTER, "load", "packets",                                        \
      "load generator: packets its rate asked for that it could not send (late or full)")  \
    X(CONNS_CURRENT, GAUGE, "conn", "connections", "open now")                             \
    X(QUEUE_DEPTH, GAUGE, "queue", "packets", "queued across this worker's connections")   \
    X(QUEUE_DEPTH_MAX, HIGH_WATER, "queue", "packets", "highest queue_depth seen")         \
    X(POOL_FREE, GAUGE, "pool", "buffers", "free packet buffers")                          \
    X(CONNS_KTLS, COUNTER, "conn", "connections", "whose TLS records the kernel took over")\
    X(POOL_SIZE, GAUGE, "pool", "buffers",                                                 \
      "buffers the pool holds in all (idle: pool_free == pool_size, so a leak shows)")    \
    X(CONNS_WEBSOCKET, COUNTER, "conn", "connections", "upgraded to DERP over WebSocket")  \
    X(CONNS_REFUSED, COUNTER, "conn", "connections",                                       \
      "closed at accept: over the accept limit (accept_limit, accept_burst)")             \
    X(CLOSE_WS_UNMASKED, COUNTER, "close", "connections", "WebSocket frame without a mask")\
    X(CLOSE_WS_OPCODE, COUNTER, "close", "connections",                                    \
      "WebSocket RSV bit, reserved opcode or text message")                              \
    X(CLOSE_WS_CONTROL, COUNTER, "close", "connections",                                   \
      "WebSocket control frame fragmented, over 125 bytes, or a bad Close")              \
    X(CLOSE_WS_FRAGMENT, COUNTER, "close", "connections",                                  \
      "WebSocket continuation without a message, or a message inside one")               \
    X(CLOSE_WS_OVERSIZE, COUNTER, "close", "connections", "WebSocket message over 1 MiB")  \
    X(CLOSE_WS_FLOOD, COUNTER, "close", "connections",                                     \
      "WebSocket control frames faster than 10/s after a burst of 100")                 \
    X(CLOSE_WS_CLOSED, COUNTER, "close", "connections", "WebSocket Close from the client") \
    X(WS_PINGS, COUNTER, "control", "frames", "WebSocket Pings received")                  \
    X(RECV_DATA, COUNTER, "recv", "receives",                                              \
      "receive calls or completions that returned data (bytes_in / recv_data: their size)")\
    X(RECV_ARMED, COUNTER, "uring", "SQEs", "receive (or readiness poll) SQEs armed")      \
    X(PBUF_REFILLS, COUNTER, "uring", "buffers", "provided buffers handed back to the ring")\
    X(PBUF_EMPTY, COUNTER, "uring", "completions",                                         \
      "receives the kernel ended for want of a provided buffer (ENOBUFS)")                 \
    X(RECV_PARKED, COUNTER, "uring", "completions",                                        \
      "receive completions left for a later pass (the pass's packet budget was spent)")    \
    X(RECV_HELD, COUNTER, "uring", "completions",                                          \
      "receives that completed for a paused client, held until it resumes (backpressure)")\
    X(SENDS_HELD, COUNTER, "uring", "sends",                                               \
      "sends prepared, then held for the pass's one io_uring_enter (batch)")              \
    X(READ_PAUSES, COUNTER, "overload", "pauses",                                          \
      "backpressure: reading a client stopped because a destination of its was full")     \
    X(READS_PAUSED, GAUGE, "overload", "connections", "backpressure: clients not read now")

#define LK_COUNTER_ENUM_(ID, ...) LK_C_##ID,
enum lk_counter { LK_COUNTER_TABLE(LK_COUNTER_ENUM_) LK_C__COUNT };

typedef struct lk_counter_info {
    const char *name;          /* "packets_forwarded" */
    int kind;                  /* enum lk_counter_kind */
    const char *group;         /* "traffic", "drop", "close", "syscall", ... */
    const char *unit;
    const char *help;
} lk_counter_info;

extern const lk_switch_info lk_switches[LK_SWITCH__COUNT];
extern const lk_limit_info lk_limits[LK_LIMIT__COUNT];
extern const lk_counter_info lk_counters[LK_C__COUNT];

/* ---- relay configuration -------------------------------------------------- */

enum lk_io { LK_IO_EPOLL = 0, LK_IO_URING = 1 };
enum lk_tls { LK_TLS_OFF = 0, LK_TLS_USER = 1, LK_TLS_KTLS = 2 };

typedef struct lk_relay_config {
    int listen_fd;            /* bound + listening TCP socket, made by the host */
    int ready_fd;             /* "ready\n" is written here once serving; -1 = none */
    int io;                   /* enum lk_io */
    int tls;                  /* enum lk_tls */
    int workers;              /* 1 .. LK_MAX_WORKERS */
    uint32_t switches;        /* LK_SW_* bits (LK_SWITCH_TABLE) */
    int pin_cpus;             /* pin worker i to CPU (i mod ncpu) */
    const char *cert_file;    /* PEM, TLS modes only */
    const char *key_file;     /* PEM, TLS modes only */
    uint8_t private_key[32];  /* relay node key (Curve25519, clamped) */
    int has_mesh_key;
    uint8_t mesh_key[32];
    const char *shm_name;     /* POSIX shm name for counters ("/labkit-…"); NULL = none */
    uint32_t handshake_timeout_ms; /* ServerKey write + ClientInfo read deadline (10 000) */
    uint32_t write_timeout_ms;     /* per-destination write deadline (2 000; 0 = none) */
    uint32_t keepalive_ms;         /* KeepAlive period (60 000), plus jitter in [0, 5 s) */
    uint32_t queue_depth;          /* LK_LIMIT_TABLE: per-destination queue, each of 2 */
    uint32_t max_conns;            /* LK_LIMIT_TABLE: connection slots per worker */
    uint32_t pool_packets;         /* LK_LIMIT_TABLE: packet buffers per worker */
    uint32_t accept_limit;         /* LK_LIMIT_TABLE: connections admitted per second (0 off) */
    uint32_t accept_burst;         /* LK_LIMIT_TABLE: above the rate at once (0: the rate) */
} lk_relay_config;

/* Fill a config with derper-like defaults (fds -1, epoll, TLS off, the
 * LK_LIMIT_TABLE defaults, no switches). */
void lk_relay_config_defaults(lk_relay_config *cfg);
/* Check every value of cfg against the contract (limits, the switches' backends
 * and their requirements), without touching its descriptors.  LK_OK, or
 * LK_ERR_CONFIG with lk_last_error() holding one line per problem:
 * "FIELD<TAB>WHAT IS WRONG<TAB>WHAT TO DO", where the fix names fields as
 * {field} or {field=value} (labkit/problems.py renders both forms). */
int lk_relay_config_check(const lk_relay_config *cfg);

/* Run the relay until lk_relay_stop(); blocks.  Returns LK_OK after a clean
 * stop or an lk_error (then lk_last_error() says what to change). */
int lk_relay_run(const lk_relay_config *cfg);
/* Ask a running relay to stop.  Async-signal-safe, callable from any thread. */
void lk_relay_stop(void);
/* Can this kernel run an io_uring worker with these LK_SW_* switches?  Sets up (and
 * tears down) a ring as a worker would: LK_OK, or LK_ERR_UNSUPPORTED / LK_ERR_SYSTEM
 * with lk_last_error() naming what it refused. */
int lk_io_uring_probe(uint32_t switches);

/* ---- shared-memory counters ------------------------------------------------
 * The relay (and load generator) publish per-worker counters to a POSIX shm
 * region: one header, then n_workers lk_worker_counters.  The relay's slots
 * are its data workers in order, then its acceptor thread (connection set-up);
 * the load generator's are its threads.  Each worker copies
 * its private counters out under a seqlock once per loop pass, so a reader
 * in another process gets consistent snapshots without asking the relay.
 */
#define LK_SHM_MAGIC 1279476564
#define LK_MAX_COUNTERS 96
#define LK_HIST_BUCKETS 16

/* The counter table's fingerprint (names and kinds, in order): the relay puts it
 * in its region's header, and a reader built from another table refuses it. */
uint32_t lk_counters_layout(void);

enum lk_shm_role { LK_ROLE_RELAY = 1, LK_ROLE_LOAD = 2 };

typedef struct lk_shm_header {
    uint32_t magic;           /* LK_SHM_MAGIC */
    uint32_t layout;          /* lk_counters_layout() of the writer */
    uint32_t header_size;     /* sizeof(lk_shm_header) */
    uint32_t worker_size;     /* sizeof(lk_worker_counters) */
    uint32_t n_workers;
    uint32_t n_counters;      /* LK_C__COUNT of the writer */
    uint32_t role;            /* enum lk_shm_role */
    uint32_t reserved;
    int64_t pid;
    uint64_t start_ns;        /* CLOCK_MONOTONIC at creation */
} lk_shm_header;

typedef struct lk_worker_counters {
    uint64_t seq;             /* seqlock: odd while the worker writes */
    uint64_t ns;              /* CLOCK_MONOTONIC of this publication */
    uint64_t tid;             /* the publishing thread's kernel TID (for perf -t, /proc) */
    uint64_t c[LK_MAX_COUNTERS];
    uint64_t completions_hist[LK_HIST_BUCKETS]; /* CQEs per io_uring_enter, log2 buckets */
} lk_worker_counters;

/* Check a mapped region: LK_OK, or LK_ERR_CONFIG with lk_last_error() saying
 * what does not match (magic, layout version, sizes). */
int lk_counters_check(const void *base, size_t len);
/* Copy worker `w`'s counters consistently (seqlock retry). LK_OK or an error. */
int lk_counters_read(const void *base, size_t len, uint32_t w, lk_worker_counters *out);

/* ---- pure parsers, exposed for unit tests and fuzzing ---------------------- */

enum lk_http_method { LK_M_GET = 0, LK_M_HEAD = 1, LK_M_POST = 2, LK_M_OTHER = 3 };
enum lk_http_route {
    LK_ROUTE_DERP = 0,        /* /derp */
    LK_ROUTE_PROBE = 1,       /* /derp/probe, /derp/latency-check */
    LK_ROUTE_GENERATE_204 = 2,
    LK_ROUTE_OTHER = 3,
};

typedef struct lk_http_request {
    int method;               /* enum lk_http_method */
    int route;                /* enum lk_http_route */
    int upgrade;              /* Upgrade is derp, or websocket without a derp subprotocol */
    int websocket;            /* a real WebSocket (subprotocol derp) */
    int ws_ok;                /* ... and a valid RFC 6455 handshake: ws_key holds the key */
    char ws_key[25];
    int fast_start;           /* Derp-Fast-Start: 1 */
    int not_ideal;            /* non-empty Ideal-Node header */
    int challenge_ok;         /* X-Tailscale-Challenge present and valid */
    char challenge[65];
} lk_http_request;

/* Parse an HTTP/1.1 request head from the start of data.  Returns the number
 * of bytes the head occupies (surplus DERP bytes start there), 0 if the head
 * is not complete yet, or -1 if it is malformed or longer than max_head. */
int lk_http_parse_request(const uint8_t *data, size_t len, size_t max_head,
                          lk_http_request *req);
/* The full response for a request that is not a DERP upgrade (or is one
 * without a valid Upgrade: 426).  Returns its length, or 0 if cap is short. */
size_t lk_http_build_response(const lk_http_request *req, char *out, size_t cap);
/* The 101 Switching Protocols head for a DERP upgrade. */
size_t lk_http_build_101(const uint8_t public_key[32], char *out, size_t cap);
/* The 101 for DERP over WebSocket (Sec-WebSocket-Accept from the request's key). */
size_t lk_http_build_ws_101(const char *ws_key, char *out, size_t cap);

typedef struct lk_client_info {
    int64_t version;
    int can_ack_pings;
    int is_prober;
    int has_mesh_key;
    uint8_t mesh_key[32];
} lk_client_info;

/* Decode ClientInfo JSON as Go does: an object (or null), keys matched
 * case-insensitively, unknown keys ignored, meshKey exactly 64 hex digits.
 * LK_OK or LK_ERR_CONFIG (malformed). */
int lk_client_info_parse(const char *json, size_t len, lk_client_info *out);

/* Frame stream parser test surface: feed `data` in `chunk`-byte pieces to
 * the relay's streaming parser with its steady-state per-type length rules
 * (docs/protocol.md §3.3) and record each frame it completes. */
typedef struct lk_parsed_frame {
    uint8_t type;
    uint32_t len;
    uint32_t fnv1a;           /* FNV-1a of the payload (0x811c9dc5 seed); 0 if skipped */
    int skipped;              /* payload streamed past, not buffered */
} lk_parsed_frame;

/* Returns the number of frames completed (<= max_out), or -1 - n when frame
 * n (0-based) breaks a length rule: the relay would close the connection. */
int lk_test_parse_stream(const uint8_t *data, size_t len, size_t chunk,
                         lk_parsed_frame *out, size_t max_out);

/* WebSocket reader test surface: feed `data` in `chunk`-byte pieces to the
 * reader with the relay's rules (from_client: frames must be masked) or a
 * client's (from the relay: unmasked), and summarise what it delivered. */
typedef struct lk_ws_parsed {
    uint64_t data_bytes;      /* binary payload delivered, unmasked */
    uint32_t data_fnv1a;      /* FNV-1a of that payload (0x811c9dc5 seed) */
    uint32_t pings, pongs, closes;
    uint8_t last_ping[125];   /* body of the last Ping */
    uint32_t last_ping_len;
    int violation;            /* 0, or why the stream broke the rules (1..5) */
} lk_ws_parsed;

/* 0 when every byte was valid, -1 on a violation (out->violation says which). */
int lk_test_ws_parse(const uint8_t *data, size_t len, size_t chunk, int from_client,
                     lk_ws_parsed *out);

/* ---- load generator ----------------------------------------------------------
 * P sender->receiver pairs of real DERP clients against any relay.  Payloads
 * carry a sequence number and a CLOCK_MONOTONIC send stamp, so the receiver
 * measures loss and one-way latency (same host clock).  Echo mode: the
 * receiver sends each packet back and the sender measures round trips. */

enum lk_load_mode { LK_LOAD_THROUGHPUT = 0, LK_LOAD_ECHO = 1 };
/* How DERP travels: raw after `Upgrade: DERP`, or in WebSocket binary messages. */
enum lk_transport { LK_TRANSPORT_RAW = 0, LK_TRANSPORT_WEBSOCKET = 1 };
/* How a sender hands packets to its socket.  Batched: many SendPacket frames laid
 * out in one buffer and written with one send() (the generator stays cheap, the
 * relay sees large segments).  Frame-per-write: one send() per frame, each frame
 * stamped when it is written, as a real client sends one WireGuard packet at a time
 * (Tailscale's client, derp-scale-test); with TLS, one record per frame. */
enum lk_load_sender { LK_SENDER_BATCHED = 0, LK_SENDER_FRAME_PER_WRITE = 1 };

typedef struct lk_load_config {
    const char *host;         /* relay address (numeric IPv4/IPv6 or name) */
    uint16_t port;
    int tls;                  /* enum lk_tls */
    int insecure;             /* TLS: do not verify the relay's certificate */
    const char *ca_file;      /* TLS: trust this PEM instead of the system store */
    int mode;                 /* enum lk_load_mode */
    int pairs;                /* sender/receiver pairs (2 connections each) */
    uint32_t size;            /* packet bytes (>= 16: seq + stamp), <= 65536 */
    double rate_mbps;         /* offered load over all senders; 0 = unpaced */
    double duration_s;        /* measured window */
    double warmup_s;          /* sent first, excluded from every figure */
    int threads;              /* event-loop threads, connections spread over them */
    int pin_cpus;             /* pin thread i to CPU (first_cpu + i) mod ncpu */
    int first_cpu;
    const char *shm_name;     /* counters for live plots; NULL = none */
    int ready_fd;             /* "ready\n" once every pair has handshaked; -1 = none */
    int transport;            /* enum lk_transport */
    int sender;               /* enum lk_load_sender */
} lk_load_config;

#define LK_LOAD_PCTS 7

typedef struct lk_load_result {
    uint64_t sent;            /* packets sent in the measured window */
    uint64_t received;        /* of those, received (one-way) or echoed back (echo) */
    uint64_t lost;            /* sent - received after the drain period */
    uint64_t bytes_received;  /* packet payload bytes of those */
    double seconds;           /* measured window actually achieved */
    double mbps;              /* payload megabits per second received */
    double pps;               /* packets per second received */
    double latency_us[LK_LOAD_PCTS]; /* p50 p90 p99 p99.9 min max mean, microseconds */
    uint64_t latency_samples;
    uint64_t handshake_failures;
    uint64_t pace_missed;     /* paced: packets of the window's rate never sent (woke late, or
                               * the socket stayed full past the burst allowance) */
} lk_load_result;

void lk_load_config_defaults(lk_load_config *cfg);
/* Connect, run warm-up + window, drain, report.  Blocks.  LK_OK, or an
 * lk_error with lk_last_error() naming the cause (LK_ERR_CONNECT for an
 * unreachable relay or a failed handshake). */
int lk_load_run(const lk_load_config *cfg, lk_load_result *out);
/* Stop a running load early (the window ends now).  Async-signal-safe. */
void lk_load_stop(void);

/* cdef-end */

#endif /* LABKIT_H */

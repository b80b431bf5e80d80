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
    LK_ERR_BUSY = -6,      /* a relay already runs in this process */
    LK_ERR_CONNECT = -7,   /* load generator: target unreachable / handshake failed */
};

/* Short fixed text for an lk_error code. */
const char *lk_strerror(int err);
/* Detail of the most recent failure in this process ("" if none). */
const char *lk_last_error(void);

/* ---- relay configuration -------------------------------------------------- */

enum lk_io { LK_IO_EPOLL = 0, LK_IO_URING = 1 };
enum lk_tls { LK_TLS_OFF = 0, LK_TLS_USER = 1, LK_TLS_KTLS = 2 };

/* Each optimisation is its own bit, so an experiment can toggle one alone. */
enum lk_switch {
    LK_SW_BATCH = 1,            /* uring: one io_uring_enter per loop pass */
    LK_SW_MULTISHOT = 2,        /* uring: multishot recv */
    LK_SW_PROVIDED_BUFFERS = 4, /* uring: provided buffer ring */
    LK_SW_COALESCE = 8,         /* both: queued frames leave in one send */
    LK_SW_SQPOLL = 16,          /* uring: kernel SQ polling thread */
    LK_SW_DEFER_TASKRUN = 32,   /* uring: IORING_SETUP_DEFER_TASKRUN */
    LK_SW_SINGLE_ISSUER = 64,   /* uring: IORING_SETUP_SINGLE_ISSUER */
    LK_SW_PIN_CPUS = 128,       /* pin worker i to CPU (i mod ncpu) */
    LK_SW_ROUND_ROBIN = 256,    /* assign connections round-robin, not by key hash */
};

typedef struct lk_relay_config {
    int listen_fd;            /* bound + listening TCP socket, made by the host */
    int ready_fd;             /* "ready\n" is written here once serving; -1 = none */
    int io;                   /* enum lk_io */
    int tls;                  /* enum lk_tls */
    int workers;              /* 1 .. LK_MAX_WORKERS */
    uint32_t switches;        /* enum lk_switch bits */
    const char *cert_file;    /* PEM, TLS modes only */
    const char *key_file;     /* PEM, TLS modes only */
    uint8_t private_key[32];  /* relay node key (Curve25519, clamped) */
    int has_mesh_key;
    uint8_t mesh_key[32];
    const char *shm_name;     /* POSIX shm name for counters ("/labkit-…"); NULL = none */
    uint32_t handshake_timeout_ms; /* ServerKey write + ClientInfo read deadline (10 000) */
    uint32_t write_timeout_ms;     /* per-destination write deadline (2 000; 0 = none) */
    uint32_t keepalive_ms;         /* KeepAlive period (60 000), plus jitter in [0, 5 s) */
    uint32_t queue_depth;          /* per-destination queue length, each of 2 (32) */
    uint32_t max_conns;            /* connection slots per worker (pool size) */
    uint32_t pool_packets;         /* packet buffers per worker (pool size) */
} lk_relay_config;

/* Fill a config with derper-like defaults (fds -1, epoll, TLS off, 1 worker). */
void lk_relay_config_defaults(lk_relay_config *cfg);

/* Run the relay until lk_relay_stop(); blocks.  Returns LK_OK after a clean
 * stop or an lk_error (then lk_last_error() says what to change). */
int lk_relay_run(const lk_relay_config *cfg);
/* Ask a running relay to stop.  Async-signal-safe, callable from any thread. */
void lk_relay_stop(void);

/* ---- shared-memory counters ------------------------------------------------
 * The relay (and load generator) publish per-worker counters to a POSIX shm
 * region: one header, then n_workers lk_worker_counters.  The relay's slots
 * are its data workers in order, then its acceptor thread (connection set-up);
 * the load generator's are its threads.  Each worker copies
 * its private counters out under a seqlock once per loop pass, so a reader
 * in another process gets consistent snapshots without asking the relay.
 */
#define LK_SHM_MAGIC 1279476564
#define LK_SHM_LAYOUT 4
#define LK_MAX_WORKERS 64
#define LK_MAX_COUNTERS 96
#define LK_HIST_BUCKETS 16

/* Counters (LK_C_*) only grow; gauges (LK_G_*) go up and down.  Append new
 * names at the end and bump LK_SHM_LAYOUT: readers refuse a mismatch. */
enum lk_counter {
    LK_C_LOOP_PASSES = 0,
    LK_C_FRAMES_IN,
    LK_C_FRAMES_OUT,
    LK_C_BYTES_IN,             /* bytes received by the relay's socket calls (user TLS:
                                  ciphertext; kTLS: plaintext the kernel decrypted) */
    LK_C_BYTES_OUT,            /* bytes handed to send calls (likewise) */
    LK_C_PACKETS_IN,           /* SendPacket / ForwardPacket frames accepted */
    LK_C_PACKETS_FORWARDED,    /* RecvPacket frames written to a receiver */
    LK_C_PACKET_BYTES_FORWARDED, /* packet payload bytes in those RecvPackets */
    LK_C_DROP_UNKNOWN_DEST,
    LK_C_DROP_QUEUE_HEAD,
    LK_C_DROP_QUEUE_TAIL,
    LK_C_DROP_GONE,            /* queued for a connection that then closed */
    LK_C_DROP_POOL_EMPTY,      /* no free packet buffer */
    LK_C_DROP_INACTIVE_DUP,
    LK_C_CONNS_ACCEPTED,
    LK_C_CONNS_HANDSHAKED,
    LK_C_CONNS_CLOSED,
    LK_C_CLOSE_PROTOCOL,       /* malformed frame or bad length */
    LK_C_CLOSE_HANDSHAKE,      /* bad ClientInfo / box / JSON / key */
    LK_C_CLOSE_TIMEOUT,        /* handshake deadline */
    LK_C_CLOSE_WRITE_TIMEOUT,
    LK_C_CLOSE_PEER,           /* EOF or reset by the peer */
    LK_C_CLOSE_MESH_DENIED,    /* mesh-only frame without the mesh key */
    LK_C_CLOSE_TLS,            /* TLS handshake or record error */
    LK_C_CLOSE_HTTP,           /* non-upgrade HTTP request answered and closed */
    LK_C_PINGS,
    LK_C_KEEPALIVES,
    LK_C_PEERGONE_SENT,
    LK_C_NOTHERE_SENT,
    LK_C_UNKNOWN_FRAMES,
    LK_C_SYS_READ,             /* read/recv/recvmsg issued directly */
    LK_C_SYS_WRITE,            /* write/send */
    LK_C_SYS_WRITEV,           /* writev/sendmsg */
    LK_C_SYS_EPOLL_WAIT,
    LK_C_SYS_EPOLL_CTL,
    LK_C_SYS_IO_URING_ENTER,
    LK_C_SYS_ACCEPT,
    LK_C_SYS_CLOSE,
    LK_C_SYS_OTHER,            /* setsockopt, eventfd writes, timer reads, … */
    LK_C_SQES_SUBMITTED,
    LK_C_CQES_REAPED,
    LK_C_XSHARD_SENT,          /* packets pushed to another worker's ring */
    LK_C_XSHARD_RECEIVED,
    LK_C_XSHARD_WAKEUPS,
    LK_C_LOAD_SENT,            /* load generator: packets sent */
    LK_C_LOAD_RECEIVED,        /* load generator: packets received */
    LK_C_LOAD_BYTES_RECEIVED,  /* load generator: payload bytes received */
    LK_G_CONNS_CURRENT,
    LK_G_QUEUE_DEPTH,          /* packets queued across this worker's conns */
    LK_G_QUEUE_DEPTH_MAX,
    LK_G_POOL_FREE,
    LK_C_CONNS_KTLS,           /* connections whose TLS records the kernel took over */
    LK_G_POOL_SIZE,            /* buffers the worker's pool holds in all; an idle relay
                                  has pool_free == pool_size, so a leak shows */
    LK_C__COUNT
};

enum lk_shm_role { LK_ROLE_RELAY = 1, LK_ROLE_LOAD = 2 };

typedef struct lk_shm_header {
    uint32_t magic;           /* LK_SHM_MAGIC */
    uint32_t layout;          /* LK_SHM_LAYOUT */
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
    int websocket;            /* a real WebSocket (subprotocol derp): not supported */
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
 * (derp-protocol.md 7.7) and record each frame it completes. */
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

/* ---- load generator ----------------------------------------------------------
 * P sender->receiver pairs of real DERP clients against any relay.  Payloads
 * carry a sequence number and a CLOCK_MONOTONIC send stamp, so the receiver
 * measures loss and one-way latency (same host clock).  Echo mode: the
 * receiver sends each packet back and the sender measures round trips. */

enum lk_load_mode { LK_LOAD_THROUGHPUT = 0, LK_LOAD_ECHO = 1 };

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

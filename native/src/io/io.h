/* io.h — the seam between the relay core and an I/O backend.
 *
 * A backend (epoll, io_uring) owns the kernel side: accepting, receiving,
 * sending, closing, and every other socket call (TCP_NODELAY, kTLS installation,
 * removing peeked bytes).  It is the only code that touches a socket, so the
 * syscall counters are complete.  It hands received bytes to the core with
 * lk_core_received() and asks the core what to send with lk_core_gather();
 * the core asks it for socket work only through lk_io_ops.  Readiness (epoll)
 * and completion (io_uring) models both fit: epoll calls gather/sent inside one
 * flush, io_uring calls gather when it queues a send and sent when it
 * completes.  When an entry point returns, every connection is either alive or
 * closing (the core never leaves one half-closed for the backend to find). */
#ifndef LK_IO_H
#define LK_IO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

struct lk_worker;
struct lk_conn;
struct lk_ktls_secrets;

typedef struct lk_io_ops {
    const char *name;
    /* Create the worker's instance; the worker accepts on relay->listen_fd
     * when it is the acceptor. */
    int (*init)(struct lk_worker *w);
    void (*destroy)(struct lk_worker *w);
    /* Start receiving on a new connection. */
    int (*add_conn)(struct lk_worker *w, struct lk_conn *c);
    /* The core queued output for c: send now or when the socket allows. */
    void (*flush)(struct lk_worker *w, struct lk_conn *c);
    /* Backpressure: stop (paused 1) or resume (0) reading c; c->read_paused already
     * says which.  Bytes the kernel already handed over are still delivered. */
    void (*set_paused)(struct lk_worker *w, struct lk_conn *c, int paused);
    /* Stop watching c without closing it (it moves to another thread). */
    void (*detach)(struct lk_worker *w, struct lk_conn *c);
    /* Tear down c's kernel side; call lk_core_release() once nothing refers to it. */
    void (*close_conn)(struct lk_worker *w, struct lk_conn *c);
    /* One loop pass: wait up to timeout_ms (-1 forever) and dispatch. */
    int (*wait)(struct lk_worker *w, int timeout_ms);
    /* Wake the worker from another thread or a signal handler. */
    void (*wake)(struct lk_worker *w);
    /* Close a descriptor no connection took (no free slot on the adopting worker). */
    void (*discard_fd)(struct lk_worker *w, int fd);
    /* kTLS handshake (the acceptor's backend only; NULL elsewhere): remove n bytes
     * already looked at with MSG_PEEK (0, or -1 with errno), and hand the record
     * layer to the kernel (0, or -1 with the reason in `why`). */
    int (*ktls_consume)(struct lk_worker *w, struct lk_conn *c, size_t n);
    int (*ktls_install)(struct lk_worker *w, struct lk_conn *c,
                        const struct lk_ktls_secrets *secrets, char *why, size_t cap);
} lk_io_ops;

extern const lk_io_ops lk_io_epoll;
extern const lk_io_ops lk_io_uring;

/* The listening socket (listener.c): LK_OK if fd is a TCP socket; make it non-blocking. */
int lk_io_listener_check(int fd);
int lk_io_listener_nonblocking(int fd);

/* ---- the core's entry points for backends (relay/conns.c) ---- */
struct sockaddr_storage;
/* A connection the acceptor accepted (TCP_NODELAY already set): 0, or -1 when no
 * connection slot is free (the backend closes fd). */
int lk_core_accepted(struct lk_worker *w, int fd, const struct sockaddr_storage *addr);
/* When c->ktls_peek is set the backend received with MSG_PEEK and the core
 * removes from the socket what it used, through ktls_consume (only the epoll
 * acceptor runs TLS handshakes, so only it needs to know). */
void lk_core_received(struct lk_worker *w, struct lk_conn *c, const uint8_t *data, size_t n);
/* EOF (err 0) or a receive/send error (err = errno): close c. */
void lk_core_io_error(struct lk_worker *w, struct lk_conn *c, int err);
/* Fill iov with what c should send next; returns the count (0: nothing).
 * `max` 1 gives the classic one-frame-per-send writer. */
int lk_core_gather(struct lk_worker *w, struct lk_conn *c, struct iovec *iov, int max);
/* n bytes of the last gathered iov were sent. */
void lk_core_sent(struct lk_worker *w, struct lk_conn *c, size_t n);
/* The kernel holds nothing of c any more: its slot is free. */
void lk_core_release(struct lk_worker *w, struct lk_conn *c);

#endif

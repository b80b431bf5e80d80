/* io_epoll.c — the classic readiness backend: non-blocking sockets,
 * level-triggered epoll, one recv per readiness event, and a writer that
 * sends one frame per send() unless the `coalesce` switch gathers all queued
 * frames into one sendmsg().  Every syscall is counted by kind. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/common.h"
#include "io/io.h"
#include "relay/state.h"
#include "tls/ktls.h"

#define EP_EVENTS 256
#define ACCEPT_BURST 64
/* epoll tokens that are not connections (connections use slot | gen << 32) */
#define TOKEN_LISTEN (UINT64_MAX - 1)
#define TOKEN_WAKE (UINT64_MAX - 2)
#define TOKEN_STOP (UINT64_MAX - 3)

typedef struct ep_state {
    int epfd;
    int wake_fd;
    int coalesce;
    struct epoll_event events[EP_EVENTS];
} ep_state;

static int ep_ctl(lk_worker *w, int op, int fd, uint32_t events, uint64_t token)
{
    ep_state *s = w->io_state;
    struct epoll_event ev = {.events = events, .data.u64 = token};
    LK_COUNT(w, SYS_EPOLL_CTL);
    return epoll_ctl(s->epfd, op, fd, &ev);
}

static void ep_destroy(lk_worker *w)
{
    ep_state *s = w->io_state;
    if (s->epfd >= 0)
        close(s->epfd);
    if (s->wake_fd >= 0)
        close(s->wake_fd);
    free(s);
    w->io_state = NULL;
}

static int ep_init(lk_worker *w)
{
    ep_state *s = calloc(1, sizeof *s);
    if (!s)
        return lk_fail(LK_ERR_NOMEM, "no memory for epoll state");
    w->io_state = s;
    s->coalesce = (w->relay->cfg.switches & LK_SW_COALESCE) != 0;
    s->epfd = epoll_create1(EPOLL_CLOEXEC);
    s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->epfd < 0 || s->wake_fd < 0)
        return lk_fail(LK_ERR_SYSTEM, "epoll_create1/eventfd: %s", strerror(errno));
    if (ep_ctl(w, EPOLL_CTL_ADD, w->relay->stop_fd, EPOLLIN, TOKEN_STOP) != 0 ||
        ep_ctl(w, EPOLL_CTL_ADD, s->wake_fd, EPOLLIN, TOKEN_WAKE) != 0)
        return lk_fail(LK_ERR_SYSTEM, "epoll_ctl: %s", strerror(errno));
    if (w->acceptor && ep_ctl(w, EPOLL_CTL_ADD, w->relay->cfg.listen_fd, EPOLLIN, TOKEN_LISTEN) != 0)
        return lk_fail(LK_ERR_SYSTEM, "epoll_ctl(listen): %s", strerror(errno));
    return LK_OK;
}

static int ep_add_conn(lk_worker *w, lk_conn *c)
{
    return ep_ctl(w, EPOLL_CTL_ADD, c->fd, EPOLLIN, lk_conn_token(c));
}

/* The interest set c needs now: EPOLLIN unless backpressure paused it, EPOLLOUT while
 * a send waits for room. */
static void update_events(lk_worker *w, lk_conn *c)
{
    uint32_t want = (c->read_paused ? 0 : EPOLLIN) | (c->send_busy ? EPOLLOUT : 0);
    ep_ctl(w, EPOLL_CTL_MOD, c->fd, want, lk_conn_token(c));
}

static void set_want_write(lk_worker *w, lk_conn *c, int want)
{
    if (c->send_busy == want)
        return;
    c->send_busy = (uint8_t)want;
    update_events(w, c);
}

static void ep_set_paused(lk_worker *w, lk_conn *c, int paused)
{
    (void)paused;  /* c->read_paused already says it */
    update_events(w, c);
}

/* Send until the socket is full or nothing is left. */
static void ep_send(lk_worker *w, lk_conn *c)
{
    ep_state *s = w->io_state;
    struct iovec iov[LK_TX_MAX + 1];
    for (;;) {
        int n = lk_core_gather(w, c, iov, s->coalesce ? LK_TX_MAX + 1 : 1);
        if (n == 0)
            break;
        size_t total = 0;
        for (int i = 0; i < n; i++)
            total += iov[i].iov_len;
        ssize_t r;
        if (n == 1) {
            LK_COUNT(w, SYS_WRITE);
            r = send(c->fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
        } else {
            struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)n};
            LK_COUNT(w, SYS_WRITEV);
            r = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
        }
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                set_want_write(w, c, errno == EAGAIN);
                if (errno == EAGAIN)
                    return;
                continue;
            }
            lk_core_io_error(w, c, errno);
            return;
        }
        lk_core_sent(w, c, (size_t)r);
        if (!lk_conn_alive(c))
            return;
        if ((size_t)r < total) {
            set_want_write(w, c, 1);  /* the socket buffer is full */
            return;
        }
    }
    set_want_write(w, c, 0);
}

static void ep_flush(lk_worker *w, lk_conn *c)
{
    if (!c->send_busy)  /* otherwise EPOLLOUT will call ep_send */
        ep_send(w, c);
}

static void ep_detach(lk_worker *w, lk_conn *c)
{
    ep_ctl(w, EPOLL_CTL_DEL, c->fd, 0, 0);
}

static void ep_close_conn(lk_worker *w, lk_conn *c)
{
    LK_COUNT(w, SYS_CLOSE);
    close(c->fd);  /* also removes it from the epoll set */
    c->fd = -1;
    lk_core_release(w, c);
}

static void ep_discard_fd(lk_worker *w, int fd)
{
    LK_COUNT(w, SYS_CLOSE);
    close(fd);
}

/* kTLS handshake on the acceptor: the records OpenSSL took leave the socket. */
static int ep_ktls_consume(lk_worker *w, lk_conn *c, size_t n)
{
    int calls = lk_ktls_consume(c->fd, n, w->plain, LK_PLAIN_LEN);
    LK_COUNT_N(w, SYS_READ, calls >= 0 ? (uint64_t)calls : 1);
    return calls < 0 ? -1 : 0;
}

static int ep_ktls_install(lk_worker *w, lk_conn *c, const lk_ktls_secrets *s, char *why,
                           size_t cap)
{
    LK_COUNT_N(w, SYS_OTHER, 3);  /* TCP_ULP, TLS_TX, TLS_RX */
    return lk_ktls_install(c->fd, s->server, s->client, s->len, why, cap);
}

static void ep_accept(lk_worker *w)
{
    for (int i = 0; i < ACCEPT_BURST; i++) {
        struct sockaddr_storage sa;
        socklen_t len = sizeof sa;
        LK_COUNT(w, SYS_ACCEPT);
        int fd = accept4(w->relay->cfg.listen_fd, (struct sockaddr *)&sa, &len,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE)
                lk_log("worker %u: accept: %s (raise the open-file limit)", w->index,
                       strerror(errno));
            return;
        }
        /* frames are small and latency matters: no Nagle delay */
        int one = 1;
        LK_COUNT(w, SYS_OTHER);
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (lk_core_accepted(w, fd, &sa) != 0)
            ep_discard_fd(w, fd);  /* no free slot */
    }
}

static void ep_readable(lk_worker *w, lk_conn *c)
{
    LK_COUNT(w, SYS_READ);
    /* kTLS handshake (acceptor only): look, and let the core take what it used */
    ssize_t r = recv(c->fd, w->rbuf, w->rbuf_len, c->ktls_peek ? MSG_PEEK : 0);
    if (r > 0) {
        LK_COUNT(w, RECV_DATA);
        lk_core_received(w, c, w->rbuf, (size_t)r);
    } else if (r == 0)
        lk_core_io_error(w, c, 0);
    else if (errno != EAGAIN && errno != EINTR)
        lk_core_io_error(w, c, errno);
}

static int ep_wait(lk_worker *w, int timeout_ms)
{
    ep_state *s = w->io_state;
    LK_COUNT(w, SYS_EPOLL_WAIT);
    int n = epoll_wait(s->epfd, s->events, EP_EVENTS, timeout_ms);
    w->now = lk_now_ns();
    if (n < 0)
        return errno == EINTR ? 0 : lk_fail(LK_ERR_SYSTEM, "epoll_wait: %s", strerror(errno));
    for (int i = 0; i < n; i++) {
        uint64_t token = s->events[i].data.u64;
        uint32_t ev = s->events[i].events;
        if (token == TOKEN_LISTEN) {
            ep_accept(w);
        } else if (token == TOKEN_WAKE) {
            uint64_t v;
            LK_COUNT(w, SYS_OTHER);
            (void)!read(s->wake_fd, &v, sizeof v);
        } else if (token != TOKEN_STOP) {
            lk_conn *c = lk_conn_from_token(w, token);
            /* a paused client is not read, but an error or hang-up (reported whatever
             * the interest set) is taken now, or level-triggered epoll repeats it */
            if (c && lk_conn_alive(c) &&
                ((ev & (EPOLLERR | EPOLLHUP)) || ((ev & EPOLLIN) && !c->read_paused)))
                ep_readable(w, c);
            if (c && lk_conn_alive(c) && (ev & EPOLLOUT))
                ep_send(w, c);
        }
    }
    return 0;
}

static void ep_wake(lk_worker *w)
{
    ep_state *s = w->io_state;
    uint64_t one = 1;
    (void)!write(s->wake_fd, &one, sizeof one);
}

const lk_io_ops lk_io_epoll = {
    .name = "epoll",
    .init = ep_init,
    .destroy = ep_destroy,
    .add_conn = ep_add_conn,
    .flush = ep_flush,
    .set_paused = ep_set_paused,
    .detach = ep_detach,
    .close_conn = ep_close_conn,
    .wait = ep_wait,
    .wake = ep_wake,
    .discard_fd = ep_discard_fd,
    .ktls_consume = ep_ktls_consume,
    .ktls_install = ep_ktls_install,
};

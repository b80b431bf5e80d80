/* load_connect.c — bring every client up before any packet flows: connect,
 * TLS, HTTP upgrade and DERP handshake for all 2P clients at once, in one
 * event loop on the calling thread, within one 5 s budget.
 *
 * Why all first: a sender may only send once its receiver is registered
 * with the relay (else the relay drops the packets as unknown-destination),
 * and a client is registered before the relay writes its ServerInfo.  So
 * once every client has read ServerInfo, every pair is routable. */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "load/load.h"

#define TOKEN_STOP UINT64_MAX

static int fail_with(lk_load *l, lk_load_result *out, uint32_t failed)
{
    out->handshake_failures = failed;
    for (uint32_t i = 0; i < l->n_conns; i++) {
        lk_load_conn *c = &l->conns[i];
        if (c->state == LK_LS_DEAD) {
            char name[48];
            return lk_fail(LK_ERR_CONNECT, "%s: %s", lk_lc_name(c, name, sizeof name),
                           c->failure);
        }
    }
    return lk_fail(LK_ERR_CONNECT, "handshake failed");
}

static const char *waiting_for(int state)
{
    switch (state) {
    case LK_LS_CONNECTING: return "the TCP connection";
    case LK_LS_TLS: return "the TLS handshake";
    case LK_LS_HTTP: return "the HTTP 101 response";
    case LK_LS_SERVER_KEY: return "ServerKey";
    default: return "ServerInfo";
    }
}

int lk_load_connect_all(lk_load *l, lk_load_result *out)
{
    /* the owning threads have not started: count into them from here */
    lk_load_thread *t0 = &l->threads[0];
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        return lk_fail(LK_ERR_SYSTEM, "epoll_create1: %s", strerror(errno));
    struct epoll_event stop_ev = {.events = EPOLLIN, .data.u64 = TOKEN_STOP};
    LK_LCOUNT(t0, SYS_EPOLL_CTL);
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, lk_load_stop_fd(), &stop_ev) != 0) {
        close(epfd);
        return lk_fail(LK_ERR_SYSTEM, "epoll_ctl: %s", strerror(errno));
    }
    uint64_t deadline = lk_now_ns() + LK_LOAD_CONNECT_NS;
    uint32_t failed = 0, ready = 0;
    for (uint32_t i = 0; i < l->n_conns; i++)
        if (lk_lc_connect(&l->conns[i], epfd, i) != 0)
            failed++;
    struct epoll_event events[LK_LOAD_EVENTS];
    int rc = LK_OK;
    while (!failed && ready < l->n_conns && !lk_load_stop_requested()) {
        uint64_t now = lk_now_ns();
        if (now >= deadline) {
            for (uint32_t i = 0; i < l->n_conns; i++) {
                lk_load_conn *c = &l->conns[i];
                if (c->state != LK_LS_STEADY) {
                    lk_lc_close(c, "no answer from %s within %.0f s (waiting for %s)", l->where,
                                LK_LOAD_CONNECT_NS / 1e9, waiting_for(c->state));
                    failed++;
                }
            }
            break;
        }
        int timeout_ms = (int)((deadline - now + LK_MS - 1) / LK_MS);
        LK_LCOUNT(t0, SYS_EPOLL_WAIT);
        int n = epoll_wait(epfd, events, LK_LOAD_EVENTS, timeout_ms);
        if (n < 0 && errno != EINTR) {
            rc = lk_fail(LK_ERR_SYSTEM, "epoll_wait: %s", strerror(errno));
            break;
        }
        for (int i = 0; i < n; i++) {
            if (events[i].data.u64 == TOKEN_STOP)
                continue;  /* the loop condition sees the flag */
            lk_load_conn *c = &l->conns[events[i].data.u64];
            uint32_t ev = events[i].events;
            int before = c->state;
            if (c->state != LK_LS_DEAD && (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                lk_lc_readable(c, LK_LOAD_RBUF);
            if (c->state != LK_LS_DEAD && (ev & EPOLLOUT))
                lk_lc_writable(c);
            if (c->state == LK_LS_DEAD && before != LK_LS_DEAD)
                failed++;
            else if (c->state == LK_LS_STEADY && before != LK_LS_STEADY)
                ready++;
        }
    }
    close(epfd);  /* the sockets stay open; load.c registers them with their threads */
    if (rc == LK_OK && failed)
        rc = fail_with(l, out, failed);
    return rc;
}

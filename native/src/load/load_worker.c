/* load_worker.c — a load-generator thread: its event loop, the senders'
 * pacing and batching, and what received packets mean (counts, latency,
 * echo).
 *
 * Why batches: the relay is the thing under test, so the generator must
 * cross the kernel boundary as rarely as possible.  A batched sender lays out
 * many SendPacket frames in one buffer and writes them with one send(); a
 * receiver reads up to LK_LOAD_RBUF bytes per recv() and parses every frame
 * in it.  But a relay that only shines with large segments arriving is not
 * fast for real clients, which write one packet per syscall: the
 * frame-per-write sender does that (same budget per wake-up, one send() and
 * one stamp per frame), so a result can say how much belongs to the client.
 * Back-pressure is honoured, never spun on: a full socket arms EPOLLOUT and
 * the sender waits for it. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "load/load.h"

#define TOKEN_WAKE UINT64_MAX

/* ---- received packets ------------------------------------------------------ */

void lk_load_on_packet(lk_load_conn *c, uint8_t *payload, uint32_t len)
{
    lk_load_thread *t = c->thr;
    uint32_t plen = len - LK_KEY_LEN;
    LK_LCOUNT(t, LOAD_RECEIVED);
    LK_LCOUNT_N(t, LOAD_BYTES_RECEIVED, plen);
    if (memcmp(payload, c->peer, LK_KEY_LEN) != 0) {
        LK_LCOUNT(t, UNKNOWN_FRAMES);  /* not from this client's partner: not ours to count */
        return;
    }
    if (c->role == LK_LR_RECEIVER && c->load->cfg.mode == LK_LOAD_ECHO) {
        /* RecvPacket(src, packet) becomes SendPacket(dst = src, packet): the
         * payload layout is the same, only the type changes.  Reads are
         * limited to the room left (worker_readable), so this always fits. */
        uint8_t *p = lk_lc_reserve(c, LK_FRAME_HDR + len);
        if (!p) {
            LK_LCOUNT(t, DROP_QUEUE_TAIL);
            return;
        }
        lk_put_frame_hdr(p, LK_FT_SEND_PACKET, len);
        memcpy(p + LK_FRAME_HDR, payload, len);
        lk_lc_commit(c, LK_FRAME_HDR + len);
        LK_LCOUNT(t, LOAD_SENT);
        LK_LCOUNT(t, FRAMES_OUT);
        return;
    }
    uint64_t seq, stamp;
    memcpy(&seq, payload + LK_KEY_LEN, 8);
    memcpy(&stamp, payload + LK_KEY_LEN + 8, 8);
    if (!(seq & LK_LOAD_IN_WINDOW))
        return;  /* warm-up */
    t->recv_window++;
    t->bytes_window += plen;
    /* one-way (receiver) or round trip (echo sender): same clock, same host */
    lk_lh_record(t->hist, t->now > stamp ? t->now - stamp : 0);
}

/* ---- senders ------------------------------------------------------------------ */

static void close_sender(lk_load_thread *t, lk_load_conn *c)
{
    if (c->closed)
        return;
    c->closed = 1;
    c->want_out = 0;
    c->due_ns = 0;
    t->senders_open--;
    lk_lc_update_events(c);
}

static void report_dead(lk_load_thread *t, lk_load_conn *c)
{
    char name[48];
    lk_load_log("%s: %s", lk_lc_name(c, name, sizeof name), c->failure);
    if (c->role == LK_LR_SENDER)
        close_sender(t, c);
}

static int window_over(const lk_load *l, uint64_t now)
{
    return now >= l->t_end || lk_load_stop_requested();
}

/* Lay out n SendPacket frames and queue them.  Payload: 8-byte sequence (top
 * bit: in the window), 8-byte CLOCK_MONOTONIC stamp, then filler left as it
 * is in the buffer.  One stamp per batch: the batch leaves in one send. */
static void build(lk_load_thread *t, lk_load_conn *c, uint32_t n)
{
    lk_load *l = c->load;
    uint32_t flen = l->frame_len;
    uint8_t *p = lk_lc_reserve(c, n * flen);
    if (!p)
        return;
    uint64_t now = lk_now_ns();
    int in_window = now >= l->t_start && !window_over(l, now);
    uint64_t mark = in_window ? LK_LOAD_IN_WINDOW : 0;
    for (uint32_t i = 0; i < n; i++, p += flen) {
        uint64_t seq = c->seq++ | mark;
        lk_put_frame_hdr(p, LK_FT_SEND_PACKET, flen - LK_FRAME_HDR);
        memcpy(p + LK_FRAME_HDR, c->peer, LK_KEY_LEN);
        memcpy(p + LK_FRAME_HDR + LK_KEY_LEN, &seq, 8);
        memcpy(p + LK_FRAME_HDR + LK_KEY_LEN + 8, &now, 8);
    }
    lk_lc_commit(c, n * flen);
    LK_LCOUNT_N(t, LOAD_SENT, n);
    LK_LCOUNT_N(t, FRAMES_OUT, n);
    if (in_window)
        t->sent_window += n;
}

/* Write up to n packets the sender's way: one batch in one send(), or one
 * send() per frame until the socket is full.  Returns the packets handed
 * over, or -1 when the connection died (its failure says why). */
static int send_packets(lk_load_thread *t, lk_load_conn *c, uint32_t n)
{
    if (c->load->cfg.sender == LK_SENDER_BATCHED) {
        build(t, c, n);
        return lk_lc_flush(c) != 0 ? -1 : (int)n;
    }
    uint32_t i = 0;
    for (; i < n && lk_lc_pending(c) == 0; i++) {
        build(t, c, 1);
        if (lk_lc_flush(c) != 0)
            return -1;
    }
    return (int)i;
}

/* Unpaced: keep the socket full.  Called when EPOLLOUT says there is room. */
static void unpaced_send(lk_load_thread *t, lk_load_conn *c)
{
    for (int i = 0; i < LK_LOAD_BURST && !c->closed && lk_lc_pending(c) == 0; i++) {
        if (window_over(c->load, lk_now_ns())) {
            close_sender(t, c);
            break;
        }
        if (send_packets(t, c, c->load->batch_frames) < 0)
            return;
    }
}

/* Tokens the bucket could not hold are packets the rate asked for and the sender
 * never sent: a paced run on a busy machine offers less than it was told to, and says
 * by how much (whole packets; the fraction waits for the next overflow). */
static void note_missed(lk_load_thread *t, lk_load_conn *c, double tokens)
{
    c->missed += tokens;
    if (c->missed < 1)
        return;
    uint64_t n = (uint64_t)c->missed;
    c->missed -= (double)n;
    LK_LCOUNT_N(t, LOAD_PACE_MISSED, n);
    uint64_t now = t->now;
    if (now >= c->load->t_start && !window_over(c->load, now))
        t->missed_window += n;
}

/* Paced: a token bucket in packets.  A sender waits for a quantum of tokens
 * (100 us of its rate, at least one packet) so high rates still batch.  The
 * bucket holds up to 10 ms of the rate: a wake-up that comes late on a busy
 * machine (a millisecond is common on two shared cores) is made up for rather
 * than lost, while a long stall still cannot turn into more than a 10 ms
 * burst.  It leaves in batch-sized sends (or frame by frame).  Returns the
 * earliest time a sender is due. */
static uint64_t pace(lk_load_thread *t)
{
    lk_load *l = t->load;
    uint64_t next = UINT64_MAX;
    double burst = l->pps * 0.010 > l->batch_frames ? l->pps * 0.010 : l->batch_frames;
    for (uint32_t i = 0; i < t->n_conns; i++) {
        lk_load_conn *c = t->conns[i];
        if (c->role != LK_LR_SENDER || c->closed || c->state != LK_LS_STEADY)
            continue;
        c->tokens += (double)(t->now - c->refill_ns) * l->pps / 1e9;
        c->refill_ns = t->now;
        if (c->tokens > burst) {
            note_missed(t, c, c->tokens - burst);
            c->tokens = burst;
        }
        while (c->tokens >= l->quantum && lk_lc_pending(c) == 0) {
            uint32_t n = c->tokens < l->batch_frames ? (uint32_t)c->tokens : l->batch_frames;
            int sent = send_packets(t, c, n);
            if (sent < 0) {
                report_dead(t, c);
                break;
            }
            c->tokens -= sent;
        }
        if (c->closed)
            continue;
        if (lk_lc_pending(c))
            continue;  /* EPOLLOUT will bring us back */
        double wait_ns = (l->quantum - c->tokens) / l->pps * 1e9;
        uint64_t due = t->now + (wait_ns > 0 ? (uint64_t)wait_ns : 0);
        if (due < next)
            next = due;
    }
    return next;
}

/* ---- the loop ------------------------------------------------------------------ */

static void on_readable(lk_load_thread *t, lk_load_conn *c)
{
    size_t limit = LK_LOAD_RBUF;
    if (c->role == LK_LR_RECEIVER && c->load->cfg.mode == LK_LOAD_ECHO) {
        /* every byte read may come back as an echo: read no more than fits,
         * keeping room for a frame begun earlier and one TLS record */
        uint32_t margin = c->load->frame_len + (c->tls ? LK_LOAD_PLAIN : 0) + LK_FRAME_HDR + 8;
        uint32_t room = lk_lc_room(c);
        if (room < margin + 1024) {
            c->rx_blocked = 1;  /* until EPOLLOUT drains the replies */
            lk_lc_update_events(c);
            return;
        }
        limit = room - margin;
        if (c->ws)  /* each echo is its own WebSocket message: a header more per frame */
            limit = limit * c->load->frame_len / (c->load->frame_len + LK_WS_HDR_MAX);
    }
    if (lk_lc_readable(c, limit) != 0)
        report_dead(t, c);
}

static void on_writable(lk_load_thread *t, lk_load_conn *c)
{
    if (lk_lc_flush(c) != 0) {
        report_dead(t, c);
        return;
    }
    if (c->rx_blocked && lk_lc_pending(c) == 0) {
        c->rx_blocked = 0;
        lk_lc_update_events(c);
    }
    if (c->role == LK_LR_SENDER && c->load->pps == 0)
        unpaced_send(t, c);
    if (c->state == LK_LS_DEAD)
        report_dead(t, c);
}

static void publish(lk_load_thread *t)
{
    t->stats.ns = t->now;
    lk_counters_publish(t->shared, &t->stats);
    t->last_publish = t->now;
}

static void pin(lk_load_thread *t)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int cpu = (int)(((long)t->load->cfg.first_cpu + t->index) % (ncpu > 0 ? ncpu : 1));
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    LK_LCOUNT(t, SYS_OTHER);
    int e = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    if (e != 0)
        lk_load_log("thread %u: cannot pin to CPU %d: %s", t->index, cpu, strerror(e));
}

void *lk_load_thread_main(void *arg)
{
    lk_load_thread *t = arg;
    lk_load *l = t->load;
    if (l->cfg.pin_cpus)
        pin(t);
    t->now = lk_now_ns();
    for (uint32_t i = 0; i < t->n_conns; i++) {
        lk_load_conn *c = t->conns[i];
        if (c->role != LK_LR_SENDER)
            continue;
        t->senders_open++;
        c->refill_ns = t->now;
        c->tokens = l->quantum;  /* the first quantum leaves at once */
        c->want_out = l->pps == 0;  /* unpaced: EPOLLOUT is the signal to send more */
        lk_lc_update_events(c);
    }
    publish(t);
    uint64_t pace_due = l->pps > 0 ? pace(t) : UINT64_MAX;
    int dirty = 0;
    while (!__atomic_load_n(&l->quit, __ATOMIC_ACQUIRE)) {
        uint64_t due = pace_due;
        if (t->senders_open && l->t_end < due)
            due = l->t_end;  /* close the window on time even when nothing happens */
        if (dirty && t->last_publish + LK_LOAD_PUBLISH_NS < due)
            due = t->last_publish + LK_LOAD_PUBLISH_NS;
        struct timespec ts, *tsp = NULL;
        if (due != UINT64_MAX) {
            uint64_t left = due > t->now ? due - t->now : 0;
            ts.tv_sec = (time_t)(left / 1000000000u);
            ts.tv_nsec = (long)(left % 1000000000u);
            tsp = &ts;
        }
        LK_LCOUNT(t, SYS_EPOLL_WAIT);
        int n = epoll_pwait2(t->epfd, t->events, LK_LOAD_EVENTS, tsp, NULL);
        LK_LCOUNT(t, LOOP_PASSES);
        t->now = lk_now_ns();
        if (n < 0 && errno != EINTR) {
            t->result = LK_ERR_SYSTEM;
            snprintf(t->error, sizeof t->error, "epoll_pwait2: %s", strerror(errno));
            break;
        }
        for (int i = 0; i < n; i++) {
            uint64_t token = t->events[i].data.u64;
            uint32_t ev = t->events[i].events;
            if (token == TOKEN_WAKE) {
                uint64_t v;
                LK_LCOUNT(t, SYS_OTHER);
                (void)!read(t->wake_fd, &v, sizeof v);
                continue;
            }
            lk_load_conn *c = &l->conns[token];
            if (c->state != LK_LS_DEAD && (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                on_readable(t, c);
            if (c->state != LK_LS_DEAD && (ev & EPOLLOUT))
                on_writable(t, c);
        }
        t->now = lk_now_ns();
        if (t->senders_open && window_over(l, t->now))
            for (uint32_t i = 0; i < t->n_conns; i++)
                if (t->conns[i]->role == LK_LR_SENDER)
                    close_sender(t, t->conns[i]);
        pace_due = l->pps > 0 && t->senders_open ? pace(t) : UINT64_MAX;
        /* the calling thread watches these during the drain */
        __atomic_store_n(&t->prog_sent, t->sent_window, __ATOMIC_RELAXED);
        __atomic_store_n(&t->prog_recv, t->recv_window, __ATOMIC_RELAXED);
        if (!t->senders_open)
            __atomic_store_n(&t->prog_closed, 1, __ATOMIC_RELEASE);
        dirty |= n > 0 || pace_due != UINT64_MAX;
        if (dirty && t->now - t->last_publish >= LK_LOAD_PUBLISH_NS) {
            publish(t);
            dirty = 0;
        }
    }
    t->now = lk_now_ns();
    publish(t);
    return NULL;
}

/* io_uring.c — the completion backend.  Each technique is its own switch so
 * an experiment can measure it alone:
 *   batch             all SQEs of a loop pass go in with the wait, one
 *                     io_uring_enter per pass (off: one enter per operation)
 *   multishot         one multishot recv per connection (off: re-armed recv)
 *   provided_buffers  receives land in a shared buffer ring (off: a buffer
 *                     per connection)
 *   coalesce          all queued frames leave in one sendmsg (off: one send
 *                     per frame)
 *   poll_recv         the multishot operation is a readiness poll, and each
 *                     pass issues one recv per readable connection (below)
 *   gather_wait       a waiting pass sleeps until several completions are in
 *                     or a short time passed (off: it wakes for the first)
 *   sqpoll, defer_taskrun, single_issuer   ring set-up flags
 *
 * Why poll_recv: a multishot recv is re-run by the kernel, in task work,
 * each time a segment lands on its socket.  With a sender that writes one
 * frame per syscall that is one tcp_recvmsg per ~1.4 kB segment, each taking
 * the socket lock while the sender's softirq (on another CPU) appends the
 * next: a profile showed ~45 % of the relay's CPU spinning in
 * lock_sock_nested under io_recv.  A poll wake-up takes no socket lock
 * (tcp_poll reads state), so poll_recv only notes "readable" and the recv
 * goes in with the pass's submit, by which time many segments wait: one
 * lock and one completion drain them all.
 * That profile was of a ring without defer_taskrun, whose task work ran as
 * each segment landed.  With defer_taskrun (on by default) the multishot
 * recv's task work waits for the worker's own io_uring_enter, and then
 * poll_recv only adds a poll wake-up and a recv SQE per drain: measured side
 * by side (bench/modes.py, two runs, 2-core AMD EPYC, 2026-12-07) poll_recv
 * cost 24-28 % of the batched sender's unpaced throughput and 1-8 % more
 * relay CPU per Gbit at 1 Gbit/s with the frame-per-write one.  So it is off
 * by default, kept as a switch for rings without defer_taskrun.
 * A switch the kernel cannot honour makes init fail with the reason.
 * Data workers only: connections arrive set up from the acceptor (shard.h). */
#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "common/common.h"
#include "io/io.h"
#include "relay/state.h"

#define UR_ENTRIES 1024
#define UR_PBUF_COUNT 64         /* power of two; small on purpose, see below */
#define UR_PBUF_SIZE (32u * 1024)
#define UR_CONN_BUF (32u * 1024)
/* Packets one loop pass may take in before its sends go out.  Beyond it,
 * receive completions wait (in order) for the next pass, holding their
 * buffers: the small buffer ring then runs dry, the kernel leaves data in
 * the sockets, and TCP slows the senders.  Without this, multishot recv
 * drains every socket as fast as data arrives and the relay can only drop
 * what its writers cannot keep up with (derper's collapse under load). */
#define UR_PASS_BUDGET LK_TX_MAX
#define UR_BGID 1
/* gather_wait: a waiting pass returns once this many completions are in, or once
 * UR_GATHER_US passed with at least one.  50 us is under half the median one-way
 * latency through the relay at 1 Gbit/s here (119 us), and at 1 Gbit/s of 1400-byte
 * packets four or five arrive in it. */
#define UR_GATHER_CQES 32
#define UR_GATHER_US 50
/* ...but only after a pass that reaped at least this many: at a trickle the window
 * holds each lone packet back and costs more than the wake-ups it saves.  At 100 Mbit/s
 * relay CPU per Gbit was 1.5-1.6x without it when always gathering, and is still
 * 1.3-1.5x with it (2-core AMD EPYC), which is why gather_wait is opt-in. */
#define UR_GATHER_AFTER 4
#ifndef IORING_FEAT_MIN_TIMEOUT  /* liburing before 2.8 does not name it */
#define IORING_FEAT_MIN_TIMEOUT (1U << 15)
#endif

/* user_data: operation in the top byte, then 24 bits of generation, then slot */
enum ur_op { OP_RECV = 1, OP_SEND, OP_WAKE, OP_STOP, OP_POLL, OP_CANCEL };

typedef struct ur_state {
    struct io_uring ring;
    int batch, multishot, pbuf, coalesce, sqpoll, poll_recv, gather_wait;
    struct io_uring_buf_ring *br;
    uint8_t *bufs;
    int wake_fd;
    uint64_t wake_value;
    struct io_uring_cqe *parked;   /* receive completions left for the next pass */
    uint32_t n_parked, cap_parked;
    lk_conn **ready;               /* poll_recv: readable connections, each at most once */
    uint32_t n_ready;
    lk_conn **holders;             /* connections that held bytes since the last pass's
                                      release_held, each at most once (io_listed) */
    uint32_t n_holders;
    unsigned last_reaped;          /* completions the previous pass reaped (gather_wait) */
} ur_state;

static uint64_t ud(enum ur_op op, const lk_conn *c)
{
    uint64_t v = (uint64_t)op << 56;
    if (c)
        v |= (uint64_t)(c->gen & 0xffffff) << 32 | c->slot;
    return v;
}

static lk_conn *ud_conn(lk_worker *w, uint64_t v)
{
    uint32_t slot = (uint32_t)v;
    if (slot >= w->max_conns)
        return NULL;
    lk_conn *c = &w->conns[slot];
    return (c->gen & 0xffffff) == ((v >> 32) & 0xffffff) && c->state != LK_CS_FREE ? c : NULL;
}

/* Whether liburing will enter the kernel for this submit/wait: mirrors its
 * own rule, so the relay's io_uring_enter count matches what perf sees. */
static int will_enter(ur_state *s, int wait)
{
    unsigned flags = IO_URING_READ_ONCE(*s->ring.sq.kflags);
    int flush = (flags & (IORING_SQ_CQ_OVERFLOW | IORING_SQ_TASKRUN)) != 0;
    int to_submit = io_uring_sq_ready(&s->ring) > 0;
    if (s->sqpoll)
        to_submit = to_submit && (flags & IORING_SQ_NEED_WAKEUP);
    return to_submit || flush || (wait && io_uring_cq_ready(&s->ring) == 0);
}

static void submit_now(lk_worker *w)
{
    ur_state *s = w->io_state;
    if (will_enter(s, 0))
        LK_COUNT(w, SYS_IO_URING_ENTER);
    io_uring_submit(&s->ring);
}

static struct io_uring_sqe *get_sqe(lk_worker *w)
{
    ur_state *s = w->io_state;
    struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
    if (!sqe) {  /* SQ full: submit what we have, then there is room */
        submit_now(w);
        sqe = io_uring_get_sqe(&s->ring);
    }
    LK_COUNT(w, SQES_SUBMITTED);
    return sqe;
}

/* After preparing one operation: without `batch`, it goes in right away. */
static void queued(lk_worker *w)
{
    ur_state *s = w->io_state;
    if (!s->batch)
        submit_now(w);
}

static void arm_wake(lk_worker *w)
{
    ur_state *s = w->io_state;
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_read(sqe, s->wake_fd, &s->wake_value, sizeof s->wake_value, 0);
    io_uring_sqe_set_data64(sqe, ud(OP_WAKE, NULL));
    queued(w);
}

static void arm_recv(lk_worker *w, lk_conn *c)
{
    ur_state *s = w->io_state;
    struct io_uring_sqe *sqe = get_sqe(w);
    LK_COUNT(w, RECV_ARMED);
    if (s->multishot && !s->poll_recv)
        io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    else if (s->pbuf)
        io_uring_prep_recv(sqe, c->fd, NULL, UR_PBUF_SIZE, 0);
    else
        io_uring_prep_recv(sqe, c->fd, c->io_buf, UR_CONN_BUF, 0);
    if (s->pbuf) {
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = UR_BGID;
    }
    io_uring_sqe_set_data64(sqe, ud(OP_RECV, c));
    c->io_refs++;
    c->io_recv_busy = 1;
    queued(w);
}

/* ---- poll_recv: readiness from a multishot poll, one recv per pass --------- */

static void arm_poll(lk_worker *w, lk_conn *c)
{
    struct io_uring_sqe *sqe = get_sqe(w);
    LK_COUNT(w, RECV_ARMED);
    io_uring_prep_poll_multishot(sqe, c->fd, POLLIN | POLLRDHUP);
    io_uring_sqe_set_data64(sqe, ud(OP_POLL, c));
    c->io_refs++;
    c->io_poll = 1;
    queued(w);
}

/* Bytes received while c was paused and not yet parsed (see received) */
static int holds(const lk_conn *c)
{
    return c->io_held.off < c->io_held.len;
}

static void mark_ready(ur_state *s, lk_conn *c)
{
    if (!c->io_ready) {  /* at most once per connection: max_conns entries suffice */
        c->io_ready = 1;
        s->ready[s->n_ready++] = c;
    }
}

static void unmark_ready(ur_state *s, lk_conn *c)
{
    if (!c->io_ready)
        return;
    c->io_ready = 0;
    for (uint32_t i = 0; i < s->n_ready; i++)
        if (s->ready[i] == c) {
            s->ready[i] = s->ready[--s->n_ready];
            return;
        }
}

/* Before the pass's submit: one recv for each readable connection that has none in
 * flight (one still in flight keeps its mark: its completion may not have seen the
 * newest segment). */
static void issue_ready(lk_worker *w)
{
    ur_state *s = w->io_state;
    uint32_t kept = 0;
    for (uint32_t i = 0; i < s->n_ready; i++) {
        lk_conn *c = s->ready[i];
        if (c->io_recv_busy || c->read_paused || holds(c)) {  /* read once resumed and
                                                                 what it held is parsed */
            s->ready[kept++] = c;
            continue;
        }
        c->io_ready = 0;
        if (lk_conn_alive(c))
            arm_recv(w, c);
    }
    s->n_ready = kept;
}

/* ---- set-up: each switch checked against the running kernel ------------- */

static const char *kernel_release(void)
{
    static struct utsname u;
    return uname(&u) == 0 ? u.release : "unknown";
}

static int setup_buf_ring(ur_state *s)
{
    size_t ring_bytes = UR_PBUF_COUNT * sizeof(struct io_uring_buf);
    s->br = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    s->bufs = malloc((size_t)UR_PBUF_COUNT * UR_PBUF_SIZE);
    if (s->br == MAP_FAILED || !s->bufs) {
        if (s->br == MAP_FAILED)
            s->br = NULL;
        return lk_fail(LK_ERR_NOMEM, "no memory for the provided-buffer ring");
    }
    /* liburing 2.3 has no io_uring_setup_buf_ring(): register our own memory */
    struct io_uring_buf_reg reg = {
        .ring_addr = (unsigned long)s->br, .ring_entries = UR_PBUF_COUNT, .bgid = UR_BGID};
    int rc = io_uring_register_buf_ring(&s->ring, &reg, 0);
    if (rc < 0)
        return lk_fail(LK_ERR_UNSUPPORTED,
                       "provided_buffers: kernel %s refused io_uring_register_buf_ring (%s); "
                       "it needs Linux 5.19+; turn provided_buffers off",
                       kernel_release(), strerror(-rc));
    io_uring_buf_ring_init(s->br);
    int mask = io_uring_buf_ring_mask(UR_PBUF_COUNT);
    for (unsigned i = 0; i < UR_PBUF_COUNT; i++)
        io_uring_buf_ring_add(s->br, s->bufs + (size_t)i * UR_PBUF_SIZE, UR_PBUF_SIZE,
                              (unsigned short)i, mask, (int)i);
    io_uring_buf_ring_advance(s->br, UR_PBUF_COUNT);
    return LK_OK;
}

static void return_buf(ur_state *s, unsigned bid)
{
    io_uring_buf_ring_add(s->br, s->bufs + (size_t)bid * UR_PBUF_SIZE, UR_PBUF_SIZE,
                          (unsigned short)bid, io_uring_buf_ring_mask(UR_PBUF_COUNT), 0);
    io_uring_buf_ring_advance(s->br, 1);
}

/* Multishot recv is a flag on an old opcode, invisible to io_uring_get_probe:
 * try one on a socketpair and see whether it keeps delivering. */
static int probe_multishot(ur_state *s)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        return lk_fail(LK_ERR_SYSTEM, "socketpair: %s", strerror(errno));
    struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
    io_uring_prep_recv_multishot(sqe, sv[0], NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = UR_BGID;
    io_uring_sqe_set_data64(sqe, 0);
    int rc = LK_OK;
    (void)!write(sv[1], "x", 1);
    io_uring_submit(&s->ring);
    struct io_uring_cqe *cqe;
    if (io_uring_wait_cqe(&s->ring, &cqe) != 0 || cqe->res != 1 || !(cqe->flags & IORING_CQE_F_MORE))
        rc = lk_fail(LK_ERR_UNSUPPORTED,
                     "multishot: kernel %s does not keep a multishot recv armed (res %d); it "
                     "needs Linux 6.0+; turn multishot off",
                     kernel_release(), cqe ? cqe->res : -1);
    if (cqe) {
        if (cqe->flags & IORING_CQE_F_BUFFER)
            return_buf(s, cqe->flags >> IORING_CQE_BUFFER_SHIFT);
        io_uring_cqe_seen(&s->ring, cqe);
    }
    close(sv[1]);  /* EOF ends the multishot recv */
    close(sv[0]);
    while (io_uring_peek_cqe(&s->ring, &cqe) == 0) {
        if (cqe->flags & IORING_CQE_F_BUFFER)
            return_buf(s, cqe->flags >> IORING_CQE_BUFFER_SHIFT);
        io_uring_cqe_seen(&s->ring, cqe);
    }
    return rc;
}

/* The ring with these switches, its buffer ring and the multishot check: what the
 * kernel must honour.  Shared by a worker's set-up and lk_io_uring_probe(). */
static int setup_ring(ur_state *s, uint32_t sw)
{
    s->ring.ring_fd = -1;
    s->batch = (sw & LK_SW_BATCH) != 0;
    s->multishot = (sw & LK_SW_MULTISHOT) != 0;
    s->pbuf = (sw & LK_SW_PROVIDED_BUFFERS) != 0;
    s->coalesce = (sw & LK_SW_COALESCE) != 0;
    s->sqpoll = (sw & LK_SW_SQPOLL) != 0;
    s->poll_recv = (sw & LK_SW_POLL_RECV) != 0;
    s->gather_wait = (sw & LK_SW_GATHER_WAIT) != 0;
    struct io_uring_params p = {0};
    if (s->sqpoll) {
        p.flags |= IORING_SETUP_SQPOLL;
        p.sq_thread_idle = 1000;
    }
    if (sw & LK_SW_SINGLE_ISSUER)
        p.flags |= IORING_SETUP_SINGLE_ISSUER;
    if (sw & LK_SW_DEFER_TASKRUN)  /* the contract has single_issuer on with it */
        p.flags |= IORING_SETUP_DEFER_TASKRUN;
    int rc = io_uring_queue_init_params(UR_ENTRIES, &s->ring, &p);
    if (rc < 0) {
        s->ring.ring_fd = -1;
        return lk_fail(rc == -EINVAL ? LK_ERR_UNSUPPORTED : LK_ERR_SYSTEM,
                       "io_uring_setup (flags 0x%x) failed on kernel %s: %s%s", p.flags,
                       kernel_release(), strerror(-rc),
                       rc == -EINVAL ? " (a set-up switch is too new for this kernel: sqpoll 5.11, "
                                       "single_issuer 6.0, defer_taskrun 6.1)"
                       : rc == -EPERM ? " (io_uring disabled: see sysctl kernel.io_uring_disabled)"
                                      : "");
    }
    if (s->gather_wait && !(p.features & IORING_FEAT_MIN_TIMEOUT))
        return lk_fail(LK_ERR_UNSUPPORTED,
                       "gather_wait: kernel %s has no minimum wait timeout "
                       "(IORING_FEAT_MIN_TIMEOUT, Linux 6.12+); turn gather_wait off",
                       kernel_release());
    if (s->pbuf && (rc = setup_buf_ring(s)) != LK_OK)
        return rc;
    if (s->multishot && (rc = probe_multishot(s)) != LK_OK)
        return rc;
    return LK_OK;
}

static void free_ring(ur_state *s)
{
    if (s->ring.ring_fd >= 0)
        io_uring_queue_exit(&s->ring);
    if (s->br)
        munmap(s->br, UR_PBUF_COUNT * sizeof(struct io_uring_buf));
    free(s->bufs);
}

int lk_io_uring_probe(uint32_t switches)
{
    ur_state s = {0};
    int rc = setup_ring(&s, switches);
    free_ring(&s);
    return rc;
}

static int ur_init(lk_worker *w)
{
    ur_state *s = calloc(1, sizeof *s);
    if (!s)
        return lk_fail(LK_ERR_NOMEM, "no memory for io_uring state");
    w->io_state = s;
    s->wake_fd = -1;
    int rc = setup_ring(s, w->relay->cfg.switches);
    if (rc != LK_OK)
        return rc;
    /* at most one held buffer or one pending receive per connection, plus the ring */
    s->cap_parked = w->max_conns + UR_PBUF_COUNT;
    s->parked = malloc(s->cap_parked * sizeof *s->parked);
    s->ready = s->poll_recv ? malloc(w->max_conns * sizeof *s->ready) : NULL;
    s->holders = malloc(w->max_conns * sizeof *s->holders);
    if (!s->parked || (s->poll_recv && !s->ready) || !s->holders)
        return lk_fail(LK_ERR_NOMEM, "no memory for the completion lists (parked, ready, holders)");
    s->wake_fd = eventfd(0, EFD_CLOEXEC);
    if (s->wake_fd < 0)
        return lk_fail(LK_ERR_SYSTEM, "eventfd: %s", strerror(errno));
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_poll_add(sqe, w->relay->stop_fd, POLLIN);
    io_uring_sqe_set_data64(sqe, ud(OP_STOP, NULL));
    arm_wake(w);
    return LK_OK;
}

static void ur_destroy(lk_worker *w)
{
    ur_state *s = w->io_state;
    free_ring(s);
    free(s->parked);
    free(s->ready);
    free(s->holders);
    if (s->wake_fd >= 0)
        close(s->wake_fd);
    free(s);
    w->io_state = NULL;
}

/* ---- connections ------------------------------------------------------------ */

static int ur_add_conn(lk_worker *w, lk_conn *c)
{
    ur_state *s = w->io_state;
    if (!s->pbuf && !(c->io_buf = malloc(UR_CONN_BUF)))
        return -1;
    if (s->poll_recv)
        arm_poll(w, c);  /* data already waiting makes the poll fire at once */
    else
        arm_recv(w, c);
    return 0;
}

static void ur_flush(lk_worker *w, lk_conn *c)
{
    ur_state *s = w->io_state;
    if (c->send_busy || !lk_conn_alive(c))
        return;  /* one send in flight per connection keeps frames in order */
    int n = lk_core_gather(w, c, c->iov, s->coalesce ? LK_TX_MAX + 1 : 1);
    if (n == 0)
        return;
    struct io_uring_sqe *sqe = get_sqe(w);
    if (n == 1) {
        io_uring_prep_send(sqe, c->fd, c->iov[0].iov_base, c->iov[0].iov_len, MSG_NOSIGNAL);
    } else {
        c->io_msg = (struct msghdr){.msg_iov = c->iov, .msg_iovlen = (size_t)n};
        io_uring_prep_sendmsg(sqe, c->fd, &c->io_msg, MSG_NOSIGNAL);
    }
    io_uring_sqe_set_data64(sqe, ud(OP_SEND, c));
    c->send_busy = 1;
    c->io_refs++;
    if (s->batch)
        LK_COUNT(w, SENDS_HELD);
    queued(w);
}

/* ---- receives for a paused connection ------------------------------------- */

/* Parse what c holds, a provided buffer's worth at a time, until it is all parsed or,
 * when `obey_pause`, c is paused again. */
static void parse_held(lk_worker *w, lk_conn *c, int obey_pause)
{
    while (holds(c) && lk_conn_alive(c) && !(obey_pause && c->read_paused)) {
        uint32_t n = c->io_held.len - c->io_held.off;
        if (n > UR_PBUF_SIZE)
            n = UR_PBUF_SIZE;
        const uint8_t *p = c->io_held.data + c->io_held.off;
        c->io_held.off += n;
        lk_core_received(w, c, p, n);  /* may close c: drop_held then frees what it held */
    }
}

/* Backpressure with a multishot recv: its cancel lands a pass or more after the pause,
 * and what the recv took until then still completes (1.5 MiB at one pause under
 * tests/test_overload.py's flood).  Parsed at once, that overran the destination's
 * queue far past LK_BP_SLACK and emptied the packet pool: packets were dropped.  So
 * bytes for a paused connection, or behind bytes it already holds, are copied aside
 * and parsed in order once it resumes, and no recv is armed for it meanwhile.  The
 * provided buffer goes back to the ring at once: holding it would starve every other
 * connection's receives. */
static void received(lk_worker *w, lk_conn *c, const uint8_t *data, size_t n)
{
    ur_state *s = w->io_state;
    if (!c->read_paused && !holds(c)) {
        lk_core_received(w, c, data, n);
        return;
    }
    lk_bytes *h = &c->io_held;
    if (h->off) {  /* a connection may hold for long: keep only what is unparsed */
        memmove(h->data, h->data + h->off, h->len - h->off);
        h->len -= h->off;
        h->off = 0;
    }
    if (lk_bytes_append(h, data, (uint32_t)n, NULL) == 0) {
        LK_COUNT(w, RECV_HELD);
        if (!c->io_listed) {  /* at most once per slot: max_conns entries suffice */
            c->io_listed = 1;
            s->holders[s->n_holders++] = c;
        }
        return;
    }
    /* past LK_CTRL_MAX or out of memory: better over the slack than out of order */
    parse_held(w, c, 0);
    if (lk_conn_alive(c))
        lk_core_received(w, c, data, n);
}

/* At the start of a pass: resumed connections parse what they held, then receive
 * again (no recv is armed while a connection holds bytes: new ones would only pile up
 * behind them; with poll_recv, issue_ready sees to it).  A slot leaves the list here
 * only, once it holds nothing: parsing one connection may close others, which frees
 * their bytes (drop_held) but leaves their entries to be passed over.  Returns whether
 * anything was parsed. */
static int release_held(lk_worker *w)
{
    ur_state *s = w->io_state;
    uint32_t kept = 0, n = s->n_holders;
    int parsed = 0;
    for (uint32_t i = 0; i < n; i++) {
        lk_conn *c = s->holders[i];
        uint32_t off = c->io_held.off;
        parse_held(w, c, 1);
        parsed |= c->io_held.off != off || !holds(c);
        if (holds(c)) {
            s->holders[kept++] = c;
            continue;
        }
        c->io_listed = 0;
        if (lk_conn_alive(c) && !c->read_paused && !c->io_recv_busy && !s->poll_recv)
            arm_recv(w, c);
    }
    s->n_holders = kept;
    return parsed;
}

static void drop_held(lk_conn *c)
{
    free(c->io_held.data);
    c->io_held = (lk_bytes){0};
}

static void finish_close(lk_worker *w, lk_conn *c)
{
    LK_COUNT(w, SYS_CLOSE);
    close(c->fd);
    c->fd = -1;
    free(c->io_buf);
    c->io_buf = NULL;
    drop_held(c);
    lk_core_release(w, c);
}

static void ur_close_conn(lk_worker *w, lk_conn *c)
{
    ur_state *s = w->io_state;
    unmark_ready(s, c);
    if (c->io_refs == 0) {
        finish_close(w, c);
        return;
    }
    /* the kernel still holds a recv or send: shutdown completes them, and the
     * last completion finishes the close; a poll outlives shutdown, so it is
     * cancelled */
    LK_COUNT(w, SYS_OTHER);
    shutdown(c->fd, SHUT_RDWR);
    if (c->io_poll) {
        struct io_uring_sqe *sqe = get_sqe(w);
        io_uring_prep_cancel64(sqe, ud(OP_POLL, c), 0);
        io_uring_sqe_set_data64(sqe, ud(OP_CANCEL, NULL));
        queued(w);
    }
}

static void drop_ref(lk_worker *w, lk_conn *c)
{
    if (--c->io_refs == 0 && c->state == LK_CS_CLOSING)
        finish_close(w, c);
}

static void on_recv(lk_worker *w, lk_conn *c, struct io_uring_cqe *cqe)
{
    ur_state *s = w->io_state;
    int more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    int has_buf = (cqe->flags & IORING_CQE_F_BUFFER) != 0;
    unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
    if (cqe->res > 0)
        LK_COUNT(w, RECV_DATA);
    if (cqe->res > 0 && c->state != LK_CS_CLOSING) {
        const uint8_t *data = has_buf ? s->bufs + (size_t)bid * UR_PBUF_SIZE : c->io_buf;
        received(w, c, data, (size_t)cqe->res);  /* copies out everything it keeps */
    }
    if (has_buf) {
        return_buf(s, bid);
        LK_COUNT(w, PBUF_REFILLS);
    }
    if (cqe->res == -ENOBUFS)
        LK_COUNT(w, PBUF_EMPTY);
    if (more)
        return;
    c->io_recv_busy = 0;
    if (c->state == LK_CS_CLOSING) {
        drop_ref(w, c);
        return;
    }
    c->io_refs--;
    if (cqe->res == 0 || (cqe->res < 0 && cqe->res != -ENOBUFS && cqe->res != -ECANCELED)) {
        parse_held(w, c, 0);  /* what the client sent before it went is still relayed */
        lk_core_io_error(w, c, -cqe->res);
        if (c->state == LK_CS_CLOSING && c->io_refs == 0)
            finish_close(w, c);
        return;
    }
    if (c->read_paused || holds(c))
        return;  /* backpressure: re-armed once resumed and what c held is parsed */
    if (!s->poll_recv)
        arm_recv(w, c);  /* one-shot, a multishot that ended, or ENOBUFS */
    else if (cqe->res == (int)UR_PBUF_SIZE || cqe->res == -ENOBUFS || c->io_hup)
        mark_ready(s, c);  /* a full buffer or a hang-up: more may wait, and no poll says so */
}

static void on_poll(lk_worker *w, lk_conn *c, struct io_uring_cqe *cqe)
{
    ur_state *s = w->io_state;
    /* data and the peer's FIN may come in one wake-up: after a hang-up the poll may say
     * nothing more, so receives go on until one returns EOF */
    if (cqe->res > 0 && (cqe->res & (POLLRDHUP | POLLHUP | POLLERR)))
        c->io_hup = 1;
    if (cqe->flags & IORING_CQE_F_MORE) {
        if (cqe->res > 0 && lk_conn_alive(c))
            mark_ready(s, c);
        return;
    }
    c->io_poll = 0;  /* cancelled at close, or the kernel ended it (CQ overflow) */
    if (c->state == LK_CS_CLOSING) {
        drop_ref(w, c);
        return;
    }
    c->io_refs--;
    if (cqe->res > 0)
        mark_ready(s, c);
    arm_poll(w, c);
}

static void on_send(lk_worker *w, lk_conn *c, struct io_uring_cqe *cqe)
{
    c->send_busy = 0;
    if (c->state == LK_CS_CLOSING) {
        drop_ref(w, c);
        return;
    }
    c->io_refs--;
    if (cqe->res < 0) {
        lk_core_io_error(w, c, -cqe->res);
        if (c->io_refs == 0 && c->state == LK_CS_CLOSING)
            finish_close(w, c);
        return;
    }
    lk_core_sent(w, c, (size_t)cqe->res);
    ur_flush(w, c);  /* the next send, if the core has more for c */
}

static void dispatch(lk_worker *w, struct io_uring_cqe *cqe)
{
    uint64_t v = io_uring_cqe_get_data64(cqe);
    switch ((enum ur_op)(v >> 56)) {
    case OP_WAKE:
        arm_wake(w);
        break;
    case OP_STOP:
        break;  /* lk_relay_stop() set the flag the loop checks */
    case OP_CANCEL:
        break;  /* the cancelled poll's own completion finishes its part */
    case OP_RECV:
    case OP_POLL:
    case OP_SEND: {
        lk_conn *c = ud_conn(w, v);
        if (!c) {  /* cannot happen while io_refs holds the slot; never leak a buffer */
            if (cqe->flags & IORING_CQE_F_BUFFER)
                return_buf(w->io_state, cqe->flags >> IORING_CQE_BUFFER_SHIFT);
            break;
        }
        if ((v >> 56) == OP_RECV)
            on_recv(w, c, cqe);
        else if ((v >> 56) == OP_POLL)
            on_poll(w, c, cqe);
        else
            on_send(w, c, cqe);
        break;
    }
    }
}

static struct __kernel_timespec ms_timespec(int ms)
{
    return (struct __kernel_timespec){.tv_sec = ms / 1000,
                                      .tv_nsec = (long long)(ms % 1000) * 1000000};
}

/* gather_wait's one io_uring_enter: it submits the pass's SQEs and sleeps until
 * UR_GATHER_CQES completions are in or UR_GATHER_US passed with at least one (the
 * kernel's min_wait_usec), the loop's own timeout still bounding it.  liburing has a
 * call for this only from 2.8 (Debian 12 ships 2.3), so the SQ tail is published here
 * as liburing's submit does: its SQ array is identity-mapped at set-up (2.2+), and the
 * kernel reads the SQEs once it sees the new tail. */
static int enter_gathering(ur_state *s, int timeout_ms)
{
    struct io_uring_sq *sq = &s->ring.sq;
    if (sq->sqe_head != sq->sqe_tail) {
        sq->sqe_head = sq->sqe_tail;
        io_uring_smp_store_release(sq->ktail, sq->sqe_tail);
    }
    unsigned to_submit = sq->sqe_tail - IO_URING_READ_ONCE(*sq->khead);
    struct __kernel_timespec ts = ms_timespec(timeout_ms);
    struct io_uring_getevents_arg arg = {
        .pad = UR_GATHER_US,  /* min_wait_usec since Linux 6.12 */
        .ts = timeout_ms > 0 ? (uint64_t)(uintptr_t)&ts : 0,
    };
    long rc = syscall(__NR_io_uring_enter, s->ring.ring_fd, to_submit, UR_GATHER_CQES,
                      IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, &arg, sizeof arg);
    return rc < 0 ? -errno : 0;
}

static int ur_wait(lk_worker *w, int timeout_ms)
{
    ur_state *s = w->io_state;
    struct io_uring_cqe *cqe;
    int rc;
    /* Packets parsed from held bytes are queued for their destinations (a writer here,
     * a ring to another shard) but sent only by the loop after this wait: sleeping now
     * could hold them, and the sender paused on them, until some unrelated wake-up. */
    if (s->n_holders && release_held(w))
        timeout_ms = 0;
    if (s->poll_recv)
        issue_ready(w);  /* they go in with this pass's submit */
    if (s->n_parked)
        timeout_ms = 0;  /* parked work is ready now */
    int enter = timeout_ms != 0 && will_enter(s, 1);
    if (enter)
        LK_COUNT(w, SYS_IO_URING_ENTER);
    if (timeout_ms != 0 && s->gather_wait && s->last_reaped >= UR_GATHER_AFTER) {
        rc = enter ? enter_gathering(s, timeout_ms) : 0;  /* completions already wait */
    } else if (timeout_ms < 0) {
        rc = io_uring_submit_and_wait(&s->ring, 1);
    } else if (timeout_ms == 0) {
        submit_now(w);
        rc = 0;
    } else {
        struct __kernel_timespec ts = ms_timespec(timeout_ms);
        rc = io_uring_submit_and_wait_timeout(&s->ring, &cqe, 1, &ts, NULL);
    }
    w->now = lk_now_ns();
    if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY)
        return lk_fail(LK_ERR_SYSTEM, "io_uring wait: %s", strerror(-rc));
    /* Sends and everything else first: a completed send frees its receiver's
     * writer before new packets for it are routed.  Receives are parked, in
     * order, and then handled up to the pass budget. */
    unsigned head, reaped = 0;
    io_uring_for_each_cqe(&s->ring, head, cqe) {
        int is_recv = (io_uring_cqe_get_data64(cqe) >> 56) == OP_RECV;
        if (is_recv && s->n_parked < s->cap_parked)
            s->parked[s->n_parked++] = *cqe;
        else
            dispatch(w, cqe);
        reaped++;
    }
    uint32_t admitted_before = w->admitted;
    uint32_t done = 0;
    while (done < s->n_parked && w->admitted - admitted_before < UR_PASS_BUDGET)
        dispatch(w, &s->parked[done++]);
    s->n_parked -= done;
    LK_COUNT_N(w, RECV_PARKED, s->n_parked);
    memmove(s->parked, s->parked + done, s->n_parked * sizeof *s->parked);
    io_uring_cq_advance(&s->ring, reaped);
    s->last_reaped = reaped;
    LK_COUNT_N(w, CQES_REAPED, reaped);
    if (reaped)
        w->stats.completions_hist[lk_hist_bucket(reaped)]++;
    return 0;
}

/* Backpressure.  Pausing: a poll_recv connection is just not given its next recv; a
 * multishot recv is cancelled (what it already took still completes, and is held: see
 * received); a one-shot recv is not re-armed when it completes.  Resuming: receive
 * again (held bytes are parsed first, at the next pass's start). */
static void ur_set_paused(lk_worker *w, lk_conn *c, int paused)
{
    ur_state *s = w->io_state;
    if (paused) {
        if (s->multishot && !s->poll_recv && c->io_recv_busy) {
            struct io_uring_sqe *sqe = get_sqe(w);
            io_uring_prep_cancel64(sqe, ud(OP_RECV, c), 0);
            io_uring_sqe_set_data64(sqe, ud(OP_CANCEL, NULL));
            queued(w);
        }
        return;
    }
    if (s->poll_recv)
        mark_ready(s, c);  /* data may have waited all along: no new poll event says so */
    else if (!c->io_recv_busy && !holds(c))
        arm_recv(w, c);  /* else release_held re-arms it */
}

static void ur_discard_fd(lk_worker *w, int fd)
{
    LK_COUNT(w, SYS_CLOSE);
    close(fd);
}

static void ur_wake(lk_worker *w)
{
    ur_state *s = w->io_state;
    uint64_t one = 1;
    (void)!write(s->wake_fd, &one, sizeof one);
}

const lk_io_ops lk_io_uring = {
    .name = "io_uring",
    .init = ur_init,
    .destroy = ur_destroy,
    .add_conn = ur_add_conn,
    .flush = ur_flush,
    .set_paused = ur_set_paused,
    .close_conn = ur_close_conn,
    .wait = ur_wait,
    .wake = ur_wake,
    .discard_fd = ur_discard_fd,
    /* data workers never run a TLS handshake: the acceptor (epoll) does */
    .ktls_consume = NULL,
    .ktls_install = NULL,
};

/* counters.c — shared-memory counter region: creation, seqlock publish, read. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/common.h"
#include "common/counters.h"

static size_t region_size(uint32_t n_workers)
{
    return sizeof(lk_shm_header) + (size_t)n_workers * sizeof(lk_worker_counters);
}

int lk_shm_create(lk_shm *shm, const char *name, uint32_t n_workers, uint32_t role)
{
    memset(shm, 0, sizeof *shm);
    shm->len = region_size(n_workers);
    int fd = -1;
    if (name) {
        if (strlen(name) >= sizeof shm->name || name[0] != '/')
            return lk_fail(LK_ERR_CONFIG, "shm name must start with '/' and be < 128 chars: %s", name);
        fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
        if (fd < 0)
            return lk_fail(LK_ERR_SYSTEM, "shm_open(%s): %s", name, strerror(errno));
        if (ftruncate(fd, (off_t)shm->len) != 0) {
            int e = errno;
            close(fd);
            shm_unlink(name);
            return lk_fail(LK_ERR_SYSTEM, "ftruncate(%s): %s", name, strerror(e));
        }
        strcpy(shm->name, name);
    }
    int flags = name ? MAP_SHARED : (MAP_PRIVATE | MAP_ANONYMOUS);
    shm->base = mmap(NULL, shm->len, PROT_READ | PROT_WRITE, flags, fd, 0);
    int e = errno;
    if (fd >= 0)
        close(fd);
    if (shm->base == MAP_FAILED) {
        shm->base = NULL;
        if (name)
            shm_unlink(name);
        return lk_fail(LK_ERR_SYSTEM, "mmap counters: %s", strerror(e));
    }
    lk_shm_header *h = shm->base;
    h->header_size = sizeof(lk_shm_header);
    h->worker_size = sizeof(lk_worker_counters);
    h->n_workers = n_workers;
    h->n_counters = LK_C__COUNT;
    h->role = role;
    h->pid = getpid();
    h->start_ns = lk_now_ns();
    h->layout = lk_counters_layout();
    /* magic last: a reader that sees it sees a complete header */
    __atomic_store_n(&h->magic, (uint32_t)LK_SHM_MAGIC, __ATOMIC_RELEASE);
    return LK_OK;
}

void lk_shm_destroy(lk_shm *shm)
{
    if (shm->base)
        munmap(shm->base, shm->len);
    if (shm->name[0])
        shm_unlink(shm->name);
    memset(shm, 0, sizeof *shm);
}

lk_worker_counters *lk_shm_worker(lk_shm *shm, uint32_t w)
{
    return (lk_worker_counters *)((char *)shm->base + sizeof(lk_shm_header)) + w;
}

/* Word-by-word relaxed atomics: the seqlock makes torn copies detectable,
 * the atomics keep each word's copy well-defined under the C11 model. */
static void copy_words(uint64_t *dst, const uint64_t *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        __atomic_store_n(&dst[i], __atomic_load_n(&src[i], __ATOMIC_RELAXED), __ATOMIC_RELAXED);
}

#define LK_PAYLOAD_WORDS ((sizeof(lk_worker_counters) - sizeof(uint64_t)) / sizeof(uint64_t))

void lk_counters_publish(lk_worker_counters *shared, const lk_worker_counters *local)
{
    /* gettid is a syscall: ask once per thread */
    static _Thread_local uint64_t tid;
    if (!tid)
        tid = (uint64_t)gettid();
    uint64_t seq = __atomic_load_n(&shared->seq, __ATOMIC_RELAXED);
    __atomic_store_n(&shared->seq, seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    copy_words(&shared->ns, &local->ns, LK_PAYLOAD_WORDS);
    __atomic_store_n(&shared->tid, tid, __ATOMIC_RELAXED);
    __atomic_store_n(&shared->seq, seq + 2, __ATOMIC_RELEASE);
}

int lk_counters_check(const void *base, size_t len)
{
    const lk_shm_header *h = base;
    if (len < sizeof *h)
        return lk_fail(LK_ERR_CONFIG, "counter region is %zu bytes, smaller than its header", len);
    if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != LK_SHM_MAGIC)
        return lk_fail(LK_ERR_CONFIG, "not a labkit counter region (bad magic)");
    if (h->layout != lk_counters_layout() || h->header_size != sizeof(lk_shm_header) ||
        h->worker_size != sizeof(lk_worker_counters) || h->n_counters != LK_C__COUNT)
        return lk_fail(LK_ERR_CONFIG,
                       "counter layout %08x (%u counters) was written by a different build than "
                       "this reader (layout %08x, %u counters): rebuild labkit and restart the "
                       "relay", h->layout, h->n_counters, lk_counters_layout(),
                       (unsigned)LK_C__COUNT);
    if (h->n_workers > LK_MAX_WORKERS || len < region_size(h->n_workers))
        return lk_fail(LK_ERR_CONFIG, "counter region too short for %u workers", h->n_workers);
    return LK_OK;
}

int lk_counters_read(const void *base, size_t len, uint32_t w, lk_worker_counters *out)
{
    int rc = lk_counters_check(base, len);
    if (rc != LK_OK)
        return rc;
    const lk_shm_header *h = base;
    if (w >= h->n_workers)
        return lk_fail(LK_ERR_CONFIG, "worker %u out of range (%u workers)", w, h->n_workers);
    const lk_worker_counters *src =
        (const lk_worker_counters *)((const char *)base + sizeof(lk_shm_header)) + w;
    for (int attempt = 0; attempt < 10000; attempt++) {
        /* a writer preempted mid-publication keeps the sequence odd until it
         * runs again: let it run rather than spin out the attempts */
        if (attempt && attempt % 64 == 0)
            sched_yield();
        uint64_t s1 = __atomic_load_n(&src->seq, __ATOMIC_ACQUIRE);
        if (s1 & 1)
            continue;
        copy_words(&out->ns, &src->ns, LK_PAYLOAD_WORDS);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&src->seq, __ATOMIC_RELAXED) == s1) {
            out->seq = s1;
            return LK_OK;
        }
    }
    return lk_fail(LK_ERR_RETRY, "worker %u counters kept changing during 10000 read attempts", w);
}

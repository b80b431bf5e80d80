/* counters.h — the writer side of the shared-memory counters.
 *
 * Each worker counts into a private lk_worker_counters (plain increments, no
 * atomics on the hot path) and publishes a copy to the shared region once per
 * loop pass under a seqlock.  Readers (labkit/counters/shm.py through
 * lk_counters_read) retry until they see an even, unchanged sequence. */
#ifndef LK_COUNTERS_H
#define LK_COUNTERS_H

#include "labkit.h"

typedef struct lk_shm {
    void *base;
    size_t len;
    char name[128];
} lk_shm;

/* Create and size the region (name NULL: a private anonymous mapping, so the
 * relay code need not care whether anyone watches). */
int lk_shm_create(lk_shm *shm, const char *name, uint32_t n_workers, uint32_t role);
void lk_shm_destroy(lk_shm *shm);
lk_worker_counters *lk_shm_worker(lk_shm *shm, uint32_t w);

/* Publish `local` into the shared slot `shared` (seqlock writer side). */
void lk_counters_publish(lk_worker_counters *shared, const lk_worker_counters *local);

/* log2 bucket for a completions-per-enter histogram */
static inline unsigned lk_hist_bucket(uint64_t n)
{
    unsigned b = 0;
    while (n > 1 && b < LK_HIST_BUCKETS - 1) {
        n >>= 1;
        b++;
    }
    return b;
}

#endif

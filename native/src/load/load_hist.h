/* load_hist.h — a fixed-memory log-linear latency histogram (HDR-style).
 *
 * Why this shape: latencies span nanoseconds to seconds, and a percentile is
 * only useful with a bounded relative error.  Values below 256 ns get a
 * bucket each (exact); above that every power of two is split into 128
 * linear sub-buckets, so a bucket is at most 1/128 of its lower bound wide
 * and its midpoint is within 0.4 % of any value in it.  7424 buckets cover
 * the whole uint64 range in 58 KiB: recording is a clz and an increment, no
 * allocation, no overflow case. */
#ifndef LK_LOAD_HIST_H
#define LK_LOAD_HIST_H

#include <stdint.h>

#define LK_LH_SUB_BITS 7
#define LK_LH_SUB (1u << LK_LH_SUB_BITS)
#define LK_LH_BUCKETS ((65u - LK_LH_SUB_BITS) * LK_LH_SUB)

typedef struct lk_load_hist {
    uint64_t n;
    uint64_t min, max;        /* exact, ns */
    double sum;               /* ns; double: a long run would overflow uint64 */
    uint64_t counts[LK_LH_BUCKETS];
} lk_load_hist;

static inline uint32_t lk_lh_index(uint64_t v)
{
    if (v < 2 * LK_LH_SUB)
        return (uint32_t)v;
    uint32_t msb = 63u - (uint32_t)__builtin_clzll(v);
    uint32_t shift = msb - LK_LH_SUB_BITS;
    uint32_t sub = (uint32_t)(v >> shift);  /* in [SUB, 2 SUB) */
    return 2 * LK_LH_SUB + (shift - 1) * LK_LH_SUB + (sub - LK_LH_SUB);
}

static inline void lk_lh_record(lk_load_hist *h, uint64_t v)
{
    h->counts[lk_lh_index(v)]++;
    if (h->n == 0 || v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    h->n++;
    h->sum += (double)v;
}

void lk_lh_reset(lk_load_hist *h);
/* Add `src` into `dst` (per-thread histograms merged at the end of a run). */
void lk_lh_merge(lk_load_hist *dst, const lk_load_hist *src);
/* The value at quantile q (0..1), the midpoint of its bucket clamped to
 * [min, max]; 0 when empty. */
double lk_lh_quantile(const lk_load_hist *h, double q);

#endif

/* load_hist.c — merging and reading the latency histogram (recording is
 * inline in load_hist.h: it runs once per received packet). */
#include <string.h>

#include "load/load_hist.h"

void lk_lh_reset(lk_load_hist *h) { memset(h, 0, sizeof *h); }

void lk_lh_merge(lk_load_hist *dst, const lk_load_hist *src)
{
    if (src->n == 0)
        return;
    for (uint32_t i = 0; i < LK_LH_BUCKETS; i++)
        dst->counts[i] += src->counts[i];
    if (dst->n == 0 || src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
    dst->n += src->n;
    dst->sum += src->sum;
}

/* Inverse of lk_lh_index: the range of values bucket i holds. */
static void bucket_range(uint32_t i, uint64_t *lo, uint64_t *hi)
{
    if (i < 2 * LK_LH_SUB) {
        *lo = *hi = i;
        return;
    }
    uint32_t j = i - 2 * LK_LH_SUB;
    uint32_t shift = j / LK_LH_SUB + 1;
    uint64_t sub = j % LK_LH_SUB + LK_LH_SUB;
    *lo = sub << shift;
    *hi = ((sub + 1) << shift) - 1;
}

double lk_lh_quantile(const lk_load_hist *h, double q)
{
    if (h->n == 0)
        return 0;
    /* nearest rank: the smallest value with at least q*n samples at or below it */
    double want = q * (double)h->n;
    uint64_t rank = want <= 1 ? 1 : want >= (double)h->n ? h->n : (uint64_t)want;
    if ((double)rank < want)
        rank++;  /* ceil without libm */
    uint64_t seen = 0;
    for (uint32_t i = 0; i < LK_LH_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t lo, hi;
            bucket_range(i, &lo, &hi);
            double mid = ((double)lo + (double)hi) / 2;
            if (mid < (double)h->min)
                mid = (double)h->min;
            if (mid > (double)h->max)
                mid = (double)h->max;
            return mid;
        }
    }
    return (double)h->max;
}

/* common.h — small helpers every native file uses: time, error detail, logging. */
#ifndef LK_COMMON_H
#define LK_COMMON_H

#include <stdarg.h>
#include <stdint.h>
#include <time.h>

#include "labkit.h"

#define LK_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define LK_LIKELY(x) __builtin_expect(!!(x), 1)
#define LK_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* CLOCK_MONOTONIC in nanoseconds: a vDSO call, no syscall. */
static inline uint64_t lk_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#define LK_MS (1000000ull)

/* Record the detail lk_last_error() returns and give back `err`, so call
 * sites read `return lk_fail(LK_ERR_CONFIG, "workers must be ...", n);`. */
int lk_fail(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* One line on stderr, prefixed "labkit relay: ".  Only for events a person
 * should see (a pool ran dry, start-up facts); never per packet. */
void lk_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The same for another program of the module ("labkit load"). */
void lk_vlog(const char *who, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

#endif

/* errors.c — error codes to text, and each thread's failure detail. */
#include <stdarg.h>
#include <stdio.h>

#include "common/common.h"

/* Per thread: relay workers, the relay host's run thread and a sampler reading
 * counters in the same process each keep their own, so one never reads (or
 * overwrites) another's detail. */
static _Thread_local char last_error[2048];

const char *lk_strerror(int err)
{
    switch (err) {
    case LK_OK: return "ok";
    case LK_ERR_CONFIG: return "invalid configuration";
    case LK_ERR_SYSTEM: return "system call failed";
    case LK_ERR_TLS: return "TLS set-up failed";
    case LK_ERR_UNSUPPORTED: return "not supported by this kernel";
    case LK_ERR_NOMEM: return "out of memory";
    case LK_ERR_BUSY: return "already running";
    case LK_ERR_CONNECT: return "connection failed";
    case LK_ERR_RETRY: return "changing while read; try again";
    default: return "unknown error";
    }
}

const char *lk_last_error(void) { return last_error; }

int lk_fail(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return err;
}

void lk_vlog(const char *who, const char *fmt, va_list ap)
{
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    /* one write: lines from several threads do not interleave */
    fprintf(stderr, "%s: %s\n", who, line);
}

void lk_log(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lk_vlog("labkit relay", fmt, ap);
    va_end(ap);
}

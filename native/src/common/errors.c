/* errors.c — error codes to text, and the per-process failure detail. */
#include <stdarg.h>
#include <stdio.h>

#include "common/common.h"

static char last_error[512];

const char *lk_strerror(int err)
{
    switch (err) {
    case LK_OK: return "ok";
    case LK_ERR_CONFIG: return "invalid configuration";
    case LK_ERR_SYSTEM: return "system call failed";
    case LK_ERR_TLS: return "TLS set-up failed";
    case LK_ERR_UNSUPPORTED: return "not supported on this machine";
    case LK_ERR_NOMEM: return "out of memory";
    case LK_ERR_BUSY: return "already running";
    case LK_ERR_CONNECT: return "connection failed";
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

/* contract.c — the contract tables of labkit.h as data, for the relay's own checks
 * and for Python (through cffi), and the checks a relay config must pass. */
#include <stdio.h>
#include <string.h>

#include "common/common.h"

#define LK_SWITCH_ROW_(ID, BACKENDS, EPOLL_ON, URING_ON, REQUIRES, WHY, EXCLUDES, EX_WHY,  \
                       KERNEL, HELP)                                                     \
    [LK_SWI_##ID] = {.name = #ID, .bit = LK_SW_##ID, .backends = (BACKENDS),            \
                     .default_on = {(EPOLL_ON), (URING_ON)}, .requires = (REQUIRES),    \
                     .requires_why = WHY, .excludes = (EXCLUDES), .excludes_why = EX_WHY, \
                     .kernel = KERNEL, .help = HELP},
const lk_switch_info lk_switches[LK_SWITCH__COUNT] = {LK_SWITCH_TABLE(LK_SWITCH_ROW_)};

#define LK_LIMIT_ROW_(FIELD, MIN, MAX, DEF, UNIT, HELP)                                 \
    [LK_LIMIT_##FIELD] = {.name = #FIELD, .min = (MIN), .max = (MAX), .default_value = (DEF),  \
                          .unit = UNIT, .help = HELP},
const lk_limit_info lk_limits[LK_LIMIT__COUNT] = {LK_LIMIT_TABLE(LK_LIMIT_ROW_)};

#define LK_COUNTER_ROW_(ID, KIND, GROUP, UNIT, HELP) \
    [LK_C_##ID] = {.name = #ID, .kind = LK_KIND_##KIND, .group = GROUP, .unit = UNIT, .help = HELP},
const lk_counter_info lk_counters[LK_C__COUNT] = {LK_COUNTER_TABLE(LK_COUNTER_ROW_)};

/* The tables stay within what the structs that carry them can hold. */
_Static_assert(LK_C__COUNT <= LK_MAX_COUNTERS, "more counters than a counter slot holds");
_Static_assert(LK_SWITCH__COUNT <= 32, "switches are bits of a uint32_t");
_Static_assert(sizeof lk_counters / sizeof lk_counters[0] == LK_C__COUNT, "counter rows");
_Static_assert(sizeof lk_switches / sizeof lk_switches[0] == LK_SWITCH__COUNT, "switch rows");

uint32_t lk_counters_layout(void)
{
    /* FNV-1a over every row's name and kind, in order */
    uint32_t h = 2166136261u;
    for (int i = 0; i < LK_C__COUNT; i++) {
        for (const char *p = lk_counters[i].name; *p; p++)
            h = (h ^ (uint8_t)*p) * 16777619u;
        h = (h ^ (uint8_t)(lk_counters[i].kind + 1)) * 16777619u;
    }
    return h;
}

/* Problems are gathered in one buffer, one line each, and set as the detail at the end:
 * "field<TAB>what is wrong<TAB>what to do". */
typedef struct problems {
    char text[2048];
    size_t len;
    int n;
} problems;

__attribute__((format(printf, 4, 5)))
static void problem(problems *p, const char *field, const char *fix, const char *fmt, ...)
{
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    int n = snprintf(p->text + p->len, sizeof p->text - p->len, "%s%s\t%s\t%s",
                     p->n ? "\n" : "", field, why, fix);
    if (n > 0 && (size_t)n < sizeof p->text - p->len)
        p->len += (size_t)n;
    p->n++;
}

/* Switch names as fields: lower case, as Python and the command line spell them. */
static const char *field_name(const char *id, char *buf, size_t cap)
{
    size_t i = 0;
    for (; id[i] && i + 1 < cap; i++)
        buf[i] = (char)(id[i] >= 'A' && id[i] <= 'Z' ? id[i] - 'A' + 'a' : id[i]);
    buf[i] = 0;
    return buf;
}

static uint32_t limit_value(const lk_relay_config *cfg, int i)
{
    switch (i) {
    case LK_LIMIT_workers: return (uint32_t)cfg->workers;
    case LK_LIMIT_queue_depth: return cfg->queue_depth;
    case LK_LIMIT_max_conns: return cfg->max_conns;
    case LK_LIMIT_accept_limit: return cfg->accept_limit;
    case LK_LIMIT_accept_burst: return cfg->accept_burst;
    default: return cfg->pool_packets;
    }
}
_Static_assert(LK_LIMIT__COUNT == 6, "limit_value() reads every limit field");

static void check_switches(const lk_relay_config *cfg, problems *p)
{
    uint32_t backend = cfg->io == LK_IO_URING ? LK_BK_URING : LK_BK_EPOLL;
    uint32_t known = 0;
    for (int i = 0; i < LK_SWITCH__COUNT; i++)
        known |= lk_switches[i].bit;
    if (cfg->switches & ~known)
        problem(p, "switches", "", "has unknown bits 0x%x", cfg->switches & ~known);
    for (int i = 0; i < LK_SWITCH__COUNT; i++) {
        const lk_switch_info *s = &lk_switches[i];
        if (!(cfg->switches & s->bit))
            continue;
        char name[32], fix[128];
        field_name(s->name, name, sizeof name);
        if (!(s->backends & backend)) {
            snprintf(fix, sizeof fix, "set {io=uring} or leave {%s} unset", name);
            problem(p, name, fix, "applies to io_uring only");
        }
        for (int j = 0; j < LK_SWITCH__COUNT; j++) {
            if (!(s->requires & lk_switches[j].bit) || (cfg->switches & lk_switches[j].bit))
                continue;
            char needed[32];
            field_name(lk_switches[j].name, needed, sizeof needed);
            snprintf(fix, sizeof fix, "turn {%s} on too, or {%s=False}", needed, name);
            problem(p, name, fix, "needs %s: %s", needed, s->requires_why);
        }
        for (int j = 0; j < LK_SWITCH__COUNT; j++) {
            if (!(s->excludes & lk_switches[j].bit) || !(cfg->switches & lk_switches[j].bit))
                continue;
            char other[32];
            field_name(lk_switches[j].name, other, sizeof other);
            snprintf(fix, sizeof fix, "set {%s=False} with it, or {%s=False}", other, name);
            problem(p, name, fix, "cannot be on with %s: %s", other, s->excludes_why);
        }
    }
}

int lk_relay_config_check(const lk_relay_config *cfg)
{
    problems p = {0};
    if (cfg->io != LK_IO_EPOLL && cfg->io != LK_IO_URING)
        problem(&p, "io", "choose one of 'epoll', 'uring'", "is not known (%d)", cfg->io);
    if (cfg->tls < LK_TLS_OFF || cfg->tls > LK_TLS_KTLS)
        problem(&p, "tls", "choose one of 'off', 'user', 'ktls'", "is not known (%d)", cfg->tls);
    for (int i = 0; i < LK_LIMIT__COUNT; i++) {
        const lk_limit_info *l = &lk_limits[i];
        uint32_t v = limit_value(cfg, i);
        if (v < l->min || v > l->max || (i == LK_LIMIT_workers && cfg->workers < 1))
            problem(&p, l->name, "", "must be an integer %u..%u (default %u)", l->min, l->max,
                    l->default_value);
    }
    if (cfg->handshake_timeout_ms == 0)
        problem(&p, "handshake_timeout", "", "must be seconds > 0");
    if (cfg->keepalive_ms == 0)
        problem(&p, "keepalive", "", "must be seconds > 0");
    check_switches(cfg, &p);
    return p.n ? lk_fail(LK_ERR_CONFIG, "%s", p.text) : LK_OK;
}

/* pool.c — packet-buffer pools (see pool.h for why they look like this). */
#include <stdlib.h>
#include <sys/mman.h>

#include "common/common.h"
#include "relay/pool.h"

static int class_init(lk_pool_class *c, uint32_t count, size_t payload)
{
    /* 64-byte strides keep each buffer's header on its own cache line */
    c->stride = (sizeof(lk_pkt) + payload + 63) & ~(size_t)63;
    c->count = count;
    c->mem = mmap(NULL, c->stride * count, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                  -1, 0);
    if (c->mem == MAP_FAILED) {
        c->mem = NULL;
        return -1;
    }
    c->free_stack = malloc(sizeof(uint32_t) * count);
    if (!c->free_stack)
        return -1;
    for (uint32_t i = 0; i < count; i++)
        c->free_stack[i] = count - 1 - i;
    c->n_free = count;
    return 0;
}

static void class_destroy(lk_pool_class *c)
{
    if (c->mem)
        munmap(c->mem, c->stride * c->count);
    free(c->free_stack);
}

int lk_pool_init(lk_pool *p, uint16_t owner, uint32_t n_small, uint32_t n_large)
{
    *p = (lk_pool){.owner = owner};
    if (class_init(&p->small, n_small, LK_PKT_SMALL) != 0 ||
        class_init(&p->large, n_large, LK_PKT_LARGE) != 0) {
        lk_pool_destroy(p);
        return lk_fail(LK_ERR_NOMEM, "cannot allocate packet pools (%u small, %u large buffers)",
                       n_small, n_large);
    }
    return LK_OK;
}

void lk_pool_destroy(lk_pool *p)
{
    class_destroy(&p->small);
    class_destroy(&p->large);
}

lk_pkt *lk_pool_get(lk_pool *p, uint32_t frame_len)
{
    int large = frame_len > LK_PKT_SMALL;
    lk_pool_class *c = large ? &p->large : &p->small;
    if (LK_UNLIKELY(c->n_free == 0)) {
        if (!p->warned_empty) {
            p->warned_empty = 1;
            lk_log("worker %u: %s packet pool ran dry (%u buffers); packets are dropped and "
                   "counted as drop_pool_empty; raise pool_packets",
                   p->owner, large ? "large" : "small", c->count);
        }
        return NULL;
    }
    lk_pkt *pkt = (lk_pkt *)(c->mem + c->stride * c->free_stack[--c->n_free]);
    pkt->owner = p->owner;
    pkt->large = (uint8_t)large;
    pkt->disco = 0;
    pkt->xbucket = 0;
    pkt->len = 0;
    return pkt;
}

void lk_pool_put(lk_pool *p, lk_pkt *pkt)
{
    lk_pool_class *c = pkt->large ? &p->large : &p->small;
    c->free_stack[c->n_free++] = (uint32_t)(((uint8_t *)pkt - c->mem) / c->stride);
}

uint32_t lk_pool_free_count(const lk_pool *p) { return p->small.n_free + p->large.n_free; }

uint32_t lk_pool_size(const lk_pool *p) { return p->small.count + p->large.count; }

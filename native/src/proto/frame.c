/* frame.c — per-type length rules and the streaming frame reader. */
#include <stdlib.h>
#include <string.h>

#include "proto/frame.h"
#include "labkit.h"

enum lk_body_action lk_frame_rule(uint8_t type, uint32_t len, int mesh, int *mesh_denied)
{
    *mesh_denied = 0;
    switch (type) {
    case LK_FT_SEND_PACKET:
        return len >= LK_KEY_LEN && len - LK_KEY_LEN <= LK_MAX_PACKET ? LK_BODY_BUFFER
                                                                     : LK_BODY_CLOSE;
    case LK_FT_FORWARD_PACKET:
        if (!mesh) {
            *mesh_denied = 1;  /* Go closes before reading the payload */
            return LK_BODY_CLOSE;
        }
        return len >= 2 * LK_KEY_LEN && len - 2 * LK_KEY_LEN <= LK_MAX_PACKET ? LK_BODY_BUFFER
                                                                             : LK_BODY_CLOSE;
    case LK_FT_NOTE_PREFERRED:
        return len == 1 ? LK_BODY_BUFFER : LK_BODY_CLOSE;
    case LK_FT_WATCH_CONNS:
        *mesh_denied = !mesh;
        return mesh && len == 0 ? LK_BODY_BUFFER : LK_BODY_CLOSE;
    case LK_FT_CLOSE_PEER:
        *mesh_denied = !mesh;
        return mesh && len == LK_KEY_LEN ? LK_BODY_BUFFER : LK_BODY_CLOSE;
    case LK_FT_PING:
        return len >= LK_PING_MIN && len <= LK_PING_MAX ? LK_BODY_BUFFER : LK_BODY_CLOSE;
    default:
        /* every other type, assigned or not, is skipped by length (docs/protocol.md §3.5) */
        return LK_BODY_SKIP;
    }
}

int lk_is_disco(const uint8_t *packet, uint32_t len)
{
    return len >= LK_DISCO_MIN && memcmp(packet, lk_disco_magic, sizeof lk_disco_magic) == 0;
}

void lk_frame_reader_init(lk_frame_reader *r, lk_frame_begin_fn begin, lk_frame_end_fn end,
                          void *ctx)
{
    memset(r, 0, sizeof *r);
    r->begin = begin;
    r->end = end;
    r->ctx = ctx;
}

/* Finish the current frame: hand it to the owner and reset for the next. */
static int complete(lk_frame_reader *r)
{
    uint8_t *payload = r->skipping ? NULL : r->dst;
    r->in_body = 0;
    r->hdr_have = 0;
    r->dst = NULL;
    return r->end(r->ctx, r->type, r->len, payload);
}

static int start_body(lk_frame_reader *r)
{
    r->type = r->hdr[0];
    r->len = lk_get_be32(r->hdr + 1);
    r->have = 0;
    r->dst = NULL;
    enum lk_body_action a = r->begin(r->ctx, r->type, r->len, &r->dst);
    if (a == LK_BODY_CLOSE)
        return -1;
    r->skipping = a == LK_BODY_SKIP;
    r->in_body = 1;
    return 0;
}

int lk_frame_feed(lk_frame_reader *r, const uint8_t *data, size_t n, size_t *consumed)
{
    size_t off = 0;
    int rc = 0;
    while (rc == 0) {
        if (!r->in_body) {
            if (off == n)
                break;
            size_t take = LK_FRAME_HDR - r->hdr_have;
            if (take > n - off)
                take = n - off;
            memcpy(r->hdr + r->hdr_have, data + off, take);
            r->hdr_have += (uint8_t)take;
            off += take;
            if (r->hdr_have < LK_FRAME_HDR)
                break;
            if (start_body(r) != 0) {
                rc = -1;
                break;
            }
        }
        /* an empty payload completes at once, even with no bytes left */
        size_t want = r->len - r->have;
        size_t take = want < n - off ? want : n - off;
        if (!r->skipping && take)
            memcpy(r->dst + r->have, data + off, take);
        r->have += (uint32_t)take;
        off += take;
        if (r->have < r->len)
            break;
        rc = complete(r) ? 1 : 0;
    }
    *consumed = off;
    return rc;
}

/* ---- test surface ---------------------------------------------------------- */

struct test_ctx {
    lk_parsed_frame *out;
    size_t max_out;
    size_t count;
    uint8_t body[2 * LK_KEY_LEN + LK_MAX_PACKET];
};

static enum lk_body_action test_begin(void *vctx, uint8_t type, uint32_t len, uint8_t **dst)
{
    struct test_ctx *ctx = vctx;
    int mesh_denied;
    enum lk_body_action a = lk_frame_rule(type, len, 1, &mesh_denied);
    *dst = ctx->body;
    return a;
}

static uint32_t fnv1a(const uint8_t *p, uint32_t n)
{
    uint32_t h = 0x811c9dc5u;
    for (uint32_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x01000193u;
    return h;
}

static int test_end(void *vctx, uint8_t type, uint32_t len, uint8_t *payload)
{
    struct test_ctx *ctx = vctx;
    if (ctx->count < ctx->max_out) {
        lk_parsed_frame *f = &ctx->out[ctx->count];
        f->type = type;
        f->len = len;
        f->skipped = payload == NULL;
        f->fnv1a = payload ? fnv1a(payload, len) : 0;
    }
    ctx->count++;
    return 0;
}

int lk_test_parse_stream(const uint8_t *data, size_t len, size_t chunk, lk_parsed_frame *out,
                         size_t max_out)
{
    struct test_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return -1;
    ctx->out = out;
    ctx->max_out = max_out;
    lk_frame_reader r;
    lk_frame_reader_init(&r, test_begin, test_end, ctx);
    if (chunk == 0)
        chunk = len ? len : 1;
    int result = 0;
    for (size_t off = 0; off < len; off += chunk) {
        size_t n = len - off < chunk ? len - off : chunk;
        size_t used;
        if (lk_frame_feed(&r, data + off, n, &used) < 0) {
            result = -1 - (int)ctx->count;
            break;
        }
    }
    if (result == 0)
        result = (int)(ctx->count < max_out ? ctx->count : max_out);
    free(ctx);
    return result;
}

/* websocket.c — RFC 6455 framing for DERP over WebSocket (websocket.h).
 *
 * The reader is a byte-at-a-time-safe state machine: a header may arrive split
 * anywhere, payload is streamed (only control frames, at most 125 bytes, are
 * buffered), so memory per connection is fixed whatever a client claims.
 * Every rule a server must enforce (§5.1 masking, §5.2 RSV and opcodes, §5.4
 * fragmentation, §5.5 control frames, §7.4 close codes) fails the stream with
 * its own reason, so the relay can count why it closed a connection. */
#include <openssl/evp.h>
#include <string.h>

#include "proto/websocket.h"

static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

void lk_ws_reader_init(lk_ws_reader *r, int from_client, uint32_t max_message,
                       lk_ws_data_fn on_data, lk_ws_control_fn on_control, void *ctx)
{
    memset(r, 0, sizeof *r);
    r->from_client = (uint8_t)(from_client != 0);
    r->max_message = max_message;
    r->on_data = on_data;
    r->on_control = on_control;
    r->ctx = ctx;
}

uint32_t lk_ws_mask(uint8_t *p, size_t n, const uint8_t mask[4], uint32_t pos)
{
    size_t i = 0;
    /* byte-wise up to a mask boundary, then 8 bytes at a time: unmasking is on
     * every received byte, so it is worth a word loop the compiler vectorises */
    for (; i < n && (pos & 3); i++, pos++)
        p[i] ^= mask[pos & 3];
    uint8_t m8[8] = {mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]};
    uint64_t m;
    memcpy(&m, m8, 8);
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        v ^= m;
        memcpy(p + i, &v, 8);
    }
    for (; i < n; i++, pos++)
        p[i] ^= mask[pos & 3];
    return pos & 3;
}

size_t lk_ws_put_header(uint8_t *out, uint8_t opcode, uint64_t len, const uint8_t *mask)
{
    size_t n = 2;
    out[0] = (uint8_t)(0x80 | (opcode & 0x0f));
    uint8_t mbit = mask ? 0x80 : 0;
    if (len < 126) {
        out[1] = (uint8_t)(mbit | len);
    } else if (len <= 0xffff) {
        out[1] = mbit | 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        n = 4;
    } else {
        out[1] = mbit | 127;
        for (int i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        n = 10;
    }
    if (mask) {
        memcpy(out + n, mask, 4);
        n += 4;
    }
    return n;
}

int lk_ws_accept(const char *key, size_t key_len, char *out)
{
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md && EVP_DigestInit_ex(md, EVP_sha1(), NULL) == 1 &&
             EVP_DigestUpdate(md, key, key_len) == 1 &&
             EVP_DigestUpdate(md, ws_guid, sizeof ws_guid - 1) == 1 &&
             EVP_DigestFinal_ex(md, digest, &dlen) == 1 && dlen == 20;
    EVP_MD_CTX_free(md);
    if (!ok)
        return -1;
    return EVP_EncodeBlock((unsigned char *)out, digest, 20) == LK_WS_ACCEPT_LEN ? 0 : -1;
}

/* Well-formed UTF-8 (RFC 3629: no overlongs, no surrogates, at most U+10FFFF). */
static int utf8_ok(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        size_t more;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            more = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            more = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            more = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (n - i - 1 < more)
            return 0;
        for (size_t k = 1; k <= more; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (p[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += more + 1;
    }
    return 1;
}

int lk_ws_close_body_ok(const uint8_t *p, size_t n)
{
    if (n == 0)
        return 1;
    if (n == 1)
        return 0;
    unsigned code = (unsigned)p[0] << 8 | p[1];
    /* §7.4: 1004-1006 and 1015 are never sent; below 1000 and 1016-2999 unassigned */
    int known = (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
                (code >= 3000 && code <= 4999);
    return known && utf8_ok(p + 2, n - 2);
}

static int fail(lk_ws_reader *r, int why)
{
    r->violation = why;
    return -1;
}

/* Header bytes the frame in hdr needs in all (2 until the second byte is in). */
static size_t header_need(const lk_ws_reader *r)
{
    if (r->hdr_have < 2)
        return 2;
    uint8_t len7 = r->hdr[1] & 0x7f;
    size_t n = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0);
    return n + ((r->hdr[1] & 0x80) ? 4 : 0);
}

/* A complete header: check it against the rules and set up its payload. */
static int begin_frame(lk_ws_reader *r)
{
    uint8_t b0 = r->hdr[0], b1 = r->hdr[1];
    uint8_t op = b0 & 0x0f;
    size_t at = 2;
    uint64_t len = b1 & 0x7f;
    if (len == 126) {
        len = (uint64_t)r->hdr[2] << 8 | r->hdr[3];
        at = 4;
    } else if (len == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | r->hdr[2 + i];
        at = 10;
        if (len >> 63)
            return fail(r, LK_WS_OVERSIZE);
    }
    int masked = (b1 & 0x80) != 0;
    if (masked != r->from_client)
        return fail(r, LK_WS_UNMASKED);
    if (b0 & 0x70)  /* no extension was negotiated, so no RSV bit may be set */
        return fail(r, LK_WS_OPCODE);
    r->fin = (b0 & 0x80) != 0;
    r->opcode = op;
    r->left = len;
    r->mask_pos = 0;
    if (masked)
        memcpy(r->mask, r->hdr + at, 4);
    if (op & 0x08) {
        if (op != LK_WS_OP_CLOSE && op != LK_WS_OP_PING && op != LK_WS_OP_PONG)
            return fail(r, LK_WS_OPCODE);
        if (!r->fin || len > LK_WS_CTRL_MAX)
            return fail(r, LK_WS_CONTROL);
        r->ctrl_len = 0;
        return 0;
    }
    /* DERP is binary: a text message is not a DERP client (Go's reader refuses it too) */
    if (op != LK_WS_OP_BINARY && op != LK_WS_OP_CONT)
        return fail(r, LK_WS_OPCODE);
    if ((op == LK_WS_OP_CONT) != (r->in_message != 0))
        return fail(r, LK_WS_FRAGMENT);
    uint64_t total = (op == LK_WS_OP_CONT ? r->message_len : 0) + len;
    if (total > r->max_message)
        return fail(r, LK_WS_OVERSIZE);
    r->message_len = total;
    r->in_message = !r->fin;
    return 0;
}

static int end_control(lk_ws_reader *r)
{
    if (r->opcode == LK_WS_OP_CLOSE && !lk_ws_close_body_ok(r->ctrl, r->ctrl_len))
        return fail(r, LK_WS_CONTROL);
    return r->on_control(r->ctx, r->opcode, r->ctrl, r->ctrl_len) ? 1 : 0;
}

int lk_ws_feed(lk_ws_reader *r, const uint8_t *data, size_t n, uint8_t *scratch,
               size_t scratch_len)
{
    if (r->violation)
        return -1;
    while (n > 0) {
        size_t need = header_need(r);
        if (r->hdr_have < need) {
            /* header bytes: two first, then as many as they announce */
            while (n > 0 && r->hdr_have < need) {
                r->hdr[r->hdr_have++] = *data++;
                n--;
                need = header_need(r);
            }
            if (r->hdr_have < need)
                return 0;
            if (begin_frame(r) < 0)
                return -1;
            /* an empty frame completes here, in this same pass */
        }
        /* payload (possibly none) */
        size_t take = r->left < n ? (size_t)r->left : n;
        if (r->opcode & 0x08) {
            memcpy(r->ctrl + r->ctrl_len, data, take);
            r->mask_pos = lk_ws_mask(r->ctrl + r->ctrl_len, take, r->mask, r->mask_pos);
            r->ctrl_len = (uint8_t)(r->ctrl_len + take);
        } else if (!r->from_client) {
            /* a server's payload is not masked: hand it over in place */
            if (take && r->on_data(r->ctx, data, take)) {
                r->left -= take;
                if (r->left == 0)
                    r->hdr_have = 0;
                return 1;
            }
        } else {
            for (size_t done = 0; done < take;) {
                size_t k = take - done < scratch_len ? take - done : scratch_len;
                memcpy(scratch, data + done, k);
                if (r->from_client)
                    r->mask_pos = lk_ws_mask(scratch, k, r->mask, r->mask_pos);
                done += k;
                if (r->on_data(r->ctx, scratch, k)) {
                    r->left -= done;
                    if (r->left == 0)
                        r->hdr_have = 0;
                    return 1;
                }
            }
        }
        data += take;
        n -= take;
        r->left -= take;
        if (r->left > 0)
            return 0;
        r->hdr_have = 0;  /* the frame is complete */
        if (r->opcode & 0x08) {
            int rc = end_control(r);
            if (rc != 0)
                return rc;
        }
    }
    return 0;
}

/* ---- test surface (labkit.h) ------------------------------------------------ */

#include "labkit.h"

static int test_data(void *ctx, const uint8_t *p, size_t n)
{
    lk_ws_parsed *out = ctx;
    for (size_t i = 0; i < n; i++)
        out->data_fnv1a = (out->data_fnv1a ^ p[i]) * 16777619u;
    out->data_bytes += n;
    return 0;
}

static int test_control(void *ctx, uint8_t opcode, const uint8_t *p, size_t n)
{
    lk_ws_parsed *out = ctx;
    if (opcode == LK_WS_OP_PING) {
        out->pings++;
        memcpy(out->last_ping, p, n);
        out->last_ping_len = (uint32_t)n;
    } else if (opcode == LK_WS_OP_PONG) {
        out->pongs++;
    } else {
        out->closes++;
    }
    return 0;
}

int lk_test_ws_parse(const uint8_t *data, size_t len, size_t chunk, int from_client,
                     lk_ws_parsed *out)
{
    lk_ws_reader r;
    uint8_t scratch[7];  /* small and odd: unmasking must carry across pieces */
    memset(out, 0, sizeof *out);
    out->data_fnv1a = 0x811c9dc5u;
    lk_ws_reader_init(&r, from_client, LK_WS_MESSAGE_MAX, test_data, test_control, out);
    if (chunk == 0)
        chunk = len ? len : 1;
    for (size_t off = 0; off < len; off += chunk) {
        size_t k = len - off < chunk ? len - off : chunk;
        if (lk_ws_feed(&r, data + off, k, scratch, sizeof scratch) < 0) {
            out->violation = r.violation;
            return -1;
        }
    }
    return 0;
}

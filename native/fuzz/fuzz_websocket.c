/*
 * fuzz_websocket.c — libFuzzer harness for the WebSocket frame reader and writer
 * (native/src/proto/websocket.c).
 *
 *   make build/fuzz/fuzz_websocket && build/fuzz/fuzz_websocket native/fuzz/corpus/websocket
 *
 * The first input byte picks the rules (bit 0: the relay's, frames must be masked)
 * and a piece size (1..128); the rest is the stream.  Besides "no crash, no sanitizer
 * report" it checks the reader's contract: how the stream is cut into pieces
 * changes nothing (the same violation, or the same payload bytes, hash and control
 * frames), and a payload framed by the writer (masked as a client masks) reads back
 * as exactly that payload.
 */
#include <stdlib.h>
#include <string.h>

#include "labkit.h"
#include "proto/websocket.h"

static void check(int ok)
{
    if (!ok)
        abort();
}

static void same(const lk_ws_parsed *a, const lk_ws_parsed *b)
{
    check(a->violation == b->violation && a->data_bytes == b->data_bytes &&
          a->data_fnv1a == b->data_fnv1a && a->pings == b->pings && a->pongs == b->pongs &&
          a->closes == b->closes && a->last_ping_len == b->last_ping_len &&
          memcmp(a->last_ping, b->last_ping, a->last_ping_len) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    if (len < 1)
        return 0;
    int from_client = data[0] & 1;
    size_t chunk = 1 + (data[0] >> 1);
    const uint8_t *s = data + 1;
    size_t n = len - 1;

    lk_ws_parsed whole, cut;
    int rc = lk_test_ws_parse(s, n, 0, from_client, &whole);
    check(rc == 0 || rc == -1);
    check((rc == 0) == (whole.violation == 0));
    check(whole.violation >= 0 && whole.violation <= LK_WS_OVERSIZE);
    check(whole.data_bytes <= n && whole.last_ping_len <= LK_WS_CTRL_MAX);
    check(lk_test_ws_parse(s, n, chunk, from_client, &cut) == rc);
    same(&whole, &cut);  /* chunk 1 (first byte 0 or 1) is the byte-at-a-time case */

    /* round trip: the stream's bytes as one binary message, framed by the writer */
    if (n <= 1 << 16) {
        uint8_t *framed = malloc(n + LK_WS_HDR_MAX);
        check(framed != NULL);
        const uint8_t mask[4] = {data[0], 0x5a, 0xa5, 0x3c};
        size_t h = lk_ws_put_header(framed, LK_WS_OP_BINARY, n, from_client ? mask : NULL);
        memcpy(framed + h, s, n);
        if (from_client)
            check(lk_ws_mask(framed + h, n, mask, 0) == (uint32_t)(n & 3));
        lk_ws_parsed back;
        check(lk_test_ws_parse(framed, h + n, chunk, from_client, &back) == 0);
        uint32_t fnv = 0x811c9dc5u;
        for (size_t i = 0; i < n; i++)
            fnv = (fnv ^ s[i]) * 16777619u;
        check(back.data_bytes == n && back.data_fnv1a == fnv);
        free(framed);
    }
    return 0;
}

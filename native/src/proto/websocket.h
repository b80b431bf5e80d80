/* websocket.h — DERP inside WebSocket (RFC 6455): the frame reader with the
 * rules a server enforces, the frame header writers, the masking, and the
 * handshake's Sec-WebSocket-Accept (docs/protocol.md §2.7).
 *
 * DERP over WebSocket is a byte stream carried in binary messages: a DERP frame
 * may span messages and a message may hold many frames, so the reader hands
 * its owner payload bytes, never messages.  Pure: no sockets, no allocation. */
#ifndef LK_WEBSOCKET_H
#define LK_WEBSOCKET_H

#include <stddef.h>
#include <stdint.h>

#define LK_WS_CTRL_MAX 125           /* payload of a control frame (RFC 6455 §5.5) */
#define LK_WS_HDR_MAX 14             /* 2 + 8 extended length + 4 mask */
#define LK_WS_SERVER_HDR_MAX 10      /* server frames carry no mask */
/* Payload bytes of one message (all its fragments).  A DERP frame is at most
 * 5 + 64 + 65536 bytes and Go's client writes one per message; a megabyte
 * leaves room for clients that batch, and bounds what one message may claim. */
#define LK_WS_MESSAGE_MAX (1u << 20)
#define LK_WS_ACCEPT_LEN 28          /* base64 of a SHA-1 */

enum lk_ws_opcode {
    LK_WS_OP_CONT = 0x0,
    LK_WS_OP_TEXT = 0x1,
    LK_WS_OP_BINARY = 0x2,
    LK_WS_OP_CLOSE = 0x8,
    LK_WS_OP_PING = 0x9,
    LK_WS_OP_PONG = 0xa,
};

/* Why a stream broke the rules; each has its own close counter in the relay
 * (LK_C_CLOSE_WS_*, session.c). */
enum lk_ws_violation {
    LK_WS_OK = 0,
    LK_WS_UNMASKED,      /* client frame without a mask (or a server frame with one) */
    LK_WS_OPCODE,        /* RSV bits set, a reserved opcode, or a text message */
    LK_WS_CONTROL,       /* control frame fragmented, over 125 bytes, or a bad Close body */
    LK_WS_FRAGMENT,      /* continuation without a message, or a new message inside one */
    LK_WS_OVERSIZE,      /* a frame or message over the limit, or a 64-bit length with MSB */
};

/* Unmasked payload of binary messages, in order, in pieces.  Nonzero: stop. */
typedef int (*lk_ws_data_fn)(void *ctx, const uint8_t *p, size_t n);
/* One complete control frame (Close, Ping, Pong), unmasked.  Nonzero: stop. */
typedef int (*lk_ws_control_fn)(void *ctx, uint8_t opcode, const uint8_t *p, size_t n);

typedef struct lk_ws_reader {
    uint8_t hdr[LK_WS_HDR_MAX];
    uint8_t hdr_have;
    uint8_t opcode;            /* of the frame being read */
    uint8_t fin;
    uint8_t in_message;        /* a binary message awaits its continuation frames */
    uint8_t from_client;       /* 1: the relay's rules (frames must be masked) */
    uint8_t mask[4];
    uint32_t mask_pos;
    uint64_t left;             /* payload bytes of this frame still to come */
    uint64_t message_len;      /* payload bytes of the current message so far */
    uint32_t max_message;
    uint8_t ctrl[LK_WS_CTRL_MAX];
    uint8_t ctrl_len;
    int violation;             /* enum lk_ws_violation once feed returned -1 */
    lk_ws_data_fn on_data;
    lk_ws_control_fn on_control;
    void *ctx;
} lk_ws_reader;

void lk_ws_reader_init(lk_ws_reader *r, int from_client, uint32_t max_message,
                       lk_ws_data_fn on_data, lk_ws_control_fn on_control, void *ctx);
/* Feed n bytes.  Data payload is unmasked through `scratch` (any size > 0) before
 * on_data sees it.  Returns 0 when all were consumed, 1 when a callback asked to
 * stop, -1 on a violation (r->violation says which; the stream is unusable). */
int lk_ws_feed(lk_ws_reader *r, const uint8_t *data, size_t n, uint8_t *scratch,
               size_t scratch_len);

/* XOR p with the 4-byte mask starting at mask offset pos (returns the new offset). */
uint32_t lk_ws_mask(uint8_t *p, size_t n, const uint8_t mask[4], uint32_t pos);
/* A final frame's header for len payload bytes; mask NULL: a server frame.
 * Returns its length (2..14). */
size_t lk_ws_put_header(uint8_t *out, uint8_t opcode, uint64_t len, const uint8_t *mask);
/* Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(SHA-1(key + GUID)),
 * NUL-terminated in out[LK_WS_ACCEPT_LEN + 1].  0, or -1 if OpenSSL failed. */
int lk_ws_accept(const char *key, size_t key_len, char *out);
/* Is a Close frame's body acceptable (empty, or a sendable code + UTF-8 reason)? */
int lk_ws_close_body_ok(const uint8_t *p, size_t n);

#endif

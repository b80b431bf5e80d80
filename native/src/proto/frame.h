/* frame.h — DERP framing: constants, per-type length rules, streaming reader.
 *
 * Every DERP message is a 1-byte type, a 4-byte big-endian payload length,
 * then the payload (docs/protocol.md §3.1).  The reader below never needs
 * a whole frame in one read: it is fed whatever arrived and asks its owner,
 * per frame header, where the payload should go. */
#ifndef LK_FRAME_H
#define LK_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define LK_FRAME_HDR 5
#define LK_KEY_LEN 32
#define LK_MAX_PACKET 65536           /* user bytes in one Send/Recv/Forward packet */
#define LK_CLIENT_INFO_MIN 56         /* 32 key + 24 nonce; box tag makes a real one longer */
#define LK_CLIENT_INFO_MAX 262144
#define LK_PING_MIN 8
#define LK_PING_MAX 1000
#define LK_DISCO_MIN 62               /* 6 magic + 32 disco key + 24 nonce */

/* Frame types and who sends them. */
enum lk_frame_type {
    LK_FT_SERVER_KEY = 0x01,     /* relay -> client: magic + relay public key */
    LK_FT_CLIENT_INFO = 0x02,    /* client -> relay: client key + sealed JSON */
    LK_FT_SERVER_INFO = 0x03,    /* relay -> client: sealed JSON {"version":2} */
    LK_FT_SEND_PACKET = 0x04,    /* client -> relay: dst key + packet */
    LK_FT_RECV_PACKET = 0x05,    /* relay -> client: src key + packet */
    LK_FT_KEEP_ALIVE = 0x06,     /* relay -> client: empty */
    LK_FT_NOTE_PREFERRED = 0x07, /* client -> relay: 1 byte, home-relay flag */
    LK_FT_PEER_GONE = 0x08,      /* relay -> client: key + reason */
    LK_FT_PEER_PRESENT = 0x09,   /* relay -> mesh watcher: key + ip + port + flags */
    LK_FT_FORWARD_PACKET = 0x0a, /* mesh peer -> relay: src + dst + packet */
    LK_FT_WATCH_CONNS = 0x10,    /* mesh peer -> relay: empty */
    LK_FT_CLOSE_PEER = 0x11,     /* mesh peer -> relay: target key */
    LK_FT_PING = 0x12,           /* either way: 8 opaque bytes */
    LK_FT_PONG = 0x13,           /* either way: the Ping's 8 bytes */
};

enum lk_peer_gone_reason { LK_GONE_DISCONNECTED = 0x00, LK_GONE_NOT_HERE = 0x01 };

/* PeerPresent flags (docs/protocol.md §3.4, §5.8) */
enum { LK_PRESENT_REGULAR = 0x01, LK_PRESENT_MESH = 0x02, LK_PRESENT_PROBER = 0x04,
       LK_PRESENT_NOT_IDEAL = 0x08 };

static const uint8_t lk_server_key_magic[8] = {0x44, 0x45, 0x52, 0x50, 0xf0, 0x9f, 0x94, 0x91};
static const uint8_t lk_disco_magic[6] = {0x54, 0x53, 0xf0, 0x9f, 0x92, 0xac};

static inline void lk_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline uint32_t lk_get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline void lk_put_frame_hdr(uint8_t *p, uint8_t type, uint32_t len)
{
    p[0] = type;
    lk_put_be32(p + 1, len);
}

/* What to do with a frame's payload. */
enum lk_body_action {
    LK_BODY_BUFFER,      /* copy it to the memory the owner supplied */
    LK_BODY_SKIP,        /* stream past it (unknown or ignored types) */
    LK_BODY_CLOSE,       /* a length or permission rule failed: close */
};

/* The relay's steady-state length rule for a client->relay frame (docs/protocol.md §3.3, §7.2).
 * `mesh`: the sender presented the mesh key.  Returns BUFFER for the frames
 * the relay handles, SKIP for every other type, CLOSE when a rule fails;
 * *mesh_denied is set when the failure is a mesh-only frame from a non-mesh
 * client. */
enum lk_body_action lk_frame_rule(uint8_t type, uint32_t len, int mesh, int *mesh_denied);

/* Is this packet disco-looking (gets NotHere feedback)? */
int lk_is_disco(const uint8_t *packet, uint32_t len);

typedef struct lk_frame_reader lk_frame_reader;

/* Called once per header: return an action; for BUFFER set *dst to at least
 * `len` writable bytes that stay valid until on_frame. */
typedef enum lk_body_action (*lk_frame_begin_fn)(void *ctx, uint8_t type, uint32_t len,
                                                 uint8_t **dst);
/* Called once per complete frame (payload NULL when skipped).  Return 0 to
 * go on, non-zero to stop feeding (the connection is closing or changed). */
typedef int (*lk_frame_end_fn)(void *ctx, uint8_t type, uint32_t len, uint8_t *payload);

struct lk_frame_reader {
    uint8_t hdr[LK_FRAME_HDR];
    uint8_t hdr_have;
    uint8_t type;
    int in_body;
    int skipping;
    uint32_t len;
    uint32_t have;
    uint8_t *dst;
    lk_frame_begin_fn begin;
    lk_frame_end_fn end;
    void *ctx;
};

void lk_frame_reader_init(lk_frame_reader *r, lk_frame_begin_fn begin, lk_frame_end_fn end,
                          void *ctx);
/* Feed n bytes.  Returns 0 when all were consumed, 1 when a callback asked
 * to stop (remaining bytes are left unread), -1 when begin said CLOSE. */
int lk_frame_feed(lk_frame_reader *r, const uint8_t *data, size_t n, size_t *consumed);

#endif

/* handshake.h — the DERP handshake's three frames (docs/protocol.md §4):
 * ServerKey out, ClientInfo in (NaCl box opened, JSON decoded), ServerInfo out. */
#ifndef LK_HANDSHAKE_H
#define LK_HANDSHAKE_H

#include <stddef.h>
#include <stdint.h>

#include "proto/frame.h"
#include "labkit.h"

#define LK_SERVER_KEY_FRAME_LEN (LK_FRAME_HDR + 8 + LK_KEY_LEN)
/* {"version":2} sealed: 24 nonce + 16 tag + 13 bytes */
#define LK_SERVER_INFO_FRAME_LEN (LK_FRAME_HDR + 24 + 16 + 13)

void lk_build_server_key(uint8_t out[LK_SERVER_KEY_FRAME_LEN], const uint8_t relay_pk[32]);

/* Open a ClientInfo payload sealed to the relay.  On success fills the
 * client's key and decoded info.  Fails (LK_ERR_CONFIG, detail set) on a
 * zero key, a box that does not open, or JSON Go would not decode. */
int lk_open_client_info(const uint8_t *payload, uint32_t len, const uint8_t relay_sk[32],
                        uint8_t client_pk[32], lk_client_info *info);

/* LK_OK, or an error for a low-order client key libsodium will not seal to. */
int lk_build_server_info(uint8_t out[LK_SERVER_INFO_FRAME_LEN], const uint8_t client_pk[32],
                         const uint8_t relay_sk[32]);

#endif

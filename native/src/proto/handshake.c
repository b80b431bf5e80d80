/* handshake.c — ServerKey, ClientInfo, ServerInfo with libsodium crypto_box. */
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "proto/handshake.h"

void lk_build_server_key(uint8_t out[LK_SERVER_KEY_FRAME_LEN], const uint8_t relay_pk[32])
{
    lk_put_frame_hdr(out, LK_FT_SERVER_KEY, 8 + LK_KEY_LEN);
    memcpy(out + LK_FRAME_HDR, lk_server_key_magic, 8);
    memcpy(out + LK_FRAME_HDR + 8, relay_pk, LK_KEY_LEN);
}

int lk_open_client_info(const uint8_t *payload, uint32_t len, const uint8_t relay_sk[32],
                        uint8_t client_pk[32], lk_client_info *info)
{
    static const uint8_t zero[32];
    if (len < LK_KEY_LEN + crypto_box_NONCEBYTES + crypto_box_MACBYTES)
        return lk_fail(LK_ERR_CONFIG, "ClientInfo of %u bytes has no room for a sealed box", len);
    memcpy(client_pk, payload, LK_KEY_LEN);
    if (sodium_memcmp(client_pk, zero, 32) == 0)
        return lk_fail(LK_ERR_CONFIG, "ClientInfo claims the all-zero key");
    const uint8_t *nonce = payload + LK_KEY_LEN;
    const uint8_t *boxed = nonce + crypto_box_NONCEBYTES;
    size_t boxed_len = len - LK_KEY_LEN - crypto_box_NONCEBYTES;
    size_t plain_len = boxed_len - crypto_box_MACBYTES;
    /* ClientInfo arrives only once per connection: a heap buffer is fine.  Plain
     * malloc, not sodium_malloc: that one maps guard pages (a dozen uncounted
     * syscalls per handshake) to protect secrets, and this JSON holds none but
     * the mesh key, which is wiped below. */
    char *plain = malloc(plain_len + 1);
    if (!plain)
        return lk_fail(LK_ERR_NOMEM, "no memory to open ClientInfo");
    int rc = LK_OK;
    if (crypto_box_open_easy((uint8_t *)plain, boxed, boxed_len, nonce, client_pk, relay_sk) != 0)
        rc = lk_fail(LK_ERR_CONFIG, "ClientInfo box does not open with the relay key");
    else if (lk_client_info_parse(plain, plain_len, info) != LK_OK)
        rc = LK_ERR_CONFIG;
    sodium_memzero(plain, plain_len + 1);
    free(plain);
    return rc;
}

int lk_build_server_info(uint8_t out[LK_SERVER_INFO_FRAME_LEN], const uint8_t client_pk[32],
                         const uint8_t relay_sk[32])
{
    static const char json[] = "{\"version\":2}";
    uint8_t *nonce = out + LK_FRAME_HDR;
    lk_put_frame_hdr(out, LK_FT_SERVER_INFO, LK_SERVER_INFO_FRAME_LEN - LK_FRAME_HDR);
    randombytes_buf(nonce, crypto_box_NONCEBYTES);
    /* fails only for a low-order client key, which libsodium refuses */
    if (crypto_box_easy(nonce + crypto_box_NONCEBYTES, (const uint8_t *)json, sizeof json - 1,
                        nonce, client_pk, relay_sk) != 0)
        return lk_fail(LK_ERR_CONFIG, "cannot seal ServerInfo to a low-order client key");
    return LK_OK;
}

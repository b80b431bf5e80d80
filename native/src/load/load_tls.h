/* load_tls.h — the load generator's TLS client (OpenSSL 3, TLS 1.3) over
 * memory, the client-side twin of tls.h's model: OpenSSL only transforms
 * bytes, every socket operation stays in load_client.c where it is counted.
 *
 * Unlike the relay's server side, the ciphertext buffer has a fixed capacity
 * chosen at start, so the steady-state path never allocates: a caller only
 * encrypts when lk_load_tls_room() says the records will fit. */
#ifndef LK_LOAD_TLS_H
#define LK_LOAD_TLS_H

#include <stddef.h>
#include <stdint.h>

#include "common/bytes.h"
#include "tls/ktls.h"

typedef struct lk_load_tls_ctx lk_load_tls_ctx;
typedef struct lk_load_tls lk_load_tls;

/* ca_file: trust this PEM (e.g. the lab relay's self-signed cert) instead of
 * the system store; insecure: no certificate verification at all; ktls: offer
 * only the suite the kernel takes (LK_KTLS_SUITE) and keep each connection's
 * traffic secrets for lk_load_tls_ktls_secrets(). */
int lk_load_tls_ctx_create(lk_load_tls_ctx **out, const char *ca_file, int insecure, int ktls);
void lk_load_tls_ctx_free(lk_load_tls_ctx *ctx);

/* host: SNI (names only) and the name or address the certificate must match.
 * out_cap: fixed ciphertext buffer size.  NULL when out of memory. */
lk_load_tls *lk_load_tls_new(lk_load_tls_ctx *ctx, const char *host, uint32_t out_cap);
void lk_load_tls_free(lk_load_tls *t);

void lk_load_tls_input(lk_load_tls *t, const uint8_t *data, size_t n);
/* 1 done, 0 needs more input, -1 failed (lk_load_tls_error() says why). */
int lk_load_tls_handshake(lk_load_tls *t);
/* Plaintext bytes (> 0), 0 when the input is used up, -1 closed or broken. */
int lk_load_tls_read(lk_load_tls *t, uint8_t *buf, size_t cap);
/* Encrypt n bytes into the ciphertext buffer.  0, or -1 (no room, or broken). */
int lk_load_tls_write(lk_load_tls *t, const uint8_t *data, size_t n);
/* Ciphertext bytes that n plaintext bytes need at most (records + headroom). */
uint32_t lk_load_tls_cost(size_t n);
/* Free ciphertext space once what is queued has been sent. */
uint32_t lk_load_tls_room(const lk_load_tls *t);
/* Ciphertext waiting to be sent: data[off, len). */
lk_bytes *lk_load_tls_out(lk_load_tls *t);
/* Bytes of the last lk_load_tls_input() OpenSSL has not taken (it reads one
 * record at a time, so after the handshake these start at a record boundary). */
size_t lk_load_tls_unread(const lk_load_tls *t);
/* kTLS: after the handshake, the traffic secrets once lk_ktls_check() says
 * the switch is safe.  0, or -1 with the reason in `why`. */
int lk_load_tls_ktls_secrets(lk_load_tls *t, lk_ktls_secrets *out, char *why, size_t cap);
/* Why the handshake failed (verification result or OpenSSL's error). */
const char *lk_load_tls_error(const lk_load_tls *t);

#endif

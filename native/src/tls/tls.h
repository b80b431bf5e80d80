/* tls.h — userspace TLS (OpenSSL 3, TLS 1.3) over memory, not sockets, and
 * the switch to kernel TLS after the handshake.
 *
 * The relay's backends do every socket operation themselves (so the syscall
 * counters are honest and io_uring can carry TLS traffic too); OpenSSL only
 * transforms bytes: ciphertext in -> plaintext out, plaintext in ->
 * ciphertext queued in `out`.
 *
 * kTLS mode: OpenSSL runs only the handshake (on the acceptor), then
 * tls_ktls.c installs both directions' keys in the kernel and the connection
 * carries plaintext through ordinary socket calls from then on (c->tls NULL). */
#ifndef LK_TLS_H
#define LK_TLS_H

#include <stddef.h>
#include <stdint.h>

#include "common/bytes.h"
#include "tls/ktls.h"

typedef struct lk_tls_ctx lk_tls_ctx;
typedef struct lk_tls_conn lk_tls_conn;

/* ktls: restrict the handshake to TLS_AES_128_GCM_SHA256 and keep each
 * connection's traffic secrets for lk_tls_ktls_secrets(). */
int lk_tls_ctx_create(lk_tls_ctx **out, const char *cert_file, const char *key_file, int ktls);
void lk_tls_ctx_free(lk_tls_ctx *ctx);

lk_tls_conn *lk_tls_conn_new(lk_tls_ctx *ctx);
void lk_tls_conn_free(lk_tls_conn *t);

/* Hand the conn ciphertext just received.  Then call lk_tls_handshake()
 * until it returns 1, and afterwards lk_tls_read() until it returns 0. */
void lk_tls_input(lk_tls_conn *t, const uint8_t *data, size_t n);
/* 1 done, 0 needs more input, -1 failed. */
int lk_tls_handshake(lk_tls_conn *t);
/* Plaintext bytes (> 0), 0 when the input is used up, -1 closed or broken. */
int lk_tls_read(lk_tls_conn *t, uint8_t *buf, size_t cap);
/* Encrypt; ciphertext is appended to lk_tls_out().  0 or -1. */
int lk_tls_write(lk_tls_conn *t, const uint8_t *data, size_t n);
/* Ciphertext waiting to be sent (records made by handshake or writes). */
lk_bytes *lk_tls_out(lk_tls_conn *t);
/* The backend's send of lk_tls_out() starts (1) or has completed (0). */
void lk_tls_out_sending(lk_tls_conn *t, int sending);
/* Bytes of the last lk_tls_input() OpenSSL has not taken.  Without
 * read-ahead OpenSSL asks for exactly one record at a time, so after the
 * handshake completes these start at a record boundary. */
size_t lk_tls_unread(const lk_tls_conn *t);

/* kTLS mode: after a completed handshake, the application traffic secrets,
 * once it is certain the kernel can continue both record streams at sequence
 * number 0 (see lk_ktls_check) and none of our handshake bytes is unsent.
 * 0, or -1 with the reason in `why`. */
int lk_tls_ktls_secrets(lk_tls_conn *t, lk_ktls_secrets *out, char *why, size_t cap);

#endif

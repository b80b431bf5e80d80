/* tls_mem.h — an OpenSSL 3 SSL whose "socket" is memory: the part the relay's
 * server side (tls_user.c) and the load generator's client side (load_tls.c)
 * share.
 *
 * Why a custom BIO rather than BIO_s_mem: input is handed to OpenSSL straight
 * from the caller's receive buffer (no copy into a BIO), and ciphertext is
 * appended to a buffer the caller sends from directly.  Every socket
 * operation stays with the caller, where it is counted.
 *
 * Two policies for the ciphertext buffer: the relay's grows (and keeps the old
 * memory alive while a send may still read it); the load generator's has a
 * fixed capacity chosen at start, so its steady-state path never allocates. */
#ifndef LK_TLS_MEM_H
#define LK_TLS_MEM_H

#include <openssl/ssl.h>
#include <stddef.h>
#include <stdint.h>

#include "common/bytes.h"
#include "tls/ktls.h"

typedef struct lk_tls_mem {
    SSL *ssl;
    const uint8_t *in;     /* ciphertext not yet taken by OpenSSL */
    size_t in_len;
    lk_bytes out;          /* ciphertext to send: data[off, len) */
    int fixed;             /* out never grows (load generator) */
    int sending;           /* growing out: a send of it may be in flight */
    uint8_t *pinned;       /* growing out: its old buffer, kept while that send reads it */
    lk_ktls_secrets *secrets;  /* kTLS mode: filled by the key log callback */
} lk_tls_mem;

/* The BIO method every connection of one SSL_CTX uses (NULL when out of memory);
 * ktls: also install the key log callback that captures the traffic secrets. */
BIO_METHOD *lk_tls_mem_method(SSL_CTX *ctx, const char *name, int ktls);

/* fixed_cap 0: a growing ciphertext buffer; otherwise its fixed size.
 * 0, or -1 when out of memory (m is then freed). */
int lk_tls_mem_init(lk_tls_mem *m, SSL_CTX *ctx, BIO_METHOD *method, uint32_t fixed_cap,
                    int ktls);
void lk_tls_mem_free(lk_tls_mem *m);

void lk_tls_mem_input(lk_tls_mem *m, const uint8_t *data, size_t n);
/* 1 done, 0 needs more input, -1 failed (OpenSSL's error queue is left for the caller). */
int lk_tls_mem_handshake(lk_tls_mem *m);
/* Plaintext bytes (> 0), 0 when the input is used up, -1 closed or broken. */
int lk_tls_mem_read(lk_tls_mem *m, uint8_t *buf, size_t cap);
/* Encrypt into out.  0 or -1. */
int lk_tls_mem_write(lk_tls_mem *m, const uint8_t *data, size_t n);
/* kTLS: the traffic secrets once lk_ktls_check() says the switch is safe.
 * 0, or -1 with the reason in `why`. */
int lk_tls_mem_secrets(lk_tls_mem *m, lk_ktls_secrets *out, char *why, size_t cap);

/* An LK_ERR_TLS failure naming what failed, the file involved, and OpenSSL's reason. */
int lk_tls_fail(const char *what, const char *file);

#endif

/* tls_user.c — the relay's server side of TLS 1.3 (OpenSSL 3) over memory
 * (tls_mem.c): certificate, ALPN, the kTLS suite, and the backends' view. */
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/common.h"
#include "tls/tls.h"
#include "tls/tls_mem.h"

struct lk_tls_ctx {
    SSL_CTX *ssl_ctx;
    BIO_METHOD *bio_method;
    int ktls;
};

struct lk_tls_conn {
    lk_tls_mem mem;
};

/* ALPN: http/1.1 only, so a client can never negotiate h2 and break the upgrade (docs/protocol.md §2.1). */
static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char http11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    (void)ssl, (void)arg;
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, http11, sizeof http11, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

int lk_tls_ctx_create(lk_tls_ctx **out, const char *cert_file, const char *key_file, int ktls)
{
    if (!cert_file || !key_file)
        return lk_fail(LK_ERR_CONFIG, "TLS needs cert_file and key_file");
    lk_tls_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return lk_fail(LK_ERR_NOMEM, "no memory for the TLS context");
    int rc = LK_OK;
    ctx->ssl_ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx->ssl_ctx)
        rc = lk_tls_fail("SSL_CTX_new", NULL);
    else if (SSL_CTX_use_certificate_chain_file(ctx->ssl_ctx, cert_file) != 1)
        rc = lk_tls_fail("cannot load certificate", cert_file);
    else if (SSL_CTX_use_PrivateKey_file(ctx->ssl_ctx, key_file, SSL_FILETYPE_PEM) != 1)
        rc = lk_tls_fail("cannot load private key", key_file);
    else if (SSL_CTX_check_private_key(ctx->ssl_ctx) != 1)
        rc = lk_tls_fail("private key does not match certificate", key_file);
    if (rc != LK_OK) {
        lk_tls_ctx_free(ctx);
        return rc;
    }
    SSL_CTX_set_min_proto_version(ctx->ssl_ctx, TLS1_3_VERSION);
    /* no tickets: nothing sent after the handshake but our own records (and,
     * for kTLS, both record sequence numbers start at 0 when the kernel takes over) */
    SSL_CTX_set_num_tickets(ctx->ssl_ctx, 0);
    SSL_CTX_set_alpn_select_cb(ctx->ssl_ctx, select_alpn, NULL);
    ctx->ktls = ktls;
    if (ktls) {
        /* the one suite tls_ktls.c installs: a client that cannot do it fails
         * the handshake rather than getting a userspace-TLS connection */
        if (SSL_CTX_set_ciphersuites(ctx->ssl_ctx, LK_KTLS_SUITE) != 1) {
            rc = lk_tls_fail("cannot restrict the cipher suites to TLS_AES_128_GCM_SHA256", NULL);
            lk_tls_ctx_free(ctx);
            return rc;
        }
    }
    ctx->bio_method = lk_tls_mem_method(ctx->ssl_ctx, "labkit-relay", ktls);
    if (!ctx->bio_method) {
        rc = lk_tls_fail("BIO_meth_new", NULL);
        lk_tls_ctx_free(ctx);
        return rc;
    }
    *out = ctx;
    return LK_OK;
}

void lk_tls_ctx_free(lk_tls_ctx *ctx)
{
    if (!ctx)
        return;
    SSL_CTX_free(ctx->ssl_ctx);
    BIO_meth_free(ctx->bio_method);
    free(ctx);
}

lk_tls_conn *lk_tls_conn_new(lk_tls_ctx *ctx)
{
    lk_tls_conn *t = malloc(sizeof *t);
    if (!t)
        return NULL;
    if (lk_tls_mem_init(&t->mem, ctx->ssl_ctx, ctx->bio_method, 0, ctx->ktls) != 0) {
        free(t);
        return NULL;
    }
    SSL_set_accept_state(t->mem.ssl);
    return t;
}

void lk_tls_conn_free(lk_tls_conn *t)
{
    if (!t)
        return;
    lk_tls_mem_free(&t->mem);
    free(t);
}

void lk_tls_input(lk_tls_conn *t, const uint8_t *data, size_t n)
{
    lk_tls_mem_input(&t->mem, data, n);
}

int lk_tls_handshake(lk_tls_conn *t)
{
    int rc = lk_tls_mem_handshake(&t->mem);
    if (rc < 0)
        ERR_clear_error();  /* counted as close_tls; the client sees the alert */
    return rc;
}

int lk_tls_read(lk_tls_conn *t, uint8_t *buf, size_t cap)
{
    return lk_tls_mem_read(&t->mem, buf, cap);
}

int lk_tls_write(lk_tls_conn *t, const uint8_t *data, size_t n)
{
    return lk_tls_mem_write(&t->mem, data, n);
}

lk_bytes *lk_tls_out(lk_tls_conn *t) { return &t->mem.out; }

void lk_tls_out_sending(lk_tls_conn *t, int sending)
{
    t->mem.sending = sending;
    if (!sending) {
        free(t->mem.pinned);
        t->mem.pinned = NULL;
    }
}

size_t lk_tls_unread(const lk_tls_conn *t) { return t->mem.in_len; }

int lk_tls_ktls_secrets(lk_tls_conn *t, lk_ktls_secrets *out, char *why, size_t cap)
{
    /* the kernel's send sequence number is 0 only if every handshake record
     * of ours left before it takes over */
    const lk_bytes *o = &t->mem.out;
    if (o->len != o->off) {
        snprintf(why, cap, "%u handshake bytes are still unsent", o->len - o->off);
        return -1;
    }
    return lk_tls_mem_secrets(&t->mem, out, why, cap);
}

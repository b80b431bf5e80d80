/* tls_user.c — OpenSSL 3 TLS 1.3 over a custom in-memory BIO.
 *
 * Why a custom BIO rather than BIO_s_mem: input is handed to OpenSSL straight
 * from the backend's receive buffer (no copy into a BIO), and ciphertext is
 * appended to a buffer the backend sends from directly.  Every socket
 * operation stays in the backends, counted. */
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "tls.h"

struct lk_tls_ctx {
    SSL_CTX *ssl_ctx;
    BIO_METHOD *bio_method;
    int ktls;
};

struct lk_tls_conn {
    SSL *ssl;
    const uint8_t *in;     /* ciphertext not yet taken by OpenSSL */
    size_t in_len;
    lk_bytes out;          /* ciphertext to send */
    int sending;           /* a send of `out` may be in flight (lk_tls_out_sending) */
    uint8_t *pinned;       /* out's old buffer, kept while that send reads it */
    int failed;
    lk_ktls_secrets *secrets;  /* kTLS mode: filled by the keylog callback */
};

/* OpenSSL may write while a send of earlier records is in flight (a record
 * produced while reading, e.g. an alert or a KeyUpdate reply): then growing
 * the buffer must not move the memory that send reads. */
static int bio_write(BIO *b, const char *data, int len)
{
    lk_tls_conn *t = BIO_get_data(b);
    if (lk_bytes_append(&t->out, data, (uint32_t)len, t->sending ? &t->pinned : NULL) != 0)
        return -1;
    return len;
}

static int bio_read(BIO *b, char *buf, int len)
{
    lk_tls_conn *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (t->in_len == 0) {
        BIO_set_retry_read(b);  /* "no more for now", not EOF */
        return -1;
    }
    size_t n = t->in_len < (size_t)len ? t->in_len : (size_t)len;
    memcpy(buf, t->in, n);
    t->in += n;
    t->in_len -= n;
    return (int)n;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b, (void)num, (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

/* ALPN: http/1.1 only, so a client can never negotiate h2 and break the upgrade (2.6). */
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

/* kTLS mode: OpenSSL 3.0 has no API that returns the TLS 1.3 application
 * traffic secrets, but its key log carries them (tls_ktls.c parses it). */
static void keylog(const SSL *ssl, const char *line)
{
    lk_tls_conn *t = SSL_get_app_data(ssl);
    if (t && t->secrets)
        lk_ktls_keylog_line(t->secrets, line);
}

static int tls_error(const char *what, const char *file)
{
    char detail[256];
    ERR_error_string_n(ERR_get_error(), detail, sizeof detail);
    return lk_fail(LK_ERR_TLS, "%s %s: %s", what, file ? file : "", detail);
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
        rc = tls_error("SSL_CTX_new", NULL);
    else if (SSL_CTX_use_certificate_chain_file(ctx->ssl_ctx, cert_file) != 1)
        rc = tls_error("cannot load certificate", cert_file);
    else if (SSL_CTX_use_PrivateKey_file(ctx->ssl_ctx, key_file, SSL_FILETYPE_PEM) != 1)
        rc = tls_error("cannot load private key", key_file);
    else if (SSL_CTX_check_private_key(ctx->ssl_ctx) != 1)
        rc = tls_error("private key does not match certificate", key_file);
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
            rc = tls_error("cannot restrict the cipher suites to TLS_AES_128_GCM_SHA256", NULL);
            lk_tls_ctx_free(ctx);
            return rc;
        }
        SSL_CTX_set_keylog_callback(ctx->ssl_ctx, keylog);
    }
    ctx->bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "labkit-mem");
    BIO_meth_set_write(ctx->bio_method, bio_write);
    BIO_meth_set_read(ctx->bio_method, bio_read);
    BIO_meth_set_ctrl(ctx->bio_method, bio_ctrl);
    BIO_meth_set_create(ctx->bio_method, bio_create);
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
    lk_tls_conn *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->ssl = SSL_new(ctx->ssl_ctx);
    BIO *bio = BIO_new(ctx->bio_method);
    if (!t->ssl || !bio) {
        BIO_free(bio);
        lk_tls_conn_free(t);
        return NULL;
    }
    if (ctx->ktls && !(t->secrets = calloc(1, sizeof *t->secrets))) {
        BIO_free(bio);
        lk_tls_conn_free(t);
        return NULL;
    }
    BIO_set_data(bio, t);
    SSL_set_bio(t->ssl, bio, bio);  /* the SSL owns the BIO now */
    SSL_set_app_data(t->ssl, t);
    SSL_set_accept_state(t->ssl);
    return t;
}

void lk_tls_conn_free(lk_tls_conn *t)
{
    if (!t)
        return;
    SSL_free(t->ssl);
    free(t->out.data);
    free(t->pinned);
    if (t->secrets)
        OPENSSL_cleanse(t->secrets, sizeof *t->secrets);
    free(t->secrets);
    free(t);
}

void lk_tls_input(lk_tls_conn *t, const uint8_t *data, size_t n)
{
    t->in = data;
    t->in_len = n;
}

int lk_tls_handshake(lk_tls_conn *t)
{
    int rc = SSL_do_handshake(t->ssl);
    if (rc == 1)
        return 1;
    int e = SSL_get_error(t->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    ERR_clear_error();
    return -1;
}

int lk_tls_read(lk_tls_conn *t, uint8_t *buf, size_t cap)
{
    size_t got = 0;
    int rc = SSL_read_ex(t->ssl, buf, cap, &got);
    if (rc == 1)
        return (int)got;
    int e = SSL_get_error(t->ssl, rc);
    if (e == SSL_ERROR_WANT_READ && t->in_len == 0)
        return 0;
    ERR_clear_error();
    return -1;  /* close_notify, a bad record, or an alert */
}

int lk_tls_write(lk_tls_conn *t, const uint8_t *data, size_t n)
{
    size_t done = 0;
    if (n == 0)
        return 0;
    if (SSL_write_ex(t->ssl, data, n, &done) != 1 || done != n) {
        ERR_clear_error();
        return -1;
    }
    return 0;
}

lk_bytes *lk_tls_out(lk_tls_conn *t) { return &t->out; }

void lk_tls_out_sending(lk_tls_conn *t, int sending)
{
    t->sending = sending;
    if (!sending) {
        free(t->pinned);
        t->pinned = NULL;
    }
}

size_t lk_tls_unread(const lk_tls_conn *t) { return t->in_len; }

int lk_tls_ktls_secrets(lk_tls_conn *t, lk_ktls_secrets *out, char *why, size_t cap)
{
    if (!t->secrets) {
        snprintf(why, cap, "the TLS context was not made for kTLS");
        return -1;
    }
    if (lk_ktls_check(t->ssl, t->secrets, why, cap) != 0)
        return -1;
    /* the kernel's send sequence number is 0 only if every handshake record
     * of ours left before it takes over */
    if (t->out.len != t->out.off) {
        snprintf(why, cap, "%u handshake bytes are still unsent", t->out.len - t->out.off);
        return -1;
    }
    *out = *t->secrets;
    return 0;
}

/* load_tls.c — OpenSSL 3 TLS 1.3 client over a fixed-size in-memory BIO.
 *
 * Same custom-BIO idea as tls_user.c (input straight from the receive
 * buffer, no BIO_s_mem copy; ciphertext appended to a buffer the caller sends
 * from), but client side and with a buffer that never grows: the load
 * generator's send path must not allocate. */
#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "load_tls.h"

#define TLS_RECORD_MAX 16384
/* per record: 5 header + 1 content type + 16 tag; rounded up generously */
#define TLS_RECORD_OVERHEAD 64
#define TLS_HEADROOM 4096  /* handshake messages, KeyUpdate replies, alerts */

struct lk_load_tls_ctx {
    SSL_CTX *ssl_ctx;
    BIO_METHOD *bio_method;
    int insecure;
    int ktls;
};

struct lk_load_tls {
    SSL *ssl;
    const uint8_t *in;     /* ciphertext not yet taken by OpenSSL */
    size_t in_len;
    lk_bytes out;          /* ciphertext to send, fixed capacity */
    char error[256];
    lk_ktls_secrets *secrets;  /* kTLS mode: filled by the keylog callback */
};

static int bio_write(BIO *b, const char *data, int len)
{
    lk_load_tls *t = BIO_get_data(b);
    lk_bytes *o = &t->out;
    BIO_clear_retry_flags(b);
    if (o->off == o->len)
        o->off = o->len = 0;
    if ((size_t)o->cap - o->len < (size_t)len) {
        BIO_set_retry_write(b);  /* callers check the room first; this is the backstop */
        return -1;
    }
    memcpy(o->data + o->len, data, (size_t)len);
    o->len += (uint32_t)len;
    return len;
}

static int bio_read(BIO *b, char *buf, int len)
{
    lk_load_tls *t = BIO_get_data(b);
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

/* kTLS mode: the key log is how OpenSSL 3.0 hands out TLS 1.3 traffic secrets */
static void keylog(const SSL *ssl, const char *line)
{
    lk_load_tls *t = SSL_get_app_data(ssl);
    if (t && t->secrets)
        lk_ktls_keylog_line(t->secrets, line);
}

static int tls_error(const char *what, const char *file)
{
    char detail[256];
    ERR_error_string_n(ERR_get_error(), detail, sizeof detail);
    ERR_clear_error();
    return lk_fail(LK_ERR_TLS, "%s%s%s: %s", what, file ? " " : "", file ? file : "", detail);
}

int lk_load_tls_ctx_create(lk_load_tls_ctx **out, const char *ca_file, int insecure, int ktls)
{
    static const unsigned char alpn[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    lk_load_tls_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return lk_fail(LK_ERR_NOMEM, "no memory for the TLS context");
    ctx->insecure = insecure;
    ctx->ktls = ktls;
    int rc = LK_OK;
    ctx->ssl_ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx->ssl_ctx)
        rc = tls_error("SSL_CTX_new", NULL);
    else if (!insecure && ca_file && SSL_CTX_load_verify_locations(ctx->ssl_ctx, ca_file, NULL) != 1)
        rc = tls_error("cannot load CA file", ca_file);
    else if (!insecure && !ca_file && SSL_CTX_set_default_verify_paths(ctx->ssl_ctx) != 1)
        rc = tls_error("cannot load the system certificate store", NULL);
    /* http/1.1 only: an h2 ALPN answer would break the upgrade (2.6); 0 is success */
    else if (SSL_CTX_set_alpn_protos(ctx->ssl_ctx, alpn, sizeof alpn) != 0)
        rc = tls_error("cannot set ALPN", NULL);
    /* kTLS: the one suite the kernel gets; a relay without it fails the handshake */
    else if (ktls && SSL_CTX_set_ciphersuites(ctx->ssl_ctx, LK_KTLS_SUITE) != 1)
        rc = tls_error("cannot restrict the cipher suites to " LK_KTLS_SUITE, NULL);
    if (rc == LK_OK) {
        ctx->bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "labkit-load");
        if (!ctx->bio_method)
            rc = tls_error("BIO_meth_new", NULL);
    }
    if (rc != LK_OK) {
        lk_load_tls_ctx_free(ctx);
        return rc;
    }
    SSL_CTX_set_min_proto_version(ctx->ssl_ctx, TLS1_3_VERSION);
    SSL_CTX_set_verify(ctx->ssl_ctx, insecure ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
    /* every client is a fresh identity: nothing to resume */
    SSL_CTX_set_session_cache_mode(ctx->ssl_ctx, SSL_SESS_CACHE_OFF);
    if (ktls)
        SSL_CTX_set_keylog_callback(ctx->ssl_ctx, keylog);
    BIO_meth_set_write(ctx->bio_method, bio_write);
    BIO_meth_set_read(ctx->bio_method, bio_read);
    BIO_meth_set_ctrl(ctx->bio_method, bio_ctrl);
    BIO_meth_set_create(ctx->bio_method, bio_create);
    *out = ctx;
    return LK_OK;
}

void lk_load_tls_ctx_free(lk_load_tls_ctx *ctx)
{
    if (!ctx)
        return;
    SSL_CTX_free(ctx->ssl_ctx);
    BIO_meth_free(ctx->bio_method);
    free(ctx);
}

static int is_ip_literal(const char *host)
{
    uint8_t buf[16];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

lk_load_tls *lk_load_tls_new(lk_load_tls_ctx *ctx, const char *host, uint32_t out_cap)
{
    lk_load_tls *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->out.data = malloc(out_cap);
    t->out.cap = out_cap;
    t->ssl = SSL_new(ctx->ssl_ctx);
    BIO *bio = BIO_new(ctx->bio_method);
    if (ctx->ktls)
        t->secrets = calloc(1, sizeof *t->secrets);
    if (!t->out.data || !t->ssl || !bio || (ctx->ktls && !t->secrets)) {
        BIO_free(bio);
        lk_load_tls_free(t);
        return NULL;
    }
    BIO_set_data(bio, t);
    SSL_set_bio(t->ssl, bio, bio);  /* the SSL owns the BIO now */
    SSL_set_app_data(t->ssl, t);
    int ok = 1;
    if (!is_ip_literal(host)) {
        /* SNI is for names only (RFC 6066 forbids literal addresses) */
        ok = SSL_set_tlsext_host_name(t->ssl, host) == 1;
        if (ok && !ctx->insecure)
            ok = SSL_set1_host(t->ssl, host) == 1;
    } else if (!ctx->insecure) {
        ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), host) == 1;
    }
    if (!ok) {
        ERR_clear_error();
        lk_load_tls_free(t);
        return NULL;
    }
    SSL_set_connect_state(t->ssl);
    return t;
}

void lk_load_tls_free(lk_load_tls *t)
{
    if (!t)
        return;
    SSL_free(t->ssl);
    free(t->out.data);
    if (t->secrets)
        OPENSSL_cleanse(t->secrets, sizeof *t->secrets);
    free(t->secrets);
    free(t);
}

void lk_load_tls_input(lk_load_tls *t, const uint8_t *data, size_t n)
{
    t->in = data;
    t->in_len = n;
}

int lk_load_tls_handshake(lk_load_tls *t)
{
    int rc = SSL_do_handshake(t->ssl);
    if (rc == 1)
        return 1;
    int e = SSL_get_error(t->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    long verify = SSL_get_verify_result(t->ssl);
    if (verify != X509_V_OK) {
        snprintf(t->error, sizeof t->error,
                 "certificate verification failed: %s (trust the relay's certificate with "
                 "ca_file, or set insecure)",
                 X509_verify_cert_error_string(verify));
    } else {
        char detail[200];
        unsigned long err = ERR_get_error();
        if (err)
            ERR_error_string_n(err, detail, sizeof detail);
        else
            snprintf(detail, sizeof detail, "the relay closed the connection");
        snprintf(t->error, sizeof t->error, "TLS handshake failed: %s", detail);
    }
    ERR_clear_error();
    return -1;
}

int lk_load_tls_read(lk_load_tls *t, uint8_t *buf, size_t cap)
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

int lk_load_tls_write(lk_load_tls *t, const uint8_t *data, size_t n)
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

uint32_t lk_load_tls_cost(size_t n)
{
    return (uint32_t)(n + (n / TLS_RECORD_MAX + 1) * TLS_RECORD_OVERHEAD + TLS_HEADROOM);
}

uint32_t lk_load_tls_room(const lk_load_tls *t)
{
    const lk_bytes *o = &t->out;
    return o->off == o->len ? o->cap : o->cap - o->len;
}

lk_bytes *lk_load_tls_out(lk_load_tls *t) { return &t->out; }

const char *lk_load_tls_error(const lk_load_tls *t) { return t->error; }

size_t lk_load_tls_unread(const lk_load_tls *t) { return t->in_len; }

int lk_load_tls_ktls_secrets(lk_load_tls *t, lk_ktls_secrets *out, char *why, size_t cap)
{
    if (!t->secrets) {
        snprintf(why, cap, "the TLS context was not made for kTLS");
        return -1;
    }
    if (lk_ktls_check(t->ssl, t->secrets, why, cap) != 0)
        return -1;
    *out = *t->secrets;
    return 0;
}

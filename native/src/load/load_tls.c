/* load_tls.c — the load generator's TLS 1.3 client (OpenSSL 3) over memory
 * (tls_mem.c, with a fixed ciphertext buffer: the send path must not allocate):
 * verification, SNI, ALPN, and why a handshake failed. */
#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/common.h"
#include "load/load_tls.h"
#include "tls/tls_mem.h"

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
    lk_tls_mem mem;
    char error[256];
};

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
        rc = lk_tls_fail("SSL_CTX_new", NULL);
    else if (!insecure && ca_file && SSL_CTX_load_verify_locations(ctx->ssl_ctx, ca_file, NULL) != 1)
        rc = lk_tls_fail("cannot load CA file", ca_file);
    else if (!insecure && !ca_file && SSL_CTX_set_default_verify_paths(ctx->ssl_ctx) != 1)
        rc = lk_tls_fail("cannot load the system certificate store", NULL);
    /* http/1.1 only: an h2 ALPN answer would break the upgrade (docs/protocol.md §2.1); 0 is success */
    else if (SSL_CTX_set_alpn_protos(ctx->ssl_ctx, alpn, sizeof alpn) != 0)
        rc = lk_tls_fail("cannot set ALPN", NULL);
    /* kTLS: the one suite the kernel gets; a relay without it fails the handshake */
    else if (ktls && SSL_CTX_set_ciphersuites(ctx->ssl_ctx, LK_KTLS_SUITE) != 1)
        rc = lk_tls_fail("cannot restrict the cipher suites to " LK_KTLS_SUITE, NULL);
    else if (!(ctx->bio_method = lk_tls_mem_method(ctx->ssl_ctx, "labkit-load", ktls)))
        rc = lk_tls_fail("BIO_meth_new", NULL);
    if (rc != LK_OK) {
        lk_load_tls_ctx_free(ctx);
        return rc;
    }
    SSL_CTX_set_min_proto_version(ctx->ssl_ctx, TLS1_3_VERSION);
    SSL_CTX_set_verify(ctx->ssl_ctx, insecure ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
    /* every client is a fresh identity: nothing to resume */
    SSL_CTX_set_session_cache_mode(ctx->ssl_ctx, SSL_SESS_CACHE_OFF);
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
    if (lk_tls_mem_init(&t->mem, ctx->ssl_ctx, ctx->bio_method, out_cap, ctx->ktls) != 0) {
        free(t);
        return NULL;
    }
    SSL *ssl = t->mem.ssl;
    int ok = 1;
    if (!is_ip_literal(host)) {
        /* SNI is for names only (RFC 6066 forbids literal addresses) */
        ok = SSL_set_tlsext_host_name(ssl, host) == 1;
        if (ok && !ctx->insecure)
            ok = SSL_set1_host(ssl, host) == 1;
    } else if (!ctx->insecure) {
        ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) == 1;
    }
    if (!ok) {
        ERR_clear_error();
        lk_load_tls_free(t);
        return NULL;
    }
    SSL_set_connect_state(ssl);
    return t;
}

void lk_load_tls_free(lk_load_tls *t)
{
    if (!t)
        return;
    lk_tls_mem_free(&t->mem);
    free(t);
}

void lk_load_tls_input(lk_load_tls *t, const uint8_t *data, size_t n)
{
    lk_tls_mem_input(&t->mem, data, n);
}

int lk_load_tls_handshake(lk_load_tls *t)
{
    int rc = lk_tls_mem_handshake(&t->mem);
    if (rc >= 0)
        return rc;
    long verify = SSL_get_verify_result(t->mem.ssl);
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
    return lk_tls_mem_read(&t->mem, buf, cap);
}

int lk_load_tls_write(lk_load_tls *t, const uint8_t *data, size_t n)
{
    return lk_tls_mem_write(&t->mem, data, n);
}

uint32_t lk_load_tls_cost(size_t n)
{
    return (uint32_t)(n + (n / TLS_RECORD_MAX + 1) * TLS_RECORD_OVERHEAD + TLS_HEADROOM);
}

uint32_t lk_load_tls_room(const lk_load_tls *t)
{
    const lk_bytes *o = &t->mem.out;
    return o->off == o->len ? o->cap : o->cap - o->len;
}

lk_bytes *lk_load_tls_out(lk_load_tls *t) { return &t->mem.out; }

const char *lk_load_tls_error(const lk_load_tls *t) { return t->error; }

size_t lk_load_tls_unread(const lk_load_tls *t) { return t->mem.in_len; }

int lk_load_tls_ktls_secrets(lk_load_tls *t, lk_ktls_secrets *out, char *why, size_t cap)
{
    return lk_tls_mem_secrets(&t->mem, out, why, cap);
}

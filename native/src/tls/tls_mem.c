/* tls_mem.c — an SSL over memory (see tls_mem.h for why). */
#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "tls/tls_mem.h"

/* Growing buffer: OpenSSL may write while a send of earlier records is in flight (a
 * record produced while reading, e.g. an alert or a KeyUpdate reply), so growing it
 * must not move the memory that send reads.  Fixed buffer: callers check the room
 * before they encrypt; a write that does not fit is refused. */
static int bio_write(BIO *b, const char *data, int len)
{
    lk_tls_mem *m = BIO_get_data(b);
    lk_bytes *o = &m->out;
    BIO_clear_retry_flags(b);
    if (!m->fixed)
        return lk_bytes_append(o, data, (uint32_t)len, m->sending ? &m->pinned : NULL) == 0
                   ? len : -1;
    if (o->off == o->len)
        o->off = o->len = 0;
    if ((size_t)o->cap - o->len < (size_t)len) {
        BIO_set_retry_write(b);
        return -1;
    }
    memcpy(o->data + o->len, data, (size_t)len);
    o->len += (uint32_t)len;
    return len;
}

static int bio_read(BIO *b, char *buf, int len)
{
    lk_tls_mem *m = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (m->in_len == 0) {
        BIO_set_retry_read(b);  /* "no more for now", not EOF */
        return -1;
    }
    size_t n = m->in_len < (size_t)len ? m->in_len : (size_t)len;
    memcpy(buf, m->in, n);
    m->in += n;
    m->in_len -= n;
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

/* kTLS mode: OpenSSL 3.0 has no API that returns the TLS 1.3 application traffic
 * secrets, but its key log carries them (tls_ktls.c parses it). */
static void keylog(const SSL *ssl, const char *line)
{
    lk_tls_mem *m = SSL_get_app_data(ssl);
    if (m && m->secrets)
        lk_ktls_keylog_line(m->secrets, line);
}

BIO_METHOD *lk_tls_mem_method(SSL_CTX *ctx, const char *name, int ktls)
{
    BIO_METHOD *method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, name);
    if (!method)
        return NULL;
    BIO_meth_set_write(method, bio_write);
    BIO_meth_set_read(method, bio_read);
    BIO_meth_set_ctrl(method, bio_ctrl);
    BIO_meth_set_create(method, bio_create);
    if (ktls)
        SSL_CTX_set_keylog_callback(ctx, keylog);
    return method;
}

int lk_tls_mem_init(lk_tls_mem *m, SSL_CTX *ctx, BIO_METHOD *method, uint32_t fixed_cap,
                    int ktls)
{
    *m = (lk_tls_mem){.fixed = fixed_cap != 0};
    if (fixed_cap) {
        m->out.data = malloc(fixed_cap);
        m->out.cap = fixed_cap;
    }
    m->ssl = SSL_new(ctx);
    BIO *bio = BIO_new(method);
    if (ktls)
        m->secrets = calloc(1, sizeof *m->secrets);
    if ((fixed_cap && !m->out.data) || !m->ssl || !bio || (ktls && !m->secrets)) {
        BIO_free(bio);
        lk_tls_mem_free(m);
        return -1;
    }
    BIO_set_data(bio, m);
    SSL_set_bio(m->ssl, bio, bio);  /* the SSL owns the BIO now */
    SSL_set_app_data(m->ssl, m);
    return 0;
}

void lk_tls_mem_free(lk_tls_mem *m)
{
    SSL_free(m->ssl);
    free(m->out.data);
    free(m->pinned);
    if (m->secrets)
        OPENSSL_cleanse(m->secrets, sizeof *m->secrets);
    free(m->secrets);
    *m = (lk_tls_mem){0};
}

void lk_tls_mem_input(lk_tls_mem *m, const uint8_t *data, size_t n)
{
    m->in = data;
    m->in_len = n;
}

int lk_tls_mem_handshake(lk_tls_mem *m)
{
    int rc = SSL_do_handshake(m->ssl);
    if (rc == 1)
        return 1;
    int e = SSL_get_error(m->ssl, rc);
    return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? 0 : -1;
}

int lk_tls_mem_read(lk_tls_mem *m, uint8_t *buf, size_t cap)
{
    size_t got = 0;
    int rc = SSL_read_ex(m->ssl, buf, cap, &got);
    if (rc == 1)
        return (int)got;
    int e = SSL_get_error(m->ssl, rc);
    if (e == SSL_ERROR_WANT_READ && m->in_len == 0)
        return 0;
    ERR_clear_error();
    return -1;  /* close_notify, a bad record, or an alert */
}

int lk_tls_mem_write(lk_tls_mem *m, const uint8_t *data, size_t n)
{
    size_t done = 0;
    if (n == 0)
        return 0;
    if (SSL_write_ex(m->ssl, data, n, &done) != 1 || done != n) {
        ERR_clear_error();
        return -1;
    }
    return 0;
}

int lk_tls_mem_secrets(lk_tls_mem *m, lk_ktls_secrets *out, char *why, size_t cap)
{
    if (!m->secrets) {
        snprintf(why, cap, "the TLS context was not made for kTLS");
        return -1;
    }
    if (lk_ktls_check(m->ssl, m->secrets, why, cap) != 0)
        return -1;
    *out = *m->secrets;
    return 0;
}

int lk_tls_fail(const char *what, const char *file)
{
    char detail[256];
    ERR_error_string_n(ERR_get_error(), detail, sizeof detail);
    ERR_clear_error();
    return lk_fail(LK_ERR_TLS, "%s%s%s: %s", what, file ? " " : "", file ? file : "", detail);
}

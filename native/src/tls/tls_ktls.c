/* tls_ktls.c — hand a TLS 1.3 connection's record layer to the kernel.
 *
 * Used by the relay (session.c) and the load generator (load_client.c).
 *
 * Why we install the keys ourselves: Debian's OpenSSL 3.0 offloads only
 * the send direction for TLS 1.3 (BIO_get_ktls_recv is 0), and it does so
 * only over its own socket BIO, while labkit runs OpenSSL over memory so the
 * event loops keep every socket call.  So OpenSSL does the handshake, its
 * key log hands over the application traffic secrets, and this
 * file derives key and IV per direction (RFC 8446 7.3), attaches the "tls"
 * ULP and installs TLS_TX and TLS_RX.  From then on send() takes plaintext
 * and the kernel frames and encrypts it; recv() returns decrypted plaintext.
 *
 * Sequence numbers: both start at 0 because nothing but handshake records
 * crossed the connection (no session tickets, no early data, and the
 * handshake reads with MSG_PEEK so no application record is ever taken out
 * of the socket in userspace: see session.c).  A failure is never papered
 * over with userspace TLS: the connection (or, at start, the run) is refused
 * with the reason. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <linux/tls.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "common/common.h"
#include "tls/ktls.h"

#ifndef SOL_TLS
#define SOL_TLS 282
#endif

#define KEY_LEN TLS_CIPHER_AES_GCM_128_KEY_SIZE                                  /* 16 */
#define IV_LEN (TLS_CIPHER_AES_GCM_128_SALT_SIZE + TLS_CIPHER_AES_GCM_128_IV_SIZE) /* 12 */

/* HKDF-Expand-Label(secret, label, "", len) with SHA-256 (RFC 8446 7.1). */
static int expand_label(EVP_KDF *kdf, const uint8_t *secret, size_t secret_len,
                        const char *label, uint8_t *out, size_t len)
{
    uint8_t info[2 + 1 + 255 + 1];
    size_t label_len = strlen(label);
    size_t n = 0;
    info[n++] = (uint8_t)(len >> 8);
    info[n++] = (uint8_t)len;
    info[n++] = (uint8_t)(6 + label_len);
    memcpy(info + n, "tls13 ", 6);
    n += 6;
    memcpy(info + n, label, label_len);
    n += label_len;
    info[n++] = 0;  /* empty context */
    int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)secret, secret_len),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, n),
        OSSL_PARAM_construct_end(),
    };
    EVP_KDF_CTX *ctx = EVP_KDF_CTX_new(kdf);
    int ok = ctx && EVP_KDF_derive(ctx, out, len, params) == 1;
    EVP_KDF_CTX_free(ctx);
    return ok ? 0 : -1;
}

/* The kernel's AES-GCM-128 crypto info for one direction.  The 12-byte TLS
 * 1.3 IV is split as the kernel wants it: 4 bytes "salt", 8 bytes "iv". */
static int crypto_info(EVP_KDF *kdf, const uint8_t *secret, size_t secret_len,
                       struct tls12_crypto_info_aes_gcm_128 *ci)
{
    uint8_t key[KEY_LEN], iv[IV_LEN];
    memset(ci, 0, sizeof *ci);
    ci->info.version = TLS_1_3_VERSION;
    ci->info.cipher_type = TLS_CIPHER_AES_GCM_128;
    int rc = expand_label(kdf, secret, secret_len, "key", key, sizeof key) == 0 &&
                     expand_label(kdf, secret, secret_len, "iv", iv, sizeof iv) == 0
                 ? 0
                 : -1;
    memcpy(ci->key, key, sizeof ci->key);
    memcpy(ci->salt, iv, sizeof ci->salt);
    memcpy(ci->iv, iv + sizeof ci->salt, sizeof ci->iv);
    /* rec_seq stays 0: the first application record in each direction */
    OPENSSL_cleanse(key, sizeof key);
    OPENSSL_cleanse(iv, sizeof iv);
    return rc;
}

static const char *kernel_release(void)
{
    static struct utsname u;
    return uname(&u) == 0 ? u.release : "unknown";
}

/* Attach the ULP and set both directions; `why` gets the step and errno. */
static int install(int fd, const struct tls12_crypto_info_aes_gcm_128 *tx,
                   const struct tls12_crypto_info_aes_gcm_128 *rx, char *why, size_t cap)
{
    if (setsockopt(fd, IPPROTO_TCP, TCP_ULP, "tls", sizeof "tls") != 0) {
        int e = errno;
        if (e == ENOENT)
            snprintf(why, cap, "kernel %s has no tls ULP (setsockopt TCP_ULP \"tls\": ENOENT): "
                     "load it with `modprobe tls` (CONFIG_TLS), or run inside `labkit sandbox`",
                     kernel_release());
        else
            snprintf(why, cap, "setsockopt TCP_ULP \"tls\" failed on kernel %s: %s",
                     kernel_release(), strerror(e));
        errno = e;
        return -1;
    }
    const struct {
        int opt;
        const char *name;
        const struct tls12_crypto_info_aes_gcm_128 *ci;
    } dirs[] = {{TLS_TX, "TLS_TX", tx}, {TLS_RX, "TLS_RX", rx}};
    for (size_t i = 0; i < LK_ARRAY_LEN(dirs); i++) {
        if (setsockopt(fd, SOL_TLS, dirs[i].opt, dirs[i].ci, sizeof *dirs[i].ci) == 0)
            continue;
        int e = errno;
        snprintf(why, cap, "kernel %s refused %s for TLS 1.3 AES-128-GCM: %s%s", kernel_release(),
                 dirs[i].name, strerror(e),
                 e == ENOENT || e == ENOMEM ? " (the kernel cannot allocate gcm(aes): is "
                                              "CONFIG_CRYPTO_GCM built or loadable?)"
                 : e == EINVAL || e == ENOPROTOOPT
                     ? " (TLS 1.3 in kTLS needs Linux 5.1+, both directions 5.2+)"
                     : "");
        errno = e;
        return -1;
    }
    return 0;
}

static int hex_nibble(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* OpenSSL 3.0 has no call that returns the TLS 1.3 traffic secrets; its key
 * log (the NSS SSLKEYLOGFILE format: "LABEL <client_random> <secret>", hex)
 * is the supported way out. */
void lk_ktls_keylog_line(lk_ktls_secrets *s, const char *line)
{
    uint8_t *dst, *have;
    if (strncmp(line, "CLIENT_TRAFFIC_SECRET_0 ", 24) == 0) {
        dst = s->client;
        have = &s->have_client;
    } else if (strncmp(line, "SERVER_TRAFFIC_SECRET_0 ", 24) == 0) {
        dst = s->server;
        have = &s->have_server;
    } else {
        return;  /* handshake and exporter secrets: not ours to keep */
    }
    const char *hex = strchr(line + 24, ' ');  /* skip the client random */
    if (!hex)
        return;
    hex++;
    size_t n = strlen(hex) / 2;
    if (n == 0 || n > LK_KTLS_SECRET_MAX)
        return;
    for (size_t i = 0; i < n; i++) {
        int hi = hex_nibble(hex[2 * i]), lo = hex_nibble(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return;
        dst[i] = (uint8_t)(hi << 4 | lo);
    }
    s->len = n;
    *have = 1;
}

int lk_ktls_check(const SSL *ssl, const lk_ktls_secrets *s, char *why, size_t cap)
{
    const SSL_CIPHER *cipher = SSL_get_current_cipher(ssl);
    if (!s->have_client || !s->have_server) {
        snprintf(why, cap, "OpenSSL did not log both application traffic secrets");
        return -1;
    }
    if (SSL_version(ssl) != TLS1_3_VERSION) {
        snprintf(why, cap, "negotiated %s; kTLS here needs TLS 1.3", SSL_get_version(ssl));
        return -1;
    }
    if (!cipher || SSL_CIPHER_get_protocol_id(cipher) != 0x1301) {  /* IANA number */
        snprintf(why, cap, "cipher %s is not %s, the one installed in the kernel",
                 cipher ? SSL_CIPHER_get_name(cipher) : "(none)", LK_KTLS_SUITE);
        return -1;
    }
    /* received bytes past the handshake held by OpenSSL would be records the
     * kernel never sees, and its receive sequence number would be wrong */
    if (SSL_has_pending(ssl)) {
        snprintf(why, cap, "OpenSSL holds received bytes past the handshake");
        return -1;
    }
    return 0;
}

int lk_ktls_install(int fd, const uint8_t *tx_secret, const uint8_t *rx_secret, size_t len,
                    char *why, size_t cap)
{
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    struct tls12_crypto_info_aes_gcm_128 tx, rx;
    int rc = -1;
    if (!kdf) {
        snprintf(why, cap, "OpenSSL has no HKDF");
    } else if (crypto_info(kdf, tx_secret, len, &tx) != 0 ||
               crypto_info(kdf, rx_secret, len, &rx) != 0) {
        char detail[200];
        ERR_error_string_n(ERR_get_error(), detail, sizeof detail);
        snprintf(why, cap, "HKDF-Expand-Label failed: %s", detail);
    } else {
        rc = install(fd, &tx, &rx, why, cap);
    }
    int e = errno;
    ERR_clear_error();
    EVP_KDF_free(kdf);
    errno = e;
    OPENSSL_cleanse(&tx, sizeof tx);
    OPENSSL_cleanse(&rx, sizeof rx);
    return rc;
}

int lk_ktls_consume(int fd, size_t n, uint8_t *scratch, size_t cap)
{
    int calls = 0;
    while (n > 0) {
        ssize_t r = recv(fd, scratch, n < cap ? n : cap, 0);
        calls++;
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r == 0)
                errno = ECONNRESET;  /* peeked bytes cannot vanish: treat as broken */
            return -1;
        }
        n -= (size_t)r;
    }
    return calls;
}

ssize_t lk_ktls_recv(int fd, void *buf, size_t cap, int flags, uint8_t *record_type)
{
    char control[CMSG_SPACE(sizeof(uint8_t))];
    struct iovec iov = {.iov_base = buf, .iov_len = cap};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                         .msg_controllen = sizeof control};
    ssize_t r = recvmsg(fd, &msg, flags);
    *record_type = LK_TLS_APPLICATION_DATA;
    if (r < 0)
        return r;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == SOL_TLS && c->cmsg_type == TLS_GET_RECORD_TYPE)
            *record_type = *CMSG_DATA(c);
    return r;
}

int lk_ktls_other_record(uint8_t record_type, const uint8_t *data, size_t n, char *why,
                         size_t cap)
{
    enum { NEW_SESSION_TICKET = 4, KEY_UPDATE = 24 };
    if (record_type == LK_TLS_ALERT) {
        if (n >= 2 && data[1] == 0)
            snprintf(why, cap, "the peer ended TLS (close_notify)");
        else
            snprintf(why, cap, "TLS alert from the peer: level %d, description %d",
                     n >= 1 ? data[0] : -1, n >= 2 ? data[1] : -1);
        return -1;
    }
    if (record_type != LK_TLS_HANDSHAKE) {
        snprintf(why, cap, "a TLS record of content type %u after the handshake", record_type);
        return -1;
    }
    /* The kernel returns one record per call: walk its handshake messages (a record
     * cut short by a small buffer ends the walk; its first message was seen) */
    for (size_t at = 0; at < n;) {
        if (data[at] == KEY_UPDATE) {
            snprintf(why, cap, "the peer sent a TLS KeyUpdate, which this kTLS path does not "
                               "follow: use tls=user against this peer");
            return -1;
        }
        if (data[at] != NEW_SESSION_TICKET) {
            snprintf(why, cap, "unexpected TLS handshake message %u after the handshake",
                     data[at]);
            return -1;
        }
        if (n - at < 4)
            break;
        at += 4 + ((size_t)data[at + 1] << 16 | (size_t)data[at + 2] << 8 | data[at + 3]);
    }
    return 0;
}

/* A connected loopback TCP pair: the ULP attaches only to established sockets. */
static int loopback_pair(int fds[2], char *why, size_t cap)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    fds[0] = fds[1] = -1;
    if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 1) != 0 ||
        getsockname(ls, (struct sockaddr *)&a, &len) != 0 ||
        (fds[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
        connect(fds[0], (struct sockaddr *)&a, sizeof a) != 0 ||
        (fds[1] = accept4(ls, NULL, NULL, SOCK_CLOEXEC)) < 0) {
        snprintf(why, cap, "cannot make a loopback TCP connection to probe kTLS: %s (is `lo` up?)",
                 strerror(errno));
        if (ls >= 0)
            close(ls);
        return -1;
    }
    close(ls);
    return 0;
}

int lk_ktls_probe(void)
{
    char why[400];
    int fds[2];
    if (loopback_pair(fds, why, sizeof why) != 0)
        return lk_fail(LK_ERR_SYSTEM, "tls=ktls: %s", why);
    /* zero keys: the probe only asks whether the kernel accepts the shape */
    struct tls12_crypto_info_aes_gcm_128 ci = {
        .info = {.version = TLS_1_3_VERSION, .cipher_type = TLS_CIPHER_AES_GCM_128}};
    int rc = install(fds[1], &ci, &ci, why, sizeof why);
    int e = errno;
    close(fds[0]);
    close(fds[1]);
    if (rc == 0)
        return LK_OK;
    return lk_fail(e == ENOENT || e == EINVAL || e == ENOPROTOOPT || e == EOPNOTSUPP
                       ? LK_ERR_UNSUPPORTED
                       : LK_ERR_SYSTEM,
                   "tls=ktls refused: %s; use tls=user for userspace TLS", why);
}

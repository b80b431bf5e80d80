/* ktls.h — hand a TLS 1.3 connection's record layer to the kernel (tls_ktls.c).
 *
 * Shared by the relay (tls_user.c, session.c) and the load generator
 * (load_tls.c, load_client.c): OpenSSL runs the handshake over memory, its
 * key log yields the application traffic secrets, and these functions check
 * the switch is safe, derive the keys and install them on the socket. */
#ifndef LK_KTLS_H
#define LK_KTLS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct ssl_st;  /* OpenSSL's SSL */

#define LK_KTLS_SECRET_MAX 48  /* SHA-384 suites; ours (SHA-256) uses 32 */

typedef struct lk_ktls_secrets {
    uint8_t client[LK_KTLS_SECRET_MAX];  /* CLIENT_TRAFFIC_SECRET_0 */
    uint8_t server[LK_KTLS_SECRET_MAX];  /* SERVER_TRAFFIC_SECRET_0 */
    size_t len;
    uint8_t have_client, have_server;
} lk_ktls_secrets;

/* The one suite installed in the kernel: SSL_CTX_set_ciphersuites() value. */
#define LK_KTLS_SUITE "TLS_AES_128_GCM_SHA256"

/* Take one OpenSSL key-log line (SSL_CTX_set_keylog_callback); keeps the two
 * application traffic secrets, ignores the other labels. */
void lk_ktls_keylog_line(lk_ktls_secrets *s, const char *line);

/* After SSL_do_handshake() returned 1: TLS 1.3, AES-128-GCM, both secrets
 * logged, and nothing received beyond the handshake buffered in OpenSSL
 * (so the kernel's receive sequence number is 0).  0, or -1 with `why`. */
int lk_ktls_check(const struct ssl_st *ssl, const lk_ktls_secrets *s, char *why, size_t cap);

/* Attach the tls ULP to a TCP socket and install TX and RX keys derived from
 * the two secrets (RFC 8446 7.3), record sequence numbers 0.  The relay
 * sends with the server secret, a client with the client secret.  0, or -1
 * with the reason in `why` (errno kept); the socket is unusable for TLS
 * after a failure. */
int lk_ktls_install(int fd, const uint8_t *tx_secret, const uint8_t *rx_secret, size_t len,
                    char *why, size_t cap);

/* Once at start: can this kernel take a TLS 1.3 AES-128-GCM socket in both
 * directions?  LK_OK, or LK_ERR_UNSUPPORTED / LK_ERR_SYSTEM with
 * lk_last_error() saying why and what to do. */
int lk_ktls_probe(void);

/* Remove n bytes already looked at with MSG_PEEK from the socket: the
 * handshake records OpenSSL took, so the kernel starts at the next record.
 * scratch is any buffer of cap bytes.  The number of recv calls, or -1
 * (errno set). */
int lk_ktls_consume(int fd, size_t n, uint8_t *scratch, size_t cap);

/* TLS record content types (RFC 8446 5.1) a kTLS receive can report. */
enum { LK_TLS_ALERT = 21, LK_TLS_HANDSHAKE = 22, LK_TLS_APPLICATION_DATA = 23 };

/* recv() on a kTLS socket that also says which record type the bytes came from
 * (cmsg TLS_GET_RECORD_TYPE).  Plain recv() fails with EIO at a record that is not
 * application data; with this the kernel hands such a record over on its own (a
 * peer's post-handshake NewSessionTicket, an alert).  Returns as recv() does. */
ssize_t lk_ktls_recv(int fd, void *buf, size_t cap, int flags, uint8_t *record_type);

/* What to do with a non-application record lk_ktls_recv returned: 0 to drop it
 * (NewSessionTicket messages only: a client keeps no sessions), -1 with the reason
 * in `why` (an alert, KeyUpdate or anything else this kTLS path cannot follow). */
int lk_ktls_other_record(uint8_t record_type, const uint8_t *data, size_t n, char *why,
                         size_t cap);

#endif

/*
 * fuzz_http.c — libFuzzer harness for the HTTP request parser and the
 * response builders (native/src/http.c).
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Inative/include \
 *       native/fuzz/fuzz_http.c native/src/http.c -o fuzz_http
 *   ./fuzz_http -max_total_time=60 native/fuzz/corpus/http
 *
 * Besides "no crash, no sanitizer report" it checks the parser's contract:
 * the result never exceeds the cap or the input, a complete head parses the
 * same with surplus bytes appended, a prefix of a complete head is
 * incomplete, and every response fits the buffer it was given.  A WebSocket
 * request is either a valid RFC 6455 handshake, whose 101 carries an accept value,
 * or gets the 400 naming version 13.
 */
#include <stdlib.h>
#include <string.h>

#include "labkit.h"

#define MAX_HEAD 4096

static void check(int ok)
{
    if (!ok)
        abort();
}

static void check_responses(const lk_http_request *req)
{
    char out[1024];
    size_t n = lk_http_build_response(req, out, sizeof out);
    check(n < sizeof out);
    if (n > 0) {
        check(memcmp(out, "HTTP/1.1 ", 9) == 0);
        /* One byte short must be refused, not truncated. */
        check(lk_http_build_response(req, out, n) == 0);
    }
    if (req->challenge_ok)
        check(strlen(req->challenge) <= 64);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    lk_http_request req;
    int n = lk_http_parse_request(data, len, MAX_HEAD, &req);
    check(n >= -1 && n <= (int)MAX_HEAD && (n < 0 || (size_t)n <= len));
    if (n <= 0)
        return 0;
    check_responses(&req);

    /* The head's length does not depend on what follows it, or on len. */
    lk_http_request again;
    check(lk_http_parse_request(data, (size_t)n, MAX_HEAD, &again) == n);
    check(memcmp(&req, &again, sizeof req) == 0);
    check(lk_http_parse_request(data, (size_t)n - 1, MAX_HEAD, &again) == 0);
    check(lk_http_parse_request(data, len, (size_t)n - 1, &again) == -1);

    uint8_t key[32];
    char head[256];
    memset(key, data[0], sizeof key);
    check(lk_http_build_101(key, head, sizeof head) > 0);

    /* the WebSocket upgrade */
    check(!req.ws_ok || req.websocket);
    if (req.ws_ok) {
        check(strlen(req.ws_key) == 24);
        size_t w = lk_http_build_ws_101(req.ws_key, head, sizeof head);
        check(w > 0 && strstr(head, "Sec-WebSocket-Accept: ") != NULL);
        check(lk_http_build_ws_101(req.ws_key, head, w) == 0);
    } else if (req.websocket && req.route == LK_ROUTE_DERP) {
        char out[1024];
        check(lk_http_build_response(&req, out, sizeof out) > 0);
        check(memcmp(out, "HTTP/1.1 400 ", 13) == 0);
    }
    return 0;
}

/*
 * http.c — the relay's HTTP/1.1 front door: parse one request head, answer
 * the requests that are not a DERP upgrade, and write the 101 for those that
 * are (docs/protocol.md §2.2–§2.6).
 *
 * The parser works in place on the caller's buffer and allocates nothing.
 * It is strict where Go's net/http answers 400 (the relay then just closes):
 *   - every line must end in CRLF; a bare LF or CR is malformed;
 *   - request line is exactly `METHOD SP target SP HTTP/1.<digit>`;
 *   - header names are tokens, values have no control characters but HTAB;
 *   - obsolete line folding (a line starting with SP/HTAB) is rejected
 *     (RFC 9112 §5.2 lets a server do that);
 *   - an HTTP/1.1 request without exactly one Host header is malformed:
 *     lk_http_request has no field to carry "answer 400", and Go never
 *     serves such a request, so -1 keeps the relay's behaviour equivalent.
 * Where a header repeats, the first value counts, as Go's Header.Get does.
 */
#include <stdio.h>
#include <string.h>

#include "labkit.h"
#include "proto/websocket.h"

#define CHALLENGE_MAX 64

/* A byte range inside the caller's buffer. */
struct span {
    const uint8_t *p;
    size_t n;
};

/* The headers the relay acts on, first occurrence of each.  An absent one
 * stays {NULL, 0}, which no comparison below matches, so absence needs no
 * flag of its own. */
struct heads {
    struct span upgrade, ws_protocol, fast_start, ideal_node, challenge;
    struct span connection, ws_key, ws_version;
    int hosts;
};

static int lower(int c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

static int span_eq(struct span s, const char *lit)
{
    size_t n = strlen(lit);
    return s.n == n && memcmp(s.p, lit, n) == 0;
}

static int span_ieq(struct span s, const char *lit)
{
    size_t n = strlen(lit);
    if (s.n != n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (lower(s.p[i]) != lower((unsigned char)lit[i]))
            return 0;
    return 1;
}

static int span_contains(struct span s, const char *lit)
{
    size_t n = strlen(lit);
    for (size_t i = 0; i + n <= s.n; i++)
        if (memcmp(s.p + i, lit, n) == 0)
            return 1;
    return 0;
}

/* RFC 9110 tchar: what methods and header names may contain. */
static int is_tchar(uint8_t c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int is_hex(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int hex_val(uint8_t c)
{
    if (c <= '9')
        return c - '0';
    return lower(c) - 'a' + 10;
}

/* Length of the head (through the blank line) within data[0, lim), 0 if no
 * blank line is there yet, -1 on a CR or LF that is not part of a CRLF.
 * Checking line endings while searching rejects a bare-LF client at once
 * instead of waiting for max_head bytes that will never form CRLFCRLF. */
static int find_head_end(const uint8_t *data, size_t lim)
{
    size_t line_start = 0;
    for (size_t i = 0; i < lim; i++) {
        if (data[i] == '\r') {
            if (i + 1 < lim && data[i + 1] != '\n')
                return -1;
            continue;
        }
        if (data[i] != '\n')
            continue;
        if (i == 0 || data[i - 1] != '\r')
            return -1;
        if (i - line_start == 1) {
            /* An empty request line is malformed (Go skips none). */
            if (line_start == 0)
                return -1;
            return (int)(i + 1);
        }
        line_start = i + 1;
    }
    return 0;
}

static enum lk_http_method method_of(struct span m)
{
    if (span_eq(m, "GET"))
        return LK_M_GET;
    if (span_eq(m, "HEAD"))
        return LK_M_HEAD;
    if (span_eq(m, "POST"))
        return LK_M_POST;
    return LK_M_OTHER;
}

/* The path of an origin-form ("/p?q") or absolute-form ("http://h/p?q")
 * target, without the query; "*" and an authority-only URL give an empty
 * path (routed as OTHER).  Returns -1 for a target Go's ParseRequestURI
 * refuses (relative, or a scheme we do not know). */
static int target_path(struct span t, struct span *path)
{
    size_t i = 0;
    if (span_eq(t, "*")) {
        path->p = t.p;
        path->n = 0;
        return 0;
    }
    if (t.p[0] != '/') {
        static const char *const schemes[] = {"http://", "https://"};
        size_t k;
        for (k = 0; k < 2; k++) {
            struct span pre = {t.p, strlen(schemes[k])};
            if (pre.n < t.n && span_ieq(pre, schemes[k]))
                break;
        }
        if (k == 2)
            return -1;
        i = strlen(schemes[k]);
        while (i < t.n && t.p[i] != '/' && t.p[i] != '?')
            i++;
    }
    size_t start = i;
    while (i < t.n && t.p[i] != '?')
        i++;
    path->p = t.p + start;
    path->n = i - start;
    return 0;
}

/* Percent-decode a path into out, keeping at most cap bytes (routing
 * compares decoded paths, as Go's URL.Path is decoded).  Returns the full
 * decoded length, which exceeds cap for a long path, or -1 for a broken
 * escape (Go: 400). */
static long decode_path(struct span path, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < path.n; i++, o++) {
        uint8_t c = path.p[i];
        if (c == '%') {
            if (i + 2 >= path.n || !is_hex(path.p[i + 1]) || !is_hex(path.p[i + 2]))
                return -1;
            c = (uint8_t)(hex_val(path.p[i + 1]) * 16 + hex_val(path.p[i + 2]));
            i += 2;
        }
        if (o < cap)
            out[o] = (char)c;
    }
    return (long)o;
}

static int route_of(struct span target)
{
    struct span path;
    char buf[32]; /* longer than every routed path */
    if (target_path(target, &path) < 0)
        return -1;
    long n = decode_path(path, buf, sizeof buf);
    if (n < 0)
        return -1;
    if ((size_t)n > sizeof buf)
        return LK_ROUTE_OTHER;
    struct span p = {(const uint8_t *)buf, (size_t)n};
    if (span_eq(p, "/derp"))
        return LK_ROUTE_DERP;
    if (span_eq(p, "/derp/probe") || span_eq(p, "/derp/latency-check"))
        return LK_ROUTE_PROBE;
    if (span_eq(p, "/generate_204"))
        return LK_ROUTE_GENERATE_204;
    return LK_ROUTE_OTHER;
}

/* `METHOD SP target SP HTTP/1.x`; sets method and route. */
static int parse_request_line(struct span line, lk_http_request *req, int *http11)
{
    const uint8_t *sp1 = memchr(line.p, ' ', line.n);
    if (sp1 == NULL || sp1 == line.p)
        return -1;
    struct span method = {line.p, (size_t)(sp1 - line.p)};
    struct span rest = {sp1 + 1, line.n - method.n - 1};
    const uint8_t *sp2 = memchr(rest.p, ' ', rest.n);
    if (sp2 == NULL || sp2 == rest.p)
        return -1;
    struct span target = {rest.p, (size_t)(sp2 - rest.p)};
    struct span version = {sp2 + 1, rest.n - target.n - 1};

    for (size_t i = 0; i < method.n; i++)
        if (!is_tchar(method.p[i]))
            return -1;
    /* Go's URL parser refuses control characters; spaces cannot occur here. */
    for (size_t i = 0; i < target.n; i++)
        if (target.p[i] < 0x21 || target.p[i] == 0x7f)
            return -1;
    if (version.n != 8 || memcmp(version.p, "HTTP/1.", 7) != 0 ||
        version.p[7] < '0' || version.p[7] > '9')
        return -1;

    int route = route_of(target);
    if (route < 0)
        return -1;
    req->method = method_of(method);
    req->route = route;
    *http11 = version.p[7] != '0';
    return 0;
}

/* Trim optional whitespace (SP / HTAB) from both ends. */
static struct span trim_ows(struct span s)
{
    while (s.n > 0 && (s.p[0] == ' ' || s.p[0] == '\t')) {
        s.p++;
        s.n--;
    }
    while (s.n > 0 && (s.p[s.n - 1] == ' ' || s.p[s.n - 1] == '\t'))
        s.n--;
    return s;
}

static void keep_first(struct span *slot, struct span v)
{
    if (slot->p == NULL)
        *slot = v;
}

/* `name: value`; remembers the headers the relay acts on.  A folded
 * continuation line starts with SP/HTAB, which is not a tchar, so it fails
 * the name check. */
static int parse_header_line(struct span line, struct heads *h)
{
    const uint8_t *colon = memchr(line.p, ':', line.n);
    if (colon == NULL || colon == line.p)
        return -1;
    struct span name = {line.p, (size_t)(colon - line.p)};
    struct span value = {colon + 1, line.n - name.n - 1};
    for (size_t i = 0; i < name.n; i++)
        if (!is_tchar(name.p[i]))
            return -1;
    for (size_t i = 0; i < value.n; i++)
        if ((value.p[i] < 0x20 && value.p[i] != '\t') || value.p[i] == 0x7f)
            return -1;
    value = trim_ows(value);

    if (span_ieq(name, "host"))
        h->hosts++;
    else if (span_ieq(name, "upgrade"))
        keep_first(&h->upgrade, value);
    else if (span_ieq(name, "sec-websocket-protocol"))
        keep_first(&h->ws_protocol, value);
    else if (span_ieq(name, "connection"))
        keep_first(&h->connection, value);
    else if (span_ieq(name, "sec-websocket-key"))
        keep_first(&h->ws_key, value);
    else if (span_ieq(name, "sec-websocket-version"))
        keep_first(&h->ws_version, value);
    else if (span_ieq(name, "derp-fast-start"))
        keep_first(&h->fast_start, value);
    else if (span_ieq(name, "ideal-node"))
        keep_first(&h->ideal_node, value);
    else if (span_ieq(name, "x-tailscale-challenge"))
        keep_first(&h->challenge, value);
    return 0;
}

/* cmd/derper's isChallengeChar set, and its 64-character limit. */
static int challenge_valid(struct span c)
{
    if (c.n == 0 || c.n > CHALLENGE_MAX)
        return 0;
    for (size_t i = 0; i < c.n; i++) {
        uint8_t ch = c.p[i];
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                 (ch >= '0' && ch <= '9') || ch == '.' || ch == '-' ||
                 ch == '_' || ch == ':';
        if (!ok)
            return 0;
    }
    return 1;
}

/* Does a comma-separated header value list `token` (case-insensitively)? */
static int has_token(struct span v, const char *token)
{
    size_t i = 0;
    while (i < v.n) {
        size_t j = i;
        while (j < v.n && v.p[j] != ',')
            j++;
        if (span_ieq(trim_ows((struct span){v.p + i, j - i}), token))
            return 1;
        i = j + 1;
    }
    return 0;
}

/* RFC 6455 §4.1: the key is 16 random bytes in base64, so 22 digits and "==". */
static int ws_key_valid(struct span k)
{
    static const char b64[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (k.n != 24 || k.p[22] != '=' || k.p[23] != '=')
        return 0;
    for (size_t i = 0; i < 22; i++)
        if (k.p[i] == 0 || !strchr(b64, k.p[i]))
            return 0;
    return 1;
}

/* Turn the remembered headers into the request's flags (docs/protocol.md §2.4). */
static void apply_heads(const struct heads *h, lk_http_request *req)
{
    int derp = span_ieq(h->upgrade, "derp");
    int ws = span_ieq(h->upgrade, "websocket");
    /* Go checks the first Sec-WebSocket-Protocol value with a plain,
     * case-sensitive strings.Contains. */
    int ws_derp = span_contains(h->ws_protocol, "derp");

    req->upgrade = derp || (ws && !ws_derp);
    req->websocket = ws && ws_derp;
    /* what a server must check before it answers 101 (RFC 6455 §4.2.1) */
    req->ws_ok = req->websocket && req->method == LK_M_GET && has_token(h->connection, "upgrade") &&
                 span_eq(h->ws_version, "13") && ws_key_valid(h->ws_key);
    if (req->ws_ok) {
        memcpy(req->ws_key, h->ws_key.p, h->ws_key.n);
        req->ws_key[h->ws_key.n] = '\0';
    }
    req->fast_start = span_eq(h->fast_start, "1");
    req->not_ideal = h->ideal_node.n > 0;
    req->challenge_ok = challenge_valid(h->challenge);
    if (req->challenge_ok) {
        memcpy(req->challenge, h->challenge.p, h->challenge.n);
        req->challenge[h->challenge.n] = '\0';
    }
}

/* *req is meaningful only after a positive return.  The whole head is
 * rescanned on each call; callers feeding it byte by byte pay O(n^2) in the
 * head length, which max_head bounds. */
int lk_http_parse_request(const uint8_t *data, size_t len, size_t max_head,
                          lk_http_request *req)
{
    /* The return type is int; no sane cap comes near this anyway. */
    if (max_head > (size_t)0x7fffffff)
        max_head = 0x7fffffff;
    size_t lim = len < max_head ? len : max_head;
    int end = find_head_end(data, lim);
    if (end < 0)
        return -1;
    if (end == 0)
        return len >= max_head ? -1 : 0;

    memset(req, 0, sizeof *req);
    struct heads h = {0};
    int http11 = 0;
    size_t pos = 0;
    int first = 1;
    /* Every line ends in CRLF (find_head_end checked); the last is empty. */
    for (;;) {
        const uint8_t *lf = memchr(data + pos, '\n', (size_t)end - pos);
        struct span line = {data + pos, (size_t)(lf - (data + pos)) - 1};
        pos = (size_t)(lf - data) + 1;
        if (line.n == 0)
            break;
        int rc = first ? parse_request_line(line, req, &http11)
                       : parse_header_line(line, &h);
        if (rc < 0)
            return -1;
        first = 0;
    }
    if (h.hosts > 1 || (http11 && h.hosts == 0))
        return -1;
    apply_heads(&h, req);
    return end;
}

/* ---- responses -------------------------------------------------------- */

/* snprintf's result, or 0 when it did not fit (or failed). */
static size_t fitted(int n, size_t cap)
{
    return (n < 0 || (size_t)n >= cap) ? 0 : (size_t)n;
}

/* A complete response: status, extra header lines (each ending CRLF),
 * Content-Length for `body` unless it is NULL (204), Connection: close.
 * HEAD gets the same head without the body. */
static size_t respond(char *out, size_t cap, int head_only, const char *status,
                      const char *extra, const char *body)
{
    int n;
    if (body == NULL)
        n = snprintf(out, cap, "HTTP/1.1 %s\r\n%sConnection: close\r\n\r\n",
                     status, extra);
    else
        n = snprintf(out, cap,
                     "HTTP/1.1 %s\r\n%sContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     status, extra, strlen(body), head_only ? "" : body);
    return fitted(n, cap);
}

#define TEXT_PLAIN "Content-Type: text/plain; charset=utf-8\r\n"

static const char home_page[] =
    "labkit DERP relay\n"
    "\n"
    "This server relays Tailscale DERP traffic. Clients connect to /derp\n"
    "with Upgrade: DERP; /derp/probe and /generate_204 answer health checks.\n";

#define NO_CACHE \
    "Cache-Control: no-cache, no-store, must-revalidate, no-transform, max-age=0\r\n"
#define CHALLENGE_REPLY "X-Tailscale-Response: response "

static size_t respond_204(const lk_http_request *req, char *out, size_t cap)
{
    /* Sized for the longest case, so the extra lines always fit. */
    char extra[sizeof NO_CACHE + sizeof CHALLENGE_REPLY + CHALLENGE_MAX + 2];
    snprintf(extra, sizeof extra, "%s%s%.*s%s", NO_CACHE,
             req->challenge_ok ? CHALLENGE_REPLY : "",
             CHALLENGE_MAX, req->challenge_ok ? req->challenge : "",
             req->challenge_ok ? "\r\n" : "");
    return respond(out, cap, 0, "204 No Content", extra, NULL);
}

/*
 * A WebSocket request (subprotocol "derp", §2.7) that is not a valid RFC 6455
 * handshake gets 400 naming the version the relay speaks; a valid one gets
 * lk_http_build_ws_101.  An upgrading request has no response here (it gets a
 * 101, or nothing under fast start), so this returns 0 for it, like a short
 * buffer: there is nothing to send.
 */
size_t lk_http_build_response(const lk_http_request *req, char *out, size_t cap)
{
    int head_only = req->method == LK_M_HEAD;
    switch (req->route) {
    case LK_ROUTE_DERP:
        if (req->websocket && !req->ws_ok)
            return respond(out, cap, head_only, "400 Bad Request",
                           TEXT_PLAIN "Sec-WebSocket-Version: 13\r\n",
                           "bad WebSocket handshake: GET with Connection: Upgrade, "
                           "Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key\n");
        if (req->upgrade || req->websocket)
            return 0;
        /* Go's http.Error: text body plus newline, nosniff. */
        return respond(out, cap, head_only, "426 Upgrade Required",
                       TEXT_PLAIN "X-Content-Type-Options: nosniff\r\n",
                       "DERP requires connection upgrade\n");
    case LK_ROUTE_PROBE:
        if (req->method == LK_M_GET || req->method == LK_M_HEAD)
            return respond(out, cap, head_only, "200 OK",
                           "Access-Control-Allow-Origin: *\r\n", "");
        return respond(out, cap, head_only, "405 Method Not Allowed",
                       TEXT_PLAIN "Allow: GET, HEAD\r\nX-Content-Type-Options: nosniff\r\n",
                       "bogus probe method\n");
    case LK_ROUTE_GENERATE_204:
        return respond_204(req, out, cap);
    default:
        return respond(out, cap, head_only, "200 OK", TEXT_PLAIN, home_page);
    }
}

size_t lk_http_build_101(const uint8_t public_key[32], char *out, size_t cap)
{
    static const char digits[] = "0123456789abcdef";
    char hex[65];
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = digits[public_key[i] >> 4];
        hex[2 * i + 1] = digits[public_key[i] & 15];
    }
    hex[64] = '\0';
    int n = snprintf(out, cap,
                     "HTTP/1.1 101 Switching Protocols\r\n"
                     "Upgrade: DERP\r\n"
                     "Connection: Upgrade\r\n"
                     "Derp-Version: 2\r\n"
                     "Derp-Public-Key: %s\r\n"
                     "\r\n",
                     hex);
    return fitted(n, cap);
}

size_t lk_http_build_ws_101(const char *ws_key, char *out, size_t cap)
{
    char accept[LK_WS_ACCEPT_LEN + 1];
    if (lk_ws_accept(ws_key, strlen(ws_key), accept) != 0)
        return 0;
    int n = snprintf(out, cap,
                     "HTTP/1.1 101 Switching Protocols\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n"
                     "Sec-WebSocket-Protocol: derp\r\n"
                     "\r\n",
                     accept);
    return fitted(n, cap);
}

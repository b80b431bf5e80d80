/*
 * client_info.c — decode the ClientInfo JSON a client seals into its first
 * frame (docs/protocol.md §4.4), accepting and refusing what Go's
 * encoding/json does when it unmarshals into derp.ClientInfo:
 *
 *   - the whole input is RFC 8259 JSON; empty input, trailing bytes or any
 *     syntax error anywhere (also inside ignored values) is a failure;
 *   - the top level is an object, or the literal null (all defaults);
 *   - keys match field names case-insensitively after unescaping, with Go's
 *     Unicode folding (U+017F folds to S, U+212A KELVIN SIGN to K); unknown
 *     keys are skipped; a repeated key overwrites the earlier value;
 *   - null as a field value changes nothing, for every field;
 *   - version must be an integer literal within int64 (Go rejects 2.0, 1e2);
 *     CanAckPings and IsProber must be booleans; AppName must be a string;
 *     meshKey must be a string of exactly 64 hex digits (key.DERPMesh);
 *   - invalid surrogate escapes and invalid UTF-8 are not errors (Go turns
 *     them into U+FFFD), raw control characters in strings are.
 *
 * One deliberate difference: Go allows 10 000 levels of nesting, this parser
 * 64.  ClientInfo is flat; deep nesting here only ever comes from an attacker.
 * Nothing is allocated and nothing recurses: ignored values are skipped with
 * a bit stack.
 */
#include <string.h>

#include "labkit.h"

#define MAX_DEPTH 64 /* containers open at once, the top-level object included */
#define MESH_HEX 64
#define NOT_ASCII 0xFFFD /* what next_rune gives for any rune we never match */

struct cur {
    const char *p;
    size_t n;
    size_t i;
};

/* The body of a validated string, between its quotes, escapes still in. */
struct span {
    const char *p;
    size_t n;
};

enum field { F_UNKNOWN, F_VERSION, F_CAN_ACK_PINGS, F_IS_PROBER, F_MESH_KEY, F_APP_NAME };

static int peek(const struct cur *c) { return c->i < c->n ? (unsigned char)c->p[c->i] : -1; }

static void skip_ws(struct cur *c)
{
    while (c->i < c->n) {
        char ch = c->p[c->i];
        if (ch != ' ' && ch != '\t' && ch != '\r' && ch != '\n')
            return;
        c->i++;
    }
}

static int is_digit(int ch) { return ch >= '0' && ch <= '9'; }

static int hex_val(uint32_t ch)
{
    if (ch >= '0' && ch <= '9')
        return (int)(ch - '0');
    if (ch >= 'a' && ch <= 'f')
        return (int)(ch - 'a' + 10);
    if (ch >= 'A' && ch <= 'F')
        return (int)(ch - 'A' + 10);
    return -1;
}

static int literal(struct cur *c, const char *word)
{
    size_t n = strlen(word);
    if (c->n - c->i < n || memcmp(c->p + c->i, word, n) != 0)
        return -1;
    c->i += n;
    return 0;
}

/* A string token; *body gets what lies between the quotes. */
static int scan_string(struct cur *c, struct span *body)
{
    if (peek(c) != '"')
        return -1;
    size_t start = ++c->i;
    while (c->i < c->n) {
        unsigned char b = (unsigned char)c->p[c->i];
        if (b == '"') {
            body->p = c->p + start;
            body->n = c->i - start;
            c->i++;
            return 0;
        }
        if (b < 0x20)
            return -1;
        if (b != '\\') {
            c->i++;
            continue;
        }
        if (c->i + 1 >= c->n)
            return -1;
        char e = c->p[c->i + 1];
        if (e == 'u') {
            if (c->n - c->i < 6)
                return -1;
            for (size_t k = 2; k < 6; k++)
                if (hex_val((unsigned char)c->p[c->i + k]) < 0)
                    return -1;
            c->i += 6;
        } else if (e != '\0' && strchr("\"\\/bfnrt", e) != NULL) {
            c->i += 2;
        } else {
            return -1;
        }
    }
    return -1;
}

/* A number token; *integral says it had neither fraction nor exponent. */
static int scan_number(struct cur *c, int *integral)
{
    if (peek(c) == '-')
        c->i++;
    if (peek(c) == '0')
        c->i++;
    else if (is_digit(peek(c)))
        while (is_digit(peek(c)))
            c->i++;
    else
        return -1;
    *integral = 1;
    if (peek(c) == '.') {
        c->i++;
        if (!is_digit(peek(c)))
            return -1;
        while (is_digit(peek(c)))
            c->i++;
        *integral = 0;
    }
    if (peek(c) == 'e' || peek(c) == 'E') {
        c->i++;
        if (peek(c) == '+' || peek(c) == '-')
            c->i++;
        if (!is_digit(peek(c)))
            return -1;
        while (is_digit(peek(c)))
            c->i++;
        *integral = 0;
    }
    return 0;
}

static int skip_scalar(struct cur *c)
{
    struct span s;
    int integral;
    switch (peek(c)) {
    case '"': return scan_string(c, &s);
    case 't': return literal(c, "true");
    case 'f': return literal(c, "false");
    case 'n': return literal(c, "null");
    default: return scan_number(c, &integral);
    }
}

/* `"key" :` with surrounding whitespace, inside an object. */
static int member_key(struct cur *c, struct span *key)
{
    skip_ws(c);
    if (scan_string(c, key) < 0)
        return -1;
    skip_ws(c);
    if (peek(c) != ':')
        return -1;
    c->i++;
    return 0;
}

/*
 * Skip one value of any type, checking its syntax.  `depth` containers are
 * already open around it.  Bit k of `objects` says whether the k-th open
 * container inside this value is an object (else an array); with at most
 * MAX_DEPTH levels that stack fits one uint64_t and no recursion is needed.
 */
static int skip_value(struct cur *c, int depth)
{
    uint64_t objects = 0;
    int open = 0;
    struct span key;
    for (;;) {
        skip_ws(c);
        int ch = peek(c);
        if (ch == '{' || ch == '[') {
            if (depth + open >= MAX_DEPTH)
                return -1;
            c->i++;
            objects = (objects & ~(1ull << open)) | ((uint64_t)(ch == '{') << open);
            open++;
            skip_ws(c);
            if (peek(c) != (ch == '{' ? '}' : ']')) {
                if (ch == '{' && member_key(c, &key) < 0)
                    return -1;
                continue; /* to the first element's value */
            }
            c->i++; /* empty container: it is a complete value */
            open--;
        } else if (skip_scalar(c) < 0) {
            return -1;
        }
        /* A value ended: close finished containers, or go to the next element. */
        for (;;) {
            if (open == 0)
                return 0;
            int is_object = (int)((objects >> (open - 1)) & 1);
            skip_ws(c);
            ch = peek(c);
            if (ch == ',') {
                c->i++;
                if (is_object && member_key(c, &key) < 0)
                    return -1;
                break;
            }
            if (ch != (is_object ? '}' : ']'))
                return -1;
            c->i++;
            open--;
        }
    }
}

static uint32_t hex4(const char *s)
{
    uint32_t v = 0;
    for (int k = 0; k < 4; k++)
        v = v * 16 + (uint32_t)hex_val((unsigned char)s[k]);
    return v;
}

/* A \u escape at s.p[*i] (just past the backslash-u), surrogate pairs
 * joined; an unpaired surrogate decodes to U+FFFD as in Go. */
static uint32_t unicode_escape(struct span s, size_t *i)
{
    uint32_t cp = hex4(s.p + *i);
    *i += 4;
    if (cp < 0xD800 || cp > 0xDFFF)
        return cp;
    if (cp <= 0xDBFF && s.n - *i >= 6 && s.p[*i] == '\\' && s.p[*i + 1] == 'u') {
        uint32_t lo = hex4(s.p + *i + 2);
        if (lo >= 0xDC00 && lo <= 0xDFFF) {
            *i += 6;
            return 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
    }
    return 0xFFFD;
}

/* The next rune of a validated string body.  Raw non-ASCII bytes matter
 * only as the two runes that fold into ASCII letters; every other one
 * (and each byte of invalid UTF-8) reads as NOT_ASCII. */
static uint32_t next_rune(struct span s, size_t *i)
{
    const unsigned char *b = (const unsigned char *)s.p + *i;
    size_t left = s.n - *i;
    if (b[0] == '\\') {
        char e = (char)b[1];
        *i += 2;
        if (e == 'u')
            return unicode_escape(s, i);
        static const char from[] = "bfnrt", to[] = "\b\f\n\r\t";
        const char *hit = strchr(from, e);
        return hit != NULL ? (unsigned char)to[hit - from] : (unsigned char)e;
    }
    if (left >= 2 && b[0] == 0xC5 && b[1] == 0xBF) {
        *i += 2;
        return 0x17F;
    }
    if (left >= 3 && b[0] == 0xE2 && b[1] == 0x84 && b[2] == 0xAA) {
        *i += 3;
        return 0x212A;
    }
    *i += 1;
    return b[0] < 0x80 ? b[0] : NOT_ASCII;
}

/* Go's key folding, for the runes that can equal an ASCII letter. */
static uint32_t fold(uint32_t r)
{
    if (r >= 'a' && r <= 'z')
        return r - 32;
    if (r == 0x17F)
        return 'S';
    if (r == 0x212A)
        return 'K';
    return r;
}

static int key_is(struct span key, const char *name)
{
    size_t i = 0;
    for (; *name != '\0'; name++) {
        if (i >= key.n || fold(next_rune(key, &i)) != fold((unsigned char)*name))
            return 0;
    }
    return i == key.n;
}

static enum field field_of(struct span key)
{
    if (key_is(key, "version"))
        return F_VERSION;
    if (key_is(key, "CanAckPings"))
        return F_CAN_ACK_PINGS;
    if (key_is(key, "IsProber"))
        return F_IS_PROBER;
    if (key_is(key, "meshKey"))
        return F_MESH_KEY;
    if (key_is(key, "AppName"))
        return F_APP_NAME;
    return F_UNKNOWN;
}

/* An integer literal that fits int64, as strconv.ParseInt(s, 10, 64). */
static int parse_int64(struct cur *c, int64_t *out)
{
    size_t start = c->i;
    int integral;
    if (scan_number(c, &integral) < 0 || !integral)
        return -1;
    const char *s = c->p + start;
    int neg = *s == '-';
    uint64_t limit = neg ? (uint64_t)1 << 63 : ((uint64_t)1 << 63) - 1;
    uint64_t mag = 0;
    for (s += neg; s < c->p + c->i; s++) {
        uint64_t d = (uint64_t)(*s - '0');
        if (mag > (limit - d) / 10)
            return -1;
        mag = mag * 10 + d;
    }
    /* Negate in unsigned arithmetic: -(2^63) has no positive int64 twin. */
    *out = neg ? (int64_t)(0 - mag) : (int64_t)mag;
    return 0;
}

static int parse_bool(struct cur *c, int *out)
{
    if (literal(c, "true") == 0) {
        *out = 1;
        return 0;
    }
    if (literal(c, "false") == 0) {
        *out = 0;
        return 0;
    }
    return -1;
}

/* key.DERPMesh's UnmarshalText: exactly 64 hex digits (after unescaping). */
static int parse_mesh_key(struct cur *c, uint8_t key[32])
{
    struct span s;
    if (scan_string(c, &s) < 0)
        return -1;
    uint8_t tmp[32] = {0};
    size_t i = 0;
    int digits = 0;
    while (i < s.n) {
        int v = hex_val(next_rune(s, &i));
        if (v < 0 || digits == MESH_HEX)
            return -1;
        tmp[digits / 2] = (uint8_t)(digits % 2 ? (tmp[digits / 2] | v) : v << 4);
        digits++;
    }
    if (digits != MESH_HEX)
        return -1;
    memcpy(key, tmp, sizeof tmp);
    return 0;
}

static int parse_field(struct cur *c, enum field f, lk_client_info *info)
{
    struct span s;
    skip_ws(c);
    if (peek(c) == 'n')
        return literal(c, "null");
    switch (f) {
    case F_VERSION: return parse_int64(c, &info->version);
    case F_CAN_ACK_PINGS: return parse_bool(c, &info->can_ack_pings);
    case F_IS_PROBER: return parse_bool(c, &info->is_prober);
    case F_MESH_KEY:
        if (parse_mesh_key(c, info->mesh_key) < 0)
            return -1;
        info->has_mesh_key = 1;
        return 0;
    case F_APP_NAME: return scan_string(c, &s);
    default: return skip_value(c, 1);
    }
}

/* The top-level object, its opening brace already consumed. */
static int parse_object(struct cur *c, lk_client_info *info)
{
    skip_ws(c);
    if (peek(c) == '}') {
        c->i++;
        return 0;
    }
    for (;;) {
        struct span key;
        if (member_key(c, &key) < 0 || parse_field(c, field_of(key), info) < 0)
            return -1;
        skip_ws(c);
        int ch = peek(c);
        if (ch != ',' && ch != '}')
            return -1;
        c->i++;
        if (ch == '}')
            return 0;
    }
}

int lk_client_info_parse(const char *json, size_t len, lk_client_info *out)
{
    struct cur c = {json, len, 0};
    lk_client_info info;
    memset(&info, 0, sizeof info);
    skip_ws(&c);
    int rc;
    if (peek(&c) == '{') {
        c.i++;
        rc = parse_object(&c, &info);
    } else {
        rc = literal(&c, "null"); /* also fails on empty input */
    }
    skip_ws(&c);
    if (rc < 0 || c.i != c.n)
        return LK_ERR_CONFIG;
    *out = info; /* only a fully valid input changes *out */
    return LK_OK;
}

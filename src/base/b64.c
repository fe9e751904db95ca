#include "base/b64.h"

#include <stdint.h>

static const char ALPHABET[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int lk_b64_encode(lk_buf *out, const void *p, size_t n)
{
    const unsigned char *s = p;
    char q[4];
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        q[0] = ALPHABET[v >> 18 & 63];
        q[1] = ALPHABET[v >> 12 & 63];
        q[2] = ALPHABET[v >> 6 & 63];
        q[3] = ALPHABET[v & 63];
        if (lk_buf_append(out, q, 4)) return -1;
    }
    if (i < n) {
        uint32_t v = (uint32_t)s[i] << 16;
        if (i + 1 < n) v |= (uint32_t)s[i + 1] << 8;
        q[0] = ALPHABET[v >> 18 & 63];
        q[1] = ALPHABET[v >> 12 & 63];
        q[2] = i + 1 < n ? ALPHABET[v >> 6 & 63] : '=';
        q[3] = '=';
        if (lk_buf_append(out, q, 4)) return -1;
    }
    if (n == 0 && lk_buf_append(out, "", 0)) return -1;
    return 0;
}

static int sextet(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
}

int lk_b64_decode(lk_buf *out, const char *s, size_t n)
{
    while (n > 0 && s[n - 1] == '=') n--;
    if (n % 4 == 1) return -1;
    if (lk_buf_append(out, "", 0)) return -1;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = sextet((unsigned char)s[i]);
        if (v < 0) return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            unsigned char byte = (unsigned char)(acc >> bits & 0xff);
            if (lk_buf_append(out, &byte, 1)) return -1;
        }
    }
    return 0;
}

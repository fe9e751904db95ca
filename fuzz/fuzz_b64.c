/* libFuzzer target: base64 (keys and values on etcd's gateway). Decodes the
 * input as it comes; then encodes it, decodes the encoding and checks the
 * round trip, and that the encoding is canonical padded base64. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/b64.h"

static void check(int ok)
{
    if (!ok) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lk_buf dec = {0}, enc = {0}, back = {0}, again = {0};

    /* arbitrary input: ok or -1, never more than 3/4 of it */
    if (lk_b64_decode(&dec, (const char *)data, size) == 0) {
        check(dec.data && dec.data[dec.len] == '\0');
        check(dec.len <= size / 4 * 3 + 2);
        /* a decoded string re-encodes to something that decodes the same */
        check(lk_b64_encode(&again, dec.data, dec.len) == 0);
        lk_buf_reset(&back);
        check(lk_b64_decode(&back, again.data, again.len) == 0);
        check(back.len == dec.len && memcmp(back.data, dec.data, dec.len) == 0);
    }
    /* appends: a prefix already in the buffer stays */
    lk_buf_reset(&dec);
    check(lk_buf_append(&dec, "pre", 3) == 0);
    (void)lk_b64_decode(&dec, (const char *)data, size);
    check(dec.len >= 3 && memcmp(dec.data, "pre", 3) == 0);

    /* round trip */
    check(lk_b64_encode(&enc, data, size) == 0);
    check(enc.data && enc.data[enc.len] == '\0');
    check(enc.len == (size + 2) / 3 * 4);
    check(strlen(enc.data) == enc.len);
    for (size_t i = 0; i < enc.len; i++) {
        char c = enc.data[i];
        int pad = enc.len - i <= 2 && c == '=';
        check(pad || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
              (c >= '0' && c <= '9') || c == '+' || c == '/');
    }
    lk_buf_reset(&back);
    check(lk_b64_decode(&back, enc.data, enc.len) == 0);
    check(back.len == size && (size == 0 || memcmp(back.data, data, size) == 0));

    lk_buf_free(&dec);
    lk_buf_free(&enc);
    lk_buf_free(&back);
    lk_buf_free(&again);
    return 0;
}

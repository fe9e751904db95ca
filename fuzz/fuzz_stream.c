/* libFuzzer target: the watch stream's line framer (lk_buf_lines) fed in
 * chunks split at points the input chooses, each line walked the way the
 * engine's on_stream_line walks it.
 *
 * Input: byte 0 = flags (bits 0-3: k, the count of chunk-size bytes; bit 4:
 * keep feeding after the callback asked to stop), then k chunk sizes (one
 * byte each, used in turn; 0 = an empty chunk, 255 = all the rest), then the
 * stream itself.
 *
 * Invariant checked after every lk_buf_lines call, with S the bytes fed so
 * far and C = S.len - b.len the bytes it dropped:
 *   - what stays in the buffer is exactly S[C..], NUL-terminated;
 *   - C only grows, and S[C-1] is '\n' (nothing but whole lines is dropped);
 *   - the lines handed over by this call, each followed by '\n', are exactly
 *     S[C_before..C) with its empty lines removed ("\n" runs collapsed and
 *     leading newlines dropped);
 *   - each line is non-empty, holds no '\n', lies inside the buffer and is
 *     followed there by its '\n';
 *   - the callback is not called again after it answered nonzero, and when
 *     it answered zero throughout, no '\n' stays in the buffer. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "transport/gateway.h"
#include "transport/gateway_json.h"

#define PREFIX "/locker/"

typedef struct state {
    lk_buf *b;
    lk_buf got;        /* lines handed over by this call, each + '\n' */
    int stopped;       /* the callback answered nonzero in this call */
    int64_t stream_rev;
} state;

static void check(int ok)
{
    if (!ok) abort();
}

/* The engine's walk of one line (session.c's on_stream_line, without the
 * session): -1 where it ends the stream. */
static int walk_line(state *st, const char *line, size_t n)
{
    cJSON *root = cJSON_ParseWithLength(line, n);
    const cJSON *res = cJSON_GetObjectItemCaseSensitive(root, "result");
    if (!cJSON_IsObject(res)) {
        char text[256];
        int grpc;
        cJSON_Delete(root);
        cJSON_Delete(lk_etcd_parse(line, n, 500, text, sizeof text, &grpc));
        check(memchr(text, '\0', sizeof text) != NULL);
        return -1;
    }
    int64_t header_rev = lk_etcd_revision(res);
    if (lk_etcd_int(res, "compact_revision") > 0) {
        st->stream_rev = 0;
        cJSON_Delete(root);
        return -1;
    }
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(res, "canceled"))) {
        const cJSON *why = cJSON_GetObjectItemCaseSensitive(res, "cancel_reason");
        if (cJSON_IsString(why)) check(why->valuestring != NULL);
        cJSON_Delete(root);
        return -1;
    }
    const cJSON *events = cJSON_GetObjectItemCaseSensitive(res, "events");
    if (events && !cJSON_IsArray(events)) {
        cJSON_Delete(root);
        return -1;
    }
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(res, "created"))) {
        if (st->stream_rev == 0) st->stream_rev = header_rev;
    } else if (!events && header_rev > st->stream_rev) {
        st->stream_rev = header_rev;
    }
    const cJSON *ev;
    lk_kv kv = {0};
    cJSON_ArrayForEach(ev, events) {
        const cJSON *item = cJSON_GetObjectItemCaseSensitive(ev, "kv");
        if (lk_etcd_kv(item, &kv)) continue;
        check(kv.key.data && kv.key.data[kv.key.len] == '\0');
        check(kv.value.data && kv.value.data[kv.value.len] == '\0');
        if (kv.mod_rev > st->stream_rev) st->stream_rev = kv.mod_rev;
        /* publish_change: the lock name between the prefix and a '/' */
        size_t plen = sizeof PREFIX - 1;
        if (kv.key.len > plen) {
            const char *name = kv.key.data + plen;
            const char *slash = memchr(name, '/', kv.key.len - plen);
            if (slash && slash != name) {
                const cJSON *type = cJSON_GetObjectItemCaseSensitive(ev, "type");
                if (cJSON_IsString(type))
                    (void)strcmp(type->valuestring, "DELETE");
            }
        }
    }
    lk_etcd_kv_free(&kv);
    cJSON_Delete(root);
    return 0;
}

static int on_line(void *ctx, const char *line, size_t n)
{
    state *st = ctx;
    lk_buf *b = st->b;
    check(!st->stopped);
    check(line != NULL && n > 0);
    check(memchr(line, '\n', n) == NULL);
    check(line >= b->data && line + n < b->data + b->len);
    check(line[n] == '\n');
    check(lk_buf_append(&st->got, line, n) == 0);
    check(lk_buf_append(&st->got, "\n", 1) == 0);
    int rc = walk_line(st, line, n);
    if (rc) st->stopped = 1;
    return rc;
}

/* s[0..n) with empty lines removed, each line followed by '\n' (s ends
 * with '\n' or is empty). */
static void collapse(lk_buf *out, const char *s, size_t n)
{
    size_t start = 0;
    lk_buf_reset(out);
    check(lk_buf_append(out, "", 0) == 0);
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\n') continue;
        if (i > start) check(lk_buf_append(out, s + start, i - start + 1) == 0);
        start = i + 1;
    }
    check(start == n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    size_t k = data[0] & 15;
    int keep_feeding = data[0] >> 4 & 1;
    if (size < 1 + k) return 0;
    const uint8_t *sizes = data + 1;
    const char *s = (const char *)data + 1 + k;
    size_t len = size - 1 - k;

    lk_buf b = {0}, want = {0};
    state st = {.b = &b};
    size_t fed = 0, consumed = 0, j = 0, idle = 0;
    int ended = 0;   /* the callback ended the stream */
    while (fed < len || (fed == len && idle == 0 && len == 0)) {
        size_t chunk = k ? sizes[j++ % k] : len - fed;
        if (chunk == 255 || chunk > len - fed) chunk = len - fed;
        /* a cycle of empty chunks: take the rest, so that it ends */
        if (chunk == 0 && ++idle > k) chunk = len - fed;
        if (chunk) idle = 0;
        check(lk_buf_append(&b, s + fed, chunk) == 0);
        fed += chunk;

        lk_buf_reset(&st.got);
        st.stopped = 0;
        int rc = lk_buf_lines(&b, on_line, &st);
        check((rc != 0) == st.stopped);
        /* what stays is the unconsumed tail of what was fed */
        check(b.len <= fed);
        size_t now = fed - b.len;
        check(now >= consumed);
        check(b.len == 0 || memcmp(b.data, s + now, b.len) == 0);
        check(b.data == NULL || b.data[b.len] == '\0');
        check(now == 0 || s[now - 1] == '\n');
        /* the lines handed over are that consumed stretch's non-empty lines */
        collapse(&want, s + consumed, now - consumed);
        check(want.len == st.got.len &&
              (want.len == 0 || memcmp(want.data, st.got.data, want.len) == 0));
        if (!rc) check(b.len == 0 || memchr(b.data, '\n', b.len) == NULL);
        consumed = now;
        if (rc && !keep_feeding) {
            ended = 1;
            break;
        }
        if (len == 0) break;
    }
    /* the transfer's end (http.c): the lines left, then a last partial one */
    if (!ended) {
        lk_buf_reset(&st.got);
        st.stopped = 0;
        int rc = lk_buf_lines(&b, on_line, &st);
        if (!rc && b.len) {
            check(memchr(b.data, '\n', b.len) == NULL);
            (void)walk_line(&st, b.data, b.len);
        }
    }
    lk_buf_free(&b);
    lk_buf_free(&want);
    lk_buf_free(&st.got);
    return 0;
}

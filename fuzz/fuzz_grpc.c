/* libFuzzer target: the gRPC transport's framer and every answer decoder
 * (what a stream and a unary call run on whatever an endpoint sends). The
 * first byte picks the decoder and the message buffer's size; the rest is
 * a run of gRPC frames, split as a stream would be, each message decoded. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "transport/grpc.h"

static const size_t MSG_SIZES[] = {256, 1, 17, 4096};

static void check_buf(const lk_buf *b)
{
    if (b->len && (!b->data || b->len >= b->cap || b->data[b->len] != '\0')) abort();
}

static void check_kv(const lk_kv *kv)
{
    check_buf(&kv->key);
    check_buf(&kv->value);
}

static void check_range(const lk_range_resp *r)
{
    if (r->n && !r->kvs) abort();
    for (size_t i = 0; i < r->n; i++) check_kv(&r->kvs[i]);
}

static void decode(int which, const char *m, size_t n, char *msg, size_t msg_size)
{
    switch (which % 6) {
    case 0: {
        lk_range_resp r;
        if (lk_grpc_range(m, n, &r, msg, msg_size) == 0) check_range(&r);
        lk_range_resp_free(&r);
        break;
    }
    case 1: {
        lk_txn_resp t;
        if (lk_grpc_txn(m, n, &t, msg, msg_size) == 0)
            for (size_t i = 0; i < t.n; i++) check_range(&t.ranges[i]);
        lk_txn_resp_free(&t);
        break;
    }
    case 2: {
        lk_lease_resp l;
        (void)lk_grpc_lease(m, n, &l, msg, msg_size);
        break;
    }
    case 3: {
        lk_plain_resp p;
        (void)lk_grpc_plain(m, n, &p, msg, msg_size);
        break;
    }
    case 4: {
        lk_watch_resp w;
        if (lk_grpc_watch(m, n, &w, msg, msg_size) == 0) {
            if (w.n && !w.events) abort();
            for (size_t i = 0; i < w.n; i++) check_kv(&w.events[i].kv);
            if (memchr(w.cancel_reason, '\0', sizeof w.cancel_reason) == NULL) abort();
        }
        lk_watch_resp_free(&w);
        break;
    }
    default: {
        lk_buf token = {0};
        if (lk_grpc_auth(m, n, &token, msg, msg_size) == 0 && !token.len) abort();
        lk_buf_free_secret(&token);
        break;
    }
    }
    if (memchr(msg, '\0', msg_size) == NULL) abort();  /* messages stay terminated */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    int which = data[0] & 0x0f;
    size_t msg_size = MSG_SIZES[(data[0] >> 4) & 3];
    char *msg = malloc(msg_size);
    if (!msg) return 0;
    msg[0] = '\0';
    msg[msg_size - 1] = '\0';
    const char *p = (const char *)data + 1;
    size_t left = size - 1;
    /* the whole input as one message too (a unary answer's body) */
    decode(which, p, left, msg, msg_size);
    for (;;) {
        const char *m;
        size_t n, used;
        char why[160];
        int rc = lk_grpc_frame(p, left, 1 << 20, &m, &n, &used, why, sizeof why);
        if (rc != LK_GRPC_FRAME) {
            if (rc == LK_GRPC_BAD && memchr(why, '\0', sizeof why) == NULL) abort();
            break;
        }
        if (used > left || used != n + LK_GRPC_PREFIX) abort();
        decode(which, m, n, msg, msg_size);
        p += used;
        left -= used;
    }
    free(msg);
    return 0;
}

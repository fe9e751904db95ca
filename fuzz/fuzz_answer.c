/* libFuzzer target: the gateway answer decoders (what lk_answer and the
 * request handlers run on every answer etcd sends). The first byte picks an
 * HTTP status and the size of the message buffer; the rest is the body. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "transport/gateway.h"
#include "transport/gateway_json.h"

static const long STATUSES[] = {200, 200, 200, 200, 400, 404, 500, 503, 0, 204};
static const size_t MSG_SIZES[] = {256, 1, 17, 4096};

static void check_buf(const lk_buf *b)
{
    if (!b->data) abort();                  /* decode_field always appends */
    if (b->len >= b->cap) abort();
    if (b->data[b->len] != '\0') abort();
}

static void walk_kv(const cJSON *item)
{
    lk_kv kv = {0};
    /* decoded twice into the same lk_kv: the engine reuses one per answer */
    for (int i = 0; i < 2; i++) {
        if (lk_etcd_kv(item, &kv) == 0) {
            check_buf(&kv.key);
            check_buf(&kv.value);
        }
    }
    lk_etcd_kv_free(&kv);
}

static void walk_range(const cJSON *range)
{
    const cJSON *kvs, *item;
    int64_t n;
    (void)lk_etcd_revision(range);
    (void)lk_etcd_int_field(range, "count", &n);
    if (lk_etcd_kvs(range, &kvs) == 0)
        cJSON_ArrayForEach(item, kvs) walk_kv(item);
    walk_kv(lk_etcd_first_kv(range));
}

static void walk_answer(const cJSON *root)
{
    static const char *const FIELDS[] = {"ID", "TTL", "revision",
                                         "create_revision", "mod_revision",
                                         "lease", "deleted", "count"};
    int64_t n;
    (void)lk_etcd_revision(root);
    for (size_t i = 0; i < sizeof FIELDS / sizeof *FIELDS; i++) {
        int rc = lk_etcd_int_field(root, FIELDS[i], &n);
        if (rc < -1 || rc > 1 || (rc <= 0 && n != 0)) abort();
        if (lk_etcd_int(root, FIELDS[i]) != (rc > 0 ? n : 0)) abort();
        (void)lk_etcd_int_field(cJSON_GetObjectItemCaseSensitive(root, "header"),
                                FIELDS[i], &n);
        (void)lk_etcd_int_field(cJSON_GetObjectItemCaseSensitive(root, "result"),
                                FIELDS[i], &n);
    }
    walk_range(root);
    for (int i = 0; i <= 2; i++) walk_range(lk_etcd_txn_range(root, i));
    (void)cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "succeeded"));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    long status = STATUSES[data[0] % (sizeof STATUSES / sizeof *STATUSES)];
    size_t msg_size = MSG_SIZES[(data[0] >> 4) % (sizeof MSG_SIZES / sizeof *MSG_SIZES)];
    /* the body in a buffer of its exact size (no NUL after it) */
    size_t len = size - 1;
    char *body = malloc(len ? len : 1);
    if (!body) return 0;
    memcpy(body, data + 1, len);
    char msg[4096 + 1];
    /* the derived status, then 200 (so that every body reaches the decoders) */
    for (int pass = 0; pass < 2; pass++) {
        long st = pass ? 200 : status;
        if (pass && status == 200) break;
        int grpc = -7;
        memset(msg, 'x', sizeof msg);
        cJSON *root = lk_etcd_parse(body, len, st, msg, msg_size, &grpc);
        if (root) {
            if (st != 200 || !cJSON_IsObject(root)) abort();
            if (grpc != -1) abort();
            walk_answer(root);
            cJSON_Delete(root);
        } else {
            if (memchr(msg, '\0', msg_size) == NULL) abort();  /* terminated */
            if (msg[msg_size] != 'x') abort();                 /* and inside */
        }
    }
    /* the typed decoders (what io.c hands the engine): each answers OK with
     * a struct that frees cleanly, or says why in a terminated msg */
    {
        int grpc, rc[5];
        lk_range_resp range;
        lk_txn_resp txn;
        lk_lease_resp lease;
        lk_plain_resp plain;
        lk_watch_resp watch;
        rc[0] = lk_gw_range(body, len, status, &range, msg, msg_size, &grpc);
        for (size_t i = 0; rc[0] == LK_GW_OK && i < range.n; i++) {
            check_buf(&range.kvs[i].key);
            check_buf(&range.kvs[i].value);
        }
        lk_range_resp_free(&range);
        rc[1] = lk_gw_txn(body, len, status, &txn, msg, msg_size, &grpc);
        if (rc[1] == LK_GW_OK && txn.n && !lk_txn_range(&txn, txn.n - 1)) abort();
        lk_txn_resp_free(&txn);
        rc[2] = lk_gw_lease(body, len, status, &lease, msg, msg_size, &grpc);
        if (rc[2] == LK_GW_OK && (lease.id < 0 || lease.ttl < 0)) abort();
        rc[3] = lk_gw_plain(body, len, status, &plain, msg, msg_size, &grpc);
        rc[4] = lk_gw_watch(body, len, status, &watch, msg, msg_size, &grpc);
        if (rc[4] == LK_GW_OK && memchr(watch.cancel_reason, '\0', sizeof watch.cancel_reason) == NULL)
            abort();
        lk_watch_resp_free(&watch);
        for (int i = 0; i < 5; i++)
            if (rc[i] != LK_GW_OK && rc[i] != LK_GW_REFUSED && rc[i] != LK_GW_MALFORMED) abort();
    }
    /* the same body as a NULL pointer with no length: "no body" */
    int grpc;
    if (lk_etcd_parse(NULL, 0, status, msg, sizeof msg, &grpc)) abort();
    free(body);
    return 0;
}

#include "transport/gateway.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/b64.h"

int lk_etcd_prefix_end(lk_buf *out, lk_bytes prefix)
{
    size_t n = prefix.n;
    while (n > 0 && (unsigned char)prefix.p[n - 1] == 0xff) n--;
    if (n == 0) return -1;
    if (lk_buf_append(out, prefix.p, n)) return -1;
    out->data[n - 1] = (char)((unsigned char)out->data[n - 1] + 1);
    return 0;
}

/* Appends "name":"<base64 of b>". */
static int field64(lk_buf *out, const char *name, lk_bytes b)
{
    if (lk_buf_printf(out, "\"%s\":\"", name)) return -1;
    if (lk_b64_encode(out, b.p, b.n)) return -1;
    return lk_buf_puts(out, "\"");
}

/* Appends "key":..,"range_end":.. covering every key under dir. */
static int dir_range(lk_buf *out, lk_bytes dir)
{
    lk_buf end = {0};
    int rc = -1;
    if (lk_etcd_prefix_end(&end, dir)) goto fail;
    if (field64(out, "key", dir) || lk_buf_puts(out, ",")) goto fail;
    if (field64(out, "range_end", (lk_bytes){end.data, end.len})) goto fail;
    rc = 0;
fail:
    lk_buf_free(&end);
    return rc;
}

int lk_etcd_grant_body(lk_buf *out, int64_t ttl)
{
    return lk_buf_printf(out, "{\"TTL\":\"%" PRId64 "\"}", ttl);
}

/* Appends s as a JSON string (the names and passwords of users are text
 * that may need escaping; keys and values go as base64). */
static int json_string(lk_buf *out, const char *s)
{
    if (lk_buf_puts(out, "\"")) return -1;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        int rc = *p == '"' || *p == '\\' ? lk_buf_printf(out, "\\%c", *p)
               : *p < 0x20 ? lk_buf_printf(out, "\\u%04x", *p)
               : lk_buf_append(out, (const char *)p, 1);
        if (rc) return -1;
    }
    return lk_buf_puts(out, "\"");
}

int lk_etcd_auth_body(lk_buf *out, const char *user, const char *password)
{
    return lk_buf_puts(out, "{\"name\":") || json_string(out, user) ||
           lk_buf_puts(out, ",\"password\":") || json_string(out, password) ||
           lk_buf_puts(out, "}");
}

int lk_etcd_lease_body(lk_buf *out, int64_t lease)
{
    return lk_buf_printf(out, "{\"ID\":\"%" PRId64 "\"}", lease);
}

int lk_etcd_key_body(lk_buf *out, lk_bytes key)
{
    return lk_buf_puts(out, "{") || field64(out, "key", key) ||
           lk_buf_puts(out, "}");
}

int lk_etcd_dir_body(lk_buf *out, lk_bytes dir)
{
    return lk_buf_puts(out, "{") || dir_range(out, dir) || lk_buf_puts(out, "}");
}

int lk_etcd_owner_body(lk_buf *out, lk_bytes dir)
{
    return lk_buf_puts(out, "{") || dir_range(out, dir) ||
           lk_buf_puts(out, ",\"sort_order\":\"ASCEND\",\"sort_target\":"
                            "\"CREATE\",\"limit\":\"1\"}");
}

static int put_op(lk_buf *out, lk_bytes key, lk_bytes value, int64_t lease)
{
    return lk_buf_puts(out, "{\"request_put\":{") ||
           field64(out, "key", key) || lk_buf_puts(out, ",") ||
           field64(out, "value", value) ||
           lk_buf_printf(out, ",\"lease\":\"%" PRId64 "\"}}", lease);
}

/* The owner of dir: the lowest create_revision (keys only). */
static int owner_op(lk_buf *out, lk_bytes dir)
{
    return lk_buf_puts(out, "{\"request_range\":{") || dir_range(out, dir) ||
           lk_buf_puts(out, ",\"sort_order\":\"ASCEND\",\"sort_target\":"
                            "\"CREATE\",\"limit\":\"1\",\"keys_only\":true}}");
}

int lk_etcd_try_body(lk_buf *out, lk_bytes key, lk_bytes value,
                     int64_t lease, lk_bytes dir)
{
    /* nobody under dir (no create_revision but 0): take it with one put,
     * as cheap for etcd as a plain put-if-absent; else read our own key
     * (an earlier try's?) and the owner, and queue in a second txn */
    return lk_buf_puts(out, "{\"compare\":[{") || dir_range(out, dir) ||
           lk_buf_puts(out, ",\"target\":\"CREATE\",\"result\":\"EQUAL\","
                            "\"create_revision\":\"0\"}],\"success\":[") ||
           put_op(out, key, value, lease) ||
           lk_buf_puts(out, "],\"failure\":[{\"request_range\":{") ||
           field64(out, "key", key) || lk_buf_puts(out, "}},") ||
           owner_op(out, dir) || lk_buf_puts(out, "]}");
}

int lk_etcd_acquire_body(lk_buf *out, lk_bytes key, lk_bytes value,
                         int64_t lease, lk_bytes dir)
{
    /* the common case, a new key: put-if-absent, and the owner; the key's
     * create_revision is then the txn's revision. A key left from an
     * earlier try of ours: read it (and the owner). The value goes only
     * once into the request, which must stay under etcd's size limit. */
    return lk_buf_puts(out, "{\"compare\":[{") || field64(out, "key", key) ||
           lk_buf_puts(out, ",\"target\":\"CREATE\",\"result\":\"EQUAL\","
                            "\"create_revision\":\"0\"}],\"success\":[") ||
           put_op(out, key, value, lease) || lk_buf_puts(out, ",") ||
           owner_op(out, dir) || lk_buf_puts(out, "],\"failure\":[") ||
           lk_buf_puts(out, "{\"request_range\":{") || field64(out, "key", key) ||
           lk_buf_puts(out, "}},") || owner_op(out, dir) || lk_buf_puts(out, "]}");
}

int lk_etcd_sem_acquire_body(lk_buf *out, lk_bytes key, lk_bytes value, int64_t lease,
                             lk_bytes dir, lk_bytes limit_key, int limit)
{
    char n[16];
    snprintf(n, sizeof n, "%d", limit);
    lk_bytes nb = {n, strlen(n)};
    return lk_buf_puts(out, "{\"compare\":[{") || field64(out, "key", key) ||
           lk_buf_puts(out, ",\"target\":\"CREATE\",\"result\":\"EQUAL\","
                            "\"create_revision\":\"0\"}],\"success\":[") ||
           put_op(out, key, value, lease) || lk_buf_puts(out, ",") ||
           owner_op(out, dir) || lk_buf_puts(out, ",") || put_op(out, limit_key, nb, lease) ||
           lk_buf_puts(out, "],\"failure\":[") ||
           lk_buf_puts(out, "{\"request_range\":{") || field64(out, "key", key) ||
           lk_buf_puts(out, "}},") || owner_op(out, dir) || lk_buf_puts(out, ",") ||
           put_op(out, limit_key, nb, lease) || lk_buf_puts(out, "]}");
}

/* The keys under dir created before my_rev (keys only), key itself, and
 * the keys under limit_dir. A lock reads only the newest of the first (its
 * predecessor) and counts the last; a semaphore reads them all, oldest
 * first, and the limits' values. */
static int check_txn(lk_buf *out, lk_bytes dir, int64_t my_rev, lk_bytes key,
                     lk_bytes limit_dir, int semaphore)
{
    return lk_buf_puts(out, "{\"success\":[{\"request_range\":{") ||
           dir_range(out, dir) ||
           lk_buf_printf(out, semaphore
                              ? ",\"sort_order\":\"ASCEND\",\"sort_target\":\"CREATE\","
                                "\"keys_only\":true,\"max_create_revision\":\"%" PRId64 "\"}},"
                              : ",\"sort_order\":\"DESCEND\",\"sort_target\":\"CREATE\","
                                "\"limit\":\"1\",\"keys_only\":true,"
                                "\"max_create_revision\":\"%" PRId64 "\"}},",
                         my_rev - 1) ||
           lk_buf_puts(out, "{\"request_range\":{") ||
           field64(out, "key", key) ||
           lk_buf_puts(out, ",\"keys_only\":true}},{\"request_range\":{") ||
           dir_range(out, limit_dir) ||
           lk_buf_puts(out, semaphore ? "}}]}" : ",\"count_only\":true}}]}");
}

int lk_etcd_check_body(lk_buf *out, lk_bytes dir, int64_t my_rev, lk_bytes key,
                       lk_bytes limit_dir)
{
    return check_txn(out, dir, my_rev, key, limit_dir, 0);
}

int lk_etcd_sem_check_body(lk_buf *out, lk_bytes dir, int64_t my_rev, lk_bytes key,
                           lk_bytes limit_dir)
{
    return check_txn(out, dir, my_rev, key, limit_dir, 1);
}

int lk_etcd_delete2_body(lk_buf *out, lk_bytes key, lk_bytes key2)
{
    return lk_buf_puts(out, "{\"success\":[{\"request_delete_range\":{") ||
           field64(out, "key", key) || lk_buf_puts(out, "}},{\"request_delete_range\":{") ||
           field64(out, "key", key2) || lk_buf_puts(out, "}}]}");
}

int lk_etcd_set_body(lk_buf *out, lk_bytes key, lk_bytes value,
                     int64_t lease, int64_t token)
{
    return lk_buf_puts(out, "{\"compare\":[{") ||
           field64(out, "key", key) ||
           lk_buf_printf(out, ",\"target\":\"CREATE\",\"result\":\"EQUAL\","
                              "\"create_revision\":\"%" PRId64 "\"}],"
                              "\"success\":[", token) ||
           put_op(out, key, value, lease) || lk_buf_puts(out, "]}");
}

int lk_etcd_guarded_body(lk_buf *out, lk_bytes guard, int64_t token, lk_bytes key,
                         const lk_bytes *value)
{
    return lk_buf_puts(out, "{\"compare\":[{") || field64(out, "key", guard) ||
           lk_buf_printf(out, ",\"target\":\"CREATE\",\"result\":\"EQUAL\","
                              "\"create_revision\":\"%" PRId64 "\"}],"
                              "\"success\":[", token) ||
           (value ? put_op(out, key, *value, 0)
                  : lk_buf_puts(out, "{\"request_delete_range\":{") ||
                    field64(out, "key", key) || lk_buf_puts(out, "}}")) ||
           lk_buf_puts(out, "]}");
}

int lk_etcd_release_body(lk_buf *out, lk_bytes key, int64_t token, lk_bytes mark,
                         int64_t lease)
{
    return lk_buf_puts(out, "{\"compare\":[{") || field64(out, "key", key) ||
           lk_buf_printf(out, ",\"target\":\"CREATE\",\"result\":\"EQUAL\","
                              "\"create_revision\":\"%" PRId64 "\"}],"
                              "\"success\":[", token) ||
           put_op(out, mark, key, lease) ||
           lk_buf_puts(out, ",{\"request_delete_range\":{") || field64(out, "key", key) ||
           lk_buf_puts(out, "}}]}");
}

int lk_etcd_delete_if_body(lk_buf *out, lk_bytes key, int64_t create_rev)
{
    return lk_buf_puts(out, "{\"compare\":[{") || field64(out, "key", key) ||
           lk_buf_printf(out, ",\"target\":\"CREATE\",\"result\":\"EQUAL\","
                              "\"create_revision\":\"%" PRId64 "\"}],"
                              "\"success\":[{\"request_delete_range\":{", create_rev) ||
           field64(out, "key", key) || lk_buf_puts(out, "}}]}");
}

int lk_etcd_put_body(lk_buf *out, lk_bytes key, lk_bytes value, int64_t lease)
{
    return lk_buf_puts(out, "{") || field64(out, "key", key) ||
           lk_buf_puts(out, ",") || field64(out, "value", value) ||
           (lease && lk_buf_printf(out, ",\"lease\":\"%" PRId64 "\"", lease)) ||
           lk_buf_puts(out, "}");
}

int lk_etcd_count_body(lk_buf *out, lk_bytes key)
{
    return lk_buf_puts(out, "{") || field64(out, "key", key) ||
           lk_buf_puts(out, ",\"count_only\":true}");
}

int lk_etcd_watch_body(lk_buf *out, lk_bytes dir, int64_t start_rev)
{
    return lk_buf_puts(out, "{\"create_request\":{") || dir_range(out, dir) ||
           lk_buf_printf(out, ",\"start_revision\":\"%" PRId64 "\","
                              "\"progress_notify\":true,\"fragment\":true}}",
                         start_rev);
}

int lk_etcd_int_field(const cJSON *obj, const char *field, int64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, field);
    *out = 0;
    if (!v) return 0;
    /* the gateway sends int64 as decimal strings: nothing else is taken
     * (no number through a double, no sign: every field we read, IDs,
     * revisions, TTLs, is positive; no spaces, no trailing garbage, no
     * overflow) */
    if (!cJSON_IsString(v) || !v->valuestring) return -1;
    const char *p = v->valuestring;
    if (*p < '0' || *p > '9') return -1;
    char *end;
    errno = 0;
    long long n = strtoll(p, &end, 10);
    if (errno || *end) return -1;
    *out = (int64_t)n;
    return 1;
}

int64_t lk_etcd_int(const cJSON *obj, const char *field)
{
    int64_t n;
    return lk_etcd_int_field(obj, field, &n) > 0 ? n : 0;
}

int lk_etcd_kvs(const cJSON *answer, const cJSON **kvs)
{
    *kvs = cJSON_GetObjectItemCaseSensitive(answer, "kvs");
    if (!*kvs) return 0;      /* the gateway omits an empty list */
    return cJSON_IsArray(*kvs) ? 0 : -1;
}

int64_t lk_etcd_revision(const cJSON *answer)
{
    return lk_etcd_int(cJSON_GetObjectItemCaseSensitive(answer, "header"),
                       "revision");
}

/* Decodes base64 field `name` of obj into out (empty when absent). */
static int decode_field(const cJSON *obj, const char *name, lk_buf *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    lk_buf_reset(out);
    if (!v) return lk_buf_append(out, "", 0);
    if (!cJSON_IsString(v) || !v->valuestring) return -1;
    return lk_b64_decode(out, v->valuestring, strlen(v->valuestring));
}

int lk_etcd_kv(const cJSON *item, lk_kv *kv)
{
    if (!cJSON_IsObject(item)) return -1;
    if (decode_field(item, "key", &kv->key)) return -1;
    if (decode_field(item, "value", &kv->value)) return -1;
    if (lk_etcd_int_field(item, "create_revision", &kv->create_rev) < 0 ||
        lk_etcd_int_field(item, "mod_revision", &kv->mod_rev) < 0 ||
        lk_etcd_int_field(item, "lease", &kv->lease) < 0)
        return -1;
    return 0;
}

void lk_etcd_kv_free(lk_kv *kv)
{
    lk_buf_free(&kv->key);
    lk_buf_free(&kv->value);
}

const cJSON *lk_etcd_first_kv(const cJSON *range_answer)
{
    const cJSON *kvs = cJSON_GetObjectItemCaseSensitive(range_answer, "kvs");
    return cJSON_IsArray(kvs) ? cJSON_GetArrayItem(kvs, 0) : NULL;
}

const cJSON *lk_etcd_txn_range(const cJSON *txn_answer, int n)
{
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(txn_answer, "responses");
    const cJSON *r = cJSON_IsArray(rs) ? cJSON_GetArrayItem(rs, n) : NULL;
    return r ? cJSON_GetObjectItemCaseSensitive(r, "response_range") : NULL;
}

cJSON *lk_etcd_parse(const char *body, size_t len, long http_status,
                     char *msg, size_t msg_size, int *grpc_code)
{
    *grpc_code = -1;
    cJSON *root = body && len ? cJSON_ParseWithLength(body, len) : NULL;
    if (root && cJSON_IsObject(root)) {
        const cJSON *err = cJSON_GetObjectItemCaseSensitive(root, "error");
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "message");
        if (!err && http_status == 200) return root;
        const cJSON *code = cJSON_GetObjectItemCaseSensitive(root, "code");
        if (cJSON_IsNumber(code)) *grpc_code = code->valueint;
        const char *text = cJSON_IsString(m) ? m->valuestring
                         : cJSON_IsString(err) ? err->valuestring : NULL;
        snprintf(msg, msg_size, "etcd: %s (HTTP %ld)",
                 text ? text : "error without message", http_status);
        cJSON_Delete(root);
        return NULL;
    }
    cJSON_Delete(root);
    snprintf(msg, msg_size, "etcd gateway answered HTTP %ld with %s",
             http_status, len ? "a body that is not a JSON object" : "no body");
    return NULL;
}

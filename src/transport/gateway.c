#include "transport/gateway.h"
#include "transport/gateway_json.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/b64.h"

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

/* Appends "key":.. and, for a prefix, "range_end":.. covering every key
 * that starts with key. */
static int key_range(lk_buf *out, lk_bytes key, int prefix)
{
    return prefix ? dir_range(out, key) : field64(out, "key", key);
}

/* The fields of a range request (inside its braces). */
static int range_fields(lk_buf *out, const lk_range_req *r)
{
    if (key_range(out, r->key, r->prefix)) return -1;
    if (r->sort != LK_SORT_NONE &&
        lk_buf_printf(out, ",\"sort_order\":\"%s\",\"sort_target\":\"CREATE\"",
                      r->sort == LK_SORT_ASCEND ? "ASCEND" : "DESCEND"))
        return -1;
    if (r->limit && lk_buf_printf(out, ",\"limit\":\"%" PRId64 "\"", r->limit)) return -1;
    if (r->keys_only && lk_buf_puts(out, ",\"keys_only\":true")) return -1;
    if (r->count_only && lk_buf_puts(out, ",\"count_only\":true")) return -1;
    if (r->max_create_rev &&
        lk_buf_printf(out, ",\"max_create_revision\":\"%" PRId64 "\"", r->max_create_rev))
        return -1;
    return 0;
}

static int put_fields(lk_buf *out, const lk_put_req *p)
{
    return field64(out, "key", p->key) || lk_buf_puts(out, ",") ||
           field64(out, "value", p->value) ||
           (p->lease && lk_buf_printf(out, ",\"lease\":\"%" PRId64 "\"", p->lease));
}

int lk_gw_range_body(lk_buf *out, const lk_range_req *r)
{
    return lk_buf_puts(out, "{") || range_fields(out, r) || lk_buf_puts(out, "}");
}

int lk_gw_put_body(lk_buf *out, const lk_put_req *p)
{
    return lk_buf_puts(out, "{") || put_fields(out, p) || lk_buf_puts(out, "}");
}

int lk_gw_delete_body(lk_buf *out, const lk_delete_req *d)
{
    return lk_buf_puts(out, "{") || field64(out, "key", d->key) || lk_buf_puts(out, "}");
}

/* One operation of a txn: {"request_...":{...}}. */
static int op_body(lk_buf *out, const lk_op *o)
{
    switch (o->kind) {
    case LK_OP_RANGE:
        return lk_buf_puts(out, "{\"request_range\":{") || range_fields(out, &o->range) ||
               lk_buf_puts(out, "}}");
    case LK_OP_PUT:
        return lk_buf_puts(out, "{\"request_put\":{") || put_fields(out, &o->put) ||
               lk_buf_puts(out, "}}");
    case LK_OP_DELETE:
        return lk_buf_puts(out, "{\"request_delete_range\":{") ||
               field64(out, "key", o->del.key) || lk_buf_puts(out, "}}");
    }
    return -1;
}

static int ops(lk_buf *out, const char *name, const lk_op *op, size_t n)
{
    if (lk_buf_printf(out, "\"%s\":[", name)) return -1;
    for (size_t i = 0; i < n; i++)
        if ((i && lk_buf_puts(out, ",")) || op_body(out, &op[i])) return -1;
    return lk_buf_puts(out, "]");
}

int lk_gw_txn_body(lk_buf *out, const lk_txn_req *t)
{
    if (lk_buf_puts(out, "{")) return -1;
    if (t->n_compare) {
        if (lk_buf_puts(out, "\"compare\":[")) return -1;
        for (size_t i = 0; i < t->n_compare; i++) {
            const lk_compare *c = &t->compare[i];
            if (lk_buf_puts(out, i ? ",{" : "{") || key_range(out, c->key, c->prefix) ||
                lk_buf_printf(out, ",\"target\":\"CREATE\",\"result\":\"EQUAL\","
                                   "\"create_revision\":\"%" PRId64 "\"}", c->create_rev))
                return -1;
        }
        if (lk_buf_puts(out, "],")) return -1;
    }
    if (ops(out, "success", t->success, t->n_success)) return -1;
    if (t->n_failure && (lk_buf_puts(out, ",") || ops(out, "failure", t->failure, t->n_failure)))
        return -1;
    return lk_buf_puts(out, "}");
}

int lk_gw_watch_body(lk_buf *out, const lk_watch_req *w)
{
    return lk_buf_puts(out, "{\"create_request\":{") || key_range(out, w->key, w->prefix) ||
           lk_buf_printf(out, ",\"start_revision\":\"%" PRId64 "\","
                              "\"progress_notify\":true,\"fragment\":true}}",
                         w->start_rev);
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

/* ---- typed answers ---- */

/* Says what was malformed; LK_GW_MALFORMED. */
static int malformed(char *msg, size_t msg_size, const char *what)
{
    snprintf(msg, msg_size, "etcd gateway sent a malformed answer: %s", what);
    return LK_GW_MALFORMED;
}

/* A header's revision: absent is 0, malformed is an error. */
static int header_rev(const cJSON *obj, int64_t *rev)
{
    return lk_etcd_int_field(cJSON_GetObjectItemCaseSensitive(obj, "header"), "revision", rev) < 0
           ? -1 : 0;
}

/* A range answer object (a Range's root, or a txn's response_range). */
static int decode_range(const cJSON *obj, lk_range_resp *out, char *msg, size_t msg_size)
{
    const cJSON *kvs, *item;
    *out = (lk_range_resp){0};
    if (!cJSON_IsObject(obj)) return malformed(msg, msg_size, "a range that is not an object");
    if (header_rev(obj, &out->revision) || lk_etcd_int_field(obj, "count", &out->count) < 0)
        return malformed(msg, msg_size, "a revision or count that is not a decimal string");
    if (lk_etcd_kvs(obj, &kvs)) return malformed(msg, msg_size, "kvs that are not a list");
    int n = kvs ? cJSON_GetArraySize(kvs) : 0;
    if (n == 0) return LK_GW_OK;
    out->kvs = calloc((size_t)n, sizeof *out->kvs);
    if (!out->kvs) return malformed(msg, msg_size, "no memory for its keys");
    cJSON_ArrayForEach(item, kvs) {
        if (lk_etcd_kv(item, &out->kvs[out->n])) {
            lk_etcd_kv_free(&out->kvs[out->n]);
            lk_range_resp_free(out);
            return malformed(msg, msg_size, "a key-value with a bad field (base64, revision or lease)");
        }
        out->n++;
    }
    return LK_GW_OK;
}

/* Parses body as an answer; NULL with LK_GW_REFUSED's msg and code. */
static cJSON *parse(const char *body, size_t len, long status, char *msg, size_t msg_size,
                    int *grpc_code)
{
    return lk_etcd_parse(body, len, status, msg, msg_size, grpc_code);
}

int lk_gw_range(const char *body, size_t len, long status, lk_range_resp *out,
                char *msg, size_t msg_size, int *grpc_code)
{
    *out = (lk_range_resp){0};
    cJSON *root = parse(body, len, status, msg, msg_size, grpc_code);
    if (!root) return LK_GW_REFUSED;
    int rc = decode_range(root, out, msg, msg_size);
    cJSON_Delete(root);
    return rc;
}

int lk_gw_txn(const char *body, size_t len, long status, lk_txn_resp *out,
              char *msg, size_t msg_size, int *grpc_code)
{
    *out = (lk_txn_resp){0};
    cJSON *root = parse(body, len, status, msg, msg_size, grpc_code);
    if (!root) return LK_GW_REFUSED;
    int rc = LK_GW_OK;
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "responses"), *item;
    const cJSON *ok = cJSON_GetObjectItemCaseSensitive(root, "succeeded");
    if (header_rev(root, &out->revision)) {
        rc = malformed(msg, msg_size, "a revision that is not a decimal string");
        goto done;
    }
    if (ok && !cJSON_IsBool(ok)) {
        rc = malformed(msg, msg_size, "succeeded that is not a boolean");
        goto done;
    }
    out->succeeded = cJSON_IsTrue(ok);
    if (rs && !cJSON_IsArray(rs)) {
        rc = malformed(msg, msg_size, "responses that are not a list");
        goto done;
    }
    int n = rs ? cJSON_GetArraySize(rs) : 0;
    if (n && !(out->ranges = calloc((size_t)n, sizeof *out->ranges))) {
        rc = malformed(msg, msg_size, "no memory for its responses");
        goto done;
    }
    cJSON_ArrayForEach(item, rs) {
        if (!cJSON_IsObject(item)) {
            rc = malformed(msg, msg_size, "a response that is not an object");
            goto done;
        }
        /* a put's or a delete's response reads as an empty range */
        const cJSON *range = cJSON_GetObjectItemCaseSensitive(item, "response_range");
        if (range && (rc = decode_range(range, &out->ranges[out->n], msg, msg_size)) != LK_GW_OK)
            goto done;
        out->n++;
    }
done:
    if (rc != LK_GW_OK) lk_txn_resp_free(out);
    cJSON_Delete(root);
    return rc;
}

int lk_gw_lease(const char *body, size_t len, long status, lk_lease_resp *out,
                char *msg, size_t msg_size, int *grpc_code)
{
    *out = (lk_lease_resp){0};
    cJSON *root = parse(body, len, status, msg, msg_size, grpc_code);
    if (!root) return LK_GW_REFUSED;
    const cJSON *result = cJSON_GetObjectItemCaseSensitive(root, "result");
    const cJSON *obj = cJSON_IsObject(result) ? result : root;
    int rc = header_rev(obj, &out->revision) || lk_etcd_int_field(obj, "ID", &out->id) < 0 ||
             lk_etcd_int_field(obj, "TTL", &out->ttl) < 0
             ? malformed(msg, msg_size, "a lease ID, TTL or revision that is not a decimal string")
             : LK_GW_OK;
    if (rc != LK_GW_OK) *out = (lk_lease_resp){0};
    cJSON_Delete(root);
    return rc;
}

int lk_gw_plain(const char *body, size_t len, long status, lk_plain_resp *out,
                char *msg, size_t msg_size, int *grpc_code)
{
    *out = (lk_plain_resp){0};
    cJSON *root = parse(body, len, status, msg, msg_size, grpc_code);
    if (!root) return LK_GW_REFUSED;
    int rc = header_rev(root, &out->revision)
             ? malformed(msg, msg_size, "a revision that is not a decimal string") : LK_GW_OK;
    cJSON_Delete(root);
    return rc;
}

int lk_gw_watch(const char *line, size_t len, long status, lk_watch_resp *out,
                char *msg, size_t msg_size, int *grpc_code)
{
    *out = (lk_watch_resp){0};
    *grpc_code = -1;
    cJSON *root = cJSON_ParseWithLength(line, len);
    const cJSON *res = cJSON_GetObjectItemCaseSensitive(root, "result");
    if (!cJSON_IsObject(res)) {  /* {"error": ...} or garbage */
        cJSON_Delete(root);
        cJSON_Delete(lk_etcd_parse(line, len, status ? status : 500, msg, msg_size, grpc_code));
        return LK_GW_REFUSED;
    }
    int rc = LK_GW_OK;
    const cJSON *events = cJSON_GetObjectItemCaseSensitive(res, "events"), *ev;
    if (header_rev(res, &out->revision) ||
        lk_etcd_int_field(res, "compact_revision", &out->compact_revision) < 0) {
        rc = malformed(msg, msg_size, "a revision that is not a decimal string");
        goto done;
    }
    out->created = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(res, "created"));
    out->canceled = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(res, "canceled"));
    if (out->canceled) {
        const cJSON *why = cJSON_GetObjectItemCaseSensitive(res, "cancel_reason");
        snprintf(out->cancel_reason, sizeof out->cancel_reason, "%s",
                 cJSON_IsString(why) ? why->valuestring : "");
    }
    if (events && !cJSON_IsArray(events)) {
        rc = malformed(msg, msg_size, "events that are not a list");
        goto done;
    }
    int n = events ? cJSON_GetArraySize(events) : 0;
    if (n && !(out->events = calloc((size_t)n, sizeof *out->events))) {
        rc = malformed(msg, msg_size, "no memory for its events");
        goto done;
    }
    cJSON_ArrayForEach(ev, events) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(ev, "type");
        lk_watch_event *e = &out->events[out->n];
        if (lk_etcd_kv(cJSON_GetObjectItemCaseSensitive(ev, "kv"), &e->kv)) {
            lk_etcd_kv_free(&e->kv);
            rc = malformed(msg, msg_size, "an event whose key-value has a bad field");
            goto done;
        }
        e->deleted = cJSON_IsString(type) && strcmp(type->valuestring, "DELETE") == 0;
        out->n++;
    }
done:
    if (rc != LK_GW_OK) lk_watch_resp_free(out);
    cJSON_Delete(root);
    return rc;
}

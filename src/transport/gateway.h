/* etcd's v3 HTTP/JSON gateway: request bodies and answer parsing (cJSON).
 * Keys and values travel as base64; int64 fields (lease IDs, revisions)
 * travel as JSON strings and are read with strtoll, never through a double. */
#ifndef LK_GATEWAY_H
#define LK_GATEWAY_H

#include <stddef.h>
#include <stdint.h>

#include <cJSON.h>

#include "base/buf.h"

/* Gateway paths. */
#define LK_PATH_GRANT     "/v3/lease/grant"
#define LK_PATH_KEEPALIVE "/v3/lease/keepalive"
#define LK_PATH_REVOKE    "/v3/lease/revoke"
#define LK_PATH_TXN       "/v3/kv/txn"
#define LK_PATH_RANGE     "/v3/kv/range"
#define LK_PATH_DELETE    "/v3/kv/deleterange"
#define LK_PATH_WATCH     "/v3/watch"
#define LK_PATH_PUT       "/v3/kv/put"
#define LK_PATH_AUTH      "/v3/auth/authenticate"

/* Smallest key greater than every key that starts with prefix (etcd's
 * "prefix end"); written to out. 0 or -1 (no memory, or all bytes 0xff). */
int lk_etcd_prefix_end(lk_buf *out, lk_bytes prefix);

/* Request bodies. Each appends to out and returns 0, or -1 (no memory). */
int lk_etcd_grant_body(lk_buf *out, int64_t ttl);
/* {"name":..,"password":..}; the caller wipes out once it is sent. */
int lk_etcd_auth_body(lk_buf *out, const char *user, const char *password);
int lk_etcd_lease_body(lk_buf *out, int64_t lease);   /* keepalive, revoke */
/* {"key":..}: a delete, or a range, of that one key. */
int lk_etcd_key_body(lk_buf *out, lk_bytes key);
/* Range of every key under dir, with values (a watch's snapshot). */
int lk_etcd_dir_body(lk_buf *out, lk_bytes dir);
/* Range of the lowest create_revision under dir (the owner), with values. */
int lk_etcd_owner_body(lk_buf *out, lk_bytes dir);
/* Txn: if no key exists under dir, put key=value on lease (succeeded: the
 * key is the owner, created at the answer's revision); else read key (with
 * its value) and the owner of dir (responses: key, owner). */
int lk_etcd_try_body(lk_buf *out, lk_bytes key, lk_bytes value,
                     int64_t lease, lk_bytes dir);
/* Txn: put key=value on lease if key is absent, and read the owner of dir
 * (responses: put, owner; keys only); else read key (with its value) and
 * the owner (responses: key, owner). */
int lk_etcd_acquire_body(lk_buf *out, lk_bytes key, lk_bytes value,
                         int64_t lease, lk_bytes dir);
/* A semaphore's acquire: lk_etcd_acquire_body's txn, with a put of
 * limit_key = limit (decimal, on lease) as a third operation either way. */
int lk_etcd_sem_acquire_body(lk_buf *out, lk_bytes key, lk_bytes value, int64_t lease,
                             lk_bytes dir, lk_bytes limit_key, int limit);
/* Txn: the newest key under dir created before my_rev (my predecessor),
 * key itself (does it still exist?), keys only; and how many keys are
 * under limit_dir (count only: a semaphore's contenders there?). */
int lk_etcd_check_body(lk_buf *out, lk_bytes dir, int64_t my_rev, lk_bytes key,
                       lk_bytes limit_dir);
/* A semaphore's check, txn: every key under dir created before my_rev
 * (oldest first, keys only), key itself, and every key under limit_dir
 * (the contenders' limits, with values). */
int lk_etcd_sem_check_body(lk_buf *out, lk_bytes dir, int64_t my_rev, lk_bytes key,
                           lk_bytes limit_dir);
/* Txn: delete key and key2 (a semaphore contender and its limit). */
int lk_etcd_delete2_body(lk_buf *out, lk_bytes key, lk_bytes key2);
/* Txn: put key=value on lease if key's create_revision is still token. */
int lk_etcd_set_body(lk_buf *out, lk_bytes key, lk_bytes value,
                     int64_t lease, int64_t token);
/* Txn: if guard's create_revision is still token, put key=value (no
 * lease), or delete key when value is NULL (a lock's guarded write). */
int lk_etcd_guarded_body(lk_buf *out, lk_bytes guard, int64_t token, lk_bytes key,
                         const lk_bytes *value);
/* Txn: if key's create_revision is still token, put mark = key (on lease)
 * and delete key: a clean release that waiters can tell (lock-delay). */
int lk_etcd_release_body(lk_buf *out, lk_bytes key, int64_t token, lk_bytes mark,
                         int64_t lease);
/* Txn: delete key if its create_revision is still create_rev. */
int lk_etcd_delete_if_body(lk_buf *out, lk_bytes key, int64_t create_rev);
/* A plain put of key = value, on lease (0: none). */
int lk_etcd_put_body(lk_buf *out, lk_bytes key, lk_bytes value, int64_t lease);
/* A range that counts key (count_only): no data, only etcd's revision. */
int lk_etcd_count_body(lk_buf *out, lk_bytes key);
/* Watch create request for every key under dir from start_rev (0: now),
 * with progress notifications, and large batches of events split into
 * fragments (so no stream line outgrows LK_MAX_ANSWER). */
int lk_etcd_watch_body(lk_buf *out, lk_bytes dir, int64_t start_rev);

/* An int64 field, sent by the gateway as a decimal JSON string: 1 and *out
 * set, 0 when absent (*out = 0: the gateway omits zero values), -1 when
 * malformed (anything but a plain unsigned decimal string in range: every
 * int64 we read is an ID, a revision or a TTL, never negative). */
int lk_etcd_int_field(const cJSON *obj, const char *field, int64_t *out);
/* The same, 0 when absent or malformed. */
int64_t lk_etcd_int(const cJSON *obj, const char *field);
/* An answer's "kvs": *kvs NULL when absent (none). 0, or -1 when it is
 * there but not a list. */
int lk_etcd_kvs(const cJSON *answer, const cJSON **kvs);
/* The header revision of an answer object, 0 when absent. */
int64_t lk_etcd_revision(const cJSON *answer);

/* One key-value from an answer, key and value decoded. */
typedef struct lk_kv {
    lk_buf key;
    lk_buf value;
    int64_t create_rev;
    int64_t mod_rev;
    int64_t lease;
} lk_kv;
/* Decodes a "kvs" element into kv (whose bufs it resets first). 0, or -1 on
 * malformed base64 or no memory. */
int lk_etcd_kv(const cJSON *item, lk_kv *kv);
void lk_etcd_kv_free(lk_kv *kv);

/* First element of "kvs" in a range answer, or NULL. */
const cJSON *lk_etcd_first_kv(const cJSON *range_answer);
/* The n-th response_range of a txn answer, or NULL. */
const cJSON *lk_etcd_txn_range(const cJSON *txn_answer, int n);

/* Parses an HTTP answer. Returns the root object, or NULL with msg filled
 * (etcd's own error message when it sent one) and *grpc_code set (-1 when
 * the answer was not an etcd error at all). */
cJSON *lk_etcd_parse(const char *body, size_t len, long http_status,
                     char *msg, size_t msg_size, int *grpc_code);

#endif

/* etcd's v3 HTTP/JSON gateway: request bodies and answer parsing (cJSON).
 * Keys and values travel as base64; int64 fields (lease IDs, revisions)
 * travel as JSON strings and are read with strtoll, never through a double. */
#ifndef LK_GATEWAY_H
#define LK_GATEWAY_H

#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "etcd/answers.h"

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

/* ---- answers, decoded into etcd/answers.h's structs ----
 * Each takes an HTTP answer (body, len, status) and returns LK_GW_OK with
 * *out filled (free it with its _free function), LK_GW_REFUSED when etcd
 * (or whatever answered) sent an error: msg says it, *grpc_code is etcd's
 * gRPC code or -1, or LK_GW_MALFORMED when the body is not the answer
 * expected (msg says what was wrong; *out is left empty). Strict: int64
 * fields are decimal strings in range, lists are lists, every key and
 * value is valid base64. */
enum { LK_GW_OK = 0, LK_GW_REFUSED = -1, LK_GW_MALFORMED = -2 };
int lk_gw_range(const char *body, size_t len, long status, lk_range_resp *out,
                char *msg, size_t msg_size, int *grpc_code);
int lk_gw_txn(const char *body, size_t len, long status, lk_txn_resp *out,
              char *msg, size_t msg_size, int *grpc_code);
/* LeaseGrant, and LeaseKeepAlive (whose fields sit inside "result"). */
int lk_gw_lease(const char *body, size_t len, long status, lk_lease_resp *out,
                char *msg, size_t msg_size, int *grpc_code);
/* Put, DeleteRange, LeaseRevoke, anything else: the revision only. */
int lk_gw_plain(const char *body, size_t len, long status, lk_plain_resp *out,
                char *msg, size_t msg_size, int *grpc_code);
/* One line of the watch stream ({"result": {...}}); a line that is no
 * result is LK_GW_REFUSED (etcd's error, or the gateway's). */
int lk_gw_watch(const char *line, size_t len, long status, lk_watch_resp *out,
                char *msg, size_t msg_size, int *grpc_code);

#endif

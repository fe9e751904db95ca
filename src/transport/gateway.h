/* etcd's v3 HTTP/JSON gateway, one transport of etcd/'s typed requests and
 * answers: bodies from etcd/requests.h's structs, answers decoded into
 * etcd/answers.h's. Keys and values travel as base64; int64 fields (lease
 * IDs, revisions) travel as JSON strings and are read with strtoll, never
 * through a double. */
#ifndef LK_GATEWAY_H
#define LK_GATEWAY_H

#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "etcd/answers.h"
#include "etcd/recipes.h"
#include "etcd/requests.h"

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

/* Request bodies. Each appends to out and returns 0, or -1 (no memory). */
int lk_etcd_grant_body(lk_buf *out, int64_t ttl);
/* {"name":..,"password":..}; the caller wipes out once it is sent. */
int lk_etcd_auth_body(lk_buf *out, const char *user, const char *password);
int lk_etcd_lease_body(lk_buf *out, int64_t lease);   /* keepalive, revoke */
/* etcd/requests.h's requests as gateway bodies (JSON; keys and values
 * base64, int64 as decimal strings). Each appends to out: 0, or -1 (no
 * memory, or a prefix with no end: every byte 0xff). */
int lk_gw_range_body(lk_buf *out, const lk_range_req *r);
int lk_gw_put_body(lk_buf *out, const lk_put_req *p);
int lk_gw_delete_body(lk_buf *out, const lk_delete_req *d);
int lk_gw_txn_body(lk_buf *out, const lk_txn_req *t);
int lk_gw_watch_body(lk_buf *out, const lk_watch_req *w);

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

/* etcd's native protocol, one transport of etcd/'s typed requests and
 * answers: each request is a protobuf message (protobuf-c, generated from
 * transport/proto/, etcd's own field numbers) in a gRPC frame; answers are
 * frames decoded into etcd/answers.h's structs. No HTTP here: http.c
 * carries the frames over HTTP/2, grpc_answer.c judges what came back. */
#ifndef LK_GRPC_H
#define LK_GRPC_H

#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "etcd/answers.h"
#include "etcd/requests.h"

/* Methods, as the paths gRPC posts to. */
#define LK_GRPC_RANGE     "/etcdserverpb.KV/Range"
#define LK_GRPC_PUT       "/etcdserverpb.KV/Put"
#define LK_GRPC_DELETE    "/etcdserverpb.KV/DeleteRange"
#define LK_GRPC_TXN       "/etcdserverpb.KV/Txn"
#define LK_GRPC_GRANT     "/etcdserverpb.Lease/LeaseGrant"
#define LK_GRPC_REVOKE    "/etcdserverpb.Lease/LeaseRevoke"
#define LK_GRPC_KEEPALIVE "/etcdserverpb.Lease/LeaseKeepAlive"
#define LK_GRPC_WATCH     "/etcdserverpb.Watch/Watch"
#define LK_GRPC_AUTH      "/etcdserverpb.Auth/Authenticate"

/* A gRPC message on the wire: a flag byte (1: compressed), its length as
 * 4 bytes big-endian, then the message. */
#define LK_GRPC_PREFIX 5

/* Request bodies: each appends one frame to out: 0, or -1 (no memory, or
 * a prefix with no end: every byte 0xff). */
int lk_grpc_range_body(lk_buf *out, const lk_range_req *r);
int lk_grpc_put_body(lk_buf *out, const lk_put_req *p);
int lk_grpc_delete_body(lk_buf *out, const lk_delete_req *d);
int lk_grpc_txn_body(lk_buf *out, const lk_txn_req *t);
int lk_grpc_watch_body(lk_buf *out, const lk_watch_req *w);
int lk_grpc_grant_body(lk_buf *out, int64_t ttl);
int lk_grpc_lease_body(lk_buf *out, int64_t lease);  /* keepalive, revoke */
/* The caller wipes out once it is sent (it holds the password). */
int lk_grpc_auth_body(lk_buf *out, const char *user, const char *password);

/* Finds the first whole frame in data: LK_GRPC_FRAME (its message at
 * *msg, *msg_len bytes; *used bytes of data it took), LK_GRPC_PARTIAL (not
 * all of it came yet), or LK_GRPC_BAD (why: compressed, or announcing more
 * than max bytes: the stream cannot be read on). */
enum { LK_GRPC_FRAME = 0, LK_GRPC_PARTIAL = 1, LK_GRPC_BAD = -1 };
int lk_grpc_frame(const char *data, size_t len, size_t max, const char **msg,
                  size_t *msg_len, size_t *used, char *why, size_t why_size);

/* Decoders of one message (without its prefix): 0 with *out filled (free
 * it with its _free function), or -1 with msg saying what was malformed
 * (*out empty). Wrong wire types, truncation, and more memory than the
 * message could honestly need are malformed. */
int lk_grpc_range(const char *p, size_t n, lk_range_resp *out, char *msg, size_t msg_size);
int lk_grpc_txn(const char *p, size_t n, lk_txn_resp *out, char *msg, size_t msg_size);
/* LeaseGrantResponse and LeaseKeepAliveResponse (the same fields: header,
 * ID, TTL; a grant's error string too). */
int lk_grpc_lease(const char *p, size_t n, lk_lease_resp *out, char *msg, size_t msg_size);
/* Put, DeleteRange, LeaseRevoke: the header's revision. */
int lk_grpc_plain(const char *p, size_t n, lk_plain_resp *out, char *msg, size_t msg_size);
int lk_grpc_watch(const char *p, size_t n, lk_watch_resp *out, char *msg, size_t msg_size);
/* An AuthenticateResponse's token, NUL-terminated, in out (a secret). */
int lk_grpc_auth(const char *p, size_t n, lk_buf *token, char *msg, size_t msg_size);

/* grpc-message is percent-encoded: decoded in place. */
void lk_grpc_unescape(char *s);

#endif

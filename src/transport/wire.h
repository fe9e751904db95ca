/* A transport of etcd/'s typed requests and answers, as the engine sees
 * it: where each call goes, how its request is encoded, and how a
 * finished request's answer is judged and decoded into the error
 * vocabulary. Two exist: etcd's JSON gateway (gateway_answer.c) and its
 * native gRPC (grpc_answer.c); http.c carries both. */
#ifndef LK_WIRE_H
#define LK_WIRE_H

#include "base/buf.h"
#include "base/config.h"
#include "base/errors.h"
#include "etcd/answers.h"
#include "etcd/requests.h"
#include "transport/http.h"

/* Each answer function: 0 with *out filled (free it with its _free
 * function), or -1 with a code ("unavailable", "lease_lost", "auth",
 * "tls", "etcd", "protocol") and a message, *out empty. */
typedef int (*lk_answer_range_fn)(lk_req *r, lk_range_resp *out, lk_err *code, char *msg,
                                  size_t msg_size);
typedef int (*lk_answer_txn_fn)(lk_req *r, lk_txn_resp *out, lk_err *code, char *msg,
                                size_t msg_size);
typedef int (*lk_answer_lease_fn)(lk_req *r, lk_lease_resp *out, lk_err *code, char *msg,
                                  size_t msg_size);
typedef int (*lk_answer_plain_fn)(lk_req *r, lk_plain_resp *out, lk_err *code, char *msg,
                                  size_t msg_size);

typedef struct lk_wire {
    const char *name;   /* "grpc", "gateway" */
    /* where each call goes (paths) */
    const char *range, *put, *del, *txn, *grant, *keepalive, *revoke, *watch, *auth;
    /* request bodies: each appends to out: 0, or -1 (no memory, or a
     * prefix with no end) */
    int (*range_body)(lk_buf *out, const lk_range_req *q);
    int (*put_body)(lk_buf *out, const lk_put_req *q);
    int (*delete_body)(lk_buf *out, const lk_delete_req *q);
    int (*txn_body)(lk_buf *out, const lk_txn_req *q);
    int (*watch_body)(lk_buf *out, const lk_watch_req *q);
    int (*grant_body)(lk_buf *out, int64_t ttl);
    int (*lease_body)(lk_buf *out, int64_t lease);
    int (*auth_body)(lk_buf *out, const char *user, const char *password);
    /* answers */
    lk_answer_range_fn answer_range;
    lk_answer_txn_fn answer_txn;
    lk_answer_lease_fn answer_lease;   /* LeaseGrant, LeaseKeepAlive */
    lk_answer_plain_fn answer_plain;
    /* One message of a watch stream: 0 (LK_STREAM_OK), -1 (REFUSED: etcd's
     * error, *grpc_code its code or -1), -2 (MALFORMED); msg says why. */
    int (*stream_message)(const lk_req *r, const char *m, size_t n, lk_watch_resp *out,
                          char *msg, size_t msg_size, int *grpc_code);
    /* One answer of a LeaseKeepAlive stream (NULL: the transport has no
     * such stream; each renewal is a request of its own): 0 with *out, or
     * -1 with msg (malformed). */
    int (*lease_message)(const char *m, size_t n, lk_lease_resp *out, char *msg, size_t msg_size);
    /* How a watch stream ended: 1 when we ended it, else 0 with code, msg. */
    int (*stream_end)(lk_req *r, lk_err *code, char *msg, size_t msg_size);
    /* An Authenticate answer: 1 with the token in *token (a secret), 0
     * when etcd has authentication off, -1 when it refused or failed
     * (*grpc_code its code or -1, msg its words). */
    int (*auth_answer)(lk_req *r, lk_buf *token, int *grpc_code, char *msg, size_t msg_size);
} lk_wire;

extern const lk_wire lk_gateway_wire;
extern const lk_wire lk_grpc_wire;

static inline const lk_wire *lk_wire_of(const lk_config *cfg)
{
    return cfg->transport == LK_TRANSPORT_GRPC ? &lk_grpc_wire : &lk_gateway_wire;
}

#endif

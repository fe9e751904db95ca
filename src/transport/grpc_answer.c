/* Judging a finished gRPC call (see wire.h): libcurl's result, the HTTP/2
 * status, grpc-status and grpc-message in the error vocabulary; then the
 * one message of a unary answer, decoded (transport/grpc.c). */
#include "transport/wire.h"

#include <stdio.h>
#include <string.h>

#include "transport/auth.h"
#include "transport/grpc.h"

/* gRPC's status codes that the vocabulary tells apart */
enum {
    GRPC_OK = 0, GRPC_INVALID_ARGUMENT = 3, GRPC_DEADLINE_EXCEEDED = 4, GRPC_NOT_FOUND = 5,
    GRPC_RESOURCE_EXHAUSTED = 8, GRPC_FAILED_PRECONDITION = 9, GRPC_UNAVAILABLE = 14,
};

/* What etcd's gRPC status means. NotFound on a lease-carrying call is
 * etcd saying the lease is gone. */
static lk_err grpc_code(int status, const char *text)
{
    if (status == GRPC_NOT_FOUND && strstr(text, "lease")) return LK_ERR_LEASE_LOST;
    if (status == GRPC_UNAVAILABLE || status == GRPC_DEADLINE_EXCEEDED) return LK_ERR_UNAVAILABLE;
    if (lk_auth_refusal(status, text)) return LK_ERR_AUTH;
    return LK_ERR_ETCD;
}

/* Whether the call ended well (grpc-status 0): 0, or -1 with the code and
 * message of what went wrong (the transport, HTTP, or etcd's status). */
static int call_failed(const lk_req *r, lk_err *code, char *msg, size_t msg_size)
{
    if (lk_req_fault(r, code, msg, msg_size)) return -1;
    const char *ep = lk_req_endpoint(r);
    if (r->status != 200) {
        *code = r->status >= 500 ? LK_ERR_UNAVAILABLE : LK_ERR_PROTOCOL;
        snprintf(msg, msg_size, "etcd at %s answered a gRPC call with HTTP %ld%s", ep, r->status,
                 r->status == 404 || r->status == 415 ? " (is it etcd's client port?)" : "");
        return -1;
    }
    if (r->grpc_status < 0) {
        /* libcurl ends a call whose connection was cut after its headers
         * as if it were done; gRPC's own clients call that Unavailable */
        *code = LK_ERR_UNAVAILABLE;
        snprintf(msg, msg_size, "etcd at %s ended a gRPC call without its status "
                 "(no grpc-status trailer: was the connection cut?)", ep);
        return -1;
    }
    if (r->grpc_status != GRPC_OK) {
        const char *text = r->grpc_msg[0] ? r->grpc_msg : "no message";
        *code = grpc_code(r->grpc_status, text);
        snprintf(msg, msg_size, "%s (gRPC status %d)%s", text, r->grpc_status,
                 r->grpc_status == GRPC_INVALID_ARGUMENT && *code == LK_ERR_AUTH
                 ? " (etcd has authentication on: set user and password)" : "");
        return -1;
    }
    return 0;
}

/* The one message of a unary answer: 0 with *m, *n, or -1 (protocol). */
static int only_message(const lk_req *r, const char **m, size_t *n, lk_err *code, char *msg,
                        size_t msg_size)
{
    size_t used = 0;
    char why[160] = "";
    int rc = lk_grpc_frame(r->answer.data, r->answer.len, LK_MAX_ANSWER, m, n, &used, why,
                           sizeof why);
    if (rc == LK_GRPC_FRAME && used == r->answer.len) return 0;
    *code = LK_ERR_PROTOCOL;
    snprintf(msg, msg_size, "etcd at %s sent %s", lk_req_endpoint(r),
             rc == LK_GRPC_BAD ? why
             : rc == LK_GRPC_PARTIAL ? (r->answer.len ? "a truncated gRPC message"
                                                      : "a gRPC answer without its message")
             : "more than one message to a unary gRPC call");
    return -1;
}

/* Decodes a unary answer with fn; a malformed message is "protocol". */
#define ANSWER(name, type, fn)                                                        \
static int name(lk_req *r, type *out, lk_err *code, char *msg, size_t msg_size)    \
{                                                                                   \
    *out = (type){0};                                                               \
    const char *m;                                                                  \
    size_t n;                                                                       \
    if (call_failed(r, code, msg, msg_size) ||                                      \
        only_message(r, &m, &n, code, msg, msg_size))                               \
        return -1;                                                                  \
    char text[256];                                                                 \
    if (fn(m, n, out, text, sizeof text) == 0) return 0;                            \
    *code = LK_ERR_PROTOCOL;                                                        \
    snprintf(msg, msg_size, "%s (from %s)", text, lk_req_endpoint(r));              \
    return -1;                                                                      \
}
ANSWER(answer_range, lk_range_resp, lk_grpc_range)
ANSWER(answer_txn, lk_txn_resp, lk_grpc_txn)
ANSWER(answer_lease, lk_lease_resp, lk_grpc_lease)
ANSWER(answer_plain, lk_plain_resp, lk_grpc_plain)

/* A stream's messages are WatchResponses; etcd's errors come only as the
 * call's status, at its end. */
static int stream_message(const lk_req *r, const char *m, size_t n, lk_watch_resp *out,
                          char *msg, size_t msg_size, int *grpc_code_out)
{
    (void)r;
    *grpc_code_out = -1;
    return lk_grpc_watch(m, n, out, msg, msg_size) == 0 ? 0 : -2;
}

static int stream_end(lk_req *r, lk_err *code, char *msg, size_t msg_size)
{
    if (r->result == CURLE_ABORTED_BY_CALLBACK) return 1;
    if (call_failed(r, code, msg, msg_size)) return 0;
    *code = LK_ERR_UNAVAILABLE;
    snprintf(msg, msg_size, "etcd at %s ended the watch stream", lk_req_endpoint(r));
    return 0;
}

static int auth_answer(lk_req *r, lk_buf *token, int *grpc, char *msg, size_t msg_size)
{
    lk_err code;
    *grpc = -1;
    if (call_failed(r, &code, msg, msg_size)) {
        if (r->grpc_status > 0) {  /* etcd's own words, for auth.c to judge */
            *grpc = r->grpc_status;
            snprintf(msg, msg_size, "%s", r->grpc_msg);
        }
        return -1;
    }
    const char *m;
    size_t n;
    if (only_message(r, &m, &n, &code, msg, msg_size)) return -1;
    return lk_grpc_auth(m, n, token, msg, msg_size) == 0 ? 1 : -1;
}

const lk_wire lk_grpc_wire = {
    .name = "grpc",
    .range = LK_GRPC_RANGE, .put = LK_GRPC_PUT, .del = LK_GRPC_DELETE, .txn = LK_GRPC_TXN,
    .grant = LK_GRPC_GRANT, .keepalive = LK_GRPC_KEEPALIVE, .revoke = LK_GRPC_REVOKE,
    .watch = LK_GRPC_WATCH, .auth = LK_GRPC_AUTH,
    .range_body = lk_grpc_range_body, .put_body = lk_grpc_put_body,
    .delete_body = lk_grpc_delete_body, .txn_body = lk_grpc_txn_body,
    .watch_body = lk_grpc_watch_body, .grant_body = lk_grpc_grant_body,
    .lease_body = lk_grpc_lease_body, .auth_body = lk_grpc_auth_body,
    .answer_range = answer_range, .answer_txn = answer_txn,
    .answer_lease = answer_lease,
    .answer_plain = answer_plain,
    .stream_message = stream_message, .stream_end = stream_end,
    .lease_message = lk_grpc_lease,
    .auth_answer = auth_answer,
};

/* Judging a gateway request's answer (see gateway_answer.h). */
#include "transport/gateway_answer.h"

#include <stdio.h>
#include <string.h>

#include "transport/auth.h"
#include "transport/gateway.h"
#include "transport/gateway_json.h"
#include "transport/wire.h"

/* After a decoder ran: 0, or -1 with the code of what etcd (or the
 * decoder) said. */
static int judged(const lk_req *r, int rc, int grpc, const char *text,
                  lk_err *code, char *msg, size_t msg_size)
{
    if (rc == LK_GW_OK) return 0;
    if (rc == LK_GW_MALFORMED) {
        *code = LK_ERR_PROTOCOL;
        snprintf(msg, msg_size, "%s (from %s)", text, lk_req_endpoint(r));
        return -1;
    }
    /* NotFound on a lease-carrying call is etcd saying the lease is gone. */
    *code = grpc == 5 && strstr(text, "lease") ? LK_ERR_LEASE_LOST
          : grpc == 14 || r->status == 503 ? LK_ERR_UNAVAILABLE
          : lk_auth_refusal(grpc, text) ? LK_ERR_AUTH
          : grpc >= 0 ? LK_ERR_ETCD : LK_ERR_PROTOCOL;
    snprintf(msg, msg_size, "%s%s", text, grpc == 3 && *code == LK_ERR_AUTH
             ? " (etcd has authentication on: set user and password)" : "");
    return -1;
}

#define ANSWER(fn, type, decoder)                                                     \
int fn(lk_req *r, type *out, lk_err *code, char *msg, size_t msg_size)             \
{                                                                                   \
    *out = (type){0};                                                               \
    if (lk_req_fault(r, code, msg, msg_size)) return -1;                             \
    int grpc = -1;                                                                  \
    char text[512];                                                                 \
    int rc = decoder(r->answer.data, r->answer.len, r->status, out, text,           \
                     sizeof text, &grpc);                                           \
    return judged(r, rc, grpc, text, code, msg, msg_size);                          \
}
ANSWER(lk_gw_answer_range, lk_range_resp, lk_gw_range)
ANSWER(lk_gw_answer_txn, lk_txn_resp, lk_gw_txn)
ANSWER(lk_gw_answer_lease, lk_lease_resp, lk_gw_lease)
ANSWER(lk_gw_answer_plain, lk_plain_resp, lk_gw_plain)

int lk_gw_stream_message(const lk_req *r, const char *line, size_t n, lk_watch_resp *out,
                         char *msg, size_t msg_size, int *grpc_code)
{
    return lk_gw_watch(line, n, r->status, out, msg, msg_size, grpc_code);
}

int lk_gw_stream_end(lk_req *r, lk_err *code, char *msg, size_t msg_size)
{
    if (r->result == CURLE_ABORTED_BY_CALLBACK) return 1;
    lk_plain_resp p;
    lk_gw_answer_plain(r, &p, code, msg, msg_size);
    if (!lk_req_transport_failed(r) && !r->too_big && r->status == 200) {
        *code = LK_ERR_UNAVAILABLE;
        snprintf(msg, msg_size, "etcd at %s ended the watch stream", lk_req_endpoint(r));
    }
    return 0;
}

/* An Authenticate answer: {"token": ...}, or none when auth is off. */
static int auth_answer(lk_req *r, lk_buf *token, int *grpc_code, char *msg, size_t msg_size)
{
    cJSON *root = lk_etcd_parse(r->answer.data, r->answer.len, r->status, msg, msg_size,
                                grpc_code);
    if (!root) return -1;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "token");
    int rc = 0;
    if (cJSON_IsString(t) && t->valuestring[0]) {
        rc = 1;
        if (lk_buf_puts(token, t->valuestring)) {
            snprintf(msg, msg_size, "out of memory");
            rc = -1;
        }
        explicit_bzero(t->valuestring, strlen(t->valuestring));  /* a secret */
    }
    cJSON_Delete(root);
    return rc;
}

const lk_wire lk_gateway_wire = {
    .name = "gateway",
    .range = LK_PATH_RANGE, .put = LK_PATH_PUT, .del = LK_PATH_DELETE, .txn = LK_PATH_TXN,
    .grant = LK_PATH_GRANT, .keepalive = LK_PATH_KEEPALIVE, .revoke = LK_PATH_REVOKE,
    .watch = LK_PATH_WATCH, .auth = LK_PATH_AUTH,
    .range_body = lk_gw_range_body, .put_body = lk_gw_put_body,
    .delete_body = lk_gw_delete_body, .txn_body = lk_gw_txn_body,
    .watch_body = lk_gw_watch_body, .grant_body = lk_etcd_grant_body,
    .lease_body = lk_etcd_lease_body, .auth_body = lk_etcd_auth_body,
    .answer_range = lk_gw_answer_range, .answer_txn = lk_gw_answer_txn,
    .answer_lease = lk_gw_answer_lease,
    .answer_plain = lk_gw_answer_plain,
    .stream_message = lk_gw_stream_message, .stream_end = lk_gw_stream_end,
    .auth_answer = auth_answer,
};

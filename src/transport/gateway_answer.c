/* Judging a gateway request's answer (see gateway_answer.h). */
#include "transport/gateway_answer.h"

#include <stdio.h>
#include <string.h>

#include "transport/auth.h"
#include "transport/gateway.h"

/* What every answer is checked for before its body is read: 0, or -1
 * with code and msg. */
static int transport_fault(lk_req *r, lk_err *code, char *msg, size_t msg_size)
{
    if (r->fail_code) {  /* tls, auth: http said why */
        *code = r->fail_code;
        snprintf(msg, msg_size, "%s", r->fail_msg ? r->fail_msg : lk_err_name(r->fail_code));
        return -1;
    }
    if (r->too_big) {
        *code = LK_ERR_PROTOCOL;
        snprintf(msg, msg_size, "etcd at %s sent an answer over %d MiB",
                 lk_req_endpoint(r), LK_MAX_ANSWER >> 20);
        return -1;
    }
    if (lk_req_transport_failed(r)) {
        *code = LK_ERR_UNAVAILABLE;
        snprintf(msg, msg_size, "etcd at %s unreachable: %s",
                 lk_req_endpoint(r), lk_req_error(r));
        return -1;
    }
    return 0;
}

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
    if (transport_fault(r, code, msg, msg_size)) return -1;                         \
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

/* A finished gateway request's answer, decoded (transport/gateway.c) and
 * judged: what HTTP, libcurl and etcd's error answers mean in the error
 * vocabulary, so that the engine sees neither status codes nor curl's.
 * Each: 0 with *out filled (free it with its _free function), or -1 with
 * a code ("unavailable", "lease_lost", "auth", "tls", "etcd", "protocol")
 * and a message, *out empty. */
#ifndef LK_GATEWAY_ANSWER_H
#define LK_GATEWAY_ANSWER_H

#include "base/errors.h"
#include "etcd/answers.h"
#include "transport/http.h"

int lk_gw_answer_range(lk_req *r, lk_range_resp *out, lk_err *code, char *msg, size_t msg_size);
int lk_gw_answer_txn(lk_req *r, lk_txn_resp *out, lk_err *code, char *msg, size_t msg_size);
int lk_gw_answer_lease(lk_req *r, lk_lease_resp *out, lk_err *code, char *msg, size_t msg_size);
int lk_gw_answer_plain(lk_req *r, lk_plain_resp *out, lk_err *code, char *msg, size_t msg_size);

/* One line of a watch stream (lk_gw_watch's answer). */
int lk_gw_stream_message(const lk_req *r, const char *line, size_t n, lk_watch_resp *out,
                         char *msg, size_t msg_size, int *grpc_code);
/* How a watch stream ended: 1 when we ended it (a canceled request, or a
 * line handler that answered nonzero), else 0 with code and msg. */
int lk_gw_stream_end(lk_req *r, lk_err *code, char *msg, size_t msg_size);

#endif

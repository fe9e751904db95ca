/* The gateway's JSON, as cJSON trees: the helpers transport/gateway.c
 * decodes answers with (and the fuzz targets and the codec probe test).
 * Nothing above transport/ includes this: the engine reads etcd/answers.h. */
#ifndef LK_GATEWAY_JSON_H
#define LK_GATEWAY_JSON_H

#include <stddef.h>
#include <stdint.h>

#include <cJSON.h>

#include "base/buf.h"
#include "etcd/answers.h"

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

/* Decodes a "kvs" element into kv (whose bufs it resets first). 0, or -1 on
 * malformed base64 or no memory. */
int lk_etcd_kv(const cJSON *item, lk_kv *kv);

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

/* etcd's answers as C structs: what the engine reads, whatever carried
 * them (the JSON gateway today: transport/gateway.c decodes into these).
 * Keys and values are decoded bytes; int64 fields are int64 (0: absent,
 * as etcd omits zero values). No JSON, base64 or HTTP here. */
#ifndef LK_ANSWERS_H
#define LK_ANSWERS_H

#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"

/* One key-value. */
typedef struct lk_kv {
    lk_buf key;
    lk_buf value;
    int64_t create_rev;
    int64_t mod_rev;
    int64_t lease;
} lk_kv;
void lk_etcd_kv_free(lk_kv *kv);

/* A Range answer (also a txn's response_range). */
typedef struct lk_range_resp {
    int64_t revision;   /* the header's: etcd's revision when it answered */
    int64_t count;      /* keys in the range (count_only: the only figure) */
    lk_kv *kvs;         /* in etcd's order */
    size_t n;
} lk_range_resp;
void lk_range_resp_free(lk_range_resp *r);
/* The first key-value, or NULL. */
const lk_kv *lk_range_first(const lk_range_resp *r);

/* A Txn answer: whether the compares held, and each response's range (an
 * empty one for a put or a delete). */
typedef struct lk_txn_resp {
    int64_t revision;
    int succeeded;
    lk_range_resp *ranges;
    size_t n;
} lk_txn_resp;
void lk_txn_resp_free(lk_txn_resp *t);
/* Response i's range, or NULL when there is no response i. */
const lk_range_resp *lk_txn_range(const lk_txn_resp *t, size_t i);

/* LeaseGrant and LeaseKeepAlive answers: ttl 0 on a keepalive means the
 * lease is gone. */
typedef struct lk_lease_resp {
    int64_t revision;
    int64_t id;
    int64_t ttl;
} lk_lease_resp;

/* Any other answer (Put, DeleteRange, LeaseRevoke): its revision only. */
typedef struct lk_plain_resp {
    int64_t revision;
} lk_plain_resp;

/* One message of a watch stream. */
typedef struct lk_watch_event {
    int deleted;        /* a DELETE, else a PUT */
    lk_kv kv;
} lk_watch_event;

typedef struct lk_watch_resp {
    int64_t revision;           /* the header's */
    int created;                /* the answer to a create request */
    int canceled;
    char cancel_reason[256];    /* when canceled: etcd's words, or "" */
    int64_t compact_revision;   /* > 0: the start revision was compacted */
    lk_watch_event *events;
    size_t n;
} lk_watch_resp;
void lk_watch_resp_free(lk_watch_resp *w);

#endif

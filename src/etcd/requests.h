/* etcd's requests as C structs: what the engine asks, whatever carries it
 * (the JSON gateway today: transport/gateway.c encodes these). Keys and
 * values are bytes (lk_bytes: pointers into the caller's memory, which
 * must outlive the encoding); int64 fields are int64. */
#ifndef LK_REQUESTS_H
#define LK_REQUESTS_H

#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"

typedef enum { LK_SORT_NONE, LK_SORT_ASCEND, LK_SORT_DESCEND } lk_sort_order;

/* Range: one key, or every key under it (prefix). */
typedef struct lk_range_req {
    lk_bytes key;
    int prefix;               /* every key that starts with key */
    lk_sort_order sort;       /* by create revision */
    int64_t limit;            /* 0: all */
    int keys_only;
    int count_only;
    int64_t max_create_rev;   /* 0: no bound */
} lk_range_req;

typedef struct lk_put_req {
    lk_bytes key;
    lk_bytes value;
    int64_t lease;            /* 0: none */
} lk_put_req;

typedef struct lk_delete_req {
    lk_bytes key;
} lk_delete_req;

typedef enum { LK_OP_RANGE, LK_OP_PUT, LK_OP_DELETE } lk_op_kind;

/* One operation of a txn. */
typedef struct lk_op {
    lk_op_kind kind;
    lk_range_req range;
    lk_put_req put;
    lk_delete_req del;
} lk_op;

/* A txn's compare: the create revision of key (or of every key under it,
 * prefix) equals create_rev (0: no such key). The only compare locks use. */
typedef struct lk_compare {
    lk_bytes key;
    int prefix;
    int64_t create_rev;
} lk_compare;

typedef struct lk_txn_req {
    const lk_compare *compare;
    size_t n_compare;
    const lk_op *success;
    size_t n_success;
    const lk_op *failure;
    size_t n_failure;
} lk_txn_req;

/* A watch stream's create request: every key under key from start_rev
 * (0: now), with progress notes, big batches split into fragments. */
typedef struct lk_watch_req {
    lk_bytes key;
    int prefix;
    int64_t start_rev;
} lk_watch_req;

#endif

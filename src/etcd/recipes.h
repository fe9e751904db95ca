/* The requests locks are made of, built as etcd/requests.h structs (no
 * transport here: the gateway encodes them, a native transport would too).
 * A builder holds the arrays a txn points into; its txn is valid while
 * the builder and the bytes passed in live. */
#ifndef LK_RECIPES_H
#define LK_RECIPES_H

#include "etcd/requests.h"

/* Smallest key greater than every key that starts with prefix (etcd's
 * "prefix end", the range_end every transport sends for a request's
 * prefix); written to out. 0 or -1 (no memory, or all bytes 0xff). */
int lk_etcd_prefix_end(lk_buf *out, lk_bytes prefix);

typedef struct lk_txn_build {
    lk_compare compare[1];
    lk_op success[3];
    lk_op failure[3];
    char digits[16];          /* a semaphore's limit, as its key's value */
    lk_txn_req txn;
} lk_txn_build;

/* Ranges: key alone; every key under dir; the owner of dir (the lowest
 * create revision, with its value); a count of key (no data: etcd's
 * revision only). */
lk_range_req lk_recipe_key(lk_bytes key);
lk_range_req lk_recipe_dir(lk_bytes dir);
lk_range_req lk_recipe_owner(lk_bytes dir);
lk_range_req lk_recipe_count(lk_bytes key);

/* Txn: if no key exists under dir, put key=value on lease (succeeded: the
 * key is the owner, created at the answer's revision); else read key (with
 * its value) and the owner of dir (responses: key, owner). */
const lk_txn_req *lk_recipe_try(lk_txn_build *b, lk_bytes key, lk_bytes value,
                                int64_t lease, lk_bytes dir);
/* Txn: put key=value on lease if key is absent, and read the owner of dir
 * (responses: put, owner; keys only); else read key (with its value) and
 * the owner (responses: key, owner). */
const lk_txn_req *lk_recipe_acquire(lk_txn_build *b, lk_bytes key, lk_bytes value,
                                    int64_t lease, lk_bytes dir);
/* A semaphore's acquire: lk_recipe_acquire's txn, with a put of
 * limit_key = limit (decimal, on lease) as a third operation either way. */
const lk_txn_req *lk_recipe_sem_acquire(lk_txn_build *b, lk_bytes key, lk_bytes value,
                                        int64_t lease, lk_bytes dir, lk_bytes limit_key,
                                        int limit);
/* Txn: the newest key under dir created before my_rev (my predecessor),
 * key itself (does it still exist?), keys only; and how many keys are
 * under limit_dir (count only: a semaphore's contenders there?). */
const lk_txn_req *lk_recipe_check(lk_txn_build *b, lk_bytes dir, int64_t my_rev,
                                  lk_bytes key, lk_bytes limit_dir);
/* A semaphore's check, txn: every key under dir created before my_rev
 * (oldest first, keys only), key itself, and every key under limit_dir
 * (the contenders' limits, with values). */
const lk_txn_req *lk_recipe_sem_check(lk_txn_build *b, lk_bytes dir, int64_t my_rev,
                                      lk_bytes key, lk_bytes limit_dir);
/* Txn: delete key and key2 (a semaphore contender and its limit). */
const lk_txn_req *lk_recipe_delete2(lk_txn_build *b, lk_bytes key, lk_bytes key2);
/* Txn: put key=value on lease if key's create_revision is still token. */
const lk_txn_req *lk_recipe_set(lk_txn_build *b, lk_bytes key, lk_bytes value,
                                int64_t lease, int64_t token);
/* Txn: if guard's create_revision is still token, put key=value (no
 * lease), or delete key when value is NULL (a lock's guarded write). */
const lk_txn_req *lk_recipe_guarded(lk_txn_build *b, lk_bytes guard, int64_t token,
                                    lk_bytes key, const lk_bytes *value);
/* Txn: if key's create_revision is still token, put mark = key (on lease)
 * and delete key: a clean release that waiters can tell (lock-delay). */
const lk_txn_req *lk_recipe_release(lk_txn_build *b, lk_bytes key, int64_t token,
                                    lk_bytes mark, int64_t lease);
/* Txn: delete key if its create_revision is still create_rev. */
const lk_txn_req *lk_recipe_delete_if(lk_txn_build *b, lk_bytes key, int64_t create_rev);

#endif

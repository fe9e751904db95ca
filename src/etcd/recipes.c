/* The requests locks are made of (see recipes.h). */
#include "etcd/recipes.h"

#include <stdio.h>
#include <string.h>

int lk_etcd_prefix_end(lk_buf *out, lk_bytes prefix)
{
    size_t n = prefix.n;
    while (n > 0 && (unsigned char)prefix.p[n - 1] == 0xff) n--;
    if (n == 0) return -1;
    if (lk_buf_append(out, prefix.p, n)) return -1;
    out->data[n - 1] = (char)((unsigned char)out->data[n - 1] + 1);
    return 0;
}

lk_range_req lk_recipe_key(lk_bytes key)
{
    return (lk_range_req){.key = key};
}

lk_range_req lk_recipe_dir(lk_bytes dir)
{
    return (lk_range_req){.key = dir, .prefix = 1};
}

lk_range_req lk_recipe_owner(lk_bytes dir)
{
    return (lk_range_req){.key = dir, .prefix = 1, .sort = LK_SORT_ASCEND, .limit = 1};
}

lk_range_req lk_recipe_count(lk_bytes key)
{
    return (lk_range_req){.key = key, .count_only = 1};
}

static lk_op range_op(lk_range_req r)
{
    return (lk_op){.kind = LK_OP_RANGE, .range = r};
}

static lk_op put_op(lk_bytes key, lk_bytes value, int64_t lease)
{
    return (lk_op){.kind = LK_OP_PUT, .put = {key, value, lease}};
}

static lk_op delete_op(lk_bytes key)
{
    return (lk_op){.kind = LK_OP_DELETE, .del = {key}};
}

/* The owner of dir, keys only. */
static lk_op owner_op(lk_bytes dir)
{
    lk_range_req r = lk_recipe_owner(dir);
    r.keys_only = 1;
    return range_op(r);
}

static const lk_txn_req *done(lk_txn_build *b, int n_compare, int n_success, int n_failure)
{
    b->txn = (lk_txn_req){b->compare, (size_t)n_compare, b->success, (size_t)n_success,
                          b->failure, (size_t)n_failure};
    return &b->txn;
}

const lk_txn_req *lk_recipe_try(lk_txn_build *b, lk_bytes key, lk_bytes value,
                                int64_t lease, lk_bytes dir)
{
    /* nobody under dir (no create_revision but 0): take it with one put,
     * as cheap for etcd as a plain put-if-absent; else read our own key
     * (an earlier try's?) and the owner, and queue in a second txn */
    b->compare[0] = (lk_compare){dir, 1, 0};
    b->success[0] = put_op(key, value, lease);
    b->failure[0] = range_op(lk_recipe_key(key));
    b->failure[1] = owner_op(dir);
    return done(b, 1, 1, 2);
}

const lk_txn_req *lk_recipe_acquire(lk_txn_build *b, lk_bytes key, lk_bytes value,
                                    int64_t lease, lk_bytes dir)
{
    /* the common case, a new key: put-if-absent, and the owner; the key's
     * create_revision is then the txn's revision. A key left from an
     * earlier try of ours: read it (and the owner). The value goes only
     * once into the request, which must stay under etcd's size limit. */
    b->compare[0] = (lk_compare){key, 0, 0};
    b->success[0] = put_op(key, value, lease);
    b->success[1] = owner_op(dir);
    b->failure[0] = range_op(lk_recipe_key(key));
    b->failure[1] = owner_op(dir);
    return done(b, 1, 2, 2);
}

const lk_txn_req *lk_recipe_sem_acquire(lk_txn_build *b, lk_bytes key, lk_bytes value,
                                        int64_t lease, lk_bytes dir, lk_bytes limit_key,
                                        int limit)
{
    lk_recipe_acquire(b, key, value, lease, dir);
    snprintf(b->digits, sizeof b->digits, "%d", limit);
    lk_bytes n = {b->digits, strlen(b->digits)};
    b->success[2] = put_op(limit_key, n, lease);
    b->failure[2] = put_op(limit_key, n, lease);
    return done(b, 1, 3, 3);
}

/* The keys under dir created before my_rev (keys only), key itself, and
 * the keys under limit_dir. A lock reads only the newest of the first (its
 * predecessor) and counts the last; a semaphore reads them all, oldest
 * first, and the limits' values. */
static const lk_txn_req *check(lk_txn_build *b, lk_bytes dir, int64_t my_rev, lk_bytes key,
                               lk_bytes limit_dir, int semaphore)
{
    lk_range_req before = {.key = dir, .prefix = 1, .keys_only = 1, .max_create_rev = my_rev - 1,
                           .sort = semaphore ? LK_SORT_ASCEND : LK_SORT_DESCEND,
                           .limit = semaphore ? 0 : 1};
    lk_range_req mine = lk_recipe_key(key);
    mine.keys_only = 1;
    lk_range_req limits = lk_recipe_dir(limit_dir);
    limits.count_only = !semaphore;
    b->success[0] = range_op(before);
    b->success[1] = range_op(mine);
    b->success[2] = range_op(limits);
    return done(b, 0, 3, 0);
}

const lk_txn_req *lk_recipe_check(lk_txn_build *b, lk_bytes dir, int64_t my_rev,
                                  lk_bytes key, lk_bytes limit_dir)
{
    return check(b, dir, my_rev, key, limit_dir, 0);
}

const lk_txn_req *lk_recipe_sem_check(lk_txn_build *b, lk_bytes dir, int64_t my_rev,
                                      lk_bytes key, lk_bytes limit_dir)
{
    return check(b, dir, my_rev, key, limit_dir, 1);
}

const lk_txn_req *lk_recipe_delete2(lk_txn_build *b, lk_bytes key, lk_bytes key2)
{
    b->success[0] = delete_op(key);
    b->success[1] = delete_op(key2);
    return done(b, 0, 2, 0);
}

const lk_txn_req *lk_recipe_set(lk_txn_build *b, lk_bytes key, lk_bytes value,
                                int64_t lease, int64_t token)
{
    b->compare[0] = (lk_compare){key, 0, token};
    b->success[0] = put_op(key, value, lease);
    return done(b, 1, 1, 0);
}

const lk_txn_req *lk_recipe_guarded(lk_txn_build *b, lk_bytes guard, int64_t token,
                                    lk_bytes key, const lk_bytes *value)
{
    b->compare[0] = (lk_compare){guard, 0, token};
    b->success[0] = value ? put_op(key, *value, 0) : delete_op(key);
    return done(b, 1, 1, 0);
}

const lk_txn_req *lk_recipe_release(lk_txn_build *b, lk_bytes key, int64_t token,
                                    lk_bytes mark, int64_t lease)
{
    b->compare[0] = (lk_compare){key, 0, token};
    b->success[0] = put_op(mark, key, lease);
    b->success[1] = delete_op(key);
    return done(b, 1, 2, 0);
}

const lk_txn_req *lk_recipe_delete_if(lk_txn_build *b, lk_bytes key, int64_t create_rev)
{
    b->compare[0] = (lk_compare){key, 0, create_rev};
    b->success[0] = delete_op(key);
    return done(b, 1, 1, 0);
}

/* Freeing etcd's typed answers (see answers.h). */
#include "etcd/answers.h"

#include <stdlib.h>

void lk_etcd_kv_free(lk_kv *kv)
{
    lk_buf_free(&kv->key);
    lk_buf_free(&kv->value);
}

void lk_range_resp_free(lk_range_resp *r)
{
    for (size_t i = 0; i < r->n; i++) lk_etcd_kv_free(&r->kvs[i]);
    free(r->kvs);
    *r = (lk_range_resp){0};
}

const lk_kv *lk_range_first(const lk_range_resp *r)
{
    return r && r->n ? &r->kvs[0] : NULL;
}

void lk_txn_resp_free(lk_txn_resp *t)
{
    for (size_t i = 0; i < t->n; i++) lk_range_resp_free(&t->ranges[i]);
    free(t->ranges);
    *t = (lk_txn_resp){0};
}

const lk_range_resp *lk_txn_range(const lk_txn_resp *t, size_t i)
{
    return i < t->n ? &t->ranges[i] : NULL;
}

void lk_watch_resp_free(lk_watch_resp *w)
{
    for (size_t i = 0; i < w->n; i++) lk_etcd_kv_free(&w->events[i].kv);
    free(w->events);
    *w = (lk_watch_resp){0};
}

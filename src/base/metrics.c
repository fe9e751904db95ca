#include "base/metrics.h"

#include <string.h>

/* 0.1 ms to 10 s: a delivery, a loopback answer, a remote one, a
 * failover, a timeout */
const int64_t lk_hist_bounds_us[LK_HIST_BUCKETS - 1] = {
    100,    250,    500,     1000,    2500,    5000,    10000,    25000,
    50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000,
};

static const char *const kind_paths[LK_RQ_OTHER] = {
    "/v3/kv/range", "/v3/kv/put", "/v3/kv/deleterange", "/v3/kv/txn",
    "/v3/lease/grant", "/v3/lease/keepalive", "/v3/lease/revoke",
    "/v3/watch", "/v3/auth/authenticate",
};
/* the same calls as gRPC methods */
static const char *const kind_methods[LK_RQ_OTHER] = {
    "/etcdserverpb.KV/Range", "/etcdserverpb.KV/Put", "/etcdserverpb.KV/DeleteRange",
    "/etcdserverpb.KV/Txn", "/etcdserverpb.Lease/LeaseGrant",
    "/etcdserverpb.Lease/LeaseKeepAlive", "/etcdserverpb.Lease/LeaseRevoke",
    "/etcdserverpb.Watch/Watch", "/etcdserverpb.Auth/Authenticate",
};

static const char *const kind_names[LK_RQ_KINDS] = {
    "range", "put", "delete", "txn", "lease_grant", "lease_keepalive",
    "lease_revoke", "watch", "authenticate", "other",
};

lk_rq_kind lk_rq_kind_of(const char *path)
{
    for (int k = 0; k < LK_RQ_OTHER; k++)
        if (path && (!strcmp(path, kind_paths[k]) || !strcmp(path, kind_methods[k])))
            return (lk_rq_kind)k;
    return LK_RQ_OTHER;
}

const char *lk_rq_kind_name(lk_rq_kind k)
{
    return k >= 0 && k < LK_RQ_KINDS ? kind_names[k] : "other";
}

const char *lk_reconnect_name(lk_reconnect_reason r)
{
    static const char *const names[LK_RECONNECT_REASONS] = {
        "ended", "silent", "failover", "refused",
    };
    return r >= 0 && r < LK_RECONNECT_REASONS ? names[r] : "ended";
}

const char *lk_metric_state_name(lk_metric_state s)
{
    static const char *const names[] = {"none", "live", "jeopardy", "expired"};
    return s >= 0 && s <= LK_SESSION_EXPIRED ? names[s] : "none";
}

/* lk_metrics holds int64_t fields alone: read as an array of them */
_Static_assert(sizeof(lk_metrics) % sizeof(int64_t) == 0, "lk_metrics: int64_t fields only");

void lk_metrics_read(const lk_metrics *m, lk_metrics *out)
{
    const int64_t *from = (const int64_t *)m;
    int64_t *to = (int64_t *)out;
    for (size_t i = 0; i < sizeof *m / sizeof *from; i++)
        to[i] = __atomic_load_n(&from[i], __ATOMIC_RELAXED);
}

void lk_hist_observe(lk_hist *h, int64_t us)
{
#ifdef LK_NO_METRICS
    (void)h;
    (void)us;
#else
    if (us < 0) us = 0;
    int i = 0;
    while (i < LK_HIST_BUCKETS - 1 && us > lk_hist_bounds_us[i]) i++;
    lk_metric_add(&h->n[i], 1);
    lk_metric_add(&h->sum_us, us);
#endif
}

/* The engine's metrics: counters, gauges and latency histograms that the
 * engine thread writes with relaxed atomics and the Lua thread reads at
 * any time, without a lock and without asking the engine (so a scrape
 * costs the engine nothing). Counters only grow; gauges are set; a
 * histogram counts observations per bucket (not cumulative here: the
 * reader sums them) and their total in microseconds. */
#ifndef LK_METRICS_H
#define LK_METRICS_H

#include <stdint.h>

#include "base/errors.h"

/* The kinds of request, by the gateway path they go to. */
typedef enum {
    LK_RQ_RANGE,
    LK_RQ_PUT,
    LK_RQ_DELETE,
    LK_RQ_TXN,
    LK_RQ_GRANT,
    LK_RQ_KEEPALIVE,
    LK_RQ_REVOKE,
    LK_RQ_WATCH,
    LK_RQ_AUTH,
    LK_RQ_OTHER,
    LK_RQ_KINDS
} lk_rq_kind;

/* Why a watch stream was opened again. */
typedef enum {
    LK_RECONNECT_ENDED,     /* etcd or the network ended it */
    LK_RECONNECT_SILENT,    /* it did not prove itself alive in time */
    LK_RECONNECT_FAILOVER,  /* requests moved to another member: it follows */
    LK_RECONNECT_REFUSED,   /* it could not be opened */
    LK_RECONNECT_REASONS
} lk_reconnect_reason;

/* Session states, as the gauge says them. */
typedef enum {
    LK_SESSION_NONE,        /* no lease yet (or none needed yet) */
    LK_SESSION_LIVE,        /* the lease is confirmed */
    LK_SESSION_JEOPARDY,    /* renewals fail: ownership may end soon */
    LK_SESSION_EXPIRED      /* the lease is gone; a new one comes */
} lk_metric_state;

/* Upper bounds of the histogram buckets, in microseconds; the last bucket
 * is +Inf. */
#define LK_HIST_BUCKETS 17
extern const int64_t lk_hist_bounds_us[LK_HIST_BUCKETS - 1];

typedef struct lk_hist {
    int64_t n[LK_HIST_BUCKETS];
    int64_t sum_us;
} lk_hist;

/* Endpoints counted one by one; more share the last slot. */
#define LK_METRIC_ENDPOINTS 16

typedef struct lk_metrics {
    /* counters */
    int64_t requests[LK_RQ_KINDS][2];          /* [kind][0 ok, 1 failed] */
    int64_t errors[LK_ERR_COUNT];              /* failures told to Lua, by code */
    int64_t renewals_sent, renewals_late, renewals_failed;
    int64_t failovers[LK_METRIC_ENDPOINTS];    /* requests moved away from it */
    int64_t reconnects[LK_RECONNECT_REASONS];
    int64_t resyncs;                           /* a watch re-read after a gap */
    int64_t acquisitions, releases;
    int64_t losses[LK_ERR_COUNT];              /* ownership ended, by code */
    int64_t jeopardy;                          /* times the session entered it */
    int64_t folded;                            /* events replaced untaken */
    /* gauges */
    int64_t locks_held, locks_waiting, watches;
    int64_t session_state;                     /* lk_metric_state */
    int64_t lease_deadline_ms;                 /* lk_now_ms clock; 0: none */
    int64_t stream_message_ms;                 /* last stream message; 0: none */
    int64_t current_endpoint;                  /* index into the endpoints */
    /* histograms */
    lk_hist request_seconds[LK_RQ_KINDS];
    lk_hist acquire_seconds;                   /* lock() asked -> granted */
    lk_hist keepalive_seconds;                 /* renewal round trip */
    lk_hist delivery_seconds;                  /* stream frame -> Lua */
} lk_metrics;

/* The kind of a request to path. */
lk_rq_kind lk_rq_kind_of(const char *path);
/* Its name in metrics ("range", "txn", ...). */
const char *lk_rq_kind_name(lk_rq_kind k);
const char *lk_reconnect_name(lk_reconnect_reason r);
const char *lk_metric_state_name(lk_metric_state s);

/* LK_NO_METRICS: a build that counts nothing (make bench measures what
 * counting costs the lock cycle against it); every figure reads 0. */
#ifdef LK_NO_METRICS
static inline void lk_metric_add(int64_t *m, int64_t n) { (void)m; (void)n; }
static inline void lk_metric_set(int64_t *m, int64_t v) { (void)m; (void)v; }
#else
static inline void lk_metric_add(int64_t *m, int64_t n)
{
    __atomic_fetch_add(m, n, __ATOMIC_RELAXED);
}

static inline void lk_metric_set(int64_t *m, int64_t v)
{
    __atomic_store_n(m, v, __ATOMIC_RELAXED);
}
#endif

static inline int64_t lk_metric_get(const int64_t *m)
{
    return __atomic_load_n(m, __ATOMIC_RELAXED);
}

/* Copies every field with an atomic load (any thread). */
void lk_metrics_read(const lk_metrics *m, lk_metrics *out);

/* One observation of us microseconds (negative counts as 0). */
void lk_hist_observe(lk_hist *h, int64_t us);

#endif

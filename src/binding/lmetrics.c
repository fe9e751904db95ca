/* The engine's metrics (metrics.h) as a Lua table, for client:metrics():
 * plain numbers and names; lua/locker/metrics.lua names the families and
 * renders Prometheus' text format. */
#include "binding/lmetrics.h"

#include <math.h>

#include <lauxlib.h>
#include <lua.h>

#include "base/clock.h"
#include "base/errors.h"

static void push_count(lua_State *L, int64_t v)
{
#if LUA_VERSION_NUM >= 503
    lua_pushinteger(L, (lua_Integer)v);
#else
    lua_pushnumber(L, (lua_Number)v);  /* counts stay far below 2^53 */
#endif
}

static void set_count(lua_State *L, const char *field, int64_t v)
{
    push_count(L, v);
    lua_setfield(L, -2, field);
}

/* { buckets = { {le, cumulative count}, ... {math.huge, count} },
 *   sum = seconds, count = n } */
static void push_hist(lua_State *L, const lk_hist *h)
{
    lua_createtable(L, 0, 3);
    lua_createtable(L, LK_HIST_BUCKETS, 0);
    int64_t total = 0;
    for (int i = 0; i < LK_HIST_BUCKETS; i++) {
        total += h->n[i];
        lua_createtable(L, 2, 0);
        lua_pushnumber(L, i < LK_HIST_BUCKETS - 1 ? (lua_Number)lk_hist_bounds_us[i] / 1e6
                                                  : (lua_Number)HUGE_VAL);
        lua_rawseti(L, -2, 1);
        push_count(L, total);
        lua_rawseti(L, -2, 2);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "buckets");
    lua_pushnumber(L, (lua_Number)h->sum_us / 1e6);
    lua_setfield(L, -2, "sum");
    set_count(L, "count", total);
}

/* { name = n } for every error code but "ok" */
static void push_by_code(lua_State *L, const int64_t *counts)
{
    lua_createtable(L, 0, LK_ERR_COUNT);
    for (int c = 1; c < LK_ERR_COUNT; c++) set_count(L, lk_err_name((lk_err)c), counts[c]);
}

void lk_push_metrics(lua_State *L, const lk_metrics *m, int n_endpoints)
{
    lua_createtable(L, 0, 24);
    lua_createtable(L, 0, LK_RQ_KINDS);
    for (int k = 0; k < LK_RQ_KINDS; k++) {
        lua_createtable(L, 0, 2);
        set_count(L, "ok", m->requests[k][0]);
        set_count(L, "failed", m->requests[k][1]);
        lua_setfield(L, -2, lk_rq_kind_name((lk_rq_kind)k));
    }
    lua_setfield(L, -2, "requests");
    lua_createtable(L, 0, LK_RQ_KINDS);
    for (int k = 0; k < LK_RQ_KINDS; k++) {
        if (k == LK_RQ_WATCH) continue;  /* a stream lasts as long as it lasts */
        push_hist(L, &m->request_seconds[k]);
        lua_setfield(L, -2, lk_rq_kind_name((lk_rq_kind)k));
    }
    lua_setfield(L, -2, "request_seconds");
    push_by_code(L, m->errors);
    lua_setfield(L, -2, "errors");
    push_by_code(L, m->losses);
    lua_setfield(L, -2, "losses");
    set_count(L, "renewals_sent", m->renewals_sent);
    set_count(L, "renewals_late", m->renewals_late);
    set_count(L, "renewals_failed", m->renewals_failed);
    int n = n_endpoints < LK_METRIC_ENDPOINTS ? n_endpoints : LK_METRIC_ENDPOINTS;
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        push_count(L, m->failovers[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "failovers");
    lua_createtable(L, 0, LK_RECONNECT_REASONS);
    for (int r = 0; r < LK_RECONNECT_REASONS; r++)
        set_count(L, lk_reconnect_name((lk_reconnect_reason)r), m->reconnects[r]);
    lua_setfield(L, -2, "reconnects");
    set_count(L, "resyncs", m->resyncs);
    set_count(L, "acquisitions", m->acquisitions);
    set_count(L, "releases", m->releases);
    set_count(L, "jeopardy", m->jeopardy);
    set_count(L, "folded", m->folded);
    set_count(L, "locks_held", m->locks_held);
    set_count(L, "locks_waiting", m->locks_waiting);
    set_count(L, "watches", m->watches);
    lua_pushstring(L, lk_metric_state_name((lk_metric_state)m->session_state));
    lua_setfield(L, -2, "session_state");
    int64_t now = lk_now_ms();
    if (m->lease_deadline_ms) {
        lua_pushnumber(L, (lua_Number)(m->lease_deadline_ms - now) / 1e3);
        lua_setfield(L, -2, "lease_deadline_seconds");
    }
    if (m->stream_message_ms) {
        lua_pushnumber(L, (lua_Number)(now - m->stream_message_ms) / 1e3);
        lua_setfield(L, -2, "stream_message_age_seconds");
    }
    set_count(L, "current_endpoint", m->current_endpoint + 1);
    push_hist(L, &m->acquire_seconds);
    lua_setfield(L, -2, "acquire_seconds");
    push_hist(L, &m->keepalive_seconds);
    lua_setfield(L, -2, "keepalive_seconds");
    push_hist(L, &m->delivery_seconds);
    lua_setfield(L, -2, "delivery_seconds");
}

/* locker.core: the Lua binding, the only file on the Lua side of the thread
 * boundary. It copies Lua values into commands, hands them to the engine,
 * and turns the engine's events into Lua tables. It never blocks except in
 * poll(), and never stores a lua_State anywhere. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "binding/compat.h"
#include "engine/cache.h"
#include "base/clock.h"
#include "engine/engine.h"
#include "binding/lmetrics.h"

#define CLIENT_MT "locker.core.client"
#define OWNERSHIP_MT "locker.core.ownership"
#define MAX_POLL_FDS 256

typedef struct {
    lk_engine *engine;   /* NULL once closed (and freed) */
    lk_stats final;      /* the counters when it was closed */
    lk_metrics final_metrics;   /* and the metrics (zeros until then) */
    int n_endpoints;
} client_box;

typedef struct {
    lk_ownership *ownership;  /* one reference */
} ownership_box;

/* Revisions and tokens are int64. On Lua 5.1/LuaJIT a number holds 2^53
 * exactly; beyond that the value goes out as a decimal string. */
static void push_int64(lua_State *L, int64_t v)
{
#if LUA_VERSION_NUM >= 503
    lua_pushinteger(L, (lua_Integer)v);
#else
    if (v <= (INT64_C(1) << 53) && v >= -(INT64_C(1) << 53)) {
        lua_pushnumber(L, (lua_Number)v);
    } else {
        char s[32];
        snprintf(s, sizeof s, "%" PRId64, v);
        lua_pushstring(L, s);
    }
#endif
}

static uint64_t check_id(lua_State *L, int i)
{
    lua_Number n = luaL_checknumber(L, i);
    return (uint64_t)n;
}

/* A client made in another process (before a fork) raises at every use
 * but close: its cache and its engine belong to its maker. */
static client_box *check_box(lua_State *L)
{
    client_box *b = luaL_checkudata(L, 1, CLIENT_MT);
    if (b->engine && lk_engine_foreign(b->engine))
        luaL_error(L, "locker: client made in another process (before a fork) "
                   "is used here: make one client per process (nginx: in "
                   "init_worker_by_lua, not init_by_lua)");
    return b;
}

static lk_engine *check_client(lua_State *L)
{
    client_box *b = check_box(L);
    if (!b->engine || lk_engine_closed(b->engine))
        luaL_error(L, "locker: client is closed");
    return b->engine;
}

/* The optional string field k of the table at index t (NULL: absent). */
static char *opt_string(lua_State *L, int t, const char *k)
{
    lua_getfield(L, t, k);
    const char *v = lua_isnil(L, -1) ? NULL : luaL_checkstring(L, -1);
    lua_pop(L, 1);  /* still referenced by the table */
    return (char *)v;
}

/* ---- making a client ---- */

/* core.new(endpoints, prefix, ttl_s, timeout_ms, margin_ms [, secure])
 * -> client | nil, msg, code. secure: { cacert, cert, key, insecure,
 * proxy_env, user, password, transport } (checked by the facade). */
static int l_new(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    size_t prefix_len;
    const char *prefix = luaL_checklstring(L, 2, &prefix_len);
    lk_config cfg = {0};
    cfg.prefix = (char *)prefix;
    cfg.prefix_len = prefix_len;
    cfg.ttl = (int64_t)luaL_checknumber(L, 3);
    cfg.timeout_ms = (int64_t)luaL_checknumber(L, 4);
    cfg.margin_ms = (int64_t)luaL_checknumber(L, 5);
    luaL_argcheck(L, cfg.ttl >= 1 && cfg.timeout_ms >= 1 && cfg.margin_ms >= 0 &&
                  cfg.margin_ms < cfg.ttl * 1000, 3, "ttl, timeout or margin out of range");
    int n = (int)lua_rawlen(L, 1);
    luaL_argcheck(L, n > 0, 1, "no endpoints");
    cfg.endpoints = lua_newuserdata(L, sizeof(char *) * (size_t)n);
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, 1, i + 1);
        cfg.endpoints[i] = (char *)luaL_checkstring(L, -1);
        lua_pop(L, 1);  /* still referenced by the table */
    }
    cfg.n_endpoints = n;
    cfg.lock_delay_ms = (int64_t)luaL_optnumber(L, 7, 0);
    luaL_argcheck(L, cfg.lock_delay_ms >= 0, 7, "lock_delay out of range");
    if (lua_istable(L, 6)) {
        cfg.cacert = opt_string(L, 6, "cacert");
        cfg.cert = opt_string(L, 6, "cert");
        cfg.key = opt_string(L, 6, "key");
        cfg.user = opt_string(L, 6, "user");
        cfg.password = opt_string(L, 6, "password");
        lua_getfield(L, 6, "insecure");
        cfg.insecure = lua_toboolean(L, -1);
        lua_getfield(L, 6, "proxy_env");
        cfg.proxy_env = lua_toboolean(L, -1);
        lua_getfield(L, 6, "transport");
        const char *t = lua_tostring(L, -1);
        cfg.transport = t && !strcmp(t, "grpc") ? LK_TRANSPORT_GRPC : LK_TRANSPORT_GATEWAY;
        lua_pop(L, 3);
    }
    client_box *b = lua_newuserdata(L, sizeof *b);
    b->engine = NULL;  /* closed until made: __gc sees a consistent box */
    memset(&b->final_metrics, 0, sizeof b->final_metrics);
    b->n_endpoints = n;
    luaL_setmetatable(L, CLIENT_MT);
    char err[256];
    b->engine = lk_engine_new(&cfg, err, sizeof err);
    if (!b->engine) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        lua_pushstring(L, lk_err_name(LK_ERR_NOMEM));
        return 3;
    }
    return 1;
}

static int submit(lua_State *L, lk_engine *e, lk_cmd *c)
{
    char err[256];
    uint64_t id = c->id = lk_engine_next_id(e);
    if (lk_engine_submit(e, c, err, sizeof err))
        return luaL_error(L, "locker: %s", err);
    lua_pushnumber(L, (lua_Number)id);
    return 1;
}

static lk_cmd *new_cmd(lua_State *L, lk_cmd_kind kind)
{
    lk_cmd *c = lk_cmd_new(kind);
    if (!c) luaL_error(L, "locker: out of memory");
    return c;
}

/* Copies a Lua string into malloc'd memory: nothing crosses by reference. */
static int copy_string(lua_State *L, int i, char **out, size_t *len)
{
    const char *s = luaL_checklstring(L, i, len);
    *out = malloc(*len + 1);
    if (!*out) return -1;
    memcpy(*out, s, *len);
    (*out)[*len] = '\0';
    return 0;
}

/* ---- commands: each is handed to the engine, its answer comes as an event ---- */

/* client:lock(name, value, timeout_ms (<0: none), wait, keep, background,
 * limit (a semaphore's N; 1: a lock))
 * -> id, ownership (owned(), token(), valid_for(): no I/O) */
static int l_lock(lua_State *L)
{
    lk_engine *e = check_client(L);
    luaL_checkstring(L, 2);
    luaL_checkstring(L, 3);
    int64_t timeout_ms = (int64_t)luaL_checknumber(L, 4);
    ownership_box *ob = lua_newuserdata(L, sizeof *ob);
    ob->ownership = NULL;
    luaL_setmetatable(L, OWNERSHIP_MT);
    lk_cmd *c = new_cmd(L, LK_CMD_LOCK);
    if (copy_string(L, 2, &c->name, &c->name_len) ||
        copy_string(L, 3, &c->value, &c->value_len) ||
        !(ob->ownership = lk_ownership_new())) {
        lk_cmd_free(c);
        return luaL_error(L, "locker: out of memory");
    }
    c->ownership = lk_ownership_ref(ob->ownership);
    c->timeout_ms = timeout_ms;
    c->wait = lua_toboolean(L, 5);
    c->keep = lua_toboolean(L, 6);
    c->background = lua_toboolean(L, 7);
    c->limit = (int)luaL_optinteger(L, 8, 1);
    if (c->limit < 1 || c->limit > LK_MAX_LIMIT) {
        lk_cmd_free(c);
        return luaL_error(L, "locker: limit out of range");
    }
    submit(L, e, c);
    lua_pushvalue(L, -2);
    return 2;
}

/* client:set(lock_id, value) -> id */
static int l_set(lua_State *L)
{
    lk_engine *e = check_client(L);
    uint64_t target = check_id(L, 2);
    luaL_checkstring(L, 3);
    lk_cmd *c = new_cmd(L, LK_CMD_SET);  /* nothing may raise after this */
    c->target = target;
    if (copy_string(L, 3, &c->value, &c->value_len)) {
        lk_cmd_free(c);
        return luaL_error(L, "locker: out of memory");
    }
    return submit(L, e, c);
}

/* client:put(lock_id, key, value) / client:delete(lock_id, key) -> id: a
 * write of any key, guarded by the lock's key */
static int guarded_cmd(lua_State *L, lk_cmd_kind kind)
{
    lk_engine *e = check_client(L);
    uint64_t target = check_id(L, 2);
    luaL_checkstring(L, 3);
    if (kind == LK_CMD_PUT) luaL_checkstring(L, 4);
    lk_cmd *c = new_cmd(L, kind);  /* nothing may raise after this but OOM */
    c->target = target;
    if (copy_string(L, 3, &c->name, &c->name_len) ||
        (kind == LK_CMD_PUT && copy_string(L, 4, &c->value, &c->value_len))) {
        lk_cmd_free(c);
        return luaL_error(L, "locker: out of memory");
    }
    return submit(L, e, c);
}

static int l_put(lua_State *L)
{
    return guarded_cmd(L, LK_CMD_PUT);
}

static int l_delete(lua_State *L)
{
    return guarded_cmd(L, LK_CMD_DELETE);
}

/* client:release(lock_id) -> id */
static int l_release(lua_State *L)
{
    lk_engine *e = check_client(L);
    uint64_t target = check_id(L, 2);
    lk_cmd *c = new_cmd(L, LK_CMD_RELEASE);
    c->target = target;
    return submit(L, e, c);
}

/* A command naming a lock (GET, WATCH, UNWATCH), with the name copied. */
static lk_cmd *name_cmd(lua_State *L, lk_cmd_kind kind)
{
    luaL_checkstring(L, 2);
    lk_cmd *c = new_cmd(L, kind);  /* nothing may raise after this but OOM */
    if (copy_string(L, 2, &c->name, &c->name_len)) {
        lk_cmd_free(c);
        luaL_error(L, "locker: out of memory");
    }
    return c;
}

/* client:get(name) -> id */
static int l_get(lua_State *L)
{
    lk_engine *e = check_client(L);
    return submit(L, e, name_cmd(L, LK_CMD_GET));
}

/* client:read(key) -> id: any key's value and mod revision */
static int l_read(lua_State *L)
{
    lk_engine *e = check_client(L);
    return submit(L, e, name_cmd(L, LK_CMD_READ));
}

/* client:watch(name) -> id: follow name's owner (events carry the id) */
static int l_watch(lua_State *L)
{
    lk_engine *e = check_client(L);
    lk_cmd *c = name_cmd(L, LK_CMD_WATCH);
    /* known as watched at once, so cached() says "pending", not "not_watched" */
    lk_cache_watch(lk_engine_cache(e), c->name, c->name_len);
    return submit(L, e, c);
}

/* client:watch_all() -> id: every name under the prefix (events carry the
 * id and the name); client:unwatch_all() -> id */
static int l_watch_all(lua_State *L)
{
    lk_engine *e = check_client(L);
    return submit(L, e, new_cmd(L, LK_CMD_WATCH_ALL));
}

static int l_unwatch_all(lua_State *L)
{
    lk_engine *e = check_client(L);
    return submit(L, e, new_cmd(L, LK_CMD_UNWATCH_ALL));
}

/* client:unwatch(name) -> id */
static int l_unwatch(lua_State *L)
{
    lk_engine *e = check_client(L);
    lk_cmd *c = name_cmd(L, LK_CMD_UNWATCH);
    lk_cache_forget(lk_engine_cache(e), c->name, c->name_len);
    return submit(L, e, c);
}

/* client:list() -> id; the answer's kvs: every key under the prefix */
static int l_list(lua_State *L)
{
    lk_engine *e = check_client(L);
    return submit(L, e, new_cmd(L, LK_CMD_LIST));
}

/* ---- reads without I/O: the engine's published state ---- */

/* client:cached(name) -> value, token, revision | nil (nobody holds it) |
 * nil, msg, "pending" / "not_watched". No I/O. */
static int l_cached(lua_State *L)
{
    client_box *b = check_box(L);
    size_t len;
    const char *name = luaL_checklstring(L, 2, &len);
    if (!b->engine || lk_engine_closed(b->engine)) {
        lua_pushnil(L);
        lua_pushliteral(L, "client is closed");
        lua_pushstring(L, lk_err_name(LK_ERR_CLOSED));
        return 3;
    }
    lk_blob *v;
    int64_t token = 0, revision = 0;
    lk_session_view view;
    lk_engine_session(b->engine, &view);
    /* age: seconds since the stream last showed it is live */
    lua_Number age = view.heard_at ? (lua_Number)(lk_now_ms() - view.heard_at) / 1000 : -1;
    switch (lk_cache_get(lk_engine_cache(b->engine), name, len, &v, &token,
                         &revision)) {
    case LK_CACHE_HELD:
        lua_pushlstring(L, v->data, v->len);  /* may raise: no mutex held */
        lk_blob_unref(v);
        push_int64(L, token);
        push_int64(L, revision);
        if (age >= 0) lua_pushnumber(L, age);
        else lua_pushnil(L);
        return 4;
    case LK_CACHE_GONE:
        lua_pushnil(L);
        lua_pushnil(L);
        lua_pushnil(L);
        if (age >= 0) lua_pushnumber(L, age);
        else lua_pushnil(L);
        return 4;
    case LK_CACHE_PENDING:
        lua_pushnil(L);
        lua_pushfstring(L, "'%s' is watched but not known yet", name);
        lua_pushstring(L, lk_err_name(LK_ERR_PENDING));
        return 3;
    default:
        lua_pushnil(L);
        lua_pushfstring(L, "'%s' is not watched by this client", name);
        lua_pushstring(L, lk_err_name(LK_ERR_NOT_WATCHED));
        return 3;
    }
}

/* ---- waking the Lua side: the eventfd, or the wake-up socket ---- */

/* client:fd() -> the eventfd, readable when events wait */
static int l_fd(lua_State *L)
{
    client_box *b = check_box(L);
    lua_pushinteger(L, b->engine ? lk_engine_fd(b->engine) : -1);
    return 1;
}

/* client:wake_listen() -> path of the wake-up socket to connect to */
static int l_wake_listen(lua_State *L)
{
    lk_engine *e = check_client(L);
    char err[256];
    const char *path = lk_engine_wake_listen(e, err, sizeof err);
    if (!path) return luaL_error(L, "locker: %s", err);
    lua_pushstring(L, path);
    return 1;
}

/* client:wake_accept() -> true | nil, msg: after connecting to the path */
static int l_wake_accept(lua_State *L)
{
    lk_engine *e = check_client(L);
    char err[256];
    if (lk_engine_wake_accept(e, err, sizeof err)) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- reads without I/O, continued: counters and the session ---- */

/* client:stats() -> { requests =, keepalives =, stream_events =,
 * stream_connects =, authentications = }; after close, the final counts */
static int l_stats(lua_State *L)
{
    client_box *b = check_box(L);
    lk_stats s = b->final;
    if (b->engine) lk_engine_stats(b->engine, &s);
    lua_createtable(L, 0, 4);
    push_int64(L, s.requests);
    lua_setfield(L, -2, "requests");
    push_int64(L, s.keepalives);
    lua_setfield(L, -2, "keepalives");
    push_int64(L, s.stream_events);
    lua_setfield(L, -2, "stream_events");
    push_int64(L, s.stream_connects);
    lua_setfield(L, -2, "stream_connects");
    push_int64(L, s.authentications);
    lua_setfield(L, -2, "authentications");
    return 1;
}

/* client:metrics() -> the engine's metrics (lmetrics.c); after close,
 * the last ones */
static int l_metrics(lua_State *L)
{
    client_box *b = check_box(L);
    lk_metrics m;
    if (b->engine) lk_engine_metrics(b->engine, &m);
    else m = b->final_metrics;
    lk_push_metrics(L, &m, b->n_endpoints);
    return 1;
}

/* client:lease() -> the session lease ID in hex (as etcdctl shows it), or nil */
static int l_lease(lua_State *L)
{
    client_box *b = check_box(L);
    int64_t id = b->engine ? lk_engine_lease(b->engine) : 0;
    if (!id) {
        lua_pushnil(L);
        return 1;
    }
    char s[32];
    snprintf(s, sizeof s, "%" PRIx64, (uint64_t)id);
    lua_pushstring(L, s);
    return 1;
}

/* client:session() -> { lease = hex | nil, state = "none" | "ok" |
 * "jeopardy" | "lost", valid_for = seconds to the local deadline | nil },
 * computed from the published times and the clock now. */
static int l_session(lua_State *L)
{
    client_box *b = check_box(L);
    lk_session_view v = {0};
    if (b->engine) lk_engine_session(b->engine, &v);
    int64_t now = lk_now_ms();
    const char *state = "none";
    lua_createtable(L, 0, 3);
    if (v.lease) {
        char s[32];
        snprintf(s, sizeof s, "%" PRIx64, (uint64_t)v.lease);
        lua_pushstring(L, s);
        lua_setfield(L, -2, "lease");
        state = now < v.jeopardy_at ? "ok" : now < v.expires ? "jeopardy" : "lost";
        int64_t left = v.deadline - now;
        lua_pushnumber(L, left > 0 ? (lua_Number)left / 1000 : 0);
        lua_setfield(L, -2, "valid_for");
    } else if (v.lost) {
        state = "lost";
    }
    lua_pushstring(L, state);
    lua_setfield(L, -2, "state");
    if (b->engine) {
        lua_pushstring(L, lk_engine_endpoint(b->engine, v.endpoint));
        lua_setfield(L, -2, "endpoint");
        lua_pushboolean(L, v.stream_up);
        lua_setfield(L, -2, "stream");
    }
    return 1;
}

/* ---- events: the engine's news as Lua tables ---- */

static void push_kvs(lua_State *L, const lk_event *ev)
{
    lua_createtable(L, (int)ev->n_kvs, 0);
    for (size_t i = 0; i < ev->n_kvs; i++) {
        const lk_event_kv *kv = &ev->kvs[i];
        lua_createtable(L, 0, 4);
        lua_pushlstring(L, kv->key, kv->key_len);
        lua_setfield(L, -2, "key");
        lua_pushlstring(L, kv->key + kv->name_off, kv->name_len);
        lua_setfield(L, -2, "name");
        lua_pushlstring(L, kv->value, kv->value_len);
        lua_setfield(L, -2, "value");
        push_int64(L, kv->create_rev);
        lua_setfield(L, -2, "create_revision");
        push_int64(L, kv->mod_rev);
        lua_setfield(L, -2, "mod_revision");
        char hex[32];
        snprintf(hex, sizeof hex, "%" PRIx64, (uint64_t)kv->lease);
        lua_pushstring(L, hex);
        lua_setfield(L, -2, "lease");
        if (kv->limit_key) {
            lua_pushboolean(L, 1);
            lua_setfield(L, -2, "limit_key");
        }
        lua_rawseti(L, -2, (int)i + 1);
    }
}

static void push_event(lua_State *L, const lk_event *ev)
{
    lua_createtable(L, 0, 8);
    lua_pushstring(L, ev->kind == LK_EV_OWNED ? "owned"
                    : ev->kind == LK_EV_WATCH ? "watch"
                    : ev->kind == LK_EV_NOTE ? "note" : "result");
    lua_setfield(L, -2, "kind");
    lua_pushnumber(L, (lua_Number)ev->id);
    lua_setfield(L, -2, "id");
    if (ev->kind == LK_EV_OWNED) {
        lua_pushboolean(L, ev->owned);
        lua_setfield(L, -2, "owned");
    } else {
        lua_pushboolean(L, ev->ok);
        lua_setfield(L, -2, "ok");
    }
    if (ev->token) {
        push_int64(L, ev->token);
        lua_setfield(L, -2, "token");
    }
    if (ev->revision) {
        push_int64(L, ev->revision);
        lua_setfield(L, -2, "revision");
    }
    if (ev->has_value) {
        lua_pushlstring(L, ev->value ? ev->value : "", ev->value_len);
        lua_setfield(L, -2, "value");
    }
    if (ev->key) {
        lua_pushlstring(L, ev->key, ev->key_len);
        lua_setfield(L, -2, "key");
    }
    if (ev->name) {
        lua_pushlstring(L, ev->name, ev->name_len);
        lua_setfield(L, -2, "name");
    }
    if (ev->kvs || ev->list) {
        push_kvs(L, ev);
        lua_setfield(L, -2, "kvs");
    }
    if (ev->resync) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "resync");
    }
    if (ev->skipped) {
        lua_pushinteger(L, ev->skipped);
        lua_setfield(L, -2, "skipped");
    }
    if (ev->code) {
        lua_pushstring(L, lk_err_name(ev->code));
        lua_setfield(L, -2, "code");
    }
    if (ev->msg) {
        lua_pushstring(L, ev->msg);
        lua_setfield(L, -2, "msg");
    }
}

/* Pushes an array of the events the engine has for the Lua side. */
static void push_events(lua_State *L, lk_engine *e)
{
    lua_newtable(L);
    if (!e) return;
    lk_event *ev = lk_engine_take_events(e);
    int i = 0;
    while (ev) {
        lk_event *next = ev->next;
        lk_engine_delivered(e, ev);
        push_event(L, ev);
        lua_rawseti(L, -2, ++i);
        lk_event_free(ev);
        ev = next;
    }
}

/* client:events() -> array of event tables (possibly empty); after close,
 * an empty one (close() returned the last). */
static int l_events(lua_State *L)
{
    client_box *b = check_box(L);
    push_events(L, b->engine);
    return 1;
}

/* ---- the end of a client ---- */

/* client:close(), __close and __gc: one idempotent function that never
 * raises (as liolib's io_gc and f_close share aux_close). It stops the
 * engine (the lease is revoked, the thread joined), keeps the final
 * counters for stats(), frees it, and returns the events it still had:
 * the answers to calls that were waiting. */
static int l_close(lua_State *L)
{
    client_box *b = luaL_checkudata(L, 1, CLIENT_MT);
    lk_engine *e = b->engine;
    b->engine = NULL;
    if (e) {
        lk_engine_close(e);
        lk_engine_stats(e, &b->final);
        lk_engine_metrics(e, &b->final_metrics);
    }
    push_events(L, e);
    lk_engine_free(e);
    return 1;
}

static int l_closed(lua_State *L)
{
    client_box *b = luaL_checkudata(L, 1, CLIENT_MT);
    lua_pushboolean(L, !b->engine || lk_engine_closed(b->engine));
    return 1;
}

/* ---- a lock's ownership, read by the Lua thread ---- */

/* ownership:owned() -> boolean, compared with the clock now */
static int l_ownership_owned(lua_State *L)
{
    ownership_box *ob = luaL_checkudata(L, 1, OWNERSHIP_MT);
    lua_pushboolean(L, ob->ownership && lk_ownership_left(ob->ownership, NULL) > 0);
    return 1;
}

/* ownership:token() -> the fencing token while owned, else nil */
static int l_ownership_token(lua_State *L)
{
    ownership_box *ob = luaL_checkudata(L, 1, OWNERSHIP_MT);
    int64_t t = 0;
    if (ob->ownership && lk_ownership_left(ob->ownership, &t) > 0 && t) push_int64(L, t);
    else lua_pushnil(L);
    return 1;
}

/* ownership:valid_for() -> seconds of ownership left, or nil when not owned */
static int l_ownership_valid_for(lua_State *L)
{
    ownership_box *ob = luaL_checkudata(L, 1, OWNERSHIP_MT);
    int64_t left = ob->ownership ? lk_ownership_left(ob->ownership, NULL) : 0;
    if (left > 0) lua_pushnumber(L, (lua_Number)left / 1000);
    else lua_pushnil(L);
    return 1;
}

static int l_ownership_gc(lua_State *L)
{
    ownership_box *ob = luaL_checkudata(L, 1, OWNERSHIP_MT);
    lk_ownership_unref(ob->ownership);
    ob->ownership = NULL;
    return 0;
}

/* ---- the scheduler's clock and poll ---- */

/* core.poll(fds, timeout_s) -> true when one of fds is readable. A timeout
 * below 0 waits forever. Restarts after signals until the timeout. */
static int l_poll(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    double timeout = luaL_optnumber(L, 2, -1);
    struct pollfd fds[MAX_POLL_FDS];
    int n = (int)lua_rawlen(L, 1);
    luaL_argcheck(L, n <= MAX_POLL_FDS, 1, "too many fds");
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, 1, i + 1);
        fds[i].fd = (int)luaL_checknumber(L, -1);
        fds[i].events = POLLIN;
        fds[i].revents = 0;
        lua_pop(L, 1);
    }
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        int ms = -1;
        if (timeout >= 0) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            double left = timeout - ((double)(now.tv_sec - start.tv_sec) +
                                     (double)(now.tv_nsec - start.tv_nsec) / 1e9);
            ms = left > 0 ? (int)(left * 1000 + 0.999) : 0;
        }
        int rc = poll(fds, (nfds_t)n, ms);
        if (rc >= 0) {
            lua_pushboolean(L, rc > 0);
            return 1;
        }
        if (errno != EINTR) return luaL_error(L, "locker: poll: %s", strerror(errno));
    }
}

/* core.time() -> wall-clock seconds (with fractions), for timestamps */
static int l_time(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

/* core.now() -> monotonic seconds */
static int l_now(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

static const luaL_Reg client_methods[] = {
    {"lock", l_lock},
    {"set", l_set},
    {"release", l_release},
    {"put", l_put},
    {"delete", l_delete},
    {"get", l_get},
    {"read", l_read},
    {"watch", l_watch},
    {"unwatch", l_unwatch},
    {"watch_all", l_watch_all},
    {"unwatch_all", l_unwatch_all},
    {"cached", l_cached},
    {"list", l_list},
    {"wake_listen", l_wake_listen},
    {"wake_accept", l_wake_accept},
    {"stats", l_stats},
    {"metrics", l_metrics},
    {"fd", l_fd},
    {"lease", l_lease},
    {"session", l_session},
    {"events", l_events},
    {"close", l_close},
    {"closed", l_closed},
    {NULL, NULL}
};

static const luaL_Reg ownership_methods[] = {
    {"owned", l_ownership_owned},
    {"token", l_ownership_token},
    {"valid_for", l_ownership_valid_for},
    {NULL, NULL}
};

static const luaL_Reg functions[] = {
    {"new", l_new},
    {"poll", l_poll},
    {"now", l_now},
    {"time", l_time},
    {NULL, NULL}
};

static void new_class(lua_State *L, const char *name, const luaL_Reg *methods,
                      lua_CFunction gc)
{
    luaL_newmetatable(L, name);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
}

__attribute__((visibility("default"))) int luaopen_locker_core(lua_State *L);

int luaopen_locker_core(lua_State *L)
{
    lk_engine_global_init();
    new_class(L, CLIENT_MT, client_methods, l_close);
    luaL_getmetatable(L, CLIENT_MT);
    lua_pushcfunction(L, l_close);
    lua_setfield(L, -2, "__close");
    lua_pop(L, 1);
    new_class(L, OWNERSHIP_MT, ownership_methods, l_ownership_gc);
    luaL_newlib(L, functions);
    /* errors: every code a failure can carry, in the engine's order */
    lua_createtable(L, LK_ERR_COUNT - 1, 0);
    for (int e = LK_OK + 1; e < LK_ERR_COUNT; e++) {
        lua_pushstring(L, lk_err_name((lk_err)e));
        lua_rawseti(L, -2, e);
    }
    lua_setfield(L, -2, "errors");
    return 1;
}

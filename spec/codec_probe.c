/* codec_probe: a test-only Lua binding of the engine's pure codecs (base64,
 * the gateway's request bodies and answers, the key layout, what a TLS
 * failure means), so spec/codec_spec.lua can check them with no etcd
 * running, as lua-cjson and LPeg test theirs. Never installed; the module
 * users load is locker.core. int64 values cross as decimal strings (lease
 * IDs pass 2^53). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "../src/base/b64.h"
#include "../src/transport/gateway.h"
#include "../src/transport/gateway_json.h"
#include "../src/etcd/recipes.h"
#include "../src/engine/keys.h"
#include "../src/transport/tls.h"

static int64_t arg_int64(lua_State *L, int i)
{
    const char *s = luaL_checkstring(L, i);
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || end == s) luaL_argerror(L, i, "a decimal int64 string");
    return (int64_t)v;
}

static void push_int64(lua_State *L, int64_t v)
{
    char s[32];
    snprintf(s, sizeof s, "%" PRId64, v);
    lua_pushstring(L, s);
}

static lk_bytes arg_bytes(lua_State *L, int i)
{
    size_t n;
    const char *p = luaL_checklstring(L, i, &n);
    return (lk_bytes){p, n};
}

/* Pushes the buffer (rc 0) or raises; frees it either way. */
static int push_buf(lua_State *L, lk_buf *b, int rc)
{
    if (rc) {
        lk_buf_free(b);
        return luaL_error(L, "codec failed (no memory, or refused input)");
    }
    lua_pushlstring(L, b->data ? b->data : "", b->len);
    lk_buf_free(b);
    return 1;
}

static int b64_encode(lua_State *L)
{
    lk_bytes in = arg_bytes(L, 1);
    lk_buf out = {0};
    return push_buf(L, &out, lk_b64_encode(&out, in.p, in.n));
}

static int b64_decode(lua_State *L)
{
    lk_bytes in = arg_bytes(L, 1);
    lk_buf out = {0};
    if (lk_b64_decode(&out, in.p, in.n)) {
        lk_buf_free(&out);
        lua_pushnil(L);
        return 1;
    }
    return push_buf(L, &out, 0);
}

/* body(kind, ...) -> the JSON body the engine would send: a recipe of
 * etcd/recipes.c encoded by transport/gateway.c */
static int body(lua_State *L)
{
    const char *kind = luaL_checkstring(L, 1);
    lk_buf b = {0};
    lk_txn_build t;
    lk_range_req q;
    int rc;
    if (!strcmp(kind, "grant")) rc = lk_etcd_grant_body(&b, arg_int64(L, 2));
    else if (!strcmp(kind, "lease")) rc = lk_etcd_lease_body(&b, arg_int64(L, 2));
    else if (!strcmp(kind, "auth"))
        rc = lk_etcd_auth_body(&b, luaL_checkstring(L, 2), luaL_checkstring(L, 3));
    else if (!strcmp(kind, "delete"))
        rc = lk_gw_delete_body(&b, &(lk_delete_req){arg_bytes(L, 2)});
    else if (!strcmp(kind, "dir")) rc = (q = lk_recipe_dir(arg_bytes(L, 2)), lk_gw_range_body(&b, &q));
    else if (!strcmp(kind, "owner")) rc = (q = lk_recipe_owner(arg_bytes(L, 2)), lk_gw_range_body(&b, &q));
    else if (!strcmp(kind, "try"))
        rc = lk_gw_txn_body(&b, lk_recipe_try(&t, arg_bytes(L, 2), arg_bytes(L, 3), arg_int64(L, 4),
                                              arg_bytes(L, 5)));
    else if (!strcmp(kind, "acquire"))
        rc = lk_gw_txn_body(&b, lk_recipe_acquire(&t, arg_bytes(L, 2), arg_bytes(L, 3),
                                                  arg_int64(L, 4), arg_bytes(L, 5)));
    else if (!strcmp(kind, "check"))
        rc = lk_gw_txn_body(&b, lk_recipe_check(&t, arg_bytes(L, 2), arg_int64(L, 3),
                                                arg_bytes(L, 4), arg_bytes(L, 5)));
    else if (!strcmp(kind, "set"))
        rc = lk_gw_txn_body(&b, lk_recipe_set(&t, arg_bytes(L, 2), arg_bytes(L, 3),
                                              arg_int64(L, 4), arg_int64(L, 5)));
    else if (!strcmp(kind, "delete_if"))
        rc = lk_gw_txn_body(&b, lk_recipe_delete_if(&t, arg_bytes(L, 2), arg_int64(L, 3)));
    else if (!strcmp(kind, "put"))
        rc = lk_gw_put_body(&b, &(lk_put_req){arg_bytes(L, 2), arg_bytes(L, 3),
                                              lua_isnoneornil(L, 4) ? 0 : arg_int64(L, 4)});
    else if (!strcmp(kind, "count")) rc = (q = lk_recipe_count(arg_bytes(L, 2)), lk_gw_range_body(&b, &q));
    else if (!strcmp(kind, "watch"))
        rc = lk_gw_watch_body(&b, &(lk_watch_req){arg_bytes(L, 2), 1, arg_int64(L, 3)});
    else return luaL_argerror(L, 1, "unknown body kind");
    return push_buf(L, &b, rc);
}

/* answer(body, http_status) -> { ok, grpc, msg, revision, kvs = { {key,
 * value, create_revision, lease}... }, bad_kvs, ints = { field = value or
 * false (malformed) } for the fields named in the optional list arg 3 } */
static int answer(lua_State *L)
{
    size_t n;
    const char *text = luaL_optlstring(L, 1, "", &n);
    long status = (long)luaL_checkinteger(L, 2);
    char msg[512];
    int grpc;
    cJSON *root = lk_etcd_parse(text, n, status, msg, sizeof msg, &grpc);
    lua_newtable(L);
    lua_pushboolean(L, root != NULL);
    lua_setfield(L, -2, "ok");
    if (!root) {
        lua_pushinteger(L, grpc);
        lua_setfield(L, -2, "grpc");
        lua_pushstring(L, msg);
        lua_setfield(L, -2, "msg");
        return 1;
    }
    push_int64(L, lk_etcd_revision(root));
    lua_setfield(L, -2, "revision");
    const cJSON *kvs;
    if (lk_etcd_kvs(root, &kvs)) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "bad_kvs");
    } else {
        lua_newtable(L);
        const cJSON *item;
        lk_kv kv = {0};
        int i = 0;
        cJSON_ArrayForEach(item, kvs) {
            lua_newtable(L);
            if (lk_etcd_kv(item, &kv)) {
                lua_pushboolean(L, 1);
                lua_setfield(L, -2, "bad");
            } else {
                lua_pushlstring(L, kv.key.data ? kv.key.data : "", kv.key.len);
                lua_setfield(L, -2, "key");
                lua_pushlstring(L, kv.value.data ? kv.value.data : "", kv.value.len);
                lua_setfield(L, -2, "value");
                push_int64(L, kv.create_rev);
                lua_setfield(L, -2, "create_revision");
                push_int64(L, kv.lease);
                lua_setfield(L, -2, "lease");
            }
            lua_rawseti(L, -2, ++i);
        }
        lk_etcd_kv_free(&kv);
        lua_setfield(L, -2, "kvs");
    }
    if (lua_istable(L, 3)) {
        lua_newtable(L);
        for (int i = 1;; i++) {
            lua_rawgeti(L, 3, i);
            if (lua_isnil(L, -1)) {
                lua_pop(L, 1);
                break;
            }
            const char *field = lua_tostring(L, -1);
            int64_t v;
            int rc = lk_etcd_int_field(root, field, &v);
            if (rc < 0) lua_pushboolean(L, 0);
            else push_int64(L, rc ? v : 0);
            lua_setfield(L, -3, field);
            lua_pop(L, 1);
        }
        lua_setfield(L, -2, "ints");
    }
    cJSON_Delete(root);
    return 1;
}

static void push_kv(lua_State *L, const lk_kv *kv)
{
    lua_newtable(L);
    lua_pushlstring(L, kv->key.data ? kv->key.data : "", kv->key.len);
    lua_setfield(L, -2, "key");
    lua_pushlstring(L, kv->value.data ? kv->value.data : "", kv->value.len);
    lua_setfield(L, -2, "value");
    push_int64(L, kv->create_rev);
    lua_setfield(L, -2, "create_revision");
    push_int64(L, kv->mod_rev);
    lua_setfield(L, -2, "mod_revision");
    push_int64(L, kv->lease);
    lua_setfield(L, -2, "lease");
}

static void push_range(lua_State *L, const lk_range_resp *r)
{
    lua_newtable(L);
    push_int64(L, r->revision);
    lua_setfield(L, -2, "revision");
    push_int64(L, r->count);
    lua_setfield(L, -2, "count");
    lua_newtable(L);
    for (size_t i = 0; i < r->n; i++) {
        push_kv(L, &r->kvs[i]);
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_setfield(L, -2, "kvs");
}

/* decode(kind, body, http_status) -> the typed answer transport/gateway.c
 * decodes (kind: "range", "txn", "lease", "plain", "watch"), as a table:
 * { rc = "ok" | "refused" | "malformed", msg =, grpc =, ... its fields } */
static int decode(lua_State *L)
{
    const char *kind = luaL_checkstring(L, 1);
    size_t n;
    const char *body = luaL_optlstring(L, 2, "", &n);
    long status = (long)luaL_checkinteger(L, 3);
    char msg[512] = "";
    int grpc = -1, rc;
    lua_newtable(L);
    if (!strcmp(kind, "range")) {
        lk_range_resp r;
        rc = lk_gw_range(body, n, status, &r, msg, sizeof msg, &grpc);
        if (rc == LK_GW_OK) {
            push_range(L, &r);
            lua_setfield(L, -2, "range");
        }
        lk_range_resp_free(&r);
    } else if (!strcmp(kind, "txn")) {
        lk_txn_resp t;
        rc = lk_gw_txn(body, n, status, &t, msg, sizeof msg, &grpc);
        if (rc == LK_GW_OK) {
            push_int64(L, t.revision);
            lua_setfield(L, -2, "revision");
            lua_pushboolean(L, t.succeeded);
            lua_setfield(L, -2, "succeeded");
            lua_newtable(L);
            for (size_t i = 0; i < t.n; i++) {
                push_range(L, &t.ranges[i]);
                lua_rawseti(L, -2, (int)i + 1);
            }
            lua_setfield(L, -2, "responses");
        }
        lk_txn_resp_free(&t);
    } else if (!strcmp(kind, "lease")) {
        lk_lease_resp l;
        rc = lk_gw_lease(body, n, status, &l, msg, sizeof msg, &grpc);
        if (rc == LK_GW_OK) {
            push_int64(L, l.revision);
            lua_setfield(L, -2, "revision");
            push_int64(L, l.id);
            lua_setfield(L, -2, "id");
            push_int64(L, l.ttl);
            lua_setfield(L, -2, "ttl");
        }
    } else if (!strcmp(kind, "plain")) {
        lk_plain_resp p;
        rc = lk_gw_plain(body, n, status, &p, msg, sizeof msg, &grpc);
        if (rc == LK_GW_OK) {
            push_int64(L, p.revision);
            lua_setfield(L, -2, "revision");
        }
    } else if (!strcmp(kind, "watch")) {
        lk_watch_resp w;
        rc = lk_gw_watch(body, n, status, &w, msg, sizeof msg, &grpc);
        if (rc == LK_GW_OK) {
            push_int64(L, w.revision);
            lua_setfield(L, -2, "revision");
            lua_pushboolean(L, w.created);
            lua_setfield(L, -2, "created");
            lua_pushboolean(L, w.canceled);
            lua_setfield(L, -2, "canceled");
            lua_pushstring(L, w.cancel_reason);
            lua_setfield(L, -2, "cancel_reason");
            push_int64(L, w.compact_revision);
            lua_setfield(L, -2, "compact_revision");
            lua_newtable(L);
            for (size_t i = 0; i < w.n; i++) {
                push_kv(L, &w.events[i].kv);
                lua_pushboolean(L, w.events[i].deleted);
                lua_setfield(L, -2, "deleted");
                lua_rawseti(L, -2, (int)i + 1);
            }
            lua_setfield(L, -2, "events");
        }
        lk_watch_resp_free(&w);
    } else {
        return luaL_error(L, "decode: unknown kind %s", kind);
    }
    lua_pushstring(L, rc == LK_GW_OK ? "ok" : rc == LK_GW_REFUSED ? "refused" : "malformed");
    lua_setfield(L, -2, "rc");
    lua_pushstring(L, msg);
    lua_setfield(L, -2, "msg");
    lua_pushinteger(L, grpc);
    lua_setfield(L, -2, "grpc");
    return 1;
}

static int key_dir(lua_State *L)
{
    lk_buf b = {0};
    return push_buf(L, &b, lk_key_dir(&b, arg_bytes(L, 1), arg_bytes(L, 2)));
}

static int key_contender(lua_State *L)
{
    lk_buf b = {0};
    return push_buf(L, &b, lk_key_contender(&b, arg_bytes(L, 1), arg_int64(L, 2)));
}

static int key_probe(lua_State *L)
{
    lk_buf b = {0};
    return push_buf(L, &b, lk_key_probe(&b, arg_bytes(L, 1)));
}

static int key_name(lua_State *L)
{
    lk_bytes key = arg_bytes(L, 1), name;
    if (!lk_key_name(key, (size_t)luaL_checkinteger(L, 2), &name)) return 0;
    lua_pushlstring(L, name.p, name.n);
    return 1;
}

/* tls_failure(curl_code, curl_msg, handshake_done, capped, has_cert)
 * -> "none" | "failed" | "unsure", msg */
static int tls_failure(lua_State *L)
{
    lk_config cfg = {0};
    cfg.cert = lua_toboolean(L, 5) ? "client.pem" : NULL;
    char msg[512] = "";
    int v = lk_tls_failure((CURLcode)luaL_checkinteger(L, 1), luaL_checkstring(L, 2),
                           lua_toboolean(L, 3), lua_toboolean(L, 4), &cfg,
                           "https://etcd:2379", msg, sizeof msg);
    lua_pushstring(L, v == LK_TLS_FAILED ? "failed" : v == LK_TLS_UNSURE ? "unsure" : "none");
    lua_pushstring(L, msg);
    return 2;
}

__attribute__((visibility("default"))) int luaopen_codec_probe(lua_State *L);

int luaopen_codec_probe(lua_State *L)
{
    static const struct { const char *name; lua_CFunction fn; } fns[] = {
        {"b64_encode", b64_encode}, {"b64_decode", b64_decode}, {"body", body},
        {"answer", answer}, {"decode", decode}, {"key_dir", key_dir}, {"key_contender", key_contender},
        {"key_probe", key_probe}, {"key_name", key_name}, {"tls_failure", tls_failure},
    };
    lua_newtable(L);
    for (size_t i = 0; i < sizeof fns / sizeof *fns; i++) {
        lua_pushcfunction(L, fns[i].fn);
        lua_setfield(L, -2, fns[i].name);
    }
    return 1;
}

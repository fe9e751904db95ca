-- Build and install from a checkout:
--     luarocks make --lua-version 5.4 rockspec/locker-scm-1.rockspec
-- (Debian's luarocks builds for Lua 5.1 unless told; --lua-version 5.1 for
-- LuaJIT and OpenResty.) `luarocks make` builds the checkout it runs in; the
-- source URL is where `luarocks install` would fetch the project.
package = "locker"
version = "scm-1"
source = { url = "git+https://github.com/locker-lua/locker.git" }
description = {
    summary = "Distributed locks and health records on etcd, with a C engine thread",
    detailed = [[
A C core (libcurl, etcd's v3 HTTP/JSON gateway) does every etcd call and all
lease renewal on its own thread; the Lua module offers coroutine-friendly
lock / get / set with fencing tokens, interoperable with etcdctl lock.
]],
    license = "MIT",
}
dependencies = { "lua >= 5.1", "lua-cjson" }  -- lua-cjson: `locker status --json`
external_dependencies = {
    CURL = { library = "curl" },
    CJSON = { header = "cjson/cJSON.h" },
    PROTOBUF_C = { header = "protobuf-c/protobuf-c.h" },
}
build = {
    type = "builtin",
    modules = {
        ["locker.core"] = {
            sources = {
                "src/base/b64.c", "src/base/backoff.c", "src/base/buf.c", "src/base/errors.c",
                "src/base/map.c", "src/base/metrics.c", "src/binding/lcore.c",
                "src/binding/lmetrics.c", "src/engine/cache.c", "src/engine/engine.c",
                "src/engine/io.c", "src/engine/keys.c", "src/engine/lock.c", "src/engine/msg.c",
                "src/engine/query.c", "src/engine/session.c", "src/engine/wake.c",
                "src/engine/watch.c", "src/etcd/answers.c", "src/etcd/recipes.c",
                "src/transport/auth.c", "src/transport/gateway.c",
                "src/transport/gateway_answer.c", "src/transport/grpc.c",
                "src/transport/grpc_answer.c", "src/transport/http.c", "src/transport/tls.c",
                "src/transport/proto/kv.pb-c.c", "src/transport/proto/rpc.pb-c.c",
            },
            defines = { "_GNU_SOURCE" },
            incdirs = { "src", "$(CJSON_INCDIR)/cjson", "$(CURL_INCDIR)" },
            libdirs = { "$(CURL_LIBDIR)", "$(CJSON_LIBDIR)", "$(PROTOBUF_C_LIBDIR)" },
            libraries = { "curl", "cjson", "protobuf-c", "pthread" },
        },
        ["locker.process"] = {
            sources = { "src/binding/lprocess.c", "src/process/proc.c", "src/process/guard.c" },
            defines = { "_GNU_SOURCE" },
            incdirs = { "src" },
        },
        ["locker"] = "lua/locker/init.lua",
        ["locker.sched"] = "lua/locker/sched.lua",
        ["locker.metrics"] = "lua/locker/metrics.lua",
        ["locker.json"] = "lua/locker/json.lua",
        ["locker.health"] = "lua/locker/health.lua",
        ["locker.cli"] = "lua/locker/cli.lua",
        ["locker.cli_register"] = "lua/locker/cli_register.lua",
        ["locker.ngx"] = "lua/locker/ngx.lua",
        ["locker.ngx_status"] = "lua/locker/ngx_status.lua",
        ["locker.ngx_upstream"] = "lua/locker/ngx_upstream.lua",
        ["locker.peers"] = "lua/locker/peers.lua",
        -- event loops' adapters: each needs its host library (not a
        -- dependency: only who uses one has it)
        ["locker.luv"] = "lua/locker/luv.lua",
        ["locker.cqueues"] = "lua/locker/cqueues.lua",
        ["locker.copas"] = "lua/locker/copas.lua",
    },
    install = { bin = { locker = "bin/locker" } },
}

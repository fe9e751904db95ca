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
}
build = {
    type = "builtin",
    modules = {
        ["locker.core"] = {
            sources = {
                "src/auth.c", "src/b64.c", "src/backoff.c", "src/buf.c", "src/cache.c",
                "src/engine.c", "src/errors.c", "src/etcd.c", "src/http.c", "src/io.c", "src/keys.c",
                "src/lcore.c", "src/lmetrics.c", "src/lock.c", "src/map.c", "src/metrics.c", "src/msg.c",
                "src/query.c", "src/session.c", "src/tls.c", "src/wake.c", "src/watch.c",
            },
            defines = { "_GNU_SOURCE" },
            incdirs = { "$(CJSON_INCDIR)/cjson", "$(CURL_INCDIR)" },
            libdirs = { "$(CURL_LIBDIR)", "$(CJSON_LIBDIR)" },
            libraries = { "curl", "cjson", "pthread" },
        },
        ["locker.process"] = {
            sources = { "src/lprocess.c", "src/proc.c", "src/guard.c" },
            defines = { "_GNU_SOURCE" },
        },
        ["locker"] = "lua/locker/init.lua",
        ["locker.sched"] = "lua/locker/sched.lua",
        ["locker.metrics"] = "lua/locker/metrics.lua",
        ["locker.json"] = "lua/locker/json.lua",
        ["locker.health"] = "lua/locker/health.lua",
        ["locker.cli"] = "lua/locker/cli.lua",
        ["locker.ngx"] = "lua/locker/ngx.lua",
        ["locker.ngx_status"] = "lua/locker/ngx_status.lua",
    },
    install = { bin = { locker = "bin/locker" } },
}

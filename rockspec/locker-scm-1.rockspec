-- Build from a checkout: luarocks make rockspec/locker-scm-1.rockspec
package = "locker"
version = "scm-1"
source = { url = "git+file:///dev/null" }  -- build from a local checkout
description = {
    summary = "Distributed locks and health records on etcd, with a C engine thread",
    detailed = [[
A C core (libcurl, etcd's v3 HTTP/JSON gateway) does every etcd call and all
lease renewal on its own thread; the Lua module offers coroutine-friendly
lock / get / set with fencing tokens, interoperable with etcdctl lock.
]],
    license = "MIT",
}
dependencies = { "lua >= 5.1" }
external_dependencies = {
    CURL = { library = "curl" },
    CJSON = { header = "cjson/cJSON.h" },
}
build = {
    type = "builtin",
    modules = {
        ["locker.core"] = {
            sources = {
                "src/b64.c", "src/buf.c", "src/engine.c", "src/etcd.c",
                "src/http.c", "src/lcore.c", "src/lock.c", "src/map.c",
                "src/msg.c", "src/session.c", "src/cache.c", "src/watch.c",
                "src/proc.c",
            },
            defines = { "_GNU_SOURCE" },
            incdirs = { "$(CJSON_INCDIR)/cjson", "$(CURL_INCDIR)" },
            libdirs = { "$(CURL_LIBDIR)", "$(CJSON_LIBDIR)" },
            libraries = { "curl", "cjson", "pthread" },
        },
        ["locker"] = "lua/locker/init.lua",
        ["locker.sched"] = "lua/locker/sched.lua",
        ["locker.health"] = "lua/locker/health.lua",
        ["locker.cli"] = "lua/locker/cli.lua",
    },
    install = { bin = { locker = "bin/locker" } },
}

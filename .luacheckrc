-- luacheck (Debian: lua-check), run by `make lint`.
std = "max"                 -- Lua 5.1 to 5.4 and LuaJIT: the module runs on all
max_line_length = 120
include_files = { "lua/**/*.lua", "bin/locker", "spec/**/*.lua", "examples/**/*.lua", "bench/*.lua",
                  "tools/*.lua", ".luacheckrc" }

files["spec"] = { std = "+busted" }
-- health configs: the DSL's declarations are globals of the config's sandbox
local dsl = { read_globals = { "record", "watch", "connect" } }
files["examples/mesh_health/[abc].lua"] = dsl
files["examples/nginx/*health*.lua"] = { std = "max+ngx_lua", read_globals = dsl.read_globals }
-- inside nginx: the ngx API
files["lua/locker/ngx.lua"] = { std = "max+ngx_lua" }
files["lua/locker/ngx_status.lua"] = { std = "max+ngx_lua" }
files["lua/locker/ngx_upstream.lua"] = { std = "max+ngx_lua" }
-- the bench's result table is one row per line, as printed
files["bench/bench.lua"] = { max_line_length = 200 }

--- examples/http/service.lua: a small HTTP service on lua-http (over
-- cqueues) with locker embedded in the same loop, the twin of the nginx
-- example: it holds its own health record ("api", its address as the
-- value) while its dependency ("db") is held, answers /api with 200 while
-- "db" is up and 503 with Retry-After while it is down, and /status with
-- what locker sees. PORT (default: any free one, printed), LOCKER_ENDPOINTS.
local cqueues = require "cqueues"
local http_server = require "http.server"
local http_headers = require "http.headers"
local locker = require "locker"
local health = require "locker.health"

local cq = cqueues.new()
require("locker.cqueues").use(cq)

local client = assert(locker.new{ endpoints = { os.getenv("LOCKER_ENDPOINTS") or "http://127.0.0.1:2379" },
                                  prefix = "/example-http", ttl = 5 })
local RETRY_AFTER = 5

local function answer(stream, status, body, extra)
    local h = http_headers.new()
    h:append(":status", tostring(status))
    h:append("content-type", "text/plain")
    for k, v in pairs(extra or {}) do h:append(k, v) end
    stream:write_headers(h, false)
    stream:write_chunk(body, true)
end

local server = assert(http_server.listen{
    host = "127.0.0.1", port = tonumber(os.getenv("PORT") or "0"), cq = cq,
    onstream = function(_, stream)
        local path = stream:get_headers():get(":path")
        if path == "/api" then
            -- the dependency's record, from the watch's cache: no etcd call
            local db = client:cached("db")
            if db then return answer(stream, 200, "api: ok (db at " .. db .. ")\n") end
            return answer(stream, 503, "api: db is down\n", { ["retry-after"] = tostring(RETRY_AFTER) })
        elseif path == "/status" then
            local lines = {}
            for _, e in ipairs(client:status()) do
                lines[#lines + 1] = ("%s held by %s (token %s)"):format(e.name, tostring(e.value), tostring(e.token))
            end
            return answer(stream, 200, table.concat(lines, "\n") .. "\n")
        end
        answer(stream, 404, "not found\n")
    end,
})
assert(server:listen())
local _, _, port = server:localname()

-- the health record: "api" is held while "db" is
local spec = health.parse(([[
record "api" { value = "127.0.0.1:%d", requires = { "db" } }
]]):format(port), "examples/http/service.lua")
local h = health.start(client, spec, { log = function(line) print(line) end })
client:follow("db")

-- SIGTERM / SIGINT: stop serving, drop the record, close
local signal = require "cqueues.signal"
signal.block(signal.SIGTERM, signal.SIGINT)
cq:wrap(function()
    local listener = signal.listen(signal.SIGTERM, signal.SIGINT)
    listener:wait()
    print("stopping")
    h:stop()
    client:close()
    server:close()
end)

print(("listening on 127.0.0.1:%d"):format(port))
io.stdout:flush()
local ok, err = cq:loop()
if not ok then error(err) end

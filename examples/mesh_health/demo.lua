-- The mesh demo (make demo): three services a -> b -> c, each a `locker
-- health` process. c is killed with SIGKILL: its record expires with its
-- lease, b drops its record, then a. c is started again: b and a come back.
-- Prints the timeline an observer sees; exits 0 when the cascade and the
-- recovery happened in order. Needs LOCKER_ENDPOINTS (tools/with-etcd).
local locker = require "locker"
local process = require "locker.process"

local lua = arg[-1] or "lua5.4"
local here = (arg[0]:match("^(.*)/[^/]*$") or ".")
local ttl = os.getenv("LOCKER_TTL") or "2"
-- the services' logs: DEMO_LOGS keeps them, else a directory removed at the end
local keep_logs = os.getenv("DEMO_LOGS")
local logdir = keep_logs
if keep_logs then
    os.execute("mkdir -p '" .. keep_logs .. "'")
else
    local p = io.popen("mktemp -d \"${TMPDIR:-/tmp}/locker-demo.XXXXXX\"")
    logdir = p:read("*l")
    p:close()
end

local t0 = locker.now()
local function line(fmt, ...)
    io.stdout:write(("%7.3fs  "):format(locker.now() - t0), fmt:format(...), "\n")
    io.stdout:flush()
end

local procs = {}
local function start(name)
    -- each service logs to its own file; the timeline below is the observer's
    local pid = assert(process.spawn({ "sh", "-c", ('exec "$0" bin/locker health "$1" >>"$2" 2>&1'),
        lua, here .. "/" .. name .. ".lua", logdir .. "/" .. name .. ".log" },
        { "LOCKER_TTL=" .. ttl }))
    procs[name] = pid
    line("started service %s (pid %d)", name, pid)
end

local function stop(name, sig)
    process.kill(procs[name], sig)
    while not process.reap(procs[name]) do locker.sleep(0.01) end
    procs[name] = nil
end

local client = assert(locker.new{ endpoints = { (os.getenv("LOCKER_ENDPOINTS")) } })
local state, events = {}, {}
for _, name in ipairs({ "a", "b", "c" }) do
    client:watch(name, function(value)
        local up = value ~= nil
        if state[name] ~= nil or up then
            line("%s %s%s", name, up and "UP  " or "DOWN", up and ("  " .. value) or "")
        end
        if state[name] ~= up then events[#events + 1] = { name = name, up = up, t = locker.now() } end
        state[name] = up
    end)
end

local function wait_for(what, cond, timeout)
    local deadline = locker.now() + (timeout or 20)
    while not cond() do
        if locker.now() > deadline then
            line("FAILED: timed out waiting for %s", what)
            for name in pairs(procs) do stop(name, "KILL") end
            os.exit(1)
        end
        locker.sleep(0.01)
    end
end
local function all(up)
    return function() return state.a == up and state.b == up and state.c == up end
end

print(("mesh demo: a requires b, b requires c; session TTL %s s"):format(ttl))
start("c"); start("b"); start("a")
wait_for("all three records", all(true))
line("all healthy")

local mark = #events
line("== killing service c with SIGKILL (its record lives until its lease expires)")
local killed = locker.now()
stop("c", "KILL")
wait_for("the cascade", all(false))
local cascade = events[#events].t - killed
local order = {}
for i = mark + 1, #events do order[#order + 1] = events[i].name end
line("blackout complete: %s went down in this order", table.concat(order, ", "))

mark = #events
line("== starting service c again")
local restarted = locker.now()
start("c")
wait_for("the recovery", all(true))
local recovery = events[#events].t - restarted
local back = {}
for i = mark + 1, #events do back[#back + 1] = events[i].name end
line("recovered: %s came back in this order", table.concat(back, ", "))

line("== stopping the services (each releases its record)")
for _, name in ipairs({ "a", "b", "c" }) do stop(name, "TERM") end
client:close()

print(("\ncascade: c killed -> a's record gone in %.2f s (TTL %s s + %.0f ms)")
    :format(cascade, ttl, (cascade - tonumber(ttl)) * 1000))
print(("recovery: c started -> a's record back in %.2f s"):format(recovery))
for _, name in ipairs({ "c", "b", "a" }) do
    local f = io.open(logdir .. "/" .. name .. ".log")
    if f then
        print("--- service " .. name)
        for l in f:lines() do print("    " .. l) end
        f:close()
    end
end
if keep_logs then
    print("service logs: " .. logdir)
else
    os.execute("rm -rf '" .. logdir .. "'")
end
local ok = table.concat(order, ",") == "c,b,a" and table.concat(back, ",") == "c,b,a"
print(ok and "demo OK: cascade c, b, a and recovery c, b, a" or "demo FAILED: unexpected order")
os.exit(ok and 0 or 1)

-- A separate process holding a lock, for specs that need one to kill or
-- to steer: holder.lua ENDPOINT PREFIX NAME VALUE [TTL]. Prints
-- "held <token> <pid>" once it holds NAME, then obeys stdin lines:
-- "set V", "release", "lock V", "busy S" (block Lua for S seconds), "quit".
local locker = require "locker"

local endpoint, prefix, name, value, ttl = arg[1], arg[2], arg[3], arg[4], tonumber(arg[5] or "10")
local client = assert(locker.new{ endpoints = { endpoint }, prefix = prefix, ttl = ttl })

local function pid()
    local f = io.open("/proc/self/stat")
    local s = f:read("*a")
    f:close()
    return s:match("^%d+")  -- the interpreter's own pid
end

local lock
local function take(v)
    lock = assert(client:lock(name, v))
    io.stdout:write(("held %s %s\n"):format(tostring(lock:token()), pid()))
    io.stdout:flush()
end

take(value)
for line in io.stdin:lines() do
    local cmd, rest = line:match("^(%S+)%s*(.*)$")
    if cmd == "set" then
        assert(lock:set(rest))
        io.stdout:write("set ", rest, "\n")
    elseif cmd == "release" then
        assert(lock:release())
        io.stdout:write("released\n")
    elseif cmd == "lock" then
        take(rest)
    elseif cmd == "busy" then
        local t = os.time() + tonumber(rest)
        while os.time() < t do end  -- Lua busy; the engine keeps renewing
        io.stdout:write("idle\n")
    elseif cmd == "quit" then
        break
    end
    io.stdout:flush()
end
client:close()

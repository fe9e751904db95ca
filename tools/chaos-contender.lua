-- One contender of tools/chaos.lua, in its own process:
--   chaos-contender.lua EVENTS FENCE TTL SEED PARENT_PID UNTIL ENDPOINT...
-- Loops forever: takes the lock "chaos", and while it holds it samples
-- lock:owned() / lock:token() between two clock readings and writes to the
-- fence. Appends to EVENTS (one line per write, O_APPEND, so lines of all
-- contenders interleave whole; times are locker.now(), CLOCK_MONOTONIC):
--   B pid ttl t              started
--   C pid timeout margin N   its client's request timeout and margin (s),
--                            and N: the lock's limit (CHAOS_LIMIT, > 1: a
--                            semaphore of N holders)
--   A pid token t key        lock() returned the lock (key: lock:key(), the
--                            etcd key, which the checker may delete)
--   E pid code t             lock() failed (timeout, unavailable, ...)
--   S pid token t1 t2        owned() was true between t1 and t2
--   L pid token t            owned() (or token()) said the lock was lost
--   R pid token t ok|code    released
--   G pid token t ok|code    a guarded write (lock:put of DATA_KEY, value
--                            "token pid") came back: written or refused
--   O pid name token rev t V an observer's watch_all report: NAME's owner
--                            at etcd revision REV (token 0, V "-": nobody
--                            holds it), V its value
--   K pid what t             an observer's watch_all: resync or skipped N
-- and to FENCE, after each owned sample but the last of a hold, "token pid
-- t_write" (the fence: the file order is the order in which the fence saw
-- the writes; sometimes after a short sleep, so that a stop can come
-- between the check and the write). It uses a client of its own with the
-- endpoints in a shuffled order, a TTL of TTL s, 1 s requests and the
-- default margin (min(2, TTL/5)), and holds the lock for 0.1 to 1.3 s, one
-- time in four for 1.5 to 4 s (long enough for a foreign delete behind a
-- silent stream to show in its samples). It exits by
-- itself when PARENT_PID is no longer its parent or at UNTIL (locker.now()),
-- so that nothing outlives a chaos run that died.
-- While it holds the lock it sometimes (p 0.3 per sample) writes DATA_KEY
-- with lock:put, a guarded write that etcd makes only while its key
-- exists: the checker replays etcd's history to see that every one that
-- was made came from an owner (tools/chaos-history.lua).
-- CHAOS_PRIMITIVE=election: it campaigns (client:campaign) instead of
-- locking, and its leader sometimes proclaims a new value ("pid+n").
-- CHAOS_ROLE=observer: it takes no lock, and follows the prefix with
-- client:watch_all, writing O and K lines for what it reports.
local locker = require "locker"
local now = locker.now

local events_path, fence_path = arg[1], arg[2]
local ttl, seed = tonumber(arg[3]), tonumber(arg[4])
local parent, until_t = arg[5], tonumber(arg[6])
local endpoints = {}
for i = 7, #arg do endpoints[#endpoints + 1] = arg[i] end
assert(events_path and fence_path and ttl and seed and parent and until_t and #endpoints > 0,
       "usage: chaos-contender.lua EVENTS FENCE TTL SEED PARENT_PID UNTIL ENDPOINT...")

math.randomseed(seed)
local random = math.random
for i = #endpoints, 2, -1 do  -- each contender tries the members in its own order
    local j = random(i)
    endpoints[i], endpoints[j] = endpoints[j], endpoints[i]
end

local function stat()
    local f = io.open("/proc/self/stat")
    local s = f:read("*a")
    f:close()
    return s
end
local pid = stat():match("^(%d+)")  -- the interpreter's own pid

local function orphaned()
    return stat():match("^%d+ %b() %a (%d+)") ~= parent or now() > until_t
end

local function appender(path)
    local f = assert(io.open(path, "a"))
    f:setvbuf("full")  -- each line leaves in one write(2), by the flush below
    return function(line)
        f:write(line)
        f:flush()
    end
end
local event, fence = appender(events_path), appender(fence_path)
local fmt = string.format

local timeout, margin = 1, math.min(2, ttl / 5)
local limit = tonumber(os.getenv("CHAOS_LIMIT") or "1") or 1  -- > 1: a semaphore
local election = os.getenv("CHAOS_PRIMITIVE") == "election"
local DATA_KEY = "/chaos-data/fence"
local lock_delay = tonumber(os.getenv("CHAOS_LOCK_DELAY") or "0") or 0
local client = assert(locker.new{ endpoints = endpoints, prefix = "/chaos/", ttl = ttl, timeout = timeout,
                                  margin = margin, lock_delay = lock_delay })
event(fmt("B %s %d %.6f\n", pid, ttl, now()))
event(fmt("C %s %.3f %.3f %d\n", pid, timeout, margin, limit))

if os.getenv("CHAOS_ROLE") == "observer" then
    local w = assert(client:watch_all(function(value, ev)
        if ev.resync then event(fmt("K %s resync %.6f\n", pid, now())) end
        if ev.skipped then event(fmt("K %s skipped=%d %.6f\n", pid, ev.skipped, now())) end
        event(fmt("O %s %s %s %s %.6f %s\n", pid, ev.name, tostring(ev.token or 0), tostring(ev.revision),
                  now(), value or "-"))
    end))
    while not orphaned() do locker.sleep(0.2) end
    w:cancel()
    client:close()
    os.exit(0)
end

local proclaimed = 0
while not orphaned() do
    local opts = { timeout = 2 + random() * 4, limit = limit > 1 and limit or nil }
    local lock, _, code
    if election then
        lock, _, code = client:campaign("chaos", pid, opts)
    else
        lock, _, code = client:lock("chaos", pid, opts)
    end
    if not lock then
        event(fmt("E %s %s %.6f\n", pid, tostring(code), now()))
        locker.sleep(random() * 0.2)
    else
        local token = lock:token()
        event(fmt("A %s %s %.6f %s\n", pid, tostring(token), now(), tostring(lock:key())))
        local hold_until = now() + (random() < 0.25 and 1.5 + random() * 2.5 or 0.1 + random() * 1.2)
        while true do  -- a sample after every sleep, also one a stop stretched
            local t1 = now()
            local ok = lock:owned()
            local tok = lock:token()
            local t2 = now()
            if not (ok and tok) then
                event(fmt("L %s %s %.6f\n", pid, tostring(token), now()))
                break
            end
            event(fmt("S %s %s %.6f %.6f\n", pid, tostring(tok), t1, t2))
            if now() >= hold_until then break end
            -- sometimes dawdle between the check and the write: a stop that
            -- lands here makes a stale write, which the fence must refuse
            if random() < 0.3 then locker.sleep(random() * 0.2) end
            fence(fmt("%s %s %.6f\n", tostring(tok), pid, now()))
            if random() < 0.3 then  -- a guarded write: etcd checks our key
                local rev, _, pcode = lock:put(DATA_KEY, fmt("%s %s", tostring(tok), pid))
                event(fmt("G %s %s %.6f %s\n", pid, tostring(tok), now(), rev and "ok" or tostring(pcode)))
            end
            if election and random() < 0.1 then
                proclaimed = proclaimed + 1
                lock:proclaim(fmt("%s+%d", pid, proclaimed))
            end
            locker.sleep(0.01 + random() * 0.04)
        end
        local ok, _, rcode = lock:release()
        event(fmt("R %s %s %.6f %s\n", pid, tostring(token), now(), ok and "ok" or tostring(rcode)))
        locker.sleep(random() * 0.3)
    end
end
client:close()

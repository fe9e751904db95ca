--- What spec/embed_spec.lua runs inside each host loop (luv, cqueues,
-- Copas), in a process of its own: spec/hosts/<host>.lua gives the loop's
-- primitives and calls scenario.run(host, mode). A host is
--   spawn(fn)            start fn as a coroutine of the host
--   ticker(fn)           call fn every 10 ms (the host's own timer); a stop()
--   run(done)            drive the loop until done() (or its own end)
--   adapter              the locker adapter module (use() already made)
-- It prints "key=value" lines; embed_spec checks them.
local locker = require "locker"
local health = require "locker.health"
local process = require "locker.process"

local scenario = {}

local WORKERS, NAMES, CYCLES = 100, 10, 3

local function out(k, v)
    io.stdout:write(k, "=", tostring(v), "\n")
    io.stdout:flush()
end

-- The process' open fds, and what they are (for a message); listed by a
-- shell of system(), which leaves no fd of its own in this process while
-- it looks (popen's pipe would be one, its other end another for a while).
local function fds()
    local listing = os.tmpname()
    os.execute(("ls -l /proc/%d/fd > %s 2>/dev/null"):format(process.getpid(), listing))
    local f = assert(io.open(listing))
    local text = f:read("*a")
    f:close()
    os.remove(listing)
    local n, what = 0, {}
    for fd, target in text:gmatch(" (%d+) %-> (%S+)") do
        n = n + 1
        what[#what + 1] = fd .. ":" .. target
    end
    return n, table.concat(what, " ")
end

-- Waits (yielding to the host through locker.sleep) until fn() is true;
-- false after seconds.
local function await(fn, seconds)
    local deadline = locker.now() + seconds
    while not fn() do
        if locker.now() > deadline then return false end
        locker.sleep(0.01)
    end
    return true
end

local function client()
    return assert(locker.new{ endpoints = { os.getenv("LOCKER_ENDPOINTS") },
                              prefix = "/embed", ttl = 5, timeout = 1 })
end

-- lock / release cycles by 100 coroutines of the host on 10 names, a
-- count of holders per name kept by the holders themselves
local function cycles(host, c)
    local holders, done, completed, overlaps = {}, 0, 0, 0
    for i = 1, WORKERS do
        host.spawn(function()
            local name = "n" .. (i % NAMES)
            for _ = 1, CYCLES do
                local l, msg = c:lock(name, "worker " .. i, { timeout = 30 })
                if not l then
                    out("lock_error", msg)
                else
                    holders[name] = (holders[name] or 0) + 1
                    if holders[name] > 1 then overlaps = overlaps + 1 end
                    locker.sleep(0.001)
                    holders[name] = holders[name] - 1
                    if l:release() then completed = completed + 1 end
                end
            end
            done = done + 1
        end)
    end
    await(function() return done == WORKERS end, 60)
    out("cycles", completed)
    out("cycles_wanted", WORKERS * CYCLES)
    out("overlaps", overlaps)
end

-- a watch and a health config inside the loop, a second client of the
-- loop holding and releasing what they look at
local function watch_and_health(c, c2)
    local seen = {}
    local w = c:watch("dep", function(value) seen[#seen + 1] = value or "(none)" end)
    local spec = health.parse([[
record "svc" { value = "10.0.0.1:80", every = 0.1,
               check = function() return true end, requires = { "dep" } }
]], "embed health")
    local h = health.start(c, spec, { log = function() end })
    local dep = assert(c2:lock("dep", "up"))
    local up = await(function()
        local v = c2:get("svc")
        return v == "10.0.0.1:80"
    end, 10)
    out("health_up", up)
    dep:release()
    local down = await(function() return c2:get("svc") == nil end, 10)
    out("health_down", down)
    out("watch_saw", table.concat(seen, ","))
    h:stop()
    w:cancel()
end

-- etcd stopped for 3 s: the loop keeps ticking (the caller's ticker
-- measures it) while a coroutine's get waits and fails; then a lock works
local function etcd_stopped(host, c, marks)
    local pid = assert(tonumber(os.getenv("LOCKER_ETCD_PID")), "LOCKER_ETCD_PID")
    local failed = 0
    local stopped = true
    host.spawn(function()
        while stopped do
            local _, msg = c:get("x")  -- nil, nil: nobody holds x (etcd answered)
            if msg then failed = failed + 1 end
        end
    end)
    assert(process.kill(pid, "STOP"))
    marks.stopped_at = locker.now()
    locker.sleep(3)
    assert(process.kill(pid, "CONT"))
    stopped = false
    marks.resumed_at = locker.now()
    out("gets_failed_while_stopped", failed)
    local deadline = locker.now() + 20
    local l
    repeat
        l = c:lock("after", "v", { timeout = 5 })
    until l or locker.now() > deadline
    out("lock_after_stop", l ~= nil)
    if l then l:release() end
end

--- The whole run; mode "error": a callback raises instead (the host's
-- error path must get it).
function scenario.run(host, mode)
    local before, before_what = fds()
    local c, c2 = client(), client()
    if mode == "error" then
        c:watch("boom", function(value)
            if value then error("callback boom " .. value) end
        end)
        host.spawn(function() c2:lock("boom", "now") end)
        host.run(function() return false end, 10)
        return
    end
    local intervals, worst, worst_stopped, last = 0, 0, 0, nil
    local marks = {}
    local ticker = host.ticker(function()
        local t = locker.now()
        if last then
            local late = (t - last - 0.010) * 1000
            if late > worst then worst = late end
            if marks.stopped_at and not marks.resumed_at and late > worst_stopped then
                worst_stopped = late
            end
            intervals = intervals + 1
        end
        last = t
    end)
    local finished = false
    host.spawn(function()
        cycles(host, c)
        watch_and_health(c, c2)
        etcd_stopped(host, c, marks)
        ticker()
        c:close()
        c2:close()
        out("polled_after_close", host.adapter.polled())
        host.adapter.stop()
        finished = true
    end)
    host.run(function() return finished end, 120)
    out("finished", finished)
    out("ticks", intervals)
    out("worst_tick_late_ms", ("%.2f"):format(worst))
    out("worst_tick_late_stopped_ms", ("%.2f"):format(worst_stopped))
    out("fds_before", before)
    local after, after_what = fds()
    out("fds_after", after)
    if after ~= before then out("fds_were", before_what) out("fds_are", after_what) end
end

return scenario

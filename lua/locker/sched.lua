--- The coroutine scheduler behind locker.spawn / locker.run / locker.sleep.
-- Waiting calls made inside a coroutine started by spawn yield to it; made
-- anywhere else, they drive it (and so every spawned coroutine) until their
-- own answer arrives. Everything it waits on is a source: an object with
-- :fd() and :dispatch() (a client). Callbacks run as spawned coroutines.
--
-- Another host can replace how coroutines start, wait and wake (sched.use):
-- inside nginx, locker.ngx makes every spawn an ngx timer and every wait an
-- ngx.semaphore, so no coroutine of this file ever runs there (ngx_lua
-- replaces the coroutine API in its contexts; a coroutine made in one ngx
-- timer and resumed in another crashes the worker).

local coroutine, select, pairs, type = coroutine, select, pairs, type
local unpack = table.unpack or unpack
local traceback = debug.traceback
-- the clock and poll(fds, seconds) of locker.core, handed over by the
-- public module (sched.setup): only it loads the core
local poll, now

local sched = {}

--- Called once by the locker module with core's poll and now.
function sched.setup(core_poll, core_now)
    poll, now = core_poll, core_now
end

local ready = {}                                    -- { co, nargs, args... }
local timers = {}                                   -- { at = t, co = co }
local mine = setmetatable({}, { __mode = "k" })     -- coroutines we run
local sources = setmetatable({}, { __mode = "k" })  -- clients with an fd
local live = 0                                      -- spawned, not finished
local runs_for = setmetatable({}, { __mode = "k" }) -- sched.pcall's coroutine -> ours
local B = nil                                       -- another host's backend

--- Hands spawning, waiting and waking to a backend (nil: this file's own
-- scheduler). A backend has current() -> a waiter or nil (nil: this
-- context cannot wait), suspend(w, deadline, still_waiting) -> the values
-- given to wake, wake(w, ...), spawn(fn, ...), and blocked(what), which
-- raises: a wait where nothing may wait; sleep(seconds) when it sleeps its
-- own way (without it, a sleep suspends the current waiter until its
-- deadline, and raises through blocked() where there is none). A backend
-- that polls the clients' fds itself (an event loop's adapter) also has
-- add_source(client) and remove_source(client): told of every client,
-- those made before it too, and of each one's close before its fd closes.
function sched.use(backend)
    if B == backend then return end
    if B and B.remove_source then
        for src in pairs(sources) do B.remove_source(src) end
    end
    B = backend
    if B and B.add_source then
        for src in pairs(sources) do B.add_source(src) end
    end
end

function sched.backend()
    return B
end

local own_on_error  -- sched.on_error before an event loop's adapter took it

--- For an event loop's adapter (locker.luv, .cqueues, .copas): checks the
-- options of who's use() (nothing, or a table whose on_error is a
-- function) and returns opts.on_error.
function sched.host_options(who, opts)
    if opts ~= nil and type(opts) ~= "table" then
        error(who .. ": expected an options table or nothing, got " .. type(opts), 3)
    end
    if opts and opts.on_error ~= nil and type(opts.on_error) ~= "function" then
        error(who .. ": on_error must be a function", 3)
    end
    return opts and opts.on_error or nil
end

--- An adapter takes over: backend runs waits, wakes and spawns, and errors
-- of callbacks go to report (the host's error path) until host_leave.
function sched.host_take(backend, report)
    own_on_error = sched.on_error
    sched.on_error = report
    sched.use(backend)
end

--- The adapter whose errors went to report leaves: this file's scheduler
-- again, and errors where they went before (unless replaced meanwhile).
function sched.host_leave(report)
    sched.use(nil)
    if sched.on_error == report then sched.on_error = own_on_error end
end

--- Where errors of callbacks and spawned coroutines go. Replace it to log
-- elsewhere; it receives one string (message and traceback).
function sched.on_error(msg)
    io.stderr:write("locker: ", tostring(msg), "\n")
end

--- The running coroutine if this scheduler runs it, else nil.
function sched.current()
    if B then return B.current() end
    local co = coroutine.running()
    while co and runs_for[co] do co = runs_for[co] end  -- inside sched.pcall
    if co and mine[co] then return co end
    return nil
end

-- Lua 5.2+ and LuaJIT yield across pcall; plain Lua 5.1 does not.
local pcall_yields = rawget(_G, "jit") ~= nil or _VERSION ~= "Lua 5.1"

-- sched.pcall on plain Lua 5.1: fn's coroutine ended (an answer, or an
-- error), or waits: its yield goes up to the scheduler, and the values the
-- scheduler resumes with go back down.
local function settle_call(tb, co, ok, ...)
    if not ok then return false, tb and traceback(co, (...)) or (...) end
    if coroutine.status(co) == "dead" then return true, ... end
    return settle_call(tb, co, coroutine.resume(co, coroutine.yield(...)))
end

local function protected(tb, fn, ...)
    if pcall_yields then
        if not tb then return pcall(fn, ...) end
        local args, n = { ... }, select("#", ...)
        return xpcall(function() return fn(unpack(args, 1, n)) end, traceback)
    end
    local co = coroutine.create(fn)
    runs_for[co] = coroutine.running()
    return settle_call(tb, co, coroutine.resume(co, ...))
end

--- pcall(fn, ...) through which a waiting call inside fn may yield, on
-- every Lua (plain 5.1 runs fn in a coroutine of its own and passes its
-- yields up).
function sched.pcall(fn, ...) return protected(false, fn, ...) end
--- The same, an error's message with a traceback.
function sched.tpcall(fn, ...) return protected(true, fn, ...) end

--- Starts fn(...) as a coroutine run by the scheduler; returns it.
function sched.spawn(fn, ...)
    if type(fn) ~= "function" then
        error("locker.spawn: expected a function, got " .. type(fn), 2)
    end
    if B then return B.spawn(fn, ...) end
    local co = coroutine.create(fn)
    mine[co] = true
    live = live + 1
    ready[#ready + 1] = { co, select("#", ...), ... }
    return co
end

--- Makes a waiting coroutine runnable; it resumes with the given values.
function sched.wake(co, ...)
    if B then return B.wake(co, ...) end
    ready[#ready + 1] = { co, select("#", ...), ... }
end

--- Calls fn(...) as part of one coroutine per box, in the order of the
-- calls: a box's callbacks never overlap or overtake each other, even when
-- one of them waits. An error in fn is reported and the next call goes on.
function sched.call_in_order(box, fn, ...)
    local q = box._calls
    if not q then
        q = { first = 1, last = 0 }
        box._calls = q
    end
    q.last = q.last + 1
    q[q.last] = { fn, select("#", ...), ... }
    if q.running then return end
    q.running = true
    local started = sched.spawn(function()
        while q.first <= q.last do
            local c = q[q.first]
            q[q.first] = nil
            q.first = q.first + 1
            local ok, err = sched.tpcall(c[1], unpack(c, 3, 2 + c[2]))
            if not ok then sched.on_error(err) end
        end
        q.running = false
    end)
    if not started then q.running = false end  -- the next call tries again
end

--- Whether a box of call_in_order() still has calls to run.
function sched.busy(box)
    local q = box._calls
    return q ~= nil and q.running == true
end

function sched.add_source(src)
    sources[src] = true
    if B and B.add_source then B.add_source(src) end
end

function sched.remove_source(src)
    if not sources[src] then return end
    sources[src] = nil
    if B and B.remove_source then B.remove_source(src) end
end

--- The coroutine a host resumes for the running code: the running one, or
-- on plain Lua 5.1, the one around sched.pcall's (whose yields go up to
-- it). nil on the main thread.
function sched.outer()
    local co, main = coroutine.running()
    if main or not co then return nil end
    while runs_for[co] do co = runs_for[co] end
    return co
end

--- Whether the running code is inside sched.pcall's own coroutine (plain
-- Lua 5.1), which passes its yields up.
function sched.in_pcall()
    local co = coroutine.running()
    return co ~= nil and runs_for[co] ~= nil
end

local function resume(entry)
    local co = entry[1]
    if coroutine.status(co) ~= "suspended" then return end
    local ok, err = coroutine.resume(co, unpack(entry, 3, 2 + entry[2]))
    if not ok then sched.on_error(traceback(co, err)) end
    if coroutine.status(co) == "dead" then
        mine[co] = nil
        live = live - 1
    end
end

local function dispatch_all()
    for src in pairs(sources) do src:dispatch() end
end

-- Wakes due timers, runs what is ready now. Returns the next timer's time.
local function run_ready()
    local t = now()
    local i = 1
    while i <= #timers do
        local tm = timers[i]
        if tm.at <= t then
            timers[i] = timers[#timers]
            timers[#timers] = nil
            if not tm.valid or tm.valid() then sched.wake(tm.co) end
        else
            i = i + 1
        end
    end
    local batch = ready
    ready = {}
    for j = 1, #batch do resume(batch[j]) end
    local next_at = nil
    for j = 1, #timers do
        if not next_at or timers[j].at < next_at then next_at = timers[j].at end
    end
    return next_at
end

--- One round without blocking: deliver events, run what is ready.
-- Returns the seconds until the next timer is due (0: something is ready
-- now; nil: no timer), so that a foreign loop (cqueues, luv) can wait on
-- client:fd() for exactly that long.
function sched.step()
    dispatch_all()
    if B then return nil end
    local next_at = run_ready()
    if #ready > 0 then return 0 end
    if not next_at then return nil end
    local left = next_at - now()
    return left > 0 and left or 0
end

--- Suspends waiter w (from sched.current()) until sched.wake(w, ...);
-- returns the values given to wake. With a deadline, it returns (nothing)
-- at that time if still_waiting() is then true.
function sched.suspend(w, deadline, still_waiting)
    if B then return B.suspend(w, deadline, still_waiting) end
    if deadline then sched.wake_at(w, deadline, still_waiting) end
    return coroutine.yield()
end

-- Drives everything until done() is true or the deadline passes.
local function loop(done, deadline)
    if B then return B.blocked("a waiting call") end
    while true do
        dispatch_all()
        local next_at = run_ready()
        if done() then return true end
        if #ready == 0 then
            local t = now()
            if deadline and t >= deadline then return false end
            local until_t = deadline
            if next_at and (not until_t or next_at < until_t) then until_t = next_at end
            local fds = {}
            for src in pairs(sources) do fds[#fds + 1] = src:fd() end
            if #fds == 0 and not until_t then
                error("locker: every coroutine waits and nothing can wake them", 0)
            end
            -- a timer already due waits 0, not "forever" (poll's negative)
            poll(fds, until_t and math.max(0, until_t - t) or -1)
        end
    end
end
sched.loop = loop

--- Runs every spawned coroutine until none is left.
function sched.run()
    if B then return B.blocked("locker.run") end
    if sched.current() then error("locker.run: called from a spawned coroutine", 2) end
    loop(function() return live == 0 end)
end

--- The scheduler's clock: monotonic seconds.
function sched.now() return now() end

--- Wakes co at time t if still_waiting() is then true (so a timer that
-- outlives the wait it was for wakes nobody).
function sched.wake_at(co, t, still_waiting)
    timers[#timers + 1] = { at = t, co = co, valid = still_waiting }
end

--- Waits for seconds: yields inside a spawned coroutine, else drives the
-- scheduler (events, callbacks, other coroutines) for that long.
function sched.sleep(seconds)
    if type(seconds) ~= "number" or seconds < 0 then
        error("locker.sleep: seconds must be a number >= 0", 2)
    end
    if B then
        if B.sleep then return B.sleep(seconds) end
        local w = B.current()
        if not w then B.blocked("locker.sleep") end
        B.suspend(w, now() + seconds)
        return
    end
    local co = sched.current()
    if co then
        timers[#timers + 1] = { at = now() + seconds, co = co }
        coroutine.yield()
    else
        loop(function() return false end, now() + seconds)
    end
end

return sched

--- locker inside libuv's loop (luv): require "locker.luv".use() once, and
-- then every client is polled by a uv_poll on its fd, and waiting calls
-- (lock, get, set, sleep, w:next, ...) made inside a coroutine that the
-- loop resumes (locker.spawn, or any coroutine but the main thread) yield
-- to uv.run() instead of blocking it. Timeouts and sleeps are uv timers.
-- locker.run() is never needed: uv.run() drives everything.
--
-- Errors of callbacks and spawned coroutines are raised inside a uv
-- callback, where luv reports them as it reports its own (by default it
-- prints them and exits); use{ on_error = fn } sends them to fn instead.

local uv = require "luv"
local sched = require "locker.sched"

local coroutine, select = coroutine, select
local unpack = table.unpack or unpack
local traceback = debug.traceback
local ceil, max = math.ceil, math.max

local M = {}

local polls = {}        -- client -> its uv_poll
local ready = {}        -- waiters and starts to resume on the next turn
local kick              -- a uv timer at 0 ms that resumes them, or nil
local on_error          -- where errors go (nil: raised in a uv callback)
local used = false

local function pack(...)
    return { n = select("#", ...), ... }
end

local function ms_until(t)
    return max(0, ceil((t - sched.now()) * 1000))
end

-- Raises msg inside a uv callback of its own: luv's usual error path.
local function report(msg)
    if on_error then return on_error(msg) end
    local t = uv.new_timer()
    t:start(0, 0, function()
        t:close()
        error(msg, 0)
    end)
end

local function resume(co, ...)
    if coroutine.status(co) ~= "suspended" then return end
    local ok, err = coroutine.resume(co, ...)
    if not ok then report(traceback(co, err)) end
end

local function run_ready()
    local batch = ready
    ready = {}
    for i = 1, #batch do
        local e = batch[i]
        if e.start then
            resume(e.co, unpack(e.args, 1, e.args.n))
        elseif e.parked then
            resume(e.co)
        end
    end
    if #ready > 0 then kick:start(0, 0, run_ready) end
end

local function enqueue(e)
    ready[#ready + 1] = e
    if not kick then kick = uv.new_timer() end
    if #ready == 1 then kick:start(0, 0, run_ready) end
end

-- ---------------------------------------------------------------- backend --

local backend = {}

function backend.current()
    local co = sched.outer()
    if not co then return nil end
    return { co = co }
end

function backend.suspend(w, deadline, still_waiting)
    local timer
    if deadline then
        timer = uv.new_timer()
        timer:start(ms_until(deadline), 0, function()
            timer:close()
            timer = nil
            if w.args or (still_waiting and not still_waiting()) then return end
            w.args = { n = 0 }
            if w.parked then enqueue(w) end
        end)
    end
    while not w.args do
        w.parked = true
        coroutine.yield()
        w.parked = false
    end
    if timer then timer:close() end
    return unpack(w.args, 1, w.args.n)
end

function backend.wake(w, ...)
    if w.args then return end
    w.args = pack(...)
    if w.parked then enqueue(w) end
end

function backend.spawn(fn, ...)
    local co = coroutine.create(fn)
    enqueue({ start = true, co = co, args = pack(...) })
    return co
end

function backend.blocked(what)
    error(("locker: %s outside a coroutine would block libuv's loop: make it inside "
           .. "locker.spawn(fn) or another coroutine the loop resumes"):format(what), 0)
end

function backend.add_source(client)
    if polls[client] then return end
    local p = uv.new_poll(client:fd())
    polls[client] = p
    p:start("r", function(err)
        if err then report("locker: polling a client's fd: " .. tostring(err)) end
        client:dispatch()
    end)
end

function backend.remove_source(client)
    local p = polls[client]
    if not p then return end
    polls[client] = nil
    p:stop()
    p:close()
end

-- ------------------------------------------------------------------ public --

--- Hands locker's waits to libuv's default loop. opts.on_error: a function
-- for errors of callbacks and spawned coroutines (default: luv's own path).
-- Idempotent; clients made before and after are polled alike.
function M.use(opts)
    on_error = sched.host_options("locker.luv.use", opts)
    if used then return M end
    used = true
    sched.host_take(backend, report)
    return M
end

--- Stops polling every client, drops what waits to be resumed and gives
-- locker its own scheduler back (the loop then has no handle of locker's
-- left). Clients stay open: close them first to release their locks.
function M.stop()
    if not used then return end
    used = false
    sched.host_leave(report)
    ready = {}
    if kick then kick:close() kick = nil end
end

--- How many clients libuv polls (for tests and status pages).
function M.polled()
    local n = 0
    for _ in pairs(polls) do n = n + 1 end
    return n
end

return M

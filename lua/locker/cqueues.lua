--- locker inside a cqueues controller: require "locker.cqueues".use(cq)
-- once, and every client is a pollable object (pollfd / events / timeout,
-- as cqueues' own sockets are) that a coroutine of cq polls and
-- dispatches, and waiting calls (lock, get, set, sleep, w:next, ...) made
-- inside cq's coroutines wait on a cqueues condition, yielding to the
-- controller instead of blocking it. Callbacks and locker.spawn run as
-- coroutines of cq. locker.run() is never needed: cq:loop() drives all.
--
-- Errors of callbacks and spawned coroutines come out of cq:loop() /
-- cq:step() (false, msg), as errors of cq's own coroutines do;
-- use(cq, { on_error = fn }) sends them to fn instead.

local cqueues = require "cqueues"
local condition = require "cqueues.condition"
local sched = require "locker.sched"

local select, type, pairs = select, type, pairs
local unpack = table.unpack or unpack

local M = {}

local cq                -- the controller
local dispatchers = {}  -- client -> its pollable (and dispatcher's state)
local on_error

local function pack(...)
    return { n = select("#", ...), ... }
end

-- Raises msg in a coroutine of cq: cqueues' usual error path.
local function report(msg)
    if on_error then return on_error(msg) end
    cq:wrap(function() error(msg, 0) end)
end

-- A client as cqueues sees a pollable object.
local Pollable = {}
Pollable.__index = Pollable
function Pollable:pollfd() return self.fd end
function Pollable.events() return "r" end
function Pollable.timeout() return nil end

-- ---------------------------------------------------------------- backend --

local backend = {}

-- A waiter: only inside a coroutine of a controller (or sched.pcall's
-- around it on plain Lua 5.1, whose yields go up to it).
function backend.current()
    local ctl, own = cqueues.running()
    if not ctl or not (own or sched.in_pcall()) then return nil end
    return { cond = condition.new() }
end

function backend.suspend(w, deadline, still_waiting)
    while not w.args do
        local timeout
        if deadline then
            timeout = deadline - sched.now()
            if timeout <= 0 then
                if not still_waiting or still_waiting() then return end
                deadline, timeout = nil, nil  -- outlived its wait: wake only
            end
        end
        w.cond:wait(timeout)
    end
    return unpack(w.args, 1, w.args.n)
end

function backend.wake(w, ...)
    if w.args then return end
    w.args = pack(...)
    w.cond:signal()
end

function backend.spawn(fn, ...)
    cq:wrap(fn, ...)
    return true
end

function backend.blocked(what)
    error(("locker: %s outside a coroutine of the cqueues controller would block it: "
           .. "make it inside cq:wrap(fn) or locker.spawn(fn)"):format(what), 0)
end

function backend.sleep(seconds)
    if not backend.current() then backend.blocked("locker.sleep") end
    cqueues.sleep(seconds)
end

function backend.add_source(client)
    if dispatchers[client] then return end
    local p = setmetatable({ fd = client:fd() }, Pollable)
    dispatchers[client] = p
    cq:wrap(function()
        while not p.closed do
            cqueues.poll(p)
            if p.closed then break end
            client:dispatch()
        end
    end)
end

-- Before the client's fd closes: its dispatcher ends (cancel wakes it).
function backend.remove_source(client)
    local p = dispatchers[client]
    if not p then return end
    dispatchers[client] = nil
    p.closed = true
    cqueues.cancel(p.fd)
end

-- ------------------------------------------------------------------ public --

--- Hands locker's waits, callbacks and clients to controller ctl (a
-- cqueues.new()). opts.on_error: a function for errors of callbacks and
-- spawned coroutines (default: out of ctl's loop). Clients made before
-- and after are polled alike. Idempotent for one controller.
function M.use(ctl, opts)
    if type(ctl) ~= "userdata" or not ctl.wrap then
        error("locker.cqueues.use: expected a cqueues controller (cqueues.new()), got " .. type(ctl), 2)
    end
    local handler = sched.host_options("locker.cqueues.use", opts)
    if cq and cq ~= ctl then
        error("locker.cqueues.use: already in use with another controller (stop() first)", 2)
    end
    on_error = handler
    if cq then return M end
    cq = ctl
    sched.host_take(backend, report)
    return M
end

--- Ends every dispatcher and gives locker its own scheduler back. Clients
-- stay open: close them first to release their locks.
function M.stop()
    if not cq then return end
    sched.host_leave(report)
    cq = nil
end

--- How many clients the controller polls (for tests and status pages).
function M.polled()
    local n = 0
    for _ in pairs(dispatchers) do n = n + 1 end
    return n
end

return M

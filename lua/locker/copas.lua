--- locker inside Copas: require "locker.copas".use() once, and every client
-- is read by a Copas thread of its own, and waiting calls (lock, get, set,
-- sleep, w:next, ...) made inside Copas threads yield to Copas instead of
-- blocking its loop. Callbacks and locker.spawn run as Copas threads.
--
-- Copas 1.x (Debian's) wakes a thread only when a socket is ready and has
-- no timers, so locker's waits are socket-like objects (an fd and LuaSocket's
-- dirty() hook): one that is woken, or whose deadline passed, is ready at
-- the next select. Copas' select must therefore not sleep past locker's
-- next deadline: drive the loop with locker.copas.loop() or
-- locker.copas.step(timeout) (copas.step capped by that deadline) instead of
-- copas.loop() / copas.step().
--
-- Errors of callbacks and spawned coroutines raise in a Copas thread and
-- go to Copas' error handler (copas.setErrorHandler), as errors of its own
-- threads do; use{ on_error = fn } sends them to fn instead.
--
-- A handler whose last wake-up was one of locker's (a lock it waited for)
-- ends with copas.autoclose closing that object, not its connection:
-- close the connection yourself.

local copas = require "copas"
local socket = require "socket"
local sched = require "locker.sched"

local select, pairs = select, pairs
local unpack = table.unpack or unpack

local M = {}

local used = false
local idle               -- a UDP socket never bound: an fd never readable
local waiting = {}       -- waiter -> true while it waits with a deadline
local readers = {}       -- client -> its reader's socket-like object
local on_error

local function pack(...)
    return { n = select("#", ...), ... }
end

local function report(msg)
    if on_error then return on_error(msg) end
    copas.addthread(function() error(msg, 0) end)
end

-- ----------------------------------------------------- a wait as a socket --
-- What copas.receive and LuaSocket's select ask of a socket: getfd(),
-- dirty() (ready without reading the fd), receive() (nil, "timeout": park
-- on the reading set), close() (copas.autoclose).

local Wait = {}
Wait.__index = Wait

function Wait:ready()
    if self.args then return true end
    local d = self.deadline
    if d and sched.now() >= d then
        if not self.still_waiting or self.still_waiting() then return true end
        self.deadline = nil  -- outlived its wait: only a wake ends it
        waiting[self] = nil
    end
    return false
end

function Wait.getfd() return idle:getfd() end
function Wait:dirty() return self:ready() end
function Wait:receive()
    if self:ready() then return "" end
    return nil, "timeout"
end
function Wait.close() end

-- A client's reader: ready when the client's fd is readable; after the
-- client closed, dirty on the idle fd, so its thread wakes and ends.
local Reader = {}
Reader.__index = Reader

function Reader:getfd()
    if self.closed then return idle:getfd() end
    return self.fd
end
function Reader:dirty() return self.closed == true end
function Reader:receive()
    if self.closed then return nil, "closed" end
    if self.woken then
        self.woken = false
        return ""
    end
    self.woken = true  -- parks now; returns at the next call (select said ready)
    return nil, "timeout"
end
function Reader.close() end

-- ---------------------------------------------------------------- backend --

local backend = {}

function backend.current()
    local co = sched.outer()
    if not co then return nil end
    return setmetatable({}, Wait)
end

function backend.suspend(w, deadline, still_waiting)
    if deadline then
        w.deadline, w.still_waiting = deadline, still_waiting
        waiting[w] = true
    end
    copas.receive(w)
    waiting[w] = nil
    if w.args then return unpack(w.args, 1, w.args.n) end
end

function backend.wake(w, ...)
    if w.args then return end
    w.args = pack(...)
    waiting[w] = nil
end

function backend.spawn(fn, ...)
    local args = pack(...)
    -- started at the next step, not inside the caller (Copas 1.x passes a
    -- nil socket first to a thread's function: the wrapper drops it)
    local start = setmetatable({ args = { n = 0 } }, Wait)
    copas.addthread(function()
        copas.receive(start)
        return fn(unpack(args, 1, args.n))
    end)
    return true
end

function backend.blocked(what)
    error(("locker: %s outside a Copas thread would block Copas' loop: make it inside "
           .. "copas.addthread(fn) or locker.spawn(fn)"):format(what), 0)
end

function backend.add_source(client)
    if readers[client] then return end
    local r = setmetatable({ fd = client:fd() }, Reader)
    readers[client] = r
    copas.addthread(function()
        while copas.receive(r) do client:dispatch() end
    end)
end

function backend.remove_source(client)
    local r = readers[client]
    if not r then return end
    readers[client] = nil
    r.closed = true
end

-- ------------------------------------------------------------------ public --

--- Hands locker's waits, callbacks and clients to Copas. opts.on_error: a
-- function for errors of callbacks and spawned coroutines (default:
-- Copas' error handler). Idempotent.
function M.use(opts)
    on_error = sched.host_options("locker.copas.use", opts)
    if used then return M end
    used = true
    -- LuaSocket 3.0's udp() makes its fd only once it is bound: udp4() at once
    idle = idle or assert((socket.udp4 or socket.udp)())
    assert(idle:getfd() >= 0, "locker.copas: LuaSocket gave a UDP socket without an fd")
    sched.host_take(backend, report)
    return M
end

--- Seconds until the earliest deadline of locker's waits (nil: none).
function M.next_deadline()
    local first = nil
    for w in pairs(waiting) do
        if w.deadline and (not first or w.deadline < first) then first = w.deadline end
    end
    if not first then return nil end
    local left = first - sched.now()
    return left > 0 and left or 0
end

--- copas.step(timeout), its select never sleeping past locker's next
-- deadline (timeout nil: as long as nothing is due).
function M.step(timeout)
    local due = M.next_deadline()
    if due and (not timeout or due < timeout) then timeout = due end
    return copas.step(timeout)
end

--- copas.loop() with locker's deadlines: steps until until() (if given)
-- returns true, else forever.
function M.loop(until_fn)
    while not (until_fn and until_fn()) do M.step(until_fn and 0.1 or nil) end
end

--- Ends every reader (each wakes and ends at the next step) and gives
-- locker its own scheduler back. Clients stay open: close them first.
function M.stop()
    if not used then return end
    used = false
    sched.host_leave(report)
end

--- How many clients Copas reads (for tests and status pages).
function M.polled()
    local n = 0
    for _ in pairs(readers) do n = n + 1 end
    return n
end

return M

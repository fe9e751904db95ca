--- locker: distributed locks and health records on etcd.
-- The public API. A C engine thread (locker.core) does every etcd call and
-- all refresh timing; this file validates arguments, turns the engine's
-- events into return values and callbacks, and waits without blocking the
-- scheduler (see locker.sched).
local core = require "locker.core"  -- the only module that loads it
local sched = require "locker.sched"
sched.setup(core.poll, core.now)

local type, pairs, next, tostring, error, setmetatable = type, pairs, next, tostring, error, setmetatable
local floor, ceil, huge, min = math.floor, math.ceil, math.huge, math.min
local ipairs = ipairs

local _M = { _VERSION = "0.1.0" }

--- Limits (bytes). A name ends up inside an etcd key, a value inside one
-- gateway request (etcd refuses requests over 1.5 MiB; base64 adds a third).
_M.MAX_NAME = 512
_M.MAX_VALUE = 1024 * 1024
_M.MAX_KEY = 4096
_M.MAX_LIMIT = 10000  -- a semaphore's largest limit (lock{limit = N})
--- Every code a failure can carry (`nil, msg, code`), as the engine names
-- them: the one vocabulary (see the README's list).
_M.errors = {}
for i, name in ipairs(core.errors) do _M.errors[i] = name end
_M.MAX_PREFIX = 256

--- Monotonic seconds (CLOCK_MONOTONIC, with fractions): for durations.
_M.now = core.now
--- Wall-clock seconds since the epoch (with fractions): for time stamps.
_M.time = core.time

_M.spawn = sched.spawn
_M.run = sched.run
_M.sleep = sched.sleep
_M.step = sched.step

--- Where errors of callbacks go (a function receiving one string).
function _M.on_error(fn)
    if type(fn) ~= "function" then error("locker.on_error: expected a function", 2) end
    sched.on_error = fn
end

-- ---------------------------------------------------------------- checks --

local function fail_opt(where, name, want, got)
    error(("%s: option '%s' must be %s (got %s)"):format(where, name, want, tostring(got)), 3)
end

local function check_keys(where, opts, allowed)
    for k in pairs(opts) do
        if not allowed[k] then
            error(("%s: unknown option '%s'"):format(where, tostring(k)), 3)
        end
    end
end

local function check_name(where, name)
    if type(name) ~= "string" then
        error(("%s: name must be a string (got %s)"):format(where, type(name)), 3)
    end
    if name == "" then error(where .. ": name is empty", 3) end
    if #name > _M.MAX_NAME then
        error(("%s: name is %d bytes, the limit is %d"):format(where, #name, _M.MAX_NAME), 3)
    end
    if name:find("/", 1, true) then
        error(("%s: name %q contains '/' (it would reach into other locks' keys)"):format(where, name), 3)
    end
    if name:find("\0", 1, true) then
        error(("%s: name %q contains a NUL byte"):format(where, name), 3)
    end
end

-- A shallow copy of an options table.
local function opts_copy(opts)
    local o = {}
    for k, v in pairs(opts) do o[k] = v end
    return o
end

-- A key of the caller's own (lock:put, lock:delete, client:read): any
-- etcd key but one under the lock prefix, whose keys are the locks'.
local function check_key(where, key, prefix)
    if type(key) ~= "string" then
        error(("%s: key must be a string (got %s)"):format(where, type(key)), 3)
    end
    if key == "" then error(where .. ": key is empty", 3) end
    if #key > _M.MAX_KEY then
        error(("%s: key is %d bytes, the limit is %d"):format(where, #key, _M.MAX_KEY), 3)
    end
    if prefix and key:sub(1, #prefix) == prefix then
        error(("%s: key %q is under the lock prefix %q, where only locks write"):format(
            where, key, prefix), 3)
    end
end

local function check_value(where, value)
    if type(value) ~= "string" then
        error(("%s: value must be a string (got %s)"):format(where, type(value)), 3)
    end
    if #value > _M.MAX_VALUE then
        error(("%s: value is %d bytes, the limit is %d"):format(where, #value, _M.MAX_VALUE), 3)
    end
end

-- ---------------------------------------------------------------- client --

local Client = {}
Client.__index = Client

local Lock = {}
Lock.__index = Lock

local deliver  -- function(sub, event), defined with Watch below

local CLOSED = { ok = false, code = "closed", msg = "client is closed" }

-- Work keeps a client alive: while it has waiting calls, locks or watches
-- it is referenced from here. Otherwise a client used only inside a
-- suspended coroutine would be garbage (the coroutine is referenced only
-- by the client's pending calls) and collected, closing it mid-wait.
local busy = {}  -- luacheck: ignore 241 (held only to be referenced)

local function retain(self)
    busy[self] = true
end

local function settle(self)
    if next(self._pending) == nil and next(self._locks) == nil
        and next(self._watching) == nil and not self._all then
        busy[self] = nil
    end
end

-- Whether a waiting call may wait here: anywhere with this file's own
-- scheduler; with a host's (nginx), only where the host can yield.
local function can_wait()
    return not sched.backend() or sched.current() ~= nil
end

-- A waiting call where nothing may wait raises before anything is sent
-- (so no lock is taken, no request made, behind the caller's back).
local function check_can_wait(what)
    if not can_wait() then sched.backend().blocked(what) end
end

-- Waits for the answer to request id; yields inside a spawned coroutine.
local function await(self, id)
    local slot = {}
    self._pending[id] = slot
    retain(self)
    local w = sched.current()
    if w then
        slot.co = w
        return sched.suspend(w)
    end
    sched.loop(function() return slot.ev ~= nil end)
    return slot.ev
end

local function answer(ev)
    if ev.ok then return true end
    return nil, ev.msg, ev.code
end

-- ----------------------------------------------------------------- watch --

local Watch = {}
Watch.__index = Watch

-- Wakes the coroutine waiting in w:next(), if any.
local function wake_waiter(w)
    local co = w._waiter
    if co then
        w._waiter, w._wait_mark = nil, nil
        sched.wake(co)
    end
end

--- How many events a watch without a callback keeps for w:next(); past
-- that, the newest replaces the last one kept (ev.skipped counts the
-- changes folded in), so a watch nobody reads costs one event, not one per
-- change.
_M.WATCH_QUEUE = 64

local function push(w, ev)
    if w._fn then
        sched.call_in_order(w, w._fn, ev.value, ev)
        return
    end
    local q = w._queue
    local n = #q
    if n >= _M.WATCH_QUEUE then
        local folded = {}
        for k, v in pairs(ev) do folded[k] = v end
        folded.skipped = (q[n].skipped or 0) + 1 + (ev.skipped or 0)
        folded.resync = ev.resync or q[n].resync
        q[n] = folded
    else
        q[n + 1] = ev
    end
    wake_waiter(w)
end

-- One engine subscription per watched name, fanned out to its watchers.
deliver = function(sub, raw)
    local ev = { name = raw.name or sub.name, value = raw.value, token = raw.token,
                 revision = raw.revision, resync = raw.resync == true,
                 skipped = raw.skipped }
    if sub.all then  -- watch_all: the latest state of each name held
        sub.held[ev.name] = ev.value ~= nil and ev or nil
    else
        sub.last = ev
    end
    sub.changed = core.time()
    for w in pairs(sub.watchers) do push(w, ev) end
end

--- The next change: value (nil when nobody holds the name) and the event
-- { name, value, token, revision, resync }. Yields in a spawned coroutine.
-- When no event comes (timeout seconds passed, or the watch was canceled or
-- its client closed) it returns nil, nil, message, code.
function Watch:next(timeout)
    local q = self._queue
    if not q then error("watch:next: this watch has a callback", 2) end
    local deadline = timeout and sched.now() + timeout
    while #q == 0 do
        if self._ended then return nil, nil, self._ended.msg, self._ended.code end
        if deadline and sched.now() >= deadline then
            return nil, nil, "no change within " .. timeout .. " s", "timeout"
        end
        local w = sched.current()
        if w then
            local mark = {}
            self._waiter, self._wait_mark = w, mark
            sched.suspend(w, deadline, function() return self._wait_mark == mark end)
            self._waiter, self._wait_mark = nil, nil
        else
            sched.loop(function() return #q > 0 or self._ended end, deadline)
        end
    end
    local ev = table.remove(q, 1)
    return ev.value, ev
end

--- Iterates over events (tables; ev.value nil = gone) until the watch ends.
function Watch:events()
    return function()
        local _, ev = self:next()
        return ev
    end
end

local function end_watch(w, msg, code)
    if w._ended then return end
    w._ended = { msg = msg, code = code }
    wake_waiter(w)
end

--- Stops the watch. Idempotent.
function Watch:cancel()
    if self._ended then return true end
    end_watch(self, "watch canceled", "canceled")
    local client, sub = self.client, self._sub
    sub.watchers[self] = nil
    if sub.all then
        if next(sub.watchers) == nil and not client._closed then
            client._all = nil
            client._subs[sub.id] = nil
            client._core:unwatch_all()
            settle(client)
        end
        return true
    end
    if next(sub.watchers) == nil and not sub.followed and not client._closed then
        client._watching[sub.name] = nil
        client._subs[sub.id] = nil
        client._core:unwatch(sub.name)
        settle(client)
    end
    return true
end

Watch.__close = Watch.cancel

local function subscribe(self, name)
    local sub = self._watching[name]
    if not sub then
        sub = { name = name, watchers = {} }
        sub.id = self._core:watch(name)
        self._watching[name] = sub
        self._subs[sub.id] = sub
    end
    return sub
end

--- Follows NAME's owner: fn(value, ev) on the current state, then on every
-- change (value nil: nobody holds it). Without fn, changes queue up for
-- watch:next(). One etcd stream serves every watch of the client.
function Client:watch(name, fn)
    check_name("client:watch", name)
    if fn ~= nil and type(fn) ~= "function" then
        error("client:watch: fn must be a function (got " .. type(fn) .. ")", 2)
    end
    if self._closed then return nil, "client is closed", "closed" end
    local sub = subscribe(self, name)
    local w = setmetatable({ client = self, name = name, _sub = sub, _fn = fn,
                             _queue = not fn and {} or nil }, Watch)
    sub.watchers[w] = true
    retain(self)
    if sub.last then push(w, sub.last) end  -- the current state, as others saw it
    return w
end

--- Follows every name under the client's prefix: fn(value, ev) with
-- ev.name, first for each name held now, then on every change of any
-- name's owner (value nil: nobody holds it any more), as client:watch does
-- for one name, over the same stream. Without fn, w:next() / w:events().
function Client:watch_all(fn)
    if fn ~= nil and type(fn) ~= "function" then
        error("client:watch_all: fn must be a function (got " .. type(fn) .. ")", 2)
    end
    if self._closed then return nil, "client is closed", "closed" end
    local sub = self._all
    if not sub then
        sub = { all = true, watchers = {}, held = {} }
        sub.id = self._core:watch_all()
        self._all = sub
        self._subs[sub.id] = sub
    end
    local w = setmetatable({ client = self, _sub = sub, _fn = fn,
                             _queue = not fn and {} or nil }, Watch)
    sub.watchers[w] = true
    retain(self)
    local names = {}
    for name in pairs(sub.held) do names[#names + 1] = name end
    table.sort(names)
    for _, name in ipairs(names) do push(w, sub.held[name]) end  -- as others saw it
    return w
end

--- Keeps NAME's owner in the engine's cache, for client:cached(), with no
-- callback and no queue (nothing piles up when nobody reads). Idempotent;
-- it lasts as long as the client.
function Client:follow(name)
    check_name("client:follow", name)
    if self._closed then return nil, "client is closed", "closed" end
    local sub = subscribe(self, name)
    if not sub.followed then
        sub.followed = true
        retain(self)
    end
    return true
end

--- The names this client watches or follows, sorted.
function Client:names()
    local list = {}
    for name in pairs(self._watching) do list[#list + 1] = name end
    table.sort(list)
    return list
end

--- What the Lua side knows of a watched or followed NAME: { value, token,
-- revision, changed = <wall-clock time of the last change delivered>,
-- skipped = <changes folded into it> }, or nil before the first event.
function Client:last(name)
    local sub = self._watching[name]
    if not sub or not sub.last then return nil end
    local ev = sub.last
    return { value = ev.value, token = ev.token, revision = ev.revision,
             changed = sub.changed, resync = ev.resync, skipped = ev.skipped }
end

--- The latest known value of a watched NAME, without I/O: value, token,
-- revision, age; nil, nil, nil, age when nobody holds it; nil, msg,
-- "pending" before the first answer; nil, msg, "not_watched" when this
-- client does not watch NAME. age: seconds since the watch stream last
-- showed it is live (an event, a progress note, a probe), nil if never.
function Client:cached(name)
    return self._core:cached(name)
end

-- Runs a lock's on_change, checked where it is handed over (it may run
-- long after the engine queued it): true only while the lock is owned at
-- this moment, false only after a true was told.
local function tell_owned(lock, owned, msg, code)
    if owned then
        if lock._told or not lock:owned() then return end
        lock._told = true
    else
        if not lock._told then return end
        lock._told = false
    end
    return lock._on_change(owned, lock, msg, code)
end

--- The exact decimal digits of a token or revision as the core gives it:
-- an integer (Lua 5.3+), a number up to 2^53 or a string beyond (5.1,
-- LuaJIT), where tostring() would write 1e+14.
local function int64_text(v)
    if type(v) == "string" then return v end
    if math.type and math.type(v) == "integer" then return tostring(v) end
    return ("%.0f"):format(v)
end
_M.int64_text = int64_text

-- Tells on_event (in order, each in a spawned coroutine: it may wait; an
-- error goes to locker.on_error, never into the engine).
local function emit(self, ev)
    local fns = self._on_event
    if #fns == 0 then return end
    ev.time = core.time()
    for i = 1, #fns do sched.call_in_order(self._event_calls, fns[i], ev) end
end

-- A returned lock's ownership changed (not by release, which tells itself).
local function lock_news(self, lock, ev)
    if not lock._returned then return end
    if ev.owned and lock._lost then
        lock._lost = nil
        lock._token = ev.token or lock._token
        emit(self, { kind = "acquired", name = lock.name, token = ev.token, key = ev.key })
    elseif not ev.owned and ev.code and not lock._lost then
        lock._lost = true
        emit(self, { kind = "lost", name = lock.name, token = ev.token or lock._token,
                     code = ev.code, reason = ev.msg })
    end
end

-- Hands each of the engine's events to whoever waits for it (quiet:
-- answers only, no callback starts).
local function route(self, evs, quiet)
    for i = 1, #evs do
        local ev = evs[i]
        if ev.kind == "result" then
            local slot = self._pending[ev.id]
            if slot then
                self._pending[ev.id] = nil
                slot.ev = ev
                if slot.co then sched.wake(slot.co, ev) end
                settle(self)
            end
        elseif quiet then  -- closing: answers only, no callback starts
            evs[i] = nil
        elseif ev.kind == "watch" then
            local sub = self._subs[ev.id]
            if sub then deliver(sub, ev) end
        elseif ev.kind == "note" then
            emit(self, { kind = ev.name, endpoint = ev.key, reason = ev.msg })
        else
            local lock = self._locks[ev.id]
            if lock and ev.key then lock._key = ev.key end
            if lock then lock_news(self, lock, ev) end
            if lock and lock._on_change then
                sched.call_in_order(lock, tell_owned, lock, ev.owned, ev.msg, ev.code)
            end
        end
    end
end

--- Delivers the engine's events: answers to waiting calls, ownership
-- changes to locks (on_change runs as a spawned coroutine). A loop that
-- drives the client through client:fd() calls this when the fd is readable.
-- quiet: answers only (no watch or on_change callback starts).
function Client:dispatch(quiet)
    route(self, self._core:events(), quiet)
end

--- The fd that is readable when the client has events (for other loops).
function Client:fd()
    return self._core:fd()
end

--- For loops that can connect but cannot poll a descriptor (nginx's
-- cosockets): the path of a unix socket to connect to, in a private
-- directory. Once connected, client:wake_accept() hands the connection to
-- the engine and removes the path; the engine then writes a byte on it
-- whenever events start waiting (client:dispatch() takes them), and one at
-- least every 0.25 s while it runs. One per client.
function Client:wake_socket()
    return self._core:wake_listen()
end

--- See client:wake_socket(): true, or nil, message.
function Client:wake_accept()
    return self._core:wake_accept()
end

local lock_opts = { timeout = true, wait = true, keep = true, on_change = true,
                    background = true, limit = true }

-- lock() and campaign(): where names the call in errors; mt is the
-- metatable of what it returns (Lock, Leader). Called as a tail call, so
-- that errors at level 3 point at the caller's line.
local function acquire(self, where, mt, name, value, opts)
    check_name(where, name)
    if value == nil then value = "" end
    check_value(where, value)
    opts = opts or {}
    if type(opts) ~= "table" then error(where .. ": opts must be a table", 3) end
    check_keys(where, opts, lock_opts)
    local timeout = opts.timeout
    if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0 or timeout ~= timeout) then
        fail_opt(where, "timeout", "a number of seconds >= 0", timeout)
    end
    for _, k in ipairs({ "wait", "keep", "background" }) do
        if opts[k] ~= nil and type(opts[k]) ~= "boolean" then
            fail_opt(where, k, "a boolean", opts[k])
        end
    end
    if opts.on_change ~= nil and type(opts.on_change) ~= "function" then
        fail_opt(where, "on_change", "a function", opts.on_change)
    end
    local limit = opts.limit
    if limit ~= nil then
        if mt ~= Lock then error(where .. ": an election has one leader: it takes no limit", 3) end
        if type(limit) ~= "number" or limit ~= floor(limit) or limit < 1 or limit > _M.MAX_LIMIT then
            fail_opt(where, "limit", "a whole number from 1 to " .. _M.MAX_LIMIT, limit)
        end
    end
    if opts.background and (opts.keep ~= true or opts.wait == false or timeout) then
        error(where .. ": a background lock keeps trying: it needs keep = true, "
              .. "and takes no wait or timeout", 3)
    end
    if self._closed then return nil, "client is closed", "closed" end
    if not opts.background then check_can_wait(where) end
    local timeout_ms = (timeout == nil or timeout == huge) and -1 or floor(timeout * 1000)
    -- under a millisecond there is no time to wait: one try, as wait = false
    local wait = opts.wait ~= false and timeout_ms ~= 0
    if timeout_ms == 0 then timeout_ms = -1 end  -- one try needs no deadline
    local deadline = timeout_ms >= 0 and core.now() + timeout_ms / 1000
    while true do
        local id, status = self._core:lock(name, value, timeout_ms, wait,
                                           opts.keep == true, opts.background == true, limit or 1)
        local lock = setmetatable({
            client = self, name = name, _id = id, _own = status,
            _on_change = opts.on_change,
        }, mt)
        self._locks[id] = lock
        retain(self)
        if opts.background then  -- its first grant is an acquisition too
            lock._returned, lock._lost = true, true
            return lock
        end
        local ev = await(self, id)
        -- the grant is checked where it is handed over: this coroutine may
        -- resume long after it came (a busy caller), when it has ended
        if ev.ok and status:owned() then
            lock._key = ev.key
            lock._returned = true
            lock._token = ev.token  -- the last token owned, for a 'lost' event
            emit(self, { kind = "acquired", name = name, token = ev.token, key = ev.key })
            return lock
        end
        self._locks[id] = nil
        lock._released = true
        if ev.ok then self._core:release(id) end  -- what is left of it goes
        settle(self)
        if not ev.ok then
            if ev.code == "locked" and wait ~= (opts.wait ~= false) then
                return nil, ev.msg, "timeout"  -- asked to wait, for no time at all
            end
            return nil, ev.msg, ev.code
        end
        local left = deadline and deadline - core.now()
        if not wait or (left and left < 0.001) then
            return nil, ("lock '%s': granted, but its ownership ended before lock() "
                         .. "could return (the caller was busy, or etcd stopped "
                         .. "confirming it)"):format(name), "lost"
        end
        timeout_ms = left and floor(left * 1000) or -1  -- again, in the time left
    end
end

--- Takes the lock NAME with VALUE; waits until owned (see opts).
-- @return Lock, or nil, message, code ("timeout", "locked", "unavailable", ...)
function Client:lock(name, value, opts)
    return acquire(self, "client:lock", Lock, name, value, opts)
end

-- -------------------------------------------------------------- election --
-- An election is a lock whose value is the leader's proclamation: the
-- same keys (prefix NAME "/" hex(lease)) as etcdctl elect and Go's
-- concurrency.Election, so either side sees the other's leader.

local set_value  -- function(lock, where, value): lock:set, leader:proclaim (below)

local Leader = setmetatable({}, { __index = Lock })
Leader.__index = Leader
Leader.__close = Lock.release

--- Campaigns for leadership of NAME with VALUE; waits until leader (opts as
-- for lock: timeout, wait = false, keep, on_change).
-- @return Leader (proclaim, resign, owned, token, valid_for, key, put,
-- delete), or nil, message, code
function Client:campaign(name, value, opts)
    if value == nil then
        error("client:campaign: value must be a string (got nil): it is what the "
              .. "leader proclaims", 2)
    end
    return acquire(self, "client:campaign", Leader, name, value, opts)
end

--- NAME's current leader: value, token (its create revision), revision
-- (etcd's, of the answer); nil when there is none; nil, message, code.
function Client:leader(name)
    check_name("client:leader", name)
    if self._closed then return nil, "client is closed", "closed" end
    check_can_wait("client:leader")
    local ev = await(self, self._core:get(name))
    if not ev.ok then return nil, ev.msg, ev.code end
    if ev.value == nil then return nil end
    return ev.value, ev.token, ev.revision
end

--- Every change of NAME's leader, in order, "no leader" included: a watch
-- (fn(value, ev), or w:next() / w:events() without fn), resuming across
-- reconnects and compaction like client:watch.
function Client:observe(name, fn)
    check_name("client:observe", name)
    if fn ~= nil and type(fn) ~= "function" then
        error("client:observe: fn must be a function (got " .. type(fn) .. ")", 2)
    end
    return self:watch(name, fn)
end

--- The leader proclaims a new value (guarded by its token, as lock:set).
function Leader:proclaim(value)
    return set_value(self, "leader:proclaim", value)
end

--- Gives up leadership (the key is deleted at once). Idempotent.
function Leader:resign()
    return self:release()
end

--- Any etcd key's value (outside the lock prefix: what lock:put writes).
-- @return value, revision (the key's mod revision) | nil, revision (no such
-- key; etcd's revision) | nil, message, code
function Client:read(key)
    check_key("client:read", key, nil)
    if self._closed then return nil, "client is closed", "closed" end
    check_can_wait("client:read")
    local ev = await(self, self._core:read(key))
    if not ev.ok then return nil, ev.msg, ev.code end
    return ev.value, ev.revision
end

--- The value of NAME's owner, or nil when nobody holds it.
-- @return value | nil | nil, message, code
function Client:get(name)
    local owner, msg, code = self:owner(name)
    if owner then return owner.value end
    if msg == nil then return nil end
    return nil, msg, code
end

--- NAME's owner as { value =, token =, revision = }, or nil when none.
function Client:owner(name)
    check_name("client:owner", name)
    if self._closed then return nil, "client is closed", "closed" end
    check_can_wait("client:get")
    local ev = await(self, self._core:get(name))
    if not ev.ok then return nil, ev.msg, ev.code end
    if ev.value == nil then return nil end
    return { value = ev.value, token = ev.token, revision = ev.revision }
end

--- Every name under the client's prefix that has contenders, sorted by
-- name: { name =, value = <owner's>, token =, mod_revision = <the owner
-- key's last write>, lease = <owner's, hex>, waiters = <contenders behind
-- the owners>, limit = <N: a semaphore's, 1: a lock>, holders = { { value
-- =, token =, mod_revision =, lease = }, ... } (the N oldest, oldest first),
-- revision = <etcd's when it answered the read> }. The limit is the oldest
-- contender's. One request.
function Client:status()
    if self._closed then return nil, "client is closed", "closed" end
    check_can_wait("client:status")
    local ev = await(self, self._core:list())
    if not ev.ok then return nil, ev.msg, ev.code end
    local by_name, list, limits = {}, {}, {}
    for _, kv in ipairs(ev.kvs) do  -- contender and limit keys; kv.name from the engine
        if kv.limit_key then
            limits[kv.name .. "\0" .. kv.lease] = tonumber(kv.value)
        else
            local e = by_name[kv.name]
            if not e then
                e = { name = kv.name, contenders = {} }
                by_name[kv.name] = e
                list[#list + 1] = e
            end
            e.contenders[#e.contenders + 1] = { value = kv.value, token = kv.create_revision,
                                                lease = kv.lease, mod_revision = kv.mod_revision }
        end
    end
    for _, e in ipairs(list) do
        local all = e.contenders
        table.sort(all, function(a, b) return a.token < b.token end)
        local oldest = all[1]
        e.token, e.value, e.lease = oldest.token, oldest.value, oldest.lease
        e.mod_revision = oldest.mod_revision
        e.limit = limits[e.name .. "\0" .. oldest.lease] or 1
        e.holders = {}
        for i = 1, math.min(e.limit, #all) do e.holders[i] = all[i] end
        e.waiters = #all - #e.holders
        e.contenders = nil
    end
    table.sort(list, function(a, b) return a.name < b.name end)
    for _, e in ipairs(list) do e.revision = ev.revision end
    return list
end

--- Closes the client: every lock is released at once (the session lease is
-- revoked), waiting calls return nil, msg, "closed". Idempotent.
function Client:close()
    if self._closed then return true end
    self._closed = true
    for name, g in pairs(self._groups) do
        self._groups[name] = nil
        g:close()
    end
    -- an event loop's adapter stops polling the fd before it closes
    sched.remove_source(self)
    -- answers only: a callback would need a scheduler, and a host may allow
    -- none here (nginx's exit_worker_by_lua)
    route(self, self._core:close(), true)
    for id, slot in pairs(self._pending) do
        self._pending[id] = nil
        slot.ev = CLOSED
        if slot.co then sched.wake(slot.co, CLOSED) end
    end
    for id, lock in pairs(self._locks) do
        lock._released = true
        self._locks[id] = nil
    end
    if self._all then
        for w in pairs(self._all.watchers) do end_watch(w, "client is closed", "closed") end
        self._all = nil
    end
    for name, sub in pairs(self._watching) do
        for w in pairs(sub.watchers) do end_watch(w, "client is closed", "closed") end
        self._watching[name] = nil
    end
    busy[self] = nil
    return true
end

--- The client of group NAME: the same connection options as this one,
-- with the prefix self.prefix .. NAME .. "/", so that the group's records
-- are the names under it (its watch_all sees them all; locker.ngx's
-- upstreams and the CLI's register --group use it). Made once per NAME; it
-- closes with this client. Do not also lock NAME itself on this client:
-- the group's keys are in that name's range.
function Client:group(name)
    check_name("client:group", name)
    if self._closed then return nil, "client is closed", "closed" end
    local g = self._groups[name]
    if g and not g._closed then return g end
    local o = opts_copy(self._opts)
    o.prefix = self.prefix .. name .. "/"
    local c, msg, code = _M.new(o)
    if not c then return nil, msg, code end
    self._groups[name] = c
    return c
end

--- The session lease ID in hex (as etcdctl shows it), or nil before the
-- first lock and after close. Contender keys end with it.
function Client:lease()
    if self._closed then return nil, "client is closed", "closed" end
    return self._core:lease()
end

--- The session: { lease = <hex, or nil>, state = "none" | "ok" |
-- "jeopardy" | "lost", valid_for = <seconds to the local deadline, or nil>,
-- endpoint = <the URL requests go to first>, stream = <the watch stream
-- runs and is not suspected of being silent> }.
-- "jeopardy": renewals are late; owned locks stay owned until the local
-- deadline (valid_for reaches 0) unless a renewal comes. No I/O: computed
-- from the engine's published times and the clock now.
function Client:session()
    if self._closed then return nil, "client is closed", "closed" end
    return self._core:session()
end

--- Counters of what the engine has done: requests (HTTP requests started),
-- keepalives (lease renewals), stream_events, stream_connects.
function Client:stats()
    return self._core:stats()
end

--- The engine's metrics: counters, gauges and latency histograms (see
-- locker.metrics for their names and meaning); after close, the last
-- ones. No I/O, and nothing asked of the engine: it keeps them in atomics.
-- Histograms are { buckets = { {le, cumulative count}, ... }, sum, count };
-- failovers is a list by endpoint (endpoints: the URLs, in that order).
function Client:metrics()
    local m = self._core:metrics()
    m.endpoints = self.endpoints
    return m
end

--- One Prometheus scrape (text format 0.0.4) of one client or of a list
-- of clients, each { client, labels }; labels are extra labels on every
-- sample (a table of name = string).
function _M.metrics_text(client, labels)
    local metrics = require "locker.metrics"
    metrics.check_labels("locker.metrics_text", labels)
    local sets = {}
    if getmetatable(client) == Client then
        sets[1] = { client:metrics(), labels }
    elseif type(client) == "table" then
        for i, pair in ipairs(client) do
            if type(pair) ~= "table" or getmetatable(pair[1]) ~= Client then
                error(("locker.metrics_text: item %d must be { client, labels }"):format(i), 2)
            end
            metrics.check_labels("locker.metrics_text", pair[2])
            local merged = {}
            for k, v in pairs(labels or {}) do merged[k] = v end
            for k, v in pairs(pair[2] or {}) do merged[k] = v end
            sets[#sets + 1] = { pair[1]:metrics(), merged }
        end
    else
        error("locker.metrics_text: expected a client (got " .. type(client) .. ")", 2)
    end
    return metrics.render(sets)
end

--- Structured events, for logs and dashboards: fn(ev) with ev.kind one of
-- "acquired", "released", "lost" (name, token, code, reason: the message),
-- "jeopardy", "renewed_late", "failover", "reconnect", "resync", "auth_renewed" (endpoint,
-- reason), and ev.time (wall clock, seconds). Each runs in a spawned
-- coroutine, in order; an error in fn goes to locker.on_error. Every
-- listener added gets every event; returns a function that removes fn.
-- nil removes them all.
function Client:on_event(fn)
    if fn == nil then
        self._on_event = {}
        return function() end
    end
    if type(fn) ~= "function" then
        error("client:on_event: fn must be a function (got " .. type(fn) .. ")", 2)
    end
    local fns = self._on_event
    fns[#fns + 1] = fn
    return function()
        for i = #self._on_event, 1, -1 do
            if self._on_event[i] == fn then table.remove(self._on_event, i) return end
        end
    end
end

--- One line of text for an event of client:on_event(), the same words
-- the CLI and the health runner log: "lost job (token 42): ...".
function _M.event_text(ev)
    local kind = tostring(ev.kind)
    local parts = { kind }
    if ev.name then parts[#parts + 1] = " " .. ev.name end
    if ev.token then parts[#parts + 1] = (" (token %s)"):format(int64_text(ev.token)) end
    if ev.endpoint then parts[#parts + 1] = " " .. ev.endpoint end
    if ev.reason then parts[#parts + 1] = ": " .. ev.reason end
    if ev.code and ev.code ~= kind then parts[#parts + 1] = (" [%s]"):format(ev.code) end
    return table.concat(parts)
end

function Client:closed()
    return self._closed == true
end

Client.__close = Client.close
Client.__gc = Client.close  -- Lua 5.2+; the core's own __gc covers 5.1

-- ------------------------------------------------------------------ lock --

--- Whether the lock is owned right now: etcd showed its key first and
-- the session lease is confirmed until past this moment (the local
-- deadline, compared with the clock at the call: right even after the
-- process was frozen or suspended). No I/O.
function Lock:owned()
    return not self._released and self._own:owned()
end

--- The fencing token (the owner key's create_revision) while owned, else nil.
function Lock:token()
    if self._released then return nil end
    return self._own:token()
end

--- Seconds of ownership left unless the lease is renewed (the local
-- deadline), or nil when not owned.
function Lock:valid_for()
    if self._released then return nil end
    return self._own:valid_for()
end

--- Changes the value while holding the lock (guarded by the token).
-- @return true, or nil, message, code ("not_owner", ...)
set_value = function(self, where, value)
    check_value(where, value)
    if self.client._closed then return nil, "client is closed", "closed" end
    if self._released then
        return nil, ("lock '%s': released"):format(self.name), "not_owner"
    end
    if not self:owned() then
        return nil, ("lock '%s': not owned"):format(self.name), "not_owner"
    end
    check_can_wait(where)
    return answer(await(self.client, self.client._core:set(self._id, value)))
end

function Lock:set(value)
    return set_value(self, "lock:set", value)
end

-- lock:put / lock:delete: a write of any key outside the lock prefix, done
-- by etcd only if this lock's key still exists with its token (one txn).
local function guarded(self, what, key, value)
    local where = "lock:" .. what
    check_key(where, key, self.client.prefix)
    if value ~= nil or what == "put" then check_value(where, value) end
    if self.client._closed then return nil, "client is closed", "closed" end
    if self._released or not self:owned() then
        return nil, ("lock '%s': %s: not owned%s"):format(self.name, what,
            self._released and " (released)" or ""), "not_owner"
    end
    check_can_wait(where)
    local engine = self.client._core
    local ev = await(self.client, what == "put" and engine:put(self._id, key, value)
                                                  or engine:delete(self._id, key))
    if not ev.ok then return nil, ("lock '%s': %s"):format(self.name, ev.msg), ev.code end
    return ev.revision
end

--- Writes key = value (no lease) only while this lock is owned: etcd checks
-- the lock's key in the same txn.
-- @return revision | nil, message, code ("not_owner": nothing was written)
function Lock:put(key, value)
    return guarded(self, "put", key, value)
end

--- Deletes key only while this lock is owned (as put).
-- @return revision | nil, message, code ("not_owner": nothing was deleted)
function Lock:delete(key)
    return guarded(self, "delete", key)
end

--- Releases the lock (its key is deleted at once). Idempotent.
function Lock:release()
    if self._released then return true end
    local client = self.client
    if self._returned and not self._lost then
        emit(client, { kind = "released", name = self.name, token = self:token() or self._token })
    end
    self._released = true
    if client._closed then return true end
    if not can_wait() then  -- where nothing may wait: sent, not awaited
        client._core:release(self._id)
        client._locks[self._id] = nil
        settle(client)
        return true
    end
    local ev = await(client, client._core:release(self._id))
    client._locks[self._id] = nil
    settle(client)
    return answer(ev)
end

--- The etcd key the engine wrote for this lock when it was last granted
-- (prefix NAME "/" hex(lease)), or nil before it was first owned.
function Lock:key()
    return self._key
end

Lock.__close = Lock.release

-- ----------------------------------------------------------------- new --

local new_opts = { on_event = true, endpoints = true, prefix = true, ttl = true, timeout = true,
                   margin = true, cacert = true, cert = true, key = true,
                   insecure = true, proxy_env = true, user = true, password = true,
                   lock_delay = true, transport = true }

_M.TRANSPORTS = { grpc = true, gateway = true }

-- TLS and authentication options, checked now: a file that cannot be read
-- is named at once, not at the first request. Never echoes a password.
local function secure_opts(opts, eps)
    local s = {}
    for _, k in ipairs { "cacert", "cert", "key" } do
        local path = opts[k]
        if path ~= nil then
            if type(path) ~= "string" or path == "" or path:find("\0", 1, true) then
                fail_opt("locker.new", k, "a file path", path)
            end
            local f, err = io.open(path, "rb")
            if not f then error(("locker.new: option '%s': cannot read %s"):format(k, err), 3) end
            f:close()
            s[k] = path
        end
    end
    if s.key and not s.cert then
        error("locker.new: option 'key' needs 'cert' (the client certificate it goes with)", 3)
    end
    for _, k in ipairs { "insecure", "proxy_env" } do
        if opts[k] ~= nil and type(opts[k]) ~= "boolean" then
            fail_opt("locker.new", k, "true or false", opts[k])
        end
        s[k] = opts[k] or nil
    end
    local user, password = opts.user, opts.password
    if user ~= nil and (type(user) ~= "string" or user == "" or user:find("\0", 1, true)) then
        fail_opt("locker.new", "user", "a non-empty string", user)
    end
    if password ~= nil and (type(password) ~= "string" or password:find("\0", 1, true)) then
        error("locker.new: option 'password' must be a string without NUL (got a "
              .. type(password) .. ")", 3)
    end
    if password ~= nil and user == nil then
        error("locker.new: option 'password' needs 'user'", 3)
    end
    if user ~= nil and password == nil then
        error("locker.new: option 'user' needs 'password'", 3)
    end
    s.user, s.password = user, password
    if s.insecure then
        for _, url in ipairs(eps) do
            if url:match("^https://") then
                sched.on_error("locker.new: insecure = true: the certificates of etcd at "
                               .. table.concat(eps, ", ") .. " are not verified; anyone "
                               .. "between here and etcd can read and change what is sent")
                break
            end
        end
    end
    return s
end

--- Makes a client. opts: endpoints (list of http(s) URLs), prefix
-- ("/locker/"), ttl (seconds, 10), timeout (seconds per request, 5),
-- margin (seconds: ownership ends this long before the lease could expire
-- on the server; min(2, ttl/5) by default, at most ttl/2).
-- A secured etcd: cacert (CA file that signed etcd's certificate), cert and
-- key (client certificate, PEM), insecure (true: no verification, warns),
-- proxy_env (true: honour http(s)_proxy), user and password (etcd's
-- authentication). transport: "grpc" (etcd's native protocol: HTTP/2,
-- protobuf) or "gateway" (its JSON gateway over HTTP/1.1); by default the
-- LOCKER_TRANSPORT environment variable, else "gateway".
-- Misuse raises; no I/O happens until the first call.
function _M.new(opts)
    if type(opts) ~= "table" then error("locker.new: expected an options table", 2) end
    check_keys("locker.new", opts, new_opts)
    local endpoints = opts.endpoints
    if type(endpoints) ~= "table" or #endpoints == 0 then
        fail_opt("locker.new", "endpoints", "a non-empty list of URLs", endpoints)
    end
    local eps = {}
    for i = 1, #endpoints do
        local url = endpoints[i]
        if type(url) == "string" and url:match("^https?://[^/%s]*@") then
            -- the secret would show in every message naming the endpoint
            error(("locker.new: endpoint %s carries a user name or password: "
                   .. "give them as the options user and password instead")
                  :format(url:gsub("//[^/]*@", "//<hidden>@")), 2)
        end
        if type(url) ~= "string" or not url:match("^https?://[^/%s]+/?$") then
            fail_opt("locker.new", "endpoints", "URLs like http://host:port", url)
        end
        eps[i] = (url:gsub("/$", ""))
    end
    local prefix = opts.prefix
    if prefix == nil then prefix = "/locker/" end
    if type(prefix) ~= "string" or prefix == "" or #prefix > _M.MAX_PREFIX
        or prefix:find("\0", 1, true) or prefix:byte(-1) == 255 then
        fail_opt("locker.new", "prefix", "a non-empty string without NUL, at most "
                 .. _M.MAX_PREFIX .. " bytes", prefix)
    end
    local ttl = opts.ttl
    if ttl == nil then ttl = 10 end
    if type(ttl) ~= "number" or ttl ~= floor(ttl) or ttl < 2 or ttl > 86400 then
        fail_opt("locker.new", "ttl", "a whole number of seconds from 2 to 86400", ttl)
    end
    local timeout = opts.timeout
    if timeout == nil then timeout = 5 end
    if type(timeout) ~= "number" or not (timeout > 0 and timeout <= 3600) then
        fail_opt("locker.new", "timeout", "a number of seconds > 0", timeout)
    end
    local margin = opts.margin
    if margin == nil then margin = min(2, ttl / 5) end
    if type(margin) ~= "number" or not (margin >= 0 and margin <= ttl / 2) then
        fail_opt("locker.new", "margin", "a number of seconds from 0 to ttl/2", margin)
    end
    local lock_delay = opts.lock_delay
    if lock_delay == nil then lock_delay = 0 end
    if type(lock_delay) ~= "number" or not (lock_delay >= 0 and lock_delay <= 3600) then
        fail_opt("locker.new", "lock_delay", "a number of seconds from 0 to 3600", lock_delay)
    end
    if opts.on_event ~= nil and type(opts.on_event) ~= "function" then
        fail_opt("locker.new", "on_event", "a function", opts.on_event)
    end
    local transport = opts.transport
    if transport == nil then
        transport = os.getenv("LOCKER_TRANSPORT")
        if transport == nil or transport == "" then transport = "gateway" end
    end
    if not _M.TRANSPORTS[transport] then
        fail_opt("locker.new", "transport", '"grpc" or "gateway"', transport)
    end
    local secure = secure_opts(opts, eps)
    secure.transport = transport
    -- whole milliseconds, at least one (0 would mean no limit to libcurl)
    local c, msg, code = core.new(eps, prefix, ttl, ceil(timeout * 1000),
                                  floor(margin * 1000), secure, floor(lock_delay * 1000))
    if not c then return nil, msg, code end
    local self = setmetatable({
        _core = c, _pending = {}, _locks = {}, _watching = {}, _subs = {},
        prefix = prefix, ttl = ttl, timeout = timeout, endpoints = eps, transport = transport,
        margin = margin, user = secure.user, _on_event = { opts.on_event }, _event_calls = {},
        _opts = opts_copy(opts), _groups = {},
    }, Client)
    sched.add_source(self)
    return self
end

return _M

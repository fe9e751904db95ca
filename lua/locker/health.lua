--- Health records and dependency watches, declared in a Lua file.
--
--     record "b" {                      -- b holds its record while healthy
--         value = "10.0.0.2:8080",       -- or a function returning it
--         check = function() return true end,  -- ok[, value]; optional
--         every = 2,                     -- seconds between checks (5)
--         requires = { "c" },            -- records b depends on
--         drop_when = "any",             -- "any" (default), "all", or k of n down
--         hold_down = 1,                 -- a dependency stays down this long first
--         hold_up = 0,                   -- all stays healthy this long before return
--         group = "web",                 -- optional: held as web/b, a member of the
--     }                                  -- nginx upstream "web" (value: an address)
--     watch "c" {
--         up = function(value) end, down = function() end,
--         change = function(value) end,
--     }
--     connect {                          -- optional: how to reach etcd
--         endpoints = { "https://10.0.0.9:2379" }, cacert = "/etc/etcd/ca.pem",
--         user = "svc", password = os.getenv("SVC_ETCD_PASSWORD"),
--     }
--
-- health.load(path) parses (errors name the file, line and field),
-- health.start(client, spec, opts) runs it: a record is held (a background
-- lock with keep) while its check passes and its requirements are met, and
-- dropped otherwise; it comes back by itself when they recover.
local locker = require "locker"
local sched = require "locker.sched"
local peers = require "locker.peers"

local type, pairs, ipairs, tostring, error, setmetatable = type, pairs, ipairs, tostring, error, setmetatable
local concat = table.concat

local health = {}

-- ---------------------------------------------------------------- parse --

local RECORD_FIELDS = {
    value = { "string", "function" }, check = { "function" }, every = { "number" },
    requires = { "table" }, drop_when = { "string", "number" },
    hold_down = { "number" }, hold_up = { "number" }, group = { "string" },
}
local WATCH_FIELDS = { up = { "function" }, down = { "function" }, change = { "function" } }
-- connect { ... }: the options of locker.new (a secured etcd included)
local CONNECT_FIELDS = {
    endpoints = { "table", "string" }, prefix = { "string" }, ttl = { "number" },
    timeout = { "number" }, margin = { "number" }, cacert = { "string" },
    cert = { "string" }, key = { "string" }, insecure = { "boolean" },
    user = { "string" }, password = { "string" }, transport = { "string" },
}

-- A config mistake: "file:line: what" (raised with level 0: no position
-- of ours, no traceback).
local function mistake(pos, fmt, ...)
    error(pos .. ": " .. fmt:format(...), 0)
end

local function check_fields(pos, what, name, t, fields)
    local label = name and ("%s '%s'"):format(what, name) or what
    for k, v in pairs(t) do
        local allowed = fields[k]
        if type(k) ~= "string" or not allowed then
            mistake(pos, "%s: unknown field '%s'", label, tostring(k))
        end
        local ok = false
        for _, ty in ipairs(allowed) do ok = ok or type(v) == ty end
        if not ok then
            mistake(pos, "%s: field '%s' must be %s (got %s)", label, k,
                    concat(allowed, " or "), type(v))
        end
    end
end

local function check_name(pos, what, name)
    if type(name) ~= "string" then
        mistake(pos, "%s needs a name: %s \"name\" { ... }", what, what)
    end
    if name == "" or #name > locker.MAX_NAME or name:find("[/%z]") then
        mistake(pos, "%s '%s': a name is 1 to %d bytes without '/' or NUL", what, name,
                locker.MAX_NAME)
    end
end

local function record_spec(pos, name, t)
    check_fields(pos, "record", name, t, RECORD_FIELDS)
    local r = {
        name = name, pos = pos, value = t.value or "", check = t.check,
        every = t.every or 5, requires = {}, hold_down = t.hold_down or 0,
        hold_up = t.hold_up or 0, group = t.group,
    }
    if t.group ~= nil then  -- a member of an upstream group: its value is an address
        check_name(pos, "record '" .. name .. "': group", t.group)
        if type(t.value) ~= "function" then
            local ok, why = peers.parse(t.value)
            if not ok then
                mistake(pos, "record '%s' of group '%s': field 'value' must be an address "
                        .. "(HOST:PORT [weight=N]): %s", name, t.group, why)
            end
        end
    end
    for i, dep in ipairs(t.requires or {}) do
        check_name(pos, "record '" .. name .. "': requires[" .. i .. "]", dep)
        r.requires[#r.requires + 1] = dep
    end
    local n = #r.requires
    local dw = t.drop_when or "any"
    if dw == "any" then r.drop_at = 1
    elseif dw == "all" then r.drop_at = n
    elseif type(dw) == "number" and dw >= 1 and dw <= n and dw == math.floor(dw) then
        r.drop_at = dw
    else
        mistake(pos, "record '%s': field 'drop_when' must be \"any\", \"all\" or a whole "
                .. "number from 1 to %d (the number of requires), got %s", name, n, tostring(dw))
    end
    if r.every <= 0 then mistake(pos, "record '%s': field 'every' must be > 0", name) end
    if r.hold_down < 0 then mistake(pos, "record '%s': field 'hold_down' must be >= 0", name) end
    if r.hold_up < 0 then mistake(pos, "record '%s': field 'hold_up' must be >= 0", name) end
    return r
end

-- Refuses a cycle among the requirements of the records in one file.
local function find_cycle(spec)
    local color, stack = {}, {}
    local function visit(name)
        color[name] = "open"
        stack[#stack + 1] = name
        for _, dep in ipairs(spec.records[name].requires) do
            if spec.records[dep] then
                if color[dep] == "open" then
                    local from = 1
                    while stack[from] ~= dep do from = from + 1 end
                    local path = {}
                    for i = from, #stack do path[#path + 1] = stack[i] end
                    path[#path + 1] = dep
                    return path
                elseif not color[dep] then
                    local p = visit(dep)
                    if p then return p end
                end
            end
        end
        stack[#stack] = nil
        color[name] = "done"
    end
    for _, name in ipairs(spec.order) do
        if not color[name] then
            local p = visit(name)
            if p then return p end
        end
    end
end

--- Parses a config from a string. Returns a spec, or nil and a message
-- "chunkname:line: what was wrong".
function health.parse(source, chunkname)
    chunkname = chunkname or "=config"
    local label = chunkname:gsub("^[=@]", "")
    local spec = { records = {}, watches = {}, order = {}, file = label }
    local env = setmetatable({}, { __index = _G })
    local function where()
        -- the config line that called record/watch
        for level = 3, 6 do
            local info = debug.getinfo(level, "Sl")
            if info and info.short_src and info.source == chunkname then
                return label .. ":" .. (info.currentline or "?")
            end
        end
        return label
    end
    local function declare(what, fields, make)
        return function(name)
            local pos = where()
            if type(name) == "table" then
                mistake(pos, "%s needs a name: %s \"name\" { ... }", what, what)
            end
            check_name(pos, what, name)
            return function(t)
                if type(t) ~= "table" then
                    mistake(pos, "%s '%s': expected a table of fields { ... }", what, name)
                end
                make(pos, name, t, fields)
            end
        end
    end
    env.record = declare("record", RECORD_FIELDS, function(pos, name, t)
        if spec.records[name] then
            mistake(pos, "record '%s' is declared twice (first at %s)", name, spec.records[name].pos)
        end
        spec.records[name] = record_spec(pos, name, t)
        spec.order[#spec.order + 1] = name
    end)
    env.connect = function(t)
        local pos = where()
        if type(t) ~= "table" then mistake(pos, "connect: expected a table of options { ... }") end
        if spec.connect then mistake(pos, "connect is declared twice (first at %s)", spec.connect_pos) end
        check_fields(pos, "connect", nil, t, CONNECT_FIELDS)
        local c = {}
        for k, v in pairs(t) do c[k] = v end
        if type(c.endpoints) == "string" then
            local list = {}
            for url in c.endpoints:gmatch("[^,%s]+") do list[#list + 1] = url end
            c.endpoints = list
        end
        spec.connect, spec.connect_pos = c, pos
    end
    env.watch = declare("watch", WATCH_FIELDS, function(pos, name, t, fields)
        check_fields(pos, "watch", name, t, fields)
        local w = spec.watches[name] or { name = name, handlers = {} }
        w.handlers[#w.handlers + 1] = t
        spec.watches[name] = w
    end)
    local load = loadstring or load
    local chunk, err
    if setfenv then  -- Lua 5.1 / LuaJIT
        chunk, err = load(source, chunkname)
        if chunk then setfenv(chunk, env) end
    else
        chunk, err = load(source, chunkname, "t", env)
    end
    if not chunk then return nil, err end
    local ok, msg = pcall(chunk)
    if not ok then return nil, tostring(msg) end
    local cycle = find_cycle(spec)
    if cycle then
        return nil, ("%s: cycle among requirements: %s"):format(
            spec.records[cycle[1]].pos, concat(cycle, " -> "))
    end
    return spec
end

--- Reads and parses a config file: a spec, or nil and a message.
function health.load(path)
    local f, err = io.open(path)
    if not f then return nil, err end
    local source = f:read("*a")
    f:close()
    return health.parse(source, "@" .. path)
end

-- ------------------------------------------------------------------ run --

local Health = {}
Health.__index = Health


-- Logs a line and an event table through the hook.
function Health:_log(ev, fmt, ...)
    ev.time = ev.time or os.time()
    local line = fmt:format(...)
    local ok, err = sched.pcall(self.log, line, ev)
    if not ok then sched.on_error("health log hook: " .. tostring(err)) end
end

-- The number of r's requirements that are down (unknown counts as down).
local function down_count(self, r)
    local n = 0
    for _, dep in ipairs(r.requires) do
        if not (self.deps[dep] and self.deps[dep].up) then n = n + 1 end
    end
    return n
end

-- A group member's value computed at run time (a value function, a
-- check's new value) must be an address as well: true when v may go out;
-- otherwise it is said once per value, and kept back.
local function address_ok(self, st, v)
    local group = st.spec.group
    if not group then return true end
    local ok, why = peers.parse(v)
    if ok then return true end
    if st.refused ~= v then
        st.refused = v
        self:_log({ kind = "record", name = st.name, state = "error", reason = why },
            "record %s of group %s: value %q is not an address (kept back): %s", st.name, group, v, why)
    end
    return false
end

local function current_value(self, st)
    local v = st.value
    if type(v) == "function" then
        local ok, got = sched.pcall(v)
        if not ok or type(got) ~= "string" then
            self:_log({ kind = "record", name = st.name, state = "error" },
                "record %s: value function failed: %s", st.name, tostring(got))
            return nil
        end
        v = got
    end
    if not address_ok(self, st, v) then return nil end
    return v
end

local evaluate

-- Brings the value in etcd up to st.current (the latest the record
-- computed) while its lock is owned. st.published is the value the lock
-- carries: the one it was taken with, or set last. A lock waiting for its
-- name, or re-taking it after a loss (keep), takes it with that value, and
-- a value can only be set while owned: a value computed meanwhile is set
-- here once it is owned. One run at a time per record: a call during a run
-- makes the run look again when it ends (a set that failed because the
-- lock was lost meanwhile is tried again if the lock was re-taken since).
local function publish(self, st)
    if st.publishing then st.publish_again = true return end
    st.publishing = true
    repeat
        st.publish_again = false
        while not self.stopped do
            local lock, value = st.lock, st.current
            if not lock or st.published == value or not lock:owned() then break end
            local ok, set, msg, code = sched.pcall(lock.set, lock, value)
            if ok and set then
                if lock == st.lock then st.published = value end
                st.publish_error = nil
            else
                if not ok then msg = tostring(set) end
                -- not_owner: lost meanwhile; its next "held" publishes again
                if lock == st.lock and code ~= "not_owner" and msg ~= st.publish_error
                    and not self.stopped then
                    st.publish_error = msg
                    self:_log({ kind = "record", name = st.name, state = "error", reason = msg },
                        "record %s: could not publish its value: %s", st.name, msg)
                end
                break
            end
        end
    until not st.publish_again or self.stopped
    st.publishing = false
end

local function acquire(self, st)
    local value = current_value(self, st)
    if not value then return end
    local client = self.client
    if st.spec.group then client = assert(client:group(st.spec.group)) end
    st.lock = client:lock(st.name, value, {
        background = true, keep = true,
        on_change = function(owned, lock, msg, code)
            if lock ~= st.lock then return end
            st.held = owned
            local token = st.token
            st.token = owned and lock:token() or nil
            if owned then
                self:_log({ kind = "record", name = st.name, state = "held", token = st.token },
                    "record %s: held (token %s)", st.name, locker.int64_text(st.token))
            else
                self:_log({ kind = "record", name = st.name, state = "lost", token = token,
                            reason = msg, code = code },
                    "record %s: lost%s", st.name, msg and ": " .. msg or "")
            end
            -- taken with the value it carried: a newer one goes in now
            if owned and st.published ~= st.current then sched.spawn(publish, self, st) end
        end,
    })
    st.current, st.published = value, value
    self:_log({ kind = "record", name = st.name, state = "acquiring" },
        "record %s: acquiring", st.name)
end

local function drop(self, st, reason)
    local lock = st.lock
    st.lock, st.held, st.token = nil, false, nil
    if lock then lock:release() end
    self:_log({ kind = "record", name = st.name, state = "dropped", reason = reason },
        "record %s: dropped (%s)", st.name, reason)
end

-- Decides whether record st should be held now. A drop caused by
-- dependencies waits hold_down, a return waits hold_up: the condition must
-- last that long (a flap restarts the wait). hold_passed: the wait is over.
evaluate = function(self, st, hold_passed)
    if self.stopped then return end
    local r = st.spec
    local deps_ok = #r.requires == 0 or down_count(self, r) < r.drop_at
    local want = deps_ok and st.check_ok == true
    local reason
    if st.check_ok == nil then
        reason = "check not run yet"
    elseif not st.check_ok then
        reason = "check failing: " .. tostring(st.check_reason)
    elseif not deps_ok then
        local names = {}
        for _, dep in ipairs(r.requires) do
            if not (self.deps[dep] and self.deps[dep].up) then names[#names + 1] = dep end
        end
        reason = concat(names, ", ") .. " down"
    end
    st.reason, st.wanted = reason, want
    if want == (st.lock ~= nil) then
        st.pending = nil
        return
    end
    local delay = want and r.hold_up or (st.check_ok == true and r.hold_down or 0)
    if hold_passed or delay <= 0 then
        st.pending = nil
        if want then acquire(self, st) else drop(self, st, reason) end
        return
    end
    if st.pending and st.pending.want == want then return end  -- already waiting
    local mark = { want = want }
    st.pending = mark
    sched.spawn(function()
        sched.sleep(delay)
        if st.pending == mark and not self.stopped then evaluate(self, st, true) end
    end)
end

local function on_dep(self, name, value)
    local d = self.deps[name]
    local was_up, old = d.up, d.value
    d.up = value ~= nil
    d.value = value
    d.since = os.time()
    local known = d.known
    d.known = true
    if d.up ~= was_up or not known then
        self:_log({ kind = "dependency", name = name, state = d.up and "up" or "down", value = value },
            "dependency %s: %s%s", name, d.up and "up" or "down",
            d.up and (" (" .. value .. ")") or "")
    end
    local w = self.spec.watches[name]
    if w then
        for _, h in ipairs(w.handlers) do
            if d.up and (not was_up or not known) then
                if h.up then sched.call_in_order(self, h.up, value) end
            elseif not d.up and (was_up or not known) then
                if h.down then sched.call_in_order(self, h.down) end
            elseif d.up and value ~= old then
                if h.change then sched.call_in_order(self, h.change, value) end
            end
        end
    end
    for _, st in pairs(self.records) do
        for _, dep in ipairs(st.spec.requires) do
            if dep == name then evaluate(self, st) break end
        end
    end
end

local function run_checks(self, st)
    local r = st.spec
    while not self.stopped do
        local ok, result, value = sched.pcall(r.check)
        local passed = ok and result and true or false
        local why = not ok and tostring(result) or (not result and tostring(value or "check returned false"))
        if passed ~= st.check_ok then
            self:_log({ kind = "check", name = st.name, state = passed and "ok" or "failing", reason = why },
                "record %s: check %s%s", st.name, passed and "ok" or "failing",
                passed and "" or (" (" .. tostring(why) .. ")"))
        end
        st.check_ok, st.check_reason = passed, why
        if passed and type(value) == "string" and value ~= st.current and address_ok(self, st, value) then
            st.value = value
            st.current = value
        end
        evaluate(self, st)
        publish(self, st)   -- a value not yet in etcd (new, or a set that failed)
        sched.sleep(r.every)
    end
end

--- Runs spec with client. opts.log(line, event) receives every
-- transition (default: print the line). Returns a Health object.
function health.start(client, spec, opts)
    opts = opts or {}
    local self = setmetatable({
        client = client, spec = spec, records = {}, deps = {}, watches = {},
        log = opts.log or function(line) print(line) end,
    }, Health)
    for _, name in ipairs(spec.order) do
        local r = spec.records[name]
        self.records[name] = { name = name, spec = r, value = r.value,
                               check_ok = r.check == nil or nil, held = false }
    end
    local names = {}
    for name in pairs(spec.watches) do names[name] = true end
    for _, r in pairs(spec.records) do
        for _, dep in ipairs(r.requires) do names[dep] = true end
    end
    for name in pairs(names) do
        self.deps[name] = { up = false, known = false }
        self.watches[#self.watches + 1] = client:watch(name, function(value)
            if not self.stopped then on_dep(self, name, value) end
        end)
    end
    -- what the engine tells of the session and the connection (jeopardy,
    -- late renewals, failovers, reconnects, resyncs) goes to the same log,
    -- in client:on_event()'s words; records tell their own changes above
    self.stop_events = client:on_event(function(ev)
        if ev.name or self.stopped then return end
        local copy = {}
        for k, v in pairs(ev) do copy[k] = v end
        self:_log(copy, "%s", locker.event_text(ev))
    end)
    for _, name in ipairs(spec.order) do
        local st = self.records[name]
        if st.spec.check then
            sched.spawn(run_checks, self, st)
        else
            evaluate(self, st)
        end
    end
    return self
end

--- The current state of every record and dependency (for status pages).
function Health:state()
    local out = { records = {}, dependencies = {} }
    for name, st in pairs(self.records) do
        out.records[name] = {
            held = st.lock ~= nil and st.lock:owned(), wanted = st.wanted == true,
            value = st.current, token = st.lock and st.lock:token() or nil,
            check = not st.spec.check and "none" or st.check_ok == nil and "pending"
                    or st.check_ok and "ok" or "failing",
            reason = st.reason,
        }
    end
    for name, d in pairs(self.deps) do
        out.dependencies[name] = { up = d.up, known = d.known, value = d.value, since = d.since }
    end
    return out
end

--- Stops: releases every record, cancels the watches. With opts.release
-- == false the records are left to the client (its close revokes them):
-- nothing waits, for a host that is shutting down.
function Health:stop(opts)
    if self.stopped then return end
    self.stopped = true
    self.stop_events()
    for _, w in ipairs(self.watches) do w:cancel() end
    if opts and opts.release == false then return end
    for _, st in pairs(self.records) do
        local lock = st.lock
        st.lock = nil
        if lock then
            lock:release()
            self:_log({ kind = "record", name = st.name, state = "released" },
                "record %s: released (stopping)", st.name)
        end
    end
end

return health

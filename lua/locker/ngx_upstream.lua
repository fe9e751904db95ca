--- locker.ngx_upstream: nginx upstreams made of live records (what
-- locker.ngx.upstream, balance, admit and upstream_state do).
--
-- A group is a set of records whose values are addresses (locker.peers):
-- by default every name under prefix .. group .. "/", followed by one
-- watch_all of the group's own client (client:group); or a list of names
-- of the worker's client. Each worker keeps its own view of the group,
-- changed by the watch's events off the request path: a record that goes
-- leaves the view at its event, its set of peers is rebuilt in a timer
-- right after. balance() only reads that view: no etcd call, no lock, no
-- allocation but ngx.ctx's (once a request) and the list of tried peers
-- when it retries.
local peers = require "locker.peers"
local balancer = require "ngx.balancer"
local ARRAY = require("locker.ngx_status").ARRAY  -- lists that are arrays even when empty

local ngx = ngx
local type, tostring, pairs, ipairs, error, pcall = type, tostring, pairs, ipairs, error, pcall
local setmetatable = setmetatable
local min, ceil = math.min, math.ceil

local M = {}

local groups = {}   -- group -> its state, in this worker
local checker       -- the timer that marks views stale

local FAIL = { ["503"] = true, stale = true, fallback = true }
local OPTS = { names = true, fail = true, fallback = true, stale_after = true,
               retry_after = true, tries = true, on_change = true }

local CHECK_S = 0.5  -- how often the stream's age is looked at

local function fail_opt(what, want, got)
    error(("locker.ngx.upstream: %s must be %s (got %s)"):format(what, want, tostring(got)), 4)
end

-- The peers as a list of plain tables (for on_change and the status).
local function listing(set)
    local out = setmetatable({}, ARRAY)
    for i, p in ipairs(set.list) do
        out[i] = { name = p.name, addr = p.addr, weight = p.weight, token = p.token }
    end
    return out
end

local function rebuild(g)
    g.rebuild_due = false
    local set, old = g.view:rebuild()
    if not old then return end
    local now = ngx.now()
    if set.n == 0 and old.n > 0 then    -- the last one went: keep its set
        old.stale = true
        g.last, g.empty_since = old, now
    elseif set.n > 0 then
        g.last, g.empty_since = nil, nil
    end
    g.changes, g.changed_at = g.changes + 1, now
    if g.on_change then
        local ok, err = pcall(g.on_change, listing(set), g.name)
        if not ok then g.env.log(ngx.ERR, "upstream ", g.name, ": on_change: ", tostring(err)) end
    end
end

local function rebuild_soon(g)
    if g.rebuild_due then return end
    g.rebuild_due = true
    local ok = ngx.timer.at(0, function() rebuild(g) end)
    if not ok then rebuild(g) end  -- no timer to be had: now, then
end

-- A record's event: in the view at once, in its set after the rebuild.
local function on_record(g, value, ev)
    local name = ev.name
    if value ~= nil then
        local said = g.view.bad[name]
        local p, err = g.view:put(name, value, ev.token)
        if not p and not (said and said.value == value) then  -- once per bad value
            g.env.log(ngx.WARN, ("upstream %s: record %s skipped: its value %q is not "
                .. "an address: %s"):format(g.name, name, value, err))
        end
    else
        g.view:drop(name)
    end
    g.seen = true
    if g.view.dirty then rebuild_soon(g) end
end

-- The age of the last sign of life of the group's watch stream (a message
-- or a progress answer), from the engine's gauges; nil before the first.
local function stream_age(g)
    if g.client:closed() then return nil end
    return g.client:metrics().stream_message_age_seconds
end

local function check_stale(premature)
    if premature then return end
    for _, g in pairs(groups) do
        local age = stream_age(g)
        local stale = age == nil or age > g.stale_after
        if stale ~= g.stale and (g.seen or age) then
            g.env.log(stale and ngx.WARN or ngx.NOTICE, "upstream ", g.name,
                stale and (" is stale: etcd's watch stream showed no sign of life for "
                           .. (age and ("%.1f s"):format(age) or "ever") .. "; balancing goes on "
                           .. "over the last view") or " is live again")
        end
        g.stale = stale
    end
    if ngx.worker.exiting() then return end
    local ok, err = ngx.timer.at(CHECK_S, check_stale)
    if not ok then ngx.log(ngx.ERR, "locker: upstreams: cannot re-arm the stale check: ", err) end
end

--- Declares group (see locker.ngx.upstream). env: what locker.ngx lends
-- (client, settings, log, start: a dispatcher for another client).
function M.declare(env, group, opts)
    if ngx.get_phase() ~= "init_worker" then
        error("locker.ngx.upstream: declare it in init_worker_by_lua* (here: " .. ngx.get_phase() .. ")", 3)
    end
    if type(group) ~= "string" or group == "" then fail_opt("group", "a non-empty string", group) end
    if groups[group] then error("locker.ngx.upstream: group '" .. group .. "' is declared already", 3) end
    opts = opts or {}
    if type(opts) ~= "table" then fail_opt("opts", "a table", opts) end
    for k in pairs(opts) do
        if not OPTS[k] then error("locker.ngx.upstream: unknown option '" .. tostring(k) .. "'", 3) end
    end
    local fail = opts.fail or "503"
    if not FAIL[fail] then fail_opt("fail", '"503", "stale" or "fallback"', fail) end
    local g = {
        name = group, env = env, fail = fail, view = peers.view(ngx.worker.id() or 0),
        changes = 0, refused = 0, stale = false, seen = false,
        stale_after = opts.stale_after or env.settings.stale_after,
        retry_after = opts.retry_after or env.settings.retry_after,
        tries = opts.tries or 2, on_change = opts.on_change,
    }
    if type(g.stale_after) ~= "number" or g.stale_after <= 0 then
        fail_opt("stale_after", "a number of seconds > 0", g.stale_after)
    end
    if type(g.tries) ~= "number" or g.tries < 0 or g.tries ~= math.floor(g.tries) then
        fail_opt("tries", "a whole number >= 0 (more tries after the first)", g.tries)
    end
    if g.on_change ~= nil and type(g.on_change) ~= "function" then
        fail_opt("on_change", "a function", g.on_change)
    end
    if opts.fallback ~= nil and fail ~= "fallback" then
        error('locker.ngx.upstream: fallback is used with fail = "fallback" (fail is "' .. fail .. '")', 3)
    end
    if fail == "fallback" then
        if type(opts.fallback) ~= "table" or #opts.fallback == 0 then
            fail_opt("fallback", "a non-empty list of addresses (fail = \"fallback\")", opts.fallback)
        end
        local set, err = peers.fixed(opts.fallback, ngx.worker.id() or 0)
        if not set then error("locker.ngx.upstream: fallback: " .. err, 3) end
        set.stale = true  -- used as it is: nothing marks it gone
        g.fallback = set
    end
    local function on_event(value, ev) on_record(g, value, ev) end
    if opts.names ~= nil then
        if type(opts.names) ~= "table" or #opts.names == 0 then
            fail_opt("names", "a non-empty list of record names", opts.names)
        end
        g.client = env.client
        g.watches = {}
        for i, name in ipairs(opts.names) do
            g.watches[i] = assert(env.client:watch(name, on_event))
        end
    else
        local c, msg = env.client:group(group)
        if not c then error("locker.ngx.upstream: " .. tostring(msg), 3) end
        g.client = c
        local ok, err = env.start(c)
        if not ok then error("locker.ngx.upstream: " .. err, 3) end
        g.watches = { assert(c:watch_all(on_event)) }
    end
    groups[group] = g
    if not checker then
        checker = true
        local ok, err = ngx.timer.at(CHECK_S, check_stale)
        if not ok then error("locker.ngx.upstream: cannot start the stale check: " .. tostring(err), 3) end
    end
    return g
end

local function need(group, where)
    local g = groups[group]
    if not g then
        error(("locker.ngx.%s: no upstream group '%s' (declare it with locker.ngx.upstream in "
               .. "init_worker_by_lua)"):format(where, tostring(group)), 3)
    end
    return g
end

-- What to pick from: the live set; when it is empty, what the fail mode
-- gives (the last peers for stale_after seconds, or the fallback), and
-- how that is called.
local function serving(g)
    local set = g.view.set
    if set.n > 0 then return set, "live" end
    if g.fail == "stale" and g.last and ngx.now() - g.empty_since < g.stale_after then
        return g.last, "last known"
    end
    if g.fallback then return g.fallback, "fallback" end
    return nil, "none"
end

local function pick(set, key, st)
    if key then return set:by_hash(key, st) end
    return set:round(st)
end

--- For balancer_by_lua: picks a peer of group and sets it (see
-- locker.ngx.balance). opts: a hash key (a string), or { hash = key }.
-- Returns the peer's address and record name; with nothing to pick from,
-- logs why and ends the request with an error (nginx answers 500).
function M.balance(group, opts)
    local g = groups[group] or need(group, "balance")
    local key = opts
    if type(opts) == "table" then key = opts.hash end
    local ctx = ngx.ctx
    local first = ctx.locker_peer   -- set: this is a retry
    local st = ctx.locker_tried
    if first and not st then
        st = { n = 1, first }
        ctx.locker_tried = st
    end
    local set = serving(g)
    local p = set and pick(set, key, st)
    if not p and set == g.view.set and g.fallback then  -- every live one gone or tried
        set = g.fallback
        p = pick(set, key, st)
    end
    if not p then
        g.refused = g.refused + 1
        ngx.log(ngx.ERR, "locker: upstream ", group, ": ", st and ("no peer left to try after " .. st.n)
            or "no peer holds its record (fail mode " .. g.fail .. ")")
        return ngx.exit(ngx.ERROR)
    end
    if st then
        st.n = st.n + 1
        st[st.n] = p.addr
    else
        ctx.locker_peer = p.addr
        local more = min(g.tries, set.n - 1)
        if more > 0 then balancer.set_more_tries(more) end
    end
    local ok, err = balancer.set_current_peer(p.host, p.port)
    if not ok then
        ngx.log(ngx.ERR, "locker: upstream ", group, ": cannot set peer ", p.addr, ": ", tostring(err))
        return ngx.exit(ngx.ERROR)
    end
    return p.addr, p.name
end

--- For access_by_lua: the number of peers group would pick from; when
-- none, ends the request with 503 and Retry-After (see locker.ngx.admit).
function M.admit(group)
    local g = groups[group] or need(group, "admit")
    local set = serving(g)
    if set then return set.n end
    g.refused = g.refused + 1
    ngx.header["Retry-After"] = tostring(ceil(g.retry_after))
    return ngx.exit(ngx.HTTP_SERVICE_UNAVAILABLE)
end

--- What this worker knows of group (no I/O): { group, state = "up" |
-- "empty" | "stale" (the watch stream silent for stale_after: the peers
-- are the last view) | "pending" (no event yet), serving = "live" | "last
-- known" | "fallback" | "none", peers = { {name, addr, weight, token} },
-- skipped = { {name, value, error} }, changes, changed (seconds ago),
-- refused (requests with nothing to pick) }.
function M.state(group)
    local g = need(group, "upstream_state")
    local set, how = serving(g)
    local state = g.stale and g.seen and "stale" or g.view.set.n > 0 and "up"
        or (g.seen or stream_age(g)) and "empty" or "pending"
    local skipped = setmetatable({}, ARRAY)
    for name, b in pairs(g.view.bad) do
        skipped[#skipped + 1] = { name = name, value = b.value, error = b.err }
    end
    table.sort(skipped, function(a, b) return a.name < b.name end)
    return {
        group = group, state = state, serving = how, fail = g.fail,
        peers = set and listing(set) or setmetatable({}, ARRAY), skipped = skipped, changes = g.changes,
        changed = g.changed_at and ngx.now() - g.changed_at or nil, refused = g.refused,
    }
end

--- The names of the groups declared in this worker, sorted.
function M.names()
    local out = {}
    for name in pairs(groups) do out[#out + 1] = name end
    table.sort(out)
    return out
end

return M

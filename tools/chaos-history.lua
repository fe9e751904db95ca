-- chaos-history.lua: the checker of tools/chaos.lua that trusts etcd alone.
-- It reads etcd's whole history of the run's keys (a watch from revision 1
-- of "/chaos" and "/chaos-data/", one member's gateway, by curl) and
-- replays it, knowing at every revision which lock keys of the name
-- "chaos" exist (create revision = token) and so who owns it: the `limit`
-- lowest create revisions. Against that truth it checks:
--   guarded writes: every put of the data key (value "token pid") was made
--     at a revision where the lock key with that token existed and was an
--     owner (lock:put's txn must refuse otherwise);
--   the observers' watch_all reports (O lines): each report, the last one
--     a process made for a revision, names the owner (token and value) that
--     held the name at that revision, or nobody (token 0);
--   convergence: after the contenders were killed and their leases ran
--     out, the last observer's last report says nobody holds the name.
-- The history is accepted only if the state it reaches at the revision of
-- a range read made just before is the state that read returned: a
-- history cut short is an error, not a pass. Loaded with dofile; returns the module.
local cjson = require "cjson"
local fmt = string.format

local history = {}

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local b64val = {}
for i = 1, #B64 do b64val[B64:byte(i)] = i - 1 end

local function unbase64(s)
    local out, bits, n = {}, 0, 0
    for i = 1, #(s or "") do
        local v = b64val[s:byte(i)]
        if v then
            bits = bits * 64 + v
            n = n + 6
            if n >= 8 then
                n = n - 8
                local byte = math.floor(bits / 2 ^ n)
                out[#out + 1] = string.char(byte)
                bits = bits - byte * 2 ^ n
            end
        end
    end
    return table.concat(out)
end

local function base64(str)
    local out = {}
    for i = 1, #str, 3 do
        local a, b, c = str:byte(i, i + 2)
        local v = a * 65536 + (b or 0) * 256 + (c or 0)
        local q = {}
        for k = 1, 4 do
            local d = math.floor(v / 64 ^ (4 - k)) % 64
            q[k] = B64:sub(d + 1, d + 1)
        end
        if not c then q[4] = "=" end
        if not b then q[3] = "=" end
        out[#out + 1] = table.concat(q)
    end
    return table.concat(out)
end
history.base64 = base64

local RANGE = { key = base64("/chaos"), range_end = base64("/chaot") }  -- "/chaos" and "/chaos-data/"
local LOCK_KEY = "^/chaos/chaos/%x+$"
history.DATA_KEY = "/chaos-data/fence"

-- etcd's history of the run's keys from member url: a list of
-- { rev, key, create, value, delete = bool } in revision order, or nil, why.
-- sh(cmd) runs a shell command and returns its output.
function history.fetch(url, sh)
    local range = sh(("curl -s -m 3 -X POST -d '{\"key\":\"%s\",\"range_end\":\"%s\"}' %s/v3/kv/range")
        :format(RANGE.key, RANGE.range_end, url))
    local ok, now_state = pcall(cjson.decode, range)
    if not ok or type(now_state) ~= "table" or not now_state.header then
        return nil, "no answer to a range read: " .. range:sub(1, 300)
    end
    local req = cjson.encode({ create_request = { key = RANGE.key, range_end = RANGE.range_end,
                                                  start_revision = "1" } })
    -- the stream stays open: curl stops it after 4 s (every past event
    -- comes at once, well within that)
    local out = sh(("curl -s -N -m 4 -X POST -d '%s' %s/v3/watch"):format(req, url))
    local evs = {}
    for line in out:gmatch("[^\n]+") do
        local okl, msg = pcall(cjson.decode, line)
        local result = okl and type(msg) == "table" and msg.result
        if type(result) == "table" and result.compact_revision and result.compact_revision ~= "0" then
            return nil, "etcd compacted the history (revision " .. tostring(result.compact_revision) .. ")"
        end
        for _, e in ipairs(type(result) == "table" and type(result.events) == "table" and result.events or {}) do
            local kv = e.kv or {}
            evs[#evs + 1] = { rev = tonumber(kv.mod_revision), key = unbase64(kv.key),
                              create = tonumber(kv.create_revision), value = unbase64(kv.value),
                              delete = e.type == "DELETE" }
        end
    end
    -- the state the history reaches at the range read's revision must be
    -- what that read returned (leases may run out after it: later events)
    local at = tonumber(now_state.header.revision) or 0
    local live = {}
    for _, e in ipairs(evs) do
        if e.rev <= at then
            if e.delete then live[e.key] = nil else live[e.key] = e.create end
        end
    end
    local n_live, n_now = 0, 0
    for _ in pairs(live) do n_live = n_live + 1 end
    for _, kv in ipairs(type(now_state.kvs) == "table" and now_state.kvs or {}) do
        n_now = n_now + 1
        local key = unbase64(kv.key)
        if live[key] ~= tonumber(kv.create_revision) then
            return nil, fmt("the history read (%d events) does not end in etcd's state: key %s", #evs, key)
        end
    end
    if n_live ~= n_now then
        return nil, fmt("the history read (%d events) ends with %d keys, etcd has %d", #evs, n_live, n_now)
    end
    return evs
end

-- The owners of "chaos" in `live` (create revision -> value): the `limit`
-- lowest create revisions, as a set, and the lowest (what a watch reports).
local function owners(live, limit)
    local revs = {}
    for create in pairs(live) do revs[#revs + 1] = create end
    table.sort(revs)
    local set = {}
    for i = 1, math.min(limit, #revs) do set[revs[i]] = true end
    return set, revs[1]
end

-- Reads the observers' lines from the events file: per pid, a list of
-- { name, token, rev, value }, and the pid of the last observer to write.
local function observer_reports(events_path)
    local by_pid, last_pid, notes = {}, nil, { resync = 0, skipped = 0 }
    for line in io.lines(events_path) do
        local pid, name, token, rev, _, value = line:match("^O (%d+) (%S+) (%d+) (%d+) (%S+) (.*)$")
        if pid then
            by_pid[pid] = by_pid[pid] or {}
            local list = by_pid[pid]
            list[#list + 1] = { name = name, token = tonumber(token), rev = tonumber(rev),
                                value = value ~= "-" and value or nil }
            last_pid = pid
        elseif line:match("^K %d+ resync ") then
            notes.resync = notes.resync + 1
        else
            local n = line:match("^K %d+ skipped=(%d+) ")
            if n then notes.skipped = notes.skipped + tonumber(n) end
        end
    end
    return by_pid, last_pid, notes
end

-- Checks evs (history.fetch) against the events file; a table of figures
-- and violations (strings).
function history.check(evs, events_path, limit)
    local r = { events = #evs, puts = 0, bad_puts = 0, reports = 0, bad_reports = 0, observers = 0,
                owner_changes = 0, converged = false, violations = {} }
    local function violation(...)
        r.violations[#r.violations + 1] = "VIOLATION " .. fmt(...)
    end
    -- the truth after every revision: the lowest owner and its value
    local live, truth, revs = {}, {}, {}  -- create -> value; rev -> { token, value }
    local last_owner
    for i, e in ipairs(evs) do
        if e.key:match(LOCK_KEY) then
            if e.delete then
                for create, v in pairs(live) do
                    if v.key == e.key then live[create] = nil end
                end
            else
                live[e.create] = { key = e.key, value = e.value }
            end
        elseif e.key == history.DATA_KEY and not e.delete then
            r.puts = r.puts + 1
            local token = tonumber(e.value:match("^(%d+) "))
            local set = owners(live, limit)
            if not (token and live[token] and set[token]) then
                r.bad_puts = r.bad_puts + 1
                violation("guarded write at revision %d by token %s, which %s at that revision", e.rev,
                          tostring(token), token and live[token] and "was not an owner" or "had no key")
            end
        end
        if not evs[i + 1] or evs[i + 1].rev ~= e.rev then  -- the state after revision e.rev
            local _, low = owners(live, limit)
            local owner = low and { token = low, value = live[low].value } or { token = 0 }
            truth[e.rev] = owner
            revs[#revs + 1] = e.rev
            local id = owner.token .. " " .. tostring(owner.value)
            if id ~= last_owner then r.owner_changes = r.owner_changes + 1 end
            last_owner = id
        end
    end
    -- the truth at any revision: the last change at or before it
    local function truth_at(rev)
        local lo, hi, found = 1, #revs, nil
        while lo <= hi do
            local mid = math.floor((lo + hi) / 2)
            if revs[mid] <= rev then
                found = revs[mid]
                lo = mid + 1
            else
                hi = mid - 1
            end
        end
        return found and truth[found] or { token = 0 }
    end
    local by_pid, last_pid, notes = observer_reports(events_path)
    r.resyncs, r.skipped = notes.resync, notes.skipped
    for pid, list in pairs(by_pid) do
        r.observers = r.observers + 1
        for i, rep in ipairs(list) do
            local nxt = list[i + 1]
            if rep.name == "chaos" and not (nxt and nxt.rev == rep.rev and nxt.name == rep.name) then
                r.reports = r.reports + 1
                local t = truth_at(rep.rev)
                if t.token ~= rep.token or (rep.token ~= 0 and t.value ~= rep.value) then
                    r.bad_reports = r.bad_reports + 1
                    violation("observer %s reported owner %d (%s) at revision %d; etcd's history says %d (%s)",
                              pid, rep.token, tostring(rep.value), rep.rev, t.token, tostring(t.value))
                end
            end
        end
    end
    local last
    for _, rep in ipairs(last_pid and by_pid[last_pid] or {}) do
        if rep.name == "chaos" then last = rep end
    end
    r.converged = last ~= nil and last.token == 0
    if last_pid and not r.converged then
        violation("the last observer (%s) still reports owner %d after every holder was gone", last_pid,
                  last.token)
    end
    return r
end

return history

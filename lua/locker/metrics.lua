--- Metrics families and Prometheus' text exposition format (0.0.4).
-- client:metrics() gives the engine's figures (counters, gauges and
-- histograms the engine keeps with atomics: reading them costs it nothing);
-- this module names them, with HELP and TYPE, and renders a scrape.
local M = {}

local fmt = string.format
local concat = table.concat

-- name, type, help, and how to read its samples from client:metrics()'s
-- table m: a list of { labels, value } (histograms: value is the hist)
local function by(field, label)
    return function(m)
        local out, keys = {}, {}
        for k in pairs(m[field]) do keys[#keys + 1] = k end
        table.sort(keys)
        for _, k in ipairs(keys) do out[#out + 1] = { { [label] = k }, m[field][k] } end
        return out
    end
end

local function one(field)
    return function(m)
        if m[field] == nil then return {} end
        return { { {}, m[field] } }
    end
end

M.families = {
    { "requests_total", "counter", "etcd requests finished, by kind and result",
      function(m)
          local out, kinds = {}, {}
          for k in pairs(m.requests) do kinds[#kinds + 1] = k end
          table.sort(kinds)
          for _, k in ipairs(kinds) do
              out[#out + 1] = { { kind = k, result = "ok" }, m.requests[k].ok }
              out[#out + 1] = { { kind = k, result = "failed" }, m.requests[k].failed }
          end
          return out
      end },
    { "request_duration_seconds", "histogram",
      "etcd request latency by kind, from the call to the answer (queueing and failovers included)",
      by("request_seconds", "kind") },
    { "errors_total", "counter", "failures answered to callers, by error code", by("errors", "code") },
    { "renewals_sent_total", "counter", "lease renewals (keepalives) sent", one("renewals_sent") },
    { "renewals_late_total", "counter",
      "lease renewals answered after the lease's owners stopped being confirmed (jeopardy)",
      one("renewals_late") },
    { "renewals_failed_total", "counter", "lease renewals that got no usable answer", one("renewals_failed") },
    { "failovers_total", "counter", "times an endpoint failed and requests moved away from it",
      function(m)
          local out = {}
          for i, n in ipairs(m.failovers) do out[#out + 1] = { { endpoint = m.endpoints[i] or tostring(i) }, n } end
          return out
      end },
    { "stream_reconnects_total", "counter", "watch streams ended and opened again, by reason",
      by("reconnects", "reason") },
    { "resyncs_total", "counter", "watch streams that resumed into compacted history and re-read",
      one("resyncs") },
    { "acquisitions_total", "counter", "times a lock (or leadership) became owned", one("acquisitions") },
    { "releases_total", "counter", "ownerships ended by release", one("releases") },
    { "losses_total", "counter", "ownerships ended by a fault, by reason", by("losses", "reason") },
    { "jeopardy_total", "counter", "times the session entered jeopardy (renewals late)", one("jeopardy") },
    { "events_folded_total", "counter",
      "engine events replaced by a newer state before Lua took them", one("folded") },
    { "locks_held", "gauge", "locks owned now", one("locks_held") },
    { "locks_waiting", "gauge", "lock() and campaign() calls waiting for an answer", one("locks_waiting") },
    { "watched_names", "gauge", "names the engine follows (watch, follow, watch_all)", one("watches") },
    { "session_state", "gauge", "the session's state: 1 for the current one",
      function(m)
          local out = {}
          for _, s in ipairs({ "none", "live", "jeopardy", "expired" }) do
              out[#out + 1] = { { state = s }, m.session_state == s and 1 or 0 }
          end
          return out
      end },
    { "lease_deadline_seconds", "gauge",
      "seconds until the lease's local deadline (absent without a lease)", one("lease_deadline_seconds") },
    { "stream_message_age_seconds", "gauge", "seconds since the watch stream's last message",
      one("stream_message_age_seconds") },
    { "current_endpoint", "gauge", "the endpoint requests go to first: 1 for it",
      function(m)
          local out = {}
          for i, e in ipairs(m.endpoints) do
              out[#out + 1] = { { endpoint = e }, i == m.current_endpoint and 1 or 0 }
          end
          return out
      end },
    { "acquire_wait_seconds", "histogram", "from lock() or campaign() to the first grant",
      one("acquire_seconds") },
    { "keepalive_duration_seconds", "histogram", "lease renewal round trip", one("keepalive_seconds") },
    { "watch_delivery_seconds", "histogram",
      "from the engine reading a watch event (stream frame or answer) to Lua receiving it",
      one("delivery_seconds") },
}

-- What `locker status --prometheus` adds: the state of every name under
-- the prefix, from one client:status() list (a sample per name).
local function per_name(field)
    return function(list)
        local out = {}
        for _, e in ipairs(list) do
            local v = e[field]
            if type(v) == "string" then v = tonumber(v) end  -- a token past 2^53 (5.1)
            out[#out + 1] = { { name = e.name }, v }
        end
        return out
    end
end

M.status_families = {
    { "name_holders", "gauge", "contenders that own the name now (a semaphore: up to its limit)",
      function(list)
          local out = {}
          for _, e in ipairs(list) do out[#out + 1] = { { name = e.name }, #e.holders } end
          return out
      end },
    { "name_waiters", "gauge", "contenders waiting behind the owners", per_name("waiters") },
    { "name_limit", "gauge", "the name's limit: 1 for a lock, N for a semaphore", per_name("limit") },
    { "name_token", "gauge",
      "the oldest owner's fencing token (its key's create revision; a float: exact up to 2^53)",
      per_name("token") },
}

local function escape(v)
    return (tostring(v):gsub("[\\\"\n]", { ["\\"] = "\\\\", ["\""] = "\\\"", ["\n"] = "\\n" }))
end

local function number(v)
    if v == math.huge then return "+Inf" end
    if v == -math.huge then return "-Inf" end
    if v ~= v then return "NaN" end
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return fmt("%d", v) end
    for digits = 15, 16 do  -- the shortest form that reads back the same
        local s = fmt("%." .. digits .. "g", v)
        if tonumber(s) == v then return s end
    end
    return fmt("%.17g", v)
end

-- {a=1} + {b=2} -> 'a="1",b="2"' (sorted, so a scrape is stable)
local function labelset(...)
    local all, keys = {}, {}
    for i = 1, select("#", ...) do
        for k, v in pairs(select(i, ...) or {}) do
            if all[k] == nil then keys[#keys + 1] = k end
            all[k] = v
        end
    end
    table.sort(keys)
    local parts = {}
    for _, k in ipairs(keys) do parts[#parts + 1] = fmt('%s="%s"', k, escape(all[k])) end
    return concat(parts, ",")
end

local function sample(out, name, labels, value)
    out[#out + 1] = fmt("%s%s %s", name, labels ~= "" and "{" .. labels .. "}" or "", number(value))
end

local function check_labels(where, labels)
    if labels == nil then return end
    if type(labels) ~= "table" then
        error(("%s: labels must be a table (got %s)"):format(where, type(labels)), 3)
    end
    for k, v in pairs(labels) do
        if type(k) ~= "string" or not k:match("^[%a_][%w_]*$") or k:match("^__") then
            error(("%s: label name %s is not a Prometheus label name"):format(where, tostring(k)), 3)
        end
        if type(v) ~= "string" and type(v) ~= "number" then
            error(("%s: label '%s' must be a string or a number (got %s)"):format(where, k, type(v)), 3)
        end
    end
end
M.check_labels = check_labels

-- The sample lines of family f for every set, appended to out.
local function family_samples(f, sets, out)
    local name, kind, samples = "locker_" .. f[1], f[2], f[4]
    for _, set in ipairs(sets) do
        for _, s in ipairs(samples(set[1])) do
            local labels, v = s[1], s[2]
            if kind == "histogram" then
                for _, b in ipairs(v.buckets) do
                    sample(out, name .. "_bucket", labelset(set[2], labels, { le = number(b[1]) }), b[2])
                end
                sample(out, name .. "_sum", labelset(set[2], labels), v.sum)
                sample(out, name .. "_count", labelset(set[2], labels), v.count)
            else
                sample(out, name, labelset(set[2], labels), v)
            end
        end
    end
end

local function header(f, out)
    local name = "locker_" .. f[1]
    out[#out + 1] = "# HELP " .. name .. " " .. f[3]:gsub("\\", "\\\\"):gsub("\n", "\\n")
    out[#out + 1] = "# TYPE " .. name .. " " .. f[2]
end

--- Renders one or more metrics tables (client:metrics()), each with its
-- own extra labels, as one exposition: { {m, labels}, ... }. families:
-- M.families unless told (M.status_families reads status() lists).
function M.render(sets, families)
    local out = {}
    for _, f in ipairs(families or M.families) do
        header(f, out)
        family_samples(f, sets, out)
    end
    return concat(out, "\n") .. "\n"
end

--- The samples of sets as text lines "I<tab>sample", I the family's index:
-- a part of a scrape that M.join() puts together with other parts (each
-- nginx worker stores its own in a shared dict), every family once.
function M.lines(sets, families)
    local out = {}
    for i, f in ipairs(families or M.families) do
        local mine = {}
        family_samples(f, sets, mine)
        for _, line in ipairs(mine) do out[#out + 1] = i .. "\t" .. line end
    end
    return concat(out, "\n")
end

--- One exposition from parts made by M.lines() (with the same families).
function M.join(parts, families)
    families = families or M.families
    local lines = {}
    for _, text in ipairs(parts) do
        for i, line in text:gmatch("(%d+)\t([^\n]*)") do
            i = tonumber(i)
            lines[i] = lines[i] or {}
            lines[i][#lines[i] + 1] = line
        end
    end
    local out = {}
    for i, f in ipairs(families) do
        header(f, out)
        for _, line in ipairs(lines[i] or {}) do out[#out + 1] = line end
    end
    return concat(out, "\n") .. "\n"
end

local function total(t)
    local n = 0
    for _, v in pairs(t or {}) do n = n + (type(v) == "table" and (v.ok or 0) + (v.failed or 0) or v) end
    return n
end

--- The figures of client:metrics() summed over their labels, for a status
-- page: the same counters and gauges, one number each.
function M.summary(m)
    local failed = 0
    for _, r in pairs(m.requests) do failed = failed + r.failed end
    return {
        requests = total(m.requests), requests_failed = failed, errors = total(m.errors),
        renewals_sent = m.renewals_sent, renewals_late = m.renewals_late,
        renewals_failed = m.renewals_failed, failovers = total(m.failovers),
        stream_reconnects = total(m.reconnects), resyncs = m.resyncs,
        acquisitions = m.acquisitions, releases = m.releases, losses = total(m.losses),
        jeopardy = m.jeopardy, events_folded = m.folded, locks_held = m.locks_held,
        locks_waiting = m.locks_waiting, watched_names = m.watches, session_state = m.session_state,
        lease_deadline_seconds = m.lease_deadline_seconds,
        stream_message_age_seconds = m.stream_message_age_seconds,
        acquire_wait_seconds_count = m.acquire_seconds.count,
        acquire_wait_seconds_sum = m.acquire_seconds.sum,
    }
end

return M

--- locker.ngx_status: the status page of locker.ngx, for the whole nginx
-- instance. Each worker has its own client, records and holds, so a page
-- made from the serving worker alone would depend on which worker the
-- request reached. Instead each worker renders its report (JSON and an
-- HTML section) into a slot of a lua_shared_dict, "locker:<worker id>",
-- when something changes and at least every second; the slot expires
-- after EXPIRE_S, so a worker that stopped reporting shows as missing,
-- not as a frozen past. The page joins every slot. No I/O to etcd.
local ngx = ngx
local type, tostring, getmetatable, ipairs, pairs = type, tostring, getmetatable, ipairs, pairs
local concat, sort = table.concat, table.sort
local floor = math.floor

local S = {}

S.EXPIRE_S = 5

-- The figures of locker.metrics.summary() a worker's section shows, in
-- this order (the JSON report has them all).
S.METRICS_SHOWN = { "acquisitions", "releases", "losses", "locks_held", "locks_waiting",
                    "watched_names", "renewals_sent", "renewals_late", "renewals_failed",
                    "jeopardy", "failovers", "stream_reconnects", "resyncs", "requests",
                    "requests_failed", "errors", "events_folded", "lease_deadline_seconds",
                    "stream_message_age_seconds" }

S.ARRAY = {}  -- metatable of lists that are arrays even when empty
local ARRAY = S.ARRAY

-- A small JSON encoder (no dependency): strings, numbers, booleans,
-- tables (arrays when they have a [1] or are empty lists of records).
-- Control characters are escaped, so the text has no raw newline.
local function json(v, buf)
    local t = type(v)
    if t == "string" then
        buf[#buf + 1] = '"' .. v:gsub('[%c"\\]', function(ch)
            return ("\\u%04x"):format(ch:byte())
        end) .. '"'
    elseif t == "number" then
        if v ~= v or v == math.huge or v == -math.huge then buf[#buf + 1] = "null"
        elseif v == floor(v) and v < 2^53 and v > -2^53 then buf[#buf + 1] = ("%d"):format(v)
        else buf[#buf + 1] = ("%.17g"):format(v) end
    elseif t == "boolean" then
        buf[#buf + 1] = tostring(v)
    elseif t == "table" then
        if v[1] ~= nil or getmetatable(v) == ARRAY then
            buf[#buf + 1] = "["
            for i = 1, #v do
                if i > 1 then buf[#buf + 1] = "," end
                json(v[i], buf)
            end
            buf[#buf + 1] = "]"
        else
            local keys = {}
            for k in pairs(v) do keys[#keys + 1] = tostring(k) end
            sort(keys)
            buf[#buf + 1] = "{"
            for i, k in ipairs(keys) do
                if i > 1 then buf[#buf + 1] = "," end
                json(k, buf)
                buf[#buf + 1] = ":"
                json(v[k], buf)
            end
            buf[#buf + 1] = "}"
        end
    else
        buf[#buf + 1] = "null"
    end
    return buf
end
function S.json(v) return concat(json(v, {})) end

local function esc(s)
    return (tostring(s):gsub("[%c&<>\"]", function(ch)
        return ({ ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;" })[ch]
            or ("&#%d;"):format(ch:byte())
    end))
end

local function ago(wall)
    if not wall then return "" end
    return ("%.1f s ago"):format(ngx.now() - wall)
end

-- One worker's section of the HTML page.
local function section(r)
    local b = { ("<h2>worker %s (pid %s)</h2>"):format(esc(r.worker), esc(r.pid)) }
    local s = r.session
    b[#b + 1] = ("<p>session: <b>%s</b>, lease %s, valid for %s s, endpoint %s, stream %s</p>")
        :format(esc(s.state), esc(s.lease or "none"), esc(s.valid_for and ("%.1f"):format(s.valid_for) or "-"),
                esc(s.endpoint or "-"), s.stream and "live" or "down")
    b[#b + 1] = "<table><tr><th>record</th><th>state</th><th>owner</th>"
                .. "<th>token</th><th>last change</th><th>stream age</th></tr>"
    for _, e in ipairs(r.records or {}) do
        b[#b + 1] = ("<tr><td>%s</td><td class=%s>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>")
            :format(esc(e.name), esc(e.state), esc(e.state), esc(e.value or "-"), esc(e.token or "-"),
                    esc(ago(e.changed)), esc(e.age and ("%.1f s"):format(e.age) or "-"))
    end
    b[#b + 1] = "</table>"
    if r.holds and #r.holds > 0 then
        b[#b + 1] = "<h3>held by this worker</h3><table>"
            .. "<tr><th>name</th><th>value</th><th>owned</th><th>token</th></tr>"
        for _, h in ipairs(r.holds) do
            b[#b + 1] = ("<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>")
                :format(esc(h.name), esc(h.value), h.owned and "yes" or "no", esc(h.token or "-"))
        end
        b[#b + 1] = "</table>"
    end
    local m = r.metrics
    if m then
        b[#b + 1] = "<h3>metrics</h3><table><tr><th>figure</th><th>value</th></tr>"
        for _, k in ipairs(S.METRICS_SHOWN) do
            local v = m[k]
            if v ~= nil then
                b[#b + 1] = ("<tr><td>%s</td><td>%s</td></tr>"):format(esc(k:gsub("_", " ")),
                    esc(type(v) == "number" and v ~= floor(v) and ("%.3f"):format(v) or v))
            end
        end
        b[#b + 1] = "</table>"
    end
    for _, u in ipairs(r.upstreams or {}) do
        b[#b + 1] = ("<h3>upstream %s: <span class=%s>%s</span>, serving %s (fail mode %s)</h3>"
            .. "<table><tr><th>record</th><th>address</th><th>weight</th><th>token</th></tr>")
            :format(esc(u.group), esc(u.state), esc(u.state), esc(u.serving), esc(u.fail))
        for _, p in ipairs(u.peers) do
            b[#b + 1] = ("<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>")
                :format(esc(p.name), esc(p.addr), esc(p.weight), esc(p.token or "-"))
        end
        for _, k in ipairs(u.skipped) do
            b[#b + 1] = ("<tr><td>%s</td><td colspan=3>skipped: %s (%s)</td></tr>")
                :format(esc(k.name), esc(k.value), esc(k.error))
        end
        b[#b + 1] = "</table>"
    end
    for _, e in ipairs(r.health or {}) do
        b[#b + 1] = ("<h3>health %s</h3><table><tr><th>record</th><th>held</th><th>check</th><th>reason</th></tr>")
            :format(esc(e.path))
        for name, st in pairs(e.state.records) do
            b[#b + 1] = ("<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>")
                :format(esc(name), st.held and "yes" or "no", esc(st.check), esc(st.reason or ""))
        end
        b[#b + 1] = "</table>"
    end
    return concat(b)
end

--- A worker's part of the page, from its report(): { worker =, pid =,
-- json =, html = }.
function S.render(r)
    return { worker = r.worker, pid = r.pid, json = S.json(r), html = section(r) }
end

local function slot(id) return "locker:" .. tostring(id) end
local function metrics_slot(id) return "locker-metrics:" .. tostring(id) end

--- Stores part in its worker's slot of dict; true, or nil, message (the
-- dict is full: the page then shows that worker as missing).
function S.publish(dict, part)
    local ok, err = dict:set(slot(part.worker), part.pid .. "\n" .. part.json .. "\n" .. part.html, S.EXPIRE_S)
    if not ok then return nil, err end
    return true
end

--- Empties this worker's slot (at close), unless a newer worker with the
-- same id (after a reload) has taken it.
function S.withdraw(dict, worker, pid)
    for _, key in ipairs({ slot(worker), metrics_slot(worker) }) do
        local v = dict:get(key)
        if type(v) == "string" and v:match("^(%d+)\n") == tostring(pid) then dict:delete(key) end
    end
end

--- Stores a worker's metrics (locker.metrics.lines() text) in its slot of
-- dict, beside its status, expiring alike; true, or nil, message.
function S.publish_metrics(dict, worker, pid, lines)
    local ok, err = dict:set(metrics_slot(worker), pid .. "\n" .. lines, S.EXPIRE_S)
    if not ok then return nil, err end
    return true
end

--- Every live worker's metrics lines, and a list: reporting[id] = 1 | 0.
function S.collect_metrics(dict, count)
    local parts, reporting = {}, {}
    for id = 0, count - 1 do
        local v = dict:get(metrics_slot(id))
        local lines = type(v) == "string" and v:match("^%d+\n(.*)$")
        if lines then parts[#parts + 1] = lines end
        reporting[#reporting + 1] = { id, lines and 1 or 0 }
    end
    return parts, reporting
end

--- Every worker's part, worker 0 first; a worker without a live slot is
-- { worker = id, missing = true }.
function S.collect(dict, count)
    local parts = {}
    for id = 0, count - 1 do
        local v = dict:get(slot(id))
        local pid, js, html
        if type(v) == "string" then pid, js, html = v:match("^(%d+)\n([^\n]*)\n(.*)$") end
        if pid then
            parts[#parts + 1] = { worker = id, pid = tonumber(pid), json = js, html = html }
        else
            parts[#parts + 1] = { worker = id, missing = true }
        end
    end
    return parts
end

--- Answers the request with parts: JSON { instance, served_by, workers =
-- [report...] } for "Accept: application/json", else the HTML page.
-- instance: false when only the serving worker could be shown (no dict).
function S.serve(parts, served_by, instance)
    local accept = ngx.var.http_accept or ""
    if accept:find("application/json", 1, true) then
        local list = {}
        for i, p in ipairs(parts) do
            list[i] = p.json or S.json({ worker = p.worker, missing = true })
        end
        ngx.header.content_type = "application/json"
        ngx.say('{"instance":', tostring(instance), ',"served_by":', tostring(served_by),
                ',"workers":[', concat(list, ","), "]}")
        return
    end
    ngx.header.content_type = "text/html; charset=utf-8"
    local b = { "<!DOCTYPE html><html><head><title>locker</title><style>",
                "body{font-family:sans-serif}td,th{padding:2px 8px;text-align:left}",
                ".up{color:#070}.gone{color:#a00}.stale,.pending{color:#a60}</style></head><body>",
                ("<h1>locker: nginx, %d worker%s</h1>"):format(#parts, #parts == 1 and "" or "s"),
                ("<p>served by worker %s%s</p>"):format(esc(served_by), instance and "" or
                    "; this worker only: give locker.ngx.init a status_dict to see every worker") }
    for _, p in ipairs(parts) do
        b[#b + 1] = p.html or ("<h2>worker %s</h2><p class=stale>no report for %d s</p>")
            :format(esc(p.worker), S.EXPIRE_S)
    end
    b[#b + 1] = "</body></html>"
    ngx.say(concat(b))
end

return S

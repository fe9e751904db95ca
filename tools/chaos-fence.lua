-- chaos-fence.lua: the checker of tools/chaos.lua, on the files its
-- contenders write. The fence: it replays the fence writes ("TOKEN PID T")
-- in file order, accepting a write iff its token is >= the highest seen.
-- The violations it looks for: token reuse (an accepted write of the
-- highest token by another process than its first writer, or one token
-- held by two processes) and overlapping ownership (for each process and
-- token, the interval of its owned() == true samples; two intervals with
-- different tokens that overlap). Loaded with dofile; returns the module.
local fmt = string.format

local fence = {}


local function parse_events(path)
    local ev = { started = 0, acquired = 0, failures = {}, failure_order = {}, lost = 0,
                 released = 0, release_failures = 0, samples = 0, wide = 0, intervals = {},
                 token_pids = {} }
    local by_key = {}
    local function saw_token(token, pid)
        local t = ev.token_pids[token]
        if not t then
            t = {}
            ev.token_pids[token] = t
        end
        t[pid] = true
    end
    for line in io.lines(path) do
        local kind, pid, a, b, c = line:match("^(%u) (%d+) (%S+) (%S+) ?(%S*)$")
        if kind == "B" then
            ev.started = ev.started + 1
        elseif kind == "A" and tonumber(a) then
            ev.acquired = ev.acquired + 1
            saw_token(a, pid)
        elseif kind == "E" then
            if not ev.failures[a] then
                ev.failures[a] = 0
                ev.failure_order[#ev.failure_order + 1] = a
            end
            ev.failures[a] = ev.failures[a] + 1
        elseif kind == "L" then
            ev.lost = ev.lost + 1
        elseif kind == "R" then
            ev.released = ev.released + 1
            if c ~= "ok" then ev.release_failures = ev.release_failures + 1 end
        elseif kind == "S" and tonumber(a) and tonumber(b) and tonumber(c) then
            ev.samples = ev.samples + 1
            saw_token(a, pid)
            local t1, t2 = tonumber(b), tonumber(c)
            -- owned() answered at some instant between t1 and t2. A sample
            -- that took long (the process was stopped inside it) may have
            -- answered at either end, so it counts only for what it proves:
            -- owned from t2 at the latest, until t1 at least.
            if t2 - t1 > 0.05 then
                ev.wide = ev.wide + 1
                t1, t2 = t2, t1
            end
            local key = pid .. " " .. a
            local iv = by_key[key]
            if not iv then
                iv = { pid = pid, token = tonumber(a), lo = t1, hi = t2 }
                by_key[key] = iv
                ev.intervals[#ev.intervals + 1] = iv
            else
                if t1 < iv.lo then iv.lo = t1 end
                if t2 > iv.hi then iv.hi = t2 end
            end
        end
    end
    return ev
end

function fence.check(events_path, fence_path, t0)
    local ev = parse_events(events_path)
    local violations = {}
    local function violation(s)
        violations[#violations + 1] = s
    end
    local function rel(t) return fmt("%.3f", t - t0) end

    -- the fence, in file order
    local highest, first_writer = nil, {}
    local accepted, rejected, reuse = 0, 0, 0
    for line in io.lines(fence_path) do
        local tok, pid, t = line:match("^(%d+) (%d+) (%S+)$")
        tok = tonumber(tok)
        if tok and tonumber(t) then
            if not highest or tok > highest then
                highest = tok
                first_writer[tok] = pid
                accepted = accepted + 1
            elseif tok == highest then
                accepted = accepted + 1
                if first_writer[tok] ~= pid then
                    reuse = reuse + 1
                    violation(fmt("VIOLATION token reuse at the fence: token %d written by pid %s at %s, "
                        .. "first written by pid %s", tok, pid, rel(tonumber(t)), first_writer[tok]))
                end
            else
                rejected = rejected + 1
            end
        end
    end
    -- a token that two processes saw as theirs, written or not
    local tokens = {}
    for token in pairs(ev.token_pids) do tokens[#tokens + 1] = token end
    table.sort(tokens, function(x, y) return tonumber(x) < tonumber(y) end)
    for _, token in ipairs(tokens) do
        local pids = {}
        for pid in pairs(ev.token_pids[token]) do pids[#pids + 1] = pid end
        if #pids > 1 then
            table.sort(pids)
            reuse = reuse + 1
            violation(fmt("VIOLATION token reuse: token %s held by pids %s", token, table.concat(pids, ", ")))
        end
    end

    -- overlapping ownership: intervals of owned()==true, by (pid, token)
    local list = {}
    for _, iv in ipairs(ev.intervals) do
        if iv.lo <= iv.hi then list[#list + 1] = iv end
    end
    table.sort(list, function(x, y) return x.lo < y.lo end)
    local overlaps = 0
    for i = 1, #list do
        local a = list[i]
        for j = i + 1, #list do
            local b = list[j]
            if b.lo >= a.hi then break end
            if a.token ~= b.token then
                overlaps = overlaps + 1
                violation(fmt("VIOLATION overlapping ownership: pid %s token %d owned [%s, %s] and "
                    .. "pid %s token %d owned [%s, %s] (both for %.3f s)",
                    a.pid, a.token, rel(a.lo), rel(a.hi), b.pid, b.token, rel(b.lo), rel(b.hi),
                    math.min(a.hi, b.hi) - b.lo))
            end
        end
    end
    return ev, { accepted = accepted, rejected = rejected, reuse = reuse, overlaps = overlaps,
                 violations = violations }
end

return fence

-- chaos-fence.lua: the checker of tools/chaos.lua, on the files its
-- contenders write. The fence: it replays the fence writes ("TOKEN PID T")
-- in file order, accepting a write iff its token is >= the highest seen.
-- The violations it looks for: token reuse (an accepted write of the
-- highest token by another process than its first writer, or one token
-- held by two processes); owned after a foreign delete (the checker
-- deleted a holder's key, a "D pid token t_sent t_answered live|muted"
-- line: the holder's last owned() == true sample for that token must come
-- no later than its client's timeout + margin after the delete was sent,
-- plus fence.allowance); and overlapping ownership (for each process and
-- token, the interval of its owned() == true samples; two intervals with
-- different tokens that overlap, unless the older token's key was deleted
-- by the checker before the newer one's first sample and the older one's
-- last sample is within its bound of that delete: that overlap is
-- expected, counted apart). Loaded with dofile; returns the module.
local fmt = string.format

local fence = {}

-- Added to a holder's bound (timeout + margin) for an owned() sample after a
-- foreign delete: the sample's own width (at most 0.05 s, else it counts at
-- its start) and the delete request's way to etcd, measured from its send.
fence.allowance = 0.25

local function parse_events(path)
    local ev = { started = 0, acquired = 0, failures = {}, failure_order = {}, lost = 0,
                 released = 0, release_failures = 0, samples = 0, wide = 0, intervals = {},
                 token_pids = {}, bounds = {}, ttls = {}, deletes = {}, lost_at = {}, released_at = {},
                 limit = 1, guard_refused = 0 }
    local by_key = {}
    ev.by_key = by_key
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
        local dpid, dtok, dt1, dt2, dmode = line:match("^D (%d+) (%d+) (%S+) (%S+) (%a+)$")
        if dpid and tonumber(dt1) and tonumber(dt2) then
            kind = nil
            ev.deletes[#ev.deletes + 1] = { pid = dpid, token = tonumber(dtok), t = tonumber(dt1),
                                            t_answered = tonumber(dt2), mode = dmode }
        end
        if kind == "B" then
            ev.started = ev.started + 1
            ev.ttls[pid] = tonumber(a)
        elseif kind == "C" and tonumber(a) and tonumber(b) then
            ev.bounds[pid] = tonumber(a) + tonumber(b)
            ev.limit = math.max(ev.limit, tonumber(c) or 1)
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
            ev.lost_at[pid .. " " .. a] = tonumber(b)
        elseif kind == "G" then  -- a guarded write etcd refused (the history checks the rest)
            if c ~= "ok" then ev.guard_refused = ev.guard_refused + 1 end
        elseif kind == "R" then
            ev.released = ev.released + 1
            ev.released_at[pid .. " " .. a] = tonumber(b)
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
        if tok and tonumber(t) and ev.limit > 1 then
            -- a semaphore's N holders write in any order: only reuse counts
            accepted = accepted + 1
            if first_writer[tok] and first_writer[tok] ~= pid then
                reuse = reuse + 1
                violation(fmt("VIOLATION token reuse at the fence: token %d written by pid %s at %s, "
                    .. "first written by pid %s", tok, pid, rel(tonumber(t)), first_writer[tok]))
            end
            first_writer[tok] = first_writer[tok] or pid
        elseif tok and tonumber(t) then
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

    -- owned after a foreign delete: the holder's last owned() == true
    -- sample for the deleted token, from the moment the delete was sent
    local function bound(pid)  -- its client's timeout + margin
        if ev.bounds[pid] then return ev.bounds[pid] end
        return 1 + math.min(2, (ev.ttls[pid] or 2) / 5)  -- a contender's defaults
    end
    local del = { count = 0, live = 0, muted = 0, noticed = 0, released_first = 0, worst = nil,
                  worst_noticed = nil, worst_request = 0, late = 0, bound_lo = nil, bound_hi = nil }
    local deleted = {}  -- "pid token" -> the first delete of that key
    for _, d in ipairs(ev.deletes) do
        local key = d.pid .. " " .. d.token
        if not deleted[key] then
            deleted[key] = d
            del.count = del.count + 1
            del[d.mode] = (del[d.mode] or 0) + 1
            local b = bound(d.pid)
            del.bound_lo = math.min(del.bound_lo or b, b)
            del.bound_hi = math.max(del.bound_hi or b, b)
            del.worst_request = math.max(del.worst_request, d.t_answered - d.t)
            local iv = ev.by_key[key]
            local delay = iv and math.max(0, iv.hi - d.t) or 0
            d.delay = delay
            if not del.worst or delay > del.worst.delay then del.worst = d end
            local lost = ev.lost_at[key]
            if lost and lost >= d.t then
                del.noticed = del.noticed + 1
                d.noticed_after = lost - d.t
                if not del.worst_noticed or d.noticed_after > del.worst_noticed.noticed_after then
                    del.worst_noticed = d
                end
            elseif ev.released_at[key] then
                del.released_first = del.released_first + 1
            end
            if delay > b + fence.allowance then
                del.late = del.late + 1
                violation(fmt("VIOLATION owned after a foreign delete: pid %s token %d owned at %s, %.3f s "
                    .. "after its key was deleted at %s (%s stream; bound %.2f + %.2f s)",
                    d.pid, d.token, rel(iv.hi), delay, rel(d.t), d.mode, b, fence.allowance))
            end
        end
    end
    -- whether x's ownership overlapping y's (a newer token) is explained by
    -- a foreign delete of x's key sent before y's first sample, x's last
    -- sample being within its bound of it
    local function after_delete(x, y)
        local d = deleted[x.pid .. " " .. x.token]
        return d ~= nil and y.token > x.token and d.t <= y.lo
            and x.hi <= d.t + bound(x.pid) + fence.allowance
    end

    -- overlapping ownership: intervals of owned()==true, by (pid, token)
    local list = {}
    for _, iv in ipairs(ev.intervals) do
        if iv.lo <= iv.hi then list[#list + 1] = iv end
    end
    table.sort(list, function(x, y) return x.lo < y.lo end)
    local overlaps, expected, worst_expected = 0, 0, 0
    local most = 0  -- a semaphore's: the most owners at one moment
    if ev.limit > 1 then
        -- a sweep over every interval's start and end; an interval whose
        -- key the checker deleted counts until the delete only (the rest,
        -- within its bound, is the expected overlap: it is checked above)
        local points = {}
        for _, iv in ipairs(list) do
            local d = deleted[iv.pid .. " " .. iv.token]
            local hi = iv.hi
            if d and d.t < hi and hi <= d.t + bound(iv.pid) + fence.allowance then
                expected = expected + 1
                worst_expected = math.max(worst_expected, hi - math.max(d.t, iv.lo))
                hi = math.max(d.t, iv.lo)
            end
            points[#points + 1] = { t = iv.lo, d = 1, iv = iv }
            points[#points + 1] = { t = hi, d = -1, iv = iv }
        end
        table.sort(points, function(x, y)
            if x.t ~= y.t then return x.t < y.t end
            return x.d < y.d  -- an end before a start at the same instant
        end)
        local open, now_open = 0, {}
        for _, p in ipairs(points) do
            open = open + p.d
            now_open[p.iv] = p.d > 0 or nil
            if open > most then
                most = open
                if open > ev.limit then
                    overlaps = overlaps + 1
                    local who = {}
                    for iv in pairs(now_open) do who[#who + 1] = fmt("pid %s token %d", iv.pid, iv.token) end
                    table.sort(who)
                    violation(fmt("VIOLATION more owners than the limit %d at %s: %d (%s)", ev.limit,
                        rel(p.t), open, table.concat(who, ", ")))
                end
            end
        end
        list = {}  -- the pairwise check below is for a lock (limit 1)
    end
    for i = 1, #list do
        local a = list[i]
        for j = i + 1, #list do
            local b = list[j]
            if b.lo >= a.hi then break end
            if a.token ~= b.token then
                local both = math.min(a.hi, b.hi) - b.lo
                if after_delete(a, b) or after_delete(b, a) then
                    expected = expected + 1
                    worst_expected = math.max(worst_expected, both)
                else
                    overlaps = overlaps + 1
                    violation(fmt("VIOLATION overlapping ownership: pid %s token %d owned [%s, %s] and "
                        .. "pid %s token %d owned [%s, %s] (both for %.3f s)",
                        a.pid, a.token, rel(a.lo), rel(a.hi), b.pid, b.token, rel(b.lo), rel(b.hi), both))
                end
            end
        end
    end
    return ev, { accepted = accepted, rejected = rejected, reuse = reuse, overlaps = overlaps, most = most,
                 limit = ev.limit,
                 expected_overlaps = expected, worst_expected = worst_expected, deletes = del,
                 violations = violations }
end

return fence

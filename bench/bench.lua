-- make bench: each scenario runs BENCH_SECONDS (2) several times (BENCH_RUNS,
-- 3; the floor/uncontended pairs at least 5); the table shows medians (the
-- ratios are medians of paired runs), every locker figure next to the floor
-- measured in the same run (bench/floor.c: the bare HTTP requests over one
-- keep-alive connection). Needs LOCKER_ENDPOINTS (tools/with-etcd) and
-- FLOOR (the floor program). BENCH_HOLD (30) is the idle-hold time of the
-- scale scenario.
local locker = require "locker"
local process = require "locker.process"

local ENDPOINT = assert(os.getenv("LOCKER_ENDPOINTS"), "LOCKER_ENDPOINTS is not set")
local FLOOR = assert(os.getenv("FLOOR"), "FLOOR is not set")
local RUNS = tonumber(os.getenv("BENCH_RUNS") or "3")
local SECONDS = tonumber(os.getenv("BENCH_SECONDS") or "2")
local HOLD = tonumber(os.getenv("BENCH_HOLD") or "30")
local now = locker.now
local run_id = 0

local function client(opts)
    opts = opts or {}
    opts.endpoints = { ENDPOINT }
    run_id = run_id + 1
    opts.prefix = opts.prefix or ("/bench" .. run_id .. "/")
    return assert(locker.new(opts))
end

local function pct(list, p)
    if #list == 0 then return 0 / 0 end
    table.sort(list)
    return list[math.max(1, math.ceil(#list * p))]
end

local function median(xs)
    local t = {}
    for i, x in ipairs(xs) do t[i] = x end
    table.sort(t)
    return t[math.floor((#t + 1) / 2)]
end

local function proc_stat()
    local f = io.open("/proc/self/stat")
    local s = f:read("*a")
    f:close()
    local fields = {}
    for w in s:match("%) (.*)$"):gmatch("%S+") do fields[#fields + 1] = w end
    return (tonumber(fields[12]) + tonumber(fields[13])) / 100  -- utime + stime, s
end

local function rss_kib()
    for line in io.lines("/proc/self/status") do
        local v = line:match("^VmRSS:%s+(%d+)")
        if v then return tonumber(v) end
    end
end

local function heap_kib()
    collectgarbage()
    collectgarbage()
    return (process.heap_bytes() or 0) / 1024
end

local function connections(port)
    local p = io.popen(("ss -tnpH state established '( dport = :%s )' 2>/dev/null"):format(port))
    local out = p:read("*a")
    p:close()
    local n, me = 0, "pid=" .. process.getpid() .. ","
    for line in out:gmatch("[^\n]+") do
        if line:find(me, 1, true) then n = n + 1 end
    end
    return n
end

-- ------------------------------------------------------------ scenarios --

local function floor(shape)
    local p = io.popen(FLOOR .. " " .. ENDPOINT .. " " .. SECONDS .. " " .. (shape or ""))
    local out = p:read("*a")
    p:close()
    local cycles, secs, p50, p99, txn = out:match(
        "cycles (%d+) seconds ([%d.]+) p50_us ([%d.]+) p99_us ([%d.]+) txn_p50_us ([%d.]+)")
    assert(cycles, "floor failed: " .. out)
    return { rate = cycles / secs, p50 = p50 / 1000, p99 = p99 / 1000, txn = txn / 1000 }
end

local function uncontended()
    local c = client()
    assert(c:lock("warm", "v")):release()
    local acq, cyc = {}, {}
    local deadline = now() + SECONDS
    local t_start = now()
    while now() < deadline do
        local t0 = now()
        local l = assert(c:lock("x", "v"))
        local t1 = now()
        assert(l:release())
        acq[#acq + 1] = t1 - t0
        cyc[#cyc + 1] = now() - t0
    end
    local took = now() - t_start
    c:close()
    return { rate = #cyc / took, p50 = pct(cyc, 0.5) * 1000, acq50 = pct(acq, 0.5) * 1000,
             acq99 = pct(acq, 0.99) * 1000 }
end

local function contended(n)
    local clients, acq, cycles = {}, {}, 0
    for i = 1, n do clients[i] = client({ prefix = "/bench-contended" .. run_id .. "/" }) end
    for i = 1, n do assert(clients[i]:lock("warm" .. i, "v")):release() end
    local deadline = now() + SECONDS
    local t_start = now()
    for i = 1, n do
        locker.spawn(function()
            while now() < deadline do
                local t0 = now()
                local l = assert(clients[i]:lock("one", "v"))
                acq[#acq + 1] = now() - t0
                cycles = cycles + 1
                assert(l:release())
            end
        end)
    end
    locker.run()
    local took = now() - t_start
    for i = 1, n do clients[i]:close() end
    return { rate = cycles / took, acq50 = pct(acq, 0.5) * 1000, acq99 = pct(acq, 0.99) * 1000 }
end

local function handover()
    local prefix = "/bench-handover" .. run_id .. "/"
    local a, b = client({ prefix = prefix }), client({ prefix = prefix })
    assert(a:lock("warm-a", "v")):release()
    assert(b:lock("warm-b", "v")):release()
    local lat, released_at, released_by = {}, nil, nil
    local deadline = now() + SECONDS
    for _, c in ipairs({ a, b }) do
        locker.spawn(function()
            while now() < deadline do
                local l = assert(c:lock("one", "v"))
                local t = now()
                if released_by and released_by ~= c then lat[#lat + 1] = t - released_at end
                locker.sleep(0.005)
                released_at, released_by = now(), c
                assert(l:release())
            end
        end)
    end
    locker.run()
    a:close(); b:close()
    return { p50 = pct(lat, 0.5) * 1000, p99 = pct(lat, 0.99) * 1000, n = #lat }
end

local function watch_latency()
    local prefix = "/bench-watch" .. run_id .. "/"
    local w, h = client({ prefix = prefix }), client({ prefix = prefix })
    local seen = {}
    w:watch("wl", function(v) if v then seen[v] = now() end end)
    local l = assert(h:lock("wl", "0"))
    while not seen["0"] do locker.sleep(0.001) end
    local lat, i = {}, 0
    local deadline = now() + SECONDS
    while now() < deadline do
        i = i + 1
        local v = tostring(i)
        local t0 = now()
        assert(l:set(v))
        while not seen[v] do locker.sleep(0.0005) end
        lat[#lat + 1] = seen[v] - t0
    end
    l:release()
    w:close(); h:close()
    return { p50 = pct(lat, 0.5) * 1000, p99 = pct(lat, 0.99) * 1000 }
end

local function reads()
    local prefix = "/bench-get" .. run_id .. "/"
    local c, h = client({ prefix = prefix }), client({ prefix = prefix })
    local l = assert(h:lock("r", "value"))
    c:get("r")
    local n, deadline, t0 = 0, now() + SECONDS, now()
    while now() < deadline do
        assert(c:get("r") == "value")
        n = n + 1
    end
    local get_rate = n / (now() - t0)
    c:watch("r")
    while c:cached("r") ~= "value" do locker.sleep(0.001) end
    local m = 2000000
    local cached = c.cached
    t0 = now()
    for _ = 1, m do cached(c, "r") end
    local cached_rate = m / (now() - t0)
    l:release()
    c:close(); h:close()
    return { get = get_rate, cached = cached_rate }
end

local function scale(n)
    local c = client()
    assert(c:lock("warm", "v")):release()
    collectgarbage()
    local rss0, heap0 = rss_kib(), heap_kib()
    local locks = {}
    local t0 = now()
    for i = 1, n do locks[i] = assert(c:lock("n" .. i, "v")) end
    local took = now() - t0
    collectgarbage()
    local rss1, heap1 = rss_kib(), heap_kib()
    local s0, cpu0 = c:stats(), proc_stat()
    locker.sleep(HOLD)
    local s1, cpu1 = c:stats(), proc_stat()
    local owned = 0
    for i = 1, n do if locks[i]:owned() then owned = owned + 1 end end
    c:close()
    return {
        took = took, per_lock_kib = (rss1 - rss0) / n, heap_per_lock = (heap1 - heap0) / n,
        keepalives = s1.keepalives - s0.keepalives, requests = s1.requests - s0.requests,
        cpu = (cpu1 - cpu0) / HOLD * 100, owned = owned, ttl = c.ttl,
    }
end

local function watches(n)
    local prefix = "/bench-watches" .. run_id .. "/"
    local c = client({ prefix = prefix })  -- the writer h comes after the count
    local heap0 = heap_kib()
    local first = 0
    local seen = {}
    for i = 1, n do
        c:watch("w" .. i, function(v)
            first = first + 1
            if v then seen[v] = now() end
        end)
    end
    local t0 = now()
    while first < n do locker.sleep(0.001) end
    local ready = now() - t0
    local heap1 = heap_kib()
    local port = ENDPOINT:match(":(%d+)$")
    local conns_c = connections(port)
    local h = client({ prefix = prefix })
    local cpu0 = proc_stat()
    locker.sleep(5)
    local cpu = (proc_stat() - cpu0) / 5 * 100
    local l = assert(h:lock("w" .. math.ceil(n / 2), "start"))
    while not seen.start do locker.sleep(0.001) end
    local lat = {}
    for i = 1, 50 do
        local v = "v" .. i
        local t = now()
        assert(l:set(v))
        while not seen[v] do locker.sleep(0.0005) end
        lat[#lat + 1] = seen[v] - t
    end
    l:release()
    c:close(); h:close()
    return { ready = ready, conns = conns_c, heap = (heap1 - heap0) / n,
             cpu = cpu, p50 = pct(lat, 0.5) * 1000, p99 = pct(lat, 0.99) * 1000 }
end

-- What counting metrics costs the cycle: the uncontended cycle in a child
-- process on this build, then on one built with LK_NO_METRICS (nothing
-- counted), alternating, each pair a ratio.
if arg[1] == "--uncontended" then
    local u = uncontended()
    print(("rate %.3f p50 %.6f"):format(u.rate, u.p50))
    os.exit(0)
end

local function child_uncontended(cpath)
    local cmd = ("LUA_CPATH=%q %s bench/bench.lua --uncontended")
        :format(cpath or os.getenv("LUA_CPATH") or "", arg[-1] or "lua5.4")
    local p = io.popen(cmd)
    local out = p:read("*a")
    p:close()
    local rate, p50 = out:match("rate ([%d.]+) p50 ([%d.]+)")
    return { rate = assert(tonumber(rate), "the uncontended child said: " .. out), p50 = tonumber(p50) }
end

local function metrics_cost()
    local nometrics = os.getenv("BENCH_NOMETRICS_CPATH")
    if not nometrics then return nil end
    local with, without = {}, {}
    for i = 1, math.max(RUNS, 5) do
        with[i] = child_uncontended(nil)
        without[i] = child_uncontended(nometrics .. ";;")
    end
    return with, without
end

-- ---------------------------------------------------------------- table --

local function repeat_median(fn, ...)
    local results = {}
    for _ = 1, RUNS do results[#results + 1] = fn(...) end
    local out = {}
    for k in pairs(results[1]) do
        local xs = {}
        for i, r in ipairs(results) do xs[i] = r[k] end
        out[k] = median(xs)
    end
    return out
end

io.stderr:write(("bench: %d runs of %g s per scenario, hold %g s; this takes a minute or two\n")
    :format(RUNS, SECONDS, HOLD))
-- The floor and the uncontended cycle alternate, and each pair gives a
-- ratio: a shared machine drifts more between minutes than within a pair.
local pairs_f, pairs_s, pairs_u = {}, {}, {}
for i = 1, math.max(RUNS, 5) do
    pairs_f[i] = floor()
    pairs_s[i] = floor("locker")
    pairs_u[i] = uncontended()
end
local function med(list, key, div_list, div_key)
    local xs = {}
    for i, r in ipairs(list) do
        xs[i] = div_list and r[key] / div_list[i][div_key] or r[key]
    end
    return median(xs)
end
local fl = { rate = med(pairs_f, "rate"), p50 = med(pairs_f, "p50"), txn = med(pairs_f, "txn") }
local fls = { p50 = med(pairs_s, "p50") }
local un = { rate = med(pairs_u, "rate"), p50 = med(pairs_u, "p50"), acq50 = med(pairs_u, "acq50"),
             acq99 = med(pairs_u, "acq99"),
             ratio = med(pairs_u, "p50", pairs_f, "p50"), ratio_rate = med(pairs_f, "rate", pairs_u, "rate"),
             ratio_shape = med(pairs_u, "p50", pairs_s, "p50") }
local floor_rate, floor_p50, floor_txn = fl.rate, fl.p50, fl.txn
local co = repeat_median(contended, 8)
local ho = repeat_median(handover)
local wl = repeat_median(watch_latency)
local rd = repeat_median(reads)
local mc_with, mc_without = metrics_cost()
local sc = scale(10000)
local wa = watches(1000)

local rows = {}
local function row(scenario, metric, value, floor_v, ratio, target, ok)
    rows[#rows + 1] = { scenario, metric, value, floor_v or "", ratio or "", target or "",
                        ok == nil and "" or (ok and "yes" or "NO") }
end
local function f(x, d) return ("%." .. (d or 2) .. "f"):format(x) end

row("floor (C, 1 conn)", "txn+delete cycles/s", f(floor_rate, 0), "", "", "", nil)
row("", "cycle p50 ms", f(floor_p50, 3), "", "", "", nil)
row("floor, locker's txn", "cycle p50 ms (lease, range compare)", f(fls.p50, 3), f(floor_p50, 3), f(med(pairs_s, "p50", pairs_f, "p50")) .. "x", "", nil)
row("1 uncontended", "cycles/s", f(un.rate, 0), f(floor_rate, 0), f(un.ratio_rate) .. "x time", "<= 1.15x", un.ratio_rate <= 1.15)
row("", "cycle p50 ms", f(un.p50, 3), f(floor_p50, 3), f(un.ratio) .. "x", "<= 1.15x", un.ratio <= 1.15)
row("", "vs the same txn shape", f(un.p50, 3), f(fls.p50, 3), f(un.ratio_shape) .. "x", "", nil)
row("", "acquire p50 / p99 ms", f(un.acq50, 3) .. " / " .. f(un.acq99, 3), f(floor_txn, 3), "", "", nil)
if mc_with then
    local cost = med(mc_with, "p50", mc_without, "p50")
    row("1b metrics' cost", "cycle p50 ms, counted / not", f(med(mc_with, "p50"), 3) .. " / " ..
        f(med(mc_without, "p50"), 3), "", f((cost - 1) * 100, 1) .. "%", "< 2%", cost < 1.02)
    row("", "cycles/s, counted / not", f(med(mc_with, "rate"), 0) .. " / " .. f(med(mc_without, "rate"), 0),
        "", "", "", nil)
end
row("2 contended, 8 clients", "cycles/s", f(co.rate, 0), f(floor_rate, 0), f(co.rate / floor_rate * 100, 0) .. "% of floor", ">= 50%", co.rate / floor_rate >= 0.5)
row("", "acquire p50 / p99 ms", f(co.acq50, 2) .. " / " .. f(co.acq99, 2), "", "", "", nil)
row("3 handover (hold 5 ms)", "release -> acquired p50 ms", f(ho.p50, 3), "", "", "<= 2", ho.p50 <= 2)
row("", "p99 ms", f(ho.p99, 3), "", "", "<= 10", ho.p99 <= 10)
row("4 watch latency", "set -> callback p50 ms", f(wl.p50, 3), f(floor_txn, 3), "", "", nil)
row("", "p99 ms", f(wl.p99, 3), "", "", "", nil)
row("5 reads", "get ops/s", f(rd.get, 0), "", "", "", nil)
row("", "cached reads/s", f(rd.cached / 1e6, 2) .. " M", "", "", ">= 1 M", rd.cached >= 1e6)
row("6 scale, 10 000 locks", "acquire all s", f(sc.took, 2), f(10000 * floor_txn / 1000, 2), f(sc.took / (10000 * floor_txn / 1000)) .. "x", "", nil)
row("", ("keepalives in %gs (TTL %d)"):format(HOLD, sc.ttl), tostring(sc.keepalives), "", "", "~" .. math.floor(HOLD / (sc.ttl / 3)), sc.keepalives <= math.floor(HOLD / (sc.ttl / 3)) + 1)
row("", "requests while idle", tostring(sc.requests), "", "", "= keepalives", sc.requests == sc.keepalives)
row("", "client heap per lock KiB", f(sc.heap_per_lock, 2), "", "", "<= 2", sc.heap_per_lock <= 2)
row("", "client RSS per lock KiB", f(sc.per_lock_kib, 2), "", "", "<= 2", sc.per_lock_kib <= 2)
row("", "idle CPU % of a core", f(sc.cpu, 2), "", "", "< 1", sc.cpu < 1)
row("", "locks still owned", tostring(sc.owned), "", "", "10000", sc.owned == 10000)
row("7 1 000 watches", "connections (after first events)", tostring(wa.conns), "", "", "stream + 1", wa.conns <= 2)
row("", "first events after s", f(wa.ready, 2), "", "", "", nil)
row("", "client heap per watch KiB", f(wa.heap, 2), "", "", "", nil)
row("", "idle CPU % of a core", f(wa.cpu, 2), "", "", "", nil)
row("", "one change p50 / p99 ms", f(wa.p50, 3) .. " / " .. f(wa.p99, 3), "", "", "p50 <= 2", wa.p50 <= 2)

local head = { "scenario", "metric", "locker", "floor", "ratio", "target", "met" }
local width = {}
for i, h in ipairs(head) do width[i] = #h end
for _, r in ipairs(rows) do
    for i, cell in ipairs(r) do width[i] = math.max(width[i], #cell) end
end
local function line(cells)
    local out = {}
    for i, cell in ipairs(cells) do out[i] = cell .. (" "):rep(width[i] - #cell) end
    print("| " .. table.concat(out, " | ") .. " |")
end
line(head)
local sep = {}
for i = 1, #head do sep[i] = ("-"):rep(width[i]) end
line(sep)
for _, r in ipairs(rows) do line(r) end

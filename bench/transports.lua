-- make bench, second table: locker on each transport (gRPC, the JSON
-- gateway) beside etcd's own Go lock (clientv3/concurrency.Mutex, built
-- from Debian's golang-etcd-server-dev when a Go toolchain is there:
-- GO_MUTEX names the program), interleaved round by round, each scenario
-- in a process of its own. Two floors go in the uncontended rounds too
-- (FLOOR_GRPC names bench/floor_grpc.c's program): the same two gRPC calls
-- a cycle needs, with nothing else, over libcurl's HTTP/2 and over
-- libnghttp2 alone from one thread, and over libnghttp2 on an I/O thread
-- that the caller hands each call to (locker's shape), to show what each
-- HTTP/2 stack, and the hand-over, allow on this machine. etcd's CPU is
-- read from /proc/PID/stat of the bench's own etcd (LOCKER_ETCD_PID, set
-- by tools/with-etcd) around each run, and by the idle runs around their
-- idle span only; the client's CPU by the client itself. Rounds: TRANSPORT_ROUNDS (5);
-- each run BENCH_SECONDS (2).
local locker = require "locker"

local SECONDS = tonumber(os.getenv("BENCH_SECONDS") or "2")
local IDLE_SECONDS = tonumber(os.getenv("TRANSPORT_IDLE_SECONDS") or "6")
local ENDPOINT = assert(os.getenv("LOCKER_ENDPOINTS"), "LOCKER_ENDPOINTS not set"):match("[^,]+")
local now = locker.now

-- CPU seconds (user + system) of process pid ("self": this one) so far;
-- nil when there is no such process.
local function cpu_of(pid)
    local f = io.open("/proc/" .. pid .. "/stat")
    if not f then return nil end
    local s = f:read("*a")
    f:close()
    local fields = {}
    for x in s:match("%) (.*)"):gmatch("%S+") do fields[#fields + 1] = x end
    return (tonumber(fields[12]) + tonumber(fields[13])) / 100  -- utime, stime (ticks)
end

local function self_cpu()
    return cpu_of("self")
end

-- etcd's CPU seconds so far (LOCKER_ETCD_PID: the bench's own etcd), nil
-- without it: the idle spans read it around themselves, so that setting
-- clients up and closing them (revoking their leases) is not counted.
local function etcd_cpu_now()
    local pid = os.getenv("LOCKER_ETCD_PID")
    return pid and cpu_of(pid)
end

local function pct(list, p)
    table.sort(list)
    return list[math.max(1, math.ceil(#list * p))] or 0
end

-- ---------------------------------------------------------------- child --

local function child(transport, mode, secs, arg)
    local prefix = ("/bench-%s-%d/"):format(transport, math.random(1, 1e9))
    local function client()
        return assert(locker.new { endpoints = { ENDPOINT }, transport = transport,
                                   prefix = prefix })
    end
    local c0, t0
    local cycles, extra = 0, ""
    if mode == "uncontended" then
        local c = client()
        assert(c:lock("warm", "v")):release()
        c0, t0 = self_cpu(), now()
        while now() - t0 < secs do
            assert(c:lock("x", "v")):release()
            cycles = cycles + 1
        end
    elseif mode == "contended" then
        local cs = {}
        for i = 1, arg do
            cs[i] = client()
            assert(cs[i]:lock("warm" .. i, "v")):release()
        end
        c0, t0 = self_cpu(), now()
        for i = 1, arg do
            locker.spawn(function()
                while now() - t0 < secs do
                    assert(cs[i]:lock("one", "v")):release()
                    cycles = cycles + 1
                end
            end)
        end
        locker.run()
    elseif mode == "idle" then
        -- arg clients (ttl 3), each holding a lock, for secs: what renewals
        -- (and whatever else an idle client sends) cost etcd
        local cs = {}
        for i = 1, arg do
            cs[i] = assert(locker.new { endpoints = { ENDPOINT }, transport = transport,
                                        prefix = prefix, ttl = 3 })
            assert(cs[i]:lock("idle" .. i, "v"))
        end
        -- the span starts once every client renewed once: its renewal
        -- stream is open then (Go's session opens its own, and sends its
        -- first renewal, before its span starts too)
        local by = now() + 5
        for i = 1, arg do
            while cs[i]:stats().keepalives == 0 and now() < by do locker.sleep(0.05) end
        end
        locker.sleep(0.1)
        local k0, r0 = 0, 0
        for i = 1, arg do k0, r0 = k0 + cs[i]:stats().keepalives, r0 + cs[i]:stats().requests end
        local e0 = etcd_cpu_now()
        c0, t0 = self_cpu(), now()
        locker.sleep(secs)
        local e1 = etcd_cpu_now()
        local k1, r1 = 0, 0
        for i = 1, arg do k1, r1 = k1 + cs[i]:stats().keepalives, r1 + cs[i]:stats().requests end
        cycles = k1 - k0
        extra = (" requests %d"):format(r1 - r0) .. (e0 and (" etcd %.4f"):format(e1 - e0) or "")
        for i = 1, arg do cs[i]:close() end
    elseif mode == "held" then
        -- one client (ttl 3) holding arg locks, idle for secs: what it
        -- sends then (renewals, and every other call by kind)
        local c = assert(locker.new { endpoints = { ENDPOINT }, transport = transport,
                                      prefix = prefix, ttl = 3 })
        local n, failed = 0, nil
        for i = 1, arg do
            locker.spawn(function()
                local l, msg = c:lock("held" .. i, "v")
                if l then n = n + 1 else failed = failed or msg end
            end)
        end
        while n < arg and not failed do locker.sleep(0.05) end
        assert(not failed, failed)
        local function calls()
            local m, total = c:metrics(), 0
            for kind, by in pairs(m.requests) do
                if kind ~= "lease_keepalive" then total = total + by.ok + by.failed end
            end
            return m.renewals_sent, total
        end
        locker.sleep(0.5)  -- the last answers settle
        local k0, r0 = calls()
        local e0 = etcd_cpu_now()
        c0, t0 = self_cpu(), now()
        locker.sleep(secs)
        local e1 = etcd_cpu_now()
        local k1, r1 = calls()
        cycles = k1 - k0
        extra = (" requests %d held %d"):format(r1 - r0, c:metrics().locks_held)
            .. (e0 and (" etcd %.4f"):format(e1 - e0) or "")
        c:close()
    else  -- handover
        local a, b = client(), client()
        assert(a:lock("warm-a", "v")):release()
        assert(b:lock("warm-b", "v")):release()
        local lat, released_at = {}, nil
        c0, t0 = self_cpu(), now()
        for _, c in ipairs { a, b } do
            locker.spawn(function()
                while now() - t0 < secs do
                    local l = assert(c:lock("one", "v"))
                    if released_at then lat[#lat + 1] = (now() - released_at) * 1000 end
                    locker.sleep(arg / 1000)
                    released_at = now()
                    assert(l:release())
                end
            end)
        end
        locker.run()
        cycles = #lat
        extra = (" p50 %.3f p99 %.3f"):format(pct(lat, 0.5), pct(lat, 0.99))
    end
    print(("cycles %d seconds %.4f cpu %.4f%s"):format(cycles, now() - t0, self_cpu() - c0, extra))
end

if arg[1] == "child" then
    child(arg[2], arg[3], tonumber(arg[4]), tonumber(arg[5]))
    return
end

-- --------------------------------------------------------------- parent --

-- The program that environment variable name names, nil when none is there.
local function program(name)
    local path = os.getenv(name)
    local f = path and path ~= "" and io.open(path)
    if not f then return nil end
    f:close()
    return path
end

local GO = program("GO_MUTEX")
local FLOOR = program("FLOOR_GRPC")
local LUA = os.getenv("BENCH_LUA") or "lua5.4"

local function etcd_cpu()
    return etcd_cpu_now() or 0
end

local function run(who, mode, a)
    local span = (mode == "idle" or mode == "held") and IDLE_SECONDS or SECONDS
    local stack = who:match("^floor%-(.*)")
    local cmd = who == "go" and ("%s %s %s %s %s"):format(GO, ENDPOINT, mode, span, a)
        or stack and ("%s %s %s %s"):format(FLOOR, ENDPOINT, span, stack)
        or ("%s bench/transports.lua child %s %s %s %s"):format(LUA, who, mode, span, a)
    local e0 = etcd_cpu()
    local p = io.popen(cmd .. " 2>&1")
    local out = p:read("*a")
    p:close()
    local e1 = etcd_cpu()
    local cycles, secs, cpu = out:match("cycles (%d+) seconds ([%d.]+) cpu ([%d.]+)")
    assert(cycles, who .. " " .. mode .. " failed: " .. out)
    cycles = tonumber(cycles)
    local span_etcd = tonumber(out:match(" etcd ([%d.]+)"))  -- over the child's own span
    if span_etcd then e0, e1 = 0, span_etcd end
    return { rate = cycles / tonumber(secs), etcd = (e1 - e0) / cycles * 1000, n = cycles,
             requests = tonumber(out:match("requests (%d+)")), held = tonumber(out:match("held (%d+)")),
             etcd_total = e1 - e0, cpu_ms = tonumber(cpu) * 1000,
             client = tonumber(cpu) / cycles * 1000,
             p50 = tonumber(out:match("p50 ([%d.]+)")), p99 = tonumber(out:match("p99 ([%d.]+)")) }
end

-- etcd's CPU over the idle span with no client at all (raft ticks, its
-- own housekeeping): the idle runs' figures are net of it
local function etcd_alone()
    local e0 = etcd_cpu()
    locker.sleep(IDLE_SECONDS)
    return etcd_cpu() - e0
end

local function median(xs)
    table.sort(xs)
    local n = #xs
    if n == 0 then return 0 end
    return n % 2 == 1 and xs[(n + 1) // 2] or (xs[n // 2] + xs[n // 2 + 1]) / 2
end

local ROUNDS = tonumber(os.getenv("TRANSPORT_ROUNDS") or "5")
local IDLE_CLIENTS = 50
local whos = { "grpc", "gateway" }
if GO then whos[#whos + 1] = "go" end
local got = {}
local floors = FLOOR and { "floor-curl", "floor-nghttp2", "floor-nghttp2-thread" } or {}
for _, w in ipairs(whos) do got[w] = { u = {}, c = {}, h = {}, i = {} } end
for _, w in ipairs(floors) do got[w] = { u = {} } end
for _ = 1, ROUNDS do
    for _, w in ipairs(floors) do
        local u = got[w].u
        u[#u + 1] = run(w, "uncontended", 0)
    end
    for _, w in ipairs(whos) do
        local g = got[w]
        g.u[#g.u + 1] = run(w, "uncontended", 0)
        g.c[#g.c + 1] = run(w, "contended", 8)
        g.h[#g.h + 1] = run(w, "handover", 5)
        local alone = etcd_alone()
        local r = run(w, "idle", IDLE_CLIENTS)
        r.etcd = r.n > 0 and math.max(0, r.etcd - alone / r.n * 1000) or 0
        g.i[#g.i + 1] = r
    end
end

-- 10 000 held locks, idle: once per transport, after the rounds
local HELD = tonumber(os.getenv("TRANSPORT_HELD") or "10000")
local held = {}
for _, w in ipairs { "grpc", "gateway" } do
    local alone = etcd_alone()
    local r = run(w, "held", HELD)
    r.etcd_net = math.max(0, r.etcd_total - alone)
    held[w] = r
end

local function med(list, key)
    local xs = {}
    for _, r in ipairs(list) do xs[#xs + 1] = r[key] end
    return median(xs)
end

-- per round ratios to Go's (paired: the machine drifts between rounds)
local function ratio(w, set, key)
    if not GO then return nil end
    local xs = {}
    for i, r in ipairs(got[w][set]) do xs[#xs + 1] = r[key] / got.go[set][i][key] end
    return median(xs)
end

print(("\ntransports, %d interleaved rounds of %g s each (medians; ratios to Go's per round)")
      :format(ROUNDS, SECONDS))
print("| who | uncontended cycles/s | ÷ Go | etcd CPU ms / cycle | ÷ Go | client CPU ms / cycle"
      .. " | 8→1 contended cycles/s | ÷ Go | handover p50 / p99 ms |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
local names = { grpc = "locker, gRPC", gateway = "locker, gateway", go = "Go concurrency.Mutex",
                ["floor-curl"] = "floor: 2 calls, 1 thread, libcurl HTTP/2",
                ["floor-nghttp2"] = "floor: 2 calls, 1 thread, libnghttp2",
                ["floor-nghttp2-thread"] = "floor: 2 calls, libnghttp2 on an I/O thread" }
for _, w in ipairs(whos) do
    local g = got[w]
    local function r(set, key)
        local x = ratio(w, set, key)
        return x and ("%.2f"):format(x) or "—"
    end
    print(("| %s | %.0f | %s | %.3f | %s | %.3f | %.0f | %s | %.2f / %.2f |"):format(
        names[w], med(g.u, "rate"), r("u", "rate"), med(g.u, "etcd"),
        r("u", "etcd"), med(g.u, "client"), med(g.c, "rate"), r("c", "rate"),
        med(g.h, "p50"), med(g.h, "p99")))
end
for _, w in ipairs(floors) do
    local g = got[w]
    local function r(key)
        local x = ratio(w, "u", key)
        return x and ("%.2f"):format(x) or "—"
    end
    print(("| %s | %.0f | %s | %.3f | %s | %.3f | — | — | — |"):format(names[w], med(g.u, "rate"),
          r("rate"), med(g.u, "etcd"), r("etcd"), med(g.u, "client")))
end
if not FLOOR then print("(no gRPC floor program: FLOOR_GRPC not set)") end
print(("\n%d idle clients (ttl 3), each holding a lock, for %g s: etcd's CPU per renewal"
       .. " (and whatever else idle clients send; net of etcd's CPU alone over as long)")
      :format(IDLE_CLIENTS, IDLE_SECONDS))
print("| who | renewals | requests | etcd CPU µs / renewal | ÷ Go |")
print("|---|---:|---:|---:|---:|")
for _, w in ipairs(whos) do
    local g = got[w]
    local x = ratio(w, "i", "etcd")
    print(("| %s | %.0f | %s | %.0f | %s |"):format(names[w], med(g.i, "n"),
          g.i[1].requests and tostring(med(g.i, "requests")) or "—", med(g.i, "etcd") * 1000,
          x and ("%.2f"):format(x) or "—"))
end
print(("\none client (ttl 3) holding %d locks, idle for %g s: what it sends"
       .. " (target: a renewal every ttl/3 and nothing else)"):format(HELD, IDLE_SECONDS))
print("| who | locks held | renewals | other calls | etcd CPU ms (net) | client CPU ms |")
print("|---|---:|---:|---:|---:|---:|")
for _, w in ipairs { "grpc", "gateway" } do
    local r = held[w]
    print(("| %s | %d | %d | %d | %.0f | %.0f |"):format(names[w], r.held, r.n, r.requests,
          r.etcd_net * 1000, r.cpu_ms))
end
if not GO then print("(no Go toolchain: etcd's Go client not measured)") end

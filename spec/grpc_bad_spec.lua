-- Hostile or broken gRPC answers: the gRPC transport against a scripted
-- misbehaving etcd gRPC server (tools/badgrpc.c, HTTP/2 by nghttp2). Whatever
-- the server does, every call returns in time with a stable code and a
-- message that names the problem and the endpoint, memory stays bounded, a
-- failing stream is not reconnected in a tight loop, and close() is prompt.
-- Every wait here is bounded by the wall clock: a call that does not come
-- back in time fails its test, and its client is closed.
-- To keep the file fast, each scenario's calls run side by side, each on a
-- client of its own, once (in setup); the tests judge what they returned.
local locker = require "locker"
local helper = require "helper"

-- tools/badgrpc.c, built by make next to the module
local badgrpc = os.getenv("LOCKER_BADGRPC") or "build/5.4/badgrpc"

local TIMEOUT = 1        -- the clients' request timeout (seconds)
local LOCK_TIMEOUT = 3   -- lock()'s own timeout
local SLACK = 1          -- a call returns within its timeout + SLACK
local MIB = 1024         -- VmRSS is in KiB
local GUARD = 512 * MIB  -- calls whose memory grows past this are cut short
local LOOP_SECONDS = 3   -- how long a wanted lock and watch meet the server
local MAX_CONNS, MAX_STREAMS = 40, 60  -- at most, in LOOP_SECONDS

--- Starts badgrpc on a free loopback port with SCENARIO (spec/helper.lua's
-- tool: srv:stats() -> { conns = connections accepted, streams = calls
-- begun, unary =, watches =, keepalives =, plain = HTTP/1.1 requests }).
local function server(scenario)
    local srv = helper.tool("badgrpc", badgrpc, scenario)
    srv.scenario = scenario
    return srv
end

local rss = helper.rss

-- Clients made by the running test (or setup); cleanup closes them.
local clients = {}

local function client(srv)
    local c = assert(locker.new{ endpoints = { srv.endpoint }, timeout = TIMEOUT, ttl = 3,
                                  transport = "grpc" })
    clients[#clients + 1] = c
    return c
end

local function cleanup()
    for i = #clients, 1, -1 do
        clients[i]:close()
        clients[i] = nil
    end
end

local go = helper.go

local function get(c) return c:get("x") end
local function lock(c) return c:lock("x", "v", { timeout = LOCK_TIMEOUT }) end
local function status(c) return c:status() end

--- Runs fn(c) and waits for it at most limit seconds; past it, closes c
-- (the call returns "closed"). The box: .in_time, .r (its results), .took.
local function bounded(c, limit, fn)
    local t0 = locker.now()
    local box = go(fn, c)
    while not box.done and locker.now() - t0 < limit do locker.sleep(0.02) end
    box.took = locker.now() - t0
    box.in_time = box.done == true
    if not box.done then
        c:close()
        local t1 = locker.now()
        while not box.done and locker.now() - t1 < 2 do locker.sleep(0.01) end
    end
    return box
end

--- One scenario's run, all at once: get(), lock() and status() on a client
-- each (bounded by their timeouts + SLACK); a client with a lock() and a
-- get() pending, closed after 0.5 s; and, on a second server of the same
-- scenario (its stats its own), a client with a lock that never gives up
-- and a watch, for LOOP_SECONDS. Watches this process's memory meanwhile.
-- Returns { get =, lock =, status = (boxes: .in_time, .r, .took),
-- close = { took =, ok =, calls = { boxes } }, loop = { conns =, streams =
-- } (grown meanwhile), peak = KiB of growth at most, guard = cut short
-- (past GUARD) }.
local function run_all(srv, loop_srv)
    local run = { peak = 0 }
    local base, t0 = rss(), locker.now()
    local calls = {
        { "get", get, TIMEOUT }, { "lock", lock, LOCK_TIMEOUT }, { "status", status, TIMEOUT },
    }
    for _, call in ipairs(calls) do
        call.c = client(srv)
        call.box = go(call[2], call.c)
        call.box.c = call.c
        run[call[1]] = call.box
    end
    local closing = client(srv)
    local pending = { go(lock, closing), go(get, closing) }
    local looping = client(loop_srv)
    local before = loop_srv:stats()
    assert(looping:lock("x", "v", { keep = true, background = true }))
    looping:watch("x", function() end)
    local closed_at, loop_done
    while true do
        local now = locker.now() - t0
        local grown = rss() - base
        if grown > run.peak then run.peak = grown end
        if grown > GUARD and not run.guard then  -- enough to fail: stop here
            run.guard = true
            cleanup()
        end
        for _, call in ipairs(calls) do
            local box = call.box
            if not box.done and not box.late and now >= call[3] + SLACK then
                box.late = true  -- past its bound: closing its client ends it
                call.c:close()
            end
            if box.done and not box.took then
                box.took = now
                box.in_time = not box.late
            end
        end
        if not closed_at and now >= 0.5 then
            local c0 = locker.now()
            run.close = { ok = closing:close() }
            run.close.took = locker.now() - c0
            closed_at = now
        end
        if not loop_done and now >= LOOP_SECONDS then
            local after = loop_srv:stats()
            looping:close()
            run.loop = { conns = after.conns - before.conns, streams = after.streams - before.streams }
            loop_done = true
        end
        local all = loop_done and pending[1].done and pending[2].done
        for _, call in ipairs(calls) do all = all and call.box.done end
        -- the closed client's calls have 2 s to return
        if all or now > LOCK_TIMEOUT + SLACK + 2 then break end
        locker.sleep(0.02)
    end
    run.close.calls = pending
    cleanup()
    return run
end

local set_of = helper.set_of

-- Why box is not "nil, msg, code" in time, with code in case.codes and msg
-- naming the problem (one of case.words, Lua patterns) and the endpoint
-- (nil: it is).
local function problem(what, box, limit, case, endpoint)
    if not box.in_time then
        return ("%s did not return within %.1f s"):format(what, limit)
    end
    local r, codes = box.r, case.codes
    if r[1] ~= nil or r[3] == nil then
        return ("%s returned %s, %s, %s; want nil, msg, one of {%s}"):format(what,
            tostring(r[1]), tostring(r[2]), tostring(r[3]), table.concat(codes, ", "))
    end
    if not set_of(codes)[r[3]] then
        return ("%s: code %q (%s), want one of {%s}"):format(what, r[3], tostring(r[2]),
            table.concat(codes, ", "))
    end
    local msg = tostring(r[2])
    local named = false
    for _, w in ipairs(case.words) do named = named or msg:match(w) ~= nil end
    if not named then
        return ("%s: %q names none of {%s}"):format(what, msg, table.concat(case.words, ", "))
    end
    if not case.own_words and not msg:find(endpoint, 1, true) then
        return ("%s: %q does not name the endpoint %s"):format(what, msg, endpoint)
    end
end

-- Each scenario: the codes get(), lock() and status() may fail with, and
-- the words (Lua patterns, one of them) their message has. Malformed bytes
-- are "protocol"; a transport fault, silence, a 5xx, gRPC's Unavailable, a
-- call without grpc-status (a cut call) are "unavailable"; another gRPC
-- status is etcd's error ("etcd"). heavy: its memory is watched.
-- own_words: the message is the server's grpc-message (with its status),
-- as etcd's errors are on both transports: no endpoint in it.
local grid = {
    { "silent", codes = { "unavailable" }, words = { "timed out" } },
    { "huge_length", codes = { "protocol" }, heavy = true,
      words = { "over 8 MiB", "announcing 2147483647 bytes" } },
    { "truncated", codes = { "protocol" }, words = { "truncated" } },
    { "compressed", codes = { "protocol" }, words = { "compressed" } },
    -- (lock(): its watch sees the empty message, which confirms nothing)
    { "no_trailers", codes = { "unavailable" },
      words = { "no grpc%-status", "before the watch was confirmed" } },
    { "rst", codes = { "unavailable" }, words = { "INTERNAL_ERROR" } },
    -- (a call that goes out as the server closes after its GOAWAY meets
    -- the closed socket: libcurl says "Send failure: Broken pipe")
    { "goaway", codes = { "unavailable" },
      words = { "not closed cleanly", "GOAWAY", "Connection reset", "Broken pipe" } },
    { "wrongtypes", codes = { "protocol" }, words = { "malformed gRPC answer" } },
    { "status_unavailable", codes = { "unavailable" }, own_words = true,
      words = { "badgrpc: etcdserver: no leader %(gRPC status 14%)" } },
    { "status_internal", codes = { "etcd" }, own_words = true,
      words = { "badgrpc: internal failure %(gRPC status 13%)" } },
    { "http500", codes = { "unavailable" }, words = { "HTTP 500" } },
    -- (lock(): its watch gets messages that confirm nothing, as a stream
    -- whose start was lost)
    { "endless", codes = { "protocol", "unavailable" }, heavy = true,
      words = { "over 8 MiB", "before the watch was confirmed" } },
}

-- under AddressSanitizer (make sanitize) freed memory waits in its
-- quarantine (tools/run-specs caps it at 64 MiB) before it can go back: the
-- bound allows for that, and still catches a buffer that grows without end
local MEMORY_BOUND = os.getenv("LOCKER_SANITIZE") and 160 * MIB or 64 * MIB

-- Runs get, lock and status at once on one client against srv (as
-- spec/gateway_spec.lua does); the peak growth of this process's memory
-- (KiB) while they run. (run_all's six clients at once may each hold an
-- answer of up to the client's cap, 8 MiB: not this bound's business.)
local function peak_growth(srv)
    local c = client(srv)
    local base, t0, peak = rss(), locker.now(), 0
    local calls = { go(get, c), go(lock, c), go(status, c) }
    local function all_done()
        for _, b in ipairs(calls) do if not b.done then return false end end
        return true
    end
    -- the longest call: lock(), LOCK_TIMEOUT + SLACK
    while not all_done() and locker.now() - t0 < LOCK_TIMEOUT + SLACK do
        peak = math.max(peak, rss() - base)
        if peak > 256 * MIB then break end   -- enough to fail: stop here
        locker.sleep(0.02)
    end
    cleanup()
    return math.max(peak, rss() - base)
end

for _, case in ipairs(grid) do
    local scenario = case[1]
    local want = table.concat(case.codes, "/")
    describe("grpc: " .. scenario, function()
        local srv, loop_srv, run
        setup(function()
            srv, loop_srv = server(scenario), server(scenario)
            run = run_all(srv, loop_srv)
        end)
        teardown(function()
            cleanup()
            if srv then srv:close() end
            if loop_srv then loop_srv:close() end
        end)

        for _, call in ipairs({ { "get", TIMEOUT }, { "lock", LOCK_TIMEOUT }, { "status", TIMEOUT } }) do
            it(("%s() fails in time with %s, naming the problem"):format(call[1], want), function()
                local p = problem(call[1], run[call[1]], call[2] + SLACK, case, srv.endpoint)
                assert(p == nil, p)
            end)
        end

        it("close() is prompt while calls are pending; they return", function()
            local close = run.close
            assert(close.ok == true, "close() returned " .. tostring(close.ok))
            assert(close.took < TIMEOUT + SLACK, ("close() took %.2f s"):format(close.took))
            local codes = set_of(case.codes)
            codes.closed = true
            for i, box in ipairs(close.calls) do
                assert(box.done, ("call %d did not return within 2 s of close()"):format(i))
                assert(box.r[1] == nil and codes[box.r[3]],
                       ("call %d returned %s, %s, %s"):format(i, tostring(box.r[1]),
                                                             tostring(box.r[2]), tostring(box.r[3])))
            end
        end)

        it(("does not reconnect in a tight loop: at most %d connections and %d calls in %d s")
           :format(MAX_CONNS, MAX_STREAMS, LOOP_SECONDS), function()
            local loop = run.loop
            assert(loop, "the looping client was not measured")
            assert(loop.conns <= MAX_CONNS and loop.streams <= MAX_STREAMS,
                   ("%d connections, %d calls in %d s"):format(loop.conns, loop.streams, LOOP_SECONDS))
        end)

        if case.heavy then
            it("stays under 64 MiB of memory growth with get, lock and status at once", function()
                assert(not run.guard, ("the calls were cut short: memory grew by %d MiB")
                                      :format(math.floor(run.peak / MIB)))
                local peak = peak_growth(srv)
                assert(peak < MEMORY_BOUND, ("memory grew by %d MiB"):format(math.floor(peak / MIB)))
            end)
        end
    end)
end

describe("grpc: a reset call", function()
    after_each(cleanup)

    -- rst_first: a connection's first call is reset (RST_STREAM), the
    -- later ones are answered well (an empty RangeResponse: nobody holds it)
    it("does not spoil the connection: the calls after it are answered", function()
        local srv = server("rst_first")
        local c = client(srv)
        local limit = TIMEOUT + SLACK
        local first = bounded(c, limit, get)  -- may fail, or go again and succeed
        assert(first.in_time, ("the first get() did not return within %.1f s"):format(limit))
        local box = bounded(c, limit, get)
        local stats = srv:stats()
        srv:close()
        assert(box.in_time, ("the second get() did not return within %.1f s"):format(limit))
        assert(box.r[2] == nil, ("the second get() failed: %s (%s); the server saw %d call(s) "
                                 .. "on %d connection(s)"):format(tostring(box.r[2]), tostring(box.r[3]),
                                                                  stats.streams, stats.conns))
        assert.same({}, box.r)  -- nobody holds it: a plain nil
    end)
end)

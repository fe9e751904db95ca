-- Ownership is key *and* lease confirmed (issue 17): a grant checked where
-- it is handed to Lua, a holder that notices a foreign delete behind a
-- silent stream or a hung member, no key left behind, timeouts that are
-- bounds, a hung first endpoint. Each against a real etcd, with the fault
-- proxy (tools/faultproxy.c) and etcdctl as the second client.
local locker = require "locker"
local health = require "locker.health"
local helper = require "helper"

local now, go = locker.now, helper.go

describe("ownership", function()
    local etcd, n = nil, 0
    local prefix

    setup(function() etcd = helper.etcd() end)
    teardown(function() etcd:destroy() end)
    before_each(function()
        n = n + 1
        prefix = "/own" .. n .. "/"
    end)

    local function client(opts)
        opts = opts or {}
        opts.prefix = opts.prefix or prefix
        return etcd:client(opts)
    end

    -- Busy-waits (no scheduler runs: nothing is dispatched) until fn().
    local function busy_until(what, fn, timeout)
        local t_end = now() + (timeout or 10)
        while not fn() do
            if now() > t_end then error("timed out (busy) waiting for " .. what, 2) end
        end
    end

    -- How long after t0 lock:owned() turned false (sampled every 10 ms,
    -- for at most limit s), and whether other:owned() and lock:owned() were
    -- ever true together after bound.
    local function owned_until(lock, other, t0, bound, limit)
        local overlap = 0
        local t_end = t0 + limit
        local gone_at
        while now() < t_end do
            local a = lock:owned()
            if not a and not gone_at then gone_at = now() end
            if a and other and other:owned() and now() > t0 + bound then overlap = overlap + 1 end
            if gone_at and (not other or now() > t0 + bound + 1) then break end
            locker.sleep(0.01)
        end
        return gone_at and gone_at - t0, overlap
    end

    describe("a grant handed to a busy caller (17.1)", function()
        -- b waits; a's key goes (etcdctl), so b is granted while this
        -- process runs no scheduler; b's lease is revoked (etcdctl) before
        -- lock() can return. Returns the waiting box and the changes seen.
        local function stale_grant(timeout)
            local a = client()
            local b = client({ ttl = 3, timeout = 1 })
            local held = assert(a:lock("busy", "a"))
            local changes = {}
            local waiting = go(function()
                return b:lock("busy", "b", { timeout = timeout, on_change = function(owned, l)
                    changes[#changes + 1] = { owned, l:owned() }
                end })
            end)
            helper.wait_until("b to queue", function() return #etcd:keys(prefix .. "busy/") == 2 end)
            local lease = assert(b:lease())
            -- from here on nothing dispatches b's events until the end
            assert(select(2, etcd:ctl("del " .. helper.quote(held:key()))))
            local mine = prefix .. "busy/" .. lease
            local sent = b:stats().requests
            busy_until("b's key to be the only one", function()
                return table.concat(etcd:keys(prefix .. "busy/"), " ") == mine
            end)
            -- b's engine asks whether it is first now (one txn), and is told
            busy_until("b's engine to ask", function() return b:stats().requests > sent end)
            local t_answer = now() + 0.3
            busy_until("its answer", function() return now() > t_answer end)
            assert(select(2, etcd:ctl("lease revoke " .. lease)))
            busy_until("b to see its lease gone", function() return b:lease() ~= lease end)
            local t_busy = now() + 2.2   -- past b's timeout = 2 in the first case
            busy_until("the caller's busy time", function() return now() > t_busy end, 5)
            helper.wait_until("lock() to answer", function() return waiting.done end, 25)
            return waiting, changes, a, b
        end

        it("returns nil, msg, 'lost' when no time is left", function()
            local waiting, changes, a, b = stale_grant(2)
            local l, msg, code = waiting.r[1], waiting.r[2], waiting.r[3]
            assert.is_nil(l, "lock() returned a lock whose owned() is " .. tostring(l and l:owned()))
            assert.equal("lost", code, msg)
            for _, c in ipairs(changes) do assert.is_false(c[1] and not c[2], "on_change(true) while not owned") end
            assert.same({}, etcd:keys(prefix .. "busy/"))
            a:close(); b:close()
        end)

        it("tries again while time is left, and returns a lock that is owned", function()
            local waiting, changes, a, b = stale_grant(20)
            local l = waiting.r[1]
            assert.is_truthy(l, tostring(waiting.r[2]))
            assert.is_true(l:owned())
            helper.wait_until("on_change", function() return #changes > 0 end)
            for _, c in ipairs(changes) do assert.is_false(c[1] and not c[2], "on_change(true) while not owned") end
            assert.is_true(changes[#changes][1])
            l:release()
            a:close(); b:close()
        end)
    end)

    -- Deletes b's lock's key with etcdctl, lets c take the name, and asserts
    -- that lock:owned() is false within b's timeout + margin, never
    -- together with c's after that. Returns c's lock.
    local function deleted_under(b, lock, c, fault)
        local t0 = now()
        assert(select(2, etcd:ctl("del " .. helper.quote(lock:key()))))
        local taken = assert(c:lock(lock.name, "c", { timeout = 5 }))
        local bound = b.timeout + b.margin
        local delay, overlap = owned_until(lock, taken, t0, bound, bound + 3)
        io.stderr:write(("\n    %s: owned() false %.2f s after the delete (bound %.1f s)\n")
            :format(fault, delay or -1, bound))
        assert.is_truthy(delay, "still owned " .. bound + 3 .. " s after the delete")
        assert.is_true(delay <= bound, ("owned() true %.2f s after the delete"):format(delay))
        assert.equal(0, overlap)
        return taken
    end

    describe("a holder whose key is deleted (17.2)", function()
        it("stops owning within timeout + margin behind a silent stream", function()
            local p = helper.proxy(etcd)
            local b = client({ endpoints = { p.endpoint }, ttl = 6, timeout = 2 })
            local c = client()
            local lock = assert(b:lock("quiet", "b"))
            p:mode("mute /v3/watch")
            local taken = deleted_under(b, lock, c, "silent stream")
            assert.is_true(taken:owned())
            p:mode("unmute /v3/watch")
            taken:release()
            b:close(); c:close(); p:close()
        end)

        it("keeps owning behind a silent stream while its key exists (reads confirm it)", function()
            local p = helper.proxy(etcd)
            local b = client({ endpoints = { p.endpoint }, ttl = 4, timeout = 1 })
            local lost = 0
            local lock = assert(b:lock("steady", "b", { on_change = function(owned)
                if not owned then lost = lost + 1 end
            end }))
            p:mode("mute /v3/watch")
            local sent = b:stats().requests
            local t_end, samples, owned = now() + 6, 0, 0
            while now() < t_end do
                samples = samples + 1
                if lock:owned() then owned = owned + 1 end
                locker.sleep(0.05)
            end
            p:mode("unmute /v3/watch")
            assert.equal(samples, owned)
            assert.equal(0, lost)
            -- renewals, proofs, key reads and stream retries, not a storm
            local made = b:stats().requests - sent
            io.stderr:write(("\n    6 s behind a silent stream: %d requests\n"):format(made))
            assert.is_true(made < 80, made .. " requests in 6 s")
            lock:release()
            b:close(); p:close()
        end)

        it("stops owning within timeout + margin behind a hung member, and the stream follows the failover", function()
            local p1, p2 = helper.proxy(etcd), helper.proxy(etcd)
            local b = client({ endpoints = { p1.endpoint, p2.endpoint }, ttl = 6, timeout = 2 })
            local c = client()
            local lock = assert(b:lock("hung", "b"))
            assert.equal(p1.endpoint, b:session().endpoint)
            local connects = b:stats().stream_connects
            p1:mode("blackhole")   -- accepts, never answers: a stopped member
            local taken = deleted_under(b, lock, c, "hung member")
            helper.wait_until("the stream on the other member", function()
                return b:session().endpoint == p2.endpoint and b:session().stream
                    and b:stats().stream_connects > connects
            end, 10)
            taken:release()
            b:close(); c:close(); p1:close(); p2:close()
        end)

        it("ends ownership at once when a guarded write finds the key gone", function()
            local p = helper.proxy(etcd)
            local b = client({ endpoints = { p.endpoint }, ttl = 6, timeout = 2 })
            local lock = assert(b:lock("guard", "b"))
            p:mode("mute /v3/watch")   -- the stream does not tell
            assert(select(2, etcd:ctl("del " .. helper.quote(lock:key()))))
            local ok, _, code = lock:set("b2")
            assert.is_nil(ok)
            assert.equal("lost", code)
            assert.is_false(lock:owned())
            assert.same({}, etcd:keys(prefix .. "guard/"))
            p:mode("unmute /v3/watch")
            b:close(); p:close()
        end)
    end)

    it("leaves no key behind, and none in a lock's range (17.4)", function()
        -- a client whose prefix is another's lock directory: its probe key
        -- must never block that lock
        local inner = client({ prefix = prefix .. "app/", ttl = 3, timeout = 0.5 })
        local outer = client()
        local w = assert(inner:watch("x", function() end))
        local l1 = assert(inner:lock("x", "1"))
        local l2 = assert(inner:lock("y", "2", { keep = true }))
        local busy = true
        locker.spawn(function()  -- etcd busy elsewhere: the stream lags reads, probes write
            local k = 0
            while busy do
                k = k + 1
                etcd:ctl(("put /elsewhere%d/k v%d"):format(n, k))
                locker.sleep(0.05)
            end
        end)
        helper.wait_until("a probe write", function()
            return etcd:ctl("get --keys-only --prefix " .. prefix .. "app//"):find("probe", 1, true)
        end, 15)
        -- it carries the session lease
        local json = etcd:ctl("get -w json " .. prefix .. "app//probe")
        assert.matches('"lease":%d+', json)
        busy = false
        w:cancel(); l1:release(); l2:release()
        inner:close()
        assert.same({}, etcd:keys(prefix, true))
        local l = assert(outer:lock("app", "o", { wait = false }))
        l:release()
        outer:close()
        assert.same({}, etcd:keys(prefix, true))
        etcd:ctl(("del --prefix /elsewhere%d/"):format(n))
    end)

    it("leaves no key behind after every primitive, and while working only keys of its lease (17.4)", function()
        local c = client({ ttl = 3, lock_delay = 0.5 })
        local lease
        local function only_leased(when)
            -- every key under the prefix is on the session lease: gone with it
            for _, key in ipairs(etcd:keys(prefix, true)) do
                local json = etcd:ctl("get -w json " .. helper.quote(key))
                local l = json:match('"lease":(%d+)')
                assert.is_truthy(l, when .. ": " .. key .. " carries no lease")
                lease = lease or l
                assert.equal(lease, l, when .. ": " .. key .. " on another lease")
            end
        end
        local w = assert(c:watch("a", function() end))
        local all = assert(c:watch_all(function() end))
        local l = assert(c:lock("a", "1", { timeout = 5 }))  -- a lock, set, released cleanly
        assert(l:set("2"))
        only_leased("a lock held")
        l:release()
        only_leased("a lock released (its lock-delay mark)")
        -- a semaphore: limit keys (a client holds one place of a name: its key
        -- is the name and its lease, so the second holder is another client)
        local c2 = client({ ttl = 3 })
        local s1 = assert(c:lock("sem", "1", { limit = 2, timeout = 5 }))
        local s2 = assert(c2:lock("sem", "2", { limit = 2, timeout = 5 }))
        s2:release()
        c2:close()
        only_leased("a semaphore held")
        s1:release()
        local leader = assert(c:campaign("elect", "v1", { timeout = 5 }))  -- proclaimed, resigned
        assert(leader:proclaim("v2"))
        only_leased("a leader")
        leader:resign()
        local g = assert(c:lock("guard", "g", { timeout = 5 }))  -- guarded writes of the caller's key
        assert(g:put("/own-data" .. n .. "/k", "x"))
        assert(g:delete("/own-data" .. n .. "/k"))
        g:release()
        only_leased("after every primitive")
        w:cancel(); all:cancel()
        c:close()
        assert.same({}, etcd:keys(prefix, true))
        assert.same({}, etcd:keys("/own-data" .. n .. "/", true))
    end)

    describe("timeouts (17.6)", function()
        it("answers lock{timeout} in time with 'timeout' while a txn hangs, leaving nothing", function()
            local p = helper.proxy(etcd)
            local b = client({ endpoints = { p.endpoint }, timeout = 2 })
            assert(b:lock("warm", "b")):release()   -- lease and stream are up
            p:mode("drop /v3/kv/txn")
            for _, t in ipairs({ 0.5, 1 }) do
                local t0 = now()
                local l, msg, code = b:lock("t", "b", { timeout = t })
                local took = now() - t0
                assert.is_nil(l)
                assert.equal("timeout", code, msg)
                assert.is_true(took < t + 0.1, ("timeout %.1f answered after %.2f s"):format(t, took))
            end
            p:mode("undrop /v3/kv/txn")
            local l, msg = b:lock("t", "b", { wait = false })
            assert.is_truthy(l, msg)
            l:release()
            assert.same({}, etcd:keys(prefix))
            b:close(); p:close()
            assert.same({}, etcd:keys(prefix, true))
        end)
    end)

    describe("a hung first endpoint (17.7)", function()
        local ROUNDS = 20
        local hung
        before_each(function()
            hung = helper.proxy(etcd)
            hung:mode("blackhole")
        end)
        after_each(function() hung:close() end)

        -- Runs fn(client) on ROUNDS fresh clients at once, each with the
        -- hung member first; every call answers within 2 x timeout + 1 s.
        local function rounds(what, fn)
            local boxes, clients = {}, {}
            local timeout = 1
            for i = 1, ROUNDS do
                clients[i] = client({ endpoints = { hung.endpoint, etcd.endpoint }, ttl = 3,
                                      timeout = timeout })
                boxes[i] = go(function()
                    local t0 = now()
                    local ok, why = fn(clients[i], i)
                    return ok, why, now() - t0
                end)
            end
            local bound = 2 * timeout + 1
            helper.wait_until(what .. " on every client", function()
                for _, box in ipairs(boxes) do if not box.done then return false end end
                return true
            end, bound + 5)
            local worst = 0
            for i, box in ipairs(boxes) do
                assert.is_truthy(box.r[1], ("%s, round %d: %s"):format(what, i, tostring(box.r[2])))
                worst = math.max(worst, box.r[3])
            end
            io.stderr:write(("\n    %s with a hung first endpoint: worst of %d %.2f s (bound %.1f s)\n")
                :format(what, ROUNDS, worst, bound))
            assert.is_true(worst <= bound, ("%s took %.2f s"):format(what, worst))
            for _, c in ipairs(clients) do c:close() end
        end

        it("takes a lock", function()
            rounds("lock", function(c, i)
                local l, msg = c:lock("h" .. i, "v", { timeout = 20 })
                if l then l:release() end
                return l, msg
            end)
        end)

        it("takes a lock with wait = false", function()
            rounds("lock{wait=false}", function(c, i)
                local l, msg = c:lock("w" .. i, "v", { wait = false })
                if l then l:release() end
                return l, msg
            end)
        end)

        it("takes a lock with keep = true", function()
            rounds("lock{keep=true}", function(c, i)
                local l, msg = c:lock("k" .. i, "v", { keep = true, timeout = 20 })
                if l then l:release() end
                return l, msg
            end)
        end)

        it("delivers a watch's first event", function()
            rounds("watch", function(c)
                local w = assert(c:watch("nobody"))
                local _, ev, msg = w:next(10)
                w:cancel()
                return ev, msg
            end)
        end)

        it("holds a health record", function()
            rounds("health", function(c, i)
                local h = health.start(c, assert(health.parse(('record "r%d" { value = "v" }'):format(i), "=t")))
                local name = "r" .. i
                local t_end = now() + 10
                while not h:state().records[name].held and now() < t_end do locker.sleep(0.02) end
                local ok = h:state().records[name].held
                h:stop()
                return ok, "no record"
            end)
        end)
    end)
end)

-- Safety: a lock is owned only while its lease is confirmed, on every path.
-- One spec per finding of issue 8, most of them through a fault-injecting
-- proxy (tools/faultproxy.c) in front of a throwaway etcd.
local locker = require "locker"
local helper = require "helper"

describe("safety", function()
    local etcd, n = nil, 0
    local prefix

    setup(function() etcd = helper.etcd() end)
    teardown(function() etcd:destroy() end)
    before_each(function()
        n = n + 1
        prefix = "/safety" .. n .. "/"
    end)

    local function client(opts)
        opts = opts or {}
        opts.prefix = opts.prefix or prefix
        return etcd:client(opts)
    end

    local go = helper.go

    it("never tells a waiter it owns the lock while its renewals are late (finding 1)", function()
        local p = helper.proxy(etcd)
        local a = client()
        local b = client({ endpoints = { p.endpoint }, ttl = 4, timeout = 1 })
        local c = client()
        local held = assert(a:lock("j", "a"))
        local waiting = go(function() return b:lock("j", "b", { timeout = 20 }) end)
        helper.wait_until("b to queue", function() return #etcd:keys(prefix .. "j/") == 2 end)
        p:mode("drop /v3/lease/keepalive")
        helper.wait_until("b's renewals to be late", function()
            return b:session().state == "jeopardy"
        end, 10)
        held:release()  -- b is first now, but cannot be told it owns
        local t_end = locker.now() + 2
        while locker.now() < t_end and not waiting.done do locker.sleep(0.02) end
        assert.is_nil(waiting.done, "lock() returned during jeopardy")
        -- b's lease ends on the server; c takes over, and b never owned
        local taken = assert(c:lock("j", "c", { timeout = 15 }))
        assert.is_true(taken:owned())
        if waiting.done and waiting.r[1] then
            assert.is_false(waiting.r[1]:owned())
        end
        p:mode("pass")
        helper.wait_until("b's lock() to answer", function() return waiting.done end, 15)
        assert.is_nil(waiting.r[1] and waiting.r[1]:owned() or nil)
        taken:release()
        a:close(); b:close(); c:close(); p:close()
    end)

    it("ends ownership at the local deadline when the holder is cut off, whatever it is doing (finding 2)", function()
        local p = helper.proxy(etcd)
        local b = client({ endpoints = { p.endpoint }, ttl = 3, timeout = 1 })
        local c = client()
        local lock = assert(b:lock("cut", "b"))
        local valid = lock:valid_for()
        assert.is_true(valid > 0 and valid <= 3, tostring(valid))
        -- the stream drops and its history is compacted: a resync check
        -- starts, and hangs with everything else
        p:mode("cut")
        local _, okc = etcd:ctl("put /other/x y")
        assert.is_true(okc)
        local rev = etcd:ctl("get /other/x -w fields"):match('"Revision" : (%d+)')
        etcd:ctl("compact " .. rev)
        p:mode("blackhole")
        local deadline = locker.now() + lock:valid_for()
        helper.wait_until("b to stop owning", function() return not lock:owned() end, 5)
        assert.is_true(locker.now() <= deadline + 0.2, "owned past the deadline")
        assert.is_nil(lock:token())
        assert.equal("not_owner", select(3, lock:set("x")))
        local taken = assert(c:lock("cut", "c", { timeout = 10 }))
        assert.is_false(lock:owned())
        assert.is_true(taken:owned())
        taken:release()
        p:mode("pass")
        b:close(); c:close(); p:close()
    end)

    it("ignores a DELETE older than its own key: release and re-lock 200 times (finding 3)", function()
        local a = client()
        local watcher = client()
        local seen = 0
        watcher:watch("again", function() seen = seen + 1 end)
        local failures = 0
        for i = 1, 200 do
            local l, msg = a:lock("again", "v" .. i, { timeout = 5 })
            if not l or not l:owned() then
                failures = failures + 1
            else
                l:release()
            end
            assert(msg == nil, msg)
        end
        assert.equal(0, failures)
        -- a stale DELETE would have cost a lock, or left a key behind
        locker.sleep(0.3)
        assert.same({}, etcd:keys(prefix))
        assert.is_true(seen > 0)
        a:close(); watcher:close()
    end)

    it("hands one name back and forth between two clients of one process (finding 3)", function()
        local a, b = client(), client()
        local lost, errors, rounds = 0, {}, 0
        local t_end = locker.now() + 3
        local function player(c, tag)
            return go(function()
                while locker.now() < t_end do
                    local l, msg = c:lock("ping", tag, { timeout = 5, on_change = function(owned, _, _, code)
                        if not owned and code then lost = lost + 1 end
                    end })
                    if not l then
                        errors[#errors + 1] = msg
                    else
                        rounds = rounds + 1
                        locker.sleep(0.005)
                        l:release()
                    end
                end
            end)
        end
        local pa, pb = player(a, "a"), player(b, "b")
        helper.wait_until("both players", function() return pa.done and pb.done end, 20)
        assert.same({}, errors)
        assert.equal(0, lost)
        assert.is_true(rounds > 20, rounds .. " rounds")
        assert.same({}, etcd:keys(prefix))
        a:close(); b:close()
    end)

    it("keeps a client alive while a coroutine waits on it (finding 4)", function()
        local a = client()
        local held = assert(a:lock("gc", "a"))
        local waiter = go(function()
            local c = client()
            local l, msg, code = c:lock("gc", "waiter", { timeout = 5 })
            local owned = l and l:owned()
            if l then l:release() end
            c:close()
            return owned, msg, code
        end)
        locker.step()
        helper.wait_until("the waiter to queue", function() return #etcd:keys(prefix .. "gc/") == 2 end)
        collectgarbage()
        collectgarbage()
        locker.sleep(0.1)
        collectgarbage()
        held:release()
        helper.wait_until("the waiter to own", function() return waiter.done end)
        assert.same({ true }, waiter.r)
        a:close()
    end)

    it("says owned() is false at once after a freeze past the lease (finding 5)", function()
        local script = helper.file(([[
local locker = require "locker"
local c = assert(locker.new{ endpoints = { %q }, prefix = %q, ttl = 2 })
local l = assert(c:lock("frozen", "x"))
io.stdout:write("held ", tostring(l:owned()), "\n"); io.stdout:flush()
os.execute("kill -STOP $PPID")   -- the whole process, engine thread too
local first = l:owned()          -- the first look after SIGCONT
io.stdout:write("after ", tostring(first), " ", tostring(l:token()), "\n")
io.stdout:flush()
os.exit(0)
]]):format(etcd.endpoint, prefix))
        local pid, out = helper.spawn(("exec %s %s"):format(helper.lua, script), true)
        helper.wait_until("the holder to hold", function() return helper.read(out):match("held true") end)
        helper.wait_until("the holder to stop", function()
            local stat = helper.read("/proc/" .. pid .. "/stat")
            return stat:match("^%d+ %b() T")
        end)
        locker.sleep(2.5)  -- past the TTL
        helper.kill(pid, "CONT")
        local line = helper.wait_until("the holder's first look", function()
            return helper.read(out):match("after %S+ %S+")
        end)
        assert.equal("after false nil", line)
        os.remove(script)
        os.remove(out)
    end)

    it("renews under 2 000 concurrent get() calls with ttl 2 (finding 6)", function()
        local c = client({ ttl = 2 })
        local changes = 0
        local lock = assert(c:lock("busy", "v", { on_change = function(owned)
            if not owned then changes = changes + 1 end
        end }))
        local t_end = locker.now() + 5
        local running, gets, always = 0, 0, true
        for _ = 1, 2000 do
            running = running + 1
            locker.spawn(function()
                while locker.now() < t_end do
                    c:get("busy")
                    gets = gets + 1
                    if not lock:owned() then always = false end
                end
                running = running - 1
            end)
        end
        helper.wait_until("the readers to finish", function() return running == 0 end, 30)
        assert.is_true(always, "the lock was not owned at some point")
        assert.equal(0, changes)
        assert.is_true(lock:owned())
        assert.is_true(gets > 2000, gets .. " gets")
        lock:release()
        c:close()
    end)

    it("leaves no key behind after timed-out lock() calls (finding 7)", function()
        local a, b = client(), client()
        local held = assert(a:lock("tmo", "a"))
        local codes = {}
        for i = 1, 40 do
            local l, _, code = b:lock("tmo", "b", { timeout = (i % 8) * 0.002 })
            assert.is_nil(l)
            codes[code] = true
        end
        assert.same({ timeout = true }, codes)
        helper.wait_until("only the holder's key to be left", function()
            return #etcd:keys(prefix .. "tmo/") == 1
        end, 5)
        locker.sleep(0.5)  -- and nothing comes back later
        assert.equal(1, #etcd:keys(prefix .. "tmo/"))
        held:release()
        a:close(); b:close()
    end)

    it("deletes a key of its own lease that no lock claims (a put that landed late, finding 7)", function()
        local c = client()
        local l = assert(c:lock("anchor", "v"))  -- a lease and a running stream
        local stray = prefix .. "late/" .. c:lease()
        local _, ok = etcd:ctl(("put --lease=%s %s x"):format(c:lease(), helper.quote(stray)))
        assert.is_true(ok)
        helper.wait_until("the stray key to go", function()
            return #etcd:keys(prefix .. "late/") == 0
        end, 5)
        -- a lock on that name afterwards works as usual
        local again = assert(c:lock("late", "w", { timeout = 5 }))
        assert.equal("w", c:get("late"))
        again:release(); l:release()
        assert.same({}, etcd:keys(prefix))
        c:close()
    end)

    it("takes a free name with timeout = 0, and says 'timeout' when it is held (finding 8)", function()
        local a, b = client(), client()
        local l = assert(a:lock("zero", "a", { timeout = 0 }))
        assert.is_true(l:owned())
        local none, _, code = b:lock("zero", "b", { timeout = 0 })
        assert.is_nil(none)
        assert.equal("timeout", code)
        l:release()
        assert.same({}, etcd:keys(prefix))
        a:close(); b:close()
        assert.same({}, etcd:keys(prefix, true))  -- the probe key went with the lease
    end)

    it("keeps a sub-millisecond request timeout a limit, not 'no limit' (finding 8)", function()
        local p = helper.proxy(etcd)
        p:mode("blackhole")
        local c = client({ endpoints = { p.endpoint }, timeout = 0.0005 })
        local t0 = locker.now()
        local v, _, code = c:get("x")
        assert.is_nil(v)
        assert.equal("unavailable", code)
        assert.is_true(locker.now() - t0 < 1, "took " .. (locker.now() - t0) .. " s")
        c:close(); p:close()
    end)

    it("gives owned(), token(), set() and on_change one answer (finding 8)", function()
        local p = helper.proxy(etcd)
        local events = {}
        local b = client({ endpoints = { p.endpoint }, ttl = 3, timeout = 1 })
        local lock = assert(b:lock("one", "b", { keep = true, on_change = function(owned, _, _, code)
            events[#events + 1] = tostring(owned) .. ":" .. tostring(code)
        end }))
        assert.is_number(lock:token())
        assert.is_true(lock:set("b2"))
        p:mode("blackhole")
        helper.wait_until("b to stop owning", function() return not lock:owned() end, 5)
        assert.is_nil(lock:token())
        assert.is_nil(lock:valid_for())
        assert.equal("not_owner", select(3, lock:set("b3")))
        helper.wait_until("on_change", function() return #events > 1 end, 3)
        -- whichever confirmation runs out first: the key's (etcd does not
        -- answer: 'unavailable') or the lease's
        assert.equal("true:nil", events[1])
        assert.truthy(events[2] == "false:unavailable" or events[2] == "false:lease_lost", events[2])
        p:mode("pass")
        helper.wait_until("b to own again", function() return lock:owned() end, 10)
        assert.is_number(lock:token())
        assert.is_true(lock:set("b4"))
        assert.equal("true:nil", events[#events])
        lock:release()
        b:close(); p:close()
    end)

    it("reports the session's state and local deadline", function()
        local c = client({ ttl = 3 })
        assert.same({ state = "none", endpoint = etcd.endpoint, stream = false }, c:session())
        local l = assert(c:lock("s", "v"))
        -- the stream shows itself live soon after (a grant does not wait
        -- for the stream's next proof; under load that can lag)
        helper.wait_until("the stream proven", function() return c:session().stream end, 5)
        local s = c:session()
        assert.equal("ok", s.state)
        assert.is_true(s.stream)
        assert.equal(c:lease(), s.lease)
        assert.is_true(s.valid_for > 0 and s.valid_for <= 3 - c.margin, tostring(s.valid_for))
        l:release()
        c:close()
        assert.equal("closed", select(3, c:session()))
    end)
end)

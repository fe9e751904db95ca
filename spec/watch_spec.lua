-- Watches against a real etcd: every change of the owner's value, once.
local locker = require "locker"
local helper = require "helper"

describe("client:watch()", function()
    local etcd, n, prefix = nil, 0, nil
    setup(function() etcd = helper.etcd() end)
    teardown(function() etcd:destroy() end)
    before_each(function()
        n = n + 1
        prefix = "/watch" .. n .. "/"
    end)

    local function client(opts)
        opts = opts or {}
        opts.prefix = opts.prefix or prefix
        return etcd:client(opts)
    end

    local function expect(w, value, timeout)
        local v, ev, msg = w:next(timeout or 10)
        assert(ev, "no event: " .. tostring(msg))
        assert.equal(value, v)
        return ev
    end

    it("reports the current state first, then set, handover and release", function()
        local c, a, b = client(), client(), client()
        local w = c:watch("svc")
        local ev = expect(w, nil)                      -- nobody holds it
        assert.is_nil(ev.token)
        assert.equal("svc", ev.name)
        local la = assert(a:lock("svc", "10.1.1.1"))
        ev = expect(w, "10.1.1.1")
        assert.equal(la:token(), ev.token)
        assert(la:set("10.1.1.2"))
        ev = expect(w, "10.1.1.2")
        assert.equal(la:token(), ev.token)             -- same owner
        local lb
        locker.spawn(function() lb = assert(b:lock("svc", "10.1.1.3")) end)
        helper.wait_until("b to queue", function() return #etcd:keys(prefix .. "svc/") == 2 end)
        la:release()
        ev = expect(w, "10.1.1.3")                     -- one event for the handover
        helper.wait_until("b's lock()", function() return lb end)
        assert.equal(lb:token(), ev.token)
        lb:release()
        ev = expect(w, nil)
        assert.is_nil(ev.token)
        assert.is_nil(w:next(0.3))                      -- nothing more
        w:cancel()
        c:close(); a:close(); b:close()
    end)

    it("takes a contender's token from etcd's put, even when the stream lost its delete", function()
        -- a stream that dropped messages but stayed open (a muted proxy
        -- let go again before anyone doubted it): the contender's key
        -- deleted and made anew meanwhile (etcdctl's, on a lease of its
        -- own), then written; that put says its new create revision
        local proxy = helper.proxy(etcd)
        local w_client = client({ endpoints = { proxy.endpoint } })
        local seen = {}
        w_client:watch("tok", function(v, ev) seen[#seen + 1] = { v, ev.token } end)
        local lease = etcd:ctl("lease grant 30"):match("lease (%x+) granted")
        local key = prefix .. "tok/" .. lease
        local function put(v)
            assert.matches("OK", (etcd:ctl(("put %s %s --lease=%s"):format(helper.quote(key), v, lease))))
            local out = etcd:ctl(("get %s -w fields"):format(helper.quote(key)))
            return tonumber(out:match('"CreateRevision" : (%d+)'))
        end
        local first = put("a")
        helper.wait_until("the contender seen", function()
            return seen[#seen] and seen[#seen][1] == "a"
        end)
        assert.equal(first, seen[#seen][2])
        proxy:mode("mute /v3/watch")
        etcd:ctl("del " .. helper.quote(key))
        local made = put("b")
        proxy:mode("unmute-keep /v3/watch")  -- the stream goes on without what it lost
        assert.is_true(made > first)
        assert.equal(made, put("c"))
        helper.wait_until("the put of c seen", function() return seen[#seen][1] == "c" end)
        assert.equal(made, seen[#seen][2])
        w_client:close()
    end)

    it("reports nothing for waiters coming and going", function()
        local c, a, b = client(), client(), client()
        local la = assert(a:lock("churn", "owner"))
        local w = c:watch("churn")
        expect(w, "owner")
        for _ = 1, 3 do
            local l, _, code = b:lock("churn", "waiter", { timeout = 0.05 })
            assert.is_nil(l)
            assert.equal("timeout", code)
        end
        helper.wait_until("the waiter keys to go", function()
            return #etcd:keys(prefix .. "churn/") == 1
        end)
        assert(la:set("owner2"))                        -- a marker after the churn
        expect(w, "owner2")                             -- the very next event
        la:release()
        c:close(); a:close(); b:close()
    end)

    it("answers cached() without I/O for watched names, and says so for others", function()
        local c, a = client(), client()
        local _, _, code = c:cached("x")
        assert.equal("not_watched", code)
        local w = c:watch("x")
        local v, msg2, code2 = c:cached("x")
        if v == nil and code2 then assert.equal("pending", code2) end
        expect(w, nil)
        assert.is_nil(c:cached("x"))
        local l = assert(a:lock("x", "val"))
        expect(w, "val")
        local value, token = c:cached("x")
        assert.equal("val", value)
        assert.equal(l:token(), token)
        w:cancel()
        local _, _, code3 = c:cached("x")
        assert.equal("not_watched", code3)
        assert.is_string(msg2 or "")
        l:release()
        c:close(); a:close()
    end)

    it("sees a killed holder's record vanish within TTL + 1 s", function()
        local c = client()
        local w = c:watch("mesh-b")
        expect(w, nil)
        local h = helper.holder(etcd, prefix, "mesh-b", "healthy", 2)
        expect(w, "healthy")
        local killed = locker.now()
        h:kill("KILL")
        expect(w, nil, 5)
        local took = locker.now() - killed
        assert.is_true(took <= 2 + 1, "gone after " .. took .. " s")
        h:quit()
        c:close()
    end)

    it("keeps a holder's lock while its Lua code is busy", function()
        local c = client()
        local w = c:watch("busy")
        expect(w, nil)
        local h = helper.holder(etcd, prefix, "busy", "v", 2)
        expect(w, "v")
        h:send("busy 5")                                -- 2.5 TTLs without Lua running
        h:wait_for("^idle", 15)
        assert.is_nil(w:next(0.1))                      -- never lost meanwhile
        assert.equal("v", c:get("busy"))
        h:quit()
        expect(w, nil)
        c:close()
    end)

    it("follows a process that holds, changes and hands over (name server)", function()
        local c = client()
        local w = c:watch("www.example.com")
        expect(w, nil)
        local a = helper.holder(etcd, prefix, "www.example.com", "10.1.1.1")
        expect(w, "10.1.1.1")
        a:send("set 10.1.1.2")
        expect(w, "10.1.1.2")
        local b = helper.holder and nil
        -- b queues behind a in its own process, then a lets go
        local out = os.tmpname()
        local bp = io.popen(("exec %s spec/holder.lua %s %s www.example.com 10.1.1.3 >%s 2>&1")
            :format(helper.lua, etcd.endpoint, prefix, out), "w")
        helper.wait_until("b to queue", function()
            return #etcd:keys(prefix .. "www.example.com/") == 2
        end)
        a:send("release")
        local ev = expect(w, "10.1.1.3")
        local line = helper.wait_until("b to hold", function()
            return helper.read(out):match("held (%d+)")
        end)
        assert.equal(tonumber(line), ev.token)
        assert.equal("10.1.1.3", c:cached("www.example.com"))
        bp:write("quit\n")
        bp:close()
        expect(w, nil)
        a:quit()
        os.remove(out)
        assert.is_nil(b)
        c:close()
    end)

    it("resumes after an etcd restart: every value seen exactly once", function()
        local c, a = client(), client({ ttl = 10 })
        local seen = {}
        local w = c:watch("counter", function(v) seen[#seen + 1] = tostring(v) end)
        helper.wait_until("the first event", function() return #seen == 1 end)
        local l = assert(a:lock("counter", "0", { keep = true }))
        helper.wait_until("0", function() return seen[#seen] == "0" end)
        for i = 1, 5 do assert(l:set(tostring(i))) end
        etcd:restart()
        helper.wait_until("the writer to be back", function() return l:owned() and l:set("6") end, 15)
        for i = 7, 10 do assert(l:set(tostring(i))) end
        helper.wait_until("10", function() return seen[#seen] == "10" end, 15)
        local want = { "nil" }  -- the first event: nobody held it
        for i = 0, 10 do want[#want + 1] = tostring(i) end
        assert.same(want, seen)
        w:cancel()
        l:release()
        c:close(); a:close()
    end)

    it("re-reads and marks a resync when its resume point was compacted", function()
        local proxy = helper.proxy(etcd)
        local c = client({ endpoints = { proxy.endpoint } })
        local a = client()
        local events = {}
        c:watch("compact", function(v, ev) events[#events + 1] = { v, ev.resync } end)
        helper.wait_until("the first event", function() return #events == 1 end)
        local l = assert(a:lock("compact", "v1"))
        helper.wait_until("v1", function() return #events == 2 end)
        proxy:stop()                       -- c's stream is cut; it cannot reconnect
        assert(l:set("v2"))
        assert(l:set("v3"))
        local rev = a:owner("compact").revision
        local out, ok = etcd:ctl("compact " .. rev)
        assert(ok, out)
        proxy:restart()                    -- c resumes from a compacted revision
        helper.wait_until("the resync", function() return #events == 3 end, 15)
        assert.same({ { nil, false }, { "v1", false }, { "v3", true } }, events)
        assert.equal("v3", c:cached("compact"))
        assert(l:set("v4"))                -- and it follows changes again
        helper.wait_until("v4", function() return #events == 4 end)
        assert.same({ "v4", false }, events[4])
        proxy:close()
        l:release()
        c:close(); a:close()
    end)

    it("runs many watches over one stream connection", function()
        local c = client()
        local first = 0
        local ws = {}
        for i = 1, 1000 do
            ws[i] = c:watch("name" .. i, function() first = first + 1 end)
        end
        helper.wait_until("1000 first events", function() return first == 1000 end, 30)
        local conns = helper.connections(etcd.port)
        -- the stream, one for reads, one for the session's renewals and
        -- the stream's proofs (they never wait behind reads)
        assert.is_true(conns <= 3, conns .. " connections")
        local a = client()  -- made after the count: its connections are not c's
        local l = assert(a:lock("name500", "x"))
        helper.wait_until("the change", function() return c:cached("name500") == "x" end)
        -- the cache is the engine's view; the callback follows once dispatched
        helper.wait_until("the change's callback", function() return first >= 1001 end)
        locker.sleep(0.1)
        assert.equal(1001, first)  -- one event, for name500 alone
        l:release()
        for i = 1, 1000 do ws[i]:cancel() end
        c:close(); a:close()
    end)

    it("isolates an erroring callback: reported, and the watch goes on", function()
        local c, a = client(), client()
        local errors, values = {}, {}
        locker.on_error(function(msg) errors[#errors + 1] = msg end)
        c:watch("boom", function(v)
            values[#values + 1] = tostring(v)
            if v == "bad" then error("callback failed on purpose") end
        end)
        local l = assert(a:lock("boom", "bad"))
        helper.wait_until("the error", function() return #errors == 1 end)
        assert.matches("on purpose", errors[1])
        assert(l:set("good"))
        helper.wait_until("the next value", function() return values[#values] == "good" end)
        assert.equal("good", c:cached("boom"))
        locker.on_error(function(msg) io.stderr:write(msg, "\n") end)
        l:release()
        c:close(); a:close()
    end)

    it("lets a callback make waiting calls, on every Lua (plain 5.1's pcall cannot yield)", function()
        local c, a = client(), client()
        local errors, done = {}, {}
        locker.on_error(function(msg) errors[#errors + 1] = msg end)
        local mine = assert(c:lock("mine", "up"))
        c:watch("dep", function(v)
            if v == nil and done.seen then
                -- a dependency went away: drop our own record (waits for etcd)
                done.released = mine:release()
                done.value = c:get("mine")  -- another wait, after the first
                done.finished = true
            end
            done.seen = done.seen or v ~= nil
        end)
        local l = assert(a:lock("dep", "x"))
        helper.wait_until("the watch saw dep", function() return done.seen end)
        l:release()
        helper.wait_until("the callback finished its waits", function() return done.finished end)
        locker.on_error(function(msg) io.stderr:write(msg, "\n") end)
        assert.same({}, errors)
        assert.is_true(done.released)
        assert.is_nil(done.value)
        assert.same({}, etcd:keys(prefix .. "mine/"))
        c:close(); a:close()
    end)

    it("folds the events of a client nobody dispatches, keeping the last and counting the rest", function()
        local c = client()
        local calls, skipped, last = 0, 0, nil
        c:watch("fold", function(v, ev)
            calls = calls + 1
            skipped = skipped + (ev and ev.skipped or 0)
            last = v
        end)
        helper.wait_until("the first event", function() return calls == 1 end)
        -- another process makes 1000 changes while this one dispatches nothing
        local script = helper.file(([[
local locker = require "locker"
local c = assert(locker.new{ endpoints = { %q }, prefix = %q })
local l = assert(c:lock("fold", "0"))
for i = 1, 1000 do assert(l:set(tostring(i))) end
io.stdout:write("done\n"); io.stdout:flush()
l:release(); c:close()
]]):format(etcd.endpoint, prefix))
        local pid, out = helper.spawn(("exec %s %s"):format(helper.lua, script), true)
        local t_end = locker.now() + 60
        while not helper.read(out):match("done") and locker.now() < t_end do
            os.execute("sleep 0.05")  -- not locker.sleep: that would dispatch
        end
        assert.truthy(helper.read(out):match("done"), helper.read(out))
        os.execute("sleep 0.3")  -- the last changes reach the engine
        -- now dispatch: the changes, then the release (nobody holds it)
        helper.wait_until("the release", function() return calls >= 2 and last == nil end, 10)
        helper.wait_until("the process exits", function() return not helper.alive(pid) end, 10)
        -- some changes were folded, none lost: 1 + calls + skipped covers every change
        assert.is_true(skipped > 0, "nothing folded: " .. calls .. " calls, last " .. tostring(last))
        -- bounded: 256 events queue up, then each folds into the newest
        assert.is_true(calls <= 260, calls .. " callbacks")
        -- 1002 changes after the first event: 1000 values and the release
        assert.is_true(calls - 1 + skipped >= 1001, ("calls %d + skipped %d"):format(calls, skipped))
        os.remove(script)
        os.remove(out)
        c:close()
    end)

    it("ends next() with 'canceled' and 'closed'", function()
        local c = client()
        local w = c:watch("end")
        expect(w, nil)
        local got
        locker.spawn(function() got = { w:next() } end)
        locker.spawn(function() w:cancel() end)
        locker.run()
        assert.is_nil(got[2])
        assert.equal("canceled", got[4])
        local w2 = c:watch("end2")
        expect(w2, nil)
        c:close()
        local _, ev, _, code = w2:next()
        assert.is_nil(ev)
        assert.equal("closed", code)
    end)

    it("iterates events with a for loop that a 'gone' does not end", function()
        if _VERSION == "Lua 5.1" and not rawget(_G, "jit") then
            pending("plain Lua 5.1 cannot yield inside a for iterator (LuaJIT can)")
            return
        end
        local c, a = client(), client()
        local w = c:watch("loop")
        local vals, looped, writer = {}, false, nil
        locker.spawn(function()
            for ev in w:events() do
                vals[#vals + 1] = tostring(ev.value)
                if #vals == 3 then w:cancel() end
            end
            looped = true
        end)
        locker.spawn(function()
            writer = { pcall(function()
                helper.wait_until("first", function() return #vals == 1 end)
                local l = assert(a:lock("loop", "x", { timeout = 10 }))
                helper.wait_until("second", function() return #vals == 2 end)
                l:release()
            end) }
        end)
        -- bounded (etcd may die): the loop ends by its cancel(), or ours
        local ok, err = pcall(helper.wait_until, "the for loop and the writer to end", function()
            return (looped and writer) or (writer and not writer[1])
        end, 30)
        w:cancel(); c:close(); a:close()   -- idempotent; ends whatever still waits
        assert(ok, tostring(err) .. "; events so far: " .. table.concat(vals, " "))
        assert(writer[1], writer[2])
        assert.same({ "nil", "x", "nil" }, vals)
    end)

    it("reports a holder of etcdctl elect", function()
        local c = client()
        local w = c:watch("leader")
        expect(w, nil)
        local pid, out = helper.spawn(("ETCDCTL_API=3 exec etcdctl --endpoints=%s elect %s proposal-1")
            :format(etcd.endpoint, helper.quote(prefix .. "leader")))
        expect(w, "proposal-1")
        -- etcdctl resigns on SIGTERM only once it has printed its key: a
        -- signal during its campaign leaves the key to its lease (60 s)
        helper.wait_until("etcdctl elect to print its key", function()
            return helper.read(out):match("proposal%-1")
        end, 10)
        helper.kill(pid, "TERM")
        expect(w, nil)
        c:close()
    end)
end)

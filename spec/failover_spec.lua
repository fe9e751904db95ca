-- Failover and staleness: a hung endpoint (a black-holed proxy in front of
-- a healthy etcd) costs a part of a request's timeout, no lock, and no
-- event; a silent watch stream is noticed and replaced; cached() says how
-- fresh it is. (spec/cluster_spec.lua does the same with real members.)
local locker = require "locker"
local helper = require "helper"

describe("failover", function()
    local etcd, n = nil, 0
    local prefix

    setup(function() etcd = helper.etcd() end)
    teardown(function() etcd:destroy() end)
    before_each(function()
        n = n + 1
        prefix = "/failover" .. n .. "/"
    end)

    local function client(opts)
        opts = opts or {}
        opts.prefix = opts.prefix or prefix
        return etcd:client(opts)
    end

    it("keeps a lock and answers requests while the first endpoint hangs", function()
        local p1, p2 = helper.proxy(etcd), helper.proxy(etcd)
        local lost = 0
        local c = client({ endpoints = { p1.endpoint, p2.endpoint }, ttl = 4, timeout = 2 })
        local lock = assert(c:lock("keep", "v", { keep = true, on_change = function(owned)
            if not owned then lost = lost + 1 end
        end }))
        p1:mode("blackhole")
        local t_end = locker.now() + 12  -- three TTLs
        local slowest, always = 0, true
        while locker.now() < t_end do
            local t0 = locker.now()
            local v, msg = c:get("keep")
            slowest = math.max(slowest, locker.now() - t0)
            assert.equal("v", v, msg)
            if not lock:owned() then always = false end
            locker.sleep(0.2)
        end
        assert.equal(0, lost)
        assert.is_true(always, "the lock was not owned at some point")
        assert.is_true(slowest < 2, "a get took " .. slowest .. " s")
        assert.equal(p2.endpoint, c:session().endpoint)
        lock:release()
        c:close(); p1:close(); p2:close()
    end)

    it("tells a waiter behind a silent stream within the silence deadline + timeout", function()
        local p1, p2 = helper.proxy(etcd), helper.proxy(etcd)
        local a = client()
        local b = client({ endpoints = { p1.endpoint, p2.endpoint }, timeout = 2 })
        local held = assert(a:lock("w", "a"))
        local box = {}
        locker.spawn(function()
            box.lock, box.msg = b:lock("w", "b", { timeout = 30 })
            box.at = locker.now()
        end)
        helper.wait_until("b to queue", function() return #etcd:keys(prefix .. "w/") == 2 end)
        p1:mode("blackhole")  -- b's stream goes silent; nothing tells b
        local released = locker.now()
        held:release()
        -- quiet 5 s, a probe, its echo 2 s, a request timeout: well under 12 s
        helper.wait_until("b to own the lock", function() return box.at end, 15)
        assert.is_not_nil(box.lock, box.msg)
        assert.is_true(box.lock:owned())
        assert.is_true(box.at - released < 12, ("told after %.1f s"):format(box.at - released))
        box.lock:release()
        a:close(); b:close(); p1:close(); p2:close()
    end)

    it("says how fresh cached() is: the age grows while etcd is frozen", function()
        local c = client()
        local a = client({ ttl = 60 })  -- its lock outlives the freeze
        local held = assert(a:lock("fresh", "v"))
        c:watch("fresh", function() end)
        -- the value comes with a read; its age once the stream proved itself
        helper.wait_until("the first value and its age", function()
            return c:cached("fresh") == "v" and select(4, c:cached("fresh")) ~= nil
        end)
        local _, _, _, age = c:cached("fresh")
        assert.is_true(age >= 0 and age < 6, tostring(age))
        helper.kill(etcd.pid, "STOP")
        local ok, err = pcall(helper.wait_until, "the age to pass 8 s", function()
            return select(4, c:cached("fresh")) > 8
        end, 20)
        helper.kill(etcd.pid, "CONT")
        assert(ok, err)
        assert.equal("v", c:cached("fresh"))  -- still served, now visibly stale
        helper.wait_until("the stream to be live again", function()
            return select(4, c:cached("fresh")) < 3 and c:session().stream
        end, 20)
        held:release()
        a:close(); c:close()
    end)
end)

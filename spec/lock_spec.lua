-- Locks against a real etcd: acquire, release, get, set, waiting, tokens.
local locker = require "locker"
local helper = require "helper"

describe("locks", function()
    local etcd, n = nil, 0
    local prefix

    setup(function() etcd = helper.etcd() end)
    teardown(function() etcd:destroy() end)
    before_each(function()
        n = n + 1
        prefix = "/locks" .. n .. "/"
    end)

    local function client(opts)
        opts = opts or {}
        opts.prefix = opts.prefix or prefix
        return etcd:client(opts)
    end

    it("acquires, reads, changes and releases (the README story)", function()
        local c = client()
        local lock = assert(c:lock("www.example.com", "10.1.1.1"))
        assert.is_true(lock:owned())
        assert.is_number(lock:token())
        assert.equal("10.1.1.1", c:get("www.example.com"))
        assert.is_true(lock:set("10.1.1.2"))
        assert.equal("10.1.1.2", c:get("www.example.com"))
        local owner = c:owner("www.example.com")
        assert.equal(lock:token(), owner.token)
        assert.is_true(lock:release())
        assert.is_false(lock:owned())
        assert.is_nil(lock:token())
        assert.is_nil(c:get("www.example.com"))
        assert.same({}, etcd:keys(prefix))
        assert.is_true(lock:release())  -- idempotent
        c:close()
    end)

    it("writes etcd's concurrency layout: prefix NAME/hex(lease)", function()
        local c = client()
        local lock = assert(c:lock("layout", "v"))
        local keys = etcd:keys(prefix .. "layout/")
        assert.equal(1, #keys)
        assert.matches("^" .. prefix:gsub("%p", "%%%0") .. "layout/%x+$", keys[1])
        -- lock:key() is the key the engine wrote, named by the session lease
        assert.equal(keys[1], lock:key())
        assert.equal(prefix .. "layout/" .. c:lease(), lock:key())
        -- a background lock learns its key when it is granted
        local bg = c:lock("bg", "v", { keep = true, background = true })
        helper.wait_until("the background lock is owned", function() return bg:owned() end)
        helper.wait_until("its key is known", function() return bg:key() end)
        assert.same(etcd:keys(prefix .. "bg/"), { bg:key() })
        bg:release()
        lock:release()
        c:close()
    end)

    it("keeps values binary-safe", function()
        local c = client()
        local value = "\0\1\255 \n\"quoted\"\\" .. ("z"):rep(3000)
        local lock = assert(c:lock("bin", value))
        assert.equal(value, c:get("bin"))
        lock:release()
        c:close()
    end)

    it("accepts a value at the documented limit", function()
        local c = client()
        local value = ("v"):rep(locker.MAX_VALUE)
        local lock = assert(c:lock("big", value))
        local got, msg = c:get("big")
        assert.is_truthy(got, msg)
        assert.equal(#value, #got)
        lock:release()
        c:close()
    end)

    it("acquires a burst of locks longer than the request timeout takes to drain", function()
        -- 40 lock() calls at once, 7 requests in flight at a time, each
        -- answer 150 ms late: the last ones wait in the client's queue
        -- longer than the 0.4 s request timeout, which is not etcd's fault
        local proxy = helper.proxy(etcd)
        local c = client({ endpoints = { proxy.endpoint }, timeout = 0.4 })
        assert(c:lock("warm", "v")):release()
        proxy:mode("delay 150")
        local boxes = {}
        for i = 1, 40 do boxes[i] = helper.go(function() return c:lock("burst" .. i, "v") end) end
        helper.wait_until("every lock() to return", function()
            for _, b in ipairs(boxes) do if not b.done then return false end end
            return true
        end, 20)
        proxy:mode("delay 0")
        for i, b in ipairs(boxes) do
            assert.truthy(b.r[1], ("lock %d: %s"):format(i, tostring(b.r[2])))
            assert.is_true(b.r[1]:owned())
        end
        c:close()
        proxy:stop()
    end)

    it("returns nil, msg, 'locked' for wait = false on a held lock, leaving no key", function()
        local a, b = client(), client()
        local lock = assert(a:lock("try", "a"))
        local l, msg, code = b:lock("try", "b", { wait = false })
        assert.is_nil(l)
        assert.equal("locked", code)
        assert.matches("try", msg)
        assert.equal(1, #etcd:keys(prefix .. "try/"))
        assert.equal("a", b:get("try"))
        lock:release()
        assert.truthy(b:lock("try", "b", { wait = false }))
        a:close(); b:close()
    end)

    it("returns nil, msg, 'timeout' when the wait runs out, leaving no waiter key", function()
        local a, b = client(), client()
        local lock = assert(a:lock("slow", "a"))
        local l, msg, code = b:lock("slow", "b", { timeout = 0.3 })
        assert.is_nil(l)
        assert.equal("timeout", code)
        assert.matches("slow", msg)
        helper.wait_until("the waiter key to vanish", function()
            return #etcd:keys(prefix .. "slow/") == 1
        end)
        assert.is_true(lock:owned())
        lock:release()
        a:close(); b:close()
    end)

    it("grants a lock to waiters in FIFO order with increasing fencing tokens", function()
        local holder = client()
        local first = assert(holder:lock("fifo", "holder"))
        local order, tokens = {}, { first:token() }
        local clients = {}
        for i = 1, 3 do
            clients[i] = client()
            locker.spawn(function()
                local l = assert(clients[i]:lock("fifo", "w" .. i))
                order[#order + 1] = i
                tokens[#tokens + 1] = l:token()
                assert.equal("w" .. i, clients[i]:get("fifo"))
                l:release()
            end)
            -- queue strictly one after the other
            helper.wait_until("waiter " .. i .. " to queue", function()
                return #etcd:keys(prefix .. "fifo/") == i + 1
            end)
        end
        assert.same({}, order)
        first:release()
        locker.run()
        assert.same({ 1, 2, 3 }, order)
        for i = 2, #tokens do assert.is_true(tokens[i] > tokens[i - 1]) end
        holder:close()
        for i = 1, 3 do clients[i]:close() end
    end)

    it("makes two lock() calls on one name through one client exclude each other", function()
        local c = client()
        local events = {}
        local a = assert(c:lock("same", "first"))
        locker.spawn(function()
            local b = assert(c:lock("same", "second"))
            events[#events + 1] = "second acquired, first owned=" .. tostring(a:owned())
            assert.equal("second", c:get("same"))
            b:release()
        end)
        locker.spawn(function()
            locker.sleep(0.2)
            events[#events + 1] = "first releasing"
            a:release()
        end)
        locker.run()
        assert.same({ "first releasing", "second acquired, first owned=false" }, events)
        local l, _, code = c:lock("same", "x", { wait = false })
        assert.truthy(l)
        local l2, _, code2 = c:lock("same", "y", { wait = false })
        assert.is_nil(l2)
        assert.equal("locked", code2)
        assert.is_nil(code)
        c:close()
    end)

    it("releases a waiting lock() from another coroutine with 'canceled'", function()
        local a, b = client(), client()
        local held = assert(a:lock("cancel", "a"))
        local result
        local waiter
        locker.spawn(function()
            local l, msg, code = b:lock("cancel", "b")
            result = { l, msg, code }
        end)
        helper.wait_until("the waiter to queue", function()
            return #etcd:keys(prefix .. "cancel/") == 2
        end)
        -- the Lock object of a waiting call is reachable through the client
        for _, lk in pairs(b._locks) do waiter = lk end
        assert.is_true(waiter:release())
        helper.wait_until("lock() to return", function() return result end)
        assert.is_nil(result[1])
        assert.equal("canceled", result[3])
        assert.equal(1, #etcd:keys(prefix .. "cancel/"))
        held:release()
        a:close(); b:close()
    end)

    it("calls on_change on every transition and re-acquires with keep = true after a revoke", function()
        local a, b = client({ ttl = 5 }), client()
        local changes = {}
        local lock = assert(a:lock("keep", "a", {
            keep = true,
            on_change = function(owned, l, _, code)
                changes[#changes + 1] = { owned, code }
                assert.equal("keep", l.name)
            end,
        }))
        helper.wait_until("on_change(true)", function() return #changes == 1 end)
        assert.same({ true }, changes[1])
        local token = lock:token()
        -- revoke the session lease behind the client's back
        local key = etcd:keys(prefix .. "keep/")[1]
        local lease = key:match("/(%x+)$")
        local out, ok = etcd:ctl("lease revoke " .. lease)
        assert(ok, out)
        helper.wait_until("on_change(false)", function() return #changes >= 2 end)
        assert.is_false(changes[2][1])
        -- the watch may see the key vanish before the keepalive hears of it
        assert.is_truthy(changes[2][2] == "lease_lost" or changes[2][2] == "lost")
        helper.wait_until("re-acquisition", function() return #changes >= 3 end)
        assert.is_true(changes[3][1])
        assert.is_true(lock:owned())
        assert.is_true(lock:token() > token)
        assert.equal("a", b:get("keep"))
        lock:release()
        assert.is_nil(b:get("keep"))
        a:close(); b:close()
    end)

    it("reports a lost lock without keep and refuses set with 'not_owner'", function()
        local a = client()
        local lost = {}
        local lock = assert(a:lock("nokeep", "a", {
            on_change = function(owned, _, _, code) lost[#lost + 1] = { owned, code } end,
        }))
        local key = etcd:keys(prefix .. "nokeep/")[1]
        etcd:ctl("del " .. helper.quote(key))
        helper.wait_until("the loss", function() return not lock:owned() end)
        helper.wait_until("on_change(false)", function() return #lost == 2 end)
        assert.same({ false, "lost" }, lost[2])
        local ok, _, code = lock:set("b")
        assert.is_nil(ok)
        assert.equal("not_owner", code)
        assert.is_true(lock:release())
        a:close()
    end)

    it("stops a waiter whose own key disappears, instead of waiting forever", function()
        local a, b = client(), client()
        local held = assert(a:lock("vanish", "a"))
        local result
        locker.spawn(function() result = { b:lock("vanish", "b") } end)
        helper.wait_until("the waiter to queue", function()
            return #etcd:keys(prefix .. "vanish/") == 2
        end)
        local keys = etcd:keys(prefix .. "vanish/")
        local own = keys[2]  -- etcdctl lists by key; find the waiter's own key
        for _, k in ipairs(keys) do
            local lease = k:match("/(%x+)$")
            if b:lease() == lease then own = k end
        end
        etcd:ctl("del " .. helper.quote(own))
        helper.wait_until("lock() to fail", function() return result end)
        assert.is_nil(result[1])
        assert.equal("lost", result[3])
        held:release()
        a:close(); b:close()
    end)

    it("releases every lock at once on close", function()
        local a, b = client(), client()
        assert(a:lock("c1", "a"))
        assert(a:lock("c2", "a"))
        a:close()
        assert.is_nil(b:get("c1"))
        assert.is_nil(b:get("c2"))
        assert.same({}, etcd:keys(prefix))
        b:close()
    end)

    it("keeps a client with a held lock alive, and collects (closes) it once idle", function()
        local weak = setmetatable({}, { __mode = "v" })
        do
            local a = client()
            weak[1] = a
            assert(a:lock("gc", "a"))  -- the Lock is dropped at once
        end
        collectgarbage()
        collectgarbage()
        local b = client()
        assert.equal("a", b:get("gc"))  -- a held lock is a root
        assert.is_not_nil(weak[1])
        local lease = weak[1]:lease()
        for _, lock in pairs(weak[1]._locks) do assert(lock:release()) end
        assert.matches(lease, (etcd:ctl("lease list")))
        collectgarbage()
        collectgarbage()
        assert.is_nil(weak[1])  -- idle and unreferenced: collected, closed
        assert.not_matches(lease, (etcd:ctl("lease list")))
        assert.is_nil(b:get("gc"))
        assert.same({}, etcd:keys(prefix))
        b:close()
    end)

    it("yields inside spawned coroutines so that two lock waits overlap", function()
        local a, b, c = client(), client(), client()
        local held = assert(a:lock("overlap", "a"))
        local done = 0
        for _, cl in ipairs({ b, c }) do
            locker.spawn(function()
                local l = assert(cl:lock("overlap", "x"))
                l:release()
                done = done + 1
            end)
        end
        locker.spawn(function()
            helper.wait_until("both waiters to queue", function()
                return #etcd:keys(prefix .. "overlap/") == 3
            end)
            held:release()
        end)
        locker.run()
        assert.equal(2, done)
        a:close(); b:close(); c:close()
    end)
end)

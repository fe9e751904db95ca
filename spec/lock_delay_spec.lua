-- Lock-delay (locker.new{ lock_delay = s }) against a real etcd: a waiter
-- whose predecessor vanished without a clean release (killed holder,
-- foreign delete, a client that does not mark) owns only after the delay;
-- a clean release hands over at once. Prints what it measured.
local locker = require "locker"
local helper = require "helper"

local DELAY = 1.5

local function report(line)
    io.stderr:write("\n[lock-delay] ", line, "\n")
end

describe("lock-delay", function()
    local etcd, n, prefix = nil, 0, nil
    setup(function() etcd = helper.etcd() end)
    teardown(function() etcd:destroy() end)
    before_each(function()
        n = n + 1
        prefix = "/delay" .. n .. "/"
    end)

    local function client(opts)
        opts = opts or {}
        opts.prefix = opts.prefix or prefix
        if opts.lock_delay == nil then opts.lock_delay = DELAY end
        return etcd:client(opts)
    end

    -- b waits for name in a coroutine; returns the box and a function that
    -- waits until b owns and returns when (locker.now()).
    local function waiter(b, name)
        local box = helper.go(function() return assert(b:lock(name, "b")) end)
        helper.wait_until("b to queue", function() return #etcd:keys(prefix .. name .. "/") == 2 end)
        return box, function(timeout)
            return helper.wait_until("b to own", function()
                return box.done and box.r[1]:owned() and locker.now()
            end, timeout or 15)
        end
    end

    it("hands over at once on a clean release", function()
        local a, b = client(), client()
        local la = assert(a:lock("job", "a"))
        local _, owned = waiter(b, "job")
        local t0 = locker.now()
        assert.is_truthy(la:release())
        local took = owned() - t0
        report(("clean release: the waiter owned %.0f ms after release()"):format(took * 1000))
        assert.is_true(took < 0.5, ("%.2f s after a clean release"):format(took))
        -- the mark is outside every lock's keys: etcdctl lock is not blocked by it
        assert.equal(1, #etcd:keys(prefix .. "job/"))
        a:close(); b:close()
        local out, ok = etcd:ctl("lock " .. helper.quote(prefix .. "job") .. " -- true")
        assert(ok, out)
        assert.same({}, etcd:keys(prefix, true))       -- the mark went with a's lease
    end)

    it("makes the next owner wait the delay after its holder is SIGKILLed", function()
        local holder = helper.holder(etcd, prefix, "job", "h", 3)
        local c, b = client({ lock_delay = 0 }), client()
        local gone_at
        local w = c:watch("job", function(value)
            if value == "b" and not gone_at then gone_at = locker.now() end
        end)
        local _, owned = waiter(b, "job")
        holder:kill()
        local at = owned(20)
        helper.wait_until("the watcher to see b's key first", function() return gone_at end)
        local delay = at - gone_at
        report(("holder SIGKILLed (ttl 3): its key expired, b owned %.2f s later (lock_delay %.1f)")
            :format(delay, DELAY))
        assert.is_true(delay >= DELAY - 0.05, ("owned %.2f s after the key went"):format(delay))
        assert.is_true(delay < DELAY + 0.5, ("owned %.2f s after the key went"):format(delay))
        w:cancel()
        holder:quit()
        c:close(); b:close()
    end)

    it("makes the next owner wait after a foreign delete, and after an unmarked release", function()
        local a, b = client({ lock_delay = 0 }), client()      -- a does not mark
        local la = assert(a:lock("job", "a"))
        local _, owned = waiter(b, "job")
        local t0 = locker.now()
        la:release()
        local took = owned() - t0
        report(("release by a client without lock_delay: b owned %.2f s later"):format(took))
        assert.is_true(took >= DELAY - 0.05 and took < DELAY + 0.5, took)
        local lb = waiter and assert(b:lock("other", "b"))
        local d = client()
        local box = helper.go(function() return assert(d:lock("other", "d")) end)
        helper.wait_until("d to queue", function() return #etcd:keys(prefix .. "other/") == 2 end)
        t0 = locker.now()
        etcd:ctl("del " .. helper.quote(lb:key()))
        helper.wait_until("d to own", function() return box.done and box.r[1]:owned() end, 15)
        took = locker.now() - t0
        report(("foreign delete: the waiter owned %.2f s later"):format(took))
        assert.is_true(took >= DELAY - 0.05 and took < DELAY + 0.5, took)
        a:close(); b:close(); d:close()
    end)

    it("gives up a delayed ownership whose key goes meanwhile", function()
        local a, b = client({ lock_delay = 0 }), client({ lock_delay = 3 })
        local la = assert(a:lock("job", "a"))
        local box = helper.go(function() return b:lock("job", "b", { timeout = 10 }) end)
        helper.wait_until("b to queue", function() return #etcd:keys(prefix .. "job/") == 2 end)
        la:release()                                           -- unmarked: b is delayed
        local mine = helper.wait_until("b's key to be first", function()
            local keys = etcd:keys(prefix .. "job/")
            return #keys == 1 and keys[1]
        end)
        etcd:ctl("del " .. helper.quote(mine))                 -- during the delay
        helper.wait_until("lock() to answer", function() return box.done end, 10)
        assert.is_nil(box.r[1])
        assert.equal("lost", box.r[3])
        a:close(); b:close()
    end)

    it("refuses a bad lock_delay by name", function()
        assert.has_error(function() client({ lock_delay = -1 }) end,
            "locker.new: option 'lock_delay' must be a number of seconds from 0 to 3600 (got -1)")
        assert.has_error(function() client({ lock_delay = "1" }) end,
            "locker.new: option 'lock_delay' must be a number of seconds from 0 to 3600 (got 1)")
    end)
end)

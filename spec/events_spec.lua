-- Events nobody takes stay bounded; locker.step() tells foreign loops when
-- the next timer is due.
local locker = require "locker"
local core = require "locker.core"
local helper = require "helper"

describe("events", function()
    local etcd
    setup(function() etcd = helper.etcd() end)
    teardown(function() etcd:destroy() end)

    it("fold per name while nobody dispatches a client (ev.skipped counts them)", function()
        -- a bare core client: no scheduler ever dispatches it
        local raw = assert(core.new({ etcd.endpoint }, "/ev1/", 10, 5000, 2000))
        raw:watch("x")
        local c = etcd:client({ prefix = "/ev1/" })
        local l = assert(c:lock("x", "0"))
        for i = 1, 2000 do assert(l:set(tostring(i))) end
        helper.wait_until("the last value cached", function() return raw:cached("x") == "2000" end, 5)
        local evs = raw:events()
        local watch = {}
        for _, ev in ipairs(evs) do
            if ev.kind == "watch" then watch[#watch + 1] = ev end
        end
        assert.equals(1, #watch)
        assert.equals("2000", watch[1].value)
        assert.is_true(watch[1].skipped > 1000)
        l:release()
        c:close()
        raw:close()
    end)

    it("keeps at most locker.WATCH_QUEUE events for a watch nobody reads", function()
        local c = etcd:client({ prefix = "/ev2/" })
        local w = c:watch("y")
        local l = assert(c:lock("y", "0"))
        for i = 1, 300 do assert(l:set(tostring(i))) end
        helper.wait_until("the last value cached", function() return c:cached("y") == "300" end, 5)
        locker.step()
        local n, last = 0, nil
        while true do
            local _, ev = w:next(0)
            if not ev then break end
            n, last = n + 1, ev
        end
        assert.is_true(n <= locker.WATCH_QUEUE, n .. " events kept")
        assert.equals("300", last.value)
        l:release()
        c:close()
    end)

    it("step() returns the seconds until the next timer", function()
        assert.is_nil(locker.step())
        local done = false
        locker.spawn(function() locker.sleep(0.5) done = true end)
        local t = locker.step()
        assert.is_true(t > 0.3 and t <= 0.5, tostring(t))
        core.poll({}, t)
        helper.wait_until("the sleeper", function() locker.step() return done end, 2)
    end)
end)

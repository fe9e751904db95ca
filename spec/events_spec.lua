-- A watch nobody reads stays bounded; locker.step() tells foreign loops
-- when the next timer is due.
local locker = require "locker"
local helper = require "helper"

describe("events", function()
    local etcd
    setup(function() etcd = helper.etcd() end)
    teardown(function() etcd:destroy() end)

    -- folding while nobody dispatches: watch_spec's "folds the events of a
    -- client nobody dispatches" (the changes come from another process)

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

    it("wakes a coroutine whose timer is already due when the loop waits", function()
        -- a timer due by the time the loop polls must not become "wait
        -- forever" (poll's negative timeout); a client's idle fd is all
        -- there is to wake it otherwise. In a child, bounded by timeout(1).
        local script = helper.file(([[
local locker = require "locker"
local c = assert(locker.new{ endpoints = { %q } })
local fd = c:fd()  -- idle: nothing will ever make it readable
local done = false
locker.spawn(function() for _ = 1, 200 do locker.sleep(0) end done = true end)
locker.run()
io.stdout:write(done and "done" or "not done", " ", fd, "\n")
]]):format(etcd.endpoint))
        -- (spawned with the sanitizer runtime, when there is one: make sanitize)
        local pid, out = helper.spawn(("timeout 10 %s %s; echo rc=$?"):format(helper.lua, script), true)
        helper.wait_until("the child to end", function() return not helper.alive(pid) end, 20)
        local text = helper.read(out)
        os.remove(script)
        os.remove(out)
        assert.truthy(text:match("rc=0"), "hung or failed: " .. text)
        assert.truthy(text:match("^done"), text)
    end)

    it("step() returns the seconds until the next timer", function()
        assert.is_nil(locker.step())
        local done = false
        locker.spawn(function() locker.sleep(0.5) done = true end)
        local t = locker.step()
        assert.is_true(t > 0.3 and t <= 0.5, tostring(t))
        os.execute(("sleep %.3f"):format(t))  -- a foreign loop waits so long
        helper.wait_until("the sleeper", function() locker.step() return done end, 2)
    end)
end)

-- Semaphores (client:lock(name, value, { limit = N })) against a real
-- etcd: up to N owners at once, the others in FIFO order, each turn taken
-- by one waiter's request (no herd), contenders asking for another N (or a
-- plain lock on the name) refused with "limit", status and the CLI.
local locker = require "locker"
local helper = require "helper"

local function report(line)
    io.stderr:write("\n[semaphore] ", line, "\n")
end

describe("semaphore", function()
    local etcd, n, prefix = nil, 0, nil
    setup(function() etcd = helper.etcd() end)
    teardown(function() etcd:destroy() end)
    before_each(function()
        n = n + 1
        prefix = "/sem" .. n .. "/"
    end)

    local function clients(k)
        local list = {}
        for i = 1, k do list[i] = etcd:client({ prefix = prefix }) end
        return list
    end
    local function close_all(list)
        for _, c in ipairs(list) do c:close() end
    end

    it("has up to N owners at once, the others waiting in FIFO order", function()
        local cs = clients(6)
        local held = {}
        for i = 1, 3 do
            held[i] = assert(cs[i]:lock("pool", "w" .. i, { limit = 3, timeout = 5 }))
            assert.is_true(held[i]:owned())
        end
        assert.is_true(held[1]:token() < held[2]:token() and held[2]:token() < held[3]:token())
        -- three waiters, queued in this order
        local boxes = {}
        for i = 4, 6 do
            boxes[i] = helper.go(function() return cs[i]:lock("pool", "w" .. i, { limit = 3, timeout = 20 }) end)
            helper.wait_until("waiter " .. i .. " to queue", function()
                return #etcd:keys(prefix .. "pool/") == i
            end)
        end
        local order, seen = {}, {}
        for _, release in ipairs({ 2, 1, 3 }) do
            -- one release: exactly one waiter (the oldest) owns, and only
            -- its client made requests for it
            local before = {}
            for i = 4, 6 do before[i] = cs[i]:stats().requests end
            held[release]:release()
            local got = helper.wait_until("a waiter to own", function()
                for i = 4, 6 do
                    if boxes[i].done and not seen[i] then return i end
                end
            end, 5)
            seen[got] = true
            order[#order + 1] = got
            assert.is_true(boxes[got].r[1]:owned())
            locker.sleep(0.2)  -- what else would have woken meanwhile
            local woke = 0
            for i = 4, 6 do
                if cs[i]:stats().requests > before[i] then woke = woke + 1 end
            end
            assert.equal(1, woke)
            local owners = 0
            for _, l in ipairs(held) do if l:owned() then owners = owners + 1 end end
            for i = 4, 6 do
                if boxes[i].done and boxes[i].r[1]:owned() then owners = owners + 1 end
            end
            assert.equal(3, owners)
        end
        assert.same({ 4, 5, 6 }, order)
        report("3 releases, each woke one waiter (the oldest) and no other client sent a request")
        -- wait = false: all places taken
        local l, msg, code = cs[1]:lock("pool", "x", { limit = 3, wait = false })
        assert.is_nil(l)
        assert.equal("locked", code, msg)
        assert.matches("all 3 places are held", msg)
        for i = 4, 6 do boxes[i].r[1]:release() end
        helper.wait_until("no key left", function()
            return #etcd:keys(prefix) == 0
        end, 5)
        close_all(cs)
    end)

    it("refuses contenders that ask for another limit, and plain locks on its name", function()
        local cs = clients(3)
        local a = assert(cs[1]:lock("pool", "a", { limit = 2 }))
        local l, msg, code = cs[2]:lock("pool", "b", { limit = 3, timeout = 3 })
        assert.is_nil(l)
        assert.equal("limit", code)
        assert.matches("share a limit of 2, not 3", msg)
        l, msg, code = cs[2]:lock("pool", "b", { timeout = 3 })
        assert.is_nil(l)
        assert.equal("limit", code)
        assert.matches("plain lock cannot share", msg)
        -- nothing of the refused is left: the second place is still free
        local b = assert(cs[3]:lock("pool", "c", { limit = 2, wait = false }))
        assert.is_true(b:owned() and a:owned())
        a:release(); b:release()
        -- a plain lock (etcdctl's too) held first: a semaphore is refused
        local p = assert(cs[1]:lock("mutex", "p"))
        l, msg, code = cs[2]:lock("mutex", "s", { limit = 2, timeout = 3 })
        assert.is_nil(l)
        assert.equal("limit", code)
        assert.matches("plain lock %(limit 1%)", msg)
        p:release()
        local ctl = helper.spawn(("ETCDCTL_API=3 exec timeout 20 etcdctl --endpoints=%s lock %s -- sleep 30")
            :format(etcd.endpoint, helper.quote(prefix .. "byctl")))
        helper.wait_until("etcdctl to hold", function() return #etcd:keys(prefix .. "byctl/") == 1 end, 5)
        l, msg, code = cs[2]:lock("byctl", "s", { limit = 2, timeout = 2 })
        helper.kill(ctl, "TERM")
        assert.is_nil(l)
        assert.equal("limit", code, msg)
        close_all(cs)
    end)

    it("checks its limit option by name", function()
        local c = etcd:client({ prefix = prefix })
        for _, bad in ipairs({ 0, 1.5, -1, "2", locker.MAX_LIMIT + 1 }) do
            local ok, err = pcall(c.lock, c, "pool", "v", { limit = bad })
            assert.is_false(ok)
            assert.matches("limit", err)
        end
        local ok, err = pcall(c.campaign, c, "e", "v", { limit = 2 })
        assert.is_false(ok)
        assert.matches("one leader", err)
        c:close()
    end)

    it("shows holders, waiters and its limit in status() and locker status", function()
        local cs = clients(4)
        local held = {}
        for i = 1, 2 do held[i] = assert(cs[i]:lock("pool", "h" .. i, { limit = 2 })) end
        local box = helper.go(function() return cs[3]:lock("pool", "w3", { limit = 2, timeout = 10 }) end)
        helper.wait_until("a waiter", function() return #etcd:keys(prefix .. "pool/") == 3 end)
        local plain = assert(cs[4]:lock("single", "s"))
        local st = assert(cs[4]:status())
        assert.equal(2, #st)
        assert.equal("pool", st[1].name)
        assert.equal(2, st[1].limit)
        assert.equal(1, st[1].waiters)
        assert.equal(2, #st[1].holders)
        assert.equal("h1", st[1].holders[1].value)
        assert.equal(held[2]:token(), st[1].holders[2].token)
        assert.equal(1, st[2].limit)
        assert.equal(1, #st[2].holders)
        assert.equal(0, st[2].waiters)
        local out, ok = helper.locker(etcd, "status", "LOCKER_PREFIX=" .. prefix)
        assert(ok, out)
        local lines = {}
        for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
        assert.matches("^NAME%s+VALUE%s+TOKEN%s+LEASE%s+WAITERS%s+LIMIT$", lines[1])
        assert.matches("^pool%s+h1%s+" .. held[1]:token() .. "%s+%x+%s+1%s+2$", lines[2])
        assert.matches("^%s+h2%s+" .. held[2]:token() .. "%s+%x+$", lines[3])
        assert.matches("^single%s+s%s+%d+%s+%x+%s+0%s+1$", lines[4])
        held[1]:release()
        helper.wait_until("the waiter to own", function() return box.done end, 5)
        assert.is_true(box.r[1]:owned())
        box.r[1]:release(); held[2]:release(); plain:release()
        close_all(cs)
    end)

    it("runs up to N commands at once with locker lock -n N", function()
        local dir = os.tmpname()
        os.remove(dir)
        assert(os.execute("mkdir " .. dir))
        -- each command notes itself in dir while it runs, and counts the
        -- others there
        local cmd = ("lock -n 2 pool -- sh -c 'touch %s/$$; sleep 0.6; ls %s | wc -l >> %s.counts; rm %s/$$'")
            :format(dir, dir, dir, dir)
        local pids = {}
        for i = 1, 5 do
            pids[i] = helper.spawn(("LOCKER_ENDPOINTS=%s LOCKER_PREFIX=%s %s bin/locker %s > %s.out%d 2>&1")
                :format(etcd.endpoint, prefix, helper.lua, cmd, dir, i), true)
        end
        helper.wait_until("the 5 commands to run", function()
            for _, p in ipairs(pids) do if helper.alive(p) then return false end end
            return true
        end, 20)
        local counts = {}
        for line in io.lines(dir .. ".counts") do counts[#counts + 1] = tonumber(line) end
        assert.equal(5, #counts)
        local most = 0
        for _, k in ipairs(counts) do most = math.max(most, k) end
        report(("5 'locker lock -n 2' processes: at most %d commands ran at once"):format(most))
        assert.is_true(most <= 2, "at most 2 at once, saw " .. most)
        assert.equal(2, most)
        local out = helper.locker(etcd, "lock -n 0 pool -- true", "LOCKER_PREFIX=" .. prefix)
        assert.matches("%-n takes a whole number", out)
        os.execute("rm -rf " .. dir .. " " .. dir .. ".*")
    end)
end)

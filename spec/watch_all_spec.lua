-- The prefix watch (client:watch_all) against a real etcd: every name under
-- the prefix, with the events of client:watch, over the one stream.
local locker = require "locker"
local helper = require "helper"

describe("client:watch_all()", function()
    local etcd, n, prefix = nil, 0, nil
    setup(function() etcd = helper.etcd() end)
    teardown(function() etcd:destroy() end)
    before_each(function()
        n = n + 1
        prefix = "/all" .. n .. "/"
    end)

    local function client(opts)
        opts = opts or {}
        opts.prefix = opts.prefix or prefix
        return etcd:client(opts)
    end

    -- Collects events as "name=value" / "name gone" (resync marked "!").
    local function recorder()
        local seen = {}
        local function fn(value, ev)
            seen[#seen + 1] = ev.name .. (value and "=" .. value or " gone") .. (ev.resync and "!" or "")
        end
        return seen, fn
    end

    local function wait_for(seen, line, timeout)
        helper.wait_until(line, function()
            for _, s in ipairs(seen) do if s == line then return true end end
        end, timeout or 10)
    end

    it("reports every name held, then every change of any name's owner", function()
        local a, b, c = client(), client(), client()
        local la = assert(a:lock("x", "x1"))
        local lb = assert(b:lock("y", "y1"))
        local seen, fn = recorder()
        local w = c:watch_all(fn)
        helper.wait_until("both names", function() return #seen == 2 end)
        table.sort(seen)
        assert.same({ "x=x1", "y=y1" }, seen)
        local lz = assert(a:lock("z", "z1"))                    -- a name not seen before
        wait_for(seen, "z=z1")
        assert(la:set("x2"))
        wait_for(seen, "x=x2")
        -- a waiter behind x changes nothing visible; y is released
        local waiting = helper.go(function() return b:lock("x", "bx") end)
        helper.wait_until("b to queue", function() return #etcd:keys(prefix .. "x/") == 2 end)
        lb:release()
        wait_for(seen, "y gone")
        la:release()                                            -- handover to b's waiter
        wait_for(seen, "x=bx")
        helper.wait_until("b to own x", function() return waiting.done end)
        assert.same({ "x=x1", "y=y1", "z=z1", "x=x2", "y gone", "x=bx" }, seen)
        -- an event carries the owner's token and etcd's revision
        local _, ev = c:watch_all():next(0)      -- a second watcher starts with what is held
        assert.equal("x", ev.name)
        assert.equal(waiting.r[1]:token(), ev.token)
        assert.is_true(ev.revision >= ev.token)
        w:cancel()
        lz:release()
        a:close(); b:close(); c:close()
    end)

    it("sees names taken by etcdctl lock, and never the library's own probe key", function()
        local c = client({ timeout = 1 })
        local seen, fn = recorder()
        c:watch_all(fn)
        local pid = helper.spawn(("ETCDCTL_API=3 exec etcdctl --endpoints=%s lock %s -- sleep 2")
            :format(etcd.endpoint, helper.quote(prefix .. "ctl")))
        wait_for(seen, "ctl=")       -- etcdctl lock writes an empty value
        wait_for(seen, "ctl gone")   -- its command ended: etcdctl unlocks
        helper.wait_until("etcdctl to end", function() return not helper.alive(pid) end)
        for _, s in ipairs(seen) do assert.is_falsy(s:find("probe", 1, true), s) end
        c:close()
    end)

    it("finds what changed in a compacted gap: new names, gone names, marked resync", function()
        local proxy = helper.proxy(etcd)
        local c = client({ endpoints = { proxy.endpoint } })
        local a = client()
        local seen, fn = recorder()
        c:watch_all(fn)
        local l1 = assert(a:lock("old", "o1"))
        wait_for(seen, "old=o1")
        proxy:stop()                                 -- c's stream is cut
        l1:release()
        local l2 = assert(a:lock("new", "n1"))
        local rev = a:owner("new").revision
        local out, ok = etcd:ctl("compact " .. rev)
        assert(ok, out)
        proxy:restart()
        wait_for(seen, "old gone!", 15)
        wait_for(seen, "new=n1!", 15)
        assert(l2:set("n2"))                         -- and it follows changes again
        wait_for(seen, "new=n2")
        proxy:close()
        l2:release()
        c:close(); a:close()
    end)

    it("lives beside watches of single names, and each cancels alone", function()
        local a, c = client(), client()
        local one = {}
        local single = c:watch("s", function(v) one[#one + 1] = tostring(v) end)
        helper.wait_until("the single watch's first event", function() return #one == 1 end)
        local seen, fn = recorder()
        local all = c:watch_all(fn)
        local l = assert(a:lock("s", "s1"))
        wait_for(seen, "s=s1")
        helper.wait_until("s1 for the single watch", function() return one[#one] == "s1" end)
        all:cancel()
        assert(l:set("s2"))
        helper.wait_until("s2 for the single watch", function() return one[#one] == "s2" end)
        assert.is_nil(seen[2])                       -- watch_all was canceled
        assert.equal("s2", c:cached("s"))
        single:cancel()
        -- a watch_all started after a single watch gets its state at once
        local again, fn2 = recorder()
        c:watch_all(fn2)
        wait_for(again, "s=s2")
        l:release()
        wait_for(again, "s gone")
        a:close(); c:close()
    end)

    it("follows many names with few requests", function()
        local a, c = client(), client()
        local locks = {}
        for i = 1, 50 do locks[i] = assert(a:lock("n" .. i, "v" .. i)) end
        local count = 0
        local before = c:stats().requests
        c:watch_all(function() count = count + 1 end)
        helper.wait_until("50 names", function() return count == 50 end, 20)
        -- the session (grant, stream, a proof) and one read of the prefix
        local used = c:stats().requests - before
        assert.is_true(used <= 6, used .. " requests")
        for i = 1, 50 do locks[i]:release() end
        helper.wait_until("50 gone", function() return count == 100 end, 20)
        a:close(); c:close()
    end)

    it("follows a group's records through client:group(), apart from the parent's names", function()
        local c = client()
        local web = assert(c:group("web"))
        assert.equal(web, c:group("web"))         -- one per name
        assert.equal(prefix .. "web/", web.prefix)
        local seen, fn = recorder()
        web:watch_all(fn)
        local a = assert(web:lock("a", "10.0.0.1:80"))
        local other = assert(c:lock("other", "x"))  -- a name of the parent: not the group's
        wait_for(seen, "a=10.0.0.1:80")
        assert.same({ prefix .. "web/a/" }, { etcd:keys(prefix .. "web/")[1]:match("^(.*/)") })
        a:release()
        wait_for(seen, "a gone")
        for _, line in ipairs(seen) do assert.not_matches("^other", line) end
        assert.has_error(function() c:group("a/b") end)
        c:close()                                  -- closes the group's client too
        assert.is_true(web:closed())
        assert.same({ nil, "client is closed", "closed" }, { c:group("web") })
        assert.is_truthy(other)
    end)

    it("refuses a callback that is not a function, and ends with the client", function()
        local c = client()
        assert.has_error(function() c:watch_all(42) end,
            "client:watch_all: fn must be a function (got number)")
        local w = c:watch_all()
        c:close()
        assert.same({ nil, nil, "client is closed", "closed" }, { w:next(1) })
        assert.same({ nil, "client is closed", "closed" }, { c:watch_all() })
        assert.is_truthy(locker)
    end)
end)

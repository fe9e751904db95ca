-- Interoperability with etcd's own lock (etcdctl lock, Go's concurrency.Mutex).
local locker = require "locker"
local helper = require "helper"

describe("etcdctl lock", function()
    local etcd
    setup(function() etcd = helper.etcd() end)
    teardown(function() etcd:destroy() end)

    local function etcdctl_lock(name)
        return helper.spawn(("ETCDCTL_API=3 exec etcdctl --endpoints=%s lock %s")
            :format(etcd.endpoint, helper.quote(name)))
    end

    it("waits while our client holds NAME, and gets it when we release", function()
        local c = etcd:client({ prefix = "/interop1/" })
        local lock = assert(c:lock("shared", "ours"))
        local pid, out = etcdctl_lock("/interop1/shared")
        helper.wait_until("etcdctl to queue behind us", function()
            return #etcd:keys("/interop1/shared/") == 2
        end)
        assert.equal("", helper.read(out))   -- queued, so it must not hold it
        assert.is_true(helper.alive(pid))
        lock:release()
        local line = helper.wait_until("etcdctl to hold the lock", function()
            return helper.read(out):match("/interop1/shared/%x+")
        end)
        assert.equal("", c:get("shared"))    -- etcdctl's contender has no value
        assert.is_truthy(line)
        helper.kill(pid, "TERM")
        helper.wait_until("etcdctl to exit", function() return not helper.alive(pid) end)
        helper.wait_until("etcdctl's key to go", function()
            return #etcd:keys("/interop1/shared/") == 0
        end)
        c:close()
    end)

    it("makes our client wait while etcdctl holds NAME", function()
        local c = etcd:client({ prefix = "/interop2/" })
        local pid, out = etcdctl_lock("/interop2/shared")
        helper.wait_until("etcdctl to hold the lock", function()
            return helper.read(out):match("/interop2/shared/%x+")
        end)
        local l, _, code = c:lock("shared", "ours", { wait = false })
        assert.is_nil(l)
        assert.equal("locked", code)
        local got
        locker.spawn(function() got = { c:lock("shared", "ours", { timeout = 20 }) } end)
        helper.wait_until("us to queue behind etcdctl", function()
            return #etcd:keys("/interop2/shared/") == 2
        end)
        assert.is_nil(got)
        helper.kill(pid, "TERM")   -- etcdctl revokes its session on SIGTERM
        helper.wait_until("our lock() to return", function() return got end)
        assert.truthy(got[1])
        assert.is_true(got[1]:owned())
        assert.equal("ours", c:get("shared"))
        got[1]:release()
        c:close()
    end)
end)

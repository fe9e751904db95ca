-- Guarded writes (lock:put, lock:delete) and client:read, against a real
-- etcd: a write of any key that etcd does only while the lock's key still
-- exists with its token, checked in the same txn; etcdctl is the outsider.
local helper = require "helper"

describe("guarded writes", function()
    local etcd, n, prefix, data = nil, 0, nil, nil
    setup(function() etcd = helper.etcd() end)
    teardown(function() etcd:destroy() end)
    before_each(function()
        n = n + 1
        prefix = "/guard" .. n .. "/"
        data = "/config" .. n .. "/"  -- outside the lock prefix
    end)

    local function client(opts)
        opts = opts or {}
        opts.prefix = opts.prefix or prefix
        return etcd:client(opts)
    end

    local function ctl_get(key)
        local out = etcd:ctl("get --print-value-only " .. helper.quote(key))
        return out:match("^(.-)\n?$")
    end

    it("writes and deletes a key while owned, and reads it back", function()
        local c = client()
        local lock = assert(c:lock("cfg"))
        local rev = assert(lock:put(data .. "app", "v1"))
        assert.is_true(rev > lock:token())
        assert.equal("v1", ctl_get(data .. "app"))
        local value, mod = c:read(data .. "app")
        assert.equal("v1", value)
        assert.equal(rev, mod)
        -- no lease: the key outlives the lock, as a config must
        assert.is_truthy(lock:release())
        assert.equal("v1", ctl_get(data .. "app"))
        lock = assert(c:lock("cfg"))
        local drev = assert(lock:delete(data .. "app"))
        assert.is_true(drev > rev)
        assert.equal("", ctl_get(data .. "app"))
        local none, at = c:read(data .. "app")
        assert.is_nil(none)
        assert.is_true(at >= drev)             -- etcd's revision: nothing there
        lock:release()
        c:close()
    end)

    it("writes nothing once the lock's key is gone, and the lock ends", function()
        local c = client()
        local lock = assert(c:lock("cfg"))
        assert(lock:put(data .. "app", "mine"))
        -- an outsider deletes the lock's key and writes the config
        etcd:ctl("del " .. helper.quote(lock:key()))
        etcd:ctl("put " .. helper.quote(data .. "app") .. " theirs")
        local rev, msg, code = lock:put(data .. "app", "stale")
        if rev then
            -- the stream told the engine first: refused without a write
            error("a put after the lock's key was deleted succeeded at " .. rev)
        end
        assert.equal("not_owner", code)
        assert.matches("cfg", msg)
        assert.equal("theirs", ctl_get(data .. "app"))
        assert.is_false(lock:owned())
        assert.is_nil(lock:token())
        c:close()
    end)

    it("a txn guard refuses even when the engine has not heard of the delete", function()
        -- the watch stream is muted: only the txn's compare can know
        local proxy = helper.proxy(etcd)
        local c = client({ endpoints = { proxy.endpoint }, timeout = 2 })
        local changes = {}
        local lock = assert(c:lock("cfg", "", {
            on_change = function(owned, _, _, code) changes[#changes + 1] = { owned, code } end,
        }))
        proxy:mode("mute /v3/watch")
        etcd:ctl("del " .. helper.quote(lock:key()))
        assert.is_true(lock:owned())           -- nothing says otherwise yet
        local rev, _, code = lock:delete(data .. "x")
        assert.is_nil(rev)
        assert.equal("not_owner", code)
        assert.is_false(lock:owned())          -- the failed guard ended it at once
        helper.wait_until("the loss to reach on_change", function()
            c:dispatch()
            return changes[#changes] and changes[#changes][1] == false
        end, 5)
        proxy:mode("unmute /v3/watch")
        c:close()
        proxy:close()
    end)

    it("refuses without I/O when not owned, and refuses bad keys by name", function()
        local c = client()
        local lock = assert(c:lock("cfg"))
        assert.has_error(function() lock:put(prefix .. "cfg/x", "v") end,
            ("lock:put: key %q is under the lock prefix %q, where only locks write")
                :format(prefix .. "cfg/x", prefix))
        assert.has_error(function() lock:put("", "v") end, "lock:put: key is empty")
        assert.has_error(function() lock:put(7, "v") end, "lock:put: key must be a string (got number)")
        assert.has_error(function() lock:put(data .. "k", {}) end,
            "lock:put: value must be a string (got table)")
        assert.has_error(function() lock:put(data .. "k") end,
            "lock:put: value must be a string (got nil)")
        local long = data .. ("k"):rep(5000)
        assert.has_error(function() lock:delete(long) end,
            ("lock:delete: key is %d bytes, the limit is 4096"):format(#long))
        assert.has_error(function() c:read(false) end, "client:read: key must be a string (got boolean)")
        lock:release()
        local requests = c:stats().requests
        local rev, msg, code = lock:put(data .. "k", "v")
        assert.is_nil(rev)
        assert.equal("not_owner", code)
        assert.matches("released", msg)
        assert.equal(requests, c:stats().requests)
        assert.equal("", ctl_get(data .. "k"))
        c:close()
        assert.same({ nil, "client is closed", "closed" }, { lock:put(data .. "k", "v") })
    end)

    it("lets only the owner of the moment write, with two clients taking turns", function()
        local a, b = client(), client()
        local la = assert(a:lock("cfg"))
        assert(la:put(data .. "who", "a"))
        local lb
        local waiting = helper.go(function() lb = assert(b:lock("cfg")) end)
        la:release()
        helper.wait_until("b to own", function() return waiting.done end, 10)
        assert.same({ nil }, { (la:put(data .. "who", "a again")) })
        assert(lb:put(data .. "who", "b"))
        assert.equal("b", ctl_get(data .. "who"))
        assert.equal("b", (a:read(data .. "who")))
        a:close(); b:close()
    end)
end)

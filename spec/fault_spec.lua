-- Faults: etcd unreachable, stalled, restarted. Survived and reported.
local locker = require "locker"
local helper = require "helper"

describe("faults", function()
    it("reports an unreachable endpoint with 'unavailable', without hanging", function()
        local c = assert(locker.new{ endpoints = { "http://127.0.0.1:1" }, timeout = 1 })
        local t0 = locker.now()
        local l, msg, code = c:lock("x", "v")
        assert.is_nil(l)
        assert.equal("unavailable", code)
        assert.matches("127.0.0.1:1", msg)
        local v, msg2, code2 = c:get("x")
        assert.is_nil(v)
        assert.equal("unavailable", code2)
        assert.is_string(msg2)
        assert.is_true(locker.now() - t0 < 3)
        c:close()
    end)

    describe("with a real etcd", function()
        local etcd
        setup(function() etcd = helper.etcd() end)
        teardown(function() etcd:destroy() end)

        it("fails over to the next endpoint when the first refuses connections", function()
            local c = etcd:client({ endpoints = { "http://127.0.0.1:1", etcd.endpoint },
                                    prefix = "/failover/" })
            local lock = assert(c:lock("x", "v"))
            assert.equal("v", c:get("x"))
            lock:release()
            c:close()
        end)

        it("times out (code 'unavailable') when etcd is stalled, then recovers", function()
            local c = etcd:client({ prefix = "/stall/", timeout = 0.5 })
            assert(c:lock("warm", "v")):release()
            helper.kill(etcd.pid, "STOP")
            local t0 = locker.now()
            local v, msg, code = c:get("x")
            local took = locker.now() - t0
            helper.kill(etcd.pid, "CONT")
            assert.is_nil(v)
            assert.equal("unavailable", code)
            assert.matches("unreachable", msg)
            assert.is_true(took >= 0.4 and took < 2, "took " .. took)
            assert.is_nil(c:get("x"))  -- works again
            c:close()
        end)

        it("keeps a keep = true lock across an etcd restart", function()
            local c = etcd:client({ prefix = "/restart/", ttl = 5 })
            local other = etcd:client({ prefix = "/restart/" })
            local lock = assert(c:lock("r", "v", { keep = true }))
            etcd:restart()
            -- the lease survives a restart; the engine reconnects by itself
            helper.wait_until("the lock to be owned after the restart", function()
                return lock:owned() and other:get("r") == "v"
            end)
            assert.is_true(lock:set("w"))
            assert.equal("w", other:get("r"))
            lock:release()
            c:close(); other:close()
        end)

        it("lets a waiter take over when the release fell into a compacted gap", function()
            local proxy = helper.proxy(etcd)
            local a = etcd:client({ prefix = "/gap/" })
            local b = etcd:client({ prefix = "/gap/", endpoints = { proxy.endpoint } })
            local held = assert(a:lock("x", "a"))
            local got
            locker.spawn(function() got = { b:lock("x", "b", { timeout = 20 }) } end)
            helper.wait_until("b to queue", function() return #etcd:keys("/gap/x/") == 2 end)
            proxy:stop()                  -- b hears nothing from now on
            held:release()                -- the deletion b waits for...
            assert(a:lock("other", "v")):release()
            local rev = etcd:ctl("get / --write-out=fields"):match('"Revision" : (%d+)')
            local out, ok = etcd:ctl("compact " .. rev)
            assert(ok, out)               -- ...is compacted away
            proxy:restart()
            helper.wait_until("b's lock()", function() return got end, 20)
            assert.truthy(got[1], tostring(got[2]))
            assert.is_true(got[1]:owned())
            assert.equal("b", a:get("x"))
            got[1]:release()
            proxy:stop()
            a:close(); b:close()
        end)

        it("tells a holder it lost the lock when renewals fail, before the lease could expire", function()
            local c = etcd:client({ prefix = "/jeopardy/", ttl = 3, timeout = 0.5 })
            local changes = {}
            local lock = assert(c:lock("j", "v", {
                keep = true,
                on_change = function(owned, _, _, code) changes[#changes + 1] = { owned, code, locker.now() } end,
            }))
            helper.wait_until("on_change(true)", function() return #changes == 1 end)
            local stopped = locker.now()
            helper.kill(etcd.pid, "STOP")
            helper.wait_until("on_change(false)", function() return #changes == 2 end, 10)
            helper.kill(etcd.pid, "CONT")
            -- etcd does not answer: the key's confirmation ('unavailable') or
            -- the lease's ('lease_lost') runs out, whichever comes first
            assert.is_false(changes[2][1])
            assert.truthy(changes[2][2] == "unavailable" or changes[2][2] == "lease_lost", changes[2][2])
            -- told before the lease (3 s from the last renewal) could run out
            assert.is_true(changes[2][3] - stopped < 3, "after " .. (changes[2][3] - stopped))
            helper.wait_until("ownership back", function() return lock:owned() end, 10)
            lock:release()
            c:close()
        end)
    end)
end)

describe("the spec helper's etcd", function()
    it("leaves no process behind", function()
        local etcd = helper.etcd()
        local pid = etcd.pid
        assert.is_true(helper.alive(pid))
        etcd:destroy()
        assert.is_false(helper.alive(pid))
    end)
end)

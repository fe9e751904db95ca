-- locker inside other event loops (luv, cqueues, Copas), through the real
-- libraries: each host runs spec/hosts/scenario.lua in a process of its
-- own (an adapter hands the process' scheduler to its loop): 100 of the
-- host's coroutines doing lock / release cycles on 10 names while a host
-- timer ticks every 10 ms, a watch and a health config inside the loop,
-- etcd stopped for 3 s meanwhile, and everything cleaned up at the end.
local helper = require "helper"

-- The key=value lines of a host run.
local function figures(out)
    local f = {}
    for k, v in out:gmatch("([%w_]+)=([^\n]*)") do f[k] = v end
    return f
end

local HOSTS = {
    { name = "luv", lib = "luv" },
    { name = "cqueues", lib = "cqueues" },
    { name = "copas", lib = "copas" },
}

for _, host in ipairs(HOSTS) do
    describe("locker inside " .. host.name, function()
        local etcd
        setup(function() etcd = helper.etcd() end)
        teardown(function() etcd:destroy() end)

        local function run(mode, seconds)
            local env = ("LOCKER_ENDPOINTS=%s LOCKER_ETCD_PID=%d"):format(etcd.endpoint, etcd.pid)
            local out, _, code = helper.script("spec/hosts/" .. host.name .. ".lua", mode, env, seconds)
            return out, code, figures(out)
        end

        it("the library is there (make test installs it)", function()
            local out, ok = helper.script(helper.file(("require %q"):format(host.lib)), "", "", 20)
            assert.is_true(ok, out)
        end)

        it("never blocks the loop: cycles, a watch, health, etcd stopped for 3 s, a clean end", function()
            local out, code, f = run("", 150)
            assert.equal(0, code, out)
            assert.equal("true", f.finished, out)
            -- every cycle of 100 coroutines completed, one holder at a time
            assert.equal(f.cycles_wanted, f.cycles, out)
            assert.equal("0", f.overlaps, out)
            assert.is_nil(f.lock_error, out)
            -- the host's timer kept its beat: no tick more than 20 ms late,
            -- while etcd was stopped either
            assert.is_true(tonumber(f.ticks) > 300, out)
            assert.is_true(tonumber(f.worst_tick_late_ms) <= 20, out)
            assert.is_true(tonumber(f.worst_tick_late_stopped_ms) <= 20, out)
            -- the watch saw the dependency held and released; the health
            -- record followed it up and down
            assert.matches("^[^\n]*up", f.watch_saw, out)
            assert.matches("%(none%)$", f.watch_saw, out)
            assert.equal("true", f.health_up, out)
            assert.equal("true", f.health_down, out)
            -- gets failed while etcd was stopped, a lock worked after
            assert.is_true(tonumber(f.gets_failed_while_stopped) >= 1, out)
            assert.equal("true", f.lock_after_stop, out)
            -- closing the clients left nothing polled, no fd open
            assert.equal("0", f.polled_after_close, out)
            assert.equal(f.fds_before, f.fds_after, out)
            if host.name == "cqueues" then
                assert.equal("true", f.loop_ok, out)
                assert.equal("0", f.coroutines_left, out)
            end
        end)

        it("hands an error of a callback to the host's own error path", function()
            local out, code = run("error", 30)
            assert.matches("callback boom now", out, 1, true)
            if host.name == "luv" then           -- luv's: report and exit
                assert.matches("Uncaught Error", out, 1, true)
                assert.is_true(code ~= 0, out)
            elseif host.name == "cqueues" then   -- out of cq:loop()
                assert.matches("loop_ok=false", out, 1, true)
                assert.matches("loop_error=[^\n]*callback boom now", out)
            end
        end)
    end)
end

-- locker lock's command never outlives its supervisor: the locker process
-- killed (SIGKILL) or stopped (SIGSTOP) while CMD runs, against a real etcd
-- and etcd's own `etcdctl lock` as the next owner. Prints what it measured.
local locker = require "locker"
local process = require "locker.process"
local helper = require "helper"

local TTL = 3
local MARGIN = math.min(2, TTL / 5)     -- the client's default margin

-- Process state letter from /proc (R, S, T, Z...), or nil once it is gone.
local function state(pid)
    local s = helper.read("/proc/" .. pid .. "/stat")
    return s:match("^%d+ %b() (%a)")
end

local function report(line)
    io.stderr:write("\n[supervise] ", line, "\n")
end

-- Waits until every pid is gone (a zombie counts as gone: it runs no more),
-- looking every 2 ms so that the time it took is measured, not rounded up
-- to a poll period; returns the seconds it took, or nil after timeout.
local function gone_within(pids, timeout)
    local t0 = locker.now()
    while true do
        local any = false
        for _, pid in ipairs(pids) do
            if helper.alive(pid) then any = true end
        end
        local t = locker.now()
        if not any then return t - t0 end
        if t - t0 > timeout then return nil end
        locker.sleep(0.002)
    end
end

describe("locker lock when locker itself is killed or stopped", function()
    local etcd, n, prefix
    local started = {}       -- every process a test started, ended in finally
    setup(function() etcd = helper.etcd() end)
    teardown(function() etcd:destroy() end)
    before_each(function()
        n = (n or 0) + 1
        prefix = "/supervise" .. n .. "/"
        started = {}
    end)

    -- Ends what a test left running, by pid; a stopped locker is continued
    -- first, so that it reaps its guard.
    local function cleanup()
        for _, pid in ipairs(started) do
            if helper.alive(pid) then
                if state(pid) == "T" then process.kill(pid, "CONT") end
                process.kill(pid, "KILL")
            end
        end
        for _, pid in ipairs(started) do
            pcall(helper.wait_until, "process " .. pid .. " to go", function()
                return not helper.alive(pid)
            end, 5)
        end
    end

    -- Starts `locker --ttl TTL lock NAME -- CMD` in the background. CMD
    -- starts a grandchild (sleep) in its process group, writes both pids,
    -- ignores SIGTERM and runs until killed. Returns { pid = locker's,
    -- child, grandchild, out = the output file, ending "exit=N" }.
    local function start(name, args)
        local pidf, ids = os.tmpname(), os.tmpname()
        local script = ("sleep 600 & echo $$ $! >%s.new && mv %s.new %s; trap '' TERM; "
            .. "echo running; while :; do sleep 0.05; done")
            :format(ids, ids, ids)
        local inner = ("echo $$ >%s; exec %s bin/locker --ttl %d lock %s%s -- sh -c %s")
            :format(helper.quote(pidf), helper.lua, TTL, args or "", name, helper.quote(script))
        local _, out = helper.spawn(("LOCKER_ENDPOINTS=%s LOCKER_PREFIX=%s sh -c %s; echo \"exit=$?\"")
            :format(etcd.endpoint, prefix, helper.quote(inner)), true)
        local run = { out = out }
        run.pid = helper.wait_until("locker to start", function()
            return tonumber(helper.read(pidf):match("^(%d+)"))
        end)
        started[#started + 1] = run.pid
        local pids = helper.wait_until("the command to run", function()
            local c, g = helper.read(ids):match("^(%d+) (%d+)")
            return c and { tonumber(c), tonumber(g) }
        end, 10)
        run.child, run.grandchild = pids[1], pids[2]
        started[#started + 1] = run.child
        started[#started + 1] = run.grandchild
        os.remove(pidf)
        os.remove(ids)
        return run
    end

    local function exit_code(out, timeout)
        return tonumber(helper.wait_until("locker's exit status", function()
            return helper.read(out):match("exit=(%d+)")
        end, timeout))
    end

    it("kills the command and its process group when locker is killed (SIGKILL)", function()
        finally(cleanup)
        local run = start("killed")
        assert.is_true(helper.alive(run.child) and helper.alive(run.grandchild))
        process.kill(run.pid, "KILL")
        local took = gone_within({ run.child, run.grandchild }, 3)
        report(took and ("SIGKILL of locker: the command and its child gone %.1f ms later")
            :format(took * 1000) or "SIGKILL of locker: the command still runs 3 s later")
        assert.is_truthy(took, "the command outlived locker (SIGKILL) by 3 s")
        assert.is_true(took < 0.5, ("the command went %.0f ms after locker"):format(took * 1000))
        assert.equal(137, exit_code(run.out, 5))
    end)

    it("kills the command before etcdctl lock can take the name when locker is stopped (SIGSTOP)", function()
        finally(cleanup)
        local run = start("stopped")
        -- etcd's own lock queues behind it; when it holds the name, its
        -- command writes down the state of locker's command and grandchild
        local probe = os.tmpname()
        os.remove(probe)
        local check = ("for p in %d %d; do echo \"$p $(cut -d' ' -f3 /proc/$p/stat 2>/dev/null || echo gone)\"; "
            .. "done >%s.new && mv %s.new %s"):format(run.child, run.grandchild, probe, probe, probe)
        local ctl = helper.spawn(("ETCDCTL_API=3 exec etcdctl --endpoints=%s lock %s -- sh -c %s")
            :format(etcd.endpoint, helper.quote(prefix .. "stopped"), helper.quote(check)))
        started[#started + 1] = ctl
        helper.wait_until("etcdctl to queue", function()
            return #etcd:keys(prefix .. "stopped/") == 2
        end)
        local t_stop = locker.now()
        process.kill(run.pid, "STOP")
        helper.wait_until("locker to be stopped", function() return state(run.pid) == "T" end, 2)
        -- no renewal was sent after t_stop: the local deadline, which the
        -- command must not outlive, is at most ttl - margin later
        local bound = TTL - MARGIN
        local gone = gone_within({ run.child, run.grandchild }, TTL + 5)
        local acquired = helper.wait_until("etcdctl to hold the name", function()
            return helper.read(probe):match("\n$") and locker.now()
        end, TTL + 10)
        local seen = helper.read(probe)
        report(("SIGSTOP of locker (ttl %d s, margin %.1f s): the command gone after %s, "
            .. "etcdctl lock acquired after %.2f s; at that moment: %s")
            :format(TTL, MARGIN, gone and ("%.2f s"):format(gone) or "never",
                    acquired - t_stop, (seen:gsub("\n", "; "))))
        for pid, st in seen:gmatch("(%d+) (%S+)") do
            assert.is_truthy(st == "gone" or st == "Z" or st == "X",
                ("process %s was running (%s) when etcdctl acquired the name"):format(pid, st))
        end
        assert.is_truthy(gone, "the command still ran after the lease expired")
        assert.is_true(gone <= bound + 0.2,
            ("the command went %.2f s after locker stopped, over ttl - margin = %.1f s"):format(gone, bound))
        -- it is not killed at once: it keeps its lock until ownership ends
        assert.is_true(gone >= bound - TTL / 3 - 0.3,
            ("the command was killed %.2f s after locker stopped, before the deadline"):format(gone))
        -- continued, locker finds its command killed and says why
        process.kill(run.pid, "CONT")
        assert.equal(137, exit_code(run.out, 10))
        assert.matches("watchdog", helper.read(run.out))
        os.remove(probe)
    end)

    it("lets the command run on when locker is stopped for less than the time left", function()
        finally(cleanup)
        local run = start("paused")
        process.kill(run.pid, "STOP")
        helper.wait_until("locker to be stopped", function() return state(run.pid) == "T" end, 2)
        -- a pause well inside the time left on the lease
        locker.sleep(0.3)
        process.kill(run.pid, "CONT")
        helper.wait_until("locker to run", function() return state(run.pid) ~= "T" end, 2)
        -- past the latest deadline known before the pause: the watchdog heard
        -- of the renewals since, and nothing was killed
        locker.sleep(TTL)
        assert.is_true(helper.alive(run.child), "the command was killed although locker resumed")
        assert.is_true(helper.alive(run.grandchild))
        assert.equal(1, #etcd:keys(prefix .. "paused/"))
        process.kill(run.pid, "TERM")            -- passed on: CMD ignores it, sleep does not
        helper.wait_until("the grandchild to take SIGTERM", function()
            return not helper.alive(run.grandchild)
        end, 5)
        process.kill(run.child, "KILL")
        assert.equal(137, exit_code(run.out, 5))
        assert.same({}, etcd:keys(prefix))
    end)

    it("kills what the command left in its process group when it ends", function()
        finally(cleanup)
        local ids = os.tmpname()
        local out, _, code = helper.locker(etcd, ("lock left -- sh -c %s")
            :format(helper.quote(("sleep 600 & echo $! >%s"):format(ids))),
            "LOCKER_PREFIX=" .. prefix)
        assert.equal(0, code, out)
        local left = tonumber(helper.read(ids):match("%d+"))
        started[#started + 1] = left
        assert.is_truthy(gone_within({ left }, 2), "a process of the command's group outlived the lock")
        os.remove(ids)
    end)

    it("reports a command that cannot be run (127) and holds nothing", function()
        local out, _, code = helper.locker(etcd, "lock nope -- ./no-such-command-here",
            "LOCKER_PREFIX=" .. prefix)
        assert.equal(127, code)
        assert.matches("cannot run %./no%-such%-command%-here: No such file or directory", out)
        assert.same({}, etcd:keys(prefix))
        out, _, code = helper.locker(etcd, "lock nope -- no-such-command-in-path",
            "LOCKER_PREFIX=" .. prefix)
        assert.equal(127, code)
        assert.matches("cannot run no%-such%-command%-in%-path: No such file or directory", out)
    end)
end)

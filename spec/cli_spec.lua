-- The locker command against a real etcd.
local locker = require "locker"
local helper = require "helper"

describe("the locker command", function()
    local etcd, n, prefix
    setup(function() etcd = helper.etcd() end)
    teardown(function() etcd:destroy() end)
    before_each(function()
        n = (n or 0) + 1
        prefix = "/cli" .. n .. "/"
    end)

    local function cli(args, env)
        return helper.locker(etcd, args, "LOCKER_PREFIX=" .. prefix .. " " .. (env or ""))
    end

    it("prints usage for every subcommand with --help", function()
        for _, cmd in ipairs({ "lock", "hold", "register", "get", "watch", "status", "health" }) do
            local out, ok = cli(cmd .. " --help")
            assert(ok, out)
            assert.matches("usage: locker " .. cmd, out)
        end
        local out, ok = cli("--help")
        assert(ok, out)
        assert.matches("commands:", out)
    end)

    it("refuses unknown commands and options with exit 2", function()
        local out, ok, code = cli("frobnicate")
        local _
        assert.is_false(ok)
        assert.equal(2, code)
        assert.matches("unknown command 'frobnicate'", out)
        out, _, code = cli("get --colour x")
        assert.equal(2, code)
        assert.matches("unknown option %-%-colour", out)
        out, _, code = cli("get a/b")
        assert.equal(2, code)
        assert.matches("contains '/'", out)
        assert.not_matches("traceback", out)
    end)

    it("says plainly when etcd is missing", function()
        local out, ok, code = helper.locker(nil, "get x")
        assert.is_false(ok)
        assert.equal(3, code)
        assert.matches("unreachable", out)
        assert.matches("is etcd running%?", out)
    end)

    it("runs a command while holding the lock and passes its exit status", function()
        local out, _, code = cli("lock job v1 -- sh -c 'echo token=$LOCKER_TOKEN key=$LOCKER_KEY; exit 7'")
        assert.equal(7, code)
        local token, key = out:match("token=(%d+) key=(%S+)")
        assert.is_truthy(token, out)
        assert.matches("^" .. prefix:gsub("%p", "%%%0") .. "job/%x+$", key)
        assert.same({}, etcd:keys(prefix))        -- released afterwards
        local _, ok0 = cli("lock job -- true")
        assert.is_true(ok0)
    end)

    it("stops the command with SIGTERM when the lock is lost", function()
        local c = etcd:client({ prefix = prefix })
        local pid, out = helper.spawn(("LOCKER_ENDPOINTS=%s LOCKER_PREFIX=%s exec %s bin/locker lock job2 -- "
            .. "sh -c 'trap \"echo got TERM; exit 9\" TERM; echo running; while :; do sleep 0.05; done'")
            :format(etcd.endpoint, prefix, helper.lua), true)
        helper.wait_until("the command to run", function() return helper.read(out):match("running") end)
        etcd:ctl("del --prefix " .. helper.quote(prefix .. "job2/"))
        helper.wait_until("locker to exit", function() return not helper.alive(pid) end, 30)
        local text = helper.read(out)
        assert.matches("got TERM", text)
        assert.matches("lost the lock on job2", text)
        c:close()
    end)

    it("kills a command that ignores SIGTERM after the grace period", function()
        local pid, out = helper.spawn(
            ("LOCKER_ENDPOINTS=%s LOCKER_PREFIX=%s exec %s bin/locker lock --grace 0.3 job3 -- "
            .. "sh -c 'trap \"\" TERM; echo running; while :; do sleep 0.05; done'")
            :format(etcd.endpoint, prefix, helper.lua), true)
        helper.wait_until("the command to run", function() return helper.read(out):match("running") end)
        etcd:ctl("del --prefix " .. helper.quote(prefix .. "job3/"))
        helper.wait_until("locker to exit", function() return not helper.alive(pid) end, 30)
        assert.matches("SIGKILL in 0.3 s", helper.read(out))
    end)

    it("waits for the lock before running the command", function()
        local c = etcd:client({ prefix = prefix })
        local held = assert(c:lock("busy", "x"))
        local out, _, code = cli("lock --wait-timeout 0.3 busy -- echo ran")
        assert.equal(4, code)
        assert.not_matches("ran", out)
        assert.matches("timed out", out)
        held:release()
        c:close()
    end)

    -- Starts bin/locker ARGS in the background; returns its pid and the
    -- file of its output, which ends with "exit=N" once it exited.
    local function start(args, endpoint)
        local pidf = os.tmpname()
        local inner = ("echo $$ >%s; exec %s bin/locker %s"):format(helper.quote(pidf), helper.lua, args)
        local _, out = helper.spawn(("LOCKER_ENDPOINTS=%s LOCKER_PREFIX=%s sh -c %s; echo \"exit=$?\"")
            :format(endpoint or etcd.endpoint, prefix, helper.quote(inner)), true)
        local pid = helper.wait_until("locker to start", function()
            return tonumber(helper.read(pidf):match("^(%d+)"))
        end)
        os.remove(pidf)
        return pid, out
    end

    local function exit_code(out, timeout)
        return tonumber(helper.wait_until("locker's exit status", function()
            return helper.read(out):match("exit=(%d+)")
        end, timeout))
    end

    it("ends the wait for the lock on SIGTERM (143) and SIGINT (130), leaving no waiter key", function()
        local c = etcd:client({ prefix = prefix })
        local held = assert(c:lock("busy", "x"))
        for _, case in ipairs({ { "TERM", 143 }, { "INT", 130 } }) do
            local pid, out = start("lock busy -- echo ran")
            helper.wait_until("locker to queue", function() return #etcd:keys(prefix) == 2 end)
            local t0 = locker.now()
            helper.kill(pid, case[1])
            assert.equal(case[2], exit_code(out, 5))
            assert.is_true(locker.now() - t0 < 3, "took " .. (locker.now() - t0) .. " s")
            local text = helper.read(out)
            assert.not_matches("ran", text)
            assert.matches("SIG" .. case[1] .. " while waiting for busy", text)
            assert.same({ held:key() }, etcd:keys(prefix))   -- only the holder's
            os.remove(out)
        end
        held:release()
        c:close()
    end)

    it("refuses a grace period longer than ttl/3 with exit 2", function()
        local out, ok, code = cli("--ttl 3 lock --grace 1.5 job -- true")
        local _
        assert.is_false(ok)
        assert.equal(2, code)
        assert.matches("%-%-grace 1%.5 is over the limit of ttl/3 = 1 s %(ttl 3 s%)", out)
        assert.matches("usage: locker lock", out)
        out, _, code = cli("lock --grace 4 job -- true")           -- default ttl 10
        assert.equal(2, code)
        assert.matches("ttl/3 = 3%.33 s %(ttl 10 s%)", out)
        out, _, code = cli("lock --grace soon job -- true")
        assert.equal(2, code)
        assert.matches("%-%-grace takes seconds", out)
        out, ok = cli("--ttl 3 lock --grace 1 job -- true")        -- the limit itself is fine
        assert(ok, out)
        assert.same({}, etcd:keys(prefix))
    end)

    it("stops the command before the lease can be taken over when renewals stop", function()
        local p = helper.proxy(etcd)
        local c = etcd:client({ prefix = prefix })
        local marker, pidf = os.tmpname(), os.tmpname()
        -- CMD notes SIGTERM and goes on: only SIGKILL ends it
        local script = ("echo $$ >%s; trap 'echo TERM >>%s' TERM; echo running; while :; do sleep 0.05; done")
            :format(pidf, marker)
        local _, out = start("--ttl 3 --timeout 1 lock jp -- sh -c " .. helper.quote(script), p.endpoint)
        helper.wait_until("the command to run", function() return helper.read(out):match("running") end)
        local child = tonumber(helper.read(pidf):match("%d+"))
        -- a contender queues behind it and notes whether CMD still runs when it gets the lock
        local got = {}
        locker.spawn(function()
            got.lock, got.msg = c:lock("jp", "c", { timeout = 20 })
            got.at, got.child_alive = locker.now(), helper.alive(child)
        end)
        helper.wait_until("the contender to queue", function() return #etcd:keys(prefix .. "jp/") == 2 end)
        -- renewals (and locker's release) no longer reach etcd: the lease
        -- runs out on the server, which is when the contender gets it
        p:mode("drop /v3/kv/deleterange")
        p:mode("drop /v3/lease/keepalive")
        local t_drop = locker.now()
        helper.wait_until("SIGTERM to the command", function() return helper.read(marker):match("TERM") end, 5)
        local t_term = locker.now()
        assert.is_true(helper.alive(child), "SIGTERM ended a command that traps it")
        helper.wait_until("the command to be gone", function() return not helper.alive(child) end, 5)
        local t_gone = locker.now()
        helper.wait_until("the contender to get the lock", function() return got.at end, 15)
        assert.is_truthy(got.lock, got.msg)
        assert.is_false(got.child_alive, "the contender owned the lock while the command ran")
        -- the last renewal that got through was sent before t_drop: the local
        -- deadline was at most ttl - margin (3 - 0.6 s) after it
        assert.is_true(t_gone <= t_drop + 2.4 + 0.3, ("gone %.2f s after the drop"):format(t_gone - t_drop))
        -- the grace ran from jeopardy to the deadline (ttl/3 = 1 s), and the
        -- lease outlived the command by about the margin (0.6 s)
        assert.is_true(t_gone - t_term >= 0.5, ("SIGKILL %.2f s after SIGTERM"):format(t_gone - t_term))
        assert.is_true(got.at - t_gone >= 0.3, ("taken over %.2f s after the command ended"):format(got.at - t_gone))
        assert.equal(137, exit_code(out, 10))           -- CMD's end: SIGKILL
        assert.matches("renewals of the lease are late", helper.read(out))
        got.lock:release()
        p:close()
        c:close()
        os.remove(marker); os.remove(pidf); os.remove(out)
    end)

    it("gets a value, exits 1 when nobody holds the name", function()
        local c = etcd:client({ prefix = prefix })
        local out, _, code = cli("get www")
        assert.equal(1, code)
        assert.equal("", out)
        local l = assert(c:lock("www", "10.1.1.1"))
        local ok
        out, ok = cli("get www")
        assert(ok)
        assert.equal("10.1.1.1\n", out)
        l:release()
        c:close()
    end)

    it("shows a status table and JSON", function()
        local a, b = etcd:client({ prefix = prefix }), etcd:client({ prefix = prefix })
        local la = assert(a:lock("alpha", "10.0.0.1"))
        local lb = assert(a:lock("beta", "b-value"))
        assert(lb:set("b-value"))  -- its key's last write is now after its creation
        locker.spawn(function() b:lock("alpha", "waiting", { timeout = 5 }) end)
        helper.wait_until("a waiter", function() return #etcd:keys(prefix .. "alpha/") == 2 end)
        local out, ok = cli("status")
        assert(ok, out)
        local lines = {}
        for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
        assert.matches("^NAME%s+VALUE%s+TOKEN%s+LEASE%s+WAITERS$", lines[1])
        assert.matches("^alpha%s+10%.0%.0%.1%s+" .. la:token() .. "%s+%x+%s+1$", lines[2])
        assert.matches("^beta%s+b%-value%s+" .. lb:token() .. "%s+%x+%s+0$", lines[3])
        local json
        json, ok = cli("status --json")
        assert(ok, json)
        local cjson = require "cjson"
        local doc = cjson.decode(json)
        assert.equal(prefix, doc.prefix)
        assert.equal("alpha", doc.locks[1].name)
        assert.equal(la:token(), doc.locks[1].token)       -- a JSON number, exact:
        assert.matches('"token":' .. la:token() .. "[,}]", json)
        assert.equal(1, doc.locks[1].waiters)
        assert.equal(0, doc.locks[2].waiters)
        -- revisions, exact numbers too: the read's, and each key's last write
        local list = a:status()
        assert.is_true(doc.revision <= list[1].revision and doc.revision >= lb:token())
        assert.matches('"revision":%d+[,}]', json)
        assert.equal(la:token(), doc.locks[1].mod_revision)  -- never written since
        assert.is_true(doc.locks[2].mod_revision > lb:token())
        assert.equal(list[2].mod_revision, doc.locks[2].mod_revision)
        assert.equal(doc.locks[2].mod_revision, doc.locks[2].holders[1].mod_revision)
        la:release(); lb:release()
        locker.run()
        a:close(); b:close()
    end)

    it("prints one line per change in watch, 'gone' included", function()
        local c = etcd:client({ prefix = prefix })
        local pid, out = helper.spawn(("LOCKER_ENDPOINTS=%s LOCKER_PREFIX=%s exec %s bin/locker watch svc")
            :format(etcd.endpoint, prefix, helper.lua), true)
        local function lines() local t = {} for l in helper.read(out):gmatch("[^\n]+") do t[#t + 1] = l end return t end
        helper.wait_until("the first line", function() return #lines() == 1 end)
        local l = assert(c:lock("svc", "v1"))
        helper.wait_until("v1", function() return #lines() == 2 end)
        assert(l:set("v2"))
        helper.wait_until("v2", function() return #lines() == 3 end)
        l:release()
        helper.wait_until("gone", function() return #lines() == 4 end)
        helper.kill(pid, "TERM")
        helper.wait_until("watch to exit", function() return not helper.alive(pid) end)
        local t = lines()
        assert.matches("^%d%d:%d%d:%d%d%.%d%d%d svc gone$", t[1])
        assert.matches(" svc = v1 %(token %d+%)$", t[2])
        assert.matches(" svc = v2 %(token %d+%)$", t[3])
        assert.matches(" svc gone$", t[4])
        c:close()
    end)

    it("follows every name with status --watch: a line per change when not on a terminal", function()
        local c = etcd:client({ prefix = prefix .. "sw/" })
        local pid, out = helper.spawn(("LOCKER_ENDPOINTS=%s LOCKER_PREFIX=%ssw/ exec %s bin/locker status --watch")
            :format(etcd.endpoint, prefix, helper.lua), true)
        local l1 = assert(c:lock("one", "v1"))
        local function lines() local t = {} for l in helper.read(out):gmatch("[^\n]+") do t[#t + 1] = l end return t end
        helper.wait_until("one's line", function() return #lines() >= 1 end)
        local l2 = assert(c:lock("two", "v2"))
        -- a name new to watch_all is read before it is told: one change at
        -- a time, so the lines come in this order
        helper.wait_until("two's line", function() return #lines() >= 2 end)
        local token1 = l1:token()
        l1:release()
        helper.wait_until("three lines", function() return #lines() >= 3 end)
        local t = lines()
        assert.matches(" one = v1 %(token " .. token1 .. "%)$", t[1])
        assert.matches(" two = v2 %(token %d+%)$", t[2])
        assert.matches(" one gone$", t[3])
        helper.kill(pid, "TERM")
        helper.wait_until("status --watch to exit", function() return not helper.alive(pid) end)
        assert.equal(3, #lines())
        l2:release()
        c:close()
    end)

    it("redraws the status table in place on a terminal at each change, with an AGE column", function()
        local c = etcd:client({ prefix = prefix .. "st/" })
        local held = assert(c:lock("early", "e"))
        -- script(1) gives the command a terminal; its output goes to a file
        local log = os.tmpname()
        local pid = helper.spawn(("LOCKER_ENDPOINTS=%s LOCKER_PREFIX=%sst/ exec script -qfec %s %s")
            :format(etcd.endpoint, prefix, helper.quote(helper.lua .. " bin/locker status --watch"), log), true)
        local function frames() return select(2, helper.read(log):gsub("\27%[H\27%[2J", "")) end
        helper.wait_until("the first frame", function() return helper.read(log):match("early") end)
        local drawn = frames()
        local late = assert(c:lock("late", "l"))
        helper.wait_until("a frame with late", function() return helper.read(log):match("late%s+l%s") end)
        assert.is_true(frames() > drawn)
        local last = helper.read(log):match(".*\27%[H\27%[2J(.*)$")
        assert.matches("NAME%s+VALUE%s+TOKEN%s+LEASE%s+WAITERS%s+AGE", last)
        assert.matches("early%s+e%s+" .. held:token() .. "%s+%x+%s+0%s+>%d+s", last)
        assert.matches("late%s+l%s+" .. late:token() .. "%s+%x+%s+0%s+%d+s", last)
        helper.kill(pid, "TERM")
        helper.wait_until("script to exit", function() return not helper.alive(pid) end, 5)
        held:release(); late:release()
        c:close()
        os.remove(log)
    end)

    it("registers a service: its record held while it runs and its check passes", function()
        local c = etcd:client({ prefix = prefix })
        local web = assert(c:group("web"))
        local flag = os.tmpname()
        os.remove(flag)
        local pid, out = helper.spawn(("LOCKER_ENDPOINTS=%s LOCKER_PREFIX=%s exec %s bin/locker register "
            .. "--group web --check %s --every 0.1 b1 '127.0.0.1:8001 weight=2' -- sleep 30")
            :format(etcd.endpoint, prefix, helper.lua, helper.quote("test -f " .. flag)), true)
        -- not before the first check passes
        helper.wait_until("a failed check", function() return helper.read(out):match("check failed") end, 5)
        assert.is_nil(web:get("b1"))
        local f = assert(io.open(flag, "w"))
        f:close()
        helper.wait_until("registered", function() return web:get("b1") == "127.0.0.1:8001 weight=2" end, 5)
        assert.matches("registered web/b1 = 127.0.0.1:8001 weight=2 %(token %d+%)", helper.read(out))
        os.remove(flag)
        helper.wait_until("released on a failed check", function() return web:get("b1") == nil end, 5)
        f = assert(io.open(flag, "w"))
        f:close()
        helper.wait_until("registered again", function() return web:get("b1") ~= nil end, 5)
        -- SIGTERM: the record goes first, then the command; register exits as it did
        helper.kill(pid, "TERM")
        helper.wait_until("register to exit", function() return not helper.alive(pid) end, 5)
        assert.is_nil(web:get("b1"))
        assert.matches("released web/b1 %(signal 15%)", helper.read(out))
        os.remove(flag)
        c:close()
    end)

    it("register: releases when the command ends, exits with its status, refuses a bad address", function()
        local c = etcd:client({ prefix = prefix })
        local out, ok, code = cli("register s1 127.0.0.1:9 -- sh -c 'sleep 0.3; exit 3'")
        assert.is_false(ok)
        assert.equal(3, code)
        assert.matches("registered s1 = 127.0.0.1:9", out)
        assert.matches("released s1 %(the command exited 3%)", out)
        assert.is_nil(c:get("s1"))
        for _, bad in ipairs({ "localhost:80", "127.0.0.1", "127.0.0.1:80 weight=0" }) do
            out, ok, code = cli("register s2 " .. helper.quote(bad) .. " -- true")
            assert.is_false(ok)
            assert.equal(2, code)
            assert.matches('ADDR "' .. bad:gsub("%p", "%%%0") .. '"', out)
        end
        local _
        out, _, code = cli("register s2 127.0.0.1:80")
        assert.equal(2, code, out)
        assert.matches("needs a command after %-%-", out)
        assert.same({}, etcd:keys(prefix, true))
        c:close()
    end)

    it("holds a name until interrupted", function()
        local c = etcd:client({ prefix = prefix })
        local pid, out = helper.spawn(("LOCKER_ENDPOINTS=%s LOCKER_PREFIX=%s exec %s bin/locker hold h 1.2.3.4")
            :format(etcd.endpoint, prefix, helper.lua), true)
        helper.wait_until("held", function() return helper.read(out):match("held h") end)
        assert.equal("1.2.3.4", c:get("h"))
        helper.kill(pid, "TERM")
        helper.wait_until("hold to exit", function() return not helper.alive(pid) end)
        assert.is_nil(c:get("h"))                 -- released at once, not after the TTL
        -- a normal stop is a release, never a loss
        local log = helper.read(out)
        assert.matches("held h %(token %d+%)\n", log)
        assert.matches("released h %(token %d+%)\n$", log)
        assert.not_matches("lost", log)
        c:close()
    end)

    it("says 'lost' in hold when the record is taken away, and holds it again", function()
        local c = etcd:client({ prefix = prefix })
        local pid, out = helper.spawn(("LOCKER_ENDPOINTS=%s LOCKER_PREFIX=%s exec %s bin/locker hold h2 v")
            :format(etcd.endpoint, prefix, helper.lua), true)
        helper.wait_until("held", function() return helper.read(out):match("held h2") end)
        local key = etcd:keys(prefix .. "h2/")[1]
        etcd:ctl("del " .. helper.quote(key))
        helper.wait_until("lost, then held again", function()
            return select(2, helper.read(out):gsub("held h2", "")) == 2
        end)
        assert.matches("lost h2 %(token %d+%): [^\n]*deleted", helper.read(out))
        helper.kill(pid, "INT")
        helper.wait_until("hold to exit", function() return not helper.alive(pid) end)
        c:close()
    end)

    it("refuses a bad health config with file:line and exit 2", function()
        local path = os.tmpname()
        local f = io.open(path, "w")
        f:write('record "x" {\n  requries = {}\n}\n')
        f:close()
        local out, _, code = cli("health " .. path)
        os.remove(path)
        assert.equal(2, code)
        assert.matches(path:gsub("%p", "%%%0") .. ":1: record 'x': unknown field 'requries'", out)
    end)
end)

describe("locker.json", function()
    local json = require "locker.json"
    it("writes int64 tokens as exact JSON numbers, past 10^14 and 2^53", function()
        assert.equal('{"a":9007199254740993,"b":123456789012345,"c":-7}',
            json.encode({ a = json.int("9007199254740993"), b = json.int(123456789012345), c = json.int(-7) }))
        assert.error_matches(function() json.int("12a") end, "json.int: not an integer: 12a")
    end)
    it("escapes strings, keeps empty arrays, sorts keys, refuses what JSON cannot hold", function()
        assert.equal('{"a":[],"b":"q\\"\\\\\\n\\u0001","c":[1,true,0.5]}',
            json.encode({ c = { 1, true, 0.5 }, b = 'q"\\\n\1', a = json.array() }))
        assert.error_matches(function() json.encode({ f = print }) end, "json: cannot write a function")
        assert.has_error(function() json.encode(0 / 0) end)
    end)
end)

describe("make demo", function()
    it("shows the cascade and the recovery in order", function()
        local preload = os.getenv("LD_PRELOAD")  -- only for the demo's Lua processes
        local out, ok = helper.sh(
            ("LUA_PATH=%q LUA_CPATH=%q sh tools/with-etcd env %s %s examples/mesh_health/demo.lua")
            :format(os.getenv("LUA_PATH"), os.getenv("LUA_CPATH"),
                    preload and ("LD_PRELOAD=%q"):format(preload) or "", helper.lua))
        assert(ok, out)
        assert.matches("blackout complete: c, b, a went down in this order", out)
        assert.matches("recovered: c, b, a came back in this order", out)
        assert.matches("demo OK", out)
        local down_c = out:find("c DOWN")
        local down_a = out:find("a DOWN")
        assert.is_true(down_c < down_a)
    end)
end)

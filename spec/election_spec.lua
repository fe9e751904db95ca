-- Elections against a real etcd: campaign, leader, observe, proclaim and
-- resign, and interop both ways with etcdctl elect (the same keys: prefix
-- NAME "/" hex(lease)).
local helper = require "helper"

describe("elections", function()
    local etcd, n, prefix = nil, 0, nil
    local started = {}
    setup(function() etcd = helper.etcd() end)
    teardown(function() etcd:destroy() end)
    before_each(function()
        n = n + 1
        prefix = "/elect" .. n .. "/"
        started = {}
    end)
    after_each(function()
        for _, pid in ipairs(started) do
            if helper.alive(pid) then helper.kill(pid, "KILL") end
        end
    end)

    local function client(opts)
        opts = opts or {}
        opts.prefix = opts.prefix or prefix
        return etcd:client(opts)
    end

    local function etcdctl(args)
        local pid, out = helper.spawn(("ETCDCTL_API=3 exec etcdctl --endpoints=%s %s")
            :format(etcd.endpoint, args))
        started[#started + 1] = pid
        return pid, out
    end

    local function next_value(w, want)
        local v, ev, msg = w:next(10)
        assert(ev, "no change of leader: " .. tostring(msg))
        assert.equal(want, v)
        return ev
    end

    it("elects, proclaims, resigns, and observes every change in order", function()
        local a, b, c = client(), client(), client()
        local w = c:observe("db")
        next_value(w, nil)                                  -- no leader yet
        assert.is_nil(c:leader("db"))
        local la = assert(a:campaign("db", "10.0.0.1"))
        assert.is_true(la:owned())
        local ev = next_value(w, "10.0.0.1")
        assert.equal(la:token(), ev.token)
        local value, token, rev = c:leader("db")
        assert.equal("10.0.0.1", value)
        assert.equal(la:token(), token)
        assert.is_true(rev >= token)
        -- b waits behind a; a wait=false campaign is refused
        assert.same({ nil, "locked" }, { (select(1, b:campaign("db", "x", { wait = false }))),
            (select(3, b:campaign("db", "x", { wait = false }))) })
        local lb
        local waiting = helper.go(function() lb = assert(b:campaign("db", "10.0.0.2")) end)
        assert(la:proclaim("10.0.0.9"))
        next_value(w, "10.0.0.9")
        assert.equal(la:token(), (select(2, c:leader("db"))))   -- same leader, new value
        -- b's key is there before a resigns (else "no leader" comes first,
        -- rightly: under load b's campaign may not have reached etcd yet)
        helper.wait_until("b to wait behind a", function() return #etcd:keys(prefix .. "db/") == 2 end)
        assert.is_truthy(la:resign())
        assert.is_truthy(la:resign())                            -- idempotent
        helper.wait_until("b to lead", function() return waiting.done end, 10)
        next_value(w, "10.0.0.2")
        assert.equal(lb:token(), (select(2, c:leader("db"))))
        assert.is_nil(la:proclaim("late"))
        lb:resign()
        next_value(w, nil)
        w:cancel()
        a:close(); b:close(); c:close()
    end)

    it("follows a leader elected by etcdctl elect, and takes over when it resigns", function()
        local c = client()
        local w = c:observe("svc")
        next_value(w, nil)
        local pid, out = etcdctl(("elect %s from-etcdctl"):format(helper.quote(prefix .. "svc")))
        next_value(w, "from-etcdctl")
        assert.equal("from-etcdctl", (c:leader("svc")))
        local mine
        local waiting = helper.go(function() mine = assert(c:campaign("svc", "from-locker")) end)
        -- etcdctl resigns on SIGTERM once it has printed its key
        helper.wait_until("etcdctl to print its key", function()
            return helper.read(out):match("from%-etcdctl")
        end, 10)
        helper.wait_until("locker's key to queue behind etcdctl's", function()
            return #etcd:keys(prefix .. "svc/") == 2
        end, 10)
        assert.is_falsy(waiting.done)
        helper.kill(pid, "TERM")
        helper.wait_until("locker to lead after etcdctl", function() return waiting.done end, 10)
        assert.is_true(mine:owned())
        next_value(w, "from-locker")
        mine:resign()
        w:cancel()
        c:close()
    end)

    it("is seen by etcdctl elect -l, proclamations included, and etcdctl queues behind it", function()
        local c = client()
        local leader = assert(c:campaign("job", "first"))
        local _, listen = etcdctl(("elect -l %s"):format(helper.quote(prefix .. "job")))
        helper.wait_until("etcdctl elect -l to see the leader", function()
            return helper.read(listen):match("first")
        end, 10)
        assert(leader:proclaim("second"))
        helper.wait_until("etcdctl elect -l to see the proclamation", function()
            return helper.read(listen):match("second")
        end, 10)
        local _, other = etcdctl(("elect %s theirs"):format(helper.quote(prefix .. "job")))
        helper.wait_until("etcdctl to queue", function()
            return #etcd:keys(prefix .. "job/") == 2
        end, 10)
        assert.equal("", helper.read(other))            -- not leader while we lead
        assert.equal("second", (c:leader("job")))
        leader:resign()
        helper.wait_until("etcdctl to lead", function()
            return helper.read(other):match("theirs")
        end, 10)
        helper.wait_until("etcdctl elect -l to see it", function()
            return helper.read(listen):match("theirs")
        end, 10)
        assert.equal("theirs", (c:leader("job")))
        c:close()
    end)

    it("ends leadership when the leader's key is deleted by someone else", function()
        local c, d = client(), client()
        local changes = {}
        local leader = assert(c:campaign("x", "me", { on_change = function(owned, _, _, code)
            changes[#changes + 1] = owned and "leader" or code
        end }))
        local w = d:observe("x")
        next_value(w, "me")
        etcd:ctl("del " .. helper.quote(leader:key()))
        next_value(w, nil)
        helper.wait_until("the leader to hear of it", function()
            return changes[#changes] == "lost"
        end, 10)
        assert.is_false(leader:owned())
        local rev, _, code = leader:put("/elect-data/x", "stale")
        assert.is_nil(rev)
        assert.equal("not_owner", code)
        c:close(); d:close()
    end)

    -- etcd's own Go client (concurrency.Election), built by make build/go-elect
    local go_elect = os.getenv("LOCKER_GO_ELECT")
    local have_go = go_elect and io.open(go_elect) and true
    local function go(args)
        local pid, out = helper.spawn(("exec %s %s %s"):format(go_elect, etcd.endpoint, args))
        started[#started + 1] = pid
        return pid, out
    end
    local function go_it(what, fn)
        if have_go then it(what, fn) else pending(what .. " (no " .. tostring(go_elect) .. ")") end
    end

    go_it("interoperates with Go's concurrency.Election: its leader, proclamations and resignation", function()
        local c = client()
        local w = c:observe("go")
        next_value(w, nil)
        local pid, out = go(("campaign %s go-1 go-2"):format(helper.quote(prefix .. "go")))
        helper.wait_until("Go to lead", function() return helper.read(out):match("leader go%-1") end, 20)
        next_value(w, "go-1")
        helper.kill(pid, "USR1")                        -- Go proclaims go-2
        next_value(w, "go-2")
        assert.equal("go-2", (c:leader("go")))
        local mine
        local waiting = helper.go(function() mine = assert(c:campaign("go", "lua-1")) end)
        helper.wait_until("locker to queue behind Go", function()
            return #etcd:keys(prefix .. "go/") == 2
        end, 10)
        assert.is_falsy(waiting.done)
        helper.kill(pid, "TERM")                        -- Go resigns
        helper.wait_until("Go to resign", function() return helper.read(out):match("resigned") end, 10)
        helper.wait_until("locker to lead", function() return waiting.done end, 10)
        next_value(w, "lua-1")
        mine:resign()
        c:close()
    end)

    go_it("is observed by Go's concurrency.Election, and Go waits behind it", function()
        local c = client()
        local leader = assert(c:campaign("lua", "lua-1"))
        local _, seen = go(("observe %s"):format(helper.quote(prefix .. "lua")))
        helper.wait_until("Go to observe the leader", function()
            return helper.read(seen):match("leader lua%-1")
        end, 20)
        assert(leader:proclaim("lua-2"))
        helper.wait_until("Go to observe the proclamation", function()
            return helper.read(seen):match("leader lua%-2")
        end, 10)
        local _, out = go(("campaign %s go-1"):format(helper.quote(prefix .. "lua")))
        helper.wait_until("Go to queue", function() return #etcd:keys(prefix .. "lua/") == 2 end, 20)
        assert.equal("", helper.read(out))              -- not leader while locker leads
        leader:resign()
        helper.wait_until("Go to lead", function() return helper.read(out):match("leader go%-1") end, 10)
        helper.wait_until("Go's observer to see it", function()
            return helper.read(seen):match("leader go%-1")
        end, 10)
        assert.equal("go-1", (c:leader("lua")))
        c:close()
    end)

    it("locker elect runs a command while leader; --observe prints each leader", function()
        local name = prefix .. "cli"
        local pid, seen = helper.spawn(("LOCKER_ENDPOINTS=%s LOCKER_PREFIX=%s exec %s bin/locker elect --observe cli")
            :format(etcd.endpoint, prefix, helper.lua), true)
        started[#started + 1] = pid
        helper.wait_until("the observer to say there is no leader", function()
            return helper.read(seen):match("cli no leader\n")
        end, 10)
        local _, listen = etcdctl(("elect -l %s"):format(helper.quote(name)))
        -- the command sees itself as leader from etcd's own client
        local script = ("for i in $(seq 100); do grep -q from-cli %s && break; sleep 0.05; done; "
            .. "grep -q from-cli %s && echo \"leader token=$LOCKER_TOKEN\" && exit 7")
            :format(listen, listen)
        local out, _, code = helper.locker(etcd, "elect cli from-cli -- sh -c " .. helper.quote(script),
            "LOCKER_PREFIX=" .. prefix)
        assert.equal(7, code, out)
        local token = tonumber(out:match("leader token=(%d+)"))
        assert.is_truthy(token, out)
        helper.wait_until("the observer to see the leader come and go", function()
            local t = helper.read(seen)
            return t:match("cli = from%-cli %(token " .. token .. "%)\n.*cli no leader\n")
        end, 10)
        assert.same({}, etcd:keys(name .. "/"))
        -- usage
        out, _, code = helper.locker(etcd, "elect cli -- true", "LOCKER_PREFIX=" .. prefix)
        assert.equal(2, code)
        assert.matches("elect takes NAME and VALUE before %-%-", out)
        out, _, code = helper.locker(etcd, "elect --observe a b", "LOCKER_PREFIX=" .. prefix)
        assert.equal(2, code)
        assert.matches("elect %-%-observe takes exactly one NAME", out)
    end)

    it("refuses bad arguments by name", function()
        local c = client()
        assert.has_error(function() c:campaign("a/b", "v") end,
            'client:campaign: name "a/b" contains \'/\' (it would reach into other locks\' keys)')
        assert.has_error(function() c:campaign("a") end,
            "client:campaign: value must be a string (got nil): it is what the leader proclaims")
        assert.has_error(function() c:campaign("a", "v", { limit = 2 }) end,
            "client:campaign: an election has one leader: it takes no limit")
        assert.has_error(function() c:campaign("a", "v", { timeout = -1 }) end,
            "client:campaign: option 'timeout' must be a number of seconds >= 0 (got -1)")
        assert.has_error(function() c:observe("a", 5) end,
            "client:observe: fn must be a function (got number)")
        assert.has_error(function() c:leader("") end, "client:leader: name is empty")
        local leader = assert(c:campaign("a", "v"))
        assert.has_error(function() leader:proclaim(false) end,
            "leader:proclaim: value must be a string (got boolean)")
        leader:resign()
        c:close()
        assert.same({ nil, "client is closed", "closed" }, { c:leader("a") })
    end)
end)

-- Health records against a real etcd: cascade, k of n, hold-down, checks,
-- recovery, state and log hook, the value published after a wait or a loss.
local locker = require "locker"
local health = require "locker.health"
local helper = require "helper"

describe("health records", function()
    local etcd, n, prefix
    local running = {}
    setup(function() etcd = helper.etcd() end)
    teardown(function() etcd:destroy() end)
    before_each(function()
        n = (n or 0) + 1
        prefix = "/health" .. n .. "/"
    end)
    after_each(function()
        for _, r in ipairs(running) do r.h:stop(); r.client:close() end
        running = {}
    end)

    local function client() return etcd:client({ prefix = prefix }) end

    -- Runs a config in a client of its own; returns the Health and its log.
    local function start(src)
        local spec = assert(health.parse(src, "=test"))
        local c = client()
        local log = {}
        local h = health.start(c, spec, { log = function(_, ev) log[#log + 1] = ev end })
        running[#running + 1] = { h = h, client = c }
        return h, log
    end

    -- An observer of records: up[name] is true while someone holds it.
    local function observer(names)
        local c = client()
        local up, history = {}, {}
        for _, name in ipairs(names) do
            c:watch(name, function(v)
                up[name] = v ~= nil
                history[#history + 1] = name .. (v and " up" or " down")
            end)
        end
        running[#running + 1] = { h = { stop = function() end }, client = c }
        return up, history
    end

    it("cascades a -> b -> c down and back up", function()
        local up, history = observer({ "a", "b", "c" })
        local c = client()
        local lc = assert(c:lock("c", "c-addr"))
        start('record "b" { value = "b-addr", requires = { "c" } }')
        start('record "a" { value = "a-addr", requires = { "b" } }')
        helper.wait_until("a and b up", function() return up.a and up.b end)
        local mark = #history
        lc:release()
        helper.wait_until("a down", function() return up.a == false end)
        assert.same({ "c down", "b down", "a down" }, { history[mark + 1], history[mark + 2], history[mark + 3] })
        mark = #history
        lc = assert(c:lock("c", "c-addr"))
        helper.wait_until("a up again", function() return up.a end)
        assert.same({ "c up", "b up", "a up" }, { history[mark + 1], history[mark + 2], history[mark + 3] })
        lc:release()
        c:close()
    end)

    it("holds a group member's record under the group, while its requirement is up", function()
        local c = client()
        local web = assert(c:group("web"))
        local seen = {}
        web:watch_all(function(v, ev) seen[ev.name] = v end)
        local lc = assert(c:lock("db", "db-addr"))
        start('record "b1" { group = "web", value = "127.0.0.1:8081", requires = { "db" } }')
        helper.wait_until("web/b1 held", function() return seen.b1 == "127.0.0.1:8081" end)
        assert.is_nil(c:get("b1"))  -- not a name of the base prefix
        lc:release()
        helper.wait_until("web/b1 dropped with db", function() return seen.b1 == nil end)
        -- values computed at run time must be addresses too: kept back, said once
        local _, log = start([[
record "b2" { group = "web", value = function() return "not-an-address" end }
record "b3" { group = "web", value = "127.0.0.1:8083", every = 0.05,
              check = function() return true, "localhost:8083" end }
]])
        helper.wait_until("web/b3 held", function() return seen.b3 == "127.0.0.1:8083" end)
        helper.wait_until("both refusals said", function()
            local errors = 0
            for _, ev in ipairs(log) do
                if ev.state == "error" and tostring(ev.reason):find("not", 1, true) then errors = errors + 1 end
            end
            return errors >= 2
        end)
        locker.sleep(0.3)  -- more checks ran: the value stays, said once
        assert.equal("127.0.0.1:8083", seen.b3)
        assert.is_nil(seen.b2)
        local said = 0
        for _, ev in ipairs(log) do if ev.state == "error" and ev.name == "b3" then said = said + 1 end end
        assert.equal(1, said)
        c:close()
    end)

    it("drops only when k of n requirements are down", function()
        local up = observer({ "r" })
        local c = client()
        local deps = {}
        for _, d in ipairs({ "p", "q", "s" }) do deps[d] = assert(c:lock(d, "x")) end
        local h = start('record "r" { requires = { "p", "q", "s" }, drop_when = 2 }')
        helper.wait_until("r up", function() return up.r and h:state().records.r.held end)
        deps.p:release()
        helper.wait_until("r to see p down", function()
            return h:state().dependencies.p.up == false
        end)
        assert.is_true(h:state().records.r.held)  -- one of three down: still held
        deps.q:release()
        helper.wait_until("r down", function() return up.r == false end)
        assert.matches("p, q down", h:state().records.r.reason)
        deps.q = assert(c:lock("q", "x"))
        helper.wait_until("r back", function() return up.r end)
        deps.q:release(); deps.s:release()
        c:close()
    end)

    it("does not flap with a flapping dependency (hold_down)", function()
        local up, history = observer({ "r" })
        local c = client()
        local dep = assert(c:lock("d", "x"))
        local h = start('record "r" { requires = { "d" }, hold_down = 0.6 }')
        helper.wait_until("r up", function() return up.r and h:state().records.r.held end)
        local token = h:state().records.r.token
        assert.is_number(token)
        local mark = #history
        for _ = 1, 3 do  -- down for ~0.1 s at a time
            dep:release()
            helper.wait_until("d seen down", function() return h:state().dependencies.d.up == false end)
            locker.sleep(0.1)
            dep = assert(c:lock("d", "x"))
            helper.wait_until("d seen up", function() return h:state().dependencies.d.up end)
        end
        assert.equal(mark, #history)               -- r never went away
        assert.equal(token, h:state().records.r.token)
        local t0 = locker.now()
        dep:release()                               -- now for good
        helper.wait_until("r down", function() return up.r == false end)
        assert.is_true(locker.now() - t0 >= 0.55, "dropped after " .. (locker.now() - t0))
        c:close()
    end)

    it("waits hold_up before coming back", function()
        local up = observer({ "r" })
        local c = client()
        start('record "r" { requires = { "d" }, hold_up = 0.5 }')
        locker.sleep(0.1)
        assert.is_falsy(up.r)
        local t0 = locker.now()
        local dep = assert(c:lock("d", "x"))
        helper.wait_until("r up", function() return up.r end)
        assert.is_true(locker.now() - t0 >= 0.45, "back after " .. (locker.now() - t0))
        dep:release()
        c:close()
    end)

    it("holds a record while its check passes, with the value it returns", function()
        local up = observer({ "svc" })
        _G.health_check_ok, _G.health_check_value = true, "10.0.0.1"
        local h, log = start([[
record "svc" {
    value = "initial",
    every = 0.1,
    check = function() return health_check_ok, health_check_value end,
}]])
        local c = client()
        helper.wait_until("svc up", function() return up.svc and c:get("svc") == "10.0.0.1" end)
        _G.health_check_value = "10.0.0.2"
        helper.wait_until("the new value", function() return c:get("svc") == "10.0.0.2" end)
        _G.health_check_ok = false
        helper.wait_until("svc down", function() return up.svc == false end)
        assert.equal("failing", h:state().records.svc.check)
        _G.health_check_ok = true
        local function history()
            local kinds = {}
            for _, ev in ipairs(log) do kinds[#kinds + 1] = ev.kind .. ":" .. ev.state end
            return table.concat(kinds, " ")
        end
        -- the observer and the holder learn of it through different clients:
        -- wait for both
        helper.wait_until("svc back", function()
            return up.svc and history():match("record:held$")
        end)
        assert.matches("check:failing.*record:dropped.*check:ok.*record:held$", history())
        c:close()
        _G.health_check_ok, _G.health_check_value = nil, nil
    end)

    -- The keys under NAME's directory in etcd, oldest first: { key =, value = }.
    local function keys_of(name)
        local out, ok = etcd:ctl("get --prefix --sort-by=CREATE --order=ASCEND "
                                 .. helper.quote(prefix .. name .. "/"))
        assert(ok, out)
        local list, lines = {}, {}
        for line in (out .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = line end
        for i = 1, #lines - 1, 2 do
            if lines[i] ~= "" then list[#list + 1] = { key = lines[i], value = lines[i + 1] } end
        end
        return list
    end

    -- A record "svc" whose check passes every 0.05 s with the value
    -- probe.value; probe.calls counts its runs.
    local probe
    local function valued_record()
        probe = { value = "v1", calls = 0 }
        _G.health_probe = probe
        return start([[
record "svc" {
    value = "initial",
    every = 0.05,
    check = function() health_probe.calls = health_probe.calls + 1; return true, health_probe.value end,
}]])
    end

    -- Waits until the check ran twice more (so a run that began after now
    -- saw the current probe.value).
    local function checks_ran()
        local mark = probe.calls
        helper.wait_until("two more checks", function() return probe.calls >= mark + 2 end)
    end

    -- Asserts the owner of "svc" is the record with value, in etcd (through
    -- etcdctl and another client) and in the record's state, and stays so
    -- while the check runs on.
    local function publishes(h, value)
        local c = client()
        local keys
        local ok, err = pcall(helper.wait_until, "etcd to show " .. value, function()
            keys = keys_of("svc")
            return h:state().records.svc.held and #keys == 1 and keys[1].value == value
        end, 5)
        if not ok then
            local shown = {}
            for _, kv in ipairs(keys) do shown[#shown + 1] = kv.value end
            error(("%s; etcd shows { %s }, the record is %s"):format(err, table.concat(shown, ", "),
                  h:state().records.svc.held and "held" or "not held"), 2)
        end
        for _ = 1, 3 do
            checks_ran()
            keys = keys_of("svc")
            assert.equal(1, #keys)
            assert.equal(value, keys[1].value)
            assert.equal(value, c:get("svc"))
            assert.is_true(h:state().records.svc.held)
            assert.equal(value, h:state().records.svc.value)
        end
        c:close()
    end

    it("acquires with the value its check computed while it waited", function()
        local c = client()
        local other = assert(c:lock("svc", "other"))
        local h = valued_record()
        -- its key waits behind the other owner's, with the check's value
        helper.wait_until("the record's key behind the owner", function()
            local keys = keys_of("svc")
            return #keys == 2 and keys[1].value == "other" and keys[2].value == "v1"
        end)
        assert.is_false(h:state().records.svc.held)
        probe.value = "v2"
        checks_ran()
        assert.equal("v2", h:state().records.svc.value)
        assert.is_false(h:state().records.svc.held)
        other:release()
        publishes(h, "v2")
        c:close()
        _G.health_probe = nil
    end)

    it("re-acquires with the value its check computed after a loss", function()
        local h = valued_record()
        publishes(h, "v1")
        probe.value = "v2"          -- set while held
        publishes(h, "v2")
        -- another client queues behind the record; the record's key is deleted
        -- behind its back: the other owns it, the record (keep) queues again
        local c = client()
        local box = helper.go(function() return c:lock("svc", "other") end)
        helper.wait_until("the other client's key behind the record", function()
            return #keys_of("svc") == 2
        end)
        local keys = keys_of("svc")
        assert.equal("v2", keys[1].value)
        assert.equal("other", keys[2].value)
        local out, ok = etcd:ctl("del " .. helper.quote(keys[1].key))
        assert(ok, out)
        helper.wait_until("the other client to own it", function() return box.done end)
        local other = assert(box.r[1], box.r[2])
        helper.wait_until("the record to queue again", function()
            keys = keys_of("svc")
            return not h:state().records.svc.held and #keys == 2 and keys[1].value == "other"
                and keys[2].value == "v2"
        end)
        probe.value = "v3"          -- changed while the record waits
        checks_ran()
        assert.is_false(h:state().records.svc.held)
        other:release()
        publishes(h, "v3")
        c:close()
        _G.health_probe = nil
    end)

    it("treats a check that raises as failing, and says why", function()
        local up = observer({ "e" })
        local h = start('record "e" { every = 0.1, check = function() error("probe refused") end }')
        helper.wait_until("a failing check", function() return h:state().records.e.check == "failing" end)
        assert.matches("probe refused", h:state().records.e.reason)
        assert.is_falsy(up.e)
    end)

    it("calls watch handlers up, change and down", function()
        local calls = {}
        _G.health_calls = calls
        start([[
watch "w" {
    up = function(v) health_calls[#health_calls + 1] = "up " .. v end,
    change = function(v) health_calls[#health_calls + 1] = "change " .. v end,
    down = function() health_calls[#health_calls + 1] = "down" end,
}]])
        local c = client()
        helper.wait_until("the first down", function() return #calls == 1 end)
        local l = assert(c:lock("w", "v1"))
        helper.wait_until("up", function() return #calls == 2 end)
        assert(l:set("v2"))
        helper.wait_until("change", function() return #calls == 3 end)
        l:release()
        helper.wait_until("down", function() return #calls == 4 end)
        assert.same({ "down", "up v1", "change v2", "down" }, calls)
        _G.health_calls = nil
        c:close()
    end)

    it("logs what the engine tells (a failover) in client:on_event()'s words, and a loss with its reason", function()
        local proxy = helper.proxy(etcd)
        local c = etcd:client({ prefix = prefix, endpoints = { proxy.endpoint, etcd.endpoint }, timeout = 1 })
        local log, lines = {}, {}
        local h = health.start(c, assert(health.parse('record "f" { value = "x" }', "=test")),
            { log = function(line, ev) lines[#lines + 1] = line; log[#log + 1] = ev end })
        running[#running + 1] = { h = h, client = c }
        local function seen(kind, state)
            for i, ev in ipairs(log) do
                if ev.kind == kind and (state == nil or ev.state == state) then return ev, lines[i] end
            end
        end
        helper.wait_until("f held", function() return seen("record", "held") end)
        proxy:mode("blackhole")
        helper.wait_until("a failover logged", function() return seen("failover") end, 10)
        local ev, line = seen("failover")
        assert.equal(proxy.endpoint, ev.endpoint)
        assert.equal(locker.event_text(ev), line)
        etcd:ctl("del " .. helper.quote(etcd:keys(prefix .. "f/")[1]))
        helper.wait_until("the loss logged", function() return seen("record", "lost") end, 10)
        ev, line = seen("record", "lost")
        assert.equal("lost", ev.code)
        assert.matches("^record f: lost: lock 'f': its key ", line)
    end)

    it("releases its records at once when stopped", function()
        local up = observer({ "s" })
        local h = start('record "s" { value = "x" }')
        helper.wait_until("s up", function() return up.s end)
        h:stop()
        helper.wait_until("s down", function() return up.s == false end)
    end)
end)

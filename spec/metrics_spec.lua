-- Metrics against a real etcd: each counter driven by the scenario that
-- moves it (acquire, release, a loss by each reason, a failover from a
-- black-holed endpoint, a stream reconnect, a resync after compaction, late
-- renewals behind a delaying proxy), and the exposition read back by
-- Prometheus' own text parser (Debian's python3-prometheus-client).
local locker = require "locker"
local helper = require "helper"

local parse = helper.prometheus

describe("metrics", function()
    local etcd, n, prefix = nil, 0, nil
    setup(function() etcd = helper.etcd() end)
    teardown(function() etcd:destroy() end)
    before_each(function()
        n = n + 1
        prefix = "/metrics" .. n .. "/"
    end)

    local function client(opts)
        opts = opts or {}
        opts.prefix = opts.prefix or prefix
        return etcd:client(opts)
    end

    it("counts acquisitions, releases, waits and requests, and shows the locks held", function()
        local c, other = client(), client()
        local m0 = c:metrics()
        assert.equal(0, m0.acquisitions)
        local l = assert(c:lock("job", "x"))
        local m = c:metrics()
        assert.equal(1, m.acquisitions)
        assert.equal(1, m.locks_held)
        assert.equal(0, m.locks_waiting)
        assert.equal(1, m.acquire_seconds.count)
        assert.is_true(m.requests.txn.ok >= 1)
        assert.is_true(m.requests.lease_grant.ok == 1)
        assert.equal("live", m.session_state)
        assert.is_true(m.lease_deadline_seconds > 0 and m.lease_deadline_seconds <= c.ttl)
        -- a waiter shows in the gauge while it waits
        local box = helper.go(function() return other:lock("job", "y", { timeout = 10 }) end)
        helper.wait_until("the waiter counted", function() return other:metrics().locks_waiting == 1 end)
        assert(l:release())
        helper.wait_until("the waiter's grant", function() return box.done end)
        local l2 = assert(box.r[1])
        m = c:metrics()
        assert.equal(1, m.releases)
        assert.equal(0, m.locks_held)
        local mo = other:metrics()
        assert.equal(0, mo.locks_waiting)
        assert.equal(1, mo.locks_held)
        -- the wait was as long as the other one held it, at least
        assert.is_true(mo.acquire_seconds.sum > 0)
        -- a try-lock that fails is an error by its code
        assert.is_nil((c:lock("job", "z", { wait = false })))
        assert.equal(1, c:metrics().errors.locked)
        l2:release()
        c:close(); other:close()
        -- after close, the last figures
        assert.equal(1, c:metrics().acquisitions)
    end)

    it("counts a loss by its reason: a deleted key ('lost'), renewals that never come ('lease_lost')", function()
        local proxy = helper.proxy(etcd)
        local c = client({ endpoints = { proxy.endpoint }, ttl = 3 })
        local l = assert(c:lock("a", "x"))
        etcd:ctl("del " .. helper.quote(l:key()))
        helper.wait_until("the loss", function() return not l:owned() end, 10)
        helper.wait_until("the loss counted", function() return c:metrics().losses.lost == 1 end)
        l:release()
        local l2 = assert(c:lock("b", "x"))
        proxy:mode("drop /v3/lease/keepalive")  -- the lease runs out locally
        helper.wait_until("the lease loss counted", function() return c:metrics().losses.lease_lost == 1 end, 10)
        assert.is_false(l2:owned())
        local m = c:metrics()
        assert.equal(0, m.locks_held)
        assert.equal(1, m.losses.lost)
        assert.is_true(m.renewals_failed >= 1)
        l2:release()
        c:close()
        proxy:close()
    end)

    it("counts a failover away from a black-holed endpoint, and the endpoint in use", function()
        local proxy = helper.proxy(etcd)
        local c = client({ endpoints = { proxy.endpoint, etcd.endpoint }, timeout = 1 })
        local function get(name)  -- nobody holds it: nil, and no message
            local v, msg = c:get(name)
            assert.is_nil(msg)
            return v
        end
        get("x")
        assert.equal(1, c:metrics().current_endpoint)
        proxy:mode("blackhole")
        get("y")  -- answered by the second member within the timeout
        local m = c:metrics()
        assert.is_true(m.failovers[1] >= 1)
        assert.equal(0, m.failovers[2])
        assert.equal(2, m.current_endpoint)
        local text = locker.metrics_text(c)
        local samples = parse(text)
        assert.equal(1, samples[('locker_current_endpoint{endpoint=%s}'):format(etcd.endpoint)])
        assert.is_true(samples[('locker_failovers_total{endpoint=%s}'):format(proxy.endpoint)] >= 1)
        c:close()
        proxy:close()
    end)

    it("counts stream reconnects by reason, and a resync after compaction", function()
        local proxy = helper.proxy(etcd)
        local c = client({ endpoints = { proxy.endpoint } })
        local a = client()
        local seen = 0
        c:watch("w", function() seen = seen + 1 end)
        helper.wait_until("the first event", function() return seen == 1 end)
        local l = assert(a:lock("w", "v1"))
        helper.wait_until("v1", function() return seen == 2 end)
        local m = c:metrics()
        assert.equal(0, m.reconnects.ended)
        assert.is_true(m.delivery_seconds.count >= 2)
        assert.is_true(m.stream_message_age_seconds >= 0)
        proxy:stop()  -- the stream is cut, and cannot come back yet
        assert(l:set("v2"))
        assert(l:set("v3"))
        local out, ok = etcd:ctl("compact " .. a:owner("w").revision)
        assert(ok, out)
        proxy:restart()
        helper.wait_until("the resync", function() return c:metrics().resyncs == 1 end, 15)
        assert.is_true(c:metrics().reconnects.ended >= 1)
        l:release()
        c:close(); a:close()
        proxy:close()
    end)

    it("counts late renewals and jeopardy behind a proxy that delays answers", function()
        local proxy = helper.proxy(etcd)
        -- ttl 3: renewals every 1 s (each within 1 s), deadline 2.4 s after
        -- a renewal left, jeopardy 1 s before it: an answer 0.6 s late
        -- arrives in jeopardy, before the deadline
        local c = client({ endpoints = { proxy.endpoint }, ttl = 3, timeout = 2.5 })
        local l = assert(c:lock("slow", "x"))
        proxy:mode("delay 600")
        helper.wait_until("a late renewal", function()
            local m = c:metrics()
            return m.renewals_late >= 1 and m.jeopardy >= 1
        end, 15)
        local m = c:metrics()
        assert.is_true(m.renewals_sent >= 1)
        assert.is_true(m.keepalive_seconds.sum >= 0.6)  -- the delay shows in the round trip
        proxy:mode("delay 0")
        helper.wait_until("live again", function() return c:metrics().session_state == "live" end, 10)
        l:release()
        c:close()
        proxy:close()
    end)

    it("renders Prometheus' text format, which Prometheus' own parser reads back", function()
        local c = client()
        local l = assert(c:lock("p", "x"))
        c:watch("p", function() end)
        local tricky = 'a"b\\c\nd'
        local text = locker.metrics_text(c, { worker = tricky, zone = 3 })
        local samples, types = parse(text)
        local esc = 'a"b\\\\c\\nd'  -- the parser's value, unicode_escape'd by the script
        local function s(name, labels)
            return samples[name .. "{" .. labels .. "worker=" .. esc .. ",zone=3}"]
        end
        assert.equal("counter", types.locker_acquisitions)  -- _total is the sample's suffix
        assert.equal("gauge", types.locker_locks_held)
        assert.equal("histogram", types.locker_acquire_wait_seconds)
        assert.equal(1, s("locker_acquisitions_total", ""))
        assert.equal(1, s("locker_locks_held", ""))
        assert.equal(1, s("locker_session_state", "state=live,"))
        assert.equal(0, s("locker_session_state", "state=jeopardy,"))
        -- a histogram: cumulative buckets up to +Inf == count
        local count = s("locker_acquire_wait_seconds_count", "")
        assert.equal(1, count)
        assert.equal(count, s("locker_acquire_wait_seconds_bucket", "le=+Inf,"))
        local last = 0
        for _, le in ipairs({ "0.0001", "0.001", "0.01", "0.1", "1", "10" }) do
            local b = s("locker_acquire_wait_seconds_bucket", "le=" .. le .. ",")
            assert(b, "no bucket le=" .. le)
            assert.is_true(b >= last)
            last = b
        end
        assert.is_true(s("locker_requests_total", "kind=txn,result=ok,") >= 1)
        -- HELP and TYPE for every family, once
        local helps = select(2, text:gsub("\n# HELP ", "")) + (text:match("^# HELP ") and 1 or 0)
        local kinds = select(2, text:gsub("# TYPE ", ""))
        assert.equal(kinds, helps)
        assert.is_true(kinds >= 20)
        -- several clients in one scrape, each with its labels
        local c2 = client()
        local both = parse(locker.metrics_text({ { c, { worker = "1" } }, { c2, { worker = "2" } } }))
        assert.equal(1, both["locker_acquisitions_total{worker=1}"])
        assert.equal(0, both["locker_acquisitions_total{worker=2}"])
        l:release()
        c:close(); c2:close()
    end)

    it("prints one scrape with locker status --prometheus: each name's state, then the client's", function()
        local a = client()
        local l = assert(a:lock("db", "10.0.0.1"))
        local s1 = assert(a:lock("pool", "w1", { limit = 2 }))
        local out, ok = helper.locker(etcd, "status --prometheus", "LOCKER_PREFIX=" .. prefix)
        assert(ok, out)
        local samples, types = parse(out)
        assert.equal("gauge", types.locker_name_holders)
        local function at(fam, name) return samples[('%s{name=%s,prefix=%s}'):format(fam, name, prefix)] end
        assert.equal(1, at("locker_name_holders", "db"))
        assert.equal(0, at("locker_name_waiters", "db"))
        assert.equal(1, at("locker_name_limit", "db"))
        assert.equal(l:token(), at("locker_name_token", "db"))
        assert.equal(2, at("locker_name_limit", "pool"))
        assert.equal(s1:token(), at("locker_name_token", "pool"))
        -- the CLI's own client: its status request (a range), counted
        assert.is_true((samples[('locker_requests_total{kind=range,prefix=%s,result=ok}'):format(prefix)] or 0) >= 1)
        out = helper.locker(etcd, "status --prometheus --json", "LOCKER_PREFIX=" .. prefix)
        assert.matches("one or the other", out)
        l:release(); s1:release()
        a:close()
    end)

    it("refuses what is not a client or not a label set, naming it", function()
        local c = client()
        assert.has_error(function() locker.metrics_text(nil) end,
                         "locker.metrics_text: expected a client (got nil)")
        assert.has_error(function() locker.metrics_text(c, { ["bad-name"] = "x" }) end,
                         "locker.metrics_text: label name bad-name is not a Prometheus label name")
        assert.has_error(function() locker.metrics_text(c, { ok = {} }) end,
                         "locker.metrics_text: label 'ok' must be a string or a number (got table)")
        assert.has_error(function() locker.metrics_text({ { {}, {} } }) end,
                         "locker.metrics_text: item 1 must be { client, labels }")
        c:close()
    end)
end)

describe("client:on_event()", function()
    local etcd, n, prefix = nil, 0, nil
    setup(function() etcd = helper.etcd() end)
    teardown(function() etcd:destroy() end)
    before_each(function()
        n = n + 1
        prefix = "/events" .. n .. "/"
    end)

    local function client(opts)
        opts = opts or {}
        opts.prefix = opts.prefix or prefix
        return etcd:client(opts)
    end

    -- the kinds seen, in order, and the events by kind
    local function recorder()
        local r = { kinds = {}, by = {} }
        r.fn = function(ev)
            r.kinds[#r.kinds + 1] = ev.kind
            r.by[ev.kind] = r.by[ev.kind] or {}
            table.insert(r.by[ev.kind], ev)
        end
        return r
    end

    it("tells acquired, released and lost, with name, token and reason", function()
        local r = recorder()
        local c = client({ on_event = r.fn })
        local l = assert(c:lock("job", "x"))
        local token = l:token()
        assert(l:release())
        local l2 = assert(c:lock("job", "y"))
        etcd:ctl("del " .. helper.quote(l2:key()))
        helper.wait_until("the loss told", function() return r.by.lost end, 10)
        assert.same({ "acquired", "released", "acquired", "lost" }, r.kinds)
        assert.equal("job", r.by.acquired[1].name)
        assert.equal(token, r.by.acquired[1].token)
        assert.equal(token, r.by.released[1].token)
        assert.equal(r.by.acquired[2].token, r.by.lost[1].token)
        assert.is_true(r.by.acquired[2].token > token)
        assert.equal("lost", r.by.lost[1].code)
        assert.matches("job", r.by.lost[1].reason)
        assert.is_true(math.abs(r.by.lost[1].time - os.time()) < 60)
        l2:release()
        assert.equal(4, #r.kinds)  -- a release after a loss is not a release
        c:close()
    end)

    it("tells a failover and a stream reconnect, naming the endpoint", function()
        local r = recorder()
        local proxy = helper.proxy(etcd)
        local c = client({ endpoints = { proxy.endpoint, etcd.endpoint }, timeout = 1 })
        c:on_event(r.fn)
        local l = assert(c:lock("f", "x"))
        proxy:mode("blackhole")
        helper.wait_until("the failover told", function() return r.by.failover end, 10)
        assert.equal(proxy.endpoint, r.by.failover[1].endpoint)
        assert.matches(etcd.endpoint, r.by.failover[1].reason, 1, true)
        -- the stream was on the proxy: it moves, and says so
        helper.wait_until("the reconnect told", function() return r.by.reconnect end, 10)
        assert.is_string(r.by.reconnect[1].reason)
        assert.is_true(l:owned())
        l:release()
        c:close()
        proxy:close()
    end)

    it("tells jeopardy and a late renewal behind a proxy that delays answers", function()
        local r = recorder()
        local proxy = helper.proxy(etcd)
        local c = client({ endpoints = { proxy.endpoint }, ttl = 3, timeout = 2.5, on_event = r.fn })
        local l = assert(c:lock("slow", "x"))
        proxy:mode("delay 600")
        helper.wait_until("jeopardy and a late renewal told", function()
            return r.by.jeopardy and r.by.renewed_late
        end, 15)
        assert.equal(proxy.endpoint, r.by.renewed_late[1].endpoint)
        proxy:mode("delay 0")
        l:release()
        c:close()
        proxy:close()
    end)

    it("survives a callback that raises: the error goes to on_error, the next event comes", function()
        local errors, kinds = {}, {}
        locker.on_error(function(msg) errors[#errors + 1] = msg end)
        local c = client({ on_event = function(ev)
            kinds[#kinds + 1] = ev.kind
            if #kinds == 1 then error("boom in on_event") end
        end })
        local l = assert(c:lock("e", "x"))
        assert(l:release())
        helper.wait_until("both events", function() return #kinds == 2 end)
        assert.same({ "acquired", "released" }, kinds)
        assert.equal(1, #errors)
        assert.matches("boom in on_event", errors[1])
        locker.on_error(function(msg) io.stderr:write(msg, "\n") end)
        c:close()
    end)

    it("refuses a callback that is not a function", function()
        local c = client()
        assert.has_error(function() c:on_event(5) end, "client:on_event: fn must be a function (got number)")
        assert.has_error(function() locker.new{ endpoints = { etcd.endpoint }, on_event = "x" } end,
                         "locker.new: option 'on_event' must be a function (got x)")
        c:close()
    end)
end)

-- locker.ngx's upstreams in a real nginx (2 workers): groups of records
-- whose values are addresses, balanced over in balancer_by_lua. The
-- backends are server blocks of the same nginx (each answers its name);
-- the records are held by this spec's client (its group clients) and by
-- holder processes, against the spec's throwaway etcd.
local locker = require "locker"
local helper = require "helper"
local nginx_helper = require "nginx_helper"

local sh, quote = helper.sh, helper.quote

if nginx_helper.skip("nginx upstreams") then return end

local TTL = 3

local CONF = [==[
@MAIN@
events { worker_connections 1024; }
http {
@HTTP@
    lua_shared_dict t 4m;

    init_worker_by_lua_block {
        local ffi = require "ffi"
        ffi.cdef[[
            struct lk_ts { long sec; long nsec; };
            int clock_gettime(int clk, struct lk_ts *ts);
        ]]
        local ts = ffi.new("struct lk_ts")
        -- CLOCK_MONOTONIC: the clock of the spec's locker.now()
        function mono() ffi.C.clock_gettime(1, ts) return tonumber(ts.sec) + tonumber(ts.nsec) / 1e9 end
        local lngx = require "locker.ngx"
        local t = ngx.shared.t
        lngx.init{ endpoints = { "@ETCD@" }, prefix = "@PREFIX@", ttl = @TTL@, timeout = 1,
                   stale_after = 6 }
        local pid = ngx.worker.pid()
        t:set("worker:" .. pid, ngx.worker.id())
        -- each worker notes when its view of a group changed, and to what
        local function noted(group)
            return function(peers)
                local addrs = {}
                for i, p in ipairs(peers) do addrs[i] = p.name .. "=" .. p.addr end
                t:set("view:" .. group .. ":" .. pid, ("%.6f %s"):format(mono(), table.concat(addrs, ",")))
            end
        end
        lngx.upstream("web", { on_change = noted("web") })
        lngx.upstream("big", { on_change = noted("big") })
        lngx.upstream("last", { fail = "stale", stale_after = 2, on_change = noted("last") })
        lngx.upstream("fb", { fail = "fallback", fallback = { "127.0.0.1:@B3@" }, on_change = noted("fb") })
        lngx.upstream("named", { names = { "n1", "n2" }, on_change = noted("named") })
        -- balance()'s own time, the last 4096 picks of this worker
        bal = { n = 0 }
        for i = 1, 4096 do bal[i] = 0 end
    }
    exit_worker_by_lua_block { require("locker.ngx").close() }

    upstream web {
        server 0.0.0.1;   # never used: the balancer sets each peer
        balancer_by_lua_block { require("locker.ngx").balance("web") }
        keepalive 16;
    }
    upstream big {
        server 0.0.0.1;
        balancer_by_lua_block {
            local t0 = mono()
            require("locker.ngx").balance("big")
            local n = bal.n % 4096 + 1
            bal.n, bal[n] = bal.n + 1, mono() - t0
        }
        keepalive 16;
    }
    upstream hashed {
        server 0.0.0.1;
        balancer_by_lua_block { require("locker.ngx").balance("web", ngx.var.arg_key) }
    }
    upstream last {
        server 0.0.0.1;
        balancer_by_lua_block { require("locker.ngx").balance("last") }
    }
    upstream fb {
        server 0.0.0.1;
        balancer_by_lua_block { require("locker.ngx").balance("fb") }
    }
    upstream named {
        server 0.0.0.1;
        balancer_by_lua_block { require("locker.ngx").balance("named") }
    }
    upstream static {
        server 127.0.0.1:@B1@;
        server 127.0.0.1:@B2@;
        server 127.0.0.1:@B3@;
        keepalive 16;
    }

    server { listen 127.0.0.1:@B1@; location / { return 200 "b1"; } }
    server { listen 127.0.0.1:@B2@; location / { return 200 "b2"; } }
    server { listen 127.0.0.1:@B3@; location / { return 200 "b3"; } }

    server {
        listen 127.0.0.1:@PORT@;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location /ping { content_by_lua_block { ngx.say(ngx.worker.pid()) } }
        location /web { access_by_lua_block { require("locker.ngx").admit("web") } proxy_pass http://web; }
        location /hashed { proxy_pass http://hashed; }
        location /big { proxy_pass http://big; }
        location /static { proxy_pass http://static; }
        location /last { access_by_lua_block { require("locker.ngx").admit("last") } proxy_pass http://last; }
        location /fb { proxy_pass http://fb; }
        location /named { access_by_lua_block { require("locker.ngx").admit("named") } proxy_pass http://named; }
        location /state {
            content_by_lua_block {
                local lngx = require "locker.ngx"
                ngx.say(lngx.json(lngx.upstream_state(ngx.var.arg_g)))
            }
        }
        location /status { content_by_lua_block { require("locker.ngx").status() } }
        location /bal {
            content_by_lua_block {
                local n = math.min(bal.n, 4096)
                local list = {}
                for i = 1, n do list[i] = bal[i] end
                table.sort(list)
                ngx.say(n, " ", list[math.max(1, math.ceil(n * 0.5))] or 0, " ",
                        list[math.max(1, math.ceil(n * 0.99))] or 0)
            }
        }
        location /dict {
            content_by_lua_block {
                local t = ngx.shared.t
                for _, k in ipairs(t:get_keys(0)) do ngx.say(k, "=", t:get(k)) end
            }
        }
    }
}
]==]

local function show(t)
    local parts = {}
    for k, v in pairs(t) do parts[#parts + 1] = tostring(k) .. "=" .. tostring(v) end
    table.sort(parts)
    return "{" .. table.concat(parts, " ") .. "}"
end

local function percentile(list, q)
    local s = {}
    for i, v in ipairs(list) do s[i] = v end
    table.sort(s)
    return s[math.max(1, math.ceil(#s * q))]
end

describe("nginx upstreams (locker.ngx.upstream, balance)", function()
    local etcd, nginx, prefix, c, ports, workers
    local holds = {}   -- "group/name" -> lock

    setup(function()
        math.randomseed(os.time() + helper.pid())
        etcd = helper.etcd()
        prefix = "/ups" .. helper.pid() .. "/"
        c = etcd:client({ prefix = prefix, ttl = 20 })
        ports = {}
        for i = 1, 4 do
            local p
            repeat p = nginx_helper.free_port() until not ports[p]
            ports[i], ports[p] = p, true
        end
        nginx = nginx_helper.start(CONF, { ETCD = etcd.endpoint, PREFIX = prefix, TTL = TTL,
                                           B1 = ports[1], B2 = ports[2], B3 = ports[3] })
        -- nginx answers once one worker runs: the other's init_worker may
        -- still be on its way
        pcall(helper.wait_until, "both workers to note themselves", function()
            workers = {}
            for k in pairs(nginx:dict()) do
                local pid = k:match("^worker:(%d+)$")
                if pid then workers[#workers + 1] = pid end
            end
            return #workers >= 2
        end, 10)
        assert.equal(2, #workers)
    end)
    teardown(function()
        for _, l in pairs(holds) do l:release() end
        if nginx then
            nginx:stop()
            if #nginx_helper.bad_lines(nginx:log()) == 0 then sh("rm -rf " .. quote(nginx.dir)) end
        end
        if c then c:close() end
        etcd:destroy()
    end)

    local function addr(i) return "127.0.0.1:" .. ports[i] end

    local function hold(group, name, value)
        local g = assert(c:group(group))
        local l = assert(g:lock(name, value))
        holds[group .. "/" .. name] = l
        return l
    end

    local function drop(group, name)
        local l = holds[group .. "/" .. name]
        holds[group .. "/" .. name] = nil
        l:release()
    end

    -- Each worker's view of group: { pid = { time, "name=addr,..." } }.
    local function views(group)
        local d = nginx:dict()
        local out = {}
        for _, pid in ipairs(workers) do
            local v = d["view:" .. group .. ":" .. pid]
            if v then
                local t, list = v:match("^(%S+) ?(.*)$")
                out[pid] = { tonumber(t), list }
            end
        end
        return out
    end

    -- Waits until every worker's view of group is want ("name=addr,...");
    -- returns the latest time a worker changed to it.
    local function await_view(group, want, timeout)
        local latest
        helper.wait_until(("every worker's %s view to be {%s}"):format(group, want), function()
            local v = views(group)
            latest = 0
            for _, pid in ipairs(workers) do
                if not v[pid] or v[pid][2] ~= want then return false end
                latest = math.max(latest, v[pid][1])
            end
            return true
        end, timeout or 3)
        return latest
    end

    -- n requests to path: counts by answer ("b1", ..., or the status).
    local function spread(path, n)
        local out = sh(("for i in $(seq %d); do curl -s -m 5 -w ' %%{http_code}\\n' %s; done")
            :format(n, quote(nginx.url .. path)))
        local got = {}
        for line in out:gmatch("[^\n]+") do
            local body, code = line:match("^(%S*)%s*(%d+)$")
            local k = code == "200" and body or code
            got[k] = (got[k] or 0) + 1
        end
        return got
    end

    it("answers 503 with Retry-After while the group is empty, then balances over its records", function()
        local code, _, _, h = nginx:get("/web/")
        assert.equal(503, code)
        assert.equal(tostring(TTL), h["retry-after"])
        hold("web", "a", addr(1))
        hold("web", "b", addr(2))
        hold("web", "c", addr(3) .. " weight=2")
        await_view("web", ("a=%s,b=%s,c=%s"):format(addr(1), addr(2), addr(3)))
        local got = spread("/web/", 40)
        -- round robin in each worker, weighted: c twice a's share
        assert.is_true((got.b1 or 0) >= 6 and (got.b2 or 0) >= 6 and (got.b3 or 0) >= 14,
                       "spread: " .. show(got))
        assert.equal(40, (got.b1 or 0) + (got.b2 or 0) + (got.b3 or 0))
        -- the status page shows the group, as JSON and as HTML
        local _, json = nginx:get("/status", "Accept: application/json")
        assert.matches('"group":"web"', json, 1, true)
        assert.matches('"addr":"' .. addr(3) .. '"', json, 1, true)
        local _, html = nginx:get("/status")
        assert.matches("<h3>upstream web: <span class=up>up</span>", html, 1, true)
    end)

    it("sends a hash key to the same peer in every worker", function()
        for _, key in ipairs({ "alpha", "beta", "gamma", "delta" }) do
            local got = spread("/hashed/?key=" .. key, 8)
            local n = 0
            for _ in pairs(got) do n = n + 1 end
            assert.equal(1, n, key .. ": " .. show(got))
        end
    end)

    it("takes a released record out of rotation on every worker within milliseconds", function()
        local rounds, lat = 20, {}
        local full = ("a=%s,b=%s,c=%s"):format(addr(1), addr(2), addr(3))
        local without = ("a=%s,c=%s"):format(addr(1), addr(3))
        for _ = 1, rounds do
            local l = holds["web/b"]
            l:release()
            local t0 = locker.now()
            holds["web/b"] = nil
            local seen = await_view("web", without)
            lat[#lat + 1] = math.max(0, seen - t0)
            local got = spread("/web/", 6)
            assert.is_nil(got.b2, "a request went to the released peer")
            hold("web", "b", addr(2))
            await_view("web", full)
        end
        local p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
        print(("  released -> out of rotation on both workers: p50 %.2f ms, p99 %.2f ms (%d rounds)")
            :format(p50 * 1e3, p99 * 1e3, rounds))
        -- the view changes at the event; the noted time is after the rebuild
        assert.is_true(p50 < 0.005, ("p50 %.1f ms"):format(p50 * 1e3))
        assert.is_true(p99 < 0.05, ("p99 %.1f ms"):format(p99 * 1e3))
    end)

    it("takes a SIGKILLed holder's record out of rotation by its lease expiry + 1 s", function()
        local h = helper.holder(etcd, prefix .. "web/", "k", addr(3), TTL)
        await_view("web", ("a=%s,b=%s,c=%s,k=%s"):format(addr(1), addr(2), addr(3), addr(3)))
        local t0 = locker.now()
        h:kill()
        local seen = await_view("web", ("a=%s,b=%s,c=%s"):format(addr(1), addr(2), addr(3)), TTL + 2)
        h:quit()
        print(("  holder SIGKILLed -> out of rotation in %.2f s (ttl %d)"):format(seen - t0, TTL))
        assert.is_true(seen - t0 <= TTL + 1)
    end)

    it("skips a malformed address and reports it; a record of a list of names works the same", function()
        hold("web", "bad", "localhost:80")
        helper.wait_until("the bad record reported", function()
            local _, body = nginx:get("/state?g=web")
            return body:find('"name":"bad"', 1, true) and body:find("not an IP address", 1, true)
        end, 3)
        assert.same({ b1 = true, b2 = true, b3 = true }, (function()
            local s = {}
            for k in pairs(spread("/web/", 12)) do s[k] = true end
            return s
        end)())
        drop("web", "bad")
        assert.matches("not an IP address", nginx:log())
        -- names of the worker's own prefix
        assert.equal(503, (nginx:get("/named/")))
        local n1 = assert(c:lock("n1", addr(2)))
        await_view("named", "n1=" .. addr(2))
        assert.same({ b2 = 5 }, spread("/named/", 5))
        n1:release()
        await_view("named", "")
        assert.equal(503, (nginx:get("/named/")))
    end)

    it("retries another peer: no request fails while members come and go (wrk)", function()
        local _, have = sh("command -v wrk")
        if not have then
            pending("wrk is not installed (Debian: wrk)")
            return
        end
        local out = os.tmpname()
        local pid = helper.spawn(("exec timeout 20 wrk -t2 -c16 -d4s %s >%s 2>&1")
            :format(quote(nginx.url .. "/web/"), quote(out)))
        -- meanwhile: a peer whose backend is down joins and leaves, b goes and comes
        local closed = "127.0.0.1:" .. ports[4]   -- nothing listens there
        local t_end = locker.now() + 3.5
        local changes = 0
        while locker.now() < t_end do
            hold("web", "dead", closed)
            locker.sleep(0.1)
            drop("web", "b")
            locker.sleep(0.1)
            drop("web", "dead")
            hold("web", "b", addr(2))
            locker.sleep(0.1)
            changes = changes + 4
        end
        helper.wait_until("wrk to end", function() return not helper.alive(pid) end, 15)
        local report = helper.read(out)
        os.remove(out)
        local requests = tonumber(report:match("(%d+) requests in"))
        print(("  wrk during %d membership changes: %s requests, %s"):format(changes, tostring(requests),
            report:match("Non%-2xx[^\n]*") or "every answer 2xx"))
        assert.is_truthy(requests and requests > 100, report)
        assert.is_nil(report:match("Non%-2xx or 3xx responses: %d+"), report)
        assert.is_nil(report:match("Socket errors"), report)
    end)

    it("keeps the last peers for stale_after seconds (fail = stale), or goes to the fallback", function()
        local l = hold("last", "x", addr(1))
        await_view("last", "x=" .. addr(1))
        assert.same({ b1 = 3 }, spread("/last/", 3))
        drop("last", "x")
        local t0 = locker.now()
        await_view("last", "")
        assert.same({ b1 = 3 }, spread("/last/", 3))   -- within stale_after (2 s)
        helper.wait_until("503 after stale_after", function() return nginx:get("/last/") == 503 end, 4)
        assert.is_true(locker.now() - t0 >= 1.9)
        assert.is_truthy(l)
        -- fallback
        assert.same({ b3 = 3 }, spread("/fb/", 3))
        hold("fb", "y", addr(2))
        await_view("fb", "y=" .. addr(2))
        assert.same({ b2 = 3 }, spread("/fb/", 3))
        drop("fb", "y")
        await_view("fb", "")
        assert.same({ b3 = 3 }, spread("/fb/", 3))
    end)

    it("balances over 100 records with little time in balance()", function()
        local g = assert(c:group("big"))
        local ls = {}
        local want = {}
        for i = 1, 100 do
            local name = ("r%03d"):format(i)
            ls[i] = assert(g:lock(name, addr((i - 1) % 3 + 1), { background = true, keep = true }))
            want[i] = name .. "=" .. addr((i - 1) % 3 + 1)
        end
        table.sort(want)
        await_view("big", table.concat(want, ","), 10)
        local got = spread("/big/", 30)
        assert.equal(30, (got.b1 or 0) + (got.b2 or 0) + (got.b3 or 0), show(got))
        local _, have = sh("command -v wrk")
        if have then
            for _, path in ipairs({ "/static/", "/big/", "/static/", "/big/" }) do
                local rep = sh(("timeout 20 wrk -t2 -c8 -d2s --latency %s"):format(quote(nginx.url .. path)))
                print(("  wrk %-8s %s req/s, p50 %s, p99 %s"):format(path, tostring(rep:match("Requests/sec:%s*(%S+)")),
                    tostring(rep:match("50%%%s+(%S+)")), tostring(rep:match("99%%%s+(%S+)"))))
            end
        end
        local _, body = nginx:get("/bal")
        local n, p50, p99 = body:match("(%d+) (%S+) (%S+)")
        print(("  balance() over 100 records, last %s picks of a worker: p50 %.1f us, p99 %.1f us")
            :format(n, tonumber(p50) * 1e6, tonumber(p99) * 1e6))
        assert.is_true(tonumber(n) >= 30)
        for _, l in ipairs(ls) do l:release() end
    end)

    it("goes on balancing over the last view while etcd is stopped, marked stale", function()
        local t0 = locker.now()
        helper.kill(etcd.pid, "STOP")
        local ok, err = pcall(function()
            helper.wait_until("the web group marked stale", function()
                local _, body = nginx:get("/state?g=web")
                return body:find('"state":"stale"', 1, true)
            end, 12)
            print(("  etcd stopped -> marked stale %.1f s after the stop (stale_after 6 s from the "
                .. "stream's last message)"):format(locker.now() - t0))
            local got = spread("/web/", 12)
            assert.equal(12, (got.b1 or 0) + (got.b2 or 0) + (got.b3 or 0), show(got))
        end)
        helper.kill(etcd.pid, "CONT")
        assert(ok, err)
        helper.wait_until("the web group live again", function()
            local _, body = nginx:get("/state?g=web")
            return body:find('"state":"up"', 1, true)
        end, 10)
    end)

    it("leaves no alert or crash in the error log", function()
        assert.same({}, nginx_helper.bad_lines(nginx:log()))
        local errs = {}
        for _, line in ipairs(nginx_helper.error_lines(nginx:log())) do
            -- the refused peer's connections and the stopped etcd are expected
            if not line:find("Connection refused", 1, true) and not line:find("locker:", 1, true) then
                errs[#errs + 1] = line
            end
        end
        assert.same({}, errs)
    end)
end)

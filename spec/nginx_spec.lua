-- locker.ngx in a real nginx (Debian's nginx and libnginx-mod-http-lua, 2
-- workers) started by the spec on a free loopback port under a private
-- prefix directory, stopped by pid; against the spec's throwaway etcd. The
-- module is the LuaJIT build (LOCKER_NGX_BUILD) that nginx's Lua loads.
local locker = require "locker"
local helper = require "helper"
local nginx_helper = require "nginx_helper"

local sh, quote = helper.sh, helper.quote

if nginx_helper.skip("nginx") then return end

local TTL = 3

local CONF = [[
@MAIN@
events { worker_connections 512; }
http {
@HTTP@
    lua_shared_dict t 4m;
    lua_shared_dict locker_status 1m;

    init_by_lua_block {
        -- made before nginx forks: using it in a worker must raise
        pre_fork_client = require("locker").new{ endpoints = { "@ETCD@" } }
    }
    init_worker_by_lua_block {
        local lngx = require "locker.ngx"
        local t = ngx.shared.t
        lngx.init{ endpoints = { "@ETCD@" }, prefix = "@PREFIX@", ttl = @TTL@,
                   timeout = 1, names = { "dep" }, status_dict = "locker_status" }
        lngx.hold("self", "nginx-" .. ngx.worker.pid())
        if ngx.worker.id() == 0 then t:set("w0", ngx.worker.pid()) end
        t:set("worker:" .. ngx.worker.pid(), ngx.worker.id())
        -- every worker notes when it sees dep change (latency)
        lngx.watch("dep", function(value)
            ngx.update_time()
            t:set("dep:" .. ngx.worker.pid(), (value or "gone") .. " " .. ngx.now())
        end)
        -- a callback that makes a waiting call, and one that sleeps
        lngx.watch("cb", function(value)
            if value == nil then return end
            local got, msg = lngx.get("dep")
            t:set("cb_get:" .. ngx.worker.pid(), tostring(got or msg))
        end)
        lngx.watch("cb", function(value)
            if value == nil then return end
            ngx.sleep(0.05)
            t:set("cb_sleep:" .. ngx.worker.pid(), value)
        end)
        lngx.health("@DIR@/health.lua")
        -- a lock that waits, in every worker, when /busy asks
        local gen = 0
        local function poller(premature)
            if premature then return end
            while not ngx.worker.exiting() do
                local want = t:get("busy") or 0
                if want > gen then
                    gen = want
                    ngx.timer.at(0, function()
                        local t0 = ngx.now()
                        local l, _, code = lngx.lock("held", "w", { timeout = 2 })
                        ngx.update_time()
                        t:set("busy_done:" .. ngx.worker.pid(), (l and "owned" or code) .. " " .. (ngx.now() - t0))
                        if l then l:release() end
                    end)
                end
                ngx.sleep(0.02)
            end
        end
        ngx.timer.at(0, poller)
    }
    exit_worker_by_lua_block { require("locker.ngx").close() }

    server {
        listen 127.0.0.1:@PORT@;
        location /ping { content_by_lua_block { ngx.say(ngx.worker.pid()) } }
        location /gate {
            access_by_lua_block {
                local a = ngx.req.get_uri_args()
                require("locker.ngx").gate(a.name or "dep", { pending = a.mode,
                    stale_after = tonumber(a.stale) })
            }
            content_by_lua_block { ngx.say("ok") }
        }
        location /state {
            content_by_lua_block {
                local a = ngx.req.get_uri_args()
                local v, tok, st = require("locker.ngx").state(a.name or "dep",
                    { stale_after = tonumber(a.stale) })
                ngx.say(st, " ", tostring(v), " ", tostring(tok), " ", ngx.worker.pid())
            }
        }
        location /lock {
            content_by_lua_block {
                local l, msg, code = require("locker.ngx").lock("held", "r", { timeout = 2 })
                ngx.say(l and "owned" or code)
                if l then l:release() end
            }
        }
        location /dict {
            content_by_lua_block {
                local t = ngx.shared.t
                for _, k in ipairs(t:get_keys(0)) do ngx.say(k, "=", t:get(k)) end
            }
        }
        location /set {
            content_by_lua_block {
                local a = ngx.req.get_uri_args()
                ngx.shared.t:set(a.k, tonumber(a.v) or a.v)
            }
        }
        location /mem {
            content_by_lua_block {
                local f = io.open("/proc/self/status")
                local s = f:read("*a")
                f:close()
                ngx.say(ngx.worker.pid(), " ", s:match("VmRSS:%s*(%d+)"), " ", collectgarbage("count"))
            }
        }
        location /prefork {
            content_by_lua_block {
                local ok, err = pcall(pre_fork_client.cached, pre_fork_client, "dep")
                ngx.say(ok and "no error" or err)
            }
        }
        location /status { content_by_lua_block { require("locker.ngx").status() } }
        location /metrics { content_by_lua_block { require("locker.ngx").metrics() } }
    }
}
]]

local HEALTH = [[
record "web" { value = "nginx web", requires = { "dep" }, hold_down = 0, every = 1,
               check = function() ngx.sleep(0.01) return true end }
]]

local function start_nginx(etcd, prefix)
    return nginx_helper.start(CONF, { ETCD = etcd.endpoint, PREFIX = prefix, TTL = TTL },
                              { ["health.lua"] = HEALTH })
end

local function count(dir)
    local out = sh("ls " .. quote(dir) .. " 2>/dev/null | wc -l")
    return tonumber(out:match("%d+"))
end

local rss_kb = helper.rss

local error_lines, bad_lines = nginx_helper.error_lines, nginx_helper.bad_lines

describe("nginx (locker.ngx)", function()
    local etcd, nginx, prefix, c
    local dep_lock   -- the spec's own hold of "dep"
    local killed_worker
    math.randomseed(os.time() + helper.pid())

    setup(function()
        etcd = helper.etcd()
        prefix = "/ngx" .. helper.pid() .. "/"
        c = etcd:client({ prefix = prefix, ttl = 20 })
        nginx = start_nginx(etcd, prefix)
    end)
    teardown(function()
        if nginx then
            nginx:stop()
            local bad = bad_lines(nginx:log(), killed_worker)
            if #bad == 0 then sh("rm -rf " .. quote(nginx.dir)) end
        end
        if c then c:close() end
        etcd:destroy()
    end)

    local function held_by_nginx()
        return c:get("self")
    end

    it("gates: 503 with Retry-After while the record is gone, 200 while held, on every worker at once", function()
        local code, _, _, h = nginx:get("/gate")
        assert.equals(503, code)
        assert.equals(tostring(TTL), h["retry-after"])
        local holder = helper.holder(etcd, prefix, "dep", "db-1", TTL)
        helper.wait_until("200 once dep is held", function() return nginx:get("/gate") == 200 end, 2)
        local _, body = nginx:get("/state")
        assert.matches("^up db%-1 %d+", body)
        -- SIGKILL of the holder: 503 within TTL + 1 s
        local t0 = locker.now()
        holder:kill()
        helper.wait_until("503 after the holder died", function() return nginx:get("/gate") == 503 end, TTL + 1)
        print(("  holder SIGKILLed -> 503 in %.2f s (ttl %d)"):format(locker.now() - t0, TTL))
        holder:quit()
        -- re-acquired: 200 within 1 s
        dep_lock = assert(c:lock("dep", "db-2"))
        local lock = dep_lock
        t0 = locker.now()
        helper.wait_until("200 after re-acquire", function() return nginx:get("/gate") == 200 end, 1)
        print(("  re-acquired -> 200 in %.3f s"):format(locker.now() - t0))
        -- deleted -> every worker sees it (its callback notes the time)
        local workers = nginx:workers()
        assert.equals(2, #workers)
        -- every worker's callback noted db-2 (what it wrote in the shared dict)
        local function all_see_db2()
            local d = nginx:dict()
            for _, p in ipairs(workers) do
                if not (d["dep:" .. p] or ""):match("^db%-2 ") then return false end
            end
            return true
        end
        helper.wait_until("both workers to see db-2", all_see_db2, 2)
        local lat = {}
        for _ = 1, 5 do
            local t_del = locker.time()
            assert(lock:release())
            local worst = helper.wait_until("both workers to see dep gone", function()
                local d, w = nginx:dict(), 0
                for _, p in ipairs(workers) do
                    local at = (d["dep:" .. p] or ""):match("^gone (%S+)")
                    if not at then return false end
                    w = math.max(w, tonumber(at) - t_del)
                end
                return w
            end, 2)
            lat[#lat + 1] = worst
            lock = assert(c:lock("dep", "db-2"))
            dep_lock = lock
            helper.wait_until("both workers to see dep back", all_see_db2, 2)
        end
        table.sort(lat)
        print(("  release -> gone seen on both workers: p50 %.1f ms, max %.1f ms")
            :format(lat[3] * 1000, lat[5] * 1000))
        assert.is_true(lat[5] <= 0.05, "delete -> 503 on every worker took " .. lat[5] .. " s")
        assert.equals(200, (nginx:get("/gate")))
    end)

    it("runs callbacks that make waiting calls and that sleep; health drops and re-holds its record", function()
        local cb = assert(c:lock("cb", "go"))
        helper.wait_until("callbacks to complete in both workers", function()
            local d, got, slept = nginx:dict(), 0, 0
            for k, v in pairs(d) do
                if k:match("^cb_get:") and v == "db-2" then got = got + 1 end
                if k:match("^cb_sleep:") and v == "go" then slept = slept + 1 end
            end
            return got == 2 and slept == 2
        end, 3)
        cb:release()
        -- health (worker 0): "web" requires "dep"
        helper.wait_until("web held", function() return c:get("web") == "nginx web" end, 3)
        assert(dep_lock:release())
        helper.wait_until("web dropped", function() return c:get("web") == nil end, 3)
        dep_lock = assert(c:lock("dep", "db-3"))
        helper.wait_until("web held again", function() return c:get("web") == "nginx web" end, 3)
    end)

    it("never makes a request wait on etcd: etcd stopped, locks waiting on every worker", function()
        etcd:ctl("del --prefix " .. quote(prefix .. "held/"))
        local blocker = assert(c:lock("held", "spec"))
        helper.kill(etcd.pid, "STOP")
        local ok, err = pcall(function()
            local _, d0 = nginx:get("/dict")
            local gen = (tonumber(d0:match("busy=(%d+)")) or 0) + 1
            nginx:get("/set?k=busy&v=" .. gen)
            local worst = 0
            local t_end = locker.now() + 1.5
            local n = 0
            while locker.now() < t_end do
                local code, _, t = nginx:get("/ping")
                assert.equals(200, code)
                local gcode, _, gt = nginx:get("/gate")
                assert.is_true(gcode == 200 or gcode == 503)
                worst = math.max(worst, t, gt)
                n = n + 2
            end
            print(("  etcd SIGSTOPped, a 2 s lock waiting on each worker: %d requests, slowest %.1f ms")
                :format(n, worst * 1000))
            assert.is_true(worst < 0.05, "a request took " .. worst .. " s")
            helper.wait_until("the waiting locks to time out", function()
                local d, done = nginx:dict(), 0
                for k, v in pairs(d) do
                    if k:match("^busy_done:") and v:match("^%a+ ") then done = done + 1 end
                end
                return done >= 2
            end, 8)
        end)
        helper.kill(etcd.pid, "CONT")
        assert(ok, err)
        blocker:release()
    end)

    it("reports staleness when the stream shows no life, per the fail mode", function()
        helper.wait_until("fresh", function() return nginx:get("/gate?stale=6.5") == 200 end, 5)
        helper.kill(etcd.pid, "STOP")
        local ok, err = pcall(function()
            local t0 = locker.now()
            helper.wait_until("stale", function()
                local _, body = nginx:get("/state?stale=6.5")
                return body:match("^stale")
            end, 15)
            print(("  etcd SIGSTOPped -> state 'stale' (stale_after 6.5 s) in %.1f s"):format(locker.now() - t0))
            -- each worker has its own stream and its own last sign of life:
            -- the other may say so a moment later, whichever answers
            helper.wait_until("503 from 8 requests in a row", function()
                for _ = 1, 8 do
                    if nginx:get("/gate?stale=6.5") ~= 503 then return false end
                end
                return true
            end, 4)
            for _ = 1, 4 do
                assert.equals(200, (nginx:get("/gate?stale=6.5&mode=open")))
            end
        end)
        helper.kill(etcd.pid, "CONT")
        assert(ok, err)
        helper.wait_until("fresh again", function() return nginx:get("/gate?stale=6.5") == 200 end, 12)
    end)

    it("raises when a client made before the fork is used in a worker (cached() too)", function()
        local _, body = nginx:get("/prefork")
        assert.matches("another process", body)
    end)

    it("loads one LuaJIT: the module uses the libluajit-5.1.so.2 that nginx's Lua module loaded", function()
        local paths = {}
        for _, p in ipairs(nginx:workers()) do
            local maps = helper.read("/proc/" .. p .. "/maps")
            assert.matches("locker/core%.so", maps)
            for path in maps:gmatch("(/%S*/lib[^/%s]*lua[^/%s]*%.so[^/%s]*)\n") do paths[path] = true end
        end
        local list = {}
        for path in pairs(paths) do list[#list + 1] = path end
        assert.equals(1, #list, table.concat(list, ", "))
        assert.matches("libluajit%-5%.1%.so%.2", list[1])
    end)

    it("is idle when nothing changes: about 0 CPU", function()
        local function ticks(pid)
            local stat = helper.read("/proc/" .. pid .. "/stat"):match("%) (.*)")
            local f = {}
            for x in stat:gmatch("%S+") do f[#f + 1] = x end
            return tonumber(f[12]) + tonumber(f[13])  -- utime + stime
        end
        local hz = tonumber((sh("getconf CLK_TCK"):match("%d+"))) or 100
        local workers = nginx:workers()
        local before = {}
        for _, p in ipairs(workers) do before[p] = ticks(p) end
        locker.sleep(5)
        local used = 0
        for _, p in ipairs(workers) do used = used + ticks(p) - before[p] end
        local pct = used / hz / 5 * 100
        print(("  idle for 5 s: both workers used %.2f %% of a core"):format(pct))
        assert.is_true(pct < 2, pct .. " % of a core")
    end)

    it("keeps worker memory bounded under 40 000 changes nobody reads", function()
        local names = {}
        for i = 1, 40 do names[i] = "m" .. i end
        -- nginx follows them (gate/state), nothing reads them but the cache
        for _, n in ipairs(names) do nginx:get("/state?name=" .. n) end
        nginx:get("/state?name=" .. names[1])
        local workers = nginx:workers()
        local locks = {}
        for i, n in ipairs(names) do locks[i] = assert(c:lock(n, "0")) end
        local function round(from, to)
            local jobs = {}
            for i = 1, #locks do
                jobs[i] = helper.go(function()
                    for k = from, to do assert(locks[i]:set(tostring(k))) end
                end)
            end
            helper.wait_until("sets", function()
                for _, j in ipairs(jobs) do if not j.done then return false end end
                return true
            end, 300)
        end
        round(1, 100)   -- warm up: allocator and caches reach their size
        local before = {}
        for _, p in ipairs(workers) do before[p] = rss_kb(p) end
        local t0 = locker.now()
        round(101, 1100)  -- 40 x 1000 = 40 000 changes
        local secs = locker.now() - t0
        helper.wait_until("nginx to see the last value", function()
            local _, body = nginx:get("/state?name=" .. names[40])
            return body:match("^up 1100 ")
        end, 5)
        local worst = 0
        for _, p in ipairs(workers) do worst = math.max(worst, rss_kb(p) - before[p]) end
        print(("  40 000 changes in %.1f s: worker RSS grew by at most %d KiB"):format(secs, worst))
        for _, l in ipairs(locks) do l:release() end
        assert.is_true(worst < 1024, "worker RSS grew by " .. worst .. " KiB")
    end)

    it("hands its record over across 5 reloads: no gone, one lease, old workers gone in < 2 s, no leak", function()
        helper.wait_until("self held", held_by_nginx, TTL + 2)
        local gone = 0
        local w = c:watch("self", function(v) if v == nil then gone = gone + 1 end end)
        local fds, threads
        for i = 1, 5 do
            local old = nginx:workers()
            local t0 = locker.now()
            helper.kill(nginx.pid, "HUP")
            helper.wait_until("old workers to exit", function()
                for _, p in ipairs(old) do if helper.alive(p) then return false end end
                return true
            end, 2)
            local took = locker.now() - t0
            helper.wait_until("new worker 0 to hold self", function()
                local d = nginx:dict()
                local v = c:get("self")
                return d.w0 and v == "nginx-" .. d.w0
            end, TTL + 2)
            local new = nginx:workers()
            local f, t = 0, 0
            for _, p in ipairs(new) do
                f = f + count("/proc/" .. p .. "/fd")
                t = t + count("/proc/" .. p .. "/task")
            end
            print(("  reload %d: old workers gone in %.2f s; new workers: %d fds, %d threads")
                :format(i, took, f, t))
            if i == 2 then fds, threads = f, t end
            if i == 5 then
                assert.is_true(f <= fds + 2, "fds grew: " .. fds .. " -> " .. f)
                assert.equals(threads, t)
            end
            local leases = sh(("ETCDCTL_API=3 etcdctl --endpoints=%s get --prefix --keys-only %s")
                :format(etcd.endpoint, quote(prefix .. "self/")))
            local n = 0
            for _ in leases:gmatch("[^\n]+") do n = n + 1 end
            assert.equals(1, n)
        end
        locker.sleep(0.2)
        w:cancel()
        assert.equals(0, gone)
    end)

    it("takes the record back after worker 0 is killed with SIGKILL, within TTL + 1 s", function()
        local d = nginx:dict()
        local w0 = tonumber(d.w0)
        killed_worker = w0
        local t0 = locker.now()
        helper.kill(w0, "KILL")
        helper.wait_until("a new worker 0 holding self", function()
            local nd = nginx:dict()
            return tonumber(nd.w0) ~= w0 and c:get("self") == "nginx-" .. nd.w0
        end, TTL + 1)
        print(("  worker 0 SIGKILLed -> record held by the new worker 0 in %.2f s"):format(locker.now() - t0))
    end)

    it("shows every worker on the status page, whichever worker serves it", function()
        local workers = nginx:workers()
        local served = {}
        helper.wait_until("a status page with both workers' reports, self owned", function()
            local _, body = nginx:get("/status", "Accept: application/json")
            return body:find('"instance":true', 1, true) and not body:find('"missing":true', 1, true)
                and body:find('"name":"self","owned":true', 1, true)
        end, 5)
        for _ = 1, 12 do
            local _, body = nginx:get("/status", "Accept: application/json")
            assert.matches('"instance":true', body)
            served[body:match('"served_by":(%d+)')] = true
            for _, p in ipairs(workers) do assert.matches('"pid":' .. p, body) end
            -- "self" is held by worker 0 alone: on the page whoever serves it
            assert.matches('"holds":%[{"name":"self","owned":true,"token":%d+,"value":"nginx%-%d+"}%]', body)
            local _, html = nginx:get("/status")
            assert.matches("<h2>worker 0 %(pid %d+%)</h2>", html)
            assert.matches("<h2>worker 1 %(pid %d+%)</h2>", html)
            assert.matches("<td>self</td>", html)
        end
        local n = 0
        for _ in pairs(served) do n = n + 1 end
        print(("  status page: %d workers' reports, served by %d different workers in 12 requests")
            :format(#workers, n))
    end)

    it("serves every worker's metrics in one scrape that Prometheus' parser reads, from any worker", function()
        local workers = nginx:workers()
        local served = {}
        for _ = 1, 6 do
            local _, body = nginx:get("/metrics")
            local samples, types = helper.prometheus(body)
            assert.equal("counter", types.locker_acquisitions)  -- the parser drops _total
            for id = 0, #workers - 1 do
                assert.equal(1, samples[("locker_nginx_worker_reporting{worker=%d}"):format(id)])
                assert.is_number(samples[("locker_renewals_sent_total{worker=%d}"):format(id)])
                assert.equal(1, samples[("locker_session_state{state=live,worker=%d}"):format(id)])
            end
            local held = 0  -- "self" and "web" are held, each by one worker
            for id = 0, #workers - 1 do held = held + samples[("locker_locks_held{worker=%d}"):format(id)] end
            assert.is_true(held >= 1, held .. " locks held")
            served[#served + 1] = body
        end
        -- the status page shows the same figures
        local _, body = nginx:get("/status", "Accept: application/json")
        assert.matches('"metrics":{[^}]*"acquisitions":%d', body)
        local _, html = nginx:get("/status")
        assert.matches("<h3>metrics</h3>", html)
        print(("  /metrics: %d workers in every one of %d scrapes, %d lines each")
            :format(#workers, #served, select(2, served[1]:gsub("\n", ""))))
    end)

    it("leaves no alert or crash in the error log, and no lease after quit (within 1 s)", function()
        local bad = bad_lines(nginx:log(), killed_worker)
        assert.same({}, bad)
        -- etcd stopped, reloads, a worker killed: news at warn and notice,
        -- nothing at error (a read timeout as a tick would be one per tick)
        assert.same({}, error_lines(nginx:log()))
        -- etcd was stopped twice: each worker said so once per stop
        local log, down = nginx:log(), 0
        for line in log:gmatch("[^\n]+") do
            if line:find("[warn]", 1, true) and line:find("watch stream showed no sign of life", 1, true) then
                down = down + 1
            end
        end
        print(("  error log: 0 lines at [error]; 'no sign of life' %d times at [warn]"):format(down))
        assert.is_true(down >= 2 and down <= 8, down .. " lines say the stream is down")
        local _, body = nginx:get("/status", "Accept: application/json")
        assert.matches('"records":%[', body)
        local _, html = nginx:get("/status")
        assert.matches("<table>", html)
        helper.kill(nginx.pid, "QUIT")
        local t0 = locker.now()
        helper.wait_until("no lease left", function()
            return #etcd:keys(prefix .. "self/") == 0 and #etcd:keys(prefix .. "web/") == 0
        end, 1)
        print(("  quit -> no key left in %.2f s"):format(locker.now() - t0))
        helper.wait_until("nginx gone", function() return not helper.alive(nginx.pid) end, 5)
        assert.same({}, bad_lines(nginx:log(), killed_worker))
    end)

    it("answers at once per the fail mode while etcd is down at start, ready within 2 s once up", function()
        etcd:stop()
        nginx:stop()  -- gone already, unless the spec before this one failed
        nginx = start_nginx(etcd, prefix)
        local worst = 0
        for _ = 1, 10 do
            local code, _, t = nginx:get("/gate")
            assert.equals(503, code)
            local ocode, _, ot = nginx:get("/gate?mode=open")
            assert.equals(200, ocode)
            worst = math.max(worst, t, ot)
        end
        print(("  etcd down at start: slowest answer %.1f ms"):format(worst * 1000))
        assert.is_true(worst < 0.01, "slowest answer " .. worst .. " s")
        etcd:start(etcd.port)
        local t0 = locker.now()
        helper.wait_until("state known", function()
            local _, body = nginx:get("/state")
            return body:match("^gone") or body:match("^up")
        end, 2)
        print(("  etcd up -> ready in %.2f s"):format(locker.now() - t0))
    end)

    it("serves a gated and an ungated location under load (wrk, reported, not asserted)", function()
        local _, have = sh("command -v wrk")
        if not have then
            pending("wrk is not installed (Debian: wrk)")
            return
        end
        if dep_lock then dep_lock:release() end  -- one client: a second lock() would wait for it
        local lock = assert(c:lock("dep", "bench", { timeout = 10 }))
        helper.wait_until("gate open", function() return nginx:get("/gate") == 200 end, 3)
        for _, path in ipairs({ "/ping", "/gate" }) do
            local out = sh(("timeout 30 wrk -t2 -c20 -d10s --latency %s"):format(quote(nginx.url .. path)))
            local p50 = out:match("\n%s+50%%%s+(%S+)")
            local p99 = out:match("\n%s+99%%%s+(%S+)")
            local rps = out:match("Requests/sec:%s+(%S+)")
            print(("  wrk %s: %s req/s, p50 %s, p99 %s"):format(path, tostring(rps), tostring(p50), tostring(p99)))
        end
        lock:release()
    end)
end)

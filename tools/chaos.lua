-- chaos.lua [--seconds N] [--contenders N] [--limit N] [--election] [--lock-delay S] [--seed N]
--           [--min-acquisitions N] [--keep]
--
-- With --election the contenders campaign (client:campaign) instead of
-- locking, and their leaders proclaim new values now and then.
-- With --limit N (> 1) the contenders share a semaphore of N holders
-- (N + 3 of them unless told), and the checker looks for more than N
-- owners at one moment instead of two.
-- With --lock-delay S every contender's client has lock_delay = S: a
-- waiter whose predecessor vanished without a clean release (killed,
-- frozen past its lease, its key deleted) owns S later; the fence's checks
-- are the same.
-- chaos.lua --check DIR   (only the checker, on the files a --keep run left)
-- A mutual-exclusion checker for the lock library. Starts a 3-member etcd
-- cluster (tools/cluster-up), N contender processes (tools/chaos-contender.lua)
-- taking one lock, and injects a fault every 1.5 to 4.5 s, at random:
--   stop     SIGSTOP a contender (the holder, mostly) for longer than its
--            TTL, then SIGCONT
--   member   SIGKILL an etcd member (the leader, more than half the time;
--            one member down at most), restart it in place a moment later
--   kill     SIGKILL a contender (the holder, mostly), start a new one
--   delete   delete the holder's key (a foreign delete, as etcdctl would:
--            the exact key its A line names, straight to a member, only
--            while all three run), at random moments; its holder must see
--            owned() false within its client's timeout + margin
--   proxy    only with $LOCKER_FAULTPROXY (a fault-injecting TCP proxy):
--            every contender reaches each member through a proxy of its own;
--            a contender's proxies blackhole (a partition longer than its
--            TTL), cut its connections, refuse them, drop its lease
--            keepalives, or delay etcd's answers; or mute: its watch
--            streams stay open but silent (mute /v3/watch) for longer than
--            its trust time (timeout + margin/2), mostly on the holder and
--            then mostly with a delete of its key during the mute; at
--            its end the streams that lost data are cut, as a byte stream
--            with a hole in it would be
--   While no foreign delete has been noticed by 30% of the run, a fault
--   is a delete when one can be (with the proxy: a muted one, by 50%), so
--   that every run sees one.
-- Then it is the fence: it replays the contenders' fence writes in file
-- order, accepting a write iff its token is >= the highest seen, and looks
-- for violations: (a) token reuse: an accepted write of the highest token
-- by another process than its first writer, or one token held by two
-- processes; (b) owned after a foreign delete: the holder's last
-- owned()==true sample later than its client's timeout + margin (plus
-- 0.25 s: the sample's width, the delete's way to etcd) after the delete
-- was sent; (c) overlapping ownership: for each (process, token), the
-- interval [min t1, max t2] of its owned()==true samples; two intervals
-- with different tokens that overlap, except where a foreign delete of the
-- older token's key explains it within that bound (counted apart, as
-- expected). Prints a table; exits 1 on a
-- violation, a contender crash, or too few acquisitions (a run that proved
-- nothing), 2 on bad usage, 130 when interrupted (SIGINT, SIGTERM).
-- Besides the contenders, one observer process follows the prefix with
-- client:watch_all (the faults hit it as a waiter), and holders make
-- guarded writes (lock:put); at the end, once every holder is gone, the
-- second checker (tools/chaos-history.lua) replays etcd's own history:
-- every guarded write came from an owner, every observer report named the
-- owner of its revision, and the observer ends seeing nobody. Every
-- process it started is killed by pid at the end, its data removed (kept
-- with --keep). Run it from the project's root with the project's Lua
-- environment (LUA_PATH, LUA_CPATH), as make chaos does.
local locker = require "locker"
local process = require "locker.process"
local now = locker.now
local fmt = string.format

-- ------------------------------------------------------------- options --

local opts = { seconds = 60, contenders = nil, limit = 1, seed = nil, min_acquisitions = nil, keep = false,
               election = false, lock_delay = 0 }
do
    local i = 1
    while i <= #arg do
        local a = arg[i]
        local key = a:match("^%-%-([%a-]+)$")
        key = key and key:gsub("-", "_")
        if key == "keep" then
            opts.keep = true
        elseif key == "election" then
            opts.election = true
        elseif key == "check" and arg[i + 1] then
            opts.check = arg[i + 1]
            i = i + 1
        elseif key and opts[key] ~= nil or key == "seed" or key == "min_acquisitions"
            or key == "contenders" then
            local v = tonumber(arg[i + 1])
            if not v or v < 0 or v ~= math.floor(v) then
                io.stderr:write(("chaos: %s needs a whole number\n"):format(a))
                os.exit(2)
            end
            opts[key] = v
            i = i + 1
        else
            io.stderr:write(("chaos: unknown argument '%s'\n"):format(a),
                "usage: chaos.lua [--seconds N] [--contenders N] [--limit N] [--election] [--lock-delay S]"
                .. " [--seed N]"
                .. " [--min-acquisitions N] [--keep]\n",
                "       chaos.lua --check DIR\n")
            os.exit(2)
        end
        i = i + 1
    end
end
if opts.limit < 1 then
    io.stderr:write("chaos: --limit must be at least 1\n")
    os.exit(2)
end
-- a semaphore of N: N + 3 contenders, so that some always wait
opts.contenders = opts.contenders or (opts.limit > 1 and opts.limit + 3 or 4)
if opts.contenders < 2 then
    io.stderr:write("chaos: --contenders must be at least 2\n")
    os.exit(2)
end
opts.seed = opts.seed or (os.time() % 1000000)
-- below this, the run saw too few handovers to prove anything
-- (--check: only when asked, as it does not know how long the run was)
opts.min_acquisitions = opts.min_acquisitions or (opts.check and 0 or math.max(5, math.floor(opts.seconds / 4)))
math.randomseed(opts.seed)
local random = math.random

local here = (arg[0]:match("^(.*)/[^/]*$") or ".")
local lua  -- the interpreter running us (contenders run with it too)
do
    local i = -1
    while arg[i - 1] do i = i - 1 end
    lua = arg[i] or "lua5.4"
end
local faultproxy = os.getenv("LOCKER_FAULTPROXY")
if faultproxy == "" then faultproxy = nil end

-- -------------------------------------------------------- processes --

local function quote(s)
    return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Runs a shell command (never with a sanitizer runtime preloaded: etcd,
-- curl and the shell are not instrumented); its output and success.
local function sh(cmd)
    local p = assert(io.popen("env -u LD_PRELOAD sh -c " .. quote("(" .. cmd .. ") 2>&1; echo \"\n__rc=$?\"")))
    local out = p:read("*a")
    p:close()
    local body, code = out:match("^(.*)\n__rc=(%d+)\n?$")
    return body or out, code == "0"
end

local function read_file(path)
    local f = io.open(path)
    if not f then return "" end
    local s = f:read("*a")
    f:close()
    return s
end

local procs = {}  -- pid -> { what =, status = exit status once reaped }

-- Starts argv (a table) in the background; its pid: our child by
-- process.spawn, else through a shell that leaves it behind.
local function spawn(what, argv)
    local pid, err
    if process.spawn then
        pid, err = process.spawn(argv)
    else
        local q = {}
        for i, a in ipairs(argv) do q[i] = quote(a) end
        err = sh(table.concat(q, " ") .. " </dev/null & echo $!")
        pid = tonumber(err:match("(%d+)%s*$"))
    end
    if not pid then error(("cannot start %s: %s"):format(what, tostring(err)), 2) end
    procs[pid] = { what = what }
    return pid
end

-- Whether pid runs; reaps our children (then procs[pid].status is set).
local function alive(pid)
    local p = procs[pid]
    if p and (p.status or p.gone) then return false end
    if process.reap then
        local status, err = process.reap(pid)
        if status then
            if p then p.status = status end
            return false
        end
        if not err then return true end
    end
    local stat = read_file("/proc/" .. pid .. "/stat")
    local state = stat:match("^%d+ %b() (%a)")
    return state ~= nil and state ~= "Z"
end

local function kill(pid, sig)
    if procs[pid] and (procs[pid].status or procs[pid].gone) then return end
    if process.kill then return process.kill(pid, sig) end
    return sh(("kill -%s %d"):format(sig, pid))
end

-- SIGKILL and wait (bounded) until it is gone; whether it is.
local function kill_wait(pid, timeout)
    kill(pid, "KILL")
    local deadline = now() + (timeout or 5)
    while alive(pid) do
        if now() > deadline then return false end
        locker.sleep(0.02)
    end
    procs[pid] = procs[pid] or {}
    procs[pid].gone = true  -- never signalled again (its pid may be reused)
    return true
end

-- -------------------------------------------------------------- state --

local base = "/dev/shm"
if not sh("test -d /dev/shm -a -w /dev/shm") then base = os.getenv("TMPDIR") or "/tmp" end
local dir
local t0 = now()
local run_end
local members = {}       -- name -> { name, pid, url, peer, port, up }
local member_names = {}
local contenders = {}    -- list of { pid, ttl, proxies = {...}, log }
-- the kinds of fault, in the order of the table
local fault_order = { "stop holder (SIGSTOP > ttl)", "stop waiter (SIGSTOP > ttl)",
                      "kill etcd leader", "kill etcd follower", "kill holder", "kill waiter" }
if faultproxy then
    for _, k in ipairs({ "partition holder", "partition waiter", "cut connections", "refuse connections",
                         "drop keepalives", "delay answers" }) do
        fault_order[#fault_order + 1] = k
    end
end
fault_order[#fault_order + 1] = "foreign delete (live stream)"
if faultproxy then
    for _, k in ipairs({ "mute holder's watch stream", "mute waiter's watch stream",
                         "foreign delete (muted stream)" }) do
        fault_order[#fault_order + 1] = k
    end
end
local faults = {}        -- kind -> count
for _, k in ipairs(fault_order) do faults[k] = 0 end
local timers = {}        -- { at =, fn = }
local crashes = {}       -- lines about contenders that died by themselves
local holder = {}        -- pid (string) -> token, from the events so far
local holder_key = {}    -- pid (string) -> the etcd key of its lock
local deleted = {}       -- "pid token" -> true: its key was deleted by us
local deletes = { gone = 0, unanswered = 0, noticed = 0, muted = 0 }  -- as the run goes
local restarting = nil   -- { name, pid, out, at, tries } while a member restarts
local sigfd
local observed = {}      -- observer pid (string) -> { token =, t = } of its last report
local run_timers, await_observer, check_history

local function log(...)
    io.stdout:write(fmt("[%7.2f] ", now() - t0), fmt(...), "\n")
    io.stdout:flush()
end

local function count(kind)
    faults[kind] = assert(faults[kind], kind) + 1
end

local function after(seconds, fn)
    timers[#timers + 1] = { at = now() + seconds, fn = fn }
end

-- ------------------------------------------------------------ cluster --

-- Under tools/run-specs, every etcd started is noted in $LOCKER_PIDS
-- ("PID DATADIR"), so that one left behind fails the run.
local function note_etcd(m)
    procs[m.pid] = { what = "etcd " .. m.name }
    local path = os.getenv("LOCKER_PIDS")
    local f = path and path ~= "" and io.open(path, "a")
    if f then
        f:write(fmt("%d %s/%s\n", m.pid, dir, m.name))
        f:close()
    end
end

local function parse_member(line)
    local pid, url, peer, name = line:match("^(%d+) (http://%S+) (http://%S+) (%S+)$")
    if not pid then return nil end
    return { pid = tonumber(pid), url = url, peer = peer, name = name,
             port = url:match(":(%d+)$"), up = true }
end

local function start_cluster()
    local out, ok = sh(("sh %s/cluster-up %s"):format(quote(here), quote(dir)))
    if not ok then error("cannot start the etcd cluster:\n" .. out, 0) end
    for line in out:gmatch("[^\n]+") do
        local m = parse_member(line)
        if m then
            members[m.name] = m
            member_names[#member_names + 1] = m.name
            note_etcd(m)
        end
    end
    if #member_names ~= 3 then error("cluster-up said:\n" .. out, 0) end
end

-- The etcd member id of the leader, as the first running member to answer
-- says (ids map to names in member_ids), or nil.
local function leader()
    local urls = {}
    for _, n in ipairs(member_names) do
        if members[n].up then urls[#urls + 1] = members[n].url end
    end
    local out = sh(("for u in %s; do curl -s -m 1 -X POST -d '{}' \"$u/v3/maintenance/status\"; echo; done")
        :format(table.concat(urls, " ")))
    for line in out:gmatch("[^\n]+") do
        local lead = line:match('"leader":"(%d+)"')
        if lead and lead ~= "0" then return lead end
    end
end

local member_ids = {}  -- etcd member id (decimal) -> name

local function learn_ids()
    for _, n in ipairs(member_names) do
        local out = sh(("curl -s -m 1 -X POST -d '{}' %s/v3/maintenance/status"):format(members[n].url))
        local id = out:match('"member_id":"(%d+)"')
        if id then member_ids[id] = n end
    end
end

local function restart_member(name)
    local out = dir .. "/restart.out"
    local pid = spawn("cluster-up --restart " .. name, { "sh", "-c",
        ('exec env -u LD_PRELOAD sh "$0" "$1" --restart "$2" >"$3" 2>&1'),
        here .. "/cluster-up", dir, name, out })
    restarting = { name = name, pid = pid, out = out, since = now(),
                   tries = (restarting and restarting.tries or 0) + 1 }
end

local function poll_restart()
    local r = restarting
    if not r or not r.pid or alive(r.pid) then return end
    local text = read_file(r.out)
    local m = parse_member(text:match("^[^\n]*"))
    if m then
        members[r.name] = m
        note_etcd(m)
        log("member %s restarted (pid %d) after %.1f s", r.name, m.pid, now() - r.since)
        restarting = nil
        return
    end
    if r.tries >= 3 then error(("cannot restart member %s:\n%s"):format(r.name, text), 0) end
    log("restarting member %s failed, trying again: %s", r.name, (text:gsub("\n", " | ")))
    r.pid = nil
    after(1, function() restart_member(r.name) end)
end

-- ---------------------------------------------------------- proxies --

local Proxy = {}
Proxy.__index = Proxy

local proxy_n = 0
local function new_proxy(target_port)
    proxy_n = proxy_n + 1
    local fifo = ("%s/proxy%d.in"):format(dir, proxy_n)
    local out = ("%s/proxy%d.out"):format(dir, proxy_n)
    assert(sh("mkfifo " .. quote(fifo)))
    -- opened read-write (Linux): neither end blocks, and the proxy never
    -- sees end-of-file while we hold it
    local ctl = assert(io.open(fifo, "r+"))
    ctl:setvbuf("no")
    local pid = spawn("faultproxy", { "sh", "-c", 'exec env -u LD_PRELOAD "$0" 0 "$1" <"$2" >"$3" 2>&1',
                                      faultproxy, "127.0.0.1:" .. target_port, fifo, out })
    local self = setmetatable({ pid = pid, ctl = ctl, out = out }, Proxy)
    local deadline = now() + 5
    while not self.port do
        self.port = read_file(out):match("(%d+)")
        if not self.port and (now() > deadline or not alive(pid)) then
            kill_wait(pid)
            error("faultproxy did not start: " .. read_file(out), 0)
        end
        if not self.port then locker.sleep(0.02) end
    end
    self.url = "http://127.0.0.1:" .. self.port
    return self
end

function Proxy:send(line)
    if alive(self.pid) then self.ctl:write(line, "\n") end
end

function Proxy:close()
    kill_wait(self.pid)
    self.ctl:close()
end

-- ---------------------------------------------------------- contenders --

local events_path, fence_path

-- role: "contender" (the default) or "observer" (watch_all, no lock).
local function start_contender(role)
    local c = { ttl = random(2, 3), proxies = {}, role = role or "contender" }
    local endpoints = {}
    for _, n in ipairs(member_names) do
        if faultproxy then
            local p = new_proxy(members[n].port)
            c.proxies[#c.proxies + 1] = p
            endpoints[#endpoints + 1] = p.url
        else
            endpoints[#endpoints + 1] = members[n].url
        end
    end
    local seed = random(1, 1073741823)
    local me = read_file("/proc/self/stat"):match("^(%d+)")
    local n = #contenders + 1
    c.log = ("%s/%s%d.log"):format(dir, c.role, n)
    local argv = { "sh", "-c", 'exec "$0" "$@" >"$CHAOS_LOG" 2>&1', lua, here .. "/chaos-contender.lua",
                   events_path, fence_path, tostring(c.ttl), tostring(seed), me,
                   fmt("%.3f", run_end + 60) }
    for _, e in ipairs(endpoints) do argv[#argv + 1] = e end
    -- the log path travels in the environment (process.spawn's extra env)
    local env = { "CHAOS_LOG=" .. c.log, "CHAOS_LIMIT=" .. opts.limit, "CHAOS_ROLE=" .. c.role,
                  "CHAOS_PRIMITIVE=" .. (opts.election and "election" or "lock"),
                  "CHAOS_LOCK_DELAY=" .. opts.lock_delay }
    if process.spawn then
        c.pid = assert(process.spawn(argv, env))
        procs[c.pid] = { what = c.role }
    else
        argv[3] = table.concat(env, " ", 2) .. ' exec "$0" "$@" >' .. quote(c.log) .. ' 2>&1'
        c.pid = spawn(c.role, argv)
    end
    contenders[#contenders + 1] = c
    return c
end

local function live_contenders()
    local list = {}
    for _, c in ipairs(contenders) do
        if not c.dead then list[#list + 1] = c end
    end
    return list
end

local function pick(list)
    if #list > 0 then return list[random(#list)] end
end

-- A contender to hurt: the holder with probability p_holder (when one
-- holds the lock and is not already stopped), else any live one.
local function victim(p_holder, filter)
    local list, holders = {}, {}
    for _, c in ipairs(live_contenders()) do
        if not filter or filter(c) then
            list[#list + 1] = c
            if holder[tostring(c.pid)] then holders[#holders + 1] = c end
        end
    end
    if #holders > 0 and random() < p_holder then return pick(holders), true end
    return pick(list), false
end

local function bury(c)
    c.dead = true
    for _, p in ipairs(c.proxies) do p:close() end
end

local function check_contenders()
    for _, c in ipairs(contenders) do
        if not c.dead and not c.killing and not alive(c.pid) then
            local status = procs[c.pid].status
            local tail = read_file(c.log):sub(-600)
            crashes[#crashes + 1] = fmt("contender %d exited by itself (status %s): %s",
                                        c.pid, tostring(status), tail)
            log("contender %d exited by itself (status %s); starting another", c.pid, tostring(status))
            bury(c)
            start_contender(c.role)
        end
    end
end

-- --------------------------------------------------------------- events --

local events_f, events_rest = nil, ""

-- Reads new event lines to know who holds the lock now.
local function follow_events()
    events_f = events_f or io.open(events_path)
    if not events_f then return end
    local chunk = events_f:read("*a")
    if not chunk or chunk == "" then return end
    local text = events_rest .. chunk
    local last = 1
    for line, pos in text:gmatch("([^\n]*)\n()") do
        local kind, pid, token = line:match("^(%u) (%d+) (%S+)")
        local opid, otoken, ot = line:match("^O (%d+) chaos (%d+) %d+ (%S+)")
        if opid then observed[opid] = { token = otoken, t = tonumber(ot) } end
        if kind == "A" then
            holder[pid] = token
            holder_key[pid] = line:match("^A %d+ %S+ %S+ (%S+)$")
        elseif kind == "R" or kind == "L" then
            if kind == "L" and deleted[pid .. " " .. token] then deletes.noticed = deletes.noticed + 1 end
            holder[pid] = nil
            holder_key[pid] = nil
        end
        last = pos
    end
    events_rest = text:sub(last)
end

-- --------------------------------------------------------------- faults --

local function fault_stop()
    local c, was_holder = victim(0.8, function(x) return not x.stopped end)
    if not c then return end
    local secs = c.ttl + 0.5 + random() * 2
    kill(c.pid, "STOP")
    c.stopped = true
    count(was_holder and "stop holder (SIGSTOP > ttl)" or "stop waiter (SIGSTOP > ttl)")
    log("SIGSTOP contender %d (%s, ttl %d) for %.1f s", c.pid, was_holder and "holder" or "waiter", c.ttl, secs)
    after(secs, function()
        c.stopped = false
        if c.dead then return end
        kill(c.pid, "CONT")
        log("SIGCONT contender %d", c.pid)
    end)
end

local function fault_member()
    if restarting then return false end
    for _, n in ipairs(member_names) do
        if not members[n].up then return false end
    end
    local lead = leader()
    local name = lead and member_ids[lead]
    if not name or random() < 0.5 then name = member_names[random(#member_names)] end
    local is_leader = lead ~= nil and member_ids[lead] == name
    local m = members[name]
    m.up = false
    if not kill_wait(m.pid, 10) then error(("etcd member %s (pid %d) does not die"):format(name, m.pid), 0) end
    count(is_leader and "kill etcd leader" or "kill etcd follower")
    local pause = 0.5 + random() * 3
    log("SIGKILL member %s%s; restarting it in %.1f s", name, is_leader and " (leader)" or "", pause)
    restarting = { name = name, since = now(), tries = 0 }
    after(pause, function() restart_member(name) end)
    return true
end

local function fault_contender()
    local c, was_holder = victim(0.7)
    if not c then return end
    c.killing = true
    kill_wait(c.pid, 10)
    bury(c)
    count(was_holder and "kill holder" or "kill waiter")
    local n = start_contender(c.role)
    log("SIGKILL contender %d (%s); started %d", c.pid, was_holder and "holder" or "waiter", n.pid)
end

-- A proxy fault on one contender's three proxies: cmd for secs (a number,
-- or a function of the contender), then undo.
local function fault_proxy(kind, cmd, undo, secs)
    local c, was_holder = victim(0.8, function(x) return not x.stopped and not x.proxied end)
    if not c then return end
    if type(secs) == "function" then secs = secs(c) end
    c.proxied = true
    for _, p in ipairs(c.proxies) do p:send(cmd) end
    count(kind == "partition" and (was_holder and "partition holder" or "partition waiter") or kind)
    log("proxy %s for contender %d (%s) for %.1f s", cmd, c.pid, was_holder and "holder" or "waiter", secs)
    after(secs, function()
        if not c.dead then
            for _, p in ipairs(c.proxies) do p:send(undo) end
        end
        c.proxied = false
    end)
end

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function base64(str)
    local out = {}
    for i = 1, #str, 3 do
        local a, b, c = str:byte(i, i + 2)
        local n = a * 65536 + (b or 0) * 256 + (c or 0)
        local q = {}
        for k = 1, 4 do
            local v = math.floor(n / 64 ^ (4 - k)) % 64
            q[k] = b64chars:sub(v + 1, v + 1)
        end
        if not c then q[4] = "=" end
        if not b then q[3] = "=" end
        out[#out + 1] = table.concat(q)
    end
    return table.concat(out)
end

-- Deletes contender c's lock key (the one its last A line named) with one
-- deleterange sent straight to a running member, as a foreign client
-- would; notes "D pid token t_sent t_answered live|muted" in the events
-- when etcd deleted it. Only while every member runs (so that the request
-- does not wait for an election); false when it was not sent.
local function delete_key(c, why)
    local pid = tostring(c.pid)
    local token, key = holder[pid], holder_key[pid]
    if not (token and key) or c.dead or c.killing or restarting then return false end
    for _, n in ipairs(member_names) do
        if not members[n].up then return false end
    end
    local m = members[member_names[random(#member_names)]]
    local mode = c.muted and "muted" or "live"
    local t_sent = now()
    local out = sh(("curl -s -m 3 -X POST -d '{\"key\":\"%s\"}' %s/v3/kv/deleterange")
        :format(base64(key), m.url))
    local t_answered = now()
    local n = out:match('"deleted":"(%d+)"')
    if not out:match('"header"') then
        deletes.unanswered = deletes.unanswered + 1
        log("delete %s of contender %d (%s): no answer from %s: %s", key, c.pid, why, m.name, out)
    elseif n == "1" then
        local f = assert(io.open(events_path, "a"))
        f:write(fmt("D %s %s %.6f %.6f %s\n", pid, token, t_sent, t_answered, mode))
        f:close()
        deleted[pid .. " " .. token] = true
        if mode == "muted" then deletes.muted = deletes.muted + 1 end
        count("foreign delete (" .. mode .. " stream)")
        log("deleted %s, contender %d's key (token %s, %s; %s stream) in %.3f s", key, c.pid, token, why,
            mode, t_answered - t_sent)
    else
        deletes.gone = deletes.gone + 1
        log("delete %s of contender %d (%s): already gone", key, c.pid, why)
    end
    return true
end

local function fault_delete()
    local list = {}
    for _, c in ipairs(live_contenders()) do
        if holder[tostring(c.pid)] and holder_key[tostring(c.pid)] and not c.killing then list[#list + 1] = c end
    end
    local c = pick(list)
    return c ~= nil and delete_key(c, "at random")
end

-- Mutes the watch streams of one contender (the holder, mostly) for longer
-- than its trust time; with p_delete (when it holds the lock then), its
-- key is deleted at a random moment of the mute.
local function fault_mute(p_delete)
    local c, was_holder = victim(0.85, function(x) return not x.stopped and not x.proxied end)
    if not c then return false end
    local trust = 1 + math.min(2, c.ttl / 5) / 2
    local secs = trust + 0.8 + random() * 2.5
    c.proxied, c.muted = true, true
    for _, p in ipairs(c.proxies) do p:send("mute /v3/watch") end
    count(was_holder and "mute holder's watch stream" or "mute waiter's watch stream")
    local at = was_holder and random() < p_delete and 0.2 + random() * (secs - 0.4)
    log("proxy mute /v3/watch for contender %d (%s) for %.1f s%s", c.pid, was_holder and "holder" or "waiter",
        secs, at and fmt(", deleting its key %.1f s in", at) or "")
    if at then
        after(at, function()
            if not c.dead and holder[tostring(c.pid)] then delete_key(c, "during a mute") end
        end)
    end
    after(secs, function()
        if not c.dead then
            for _, p in ipairs(c.proxies) do p:send("unmute /v3/watch") end
        end
        c.proxied, c.muted = false, false
    end)
    return true
end

local function inject()
    -- every run sees a noticed foreign delete (behind a muted stream too)
    local elapsed = (now() - (run_end - opts.seconds)) / opts.seconds
    if faultproxy and deletes.muted == 0 and elapsed > 0.5 and fault_mute(1) then return end
    if deletes.noticed == 0 and elapsed > 0.3 and fault_delete() then return end
    local r = random()
    if r < 0.1 and fault_delete() then return end
    if faultproxy and r >= 0.1 and r < 0.22 and fault_mute(0.7) then return end
    r = random()  -- the other kinds
    if faultproxy then
        if r < 0.12 then
            return fault_proxy("partition", "blackhole", "pass", function(c) return c.ttl + 0.5 + random() * 2 end)
        elseif r < 0.18 then
            return fault_proxy("cut connections", "cut", "pass", 0.2 + random())
        elseif r < 0.23 then
            return fault_proxy("refuse connections", "refuse", "pass", 0.5 + random() * 2)
        elseif r < 0.31 then
            return fault_proxy("drop keepalives", "drop /v3/lease/keepalive", "undrop /v3/lease/keepalive",
                               3.5 + random() * 2)
        elseif r < 0.38 then
            return fault_proxy("delay answers", "delay " .. random(300, 1500), "delay 0", 2 + random() * 3)
        end
        r = (r - 0.38) / 0.62
    end
    if r < 0.4 then
        fault_stop()
    elseif r < 0.7 then
        if not fault_member() then fault_stop() end
    else
        fault_contender()
    end
end

-- Runs the timers that are due, in time order.
run_timers = function()
    local due = {}
    for i = #timers, 1, -1 do
        if timers[i].at <= now() then
            due[#due + 1] = timers[i]
            table.remove(timers, i)
        end
    end
    table.sort(due, function(a, b) return a.at < b.at end)
    for _, t in ipairs(due) do t.fn() end
end

-- After the contenders were killed: the faults still under way end (their
-- timers run), and the observer must report the name free once the last
-- lease ran out (ttl) plus its own timeout + margin, with 3 s to spare;
-- whether it did (no observer alive: false).
await_observer = function()
    local since = now()
    local deadline = since + 6 + 3 + 1 + 0.6 + 3  -- a fault still under way lasts 6 s at most
    while now() < deadline do
        follow_events()
        run_timers()
        poll_restart()
        for pid, rep in pairs(observed) do
            local c
            for _, x in ipairs(contenders) do
                if tostring(x.pid) == pid and not x.dead then c = x end
            end
            if c and rep.token == "0" and rep.t > since and not c.stopped then return true end
        end
        locker.sleep(0.05)
    end
    return false
end

local history = dofile(here .. "/chaos-history.lua")

-- Reads etcd's history from a running member and checks it; the figures,
-- or { error = why } when it cannot be read.
check_history = function()
    for _, n in ipairs(member_names) do
        if members[n].up then
            local evs, err = history.fetch(members[n].url, sh)
            if not evs then return { error = err, violations = {} } end
            return history.check(evs, events_path, opts.limit)
        end
    end
    return { error = "no etcd member runs", violations = {} }
end

-- ------------------------------------------------------------- checker --

local fence_checker = dofile((arg[0]:match("^(.*)/[^/]*$") or ".") .. "/chaos-fence.lua")

local function report(ev, fence, interrupted, hist)
    local total_faults = 0
    for _, k in ipairs(fault_order) do total_faults = total_faults + faults[k] end
    local rows = {}
    local function row(label, n, note)
        rows[#rows + 1] = fmt("  %-38s %8d%s", label, n, note and ("   " .. note) or "")
    end
    local function rowf(label, secs, note)  -- a duration, in s
        rows[#rows + 1] = fmt("  %-38s %8.3f%s", label, secs, note and ("   " .. note) or "")
    end
    local del = fence.deletes
    print("")
    if opts.check then
        print("chaos: the files in " .. opts.check)
    else
        print(fmt("chaos: %d s, %d contenders (ttl 2-3 s)%s%s, 1 observer, 3 etcd members, seed %d%s",
                  opts.seconds, opts.contenders,
                  opts.limit > 1 and fmt(" for a semaphore of %d", opts.limit) or "",
                  opts.election and " campaigning" or "",
                  opts.seed, faultproxy and ", behind fault proxies" or ""))
    end
    row("contenders started", ev.started)
    row("acquisitions", ev.acquired)
    for _, code in ipairs(ev.failure_order) do row("lock() failed: " .. code, ev.failures[code]) end
    row("locks lost while held", ev.lost)
    row("releases", ev.released, ev.release_failures > 0 and fmt("(%d failed)", ev.release_failures) or nil)
    row("owned() samples", ev.samples, ev.wide > 0 and fmt("(%d stopped mid-sample)", ev.wide) or nil)
    if not opts.check then
        for _, k in ipairs(fault_order) do row("fault: " .. k, faults[k]) end
        row("faults injected", total_faults)
        if deletes.gone > 0 then row("delete: key gone already (no fault)", deletes.gone) end
        if deletes.unanswered > 0 then row("delete: no answer (not counted)", deletes.unanswered) end
    end
    local bound = del.bound_lo and (del.bound_lo == del.bound_hi and fmt("%.2f", del.bound_lo)
        or fmt("%.2f-%.2f", del.bound_lo, del.bound_hi))
    row("foreign deletes", del.count, fmt("(%d live stream, %d muted stream)", del.live, del.muted))
    if del.count > 0 then
        row("  noticed: owned() false while held", del.noticed)
        row("  released before noticing", del.released_first)
        local w = del.worst
        rowf("  worst owned-after-delete delay", w.delay,
             fmt("s (pid %s, %s stream; bound timeout + margin %s s, + %.2f s allowed)",
                 w.pid, w.mode, bound, fence_checker.allowance))
        if del.worst_noticed then
            rowf("  slowest notice (owned() false)", del.worst_noticed.noticed_after,
                 fmt("s after the delete (%s stream)", del.worst_noticed.mode))
        end
        rowf("  slowest delete request", del.worst_request, "s")
    end
    row("fence: writes accepted", fence.accepted)
    row("fence: stale writes rejected", fence.rejected)
    row("overlaps after a foreign delete", fence.expected_overlaps,
        fence.expected_overlaps > 0 and fmt("(expected, within the bound; longest %.3f s)", fence.worst_expected)
        or nil)
    row("violations: token reuse", fence.reuse)
    row("violations: owned after foreign delete", del.late)
    if fence.limit > 1 then
        row("most owners at one moment", fence.most, fmt("(limit %d)", fence.limit))
        row("violations: more owners than the limit", fence.overlaps)
    else
        row("violations: overlapping ownership", fence.overlaps)
    end
    local hv = hist and hist.violations or {}
    if hist and hist.error then
        rows[#rows + 1] = "  etcd's history: not checked: " .. hist.error
    elseif hist then
        row("etcd's history: events replayed", hist.events)
        row("guarded writes made (etcd)", hist.puts, fmt("(%d refused: not_owner or lost)", ev.guard_refused or 0))
        row("violations: guarded write by a non-owner", hist.bad_puts)
        row("owner changes (etcd)", hist.owner_changes)
        row("watch_all reports checked", hist.reports,
            fmt("(%d observers, %d resyncs, %d changes folded)", hist.observers, hist.resyncs, hist.skipped))
        row("violations: report not etcd's owner", hist.bad_reports)
        row("observer saw the name free at the end", hist.converged and 1 or 0)
    end
    if #crashes > 0 then row("contenders that died by themselves", #crashes) end
    for _, r in ipairs(rows) do print(r) end
    for _, v in ipairs(fence.violations) do print(v) end
    for _, v in ipairs(hv) do print(v) end
    for _, c in ipairs(crashes) do print("CRASH " .. c) end
    print(fmt("chaos: acquisitions=%d faults=%d accepted=%d rejected=%d violations=%d crashes=%d "
              .. "deletes=%d muted_deletes=%d noticed=%d expected_overlaps=%d worst_delay_ms=%d bound_ms=%d "
              .. "limit=%d most_owners=%d guarded=%d reports=%d history=%s lock_delay=%d",
              ev.acquired, total_faults, fence.accepted, fence.rejected, #fence.violations + #hv, #crashes,
              del.count, del.muted, del.noticed, fence.expected_overlaps,
              math.floor((del.worst and del.worst.delay or 0) * 1000 + 0.5),
              math.floor(((del.bound_hi or 0) + fence_checker.allowance) * 1000 + 0.5),
              fence.limit, fence.most, hist and hist.puts or 0, hist and hist.reports or 0,
              hist and (hist.error and "unread" or "ok") or "none", opts.lock_delay))
    local failed = {}
    if #fence.violations + #hv > 0 then failed[#failed + 1] = fmt("%d violations", #fence.violations + #hv) end
    if hist and hist.error then failed[#failed + 1] = "etcd's history could not be checked" end
    if #crashes > 0 then failed[#failed + 1] = fmt("%d contenders crashed", #crashes) end
    if interrupted then failed[#failed + 1] = "interrupted" end
    if ev.acquired < opts.min_acquisitions then
        failed[#failed + 1] = fmt("only %d acquisitions (fewer than %d: the run proved nothing)",
                                  ev.acquired, opts.min_acquisitions)
    end
    if #failed > 0 then
        print("chaos: FAILED: " .. table.concat(failed, "; "))
        return false
    end
    print("chaos: OK, no violation")
    return true
end

-- ----------------------------------------------------------------- run --

local function cleanup()
    for _, c in ipairs(contenders) do
        if not c.dead then
            c.killing = true
            kill_wait(c.pid)
            bury(c)
        end
    end
    if restarting and restarting.pid then kill_wait(restarting.pid) end
    -- every member by the pid files cluster-up writes, also one mid-restart
    for _, m in pairs(members) do kill_wait(m.pid) end
    if dir then  -- and one cluster-up started but did not report yet
        for _, n in ipairs({ "m1", "m2", "m3" }) do
            local pid = tonumber(read_file(dir .. "/" .. n .. ".pid"):match("%d+"))
            if pid and alive(pid) then kill_wait(pid) end
        end
    end
    if dir and not opts.keep then sh("rm -rf " .. quote(dir)) end
    if dir and opts.keep then print("chaos: kept " .. dir) end
end

local function interrupted()
    if not sigfd then return false end
    return process.read_signal(sigfd) ~= nil
end

local function main()
    if process.signals then sigfd = process.signals({ "INT", "TERM" }) end
    t0 = now()
    dir = sh("mktemp -d " .. base .. "/locker-chaos.XXXXXX"):gsub("%s+$", "")
    assert(dir:match("locker%-chaos"), "mktemp: " .. dir)
    events_path, fence_path = dir .. "/events", dir .. "/fence"
    assert(io.open(events_path, "a")):close()
    assert(io.open(fence_path, "a")):close()
    if faultproxy and not sh("test -x " .. quote(faultproxy)) then
        error("LOCKER_FAULTPROXY is not an executable: " .. faultproxy, 0)
    end
    log("seed %d, %d s, %d contenders%s", opts.seed, opts.seconds, opts.contenders,
        faultproxy and ", through fault proxies" or "")
    start_cluster()
    learn_ids()
    for _, n in ipairs(member_names) do
        log("member %s pid %d %s", n, members[n].pid, members[n].url)
    end
    run_end = now() + opts.seconds
    for _ = 1, opts.contenders do start_contender() end
    start_contender("observer")
    local next_fault = now() + 2 + random() * 2
    local stopped_by_signal = false
    while now() < run_end do
        if interrupted() then
            stopped_by_signal = true
            log("interrupted")
            break
        end
        follow_events()
        run_timers()
        poll_restart()
        check_contenders()
        if now() >= next_fault then
            inject()
            next_fault = now() + 1.5 + random() * 3
        end
        locker.sleep(0.05)
    end
    -- no more faults: stop the contenders, let the observer see their
    -- leases run out, then read what everyone wrote
    for _, c in ipairs(contenders) do
        if not c.dead and c.role ~= "observer" then
            c.killing = true
            kill_wait(c.pid)
            bury(c)
        end
    end
    local converged = stopped_by_signal or await_observer()
    for _, c in ipairs(contenders) do
        if not c.dead then
            c.killing = true
            kill_wait(c.pid)
            bury(c)
        end
    end
    local ev, fence = fence_checker.check(events_path, fence_path, t0)
    local hist
    if not stopped_by_signal then
        hist = check_history()
        if not converged then log("the observer did not report the name free within its bound") end
    end
    return report(ev, fence, stopped_by_signal, hist), stopped_by_signal
end

if opts.check then  -- times relative to the first event
    events_path, fence_path = opts.check .. "/events", opts.check .. "/fence"
    local first = io.open(events_path)
    t0 = first and tonumber((first:read("*l") or ""):match("(%d+%.%d+)")) or 0
    if first then first:close() end
    local ok, ev, fence = pcall(fence_checker.check, events_path, fence_path, t0)
    if not ok then
        io.stderr:write("chaos: ", tostring(ev), "\n")
        os.exit(2)
    end
    os.exit(report(ev, fence, false) and 0 or 1)
end

local ok, passed, stopped = xpcall(main, debug.traceback)
local cleaned, cerr = pcall(cleanup)
if not cleaned then io.stderr:write("chaos: cleanup failed: ", tostring(cerr), "\n") end
if not ok then
    io.stderr:write("chaos: ", tostring(passed), "\n")
    os.exit(1)
end
if stopped then os.exit(130) end
os.exit(passed and 0 or 1)

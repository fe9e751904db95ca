--- Spec helper: a throwaway etcd per spec file, and small process tools.
-- etcd runs from Debian's etcd-server on free loopback ports, its data on
-- tmpfs (/dev/shm) where there is one, and is killed by pid in teardown
-- (tools/run-specs kills by pid any left over: LOCKER_PIDS lists them).
local locker = require "locker"

local helper = {}

-- A test run's temporary files go to its own directory, which
-- tools/run-specs removes at the end (Lua's os.tmpname leaves them in /tmp).
local run_tmp = os.getenv("LOCKER_TMP")
if run_tmp and run_tmp ~= "" then
    local made = 0
    local self_stat = io.open("/proc/self/stat")
    local pid = self_stat and self_stat:read("*a"):match("^%d+") or "0"
    if self_stat then self_stat:close() end
    -- busted may load this file again for each spec file, in one process,
    -- so the counter starts again: a name already there is skipped
    function os.tmpname()  -- luacheck: ignore 122 (replaced on purpose)
        local path
        repeat
            made = made + 1
            path = ("%s/%s-%d"):format(run_tmp, pid, made)
            local there = io.open(path)
            if there then there:close() end
        until not there
        assert(io.open(path, "w")):close()
        return path
    end
end

local quote

-- Runs cmd; returns its output, success and exit code (read from the
-- output: Lua 5.1's popen close() does not give it).
local function run(prefix, cmd)
    local p = assert(io.popen(prefix .. "sh -c " .. quote("(" .. cmd .. ") 2>&1; echo \"\n__rc=$?\"")))
    local out = p:read("*a")
    p:close()
    local body, code = out:match("^(.*)\n__rc=(%d+)\n?$")
    code = tonumber(code)
    return body or out, code == 0, code
end

-- Runs a shell command; programs it starts never inherit a sanitizer
-- runtime preloaded into the test interpreter (make sanitize).
local function sh(cmd)
    return run("env -u LD_PRELOAD ", cmd)
end
helper.sh = sh

--- Runs bin/locker with args (a shell-quoted string) and the spec's Lua
-- environment; returns its output (stdout and stderr), success, exit code.
function helper.locker(etcd, args, env)
    return run("", ("LOCKER_ENDPOINTS=%s %s %s bin/locker %s")
        :format(etcd and etcd.endpoint or "http://127.0.0.1:1", env or "", helper.lua, args))
end

--- Runs a Lua script in a process of its own with the spec's Lua
-- environment (a sanitizer runtime stays preloaded for it, not for the
-- timeout command around it), killed after seconds; returns its output,
-- success and exit code.
function helper.script(path, args, env, seconds)
    local preload = os.getenv("LD_PRELOAD")
    return run("", ("env -u LD_PRELOAD timeout -s KILL %d env %s %s %s %s %s")
        :format(seconds or 60, preload and ("LD_PRELOAD=" .. quote(preload)) or "",
                env or "", helper.lua, path, args or ""))
end

function quote(s)
    return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
helper.quote = quote

--- Whether process pid runs (a zombie, exited but not reaped, does not).
function helper.alive(pid)
    local f = io.open("/proc/" .. pid .. "/stat")
    if not f then return false end
    local stat = f:read("*a")  -- nil: it was reaped between the open and the read
    f:close()
    local state = stat and stat:match("^%d+ %b() (%a)")
    return state ~= nil and state ~= "Z"
end

function helper.kill(pid, sig)
    sh(("kill -%s %d"):format(sig or "TERM", pid))
end

--- Waits (driving locker's scheduler) until fn() is truthy; its value, or
-- error after timeout seconds naming what was awaited.
function helper.wait_until(what, fn, timeout)
    local deadline = locker.now() + (timeout or 10)
    while true do
        local v = fn()
        if v then return v end
        if locker.now() > deadline then error("timed out waiting for " .. what, 2) end
        locker.sleep(0.02)
    end
end

--- Starts cmd in the background (its output to a file); returns pid, file.
-- keep_preload: a Lua process loading the module keeps the sanitizer
-- runtime (make sanitize); other programs never get it.
function helper.spawn(cmd, keep_preload)
    local out = os.tmpname()
    local pid = (keep_preload and run("", ("(%s) </dev/null >%s 2>&1 & echo $!"):format(cmd, out))
                 or sh(("(%s) </dev/null >%s 2>&1 & echo $!"):format(cmd, out)))
    return tonumber(pid:match("%d+")), out
end

--- Writes text to a new temporary file (a script, a config); its path.
function helper.file(text)
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write(text)
    f:close()
    return path
end

function helper.read(path)
    local f = io.open(path)
    if not f then return "" end
    local s = f:read("*a")  -- nil: a /proc file whose process went meanwhile
    f:close()
    return s or ""
end

-- The interpreter running the specs (tools/run-specs exports it).
helper.lua = os.getenv("LOCKER_LUA") or "lua5.4"

local Holder = {}
Holder.__index = Holder

--- Starts spec/holder.lua in its own process, holding NAME with VALUE.
-- Waits until it holds the lock (or fails). It keeps the module's
-- environment, so a sanitizer runtime stays preloaded for it.
function helper.holder(etcd, prefix, name, value, ttl)
    local out = os.tmpname()
    local cmd = ("exec %s spec/holder.lua %s %s %s %s %d >%s 2>&1")
        :format(helper.lua, etcd.endpoint, quote(prefix), quote(name), quote(value),
                ttl or 10, out)
    local self = setmetatable({ out = out, stdin = assert(io.popen(cmd, "w")) }, Holder)
    self:wait_for("^held")
    self.pid = tonumber(helper.read(out):match("held %S+ (%d+)"))
    return self
end

--- Sends a command line to the holder.
function Holder:send(line)
    self.stdin:write(line, "\n")
    self.stdin:flush()
end

--- Waits until the holder's output has a line matching pattern.
function Holder:wait_for(pattern, timeout)
    return helper.wait_until("holder output " .. pattern, function()
        for line in helper.read(self.out):gmatch("[^\n]+") do
            if line:match(pattern) then return line end
        end
    end, timeout)
end

--- Kills the holder (SIGKILL unless told) and waits until it is gone.
function Holder:kill(sig)
    helper.kill(self.pid, sig or "KILL")
    helper.wait_until("holder to die", function() return not helper.alive(self.pid) end)
    pcall(self.stdin.close, self.stdin)
end

function Holder:quit()
    if helper.alive(self.pid) then
        self:send("quit")
        pcall(self.stdin.close, self.stdin)
    end
    os.remove(self.out)
end

--- This process's pid.
function helper.pid()
    return tonumber(helper.read("/proc/self/stat"):match("^%d+"))
end

--- Established TCP connections from this process to port.
function helper.connections(port)
    local out = sh(("ss -tnpH state established '( dport = :%s )'"):format(port))
    local n, me = 0, "pid=" .. helper.pid() .. ","
    for line in out:gmatch("[^\n]+") do
        if line:find(me, 1, true) then n = n + 1 end
    end
    return n
end

--- Resident memory of process pid (default: this one), KiB.
function helper.rss(pid)
    return tonumber(helper.read("/proc/" .. (pid or "self") .. "/status"):match("VmRSS:%s*(%d+)"))
end

--- { [v] = true } for each v of list.
function helper.set_of(list)
    local s = {}
    for _, v in ipairs(list) do s[v] = true end
    return s
end

local Tool = {}
Tool.__index = Tool

--- Starts one of the project's test tools (tools/faultproxy.c,
-- tools/badgw.c): a program that listens on a free loopback port, prints
-- it, reads command lines from its stdin (so it ends with the spec's
-- process at the latest) and answers "stats" with one line. args follow
-- the port argument (0: any free port). Returns an object with pid, port,
-- endpoint; raises, saying why, when the tool cannot start.
function helper.tool(name, path, args, class)
    local _, built = sh("test -x " .. quote(path))
    if not built then error("no " .. path .. " (make test builds it)", 3) end
    local out = os.tmpname()
    -- its output file: the shell's pid (exec keeps it), then the tool's
    -- port line, stats lines and any complaint
    local self = setmetatable({ name = name, out = out }, class or Tool)
    self.stdin = assert(io.popen(("echo $$ >%s; exec env -u LD_PRELOAD %s 0 %s >>%s 2>&1")
        :format(quote(out), quote(path), args, quote(out)), "w"))
    local ok, head = pcall(helper.wait_until, name .. " to listen", function()
        return helper.read(out):match("^%d+\n%d+\n")
    end, 5)
    if not ok then error(("cannot start %s: %s: %s"):format(name, head, helper.read(out)), 3) end
    local pid, port = head:match("^(%d+)\n(%d+)\n")
    self.pid, self.port = tonumber(pid), port
    self.endpoint = "http://127.0.0.1:" .. port
    return self
end

-- The tool's stats lines so far (lines of "word=N ..."): their number and
-- the last one.
function Tool:stats_lines()
    local n, last = 0, nil
    for line in helper.read(self.out):gmatch("[^\n]+") do
        if line:match("^%a+=%d") then n, last = n + 1, line end
    end
    return n, last
end

--- Sends a command line (nil: none), then "stats", and waits until the
-- tool answered (it applies lines in order, so the command took effect);
-- returns the stats line's fields as a table of numbers.
function Tool:command(line)
    if self.closed or not helper.alive(self.pid) then
        error(self.name .. " is gone: " .. helper.read(self.out), 3)
    end
    local before = self:stats_lines()
    self.stdin:write(line and line ~= "stats" and line .. "\n" or "", "stats\n")
    self.stdin:flush()
    local answer = helper.wait_until(self.name .. " to apply " .. tostring(line), function()
        if not helper.alive(self.pid) then error(self.name .. " exited: " .. helper.read(self.out)) end
        local n, last = self:stats_lines()
        return n > before and last
    end, 5)
    local fields = {}
    for k, v in answer:gmatch("(%a+)=(%d+)") do fields[k] = tonumber(v) end
    return fields
end

--- Tool:stats([line]): the tool's stats (after line, when given), as
-- Tool:command.
Tool.stats = Tool.command

--- Ends the tool (its connections with it) and waits until it is gone.
-- Idempotent.
function Tool:close()
    if self.closed then return end
    self.closed = true
    local gone = function() return not helper.alive(self.pid) end
    helper.kill(self.pid, "TERM")
    if not pcall(helper.wait_until, self.name .. " to exit", gone, 5) then
        helper.kill(self.pid, "KILL")
        helper.wait_until(self.name .. " to exit", gone, 5)
    end
    pcall(self.stdin.close, self.stdin)   -- reaps it: it has exited
    os.remove(self.out)
end

local Proxy = setmetatable({}, { __index = Tool })
Proxy.__index = Proxy

-- tools/faultproxy.c, built by make (tools/run-specs names it)
local faultproxy = os.getenv("LOCKER_FAULTPROXY") or "build/5.4/faultproxy"

--- A TCP proxy to etcd on a port of its own (tools/faultproxy.c), to break
-- the client's connections while etcd itself stays up: cut them, refuse
-- new ones, black-hole them, delay answers or swallow some requests.
-- etcd:destroy() closes the proxies made for it.
function helper.proxy(etcd)
    local self = helper.tool("the proxy", faultproxy, "127.0.0.1:" .. etcd.port, Proxy)
    self.listen_mode, self.target = "pass", etcd.port
    etcd.proxies = etcd.proxies or {}
    etcd.proxies[#etcd.proxies + 1] = self
    return self
end

--- Sends a control line ("pass", "blackhole", "cut", "refuse", "drop PATH",
-- "undrop PATH", "mute PATH", "unmute PATH" (cuts what lost data), "unmute-keep PATH"
-- (lets it go on, lossy), "delay MS") and waits until the proxy has applied it;
-- returns its stats then (see Proxy:stats).
function Proxy:mode(line)
    if line == "pass" or line == "blackhole" then self.listen_mode = line end
    return self:command(line)
end

-- Proxy:stats() (Tool's): { conns = open connections, accepted =
-- connections so far, dropped = requests swallowed so far }.

--- Cuts every connection through the proxy and stops listening.
function Proxy:stop()
    self:mode("refuse")
end

--- Listens again on the same port.
function Proxy:restart()
    self:mode(self.listen_mode)
    local listening = sh(("ss -tlnH '( sport = :%s )'"):format(self.port)):find("LISTEN", 1, true)
    if not listening then error("the proxy cannot listen again: " .. helper.read(self.out), 2) end
end

--- Runs fn(...) as a spawned coroutine; returns a box whose .done is true
-- when it returned, with its results in .r.
function helper.go(fn, ...)
    local box = {}
    local args = { n = select("#", ...), ... }
    locker.spawn(function()
        box.r = { fn((table.unpack or unpack)(args, 1, args.n)) }
        box.done = true
    end)
    return box
end

local Etcd = {}
Etcd.__index = Etcd

local function tmp_base()
    local _, ok = sh("test -d /dev/shm -a -w /dev/shm")
    return ok and "/dev/shm" or (os.getenv("TMPDIR") or "/tmp")
end

--- Starts an etcd; fails the calling test (raises) when it cannot.
-- opts: tls (a directory of tools/tls-certs: https with client
-- certificates), args (more etcd flags).
function helper.etcd(opts)
    opts = opts or {}
    local dir = sh("mktemp -d " .. tmp_base() .. "/locker-etcd.XXXXXX"):gsub("%s+$", "")
    local self = setmetatable({ dir = dir, tls = opts.tls, args = opts.args }, Etcd)
    self:start()
    return self
end

function Etcd:start(port)
    local env = (self.tls and "ETCD_UP_TLS=" .. quote(self.tls) .. " " or "")
             .. (self.args and "ETCD_UP_ARGS=" .. quote(self.args) .. " " or "")
    local out, ok = sh(("%stools/etcd-up %s %s"):format(env, quote(self.dir), port or ""))
    local pid, url = out:match("(%d+) (https?://%S+)")
    if not ok or not pid then error("cannot start etcd: " .. out, 2) end
    self.pid, self.endpoint = tonumber(pid), url
    self.port = url:match(":(%d+)$")
    -- tools/run-specs kills (by pid) whichever of these is left at the end
    local pids = os.getenv("LOCKER_PIDS")
    local f = pids and pids ~= "" and io.open(pids, "a")
    if f then
        f:write(pid, " ", self.dir, "\n")
        f:close()
    end
end

--- Kills etcd (SIGKILL unless told) and waits until the process is gone.
function Etcd:stop(sig)
    if not self.pid then return end
    helper.kill(self.pid, sig or "KILL")
    local deadline = locker.now() + 10
    while helper.alive(self.pid) and locker.now() < deadline do
        locker.sleep(0.02)
    end
    self.pid = nil
end

--- Kills it and starts it again on the same port with the same data.
function Etcd:restart()
    self:stop()
    self:start(self.port)
end

--- Stops it (and the proxies made for it) and removes its data.
function Etcd:destroy()
    for _, p in ipairs(self.proxies or {}) do p:close() end
    self.proxies = nil
    self:stop()
    sh("rm -rf " .. quote(self.dir))
end

--- Runs etcdctl against this etcd (as self.ctl_user "NAME:PASSWORD" when
-- set); returns its output and success.
function Etcd:ctl(args)
    local t = self.tls
    local flags = t and ("--cacert %s/ca.crt --cert %s/client.crt --key %s/client.key ")
        :format(t, t, t) or ""
    if self.ctl_user then flags = flags .. "--user " .. quote(self.ctl_user) .. " " end
    return sh(("ETCDCTL_API=3 etcdctl --endpoints=%s %s%s"):format(self.endpoint, flags, args))
end

--- The keys under prefix (a list of strings). The client's probe key
-- (prefix .. "/probe", on its session lease, gone with it) is left out
-- unless all is true.
function Etcd:keys(prefix, all)
    local out = self:ctl("get --prefix --keys-only " .. quote(prefix))
    local keys = {}
    for line in out:gmatch("[^\n]+") do
        if all or line ~= prefix .. "/probe" then keys[#keys + 1] = line end
    end
    return keys
end

--- A client on this etcd with a test's own prefix.
function Etcd:client(opts)
    opts = opts or {}
    opts.endpoints = opts.endpoints or { self.endpoint }
    return assert(locker.new(opts))
end

-- Debian's python3 (its prometheus_client is there, whatever python3 is
-- first on PATH)
local PYTHON = "/usr/bin/python3"

-- Parses text with prometheus_client.parser; a table "name{labels}" ->
-- value (labels sorted, as name{a="1",b="2"}), and the family types.
local parse_py = [[
import sys
from prometheus_client.parser import text_string_to_metric_families
text = open(sys.argv[1], encoding="utf-8").read()
for fam in text_string_to_metric_families(text):
    print("F\t%s\t%s" % (fam.name, fam.type))
    for s in fam.samples:
        labels = ",".join('%s=%s' % (k, v.encode("unicode_escape").decode()) for k, v in sorted(s.labels.items()))
        print("S\t%s{%s}\t%r" % (s.name, labels, s.value))
]]

--- Parses a Prometheus text exposition with Prometheus' own parser
-- (prometheus_client.parser): samples["name{a=1,b=2}"] -> value (labels
-- sorted), and types[family] -> its type. Errors if the parser refuses it.
function helper.prometheus(text)
    local path, script = helper.file(text), helper.file(parse_py)
    local out, ok = helper.sh(("%s %s %s"):format(PYTHON, helper.quote(script), helper.quote(path)))
    assert(ok, "prometheus_client refused the exposition: " .. out)
    local samples, types = {}, {}
    for line in out:gmatch("[^\n]+") do
        local name, kind = line:match("^F\t(%S+)\t(%S+)$")
        if name then types[name] = kind end
        local key, v = line:match("^S\t(.-)\t(%S+)$")
        if key then samples[key] = tonumber(v) or (v == "inf" and math.huge) or v end
    end
    return samples, types
end

return helper

--- Spec helper: a throwaway etcd per spec file, and small process tools.
-- etcd runs from Debian's etcd-server on free loopback ports, its data on
-- tmpfs (/dev/shm) where there is one, and is killed by pid in teardown.
local core = require "locker.core"

local helper = {}

local quote

-- Runs a shell command; programs it starts never inherit a sanitizer
-- runtime preloaded into the test interpreter (make sanitize).
local function sh(cmd)
    local p = assert(io.popen("env -u LD_PRELOAD sh -c " .. quote(cmd .. " 2>&1")))
    local out = p:read("*a")
    local ok, _, code = p:close()
    if type(ok) == "number" then code = ok; ok = code == 0 end  -- Lua 5.1
    return out, ok == true, code
end
helper.sh = sh

function quote(s)
    return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
helper.quote = quote

--- Whether process pid runs (a zombie, exited but not reaped, does not).
function helper.alive(pid)
    local f = io.open("/proc/" .. pid .. "/stat")
    if not f then return false end
    local stat = f:read("*a")
    f:close()
    local state = stat:match("^%d+ %b() (%a)")
    return state ~= nil and state ~= "Z"
end

function helper.kill(pid, sig)
    sh(("kill -%s %d"):format(sig or "TERM", pid))
end

--- Waits (driving locker's scheduler) until fn() is truthy; its value, or
-- error after timeout seconds naming what was awaited.
function helper.wait_until(what, fn, timeout)
    local locker = require "locker"
    local deadline = core.now() + (timeout or 10)
    while true do
        local v = fn()
        if v then return v end
        if core.now() > deadline then error("timed out waiting for " .. what, 2) end
        locker.sleep(0.02)
    end
end

--- Starts cmd in the background (its output to a file); returns pid, file.
function helper.spawn(cmd)
    local out = os.tmpname()
    local pid = sh(("%s </dev/null >%s 2>&1 & echo $!"):format(cmd, out))
    return tonumber(pid:match("%d+")), out
end

function helper.read(path)
    local f = io.open(path)
    if not f then return "" end
    local s = f:read("*a")
    f:close()
    return s
end

local Etcd = {}
Etcd.__index = Etcd

local function tmp_base()
    local _, ok = sh("test -d /dev/shm -a -w /dev/shm")
    return ok and "/dev/shm" or (os.getenv("TMPDIR") or "/tmp")
end

--- Starts an etcd; fails the calling test (raises) when it cannot.
function helper.etcd()
    local dir = sh("mktemp -d " .. tmp_base() .. "/locker-etcd.XXXXXX"):gsub("%s+$", "")
    local self = setmetatable({ dir = dir }, Etcd)
    self:start()
    return self
end

function Etcd:start(port)
    local out, ok = sh(("tools/etcd-up %s %s"):format(quote(self.dir), port or ""))
    local pid, url = out:match("(%d+) (http://%S+)")
    if not ok or not pid then error("cannot start etcd: " .. out, 2) end
    self.pid, self.endpoint = tonumber(pid), url
    self.port = url:match(":(%d+)$")
end

--- Kills etcd (SIGKILL unless told) and waits until the process is gone.
function Etcd:stop(sig)
    if not self.pid then return end
    helper.kill(self.pid, sig or "KILL")
    local deadline = core.now() + 10
    while helper.alive(self.pid) and core.now() < deadline do
        core.poll({}, 0.02)
    end
    self.pid = nil
end

--- Kills it and starts it again on the same port with the same data.
function Etcd:restart()
    self:stop()
    self:start(self.port)
end

--- Stops it and removes its data.
function Etcd:destroy()
    self:stop()
    sh("rm -rf " .. quote(self.dir))
end

--- Runs etcdctl against this etcd; returns its output and success.
function Etcd:ctl(args)
    return sh(("ETCDCTL_API=3 etcdctl --endpoints=%s %s"):format(self.endpoint, args))
end

--- The keys under prefix (a list of strings).
function Etcd:keys(prefix)
    local out = self:ctl("get --prefix --keys-only " .. quote(prefix))
    local keys = {}
    for line in out:gmatch("[^\n]+") do keys[#keys + 1] = line end
    return keys
end

--- A client on this etcd with a test's own prefix.
function Etcd:client(opts)
    local locker = require "locker"
    opts = opts or {}
    opts.endpoints = opts.endpoints or { self.endpoint }
    return assert(locker.new(opts))
end

return helper

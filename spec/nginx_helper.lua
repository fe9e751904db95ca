-- Starting a real nginx for the specs (Debian's nginx and
-- libnginx-mod-http-lua) on a free loopback port under a private prefix
-- directory, stopped by pid; the module is the LuaJIT build
-- (LOCKER_NGX_BUILD) that nginx's Lua loads.
local helper = require "helper"

local sh, quote = helper.sh, helper.quote

local M = {}

M.build = os.getenv("LOCKER_NGX_BUILD")
local _, have_nginx = sh("command -v nginx && test -f /usr/lib/nginx/modules/ngx_http_lua_module.so")
M.why_not = not have_nginx and "nginx or its Lua module (libnginx-mod-http-lua) is not installed"
    or not M.build and "LOCKER_NGX_BUILD is not set (make test builds the LuaJIT module)"
    or not select(2, sh("test -f " .. quote(M.build .. "/locker/core.so")))
        and ("no " .. M.build .. "/locker/core.so (make test builds it)")
    or nil

local root = sh("pwd"):gsub("%s+$", "")

--- A pending spec saying why nginx cannot run here; true when it cannot.
function M.skip(title)
    if not M.why_not then return false end
    describe(title, function()
        it("cannot run: " .. M.why_not, function()
            pending("NOT RUN: " .. M.why_not)
        end)
    end)
    return true
end

-- A free loopback port: below the kernel's ephemeral range (32768 and up,
-- where outgoing connections take theirs), and no socket of any state on it.
function M.free_port()
    for _ = 1, 20 do
        local p = 10000 + math.random(0, 22000)
        if sh(("ss -tanH '( sport = :%d )'"):format(p)) == "" then return p end
    end
    error("no free port")
end

local Nginx = {}
Nginx.__index = Nginx
M.Nginx = Nginx

-- What every spec's nginx.conf starts with: @MAIN@ at the top (2 workers,
-- the Lua module, logs in the private directory), @HTTP@ first in the
-- http block (temporary files there too, the checkout's Lua modules).
-- LOCKER_TRANSPORT reaches the workers (nginx clears the environment).
local MAIN = [[
worker_processes 2;
env LOCKER_TRANSPORT;
error_log logs/error.log info;
pid logs/nginx.pid;
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
worker_shutdown_timeout 10s;]]
local HTTP = [[
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    lua_package_path "@ROOT@/lua/?.lua;@ROOT@/lua/?/init.lua;;";
    lua_package_cpath "@CPATH@/?.so;;";]]

--- Starts nginx in a private directory: conf's @MAIN@ and @HTTP@ are the
-- common parts above, its other @NAME@ are replaced from subst (and @ROOT@,
-- @CPATH@, @DIR@, @PORT@: the checkout, the LuaJIT build, the directory, a
-- free port), files are { name = text } written beside it. Waits for GET
-- /ping to answer 200.
function M.start(conf, subst, files)
    local dir = sh("mktemp -d /tmp/locker-nginx.XXXXXX"):gsub("%s+$", "")
    sh("mkdir -p " .. quote(dir .. "/logs") .. " " .. quote(dir .. "/tmp") .. " && chmod 755 " .. quote(dir))
    local port = M.free_port()
    local all = { ROOT = root, CPATH = root .. "/" .. M.build, DIR = dir, PORT = tostring(port) }
    for k, v in pairs(subst or {}) do all[k] = tostring(v) end
    local text = conf:gsub("@MAIN@", function() return MAIN end):gsub("@HTTP@", function() return HTTP end)
    text = text:gsub("@(%u[%u%d]*)@", all)
    local f = assert(io.open(dir .. "/nginx.conf", "w"))
    f:write(text)
    f:close()
    for name, body in pairs(files or {}) do
        f = assert(io.open(dir .. "/" .. name, "w"))
        f:write(body)
        f:close()
    end
    local pid = helper.spawn(("exec nginx -p %s -c %s/nginx.conf -e %s/logs/error.log -g 'daemon off;'")
        :format(quote(dir), quote(dir), quote(dir)))
    local self = setmetatable({ dir = dir, port = port, pid = pid,
                                url = "http://127.0.0.1:" .. port }, Nginx)
    helper.wait_until("nginx to answer", function()
        if not helper.alive(pid) then error("nginx exited: " .. helper.read(dir .. "/logs/error.log")) end
        return self:get("/ping") == 200
    end, 10)
    return self
end

--- GET path: status code, body, seconds taken, headers (lowercased names).
function Nginx:get(path, header)
    local out = sh(("curl -s -m 5 -D - %s -w '\\n%%{http_code} %%{time_total}' %s")
        :format(header and ("-H " .. quote(header)) or "", quote(self.url .. path)))
    local code, t = out:match("(%d+) ([%d.]+)%s*$")
    local headers = {}
    for k, v in out:gmatch("\n?([%w-]+): ([^\r\n]*)") do headers[k:lower()] = v end
    local body = out:match("\r\n\r\n(.*)\n%d+ [%d.]+%s*$") or ""
    return tonumber(code), body, tonumber(t), headers
end

function Nginx:dict()
    local _, body = self:get("/dict")
    local d = {}
    for k, v in body:gmatch("([^\n=]+)=([^\n]*)") do d[k] = v end
    return d
end

-- Worker pids of the master (its children that are nginx processes).
function Nginx:workers()
    local out = sh("pgrep -P " .. self.pid)
    local list = {}
    for p in out:gmatch("%d+") do list[#list + 1] = tonumber(p) end
    table.sort(list)
    return list
end

function Nginx:log()
    return helper.read(self.dir .. "/logs/error.log")
end

function Nginx:stop()
    if helper.alive(self.pid) then
        helper.kill(self.pid, "QUIT")
        pcall(helper.wait_until, "nginx to quit", function() return not helper.alive(self.pid) end, 10)
        if helper.alive(self.pid) then helper.kill(self.pid, "KILL") end
    end
end

-- Lines at [error] in the error log, but for the spec's own deliberate
-- misuse (a client made before the fork, used in a worker).
function M.error_lines(log)
    local list = {}
    for line in log:gmatch("[^\n]+") do
        if line:find("[error]", 1, true) and not line:find("another process", 1, true) then
            list[#list + 1] = line
        end
    end
    return list
end

-- Alerts and crashes in the error log, but for the worker this spec killed.
function M.bad_lines(log, killed)
    local bad = {}
    for line in log:gmatch("[^\n]+") do
        if line:find("signal 11", 1, true) or line:find("[alert]", 1, true)
            or line:find("exited on signal", 1, true) then
            if not (killed and line:find("process " .. killed .. " exited on signal 9", 1, true)) then
                bad[#bad + 1] = line
            end
        end
    end
    return bad
end


return M

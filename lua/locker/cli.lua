--- The `locker` command: hold, inspect and watch locks from a shell, run a
-- command while holding a lock, run a health config. bin/locker calls
-- cli.main(arg) and exits with what it returns.
local locker = require "locker"
local core = require "locker.core"
local sched = require "locker.sched"

local cli = {}

local USAGE = {
    main = [[
usage: locker [options] COMMAND [ARGS]

commands:
  lock NAME [VALUE] -- CMD [ARGS...]   run CMD while holding NAME
  hold NAME VALUE                      hold NAME until interrupted
  get NAME                             print the owner's value
  watch NAME                           print a line per change of NAME's owner
  status [--json]                      names under the prefix, owners, waiters
  health FILE                          hold the records of a health config

options (also from the environment):
  --endpoints URL[,URL...]  LOCKER_ENDPOINTS  (default http://127.0.0.1:2379)
  --prefix P                LOCKER_PREFIX     (default /locker/)
  --ttl SECONDS             LOCKER_TTL        (default 10)
  --timeout SECONDS         LOCKER_TIMEOUT    (default 5, per etcd request)

`locker COMMAND --help` tells more about each command.]],
    lock = [[
usage: locker lock [--wait-timeout S] [--grace S] NAME [VALUE] -- CMD [ARGS...]

Waits until NAME is held (VALUE defaults to ""), then runs CMD with
LOCKER_TOKEN (the fencing token) and LOCKER_KEY (the etcd key) in its
environment. If the lock is lost, CMD gets SIGTERM, then SIGKILL after the
grace period (default 10 s). SIGINT/SIGTERM to locker are passed to CMD.
Exits with CMD's exit status (128 + N when signal N ended it); the lock is
released when CMD ends.]],
    hold = [[
usage: locker hold NAME VALUE

Holds NAME with VALUE (taking it back whenever it is lost) until SIGINT or
SIGTERM, printing each ownership change.]],
    get = [[
usage: locker get NAME

Prints the value of NAME's owner. Exits 1 (printing nothing) when nobody
holds NAME, 3 when etcd cannot be asked.]],
    watch = [[
usage: locker watch NAME

Prints one line per change of NAME's owner until interrupted:
  TIME NAME = VALUE (token N)     a new owner or value
  TIME NAME gone                  nobody holds it
  TIME NAME = VALUE (resync)      re-read after a gap in etcd's history]],
    status = [[
usage: locker status [--json]

Lists every name under the prefix that has contenders: the owner's value,
fencing token and lease, and how many wait behind it.]],
    health = [[
usage: locker health FILE

Runs a health config (see README, "Health records"): holds its records while
healthy, watches their dependencies, and logs each transition, until
SIGINT or SIGTERM.]],
}

local function say(...)
    io.stderr:write("locker: ", ...)
    io.stderr:write("\n")
end

local function usage_error(cmd, msg)
    say(msg)
    io.stderr:write(USAGE[cmd] or USAGE.main, "\n")
    return 2
end

-- Splits arguments into options (--name value, --flag) and words; "--"
-- ends option parsing and the rest is kept as is.
local FLAGS = { json = true, help = true }
local KNOWN_OPTIONS = { endpoints = true, prefix = true, ttl = true, timeout = true,
                        json = true, grace = true, ["wait-timeout"] = true, help = true }
local function parse(args)
    local opts, words, rest = {}, {}, nil
    local i = 1
    while i <= #args do
        local a = args[i]
        if a == "--" then
            rest = {}
            for j = i + 1, #args do rest[#rest + 1] = args[j] end
            break
        elseif a == "-h" then
            opts.help = true
        elseif a:sub(1, 2) == "--" then
            local k, v = a:match("^%-%-([%w-]+)=(.*)$")
            if not k then
                k = a:sub(3)
                if not FLAGS[k] then
                    i = i + 1
                    v = args[i]
                    if v == nil then return nil, "option --" .. k .. " needs a value" end
                else
                    v = true
                end
            end
            opts[k] = v
        else
            words[#words + 1] = a
        end
        i = i + 1
    end
    return opts, words, rest
end

local function number_opt(opts, key, env)
    local v = opts[key] or os.getenv(env)
    if v == nil then return nil end
    local n = tonumber(v)
    if not n then error(("--%s (or %s) must be a number, got %q"):format(key, env, v), 0) end
    return n
end

local function new_client(opts)
    local eps = {}
    local list = opts.endpoints or os.getenv("LOCKER_ENDPOINTS") or "http://127.0.0.1:2379"
    for url in list:gmatch("[^,%s]+") do eps[#eps + 1] = url end
    local ok, client = pcall(locker.new, {
        endpoints = eps,
        prefix = opts.prefix or os.getenv("LOCKER_PREFIX"),
        ttl = number_opt(opts, "ttl", "LOCKER_TTL"),
        timeout = number_opt(opts, "timeout", "LOCKER_TIMEOUT"),
    })
    if not ok then error((tostring(client):gsub("^locker%.new: ", "")), 0) end
    return client
end

-- SIGINT / SIGTERM as a scheduler source: fn(signal number) on each.
-- The scheduler holds sources weakly (a client may be collected), so the
-- source is also kept here.
local signal_sources = {}
local function on_signals(fn)
    local fd = core.signals({ "INT", "TERM" })
    local src = {
        fd = function() return fd end,
        dispatch = function()
            local sig = core.read_signal(fd)
            while sig do
                fn(sig)
                sig = core.read_signal(fd)
            end
        end,
    }
    sched.add_source(src)
    signal_sources[#signal_sources + 1] = src
    return src
end

local function explain(msg, code)
    if code == "unavailable" then
        return msg .. " (is etcd running? see --endpoints / LOCKER_ENDPOINTS)"
    end
    return msg
end

-- ------------------------------------------------------------- commands --

local commands = {}

function commands.get(client, opts, words)
    if #words ~= 1 then return usage_error("get", "get takes exactly one NAME") end
    local value, msg, code = client:get(words[1])
    if value then
        io.stdout:write(value, "\n")
        return 0
    end
    if msg then
        say(explain(msg, code))
        return 3
    end
    return 1
end

local function stamp()
    return require("locker.health").stamp()
end

function commands.watch(client, opts, words)
    if #words ~= 1 then return usage_error("watch", "watch takes exactly one NAME") end
    local name = words[1]
    local done = false
    local w = client:watch(name, function(value, ev)
        if value == nil then
            io.stdout:write(("%s %s gone%s\n"):format(stamp(), name, ev.resync and " (resync)" or ""))
        else
            io.stdout:write(("%s %s = %s (%s)\n"):format(stamp(), name, value,
                ev.resync and "resync" or "token " .. tostring(ev.token)))
        end
        io.stdout:flush()
    end)
    on_signals(function() done = true end)
    sched.loop(function() return done end)
    w:cancel()
    return 0
end

function commands.status(client, opts, words)
    if #words > 0 then return usage_error("status", "status takes no NAME") end
    local list, msg, code = client:status()
    if not list then
        say(explain(msg, code))
        return 3
    end
    if opts.json then
        local cjson = require "cjson"
        local out = {}
        for i, e in ipairs(list) do
            out[i] = { name = e.name, value = e.value, token = tostring(e.token),
                       lease = e.lease, waiters = e.waiters }
        end
        io.stdout:write(cjson.encode({ prefix = client.prefix, locks = out }), "\n")
        return 0
    end
    local rows = { { "NAME", "VALUE", "TOKEN", "LEASE", "WAITERS" } }
    for _, e in ipairs(list) do
        local v = e.value:gsub("[%c\128-\255]", "?")
        if #v > 40 then v = v:sub(1, 37) .. "..." end
        rows[#rows + 1] = { e.name, v, tostring(e.token), e.lease, tostring(e.waiters) }
    end
    local width = {}
    for _, row in ipairs(rows) do
        for i, cell in ipairs(row) do width[i] = math.max(width[i] or 0, #cell) end
    end
    for _, row in ipairs(rows) do
        local cells = {}
        for i, cell in ipairs(row) do
            cells[i] = i < #row and cell .. (" "):rep(width[i] - #cell) or cell
        end
        io.stdout:write(table.concat(cells, "  "), "\n")
    end
    if #list == 0 then io.stdout:write("(no locks under ", client.prefix, ")\n") end
    return 0
end

function commands.hold(client, opts, words)
    if #words ~= 2 then return usage_error("hold", "hold takes NAME and VALUE") end
    local name, value = words[1], words[2]
    local done = false
    on_signals(function() done = true end)
    local lock = client:lock(name, value, {
        background = true, keep = true,
        on_change = function(owned, l, msg)
            if owned then
                io.stdout:write(("%s held %s (token %s)\n"):format(stamp(), name, tostring(l:token())))
            else
                io.stdout:write(("%s lost %s: %s\n"):format(stamp(), name, tostring(msg or "released")))
            end
            io.stdout:flush()
        end,
    })
    sched.loop(function() return done end)
    lock:release()
    return 0
end

function commands.lock(client, opts, words, rest)
    if not rest or #rest == 0 then
        return usage_error("lock", "lock needs a command after --")
    end
    if #words < 1 or #words > 2 then
        return usage_error("lock", "lock takes NAME and an optional VALUE before --")
    end
    local grace = tonumber(opts.grace or 10)
    local wait_timeout = opts["wait-timeout"] and tonumber(opts["wait-timeout"])
    if not grace or (opts["wait-timeout"] and not wait_timeout) then
        return usage_error("lock", "--grace and --wait-timeout take seconds")
    end
    local name, value = words[1], words[2] or ""
    local child, kill_at
    local lost, ended = false, false  -- ended: the child was reaped
    local interrupted = false
    on_signals(function(sig)
        interrupted = true
        if child and not ended then core.kill(child, sig) end
    end)
    local lock, msg, code = client:lock(name, value, {
        timeout = wait_timeout,
        on_change = function(owned)
            if not owned and child and not ended and not lost then
                lost = true
                say(("lost the lock on %s: stopping the command (SIGTERM, SIGKILL in %g s)")
                    :format(name, grace))
                core.kill(child, "TERM")
                kill_at = core.now() + grace
            end
        end,
    })
    if not lock then
        say(explain(msg, code))
        return code == "timeout" and 4 or 3
    end
    if interrupted then
        lock:release()
        return 130
    end
    local err
    child, err = core.spawn(rest, {
        "LOCKER_TOKEN=" .. tostring(lock:token()),
        "LOCKER_KEY=" .. tostring(lock:key()),
    })
    if not child then
        lock:release()
        say(err)
        return 127
    end
    if not lock:owned() and not lost then  -- lost between lock() and spawn
        lost = true
        core.kill(child, "TERM")
        kill_at = core.now() + grace
    end
    local status
    sched.spawn(function()  -- a child's end is not pollable: look every 50 ms
        while status == nil do sched.sleep(0.05) end
    end)
    sched.loop(function()
        status = core.reap(child)
        if not status and kill_at and core.now() >= kill_at then
            core.kill(child, "KILL")
            kill_at = nil
        end
        return status ~= nil
    end)
    ended = true
    lock:release()
    return status
end

function commands.health(client, opts, words)
    if #words ~= 1 then return usage_error("health", "health takes one FILE") end
    local health = require "locker.health"
    local spec, err = health.load(words[1])
    if not spec then
        say(err)
        return 2
    end
    local done = false
    on_signals(function() done = true end)
    local h = health.start(client, spec, {
        log = function(line)
            io.stdout:write(line, "\n")
            io.stdout:flush()
        end,
    })
    sched.loop(function() return done end)
    h:stop()
    return 0
end

--- Runs the command line; returns the exit status.
function cli.main(args)
    local opts, words, rest = parse(args)
    if not opts then return usage_error("main", words) end
    local cmd = table.remove(words, 1)
    if not cmd or cmd == "help" then
        local topic = words[1]
        io.stdout:write((topic and USAGE[topic]) or USAGE.main, "\n")
        return cmd and 0 or (opts.help and 0 or 2)
    end
    if not commands[cmd] then return usage_error("main", "unknown command '" .. cmd .. "'") end
    if opts.help then
        io.stdout:write(USAGE[cmd], "\n")
        return 0
    end
    for k in pairs(opts) do
        if not KNOWN_OPTIONS[k] then return usage_error(cmd, "unknown option --" .. k) end
    end
    local ok, client = pcall(new_client, opts)
    if not ok then
        say(tostring(client))
        return 2
    end
    local ran, status = pcall(commands[cmd], client, opts, words, rest)
    client:close()
    if not ran then
        local msg = tostring(status):gsub("^[^:]*%.lua:%d+: ", "")
        say(msg)
        return 2
    end
    return status
end

return cli

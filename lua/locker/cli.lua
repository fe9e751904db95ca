--- The `locker` command: hold, inspect and watch locks from a shell, run a
-- command while holding a lock, run a health config. bin/locker calls
-- cli.main(arg) and exits with what it returns.
local locker = require "locker"
local process = require "locker.process"
local sched = require "locker.sched"

local cli = {}

local USAGE = {
    main = [[
usage: locker [options] COMMAND [ARGS]

commands:
  lock [-n N] NAME [VALUE] -- CMD...   run CMD while holding NAME (-n: one of N)
  elect NAME VALUE -- CMD [ARGS...]    run CMD while leader of NAME
  elect --observe NAME                 print a line per change of NAME's leader
  hold NAME VALUE                      hold NAME until interrupted
  register NAME ADDR -- CMD...         run CMD, hold NAME = ADDR while it is healthy
  get NAME                             print the owner's value
  watch NAME                           print a line per change of NAME's owner
  status [--json|--prometheus|--watch] names under the prefix, owners, waiters
  health FILE                          hold the records of a health config

options (also from the environment):
  --endpoints URL[,URL...]  LOCKER_ENDPOINTS  (default http://127.0.0.1:2379)
  --prefix P                LOCKER_PREFIX     (default /locker/)
  --ttl SECONDS             LOCKER_TTL        (default 10)
  --timeout SECONDS         LOCKER_TIMEOUT    (default 5, per etcd request)
  --transport grpc|gateway  LOCKER_TRANSPORT  (default gateway: etcd's JSON
                                              gateway; grpc: its native protocol)

a secured etcd (see README, "Connecting to a secured etcd"):
  --cacert FILE             LOCKER_CACERT     CA that signed etcd's certificate
  --cert FILE               LOCKER_CERT       client certificate (PEM)
  --key FILE                LOCKER_KEY        its private key (PEM)
  --insecure-skip-tls-verify                  do not verify etcd's certificate
  --user NAME[:PASSWORD]    LOCKER_USER       etcd user; without :PASSWORD the
                            LOCKER_PASSWORD   password comes from LOCKER_PASSWORD
                                              or is asked on the terminal

`locker COMMAND --help` tells more about each command.]],
    lock = [[
usage: locker lock [-n N] [--wait-timeout S] [--grace S] NAME [VALUE] -- CMD [ARGS...]

Waits until NAME is held (VALUE defaults to ""; --wait-timeout S gives up
after S seconds, exit 4), then runs CMD with LOCKER_TOKEN (the fencing token)
and LOCKER_KEY (the etcd key) in its environment, and releases the lock when
CMD ends. With -n N (or --limit N), NAME is a semaphore: up to N holders at
once, each running its CMD; every contender must ask for the same N.

CMD is stopped before anyone else can own NAME: it gets SIGTERM as soon as
the session's lease renewals are late (ttl/3 before the local deadline, where
ownership ends, shortly before the lease can expire on etcd) or the lock is
lost, then SIGKILL after the grace period, and never later than that
deadline. --grace S defaults to ttl/3, all the time there is; a longer grace
is refused. Once signalled, CMD is stopped even if renewals resume.

SIGINT/SIGTERM to locker are passed to CMD; while locker still waits for
NAME they end the wait (nothing stays queued) with exit 130 / 143.
Exits with CMD's exit status (128 + N when signal N ended it).]],
    elect = [[
usage: locker elect [--wait-timeout S] [--grace S] NAME VALUE -- CMD [ARGS...]
       locker elect --observe NAME

Campaigns for leadership of NAME, proclaiming VALUE (the keys are those of
etcdctl elect and Go's concurrency.Election: each side sees the other's
leader), then runs CMD while leader, exactly as `locker lock` does: CMD is
stopped before leadership can pass to anyone else, and killed with its
process group if locker dies or stops.

--observe prints one line per change of NAME's leader until interrupted:
  TIME NAME = VALUE (token N)     a new leader or proclamation
  TIME NAME no leader             nobody leads]],
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
usage: locker status [--json | --prometheus | --watch]

Lists every name under the prefix that has contenders: the owner's value,
fencing token and lease, and how many wait behind it.
  --json        the same as one JSON object; tokens are exact JSON numbers
  --prometheus  one scrape in Prometheus' text format: holders, waiters,
                limit and owner's token per name (locker_name_*), then this
                process's own client metrics (a node_exporter textfile)
  --watch       follows every change of any name's owner until SIGINT or
                SIGTERM: on a terminal the table is redrawn in place at each
                change (holders and waiters re-read then; AGE: since the
                change, ">" when held before the watch began); otherwise a
                line per change: TIME NAME = VALUE (token N) | TIME NAME gone]],
    health = [[
usage: locker health FILE

Runs a health config (see README, "Health records"): holds its records while
healthy, watches their dependencies, and logs each transition, until
SIGINT or SIGTERM.]],
}

USAGE.register = require("locker.cli_register").USAGE

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
local FLAGS = { json = true, prometheus = true, watch = true, help = true, observe = true,
                ["insecure-skip-tls-verify"] = true }
local KNOWN_OPTIONS = { endpoints = true, prefix = true, ttl = true, timeout = true,
                        json = true, prometheus = true, watch = true, grace = true,
                        ["wait-timeout"] = true, help = true, observe = true, limit = true,
                        cacert = true, cert = true, key = true, user = true, transport = true,
                        ["insecure-skip-tls-verify"] = true,
                        group = true, check = true, every = true, ["check-timeout"] = true }
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
        elseif a == "-n" then  -- a semaphore's limit, as consul lock -n
            i = i + 1
            if args[i] == nil then return nil, "option -n needs a value" end
            opts.limit = args[i]
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

-- Reads a password from the terminal without echoing it (nil: no
-- terminal to ask on).
local function ask_password(user)
    local tty = io.open("/dev/tty", "r+")
    if not tty then return nil end
    tty:write("password for etcd user ", user, ": ")
    tty:flush()
    local quiet = os.execute("stty -echo < /dev/tty 2>/dev/null")
    local line = tty:read("*l")
    if quiet == true or quiet == 0 then os.execute("stty echo < /dev/tty 2>/dev/null") end
    tty:write("\n")
    tty:close()
    return line
end

-- etcd's user and password: --user NAME[:PASSWORD], else the file's
-- connect{}, else LOCKER_USER (same form); a password not given with the
-- name comes from LOCKER_PASSWORD, else from the terminal.
local function credentials(opts, file)
    local spec = opts.user
    if spec == true or spec == "" then error("--user needs NAME[:PASSWORD]", 0) end
    local user, password
    if spec then
        user, password = spec:match("^([^:]*):(.*)$")
        user = user or spec
    elseif file.user then
        user, password = file.user, file.password
    else
        spec = os.getenv("LOCKER_USER")
        if not spec or spec == "" then return nil end
        user, password = spec:match("^([^:]*):(.*)$")
        user = user or spec
    end
    if user == "" then error("--user needs a NAME before the ':'", 0) end
    password = password or os.getenv("LOCKER_PASSWORD") or ask_password(user)
    if not password then
        error(("no password for etcd user '%s': give --user NAME:PASSWORD, set "
               .. "LOCKER_PASSWORD, or run from a terminal to be asked"):format(user), 0)
    end
    return user, password
end

-- The client: flags first, then the health file's connect{} (when there
-- is one), then the environment, then the defaults.
local function new_client(opts, file)
    file = file or {}
    local eps = {}
    if file.endpoints and not opts.endpoints then
        for i, url in ipairs(file.endpoints) do eps[i] = url end
    else
        local list = opts.endpoints or os.getenv("LOCKER_ENDPOINTS") or "http://127.0.0.1:2379"
        for url in list:gmatch("[^,%s]+") do eps[#eps + 1] = url end
    end
    local function pick(flag, env)
        local v = opts[flag]
        if v == true then error("--" .. flag .. " needs a value", 0) end
        if v == nil then v = file[flag] end
        if v == nil then v = os.getenv(env) end
        if v == "" then v = nil end
        return v
    end
    local user, password = credentials(opts, file)
    local ok, client = pcall(locker.new, {
        endpoints = eps,
        prefix = opts.prefix or file.prefix or os.getenv("LOCKER_PREFIX"),
        ttl = number_opt(opts, "ttl", "LOCKER_TTL") or file.ttl,
        timeout = number_opt(opts, "timeout", "LOCKER_TIMEOUT") or file.timeout,
        margin = file.margin,
        transport = pick("transport", "LOCKER_TRANSPORT"),
        cacert = pick("cacert", "LOCKER_CACERT"),
        cert = pick("cert", "LOCKER_CERT"),
        key = pick("key", "LOCKER_KEY"),
        insecure = opts["insecure-skip-tls-verify"] or file.insecure or nil,
        user = user, password = password,
    })
    if not ok then error((tostring(client):gsub("^locker%.new: ", "")), 0) end
    return client
end

-- SIGINT / SIGTERM as a scheduler source: fn(signal number) on each.
-- The scheduler holds sources weakly (a client may be collected), so the
-- source is also kept here.
local signal_sources = {}
local function on_signals(fn)
    local fd = process.signals({ "INT", "TERM" })
    local src = {
        fd = function() return fd end,
        dispatch = function()
            local sig = process.read_signal(fd)
            while sig do
                fn(sig)
                sig = process.read_signal(fd)
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
    elseif code == "tls" then
        return msg .. " (see --cacert, --cert, --key)"
    elseif code == "auth" then
        return msg .. " (see --user)"
    end
    return msg
end

-- ------------------------------------------------------------- commands --

local commands = {}

function commands.get(client, _opts, words)
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

-- "HH:MM:SS.mmm", local time: the start of each line the CLI prints.
local function stamp()
    local t = locker.time()
    return os.date("%H:%M:%S", math.floor(t)) .. (".%03d"):format(math.floor(t % 1 * 1000))
end

-- Prints a line per change of NAME's owner until SIGINT/SIGTERM; gone:
-- what a line says when there is none ("gone", "no leader").
local function follow(client, name, gone)
    local done = false
    local w = client:watch(name, function(value, ev)
        if value == nil then
            io.stdout:write(("%s %s %s%s\n"):format(stamp(), name, gone, ev.resync and " (resync)" or ""))
        else
            io.stdout:write(("%s %s = %s (%s)\n"):format(stamp(), name, value,
                ev.resync and "resync" or "token " .. locker.int64_text(ev.token)))
        end
        io.stdout:flush()
    end)
    on_signals(function() done = true end)
    sched.loop(function() return done end)
    w:cancel()
    return 0
end

function commands.watch(client, _opts, words)
    if #words ~= 1 then return usage_error("watch", "watch takes exactly one NAME") end
    return follow(client, words[1], "gone")
end

function commands.elect(client, opts, words, rest, spec)
    if opts.observe then
        if rest or #words ~= 1 then
            return usage_error("elect", "elect --observe takes exactly one NAME")
        end
        return follow(client, words[1], "no leader")
    end
    return commands.lock(client, opts, words, rest, spec, "elect")
end

-- The rows of the status table for a status() list: a semaphore (limit
-- > 1) gets a line per holder, its NAME on the first, and the table a
-- LIMIT column (only then: a table of plain locks keeps its columns).
-- age(name): the AGE column's cell (status --watch), or no such column.
local function status_rows(list, age)
    local sems = false
    for _, e in ipairs(list) do sems = sems or e.limit > 1 end
    local rows = { { "NAME", "VALUE", "TOKEN", "LEASE", "WAITERS" } }
    if sems then rows[1][#rows[1] + 1] = "LIMIT" end
    if age then rows[1][#rows[1] + 1] = "AGE" end
    local function shown(value)
        local v = value:gsub("[%c\128-\255]", "?")
        if #v > 40 then v = v:sub(1, 37) .. "..." end
        return v
    end
    for _, e in ipairs(list) do
        for j, h in ipairs(e.holders) do
            local first = j == 1
            local row = { first and e.name or "", shown(h.value), locker.int64_text(h.token), h.lease,
                          first and tostring(e.waiters) or "" }
            if sems then row[#row + 1] = first and tostring(e.limit) or "" end
            if age then row[#row + 1] = first and age(e.name) or "" end
            rows[#rows + 1] = row
        end
    end
    return rows
end

-- Writes rows aligned in columns; empty_prefix: say there is nothing.
local function write_table(out, rows, empty_prefix)
    local width = {}
    for _, row in ipairs(rows) do
        for i, cell in ipairs(row) do width[i] = math.max(width[i] or 0, #cell) end
    end
    for _, row in ipairs(rows) do
        local cells = {}
        for i, cell in ipairs(row) do
            cells[i] = i < #row and cell .. (" "):rep(width[i] - #cell) or cell
        end
        out:write((table.concat(cells, "  "):gsub("%s+$", "")), "\n")
    end
    if empty_prefix then out:write("(no locks under ", empty_prefix, ")\n") end
end

-- status --watch: every change of any name's owner (client:watch_all, one
-- stream; no polling of etcd). On a terminal the table is redrawn in place
-- at each change, holders and waiters re-read then (one request), and its
-- AGE column (since the change was seen; ">" for a name held before the
-- watch began) ticks every second without a request. Otherwise a line per
-- change, as `locker watch` writes for one name.
local function status_watch(client)
    local tty = process.isatty(1)
    local done = false
    on_signals(function() done = true end)
    local since, list, problem = {}, {}, nil
    local started = locker.time()
    local function age(name)
        local t = since[name]
        if not t then return ">" .. ("%.0fs"):format(locker.time() - started) end
        return ("%.0fs"):format(locker.time() - t)
    end
    local function draw()
        local out = {}
        local buf = { write = function(_, ...) for _, v in ipairs({ ... }) do out[#out + 1] = v end end }
        buf:write(("locker status --watch: %s at %s, %s\n\n"):format(client.prefix, stamp(),
            problem and ("etcd: " .. problem) or "live"))
        write_table(buf, status_rows(list, age), #list == 0 and client.prefix)
        io.stdout:write("\27[H\27[2J", table.concat(out))
        io.stdout:flush()
    end
    local function refresh()
        local got, msg, code = client:status()
        if got then list, problem = got, nil else problem = explain(msg, code) end
    end
    local before = {}  -- name -> the owner read before the watch began
    if tty then
        refresh()
        for _, e in ipairs(list) do before[e.name] = e end
    end
    local w = client:watch_all(function(value, ev)
        local b = before[ev.name]
        before[ev.name] = nil
        if not (b and b.value == value and b.token == ev.token) then  -- a change, not the first report
            since[ev.name] = value and locker.time() or nil
        end
        if tty then
            refresh()
            draw()
        else
            if value == nil then
                io.stdout:write(("%s %s gone%s\n"):format(stamp(), ev.name, ev.resync and " (resync)" or ""))
            else
                io.stdout:write(("%s %s = %s (%s)\n"):format(stamp(), ev.name, value,
                    ev.resync and "resync" or "token " .. locker.int64_text(ev.token)))
            end
            io.stdout:flush()
        end
    end)
    if tty then
        draw()
        sched.spawn(function()  -- the ages tick; no request
            while not done do
                sched.sleep(1)
                if not done then draw() end
            end
        end)
    end
    sched.loop(function() return done end)
    w:cancel()
    return 0
end

function commands.status(client, opts, words)
    if #words > 0 then return usage_error("status", "status takes no NAME") end
    if opts.watch then
        if opts.json or opts.prometheus then
            return usage_error("status", "--watch shows a table or lines: not with --json or --prometheus")
        end
        return status_watch(client)
    end
    local list, msg, code = client:status()
    if not list then
        say(explain(msg, code))
        return 3
    end
    if opts.json and opts.prometheus then
        return usage_error("status", "--json and --prometheus: one or the other")
    end
    if opts.json then  -- tokens are exact JSON numbers; leases hex, as etcdctl writes them
        local json = require "locker.json"
        local out = json.array()
        for i, e in ipairs(list) do
            local holders = json.array()
            for j, h in ipairs(e.holders) do
                holders[j] = { value = h.value, token = json.int(h.token), lease = h.lease,
                               mod_revision = json.int(h.mod_revision) }
            end
            out[i] = { name = e.name, value = e.value, token = json.int(e.token),
                       mod_revision = json.int(e.mod_revision), lease = e.lease,
                       waiters = e.waiters, limit = e.limit, holders = holders }
        end
        local revision = list[1] and json.int(list[1].revision) or nil  -- etcd's, at the read
        io.stdout:write(json.encode({ prefix = client.prefix, revision = revision, locks = out }), "\n")
        return 0
    end
    if opts.prometheus then  -- the names' state, then this client's own figures
        local metrics = require "locker.metrics"
        io.stdout:write(metrics.render({ { list, { prefix = client.prefix } } }, metrics.status_families),
                        locker.metrics_text(client, { prefix = client.prefix }))
        return 0
    end
    write_table(io.stdout, status_rows(list), #list == 0 and client.prefix)
    return 0
end

function commands.hold(client, _opts, words)
    if #words ~= 2 then return usage_error("hold", "hold takes NAME and VALUE") end
    local name, value = words[1], words[2]
    local done = false
    on_signals(function() done = true end)
    -- a line per event, in on_event's words: "held" for an acquisition
    -- (what hold has always said), "released" at SIGINT/SIGTERM, never
    -- "lost" for a release
    client:on_event(function(ev)
        local line = locker.event_text(ev)
        if ev.kind == "acquired" then line = line:gsub("^acquired", "held") end
        io.stdout:write(stamp(), " ", line, "\n")
        io.stdout:flush()
    end)
    local lock = client:lock(name, value, { background = true, keep = true })
    sched.loop(function() return done end)
    lock:release()
    sched.loop(function() return not sched.busy(client._event_calls) end)  -- the last line out
    return 0
end

local SIGNAL_NAMES = { [2] = "SIGINT", [15] = "SIGTERM" }

-- as: "lock", or "elect" (an election is a lock whose value is the
-- leader's: the same keys as etcdctl elect, so the same supervision)
function commands.lock(client, opts, words, rest, _, as)
    as = as or "lock"
    if not rest or #rest == 0 then
        return usage_error(as, as .. " needs a command after --")
    end
    if as == "elect" and #words ~= 2 then
        return usage_error(as, "elect takes NAME and VALUE before --")
    end
    if #words < 1 or #words > 2 then
        return usage_error(as, "lock takes NAME and an optional VALUE before --")
    end
    -- Between jeopardy (renewals late) and the local deadline there are
    -- ttl/3 seconds: all the grace CMD can have without outliving the lease.
    local ttl = client.ttl
    local limit = ttl / 3
    local grace = limit
    if opts.grace ~= nil then
        grace = tonumber(opts.grace)
        if not grace or grace ~= grace or grace < 0 then
            return usage_error(as, "--grace takes seconds (a number >= 0)")
        end
        if grace > limit then
            return usage_error(as, ("--grace %s is over the limit of ttl/3 = %.3g s (ttl %d s): "
                .. "CMD could still run when the lease expires and another owner takes %s")
                :format(opts.grace, limit, ttl, words[1]))
        end
    end
    local wait_timeout = opts["wait-timeout"] and tonumber(opts["wait-timeout"])
    if opts["wait-timeout"] and not (wait_timeout and wait_timeout >= 0) then
        return usage_error(as, "--wait-timeout takes seconds (a number >= 0)")
    end
    local sem = opts.limit
    local n = sem and tonumber(sem)
    if sem and (as == "elect" or not n or n ~= math.floor(n) or n < 1 or n > locker.MAX_LIMIT) then
        return usage_error(as, as == "elect" and "an election has one leader: no -n"
            or ("-n takes a whole number of holders from 1 to %d"):format(locker.MAX_LIMIT))
    end
    local name, value = words[1], words[2] or ""
    local lock, child, status      -- status: CMD's, once reaped
    local group, watchdog          -- CMD's process group; its guard's watchdog
    local kill_at                  -- when CMD gets SIGKILL (once stopping)
    local stopping = false         -- CMD got SIGTERM: it is stopped, come what may
    local interrupted              -- a signal to locker before CMD ran

    on_signals(function(sig)
        if child then
            if status == nil then process.kill(-group, sig) end
        elseif not interrupted then
            -- still waiting: closing the client revokes the session lease,
            -- so a queued key goes at once, and the waiting lock() returns
            interrupted = sig
            client:close()
        end
    end)

    -- SIGTERM now, SIGKILL at min(now + grace, the local deadline): CMD is
    -- gone before the lease can expire on the server (after the deadline),
    -- so before anyone else can own NAME.
    local function stop(why)
        if stopping or status ~= nil then return end
        stopping = true
        local t = locker.now()
        local left = client:session().valid_for or 0
        local owned_left = lock:valid_for()
        if owned_left and owned_left < left then left = owned_left end
        local delay = math.max(0, math.min(grace, left))
        process.kill(-group, "TERM")
        if delay > 0 then
            kill_at = t + delay
            say(("%s: stopping the command (SIGTERM, SIGKILL in %.3g s)"):format(why, delay))
        else
            process.kill(-group, "KILL")
            say(("%s: stopping the command (SIGTERM, SIGKILL now%s)"):format(why,
                left <= 0 and ": the lease's local deadline has passed" or ""))
        end
    end

    local lock_opts = {
        timeout = wait_timeout,
        limit = n,
        on_change = function(owned, _, why)
            if not owned and child then
                stop(("lost the lock on %s%s"):format(name, why and " (" .. why .. ")" or ""))
            end
        end,
    }
    local msg, code
    lock, msg, code = client:lock(name, value, lock_opts)
    if interrupted then
        say(("%s while waiting for %s: gave up"):format(SIGNAL_NAMES[interrupted] or
            "signal " .. interrupted, name))
        if lock then lock:release() end
        return 128 + interrupted
    end
    if not lock then
        say(explain(msg, code))
        return code == "timeout" and 4 or 3
    end
    -- How long CMD may run from now without another word from us: until
    -- ownership's local deadline. CMD runs under a guard process that kills
    -- its group when we die (SIGKILL) or stay silent past that deadline
    -- (SIGSTOP), see src/process/guard.h.
    local function owned_for()
        local left = client:session().valid_for or 0
        local owned_left = lock:valid_for() or 0
        return math.max(0, math.min(left, owned_left))
    end
    child, group, watchdog = process.supervise(rest, {
        "LOCKER_TOKEN=" .. locker.int64_text(lock:token()),
        "LOCKER_KEY=" .. tostring(lock:key()),
    }, owned_for())
    if not child then
        lock:release()
        say(group)
        return 127
    end
    -- A child's end is not pollable: look every 50 ms, and at once when
    -- renewals become late (jeopardy) or SIGKILL is due.
    sched.spawn(function()
        while true do
            status = process.reap(child)
            if status then return end
            local t = locker.now()
            if kill_at and t >= kill_at then
                process.kill(-group, "KILL")
                kill_at = nil
            end
            local session = client:session()
            if not stopping then
                process.extend(watchdog, owned_for())
                if not lock:owned() then
                    stop("lost the lock on " .. name)
                elseif session.state ~= "ok" then
                    stop(("renewals of the lease are late, the lock on %s ends in %.3g s")
                        :format(name, session.valid_for or 0))
                end
            end
            local nap = 0.05
            if kill_at then
                nap = math.min(nap, kill_at - t)
            elseif not stopping and session.valid_for then
                nap = math.min(nap, session.valid_for - limit)  -- jeopardy then
            end
            sched.sleep(math.max(nap, 0.001))
        end
    end)
    sched.loop(function() return status ~= nil end)
    process.close(watchdog)
    lock:release()
    return status
end

function commands.register(client, opts, words, rest)
    return require("locker.cli_register").run(client, opts, words, rest, {
        say = say, stamp = stamp, usage_error = usage_error, on_signals = on_signals })
end

function commands.health(client, _opts, _words, _, spec)
    local health = require "locker.health"
    local done = false
    on_signals(function() done = true end)
    local h = health.start(client, spec, {
        log = function(line)
            io.stdout:write(stamp(), " ", line, "\n")
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
    local spec  -- health: the file is read first, its connect{} makes the client
    if cmd == "health" then
        if #words ~= 1 then return usage_error("health", "health takes one FILE") end
        local err
        spec, err = require("locker.health").load(words[1])
        if not spec then
            say(err)
            return 2
        end
    end
    local ok, client = pcall(new_client, opts, spec and spec.connect)
    if not ok then
        say(tostring(client))
        return 2
    end
    local ran, status = pcall(commands[cmd], client, opts, words, rest, spec)
    client:close()
    if not ran then
        local msg = tostring(status):gsub("^[^:]*%.lua:%d+: ", "")
        say(msg)
        return 2
    end
    return status
end

return cli

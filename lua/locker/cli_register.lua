--- `locker register NAME ADDR -- CMD`: runs a service and holds its record
-- (value: its address) while it runs and its health check passes, so that
-- the nginx upstreams of its group (locker.ngx.upstream) send it traffic
-- exactly then. A part of the CLI (locker.cli), in a file of its own.
local locker = require "locker"
local peers = require "locker.peers"
local process = require "locker.process"
local sched = require "locker.sched"

local register = {}

register.USAGE = [[
usage: locker register [--group G] [--check CMD] [--every S] [--check-timeout S]
                       NAME ADDR -- CMD [ARGS...]

Runs CMD (a service listening at ADDR) and holds the record NAME with the
value ADDR while CMD runs and its health check passes: a name server's entry,
which nginx's upstreams (locker.ngx.upstream) balance over. ADDR is
HOST:PORT with an IP address, optionally followed by " weight=N" (1 to 100).

--group G         the record is G/NAME: a name under PREFIX G "/", where
                  locker.ngx.upstream("G") looks
--check CMD       a shell command run every S seconds (--every, default 1)
                  that exits 0 while the service is healthy; the record is
                  first taken after the first check passes, released when one
                  fails, taken again when one passes. Without --check the
                  record is held while CMD runs.
--check-timeout S a check that runs longer fails (default: --every)

SIGINT/SIGTERM: the record is released first (nginx stops sending traffic),
then the signal goes to CMD. When CMD ends, the record is released and
register exits with CMD's status (128 + N when signal N ended it). CMD is
killed if locker itself dies (SIGKILL): a service is never left running
unregistered by a dead supervisor.]]

local WATCHDOG_S = 60  -- CMD outlives a silent (stopped) locker by at most this

local function seconds_opt(opts, key, default, tools)
    local v = opts[key]
    if v == nil then return default end
    local n = tonumber(v)
    if not n or n ~= n or n <= 0 or n > 3600 then
        return nil, tools.usage_error("register", ("--%s takes seconds (a number > 0)"):format(key))
    end
    return n
end

-- Runs the shell command check with a time bound, in the calling
-- coroutine; returns true when it exited 0, else false and why.
local function run_check(check, timeout)
    local guard, group, watchdog = process.supervise({ "/bin/sh", "-c", check }, {}, timeout)
    if not guard then return false, tostring(group) end
    local status
    local deadline = locker.now() + timeout + 1
    repeat
        status = process.reap(guard)
        if status == nil then sched.sleep(0.01) end
    until status ~= nil or locker.now() > deadline
    process.close(watchdog)
    if status == nil then  -- the guard did not end it in time: we do
        process.kill(-group, "KILL")
        for _ = 1, 100 do  -- the guard goes with its child: reap it (1 s at most)
            if process.reap(guard) ~= nil then break end
            sched.sleep(0.01)
        end
        return false, "the check did not end within " .. timeout .. " s"
    end
    if status == 0 then return true end
    return false, status > 128 and ("the check was killed by signal " .. (status - 128))
        or ("the check exited " .. status)
end

--- The command. tools: the CLI's say, stamp, usage_error, on_signals.
function register.run(client, opts, words, rest, tools)
    if not rest or #rest == 0 then return tools.usage_error("register", "register needs a command after --") end
    if #words ~= 2 then return tools.usage_error("register", "register takes NAME and ADDR before --") end
    local name, addr = words[1], words[2]
    local peer, why = peers.parse(addr)
    if not peer then return tools.usage_error("register", ("ADDR %q: %s"):format(addr, why)) end
    local every, err = seconds_opt(opts, "every", 1, tools)
    if not every then return err end
    local timeout
    timeout, err = seconds_opt(opts, "check-timeout", every, tools)
    if not timeout then return err end
    local check = opts.check
    if check ~= nil and (type(check) ~= "string" or check == "") then
        return tools.usage_error("register", "--check takes a shell command")
    end
    local c = client
    if opts.group ~= nil then
        local ok, g, msg = pcall(client.group, client, opts.group)
        if not ok or not g then return tools.usage_error("register", "--group: " .. tostring(msg or g)) end
        c = g
    end
    local shown = (opts.group and (opts.group .. "/") or "") .. name

    local function line(text)
        io.stdout:write(tools.stamp(), " ", text, "\n")
        io.stdout:flush()
    end

    local child, group, watchdog = process.supervise(rest, {
        "LOCKER_NAME=" .. name, "LOCKER_ADDR=" .. addr }, WATCHDOG_S)
    if not child then
        tools.say(group)
        return 127
    end
    local status       -- CMD's, once reaped
    local lock         -- the record, while held
    local stopping     -- a signal came: no more registering
    local signalled    -- ...and it went on to CMD
    local healthy = check == nil

    local function release(reason)
        if lock then
            lock:release()
            lock = nil
            line(("released %s (%s)"):format(shown, reason))
        end
    end

    tools.on_signals(function(sig)
        if stopping then
            process.kill(-group, sig)
            return
        end
        stopping = sig
    end)

    c:on_event(function(ev)
        if ev.kind == "acquired" then
            line(("registered %s = %s (token %s)"):format(shown, addr, locker.int64_text(ev.token)))
        elseif ev.kind == "lost" or ev.kind == "jeopardy" then
            line(locker.event_text(ev))
        end
    end)

    -- the health check's own coroutine: a slow check never delays the rest
    if check then
        sched.spawn(function()
            local last  -- the last check's result (nil: none yet)
            while status == nil and not stopping do
                local ok, reason = run_check(check, timeout)
                if ok ~= last and not ok then line(("check failed: %s"):format(reason)) end
                last, healthy = ok, ok
                sched.sleep(every)
            end
        end)
    end

    while true do
        status = process.reap(child)
        if status ~= nil then break end
        process.extend(watchdog, WATCHDOG_S)
        if stopping then
            if not signalled then  -- traffic drains first, then CMD hears it
                release("signal " .. stopping)
                process.kill(-group, stopping)
                signalled = true
            end
        elseif healthy and not lock then
            lock = c:lock(name, addr, { background = true, keep = true })
        elseif not healthy and lock then
            release("the check failed")
        end
        sched.sleep(0.05)
    end
    process.close(watchdog)
    release(("the command exited %d"):format(status))
    return status
end

return register

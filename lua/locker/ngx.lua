--- locker.ngx: locker inside nginx (ngx_lua / OpenResty).
--
--     init_worker_by_lua_block {
--         local lngx = require "locker.ngx"
--         lngx.init{ endpoints = { "http://127.0.0.1:2379" }, ttl = 5 }
--         lngx.hold("edge-1", "10.0.0.1:80")          -- from worker 0 only
--     }
--     exit_worker_by_lua_block { require("locker.ngx").close() }
--     location / { access_by_lua_block { require("locker.ngx").gate("db") } ... }
--
-- One client per worker, made in init_worker_by_lua (never before nginx
-- forks), and one per upstream group (locker.ngx_upstream). Each engine
-- thread tells the worker that events wait through a unix socket that a
-- cosocket reads (client:wake_socket): a dispatcher, one ngx timer per
-- client, reads it and delivers events as they arrive,
-- with no polling timer and no thread pool. Waiting calls (lock, get,
-- release, w:next) wait on an ngx.semaphore posted by the dispatcher, so
-- they never block the worker; callbacks, health checks and spawned
-- functions run in ngx timers of their own. No coroutine of locker's own
-- scheduler runs inside nginx.
local locker = require "locker"
local sched = require "locker.sched"
local health = require "locker.health"
local semaphore = require "ngx.semaphore"
local status = require "locker.ngx_status"
local metrics = require "locker.metrics"

local ngx = ngx
local type, pairs, ipairs, tostring, error, select, xpcall = type, pairs, ipairs, tostring, error, select, xpcall
local pcall, setmetatable = pcall, setmetatable
local unpack = table.unpack or unpack
local traceback = debug.traceback
local ceil, min = math.ceil, math.min
local concat = table.concat

local _M = { _VERSION = locker._VERSION }

local client            -- this worker's client
local settings = {}     -- stale_after, retry_after, pending
local followed = {}     -- name -> true
local holds = {}        -- name -> { lock =, value = }
local healths = {}      -- { path =, h = }
local disp = { started = false, running = false, alive_at = nil, wakeups = 0, ticks_missed = 0,
               dirty = true, published_at = 0, noted_at = 0 }
local status_dict       -- ngx.shared[opts.status_dict], or nil
local news = {}         -- the session's state and stream, as last logged

-- --------------------------------------------------------------- backend --
-- How locker's waits, wake-ups and spawns are done inside nginx.

-- Phases in which a semaphore may wait (ngx_lua's yieldable contexts).
local YIELDABLE = { rewrite = true, access = true, content = true, timer = true,
                    ssl_cert = true, ssl_session_fetch = true, ssl_client_hello = true }

local function pack(...)
    return { n = select("#", ...), ... }
end

local backend = {}

function backend.current()
    if not YIELDABLE[ngx.get_phase()] then return nil end
    return { sema = semaphore.new(0) }
end

-- Waits on w's semaphore until woken (or the deadline); in chunks, so a
-- wait without a deadline never trips a semaphore's own limits, and a wait
-- in a worker that is exiting ends (raising: no answer can come, the
-- dispatcher has stopped, and a running timer would keep the worker alive).
function backend.suspend(w, deadline)
    while not w.args do
        if ngx.worker.exiting() then
            error("locker: the nginx worker is exiting: nothing more is waited for", 0)
        end
        local wait = 0.5
        if deadline then
            wait = deadline - sched.now()
            if wait <= 0 then return end
            wait = min(wait, 0.5)
        end
        local ok, err = w.sema:wait(wait)
        if not ok and err ~= "timeout" then error("locker: semaphore: " .. tostring(err), 0) end
    end
    return unpack(w.args, 1, w.args.n)
end

function backend.wake(w, ...)
    if w.args then return end
    w.args = pack(...)
    w.sema:post(1)
end

local function report(err)
    sched.on_error(err)
end

function backend.spawn(fn, ...)
    local args = pack(...)
    local ok, err = pcall(ngx.timer.at, 0, function(premature)
        if premature then return end
        local fine, e = xpcall(function() return fn(unpack(args, 1, args.n)) end, traceback)
        if not fine then report(e) end
    end)
    if not ok or not err then
        report("locker: cannot start an ngx timer: " .. tostring(err))
        return false
    end
    return true
end

-- The worker is exiting: health loops end (their records go with the
-- lease at close). Idempotent.
local function stop_healths()
    for _, e in ipairs(healths) do e.h:stop({ release = false }) end
end

-- Sleeps in steps, and returns early when the worker is exiting (so that
-- loops that sleep let the worker go). Even then it yields once: a loop
-- around it that does not look at exiting() must not spin without ever
-- letting the dispatcher run (a worker stuck "shutting down" at 100 %).
function backend.sleep(seconds)
    if not YIELDABLE[ngx.get_phase()] then
        backend.blocked("locker.sleep")
    end
    local deadline = sched.now() + seconds
    repeat
        if ngx.worker.exiting() then
            stop_healths()
            ngx.sleep(0.001)
            return
        end
        local left = deadline - sched.now()
        if left < 0.001 then return end  -- ngx.sleep(0) would only warn
        ngx.sleep(min(left, 0.5))
    until false
end

function backend.blocked(what)
    error(("locker: %s here would block the nginx worker (phase %s): make it in a "
           .. "request handler (rewrite, access, content) or a timer"):format(what, ngx.get_phase()), 0)
end

-- ------------------------------------------------------------ dispatcher --

local function log(level, ...)
    ngx.log(level, "locker: ", ...)
end

local STALL_S = 3   -- no tick for this long: the engine thread is stuck
                    -- (the engine ticks every 0.25 s: a read that times
                    -- out, which ngx_lua logs as an error, means that)
local NOTE_S = 0.25 -- how often the session's news are looked at
local POLL_S = 0.2  -- the fallback's period, without the wake-up socket

-- Operational news, once per change and at warn / notice, never per tick
-- or per request: the session's state (jeopardy, lost: renewals failing)
-- and whether the watch stream shows life (no sign of it, a message or a
-- progress answer, for quiet_after: etcd unreachable or stopped, as far as
-- this worker can tell; the records it follows go stale).
local function quiet_after()
    return min(settings.stale_after, math.max(3, 2 * client.timeout + 1))
end

local function stream_age()
    local age
    for _, name in ipairs(client:names()) do
        local _, _, _, a = client:cached(name)
        if type(a) == "number" and (not age or a < age) then age = a end
    end
    return age
end

local function note_news(now)
    if now - disp.noted_at < NOTE_S then return end
    disp.noted_at = now
    local s = client:session()
    if not s then return end
    if s.state ~= news.state then
        if news.state ~= nil or s.state ~= "none" then
            local bad = s.state == "jeopardy" or s.state == "lost"
            log(bad and ngx.WARN or ngx.NOTICE, "session ", s.state,
                bad and " (renewals are failing; records held here may go)" or "",
                s.lease and (", lease " .. s.lease) or "")
        end
        news.state, disp.dirty = s.state, true
    end
    local age = stream_age()
    local quiet = age and age > quiet_after()
    if age and quiet ~= (news.quiet or false) then
        if quiet then
            log(ngx.WARN, ("etcd's watch stream showed no sign of life for %.1f s (etcd unreachable from %s?): "
                .. "followed records go stale"):format(age, tostring(s.endpoint)))
        else
            log(ngx.NOTICE, "etcd's watch stream is live again on ", tostring(s.endpoint))
        end
        news.quiet, disp.dirty = quiet, true
    end
end

-- This worker's part of the instance's status page, in the shared dict.
local function publish(r)
    local ok, err = status.publish(status_dict, status.render(r or _M.report()))
    if ok and not client:closed() then
        ok, err = status.publish_metrics(status_dict, ngx.worker.id(), ngx.worker.pid(),
            metrics.lines({ { client:metrics(), { worker = ngx.worker.id() } } }))
    end
    disp.published_at, disp.dirty = ngx.now(), false
    if not ok and not disp.publish_failed then
        log(ngx.WARN, "status_dict: cannot store this worker's status: ", tostring(err))
    end
    disp.publish_failed = not ok
end

-- What follows every dispatch: news, and the status slot when it changed
-- or is a second old.
local function after_dispatch()
    local now = ngx.now()
    note_news(now)
    if status_dict and (disp.dirty or now - disp.published_at >= 1) then publish() end
end

-- The fallback when the wake-up socket cannot be had (or broke): dispatch
-- every POLL_S from a timer, so waits and callbacks go on, later.
local function poll_dispatch(premature, c)
    if premature or c:closed() or ngx.worker.exiting() then return end
    local fine, e = xpcall(c.dispatch, traceback, c)
    if not fine then report(e) end
    if c == client then after_dispatch() end
    local ok, err = ngx.timer.at(POLL_S, poll_dispatch, c)
    if not ok then log(ngx.ERR, "cannot re-arm the polling dispatcher: ", err) end
end

local function fall_back(why, c)
    log(ngx.ERR, why, "; dispatching every ", POLL_S, " s instead")
    if c == client then disp.polling = true end
    local ok, err = ngx.timer.at(POLL_S, poll_dispatch, c)
    if not ok then log(ngx.ERR, "cannot start the polling dispatcher: ", err) end
end

-- The dispatcher: one ngx timer per client of the worker (its own, and
-- one per upstream group's) reading that client's wake-up socket. Each
-- byte means "events are waiting" or is the engine's tick (every
-- 0.25 s); either way it delivers what waits. It notices that the worker
-- is exiting within a tick, and then returns, so reloads never leave a
-- worker "shutting down". Its read timeout (STALL_S) is not a tick: an
-- idle worker logs nothing.
local function dispatcher(premature, c)
    if premature or c:closed() then return end
    local main = c == client
    local ok, path = pcall(c.wake_socket, c)
    if not ok or not path then
        return fall_back("cannot make the wake-up socket: " .. tostring(path), c)
    end
    local sock = ngx.socket.stream()
    local connected, err = sock:connect("unix:" .. path)
    if not connected then
        return fall_back("cannot connect to the wake-up socket: " .. tostring(err), c)
    end
    local accepted, why = c:wake_accept()
    if not accepted then
        sock:close()
        return fall_back(tostring(why), c)
    end
    if main then
        disp.running = true
        disp.alive_at = ngx.now()
    end
    sock:settimeout(STALL_S * 1000)
    local warned = false
    while true do
        local fine, e = xpcall(c.dispatch, traceback, c)
        if not fine then report(e) end
        if ngx.worker.exiting() or c:closed() then break end
        if main then after_dispatch() end
        local data, rerr = sock:receiveany(256)
        if data then
            if main then
                disp.wakeups = disp.wakeups + 1
                disp.alive_at = ngx.now()
            end
            if warned then
                log(ngx.NOTICE, "engine thread ticks again")
                warned = false
            end
        elseif rerr == "timeout" then
            if not warned then
                log(ngx.WARN, "engine thread has not ticked for ", STALL_S, " s",
                    main and "" or (" (the client of prefix " .. c.prefix .. ")"))
                warned = true
            end
        else
            if main then disp.running = false end
            sock:close()
            if c:closed() then return end
            return fall_back("wake-up socket: " .. tostring(rerr), c)
        end
    end
    if main then disp.running = false end
    sock:close()
    if ngx.worker.exiting() and main then stop_healths() end
end

-- Starts the dispatcher of client c (this worker's, or a group's).
local function start_dispatcher(c)
    local ok, err = ngx.timer.at(0, dispatcher, c)
    if not ok then return nil, "cannot start the dispatcher: " .. tostring(err) end
    return true
end

-- ------------------------------------------------------------------- api --

local function need_client(where)
    if not client then
        error("locker.ngx." .. where .. ": call locker.ngx.init{...} in init_worker_by_lua first", 3)
    end
    return client
end

local own_opts = { stale_after = true, retry_after = true, pending = true, names = true,
                   status_dict = true }

--- Makes this worker's client (in init_worker_by_lua*). opts: what
-- locker.new takes (endpoints, prefix, ttl, timeout, margin, cacert, cert,
-- key, insecure, user, password, proxy_env, transport), plus defaults for gate and
-- state: stale_after (seconds, default max(10, 2 * ttl)), retry_after
-- (seconds for 503's Retry-After, default ttl), pending ("closed" or
-- "open", default "closed"), and names (a list to follow from the start,
-- so the first request finds them known), and status_dict (the name of a
-- lua_shared_dict for the status page of every worker: see status()).
function _M.init(opts)
    local phase = ngx.get_phase()
    if phase ~= "init_worker" then
        error("locker.ngx.init: call it in init_worker_by_lua* (here: " .. phase
              .. "); a client made before nginx forks cannot work in the workers", 2)
    end
    if client then error("locker.ngx.init: called twice in this worker", 2) end
    if type(opts) ~= "table" then error("locker.ngx.init: expected an options table", 2) end
    local copts = {}
    for k, v in pairs(opts) do
        if not own_opts[k] then copts[k] = v end
    end
    if opts.status_dict ~= nil then
        status_dict = type(opts.status_dict) == "string" and ngx.shared[opts.status_dict]
        if not status_dict then
            error("locker.ngx.init: status_dict: no lua_shared_dict named " .. tostring(opts.status_dict)
                  .. " (declare one in the http block: lua_shared_dict " .. tostring(opts.status_dict)
                  .. " 1m;)", 2)
        end
    end
    sched.use(backend)
    locker.on_error(function(msg) log(ngx.ERR, msg) end)
    local c, msg = locker.new(copts)
    if not c then error("locker.ngx.init: " .. tostring(msg), 2) end
    client = c
    local ttl = c.ttl
    settings.stale_after = opts.stale_after or math.max(10, 2 * ttl)
    settings.retry_after = opts.retry_after or ttl
    settings.pending = opts.pending or "closed"
    if settings.pending ~= "closed" and settings.pending ~= "open" then
        error("locker.ngx.init: pending must be \"closed\" or \"open\"", 2)
    end
    for _, name in ipairs(opts.names or {}) do
        client:follow(name)
        followed[name] = true
    end
    local ok, err = start_dispatcher(client)
    if not ok then error("locker.ngx.init: " .. err, 2) end
    disp.started, disp.started_at = true, ngx.now()
    return client
end

--- This worker's client (for lock, get, owner, watch, status...). Its
-- waiting calls yield in request handlers and timers.
function _M.client()
    return need_client("client")
end

local function follow(name)
    if not followed[name] then
        client:follow(name)
        followed[name] = true
    end
end

--- The state of record NAME, from the cache (no I/O; any phase):
-- value, token, state. state: "up" (someone holds it: value and token are
-- the owner's), "gone" (nobody holds it), "pending" (not known yet), or
-- "stale" (the watch stream has not shown it is live for longer than
-- stale_after seconds; value and token are the last known, maybe nil).
function _M.state(name, opts)
    need_client("state")
    follow(name)
    local stale_after = opts and opts.stale_after or settings.stale_after
    local value, token, rev, age = client:cached(name)
    if value == nil and rev == "pending" then return nil, nil, "pending" end
    if age == nil or age > stale_after then return value, value and token, "stale" end
    if value == nil then return nil, nil, "gone" end
    return value, token, "up"
end

--- In access_by_lua*: returns value, token when record NAME is up;
-- otherwise ends the request with 503 and a Retry-After header. opts:
-- pending = "closed" (default: 503 while the state is unknown, pending or
-- stale) or "open" (let requests through then; the third result says
-- which), stale_after (seconds), retry_after (seconds).
function _M.gate(name, opts)
    local value, token, state = _M.state(name, opts)
    if state == "up" then return value, token end
    local mode = opts and opts.pending or settings.pending
    if state ~= "gone" and mode == "open" then return value, token, state end
    ngx.header["Retry-After"] = tostring(ceil(opts and opts.retry_after or settings.retry_after))
    return ngx.exit(ngx.HTTP_SERVICE_UNAVAILABLE)
end

--- Holds record NAME with VALUE from one worker (opts.worker, default 0;
-- "all": every worker contends, one holds). A background lock that comes
-- back by itself; after a reload the new worker of that number takes it
-- over (the old one's lease goes at its close()). Returns the Lock in the
-- holding worker, nil in the others.
function _M.hold(name, value, opts)
    need_client("hold")
    local want = opts and opts.worker
    if want == nil then want = 0 end
    if want ~= "all" and ngx.worker.id() ~= want then return nil end
    if holds[name] then error("locker.ngx.hold: '" .. tostring(name) .. "' is held already", 2) end
    local lock = client:lock(name, value, {
        background = true, keep = true,
        on_change = function(owned, _, msg)
            disp.dirty = true
            log(owned and ngx.NOTICE or ngx.WARN, "record ", name, owned and " held" or
                (" lost: " .. tostring(msg)))
        end,
    })
    holds[name] = { lock = lock, value = value }
    return lock
end

--- Follows NAME: fn(value, ev) in an ngx timer on its current state and
-- on every change (value nil: gone). fn may use ngx.sleep, cosockets,
-- shared dicts, and locker's waiting calls. Returns the Watch.
function _M.watch(name, fn)
    need_client("watch")
    if type(fn) ~= "function" then error("locker.ngx.watch: fn must be a function", 2) end
    return client:watch(name, fn)
end

--- Runs the health config at path (see locker.health) in this worker
-- (opts.worker, default 0; "all": every worker). Checks run in ngx timers
-- and may use cosockets. Returns the Health object, nil in other workers.
function _M.health(path, opts)
    need_client("health")
    local want = opts and opts.worker
    if want == nil then want = 0 end
    if want ~= "all" and ngx.worker.id() ~= want then return nil end
    local spec, err = health.load(path)
    if not spec then error("locker.ngx.health: " .. tostring(err), 2) end
    local h = health.start(client, spec, {
        log = function(line)
            disp.dirty = true
            log(ngx.NOTICE, "health: ", line)
        end,
    })
    healths[#healths + 1] = { path = path, h = h }
    return h
end

-- ------------------------------------------------------------- upstreams --
-- Upstreams made of live records (locker.ngx_upstream; README, "Service
-- discovery in nginx").

local upstreams  -- locker.ngx_upstream, loaded with the first group

--- Declares upstream group GROUP in init_worker_by_lua*: its records are
-- every name under prefix .. GROUP .. "/" (or opts.names, records of this
-- client), their values addresses ("HOST:PORT [weight=N]", see
-- locker.peers; a malformed one is skipped and logged). opts: fail = "503"
-- (default: nothing to pick when no record is held), "stale" (the last
-- peers for stale_after seconds after the last record went) or "fallback"
-- (opts.fallback, a list of addresses); stale_after, retry_after (default:
-- init's); tries (more tries after a failed peer, default 2); on_change =
-- fn(peers, group) after each change of this worker's view.
function _M.upstream(group, opts)
    need_client("upstream")
    upstreams = upstreams or require "locker.ngx_upstream"
    upstreams.declare({ client = client, settings = settings, log = log, start = start_dispatcher },
                      group, opts)
    return true
end

local function need_upstreams(where)
    if not upstreams then
        error("locker.ngx." .. where .. ": no upstream group is declared (locker.ngx.upstream "
              .. "in init_worker_by_lua)", 3)
    end
    return upstreams
end

--- In balancer_by_lua*: picks a peer of GROUP among the records held now
-- (round robin, weighted; with a hash key, consistent hashing: opts is the
-- key or { hash = key }) and sets it; a retry picks another. Returns its
-- address and record name.
function _M.balance(group, opts)
    return (upstreams or need_upstreams("balance")).balance(group, opts)
end

--- In access_by_lua*: the number of peers GROUP would pick from, or the
-- request ends with 503 and Retry-After when there are none.
function _M.admit(group)
    return need_upstreams("admit").admit(group)
end

--- What this worker knows of GROUP (see locker.ngx_upstream.state).
function _M.upstream_state(group)
    return need_upstreams("upstream_state").state(group)
end

--- Waiting calls on this worker's client (they yield; see client()).
function _M.lock(name, value, opts) return need_client("lock"):lock(name, value, opts) end
function _M.get(name) return need_client("get"):get(name) end

--- Closes the client in exit_worker_by_lua*: the lease is revoked (every
-- record this worker holds vanishes at once), no callback runs. Idempotent.
function _M.close()
    if not client then return true end
    stop_healths()
    if status_dict then status.withdraw(status_dict, ngx.worker.id(), ngx.worker.pid()) end
    return client:close()
end

-- ---------------------------------------------------------------- status --

local ARRAY = status.ARRAY  -- lists that are arrays even when empty

--- What this worker knows, as a table: session, records (every name it
-- follows or watches, with state, owner value, token, revision, age of
-- the stream, last change), holds, health, dispatcher, counters. No I/O.
function _M.report()
    local c = need_client("report")
    local out = { worker = ngx.worker.id(), pid = ngx.worker.pid(),
                  records = setmetatable({}, ARRAY), holds = setmetatable({}, ARRAY),
                  health = setmetatable({}, ARRAY) }
    if c:closed() then
        out.session = { state = "closed" }
        return out
    end
    out.session = c:session()
    out.stats = c:stats()
    out.metrics = metrics.summary(c:metrics())
    out.dispatcher = { running = disp.running, wakeups = disp.wakeups,
                       last_wakeup_age = disp.alive_at and ngx.now() - disp.alive_at or nil }
    for _, name in ipairs(c:names()) do
        local value, token, state = _M.state(name)
        local _, _, rev, age = c:cached(name)
        local last = c:last(name)
        out.records[#out.records + 1] = {
            name = name, state = state, value = value, token = token,
            revision = type(rev) ~= "string" and rev or nil, age = age,
            changed = last and last.changed or nil,
        }
    end
    for name, h in pairs(holds) do
        out.holds[#out.holds + 1] = { name = name, value = h.value, owned = h.lock:owned(),
                                      token = h.lock:token() }
    end
    for _, e in ipairs(healths) do
        out.health[#out.health + 1] = { path = e.path, state = e.h:state() }
    end
    if upstreams then
        out.upstreams = setmetatable({}, ARRAY)
        for _, group in ipairs(upstreams.names()) do
            out.upstreams[#out.upstreams + 1] = upstreams.state(group)
        end
    end
    return out
end


--- A content handler: the status of the nginx instance, whichever worker
-- serves it: every worker's report() (see locker.ngx_status), as JSON for
-- "Accept: application/json", otherwise a small HTML page.
function _M.status()
    local r = _M.report()
    if not status_dict then
        return status.serve({ status.render(r) }, r.worker, false)
    end
    publish(r)  -- this worker's part is as fresh as the request
    return status.serve(status.collect(status_dict, ngx.worker.count()), r.worker, true)
end

--- A content handler: one Prometheus scrape (text format 0.0.4) of every
-- worker's metrics, each sample labelled worker="<id>", gathered through
-- the status_dict (each worker stores its own there with its status
-- report, at least every second), whichever worker serves it; and
-- locker_nginx_worker_reporting{worker} (0: no report for EXPIRE_S). No
-- I/O to etcd. Without a status_dict: the serving worker's alone.
function _M.metrics()
    local c = need_client("metrics")
    ngx.header.content_type = "text/plain; version=0.0.4; charset=utf-8"
    local id = ngx.worker.id()
    if not status_dict then
        ngx.print(locker.metrics_text(c, { worker = id }))
        return
    end
    publish()  -- this worker's part is as fresh as the request
    local parts, reporting = status.collect_metrics(status_dict, ngx.worker.count())
    local out = { metrics.join(parts),
                  "# HELP locker_nginx_worker_reporting whether the worker's figures are in this scrape\n",
                  "# TYPE locker_nginx_worker_reporting gauge\n" }
    for _, r in ipairs(reporting) do
        out[#out + 1] = ('locker_nginx_worker_reporting{worker="%d"} %d\n'):format(r[1], r[2])
    end
    ngx.print(concat(out))
end

_M.json = status.json

return _M

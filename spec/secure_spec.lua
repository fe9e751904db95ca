-- A secured etcd: TLS with client certificates (certificates made by
-- tools/tls-certs with openssl), and etcd's authentication with tokens
-- that expire every 2 s. Every message these tests see is kept and checked
-- for secrets at the end.
local locker = require "locker"
local helper = require "helper"

local PASSWORD, ROOT_PASSWORD, WRONG = "app-secret-pw", "root-secret-pw", "wrong-secret-pw"
local SECRETS = { PASSWORD, ROOT_PASSWORD, WRONG }
local seen = {}  -- every message, for the secrets check

local function keep(...)
    for i = 1, select("#", ...) do
        local v = select(i, ...)
        if type(v) == "string" then seen[#seen + 1] = v end
    end
    return ...
end

-- A result and how long it took (seconds).
local function timed(fn)
    local t0 = locker.now()
    local a, b, c = fn()
    return locker.now() - t0, keep(a, b, c)
end

local function serialize(v, out)
    out = out or {}
    if type(v) == "table" then
        for k, x in pairs(v) do
            out[#out + 1] = tostring(k)
            serialize(x, out)
        end
    else
        out[#out + 1] = tostring(v)
    end
    return table.concat(out, " ")
end

local certs  -- made in setup, removed in teardown
local function cert(name) return certs .. "/" .. name end

describe("TLS with client certificates", function()
    local etcd
    setup(function()
        certs = helper.sh("mktemp -d"):gsub("%s+$", "")
        local out, made = helper.sh("tools/tls-certs " .. helper.quote(certs))
        assert(made, "tools/tls-certs: " .. out)
        etcd = helper.etcd { tls = certs }
    end)
    teardown(function()
        if etcd then etcd:destroy() end
        helper.sh("rm -rf " .. helper.quote(certs))
    end)

    local function client(opts)
        opts.endpoints = opts.endpoints or { etcd.endpoint }
        opts.prefix, opts.timeout = "/tls/", opts.timeout or 5
        return assert(locker.new(opts))
    end
    local function good()
        return { cacert = cert "ca.crt", cert = cert "client.crt", key = cert "client.key" }
    end

    it("serves https and asks for client certificates", function()
        assert.truthy(etcd.endpoint:match("^https://"))
    end)

    it("locks, gets, watches and releases with cacert, cert and key", function()
        local a, b = client(good()), client(good())
        local changes = {}
        local w = b:watch("t", function(value) changes[#changes + 1] = value or "gone" end)
        local l = assert(keep(a:lock("t", "v1")))
        assert.equal("v1", assert(b:get("t")))
        helper.wait_until("the watch sees the owner", function() return changes[#changes] == "v1" end)
        assert(l:release())
        helper.wait_until("the watch sees the release", function() return changes[#changes] == "gone" end)
        assert.is_nil((b:get("t")))
        w:cancel()
        a:close()
        b:close()
    end)

    local cases = {  -- what, files (ca, cert, key), host, pattern
        { "an unknown CA", { "other-ca.crt", "client.crt", "client.key" }, nil,
            "not signed by a trusted CA" },
        { "a host name mismatch", { "ca.crt", "client.crt", "client.key" }, "localhost",
            "not for that host name" },
        { "a missing client certificate", { "ca.crt" }, nil, "requires a client certificate" },
        { "a client certificate from another CA", { "ca.crt", "other-client.crt",
            "other-client.key" }, nil, "refused the client certificate" },
    }
    for _, case in ipairs(cases) do
        local what, files, host, pattern = case[1], case[2], case[3], case[4]
        it("fails fast with 'tls' on " .. what, function()
            local opts = { cacert = cert(files[1]), cert = files[2] and cert(files[2]),
                           key = files[3] and cert(files[3]), host = host }
            if opts.host then
                opts.endpoints = { (etcd.endpoint:gsub("127%.0%.0%.1", opts.host)) }
                opts.host = nil
            end
            local c = client(opts)
            local took, v, msg, code = timed(function() return c:get("t") end)
            assert.is_nil(v)
            assert.equal("tls", code)
            assert.truthy(msg:find(pattern, 1, true), msg)
            assert.is_true(took < 2, "took " .. took .. " s")
            -- a lock fails too, with the same reason, and does not wait
            took, v, msg, code = timed(function() return c:lock("t", "x", { timeout = 4 }) end)
            assert.is_nil(v)
            assert.equal("tls", code, msg)
            assert.truthy(msg:find(pattern, 1, true), msg)
            assert.is_true(took < 2, "lock took " .. took .. " s")
            c:close()
        end)
    end

    it("works with insecure, and says once that it does not verify", function()
        local warnings = {}
        locker.on_error(function(m) warnings[#warnings + 1] = keep(m) end)
        local c = client { insecure = true, cert = cert "client.crt", key = cert "client.key" }
        locker.on_error(function(m) io.stderr:write("locker: ", m, "\n") end)
        assert.equal(1, #warnings)
        assert.truthy(warnings[1]:find("not verified", 1, true))
        local l = assert(keep(c:lock("i", "v")))
        assert.equal("v", (c:get("i")))
        l:release()
        c:close()
    end)

    it("names an unreadable certificate file when the client is made", function()
        assert.error_matches(function() locker.new { endpoints = { etcd.endpoint },
            cacert = certs .. "/nope.crt" } end, "option 'cacert': cannot read .*nope%.crt")
        assert.error_matches(function() locker.new { endpoints = { etcd.endpoint },
            key = cert "client.key" } end, "option 'key' needs 'cert'")
    end)

    it("the CLI connects with --cacert --cert --key, or the environment", function()
        local out, _, code = helper.locker(etcd, ("--prefix /tls/ --cacert %s --cert %s --key %s get nobody")
            :format(cert "ca.crt", cert "client.crt", cert "client.key"))
        assert.equal(1, code, out)  -- nobody holds it: asked, and answered
        out, _, code = helper.locker(etcd, "--prefix /tls/ get nobody",
            ("LOCKER_CACERT=%s LOCKER_CERT=%s LOCKER_KEY=%s")
                :format(cert "ca.crt", cert "client.crt", cert "client.key"))
        assert.equal(1, code, out)
        local ok
        out, ok, code = helper.locker(etcd, ("--prefix /tls/ --cacert %s get nobody"):format(cert "ca.crt"))
        keep(out)
        assert.is_false(ok)
        assert.equal(3, code, out)
        assert.truthy(out:find("requires a client certificate", 1, true), out)
    end)
end)

describe("etcd authentication", function()
    local etcd
    setup(function()
        etcd = helper.etcd { args = "--auth-token-ttl=2" }
        for _, cmd in ipairs {
            "user add root:" .. ROOT_PASSWORD, "role add app",
            "role grant-permission app --prefix=true readwrite /auth/",
            "user add app:" .. PASSWORD, "user grant-role app app", "auth enable",
        } do
            local out, ok = etcd:ctl(cmd)
            assert(ok, "etcdctl " .. cmd:gsub("%S+:%S+", "USER:***") .. ": " .. out)
        end
        etcd.ctl_user = "root:" .. ROOT_PASSWORD
    end)
    teardown(function() etcd:destroy() end)

    local function client(opts)
        opts = opts or {}
        opts.endpoints = { etcd.endpoint }
        opts.prefix = opts.prefix or "/auth/"
        if opts.user == nil then opts.user, opts.password = "app", PASSWORD end
        if opts.user == false then opts.user = nil end
        return assert(locker.new(opts))
    end

    it("keeps a lock through ten token expiries; lock, get and watch keep working", function()
        local c, other = client { ttl = 10 }, client()
        local renewed = {}
        other:on_event(function(ev) if ev.kind == "auth_renewed" then renewed[#renewed + 1] = ev end end)
        local losses = {}
        local held = assert(keep(c:lock("kept", "v", { keep = true, on_change = function(owned, _, why)
            if not owned then losses[#losses + 1] = why or "?" end
        end })))
        local seen_values = {}
        local w = c:watch("w", function(value) seen_values[#seen_values + 1] = value or "gone" end)
        local t0 = locker.now()
        for round = 1, 10 do
            -- idle past the token's 2 s: the next request finds it expired
            locker.sleep(3)
            assert.is_true(held:owned(), "round " .. round)
            assert.equal("v", keep(other:get("kept")))
            local l = assert(keep(other:lock("w", "r" .. round, { timeout = 5 })))
            helper.wait_until("the watch sees round " .. round,
                function() return seen_values[#seen_values] == "r" .. round end)
            assert(l:release())
        end
        assert.is_true(locker.now() - t0 >= 30)
        assert.same({}, losses)
        local stats = c:stats()
        assert.is_true(stats.authentications + other:stats().authentications >= 10,
            "authentications: " .. stats.authentications)
        assert.is_true(stats.stream_connects <= 3, "stream connects: " .. stats.stream_connects)
        -- each token etcd gave is told (the first too), never more than were
        -- asked; other's locks and gets find their token expired each round
        local asked = other:stats().authentications
        assert.is_true(#renewed >= 2 and #renewed <= asked,
            ("%d auth_renewed events, %d authentications"):format(#renewed, asked))
        assert.matches("token", renewed[#renewed].reason)
        keep(serialize(c:session()), serialize(c:stats()), serialize(c:status()))
        w:cancel()
        c:close()
        other:close()
    end)

    it("keeps working when etcd's users or roles change meanwhile", function()
        local c = client()
        assert.is_nil(keep(c:get("rev")))  -- a token is issued and works
        local l = assert(keep(c:lock("rev", "v", { keep = true })))
        -- a change to the auth store raises its revision; a request that
        -- meets it ("revision of auth store is old") takes a new token
        local out, ok = etcd:ctl("role add another-role")
        assert(ok, out)
        assert.equal("v", keep(c:get("rev")))
        assert.is_true(l:owned())
        out, ok = etcd:ctl("role delete another-role")
        assert(ok, out)
        l:release()
        c:close()
    end)

    it("a wrong password gives 'auth' at once, and is not asked again in a loop", function()
        local c = client { user = "app", password = WRONG, timeout = 3 }
        local took, v, msg, code = timed(function() return c:get("x") end)
        assert.is_nil(v)
        assert.equal("auth", code)
        assert.truthy(msg:find("authentication failed", 1, true), msg)
        assert.is_true(took < 1, "took " .. took)
        took, v, msg, code = timed(function() return c:lock("x", "v", { timeout = 3 }) end)
        assert.is_nil(v)
        assert.equal("auth", code, msg)
        assert.is_true(took < 1, "lock took " .. took)
        for _ = 1, 20 do keep(c:get("x")) end
        assert.is_true(c:stats().authentications <= 2, "authentications: " .. c:stats().authentications)
        keep(serialize(c:session()))
        c:close()
    end)

    it("a prefix outside the role's permission gives 'auth', never a hang", function()
        local c = client { prefix = "/elsewhere/", timeout = 3 }
        local _, v, msg, code = timed(function() return c:get("x") end)
        assert.is_nil(v)
        assert.equal("auth", code)
        assert.truthy(msg:find("permission denied", 1, true), msg)
        local took
        took, v, msg, code = timed(function() return c:lock("x", "v", { timeout = 4 }) end)
        assert.is_nil(v)
        assert.equal("auth", code, msg)
        assert.is_true(took < 4, "lock took " .. took)
        c:close()
    end)

    it("without a user, says that etcd wants one", function()
        local c = client { user = false }
        local v, msg, code = keep(c:get("x"))
        assert.is_nil(v)
        assert.equal("auth", code)
        assert.truthy(msg:find("set user and password", 1, true), msg)
        c:close()
    end)

    it("the CLI takes --user NAME:PASSWORD, or LOCKER_USER and LOCKER_PASSWORD", function()
        local out, _, code = helper.locker(etcd, "--prefix /auth/ --user app:" .. PASSWORD .. " get nobody")
        assert.equal(1, code, out)
        out, _, code = helper.locker(etcd, "--prefix /auth/ --user app get nobody",
            "LOCKER_PASSWORD=" .. PASSWORD)
        assert.equal(1, code, out)
        out, _, code = helper.locker(etcd, "--prefix /auth/ get nobody",
            "LOCKER_USER=app LOCKER_PASSWORD=" .. PASSWORD)
        assert.equal(1, code, out)
        out, _, code = helper.locker(etcd, "--prefix /auth/ --user app:" .. WRONG .. " get nobody")
        keep(out)
        assert.equal(3, code, out)
        assert.truthy(out:find("refused authentication", 1, true), out)
        -- no terminal to ask on, no LOCKER_PASSWORD: said, not hung
        out, _, code = helper.locker(etcd, "--prefix /auth/ --user app get nobody </dev/null",
            "setsid")
        keep(out)
        assert.equal(2, code, out)
        assert.truthy(out:find("no password for etcd user 'app'", 1, true), out)
    end)

    it("a health config's connect{} carries the endpoints, user and password", function()
        local path = helper.file(([[
connect { endpoints = { %q }, prefix = "/auth/", user = "app", password = %q }
record "svc" { value = "up" }
]]):format(etcd.endpoint, PASSWORD))
        -- no endpoint in the environment: only the file says where etcd is
        local pid, out = helper.spawn(("LOCKER_ENDPOINTS= exec %s bin/locker health %s")
            :format(helper.lua, path), true)
        local c = client()
        helper.wait_until("the record is held", function() return c:get("svc") == "up" end, 10)
        helper.kill(pid, "TERM")
        helper.wait_until("locker health exits", function() return not helper.alive(pid) end, 10)
        helper.wait_until("the record is dropped", function() return c:get("svc") == nil end, 10)
        keep(helper.read(out))
        c:close()
        os.remove(path)
        os.remove(out)
    end)

    it("refuses endpoints that carry a user name or password, without echoing them", function()
        local ok, err = pcall(locker.new, { endpoints = { "http://root:" .. ROOT_PASSWORD .. "@127.0.0.1:2379" } })
        assert.is_false(ok)
        keep(err)
        assert.truthy(err:find("carries a user name or password", 1, true), err)
        ok, err = pcall(locker.new, { endpoints = { etcd.endpoint }, user = "app", password = 42 })
        assert.is_false(ok)
        keep(err)
    end)

    it("no secret appears in any message seen here", function()
        assert.is_true(#seen > 20, "messages kept: " .. #seen)
        for _, m in ipairs(seen) do
            for _, secret in ipairs(SECRETS) do
                assert.is_nil(m:find(secret, 1, true), "a secret in: " .. m)
            end
        end
    end)
end)

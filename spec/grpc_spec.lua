-- The gRPC transport against an etcd whose JSON gateway is switched off
-- (--enable-grpc-gateway=false): every call of the library goes by etcd's
-- native protocol, none by the gateway. The rest of the suite runs on both
-- transports (make test's gRPC lane); this file shows the transport choice
-- itself: what is asked of etcd, how a bad choice or a bad peer reads.
local locker = require "locker"
local helper = require "helper"

describe("the gRPC transport", function()
    local etcd
    local n = 0
    local prefix

    setup(function()
        etcd = helper.etcd({ args = "--enable-grpc-gateway=false" })
    end)
    teardown(function() etcd:destroy() end)
    before_each(function()
        n = n + 1
        prefix = "/grpc" .. n .. "/"
    end)

    local function client(opts)
        opts = opts or {}
        opts.prefix = opts.prefix or prefix
        opts.transport = opts.transport or "grpc"
        return etcd:client(opts)
    end

    it("locks, reads, sets, watches, hands over and renews with no gateway to call", function()
        local a, b = client({ ttl = 3 }), client({ ttl = 3 })
        assert.equal("grpc", a.transport)
        local seen = {}
        b:watch("name", function(value) seen[#seen + 1] = value or "(gone)" end)
        local l = assert(a:lock("name", "v1"))
        assert.equal("v1", b:get("name"))
        assert.is_true(l:set("v2"))
        helper.wait_until("the watch to see v2", function() return seen[#seen] == "v2" end, 5)
        local waiting = helper.go(function() return b:lock("name", "b", { timeout = 5 }) end)
        helper.wait_until("b to queue", function() return #etcd:keys(prefix .. "name/") == 2 end)
        local first = l:token()
        assert(l:release())
        helper.wait_until("b to own", function() return waiting.done end, 5)
        local lb = assert(waiting.r[1], waiting.r[2])
        assert.is_true(lb:owned())
        assert.is_true(lb:token() > first)
        -- renewed on gRPC too: still owned past the TTL, and the session says so
        locker.sleep(3.5)
        assert.is_true(lb:owned())
        assert.equal("ok", b:session().state)
        assert.is_true(b:stats().keepalives >= 2)
        assert(lb:release())
        helper.wait_until("the watch to see it go", function() return seen[#seen] == "(gone)" end, 5)
        a:close(); b:close()
        assert.same({}, etcd:keys(prefix, true))
    end)

    it("counts its calls by kind, as the gateway's", function()
        local c = client()
        assert(c:lock("k", "v")):release()
        assert.is_nil(c:get("k"))
        local text = locker.metrics_text(c)
        for _, kind in ipairs { "txn", "range", "lease_grant", "delete" } do
            assert.truthy(text:find('kind="' .. kind .. '"', 1, true), kind .. " not counted")
        end
        c:close()
    end)

    it("is what works here: the gateway transport meets etcd's 404 and says so", function()
        local c = client({ transport = "gateway", timeout = 2 })
        local t0 = locker.now()
        local v, msg, code = c:get("x")
        assert.is_nil(v)
        assert.is_string(code)
        assert.truthy(msg:find("404", 1, true), msg)
        assert.is_true(locker.now() - t0 < 2)
        c:close()
    end)

    it("fails in time, with a reason, against a server that is no gRPC server", function()
        -- tools/badgw.c speaks HTTP/1.1 only: HTTP/2's preface is garbage to it
        local gw = helper.tool("badgw", os.getenv("LOCKER_BADGW") or "build/5.4/badgw", "error500")
        local c = locker.new { endpoints = { gw.endpoint }, transport = "grpc", timeout = 1, prefix = prefix }
        local t0 = locker.now()
        local v, msg, code = c:get("x")
        assert.is_nil(v)
        assert.truthy(code == "unavailable" or code == "protocol", code)
        assert.is_string(msg)
        local l, lmsg, lcode = c:lock("x", "v", { timeout = 2 })
        assert.is_nil(l, lmsg)
        assert.is_string(lcode)
        assert.is_true(locker.now() - t0 < 4.5, "took " .. (locker.now() - t0))
        c:close()
        gw:close()
    end)

    it("is the CLI's with --transport grpc, or LOCKER_TRANSPORT", function()
        local c = client()
        local l = assert(c:lock("cli", "from-lua"))
        local out, ok = helper.locker(etcd, "--prefix " .. prefix .. " --transport grpc get cli")
        assert(ok, out)
        assert.equal("from-lua\n", out)
        out, ok = helper.locker(etcd, "--prefix " .. prefix .. " get cli", "LOCKER_TRANSPORT=grpc")
        assert(ok, out)
        assert.equal("from-lua\n", out)
        local code
        out, ok, code = helper.locker(etcd, "--transport h3 get cli")
        assert.is_false(ok)
        assert.equal(2, code)
        assert.matches("transport", out)
        l:release()
        c:close()
    end)

    it("refuses a transport it does not know, naming it", function()
        assert.has_error(function() locker.new { endpoints = { etcd.endpoint }, transport = "h3" } end,
                         "locker.new: option 'transport' must be \"grpc\" or \"gateway\" (got h3)")
    end)
end)

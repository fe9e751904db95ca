-- Misuse raises a clear error naming what was wrong; no etcd needed.
local locker = require "locker"

local EP = { "http://127.0.0.1:2379" }

describe("locker.new()", function()
    it("raises naming an unknown option", function()
        assert.has_error(function() locker.new{ endpoints = EP, tll = 5 } end,
            "locker.new: unknown option 'tll'")
    end)

    it("raises on missing or malformed endpoints", function()
        assert.error_matches(function() locker.new{} end, "option 'endpoints'")
        assert.error_matches(function() locker.new{ endpoints = {} } end, "option 'endpoints'")
        assert.error_matches(function() locker.new{ endpoints = { "127.0.0.1:2379" } } end,
            "option 'endpoints' must be URLs")
        assert.error_matches(function() locker.new{ endpoints = { 42 } } end, "option 'endpoints'")
    end)

    it("raises on a bad ttl, timeout or prefix", function()
        assert.error_matches(function() locker.new{ endpoints = EP, ttl = 1 } end, "option 'ttl'")
        assert.error_matches(function() locker.new{ endpoints = EP, ttl = 2.5 } end, "option 'ttl'")
        assert.error_matches(function() locker.new{ endpoints = EP, ttl = "10" } end, "option 'ttl'")
        assert.error_matches(function() locker.new{ endpoints = EP, timeout = 0 } end, "option 'timeout'")
        assert.error_matches(function() locker.new{ endpoints = EP, prefix = "" } end, "option 'prefix'")
        assert.error_matches(function() locker.new{ endpoints = EP, prefix = "a\0b" } end, "option 'prefix'")
    end)

    it("raises on bad TLS and authentication options, never echoing a password", function()
        assert.error_matches(function() locker.new{ endpoints = EP, insecure = "yes" } end,
            "option 'insecure' must be true or false")
        assert.error_matches(function() locker.new{ endpoints = EP, cacert = 42 } end,
            "option 'cacert' must be a file path")
        assert.error_matches(function() locker.new{ endpoints = EP, user = "u" } end,
            "option 'user' needs 'password'")
        assert.error_matches(function() locker.new{ endpoints = EP, password = "s3cret" } end,
            "option 'password' needs 'user'")
        local ok, err = pcall(locker.new, { endpoints = EP, user = "", password = "s3cret" })
        assert.is_false(ok)
        assert.truthy(err:find("option 'user'", 1, true), err)
        assert.is_nil(err:find("s3cret", 1, true))
        ok, err = pcall(locker.new, { endpoints = { "https://u:s3cret@127.0.0.1:2379" } })
        assert.is_false(ok)
        assert.truthy(err:find("carries a user name or password", 1, true), err)
        assert.is_nil(err:find("s3cret", 1, true))
    end)

    it("raises when opts is not a table", function()
        assert.error_matches(function() locker.new("http://x") end, "expected an options table")
    end)

    it("makes a client without any I/O", function()
        local c = assert(locker.new{ endpoints = { "http://127.0.0.1:1/" } })
        assert.same({ "http://127.0.0.1:1" }, c.endpoints)
        assert.equal("/locker/", c.prefix)
        assert.equal(10, c.ttl)
        c:close()
    end)
end)

describe("names and values", function()
    local c
    before_each(function() c = assert(locker.new{ endpoints = { "http://127.0.0.1:1" } }) end)
    after_each(function() c:close() end)

    it("refuses names that could reach into other locks' keys", function()
        assert.error_matches(function() c:lock("", "v") end, "name is empty")
        assert.error_matches(function() c:lock("a/b", "v") end, "contains '/'")
        assert.error_matches(function() c:lock("a\0b", "v") end, "NUL")
        assert.error_matches(function() c:lock(("x"):rep(locker.MAX_NAME + 1), "v") end,
            "the limit is " .. locker.MAX_NAME)
        assert.error_matches(function() c:lock(42, "v") end, "name must be a string")
        assert.error_matches(function() c:get("a/b") end, "contains '/'")
    end)

    it("refuses values over the documented limit and non-strings", function()
        assert.error_matches(function() c:lock("n", ("x"):rep(locker.MAX_VALUE + 1)) end,
            "the limit is " .. locker.MAX_VALUE)
        assert.error_matches(function() c:lock("n", 42) end, "value must be a string")
    end)

    it("refuses bad lock options, naming them", function()
        assert.error_matches(function() c:lock("n", "v", { timout = 1 }) end, "unknown option 'timout'")
        assert.error_matches(function() c:lock("n", "v", { timeout = -1 }) end, "option 'timeout'")
        assert.error_matches(function() c:lock("n", "v", { wait = "no" }) end, "option 'wait'")
        assert.error_matches(function() c:lock("n", "v", { on_change = 1 }) end, "option 'on_change'")
    end)
end)

describe("a closed client", function()
    it("answers nil, msg, 'closed' and closes idempotently", function()
        local c = assert(locker.new{ endpoints = EP })
        assert.is_true(c:close())
        assert.is_true(c:close())
        assert.is_true(c:closed())
        local l, msg, code = c:lock("n", "v")
        assert.is_nil(l)
        assert.equal("closed", code)
        assert.matches("closed", msg)
        -- one rule for every call: nil, msg, "closed" (misuse still raises)
        local calls = {
            get = function() return c:get("n") end,
            owner = function() return c:owner("n") end,
            status = function() return c:status() end,
            watch = function() return c:watch("n", function() end) end,
            follow = function() return c:follow("n") end,
            cached = function() return c:cached("n") end,
            lease = function() return c:lease() end,
            session = function() return c:session() end,
        }
        for what, call in pairs(calls) do
            local v, m, code2 = call()
            assert.is_nil(v, what)
            assert.equal("closed", code2, what)
            assert.equal("client is closed", m, what)
        end
        assert.error_matches(function() c:lock(42) end, "name must be a string")
        assert.is_table(c:stats())  -- what it did stays readable
    end)
end)

-- The engine's pure codecs, with no etcd running: base64, the gateway's
-- request bodies and answers (recorded from etcd 3.4's gateway), the key
-- layout, and what a TLS failure means. Through a test-only binding
-- (spec/codec_probe.c).
local cjson = require "cjson"
local codec = require "codec_probe"

local function b64(s) return codec.b64_encode(s) end

describe("base64", function()
    it("encodes RFC 4648's test vectors", function()
        local vectors = { [""] = "", f = "Zg==", fo = "Zm8=", foo = "Zm9v", foob = "Zm9vYg==",
                          fooba = "Zm9vYmE=", foobar = "Zm9vYmFy" }
        for plain, coded in pairs(vectors) do
            assert.equal(coded, codec.b64_encode(plain))
            assert.equal(plain, codec.b64_decode(coded))
        end
    end)

    it("round-trips every byte value", function()
        local all = {}
        for i = 0, 255 do all[#all + 1] = string.char(i) end
        local bytes = table.concat(all)
        for n = 0, #bytes do
            local s = bytes:sub(1, n)
            assert.equal(s, codec.b64_decode(codec.b64_encode(s)))
        end
    end)

    it("refuses what is not base64", function()
        for _, bad in ipairs { "!!!!", "Z", "Zm9vY", "Zm9v\0", "Zg==Zg==", "Zm 9v" } do
            assert.is_nil(codec.b64_decode(bad), bad)
        end
    end)

    it("is lenient in what it reads: missing padding, the URL-safe alphabet", function()
        assert.equal("f", codec.b64_decode("Zg="))
        assert.equal("f", codec.b64_decode("Zg"))
        assert.equal("\251\255", codec.b64_decode("-_8"))
    end)
end)

describe("request bodies", function()
    it("sends int64 values as decimal strings, lease IDs past 2^53 exactly", function()
        local big = "9223372036854775807"
        assert.same({ TTL = "10" }, cjson.decode(codec.body("grant", "10")))
        assert.same({ ID = big }, cjson.decode(codec.body("lease", big)))
        -- the raw text keeps every digit (a double would round it)
        assert.truthy(codec.body("lease", big):find(big, 1, true))
    end)

    it("escapes user names and passwords as JSON text", function()
        local t = cjson.decode(codec.body("auth", 'us"er\\', "p\nw\1"))
        assert.same({ name = 'us"er\\', password = "p\nw\1" }, t)
    end)

    it("try-acquire: a put only if the name's directory is empty, else reads", function()
        local t = cjson.decode(codec.body("try", "/l/a/1f", "v\0", "31", "/l/a/"))
        local cmp = t.compare[1]
        assert.equal(b64 "/l/a/", cmp.key)
        assert.equal(b64 "/l/a0", cmp.range_end)  -- the directory's prefix end
        assert.equal("CREATE", cmp.target)
        assert.equal("EQUAL", cmp.result)
        local put = t.success[1].request_put
        assert.same({ key = b64 "/l/a/1f", value = b64 "v\0", lease = "31" }, put)
        assert.equal(b64 "/l/a/1f", t.failure[1].request_range.key)
        local owner = t.failure[2].request_range
        assert.equal("CREATE", owner.sort_target)
        assert.equal("ASCEND", owner.sort_order)
        assert.equal("1", owner.limit)
    end)

    it("probes: a count-only read, and a put on the session lease", function()
        assert.same({ key = b64 "/l//probe", count_only = true },
                    cjson.decode(codec.body("count", "/l//probe")))
        assert.same({ key = b64 "/l//probe", value = "", lease = "9223372036854775807" },
                    cjson.decode(codec.body("put", "/l//probe", "", "9223372036854775807")))
        assert.same({ key = b64 "k", value = b64 "v" }, cjson.decode(codec.body("put", "k", "v")))
    end)

    it("set and delete are guarded by the key's create_revision (the token)", function()
        local set = cjson.decode(codec.body("set", "/l/a/1f", "new", "31", "77"))
        assert.equal("CREATE", set.compare[1].target)
        assert.equal("77", set.compare[1].create_revision)
        local del = cjson.decode(codec.body("delete_if", "/l/a/1f", "77"))
        assert.equal("77", del.compare[1].create_revision)
        assert.equal(b64 "/l/a/1f", del.success[1].request_delete_range.key)
    end)

    it("a watch covers the prefix, from a revision, with progress notes and fragments", function()
        local t = cjson.decode(codec.body("watch", "/locker/", "42")).create_request
        assert.equal(b64 "/locker/", t.key)
        assert.equal(b64 "/locker0", t.range_end)
        assert.equal("42", t.start_revision)
        assert.is_true(t.progress_notify)
        assert.is_true(t.fragment)
    end)
end)

-- Answers recorded from etcd 3.4's gateway (spec/fixtures/gateway/).
local function fixture(name)
    local f = assert(io.open("spec/fixtures/gateway/" .. name))
    local text = f:read("*a")
    f:close()
    return text
end
local function lines(name)
    local t = {}
    for l in fixture(name):gmatch("[^\n]+") do t[#t + 1] = l end
    return t
end

describe("typed answers (transport/gateway.c into etcd/answers.h)", function()
    it("decodes a range: revision, count, every key-value", function()
        local a = codec.decode("range", fixture("range_kvs.json"), 200)
        assert.equal("ok", a.rc)
        assert.equal("2", a.range.revision)
        assert.equal("1", a.range.count)
        assert.equal(1, #a.range.kvs)
        assert.equal("/locker/job/6d3ba24e24ca8b06", a.range.kvs[1].key)
        assert.equal("10.0.0.1", a.range.kvs[1].value)
        assert.equal("2", a.range.kvs[1].create_revision)
        assert.equal("7871063230268476166", a.range.kvs[1].lease)  -- past 2^53, exact
        a = codec.decode("range", fixture("range_empty.json"), 200)
        assert.equal("ok", a.rc)
        assert.same({}, a.range.kvs)       -- the gateway omits an empty list
        assert.equal("0", a.range.count)   -- and a zero count
    end)

    it("decodes a txn: succeeded, each response's range, a put's as empty", function()
        local a = codec.decode("txn", fixture("txn_succeeded.json"), 200)
        assert.equal("ok", a.rc)
        assert.is_true(a.succeeded)
        assert.equal(2, #a.responses)
        assert.same({}, a.responses[1].kvs)  -- response_put
        assert.equal("/locker/job/6d3ba24e24ca8b06", a.responses[2].kvs[1].key)
        assert.equal("", a.responses[2].kvs[1].value)  -- keys_only: no value
        a = codec.decode("txn", fixture("txn_failed_ranges.json"), 200)
        assert.is_false(a.succeeded)
        assert.equal(3, #a.responses)
        assert.equal("10.0.0.1", a.responses[1].kvs[1].value)
        assert.equal("1", a.responses[3].count)  -- count_only
        assert.same({}, a.responses[3].kvs)
    end)

    it("decodes lease answers: grant, keepalive (inside result), a keepalive of a gone lease", function()
        local a = codec.decode("lease", fixture("lease_grant.json"), 200)
        assert.same({ "ok", "7871063230268476166", "30", "1" }, { a.rc, a.id, a.ttl, a.revision })
        a = codec.decode("lease", fixture("lease_keepalive.json"), 200)
        assert.same({ "ok", "7871063230268476166", "30", "1" }, { a.rc, a.id, a.ttl, a.revision })
        a = codec.decode("lease", fixture("lease_keepalive_gone.json"), 200)
        assert.equal("ok", a.rc)
        assert.equal("0", a.ttl)  -- omitted: the lease is gone
        a = codec.decode("plain", fixture("lease_revoke.json"), 200)
        assert.same({ "ok", "6" }, { a.rc, a.revision })
    end)

    it("decodes a watch stream: created, a put, a delete, a compacted start", function()
        local l = lines("watch_stream.txt")
        local a = codec.decode("watch", l[1], 200)
        assert.same({ "ok", true, "3" }, { a.rc, a.created, a.revision })
        a = codec.decode("watch", l[2], 200)
        assert.is_false(a.created)
        assert.equal(1, #a.events)
        assert.same({ false, "/locker/job/b", "v2", "4" },
                    { a.events[1].deleted, a.events[1].key, a.events[1].value, a.events[1].mod_revision })
        a = codec.decode("watch", l[3], 200)
        assert.is_true(a.events[1].deleted)
        assert.equal("5", a.events[1].mod_revision)
        l = lines("watch_compacted.txt")
        a = codec.decode("watch", l[2], 200)
        assert.same({ "ok", true, "5" }, { a.rc, a.canceled, a.compact_revision })
    end)

    it("gives etcd's refusals their code, and says what is malformed", function()
        local a = codec.decode("plain", fixture("put_no_lease.json"), 404)
        assert.same({ "refused", 5 }, { a.rc, a.grpc })
        assert.matches("requested lease not found", a.msg)
        a = codec.decode("range", fixture("range_empty_key.json"), 400)
        assert.same({ "refused", 3 }, { a.rc, a.grpc })
        local bad = {
            { "range", '{"kvs":{"not":"a list"}}', "kvs that are not a list" },
            { "range", '{"kvs":[{"key":"!!"}]}', "a key%-value with a bad field" },
            { "range", '{"header":{"revision":12}}', "not a decimal string" },
            { "txn", '{"succeeded":"yes"}', "not a boolean" },
            { "txn", '{"responses":[1]}', "a response that is not an object" },
            { "txn", '{"responses":[{"response_range":{"kvs":[{"lease":"-1"}]}}]}', "bad field" },
            { "lease", '{"ID":"12x","TTL":"5"}', "not a decimal string" },
            { "watch", '{"result":{"events":{}}}', "events that are not a list" },
            { "watch", '{"result":{"events":[{"kv":{"key":"%%%"}}]}}', "bad field" },
        }
        for _, c in ipairs(bad) do
            a = codec.decode(c[1], c[2], 200)
            assert.equal("malformed", a.rc, c[2])
            assert.matches(c[3], a.msg)
        end
        a = codec.decode("watch", '{"error":{"grpc_code":14,"message":"no leader"},"code":14}', 200)
        assert.equal("refused", a.rc)
        a = codec.decode("watch", "not json", 200)
        assert.equal("refused", a.rc)
    end)
end)

describe("gateway answers", function()
    it("reads a range answer: header revision, kvs decoded, int64 as strings", function()
        local a = codec.answer(cjson.encode {
            header = { cluster_id = "1", revision = "9007199254740993" },
            kvs = { { key = b64 "/l/a/1f", value = b64 "\0\255", create_revision = "5",
                      mod_revision = "6", lease = "7587869062357405192" } },
            count = "1",
        }, 200, { "count" })
        assert.is_true(a.ok)
        assert.equal("9007199254740993", a.revision)
        assert.equal("/l/a/1f", a.kvs[1].key)
        assert.equal("\0\255", a.kvs[1].value)
        assert.equal("5", a.kvs[1].create_revision)
        assert.equal("7587869062357405192", a.kvs[1].lease)
        assert.equal("1", a.ints.count)
    end)

    it("reads omitted zero values as 0 and refuses malformed integers", function()
        local a = codec.answer('{"header":{},"TTL":"-1","ID":"12x","grantedTTL":10}', 200,
                               { "TTL", "ID", "grantedTTL", "missing" })
        assert.is_true(a.ok)
        assert.equal("0", a.revision)
        assert.is_false(a.ints.TTL)
        assert.is_false(a.ints.ID)
        assert.is_false(a.ints.grantedTTL)  -- a JSON number, not the gateway's string
        assert.equal("0", a.ints.missing)
    end)

    it("gives etcd's code and message for its errors (recorded answers)", function()
        local cases = {
            { '{"error":"etcdserver: invalid auth token","message":"etcdserver: invalid auth token","code":16}',
              401, 16, "invalid auth token" },
            { '{"error":"etcdserver: user name is empty","message":"etcdserver: user name is empty","code":3}',
              400, 3, "user name is empty" },
            { '{"error":"etcdserver: permission denied","message":"etcdserver: permission denied","code":7}',
              403, 7, "permission denied" },
            { '{"error":"etcdserver: no leader","code":14}', 503, 14, "no leader" },
        }
        for _, c in ipairs(cases) do
            local a = codec.answer(c[1], c[2])
            assert.is_false(a.ok)
            assert.equal(c[3], a.grpc)
            assert.truthy(a.msg:find(c[4], 1, true), a.msg)
        end
    end)

    it("says what is wrong with an answer that is not etcd's", function()
        local a = codec.answer("<html>502</html>", 502)
        assert.is_false(a.ok)
        assert.equal(-1, a.grpc)
        assert.truthy(a.msg:find("not a JSON object", 1, true), a.msg)
        a = codec.answer("", 200)
        assert.is_false(a.ok)
        assert.truthy(a.msg:find("no body", 1, true), a.msg)
        a = codec.answer('{"kvs":{"not":"a list"}}', 200)
        assert.is_true(a.bad_kvs)
        a = codec.answer('{"kvs":[{"key":"!!"}]}', 200)
        assert.is_true(a.kvs[1].bad)
    end)
end)

describe("the key layout", function()
    it("is etcdctl's: prefix NAME / hex(lease), lowercase, no padding", function()
        local dir = codec.key_dir("/locker/", "job")
        assert.equal("/locker/job/", dir)
        assert.equal("/locker/job/694d86b5bffd4e08", codec.key_contender(dir, "7587869062357405192"))
        assert.equal("/locker/job/7fffffffffffffff", codec.key_contender(dir, "9223372036854775807"))
        assert.equal("/locker/job/1", codec.key_contender(dir, "1"))
    end)

    it("finds the name a key belongs to, and none for the probe", function()
        assert.equal("job", codec.key_name("/locker/job/1f", #"/locker/"))
        assert.equal("a\0b", codec.key_name("/p/a\0b/1f", 3))
        assert.is_nil(codec.key_name(codec.key_probe("/locker/"), #"/locker/"))
        assert.is_nil(codec.key_name("/locker/", #"/locker/"))
        assert.is_nil(codec.key_name("/locker/noslash", #"/locker/"))
    end)
end)

describe("what a TLS failure means", function()
    -- libcurl's codes and messages, as seen against etcd
    local CURLE_SSL_CONNECT_ERROR, CURLE_SEND_ERROR, CURLE_RECV_ERROR = 35, 55, 56
    local CURLE_PEER_FAILED_VERIFICATION, CURLE_COULDNT_CONNECT = 60, 7

    it("names an unknown CA and a host name mismatch", function()
        local kind, msg = codec.tls_failure(CURLE_PEER_FAILED_VERIFICATION,
            "SSL certificate problem: unable to get local issuer certificate", false, false, true)
        assert.equal("failed", kind)
        assert.truthy(msg:find("not signed by a trusted CA", 1, true), msg)
        kind, msg = codec.tls_failure(CURLE_PEER_FAILED_VERIFICATION,
            "SSL: no alternative certificate subject name matches target host name 'x'", false, false, true)
        assert.equal("failed", kind)
        assert.truthy(msg:find("not for that host name", 1, true), msg)
    end)

    it("tells a missing client certificate from a refused one", function()
        local alert = "OpenSSL SSL_read: error:0A000412:SSL routines::sslv3 alert bad certificate"
        local kind, msg = codec.tls_failure(CURLE_RECV_ERROR, alert, true, false, false)
        assert.equal("failed", kind)
        assert.truthy(msg:find("requires a client certificate", 1, true), msg)
        kind, msg = codec.tls_failure(CURLE_SSL_CONNECT_ERROR, alert, false, true, true)
        assert.equal("failed", kind)
        assert.truthy(msg:find("refused the client certificate", 1, true), msg)
    end)

    it("is unsure of a connection ended right after a TLS 1.3 handshake, once", function()
        local gone = "getpeername() failed with errno 107: Transport endpoint is not connected"
        assert.equal("unsure", (codec.tls_failure(CURLE_SEND_ERROR, gone, true, false, true)))
        -- capped at TLS 1.2 already, or no handshake: a transport fault
        assert.equal("none", (codec.tls_failure(CURLE_SEND_ERROR, gone, true, true, true)))
        assert.equal("none", (codec.tls_failure(CURLE_SEND_ERROR, gone, false, false, true)))
    end)

    it("leaves transport faults to failover", function()
        assert.equal("none", (codec.tls_failure(CURLE_COULDNT_CONNECT, "Connection refused", false, false, false)))
        assert.equal("none", (codec.tls_failure(CURLE_SSL_CONNECT_ERROR,
            "OpenSSL SSL_connect: Connection reset by peer", false, false, false)))
    end)
end)

describe("the error vocabulary", function()
    local locker = require "locker"
    local known = {}
    for _, name in ipairs(locker.errors) do known[name] = true end

    it("comes from the engine's one table", function()
        for _, name in ipairs { "timeout", "locked", "unavailable", "lease_lost", "lost",
                                "not_owner", "canceled", "closed", "etcd", "protocol",
                                "tls", "auth", "nomem", "pending", "not_watched", "internal",
                                "limit" } do
            assert.is_true(known[name], name)
        end
        assert.equal(17, #locker.errors)
    end)

    it("is the only one the Lua modules return, and the README lists it all", function()
        for _, file in ipairs { "lua/locker/init.lua", "lua/locker/ngx.lua", "lua/locker/health.lua" } do
            local f = assert(io.open(file))
            local text = f:read("*a")
            f:close()
            -- `return nil, <msg>, "code"` and `return nil, nil, <msg>, "code"`
            for code in text:gmatch('return nil,[^\n]-,%s*"([%w_]+)"%s*\n') do
                assert.is_true(known[code], file .. " returns the unknown code " .. code)
            end
        end
        local f = assert(io.open("README.md"))
        local readme = f:read("*a")
        f:close()
        for _, name in ipairs(locker.errors) do
            assert.truthy(readme:find("`" .. name .. "`", 1, true), "README does not list " .. name)
        end
    end)
end)

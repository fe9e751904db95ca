-- locker.peers: addresses of records and how a peer is picked (pure Lua,
-- no etcd: the nginx upstream spec runs it against a real nginx).
local peers = require "locker.peers"

local function view_of(list)
    local v = peers.view(0)
    for name, value in pairs(list) do assert(v:put(name, value, 1)) end
    v:rebuild()
    return v
end

-- n picks: counts by address.
local function tally(pick, n)
    local got = {}
    for _ = 1, n do
        local p = assert(pick())
        got[p.addr] = (got[p.addr] or 0) + 1
    end
    return got
end

describe("locker.peers", function()
    describe("parse", function()
        it("reads HOST:PORT and an optional weight, IPv4 and bracketed IPv6", function()
            assert.same({ host = "10.0.0.1", port = 8080, weight = 1, addr = "10.0.0.1:8080" },
                        peers.parse("10.0.0.1:8080"))
            assert.same({ host = "[::1]", port = 80, weight = 5, addr = "[::1]:80" },
                        peers.parse(" [::1]:80  weight=5 "))
            assert.equal(100, peers.parse("127.0.0.1:1 weight=100").weight)
        end)

        it("refuses what is not an address, saying what is wrong", function()
            local cases = {
                { "", "empty" },
                { "localhost:80", "not an IP address" },
                { "10.0.0.1", "not HOST:PORT" },
                { "10.0.0.256:80", "not an IP address" },
                { "10.0.0.1:0", "port 0 is out of range" },
                { "10.0.0.1:70000", "out of range" },
                { "10.0.0.1:80 weight=0", "weight 0 is out of range" },
                { "10.0.0.1:80 weight=101", "out of range" },
                { "10.0.0.1:80 w=3", "only weight=N may" },
                { "[zz::1]:80", "not an IPv6 address" },
                { "::1:80", "not HOST:PORT" },
            }
            for _, c in ipairs(cases) do
                local p, err = peers.parse(c[1])
                assert.is_nil(p, c[1])
                assert.matches(c[2], err, 1, true)
            end
            assert.matches("not a string", select(2, peers.parse(nil)))
        end)
    end)

    describe("round robin", function()
        it("goes round every peer in turn", function()
            local v = view_of({ a = "10.0.0.1:80", b = "10.0.0.2:80", c = "10.0.0.3:80" })
            local got = tally(function() return v.set:round() end, 300)
            assert.same({ ["10.0.0.1:80"] = 100, ["10.0.0.2:80"] = 100, ["10.0.0.3:80"] = 100 }, got)
        end)

        it("gives each peer its weight's share, spread out (smooth)", function()
            local v = view_of({ a = "10.0.0.1:80 weight=5", b = "10.0.0.2:80 weight=1",
                                c = "10.0.0.3:80 weight=1" })
            -- nginx's smooth order for 5, 1, 1: a a b a c a a (not a a a a a b c)
            for _ = 1, 3 do
                local seq = {}
                for i = 1, 7 do seq[i] = v.set:round().addr:match("%.(%d):") end
                assert.same({ "1", "1", "2", "1", "3", "1", "1" }, seq)
            end
        end)

        it("skips a peer from the moment its record goes, before the rebuild", function()
            local v = view_of({ a = "10.0.0.1:80", b = "10.0.0.2:80" })
            v:drop("a")
            for _ = 1, 10 do assert.equal("10.0.0.2:80", v.set:round().addr) end
            assert.is_true(v.dirty)
            v:rebuild()
            assert.equal(1, v.set.n)
            v:drop("b")
            assert.is_nil(v.set:round())
        end)

        it("skips peers the request tried, and says when none is left", function()
            local v = view_of({ a = "10.0.0.1:80", b = "10.0.0.2:80", c = "10.0.0.3:80" })
            local st = { n = 0 }
            local seen = {}
            for _ = 1, 3 do
                local p = assert(v.set:round(st))
                assert.is_nil(seen[p.addr])
                seen[p.addr] = true
                st.n = st.n + 1
                st[st.n] = p.addr
            end
            assert.is_nil(v.set:round(st))
        end)

        it("picks without allocating", function()
            local list = {}
            for i = 1, 100 do list["r" .. i] = ("10.0.%d.%d:80"):format(math.floor(i / 256), i % 256) end
            local v = view_of(list)
            local st = { n = 1, "10.0.0.7:80" }
            local ks = {}
            for i = 1, 7 do ks[i] = "192.0.2." .. i end
            local function picks()
                for i = 1, 10000 do
                    v.set:round(st)
                    v.set:by_hash(ks[i % 7 + 1], st)
                end
            end
            picks()  -- the first hash pick builds the ring; LuaJIT compiles the loop
            collectgarbage("collect")
            collectgarbage("stop")
            local before = collectgarbage("count")
            picks()
            local grew = collectgarbage("count") - before
            collectgarbage("restart")
            assert.is_true(grew < 4, ("picks allocated %.1f KiB"):format(grew))
        end)
    end)

    describe("consistent hash", function()
        local function keys(n)
            local out = {}
            for i = 1, n do out[i] = ("198.51.%d.%d"):format(math.floor(i / 256), i % 256) end
            return out
        end

        it("sends a key to the same peer in every view built from the same records", function()
            local recs = { a = "10.0.0.1:80", b = "10.0.0.2:80", c = "10.0.0.3:80", d = "10.0.0.4:80" }
            local v1, v2 = view_of(recs), view_of(recs)
            for _, k in ipairs(keys(500)) do
                assert.equal(v1.set:by_hash(k).addr, v2.set:by_hash(k).addr)
            end
        end)

        it("spreads keys by weight, and moves only the keys of a peer that goes", function()
            local recs = {}
            for i = 1, 10 do recs["r" .. i] = "10.0.0." .. i .. ":80" end
            recs.r10 = "10.0.0.10:80 weight=3"
            local v = view_of(recs)
            local ks = keys(24000)
            local before, count = {}, {}
            for i, k in ipairs(ks) do
                local a = v.set:by_hash(k).addr
                before[i] = a
                count[a] = (count[a] or 0) + 1
            end
            -- 12 units of weight: 2000 keys a unit
            for addr, n in pairs(count) do
                local want = addr == "10.0.0.10:80" and 6000 or 2000
                assert.is_true(math.abs(n - want) < want * 0.35,
                               ("%s got %d keys, its share is %d"):format(addr, n, want))
            end
            v:drop("r3")
            v:rebuild()
            local moved = 0
            for i, k in ipairs(ks) do
                local a = v.set:by_hash(k).addr
                assert.are_not.equal("10.0.0.3:80", a)
                if a ~= before[i] then
                    moved = moved + 1
                    assert.equal("10.0.0.3:80", before[i], "a key of a peer that stayed moved")
                end
            end
            assert.equal(count["10.0.0.3:80"], moved)
        end)

        it("goes on round the ring past gone and tried peers", function()
            local v = view_of({ a = "10.0.0.1:80", b = "10.0.0.2:80" })
            local first = v.set:by_hash("k").addr
            local st = { n = 1, first }
            local second = v.set:by_hash("k", st).addr
            assert.are_not.equal(first, second)
            st.n, st[2] = 2, second
            assert.is_nil(v.set:by_hash("k", st))
        end)
    end)

    describe("views", function()
        it("skips a malformed value and keeps why, and a good value puts the record back", function()
            local v = peers.view(0)
            assert(v:put("a", "10.0.0.1:80", 5))
            v:rebuild()
            local p, err = v:put("a", "nonsense", 6)
            assert.is_nil(p)
            assert.matches("not HOST:PORT", err)
            assert.same({ value = "nonsense", err = err }, v.bad.a)
            assert.is_nil(v.set:round())  -- gone at once
            v:rebuild()
            assert.equal(0, v.set.n)
            assert(v:put("a", "10.0.0.1:81", 7))
            assert.is_nil(v.bad.a)
            v:rebuild()
            assert.equal("10.0.0.1:81", v.set:round().addr)
        end)

        it("keeps the set's entry when a record's owner changes but not its address", function()
            local v = peers.view(0)
            assert(v:put("a", "10.0.0.1:80", 5))
            v:rebuild()
            local p = assert(v:put("a", "10.0.0.1:80", 9))
            assert.is_false(v.dirty)
            assert.equal(9, p.token)
            assert.equal(p, v.set:round())
        end)

        it("builds a fixed set of fallback addresses, refusing a bad one", function()
            local set = assert(peers.fixed({ "127.0.0.1:8080", "127.0.0.1:8081" }))
            assert.equal(2, set.n)
            local s2, err = peers.fixed({ "127.0.0.1:8080", "nowhere" })
            assert.is_nil(s2)
            assert.matches("address 2 %(nowhere%)", err)
        end)

        it("hashes the same on every Lua (the ring is the same in every worker)", function()
            -- figures computed once; a Lua whose arithmetic differs fails here
            assert.equal(peers.hash("10.0.0.1:80#1"), peers.hash("10.0.0.1:80#1"))
            assert.equal(2970241606, peers.hash(""))
            assert.equal(593353137, peers.hash("198.51.100.7"))
        end)
    end)
end)

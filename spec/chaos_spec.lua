-- Mutual exclusion under chaos: tools/chaos.lua runs contenders against a
-- 3-member etcd cluster while it stops and kills contenders and kills etcd
-- members (the leader too), deletes holders' keys as an outsider would, and
-- with $LOCKER_FAULTPROXY partitions them and mutes their watch streams,
-- then checks the fence log and the contenders' owned() samples, and
-- replays etcd's history against the guarded writes and the reports of a
-- watch_all observer. Runs: a lock, an election, a semaphore.
-- LOCKER_CHAOS_SECONDS (60) sets how long it runs.
local helper = require "helper"

local SECONDS = tonumber(os.getenv("LOCKER_CHAOS_SECONDS") or "60")

-- Runs tools/chaos.lua for seconds with extra arguments; returns its
-- output, its exit code and figure(name): a number of its summary line.
-- Asserts what every run must show: a summary, no violation, no crash.
local function chaos(seconds, extra)
    -- a sanitizer runtime preloaded into the spec's interpreter stays for
    -- the Lua processes (chaos.lua strips it for etcd and curl), but not
    -- for the timeout command around them
    local preload = os.getenv("LD_PRELOAD")
    local cmd = ("env -u LD_PRELOAD timeout -s INT -k 10 %d env %s %s tools/chaos.lua --seconds %d %s")
        :format(seconds + 60, preload and ("LD_PRELOAD=" .. helper.quote(preload)) or "",
                helper.lua, seconds, extra or "")
    local p = assert(io.popen(cmd .. " 2>&1; echo \"__rc=$?\""))
    local out = p:read("*a")
    p:close()
    local code = tonumber(out:match("__rc=(%d+)%s*$"))
    local summary = out:match("chaos: acquisitions=[^\n]*")
    assert.is_truthy(summary, out)
    local function figure(name) return tonumber(summary:match(name .. "=(%d+)")) end
    assert.not_matches("VIOLATION", out)
    assert.equal(0, figure("violations"), out)
    assert.equal(0, figure("crashes"), out)
    assert.is_true(figure("acquisitions") >= math.max(5, math.floor(seconds / 6)), out)
    -- etcd's own history was read and replayed: holders made guarded
    -- writes (every one from an owner), and the watch_all observer's
    -- reports (every one etcd's owner at its revision) ended in "nobody"
    assert.matches("history=ok", summary, 1, true)
    assert.is_true(figure("guarded") >= 1, out)
    assert.is_true(figure("reports") >= 1, out)
    assert.matches("observer saw the name free at the end%s+1", out)
    return out, code, figure
end

describe("mutual exclusion under chaos", function()
    it("never lets two holders own the lock at once", function()
        local out, code, figure = chaos(SECONDS)
        assert.is_true(figure("faults") >= math.max(1, math.floor(SECONDS / 20)), out)
        assert.is_true(figure("accepted") > 0, out)
        -- the run deleted a holder's key as an outsider would, and checked
        -- that its holder stopped owning within its bound
        assert.is_true(figure("deletes") >= 1, out)
        assert.is_true(figure("worst_delay_ms") <= figure("bound_ms"), out)
        assert.equal(0, code, out)
    end)

    it("never lets two leaders lead an election at once, proclaims included", function()
        local out, code = chaos(math.floor(SECONDS / 2), "--election")
        assert.matches("campaigning", out, 1, true)
        assert.equal(0, code, out)
    end)

    it("never lets two holders own the lock at once with lock-delay on", function()
        -- every contender's client delays a takeover after an unclean end
        local out, code = chaos(math.floor(SECONDS / 3), "--lock-delay 1")
        assert.matches("lock_delay=1", out, 1, true)
        assert.equal(0, code, out)
    end)

    it("never lets more than N holders own a semaphore of N at once", function()
        local out, code, figure = chaos(math.floor(SECONDS * 3 / 4), "--limit 2")
        assert.equal(2, figure("limit"), out)
        -- the run had two owners at once (a semaphore, not a lock), never three
        assert.equal(2, figure("most_owners"), out)
        assert.equal(0, code, out)
    end)
end)

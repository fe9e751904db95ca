-- Mutual exclusion under chaos: tools/chaos.lua runs contenders against a
-- 3-member etcd cluster while it stops and kills contenders and kills etcd
-- members (the leader too), and with $LOCKER_FAULTPROXY partitions them,
-- then checks the fence log and the contenders' owned() samples.
-- LOCKER_CHAOS_SECONDS (60) sets how long it runs.
local helper = require "helper"

describe("mutual exclusion under chaos", function()
    it("never lets two holders own the lock at once", function()
        local seconds = tonumber(os.getenv("LOCKER_CHAOS_SECONDS") or "60")
        -- a sanitizer runtime preloaded into the spec's interpreter stays
        -- for the Lua processes (chaos.lua strips it for etcd and curl), but
        -- not for the timeout command around them
        local preload = os.getenv("LD_PRELOAD")
        local cmd = ("env -u LD_PRELOAD timeout -s INT -k 10 %d env %s %s tools/chaos.lua --seconds %d")
            :format(seconds + 60, preload and ("LD_PRELOAD=" .. helper.quote(preload)) or "",
                    helper.lua, seconds)
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
        assert.is_true(figure("faults") >= math.max(1, math.floor(seconds / 20)), out)
        assert.is_true(figure("accepted") > 0, out)
        assert.equal(0, code, out)
    end)
end)

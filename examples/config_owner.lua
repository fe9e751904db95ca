-- Only the owner writes the config: two writers contend for "config-writer"
-- and each writes /config/app through its lock (lock:put: one etcd txn that
-- runs only while the writer's lock key still exists with its token). An
-- outsider deletes the first writer's key; its next write is refused:
-- locally once the watch stream showed the delete, else by etcd's compare
-- in the txn, never written. Run: tools/with-etcd lua5.4 examples/config_owner.lua
local locker = require "locker"

local endpoints = { os.getenv("LOCKER_ENDPOINTS") or "http://127.0.0.1:2379" }
local a = assert(locker.new{ endpoints = endpoints, prefix = "/example-locks/" })
local b = assert(locker.new{ endpoints = endpoints, prefix = "/example-locks/" })

local la = assert(a:lock("config-writer", "a"))
assert(la:put("/config/app", "version=1 (written by a)"))
print("a: wrote " .. a:read("/config/app"))

locker.spawn(function()  -- b waits for its turn, then writes
    local lb = assert(b:lock("config-writer", "b"))
    assert(lb:put("/config/app", "version=2 (written by b)"))
    print("b: owns now (token " .. lb:token() .. "), wrote " .. b:read("/config/app"))
    lb:release()
end)

-- someone removes a's key behind its back (as etcdctl del would)
locker.sleep(0.2)
local key = la:key()
local ok = os.execute(("ETCDCTL_API=3 etcdctl --endpoints=%s del %s >/dev/null")
    :format(endpoints[1], key))
print("outsider: deleted a's key " .. key .. (ok and "" or " (etcdctl failed)"))
local written, msg, code = la:put("/config/app", "version=1.1 (a, late)")
print(("a: late write -> %s (%s: %s)"):format(tostring(written), tostring(code), tostring(msg)))
assert(not written and code == "not_owner")

locker.sleep(0.5)
print("config now: " .. a:read("/config/app"))
a:close(); b:close()

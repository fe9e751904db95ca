-- The name-server story: a registrar holds hostname -> address records,
-- a resolver reads them and follows their changes, and a standby takes
-- over when the registrar lets go. Run: tools/with-etcd lua5.4 examples/name_server.lua
local locker = require "locker"

local endpoints = { os.getenv("LOCKER_ENDPOINTS") or "http://127.0.0.1:2379" }
local registrar = assert(locker.new{ endpoints = endpoints })
local standby = assert(locker.new{ endpoints = endpoints })
local resolver = assert(locker.new{ endpoints = endpoints })

-- The resolver follows www.example.com; cached() answers without I/O.
resolver:watch("www.example.com", function(ip, ev)
    print(("resolver: www.example.com -> %s%s"):format(tostring(ip),
        ip and (" (token " .. ev.token .. ")") or " (nobody)"))
end)

local record = assert(registrar:lock("www.example.com", "10.1.1.1"))
print("registrar: holds www.example.com = 10.1.1.1, token " .. record:token())
print("resolver: get() says " .. resolver:get("www.example.com"))

locker.spawn(function()  -- the standby queues for the name
    local mine = assert(standby:lock("www.example.com", "10.2.2.2"))
    print("standby: took over with token " .. mine:token())
    locker.sleep(0.2)
    mine:release()
end)

locker.sleep(0.2)
assert(record:set("10.1.1.2"))          -- the registrar moves the service
print("registrar: moved to 10.1.1.2; cached: " .. resolver:cached("www.example.com"))
locker.sleep(0.2)
record:release()                       -- the standby takes over
locker.run()
locker.sleep(0.2)
registrar:close(); standby:close(); resolver:close()

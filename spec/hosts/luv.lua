-- spec/hosts/luv.lua [error]: the embed scenario inside libuv's loop.
local uv = require "luv"
local locker = require "locker"
local adapter = require "locker.luv"
local scenario = require "hosts.scenario"

adapter.use()
scenario.run({
    adapter = adapter,
    spawn = locker.spawn,
    ticker = function(fn)
        local t = uv.new_timer()
        t:start(10, 10, fn)
        return function() t:stop() t:close() end
    end,
    -- uv.run() returns once no handle is left: the clients' polls, the
    -- ticker and locker's timers all gone is what ends it
    run = function() uv.run() end,
}, arg[1])

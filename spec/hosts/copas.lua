-- spec/hosts/copas.lua [error]: the embed scenario inside Copas.
local copas = require "copas"
local socket = require "socket"
local adapter = require "locker.copas"
local scenario = require "hosts.scenario"

adapter.use()
local tick
scenario.run({
    adapter = adapter,
    spawn = function(fn) copas.addthread(fn) end,
    -- Copas 1.x has no timers: the host's 10 ms tick is its loop's own
    ticker = function(fn)
        tick = fn
        return function() tick = nil end
    end,
    run = function(done, seconds)
        local deadline = socket.gettime() + seconds
        local next_tick = socket.gettime() + 0.01
        while not done() and socket.gettime() < deadline do
            adapter.step(math.max(0, next_tick - socket.gettime()))
            local t = socket.gettime()
            if t >= next_tick then
                if tick then tick() end
                next_tick = t + 0.01
            end
        end
    end,
}, arg[1])

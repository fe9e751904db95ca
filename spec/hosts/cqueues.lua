-- spec/hosts/cqueues.lua [error]: the embed scenario inside a cqueues controller.
local cqueues = require "cqueues"
local adapter = require "locker.cqueues"
local scenario = require "hosts.scenario"

local cq = cqueues.new()
adapter.use(cq)
scenario.run({
    adapter = adapter,
    spawn = function(fn) cq:wrap(fn) end,
    ticker = function(fn)
        local on = true
        cq:wrap(function()
            while on do
                cqueues.sleep(0.01)
                if on then fn() end
            end
        end)
        return function() on = false end
    end,
    -- cq:loop() returns once no coroutine of cq is left, or with an error
    run = function()
        local ok, err = cq:loop()
        io.stdout:write("loop_ok=", tostring(ok), "\n")
        if not ok then io.stdout:write("loop_error=", tostring(err), "\n") end
        io.stdout:write("coroutines_left=", cq:count(), "\n")
    end,
}, arg[1])

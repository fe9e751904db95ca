-- Service b needs c. Its record goes when c's does (a cascading blackout)
-- and comes back by itself when c returns.
record "b" {
    value = "b.internal:7000",
    requires = { "c" },
}

watch "c" {
    -- down also comes first when c was not up to begin with
    down = function() print("b: c is down, b does not advertise itself") end,
    up = function(addr) print("b: c is at " .. addr) end,
}

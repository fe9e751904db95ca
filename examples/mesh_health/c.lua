-- Service c: depends on nothing. It holds its health record while its
-- check passes (here: always; a real one would probe the service).
record "c" {
    value = "c.internal:7000",
    check = function() return true end,
    every = 1,
}

-- Service a needs b (and so, through b, c).
record "a" {
    value = function() return "a.internal:7000" end,
    requires = { "b" },
}

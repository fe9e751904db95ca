-- Health config run inside nginx (worker 0): this edge's "web" record is
-- held while "db" is up; a check that could probe a local port with a
-- cosocket runs every 2 s.
record "web" {
    value = "edge web",
    requires = { "db" },
    hold_down = 0,
    every = 2,
    check = function()
        return true
    end,
}

watch "db" {
    down = function() ngx.log(ngx.WARN, "health: db is down") end,
    up = function(value) ngx.log(ngx.NOTICE, "health: db is up at ", value) end,
}

-- The health DSL's parser: valid configs, and mistakes that name the file,
-- the line and the field (never a Lua stack trace).
local health = require "locker.health"

local function parse(src)
    return health.parse(src, "@mesh/b.lua")
end

describe("health.parse()", function()
    it("reads records, requirements, policies and watches", function()
        local spec = assert(parse([[
record "b" {
    value = "b:1",
    requires = { "c", "d", "e" },
    drop_when = 2,
    hold_down = 1.5,
    hold_up = 0.5,
    every = 2,
    check = function() return true end,
}
record "x" { value = function() return "x" end }
watch "c" {
    up = function(v) end,
    down = function() end,
}
]]))
        local b = spec.records.b
        assert.same({ "c", "d", "e" }, b.requires)
        assert.equal(2, b.drop_at)
        assert.equal(1.5, b.hold_down)
        assert.equal(0.5, b.hold_up)
        assert.equal(2, b.every)
        assert.equal("mesh/b.lua:1", b.pos)
        assert.is_function(spec.records.x.value)
        assert.equal(0, #spec.records.x.requires)
        assert.same({ "b", "x" }, spec.order)
        assert.is_function(spec.watches.c.handlers[1].up)
    end)

    it("maps drop_when any / all to 1 and n", function()
        local spec = assert(parse([[
record "a" { requires = { "p", "q", "r" } }
record "b" { requires = { "p", "q", "r" }, drop_when = "all" }
]]))
        assert.equal(1, spec.records.a.drop_at)
        assert.equal(3, spec.records.b.drop_at)
    end)

    local function fails(src, pattern)
        local spec, err = parse(src)
        assert.is_nil(spec)
        assert.matches(pattern, err)
        assert.not_matches("stack traceback", err)
        assert.not_matches("health%.lua", err)
        return err
    end

    it("names an unknown field with file and line", function()
        fails('\n\nrecord "b" {\n  requries = { "c" },\n}\n', "^mesh/b%.lua:3: record 'b': unknown field 'requries'$")
    end)

    it("names a field of the wrong type", function()
        fails('record "b" { every = "2" }', "^mesh/b%.lua:1: record 'b': field 'every' must be number %(got string%)$")
        fails('record "b" { check = true }', "field 'check' must be function")
        fails('watch "c" { up = 1 }', "^mesh/b%.lua:1: watch 'c': field 'up' must be function")
    end)

    it("refuses a record or watch without a name", function()
        fails('record { value = "x" }', "^mesh/b%.lua:1: record needs a name")
        fails('watch { up = print }', "^mesh/b%.lua:1: watch needs a name")
    end)

    it("refuses names that are not lock names", function()
        fails('record "a/b" {}', "record 'a/b': a name is")
        fails('record "b" { requires = { "" } }', "requires%[1%]")
    end)

    it("refuses a bad drop_when", function()
        fails('record "b" { requires = { "c" }, drop_when = 2 }', "field 'drop_when' must be")
        fails('record "b" { requires = { "c" }, drop_when = "most" }', "field 'drop_when' must be")
    end)

    it("refuses a group member whose value is not an address", function()
        fails('record "b1" { group = "web", value = "localhost:80" }',
              "^mesh/b%.lua:1: record 'b1' of group 'web': field 'value' must be an address")
        fails('record "b1" { group = "web" }', "must be an address")
        fails('record "b1" { group = "a/b", value = "10.0.0.1:80" }', "group")
        assert(parse('record "b1" { group = "web", value = "10.0.0.1:80 weight=3" }'))
    end)

    it("refuses a record declared twice", function()
        fails('record "b" {}\nrecord "b" {}', "^mesh/b%.lua:2: record 'b' is declared twice %(first at mesh/b%.lua:1%)")
    end)

    it("refuses a cycle among requirements, naming it", function()
        fails([[
record "a" { requires = { "b" } }
record "b" { requires = { "c" } }
record "c" { requires = { "a" } }
]], "^mesh/b%.lua:1: cycle among requirements: a %-> b %-> c %-> a$")
        fails('record "s" { requires = { "s" } }', "cycle among requirements: s %-> s")
    end)

    it("accepts requirements on records declared elsewhere (no cycle)", function()
        assert(parse('record "a" { requires = { "b" } }\nrecord "b" { requires = { "z" } }'))
    end)

    it("reports syntax and runtime errors with position, no traceback", function()
        fails('record "b" {', "^mesh/b%.lua:1:")
        fails('local x = nil\nx.y = 1', "^mesh/b%.lua:2:")
    end)

    it("loads a file and says when it cannot", function()
        local spec, err = health.load("no/such/file.lua")
        assert.is_nil(spec)
        assert.matches("no/such/file.lua", err)
        assert(health.load("examples/mesh_health/b.lua"))
    end)
end)

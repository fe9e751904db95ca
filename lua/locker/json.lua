--- JSON text for what locker prints (`locker status --json`). Tokens,
-- revisions and lease IDs are int64: json.int() writes one as its exact
-- digits, a JSON number, where lua-cjson writes 10^14 and beyond with an
-- exponent and loses digits (and LuaJIT cannot hold them in a number).
local json = {}

local INT, ARRAY = {}, {}

--- An int64 as a JSON number: digits, a string of them (as the core gives
-- past 2^53 on Lua 5.1/LuaJIT) or a Lua integer.
function json.int(digits)
    local s = type(digits) == "string" and digits
              or (math.type and math.type(digits) == "integer" and tostring(digits))
              or ("%.0f"):format(digits)
    if not s:match("^%-?%d+$") then error("json.int: not an integer: " .. s, 2) end
    return setmetatable({ s }, INT)
end

--- t written as an array even when empty.
function json.array(t)
    return setmetatable(t or {}, ARRAY)
end

local escapes = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
                  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function string_text(s)
    return '"' .. s:gsub('[%c"\\]', function(c)
        return escapes[c] or ("\\u%04x"):format(c:byte())
    end) .. '"'
end

local function encode(v, out)
    local t = type(v)
    if v == nil then
        out[#out + 1] = "null"
    elseif t == "boolean" then
        out[#out + 1] = tostring(v)
    elseif t == "number" then
        if v ~= v or v == math.huge or v == -math.huge then error("json: cannot write " .. tostring(v)) end
        out[#out + 1] = (v == math.floor(v) and math.abs(v) < 2 ^ 53) and ("%.0f"):format(v)
                        or ("%.17g"):format(v)
    elseif t == "string" then
        out[#out + 1] = string_text(v)
    elseif t == "table" and getmetatable(v) == INT then
        out[#out + 1] = v[1]
    elseif t == "table" and (v[1] ~= nil or getmetatable(v) == ARRAY) then
        out[#out + 1] = "["
        for i = 1, #v do
            if i > 1 then out[#out + 1] = "," end
            encode(v[i], out)
        end
        out[#out + 1] = "]"
    elseif t == "table" then
        local keys = {}
        for k in pairs(v) do
            if type(k) ~= "string" then error("json: object key " .. tostring(k) .. " is not a string") end
            keys[#keys + 1] = k
        end
        table.sort(keys)  -- a stable output, for diffs and tests
        out[#out + 1] = "{"
        for i, k in ipairs(keys) do
            if i > 1 then out[#out + 1] = "," end
            out[#out + 1] = string_text(k) .. ":"
            encode(v[k], out)
        end
        out[#out + 1] = "}"
    else
        error("json: cannot write a " .. t)
    end
end

--- The JSON text of v (tables, strings, numbers, booleans, json.int()).
function json.encode(v)
    local out = {}
    encode(v, out)
    return table.concat(out)
end

return json

--- locker.peers: the addresses of a group of records, and how to pick one
-- of them (round robin, weighted, consistent hash) with no I/O and no
-- allocation on a pick. Pure Lua (5.1 to 5.4, LuaJIT): locker.ngx's
-- upstreams pick with it in balancer_by_lua, the CLI checks an address
-- with it before it registers one.
--
-- A record's value is an address: "HOST:PORT", optionally followed by
-- " weight=N" (N from 1 to MAX_WEIGHT, default 1). HOST is an IPv4 address
-- or an IPv6 address in brackets ("[::1]:8080"): nginx's balancer connects
-- to addresses, it does not resolve names.
local type, tonumber, floor, sort = type, tonumber, math.floor, table.sort
local byte = string.byte

local peers = { MAX_WEIGHT = 100 }

local POINTS = 160          -- points on the hash ring per unit of weight
local MAX_POINTS = 16384   -- the ring's size at most (weights are scaled)
local MAX_SCHEDULE = 4096  -- a weighted round's length at most

local function ipv4(host)
    local a, b, c, d = host:match("^(%d%d?%d?)%.(%d%d?%d?)%.(%d%d?%d?)%.(%d%d?%d?)$")
    return a and tonumber(a) < 256 and tonumber(b) < 256 and tonumber(c) < 256
        and tonumber(d) < 256
end

local function ipv6(host)  -- the shape of one; nginx parses it for good
    return #host >= 2 and #host <= 45 and host:find(":", 1, true) and not host:find("[^%x:.]")
        and not host:find(":::", 1, true)
end

--- Parses an address value: a peer { host =, port =, weight =, addr = },
-- or nil and what is wrong with it.
function peers.parse(value)
    if type(value) ~= "string" then return nil, "the value is not a string" end
    local addr, rest = value:match("^%s*(%S+)%s*(.-)%s*$")
    if not addr then return nil, "the value is empty (expected HOST:PORT)" end
    local weight = 1
    if rest ~= "" then
        local w = rest:match("^weight=(%d+)$")
        weight = tonumber(w)
        if not weight then
            return nil, ("%q follows the address: only weight=N may"):format(rest)
        end
        if weight < 1 or weight > peers.MAX_WEIGHT then
            return nil, ("weight %s is out of range (1 to %d)"):format(w, peers.MAX_WEIGHT)
        end
    end
    local host, port = addr:match("^%[([^%]]*)%]:(%d+)$")
    if host then
        if not ipv6(host) then return nil, ("[%s] is not an IPv6 address"):format(host) end
        host = "[" .. host .. "]"
    else
        host, port = addr:match("^([^:]+):(%d+)$")
        if not host then
            return nil, ("%q is not HOST:PORT (an IPv6 address goes in brackets)"):format(addr)
        end
        if not ipv4(host) then
            return nil, ("%q is not an IP address (nginx's balancer connects to addresses, "
                         .. "it does not resolve names)"):format(host)
        end
    end
    port = tonumber(port)
    if port < 1 or port > 65535 then return nil, ("port %d is out of range"):format(port) end
    return { host = host, port = port, weight = weight, addr = host .. ":" .. port }
end

-- A hash of a string to [0, P): a polynomial over its bytes, then two
-- quadratic rounds so that near strings ("a#1", "a#2") land far apart. All
-- products stay below 2^53, so every Lua computes the same numbers (a ring
-- is the same in every worker and every nginx).
local P = 4294967291  -- the largest prime below 2^32

local function mulmod(x, y)
    local hi, lo = floor(y / 65536), y % 65536
    return ((x * hi) % P * 65536 + x * lo) % P
end

local function hash(s)
    local h = 5381
    for i = 1, #s do h = (h * 1000003 + byte(s, i) + 1) % P end
    h = mulmod(h + 40503, h + 2654435)
    return mulmod(h + 977, h + 69069)
end
peers.hash = hash

-- ------------------------------------------------------------------ sets --
-- A set: the peers of one moment, sorted by record name (so that every
-- worker builds the same), with its round-robin schedule and hash ring.
-- Built off the request path; picked from on it.

local Set = {}
Set.__index = Set

local ring  -- (below) builds a set's hash ring

local function tried(st, addr)
    if st then
        for i = 1, st.n do if st[i] == addr then return true end end
    end
    return false
end

-- Whether p may be picked: not gone since the set was built (unless the
-- set is a stale one, used as it was), and not tried by this request.
local function usable(self, p, st)
    return (self.stale or not p.gone) and not tried(st, p.addr)
end

--- The next peer in the (weighted) round, skipping gone and tried ones;
-- nil when none is left.
function Set:round(st)
    local n, sched, list = self.nsched, self.sched, self.list
    local c = self.cursor
    for _ = 1, n do
        c = c % n + 1
        local p = list[sched[c]]
        if usable(self, p, st) then
            self.cursor = c
            return p
        end
    end
    self.cursor = c
    return nil
end

--- The peer that key hashes to (the first point at or after its hash,
-- going round), skipping gone and tried ones; nil when none is left.
local function with_ring(self)
    self.points, self.owner = ring(self.list)
    self.npoints = #self.points
end

function Set:by_hash(key, st)
    if not self.points then  -- the first hash pick of this set's view
        with_ring(self)
        if self.view then self.view.hashed = true end
    end
    local pts, n = self.points, self.npoints
    if n == 0 then return nil end
    local h = hash(key)
    local lo, hi = 1, n  -- the first point >= h (n + 1: round to the first)
    if pts[n] < h then
        lo = n + 1
    else
        while lo < hi do
            local mid = floor((lo + hi) / 2)
            if pts[mid] < h then lo = mid + 1 else hi = mid end
        end
    end
    local owner, list = self.owner, self.list
    for k = 0, n - 1 do
        local p = list[owner[(lo + k - 1) % n + 1]]
        if usable(self, p, st) then return p end
    end
    return nil
end

-- nginx's smooth weighted round robin, played for one whole round: every
-- peer comes weight times, spread out. Weights that sum past MAX_SCHEDULE
-- are scaled down first (keeping each at least 1).
local function schedule(list)
    local n, total, equal = #list, 0, true
    for i = 1, n do
        total = total + list[i].weight
        if list[i].weight ~= list[1].weight then equal = false end
    end
    local sched = {}
    if equal then
        for i = 1, n do sched[i] = i end
        return sched, n
    end
    local w = {}
    local scale = total > MAX_SCHEDULE and MAX_SCHEDULE / total or 1
    total = 0
    for i = 1, n do
        w[i] = math.max(1, floor(list[i].weight * scale))
        total = total + w[i]
    end
    local current = {}
    for i = 1, n do current[i] = 0 end
    for k = 1, total do
        local best
        for i = 1, n do
            current[i] = current[i] + w[i]
            if not best or current[i] > current[best] then best = i end
        end
        current[best] = current[best] - total
        sched[k] = best
    end
    return sched, total
end

-- The ring: POINTS points per unit of weight for each peer, at the hashes
-- of its address and the point's number (the same backend lands on the
-- same points, whatever its record is called).
function ring(list)
    local total = 0
    for i = 1, #list do total = total + list[i].weight end
    local per = POINTS
    if total * per > MAX_POINTS then per = math.max(1, floor(MAX_POINTS / total)) end
    local at, points = {}, {}
    for i = 1, #list do
        local p = list[i]
        for j = 1, p.weight * per do
            local h = hash(p.addr .. "#" .. j)
            if not at[h] then  -- a collision keeps the first (the same everywhere)
                at[h] = i
                points[#points + 1] = h
            end
        end
    end
    sort(points)
    local owner = {}
    for k = 1, #points do owner[k] = at[points[k]] end
    return points, owner
end

-- view: the view the set is of (nil: a fixed set); its ring is built with
-- it once the view was picked from by hash (then off the request path),
-- before that at the first hash pick.
local function build(by_name, cursor, view)
    local list = {}
    for _, p in pairs(by_name) do list[#list + 1] = p end
    sort(list, function(a, b) return a.name < b.name end)
    local self = setmetatable({ list = list, n = #list }, Set)
    self.sched, self.nsched = schedule(list)
    self.view = view
    if view and view.hashed then with_ring(self) end
    -- where the round goes on (a worker's own, so workers do not march in
    -- step); within the new round's length
    self.cursor = self.nsched > 0 and (cursor or 0) % self.nsched or 0
    return self
end

--- A set of fixed addresses (a fallback upstream): nil and the first bad
-- one's error when one is malformed.
function peers.fixed(addrs, cursor)
    local by_name = {}
    for i, a in ipairs(addrs) do
        local p, err = peers.parse(a)
        if not p then return nil, ("address %d (%s): %s"):format(i, tostring(a), err) end
        p.name = ("%08d"):format(i)
        by_name[p.name] = p
    end
    return build(by_name, cursor)
end

-- ----------------------------------------------------------------- views --
-- A view: the records of a group as they change, and the set built from
-- them. A record that goes is marked gone at once (a pick skips it from
-- that moment), and the set is rebuilt after (rebuild()).

local View = {}
View.__index = View

function peers.view(cursor)
    local self = setmetatable({ records = {}, bad = {}, dirty = false }, View)
    self.set = build({}, cursor, self)
    return self
end

--- Record NAME now holds VALUE (token: the owner's fencing token). Returns
-- the peer, or nil and why the value was skipped (the record is then out
-- of the group, as if gone).
function View:put(name, value, token)
    local old = self.records[name]
    local p, err = peers.parse(value)
    if old and not (p and old.addr == p.addr and old.weight == p.weight) then
        old.gone = true
    end
    if not p then
        self.records[name], self.bad[name] = nil, { value = value, err = err }
        self.dirty = self.dirty or old ~= nil
        return nil, err
    end
    self.bad[name] = nil
    p.name, p.token = name, token
    if old and not old.gone then  -- the same address: the set's entry stays
        old.token = token
        return old
    end
    self.records[name] = p
    self.dirty = true
    return p
end

--- Record NAME is gone (nobody holds it).
function View:drop(name)
    local old = self.records[name]
    self.bad[name] = nil
    if not old then return end
    old.gone = true
    self.records[name] = nil
    self.dirty = true
end

--- Builds the set anew from the records, when they changed. Returns the
-- new set and the one it replaced (nil when nothing changed).
function View:rebuild()
    if not self.dirty then return self.set end
    self.dirty = false
    local old = self.set
    self.set = build(self.records, old.cursor, self)
    return self.set, old
end

return peers

local meta, ready, pending, md, lock = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local leases, deadlines, counts = KEYS[6], KEYS[7], KEYS[8]

-- Members are an 8-byte big-endian id followed by the payload.
local function idof(m) return (struct.unpack('>I8', m)) end
local function num(v) return tonumber(v) or 0 end
-- Integers as strings without exponent notation.
local function fmt(n) return string.format('%.0f', n) end

-- First 0-based index of list `key` whose id is >= `id`. Ids increase
-- along the list, with gaps, so that index is at most `id - head`.
local function lower_bound(key, id)
  local len = redis.call('LLEN', key)
  if len == 0 then return 0 end
  local head = idof(redis.call('LINDEX', key, 0))
  if id <= head then return 0 end
  if idof(redis.call('LINDEX', key, -1)) < id then return len end
  local lo, hi = 1, math.min(len - 1, id - head)
  -- Dense ids (the common case): the answer is `hi` itself.
  if hi > lo and idof(redis.call('LINDEX', key, hi - 1)) < id then return hi end
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if idof(redis.call('LINDEX', key, mid)) >= id then hi = mid else lo = mid + 1 end
  end
  return lo
end

local function attached() return num(redis.call('HGET', meta, 'attachments')) > 0 end

-- The lock never outlives an unattached queue by more than the queue's ttl.
local function cap_lock(ttl)
  local p = redis.call('PTTL', lock)
  if p == -1 or p > ttl then redis.call('PEXPIRE', lock, ttl) end
end

-- While unattached every key of the queue counts down with the meta hash:
-- a key created now (lists vanish when emptied) gets the remaining ttl.
local function retouch(...)
  if attached() then return end
  local p = redis.call('PTTL', meta)
  if p <= 0 then return end
  for _, k in ipairs({...}) do
    if redis.call('PTTL', k) == -1 then redis.call('PEXPIRE', k, p) end
  end
  cap_lock(p)
end

local function set_lock(owner, lease)
  if lease <= 0 then
    redis.call('DEL', lock)
    return
  end
  redis.call('SET', lock, owner, 'PX', lease)
  if not attached() then
    local p = redis.call('PTTL', meta)
    if p > 0 then cap_lock(p) end
  end
end

local function rpush_all(key, items)
  for i = 1, #items, 1000 do
    redis.call('RPUSH', key, unpack(items, i, math.min(i + 999, #items)))
  end
end

-- Lease mode. The server's clock, so every broker agrees on deadlines.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A lease: attempt (4 bytes), owner length (2 bytes), owner, member.
local function pack_lease(attempt, owner, member)
  return struct.pack('>I4I2', attempt, #owner) .. owner .. member
end
local function unpack_lease(v)
  local attempt, n = struct.unpack('>I4I2', v)
  return attempt, string.sub(v, 7, 6 + n), string.sub(v, 7 + n)
end

-- Inserts `member` into the list `key`, sorted by id, at its id's place.
local function insert_sorted(key, member)
  local i = lower_bound(key, idof(member))
  if i == 0 then
    redis.call('LPUSH', key, member)
  elseif i >= redis.call('LLEN', key) then
    redis.call('RPUSH', key, member)
  else
    redis.call('LINSERT', key, 'BEFORE', redis.call('LINDEX', key, i), member)
  end
end

-- Members on their way to the dead-letter queue, in id order.
local DEAD = {}

-- Puts back a lease already removed from `leases` and `deadlines`: into
-- `ready` at its place, or into DEAD once it used up its deliveries.
-- Returns 1 when requeued, 0 when dead-lettered.
local function put_back(member, attempt)
  local maxd = num(redis.call('HGET', meta, 'max_deliveries'))
  local id = fmt(idof(member))
  if maxd > 0 and attempt >= maxd then
    redis.call('HDEL', counts, id)
    DEAD[#DEAD + 1] = member
    return 0
  end
  redis.call('HSET', counts, id, attempt)
  insert_sorted(ready, member)
  return 1
end

-- Removes the lease on `id`; its attempt, owner and member, or nil.
local function drop_lease(id)
  local v = redis.call('HGET', leases, id)
  if not v then return nil end
  redis.call('HDEL', leases, id)
  redis.call('ZREM', deadlines, id)
  return unpack_lease(v)
end

local function by_number(a, b) return tonumber(a) < tonumber(b) end

-- Puts back every lease that ran out by `now`; how many went to `ready`.
local function reclaim(now)
  local ids = redis.call('ZRANGEBYSCORE', deadlines, '-inf', fmt(now))
  table.sort(ids, by_number)
  local n = 0
  for _, id in ipairs(ids) do
    local attempt, _, member = drop_lease(id)
    if attempt then n = n + put_back(member, attempt) end
  end
  if #ids > 0 then retouch(ready, counts) end
  return n
end

-- Appends DEAD to the dead-letter queue (KEYS[9..16]), creating it
-- unattached with `default_ttl` ms if missing; an unattached one lives its
-- ttl from now. Returns its pttl when unattached, else -1.
local function flush_dead(channel, dlq_name, default_ttl)
  if #DEAD == 0 then return -1 end
  local dmeta, dready = KEYS[9], KEYS[10]
  if redis.call('EXISTS', dmeta) == 0 then
    redis.call('DEL', KEYS[10], KEYS[11], KEYS[12], KEYS[13], KEYS[14], KEYS[15], KEYS[16])
    redis.call('HSET', dmeta, 'next_id', 1, 'attachments', 0, 'ttl_ms', default_ttl,
      'pushed', 0, 'consumed', 0, 'delivered_hi', 0)
  end
  local first = num(redis.call('HGET', dmeta, 'next_id'))
  local items = {}
  for i, m in ipairs(DEAD) do
    items[i] = struct.pack('>I8', first + i - 1) .. string.sub(m, 9)
  end
  rpush_all(dready, items)
  redis.call('HINCRBY', dmeta, 'next_id', #items)
  redis.call('HINCRBY', dmeta, 'pushed', #items)
  DEAD = {}
  local pttl = -1
  if num(redis.call('HGET', dmeta, 'attachments')) == 0 then
    pttl = num(redis.call('HGET', dmeta, 'ttl_ms'))
    for k = 9, 16 do
      if redis.call('EXISTS', KEYS[k]) == 1 then redis.call('PEXPIRE', KEYS[k], pttl) end
    end
  end
  redis.call('PUBLISH', channel, 'd' .. dlq_name)
  return pttl
end

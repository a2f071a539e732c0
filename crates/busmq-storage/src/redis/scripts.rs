//! The Lua scripts: every multi-step operation on a queue is one atomic
//! script call. Every script gets the eight keys of one queue (all in one
//! hash slot) and answers an array whose first element is a status:
//! [`OK`], [`MISSING`], [`UNKNOWN_ACK`], [`LOCKED`], [`LEASE_EXPIRED`],
//! [`UNKNOWN_LEASE`] or [`LEASES_ACTIVE`]. Scripts that may dead-letter
//! also get the eight keys of the queue's dead-letter queue, which shares
//! the queue's hash slot (see `placement` in the parent module), so a
//! message moves there in the same atomic step.
//!
//! Lease mode keys: `leases` (hash id -> packed attempt, owner and member),
//! `deadlines` (sorted set of leased ids by deadline in Redis server ms, so
//! every broker agrees on the clock) and `counts` (hash id -> deliveries of
//! a stored message that was delivered and put back).

use ::redis::Script;

/// The operation was done; the rest of the reply is its result.
pub const OK: i64 = 0;
/// The queue does not exist (on this shard).
pub const MISSING: i64 = 1;
/// An ack above every id ever delivered.
pub const UNKNOWN_ACK: i64 = 2;
/// Another owner holds the reliable lock.
pub const LOCKED: i64 = 3;
/// A settle names a delivery whose lease ran out or was redelivered.
pub const LEASE_EXPIRED: i64 = 4;
/// A settle names no delivery that happened.
pub const UNKNOWN_LEASE: i64 = 5;
/// A reliable consumer cannot start while leases are outstanding.
pub const LEASES_ACTIVE: i64 = 6;

/// Shared by every script: key names, id decoding, the binary search over a
/// list sorted by id, and the ttl rules of an unattached queue.
const PRELUDE: &str = r#"
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
"#;

/// ARGV: ttl_ms or '', default ttl_ms. Reply: {OK, existed, attachments}.
const ATTACH: &str = r#"
if redis.call('EXISTS', meta) == 0 then
  -- Leftovers of an earlier incarnation (a lock lease) must not leak in.
  redis.call('DEL', ready, pending, md, lock, leases, deadlines, counts)
  local ttl = ARGV[1]
  if ttl == '' then ttl = ARGV[2] end
  redis.call('HSET', meta, 'next_id', 1, 'attachments', 1, 'ttl_ms', ttl,
    'pushed', 0, 'consumed', 0, 'delivered_hi', 0)
  return {0, 0, 1}
end
local n = redis.call('HINCRBY', meta, 'attachments', 1)
if ARGV[1] ~= '' then redis.call('HSET', meta, 'ttl_ms', ARGV[1]) end
redis.call('PERSIST', meta)
redis.call('PERSIST', ready)
redis.call('PERSIST', pending)
redis.call('PERSIST', md)
redis.call('PERSIST', leases)
redis.call('PERSIST', deadlines)
redis.call('PERSIST', counts)
return {0, 1, n}
"#;

/// Reply: {OK, attachments, pttl}: pttl is the ms until the queue expires
/// (-2: already gone) when unattached, -1 while attached.
const DETACH: &str = r#"
if redis.call('EXISTS', meta) == 0 then return {1} end
local n = num(redis.call('HGET', meta, 'attachments'))
if n > 0 then n = redis.call('HINCRBY', meta, 'attachments', -1) end
if n > 0 then return {0, n, -1} end
if redis.call('PTTL', meta) < 0 then
  local ttl = num(redis.call('HGET', meta, 'ttl_ms'))
  redis.call('PEXPIRE', ready, ttl)
  redis.call('PEXPIRE', pending, ttl)
  redis.call('PEXPIRE', md, ttl)
  redis.call('PEXPIRE', leases, ttl)
  redis.call('PEXPIRE', deadlines, ttl)
  redis.call('PEXPIRE', counts, ttl)
  cap_lock(ttl)
  redis.call('PEXPIRE', meta, ttl)
end
return {0, 0, redis.call('PTTL', meta)}
"#;

/// ARGV: channel, queue, payload... Reply: {OK, first, last}.
const PUSH: &str = r#"
if redis.call('EXISTS', meta) == 0 then return {1} end
local n = #ARGV - 2
local first = num(redis.call('HGET', meta, 'next_id'))
local chunk = {}
for i = 1, n do
  chunk[#chunk + 1] = struct.pack('>I8', first + i - 1) .. ARGV[i + 2]
  if #chunk == 1000 then
    redis.call('RPUSH', ready, unpack(chunk))
    chunk = {}
  end
end
if #chunk > 0 then redis.call('RPUSH', ready, unpack(chunk)) end
redis.call('HINCRBY', meta, 'next_id', n)
redis.call('HINCRBY', meta, 'pushed', n)
retouch(ready)
redis.call('PUBLISH', ARGV[1], 'd' .. ARGV[2])
return {0, first, first + n - 1}
"#;

/// ARGV: max, 'r' (remove) or 'p' (pending). Reply: {OK, {member...}}.
const TAKE: &str = r#"
if redis.call('EXISTS', meta) == 0 then return {1} end
local max = num(ARGV[1])
if max <= 0 then return {0, {}} end
local taken = redis.call('LPOP', ready, max)
if not taken then return {0, {}} end
redis.call('HINCRBY', meta, 'consumed', #taken)
if ARGV[2] == 'r' and redis.call('HLEN', counts) > 0 then
  for _, m in ipairs(taken) do redis.call('HDEL', counts, fmt(idof(m))) end
end
if ARGV[2] == 'p' then
  rpush_all(pending, taken)
  local hi = idof(taken[#taken])
  if hi > num(redis.call('HGET', meta, 'delivered_hi')) then
    redis.call('HSET', meta, 'delivered_hi', fmt(hi))
  end
  retouch(pending)
end
return {0, taken}
"#;

/// ARGV: from, max. Reply: {OK, {member...}}.
const READ: &str = r#"
if redis.call('EXISTS', meta) == 0 then return {1} end
local from, max = num(ARGV[1]), num(ARGV[2])
local out = {}
if max <= 0 then return {0, out} end
local p = lower_bound(pending, from)
if p < redis.call('LLEN', pending) then
  out = redis.call('LRANGE', pending, p, p + max - 1)
end
if #out < max then
  local r = lower_bound(ready, from)
  local more = redis.call('LRANGE', ready, r, r + (max - #out) - 1)
  for _, m in ipairs(more) do out[#out + 1] = m end
end
-- Leased messages lie between ready ones: merge them in.
if redis.call('HLEN', leases) > 0 then
  for _, v in ipairs(redis.call('HVALS', leases)) do
    local _, _, m = unpack_lease(v)
    if idof(m) >= from then out[#out + 1] = m end
  end
  table.sort(out, function(a, b) return idof(a) < idof(b) end)
  while #out > max do table.remove(out) end
end
return {0, out}
"#;

/// ARGV: id. Reply: {OK, removed} or {UNKNOWN_ACK}.
const ACK: &str = r#"
if redis.call('EXISTS', meta) == 0 then return {1} end
local id = num(ARGV[1])
if id > num(redis.call('HGET', meta, 'delivered_hi')) then return {2} end
local n = lower_bound(pending, id + 1)
if n > 0 and redis.call('HLEN', counts) > 0 then
  for _, m in ipairs(redis.call('LRANGE', pending, 0, n - 1)) do
    redis.call('HDEL', counts, fmt(idof(m)))
  end
end
if n > 0 then redis.call('LTRIM', pending, n, -1) end
return {0, n}
"#;

/// ARGV: owner, lease_ms, last, channel, queue, dead-letter queue, its
/// default ttl_ms. Reply: {OK, requeued, dlq_pttl}, {LOCKED} or
/// {LEASES_ACTIVE}.
const BEGIN_RELIABLE: &str = r#"
if redis.call('EXISTS', meta) == 0 then return {1} end
local holder = redis.call('GET', lock)
if holder and holder ~= ARGV[1] then return {3} end
local dlq_pttl = -1
if redis.call('ZCARD', deadlines) > 0 then
  local requeued = reclaim(now_ms())
  dlq_pttl = flush_dead(ARGV[4], ARGV[6], ARGV[7])
  if requeued > 0 then redis.call('PUBLISH', ARGV[4], 'd' .. ARGV[5]) end
  if redis.call('HLEN', leases) > 0 then return {6} end
end
set_lock(ARGV[1], num(ARGV[2]))
local last = num(ARGV[3])
local function forget_counts(key, n)
  if n > 0 and redis.call('HLEN', counts) > 0 then
    for _, m in ipairs(redis.call('LRANGE', key, 0, n - 1)) do
      redis.call('HDEL', counts, fmt(idof(m)))
    end
  end
end
if last > 0 then
  local p = lower_bound(pending, last + 1)
  forget_counts(pending, p)
  if p > 0 then redis.call('LTRIM', pending, p, -1) end
  local r = lower_bound(ready, last + 1)
  forget_counts(ready, r)
  if r > 0 then redis.call('LTRIM', ready, r, -1) end
  local hi = math.min(last, num(redis.call('HGET', meta, 'next_id')) - 1)
  if hi > num(redis.call('HGET', meta, 'delivered_hi')) then
    redis.call('HSET', meta, 'delivered_hi', fmt(hi))
  end
end
-- Pending ids are all below ready ids: move them back to the front, in
-- order, counting the delivery; those that used up their deliveries go to
-- the dead-letter queue instead.
local maxd = num(redis.call('HGET', meta, 'max_deliveries'))
local n, dead_desc = 0, {}
for i = 1, redis.call('LLEN', pending) do
  local m = redis.call('RPOP', pending)
  local id = fmt(idof(m))
  local delivered = num(redis.call('HGET', counts, id)) + 1
  if maxd > 0 and delivered >= maxd then
    redis.call('HDEL', counts, id)
    dead_desc[#dead_desc + 1] = m
  else
    redis.call('HSET', counts, id, delivered)
    redis.call('LPUSH', ready, m)
    n = n + 1
  end
end
for i = #dead_desc, 1, -1 do DEAD[#DEAD + 1] = dead_desc[i] end
local pttl = flush_dead(ARGV[4], ARGV[6], ARGV[7])
if pttl ~= -1 then dlq_pttl = pttl end
retouch(ready, counts)
if n > 0 then redis.call('PUBLISH', ARGV[4], 'd' .. ARGV[5]) end
return {0, n, dlq_pttl}
"#;

/// ARGV: owner, max, visibility_ms, channel, queue, dead-letter queue, its
/// default ttl_ms. Reply: {OK, {member, attempt, ...}, next_expiry_ms or
/// -1, dlq_pttl} or {LOCKED}.
const LEASE: &str = r#"
if redis.call('EXISTS', meta) == 0 then return {1} end
if redis.call('EXISTS', lock) == 1 then return {3} end
local now = now_ms()
local requeued = reclaim(now)
local out, taken = {}, 0
local max = num(ARGV[2])
if max > 0 then
  local got = redis.call('LPOP', ready, max)
  if got then
    taken = #got
    local deadline = now + num(ARGV[3])
    local track = redis.call('HLEN', counts) > 0
    for _, m in ipairs(got) do
      local id = fmt(idof(m))
      local attempt = 1
      if track then
        attempt = num(redis.call('HGET', counts, id)) + 1
        redis.call('HDEL', counts, id)
      end
      redis.call('HSET', leases, id, pack_lease(attempt, ARGV[1], m))
      redis.call('ZADD', deadlines, fmt(deadline), id)
      out[#out + 1] = m
      out[#out + 1] = attempt
    end
    redis.call('HINCRBY', meta, 'consumed', taken)
    retouch(leases, deadlines)
  end
end
local dlq_pttl = flush_dead(ARGV[4], ARGV[6], ARGV[7])
if requeued > taken then redis.call('PUBLISH', ARGV[4], 'd' .. ARGV[5]) end
local next_expiry = -1
local first = redis.call('ZRANGE', deadlines, 0, 0, 'WITHSCORES')
if #first > 0 then next_expiry = math.max(0, tonumber(first[2]) - now) end
return {0, out, next_expiry, dlq_pttl}
"#;

/// ARGV: id, attempt, 'a' (ack) or 'n' (nack), channel, queue, dead-letter
/// queue, its default ttl_ms. Reply: {OK, settled (1 acked, 2 requeued,
/// 3 dead-lettered), dlq_pttl}, {LEASE_EXPIRED} or {UNKNOWN_LEASE}.
const SETTLE: &str = r#"
if redis.call('EXISTS', meta) == 0 then return {1} end
local requeued = reclaim(now_ms())
local id, want = ARGV[1], num(ARGV[2])
local v = redis.call('HGET', leases, id)
local attempt, member
if v then
  local a, _, m = unpack_lease(v)
  attempt, member = a, m
end
local status, settled = 0, 1
if attempt ~= want then
  -- A delivery that happened but is not leased under this attempt any
  -- more is expired; anything else is unknown.
  local delivered = attempt or num(redis.call('HGET', counts, id))
  if want <= delivered then status = 4 else status = 5 end
else
  drop_lease(id)
  if ARGV[3] == 'n' then
    if put_back(member, attempt) == 1 then
      settled = 2
      requeued = requeued + 1
    else
      settled = 3
    end
  end
end
local dlq_pttl = flush_dead(ARGV[4], ARGV[6], ARGV[7])
if requeued > 0 then
  retouch(ready, counts)
  redis.call('PUBLISH', ARGV[4], 'd' .. ARGV[5])
end
if status ~= 0 then return {status, dlq_pttl} end
return {0, settled, dlq_pttl}
"#;

/// ARGV: owner, channel, queue, dead-letter queue, its default ttl_ms.
/// Reply: {OK, released, dlq_pttl}.
const RELEASE_LEASES: &str = r#"
if redis.call('EXISTS', meta) == 0 then return {1} end
local requeued = reclaim(now_ms())
local mine = {}
local all = redis.call('HGETALL', leases)
for i = 1, #all, 2 do
  local attempt, owner, member = unpack_lease(all[i + 1])
  if owner == ARGV[1] then mine[#mine + 1] = {all[i], attempt, member} end
end
table.sort(mine, function(a, b) return tonumber(a[1]) < tonumber(b[1]) end)
for _, l in ipairs(mine) do
  drop_lease(l[1])
  requeued = requeued + put_back(l[3], l[2])
end
local dlq_pttl = flush_dead(ARGV[2], ARGV[4], ARGV[5])
if requeued > 0 then
  retouch(ready, counts)
  redis.call('PUBLISH', ARGV[2], 'd' .. ARGV[3])
end
return {0, #mine, dlq_pttl}
"#;

/// ARGV: max. Reply: {OK}.
const SET_MAX_DELIVERIES: &str = r#"
if redis.call('EXISTS', meta) == 0 then return {1} end
redis.call('HSET', meta, 'max_deliveries', ARGV[1])
return {0}
"#;

/// ARGV: owner, lease_ms. Reply: {OK, held}.
const RENEW_RELIABLE: &str = r#"
if redis.call('EXISTS', meta) == 0 then return {1} end
if redis.call('GET', lock) ~= ARGV[1] then return {0, 0} end
set_lock(ARGV[1], num(ARGV[2]))
return {0, 1}
"#;

/// ARGV: owner. Reply: {OK, released}.
const END_RELIABLE: &str = r#"
if redis.call('EXISTS', meta) == 0 then return {1} end
if redis.call('GET', lock) ~= ARGV[1] then return {0, 0} end
redis.call('DEL', lock)
return {0, 1}
"#;

/// ARGV: channel, queue. Reply: {OK} or {MISSING}.
const CLOSE: &str = r#"
local existed = redis.call('EXISTS', meta)
redis.call('DEL', meta, ready, pending, md, lock, leases, deadlines, counts)
if existed == 0 then return {1} end
redis.call('PUBLISH', ARGV[1], 'c' .. ARGV[2])
return {0}
"#;

/// Reply: {OK, removed}.
const FLUSH: &str = r#"
if redis.call('EXISTS', meta) == 0 then return {1} end
local n = redis.call('LLEN', ready) + redis.call('LLEN', pending) + redis.call('HLEN', leases)
redis.call('DEL', ready, pending, leases, deadlines, counts)
return {0, n}
"#;

/// Reply: {OK, count, ttl_ms, attachments, pending, next_id, pushed,
/// consumed, locked, leased, max_deliveries}.
const INFO: &str = r#"
if redis.call('EXISTS', meta) == 0 then return {1} end
local f = redis.call('HMGET', meta, 'ttl_ms', 'attachments', 'next_id', 'pushed', 'consumed',
  'max_deliveries')
local r, p = redis.call('LLEN', ready), redis.call('LLEN', pending)
local l = redis.call('HLEN', leases)
return {0, r + p + l, num(f[1]), num(f[2]), p, num(f[3]), num(f[4]), num(f[5]),
  redis.call('EXISTS', lock), l, num(f[6])}
"#;

/// ARGV: key. Reply: {OK, 0} or {OK, 1, value}.
const GET_METADATA: &str = r#"
if redis.call('EXISTS', meta) == 0 then return {1} end
local v = redis.call('HGET', md, ARGV[1])
if v then return {0, 1, v} end
return {0, 0}
"#;

/// ARGV: key, value. Reply: {OK}.
const SET_METADATA: &str = r#"
if redis.call('EXISTS', meta) == 0 then return {1} end
redis.call('HSET', md, ARGV[1], ARGV[2])
retouch(md)
return {0}
"#;

/// Run by the process that started a queue's countdown, when it should be
/// over. ARGV: channel, queue. Reply: {OK, -2} when the queue is gone
/// (Expired published), {OK, -1} when attached again, else {OK, pttl} to
/// look again later.
const EXPIRE_CHECK: &str = r#"
if redis.call('EXISTS', meta) == 0 then
  redis.call('PUBLISH', ARGV[1], 'e' .. ARGV[2])
  return {0, -2}
end
if attached() then return {0, -1} end
return {0, redis.call('PTTL', meta)}
"#;

/// A persistable object's save, over one key (the object's hash), without
/// the queue prelude. ARGV: ttl_ms or '', then field, value pairs. Reply: 0.
const OBJECT_SAVE: &str = r#"
local key = KEYS[1]
-- In chunks: unpack of every argument at once could overflow Lua's stack.
for i = 2, #ARGV, 1000 do
  redis.call('HSET', key, unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if ARGV[1] ~= '' then redis.call('PEXPIRE', key, ARGV[1]) end
return 0
"#;

/// Every script, compiled once (each knows its SHA1 for EVALSHA and
/// reloads itself on NOSCRIPT).
pub struct Scripts {
    pub attach: Script,
    pub detach: Script,
    pub push: Script,
    pub take: Script,
    pub read: Script,
    pub ack: Script,
    pub begin_reliable: Script,
    pub renew_reliable: Script,
    pub end_reliable: Script,
    pub close: Script,
    pub flush: Script,
    pub info: Script,
    pub get_metadata: Script,
    pub set_metadata: Script,
    pub expire_check: Script,
    pub lease: Script,
    pub settle: Script,
    pub release_leases: Script,
    pub set_max_deliveries: Script,
    pub object_save: Script,
}

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

impl Scripts {
    pub fn new() -> Self {
        Scripts {
            attach: script(ATTACH),
            detach: script(DETACH),
            push: script(PUSH),
            take: script(TAKE),
            read: script(READ),
            ack: script(ACK),
            begin_reliable: script(BEGIN_RELIABLE),
            renew_reliable: script(RENEW_RELIABLE),
            end_reliable: script(END_RELIABLE),
            close: script(CLOSE),
            flush: script(FLUSH),
            info: script(INFO),
            get_metadata: script(GET_METADATA),
            set_metadata: script(SET_METADATA),
            expire_check: script(EXPIRE_CHECK),
            lease: script(LEASE),
            settle: script(SETTLE),
            release_leases: script(RELEASE_LEASES),
            set_max_deliveries: script(SET_MAX_DELIVERIES),
            object_save: Script::new(OBJECT_SAVE),
        }
    }

    /// Whether `script` may dead-letter, so needs the keys of the queue's
    /// dead-letter queue after the queue's own.
    pub fn dead_letters(&self, script: &Script) -> bool {
        let hash = script.get_hash();
        [
            &self.lease,
            &self.settle,
            &self.release_leases,
            &self.begin_reliable,
        ]
        .iter()
        .any(|s| s.get_hash() == hash)
    }
}

//! The Lua scripts: every multi-step operation on a queue is one atomic
//! script call. Every script gets the five keys of one queue (all in one
//! hash slot) and answers an array whose first element is a status:
//! [`OK`], [`MISSING`], [`UNKNOWN_ACK`] or [`LOCKED`].

use ::redis::Script;

/// The operation was done; the rest of the reply is its result.
pub const OK: i64 = 0;
/// The queue does not exist (on this shard).
pub const MISSING: i64 = 1;
/// An ack above every id ever delivered.
pub const UNKNOWN_ACK: i64 = 2;
/// Another owner holds the reliable lock.
pub const LOCKED: i64 = 3;

/// Shared by every script: key names, id decoding, the binary search over a
/// list sorted by id, and the ttl rules of an unattached queue.
const PRELUDE: &str = r#"
local meta, ready, pending, md, lock = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]

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
"#;

/// ARGV: ttl_ms or '', default ttl_ms. Reply: {OK, existed, attachments}.
const ATTACH: &str = r#"
if redis.call('EXISTS', meta) == 0 then
  -- Leftovers of an earlier incarnation (a lock lease) must not leak in.
  redis.call('DEL', ready, pending, md, lock)
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
return {0, out}
"#;

/// ARGV: id. Reply: {OK, removed} or {UNKNOWN_ACK}.
const ACK: &str = r#"
if redis.call('EXISTS', meta) == 0 then return {1} end
local id = num(ARGV[1])
if id > num(redis.call('HGET', meta, 'delivered_hi')) then return {2} end
local n = lower_bound(pending, id + 1)
if n > 0 then redis.call('LTRIM', pending, n, -1) end
return {0, n}
"#;

/// ARGV: owner, lease_ms, last, channel, queue. Reply: {OK, requeued} or
/// {LOCKED}.
const BEGIN_RELIABLE: &str = r#"
if redis.call('EXISTS', meta) == 0 then return {1} end
local holder = redis.call('GET', lock)
if holder and holder ~= ARGV[1] then return {3} end
set_lock(ARGV[1], num(ARGV[2]))
local last = num(ARGV[3])
if last > 0 then
  local p = lower_bound(pending, last + 1)
  if p > 0 then redis.call('LTRIM', pending, p, -1) end
  local r = lower_bound(ready, last + 1)
  if r > 0 then redis.call('LTRIM', ready, r, -1) end
  local hi = math.min(last, num(redis.call('HGET', meta, 'next_id')) - 1)
  if hi > num(redis.call('HGET', meta, 'delivered_hi')) then
    redis.call('HSET', meta, 'delivered_hi', fmt(hi))
  end
end
-- Pending ids are all below ready ids: move them back to the front, in order.
local n = redis.call('LLEN', pending)
for i = 1, n do redis.call('LMOVE', pending, ready, 'RIGHT', 'LEFT') end
retouch(ready)
if n > 0 then redis.call('PUBLISH', ARGV[4], 'd' .. ARGV[5]) end
return {0, n}
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
redis.call('DEL', meta, ready, pending, md, lock)
if existed == 0 then return {1} end
redis.call('PUBLISH', ARGV[1], 'c' .. ARGV[2])
return {0}
"#;

/// Reply: {OK, removed}.
const FLUSH: &str = r#"
if redis.call('EXISTS', meta) == 0 then return {1} end
local n = redis.call('LLEN', ready) + redis.call('LLEN', pending)
redis.call('DEL', ready, pending)
return {0, n}
"#;

/// Reply: {OK, count, ttl_ms, attachments, pending, next_id, pushed,
/// consumed, locked}.
const INFO: &str = r#"
if redis.call('EXISTS', meta) == 0 then return {1} end
local f = redis.call('HMGET', meta, 'ttl_ms', 'attachments', 'next_id', 'pushed', 'consumed')
local r, p = redis.call('LLEN', ready), redis.call('LLEN', pending)
return {0, r + p, num(f[1]), num(f[2]), p, num(f[3]), num(f[4]), num(f[5]),
  redis.call('EXISTS', lock)}
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
            object_save: Script::new(OBJECT_SAVE),
        }
    }
}

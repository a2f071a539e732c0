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

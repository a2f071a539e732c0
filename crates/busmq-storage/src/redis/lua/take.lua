if redis.call('EXISTS', meta) == 0 then return {1} end
local max = num(ARGV[1])
-- Pending ids must stay below ready and leased ones (see begin_reliable),
-- which a pending take beside outstanding leases would break.
if ARGV[2] == 'p' and redis.call('HLEN', leases) > 0 then return {6} end
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

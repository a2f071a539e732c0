if redis.call('EXISTS', meta) == 0 then return {1} end
local f = redis.call('HMGET', meta, 'ttl_ms', 'attachments', 'next_id', 'pushed', 'consumed',
  'max_deliveries')
local r, p = redis.call('LLEN', ready), redis.call('LLEN', pending)
local l = redis.call('HLEN', leases)
return {0, r + p + l, num(f[1]), num(f[2]), p, num(f[3]), num(f[4]), num(f[5]),
  redis.call('EXISTS', lock), l, num(f[6])}

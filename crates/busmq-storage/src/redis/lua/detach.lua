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

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

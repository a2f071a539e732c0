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

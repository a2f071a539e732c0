if redis.call('EXISTS', meta) == 0 then return {1} end
local n = redis.call('LLEN', ready) + redis.call('LLEN', pending) + redis.call('HLEN', leases)
redis.call('DEL', ready, pending, leases, deadlines, counts)
return {0, n}

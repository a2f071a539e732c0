local existed = redis.call('EXISTS', meta)
redis.call('DEL', meta, ready, pending, md, lock, leases, deadlines, counts)
if existed == 0 then return {1} end
redis.call('PUBLISH', ARGV[1], 'c' .. ARGV[2])
return {0}

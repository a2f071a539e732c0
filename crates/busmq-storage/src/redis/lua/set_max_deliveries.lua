if redis.call('EXISTS', meta) == 0 then return {1} end
redis.call('HSET', meta, 'max_deliveries', ARGV[1])
return {0}

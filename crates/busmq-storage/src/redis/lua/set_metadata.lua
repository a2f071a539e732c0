if redis.call('EXISTS', meta) == 0 then return {1} end
redis.call('HSET', md, ARGV[1], ARGV[2])
retouch(md)
return {0}

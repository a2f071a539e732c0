if redis.call('EXISTS', meta) == 0 then return {1} end
local v = redis.call('HGET', md, ARGV[1])
if v then return {0, 1, v} end
return {0, 0}

if redis.call('EXISTS', meta) == 0 then return {1} end
if redis.call('GET', lock) ~= ARGV[1] then return {0, 0} end
redis.call('DEL', lock)
return {0, 1}

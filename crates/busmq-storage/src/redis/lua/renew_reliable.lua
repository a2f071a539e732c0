if redis.call('EXISTS', meta) == 0 then return {1} end
if redis.call('GET', lock) ~= ARGV[1] then return {0, 0} end
set_lock(ARGV[1], num(ARGV[2]))
return {0, 1}

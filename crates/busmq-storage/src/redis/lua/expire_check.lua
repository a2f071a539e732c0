if redis.call('EXISTS', meta) == 0 then
  redis.call('PUBLISH', ARGV[1], 'e' .. ARGV[2])
  return {0, -2}
end
if attached() then return {0, -1} end
return {0, redis.call('PTTL', meta)}

local key = KEYS[1]
-- In chunks: unpack of every argument at once could overflow Lua's stack.
for i = 2, #ARGV, 1000 do
  redis.call('HSET', key, unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if ARGV[1] ~= '' then redis.call('PEXPIRE', key, ARGV[1]) end
return 0

if redis.call('EXISTS', meta) == 0 then return {1} end
local n = #ARGV - 2
local first = num(redis.call('HGET', meta, 'next_id'))
local chunk = {}
for i = 1, n do
  chunk[#chunk + 1] = struct.pack('>I8', first + i - 1) .. ARGV[i + 2]
  if #chunk == 1000 then
    redis.call('RPUSH', ready, unpack(chunk))
    chunk = {}
  end
end
if #chunk > 0 then redis.call('RPUSH', ready, unpack(chunk)) end
redis.call('HINCRBY', meta, 'next_id', n)
redis.call('HINCRBY', meta, 'pushed', n)
retouch(ready)
redis.call('PUBLISH', ARGV[1], 'd' .. ARGV[2])
return {0, first, first + n - 1}

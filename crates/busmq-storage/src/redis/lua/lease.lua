if redis.call('EXISTS', meta) == 0 then return {1} end
if redis.call('EXISTS', lock) == 1 then return {3} end
local now = now_ms()
local requeued = reclaim(now)
local out, taken = {}, 0
local max = num(ARGV[2])
if max > 0 then
  local got = redis.call('LPOP', ready, max)
  if got then
    taken = #got
    local deadline = now + num(ARGV[3])
    local track = redis.call('HLEN', counts) > 0
    for _, m in ipairs(got) do
      local id = fmt(idof(m))
      local attempt = 1
      if track then
        attempt = num(redis.call('HGET', counts, id)) + 1
        redis.call('HDEL', counts, id)
      end
      redis.call('HSET', leases, id, pack_lease(attempt, ARGV[1], m))
      redis.call('ZADD', deadlines, fmt(deadline), id)
      out[#out + 1] = m
      out[#out + 1] = attempt
    end
    redis.call('HINCRBY', meta, 'consumed', taken)
    retouch(leases, deadlines)
  end
end
local dlq_pttl = flush_dead(ARGV[4], ARGV[6], ARGV[7])
if requeued > taken then redis.call('PUBLISH', ARGV[4], 'd' .. ARGV[5]) end
local next_expiry = -1
local first = redis.call('ZRANGE', deadlines, 0, 0, 'WITHSCORES')
if #first > 0 then next_expiry = math.max(0, tonumber(first[2]) - now) end
return {0, out, next_expiry, dlq_pttl}

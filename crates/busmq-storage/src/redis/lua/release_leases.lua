if redis.call('EXISTS', meta) == 0 then return {1} end
local requeued = reclaim(now_ms())
local mine = {}
local all = redis.call('HGETALL', leases)
for i = 1, #all, 2 do
  local attempt, owner, member = unpack_lease(all[i + 1])
  if owner == ARGV[1] then mine[#mine + 1] = {all[i], attempt, member} end
end
table.sort(mine, function(a, b) return tonumber(a[1]) < tonumber(b[1]) end)
for _, l in ipairs(mine) do
  drop_lease(l[1])
  requeued = requeued + put_back(l[3], l[2])
end
local dlq_pttl = flush_dead(ARGV[2], ARGV[4], ARGV[5])
if requeued > 0 then
  retouch(ready, counts)
  redis.call('PUBLISH', ARGV[2], 'd' .. ARGV[3])
end
return {0, #mine, dlq_pttl}

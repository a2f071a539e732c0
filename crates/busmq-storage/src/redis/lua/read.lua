if redis.call('EXISTS', meta) == 0 then return {1} end
local from, max = num(ARGV[1]), num(ARGV[2])
local out = {}
if max <= 0 then return {0, out} end
local p = lower_bound(pending, from)
if p < redis.call('LLEN', pending) then
  out = redis.call('LRANGE', pending, p, p + max - 1)
end
if #out < max then
  local r = lower_bound(ready, from)
  local more = redis.call('LRANGE', ready, r, r + (max - #out) - 1)
  for _, m in ipairs(more) do out[#out + 1] = m end
end
-- Leased messages lie between ready ones: merge them in.
if redis.call('HLEN', leases) > 0 then
  for _, v in ipairs(redis.call('HVALS', leases)) do
    local _, _, m = unpack_lease(v)
    if idof(m) >= from then out[#out + 1] = m end
  end
  table.sort(out, function(a, b) return idof(a) < idof(b) end)
  while #out > max do table.remove(out) end
end
return {0, out}

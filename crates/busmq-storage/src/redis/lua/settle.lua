if redis.call('EXISTS', meta) == 0 then return {1} end
local requeued = reclaim(now_ms())
local id, want = ARGV[1], num(ARGV[2])
local v = redis.call('HGET', leases, id)
local attempt, member
if v then
  local a, _, m = unpack_lease(v)
  attempt, member = a, m
end
local status, settled = 0, 1
if attempt ~= want then
  -- A delivery that happened but is not leased under this attempt any
  -- more is expired; anything else is unknown.
  local delivered = attempt or num(redis.call('HGET', counts, id))
  if want <= delivered then status = 4 else status = 5 end
else
  drop_lease(id)
  if ARGV[3] == 'n' then
    if put_back(member, attempt) == 1 then
      settled = 2
      requeued = requeued + 1
    else
      settled = 3
    end
  end
end
local dlq_pttl = flush_dead(ARGV[4], ARGV[6], ARGV[7])
if requeued > 0 then
  retouch(ready, counts)
  redis.call('PUBLISH', ARGV[4], 'd' .. ARGV[5])
end
if status ~= 0 then return {status, dlq_pttl} end
return {0, settled, dlq_pttl}

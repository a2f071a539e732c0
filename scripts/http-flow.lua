-- wrk script: the message-queue API's three-call flow. Each thread cycles
-- POST /message/new, GET /message/next, and a done of the id that next
-- answered; `done` responses with 200 are whole flows.
ids = {}
step = 0
flows = 0
errors = 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  if #ids > 0 then
    local id = table.remove(ids, 1)
    return wrk.format("POST", "/message/" .. id .. "/status/done", nil, "")
  end
  step = step + 1
  if step % 2 == 1 then
    return wrk.format("POST", "/message/new", nil, '{"payload":{"order":42,"item":"book"}}')
  end
  return wrk.format("GET", "/message/next")
end

function response(status, headers, body)
  if status == 200 then
    local id = body:match('"id":(%d+)')
    if body:find('"payload"') and id then
      table.insert(ids, id)
    elseif id then
      flows = flows + 1
    end
  elseif status ~= 201 and status ~= 204 then
    errors = errors + 1
  end
end

function done(summary, latency, requests)
  local total, failed = 0, 0
  for _, t in ipairs(threads) do
    total = total + (t:get("flows") or 0)
    failed = failed + (t:get("errors") or 0)
  end
  local seconds = summary.duration / 1e6
  io.write(string.format("flows %d in %.1f s: %.0f flows/s, %d error answers\n",
    total, seconds, total / seconds, failed))
end

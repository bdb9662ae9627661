-- wrk script of bench/peers.py: POST one JSON body (a file) with one Authorization header, and
-- print the summary as one JSON line that the benchmark parses (wrk's own text is for people).
-- WRK_BODY_FILE: path of the request body; WRK_AUTHORIZATION: the header's value.
local file = assert(io.open(os.getenv("WRK_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = os.getenv("WRK_AUTHORIZATION")

-- Count answers by status: a saturation figure made of 4xx/5xx answers would be meaningless.
statuses = {}
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local ok, bad = 0, 0
  for _, thread in ipairs(threads) do
    local counted = thread:get("statuses")
    for status, count in pairs(counted) do
      if status == 200 then ok = ok + count else bad = bad + count end
    end
  end
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "ok": %d, "not_ok": %d, "socket_errors": %d, ' ..
    '"p50_ms": %.3f, "p99_ms": %.3f}\n',
    summary.requests, summary.duration, ok, bad,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end

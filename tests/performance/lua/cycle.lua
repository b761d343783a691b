-- Cycles over the requests in a file, one per line: METHOD <tab> PATH <tab> BEARER|- <tab> BODY|-
-- Each wrk thread starts at its own place in the list. `done` prints one JSON line the runner parses.
-- Usage: wrk -s cycle.lua URL -- requests.tsv [delay_ms]
local requests = {}
local position = 0
local delay_ms = 0
local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("thread_index", counter)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(args[1]) do
    local method, path, bearer, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    local headers = {}
    if bearer ~= "-" then headers["Authorization"] = "Bearer " .. bearer end
    if body == "-" then
      body = nil
    else
      headers["Content-Type"] = "application/json"
    end
    requests[#requests + 1] = wrk.format(method, path, headers, body)
  end
  position = ((thread_index or 1) - 1) * math.floor(#requests / 7 + 1)
  delay_ms = tonumber(args[2] or "0")
end

function request()
  position = position % #requests + 1
  return requests[position]
end

function delay()
  return delay_ms
end

function done(summary, latency, requests_)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
      .. '"max_us": %d, "status_errors": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end

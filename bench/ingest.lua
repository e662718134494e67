-- wrk script for bench/ingest.py: real hangup deliveries, each with a unique CallID and an
-- EventTime that rises from delivery to delivery, as a live PBX's do.
-- METHOD (GET or POST), PAYLOAD and RUN come from the environment.
local method = os.getenv("METHOD") or "GET"
local run = tonumber(os.getenv("RUN") or "0")  -- unique per wrk run, so no CallID repeats
local payload = os.getenv("PAYLOAD")
local threads = {}
local counter = 0
local thread_id = 0
local start_us = os.time() * 1000000

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
  table.insert(threads, thread)
end

function request()
  counter = counter + 1
  local call_id = string.format("%08x%04x%020x", run, tid, counter)
  local event_time = string.format("%d", start_us + counter * 4 + tid)
  local body = string.gsub(string.gsub(payload, "CALLID", call_id), "EVENTTIME", event_time)
  if method == "GET" then
    return wrk.format("GET", "/webhook?myid=175&" .. body)
  end
  return wrk.format("POST", "/webhook?myid=175",
    {["Content-Type"] = "application/x-www-form-urlencoded"}, body)
end

function done(summary, latency, requests)
  io.write(string.format(
    "RESULT {\"requests\": %d, \"seconds\": %f, \"p50_ms\": %f, \"p99_ms\": %f, " ..
    "\"non2xx\": %d, \"socket_errors\": %d}\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(99) / 1e3, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end

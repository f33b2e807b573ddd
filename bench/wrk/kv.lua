-- wrk script for sidekv and its baselines.
--   BENCH_MODE=get   GET of random existing keys k0..k(BENCH_KEYS-1), no Authorization (public reads)
--   BENCH_MODE=getauth  the same GETs, each with Authorization: BENCH_SECRET (private data)
--   BENCH_MODE=post  POST of fresh keys (100-byte body, Authorization: BENCH_SECRET)
--   BENCH_MODE=mix   90% get / 10% post
-- BENCH_TAG makes the fresh keys of one run distinct from any other run's.
-- done() prints one machine-readable `RESULT {json}` line (latencies in µs).
local mode = os.getenv("BENCH_MODE") or "get"
local nkeys = tonumber(os.getenv("BENCH_KEYS") or "1000")
local secret = os.getenv("BENCH_SECRET") or ""
local tag = os.getenv("BENCH_TAG") or "x"
local value = string.rep("v", tonumber(os.getenv("BENCH_VALUE_BYTES") or "100"))

local next_id = 1
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end

function init(args)
  math.randomseed(tid * 7919 + os.time())
  n = 0
  post_headers = { ["Authorization"] = secret, ["Content-Type"] = "text/plain" }
  -- Pre-formatted GETs: keeps wrk's own CPU per request low (it shares the cores).
  local get_headers = nil
  if mode == "getauth" then get_headers = { ["Authorization"] = secret } end
  gets = {}
  for i = 0, nkeys - 1 do
    gets[i + 1] = wrk.format("GET", "/k" .. i, get_headers)
  end
end

local function post()
  n = n + 1
  return wrk.format("POST", "/f" .. tag .. "_" .. tid .. "_" .. n, post_headers, value)
end

local function get()
  return gets[math.random(nkeys)]
end

function request()
  if mode == "post" then
    return post()
  elseif mode == "mix" then
    if math.random(10) == 1 then return post() end
    return get()
  end
  return get()
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end

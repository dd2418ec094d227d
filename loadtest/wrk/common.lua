-- Shared by the wrk scenario scripts: options, flow records, a wall clock, the result line.
--
-- Each scenario script keeps its counters in the global table `stats` and GET latencies (in
-- microseconds) in the global array `get_latencies` of its thread; done() in the main state
-- collects them from every thread and prints one line "FLOWAGG-RESULT {json}" for the harness.

local M = {}

-- "key=value" arguments after "--" on wrk's command line.
function M.options(args, defaults)
  local opt = {}
  for k, v in pairs(defaults) do
    opt[k] = v
  end
  for _, arg in ipairs(args) do
    local k, v = string.match(arg, "^([%w_]+)=(.*)$")
    if not k or opt[k] == nil then
      error("unknown script argument: " .. arg)
    end
    opt[k] = type(opt[k]) == "number" and tonumber(v) or v
  end
  return opt
end

-- Key number k -> one flow record; 1,000 source apps x 1,000 destination apps per VPC.
function M.flow(k, hour, tx, rx)
  return string.format(
    '{"src_app":"src-%d","dest_app":"dest-%d","vpc_id":"vpc-%d",'
      .. '"bytes_tx":%d,"bytes_rx":%d,"hour":%d}',
    k % 1000, math.floor(k / 1000) % 1000, math.floor(k / 1000000), tx, rx, hour)
end

M.post_headers = { ["Content-Type"] = "application/json" }

-- Monotonic clock in microseconds through LuaJIT's FFI; nil where wrk lacks the FFI.
local has_ffi, ffi = pcall(require, "ffi")
if has_ffi then
  pcall(ffi.cdef, [[
    typedef struct { long tv_sec; long tv_nsec; } flowagg_timespec;
    int clock_gettime(int clk_id, flowagg_timespec *tp);
  ]])
  local ts = ffi.new("flowagg_timespec")
  function M.now_us()
    ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
  end
end

-- setup(): give each thread a number and remember it for done().
M.threads = {}
function M.setup(thread)
  thread:set("thread_id", #M.threads)
  table.insert(M.threads, thread)
end

-- Called by request(): a thread stops itself after `max` requests, so every run is bounded in
-- count as well as in time (-d).
local sent = 0
function M.count_request(max)
  sent = sent + 1
  if sent > max then
    wrk.thread:stop()
  end
end

local function percentile(sorted, p)
  if #sorted == 0 then
    return nil
  end
  local i = math.max(1, math.ceil(#sorted * p / 100))
  return sorted[i]
end

local function json(value)
  if type(value) == "table" then
    local parts = {}
    for k, v in pairs(value) do
      table.insert(parts, string.format("%q:%s", k, json(v)))
    end
    table.sort(parts)
    return "{" .. table.concat(parts, ",") .. "}"
  elseif type(value) == "string" then
    return string.format("%q", value)
  elseif value == nil then
    return "null"
  end
  return string.format("%.17g", value)
end

function M.done(summary, latency)
  local extra, lats = {}, {}
  for _, thread in ipairs(M.threads) do
    for k, v in pairs(thread:get("stats") or {}) do
      if type(v) == "number" then
        extra[k] = (extra[k] or 0) + v
      elseif extra[k] == nil then
        extra[k] = v -- the first thread's note wins
      end
    end
    for _, v in ipairs(thread:get("get_latencies") or {}) do
      table.insert(lats, v)
    end
  end
  table.sort(lats)
  local result = {
    duration_s = summary.duration / 1e6,
    requests = summary.requests,
    bytes = summary.bytes,
    errors = summary.errors,
    p50_ms = latency:percentile(50) / 1000,
    p99_ms = latency:percentile(99) / 1000,
    max_ms = latency.max / 1000,
    extra = extra,
  }
  if #lats > 0 then
    result.get_p50_ms = percentile(lats, 50) / 1000
    result.get_p99_ms = percentile(lats, 99) / 1000
  end
  io.write("FLOWAGG-RESULT ", json(result), "\n")
end

return M

-- 95 % POSTs, 5 % GETs, and every GET checks read-your-writes of its own client's POSTs.
--
-- Run with one connection per thread (-t N -c N): each thread's Lua state is then exactly one
-- client, whose requests and responses strictly alternate. Every POST carries `batch` flows:
-- one on this client's own key (bytes_tx = 1) and the rest on `keys` shared keys, all in `hour`.
-- Every `get_every`-th request is a GET of that hour, sent after the previous POST was answered,
-- so its own row must count every POST answered 200 so far. A POST whose outcome is unknown (an
-- error status, or no response because the connection dropped) may or may not be counted, so a
-- GET must show a bytes_tx between `acked` and `acked + unknown`; anything else is a violation.
-- (wrk itself calls request() once before the run to inspect it; that request is never sent
-- and ends up as one harmless "unknown".)
--
--   wrk -t8 -c8 -d10s -s loadtest/wrk/mixed.lua http://127.0.0.1:8080 -- hour=2000000 run=a

local common = require("common")

stats = { posts_ok = 0, post_errors = 0, gets = 0, get_errors = 0, violations = 0,
          unknown = 0, flows_ok = 0 }
get_latencies = {}

local opt, posts, get_req, own_pattern
local n, p, acked, unknown, pending, started = 0, 0, 0, 0, nil, 0

setup = common.setup
done = common.done

function init(args)
  opt = common.options(args, {
    hour = 2000000, batch = 100, keys = 1000, get_every = 20, bodies = 16, run = "0",
    max_requests = 10000000,
  })
  local src = string.format("rw-%s-%d", opt.run, thread_id)
  local own = string.format(
    '{"src_app":"%s","dest_app":"check","vpc_id":"vpc-check","bytes_tx":1,"bytes_rx":1,'
      .. '"hour":%d}', src, opt.hour)
  -- The service and the naive peer both encode rows in this field order.
  own_pattern = string.format('"src_app":"%s","dest_app":"check","vpc_id":"vpc-check","bytes_tx":', src)
  posts = {}
  for b = 0, opt.bodies - 1 do
    local records = { own }
    for i = 1, opt.batch - 1 do
      local g = (thread_id * opt.bodies + b) * opt.batch + i
      records[#records + 1] = common.flow(g % opt.keys, opt.hour, 1 + g % 1000, 1 + g % 777)
    end
    posts[#posts + 1] =
      wrk.format("POST", "/flows", common.post_headers, "[" .. table.concat(records, ",") .. "]")
  end
  get_req = wrk.format("GET", "/flows?hour=" .. opt.hour)
end

function request()
  if pending == "post" then -- the previous POST got no response: applied or not, unknown
    unknown = unknown + 1
    stats.unknown = stats.unknown + 1
  end
  n = n + 1
  common.count_request(opt.max_requests)
  if n % opt.get_every == 0 then
    pending = "get"
    started = common.now_us and common.now_us() or 0
    return get_req
  end
  pending = "post"
  p = p % #posts + 1
  return posts[p]
end

function response(status, headers, body)
  if pending == "post" then
    if status == 200 then
      acked = acked + 1
      stats.posts_ok = stats.posts_ok + 1
      stats.flows_ok = stats.flows_ok + opt.batch
    else
      stats.post_errors = stats.post_errors + 1
      unknown = unknown + 1
      stats.unknown = stats.unknown + 1
    end
  elseif pending == "get" then
    if common.now_us then
      get_latencies[#get_latencies + 1] = common.now_us() - started
    end
    stats.gets = stats.gets + 1
    if status ~= 200 then
      stats.get_errors = stats.get_errors + 1
    else
      local _, last = string.find(body, own_pattern, 1, true)
      local total = last and tonumber(string.match(body, "^%d+", last + 1)) or 0
      if total < acked or total > acked + unknown then
        stats.violations = stats.violations + 1
        if not stats.first_violation then
          stats.first_violation = string.format("client %d: expected %d to %d, got %d",
                                                thread_id, acked, acked + unknown, total)
        end
      end
    end
  end
  pending = nil
end

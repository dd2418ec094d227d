-- POST /flows with pre-built bodies of `flows` records each. Every body spreads its flows over
-- `spread` consecutive hours (1: one hour; 2: a batch across an hour boundary; 24: a day), flow i
-- of a body in hour `hour0 + i % spread`, over at most `keys` keys per hour; each thread posts
-- `bodies` different bodies, cycling. Building requests happens in init(), so request() only
-- picks one.
--
--   wrk -t1 -c16 -d10s -s loadtest/wrk/post.lua http://127.0.0.1:8080 -- flows=1000 spread=24
-- (run with LUA_PATH="loadtest/wrk/?.lua;;" so that require("common") finds its module)

local common = require("common")

local requests, n = {}, 0
local max_requests

setup = common.setup
done = common.done

function init(args)
  local opt = common.options(args, {
    flows = 1, keys = 5000, spread = 1, hour0 = 100, bodies = 64, max_requests = 10000000,
  })
  max_requests = opt.max_requests
  local first = thread_id * opt.bodies * opt.flows -- threads post different keys first
  for b = 0, opt.bodies - 1 do
    local records = {}
    for i = 0, opt.flows - 1 do
      local g = first + b * opt.flows + i
      local hour = opt.hour0 + g % opt.spread
      local k = math.floor(g / opt.spread) % opt.keys
      records[#records + 1] = common.flow(k, hour, 1 + g % 1000, 1 + g % 777)
    end
    local body = "[" .. table.concat(records, ",") .. "]"
    requests[#requests + 1] = wrk.format("POST", "/flows", common.post_headers, body)
  end
end

function request()
  common.count_request(max_requests)
  n = n % #requests + 1
  return requests[n]
end

-- POST /flows with pre-built bodies of `flows` records each, cycling over `keys` distinct keys
-- in each of `hours` hours. Building requests happens in init(), so request() only picks one.
--
--   wrk -t2 -c8 -d10s -s loadtest/wrk/post.lua http://127.0.0.1:8080 -- flows=1000
-- (run with LUA_PATH="loadtest/wrk/?.lua;;" so that require("common") finds its module)

local common = require("common")

local requests, n = {}, 0
local max_requests

setup = common.setup
done = common.done

function init(args)
  local opt = common.options(args, {
    flows = 1, keys = 10000, hours = 4, bodies = 64, max_requests = 10000000,
  })
  max_requests = opt.max_requests
  local first = thread_id * opt.bodies * opt.flows -- threads post different keys first
  for b = 0, opt.bodies - 1 do
    local records = {}
    for i = 0, opt.flows - 1 do
      local g = first + b * opt.flows + i
      local k = g % opt.keys
      local hour = math.floor(g / opt.keys) % opt.hours
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

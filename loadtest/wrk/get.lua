-- GET /flows?hour=H over and over (the harness loads the hour first).
--
--   wrk -t2 -c8 -d10s -s loadtest/wrk/get.lua http://127.0.0.1:8080 -- hour=1000000

local common = require("common")

local req, max_requests

setup = common.setup
done = common.done

function init(args)
  local opt = common.options(args, { hour = 0, max_requests = 10000000 })
  max_requests = opt.max_requests
  req = wrk.format("GET", "/flows?hour=" .. opt.hour)
end

function request()
  common.count_request(max_requests)
  return req
end

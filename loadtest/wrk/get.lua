-- GET /flows?hour=H over and over (the harness loads the hour first).
--
--   wrk -t2 -c8 -d10s -s loadtest/wrk/get.lua http://127.0.0.1:8080 -- hour=1000000

local common = require("common")

local req, sent, max_requests

function setup(thread)
  common.setup(thread)
end

function init(args)
  local opt = common.options(args, { hour = 0, max_requests = 10000000 })
  max_requests = opt.max_requests
  req = wrk.format("GET", "/flows?hour=" .. opt.hour)
  sent = 0
end

function request()
  sent = sent + 1
  if sent > max_requests then
    wrk.thread:stop()
  end
  return req
end

function done(summary, latency, _)
  common.done(summary, latency)
end

#!lua name=flowagg_v2
--[[
The flowagg Redis Functions library, version 2 (flowagg/store/redis/layout.py names the keys and
draws the bucket list). FUNCTION LOAD REPLACE loads it on every primary before its first call, and
again on a primary that answers "Function not found" (one promoted by a failover that never had it).

A bucket is a list: its header, then base chunks (packed rows summed by a compaction), then deltas
(packed rows appended by commits). Nothing here reads a counter: packed rows are opaque bytes, summed
by the instances (in C), so Redis does O(1) commands per bucket and step whatever the rows. The
header is "<token>:<base chunks>"; only a compaction changes it, with a new token. The functions
do as little as they can: a commit is about as cheap as a plain RPUSH and EXPIREAT sent in a
MULTI (Lua's string functions, used on every commit, once cost more than the rest together).
]]

--[[
flowagg_v2_commit: append one group commit's deltas to buckets of one slot (the same bucket of
hours of one day: layout.py).
  KEYS[1 .. k]   the bucket lists                 flowagg:v2:h:{T}:H:b
  KEYS[k + 1 ..] the markers of the keyed deltas  flowagg:v2:idem:{T}:H:b:c:<Idempotency-Key>
  ARGV[1]        k;  ARGV[2] the markers' time to live, in seconds
  ARGV[3]        the header of a list this call creates
  then for each list, in KEYS order: its EXPIREAT (unix seconds, from its hour alone; 0: none),
  n, m, n unkeyed deltas, then m keyed deltas, the i-th keyed delta of the call going with the
  i-th marker.
A keyed delta is appended only if its marker did not exist, and the marker is set in the same
call. Every check comes before the first write and no write can fail after it, so the deltas, the
markers and the expiries are applied together or not at all. A list gets its expiry when it is
created (the call that creates it sets it; a compaction sets it again), and an expiry already past
deletes it at once: a late commit to an expired hour leaves nothing. Returns the lists' lengths.
]]
local function commit(keys, args)
  local k, ttl, header = tonumber(args[1]), args[2], args[3]
  local at, marker, plan, fresh = 4, k + 1, {}, {}
  for i = 1, k do
    local expire_at, n, m = args[at], tonumber(args[at + 1]), tonumber(args[at + 2])
    local push = {}
    for j = at + 3, at + 2 + n do
      push[#push + 1] = args[j]
    end
    at = at + 3 + n
    for j = at, at + m - 1 do
      if redis.call('EXISTS', keys[marker]) == 0 then
        push[#push + 1] = args[j]
        fresh[#fresh + 1] = keys[marker]
      end
      marker = marker + 1
    end
    at = at + m
    plan[i] = {expire_at, push}
  end
  local lengths = {}
  for i = 1, k do
    local expire_at, push = plan[i][1], plan[i][2]
    if #push == 0 then
      lengths[i] = redis.call('LLEN', keys[i])
    else
      local length = redis.call('RPUSH', keys[i], unpack(push))
      if length == #push then -- the list is new: its header goes first, and its expiry
        length = redis.call('LPUSH', keys[i], header)
        if expire_at ~= '0' then
          redis.call('EXPIREAT', keys[i], expire_at)
        end
      end
      lengths[i] = length
    end
  end
  for _, key in ipairs(fresh) do
    redis.call('SET', key, '1', 'EX', ttl)
  end
  return lengths
end

--[[
flowagg_v2_compact: fold the first elements of a bucket into new base chunks, if nothing else
folded them since they were read.
  KEYS[1]   the bucket list
  ARGV[1]   the header as read;  ARGV[2] how many elements were read (header included)
  ARGV[3]   the new header;  ARGV[4] EXPIREAT of the bucket (0: none)
  ARGV[5 ..]  the new base chunks, in order
The read elements are summed in the new chunks; elements appended since stay after them. A header
that changed means another compaction came first: nothing is done, so a compaction applies at
most once, and sending it again is safe. Returns 1 if applied, else 0.
]]
local function compact(keys, args)
  local list = keys[1]
  if redis.call('LINDEX', list, 0) ~= args[1] then
    return 0
  end
  local head = {}
  for i = #args, 5, -1 do
    head[#head + 1] = args[i]
  end
  head[#head + 1] = args[3]
  redis.call('LTRIM', list, tonumber(args[2]), -1)
  redis.call('LPUSH', list, unpack(head))
  if args[4] ~= '0' then
    redis.call('EXPIREAT', list, args[4])
  end
  return 1
end

--[[
flowagg_v2_read: a bucket for a reader that may hold it already (cache.py), in one atomic call.
  KEYS[1]   the bucket list
  ARGV[1]   the header the reader holds ('' for none);  ARGV[2] how many elements it holds
Returns {0} if the list is that one still, {1, the elements after those} if only deltas were
appended since, {2, every element} otherwise (another header: a compaction), {2} if there is no
list.
]]
local function read(keys, args)
  local list = keys[1]
  local header = redis.call('LINDEX', list, 0)
  if not header then
    return {2}
  end
  local out
  if header == args[1] then
    local held = tonumber(args[2])
    if redis.call('LLEN', list) == held then
      return {0}
    end
    out = redis.call('LRANGE', list, held, -1)
    table.insert(out, 1, 1)
  else
    out = redis.call('LRANGE', list, 0, -1)
    table.insert(out, 1, 2)
  end
  return out
end

--[[
flowagg_v2_hours: list hours in the set of hours that hold data, and forget the expired ones.
  KEYS[1]   the set (a sorted set: member the hour, score its EXPIREAT, +inf for none)
  ARGV      pairs of EXPIREAT (0: none) and hour
An hour whose expiry has passed on this primary's clock is not listed, and every hour whose expiry
has passed is removed. Returns {hours listed, hours removed}.
]]
local function hours(keys, args)
  local now = tonumber(redis.call('TIME')[1])
  local listed = 0
  for i = 1, #args, 2 do
    local expire_at = tonumber(args[i])
    if expire_at == 0 then
      redis.call('ZADD', keys[1], '+inf', args[i + 1])
      listed = listed + 1
    elseif expire_at > now then
      redis.call('ZADD', keys[1], args[i], args[i + 1])
      listed = listed + 1
    end
  end
  local removed = redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', '(' .. now)
  return {listed, removed}
end

redis.register_function('flowagg_v2_commit', commit)
redis.register_function('flowagg_v2_compact', compact)
redis.register_function('flowagg_v2_hours', hours)
redis.register_function{function_name = 'flowagg_v2_read', callback = read, flags = {'no-writes'}}

#!lua name=flowagg_v2
--[[
The flowagg Redis Functions library, version 2 (flowagg/store/redis/layout.py names the keys and
draws the bucket list). FUNCTION LOAD REPLACE loads it on every primary before its first call, and
again on a primary that answers "Function not found" (one promoted by a failover that never had it).

A bucket is a list: its header, then base chunks (packed rows summed by a compaction), then deltas
(packed rows appended by commits). Nothing here reads a counter: packed rows are opaque bytes, summed
by the instances (in C), so Redis does O(1) commands per bucket and step whatever the rows.

The header is "<token>:<folded>:<base>:<base_bytes>:<pending>:<rows>": a token that changes at
every compaction, how many deltas the base chunks fold, how many base chunks follow the header and
their bytes, the bytes of the deltas after them, and the rows of the base plus those of every delta
(a bound on the keys of the bucket, exact once compacted). Numbers stay far below 2^53, so Lua's
doubles hold them exactly.
]]

local function parse(header)
  local token, folded, base, base_bytes, pending, rows =
    string.match(header, '^(%x+):(%d+):(%d+):(%d+):(%d+):(%d+)$')
  if not token then
    error('flowagg: not a bucket header')
  end
  return token, tonumber(folded), tonumber(base), tonumber(base_bytes), tonumber(pending),
    tonumber(rows)
end

local function header(token, folded, base, base_bytes, pending, rows)
  return string.format('%s:%d:%d:%d:%d:%d', token, folded, base, base_bytes, pending, rows)
end

--[[
flowagg_v2_commit: append one group commit's deltas to a bucket.
  KEYS[1]      the bucket list                flowagg:v2:h:{T}:H:b
  KEYS[1 + i]  the marker of keyed delta i    flowagg:v2:idem:{T}:H:b:c:<Idempotency-Key>
  ARGV[1]      EXPIREAT of the bucket (unix seconds; 0: none), from its hour alone
  ARGV[2]      the markers' time to live, in seconds
  ARGV[3]      the token of the header, should this call create the list
  ARGV[4]      n, the number of unkeyed deltas;  ARGV[5] their rows
  ARGV[6 .. 5 + n]  those deltas
  ARGV[6 + n ..]    for each marker in KEYS order: its delta's rows, then the delta
A keyed delta is appended only if its marker did not exist, and the marker is set in the same
call: every check comes before the first write, and no write can fail after it, so the deltas,
the markers, the header and the expiry are applied together or not at all. An expiry already
past deletes the list at once: a late commit to an expired hour leaves nothing.
Returns {length of the list, base bytes, pending bytes, keyed deltas appended now}.
]]
local function commit(keys, args)
  local list, expire_at, ttl, n = keys[1], args[1], args[2], tonumber(args[4])
  local push, fresh, bytes, added = {}, {}, 0, tonumber(args[5])
  for i = 6, 5 + n do
    push[#push + 1] = args[i]
    bytes = bytes + #args[i]
  end
  for k = 2, #keys do
    if redis.call('EXISTS', keys[k]) == 0 then
      local at = 5 + n + 2 * (k - 1)
      push[#push + 1] = args[at]
      bytes = bytes + #args[at]
      added = added + tonumber(args[at - 1])
      fresh[#fresh + 1] = keys[k]
    end
  end
  local current = redis.call('LINDEX', list, 0)
  local token, folded, base, base_bytes, pending, rows = args[3], 0, 0, 0, 0, 0
  if current then
    token, folded, base, base_bytes, pending, rows = parse(current)
  end
  if #push == 0 then
    return {redis.call('LLEN', list), base_bytes, pending, 0}
  end
  if not current then
    redis.call('RPUSH', list, 'new')
  end
  local length = redis.call('RPUSH', list, unpack(push))
  redis.call('LSET', list, 0, header(token, folded, base, base_bytes, pending + bytes, rows + added))
  for _, marker in ipairs(fresh) do
    redis.call('SET', marker, '1', 'EX', ttl)
  end
  if expire_at ~= '0' then
    redis.call('EXPIREAT', list, expire_at)
  end
  return {length, base_bytes, pending + bytes, #fresh}
end

--[[
flowagg_v2_compact: fold the first elements of a bucket into new base chunks, if nothing else
folded them since they were read.
  KEYS[1]   the bucket list
  ARGV[1]   the token of the header as read;  ARGV[2] how many elements were read (header included)
  ARGV[3]   the bytes of the deltas among them;  ARGV[4] the header's rows as read
  ARGV[5]   the new token;  ARGV[6] the rows of the new base
  ARGV[7]   EXPIREAT of the bucket (0: none);  ARGV[8 ..] the new base chunks, in order
The read elements are summed in the new chunks; elements appended since stay after them. A token
that changed means another compaction came first: nothing is done, so a compaction applies at
most once, and sending it again is safe. Returns 1 if applied, else 0.
]]
local function compact(keys, args)
  local list = keys[1]
  local current = redis.call('LINDEX', list, 0)
  if not current then
    return 0
  end
  local token, folded, base, _, pending, rows = parse(current)
  if token ~= args[1] then
    return 0
  end
  local read = tonumber(args[2])
  local chunks, bytes = {}, 0
  for i = #args, 8, -1 do
    chunks[#chunks + 1] = args[i]
    bytes = bytes + #args[i]
  end
  chunks[#chunks + 1] = header(args[5], folded + read - 1 - base, #args - 7, bytes,
    pending - tonumber(args[3]), tonumber(args[6]) + rows - tonumber(args[4]))
  redis.call('LTRIM', list, read, -1)
  redis.call('LPUSH', list, unpack(chunks))
  if args[7] ~= '0' then
    redis.call('EXPIREAT', list, args[7])
  end
  return 1
end

--[[
flowagg_v2_read: what a reader that has already summed the first `seen` deltas of a bucket (the
base's and those after it) needs. ARGV[1] is `seen`, or -1 for everything.
Returns the header followed by the deltas from number `seen` on, if the base folds no more than
`seen` deltas; otherwise (or with -1) the whole list. {} if the bucket does not exist.
]]
local function read(keys, args)
  local list, seen = keys[1], tonumber(args[1])
  local current = redis.call('LINDEX', list, 0)
  if not current then
    return {}
  end
  local _, folded, base = parse(current)
  if seen < folded then
    return redis.call('LRANGE', list, 0, -1)
  end
  local rest = redis.call('LRANGE', list, base + 1 + seen - folded, -1)
  table.insert(rest, 1, current)
  return rest
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
redis.register_function{function_name = 'flowagg_v2_read', callback = read, flags = {'no-writes'}}
redis.register_function('flowagg_v2_hours', hours)

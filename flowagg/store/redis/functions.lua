#!lua name=flowagg_v1
--[[
The flowagg Redis Functions library, version 1 (flowagg/store/redis/layout.py names the keys).
FUNCTION LOAD REPLACE loads it on every primary at start-up, and again on a primary that answers
"Function not found" (one promoted by a failover that never had it).

Lua numbers are doubles, so no counter ever becomes one here: increments arrive as decimal
strings and go to HINCRBY as they are. Each counter is two integer fields: the low part, kept in
[0, 2^63-1], and the carry, the number of 2^63s on top of it. When adding to the low part
overflows (HINCRBY answers "increment or decrement would overflow" and changes nothing), 2^63 is
taken out of the low part first (low - 2^63 is in [-2^63, -1], a valid integer), the increment
added (the result is in [0, 2^63-2]) and 1 added to the carry. Nothing is checked or converted in
Lua beyond that, so the value is exact at any size.

flowagg_v1_commit: one bucket of one hour, one group commit of an instance.
  KEYS[1]       the bucket's hash                  flowagg:v1:h:{T}:H:b
  KEYS[1 + i]   the marker of keyed request i      flowagg:v1:idem:{T}:H:b:<Idempotency-Key>
  ARGV[1]       the markers' time to live, in seconds
  ARGV[2..]     contributions: the unkeyed one first, then one per keyed request (in KEYS order).
                Each is `n_small n_wide` followed by n_small times `key tx rx` (counters below
                2^63) and n_wide times `key tx_low tx_carry rx_low rx_carry`; `key` is the flow
                key's encoding, to which the tags t, T, r, R are prepended for the four fields.
  A keyed contribution is applied only if its marker did not exist (SET NX with the TTL, in the
  same call): a retry of a request applies the buckets it is missing and skips the others.
  Returns the number of keyed contributions that were applied now (the rest were already).
]]

local MINUS_2_63 = '-9223372036854775808'

-- Adds `low` (and `carry` 2^63s) to the counter of flow key `key` whose fields are tagged
-- `tag` (low part) and `carry_tag` (carry); the carry field is touched only when needed.
local function add(hash, tag, carry_tag, key, low, carry)
  local reply = redis.pcall('HINCRBY', hash, tag .. key, low)
  if type(reply) == 'table' then
    if not string.find(reply.err, 'overflow', 1, true) then
      error(reply.err) -- not a counter (another program's key): the first write fails
    end
    redis.call('HINCRBY', hash, tag .. key, MINUS_2_63)
    redis.call('HINCRBY', hash, tag .. key, low)
    redis.call('HINCRBY', hash, carry_tag .. key, 1)
  end
  if carry ~= '0' then
    redis.call('HINCRBY', hash, carry_tag .. key, carry)
  end
end

-- Applies the contribution starting at ARGV[at] if `apply`; returns the index after it.
local function contribution(hash, args, at, apply)
  local small, wide = tonumber(args[at]), tonumber(args[at + 1])
  at = at + 2
  if apply then
    for i = at, at + 3 * small - 1, 3 do
      add(hash, 't', 'T', args[i], args[i + 1], '0')
      add(hash, 'r', 'R', args[i], args[i + 2], '0')
    end
  end
  at = at + 3 * small
  if apply then
    for i = at, at + 5 * wide - 1, 5 do
      add(hash, 't', 'T', args[i], args[i + 1], args[i + 2])
      add(hash, 'r', 'R', args[i], args[i + 3], args[i + 4])
    end
  end
  return at + 5 * wide
end

local function commit(keys, args)
  local hash, ttl = keys[1], args[1]
  local at = contribution(hash, args, 2, true)
  local applied = 0
  for i = 2, #keys do
    local fresh = redis.call('SET', keys[i], '1', 'NX', 'EX', ttl)
    if fresh then
      applied = applied + 1
    end
    at = contribution(hash, args, at, fresh)
  end
  return applied
end

redis.register_function('flowagg_v1_commit', commit)

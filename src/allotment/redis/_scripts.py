"""The Lua scripts: every decision a Redis backend makes, made inside Redis.

Each script runs atomically on the server, reads the time with ``TIME`` (never a client's
clock) and works in whole microseconds: Lua numbers are doubles, exact to 2**53, and a
microsecond timestamp is below 2**51. Numbers leave a script as integers, or formatted with
``%d``: a Lua float would be truncated, and ``tostring`` loses digits.

A script raises an error reply whose message starts with ``ALLOTMENT_`` and a word (the
client maps it to an exception) before it writes anything; the maintenance it does first
(purging expired holders and waiters, granting) is correct whatever follows.

All of a manager's keys share the hash tag ``{name}``. The grant pass also pushes to the
wake-up list of the waiter's process, named in the waiter's record: a script that touches a
key it was not given, which standalone Redis and Valkey allow and a cluster does not.
"""

from __future__ import annotations

__all__ = ["GCRA", "GROUP", "MANAGER", "PAUSE", "WINDOW"]

_PRELUDE = r"""
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function fmt(n) return string.format('%d', n) end
local function ints(s)
  local out = {}
  for x in string.gmatch(s, '[^,]+') do out[#out + 1] = tonumber(x) end
  return out
end
local function csv(t)
  local parts = {}
  for i, v in ipairs(t) do parts[i] = fmt(v) end
  return table.concat(parts, ',')
end
local function fail(kind, detail)
  error({err = 'ALLOTMENT_' .. kind .. ' ' .. detail})
end
"""

_MANAGER_BODY = r"""
-- KEYS: 1 cfg (hash), 2 holders (hash id -> "token|units|last release id"),
--       3 holder expiries (zset), 4 queue (list of ids, FIFO),
--       5 wants (hash id -> "units|wake list"), 6 waiter expiries (zset),
--       7 this process's wake-up list
-- ARGV: 1 operation, 2 resource names, 3 declared capacity, 4 lease ttl (us),
--       5 waiter ttl (us), 6 key ttl (ms), 7... the operation's own
local K_CFG, K_HOLD, K_HEXP, K_QUEUE, K_WANT, K_WEXP, K_WAKE =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local op, names, declared = ARGV[1], ARGV[2], ARGV[3]
local lease_ttl, waiter_ttl, key_ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_us()

local cfg = redis.call('HMGET', K_CFG, 'names', 'declared', 'capacity', 'avail', 'seq', 'version')
local capacity, avail, seq, version
if not cfg[1] then
  -- A new (or expired, or lost) manager: declared here, whatever the call then does.
  capacity, avail, seq, version = ints(declared), ints(declared), 0, 1
  redis.call('HSET', K_CFG, 'names', names, 'declared', declared, 'capacity', declared,
             'avail', declared, 'seq', '0', 'version', '1')
else
  if cfg[1] ~= names or cfg[2] ~= declared then
    fail('CONFLICT', cfg[1] .. '=' .. cfg[2] .. '=' .. cfg[3])
  end
  capacity, avail, seq, version = ints(cfg[3]), ints(cfg[4]), tonumber(cfg[5]), tonumber(cfg[6])
end
local dirty = false

-- A holder: "token|units|last release id" (the id of the last partial release it applied:
-- a process sends its lease's ids counting up, the next only once the last was answered, so
-- a release retried after its reply was lost has an id not above it, and is not applied
-- twice; one id, however many releases).
local function units_of_holding(v)
  local bar = string.find(v, '|', 1, true)
  local second = string.find(v, '|', bar + 1, true)
  return tonumber(string.sub(v, 1, bar - 1)), string.sub(v, bar + 1, second - 1),
    string.sub(v, second + 1)
end
local function applied(last, release_id)
  return release_id ~= nil and release_id ~= '' and last ~= '' and
    tonumber(release_id) <= tonumber(last)
end
local function fits(units, have)
  for i, u in ipairs(units) do
    if u > 0 and u > have[i] then return false end
  end
  return true
end
local function add(into, units, sign)
  for i, u in ipairs(units) do into[i] = into[i] + sign * u end
  dirty = true
end
local function next_token()
  seq = math.max(seq + 1, now)
  dirty = true
  return seq
end
local function push(list, message)
  redis.call('RPUSH', list, message)
  redis.call('PEXPIRE', list, key_ttl)
end
-- A waiter's record: "units|wake list|lease ttl" (its own process's TTL for the grant).
local function parse_want(want)
  local first = string.find(want, '|', 1, true)
  local second = string.find(want, '|', first + 1, true)
  return string.sub(want, 1, first - 1), string.sub(want, first + 1, second - 1),
    tonumber(string.sub(want, second + 1))
end
local function forget_waiter(id)
  redis.call('LREM', K_QUEUE, 0, id)
  redis.call('HDEL', K_WANT, id)
  redis.call('ZREM', K_WEXP, id)
end

-- Hand-off: grant the head while it fits, and tell its process.
local function grant_pass()
  while true do
    local head = redis.call('LINDEX', K_QUEUE, 0)
    if not head then break end
    local want = redis.call('HGET', K_WANT, head)
    if not want then
      redis.call('LPOP', K_QUEUE)
    else
      local units_s, wake, ttl = parse_want(want)
      local units = ints(units_s)
      if not fits(units, avail) then break end
      forget_waiter(head)
      add(avail, units, -1)
      local token = next_token()
      redis.call('HSET', K_HOLD, head, fmt(token) .. '|' .. units_s .. '|')
      redis.call('ZADD', K_HEXP, now + ttl, head)
      push(wake, head .. '|' .. fmt(token))
    end
  end
end

-- Holders whose lease ran out give their units back; waiters that stopped renewing leave.
local function purge()
  local changed = false
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_HEXP, '-inf', now)) do
    local v = redis.call('HGET', K_HOLD, id)
    if v then
      local _, units_s = units_of_holding(v)
      add(avail, ints(units_s), 1)
      redis.call('HDEL', K_HOLD, id)
    end
    redis.call('ZREM', K_HEXP, id)
    changed = true
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_WEXP, '-inf', now)) do
    forget_waiter(id)
    changed = true
  end
  if changed then grant_pass() end
end

local function finish()
  if dirty then
    redis.call('HSET', K_CFG, 'avail', csv(avail), 'seq', fmt(seq), 'capacity', csv(capacity),
               'version', fmt(version))
  end
  for i = 1, 6 do redis.call('PEXPIRE', KEYS[i], key_ttl) end
end

-- Refusals come first: an error reply after a write would keep the write and lose the
-- figures (avail, seq) that finish() saves.
if op == 'enter' then
  for i, u in ipairs(ints(ARGV[8])) do
    if u > capacity[i] then fail('CAPACITY', csv(capacity)) end
  end
elseif op == 'release' and ARGV[8] ~= '' then
  local held = redis.call('HGET', K_HOLD, ARGV[7])
  if held and not applied(select(3, units_of_holding(held)), ARGV[9]) then
    local _, units_s = units_of_holding(held)
    local units = ints(units_s)
    for i, u in ipairs(ints(ARGV[8])) do
      if u > units[i] then fail('EXCEEDS', units_s) end
    end
  end
end

local result
purge()
if op == 'enter' then
  -- ARGV 7 id, 8 units, 9 wait (1/0)
  local id, units_s = ARGV[7], ARGV[8]
  local units = ints(units_s)
  if redis.call('LLEN', K_QUEUE) == 0 and fits(units, avail) then
    add(avail, units, -1)
    local token = next_token()
    redis.call('HSET', K_HOLD, id, fmt(token) .. '|' .. units_s .. '|')
    redis.call('ZADD', K_HEXP, now + lease_ttl, id)
    result = {1, fmt(token)}
  elseif ARGV[9] == '1' then
    redis.call('RPUSH', K_QUEUE, id)
    redis.call('HSET', K_WANT, id, units_s .. '|' .. K_WAKE .. '|' .. fmt(lease_ttl))
    redis.call('ZADD', K_WEXP, now + waiter_ttl, id)
    result = {0, '0'}
  else
    result = {-1, '0'}
  end
elseif op == 'withdraw' or op == 'release' then
  -- ARGV 7 id, 8 part ('' for everything; release only), 9 the partial release's id
  local id, part_s, release_id = ARGV[7], ARGV[8], ARGV[9]
  local held = redis.call('HGET', K_HOLD, id)
  if held then
    local token, units_s, ids = units_of_holding(held)
    if op == 'withdraw' then
      result = {1, fmt(token)}
    elseif part_s ~= '' and applied(ids, release_id) then
      result = {2, fmt(token)}  -- a retry: applied already, nothing more given back
    else
      local units = ints(units_s)
      local part = units
      if part_s ~= '' then part = ints(part_s) end  -- checked above, before any write
      add(avail, part, 1)
      local rest = {}
      local any = false
      for i, u in ipairs(units) do
        rest[i] = u - part[i]
        if rest[i] > 0 then any = true end
      end
      if any then
        if part_s ~= '' and release_id ~= nil and release_id ~= '' then
          ids = release_id
        end
        redis.call('HSET', K_HOLD, id, fmt(token) .. '|' .. csv(rest) .. '|' .. ids)
      else
        redis.call('HDEL', K_HOLD, id)
        redis.call('ZREM', K_HEXP, id)
      end
      grant_pass()
      result = {1, fmt(token)}
    end
  elseif redis.call('HEXISTS', K_WANT, id) == 1 then
    forget_waiter(id)
    grant_pass()
    result = {0, '0'}
  else
    result = {-1, '0'}
  end
elseif op == 'status' then
  -- ARGV 7... waiter ids: granted (token), queued (0, its expiry renewed) or gone (-1)
  result = {}
  for i = 7, #ARGV do
    local id = ARGV[i]
    local held = redis.call('HGET', K_HOLD, id)
    if held then
      local token = units_of_holding(held)
      result[#result + 1] = fmt(token)
    elseif redis.call('HEXISTS', K_WANT, id) == 1 then
      redis.call('ZADD', K_WEXP, now + waiter_ttl, id)
      result[#result + 1] = '0'
    else
      result[#result + 1] = '-1'
    end
  end
elseif op == 'renew' then
  -- ARGV 7... holder ids: renewed, or reported lost
  result = {}
  for i = 7, #ARGV do
    local id = ARGV[i]
    if redis.call('HEXISTS', K_HOLD, id) == 1 then
      redis.call('ZADD', K_HEXP, now + lease_ttl, id)
    else
      result[#result + 1] = id
    end
  end
elseif op == 'split' then
  -- ARGV 7 id, then (part id, units) pairs: the parts become holders with the same token
  local id = ARGV[7]
  local held = redis.call('HGET', K_HOLD, id)
  if held then
    local token, units_s, ids = units_of_holding(held)
    local units = ints(units_s)
    local expiry = redis.call('ZSCORE', K_HEXP, id)
    for i = 8, #ARGV, 2 do
      local part = ints(ARGV[i + 1])
      for j, u in ipairs(part) do units[j] = units[j] - u end
      redis.call('HSET', K_HOLD, ARGV[i], fmt(token) .. '|' .. ARGV[i + 1] .. '|')
      redis.call('ZADD', K_HEXP, expiry, ARGV[i])
    end
    redis.call('HSET', K_HOLD, id, fmt(token) .. '|' .. csv(units) .. '|' .. ids)
    result = 1
  else
    result = 0
  end
elseif op == 'resize' then
  -- ARGV 7 the version read, 8 the new capacity: refused if another resize came between
  if tonumber(ARGV[7]) ~= version then
    result = {0, csv(capacity), fmt(version)}
  else
    local new = ints(ARGV[8])
    for i, c in ipairs(new) do avail[i] = avail[i] + c - capacity[i] end
    capacity = new
    version = version + 1
    dirty = true
    for _, id in ipairs(redis.call('LRANGE', K_QUEUE, 0, -1)) do
      local want = redis.call('HGET', K_WANT, id)
      if want then
        local units_s, wake = parse_want(want)
        local units = ints(units_s)
        for i, u in ipairs(units) do
          if u > capacity[i] then
            forget_waiter(id)
            push(wake, id .. '|!' .. csv(capacity))
            break
          end
        end
      end
    end
    grant_pass()
    result = {1, csv(capacity), fmt(version)}
  end
elseif op == 'snapshot' then
  result = {csv(capacity), csv(avail), fmt(version), redis.call('HLEN', K_HOLD),
            redis.call('LLEN', K_QUEUE)}
else
  fail('OPERATION', op)
end
finish()
return result
"""
MANAGER = _PRELUDE + _MANAGER_BODY

_GCRA_BODY = r"""
-- KEYS: 1 the limit's state: a string "tat|settings" (tat: the theoretical arrival time, us)
-- ARGV: 1 operation, 2 settings ("interval,burst" in us), 3 interval (us), 4 burst,
--       5... the operation's own
-- One string, not a hash: a decision is GET, TIME and SET ... PX, three calls, the fewest.
local K = KEYS[1]
local op, settings = ARGV[1], ARGV[2]
local interval, burst = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_us()
local raw = redis.call('GET', K)
local stored_tat
if raw then
  local bar = string.find(raw, '|', 1, true)
  local stored_settings = string.sub(raw, bar + 1)
  if stored_settings ~= settings then fail('CONFLICT', stored_settings) end
  stored_tat = string.sub(raw, 1, bar - 1)
end
local tat = now
if stored_tat then tat = math.max(tonumber(stored_tat), now) end
local tolerance = burst * interval

local function store(new_tat)
  -- The key lives while the bucket is not full again: idle limits vanish.
  local ttl_ms = math.ceil((new_tat - now) / 1000)
  if ttl_ms < 1 then
    redis.call('DEL', K)
  else
    redis.call('SET', K, fmt(new_tat) .. '|' .. settings, 'PX', ttl_ms + 1000)
  end
end

if op == 'take' then
  -- ARGV 5 cost, 6 the longest wait (us; -1: any): granted now (1), reserved (0, after the
  -- wait) or refused (-1); with the tat before and after, to undo the grant exactly
  local cost, longest = tonumber(ARGV[5]), tonumber(ARGV[6])
  local allow_at = tat + cost * interval - tolerance
  if allow_at < now then allow_at = now end
  local wait = allow_at - now
  if wait == 0 or longest < 0 or wait <= longest then
    local after = tat + cost * interval
    store(after)
    local code = 1
    if wait > 0 then code = 0 end
    return {code, fmt(wait), fmt(tat), fmt(after)}
  end
  return {-1, fmt(wait), '0', '0'}
elseif op == 'undo' then
  -- ARGV 5 tat before, 6 tat after: taken back only if nothing was granted since
  if stored_tat and stored_tat == ARGV[6] then
    local before = tonumber(ARGV[5])
    store(before)
    return 1
  end
  return 0
elseif op == 'charge' then
  store(tat + tonumber(ARGV[5]) * interval)
  return 1
elseif op == 'peek' then
  -- ARGV 5 cost: the wait until it would be allowed, and the units allowed now
  local cost = tonumber(ARGV[5])
  local wait = tat + cost * interval - tolerance - now
  if wait < 0 then wait = 0 end
  local free = math.floor((now + tolerance - tat) / interval)
  if free < 0 then free = 0 end
  return {fmt(wait), fmt(free)}
elseif op == 'declare' then
  return 1
end
fail('OPERATION', op)
"""
GCRA = _PRELUDE + _GCRA_BODY

_WINDOW_BODY = r"""
-- KEYS: 1 settings and sequence (hash), 2 the log (zset: "seq:units" scored by its time, us)
-- ARGV: 1 operation, 2 settings ("limit,window"), 3 limit, 4 window (us), 5... its own
local K_CFG, K_LOG = KEYS[1], KEYS[2]
local op, settings = ARGV[1], ARGV[2]
local limit, window = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_us()
local stored = redis.call('HGET', K_CFG, 'settings')
if stored and stored ~= settings then fail('CONFLICT', stored) end
local function units_of(member)
  return tonumber(string.sub(member, string.find(member, ':', 1, true) + 1))
end
-- ``total`` (in the settings hash) is the units in the log: kept as entries come and go, so
-- that a decision reads only what expires and, when over the limit, the oldest entries it
-- must wait for; never the whole log.
local total = tonumber(redis.call('HGET', K_CFG, 'total') or '0')
-- A unit at t counts in the windows (s - window, s] that hold t: gone once t <= now - window.
local expired = redis.call('ZRANGEBYSCORE', K_LOG, '-inf', now - window)
if #expired > 0 then
  for _, member in ipairs(expired) do total = total - units_of(member) end
  redis.call('ZREMRANGEBYSCORE', K_LOG, '-inf', now - window)
  redis.call('HSET', K_CFG, 'total', fmt(total))
end

-- The earliest time at or after now, and after every entry (FIFO), at which cost fits.
local function earliest(cost)
  local at = now
  local last = redis.call('ZRANGE', K_LOG, -1, -1, 'WITHSCORES')
  if #last > 0 then at = math.max(at, tonumber(last[2])) end
  local left = total
  local start = 0
  while left + cost > limit do
    local page = redis.call('ZRANGE', K_LOG, start, start + 63, 'WITHSCORES')
    if #page == 0 then break end
    for i = 1, #page, 2 do
      if left + cost <= limit then break end
      left = left - units_of(page[i])
      at = math.max(at, tonumber(page[i + 1]) + window)
    end
    start = start + 64
  end
  return at
end
local function record(at, cost)
  local seq = redis.call('HINCRBY', K_CFG, 'seq', 1)
  -- Zero-padded: members of one time sort by sequence, so the last recorded is last.
  local member = string.format('%015d', seq) .. ':' .. fmt(cost)
  redis.call('ZADD', K_LOG, at, member)
  total = total + cost
  redis.call('HSET', K_CFG, 'settings', settings, 'total', fmt(total))
  local last = redis.call('ZRANGE', K_LOG, -1, -1, 'WITHSCORES')
  local ttl_ms = math.ceil((tonumber(last[2]) + window - now) / 1000) + 1000
  redis.call('PEXPIRE', K_LOG, ttl_ms)
  redis.call('PEXPIRE', K_CFG, ttl_ms)
  return member
end

if op == 'take' then
  -- ARGV 5 cost, 6 the longest wait (us; -1: any)
  local cost, longest = tonumber(ARGV[5]), tonumber(ARGV[6])
  local at = earliest(cost)
  local wait = at - now
  if wait == 0 or longest < 0 or wait <= longest then
    local member = record(at, cost)
    local code = 1
    if wait > 0 then code = 0 end
    return {code, fmt(wait), member}
  end
  return {-1, fmt(wait), ''}
elseif op == 'undo' then
  -- ARGV 5 member: taken back only if nothing was recorded after it
  local last = redis.call('ZRANGE', K_LOG, -1, -1)
  if last[1] == ARGV[5] then
    redis.call('ZREM', K_LOG, ARGV[5])
    redis.call('HSET', K_CFG, 'total', fmt(total - units_of(ARGV[5])))
    return 1
  end
  return 0
elseif op == 'charge' then
  local at = now
  local last = redis.call('ZRANGE', K_LOG, -1, -1, 'WITHSCORES')
  if #last > 0 then at = math.max(at, tonumber(last[2])) end
  record(at, tonumber(ARGV[5]))
  return 1
elseif op == 'peek' then
  -- ARGV 5 cost: the wait until it would be allowed, and the units allowed now (none while
  -- a reservation is ahead)
  local at = earliest(tonumber(ARGV[5]))
  local free = limit - total
  local last = redis.call('ZRANGE', K_LOG, -1, -1, 'WITHSCORES')
  if free < 0 or (#last > 0 and tonumber(last[2]) > now) then free = 0 end
  return {fmt(at - now), fmt(free)}
elseif op == 'declare' then
  return 1
end
fail('OPERATION', op)
"""
WINDOW = _PRELUDE + _WINDOW_BODY

PAUSE = (
    _PRELUDE
    + r"""
-- Nothing allowed on a rate limit before now + a pause (a server said to wait): the state
-- moves forward once, as the in-memory rules do. Reservations already made keep their times.
-- KEYS: a GCRA's state, or a window's settings and log. ARGV: 1 settings, 2 and 3 the
-- figures (GCRA: interval (us), burst; window: limit, window (us)), 4 the pause (us)
local settings = ARGV[1]
local a, b = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_us()
local hold = now + tonumber(ARGV[4])
if #KEYS == 1 then
  local raw = redis.call('GET', KEYS[1])
  local tat = now
  if raw then
    local bar = string.find(raw, '|', 1, true)
    local stored = string.sub(raw, bar + 1)
    if stored ~= settings then fail('CONFLICT', stored) end
    tat = math.max(tonumber(string.sub(raw, 1, bar - 1)), now)
  end
  -- One unit allowed at the end of the pause, as Gcra.hold_until.
  local floor = hold + b * a - a
  if floor <= tat then return 0 end
  local ttl_ms = math.ceil((floor - now) / 1000) + 1000
  redis.call('SET', KEYS[1], fmt(floor) .. '|' .. settings, 'PX', ttl_ms)
  return 1
end
local stored = redis.call('HGET', KEYS[1], 'settings')
if stored and stored ~= settings then fail('CONFLICT', stored) end
-- A full window logged at hold - window, as SlidingWindow.hold_until.
local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('ZADD', KEYS[2], hold - b, string.format('%015d', seq) .. ':' .. fmt(a))
redis.call('HSET', KEYS[1], 'settings', settings, 'total', fmt(total + a))
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
local ttl_ms = math.ceil((tonumber(last[2]) + b - now) / 1000) + 1000
redis.call('PEXPIRE', KEYS[2], ttl_ms)
redis.call('PEXPIRE', KEYS[1], ttl_ms)
return 1
"""
)


def _as_function(name: str, body: str) -> str:
    """A script's body as a local function of its own ``KEYS`` and ``ARGV`` (parameters
    that shadow the globals), so that one script can run the others' operations."""
    return f"local function {name}(KEYS, ARGV)\n{body}\nend\n"


GROUP = (
    _PRELUDE
    + _as_function("manager", _MANAGER_BODY)
    + _as_function("gcra", _GCRA_BODY)
    + _as_function("window", _WINDOW_BODY)
    + r"""
-- acquire_all of parts on one server, in one round trip: every part is the operation its own
-- script would run, on its own keys (the names' hash tags differ, so a cluster would refuse
-- this; the backend takes only single-node clients).
-- KEYS: every part's keys, part after part (a manager's 7, a GCRA's 1, a window's 2)
-- ARGV: 1 operation, 2 the layout ("kind:keys:args" per part, comma-separated; kind m, g or
--       w), 3... every part's own ARGV, part after part, as its own script takes them
local op = ARGV[1]
local parts = {}
local k, a = 1, 3
for item in string.gmatch(ARGV[2], '[^,]+') do
  local kind, nk, na = string.match(item, '^(%a):(%d+):(%d+)$')
  nk, na = tonumber(nk), tonumber(na)
  local keys, args = {}, {}
  for i = 1, nk do keys[i] = KEYS[k + i - 1] end
  for i = 1, na do args[i] = ARGV[a + i - 1] end
  k, a = k + nk, a + na
  parts[#parts + 1] = {kind, keys, args}
end
local run = {m = manager, g = gcra, w = window}

if op == 'release-all' then
  -- Each part a manager's full release by id: each one's code, in order.
  local codes = {}
  for i, part in ipairs(parts) do codes[i] = manager(part[2], part[3])[1] end
  return codes
elseif op ~= 'take-all' then
  fail('OPERATION', op)
end

-- take-all: each part's ARGV is a try of its own script (manager: enter with wait 0; limiter:
-- take with the longest wait 0). First read only: each part must be granted now (a manager:
-- declared as this process declares it, nobody queued, the units available; a limiter: the
-- same settings, the cost allowed now). Otherwise answer {0} having written nothing: the
-- client takes the general path, which queues in FIFO order and words any error.
local now = now_us()
for _, part in ipairs(parts) do
  local kind, keys, args = part[1], part[2], part[3]
  if kind == 'm' then
    local cfg = redis.call('HMGET', keys[1], 'names', 'declared', 'capacity', 'avail')
    local capacity, avail = ints(args[3]), ints(args[3])
    if cfg[1] then
      if cfg[1] ~= args[2] or cfg[2] ~= args[3] then return {0} end
      capacity, avail = ints(cfg[3]), ints(cfg[4])
    end
    if redis.call('LLEN', keys[4]) > 0 then return {0} end
    for i, u in ipairs(ints(args[8])) do
      if u > capacity[i] or u > avail[i] then return {0} end
    end
  elseif kind == 'g' then
    local raw = redis.call('GET', keys[1])
    local tat = now
    if raw then
      local bar = string.find(raw, '|', 1, true)
      if string.sub(raw, bar + 1) ~= args[2] then return {0} end
      tat = math.max(tonumber(string.sub(raw, 1, bar - 1)), now)
    end
    local interval, burst = tonumber(args[3]), tonumber(args[4])
    if tat + tonumber(args[5]) * interval - burst * interval > now then return {0} end
  else
    local stored = redis.call('HGET', keys[1], 'settings')
    if stored and stored ~= args[2] then return {0} end
    local total = tonumber(redis.call('HGET', keys[1], 'total') or '0')
    local gone = redis.call('ZRANGEBYSCORE', keys[2], '-inf', now - tonumber(args[4]))
    for _, member in ipairs(gone) do
      total = total - tonumber(string.sub(member, string.find(member, ':', 1, true) + 1))
    end
    local last = redis.call('ZRANGE', keys[2], -1, -1, 'WITHSCORES')
    if #last > 0 and tonumber(last[2]) > now then return {0} end
    if total + tonumber(args[5]) > tonumber(args[3]) then return {0} end
  end
end

-- Then each part's own operation, in rank order: each is granted (a later TIME only frees
-- more). Should one not be, those done are undone here and the answer is {0} all the same.
local replies = {1}
for i, part in ipairs(parts) do
  local kind, keys, args = part[1], part[2], part[3]
  local reply = run[kind](keys, args)
  if reply[1] ~= 1 then
    for j = i - 1, 1, -1 do
      local done, given = parts[j], replies[j + 1]
      local back = {done[3][1], done[3][2], done[3][3], done[3][4]}
      if done[1] == 'm' then
        back = {'release', done[3][2], done[3][3], done[3][4], done[3][5], done[3][6],
                done[3][7], ''}
        manager(done[2], back)
      else
        back[1] = 'undo'
        back[5], back[6] = given[3], given[4]
        run[done[1]](done[2], back)
      end
    end
    return {0}
  end
  replies[#replies + 1] = reply
end
return replies
"""
)

"""The Lua scripts of the queue; each is one atomic step on Redis."""

# Each script is headed by what its KEYS and ARGV slots hold. Every key comes from `Keys` and is
# declared in KEYS, except result keys named by a job id found inside the script: those are built
# from ARGV's result-key prefix, which carries the model's hash tag, so they share the slot.

# Refuse when full, else append: the limit check and the push are one step, so the queue never
# exceeds its limit however many web servers push at once. The job's pixels were SET just before, in the
# same pipeline; a job whose pixels are not there (that SET failed: Redis out of memory) is not queued.
#   KEYS[1] queue          KEYS[2] pixels:<job id>      ARGV[1] the job's header (Job.message)
#   ARGV[2] queue limit    Returns 1 (queued), 0 (full) or -1 (no pixels)
ENQUEUE = """
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[1])
return 1
"""

# Move messages to the worker's processing list in one step, so two workers can never claim the same
# message. LMOVE moves each message itself: Redis allocates no second copy of its pixels, and the
# append-only file and replicas receive a short LMOVE instead of the message again. A job recovered from
# a dead worker (the retry list) is claimed alone: if it is what kills workers, no batch-mate is blamed.
# Otherwise up to ARGV[1] jobs, the interactive queue first, then task (bulk) jobs to fill the batch.
#   KEYS[1] queue          KEYS[2] processing:<worker>  KEYS[3] retry    KEYS[4] bulk
#   ARGV[1] most messages to move
CLAIM = """
local function move(source, count, items)
  for _ = 1, count do
    local item = redis.call('LMOVE', source, KEYS[2], 'LEFT', 'RIGHT')
    if not item then break end
    items[#items + 1] = item
  end
  return items
end
local retried = move(KEYS[3], 1, {})
if #retried > 0 then return retried end
local wanted = tonumber(ARGV[1])
local items = move(KEYS[1], wanted, {})
return move(KEYS[4], wanted - #items, items)
"""

# Record a heartbeat at Redis' own clock (no skew between machines) and keep the info hash alive.
#   KEYS[1] workers (zset) KEYS[2] worker:<worker> (hash)
#   ARGV[1] worker id      ARGV[2] JSON list of info field, value pairs   ARGV[3] info TTL (s)
HEARTBEAT = """
local now = redis.call('TIME')
local now_s = tonumber(now[1]) + tonumber(now[2]) / 1e6
redis.call('ZADD', KEYS[1], now_s, ARGV[1])
redis.call('HSET', KEYS[2], 'last_heartbeat', now_s, unpack(cjson.decode(ARGV[2])))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
return 1
"""

# The workers whose heartbeat is younger (ARGV[2] = 1) or older (ARGV[2] = 0) than ARGV[1] s.
#   KEYS[1] workers (zset) ARGV[1] heartbeat TTL (s)    ARGV[2] 1 for live, 0 for dead
WORKERS_BY_AGE = """
local now = redis.call('TIME')
local cutoff = tonumber(now[1]) + tonumber(now[2]) / 1e6 - tonumber(ARGV[1])
if ARGV[2] == '1' then return redis.call('ZRANGEBYSCORE', KEYS[1], cutoff, '+inf') end
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. cutoff)
"""

# Recover what one dead worker held, if it is still silent: unexpired messages go to the retry
# list (each is claimed alone from there) with attempts + 1; a message claimed ARGV[3] times
# already (or unreadable) goes to the dead-letter list, and its client gets the failure result
# ARGV[6] with its id filled in.
#   KEYS[1] workers (zset) KEYS[2] retry    KEYS[3] dead letter    KEYS[4] processing:<worker>
#   ARGV[1] worker id      ARGV[2] heartbeat TTL (s)   ARGV[3] max attempts   ARGV[4] now (unix s)
#   ARGV[5] result TTL (s) ARGV[6] encoded failure Result (id "")   ARGV[7] result key prefix
# Returns {requeued, dead_lettered, expired}.
REQUEUE_DEAD = """
local now = redis.call('TIME')
local beat = redis.call('ZSCORE', KEYS[1], ARGV[1])
if beat and tonumber(beat) > tonumber(now[1]) + tonumber(now[2]) / 1e6 - tonumber(ARGV[2]) then
  return {0, 0, 0}
end
local requeued, lettered, expired = 0, 0, 0
local items = redis.call('LRANGE', KEYS[4], 0, -1)
for i = #items, 1, -1 do
  local newline = string.find(items[i], '\\n', 1, true)
  local ok, job = pcall(cjson.decode, string.sub(items[i], 1, (newline or 1) - 1))
  if not ok or not newline then
    lettered = lettered + 1
    redis.call('LPUSH', KEYS[3], items[i])
  elseif tonumber(job['deadline']) < tonumber(ARGV[4]) then
    expired = expired + 1
  elseif tonumber(job['attempts'] or 0) + 1 >= tonumber(ARGV[3]) then
    lettered = lettered + 1
    redis.call('LPUSH', KEYS[3], items[i])
    local result = cjson.decode(ARGV[6])
    result['id'] = job['id']
    redis.call('LPUSH', ARGV[7] .. job['id'], cjson.encode(result))
    redis.call('EXPIRE', ARGV[7] .. job['id'], tonumber(ARGV[5]))
  else
    job['attempts'] = tonumber(job['attempts'] or 0) + 1
    redis.call('LPUSH', KEYS[2], cjson.encode(job) .. string.sub(items[i], newline))
    requeued = requeued + 1
  end
end
redis.call('DEL', KEYS[4])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[3], 0, 999)
return {requeued, lettered, expired}
"""

# Put everything a stopping worker still holds back at the queue head, in order.
#   KEYS[1] processing:<worker>   KEYS[2] queue   KEYS[3] workers (zset)   ARGV[1] worker id
RELEASE = """
local items = redis.call('LRANGE', KEYS[1], 0, -1)
for i = #items, 1, -1 do redis.call('LPUSH', KEYS[2], items[i]) end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return #items
"""


# Store results in the cache of identical images within CACHE_MAX_MB (per model version). Each entry
# counts its bytes (value + key + ARGV[3] of Redis' own overhead) in the sizes hash, whose field ""
# holds the total, and its expiry time in the index. Entries past it are forgotten first (64 a call at
# most), then the entries that expire first, the oldest, are dropped until the new one fits; an entry
# bigger than the cap is not stored. Cache keys of dropped entries are built from ARGV[4], which carries
# the model's hash tag. Returns how many entries were stored.
#   KEYS[1] cache index (zset)   KEYS[2] cache sizes (hash)   KEYS[3..] cache:<digest> of each entry
#   ARGV[1] TTL (s)   ARGV[2] cap (bytes)   ARGV[3] overhead per entry (bytes)   ARGV[4] cache key prefix
#   ARGV[5..] digest, encoded result of each entry, in the order of KEYS[3..]
CACHE_PUT = """
local ttl, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000   -- microseconds: entries of one second keep their order
local total = tonumber(redis.call('HGET', KEYS[2], '') or '0')
local function drop(digest)
  total = total - tonumber(redis.call('HGET', KEYS[2], digest) or '0')
  redis.call('HDEL', KEYS[2], digest)
  redis.call('ZREM', KEYS[1], digest)
  redis.call('DEL', ARGV[4] .. digest)
end
for _, digest in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 64)) do drop(digest) end
local stored = 0
for i = 3, #KEYS do
  local digest, value = ARGV[2 * i - 1], ARGV[2 * i]
  local size = #value + #KEYS[i] + tonumber(ARGV[3])
  if size <= cap then
    drop(digest)
    while total + size > cap do
      local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '+inf', 'LIMIT', 0, 1)
      if #oldest == 0 then total = 0 break end
      drop(oldest[1])
    end
    redis.call('SET', KEYS[i], value, 'EX', ttl)
    redis.call('ZADD', KEYS[1], now + ttl, digest)
    redis.call('HSET', KEYS[2], digest, size)
    total = total + size
    stored = stored + 1
  end
end
redis.call('HSET', KEYS[2], '', total)
for k = 1, 2 do
  if redis.call('TTL', KEYS[k]) < ttl then redis.call('EXPIRE', KEYS[k], ttl) end
end
return stored
"""

# ------------------------------------------------------------------ tasks (protocol/tasks.py)
# Take the next unit and record it as in flight for this feeder.
#   KEYS[1] units (list)   KEYS[2] in flight (hash unit -> feeder)   ARGV[1] feeder id
TAKE_UNIT = """
local unit = redis.call('LPOP', KEYS[1])
if unit then redis.call('HSET', KEYS[2], unit, ARGV[1]) end
return unit
"""

# Hold the lease (take it when free, renew it when ours); when newly taken, units in flight under
# another (dead) feeder go back to the head of the units list. Returns 0 (not ours), 1 (renewed), 2 (taken).
#   KEYS[1] lease   KEYS[2] units   KEYS[3] in flight   ARGV[1] feeder id   ARGV[2] lease ms
LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
if holder then return 1 end
local flight = redis.call('HGETALL', KEYS[3])
for i = 1, #flight, 2 do
  if flight[i + 1] ~= ARGV[1] then
    redis.call('LPUSH', KEYS[2], flight[i])
    redis.call('HDEL', KEYS[3], flight[i])
  end
end
return 2
"""

# Store a unit's result unless the task was cancelled; count it; finish the task after its last unit.
# Returns 0 (not stored), 1 (stored), 2 (stored, and the task is DONE: the caller drops it from the
# active set, which lives in another cluster slot).
#   KEYS[1] meta   KEYS[2] results   KEYS[3] in flight   KEYS[4] images
#   ARGV[1] unit   ARGV[2] result JSON   ARGV[3] 1 if it failed
FINISH_UNIT = """
if redis.call('HGET', KEYS[1], 'state') ~= 'RUNNING' then return 0 end
if redis.call('HDEL', KEYS[3], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local done = redis.call('HINCRBY', KEYS[1], 'done', 1)
if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[1], 'failed', 1) end
if done >= tonumber(redis.call('HGET', KEYS[1], 'total')) then
  redis.call('HSET', KEYS[1], 'state', 'DONE')
  redis.call('DEL', KEYS[4])
  return 2
end
return 1
"""

# ------------------------------------------------------------------ quotas (protocol/ratelimit.py)
# GCRA (the generic cell rate algorithm): one key per client holds the theoretical arrival time (TAT)
# in ms at Redis' clock, shared by every web server. A request costs one emission interval; it is
# allowed while the TAT it would leave is at most `burst` intervals ahead of now. Cost 0 only looks.
#   KEYS[1] rate:<client>   ARGV[1] emission interval (ms, 1000 / rate)   ARGV[2] burst (requests at once)
#   ARGV[3] cost (1: take one request, 0: look)
# Returns {allowed (1/0), requests left now, ms until the next is allowed (0 when allowed), ms until full}.
GCRA = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local interval, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local limit = interval * burst
local new_tat = tat + interval * cost
if new_tat - now > limit then
  return {0, math.max(0, math.floor((limit - (tat - now)) / interval)), math.ceil(new_tat - now - limit),
          math.ceil(tat - now)}
end
if cost > 0 then
  redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1)
end
return {1, math.max(0, math.floor((limit - (new_tat - now)) / interval)), 0, math.ceil(new_tat - now)}
"""

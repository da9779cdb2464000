-- The Redis queue's Lua: shared functions, then one script per operation (`-- script: NAME`).
-- node/queue/redis.py prepends `local P, GROUP = <key prefix>, <consumer group>` to each script.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local function key(...) return P .. table.concat({...}, ':') end
local function topic_of(id) return redis.call('HGET', key('job', id), 'topic') end  -- false: no such job

local function enqueue(topic, id)  -- claimable now, as a fresh stream entry
  redis.call('HSET', key('job', id), 'entry', redis.call('XADD', key(topic, 'stream'), '*', 'job', id))
end

local function drop_entry(topic, id)  -- off the stream, and no longer leased
  local entry = redis.call('HGET', key('job', id), 'entry')
  if entry and entry ~= '' then
    redis.call('XACK', key(topic, 'stream'), GROUP, entry)
    redis.call('XDEL', key(topic, 'stream'), entry)
    redis.call('HSET', key('job', id), 'entry', '')
  end
end

local function finish(topic, id)  -- no longer unfinished: its key is free again
  local job_key = redis.call('HGET', key('job', id), 'key')
  if redis.call('HGET', key(topic, 'keys'), job_key) == id then redis.call('HDEL', key(topic, 'keys'), job_key) end
  redis.call('ZREM', key(topic, 'created'), id)
  redis.call('ZREM', key(topic, 'delayed'), id)
  drop_entry(topic, id)
end

local function put(topic, job_key, payload, max_depth)  -- 1 queued, 0 key unfinished already, -1 topic full
  if redis.call('HEXISTS', key(topic, 'keys'), job_key) == 1 then return 0 end
  if max_depth and redis.call('ZCARD', key(topic, 'created')) >= max_depth then return -1 end
  local id = tostring(redis.call('INCR', key('next-id')))
  redis.call('HSET', key('job', id), 'topic', topic, 'key', job_key, 'payload', payload, 'attempts', 0,
             'created_at', now, 'error', '')
  redis.call('HSET', key(topic, 'keys'), job_key, id)
  redis.call('ZADD', key(topic, 'created'), now, id)
  enqueue(topic, id)
  return 1
end

local function bury(topic, id, reason)
  finish(topic, id)
  redis.call('HSET', key('job', id), 'error', reason, 'letter', redis.call('XADD', key(topic, 'dead'), '*', 'job', id))
end

local function unfinished(id)  -- the job's topic while it is queued, delayed or leased, else false
  local topic = topic_of(id)
  return topic and redis.call('ZSCORE', key(topic, 'created'), id) and topic
end

local function give_back(topic, consumer, pending, refund)  -- its `pending` leases of topic, back to the queue
  if pending == 0 then return end
  local stream = key(topic, 'stream')
  for _, lease in ipairs(redis.call('XPENDING', stream, GROUP, '-', '+', pending, consumer)) do
    local id = redis.call('XRANGE', stream, lease[1], lease[1])[1][2][2]
    drop_entry(topic, id)
    if refund then redis.call('HINCRBY', key('job', id), 'attempts', -1) end
    enqueue(topic, id)
  end
end

-- Leases of consumers gone (closed) or presumed dead (heartbeat older than `timeout`) back to the queue; the
-- attempt counts.  Right after a broker restart every heartbeat is old: nobody is presumed dead before the broker
-- has been up for `timeout`, time enough for the live consumers to beat again.
local function return_orphans(topic, me, timeout)
  local uptime = tonumber(string.match(redis.call('INFO', 'server'), 'uptime_in_seconds:(%d+)'))
  local stream = key(topic, 'stream')
  for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', stream, GROUP)) do
    local name, pending = consumer[2], consumer[4]
    local seen = redis.call('ZSCORE', key('consumers'), name)
    if name ~= me and (not seen or (uptime >= timeout and tonumber(seen) < now - timeout)) then
      give_back(topic, name, pending, false)
      redis.call('XGROUP', 'DELCONSUMER', stream, GROUP, name)
      redis.call('ZREM', key('consumers'), name)
    end
  end
end

-- script: put
return put(ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]))

-- script: heartbeat
redis.call('ZADD', key('consumers'), now, ARGV[1])

-- script: claim
local topic, me, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local stream = key(topic, 'stream')
redis.call('ZADD', key('consumers'), now, me)
for _, id in ipairs(redis.call('ZRANGEBYSCORE', key(topic, 'delayed'), '-inf', now)) do
  redis.call('ZREM', key(topic, 'delayed'), id)
  enqueue(topic, id)
end
return_orphans(topic, me, tonumber(ARGV[6]))
local jobs, buried = {}, {}
local function lease(id)
  local attempts = redis.call('HINCRBY', key('job', id), 'attempts', 1)
  local job = redis.call('HMGET', key('job', id), 'key', 'payload', 'created_at')
  table.insert(jobs, {id, job[1], job[2], attempts, job[3]})
end
for _, entry in ipairs(redis.call('XAUTOCLAIM', stream, GROUP, me, ARGV[4], '0-0', 'COUNT', limit)[2]) do
  local id = entry[2][2]  -- its lease expired: its consumer is stuck, or died and has not been noticed yet
  local attempts = tonumber(redis.call('HGET', key('job', id), 'attempts'))
  if attempts >= tonumber(ARGV[5]) then
    bury(topic, id, 'attempts exhausted (last lease expired)')
    table.insert(buried, {redis.call('HGET', key('job', id), 'key'), attempts})
  else
    lease(id)
  end
end
if #jobs < limit then
  local new = redis.call('XREADGROUP', 'GROUP', GROUP, me, 'COUNT', limit - #jobs, 'STREAMS', stream, '>')
  if new then for _, entry in ipairs(new[1][2]) do lease(entry[2][2]) end end
end
return {jobs, buried}

-- script: complete
local topic = topic_of(ARGV[1])
if topic then  -- a late completion of a job dead-lettered meanwhile: the work is done, the letter goes
  finish(topic, ARGV[1])
  redis.call('XDEL', key(topic, 'dead'), redis.call('HGET', key('job', ARGV[1]), 'letter') or '0-0')
  redis.call('DEL', key('job', ARGV[1]))
end
for i = 2, #ARGV, 3 do put(ARGV[i], ARGV[i + 1], ARGV[i + 2]) end

-- script: retry
local topic = unfinished(ARGV[1])
if not topic then return end
if ARGV[4] == '1' then return bury(topic, ARGV[1], ARGV[2]) end
drop_entry(topic, ARGV[1])
redis.call('HSET', key('job', ARGV[1]), 'error', ARGV[2])
redis.call('ZADD', key(topic, 'delayed'), now + tonumber(ARGV[3]), ARGV[1])

-- script: bury
local topic = unfinished(ARGV[1]); if topic then bury(topic, ARGV[1], ARGV[2]) end

-- script: release
for _, id in ipairs(ARGV) do
  local topic = unfinished(id)
  local entry = topic and redis.call('HGET', key('job', id), 'entry')
  if entry and entry ~= '' and redis.call('XACK', key(topic, 'stream'), GROUP, entry) == 1 then
    redis.call('XDEL', key(topic, 'stream'), entry)
    redis.call('HINCRBY', key('job', id), 'attempts', -1)
    enqueue(topic, id)
  end
end

-- script: requeue_dead
local count = 0
for _, topic in ipairs(ARGV) do
  for _, letter in ipairs(redis.call('XRANGE', key(topic, 'dead'), '-', '+')) do
    local id = letter[2][2]
    local job = key('job', id)
    -- a dead letter whose key was queued again meanwhile stays dead: the newer job supersedes it
    if redis.call('HSETNX', key(topic, 'keys'), redis.call('HGET', job, 'key'), id) == 1 then
      redis.call('XDEL', key(topic, 'dead'), letter[1])
      redis.call('HSET', job, 'attempts', 0, 'error', '')
      redis.call('ZADD', key(topic, 'created'), redis.call('HGET', job, 'created_at'), id)
      enqueue(topic, id)
      count = count + 1
    end
  end
end
return count

-- script: hand_back
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', key(ARGV[2], 'stream'), GROUP)) do
  if consumer[2] == ARGV[1] then give_back(ARGV[2], ARGV[1], consumer[4], true) end
end

-- script: recover
redis.call('ZADD', key('consumers'), now, ARGV[1])
for i = 3, #ARGV do return_orphans(ARGV[i], ARGV[1], tonumber(ARGV[2])) end

-- script: oldest_age
local oldest = redis.call('ZRANGE', key(ARGV[1], 'created'), 0, 0, 'WITHSCORES')
if #oldest == 0 then return false end
return tostring(now - tonumber(oldest[2]))

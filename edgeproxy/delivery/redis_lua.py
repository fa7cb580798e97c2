"""The Redis delivery queue's Lua scripts: each move between structures is atomic, in one trip.

Why scripts rather than MULTI/EXEC: a move must depend on a result inside the same atomic
step ("only if XACK acknowledged it", "only if XDEL found it"), which a transaction cannot
express. Key names below the prefix are derived in the scripts, so the queue needs a single
Redis (or a primary with replicas), not Redis Cluster.
"""

GROUP = "delivery"  # the one consumer group every process's worker reads through

# KEYS: delayed zset, dead stream, delivered stream.
# ARGV[1] consumer group, ARGV[2] delivered log length, then groups of five:
#   op ("ack" | "dead" | "delay" | "requeue"), stream, entry id, score (delay: due ms), data.
# An entry moves only if XACK removed it from a PEL: a verdict that arrives after another
# worker took the entry over (XAUTOCLAIM) changes nothing. Returns how many entries moved.
SETTLE = """
local moved = 0
for i = 3, #ARGV, 5 do
  local op, stream, id, score, data = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  if redis.call('XACK', stream, ARGV[1], id) == 1 then
    redis.call('XDEL', stream, id)
    moved = moved + 1
    if op == 'ack' then
      redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[2], '*', 'd', data)
    elseif op == 'dead' then
      redis.call('XADD', KEYS[2], '*', 'd', data)
    elseif op == 'delay' then
      redis.call('ZADD', KEYS[1], score, data)
    else
      redis.call('XADD', stream, '*', 'd', data)
    end
  end
end
return moved
"""

# KEYS[1] delayed zset. ARGV: now ms, limit, stream key prefix.
# Members are "<group key>\\n<record>": due ones go back to the end of their stream.
PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local nl = string.find(member, '\\n', 1, true)
  redis.call('XADD', ARGV[3] .. string.sub(member, 1, nl - 1), '*', 'd', string.sub(member, nl + 1))
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""

# KEYS: dead stream, groups set. ARGV[1] stream key prefix, then triples: dead entry id,
# group key, record. A dead letter is requeued only if this call deleted it.
REPLAY = """
local n = 0
for i = 2, #ARGV, 3 do
  if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('XADD', ARGV[1] .. ARGV[i + 1], '*', 'd', ARGV[i + 2])
    redis.call('SADD', KEYS[2], ARGV[i + 1])
    n = n + 1
  end
end
return n
"""

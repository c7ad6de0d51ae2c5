-- A node says it is alive, by Redis's clock. A node that the others found dead (while it was
-- cut off from Redis) is fenced: its seats were given to the others, and it must not carry on.
-- A beat that follows no recent one (the node's first, or after a gap, or the first after Redis
-- came back from an older snapshot) starts the node's unbroken run of beats, in `since`: a node
-- judges others only once that run is long enough (node_dead.lua).
-- KEYS live rooms dead since; ARGV node ttl gap -> 1 alive, 0 fenced
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not last or now - tonumber(last) > tonumber(ARGV[3])
    or redis.call('HEXISTS', KEYS[4], ARGV[1]) == 0 then
  redis.call('HSET', KEYS[4], ARGV[1], now)
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[4], ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return 1

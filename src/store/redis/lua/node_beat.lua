-- A node says it is alive, by Redis's clock (after `node_alive.lua` found it not fenced).
-- A beat that follows no recent one (the node's first, or after a gap, or the first after Redis
-- came back from an older snapshot) starts the node's unbroken run of beats, in `since`: a node
-- judges others only once that run is long enough (node_dead.lua).
-- KEYS live since; ARGV node ttl gap -> 1
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not last or now - tonumber(last) > tonumber(ARGV[3])
    or redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then
  redis.call('HSET', KEYS[2], ARGV[1], now)
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1

-- The nodes silent for longer than `dead_after` milliseconds, by Redis's clock.
-- KEYS live; ARGV dead_after -> node ids
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))

-- The nodes silent for longer than `dead_after` milliseconds. KEYS live; ARGV dead_after
local t = redis.call('TIME')
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', t[1] * 1000 + math.floor(t[2] / 1000) - tonumber(ARGV[1]))

-- The nodes silent for longer than `dead_after` milliseconds, by Redis's clock, as `judge` sees
-- them: none unless the judge's own last beat is at most `gap` old and its beats have been
-- recorded without a break for `dead_after`. After Redis restarts from an older snapshot every
-- beat in it is old, the judge's too, and the others must first have the time to beat again;
-- Redis itself says so, whatever the judge believes.
-- KEYS live since; ARGV dead_after judge gap -> node ids
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead_after = tonumber(ARGV[1])
local mine = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not mine or now - tonumber(mine) > tonumber(ARGV[3]) then return {} end
local since = redis.call('HGET', KEYS[2], ARGV[2])
if not since or now - tonumber(since) < dead_after then return {} end
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - dead_after)

-- The deadlines that are due, leased to the caller: an entry comes back after `lease` if its
-- claimer died before it finished. KEYS grace; ARGV lease limit -> entries
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(due) do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), m) end
return due

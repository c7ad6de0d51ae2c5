-- Files held seats' deadlines, for whichever node sweeps first: one call for as many seats as
-- a reap or a drop has. The set outlives its last deadline by `keep`.
-- KEYS grace; ARGV keep, then deadline entry pairs
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local latest = now
for i = 2, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
  latest = math.max(latest, tonumber(ARGV[i]))
end
local ttl = latest - now + tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1

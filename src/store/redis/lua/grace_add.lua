-- Files a held seat's deadline, for whichever node sweeps first. The set outlives its last
-- deadline by `keep`. KEYS grace; ARGV deadline entry keep
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
local t = redis.call('TIME')
local ttl = tonumber(ARGV[1]) - (t[1] * 1000 + math.floor(t[2] / 1000)) + tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1

-- A node says it is alive, by Redis's clock. KEYS live rooms; ARGV node ttl
--   -> 1 if the node was not listed (its first beat, or it was found dead and forgotten)
local added = redis.call('ZADD', KEYS[1], redis.call('TIME')[1] * 1000, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return added

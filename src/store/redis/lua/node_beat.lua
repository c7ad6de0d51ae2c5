-- A node says it is alive, by Redis's clock. A node that the others found dead (while it was
-- cut off from Redis) is fenced: its seats were given to the others, and it must not carry on.
-- KEYS live rooms dead; ARGV node ttl -> 1 alive, 0 fenced
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return 1

-- Sets a field of a session (its name `n`, or its room `r`), while `conn` holds it. A session
-- whose key expired while its connection lived on (an idle connection outlives the key's TTL)
-- is still that connection's: the key is made again.
-- KEYS sess; ARGV conn node field value ttl -> 1, or 0 when another connection holds it
local c = redis.call('HGET', KEYS[1], 'c')
if c and c ~= ARGV[1] then return 0 end
if not c then redis.call('HSET', KEYS[1], 'n', '', 'r', '', 'c', ARGV[1], 'o', ARGV[2]) end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1

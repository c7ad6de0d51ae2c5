-- A new connection takes the session over (`resume`). A session that never chose a name holds
-- nothing worth resuming. KEYS sess; ARGV conn node ttl
--   -> {name, room or '', previous conn, previous node} | false
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local s = redis.call('HMGET', KEYS[1], 'n', 'r', 'c', 'o')
if not s[1] or s[1] == '' then return false end
redis.call('HSET', KEYS[1], 'c', ARGV[1], 'o', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {s[1], s[2] or '', s[3] or '', s[4] or ''}

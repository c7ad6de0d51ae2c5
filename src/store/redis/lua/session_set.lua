-- Sets a field of a session (its name `n`, or its room `r`), while `conn` holds it.
-- KEYS sess; ARGV conn field value ttl -> 1, or 0 when another connection holds it
if redis.call('HGET', KEYS[1], 'c') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1

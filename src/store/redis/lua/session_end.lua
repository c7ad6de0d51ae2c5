-- The session's connection ended: the session goes (ttl 0), or lives `ttl` more for a resume.
-- Only while `conn` holds it. KEYS sess; ARGV conn ttl -> 1 | 0
if redis.call('HGET', KEYS[1], 'c') ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) == 0 then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1

-- Before a beat: a node that the others found dead (while it was cut off from Redis) is
-- fenced: its seats were given to the others, and it must not carry on. Otherwise its list of
-- rooms lives on with it. In the node's own slot. KEYS rooms dead; ARGV ttl -> 1 alive, 0 fenced
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 1

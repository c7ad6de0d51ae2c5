-- A new connection's session: no name, no room. KEYS sess; ARGV conn node ttl
redis.call('HSET', KEYS[1], 'n', '', 'r', '', 'c', ARGV[1], 'o', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1

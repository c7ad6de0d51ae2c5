-- A dead node's rooms are reaped: it is no longer listed. KEYS live rooms lock since; ARGV node
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
return 1

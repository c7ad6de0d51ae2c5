-- A dead node, reaped, is no longer among the nodes that beat. KEYS live since; ARGV node
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1

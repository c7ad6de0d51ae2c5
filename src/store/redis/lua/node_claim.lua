-- Claims a dead node for reaping, so that one node does it: marks it dead (fencing it, should
-- it come back) and returns its rooms. Another node's claim holds for `lease` milliseconds.
-- KEYS live rooms dead lock; ARGV node lease fence -> room codes, or false if claimed already
if redis.call('SET', KEYS[4], '1', 'NX', 'PX', ARGV[2]) == false then return false end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[3])
return redis.call('SMEMBERS', KEYS[2])

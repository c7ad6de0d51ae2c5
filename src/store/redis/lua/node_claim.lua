-- Claims a dead node for reaping, so that one node does it: marks it dead (fencing it, should
-- it come back) and returns its rooms. The claim is a lease in the reaper's name, which it
-- renews as it goes (node_lease.lua); another node may take over once it runs out.
-- KEYS live rooms dead lock; ARGV node lease fence reaper -> room codes, or false if claimed
if redis.call('SET', KEYS[4], ARGV[4], 'NX', 'PX', ARGV[2]) == false then return false end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[3])
return redis.call('SMEMBERS', KEYS[2])

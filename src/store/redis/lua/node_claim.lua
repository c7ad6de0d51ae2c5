-- Claims a dead node for reaping, so that one node does it: marks it dead (fencing it, should
-- it come back) and returns its rooms. The claim is a lease in the reaper's name, which it
-- renews as it goes (node_lease.lua); another node may take over once it runs out. In the dead
-- node's own slot. KEYS rooms dead lock; ARGV lease fence reaper -> room codes, or false if claimed
if redis.call('SET', KEYS[3], ARGV[3], 'NX', 'PX', ARGV[1]) == false then return false end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return redis.call('SMEMBERS', KEYS[1])

-- A member of this node entered a room: the room is listed among the node's, for the others to
-- reap should the node die, and the node is listed as live if it has not beaten yet (a node
-- that holds seats must be one the others watch). KEYS live rooms; ARGV node code ttl
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[1], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1

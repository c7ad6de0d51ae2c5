-- A member of this node entered a room: the room is listed among the node's, for the others to
-- reap should the node die. (A node takes no member before its first beat is recorded, so a
-- node that holds seats is always one the others watch.) KEYS rooms; ARGV code ttl
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1

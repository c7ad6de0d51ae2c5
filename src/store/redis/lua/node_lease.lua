-- The reaper of a dead node is still at it: its lease runs `lease` more milliseconds. Only the
-- node that holds the lease may renew it. KEYS lock; ARGV reaper lease -> 1 renewed, 0 lost
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1

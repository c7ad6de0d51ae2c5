-- A member left its room for good when its grace period ended: its session ends with it, as in
-- memory, unless it has moved on to another room meanwhile. KEYS sess; ARGV code -> 1 | 0
if redis.call('HGET', KEYS[1], 'r') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1

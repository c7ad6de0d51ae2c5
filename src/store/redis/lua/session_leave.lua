-- A member left room `code` (`leave_room`) from a connection its session has moved away from
-- (a resume on another device, its seat's step not yet run): the session stays, outside any
-- room, as in memory. KEYS sess; ARGV code -> 1 | 0
if redis.call('HGET', KEYS[1], 'r') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'r', '')
return 1

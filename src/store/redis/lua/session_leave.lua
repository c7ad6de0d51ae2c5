-- A member left room `code` (`leave_room`): its session is out of the room, whichever
-- connection holds it now (a resume on another device may have taken it over, its seat's step
-- not yet run), and a session that is gone stays gone, as in memory.
-- KEYS sess; ARGV code -> 1 | 0
if redis.call('HGET', KEYS[1], 'r') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'r', '')
return 1

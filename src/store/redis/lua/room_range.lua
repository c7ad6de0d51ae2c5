-- The frames after `after` and up to `upto` (-1: the last), to fill a gap in what a node saw.
-- KEYS room log; ARGV after upto -> {last, frames...} | {-1} if the room is gone
local last = tonumber(redis.call('HGET', KEYS[1], 'last'))
if not last then return {-1} end
local to = tonumber(ARGV[2])
if to < 0 then to = last end
return append({last}, entries(KEYS[2], last, tonumber(ARGV[1]) + 1, to))

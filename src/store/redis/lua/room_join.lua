-- Seats a guest under the two-member cap and the name rule, and gives it the history a joiner
-- sees. KEYS room log; ARGV tok name conn node ttl history_len event_floor
--   -> {'OK', host name, host connected (0|1), last, ev, encrypted, key_check or '',
--       history frames...}
--    | {'ROOM_NOT_FOUND'} | {'ROOM_FULL'} | {'USERNAME_TAKEN'}
local room, log = KEYS[1], KEYS[2]
local ch = channel_of(room)
local tok, name = ARGV[1], ARGV[2]
local a, b = seats(room)
if not a then return {'ROOM_NOT_FOUND'} end
if b then return {'ROOM_FULL'} end
local host = redis.call('HMGET', room, f(a, 'n'), f(a, 'h'))
if host[1] == name then return {'USERNAME_TAKEN'} end
raise_events(room, tonumber(ARGV[7]))
local last = tonumber(redis.call('HGET', room, 'last'))
local vis = tonumber(redis.call('HGET', room, 'vis'))
redis.call('HSET', room, 'm2', tok, f(tok, 'n'), name, f(tok, 'c'), ARGV[3], f(tok, 'o'), ARGV[4],
  f(tok, 'f'), vis, f(tok, 'r'), 0)
extend(room, tonumber(ARGV[5]))
extend(log, tonumber(ARGV[5]))
local ev = event(room, ch, 'joined', tok, name)
local from = math.max(vis, last - tonumber(ARGV[6]) + 1)
local connected = 1
if host[2] then connected = 0 end
local enc = redis.call('HMGET', room, 'enc', 'kc')
return append({'OK', host[1], connected, last, ev, enc[1], enc[2] or ''},
  entries(log, last, from, last))

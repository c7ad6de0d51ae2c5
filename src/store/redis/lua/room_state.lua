-- Who sits in a room now, to repair what a node missed of its events. The node says how far it
-- has told the room's ids and events: if Redis's history went back behind that, the counters
-- are raised first (see raise_chat), and the room is vouched for in this run of Redis.
-- KEYS room log; ARGV chat_floor event_floor
--   -> {ev, last, then per seat: token, name, held (0|1), read up to} | {} if gone
local room = KEYS[1]
if redis.call('EXISTS', room) == 0 then return {} end
raise_chat(room, KEYS[2], tonumber(ARGV[1]))
raise_events(room, tonumber(ARGV[2]))
vouch(room)
local res = {tonumber(redis.call('HGET', room, 'ev')), tonumber(redis.call('HGET', room, 'last'))}
local a, b = seats(room)
for _, tok in ipairs({a, b}) do
  if tok then
    local s = redis.call('HMGET', room, f(tok, 'n'), f(tok, 'h'), f(tok, 'r'))
    local held = 0
    if s[2] then held = 1 end
    append(res, {tok, s[1], held, tonumber(s[3] or '0')})
  end
end
return res

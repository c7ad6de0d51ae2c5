-- A read receipt: receipts only move forward.
-- KEYS room; ARGV tok conn up_to event_floor -> {'OK'} | {'IGNORED'} | {'FUTURE', last} | {'GONE'} | {'MOVED'}
local room, tok = KEYS[1], ARGV[1]
local ch = channel_of(room)
local err = check_live(room, tok, ARGV[2])
if err then return {err} end
local up, last = tonumber(ARGV[3]), tonumber(redis.call('HGET', room, 'last'))
if up > last then return {'FUTURE', last} end
if up <= tonumber(redis.call('HGET', room, f(tok, 'r')) or '0') then return {'IGNORED'} end
redis.call('HSET', room, f(tok, 'r'), up)
raise_events(room, tonumber(ARGV[4]))
event(room, ch, 'read', tok, redis.call('HGET', room, f(tok, 'n')), {up_to = up})
return {'OK'}

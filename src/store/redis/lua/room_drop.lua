-- A member's connection ended: its seat is held until now + grace, or given up (grace 0).
-- Idempotent: a retry finds the deadline already set.
-- `left`: how long the seat has until its deadline, by this shard's clock, so that the grace
-- period is filed by it on its bucket's clock (one clock measures it: see grace_add.lua).
-- KEYS room log; ARGV tok conn grace keep event_floor
--   -> {'HELD', deadline, left} | {'LEFT'|'DELETED'} | {'GONE'|'MOVED'}
local room, log, tok = KEYS[1], KEYS[2], ARGV[1]
local ch = channel_of(room)
local err = check(room, tok, ARGV[2])
if err then return {err} end
raise_events(room, tonumber(ARGV[5]))
local grace = tonumber(ARGV[3])
if grace == 0 then return {remove_member(room, log, ch, tok, 'disconnected')} end
local held = redis.call('HGET', room, f(tok, 'h'))
local now = now_ms()
if held then return {'HELD', tonumber(held), math.max(0, tonumber(held) - now)} end
local deadline = now + grace
redis.call('HSET', room, f(tok, 'h'), deadline)
extend(room, tonumber(ARGV[4]))
extend(log, tonumber(ARGV[4]))
event(room, ch, 'disconnected', tok, redis.call('HGET', room, f(tok, 'n')))
return {'HELD', deadline, grace}

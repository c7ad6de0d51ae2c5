-- A member's connection ended: its seat is held until now + grace, or given up (grace 0).
-- Idempotent: a retry finds the deadline already set.
-- KEYS room log ch; ARGV tok conn grace keep event_floor -> {'HELD', deadline} | {'LEFT'|'DELETED'} | {'GONE'|'MOVED'}
local room, log, ch, tok = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
local err = check(room, tok, ARGV[2])
if err then return {err} end
raise_events(room, tonumber(ARGV[5]))
local grace = tonumber(ARGV[3])
if grace == 0 then return {remove_member(room, log, ch, tok, 'disconnected')} end
local held = redis.call('HGET', room, f(tok, 'h'))
if held then return {'HELD', tonumber(held)} end
local deadline = now_ms() + grace
redis.call('HSET', room, f(tok, 'h'), deadline)
extend(room, tonumber(ARGV[4]))
extend(log, tonumber(ARGV[4]))
event(room, ch, 'disconnected', tok, redis.call('HGET', room, f(tok, 'n')))
return {'HELD', deadline}

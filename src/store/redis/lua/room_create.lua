-- Opens a room with its host. A code is never issued twice: EXISTS and the write are one step.
-- KEYS room; ARGV tok name conn node encrypted(0|1) ttl key_check(or '')
--   -> 1 created, 0 the code is taken
local room, tok = KEYS[1], ARGV[1]
if redis.call('EXISTS', room) == 1 then return 0 end
redis.call('HSET', room, 'last', 0, 'vis', 1, 'lost', 0, 'ev', 0, 'bytes', 0, 'enc', ARGV[5],
  'm1', tok, f(tok, 'n'), ARGV[2], f(tok, 'c'), ARGV[3], f(tok, 'o'), ARGV[4], f(tok, 'f'), 1,
  f(tok, 'r'), 0)
if ARGV[7] ~= '' then redis.call('HSET', room, 'kc', ARGV[7]) end
vouch(room)
redis.call('PEXPIRE', room, ARGV[6])
return 1

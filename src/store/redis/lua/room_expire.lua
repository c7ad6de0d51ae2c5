-- A held seat's grace period ended: the member leaves for good, unless it resumed (its deadline
-- changed). KEYS room log; ARGV tok deadline -> 'LEFT' | 'DELETED' | 'NOOP'
local room, log, tok = KEYS[1], KEYS[2], ARGV[1]
local ch = channel_of(room)
if not is_member(room, tok) then return 'NOOP' end
local held = redis.call('HGET', room, f(tok, 'h'))
if not held or tonumber(held) ~= tonumber(ARGV[2]) then return 'NOOP' end
return remove_member(room, log, ch, tok, 'disconnected')

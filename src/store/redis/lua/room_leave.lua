-- A member leaves (`leave_room`). KEYS room log ch; ARGV tok conn event_floor
--   -> {'LEFT'} | {'DELETED'} | {'GONE'} | {'MOVED'}
local room, log, ch, tok = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
local err = check_live(room, tok, ARGV[2])
if err then return {err} end
raise_events(room, tonumber(ARGV[3]))
return {remove_member(room, log, ch, tok, 'left')}

-- A member leaves (`leave_room`). KEYS room log; ARGV tok conn event_floor
--   -> {'LEFT'} | {'DELETED'} | {'GONE'} | {'MOVED'}
local room, log, tok = KEYS[1], KEYS[2], ARGV[1]
local ch = channel_of(room)
local err = check_live(room, tok, ARGV[2])
if err then return {err} end
raise_events(room, tonumber(ARGV[3]))
return {remove_member(room, log, ch, tok, 'left')}

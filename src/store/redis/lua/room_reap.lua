-- A node was found dead: the seats it held are held for a resume (or given up with grace 0),
-- and the seats already held are returned too, so that their grace entries exist. With each,
-- how long it has left by this shard's clock (see room_drop.lua).
-- KEYS room log; ARGV dead_node grace keep
--   -> {tok, deadline, left, ...} (deadline 0: given up)
local room, log = KEYS[1], KEYS[2]
local ch = channel_of(room)
local grace = tonumber(ARGV[2])
local now = now_ms()
local a, b = seats(room)
local res = {}
for _, tok in ipairs({a, b}) do
  if tok and is_member(room, tok) then
    local s = redis.call('HMGET', room, f(tok, 'o'), f(tok, 'h'), f(tok, 'n'))
    if s[1] == ARGV[1] then
      if s[2] then
        append(res, {tok, tonumber(s[2]), math.max(0, tonumber(s[2]) - now)})
      elseif grace == 0 then
        remove_member(room, log, ch, tok, 'disconnected')
        append(res, {tok, 0, 0})
      else
        local deadline = now + grace
        redis.call('HSET', room, f(tok, 'h'), deadline)
        extend(room, tonumber(ARGV[3]))
        extend(log, tonumber(ARGV[3]))
        event(room, ch, 'disconnected', tok, s[3])
        append(res, {tok, deadline, grace})
      end
    end
  end
end
return res

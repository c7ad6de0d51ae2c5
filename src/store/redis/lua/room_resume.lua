-- Moves a seat onto a new connection and replays what it missed.
-- A member that has read beyond the room's last id, in a room not yet vouched for in this run
-- of Redis, has seen what Redis lost (a restart from an older snapshot, a failover to a replica
-- that was behind) before any node that heard the room could raise it: its word is the floor
-- (see raise_chat), so that no id it was given is given again. Once vouched for, a room takes
-- no member's word, so a member cannot make its room forget its log at will.
-- KEYS room log; ARGV tok conn node last_id ttl event_floor
--   -> {'OK', name, peer name or '', peer connected, peer read, last, ev, encrypted, key_check or '',
--       previous conn or '', previous node or '', lost, missed frames...} | {'EXPIRED'}
local room, log, tok = KEYS[1], KEYS[2], ARGV[1]
local ch = channel_of(room)
if not is_member(room, tok) then return {'EXPIRED'} end
raise_events(room, tonumber(ARGV[6]))
-- The largest id a client can hold exactly (2^53 - 1): beyond it, a number is not an id.
local read = math.min(tonumber(ARGV[4]), 9007199254740991)
if read > tonumber(redis.call('HGET', room, 'last')) and not vouch(room) then
  raise_chat(room, log, read)
end
local s = redis.call('HMGET', room, f(tok, 'c'), f(tok, 'o'), f(tok, 'h'), f(tok, 'n'), f(tok, 'f'))
local prev_conn, prev_node = s[1], s[2]
if s[3] then prev_conn, prev_node = '', '' end
redis.call('HSET', room, f(tok, 'c'), ARGV[2], f(tok, 'o'), ARGV[3])
redis.call('HDEL', room, f(tok, 'h'))
extend(room, tonumber(ARGV[5]))
extend(log, tonumber(ARGV[5]))
local ev = event(room, ch, 'reconnected', tok, s[4])
local p = other(room, tok)
local peer, peer_connected, peer_read = '', 0, 0
if p then
  local ps = redis.call('HMGET', room, f(p, 'n'), f(p, 'h'), f(p, 'r'))
  peer = ps[1]
  if not ps[2] then peer_connected = 1 end
  peer_read = tonumber(ps[3] or '0')
end
local last = tonumber(redis.call('HGET', room, 'last'))
local wanted = math.max(read + 1, tonumber(s[5]))
local lost = math.max(0, tonumber(redis.call('HGET', room, 'lost')) + 1 - wanted)
local enc = redis.call('HMGET', room, 'enc', 'kc')
return append({'OK', s[4], peer, peer_connected, peer_read, last, ev, enc[1], enc[2] or '',
  prev_conn, prev_node, lost}, entries(log, last, wanted, last))

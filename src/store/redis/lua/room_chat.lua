-- Appends a message with the room's next id, within the room's bounds, and publishes it. A
-- repeat of a client_msg_id among the sender's last 100 is not stored again.
-- `floor` is the last id the sender's node has told in this room (see raise_chat); `ends_typing`
-- (1 or 0) whether the sender was typing until now: the message is then published as `S`
-- rather than `C`, and the peer's node tells `stop_typing` before it (see wire.rs).
-- KEYS room log; ARGV tok conn tail client_msg_id('' for none) max_messages max_bytes floor
--   ends_typing
--   -> {'OK', id} | {'DUP', original frame or ''} | {'GONE'} | {'MOVED'}
--
-- Every chat runs this, so it makes few calls: one read of all it needs from the room's hash,
-- the log's RPUSH, one write of the room's hash, the PUBLISH (and a trim's LPOPs). The script
-- runs atomically, so reading a counter and writing it back is as safe as HINCRBY.
local room, log = KEYS[1], KEYS[2]
local ch = channel_of(room)
local tok, cm = ARGV[1], ARGV[4]
-- The sender's recent client_msg_ids: `kn` counts the messages it sent with one, and the n-th
-- is an entry "\n<client_msg_id>\t<n>\t<message id>" at the end of one of eight bucket fields,
-- k0..k7, chosen by a hash of the id. So a chat reads and rewrites one small bucket (a dozen
-- entries, about 600 bytes with ids of 36 characters), never one string of all 100, and a
-- repeat can only be in the bucket of its id. An entry is among the last 100 if its n is above
-- kn - 100; older ones stay until their bucket is next written, which drops them (they are at
-- its start: entries are appended in order). The id has its backslashes, newlines and tabs
-- escaped, so that a plain search for "\n<id>\t" can only match a whole entry. (Decoding and
-- encoding JSON cost Redis more than the rest of the script.)
local KEEP = 100
local err, last, bytes, sent, bucket, entry, field
if cm == '' then
  err, last, bytes = check_live(room, tok, ARGV[2], 'last', 'bytes')
else
  field = 'k' .. tonumber(string.sub(redis.sha1hex(cm), 1, 2), 16) % 8
  err, last, bytes, sent, bucket =
    check_live(room, tok, ARGV[2], 'last', 'bytes', f(tok, 'kn'), f(tok, field))
end
if err then return {err} end
last, bytes, sent = tonumber(last), tonumber(bytes) or 0, tonumber(sent) or 0
if cm ~= '' then
  bucket = bucket or ''
  entry = '\n' .. (cm:gsub('[\\\n\t]', {['\\'] = '\\\\', ['\n'] = '\\n', ['\t'] = '\\t'})) .. '\t'
  -- At most one entry of the id: when an id too old to count is used again, writing it drops
  -- the old entry, and every entry before it, older still.
  local at = string.find(bucket, entry, 1, true)
  local n, original
  if at then n, original = string.match(bucket, '^(%d+)\t(%d+)', at + #entry) end
  if n and tonumber(n) > sent - KEEP then
    original = tonumber(original)
    return {'DUP', entries(log, last, original, original)[1] or ''}
  end
end
local id = last + 1
local floor = tonumber(ARGV[7])
if id <= floor then
  -- Redis went back behind ids the sender's node has told (see raise_chat): the room is raised
  -- above them (its log starts again, empty), and the id drawn above them. Checked on the id
  -- itself, so that a chat in a room that did not go back costs no extra call.
  raise_chat(room, log, floor)
  id, bytes = floor + 1, 0
end
local frame = '{"type":"chat","id":' .. id .. ARGV[3]
local length = redis.call('RPUSH', log, frame)
-- A new log lives as long as its room; later, the room's TTL is extended with it.
if length == 1 then redis.call('PEXPIRE', log, math.max(redis.call('PTTL', room), 1)) end
bytes = bytes + #frame + 64
local max_messages, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])
local lost
while length > max_messages or bytes > max_bytes do
  local gone = redis.call('LPOP', log)
  if not gone then break end
  bytes = bytes - (#gone + 64)
  lost = id - length + 1
  length = length - 1
end
local writes = {'last', id, 'bytes', bytes}
if lost then
  writes[#writes + 1] = 'lost'
  writes[#writes + 1] = lost
end
if entry then
  sent = sent + 1
  -- The entries no longer among the last 100 go: they are the bucket's first.
  local n = tonumber(string.match(bucket, '^\n[^\t]*\t(%d+)\t'))
  while n and n <= sent - KEEP do
    bucket = string.sub(bucket, (string.find(bucket, '\n', 2, true) or #bucket + 1))
    n = tonumber(string.match(bucket, '^\n[^\t]*\t(%d+)\t'))
  end
  writes[#writes + 1] = f(tok, field)
  writes[#writes + 1] = bucket .. entry .. sent .. '\t' .. id
  writes[#writes + 1] = f(tok, 'kn')
  writes[#writes + 1] = sent
end
redis.call('HSET', room, unpack(writes))
local kind = 'C'
if ARGV[8] == '1' then kind = 'S' end
redis.call(PUBLISH, ch, kind .. id .. '|' .. tok .. '|' .. frame)
return {'OK', id}

-- Appends a message with the room's next id, within the room's bounds, and publishes it. A
-- repeat of a client_msg_id among the sender's last 100 is not stored again.
-- `floor` is the last id the sender's node has told in this room (see raise_chat).
-- KEYS room log ch; ARGV tok conn tail client_msg_id('' for none) max_messages max_bytes floor
--   -> {'OK', id} | {'DUP', original frame or ''} | {'GONE'} | {'MOVED'}
local room, log, ch = KEYS[1], KEYS[2], KEYS[3]
local tok, cm = ARGV[1], ARGV[4]
local err, recent, count = check_live(room, tok, ARGV[2], 'k', 'kn')
if err then return {err} end
-- The sender's recent client_msg_ids are one string of entries "\n<id>\t<message id>", the id
-- with its backslashes, newlines and tabs escaped: a plain search for "\n<id>\t" can only
-- match a whole entry. (Decoding and encoding them as JSON cost Redis more than the rest of
-- the script.)
local entry
if cm ~= '' then
  entry = '\n' .. (cm:gsub('[\\\n\t]', {['\\'] = '\\\\', ['\n'] = '\\n', ['\t'] = '\\t'})) .. '\t'
  local at = recent and string.find(recent, entry, 1, true)
  if at then
    local original = tonumber(string.match(recent, '^%d+', at + #entry))
    local last = tonumber(redis.call('HGET', room, 'last'))
    return {'DUP', entries(log, last, original, original)[1] or ''}
  end
end
local id = redis.call('HINCRBY', room, 'last', 1)
local floor = tonumber(ARGV[7])
if id <= floor then
  -- Redis went back behind ids the sender's node has told (see raise_chat): the increment is
  -- undone, the room raised above them, and the id drawn again. Checked on the id itself, so
  -- that a chat in a room that did not go back costs no extra call.
  redis.call('HSET', room, 'last', id - 1)
  raise_chat(room, log, floor)
  id = redis.call('HINCRBY', room, 'last', 1)
end
local frame = '{"type":"chat","id":' .. id .. ARGV[3]
local length = redis.call('RPUSH', log, frame)
-- A new log lives as long as its room; later, the room's TTL is extended with it.
if length == 1 then redis.call('PEXPIRE', log, math.max(redis.call('PTTL', room), 1)) end
local bytes = redis.call('HINCRBY', room, 'bytes', #frame + 64)
local max_messages, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])
while length > max_messages or bytes > max_bytes do
  local gone = redis.call('LPOP', log)
  if not gone then break end
  bytes = redis.call('HINCRBY', room, 'bytes', -(#gone + 64))
  redis.call('HSET', room, 'lost', id - length + 1)
  length = length - 1
end
if entry then
  recent, count = (recent or '') .. entry .. id, (tonumber(count) or 0) + 1
  if count > 100 then
    local second = string.find(recent, '\n', 2, true)
    recent, count = string.sub(recent, second), count - 1
  end
  redis.call('HSET', room, f(tok, 'k'), recent, f(tok, 'kn'), count)
end
redis.call('PUBLISH', ch, 'C' .. id .. '|' .. tok .. '|' .. frame)
return {'OK', id}

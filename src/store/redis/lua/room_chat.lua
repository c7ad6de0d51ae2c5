-- Appends a message with the room's next id, within the room's bounds, and publishes it. A
-- repeat of a client_msg_id among the sender's last 100 is not stored again.
-- KEYS room log ch; ARGV tok conn tail client_msg_id('' for none) max_messages max_bytes
--   -> {'OK', id} | {'DUP', original frame or ''} | {'GONE'} | {'MOVED'}
local room, log, ch = KEYS[1], KEYS[2], KEYS[3]
local tok, cm = ARGV[1], ARGV[4]
local err = check_live(room, tok, ARGV[2])
if err then return {err} end
local recent = {}
if cm ~= '' then
  local seen = redis.call('HGET', room, f(tok, 'k'))
  if seen then recent = cjson.decode(seen) end
  for _, e in ipairs(recent) do
    if e[1] == cm then
      local last = tonumber(redis.call('HGET', room, 'last'))
      local frame = entries(log, last, e[2], e[2])[1] or ''
      return {'DUP', frame}
    end
  end
end
local id = redis.call('HINCRBY', room, 'last', 1)
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
if cm ~= '' then
  table.insert(recent, {cm, id})
  if #recent > 100 then table.remove(recent, 1) end
  redis.call('HSET', room, f(tok, 'k'), cjson.encode(recent))
end
redis.call('PUBLISH', ch, 'C' .. id .. '|' .. tok .. '|' .. frame)
return {'OK', id}

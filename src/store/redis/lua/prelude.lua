-- Shared by every script of a room: each is given the definitions below that it uses, and those
-- that they use, before it is loaded (prelude.rs). This comment goes to none of them.
--
-- A room is two keys with the hash tag {CODE}: `chat:{CODE}:room` (a hash: the counters and
-- the seats) and `chat:{CODE}:log` (a list of `chat` frames, ids contiguous), and the channel
-- `chat:{CODE}:ch`. The channel is not passed as a key (see channel_of), and is published
-- on with PUBLISH, or SPUBLISH on a Redis Cluster (the store sets `PUBLISH` to one or the
-- other, above this prelude). A seat's fields are named `<token>:<x>`: n name, c connection, o node,
-- h held until (absent while its connection is up), f first id it may be given, r read up to,
-- kn how many messages it sent with a client_msg_id and k0..k7 the recent ones (see
-- room_chat.lua). The room's own fields: last (its last chat id), lost (through which id its
-- log has shed), vis (the first id a joiner sees), ev (its last event number), bytes, enc, kc
-- (its key check), run (see vouch).

-- A room's channel, from its room key: `chat:{CODE}:room` less `room`, and `ch`. Not declared
-- among a script's keys: while a room's slot migrates, Redis answers TRYAGAIN to a script that
-- declares a key not yet moved, and a channel is never moved. In the room's slot, so SPUBLISH
-- may publish on it from the script.
local function channel_of(room)
  return string.sub(room, 1, -5) .. 'ch'
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function f(tok, x) return tok .. ':' .. x end

local function seats(room)
  local m = redis.call('HMGET', room, 'm1', 'm2')
  return m[1], m[2]
end

local function is_member(room, tok)
  local a, b = seats(room)
  return a == tok or b == tok
end

local function other(room, tok)
  local a, b = seats(room)
  if a == tok then return b end
  if b == tok then return a end
  return false
end

-- Publishes a counted event: the room's next event number goes in it.
local function event(room, ch, kind, tok, name, extra)
  local seq = redis.call('HINCRBY', room, 'ev', 1)
  local e = {k = kind, s = seq, t = tok, n = name}
  if extra then for key, value in pairs(extra) do e[key] = value end end
  redis.call(PUBLISH, ch, 'E' .. cjson.encode(e))
  return seq
end

-- The frames with ids from..to that the log still holds.
local function entries(log, last, from, to)
  local first = last - redis.call('LLEN', log) + 1
  if from < first then from = first end
  if to > last then to = last end
  if from > to then return {} end
  return redis.call('LRANGE', log, from - first, to - first)
end

-- Redis lost writes it had acknowledged (it restarted from an older snapshot, or failed over to
-- a replica that was behind), and a node has told its members chat ids up to `floor`: the
-- room's counter goes above them, so that no id is handed out twice. The log starts again after
-- the gap (its ids must be contiguous), and `lost` says that everything up to `floor` is gone,
-- so that a resume that wanted any of it says so.
local function raise_chat(room, log, floor)
  local last = tonumber(redis.call('HGET', room, 'last'))
  if not last or floor <= last then return end
  redis.call('DEL', log)
  redis.call('HSET', room, 'last', floor, 'lost', floor, 'bytes', 0)
end

-- The same for event numbers: they go above `floor`, the last one a node has told. A node that
-- does not hear the room has told nothing (floor 0), and costs nothing here.
local function raise_events(room, floor)
  if floor == 0 then return end
  local ev = tonumber(redis.call('HGET', room, 'ev'))
  if ev and floor > ev then redis.call('HSET', room, 'ev', floor) end
end

-- Which redis-server process this is (its `run_id`): a restart or a failover makes a new one.
local function this_run()
  return string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
end

-- Vouches for a room's counters in this run of Redis (field `run`), and says whether they
-- already were. A room is vouched for once a node that hears it has raised them to what it
-- told (a repair, `room_state.lua`), or once it is made in this run. Until then its history may have gone back, and a member's word for how far it has
-- read is the best floor there is (`room_resume.lua`); once vouched for, it is not needed.
local function vouch(room)
  local run = this_run()
  local before = redis.call('HGET', room, 'run')
  redis.call('HSET', room, 'run', run)
  return before == run
end

-- Gives `key` at least `ms` more to live.
local function extend(key, ms)
  local t = redis.call('PTTL', key)
  if t == -1 or (t >= 0 and t < ms) then redis.call('PEXPIRE', key, ms) end
end

local function append(res, list)
  for _, v in ipairs(list) do res[#res + 1] = v end
  return res
end

-- `GONE` if `tok` has no seat, `MOVED` if another connection holds it.
local function check(room, tok, conn)
  if not is_member(room, tok) then return 'GONE' end
  if redis.call('HGET', room, f(tok, 'c')) ~= conn then return 'MOVED' end
  return false
end

-- `check`, and `GONE` too if the seat is held: its connection was given up for dead (its node
-- was reaped), and speaks for the seat no more; it is to reconnect and resume. Then the fields
-- named in `...` (the room's, or the seat's as `f(tok, x)`), read in the same call (false where
-- absent). One HMGET, its field names passed on as they are: every chat runs this.
local function check_live(room, tok, conn, ...)
  local s = redis.call('HMGET', room, 'm1', 'm2', f(tok, 'c'), f(tok, 'h'), ...)
  if s[1] ~= tok and s[2] ~= tok then return 'GONE' end
  if s[3] ~= conn then return 'MOVED' end
  if s[4] then return 'GONE' end
  return false, unpack(s, 5)
end

-- Written out rather than built: the prelude runs before every script, every chat included.
local SEAT_FIELDS = {'n', 'c', 'o', 'h', 'f', 'r', 'kn',
  'k0', 'k1', 'k2', 'k3', 'k4', 'k5', 'k6', 'k7'}

-- Takes `tok` out of the room: the member who stays is told and becomes the host, or the room's
-- keys go if nobody stays.
local function remove_member(room, log, ch, tok, reason)
  local a, b = seats(room)
  local name = redis.call('HGET', room, f(tok, 'n'))
  local fields = {}
  for _, x in ipairs(SEAT_FIELDS) do fields[#fields + 1] = f(tok, x) end
  redis.call('HDEL', room, unpack(fields))
  local rest
  if a == tok then rest = b else rest = a end
  if not rest then
    redis.call('DEL', room, log)
    return 'DELETED'
  end
  redis.call('HSET', room, 'm1', rest)
  redis.call('HDEL', room, 'm2')
  local last = tonumber(redis.call('HGET', room, 'last'))
  redis.call('HSET', room, 'vis', last + 1)
  -- What was said before the one who stays entered is nobody's any more.
  local keep_from = tonumber(redis.call('HGET', room, f(rest, 'f')))
  local first = last - redis.call('LLEN', log) + 1
  while first < keep_from do
    local gone = redis.call('LPOP', log)
    if not gone then break end
    redis.call('HINCRBY', room, 'bytes', -(#gone + 64))
    first = first + 1
  end
  event(room, ch, 'left', tok, name, {reason = reason})
  return 'LEFT'
end

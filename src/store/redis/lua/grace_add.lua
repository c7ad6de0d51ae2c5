-- Files held seats' grace periods, for whichever node sweeps first: one call for as many seats
-- of this bucket as a reap or a drop has. Each is due `left` milliseconds from now by this
-- shard's clock, the one that finds it due (grace_claim.lua): its deadline was set by its
-- room's shard, whose clock may differ, and is kept in the entry only to tell it apart. The set
-- outlives its last entry by `keep`.
-- KEYS grace; ARGV keep, then left entry pairs
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local latest = now
for i = 2, #ARGV, 2 do
  local due = now + tonumber(ARGV[i])
  redis.call('ZADD', KEYS[1], due, ARGV[i + 1])
  latest = math.max(latest, due)
end
local ttl = latest - now + tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1

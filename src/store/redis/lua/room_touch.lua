-- Keeps a room with connected members alive. KEYS room log; ARGV ttl
extend(KEYS[1], tonumber(ARGV[1]))
if redis.call('EXISTS', KEYS[2]) == 1 then extend(KEYS[2], tonumber(ARGV[1])) end
return 1

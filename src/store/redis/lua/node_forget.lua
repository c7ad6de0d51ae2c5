-- A dead node's rooms are reaped: its list and the reaper's claim go (its fence stays, should it
-- come back). In the dead node's own slot; `node_unlist.lua` then takes it out of the live set.
-- KEYS rooms lock
redis.call('DEL', KEYS[1], KEYS[2])
return 1

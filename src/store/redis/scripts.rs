//! The steps of the store as Lua scripts: one script per atomic step, kept as `.lua` files beside
//! this one and run with EVALSHA (the `redis` crate loads a script the first time Redis does not
//! know it, after a restart say). The scripts of a room share `prelude.lua`, each given the
//! definitions it uses (`prelude.rs`).
//!
//! Each room's keys carry the hash tag `{CODE}`, so that a Redis Cluster would keep them on one
//! shard, where a script may touch them together. A step that also touches the node's list of
//! rooms or a session (other tags) does so in scripts of their own, in an order that leaves
//! nothing behind should the node die between two of them: the room listed before a seat is
//! taken, the session written after (see docs/architecture.md, and `failpoint.rs`).
//!
//! How each step runs these scripts, one named function per step, is `steps.rs`; what is here
//! is shared by it and by the node's own work (beats, reaping, sweeping): the scripts, the keys,
//! reading a script's reply, and the small steps several of them take (a session's field, the
//! node's list of rooms, a grace period filed or ended). It runs past 400 lines with the
//! keys' layout and the reading of replies, which every caller shares.

use std::time::Duration;

use super::prelude;
use super::target::Commands;
use redis::{
    Cmd, ErrorKind, RedisResult, RedisWrite, Script, ScriptInvocation, ServerErrorKind,
    ToRedisArgs, Value,
};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::envelope::KeyCheck;
use crate::store::Conn;
use crate::types::{RoomCode, SessionToken, Username};

/// How long a room lives without being touched. A node touches the rooms of its connected
/// members every [`TOUCH_EVERY`], so only a room that every node forgot runs out.
pub const ROOM_TTL: Duration = Duration::from_secs(60 * 60);

/// How long a session's key lives without being touched; see [`ROOM_TTL`].
pub const SESSION_TTL: Duration = Duration::from_secs(60 * 60);

/// How often a node touches the rooms and sessions of its connections.
pub const TOUCH_EVERY: Duration = Duration::from_secs(10 * 60);

/// How much longer than its grace period a held seat's keys live: time for a node to sweep the
/// grace period's end, and for a resume that arrives just before it.
pub const GRACE_MARGIN: Duration = Duration::from_secs(60);

/// The keys and channels of Redis, in one place.
pub mod keys {
    use crate::store::NodeId;
    use crate::types::{RoomCode, SessionToken};

    /// A room's counters and seats (a hash).
    pub fn room(code: RoomCode) -> String {
        format!("chat:{{{code}}}:room")
    }

    /// A room's messages, as `chat` frames (a list).
    pub fn log(code: RoomCode) -> String {
        format!("chat:{{{code}}}:log")
    }

    /// A room's events (a pub/sub channel).
    pub fn channel(code: RoomCode) -> String {
        format!("chat:{{{code}}}:ch")
    }

    /// The room a pub/sub channel is for.
    pub fn channel_room(channel: &str) -> Option<RoomCode> {
        let code = channel.strip_prefix("chat:{")?.strip_suffix("}:ch")?;
        RoomCode::parse(code).ok()
    }

    /// A session: its name, room and connection (a hash).
    pub fn session(token: &SessionToken) -> String {
        format!("chat:sess:{{{}}}", token.hex())
    }

    /// How many boards the nodes beat on. A node beats on every board; a beat counts once a
    /// majority of the boards recorded it, and a node is dead once a majority finds it silent.
    /// Any two majorities share a board, so a node that counts itself alive cannot be found
    /// dead; and on a Redis Cluster the boards sit in slots of their own (`{board:N}`, in
    /// the first, second and last third of the slots: on three masters or more that hold even
    /// ranges of slots, each on its own master), so that no one master is needed for the nodes
    /// to vouch for themselves.
    pub const BOARDS: usize = 3;

    /// How many boards make a majority.
    pub const MAJORITY: usize = BOARDS / 2 + 1;

    /// The nodes that beat on board `board`, by the time of their last beat there (a sorted
    /// set).
    pub fn live(board: usize) -> String {
        format!("chat:{{board:{board}}}:live")
    }

    /// When each node's unbroken run of beats on board `board` began (a hash), so that a node
    /// judges others only once its own beats have been recorded there for long enough.
    pub fn since(board: usize) -> String {
        format!("chat:{{board:{board}}}:since")
    }

    /// How many sorted sets the held seats' deadlines are spread over, each in a slot of its
    /// own, so that on a Redis Cluster no one shard files and sweeps every grace period.
    pub const GRACE_BUCKETS: usize = 8;

    /// Held seats' deadlines, for whichever node sweeps them first (a sorted set): bucket
    /// `bucket` of [`GRACE_BUCKETS`].
    pub fn grace(bucket: usize) -> String {
        format!("chat:{{grace:{bucket}}}")
    }

    /// The bucket of the grace periods of room `code`: always the same for a room.
    pub fn grace_bucket(code: RoomCode) -> usize {
        let hash = code.as_str().bytes().fold(0usize, |hash, byte| {
            hash.wrapping_mul(31).wrapping_add(byte.into())
        });
        hash % GRACE_BUCKETS
    }

    /// The rooms where a node has members (a set). A node's keys share a hash tag of their
    /// own (`{node:ID}`): on a Redis Cluster each node's bookkeeping sits in its own slot, and
    /// the scripts that claim a dead node touch that slot only.
    pub fn node_rooms(node: NodeId) -> String {
        format!("chat:{{node:{node}}}:rooms")
    }

    /// Set when a node was found dead: should it come back, it must not carry on.
    pub fn node_dead(node: NodeId) -> String {
        format!("chat:{{node:{node}}}:dead")
    }

    /// Held by the node that reaps a dead node.
    pub fn node_reaper(node: NodeId) -> String {
        format!("chat:{{node:{node}}}:reap")
    }

    /// Where other nodes tell a node to close one of its connections (a pub/sub channel).
    pub fn node_control(node: NodeId) -> String {
        format!("chat:{{node:{node}}}:ctl")
    }
}

/// Every script, compiled once (its SHA1 computed) when the store starts.
#[derive(Debug)]
pub struct Scripts {
    pub(super) room_create: Script,
    pub(super) room_join: Script,
    pub(super) room_chat: Script,
    pub(super) room_read: Script,
    pub(super) room_leave: Script,
    pub(super) room_drop: Script,
    pub(super) room_expire: Script,
    pub(super) room_resume: Script,
    pub(super) room_reap: Script,
    pub(super) room_range: Script,
    pub(super) room_state: Script,
    pub(super) room_touch: Script,
    pub(super) session_open: Script,
    pub(super) session_set: Script,
    pub(super) session_end: Script,
    pub(super) session_take: Script,
    pub(super) session_forget: Script,
    pub(super) session_leave: Script,
    pub(super) node_alive: Script,
    pub(super) node_beat: Script,
    pub(super) node_dead: Script,
    pub(super) node_claim: Script,
    pub(super) node_forget: Script,
    pub(super) node_unlist: Script,
    pub(super) node_lease: Script,
    pub(super) node_room: Script,
    pub(super) grace_add: Script,
    pub(super) grace_claim: Script,
    /// How a room's events are published: `PUBLISH`, or `SPUBLISH` on a Redis Cluster, where
    /// a plain `PUBLISH` is broadcast to every node of the cluster.
    pub(super) publish: &'static str,
}

impl Scripts {
    /// The scripts for one `redis-server`.
    pub fn new() -> Self {
        Self::publishing_with("PUBLISH")
    }

    /// The scripts for `target`: on a Redis Cluster, a room's events are published on its
    /// shard alone (sharded pub/sub).
    pub fn for_target(target: &super::Target) -> Self {
        if target.is_cluster() {
            Self::publishing_with("SPUBLISH")
        } else {
            Self::new()
        }
    }

    fn publishing_with(publish: &'static str) -> Self {
        let header = format!("local PUBLISH = '{publish}'\n");
        let prelude = include_str!("lua/prelude.lua");
        let room = |body: &str| Script::new(&prelude::for_script(&header, prelude, body));
        Scripts {
            publish,
            room_create: room(include_str!("lua/room_create.lua")),
            room_join: room(include_str!("lua/room_join.lua")),
            room_chat: room(include_str!("lua/room_chat.lua")),
            room_read: room(include_str!("lua/room_read.lua")),
            room_leave: room(include_str!("lua/room_leave.lua")),
            room_drop: room(include_str!("lua/room_drop.lua")),
            room_expire: room(include_str!("lua/room_expire.lua")),
            room_resume: room(include_str!("lua/room_resume.lua")),
            room_reap: room(include_str!("lua/room_reap.lua")),
            room_range: room(include_str!("lua/room_range.lua")),
            room_state: room(include_str!("lua/room_state.lua")),
            room_touch: room(include_str!("lua/room_touch.lua")),
            session_open: Script::new(include_str!("lua/session_open.lua")),
            session_set: Script::new(include_str!("lua/session_set.lua")),
            session_end: Script::new(include_str!("lua/session_end.lua")),
            session_take: Script::new(include_str!("lua/session_take.lua")),
            session_forget: Script::new(include_str!("lua/session_forget.lua")),
            session_leave: Script::new(include_str!("lua/session_leave.lua")),
            node_alive: Script::new(include_str!("lua/node_alive.lua")),
            node_beat: Script::new(include_str!("lua/node_beat.lua")),
            node_dead: Script::new(include_str!("lua/node_dead.lua")),
            node_claim: Script::new(include_str!("lua/node_claim.lua")),
            node_forget: Script::new(include_str!("lua/node_forget.lua")),
            node_unlist: Script::new(include_str!("lua/node_unlist.lua")),
            node_lease: Script::new(include_str!("lua/node_lease.lua")),
            node_room: Script::new(include_str!("lua/node_room.lua")),
            grace_add: Script::new(include_str!("lua/grace_add.lua")),
            grace_claim: Script::new(include_str!("lua/grace_claim.lua")),
        }
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

/// A session token is written to Redis as its hex digits, on every step of a member.
impl ToRedisArgs for SessionToken {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + RedisWrite,
    {
        out.write_arg(&self.hex_digits());
    }
}

/// A run of one of a room's scripts, given the room's three keys (its hash, its log, its
/// channel) in the order every such script takes them.
pub(super) fn on_room(script: &Script, code: RoomCode) -> ScriptInvocation<'_> {
    let mut invocation = script.prepare_invoke();
    invocation.key(keys::room(code)).key(keys::log(code));
    invocation
}

/// Milliseconds, as the scripts take them.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A reply that is not what its script returns: Redis answered, but not with this step's
/// answer (a script of another version, say).
pub(super) fn unexpected(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, what))
}

/// A script's reply, read item by item.
pub(super) struct Reply(std::vec::IntoIter<Value>);

impl Reply {
    pub(super) fn new(value: Value) -> RedisResult<Self> {
        match value {
            Value::Array(items) => Ok(Reply(items.into_iter())),
            _ => Err(unexpected(
                "a script replied with something other than a list",
            )),
        }
    }

    pub(super) fn text(&mut self) -> RedisResult<String> {
        match self.0.next() {
            Some(Value::BulkString(bytes)) => {
                String::from_utf8(bytes).map_err(|_| unexpected("a reply that is not UTF-8"))
            }
            Some(Value::SimpleString(text)) => Ok(text),
            Some(Value::Int(n)) => Ok(n.to_string()),
            _ => Err(unexpected("a reply without the text it should have")),
        }
    }

    pub(super) fn number(&mut self) -> RedisResult<u64> {
        match self.0.next() {
            Some(Value::Int(n)) => u64::try_from(n).map_err(|_| unexpected("a negative count")),
            Some(Value::BulkString(bytes)) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| unexpected("a reply without the number it should have")),
            _ => Err(unexpected("a reply without the number it should have")),
        }
    }

    pub(super) fn flag(&mut self) -> RedisResult<bool> {
        Ok(self.number()? != 0)
    }

    pub(super) fn name(&mut self) -> RedisResult<Username> {
        Username::parse(&self.text()?).map_err(|_| unexpected("a stored name that is not valid"))
    }

    /// A room's key check, written as `''` when it has none.
    pub(super) fn key_check(&mut self) -> RedisResult<Option<KeyCheck>> {
        match self.text()?.as_str() {
            "" => Ok(None),
            text => KeyCheck::parse(text)
                .map(Some)
                .map_err(|_| unexpected("a stored key check that is not valid")),
        }
    }

    /// The rest of the reply, as frames.
    pub(super) fn frames(self) -> RedisResult<Vec<Utf8Bytes>> {
        self.0
            .map(|value| match value {
                Value::BulkString(bytes) => Utf8Bytes::try_from(bytes)
                    .map_err(|_| unexpected("a stored frame that is not UTF-8")),
                _ => Err(unexpected("a stored frame that is not a string")),
            })
            .collect()
    }
}

/// Sets a field of the session `token`, while `conn` holds it. Returns whether it did.
pub(super) async fn set_session(
    scripts: &Scripts,
    redis: &mut Commands,
    token: &SessionToken,
    conn: Conn,
    field: &str,
    value: &str,
) -> RedisResult<bool> {
    let set: i64 = scripts
        .session_set
        .key(keys::session(token))
        .arg(conn.encode())
        .arg(conn.node.to_string())
        .arg(field)
        .arg(value)
        .arg(millis(SESSION_TTL))
        .invoke_async(redis)
        .await?;
    Ok(set == 1)
}

/// A member of this node is entering room `code`: the room is listed among the node's, for the
/// others to reap should the node die. Listed *before* the member's seat is taken (or moved
/// here), so that a node that dies between the two leaves no seat that nobody would reap; a
/// room listed for a seat that was then refused costs a reap nothing, and is unlisted when the
/// node has nobody there.
pub(super) async fn list_room(
    scripts: &Scripts,
    redis: &mut Commands,
    code: RoomCode,
    conn: Conn,
) -> RedisResult<()> {
    let _: i64 = scripts
        .node_room
        .key(keys::node_rooms(conn.node))
        .arg(code.as_str())
        .arg(millis(ROOM_TTL))
        .invoke_async(redis)
        .await?;
    Ok(())
}

/// A seat held for a resume, as its room's script answered (`room_drop.lua`, `room_reap.lua`).
#[derive(Debug, Clone, Copy)]
pub struct HeldSeat {
    pub code: RoomCode,
    pub token: SessionToken,
    /// When its grace period ends, by the clock of its room's shard; `0`: given up.
    pub deadline: u64,
    /// How many milliseconds it had left then, by that same clock.
    pub left: u64,
}

/// Files a held seat's grace period in the shared buckets that every node sweeps.
pub async fn file_grace(
    scripts: &Scripts,
    redis: &mut Commands,
    held: HeldSeat,
    grace: Duration,
) -> RedisResult<()> {
    file_graces(scripts, redis, &[held], grace).await
}

/// Files many held seats' grace periods, as a reap holds them: one call per grace bucket they
/// fall in ([`keys::grace_bucket`]), sent together. Each is due when it has `left` no more by
/// its bucket's clock, the clock that finds it due: one clock measures each grace period.
pub async fn file_graces(
    scripts: &Scripts,
    redis: &mut Commands,
    held: &[HeldSeat],
    grace: Duration,
) -> RedisResult<()> {
    let mut buckets: Vec<Option<Cmd>> = vec![None; keys::GRACE_BUCKETS];
    for seat in held {
        let bucket = keys::grace_bucket(seat.code);
        let call = buckets[bucket].get_or_insert_with(|| {
            let mut call = batched(&scripts.grace_add, &[keys::grace(bucket)]);
            call.arg(millis(grace + GRACE_MARGIN));
            call
        });
        call.arg(seat.left)
            .arg(grace_entry(seat.code, &seat.token, seat.deadline));
    }
    let calls = buckets.into_iter().flatten().collect();
    run_batch(&scripts.grace_add, redis, calls).await?;
    Ok(())
}

/// One run of `script` with `keys`, as a command to send among others in one round trip
/// ([`run_batch`]); its arguments are added to it. (The `redis` crate's `ScriptInvocation`
/// runs one script per round trip.)
pub fn batched(script: &Script, keys: &[String]) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
    cmd
}

/// Sends `calls` of `script` (made by [`batched`]) in one pipeline (on a cluster, each to its
/// room's shard, all at once: [`Commands::each`]), and returns their replies in order. Each
/// call is atomic by itself, in its own room; only the round trip is shared,
/// so a batch of rooms costs Redis what the rooms cost one by one, and the caller one await.
/// A Redis that does not know the script (it restarted) is given it, and the batch sent again:
/// the batched steps may run twice, so they must be idempotent.
pub async fn run_batch(
    script: &Script,
    redis: &mut Commands,
    calls: Vec<Cmd>,
) -> RedisResult<Vec<Value>> {
    if calls.is_empty() {
        return Ok(Vec::new());
    }
    match redis.each(calls.clone()).await {
        Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            script.load_async(redis).await?;
            redis.each(calls).await
        }
        replies => replies,
    }
}

/// A grace list entry: `CODE|TOKEN|DEADLINE`.
pub fn grace_entry(code: RoomCode, token: &SessionToken, deadline: u64) -> String {
    format!("{code}|{}|{deadline}", token.hex())
}

/// A held seat's grace period ended: its member leaves for good, unless it resumed, and its
/// session ends with the seat (in a second script: the session's key has another hash tag).
pub async fn expire(
    scripts: &Scripts,
    redis: &mut Commands,
    code: RoomCode,
    token: &SessionToken,
    deadline: u64,
) -> RedisResult<()> {
    let expired: String = on_room(&scripts.room_expire, code)
        .arg(token)
        .arg(deadline)
        .invoke_async(redis)
        .await?;
    if expired != "NOOP" {
        forget_session(scripts, redis, code, token).await?;
    }
    Ok(())
}

/// The member with `token` left room `code` for good without its connection (a grace period
/// ended, or its node was reaped without one): its session ends, unless it has moved on to
/// another room.
pub async fn forget_session(
    scripts: &Scripts,
    redis: &mut Commands,
    code: RoomCode,
    token: &SessionToken,
) -> RedisResult<()> {
    let _: i64 = scripts
        .session_forget
        .key(keys::session(token))
        .arg(code.as_str())
        .invoke_async(redis)
        .await?;
    Ok(())
}

/// For the tests only (`testing`): reaps room `code` of the dead node `dead` with
/// `room_reap.lua`, and ends the sessions of the seats it gave up, as the watch does for each
/// room of a node it found dead; returns the seats it holds (or gave up, deadline 0) with
/// their deadlines (by the room's shard's clock). The node's listing, claim and grace entries are the watch's, and not done
/// here: `tests/store_model.rs` checks what a reap does to a room against the in-memory store.
#[cfg(feature = "testing")]
pub async fn reap_room(
    scripts: &Scripts,
    redis: &mut Commands,
    code: RoomCode,
    dead: crate::store::NodeId,
    grace: Duration,
) -> RedisResult<Vec<(SessionToken, u64)>> {
    let held: Vec<Value> = on_room(&scripts.room_reap, code)
        .arg(dead.to_string())
        .arg(millis(grace))
        .arg(millis(grace + GRACE_MARGIN))
        .invoke_async(redis)
        .await?;
    let mut reply = Reply::new(Value::Array(held))?;
    let mut seats = Vec::new();
    while let Ok(token) = reply.text() {
        let token = SessionToken::parse(&token)
            .ok_or_else(|| unexpected("a stored session that is not valid"))?;
        let deadline = reply.number()?;
        let _left = reply.number()?;
        seats.push((token, deadline));
    }
    for (token, _) in seats.iter().filter(|(_, deadline)| *deadline == 0) {
        forget_session(scripts, redis, code, token).await?;
    }
    Ok(seats)
}

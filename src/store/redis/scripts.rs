//! The steps of the store as Lua scripts: one script per atomic step, kept as `.lua` files beside
//! this one and run with EVALSHA (the `redis` crate loads a script the first time Redis does not
//! know it, after a restart say). The scripts of a room share `prelude.lua`.
//!
//! Each room's keys carry the hash tag `{CODE}`, so that a Redis Cluster would keep them on one
//! shard, where a script may touch them together. A step that also touches the node's list of
//! rooms or a session (other tags) does so in scripts of their own, in an order that leaves
//! nothing behind should the node die between two of them: the room listed before a seat is
//! taken, the session written after (see docs/architecture.md, and `failpoint.rs`).
//!
//! The file runs past 400 lines because [`run`] is one `match` of every step: each arm lists
//! its script's keys and arguments and reads its reply, and a reader checking a script against
//! its caller finds both in one place, in the order of `Step`.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    Cmd, ErrorKind, RedisResult, RedisWrite, Script, ScriptInvocation, ServerErrorKind,
    ToRedisArgs, Value,
};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{Floors, failpoint, wire};
use crate::envelope::KeyCheck;
use crate::error::ErrorCode;
use crate::room::Room;
use crate::store::{
    Conn, Joined, Notice, Outcome, Peer, ResumedRoom, RoomState, SeatState, Step, Taken,
};
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

    /// The nodes that beat, by the time of their last beat (a sorted set).
    pub const LIVE: &str = "chat:{nodes}:live";

    /// When each node's unbroken run of beats began (a hash), so that a node judges others
    /// only once its own beats have been recorded for long enough.
    pub const SINCE: &str = "chat:{nodes}:since";

    /// Held seats' deadlines, for whichever node sweeps them first (a sorted set).
    pub const GRACE: &str = "chat:{nodes}:grace";

    /// The rooms where a node has members (a set).
    pub fn node_rooms(node: NodeId) -> String {
        format!("chat:{{nodes}}:rooms:{node}")
    }

    /// Set when a node was found dead: should it come back, it must not carry on.
    pub fn node_dead(node: NodeId) -> String {
        format!("chat:{{nodes}}:dead:{node}")
    }

    /// Held by the node that reaps a dead node.
    pub fn node_reaper(node: NodeId) -> String {
        format!("chat:{{nodes}}:reap:{node}")
    }

    /// Where other nodes tell a node to close one of its connections (a pub/sub channel).
    pub fn node_control(node: NodeId) -> String {
        format!("chat:{{nodes}}:ctl:{node}")
    }
}

/// Every script, compiled once (its SHA1 computed) when the store starts.
#[derive(Debug)]
pub struct Scripts {
    room_create: Script,
    room_join: Script,
    room_chat: Script,
    room_read: Script,
    room_leave: Script,
    room_drop: Script,
    pub(super) room_expire: Script,
    room_resume: Script,
    pub(super) room_reap: Script,
    room_range: Script,
    room_state: Script,
    pub(super) room_touch: Script,
    session_open: Script,
    session_set: Script,
    session_end: Script,
    session_take: Script,
    session_forget: Script,
    session_leave: Script,
    pub(super) node_beat: Script,
    pub(super) node_dead: Script,
    pub(super) node_claim: Script,
    pub(super) node_forget: Script,
    pub(super) node_lease: Script,
    node_room: Script,
    grace_add: Script,
    pub(super) grace_claim: Script,
}

impl Scripts {
    pub fn new() -> Self {
        let prelude = include_str!("lua/prelude.lua");
        let room = |body: &str| Script::new(&format!("{prelude}\n{body}"));
        Scripts {
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
            node_beat: Script::new(include_str!("lua/node_beat.lua")),
            node_dead: Script::new(include_str!("lua/node_dead.lua")),
            node_claim: Script::new(include_str!("lua/node_claim.lua")),
            node_forget: Script::new(include_str!("lua/node_forget.lua")),
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
fn on_room(script: &Script, code: RoomCode) -> ScriptInvocation<'_> {
    let mut invocation = script.prepare_invoke();
    invocation
        .key(keys::room(code))
        .key(keys::log(code))
        .key(keys::channel(code));
    invocation
}

/// Milliseconds, as the scripts take them.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A reply that is not what its script returns: Redis answered, but not with this step's
/// answer (a script of another version, say).
fn unexpected(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, what))
}

/// A script's reply, read item by item.
struct Reply(std::vec::IntoIter<Value>);

impl Reply {
    fn new(value: Value) -> RedisResult<Self> {
        match value {
            Value::Array(items) => Ok(Reply(items.into_iter())),
            _ => Err(unexpected(
                "a script replied with something other than a list",
            )),
        }
    }

    fn text(&mut self) -> RedisResult<String> {
        match self.0.next() {
            Some(Value::BulkString(bytes)) => {
                String::from_utf8(bytes).map_err(|_| unexpected("a reply that is not UTF-8"))
            }
            Some(Value::SimpleString(text)) => Ok(text),
            Some(Value::Int(n)) => Ok(n.to_string()),
            _ => Err(unexpected("a reply without the text it should have")),
        }
    }

    fn number(&mut self) -> RedisResult<u64> {
        match self.0.next() {
            Some(Value::Int(n)) => u64::try_from(n).map_err(|_| unexpected("a negative count")),
            Some(Value::BulkString(bytes)) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| unexpected("a reply without the number it should have")),
            _ => Err(unexpected("a reply without the number it should have")),
        }
    }

    fn flag(&mut self) -> RedisResult<bool> {
        Ok(self.number()? != 0)
    }

    fn name(&mut self) -> RedisResult<Username> {
        Username::parse(&self.text()?).map_err(|_| unexpected("a stored name that is not valid"))
    }

    /// A room's key check, written as `''` when it has none.
    fn key_check(&mut self) -> RedisResult<Option<KeyCheck>> {
        match self.text()?.as_str() {
            "" => Ok(None),
            text => KeyCheck::parse(text)
                .map(Some)
                .map_err(|_| unexpected("a stored key check that is not valid")),
        }
    }

    /// The rest of the reply, as frames.
    fn frames(self) -> RedisResult<Vec<Utf8Bytes>> {
        self.0
            .map(|value| match value {
                Value::BulkString(bytes) => Utf8Bytes::try_from(bytes)
                    .map_err(|_| unexpected("a stored frame that is not UTF-8")),
                _ => Err(unexpected("a stored frame that is not a string")),
            })
            .collect()
    }
}

/// Runs `step` in Redis: its scripts, in order, and what they say becomes an outcome, and the
/// notices for the actor (a connection to close). The events of rooms come over pub/sub.
pub async fn run(
    scripts: &Scripts,
    redis: &mut MultiplexedConnection,
    step: Step,
    floors: Floors,
) -> RedisResult<(Outcome, Vec<Notice>)> {
    let mut notices = Vec::new();
    let outcome = match step {
        Step::Open { token, conn } => {
            let _: i64 = scripts
                .session_open
                .key(keys::session(&token))
                .arg(conn.encode())
                .arg(conn.node.to_string())
                .arg(millis(SESSION_TTL))
                .invoke_async(redis)
                .await?;
            Outcome::Done
        }
        Step::Name { token, conn, name } => {
            if set_session(scripts, redis, &token, conn, "n", name.as_str()).await? {
                Outcome::Done
            } else {
                Outcome::Moved
            }
        }
        Step::Create {
            code,
            member,
            encrypted,
            key_check,
        } => {
            list_room(scripts, redis, code, member.conn).await?;
            failpoint::reached("create:listed");
            let created: i64 = scripts
                .room_create
                .key(keys::room(code))
                .arg(member.token)
                .arg(member.name.as_str())
                .arg(member.conn.encode())
                .arg(member.conn.node.to_string())
                .arg(u8::from(encrypted))
                .arg(millis(ROOM_TTL))
                .arg(key_check.as_ref().map_or("", KeyCheck::as_str))
                .invoke_async(redis)
                .await?;
            if created == 0 {
                Outcome::CodeTaken
            } else {
                failpoint::reached("create:seated");
                set_session(
                    scripts,
                    redis,
                    &member.token,
                    member.conn,
                    "r",
                    code.as_str(),
                )
                .await?;
                Outcome::Created
            }
        }
        Step::Join { code, member } => {
            list_room(scripts, redis, code, member.conn).await?;
            failpoint::reached("join:listed");
            let value: Value = on_room(&scripts.room_join, code)
                .arg(member.token)
                .arg(member.name.as_str())
                .arg(member.conn.encode())
                .arg(member.conn.node.to_string())
                .arg(millis(ROOM_TTL))
                .arg(Room::HISTORY_LEN)
                .invoke_async(redis)
                .await?;
            let mut reply = Reply::new(value)?;
            match reply.text()?.as_str() {
                "OK" => {
                    let host = reply.name()?;
                    let host_connected = reply.flag()?;
                    let last_id = reply.number()?;
                    let event_seq = reply.number()?;
                    let encrypted = reply.flag()?;
                    let key_check = reply.key_check()?;
                    let history = reply.frames()?;
                    failpoint::reached("join:seated");
                    set_session(
                        scripts,
                        redis,
                        &member.token,
                        member.conn,
                        "r",
                        code.as_str(),
                    )
                    .await?;
                    Outcome::Joined(Box::new(Joined {
                        host,
                        host_connected,
                        history,
                        last_id,
                        event_seq,
                        encrypted,
                        key_check,
                    }))
                }
                "ROOM_FULL" => Outcome::Refused(ErrorCode::RoomFull),
                "USERNAME_TAKEN" => Outcome::Refused(ErrorCode::UsernameTaken),
                _ => Outcome::Refused(ErrorCode::RoomNotFound),
            }
        }
        Step::Chat {
            code,
            token,
            conn,
            tail,
            client_msg_id,
        } => {
            let value: Value = on_room(&scripts.room_chat, code)
                .arg(token)
                .arg(conn.encode())
                .arg(tail.0)
                .arg(client_msg_id.as_deref().unwrap_or(""))
                .arg(Room::MAX_STORED)
                .arg(Room::MAX_STORED_BYTES)
                .arg(floors.chat)
                .invoke_async(redis)
                .await?;
            let mut reply = Reply::new(value)?;
            match reply.text()?.as_str() {
                "OK" => Outcome::Accepted {
                    id: reply.number()?,
                },
                "DUP" => {
                    let frame = reply.text()?;
                    Outcome::Duplicate {
                        frame: (!frame.is_empty()).then(|| Utf8Bytes::from(frame)),
                    }
                }
                other => seat_error(other),
            }
        }
        Step::Read {
            code,
            token,
            conn,
            up_to,
        } => {
            let value: Value = scripts
                .room_read
                .key(keys::room(code))
                .key(keys::channel(code))
                .arg(token)
                .arg(conn.encode())
                .arg(up_to)
                .invoke_async(redis)
                .await?;
            let mut reply = Reply::new(value)?;
            match reply.text()?.as_str() {
                "OK" => Outcome::Done,
                "IGNORED" => Outcome::Ignored,
                "FUTURE" => Outcome::Future {
                    last_id: reply.number()?,
                },
                other => seat_error(other),
            }
        }
        Step::Leave { code, token, conn } => {
            let value: Value = on_room(&scripts.room_leave, code)
                .arg(token)
                .arg(conn.encode())
                .invoke_async(redis)
                .await?;
            match Reply::new(value)?.text()?.as_str() {
                "LEFT" | "DELETED" => {
                    failpoint::reached("leave:left");
                    // Out of the room, whichever connection holds the session now; a session
                    // that is gone stays gone, as in memory.
                    let _: i64 = scripts
                        .session_leave
                        .key(keys::session(&token))
                        .arg(code.as_str())
                        .invoke_async(redis)
                        .await?;
                    Outcome::Done
                }
                other => seat_error(other),
            }
        }
        Step::Drop {
            room,
            token,
            conn,
            grace,
        } => {
            // The seat first: a held seat's grace period is filed for whichever node sweeps it
            // (this one may be restarting), and the session lives as long as the seat may.
            // In a room the outcome is the seat's, outside one the session's, as in memory.
            let mut session_ttl = Duration::ZERO;
            let mut outcome = None;
            if let Some(code) = room {
                let value: Value = on_room(&scripts.room_drop, code)
                    .arg(token)
                    .arg(conn.encode())
                    .arg(millis(grace))
                    .arg(millis(grace + GRACE_MARGIN))
                    .invoke_async(redis)
                    .await?;
                let mut reply = Reply::new(value)?;
                outcome = Some(match reply.text()?.as_str() {
                    "HELD" => {
                        let deadline = reply.number()?;
                        failpoint::reached("drop:held");
                        file_grace(scripts, redis, code, &token, deadline, grace).await?;
                        failpoint::reached("drop:filed");
                        session_ttl = grace + GRACE_MARGIN;
                        Outcome::Held { deadline }
                    }
                    "LEFT" | "DELETED" => {
                        // Given up: the session goes with the seat, whichever connection holds
                        // it now.
                        forget_session(scripts, redis, code, &token).await?;
                        Outcome::Done
                    }
                    other => seat_error(other),
                });
            }
            let ended: i64 = scripts
                .session_end
                .key(keys::session(&token))
                .arg(conn.encode())
                .arg(millis(session_ttl))
                .invoke_async(redis)
                .await?;
            outcome.unwrap_or(if ended == 1 {
                Outcome::Done
            } else {
                Outcome::Moved
            })
        }
        Step::Expire {
            code,
            token,
            deadline,
        } => {
            expire(scripts, redis, code, &token, deadline).await?;
            Outcome::Done
        }
        Step::TakeSession { token, conn } => {
            let value: Value = scripts
                .session_take
                .key(keys::session(&token))
                .arg(conn.encode())
                .arg(conn.node.to_string())
                .arg(millis(SESSION_TTL))
                .invoke_async(redis)
                .await?;
            if value == Value::Nil {
                Outcome::Expired
            } else {
                let mut reply = Reply::new(value)?;
                let name = reply.name()?;
                let room = RoomCode::parse(&reply.text()?).ok();
                let previous = Conn::decode(&reply.text()?)
                    .ok_or_else(|| unexpected("a stored connection that is not valid"))?;
                if room.is_none() {
                    // Outside a room a session lives only as long as its connection: that
                    // connection is still open, and is to be closed.
                    notices.push(Notice::Kick(previous));
                }
                Outcome::Taken(Box::new(Taken {
                    name,
                    room,
                    previous,
                }))
            }
        }
        Step::ResumeSeat {
            code,
            token,
            conn,
            last_id,
        } => {
            list_room(scripts, redis, code, conn).await?;
            failpoint::reached("resume:listed");
            let value: Value = on_room(&scripts.room_resume, code)
                .arg(token)
                .arg(conn.encode())
                .arg(conn.node.to_string())
                .arg(last_id)
                .arg(millis(ROOM_TTL))
                .invoke_async(redis)
                .await?;
            let mut reply = Reply::new(value)?;
            if reply.text()? != "OK" {
                return Ok((Outcome::Expired, notices));
            }
            let _name = reply.text()?;
            let peer_name = reply.text()?;
            let peer_connected = reply.flag()?;
            let peer_read = reply.number()?;
            let last = reply.number()?;
            let event_seq = reply.number()?;
            let encrypted = reply.flag()?;
            let key_check = reply.key_check()?;
            let previous = reply.text()?;
            let _previous_node = reply.text()?;
            let lost = reply.number()?;
            let missed = reply.frames()?;
            if let Some(previous) = Conn::decode(&previous) {
                // Still open: another device or tab, or a connection not yet known to be dead.
                notices.push(Notice::Kick(previous));
            }
            failpoint::reached("resume:seated");
            set_session(scripts, redis, &token, conn, "r", code.as_str()).await?;
            let peer = Username::parse(&peer_name).ok().map(|name| Peer {
                name,
                connected: peer_connected,
                read_up_to: peer_read,
            });
            Outcome::Resumed(Box::new(ResumedRoom {
                code,
                peer,
                missed,
                lost,
                last_id: last,
                event_seq,
                encrypted,
                key_check,
            }))
        }
        Step::Range { code, after, upto } => {
            let value: Value = scripts
                .room_range
                .key(keys::room(code))
                .key(keys::log(code))
                .arg(after)
                .arg(upto.map_or(-1, |upto| i64::try_from(upto).unwrap_or(i64::MAX)))
                .invoke_async(redis)
                .await?;
            let mut items = match value {
                Value::Array(items) => items,
                _ => return Err(unexpected("a range that is not a list")),
            };
            if items.first() == Some(&Value::Int(-1)) {
                Outcome::Frames(None)
            } else {
                let rest = items.split_off(1.min(items.len()));
                let last = Reply::new(Value::Array(items))?.number()?;
                Outcome::Frames(Some((last, Reply::new(Value::Array(rest))?.frames()?)))
            }
        }
        Step::State { code } => {
            let value: Value = scripts
                .room_state
                .key(keys::room(code))
                .key(keys::log(code))
                .arg(floors.chat)
                .arg(floors.event)
                .invoke_async(redis)
                .await?;
            let mut reply = Reply::new(value)?;
            let Ok(event_seq) = reply.number() else {
                return Ok((Outcome::State(None), notices));
            };
            let last_id = reply.number()?;
            let mut seats = Vec::new();
            while let Ok(token) = reply.text() {
                seats.push(SeatState {
                    token: SessionToken::parse(&token)
                        .ok_or_else(|| unexpected("a stored session that is not valid"))?,
                    name: reply.name()?,
                    held: reply.flag()?,
                    read_up_to: reply.number()?,
                });
            }
            Outcome::State(Some(RoomState {
                event_seq,
                last_id,
                seats,
            }))
        }
        Step::Publish { code, event } => {
            let payload = wire::encode(&event);
            let _: i64 = redis::cmd("PUBLISH")
                .arg(keys::channel(code))
                .arg(payload)
                .query_async(redis)
                .await?;
            Outcome::Done
        }
    };
    Ok((outcome, notices))
}

/// `GONE` or `MOVED`, as the scripts of a seated member answer them.
fn seat_error(reply: &str) -> Outcome {
    if reply == "MOVED" {
        Outcome::Moved
    } else {
        Outcome::Gone
    }
}

/// Sets a field of the session `token`, while `conn` holds it. Returns whether it did.
async fn set_session(
    scripts: &Scripts,
    redis: &mut MultiplexedConnection,
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
async fn list_room(
    scripts: &Scripts,
    redis: &mut MultiplexedConnection,
    code: RoomCode,
    conn: Conn,
) -> RedisResult<()> {
    let _: i64 = scripts
        .node_room
        .key(keys::LIVE)
        .key(keys::node_rooms(conn.node))
        .arg(conn.node.to_string())
        .arg(code.as_str())
        .arg(millis(ROOM_TTL))
        .invoke_async(redis)
        .await?;
    Ok(())
}

/// Files a held seat's deadline in the shared list that every node sweeps.
pub async fn file_grace(
    scripts: &Scripts,
    redis: &mut MultiplexedConnection,
    code: RoomCode,
    token: &SessionToken,
    deadline: u64,
    grace: Duration,
) -> RedisResult<()> {
    file_graces(scripts, redis, &[(code, *token, deadline)], grace).await
}

/// Files many held seats' deadlines (`room, token, deadline`) in one call, as a reap holds
/// them.
pub async fn file_graces(
    scripts: &Scripts,
    redis: &mut MultiplexedConnection,
    held: &[(RoomCode, SessionToken, u64)],
    grace: Duration,
) -> RedisResult<()> {
    if held.is_empty() {
        return Ok(());
    }
    let mut invocation = scripts.grace_add.key(keys::GRACE);
    invocation.arg(millis(grace + GRACE_MARGIN));
    for (code, token, deadline) in held {
        invocation
            .arg(deadline)
            .arg(grace_entry(*code, token, *deadline));
    }
    let _: i64 = invocation.invoke_async(redis).await?;
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

/// Sends `calls` of `script` (made by [`batched`]) in one pipeline, and returns their replies
/// in order. Each call is atomic by itself, in its own room; only the round trip is shared,
/// so a batch of rooms costs Redis what the rooms cost one by one, and the caller one await.
/// A Redis that does not know the script (it restarted) is given it, and the batch sent again:
/// the batched steps may run twice, so they must be idempotent.
pub async fn run_batch(
    script: &Script,
    redis: &mut MultiplexedConnection,
    calls: Vec<Cmd>,
) -> RedisResult<Vec<Value>> {
    if calls.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for call in calls {
        pipe.add_command(call);
    }
    match pipe.query_async(redis).await {
        Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            script.load_async(redis).await?;
            pipe.query_async(redis).await
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
    redis: &mut MultiplexedConnection,
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
    redis: &mut MultiplexedConnection,
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
/// their deadlines. The node's listing, claim and grace entries are the watch's, and not done
/// here: `tests/store_model.rs` checks what a reap does to a room against the in-memory store.
#[cfg(feature = "testing")]
pub async fn reap_room(
    scripts: &Scripts,
    redis: &mut MultiplexedConnection,
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
        seats.push((token, reply.number()?));
    }
    for (token, _) in seats.iter().filter(|(_, deadline)| *deadline == 0) {
        forget_session(scripts, redis, code, token).await?;
    }
    Ok(seats)
}

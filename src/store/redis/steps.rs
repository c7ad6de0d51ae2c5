//! Each step of the store, run in Redis: one named function per [`Step`], in the order of the
//! enum. Each lists its script's keys and arguments in the order the Lua file's header gives
//! them, reads the script's reply into named values, and answers the step's [`Outcome`];
//! [`run`] is the table of contents that hands each step to its function.
//!
//! A step that touches more than one hash tag (the room, the node's list of rooms, the session)
//! runs one script per tag, in an order that leaves nothing behind should the node die between
//! two of them: the room listed before a seat is taken, the session written after it (see
//! docs/architecture.md, and the failpoints named here, `failpoint.rs`).
//!
//! The file runs past 400 lines because it holds every step, about thirty lines each: a reader
//! checking a script against its caller finds each in one function, in the order of `Step`.

use std::time::Duration;

use super::target::Commands;
use redis::RedisResult;
use redis::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::scripts::{
    GRACE_MARGIN, HeldSeat, ROOM_TTL, Reply, SESSION_TTL, Scripts, expire, file_grace,
    forget_session, keys, list_room, millis, on_room, set_session, unexpected,
};
use super::{Floors, failpoint, wire};
use crate::envelope::KeyCheck;
use crate::error::ErrorCode;
use crate::room::Room;
use crate::store::{
    ChatTail, Conn, Joined, Member, Notice, Outcome, Peer, ResumedRoom, RoomEvent, RoomState,
    SeatState, Step, Taken,
};
use crate::types::{RoomCode, SessionToken, Username};

/// Where a step runs: the loaded scripts, and the connection to Redis.
pub(super) struct At<'a> {
    pub scripts: &'a Scripts,
    pub redis: &'a mut Commands,
}

/// Runs `step` in Redis: its scripts, in order, and what they say becomes an outcome, and the
/// notices for the actor (a connection to close). The events of rooms come over pub/sub.
/// `floors` is how far this node has told the step's room (see [`Floors`]).
pub async fn run(
    scripts: &Scripts,
    redis: &mut Commands,
    step: Step,
    floors: Floors,
) -> RedisResult<(Outcome, Vec<Notice>)> {
    let at = &mut At { scripts, redis };
    let mut notices = Vec::new();
    let outcome = match step {
        Step::Open { token, conn } => open_session(at, token, conn).await?,
        Step::Name { token, conn, name } => name_session(at, token, conn, &name).await?,
        Step::Create {
            code,
            member,
            encrypted,
            key_check,
        } => create_room(at, code, member, encrypted, key_check).await?,
        Step::Join { code, member } => join_room(at, code, member, floors.event).await?,
        Step::Chat {
            code,
            token,
            conn,
            tail,
            client_msg_id,
            ends_typing,
        } => {
            let message = Message {
                tail,
                client_msg_id,
                ends_typing,
            };
            chat(at, code, token, conn, message, floors.chat).await?
        }
        Step::Read {
            code,
            token,
            conn,
            up_to,
        } => read(at, code, token, conn, up_to, floors.event).await?,
        Step::Leave { code, token, conn } => {
            leave_room(at, code, token, conn, floors.event).await?
        }
        Step::Drop {
            room,
            token,
            conn,
            grace,
        } => drop_connection(at, room, token, conn, grace, floors.event).await?,
        Step::Expire {
            code,
            token,
            deadline,
        } => {
            expire(at.scripts, at.redis, code, &token, deadline).await?;
            Outcome::Done
        }
        Step::TakeSession { token, conn } => take_session(at, token, conn, &mut notices).await?,
        Step::ResumeSeat {
            code,
            token,
            conn,
            last_id,
        } => resume_seat(at, code, token, conn, last_id, floors.event, &mut notices).await?,
        Step::Range { code, after, upto } => range(at, code, after, upto).await?,
        Step::State { code } => room_state(at, code, floors).await?,
        Step::Publish { code, event } => publish(at, code, &event).await?,
    };
    Ok((outcome, notices))
}

/// A new connection's session: no name, no room (`session_open.lua`).
async fn open_session(at: &mut At<'_>, token: SessionToken, conn: Conn) -> RedisResult<Outcome> {
    let _: i64 = at
        .scripts
        .session_open
        .key(keys::session(&token))
        .arg(conn.encode())
        .arg(conn.node.to_string())
        .arg(millis(SESSION_TTL))
        .invoke_async(at.redis)
        .await?;
    Ok(Outcome::Done)
}

/// The session chose a name, while `conn` holds it.
async fn name_session(
    at: &mut At<'_>,
    token: SessionToken,
    conn: Conn,
    name: &Username,
) -> RedisResult<Outcome> {
    let named = set_session(at.scripts, at.redis, &token, conn, "n", name.as_str()).await?;
    Ok(if named { Outcome::Done } else { Outcome::Moved })
}

/// Opens room `code` with `member` as its host: the room listed among the node's first, then
/// the room (`room_create.lua`), then the session names it.
async fn create_room(
    at: &mut At<'_>,
    code: RoomCode,
    member: Member,
    encrypted: bool,
    key_check: Option<KeyCheck>,
) -> RedisResult<Outcome> {
    list_room(at.scripts, at.redis, code, member.conn).await?;
    failpoint::reached("create:listed");
    let created: i64 = at
        .scripts
        .room_create
        .key(keys::room(code))
        .arg(member.token)
        .arg(member.name.as_str())
        .arg(member.conn.encode())
        .arg(member.conn.node.to_string())
        .arg(u8::from(encrypted))
        .arg(millis(ROOM_TTL))
        .arg(key_check.as_ref().map_or("", KeyCheck::as_str))
        .invoke_async(at.redis)
        .await?;
    if created == 0 {
        return Ok(Outcome::CodeTaken);
    }
    failpoint::reached("create:seated");
    name_the_room(at, member.token, member.conn, code).await?;
    Ok(Outcome::Created)
}

/// Seats `member` as the guest of room `code` (`room_join.lua`), listed first and named in its
/// session after, with what a joiner sees. `event_floor`: the last event number this node has
/// told the room, should Redis have gone back behind it (`raise_events`).
async fn join_room(
    at: &mut At<'_>,
    code: RoomCode,
    member: Member,
    event_floor: u64,
) -> RedisResult<Outcome> {
    list_room(at.scripts, at.redis, code, member.conn).await?;
    failpoint::reached("join:listed");
    let value: Value = on_room(&at.scripts.room_join, code)
        .arg(member.token)
        .arg(member.name.as_str())
        .arg(member.conn.encode())
        .arg(member.conn.node.to_string())
        .arg(millis(ROOM_TTL))
        .arg(Room::HISTORY_LEN)
        .arg(event_floor)
        .invoke_async(at.redis)
        .await?;
    let mut reply = Reply::new(value)?;
    match reply.text()?.as_str() {
        "OK" => {}
        "ROOM_FULL" => return Ok(Outcome::Refused(ErrorCode::RoomFull)),
        "USERNAME_TAKEN" => return Ok(Outcome::Refused(ErrorCode::UsernameTaken)),
        _ => return Ok(Outcome::Refused(ErrorCode::RoomNotFound)),
    }
    let joined = Joined {
        host: reply.name()?,
        host_connected: reply.flag()?,
        last_id: reply.number()?,
        event_seq: reply.number()?,
        encrypted: reply.flag()?,
        key_check: reply.key_check()?,
        history: reply.frames()?,
    };
    failpoint::reached("join:seated");
    name_the_room(at, member.token, member.conn, code).await?;
    Ok(Outcome::Joined(Box::new(joined)))
}

/// What a member says in a chat (the fields of [`Step::Chat`] about the message itself).
struct Message {
    tail: ChatTail,
    client_msg_id: Option<Box<str>>,
    ends_typing: bool,
}

/// Appends a message to room `code` with the room's next id (`room_chat.lua`), above
/// `chat_floor`, the last id this node has told the room; a repeated `client_msg_id` is not
/// stored again.
async fn chat(
    at: &mut At<'_>,
    code: RoomCode,
    token: SessionToken,
    conn: Conn,
    message: Message,
    chat_floor: u64,
) -> RedisResult<Outcome> {
    let value: Value = on_room(&at.scripts.room_chat, code)
        .arg(token)
        .arg(conn.encode())
        .arg(message.tail.0)
        .arg(message.client_msg_id.as_deref().unwrap_or(""))
        .arg(Room::MAX_STORED)
        .arg(Room::MAX_STORED_BYTES)
        .arg(chat_floor)
        .arg(u8::from(message.ends_typing))
        .invoke_async(at.redis)
        .await?;
    let mut reply = Reply::new(value)?;
    Ok(match reply.text()?.as_str() {
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
    })
}

/// The member has read up to `up_to` (`room_read.lua`); the receipt's event number goes above
/// `event_floor`, as in a join.
async fn read(
    at: &mut At<'_>,
    code: RoomCode,
    token: SessionToken,
    conn: Conn,
    up_to: u64,
    event_floor: u64,
) -> RedisResult<Outcome> {
    let value: Value = at
        .scripts
        .room_read
        .key(keys::room(code))
        .arg(token)
        .arg(conn.encode())
        .arg(up_to)
        .arg(event_floor)
        .invoke_async(at.redis)
        .await?;
    let mut reply = Reply::new(value)?;
    Ok(match reply.text()?.as_str() {
        "OK" => Outcome::Done,
        "IGNORED" => Outcome::Ignored,
        "FUTURE" => Outcome::Future {
            last_id: reply.number()?,
        },
        other => seat_error(other),
    })
}

/// The member leaves room `code` (`room_leave.lua`), then its session no longer names it. The
/// event goes above `event_floor`, as in a join.
async fn leave_room(
    at: &mut At<'_>,
    code: RoomCode,
    token: SessionToken,
    conn: Conn,
    event_floor: u64,
) -> RedisResult<Outcome> {
    let value: Value = on_room(&at.scripts.room_leave, code)
        .arg(token)
        .arg(conn.encode())
        .arg(event_floor)
        .invoke_async(at.redis)
        .await?;
    match Reply::new(value)?.text()?.as_str() {
        "LEFT" | "DELETED" => {
            failpoint::reached("leave:left");
            // Out of the room, whichever connection holds the session now; a session that is
            // gone stays gone, as in memory.
            let _: i64 = at
                .scripts
                .session_leave
                .key(keys::session(&token))
                .arg(code.as_str())
                .invoke_async(at.redis)
                .await?;
            Ok(Outcome::Done)
        }
        other => Ok(seat_error(other)),
    }
}

/// The connection `conn` of session `token` ended, in `room` if it was in one: the seat first
/// (`room_drop.lua`: held for `grace`, its grace period filed for whichever node sweeps it,
/// since this one may be restarting; or given up, and the session with it), then the session
/// (`session_end.lua`), which lives as long as the seat may. In a room the outcome is the
/// seat's, outside one the session's, as in memory. The room's event goes above `event_floor`,
/// as in a join.
async fn drop_connection(
    at: &mut At<'_>,
    room: Option<RoomCode>,
    token: SessionToken,
    conn: Conn,
    grace: Duration,
    event_floor: u64,
) -> RedisResult<Outcome> {
    let mut session_ttl = Duration::ZERO;
    let mut outcome = None;
    if let Some(code) = room {
        let value: Value = on_room(&at.scripts.room_drop, code)
            .arg(token)
            .arg(conn.encode())
            .arg(millis(grace))
            .arg(millis(grace + GRACE_MARGIN))
            .arg(event_floor)
            .invoke_async(at.redis)
            .await?;
        let mut reply = Reply::new(value)?;
        outcome = Some(match reply.text()?.as_str() {
            "HELD" => {
                let deadline = reply.number()?;
                let held = HeldSeat {
                    code,
                    token,
                    deadline,
                    left: reply.number()?,
                };
                failpoint::reached("drop:held");
                file_grace(at.scripts, at.redis, held, grace).await?;
                failpoint::reached("drop:filed");
                session_ttl = grace + GRACE_MARGIN;
                Outcome::Held { deadline }
            }
            "LEFT" | "DELETED" => {
                // Given up: the session goes with the seat, whichever connection holds it now.
                forget_session(at.scripts, at.redis, code, &token).await?;
                Outcome::Done
            }
            "MOVED" => {
                // The seat is another connection's: this one had taken the session over for a
                // resume whose seat's step did not run (answered `UNAVAILABLE`). The session
                // lives as long as a held seat's, so that the member can resume again; without
                // a grace period it ends.
                if !grace.is_zero() {
                    session_ttl = grace + GRACE_MARGIN;
                }
                Outcome::Moved
            }
            other => seat_error(other),
        });
    }
    let ended: i64 = at
        .scripts
        .session_end
        .key(keys::session(&token))
        .arg(conn.encode())
        .arg(millis(session_ttl))
        .invoke_async(at.redis)
        .await?;
    Ok(outcome.unwrap_or(if ended == 1 {
        Outcome::Done
    } else {
        Outcome::Moved
    }))
}

/// Connection `conn` takes over session `token` (`session_take.lua`); outside a room, the
/// connection that held it is to be closed (a notice).
async fn take_session(
    at: &mut At<'_>,
    token: SessionToken,
    conn: Conn,
    notices: &mut Vec<Notice>,
) -> RedisResult<Outcome> {
    let value: Value = at
        .scripts
        .session_take
        .key(keys::session(&token))
        .arg(conn.encode())
        .arg(conn.node.to_string())
        .arg(millis(SESSION_TTL))
        .invoke_async(at.redis)
        .await?;
    if value == Value::Nil {
        return Ok(Outcome::Expired);
    }
    let mut reply = Reply::new(value)?;
    let taken = Taken {
        name: reply.name()?,
        room: RoomCode::parse(&reply.text()?).ok(),
        previous: Conn::decode(&reply.text()?)
            .ok_or_else(|| unexpected("a stored connection that is not valid"))?,
    };
    if taken.room.is_none() {
        // Outside a room a session lives only as long as its connection: that connection is
        // still open, and is to be closed.
        notices.push(Notice::Kick(taken.previous));
    }
    Ok(Outcome::Taken(Box::new(taken)))
}

/// Moves the seat of session `token` in room `code` onto connection `conn` and replays what it
/// missed after `last_id` (`room_resume.lua`): listed first, named in the session after; a
/// connection that still held the seat is to be closed (a notice). The event goes above
/// `event_floor`, as in a join; and in a room whose history may have gone back (Redis
/// restarted or failed over since a node vouched for it), `last_id` is the floor of its ids.
async fn resume_seat(
    at: &mut At<'_>,
    code: RoomCode,
    token: SessionToken,
    conn: Conn,
    last_id: u64,
    event_floor: u64,
    notices: &mut Vec<Notice>,
) -> RedisResult<Outcome> {
    list_room(at.scripts, at.redis, code, conn).await?;
    failpoint::reached("resume:listed");
    let value: Value = on_room(&at.scripts.room_resume, code)
        .arg(token)
        .arg(conn.encode())
        .arg(conn.node.to_string())
        .arg(last_id)
        .arg(millis(ROOM_TTL))
        .arg(event_floor)
        .invoke_async(at.redis)
        .await?;
    let mut reply = Reply::new(value)?;
    if reply.text()? != "OK" {
        return Ok(Outcome::Expired);
    }
    let _name = reply.text()?;
    let peer_name = reply.text()?;
    let peer_connected = reply.flag()?;
    let peer_read = reply.number()?;
    let last_id = reply.number()?;
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
    name_the_room(at, token, conn, code).await?;
    let peer = Username::parse(&peer_name).ok().map(|name| Peer {
        name,
        connected: peer_connected,
        read_up_to: peer_read,
    });
    Ok(Outcome::Resumed(Box::new(ResumedRoom {
        code,
        peer,
        missed,
        lost,
        last_id,
        event_seq,
        encrypted,
        key_check,
    })))
}

/// Room `code`'s messages after `after`, up to `upto` (or its last), with its last id
/// (`room_range.lua`); none if the room is gone.
async fn range(
    at: &mut At<'_>,
    code: RoomCode,
    after: u64,
    upto: Option<u64>,
) -> RedisResult<Outcome> {
    let value: Value = at
        .scripts
        .room_range
        .key(keys::room(code))
        .key(keys::log(code))
        .arg(after)
        .arg(upto.map_or(-1, |upto| i64::try_from(upto).unwrap_or(i64::MAX)))
        .invoke_async(at.redis)
        .await?;
    let mut items = match value {
        Value::Array(items) => items,
        _ => return Err(unexpected("a range that is not a list")),
    };
    if items.first() == Some(&Value::Int(-1)) {
        return Ok(Outcome::Frames(None));
    }
    let rest = items.split_off(1.min(items.len()));
    let last = Reply::new(Value::Array(items))?.number()?;
    let frames = Reply::new(Value::Array(rest))?.frames()?;
    Ok(Outcome::Frames(Some((last, frames))))
}

/// Where room `code` stands, for a repair (`room_state.lua`), its counters first raised above
/// `floors`, what this node has told the room, should Redis have lost writes.
async fn room_state(at: &mut At<'_>, code: RoomCode, floors: Floors) -> RedisResult<Outcome> {
    let value: Value = at
        .scripts
        .room_state
        .key(keys::room(code))
        .key(keys::log(code))
        .arg(floors.chat)
        .arg(floors.event)
        .invoke_async(at.redis)
        .await?;
    let mut reply = Reply::new(value)?;
    let Ok(event_seq) = reply.number() else {
        return Ok(Outcome::State(None)); // The room is gone.
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
    Ok(Outcome::State(Some(RoomState {
        event_seq,
        last_id,
        seats,
    })))
}

/// Tells the nodes that hear room `code` of `event`, on its channel.
async fn publish(at: &mut At<'_>, code: RoomCode, event: &RoomEvent) -> RedisResult<Outcome> {
    let _: i64 = redis::cmd(at.scripts.publish)
        .arg(keys::channel(code))
        .arg(wire::encode(event))
        .query_async(at.redis)
        .await?;
    Ok(Outcome::Done)
}

/// After a seat was taken (create, join, resume): the session names room `code`, while `conn`
/// holds it. Last of a step's scripts, so that a node dying before it leaves a seat the reaper
/// finds, never a session naming a room it has no seat in.
async fn name_the_room(
    at: &mut At<'_>,
    token: SessionToken,
    conn: Conn,
    code: RoomCode,
) -> RedisResult<()> {
    set_session(at.scripts, at.redis, &token, conn, "r", code.as_str()).await?;
    Ok(())
}

/// `GONE` or `MOVED`, as the scripts of a seated member answer them.
fn seat_error(reply: &str) -> Outcome {
    if reply == "MOVED" {
        Outcome::Moved
    } else {
        Outcome::Gone
    }
}

//! The state of record: which rooms exist, who sits in them, what was said there, and which
//! sessions can be resumed; and the atomic steps that change it.
//!
//! A node (one chat-server process) keeps its own connections in its actor. What must be
//! shared with other nodes is kept by a store: in this process's memory ([`MemoryStore`]), the
//! default, or in Redis when several nodes share rooms. Both offer the same steps ([`Step`]),
//! each answered with an [`Outcome`], and both tell the nodes with members in a room what
//! happened there ([`RoomEvent`]), in one order per room. The protocol above these steps (who is
//! told what and in which order, typing, limits) is the actor's, written once for both.
//!
//! Each step is atomic: two nodes that seat a guest in the same room at the same moment cannot
//! both succeed, and two messages cannot get the same id. The in-memory store gets this from
//! the actor, which applies one step at a time; the Redis store from running each step as one
//! Lua script.

pub mod memory;
pub mod redis;

use std::fmt::{self, Write as _};
use std::time::Duration;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::envelope::KeyCheck;
use crate::error::ErrorCode;
use crate::message::LeaveReason;
use crate::types::{ClientId, RoomCode, SessionToken, Username};

pub use memory::MemoryStore;
pub use redis::RedisStore;

/// One chat-server process, among those that share a store. Random per process: a restarted
/// node is a new node.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(pub u64);

impl NodeId {
    /// A fresh random id.
    pub fn random() -> Self {
        NodeId(rand::random())
    }
}

impl NodeId {
    /// A node id as [`NodeId`]'s `Display` writes it (16 hex digits).
    pub fn parse(text: &str) -> Option<Self> {
        u64::from_str_radix(text, 16).ok().map(NodeId)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

/// Where a session is held: a connection, on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conn {
    /// The connection.
    pub client: ClientId,
    /// The node it is on.
    pub node: NodeId,
}

impl Conn {
    /// The connection as a store writes it down: `NODE/CLIENT`.
    pub fn encode(&self) -> String {
        format!("{}/{}", self.node, self.client)
    }

    /// A connection as [`Conn::encode`] wrote it.
    pub fn decode(text: &str) -> Option<Self> {
        let (node, client) = text.split_once('/')?;
        Some(Conn {
            node: NodeId::parse(node)?,
            client: ClientId::parse(client)?,
        })
    }
}

/// A person entering a room: their session, the connection that holds it, and their name.
#[derive(Debug, Clone)]
pub struct Member {
    pub token: SessionToken,
    pub conn: Conn,
    pub name: Username,
}

/// An atomic step on the state of record.
#[derive(Debug, Clone)]
pub enum Step {
    /// A new connection's session: no name, no room. → [`Outcome::Done`].
    Open { token: SessionToken, conn: Conn },
    /// The session chose a name. → `Done`, or `Moved` if another connection holds it now.
    Name {
        token: SessionToken,
        conn: Conn,
        name: Username,
    },
    /// Open a room under `code` with `member` as its host, end-to-end encrypted if
    /// `encrypted`, keeping `key_check` for those who join or resume. → `Created`, or
    /// `CodeTaken` if a room has that code already (the actor draws another).
    Create {
        code: RoomCode,
        member: Member,
        encrypted: bool,
        key_check: Option<KeyCheck>,
    },
    /// Seat `member` as the guest of room `code`, under the two-member cap and the name rule.
    /// → `Joined`, or `Refused` with `ROOM_NOT_FOUND`, `ROOM_FULL` or `USERNAME_TAKEN`.
    Join { code: RoomCode, member: Member },
    /// Append a message to room `code` with the room's next id. `tail` is the message's JSON
    /// after its id (see [`ChatTail`]). A repeat of a `client_msg_id` this member used for one
    /// of its last [`RECENT_CLIENT_IDS`] messages is not stored again. `ends_typing`: the
    /// sender was typing, and the message ends that (see [`RoomEvent::Chat`]). → `Accepted`,
    /// `Duplicate`, `Gone` or `Moved`.
    Chat {
        code: RoomCode,
        token: SessionToken,
        conn: Conn,
        tail: ChatTail,
        client_msg_id: Option<Box<str>>,
        ends_typing: bool,
    },
    /// The member has read up to `up_to`. → `Done`, `Ignored` (not past its last receipt),
    /// `Future` (past the last message), `Gone` or `Moved`.
    Read {
        code: RoomCode,
        token: SessionToken,
        conn: Conn,
        up_to: u64,
    },
    /// The member leaves its room (`leave_room`). → `Done`, `Gone` or `Moved`.
    Leave {
        code: RoomCode,
        token: SessionToken,
        conn: Conn,
    },
    /// The session's connection ended. In a room with a grace period, its seat is held until
    /// `grace` from now (→ `Held`); otherwise the session ends, and the seat with it (→ `Done`).
    /// Nothing happens if another connection holds the session by now (→ `Moved`).
    Drop {
        room: Option<RoomCode>,
        token: SessionToken,
        conn: Conn,
        grace: Duration,
    },
    /// A held seat's grace period ended: the member leaves for good, unless it resumed (its
    /// deadline changed) meanwhile. → `Done`.
    Expire {
        code: RoomCode,
        token: SessionToken,
        deadline: u64,
    },
    /// Take over the session `token` for the new connection `conn`. → `Taken`, or `Expired`
    /// (no such session, or one that never chose a name). Outside a room that is all of a
    /// resume; in a room, [`Step::ResumeSeat`] follows.
    TakeSession { token: SessionToken, conn: Conn },
    /// Move the seat of `token` in room `code` onto `conn`, replaying the room's messages after
    /// `last_id`. → `Resumed` (its `room` set) or `Expired` (the seat is gone).
    ResumeSeat {
        code: RoomCode,
        token: SessionToken,
        conn: Conn,
        last_id: u64,
    },
    /// The room's messages after `after` and up to `upto` (all, if `None`), to fill a gap in
    /// what a node received. → `Frames`.
    Range {
        code: RoomCode,
        after: u64,
        upto: Option<u64>,
    },
    /// Who sits in room `code` now, to repair what a node missed of its events. → `State`.
    State { code: RoomCode },
    /// Tells room `code` something that is not kept (typing), in order with its steps.
    /// → `Done`.
    Publish { code: RoomCode, event: RoomEvent },
}

impl Step {
    /// Whether the step only keeps the books (a room member's connection gone, a grace period
    /// over): no client waits for it, and a store that could not be reached must be asked again
    /// later, or the room would wait for a member that is not coming back.
    ///
    /// Only steps about a room are: they number at most one or two per room member this node
    /// had when the store went away (a member cannot enter a room without the store), so the
    /// list kept for retrying stays bounded however many connections come and go meanwhile. A
    /// connection that ends outside a room is not retried: its session's key runs out by itself
    /// (`SESSION_TTL`). Nor is a new connection's `Open`: its session is made again by its
    /// first `Name`.
    pub fn is_bookkeeping(&self) -> bool {
        matches!(self, Step::Drop { room: Some(_), .. } | Step::Expire { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ClientId;

    /// What is kept to be tried again is what a room needs, never what connections that come
    /// and go while the store is away leave behind.
    #[test]
    fn only_a_room_s_bookkeeping_is_retried() {
        let token = SessionToken::random();
        let conn = Conn {
            client: ClientId::new(),
            node: NodeId::random(),
        };
        let code = RoomCode::random();
        let drop = |room| Step::Drop {
            room,
            token,
            conn,
            grace: Duration::from_secs(30),
        };
        assert!(drop(Some(code)).is_bookkeeping());
        assert!(
            Step::Expire {
                code,
                token,
                deadline: 1
            }
            .is_bookkeeping()
        );
        assert!(!drop(None).is_bookkeeping());
        assert!(!Step::Open { token, conn }.is_bookkeeping());
    }
}

/// How a [`Step`] turned out.
#[derive(Debug)]
pub enum Outcome {
    /// The step did what it says.
    Done,
    /// `Create`: the room exists now.
    Created,
    /// `Create`: a room has that code already.
    CodeTaken,
    /// `Join`: the member is seated. (Boxed, like `Resumed`: the other outcomes are small.)
    Joined(Box<Joined>),
    /// `Join`: refused, with this code.
    Refused(ErrorCode),
    /// `Chat`: stored with this id.
    Accepted { id: u64 },
    /// `Chat`: a repeat of a message the member sent before; here is that message, if the
    /// room still keeps it.
    Duplicate { frame: Option<Utf8Bytes> },
    /// `Read`: not past the member's last receipt; nothing to tell.
    Ignored,
    /// `Read`: past the room's last message, whose id this is.
    Future { last_id: u64 },
    /// The member has no seat there any more (it left, or was held and expired).
    Gone,
    /// Another connection holds the session now: this one speaks for it no longer.
    Moved,
    /// `Drop`: the seat is held until this deadline (milliseconds since the Unix epoch).
    Held { deadline: u64 },
    /// `TakeSession`: the session is this connection's now.
    Taken(Box<Taken>),
    /// `ResumeSeat`: the seat is this connection's now.
    Resumed(Box<ResumedRoom>),
    /// `TakeSession`, `ResumeSeat`: no such session or seat, or its grace period is over.
    Expired,
    /// `Range`: the room's last id, and the frames asked for (`None`: the room is gone).
    Frames(Option<(u64, Vec<Utf8Bytes>)>),
    /// `State`: the room as it is (`None`: the room is gone).
    State(Option<RoomState>),
    /// The store could not be reached, or did not answer in time. The step may or may not
    /// have been applied.
    Unavailable,
}

/// A session taken over by a new connection.
#[derive(Debug)]
pub struct Taken {
    /// Its name.
    pub name: Username,
    /// Its room, if it is in one (a [`Step::ResumeSeat`] follows).
    pub room: Option<RoomCode>,
    /// The connection that held it before.
    pub previous: Conn,
}

/// Who sits in a room, and its counters.
#[derive(Debug)]
pub struct RoomState {
    /// The room's event counter.
    pub event_seq: u64,
    /// The id of its last message.
    pub last_id: u64,
    /// Its members.
    pub seats: Vec<SeatState>,
}

/// A member of a room, as [`RoomState`] gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatState {
    pub token: SessionToken,
    pub name: Username,
    /// Whether the seat is held for a resume (its connection gone).
    pub held: bool,
    /// The highest id it has said it has read.
    pub read_up_to: u64,
}

/// What a joiner needs: the room as it was at the moment it was seated.
#[derive(Debug)]
pub struct Joined {
    /// The host's name.
    pub host: Username,
    /// Whether the host's connection is up (or its seat held for a resume).
    pub host_connected: bool,
    /// What a joiner sees of the conversation (see [`crate::room::Room::history`]), oldest first.
    pub history: Vec<Utf8Bytes>,
    /// The id of the last message said in the room: the joiner has seen everything up to it.
    pub last_id: u64,
    /// The room's event counter after the join: events up to it are the joiner's past.
    pub event_seq: u64,
    /// Whether the room is end-to-end encrypted.
    pub encrypted: bool,
    /// The check value of the room's key, if its creator gave one.
    pub key_check: Option<KeyCheck>,
}

/// A resuming session's room.
#[derive(Debug)]
pub struct ResumedRoom {
    pub code: RoomCode,
    /// The other member, if there is one.
    pub peer: Option<Peer>,
    /// The messages after the `last_id` the client gave, back to when it entered the room.
    pub missed: Vec<Utf8Bytes>,
    /// How many messages after `last_id` the room no longer keeps (its storage bounds).
    pub lost: u64,
    /// The id of the last message said in the room.
    pub last_id: u64,
    /// The room's event counter after the resume.
    pub event_seq: u64,
    /// Whether the room is end-to-end encrypted.
    pub encrypted: bool,
    /// The check value of the room's key, if its creator gave one.
    pub key_check: Option<KeyCheck>,
}

/// The other member of a room, as a resuming member sees it.
#[derive(Debug)]
pub struct Peer {
    pub name: Username,
    /// Whether its connection is up (rather than its seat held for a resume).
    pub connected: bool,
    /// The highest id it has said it has read (0 for none).
    pub read_up_to: u64,
}

/// What happened in a room, told to every node with members there.
///
/// Chats are numbered by their `id`, the other events by the room's event counter (`seq`), so
/// that a node can tell what a member has already seen (a joiner's history, a resume's
/// `missed`) and notice what it missed. Typing is not counted: it is fleeting, and a member
/// that misses it loses nothing.
#[derive(Debug, Clone)]
pub enum RoomEvent {
    /// A message was stored, with this id; `frame` is the `chat` frame both members receive.
    /// `token` is its sender's. `ends_typing`: its sender was typing until it sent it, and the
    /// peer is told `stop_typing` first. The message carries that news itself, rather than a
    /// `StopTyping` of its own before it, which would cost every typed message a second trip
    /// through the store (and through Redis, a second publish).
    Chat {
        id: u64,
        token: SessionToken,
        frame: Utf8Bytes,
        ends_typing: bool,
    },
    /// A guest was seated.
    Joined {
        seq: u64,
        token: SessionToken,
        name: Username,
    },
    /// A member left for good.
    Left {
        seq: u64,
        token: SessionToken,
        name: Username,
        reason: LeaveReason,
    },
    /// A member's connection dropped; its seat is held.
    Disconnected {
        seq: u64,
        token: SessionToken,
        name: Username,
    },
    /// A member resumed its session.
    Reconnected {
        seq: u64,
        token: SessionToken,
        name: Username,
    },
    /// A member has read up to `up_to`.
    Read {
        seq: u64,
        token: SessionToken,
        name: Username,
        up_to: u64,
    },
    /// A member started typing.
    Typing { token: SessionToken, name: Username },
    /// A member stopped typing.
    StopTyping { token: SessionToken, name: Username },
}

impl RoomEvent {
    /// The member the event is about, or whose message it is.
    pub fn token(&self) -> &SessionToken {
        match self {
            RoomEvent::Chat { token, .. }
            | RoomEvent::Joined { token, .. }
            | RoomEvent::Left { token, .. }
            | RoomEvent::Disconnected { token, .. }
            | RoomEvent::Reconnected { token, .. }
            | RoomEvent::Read { token, .. }
            | RoomEvent::Typing { token, .. }
            | RoomEvent::StopTyping { token, .. } => token,
        }
    }

    /// The event's place in the room's count of events, if it is counted.
    pub fn seq(&self) -> Option<u64> {
        match self {
            RoomEvent::Joined { seq, .. }
            | RoomEvent::Left { seq, .. }
            | RoomEvent::Disconnected { seq, .. }
            | RoomEvent::Reconnected { seq, .. }
            | RoomEvent::Read { seq, .. } => Some(*seq),
            RoomEvent::Chat { .. } | RoomEvent::Typing { .. } | RoomEvent::StopTyping { .. } => {
                None
            }
        }
    }
}

/// What a step tells others besides its outcome: an event of a room, or a connection to close
/// because its session moved.
#[derive(Debug, Clone)]
pub enum Notice {
    Room(RoomCode, RoomEvent),
    /// Close this connection with 4000: another connection resumed its session.
    Kick(Conn),
}

/// A chat message's JSON from after its id to its end, such as
/// `,"from":"ada","content":"hi","timestamp":1764000000000}`: everything but the id, which only
/// the store can give. The store completes the frame as `{"type":"chat","id":` + id + tail, so
/// that the one encoder of messages is serde's, whichever store numbers them.
#[derive(Debug, Clone)]
pub struct ChatTail(pub String);

impl ChatTail {
    /// The `chat` frame of the message numbered `id`.
    pub fn frame(&self, id: u64) -> Utf8Bytes {
        const HEAD: &str = "{\"type\":\"chat\",\"id\":";
        // One allocation of the right size: this is every message's path.
        let mut frame = String::with_capacity(HEAD.len() + 20 + self.0.len());
        frame.push_str(HEAD);
        // Writing to a `String` cannot fail.
        let _ = write!(frame, "{id}");
        frame.push_str(&self.0);
        Utf8Bytes::from(frame)
    }
}

/// How many of a member's `client_msg_id`s a room remembers, to drop a repeat.
pub const RECENT_CLIENT_IDS: usize = 100;

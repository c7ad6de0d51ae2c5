//! A property test of the actor: random sequences of operations from several clients, checked
//! after every step against a model of protocol v1.
//!
//! The model below is written from docs/protocol.md, not from the server's code: it says, for
//! each operation, which messages each client must receive, in which order. After every step the
//! test checks that
//!
//! - the actor's own invariants hold ([`ChatServer::check_invariants`]): no room with zero or
//!   more than two members, every client in at most one room and the room agreeing;
//! - the actor's state (who is connected, named, in which room, typing; each room's history)
//!   is the model's;
//! - every client that reads has received exactly what the model says, in that order. So every
//!   accepted chat reaches both members exactly once and in id order, no `error` is sent where
//!   the rules allow a request, and a refused request gets the right code.
//!
//! Rooms are plain or end-to-end encrypted, and chats are marked `encrypted` as their room is,
//! or not: the model knows which envelopes the server must relay untouched and which chats it
//! must refuse, and that a plain room's messages carry no `encrypted` field at all.
//!
//! Some clients are slow: their queue holds two messages and they read only now and then. The
//! model tracks their queues too, so it knows exactly when the actor must drop one as a slow
//! consumer and what its peer is told.
//!
//! A second property runs the same with the per-client limits on (rate limit, failed joins),
//! with time paused and moved on by the test, so the model can follow every token.
//!
//! The actor is driven through [`ChatServer::handle`], one command at a time, without sockets.
//! Each property tries 256 sequences; `PROPTEST_CASES=5000 cargo test --test actor_properties`
//! searches longer. A failure is shrunk to a short sequence, printed, and its seed kept in
//! `tests/actor_properties.proptest-regressions` (commit that file: it replays first next time).

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::Value;
use tokio::time::Instant;

use chat_server::Config;
use chat_server::error::{ErrorCode, Refusal};
use chat_server::limits::{Rate, TokenBucket};
use chat_server::message::ClientMessage;
use chat_server::metrics::Metrics;
use chat_server::outbox::{self, TryRecvError};
use chat_server::outbox::{Close, Outbound};
use chat_server::server::{ChatServer, ServerCommand, Snapshot};
use chat_server::types::ClientId;

/// How many connections can exist at once (each slot holds at most one).
const SLOTS: usize = 4;
/// The queue of a client that reads after every step: it never fills up.
const EAGER_QUEUE: usize = 256;
/// The queue of a slow client, which reads only when told to: two messages.
const SLOW_QUEUE: usize = 2;

/// Names to choose from: valid ones that collide, and invalid ones.
const NAMES: &[&str] = &[
    "ada",
    " ada ",
    "grace",
    "",
    "   ",
    "bell\u{7}",
    "thirty-two characters, the most!",
    "thirty-three characters: too many",
];
/// Chat contents: ordinary, empty, blank, around the 4096-character limit; and for a chat
/// marked `encrypted`, envelopes as docs/protocol.md describes them: the smallest and the
/// largest of each version, one over each limit, a v2 one not padded to a whole block, and
/// ones that are not envelopes at all.
fn content(choice: usize, encrypted: bool) -> String {
    if encrypted {
        return match choice % 10 {
            0 => format!("v1.{}", "A".repeat(38)),
            1 => format!("v1.{}", "-_".repeat(10_941) + "A"),
            2 => format!("v1.{}", "A".repeat(21_884)),
            3 => "hi".into(),
            4 => format!("v1.{}=", "A".repeat(38)),
            5 => format!("v2.{}", "A".repeat(135)),
            6 => format!("v2.{}", "-_".repeat(10_990)),
            7 => format!("v2.{}", "A".repeat(21_984)),
            8 => format!("v2.{}", "A".repeat(136)),
            _ => format!("v1.{}", "A".repeat(37)),
        };
    }
    match choice % 5 {
        0 => "hi".into(),
        1 => String::new(),
        2 => " \n\t".into(),
        3 => "x".repeat(4097),
        _ => "ü".repeat(4096),
    }
}

/// The longest envelope docs/protocol.md allows, in characters (v2's; v1's is 21,886).
const MAX_ENVELOPE_CHARS: usize = 21_983;

/// The refusal docs/protocol.md prescribes for `content` as an envelope, if any.
fn envelope_refusal(content: &str) -> Option<ErrorCode> {
    if content.len() > MAX_ENVELOPE_CHARS {
        return Some(ErrorCode::MessageTooLong);
    }
    let (encoded, v2) = match (content.strip_prefix("v2."), content.strip_prefix("v1.")) {
        (Some(encoded), _) => (encoded, true),
        (None, Some(encoded)) => (encoded, false),
        (None, None) => return Some(ErrorCode::InvalidMessage),
    };
    let base64url = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if !encoded.chars().all(base64url) || encoded.len() % 4 == 1 {
        return Some(ErrorCode::InvalidMessage);
    }
    let bytes = encoded.len() * 3 / 4;
    if v2 {
        // 37 bytes and a plaintext padded to whole blocks of 64 bytes.
        if bytes < 37 + 64 || (bytes - 37) % 64 != 0 {
            return Some(ErrorCode::InvalidMessage);
        }
    } else if content.len() > 21_886 {
        return Some(ErrorCode::MessageTooLong);
    } else if bytes < 12 + 16 {
        return Some(ErrorCode::InvalidMessage);
    }
    None
}

/// Whether a chat says `"encrypted": true`: as its room is, mostly; or as a broken or hostile
/// client would have it.
#[derive(Debug, Clone, Copy)]
enum Sealed {
    /// Encrypted in an encrypted room, plain in a plain one.
    AsTheRoom,
    /// Always this, whatever the room.
    Always(bool),
}

/// One thing a client (identified by its slot) does.
#[derive(Debug, Clone)]
enum Op {
    Connect {
        slot: usize,
        slow: bool,
    },
    SetUsername {
        slot: usize,
        name: usize,
    },
    CreateRoom {
        slot: usize,
        encrypted: bool,
    },
    Join {
        slot: usize,
        target: Target,
    },
    Chat {
        slot: usize,
        content: usize,
        sealed: Sealed,
    },
    Typing {
        slot: usize,
    },
    StopTyping {
        slot: usize,
    },
    Leave {
        slot: usize,
    },
    /// Sends something that is not a request (bad JSON, a binary frame).
    Garbage {
        slot: usize,
    },
    /// The connection ends, as the handler would report it.
    Disconnect {
        slot: usize,
    },
    /// A slow client catches up on its queue.
    Read {
        slot: usize,
    },
    /// Time passes (only the limits care).
    Wait {
        millis: u64,
    },
}

impl Op {
    /// The client doing it, if it is a client's doing.
    fn slot(&self) -> Option<usize> {
        match *self {
            Op::Connect { slot, .. }
            | Op::SetUsername { slot, .. }
            | Op::CreateRoom { slot, .. }
            | Op::Join { slot, .. }
            | Op::Chat { slot, .. }
            | Op::Typing { slot }
            | Op::StopTyping { slot }
            | Op::Leave { slot }
            | Op::Garbage { slot }
            | Op::Disconnect { slot }
            | Op::Read { slot } => Some(slot),
            Op::Wait { .. } => None,
        }
    }
}

/// The room code a `join_room` uses.
#[derive(Debug, Clone)]
enum Target {
    /// The code of the n-th live room (by code), as printed.
    Live(usize),
    /// The same, typed sloppily: lower case, with spaces around.
    Sloppy(usize),
    /// Not six characters of the alphabet.
    Malformed,
    /// Well-formed, but (almost surely) no room has it.
    Foreign,
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    let target = prop_oneof![
        4 => any::<usize>().prop_map(Target::Live),
        2 => any::<usize>().prop_map(Target::Sloppy),
        1 => Just(Target::Malformed),
        1 => Just(Target::Foreign),
    ];
    let sealed = prop_oneof![
        4 => Just(Sealed::AsTheRoom),
        1 => any::<bool>().prop_map(Sealed::Always),
    ];
    prop_oneof![
        3 => (slot.clone(), prop::bool::weighted(0.3)).prop_map(|(slot, slow)| Op::Connect { slot, slow }),
        3 => (slot.clone(), 0..NAMES.len()).prop_map(|(slot, name)| Op::SetUsername { slot, name }),
        2 => (slot.clone(), any::<bool>()).prop_map(|(slot, encrypted)| Op::CreateRoom { slot, encrypted }),
        3 => (slot.clone(), target).prop_map(|(slot, target)| Op::Join { slot, target }),
        4 => (slot.clone(), 0..30_usize, sealed).prop_map(|(slot, content, sealed)| Op::Chat { slot, content, sealed }),
        2 => slot.clone().prop_map(|slot| Op::Typing { slot }),
        1 => slot.clone().prop_map(|slot| Op::StopTyping { slot }),
        1 => slot.clone().prop_map(|slot| Op::Leave { slot }),
        1 => slot.clone().prop_map(|slot| Op::Garbage { slot }),
        1 => slot.clone().prop_map(|slot| Op::Disconnect { slot }),
        2 => slot.prop_map(|slot| Op::Read { slot }),
        2 => (0..1500_u64).prop_map(|millis| Op::Wait { millis }),
    ]
}

/// A server message, reduced to what the model can predict (no timestamps).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Msg {
    Connected(String),
    UsernameSet(String),
    RoomCreated {
        code: String,
        encrypted: bool,
    },
    RoomJoined {
        code: String,
        peer: String,
        history: Vec<u64>,
        encrypted: bool,
    },
    PeerJoined(String),
    Chat {
        id: u64,
        from: String,
        content: String,
        encrypted: bool,
    },
    Typing(String),
    StopTyping(String),
    PeerLeft {
        username: String,
        reason: String,
    },
    RoomLeft(String),
    Error(String),
}

impl Msg {
    /// Reads a frame the actor queued.
    fn parse(frame: &str) -> Msg {
        let value: Value = serde_json::from_str(frame).expect("the actor sends JSON");
        let text = |field: &str| value[field].as_str().expect("a string field").to_string();
        // `encrypted` is on the wire only when true: a plain room's messages are v1's.
        let encrypted = match value.get("encrypted") {
            None => false,
            Some(flag) => {
                assert_eq!(flag, true, "`encrypted` is absent or true in {value}");
                true
            }
        };
        match value["type"].as_str().expect("a type") {
            "connected" => Msg::Connected(text("client_id")),
            "username_set" => Msg::UsernameSet(text("username")),
            "room_created" => Msg::RoomCreated {
                code: text("room_code"),
                encrypted,
            },
            "room_joined" => Msg::RoomJoined {
                code: text("room_code"),
                peer: text("peer"),
                history: value["history"]
                    .as_array()
                    .expect("history is an array")
                    .iter()
                    .map(|chat| {
                        assert_eq!(chat["type"], "chat");
                        chat["id"].as_u64().expect("an id")
                    })
                    .collect(),
                encrypted,
            },
            "peer_joined" => Msg::PeerJoined(text("username")),
            "chat" => Msg::Chat {
                id: value["id"].as_u64().expect("an id"),
                from: text("from"),
                content: text("content"),
                encrypted,
            },
            "typing" => Msg::Typing(text("username")),
            "stop_typing" => Msg::StopTyping(text("username")),
            "peer_left" => Msg::PeerLeft {
                username: text("username"),
                reason: text("reason"),
            },
            "room_left" => Msg::RoomLeft(text("room_code")),
            "error" => {
                assert!(!text("message").is_empty());
                Msg::Error(text("code"))
            }
            other => panic!("unknown message type {other}"),
        }
    }
}

/// One connection: its end of the queue, and what the model knows of it.
struct Conn {
    id: ClientId,
    inbox: outbox::Receiver,
    capacity: usize,
    slow: bool,
    /// Still known to the actor: not dropped as a slow consumer or a flooder.
    live: bool,
    /// Once dropped: the close frame the actor queued for it.
    closed_with: Option<Close>,
    name: Option<String>,
    room: Option<String>,
    typing: bool,
    /// What the model expects in `inbox` that has not been read yet.
    expected: VecDeque<Msg>,
    /// With limits on: (messages, refusals, failed joins) token buckets, as documented.
    buckets: Option<(TokenBucket, TokenBucket, TokenBucket)>,
}

/// The limits the second property runs with.
const RATE_LIMIT: u32 = 2;
/// See [`RATE_LIMIT`].
const RATE_BURST: u32 = 4;
/// See [`RATE_LIMIT`].
const MAX_FAILED_JOINS: u32 = 2;

/// The rule of the message and refusal buckets, as documented: `RATE_BURST` at once, then
/// `RATE_LIMIT` a second.
fn message_rate() -> Rate {
    Rate::new(RATE_BURST, f64::from(RATE_LIMIT))
}

/// The rule of the failed-join buckets: `MAX_FAILED_JOINS` a minute.
fn join_rate() -> Rate {
    Rate::per_period(MAX_FAILED_JOINS, Duration::from_secs(60))
}

/// A room as the model sees it; members are slots.
struct ModelRoom {
    host: usize,
    guest: Option<usize>,
    encrypted: bool,
    next_id: u64,
    history: VecDeque<u64>,
}

/// Protocol v1 as a plain state machine over slots.
#[derive(Default)]
struct Model {
    slots: Vec<Option<Conn>>,
    rooms: BTreeMap<String, ModelRoom>,
    /// Slots whose queue was full during the current step, in the order it happened.
    too_slow: Vec<usize>,
    /// With limits on: the failed joins of the one address every client comes from, once it
    /// has failed a join.
    address_joins: Option<TokenBucket>,
}

/// The room code alphabet.
const ALPHABET: &str = "ABCDEFGHJKMNPQRSTUVWXYZ23456789";

impl Model {
    fn conn(&mut self, slot: usize) -> &mut Conn {
        self.slots[slot].as_mut().expect("an occupied slot")
    }

    /// Queues `msg` for `slot`, or notes it as too slow if its queue is full.
    fn send(&mut self, slot: usize, msg: Msg) {
        let conn = self.conn(slot);
        if !conn.live {
            return;
        }
        if conn.expected.len() == conn.capacity {
            self.too_slow.push(slot);
        } else {
            conn.expected.push_back(msg);
        }
    }

    fn error(&mut self, slot: usize, code: ErrorCode) {
        self.send(slot, Msg::Error(code.as_str().into()));
    }

    fn peer(&self, slot: usize) -> Option<usize> {
        let code = self.slots[slot].as_ref()?.room.as_ref()?;
        let room = &self.rooms[code];
        if room.host == slot {
            room.guest
        } else {
            Some(room.host)
        }
    }

    fn name(&self, slot: usize) -> String {
        self.slots[slot]
            .as_ref()
            .and_then(|conn| conn.name.clone())
            .expect("a named member")
    }

    /// Applies one operation to the model. `after` is the actor's state after the same
    /// operation, from which the model learns only the code of a room just created.
    fn apply(&mut self, op: &Op, input: Option<&str>, after: &Snapshot) {
        // Every message a client sends passes the rate limit first.
        let sends_a_message = !matches!(
            op,
            Op::Connect { .. } | Op::Read { .. } | Op::Wait { .. } | Op::Disconnect { .. }
        );
        if let Some(slot) = op.slot()
            && sends_a_message
            && !self.admit(slot)
        {
            return;
        }
        match *op {
            Op::Connect { .. } | Op::Read { .. } | Op::Wait { .. } => {}
            Op::Disconnect { slot } => self.disconnect(slot, None),
            Op::Garbage { slot } => self.error(slot, ErrorCode::InvalidMessage),
            Op::SetUsername { slot, name } => {
                if self.conn(slot).room.is_some() {
                    return self.error(slot, ErrorCode::AlreadyInRoom);
                }
                let trimmed = NAMES[name].trim();
                let count = trimmed.chars().count();
                if count == 0 || count > 32 || trimmed.chars().any(char::is_control) {
                    return self.error(slot, ErrorCode::InvalidUsername);
                }
                self.conn(slot).name = Some(trimmed.into());
                self.send(slot, Msg::UsernameSet(trimmed.into()));
            }
            Op::CreateRoom { slot, encrypted } => {
                if let Err(code) = self.may_enter(slot) {
                    return self.error(slot, code);
                }
                let id = self.conn(slot).id;
                let Some(code) = after.sessions.get(&id).and_then(|c| c.room) else {
                    // Only possible if the creator was dropped as too slow in this very step,
                    // which takes its new room with it: its `room_created` could not be queued.
                    let conn = self.conn(slot);
                    assert_eq!(conn.expected.len(), conn.capacity, "a room was created");
                    self.too_slow.push(slot);
                    return;
                };
                let code = code.as_str().to_string();
                self.conn(slot).room = Some(code.clone());
                let room = ModelRoom {
                    host: slot,
                    guest: None,
                    encrypted,
                    next_id: 1,
                    history: VecDeque::new(),
                };
                assert!(
                    self.rooms.insert(code.clone(), room).is_none(),
                    "a fresh code"
                );
                self.send(slot, Msg::RoomCreated { code, encrypted });
            }
            Op::Join { slot, .. } => {
                if let Err(code) = self.may_enter(slot) {
                    return self.error(slot, code);
                }
                let input = input.expect("a join has a code");
                let code = input.trim().to_ascii_uppercase();
                if code.len() != 6 || !code.chars().all(|c| ALPHABET.contains(c)) {
                    return self.error(slot, ErrorCode::InvalidRoomCode);
                }
                if !self.may_fail_a_join(slot) {
                    return self.error(slot, ErrorCode::RateLimited);
                }
                let Some(room) = self.rooms.get(&code) else {
                    self.failed_join(slot);
                    return self.error(slot, ErrorCode::RoomNotFound);
                };
                if room.guest.is_some() {
                    self.failed_join(slot);
                    return self.error(slot, ErrorCode::RoomFull);
                }
                let (host, history) = (room.host, room.history.iter().copied().collect());
                let encrypted = room.encrypted;
                let joiner = self.name(slot);
                let host_name = self.name(host);
                if joiner == host_name {
                    self.failed_join(slot);
                    return self.error(slot, ErrorCode::UsernameTaken);
                }
                if let Some(room) = self.rooms.get_mut(&code) {
                    room.guest = Some(slot);
                }
                self.conn(slot).room = Some(code.clone());
                let welcome = Msg::RoomJoined {
                    code,
                    peer: host_name,
                    history,
                    encrypted,
                };
                self.send(slot, welcome);
                self.send(host, Msg::PeerJoined(joiner));
            }
            Op::Chat {
                slot,
                content: choice,
                sealed,
            } => {
                let encrypted = self.sealed(slot, sealed);
                let Some(code) = self.member(slot) else {
                    return;
                };
                let content = content(choice, encrypted);
                match (self.rooms[&code].encrypted, encrypted) {
                    (true, false) => return self.error(slot, ErrorCode::EncryptionRequired),
                    (false, true) => return self.error(slot, ErrorCode::InvalidMessage),
                    (true, true) => {
                        if let Some(refusal) = envelope_refusal(&content) {
                            return self.error(slot, refusal);
                        }
                    }
                    (false, false) => {
                        if content.trim().is_empty() {
                            return self.error(slot, ErrorCode::EmptyMessage);
                        }
                        if content.chars().count() > 4096 {
                            return self.error(slot, ErrorCode::MessageTooLong);
                        }
                    }
                }
                self.end_typing(slot);
                let from = self.name(slot);
                let room = self.rooms.get_mut(&code).expect("the member's room");
                let id = room.next_id;
                room.next_id += 1;
                if room.history.len() == 100 {
                    room.history.pop_front();
                }
                room.history.push_back(id);
                let members: Vec<usize> = std::iter::once(room.host).chain(room.guest).collect();
                for member in members {
                    let chat = Msg::Chat {
                        id,
                        from: from.clone(),
                        content: content.clone(),
                        encrypted,
                    };
                    self.send(member, chat);
                }
            }
            Op::Typing { slot } => {
                if self.member(slot).is_none() || self.conn(slot).typing {
                    return;
                }
                self.conn(slot).typing = true;
                if let Some(peer) = self.peer(slot) {
                    let name = self.name(slot);
                    self.send(peer, Msg::Typing(name));
                }
            }
            Op::StopTyping { slot } => {
                if self.member(slot).is_some() {
                    self.end_typing(slot);
                }
            }
            Op::Leave { slot } => {
                if let Some(code) = self.member(slot) {
                    self.leave(slot, "left");
                    self.send(slot, Msg::RoomLeft(code));
                }
            }
        }
    }

    /// The rate limit: whether a message from `slot` is handled. Over the limit it gets
    /// `RATE_LIMITED`; once its refusals are over the limit too, it is disconnected.
    fn admit(&mut self, slot: usize) -> bool {
        let now = Instant::now();
        let Some((messages, refusals, _)) = self.conn(slot).buckets.as_mut() else {
            return true;
        };
        if messages.try_take(&message_rate(), now) {
            return true;
        }
        let flooding = !refusals.try_take(&message_rate(), now);
        self.error(slot, ErrorCode::RateLimited);
        if flooding {
            self.disconnect(slot, Some(Close::FLOODING));
        }
        false
    }

    /// Whether `slot` and its address may still fail a join.
    fn may_fail_a_join(&mut self, slot: usize) -> bool {
        let now = Instant::now();
        let Some((_, _, joins)) = self.conn(slot).buckets.as_mut() else {
            return true;
        };
        joins.has_token(&join_rate(), now)
            && self
                .address_joins
                .as_mut()
                .is_none_or(|joins| joins.has_token(&join_rate(), now))
    }

    /// Counts a failed join against `slot` and its address.
    fn failed_join(&mut self, slot: usize) {
        let now = Instant::now();
        let Some((_, _, joins)) = self.conn(slot).buckets.as_mut() else {
            return;
        };
        joins.try_take(&join_rate(), now);
        self.address_joins
            .get_or_insert_with(|| TokenBucket::full(&join_rate(), now))
            .try_take(&join_rate(), now);
    }

    /// The member's room, or `NOT_IN_ROOM` sent and `None`.
    fn member(&mut self, slot: usize) -> Option<String> {
        let room = self.conn(slot).room.clone();
        if room.is_none() {
            self.error(slot, ErrorCode::NotInRoom);
        }
        room
    }

    fn may_enter(&mut self, slot: usize) -> Result<(), ErrorCode> {
        let conn = self.conn(slot);
        if conn.name.is_none() {
            Err(ErrorCode::UsernameRequired)
        } else if conn.room.is_some() {
            Err(ErrorCode::AlreadyInRoom)
        } else {
            Ok(())
        }
    }

    fn end_typing(&mut self, slot: usize) {
        if !std::mem::take(&mut self.conn(slot).typing) {
            return;
        }
        if let Some(peer) = self.peer(slot) {
            let name = self.name(slot);
            self.send(peer, Msg::StopTyping(name));
        }
    }

    fn leave(&mut self, slot: usize, reason: &str) {
        let Some(code) = self.conn(slot).room.clone() else {
            return;
        };
        self.end_typing(slot);
        let username = self.name(slot);
        self.conn(slot).room = None;
        let room = self.rooms.get_mut(&code).expect("the member's room");
        room.history.clear();
        let stays = if room.host == slot {
            room.guest.take().inspect(|guest| room.host = *guest)
        } else {
            room.guest = None;
            Some(room.host)
        };
        match stays {
            Some(stays) => self.send(
                stays,
                Msg::PeerLeft {
                    username,
                    reason: reason.into(),
                },
            ),
            None => {
                self.rooms.remove(&code);
            }
        }
    }

    /// The actor forgets the client and closes its connection with `close`, or the connection
    /// ended by itself (`None`); its peer is told.
    fn disconnect(&mut self, slot: usize, close: Option<Close>) {
        if self.conn(slot).live {
            self.leave(slot, "disconnected");
            self.conn(slot).live = false;
            self.conn(slot).closed_with = close;
        }
    }

    /// After a step, drops the slow consumers found during it, most recent first, as the actor
    /// does; telling their peers may find more.
    fn drop_slow_consumers(&mut self) {
        while let Some(slot) = self.too_slow.pop() {
            self.disconnect(slot, Some(Close::TOO_SLOW));
        }
    }

    /// Whether a chat by `slot` says `"encrypted": true` (see [`Sealed`]).
    fn sealed(&self, slot: usize, sealed: Sealed) -> bool {
        match sealed {
            Sealed::Always(encrypted) => encrypted,
            Sealed::AsTheRoom => self.slots[slot]
                .as_ref()
                .and_then(|conn| conn.room.as_ref())
                .is_some_and(|code| self.rooms[code].encrypted),
        }
    }

    /// The code a `join_room` sends.
    fn join_input(&self, target: &Target) -> String {
        let live: Vec<&String> = self.rooms.keys().collect();
        match target {
            Target::Live(n) | Target::Sloppy(n) if !live.is_empty() => {
                let code = live[n % live.len()];
                if matches!(target, Target::Sloppy(_)) {
                    format!("  {}\t", code.to_ascii_lowercase())
                } else {
                    code.clone()
                }
            }
            Target::Malformed => "AB1".into(),
            _ => "ZZZZZZ".into(),
        }
    }
}

/// Protocol v1: no resume grace (a lost connection is `peer_left` at once, as the model says).
/// Without `limited`, no limits either, so that they do not get in the way of random traffic;
/// with it, small limits the sequences reach often (see [`RATE_LIMIT`]).
fn v1_config(limited: bool) -> Config {
    let config = Config {
        resume_grace: Duration::ZERO,
        ..Config::default()
    };
    if limited {
        Config {
            rate_limit: RATE_LIMIT,
            rate_burst: RATE_BURST,
            max_failed_joins: MAX_FAILED_JOINS,
            ..config
        }
    } else {
        config.unlimited()
    }
}

/// Drives one sequence of operations through the actor and the model, checking after each step,
/// with the limits on or off (see [`v1_config`]).
async fn run(ops: &[Op], limited: bool) -> Result<(), TestCaseError> {
    let metrics = Arc::new(Metrics::new());
    let (mut server, _handle) = ChatServer::new(&v1_config(limited), metrics);
    let mut model = Model {
        slots: (0..SLOTS).map(|_| None).collect(),
        ..Model::default()
    };
    let address = IpAddr::V4(Ipv4Addr::LOCALHOST);

    for (step, op) in ops.iter().enumerate() {
        let Some(slot) = op.slot() else {
            if let Op::Wait { millis } = *op {
                // Time is paused: this moves it on at once, for the actor and the model alike.
                tokio::time::advance(Duration::from_millis(millis)).await;
            }
            continue;
        };
        if let Op::Connect { slow, .. } = *op {
            if model.slots[slot].as_ref().is_some_and(|conn| conn.live) {
                continue;
            }
            let capacity = if slow { SLOW_QUEUE } else { EAGER_QUEUE };
            let (outbound, inbox) = outbox::channel(capacity);
            let id = ClientId::new();
            server.handle(ServerCommand::Connect {
                client_id: id,
                address,
                outbound,
            });
            model.slots[slot] = Some(Conn {
                id,
                inbox,
                capacity,
                slow,
                live: true,
                closed_with: None,
                name: None,
                room: None,
                typing: false,
                expected: VecDeque::from([Msg::Connected(id.to_string())]),
                buckets: limited.then(|| {
                    let now = Instant::now();
                    (
                        TokenBucket::full(&message_rate(), now),
                        TokenBucket::full(&message_rate(), now),
                        TokenBucket::full(&join_rate(), now),
                    )
                }),
            });
        }
        let Some(conn) = model.slots[slot].as_ref() else {
            continue; // Nobody there: nothing to do.
        };
        let client_id = conn.id;
        let mut input = None;
        let request = match op {
            Op::Connect { .. }
            | Op::Read { .. }
            | Op::Disconnect { .. }
            | Op::Garbage { .. }
            | Op::Wait { .. } => None,
            Op::SetUsername { name, .. } => Some(ClientMessage::SetUsername {
                username: NAMES[*name].into(),
            }),
            Op::CreateRoom { encrypted, .. } => Some(ClientMessage::CreateRoom {
                encrypted: *encrypted,
                key_check: None,
            }),
            Op::Join { target, .. } => {
                let code = model.join_input(target);
                input = Some(code.clone());
                Some(ClientMessage::JoinRoom { room_code: code })
            }
            Op::Chat {
                content: choice,
                sealed,
                ..
            } => {
                let encrypted = model.sealed(slot, *sealed);
                Some(ClientMessage::Chat {
                    content: content(*choice, encrypted).into(),
                    encrypted,
                    client_msg_id: None,
                })
            }
            Op::Typing { .. } => Some(ClientMessage::Typing),
            Op::StopTyping { .. } => Some(ClientMessage::StopTyping),
            Op::Leave { .. } => Some(ClientMessage::LeaveRoom),
        };
        let live = conn.live;
        match op {
            Op::Disconnect { .. } => server.handle(ServerCommand::Disconnect { client_id }),
            Op::Garbage { .. } => server.handle(ServerCommand::Reject {
                client_id,
                refusal: Refusal::new(ErrorCode::InvalidMessage, "not JSON"),
            }),
            _ => {
                if let Some(request) = request {
                    server.handle(ServerCommand::Request { client_id, request });
                }
            }
        }

        // The model only acts for clients the actor still knows: a dropped slow consumer's
        // requests are ignored.
        let after = server.snapshot();
        if live {
            model.apply(op, input.as_deref(), &after);
        }
        model.drop_slow_consumers();

        let context = || format!("after step {step} ({op:?}) of {ops:#?}");
        if let Err(broken) = server.check_invariants() {
            return Err(TestCaseError::fail(format!("{broken}, {}", context())));
        }
        check_state(&model, &after)
            .map_err(|e| TestCaseError::fail(format!("{e}, {}", context())))?;

        // Eager clients read everything after every step; a slow one only when told to.
        for (index, conn) in model.slots.iter_mut().enumerate() {
            let Some(conn) = conn else { continue };
            if !conn.slow || index == slot && matches!(op, Op::Read { .. } | Op::Disconnect { .. })
            {
                read_all(conn).map_err(|e| TestCaseError::fail(format!("{e}, {}", context())))?;
            }
        }
        if let Op::Disconnect { .. } = op {
            // The handler drops its end of the queue when its connection ends.
            model.slots[slot] = None;
        }
    }

    // Everyone leaves: the server ends with no clients and no rooms.
    for slot in 0..SLOTS {
        if let Some(conn) = &model.slots[slot] {
            server.handle(ServerCommand::Disconnect { client_id: conn.id });
        }
    }
    prop_assert_eq!((server.session_count(), server.room_count()), (0, 0));
    prop_assert!(server.check_invariants().is_ok());
    Ok(())
}

/// Reads everything queued for `conn` and compares it with what the model expects. A client the
/// actor dropped must find its queue closed after the last message.
fn read_all(conn: &mut Conn) -> Result<(), String> {
    loop {
        match conn.inbox.try_recv() {
            Ok(Outbound::Close(close)) => {
                // Only a client the actor dropped is closed, with the close it was dropped for.
                if conn.live || conn.closed_with != Some(close) {
                    return Err(format!("unexpected close {close:?}"));
                }
            }
            Ok(Outbound::Message(frame)) => expect_next(conn, &frame)?,
            Ok(Outbound::Batch(frames)) => {
                for frame in frames {
                    expect_next(conn, &frame)?;
                }
            }
            Err(TryRecvError::Empty) => {
                if !conn.live {
                    return Err("a dropped client's queue is still open".into());
                }
                break;
            }
            Err(TryRecvError::Disconnected) => {
                if conn.live {
                    return Err("a live client's queue was closed".into());
                }
                break;
            }
        }
    }
    match conn.expected.front() {
        Some(missing) => Err(format!("{missing:?} never arrived")),
        None => Ok(()),
    }
}

/// Checks that `frame` is the next message the model expects `conn` to receive.
fn expect_next(conn: &mut Conn, frame: &str) -> Result<(), String> {
    let got = Msg::parse(frame);
    match conn.expected.pop_front() {
        Some(want) if want == got => Ok(()),
        want => Err(format!("expected {want:?}, got {got:?}")),
    }
}

/// The actor's state is the model's: the same clients, names, rooms, members, typing states
/// and histories.
fn check_state(model: &Model, actor: &Snapshot) -> Result<(), String> {
    let live: Vec<&Conn> = model.slots.iter().flatten().filter(|c| c.live).collect();
    if actor.sessions.len() != live.len() {
        return Err(format!(
            "{} clients, the model has {}",
            actor.sessions.len(),
            live.len()
        ));
    }
    for conn in &live {
        let view = actor
            .sessions
            .get(&conn.id)
            .ok_or("a live client is unknown")?;
        let room = view.room.map(|code| code.as_str().to_string());
        if (&view.username, &room, view.typing) != (&conn.name, &conn.room, conn.typing) {
            return Err(format!(
                "client is ({:?}, {room:?}, typing {}), the model says ({:?}, {:?}, typing {})",
                view.username, view.typing, conn.name, conn.room, conn.typing
            ));
        }
    }
    if actor.rooms.len() != model.rooms.len() {
        return Err(format!(
            "{} rooms, the model has {}",
            actor.rooms.len(),
            model.rooms.len()
        ));
    }
    let id_of = |slot: usize| model.slots[slot].as_ref().map(|conn| conn.id);
    for (code, room) in &model.rooms {
        let view = actor
            .rooms
            .iter()
            .find(|(actual, _)| actual.as_str() == code)
            .map(|(_, view)| view)
            .ok_or_else(|| format!("room {code} is missing"))?;
        if Some(view.host) != id_of(room.host) || view.guest != room.guest.and_then(id_of) {
            return Err(format!("room {code} has other members"));
        }
        if view.history != room.history.iter().copied().collect::<Vec<_>>() {
            return Err(format!("room {code} has history {:?}", view.history));
        }
    }
    Ok(())
}

/// A current-thread runtime with time paused: the actor's timers need a runtime to exist, and
/// paused time lets `Op::Wait` move the clock by exactly what it says. Nothing polls the actor's
/// timer queues here, so typing never expires mid-sequence.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

/// How many sequences each property tries: `PROPTEST_CASES`, or 256.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(256)
}

proptest! {
    // 256 sequences each by default; `PROPTEST_CASES=5000` searches longer.
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Any sequence of operations by up to four clients, slow ones included, keeps the actor's
    /// invariants and yields exactly the messages protocol v1 prescribes, to exactly the
    /// clients it prescribes them to.
    #[test]
    fn the_actor_follows_the_protocol(ops in prop::collection::vec(op(), 1..120)) {
        paused_runtime().block_on(run(&ops, false))?;
    }

    /// The same with the rate limit and the failed-join limit on and reached often: every
    /// message over the rate limit gets `RATE_LIMITED` and nothing else, a client that keeps
    /// going is disconnected (and its peer told), and joins are refused once a client or its
    /// address has failed too many, exactly as documented.
    #[test]
    fn the_actor_holds_its_limits(ops in prop::collection::vec(op(), 1..120)) {
        paused_runtime().block_on(run(&ops, true))?;
    }
}

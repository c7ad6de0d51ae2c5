//! Inspection, for tests only (compiled with `cfg(test)` or the `testing` feature): counts, a
//! copy of who is where, and the invariants that must hold between any two events.

use std::collections::HashMap;

use super::ChatServer;
use crate::session::Session;
use crate::types::{ClientId, RoomCode};

impl ChatServer {
    /// How many sessions there are: connected clients, and sessions held for a resume.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// How many rooms exist.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// A copy of who is where, for tests that hold the actor to a model of the protocol.
    #[doc(hidden)]
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            sessions: self
                .sessions
                .iter()
                .map(|(id, session)| {
                    let view = SessionView {
                        username: session.username.as_ref().map(|name| name.to_string()),
                        room: session.room,
                        typing: session.typing.is_some(),
                    };
                    (*id, view)
                })
                .collect(),
            rooms: self
                .rooms
                .iter()
                .map(|(code, room)| {
                    let view = RoomView {
                        host: room.host(),
                        guest: room.guest(),
                        history: room.history().map(|message| message.id).collect(),
                    };
                    (*code, view)
                })
                .collect(),
        }
    }

    /// Checks the rules that must hold between any two events, and says which one is broken:
    /// every room has one or two members, who are known clients that agree they are in it;
    /// every client in a room is one of its members and has a name; only members type; a
    /// named client has no naming deadline; each timer queue (typing, naming, grace) holds one
    /// entry per client that needs one; every client's session token leads to it, and a held
    /// session has a grace timer; no slow consumer is left waiting to be dropped; and every
    /// room's log is in order, within its bounds and counted right, with the rooms' total
    /// within `--max-stored-bytes`.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        for (code, room) in &self.rooms {
            if room.code() != *code {
                return Err(format!("room {code} is filed under another code"));
            }
            let members: Vec<ClientId> = room.members().collect();
            if members.len() == 2 && members[0] == members[1] {
                return Err(format!("room {code} has the same client in both seats"));
            }
            for member in &members {
                let Some(client) = self.sessions.get(member) else {
                    return Err(format!("room {code} has a member that is not connected"));
                };
                if client.room != Some(*code) {
                    return Err(format!(
                        "a member of {code} thinks it is in {:?}",
                        client.room
                    ));
                }
                if client.username.is_none() {
                    return Err(format!("a member of {code} has no name"));
                }
            }
        }
        for (id, client) in &self.sessions {
            if client.id != *id {
                return Err(format!("client {id} is filed under another id"));
            }
            if let Some(code) = client.room {
                let Some(room) = self.rooms.get(&code) else {
                    return Err(format!("client {id} is in {code}, which does not exist"));
                };
                if !room.members().any(|member| member == *id) {
                    return Err(format!("client {id} is in {code}, which does not list it"));
                }
            } else if client.typing.is_some() {
                return Err(format!("client {id} types outside a room"));
            }
            if client.username.is_some() && client.naming_deadline.is_some() {
                return Err(format!(
                    "client {id} is named but still has a naming deadline"
                ));
            }
        }
        let (typing, naming, grace) = self.timers.pending();
        let count = |has: fn(&Session) -> bool| self.sessions.values().filter(|s| has(s)).count();
        if typing != count(|s| s.typing.is_some()) {
            return Err("typing timers and typing members differ".into());
        }
        if naming != count(|s| s.naming_deadline.is_some()) {
            return Err("naming timers and unnamed clients differ".into());
        }
        if grace != count(|s| s.grace.is_some()) {
            return Err("grace timers and held sessions differ".into());
        }
        if !self.too_slow.is_empty() {
            return Err("slow consumers are left over after an event".into());
        }
        // Sessions: one per client, under its own token; a held one has a grace timer.
        if self.tokens.len() != self.sessions.len() {
            return Err("sessions and clients differ in number".into());
        }
        for (id, client) in &self.sessions {
            if self.tokens.get(&client.session_token) != Some(id) {
                return Err(format!("client {id}'s token does not lead to it"));
            }
            if client.grace.is_some() == client.is_connected() {
                return Err(format!(
                    "client {id} is held without a grace timer, or the reverse"
                ));
            }
        }
        // Storage: each room's log is sound, and the total is theirs and within the budget.
        let mut stored = 0;
        for room in self.rooms.values() {
            room.check_log()?;
            stored += room.stored_bytes();
        }
        if stored != self.stored_bytes {
            return Err(format!(
                "rooms hold {stored} stored bytes, the total says {}",
                self.stored_bytes
            ));
        }
        if self.max_stored_bytes.is_some_and(|budget| stored > budget) {
            return Err(format!("{stored} stored bytes are over the budget"));
        }
        Ok(())
    }
}

/// Who is where in the actor, copied out for tests ([`ChatServer::snapshot`]).
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Every session: connected clients, and sessions held for a resume.
    pub sessions: HashMap<ClientId, SessionView>,
    /// Every live room.
    pub rooms: HashMap<RoomCode, RoomView>,
}

/// One session in a [`Snapshot`].
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    /// Its name, if it has set one.
    pub username: Option<String>,
    /// Its room, if it is in one.
    pub room: Option<RoomCode>,
    /// Whether it is typing.
    pub typing: bool,
}

/// One room in a [`Snapshot`].
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomView {
    /// The host.
    pub host: ClientId,
    /// The guest, if there is one.
    pub guest: Option<ClientId>,
    /// The ids of the messages in its history, oldest first.
    pub history: Vec<u64>,
}

//! Inspection, for tests only (compiled with `cfg(test)` or the `testing` feature): counts, a
//! copy of who is where, and the invariants that must hold between any two events.

use std::collections::HashMap;

use super::{ChatServer, Store};
use crate::connection::Connection;
use crate::store::MemoryStore;
use crate::types::{ClientId, RoomCode};

impl ChatServer {
    /// The in-memory store, which is the only one these inspections look into.
    fn memory_store(&self) -> Option<&MemoryStore> {
        match &self.store {
            Store::Memory(store) => Some(store),
            Store::Redis(_) => None,
        }
    }

    /// How many sessions there are: connected clients, and seats held for a resume.
    pub fn session_count(&self) -> usize {
        self.connections.len() + self.held_seats().count()
    }

    /// How many rooms exist.
    pub fn room_count(&self) -> usize {
        self.memory_store().map_or(0, MemoryStore::room_count)
    }

    /// The seats held for a resume: (the connection that held it last, its room).
    fn held_seats(&self) -> impl Iterator<Item = (ClientId, RoomCode, &crate::room::Seat)> {
        self.memory_store()
            .into_iter()
            .flat_map(MemoryStore::rooms)
            .flat_map(|room| {
                room.seats()
                    .filter(|seat| !seat.is_connected())
                    .map(move |seat| (seat.conn.client, room.code(), seat))
            })
    }

    /// A copy of who is where, for tests that hold the actor to a model of the protocol.
    /// A held seat is listed under the connection that held it last.
    #[doc(hidden)]
    pub fn snapshot(&self) -> Snapshot {
        let connected = self.connections.iter().map(|(id, connection)| {
            let view = SessionView {
                username: connection.name.as_ref().map(|name| name.to_string()),
                room: connection.room,
                typing: connection.typing.is_some(),
            };
            (*id, view)
        });
        let held = self.held_seats().map(|(id, code, seat)| {
            let view = SessionView {
                username: Some(seat.name.to_string()),
                room: Some(code),
                typing: false,
            };
            (id, view)
        });
        Snapshot {
            sessions: connected.chain(held).collect(),
            rooms: self
                .memory_store()
                .into_iter()
                .flat_map(MemoryStore::rooms)
                .map(|room| {
                    let view = RoomView {
                        host: room.host().conn.client,
                        guest: room.guest().map(|guest| guest.conn.client),
                        history: room.history().map(|message| message.id).collect(),
                    };
                    (room.code(), view)
                })
                .collect(),
        }
    }

    /// Checks the rules that must hold between any two events, and says which one is broken:
    /// the store's own bookkeeping (its rooms' logs and their total, sessions and seats
    /// agreeing); every connection in a room holds a seat there under its session, and every
    /// seat held by one of ours is a connection of ours in that room; only members type; a
    /// named connection has no naming deadline; the typing and naming timers are one per
    /// connection that needs one, and every held seat has a grace timer; and no slow consumer
    /// is left waiting to be dropped.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        if let Some(store) = self.memory_store() {
            store.check()?;
        }
        for (id, connection) in &self.connections {
            if connection.id != *id {
                return Err(format!("connection {id} is filed under another id"));
            }
            if let Some(code) = connection.room {
                let seat = self
                    .memory_store()
                    .and_then(|store| store.room(code))
                    .and_then(|room| room.seat_of(&connection.token))
                    .ok_or_else(|| format!("connection {id} is in {code}, which has no seat"))?;
                if seat.conn != self.conn(*id) || !seat.is_connected() {
                    return Err(format!("connection {id}'s seat in {code} is not its own"));
                }
            } else if connection.typing.is_some() {
                return Err(format!("connection {id} types outside a room"));
            }
            if connection.name.is_some() && connection.naming_deadline.is_some() {
                return Err(format!(
                    "connection {id} is named but still has a naming deadline"
                ));
            }
        }
        for room in self.memory_store().into_iter().flat_map(MemoryStore::rooms) {
            for seat in room.seats().filter(|seat| seat.is_connected()) {
                let ours = self.connections.get(&seat.conn.client);
                if seat.conn.node == self.node && ours.and_then(|c| c.room) != Some(room.code()) {
                    return Err(format!(
                        "a seat in {} is held by no connection",
                        room.code()
                    ));
                }
            }
        }
        let (typing, naming, grace) = self.timers.pending();
        let count =
            |has: fn(&Connection) -> bool| self.connections.values().filter(|c| has(c)).count();
        if typing != count(|c| c.typing.is_some()) {
            return Err("typing timers and typing members differ".into());
        }
        if naming != count(|c| c.naming_deadline.is_some()) {
            return Err("naming timers and unnamed clients differ".into());
        }
        // A resume does not cancel the grace timer of the seat it takes back: it fires, and the
        // store finds the deadline changed. So there may be more timers than held seats.
        if grace < self.held_seats().count() {
            return Err("a held seat has no grace timer".into());
        }
        if !self.too_slow.is_empty() {
            return Err("slow consumers are left over after an event".into());
        }
        Ok(())
    }
}

/// Who is where in the actor, copied out for tests ([`ChatServer::snapshot`]).
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Every session: connected clients, and seats held for a resume.
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
    /// The connection of the host (or that held its seat last).
    pub host: ClientId,
    /// The guest's, if there is one.
    pub guest: Option<ClientId>,
    /// The ids of the messages a joiner would be given, oldest first.
    pub history: Vec<u64>,
}

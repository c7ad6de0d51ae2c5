//! A room: two seats and the conversation since the last time someone left.

use std::collections::VecDeque;

use crate::message::ChatMessage;
use crate::types::{ClientId, RoomCode, Username};

/// A private room for two. Its first member is the host; whoever joins with the code is the
/// guest. When a member goes, the other one becomes (or stays) the host and the seat is free again.
#[derive(Debug)]
pub struct Room {
    /// The code people type to join.
    code: RoomCode,
    /// The member who created the room, or the one who stayed when the other left. A room with
    /// no members is deleted at once, so there is always a host.
    host: ClientId,
    /// The second member, once someone has joined.
    guest: Option<ClientId>,
    /// The last [`Room::HISTORY_LEN`] messages, oldest first, sent to whoever joins. Emptied when a
    /// member goes, so a newcomer never reads a conversation they were not part of.
    history: VecDeque<ChatMessage>,
    /// The `id` the next message gets. Keeps counting across departures, so ids never repeat
    /// within a room.
    next_id: u64,
}

impl Room {
    /// How many messages a room remembers for a joiner.
    pub const HISTORY_LEN: usize = 100;

    /// A new room with its host alone in it.
    pub fn new(code: RoomCode, host: ClientId) -> Self {
        Room {
            code,
            host,
            guest: None,
            history: VecDeque::new(),
            next_id: 1,
        }
    }

    /// The room's code.
    pub fn code(&self) -> RoomCode {
        self.code
    }

    /// The member who created the room or stayed in it.
    pub fn host(&self) -> ClientId {
        self.host
    }

    /// Both seats are taken.
    pub fn is_full(&self) -> bool {
        self.guest.is_some()
    }

    /// The members: the host, then the guest if there is one.
    pub fn members(&self) -> impl Iterator<Item = ClientId> + use<> {
        std::iter::once(self.host).chain(self.guest)
    }

    /// The other member, seen from `member`.
    pub fn peer_of(&self, member: ClientId) -> Option<ClientId> {
        if member == self.host {
            self.guest
        } else {
            Some(self.host)
        }
    }

    /// Seats `guest` in the free seat. The caller has checked [`Room::is_full`].
    pub fn admit(&mut self, guest: ClientId) {
        debug_assert!(self.guest.is_none(), "admit into a full room");
        self.guest = Some(guest);
    }

    /// Frees `member`'s seat and forgets the conversation. Returns the member who stays, now the
    /// host, or `None` when the room is empty and must be deleted.
    pub fn remove(&mut self, member: ClientId) -> Option<ClientId> {
        self.history.clear();
        if member == self.host {
            self.host = self.guest.take()?;
        } else {
            self.guest = None;
        }
        Some(self.host)
    }

    /// Records a message said in the room and returns it, numbered.
    pub fn record(&mut self, from: Username, content: String, timestamp: u64) -> &ChatMessage {
        if self.history.len() == Room::HISTORY_LEN {
            self.history.pop_front();
        }
        let message = ChatMessage {
            id: self.next_id,
            from,
            content,
            timestamp,
        };
        self.next_id += 1;
        self.history.push_back(message);
        // Just pushed, so the deque is not empty.
        self.history
            .back()
            .expect("history holds the message just recorded")
    }

    /// What was said since the room last lost a member, oldest first.
    pub fn history(&self) -> &VecDeque<ChatMessage> {
        &self.history
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> Username {
        Username::parse(text).expect("valid name")
    }

    /// The guest becomes host when the host leaves; the room empties when the last member goes.
    #[test]
    fn the_member_who_stays_becomes_host() {
        let (host, guest) = (ClientId::new(), ClientId::new());
        let mut room = Room::new(RoomCode::random(), host);
        room.admit(guest);
        assert!(room.is_full());
        assert_eq!(room.peer_of(host), Some(guest));
        assert_eq!(room.peer_of(guest), Some(host));

        assert_eq!(room.remove(host), Some(guest));
        assert_eq!(room.host(), guest);
        assert!(!room.is_full());
        assert_eq!(room.members().collect::<Vec<_>>(), vec![guest]);
        assert_eq!(room.remove(guest), None);
    }

    /// History keeps the last 100 messages, ids keep counting, and a departure empties it.
    #[test]
    fn history_is_bounded_and_emptied_on_departure() {
        let (host, guest) = (ClientId::new(), ClientId::new());
        let mut room = Room::new(RoomCode::random(), host);
        room.admit(guest);
        for n in 1..=150 {
            assert_eq!(room.record(name("ada"), format!("m{n}"), 0).id, n);
        }
        assert_eq!(room.history().len(), Room::HISTORY_LEN);
        assert_eq!(room.history().front().map(|m| m.id), Some(51));

        room.remove(guest);
        assert!(room.history().is_empty());
        assert_eq!(room.record(name("ada"), "again".into(), 0).id, 151);
    }
}

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

    /// How many messages a room remembers while a member is away and may `resume`: everything
    /// said meanwhile must be there to replay. At the default rate limit (20 a second, bursts of
    /// 120) the peer says at most 720 things in a 30-second grace period.
    pub const REPLAY_LEN: usize = 1000;

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

    /// Gives `old`'s seat to `new`: the same member on a new connection (`resume`).
    pub fn replace(&mut self, old: ClientId, new: ClientId) {
        if self.host == old {
            self.host = new;
        } else if self.guest == Some(old) {
            self.guest = Some(new);
        }
    }

    /// The `id` of the last message said in the room, 0 if none yet.
    pub fn last_id(&self) -> u64 {
        self.next_id - 1
    }

    /// Frees `member`'s seat and forgets the conversation, returning it, so that a member who is
    /// away can still be given what it missed. Returns the member who stays, now the host, or
    /// `None` when the room is empty and must be deleted.
    pub fn remove(&mut self, member: ClientId) -> (Option<ClientId>, VecDeque<ChatMessage>) {
        let history = std::mem::take(&mut self.history);
        let stays = if member == self.host {
            self.guest.take()
        } else {
            self.guest = None;
            Some(self.host)
        };
        if let Some(stays) = stays {
            self.host = stays;
        }
        (stays, history)
    }

    /// Forgets all but the last `keep` messages.
    pub fn trim_history(&mut self, keep: usize) {
        let excess = self.history.len().saturating_sub(keep);
        self.history.drain(..excess);
    }

    /// Records a message said in the room and returns it, numbered. The history keeps the last
    /// `keep` messages: [`Room::HISTORY_LEN`], or [`Room::REPLAY_LEN`] while a member is away.
    pub fn record(
        &mut self,
        from: Username,
        content: String,
        timestamp: u64,
        keep: usize,
    ) -> &ChatMessage {
        self.trim_history(keep.saturating_sub(1));
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

        assert_eq!(room.remove(host).0, Some(guest));
        assert_eq!(room.host(), guest);
        assert!(!room.is_full());
        assert_eq!(room.members().collect::<Vec<_>>(), vec![guest]);
        assert_eq!(room.remove(guest).0, None);
    }

    /// History keeps the last 100 messages, ids keep counting, and a departure empties it.
    #[test]
    fn history_is_bounded_and_emptied_on_departure() {
        let (host, guest) = (ClientId::new(), ClientId::new());
        let mut room = Room::new(RoomCode::random(), host);
        room.admit(guest);
        for n in 1..=150 {
            assert_eq!(
                room.record(name("ada"), format!("m{n}"), 0, Room::HISTORY_LEN)
                    .id,
                n
            );
        }
        assert_eq!(room.history().len(), Room::HISTORY_LEN);
        assert_eq!(room.history().front().map(|m| m.id), Some(51));

        room.remove(guest);
        assert!(room.history().is_empty());
        assert_eq!(
            room.record(name("ada"), "again".into(), 0, Room::HISTORY_LEN)
                .id,
            151
        );
    }
}

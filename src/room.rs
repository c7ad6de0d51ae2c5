//! A room: two seats and what was said in it, kept for joiners and for resumes.

use std::collections::VecDeque;
use std::num::NonZeroU64;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::store::{Conn, Member, RECENT_CLIENT_IDS};
use crate::types::{RoomCode, SessionToken, Username};

/// One chat message as a room keeps it: its id, and the `chat` frame both members received,
/// encoded once. Keeping the frame rather than its parts means a joiner's history and a
/// resume's replay are sent without encoding anything again, and the bytes are shared with the
/// frames still waiting in the members' queues.
#[derive(Debug, Clone)]
pub struct StoredChat {
    /// The message's `id` in the room.
    pub id: u64,
    /// The encoded `chat` frame.
    pub frame: Utf8Bytes,
}

impl StoredChat {
    /// What keeping this message costs, as the room's and the server's storage bounds count it:
    /// the frame, plus the bookkeeping around it (this record in the room's queue, and the
    /// shared header the frame gets once it is queued for a member).
    pub fn stored_bytes(&self) -> usize {
        self.frame.len() + Room::OVERHEAD_PER_MESSAGE
    }
}

/// A member's last `client_msg_id`s, with the ids of the messages they came with.
pub type RecentIds = VecDeque<(Box<str>, u64)>;

/// One member's seat in a room: who sits there, on which connection, and what the room keeps
/// for that member.
#[derive(Debug, Clone)]
pub struct Seat {
    /// The member's session.
    pub token: SessionToken,
    /// The member's name, fixed while it sits here.
    pub name: Username,
    /// The connection that holds the session, or held it last while the seat is held.
    pub conn: Conn,
    /// While the member's connection is gone and the seat is held for a resume: until when
    /// (milliseconds since the Unix epoch; never zero, which keeps the `Option` in 8 bytes and
    /// a room, two seats and the rest, in a 256-byte allocation).
    pub held_until: Option<NonZeroU64>,
    /// The first chat id the member may be given on a resume: what a joiner saw when it
    /// entered (1 for the room's creator).
    pub history_from: u64,
    /// The highest chat id the member has said it has read (0 for none).
    pub read_up_to: u64,
    /// The member's last `client_msg_id`s with the ids of their messages, newest last, to drop
    /// a repeat. Allocated on the first message that carries one.
    pub recent: Option<Box<RecentIds>>,
}

impl Seat {
    /// A seat for `member`, who may be given the room's messages from `history_from` on.
    pub fn new(member: Member, history_from: u64) -> Self {
        Seat {
            token: member.token,
            name: member.name,
            conn: member.conn,
            held_until: None,
            history_from,
            read_up_to: 0,
            recent: None,
        }
    }

    /// Whether the member's connection is up, rather than its seat held for a resume.
    pub fn is_connected(&self) -> bool {
        self.held_until.is_none()
    }

    /// The id of the message this member sent with `client_msg_id`, if it is among its recent
    /// ones.
    pub fn sent_before(&self, client_msg_id: &str) -> Option<u64> {
        let recent = self.recent.as_ref()?;
        recent
            .iter()
            .find(|(sent, _)| &**sent == client_msg_id)
            .map(|&(_, id)| id)
    }

    /// Remembers that this member sent message `id` with `client_msg_id`.
    pub fn remember(&mut self, client_msg_id: Box<str>, id: u64) {
        let recent = self.recent.get_or_insert_with(Box::default);
        if recent.len() == RECENT_CLIENT_IDS {
            recent.pop_front();
        }
        recent.push_back((client_msg_id, id));
    }
}

/// A private room for two. Its first member is the host; whoever joins with the code is the
/// guest. When a member goes, the other one becomes (or stays) the host and the seat is free again.
///
/// The room keeps what was said (its *log*) for two readers with different rights:
/// - a joiner sees only what was said since the last member went ([`Room::history`]): a
///   newcomer never reads a conversation it was not part of;
/// - a member that resumes after a drop gets everything after the last message it saw, back to
///   when it entered the room ([`Room::messages_from`]): its own conversation, even if its peer
///   has left since. So the log keeps more than a joiner sees, up to [`Room::MAX_STORED`]
///   messages and [`Room::MAX_STORED_BYTES`], and what a bound pushes out is remembered as lost
///   ([`Room::lost_through`]), so that a resume can say so rather than leave a silent gap.
#[derive(Debug)]
pub struct Room {
    /// The code people type to join.
    code: RoomCode,
    /// The member who created the room, or the one who stayed when the other left. A room with
    /// no members is deleted at once, so there is always a host.
    host: Seat,
    /// The second member, once someone has joined.
    guest: Option<Seat>,
    /// Created end-to-end encrypted (`"encrypted": true`): every chat is an envelope that only
    /// the members' pages can open ([`crate::envelope`]). Fixed for the room's life, so that a
    /// room's conversation is all of one kind.
    encrypted: bool,
    /// How many events (joins, departures, drops, resumes, read receipts) the room has seen:
    /// each event gets the next number, so that a node can tell which a member has seen.
    event_seq: u64,
    /// What was said, oldest first, with ids counting up by one.
    log: VecDeque<StoredChat>,
    /// What [`Room::log`] costs, by [`StoredChat::stored_bytes`].
    stored_bytes: usize,
    /// The first id a joiner may see: the id after the last message said before a member last
    /// went.
    visible_from: u64,
    /// The highest id pushed out of the log by a storage bound (0 for none): every message up
    /// to it is gone.
    lost_through: u64,
    /// The `id` the next message gets. Keeps counting across departures, so ids never repeat
    /// within a room.
    next_id: u64,
}

impl Room {
    /// How many messages a joiner is given in `room_joined`, at most.
    pub const HISTORY_LEN: usize = 100;

    /// How many messages a room keeps for resumes, at most. A member whose connection died
    /// without a word still looks present until the heartbeat notices (two intervals, 40 s by
    /// default), and then keeps its seat for the resume grace (30 s): at the default rate limit
    /// (20 a second, bursts of 120) its peer can say about 1,500 things meanwhile, but the
    /// first 40 s are only at risk when the dead connection is not noticed at all, which makes
    /// 1,000 enough for any drop a person makes.
    pub const MAX_STORED: usize = 1000;

    /// How many bytes a room keeps, at most ([`StoredChat::stored_bytes`]): enough for
    /// [`Room::HISTORY_LEN`] of the largest messages (4,096 characters that JSON must escape,
    /// six bytes each), so that a joiner's history is never cut short by it.
    pub const MAX_STORED_BYTES: usize = 4 * 1024 * 1024;

    /// The bookkeeping counted for each stored message besides its frame.
    pub const OVERHEAD_PER_MESSAGE: usize = 64;

    /// A new room with its host alone in it; `encrypted` for an end-to-end encrypted one.
    pub fn new(code: RoomCode, host: Member, encrypted: bool) -> Self {
        Room {
            code,
            host: Seat::new(host, 1),
            guest: None,
            encrypted,
            event_seq: 0,
            log: VecDeque::new(),
            stored_bytes: 0,
            visible_from: 1,
            lost_through: 0,
            next_id: 1,
        }
    }

    /// The room's code.
    pub fn code(&self) -> RoomCode {
        self.code
    }

    /// Whether the room is end-to-end encrypted: its chats are envelopes.
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    /// The member who created the room or stayed in it.
    pub fn host(&self) -> &Seat {
        &self.host
    }

    /// The guest, if someone has joined.
    pub fn guest(&self) -> Option<&Seat> {
        self.guest.as_ref()
    }

    /// Both seats are taken.
    pub fn is_full(&self) -> bool {
        self.guest.is_some()
    }

    /// The seats: the host's, then the guest's if there is one.
    pub fn seats(&self) -> impl Iterator<Item = &Seat> {
        std::iter::once(&self.host).chain(self.guest.as_ref())
    }

    /// The seat of the member with `token`.
    pub fn seat_of(&self, token: &SessionToken) -> Option<&Seat> {
        self.seats().find(|seat| seat.token == *token)
    }

    /// The seat of the member with `token`, to change it.
    pub fn seat_of_mut(&mut self, token: &SessionToken) -> Option<&mut Seat> {
        if self.host.token == *token {
            Some(&mut self.host)
        } else {
            self.guest.as_mut().filter(|guest| guest.token == *token)
        }
    }

    /// The other member's seat, seen from the member with `token`.
    pub fn peer_of(&self, token: &SessionToken) -> Option<&Seat> {
        if self.host.token == *token {
            self.guest.as_ref()
        } else if self
            .guest
            .as_ref()
            .is_some_and(|guest| guest.token == *token)
        {
            Some(&self.host)
        } else {
            None
        }
    }

    /// Seats `guest` in the free seat; it may be given the messages a joiner sees. The caller
    /// has checked [`Room::is_full`].
    pub fn seat(&mut self, guest: Member) {
        debug_assert!(self.guest.is_none(), "seat in a full room");
        self.guest = Some(Seat::new(guest, self.visible_from));
    }

    /// The next number of the room's count of events.
    pub fn next_event(&mut self) -> u64 {
        self.event_seq += 1;
        self.event_seq
    }

    /// The number of the room's last event.
    pub fn event_seq(&self) -> u64 {
        self.event_seq
    }

    /// The `id` of the last message said in the room, 0 if none yet.
    pub fn last_id(&self) -> u64 {
        self.next_id - 1
    }

    /// The `id` the next message will get.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Frees the seat of the member with `token`, and returns it. From now on a joiner sees
    /// nothing said before; the log keeps it for the member who stays (whose own conversation
    /// it is) until [`Room::forget_before`]. If the host leaves, the guest becomes the host.
    /// `None` if no such member sits here, or if it is the only one: a room without members
    /// is deleted instead.
    pub fn remove(&mut self, token: &SessionToken) -> Option<Seat> {
        let left = if self.host.token == *token {
            let guest = self.guest.take()?;
            std::mem::replace(&mut self.host, guest)
        } else if self
            .guest
            .as_ref()
            .is_some_and(|guest| guest.token == *token)
        {
            self.guest.take()?
        } else {
            return None;
        };
        self.visible_from = self.next_id;
        Some(left)
    }

    /// Keeps a message said in the room, which must have [`Room::next_id`], then applies the
    /// room's bounds. Returns how many stored bytes the room holds more (or fewer) than before.
    pub fn store(&mut self, message: StoredChat) -> isize {
        debug_assert_eq!(message.id, self.next_id, "messages are stored in order");
        let before = self.stored_bytes;
        self.next_id = message.id + 1;
        self.stored_bytes += message.stored_bytes();
        self.log.push_back(message);
        while self.log.len() > Room::MAX_STORED || self.stored_bytes > Room::MAX_STORED_BYTES {
            self.shed_oldest();
        }
        self.stored_bytes as isize - before as isize
    }

    /// Drops the oldest stored message to make room, remembering it as lost. Returns the bytes
    /// freed, 0 if there was nothing to drop.
    pub fn shed_oldest(&mut self) -> usize {
        let Some(oldest) = self.log.pop_front() else {
            return 0;
        };
        self.lost_through = self.lost_through.max(oldest.id);
        let freed = oldest.stored_bytes();
        self.stored_bytes -= freed;
        freed
    }

    /// Drops the messages before `id` that no member may be given any more (nobody in the room
    /// was there when they were said). Not a loss: nobody is owed them. Returns the bytes freed.
    pub fn forget_before(&mut self, id: u64) -> usize {
        let mut freed = 0;
        while self.log.front().is_some_and(|oldest| oldest.id < id) {
            if let Some(oldest) = self.log.pop_front() {
                freed += oldest.stored_bytes();
            }
        }
        self.stored_bytes -= freed;
        freed
    }

    /// What a joiner sees: the last [`Room::HISTORY_LEN`] messages said since a member last
    /// went, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &StoredChat> {
        let visible = self
            .log
            .iter()
            .rev()
            .take_while(|message| message.id >= self.visible_from)
            .take(Room::HISTORY_LEN)
            .count();
        self.log.range(self.log.len() - visible..)
    }

    /// The stored messages from `id` on, oldest first.
    pub fn messages_from(&self, id: u64) -> impl Iterator<Item = &StoredChat> {
        let skip = self.log.partition_point(|message| message.id < id);
        self.log.range(skip..)
    }

    /// The highest id a storage bound pushed out of the log (0 for none): every message with
    /// an id up to it is gone.
    pub fn lost_through(&self) -> u64 {
        self.lost_through
    }

    /// What the room's log costs, by [`StoredChat::stored_bytes`].
    pub fn stored_bytes(&self) -> usize {
        self.stored_bytes
    }

    /// How many messages the log holds.
    pub fn stored_len(&self) -> usize {
        self.log.len()
    }

    /// Checks the log's own bookkeeping: ids in order and counted bytes right.
    pub fn check_log(&self) -> Result<(), String> {
        let bytes: usize = self.log.iter().map(StoredChat::stored_bytes).sum();
        if bytes != self.stored_bytes {
            return Err(format!(
                "room {} counts {} stored bytes but holds {bytes}",
                self.code, self.stored_bytes
            ));
        }
        let in_order = self
            .log
            .iter()
            .zip(self.log.iter().skip(1))
            .all(|(a, b)| b.id == a.id + 1);
        if !in_order || self.log.back().is_some_and(|last| last.id >= self.next_id) {
            return Err(format!("room {}'s log is out of order", self.code));
        }
        if self.log.len() > Room::MAX_STORED || self.stored_bytes > Room::MAX_STORED_BYTES {
            return Err(format!("room {} holds more than its bounds", self.code));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NodeId;
    use crate::types::ClientId;

    fn member(name: &str) -> Member {
        Member {
            token: SessionToken::random(),
            conn: Conn {
                client: ClientId::new(),
                node: NodeId(1),
            },
            name: Username::parse(name).expect("valid name"),
        }
    }

    /// A stored message `id` whose frame is `len` bytes long.
    fn chat(id: u64, len: usize) -> StoredChat {
        StoredChat {
            id,
            frame: Utf8Bytes::from("x".repeat(len)),
        }
    }

    fn ids<'a>(messages: impl Iterator<Item = &'a StoredChat>) -> Vec<u64> {
        messages.map(|message| message.id).collect()
    }

    /// The guest becomes host when the host leaves; only members have peers; the last member
    /// cannot be removed (the room is deleted instead).
    #[test]
    fn the_member_who_stays_becomes_host() {
        let (ada, grace) = (member("ada"), member("grace"));
        let (ada_token, grace_token) = (ada.token, grace.token);
        let mut room = Room::new(RoomCode::random(), ada, false);
        room.seat(grace);
        assert!(room.is_full());
        assert_eq!(
            room.peer_of(&ada_token).map(|s| &s.token),
            Some(&grace_token)
        );
        assert_eq!(
            room.peer_of(&grace_token).map(|s| &s.token),
            Some(&ada_token)
        );
        assert!(room.peer_of(&SessionToken::random()).is_none());

        let left = room.remove(&ada_token).expect("ada sat here");
        assert_eq!(left.token, ada_token);
        assert_eq!(room.host().token, grace_token);
        assert!(!room.is_full());
        assert!(
            room.remove(&grace_token).is_none(),
            "the last member is not removed"
        );
    }

    /// A joiner sees the last 100 messages since a member last went; ids keep counting; the
    /// log keeps the earlier ones for the member who stayed until it is told to forget them.
    #[test]
    fn a_joiner_sees_only_what_was_said_since_the_last_departure() {
        let (ada, grace) = (member("ada"), member("grace"));
        let grace_token = grace.token;
        let mut room = Room::new(RoomCode::random(), ada, false);
        room.seat(grace);
        assert_eq!(room.seat_of(&grace_token).map(|s| s.history_from), Some(1));
        for id in 1..=150 {
            room.store(chat(id, 10));
        }
        assert_eq!(ids(room.history()), (51..=150).collect::<Vec<_>>());
        assert_eq!(ids(room.messages_from(1)).len(), 150);

        room.remove(&grace_token);
        assert_eq!(ids(room.history()), Vec::<u64>::new());
        assert_eq!(
            ids(room.messages_from(140)),
            (140..=150).collect::<Vec<_>>()
        );
        room.store(chat(151, 10));
        let linus = member("linus");
        let linus_token = linus.token;
        room.seat(linus);
        assert_eq!(
            room.seat_of(&linus_token).map(|s| s.history_from),
            Some(151)
        );
        assert_eq!(ids(room.history()), vec![151]);
        room.forget_before(151);
        assert_eq!(ids(room.messages_from(1)), vec![151]);
        assert_eq!(room.lost_through(), 0, "forgetting is not losing");
        room.check_log().expect("consistent");
    }

    /// The log keeps at most `MAX_STORED` messages and `MAX_STORED_BYTES`; what the bounds push
    /// out is remembered as lost, and the bytes are counted exactly.
    #[test]
    fn the_log_is_bounded_in_messages_and_bytes() {
        let mut room = Room::new(RoomCode::random(), member("ada"), false);
        for id in 1..=(Room::MAX_STORED as u64 + 10) {
            room.store(chat(id, 10));
        }
        assert_eq!(room.stored_len(), Room::MAX_STORED);
        assert_eq!(room.lost_through(), 10);
        room.check_log().expect("consistent");

        let big = 100 * 1024;
        let mut room = Room::new(RoomCode::random(), member("ada"), false);
        let mut delta = 0;
        for id in 1..=100 {
            delta += room.store(chat(id, big));
        }
        assert!(room.stored_bytes() <= Room::MAX_STORED_BYTES);
        assert_eq!(delta, room.stored_bytes() as isize);
        let kept = Room::MAX_STORED_BYTES / (big + Room::OVERHEAD_PER_MESSAGE);
        assert_eq!(room.stored_len(), kept);
        assert_eq!(room.lost_through(), 100 - kept as u64);
        room.check_log().expect("consistent");
    }

    /// A seat remembers its last 100 client message ids, and finds a repeat among them.
    #[test]
    fn a_seat_remembers_its_recent_client_ids() {
        let mut seat = Seat::new(member("ada"), 1);
        for id in 1..=150 {
            seat.remember(format!("m{id}").into(), id);
        }
        assert_eq!(seat.sent_before("m150"), Some(150));
        assert_eq!(seat.sent_before("m51"), Some(51));
        assert_eq!(seat.sent_before("m50"), None, "only the last 100 are kept");
    }
}

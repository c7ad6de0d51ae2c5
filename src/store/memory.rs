//! The state of record in this process's memory: the store of a server that runs alone, which is
//! the default. Its steps are plain functions of its maps, applied one at a time by the actor
//! that owns it, which is what makes each of them atomic.
//!
//! The file runs past 400 lines because it is every step of the store, one function each, in
//! the order of `Step` (the same rules as the Lua scripts of `store/redis/`, side by side for a
//! reader comparing them), and then its tests.

use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// The store's maps use foldhash, the fast hasher `hashbrown` defaults to, seeded at random per
// process: a lookup costs a few nanoseconds instead of SipHash's tens, on every message.
use foldhash::HashMap as FastMap;
use tracing::{debug, warn};

use super::{
    ChatTail, Conn, Joined, Member, Notice, Outcome, Peer, ResumedRoom, RoomEvent, RoomState,
    SeatState, Step, Taken,
};
use crate::envelope::KeyCheck;
use crate::error::ErrorCode;
use crate::message::LeaveReason;
use crate::metrics::Metrics;
use crate::room::{Room, StoredChat};
use crate::types::{RoomCode, SessionToken, Username};

/// A session as the store keeps it: its name, its room, and the connection that holds it.
/// A session outside any room lives as long as its connection; one in a room, as long as its
/// seat.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub name: Option<Username>,
    pub room: Option<RoomCode>,
    pub conn: Conn,
}

/// Rooms and sessions in memory. See the module docs.
#[derive(Debug)]
pub struct MemoryStore {
    /// Every live room. A room is removed the moment its last member goes.
    /// Boxed, like the session records: a hash map keeps up to twice as many slots as entries,
    /// so a slot should be a pointer rather than the whole record.
    rooms: FastMap<RoomCode, Box<Room>>,
    /// The check value of each encrypted room's key, for the rooms whose creators gave one
    /// (`key_check`). Kept beside the rooms rather than in them: most rooms have none, and 16
    /// more bytes would push every room out of its 256-byte allocation.
    key_checks: FastMap<RoomCode, KeyCheck>,
    /// Every session that can still be resumed, by its token.
    sessions: FastMap<SessionToken, Box<SessionRecord>>,
    /// What all rooms' logs cost together ([`Room::stored_bytes`]).
    stored_bytes: usize,
    /// `--max-stored-bytes`: the most [`MemoryStore::stored_bytes`] may reach, or `None` for no
    /// bound but each room's own.
    max_stored_bytes: Option<usize>,
    /// Counters for `/metrics`: rooms, stored bytes, messages shed.
    metrics: Arc<Metrics>,
}

/// What a member says in a chat (the fields of [`Step::Chat`] about the message itself).
struct Message {
    tail: ChatTail,
    client_msg_id: Option<Box<str>>,
    ends_typing: bool,
}

impl MemoryStore {
    /// An empty store whose rooms keep at most `max_stored_bytes` together (`0`: no bound).
    pub fn new(max_stored_bytes: usize, metrics: Arc<Metrics>) -> Self {
        MemoryStore {
            rooms: FastMap::default(),
            key_checks: FastMap::default(),
            sessions: FastMap::default(),
            stored_bytes: 0,
            max_stored_bytes: (max_stored_bytes > 0).then_some(max_stored_bytes),
            metrics,
        }
    }

    /// Applies one step; what it tells others goes to `notices`, in the order it happened.
    pub fn apply(&mut self, step: Step, notices: &mut Vec<Notice>) -> Outcome {
        match step {
            Step::Open { token, conn } => {
                let record = SessionRecord {
                    name: None,
                    room: None,
                    conn,
                };
                self.sessions.insert(token, Box::new(record));
                Outcome::Done
            }
            Step::Name { token, conn, name } => match self.session_of(token, conn) {
                Some(record) => {
                    record.name = Some(name);
                    Outcome::Done
                }
                None => Outcome::Moved,
            },
            Step::Create {
                code,
                member,
                encrypted,
                key_check,
            } => self.create(code, member, encrypted, key_check),
            Step::Join { code, member } => self.join(code, member, notices),
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
                self.chat(code, &token, conn, message, notices)
            }
            Step::Read {
                code,
                token,
                conn,
                up_to,
            } => self.read(code, &token, conn, up_to, notices),
            Step::Leave { code, token, conn } => {
                if let Err(outcome) = self.check_live(code, &token, conn) {
                    return outcome;
                }
                self.remove_member(code, &token, LeaveReason::Left, notices);
                // Out of the room, whichever connection holds the session now (a resume may
                // have taken it over, its seat's step not yet run).
                if let Some(record) = self.sessions.get_mut(&token)
                    && record.room == Some(code)
                {
                    record.room = None;
                }
                Outcome::Done
            }
            Step::Drop {
                room,
                token,
                conn,
                grace,
            } => self.drop_connection(room, token, conn, grace, notices),
            Step::Expire {
                code,
                token,
                deadline,
            } => {
                let due = self
                    .rooms
                    .get(&code)
                    .and_then(|room| room.seat_of(&token))
                    .is_some_and(|seat| seat.held_until.map(NonZeroU64::get) == Some(deadline));
                if due {
                    self.remove_member(code, &token, LeaveReason::Disconnected, notices);
                    self.forget_session(code, &token);
                }
                Outcome::Done
            }
            Step::TakeSession { token, conn } => self.take_session(token, conn, notices),
            Step::ResumeSeat {
                code,
                token,
                conn,
                last_id,
            } => self.resume_seat(code, token, conn, last_id, notices),
            Step::Range { code, after, upto } => {
                Outcome::Frames(self.rooms.get(&code).map(|room| {
                    let upto = upto.unwrap_or(u64::MAX);
                    let frames = room
                        .messages_from(after.saturating_add(1))
                        .take_while(|chat| chat.id <= upto)
                        .map(|chat| chat.frame.clone())
                        .collect();
                    (room.last_id(), frames)
                }))
            }
            Step::State { code } => Outcome::State(self.rooms.get(&code).map(|room| {
                RoomState {
                    event_seq: room.event_seq(),
                    last_id: room.last_id(),
                    seats: room
                        .seats()
                        .map(|seat| SeatState {
                            token: seat.token,
                            name: seat.name.clone(),
                            held: !seat.is_connected(),
                            read_up_to: seat.read_up_to,
                        })
                        .collect(),
                }
            })),
            Step::Publish { code, event } => {
                notices.push(Notice::Room(code, event));
                Outcome::Done
            }
        }
    }

    fn create(
        &mut self,
        code: RoomCode,
        member: Member,
        encrypted: bool,
        key_check: Option<KeyCheck>,
    ) -> Outcome {
        if self.rooms.contains_key(&code) {
            return Outcome::CodeTaken;
        }
        // The session follows only while this connection holds it, as in Redis (`entered`):
        // one that was resumed elsewhere meanwhile is that connection's, outside any room.
        if let Some(record) = self.session_of(member.token, member.conn) {
            record.room = Some(code);
        }
        self.rooms
            .insert(code, Box::new(Room::new(code, member, encrypted)));
        if let Some(key_check) = key_check {
            self.key_checks.insert(code, key_check);
        }
        self.metrics.rooms.increment(1.0);
        debug!(room = %code, "room created");
        Outcome::Created
    }

    fn join(&mut self, code: RoomCode, member: Member, notices: &mut Vec<Notice>) -> Outcome {
        let Some(room) = self.rooms.get_mut(&code) else {
            return Outcome::Refused(ErrorCode::RoomNotFound);
        };
        if room.is_full() {
            return Outcome::Refused(ErrorCode::RoomFull);
        }
        let host = room.host();
        if host.name == member.name {
            return Outcome::Refused(ErrorCode::UsernameTaken);
        }
        let (host_name, host_connected) = (host.name.clone(), host.is_connected());
        let history = room.history().map(|chat| chat.frame.clone()).collect();
        let (token, name, conn) = (member.token, member.name.clone(), member.conn);
        room.seat(member);
        let seq = room.next_event();
        notices.push(Notice::Room(code, RoomEvent::Joined { seq, token, name }));
        let joined = Joined {
            host: host_name,
            host_connected,
            history,
            last_id: room.last_id(),
            event_seq: seq,
            encrypted: room.is_encrypted(),
            key_check: self.key_checks.get(&code).copied(),
        };
        // As in `create`: only while this connection holds the session.
        if let Some(record) = self.session_of(token, conn) {
            record.room = Some(code);
        }
        Outcome::Joined(Box::new(joined))
    }

    fn chat(
        &mut self,
        code: RoomCode,
        token: &SessionToken,
        conn: Conn,
        message: Message,
        notices: &mut Vec<Notice>,
    ) -> Outcome {
        let Message {
            tail,
            client_msg_id,
            ends_typing,
        } = message;
        if let Err(outcome) = self.check_live(code, token, conn) {
            return outcome;
        }
        let Some(room) = self.rooms.get_mut(&code) else {
            return Outcome::Gone;
        };
        if let Some(client_msg_id) = &client_msg_id
            && let Some(id) = room
                .seat_of(token)
                .and_then(|s| s.sent_before(client_msg_id))
        {
            let frame = room.messages_from(id).next().filter(|chat| chat.id == id);
            return Outcome::Duplicate {
                frame: frame.map(|chat| chat.frame.clone()),
            };
        }
        let id = room.next_id();
        let frame = tail.frame(id);
        let grown = room.store(StoredChat {
            id,
            frame: frame.clone(),
        });
        if let (Some(client_msg_id), Some(seat)) = (client_msg_id, room.seat_of_mut(token)) {
            seat.remember(client_msg_id, id);
        }
        self.stored_bytes = self.stored_bytes.saturating_add_signed(grown);
        let token = *token;
        let chat = RoomEvent::Chat {
            id,
            token,
            frame,
            ends_typing,
        };
        notices.push(Notice::Room(code, chat));
        self.keep_to_budget();
        Outcome::Accepted { id }
    }

    fn read(
        &mut self,
        code: RoomCode,
        token: &SessionToken,
        conn: Conn,
        up_to: u64,
        notices: &mut Vec<Notice>,
    ) -> Outcome {
        if let Err(outcome) = self.check_live(code, token, conn) {
            return outcome;
        }
        let Some(room) = self.rooms.get_mut(&code) else {
            return Outcome::Gone;
        };
        let last_id = room.last_id();
        if up_to > last_id {
            return Outcome::Future { last_id };
        }
        let Some(seat) = room.seat_of_mut(token) else {
            return Outcome::Gone;
        };
        if up_to <= seat.read_up_to {
            return Outcome::Ignored;
        }
        seat.read_up_to = up_to;
        let name = seat.name.clone();
        let seq = room.next_event();
        let event = RoomEvent::Read {
            seq,
            token: *token,
            name,
            up_to,
        };
        notices.push(Notice::Room(code, event));
        Outcome::Done
    }

    fn drop_connection(
        &mut self,
        room: Option<RoomCode>,
        token: SessionToken,
        conn: Conn,
        grace: Duration,
        notices: &mut Vec<Notice>,
    ) -> Outcome {
        // The seat first, and then the session, as in Redis: the seat's own connection decides
        // what becomes of it. A seat whose connection ends while another connection is taking
        // its session over (between `TakeSession` and `ResumeSeat`, apart in Redis) is held,
        // not left to a connection that is gone.
        let Some(code) = room else {
            return self.end_session(&token, conn);
        };
        if let Err(outcome) = self.check_seat(code, &token, conn) {
            // The seat is another connection's: this one had taken the session over for a
            // resume whose seat's step did not run (answered `UNAVAILABLE`). The session is
            // kept, as the seat is, so that the member can resume again; in Redis for the grace
            // period, here until the seat goes (`forget_session`). Without a grace period, or
            // with no seat at all, it ends, if it is still this connection's, rather than
            // outlive the seat with nothing to resume.
            let kept_for_a_resume = matches!(outcome, Outcome::Moved) && !grace.is_zero();
            if !kept_for_a_resume {
                self.end_session(&token, conn);
            }
            return outcome;
        }
        if grace.is_zero() {
            self.remove_member(code, &token, LeaveReason::Disconnected, notices);
            self.forget_session(code, &token);
            return Outcome::Done;
        }
        let Some(room) = self.rooms.get_mut(&code) else {
            return Outcome::Gone;
        };
        let Some(seat) = room.seat_of_mut(&token) else {
            return Outcome::Gone;
        };
        // Held already (its node was reaped, or this is a retry): the deadline stands, and the
        // room was told once.
        if let Some(deadline) = seat.held_until {
            return Outcome::Held {
                deadline: deadline.get(),
            };
        }
        let deadline = unix_millis().saturating_add(grace.as_millis() as u64);
        // Only a clock set to the first millisecond of 1970 with no grace could give zero.
        seat.held_until = Some(NonZeroU64::new(deadline).unwrap_or(NonZeroU64::MIN));
        let name = seat.name.clone();
        let seq = room.next_event();
        notices.push(Notice::Room(
            code,
            RoomEvent::Disconnected { seq, token, name },
        ));
        Outcome::Held { deadline }
    }

    /// The member with `token` left room `code` for good without a word from its connection (a
    /// drop without grace, a grace period's end): its session ends with the seat, whichever
    /// connection holds it, unless it has moved on to another room. As `forget_session` in
    /// Redis.
    fn forget_session(&mut self, code: RoomCode, token: &SessionToken) {
        if self
            .sessions
            .get(token)
            .is_some_and(|record| record.room == Some(code))
        {
            self.sessions.remove(token);
        }
    }

    /// The session `token` for connection `conn` to change, as `session_set.lua` finds it:
    /// `None` if another connection holds it; made again, with no name and no room, if it had
    /// ended while `conn` lived on (a drop of a connection that had not yet taken its seat
    /// back, whose resume then goes on), so that it ends with `conn` as in Redis.
    fn session_of(&mut self, token: SessionToken, conn: Conn) -> Option<&mut SessionRecord> {
        let record = self.sessions.entry(token).or_insert_with(|| {
            Box::new(SessionRecord {
                name: None,
                room: None,
                conn,
            })
        });
        (record.conn == conn).then_some(&mut **record)
    }

    /// Ends the session `token` if `conn` still holds it (`Done`); `Moved` if it is gone or
    /// another connection's.
    fn end_session(&mut self, token: &SessionToken, conn: Conn) -> Outcome {
        if self.sessions.get(token).is_none_or(|s| s.conn != conn) {
            return Outcome::Moved;
        }
        self.sessions.remove(token);
        Outcome::Done
    }

    fn take_session(
        &mut self,
        token: SessionToken,
        conn: Conn,
        notices: &mut Vec<Notice>,
    ) -> Outcome {
        let Some(record) = self.sessions.get_mut(&token) else {
            return Outcome::Expired;
        };
        // A session that never chose a name holds nothing worth resuming.
        let Some(name) = record.name.clone() else {
            return Outcome::Expired;
        };
        let previous = std::mem::replace(&mut record.conn, conn);
        if record.room.is_none() {
            // Outside a room a session lives only as long as its connection, so that
            // connection is still open: it is to be closed.
            notices.push(Notice::Kick(previous));
        }
        Outcome::Taken(Box::new(Taken {
            name,
            room: record.room,
            previous,
        }))
    }

    fn resume_seat(
        &mut self,
        code: RoomCode,
        token: SessionToken,
        conn: Conn,
        last_id: u64,
        notices: &mut Vec<Notice>,
    ) -> Outcome {
        let Some(room) = self.rooms.get_mut(&code) else {
            return Outcome::Expired;
        };
        let Some(seat) = room.seat_of_mut(&token) else {
            return Outcome::Expired;
        };
        // Still open: another device or tab, or a connection that is dead but not yet noticed.
        if seat.is_connected() {
            notices.push(Notice::Kick(seat.conn));
        }
        seat.conn = conn;
        seat.held_until = None;
        let (name, history_from) = (seat.name.clone(), seat.history_from);
        let seq = room.next_event();
        notices.push(Notice::Room(
            code,
            RoomEvent::Reconnected { seq, token, name },
        ));
        // Every message it may have missed, back to when it entered the room; what a storage
        // bound dropped meanwhile is counted as lost.
        let wanted_from = last_id.saturating_add(1).max(history_from);
        let missed = room
            .messages_from(wanted_from)
            .map(|chat| chat.frame.clone())
            .collect();
        let lost = (room.lost_through() + 1).saturating_sub(wanted_from);
        let peer = room.peer_of(&token).map(|peer| Peer {
            name: peer.name.clone(),
            connected: peer.is_connected(),
            read_up_to: peer.read_up_to,
        });
        let resumed = ResumedRoom {
            code,
            peer,
            missed,
            lost,
            last_id: room.last_id(),
            event_seq: seq,
            encrypted: room.is_encrypted(),
            key_check: self.key_checks.get(&code).copied(),
        };
        // As a create or a join: the session names the room while this connection holds it.
        if let Some(record) = self.session_of(token, conn) {
            record.room = Some(code);
        }
        Outcome::Resumed(Box::new(resumed))
    }

    /// `Gone` if the member with `token` has no seat in room `code`, `Moved` if another
    /// connection than `conn` holds it.
    fn check_seat(&self, code: RoomCode, token: &SessionToken, conn: Conn) -> Result<(), Outcome> {
        match self.rooms.get(&code).and_then(|room| room.seat_of(token)) {
            None => Err(Outcome::Gone),
            Some(seat) if seat.conn != conn => Err(Outcome::Moved),
            Some(_) => Ok(()),
        }
    }

    /// [`check_seat`](Self::check_seat), and `Gone` too if the seat is held: its connection
    /// was given up for dead (dropped, or its node reaped while it was only cut off) and speaks
    /// for the seat no more; it is to reconnect and resume. As `check_live` in Redis, for the
    /// steps of a member that is there (chat, read, leave).
    fn check_live(&self, code: RoomCode, token: &SessionToken, conn: Conn) -> Result<(), Outcome> {
        self.check_seat(code, token, conn)?;
        match self.rooms.get(&code).and_then(|room| room.seat_of(token)) {
            Some(seat) if seat.is_connected() => Ok(()),
            _ => Err(Outcome::Gone),
        }
    }

    /// Takes the member with `token` out of room `code`: the member who stays is told (and
    /// becomes the host), or the room is deleted if nobody stays.
    fn remove_member(
        &mut self,
        code: RoomCode,
        token: &SessionToken,
        reason: LeaveReason,
        notices: &mut Vec<Notice>,
    ) {
        let Some(room) = self.rooms.get_mut(&code) else {
            return;
        };
        if !room.is_full() {
            if room.host().token == *token
                && let Some(room) = self.rooms.remove(&code)
            {
                self.stored_bytes -= room.stored_bytes();
                self.key_checks.remove(&code);
                self.metrics.rooms.decrement(1.0);
                self.metrics.stored_bytes.set(self.stored_bytes as f64);
                debug!(room = %code, "room deleted");
            }
            return;
        }
        let Some(left) = room.remove(token) else {
            return;
        };
        // What was said before the one who stays entered is nobody's any more. The rest is its
        // own conversation: kept for its resume, though a joiner will not see it.
        let history_from = room.host().history_from;
        self.stored_bytes -= room.forget_before(history_from);
        self.metrics.stored_bytes.set(self.stored_bytes as f64);
        let seq = room.next_event();
        let event = RoomEvent::Left {
            seq,
            token: left.token,
            name: left.name,
            reason,
        };
        notices.push(Notice::Room(code, event));
    }

    /// Sheds stored messages while all rooms together hold more than `--max-stored-bytes`.
    ///
    /// Fairness: the largest rooms are cut down to a common level, oldest messages first, and
    /// no room below that level loses anything, so a few rooms full of long messages cannot
    /// push out everyone else's conversation. Shedding goes a little below the budget (by an
    /// eighth), so that it runs once per many messages rather than on each. A member whose
    /// messages were shed learns it when it resumes (`lost`): never a silent gap.
    fn keep_to_budget(&mut self) {
        self.metrics.stored_bytes.set(self.stored_bytes as f64);
        let Some(budget) = self.max_stored_bytes else {
            return;
        };
        if self.stored_bytes <= budget {
            return;
        }
        let target = budget - budget / 8;
        let mut sizes: Vec<usize> = self
            .rooms
            .values()
            .map(|room| room.stored_bytes())
            .collect();
        let level = level_for(&mut sizes, target);
        let mut shed = 0;
        for room in self.rooms.values_mut() {
            while room.stored_bytes() > level {
                let freed = room.shed_oldest();
                if freed == 0 {
                    break;
                }
                self.stored_bytes -= freed;
                shed += 1;
            }
        }
        warn!(
            shed,
            stored_bytes = self.stored_bytes,
            "over --max-stored-bytes: shed the oldest messages of the largest rooms"
        );
        self.metrics.messages_shed.increment(shed);
        self.metrics.stored_bytes.set(self.stored_bytes as f64);
    }

    /// Every room, for inspection.
    pub fn rooms(&self) -> impl Iterator<Item = &Room> {
        self.rooms.values().map(|room| &**room)
    }

    /// The room `code`, for inspection.
    pub fn room(&self, code: RoomCode) -> Option<&Room> {
        self.rooms.get(&code).map(|room| &**room)
    }

    /// Every session, for inspection.
    pub fn sessions(&self) -> impl Iterator<Item = (&SessionToken, &SessionRecord)> {
        self.sessions
            .iter()
            .map(|(token, record)| (token, &**record))
    }

    /// How many rooms exist.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// What all rooms' logs cost together, as the store counts it.
    pub fn stored_bytes(&self) -> usize {
        self.stored_bytes
    }

    /// Checks the store's own bookkeeping: every room's log, the total of their bytes against
    /// the budget, and that sessions and seats agree.
    pub fn check(&self) -> Result<(), String> {
        let mut stored = 0;
        for (code, room) in &self.rooms {
            if room.code() != *code {
                return Err(format!("room {code} is filed under another code"));
            }
            room.check_log()?;
            stored += room.stored_bytes();
            for seat in room.seats() {
                let record = self
                    .sessions
                    .get(&seat.token)
                    .ok_or_else(|| format!("a member of {code} has no session"))?;
                if record.room != Some(*code) || record.conn != seat.conn {
                    return Err(format!("a member of {code} and its session disagree"));
                }
            }
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
        for (token, record) in &self.sessions {
            if let Some(code) = record.room
                && self
                    .rooms
                    .get(&code)
                    .and_then(|r| r.seat_of(token))
                    .is_none()
            {
                return Err(format!("a session is in {code}, which has no seat for it"));
            }
        }
        Ok(())
    }
}

/// The highest level such that rooms of the given sizes, each cut down to at most that level,
/// hold at most `target` bytes together ("water-filling"). Sorts `sizes`.
fn level_for(sizes: &mut [usize], target: usize) -> usize {
    sizes.sort_unstable();
    // Raise the level room by room, smallest first: below the level a room keeps everything,
    // above it every room is cut to the level.
    let mut below = 0; // bytes of the rooms entirely under the level
    for (index, &size) in sizes.iter().enumerate() {
        let above = sizes.len() - index;
        if below + size * above > target {
            return (target - below) / above;
        }
        below += size;
    }
    usize::MAX
}

/// Now, in milliseconds since the Unix epoch, as chat timestamps and grace deadlines are.
pub fn unix_millis() -> u64 {
    // A clock set before 1970 is not worth failing a chat message for: it reads as 0.
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::level_for;

    /// The level cuts only the rooms above it, and the rooms cut to it fit in the target.
    #[test]
    fn the_level_cuts_the_largest_rooms_to_fit() {
        let mut sizes = vec![400, 10, 100, 50];
        // 10 + 50 + 100 leave 240 of 400 for the largest room alone.
        assert_eq!(level_for(&mut sizes, 400), 240);
        // 10 + 50 leave 140 for the two largest: 70 each.
        assert_eq!(level_for(&mut sizes, 200), 70);
        assert_eq!(level_for(&mut sizes, 1000), usize::MAX, "everything fits");
        assert_eq!(level_for(&mut sizes, 20), 5, "every room cut to one level");
    }
}

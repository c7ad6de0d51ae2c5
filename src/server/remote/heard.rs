//! Rooms heard over pub/sub. A node hears the rooms where it has members. Pub/sub delivers at
//! most once, so each room's events are checked as they arrive: chat ids and event numbers go
//! up by one. A gap means something was lost (the bus reconnected, or the actor fell behind),
//! and the room is repaired before anything newer is told: the room's state is read again, the
//! messages missed are read from its log, and the members are told what changed, as if they
//! had heard it.
//!
//! The file runs past 400 lines because hearing and repairing are one subject: a repair ends
//! by telling what was missed as if it had been heard, through the same bookkeeping (`Told`).

use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::{debug, warn};

use super::super::steps::Then;
use super::super::{ChatServer, Store};
use crate::message::LeaveReason;
use crate::outbox::Close;
use crate::store::redis::Floors;
use crate::store::{Joined, ResumedRoom, RoomEvent, RoomState, Step};
use crate::types::{ClientId, RoomCode, SessionToken, Username};

/// How many events of a room being repaired may wait for the repair; past that, they are
/// dropped, and the repair that follows covers them too.
const MAX_BACKLOG: usize = 1024;

/// How many rooms a node repairs at once. After Redis stalled or restarted, every room of the
/// node needs a repair at the same moment: the rest wait their turn in a queue, so that a node
/// of 10,000 rooms does not send Redis 20,000 scripts in one burst just as it comes back.
pub(super) const MAX_REPAIRS: usize = 64;

/// A room where this node has members, as the node has heard it.
#[derive(Debug, Default)]
pub(in crate::server) struct HeardRoom {
    /// This node's connections in the room.
    members: Vec<ClientId>,
    /// How many of this node's connections are entering it (their step in flight).
    pub(super) entering: u32,
    /// How far the room's events have been told, and who sits there as told; `None` until a
    /// member has entered (the first outcome says where the room stood).
    told: Option<Told>,
    /// Events that arrived while the room was unknown or being repaired, in order.
    backlog: Vec<RoomEvent>,
    /// A repair is in flight.
    pub(super) repairing: bool,
    /// The room waits in the queue of repairs.
    queued: bool,
    /// Its last repair failed (Redis was away): it is tried again when the link is back.
    pub(super) failed: bool,
    /// How many times the link had come back when its repair started (`Remote::link_returns`).
    pub(super) repair_started_at: u64,
    /// Another repair is needed once this one is done.
    again: bool,
    /// During a repair: the room's state, read first, applied once its messages are in.
    pub(super) state: Option<RoomState>,
}

impl HeardRoom {
    /// This node's connections in the room.
    pub fn members(&self) -> impl Iterator<Item = ClientId> + '_ {
        self.members.iter().copied()
    }

    /// How far this node has told the room: no step may hand out an id at or below these.
    pub fn floors(&self) -> Floors {
        self.told
            .as_ref()
            .map_or_else(Floors::default, |told| Floors {
                chat: told.chat,
                event: told.event,
            })
    }
}

/// How far a room's events have been told to this node's members.
#[derive(Debug, Clone)]
struct Told {
    /// The last chat id.
    chat: u64,
    /// The last event number.
    event: u64,
    /// Who sits in the room, as the events told so far say.
    seats: Vec<Seat>,
}

/// A member of a room, as told. Known by name, which is unique within a room.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seat {
    name: Username,
    held: bool,
    read_up_to: u64,
}

/// Where a room stood when a member of this node entered it.
#[derive(Debug)]
pub(in crate::server) struct Baseline(Told);

impl Baseline {
    /// A room just created by `host`.
    pub fn created(host: Option<Username>) -> Self {
        Baseline(Told {
            chat: 0,
            event: 0,
            seats: host.into_iter().map(Seat::connected).collect(),
        })
    }

    /// A room that `guest` just joined.
    pub fn joined(guest: Option<Username>, joined: &Joined) -> Self {
        let host = Seat {
            name: joined.host.clone(),
            held: !joined.host_connected,
            read_up_to: 0,
        };
        Baseline(Told {
            chat: joined.last_id,
            event: joined.event_seq,
            seats: std::iter::once(host)
                .chain(guest.map(Seat::connected))
                .collect(),
        })
    }

    /// A room where `member` just resumed its seat.
    pub fn resumed(member: Option<Username>, room: &ResumedRoom) -> Self {
        let peer = room.peer.as_ref().map(|peer| Seat {
            name: peer.name.clone(),
            held: !peer.connected,
            read_up_to: peer.read_up_to,
        });
        Baseline(Told {
            chat: room.last_id,
            event: room.event_seq,
            seats: member
                .map(Seat::connected)
                .into_iter()
                .chain(peer)
                .collect(),
        })
    }
}

impl Seat {
    fn connected(name: Username) -> Self {
        Seat {
            name,
            held: false,
            read_up_to: 0,
        }
    }
}

impl ChatServer {
    /// Connection `client` entered room `code`, which stood at `baseline` then.
    pub(in crate::server) fn entered(
        &mut self,
        client: ClientId,
        code: RoomCode,
        baseline: Baseline,
    ) {
        if !matches!(self.store, Store::Redis(_)) {
            return;
        }
        let room = self.remote.rooms.entry(code).or_default();
        if !room.members.contains(&client) {
            room.members.push(client);
        }
        match &room.told {
            None => {
                room.told = Some(baseline.0);
                self.replay_backlog(code);
            }
            // This node heard messages of the room after the store seated the newcomer (they
            // raced its outcome here), and told them to the members it had then: the newcomer
            // gets them from the room's log.
            Some(told) if baseline.0.chat < told.chat => self.repair(code),
            Some(_) => {}
        }
    }

    /// Connection `client` is no longer in room `code`.
    pub(in crate::server) fn left_here(&mut self, client: ClientId, code: RoomCode) {
        if let Some(room) = self.remote.rooms.get_mut(&code) {
            room.members.retain(|&member| member != client);
            self.settle(code);
        }
    }

    /// Stops hearing room `code` if this node has nobody there any more.
    pub(super) fn settle(&mut self, code: RoomCode) {
        let Some(room) = self.remote.rooms.get(&code) else {
            return;
        };
        if room.members.is_empty() && room.entering == 0 {
            self.remote.rooms.remove(&code);
            let node = self.node;
            if let Store::Redis(store) = &mut self.store {
                store.forget_room(node, code);
            }
        }
    }

    /// An event of room `code`, as heard over pub/sub.
    pub(super) fn heard(&mut self, code: RoomCode, event: RoomEvent) {
        let Some(room) = self.remote.rooms.get_mut(&code) else {
            return; // Nobody here any more.
        };
        // Until a member has entered, the first to enter says where the room stands; during a
        // repair, or while one is queued, what arrives waits for it.
        if room.repairing || room.queued || room.told.is_none() {
            hold_back(room, event);
            return;
        }
        let Some(told) = &mut room.told else {
            return;
        };
        let gap = match &event {
            RoomEvent::Chat { id, .. } => *id > told.chat + 1,
            event => event.seq().is_some_and(|seq| seq > told.event + 1),
        };
        if gap {
            debug!(room = %code, "events were lost: repairing the room");
            hold_back(room, event);
            self.repair(code);
            return;
        }
        told.note(&event);
        self.deliver(code, &event);
    }

    /// Repairs every room this node hears: events may have been lost. Each room once: a room
    /// already queued or being repaired is not queued again, and a repair in flight covers
    /// what was lost before it read the room (the bus says `Resync` only once it listens
    /// again, so nothing published after the read is lost).
    pub(super) fn repair_all(&mut self) {
        let codes: Vec<RoomCode> = self.remote.rooms.keys().copied().collect();
        for code in codes {
            self.queue_repair(code);
        }
        self.start_repairs();
    }

    /// Repairs again the rooms whose repair failed, Redis being away.
    pub(super) fn repair_failed(&mut self) {
        let failed: Vec<RoomCode> = self
            .remote
            .rooms
            .iter()
            .filter(|(_, room)| room.failed)
            .map(|(code, _)| *code)
            .collect();
        for code in failed {
            self.queue_repair(code);
        }
        self.start_repairs();
    }

    /// Repairs room `code`, in its turn (a gap in its events, or a newcomer behind).
    fn repair(&mut self, code: RoomCode) {
        if let Some(room) = self.remote.rooms.get_mut(&code)
            && room.repairing
        {
            room.again = true;
            return;
        }
        self.queue_repair(code);
        self.start_repairs();
    }

    /// Puts room `code` in the queue of repairs, unless it is there already, or is being
    /// repaired, or nothing has been told there yet (the first entry sets where it stands).
    pub(super) fn queue_repair(&mut self, code: RoomCode) {
        let Some(room) = self.remote.rooms.get_mut(&code) else {
            return;
        };
        if room.told.is_none() || room.queued || room.repairing {
            return;
        }
        room.queued = true;
        room.failed = false;
        self.remote.repair_queue.push_back(code);
    }

    /// Starts queued repairs while fewer than [`MAX_REPAIRS`] are in flight, and the link to
    /// Redis is not known to be down.
    pub(super) fn start_repairs(&mut self) {
        while self.remote.repairs_in_flight < MAX_REPAIRS && !self.remote.link_down {
            let Some(code) = self.remote.repair_queue.pop_front() else {
                return;
            };
            let Some(room) = self.remote.rooms.get_mut(&code) else {
                continue; // Nobody here any more.
            };
            if !room.queued {
                continue;
            }
            room.queued = false;
            room.repairing = true;
            room.repair_started_at = self.remote.link_returns;
            self.remote.repairs_in_flight += 1;
            self.perform(Step::State { code }, Then::Repaired { code });
        }
    }

    /// A repair of room `code` ended (done, failed, or the room is gone): the next may start.
    pub(in crate::server) fn repair_ended(&mut self, code: RoomCode) {
        if let Some(room) = self.remote.rooms.get_mut(&code) {
            room.repairing = false;
        }
        self.remote.repairs_in_flight = self.remote.repairs_in_flight.saturating_sub(1);
        self.start_repairs();
    }

    /// The first half of a repair: the room as it is now. Its messages are read next.
    pub(in crate::server) fn repaired(&mut self, code: RoomCode, state: Option<RoomState>) {
        let Some(room) = self.remote.rooms.get_mut(&code) else {
            self.repair_ended(code); // Nobody here any more.
            return;
        };
        let (Some(state), Some(told)) = (state, &room.told) else {
            // The room is gone: its members here have no seat any more. They reconnect, and
            // their resume says so.
            self.room_lost(code);
            return;
        };
        // From where the member that has been told least stands (a newcomer may be behind).
        let behind = room
            .members
            .iter()
            .filter_map(|member| self.connections.get(member))
            .map(|connection| connection.seen_chat)
            .min()
            .unwrap_or(told.chat);
        let step = Step::Range {
            code,
            after: behind.min(told.chat),
            upto: Some(state.last_id),
        };
        room.state = Some(state);
        self.perform(step, Then::Filled { code });
    }

    /// The second half of a repair: the messages missed, then what changed, then what waited.
    pub(in crate::server) fn filled(
        &mut self,
        code: RoomCode,
        frames: Option<(u64, Vec<Utf8Bytes>)>,
    ) {
        let Some(room) = self.remote.rooms.get_mut(&code) else {
            self.repair_ended(code); // Nobody here any more.
            return;
        };
        let (Some(state), Some((_, frames))) = (room.state.take(), frames) else {
            self.room_lost(code);
            return;
        };
        let Some(told) = &mut room.told else {
            self.repair_ended(code);
            return;
        };
        // The messages missed, as if heard. Recovered from the log, they carry no session: the
        // sender is known by name (see `delivery.rs`).
        let mut chats = Vec::with_capacity(frames.len());
        for frame in frames {
            if let Some(id) = chat_id(&frame) {
                told.chat = told.chat.max(id);
                // Whether it ended its sender's typing is not kept: a member told that its
                // peer was typing is told that this is over all the same (`delivery.rs`).
                chats.push(RoomEvent::Chat {
                    id,
                    token: SessionToken::NOBODY,
                    frame,
                    ends_typing: false,
                });
            }
        }
        told.chat = told.chat.max(state.last_id);
        let before = std::mem::take(&mut told.seats);
        told.seats = state
            .seats
            .iter()
            .map(|seat| Seat {
                name: seat.name.clone(),
                held: seat.held,
                read_up_to: seat.read_up_to,
            })
            .collect();
        told.event = told.event.max(state.event_seq);
        let after = told.seats.clone();
        let members: Vec<ClientId> = room.members.clone();
        // The true order of what was missed is lost; this one is the likeliest: a peer that
        // arrived (or came back) is told before the messages, and one that went after them.
        let mut changes = Vec::with_capacity(members.len());
        for member in members {
            let events = self.changes_for(member, code, &before, &after, &state);
            changes.push((member, events));
        }
        for (member, events) in &changes {
            for event in events.iter().filter(|event| arrives(event)) {
                self.say(*member, event);
            }
        }
        for chat in &chats {
            self.deliver(code, chat);
        }
        for (member, events) in &changes {
            for event in events.iter().filter(|event| !arrives(event)) {
                self.say(*member, event);
            }
        }
        // Counted once done: a repair that failed on a dead connection ran nothing in Redis.
        self.metrics.redis.gaps_repaired.increment(1);
        // What arrived during the repair, in order; the events it already covers are skipped
        // by each member's counters.
        self.repair_ended(code);
        if let Some(room) = self.remote.rooms.get_mut(&code) {
            let again = std::mem::take(&mut room.again);
            self.replay_backlog(code);
            if again {
                self.repair(code);
            }
        }
    }

    /// What `member` of room `code` is to be told of how its peer changed from `before` to
    /// `after`; it is closed instead if its own seat is gone (it resumes, and finds out).
    fn changes_for(
        &mut self,
        member: ClientId,
        code: RoomCode,
        before: &[Seat],
        after: &[Seat],
        state: &RoomState,
    ) -> Vec<RoomEvent> {
        let Some(connection) = self.connections.get_mut(&member) else {
            return Vec::new();
        };
        let Some(name) = connection.name.clone() else {
            return Vec::new();
        };
        let seated = state
            .seats
            .iter()
            .any(|seat| seat.token == connection.token && !seat.held);
        if !seated {
            warn!(client = %member, room = %code, "a member's seat was given away while this node could not hear: closing it, for it to resume");
            self.close_connection_only(member, &Close::RESTART);
            return Vec::new();
        }
        connection.seen_event = connection.seen_event.max(state.event_seq);
        let token = SessionToken::NOBODY;
        let seq = state.event_seq;
        let peer_before = before.iter().find(|seat| seat.name != name);
        let peer_after = after.iter().find(|seat| seat.name != name);
        let mut events = Vec::new();
        match (peer_before, peer_after) {
            (Some(gone), None) => events.push(RoomEvent::Left {
                seq,
                token,
                name: gone.name.clone(),
                reason: LeaveReason::Disconnected,
            }),
            (before, Some(now)) => {
                let same = before.filter(|seat| seat.name == now.name);
                if same.is_none() {
                    if let Some(gone) = before {
                        events.push(RoomEvent::Left {
                            seq,
                            token,
                            name: gone.name.clone(),
                            reason: LeaveReason::Disconnected,
                        });
                    }
                    events.push(RoomEvent::Joined {
                        seq,
                        token,
                        name: now.name.clone(),
                    });
                }
                let was_held = same.is_some_and(|seat| seat.held);
                if now.held && !was_held {
                    events.push(RoomEvent::Disconnected {
                        seq,
                        token,
                        name: now.name.clone(),
                    });
                } else if !now.held && was_held {
                    events.push(RoomEvent::Reconnected {
                        seq,
                        token,
                        name: now.name.clone(),
                    });
                }
                let read_before = same.map_or(0, |seat| seat.read_up_to);
                if now.read_up_to > read_before {
                    events.push(RoomEvent::Read {
                        seq,
                        token,
                        name: now.name.clone(),
                        up_to: now.read_up_to,
                    });
                }
            }
            (None, None) => {}
        }
        events
    }

    /// Room `code` is gone while this node could not hear it (a repair found so): its members
    /// here reconnect.
    fn room_lost(&mut self, code: RoomCode) {
        let members: Vec<ClientId> = self
            .remote
            .rooms
            .get(&code)
            .map(|room| room.members.clone())
            .unwrap_or_default();
        for member in members {
            self.close_connection_only(member, &Close::RESTART);
        }
        if let Some(room) = self.remote.rooms.get_mut(&code) {
            room.backlog.clear();
        }
        self.repair_ended(code);
        self.settle(code);
    }

    /// Tells what waited in room `code`'s backlog, as if heard now.
    fn replay_backlog(&mut self, code: RoomCode) {
        let Some(room) = self.remote.rooms.get_mut(&code) else {
            return;
        };
        let backlog = std::mem::take(&mut room.backlog);
        for event in backlog {
            self.heard(code, event);
        }
    }
}

/// Keeps an event for later, unless too many are kept already: then the later repair must
/// cover it.
fn hold_back(room: &mut HeardRoom, event: RoomEvent) {
    if room.backlog.len() < MAX_BACKLOG {
        room.backlog.push(event);
    } else {
        room.again = true;
    }
}

impl Told {
    /// Notes that `event` was told.
    fn note(&mut self, event: &RoomEvent) {
        match event {
            RoomEvent::Chat { id, .. } => self.chat = self.chat.max(*id),
            RoomEvent::Typing { .. } | RoomEvent::StopTyping { .. } => {}
            event => {
                let Some(seq) = event.seq() else { return };
                if seq <= self.event {
                    return; // Already counted in (a joiner's or resumer's outcome).
                }
                self.event = seq;
                match event {
                    RoomEvent::Joined { name, .. } => {
                        self.seats.retain(|seat| seat.name != *name);
                        self.seats.push(Seat::connected(name.clone()));
                    }
                    RoomEvent::Left { name, .. } => self.seats.retain(|seat| seat.name != *name),
                    RoomEvent::Disconnected { name, .. } | RoomEvent::Reconnected { name, .. } => {
                        let held = matches!(event, RoomEvent::Disconnected { .. });
                        for seat in self.seats.iter_mut().filter(|seat| seat.name == *name) {
                            seat.held = held;
                        }
                    }
                    RoomEvent::Read { name, up_to, .. } => {
                        for seat in self.seats.iter_mut().filter(|seat| seat.name == *name) {
                            seat.read_up_to = *up_to;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Whether a repaired event is a peer arriving or coming back, told before the messages missed.
fn arrives(event: &RoomEvent) -> bool {
    matches!(
        event,
        RoomEvent::Joined { .. } | RoomEvent::Reconnected { .. }
    )
}

/// The id of a `chat` frame, read back from its JSON.
fn chat_id(frame: &str) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: u64,
    }
    serde_json::from_str::<Id>(frame).ok().map(|chat| chat.id)
}

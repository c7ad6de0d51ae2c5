//! What changes when the store is Redis, shared with other nodes (`--redis`).
//!
//! **Steps in flight.** The in-memory store answers a step at once; Redis answers later. So a
//! step is submitted with a number, its continuation ([`Then`]) is kept under that number, and
//! the actor carries on with other connections. When the outcome arrives
//! ([`RedisEvent::Done`]), the continuation runs as it would have at once.
//!
//! **A client's requests in order.** While a step that changes what the actor knows of a
//! connection is in flight (its name, its room, its session), the client's next requests (and
//! its disconnection) wait behind it, so that a `chat` sent right after `create_room` finds the
//! room created. At most [`MAX_WAITING`] wait; past that, a request is refused with
//! `UNAVAILABLE`: Redis is too slow to keep up with that client. Chats and read receipts change
//! nothing of the connection and do not hold the next request back: the steps of one room run
//! in order in its lane anyway, so a client can have many messages in flight.
//!
//! **Rooms heard over pub/sub.** A node hears the rooms where it has members. Pub/sub delivers
//! at most once, so each room's events are checked as they arrive: chat ids and event numbers
//! go up by one. A gap means something was lost (the bus reconnected, or the actor fell behind),
//! and the room is repaired before anything newer is told: the room's state is read again, the
//! messages missed are read from its log, and the members are told what changed, as if they
//! had heard it.

use std::collections::VecDeque;
use std::time::Duration;

use foldhash::HashMap as FastMap;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::{debug, warn};

use super::steps::Then;
use super::{ChatServer, Store};
use crate::error::{ErrorCode, Refusal};
use crate::message::{ClientMessage, LeaveReason};
use crate::outbox::Close;
use crate::store::redis::{Lane, RedisEvent};
use crate::store::{Joined, NodeId, Notice, Outcome, ResumedRoom, RoomEvent, RoomState, Step};
use crate::types::{ClientId, RoomCode, SessionToken, Username};

/// How many requests of one client may wait for its step in flight.
pub const MAX_WAITING: usize = 32;

/// How many events of a room being repaired may wait for the repair; past that, they are
/// dropped, and the repair that follows covers them too.
const MAX_BACKLOG: usize = 1024;

/// Something a client did that waits for its step in flight.
#[derive(Debug)]
pub(super) enum Waiting {
    Request(ClientMessage),
    Disconnect,
}

/// The actor's part of the Redis mode. Empty with the in-memory store.
#[derive(Debug, Default)]
pub(super) struct Remote {
    /// The number of the next step submitted.
    next_op: u64,
    /// The steps in flight, by number.
    pending: FastMap<u64, Pending>,
    /// The clients with a step in flight, and what waits behind it.
    waiting: FastMap<ClientId, VecDeque<Waiting>>,
    /// The rooms where this node has members, or a member entering.
    rooms: FastMap<RoomCode, HeardRoom>,
    /// Steps that keep the books and found Redis away: submitted again when it is back.
    retry: Vec<Step>,
}

impl Remote {
    /// Whether no step is in flight.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether bookkeeping steps wait to be tried again.
    pub fn has_retries(&self) -> bool {
        !self.retry.is_empty()
    }

    /// A room this node hears.
    pub fn room(&self, code: RoomCode) -> Option<&HeardRoom> {
        self.rooms.get(&code)
    }
}

/// A step in flight.
#[derive(Debug)]
struct Pending {
    then: Then,
    /// The step itself, if it must be submitted again should Redis be away.
    retry: Option<Step>,
    /// The room a member is entering with this step.
    entering: Option<RoomCode>,
}

/// A room where this node has members, as the node has heard it.
#[derive(Debug, Default)]
pub(super) struct HeardRoom {
    /// This node's connections in the room.
    members: Vec<ClientId>,
    /// How many of this node's connections are entering it (their step in flight).
    entering: u32,
    /// How far the room's events have been told, and who sits there as told; `None` until a
    /// member has entered (the first outcome says where the room stood).
    told: Option<Told>,
    /// Events that arrived while the room was unknown or being repaired, in order.
    backlog: Vec<RoomEvent>,
    /// A repair is in flight.
    repairing: bool,
    /// Another repair is needed once this one is done.
    again: bool,
    /// During a repair: the room's state, read first, applied once its messages are in.
    state: Option<RoomState>,
}

impl HeardRoom {
    /// This node's connections in the room.
    pub fn members(&self) -> impl Iterator<Item = ClientId> + '_ {
        self.members.iter().copied()
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
pub(super) struct Baseline(Told);

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
    /// Submits `step` to Redis; `then` runs when its outcome arrives.
    pub(super) fn submit(&mut self, step: Step, then: Then) {
        let Store::Redis(store) = &mut self.store else {
            return;
        };
        let remote = &mut self.remote;
        let op = remote.next_op;
        remote.next_op += 1;
        if let Some(client) = then.client().filter(|_| then.changes_the_connection()) {
            remote.waiting.entry(client).or_default();
        }
        let entering = match &step {
            Step::Create { code, .. } | Step::Join { code, .. } | Step::ResumeSeat { code, .. } => {
                remote.rooms.entry(*code).or_default().entering += 1;
                Some(*code)
            }
            _ => None,
        };
        let retry = step.is_bookkeeping().then(|| step.clone());
        remote.pending.insert(
            op,
            Pending {
                then,
                retry,
                entering,
            },
        );
        store.submit(op, step);
    }

    /// With `--redis`: if `client` has a step in flight, `what` waits behind it. Returns
    /// whether it does.
    pub(super) fn wait_for_step(&mut self, client: ClientId, what: Waiting) -> bool {
        match self.remote.waiting.get_mut(&client) {
            Some(waiting) => {
                waiting.push_back(what);
                true
            }
            None => false,
        }
    }

    /// With `--redis`: a request of a client with a step in flight waits behind it (or is
    /// refused, if too many wait). Returns the request if it can be handled now.
    pub(super) fn queue_behind_step(
        &mut self,
        client: ClientId,
        request: ClientMessage,
    ) -> Option<ClientMessage> {
        let Some(waiting) = self.remote.waiting.get_mut(&client) else {
            return Some(request);
        };
        if waiting.len() >= MAX_WAITING {
            let refusal = Refusal::new(
                ErrorCode::Unavailable,
                "Too many requests waiting for the server's storage: this one was dropped.",
            );
            self.refuse(client, &refusal);
        } else {
            waiting.push_back(Waiting::Request(request));
        }
        None
    }

    /// Forgets what connection `id` had waiting (it is gone).
    pub(super) fn forget_waiting(&mut self, id: ClientId) {
        self.remote.waiting.remove(&id);
    }

    /// Something from the Redis store.
    pub(super) fn store_event(&mut self, event: RedisEvent) {
        match event {
            RedisEvent::Done {
                op,
                lane,
                outcome,
                notices,
            } => self.step_done(op, lane, outcome, notices),
            RedisEvent::Room(code, event) => self.heard(code, event),
            RedisEvent::Kick(client) => self.close_connection_only(client, &Close::TAKEN_OVER),
            RedisEvent::Resync => self.repair_all(),
            RedisEvent::Link(true) => {
                self.retry_bookkeeping();
                self.repair_all();
            }
            RedisEvent::Link(false) => {}
            RedisEvent::Fenced(node) => self.fenced(node),
        }
    }

    /// Submits again the bookkeeping steps that found Redis away (they are idempotent).
    pub(super) fn retry_bookkeeping(&mut self) {
        for step in std::mem::take(&mut self.remote.retry) {
            self.perform(step, Then::Nothing);
        }
    }

    /// A step's outcome arrived: its continuation runs, then what its client had waiting.
    fn step_done(&mut self, op: u64, lane: Lane, outcome: Outcome, notices: Vec<Notice>) {
        if let Store::Redis(store) = &mut self.store {
            store.finished(lane);
        }
        let Some(pending) = self.remote.pending.remove(&op) else {
            return;
        };
        if let Some(code) = pending.entering
            && let Some(room) = self.remote.rooms.get_mut(&code)
        {
            room.entering = room.entering.saturating_sub(1);
        }
        if matches!(outcome, Outcome::Unavailable)
            && let Some(step) = pending.retry
        {
            self.remote.retry.push(step);
        }
        let client = pending.then.client();
        let waiting = client.and_then(|client| self.remote.waiting.remove(&client));
        self.notices.extend(notices);
        self.conclude(pending.then, outcome);
        self.deliver_notices();
        if let Some(code) = pending.entering {
            self.settle(code);
        }
        if let (Some(client), Some(waiting)) = (client, waiting) {
            self.run_waiting(client, waiting);
        }
    }

    /// Handles what `client` had waiting, until one of them submits a step again.
    fn run_waiting(&mut self, client: ClientId, mut waiting: VecDeque<Waiting>) {
        while let Some(next) = waiting.pop_front() {
            if let Some(again) = self.remote.waiting.get_mut(&client) {
                // A step is in flight again: the rest waits behind it.
                again.push_back(next);
                again.extend(waiting);
                return;
            }
            match next {
                Waiting::Request(request) => {
                    if let Err(refusal) = self.handle_request(client, request) {
                        self.refuse(client, &refusal);
                    }
                }
                Waiting::Disconnect => self.connection_lost(client),
            }
        }
    }

    /// A step could not reach Redis, or got no answer in time: the client is told, and a step
    /// that may have seated it is undone.
    pub(super) fn unavailable(&mut self, then: Then) {
        if let Some(client) = then.client() {
            self.refuse(client, &ErrorCode::Unavailable.into());
        }
        match then {
            Then::Created {
                client,
                token,
                code,
                ..
            }
            | Then::Joined {
                client,
                token,
                code,
            } => self.abandon_seat(client, code, token, Duration::ZERO),
            Then::Resumed {
                client,
                token,
                code,
                ..
            } => self.abandon_seat(client, code, token, self.resume_grace),
            Then::Repaired { code } | Then::Filled { code } => {
                // Tried again once Redis is back (`RedisEvent::Link`).
                if let Some(room) = self.remote.rooms.get_mut(&code) {
                    room.repairing = false;
                    room.state = None;
                }
            }
            _ => {}
        }
    }

    /// A seat the store may have given connection `client`, which is not taking it (gone, or
    /// told `UNAVAILABLE`): given up, or held for `grace`.
    pub(super) fn abandon_seat(
        &mut self,
        client: ClientId,
        code: RoomCode,
        token: SessionToken,
        grace: Duration,
    ) {
        let step = Step::Drop {
            room: Some(code),
            token,
            conn: self.conn(client),
            grace,
        };
        self.perform(step, Then::Nothing);
    }

    /// Connection `client` entered room `code`, which stood at `baseline` then.
    pub(super) fn entered(&mut self, client: ClientId, code: RoomCode, baseline: Baseline) {
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
    pub(super) fn left_here(&mut self, client: ClientId, code: RoomCode) {
        if let Some(room) = self.remote.rooms.get_mut(&code) {
            room.members.retain(|&member| member != client);
            self.settle(code);
        }
    }

    /// Stops hearing room `code` if this node has nobody there any more.
    fn settle(&mut self, code: RoomCode) {
        let Some(room) = self.remote.rooms.get(&code) else {
            return;
        };
        if room.members.is_empty() && room.entering == 0 {
            self.remote.rooms.remove(&code);
            if let Store::Redis(store) = &self.store {
                store.forget_room(self.node, code);
            }
        }
    }

    /// An event of room `code`, as heard over pub/sub.
    fn heard(&mut self, code: RoomCode, event: RoomEvent) {
        let Some(room) = self.remote.rooms.get_mut(&code) else {
            return; // Nobody here any more.
        };
        // Until a member has entered, the first to enter says where the room stands; during a
        // repair, what arrives waits for it.
        if room.repairing || room.told.is_none() {
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

    /// Repairs every room this node hears: events may have been lost.
    fn repair_all(&mut self) {
        let codes: Vec<RoomCode> = self.remote.rooms.keys().copied().collect();
        for code in codes {
            self.repair(code);
        }
    }

    /// Repairs room `code`: reads its state, then the messages missed (see the module docs).
    fn repair(&mut self, code: RoomCode) {
        let Some(room) = self.remote.rooms.get_mut(&code) else {
            return;
        };
        if room.told.is_none() {
            return; // Nothing told yet, so nothing missed: the first entry sets where it stands.
        }
        if room.repairing {
            room.again = true;
            return;
        }
        room.repairing = true;
        self.metrics.redis.gaps_repaired.increment(1);
        self.perform(Step::State { code }, Then::Repaired { code });
    }

    /// The first half of a repair: the room as it is now. Its messages are read next.
    pub(super) fn repaired(&mut self, code: RoomCode, state: Option<RoomState>) {
        let Some(room) = self.remote.rooms.get_mut(&code) else {
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
    pub(super) fn filled(&mut self, code: RoomCode, frames: Option<(u64, Vec<Utf8Bytes>)>) {
        let Some(room) = self.remote.rooms.get_mut(&code) else {
            return;
        };
        let (Some(state), Some((_, frames))) = (room.state.take(), frames) else {
            self.room_lost(code);
            return;
        };
        let Some(told) = &mut room.told else {
            return;
        };
        // The messages missed, as if heard. Recovered from the log, they carry no session: the
        // sender is known by name (see `delivery.rs`).
        let mut chats = Vec::with_capacity(frames.len());
        for frame in frames {
            if let Some(id) = chat_id(&frame) {
                told.chat = told.chat.max(id);
                chats.push(RoomEvent::Chat {
                    id,
                    token: SessionToken::NOBODY,
                    frame,
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
        // What arrived during the repair, in order; the events it already covers are skipped
        // by each member's counters.
        if let Some(room) = self.remote.rooms.get_mut(&code) {
            room.repairing = false;
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

    /// Room `code` is gone while this node could not hear it: its members here reconnect.
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
            room.repairing = false;
            room.backlog.clear();
        }
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

    /// The other nodes found this node dead while it could not reach Redis, and gave its
    /// members' seats away: every connection is closed with 1012, so that its client resumes
    /// (here or elsewhere) and finds where it stands; the node carries on as a new node.
    fn fenced(&mut self, node: NodeId) {
        let ids: Vec<ClientId> = self.connections.keys().copied().collect();
        for id in ids {
            self.close_connection_only(id, &Close::RESTART);
        }
        self.remote.rooms.clear();
        self.node = node;
    }

    /// Keeps the rooms and sessions of this node's connections alive in Redis.
    pub(super) fn touch(&self) {
        let Store::Redis(store) = &self.store else {
            return;
        };
        let rooms = self.remote.rooms.keys().copied().collect();
        let sessions = self
            .connections
            .values()
            .map(|connection| connection.token)
            .collect();
        store.touch(rooms, sessions);
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

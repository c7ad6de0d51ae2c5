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
//! **Rooms heard over pub/sub**: in [`heard`].

use std::collections::VecDeque;
use std::time::Duration;

use foldhash::HashMap as FastMap;

use super::steps::Then;
use super::{ChatServer, Store};
use crate::error::{ErrorCode, Refusal};
use crate::message::ClientMessage;
use crate::outbox::Close;
use crate::store::redis::{Floors, Lane, RedisEvent};
use crate::store::{NodeId, Notice, Outcome, Step};
use crate::types::{ClientId, RoomCode, SessionToken};

mod heard;

pub(super) use heard::{Baseline, HeardRoom};

/// How many requests of one client may wait for its step in flight.
pub const MAX_WAITING: usize = 32;

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
    /// Rooms waiting for their turn to be repaired, in order (see `heard.rs`: at most
    /// [`heard::MAX_REPAIRS`] at once, so that a recovery of thousands of rooms is paced).
    repair_queue: VecDeque<RoomCode>,
    /// How many repairs are in flight.
    repairs_in_flight: usize,
    /// The link to Redis is known to be down: queued repairs wait for it to come back, rather
    /// than fail one after another.
    link_down: bool,
    /// How many times the link has come back: a repair that fails after the link came back
    /// since it started is tried again at once, rather than wait for a return already past.
    link_returns: u64,
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
        // How far this node has told the step's room, for every step of a room that hands
        // out an id or an event number, or reads where the room stands.
        let floors = match &step {
            Step::Chat { code, .. }
            | Step::State { code }
            | Step::Join { code, .. }
            | Step::Read { code, .. }
            | Step::Leave { code, .. }
            | Step::Drop {
                room: Some(code), ..
            }
            | Step::ResumeSeat { code, .. } => remote
                .rooms
                .get(code)
                .map(HeardRoom::floors)
                .unwrap_or_default(),
            _ => Floors::default(),
        };
        remote.pending.insert(
            op,
            Pending {
                then,
                retry,
                entering,
            },
        );
        store.submit(op, step, floors);
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
            RedisEvent::Moved(codes) => {
                for code in codes {
                    self.queue_repair(code);
                }
                self.start_repairs();
            }
            RedisEvent::Link(true) => {
                // Only the repairs that failed: events were lost only if the pub/sub connection
                // was, and then the bus says so itself (`Resync`), once it listens again.
                self.remote.link_down = false;
                self.remote.link_returns += 1;
                self.retry_bookkeeping();
                self.repair_failed();
            }
            RedisEvent::Link(false) => self.remote.link_down = true,
            RedisEvent::Fenced(node) => self.fenced(node),
            RedisEvent::Unlist(code, node) => {
                // Unless a member of this node entered the room again meanwhile.
                if !self.remote.rooms.contains_key(&code)
                    && let Store::Redis(store) = &mut self.store
                {
                    store.unlist(node, code);
                }
            }
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
                // Tried again once Redis is back (`RedisEvent::Link`), or at once if it came
                // back while this repair was in flight: that return is past.
                let mut again = false;
                if let Some(room) = self.remote.rooms.get_mut(&code) {
                    room.state = None;
                    room.failed = true;
                    again = room.repair_started_at != self.remote.link_returns;
                }
                self.repair_ended(code);
                if again {
                    self.queue_repair(code);
                    self.start_repairs();
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

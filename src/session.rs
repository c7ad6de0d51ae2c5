//! A session: what the actor knows about one person, which outlives any one connection.

use std::net::IpAddr;

use crate::outbox::{self, Close, Outbound, TrySendError};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::time::delay_queue;

use crate::error::SendError;
use crate::limits::ClientBuckets;
use crate::types::{ClientId, RoomCode, SessionToken, Username};

/// One person as the [`ChatServer`](crate::server::ChatServer) actor knows them: their name,
/// room seat, read receipt and limits, and the connection they are on, if any.
///
/// A session outlives its connection: when a room member's connection drops, the session is
/// held for the resume grace period, without a connection, and a new connection that presents
/// its token takes it over (`resume`). It is filed under the [`ClientId`] of the connection
/// that holds it, which changes on a resume.
///
/// The actor owns every `Session`; nothing else can reach this state, so no lock guards it.
#[derive(Debug)]
pub struct Session {
    /// The connection that holds the session now (or held it last, while it is held).
    pub id: ClientId,
    /// The name chosen with `set_username`; `None` until then. Needed to create or join a room.
    pub username: Option<Username>,
    /// The room the client is in, if any. The seed design keeps this in a separate
    /// `client_rooms` map; keeping it here means there is one place to update, so the two can
    /// never disagree. The [`Room`](crate::room::Room) lists its members the other way round.
    pub room: Option<RoomCode>,
    /// While the client is typing: its entry in the actor's typing timers, so that a repeated
    /// `typing` can push the deadline back and `stop_typing` can cancel it.
    pub typing: Option<delay_queue::Key>,
    /// The address the client connected from, as per-address limits count it
    /// ([`limit_key`](crate::limits::limit_key)): failed joins are counted per address too.
    pub address: IpAddr,
    /// Until the client has set a valid username: its entry in the actor's naming timers. A
    /// client that is still unnamed when it fires is closed, so idle sockets cannot be hoarded.
    pub naming_deadline: Option<delay_queue::Key>,
    /// Its buckets under the limits the actor enforces: messages, refusals, failed joins.
    pub limits: ClientBuckets,
    /// The secret a later connection presents to `resume` this session.
    pub session_token: SessionToken,
    /// While the connection is gone but the seat is kept (`--resume-grace`): the grace timer's
    /// entry, so that a resume can cancel it. `Some` exactly when `outbound` is `None`.
    pub grace: Option<delay_queue::Key>,
    /// The first chat `id` of its room this member may be given on a resume: what a joiner
    /// saw when it entered (1 for the room's creator). Meaningless outside a room.
    pub history_from: u64,
    /// The highest chat `id` this member has said it has read (`read`), 0 for none. Receipts
    /// only ever move forward; it goes back to 0 when the member leaves the room.
    pub read_up_to: u64,
    /// The client's outbound queue, drained by its connection's write task. Bounded, and only
    /// ever used with `try_send`: the actor must never wait for one client, or a client that
    /// stops reading would stall everyone else. `None` while the session is held without a
    /// connection; what is said meanwhile waits in the room's history for a `resume`.
    outbound: Option<outbox::Sender>,
}

impl Session {
    /// The session of a client that has just connected from `address`: no name, no room, and
    /// no limits until the actor sets them.
    pub fn new(id: ClientId, address: IpAddr, outbound: outbox::Sender) -> Self {
        Session {
            id,
            username: None,
            room: None,
            typing: None,
            address,
            naming_deadline: None,
            limits: ClientBuckets::default(),
            session_token: SessionToken::random(),
            grace: None,
            history_from: 0,
            read_up_to: 0,
            outbound: Some(outbound),
        }
    }

    /// Whether a connection is attached (as opposed to a session held for a resume).
    pub fn is_connected(&self) -> bool {
        self.outbound.is_some()
    }

    /// Lets go of the connection, keeping the session. With `close`, the connection's write task
    /// sends that close frame once it has sent what is queued; without, the connection is
    /// already gone and only the queue is dropped.
    pub fn detach(&mut self, close: Option<&'static Close>) {
        if let (Some(outbound), Some(close)) = (self.outbound.take(), close) {
            outbound.close(close);
        }
    }

    /// Takes the connection's queue away, to attach it to the session being resumed.
    pub fn take_queue(&mut self) -> Option<outbox::Sender> {
        self.outbound.take()
    }

    /// Attaches a new connection's queue (on `resume`) and returns the old one, if any, so that
    /// the caller can close it.
    pub fn attach(&mut self, outbound: Option<outbox::Sender>) -> Option<outbox::Sender> {
        std::mem::replace(&mut self.outbound, outbound)
    }

    /// Queues one encoded message for this client without waiting.
    pub fn send(&self, frame: Utf8Bytes) -> Result<(), SendError> {
        self.queue(Outbound::Message(frame))
    }

    /// Queues messages that belong together as one item (see [`Outbound::Batch`]).
    pub fn send_batch(&self, frames: Vec<Utf8Bytes>) -> Result<(), SendError> {
        self.queue(Outbound::Batch(frames))
    }

    fn queue(&self, item: Outbound) -> Result<(), SendError> {
        let outbound = self.outbound.as_ref().ok_or(SendError::Disconnected)?;
        outbound.try_send(item).map_err(|err| match err {
            TrySendError::Full(_) => SendError::QueueFull,
            TrySendError::Closed(_) => SendError::Disconnected,
        })
    }
}

//! What the actor knows about one connected client.

use std::net::IpAddr;

use crate::outbox::{self, TrySendError};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::time::delay_queue;

use crate::error::SendError;
use crate::limits::ClientBuckets;
use crate::types::{ClientId, RoomCode, SessionToken, Username};

/// What a connection's write task takes from its outbound queue.
#[derive(Debug)]
pub enum Outbound {
    /// One encoded server message.
    Message(Utf8Bytes),
    /// Several messages that belong together, in order: a `room_joined` or `resumed` and the
    /// history that did not fit in it (see [`crate::message::MAX_FRAME_BYTES`]). One item, so
    /// that a long history counts once against the queue's bound, which is there for the
    /// messages a slow reader lets pile up, not for what it is owed on arrival.
    Batch(Vec<Utf8Bytes>),
    /// Close the connection. Always the last item: the actor closed the queue with it
    /// ([`outbox::Sender::close`]), after everything queued before.
    Close(Close),
}

/// Why the actor ends a connection: the close frame the write task sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    /// The WebSocket close code.
    pub code: u16,
    /// The close frame's reason, for people (and logs) on the other side.
    pub reason: &'static str,
}

impl Close {
    /// Another connection resumed this session (protocol: 4000, do not reconnect).
    pub const TAKEN_OVER: Close = Close {
        code: 4000,
        reason: "session resumed elsewhere",
    };
    /// The client's queue filled up: it reads slower than its peer writes (1008).
    pub const TOO_SLOW: Close = Close {
        code: 1008,
        reason: "too slow: fell too far behind",
    };
    /// The client kept sending far over the rate limit (1008). An `error` said so first.
    pub const FLOODING: Close = Close {
        code: 1008,
        reason: "too many messages",
    };
    /// The client chose no username in time (1008). An `error` said so first.
    pub const UNNAMED: Close = Close {
        code: 1008,
        reason: "no username in time",
    };
}

/// One connected client, as the [`ChatServer`](crate::server::ChatServer) actor sees it.
///
/// The actor owns every `Client`; nothing else can reach this state, so no lock guards it.
#[derive(Debug)]
pub struct Client {
    /// Which connection this is.
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

impl Client {
    /// A client that has just connected from `address`: no name, no room, and no limits until
    /// the actor sets them.
    pub fn new(id: ClientId, address: IpAddr, outbound: outbox::Sender) -> Self {
        Client {
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

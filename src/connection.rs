//! A connection, as the actor of its node knows it: the WebSocket's outbound queue, its limits
//! and timers, the session it holds, and where it stands in its room's stream of events.
//!
//! The session itself (its name, its room seat, whether it can be resumed) is the state of
//! record, kept by the store ([`crate::store`]); the actor keeps a copy of the little it needs
//! to check a request without asking the store.

use std::net::IpAddr;

use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::time::delay_queue;

use crate::error::SendError;
use crate::limits::ClientBuckets;
use crate::outbox::{self, Close, Outbound, TrySendError};
use crate::types::{ClientId, RoomCode, SessionToken, Username};

/// One WebSocket connection of this node. See the module docs.
///
/// The actor owns every `Connection`; nothing else can reach this state, so no lock guards it.
#[derive(Debug)]
pub struct Connection {
    /// Which connection this is.
    pub id: ClientId,
    /// The session it holds: its own, from `connected`, or the one it resumed.
    pub token: SessionToken,
    /// The session's name, once chosen.
    pub name: Option<Username>,
    /// The session's room, if it is in one.
    pub room: Option<RoomCode>,
    /// Whether that room is end-to-end encrypted: its chats must be envelopes.
    pub room_encrypted: bool,
    /// The highest chat id of its room this connection has been sent (a joiner's history and a
    /// resume's `missed` count), so that a message is never sent to it twice.
    pub seen_chat: u64,
    /// The number of the last room event (join, departure, drop, resume, receipt) it has been
    /// told of, or has no need to be told of.
    pub seen_event: u64,
    /// Whether it was last told that its peer is typing: a `stop_typing` is owed before anything
    /// that ends the peer's typing.
    pub peer_typing: bool,
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
    /// The outbound queue, drained by the connection's write task. Bounded, and only ever used
    /// with `try_send`: the actor must never wait for one client, or a client that stops
    /// reading would stall everyone else.
    outbound: outbox::Sender,
}

impl Connection {
    /// A connection that has just arrived from `address`, holding a new session `token`: no
    /// name, no room, and no limits until the actor sets them.
    pub fn new(
        id: ClientId,
        token: SessionToken,
        address: IpAddr,
        outbound: outbox::Sender,
    ) -> Self {
        Connection {
            id,
            token,
            name: None,
            room: None,
            room_encrypted: false,
            seen_chat: 0,
            seen_event: 0,
            peer_typing: false,
            typing: None,
            address,
            naming_deadline: None,
            limits: ClientBuckets::default(),
            outbound,
        }
    }

    /// Closes the outbound queue: the write task sends what is queued, then `close`.
    pub fn close(self, close: &'static Close) {
        self.outbound.close(close);
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
        self.outbound.try_send(item).map_err(|err| match err {
            TrySendError::Full(_) => SendError::QueueFull,
            TrySendError::Closed(_) => SendError::Disconnected,
        })
    }
}

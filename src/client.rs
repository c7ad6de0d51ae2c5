//! What the actor knows about one connected client.

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::time::delay_queue;

use crate::error::SendError;
use crate::types::{ClientId, RoomCode, Username};

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
    /// The client's outbound queue, drained by its connection's write task. Bounded, and only
    /// ever used with `try_send`: the actor must never wait for one client, or a client that
    /// stops reading would stall everyone else.
    outbound: mpsc::Sender<Utf8Bytes>,
}

impl Client {
    /// A client that has just connected: no name, no room.
    pub fn new(id: ClientId, outbound: mpsc::Sender<Utf8Bytes>) -> Self {
        Client {
            id,
            username: None,
            room: None,
            typing: None,
            outbound,
        }
    }

    /// Queues one encoded message for this client without waiting.
    pub fn send(&self, frame: Utf8Bytes) -> Result<(), SendError> {
        self.outbound.try_send(frame).map_err(|err| match err {
            TrySendError::Full(_) => SendError::QueueFull,
            TrySendError::Closed(_) => SendError::Disconnected,
        })
    }
}

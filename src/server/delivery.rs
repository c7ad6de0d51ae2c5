//! Delivery: the actor queues encoded frames for clients without ever waiting for one. A
//! client whose queue is full is marked too slow, and dropped once the current event is done.

use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::{debug, warn};

use super::ChatServer;
use crate::error::{Refusal, SendError};
use crate::message::ServerMessage;
use crate::outbox::Close;
use crate::types::{ClientId, RoomCode};

impl ChatServer {
    /// Sends an `error` to the client that caused it.
    pub(super) fn refuse(&mut self, id: ClientId, refusal: &Refusal) {
        debug!(client = %id, code = %refusal.code, "request refused");
        self.metrics.error_sent(refusal.code);
        let frame = ServerMessage::Error {
            code: refusal.code,
            message: &refusal.message,
        };
        self.send(id, frame.encode());
    }

    /// Queues `frame` for the other member of room `code`, if there is one.
    pub(super) fn send_to_peer(&mut self, code: RoomCode, id: ClientId, frame: Utf8Bytes) {
        if let Some(peer) = self.rooms.get(&code).and_then(|room| room.peer_of(id)) {
            self.send(peer, frame);
        }
    }

    /// Queues `frame` for one client without waiting. A full queue marks the client as too slow;
    /// it is disconnected when the current event is done.
    pub(super) fn send(&mut self, to: ClientId, frame: Utf8Bytes) {
        let Some(client) = self.sessions.get(&to) else {
            return;
        };
        match client.send(frame) {
            Ok(()) => {}
            Err(SendError::QueueFull) => self.too_slow.push(to),
            // The handler has ended; its `Disconnect` is already on the way.
            Err(SendError::Disconnected) => {}
        }
    }

    /// Queues frames that belong together for one client, as one item: a message that carries
    /// a history, and the rest of the history after it.
    pub(super) fn send_all(&mut self, to: ClientId, mut frames: Vec<Utf8Bytes>) {
        if frames.len() == 1 {
            if let Some(frame) = frames.pop() {
                self.send(to, frame);
            }
            return;
        }
        let Some(client) = self.sessions.get(&to) else {
            return;
        };
        match client.send_batch(frames) {
            Ok(()) | Err(SendError::Disconnected) => {}
            Err(SendError::QueueFull) => self.too_slow.push(to),
        }
    }

    /// Disconnects every client found too slow. Telling their peers may find more, so loop.
    pub(super) fn disconnect_slow_consumers(&mut self) {
        while let Some(id) = self.too_slow.pop() {
            if self
                .sessions
                .get(&id)
                .is_some_and(|client| client.is_connected())
            {
                warn!(client = %id, "disconnecting a slow consumer: its outbound queue is full");
                self.metrics.slow_consumers.increment(1);
                // Closing the client's queue ends its connection: the write task sends what is
                // queued, then the close frame. Like any lost connection, a room member may
                // still `resume`.
                self.connection_lost(id, Some(&Close::TOO_SLOW));
            }
        }
    }
}

//! A client's outbound queue: a small bounded single-producer, single-consumer channel.
//!
//! The actor is the one producer (it only ever calls [`Sender::try_send`]); the client's write
//! task is the one consumer. tokio's `mpsc` would do the job, but it allocates a block of 32
//! slots and a cache-padded channel up front, about 1.7 KiB per channel, which for a chat server
//! holding tens of thousands of mostly idle connections is a third of each connection's memory.
//! This queue is a `VecDeque` behind a `std::sync::Mutex`, plus a `Notify` to wake the consumer:
//! about 100 bytes when idle, growing only while messages are actually waiting.
//!
//! The actor ends a connection by closing the queue with [`Sender::close`]: the close goes in a
//! slot of its own, so that it gets through even when the queue is full (a slow consumer, or a
//! session taken over while its old connection had stopped reading), and comes out after what
//! was queued before it. A sender dropped without a close means the actor itself is gone.
//!
//! A std `Mutex` is right here because it is held for a push or a pop only, never across an
//! `.await`, and the two sides barely ever contend.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
pub use tokio::sync::mpsc::error::{TryRecvError, TrySendError};
use tokio_tungstenite::tungstenite::Utf8Bytes;

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
    /// ([`Sender::close`]), after everything queued before.
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
    /// The server is restarting, or lost the session's seat while it could not reach the
    /// store (1012): reconnect and resume, here or on another node.
    pub const RESTART: Close = Close {
        code: 1012,
        reason: "service restart",
    };
    /// The client chose no username in time (1008). An `error` said so first.
    pub const UNNAMED: Close = Close {
        code: 1008,
        reason: "no username in time",
    };
}

/// Creates a queue that holds at most `capacity` items.
pub fn channel(capacity: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            capacity: capacity.max(1),
            sender_alive: true,
            receiver_alive: true,
            close: None,
        }),
        item_or_close: Notify::new(),
    });
    (Sender(Arc::clone(&shared)), Receiver(shared))
}

/// What both ends share.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the receiver when an item arrives or the sender goes away. `notify_one` stores a
    /// permit when nobody waits, so a wake-up between the receiver's check and its wait is not
    /// lost.
    item_or_close: Notify,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Outbound>,
    capacity: usize,
    sender_alive: bool,
    receiver_alive: bool,
    /// How the sender closed the queue, handed out once the queue is empty. A reference to one
    /// of the [`Close`] constants: a pointer, where the value would cost every idle connection
    /// more than the pointer's size.
    close: Option<&'static Close>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock can only come from `VecDeque` running out of memory,
        // after which the state is still consistent: carry on with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The producing end, held by the actor. Dropping it closes the queue: the receiver gets what is
/// still queued, then `None`.
#[derive(Debug)]
pub struct Sender(Arc<Shared>);

impl Sender {
    /// Queues `item` without waiting, or says why not: the queue is full, or the receiver is gone.
    pub fn try_send(&self, item: Outbound) -> Result<(), TrySendError<Outbound>> {
        let mut state = self.0.lock();
        if !state.receiver_alive {
            return Err(TrySendError::Closed(item));
        }
        if state.queue.len() >= state.capacity {
            return Err(TrySendError::Full(item));
        }
        state.queue.push_back(item);
        drop(state);
        self.0.item_or_close.notify_one();
        Ok(())
    }
}

impl Sender {
    /// Closes the queue with `close`: the receiver gets everything queued so far, then
    /// [`Outbound::Close`]. Needs no room in the queue.
    pub fn close(self, close: &'static Close) {
        self.0.lock().close = Some(close);
        // Dropping `self` marks the sender gone and wakes the receiver.
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.0.lock().sender_alive = false;
        self.0.item_or_close.notify_one();
    }
}

/// The consuming end, held by the client's write task.
#[derive(Debug)]
pub struct Receiver(Arc<Shared>);

impl Receiver {
    /// The next item, waiting for one. Once the sender is gone and the queue is empty: its
    /// [`Outbound::Close`] if it closed the queue with one, then `None`.
    pub async fn recv(&mut self) -> Option<Outbound> {
        loop {
            match self.try_recv() {
                Ok(item) => return Some(item),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => self.0.item_or_close.notified().await,
            }
        }
    }

    /// The next item if there is one, without waiting.
    pub fn try_recv(&mut self) -> Result<Outbound, TryRecvError> {
        let mut state = self.0.lock();
        match state.queue.pop_front() {
            Some(item) => Ok(item),
            None if state.sender_alive => Err(TryRecvError::Empty),
            None => state
                .close
                .take()
                .map(|close| Outbound::Close(*close))
                .ok_or(TryRecvError::Disconnected),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.receiver_alive = false;
        // Nobody will read these; free them now rather than when the sender goes.
        state.queue = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    fn message(text: &'static str) -> Outbound {
        Outbound::Message(Utf8Bytes::from_static(text))
    }

    fn text(item: Outbound) -> String {
        match item {
            Outbound::Message(text) => text.to_string(),
            Outbound::Batch(frames) => format!("{} messages", frames.len()),
            Outbound::Close(close) => format!("close {}", close.code),
        }
    }

    /// Items come out in order; a full queue refuses more; the receiver sees the rest, then the
    /// end, after the sender is dropped.
    #[tokio::test]
    async fn bounded_in_order_and_closed_by_the_sender() {
        let (sender, mut receiver) = channel(2);
        sender.try_send(message("a")).expect("room for a");
        sender.try_send(message("b")).expect("room for b");
        assert!(matches!(
            sender.try_send(message("c")),
            Err(TrySendError::Full(_))
        ));
        assert_eq!(receiver.recv().await.map(text).as_deref(), Some("a"));
        sender.try_send(message("c")).expect("room again");
        drop(sender);
        assert_eq!(receiver.recv().await.map(text).as_deref(), Some("b"));
        assert_eq!(receiver.try_recv().map(text).ok().as_deref(), Some("c"));
        assert!(receiver.recv().await.is_none());
        assert!(matches!(
            receiver.try_recv(),
            Err(TryRecvError::Disconnected)
        ));
    }

    /// A receiver waiting on an empty queue is woken by the next item, and a dropped receiver
    /// makes sending fail.
    #[tokio::test]
    async fn wakes_the_waiting_receiver_and_reports_a_gone_one() {
        let (sender, mut receiver) = channel(4);
        let waiting = tokio::spawn(async move {
            let item = receiver.recv().await.map(text);
            (item, receiver)
        });
        tokio::task::yield_now().await;
        sender.try_send(message("hello")).expect("room");
        let (item, receiver) = waiting.await.expect("no panic");
        assert_eq!(item.as_deref(), Some("hello"));
        drop(receiver);
        assert!(matches!(
            sender.try_send(message("lost")),
            Err(TrySendError::Closed(_))
        ));
    }

    /// A close gets through a full queue and comes out after what was queued before it, once.
    #[tokio::test]
    async fn a_close_needs_no_room_and_comes_last() {
        let (sender, mut receiver) = channel(1);
        sender.try_send(message("last words")).expect("room");
        assert!(matches!(
            sender.try_send(message("no room")),
            Err(TrySendError::Full(_))
        ));
        sender.close(&Close::TAKEN_OVER);
        assert_eq!(
            receiver.recv().await.map(text).as_deref(),
            Some("last words")
        );
        assert_eq!(
            receiver.recv().await.map(text).as_deref(),
            Some("close 4000")
        );
        assert!(receiver.recv().await.is_none());
    }
}

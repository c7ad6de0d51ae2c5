//! The actor's timers: typing that runs out, a name that is not chosen in time, a held seat
//! whose grace period ends.
//!
//! Each kind is one `tokio_util::time::DelayQueue`, polled by the actor's loop, rather than a
//! task per timer: nothing to spawn, nothing to cancel from outside, and an expiry is handled
//! like any other event. [`Timers::next`] says which timer fired, so the loop's `select!` has one
//! timer branch.

use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use tokio_util::time::DelayQueue;
use tokio_util::time::delay_queue::Key;

use crate::types::{ClientId, RoomCode, SessionToken};

/// A timer that fired, and whose it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expired {
    /// The member stopped typing without saying so: its typing timeout ran out.
    Typing(ClientId),
    /// The client chose no username within `--username-timeout`.
    Naming(ClientId),
    /// The `--resume-grace` of a seat held in a room ended, at this deadline. If the member
    /// resumed meanwhile, the store finds the deadline changed and does nothing.
    Grace(RoomCode, SessionToken, u64),
}

/// Every pending timer of the actor, by kind. A typing or naming timer's [`Key`] is kept by the
/// connection it belongs to, so that the timer can be pushed back or cancelled; a fired timer's
/// key is spent, and its owner must forget it without cancelling it.
#[derive(Debug, Default)]
pub struct Timers {
    /// One per typing member.
    typing: DelayQueue<ClientId>,
    /// One per client without a username, while `--username-timeout` is on.
    naming: DelayQueue<ClientId>,
    /// One per seat held for a resume by this node.
    grace: DelayQueue<(RoomCode, SessionToken, u64)>,
}

impl Timers {
    /// Whether no timer is pending: then [`Timers::next`] would wait forever, and the actor's
    /// loop does not poll it.
    pub fn is_empty(&self) -> bool {
        self.typing.is_empty() && self.naming.is_empty() && self.grace.is_empty()
    }

    /// The next timer to fire, waiting for it. A queue with nothing in it is not polled: it
    /// would only say that it is empty. A timer added later is seen on the next call, which
    /// the actor makes after every event.
    pub async fn next(&mut self) -> Expired {
        poll_fn(|cx| {
            if !self.typing.is_empty()
                && let Poll::Ready(Some(fired)) = self.typing.poll_expired(cx)
            {
                return Poll::Ready(Expired::Typing(fired.into_inner()));
            }
            if !self.naming.is_empty()
                && let Poll::Ready(Some(fired)) = self.naming.poll_expired(cx)
            {
                return Poll::Ready(Expired::Naming(fired.into_inner()));
            }
            if !self.grace.is_empty()
                && let Poll::Ready(Some(fired)) = self.grace.poll_expired(cx)
            {
                let (code, token, deadline) = fired.into_inner();
                return Poll::Ready(Expired::Grace(code, token, deadline));
            }
            Poll::Pending
        })
        .await
    }

    /// Starts `id`'s typing timer, firing in `timeout`.
    pub fn start_typing(&mut self, id: ClientId, timeout: Duration) -> Key {
        self.typing.insert(id, timeout)
    }

    /// Pushes a typing timer back to `timeout` from now.
    pub fn restart_typing(&mut self, key: &Key, timeout: Duration) {
        self.typing.reset(key, timeout);
    }

    /// Cancels a pending typing timer.
    pub fn cancel_typing(&mut self, key: &Key) {
        self.typing.remove(key);
    }

    /// Starts `id`'s time to choose a name, running out in `timeout`.
    pub fn start_naming(&mut self, id: ClientId, timeout: Duration) -> Key {
        self.naming.insert(id, timeout)
    }

    /// Cancels a pending naming timer.
    pub fn cancel_naming(&mut self, key: &Key) {
        self.naming.remove(key);
    }

    /// Starts the grace period of a seat held in room `code` until `deadline`, which is
    /// `grace` from now. It is not cancelled on a resume: the store ignores a deadline that is
    /// no longer the seat's.
    pub fn start_grace(
        &mut self,
        code: RoomCode,
        token: SessionToken,
        deadline: u64,
        grace: Duration,
    ) {
        self.grace.insert((code, token, deadline), grace);
    }

    /// How many timers of each kind are pending: (typing, naming, grace). For the invariants.
    #[cfg(any(test, feature = "testing"))]
    pub fn pending(&self) -> (usize, usize, usize) {
        (self.typing.len(), self.naming.len(), self.grace.len())
    }
}

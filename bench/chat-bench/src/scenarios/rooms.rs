//! Rooms that stay up for the whole run: `connections` (members idle) and `throughput`
//! (members chatting, closed loop or at a fixed rate).
//!
//! Each room is one task. It waits for a setup slot (at most `--concurrency` rooms are being
//! set up at once), sets the room up, and then drives its two members side by side with
//! `join!`. Each member reads its socket all the time, which answers the server's pings and
//! notices at once if the server drops the connection.

use std::fmt::Write as _;
use std::future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::{Load, Nodes, Running, setup_room, wait_for_close};
use crate::client::{BenchError, Client, unexpected};
use crate::measure::{Countdown, Shared, Token, bump};
use crate::protocol::{ClientMessage, END_OF_RUN, ServerMessage, Stamp};
use crate::worker::Phase;

/// What one worker is asked to run.
pub struct Plan {
    /// The worker's number, for unique usernames.
    pub worker: u32,
    /// Number of rooms.
    pub rooms: u64,
    /// The number of the first of them in the whole run, which places them on nodes.
    pub first_room: u64,
    /// How members send.
    pub load: Load,
    /// Chat content length in bytes.
    pub size: u32,
    /// Whether every chat carries a `client_msg_id`.
    pub client_msg_ids: bool,
    /// Rooms set up at the same time.
    pub concurrency: u32,
}

/// Starts one task per room.
pub fn spawn(
    plan: Plan,
    nodes: Arc<Nodes>,
    shared: Arc<Shared>,
    phase: watch::Receiver<Phase>,
) -> Running {
    let setup = Countdown::new();
    let drained = Countdown::new();
    let slots = Arc::new(Semaphore::new(plan.concurrency as usize));
    let senders = 2 * plan.rooms;
    let mut tasks = JoinSet::new();
    for room in 0..plan.rooms {
        // Tokens are taken here, before the task runs, so the countdowns start at their full
        // count and cannot reach zero while tasks are still being spawned.
        let setup_token = setup.token();
        let members = [
            MemberPlan {
                name: format!("h{}-{room}", plan.worker),
                sending: Sending::new(plan.load, 2 * room, senders),
                drain: drained.token(),
            },
            MemberPlan {
                name: format!("g{}-{room}", plan.worker),
                sending: Sending::new(plan.load, 2 * room + 1, senders),
                drain: drained.token(),
            },
        ];
        let room_setup = RoomSetup {
            nodes: nodes.clone(),
            room: plan.first_room + room,
            slots: slots.clone(),
            token: setup_token,
        };
        tasks.spawn(run_room(
            room_setup,
            shared.clone(),
            members,
            Shape {
                size: plan.size as usize,
                client_msg_ids: plan.client_msg_ids,
            },
            phase.clone(),
        ));
    }
    Running {
        setup,
        drained,
        tasks,
    }
}

/// What a room's task needs to set the room up.
struct RoomSetup {
    /// The server nodes, on which room number `room` of the run puts its members.
    nodes: Arc<Nodes>,
    room: u64,
    /// The worker's setup slots (`--concurrency`).
    slots: Arc<Semaphore>,
    /// Done once the room is set up (dropped, hence done too, if it fails).
    token: Token,
}

/// One member before its room is set up.
struct MemberPlan {
    name: String,
    sending: Sending,
    drain: Token,
}

/// How one member sends.
#[derive(Debug, Clone, Copy)]
enum Sending {
    /// Never.
    Idle,
    /// Keeps up to `in_flight` messages unacknowledged.
    ClosedLoop { in_flight: u32 },
    /// One message every `period`, the first `offset` after sending starts.
    Every { period: Duration, offset: Duration },
}

impl Sending {
    /// The schedule of sender number `index` among `senders`.
    ///
    /// At a fixed total rate R over S senders, each sends every S/R seconds; sender i starts
    /// i/R seconds late, so that together they send evenly spaced instead of in bursts.
    fn new(load: Load, index: u64, senders: u64) -> Sending {
        match load {
            Load::Idle => Sending::Idle,
            Load::ClosedLoop { in_flight } => Sending::ClosedLoop { in_flight },
            Load::FixedRate { rate } => Sending::Every {
                // tokio's interval cannot tick every 0 s; a microsecond is already far beyond
                // what one connection can send.
                period: Duration::from_secs_f64(senders as f64 / rate)
                    .max(Duration::from_micros(1)),
                offset: Duration::from_secs_f64(index as f64 / rate),
            },
        }
    }
}

/// Sets up the room (in a setup slot), then runs both members until the phase is `Close`.
async fn run_room(
    mut room: RoomSetup,
    shared: Arc<Shared>,
    [host, guest]: [MemberPlan; 2],
    shape: Shape,
    phase: watch::Receiver<Phase>,
) {
    let setup = async {
        // The semaphore is never closed, so this only fails if it were; then run unthrottled.
        let _slot = room.slots.acquire().await;
        setup_room(&room.nodes, room.room, &shared, &host.name, &guest.name).await
    };
    let (host_client, guest_client) = match setup.await {
        Ok(pair) => pair,
        Err(err) => {
            shared.fail(&err);
            return;
        }
    };
    room.token.done();
    tokio::join!(
        Member::new(host_client, host, shape, shared.clone()).run(phase.clone()),
        Member::new(guest_client, guest, shape, shared.clone()).run(phase),
    );
}

/// What each chat a member sends looks like.
#[derive(Debug, Clone, Copy)]
struct Shape {
    /// Minimum chat content length.
    size: usize,
    /// Whether every chat carries a `client_msg_id` (its sequence number).
    client_msg_ids: bool,
}

/// One connected member of a room.
struct Member {
    client: Client,
    /// This member's username; a chat `from` it is this member's own message echoed back.
    name: String,
    sending: Sending,
    shape: Shape,
    shared: Arc<Shared>,
    /// Released once this member has seen the end of both members' messages.
    drain: Token,
    /// Sequence number of the next message to send.
    next_seq: u64,
    /// Own messages echoed back so far, which is also the next expected echo's number.
    echoed: u64,
    /// Sequence number expected next from the peer.
    peer_next: u64,
    /// Whether our own [`END_OF_RUN`] marker has come back.
    own_end_seen: bool,
    /// Whether the peer's [`END_OF_RUN`] marker has arrived.
    peer_end_seen: bool,
    /// Whether this member has nothing more to wait for (and has released `drain`).
    finished: bool,
    /// Reused buffers for outgoing content and ids, so sending does not allocate them.
    content: String,
    client_msg_id: String,
}

impl Member {
    fn new(client: Client, plan: MemberPlan, shape: Shape, shared: Arc<Shared>) -> Member {
        Member {
            client,
            name: plan.name,
            sending: plan.sending,
            shape,
            shared,
            drain: plan.drain,
            next_seq: 0,
            echoed: 0,
            peer_next: 0,
            own_end_seen: false,
            peer_end_seen: false,
            finished: false,
            content: String::with_capacity(shape.size),
            client_msg_id: String::new(),
        }
    }

    /// Marks this member as having nothing more to wait for, which tells the worker.
    fn finish(&mut self) {
        self.finished = true;
        self.drain.done();
    }

    /// Runs until the phase is `Close`, then closes the connection properly.
    async fn run(mut self, mut phase: watch::Receiver<Phase>) {
        let outcome = self.exchange(&mut phase).await;
        self.drain.done();
        match outcome {
            Ok(()) => self.shared.closed(self.client.close().await),
            Err(err) => {
                self.shared.fail(&err);
                // Keep the connection until the end, so that one member's failure is not
                // also reported as its peer's `peer_left`.
                wait_for_close(&mut phase).await;
            }
        }
    }

    /// The member's life after setup: send according to the phase and the schedule, and
    /// read everything that arrives. Returns when the phase is `Close`.
    async fn exchange(&mut self, phase: &mut watch::Receiver<Phase>) -> Result<(), BenchError> {
        let mut ticker: Option<Interval> = None;
        let mut started = false;
        let mut stopped = false;
        let mut current = *phase.borrow_and_update();
        loop {
            tokio::select! {
                // Phase changes first: once the phase is `Stop` nothing more may be sent.
                biased;
                changed = phase.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    current = *phase.borrow_and_update();
                    if current.is_sending() && !started {
                        started = true;
                        ticker = self.start_sending().await?;
                    }
                    if current >= Phase::Stop && !stopped {
                        stopped = true;
                        ticker = None;
                        self.stop_sending().await?;
                    }
                    if current == Phase::Close {
                        return Ok(());
                    }
                }
                due = next_tick(&mut ticker) => {
                    // The stamp carries when the message was *due*, not when it left: if this
                    // client falls behind its schedule, the delay counts as latency instead of
                    // silently lowering the load (no "coordinated omission").
                    let due_ns = self.shared.clock.ns_at(due.into_std());
                    self.send_chat(due_ns).await?;
                }
                incoming = self.client.recv() => {
                    let message = incoming?.ok_or(BenchError::Closed(match self.sending {
                        Sending::Idle => "the end of the idle hold",
                        _ => "chat messages",
                    }))?;
                    self.receive(message, current).await?;
                }
            }
        }
    }

    /// Starts sending: a closed-loop sender sends its first `in_flight` messages, a
    /// fixed-rate one gets its ticker.
    async fn start_sending(&mut self) -> Result<Option<Interval>, BenchError> {
        match self.sending {
            Sending::Idle => Ok(None),
            Sending::ClosedLoop { in_flight } => {
                for _ in 0..in_flight {
                    self.send_chat(self.shared.clock.now_ns()).await?;
                }
                Ok(None)
            }
            Sending::Every { period, offset } => {
                let mut ticker = tokio::time::interval_at(Instant::now() + offset, period);
                // Burst: after a late tick, catch up with the missed ones at once, so the
                // offered rate stays what was asked for.
                ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
                Ok(Some(ticker))
            }
        }
    }

    /// Stops sending by sending the [`END_OF_RUN`] marker (an idle member has nothing to
    /// wait for and is drained at once).
    ///
    /// The server delivers a sender's messages to both members in order, so once a member
    /// has seen its own marker come back and the peer's arrive, it has received everything
    /// either of them sent: nothing is still in flight when the worker starts closing, and
    /// every message sent inside the window is counted by its receiver.
    async fn stop_sending(&mut self) -> Result<(), BenchError> {
        match self.sending {
            Sending::Idle => self.finish(),
            Sending::ClosedLoop { .. } | Sending::Every { .. } => {
                self.client
                    .send(&ClientMessage::Chat {
                        content: END_OF_RUN,
                        client_msg_id: None,
                    })
                    .await?;
            }
        }
        Ok(())
    }

    /// Sends the next chat message, stamped with `sent_ns`.
    async fn send_chat(&mut self, sent_ns: u64) -> Result<(), BenchError> {
        Stamp {
            seq: self.next_seq,
            sent_ns,
        }
        .write(self.shape.size, &mut self.content);
        let client_msg_id = self.shape.client_msg_ids.then(|| {
            self.client_msg_id.clear();
            // Writing to a `String` cannot fail.
            let _ = write!(self.client_msg_id, "{}", self.next_seq);
            self.client_msg_id.as_str()
        });
        self.client
            .send(&ClientMessage::Chat {
                content: &self.content,
                client_msg_id,
            })
            .await?;
        self.next_seq += 1;
        // Counted by the time in its stamp, the same rule the receiver uses for latency,
        // so that every message counted as sent is also counted once when received.
        if self.shared.clock.in_window(sent_ns) {
            bump(&self.shared.counters.sent);
        }
        Ok(())
    }

    /// Handles one message from the server: an echo of our own chat (an acknowledgement) or
    /// the peer's chat (a delivery, with its latency). Anything else is a failure here.
    async fn receive(&mut self, message: ServerMessage, phase: Phase) -> Result<(), BenchError> {
        let (from, content) = match message {
            ServerMessage::Chat { from, content } => (from, content),
            ServerMessage::Error { code, message } => {
                return Err(BenchError::Refused { code, message });
            }
            // Once this member is done, its peer may be done too and already closing.
            ServerMessage::PeerLeft { .. } | ServerMessage::PeerDisconnected { .. }
                if self.finished =>
            {
                return Ok(());
            }
            other => return Err(unexpected("chat", &other)),
        };
        let own = from == self.name;
        if content == END_OF_RUN {
            if own {
                self.own_end_seen = true;
            } else {
                self.peer_end_seen = true;
            }
            if self.own_end_seen && self.peer_end_seen {
                self.finish();
            }
            return Ok(());
        }
        let now = self.shared.clock.now_ns();
        let stamp = Stamp::parse(&content).ok_or_else(|| {
            BenchError::Unreadable("chat content not written by chat-bench".to_string())
        })?;
        if own {
            if stamp.seq != self.echoed {
                return Err(BenchError::OutOfOrder {
                    expected: self.echoed,
                    got: stamp.seq,
                });
            }
            self.echoed += 1;
            if phase.is_sending() && matches!(self.sending, Sending::ClosedLoop { .. }) {
                self.send_chat(now).await?;
            }
        } else {
            if stamp.seq != self.peer_next {
                return Err(BenchError::OutOfOrder {
                    expected: self.peer_next,
                    got: stamp.seq,
                });
            }
            self.peer_next += 1;
            let clock = &self.shared.clock;
            if clock.in_window(now) {
                bump(&self.shared.counters.delivered);
            }
            if clock.in_window(stamp.sent_ns) {
                self.shared
                    .histogram
                    .record_us(now.saturating_sub(stamp.sent_ns) / 1_000);
            }
        }
        Ok(())
    }
}

/// The next tick of `ticker`, or never if there is none (an idle or closed-loop member).
async fn next_tick(ticker: &mut Option<Interval>) -> Instant {
    match ticker {
        Some(ticker) => ticker.tick().await,
        None => future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At 100 msgs/s over 4 senders, each sends every 40 ms and they start 10 ms apart.
    #[test]
    fn fixed_rate_is_spread_evenly_over_senders() {
        let schedule: Vec<_> = (0..4)
            .map(
                |i| match Sending::new(Load::FixedRate { rate: 100.0 }, i, 4) {
                    Sending::Every { period, offset } => (period, offset),
                    other => panic!("expected a fixed-rate schedule, got {other:?}"),
                },
            )
            .collect();
        for (i, &(period, offset)) in schedule.iter().enumerate() {
            assert_eq!(period, Duration::from_millis(40));
            assert_eq!(offset, Duration::from_millis(10 * i as u64));
        }
    }
}

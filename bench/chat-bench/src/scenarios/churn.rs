//! `churn`: short sessions started at a fixed rate, as when people keep arriving, chatting
//! briefly and leaving.
//!
//! A session is one room's whole life: host and guest connect, name themselves, create and
//! join the room, each send `--messages` chats and read all of them (their own echoes and the
//! peer's), then the guest leaves, the host sees `peer_left` and leaves, and both close
//! their connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use super::{Nodes, Running, setup_room, wait_for_close};
use crate::client::{BenchError, Client, unexpected};
use crate::measure::{Countdown, Shared, Token, bump};
use crate::protocol::{ClientMessage, ServerMessage};
use crate::worker::Phase;

/// What one worker is asked to run.
pub struct Plan {
    /// The worker's number, for unique usernames and session numbers.
    pub worker: u32,
    /// Workers sharing the run (see [`session_number`]).
    pub workers: u32,
    /// Sessions started per second by this worker.
    pub rate: f64,
    /// Chat messages each member sends per session.
    pub messages: u32,
    /// Most sessions in progress at once.
    pub max_sessions: u32,
}

/// Starts the launcher task; sessions are spawned by it while the phase is a sending one.
pub fn spawn(
    plan: Plan,
    nodes: Arc<Nodes>,
    shared: Arc<Shared>,
    phase: watch::Receiver<Phase>,
) -> Running {
    // Nothing to set up: sessions start when the coordinator says so.
    let setup = Countdown::new();
    let drained = Countdown::new();
    let launcher_token = drained.token();
    let mut tasks = JoinSet::new();
    tasks.spawn(launch(
        plan,
        nodes,
        shared,
        phase,
        drained.clone(),
        launcher_token,
    ));
    Running {
        setup,
        drained,
        tasks,
    }
}

/// Starts a session every 1/rate seconds from the first sending phase until `Stop`, then
/// waits for `Close` and ends any session still running.
async fn launch(
    plan: Plan,
    nodes: Arc<Nodes>,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
    drained: Arc<Countdown>,
    mut launcher_token: Token,
) {
    let ready = phase.wait_for(|phase| *phase != Phase::Setup).await;
    if !ready.is_ok_and(|phase| phase.is_sending()) {
        return;
    }
    let slots = Arc::new(Semaphore::new(plan.max_sessions as usize));
    let mut sessions = JoinSet::new();
    let period = Duration::from_secs_f64(1.0 / plan.rate).max(Duration::from_micros(1));
    let mut ticker = tokio::time::interval(period);
    // Burst keeps the average rate when the client falls behind; the skipped-session count
    // shows when even that could not keep up.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut next_id: u64 = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        bump(&shared.counters.sessions_started);
                        sessions.spawn(run_session(
                            SessionId {
                                worker: plan.worker,
                                id: next_id,
                                number: session_number(plan.worker, plan.workers, next_id),
                            },
                            plan.messages,
                            nodes.clone(),
                            shared.clone(),
                            slot,
                            drained.token(),
                        ));
                        next_id += 1;
                    }
                    Err(_) => bump(&shared.counters.sessions_skipped),
                }
            }
            changed = phase.changed() => {
                if changed.is_err() || !phase.borrow_and_update().is_sending() {
                    break;
                }
            }
            // Reap finished sessions so that the set does not grow for the whole run.
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    // No more sessions will start; the worker's drain now waits for those in progress.
    launcher_token.done();
    wait_for_close(&mut phase).await;
    // Any session still running now has outlived the drain timeout; it stays counted as
    // started but neither completed nor failed ("unfinished" in the report).
    sessions.shutdown().await;
}

/// The number in the whole run of session `id` of worker `worker` among `workers`: the
/// workers' sessions interleave (worker w starts sessions w, w + W, w + 2W, …), so that the
/// node rule of [`super::room_nodes`] applies to one numbering of the run, not to each
/// worker's own count.
pub fn session_number(worker: u32, workers: u32, id: u64) -> u64 {
    id * u64::from(workers.max(1)) + u64::from(worker)
}

/// Which session this is.
#[derive(Debug, Clone, Copy)]
struct SessionId {
    /// The worker that starts it.
    worker: u32,
    /// Its number in that worker, for the usernames.
    id: u64,
    /// Its number in the whole run ([`session_number`]), which places its members on nodes.
    number: u64,
}

/// Runs one session and counts its outcome. Holding `_slot` and `_drain` for the session's
/// life is what makes them count it as in progress.
async fn run_session(
    which: SessionId,
    messages: u32,
    nodes: Arc<Nodes>,
    shared: Arc<Shared>,
    _slot: OwnedSemaphorePermit,
    _drain: Token,
) {
    let started = Instant::now();
    match session(which, messages, &nodes, &shared).await {
        Ok(()) => {
            bump(&shared.counters.sessions_completed);
            shared
                .histogram
                .record_us(started.elapsed().as_micros() as u64);
        }
        Err(err) => {
            bump(&shared.counters.sessions_failed);
            shared.fail(&err);
        }
    }
}

/// One session, step by step; any deviation from the protocol is an error.
async fn session(
    which: SessionId,
    messages: u32,
    nodes: &Nodes,
    shared: &Shared,
) -> Result<(), BenchError> {
    let SessionId { worker, id, number } = which;
    let (mut host, mut guest) = setup_room(
        nodes,
        number,
        shared,
        &format!("ch{worker}-{id}"),
        &format!("cg{worker}-{id}"),
    )
    .await?;

    for i in 0..messages {
        let content = format!("host message {i}");
        host.send(&ClientMessage::Chat {
            content: &content,
            client_msg_id: None,
        })
        .await?;
        let content = format!("guest message {i}");
        guest
            .send(&ClientMessage::Chat {
                content: &content,
                client_msg_id: None,
            })
            .await?;
    }
    // Every chat goes to both members, so each reads its own and the peer's.
    tokio::try_join!(
        expect_chats(&mut host, 2 * messages),
        expect_chats(&mut guest, 2 * messages)
    )?;

    leave(&mut guest).await?;
    match host.reply("peer_left").await? {
        ServerMessage::PeerLeft { reason } if reason == "left" => {}
        ServerMessage::PeerLeft { .. } => {
            return Err(BenchError::Unexpected {
                expected: "peer_left with reason \"left\"",
                got: "peer_left with another reason",
            });
        }
        other => return Err(unexpected("peer_left", &other)),
    }
    leave(&mut host).await?;
    let (host_closed, guest_closed) = tokio::join!(host.close(), guest.close());
    shared.closed(host_closed);
    shared.closed(guest_closed);
    Ok(())
}

/// Reads `count` chat messages.
async fn expect_chats(client: &mut Client, count: u32) -> Result<(), BenchError> {
    for _ in 0..count {
        match client.reply("chat").await? {
            ServerMessage::Chat { .. } => {}
            other => return Err(unexpected("chat", &other)),
        }
    }
    Ok(())
}

/// `leave_room`, then waits for `room_left`.
async fn leave(client: &mut Client) -> Result<(), BenchError> {
    client.send(&ClientMessage::LeaveRoom).await?;
    match client.reply("room_left").await? {
        ServerMessage::RoomLeft { .. } => Ok(()),
        other => Err(unexpected("room_left", &other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::room_nodes;

    /// However many workers start sessions, their session numbers are those of one run, each
    /// once, and every session's two members are on different nodes.
    #[test]
    fn sessions_are_numbered_across_workers() {
        for workers in 1..=4 {
            let mut numbers: Vec<u64> = (0..workers)
                .flat_map(|worker| (0..10).map(move |id| session_number(worker, workers, id)))
                .collect();
            numbers.sort_unstable();
            let expected: Vec<u64> = (0..10 * u64::from(workers)).collect();
            assert_eq!(numbers, expected, "{workers} workers");
            for nodes in [2, 3] {
                for &number in &numbers {
                    let (host, guest) = room_nodes(number, nodes);
                    assert_ne!(host, guest);
                }
            }
        }
    }
}

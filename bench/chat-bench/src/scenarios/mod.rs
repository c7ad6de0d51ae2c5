//! The scenarios a worker can run, and the room setup they share.
//!
//! - [`rooms`]: N rooms of two members that stay connected and either sit idle
//!   (`connections`) or chat with each other (`throughput`).
//! - [`churn`]: short sessions started at a fixed rate, each a room that lives for a few
//!   messages.

pub mod churn;
pub mod rooms;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::client::{BenchError, Client, Connector};
use crate::measure::{Countdown, Shared, bump};
use crate::worker::{Phase, WorkerSpec};

/// One worker's share of a scenario, as the coordinator sends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scenario {
    /// `rooms` rooms of two connected members, each sending according to `load`.
    Rooms {
        rooms: u64,
        load: Load,
        /// Chat content length in bytes.
        size: u32,
    },
    /// Sessions started at `rate` per second.
    Churn {
        rate: f64,
        /// Messages each member sends per session.
        messages: u32,
        /// Most sessions in progress at once.
        max_sessions: u32,
    },
}

/// How the members of a room send.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Load {
    /// Not at all: the connections are held idle.
    Idle,
    /// Each sender keeps up to `in_flight` messages not yet echoed back to it.
    ClosedLoop { in_flight: u32 },
    /// `rate` messages per second in total over all this worker's senders.
    FixedRate { rate: f64 },
}

/// A scenario that has been started: what the worker waits on and the tasks it owns.
pub struct Running {
    /// Done when every room has been set up (or has failed to be).
    pub setup: Arc<Countdown>,
    /// Done, once the phase is `Stop`, when no client waits for any message anymore.
    pub drained: Arc<Countdown>,
    /// The client tasks; all of them end once the phase is `Close`.
    pub tasks: JoinSet<()>,
}

/// Starts the worker's share of its scenario on the current runtime.
pub fn spawn(
    spec: &WorkerSpec,
    connector: Connector,
    shared: Arc<Shared>,
    phase: watch::Receiver<Phase>,
) -> Running {
    let connector = Arc::new(connector);
    match spec.scenario {
        Scenario::Rooms { rooms, load, size } => rooms::spawn(
            rooms::Plan {
                worker: spec.index,
                rooms,
                load,
                size,
                concurrency: spec.concurrency,
            },
            connector,
            shared,
            phase,
        ),
        Scenario::Churn {
            rate,
            messages,
            max_sessions,
        } => churn::spawn(
            churn::Plan {
                worker: spec.index,
                rate,
                messages,
                max_sessions,
            },
            connector,
            shared,
            phase,
        ),
    }
}

/// Connects one client, counting the attempt.
async fn connect(connector: &Connector, shared: &Shared) -> Result<Client, BenchError> {
    match connector.connect().await {
        Ok(client) => {
            bump(&shared.counters.connections_opened);
            Ok(client)
        }
        Err(err) => {
            bump(&shared.counters.connections_failed);
            Err(err)
        }
    }
}

/// Sets up one room the way two people would: the host connects, picks a name and creates
/// the room; the guest connects, picks a name and joins with the code; the host is told.
/// Returns `(host, guest)`, and counts the room as ready or failed.
pub async fn setup_room(
    connector: &Connector,
    shared: &Shared,
    host_name: &str,
    guest_name: &str,
) -> Result<(Client, Client), BenchError> {
    let result = setup_steps(connector, shared, host_name, guest_name).await;
    match &result {
        Ok(_) => bump(&shared.counters.rooms_ready),
        Err(_) => bump(&shared.counters.rooms_failed),
    }
    result
}

/// The steps of [`setup_room`].
async fn setup_steps(
    connector: &Connector,
    shared: &Shared,
    host_name: &str,
    guest_name: &str,
) -> Result<(Client, Client), BenchError> {
    let mut host = connect(connector, shared).await?;
    host.set_username(host_name).await?;
    let room_code = host.create_room().await?;
    let mut guest = connect(connector, shared).await?;
    guest.set_username(guest_name).await?;
    guest.join_room(&room_code).await?;
    host.wait_peer_joined().await?;
    Ok((host, guest))
}

/// Waits until the phase is `Close` (or the worker is gone).
async fn wait_for_close(phase: &mut watch::Receiver<Phase>) {
    // `wait_for` errs only when the sender is dropped, which means "close" too.
    let _ = phase.wait_for(|&phase| phase == Phase::Close).await;
}

//! The scenarios a worker can run, and the room setup they share.
//!
//! - [`rooms`]: N rooms of two members that stay connected and either sit idle
//!   (`connections`) or chat with each other (`throughput`).
//! - [`churn`]: short sessions started at a fixed rate, each a room that lives for a few
//!   messages.
//!
//! With several server nodes (`--url` repeated), [`room_nodes`] decides which node each
//! member of a room connects to.

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
        /// The number of this worker's first room in the whole run: its rooms are
        /// `first_room..first_room + rooms`, which decides their nodes (see [`room_nodes`]).
        first_room: u64,
        load: Load,
        /// Chat content length in bytes.
        size: u32,
        /// Whether every chat carries a `client_msg_id`.
        client_msg_ids: bool,
    },
    /// Sessions started at `rate` per second.
    Churn {
        rate: f64,
        /// Messages each member sends per session.
        messages: u32,
        /// Most sessions in progress at once.
        max_sessions: u32,
        /// Workers sharing the run: this worker's sessions are numbers `index`,
        /// `index + workers`, `index + 2 × workers`, … of the whole run (see
        /// [`churn::session_number`]), which decides their nodes.
        workers: u32,
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

/// The nodes that room number `room` of the whole run puts its members on, among `nodes`
/// server nodes (indexes into `--url`): the host on node `room % nodes`, the guest on the next
/// one, `(room + 1) % nodes`.
///
/// With two nodes or more the two members of every room are on different nodes, so every
/// message crosses from one node to the other (through Redis); and the nodes hold the same
/// number of connections, give or take two. `room` must be the room's number in the whole run,
/// not in one worker's share: a worker's rooms are a contiguous block
/// (`Scenario::Rooms::first_room`), and churn sessions are numbered across workers, so the
/// rule and the balance hold however many workers there are. With one node, both are on it.
pub fn room_nodes(room: u64, nodes: usize) -> (usize, usize) {
    let nodes = nodes.max(1) as u64;
    ((room % nodes) as usize, ((room + 1) % nodes) as usize)
}

/// The connections each of `nodes` nodes holds when rooms `0..rooms` are all set up by
/// [`room_nodes`]: the hosts of the rooms numbered k modulo N and the guests of those
/// numbered k − 1.
pub fn connections_per_node(rooms: u64, nodes: usize) -> Vec<u64> {
    let n = nodes.max(1) as u64;
    // Rooms below `rooms` whose number is `k` modulo `n`.
    let with_residue = |k: u64| rooms / n + u64::from(k < rooms % n);
    (0..n)
        .map(|k| with_residue(k) + with_residue((k + n - 1) % n))
        .collect()
}

/// The server nodes a worker connects to: one connector per `--url`, in that order.
pub struct Nodes(Vec<Connector>);

impl Nodes {
    /// The nodes behind `connectors`; there must be at least one.
    pub fn new(connectors: Vec<Connector>) -> Nodes {
        assert!(!connectors.is_empty(), "a run needs at least one --url");
        Nodes(connectors)
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// Starts the worker's share of its scenario on the current runtime.
pub fn spawn(
    spec: &WorkerSpec,
    nodes: Nodes,
    shared: Arc<Shared>,
    phase: watch::Receiver<Phase>,
) -> Running {
    let nodes = Arc::new(nodes);
    match spec.scenario {
        Scenario::Rooms {
            rooms,
            first_room,
            load,
            size,
            client_msg_ids,
        } => rooms::spawn(
            rooms::Plan {
                worker: spec.index,
                rooms,
                first_room,
                load,
                size,
                client_msg_ids,
                concurrency: spec.concurrency,
            },
            nodes,
            shared,
            phase,
        ),
        Scenario::Churn {
            rate,
            messages,
            max_sessions,
            workers,
        } => churn::spawn(
            churn::Plan {
                worker: spec.index,
                workers,
                rate,
                messages,
                max_sessions,
            },
            nodes,
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

/// Sets up room number `room` of the run the way two people would: the host connects to its
/// node (see [`room_nodes`]), picks a name and creates the room; the guest connects to its
/// node, picks a name and joins with the code the host's node gave; the host is told.
/// Returns `(host, guest)`, and counts the room as ready (with its two connections on their
/// nodes) or failed.
pub async fn setup_room(
    nodes: &Nodes,
    room: u64,
    shared: &Shared,
    host_name: &str,
    guest_name: &str,
) -> Result<(Client, Client), BenchError> {
    let (host_node, guest_node) = room_nodes(room, nodes.len());
    let result = setup_steps(
        [&nodes.0[host_node], &nodes.0[guest_node]],
        shared,
        host_name,
        guest_name,
    )
    .await;
    match &result {
        Ok(_) => {
            bump(&shared.counters.rooms_ready);
            shared.room_ready_on(host_node, guest_node);
        }
        Err(_) => bump(&shared.counters.rooms_failed),
    }
    result
}

/// The steps of [`setup_room`], the host connecting through `host_node` and the guest
/// through `guest_node`.
async fn setup_steps(
    [host_node, guest_node]: [&Connector; 2],
    shared: &Shared,
    host_name: &str,
    guest_name: &str,
) -> Result<(Client, Client), BenchError> {
    let mut host = connect(host_node, shared).await?;
    host.set_username(host_name).await?;
    let room_code = host.create_room().await?;
    let mut guest = connect(guest_node, shared).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// With one node both members are on it; with two or three, host and guest of every room
    /// are on different nodes, and [`connections_per_node`] counts what the rule places.
    #[test]
    fn host_and_guest_are_on_different_nodes() {
        for room in 0..50 {
            assert_eq!(room_nodes(room, 1), (0, 0));
        }
        for nodes in [2, 3] {
            for rooms in [0, 1, 2, 5, 6, 7, 50] {
                let mut held = vec![0; nodes];
                for room in 0..rooms {
                    let (host, guest) = room_nodes(room, nodes);
                    assert_ne!(host, guest, "room {room} of {nodes} nodes");
                    assert!(host < nodes && guest < nodes);
                    held[host] += 1;
                    held[guest] += 1;
                }
                assert_eq!(held, connections_per_node(rooms, nodes), "{rooms} rooms");
                let (least, most) = (held.iter().min(), held.iter().max());
                assert!(most.zip(least).is_some_and(|(m, l)| m - l <= 2), "{held:?}");
            }
        }
        assert_eq!(connections_per_node(7, 1), [14]);
    }
}

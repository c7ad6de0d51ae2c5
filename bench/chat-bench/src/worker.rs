//! A worker: the part of chat-bench that owns client sockets and runs a scenario on them.
//!
//! The coordinator (see `coordinator.rs`) runs one worker inside its own process when one
//! process can hold all the sockets, or several as child processes when it cannot. Either way
//! the conversation is the same, only carried differently:
//!
//! ```text
//! coordinator                         worker
//!     │ ── WorkerSpec ───────────────▶ │  set up rooms (connect, name, create, join)
//!     │ ◀────────── Progress (every ½ s)│
//!     │ ◀────────────────────── Ready ─ │
//!     │ ── Phase::Warmup ────────────▶ │  start sending
//!     │ ── Phase::Measure ───────────▶ │  open the measured window
//!     │ ── Phase::Stop ──────────────▶ │  close the window, stop sending, wait for echoes
//!     │ ◀──────────────── Done(report) ─│  close every connection, report
//! ```
//!
//! In a child process the spec and phases arrive as JSON lines on stdin and events leave as
//! JSON lines on stdout (see [`run_child`]); in-process they travel over channels.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};

use crate::client::{BenchError, Connector, Target};
use crate::measure::{Counts, HistogramData, Shared};
use crate::procfs::{self, Pid};
use crate::refusal::Limit;
use crate::scenarios::{self, Nodes, Scenario};

/// How often a worker reports its counts for the progress line.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);

/// Everything a worker needs to know to run its share of a scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// This worker's number, 0-based; it goes into usernames so they are unique.
    pub index: u32,
    /// The `ws://` URL of every server node, in the order of `--url`.
    pub urls: Vec<String>,
    /// Local address to connect from, or `None` for the kernel's choice.
    pub source: Option<IpAddr>,
    /// Time allowed for each protocol step.
    pub step_timeout: Duration,
    /// Rooms set up at the same time.
    pub concurrency: u32,
    /// The scenario and this worker's share of it.
    pub scenario: Scenario,
}

/// Where the run is; the coordinator moves every worker through these in order, and each
/// client task watches it to know when to send and when to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Connecting and setting up rooms.
    Setup,
    /// Sending, not yet counted.
    Warmup,
    /// Sending, and counting what is sent and received.
    Measure,
    /// No more sending; waiting for messages already sent to come back.
    Stop,
    /// Closing every connection.
    Close,
}

impl Phase {
    /// Whether clients should be sending in this phase.
    pub fn is_sending(self) -> bool {
        matches!(self, Phase::Warmup | Phase::Measure)
    }
}

/// What a worker tells the coordinator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerEvent {
    /// Counts so far, for the progress line.
    Progress { counts: Counts },
    /// Setup is over (each room ready or failed); waiting for the next phase.
    Ready { counts: Counts },
    /// The worker finished; its final report.
    Done(Box<WorkerReport>),
    /// The worker could not run at all (for instance, the URL does not resolve).
    Failed { message: String },
}

/// The results of one worker.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Final counts.
    pub counts: Counts,
    /// Failures by kind.
    pub failures: std::collections::BTreeMap<String, u64>,
    /// The failures that were the server's limits refusing the load, by limit (also counted
    /// in `failures`).
    pub refused: std::collections::BTreeMap<Limit, u64>,
    /// Latencies (throughput) or session lengths (churn), in µs.
    pub histogram: HistogramData,
    /// Seconds from the worker's start until every room was set up.
    pub setup_secs: f64,
    /// CPU time this worker process used inside the measured window, in clock ticks.
    pub cpu_ticks: u64,
    /// This worker process's resident memory at the end of the run, in KiB.
    pub rss_kib: u64,
    /// Connections of the rooms this worker set up, by server node (index into `--url`).
    pub connections_by_node: Vec<u64>,
}

/// Runs one worker until it has reported `Done` (or `Failed`).
///
/// `phases` carries the coordinator's orders; if it closes early (the coordinator is gone),
/// the worker stops as if told `Stop` and closes its connections.
pub async fn run(
    spec: WorkerSpec,
    mut phases: mpsc::UnboundedReceiver<Phase>,
    events: mpsc::UnboundedSender<WorkerEvent>,
) {
    let started = Instant::now();
    let mut connectors = Vec::with_capacity(spec.urls.len());
    for url in &spec.urls {
        match Target::resolve(url).await {
            Ok(target) => connectors.push(Connector::new(target, spec.source, spec.step_timeout)),
            Err(message) => {
                let _ = events.send(WorkerEvent::Failed { message });
                return;
            }
        }
    }
    if connectors.is_empty() {
        let _ = events.send(WorkerEvent::Failed {
            message: "no --url to connect to".to_string(),
        });
        return;
    }
    let shared = Shared::new(connectors.len());
    let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
    let mut running = scenarios::spawn(&spec, Nodes::new(connectors), shared.clone(), phase_rx);

    // Progress reports run beside everything else until the final report.
    let progress = tokio::spawn({
        let shared = shared.clone();
        let events = events.clone();
        async move {
            let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
            loop {
                tick.tick().await;
                let counts = shared.counters.snapshot();
                if events.send(WorkerEvent::Progress { counts }).is_err() {
                    break;
                }
            }
        }
    });

    running.setup.wait().await;
    let setup_secs = started.elapsed().as_secs_f64();
    let _ = events.send(WorkerEvent::Ready {
        counts: shared.counters.snapshot(),
    });

    // Follow the coordinator until it says `Stop` (or goes away). Only this task writes the
    // window bounds, each right before the client tasks learn the new phase.
    let mut cpu_at_start = 0;
    while let Some(phase) = phases.recv().await {
        if phase >= Phase::Stop {
            break;
        }
        if phase == Phase::Measure {
            shared.clock.start_window();
            cpu_at_start = own_cpu_ticks();
        }
        phase_tx.send_replace(phase);
    }
    shared.clock.end_window();
    let cpu_at_end = own_cpu_ticks();
    phase_tx.send_replace(Phase::Stop);

    // Let every sender see its last messages come back, then close all connections.
    if tokio::time::timeout(spec.step_timeout, running.drained.wait())
        .await
        .is_err()
    {
        for _ in 0..running.drained.remaining() {
            shared.fail(&BenchError::Timeout(
                "the run's last messages and sessions to finish",
            ));
        }
    }
    phase_tx.send_replace(Phase::Close);
    while running.tasks.join_next().await.is_some() {}
    progress.abort();

    let report = WorkerReport {
        counts: shared.counters.snapshot(),
        failures: shared.failures(),
        refused: shared.refused(),
        histogram: shared.histogram.export(),
        setup_secs,
        cpu_ticks: cpu_at_end.saturating_sub(cpu_at_start),
        rss_kib: procfs::usage(Pid::Current).map_or(0, |usage| usage.rss_kib),
        connections_by_node: shared.connections_by_node(),
    };
    let _ = events.send(WorkerEvent::Done(Box::new(report)));
}

/// This process's CPU time in clock ticks (0 if /proc cannot be read).
fn own_cpu_ticks() -> u64 {
    procfs::usage(Pid::Current).map_or(0, |usage| usage.cpu_ticks)
}

/// The `chat-bench worker` subcommand: runs one worker as a child process of a coordinator,
/// reading the spec and phases as JSON lines on stdin and writing events on stdout.
pub async fn run_child() -> Result<(), String> {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let first = stdin
        .next_line()
        .await
        .map_err(|err| format!("worker: cannot read its spec on stdin: {err}"))?
        .ok_or("worker: no spec on stdin (this subcommand is started by chat-bench itself)")?;
    let spec: WorkerSpec =
        serde_json::from_str(&first).map_err(|err| format!("worker: bad spec: {err}"))?;

    let (phase_tx, phase_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // Each further line is a phase. End of input (the coordinator exited) drops
        // `phase_tx`, which the worker takes as "stop".
        while let Ok(Some(line)) = stdin.next_line().await {
            match serde_json::from_str::<Phase>(&line) {
                Ok(phase) => {
                    if phase_tx.send(phase).is_err() {
                        break;
                    }
                }
                Err(err) => {
                    eprintln!("chat-bench worker: ignoring unreadable phase {line:?}: {err}");
                }
            }
        }
    });

    let (event_tx, mut event_rx) = mpsc::unbounded_channel();
    let worker = tokio::spawn(run(spec, phase_rx, event_tx));
    let mut stdout = tokio::io::stdout();
    while let Some(event) = event_rx.recv().await {
        let mut line = serde_json::to_string(&event)
            .map_err(|err| format!("worker: cannot encode an event: {err}"))?;
        line.push('\n');
        let written = async {
            stdout.write_all(line.as_bytes()).await?;
            stdout.flush().await
        };
        if written.await.is_err() {
            // The coordinator is gone; nobody is left to report to.
            break;
        }
    }
    worker
        .await
        .map_err(|err| format!("worker task failed: {err}"))
}

//! The coordinator: turns the command line into work for one or more workers, moves them
//! through the phases of the run, samples the server from /proc at the edges of the measured
//! window, and assembles the [`Report`].
//!
//! When one process can hold every socket, the single worker runs inside this process as a
//! task; otherwise each worker is a child process of this same executable
//! (`chat-bench worker`), connecting from its own 127.0.0.x. Both kinds are driven by the
//! same code: a [`Pool`] of handles that take phases, and one channel on which every
//! worker's events arrive.

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cli::{self, Common};
use crate::client::Target;
use crate::limits::{self, Capacity, thousands};
use crate::measure::{Counts, HistogramData};
use crate::probe::{Probes, Sample, Work};
use crate::procfs::{self, ClockTicks, MachineTicks};
use crate::report::{
    ClientStats, ConnectionStats, ErrorStats, MachineStats, MessageStats, Refused, Report,
    SessionStats, Settings, ratio,
};
use crate::scenarios::{self, Load, Scenario};
use crate::worker::{self, Phase, WorkerEvent, WorkerReport, WorkerSpec};

/// How often the progress line is redrawn on a terminal.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// How often a progress line is written when stderr is not a terminal (a log file).
const PROGRESS_EVERY_IN_LOGS: Duration = Duration::from_secs(5);

/// Runs a scenario from the command line and returns its report.
pub async fn run(common: Common, command: cli::Command) -> Result<Report, String> {
    let job = Job::new(command)?;
    if common.urls.is_empty() {
        return Err("no --url to connect to".to_string());
    }
    let mut targets = Vec::with_capacity(common.urls.len());
    for url in &common.urls {
        targets.push(Target::resolve(url).await?);
    }
    // Workers bind IPv4 source addresses, which cannot reach an IPv6 server.
    let capacity = Capacity::of_this_machine(targets.iter().all(|target| target.addr.is_ipv4()));
    let choice = limits::choose(job.sockets(), common.workers, &capacity)?;
    let mut notes: Vec<String> = choice.note.into_iter().collect();
    let workers = choice.workers.min(job.max_workers());
    if workers < choice.workers {
        notes.push(format!(
            "only {workers} workers used: there is not enough work for {}",
            choice.workers
        ));
    }

    let ticks = ClockTicks::read();
    if !ticks.measured {
        notes.push("`getconf CLK_TCK` failed: CPU times assume 100 clock ticks per second".into());
    }
    let (probes, pairing) = Probes::new(&common.server_pids, common.redis_pid, &targets)?;
    notes.extend(pairing);
    notes.extend(probes.file_limit_warnings(&job.connections_per_node(targets.len())));
    let before = probes.sample()?;

    let specs = (0..workers)
        .map(|index| WorkerSpec {
            index,
            urls: common.urls.clone(),
            source: choice
                .bind_sources
                .then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, (index + 1) as u8))),
            step_timeout: common.timeout,
            concurrency: common.concurrency,
            scenario: job.share(index, workers),
        })
        .collect();
    let mut pool = Pool::start(specs, workers > 1).await?;
    let mut progress = Progress::new(!common.quiet, job.scenario);

    progress.stage("setting up", None);
    pool.wait(Until::AllReady, &mut progress).await?;

    // If not a single room could be set up there is nothing to measure: go straight to the
    // report, which lists why.
    let nothing_up = matches!(job.kind, Scenario::Rooms { .. }) && pool.total().rooms_ready == 0;
    let (warmup, window) = if nothing_up {
        (Duration::ZERO, Duration::ZERO)
    } else {
        (job.warmup, job.window)
    };
    pool.send(Phase::Warmup).await?;
    if !warmup.is_zero() {
        progress.stage("warming up", Some(warmup));
        pool.wait(Until::Time(Instant::now() + warmup), &mut progress)
            .await?;
    }
    let window_start = Instant::now();
    let machine_start = procfs::machine_ticks().ok();
    let start = probes.sample()?;
    pool.send(Phase::Measure).await?;
    progress.stage(job.window_label(), Some(window));
    pool.wait(Until::Time(window_start + window), &mut progress)
        .await?;
    let end = probes.sample()?;
    let machine_end = procfs::machine_ticks().ok();
    let window_secs = window_start.elapsed().as_secs_f64();
    pool.send(Phase::Stop).await?;
    progress.stage("closing", None);
    pool.wait(Until::AllDone, &mut progress).await?;
    progress.finish();
    // For `connections`, "after" is the end of the idle hold, with every connection still
    // open; for the others it is once every client has gone, which shows what stays behind.
    let after = match job.kind {
        Scenario::Rooms {
            load: Load::Idle, ..
        } => end.clone(),
        _ => probes.sample()?,
    };

    let reports = pool.into_reports();
    Ok(job.report(Outcome {
        urls: common.urls,
        workers,
        reports,
        window_secs,
        machine: machine_start.zip(machine_end),
        probes,
        samples: [before, start, end, after],
        ticks,
        notes,
    }))
}

/// The scenario as the coordinator sees it: what to ask of the workers and for how long.
struct Job {
    /// `connections`, `throughput` or `churn`.
    scenario: &'static str,
    /// The whole scenario; [`Job::share`] splits it among the workers.
    kind: Scenario,
    /// Sending before the measured window.
    warmup: Duration,
    /// The measured window (the idle hold, for `connections`).
    window: Duration,
    /// The parameters, for the report.
    settings: Settings,
}

impl Job {
    fn new(command: cli::Command) -> Result<Job, String> {
        Ok(match command {
            cli::Command::Connections(args) => Job {
                scenario: "connections",
                kind: Scenario::Rooms {
                    rooms: args.rooms,
                    first_room: 0,
                    load: Load::Idle,
                    size: 0,
                    client_msg_ids: false,
                },
                warmup: Duration::ZERO,
                window: args.hold,
                settings: Settings {
                    rooms: Some(args.rooms),
                    hold_secs: Some(args.hold.as_secs_f64()),
                    ..Settings::default()
                },
            },
            cli::Command::Throughput(args) => {
                let (load, mode) = match (args.in_flight, args.rate) {
                    (_, Some(rate)) => (Load::FixedRate { rate }, "fixed_rate"),
                    (in_flight, None) => (
                        Load::ClosedLoop {
                            in_flight: in_flight.unwrap_or(1),
                        },
                        "closed_loop",
                    ),
                };
                Job {
                    scenario: "throughput",
                    kind: Scenario::Rooms {
                        rooms: args.rooms,
                        first_room: 0,
                        load,
                        size: args.size,
                        client_msg_ids: args.client_msg_ids,
                    },
                    warmup: args.warmup,
                    window: args.duration,
                    settings: Settings {
                        rooms: Some(args.rooms),
                        duration_secs: Some(args.duration.as_secs_f64()),
                        warmup_secs: Some(args.warmup.as_secs_f64()),
                        mode: Some(mode),
                        in_flight: match load {
                            Load::ClosedLoop { in_flight } => Some(in_flight),
                            _ => None,
                        },
                        rate: args.rate,
                        size: Some(args.size),
                        client_msg_ids: args.client_msg_ids.then_some(true),
                        ..Settings::default()
                    },
                }
            }
            cli::Command::Churn(args) => Job {
                scenario: "churn",
                kind: Scenario::Churn {
                    rate: args.rate,
                    messages: args.messages,
                    max_sessions: args.max_sessions,
                    workers: 1,
                },
                warmup: Duration::ZERO,
                window: args.duration,
                settings: Settings {
                    duration_secs: Some(args.duration.as_secs_f64()),
                    rate: Some(args.rate),
                    messages: Some(args.messages),
                    max_sessions: Some(args.max_sessions),
                    ..Settings::default()
                },
            },
            cli::Command::Worker => {
                return Err("`worker` is started by chat-bench itself".to_string());
            }
        })
    }

    /// The most client sockets open at once.
    fn sockets(&self) -> u64 {
        match self.kind {
            Scenario::Rooms { rooms, .. } => 2 * rooms,
            Scenario::Churn { max_sessions, .. } => 2 * u64::from(max_sessions),
        }
    }

    /// The connections each of `nodes` server nodes is to hold at most.
    fn connections_per_node(&self, nodes: usize) -> Vec<u64> {
        let rooms = match self.kind {
            Scenario::Rooms { rooms, .. } => rooms,
            // At most `max_sessions` at once; sessions in progress have nearly consecutive
            // numbers, so they spread over the nodes as that many rooms do.
            Scenario::Churn { max_sessions, .. } => u64::from(max_sessions),
        };
        scenarios::connections_per_node(rooms, nodes)
    }

    /// More workers than this would leave some with nothing to do.
    fn max_workers(&self) -> u32 {
        let units = match self.kind {
            Scenario::Rooms { rooms, .. } => rooms,
            Scenario::Churn { max_sessions, .. } => u64::from(max_sessions),
        };
        u32::try_from(units).unwrap_or(u32::MAX)
    }

    /// Worker `index`'s share of `workers`: rooms split as evenly as possible into
    /// consecutive blocks (worker 0 has the first rooms of the run, and so on, which keeps
    /// each room's number in the run for the choice of its nodes), rates in proportion.
    fn share(&self, index: u32, workers: u32) -> Scenario {
        let all_workers = workers;
        let (index, workers) = (u64::from(index), u64::from(workers));
        match self.kind {
            Scenario::Rooms {
                rooms,
                load,
                size,
                client_msg_ids,
                ..
            } => {
                let mine = rooms / workers + u64::from(index < rooms % workers);
                // The rooms of the workers before this one.
                let first_room = index * (rooms / workers) + index.min(rooms % workers);
                let load = match load {
                    Load::FixedRate { rate } => Load::FixedRate {
                        rate: rate * mine as f64 / rooms as f64,
                    },
                    other => other,
                };
                Scenario::Rooms {
                    rooms: mine,
                    first_room,
                    load,
                    size,
                    client_msg_ids,
                }
            }
            Scenario::Churn {
                rate,
                messages,
                max_sessions,
                ..
            } => Scenario::Churn {
                rate: rate / workers as f64,
                messages,
                max_sessions: u64::from(max_sessions).div_ceil(workers) as u32,
                workers: all_workers,
            },
        }
    }

    /// What the progress line calls the measured window.
    fn window_label(&self) -> &'static str {
        match self.kind {
            Scenario::Rooms {
                load: Load::Idle, ..
            } => "holding idle",
            _ => "measuring",
        }
    }

    /// Assembles the report from the workers' results and the server samples.
    fn report(self, outcome: Outcome) -> Report {
        let mut counts = Counts::default();
        let mut by_kind = std::collections::BTreeMap::new();
        let mut refused = std::collections::BTreeMap::new();
        for report in &outcome.reports {
            counts.merge(&report.counts);
            for (kind, count) in &report.failures {
                *by_kind.entry(kind.clone()).or_insert(0) += count;
            }
            for (&limit, count) in &report.refused {
                *refused.entry(limit).or_insert(0) += count;
            }
        }
        let histogram = HistogramData::summarize(outcome.reports.iter().map(|r| &r.histogram));
        let setup_secs = outcome
            .reports
            .iter()
            .map(|r| r.setup_secs)
            .fold(0.0, f64::max);
        let window = outcome.window_secs;

        let (requested, opened_per_sec) = match self.kind {
            Scenario::Rooms { rooms, .. } => (
                2 * rooms,
                ratio(counts.connections_opened as f64, setup_secs),
            ),
            Scenario::Churn { .. } => (
                2 * counts.sessions_started,
                ratio(counts.connections_opened as f64, window),
            ),
        };
        let connections = ConnectionStats {
            requested,
            opened: counts.connections_opened,
            failed: counts.connections_failed,
            rooms_ready: counts.rooms_ready,
            rooms_failed: counts.rooms_failed,
            setup_secs,
            opened_per_sec,
            closed_without_reply: counts.closed_without_reply,
        };
        let chatting = matches!(
            self.kind,
            Scenario::Rooms {
                load: Load::ClosedLoop { .. } | Load::FixedRate { .. },
                ..
            }
        );
        let messages = chatting.then(|| MessageStats {
            window_secs: window,
            sent: counts.sent,
            delivered: counts.delivered,
            sent_per_sec: ratio(counts.sent as f64, window),
            delivered_per_sec: ratio(counts.delivered as f64, window),
            offered_per_sec: match self.kind {
                Scenario::Rooms {
                    load: Load::FixedRate { rate },
                    ..
                } => Some(rate),
                _ => None,
            },
        });
        let sessions = match self.kind {
            Scenario::Churn { rate, .. } => Some(SessionStats {
                window_secs: window,
                offered_per_sec: rate,
                started: counts.sessions_started,
                completed: counts.sessions_completed,
                failed: counts.sessions_failed,
                skipped: counts.sessions_skipped,
                unfinished: counts
                    .sessions_started
                    .saturating_sub(counts.sessions_completed + counts.sessions_failed),
                completed_per_sec: ratio(counts.sessions_completed as f64, window),
                duration_us: histogram,
            }),
            Scenario::Rooms { .. } => None,
        };

        let ticks = outcome.ticks;
        let mut connections_by_node = vec![0; outcome.urls.len()];
        for report in &outcome.reports {
            for (sum, count) in connections_by_node
                .iter_mut()
                .zip(&report.connections_by_node)
            {
                *sum += count;
            }
        }
        let work = Work {
            window_secs: window,
            delivered: chatting.then_some(counts.delivered),
            sessions: sessions.as_ref().map(|_| counts.sessions_completed),
            idle: matches!(
                self.kind,
                Scenario::Rooms {
                    load: Load::Idle,
                    ..
                }
            ),
            rooms_ready: counts.rooms_ready,
            connections_by_node,
            ticks,
        };
        let figures = outcome
            .probes
            .figures(&outcome.urls, &outcome.samples, &work);

        let client_cpu = ticks.seconds(outcome.reports.iter().map(|r| r.cpu_ticks).sum());
        let machine = outcome.machine.map(|(start, end)| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let busy = end.busy.saturating_sub(start.busy) as f64;
            let total = end.total.saturating_sub(start.total) as f64;
            let busy_percent = 100.0 * cores as f64 * ratio(busy, total);
            MachineStats {
                cores,
                busy_percent,
                others_percent: (busy_percent
                    - figures.cpu_percent
                    - 100.0 * ratio(client_cpu, window))
                .max(0.0),
            }
        });
        Report {
            scenario: self.scenario,
            url: outcome.urls[0].clone(),
            urls: outcome.urls,
            workers: outcome.workers,
            settings: self.settings,
            connections,
            messages,
            latency_us: chatting.then_some(histogram),
            sessions,
            errors: ErrorStats {
                total: counts.errors,
                by_kind,
                refused: refused
                    .into_iter()
                    .map(|(limit, count)| Refused::new(limit, count))
                    .collect(),
            },
            server: figures.server,
            servers: figures.servers,
            redis: figures.redis,
            client: ClientStats {
                cpu_secs: client_cpu,
                cpu_percent: 100.0 * ratio(client_cpu, window),
                rss_kib: outcome.reports.iter().map(|r| r.rss_kib).sum(),
            },
            machine,
            notes: outcome.notes,
        }
    }
}

/// What a run produced, for [`Job::report`].
struct Outcome {
    /// Every `--url`, one per node.
    urls: Vec<String>,
    workers: u32,
    reports: Vec<WorkerReport>,
    window_secs: f64,
    /// The machine's CPU counters at the window's start and end.
    machine: Option<(MachineTicks, MachineTicks)>,
    /// The processes under test (`--server-pid`, `--redis-pid`) ...
    probes: Probes,
    /// ... and their usage before the run, at the window's start and end, and after.
    samples: [Sample; 4],
    ticks: ClockTicks,
    notes: Vec<String>,
}

/// What the pool waits for.
enum Until {
    AllReady,
    AllDone,
    Time(Instant),
}

/// How the coordinator sends phases to one worker.
enum Handle {
    /// A worker task in this process.
    Local(mpsc::UnboundedSender<Phase>),
    /// A child process, through its stdin.
    Child(ChildStdin),
}

/// What arrives from a worker.
enum Note {
    Event(WorkerEvent),
    /// The worker ended (its task or process), with a description.
    Gone(String),
}

/// The running workers and what they have said so far.
struct Pool {
    handles: Vec<Handle>,
    /// Every worker's events, tagged with its index.
    events: mpsc::UnboundedReceiver<(usize, Note)>,
    /// Latest counts of each worker.
    counts: Vec<Counts>,
    ready: Vec<bool>,
    reports: Vec<Option<WorkerReport>>,
}

impl Pool {
    /// Starts one worker per spec, as tasks of this process or as child processes.
    async fn start(specs: Vec<WorkerSpec>, as_children: bool) -> Result<Pool, String> {
        let workers = specs.len();
        let (note_tx, events) = mpsc::unbounded_channel();
        let mut handles = Vec::with_capacity(workers);
        for (index, spec) in specs.into_iter().enumerate() {
            let handle = if as_children {
                start_child(index, spec, note_tx.clone()).await?
            } else {
                start_local(index, spec, note_tx.clone())
            };
            handles.push(handle);
        }
        Ok(Pool {
            handles,
            events,
            counts: vec![Counts::default(); workers],
            ready: vec![false; workers],
            reports: (0..workers).map(|_| None).collect(),
        })
    }

    /// Tells every worker the next phase.
    async fn send(&mut self, phase: Phase) -> Result<(), String> {
        for (index, handle) in self.handles.iter_mut().enumerate() {
            let sent = match handle {
                Handle::Local(phases) => phases.send(phase).map_err(|_| "is gone".to_string()),
                Handle::Child(stdin) => {
                    // A phase always serialises: it is a plain enum.
                    let mut line = serde_json::to_string(&phase).unwrap_or_default();
                    line.push('\n');
                    stdin
                        .write_all(line.as_bytes())
                        .await
                        .map_err(|err| format!("cannot be written to: {err}"))
                }
            };
            sent.map_err(|why| format!("worker {index} {why}"))?;
        }
        Ok(())
    }

    /// Handles worker events, drawing the progress line, until `until` holds.
    async fn wait(&mut self, until: Until, progress: &mut Progress) -> Result<(), String> {
        let mut redraw = tokio::time::interval(PROGRESS_EVERY);
        let deadline = match until {
            Until::Time(deadline) => Some(deadline),
            _ => None,
        };
        loop {
            let reached = match until {
                Until::AllReady => self.ready.iter().all(|&ready| ready),
                Until::AllDone => self.reports.iter().all(Option::is_some),
                Until::Time(deadline) => Instant::now() >= deadline,
            };
            if reached {
                return Ok(());
            }
            tokio::select! {
                note = self.events.recv() => {
                    // The pool's own sender clones live in the forwarding tasks; all of them
                    // gone means every worker is gone.
                    let (index, note) = note.ok_or("every worker has exited")?;
                    self.note(index, note)?;
                }
                _ = redraw.tick() => progress.show(&self.total()),
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
            }
        }
    }

    /// Takes in one worker's note.
    fn note(&mut self, index: usize, note: Note) -> Result<(), String> {
        let who = if self.handles.len() > 1 {
            format!("worker {index}: ")
        } else {
            String::new()
        };
        match note {
            Note::Event(WorkerEvent::Progress { counts }) => self.counts[index] = counts,
            Note::Event(WorkerEvent::Ready { counts }) => {
                self.counts[index] = counts;
                self.ready[index] = true;
            }
            Note::Event(WorkerEvent::Done(report)) => {
                self.counts[index] = report.counts;
                self.reports[index] = Some(*report);
            }
            Note::Event(WorkerEvent::Failed { message }) => return Err(format!("{who}{message}")),
            Note::Gone(why) if self.reports[index].is_none() => {
                return Err(format!("{who}{why} before reporting its results"));
            }
            Note::Gone(_) => {}
        }
        Ok(())
    }

    /// The counts of all workers together.
    fn total(&self) -> Counts {
        let mut total = Counts::default();
        for counts in &self.counts {
            total.merge(counts);
        }
        total
    }

    /// Every worker's final report (call after `Until::AllDone`).
    fn into_reports(self) -> Vec<WorkerReport> {
        self.reports.into_iter().flatten().collect()
    }
}

/// Runs a worker as a task of this process.
fn start_local(
    index: usize,
    spec: WorkerSpec,
    notes: mpsc::UnboundedSender<(usize, Note)>,
) -> Handle {
    let (phase_tx, phase_rx) = mpsc::unbounded_channel();
    let (event_tx, mut event_rx) = mpsc::unbounded_channel();
    tokio::spawn(worker::run(spec, phase_rx, event_tx));
    tokio::spawn(async move {
        while let Some(event) = event_rx.recv().await {
            let _ = notes.send((index, Note::Event(event)));
        }
        let _ = notes.send((index, Note::Gone("the worker ended".to_string())));
    });
    Handle::Local(phase_tx)
}

/// Runs a worker as a child process: `chat-bench worker`, spec on its first stdin line.
async fn start_child(
    index: usize,
    spec: WorkerSpec,
    notes: mpsc::UnboundedSender<(usize, Note)>,
) -> Result<Handle, String> {
    let exe = std::env::current_exe()
        .map_err(|err| format!("cannot find chat-bench's own executable: {err}"))?;
    let mut child = Command::new(&exe)
        .arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // If the coordinator fails or is interrupted, its workers must not linger.
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| format!("cannot start worker {index} ({}): {err}", exe.display()))?;
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(format!("worker {index} has no stdin or stdout pipe"));
    };
    let spec_json =
        serde_json::to_string(&spec).map_err(|err| format!("cannot encode a spec: {err}"))?;
    stdin
        .write_all(format!("{spec_json}\n").as_bytes())
        .await
        .map_err(|err| format!("cannot send worker {index} its spec: {err}"))?;
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let note = match serde_json::from_str(&line) {
                Ok(event) => Note::Event(event),
                Err(err) => Note::Gone(format!("sent an unreadable line ({err})")),
            };
            let _ = notes.send((index, note));
        }
        let why = match child.wait().await {
            Ok(status) => format!("exited ({status})"),
            Err(err) => format!("could not be waited for ({err})"),
        };
        let _ = notes.send((index, Note::Gone(why)));
    });
    Ok(Handle::Child(stdin))
}

/// The progress line on stderr.
struct Progress {
    /// False with `--quiet`.
    enabled: bool,
    /// Redraw one line in place (terminal) or write a line now and then (log file).
    terminal: bool,
    scenario: &'static str,
    /// What the run is doing now, and since when, and for how long it should.
    stage: &'static str,
    stage_started: Instant,
    stage_length: Option<Duration>,
    /// When a line was last written (to space them out in logs).
    last_written: Option<Instant>,
    /// Whether a line is drawn in place and needs a newline before anything else prints.
    drawn: bool,
}

impl Progress {
    fn new(enabled: bool, scenario: &'static str) -> Progress {
        Progress {
            enabled,
            terminal: std::io::stderr().is_terminal(),
            scenario,
            stage: "",
            stage_started: Instant::now(),
            stage_length: None,
            last_written: None,
            drawn: false,
        }
    }

    fn stage(&mut self, stage: &'static str, length: Option<Duration>) {
        self.stage = stage;
        self.stage_started = Instant::now();
        self.stage_length = length;
    }

    fn show(&mut self, counts: &Counts) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if !self.terminal
            && self
                .last_written
                .is_some_and(|last| now - last < PROGRESS_EVERY_IN_LOGS)
        {
            return;
        }
        self.last_written = Some(now);
        let elapsed = self.stage_started.elapsed().as_secs_f64();
        let mut line = format!("chat-bench {}: {} {elapsed:.0}", self.scenario, self.stage);
        if let Some(length) = self.stage_length {
            line.push_str(&format!("/{:.0}", length.as_secs_f64()));
        }
        line.push_str(&format!(
            " s | connections {} | rooms {}",
            thousands(counts.connections_opened),
            thousands(counts.rooms_ready)
        ));
        if counts.delivered > 0 {
            line.push_str(&format!(" | delivered {}", thousands(counts.delivered)));
        }
        if counts.sessions_started > 0 {
            line.push_str(&format!(
                " | sessions {} done of {}",
                thousands(counts.sessions_completed),
                thousands(counts.sessions_started)
            ));
        }
        line.push_str(&format!(" | errors {}", thousands(counts.errors)));
        if self.terminal {
            // Return to the line start and clear it, so the line is redrawn in place.
            eprint!("\r\x1b[K{line}");
            self.drawn = true;
        } else {
            eprintln!("{line}");
        }
    }

    /// Ends the redrawn line so the report starts on a fresh one.
    fn finish(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::{churn, connections_per_node, room_nodes};

    /// A `throughput` job of `rooms` rooms at a fixed rate.
    fn rooms_job(rooms: u64) -> Job {
        Job::new(cli::Command::Throughput(cli::ThroughputArgs {
            rooms,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            in_flight: None,
            rate: Some(100.0),
            size: 64,
            client_msg_ids: false,
        }))
        .expect("a job")
    }

    /// However the rooms are split over workers, the workers' blocks number every room of the
    /// run once, so every room's host and guest are on different nodes (with two or three) and
    /// each node holds what `connections_per_node` says: the rule holds across workers.
    #[test]
    fn workers_share_one_numbering_of_rooms() {
        for rooms in [1, 2, 5, 7, 12, 100] {
            let job = rooms_job(rooms);
            for workers in 1..=4 {
                let mut numbers = Vec::new();
                for index in 0..workers {
                    match job.share(index, workers) {
                        Scenario::Rooms {
                            rooms: mine,
                            first_room,
                            ..
                        } => numbers.extend(first_room..first_room + mine),
                        other => panic!("a rooms share, not {other:?}"),
                    }
                }
                let expected: Vec<u64> = (0..rooms).collect();
                assert_eq!(numbers, expected, "{rooms} rooms over {workers} workers");
                for nodes in 1..=3 {
                    let mut held = vec![0; nodes];
                    for &room in &numbers {
                        let (host, guest) = room_nodes(room, nodes);
                        assert!(nodes == 1 || host != guest, "room {room}, {nodes} nodes");
                        held[host] += 1;
                        held[guest] += 1;
                    }
                    assert_eq!(held, connections_per_node(rooms, nodes));
                }
            }
        }
    }

    /// Churn workers are told how many they are, which numbers their sessions across the run.
    #[test]
    fn churn_workers_know_how_many_they_are() {
        let job = Job::new(cli::Command::Churn(cli::ChurnArgs {
            rate: 10.0,
            duration: Duration::from_secs(1),
            messages: 1,
            max_sessions: 10,
        }))
        .expect("a job");
        for workers in 1..=3 {
            let mut numbers: Vec<u64> = (0..workers)
                .flat_map(|index| match job.share(index, workers) {
                    Scenario::Churn { workers: w, .. } => {
                        assert_eq!(w, workers);
                        (0..5).map(move |id| churn::session_number(index, w, id))
                    }
                    other => panic!("a churn share, not {other:?}"),
                })
                .collect();
            numbers.sort_unstable();
            assert_eq!(numbers, (0..5 * u64::from(workers)).collect::<Vec<_>>());
        }
    }
}
